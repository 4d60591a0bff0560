//! The stores the simulator runs replicas on: the in-memory one, and the
//! agent's fjall store in a temporary directory.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::sync::{Arc, OnceLock};

use blazed::store::{Store, StoreError, StoreOptions};
use blazed::sync::{MemoryStore, RecordStamps, SyncStore};
use blazedb_proto::api::{DbSettings, Durability, QueryParams, SyncMode, Write};
use blazedb_proto::{DeviceId, Epoch, Fields, Op, OpBody, VersionVector, codec};

use crate::world::DB;

/// What the simulator needs of a replica's store, beyond the engine's.
pub(crate) trait Replica: SyncStore + Sized {
    /// What survives a crash.
    type Disk;
    /// The start of virtual time, in wall-clock milliseconds.
    fn t0() -> u64;
    /// A new replica's disk, with the database created.
    fn create(device: DeviceId, epoch: Epoch, priority: u8) -> Self::Disk;
    /// Starts from what is on disk.
    fn boot(disk: Self::Disk) -> Self;
    /// Stops, keeping only what is on disk.
    fn crash(self) -> Self::Disk;
    /// A copy of what is on disk now (a backup), where the store can make
    /// one cheaply.
    fn backup(&self) -> Option<Self::Disk> {
        None
    }
    /// `disk` started without proof that it is the newest state (restored
    /// from a backup): local writes from now on count under a new write
    /// incarnation, as the agent's store does on such a start.
    fn restored(disk: Self::Disk, incarnation: u32) -> Self::Disk {
        let _ = incarnation;
        disk
    }
    /// The version vector kept on `disk`, where the store can read it
    /// without booting.
    fn disk_vector(disk: &Self::Disk) -> Option<VersionVector> {
        let _ = disk;
        None
    }
    /// A local write at wall time `wall`, acknowledged when this returns;
    /// `None` if the store refused it (a patch of a missing record).
    fn write(&mut self, wall: u64, body: OpBody) -> Option<Op>;
    /// The live records with their fields.
    fn visible(&self) -> BTreeMap<(String, String), Fields>;
    /// The version vector.
    fn vector(&self) -> VersionVector {
        self.sync_state(DB).map(|s| s.vector).unwrap_or_default()
    }
    /// A hash of `visible`.
    fn state_hash(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for ((c, id), fields) in self.visible() {
            h.write(c.as_bytes());
            h.write_u8(0);
            h.write(id.as_bytes());
            h.write(&codec::to_vec(&fields).unwrap_or_default());
        }
        h.finish()
    }
    /// Operations handed to the store out of turn.
    fn misapplied(&self) -> u64 {
        0
    }
    /// Who wrote what of each live record, where the store can tell.
    fn stamps(&self) -> Option<BTreeMap<(String, String), RecordStamps>> {
        None
    }
}

impl Replica for MemoryStore {
    type Disk = MemoryStore;

    fn t0() -> u64 {
        1_750_000_000_000
    }

    fn create(device: DeviceId, epoch: Epoch, priority: u8) -> MemoryStore {
        let mut s = MemoryStore::new(device);
        s.create_db(DB, epoch, SyncMode::Sync, priority);
        s
    }

    fn boot(disk: MemoryStore) -> Self {
        disk
    }

    fn crash(self) -> MemoryStore {
        self
    }

    fn backup(&self) -> Option<MemoryStore> {
        Some(self.clone())
    }

    fn restored(mut disk: MemoryStore, incarnation: u32) -> MemoryStore {
        disk.set_incarnation(incarnation);
        disk
    }

    fn disk_vector(disk: &MemoryStore) -> Option<VersionVector> {
        Some(disk.vector(DB))
    }

    fn write(&mut self, wall: u64, body: OpBody) -> Option<Op> {
        MemoryStore::write(self, DB, wall, body)
    }

    fn visible(&self) -> BTreeMap<(String, String), Fields> {
        MemoryStore::visible(self, DB)
    }

    fn state_hash(&self) -> u64 {
        MemoryStore::state_hash(self, DB)
    }

    fn misapplied(&self) -> u64 {
        MemoryStore::misapplied(self)
    }

