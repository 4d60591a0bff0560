//! `blazed repair`: finds damaged store files by reading every entry, and
//! on request rebuilds what they held.
//!
//! Reading an entry checks the checksum of the block it is in, so a full
//! scan of a keyspace finds any damage to its table files. What a rebuild
//! does depends on what was damaged:
//!
//! - an index: it is cleared and built again from the records;
//! - the records or the change log: every record that can still be read
//!   (scanning forwards up to the damage and backwards down to it) is
//!   kept and merged back in as a snapshot would be (logged for
//!   subscribers, indexed), the old log goes, and the database forgets
//!   which operations it holds and asks its peers for a whole state that
//!   replaces its own, as after a restore. A database that syncs with
//!   nobody keeps only what could be read.
//!
//! A rebuilt database's change log takes a new id (subscribers read the
//! records again), and the next start takes a new write incarnation, as
//! the device's writes since its last sync may now be known only to peers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use blazedb_proto::api::SyncMode;
use blazedb_proto::{SnapshotRecord, codec};
use fjall::{Keyspace, PersistMode, Slice};
use serde::Serialize;

use super::record::StoredRecord;
use super::{DbState, StoreError, SyncMeta, keys, lock, new_epoch, read_lock, sync_meta_key};

/// The records kept from a database that starts over.
pub(super) type Kept = Vec<SnapshotRecord>;

/// What a scan of one keyspace found.
#[derive(Debug, Clone, Serialize)]
pub struct KeyspaceCheck {
    /// Entries read before the damage (all of them when there is none).
    pub entries: u64,
    /// The error the damage gave, if any.
    pub damage: Option<String>,
    /// The keyspace's directory, where its table files are.
    pub path: PathBuf,
}

/// What `repair` found in one database, and what it did.
#[derive(Debug, Clone, Serialize)]
pub struct DbRepair {
    /// The database.
    pub db: String,
    /// Its records.
    pub records: KeyspaceCheck,
    /// Its change log.
    pub log: KeyspaceCheck,
    /// Its secondary indexes.
    pub index: KeyspaceCheck,
    /// What the rebuild did; `None` when nothing was damaged or no rebuild
    /// was asked for.
    pub rebuilt: Option<String>,
}

impl DbRepair {
    /// Whether any of its keyspaces is damaged.
    pub fn damaged(&self) -> bool {
        [&self.records, &self.log, &self.index]
            .iter()
            .any(|c| c.damage.is_some())
    }
}

fn check(ks: &Keyspace) -> KeyspaceCheck {
    let mut entries = 0;
    let mut damage = None;
    for kv in ks.iter() {
        match kv.into_inner() {
            Ok(_) => entries += 1,
            Err(e) => {
                damage = Some(StoreError::from(e).to_string());
                break;
            }
        }
    }
    KeyspaceCheck {
        entries,
        damage,
        path: ks.path().to_path_buf(),
    }
}

/// Scans every database in `dbs`. When `rebuild` is set, it rebuilds the
/// damaged indexes here, and clears each database whose records or log
/// are damaged: those come back with the records still readable, which
/// the caller merges back (as a snapshot, so they are logged and indexed).
pub(super) fn run(
    fj: &fjall::Database,
    meta: &Keyspace,
    dbs: &[std::sync::Arc<DbState>],
    rebuild: bool,
) -> Result<Vec<(DbRepair, Option<Kept>)>, StoreError> {
    let mut out = Vec::new();
    for db in dbs {
        let mut found = DbRepair {
            db: db.name.clone(),
            records: check(&db.records),
            log: check(&db.log),
            index: check(&db.index),
            rebuilt: None,
        };
        let mut kept = None;
        if rebuild && found.damaged() {
            if found.records.damage.is_none() && found.log.damage.is_none() {
                db.index.clear()?;
                rebuild_indexes(fj, db)?;
                found.rebuilt =
                    Some("cleared its indexes and built them again from the records".to_owned());
            } else {
                let records = start_over(fj, meta, db)?;
                let from_peers = if db.settings().sync_mode == SyncMode::Local {
                    "it syncs with nobody, so the rest is lost"
                } else {
                    "peers send the rest at the next start"
                };
                found.rebuilt = Some(format!(
                    "kept the {} records that could be read and started the change log over; \
                     {from_peers}",
                    records.len()
                ));
                kept = Some(records);
            }
        }
        out.push((found, kept));
    }
    Ok(out)
}

/// Every entry of `ks` that can be read: forwards up to the first damage,
/// then backwards down to the last.
fn salvage(ks: &Keyspace) -> BTreeMap<Slice, Slice> {
    let mut kept = BTreeMap::new();
    for kv in ks.iter() {
        let Ok((k, v)) = kv.into_inner() else { break };
        kept.insert(k, v);
    }
    for kv in ks.iter().rev() {
        let Ok((k, v)) = kv.into_inner() else { break };
        kept.insert(k, v);
    }
    kept
}

