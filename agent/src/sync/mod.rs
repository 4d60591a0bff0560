//! Sync logic that does no IO and reads no clock of its own.

pub mod hlc;
