//! The sync engine: a state machine that keeps this replica's databases in
//! step with its peers'. It does no IO and reads no clock: the caller hands
//! it events with the time, and takes back messages to send and the time
//! of its next timer.
//!
//! Per database and peer the protocol is:
//! 1. both sides send their version vector (`Vector`) when the link comes
//!    up, and again now and then;
//! 2. each side streams what the other lacks (`Ops`), oldest first, with at
//!    most a window of operations unacknowledged, or a `Snapshot` of its
//!    records when the other is too far behind for the log;
//! 3. after that, new operations (local or from a third replica) are pushed
//!    as they commit. The receiver answers every batch with its vector:
//!    that is the acknowledgement. Nothing acknowledged in time is sent
//!    again from the last acknowledged point (go-back-N), with backoff.
//!
//! Invariants:
//! - Only operations that extend this replica's vector contiguously are
//!   applied, so a version vector says exactly what a replica holds and
//!   duplicates are dropped by `(origin, seq)`.
//! - A peer's acknowledged vector only grows within an epoch; a new epoch
//!   from a peer throws away everything known about it.
//! - Operations from another device with a clock reading too far ahead are
//!   not applied (see [`MAX_AHEAD_MS`](super::hlc::MAX_AHEAD_MS)).
//! - Only operations every replica has reported holding are compacted, and
//!   only tombstones older than every operation still in flight.
//! - A removed device's operations past its [`Cutoff`] are never applied.
//!   A replica that holds none of them corrects the records they touched
//!   (a local write, stamped after them); one that holds some passes them
//!   on until a replica that can correct does.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use blazedb_proto::api::SyncMode;
use blazedb_proto::rules::{AccessRules, SyncWish};
use blazedb_proto::sync::LogChunk;
use blazedb_proto::{
    DeviceId, Epoch, Hlc, Op, OpBody, Report, RunVector, Stable, SyncMessage, VersionVector,
};

use super::hlc::too_far_ahead;
use super::store::{Correction, PackedRead, ReadLimits, SyncState, SyncStore, WholeChunk};
use crate::access::links;
use crate::access::view::{DeviceAttrs, View};

mod lag;
mod partial;
mod sealed;

pub use lag::LinkReport;

/// Engine tuning. Times are in milliseconds.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Every replica of the mesh this device knows of. Compaction waits
    /// until each of them has reported; with none, nothing is compacted.
    pub members: Vec<DeviceId>,
    /// Devices removed from the mesh, with where their operations stop
    /// being accepted.
    pub cutoffs: BTreeMap<DeviceId, Cutoff>,
    /// Bounds on one `Ops` message.
    pub batch: ReadLimits,
    /// The most operations sent to a peer and not yet acknowledged.
    pub window_ops: u64,
    /// Bounds on one snapshot piece.
    pub snapshot_piece: ReadLimits,
    /// The most snapshot pieces sent and not yet acknowledged.
    pub window_pieces: u32,
    /// A peer this many operations behind gets a snapshot instead.
    pub snapshot_after: u64,
    /// How long to wait for an acknowledgement before sending again.
    pub retransmit_ms: u64,
    /// The longest the retransmit wait grows to.
    pub max_retransmit_ms: u64,
    /// How often vectors and reports are sent to every peer.
    pub announce_ms: u64,
    /// How often compaction runs.
    pub compact_ms: u64,
    /// How soon a database's compaction runs again when the store stopped
    /// short of all it could do (`Compacted::more`), each pass kept short
    /// because it holds the store's writes back.
    pub compact_again_ms: u64,
    /// How long after a write incarnation was last heard from another
    /// incarnation of its device must be heard from, holding all this one
    /// wrote, before this one counts as gone and stops holding compaction
    /// back. Until then two copies of one device (a cloned disk) both
    /// count.
    pub retire_after_ms: u64,
    /// This replica links with many (a hub): to a peer that is not a hub
    /// it sends its own report and what every replica holds ([`Stable`]),
    /// not every replica's report, which with a thousand devices would be
    /// a million reports per announcement.
    pub summarize: bool,
    /// A replica holding an end-to-end encrypted database's key sends a
    /// new sealed checkpoint to a peer without the key once it holds this
    /// many operations more than the last one it sent that peer.
    pub checkpoint_ops: u64,
    /// How long a replica that sent a checkpoint in place of a snapshot
    /// waits for the peer to take it before sending operations anyway.
    pub checkpoint_wait_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            members: Vec::new(),
            cutoffs: BTreeMap::new(),
            batch: ReadLimits {
                max_items: 512,
                max_bytes: 256 * 1024,
            },
            window_ops: 8192,
            snapshot_piece: ReadLimits {
                max_items: 2048,
                max_bytes: 512 * 1024,
            },
            window_pieces: 8,
            snapshot_after: 1_000_000,
            retransmit_ms: 2_000,
            max_retransmit_ms: 60_000,
            announce_ms: 10_000,
            compact_ms: 60_000,
            compact_again_ms: 1_000,
            retire_after_ms: 600_000,
            summarize: false,
            checkpoint_ops: 10_000,
            checkpoint_wait_ms: 30_000,
        }
    }
}

/// Where a removed device's operations stop being accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cutoff {
    /// Per database, the highest `seq` of the device's operations (in its
    /// first incarnation) taken.
    pub per_db: BTreeMap<String, u64>,
    /// Per database in `per_db`, the same for the device's later write
    /// incarnations; one not listed had no operation taken.
    pub incarnations: BTreeMap<String, BTreeMap<u32, u64>>,
    /// In a database not listed, operations stamped after this are refused.
    pub after: Hlc,
}

impl Cutoff {
    /// Whether the device's operation `op` in `db` is still taken.
    pub fn allows(&self, db: &str, op: &Op) -> bool {
        match self.held(db, op.incarnation) {
            Some(max) => op.seq <= max,
            None => op.hlc <= self.after,
        }
    }

    /// The highest seq of the device's `incarnation` taken in `db`, if the
    /// cut-off counts `db` by seq.
    pub fn held(&self, db: &str, incarnation: u32) -> Option<u64> {
        let first = self.per_db.get(db)?;
        Some(match incarnation {
            0 => *first,
            n => self
                .incarnations
                .get(db)
                .and_then(|m| m.get(&n))
                .copied()
                .unwrap_or(0),
        })
    }
}

/// Something the engine noticed that the agent should report or log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Operations from another replica were applied.
    Applied {
        /// The database.
        db: String,
        /// The peer they came from.
        from: DeviceId,
        /// How many.
        ops: usize,
    },
    /// A snapshot from a peer was merged completely.
    SnapshotMerged {
        /// The database.
        db: String,
        /// The peer it came from.
        from: DeviceId,
    },
    /// Operations were held back because their clock is too far ahead of
    /// this device's.
    ClockAhead {
        /// The database.
        db: String,
        /// The device that stamped them.
        origin: DeviceId,
        /// How far ahead, in milliseconds.
        ahead_ms: u64,
    },
    /// A peer's database has a new epoch (it was reset or restored).
    EpochChanged {
        /// The database.
        db: String,
        /// The peer.
        peer: DeviceId,
    },
    /// Operations were removed from the log, or tombstones dropped.
    Compacted {
        /// The database.
        db: String,
        /// Operations removed.
        ops: u64,
        /// Tombstones removed.
        tombstones: u64,
    },
    /// A peer syncs a database this replica does not have. The caller may
    /// create it and call [`Engine::database_added`].
    UnknownDatabase {
        /// The database.
        db: String,
        /// The peer.
        peer: DeviceId,
        /// The database is end-to-end encrypted on the peer.
        sealed: bool,
        /// The peer's settings for it, when it announced them.
        settings: Option<blazedb_proto::api::DbSettings>,
    },
    /// An operation of an end-to-end encrypted database did not open here
    /// (see [`SyncStore::apply_ops`]): it was not applied, and is asked
    /// for again like any operation not received.
    Unopened {
        /// The database.
        db: String,
        /// The peer that sent it.
        peer: DeviceId,
        /// Which op, and why.
        unopened: super::store::Unopened,
    },
    /// A sealed checkpoint from a peer was taken: kept whole (this replica
    /// holds no key) or merged like a snapshot.
    CheckpointTaken {
        /// The database.
        db: String,
        /// The peer.
        from: DeviceId,
        /// How many parts it had.
        parts: usize,
    },
    /// A sealed checkpoint was sent to a peer.
    CheckpointSent {
        /// The database.
        db: String,
        /// The peer.
        to: DeviceId,
        /// How many parts it had.
        parts: usize,
    },
    /// A peer holds a database of the same name that is end-to-end
    /// encrypted where this one is not, or the other way round: the two
    /// are not synced.
    EncryptionDiffers {
        /// The database.
        db: String,
        /// The peer.
        peer: DeviceId,
        /// Whether the peer's is end-to-end encrypted.
        sealed: bool,
    },
    /// Operations of a removed device beyond its cut-off were refused.
    Refused {
        /// The database.
        db: String,
        /// The removed device.
        origin: DeviceId,
        /// The peer that offered them.
        peer: DeviceId,
        /// How many.
        ops: usize,
    },
    /// Records that refused operations touched were written again, as
    /// this replica holds them, so that replicas which applied the refused
    /// operations take this state instead.
    Corrected {
        /// The database.
        db: String,
        /// The operations written.
        ops: Vec<Op>,
    },
    /// A write from a device with restricted access broke the database's
    /// access rules: it was not applied, and the record it touched was
    /// written back as this replica holds it.
    Rejected {
        /// The database.
        db: String,
        /// The writer that made it ([`Op::writer`]): its device's id in
        /// the device's first write incarnation.
        origin: DeviceId,
        /// Its seq.
        seq: u64,
        /// Its clock reading.
        hlc: Hlc,
        /// Why it was refused.
        reason: String,
    },
    /// The store failed; what was being done is retried later.
    StoreFailed {
        /// The database.
        db: String,
        /// What went wrong.
        error: String,
    },
}

impl OutSnapshot {
    fn new(id: u64, vector: VersionVector, partial: bool, replace: bool) -> Self {
        OutSnapshot {
            id,
            vector,
            after: None,
            next_part: 0,
            acked_part: None,
            all_sent: false,
            partial,
            replace,
        }
    }
}

/// Whether a peer that acknowledged `acked` lacks operations the log no
/// longer holds.
fn below_floor(state: &SyncState, acked: &VersionVector) -> bool {
    state
        .floor
        .iter()
        .any(|(o, f)| acked.get(o) < *f && state.vector.get(o) > acked.get(o))
}

/// Whether this replica holds everything `peer` acknowledged, the peer's
/// own writes aside.
fn holds_all(state: &SyncState, acked: &VersionVector, peer: &DeviceId) -> bool {
    acked
        .iter()
        .all(|(o, seq)| o == peer || state.vector.get(o) >= *seq)
}

/// A snapshot being sent to one peer.
#[derive(Debug, Clone)]
struct OutSnapshot {
    id: u64,
    vector: VersionVector,
    /// The last record key sent.
    after: Option<Vec<u8>>,
    next_part: u32,
    /// The latest piece the peer has merged.
    acked_part: Option<u32>,
    all_sent: bool,
    /// Cut to what a partial replica may see.
    partial: bool,
    /// Replacing what the peer holds, range by range (to a partial
    /// replica, or one that held a cut state).
    replace: bool,
}

/// One database shared with one peer.
#[derive(Debug, Clone)]
struct Stream {
    /// Whether the peer takes operations.
    peer_wants: bool,
    /// What the peer has said it holds; `None` until it says.
    acked: Option<VersionVector>,
    /// What the peer holds once everything sent arrives.
    sent: VersionVector,
    /// Where in the log reading for this peer goes on.
    cursor: u64,
    /// When the peer last acknowledged something new.
    progress_at: u64,
    /// The current retransmit wait.
    rto: u64,
    out_snapshot: Option<OutSnapshot>,
    /// The snapshot being received: its id and the next piece expected.
    in_snapshot: Option<(u64, u32)>,
    /// The next snapshot goes out whatever the vectors say.
    force_snapshot: bool,
    /// What this replica has told the peer it holds, so an
    /// acknowledgement carries only what changed since.
    told: VersionVector,
    /// The last summary sent to the peer (its total and horizon).
    told_stable: Option<(u64, Hlc)>,
    /// Per replica, the newest report the peer has from this link (sent
    /// or received), so each report crosses a link once.
    reported: BTreeMap<DeviceId, ReportMark>,
    /// What the peer may see, when it holds a partial replica: it gets
    /// projections, not operations, and its writes are checked.
    view: Option<Arc<View>>,
    /// The peer's view changed: what it holds is to be replaced by a
    /// snapshot (cut to its new view, or whole if it is now a full
    /// replica). Cleared only once the snapshot's last piece is merged,
    /// since the peer's vector says nothing about what it lacks.
    refilter: bool,
    /// Records the (partial) peer may have kept whole past a replacing
    /// snapshot, for writes of its own this replica did not hold yet: they
    /// are sent again once it does.
    owed_back: Option<partial::OwedBack>,
    /// The database is sealed and the peer holds none of its keys: it
    /// gets checkpoints, never snapshots.
    peer_blind: bool,
    /// The last checkpoint sent to the peer, and when.
    checkpoint_sent: Option<sealed::Sent>,
    /// The checkpoint being received, part by part.
    in_checkpoint: Option<sealed::Incoming>,
}

/// How new a report is: later epochs, then more operations, then a later
/// clock are newer.
type ReportMark = (Epoch, u64, Hlc);

fn mark(r: &Report) -> ReportMark {
    (r.epoch, r.vector.total(), r.clock)
}

