//! The store as the sync engine sees it: operations and snapshots from
//! other replicas, read and merged with the same records and op log as
//! local writes, and compaction.
//!
//! Reads go straight to fjall; changes go through the writer thread like
//! every other change, so the trait's calls block until the writer has
//! made them durable, except `apply_ops`: it returns once the ops are
//! written, so the engine takes its next message while they are synced,
//! and their head is published (and the driver lets the engine's word of
//! them reach peers) once they are durable. The engine runs on a thread of
//! its own, never on an async runtime's.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use blazedb_proto::{
    DeviceId, Hlc, Op, OpBody, RunVector, SnapshotRecord, Span, VersionVector, codec,
};
use fjall::{PersistMode, Slice};

use super::keys;
use super::oplog::{self, Trim};
use super::record::{Stamp, StoredRecord, Visible, format};
use super::sealing::{Body, Opened, Outgoing, Plain, Reader, seal_body};
use super::stamped;
use super::tombstone_keys::{Candidates, Walk};
use super::writer::{
    Effect, Group, MAX_PRIORITY, Plan, Writer, field_values, index_effects, load_for_update,
    plan_encoded, plan_record,
};
use super::{Command, DbState, Reply, Store, StoreError, SyncMeta, lock, read_lock, sync_meta_key};
use crate::sync::{
    Applied, Checkpoint, Compacted, Correction, OpsRead, PackedRead, Projection, ReadLimits,
    Refusal, Replace, SnapshotRead, SyncState, SyncStore, WholeChunk, WriteScreen,
};
use blazedb_proto::api::{Durability, Write};
use blazedb_proto::sync::{LogChunk, MAX_CHUNK_LEN, PackedOps};

impl Writer {
    /// Commits a plan made for one database, with its sync metadata, and
    /// publishes it. On failure the counters and clock go back.
    fn commit_plan(
        &mut self,
        db: &Arc<DbState>,
        plan: Plan,
        sync: SyncMeta,
        head: u64,
    ) -> Result<(), StoreError> {
        self.commit_plan_then(db, plan, sync, head, false)
    }

    /// [`Writer::commit_plan`]; when `sync_later`, the commit returns once
    /// written, and its sync and publication are left to the syncer (see
    /// `store/syncer.rs`): the sync engine goes on to its next message
    /// meanwhile, and tells peers what it applied only once it is durable.
    fn commit_plan_then(
        &mut self,
        db: &Arc<DbState>,
        plan: Plan,
        sync: SyncMeta,
        head: u64,
        sync_later: bool,
    ) -> Result<(), StoreError> {
        let mut group = Group::new();
        group.effects = vec![
            plan.effects,
            vec![Effect::Insert(
                self.meta.clone(),
                sync_meta_key(db.id).into(),
                codec::to_vec(&sync)?.into(),
            )],
        ];
        group.new_collections = plan
            .new_collections
            .into_iter()
            .map(|c| (db.id, c))
            .collect();
        match db.settings().durability {
            Durability::Fsync => group.fsync = true,
            Durability::Buffered => group.buffered = true,
        }
        group.heads.insert(db.id, (db.clone(), head));
        self.commit(&mut group, !sync_later)?;
        {
            let mut held = lock(&db.sync);
            // A group of local writes published since this plan read the
            // metadata may have moved this device's own entry on.
            let me = self.store.writer();
            let mine = held.vector.get(&me);
            *held = sync;
            if mine > held.vector.get(&me) {
                held.vector.set(me, mine);
            }
        }
        let publication = self.publication(&mut group);
        if group.generation > 0 || !self.syncer.is_idle() {
            self.syncer.hand_over(publication);
        } else {
            publication.publish(&self.store);
        }
        Ok(())
    }

    pub(super) fn apply_ops(
        &mut self,
        db: &str,
        ops: Vec<Op>,
        screen: &WriteScreen,
        whole: Vec<WholeChunk>,
    ) -> Result<Applied, StoreError> {
        let db = self.store.db(db)?;
        let (start_counters, start_clock) = (self.counters.clone(), self.clock);
        let result = self.plan_and_commit_ops(&db, ops, screen, whole);
        if result.is_err() {
            self.counters = start_counters;
            self.clock = start_clock;
        }
        result
    }

