//! Gets read records through the store's record cache; whatever the
//! cache keeps, a get never returns a record older than one whose write
//! was acknowledged before the get began.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use blazed::store::{Store, StoreOptions};
use blazedb_proto::api::{DbSettings, Write};
use blazedb_proto::{DeviceId, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A store in a new directory, with database `db`, and a runtime to
/// drive it.
fn store_with_db() -> (tokio::runtime::Runtime, tempfile::TempDir, Store) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), DeviceId([1; 32]), StoreOptions::default()).unwrap();
    rt.block_on(store.create_db("db", DbSettings::default(), false))
        .unwrap();
    (rt, dir, store)
}

fn put(id: &str, v: i64) -> Write {
    Write::Put {
        collection: "c".into(),
        id: Some(id.into()),
        fields: [("v".to_owned(), Value::Int(v))].into(),
    }
}

fn read(store: &Store, id: &str) -> Option<i64> {
    let record = store.get("db", "c", id).unwrap()?;
    match record.fields.get("v") {
        Some(Value::Int(v)) => Some(*v),
        other => panic!("unexpected field {other:?}"),
    }
}

#[test]
fn a_get_sees_every_acknowledged_write_while_others_read() {
    let (rt, _dir, store) = store_with_db();
    rt.block_on(store.write("db", vec![put("k", 0)])).unwrap();

    let acked = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, acked, done) = (store.clone(), acked.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let before = acked.load(Ordering::SeqCst);
                    let got = read(&store, "k").unwrap();
                    assert!(
                        got >= before,
                        "a get returned {got} after {before} was acknowledged"
                    );
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let writes = 3000;
    for v in 1..=writes {
        rt.block_on(store.write("db", vec![put("k", v)])).unwrap();
        acked.store(v, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0);
    assert_eq!(read(&store, "k"), Some(writes));
    rt.block_on(store.shutdown()).unwrap();
}

#[test]
fn deletes_drops_and_recreated_databases_are_never_read_from_the_cache() {
    let (rt, _dir, store) = store_with_db();
    rt.block_on(store.write("db", vec![put("a", 1), put("b", 2)]))
        .unwrap();
    // Read twice: the second comes from the cache.
    for _ in 0..2 {
        assert_eq!(read(&store, "a"), Some(1));
        assert_eq!(read(&store, "b"), Some(2));
    }
    let delete = Write::Delete {
        collection: "c".into(),
        id: "a".into(),
    };
    rt.block_on(store.write("db", vec![delete])).unwrap();
    assert_eq!(read(&store, "a"), None);

    rt.block_on(store.drop_db("db", false)).unwrap();
    rt.block_on(store.create_db("db", DbSettings::default(), false))
        .unwrap();
    rt.block_on(store.write("db", vec![put("a", 9)])).unwrap();
    assert_eq!(read(&store, "a"), Some(9));
    assert!(
        matches!(
            store.get("db", "c", "b"),
            Err(blazed::store::StoreError::UnknownCollection { .. }) | Ok(None)
        ),
        "a dropped database's record is gone"
    );
    rt.block_on(store.shutdown()).unwrap();
}

#[test]
fn the_cache_counts_what_it_answered_and_a_drop_gives_its_room_back() {
    let (rt, _dir, store) = store_with_db();
    rt.block_on(store.write("db", vec![put("a", 1)])).unwrap();
    let before = store.record_cache_stats();
    assert_eq!(read(&store, "a"), Some(1));
    assert_eq!(read(&store, "a"), Some(1));
    let after = store.record_cache_stats();
    assert_eq!(
        after.misses - before.misses,
        1,
        "the first get reads the tables"
    );
    assert_eq!(
        after.hits - before.hits,
        1,
        "the second is answered from the cache"
    );
    assert!(after.bytes > 0);
    rt.block_on(store.drop_db("db", false)).unwrap();
    assert_eq!(store.record_cache_stats().bytes, 0);
    rt.block_on(store.shutdown()).unwrap();
}
