//! Benchmarks of the sync engine on the agent's fjall store, beside raw
//! fjall batch inserts of the same records in the same run.
//!
//! ```text
//! cargo build --release -p blazedb-tests --bins && target/release/blazedb-sync-bench
//! ```
//!
//! - apply: operations from another replica that the engine merges into a
//!   fresh fjall store, in the engine's batches, with fsync per batch;
//!   beside raw fjall inserting the same encoded records in batches of the
//!   same size with the same durability.
//! - catch-up: a fresh replica on the fjall store receiving every operation
//!   of a replica that has made 1,000,000 (over an in-memory network, as
//!   an op stream and again as a snapshot), and again as a partial replica
//!   whose access rule lets it see a fifth of the records (`priority = 1`,
//!   an indexed field) without one field.
//! - checked apply: the apply benchmark again with the operations' writer
//!   under an access rule, so each write is checked against the record it
//!   changes before it is applied.
//! - e2e: the apply benchmark into an end-to-end encrypted database beside
//!   a plaintext one; and a writer's own puts read from its log for a
//!   peer, in each (a key holder seals them as they are read).
//! - sealing: the apply benchmark's op bodies sealed and opened under a
//!   database content key (end-to-end encryption), per second, beside the
//!   apply rate: the share of apply throughput the crypto would take.
//! - compaction: compactions of a database of a quarter of the catch-up's
//!   size whose writer deleted a thousandth of its records: a walk of
//!   every record in one pass (as the first pass after a start was), the
//!   walk a start now spreads over passes of up to 100,000 records, and a
//!   pass once it is done (reading only the records the writer noted as
//!   possible tombstones), then a pass that trims the op log, every op
//!   being held by every replica. Compaction runs on the writer thread, so
//!   each pass holds every write back for as long.
//!
//! `--only apply,catch-up,rules,e2e,codec,compaction` runs some of the sections;
//! `--callgrind` counts instructions per applied op instead (see
//! `callgrind.rs`).

mod callgrind;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use blazed::crypto::seal::{ContentKey, open};
use blazed::store::{Store, StoreOptions};
use blazed::sync::{Engine, EngineConfig, MemoryStore, ReadLimits, SyncStore, WriteScreen};
use blazedb_proto::api::{DbSettings, Encryption, FilterOp, QueryParams, SyncMode, Write};
use blazedb_proto::mesh::MeshId;
use blazedb_proto::rules::{AccessLevel, AccessRule, AccessRules, RuleFilter, Selector};
use blazedb_proto::sealed::SealedOp;
use blazedb_proto::{DeviceId, Fields, Hlc, Op, OpBody, SyncMessage, Value, VersionVector, codec};
use blazedb_tests::bench::{ROUNDS, alternating_blocking, raw_fjall_layout_of};
use clap::Parser;
use fjall::{KeyspaceCreateOptions, PersistMode};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks the sync engine beside raw fjall")]
struct Args {
    /// Operations in the apply benchmark.
    #[arg(long, default_value_t = 200_000)]
    apply_ops: u64,
    /// Operations in the catch-up benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    catch_up_ops: u64,
    /// Small counts: a smoke run, not a measurement.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object with the figures and ratios as the last line.
    #[arg(long)]
    json: bool,
    /// Run only these sections (apply, catch-up, rules, e2e, codec,
    /// compaction); all when not given.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Count instructions per applied op under valgrind's callgrind, the
    /// engine's (every thread of its process) beside raw fjall's inserts,
    /// instead of timing them.
    #[arg(long)]
    callgrind: bool,
    /// Keep the callgrind output files in this folder.
    #[arg(long, value_name = "DIR")]
    callgrind_out: Option<std::path::PathBuf>,
    /// A run under callgrind, in a child: `engine` or `raw`, and how many
    /// ops.
    #[arg(long, num_args = 2, value_names = ["WHAT", "OPS"], hide = true)]
    apply_child: Vec<String>,
}

const DB: &str = "bench";
/// The start of the benchmark's clock.
const T0: u64 = 1_750_000_000_000;

fn fields(i: u64) -> Fields {
    Fields::from([
        ("title".into(), Value::String(format!("Bug number {i}"))),
        ("status".into(), Value::String("open".into())),
        ("priority".into(), Value::Int((i % 5) as i64)),
        ("owner".into(), Value::String("someone@example.com".into())),
    ])
}

/// A replica that has made `n` puts to `records` distinct records.
fn source(n: u64, records: u64) -> MemoryStore {
    let mut s = MemoryStore::new(DeviceId([7; 32]));
    s.create_db(DB, 1, SyncMode::Sync, 0);
    for i in 0..n {
        let body = OpBody::Put {
            collection: "bugs".into(),
            id: format!("b{:08}", i % records),
            fields: fields(i),
        };
        s.write(DB, T0 + i / 100, body);
    }
    s
}

