//! Sync: keeping a database identical on every replica, with no IO and no
//! clock of its own.
//!
//! - [`hlc`]: the hybrid logical clock that stamps writes.
//! - [`engine`]: the protocol between replicas, as a state machine.
//! - [`store`]: what the engine needs from storage.
//! - [`memory`]: an in-memory store for tests and the simulator.
//!
//! The merge itself (last writer wins per field) lives with the stored
//! record, in `store::record`, so that local and remote writes share it.

pub mod engine;
pub mod hlc;
pub mod memory;
pub mod store;

pub use engine::{Cutoff, Engine, EngineConfig, Event, LinkReport};
pub use memory::{MemoryStore, RecordStamps};

/// The key a record has in snapshots and projections (and in the store).
pub fn record_key(collection: &str, id: &str) -> Vec<u8> {
    crate::store::keys::record_key(collection, id)
}
pub use store::{
    Applied, Checkpoint, Compacted, Correction, OpsRead, PackedRead, Projection, ReadLimits,
    Refusal, Replace, SnapshotRead, SyncState, SyncStore, Unopened, WholeChunk, WriteScreen,
};