impl Stream {
    fn new(now: u64, rto: u64, view: Option<Arc<View>>) -> Self {
        Stream {
            peer_wants: false,
            acked: None,
            sent: VersionVector::new(),
            cursor: 0,
            progress_at: now,
            rto,
            out_snapshot: None,
            in_snapshot: None,
            force_snapshot: false,
            told: VersionVector::new(),
            told_stable: None,
            reported: BTreeMap::new(),
            view,
            refilter: false,
            owed_back: None,
            peer_blind: false,
            checkpoint_sent: None,
            in_checkpoint: None,
        }
    }

    /// Starts sending `snap` in place of operations.
    fn start_snapshot(&mut self, snap: OutSnapshot, now: u64) {
        self.force_snapshot = false;
        self.out_snapshot = Some(snap);
        self.cursor = 0;
        self.progress_at = now;
    }

    fn in_flight(&self) -> bool {
        self.out_snapshot.is_some()
            || self
                .acked
                .as_ref()
                .is_some_and(|a| self.sent.is_ahead_of(a))
    }
}

fn sends(mode: SyncMode) -> bool {
    matches!(mode, SyncMode::Sync | SyncMode::Push)
}

fn takes(mode: SyncMode) -> bool {
    matches!(mode, SyncMode::Sync | SyncMode::Pull)
}

/// The key range a snapshot piece stands for: after the previous piece's
/// last key, up to its own (to the end for the last piece).
fn piece_span(from: Option<Vec<u8>>, upto: &Option<Vec<u8>>, last: bool) -> blazedb_proto::Span {
    blazedb_proto::Span {
        after: from.map(serde_bytes::ByteBuf::from),
        upto: if last {
            None
        } else {
            upto.clone().map(serde_bytes::ByteBuf::from)
        },
    }
}

/// The records `ops` touched, as writes that put them back as this replica
/// holds them (only the fields a patch touched), and the latest clock
/// reading among the operations, which the writes must come after.
fn corrections_for(ops: &[Op]) -> (Vec<Correction>, Hlc) {
    let mut targets: BTreeMap<(String, String), Option<BTreeSet<String>>> = BTreeMap::new();
    let mut after = Hlc::default();
    for op in ops {
        let Ok(body) = OpBody::decode(&op.body) else {
            continue;
        };
        after = after.max(op.hlc);
        let entry = targets
            .entry((body.collection().to_owned(), body.id().to_owned()))
            .or_insert_with(|| Some(BTreeSet::new()));
        match (&body, entry) {
            (OpBody::Patch { set, unset, .. }, Some(fields)) => {
                fields.extend(set.keys().cloned());
                fields.extend(unset.iter().cloned());
            }
            (_, entry) => *entry = None,
        }
    }
    let corrections = targets
        .into_iter()
        .map(|((collection, id), fields)| Correction {
            collection,
            id,
            fields: fields.map(|f| f.into_iter().collect()),
        })
        .collect();
    (corrections, after)
}

/// What a `Vector` message carries besides its head: the vector, and in
/// announcements the reports, summary, wish and settings.
type Announced = (
    VersionVector,
    Vec<Report>,
    Option<Stable>,
    Option<SyncWish>,
    Option<blazedb_proto::api::DbSettings>,
);

/// A peer's latest vector for a database not synced here: epoch, vector,
/// whether it takes operations, and what it refuses.
type Parked = (Epoch, VersionVector, bool, Vec<(DeviceId, u64)>);

/// How many of a replica's past reports are kept.
const REPORT_HISTORY: usize = 16;

/// The sync engine of one replica.
#[derive(Debug)]
pub struct Engine<S> {
    me: DeviceId,
    store: S,
    config: EngineConfig,
    links: BTreeMap<DeviceId, BTreeMap<String, Stream>>,
    /// The latest epoch seen from each peer, per database.
    epochs: BTreeMap<(DeviceId, String), Epoch>,
    /// Per database, recent reports of each replica, oldest first.
    reports: BTreeMap<String, BTreeMap<DeviceId, VecDeque<Report>>>,
    /// Per database, when each write incarnation was last heard from (a
    /// `Vector` from it, or a newer report of it): one not heard from for
    /// long while another incarnation of its device is, is gone
    /// ([`retired`]).
    heard: BTreeMap<String, BTreeMap<DeviceId, u64>>,
    /// Per database, the write incarnations found gone, with their last
    /// report: a peer passing that report on again does not bring them
    /// back, a newer one does.
    gone: BTreeMap<String, BTreeMap<DeviceId, ReportMark>>,
    /// Per database, write incarnations of members that wrote operations
    /// held here but have not reported here, and since when this replica
    /// knows of them: they hold compaction back until found gone.
    unreported: BTreeMap<String, BTreeMap<DeviceId, u64>>,
    /// The latest time the driver passed in.
    now: u64,
    /// The latest vector each peer sent for a database not synced here,
    /// taken up if the database is added.
    parked: BTreeMap<(DeviceId, String), Parked>,
    outbox: VecDeque<(DeviceId, SyncMessage)>,
    events: VecDeque<Event>,
    /// Per database and removed device, the seq after which its operations
    /// were found refused (where the cut-off is a time, not a seq).
    refused_after: BTreeMap<(String, DeviceId), u64>,
    /// Per database and removed device, the highest seq of its operations
    /// refused here: peers need not offer those again.
    refused_upto: BTreeMap<(String, DeviceId), u64>,
    /// Per database and removed device, the seqs of its refused operations
    /// already corrected here, or passed on to be.
    corrected: BTreeMap<(String, DeviceId), BTreeSet<u64>>,
    /// Per database, refused operations this replica cannot correct
    /// itself: passed on to every peer when a link comes up and at every
    /// announcement, since a message on a link that drops is lost.
    to_refute: BTreeMap<String, BTreeMap<(DeviceId, u64), Op>>,
    /// Per database, what each peer that summarizes (a hub) last said
    /// every replica holds.
    stable_from: BTreeMap<String, BTreeMap<DeviceId, Stable>>,
    /// The peers that are hubs: a summarizing replica sends them every
    /// report, not its summary, so hubs can work it out themselves.
    hubs: BTreeSet<DeviceId>,
    /// Per database, its access rules (none: everyone gets everything).
    rules: BTreeMap<String, AccessRules>,
    /// What rules select members by.
    devices: BTreeMap<DeviceId, DeviceAttrs>,
    /// Per peer and database, the less than everything the peer asks for.
    wishes: BTreeMap<(DeviceId, String), SyncWish>,
    /// Per database, corrections this replica wrote for refused writes of
    /// partial replicas, by the correction's seq: the writer, its seq and
    /// why, so the writer is told with the correction.
    rejections: BTreeMap<String, BTreeMap<u64, (DeviceId, u64, String)>>,
    /// Per peer, the writer of the latest of its own operations taken: its
    /// current write incarnation.
    peer_writers: BTreeMap<DeviceId, DeviceId>,
    /// Per database, what this replica may see of it when it holds a
    /// partial replica (`None`: a full one).
    own_views: BTreeMap<String, Option<Arc<View>>>,
    /// Per database, up to which seq this (partial) replica's own writes
    /// have been judged by a full replica and swept (see
    /// `Projection::view`).
    own_judged: BTreeMap<String, u64>,
    /// Databases this (partial) replica holds cut to another view than
    /// its current one, until a snapshot cut to the current one has
    /// replaced them: it says so (`Vector::lacking`) so a full replica
    /// sends one.
    recut: BTreeSet<String>,
    /// Per database, the states the projections and cut snapshot pieces
    /// this (partial) replica merged were read at, until its vector holds
    /// them: their records may be ahead of its vector (a piece drops what
    /// the sender deleted), so a projection read at an older state would
    /// mix an older copy of a record into them, or bring one back.
    read_floor: BTreeMap<String, VersionVector>,
    /// When this replica's vector grew, to date what peers lack.
    arrivals: lag::Arrivals,
    next_announce: u64,
    next_compact: u64,
    /// The databases whose last compaction stopped short, and when they
    /// are compacted again (before the next round of all of them).
    compact_again: (BTreeSet<String>, u64),
    next_snapshot_id: u64,
}

impl<S: SyncStore> Engine<S> {
    /// An engine for the device `me` over `store`, started at time `now`.
    pub fn new(me: DeviceId, store: S, config: EngineConfig, now: u64) -> Self {
        Engine {
            me,
            store,
            next_announce: now + config.announce_ms,
            next_compact: now + config.compact_ms,
            compact_again: (BTreeSet::new(), u64::MAX),
            config,
            links: BTreeMap::new(),
            arrivals: lag::Arrivals::default(),
            epochs: BTreeMap::new(),
            reports: BTreeMap::new(),
            heard: BTreeMap::new(),
            gone: BTreeMap::new(),
            unreported: BTreeMap::new(),
            now,
            parked: BTreeMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            refused_after: BTreeMap::new(),
            refused_upto: BTreeMap::new(),
            corrected: BTreeMap::new(),
            to_refute: BTreeMap::new(),
            stable_from: BTreeMap::new(),
            hubs: BTreeSet::new(),
            rules: BTreeMap::new(),
            devices: BTreeMap::new(),
            wishes: BTreeMap::new(),
            rejections: BTreeMap::new(),
            peer_writers: BTreeMap::new(),
            own_views: BTreeMap::new(),
            own_judged: BTreeMap::new(),
            recut: BTreeSet::new(),
            read_floor: BTreeMap::new(),
            next_snapshot_id: 1,
        }
    }

