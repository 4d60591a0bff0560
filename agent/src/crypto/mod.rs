//! Cryptography shared by the mesh and, later, end-to-end encrypted
//! databases: wrapping a secret for one device's key.

pub mod wrap;
