//! The writer thread: the only code that changes the store.
//!
//! It takes commands in order from a channel. Consecutive write commands
//! are gathered into one commit group: each command's writes are planned
//! (validated, stamped, merged into the records) and appended to one fjall
//! batch, which is committed once, with fsync if any database in the group
//! asks for it. Only then are the writers answered and the heads moved.
//!
//! A command that fails validation changes nothing and fails alone. A
//! commit that fails fails the whole group, and the counters go back to
//! where they were, so no cursor or sequence number is ever skipped.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use blazedb_proto::api::{
    DbInfo, DbSettings, Durability, Encryption, SyncMode, Write, WriteResult,
};
use blazedb_proto::value::MAX_VALUE_DEPTH;
use blazedb_proto::{
    DeviceId, Fields, Hlc, Op, OpBody, PutParts, SnapshotRecord, Value, VersionVector, codec,
};
use fjall::{Keyspace, PersistMode, Slice};
use prometheus_client::metrics::histogram::Histogram;
use rustc_hash::FxHashMap;

use super::journal_sync::JournalSync;
use super::record::{Stamp, StoredRecord};
use super::sealing::Clear;
use super::stamped::{self, Holes};
use super::syncer::{Publication, Syncer};
use super::{
    CollectionMeta, DbMeta, DbState, META_NEXT_DB_ID, Store, StoreError, StoreNotice, StoreOptions,
    SyncMeta, collection_meta_key, db_meta_key, dropped_key, lock, new_epoch, open_keyspaces,
    read_lock, sync_meta_key, write_lock,
};
use super::{keys, oplog};
use crate::crypto::seal::ContentKey;
use crate::sync::hlc::HlcClock;
use crate::sync::{WholeChunk, WriteScreen};

/// How a command's outcome is handed back: called once, on the writer
/// thread, so it must not block.
pub type Reply<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;

/// A request to the writer thread.
pub enum Command {
    /// Applies writes to one database atomically.
    Write {
        /// The database's name, looked up in queue order, so a write queued
        /// behind the creation of its database finds it.
        db: String,
        /// The writes, in order (see [`prepare`]).
        writes: Vec<PreparedWrite>,
        /// Gets one result per write.
        reply: Reply<Vec<WriteResult>>,
    },
    /// Creates a database.
    CreateDb {
        /// Its name.
        name: String,
        /// Its settings.
        settings: DbSettings,
        /// Succeed if it exists.
        if_not_exists: bool,
        /// For an `e2e` database, make its first content key here (this
        /// device creates it, rather than taking it from a peer).
        make_key: bool,
        /// Gets the database's description.
        reply: Reply<DbInfo>,
    },
    /// Takes a whole sealed checkpoint (see
    /// [`SyncStore::take_checkpoint`](crate::sync::SyncStore::take_checkpoint)).
    TakeCheckpoint {
        /// The database's name.
        db: String,
        /// The checkpoint.
        checkpoint: crate::sync::Checkpoint,
        /// Gets whether it was taken.
        reply: Reply<bool>,
    },
    /// Applies every op logged for an `e2e` database this device held
    /// blind until it got the database's key.
    Materialize {
        /// The database's name.
        db: String,
        /// Gets how many ops were applied.
        reply: Reply<u64>,
    },
    /// Changes a database's sync mode.
    SetSyncMode {
        /// The database.
        db: String,
        /// The new mode.
        mode: SyncMode,
        /// What this device asks to receive, when it changes.
        wish: Option<blazedb_proto::rules::SyncWish>,
        /// Gets the database's description.
        reply: Reply<DbInfo>,
    },
    /// Changes a database's conflict priority or durability.
    SetSettings {
        /// The database.
        db: String,
        /// The new priority, if it changes.
        priority: Option<u8>,
        /// The new durability, if it changes.
        durability: Option<Durability>,
        /// Gets the database's description.
        reply: Reply<DbInfo>,
    },
    /// Sets which devices a database syncs with, and which way.
    SetPeers {
        /// The database.
        db: String,
        /// The devices; every member when `None`.
        peers: Option<Vec<(DeviceId, SyncMode)>>,
        /// Gets the database's description.
        reply: Reply<DbInfo>,
    },
    /// Deletes a database.
    DropDb {
        /// Its name.
        name: String,
        /// Succeed if it does not exist.
        if_exists: bool,
        /// Gets whether it existed.
        reply: Reply<bool>,
    },
    /// Adds or removes a secondary index.
    Index {
        /// The database's name.
        db: String,
        /// The collection.
        collection: String,
        /// The field.
        field: String,
        /// Add (true) or remove (false).
        create: bool,
        /// Gets whether anything changed.
        reply: Reply<bool>,
    },
    /// Applies operations from other replicas (see
    /// [`SyncStore::apply_ops`](crate::sync::SyncStore::apply_ops)).
    ApplyOps {
        /// The database's name.
        db: String,
        /// The operations, each extending the vector by one.
        ops: Vec<Op>,
        /// The writers whose operations are checked first.
        screen: WriteScreen,
        /// Runs of the operations that came as whole chunks of the
        /// sender's log, which may be logged as they came.
        whole: Vec<WholeChunk>,
        /// Answered once they are durable, with the refused writes and the
        /// ops that did not open.
        reply: Reply<crate::sync::Applied>,
    },
    /// Merges records of another replica's snapshot.
    MergeSnapshot {
        /// The database's name.
        db: String,
        /// The records.
        records: Vec<SnapshotRecord>,
        /// With the last piece, the snapshot's vector.
        complete: Option<VersionVector>,
        /// For a partial replica, the key range the piece replaces and how
        /// many of this device's writes the sender held.
        replace: Option<(blazedb_proto::Span, u64, bool)>,
        /// Answered once they are durable.
        reply: Reply<()>,
    },
    /// On a partial replica, takes a full replica's projection.
    MergeProjected {
        /// The database's name.
        db: String,
        /// What to merge, drop and count as held.
        projection: crate::sync::Projection,
        /// Answered once it is durable.
        reply: Reply<()>,
    },
    /// Removes operations and tombstones every replica holds.
    Compact {
        /// The database's name.
        db: String,
        /// Operations at or below this may go.
        stable: VersionVector,
        /// Tombstones of deletes at or before this may go.
        tombstones: Hlc,
        /// Gets what was removed.
        reply: Reply<crate::sync::Compacted>,
    },
    /// Moves the clock past `hlc`, so later local writes are stamped
    /// after it.
    Observe {
        /// The reading to move past.
        hlc: Hlc,
        /// Answered at once.
        reply: Reply<()>,
    },
    /// Reads every entry of every database to find damaged files, and
    /// rebuilds the damaged databases if asked (see [`super::repair`]).
    Repair {
        /// Rebuild, rather than only look.
        rebuild: bool,
        /// Gets what was found in each database.
        reply: Reply<Vec<super::repair::DbRepair>>,
    },
    /// Syncs everything and stops the writer.
    Shutdown {
        /// Answered once everything is on disk.
        reply: Reply<()>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Command::Write { .. } => "Write",
            Command::CreateDb { .. } => "CreateDb",
            Command::Materialize { .. } => "Materialize",
            Command::TakeCheckpoint { .. } => "TakeCheckpoint",
            Command::DropDb { .. } => "DropDb",
            Command::SetSyncMode { .. } => "SetSyncMode",
            Command::SetSettings { .. } => "SetSettings",
            Command::SetPeers { .. } => "SetPeers",
            Command::Index { .. } => "Index",
            Command::ApplyOps { .. } => "ApplyOps",
            Command::MergeSnapshot { .. } => "MergeSnapshot",
            Command::MergeProjected { .. } => "MergeProjected",
            Command::Compact { .. } => "Compact",
            Command::Observe { .. } => "Observe",
            Command::Repair { .. } => "Repair",
            Command::Shutdown { .. } => "Shutdown",
        };
        f.write_str(name)
    }
}

