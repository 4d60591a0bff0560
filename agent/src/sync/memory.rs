//! An in-memory [`SyncStore`]: the same merge as the fjall store, kept in
//! ordered maps. The simulator runs many replicas on it; a "crash" throws
//! the engine away and keeps the store, which stands for what was on disk.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hasher};

use blazedb_proto::api::SyncMode;
use blazedb_proto::rules::SyncWish;
use blazedb_proto::sync::{LogChunk, PackedOps};
use blazedb_proto::{
    DeviceId, Epoch, Fields, Hlc, Op, OpBody, SnapshotRecord, VersionVector, codec,
};

use super::hlc::HlcClock;
use super::store::{
    Applied, Compacted, Correction, OpsRead, PackedRead, Projection, ReadLimits, Refusal, Replace,
    SnapshotRead, SyncState, SyncStore, WriteScreen,
};
use crate::store::keys;
use crate::store::record::{Stamp, StoredRecord};

/// One database held in memory.
#[derive(Debug, Clone)]
struct MemDb {
    epoch: Epoch,
    mode: SyncMode,
    priority: u8,
    records: BTreeMap<Vec<u8>, StoredRecord>,
    /// The op log by cursor.
    log: BTreeMap<u64, Op>,
    head: u64,
    /// Per origin, the cursor of each logged op, by seq.
    positions: BTreeMap<DeviceId, BTreeMap<u64, u64>>,
    vector: VersionVector,
    floor: VersionVector,
    wish: Option<SyncWish>,
    lacking: bool,
    restored: bool,
}

impl MemDb {
    /// The clock reading of `device`'s first write after its `held`
    /// writes, if the log has it: records holding a write of `device`'s
    /// that late are kept when a partial replica drops records.
    fn first_unheld(&self, device: &DeviceId, held: u64) -> Option<Hlc> {
        let cursor = self.positions.get(device)?.get(&(held + 1))?;
        Some(self.log.get(cursor)?.hlc)
    }

    /// Whether the record holds a write of `device`'s from `from` on.
    fn holds_own(rec: &StoredRecord, device: &DeviceId, from: Option<Hlc>) -> bool {
        from.is_some_and(|from| rec.written_by_since(device, from))
    }

    fn append(&mut self, op: Op) {
        self.head += 1;
        self.vector.set(op.writer(), op.seq);
        self.positions
            .entry(op.writer())
            .or_default()
            .insert(op.seq, self.head);
        self.log.insert(self.head, op);
    }

    fn apply(&mut self, stamp: &Stamp, body: &OpBody) {
        let key = keys::record_key(body.collection(), body.id());
        self.records.entry(key).or_default().apply(stamp, body);
    }
}

/// Who wrote what of one record: what tests check stores against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordStamps {
    /// The latest put's (or delete's) device and clock reading.
    pub base: Option<(DeviceId, Hlc)>,
    /// Whether that was a put: the record lives without any field.
    pub put: bool,
    /// Each field's, removed ones included.
    pub fields: BTreeMap<String, (DeviceId, Hlc)>,
}

impl RecordStamps {
    fn of(r: &StoredRecord) -> Self {
        RecordStamps {
            base: r.base_stamp().map(|s| (s.origin, s.hlc)),
            put: r.base_is_put(),
            fields: r
                .field_stamps()
                .map(|(name, o, hlc)| (name.to_owned(), (o, hlc)))
                .collect(),
        }
    }

    /// Reads them from a record's stored form (as a snapshot carries it).
    pub fn decode(state: &[u8]) -> Option<Self> {
        StoredRecord::decode(state).ok().map(|r| Self::of(&r))
    }
}

/// How many cursors each chunk of a simulated log spans (see
/// `MemoryStore::read_ops_packed`).
const SIM_CHUNK: u64 = 4;

/// A store that keeps every database in memory.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    device: DeviceId,
    /// The write incarnation local writes carry.
    incarnation: u32,
    clock: HlcClock,
    dbs: BTreeMap<String, MemDb>,
    /// Operations handed to `apply_ops` that did not extend the vector by
    /// one: the engine must never do that.
    misapplied: u64,
    /// The most log entries one compaction removes, as the fjall store
    /// bounds its passes; none when `None`.
    trim_step: Option<u64>,
}

