//! The store: every database on this device, in one fjall database.
//!
//! Each BlazeDB database has three keyspaces: its records, its op log and
//! its secondary indexes (layouts in [`keys`]). A catalog in the `meta`
//! keyspace names the databases and their collections and indexes.
//!
//! All writes go through one writer thread ([`writer`]), which turns each
//! write into an operation, applies it to the record and appends it to the
//! op log in the same fjall batch, and commits many requests' writes in one
//! batch (group commit). Reads go straight to fjall from any thread.
//!
//! Invariants:
//! - A record change and its op-log entry are committed in one batch, so
//!   the log and the records never disagree, whatever crashes when.
//! - Op-log cursors are contiguous per database and increase in commit
//!   order; the local device's sequence numbers are contiguous per database.
//! - A write is acknowledged only after its batch committed with the
//!   database's durability.
//! - A database's `head` is advanced only after the batch holding the change
//!   committed, so a subscriber woken by it can read the change.

mod checkpoint;
mod error;
pub mod incarnation;
pub mod journal;
mod journal_sync;
pub(crate) mod keys;
mod log_id;
mod oplog;
pub(crate) mod query;
pub(crate) mod record;
mod record_cache;
pub use record_cache::RecordCacheStats;
#[cfg(test)]
mod chunk_tests;
pub mod repair;
mod replicate;
mod sealing;
pub(crate) mod stamped;
mod syncer;
#[cfg(test)]
mod test_dev;
mod tombstone_keys;
mod write_buffer;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use blazedb_proto::api::{
    Change, ChangeKind, CollectionInfo, DbInfo, DbPeer, DbSettings, EncodedRecord, QueryParams,
    QueryResult, Record, SyncMode, Write, WriteResult,
};
use blazedb_proto::{DeviceId, Epoch, Hlc, Op, OpBody, VersionVector, codec};
use fjall::{Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

pub use error::StoreError;
pub use stamped::{FreshPutLayout, fresh_put_layout, log_chunks};
pub use writer::{Command, PreparedWrite, Reply, prepare, prepare_puts};

use record::{StoredRecord, Visible};

/// How large a database is (for metrics): counts are fjall's estimates,
/// which count an overwritten or deleted key until compaction drops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSize {
    /// The database.
    pub name: String,
    /// About how many records (tombstones included).
    pub records: u64,
    /// About how many op-log entries.
    pub log_entries: u64,
    /// Bytes of its tables on disk (not counting the shared journal).
    pub disk_bytes: u64,
    /// Bytes its memtables being written to hold, by fjall's count (keys
    /// and values); all databases' together stay within the store's
    /// [`StoreOptions::write_buffer_bytes`].
    pub memtable_bytes: u64,
}

/// Store tuning.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How often databases with `buffered` durability are synced to disk.
    pub flush_interval: Duration,
    /// The most write requests one commit group takes.
    pub max_group: usize,
    /// fjall's block cache, in bytes.
    pub cache_bytes: u64,
    /// The records kept after a get, by key, in bytes; zero keeps none
    /// (see `store/record_cache.rs`).
    pub record_cache_bytes: u64,
    /// The most the memtables of all databases hold together before some
    /// are flushed, in bytes (see `store/write_buffer.rs`).
    pub write_buffer_bytes: u64,
    /// How many of the newest op-log entries compaction keeps, so that
    /// local subscribers can resume from a cursor that recent.
    pub retain_log: u64,
    /// The most records one compaction reads while it looks for the
    /// tombstones a start does not know of (see
    /// `store/tombstone_keys.rs`): the longest it holds the writer back.
    pub compaction_walk_step: usize,
    /// The most op-log entries one compaction removes, for the same
    /// reason.
    pub compaction_trim_step: u64,
    /// Where to record how long each commit takes, in seconds.
    pub commit_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
    /// Whether the device was made in this start, so that nothing it wrote
    /// can be out there: a new store then counts its writes under the
    /// device id itself ([`incarnation`]). The agent says so only when it
    /// made the device key; otherwise a new store in the directory of a
    /// device that wrote before takes a new write incarnation.
    pub new_device: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            flush_interval: Duration::from_millis(200),
            max_group: 1024,
            cache_bytes: 64 * 1024 * 1024,
            record_cache_bytes: RECORD_CACHE_BYTES,
            write_buffer_bytes: write_buffer::WRITE_BUFFER_BYTES,
            retain_log: 100_000,
            compaction_walk_step: tombstone_keys::WALK_STEP,
            compaction_trim_step: TRIM_STEP,
            commit_seconds: None,
            new_device: true,
        }
    }
}

/// What the catalog keeps about a collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CollectionMeta {
    pub(crate) indexes: BTreeSet<String>,
}

/// What the catalog keeps about a database.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DbMeta {
    id: u32,
    settings: DbSettings,
}