    fn stamps(&self) -> Option<BTreeMap<(String, String), RecordStamps>> {
        Some(MemoryStore::stamps(self, DB))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

/// A replica on the agent's own store, in a temporary directory.
#[derive(Debug, Clone)]
pub(crate) struct FjallReplica {
    store: Store,
    disk: FjallDisk,
}

/// The directory a fjall replica lives in.
#[derive(Debug, Clone)]
pub(crate) struct FjallDisk {
    dir: Arc<tempfile::TempDir>,
    device: DeviceId,
}

impl Replica for FjallReplica {
    type Disk = FjallDisk;

    fn t0() -> u64 {
        // The store stamps local writes with the real clock.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn create(device: DeviceId, _epoch: Epoch, priority: u8) -> FjallDisk {
        let r = FjallReplica::boot(FjallDisk {
            dir: Arc::new(tempfile::tempdir().expect("a temp dir")),
            device,
        });
        let settings = DbSettings {
            durability: Durability::Buffered,
            sync_mode: SyncMode::Sync,
            priority,
            ..DbSettings::default()
        };
        runtime()
            .block_on(r.store.create_db(DB, settings, false))
            .expect("create the database");
        r.crash()
    }

    fn boot(disk: FjallDisk) -> Self {
        let options = StoreOptions {
            // Small, so compaction reaches the log in a short run, and
            // its walk for tombstones and its trims take several passes.
            retain_log: 20,
            compaction_walk_step: 3,
            compaction_trim_step: 5,
            ..StoreOptions::default()
        };
        let store = Store::open(disk.dir.path(), disk.device, options).expect("open the store");
        FjallReplica { store, disk }
    }

    fn crash(self) -> FjallDisk {
        runtime()
            .block_on(self.store.shutdown())
            .expect("stop the store");
        self.disk
    }

    fn write(&mut self, _wall: u64, body: OpBody) -> Option<Op> {
        let write = Write::from(body);
        match runtime().block_on(self.store.write(DB, vec![write])) {
            Ok(results) => {
                let cursor = results.first()?.cursor;
                Some(
                    self.store
                        .read_op(DB, cursor)
                        .expect("the op just written is in the log"),
                )
            }
            // A patch of a missing record is refused, as it is for apps:
            // nothing was written, so nothing to acknowledge.
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => panic!("write failed: {e}"),
        }
    }

    fn stamps(&self) -> Option<BTreeMap<(String, String), RecordStamps>> {
        let mut out = BTreeMap::new();
        for (c, id) in self.visible().into_keys() {
            let key = blazed::sync::record_key(&c, &id);
            let state = self.store.read_records(DB, &[key]).ok()?.pop().flatten()?;
            out.insert((c, id), RecordStamps::decode(&state)?);
        }
        Some(out)
    }

    fn visible(&self) -> BTreeMap<(String, String), Fields> {
        let mut out = BTreeMap::new();
        for c in ["c0", "c1"] {
            let params = QueryParams {
                db: DB.into(),
                collection: c.into(),
                limit: Some(10_000),
                ..QueryParams::default()
            };
            match self.store.query(&params) {
                Ok(res) => {
                    for r in res.records {
                        out.insert((c.to_owned(), r.id), r.fields);
                    }
                }
                Err(StoreError::UnknownCollection { .. }) => {}
                Err(e) => panic!("query failed: {e}"),
            }
        }
        out
    }
}

impl SyncStore for FjallReplica {
    type Error = <Store as SyncStore>::Error;

    fn databases(&self) -> Vec<String> {
        self.store.databases()
    }
    fn writer(&self) -> DeviceId {
        SyncStore::writer(&self.store)
    }
    fn sync_state(&self, db: &str) -> Option<blazed::sync::SyncState> {
        self.store.sync_state(db)
    }
    fn read_ops(
        &self,
        db: &str,
        have: &VersionVector,
        from: u64,
        limits: blazed::sync::ReadLimits,
    ) -> Result<blazed::sync::OpsRead, Self::Error> {
        self.store.read_ops(db, have, from, limits)
    }
    fn apply_ops(
        &mut self,
        db: &str,
        ops: Vec<Op>,
        screen: &blazed::sync::WriteScreen,
    ) -> Result<blazed::sync::Applied, Self::Error> {
        self.store.apply_ops(db, ops, screen)
    }
    fn read_snapshot(
        &self,
        db: &str,
        after: Option<&[u8]>,
        limits: blazed::sync::ReadLimits,
    ) -> Result<blazed::sync::SnapshotRead, Self::Error> {
        self.store.read_snapshot(db, after, limits)
    }
    fn merge_snapshot(
        &mut self,
        db: &str,
        records: Vec<blazedb_proto::SnapshotRecord>,
        complete: Option<&VersionVector>,
        replace: Option<blazed::sync::Replace<'_>>,
    ) -> Result<(), Self::Error> {
        self.store.merge_snapshot(db, records, complete, replace)
    }
    fn read_records(
        &self,
        db: &str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, Self::Error> {
        self.store.read_records(db, keys)
    }
    fn merge_projected(
        &mut self,
        db: &str,
        projection: blazed::sync::Projection,
    ) -> Result<(), Self::Error> {
        self.store.merge_projected(db, projection)
    }
    fn compact(
        &mut self,
        db: &str,
        stable: &VersionVector,
        tombstones: blazedb_proto::Hlc,
    ) -> Result<blazed::sync::Compacted, Self::Error> {
        self.store.compact(db, stable, tombstones)
    }
    fn correct(
        &mut self,
        db: &str,
        records: Vec<blazed::sync::Correction>,
        after: blazedb_proto::Hlc,
        now_ms: u64,
    ) -> Result<Vec<Op>, Self::Error> {
        self.store.correct(db, records, after, now_ms)
    }
}
