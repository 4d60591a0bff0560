//! What the sync engine needs from storage, and nothing more.
//!
//! The engine runs on the agent's fjall store and, in tests and the
//! simulator, on [`MemoryStore`](super::MemoryStore). Both keep the same
//! promises, listed on each method.

use std::collections::BTreeMap;
use std::sync::Arc;

use blazedb_proto::api::{DbSettings, SyncMode};
use blazedb_proto::rules::SyncWish;
use blazedb_proto::sync::{LogChunk, PackedOps};
use blazedb_proto::{
    DeviceId, Epoch, Fields, Hlc, Op, OpBody, SnapshotRecord, Span, VersionVector,
};

use crate::access::view::View;

/// Where a database's sync stands on this replica.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncState {
    /// The database's epoch on this replica.
    pub epoch: Epoch,
    /// Every operation this replica holds (or holds the effect of).
    pub vector: VersionVector,
    /// The op log holds every operation above this vector that the replica
    /// holds; operations at or below it may have been compacted away.
    pub floor: VersionVector,
    /// The replica's clock: later local writes are stamped after it.
    pub clock: Hlc,
    /// How the database takes part in sync.
    pub mode: SyncMode,
    /// All its settings (`mode` and `sealed` repeat two of them), which a
    /// replica creating the database from this one's announcement copies.
    pub settings: DbSettings,
    /// The devices this replica syncs the database with, each with a
    /// direction that narrows `mode`; every peer, in `mode`, when `None`.
    pub peers: Option<BTreeMap<DeviceId, SyncMode>>,
    /// Less than its access rules allow, which this replica asks for.
    pub wish: Option<SyncWish>,
    /// The records were cut to a view (this replica held a partial one)
    /// and no whole snapshot has been merged since: what the vector counts
    /// as held may be missing in part.
    pub lacking: bool,
    /// The replica started without proof that its store was as it left it
    /// (a crash, a restore from a backup, a copy) and no whole snapshot
    /// has been merged since: it may hold records whose deletes every
    /// peer has compacted away. It asks for a whole state to replace its
    /// own and gives none of its own meanwhile, as a `lacking` one does.
    pub restored: bool,
    /// The database is end-to-end encrypted: op bodies are sealed.
    pub sealed: bool,
    /// The database is sealed and this replica holds none of its keys: it
    /// keeps the op log and a sealed checkpoint, no records.
    pub blind: bool,
}

impl SyncState {
    /// How the database syncs with `peer` by this replica's own settings:
    /// its mode, narrowed by the direction its peer list gives `peer` (not
    /// at all if the list leaves `peer` out), or by `admin` (what the
    /// mesh's links say) when it has no list of its own.
    pub fn mode_with(&self, peer: &DeviceId, admin: Option<SyncMode>) -> SyncMode {
        match &self.peers {
            Some(peers) => narrow(
                self.mode,
                peers.get(peer).copied().unwrap_or(SyncMode::Local),
            ),
            None => admin.map_or(self.mode, |link| narrow(self.mode, link)),
        }
    }
}

/// A database's `mode` narrowed by one link's direction: it gives only
/// where both give, and takes only where both take.
fn narrow(mode: SyncMode, link: SyncMode) -> SyncMode {
    let gives = |m: SyncMode| matches!(m, SyncMode::Sync | SyncMode::Push);
    let takes = |m: SyncMode| matches!(m, SyncMode::Sync | SyncMode::Pull);
    match (gives(mode) && gives(link), takes(mode) && takes(link)) {
        (true, true) => SyncMode::Sync,
        (true, false) => SyncMode::Push,
        (false, true) => SyncMode::Pull,
        (false, false) => SyncMode::Local,
    }
}

/// A sealed checkpoint of an end-to-end encrypted database: its records as
/// of `vector`, encoded and sealed in parts (see
/// `SyncMessage::Checkpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Chosen at random by the replica that made it.
    pub id: u64,
    /// What it holds.
    pub vector: VersionVector,
    /// The sealed parts, in order.
    pub parts: Vec<Vec<u8>>,
}

/// What a partial replica takes from a full one in place of operations
/// (see [`SyncStore::merge_projected`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projection {
    /// Records as the sender holds them, cut to what this replica may see.
    pub records: Vec<SnapshotRecord>,
    /// Keys of records this replica may no longer hold.
    pub evict: Vec<Vec<u8>>,
    /// The operations whose effect this brings, per origin the first and
    /// last seq: the vector rises to the last.
    pub covers: Vec<(DeviceId, u64, u64)>,
    /// This replica's own writes the sender refused, with why.
    pub rejected: Vec<(u64, String)>,
    /// How many of this replica's own writes the sender held: a record
    /// holding a later write of this replica's is kept, not evicted.
    pub own_held: u64,
    /// What this replica may see. Its own writes after `own_from`, up to
    /// `own_held`, have been judged by a full replica: a record they
    /// touched that the view does not see was refused (or has left the
    /// view since) and is dropped.
    pub view: Option<Arc<View>>,
    /// See `view`.
    pub own_from: u64,
}

