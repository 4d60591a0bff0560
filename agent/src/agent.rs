//! Starting the agent and shutting it down cleanly.

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::apps::Apps;
use crate::config::Config;
use crate::http;
use crate::identity::Identity;
use crate::ipc::{self, Ctx};
use crate::lock::DataDirLock;
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::store::{Store, StoreOptions};

/// Runs the agent until `shutdown` completes, then finishes in-flight
/// requests, syncs every database to disk and removes the socket.
///
/// `ready` is called once the store is open and the socket accepts
/// connections.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&Config),
) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let _lock = DataDirLock::acquire(&config.data_dir)?;
    let identity = Identity::load_or_create(&config.data_dir)?;
    let metrics = Metrics::new(config.metrics);
    let store = Store::open(
        &config.data_dir.join("store"),
        identity.device_id(),
        StoreOptions {
            flush_interval: config.flush_interval,
            commit_seconds: metrics.commit_seconds(),
            new_device: identity.is_new(),
            record_cache_bytes: config.record_cache_bytes,
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    for tail in store.dropped_tails() {
        let heads: Vec<String> = store
            .list()
            .iter()
            .map(|d| format!("{} at {}", d.name, d.head))
            .collect();
        tracing::warn!(
            "recovery: {tail}. After a crash they most likely held a write that was never \
             acknowledged; otherwise acknowledged writes in them are lost unless a peer holds \
             them. Each change log now ends where recovery left it ({}); cursors past those \
             ends that apps saw before are void",
            heads.join(", ")
        );
    }
    if let Some(why) = &store.incarnation_info().changed {
        tracing::warn!(
            incarnation = store.incarnation(),
            "the store cannot prove it is as the last run left it ({why}): local writes now count \
             under a new write incarnation, so none reuses a seq peers hold; writes the last run \
             had not yet synced to disk or to a peer may be missing"
        );
    }
    let apps = Arc::new(
        Apps::open(&config.data_dir)
            .with_context(|| format!("cannot load the apps in {}", config.data_dir.display()))?,
    );
    let listener = ipc::listener::bind(&config.socket, config.socket_group.as_deref())?;
    tracing::info!(
        device = %identity.device_id(),
        data_dir = %config.data_dir.display(),
        socket = %config.socket.display(),
        "blazed {} is ready",
        env!("CARGO_PKG_VERSION")
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    // Without the mesh the agent still serves local apps; mesh commands
    // then say why it is not running.
    let mesh = Mesh::start(
        config.mesh.clone(),
        &identity,
        store.clone(),
        &config.data_dir,
        stop_rx.clone(),
    )
    .await
    .map_err(|e| {
        tracing::error!("the mesh is not running, so nothing syncs: {e:#}");
        format!("{e:#}")
    });
    let http = match &config.http {
        Some(h) => match http::bind(h, &config.data_dir).await {
            Ok(bound) => Ok(bound),
            Err(e) if h.explicit => return Err(e),
            Err(e) => {
                tracing::warn!("the dashboard is not served: {e:#}");
                Err(format!("{e:#}"))
            }
        },
        None => Err("it is turned off (--no-http, or http = \"off\")".to_owned()),
    };
    let ctx = Arc::new(Ctx::new(
        store.clone(),
        ipc::Settings {
            max_frame: config.max_frame,
            data_dir: config.data_dir.clone(),
            socket: config.socket.clone(),
            require_app_tokens: config.require_app_tokens,
        },
        mesh.clone(),
        apps,
        metrics,
        http.as_ref().map(|b| b.info.clone()).map_err(Clone::clone),
    ));
    let dashboard = http.ok().map(|bound| {
        tracing::info!(url = %bound.info.metrics_url.trim_end_matches("metrics"), "serving the dashboard");
        tokio::spawn(http::run(bound, ctx.clone()))
    });
    let server = tokio::spawn(ipc::run(listener, ctx, stop_rx));
    ready(&config);
    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    if let Some(d) = dashboard {
        d.abort();
    }
    server.await.context("the IPC server task failed")?;
    if let Ok(mesh) = mesh {
        mesh.stop().await;
    }
    store.shutdown().await.context("syncing the store failed")?;
    // The listener removed the socket file when it was dropped; make sure.
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("stopped");
    Ok(())
}