    fn plan_and_commit_ops(
        &mut self,
        db: &Arc<DbState>,
        ops: Vec<Op>,
        screen: &WriteScreen,
        whole: Vec<WholeChunk>,
    ) -> Result<Applied, StoreError> {
        let me = self.store.writer();
        let reader = self.store.reader(db);
        let mut unopened = Vec::new();
        let mut sync = db.sync_meta();
        let local_priority = db.settings().priority;
        let group = Group::new();
        // Room for every op's record and log entry: a plan grown a push at
        // a time copied its effects a dozen times for one message.
        let mut plan = Plan::with_capacity(ops.len());
        let counters = *self.counters.entry(db.id).or_default();
        let (mut head, mut local_seq) = (counters.head, counters.local_seq);
        let mut refused = Vec::new();
        // The last collection a fast put went to, known to have no
        // indexes and registered: a message's puts mostly share one, and
        // looking it up for each took two locks and two hash lookups.
        let mut plain_collection = String::new();
        // One buffer for every fresh record built here; each is copied
        // into the store's own allocation anyway.
        let mut scratch = stamped::Holes::default();
        let mut opened = Opened::default();
        // Read and moved op by op, a look-up a writer.
        let mut vector = RunVector::new(std::mem::take(&mut sync.vector));
        let mut whole = WholeLog::new(whole);
        for (at, mut op) in ops.into_iter().enumerate() {
            whole.reach(at, &mut plan);
            // Logged as it came: not refused, so not rewritten.
            let mut as_came = true;
            let writer = op.writer();
            if vector.get(&writer) + 1 != op.seq {
                continue;
            }
            // The clock has observed every write applied here, so an op
            // later than it, of no lower priority than any write here, is
            // newer than every stamp in every record.
            let newest =
                op.hlc > self.clock.last() && op.priority >= sync.max_priority.max(local_priority);
            // Read here, so a plain body is read in place, not copied.
            let plain = match reader.read(&db.name, &op, &mut opened) {
                Body::Readable(p) => Some(p),
                Body::Blind => None,
                Body::Refused(why) => {
                    // Its origin's later ops now leave a gap, so they are
                    // skipped too, and the vector stays contiguous.
                    unopened.push(why);
                    continue;
                }
            };
            // The common case of catching up, a put newer than everything,
            // unchecked, into a collection without indexes, replaces its
            // record whatever it held: the record is built from the
            // body's bytes, no value decoded.
            let mut built = false;
            if newest
                && op.priority <= MAX_PRIORITY
                && screen.is_empty()
                && let Some(put) = plain.and_then(Plain::raw_put)
                && (put.collection == plain_collection
                    || read_lock(&db.collections)
                        .get(put.collection)
                        .is_none_or(|c| c.indexes.is_empty()))
            {
                if put.collection != plain_collection {
                    self.collection_indexes(&group, &mut plan, db, put.collection)?;
                    put.collection.clone_into(&mut plain_collection);
                }
                let key = keys::record_key_slice(put.collection, put.id);
                stamped::fresh_put_record_raw_into(&mut scratch, &writer, op.priority, &put.fields);
                plan_encoded(&mut plan, db, key, scratch.filled(&[op.hlc.0]));
                built = true;
            }
            let decoded = match plain {
                Some(p) if !built => p.decode().ok(),
                _ => None,
            };
            vector.set(&writer, op.seq);
            sync.max_priority = sync.max_priority.max(op.priority);
            self.clock.observe(op.hlc);
            head += 1;
            if writer == me {
                // This start's own writes, back from a peer (never, unless
                // a copy of the store ran beside this one).
                local_seq = local_seq.max(op.seq);
            }
            // A body this replica cannot read is logged and forwarded all
            // the same; it just changes no record here.
            if let Some(body) = decoded {
                let key = keys::record_key_slice(body.collection(), body.id());
                let indexes = self.collection_indexes(&group, &mut plan, db, body.collection())?;
                let check = screen.view_for(&op.origin, &body);
                // Such a put or delete replaces the record whatever it
                // held, so it need not be read (unless indexes must move,
                // or the write is checked against it).
                let replaces = newest
                    && indexes.is_empty()
                    && check.is_none()
                    && !matches!(body, OpBody::Patch { .. });
                let existing = if replaces {
                    None
                } else {
                    load_for_update(&group, &plan, db, &key)?
                };
                let old_values = field_values(existing.as_ref(), &indexes);
                let stamp = Stamp::of(&op);
                match (existing, &body) {
                    // The common case of catching up: a new record, encoded
                    // straight from the put's fields.
                    (None, OpBody::Put { fields, .. })
                        if indexes.is_empty() && op.priority <= MAX_PRIORITY =>
                    {
                        match check.map(|v| v.check_create(&body)) {
                            Some(Err(reason)) => {
                                refused.push(Refusal::refuse(&mut op, &body, reason));
                                reseal(&reader, &db.name, &mut op)?;
                                as_came = false;
                            }
                            _ => {
                                let bytes =
                                    stamped::fresh_put_record(&writer, op.priority, fields)?
                                        .fill(&[op.hlc.0]);
                                plan_encoded(&mut plan, db, key, bytes.into());
                            }
                        }
                    }
                    (existing, _) => {
                        let before = check.and(existing.clone());
                        let mut record = existing.unwrap_or_default();
                        let changed = record.apply(&stamp, &body);
                        match check.map(|v| v.check_write(&body, before.as_ref(), &record)) {
                            Some(Err(reason)) => {
                                refused.push(Refusal::refuse(&mut op, &body, reason));
                                reseal(&reader, &db.name, &mut op)?;
                                as_came = false;
                            }
                            _ if changed => {
                                plan_record(&mut plan, db, key, &indexes, &old_values, &record)?;
                            }
                            _ => {}
                        }
                    }
                }
            }
            let log = Effect::Log {
                db: db.id,
                log: db.log.clone(),
                cursor: head,
                op,
                as_parts: false,
            };
            whole.log(at, log, as_came, &mut plan);
        }
        whole.finish(&mut plan);
        sync.vector = vector.into_vector();
        sync.cursor = head;
        sync.clock = sync.clock.max(self.clock.last());
        let c = self.counters.entry(db.id).or_default();
        c.head = head;
        c.local_seq = local_seq;
        self.commit_plan_then(db, plan, sync, head, true)?;
        Ok(Applied {
            refused,
            unopened,
            logged: (head > counters.head).then(|| counters.head + 1..=head),
        })
    }

    /// Applies every op logged for `name` to its records, once this
    /// device holds keys for a database it held blind (see
    /// [`Command::Materialize`]). Commits every so many ops, so memory
    /// stays bounded; applying an op twice changes nothing.
    pub(super) fn materialize(&mut self, name: &str) -> Result<u64, StoreError> {
        const CHUNK: usize = 10_000;
        let db = self.store.db(name)?;
        let reader = self.store.reader(&db);
        let Reader::Keys(held) = &reader else {
            return Ok(0);
        };
        if let Some(c) = self.store.kept_checkpoint(name)? {
            let pieces = super::checkpoint::open_parts(name, &c, held)?;
            self.merge_pieces(name, pieces, &c.vector)?;
        }
        let (mut applied, mut unreadable) = (0u64, 0u64);
        let mut after = 0u64;
        let mut opened = Opened::default();
        loop {
            let group = Group::new();
            let mut plan = Plan::new();
            let mut seen = 0;
            for entry in oplog::after(&db.log, after).take(CHUNK) {
                let entry = entry?;
                after = entry.cursor;
                seen += 1;
                let op = entry.op()?;
                let body = match reader.read_logged(&db.name, &op, &mut opened) {
                    Body::Readable(plain) => plain.decode().ok(),
                    _ => None,
                };
                let Some(body) = body else {
                    unreadable += 1;
                    continue;
                };
                let key = keys::record_key_slice(body.collection(), body.id());
                let indexes = self.collection_indexes(&group, &mut plan, &db, body.collection())?;
                let existing = load_for_update(&group, &plan, &db, &key)?;
                let old_values = field_values(existing.as_ref(), &indexes);
                let mut record = existing.unwrap_or_default();
                if record.apply(&Stamp::of(&op), &body) {
                    plan_record(&mut plan, &db, key, &indexes, &old_values, &record)?;
                }
                applied += 1;
            }
            if seen == 0 {
                break;
            }
            let head = self.counters.get(&db.id).map_or(0, |c| c.head);
            self.commit_plan(&db, plan, db.sync_meta(), head)?;
        }
        if unreadable > 0 {
            tracing::warn!(
                db = name,
                unreadable,
                "ops logged while this device held no key do not open with the keys it holds now"
            );
        }
        tracing::info!(
            db = name,
            ops = applied,
            "applied the ops held before this device had the key"
        );
        Ok(applied)
    }