/// What sync keeps about a database; persisted in the catalog whenever
/// operations from elsewhere, a snapshot or a compaction change it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct SyncMeta {
    /// The database's epoch on this replica.
    pub(crate) epoch: Epoch,
    /// Every operation held.
    pub(crate) vector: VersionVector,
    /// The log holds every operation above this.
    pub(crate) floor: VersionVector,
    /// The log cursor `vector` was written at: the log after it may hold
    /// later local writes, which recovery adds.
    pub(crate) cursor: u64,
    /// The replica's clock when this was written, so that it survives the
    /// log being compacted away.
    pub(crate) clock: Hlc,
    /// The highest conflict priority of any write received from elsewhere.
    #[serde(default)]
    pub(crate) max_priority: u8,
    /// Less than the access rules allow, which this device asks to
    /// receive.
    #[serde(default)]
    pub(crate) wish: Option<blazedb_proto::rules::SyncWish>,
    /// The records were cut to a view and no whole snapshot was merged
    /// since (see `SyncState::lacking`).
    #[serde(default)]
    pub(crate) lacking: bool,
    /// The store started without proof it was as the last run left it, and
    /// no whole snapshot was merged since (see `SyncState::restored`).
    #[serde(default)]
    pub(crate) restored: bool,
    /// The devices this database syncs with, each with a direction; every
    /// member when `None` (see `SyncState::peers`).
    #[serde(default)]
    pub(crate) peers: Option<Vec<(DeviceId, SyncMode)>>,
    /// The newest log cursor compaction removed: changes up to it cannot
    /// be replayed to subscribers.
    #[serde(default)]
    pub(crate) trimmed: u64,
    /// Which change log the cursors belong to.
    #[serde(default)]
    pub(crate) log: log_id::LogId,
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before
/// it).
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh epoch: later than any made before on a machine whose clock is
/// right, with random low bits so two replicas never share one.
pub(crate) fn new_epoch() -> Epoch {
    let mut r = [0u8; 2];
    let _ = getrandom::fill(&mut r);
    (wall_ms() << 16) | u64::from(u16::from_be_bytes(r))
}

/// One open database.
pub struct DbState {
    pub(crate) name: String,
    pub(crate) id: u32,
    settings: Mutex<DbSettings>,
    pub(crate) records: Keyspace,
    pub(crate) log: Keyspace,
    pub(crate) index: Keyspace,
    pub(crate) collections: RwLock<BTreeMap<String, CollectionMeta>>,
    head: watch::Sender<u64>,
    dropped: AtomicBool,
    pub(crate) sync: Mutex<SyncMeta>,
}

impl std::fmt::Debug for DbState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbState")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("head", &self.head())
            .finish_non_exhaustive()
    }
}

impl DbState {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its three keyspaces: records, op log, indexes.
    fn keyspaces(&self) -> impl Iterator<Item = &Keyspace> {
        [&self.records, &self.log, &self.index].into_iter()
    }

    /// The cursor of the latest committed change.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// A receiver that wakes whenever the head moves (or the database is
    /// dropped).
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// The database's settings.
    pub fn settings(&self) -> DbSettings {
        *lock(&self.settings)
    }

    pub(crate) fn set_settings(&self, settings: DbSettings) {
        *lock(&self.settings) = settings;
    }

    /// A copy of what sync keeps about the database.
    pub(crate) fn sync_meta(&self) -> SyncMeta {
        lock(&self.sync).clone()
    }

    /// The id of the change log as it runs now.
    pub(crate) fn log_id(&self) -> u64 {
        lock(&self.sync).log.id
    }

    /// The last cursor of change log `log` that still names the same change
    /// (`None`: all up to the head do; see [`log_id::LogId::vouched`]).
    pub(crate) fn log_vouched(&self, log: u64) -> Option<u64> {
        lock(&self.sync).log.vouched(log)
    }

    /// The newest change-log cursor compacted away (0 when none was).
    pub(crate) fn trimmed(&self) -> u64 {
        lock(&self.sync).trimmed
    }

    /// Records that this device's writes up to `seq` are committed.
    pub(crate) fn note_local_seq(&self, me: DeviceId, seq: u64) {
        let mut m = lock(&self.sync);
        if seq > m.vector.get(&me) {
            m.vector.set(me, seq);
        }
    }

    /// Whether the database has been dropped.
    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    fn info(&self) -> DbInfo {
        let collections = read_lock(&self.collections)
            .iter()
            .map(|(name, meta)| CollectionInfo {
                name: name.clone(),
                indexes: meta.indexes.iter().cloned().collect(),
            })
            .collect();
        let sync = self.sync_meta();
        DbInfo {
            name: self.name.clone(),
            settings: self.settings(),
            collections,
            head: self.head(),
            key_epoch: None,
            ops_held: sync.vector.total(),
            log: sync.log.id,
            peers: sync.peers.map(|peers| {
                peers
                    .into_iter()
                    .map(|(d, sync_mode)| DbPeer {
                        device: d.to_string(),
                        sync_mode,
                    })
                    .collect()
            }),
        }
    }

    fn collection(&self, name: &str) -> Result<CollectionMeta, StoreError> {
        let cols = read_lock(&self.collections);
        cols.get(name)
            .cloned()
            .ok_or_else(|| StoreError::UnknownCollection {
                db: self.name.clone(),
                collection: name.to_owned(),
                known: cols.keys().cloned().collect(),
            })
    }

