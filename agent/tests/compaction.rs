//! Compaction drops the tombstones every replica has seen: those found by
//! its first walk of a database, those deleted since (which it reads
//! without a walk), never a record written again since its delete, and
//! after a restart those the last run left; a walk of many records, and
//! a trim of many log entries, is spread over several compactions, each
//! saying whether there is more.

#![allow(clippy::unwrap_used)]

use blazed::store::{Store, StoreError, StoreOptions};
use blazed::sync::{ReadLimits, SyncStore};
use blazedb_proto::api::{DbSettings, Write};
use blazedb_proto::{DeviceId, Fields, Hlc, Value};

const DB: &str = "notes";

fn put(id: &str, n: i64) -> Write {
    Write::Put {
        collection: "c".into(),
        id: Some(id.into()),
        fields: Fields::from([("n".into(), Value::Int(n))]),
    }
}

fn delete(id: &str) -> Write {
    Write::Delete {
        collection: "c".into(),
        id: id.into(),
    }
}

/// How many records the store holds, tombstones included.
fn stored(store: &Store) -> usize {
    store
        .read_snapshot(DB, None, ReadLimits::UNBOUNDED)
        .unwrap()
        .records
        .len()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Creates the database with records r0 to r9.
fn ten_records(rt: &tokio::runtime::Runtime, store: &Store) {
    rt.block_on(store.create_db(DB, DbSettings::default(), false))
        .unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    rt.block_on(store.write(DB, ids.iter().map(|id| put(id, 1)).collect()))
        .unwrap();
}

/// Compacts with every tombstone old enough (`all`) or none.
fn compact(store: &mut Store, all: bool) -> u64 {
    let stable = store.sync_state(DB).unwrap().vector;
    let horizon = if all { Hlc(u64::MAX) } else { Hlc(0) };
    store.compact(DB, &stable, horizon).unwrap().tombstones
}

#[test]
fn compaction_drops_old_tombstones_written_before_and_after_its_first_walk() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let open = || Store::open(dir.path(), DeviceId([1; 32]), StoreOptions::default()).unwrap();
    let mut store = open();
    ten_records(&rt, &store);
    rt.block_on(store.write(DB, vec![delete("r0"), delete("r1")]))
        .unwrap();

    // The first compaction walks the records; the tombstones are too young.
    assert_eq!(compact(&mut store, false), 0);
    assert_eq!(stored(&store), 10);

    // Deleted after the walk; and one tombstone written again.
    rt.block_on(store.write(DB, vec![delete("r2"), delete("r3"), put("r1", 2)]))
        .unwrap();
    assert_eq!(compact(&mut store, true), 3, "r0, r2 and r3");
    assert_eq!(stored(&store), 7);
    let revived = store.get(DB, "c", "r1").unwrap().expect("r1 lives");
    assert_eq!(revived.fields.get("n"), Some(&Value::Int(2)));
    assert!(store.get(DB, "c", "r2").unwrap().is_none());
    assert_eq!(compact(&mut store, true), 0, "nothing left to drop");

    // A restart knows nothing of the last run's tombstones: they are found.
    rt.block_on(store.write(DB, vec![delete("r4")])).unwrap();
    assert_eq!(compact(&mut store, false), 0);
    rt.block_on(store.shutdown()).unwrap();
    drop(store);
    let mut store = open();
    assert_eq!(compact(&mut store, true), 1, "r4, after the restart");
    assert_eq!(stored(&store), 6);
    rt.block_on(store.shutdown()).unwrap();
}

#[test]
fn a_walk_for_tombstones_reads_a_slice_of_the_records_at_each_compaction() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        compaction_walk_step: 2,
        ..StoreOptions::default()
    };
    let mut store = Store::open(dir.path(), DeviceId([1; 32]), options).unwrap();
    ten_records(&rt, &store);
    rt.block_on(store.write(DB, vec![delete("r1"), delete("r5"), delete("r9")]))
        .unwrap();

    // r0 and r1 are read; r1 is kept, too young.
    assert_eq!(compact(&mut store, false), 0);
    // Deleted ahead of the walk, so noted: it goes with r1, before the walk
    // reaches it.
    rt.block_on(store.write(DB, vec![delete("r3")])).unwrap();
    let passes: Vec<u64> = (0..5).map(|_| compact(&mut store, true)).collect();
    // r1 and r3 (noted); r4, r5; r6, r7; r8, r9; the end.
    assert_eq!(passes, [2, 1, 0, 1, 0]);
    assert_eq!(stored(&store), 6);
    rt.block_on(store.shutdown()).unwrap();
}

#[test]
fn a_long_trim_of_the_log_is_spread_over_passes_that_say_there_is_more() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        compaction_trim_step: 4,
        retain_log: 0,
        ..StoreOptions::default()
    };
    let mut store = Store::open(dir.path(), DeviceId([1; 32]), options).unwrap();
    ten_records(&rt, &store);
    let stable = store.sync_state(DB).unwrap().vector;
    let passes: Vec<(u64, bool)> = (0..4)
        .map(|_| {
            let c = store.compact(DB, &stable, Hlc(0)).unwrap();
            (c.ops, c.more)
        })
        .collect();
    assert_eq!(passes, [(4, true), (4, true), (2, false), (0, false)]);
    let db = store.db(DB).unwrap();
    let expired = store.read_changes(&db, 9, None, 100).unwrap_err();
    assert!(
        matches!(expired, StoreError::CursorExpired { trimmed: 10, .. }),
        "every entry trimmed: {expired}"
    );
    rt.block_on(store.shutdown()).unwrap();
}