    pub(super) fn merge_snapshot(
        &mut self,
        db: &str,
        records: Vec<SnapshotRecord>,
        complete: Option<&VersionVector>,
        replace: Option<(Span, u64, bool)>,
    ) -> Result<(), StoreError> {
        let db = self.store.db(db)?;
        if matches!(self.store.reader(&db), Reader::Blind) {
            // Records in the clear must never land on a replica without
            // the key; the engine sends it checkpoints instead.
            return Err(StoreError::Sealed(db.name.clone()));
        }
        let (start_counters, start_clock) = (self.counters.clone(), self.clock);
        let me = self.store.writer();
        let mut sync = db.sync_meta();
        let group = Group::new();
        let mut plan = Plan::new();
        // What changed is logged for subscribers, as a partial replica
        // logs a projection: an app reading the change stream from
        // cursor 0 sees every record a snapshot brought.
        let mut changes: Vec<Op> = Vec::new();
        let result = (|| {
            let mut own_from = None;
            if let Some((span, own_held, cut)) = &replace {
                sync.lacking |= *cut;
                let from = self.first_unheld(&db, *own_held)?;
                own_from = Some(from);
                let carried: HashSet<&[u8]> = records.iter().map(|r| r.key.as_slice()).collect();
                let range = match &span.after {
                    Some(a) => db.records.range::<&[u8], _>((
                        std::ops::Bound::Excluded(&a[..]),
                        std::ops::Bound::Unbounded,
                    )),
                    None => db.records.range::<&[u8], _>(..),
                };
                for kv in range {
                    let (k, v) = kv.into_inner()?;
                    if !span.contains(&k) {
                        break;
                    }
                    if carried.contains(&k[..]) {
                        continue;
                    }
                    let rec = StoredRecord::decode(&v)?;
                    if !self.holds_own(&rec, from) {
                        if rec.is_live() {
                            changes.push(record_change(me, &k, &rec, false)?);
                        }
                        self.plan_drop(&group, &mut plan, &db, k, &rec)?;
                    }
                }
            }
            let held = match replace {
                None => held_in_span(&db, &records)?,
                Some(_) => None,
            };
            for rec in records {
                let Some((collection, _)) = keys::split_record_key(&rec.key) else {
                    return Err(StoreError::InvalidArgument(
                        "a snapshot record's key is not collection and id".into(),
                    ));
                };
                let indexes = self.collection_indexes(&group, &mut plan, &db, collection)?;
                let existing = match &held {
                    Some(held) => load_from(&group, &plan, &db, &rec.key, held)?,
                    None => load_for_update(&group, &plan, &db, &rec.key)?,
                };
                // A record not held here takes the state as it came when
                // merging it into nothing would give that same state: most
                // of a first sync's records.
                let as_sent = (replace.is_none() && existing.is_none())
                    .then(|| format::fresh_state(&rec.state))
                    .flatten();
                if let Some(f) = as_sent {
                    self.clock.observe(f.version);
                    sync.max_priority = sync.max_priority.max(f.max_priority);
                    if f.live {
                        changes.push(fresh_change(me, &rec.key, &f));
                    }
                    if f.holds {
                        let (_, id) = keys::split_record_key(&rec.key).unwrap_or_default();
                        fresh_index_entries(&mut plan, &db, collection, id, &indexes, &f)?;
                        plan_encoded(&mut plan, &db, rec.key.into(), rec.state.into());
                    }
                    continue;
                }
                let state = StoredRecord::decode(&rec.state)?;
                self.clock.observe(state.version());
                sync.max_priority = sync.max_priority.max(state.max_priority());
                let old_values = field_values(existing.as_ref(), &indexes);
                let existing_live = existing.as_ref().is_some_and(StoredRecord::is_live);
                // A whole state replacing this one (after a restore, or a
                // cut) takes the sender's record as it is: what is held
                // here may be older than deletes the sender has since
                // forgotten, and merging would bring those fields back.
                // Only a record holding this device's writes the sender
                // lacks is merged, so they are kept.
                let fresh = matches!(&replace, Some((_, _, false)))
                    && !existing
                        .as_ref()
                        .zip(own_from)
                        .is_some_and(|(held, from)| self.holds_own(held, from));
                let mut record = if fresh {
                    StoredRecord::default()
                } else {
                    existing.unwrap_or_default()
                };
                let changed = if replace.is_some() {
                    record.merge_cut(&state)
                } else {
                    record.merge(&state)
                };
                if changed {
                    let key = Slice::from(rec.key);
                    let stored =
                        plan_record(&mut plan, &db, key.clone(), &indexes, &old_values, &record)?;
                    // A tombstone of a record never seen here changes
                    // nothing a subscriber saw.
                    if record.is_live() || existing_live {
                        changes.push(stored_change(me, &key, &record, &stored)?);
                    }
                }
            }
            if let Some(v) = complete {
                sync.vector.merge(v);
                sync.floor.merge(v);
                if replace.as_ref().is_none_or(|r| !r.2) {
                    sync.lacking = false;
                    sync.restored = false;
                }
                let me = self.store.writer();
                let c = self.counters.entry(db.id).or_default();
                c.local_seq = c.local_seq.max(sync.vector.get(&me));
            }
            sync.clock = sync.clock.max(self.clock.last());
            let head = self.log_changes(&db, &mut plan, std::mem::take(&mut changes), &mut sync)?;
            self.commit_plan(&db, plan, sync, head)
        })();
        if result.is_err() {
            self.counters = start_counters;
            self.clock = start_clock;
        }
        result
    }