/// A snapshot piece that replaces what a partial replica holds in a key
/// range (see [`SyncStore::merge_snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replace<'a> {
    /// The range the piece stands for.
    pub span: &'a Span,
    /// How many of this replica's own writes the sender held, as in
    /// [`Projection::own_held`].
    pub own_held: u64,
    /// Whether the records are cut to this replica's view (it holds a
    /// partial replica), or whole (it held one and is owed a whole state).
    pub cut: bool,
}

/// The writers whose operations a replica checks before it applies them
/// (see [`SyncStore::apply_ops`]): devices with restricted access, each
/// with what it may see and write.
#[derive(Debug, Clone, Default)]
pub struct WriteScreen {
    views: BTreeMap<DeviceId, Arc<View>>,
}

impl WriteScreen {
    /// Checks the writes of `device` against `view`.
    pub fn restrict(&mut self, device: DeviceId, view: Arc<View>) {
        self.views.insert(device, view);
    }

    /// Whether no write is checked.
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// The view the write `body` of `origin` is checked against, if it is
    /// checked. A `Rejected` stand-in changes nothing, so it needs none.
    pub(crate) fn view_for(&self, origin: &DeviceId, body: &OpBody) -> Option<&View> {
        if matches!(body, OpBody::Rejected { .. }) {
            return None;
        }
        self.views.get(origin).map(|v| &**v)
    }
}

/// A write the [`WriteScreen`] refused: it changed nothing, and the log
/// holds an `OpBody::Rejected` in its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The operation as its writer made it.
    pub op: Op,
    /// Why it was refused, for the writer and the log.
    pub reason: String,
}

impl Refusal {
    /// Refuses `op`, whose body is `body`: `op` becomes the stand-in to log
    /// in its place, and the refusal keeps it as written.
    pub(crate) fn refuse(op: &mut Op, body: &OpBody, reason: String) -> Refusal {
        // Should the stand-in not encode, an empty body is one no replica
        // can read, which changes nothing anywhere just the same.
        let stand_in = OpBody::Rejected {
            collection: body.collection().to_owned(),
            id: body.id().to_owned(),
            reason: reason.clone(),
        }
        .encode()
        .unwrap_or_default();
        let written = std::mem::replace(&mut op.body, stand_in);
        Refusal {
            op: Op {
                body: written,
                ..op.clone()
            },
            reason,
        }
    }
}

/// Why an op of an `e2e` database could not be opened, as reported to the
/// sync engine: the op was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unopened {
    /// The op's writer ([`Op::writer`]): its origin device, unless that
    /// device was in a later write incarnation.
    pub origin: DeviceId,
    /// Its seq.
    pub seq: u64,
    /// Why, for the log and `status`.
    pub reason: String,
    /// Whether the op is damaged (altered, or sealed under another key of
    /// its epoch), rather than waiting for a key this device lacks.
    pub damaged: bool,
}

/// What [`SyncStore::apply_ops`] did besides applying operations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Writes the screen refused: logged as `OpBody::Rejected`.
    pub refused: Vec<Refusal>,
    /// Operations not applied nor logged, because their sealed bodies did
    /// not open here: their origin's later operations were not applied
    /// either.
    pub unopened: Vec<Unopened>,
    /// The cursors of the log entries the apply wrote, if any: one per
    /// operation applied, in the order given, and nothing else between
    /// them.
    pub logged: Option<std::ops::RangeInclusive<u64>>,
}

/// Bounds on one read of the op log or of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// The most items to return.
    pub max_items: usize,
    /// Stop once the items returned add up to this many bytes.
    pub max_bytes: usize,
}

impl ReadLimits {
    /// No bound: a read of everything there is.
    pub const UNBOUNDED: ReadLimits = ReadLimits {
        max_items: usize::MAX,
        max_bytes: usize::MAX,
    };

    /// Whether a read that holds `items` adding up to `bytes` is full.
    pub(crate) fn full(&self, items: usize, bytes: usize) -> bool {
        items >= self.max_items || bytes >= self.max_bytes
    }

    /// Adds an item of `size` bytes to a read, and says whether the read
    /// is now full.
    pub(crate) fn take<T>(
        &self,
        out: &mut Vec<T>,
        bytes: &mut usize,
        item: T,
        size: usize,
    ) -> bool {
        out.push(item);
        *bytes += size;
        self.full(out.len(), *bytes)
    }
}

