//! Who may say what: the mesh's authority (admins and the member records
//! they sign). Access rules and app grants will live here too.
//!
//! - [`sign`]: signing and checking [`Signed`](blazedb_proto::mesh::Signed)
//!   values with device keys.
//! - [`roster`]: the mesh's membership as signed records, and the rules
//!   that decide which records a member accepts. IO-free.

pub mod roster;
pub mod sign;

pub use roster::{Rejection, ResolveError, Roster};
