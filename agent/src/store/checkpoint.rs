//! Sealed checkpoints of end-to-end encrypted databases.
//!
//! A replica without a database's key cannot make a snapshot: it holds no
//! records. So a replica with the key makes a checkpoint (its records as of
//! its vector, encoded in parts, each sealed with the part's place and the
//! vector as associated data) and hands it to blind replicas, which keep
//! the newest one whole, drop the logged ops it covers, and serve it in
//! place of a snapshot to a replica that lacks what they dropped.
//!
//! A blind replica keeps its checkpoint in the database's index keyspace,
//! which nothing else of a blind database uses (it has no collections),
//! under a prefix no index key starts with.
//!
//! Invariants:
//! - A blind replica never drops an op its kept checkpoint does not cover,
//!   so whatever it dropped it can still hand on.
//! - A kept checkpoint is replaced only by one that holds at least as much.
//! - Parts, their metadata, the raised vector and the dropped ops commit in
//!   one batch.

use blazedb_proto::sealed::CheckpointPart;
use blazedb_proto::{SnapshotRecord, VersionVector, codec};
use fjall::PersistMode;
use serde::{Deserialize, Serialize};

use super::oplog::{self, Trim};
use super::sealing::Reader;
use super::writer::Writer;
use super::{DbState, Store, StoreError, lock, sync_meta_key};
use crate::crypto::seal::{ContentKey, open_with};
use crate::sync::{Checkpoint, ReadLimits, SyncStore as _};

/// Where a kept checkpoint lives in the index keyspace.
const PREFIX: &[u8] = b"\xff\xffcheckpoint\0";
const META: &[u8] = b"\xff\xffcheckpoint\0meta";

/// How many records, at most, one part carries.
const PART_RECORDS: usize = 4096;
/// About how many bytes one part carries.
const PART_BYTES: usize = 1 << 20;

fn part_key(part: u32) -> Vec<u8> {
    [PREFIX, b"part", &part.to_be_bytes()].concat()
}

#[derive(Debug, Serialize, Deserialize)]
struct KeptMeta {
    id: u64,
    vector: VersionVector,
    parts: u32,
}

fn associated_data(db: &str, c: &Checkpoint, part: usize, epoch: u32) -> Vec<u8> {
    CheckpointPart {
        db,
        id: c.id,
        part: part as u32,
        parts: c.parts.len() as u32,
        vector: &c.vector,
    }
    .associated_data(epoch)
}

fn kept_meta(db: &DbState) -> Result<Option<KeptMeta>, StoreError> {
    match db.index.get(META)? {
        Some(v) => Ok(Some(codec::from_slice(&v)?)),
        None => Ok(None),
    }
}

impl Store {
    /// This replica's records of `name` as of its vector, sealed in parts
    /// under its newest key; `None` unless it holds the key.
    pub(crate) fn make_checkpoint_of(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        let db = self.db(name)?;
        let Some(key) = self.current_key(name).filter(|_| db.is_e2e()) else {
            return Ok(None);
        };
        // Read before the records, so they hold at least all it counts.
        let vector = db.sync_meta().vector;
        let limits = ReadLimits {
            max_items: PART_RECORDS,
            max_bytes: PART_BYTES,
        };
        let mut plain = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let read = self.read_snapshot(name, after.as_deref(), limits)?;
            after = read.records.last().map(|r| r.key.clone()).or(after);
            plain.push(codec::to_vec(&read.records)?);
            if read.done {
                break;
            }
        }
        let mut id = [0u8; 8];
        getrandom::fill(&mut id)
            .map_err(|e| StoreError::Storage(format!("no randomness for a checkpoint id: {e}")))?;
        let mut c = Checkpoint {
            id: u64::from_le_bytes(id),
            vector,
            parts: Vec::new(),
        };
        let count = plain.len();
        c.parts = vec![Vec::new(); count];
        for (i, p) in plain.iter().enumerate() {
            c.parts[i] = seal_part(&key, &associated_data(name, &c, i, key.epoch), p)?;
        }
        Ok(Some(c))
    }

    /// The checkpoint a blind replica keeps of `name`.
    pub(crate) fn kept_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        let db = self.db(name)?;
        let Some(meta) = kept_meta(&db)? else {
            return Ok(None);
        };
        let parts = (0..meta.parts)
            .map(|p| {
                db.index
                    .get(part_key(p))?
                    .map(|v| v.to_vec())
                    .ok_or_else(|| StoreError::Corrupt(format!("checkpoint part {p} is missing")))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(Checkpoint {
            id: meta.id,
            vector: meta.vector,
            parts,
        }))
    }
}

