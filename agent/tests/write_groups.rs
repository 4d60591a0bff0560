//! Writes that share a commit, in one batch or in commands that arrive
//! together, each see the records the earlier ones left before anything
//! is committed.

#![allow(clippy::unwrap_used)]

use blazed::store::{Store, StoreOptions};
use blazedb_proto::api::{DbSettings, Write};
use blazedb_proto::{DeviceId, Fields, Value};

fn put(id: &str, fields: &[(&str, i64)]) -> Write {
    Write::Put {
        collection: "c".into(),
        id: Some(id.into()),
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::Int(*v)))
            .collect(),
    }
}

fn patch(id: &str, set: &[(&str, i64)], unset: &[&str]) -> Write {
    Write::Patch {
        collection: "c".into(),
        id: id.into(),
        set: set
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::Int(*v)))
            .collect(),
        unset: unset.iter().map(|f| (*f).to_owned()).collect(),
    }
}

fn fields(store: &Store, id: &str) -> Option<Fields> {
    store.get("d", "c", id).unwrap().map(|r| r.fields)
}

fn ints(pairs: &[(&str, i64)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::Int(*v)))
        .collect()
}

/// A store in a fresh directory with an empty database `d`.
fn store_with_db(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), DeviceId([1; 32]), StoreOptions::default()).unwrap();
    rt.block_on(store.create_db("d", DbSettings::default(), false))
        .unwrap();
    (dir, store)
}

#[test]
fn a_batch_reads_back_its_own_earlier_writes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_dir, store) = store_with_db(&rt);
    let writes = vec![
        put("a", &[("x", 1), ("y", 2)]),
        patch("a", &[("y", 3)], &["x"]),
        put("b", &[("x", 1)]),
        Write::Delete {
            collection: "c".into(),
            id: "b".into(),
        },
        put("b", &[("z", 5)]),
        patch("b", &[("w", 6)], &[]),
        patch("a", &[("v", 4)], &[]),
    ];
    rt.block_on(store.write("d", writes)).unwrap();
    assert_eq!(fields(&store, "a"), Some(ints(&[("v", 4), ("y", 3)])));
    assert_eq!(fields(&store, "b"), Some(ints(&[("w", 6), ("z", 5)])));
    rt.block_on(store.shutdown()).unwrap();
}

#[test]
fn commands_that_share_a_commit_see_each_other() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_dir, store) = store_with_db(&rt);
    rt.block_on(store.write("d", vec![put("r", &[("base", 0)])]))
        .unwrap();
    // Sent all at once, so the writer takes many of them into one group:
    // each patch must merge into the record the one before it left.
    let names: Vec<String> = (0..200).map(|i| format!("f{i:03}")).collect();
    let handles: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (store, name) = (store.clone(), name.clone());
            rt.spawn(async move {
                store
                    .write("d", vec![patch("r", &[(&name, i as i64)], &[])])
                    .await
            })
        })
        .collect();
    for h in handles {
        rt.block_on(h).unwrap().unwrap();
    }
    let mut want: Fields = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), Value::Int(i as i64)))
        .collect();
    want.insert("base".into(), Value::Int(0));
    assert_eq!(fields(&store, "r"), Some(want));
    rt.block_on(store.shutdown()).unwrap();
}

/// Records written out of key order in one commit, each twice: each keeps
/// its last write, read at once and after a restart (fjall's journal
/// replays the commit's entries, both of each key, in one batch).
#[test]
fn records_written_out_of_key_order_keep_their_last_writes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (dir, store) = store_with_db(&rt);
    let ids = ["d", "c", "b", "a", "e"];
    let writes = (0..2)
        .flat_map(|round| ids.map(|id| put(id, &[("round", round)])))
        .collect();
    rt.block_on(store.write("d", writes)).unwrap();
    for id in ids {
        assert_eq!(fields(&store, id), Some(ints(&[("round", 1)])), "{id}");
    }
    rt.block_on(store.shutdown()).unwrap();
    drop(store);
    let store = Store::open(dir.path(), DeviceId([1; 32]), StoreOptions::default()).unwrap();
    for id in ids {
        assert_eq!(
            fields(&store, id),
            Some(ints(&[("round", 1)])),
            "{id} after a restart"
        );
    }
    rt.block_on(store.shutdown()).unwrap();
}