impl Command {
    /// Answers the command with an error without running it.
    pub fn fail(self, e: StoreError) {
        match self {
            Command::Write { reply, .. } => reply(Err(e)),
            Command::CreateDb { reply, .. } => reply(Err(e)),
            Command::Materialize { reply, .. } => reply(Err(e)),
            Command::TakeCheckpoint { reply, .. } => reply(Err(e)),
            Command::DropDb { reply, .. } | Command::Index { reply, .. } => reply(Err(e)),
            Command::SetSyncMode { reply, .. } => reply(Err(e)),
            Command::SetSettings { reply, .. } => reply(Err(e)),
            Command::SetPeers { reply, .. } => reply(Err(e)),
            Command::ApplyOps { reply, .. } => reply(Err(e)),
            Command::MergeSnapshot { reply, .. } | Command::MergeProjected { reply, .. } => {
                reply(Err(e))
            }
            Command::Compact { reply, .. } => reply(Err(e)),
            Command::Repair { reply, .. } => reply(Err(e)),
            Command::Observe { reply, .. } | Command::Shutdown { reply } => reply(Err(e)),
        }
    }
}

/// Where a database's log ends, as found when the store opens.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LogTail {
    pub(crate) head: u64,
    pub(crate) local_seq: u64,
    pub(crate) max_hlc: Hlc,
}

/// The counters recovered from every database's log.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    counters: FxHashMap<u32, Counters>,
    max_hlc: Hlc,
}

impl Recovered {
    /// The latest clock reading found in any log.
    pub(crate) fn max_hlc(&self) -> Hlc {
        self.max_hlc
    }

    pub(crate) fn note(&mut self, db_id: u32, tail: &LogTail) {
        self.counters.insert(
            db_id,
            Counters {
                head: tail.head,
                local_seq: tail.local_seq,
            },
        );
        self.max_hlc = self.max_hlc.max(tail.max_hlc);
    }
}

/// Reads the end of an op log: its last cursor, and from the entries after
/// `from` (where the stored vector was written), the latest clock reading
/// and how far each writer's seqs went, into `vector`.
pub(crate) fn recover_log_tail(
    log: &Keyspace,
    from: u64,
    vector: &mut VersionVector,
) -> Result<LogTail, StoreError> {
    let mut tail = LogTail::default();
    if let Some(newest) = oplog::newest_first(log).next() {
        tail.head = newest?.cursor;
    }
    for entry in oplog::after(log, from) {
        let op = entry?.op()?;
        tail.max_hlc = tail.max_hlc.max(op.hlc);
        // Seq 0 marks a change a partial replica logged for its
        // subscribers, not a write.
        let writer = op.writer();
        if op.seq > vector.get(&writer) {
            vector.set(writer, op.seq);
        }
    }
    Ok(tail)
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    /// The last cursor used.
    pub(super) head: u64,
    /// The last local sequence number used.
    pub(super) local_seq: u64,
}

/// One change to a keyspace, waiting for its commit.
pub(super) enum Effect {
    Insert(Keyspace, Slice, Slice),
    Remove(Keyspace, Slice),
    /// Record `key` of database `db` stored as `bytes`, or removed when
    /// `None`: apart from other entries, so that the commit forgets it in
    /// the record cache. Every record change is one of these.
    Record {
        db: u32,
        records: Keyspace,
        key: Slice,
        bytes: Option<Slice>,
    },
    /// An op-log entry of database `db` at `cursor`: the group's entries
    /// of one database are stored as chunks ([`oplog`]).
    Log {
        db: u32,
        log: Keyspace,
        cursor: u64,
        op: Op,
        /// `op.body` holds a put's parts ([`blazedb_proto::PutParts::stored`]),
        /// logged as they are, rather than its body.
        as_parts: bool,
    },
    /// `count` op-log entries of database `db` from `cursor` on, as a
    /// peer's log stored them: one chunk, kept as it came.
    LogChunk {
        db: u32,
        log: Keyspace,
        cursor: u64,
        count: usize,
        stored: Vec<u8>,
    },
}

/// Records as a plan or a group leaves them, encoded, by database and key,
/// so that later writes read them before they are committed.
///
/// The bytes are shared with the effect that stores them, and decoded only
/// when a later write reads the same record: most writes are never read
/// back within their group. So records are only listed as they come, and
/// indexed by key when a write first looks one up (from where the index
/// stopped): a group of puts that read nothing never hashes a key, where
/// an index kept up to date hashed each twice (its plan's, then its
/// group's). It is bounded by the group's size.
#[derive(Default)]
pub(super) struct Overlay {
    /// The records in the order they were left; a later one wins.
    records: Vec<(u32, Slice, Slice)>,
    /// How many of `records` are indexed, and where each key's latest
    /// record among those is.
    index: std::cell::RefCell<(usize, KeyIndex)>,
}

/// Positions in an overlay's records, by database and key.
type KeyIndex = FxHashMap<u32, FxHashMap<Slice, usize>>;

impl Overlay {
    pub(super) fn get(&self, db: u32, key: &[u8]) -> Option<Slice> {
        if self.records.is_empty() {
            return None;
        }
        let mut index = self.index.borrow_mut();
        let (indexed, map) = &mut *index;
        for (at, (db, key, _)) in self.records.iter().enumerate().skip(*indexed) {
            map.entry(*db).or_default().insert(key.clone(), at);
        }
        *indexed = self.records.len();
        let at = *map.get(&db)?.get(key)?;
        Some(self.records[at].2.clone())
    }

    pub(super) fn insert(&mut self, db: u32, key: Slice, record: Slice) {
        self.records.push((db, key, record));
    }

    /// Takes in a later plan's records, which win over ours.
    pub(super) fn absorb(&mut self, later: Overlay) {
        if self.records.is_empty() {
            self.records = later.records;
        } else {
            self.records.extend(later.records);
        }
    }
}

pub(super) type WriteOutcome = Result<Vec<WriteResult>, StoreError>;

