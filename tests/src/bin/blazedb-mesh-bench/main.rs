//! Benchmarks of sync between agents over QUIC, beside the raw limits they
//! rest on, in one run:
//!
//! ```text
//! cargo build --release -p blazedb-tests --bins && target/release/blazedb-mesh-bench
//! ```
//!
//! - replication throughput from one agent to another (loopback), beside
//!   raw fjall batch inserts on the same disk and a raw quinn stream;
//! - one-hop latency, a commit on one agent to the change event on the
//!   other, on loopback and (as root) across two network namespaces;
//! - the initial sync of a database to a newly joined device;
//! - the agents' resident memory, idle and during replication.
//!
//! It starts its own agents (the `blazed-test-agent` binary built beside
//! it) on temporary directories.
//!
//! `--callgrind` counts instructions per replicated record in each agent
//! instead (see `callgrind.rs`).

mod callgrind;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use blazedb::{Client, Fields, Value};
use blazedb_proto::api::{DbSettings, SyncMode};
use blazedb_proto::{DeviceId, Hlc, Op, OpBody, SyncMessage, codec};
use blazedb_tests::bench::{
    CpuTally, PutBatches, Samples, batched_puts, cores, disk_write_bytes, median, print_latency,
    raw_fjall_puts_cpu, raw_fjall_store_layout, raw_fjall_two_layouts, raw_fjall_two_raw, record,
    rss_kib, thread_cpu_per_op, thread_cpu_seconds,
};
use blazedb_tests::netns::Lab;
use blazedb_tests::{TestAgent, join_mesh, sibling_bin, wait_within as wait};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks sync between blazed agents beside raw fjall and raw quinn")]
struct Args {
    /// Run small counts (a smoke run, not a measurement).
    #[arg(long)]
    quick: bool,
    /// Run only these sections (throughput, latency, initial); all when not
    /// given.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Records replicated in the throughput run.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Rounds of the sustained run, each beside a raw fjall run of its own;
    /// the medians are compared.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Records in the database a new device syncs at join.
    #[arg(long, default_value_t = 1_000_000)]
    initial: usize,
    /// Writes timed one at a time in the latency run.
    #[arg(long, default_value_t = 2_000)]
    samples: usize,
    /// Print one JSON object with the figures and ratios as the last line.
    #[arg(long)]
    json: bool,
    /// Count instructions per replicated record in each agent under
    /// valgrind's callgrind, beside raw fjall's inserts, instead of timing
    /// anything.
    #[arg(long)]
    callgrind: bool,
    /// Keep the callgrind output files in this folder.
    #[arg(long, value_name = "DIR")]
    callgrind_out: Option<std::path::PathBuf>,
    /// With `--callgrind`: write batches the app keeps in flight. At 1
    /// they reach the agents in key order, so fjall's memtable compares
    /// about as many keys for each as raw fjall's does and the counts
    /// repeat to within a percent; at 4, as an app writing from several
    /// tasks, how they interleave moves each agent's count by some
    /// hundreds of instructions a record from run to run.
    #[arg(long, default_value_t = 4, value_name = "N")]
    in_flight: usize,
    /// A raw fjall run under callgrind, in a child: how many records.
    #[arg(long, value_name = "RECORDS", hide = true)]
    raw_child: Option<usize>,
}

/// Figures for `--json`, by key.
type Figures = serde_json::Map<String, serde_json::Value>;

fn note(figures: &mut Figures, key: &str, value: f64) {
    figures.insert(key.to_owned(), serde_json::json!(value));
}

/// Records per write batch, as an app importing data would write them.
const BATCH: usize = 1000;
/// A record that sorts and is written after all others: once a replica
/// has it, it has everything before it.
const LAST: &str = "zz-last";