    /// This replica's device id.
    pub fn me(&self) -> DeviceId {
        self.me
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, for local writes; call [`Engine::local_commit`] after.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Stops the engine and hands the store back.
    pub fn into_store(self) -> S {
        self.store
    }

    /// The peers with a link up.
    pub fn peers(&self) -> impl Iterator<Item = &DeviceId> {
        self.links.keys()
    }

    /// What `peer` last acknowledged holding of `db`.
    pub fn acked(&self, peer: &DeviceId, db: &str) -> Option<&VersionVector> {
        self.links.get(peer)?.get(db)?.acked.as_ref()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(DeviceId, SyncMessage)> {
        self.outbox.pop_front()
    }

    /// Whether a message waits to be sent.
    pub fn has_transmit(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The next thing to report.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> u64 {
        let retransmit = self
            .links
            .values()
            .flat_map(|l| l.values())
            .filter(|s| s.in_flight())
            .map(|s| s.progress_at + s.rto);
        retransmit.fold(
            self.next_announce
                .min(self.next_compact)
                .min(self.compact_again.1),
            u64::min,
        )
    }

    fn synced_dbs(&self) -> Vec<String> {
        self.store
            .databases()
            .into_iter()
            .filter(|db| {
                self.store
                    .sync_state(db)
                    .is_some_and(|s| s.mode != SyncMode::Local)
            })
            .collect()
    }

    /// A link to `peer` came up.
    pub fn connected(&mut self, peer: DeviceId, now: u64) {
        let dbs = self.synced_dbs();
        let streams = dbs
            .iter()
            .map(|db| (db.clone(), self.new_stream(peer, db, now)))
            .collect();
        self.links.insert(peer, streams);
        for db in &dbs {
            self.send_vector(peer, db, true);
        }
        self.send_refuted(Some(peer));
    }

    /// Passes refused operations this replica cannot correct to `peer`
    /// (every peer with `None`).
    fn send_refuted(&mut self, peer: Option<DeviceId>) {
        let peers: Vec<DeviceId> = match peer {
            Some(p) => vec![p],
            None => self.links.keys().copied().collect(),
        };
        for (db, ops) in &self.to_refute {
            if ops.is_empty() {
                continue;
            }
            for p in &peers {
                self.outbox.push_back((
                    *p,
                    SyncMessage::Refuted {
                        db: db.clone(),
                        ops: ops.values().cloned().collect(),
                    },
                ));
            }
        }
    }

    /// The link to `peer` went down.
    pub fn disconnected(&mut self, peer: &DeviceId) {
        self.links.remove(peer);
        self.parked.retain(|(p, _), _| p != peer);
    }

    /// Local writes to `db` were committed: push them to peers.
    pub fn local_commit(&mut self, db: &str, now: u64) {
        self.pump_all(db, None, now);
    }

    /// A database was created (or its mode changed): start syncing it with
    /// every peer.
    pub fn database_added(&mut self, db: &str, now: u64) {
        if !self.synced_dbs().iter().any(|d| d == db) {
            return;
        }
        let own = self.access_of(db, &self.me).view().cloned();
        self.own_views.insert(db.to_owned(), own);
        let peers: Vec<DeviceId> = self.links.keys().copied().collect();
        for p in peers {
            let fresh = self.new_stream(p, db, now);
            if let Some(link) = self.links.get_mut(&p) {
                link.entry(db.to_owned()).or_insert(fresh);
            }
            self.send_vector(p, db, true);
            // Operations the old mode held back go out now, not at the
            // next announcement.
            self.pump(p, db, now);
            if let Some((epoch, vector, want, refused)) = self.parked.remove(&(p, db.to_owned())) {
                self.on_vector(
                    p,
                    db.to_owned(),
                    epoch,
                    (vector, want, false),
                    Vec::new(),
                    refused,
                    None,
                    now,
                );
            }
        }
    }

    /// A database was dropped or stopped syncing: forget it on every link.
    pub fn database_removed(&mut self, db: &str) {
        for streams in self.links.values_mut() {
            streams.remove(db);
        }
        self.epochs.retain(|(_, d), _| d != db);
        self.arrivals.forget(db);
        self.reports.remove(db);
        self.heard.remove(db);
        self.gone.remove(db);
        self.unreported.remove(db);
        self.read_floor.remove(db);
        self.stable_from.remove(db);
    }

    /// The mesh's members changed (a device joined or was removed):
    /// compaction now waits for exactly these replicas.
    /// Reports from devices no longer members are forgotten, so a removed
    /// device cannot hold compaction back.
    pub fn set_members(&mut self, members: Vec<DeviceId>) {
        let keep: BTreeSet<DeviceId> = members.iter().copied().collect();
        for hist in self.reports.values_mut() {
            hist.retain(|w, _| keep.range(w.writers()).next().is_some() || w.same_device(&self.me));
        }
        self.config.members = members;
    }

    /// How `db` syncs with `peer`: by this replica's own peer list when it
    /// has one, else by the links of the database's rules, narrowing its
    /// mode either way.
    pub(crate) fn mode_with(&self, db: &str, state: &SyncState, peer: &DeviceId) -> SyncMode {
        let admin = links::link_mode(self.rules.get(db), &self.me, peer, &self.devices);
        state.mode_with(peer, admin)
    }

    /// The mesh's hubs changed.
    pub fn set_hubs(&mut self, hubs: BTreeSet<DeviceId>) {
        self.hubs = hubs;
    }

    /// Devices were removed from the mesh: from now on their operations
    /// beyond `cutoffs` are refused, and peers are told so.
    pub fn set_cutoffs(&mut self, cutoffs: BTreeMap<DeviceId, Cutoff>) {
        if cutoffs == self.config.cutoffs {
            return;
        }
        self.config.cutoffs = cutoffs;
        let peers: Vec<DeviceId> = self.links.keys().copied().collect();
        for db in self.synced_dbs() {
            for p in &peers {
                self.send_vector(*p, &db, false);
            }
        }
    }

    /// Where this replica stops taking `writer`'s operations in `db`, as
    /// far as it knows yet.
    fn refusal_bound(&self, db: &str, writer: &DeviceId) -> Option<u64> {
        let (device, c) = self.cutoff_of(writer)?;
        device
            .incarnation_of(writer)
            .and_then(|n| c.held(db, n))
            .or_else(|| self.refused_after.get(&(db.to_owned(), *writer)).copied())
    }

    /// Whether a state at `vector` holds late operations of a removed
    /// device (past its cut-off) that a replica at `held` neither took nor
    /// refused, and that were not refused here or as `undone` says: a
    /// snapshot of it would bring them where nobody can refuse them.
    fn carries_refused(
        &self,
        db: &str,
        vector: &VersionVector,
        held: &VersionVector,
        undone: &[(DeviceId, u64)],
    ) -> bool {
        self.config.cutoffs.keys().any(|d| {
            vector.writers_of(d).any(|(w, seq)| {
                self.refusal_bound(db, w).is_some_and(|b| {
                    let elsewhere = undone.iter().find(|(u, _)| u == w).map_or(0, |(_, s)| *s);
                    *seq > self.refused_here(db, w, b.max(held.get(w))).max(elsewhere)
                })
            })
        })
    }

    /// Per write incarnation of a removed device held at `vector`, up to
    /// which seq its late operations were all refused here: what a
    /// snapshot of this replica says is `undone`.
    fn undone(&self, db: &str, vector: &VersionVector) -> Vec<(DeviceId, u64)> {
        self.config
            .cutoffs
            .keys()
            .flat_map(|d| vector.writers_of(d))
            .filter_map(|(w, _)| {
                let b = self.refusal_bound(db, w)?;
                let upto = self.refused_here(db, w, b);
                (upto > b).then_some((*w, upto))
            })
            .collect()
    }

    /// Up to which seq every operation of `writer` in `db` after `from` was
    /// refused here (refused ones are being corrected, here or by the
    /// replica they were passed on to, and the corrections win over them).
    fn refused_here(&self, db: &str, writer: &DeviceId, from: u64) -> u64 {
        let key = (db.to_owned(), *writer);
        let mut upto = from;
        if self.refused_after.get(&key).is_some_and(|a| *a <= upto) {
            upto = upto.max(self.refused_upto.get(&key).copied().unwrap_or(0));
        }
        if let Some(done) = self.corrected.get(&key) {
            for seq in done.range(upto + 1..) {
                if *seq != upto + 1 {
                    break;
                }
                upto = *seq;
            }
        }
        upto
    }

    /// The removed device `writer` belongs to, with its cut-off.
    fn cutoff_of(&self, writer: &DeviceId) -> Option<(&DeviceId, &Cutoff)> {
        self.config
            .cutoffs
            .range(writer.writers())
            .find(|(d, _)| d.same_device(writer))
    }

    /// A message from `peer` arrived.
    pub fn handle(&mut self, peer: DeviceId, msg: SyncMessage, now: u64) {
        self.now = self.now.max(now);
        if !self.links.contains_key(&peer) {
            return;
        }
        match msg {
            SyncMessage::Vector {
                db,
                epoch,
                vector,
                want,
                reports,
                refused,
                stable,
                wish,
                lacking,
                sealed,
                blind,
                sends,
                settings,
                incarnation,
            } => {
                let have = self.store.sync_state(&db);
                if have.is_some() {
                    // The sender's write incarnation is running: it counts
                    // as heard from, whether or not its report changed.
                    self.heard
                        .entry(db.clone())
                        .or_default()
                        .insert(peer.writer(incarnation), now);
                }
                if have.is_none() && (want || sends) {
                    self.events.push_back(Event::UnknownDatabase {
                        db: db.clone(),
                        peer,
                        sealed,
                        settings,
                    });
                }
                if let Some(have) = have
                    && have.sealed != sealed
                {
                    self.events
                        .push_back(Event::EncryptionDiffers { db, peer, sealed });
                    return;
                }
                if let Some(st) = stable
                    && self.store.sync_state(&db).is_some()
                {
                    self.stable_from
                        .entry(db.clone())
                        .or_default()
                        .insert(peer, st);
                }
                if lacking {
                    self.owe_whole(peer, &db);
                }
                self.on_vector(
                    peer,
                    db,
                    epoch,
                    (vector, want, blind),
                    reports,
                    refused,
                    wish,
                    now,
                )
            }
            SyncMessage::Ops { db, epoch, ops } => {
                self.on_ops(peer, db, epoch, ops, Vec::new(), now)
            }
            // Only a peer in the same process (a simulation) hands these
            // over unencoded; the wire brings them as `Ops`. They are built
            // from ops or log entries already read, so they always build.
            SyncMessage::Packed { db, epoch, ops } => {
                if let Ok(ops) = ops.to_ops() {
                    self.on_ops(peer, db, epoch, ops, Vec::new(), now);
                }
            }
            SyncMessage::Chunks { db, epoch, chunks } => {
                self.on_chunks(peer, db, epoch, chunks, now);
            }
            piece @ SyncMessage::Snapshot { .. } => self.on_snapshot(peer, piece, now),
            part @ SyncMessage::Checkpoint { .. } => self.on_checkpoint(peer, part, now),
            SyncMessage::Projected {
                db,
                epoch,
                at,
                covers,
                records,
                evict,
                rejected,
            } => {
                let projection = super::store::Projection {
                    records,
                    evict: evict.into_iter().map(|k| k.into_vec()).collect(),
                    covers,
                    rejected,
                    own_held: at.get(&self.store.writer()),
                    view: None,
                    own_from: 0,
                };
                self.on_projected(peer, db, epoch, &at, projection, now)
            }
            SyncMessage::SnapshotAck { db, id, part } => {
                self.on_snapshot_ack(peer, db, id, part, now)
            }
            SyncMessage::Refuted { db, ops } => {
                let ops: Vec<Op> = ops
                    .into_iter()
                    .filter(|o| {
                        o.origin != self.me
                            && self
                                .config
                                .cutoffs
                                .get(&o.origin)
                                .is_some_and(|c| !c.allows(&db, o))
                    })
                    .collect();
                if !ops.is_empty() && self.store.sync_state(&db).is_some() {
                    self.refuse(peer, &db, ops, now);
                }
            }
        }
    }

    /// Time passed: send again what was not acknowledged, announce vectors
    /// and compact when due.
    pub fn handle_timeout(&mut self, now: u64) {
        self.now = self.now.max(now);
        let mut rewind = Vec::new();
        for (peer, streams) in &mut self.links {
            for (db, s) in streams.iter_mut() {
                if s.in_flight() && now >= s.progress_at + s.rto {
                    if let Some(a) = &s.acked {
                        s.sent = a.clone();
                    }
                    s.cursor = 0;
                    if let Some(snap) = s.out_snapshot.take() {
                        // Start over: pieces after a lost one were ignored.
                        if !snap.partial && !s.refilter {
                            s.force_snapshot =
                                !s.acked.as_ref().is_some_and(|a| a.dominates(&snap.vector));
                        }
                    }
                    s.progress_at = now;
                    s.rto = (s.rto * 2).min(self.config.max_retransmit_ms);
                    rewind.push((*peer, db.clone()));
                }
            }
        }
        for (peer, db) in rewind {
            self.pump(peer, &db, now);
        }
        if now >= self.next_announce {
            self.next_announce = now + self.config.announce_ms;
            self.send_refuted(None);
            let peers: Vec<DeviceId> = self.links.keys().copied().collect();
            for db in self.synced_dbs() {
                self.note_own_report(&db);
                let summary = self
                    .config
                    .summarize
                    .then(|| self.own_stable(&db))
                    .flatten();
                for p in &peers {
                    self.send_vector_with(*p, &db, true, summary.as_ref());
                }
            }
        }
        let due = if now >= self.next_compact {
            self.next_compact = now + self.config.compact_ms;
            self.synced_dbs()
        } else if now >= self.compact_again.1 {
            let (again, _) =
                std::mem::replace(&mut self.compact_again, (BTreeSet::new(), u64::MAX));
            // Those still synced: one may have been dropped since.
            let mut synced = self.synced_dbs();
            synced.retain(|db| again.contains(db));
            synced
        } else {
            Vec::new()
        };
        if !due.is_empty() {
            // Only those that stopped short go again soon: a hub's other
            // databases wait their minute.
            let again: BTreeSet<String> = due.into_iter().filter(|db| self.compact(db)).collect();
            let at = if again.is_empty() {
                u64::MAX
            } else {
                now + self.config.compact_again_ms
            };
            self.compact_again = (again, at);
        }
    }

    fn epoch_matches(&self, peer: DeviceId, db: &str, epoch: Epoch) -> bool {
        self.epochs.get(&(peer, db.to_owned())) == Some(&epoch)
    }

    fn own_report(&self, db: &str) -> Option<Report> {
        let s = self.store.sync_state(db)?;
        // Reported as this write incarnation: a copy of this device running
        // elsewhere reports as another, and both must count.
        Some(Report {
            device: self.store.writer(),
            epoch: s.epoch,
            vector: s.vector,
            clock: s.clock,
        })
    }

    /// Sends this replica's vector for `db` to `peer`, with the reports
    /// the peer does not have yet if `with_reports`.
    fn send_vector(&mut self, peer: DeviceId, db: &str, with_reports: bool) {
        let summary = (with_reports && self.config.summarize)
            .then(|| self.own_stable(db))
            .flatten();
        self.send_vector_with(peer, db, with_reports, summary.as_ref());
    }

    /// [`Engine::send_vector`] with the summary worked out once for many
    /// peers.
    fn send_vector_with(
        &mut self,
        peer: DeviceId,
        db: &str,
        with_reports: bool,
        summary: Option<&(VersionVector, Hlc)>,
    ) {
        let Some(state) = self.store.sync_state(db) else {
            return;
        };
        if state.mode == SyncMode::Local {
            return;
        }
        let summarize = with_reports && self.config.summarize && !self.hubs.contains(&peer);
        let stable = match (summarize, summary) {
            (true, Some((vector, horizon))) => {
                // Sent again only when it moved.
                let mark = (vector.total(), *horizon);
                match self.links.get_mut(&peer).and_then(|l| l.get_mut(db)) {
                    Some(s) if s.told_stable == Some(mark) => None,
                    Some(s) => {
                        s.told_stable = Some(mark);
                        Some(Stable {
                            vector: vector.clone(),
                            horizon: *horizon,
                        })
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let reports = if with_reports {
            let mut all: Vec<Report> = if summarize {
                Vec::new()
            } else {
                self.reports
                    .get(db)
                    .into_iter()
                    .flat_map(|m| m.iter())
                    .filter(|(w, _)| **w != self.store.writer())
                    .filter_map(|(_, h)| h.back().cloned())
                    .collect()
            };
            all.extend(self.own_report(db));
            // A report the peer already has (it sent it, or got it on this
            // link) is not sent again: with a thousand replicas behind one
            // hub, resending all of them at every announcement would cost
            // a million reports per round.
            match self.links.get_mut(&peer).and_then(|l| l.get_mut(db)) {
                Some(s) => all
                    .into_iter()
                    .filter(|r| {
                        let m = mark(r);
                        let newer = s.reported.get(&r.device).is_none_or(|had| m > *had);
                        if newer {
                            s.reported.insert(r.device, m);
                        }
                        newer
                    })
                    .collect(),
                None => all,
            }
        } else {
            Vec::new()
        };
        if let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(db)) {
            s.told.clone_from(&state.vector);
        }
        let head = (
            state.epoch,
            self.mode_with(db, &state, &peer),
            self.says_lacking(db, &state),
            (state.sealed, state.blind),
        );
        let wish = Some(state.wish.unwrap_or_default());
        let announced = (state.vector, reports, stable, wish, Some(state.settings));
        self.push_vector(peer, db, head, announced);
    }

    /// Queues a `Vector` message for `peer` carrying `vector`, for the
    /// database's epoch, mode and whether its state is whole in `head`;
    /// an announcement also carries reports, the summary, the wish and the
    /// settings.
    fn push_vector(
        &mut self,
        peer: DeviceId,
        db: &str,
        (epoch, mode, lacking, (sealed, blind)): (Epoch, SyncMode, bool, (bool, bool)),
        (vector, reports, stable, wish, settings): Announced,
    ) {
        let refused = self.refused_of(db);
        self.outbox.push_back((
            peer,
            SyncMessage::Vector {
                db: db.to_owned(),
                epoch,
                vector,
                want: takes(mode),
                sends: sends(mode),
                settings,
                reports,
                refused,
                stable,
                wish,
                lacking,
                sealed,
                blind,
                incarnation: self.me.incarnation_of(&self.store.writer()).unwrap_or(0),
            },
        ));
    }

    /// Acknowledges operations from `peer` with what this replica's vector
    /// gained since it last told the peer. Vectors are merged by taking
    /// maxima and a link delivers in order, so the peer ends with the same
    /// view as from the whole vector, and an acknowledgement stays small
    /// however many devices write.
    fn send_ack(&mut self, peer: DeviceId, db: &str) {
        let Some(state) = self.store.sync_state(db) else {
            return;
        };
        let lacking = self.says_lacking(db, &state);
        let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(db)) else {
            return;
        };
        let mut vector = VersionVector::new();
        for (o, seq) in state.vector.iter() {
            if s.told.get(o) < *seq {
                vector.set(*o, *seq);
                s.told.set(*o, *seq);
            }
        }
        self.push_vector(
            peer,
            db,
            (
                state.epoch,
                self.mode_with(db, &state, &peer),
                lacking,
                (state.sealed, state.blind),
            ),
            (vector, Vec::new(), None, None, None),
        );
    }

    /// The removed devices whose operations in `db` are refused here, and
    /// up to which seq.
    fn refused_of(&self, db: &str) -> Vec<(DeviceId, u64)> {
        self.refused_upto
            .iter()
            .filter(|((d, o), _)| d == db && self.config.cutoffs.contains_key(o))
            .map(|((_, o), seq)| (*o, *seq))
            .collect()
    }

    fn note_own_report(&mut self, db: &str) {
        if let Some(r) = self.own_report(db) {
            self.note_report(db, r);
        }
    }

    fn note_report(&mut self, db: &str, r: Report) {
        if let Some(gone) = self.gone.get_mut(db)
            && let Some(last) = gone.get(&r.device)
        {
            if mark(&r) <= *last {
                return;
            }
            gone.remove(&r.device);
        }
        let hist = self
            .reports
            .entry(db.to_owned())
            .or_default()
            .entry(r.device)
            .or_default();
        if let Some(last) = hist.back() {
            if last.epoch > r.epoch {
                return;
            }
            if last.epoch < r.epoch {
                hist.clear();
            } else if (r.vector.total(), r.clock) <= (last.vector.total(), last.clock) {
                return;
            }
        }
        self.heard
            .entry(db.to_owned())
            .or_default()
            .insert(r.device, self.now);
        hist.push_back(r);
        if hist.len() > REPORT_HISTORY {
            hist.pop_front();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_vector(
        &mut self,
        peer: DeviceId,
        db: String,
        epoch: Epoch,
        (vector, want, blind): (VersionVector, bool, bool),
        reports: Vec<Report>,
        refused: Vec<(DeviceId, u64)>,
        wish: Option<SyncWish>,
        now: u64,
    ) {
        if let Some(w) = wish {
            self.note_wish(peer, &db, w, now);
        }
        let state = self.store.sync_state(&db);
        let mine = state.as_ref().map(|s| s.vector.clone()).unwrap_or_default();
        if state.as_ref().is_none_or(|s| s.mode == SyncMode::Local) {
            // Remember the epoch all the same: if the database is added
            // later, the peer's operations must not wait for its next
            // announcement to be accepted.
            let key = (peer, db.clone());
            if self.epochs.get(&key).is_none_or(|e| *e <= epoch) {
                self.epochs.insert(key.clone(), epoch);
                self.parked.insert(key, (epoch, vector, want, refused));
            }
            return;
        }
        let rto = self.config.retransmit_ms;
        let fresh = self.new_stream(peer, &db, now);
        let key = (peer, db.clone());
        let changed = match self.epochs.get(&key) {
            Some(e) if *e > epoch => return, // a stale message from before a reset
            Some(e) => *e != epoch,
            None => false,
        };
        self.epochs.insert(key, epoch);
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let s = link.entry(db.clone()).or_insert(fresh);
        if changed {
            // Nothing remembered about the peer holds any more: exchange
            // everything again, state first.
            *s = Stream::new(now, rto, s.view.clone());
            s.force_snapshot = true;
            if let Some(m) = self.reports.get_mut(&db) {
                m.retain(|w, _| !w.same_device(&peer));
            }
            self.events.push_back(Event::EpochChanged {
                db: db.clone(),
                peer,
            });
        }
        s.peer_wants = want;
        s.peer_blind = blind;
        let advanced = s.acked.as_ref().is_none_or(|a| !a.dominates(&vector));
        let acked = s.acked.get_or_insert_with(VersionVector::new);
        acked.merge(&vector);
        s.sent.merge(&vector);
        // Operations of a removed device the peer has seen and refused
        // need not be offered again: count them as delivered.
        for (d, upto) in refused {
            let upto = upto.min(mine.get(&d));
            if acked.get(&d) < upto {
                acked.set(d, upto);
                s.sent.set(d, s.sent.get(&d).max(upto));
            }
        }
        if advanced {
            s.progress_at = now;
            s.rto = rto;
        }
        for r in &reports {
            let m = mark(r);
            let had = s.reported.entry(r.device).or_insert(m);
            *had = m.max(*had);
        }
        if let Some(snap) = &s.out_snapshot
            && s.acked.as_ref().is_some_and(|a| a.dominates(&snap.vector))
            && snap.all_sent
            && !s.refilter
        {
            s.out_snapshot = None;
            s.cursor = 0;
        }
        for r in reports {
            if r.device != self.store.writer() {
                self.note_report(&db, r);
            }
        }
        self.pump(peer, &db, now);
    }

    /// Chunks of `peer`'s op log arrived (`SyncMessage::Chunks`): their
    /// ops are applied as if they came as `Ops`, and the store is told
    /// which runs of them came as whole chunks.
    fn on_chunks(
        &mut self,
        peer: DeviceId,
        db: String,
        epoch: Epoch,
        chunks: Vec<LogChunk>,
        now: u64,
    ) {
        let mut ops = Vec::new();
        let mut whole = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            // The wire brings chunks read as they were decoded; a peer in
            // the same process hands over what it read from its own log.
            let Ok((stored, read)) = chunk.into_parts() else {
                return;
            };
            let start = ops.len();
            ops.extend(read);
            whole.push(WholeChunk {
                ops: start..ops.len(),
                stored,
            });
        }
        self.on_ops(peer, db, epoch, ops, whole, now);
    }

    /// Operations arrived from `peer`; `whole` says which runs of them came
    /// as whole chunks of its log.
    fn on_ops(
        &mut self,
        peer: DeviceId,
        db: String,
        epoch: Epoch,
        ops: Vec<Op>,
        whole: Vec<WholeChunk>,
        now: u64,
    ) {
        let Some(state) = self.store.sync_state(&db) else {
            return;
        };
        if !takes(self.mode_with(&db, &state, &peer)) || !self.epoch_matches(peer, &db, epoch) {
            return;
        }
        // A partial replica takes projections only; from a partial
        // replica, only its own writes are taken (it passes nothing on).
        if self.own_view(&db).is_some() {
            return;
        }
        let from_partial = self
            .links
            .get(&peer)
            .and_then(|l| l.get(&db))
            .is_some_and(|s| s.view.is_some());
        // Read and moved op by op, a look-up a writer (see `RunVector`).
        let mut expect = RunVector::new(state.vector);
        let mut blocked: BTreeSet<DeviceId> = BTreeSet::new();
        let mut accepted = Vec::new();
        let mut refused: Vec<Op> = Vec::new();
        let mut peer_holds = RunVector::new(VersionVector::new());
        let mut peer_writer = None;
        // Where each accepted op was among those that came.
        let mut came_at = Vec::new();
        for (at, op) in ops.into_iter().enumerate() {
            if from_partial && op.origin != peer {
                continue;
            }
            let writer = op.writer();
            if op.seq > peer_holds.get(&writer) {
                peer_holds.set(&writer, op.seq);
            }
            if let Some(c) = self.config.cutoffs.get(&op.origin)
                && op.origin != self.me
            {
                // A removed device's operations: once one is past the
                // cut-off, so is every later one, and those count as seen.
                let key = (db.clone(), writer);
                let upto = self.refused_upto.get(&key).copied().unwrap_or(0);
                if op.seq != expect.get(&writer).max(upto) + 1 {
                    continue;
                }
                if upto > 0 || !c.allows(&db, &op) {
                    self.refused_after.entry(key.clone()).or_insert(op.seq - 1);
                    self.refused_upto.insert(key, op.seq);
                    refused.push(op);
                    continue;
                }
            }
            if op.seq != expect.get(&writer) + 1 || blocked.contains(&writer) {
                continue;
            }
            if op.origin != self.me && too_far_ahead(op.hlc, now) {
                self.events.push_back(Event::ClockAhead {
                    db: db.clone(),
                    origin: op.origin,
                    ahead_ms: op.hlc.millis().saturating_sub(now),
                });
                blocked.insert(writer);
                continue;
            }
            expect.set(&writer, op.seq);
            if op.origin == peer && peer_writer != Some(writer) {
                self.peer_writers.insert(peer, writer);
                peer_writer = Some(writer);
            }
            accepted.push(op);
            if !whole.is_empty() {
                came_at.push(at);
            }
        }
        let whole = whole_accepted(whole, &came_at);
        let peer_holds = peer_holds.into_vector();
        // The peer holds what it sent: that counts as its acknowledgement,
        // or the retransmit timer would send its own operations back to it
        // (it acknowledges only batches it receives).
        if let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(&db)) {
            s.sent.merge(&peer_holds);
            if let Some(acked) = s.acked.as_mut()
                && !acked.dominates(&peer_holds)
            {
                acked.merge(&peer_holds);
                s.progress_at = now;
                s.rto = self.config.retransmit_ms;
            }
        }
        let screen = self.write_screen(&db, &accepted);
        let n = accepted.len();
        let mut rejected = Vec::new();
        if n > 0 {
            let applied = if whole.is_empty() {
                self.store.apply_ops(&db, accepted, &screen)
            } else {
                self.store.apply_chunks(&db, accepted, &screen, whole)
            };
            match applied {
                Ok(applied) => {
                    if applied.refused.is_empty()
                        && let Some(logged) = applied.logged
                    {
                        self.passed_over(peer, &db, logged);
                    }
                    rejected = applied.refused;
                    for u in applied.unopened {
                        self.events.push_back(Event::Unopened {
                            db: db.clone(),
                            peer,
                            unopened: u,
                        });
                    }
                }
                Err(e) => {
                    // Not acknowledged, so the peer sends them again.
                    self.store_failed(db, &e);
                    return;
                }
            }
            self.events.push_back(Event::Applied {
                db: db.clone(),
                from: peer,
                ops: n,
            });
        }
        if !refused.is_empty() {
            self.refuse(peer, &db, refused, now);
        }
        if !rejected.is_empty() {
            self.correct_rejected(&db, rejected, now);
        }
        self.send_ack(peer, &db);
        if n > 0 {
            self.pump_all(&db, Some(peer), now);
            // A partial replica may be owed records its writes touched.
            let owed = self
                .links
                .get(&peer)
                .and_then(|l| l.get(&db))
                .is_some_and(|s| s.owed_back.is_some());
            if owed {
                self.pump(peer, &db, now);
            }
        }
    }

    /// A piece of a snapshot (`SyncMessage::Snapshot`) arrived.
    fn on_snapshot(&mut self, peer: DeviceId, piece: SyncMessage, now: u64) {
        let SyncMessage::Snapshot {
            db,
            epoch,
            id,
            part,
            vector,
            records,
            last,
            span,
            cut,
            undone,
        } = piece
        else {
            return;
        };
        if !self.epoch_matches(peer, &db, epoch) {
            return;
        }
        let Some(state) = self.store.sync_state(&db) else {
            return;
        };
        if !takes(self.mode_with(&db, &state, &peer)) {
            return;
        }
        // A sender that has not heard of a removal yet may have read its
        // snapshot where the removed device's late operations were taken.
        // Merged, those refused neither here nor there could never be; the
        // sender passes them on as operations once it has heard.
        if self.carries_refused(&db, &vector, &state.vector, &undone) {
            if let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(&db)) {
                s.in_snapshot = None;
            }
            return;
        }
        // A partial replica takes only snapshots cut for it, replacing
        // what it holds; a full one never takes those.
        let partial = self.own_view(&db).is_some();
        if partial != cut || (cut && span.is_none()) {
            return;
        }
        if partial || state.lacking || state.restored {
            // A replica that holds a cut state takes a snapshot only from
            // a state holding all it counts as held, and all its records
            // may hold (a projection's records may be ahead of its vector),
            // checked at every piece (what it took from elsewhere
            // meanwhile may be newer), and one snapshot at a time: pieces
            // of two would replace each other's records with older ones. A
            // new one wins; the sender of the other starts again later.
            let held = if partial {
                self.held_with_floor(&db, &state.vector)
            } else {
                state.vector.clone()
            };
            if !self.covers_all(&vector, &held) {
                if let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(&db)) {
                    s.in_snapshot = None;
                }
                return;
            }
            if part == 0 {
                for (p, l) in self.links.iter_mut() {
                    if let Some(s) = l.get_mut(&db).filter(|_| *p != peer) {
                        s.in_snapshot = None;
                    }
                }
            }
        }
        let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(&db)) else {
            return;
        };
        if part == 0 {
            s.in_snapshot = Some((id, 0));
        }
        if s.in_snapshot != Some((id, part)) {
            // A piece is missing: wait for the sender to start over.
            s.in_snapshot = None;
            return;
        }
        s.in_snapshot = (!last).then_some((id, part + 1));
        let complete = last.then_some(&vector);
        // Only a replica holding a cut state needs what it holds replaced;
        // a whole one merges the pieces like any snapshot, so that a piece
        // read before writes it took meanwhile cannot drop their records.
        let replaces = partial || state.lacking || state.restored;
        let replace = span
            .as_ref()
            .filter(|_| replaces)
            .map(|span| super::store::Replace {
                span,
                own_held: vector.get(&self.store.writer()),
                cut,
            });
        if cut {
            self.read_floor
                .entry(db.clone())
                .or_default()
                .merge(&vector);
        }
        if let Err(e) = self.store.merge_snapshot(&db, records, complete, replace) {
            if let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(&db)) {
                s.in_snapshot = None;
            }
            self.store_failed(db, &e);
            return;
        }
        self.outbox.push_back((
            peer,
            SyncMessage::SnapshotAck {
                db: db.clone(),
                id,
                part,
            },
        ));
        if last {
            if cut {
                self.recut.remove(&db);
            }
            self.events.push_back(Event::SnapshotMerged {
                db: db.clone(),
                from: peer,
            });
            self.send_vector(peer, &db, false);
            self.pump_all(&db, Some(peer), now);
        }
    }

    fn on_snapshot_ack(&mut self, peer: DeviceId, db: String, id: u64, part: u32, now: u64) {
        let peer_writer = self.peer_writers.get(&peer).copied().unwrap_or(peer);
        let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(&db)) else {
            return;
        };
        let Some(snap) = s.out_snapshot.as_mut() else {
            return;
        };
        if snap.id != id || snap.acked_part.is_some_and(|p| p >= part) {
            return;
        }
        snap.acked_part = Some(part);
        if snap.all_sent && part + 1 == snap.next_part {
            // The peer holds the whole snapshot: what it holds is replaced.
            s.refilter = false;
            if snap.partial {
                // Records outside the pieces were dropped unless they held
                // later writes of the peer's own.
                let owed = partial::OwedBack::new(snap.vector.get(&peer_writer), &snap.vector);
                s.owed_back = Some(match s.owed_back.take() {
                    Some(o) => o.join(owed),
                    None => owed,
                });
            }
            if snap.partial || s.acked.as_ref().is_some_and(|a| a.dominates(&snap.vector)) {
                s.out_snapshot = None;
                s.cursor = 0;
            }
        }
        s.progress_at = now;
        s.rto = self.config.retransmit_ms;
        self.pump(peer, &db, now);
    }