    /// The clock reading of this device's first write after its `held`
    /// writes to `db`, if the log still has it.
    fn first_unheld(&self, db: &DbState, held: u64) -> Result<Option<Hlc>, StoreError> {
        let me = self.store.writer();
        for entry in oplog::newest_first(&db.log) {
            let op = entry?.op()?;
            if op.writer() == me && op.seq > 0 {
                if op.seq == held + 1 {
                    return Ok(Some(op.hlc));
                }
                if op.seq <= held {
                    break;
                }
            }
        }
        Ok(None)
    }

    /// Whether a partial replica keeps a record it is told to drop: it
    /// holds a write of this device's the sender did not have.
    fn holds_own(&self, rec: &StoredRecord, from: Option<Hlc>) -> bool {
        from.is_some_and(|f| rec.written_by_since(&self.store.device(), f))
    }

    /// Plans a record leaving this (partial) replica: no tombstone, its
    /// index entries go with it.
    fn plan_drop(
        &mut self,
        group: &Group,
        plan: &mut Plan,
        db: &Arc<DbState>,
        key: Slice,
        rec: &StoredRecord,
    ) -> Result<(), StoreError> {
        let (collection, id) = keys::split_record_key(&key).unwrap_or_default();
        let indexes = self.collection_indexes(group, plan, db, collection)?;
        let old_values = field_values(Some(rec), &indexes);
        index_effects(
            plan,
            db,
            collection,
            id,
            &indexes,
            &old_values,
            &StoredRecord::default(),
        );
        plan.effects.push(Effect::Record {
            db: db.id,
            records: db.records.clone(),
            key,
            bytes: None,
        });
        Ok(())
    }

    /// On a partial replica: merges a full replica's projection, and logs
    /// each change (with seq 0, so it is never sent on) for subscribers.
    pub(super) fn merge_projected(
        &mut self,
        db: &str,
        projection: Projection,
    ) -> Result<(), StoreError> {
        let db = self.store.db(db)?;
        if matches!(self.store.reader(&db), Reader::Blind) {
            return Err(StoreError::Sealed(db.name.clone()));
        }
        let (start_counters, start_clock) = (self.counters.clone(), self.clock);
        let result = self.plan_and_commit_projection(&db, projection);
        if result.is_err() {
            self.counters = start_counters;
            self.clock = start_clock;
        }
        result
    }

    fn plan_and_commit_projection(
        &mut self,
        db: &Arc<DbState>,
        p: Projection,
    ) -> Result<(), StoreError> {
        let me = self.store.writer();
        let mut sync = db.sync_meta();
        sync.lacking = true;
        let group = Group::new();
        let mut plan = Plan::new();
        let mut changes: Vec<Op> = Vec::new();
        if !p.rejected.is_empty() {
            let wanted: BTreeMap<u64, &String> = p.rejected.iter().map(|(s, r)| (*s, r)).collect();
            for entry in oplog::newest_first(&db.log) {
                let op = entry?.op()?;
                if op.writer() != me || op.seq == 0 {
                    continue;
                }
                if let Some(reason) = wanted.get(&op.seq)
                    && let Ok(body) = OpBody::decode(&op.body)
                {
                    changes.push(Op {
                        origin: op.origin,
                        seq: 0,
                        hlc: op.hlc,
                        priority: 0,
                        incarnation: op.incarnation,
                        body: OpBody::Rejected {
                            collection: body.collection().to_owned(),
                            id: body.id().to_owned(),
                            reason: (*reason).clone(),
                        }
                        .encode()?,
                    });
                }
                if op.seq <= wanted.keys().next().copied().unwrap_or(0) {
                    break;
                }
            }
        }
        let from = self.first_unheld(db, p.own_held)?;
        let mut evict = p.evict;
        if let Some(view) = &p.view {
            // This device's writes a full replica has judged: a record
            // they touched that the view does not see was refused.
            for entry in oplog::newest_first(&db.log) {
                let op = entry?.op()?;
                if op.writer() != me || op.seq == 0 || op.seq > p.own_held {
                    continue;
                }
                if op.seq <= p.own_from {
                    break;
                }
                let Ok(body) = OpBody::decode(&op.body) else {
                    continue;
                };
                let key = keys::record_key(body.collection(), body.id());
                let seen = load_for_update(&group, &plan, db, &key)?
                    .is_some_and(|r| view.sees(body.collection(), body.id(), &r));
                if !seen {
                    evict.push(key);
                }
            }
        }
        for key in evict {
            let Some(rec) = load_for_update(&group, &plan, db, &key)? else {
                continue;
            };
            if self.holds_own(&rec, from) {
                continue;
            }
            changes.push(record_change(me, &key, &rec, false)?);
            self.plan_drop(&group, &mut plan, db, key.into(), &rec)?;
        }
        for rec in p.records {
            let Some((collection, _)) = keys::split_record_key(&rec.key) else {
                return Err(StoreError::InvalidArgument(
                    "a projected record's key is not collection and id".into(),
                ));
            };
            let collection = collection.to_owned();
            let state = StoredRecord::decode(&rec.state)?;
            self.clock.observe(state.version());
            sync.max_priority = sync.max_priority.max(state.max_priority());
            let indexes = self.collection_indexes(&group, &mut plan, db, &collection)?;
            let existing = load_for_update(&group, &plan, db, &rec.key)?;
            let old_values = field_values(existing.as_ref(), &indexes);
            let mut record = existing.unwrap_or_default();
            if !record.merge_cut(&state) {
                continue;
            }
            let key = Slice::from(rec.key);
            let stored = plan_record(&mut plan, db, key.clone(), &indexes, &old_values, &record)?;
            changes.push(stored_change(me, &key, &record, &stored)?);
        }
        for (origin, _, last) in &p.covers {
            if *last > sync.vector.get(origin) {
                sync.vector.set(*origin, *last);
            }
        }
        let head = self.log_changes(db, &mut plan, changes, &mut sync)?;
        sync.clock = sync.clock.max(self.clock.last());
        self.commit_plan(db, plan, sync, head)
    }