/// Writes gathered for one commit.
pub(super) struct Group {
    /// Each plan's effects, in the order planned. The plans' own lists are
    /// kept: appending them into one moved every effect a second time.
    pub(super) effects: Vec<Vec<Effect>>,
    /// Records as this group leaves them, so later writes in the group see
    /// earlier ones before they are committed.
    pub(super) overlay: Overlay,
    pub(super) new_collections: HashSet<(u32, String)>,
    pub(super) heads: HashMap<u32, (Arc<DbState>, u64)>,
    pub(super) replies: Vec<(Reply<Vec<WriteResult>>, WriteOutcome)>,
    pub(super) fsync: bool,
    pub(super) buffered: bool,
    /// When a commit still to be synced started, for the commit-time
    /// metric.
    pub(super) timer: Option<(Histogram, Instant)>,
    /// A commit still to be synced: its generation
    /// ([`Store::commit_generation`]), else zero.
    pub(super) generation: u64,
}

impl Group {
    pub(super) fn new() -> Self {
        Group {
            effects: Vec::new(),
            overlay: Overlay::default(),
            new_collections: HashSet::new(),
            heads: HashMap::new(),
            replies: Vec::new(),
            fsync: false,
            buffered: false,
            timer: None,
            generation: 0,
        }
    }
}

/// What every write of one command shares: the database's state does not
/// change between them (the writer thread plans nothing else meanwhile).
struct CommandScope {
    /// The key an end-to-end encrypted database's ops are sealed with.
    seal_with: Option<ContentKey>,
    /// The highest priority of any write the database holds.
    max_priority: u8,
    /// The collection written last and its indexed fields.
    indexes: Option<(String, BTreeSet<String>)>,
    /// The wall clock as the command's planning started, read once: each
    /// write's clock reading is the next after it (reading the time for
    /// every write of a batch cost more than its clock reading).
    now_ms: u64,
}

/// The highest conflict priority a database may give its writes.
pub(crate) const MAX_PRIORITY: u8 = 127;

/// A commit group of at least this many store entries (records, log
/// entries, index entries) is synced by the syncer even when no command
/// waits behind it.
const HAND_OVER_ENTRIES: usize = 64;

/// Limits on names, so keys stay small and unambiguous.
const MAX_NAME: usize = 255;
const MAX_ID: usize = 1024;

pub(crate) fn validate_name(kind: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') || name.starts_with('$') {
        return Err(StoreError::InvalidArgument(format!(
            "{kind} name {name:?} is not allowed: use 1 to {MAX_NAME} bytes, \
             no NUL byte, not starting with '$'"
        )));
    }
    Ok(())
}

fn validate_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(StoreError::InvalidArgument(format!(
            "record id of {} bytes is not allowed: use 1 to {MAX_ID} bytes",
            id.len()
        )));
    }
    Ok(())
}

fn validate_fields<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<(), StoreError> {
    names
        .into_iter()
        .try_for_each(|n| validate_name("field", n))
}

/// Refuses a value nested deeper than a record read back, an event or a
/// synced operation could carry.
fn validate_depth(fields: &Fields) -> Result<(), StoreError> {
    for (name, v) in fields {
        let depth = v.depth();
        if depth > MAX_VALUE_DEPTH {
            return Err(StoreError::InvalidArgument(format!(
                "field {name:?} nests {depth} lists and maps deep; a value may nest at most \
                 {MAX_VALUE_DEPTH}"
            )));
        }
    }
    Ok(())
}

fn new_id() -> String {
    let mut bytes = [0u8; 16];
    // Without an OS random source nothing else here would work either.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = nanos.to_be_bytes();
    }
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// A write validated and encoded on the caller's thread, so that the writer
/// thread only stamps and stores it.
#[derive(Debug)]
pub struct PreparedWrite {
    body: Body,
    key: Slice,
    /// The encoded operation: what the op-log entry carries; with
    /// `parts`, a put's parts ([`blazedb_proto::PutParts::stored`]), as
    /// the log keeps them, rather than its body.
    encoded: Vec<u8>,
    parts: bool,
    /// For a put, the record it makes when it replaces everything before
    /// it, waiting for its clock reading.
    fresh_record: Option<Holes>,
    /// The conflict priority it was encoded with.
    priority: u8,
}

/// A prepared write's operation.
#[derive(Debug)]
enum Body {
    Decoded(OpBody),
    /// A put prepared from its fields' encoded values: the operation is
    /// decoded from its encoded parts only when the record must be merged
    /// or indexed, which a put that makes a record new does not need.
    Put {
        collection: String,
        id: String,
    },
}

impl PreparedWrite {
    /// The length of the write's encoded body: its collection, id and
    /// fields.
    pub fn body_len(&self) -> usize {
        if self.parts {
            self.encoded.len() + PutParts::KEYS_LEN
        } else {
            self.encoded.len()
        }
    }

    /// The collection it writes.
    pub fn collection(&self) -> &str {
        match &self.body {
            Body::Decoded(b) => b.collection(),
            Body::Put { collection, .. } => collection,
        }
    }

    /// The record it writes.
    pub fn id(&self) -> &str {
        match &self.body {
            Body::Decoded(b) => b.id(),
            Body::Put { id, .. } => id,
        }
    }
}

/// A prepared write's operation: `body` when it was prepared decoded, else
/// decoded from `encoded`, a put's parts when `as_parts`.
fn decoded(body: Option<OpBody>, encoded: &[u8], as_parts: bool) -> Result<OpBody, StoreError> {
    match body {
        Some(b) => Ok(b),
        None if as_parts => Ok(OpBody::decode(&body_of_parts(encoded)?)?),
        None => Ok(OpBody::decode(encoded)?),
    }
}

/// The body of a put prepared from its fields' encoded values, from the
/// parts it was prepared as.
fn body_of_parts(parts: &[u8]) -> Result<Vec<u8>, StoreError> {
    PutParts::of_stored(parts).map(|p| p.body()).ok_or_else(|| {
        StoreError::Corrupt("a prepared put's parts do not start with its collection and id".into())
    })
}

