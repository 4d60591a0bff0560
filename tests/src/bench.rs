//! Pieces the benchmarks share: the record they write, latency samples,
//! and the raw fjall figure they compare against.

use std::path::Path;
use std::time::{Duration, Instant};

use blazedb::{Client, Fields, Value};
use fjall::{KeyspaceCreateOptions, PersistMode};

/// The record written as number `i`: four fields, about 100 bytes.
pub fn record(i: i64) -> Fields {
    Fields::from([
        (
            "title".to_owned(),
            Value::String(format!("record number {i:08}")),
        ),
        ("status".to_owned(), Value::from("open")),
        ("priority".to_owned(), Value::Int(i % 10)),
        ("body".to_owned(), Value::String("x".repeat(40))),
    ])
}

/// Rounds in a side-by-side comparison of two rates.
pub const ROUNDS: usize = 5;

/// The middle of `rates`.
pub fn median(rates: &mut [f64]) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Measures two rates side by side: `a` and then `b`, each given the
/// round's number, for [`ROUNDS`] rounds; returns the median of each. On a
/// shared machine one pair of runs swings more than most differences
/// worth measuring, so the two alternate and medians are compared.
pub async fn alternating(
    mut a: impl AsyncFnMut(usize) -> anyhow::Result<f64>,
    mut b: impl AsyncFnMut(usize) -> anyhow::Result<f64>,
) -> anyhow::Result<(f64, f64)> {
    let (mut of_a, mut of_b) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        of_a.push(a(round).await?);
        of_b.push(b(round).await?);
    }
    Ok((median(&mut of_a), median(&mut of_b)))
}

/// Waits until the processes (`None`: this one) are all but idle, so
/// that background work an earlier run left behind (an agent's memtable
/// flushes and compactions) is not counted against the next run, which
/// in an alternating comparison is the other side's. They must stay idle
/// for a second and a half, longer than an agent waits, idle, before it
/// flushes its memtables (a second), so that that flush, too, is over
/// before the next run starts. Gives up after twenty seconds of steady
/// work.
pub async fn settle(pids: &[Option<u32>]) {
    // /proc counts CPU in 10 ms ticks: a window with at most one is idle.
    const WINDOW: Duration = Duration::from_millis(100);
    const IDLE_SECONDS: f64 = 0.015;
    const IDLE_FOR: Duration = Duration::from_millis(1500);
    let deadline = Instant::now() + Duration::from_secs(20);
    let used = || pids.iter().filter_map(|p| cpu_seconds(*p)).sum::<f64>();
    let mut idle = Duration::ZERO;
    while Instant::now() < deadline && idle < IDLE_FOR {
        let before = used();
        tokio::time::sleep(WINDOW).await;
        idle = if used() - before < IDLE_SECONDS {
            idle + WINDOW
        } else {
            Duration::ZERO
        };
    }
}

/// [`alternating`] for rates measured without a runtime.
pub fn alternating_blocking(
    mut a: impl FnMut(usize) -> anyhow::Result<f64>,
    mut b: impl FnMut(usize) -> anyhow::Result<f64>,
) -> anyhow::Result<(f64, f64)> {
    let (mut of_a, mut of_b) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        of_a.push(a(round)?);
        of_b.push(b(round)?);
    }
    Ok((median(&mut of_a), median(&mut of_b)))
}