    /// Plans `changes` (seq 0 entries, never sent on) into the log after
    /// the database's head, for subscribers; returns the new head.
    fn log_changes(
        &mut self,
        db: &Arc<DbState>,
        plan: &mut Plan,
        changes: Vec<Op>,
        sync: &mut SyncMeta,
    ) -> Result<u64, StoreError> {
        let mut head = self.counters.get(&db.id).map_or(0, |c| c.head);
        for change in changes {
            head += 1;
            plan.effects.push(Effect::Log {
                db: db.id,
                log: db.log.clone(),
                cursor: head,
                op: change,
                as_parts: false,
            });
        }
        sync.cursor = head;
        self.counters.entry(db.id).or_default().head = head;
        Ok(head)
    }

    pub(super) fn compact(
        &mut self,
        db: &str,
        stable: &VersionVector,
        tombstones: Hlc,
    ) -> Result<Compacted, StoreError> {
        let db = self.store.db(db)?;
        let mut sync = db.sync_meta();
        let head = self.counters.get(&db.id).map_or(0, |c| c.head);
        let blind = matches!(self.store.reader(&db), Reader::Blind);
        // A blind replica drops only what its checkpoint covers, and has no
        // local subscribers; others keep the newest entries for theirs.
        let stable = &if blind {
            self.blind_stable(&db, stable)?
        } else {
            stable.clone()
        };
        let keep_from = if blind {
            head
        } else {
            head.saturating_sub(self.options.retain_log)
        };
        let mut out = Compacted::default();
        let mut batch = self.fj.batch();
        let step = self.options.compaction_trim_step.max(1);
        let mut trimming = 0;
        // Remove a prefix of the log, so what is left stays contiguous.
        out.ops = oplog::remove_where(&db.log, &mut batch, |entry| {
            let (writer, seq) = entry.writer_seq()?;
            if trimming == step || entry.cursor > keep_from || seq > stable.get(&writer) {
                return Ok(Trim::Stop);
            }
            trimming += 1;
            if seq > sync.floor.get(&writer) {
                sync.floor.set(writer, seq);
            }
            sync.trimmed = sync.trimmed.max(entry.cursor);
            Ok(Trim::Drop)
        })?;
        let TombstonePass {
            removed,
            left,
            walk,
            more,
        } = self.drop_tombstones(&db, tombstones, &mut batch)?;
        out.tombstones = removed.len() as u64;
        // The last op trimmed may have been the last there was: one more
        // pass then finds nothing.
        out.more = out.ops == step || more;
        if out.ops == 0 && out.tombstones == 0 {
            self.tombstones.found(db.id, left, walk);
            return Ok(out);
        }
        batch.insert(&self.meta, sync_meta_key(db.id), codec::to_vec(&sync)?);
        batch.durability(Some(PersistMode::SyncAll)).commit()?;
        // Only once removed: a failed commit leaves them for the next time.
        self.tombstones.found(db.id, left, walk);
        self.store
            .record_cache()
            .forget(removed.iter().map(|k| (db.id, &k[..])));
        *lock(&db.sync) = sync;
        Ok(out)
    }