fn main() -> anyhow::Result<()> {
    // As the agent runs: raw fjall and the in-process store then work
    // under its memory settings, and the agents started inherit them.
    blazed::huge_pages::disable();
    let args = Args::parse();
    if let Some(n) = args.raw_child {
        return callgrind::raw_child(n);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    if args.quick {
        args.records = 10_000;
        args.rounds = 1;
        args.initial = 20_000;
        args.samples = 200;
    }
    if args.callgrind {
        return callgrind::run(
            args.quick,
            args.json,
            args.in_flight,
            args.callgrind_out.as_deref(),
        )
        .await;
    }
    let on = |section: &str| args.only.is_empty() || args.only.iter().any(|s| s == section);
    let bin = sibling_bin("blazed-test-agent");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first with `cargo build --release -p blazedb-tests --bins`",
            bin.display()
        );
    }
    println!(
        "blazedb-mesh-bench ({} mode)\n",
        if args.quick { "quick" } else { "full" }
    );
    let mut figures = Figures::new();
    let mut a = TestAgent::start(&bin).await?;
    let mut b = TestAgent::start(&bin).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    join_mesh(&ca, &[&cb]).await?;

    let idle = (rss(&a), rss(&b));
    println!(
        "resident memory idle, linked: {} / {} (A / B)\n",
        idle.0, idle.1
    );
    if on("latency") {
        let lo = latency(&ca, &cb, args.samples).await?;
        println!(
            "one hop, put sent to A (committed with fsync) -> change event from B ({} writes, one at a time)",
            args.samples
        );
        print_latency("loopback", &lo);
        note(&mut figures, "hop_loopback_p99_us", lo.p(99.0));
        match lab_latency(&bin, args.samples).await? {
            Some(lan) => {
                print_latency("two namespaces over a veth LAN", &lan);
                note(&mut figures, "hop_lan_p99_us", lan.p(99.0));
            }
            None => println!("  (namespace LAN skipped: it needs root)"),
        }
        println!("  target: p99 < 2000 us across the LAN\n");
    }
    if on("throughput") {
        throughput(&ca, &cb, &a, &b, args.records, args.rounds, &mut figures).await?;
    }
    if on("initial") {
        // The earlier sections leave fjall compacting in the background:
        // a fresh pair measures the initial sync alone.
        a.kill();
        b.kill();
        initial_sync(&bin, args.initial).await?;
    }
    if args.json {
        println!("{}", serde_json::Value::Object(figures));
    }
    Ok(())
}

async fn has(client: &Client, db: &str, id: &str) -> bool {
    client
        .db(db)
        .collection("items")
        .get_record(id)
        .await
        .is_ok_and(|r| r.is_some())
}

/// Creates `db` on `from` and waits until `to` has it too.
async fn shared_db(from: &Client, to: &Client, db: &str) -> anyhow::Result<()> {
    from.db(db).create().await?;
    from.db(db)
        .collection("items")
        .put_fields("probe", record(0))
        .await?;
    wait(
        "the database to reach the peer",
        Duration::from_secs(30),
        || has(to, db, "probe"),
    )
    .await
}

fn rss(agent: &TestAgent) -> String {
    agent
        .pid()
        .and_then(rss_kib)
        .map_or_else(|| "?".to_owned(), mib)
}