impl MemoryStore {
    /// An empty store for the device `device`.
    pub fn new(device: DeviceId) -> Self {
        MemoryStore {
            device,
            incarnation: 0,
            clock: HlcClock::new(Hlc::default()),
            dbs: BTreeMap::new(),
            misapplied: 0,
            trim_step: None,
        }
    }

    /// Bounds each compaction to removing `n` log entries, the oldest
    /// first, as the fjall store's `compaction_trim_step` does.
    pub fn set_trim_step(&mut self, n: u64) {
        self.trim_step = Some(n);
    }

    /// The device whose writes this store stamps.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Counts local writes from now on under incarnation `n`, as a store
    /// does when it starts without proof that it is at its newest state.
    pub fn set_incarnation(&mut self, n: u32) {
        self.incarnation = n;
        for d in self.dbs.values_mut() {
            d.restored = true;
        }
    }

    /// The id local writes are counted under.
    fn local_writer(&self) -> DeviceId {
        self.device.writer(self.incarnation)
    }

    /// Creates a database (no-op if it exists). `priority` is the conflict
    /// priority of this replica's writes to it.
    pub fn create_db(&mut self, name: &str, epoch: Epoch, mode: SyncMode, priority: u8) {
        self.dbs.entry(name.to_owned()).or_insert_with(|| MemDb {
            epoch,
            mode,
            priority,
            records: BTreeMap::new(),
            log: BTreeMap::new(),
            head: 0,
            positions: BTreeMap::new(),
            vector: VersionVector::new(),
            floor: VersionVector::new(),
            wish: None,
            lacking: false,
            restored: false,
        });
    }

    /// Sets what this replica asks to receive of a database.
    pub fn set_wish(&mut self, db: &str, wish: Option<SyncWish>) {
        if let Some(d) = self.dbs.get_mut(db) {
            d.wish = wish;
        }
    }

    /// Per live record, who wrote what (see [`RecordStamps`]).
    pub fn stamps(&self, db: &str) -> BTreeMap<(String, String), RecordStamps> {
        self.live(db)
            .map(|(k, r)| (k, RecordStamps::of(r)))
            .collect()
    }

    /// The live records of `db`, by (collection, id).
    fn live(&self, db: &str) -> impl Iterator<Item = ((String, String), &StoredRecord)> {
        self.dbs
            .get(db)
            .into_iter()
            .flat_map(|d| d.records.iter())
            .filter(|(_, r)| r.is_live())
            .filter_map(|(k, r)| {
                let (c, id) = keys::split_record_key(k)?;
                Some(((c.to_owned(), id.to_owned()), r))
            })
    }

    /// Gives a database a new epoch, as a restore or reset does.
    pub fn set_epoch(&mut self, db: &str, epoch: Epoch) {
        if let Some(d) = self.dbs.get_mut(db) {
            d.epoch = epoch;
        }
    }

    /// Makes a local write at wall time `now_ms` and returns its operation.
    /// Returns `None` if there is no such database.
    pub fn write(&mut self, db: &str, now_ms: u64, body: OpBody) -> Option<Op> {
        let d = self.dbs.get_mut(db)?;
        let hlc = self.clock.tick(now_ms);
        let writer = self.device.writer(self.incarnation);
        let stamp = Stamp {
            priority: d.priority,
            hlc,
            origin: writer,
        };
        d.apply(&stamp, &body);
        let op = Op {
            origin: self.device,
            seq: d.vector.get(&writer) + 1,
            hlc,
            priority: d.priority,
            incarnation: self.incarnation,
            // A body we just built always encodes.
            body: body.encode().unwrap_or_default(),
        };
        d.append(op.clone());
        Some(op)
    }

    /// The live records, by (collection, id), with their visible fields.
    pub fn visible(&self, db: &str) -> BTreeMap<(String, String), Fields> {
        self.live(db)
            .map(|(k, r)| (k, r.clone().into_fields()))
            .collect()
    }

    /// A hash of what apps can read from the database: equal on two
    /// replicas exactly when they show the same records.
    pub fn state_hash(&self, db: &str) -> u64 {
        let mut h = DefaultHasher::new();
        for ((c, id), fields) in self.visible(db) {
            h.write(c.as_bytes());
            h.write_u8(0);
            h.write(id.as_bytes());
            h.write(&codec::to_vec(&fields).unwrap_or_default());
        }
        h.finish()
    }

