//! Partial replicas: devices whose access rule (or own wish) gives them
//! less than the whole database.
//!
//! A full replica sends a partial one `Projected` messages instead of
//! `Ops`: for each batch of operations the peer lacks, the current state
//! of every record they touched, cut to the peer's view, and the keys of
//! touched records it may not see (evictions). When the peer's view
//! changes (new rules, teams or wish), a snapshot cut to the view replaces
//! what it holds, range by range.
//!
//! A partial replica takes a projection only if it was read at a state
//! that holds everything the replica has taken before (`at` covers its
//! vector, its own writes aside), so a record never goes back to an older
//! state, and every operation it counts as held has had its effect shown.
//! It passes on nothing but its own writes, and only to full replicas.
//!
//! Writes of a device with restricted access are checked by every full
//! replica that takes them (`write_screen` names the devices; the store
//! checks each write as it applies it): a refused write is kept in the log
//! as `OpBody::Rejected`, which changes nothing and keeps the writer's
//! sequence contiguous, and the replica writes the record back as it holds
//! it, stamped after the refused write (`correct_rejected`). That
//! correction wins wherever the write landed first, the writer's own
//! replica included, which is told why with it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use blazedb_proto::rules::{AccessRules, SyncWish};
use blazedb_proto::{DeviceId, Op, OpBody, SnapshotRecord, SyncMessage, VersionVector};
use serde_bytes::ByteBuf;

use super::{Engine, Event, OutSnapshot, corrections_for, sends};
use crate::access::view::{self, Access, DeviceAttrs, View};
use crate::store::keys;
use crate::store::record::StoredRecord;
use crate::sync::store::{Projection, Refusal, SyncState, SyncStore, WriteScreen};

/// How many refused writes per database are remembered to tell their
/// writers about with the correction.
const REJECTIONS_KEPT: usize = 4096;

/// Records a partial replica may have kept although a replacing snapshot
/// did not carry them: it keeps a record that holds a write of its own the
/// sender did not hold, whole, fields the sender's state has ended
/// included. Nothing else would send such a record again, since the
/// replica holds every operation on it: the sender does, once it holds
/// those writes.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct OwedBack {
    /// The peer's own writes after this seq.
    after: u64,
    /// Not before the peer acknowledged this (the snapshot's vector): its
    /// acknowledgement names every write it held when it merged the
    /// snapshot.
    until: VersionVector,
}

impl OwedBack {
    pub(super) fn new(after: u64, until: &VersionVector) -> Self {
        OwedBack {
            after,
            until: until.clone(),
        }
    }

    /// Both owed at once.
    pub(super) fn join(mut self, other: OwedBack) -> Self {
        self.after = self.after.min(other.after);
        self.until.merge(&other.until);
        self
    }
}

impl<S: SyncStore> Engine<S> {
    /// Takes a database's access rules; a newer version replaces an older
    /// one. Links whose peer now sees something else are re-cut; when the
    /// rules' links change, every peer is told at once which way the
    /// database now syncs with it.
    pub fn set_rules(&mut self, rules: AccessRules, now: u64) {
        let old = self.rules.get(&rules.db);
        if old.is_some_and(|r| r.version >= rules.version) {
            return;
        }
        let relinked = old.map_or(!rules.links.is_empty(), |r| r.links != rules.links);
        let db = rules.db.clone();
        self.rules.insert(db.clone(), rules);
        self.refresh_views(now);
        if relinked {
            self.database_added(&db, now);
        }
    }

    /// The access rules of `db`, if it has any.
    pub fn rules(&self, db: &str) -> Option<&AccessRules> {
        self.rules.get(db)
    }

    /// Takes what rules select members by (names, teams, hubs).
    pub fn set_devices(&mut self, devices: BTreeMap<DeviceId, DeviceAttrs>, now: u64) {
        if devices == self.devices {
            return;
        }
        self.devices = devices;
        self.refresh_views(now);
        // Teams and roles pick the ends of links: re-announce databases
        // whose links may now join other devices.
        let linked: Vec<String> = self
            .rules
            .values()
            .filter(|r| !r.links.is_empty())
            .map(|r| r.db.clone())
            .collect();
        for db in linked {
            self.database_added(&db, now);
        }
    }

