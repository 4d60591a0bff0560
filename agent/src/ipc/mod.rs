//! The local socket server: local apps and `blazectl` talk to the agent
//! here, in the protocol of `docs/PROTOCOL.md`.

mod app_methods;
mod authorize;
mod conn;
mod handler;
pub mod listener;
mod mesh_methods;
mod read_helpers;
mod subscription;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use interprocess::local_socket::tokio::Listener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use blazedb_proto::api::StatusResult;
use blazedb_proto::topology::DashboardResult;

use crate::apps::{Access, Apps};
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::store::Store;

pub use conn::MAX_IN_FLIGHT;

/// What every connection shares.
#[derive(Debug)]
pub struct Ctx {
    /// The store.
    pub store: Store,
    /// The largest frame accepted, in bytes.
    pub max_frame: u32,
    /// When the agent started.
    pub started: Instant,
    /// The data directory, for `status`.
    pub data_dir: PathBuf,
    /// The socket path, for `status`.
    pub socket: PathBuf,
    /// The mesh, or why it is not running.
    pub mesh: Result<Mesh, String>,
    /// The local apps and their grants.
    pub apps: Arc<Apps>,
    /// Whether processes of the agent's own user need the owner token.
    pub require_app_tokens: bool,
    /// What the agent counts.
    pub metrics: Arc<Metrics>,
    /// Where the dashboard is served, or why it is not.
    pub dashboard: Result<DashboardResult, String>,
    connections: AtomicU32,
    subscriptions: AtomicU32,
    next_subscription: AtomicU64,
}

/// What the socket server is told of the agent's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The largest frame accepted, in bytes.
    pub max_frame: u32,
    /// The data directory, for `status`.
    pub data_dir: PathBuf,
    /// The socket path, for `status`.
    pub socket: PathBuf,
    /// Whether processes of the agent's own user need the owner token.
    pub require_app_tokens: bool,
}

impl Ctx {
    /// Builds the shared state.
    pub fn new(
        store: Store,
        settings: Settings,
        mesh: Result<Mesh, String>,
        apps: Arc<Apps>,
        metrics: Arc<Metrics>,
        dashboard: Result<DashboardResult, String>,
    ) -> Self {
        Ctx {
            store,
            max_frame: settings.max_frame,
            started: Instant::now(),
            data_dir: settings.data_dir,
            socket: settings.socket,
            mesh,
            apps,
            require_app_tokens: settings.require_app_tokens,
            metrics,
            dashboard,
            connections: AtomicU32::new(0),
            subscriptions: AtomicU32::new(0),
            next_subscription: AtomicU64::new(1),
        }
    }
}

impl Ctx {
    /// The agent's status, as `access` may see it.
    pub fn status(&self, access: &Access) -> StatusResult {
        let mut unopened = self.store.unopened();
        unopened.retain(|u| access.sees_db(&u.db));
        let databases = match access {
            Access::Owner => self.store.db_count(),
            Access::App(_) => self
                .store
                .list()
                .iter()
                .filter(|d| access.sees_db(&d.name))
                .count(),
        };
        StatusResult {
            agent: format!("blazed {}", env!("CARGO_PKG_VERSION")),
            device_id: self.store.device().to_string(),
            data_dir: self.data_dir.display().to_string(),
            socket: self.socket.display().to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            databases: databases as u32,
            connections: self.connections.load(Ordering::Relaxed),
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
            unopened,
            incarnation: self.store.incarnation(),
            new_incarnation: self.store.incarnation_info().changed.clone(),
            store_failed: self.store.failed().map(str::to_owned),
        }
    }
}

/// Accepts connections until `shutdown` turns true, then waits for every
/// connection to finish the requests it has in flight.
pub async fn run(listener: Listener, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            res = listener::accept(&listener) => match res {
                Ok(stream) => {
                    let ctx = ctx.clone();
                    let shutdown = shutdown.clone();
                    conns.spawn(async move {
                        ctx.connections.fetch_add(1, Ordering::Relaxed);
                        conn::serve(stream, ctx.clone(), shutdown).await;
                        ctx.connections.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    // Usually out of file descriptors: give others a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}