    pub(crate) fn load_record(&self, key: &[u8]) -> Result<Option<StoredRecord>, StoreError> {
        match self.records.get(key)? {
            Some(bytes) => Ok(Some(StoredRecord::decode(&bytes)?)),
            None => Ok(None),
        }
    }
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic while holding the lock cannot leave the maps half-updated
    // (every update is a single insert or remove), so poisoning is ignored.
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// A handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    device: DeviceId,
    /// The write incarnation of this start.
    incarnation: incarnation::Incarnation,
    /// The journal tails this start's recovery dropped.
    dropped_tails: Vec<journal::DroppedTail>,
    /// The store's directory.
    path: std::path::PathBuf,
    /// The writer's clock after its latest commit.
    clock: std::sync::atomic::AtomicU64,
    dbs: RwLock<HashMap<String, Arc<DbState>>>,
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    notify: std::sync::OnceLock<Notify>,
    /// The content keys of end-to-end encrypted databases held here.
    keys: RwLock<crate::crypto::keyring::Keyring>,
    /// Ops of e2e databases that did not open, by database, origin, seq.
    unopened: Mutex<BTreeMap<(String, DeviceId, u64), sealing::Noted>>,
    /// Records read by key, kept for the next get.
    record_cache: record_cache::RecordCache,
    /// Commits whose sync the writer left for later, counted.
    commits: std::sync::atomic::AtomicU64,
    /// The last of those commits known to be durable.
    durable: std::sync::atomic::AtomicU64,
    /// Why a commit or a sync of the journal failed, if one did: commits
    /// from then on are never durable.
    failed: std::sync::OnceLock<String>,
}

/// Something the store tells whoever listens (the sync driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreNotice {
    /// Writes to the database were committed.
    Committed(String),
    /// The database was created or dropped, or its settings changed.
    Changed(String),
    /// A commit or a sync of the journal failed ([`Store::failed`]).
    Failed,
}

struct Notify(Box<dyn Fn(StoreNotice) + Send + Sync>);

impl std::fmt::Debug for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notify(..)")
    }
}

const META_DB: &[u8] = b"db\0";
const META_COLLECTION: &[u8] = b"col\0";
const META_NEXT_DB_ID: &[u8] = b"next_db_id";
/// The store's format, a `u32`: see [`STORE_FORMAT`].
const META_FORMAT: &[u8] = b"format";

/// The form this agent writes its store in. It grows with every change
/// an older agent would misread rather than refuse, and an agent refuses
/// a store in a newer form than its own ([`StoreError::TooNew`]). 1: op-log
/// chunks compressed (0xC3), and a key holder's own ops of an e2e
/// database logged clear (0xC7), which an agent from before would send
/// on as they are. Stores from before the mark are format 0.
pub const STORE_FORMAT: u32 = 1;
/// Names of databases dropped on this device, which peers' copies do not
/// bring back.
const META_DROPPED: &[u8] = b"dropped\0";
const META_SYNC: &[u8] = b"sync\0";

fn sync_meta_key(db_id: u32) -> Vec<u8> {
    [META_SYNC, &db_id.to_be_bytes()].concat()
}

fn dropped_key(name: &str) -> Vec<u8> {
    [META_DROPPED, name.as_bytes()].concat()
}

fn db_meta_key(name: &str) -> Vec<u8> {
    [META_DB, name.as_bytes()].concat()
}

fn collection_meta_key(db_id: u32, name: &str) -> Vec<u8> {
    [META_COLLECTION, &db_id.to_be_bytes(), name.as_bytes()].concat()
}

/// The journal files fjall keeps before it flushes the memtables that hold
/// the oldest one back. The small catalog keyspace is rarely flushed on its
/// own, so the journals always grow to this: fjall's 512 MiB default left
/// a store of a few MB taking over half a GB, all read again at every
/// start.
const MAX_JOURNALS_BYTES: u64 = 128 * 1024 * 1024;

/// fjall's background threads (flushes and compactions). Its first
/// worker hands every compaction it receives back to the queue for the
/// others, and takes it again at once while they are busy: with fjall's
/// default on two cores (one worker per core) that worker spins through
/// every compaction, a whole core taken from the writer and the apps
/// while a busy database compacts. Four workers (fjall's default on four
/// cores or more) leave someone free to take the compaction; an idle
/// worker costs only its stack.
const FJALL_WORKERS: usize = 4;
/// The record cache's budget: about 200,000 records of 160 bytes.
const RECORD_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// The most op-log entries one compaction removes, unless set: about
/// 100 ms of the writer's time at 200 ns an entry on a two-core machine
/// (`blazedb-sync-bench --only compaction --catch-up-ops 4000000`). Run again a second later while there is
/// more, compaction keeps up with 500,000 writes a second.
const TRIM_STEP: u64 = 500_000;