/// The highest resident memory of `pids` seen until `stop`.
fn sample_peak_rss(pids: Vec<u32>, stop: Arc<AtomicBool>) -> Arc<Vec<AtomicU64>> {
    let peaks: Arc<Vec<AtomicU64>> = Arc::new(pids.iter().map(|_| AtomicU64::new(0)).collect());
    let out = peaks.clone();
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            for (pid, peak) in pids.iter().zip(peaks.iter()) {
                if let Some(k) = rss_kib(*pid) {
                    peak.fetch_max(k, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    out
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// One round of the sustained run: raw fjall's batch inserts, then the
/// same records replicated from A to B, one after the other.
struct Round {
    raw: f64,
    raw_cpu: Option<f64>,
    /// Bytes raw fjall gave the disk a record.
    raw_disk: Option<f64>,
    local: f64,
    replicated: f64,
    cpu: CpuTally,
    threads: [[Option<BTreeMap<String, f64>>; 2]; 2],
}

impl Round {
    fn ratio(&self) -> f64 {
        self.replicated / self.raw
    }
}

/// Measures raw fjall's batch inserts of `n` records in a folder of its
/// own under `dir`, then replicates `n` records written on A in a new
/// database `db` to B.
async fn sustained_round(
    (ca, cb): (&Client, &Client),
    (a, b): (&TestAgent, &TestAgent),
    dir: &std::path::Path,
    db: &str,
    n: usize,
) -> anyhow::Result<Round> {
    let disk_before = disk_write_bytes(None);
    // Removed once measured: the disk is shared with the agents.
    let (raw, raw_cpu) = raw_fjall_puts_cpu(tempfile::tempdir_in(dir)?.path(), n, BATCH)?;
    let raw_disk = disk_before
        .zip(disk_write_bytes(None))
        .map(|(before, after)| after.saturating_sub(before) as f64 / n as f64);
    shared_db(ca, cb, db).await?;
    let batches = PutBatches::new(n, BATCH);
    let threads_before = [agent_threads(a), agent_threads(b)];
    let t = Instant::now();
    let mut cpu = CpuTally::default();
    let local = cpu
        .measure(&[a.pid(), b.pid(), None], n + 1, async {
            let local = batches.put(ca, db).await?;
            ca.db(db)
                .collection("items")
                .put_fields(LAST, record(0))
                .await?;
            wait(
                "B to receive every record",
                Duration::from_secs(600),
                || has(cb, db, LAST),
            )
            .await?;
            anyhow::Ok(local)
        })
        .await?;
    let secs = t.elapsed().as_secs_f64();
    let threads_after = [agent_threads(a), agent_threads(b)];
    let got = cb.db(db).collection("items").query().fetch_all().await?;
    anyhow::ensure!(
        got.len() == n + 2,
        "B holds {} records, expected {}",
        got.len(),
        n + 2
    );
    Ok(Round {
        raw,
        raw_cpu,
        raw_disk,
        local,
        replicated: (n + 1) as f64 / secs,
        cpu,
        threads: [threads_before, threads_after],
    })
}

/// An agent's CPU seconds so far, by thread name.
fn agent_threads(agent: &TestAgent) -> Option<BTreeMap<String, f64>> {
    agent.pid().and_then(thread_cpu_seconds)
}

async fn throughput(
    ca: &Client,
    cb: &Client,
    a: &TestAgent,
    b: &TestAgent,
    n: usize,
    rounds: usize,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = raw_fjall_store_layout(dir.path(), n, BATCH)?;
    let two_layouts = raw_fjall_two_layouts(dir.path(), n, BATCH)?;
    let two_raw = raw_fjall_two_raw(dir.path(), n, BATCH)?;
    let op_bytes = op_size();
    let quic = raw_quinn(512 << 20).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let pids = [a.pid(), b.pid()].into_iter().flatten().collect();
    let peaks = sample_peak_rss(pids, stop.clone());
    // Raw fjall's rate swings with the disk from one run to the next, more
    // than the agents' does: taking turns, round by round, and comparing
    // medians keeps the ratio from hanging on one raw run.
    let mut all = Vec::new();
    for round in 0..rounds.max(1) {
        let db = format!("bench-{round}");
        all.push(sustained_round((ca, cb), (a, b), dir.path(), &db, n).await?);
    }
    stop.store(true, Ordering::Relaxed);
    let median_of =
        |value: fn(&Round) -> f64| median(&mut all.iter().map(value).collect::<Vec<_>>());
    let (raw, ours, local) = (
        median_of(|r| r.raw),
        median_of(|r| r.replicated),
        median_of(|r| r.local),
    );
    // The round whose ratio is the median speaks for the CPU figures.
    let mut by_ratio: Vec<&Round> = all.iter().collect();
    by_ratio.sort_by(|x, y| x.ratio().total_cmp(&y.ratio()));
    let typical = by_ratio[by_ratio.len() / 2];

    println!("replication, {n} records written on A in batches of {BATCH}, until B has them all");
    if all.len() > 1 {
        let each: Vec<String> = all
            .iter()
            .map(|r| {
                format!(
                    "{:.0}/{:.0} ({:.0}%)",
                    r.replicated,
                    r.raw,
                    100.0 * r.ratio()
                )
            })
            .collect();
        println!(
            "  {} rounds, replicated/raw records/s each, taking turns: {}",
            all.len(),
            each.join(", ")
        );
    }
    // Figures taken each round are given as their median.
    let med = if all.len() > 1 { "  (median)" } else { "" };
    println!("  raw fjall batch inserts (B's disk)     {raw:>12.0} records/s{med}");
    if let Some(us) = typical.raw_cpu {
        // What 50% of raw leaves a record, every core busy, beside what
        // two stores cost at raw fjall's own CPU.
        let cores = cores();
        let budget = cores * 1e6 / (typical.raw / 2.0);
        println!(
            "    raw fjall's CPU: {us:.2} us a record; 50% of raw allows {budget:.2} us a record on {cores} cores, of which two stores at raw's CPU take {:.0}%",
            100.0 * 2.0 * us / budget
        );
        note(figures, "raw_cpu_us", us);
        note(figures, "replication_target_budget_us", budget);
    }
    if let Some(bytes) = typical.raw_disk {
        println!("    raw fjall gave the disk {bytes:.0} bytes a record");
        note(figures, "raw_disk_bytes", bytes);
    }
    println!(
        "  raw fjall, the store's layout          {layout:>12.0} records/s  (records + a log chunk per batch)"
    );
    println!(
        "  raw fjall, two stores at once          {two_layouts:>12.0} records/s  (both sides' layout, each in its own thread: {:.0}% of raw fjall)",
        100.0 * two_layouts / raw
    );
    println!(
        "  raw fjall, two at once, records only   {two_raw:>12.0} records/s  (each side its own thread, nothing but the record: {:.0}% of raw fjall)",
        100.0 * two_raw / raw
    );
    println!(
        "  raw quinn stream, one process          {:>12.0} records/s  ({:.0} MB/s at {op_bytes} B per op)",
        quic / op_bytes as f64,
        quic / 1e6
    );
    println!("  A's local writes alone (while syncing) {local:>12.0} records/s{med}");
    println!(
        "  A -> B replicated, sustained           {ours:>12.0} records/s{med}  ({:.0}% of raw fjall; target >= 50%; {:.0}% of the layout floor; {:.0}% of two stores at once)",
        100.0 * ours / raw,
        100.0 * ours / layout,
        100.0 * ours / two_layouts
    );
    if all.len() > 1 {
        println!(
            "    CPU of the median round ({:.0}% of its raw):",
            100.0 * typical.ratio()
        );
    }
    print_cpu(
        &typical.cpu,
        &["A", "B", "the app"],
        typical.raw,
        figures,
        "replication",
    );
    let [before, after] = &typical.threads;
    print_threads(before, after, n + 1);
    println!(
        "  resident memory at peak: {} / {} (sender / receiver)",
        mib(peaks[0].load(Ordering::Relaxed)),
        mib(peaks[1].load(Ordering::Relaxed))
    );
    note(figures, "raw_put_rate", raw);
    note(figures, "layout_put_rate", layout);
    note(figures, "two_layouts_put_rate", two_layouts);
    note(figures, "two_layouts_ratio_raw", two_layouts / raw);
    note(figures, "two_raw_put_rate", two_raw);
    note(figures, "two_raw_ratio_raw", two_raw / raw);
    note(figures, "replication_rate", ours);
    note(figures, "replication_ratio_raw", ours / raw);
    note(figures, "replication_rounds", all.len() as f64);
    note(
        figures,
        "replication_ratio_raw_min",
        by_ratio.first().map_or(0.0, |r| r.ratio()),
    );
    note(
        figures,
        "replication_ratio_raw_max",
        by_ratio.last().map_or(0.0, |r| r.ratio()),
    );

    // The same through the sync path alone: A writes a database it keeps
    // to itself, then turns sync on, and B gets a backlog of `n` ops.
    let db = "backlog";
    ca.db(db)
        .create_with(
            DbSettings {
                sync_mode: SyncMode::Local,
                ..Default::default()
            },
            false,
        )
        .await?;
    batched_puts(ca, db, n, BATCH).await?;
    ca.db(db)
        .collection("items")
        .put_fields(LAST, record(0))
        .await?;
    let threads_before = [agent_threads(a), agent_threads(b)];
    let t = Instant::now();
    let mut cpu = CpuTally::default();
    cpu.measure(&[a.pid(), b.pid()], n + 1, async {
        ca.db(db).set_sync_mode(SyncMode::Sync).await?;
        wait("B to catch up", Duration::from_secs(600), || {
            has(cb, db, LAST)
        })
        .await
    })
    .await?;
    let secs = t.elapsed().as_secs_f64();
    let threads_after = [agent_threads(a), agent_threads(b)];
    let got = cb.db(db).collection("items").query().fetch_all().await?;
    anyhow::ensure!(got.len() == n + 1, "B caught up with {} records", got.len());
    let backlog = (n + 1) as f64 / secs;
    println!(
        "  backlog of {n} ops, sync turned on    {backlog:>12.0} records/s  ({:.0}% of raw fjall; {:.0}% of the layout floor; {secs:.2} s)",
        100.0 * backlog / raw,
        100.0 * backlog / layout
    );
    print_cpu(&cpu, &["A", "B"], raw, figures, "backlog");
    print_threads(&threads_before, &threads_after, n + 1);
    println!();
    note(figures, "backlog_rate", backlog);
    note(figures, "backlog_ratio_raw", backlog / raw);
    Ok(())
}

/// Prints the CPU a record took, in all and by process (`names`, in the
/// order the tally measured them), and the rate that would allow with
/// every core busy; notes both as `{key}_cpu_us` and
/// `{key}_ceiling_ratio_raw`.
fn print_cpu(cpu: &CpuTally, names: &[&str], raw: f64, figures: &mut Figures, key: &str) {
    let (Some(us), Some(each), Some(ceiling)) = (
        cpu.per_op_us(),
        cpu.each_per_op_us(),
        cpu.ceiling_per_second(),
    ) else {
        return;
    };
    println!(
        "    CPU per record: {us:.2} us ({}); all cores busy, {ceiling:.0} records/s ({:.0}% of raw) at most",
        by_process(names, &each, 2),
        100.0 * ceiling / raw
    );
    note(figures, &format!("{key}_cpu_us"), us);
    note(figures, &format!("{key}_ceiling_ratio_raw"), ceiling / raw);
    // Both agents write to one disk, whose fsyncs wait behind each other's
    // flushes: the bytes show how much of it a record takes.
    if let Some(each) = cpu.each_disk_bytes_per_op() {
        println!(
            "    bytes given to the disk a record: {}",
            by_process(names, &each, 0)
        );
        note(figures, &format!("{key}_disk_bytes"), each.iter().sum());
    }
}

/// Each process's name and figure (`decimals` after the point), in the
/// order of `names`.
fn by_process(names: &[&str], each: &[f64], decimals: usize) -> String {
    names
        .iter()
        .zip(each)
        .map(|(name, figure)| format!("{name} {figure:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints each agent's CPU per record by thread between two readings.
fn print_threads(
    before: &[Option<BTreeMap<String, f64>>; 2],
    after: &[Option<BTreeMap<String, f64>>; 2],
    records: usize,
) {
    for (who, (before, after)) in ["A", "B"].iter().zip(before.iter().zip(after)) {
        if let (Some(before), Some(after)) = (before, after) {
            println!(
                "      {who} by thread (us a record): {}",
                thread_cpu_per_op(before, after, records)
            );
        }
    }
}

/// The bytes one replicated put of a benchmark record takes in an `Ops`
/// message of a batch of them, as peers send it.
fn op_size() -> usize {
    let ops: Vec<Op> = (0..BATCH as u64)
        .map(|i| {
            let body = OpBody::Put {
                collection: "items".into(),
                id: format!("k{:08}", 123_456 + i),
                fields: record(123_456 + i as i64),
            };
            Op {
                origin: DeviceId([7; 32]),
                seq: 123_456 + i,
                hlc: Hlc((1_750_000_000_000 + i) << Hlc::COUNTER_BITS),
                priority: 0,
                incarnation: 0,
                body: codec::to_vec(&body).unwrap_or_default(),
            }
        })
        .collect();
    let msg = SyncMessage::Ops {
        db: "bench".into(),
        epoch: 1,
        ops,
    };
    msg.encode().map_or(0, |v| v.len() / BATCH)
}

/// Sends `total` bytes over one quinn stream on loopback, in this process;
/// returns bytes per second.
async fn raw_quinn(total: usize) -> anyhow::Result<f64> {
    let cert = rcgen::generate_simple_self_signed(vec!["bench".into()])?;
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let server_cfg =
        quinn::ServerConfig::with_single_cert(vec![cert.cert.der().clone()], key.into())?;
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone())?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(quinn::ClientConfig::with_root_certificates(Arc::new(
        roots,
    ))?);
    let addr = server.local_addr()?;
    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?.await?;
        let mut stream = conn.accept_uni().await?;
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        while let Some(k) = stream.read(&mut buf).await? {
            got += k;
        }
        conn.close(0u32.into(), b"done");
        anyhow::Ok(got)
    });
    let conn = client.connect(addr, "bench")?.await?;
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut send = conn.open_uni().await?;
    let mut sent = 0;
    while sent < total {
        send.write_all(&chunk).await?;
        sent += chunk.len();
    }
    send.finish()?;
    let got = receiver.await??;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(got == sent, "sent {sent} bytes, {got} arrived");
    client.wait_idle().await;
    Ok(got as f64 / secs)
}

/// Writes on `ca` one at a time and times each from sending the put until
/// `cb` streams the change: A's commit, the hop, B's commit and both IPC
/// legs are all inside the figure.
async fn latency(ca: &Client, cb: &Client, n: usize) -> anyhow::Result<Samples> {
    let db = "latency";
    if ca.databases().await?.iter().all(|d| d.name != db) {
        shared_db(ca, cb, db).await?;
    }
    let mut sub = cb.db(db).subscribe().await?;
    let coll = ca.db(db).collection("items");
    let mut out = Vec::with_capacity(n);
    for i in 0..n as i64 {
        let t = Instant::now();
        coll.put_fields("x", Fields::from([("i".to_owned(), Value::Int(i))]))
            .await?;
        loop {
            let c = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .context("no change event within 10 s")?
                .context("the subscription ended")?;
            if c.fields.get("i") == Some(&Value::Int(i)) {
                break;
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(Samples(out))
}

/// The latency run between agents in two network namespaces, if they can
/// be made.
async fn lab_latency(bin: &std::path::Path, n: usize) -> anyhow::Result<Option<Samples>> {
    let Some(lab) = Lab::up("bzb", "10.80.0", 2)? else {
        return Ok(None);
    };
    let mut agents = Vec::new();
    for node in ['a', 'b'] {
        let mut agent =
            TestAgent::stopped_in(bin, &lab.namespace(node), &["--listen", "0.0.0.0:7340"])?;
        agent.restart().await?;
        agents.push(agent);
    }
    let (ca, cb) = (agents[0].client().await?, agents[1].client().await?);
    join_mesh(&ca, &[&cb]).await?;
    let s = latency(&ca, &cb, n).await?;
    drop(agents);
    drop(lab);
    Ok(Some(s))
}

/// Writes `n` records on a fresh agent, then times a new device from
/// `join` until it holds all of them.
async fn initial_sync(bin: &std::path::Path, n: usize) -> anyhow::Result<()> {
    let a = TestAgent::start(bin).await?;
    let ca = a.client().await?;
    ca.create_mesh().await?;
    let db = "initial";
    ca.db(db).create().await?;
    let t = Instant::now();
    batched_puts(&ca, db, n, BATCH).await?;
    ca.db(db)
        .collection("items")
        .put_fields(LAST, record(0))
        .await?;
    let written = t.elapsed().as_secs_f64();
    let c = TestAgent::start(bin).await?;
    let cc = c.client().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let pids = [a.pid(), c.pid()].into_iter().flatten().collect();
    let peaks = sample_peak_rss(pids, stop.clone());
    let code = ca.invite(Some(600), Some(1)).await?.code;
    let t = Instant::now();
    cc.join(&code).await?;
    wait(
        "the new device to hold every record",
        Duration::from_secs(600),
        || has(&cc, db, LAST),
    )
    .await?;
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let got = cc.db(db).collection("items").query().fetch_all().await?;
    anyhow::ensure!(
        got.len() == n + 1,
        "the new device holds {} records, expected {}",
        got.len(),
        n + 1
    );
    println!(
        "initial sync of {n} records to a newly joined device (written on A in {written:.1} s)"
    );
    println!(
        "  join -> all records on the new device  {secs:>8.2} s  ({:.0} records/s; target < 10 s)",
        n as f64 / secs
    );
    println!(
        "  resident memory at peak: {} / {} (sender / new device)",
        mib(peaks[0].load(Ordering::Relaxed)),
        mib(peaks[1].load(Ordering::Relaxed))
    );
    Ok(())
}
