//! The local dashboard and Prometheus metrics, served over HTTP on
//! loopback only.
//!
//! - `/`, `/app.js`, `/style.css`: the dashboard page, embedded in the
//!   binary (it works offline).
//! - `/api/state`: the agent, its databases and its links, as JSON.
//! - `/api/events`: the same, as server-sent events every second.
//! - `/metrics`: Prometheus metrics (OpenMetrics text).
//!
//! Everything but the page's static files needs a token, so other users of
//! the machine cannot read it: the dashboard token (in `http.token`, given
//! as `?token=` since a browser's event stream cannot send headers), or
//! for `/metrics` also the metrics token (in `metrics.token`, given as
//! `Authorization: Bearer`), which can go to a Prometheus server without
//! opening the dashboard.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use blazedb_proto::api::{DbInfo, StatusResult};
use blazedb_proto::base32;
use blazedb_proto::topology::{DashboardResult, TopologyResult};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::apps::{Access, same_hash, sha256};
use crate::config::HttpConfig;
use crate::ipc::Ctx;
use crate::metrics::{CONTENT_TYPE, Scrape};
use crate::private_file;

/// The file holding the dashboard's token, in the data directory.
pub const DASHBOARD_TOKEN_FILE: &str = "http.token";
/// The file holding the metrics token, in the data directory.
pub const METRICS_TOKEN_FILE: &str = "metrics.token";

/// How often the event stream sends the state.
const EVENT_EVERY: Duration = Duration::from_secs(1);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// A bound listener and the tokens it checks.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    dashboard: [u8; 32],
    metrics: [u8; 32],
    /// Where it is served, for `blazectl dashboard`.
    pub info: DashboardResult,
}

/// Reads a token file, or makes one (32 random bytes, 0600) if there is
/// none.
fn load_or_make_token(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let token = base32::encode(&bytes);
    private_file::write(path, format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// Binds the listener, and loads or makes the tokens in `data_dir`.
pub async fn bind(config: &HttpConfig, data_dir: &Path) -> anyhow::Result<Bound> {
    let dashboard = load_or_make_token(&data_dir.join(DASHBOARD_TOKEN_FILE))?;
    let metrics = load_or_make_token(&data_dir.join(METRICS_TOKEN_FILE))?;
    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot serve the dashboard on {}", config.addr))?;
    let addr = listener.local_addr()?;
    Ok(Bound {
        listener,
        dashboard: sha256(&dashboard),
        metrics: sha256(&metrics),
        info: DashboardResult {
            url: format!("http://{addr}/?token={dashboard}"),
            metrics_url: format!("http://{addr}/metrics"),
            metrics_token: metrics,
        },
    })
}

#[derive(Debug)]
struct Served {
    ctx: Arc<Ctx>,
    dashboard: [u8; 32],
    metrics: [u8; 32],
}

/// What the dashboard shows.
#[derive(Debug, Serialize)]
struct DashboardState {
    agent: StatusResult,
    databases: Vec<DbInfo>,
    topology: TopologyResult,
}

/// Serves until the task is dropped: the agent aborts it at shutdown
/// rather than wait for event streams, which never end on their own.
pub async fn run(bound: Bound, ctx: Arc<Ctx>) {
    let served = Arc::new(Served {
        ctx,
        dashboard: bound.dashboard,
        metrics: bound.metrics,
    });
    let app = Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .route("/metrics", get(metrics))
        .with_state(served);
    if let Err(e) = axum::serve(bound.listener, app).await {
        tracing::warn!("the dashboard stopped: {e}");
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'"),
        ],
        body,
    )
        .into_response()
}

type Params = Query<HashMap<String, String>>;

/// Whether the request carries `want`, as `?token=` or as a bearer token.
fn carries(want: &[u8; 32], params: &HashMap<String, String>, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    [params.get("token").map(String::as_str), bearer]
        .into_iter()
        .flatten()
        .any(|t| same_hash(&sha256(t.trim()), want))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        "the token is missing or wrong: `blazectl dashboard` prints the dashboard's address \
         with its token, and `blazectl dashboard --metrics` the metrics token\n",
    )
        .into_response()
}

async fn gather(ctx: &Ctx) -> DashboardState {
    let topology = match &ctx.mesh {
        Ok(mesh) => mesh.topology().await,
        Err(_) => TopologyResult {
            device_id: ctx.store.device().to_string(),
            name: String::new(),
            role: "device".into(),
            mesh: None,
            at_ms: crate::store::wall_ms(),
            links: Vec::new(),
            edges: Vec::new(),
        },
    };
    DashboardState {
        agent: ctx.status(&Access::Owner),
        databases: ctx.store.list(),
        topology,
    }
}

async fn state(State(s): State<Arc<Served>>, Query(p): Params, headers: HeaderMap) -> Response {
    if !carries(&s.dashboard, &p, &headers) {
        return unauthorized();
    }
    axum::Json(gather(&s.ctx).await).into_response()
}

async fn events(State(s): State<Arc<Served>>, Query(p): Params, headers: HeaderMap) -> Response {
    if !carries(&s.dashboard, &p, &headers) {
        return unauthorized();
    }
    let (tx, rx) = mpsc::channel::<Result<Event, std::convert::Infallible>>(2);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(EVENT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let state = gather(&s.ctx).await;
            let event = match Event::default().event("state").json_data(&state) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("cannot encode the dashboard's state: {e}");
                    continue;
                }
            };
            // The browser went away.
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn metrics(State(s): State<Arc<Served>>, Query(p): Params, headers: HeaderMap) -> Response {
    if !carries(&s.metrics, &p, &headers) && !carries(&s.dashboard, &p, &headers) {
        return unauthorized();
    }
    let ctx = &s.ctx;
    let scrape = Scrape {
        status: Some(ctx.status(&Access::Owner)),
        topology: match &ctx.mesh {
            Ok(mesh) => Some(mesh.topology().await),
            Err(_) => None,
        },
        sizes: ctx.store.sizes(),
        heads: ctx
            .store
            .list()
            .into_iter()
            .map(|d| (d.name, d.head, d.ops_held))
            .collect(),
        record_cache: ctx.store.record_cache_stats(),
    };
    let mut response = ctx.metrics.render(&scrape).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
