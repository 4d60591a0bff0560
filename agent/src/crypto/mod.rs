//! Cryptography shared by the mesh and end-to-end encrypted databases:
//! wrapping a secret for one device's key, and sealing op bodies under a
//! database's content key.

pub mod keyring;
pub mod seal;
pub mod wrap;