    /// `peer` offered (or passed on) operations of a removed device beyond
    /// its cut-off, so it or a replica before it applied them. If this
    /// replica took none of the device's late operations, it writes the
    /// records they touched again as it holds them, stamped after them:
    /// the correction spreads like any write and wins over them on every
    /// replica that took them. Otherwise it cannot tell good values from
    /// late ones, and passes the operations on to its other peers.
    fn refuse(&mut self, peer: DeviceId, db: &str, ops: Vec<Op>, now: u64) {
        // Seqs count per writer, so refusals are kept per writer.
        let mut by_writer: BTreeMap<DeviceId, Vec<Op>> = BTreeMap::new();
        for op in ops {
            by_writer.entry(op.writer()).or_default().push(op);
        }
        let Some(state) = self.store.sync_state(db) else {
            return;
        };
        for (writer, ops) in by_writer {
            let origin = ops[0].origin;
            let key = (db.to_owned(), writer);
            let done = self.corrected.get(&key);
            let fresh: Vec<Op> = ops
                .into_iter()
                .filter(|o| !done.is_some_and(|d| d.contains(&o.seq)))
                .collect();
            if fresh.is_empty() {
                continue;
            }
            let seqs: Vec<u64> = fresh.iter().map(|o| o.seq).collect();
            self.events.push_back(Event::Refused {
                db: db.to_owned(),
                origin,
                peer,
                ops: fresh.len(),
            });
            let clean = self
                .refusal_bound(db, &writer)
                .is_some_and(|b| state.vector.get(&writer) <= b);
            if !clean {
                let pending = self.to_refute.entry(db.to_owned()).or_default();
                for op in &fresh {
                    pending.insert((writer, op.seq), op.clone());
                }
                let others: Vec<DeviceId> =
                    self.links.keys().copied().filter(|p| *p != peer).collect();
                for p in others {
                    self.outbox.push_back((
                        p,
                        SyncMessage::Refuted {
                            db: db.to_owned(),
                            ops: fresh.clone(),
                        },
                    ));
                }
                self.corrected.entry(key).or_default().extend(seqs);
                continue;
            }
            if !sends(state.mode) {
                continue;
            }
            let (corrections, after) = corrections_for(&fresh);
            match self.store.correct(db, corrections, after, now) {
                Ok(ops) => {
                    self.corrected.entry(key).or_default().extend(seqs);
                    self.events.push_back(Event::Corrected {
                        db: db.to_owned(),
                        ops,
                    });
                    self.local_commit(db, now);
                }
                Err(e) => self.store_failed(db, &e),
            }
        }
    }