/// The ops the apply benchmark applies: `n` puts of new records, as their
/// writer's log holds them.
fn apply_ops(n: u64) -> Vec<Op> {
    source(n, n)
        .read_ops(DB, &Default::default(), 0, ReadLimits::UNBOUNDED)
        .map(|r| r.ops)
        .unwrap_or_default()
}

fn open_store(dir: &Path) -> anyhow::Result<Store> {
    open_store_with(dir, None)
}

/// A store with the database, end-to-end encrypted under `key` if given.
fn open_store_with(dir: &Path, key: Option<&ContentKey>) -> anyhow::Result<Store> {
    let store = Store::open(dir, DeviceId([9; 32]), StoreOptions::default())?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let settings = DbSettings {
        encryption: if key.is_some() {
            Encryption::E2e
        } else {
            Encryption::None
        },
        ..DbSettings::default()
    };
    if let Some(key) = key {
        store.add_key(DB, key.clone())?;
    }
    rt.block_on(store.create_db(DB, settings, false))?;
    Ok(store)
}

/// `ops` with their bodies sealed under `key`, as a writer of an e2e
/// database sends them.
fn sealed(ops: &[Op], key: &ContentKey) -> anyhow::Result<Vec<Op>> {
    ops.iter()
        .map(|o| {
            Ok(Op {
                body: key.seal(&SealedOp::of(DB, o), &o.body)?,
                ..o.clone()
            })
        })
        .collect()
}

fn shutdown(store: &Store) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(store.shutdown())?;
    Ok(())
}

/// The puts `ops` make, as (collection, id, fields).
fn puts_of(ops: &[Op]) -> anyhow::Result<Vec<(String, String, Fields)>> {
    ops.iter()
        .map(|op| match OpBody::decode(&op.body)? {
            OpBody::Put {
                collection,
                id,
                fields,
            } => Ok((collection, id, fields)),
            _ => anyhow::bail!("the benchmark makes puts only"),
        })
        .collect()
}

/// Hands `messages` from `peer` to `engine` one by one, as its driver
/// does. Kept apart (and never inlined) so that `--callgrind` counts this
/// and the writer thread, not the set-up around them.
#[inline(never)]
fn apply_messages(engine: &mut Engine<Store>, peer: DeviceId, messages: Vec<SyncMessage>) {
    for m in messages {
        engine.handle(peer, m, T0);
        while engine.poll_transmit().is_some() {}
    }
}

/// Raw fjall: the same encoded records, the same batch size, fsync per
/// batch.
fn raw_fjall(dir: &Path, ops: &[Op], batch: usize) -> anyhow::Result<f64> {
    let db = fjall::Database::builder(dir).open()?;
    let ks = db.keyspace("items", KeyspaceCreateOptions::default)?;
    let values: Vec<(Vec<u8>, Vec<u8>)> = puts_of(ops)?
        .into_iter()
        .map(|(collection, id, fields)| -> anyhow::Result<_> {
            let key = format!("{collection}\0{id}").into_bytes();
            Ok((key, codec::to_vec(&fields)?))
        })
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    raw_apply_batches(&db, &ks, &values, batch)?;
    Ok(ops.len() as f64 / t.elapsed().as_secs_f64())
}

/// The timed part of [`raw_fjall`], kept apart (and never inlined) so that
/// `--callgrind` counts this and not the encoding before it.
#[inline(never)]
fn raw_apply_batches(
    db: &fjall::Database,
    ks: &fjall::Keyspace,
    values: &[(Vec<u8>, Vec<u8>)],
    batch: usize,
) -> anyhow::Result<()> {
    for chunk in values.chunks(batch) {
        let mut b = db.batch().durability(Some(PersistMode::SyncAll));
        for (k, v) in chunk {
            b.insert(ks, k.as_slice(), v.as_slice());
        }
        b.commit()?;
    }
    Ok(())
}