fn seal_part(key: &ContentKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
    key.seal_with(aad, plain)
        .map_err(|e| StoreError::Storage(format!("cannot seal a checkpoint: {e}")))
}

impl Writer {
    /// Takes a whole checkpoint (see
    /// [`SyncStore::take_checkpoint`](crate::sync::SyncStore::take_checkpoint)).
    pub(super) fn take_checkpoint(
        &mut self,
        name: &str,
        c: Checkpoint,
    ) -> Result<bool, StoreError> {
        let db = self.store.db(name)?;
        if c.parts.is_empty() {
            return Ok(false);
        }
        match self.store.reader(&db) {
            Reader::Plain => Ok(false),
            Reader::Keys(keys) => self.merge_checkpoint(name, &c, &keys),
            Reader::Blind => self.keep_checkpoint(&db, c),
        }
    }

    /// Opens every part, then merges them as a snapshot's pieces.
    fn merge_checkpoint(
        &mut self,
        name: &str,
        c: &Checkpoint,
        keys: &[ContentKey],
    ) -> Result<bool, StoreError> {
        match open_parts(name, c, keys) {
            Ok(pieces) => {
                self.merge_pieces(name, pieces, &c.vector)?;
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(db = name, "not taking a checkpoint: {e}");
                Ok(false)
            }
        }
    }

    /// Merges a checkpoint's opened parts as a snapshot's pieces, the last
    /// raising the vector to `vector`.
    pub(super) fn merge_pieces(
        &mut self,
        name: &str,
        pieces: Vec<Vec<SnapshotRecord>>,
        vector: &VersionVector,
    ) -> Result<(), StoreError> {
        let last = pieces.len();
        for (i, records) in pieces.into_iter().enumerate() {
            self.merge_snapshot(name, records, (i + 1 == last).then_some(vector), None)?;
        }
        Ok(())
    }

    /// Keeps `c` in place of an older checkpoint, raises the vector and the
    /// floor to it and drops the logged ops it covers.
    fn keep_checkpoint(&mut self, db: &DbState, c: Checkpoint) -> Result<bool, StoreError> {
        let held = kept_meta(db)?;
        if held.as_ref().is_some_and(|h| h.vector.dominates(&c.vector)) {
            return Ok(false);
        }
        let mut sync = db.sync_meta();
        let mut batch = self.fj.batch();
        if let Some(h) = &held {
            for p in 0..h.parts {
                batch.remove(&db.index, part_key(p));
            }
        }
        for (i, part) in c.parts.iter().enumerate() {
            batch.insert(&db.index, part_key(i as u32), part.as_slice());
        }
        let meta = KeptMeta {
            id: c.id,
            vector: c.vector.clone(),
            parts: c.parts.len() as u32,
        };
        batch.insert(&db.index, META, codec::to_vec(&meta)?);
        let dropped = oplog::remove_where(&db.log, &mut batch, |entry| {
            let (writer, seq) = entry.writer_seq()?;
            Ok(if seq <= c.vector.get(&writer) {
                Trim::Drop
            } else {
                Trim::Keep
            })
        })?;
        sync.vector.merge(&c.vector);
        sync.floor.merge(&c.vector);
        batch.insert(&self.meta, sync_meta_key(db.id), codec::to_vec(&sync)?);
        batch.durability(Some(PersistMode::SyncAll)).commit()?;
        *lock(&db.sync) = sync;
        tracing::info!(
            db = db.name,
            parts = c.parts.len(),
            covers = c.vector.total(),
            dropped,
            "kept a sealed checkpoint; dropped the logged ops it covers"
        );
        Ok(true)
    }

    /// The logged ops a blind replica may drop in compaction: only those
    /// its kept checkpoint covers, whatever every replica holds.
    pub(super) fn blind_stable(
        &self,
        db: &DbState,
        stable: &VersionVector,
    ) -> Result<VersionVector, StoreError> {
        Ok(kept_meta(db)?.map_or_else(VersionVector::new, |m| m.vector.meet(stable)))
    }
}

/// The records of every part of `c`, a checkpoint of `db`, opened with
/// `keys`; fails on the first part that does not open.
pub(super) fn open_parts(
    db: &str,
    c: &Checkpoint,
    keys: &[ContentKey],
) -> Result<Vec<Vec<SnapshotRecord>>, StoreError> {
    c.parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let plain = open_with(
                |e| keys.iter().find(|k| k.epoch == e),
                |e| associated_data(db, c, i, e),
                part,
            )
            .map_err(|e| StoreError::Corrupt(format!("checkpoint part {i} does not open: {e}")))?;
            Ok(codec::from_slice(&plain)?)
        })
        .collect()
}