/// The settings a database's keyspaces (records, op log, indexes) are
/// created with; fjall keeps them with each keyspace, so a keyspace made
/// before a change keeps the settings it was made with.
///
/// - The store's budget for all memtables bounds each one too.
/// - Every table's data blocks are compressed with lz4, where fjall's
///   default leaves the first two levels plain. A flush then writes a
///   fraction of a memtable's bytes, and the fsyncs of the journal, queued
///   on the same disk behind a flush, wait that much less: those waits
///   left the cores idle for a fifth of sustained replication (both
///   agents' journals behind a 64 MiB flush). Blocks are cached
///   decompressed, so a get from the cache pays nothing for it.
pub fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .max_memtable_size(write_buffer::WRITE_BUFFER_BYTES)
        .data_block_compression_policy(fjall::config::CompressionPolicy::all(
            fjall::CompressionType::Lz4,
        ))
}

fn open_keyspaces(fj: &fjall::Database, id: u32) -> Result<[Keyspace; 3], StoreError> {
    Ok([
        fj.keyspace(&format!("d{id}_records"), keyspace_options)?,
        fj.keyspace(&format!("d{id}_log"), keyspace_options)?,
        fj.keyspace(&format!("d{id}_index"), keyspace_options)?,
    ])
}

/// Reads `bytes` as a stored record (as a peer's snapshot piece is read)
/// and encodes what it read again: `None` when they do not decode. For
/// the fuzz targets.
#[doc(hidden)]
pub fn reencode_record(bytes: &[u8]) -> Option<Vec<u8>> {
    StoredRecord::decode(bytes).ok().map(|r| r.encode())
}

/// Reads `bytes` as an op-log chunk and returns its ops, and its ops
/// chunked again as the store writes them, each chunk read back. For the
/// fuzz targets.
#[doc(hidden)]
pub fn reread_log_chunk(bytes: &[u8]) -> Option<(Vec<Op>, Vec<Vec<u8>>)> {
    oplog::reread_chunk(bytes).ok()
}

/// Marks the store in `path` (not open) as written in `format`, or as from
/// before the mark with `None`: what a newer or an older agent leaves.
/// For tests.
#[doc(hidden)]
pub fn mark_store_format(path: &Path, format: Option<u32>) -> Result<(), StoreError> {
    let (fj, meta) = open_meta(path)?;
    match format {
        Some(f) => meta.insert(META_FORMAT, codec::to_vec(&f)?)?,
        None => meta.remove(META_FORMAT)?,
    }
    fj.persist(PersistMode::SyncAll)?;
    Ok(())
}

/// The store in `path` (not open) opened with fjall alone, and its meta
/// keyspace.
fn open_meta(path: &Path) -> Result<(fjall::Database, Keyspace), StoreError> {
    let fj = fjall_options(fjall::Database::builder(path)).open()?;
    let meta = fj.keyspace("meta", KeyspaceCreateOptions::default)?;
    Ok((fj, meta))
}

/// What a get sees of a stored record's bytes: its version and its
/// visible fields as an encoded map, `None` for a tombstone. For the fuzz
/// targets.
#[doc(hidden)]
pub fn read_visible(bytes: &[u8]) -> Result<Option<(Hlc, Vec<u8>)>, String> {
    Visible::read(bytes)
        .map(|v| v.map(|v| (v.version, v.fields.into_owned())))
        .map_err(|e| e.to_string())
}

/// The settings the store opens fjall with. Op-log chunks are the
/// journal's only values large enough for fjall to compress, and
/// compressing them cost the writer thread more than the bytes it saved
/// (and end-to-end encrypted ones do not compress at all).
pub fn fjall_options(
    builder: fjall::DatabaseBuilder<fjall::Database>,
) -> fjall::DatabaseBuilder<fjall::Database> {
    builder
        .journal_compression(fjall::CompressionType::None)
        .max_journaling_size(MAX_JOURNALS_BYTES)
        .worker_threads(FJALL_WORKERS)
}

impl Store {
    /// Opens (or creates) the store in `path` for the device `device`.
    pub fn open(path: &Path, device: DeviceId, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::Storage(format!("cannot create {}: {e}", path.display())))?;
        let keys = crate::crypto::keyring::Keyring::load(path)?;
        let journals = journal::data_ends(path)?;
        let fj = fjall_options(fjall::Database::builder(path))
            .cache_size(options.cache_bytes)
            .open()?;
        let dropped_tails = journal::dropped_tails(&journals, &journal::lengths(path)?);
        let meta = fj.keyspace("meta", KeyspaceCreateOptions::default)?;
        let format = match meta.get(META_FORMAT)? {
            Some(v) => codec::from_slice::<u32>(&v)?,
            None => 0,
        };
        if format > STORE_FORMAT {
            return Err(StoreError::TooNew {
                found: format,
                reads: STORE_FORMAT,
            });
        }
        let fresh = options.new_device && meta.is_empty()?;
        let incarnation = incarnation::begin(path, &fj, &meta, fresh, &dropped_tails)?;
        let writer = device.writer(incarnation.number);