/// Latency samples in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    /// The `pct` percentile (0 to 100).
    pub fn p(&self, pct: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let idx = ((pct / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[idx]
    }
}

/// Prints p50, p99 and the rate the samples add up to, one after another.
pub fn print_latency(label: &str, s: &Samples) {
    let total: f64 = s.0.iter().sum();
    println!(
        "  {label:<32} p50 {:>7.1} us  p99 {:>7.1} us  ({:.0} round trips/s)",
        s.p(50.0),
        s.p(99.0),
        s.0.len() as f64 / (total / 1e6)
    );
}

/// Inserts `n` records straight into fjall under `dir`, `batch` to a
/// durable batch: the ceiling for anything that stores them. Returns
/// records per second. The records are encoded before the clock starts.
pub fn raw_fjall_puts(dir: &Path, n: usize, batch: usize) -> anyhow::Result<f64> {
    raw_fjall_puts_cpu(dir, n, batch).map(|(rate, _)| rate)
}

/// [`raw_fjall_puts`], and the CPU this process spent a record while the
/// clock ran (fjall's workers included), in microseconds; `None` when
/// `/proc` could not be read.
pub fn raw_fjall_puts_cpu(
    dir: &Path,
    n: usize,
    batch: usize,
) -> anyhow::Result<(f64, Option<f64>)> {
    let (db, ks) = raw_store(&dir.join("raw"))?;
    let values = raw_values(n)?;
    let cpu = cpu_seconds(None);
    let t = Instant::now();
    raw_insert_batches(&db, &ks, &values, batch)?;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let cpu = cpu
        .zip(cpu_seconds(None))
        .map(|(before, after)| (after - before) * 1e6 / n as f64);
    Ok((rate, cpu))
}

/// The timed part of [`raw_fjall_puts`]: `values` as records `k{i:08}`,
/// `batch` to a durable batch. Kept apart (and never inlined) so that
/// `blazedb-bench --callgrind` counts this and not the encoding before it.
#[inline(never)]
pub fn raw_insert_batches(
    db: &fjall::Database,
    ks: &fjall::Keyspace,
    values: &[Vec<u8>],
    batch: usize,
) -> anyhow::Result<()> {
    for (chunk_no, chunk) in values.chunks(batch).enumerate() {
        let mut b = db.batch().durability(Some(PersistMode::SyncAll));
        for (j, v) in chunk.iter().enumerate() {
            let key = format!("items\0k{:08}", chunk_no * batch + j);
            b.insert(ks, key.into_bytes(), v.as_slice());
        }
        b.commit()?;
    }
    Ok(())
}

/// Writes the bytes the store would write for `n` puts of new records
/// (`k{i:08}` in `items`, [`record`]`(i)`): each one's record, and the
/// batch's op-log entries as the store chunks them, in two keyspaces,
/// `batch` puts to a durable batch. The floor the store's layout sets,
/// apart from anything the store does. Returns puts per second.
pub fn raw_fjall_store_layout(dir: &Path, n: usize, batch: usize) -> anyhow::Result<f64> {
    let records = (0..n as i64).map(|i| ("items".to_owned(), format!("k{i:08}"), record(i)));
    raw_fjall_layout_of(dir, records, batch)
}

/// [`raw_fjall_store_layout`] for any records, given as (collection, id,
/// fields).
pub fn raw_fjall_layout_of(
    dir: &Path,
    records: impl Iterator<Item = (String, String, Fields)>,
    batch: usize,
) -> anyhow::Result<f64> {
    let layouts = fresh_layouts(records)?;
    let store = LayoutStore::open(&dir.join("raw-layout"))?;
    let t = Instant::now();
    store.write(&layouts, batch)?;
    Ok(layouts.len() as f64 / t.elapsed().as_secs_f64())
}

/// [`raw_fjall_store_layout`] twice at once: two stores, each in its own
/// thread and folder, write the same `n` puts, as a sender and a receiver
/// on one machine both store every replicated record: roughly the most a
/// replication that keeps a record and its op-log entry on both sides gets
/// from this machine, before any transport, sync or app. Returns puts per
/// second (`n` over the time until both are done).
pub fn raw_fjall_two_layouts(dir: &Path, n: usize, batch: usize) -> anyhow::Result<f64> {
    let records = || (0..n as i64).map(|i| ("items".to_owned(), format!("k{i:08}"), record(i)));
    let sides = [
        (
            LayoutStore::open(&dir.join("raw-layout-a"))?,
            fresh_layouts(records())?,
        ),
        (
            LayoutStore::open(&dir.join("raw-layout-b"))?,
            fresh_layouts(records())?,
        ),
    ];
    let elapsed = two_at_once(&sides, |(store, layouts)| {
        let t = Instant::now();
        store.write(layouts, batch)?;
        Ok(t.elapsed())
    })?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// [`raw_fjall_puts`] twice at once, each in its own thread and folder:
/// the same `n` records, nothing but the record stored for each. The most
/// any replication that stores each record on both sides of one machine
/// can get from it, whatever its layout. Returns records per second (`n`
/// over the time until both are done).
pub fn raw_fjall_two_raw(dir: &Path, n: usize, batch: usize) -> anyhow::Result<f64> {
    let values = raw_values(n)?;
    let sides = [
        raw_store(&dir.join("raw-pair-a"))?,
        raw_store(&dir.join("raw-pair-b"))?,
    ];
    let elapsed = two_at_once(&sides, |(db, ks)| {
        let t = Instant::now();
        raw_insert_batches(db, ks, &values, batch)?;
        Ok(t.elapsed())
    })?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Runs `write` for both sides at once, each in its own thread, started
/// together. Returns the longer of the times they report.
fn two_at_once<S: Sync>(
    sides: &[S; 2],
    write: impl Fn(&S) -> anyhow::Result<Duration> + Sync,
) -> anyhow::Result<Duration> {
    let start = std::sync::Barrier::new(sides.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = sides
            .iter()
            .map(|side| {
                let (start, write) = (&start, &write);
                s.spawn(move || {
                    start.wait();
                    write(side)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a store's thread panicked"))?
            })
            .try_fold(Duration::ZERO, |most, e| anyhow::Ok(most.max(e?)))
    })
}

/// A fjall database in `path` with fjall's own settings, and the keyspace
/// raw fjall's runs write their records to.
fn raw_store(path: &Path) -> anyhow::Result<(fjall::Database, fjall::Keyspace)> {
    let db = fjall::Database::builder(path).open()?;
    let ks = db.keyspace("items", KeyspaceCreateOptions::default)?;
    Ok((db, ks))
}

/// The values of [`raw_fjall_puts`]' records, encoded.
fn raw_values(n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    Ok((0..n as i64)
        .map(|i| blazedb_proto::codec::to_vec(&record(i)))
        .collect::<Result<_, _>>()?)
}

/// The bytes the store writes for each of `records`, put as new records.
fn fresh_layouts(
    records: impl Iterator<Item = (String, String, Fields)>,
) -> anyhow::Result<Vec<blazed::store::FreshPutLayout>> {
    let origin = blazedb_proto::DeviceId([1; 32]);
    let hlc = blazedb_proto::Hlc::new(1_750_000_000_000, 0);
    Ok(records
        .enumerate()
        .map(|(i, (c, id, fields))| {
            blazed::store::fresh_put_layout(&origin, &c, &id, fields, i as u64 + 1, hlc)
        })
        .collect::<Result<_, _>>()?)
}

/// A fjall database with the store's settings and its records and log
/// keyspaces, written to as the store writes them.
struct LayoutStore {
    db: fjall::Database,
    records: fjall::Keyspace,
    log: fjall::Keyspace,
}

impl LayoutStore {
    fn open(dir: &Path) -> anyhow::Result<LayoutStore> {
        let db = blazed::store::fjall_options(fjall::Database::builder(dir)).open()?;
        let records = db.keyspace("records", blazed::store::keyspace_options)?;
        let log = db.keyspace("log", blazed::store::keyspace_options)?;
        Ok(LayoutStore { db, records, log })
    }

    /// Each `batch` of `layouts` as one durable batch: their records, and
    /// their log entries chunked as the store chunks them.
    fn write(&self, layouts: &[blazed::store::FreshPutLayout], batch: usize) -> anyhow::Result<()> {
        for chunk in layouts.chunks(batch) {
            let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
            for l in chunk {
                b.insert(&self.records, l.record_key.as_slice(), l.record.as_slice());
            }
            let entries = chunk
                .iter()
                .map(|l| (u64::from_be_bytes(l.log_key), &l.log_op));
            for (key, value) in blazed::store::log_chunks(entries) {
                b.insert(&self.log, key, value);
            }
            b.commit()?;
        }
        Ok(())
    }
}

/// Records `k{i:08}` for `i` in `0..n`, `batch` to a commit, built before
/// a run starts, as [`raw_fjall_puts`] encodes its values first: both
/// sides start from data the app already holds, and what the client
/// library does with it is timed, not how the bench made it.
#[derive(Debug)]
pub struct PutBatches(Vec<Vec<(String, Fields)>>);

impl PutBatches {
    /// Builds the `n` records in batches of `batch`.
    pub fn new(n: usize, batch: usize) -> PutBatches {
        PutBatches(
            (0..n)
                .step_by(batch)
                .map(|start| {
                    (start..(start + batch).min(n))
                        .map(|i| (format!("k{i:08}"), record(i as i64)))
                        .collect()
                })
                .collect(),
        )
    }

    /// Writes the records to `db`/`items` through the agent, four commits
    /// in flight, the app keeping its records ([`blazedb::Batch::put_ref`]).
    /// Returns records per second.
    pub async fn put(self, client: &Client, db: &str) -> anyhow::Result<f64> {
        self.put_in_flight(client, db, 4).await
    }

    /// [`PutBatches::put`] with `in_flight` commits in flight, each from
    /// a task of its own, taking every `in_flight`-th batch: so batches
    /// reach the agent in key order only when there is one.
    pub async fn put_in_flight(
        self,
        client: &Client,
        db: &str,
        in_flight: usize,
    ) -> anyhow::Result<f64> {
        let db = client.db(db);
        let in_flight = in_flight.max(1);
        let n: usize = self.0.iter().map(Vec::len).sum();
        let mut lanes: Vec<Vec<Vec<(String, Fields)>>> = vec![Vec::new(); in_flight];
        for (b, records) in self.0.into_iter().enumerate() {
            lanes[b % in_flight].push(records);
        }
        let t = Instant::now();
        let mut handles = Vec::new();
        for lane in lanes {
            let db = db.clone();
            handles.push(tokio::spawn(async move {
                for records in &lane {
                    let mut w = db.batch();
                    for (id, fields) in records {
                        w = w.put_ref("items", Some(id), fields);
                    }
                    w.commit().await?;
                }
                // Handed back, to be dropped once the clock has stopped,
                // as raw fjall's values are: the app's records are its own.
                anyhow::Ok(lane)
            }));
        }
        let mut written = Vec::new();
        for h in handles {
            written.push(h.await??);
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        drop(written);
        Ok(rate)
    }
}

/// Builds [`PutBatches`] of `n` records and writes them to `db`; returns
/// records per second, building them not included.
pub async fn batched_puts(
    client: &Client,
    db: &str,
    n: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    PutBatches::new(n, batch).put(client, db).await
}

/// A process's resident memory in KiB, from `/proc`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time a process has used so far (user and system), in seconds, from
/// `/proc`; `None` for this process reads `/proc/self`.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    stat_cpu_seconds(&proc_file(pid, "stat")?)
}

/// A file of `/proc/<pid>` (`None`: this process's).
fn proc_file(pid: Option<u32>, name: &str) -> Option<String> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/{name}"),
        None => format!("/proc/self/{name}"),
    };
    std::fs::read_to_string(path).ok()
}

/// The bytes a process (`None`: this one) has given the disk so far:
/// `write_bytes` in `/proc/.../io`, counted as pages are dirtied, whether
/// or not the kernel has written them back yet.
pub fn disk_write_bytes(pid: Option<u32>) -> Option<u64> {
    io_write_bytes(&proc_file(pid, "io")?)
}

/// The `write_bytes` line of a `/proc/.../io` file.
fn io_write_bytes(io: &str) -> Option<u64> {
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The user and system time in a `/proc/.../stat` line, in seconds.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the command name, which may hold spaces, start at the
    // last ')'; utime and stime are the 14th and 15th fields overall.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split(' ').skip(11);
    let utime: f64 = f.next()?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    // Clock ticks are 100 per second on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

/// CPU seconds each of a process's threads has used, from `/proc`, added
/// up by thread name with a trailing `-<n>` dropped (the agent's read
/// helpers are `blazed-read-1`, ...; its tokio workers all `blazed`).
pub fn thread_cpu_seconds(pid: u32) -> Option<std::collections::BTreeMap<String, f64>> {
    let mut by_name = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("stat")) else {
            // The thread ended between the listing and the read.
            continue;
        };
        let name = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?;
        let name = match name.rsplit_once('-') {
            Some((head, n)) if n.bytes().all(|b| b.is_ascii_digit()) => head,
            _ => name,
        };
        *by_name.entry(name.to_owned()).or_insert(0.0) += stat_cpu_seconds(&stat)?;
    }
    Some(by_name)
}

/// What each thread name of a process spent between two
/// [`thread_cpu_seconds`] readings, in microseconds per operation, as
/// `name us` pairs from the most to the least, leaving out those under
/// 0.05 us.
pub fn thread_cpu_per_op(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    ops: usize,
) -> String {
    let mut each: Vec<(&str, f64)> = after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or(0.0);
            (name.as_str(), (a - b) * 1e6 / ops as f64)
        })
        .filter(|(_, us)| *us >= 0.05)
        .collect();
    each.sort_by(|x, y| y.1.total_cmp(&x.1));
    each.iter()
        .map(|(name, us)| format!("{name} {us:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The CPU time some processes spend over runs, added up: the agents of
/// a bench and the bench itself (`None`), which share this machine's
/// cores.
#[derive(Debug, Clone, Default)]
pub struct CpuTally {
    /// Seconds by process, in the order `measure` was given them.
    seconds: Vec<f64>,
    /// Bytes given to the disk by process, in the same order.
    disk: Vec<u64>,
    ops: usize,
    missing: bool,
    disk_missing: bool,
}

impl CpuTally {
    /// Runs `run` (which does `ops` operations) and adds what each of
    /// `pids` spent meanwhile.
    pub async fn measure<T, F>(&mut self, pids: &[Option<u32>], ops: usize, run: F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let each = || {
            pids.iter()
                .map(|&p| cpu_seconds(p))
                .collect::<Option<Vec<f64>>>()
        };
        let disk = || {
            pids.iter()
                .map(|&p| disk_write_bytes(p))
                .collect::<Option<Vec<u64>>>()
        };
        let (before, disk_before) = (each(), disk());
        let out = run.await;
        match (before, each()) {
            (Some(b), Some(a)) => {
                self.seconds.resize(pids.len(), 0.0);
                for (total, (b, a)) in self.seconds.iter_mut().zip(b.iter().zip(&a)) {
                    *total += a - b;
                }
            }
            _ => self.missing = true,
        }
        match (disk_before, disk()) {
            (Some(b), Some(a)) => {
                self.disk.resize(pids.len(), 0);
                for (total, (b, a)) in self.disk.iter_mut().zip(b.iter().zip(&a)) {
                    *total += a.saturating_sub(*b);
                }
            }
            _ => self.disk_missing = true,
        }
        self.ops += ops;
        out
    }

    /// Bytes given to the disk per operation by each process, in the
    /// order `measure` was given them; `None` when `/proc` could not be
    /// read.
    pub fn each_disk_bytes_per_op(&self) -> Option<Vec<f64>> {
        (!self.disk_missing && self.ops > 0).then(|| {
            let ops = self.ops as f64;
            self.disk.iter().map(|&b| b as f64 / ops).collect()
        })
    }

    /// CPU microseconds per operation of each process, in the order
    /// `measure` was given them; `None` when `/proc` could not be read.
    pub fn each_per_op_us(&self) -> Option<Vec<f64>> {
        (!self.missing && self.ops > 0).then(|| {
            let ops = self.ops as f64;
            self.seconds.iter().map(|s| s * 1e6 / ops).collect()
        })
    }

    /// CPU microseconds per operation of all the processes together.
    pub fn per_op_us(&self) -> Option<f64> {
        self.each_per_op_us().map(|each| each.iter().sum())
    }

    /// The most operations a second this machine's cores could do at that
    /// CPU per operation, every core busy and nothing else running: where
    /// a rate is bound by the sum of its processes' work, no tuning of
    /// one process gets past it.
    pub fn ceiling_per_second(&self) -> Option<f64> {
        self.per_op_us().map(|us| cores() * 1e6 / us)
    }
}

/// The cores this machine gives the process.
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// The total instructions in a callgrind output file.
pub fn callgrind_instructions(path: &Path) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("no callgrind output at {}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no instruction total in {}", path.display()))
}