    /// This replica's own wish for `db` changed in its store: peers are
    /// told, and cut what they send to match.
    pub fn wish_changed(&mut self, db: &str, now: u64) {
        let peers: Vec<DeviceId> = self.links.keys().copied().collect();
        for p in peers {
            self.send_vector(p, db, false);
        }
        self.refresh_views(now);
    }

    /// The access `device` has to `db`, its own wish included.
    pub fn access_of(&self, db: &str, device: &DeviceId) -> Access {
        let wish = if *device == self.me {
            self.store.sync_state(db).and_then(|s| s.wish)
        } else {
            self.wishes.get(&(*device, db.to_owned())).cloned()
        };
        view::access(
            self.rules.get(db),
            device,
            self.devices.get(device),
            wish.as_ref(),
        )
    }

    /// What this replica may see of `db`, when it holds a partial replica.
    pub(super) fn own_view(&self, db: &str) -> Option<Arc<View>> {
        self.own_views.get(db).cloned().flatten()
    }

    /// Works out again what this replica and each peer may see, and
    /// re-cuts every link where that changed.
    pub(super) fn refresh_views(&mut self, now: u64) {
        let mut moved: Vec<(DeviceId, String)> = Vec::new();
        let mut recut = Vec::new();
        for db in self.store.databases() {
            let own = self.access_of(&db, &self.me).view().cloned();
            if self.own_views.get(&db) != Some(&own) {
                // What this replica holds was cut to another view (or, on
                // the first look, maybe was): unless it holds nothing, it
                // asks for a snapshot cut to the new one. A full replica
                // asks for a whole one by its stored `lacking` instead.
                let holds = self
                    .store
                    .sync_state(&db)
                    .is_some_and(|s| s.vector.total() > 0);
                if own.is_some() && holds {
                    recut.push(db.clone());
                } else {
                    self.recut.remove(&db);
                }
                self.own_views.insert(db.clone(), own);
                moved.extend(self.links.keys().map(|p| (*p, db.clone())));
            }
        }
        for db in recut {
            // A snapshot under way may be cut to the old view: it must not
            // count as the one asked for.
            for streams in self.links.values_mut() {
                if let Some(s) = streams.get_mut(&db) {
                    s.in_snapshot = None;
                }
            }
            let peers: Vec<DeviceId> = self.links.keys().copied().collect();
            self.recut.insert(db.clone());
            for p in peers {
                self.send_vector(p, &db, false);
            }
        }
        let mut views = Vec::new();
        for (peer, streams) in &self.links {
            for db in streams.keys() {
                views.push((*peer, db.clone(), self.access_of(db, peer).view().cloned()));
            }
        }
        for (peer, db, new) in views {
            let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(&db)) else {
                continue;
            };
            if s.view == new {
                continue;
            }
            s.view = new;
            s.out_snapshot = None;
            s.cursor = 0;
            if let Some(a) = &s.acked {
                s.sent = a.clone();
            }
            // A peer now partial gets what it holds replaced; one now full
            // says it lacks a whole state (`Vector::lacking`).
            if s.view.is_some() {
                s.refilter = true;
            }
            moved.push((peer, db));
        }
        moved.sort();
        moved.dedup();
        for (peer, db) in moved {
            self.pump(peer, &db, now);
        }
    }

    /// A peer said its records of `db` were cut to a view it no longer
    /// has: if it is a full replica now, it is owed a whole snapshot; if
    /// it is a partial one, a snapshot cut to its view (unless one is
    /// under way).
    pub(super) fn owe_whole(&mut self, peer: DeviceId, db: &str) {
        let me_whole =
            self.own_view(db).is_none() && self.store.sync_state(db).is_some_and(|s| !s.lacking);
        if let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(db))
            && me_whole
        {
            let owed = match (&s.view, &s.out_snapshot) {
                (None, snap) => snap.as_ref().is_none_or(|o| o.partial),
                (Some(_), snap) => snap.is_none(),
            };
            if owed {
                s.refilter = true;
            }
        }
    }

    /// Whether this replica says it lacks records of `db`: a partial one
    /// when it holds them cut to another view than its current one, a
    /// full one when they are cut at all (`SyncState::lacking`).
    pub(super) fn says_lacking(&self, db: &str, state: &SyncState) -> bool {
        match self.own_view(db) {
            Some(_) => self.recut.contains(db),
            None => state.lacking || state.restored,
        }
    }

    /// A peer said what it asks for of `db`.
    pub(super) fn note_wish(&mut self, peer: DeviceId, db: &str, wish: SyncWish, now: u64) {
        let key = (peer, db.to_owned());
        let wish = (!wish.is_everything()).then_some(wish);
        if self.wishes.get(&key) == wish.as_ref() {
            return;
        }
        match wish {
            Some(w) => self.wishes.insert(key, w),
            None => self.wishes.remove(&key),
        };
        self.refresh_views(now);
    }

    /// Whether a state read at `at` holds everything `mine` holds, the
    /// writes of this replica's current write incarnation aside (a
    /// replacing state keeps those). An earlier incarnation's writes are
    /// not kept: on a copied disk they may be writes no peer holds yet.
    pub(super) fn covers_all(&self, at: &VersionVector, mine: &VersionVector) -> bool {
        let writer = self.store.writer();
        mine.iter()
            .all(|(w, seq)| *w == writer || at.get(w) >= *seq)
    }

    /// The writers among `ops` whose writes the store checks before it
    /// applies them: devices the rules give restricted access. The rule
    /// alone decides what a device may write; its wish only narrows what
    /// it receives.
    pub(super) fn write_screen(&self, db: &str, ops: &[Op]) -> WriteScreen {
        let mut screen = WriteScreen::default();
        let Some(rules) = self.rules.get(db).filter(|r| r.restricts()) else {
            return screen;
        };
        let origins: BTreeSet<DeviceId> = ops
            .iter()
            .map(|o| o.origin)
            .filter(|o| *o != self.me)
            .collect();
        for origin in origins {
            if let Some(v) =
                view::access(Some(rules), &origin, self.devices.get(&origin), None).view()
            {
                screen.restrict(origin, v.clone());
            }
        }
        screen
    }

    /// Writes back the records refused writes touched, as this replica
    /// holds them, and remembers which correction answers which write.
    pub(super) fn correct_rejected(&mut self, db: &str, rejected: Vec<Refusal>, now: u64) {
        let mut by_record: BTreeMap<Vec<u8>, (DeviceId, u64, String)> = BTreeMap::new();
        for Refusal { op, reason } in &rejected {
            self.events.push_back(Event::Rejected {
                db: db.to_owned(),
                origin: op.writer(),
                seq: op.seq,
                hlc: op.hlc,
                reason: reason.clone(),
            });
            if let Ok(body) = OpBody::decode(&op.body) {
                by_record.insert(
                    keys::record_key(body.collection(), body.id()),
                    (op.writer(), op.seq, reason.clone()),
                );
            }
        }
        if !self.store.sync_state(db).is_some_and(|s| sends(s.mode)) {
            return;
        }
        let ops: Vec<Op> = rejected.into_iter().map(|r| r.op).collect();
        let (corrections, after) = corrections_for(&ops);
        match self.store.correct(db, corrections, after, now) {
            Ok(written) => {
                let told = self.rejections.entry(db.to_owned()).or_default();
                for w in &written {
                    let Ok(body) = OpBody::decode(&w.body) else {
                        continue;
                    };
                    if let Some(r) = by_record.get(&keys::record_key(body.collection(), body.id()))
                    {
                        told.insert(w.seq, r.clone());
                    }
                }
                while told.len() > REJECTIONS_KEPT {
                    told.pop_first();
                }
                self.events.push_back(Event::Corrected {
                    db: db.to_owned(),
                    ops: written,
                });
                self.local_commit(db, now);
            }
            Err(e) => self.store_failed(db, &e),
        }
    }

    /// Sends a full replica this (partial) replica's own writes it lacks.
    pub(super) fn pump_own(&mut self, peer: DeviceId, db: &str, state: &SyncState, now: u64) {
        let me = self.me;
        let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(db)) else {
            return;
        };
        if s.acked.is_none() || !s.peer_wants {
            return;
        }
        while let Some(ops) = self.read_window(peer, db) {
            let ops: Vec<Op> = ops.into_iter().filter(|o| o.origin == me).collect();
            if !ops.is_empty() {
                self.send_ops(peer, db, state.epoch, ops, now);
            }
        }
    }

    /// Sends a partial replica what it lacks, cut to `view`: a replacing
    /// snapshot when its view changed or it is below the log, else
    /// projections of what the operations it lacks did.
    pub(super) fn pump_partial(
        &mut self,
        peer: DeviceId,
        db: &str,
        state: &SyncState,
        view: &Arc<View>,
        now: u64,
    ) {
        let me = self.store.writer();
        // The peer's writes it is told about are those of its current
        // incarnation: it matches them to its own by seq.
        let peer_writer = self.peer_writers.get(&peer).copied().unwrap_or(peer);
        let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(db)) else {
            return;
        };
        let Some(acked) = s.acked.clone() else {
            return;
        };
        if !s.peer_wants {
            return;
        }
        if s.out_snapshot.is_none() {
            let below_floor = super::below_floor(state, &acked);
            // Replacing what the peer holds with an older state would undo
            // operations it counts as held: wait until this replica holds
            // all of them (the peer's own writes aside).
            let current = super::holds_all(state, &acked, &peer);
            if (s.refilter || s.force_snapshot || below_floor) && current {
                let snap =
                    OutSnapshot::new(self.next_snapshot_id, state.vector.clone(), true, true);
                s.start_snapshot(snap, now);
                self.next_snapshot_id += 1;
            }
        }
        if s.out_snapshot.is_some() {
            self.send_snapshot_pieces(peer, db, state, Some(view));
            return;
        }
        self.project_back(peer, db, state, view, &acked);
        // Corrections of this peer's refused writes, by correction seq.
        let told: BTreeMap<u64, (u64, String)> = self
            .rejections
            .get(db)
            .into_iter()
            .flatten()
            .filter(|(_, (writer, _, _))| *writer == peer_writer)
            .map(|(c, (_, seq, reason))| (*c, (*seq, reason.clone())))
            .collect();
        while let Some(ops) = self.read_window(peer, db) {
            self.mark_sent(peer, db, &ops, now);
            let mut covers: BTreeMap<DeviceId, (u64, u64)> = BTreeMap::new();
            // Per record touched, whether it may have to leave the peer.
            let mut touched: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
            let mut rejected = Vec::new();
            for op in &ops {
                covers
                    .entry(op.writer())
                    .and_modify(|c| c.1 = op.seq)
                    .or_insert((op.seq, op.seq));
                let Ok(body) = OpBody::decode(&op.body) else {
                    continue;
                };
                let answers = (op.writer() == me).then(|| told.get(&op.seq)).flatten();
                if let Some((seq, reason)) = answers {
                    rejected.push((*seq, reason.clone()));
                }
                // Evictions name records: only for records the peer may
                // hold, so it learns nothing of the others.
                let may_leave = answers.is_some()
                    || op.origin == peer
                    || (view.sees_collection(body.collection())
                        && match &body {
                            // Unsetting the last field of a record that
                            // was only ever patched ends it, whatever the
                            // field.
                            OpBody::Patch { set, unset, .. } => {
                                !unset.is_empty() || set.keys().any(|f| view.filters_on(f))
                            }
                            _ => true,
                        });
                *touched
                    .entry(keys::record_key(body.collection(), body.id()))
                    .or_default() |= may_leave;
            }
            let Some((records, evict)) = self.project_touched(db, view, touched) else {
                return;
            };
            let mut at = state.vector.clone();
            for (o, (_, last)) in &covers {
                if *last > at.get(o) {
                    at.set(*o, *last);
                }
            }
            self.outbox.push_back((
                peer,
                SyncMessage::Projected {
                    db: db.to_owned(),
                    epoch: state.epoch,
                    at,
                    covers: covers.into_iter().map(|(o, (f, l))| (o, f, l)).collect(),
                    records,
                    evict,
                    rejected,
                },
            ));
        }
    }

    /// The records `touched` (each with whether it may have to leave the
    /// peer) as a partial replica with `view` may receive them, and the
    /// keys of those it must drop; `None` if the store failed.
    fn project_touched(
        &mut self,
        db: &str,
        view: &View,
        touched: BTreeMap<Vec<u8>, bool>,
    ) -> Option<(Vec<SnapshotRecord>, Vec<ByteBuf>)> {
        let keys: Vec<Vec<u8>> = touched.keys().cloned().collect();
        let states = match self.store.read_records(db, &keys) {
            Ok(r) => r,
            Err(e) => {
                self.store_failed(db, &e);
                return None;
            }
        };
        let (mut records, mut evict) = (Vec::new(), Vec::new());
        for ((key, may_leave), state) in touched.into_iter().zip(states) {
            let seen = state
                .as_deref()
                .and_then(|st| project(view, key.clone(), st));
            match seen {
                Some(r) => records.push(r),
                None if may_leave => {
                    match state.and_then(|st| project_deleted(view, key.clone(), &st)) {
                        Some(r) => records.push(r),
                        None => evict.push(ByteBuf::from(key)),
                    }
                }
                None => {}
            }
        }
        Some((records, evict))
    }

    /// Sends a partial replica the records it may have kept whole
    /// (`OwedBack`) as this replica holds them, once it holds the peer's
    /// writes on them and everything else the peer holds.
    fn project_back(
        &mut self,
        peer: DeviceId,
        db: &str,
        state: &SyncState,
        view: &View,
        acked: &VersionVector,
    ) {
        let writer = self.peer_writers.get(&peer).copied().unwrap_or(peer);
        let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(db)) else {
            return;
        };
        let Some(owed) = &s.owed_back else {
            return;
        };
        let held = state.vector.get(&writer);
        if !acked.dominates(&owed.until)
            || held < acked.get(&writer)
            || !super::holds_all(state, acked, &peer)
        {
            return;
        }
        let after = owed.after;
        s.owed_back = None;
        if held <= after {
            return;
        }
        // Everything held but the peer's writes after `after`.
        let mut have = state.vector.clone();
        have.set(writer, after);
        let mut touched: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        // A replacing snapshot is rare (a view changed): the log is read
        // from its start.
        let mut cursor = 0;
        loop {
            let read = match self.store.read_ops(db, &have, cursor, self.config.batch) {
                Ok(r) => r,
                Err(e) => {
                    self.store_failed(db, &e);
                    return;
                }
            };
            if read.ops.is_empty() {
                break;
            }
            cursor = read.next;
            for op in read.ops.iter().filter(|o| o.writer() == writer) {
                if let Ok(body) = OpBody::decode(&op.body) {
                    touched.insert(keys::record_key(body.collection(), body.id()), true);
                }
            }
        }
        // In batches of the size sync reads, as the records of a read.
        let mut touched = touched.into_iter().peekable();
        while touched.peek().is_some() {
            let batch = touched.by_ref().take(self.config.batch.max_items).collect();
            let Some((records, evict)) = self.project_touched(db, view, batch) else {
                return;
            };
            self.outbox.push_back((
                peer,
                SyncMessage::Projected {
                    db: db.to_owned(),
                    epoch: state.epoch,
                    at: state.vector.clone(),
                    covers: Vec::new(),
                    records,
                    evict,
                    rejected: Vec::new(),
                },
            ));
        }
    }

    /// What this (partial) replica's records may hold: its vector, and the
    /// states what it merged was read at (`Engine::read_floor`), forgotten
    /// once the vector holds them.
    pub(super) fn held_with_floor(&mut self, db: &str, vector: &VersionVector) -> VersionVector {
        let mut held = vector.clone();
        if let Some(floor) = self.read_floor.get(db) {
            if held.dominates(floor) {
                self.read_floor.remove(db);
            } else {
                held.merge(floor);
            }
        }
        held
    }

    /// On a partial replica: a projection from a full one arrived.
    pub(super) fn on_projected(
        &mut self,
        peer: DeviceId,
        db: String,
        epoch: blazedb_proto::Epoch,
        at: &VersionVector,
        projection: Projection,
        now: u64,
    ) {
        let _ = now;
        let Some(state) = self.store.sync_state(&db) else {
            return;
        };
        if !super::takes(self.mode_with(&db, &state, &peer))
            || !self.epoch_matches(peer, &db, epoch)
            || self.own_view(&db).is_none()
        {
            return;
        }
        let gap = projection
            .covers
            .iter()
            .any(|(o, first, _)| *first > state.vector.get(o) + 1);
        let held = self.held_with_floor(&db, &state.vector);
        if gap || !self.covers_all(at, &held) {
            // Older than what this replica took from elsewhere, or after a
            // lost message: the sender goes back and sends it again.
            return;
        }
        let mut projection = projection;
        projection.view = self.own_view(&db);
        projection.own_from = self.own_judged.get(&db).copied().unwrap_or(0);
        let judged = projection.own_held;
        let ops: u64 = projection
            .covers
            .iter()
            .map(|(o, first, last)| last.saturating_sub((*first).max(state.vector.get(o) + 1)) + 1)
            .sum();
        if let Err(e) = self.store.merge_projected(&db, projection) {
            self.store_failed(db, &e);
            return;
        }
        // The records came as the sender held them at `at`, which may be
        // ahead of what this replica now counts as held.
        self.read_floor.entry(db.clone()).or_default().merge(at);
        if judged > projection_from(&self.own_judged, &db) {
            self.own_judged.insert(db.clone(), judged);
        }
        if ops > 0 {
            self.events.push_back(Event::Applied {
                db: db.clone(),
                from: peer,
                ops: usize::try_from(ops).unwrap_or(usize::MAX),
            });
        }
        self.send_ack(peer, &db);
    }
}