/// The engine applying `ops` as a peer's `Ops` messages into a fresh
/// fjall store.
fn engine_apply(
    dir: &Path,
    ops: &[Op],
    batch: usize,
    rules: Option<AccessRules>,
    key: Option<&ContentKey>,
) -> anyhow::Result<f64> {
    let store = open_store_with(dir, key)?;
    let me = store.device();
    let peer = DeviceId([7; 32]);
    let mut engine = Engine::new(me, store.clone(), EngineConfig::default(), T0);
    if let Some(r) = rules {
        engine.set_rules(r, T0);
    }
    engine.connected(peer, T0);
    let epoch = 1;
    engine.handle(
        peer,
        SyncMessage::Vector {
            db: DB.into(),
            epoch,
            vector: Default::default(),
            want: false,
            reports: Vec::new(),
            refused: Vec::new(),
            stable: None,
            wish: None,
            lacking: false,
            sealed: key.is_some(),
            blind: false,
            sends: true,
            settings: None,
            incarnation: 0,
        },
        T0,
    );
    while engine.poll_transmit().is_some() {}
    let messages: Vec<SyncMessage> = ops
        .chunks(batch)
        .map(|c| SyncMessage::Ops {
            db: DB.into(),
            epoch,
            ops: c.to_vec(),
        })
        .collect();
    let t = Instant::now();
    apply_messages(&mut engine, peer, messages);
    let rate = ops.len() as f64 / t.elapsed().as_secs_f64();
    let got = store.sync_state(DB).map(|s| s.vector.get(&peer));
    anyhow::ensure!(
        got == Some(ops.len() as u64),
        "applied {got:?} of {} ops",
        ops.len()
    );
    shutdown(&store)?;
    Ok(rate)
}

/// How a fresh replica catches up in [`catch_up`].
#[derive(Debug, Clone, Copy, Default)]
struct CatchUp {
    /// By snapshot, not by the op stream.
    snapshot: bool,
    /// As a partial replica, under a rule.
    partial: bool,
    /// Without the index on `priority`, which each record then moves.
    unindexed: bool,
}