    /// How many operations were handed to `apply_ops` out of turn
    /// (duplicates or gaps); always zero unless the engine is broken.
    pub fn misapplied(&self) -> u64 {
        self.misapplied
    }

    /// The database's version vector.
    pub fn vector(&self, db: &str) -> VersionVector {
        self.dbs
            .get(db)
            .map(|d| d.vector.clone())
            .unwrap_or_default()
    }

    /// How many operations the database's log holds.
    pub fn log_len(&self, db: &str) -> usize {
        self.dbs.get(db).map_or(0, |d| d.log.len())
    }
}

impl SyncStore for MemoryStore {
    type Error = Infallible;

    fn writer(&self) -> DeviceId {
        self.local_writer()
    }

    fn correct(
        &mut self,
        db: &str,
        records: Vec<Correction>,
        after: Hlc,
        now_ms: u64,
    ) -> Result<Vec<Op>, Infallible> {
        self.clock.observe(after);
        let visible = self.visible(db);
        let mut out = Vec::new();
        for c in records {
            let held = visible.get(&(c.collection.clone(), c.id.clone()));
            out.extend(self.write(db, now_ms, c.body(held)));
        }
        Ok(out)
    }

    fn databases(&self) -> Vec<String> {
        self.dbs.keys().cloned().collect()
    }

    fn sync_state(&self, db: &str) -> Option<SyncState> {
        let d = self.dbs.get(db)?;
        Some(SyncState {
            epoch: d.epoch,
            vector: d.vector.clone(),
            floor: d.floor.clone(),
            clock: self.clock.last(),
            mode: d.mode,
            settings: blazedb_proto::api::DbSettings {
                sync_mode: d.mode,
                priority: d.priority,
                ..Default::default()
            },
            peers: None,
            wish: d.wish.clone(),
            lacking: d.lacking,
            restored: d.restored,
            sealed: false,
            blind: false,
        })
    }

    fn read_ops(
        &self,
        db: &str,
        have: &VersionVector,
        from: u64,
        limits: ReadLimits,
    ) -> Result<OpsRead, Infallible> {
        let Some(d) = self.dbs.get(db) else {
            return Ok(OpsRead::default());
        };
        // Start where the first op the reader lacks is, if that is later.
        let first_needed = d
            .positions
            .iter()
            .filter_map(|(o, seqs)| seqs.get(&(have.get(o) + 1)).copied())
            .min()
            .unwrap_or(d.head + 1);
        let start = from.max(first_needed.saturating_sub(1));
        let mut want = have.clone();
        let (mut ops, mut bytes, mut next) = (Vec::new(), 0, start);
        for (cursor, op) in d.log.range(start + 1..) {
            next = *cursor;
            if !want.advance(op.writer(), op.seq) {
                continue;
            }
            if limits.take(&mut ops, &mut bytes, op.clone(), op.body.len() + 64) {
                return Ok(OpsRead { ops, next });
            }
        }
        Ok(OpsRead {
            ops,
            next: next.max(d.head),
        })
    }

    /// Reads as [`SyncStore::read_ops`] does; a read that took every
    /// entry of whole chunks of the log (here [`SIM_CHUNK`] cursors each,
    /// from cursor 1) gives them as chunks, as the fjall store sends the
    /// chunks a peer lacks all of, so simulated peers exchange both forms.
    fn read_ops_packed(
        &self,
        db: &str,
        have: &VersionVector,
        from: u64,
        limits: ReadLimits,
    ) -> Result<PackedRead, Infallible> {
        let read = self.read_ops(db, have, from, limits)?;
        let cursors: Option<Vec<u64>> = self.dbs.get(db).map(|d| {
            read.ops
                .iter()
                .filter_map(|op| d.positions.get(&op.writer())?.get(&op.seq).copied())
                .collect()
        });
        let whole = match (&cursors, read.ops.first()) {
            (Some(cursors), Some(_)) => {
                cursors.len() == read.ops.len()
                    && cursors[0] % SIM_CHUNK == 1
                    && (read.ops.len() as u64).is_multiple_of(SIM_CHUNK)
                    && cursors.windows(2).all(|w| w[1] == w[0] + 1)
            }
            _ => false,
        };
        if !whole {
            return Ok(read.packed());
        }
        let chunks = read
            .ops
            .chunks(SIM_CHUNK as usize)
            .map(|ops| {
                let ids = ops.iter().map(|op| (op.writer(), op.seq)).collect();
                LogChunk::new(blazedb_proto::log_chunk::of_ops(ops), ids)
            })
            .collect();
        Ok(PackedRead {
            ops: PackedOps::default(),
            chunks,
            next: read.next,
        })
    }