fn projection_from(judged: &BTreeMap<String, u64>, db: &str) -> u64 {
    judged.get(db).copied().unwrap_or(0)
}

/// A deleted record as a partial replica with `view` may receive it: its
/// stamps and no value. A record the replica holds then takes the delete
/// as any replica would, keeping its own later writes; an eviction could
/// only drop it whole or, while it holds writes not judged yet, keep it
/// whole, fields the delete ended included.
pub(super) fn project_deleted(view: &View, key: Vec<u8>, state: &[u8]) -> Option<SnapshotRecord> {
    let rec = StoredRecord::decode(state).ok()?;
    let (collection, _) = keys::split_record_key(&key)?;
    if rec.is_live() || !view.sees_collection(collection) {
        return None;
    }
    cut_to(view, key, state, &rec)
}

/// A record as a partial replica with `view` may receive it, or `None` if
/// it may not see it.
pub(super) fn project(view: &View, key: Vec<u8>, state: &[u8]) -> Option<SnapshotRecord> {
    let rec = StoredRecord::decode(state).ok()?;
    let (collection, id) = keys::split_record_key(&key)?;
    if !view.sees(collection, id, &rec) {
        return None;
    }
    cut_to(view, key, state, &rec)
}

/// The record `rec` (stored as `state`) without the values `view` hides.
fn cut_to(view: &View, key: Vec<u8>, state: &[u8], rec: &StoredRecord) -> Option<SnapshotRecord> {
    let state = if view.exclude.is_empty() {
        state.to_vec()
    } else {
        view.project(rec).encode()
    };
    Some(SnapshotRecord { key, state })
}