    /// A stream for a link to `peer` coming up, with what the peer may
    /// see.
    fn new_stream(&self, peer: DeviceId, db: &str, now: u64) -> Stream {
        let view = self.access_of(db, &peer).view().cloned();
        let mut s = Stream::new(now, self.config.retransmit_ms, view);
        // A partial replica may hold what it may no longer see.
        s.refilter = s.view.is_some();
        s
    }

    /// Sends `peer` what it lacks of `db`, as far as the window allows.
    fn pump(&mut self, peer: DeviceId, db: &str, now: u64) {
        if let Some(state) = self.store.sync_state(db) {
            self.pump_with(peer, db, &state, now);
        }
    }

    /// Pumps `db` to every peer but `except`, reading the store's state
    /// once for all of them.
    fn pump_all(&mut self, db: &str, except: Option<DeviceId>, now: u64) {
        let Some(state) = self.store.sync_state(db) else {
            return;
        };
        self.arrivals.note(db, &state.vector, now);
        let peers: Vec<DeviceId> = self
            .links
            .keys()
            .copied()
            .filter(|p| Some(*p) != except)
            .collect();
        for p in peers {
            self.pump_with(p, db, &state, now);
        }
    }

    fn pump_with(&mut self, peer: DeviceId, db: &str, state: &SyncState, now: u64) {
        if !sends(self.mode_with(db, state, &peer)) {
            return;
        }
        let peer_view = self
            .links
            .get(&peer)
            .and_then(|l| l.get(db))
            .and_then(|s| s.view.clone());
        if self.own_view(db).is_some() {
            // A partial replica passes on nothing but its own writes, and
            // only to full replicas.
            if peer_view.is_none() {
                self.pump_own(peer, db, state, now);
            }
            return;
        }
        if let Some(view) = peer_view {
            // Records cut to another view cannot be cut to this one.
            if !state.lacking && !state.restored {
                self.pump_partial(peer, db, state, &view, now);
            }
            return;
        }
        // A sealed database's records go in the clear only between
        // replicas holding its key; a blind one on either side gets or
        // gives sealed checkpoints instead.
        if state.sealed
            && (state.blind
                || self
                    .links
                    .get(&peer)
                    .and_then(|l| l.get(db))
                    .is_some_and(|s| s.peer_blind))
        {
            self.pump_sealed(peer, db, state, now);
            return;
        }
        let Some(acked) = self
            .links
            .get(&peer)
            .and_then(|l| l.get(db))
            .and_then(|s| s.acked.clone())
        else {
            return;
        };
        // A replica holding a removed device's late operations that the
        // peer lacks and nobody refused sends them as operations, which
        // the peer can refuse, never folded into a snapshot it could not
        // tell them apart in: not even when its log no longer reaches
        // back to what the peer holds.
        let tainted = self.carries_refused(db, &state.vector, &acked, &[]);
        let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(db)) else {
            return;
        };
        if !s.peer_wants {
            return;
        }
        // A replica whose records were cut to a view has no whole state
        // to give: it passes on operations only.
        if s.out_snapshot.is_none() && !state.lacking && !state.restored && !tainted {
            let below_floor = below_floor(state, &acked);
            let far_behind = state.vector.ahead_of(&acked) > self.config.snapshot_after;
            // A peer owed a whole state gets it from a state that holds
            // everything it counts as held.
            let owed = s.refilter && holds_all(state, &acked, &peer);
            if s.force_snapshot || owed || below_floor || far_behind {
                let snap =
                    OutSnapshot::new(self.next_snapshot_id, state.vector.clone(), false, owed);
                s.start_snapshot(snap, now);
                self.next_snapshot_id += 1;
            }
        }
        if s.out_snapshot.is_some() {
            self.send_snapshot_pieces(peer, db, state, None);
            // Operations wait until the snapshot is in.
            return;
        }
        self.send_window(peer, db, state.epoch, now);
    }

    /// Sends `peer` the operations of the log it lacks, as its window
    /// allows, as the log holds them.
    fn send_window(&mut self, peer: DeviceId, db: &str, epoch: Epoch, now: u64) {
        while let Some(read) = self.read_window_packed(peer, db) {
            let msg = if read.chunks.is_empty() {
                self.count_sent(peer, db, read.ops.ids().iter().copied(), now);
                SyncMessage::Packed {
                    db: db.to_owned(),
                    epoch,
                    ops: read.ops,
                }
            } else {
                let ids = read.chunks.iter().flat_map(|c| c.ids().iter().copied());
                self.count_sent(peer, db, ids, now);
                SyncMessage::Chunks {
                    db: db.to_owned(),
                    epoch,
                    chunks: read.chunks,
                }
            };
            self.outbox.push_back((peer, msg));
        }
    }

    /// Sends `ops` to `peer` and counts them as sent.
    fn send_ops(&mut self, peer: DeviceId, db: &str, epoch: Epoch, ops: Vec<Op>, now: u64) {
        self.mark_sent(peer, db, &ops, now);
        self.outbox.push_back((
            peer,
            SyncMessage::Ops {
                db: db.to_owned(),
                epoch,
                ops,
            },
        ));
    }

    /// The next batch of operations from the log that `peer` lacks, if
    /// its window has room: `None` once it is full, the log has no more,
    /// or the read failed.
    fn read_window(&mut self, peer: DeviceId, db: &str) -> Option<Vec<Op>> {
        self.window_read(peer, db, |store, sent, cursor, limits| {
            store
                .read_ops(db, sent, cursor, limits)
                .map(|r| (r.ops, r.next))
        })
        .filter(|ops| !ops.is_empty())
    }

    /// [`Engine::read_window`], the operations packed for the wire.
    fn read_window_packed(&mut self, peer: DeviceId, db: &str) -> Option<PackedRead> {
        self.window_read(peer, db, |store, sent, cursor, limits| {
            store.read_ops_packed(db, sent, cursor, limits).map(|r| {
                let next = r.next;
                (r, next)
            })
        })
        .filter(|r| !r.ops.is_empty() || !r.chunks.is_empty())
    }

    /// Reads for `peer` with `read` (given what it was sent, where its
    /// reader stands and the read size) if its window has room, and moves
    /// its reader on; `None` when the window is full or the read failed.
    fn window_read<T>(
        &mut self,
        peer: DeviceId,
        db: &str,
        read: impl FnOnce(&S, &VersionVector, u64, ReadLimits) -> Result<(T, u64), S::Error>,
    ) -> Option<T> {
        let s = self.links.get_mut(&peer)?.get_mut(db)?;
        if s.sent.ahead_of(s.acked.as_ref()?) >= self.config.window_ops {
            return None;
        }
        let (items, next) = match read(&self.store, &s.sent, s.cursor, self.config.batch) {
            Ok(r) => r,
            Err(e) => {
                self.store_failed(db, &e);
                return None;
            }
        };
        s.cursor = next;
        Some(items)
    }

    /// `peer` sent the ops logged at `logged`, so it holds them: if its
    /// reader had read the whole log before them, it moves past them
    /// without reading them back. Otherwise entries it has yet to read
    /// come first, and the reader passes over these when it gets there.
    fn passed_over(&mut self, peer: DeviceId, db: &str, logged: std::ops::RangeInclusive<u64>) {
        if let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(db))
            && s.cursor + 1 == *logged.start()
        {
            s.cursor = *logged.end();
        }
    }

    /// Counts `ops` as sent to `peer`; the retransmit clock starts now if
    /// nothing was in flight.
    fn mark_sent(&mut self, peer: DeviceId, db: &str, ops: &[Op], now: u64) {
        self.count_sent(peer, db, ops.iter().map(|op| (op.writer(), op.seq)), now);
    }

    /// [`Engine::mark_sent`] of ops given by writer and seq.
    fn count_sent(
        &mut self,
        peer: DeviceId,
        db: &str,
        ids: impl Iterator<Item = (DeviceId, u64)>,
        now: u64,
    ) {
        let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(db)) else {
            return;
        };
        if !s.in_flight() {
            s.progress_at = now;
        }
        for (writer, seq) in ids {
            s.sent.set(writer, seq);
        }
    }

    /// Sends the pieces of the snapshot under way to `peer` that the
    /// window allows, cut to `view` for a partial replica. Pieces that
    /// replace what the peer holds say which key range each stands for.
    fn send_snapshot_pieces(
        &mut self,
        peer: DeviceId,
        db: &str,
        state: &SyncState,
        view: Option<&View>,
    ) {
        let undone = self.undone(db, &state.vector);
        let Some(snap) = self
            .links
            .get_mut(&peer)
            .and_then(|l| l.get_mut(db))
            .and_then(|s| s.out_snapshot.as_mut())
        else {
            return;
        };
        while !snap.all_sent
            && snap.next_part - snap.acked_part.map_or(0, |p| p + 1) < self.config.window_pieces
        {
            let read = match self.store.read_snapshot(
                db,
                snap.after.as_deref(),
                self.config.snapshot_piece,
            ) {
                Ok(r) => r,
                Err(e) => {
                    self.store_failed(db, &e);
                    return;
                }
            };
            let from = snap.after.take();
            snap.after = read.records.last().map(|r| r.key.clone()).or(from.clone());
            snap.all_sent = read.done;
            let span = snap
                .replace
                .then(|| piece_span(from, &snap.after, read.done));
            let records = match view {
                None => read.records,
                Some(v) => read
                    .records
                    .into_iter()
                    .filter_map(|r| partial::project(v, r.key, &r.state))
                    .collect(),
            };
            self.outbox.push_back((
                peer,
                SyncMessage::Snapshot {
                    db: db.to_owned(),
                    epoch: state.epoch,
                    id: snap.id,
                    part: snap.next_part,
                    vector: snap.vector.clone(),
                    records,
                    last: read.done,
                    span,
                    cut: view.is_some(),
                    undone: undone.clone(),
                },
            ));
            snap.next_part += 1;
        }
    }

    /// Removes what every replica holds from the log, and tombstones no
    /// operation in flight can still need; `true` when the store stopped
    /// short of all it could do.
    fn compact(&mut self, db: &str) -> bool {
        if self.config.members.is_empty() {
            return false;
        }
        self.forget_retired(db);
        let Some((stable, horizon)) = self.own_stable(db).or_else(|| self.peer_stable(db)) else {
            return false;
        };
        match self.store.compact(db, &stable, horizon) {
            Ok(c) => {
                if c.ops > 0 || c.tombstones > 0 {
                    self.events.push_back(Event::Compacted {
                        db: db.to_owned(),
                        ops: c.ops,
                        tombstones: c.tombstones,
                    });
                }
                c.more
            }
            Err(e) => {
                self.store_failed(db, &e);
                false
            }
        }
    }

    /// Drops the reports of write incarnations that are gone, so that a
    /// device restarting after many crashes leaves one entry, not many,
    /// and notes since when members' writers that never reported here are
    /// known.
    fn forget_retired(&mut self, db: &str) {
        let Some(mine) = self.own_report(db) else {
            return;
        };
        let latest = self.latest_reports(db, &mine);
        let silent = self.silent_writers(db, &latest);
        let gone: BTreeMap<DeviceId, ReportMark> =
            retired(&latest, &silent, self.config.retire_after_ms)
                .into_iter()
                .filter_map(|w| Some((w, mark(latest.get(&w)?.0))))
                .collect();
        let reported: BTreeSet<DeviceId> = latest.keys().copied().collect();
        if let Some(hist) = self.reports.get_mut(db) {
            hist.retain(|w, _| !gone.contains_key(w));
        }
        if let Some(heard) = self.heard.get_mut(db) {
            heard.retain(|w, _| !gone.contains_key(w));
        }
        self.gone.entry(db.to_owned()).or_default().extend(gone);
        let unreported = self.unreported.entry(db.to_owned()).or_default();
        unreported.retain(|w, _| !reported.contains(w));
        unreported.extend(silent);
    }

    /// The writers of members that wrote operations some report (this
    /// replica's own included) shows but that never reported here, with
    /// since when this replica knows of them.
    fn silent_writers(&self, db: &str, latest: &Latest<'_>) -> BTreeMap<DeviceId, u64> {
        let members: BTreeSet<DeviceId> = self.config.members.iter().copied().collect();
        let known = self.unreported.get(db);
        latest
            .values()
            .flat_map(|(r, _)| r.vector.iter())
            .map(|(w, _)| *w)
            .filter(|w| !latest.contains_key(w) && members.range(w.writers()).next().is_some())
            .map(|w| {
                (
                    w,
                    known.and_then(|k| k.get(&w)).copied().unwrap_or(self.now),
                )
            })
            .collect()
    }

    /// The latest report of every write incarnation heard from, with when
    /// it was heard, this replica's own (`mine`, heard now) included.
    fn latest_reports<'a>(&'a self, db: &str, mine: &'a Report) -> Latest<'a> {
        let heard = self.heard.get(db);
        let mut latest: Latest<'a> = self
            .reports
            .get(db)
            .into_iter()
            .flatten()
            .filter_map(|(w, h)| {
                let at = heard.and_then(|h| h.get(w)).copied().unwrap_or(0);
                Some((*w, (h.back()?, at)))
            })
            .collect();
        latest.insert(mine.device, (mine, self.now));
        latest
    }

    /// What every replica holds and the tombstone horizon, from the
    /// reports of every member; `None` while one has not reported.
    ///
    /// A replica is each write incarnation that reported and is not gone
    /// ([`retired`]): two copies of one device's disk running at once are
    /// two replicas, and each must hold an operation before it counts as
    /// held everywhere.
    fn own_stable(&self, db: &str) -> Option<(VersionVector, Hlc)> {
        if self.config.members.is_empty() {
            return None;
        }
        let mine = self.own_report(db)?;
        let hist = self.reports.get(db);
        let mut latest = self.latest_reports(db, &mine);
        let silent = self.silent_writers(db, &latest);
        let gone = retired(&latest, &silent, self.config.retire_after_ms);
        if silent.keys().any(|w| !gone.contains(w)) {
            // A writer that never reported here may be a copy of a device
            // still running: what it holds is not known.
            return None;
        }
        latest.retain(|w, _| !gone.contains(w));
        let reported = |m: &DeviceId| latest.range(m.writers()).next().is_some();
        if !self.config.members.iter().all(reported) {
            return None;
        }
        let mut stable = mine.vector.clone();
        for (r, _) in latest.values() {
            stable = stable.meet(&r.vector);
        }
        // Per replica, the latest clock reading before which all its
        // operations are held everywhere; the earliest of those bounds the
        // tombstones that may go. A replica's operations are those of
        // every write incarnation of its device it reported: after a
        // restore its new writer's deletes must be everywhere before their
        // tombstones go.
        let usable = |w: &DeviceId, reports: &mut dyn Iterator<Item = &Report>| {
            reports
                .filter(|r| r.vector.writers_of(w).all(|(w, seq)| *seq <= stable.get(w)))
                .map(|r| r.clock)
                .max()
                .unwrap_or_default()
        };
        let horizon = latest
            .keys()
            .map(|w| {
                let h = hist.and_then(|h| h.get(w)).into_iter().flatten();
                let own = (*w == mine.device).then_some(&mine);
                usable(w, &mut h.chain(own))
            })
            .min()
            .unwrap_or_default();
        Some((stable, horizon))
    }

    /// What every replica holds as a peer that heard from all of them
    /// (a hub) said last, bounded by what this replica holds.
    fn peer_stable(&self, db: &str) -> Option<(VersionVector, Hlc)> {
        let mine = self.own_report(db)?;
        let best = self
            .stable_from
            .get(db)?
            .values()
            .max_by_key(|s| (s.vector.total(), s.horizon))?;
        Some((best.vector.meet(&mine.vector), best.horizon))
    }

    /// Reports a store failure; what failed is retried later (by the
    /// peer's retransmission, or the next timer).
    fn store_failed(&mut self, db: impl Into<String>, e: &S::Error) {
        self.events.push_back(Event::StoreFailed {
            db: db.into(),
            error: e.to_string(),
        });
    }
}