/// Ops read from the log for a peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpsRead {
    /// The operations, in log order.
    pub ops: Vec<Op>,
    /// Where to continue reading next time.
    pub next: u64,
}

impl OpsRead {
    /// The read, its ops packed as an `Ops` message sends them.
    pub fn packed(&self) -> PackedRead {
        let mut ops = PackedOps::default();
        for op in &self.ops {
            ops.push(op);
        }
        PackedRead {
            ops,
            chunks: Vec::new(),
            next: self.next,
        }
    }
}

/// Ops read from the log for a peer, packed for the wire: as packed ops,
/// or as whole chunks of the log when the peer lacks every op in them
/// (one or the other).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackedRead {
    /// The operations, in log order.
    pub ops: PackedOps,
    /// Chunks of the log, in log order, each sent as it is stored.
    pub chunks: Vec<LogChunk>,
    /// Where to continue reading next time.
    pub next: u64,
}

/// A chunk of a peer's op log that a run of the ops given to
/// [`SyncStore::apply_chunks`] came in whole: a store that logs every one
/// of them, as they came, may keep the chunk's bytes instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeChunk {
    /// Where its ops are among those applied.
    pub ops: std::ops::Range<usize>,
    /// The chunk as the peer's store holds it
    /// ([`blazedb_proto::log_chunk`]).
    pub stored: Vec<u8>,
}

/// Records read for a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotRead {
    /// The records, in key order.
    pub records: Vec<SnapshotRecord>,
    /// Whether the records run to the end of the database.
    pub done: bool,
}

/// What a compaction removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Operations removed from the log.
    pub ops: u64,
    /// Tombstones removed from the records.
    pub tombstones: u64,
    /// The pass stopped short of all it could do (it holds the store's
    /// writes back, so each is bounded): the engine runs it again soon.
    pub more: bool,
}

/// A record to write again as this replica holds it (see
/// [`SyncStore::correct`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    /// The collection.
    pub collection: String,
    /// The record id.
    pub id: String,
    /// The fields to write again (set as held, or removed where absent);
    /// `None` for the whole record (a put of it as held, or a delete if it
    /// is not live here).
    pub fields: Option<Vec<String>>,
}

impl Correction {
    /// The write that puts the record back as `held` (its live fields
    /// here, or `None` if it is not live here).
    pub fn body(&self, held: Option<&Fields>) -> OpBody {
        let (collection, id) = (self.collection.clone(), self.id.clone());
        match (held, &self.fields) {
            (None, _) => OpBody::Delete { collection, id },
            (Some(all), None) => OpBody::Put {
                collection,
                id,
                fields: all.clone(),
            },
            (Some(all), Some(names)) => {
                let (set, unset): (Vec<&String>, Vec<&String>) =
                    names.iter().partition(|n| all.contains_key(*n));
                OpBody::Patch {
                    collection,
                    id,
                    set: set
                        .into_iter()
                        .filter_map(|n| Some((n.clone(), all.get(n)?.clone())))
                        .collect(),
                    unset: unset.into_iter().cloned().collect(),
                }
            }
        }
    }
}

/// Storage as the sync engine sees it.
pub trait SyncStore {
    /// Why a call failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The databases this replica holds, by name, whatever their mode.
    fn databases(&self) -> Vec<String>;

    /// The id this replica's local writes are counted under: its device's
    /// writer of the current write incarnation.
    fn writer(&self) -> DeviceId;

    /// Where the database's sync stands, or `None` if there is no such
    /// database.
    fn sync_state(&self, db: &str) -> Option<SyncState>;

    /// Reads, in log order after position `from` (0 for the start), the
    /// operations a replica holding `have` lacks and can apply in that
    /// order: per origin, each one's seq is one past the previous (or past
    /// `have`). Operations that would leave a gap are skipped.
    fn read_ops(
        &self,
        db: &str,
        have: &VersionVector,
        from: u64,
        limits: ReadLimits,
    ) -> Result<OpsRead, Self::Error>;

    /// [`SyncStore::read_ops`], the operations packed as an `Ops` message
    /// sends them. A store that keeps its log in that form copies them
    /// rather than building each one.
    fn read_ops_packed(
        &self,
        db: &str,
        have: &VersionVector,
        from: u64,
        limits: ReadLimits,
    ) -> Result<PackedRead, Self::Error> {
        Ok(self.read_ops(db, have, from, limits)?.packed())
    }