    /// Removes (in `batch`) the tombstones of `db` made at or before
    /// `horizon` among the records it may hold them in: those noted since
    /// compaction began watching it, and a slice of the walk that finds
    /// what a start did not know.
    fn drop_tombstones(
        &mut self,
        db: &DbState,
        horizon: Hlc,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<TombstonePass, StoreError> {
        let mut removed = Vec::new();
        let mut left = HashSet::new();
        let mut visit = |k: Slice, v: &[u8]| -> Result<(), StoreError> {
            // Most records are live, and their flags say so.
            if !format::may_be_tombstone(v) {
                return Ok(());
            }
            match StoredRecord::decode(v)?.tombstone_clock() {
                Some(t) if t <= horizon => {
                    batch.remove(&db.records, k.clone());
                    removed.push(k);
                }
                Some(_) => {
                    left.insert(k);
                }
                None => {}
            }
            Ok(())
        };
        let Candidates { keys, walk, rounds } = self.tombstones.candidates(db.id);
        for k in &keys {
            if let Some(v) = db.records.get(k)? {
                visit(k.clone(), &v)?;
            }
        }
        // A slice of the walk a start needs, if it is not done.
        let walk = match walk {
            Walk::Done => Walk::Done,
            from => {
                let range = match &from {
                    Walk::After(after) => db.records.range::<&[u8], _>((
                        std::ops::Bound::Excluded(&after[..]),
                        std::ops::Bound::Unbounded,
                    )),
                    _ => db.records.range::<&[u8], _>(..),
                };
                let step = self.options.compaction_walk_step.max(1);
                let (mut read, mut last) = (0, None);
                for kv in range.take(step) {
                    let (k, v) = kv.into_inner()?;
                    read += 1;
                    last = Some(k.clone());
                    // Noted while the walk was under way, and read above.
                    if !keys.contains(&k) {
                        visit(k, &v)?;
                    }
                }
                // A step cut short by the end finishes the walk.
                match last {
                    Some(k) if read == step => Walk::After(k),
                    _ => Walk::Done,
                }
            }
        };
        Ok(TombstonePass {
            removed,
            left,
            more: walk != Walk::Done && !rounds,
            walk,
        })
    }
}

/// What [`Writer::drop_tombstones`] did.
struct TombstonePass {
    /// The keys of the tombstones removed.
    removed: Vec<Slice>,
    /// The tombstones read and kept, too young to drop.
    left: HashSet<Slice>,
    /// How far the walk has come.
    walk: Walk,
    /// The walk is under way, and not just going round: it should go on
    /// soon.
    more: bool,
}

/// The change a subscriber sees when a record at `key` reaches `rec`
/// other than by an operation of its own (a snapshot, a projection, an
/// eviction): its whole state as a `put` when `live`, else a `delete`.
/// Logged with seq 0, so sync never sends it on.
pub(super) fn record_change(
    me: DeviceId,
    key: &[u8],
    rec: &StoredRecord,
    live: bool,
) -> Result<Op, StoreError> {
    let (collection, id) = keys::split_record_key(key).unwrap_or_default();
    let (collection, id) = (collection.to_owned(), id.to_owned());
    let body = if live {
        OpBody::Put {
            collection,
            id,
            fields: rec.clone().into_fields(),
        }
    } else {
        OpBody::Delete { collection, id }
    };
    Ok(change_op(
        rec.latest_origin().unwrap_or(me),
        rec.version(),
        body.encode()?,
    ))
}

/// A change entry (seq 0) of a record whose latest write is `origin`'s at
/// `hlc`: the latest writer's id (a device's own in its first
/// incarnation), as a record's stamps keep nothing else.
fn change_op(origin: DeviceId, hlc: Hlc, body: Vec<u8>) -> Op {
    Op {
        origin,
        seq: 0,
        hlc,
        priority: 0,
        incarnation: 0,
        body,
    }
}

/// [`record_change`] of a record just merged, from its stored bytes
/// `stored`: a live record's visible fields are copied from them into the
/// put, not decoded and encoded again.
pub(super) fn stored_change(
    me: DeviceId,
    key: &[u8],
    rec: &StoredRecord,
    stored: &[u8],
) -> Result<Op, StoreError> {
    let Some(visible) = Visible::read(stored)? else {
        return record_change(me, key, rec, false);
    };
    let (collection, id) = keys::split_record_key(key).unwrap_or_default();
    Ok(change_op(
        rec.latest_origin().unwrap_or(me),
        rec.version(),
        blazedb_proto::put_body_of_map(collection, id, &visible.fields),
    ))
}

/// The fewest records in a snapshot piece worth reading the span they
/// cover for, instead of reading each.
const SPAN_READ_FROM: usize = 8;

/// The log entries of applied ops that came in whole chunks of a peer's
/// log, held back until each chunk's last op: a chunk every op of which
/// is logged as it came is logged as it came, one entry whose bytes are
/// not read again; any other's ops are logged one by one.
struct WholeLog {
    chunks: std::iter::Peekable<std::vec::IntoIter<WholeChunk>>,
    current: Option<WholeChunk>,
    /// The log entries of `current`'s ops so far.
    held: Vec<Effect>,
    /// Every one of them was logged as it came.
    as_came: bool,
}

impl WholeLog {
    fn new(whole: Vec<WholeChunk>) -> WholeLog {
        WholeLog {
            chunks: whole.into_iter().peekable(),
            current: None,
            held: Vec::new(),
            as_came: true,
        }
    }

    /// Op `at` is next: a chunk that ended before it is done with, and
    /// one that holds it becomes the current one.
    fn reach(&mut self, at: usize, plan: &mut Plan) {
        if self.current.as_ref().is_some_and(|c| at >= c.ops.end) {
            self.flush(plan);
        }
        if self.current.is_some() {
            return;
        }
        while self.chunks.peek().is_some_and(|c| c.ops.end <= at) {
            self.chunks.next();
        }
        if self.chunks.peek().is_some_and(|c| c.ops.start <= at) {
            self.current = self.chunks.next();
            self.as_came = true;
        }
    }

    /// Logs op `at` by `entry` (an `Effect::Log`), `as_came` unless it was
    /// rewritten.
    fn log(&mut self, at: usize, entry: Effect, as_came: bool, plan: &mut Plan) {
        match &self.current {
            Some(c) if c.ops.contains(&at) => {
                self.held.push(entry);
                self.as_came &= as_came;
            }
            _ => plan.effects.push(entry),
        }
    }

    /// Every op was looked at.
    fn finish(&mut self, plan: &mut Plan) {
        self.flush(plan);
    }