        let mut dbs = HashMap::new();
        let mut recovered = writer::Recovered::default();
        let mut restarted = fj.batch().durability(Some(PersistMode::SyncAll));
        for kv in meta.prefix(META_DB) {
            let (k, v) = kv.into_inner()?;
            let name = String::from_utf8_lossy(&k[META_DB.len()..]).into_owned();
            let m: DbMeta = codec::from_slice(&v)?;
            let [records, log, index] = open_keyspaces(&fj, m.id)?;
            let mut collections = BTreeMap::new();
            let prefix = collection_meta_key(m.id, "");
            for kv in meta.prefix(&prefix) {
                let (k, v) = kv.into_inner()?;
                let cname = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                collections.insert(cname, codec::from_slice::<CollectionMeta>(&v)?);
            }
            let mut sync: SyncMeta = match meta.get(sync_meta_key(m.id))? {
                Some(v) => codec::from_slice(&v)?,
                None => SyncMeta {
                    epoch: new_epoch(),
                    log: log_id::LogId::new(),
                    ..SyncMeta::default()
                },
            };
            // Local writes since the vector was last stored.
            let mut tail = writer::recover_log_tail(&log, sync.cursor, &mut sync.vector)?;
            tail.local_seq = sync.vector.get(&writer);
            // A state that went back in time may hold records whose
            // deletes peers have since forgotten: it asks for a whole
            // state to replace its own.
            sync.restored |= incarnation.went_back;
            // Cursors past the recovered head may have been seen by
            // subscribers and are handed out again: the log takes a new id.
            if incarnation.changed.is_some() {
                sync.log.restart(tail.head);
                restarted.insert(&meta, sync_meta_key(m.id), codec::to_vec(&sync)?);
            }
            tail.max_hlc = tail.max_hlc.max(sync.clock);
            recovered.note(m.id, &tail);
            let state = DbState {
                name: name.clone(),
                id: m.id,
                settings: Mutex::new(m.settings),
                records,
                log,
                index,
                collections: RwLock::new(collections),
                head: watch::Sender::new(tail.head),
                dropped: AtomicBool::new(false),
                sync: Mutex::new(sync),
            };
            dbs.insert(name, Arc::new(state));
        }
        if format < STORE_FORMAT {
            restarted.insert(&meta, META_FORMAT, codec::to_vec(&STORE_FORMAT)?);
        }
        restarted.commit()?;
        let next_db_id = match meta.get(META_NEXT_DB_ID)? {
            Some(v) => codec::from_slice(&v)?,
            None => 1,
        };

        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            device,
            incarnation,
            dropped_tails,
            path: path.to_owned(),
            clock: std::sync::atomic::AtomicU64::new(recovered.max_hlc().0),
            dbs: RwLock::new(dbs),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(None),
            notify: std::sync::OnceLock::new(),
            keys: RwLock::new(keys),
            unopened: Mutex::default(),
            record_cache: record_cache::RecordCache::new(options.record_cache_bytes),
            commits: std::sync::atomic::AtomicU64::new(0),
            durable: std::sync::atomic::AtomicU64::new(0),
            failed: std::sync::OnceLock::new(),
        });
        let store = Store { inner };
        let w = writer::Writer::new(store.clone(), fj, meta, rx, options, recovered, next_db_id)?;
        let handle = std::thread::Builder::new()
            .name("blazed-writer".into())
            .spawn(move || w.run())
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        *store.inner.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(store)
    }

    /// How many commits the writer made without waiting for their sync;
    /// everything those commits applied is durable once
    /// [`Store::durable_generation`] reaches this. What the sync engine
    /// tells peers about what is held waits for that (`mesh/driver.rs`).
    pub fn commit_generation(&self) -> u64 {
        self.inner.commits.load(Ordering::Acquire)
    }

    /// The last commit counted by [`Store::commit_generation`] that is
    /// durable.
    pub fn durable_generation(&self) -> u64 {
        self.inner.durable.load(Ordering::Acquire)
    }

    /// Why the store takes no more writes, if a commit or a sync of the
    /// journal failed since it opened. fjall refuses every commit then,
    /// and commits counted by [`Store::commit_generation`] past
    /// [`Store::durable_generation`] never become durable, until the agent
    /// restarts.
    pub fn failed(&self) -> Option<&str> {
        self.inner.failed.get().map(String::as_str)
    }

    /// Notes that a commit or a sync failed with `e` (see
    /// [`Store::failed`]); the first failure is the one kept.
    fn note_failed(&self, e: &StoreError) {
        let first = self.inner.failed.set(e.to_string()).is_ok();
        // A generation that never becomes durable, so that whatever is
        // tagged from now on waits for ever (and the sync driver drops
        // it), even when the commit that failed had none of its own (a
        // buffered database's, say).
        self.next_commit_generation();
        if first {
            self.notify(StoreNotice::Failed);
        }
    }

    /// Counts a commit whose sync comes later; returns its generation.
    fn next_commit_generation(&self) -> u64 {
        self.inner.commits.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Notes that the commit of generation `generation` is durable.
    fn note_durable(&self, generation: u64) {
        self.inner.durable.fetch_max(generation, Ordering::AcqRel);
    }

    /// Notes the writer's clock after a commit.
    fn note_clock(&self, hlc: Hlc) {
        self.inner.clock.fetch_max(hlc.0, Ordering::AcqRel);
    }

    /// The latest clock reading of this replica.
    pub fn clock(&self) -> Hlc {
        Hlc(self.inner.clock.load(Ordering::Acquire))
    }

    /// This device's id, the origin of local writes.
    pub fn device(&self) -> DeviceId {
        self.inner.device
    }

    /// The write incarnation of this start, and why it changed if it did.
    pub fn incarnation_info(&self) -> &incarnation::Incarnation {
        &self.inner.incarnation
    }

    /// The damaged journal tails fjall's recovery dropped when this store
    /// was opened (empty when nothing was damaged).
    pub fn dropped_tails(&self) -> &[journal::DroppedTail] {
        &self.inner.dropped_tails
    }

    /// The write incarnation local writes carry.
    pub fn incarnation(&self) -> u32 {
        self.inner.incarnation.number
    }

    /// The id local writes are counted under: the device's writer of this
    /// incarnation ([`DeviceId::writer`]).
    pub fn writer(&self) -> DeviceId {
        self.inner.device.writer(self.inner.incarnation.number)
    }

    /// The store's directory.
    fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Hands a command to the writer thread.
    pub fn submit(&self, cmd: Command) {
        let tx = self.inner.tx.lock().unwrap_or_else(|e| e.into_inner());
        let rejected = match tx.as_ref() {
            Some(tx) => tx.send(cmd).err().map(|e| e.0),
            None => Some(cmd),
        };
        drop(tx);
        if let Some(cmd) = rejected {
            cmd.fail(StoreError::ShuttingDown);
        }
    }

    async fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(make(Box::new(move |r| {
            let _ = tx.send(r);
        })));
        rx.await.unwrap_or(Err(StoreError::ShuttingDown))
    }

    /// Applies `writes` to the database atomically and waits until they are
    /// durable.
    pub async fn write(
        &self,
        db: &str,
        writes: Vec<Write>,
    ) -> Result<Vec<WriteResult>, StoreError> {
        let writes = prepare(
            &self.device(),
            self.incarnation(),
            self.priority_of(db),
            writes,
        )?;
        let db = db.to_owned();
        self.call(|reply| Command::Write { db, writes, reply })
            .await
    }

    /// Creates a database.
    pub async fn create_db(
        &self,
        name: &str,
        settings: DbSettings,
        if_not_exists: bool,
    ) -> Result<DbInfo, StoreError> {
        let name = name.to_owned();
        self.call(|reply| Command::CreateDb {
            name,
            settings,
            if_not_exists,
            make_key: true,
            reply,
        })
        .await
    }

    /// Creates a database a peer syncs: an end-to-end encrypted one gets
    /// no key made here (keys come from members that hold them).
    pub async fn create_db_from_peer(
        &self,
        name: &str,
        settings: DbSettings,
    ) -> Result<DbInfo, StoreError> {
        let name = name.to_owned();
        self.call(|reply| Command::CreateDb {
            name,
            settings,
            if_not_exists: true,
            make_key: false,
            reply,
        })
        .await
    }

    /// What this device asks to receive of a database, if less than all.
    pub fn wish(&self, name: &str) -> Option<blazedb_proto::rules::SyncWish> {
        self.db(name).ok()?.sync_meta().wish
    }

    /// Changes how a database takes part in sync.
    pub async fn set_sync_mode(&self, name: &str, mode: SyncMode) -> Result<DbInfo, StoreError> {
        let db = name.to_owned();
        self.call(|reply| Command::SetSyncMode {
            db,
            mode,
            wish: None,
            reply,
        })
        .await
    }

    /// Sets the one function told of commits and database changes. It is
    /// called on the writer thread, so it must not block.
    pub fn on_notice(&self, f: impl Fn(StoreNotice) + Send + Sync + 'static) {
        let _ = self.inner.notify.set(Notify(Box::new(f)));
    }

    pub(crate) fn notify(&self, notice: StoreNotice) {
        if let Some(n) = self.inner.notify.get() {
            (n.0)(notice);
        }
    }

    /// Deletes a database.
    pub async fn drop_db(&self, name: &str, if_exists: bool) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.call(|reply| Command::DropDb {
            name,
            if_exists,
            reply,
        })
        .await
    }

    /// Adds (`create = true`) or removes a secondary index.
    pub async fn set_index(
        &self,
        db: &str,
        collection: &str,
        field: &str,
        create: bool,
    ) -> Result<bool, StoreError> {
        let (db, collection, field) = (db.to_owned(), collection.to_owned(), field.to_owned());
        self.call(|reply| Command::Index {
            db,
            collection,
            field,
            create,
            reply,
        })
        .await
    }

    /// Reads every entry of every database to find damaged files and, when
    /// `rebuild` is set, rebuilds the damaged databases (see
    /// [`repair`]).
    pub async fn repair(&self, rebuild: bool) -> Result<Vec<repair::DbRepair>, StoreError> {
        self.call(|reply| Command::Repair { rebuild, reply }).await
    }

    /// Finishes every queued write, syncs everything to disk and stops the
    /// writer. Later writes fail with [`StoreError::ShuttingDown`].
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let res = self.call(|reply| Command::Shutdown { reply }).await;
        self.inner
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        match res {
            Err(StoreError::ShuttingDown) => Ok(()),
            other => other,
        }
    }

    /// Looks a database up by name.
    pub fn db(&self, name: &str) -> Result<Arc<DbState>, StoreError> {
        read_lock(&self.inner.dbs)
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::UnknownDatabase(name.to_owned()))
    }

    /// The conflict priority of local writes to a database (0 if there is
    /// no such database: the writer refuses those writes anyway).
    pub fn priority_of(&self, db: &str) -> u8 {
        self.db(db).map_or(0, |d| d.settings().priority)
    }

    /// Describes one database.
    pub fn db_info(&self, name: &str) -> Result<DbInfo, StoreError> {
        Ok(self.info_of(&*self.db(name)?))
    }

    /// Describes every database, by name.
    pub fn list(&self) -> Vec<DbInfo> {
        let mut out: Vec<DbInfo> = read_lock(&self.inner.dbs)
            .values()
            .map(|d| self.info_of(d))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// How large each database is on disk, by name.
    pub fn sizes(&self) -> Vec<DbSize> {
        let mut out: Vec<DbSize> = read_lock(&self.inner.dbs)
            .values()
            .map(|d| DbSize {
                name: d.name.clone(),
                records: d.records.approximate_len() as u64,
                // Entries are stored in chunks: count cursors instead.
                log_entries: d.head().saturating_sub(d.trimmed()),
                disk_bytes: d.records.disk_space() + d.log.disk_space() + d.index.disk_space(),
                memtable_bytes: d.keyspaces().map(write_buffer::active_bytes).sum(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// How many databases there are.
    pub fn db_count(&self) -> usize {
        read_lock(&self.inner.dbs).len()
    }

    /// Reads one record.
    pub fn get(&self, db: &str, collection: &str, id: &str) -> Result<Option<Record>, StoreError> {
        self.get_encoded(db, collection, id, |rec| {
            rec.map(|r| {
                let fields = codec::from_slice(r.fields)?;
                Ok::<_, StoreError>(Record {
                    id: id.to_owned(),
                    fields,
                    version: r.version,
                })
            })
            .transpose()
        })?
    }

    /// Reads one record and hands it to `f` with its field values still
    /// encoded (`None` when there is no live record with that id), so a
    /// caller that only passes the values on need not decode them.
    pub fn get_encoded<R>(
        &self,
        db: &str,
        collection: &str,
        id: &str,
        f: impl FnOnce(Option<&EncodedRecord<'_>>) -> R,
    ) -> Result<R, StoreError> {
        let (mut f, mut out) = (Some(f), None);
        self.get_many_encoded(db, collection, [id], |record| {
            out = f.take().map(|f| f(record));
        })?;
        // One id asked for, so `each` ran once.
        out.ok_or_else(|| StoreError::Corrupt("a get read no answer".into()))
    }

    /// The records kept after gets.
    pub(crate) fn record_cache(&self) -> &record_cache::RecordCache {
        &self.inner.record_cache
    }

    /// What the record cache holds and how often it answered gets.
    pub fn record_cache_stats(&self) -> RecordCacheStats {
        self.inner.record_cache.stats()
    }

    /// Reads the records `ids` of one collection, handing each (or `None`
    /// where there is none) to `each` in order, with its values as stored.
    /// The database and collection are looked up once for all of them.
    pub fn get_many_encoded<'i>(
        &self,
        db: &str,
        collection: &str,
        ids: impl IntoIterator<Item = &'i str>,
        mut each: impl FnMut(Option<&EncodedRecord<'_>>),
    ) -> Result<(), StoreError> {
        let db = self.db(db)?;
        self.readable(&db)?;
        if !read_lock(&db.collections).contains_key(collection) {
            db.collection(collection)?;
        }
        let cache = &self.inner.record_cache;
        cache.mark(db.id);
        // One key buffer for all: only the id part changes. It is the
        // cache's key, whose record key follows the database id.
        let mut key = Vec::new();
        record_cache::cache_key(&mut key, db.id, &keys::collection_prefix(collection));
        let prefix = key.len();
        let (mut hits, mut misses) = (0, 0);
        let read = ids.into_iter().try_for_each(|id| {
            key.truncate(prefix);
            key.extend_from_slice(id.as_bytes());
            let bytes = match cache.lookup(&key) {
                record_cache::Lookup::Hit(bytes) => {
                    hits += 1;
                    bytes
                }
                record_cache::Lookup::Miss(claim) => {
                    misses += 1;
                    let Some(bytes) = db.records.get(&key[record_cache::DB_PREFIX..])? else {
                        each(None);
                        return Ok(());
                    };
                    if let Some(claim) = claim {
                        claim.fill(&bytes);
                    }
                    bytes
                }
            };
            let visible = Visible::read(&bytes)?;
            let record = visible.as_ref().map(|v| EncodedRecord {
                id,
                fields: &v.fields,
                version: v.version,
            });
            each(record.as_ref());
            Ok::<_, StoreError>(())
        });
        cache.count(hits, misses);
        read
    }

    /// Runs a query.
    pub fn query(&self, params: &QueryParams) -> Result<QueryResult, StoreError> {
        let db = self.db(&params.db)?;
        self.readable(&db)?;
        let meta = db.collection(&params.collection)?;
        query::run(&db, &meta, params)
    }

    /// Reads the operation at a cursor of a database's op log.
    pub fn read_op(&self, db: &str, cursor: u64) -> Result<Op, StoreError> {
        let db = self.db(db)?;
        oplog::get(&db.log, cursor)?
            .ok_or_else(|| StoreError::Corrupt(format!("no op-log entry at cursor {cursor}")))?
            .op()
    }

    /// Reads the changes after cursor `after`, up to the published head,
    /// scanning at most `max_scan` log entries. Returns the changes (only
    /// those to `collection`, when given) and the cursor of the last entry
    /// scanned.
    pub fn read_changes(
        &self,
        db: &DbState,
        after: u64,
        collection: Option<&str>,
        max_scan: usize,
    ) -> Result<(Vec<Change>, u64), StoreError> {
        self.readable(db)?;
        let trimmed = db.trimmed();
        if after < trimmed {
            return Err(StoreError::CursorExpired {
                db: db.name.clone(),
                since: after,
                trimmed,
            });
        }
        let reader = self.reader(db);
        let mut opened = sealing::Opened::default();
        let mut changes = Vec::new();
        let mut last = after;
        // Entries past the head are committed but not yet durable.
        let head = db.head();
        for entry in oplog::after(&db.log, after).take(max_scan) {
            let entry = entry?;
            if entry.cursor > head {
                break;
            }
            last = entry.cursor;
            let op = entry.op()?;
            let body = match reader.read_logged(&db.name, &op, &mut opened) {
                sealing::Body::Readable(plain) => plain.decode()?,
                sealing::Body::Blind => return Err(StoreError::Sealed(db.name.clone())),
                // Logged before this device held its keys, and damaged:
                // it changed nothing here.
                sealing::Body::Refused(_) => continue,
            };
            if collection.is_some_and(|c| c != body.collection()) {
                continue;
            }
            changes.push(change_of(last, &op, body));
        }
        Ok((changes, last))
    }

    fn insert_db(&self, state: Arc<DbState>) {
        write_lock(&self.inner.dbs).insert(state.name.clone(), state);
    }

    fn remove_db(&self, name: &str) -> Option<Arc<DbState>> {
        let removed = write_lock(&self.inner.dbs).remove(name);
        if let Some(db) = &removed {
            db.dropped.store(true, Ordering::Release);
            // Wake subscribers so they see the database is gone.
            db.head.send_modify(|_| {});
        }
        removed
    }
}

fn change_of(cursor: u64, op: &Op, body: OpBody) -> Change {
    let mut rejected = None;
    let (kind, collection, id, fields, unset) = match body {
        OpBody::Put {
            collection,
            id,
            fields,
        } => (ChangeKind::Put, collection, id, fields, Vec::new()),
        OpBody::Patch {
            collection,
            id,
            set,
            unset,
        } => (ChangeKind::Patch, collection, id, set, unset),
        OpBody::Delete { collection, id } => (
            ChangeKind::Delete,
            collection,
            id,
            Default::default(),
            Vec::new(),
        ),
        OpBody::Rejected {
            collection,
            id,
            reason,
        } => {
            rejected = Some(reason);
            (
                ChangeKind::Rejected,
                collection,
                id,
                Default::default(),
                Vec::new(),
            )
        }
    };
    Change {
        rejected,
        cursor,
        collection,
        id,
        kind,
        seq: op.seq,
        fields,
        unset,
        origin: op.origin.to_string(),
        hlc: op.hlc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format mark `dir`'s store holds, read with fjall alone.
    fn format_of(dir: &Path) -> Option<u32> {
        let (_fj, meta) = open_meta(dir).expect("open fjall");
        meta.get(META_FORMAT)
            .expect("read")
            .map(|v| codec::from_slice(&v).expect("a format"))
    }

    fn stop(store: Store) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(store.shutdown())
            .expect("shut down");
    }

    #[test]
    fn a_store_in_a_newer_format_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let device = DeviceId([3; 32]);
        stop(Store::open(dir.path(), device, StoreOptions::default()).expect("open"));
        assert_eq!(
            format_of(dir.path()),
            Some(STORE_FORMAT),
            "a new store is marked"
        );

        // A newer agent wrote it.
        mark_store_format(dir.path(), Some(STORE_FORMAT + 1)).expect("mark");
        let Err(err) = Store::open(dir.path(), device, StoreOptions::default()) else {
            panic!("a store in a newer format opened");
        };
        assert!(
            matches!(err, StoreError::TooNew { found, reads } if found == STORE_FORMAT + 1 && reads == STORE_FORMAT),
            "{err}"
        );
        assert!(err.to_string().contains("newer blazed"), "{err}");
        assert_eq!(
            format_of(dir.path()),
            Some(STORE_FORMAT + 1),
            "the refusal changed the mark"
        );
    }

    #[test]
    fn a_store_from_before_the_mark_opens_and_is_marked() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let device = DeviceId([4; 32]);
        stop(Store::open(dir.path(), device, StoreOptions::default()).expect("open"));
        mark_store_format(dir.path(), None).expect("unmark");
        assert_eq!(format_of(dir.path()), None);
        stop(Store::open(dir.path(), device, StoreOptions::default()).expect("reopen"));
        assert_eq!(format_of(dir.path()), Some(STORE_FORMAT));
    }
}