    /// Applies operations from other replicas, in order, and appends them
    /// to the op log, all in one atomic step. A store may return before
    /// the step is durable (by the database's durability): it then
    /// publishes the new head only once it is, and whoever drives the
    /// engine holds back what the engine tells peers until then (the
    /// agent's store and driver do; see `Store::commit_generation`). The
    /// sync state read after this counts the operations. The caller passes
    /// only operations that extend the vector contiguously. The replica's
    /// clock moves to at least the latest operation's.
    ///
    /// A write of a device the screen restricts is checked against the
    /// record as the operations before it leave it (`View::check_write`);
    /// a refused one changes nothing and is logged as `OpBody::Rejected`.
    ///
    /// In an end-to-end encrypted database, a replica holding the key
    /// opens each body first; one that does not open is neither applied
    /// nor logged, and stops its origin's operations there. A replica
    /// without any key logs sealed bodies without applying them.
    fn apply_ops(
        &mut self,
        db: &str,
        ops: Vec<Op>,
        screen: &WriteScreen,
    ) -> Result<Applied, Self::Error>;

    /// [`SyncStore::apply_ops`] of ops that came, some or all, as `whole`
    /// chunks of the sender's log: the result is the same, and a store
    /// that keeps its log in chunks may keep one as it came.
    fn apply_chunks(
        &mut self,
        db: &str,
        ops: Vec<Op>,
        screen: &WriteScreen,
        whole: Vec<WholeChunk>,
    ) -> Result<Applied, Self::Error> {
        let _ = whole;
        self.apply_ops(db, ops, screen)
    }

    /// Reads the records after key `after` (from the start when `None`)
    /// in their stored form, tombstones included.
    fn read_snapshot(
        &self,
        db: &str,
        after: Option<&[u8]>,
        limits: ReadLimits,
    ) -> Result<SnapshotRead, Self::Error>;

    /// Merges records of another replica's snapshot into this one. With
    /// `complete`, the snapshot's last piece: every piece has been merged,
    /// so the vector and the floor rise to at least `complete`'s. With
    /// `replace` (a partial replica's snapshot), records in the piece's
    /// range that it does not carry are dropped first, unless they hold a
    /// write of this replica's the sender did not have; a cut snapshot
    /// leaves the state `lacking`, a whole one's last piece ends that.
    fn merge_snapshot(
        &mut self,
        db: &str,
        records: Vec<SnapshotRecord>,
        complete: Option<&VersionVector>,
        replace: Option<Replace<'_>>,
    ) -> Result<(), Self::Error>;

    /// Reads records by key, in their stored form (tombstones included);
    /// `None` for a key never written here.
    fn read_records(&self, db: &str, keys: &[Vec<u8>])
    -> Result<Vec<Option<Vec<u8>>>, Self::Error>;

    /// On a partial replica: merges projected records, drops evicted ones
    /// (not deleting them: they only leave this replica) unless they hold
    /// a write of this replica's the sender did not have, and raises the
    /// vector over the operations covered; the state is `lacking` from then
    /// on. Local subscribers see each
    /// change, and a rejection of this replica's own write with its
    /// reason. Durable when this returns.
    fn merge_projected(&mut self, db: &str, projection: Projection) -> Result<(), Self::Error>;

    /// Writes each record of `records` again as this replica holds it, as
    /// new local operations stamped after `after` (the clock first moves
    /// past it), so that they win over writes made up to `after`. `now_ms`
    /// is the wall time. Durable when this returns, like a local write.
    /// Returns the operations written.
    fn correct(
        &mut self,
        db: &str,
        records: Vec<Correction>,
        after: Hlc,
        now_ms: u64,
    ) -> Result<Vec<Op>, Self::Error>;

    /// On a replica holding an end-to-end encrypted database's key: its
    /// records as of its vector, sealed in parts. `None` where there is
    /// nothing to make one from.
    fn make_checkpoint(&self, db: &str) -> Result<Option<Checkpoint>, Self::Error> {
        let _ = db;
        Ok(None)
    }

    /// On a replica without the key: the sealed checkpoint it keeps.
    fn checkpoint(&self, db: &str) -> Result<Option<Checkpoint>, Self::Error> {
        let _ = db;
        Ok(None)
    }

    /// Takes a whole checkpoint. A replica without the key keeps it if it
    /// holds more than the one kept, raises its vector and floor to it and
    /// drops the logged operations it covers; one with the key merges its
    /// records as a snapshot's. Returns whether it was taken. Durable when
    /// this returns.
    fn take_checkpoint(&mut self, db: &str, checkpoint: Checkpoint) -> Result<bool, Self::Error> {
        let _ = (db, checkpoint);
        Ok(false)
    }

    /// Removes from the log operations every replica holds (at or below
    /// `stable`), and tombstones of deletes made at or before `tombstones`
    /// (a clock reading before which every replica has every operation).
    /// The store may keep more than it is allowed to remove.
    fn compact(
        &mut self,
        db: &str,
        stable: &VersionVector,
        tombstones: Hlc,
    ) -> Result<Compacted, Self::Error>;
}