    fn flush(&mut self, plan: &mut Plan) {
        let Some(chunk) = self.current.take() else {
            return;
        };
        let held = std::mem::take(&mut self.held);
        match held.first() {
            Some(Effect::Log {
                db, log, cursor, ..
            }) if self.as_came && held.len() == chunk.ops.len() => {
                plan.effects.push(Effect::LogChunk {
                    db: *db,
                    log: log.clone(),
                    cursor: *cursor,
                    count: held.len(),
                    stored: chunk.stored,
                });
            }
            _ => plan.effects.extend(held),
        }
    }
}

/// Gives back to `want` the ops `took` (writers and seqs in log order,
/// each its writer's next when it was taken).
fn give_back(want: &mut VersionVector, took: &[(DeviceId, u64)]) {
    // Going back over them, the first of each writer's leaves it where it
    // was.
    for (writer, seq) in took.iter().rev() {
        want.set(*writer, seq - 1);
    }
}

/// The records the store holds from the least to the greatest key of
/// `records`, read in one pass, where a read per record cost about as
/// much as storing it; a first sync finds nothing there. `None` (read
/// each record instead) for a few records, or where the span holds many
/// more records than they are: the sender skipped those (a partial
/// replica's view), and reading them all would cost more.
fn held_in_span(
    db: &DbState,
    records: &[SnapshotRecord],
) -> Result<Option<HashMap<Slice, Slice>>, StoreError> {
    if records.len() < SPAN_READ_FROM {
        return Ok(None);
    }
    let keys = records.iter().map(|r| r.key.as_slice());
    let (Some(first), Some(last)) = (keys.clone().min(), keys.max()) else {
        return Ok(None);
    };
    let most = 2 * records.len() + 16;
    let mut held = HashMap::new();
    for kv in db.records.range(first..=last) {
        if held.len() == most {
            return Ok(None);
        }
        let (k, v) = kv.into_inner()?;
        held.insert(k, v);
    }
    Ok(Some(held))
}

/// [`load_for_update`] with the store's records read beforehand: what the
/// group or plan wrote since comes first.
fn load_from(
    group: &Group,
    plan: &Plan,
    db: &DbState,
    key: &[u8],
    held: &HashMap<Slice, Slice>,
) -> Result<Option<StoredRecord>, StoreError> {
    let bytes = plan
        .overlay
        .get(db.id, key)
        .or_else(|| group.overlay.get(db.id, key))
        .or_else(|| held.get(key).cloned());
    Ok(bytes.map(|b| StoredRecord::decode(&b)).transpose()?)
}

/// [`index_effects`] of a state stored as it came for a record not held
/// here: an entry for each indexed field it has a value for.
fn fresh_index_entries(
    plan: &mut Plan,
    db: &DbState,
    collection: &str,
    id: &str,
    indexes: &BTreeSet<String>,
    f: &format::FreshState<'_>,
) -> Result<(), StoreError> {
    for field in indexes {
        let Some(value) = f.field(field)? else {
            continue;
        };
        if let Some(k) = keys::index_key(collection, field, &value, id) {
            plan.effects.push(Effect::Insert(
                db.index.clone(),
                k.into(),
                id.as_bytes().into(),
            ));
        }
    }
    Ok(())
}

/// [`record_change`] of a live snapshot state stored as it came.
fn fresh_change(me: DeviceId, key: &[u8], f: &format::FreshState<'_>) -> Op {
    let (collection, id) = keys::split_record_key(key).unwrap_or_default();
    change_op(
        f.latest_origin.unwrap_or(me),
        f.version,
        blazedb_proto::put_body_of_map(collection, id, f.visible),
    )
}

/// Seals the stand-in of a refused write in an end-to-end encrypted
/// database, under the newest key held, with the refused op's header.
fn reseal(reader: &Reader, db: &str, op: &mut Op) -> Result<(), StoreError> {
    if let Reader::Keys(keys) = reader
        && let Some(key) = keys.last()
    {
        let header = blazedb_proto::sealed::SealedOp::of(db, op);
        op.body = seal_body(key, &header, &op.body, &mut Vec::new())?;
    }
    Ok(())
}

impl Store {
    pub(crate) fn call_blocking<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(make(Box::new(move |r| {
            let _ = tx.send(r);
        })));
        rx.recv().unwrap_or(Err(StoreError::ShuttingDown))
    }

    /// Hands `add`, in log order after `from`, the entries of published
    /// ops a replica holding `have` lacks and can apply in that order,
    /// until `limits` are reached; returns where to read next time.
    ///
    /// With `whole`, a read that starts between chunks takes each chunk
    /// the replica lacks every entry of whole, as stored, into `whole`
    /// instead, and stops before the first it cannot: a read gives whole
    /// chunks or entries, not both, and one of entries stops at the end
    /// of a chunk. A chunk with a clear body is never taken whole (it
    /// leaves sealed).
    fn read_log(
        &self,
        db: &str,
        have: &VersionVector,
        from: u64,
        limits: ReadLimits,
        whole: Option<&mut Vec<LogChunk>>,
        mut add: impl FnMut(&oplog::Entry) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let db = self.db(db)?;
        let head = db.head();
        let mut want = have.clone();
        let (mut items, mut bytes) = (0, 0);
        let mut log = oplog::after(&db.log, from);
        let takes_whole = whole.is_some();
        if let Some(chunks) = whole {
            // The last cursor of the chunks taken whole.
            let mut taken = None;
            // What `want` took of the chunk being looked at, to give back
            // if the chunk is not taken whole after all.
            let mut took = Vec::new();
            loop {
                took.clear();
                let whole = log.take_whole(MAX_CHUNK_LEN, |cursor, writer, seq, clear| {
                    let take = cursor <= head && !clear && want.advance(writer, seq);
                    if take {
                        took.push((writer, seq));
                    }
                    take
                });
                match whole {
                    Some(Ok(w)) => {
                        items += w.ids.len();
                        bytes += w.stored.len();
                        chunks.push(LogChunk::new(w.stored.to_vec(), w.ids));
                        if limits.full(items, bytes) {
                            return Ok(w.last);
                        }
                        taken = Some(w.last);
                    }
                    Some(Err(e)) => return Err(e),
                    // Not one to take whole: its entries are read one by
                    // one, unless chunks were taken already.
                    None => {
                        give_back(&mut want, &took);
                        break;
                    }
                }
            }
            if let Some(last) = taken {
                return Ok(last);
            }
        }
        // What the peer holds is passed over by its head alone: a peer
        // that sent most of the log (the origin of what this replica
        // applied) holds most of what is read for it.
        while let Some(entry) =
            log.next_kept(|cursor, writer, seq| cursor > head || want.advance(writer, seq))
        {
            let entry = entry?;
            if entry.cursor > head {
                // Committed but not yet published: next time.
                break;
            }
            add(&entry)?;
            items += 1;
            bytes += entry.size();
            // A read that may take chunks whole stops where a chunk ends,
            // so the next one may take the chunks after it whole.
            if limits.full(items, bytes) || (takes_whole && log.between_chunks()) {
                return Ok(entry.cursor);
            }
        }
        Ok(from.max(head))
    }
}

impl SyncStore for Store {
    type Error = StoreError;

    fn databases(&self) -> Vec<String> {
        self.list().into_iter().map(|d| d.name).collect()
    }

    fn writer(&self) -> DeviceId {
        Store::writer(self)
    }

    fn sync_state(&self, db: &str) -> Option<SyncState> {
        let db = self.db(db).ok()?;
        let m = db.sync_meta();
        Some(SyncState {
            epoch: m.epoch,
            vector: m.vector,
            floor: m.floor,
            clock: self.clock(),
            mode: db.settings().sync_mode,
            settings: db.settings(),
            peers: m.peers.map(|p| p.into_iter().collect()),
            wish: m.wish,
            lacking: m.lacking,
            restored: m.restored,
            sealed: db.is_e2e(),
            blind: db.is_e2e() && self.current_key(&db.name).is_none(),
        })
    }