    fn apply_ops(
        &mut self,
        db: &str,
        ops: Vec<Op>,
        screen: &WriteScreen,
    ) -> Result<Applied, Infallible> {
        let mut refused = Vec::new();
        let Some(d) = self.dbs.get_mut(db) else {
            return Ok(Applied::default());
        };
        let before = d.head;
        for mut op in ops {
            if op.seq != d.vector.get(&op.writer()) + 1 {
                self.misapplied += 1;
                continue;
            }
            self.clock.observe(op.hlc);
            // A body this replica cannot read is logged and forwarded all
            // the same; it just changes no record here.
            if let Ok(body) = OpBody::decode(&op.body) {
                let stamp = Stamp::of(&op);
                match screen.view_for(&op.origin, &body) {
                    None => d.apply(&stamp, &body),
                    Some(view) => {
                        let key = keys::record_key(body.collection(), body.id());
                        let before = d.records.get(&key);
                        let mut after = before.cloned().unwrap_or_default();
                        after.apply(&stamp, &body);
                        match view.check_write(&body, before, &after) {
                            Ok(()) => {
                                d.records.insert(key, after);
                            }
                            Err(reason) => refused.push(Refusal::refuse(&mut op, &body, reason)),
                        }
                    }
                }
            }
            d.append(op);
        }
        let logged = (d.head > before).then(|| before + 1..=d.head);
        Ok(Applied {
            refused,
            unopened: Vec::new(),
            logged,
        })
    }

    fn read_snapshot(
        &self,
        db: &str,
        after: Option<&[u8]>,
        limits: ReadLimits,
    ) -> Result<SnapshotRead, Infallible> {
        let Some(d) = self.dbs.get(db) else {
            return Ok(SnapshotRead {
                records: Vec::new(),
                done: true,
            });
        };
        let range = match after {
            Some(k) => d
                .records
                .range::<[u8], _>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
            None => d.records.range::<[u8], _>(..),
        };
        let (mut records, mut bytes, mut done) = (Vec::new(), 0, true);
        let mut iter = range.peekable();
        while let Some((k, r)) = iter.next() {
            let state = r.encode();
            let size = k.len() + state.len();
            let full = limits.take(
                &mut records,
                &mut bytes,
                SnapshotRecord {
                    key: k.clone(),
                    state,
                },
                size,
            );
            if full {
                done = iter.peek().is_none();
                break;
            }
        }
        Ok(SnapshotRead { records, done })
    }

    fn merge_snapshot(
        &mut self,
        db: &str,
        records: Vec<SnapshotRecord>,
        complete: Option<&VersionVector>,
        replace: Option<Replace<'_>>,
    ) -> Result<(), Infallible> {
        let me = self.local_writer();
        let Some(d) = self.dbs.get_mut(db) else {
            return Ok(());
        };
        if let Some(r) = replace {
            d.lacking |= r.cut;
            let carried: std::collections::BTreeSet<&[u8]> =
                records.iter().map(|r| r.key.as_slice()).collect();
            let from = d.first_unheld(&me, r.own_held);
            d.records.retain(|k, rec| {
                !r.span.contains(k)
                    || carried.contains(k.as_slice())
                    || MemDb::holds_own(rec, &me, from)
            });
        }
        let cut = replace.is_some();
        // A whole state replacing this one takes the sender's records as
        // they are, except those holding this device's writes the sender
        // lacks (see the fjall store's `merge_snapshot`).
        let fresh_from = replace
            .filter(|r| !r.cut)
            .map(|r| d.first_unheld(&me, r.own_held));
        for rec in records {
            // A record that does not decode came from a broken peer; the
            // engine checked the message, so skip it rather than fail.
            if let Ok(state) = StoredRecord::decode(&rec.state) {
                self.clock.observe(state.version());
                let held = d.records.entry(rec.key).or_default();
                if let Some(from) = fresh_from
                    && !MemDb::holds_own(held, &me, from)
                {
                    *held = StoredRecord::default();
                }
                if cut {
                    held.merge_cut(&state);
                } else {
                    held.merge(&state);
                }
            }
        }
        if let Some(v) = complete {
            d.vector.merge(v);
            d.floor.merge(v);
            if replace.is_none_or(|r| !r.cut) {
                d.lacking = false;
                d.restored = false;
            }
        }
        Ok(())
    }

