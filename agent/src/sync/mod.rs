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

pub use engine::{Cutoff, Engine, EngineConfig, Event};
pub use memory::MemoryStore;
pub use store::{Compacted, Correction, OpsRead, ReadLimits, SnapshotRead, SyncState, SyncStore};