/// A valgrind command that runs callgrind quietly and writes its counts
/// to `out`; the program and its arguments follow.
pub fn callgrind_command(out: &Path) -> std::process::Command {
    let mut valgrind = std::process::Command::new("valgrind");
    valgrind
        .arg("-q")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()));
    valgrind
}

/// Where a `--callgrind` run writes its files: `keep` (made if missing)
/// when given, else the temporary folder `tmp`.
pub fn callgrind_dir<'a>(
    keep: Option<&'a Path>,
    tmp: &'a tempfile::TempDir,
) -> anyhow::Result<&'a Path> {
    match keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            Ok(d)
        }
        None => Ok(tmp.path()),
    }
}

/// Whether valgrind can be run; an error saying how to install it if not.
pub fn valgrind_present() -> anyhow::Result<()> {
    let have = std::process::Command::new("valgrind")
        .arg("--version")
        .output();
    anyhow::ensure!(
        have.is_ok_and(|o| o.status.success()),
        "valgrind is not installed (apt-get install valgrind)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::io_write_bytes;

    #[test]
    fn write_bytes_is_read_from_a_proc_io_file() {
        let io = "rchar: 6976\nwchar: 12\nsyscr: 10\nsyscw: 1\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 4096\n";
        assert_eq!(io_write_bytes(io), Some(8192));
        assert_eq!(io_write_bytes("rchar: 1\n"), None);
    }
}