/// A fresh fjall replica catching up with `src` over an in-memory network.
fn catch_up(dir: &Path, src: MemoryStore, how: CatchUp) -> anyhow::Result<(f64, MemoryStore)> {
    let CatchUp {
        snapshot,
        partial,
        unindexed,
    } = how;
    let store = open_store(dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    if !unindexed {
        rt.block_on(store.set_index(DB, "bugs", "priority", true))?;
    }
    let (a_id, b_id) = (src.device(), store.device());
    let want = src.vector(DB);
    let config = EngineConfig {
        snapshot_after: if snapshot { 0 } else { u64::MAX },
        ..EngineConfig::default()
    };
    let mut a = Engine::new(a_id, src, config.clone(), T0);
    let mut b = Engine::new(b_id, store.clone(), config, T0);
    if partial {
        let rule = rules_for(b_id, vec![filter("priority", FilterOp::Eq, Value::Int(1))]);
        a.set_rules(rule.clone(), T0);
        b.set_rules(rule, T0);
    }
    let t = Instant::now();
    settle(&mut a, &mut b);
    let secs = t.elapsed().as_secs_f64();
    let got = store.sync_state(DB).map(|s| s.vector);
    anyhow::ensure!(
        got.as_ref() == Some(&want),
        "caught up to {got:?}, not {want:?}"
    );
    if partial {
        let held = store.query(&QueryParams {
            db: DB.into(),
            collection: "bugs".into(),
            limit: Some(10_000),
            ..QueryParams::default()
        })?;
        let allowed = |r: &blazedb_proto::api::Record| {
            r.fields.get("priority") == Some(&Value::Int(1)) && !r.fields.contains_key("owner")
        };
        anyhow::ensure!(
            !held.records.is_empty() && held.records.iter().all(allowed),
            "the partial replica holds records or fields its rule forbids"
        );
    }
    shutdown(&store)?;
    Ok((secs, a.into_store()))
}

/// Catch-up of a fresh replica holding the key of an end-to-end encrypted
/// database from a blind hub alone: the hub keeps a sealed checkpoint of
/// `src`'s records as of all but its last `tail` ops, and those ops,
/// sealed. Returns the seconds the catch-up took and the seconds setting
/// it up took.
fn blind_catch_up(dir: &Path, src: &MemoryStore, tail: usize) -> anyhow::Result<(f64, f64)> {
    let setup = Instant::now();
    let key = ContentKey::generate(1)?;
    let all = src
        .read_ops(DB, &Default::default(), 0, ReadLimits::UNBOUNDED)?
        .ops;
    let ops = sealed(&all, &key)?;
    let split = ops.len().saturating_sub(tail);
    // A device holding the key makes the checkpoint.
    let mut maker = open_store_with(&dir.join("maker"), Some(&key))?;
    for chunk in ops[..split].chunks(10_000) {
        maker.apply_ops(DB, chunk.to_vec(), &Default::default())?;
    }
    let checkpoint = maker
        .make_checkpoint(DB)?
        .context("a key holder makes a checkpoint")?;
    shutdown(&maker)?;
    // The hub holds the database blind: the checkpoint, then the tail.
    let mut hub = Store::open(&dir.join("hub"), DeviceId([8; 32]), StoreOptions::default())?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(hub.create_db_from_peer(
        DB,
        DbSettings {
            encryption: Encryption::E2e,
            ..DbSettings::default()
        },
    ))?;
    anyhow::ensure!(
        hub.take_checkpoint(DB, checkpoint)?,
        "the hub took no checkpoint"
    );
    hub.apply_ops(DB, ops[split..].to_vec(), &Default::default())?;
    let want = src.vector(DB);
    anyhow::ensure!(
        hub.sync_state(DB).map(|s| s.vector).as_ref() == Some(&want),
        "the hub does not hold everything"
    );
    let replica = open_store_with(&dir.join("replica"), Some(&key))?;
    let setup = setup.elapsed().as_secs_f64();

    let (a_id, b_id) = (hub.device(), replica.device());
    let mut a = Engine::new(a_id, hub.clone(), EngineConfig::default(), T0);
    let mut b = Engine::new(b_id, replica.clone(), EngineConfig::default(), T0);
    let t = Instant::now();
    settle(&mut a, &mut b);
    let secs = t.elapsed().as_secs_f64();
    let got = replica.sync_state(DB).map(|s| s.vector);
    anyhow::ensure!(
        got.as_ref() == Some(&want),
        "caught up to {got:?}, not {want:?}"
    );
    shutdown(&hub)?;
    shutdown(&replica)?;
    Ok((secs, setup))
}

/// Writes the puts of `ops` on a store of its own (its database end-to-end
/// encrypted under `key` if given), then reads them back from its log as
/// sync sends them to a peer lacking all of them, 512 at a time: whole
/// chunks as stored where it can, packed otherwise (a key holder's own
/// ops, sealed as they are read). Returns the ops read a second.
fn send_rate(dir: &Path, ops: &[Op], key: Option<&ContentKey>) -> anyhow::Result<f64> {
    let store = open_store_with(dir, key)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    for batch in puts_of(ops)?.chunks(1000) {
        let writes = batch
            .iter()
            .map(|(collection, id, fields)| Write::Put {
                collection: collection.clone(),
                id: Some(id.clone()),
                fields: fields.clone(),
            })
            .collect();
        rt.block_on(store.write(DB, writes))?;
    }
    let limits = ReadLimits {
        max_items: 512,
        max_bytes: 1 << 20,
    };
    // What the peer holds grows with what it was sent, as its engine's
    // vector does.
    let mut have = VersionVector::new();
    let (mut from, mut read) = (0, 0);
    let t = Instant::now();
    loop {
        let got = store.read_ops_packed(DB, &have, from, limits)?;
        let whole = got.chunks.iter().flat_map(|c| c.ids());
        let ids: Vec<_> = got.ops.ids().iter().chain(whole).copied().collect();
        if ids.is_empty() {
            break;
        }
        for (writer, seq) in &ids {
            have.set(*writer, *seq);
        }
        read += ids.len();
        from = got.next;
    }
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(read == ops.len(), "read {read} of {} ops", ops.len());
    shutdown(&store)?;
    Ok(ops.len() as f64 / secs)
}

/// Links `a` and `b` and passes messages between them until neither has
/// more.
fn settle<A: SyncStore, B: SyncStore>(a: &mut Engine<A>, b: &mut Engine<B>) {
    let (a_id, b_id) = (a.me(), b.me());
    a.connected(b_id, T0);
    b.connected(a_id, T0);
    loop {
        let mut moved = false;
        while let Some((_, m)) = a.poll_transmit() {
            b.handle(a_id, m, T0);
            moved = true;
        }
        while let Some((_, m)) = b.poll_transmit() {
            a.handle(b_id, m, T0);
            moved = true;
        }
        if !moved {
            break;
        }
    }
}

fn filter(field: &str, op: FilterOp, value: Value) -> RuleFilter {
    RuleFilter {
        field: field.into(),
        op,
        value,
        device: None,
    }
}

/// Rules that restrict `device` to collection `bugs`, records meeting
/// `filter`, and no `owner` field.
fn rules_for(device: DeviceId, filter: Vec<RuleFilter>) -> AccessRules {
    AccessRules {
        mesh: MeshId([1; 16]),
        db: DB.into(),
        version: 1,
        default: AccessLevel::ReadWrite,
        rules: vec![AccessRule {
            devices: vec![Selector::Device(device)],
            collections: Some(vec!["bugs".into()]),
            filter,
            exclude: vec!["owner".into()],
            access: AccessLevel::ReadWrite,
        }],
        signer: device,
        signed_ms: 0,
        links: Vec::new(),
    }
}

fn main() -> anyhow::Result<()> {
    // As the agent runs: raw fjall and the in-process store then work
    // under its memory settings, and the agents started inherit them.
    blazed::huge_pages::disable();
    let args = Args::parse();
    if let [what, n] = args.apply_child.as_slice() {
        return callgrind::child(what, n.parse()?);
    }
    if args.callgrind {
        return callgrind::run(args.quick, args.json, args.callgrind_out.as_deref());
    }
    let (apply_n, catch_n) = if args.quick {
        (5_000, 20_000)
    } else {
        (args.apply_ops, args.catch_up_ops)
    };
    let batch = EngineConfig::default().batch.max_items;
    let tmp = tempfile::tempdir()?;
    let mut figures = serde_json::Map::new();
    let mut note = |key: &str, value: f64| {
        figures.insert(key.to_owned(), serde_json::json!(value));
    };

    println!("sync engine benchmarks (fsync per batch of {batch})");
    let ops = apply_ops(apply_n);
    let runs = |section: &str| args.only.is_empty() || args.only.iter().any(|s| s == section);
    if runs("apply") {
        // Raw fjall and the engine alternate, and each figure is the
        // median of its rounds: one pair of runs swings more on this
        // machine than the gap being measured.
        let (raw, engine) = alternating_blocking(
            |round| raw_fjall(&tmp.path().join(format!("raw-{round}")), &ops, batch),
            |round| {
                engine_apply(
                    &tmp.path().join(format!("apply-{round}")),
                    &ops,
                    batch,
                    None,
                    None,
                )
            },
        )?;
        let layout = raw_fjall_layout_of(tmp.path(), puts_of(&ops)?.into_iter(), batch)?;
        println!(
            "apply {apply_n} remote puts of new records (raw and engine alternating, median of {ROUNDS} rounds):"
        );
        println!("  raw fjall batch inserts  {raw:>10.0} ops/s");
        println!(
            "  raw fjall, store layout  {layout:>10.0} ops/s  (records + a log chunk per batch; one run)"
        );
        println!(
            "  engine into fjall store  {engine:>10.0} ops/s  ({:.0}% of raw, target >= 60%; {:.0}% of the layout floor)",
            100.0 * engine / raw,
            100.0 * engine / layout
        );
        note("raw_put_rate", raw);
        note("layout_put_rate", layout);
        note("apply_rate", engine);
        note("apply_ratio_raw", engine / raw);
    }

    if runs("catch-up") {
        let t = Instant::now();
        let src = source(catch_n, catch_n / 4);
        println!(
            "catch-up of a fresh replica with {catch_n} ops over {} records (source built in {:.1} s):",
            catch_n / 4,
            t.elapsed().as_secs_f64()
        );
        let (full, src) = catch_up(&tmp.path().join("stream"), src, CatchUp::default())?;
        println!(
            "  op stream   {full:>6.2} s  ({:.0} ops/s)",
            catch_n as f64 / full
        );
        note("catch_up_stream_s", full);
        let snapshot = CatchUp {
            snapshot: true,
            ..CatchUp::default()
        };
        let (secs, src) = catch_up(&tmp.path().join("snapshot"), src, snapshot)?;
        println!(
            "  snapshot    {secs:>6.2} s  ({:.0} ops/s equivalent)",
            catch_n as f64 / secs
        );
        note("catch_up_snapshot_s", secs);
        let unindexed = CatchUp {
            unindexed: true,
            ..snapshot
        };
        let (secs, src) = catch_up(&tmp.path().join("plain"), src, unindexed)?;
        println!(
            "  snapshot, no index  {secs:>6.2} s  ({:.0} records/s: records not held here are stored as they came)",
            (catch_n / 4) as f64 / secs
        );
        note("catch_up_snapshot_unindexed_s", secs);
        let partial = CatchUp {
            partial: true,
            ..CatchUp::default()
        };
        let (secs, src) = catch_up(&tmp.path().join("partial"), src, partial)?;
        println!(
            "  partial     {secs:>6.2} s  ({:.0} ops/s; {:.0}% of the op stream's rate; where priority = 1, without owner)",
            catch_n as f64 / secs,
            100.0 * full / secs
        );
        let tail = (catch_n / 100) as usize;
        let (secs, setup) = blind_catch_up(&tmp.path().join("blind"), &src, tail)?;
        println!(
            "  e2e, from a blind hub alone: sealed checkpoint + {tail} sealed ops  {secs:>6.2} s  \
             ({:.0} ops/s; target: 1M ops <= 10 s; set up in {setup:.1} s)",
            catch_n as f64 / secs
        );
    }

    // An apply rate of this run, for the shares of sealing below.
    let mut plain_rate = None;
    if runs("rules") {
        // The writer is a device under a rule every one of its writes meets,
        // so all are applied, each after a check.
        let writer = DeviceId([7; 32]);
        let open = rules_for(
            writer,
            vec![filter("priority", FilterOp::Lt, Value::Int(10))],
        );
        let mut open_rule = open;
        open_rule.rules[0].exclude.clear();
        let plain = engine_apply(&tmp.path().join("plain"), &ops, batch, None, None)?;
        let checked = engine_apply(
            &tmp.path().join("checked"),
            &ops,
            batch,
            Some(open_rule),
            None,
        )?;
        println!("apply {apply_n} remote puts, the writer unrestricted and then under a rule:");
        println!("  unrestricted   {plain:>10.0} ops/s");
        println!(
            "  checked        {checked:>10.0} ops/s  (the check costs {:.0}% of apply throughput)",
            100.0 * (1.0 - checked / plain)
        );
        plain_rate = Some(plain);
    }

    if runs("e2e") {
        // The same puts into an end-to-end encrypted database: each body
        // opened before it is applied, and logged sealed.
        let key = ContentKey::generate(1)?;
        let sealed_ops = sealed(&ops, &key)?;
        let (plain_median, e2e) = alternating_blocking(
            |round| {
                engine_apply(
                    &tmp.path().join(format!("plain-{round}")),
                    &ops,
                    batch,
                    None,
                    None,
                )
            },
            |round| {
                engine_apply(
                    &tmp.path().join(format!("e2e-{round}")),
                    &sealed_ops,
                    batch,
                    None,
                    Some(&key),
                )
            },
        )?;
        println!(
            "apply {apply_n} remote puts, plaintext and e2e alternating, median of {ROUNDS} rounds:"
        );
        println!("  plaintext      {plain_median:>10.0} ops/s");
        println!(
            "  e2e            {e2e:>10.0} ops/s  ({:.0}% of plaintext; target >= 80%)",
            100.0 * e2e / plain_median
        );
        note("e2e_apply_ratio_plain", e2e / plain_median);
        plain_rate = plain_rate.or(Some(plain_median));

        // The other side: a writer's own puts read from its log for a
        // peer, as sync sends them. A key holder logs them clear and
        // seals them here, once for each peer it sends them to.
        let (plain_send, e2e_send) = alternating_blocking(
            |round| send_rate(&tmp.path().join(format!("send-plain-{round}")), &ops, None),
            |round| {
                send_rate(
                    &tmp.path().join(format!("send-e2e-{round}")),
                    &ops,
                    Some(&key),
                )
            },
        )?;
        println!(
            "read {apply_n} of a writer's own puts from its log for a peer, median of {ROUNDS} rounds:"
        );
        println!("  plaintext      {plain_send:>10.0} ops/s  (whole chunks, as stored)");
        println!(
            "  e2e            {e2e_send:>10.0} ops/s  ({:.0}% of plaintext; packed, each sealed on its way out)",
            100.0 * e2e_send / plain_send
        );
        note("e2e_send_ratio_plain", e2e_send / plain_send);
    }

    if runs("codec") {
        let (seal, open) = seal_and_open(&ops)?;
        let share = |rate: f64| {
            plain_rate.map_or_else(String::new, |plain| {
                format!(
                    "  ({:.1}% of the time of applying them)",
                    100.0 * plain / rate
                )
            })
        };
        println!("seal and open the same {apply_n} op bodies under a content key (AES-256-GCM):");
        println!("  seal           {seal:>10.0} ops/s{}", share(seal));
        println!("  open           {open:>10.0} ops/s{}", share(open));
        let packed = message_coding(&ops, batch, Form::Packed)?;
        let serde = message_coding(&ops, batch, Form::Serde)?;
        println!("the same ops as op-stream messages of {batch}:");
        for (name, c) in [("packed (sent)", &packed), ("serde's form", &serde)] {
            println!(
                "  {name:<14} {:>5.0} B an op, written {:>10.0} ops/s, read {:>10.0} ops/s",
                c.bytes, c.encode, c.decode
            );
        }
        println!(
            "  packed against serde's form: {:.0}% of the bytes, {:.1}x the writes, {:.1}x the reads",
            100.0 * packed.bytes / serde.bytes,
            packed.encode / serde.encode,
            packed.decode / serde.decode
        );
        note("ops_message_bytes_per_op", packed.bytes);
        note("ops_message_bytes_ratio_serde", packed.bytes / serde.bytes);
        note("ops_message_encode_rate", packed.encode);
        note(
            "ops_message_encode_ratio_serde",
            packed.encode / serde.encode,
        );
        note("ops_message_decode_rate", packed.decode);
        note(
            "ops_message_decode_ratio_serde",
            packed.decode / serde.decode,
        );
    }
    if runs("compaction") {
        let records = catch_n / 4;
        let c = compaction(&tmp.path().join("compaction"), records)?;
        let ms = |s: f64| s * 1e3;
        println!(
            "compaction of {records} records, {} of them deleted (tombstones too young to drop), each pass holding the writer:",
            records / 1000
        );
        println!(
            "  a walk of every record in one pass  {:>8.1} ms  (every first pass after a start, before)",
            ms(c.whole_walk)
        );
        println!(
            "  the walk in {} passes, the longest  {:>8.1} ms  (up to {} records a pass)",
            c.walk_passes,
            ms(c.longest_walk_pass),
            StoreOptions::default().compaction_walk_step
        );
        println!(
            "  once walked, a pass                 {:>8.1} ms  (the noted tombstones read; {:.0}x less than a whole walk)",
            ms(c.noted),
            c.whole_walk / c.noted
        );
        let trim_step = StoreOptions::default().compaction_trim_step;
        println!(
            "  trimming the log, every op held      {:>8.1} ms  (the longest of {} passes of up to {trim_step} ops; {} of its {} ops)",
            ms(c.trim),
            c.trim_passes,
            c.trimmed,
            c.logged
        );
        let per_op = c.trim * 1e9 / c.trimmed.min(trim_step).max(1) as f64;
        println!("    {per_op:.0} ns an op trimmed, in the longest pass");
        note("compaction_whole_walk_ms", ms(c.whole_walk));
        note("compaction_longest_trim_pass_ms", ms(c.trim));
        note("compaction_trim_ns_per_op", per_op);
        note("compaction_longest_walk_pass_ms", ms(c.longest_walk_pass));
        note("compaction_noted_ms", ms(c.noted));
    }
    if args.json {
        println!("{}", serde_json::Value::Object(figures));
    }
    Ok(())
}

/// What [`compaction`] measured, in seconds.
struct Compaction {
    /// One pass that walks every record, as every first pass after a
    /// start did before the walk came in slices.
    whole_walk: f64,
    /// The passes the walk now takes, after a start.
    walk_passes: usize,
    /// The longest of them.
    longest_walk_pass: f64,
    /// A pass once the walk is done: the noted tombstones alone.
    noted: f64,
    /// Ops the log held; how many of them the passes that trimmed all but
    /// the newest `retain_log` removed, every op being held everywhere;
    /// how many passes that took, and the longest.
    logged: u64,
    trimmed: u64,
    trim_passes: usize,
    trim: f64,
}

/// Compactions of a database of `records` records, a thousandth of them
/// deleted, their tombstones kept (too young to drop) until the last pass,
/// which drops them, to check they were all found.
fn compaction(dir: &Path, records: u64) -> anyhow::Result<Compaction> {
    let mut src = source(records, records);
    let deleted = records / 1000;
    for i in 0..deleted {
        let body = OpBody::Delete {
            collection: "bugs".into(),
            id: format!("b{:08}", i * 1000),
        };
        src.write(DB, T0 + records, body);
    }
    let ops = src
        .read_ops(DB, &Default::default(), 0, ReadLimits::UNBOUNDED)?
        .ops;
    let open = |walk_step: usize| {
        let options = StoreOptions {
            compaction_walk_step: walk_step,
            ..StoreOptions::default()
        };
        Store::open(dir, DeviceId([9; 32]), options)
    };
    // A stable vector of nothing: the log stays whole, and each pass only
    // looks for tombstones.
    let (none, young) = (VersionVector::default(), Hlc(0));
    // Seconds, and whether the store says there is more.
    let timed = |store: &mut Store| -> anyhow::Result<(f64, bool)> {
        let t = Instant::now();
        let kept = store.compact(DB, &none, young)?;
        anyhow::ensure!(kept.tombstones == 0, "dropped young tombstones: {kept:?}");
        Ok((t.elapsed().as_secs_f64(), kept.more))
    };

    let mut store = open(usize::MAX)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(store.create_db(DB, DbSettings::default(), false))?;
    let screen = WriteScreen::default();
    for chunk in ops.chunks(EngineConfig::default().batch.max_items) {
        store.apply_ops(DB, chunk.to_vec(), &screen)?;
    }
    shutdown(&store)?;
    drop(store);
    // Each walk after a start, as the agent's first compactions are.
    let mut store = open(usize::MAX)?;
    let (whole_walk, _) = timed(&mut store)?;
    shutdown(&store)?;
    drop(store);

    let mut store = open(StoreOptions::default().compaction_walk_step)?;
    let (mut walk_passes, mut longest_walk_pass) = (0, 0.0_f64);
    loop {
        let (secs, more) = timed(&mut store)?;
        longest_walk_pass = longest_walk_pass.max(secs);
        walk_passes += 1;
        if !more || walk_passes == 1000 {
            break;
        }
    }
    let (noted, _) = timed(&mut store)?;
    let every = src
        .sync_state(DB)
        .context("the source holds the database")?
        .vector;
    let (mut trimmed, mut trim_passes, mut trim) = (0, 0, 0.0_f64);
    loop {
        let t = Instant::now();
        let pass = store.compact(DB, &every, young)?;
        trim = trim.max(t.elapsed().as_secs_f64());
        trimmed += pass.ops;
        trim_passes += 1;
        if !pass.more || trim_passes == 1000 {
            break;
        }
    }
    let logged = ops.len() as u64;
    let retained = StoreOptions::default().retain_log;
    anyhow::ensure!(
        trimmed == logged.saturating_sub(retained),
        "trimmed {trimmed} of {logged} ops, keeping the newest {retained}"
    );
    let dropped = store.compact(DB, &none, Hlc(u64::MAX))?;
    anyhow::ensure!(
        dropped.tombstones == deleted,
        "the last compaction dropped {dropped:?}; expected {deleted} tombstones"
    );
    shutdown(&store)?;
    Ok(Compaction {
        whole_walk,
        walk_passes,
        longest_walk_pass,
        noted,
        logged,
        trimmed,
        trim_passes,
        trim,
    })
}

/// The two wire forms of an `Ops` message.
#[derive(Clone, Copy)]
enum Form {
    /// What peers send (`SyncMessage::encode`).
    Packed,
    /// serde's generic form, which peers sent before.
    Serde,
}

/// What [`message_coding`] measured: bytes an op, and ops written and
/// read a second.
struct Coding {
    bytes: f64,
    encode: f64,
    decode: f64,
}

/// Writes `ops` as `Ops` messages of `batch` in `form` and reads them
/// back with `SyncMessage::decode`, after checking they read back as
/// written; the timed writes go into one buffer, as a sender's do.
fn message_coding(ops: &[Op], batch: usize, form: Form) -> anyhow::Result<Coding> {
    let messages: Vec<SyncMessage> = ops
        .chunks(batch)
        .map(|c| SyncMessage::Ops {
            db: DB.into(),
            epoch: 1,
            ops: c.to_vec(),
        })
        .collect();
    let encode = |out: &mut Vec<u8>, m: &SyncMessage| match form {
        Form::Packed => m.encode_into(out),
        Form::Serde => codec::encode_into(out, m),
    };
    let encoded = messages
        .iter()
        .map(|m| {
            let mut out = Vec::new();
            encode(&mut out, m).map(|()| out)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rate = |t: Instant| ops.len() as f64 / t.elapsed().as_secs_f64();
    // A sender encodes each message into a buffer it reuses.
    let mut out = Vec::new();
    let t = Instant::now();
    for m in &messages {
        out.clear();
        encode(&mut out, m)?;
    }
    let encode = rate(t);
    for (bytes, m) in encoded.iter().zip(&messages) {
        anyhow::ensure!(
            SyncMessage::decode(bytes)? == *m,
            "the op stream read back otherwise"
        );
    }
    // Each message is dropped once read, as a receiver applies and drops
    // it.
    let t = Instant::now();
    for bytes in &encoded {
        drop(SyncMessage::decode(bytes)?);
    }
    let decode = rate(t);
    let bytes = encoded.iter().map(Vec::len).sum::<usize>() as f64 / ops.len() as f64;
    Ok(Coding {
        bytes,
        encode,
        decode,
    })
}

/// Seals every op's body as the op's own, then opens each again; returns
/// both rates.
fn seal_and_open(ops: &[Op]) -> anyhow::Result<(f64, f64)> {
    let key = ContentKey::generate(1)?;
    let t = Instant::now();
    let sealed = ops
        .iter()
        .map(|o| key.seal(&SealedOp::of(DB, o), &o.body))
        .collect::<Result<Vec<_>, _>>()?;
    let seal_rate = ops.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (o, s) in ops.iter().zip(&sealed) {
        let body = open(|_| Some(&key), &SealedOp::of(DB, o), s)?;
        anyhow::ensure!(body == o.body, "a body opened to other bytes");
    }
    let open_rate = ops.len() as f64 / t.elapsed().as_secs_f64();
    Ok((seal_rate, open_rate))
}