/// The latest report of each write incarnation, with when it was heard.
type Latest<'a> = BTreeMap<DeviceId, (&'a Report, u64)>;

/// The write incarnations among `latest` and `silent` (writers that
/// never reported, with since when they are known) that are gone: another
/// incarnation of the same device was heard from at least `after_ms`
/// after this one last was (or became known), holding every operation of
/// this one's that any report shows. That is a restart after a crash or a
/// restore, whose old writer never reports again; two copies of one disk
/// both running keep reporting, and both keep counting.
fn retired(
    latest: &Latest<'_>,
    silent: &BTreeMap<DeviceId, u64>,
    after_ms: u64,
) -> BTreeSet<DeviceId> {
    let wrote = |w: &DeviceId| {
        latest
            .values()
            .map(|(r, _)| r.vector.get(w))
            .max()
            .unwrap_or(0)
    };
    let last_heard = latest
        .iter()
        .map(|(w, (_, at))| (w, *at))
        .chain(silent.iter().map(|(w, at)| (w, *at)));
    last_heard
        .filter(|(w, old)| {
            // Most devices have one incarnation: look for what another
            // wrote (a walk over every report) only when there is one.
            let mut newer = latest
                .range(w.writers())
                .filter(|(other, (_, heard))| other != w && *heard >= old.saturating_add(after_ms))
                .peekable();
            if newer.peek().is_none() {
                return false;
            }
            let wrote = wrote(w);
            newer.any(|(_, (r, _))| r.vector.get(w) >= wrote)
        })
        .map(|(w, _)| *w)
        .collect()
}

