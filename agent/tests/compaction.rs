//! Compaction drops the tombstones every replica has seen: those found by
//! its first walk of a database, those deleted since (which it reads
//! without a walk), never a record written again since its delete, and
//! after a restart those the last run left.

#![allow(clippy::unwrap_used)]

use blazed::store::{Store, StoreOptions};
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

/// Compacts with every tombstone old enough (`all`) or none.
fn compact(store: &mut Store, all: bool) -> u64 {
    let stable = store.sync_state(DB).unwrap().vector;
    let horizon = if all { Hlc(u64::MAX) } else { Hlc(0) };
    store.compact(DB, &stable, horizon).unwrap().tombstones
}

#[test]
fn compaction_drops_old_tombstones_written_before_and_after_its_first_walk() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let open = || Store::open(dir.path(), DeviceId([1; 32]), StoreOptions::default()).unwrap();
    let mut store = open();
    rt.block_on(store.create_db(DB, DbSettings::default(), false))
        .unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    rt.block_on(store.write(DB, ids.iter().map(|id| put(id, 1)).collect()))
        .unwrap();
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
