//! Every type that crosses a process or machine boundary in BlazeDB, and
//! its encoding.
//!
//! - [`frame`]: a `u32` big-endian length, then one MessagePack value.
//! - [`message`]: MessagePack-RPC style envelopes (request, response,
//!   notification).
//! - [`api`]: the IPC methods with their params and results.
//! - [`value`]: field values and their MessagePack encoding.
//! - [`op`]: operations, device ids and clock readings; [`op_entry`]:
//!   an op's compact form, in the op log and packed `Ops`; [`log_chunk`]:
//!   a run of those entries as the op log stores it and sync may send it.
//! - [`sync`]: what replicas say to each other to sync a database.
//! - [`mesh`]: what agents say to each other to form a mesh, and invite codes.
//! - [`topology`]: what the agent shows of its links and where its
//!   dashboard is.
//!
//! This crate does no IO. It is the only place that knows the wire
//! encoding; the agent and the clients go through it.

pub mod api;
pub mod apps;
pub mod base32;
pub mod codec;
pub mod error;
mod fast;
pub mod frame;
pub mod log_chunk;
pub mod mesh;
pub mod message;
pub mod op;
pub mod op_entry;
pub mod paths;
pub mod rules;
pub mod sealed;
pub mod sync;
pub mod topology;
pub mod value;

pub use api::{Method, PROTOCOL_VERSION, Request};
pub use error::{ErrorCode, ErrorInfo};
pub use fast::{
    PutParts, RawFields, RawPut, RawPuts, RawRecordRef, RawWrite, encode_get_many, put_body,
    put_body_of_map, put_parts,
};
pub use op::{DeviceId, Hlc, Op, OpBody};
pub use sync::{
    Epoch, Report, RunVector, SnapshotRecord, Span, Stable, SyncMessage, VersionVector,
};
pub use value::{Fields, Timestamp, Uuid, Value};
