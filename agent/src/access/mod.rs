//! Who may say what: the mesh's authority (admins and the member records
//! they sign), and who may see and write what of each database.
//!
//! - [`sign`]: signing and checking [`Signed`](blazedb_proto::mesh::Signed)
//!   values with device keys.
//! - [`roster`]: the mesh's membership as signed records, and the rules
//!   that decide which records a member accepts. IO-free.
//! - [`view`]: a database's access rules resolved for one device: what it
//!   may see and write. IO-free.
//! - [`links`]: a database's links resolved for a pair of devices: which
//!   way they sync it. IO-free.

pub mod links;
pub mod roster;
pub mod sign;
pub mod view;

pub use roster::{Rejection, ResolveError, Roster};