/// Clears `db` and makes it a replica that holds no operation and asks
/// peers for a whole state; returns the records that could be read.
fn start_over(
    fj: &fjall::Database,
    meta: &Keyspace,
    db: &DbState,
) -> Result<Vec<SnapshotRecord>, StoreError> {
    let kept = salvage(&db.records);
    db.records.clear()?;
    db.log.clear()?;
    db.index.clear()?;
    let old = lock(&db.sync).clone();
    let mut log = old.log;
    log.restart(0);
    // It holds no operation now, as far as peers are concerned: they send
    // every one again, or a whole state that replaces its records.
    let sync = SyncMeta {
        epoch: new_epoch(),
        clock: old.clock,
        max_priority: old.max_priority,
        wish: old.wish,
        peers: old.peers,
        restored: true,
        log,
        ..SyncMeta::default()
    };
    let mut batch = fj.batch().durability(Some(PersistMode::SyncAll));
    batch.insert(meta, sync_meta_key(db.id), codec::to_vec(&sync)?);
    batch.commit()?;
    *lock(&db.sync) = sync;
    Ok(kept
        .into_iter()
        .map(|(k, v)| SnapshotRecord {
            key: k.to_vec(),
            state: v.to_vec(),
        })
        .collect())
}

/// Builds every index of `db` from its records.
fn rebuild_indexes(fj: &fjall::Database, db: &DbState) -> Result<(), StoreError> {
    let collections = read_lock(&db.collections).clone();
    let mut batch = fj.batch().durability(Some(PersistMode::SyncAll));
    for (collection, cmeta) in &collections {
        for field in &cmeta.indexes {
            index_collection(db, collection, field, &mut batch)?;
        }
    }
    batch.commit()?;
    Ok(())
}

/// Adds to `batch` the index entries of `field` for every record of
/// `collection` in `db`.
pub(super) fn index_collection(
    db: &DbState,
    collection: &str,
    field: &str,
    batch: &mut fjall::OwnedWriteBatch,
) -> Result<(), StoreError> {
    for kv in db.records.prefix(keys::collection_prefix(collection)) {
        let (k, v) = kv.into_inner()?;
        let rec = StoredRecord::decode(&v)?;
        let id = keys::id_of_record_key(&k).unwrap_or_default();
        if let Some(ik) = rec
            .field(field)
            .and_then(|v| keys::index_key(collection, field, v, id))
        {
            batch.insert(&db.index, ik, id.as_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use blazedb_proto::api::Write;
    use blazedb_proto::{DeviceId, Fields, Value};

    use crate::store::Store;

    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }

    #[test]
    fn a_damaged_table_is_found_and_the_readable_records_are_kept() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let device = DeviceId([9; 32]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let store = Store::open(dir.path(), device, Default::default()).expect("open");
        rt.block_on(store.create_db("d", Default::default(), false))
            .expect("create");
        let writes: Vec<Write> = (0..2000)
            .map(|i| Write::Put {
                collection: "c".into(),
                id: Some(format!("r{i:05}")),
                fields: Fields::from([("n".to_owned(), Value::Int(i))]),
            })
            .collect();
        rt.block_on(store.write("d", writes)).expect("write");
        rt.block_on(store.set_index("d", "c", "n", true))
            .expect("index");
        // Tables are made when a memtable is flushed: force it.
        let db = store.db("d").expect("db");
        db.records.rotate_memtable_and_wait().expect("flush");
        let tables_dir = db.records.path().to_path_buf();
        drop(db);
        rt.block_on(store.shutdown()).expect("shut down");
        drop(store);

        // A run of bytes in the middle of the records' table goes bad.
        let mut files = Vec::new();
        walk(&tables_dir, &mut files);
        let table = files
            .into_iter()
            .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .expect("a table file");
        let mut bytes = std::fs::read(&table).expect("read table");
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0x5a;
        }
        std::fs::write(&table, bytes).expect("damage");

        let store = Store::open(dir.path(), device, Default::default()).expect("reopen");
        let found = rt.block_on(store.repair(false)).expect("check");
        assert_eq!(found.len(), 1);
        let d = &found[0];
        assert!(d.records.damage.is_some(), "the damage is found: {d:?}");
        assert!(
            d.records
                .damage
                .as_deref()
                .is_some_and(|m| m.contains("blazed repair")),
            "the error says what to do: {d:?}"
        );
        assert!(d.records.path.starts_with(dir.path()));
        assert!(d.rebuilt.is_none(), "a check changes nothing");

        let found = rt.block_on(store.repair(true)).expect("rebuild");
        let how = found[0].rebuilt.clone().expect("rebuilt");
        assert!(how.contains("records that could be read"), "{how}");
        let after = rt.block_on(store.repair(false)).expect("check again");
        assert!(!after[0].damaged(), "sound after the rebuild: {after:?}");
        let kept = after[0].records.entries;
        assert!(
            kept > 0 && kept < 2000,
            "the readable records are kept, the damaged block's are not ({kept})"
        );
        // The index was built again from what was kept.
        assert_eq!(after[0].index.entries, kept);
        rt.block_on(store.shutdown()).expect("shut down");
        drop(store);

        let store = Store::open(dir.path(), device, Default::default()).expect("reopen");
        let db = store.db("d").expect("db");
        // The change log holds the kept records alone, as changes a
        // snapshot brought (seq 0), so a subscriber from 0 sees each.
        let logged: Vec<_> = crate::store::oplog::after(&db.log, 0)
            .map(|e| e.expect("entry").op().expect("op"))
            .collect();
        assert_eq!(logged.len() as u64, kept);
        assert!(logged.iter().all(|op| op.seq == 0));
        assert!(db.sync_meta().restored, "it asks peers for a whole state");
        assert_ne!(db.log_id(), 0);
        drop(db);
        rt.block_on(store.shutdown()).expect("shut down");
    }
}