    fn read_ops(
        &self,
        db: &str,
        have: &VersionVector,
        from: u64,
        limits: ReadLimits,
    ) -> Result<OpsRead, StoreError> {
        let mut ops = Vec::new();
        let mut outgoing = self.db(db).ok().and_then(|d| Outgoing::of(self, &d));
        let next = self.read_log(db, have, from, limits, None, |entry| {
            let mut op = entry.op()?;
            if let Some(outgoing) = &mut outgoing {
                outgoing.seal_op(&mut op)?;
            }
            ops.push(op);
            Ok(())
        })?;
        Ok(OpsRead { ops, next })
    }

    fn read_ops_packed(
        &self,
        db: &str,
        have: &VersionVector,
        from: u64,
        limits: ReadLimits,
    ) -> Result<PackedRead, StoreError> {
        // Most reads fill up: room for a full one of small ops at once,
        // where a stream grown from empty copied itself at every step.
        let items = limits.max_items.min(4096);
        let mut ops = PackedOps::with_capacity(items, limits.max_bytes.min(items * 160));
        let mut outgoing = self.db(db).ok().and_then(|d| Outgoing::of(self, &d));
        let mut chunks = Vec::new();
        let next = self.read_log(db, have, from, limits, Some(&mut chunks), |entry| {
            entry.pack_into(&mut ops, outgoing.as_mut())
        })?;
        Ok(PackedRead { ops, chunks, next })
    }

    fn apply_ops(
        &mut self,
        db: &str,
        ops: Vec<Op>,
        screen: &WriteScreen,
    ) -> Result<Applied, StoreError> {
        self.apply_chunks(db, ops, screen, Vec::new())
    }

    fn apply_chunks(
        &mut self,
        db: &str,
        ops: Vec<Op>,
        screen: &WriteScreen,
        whole: Vec<WholeChunk>,
    ) -> Result<Applied, StoreError> {
        let db = db.to_owned();
        let screen = screen.clone();
        self.call_blocking(|reply| Command::ApplyOps {
            db,
            ops,
            screen,
            whole,
            reply,
        })
    }

    fn read_snapshot(
        &self,
        db: &str,
        after: Option<&[u8]>,
        limits: ReadLimits,
    ) -> Result<SnapshotRead, StoreError> {
        let db = self.db(db)?;
        let range = match after {
            Some(k) => db
                .records
                .range::<&[u8], _>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
            None => db.records.range::<&[u8], _>(..),
        };
        let (mut records, mut bytes) = (Vec::new(), 0);
        let mut iter = range.peekable();
        while let Some(kv) = iter.next() {
            let (k, v) = kv.into_inner()?;
            let size = k.len() + v.len();
            let rec = SnapshotRecord {
                key: k.to_vec(),
                state: v.to_vec(),
            };
            if limits.take(&mut records, &mut bytes, rec, size) {
                return Ok(SnapshotRead {
                    records,
                    done: iter.peek().is_none(),
                });
            }
        }
        Ok(SnapshotRead {
            records,
            done: true,
        })
    }

    fn merge_snapshot(
        &mut self,
        db: &str,
        records: Vec<SnapshotRecord>,
        complete: Option<&VersionVector>,
        replace: Option<Replace<'_>>,
    ) -> Result<(), StoreError> {
        let (db, complete) = (db.to_owned(), complete.cloned());
        let replace = replace.map(|r| (r.span.clone(), r.own_held, r.cut));
        self.call_blocking(|reply| Command::MergeSnapshot {
            db,
            records,
            complete,
            replace,
            reply,
        })
    }

    fn read_records(&self, db: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let db = self.db(db)?;
        keys.iter()
            .map(|k| Ok(db.records.get(k)?.map(|v| v.to_vec())))
            .collect()
    }

    fn make_checkpoint(&self, db: &str) -> Result<Option<Checkpoint>, StoreError> {
        self.make_checkpoint_of(db)
    }

    fn checkpoint(&self, db: &str) -> Result<Option<Checkpoint>, StoreError> {
        self.kept_checkpoint(db)
    }

    fn take_checkpoint(&mut self, db: &str, checkpoint: Checkpoint) -> Result<bool, StoreError> {
        let db = db.to_owned();
        self.call_blocking(|reply| Command::TakeCheckpoint {
            db,
            checkpoint,
            reply,
        })
    }

    fn merge_projected(&mut self, db: &str, projection: Projection) -> Result<(), StoreError> {
        let db = db.to_owned();
        self.call_blocking(|reply| Command::MergeProjected {
            db,
            projection,
            reply,
        })
    }

    fn correct(
        &mut self,
        db: &str,
        records: Vec<Correction>,
        after: Hlc,
        _now_ms: u64,
    ) -> Result<Vec<Op>, StoreError> {
        self.call_blocking(|reply| Command::Observe { hlc: after, reply })?;
        let mut writes = Vec::with_capacity(records.len());
        let mut bodies = Vec::with_capacity(records.len());
        for c in records {
            let held = self.get(db, &c.collection, &c.id)?.map(|r| r.fields);
            let body = c.body(held.as_ref());
            bodies.push(body.encode()?);
            writes.push(Write::from(body));
        }
        let priority = self.priority_of(db);
        let writes = super::writer::prepare(&self.device(), self.incarnation(), priority, writes)?;
        let db = db.to_owned();
        let results = self.call_blocking(|reply| Command::Write { db, writes, reply })?;
        Ok(results
            .into_iter()
            .zip(bodies)
            .map(|(r, body)| Op {
                origin: self.device(),
                seq: r.seq,
                hlc: r.hlc,
                priority,
                incarnation: self.incarnation(),
                body,
            })
            .collect())
    }

    fn compact(
        &mut self,
        db: &str,
        stable: &VersionVector,
        tombstones: Hlc,
    ) -> Result<Compacted, StoreError> {
        let (db, stable) = (db.to_owned(), stable.clone());
        self.call_blocking(|reply| Command::Compact {
            db,
            stable,
            tombstones,
            reply,
        })
    }
}
