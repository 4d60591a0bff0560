//! What the agent shows of its sync: each link with a peer, per database,
//! with its state, rates and lag (`topology`), and where its local
//! dashboard is served (`dashboard`).

use serde::{Deserialize, Serialize};

/// Result of `topology`: this device, every other member with the link to
/// it, and the links other members report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopologyResult {
    /// This device's id.
    pub device_id: String,
    /// This device's name.
    pub name: String,
    /// `device` or `hub`.
    pub role: String,
    /// The mesh's id (hex), if this device is in one.
    pub mesh: Option<String>,
    /// When the figures were taken, in ms since the Unix epoch.
    pub at_ms: u64,
    /// Every other member of the mesh, with this device's link to it.
    pub links: Vec<LinkInfo>,
    /// Sessions between two other members, as hubs report theirs.
    #[serde(default)]
    pub edges: Vec<Edge>,
}

/// This device's link with one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// The member's id.
    pub device_id: String,
    /// The member's name.
    pub name: String,
    /// `device` or `hub`.
    pub role: String,
    /// How the member is reached (see [`LinkState`]).
    pub state: LinkState,
    /// The hub sync goes through, when `relayed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Why the last dial failed, when `backing_off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the next dial is due, in ms from `at_ms`, when `backing_off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// The session's remote address, when `direct`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The session's round-trip time in milliseconds, when `direct`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// The databases synced over the link, by name.
    #[serde(default)]
    pub databases: Vec<DbLink>,
}

/// How a member is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// A session (QUIC, TLS 1.3) is up.
    Direct,
    /// No session, but a connected hub has one: sync goes through it.
    Relayed,
    /// A dial is under way.
    Connecting,
    /// The last dial failed; the next waits (see `error`, `retry_in_ms`).
    BackingOff,
    /// Not reachable now, and not being dialled.
    Offline,
    /// Removed from the mesh, or left it.
    Removed,
}

impl LinkState {
    /// The state's name as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Direct => "direct",
            LinkState::Relayed => "relayed",
            LinkState::Connecting => "connecting",
            LinkState::BackingOff => "backing_off",
            LinkState::Offline => "offline",
            LinkState::Removed => "removed",
        }
    }
}

/// One database's sync over one link. Rates are over the last 10 seconds;
/// totals count since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DbLink {
    /// The database.
    pub db: String,
    /// This device sends the database's operations to the peer.
    pub sending: bool,
    /// This device takes the database's operations from the peer.
    pub taking: bool,
    /// The database is end-to-end encrypted: the link carries sealed
    /// bodies.
    #[serde(default)]
    pub e2e: bool,
    /// Operations received per second.
    pub ops_in_per_s: f64,
    /// Operations sent per second.
    pub ops_out_per_s: f64,
    /// Bytes received per second.
    pub bytes_in_per_s: f64,
    /// Bytes sent per second.
    pub bytes_out_per_s: f64,
    /// Operations received in all.
    pub ops_in: u64,
    /// Operations sent in all.
    pub ops_out: u64,
    /// Bytes received in all.
    pub bytes_in: u64,
    /// Bytes sent in all.
    pub bytes_out: u64,
    /// Operations this device holds that the peer has not acknowledged,
    /// when this device sends to it and the peer has said what it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ops: Option<u64>,
    /// How long the oldest of those has waited here, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// When sync with the peer last made progress, in ms since the Unix
    /// epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_ms: Option<u64>,
}

/// A session between two other members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The member that reported it (a hub).
    pub from: String,
    /// The member at the other end.
    pub to: String,
}

/// Result of `dashboard`: where the agent serves its local web page and
/// metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardResult {
    /// The dashboard's address, with its token: open it in a browser.
    pub url: String,
    /// Where Prometheus metrics are served.
    pub metrics_url: String,
    /// The token `/metrics` takes as `Authorization: Bearer`.
    pub metrics_token: String,
}
