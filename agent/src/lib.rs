//! The BlazeDB agent, `blazed`: it owns every database on this machine and
//! serves local apps over a Unix socket.
//!
//! - [`store`]: databases, records, the op log, group commit (fjall).
//! - [`ipc`]: the local socket server.
//! - [`mesh`]: peers, QUIC sessions, membership; [`sync`] over them.
//! - [`http`]: the local dashboard and Prometheus [`metrics`].
//! - [`sync`]: IO-free sync logic (the hybrid logical clock).
//! - [`identity`]: the device key and id.
//! - [`config`]: flags, environment and config file.
//! - [`agent`]: starts everything and shuts it down.
//! - [`service`]: systemd and launchd: installing, readiness.

pub mod access;
pub mod agent;
pub mod apps;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod http;
pub mod huge_pages;
pub mod identity;
pub mod ipc;
pub mod lock;
pub mod mesh;
pub mod metrics;
pub mod private_file;
pub mod repair;
pub mod service;
pub mod store;
pub mod sync;
