//! The change log apps read: once compaction trims it, a cursor from
//! before the trim is refused as expired (never replayed with holes), and
//! the error says how to start over.

#![allow(clippy::unwrap_used)]

use blazed::store::{Store, StoreError, StoreOptions};
use blazed::sync::SyncStore;
use blazedb_proto::api::{DbSettings, Write};
use blazedb_proto::{DeviceId, ErrorCode, Fields, Hlc, Value};

#[test]
fn a_cursor_from_before_compaction_is_expired_not_replayed_with_holes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        retain_log: 3,
        ..StoreOptions::default()
    };
    let mut store = Store::open(dir.path(), DeviceId([1; 32]), options).unwrap();
    rt.block_on(store.create_db("notes", DbSettings::default(), false))
        .unwrap();
    let writes = (0..10)
        .map(|i| Write::Put {
            collection: "c".into(),
            id: Some(format!("r{i}")),
            fields: Fields::from([("n".into(), Value::Int(i))]),
        })
        .collect();
    rt.block_on(store.write("notes", writes)).unwrap();
    let db = store.db("notes").unwrap();
    let (all, _) = store.read_changes(&db, 0, None, 100).unwrap();
    assert_eq!(all.len(), 10, "nothing trimmed yet: every change from 0");

    // Every write is held everywhere: compaction keeps the newest three.
    let stable = store.sync_state("notes").unwrap().vector;
    let compacted = store.compact("notes", &stable, Hlc(0)).unwrap();
    assert_eq!(compacted.ops, 7);

    let expired = store.read_changes(&db, 0, None, 100).unwrap_err();
    assert!(
        matches!(expired, StoreError::CursorExpired { trimmed: 7, .. }),
        "{expired}"
    );
    assert_eq!(expired.code(), ErrorCode::CursorExpired);
    assert!(expired.to_string().contains("query"), "{expired}");
    let (rest, last) = store.read_changes(&db, 7, None, 100).unwrap();
    assert_eq!((rest.len(), last), (3, 10));
    rt.block_on(store.shutdown()).unwrap();
}