    fn read_records(&self, db: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, Infallible> {
        let Some(d) = self.dbs.get(db) else {
            return Ok(vec![None; keys.len()]);
        };
        Ok(keys
            .iter()
            .map(|k| d.records.get(k).map(|r| r.encode()))
            .collect())
    }

    fn merge_projected(&mut self, db: &str, p: Projection) -> Result<(), Infallible> {
        let me = self.local_writer();
        let Some(d) = self.dbs.get_mut(db) else {
            return Ok(());
        };
        d.lacking = true;
        let from = d.first_unheld(&me, p.own_held);
        let mut evict = p.evict;
        if let Some(view) = &p.view {
            let judged = d
                .positions
                .get(&me)
                .into_iter()
                .flat_map(|seqs| seqs.range(p.own_from + 1..p.own_held.max(p.own_from) + 1))
                .filter_map(|(_, cursor)| OpBody::decode(&d.log.get(cursor)?.body).ok());
            for body in judged {
                let key = keys::record_key(body.collection(), body.id());
                let seen = d
                    .records
                    .get(&key)
                    .is_some_and(|r| view.sees(body.collection(), body.id(), r));
                if !seen {
                    evict.push(key);
                }
            }
        }
        for key in evict {
            if d.records
                .get(&key)
                .is_some_and(|rec| !MemDb::holds_own(rec, &me, from))
            {
                d.records.remove(&key);
            }
        }
        for rec in p.records {
            if let Ok(state) = StoredRecord::decode(&rec.state) {
                self.clock.observe(state.version());
                d.records.entry(rec.key).or_default().merge_cut(&state);
            }
        }
        for (origin, _, last) in p.covers {
            if last > d.vector.get(&origin) {
                d.vector.set(origin, last);
            }
        }
        Ok(())
    }

    fn compact(
        &mut self,
        db: &str,
        stable: &VersionVector,
        tombstones: Hlc,
    ) -> Result<Compacted, Infallible> {
        let Some(d) = self.dbs.get_mut(db) else {
            return Ok(Compacted::default());
        };
        let mut out = Compacted::default();
        // What every replica holds, oldest first.
        let mut held: Vec<(u64, DeviceId, u64)> = d
            .positions
            .iter()
            .flat_map(|(origin, seqs)| {
                seqs.range(..=stable.get(origin))
                    .map(|(seq, cursor)| (*cursor, *origin, *seq))
            })
            .collect();
        held.sort_unstable();
        let step = self.trim_step.unwrap_or(u64::MAX);
        out.more = held.len() as u64 > step;
        held.truncate(usize::try_from(step).unwrap_or(usize::MAX));
        let mut top: BTreeMap<DeviceId, u64> = BTreeMap::new();
        for (cursor, origin, seq) in held {
            d.log.remove(&cursor);
            if let Some(seqs) = d.positions.get_mut(&origin) {
                seqs.remove(&seq);
            }
            let t = top.entry(origin).or_default();
            *t = (*t).max(seq);
            out.ops += 1;
        }
        for (origin, seqs) in &d.positions {
            let upto = stable.get(origin);
            // All it holds up to `upto` gone: the floor rises to `upto`
            // (what it never logged included); else to what went.
            let floor = if seqs.range(..=upto).next().is_none() {
                upto.min(d.vector.get(origin))
            } else {
                top.get(origin).copied().unwrap_or(0)
            };
            if floor > d.floor.get(origin) {
                d.floor.set(*origin, floor);
            }
        }
        d.records.retain(|_, r| {
            let dead = r.tombstone_clock().is_some_and(|t| t <= tombstones);
            out.tombstones += u64::from(dead);
            !dead
        });
        Ok(out)
    }
}