/// The chunks of `whole` every op of which was accepted, their runs moved
/// to where those ops are among the accepted; `came_at` says where each
/// accepted op was among those that came, in order.
fn whole_accepted(whole: Vec<WholeChunk>, came_at: &[usize]) -> Vec<WholeChunk> {
    whole
        .into_iter()
        .filter_map(|chunk| {
            let from = came_at.partition_point(|&at| at < chunk.ops.start);
            let to = from + chunk.ops.len();
            // Positions are distinct and in order: the run is all there
            // when its length of them span exactly its ops.
            (!chunk.ops.is_empty()
                && came_at.get(from) == Some(&chunk.ops.start)
                && came_at.get(to - 1) == Some(&(chunk.ops.end - 1)))
            .then_some(WholeChunk {
                ops: from..to,
                stored: chunk.stored,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::MemoryStore;
    use crate::sync::hlc::MAX_AHEAD_MS;
    use blazedb_proto::{Fields, OpBody, Value};

    const T0: u64 = 1_750_000_000_000;
    const DB: &str = "bugs";

    fn dev(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    fn engine(n: u8, epoch: Epoch) -> Engine<MemoryStore> {
        let mut store = MemoryStore::new(dev(n));
        store.create_db(DB, epoch, SyncMode::Sync, 0);
        let config = EngineConfig {
            members: vec![dev(1), dev(2)],
            ..EngineConfig::default()
        };
        Engine::new(dev(n), store, config, T0)
    }

    fn put(e: &mut Engine<MemoryStore>, now: u64, id: &str, v: i64) {
        let body = OpBody::Put {
            collection: "c".into(),
            id: id.into(),
            fields: Fields::from([("v".into(), Value::Int(v))]),
        };
        write(e, now, body);
    }

    fn write(e: &mut Engine<MemoryStore>, now: u64, body: OpBody) {
        e.store_mut().write(DB, now, body).expect("db exists");
        e.local_commit(DB, now);
    }

    /// Delivers messages both ways until both engines are quiet; returns
    /// how many messages of each kind went from `a` to `b`.
    fn exchange(
        a: &mut Engine<MemoryStore>,
        b: &mut Engine<MemoryStore>,
        now_a: u64,
        now_b: u64,
    ) -> BTreeMap<&'static str, usize> {
        let mut kinds = BTreeMap::new();
        loop {
            let mut moved = false;
            while let Some((to, msg)) = a.poll_transmit() {
                assert_eq!(to, b.me);
                *kinds.entry(kind(&msg)).or_default() += 1;
                b.handle(a.me, msg, now_b);
                moved = true;
            }
            while let Some((to, msg)) = b.poll_transmit() {
                assert_eq!(to, a.me);
                a.handle(b.me, msg, now_a);
                moved = true;
            }
            if !moved {
                return kinds;
            }
        }
    }

    fn kind(msg: &SyncMessage) -> &'static str {
        match msg {
            SyncMessage::Vector { .. } => "vector",
            SyncMessage::Ops { .. } | SyncMessage::Packed { .. } | SyncMessage::Chunks { .. } => {
                "ops"
            }
            SyncMessage::Snapshot { .. } => "snapshot",
            SyncMessage::SnapshotAck { .. } => "snapshot_ack",
            SyncMessage::Refuted { .. } => "refuted",
            SyncMessage::Projected { .. } => "projected",
            SyncMessage::Checkpoint { .. } => "checkpoint",
        }
    }

    fn connect(a: &mut Engine<MemoryStore>, b: &mut Engine<MemoryStore>, now: u64) {
        a.connected(b.me, now);
        b.connected(a.me, now);
    }

    #[test]
    fn peers_exchange_what_the_other_lacks_and_then_live_writes() {
        let (mut a, mut b) = (engine(1, 10), engine(2, 20));
        put(&mut a, T0, "x", 1);
        put(&mut b, T0, "y", 2);
        connect(&mut a, &mut b, T0);
        exchange(&mut a, &mut b, T0, T0);
        assert_eq!(a.store().visible(DB), b.store().visible(DB));
        assert_eq!(a.store().visible(DB).len(), 2);
        put(&mut a, T0 + 5, "x", 3);
        let sent = exchange(&mut a, &mut b, T0 + 5, T0 + 5);
        assert_eq!(sent.get("ops"), Some(&1));
        assert_eq!(a.store().state_hash(DB), b.store().state_hash(DB));
        // b acknowledged: a knows b holds all it has.
        assert_eq!(a.acked(&b.me, DB), Some(&a.store().vector(DB)));
    }

    #[test]
    fn ops_from_a_peer_are_not_read_back_for_it_and_later_writes_still_reach_it() {
        let (mut a, mut b) = (engine(1, 10), engine(2, 20));
        connect(&mut a, &mut b, T0);
        exchange(&mut a, &mut b, T0, T0);
        for i in 0..5 {
            put(&mut a, T0 + 1, &format!("r{i}"), i);
        }
        // Only a's messages to b: b's acknowledgements wait.
        while let Some((_, msg)) = a.poll_transmit() {
            b.handle(a.me, msg, T0 + 1);
        }
        // b's reader for a stands past the five ops a sent: it will not
        // read them back to find a holds them.
        assert_eq!(b.store().log_len(DB), 5);
        assert_eq!(b.links[&a.me][DB].cursor, 5);
        exchange(&mut a, &mut b, T0 + 1, T0 + 1);
        put(&mut b, T0 + 2, "mine", 9);
        let sent = exchange(&mut b, &mut a, T0 + 2, T0 + 2);
        assert_eq!(sent.get("ops"), Some(&1));
        assert_eq!(a.store().state_hash(DB), b.store().state_hash(DB));
        assert_eq!(a.store().visible(DB).len(), 6);
    }

    /// Rules for `DB` with `links` and nothing else restricted.
    fn linked(version: u64, links: Vec<blazedb_proto::rules::LinkRule>) -> AccessRules {
        AccessRules {
            mesh: blazedb_proto::mesh::MeshId([1; 16]),
            db: DB.into(),
            version,
            default: blazedb_proto::rules::AccessLevel::ReadWrite,
            rules: Vec::new(),
            signer: dev(1),
            signed_ms: 0,
            links,
        }
    }

    #[test]
    fn signed_links_steer_the_sync_and_a_device_list_overrides_them() {
        use blazedb_proto::rules::{LinkRule, Selector};
        let (mut a, mut b) = (engine(1, 10), engine(2, 20));
        // a pushes to b: b takes a's writes and gives nothing back.
        let push = linked(
            1,
            vec![LinkRule {
                devices: vec![Selector::Device(dev(1))],
                peers: vec![Selector::Everyone],
                sync_mode: SyncMode::Push,
            }],
        );
        a.set_rules(push.clone(), T0);
        b.set_rules(push, T0);
        connect(&mut a, &mut b, T0);
        put(&mut a, T0, "x", 1);
        put(&mut b, T0, "y", 2);
        exchange(&mut a, &mut b, T0, T0);
        assert_eq!(b.store().visible(DB).len(), 2, "b took a's write");
        assert_eq!(a.store().visible(DB).len(), 1, "a took nothing");

        // b's own list says both ways: it gives, but a still only gives.
        let mut state = b.store().sync_state(DB).expect("db");
        state.peers = Some(BTreeMap::from([(dev(1), SyncMode::Sync)]));
        assert_eq!(b.mode_with(DB, &state, &dev(1)), SyncMode::Sync);
        assert_eq!(
            a.mode_with(DB, &a.store().sync_state(DB).expect("db"), &dev(2)),
            SyncMode::Push
        );

        // New links that join nobody stop even a's pushes; then none at
        // all (every member with every other) lets b's write through at
        // once, without waiting for a timer.
        let apart = linked(
            2,
            vec![LinkRule {
                devices: vec![Selector::Team("nobody".into())],
                peers: vec![Selector::Everyone],
                sync_mode: SyncMode::Sync,
            }],
        );
        a.set_rules(apart.clone(), T0 + 10);
        b.set_rules(apart, T0 + 10);
        exchange(&mut a, &mut b, T0 + 10, T0 + 10);
        put(&mut a, T0 + 20, "z", 3);
        let sent = exchange(&mut a, &mut b, T0 + 20, T0 + 20);
        assert_eq!(sent.get("ops"), None, "{sent:?}");
        a.set_rules(linked(3, Vec::new()), T0 + 30);
        b.set_rules(linked(3, Vec::new()), T0 + 30);
        exchange(&mut a, &mut b, T0 + 30, T0 + 30);
        assert_eq!(a.store().state_hash(DB), b.store().state_hash(DB));
        assert_eq!(a.store().visible(DB).len(), 3);
    }

    #[test]
    fn a_peers_own_operations_are_never_sent_back_to_it() {
        let (mut a, mut b) = (engine(1, 10), engine(2, 20));
        connect(&mut a, &mut b, T0);
        exchange(&mut a, &mut b, T0, T0);
        // a writes on; b takes each batch and sends nothing back but acks.
        let mut now = T0;
        for i in 0..50 {
            now += 100;
            put(&mut a, now, &format!("r{i}"), i);
            let from_a = exchange(&mut a, &mut b, now, now);
            assert_eq!(from_a.get("ops"), Some(&1));
            // Past b's retransmit wait: what b counts as in flight to a
            // must not include a's own operations.
            b.handle_timeout(now + 3_000);
            while let Some((_, msg)) = b.poll_transmit() {
                assert_ne!(kind(&msg), "ops", "b sent a's operations back: {msg:?}");
                a.handle(b.me, msg, now);
            }
        }
        assert_eq!(a.store().state_hash(DB), b.store().state_hash(DB));
    }

    #[test]
    fn operations_stamped_too_far_ahead_wait_for_the_clock() {
        let (mut a, mut b) = (engine(1, 10), engine(2, 20));
        // a's clock runs 20 minutes ahead of b's.
        let skew = 20 * 60 * 1000;
        put(&mut a, T0 + skew, "x", 1);
        connect(&mut a, &mut b, T0);
        exchange(&mut a, &mut b, T0 + skew, T0);
        assert!(b.store().visible(DB).is_empty(), "held, not applied");
        let held = std::iter::from_fn(|| b.poll_event())
            .any(|e| matches!(e, Event::ClockAhead { origin, .. } if origin == dev(1)));
        assert!(held, "the hold is reported");
        // b's clock did not jump ahead either: its own writes stay near now.
        put(&mut b, T0, "y", 2);
        assert!(b.store().sync_state(DB).expect("db").clock.millis() < T0 + 1000);

        // Once b's wall clock is within the bound, a retransmission lands.
        let later = T0 + skew - MAX_AHEAD_MS;
        a.handle_timeout(a.poll_timeout().max(T0 + skew + 100_000));
        exchange(&mut a, &mut b, T0 + skew + 100_000, later);
        assert_eq!(a.store().visible(DB), b.store().visible(DB));
    }

    #[test]
    fn a_new_epoch_brings_a_full_exchange() {
        let (mut a, mut b) = (engine(1, 10), engine(2, 20));
        connect(&mut a, &mut b, T0);
        put(&mut a, T0, "x", 1);
        exchange(&mut a, &mut b, T0, T0);
        // b is restored from a backup taken before it had anything.
        let mut restored = MemoryStore::new(dev(2));
        restored.create_db(DB, 21, SyncMode::Sync, 0);
        let mut b = Engine::new(dev(2), restored, b.config.clone(), T0 + 10);
        a.disconnected(&dev(2));
        connect(&mut a, &mut b, T0 + 10);
        let sent = exchange(&mut a, &mut b, T0 + 10, T0 + 10);
        assert!(sent.contains_key("snapshot"), "a sent its state: {sent:?}");
        assert!(
            std::iter::from_fn(|| a.poll_event())
                .any(|e| matches!(e, Event::EpochChanged { peer, .. } if peer == dev(2)))
        );
        assert_eq!(a.store().visible(DB), b.store().visible(DB));
        assert_eq!(b.store().vector(DB), a.store().vector(DB));
    }

    #[test]
    fn a_peer_below_the_compacted_log_gets_a_snapshot() {
        let (mut a, mut b) = (engine(1, 10), engine(2, 20));
        for i in 0..50 {
            put(&mut a, T0 + i, &format!("r{i}"), i as i64);
        }
        // Every member has what a holds (as far as a knows), so its log goes.
        let stable = a.store().vector(DB);
        a.store_mut()
            .compact(DB, &stable, blazedb_proto::Hlc::default())
            .expect("in memory");
        assert_eq!(a.store().log_len(DB), 0);
        connect(&mut a, &mut b, T0 + 100);
        let sent = exchange(&mut a, &mut b, T0 + 100, T0 + 100);
        assert!(
            sent.contains_key("snapshot") && !sent.contains_key("ops"),
            "{sent:?}"
        );
        assert_eq!(a.store().visible(DB), b.store().visible(DB));
        assert_eq!(b.store().vector(DB), stable);
    }

    #[test]
    fn duplicated_batches_are_applied_once() {
        let (mut a, mut b) = (engine(1, 10), engine(2, 20));
        connect(&mut a, &mut b, T0);
        exchange(&mut a, &mut b, T0, T0);
        put(&mut a, T0, "x", 1);
        let (_, msg) = a.poll_transmit().expect("ops for b");
        b.handle(dev(1), msg.clone(), T0);
        b.handle(dev(1), msg, T0);
        assert_eq!(b.store().misapplied(), 0);
        assert_eq!(b.store().vector(DB).get(&dev(1)), 1);
    }

    /// Delivers messages among `es` until all are quiet; messages to a
    /// device not in `es` are lost.
    fn settle(es: &mut [Engine<MemoryStore>], now: u64) {
        loop {
            let mut moved = false;
            for i in 0..es.len() {
                let from = es[i].me;
                while let Some((to, msg)) = es[i].poll_transmit() {
                    if let Some(j) = es.iter().position(|e| e.me == to) {
                        es[j].handle(from, msg, now);
                        moved = true;
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn link(es: &mut [Engine<MemoryStore>], i: usize, j: usize, up: bool, now: u64) {
        let (a, b) = (es[i].me, es[j].me);
        if up {
            es[i].connected(b, now);
            es[j].connected(a, now);
        } else {
            es[i].disconnected(&b);
            es[j].disconnected(&a);
        }
    }

    #[test]
    fn devices_behind_a_hub_get_its_summary_not_every_report_and_compact_by_it() {
        // H (0) is a hub; devices D1..D4 link only with it.
        let members: Vec<DeviceId> = (1..=5).map(dev).collect();
        let mut es: Vec<Engine<MemoryStore>> = (1..=5)
            .map(|n| {
                let mut store = MemoryStore::new(dev(n));
                store.create_db(DB, u64::from(n), SyncMode::Sync, 0);
                let config = EngineConfig {
                    members: members.clone(),
                    summarize: n == 1,
                    ..EngineConfig::default()
                };
                let mut e = Engine::new(dev(n), store, config, T0);
                e.set_hubs(BTreeSet::from([dev(1)]));
                e
            })
            .collect();
        for d in 1..5 {
            link(&mut es, 0, d, true, T0);
        }
        for (d, e) in es.iter_mut().enumerate().skip(1) {
            put(e, T0, &format!("r{d}"), d as i64);
        }
        settle(&mut es, T0);
        // Two announcement rounds: reports reach the hub, then its summary
        // reaches the devices.
        let mut now = T0;
        let mut reports_to_devices = 0;
        for _ in 0..2 {
            now += EngineConfig::default().announce_ms;
            for e in es.iter_mut() {
                e.handle_timeout(now);
            }
            for (to, msg) in es[0].outbox.iter() {
                if let SyncMessage::Vector { reports, .. } = msg
                    && *to != dev(1)
                {
                    reports_to_devices = reports_to_devices.max(reports.len());
                }
            }
            settle(&mut es, now);
        }
        assert_eq!(
            reports_to_devices, 1,
            "the hub passes on only its own report to devices"
        );
        assert!(
            es[1]
                .reports
                .get(DB)
                .is_none_or(|r| !r.contains_key(&dev(3))),
            "a device holds another device's report"
        );
        for (d, e) in es.iter().enumerate().skip(1) {
            assert_eq!(e.store().log_len(DB), 4, "device {d} before compaction");
        }
        now += EngineConfig::default().compact_ms;
        for e in es.iter_mut() {
            e.handle_timeout(now);
        }
        for (d, e) in es.iter().enumerate() {
            assert_eq!(
                e.store().log_len(DB),
                0,
                "replica {d} did not compact what every replica holds"
            );
        }
    }

    /// Engines for devices 1 and 2 announcing and compacting every second;
    /// a write incarnation is gone after 30 s of silence.
    fn quick(n: u8, store: MemoryStore) -> Engine<MemoryStore> {
        let config = EngineConfig {
            members: vec![dev(1), dev(2)],
            announce_ms: 1_000,
            compact_ms: 1_000,
            retire_after_ms: 30_000,
            ..EngineConfig::default()
        };
        Engine::new(dev(n), store, config, T0)
    }

    fn store_of(n: u8) -> MemoryStore {
        let mut store = MemoryStore::new(dev(n));
        store.create_db(DB, u64::from(n) * 10, SyncMode::Sync, 0);
        store
    }

    /// Runs both engines' timers for `ms`, a second at a time, exchanging
    /// what they send; returns the time reached.
    fn run_for(
        a: &mut Engine<MemoryStore>,
        b: &mut Engine<MemoryStore>,
        from: u64,
        ms: u64,
    ) -> u64 {
        let mut now = from;
        while now < from + ms {
            now += 1_000;
            a.handle_timeout(now);
            b.handle_timeout(now);
            exchange(a, b, now, now);
        }
        now
    }

    #[test]
    fn a_compaction_that_stops_short_runs_again_a_second_later_alone() {
        const NOTES: &str = "notes";
        let config = EngineConfig {
            members: vec![dev(1), dev(2)],
            announce_ms: 1_000,
            ..EngineConfig::default()
        };
        let stores = [1, 2].map(|n| {
            let mut store = store_of(n);
            store.create_db(NOTES, 7, SyncMode::Sync, 0);
            store
        });
        let [mut a_store, b_store] = stores;
        a_store.set_trim_step(2);
        let mut a = Engine::new(dev(1), a_store, config.clone(), T0);
        let mut b = Engine::new(dev(2), b_store, config.clone(), T0);
        connect(&mut a, &mut b, T0);
        for i in 0..9 {
            put(&mut a, T0, &format!("r{i}"), i);
        }
        let note = |e: &mut Engine<MemoryStore>, now: u64, id: &str| {
            let body = OpBody::Delete {
                collection: "c".into(),
                id: id.into(),
            };
            e.store_mut().write(NOTES, now, body).expect("db exists");
            e.local_commit(NOTES, now);
        };
        note(&mut a, T0, "n0");
        // The first compaction, a minute in: B holds everything and both
        // have said so. Two of the nine go; the one note goes whole.
        let now = run_for(&mut a, &mut b, T0, config.compact_ms);
        assert_eq!(b.store().vector(DB).get(&dev(1)), 9);
        assert_eq!(a.store().log_len(DB), 7, "the first pass removes two");
        assert_eq!(a.store().log_len(NOTES), 0);
        // A second later the next pass, and so on, not a minute later.
        note(&mut a, now, "n1");
        let now = run_for(&mut a, &mut b, now, config.compact_again_ms);
        assert_eq!(a.store().log_len(DB), 5);
        let now = run_for(&mut a, &mut b, now, 3 * config.compact_again_ms);
        assert_eq!(a.store().log_len(DB), 0);
        // The notes finished in one pass: they wait their minute, though
        // B has long reported holding the new one.
        assert_eq!(b.store().vector(NOTES).get(&dev(1)), 2);
        assert_eq!(a.store().log_len(NOTES), 1, "compacted again early");
        run_for(&mut a, &mut b, now, config.compact_ms);
        assert_eq!(a.store().log_len(NOTES), 0);
    }

    #[test]
    fn each_copy_of_a_cloned_device_holds_compaction_back_until_it_holds_the_ops() {
        let b_store = store_of(2);
        let mut c_store = b_store.clone();
        c_store.set_incarnation(7);
        let (mut a, mut b, mut c) = (quick(1, store_of(1)), quick(2, b_store), quick(2, c_store));
        // The copy C runs first: A hears from it. Then B's session pushes
        // C's out, and B takes A's write.
        connect(&mut a, &mut c, T0);
        exchange(&mut a, &mut c, T0, T0);
        a.disconnected(&dev(2));
        connect(&mut a, &mut b, T0);
        put(&mut a, T0, "x", 1);
        let now = run_for(&mut a, &mut b, T0, 5_000);
        assert_eq!(b.store().vector(DB).get(&dev(1)), 1);
        assert_eq!(
            a.store().log_len(DB),
            1,
            "compacted an operation the copy C lacks"
        );
        // C's session again: once it holds the write, it may go.
        a.disconnected(&dev(2));
        connect(&mut a, &mut c, now);
        run_for(&mut a, &mut c, now, 3_000);
        assert_eq!(c.store().vector(DB).get(&dev(1)), 1);
        assert_eq!(a.store().log_len(DB), 0, "compaction never went on");
    }

    #[test]
    fn a_write_incarnation_silent_after_a_restart_stops_holding_compaction_back() {
        let (mut a, mut b) = (quick(1, store_of(1)), quick(2, store_of(2)));
        connect(&mut a, &mut b, T0);
        exchange(&mut a, &mut b, T0, T0);
        // B restarts after a crash in a new write incarnation; its old one
        // never reports again.
        a.disconnected(&dev(2));
        let mut store = b.into_store();
        store.set_incarnation(9);
        let mut b = quick(2, store);
        connect(&mut a, &mut b, T0);
        put(&mut a, T0, "x", 1);
        let now = run_for(&mut a, &mut b, T0, 20_000);
        assert_eq!(
            a.store().log_len(DB),
            1,
            "the old incarnation counted as gone at once"
        );
        run_for(&mut a, &mut b, now, 15_000);
        assert_eq!(
            a.store().log_len(DB),
            0,
            "the old incarnation held compaction back for good"
        );
        assert!(
            !a.reports[DB].contains_key(&dev(2)),
            "the gone incarnation's reports are kept"
        );
    }

    /// The cut-off of device `h`, removed holding its operations up to
    /// `seq` in [`DB`].
    fn cut_off(h: DeviceId, seq: u64) -> BTreeMap<DeviceId, Cutoff> {
        BTreeMap::from([(
            h,
            Cutoff {
                per_db: BTreeMap::from([(DB.to_owned(), seq)]),
                after: Hlc::new(T0, 0),
                ..Cutoff::default()
            },
        )])
    }

    /// Checks that A and G agree, on a record "r" A wrote as 1 and H
    /// overwrote late, a record "late" H made late, and "kept" H wrote as 7
    /// before its cut-off; returns A's records.
    fn assert_late_writes_undone(
        a: &Engine<MemoryStore>,
        g: &Engine<MemoryStore>,
    ) -> BTreeMap<(String, String), Fields> {
        let va = a.store().visible(DB);
        assert_eq!(va, g.store().visible(DB), "A and G differ");
        let value = |id: &str| {
            va.get(&("c".to_owned(), id.to_owned()))
                .map(|f| f["v"].clone())
        };
        assert_eq!(
            value("r"),
            Some(Value::Int(1)),
            "H's late overwrite survived"
        );
        assert_eq!(value("late"), None, "H's late record survived");
        assert_eq!(
            value("kept"),
            Some(Value::Int(7)),
            "H's write before the cut-off was lost"
        );
        va
    }

    #[test]
    fn a_removed_devices_late_writes_are_refused_and_undone_where_they_landed() {
        // A (0) is an admin, G (1) a member, H (2) the device A removes. G
        // and H are cut off from A while H writes; G takes H's writes.
        let mut es = [engine(1, 1), engine(2, 2), engine(3, 3)];
        let (a, g, h) = (0, 1, 2);
        let h_id = es[h].me;
        for (i, j) in [(a, g), (a, h), (g, h)] {
            link(&mut es, i, j, true, T0);
        }
        put(&mut es[a], T0, "r", 1);
        put(&mut es[h], T0, "kept", 7);
        settle(&mut es, T0);
        link(&mut es, a, g, false, T0);
        link(&mut es, a, h, false, T0);

        // A removes H, taking H's operations up to what it holds.
        let cutoff = es[a].store().vector(DB).get(&h_id);
        assert_eq!(cutoff, 1);
        let cutoffs = cut_off(h_id, cutoff);
        es[a].set_cutoffs(cutoffs.clone());

        // Meanwhile H overwrites A's record and makes a new one; G takes both.
        let t1 = T0 + 1_000;
        put(&mut es[h], t1, "r", 99);
        put(&mut es[h], t1, "late", 5);
        settle(&mut es, t1);
        assert_eq!(es[g].store().visible(DB).len(), 3, "G took H's late writes");

        // G meets A again before it hears of the removal, then hears.
        let t2 = T0 + 2_000;
        link(&mut es, g, h, false, t2);
        link(&mut es, a, g, true, t2);
        settle(&mut es, t2);
        es[g].set_cutoffs(cutoffs);
        settle(&mut es, t2);

        assert_eq!(
            es[a].store().vector(DB).get(&h_id),
            cutoff,
            "A applied H's late writes"
        );
        assert_late_writes_undone(&es[a], &es[g]);

        // G stops offering H's refused operations: nothing is in flight.
        let a_id = es[a].me;
        let stream = &es[g].links[&a_id][DB];
        assert_eq!(
            stream.sent.ahead_of(stream.acked.as_ref().expect("acked")),
            0,
            "G still offers refused operations"
        );
    }

    #[test]
    fn a_snapshot_holding_a_removed_devices_late_writes_is_not_merged() {
        // A (0) has removed H (2); G (1) has not heard yet, holds H's late
        // writes and sends A a snapshot, A being far behind it.
        let mut g_store = MemoryStore::new(dev(2));
        g_store.create_db(DB, 2, SyncMode::Sync, 0);
        let g_config = EngineConfig {
            members: vec![dev(1), dev(2)],
            snapshot_after: 5,
            ..EngineConfig::default()
        };
        let mut es = [
            engine(1, 1),
            Engine::new(dev(2), g_store, g_config, T0),
            engine(3, 3),
        ];
        let (a, g, h) = (0, 1, 2);
        let h_id = es[h].me;
        for (i, j) in [(a, g), (g, h)] {
            link(&mut es, i, j, true, T0);
        }
        put(&mut es[a], T0, "r", 1);
        put(&mut es[h], T0, "kept", 7);
        settle(&mut es, T0);
        link(&mut es, a, g, false, T0);
        let cutoffs = cut_off(h_id, 1);
        es[a].set_cutoffs(cutoffs.clone());
        let t1 = T0 + 1_000;
        put(&mut es[h], t1, "r", 99);
        put(&mut es[h], t1, "late", 5);
        for i in 0..10 {
            put(&mut es[g], t1, &format!("g{i}"), i);
        }
        settle(&mut es, t1);

        let t2 = T0 + 2_000;
        link(&mut es, g, h, false, t2);
        link(&mut es, a, g, true, t2);
        let (left, right) = es.split_at_mut(g);
        let sent = exchange(&mut right[0], &mut left[a], t2, t2);
        assert!(
            sent.contains_key("snapshot"),
            "G sent no snapshot: {sent:?}"
        );
        assert_eq!(
            es[a].store().vector(DB).get(&h_id),
            1,
            "A merged H's late writes from a snapshot"
        );
        assert_eq!(es[a].store().visible(DB).len(), 2, "A took part of it");

        // G hears and passes them on as operations: A refuses them and
        // undoes them where they landed.
        es[g].set_cutoffs(cutoffs);
        let mut now = t2;
        for _ in 0..10 {
            now += 2_000;
            for e in es.iter_mut() {
                e.handle_timeout(now);
            }
            settle(&mut es, now);
        }
        let va = assert_late_writes_undone(&es[a], &es[g]);
        assert_eq!(
            va.get(&("c".to_owned(), "g9".to_owned()))
                .map(|f| f["v"].clone()),
            Some(Value::Int(9)),
            "G's writes did not reach A"
        );
    }

    /// Rules giving device 2 the records whose `status` is below `below`.
    fn status_rules(version: u64, below: i64) -> AccessRules {
        use blazedb_proto::api::FilterOp;
        use blazedb_proto::rules::{AccessLevel, AccessRule, RuleFilter, Selector};
        AccessRules {
            mesh: blazedb_proto::mesh::MeshId([9; 16]),
            db: DB.to_owned(),
            version,
            default: AccessLevel::ReadWrite,
            rules: vec![AccessRule {
                devices: vec![Selector::Device(dev(2))],
                collections: None,
                filter: vec![RuleFilter {
                    field: "status".into(),
                    op: FilterOp::Lt,
                    value: Value::Int(below),
                    device: None,
                }],
                exclude: Vec::new(),
                access: AccessLevel::ReadWrite,
            }],
            signer: dev(1),
            signed_ms: 0,
            links: Vec::new(),
        }
    }

    fn fields(pairs: &[(&str, i64)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::Int(*v)))
            .collect()
    }

    #[test]
    fn a_partial_replica_gets_again_a_record_it_kept_through_a_replacing_snapshot() {
        // F (1) holds the whole database; P (2) the records with a status
        // below 50.
        let (mut f, mut p) = (engine(1, 10), engine(2, 10));
        for e in [&mut f, &mut p] {
            e.set_rules(status_rules(1, 50), T0);
        }
        let r = ("c".to_owned(), "r".to_owned());
        let put = OpBody::Put {
            collection: "c".into(),
            id: "r".into(),
            fields: fields(&[("status", 5), ("v", 1)]),
        };
        write(&mut f, T0, put);
        connect(&mut f, &mut p, T0);
        exchange(&mut f, &mut p, T0, T0);
        assert!(p.store().visible(DB).contains_key(&r));

        // Apart, F deletes the record and P patches it; then the rules
        // change, so a snapshot replaces what P holds.
        f.disconnected(&p.me);
        p.disconnected(&f.me);
        let t1 = T0 + 1_000;
        let delete = OpBody::Delete {
            collection: "c".into(),
            id: "r".into(),
        };
        write(&mut f, t1, delete);
        let patch = OpBody::Patch {
            collection: "c".into(),
            id: "r".into(),
            set: fields(&[("status", 7)]),
            unset: Vec::new(),
        };
        write(&mut p, t1 + 1, patch);
        let t2 = T0 + 2_000;
        for e in [&mut f, &mut p] {
            e.set_rules(status_rules(2, 60), t2);
        }

        // The snapshot does not carry the deleted record, and P keeps it
        // whole, since it holds P's patch, which F takes only later. P's
        // vector, which counts F's delete as held, overtakes its last
        // acknowledgement of the snapshot.
        connect(&mut f, &mut p, t2);
        let (mut ops, mut acks) = (Vec::new(), Vec::new());
        loop {
            let mut moved = false;
            while let Some((_, msg)) = f.poll_transmit() {
                p.handle(f.me, msg, t2);
                moved = true;
            }
            while let Some((_, msg)) = p.poll_transmit() {
                match kind(&msg) {
                    "ops" => ops.push(msg),
                    "snapshot_ack" => acks.push(msg),
                    _ => f.handle(p.me, msg, t2),
                }
                moved = true;
            }
            if !moved {
                break;
            }
        }
        assert!(
            !ops.is_empty() && !acks.is_empty(),
            "P sent no writes or acks"
        );
        assert_eq!(
            p.store().visible(DB).get(&r),
            Some(&fields(&[("status", 7), ("v", 1)]))
        );
        for msg in acks.into_iter().chain(ops) {
            f.handle(p.me, msg, t2);
        }
        exchange(&mut f, &mut p, t2, t2);

        // F holds the patch on the deleted record; P gets that record
        // again once F holds the patch, and drops the deleted field.
        let want = fields(&[("status", 7)]);
        assert_eq!(f.store().visible(DB).get(&r), Some(&want));
        assert_eq!(
            p.store().visible(DB).get(&r),
            Some(&want),
            "P kept a field of a record F deleted"
        );
    }

    /// Only chunks every op of which was accepted stay whole, their runs
    /// moved to where those ops are among the accepted.
    #[test]
    fn chunks_whose_ops_were_all_accepted_stay_whole() {
        let chunk = |ops: std::ops::Range<usize>| WholeChunk {
            stored: vec![ops.start as u8],
            ops,
        };
        let whole = vec![chunk(0..3), chunk(3..6), chunk(6..9), chunk(9..10)];
        // Op 3 was not accepted, nor op 9.
        let came_at = [0, 1, 2, 4, 5, 6, 7, 8];
        assert_eq!(
            whole_accepted(whole, &came_at),
            vec![
                WholeChunk {
                    ops: 0..3,
                    stored: vec![0]
                },
                WholeChunk {
                    ops: 5..8,
                    stored: vec![6]
                },
            ]
        );
        assert_eq!(whole_accepted(vec![chunk(0..2)], &[]), vec![]);
    }
}