/// [`prepare`] for puts given as their fields' encoded values (checked,
/// as [`blazedb_proto::RawPuts`] reads them): the values are copied into
/// the op and the record, never decoded. Each op is kept as the parts the
/// log stores, which are also what a seal covers.
pub fn prepare_puts(
    origin: &DeviceId,
    incarnation: u32,
    priority: u8,
    puts: &[blazedb_proto::RawWrite<'_>],
) -> Result<Vec<PreparedWrite>, StoreError> {
    let writer = origin.writer(incarnation);
    // Collected into a list sized at once: collecting `Result`s grows it
    // from empty, copying every prepared write several times.
    let mut prepared = Vec::with_capacity(puts.len());
    for put in puts {
        for (name, _) in &put.fields {
            validate_name("field", name)?;
        }
        validate_name("collection", put.collection)?;
        let id = put.id.map_or_else(new_id, str::to_owned);
        validate_id(&id)?;
        prepared.push(PreparedWrite {
            key: keys::record_key_slice(put.collection, &id),
            encoded: blazedb_proto::put_parts(put.collection, &id, &put.fields),
            parts: true,
            fresh_record: Some(stamped::fresh_put_record_raw(
                &writer,
                priority,
                &put.fields,
            )),
            priority,
            body: Body::Put {
                collection: put.collection.to_owned(),
                id,
            },
        });
    }
    Ok(prepared)
}

/// Validates writes made on this device (`origin`, in its write
/// incarnation `incarnation`) to a database whose conflict priority is
/// `priority`, and encodes what can be encoded before they are stamped.
pub fn prepare(
    origin: &DeviceId,
    incarnation: u32,
    priority: u8,
    writes: Vec<Write>,
) -> Result<Vec<PreparedWrite>, StoreError> {
    writes
        .into_iter()
        .map(|write| {
            let body = match write {
                Write::Put {
                    collection,
                    id,
                    fields,
                } => {
                    validate_fields(fields.keys())?;
                    validate_depth(&fields)?;
                    OpBody::Put {
                        id: id.unwrap_or_else(new_id),
                        collection,
                        fields,
                    }
                }
                Write::Patch {
                    collection,
                    id,
                    set,
                    unset,
                } => {
                    validate_fields(set.keys().chain(&unset))?;
                    validate_depth(&set)?;
                    if let Some(both) = unset.iter().find(|f| set.contains_key(*f)) {
                        return Err(StoreError::InvalidArgument(format!(
                            "field {both:?} is both set and unset; a patch may do one or the other"
                        )));
                    }
                    OpBody::Patch {
                        collection,
                        id,
                        set,
                        unset,
                    }
                }
                Write::Delete { collection, id } => OpBody::Delete { collection, id },
            };
            validate_name("collection", body.collection())?;
            validate_id(body.id())?;
            let key = keys::record_key_slice(body.collection(), body.id());
            let encoded = body.encode()?;
            let writer = origin.writer(incarnation);
            let fresh_record = match &body {
                OpBody::Put { fields, .. } => {
                    Some(stamped::fresh_put_record(&writer, priority, fields)?)
                }
                _ => None,
            };
            Ok(PreparedWrite {
                body: Body::Decoded(body),
                key,
                encoded,
                parts: false,
                fresh_record,
                priority,
            })
        })
        .collect()
}

pub(crate) struct Writer {
    pub(super) store: Store,
    pub(super) fj: fjall::Database,
    pub(super) meta: Keyspace,
    rx: Receiver<Command>,
    pub(super) options: StoreOptions,
    pub(super) counters: FxHashMap<u32, Counters>,
    pub(super) clock: HlcClock,
    next_db_id: u32,
    unsynced_since: Option<Instant>,
    /// When the last command was done.
    last_command: Instant,
    write_buffer: super::write_buffer::WriteBuffer,
    /// Syncs the journal; shared with the syncer.
    journal: Arc<JournalSync>,
    /// Syncs committed groups while the next is planned.
    pub(super) syncer: Syncer,
    /// The records that may be tombstones, for compaction.
    pub(super) tombstones: super::tombstone_keys::TombstoneKeys,
}

impl Writer {
    pub(crate) fn new(
        store: Store,
        fj: fjall::Database,
        meta: Keyspace,
        rx: Receiver<Command>,
        options: StoreOptions,
        recovered: Recovered,
        next_db_id: u32,
    ) -> Result<Self, StoreError> {
        let journal = Arc::new(JournalSync::new(fj.clone(), store.path()));
        Ok(Writer {
            write_buffer: super::write_buffer::WriteBuffer::new(options.write_buffer_bytes),
            syncer: Syncer::start(journal.clone(), store.clone())?,
            tombstones: Default::default(),
            journal,
            store,
            fj,
            meta,
            rx,
            options,
            counters: recovered.counters,
            clock: HlcClock::new(recovered.max_hlc),
            next_db_id,
            unsynced_since: None,
            last_command: Instant::now(),
        })
    }

    pub(crate) fn run(mut self) {
        let mut next: Option<Command> = None;
        loop {
            let cmd = match next.take() {
                Some(c) => c,
                None => match self.rx.recv_timeout(self.options.flush_interval) {
                    Ok(c) => c,
                    Err(RecvTimeoutError::Timeout) => {
                        self.sync_if_due(true);
                        self.flush_when_idle();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            if !matches!(cmd, Command::Write { .. } | Command::ApplyOps { .. }) {
                // Every other command sees, and answers after, every write
                // before it.
                self.syncer.settle();
            }
            match cmd {
                Command::Write { db, writes, reply } => {
                    next = self.commit_group(db, writes, reply);
                }
                Command::CreateDb {
                    name,
                    settings,
                    if_not_exists,
                    make_key,
                    reply,
                } => reply(self.create_db(&name, settings, if_not_exists, make_key)),
                Command::Materialize { db, reply } => reply(self.materialize(&db)),
                Command::TakeCheckpoint {
                    db,
                    checkpoint,
                    reply,
                } => reply(self.take_checkpoint(&db, checkpoint)),
                Command::DropDb {
                    name,
                    if_exists,
                    reply,
                } => reply(self.drop_db(&name, if_exists)),
                Command::SetSyncMode {
                    db,
                    mode,
                    wish,
                    reply,
                } => reply(self.set_sync_mode(&db, mode, wish)),
                Command::SetSettings {
                    db,
                    priority,
                    durability,
                    reply,
                } => reply(self.set_settings(&db, priority, durability)),
                Command::SetPeers { db, peers, reply } => reply(self.set_peers(&db, peers)),
                Command::Repair { rebuild, reply } => reply(self.repair(rebuild)),
                Command::Index {
                    db,
                    collection,
                    field,
                    create,
                    reply,
                } => reply(
                    self.store
                        .db(&db)
                        .and_then(|db| self.set_index(&db, &collection, &field, create)),
                ),
                Command::ApplyOps {
                    db,
                    ops,
                    screen,
                    whole,
                    reply,
                } => reply(self.apply_ops(&db, ops, &screen, whole)),
                Command::MergeSnapshot {
                    db,
                    records,
                    complete,
                    replace,
                    reply,
                } => reply(self.merge_snapshot(&db, records, complete.as_ref(), replace)),
                Command::MergeProjected {
                    db,
                    projection,
                    reply,
                } => reply(self.merge_projected(&db, projection)),
                Command::Compact {
                    db,
                    stable,
                    tombstones,
                    reply,
                } => reply(self.compact(&db, &stable, tombstones)),
                Command::Observe { hlc, reply } => {
                    self.clock.observe(hlc);
                    reply(Ok(()));
                }
                Command::Shutdown { reply } => {
                    // The mark says the store is exactly as this run left
                    // it, so it is made only once everything is on disk.
                    let res = self
                        .fj
                        .persist(PersistMode::SyncAll)
                        .map_err(Into::into)
                        .and_then(|()| {
                            super::incarnation::mark_clean_stop(
                                self.store.path(),
                                self.store.incarnation(),
                            )
                        });
                    reply(res);
                    break;
                }
            }
            self.sync_if_due(false);
            self.keep_write_buffer();
            self.last_command = Instant::now();
        }
        // Commands that raced with shutdown are answered, not dropped.
        while let Ok(cmd) = self.rx.try_recv() {
            cmd.fail(StoreError::ShuttingDown);
        }
    }

    /// Syncs buffered writes to disk once they have waited a flush interval
    /// (or whenever the writer is idle, if `idle`).
    fn sync_if_due(&mut self, idle: bool) {
        let Some(since) = self.unsynced_since else {
            return;
        };
        if idle || since.elapsed() >= self.options.flush_interval {
            // One sync at a time: after a sync of the journal fails, Linux
            // may report a second one at once as done, the failed pages
            // dropped, before fjall has marked itself failed.
            self.syncer.settle();
            match self.journal.sync() {
                Ok(()) => self.unsynced_since = None,
                Err(e) => {
                    tracing::error!("syncing buffered writes failed: {e}");
                    self.store.note_failed(&e);
                }
            }
        }
    }

    /// Flushes the memtables once the writer has been idle for a while
    /// (see `store/write_buffer.rs`).
    fn flush_when_idle(&mut self) {
        if !self
            .write_buffer
            .idle_flush_due(self.last_command.elapsed(), self.fj.write_buffer_size())
        {
            return;
        }
        let dbs = read_lock(&self.store.inner.dbs);
        if let Err(e) = self.write_buffer.seal_all(dbs.values().map(|db| &**db)) {
            tracing::error!("flushing memtables while idle failed: {e}");
        }
    }

    /// Seals the largest memtables for flushing when the store's
    /// memtables hold more than their budget.
    fn keep_write_buffer(&mut self) {
        if !self.write_buffer.due(self.fj.write_buffer_size()) {
            return;
        }
        let dbs = read_lock(&self.store.inner.dbs);
        if let Err(e) = self
            .write_buffer
            .seal_over_budget(dbs.values().map(|db| &**db))
        {
            tracing::error!("flushing a memtable failed: {e}");
        }
    }

    /// Plans the first write command and every write command queued behind
    /// it, commits them as one batch and answers them. Returns a non-write
    /// command it took from the queue, to run next.
    fn commit_group(
        &mut self,
        db: String,
        writes: Vec<PreparedWrite>,
        reply: Reply<Vec<WriteResult>>,
    ) -> Option<Command> {
        let start_counters = self.counters.clone();
        let start_clock = self.clock;
        let mut group = Group::new();
        self.plan_command(&mut group, db, writes, reply);
        let mut leftover = None;
        while group.replies.len() < self.options.max_group {
            match self.rx.try_recv() {
                Ok(Command::Write { db, writes, reply }) => {
                    self.plan_command(&mut group, db, writes, reply);
                }
                Ok(other) => {
                    leftover = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }

        let entries: usize = group.effects.iter().map(Vec::len).sum();
        let commit = if entries == 0 {
            Ok(())
        } else {
            self.commit(&mut group, false)
        };
        match commit {
            Ok(()) => {
                let publication = self.publication(&mut group);
                if leftover.is_none() {
                    leftover = self.rx.try_recv().ok();
                }
                // A large group is a client streaming batches, whose next
                // most likely arrives during this fsync: the writer stays
                // free for it. A small one is synced here, sparing a lone
                // write the hop to the syncer.
                let hand_over = leftover.is_some() || entries >= HAND_OVER_ENTRIES;
                if !self.syncer.is_idle() || (group.fsync && hand_over) {
                    // Published in commit order, once synced; meanwhile the
                    // next command is planned.
                    self.syncer.hand_over(publication);
                } else if group.fsync {
                    match self.journal.sync() {
                        Ok(()) => publication.publish(&self.store),
                        Err(e) => {
                            tracing::error!(
                                "syncing a commit failed; the store takes no more writes until \
                                 the agent restarts: {e}"
                            );
                            publication.fail(&self.store, &e);
                        }
                    }
                } else {
                    publication.publish(&self.store);
                }
            }
            Err(e) => {
                tracing::error!("commit of {} writes failed: {e}", group.replies.len());
                self.counters = start_counters;
                self.clock = start_clock;
                for (reply, result) in group.replies {
                    reply(result.and_then(|_| Err(e.for_another())));
                }
            }
        }
        leftover
    }

    /// What a committed group makes visible once durable (see
    /// [`Publication::publish`]), taken now: later groups move the counters
    /// and the clock on. The collections it created are listed at once, as
    /// its records can be read at once: later plans find them there.
    pub(super) fn publication(&self, group: &mut Group) -> Publication {
        for (id, name) in &group.new_collections {
            if let Some((db, _)) = group.heads.get(id) {
                write_lock(&db.collections).entry(name.clone()).or_default();
            }
        }
        let heads = group
            .heads
            .values()
            .map(|(db, head)| {
                let local_seq = self.counters.get(&db.id).map(|c| c.local_seq);
                (db.clone(), *head, local_seq)
            })
            .collect();
        Publication {
            heads,
            clock: self.clock.last(),
            replies: std::mem::take(&mut group.replies),
            timer: group.timer.take(),
            generation: group.generation,
        }
    }

    /// Commits a group's effects as one fjall batch; a group that asks
    /// for fsync is synced in the commit only when `sync_now` (otherwise
    /// its journal is written, and synced before it is published).
    pub(super) fn commit(&mut self, group: &mut Group, sync_now: bool) -> Result<(), StoreError> {
        // Room for every effect's entry (log entries share a few chunks):
        // a batch grown a push at a time copied its items a dozen times
        // for one group. `Buffer` is what `fj.batch()` starts with.
        let items = group.effects.iter().map(Vec::len).sum();
        let mut batch = fjall::OwnedWriteBatch::with_capacity(self.fj.clone(), items)
            .durability(Some(PersistMode::Buffer));
        // Few databases per group: a list beats a map.
        let mut logs: Vec<(u32, Keyspace, oplog::Chunker)> = Vec::new();
        // What each database's chunks will hold, so they are sized once.
        let mut expected: Vec<(u32, usize, usize)> = Vec::new();
        for effect in group.effects.iter().flatten() {
            if let Effect::Log { db, op, .. } = effect {
                match expected.iter_mut().find(|(id, ..)| id == db) {
                    Some((_, count, bytes)) => {
                        *count += 1;
                        *bytes += op.body.len();
                    }
                    None => expected.push((*db, 1, op.body.len())),
                }
            }
        }
        // The records written, to forget in the record cache once
        // committed.
        let mut written: Vec<(u32, Slice)> = Vec::with_capacity(items);
        for effect in group.effects.drain(..).flatten() {
            match effect {
                Effect::Insert(ks, k, v) => batch.insert(&ks, k, v),
                Effect::Remove(ks, k) => batch.remove(&ks, k),
                Effect::Record {
                    db,
                    records,
                    key,
                    bytes,
                } => {
                    // Noted before the commit: one that fails fails the
                    // store (fjall takes no more writes), and the next
                    // start walks the records again.
                    self.tombstones.wrote(db, &key, bytes.as_ref());
                    written.push((db, key.clone()));
                    match bytes {
                        Some(v) => batch.insert(&records, key, v),
                        None => batch.remove(&records, key),
                    }
                }
                Effect::Log {
                    db,
                    log,
                    cursor,
                    op,
                    as_parts,
                } => {
                    let at = match logs.iter().position(|(id, ..)| *id == db) {
                        Some(at) => at,
                        None => {
                            let (count, bytes) = expected
                                .iter()
                                .find(|(id, ..)| *id == db)
                                .map_or((0, 0), |(_, c, b)| (*c, *b));
                            logs.push((db, log, oplog::Chunker::expecting(count, bytes)));
                            logs.len() - 1
                        }
                    };
                    if as_parts {
                        logs[at].2.push_parts(cursor, &op);
                    } else {
                        logs[at].2.push(cursor, &op);
                    }
                }
                Effect::LogChunk {
                    db,
                    log,
                    cursor,
                    count,
                    stored,
                } => {
                    let at = match logs.iter().position(|(id, ..)| *id == db) {
                        Some(at) => at,
                        None => {
                            logs.push((db, log, oplog::Chunker::default()));
                            logs.len() - 1
                        }
                    };
                    logs[at].2.keep_whole(cursor, count, stored);
                }
            }
        }
        for (_, log, chunker) in logs {
            for (key, chunk) in chunker.finish() {
                batch.insert(&log, key, chunk);
            }
        }
        if group.fsync && !sync_now {
            group.generation = self.store.next_commit_generation();
        }
        let started = self.options.commit_seconds.as_ref().map(|_| Instant::now());
        if let Err(e) = batch.commit() {
            // fjall takes no more writes after a failed commit (it poisons
            // itself), and this commit's generation never becomes durable:
            // whatever waits for it (the sync driver's messages) must know.
            let e = StoreError::from(e);
            self.store.note_failed(&e);
            return Err(e);
        }
        if group.fsync && sync_now {
            self.syncer.settle();
            if let Err(e) = self.journal.sync() {
                self.store.note_failed(&e);
                return Err(e);
            }
        }
        self.store
            .record_cache()
            .forget(written.iter().map(|(db, key)| (*db, &key[..])));
        if let (Some(h), Some(t)) = (&self.options.commit_seconds, started) {
            if group.fsync && !sync_now {
                // Timed until the sync that makes it durable.
                group.timer = Some((h.clone(), t));
            } else {
                h.observe(t.elapsed().as_secs_f64());
            }
        }
        if group.fsync {
            self.unsynced_since = None;
        } else if group.buffered && self.unsynced_since.is_none() {
            self.unsynced_since = Some(Instant::now());
        }
        Ok(())
    }

    /// Plans one command into the group, or answers it with an error and
    /// leaves the group as it was.
    fn plan_command(
        &mut self,
        group: &mut Group,
        db: String,
        writes: Vec<PreparedWrite>,
        reply: Reply<Vec<WriteResult>>,
    ) {
        let db = match self.store.db(&db) {
            Ok(db) => db,
            Err(e) => return reply(Err(e)),
        };
        let counters_before = self.counters.get(&db.id).copied();
        let clock_before = self.clock;
        // Most writes leave a record and a log entry.
        let mut plan = Plan::with_capacity(writes.len());
        let mut scope = None;
        // A list sized at once: collecting `Result`s grows it from empty.
        let mut results = Vec::with_capacity(writes.len());
        let result: Result<Vec<WriteResult>, StoreError> = writes
            .into_iter()
            .try_for_each(|w| {
                let scope = match &mut scope {
                    Some(scope) => scope,
                    None => scope.insert(self.scope_of(&db)?),
                };
                results.push(self.plan_write(group, &mut plan, scope, &db, w)?);
                Ok(())
            })
            .map(|()| results);
        match result {
            Ok(results) => {
                let head = self.counters.get(&db.id).map_or(0, |c| c.head);
                group.effects.push(plan.effects);
                group.overlay.absorb(plan.overlay);
                group
                    .new_collections
                    .extend(plan.new_collections.into_iter().map(|c| (db.id, c)));
                if !results.is_empty() {
                    match db.settings().durability {
                        Durability::Fsync => group.fsync = true,
                        Durability::Buffered => group.buffered = true,
                    }
                    group.heads.insert(db.id, (db, head));
                }
                group.replies.push((reply, Ok(results)));
            }
            Err(e) => {
                match counters_before {
                    Some(c) => self.counters.insert(db.id, c),
                    None => self.counters.remove(&db.id),
                };
                self.clock = clock_before;
                reply(Err(e));
            }
        }
    }

    /// What the writes of one command to `db` share, looked up once.
    fn scope_of(&self, db: &DbState) -> Result<CommandScope, StoreError> {
        // An end-to-end encrypted database's ops are sealed here, once
        // stamped: the seq and clock reading are part of what binds them.
        let seal_with = if db.is_e2e() {
            Some(
                self.store
                    .current_key(&db.name)
                    .ok_or_else(|| StoreError::Sealed(db.name.clone()))?,
            )
        } else {
            None
        };
        Ok(CommandScope {
            seal_with,
            max_priority: lock(&db.sync).max_priority,
            indexes: None,
            now_ms: super::wall_ms(),
        })
    }

    fn plan_write(
        &mut self,
        group: &Group,
        plan: &mut Plan,
        scope: &mut CommandScope,
        db: &Arc<DbState>,
        write: PreparedWrite,
    ) -> Result<WriteResult, StoreError> {
        let PreparedWrite {
            body,
            key,
            encoded,
            parts: as_parts,
            fresh_record,
            priority: write_priority,
        } = write;
        let needs_existing = matches!(body, Body::Decoded(OpBody::Patch { .. }));
        // The decoded operation, if it was prepared decoded.
        let (collection, id, body) = match body {
            Body::Decoded(b) => (b.collection().to_owned(), b.id().to_owned(), Some(b)),
            Body::Put { collection, id } => (collection, id, None),
        };
        let indexes = match &scope.indexes {
            Some((c, indexes)) if *c == collection => indexes.clone(),
            _ => {
                let indexes = self.collection_indexes(group, plan, db, &collection)?;
                scope.indexes = Some((collection.clone(), indexes.clone()));
                indexes
            }
        };

        // A put or delete made here is newer than everything the record
        // holds (the clock has seen every write applied here), so without
        // indexes to maintain it need not read the record -- unless writes
        // of a higher priority than ours came from elsewhere: those still
        // win.
        let outranked = scope.max_priority > write_priority;
        let existing = if needs_existing || !indexes.is_empty() || outranked {
            load_for_update(group, plan, db, &key)?
        } else {
            None
        };
        if needs_existing && !existing.as_ref().is_some_and(StoredRecord::is_live) {
            return Err(StoreError::NotFound {
                db: db.name.clone(),
                collection,
                id,
            });
        }
        let counters = self.counters.entry(db.id).or_default();
        counters.head += 1;
        counters.local_seq += 1;
        let (cursor, seq) = (counters.head, counters.local_seq);
        let hlc = self.clock.tick(scope.now_ms);
        let stamp = Stamp {
            priority: write_priority,
            hlc,
            origin: self.store.writer(),
        };

        let old_values = field_values(existing.as_ref(), &indexes);
        // Only a put has a fresh record.
        let record_bytes = match (existing, fresh_record) {
            (None, Some(fresh)) => {
                if !indexes.is_empty() {
                    let record = match decoded(body, &encoded, as_parts)? {
                        OpBody::Put { fields, .. } => StoredRecord::from_put(&stamp, fields),
                        other => {
                            let mut record = StoredRecord::default();
                            record.apply(&stamp, &other);
                            record
                        }
                    };
                    index_effects(plan, db, &collection, &id, &indexes, &old_values, &record);
                }
                fresh.fill(&[hlc.0])
            }
            (existing, _) => {
                let mut record = existing.unwrap_or_default();
                record.apply(&stamp, &decoded(body, &encoded, as_parts)?);
                index_effects(plan, db, &collection, &id, &indexes, &old_values, &record);
                record.encode()
            }
        };
        let record_bytes = Slice::from(record_bytes);
        plan.effects.push(Effect::Record {
            db: db.id,
            records: db.records.clone(),
            key: key.clone(),
            bytes: Some(record_bytes.clone()),
        });
        // An e2e database's op is logged clear, with the nonce its seal
        // will use: sealed on its way out, it holds up no write here.
        let body = match &scope.seal_with {
            Some(key) => Clear::of_new(key, &encoded, as_parts)?,
            None => encoded,
        };
        plan.effects.push(Effect::Log {
            db: db.id,
            log: db.log.clone(),
            cursor,
            op: Op {
                origin: self.store.device(),
                seq,
                hlc,
                priority: write_priority,
                incarnation: self.store.incarnation(),
                body,
            },
            as_parts: as_parts && scope.seal_with.is_none(),
        });
        plan.overlay.insert(db.id, key, record_bytes);
        Ok(WriteResult {
            id,
            seq,
            hlc,
            cursor,
        })
    }

    /// The indexes of a collection, registering the collection in the
    /// plan if it is new.
    pub(super) fn collection_indexes(
        &self,
        group: &Group,
        plan: &mut Plan,
        db: &DbState,
        collection: &str,
    ) -> Result<BTreeSet<String>, StoreError> {
        if let Some(meta) = read_lock(&db.collections).get(collection) {
            return Ok(meta.indexes.clone());
        }
        let known = group
            .new_collections
            .contains(&(db.id, collection.to_owned()))
            || plan.new_collections.iter().any(|c| c == collection);
        if !known {
            validate_name("collection", collection)?;
            plan.new_collections.push(collection.to_owned());
            plan.effects.push(Effect::Insert(
                self.meta.clone(),
                collection_meta_key(db.id, collection).into(),
                codec::to_vec(&CollectionMeta::default())?.into(),
            ));
        }
        Ok(BTreeSet::new())
    }

    fn create_db(
        &mut self,
        name: &str,
        settings: DbSettings,
        if_not_exists: bool,
        make_key: bool,
    ) -> Result<DbInfo, StoreError> {
        validate_name("database", name)?;
        if settings.priority > MAX_PRIORITY {
            return Err(StoreError::InvalidArgument(format!(
                "priority {} is not allowed: use 0 to {MAX_PRIORITY}",
                settings.priority
            )));
        }
        if let Ok(existing) = self.store.db(name) {
            return if if_not_exists {
                Ok(self.store.info_of(&existing))
            } else {
                Err(StoreError::DatabaseExists(name.to_owned()))
            };
        }
        // A database made from a peer's announcement (`make_key` false)
        // stays away once dropped here; one made here clears that.
        let dropped = self.meta.get(dropped_key(name))?.is_some();
        if dropped && !make_key {
            return Err(StoreError::DroppedHere(name.to_owned()));
        }
        let id = self.next_db_id;
        let [records, log, index] = open_keyspaces(&self.fj, id)?;
        let mut batch = self.fj.batch().durability(Some(PersistMode::SyncAll));
        if dropped {
            batch.remove(&self.meta, dropped_key(name));
        }
        batch.insert(&self.meta, META_NEXT_DB_ID, codec::to_vec(&(id + 1))?);
        batch.insert(
            &self.meta,
            db_meta_key(name),
            codec::to_vec(&DbMeta { id, settings })?,
        );
        let fresh = SyncMeta {
            epoch: new_epoch(),
            log: super::log_id::LogId::new(),
            ..SyncMeta::default()
        };
        batch.insert(&self.meta, sync_meta_key(id), codec::to_vec(&fresh)?);
        batch.commit()?;
        self.next_db_id = id + 1;
        let state = Arc::new(DbState {
            name: name.to_owned(),
            id,
            settings: std::sync::Mutex::new(settings),
            records,
            log,
            index,
            collections: Default::default(),
            head: tokio::sync::watch::Sender::new(0),
            dropped: AtomicBool::new(false),
            sync: std::sync::Mutex::new(fresh),
        });
        if settings.encryption == Encryption::E2e && make_key {
            self.store.make_first_key(name)?;
        }
        let info = self.store.info_of(&state);
        self.store.insert_db(state);
        self.store.notify(StoreNotice::Changed(name.to_owned()));
        Ok(info)
    }

    fn set_sync_mode(
        &mut self,
        name: &str,
        mode: SyncMode,
        wish: Option<blazedb_proto::rules::SyncWish>,
    ) -> Result<DbInfo, StoreError> {
        let db = self.store.db(name)?;
        let wish = wish.map(|w| (!w.is_everything()).then_some(w));
        if let Some(wish) = wish.filter(|w| *w != db.sync_meta().wish) {
            let mut sync = db.sync_meta();
            sync.wish = wish;
            let mut batch = self.fj.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(&self.meta, sync_meta_key(db.id), codec::to_vec(&sync)?);
            batch.commit()?;
            *lock(&db.sync) = sync;
            self.store.notify(StoreNotice::Changed(name.to_owned()));
        }
        let mut settings = db.settings();
        if settings.sync_mode != mode {
            settings.sync_mode = mode;
            self.save_settings(&db, settings)?;
        }
        Ok(self.store.info_of(&db))
    }

    fn set_settings(
        &mut self,
        name: &str,
        priority: Option<u8>,
        durability: Option<Durability>,
    ) -> Result<DbInfo, StoreError> {
        let db = self.store.db(name)?;
        if let Some(p) = priority.filter(|p| *p > MAX_PRIORITY) {
            return Err(StoreError::InvalidArgument(format!(
                "priority {p} is not allowed: use 0 to {MAX_PRIORITY}"
            )));
        }
        let mut settings = db.settings();
        settings.priority = priority.unwrap_or(settings.priority);
        settings.durability = durability.unwrap_or(settings.durability);
        if settings != db.settings() {
            self.save_settings(&db, settings)?;
        }
        Ok(self.store.info_of(&db))
    }

    fn set_peers(
        &mut self,
        name: &str,
        peers: Option<Vec<(DeviceId, SyncMode)>>,
    ) -> Result<DbInfo, StoreError> {
        let db = self.store.db(name)?;
        let mut sync = db.sync_meta();
        if sync.peers != peers {
            sync.peers = peers;
            let mut batch = self.fj.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(&self.meta, sync_meta_key(db.id), codec::to_vec(&sync)?);
            batch.commit()?;
            *lock(&db.sync) = sync;
            self.store.notify(StoreNotice::Changed(name.to_owned()));
        }
        Ok(self.store.info_of(&db))
    }

    /// Runs `blazed repair` on every database (see [`super::repair`]):
    /// the records kept from a damaged database are merged back as a
    /// snapshot is, so they are logged for subscribers and indexed.
    fn repair(&mut self, rebuild: bool) -> Result<Vec<super::repair::DbRepair>, StoreError> {
        let dbs: Vec<_> = read_lock(&self.store.inner.dbs).values().cloned().collect();
        let mut out = Vec::new();
        let repaired = super::repair::run(&self.fj, &self.meta, &dbs, rebuild);
        self.tombstones.forget_all();
        // A rebuild clears the records it salvages from.
        self.store.record_cache().clear();
        for (found, kept) in repaired? {
            if let Some(records) = kept.filter(|r| !r.is_empty()) {
                self.merge_snapshot(&found.db, records, None, None)?;
            }
            out.push(found);
        }
        Ok(out)
    }

    /// Makes `settings` the database's, durably, and tells sync: later
    /// writes and announcements use them at once.
    fn save_settings(&mut self, db: &DbState, settings: DbSettings) -> Result<(), StoreError> {
        let mut batch = self.fj.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(
            &self.meta,
            db_meta_key(&db.name),
            codec::to_vec(&DbMeta {
                id: db.id,
                settings,
            })?,
        );
        batch.commit()?;
        db.set_settings(settings);
        self.store.notify(StoreNotice::Changed(db.name.clone()));
        Ok(())
    }

    fn drop_db(&mut self, name: &str, if_exists: bool) -> Result<bool, StoreError> {
        let db = match self.store.db(name) {
            Ok(db) => db,
            Err(_) if if_exists => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut batch = self.fj.batch().durability(Some(PersistMode::SyncAll));
        batch.remove(&self.meta, db_meta_key(name));
        batch.remove(&self.meta, sync_meta_key(db.id));
        batch.insert(&self.meta, dropped_key(name), []);
        for c in read_lock(&db.collections).keys() {
            batch.remove(&self.meta, collection_meta_key(db.id, c));
        }
        batch.commit()?;
        self.store.remove_db(name);
        // Its records are unreachable now; their room goes back at once.
        self.store.record_cache().clear();
        if let Err(e) = self.store.forget_keys(name) {
            tracing::warn!("could not forget the keys of dropped database {name}: {e}");
        }
        self.store.notify(StoreNotice::Changed(name.to_owned()));
        self.counters.remove(&db.id);
        self.tombstones.forget(db.id);
        for ks in [&db.records, &db.log, &db.index] {
            if let Err(e) = self.fj.delete_keyspace(ks.clone()) {
                tracing::warn!("could not reclaim the space of dropped database {name}: {e:?}");
            }
        }
        Ok(true)
    }

    fn set_index(
        &mut self,
        db: &DbState,
        collection: &str,
        field: &str,
        create: bool,
    ) -> Result<bool, StoreError> {
        validate_name("collection", collection)?;
        validate_name("field", field)?;
        let mut meta = read_lock(&db.collections)
            .get(collection)
            .cloned()
            .unwrap_or_default();
        let changed = if create {
            meta.indexes.insert(field.to_owned())
        } else {
            meta.indexes.remove(field)
        };
        if !changed {
            return Ok(false);
        }
        let mut batch = self.fj.batch().durability(Some(PersistMode::SyncAll));
        if create {
            super::repair::index_collection(db, collection, field, &mut batch)?;
        } else {
            for kv in db.index.prefix(keys::index_prefix(collection, field)) {
                batch.remove(&db.index, kv.key()?);
            }
        }
        batch.insert(
            &self.meta,
            collection_meta_key(db.id, collection),
            codec::to_vec(&meta)?,
        );
        batch.commit()?;
        write_lock(&db.collections).insert(collection.to_owned(), meta);
        Ok(true)
    }
}

/// One command's planned writes, kept apart until the whole command is
/// known to succeed.
pub(super) struct Plan {
    pub(super) effects: Vec<Effect>,
    pub(super) overlay: Overlay,
    pub(super) new_collections: Vec<String>,
}

impl Plan {
    pub(super) fn new() -> Self {
        Self::with_capacity(0)
    }

    /// A plan with room for `writes` writes' records and log entries.
    pub(super) fn with_capacity(writes: usize) -> Self {
        Plan {
            effects: Vec::with_capacity(2 * writes),
            overlay: Overlay {
                records: Vec::with_capacity(writes),
                index: Default::default(),
            },
            new_collections: Vec::new(),
        }
    }
}

/// The record as the plan or the group left it, else as stored.
pub(super) fn load_for_update(
    group: &Group,
    plan: &Plan,
    db: &DbState,
    key: &[u8],
) -> Result<Option<StoredRecord>, StoreError> {
    match plan
        .overlay
        .get(db.id, key)
        .or_else(|| group.overlay.get(db.id, key))
    {
        Some(bytes) => Ok(Some(StoredRecord::decode(&bytes)?)),
        None => db.load_record(key),
    }
}

/// The values of the indexed fields of a record.
pub(super) fn field_values(
    record: Option<&StoredRecord>,
    indexes: &BTreeSet<String>,
) -> Vec<Option<Value>> {
    indexes
        .iter()
        .map(|f| record.and_then(|r| r.field(f)).cloned())
        .collect()
}

/// Plans storing a record that changed: its index entries move from the
/// old field values, its new state is written, and later writes in the
/// group see it.
pub(super) fn plan_record(
    plan: &mut Plan,
    db: &DbState,
    key: Slice,
    indexes: &BTreeSet<String>,
    old_values: &[Option<Value>],
    record: &StoredRecord,
) -> Result<Slice, StoreError> {
    let (collection, id) = keys::split_record_key(&key).unwrap_or_default();
    index_effects(plan, db, collection, id, indexes, old_values, record);
    let encoded = Slice::from(record.encode());
    plan_encoded(plan, db, key, encoded.clone());
    Ok(encoded)
}

/// Plans storing a record's new encoded state, which later writes in the
/// group see.
pub(super) fn plan_encoded(plan: &mut Plan, db: &DbState, key: Slice, record: Slice) {
    plan.effects.push(Effect::Record {
        db: db.id,
        records: db.records.clone(),
        key: key.clone(),
        bytes: Some(record.clone()),
    });
    plan.overlay.insert(db.id, key, record);
}

/// Moves a record's index entries from its old field values to its new
/// ones.
pub(super) fn index_effects(
    plan: &mut Plan,
    db: &DbState,
    collection: &str,
    id: &str,
    indexes: &BTreeSet<String>,
    old_values: &[Option<Value>],
    record: &StoredRecord,
) {
    for (field, old) in indexes.iter().zip(old_values) {
        let old = old.as_ref();
        let new = record.field(field);
        if old == new {
            continue;
        }
        if let Some(k) = old.and_then(|v| keys::index_key(collection, field, v, id)) {
            plan.effects
                .push(Effect::Remove(db.index.clone(), k.into()));
        }
        if let Some(k) = new.and_then(|v| keys::index_key(collection, field, v, id)) {
            plan.effects.push(Effect::Insert(
                db.index.clone(),
                k.into(),
                id.as_bytes().into(),
            ));
        }
    }
}
