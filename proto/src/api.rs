//! The IPC methods: each one's name, params and result.
//!
//! Every method is a marker type implementing [`Method`], so a client can
//! call `client.call::<Get>(params)` and get a typed result back, and the
//! agent decodes any request into one [`Request`] value.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::apps::{
    AppAddParams, AppAddResult, AppGrantParams, AppInfo, AppListResult, AppName, AppRevokeParams,
};
use crate::codec;
use crate::error::{ErrorCode, ErrorInfo};
use crate::op::Hlc;
use crate::topology::{DashboardResult, TopologyResult};
use crate::value::{Fields, Value};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// An IPC method: its wire name and the types of its params and result.
pub trait Method {
    /// The method's name on the wire.
    const NAME: &'static str;
    /// What the request carries.
    type Params: Serialize + DeserializeOwned + Send + 'static;
    /// What a successful response carries.
    type Result: Serialize + DeserializeOwned + Send + 'static;
}

macro_rules! methods {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $params:ty => $result:ty; )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $variant;
            impl Method for $variant {
                const NAME: &'static str = $name;
                type Params = $params;
                type Result = $result;
            }
        )*

        /// Any request, decoded.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Request {
            $( $(#[$doc])* $variant($params), )*
        }

        impl Request {
            /// Decodes the params of the method called `method`.
            pub fn decode(method: &str, params: &[u8]) -> Result<Request, ErrorInfo> {
                // The write path's common shapes are decoded by hand;
                // anything else goes to serde (see `fast`).
                match method {
                    "put" => if let Some(p) = crate::fast::put_params(params) {
                        return Ok(Request::Put(p));
                    },
                    "batch" => if let Some(p) = crate::fast::batch_params(params) {
                        return Ok(Request::Batch(p));
                    },
                    "get" => if let Some(p) = crate::fast::record_ref(params) {
                        return Ok(Request::Get(p));
                    },
                    "get_many" => if let Some(p) = crate::fast::get_many_params(params) {
                        return Ok(Request::GetMany(p));
                    },
                    "delete" => if let Some(p) = crate::fast::record_ref(params) {
                        return Ok(Request::Delete(p));
                    },
                    _ => {}
                }
                match method {
                    $( $name => codec::from_slice(params).map(Request::$variant).map_err(|e| {
                        ErrorInfo::new(ErrorCode::InvalidParams, format!("invalid params for {}: {e}", $name))
                    }), )*
                    other => Err(ErrorInfo::new(
                        ErrorCode::UnknownMethod,
                        format!("unknown method {other:?}; this agent knows: {}", ALL_METHODS.join(", ")),
                    )),
                }
            }

            /// The method's name on the wire.
            pub fn method(&self) -> &'static str {
                match self { $( Request::$variant(_) => $name, )* }
            }
        }

        /// The names of every method, in the order they are documented.
        pub const ALL_METHODS: &[&str] = &[$($name),*];
    };
}

methods! {
    /// Opens a session: must be the first request on a connection.
    Hello = "hello", HelloParams => HelloResult;
    /// Reports on the agent.
    Status = "status", Empty => StatusResult;
    /// Creates a database.
    DbCreate = "db.create", DbCreateParams => DbInfo;
    /// Describes an existing database.
    DbOpen = "db.open", DbName => DbInfo;
    /// Lists the databases.
    DbList = "db.list", Empty => DbListResult;
    /// Deletes a database and everything in it.
    DbDrop = "db.drop", DbDropParams => DroppedResult;
    /// Adds a secondary index on a field of a collection.
    IndexCreate = "index.create", IndexParams => CreatedResult;
    /// Removes a secondary index.
    IndexDrop = "index.drop", IndexParams => DroppedResult;
    /// Writes a whole record.
    Put = "put", PutParams => WriteResult;
    /// Changes some fields of an existing record.
    Patch = "patch", PatchParams => WriteResult;
    /// Deletes a record.
    Delete = "delete", RecordRef => WriteResult;
    /// Reads a record by id.
    Get = "get", RecordRef => GetResult;
    /// Reads many records of one collection by id, in one request.
    GetMany = "get_many", GetManyParams => GetManyResult;
    /// Finds records by field filters.
    Query = "query", QueryParams => QueryResult;
    /// Applies many writes to one database atomically.
    Batch = "batch", BatchParams => BatchResult;
    /// Streams changes to a database or collection.
    Subscribe = "subscribe", SubscribeParams => SubscribeResult;
    /// Ends a subscription.
    Unsubscribe = "unsubscribe", UnsubscribeParams => UnsubscribeResult;
    /// Sets how a database takes part in sync.
    DbSync = "db.sync", DbSyncParams => DbInfo;
    /// Changes a database's conflict priority or durability, at once.
    DbSet = "db.set", DbSetParams => DbInfo;
    /// Sets which devices this device syncs a database with, and which
    /// way, at once.
    DbPeers = "db.peers", DbPeersParams => DbInfo;
    /// Sets a database's access rules, signed by this device (mesh admins
    /// only).
    DbRulesSet = "db.rules.set", DbRulesSetParams => DbRulesResult;
    /// A database's access rules, and what they give this device.
    DbRulesGet = "db.rules.get", DbName => DbRulesResult;
    /// Gives a member (a hub: devices with access get keys on their own)
    /// every key of an end-to-end encrypted database this device holds
    /// (admins only).
    DbKeyGrant = "db.key.grant", DbKeyGrantParams => DbKeyGrantResult;
    /// Makes the next key epoch of an end-to-end encrypted database and
    /// grants it to every member that may hold it; new operations are
    /// sealed under it.
    DbKeyRotate = "db.key.rotate", DbName => DbInfo;
    /// This device's identity and mesh.
    MeshStatus = "mesh.status", Empty => MeshStatusResult;
    /// Creates a mesh with this device as its first member.
    MeshCreate = "mesh.create", Empty => MeshStatusResult;
    /// Makes an invite code that lets another device join the mesh.
    MeshInvite = "mesh.invite", MeshInviteParams => MeshInviteResult;
    /// Joins the mesh of an invite code made on another device.
    MeshJoin = "mesh.join", MeshJoinParams => MeshStatusResult;
    /// Removes a device from the mesh, on every member (admins only).
    MeshRemove = "mesh.remove", MeshRemoveParams => MeshStatusResult;
    /// Makes a device an admin of the mesh, or takes that away (admins
    /// only).
    MeshAdmin = "mesh.admin", MeshAdminParams => MeshStatusResult;
    /// Sets a device's name or teams (admins only).
    MeshDeviceSet = "mesh.device.set", MeshDeviceSetParams => PeerInfo;
    /// This device leaves the mesh and keeps its databases.
    MeshLeave = "mesh.leave", Empty => MeshStatusResult;
    /// Lists the mesh's members with their links.
    Peers = "peers", Empty => PeersResult;
    /// Adds an address to dial always (a hub, a peer mDNS does not reach).
    PeerAdd = "peer.add", PeerAddParams => CreatedResult;
    /// Lists the addresses dialled always, with how each fares.
    PeerList = "peer.list", Empty => PeerListResult;
    /// Stops dialling an address always.
    PeerRemove = "peer.remove", PeerAddParams => DroppedResult;
    /// Adds a local app with grants; returns its token, shown once
    /// (owner only).
    AppAdd = "app.add", AppAddParams => AppAddResult;
    /// Lists the local apps (owner only).
    AppList = "app.list", Empty => AppListResult;
    /// Describes one app (owner only).
    AppShow = "app.show", AppName => AppInfo;
    /// Removes an app and cuts its connections (owner only).
    AppRemove = "app.remove", AppName => DroppedResult;
    /// Adds a grant to an app, or replaces its grant on the same
    /// database and collection (owner only).
    AppGrantAdd = "app.grant", AppGrantParams => AppInfo;
    /// Takes grants back from an app and cuts its connections (owner
    /// only).
    AppRevoke = "app.revoke", AppRevokeParams => AppInfo;
    /// This device's link with every member, per database, with rates
    /// and lag (owner only).
    Topology = "topology", Empty => TopologyResult;
    /// Where the local dashboard and metrics are served, with their
    /// tokens (owner only).
    Dashboard = "dashboard", Empty => DashboardResult;
}

/// Params of `db.sync`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbSyncParams {
    /// The database.
    pub name: String,
    /// The new mode; `local` stops sync.
    pub sync_mode: SyncMode,
    /// Less than the access rules allow, which this device asks to
    /// receive; an empty wish asks for all of it again. Left as it is when
    /// missing.
    #[serde(default)]
    pub wish: Option<crate::rules::SyncWish>,
}

/// Params of `db.set`: what is missing stays as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbSetParams {
    /// The database.
    pub name: String,
    /// The conflict priority of this device's writes from now on.
    #[serde(default)]
    pub priority: Option<u8>,
    /// The durability of writes from now on.
    #[serde(default)]
    pub durability: Option<Durability>,
}

/// One rule of `db.rules.set`: as [`AccessRule`](crate::rules::AccessRule),
/// with devices named as on the command line (`device:NAME-OR-ID`,
/// `team:NAME`, `role:hub`, `*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSpec {
    /// The devices it applies to.
    pub devices: Vec<String>,
    /// The collections they may see; all when missing.
    #[serde(default)]
    pub collections: Option<Vec<String>>,
    /// Conditions a record must meet to be seen.
    #[serde(default, rename = "where")]
    pub filter: Vec<crate::rules::RuleFilter>,
    /// Fields never sent to them nor taken from them.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `none`, `read` or `read-write`.
    pub access: crate::rules::AccessLevel,
}

/// Params of `db.key.grant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbKeyGrantParams {
    /// The database.
    pub name: String,
    /// The member, by name, id or id prefix.
    pub device: String,
}

/// Result of `db.key.grant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbKeyGrantResult {
    /// The member's id.
    pub device_id: String,
    /// How many key epochs were granted now (0: it had them all).
    pub granted: u32,
}

/// Params of `db.rules.set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbRulesSetParams {
    /// The database.
    pub db: String,
    /// What devices no rule selects get (`read-write` when missing).
    #[serde(default = "full_access")]
    pub default: crate::rules::AccessLevel,
    /// The rules, first match wins.
    pub rules: Vec<RuleSpec>,
    /// Who syncs the database with whom, first match wins; every member
    /// with every other when empty.
    #[serde(default)]
    pub links: Vec<LinkSpec>,
}

/// One link of `db.rules.set`, with devices named as people write them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSpec {
    /// One end: `device:NAME` (a name, id or id prefix), `team:NAME`,
    /// `role:hub` or `*`.
    pub devices: Vec<String>,
    /// The other end, written the same way.
    pub peers: Vec<String>,
    /// The direction as `devices` see it.
    pub sync_mode: SyncMode,
}

fn full_access() -> crate::rules::AccessLevel {
    crate::rules::AccessLevel::ReadWrite
}

/// Result of `db.rules.set` and `db.rules.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbRulesResult {
    /// The database.
    pub db: String,
    /// Its rules as an admin signed them; nil when none were set.
    pub rules: Option<crate::rules::AccessRules>,
    /// The names of the devices the rules and their signer name, by id.
    pub names: std::collections::BTreeMap<String, String>,
    /// What this device gets: `full`, or its partial view in words.
    pub this_device: String,
    /// The members the rules' links give this device to sync the
    /// database with, and which way; nil when the rules have no links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links_here: Option<Vec<DbPeer>>,
}

/// Result of `mesh.status`, `mesh.create`, `mesh.join` and `mesh.remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshStatusResult {
    /// This device's id, in the form people compare.
    pub device_id: String,
    /// This device's name.
    pub name: String,
    /// `device` or `hub`.
    pub role: String,
    /// The mesh's id (hex), if this device is in one.
    pub mesh: Option<String>,
    /// Where the mesh listens, `ip:port`.
    pub listen: String,
    /// The addresses announced to peers.
    pub addrs: Vec<String>,
    /// Whether mDNS runs.
    pub mdns: bool,
    /// How many other devices are members.
    pub members: u32,
    /// Whether this device is an admin of the mesh.
    #[serde(default)]
    pub admin: bool,
    /// This device's teams.
    #[serde(default)]
    pub teams: Vec<String>,
    /// The mesh's admins.
    #[serde(default)]
    pub admins: Vec<MemberSummary>,
    /// The epoch of the mesh secret: one more after every rotation.
    #[serde(default)]
    pub key_epoch: u32,
    /// How this device left its last mesh, if it is in none now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub departed: Option<Departed>,
    /// The addresses dialled always, with how each fares.
    #[serde(default)]
    pub static_peers: Vec<StaticPeerInfo>,
    /// Set by `mesh.join` when this device already was an active member.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_member: bool,
}

/// A device named in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSummary {
    /// Its id.
    pub device_id: String,
    /// Its name.
    pub name: String,
}

/// How this device left a mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departed {
    /// The mesh's id (hex).
    pub mesh: String,
    /// Who removed this device (itself when it left).
    pub by: MemberSummary,
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// Whether this device left by itself.
    pub left: bool,
}

/// An address dialled always.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticPeerInfo {
    /// `host:port`.
    pub addr: String,
    /// `connected` or `unreachable`.
    pub state: String,
    /// The device it leads to, while connected.
    pub device_id: Option<String>,
    /// Why the last attempt failed, while unreachable.
    pub last_error: Option<String>,
}

/// Result of `peer.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerListResult {
    /// The addresses.
    pub peers: Vec<StaticPeerInfo>,
}

/// Params of `mesh.admin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshAdminParams {
    /// The device: its id, 7 or more of its first characters, or its name.
    pub device: String,
    /// Whether it is to be an admin.
    pub admin: bool,
}

/// Params of `mesh.device.set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshDeviceSetParams {
    /// The device: its id, 7 or more of its first characters, or its name.
    pub device: String,
    /// Its new name.
    #[serde(default)]
    pub name: Option<String>,
    /// Its new teams (replacing the old ones).
    #[serde(default)]
    pub teams: Option<Vec<String>>,
}

/// Params of `mesh.invite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshInviteParams {
    /// How long the invite works, in seconds (default one hour).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// How many devices may use it (default one; 0 for any number).
    #[serde(default)]
    pub uses: Option<u32>,
    /// The teams devices that join with it belong to.
    #[serde(default)]
    pub teams: Vec<String>,
}

/// Result of `mesh.invite`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshInviteResult {
    /// The code to give the other device.
    pub code: String,
    /// When it stops working, in ms since the Unix epoch.
    pub expires_ms: u64,
    /// How many devices may use it; absent for any number.
    pub uses: Option<u32>,
}

/// Params of `mesh.join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshJoinParams {
    /// The invite code.
    pub code: String,
}

/// Params of `mesh.remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshRemoveParams {
    /// The device: its id as `blazectl id` or `blazectl peers` prints it,
    /// 7 or more of its first characters, or its name.
    pub device: String,
}

/// Params of `peer.add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddParams {
    /// `host:port`.
    pub addr: String,
}

/// Result of `peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeersResult {
    /// Every member but this device, removed ones included.
    pub peers: Vec<PeerInfo>,
}

/// One member of the mesh, as this device sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its id.
    pub device_id: String,
    /// Its name.
    pub name: String,
    /// `device` or `hub`.
    pub role: String,
    /// Its teams.
    #[serde(default)]
    pub teams: Vec<String>,
    /// Whether it is an admin of the mesh.
    #[serde(default)]
    pub admin: bool,
    /// `connected`, `relayed` (no link, but a connected hub has one),
    /// `offline` or `removed`.
    pub state: String,
    /// The hub it is reached through, when `relayed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The connection's remote address, or the last known one.
    pub address: Option<String>,
    /// The connection's round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// When sync with it last made progress, in ms since the Unix epoch.
    pub last_sync_ms: Option<u64>,
    /// Something the user should act on, such as two machines running with
    /// this device's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The method name of change-event notifications.
pub const EVENT_METHOD: &str = "event";

/// The method name of the notification that ends a subscription the agent
/// can no longer serve (its database was dropped, or reading failed).
pub const SUBSCRIPTION_END_METHOD: &str = "subscription_end";

/// Params of a `subscription_end` notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionEndParams {
    /// The subscription that ended.
    pub subscription: u64,
    /// Why it ended.
    pub error: ErrorInfo,
}

/// Params or a result with no fields (an empty map on the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Params of `hello`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloParams {
    /// The protocol version the client speaks.
    pub protocol: u32,
    /// The client's name, for the agent's logs.
    #[serde(default)]
    pub client: String,
    /// The app this client connects as, with its `token`; the device's
    /// owner when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The app's token, or without `app` the owner token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Result of `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResult {
    /// The protocol version the agent speaks.
    pub protocol: u32,
    /// The agent's name and version.
    pub agent: String,
    /// This device's id.
    pub device_id: String,
    /// The largest frame payload the agent accepts, in bytes.
    pub max_frame: u32,
    /// The app the agent took this client for; missing for the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// Result of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResult {
    /// The agent's name and version.
    pub agent: String,
    /// This device's id.
    pub device_id: String,
    /// Where the agent keeps its data.
    pub data_dir: String,
    /// The socket the agent listens on.
    pub socket: String,
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
    /// How many databases there are.
    pub databases: u32,
    /// How many local clients are connected.
    pub connections: u32,
    /// How many subscriptions are open.
    pub subscriptions: u32,
    /// Operations of end-to-end encrypted databases that did not open
    /// here and are not applied: asked for again until a whole copy
    /// arrives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unopened: Vec<UnopenedOp>,
    /// The write incarnation local writes carry in this run (0: the
    /// device's first). It changes whenever the store cannot prove it is
    /// as the last run left it, so no seq is ever handed out twice.
    #[serde(default)]
    pub incarnation: u32,
    /// Why this run took a new write incarnation (a crash, a restore from
    /// a backup, a copied data directory), if it did: writes the last run
    /// had not yet synced to disk or to a peer may be missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_incarnation: Option<String>,
    /// Why the store takes no more writes, if a commit or a sync of its
    /// journal failed in this run (a full disk, an I/O error). Sync then
    /// stalls too, as it tells peers only of ops on disk; both resume
    /// once the agent restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_failed: Option<String>,
}

/// An operation that did not open on this device (`status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnopenedOp {
    /// The database.
    pub db: String,
    /// The device that wrote it.
    pub origin: String,
    /// Its seq: this and the origin's later operations wait.
    pub seq: u64,
    /// How many copies of it did not open.
    pub times: u32,
    /// Why the latest did not.
    pub reason: String,
    /// Refused again and again (altered or forged, not merely waiting for
    /// a key): reported as quarantined, still never applied.
    pub quarantined: bool,
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// After it is on disk (fsync of its commit group).
    #[default]
    Fsync,
    /// After it is handed to the OS; the agent syncs to disk periodically.
    /// Survives the agent crashing, not the machine losing power.
    Buffered,
}

/// How a database takes part in sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Send and receive changes.
    #[default]
    Sync,
    /// Only receive changes.
    Pull,
    /// Only send changes.
    Push,
    /// Never leaves this device.
    Local,
}

/// Per-database settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DbSettings {
    /// When writes are acknowledged.
    pub durability: Durability,
    /// How the database takes part in sync.
    pub sync_mode: SyncMode,
    /// The conflict priority of this device's writes (0 to 127): a write
    /// with a higher priority wins over any write with a lower one,
    /// whatever their clocks say. A hub or parent device sets it above the
    /// others' to win ties ("server priority"); 0 by default.
    pub priority: u8,
    /// Who may read the database's operations as they travel: `none` (any
    /// member holding the database, hubs included, which may then filter
    /// and merge) or `e2e` (only devices holding its content key). Fixed
    /// when the database is made.
    pub encryption: Encryption,
}

/// How a database's operations travel through the mesh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    /// Operations travel as written (inside each link's TLS): every replica
    /// can read them, a hub included.
    #[default]
    None,
    /// Operation bodies are sealed on the device that writes them with the
    /// database's content key; a replica without the key relays them
    /// without reading them.
    E2e,
}

impl Encryption {
    /// The name `db list` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::None => "none",
            Encryption::E2e => "e2e",
        }
    }
}

/// Params of `db.create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbCreateParams {
    /// The database name.
    pub name: String,
    /// Its settings.
    #[serde(default)]
    pub settings: DbSettings,
    /// Succeed (returning the existing database) if it exists already.
    #[serde(default)]
    pub if_not_exists: bool,
}

/// Params naming a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbName {
    /// The database name.
    pub name: String,
}

/// Params of `db.drop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbDropParams {
    /// The database name.
    pub name: String,
    /// Succeed (with `dropped: false`) if there is no such database.
    #[serde(default)]
    pub if_exists: bool,
}

/// A collection and its indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionInfo {
    /// The collection name.
    pub name: String,
    /// The fields that have a secondary index.
    pub indexes: Vec<String>,
}

/// A database's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbInfo {
    /// The database name.
    pub name: String,
    /// Its settings.
    pub settings: DbSettings,
    /// Its collections.
    pub collections: Vec<CollectionInfo>,
    /// The cursor of its latest change (0 before any).
    pub head: u64,
    /// For an `e2e` database, the newest content-key epoch this device
    /// holds: `None` when it holds none, and can then only relay the
    /// database's operations, not read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_epoch: Option<u32>,
    /// How many operations this replica holds, its own and every other
    /// device's (held in the log, or folded into its records or a
    /// checkpoint).
    #[serde(default)]
    pub ops_held: u64,
    /// The devices it syncs with, each with a direction; every member
    /// when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<DbPeer>>,
    /// The id of its change log on this device: cursors are meaningful
    /// with the log they came from (see `SubscribeParams::log`).
    #[serde(default)]
    pub log: u64,
}

/// A device a database syncs with, and which way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbPeer {
    /// The device: in results its id; in `db.peers` params also an id
    /// prefix or a name.
    pub device: String,
    /// `sync` (both ways), `pull` (only from it), `push` (only to it).
    pub sync_mode: SyncMode,
}

/// Params of `db.peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbPeersParams {
    /// The database.
    pub name: String,
    /// The devices it syncs with from now on; every member when nil.
    pub peers: Option<Vec<DbPeer>>,
}

/// Result of `db.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbListResult {
    /// Every database, by name.
    pub databases: Vec<DbInfo>,
}

/// Result of a method that removes something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedResult {
    /// Whether there was something to remove.
    pub dropped: bool,
}

/// Result of a method that creates something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedResult {
    /// False when it existed already.
    pub created: bool,
}

/// Params of `index.create` and `index.drop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    /// The database.
    pub db: String,
    /// The collection.
    pub collection: String,
    /// The field.
    pub field: String,
}

/// Params of `put`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutParams {
    /// The database.
    pub db: String,
    /// The collection.
    pub collection: String,
    /// The record id; the agent picks a UUID when it is missing.
    #[serde(default)]
    pub id: Option<String>,
    /// The record's fields.
    pub fields: Fields,
}

/// Params of `patch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchParams {
    /// The database.
    pub db: String,
    /// The collection.
    pub collection: String,
    /// The record id.
    pub id: String,
    /// Fields to set.
    #[serde(default)]
    pub set: Fields,
    /// Fields to remove.
    #[serde(default)]
    pub unset: Vec<String>,
}

/// Params naming one record (`get`, `delete`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    /// The database.
    pub db: String,
    /// The collection.
    pub collection: String,
    /// The record id.
    pub id: String,
}

/// The most ids one `get_many` may name.
pub const MAX_GET_MANY: usize = 10_000;

/// Params of `get_many`: records of one collection by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetManyParams {
    /// The database.
    pub db: String,
    /// The collection.
    pub collection: String,
    /// The record ids, at most [`MAX_GET_MANY`]; an id may repeat.
    pub ids: Vec<String>,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The record id (chosen by the agent if the put had none).
    pub id: String,
    /// The operation's sequence number on this device.
    pub seq: u64,
    /// The operation's clock reading, which is also the record's version.
    pub hlc: Hlc,
    /// The change cursor of the write.
    pub cursor: u64,
}

impl WriteResult {
    /// Appends what encoding this result through serde appends, written by
    /// hand: the writer thread answers a batch of a thousand puts with a
    /// thousand of these.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        use crate::codec::raw;
        // A map of four, then each key as the str it encodes to.
        out.reserve(Self::MOST_BESIDE_ID + self.id.len());
        out.extend_from_slice(b"\x84\xa2id");
        raw::str(out, &self.id);
        out.extend_from_slice(b"\xa3seq");
        raw::uint(out, self.seq);
        out.extend_from_slice(b"\xa3hlc");
        raw::uint(out, self.hlc.0);
        out.extend_from_slice(b"\xa6cursor");
        raw::uint(out, self.cursor);
    }

    /// The most a result takes besides its id's bytes: the map and key
    /// headers, the id's header and three integers of nine bytes.
    const MOST_BESIDE_ID: usize = 4 + 5 + 4 + 9 + 4 + 9 + 7 + 9;
}

/// A record as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The record id.
    pub id: String,
    /// The record's fields.
    pub fields: Fields,
    /// The clock reading of the latest write to it.
    pub version: Hlc,
}

impl Record {
    /// The record's fields as a `T` (any type serde can build from a
    /// map of them), as `Collection::get` returns it.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::codec::CodecError> {
        crate::codec::from_fields(&self.fields)
    }
}

/// Result of `get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetResult {
    /// The record, or nil when there is none with that id.
    pub record: Option<Record>,
}

/// A record whose field values are still encoded, as the agent stores
/// them: a get is answered with it without decoding values that are only
/// passed on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedRecord<'a> {
    /// The record id.
    pub id: &'a str,
    /// The fields in name order, as one encoded MessagePack map of name
    /// to [`Value`].
    pub fields: &'a [u8],
    /// The clock reading of the latest write to it.
    pub version: Hlc,
}

impl EncodedRecord<'_> {
    /// An encoded map of fields (as [`EncodedRecord::fields`] holds) with
    /// only the fields `keep` picks, values copied as they are. Fields
    /// from one that does not read on are left out.
    pub fn fields_only(map: &[u8], keep: impl Fn(&str) -> bool) -> Vec<u8> {
        use codec::raw::{self, Reader};
        let mut r = Reader::new(map);
        let mut kept = Vec::new();
        for _ in 0..r.map_len("a record's fields").unwrap_or(0) {
            let (Ok(name), Ok(value)) = (r.str("a field name"), r.value()) else {
                break;
            };
            if keep(name) {
                kept.push((name, value));
            }
        }
        let mut out = Vec::with_capacity(map.len());
        raw::map_len(&mut out, kept.len() as u32);
        for (name, value) in kept {
            raw::str(&mut out, name);
            out.extend_from_slice(value);
        }
        out
    }
}

/// Result of `get_many`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetManyResult {
    /// One entry per id asked for, in the same order: the record, or nil
    /// when there is none with that id.
    pub records: Vec<Option<Record>>,
}

impl GetManyResult {
    /// Decodes a `GetManyResult`: by hand when it has the form the agent
    /// writes ([`GetManyResult::encode_head`]), else with serde.
    pub fn decode(bytes: &[u8]) -> Result<GetManyResult, codec::CodecError> {
        by_hand_or_serde(bytes, "records", |r| {
            let count = r.array_len("").ok()? as usize;
            // Cap the pre-allocation: the count comes from the input.
            let mut records = Vec::with_capacity(count.min(MAX_GET_MANY));
            for _ in 0..count {
                records.push(read_record(r)?);
            }
            Some(GetManyResult { records })
        })
    }

    /// Appends the start of a `GetManyResult` of `count` records: follow
    /// it with each record's [`GetResult::encode_record`].
    pub fn encode_head(out: &mut Vec<u8>, count: usize) {
        use codec::raw;
        raw::map_len(out, 1);
        raw::str(out, "records");
        raw::array_len(out, u32::try_from(count).unwrap_or(u32::MAX));
    }
}

impl GetResult {
    /// Decodes a `GetResult`: by hand when it has the form the agent
    /// writes ([`GetResult::encode_from`]), else with serde.
    pub fn decode(bytes: &[u8]) -> Result<GetResult, codec::CodecError> {
        by_hand_or_serde(bytes, "record", |r| {
            Some(GetResult {
                record: read_record(r)?,
            })
        })
    }

    /// Appends what encoding a `GetResult` of `record` gives, byte for
    /// byte, without decoding its values.
    pub fn encode_from(out: &mut Vec<u8>, record: Option<&EncodedRecord<'_>>) {
        use codec::raw;
        raw::map_len(out, 1);
        raw::str(out, "record");
        Self::encode_record(out, record);
    }

    /// Appends what encoding `record` (an `Option<Record>`) gives.
    pub fn encode_record(out: &mut Vec<u8>, record: Option<&EncodedRecord<'_>>) {
        use codec::raw;
        let Some(r) = record else {
            raw::nil(out);
            return;
        };
        // Field order and names follow `Record`'s declaration.
        raw::map_len(out, 3);
        raw::str(out, "id");
        raw::str(out, r.id);
        raw::str(out, "fields");
        out.extend_from_slice(r.fields);
        raw::str(out, "version");
        raw::uint(out, r.version.0);
    }
}

/// Decodes a result that is a map of one entry, `name`, whose value
/// `read` reads by hand; where it finds another form, serde decodes
/// `bytes` (and gives the value or the error).
fn by_hand_or_serde<T: DeserializeOwned>(
    bytes: &[u8],
    name: &str,
    read: impl FnOnce(&mut codec::raw::Reader<'_>) -> Option<T>,
) -> Result<T, codec::CodecError> {
    let by_hand = || {
        let mut r = codec::raw::Reader::new(bytes);
        if r.map_len("").ok()? != 1 {
            return None;
        }
        key(&mut r, name)?;
        let value = read(&mut r)?;
        r.end().ok()?;
        Some(value)
    };
    by_hand().map_or_else(|| codec::from_slice(bytes), Ok)
}

/// Reads a map key, if it is `want`.
fn key(r: &mut codec::raw::Reader<'_>, want: &str) -> Option<()> {
    r.key_is(want).then_some(())
}

/// Reads an `Option<Record>` in the form [`GetResult::encode_record`]
/// writes; `None` for any other.
fn read_record(r: &mut codec::raw::Reader<'_>) -> Option<Option<Record>> {
    if r.is_nil() {
        r.byte("").ok()?;
        return Some(None);
    }
    if r.map_len("").ok()? != 3 {
        return None;
    }
    key(r, "id")?;
    let id = r.str("").ok()?.to_owned();
    key(r, "fields")?;
    let Value::Map(fields) = r.value_tree()? else {
        return None;
    };
    key(r, "version")?;
    let version = Hlc(r.uint("").ok()?);
    Some(Some(Record {
        id,
        fields,
        version,
    }))
}

/// A comparison in a query filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterOp {
    /// Equal.
    #[serde(rename = "=")]
    Eq,
    /// Not equal (records without the field match).
    #[serde(rename = "!=")]
    Ne,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
    /// Equal to one of a list of values.
    #[serde(rename = "in")]
    In,
    /// A string that starts with the given string.
    #[serde(rename = "prefix")]
    Prefix,
}

impl FilterOp {
    /// The operator as written on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterOp::Eq => "=",
            FilterOp::Ne => "!=",
            FilterOp::Lt => "<",
            FilterOp::Le => "<=",
            FilterOp::Gt => ">",
            FilterOp::Ge => ">=",
            FilterOp::In => "in",
            FilterOp::Prefix => "prefix",
        }
    }
}

/// The pseudo-field that names the record id in filters and `order_by`.
pub const ID_FIELD: &str = "$id";

/// One condition of a query: `field op value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    /// The field (or `$id`).
    pub field: String,
    /// The comparison.
    pub op: FilterOp,
    /// What to compare with (a list for `in`, a string for `prefix`).
    pub value: Value,
}

/// Params of `query`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryParams {
    /// The database.
    pub db: String,
    /// The collection.
    pub collection: String,
    /// Conditions that all must hold.
    #[serde(default, rename = "where")]
    pub filters: Vec<Filter>,
    /// The field to sort by; by id when missing.
    #[serde(default)]
    pub order_by: Option<String>,
    /// Sort descending.
    #[serde(default)]
    pub desc: bool,
    /// At most this many records (default 100, at most 10 000).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Where the previous page ended.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Result of `query`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    /// The matching records, in order.
    pub records: Vec<Record>,
    /// Pass this as `cursor` to get the next page; nil on the last page.
    pub next_cursor: Option<String>,
}

/// One write in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Write {
    /// Writes a whole record.
    Put {
        /// The collection.
        collection: String,
        /// The record id; the agent picks a UUID when it is missing.
        #[serde(default)]
        id: Option<String>,
        /// The record's fields.
        fields: Fields,
    },
    /// Changes some fields of an existing record.
    Patch {
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
        /// Fields to set.
        #[serde(default)]
        set: Fields,
        /// Fields to remove.
        #[serde(default)]
        unset: Vec<String>,
    },
    /// Deletes a record.
    Delete {
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
    },
}

impl From<crate::OpBody> for Write {
    /// The write an operation's body stands for (a put names its id).
    fn from(body: crate::OpBody) -> Write {
        match body {
            crate::OpBody::Put {
                collection,
                id,
                fields,
            } => Write::Put {
                collection,
                id: Some(id),
                fields,
            },
            crate::OpBody::Patch {
                collection,
                id,
                set,
                unset,
            } => Write::Patch {
                collection,
                id,
                set,
                unset,
            },
            crate::OpBody::Delete { collection, id } => Write::Delete { collection, id },
            // A refused write changes nothing: an empty patch does the same.
            crate::OpBody::Rejected { collection, id, .. } => Write::Patch {
                collection,
                id,
                set: Fields::new(),
                unset: Vec::new(),
            },
        }
    }
}

impl From<PutParams> for Write {
    fn from(p: PutParams) -> Self {
        Write::Put {
            collection: p.collection,
            id: p.id,
            fields: p.fields,
        }
    }
}

impl From<PatchParams> for Write {
    fn from(p: PatchParams) -> Self {
        Write::Patch {
            collection: p.collection,
            id: p.id,
            set: p.set,
            unset: p.unset,
        }
    }
}

impl From<RecordRef> for Write {
    fn from(p: RecordRef) -> Self {
        Write::Delete {
            collection: p.collection,
            id: p.id,
        }
    }
}

/// Params of `batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchParams {
    /// The database.
    pub db: String,
    /// The writes, applied in order, all or none.
    pub writes: Vec<Write>,
}

impl BatchParams {
    /// Appends what encoding these params with serde gives, byte for
    /// byte, by hand: a batch of puts is the hottest request a client
    /// sends, and serde's generic encoder costs several times more.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), codec::CodecError> {
        Self::encode_head(out, &self.db, self.writes.len())?;
        let first = out.len();
        for (i, write) in self.writes.iter().enumerate() {
            if i == 1 {
                // The writes of a batch are mostly alike: room for the rest
                // at the first one's size, rather than growing many times
                // (no more than a frame may hold: a larger batch is refused).
                let rest = (out.len() - first).saturating_mul(self.writes.len() - 1);
                out.reserve(rest.min(crate::frame::DEFAULT_MAX_FRAME as usize));
            }
            write.encode_into(out)?;
        }
        Ok(())
    }

    /// Appends params of `count` writes to `db` whose encodings
    /// ([`Write::encode_into`], [`Write::encode_put`]) `writes` holds, one
    /// after the other: the same bytes as [`BatchParams::encode_into`] of
    /// those writes, for a client that encodes each write as it is added.
    pub fn encode_encoded(
        out: &mut Vec<u8>,
        db: &str,
        count: usize,
        writes: &[u8],
    ) -> Result<(), codec::CodecError> {
        Self::encode_head(out, db, count)?;
        out.extend_from_slice(writes);
        Ok(())
    }

    /// Field order and names follow the declarations (serde's order).
    fn encode_head(out: &mut Vec<u8>, db: &str, count: usize) -> Result<(), codec::CodecError> {
        use codec::raw;
        raw::map_len(out, 2);
        raw::str(out, "db");
        raw::str(out, db);
        raw::str(out, "writes");
        raw::array_len(out, raw::len_u32(count)?);
        Ok(())
    }
}

impl Write {
    /// Appends the write as serde encodes it, by hand (the writes of
    /// [`BatchParams::encode_into`]).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), codec::CodecError> {
        match self {
            Write::Put {
                collection,
                id,
                fields,
            } => Self::encode_put(out, collection, id.as_deref(), fields),
            Write::Patch {
                collection,
                id,
                set,
                unset,
            } => Self::encode_patch(out, collection, id, set, unset),
            Write::Delete { collection, id } => {
                Self::encode_delete(out, collection, id);
                Ok(())
            }
        }
    }

    /// Appends the encoding of `Write::Put` of these parts, borrowed.
    pub fn encode_put(
        out: &mut Vec<u8>,
        collection: &str,
        id: Option<&str>,
        fields: &Fields,
    ) -> Result<(), codec::CodecError> {
        use codec::raw;
        Self::encode_head(out, "put", 3, collection);
        raw::str(out, "id");
        match id {
            Some(id) => raw::str(out, id),
            None => raw::nil(out),
        }
        raw::str(out, "fields");
        raw::fields(out, fields)
    }

    /// Appends the encoding of `Write::Patch` of these parts, borrowed.
    pub fn encode_patch(
        out: &mut Vec<u8>,
        collection: &str,
        id: &str,
        set: &Fields,
        unset: &[impl AsRef<str>],
    ) -> Result<(), codec::CodecError> {
        use codec::raw;
        Self::encode_head(out, "patch", 4, collection);
        raw::str(out, "id");
        raw::str(out, id);
        raw::str(out, "set");
        raw::fields(out, set)?;
        raw::str(out, "unset");
        raw::array_len(out, raw::len_u32(unset.len())?);
        for name in unset {
            raw::str(out, name.as_ref());
        }
        Ok(())
    }

    /// Appends the encoding of `Write::Delete` of these parts, borrowed.
    pub fn encode_delete(out: &mut Vec<u8>, collection: &str, id: &str) {
        use codec::raw;
        Self::encode_head(out, "delete", 2, collection);
        raw::str(out, "id");
        raw::str(out, id);
    }

    /// `{kind: {"collection": collection, ...}}` up to the write's other
    /// `entries - 1` entries, which the caller appends.
    fn encode_head(out: &mut Vec<u8>, kind: &str, entries: u32, collection: &str) {
        use codec::raw;
        raw::map_len(out, 1);
        raw::str(out, kind);
        raw::map_len(out, entries);
        raw::str(out, "collection");
        raw::str(out, collection);
    }
}

/// Result of `batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    /// One result per write, in order.
    pub results: Vec<WriteResult>,
}

impl BatchResult {
    /// Appends what encoding this result through serde appends, written by
    /// hand ([`WriteResult::encode_into`] for each write).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), codec::CodecError> {
        use crate::codec::raw;
        raw::map_len(out, 1);
        raw::str(out, "results");
        raw::array_len(out, raw::len_u32(self.results.len())?);
        // Most ids are short: room for all of them at once, roughly.
        out.reserve(self.results.len() * (WriteResult::MOST_BESIDE_ID + 16));
        for r in &self.results {
            r.encode_into(out);
        }
        Ok(())
    }

    /// Decodes a `BatchResult`: by hand when it has the form serde gives
    /// (the agent's), else with serde. A batch of a thousand puts is
    /// answered with a thousand results.
    pub fn decode(bytes: &[u8]) -> Result<BatchResult, codec::CodecError> {
        by_hand_or_serde(bytes, "results", |r| {
            let count = r.array_len("").ok()? as usize;
            // Cap the pre-allocation: the count comes from the input.
            let mut results = Vec::with_capacity(count.min(1 << 16));
            for _ in 0..count {
                if r.map_len("").ok()? != 4 {
                    return None;
                }
                key(r, "id")?;
                let id = r.str("").ok()?.to_owned();
                key(r, "seq")?;
                let seq = r.uint("").ok()?;
                key(r, "hlc")?;
                let hlc = Hlc(r.uint("").ok()?);
                key(r, "cursor")?;
                let cursor = r.uint("").ok()?;
                results.push(WriteResult {
                    id,
                    seq,
                    hlc,
                    cursor,
                });
            }
            Some(BatchResult { results })
        })
    }
}

/// Params of `subscribe`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeParams {
    /// The database.
    pub db: String,
    /// Only changes to this collection; all collections when missing.
    #[serde(default)]
    pub collection: Option<String>,
    /// Replay every change after this cursor first; only new changes when
    /// missing.
    #[serde(default)]
    pub since: Option<u64>,
    /// The change log `since` came from (a `log` of `db.open` or of an
    /// earlier subscription's result). When given, a cursor this log no
    /// longer vouches for (the agent started after a crash, a restore or a
    /// damaged journal, and handed that cursor out again) is refused with
    /// `cursor_expired` instead of resuming at a change the subscriber may
    /// not have seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<u64>,
}

/// Result of `subscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// The subscription's id, carried by its events.
    pub subscription: u64,
    /// The cursor the subscription starts after.
    pub cursor: u64,
    /// The change log its cursors belong to: keep it with the last cursor
    /// seen, and pass both to resume.
    #[serde(default)]
    pub log: u64,
}

/// Params of `unsubscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeParams {
    /// The subscription's id.
    pub subscription: u64,
}

/// Result of `unsubscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeResult {
    /// False when there was no such subscription.
    pub removed: bool,
}

/// What kind of write a change was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The whole record was written.
    Put,
    /// Some fields were set or removed.
    Patch,
    /// The record was deleted.
    Delete,
    /// A write refused under the database's access rules: nothing
    /// changed. `rejected` says why.
    Rejected,
    /// The record left this partial replica: the device may no longer see
    /// it. It was not deleted anywhere.
    Evict,
}

/// One change, as a subscription delivers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The change's cursor: resume after it to skip it.
    pub cursor: u64,
    /// The collection.
    pub collection: String,
    /// The record id.
    pub id: String,
    /// What kind of write.
    pub kind: ChangeKind,
    /// The write's sequence number on its origin device.
    pub seq: u64,
    /// For a put the whole record; for a patch the fields it set.
    pub fields: Fields,
    /// For a patch, the fields it removed.
    pub unset: Vec<String>,
    /// The device that made the write.
    pub origin: String,
    /// The write's clock reading.
    pub hlc: Hlc,
    /// On a `rejected` change: why the write was refused. When it was
    /// this device's own, the change that puts the record back follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// Params of an `event` notification: changes for one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventParams {
    /// The subscription.
    pub subscription: u64,
    /// The changes, oldest first.
    pub changes: Vec<Change>,
    /// The cursor of the last change, to resume from.
    pub cursor: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::tests::arb_value;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_get_result_from_encoded_values_is_the_ordinary_encoding(
            id in ".{0,12}",
            fields in proptest::collection::btree_map(".{0,8}", arb_value(), 0..6),
            version in any::<u64>(),
        ) {
            let encoded = codec::to_vec(&fields).expect("encode");
            let raw = EncodedRecord {
                id: &id,
                fields: &encoded,
                version: Hlc(version),
            };
            let mut out = Vec::new();
            GetResult::encode_from(&mut out, Some(&raw));
            let record = Record { id: id.clone(), fields, version: Hlc(version) };
            prop_assert_eq!(out, codec::to_vec(&GetResult { record: Some(record) }).expect("encode"));
        }
    }

    #[test]
    fn a_missing_record_encodes_as_nil() {
        let mut out = Vec::new();
        GetResult::encode_from(&mut out, None);
        assert_eq!(
            out,
            codec::to_vec(&GetResult { record: None }).expect("encode")
        );
    }

    fn arb_write() -> impl Strategy<Value = Write> {
        let fields = || proptest::collection::btree_map(".{0,8}", arb_value(), 0..4);
        prop_oneof![
            (".{0,8}", proptest::option::of(".{0,8}"), fields()).prop_map(
                |(collection, id, fields)| Write::Put {
                    collection,
                    id,
                    fields
                }
            ),
            (
                ".{0,8}",
                ".{0,8}",
                fields(),
                proptest::collection::vec(".{0,6}", 0..3)
            )
                .prop_map(|(collection, id, set, unset)| Write::Patch {
                    collection,
                    id,
                    set,
                    unset
                }),
            (".{0,8}", ".{0,8}").prop_map(|(collection, id)| Write::Delete { collection, id }),
        ]
    }

    proptest! {
        #[test]
        fn batch_results_read_and_written_by_hand_as_serde_does(
            results in proptest::collection::vec(
                (".{0,10}", any::<u64>(), any::<u64>(), any::<u64>()),
                // Past 15, the array takes its 16-bit header.
                0..20,
            ),
            cut in any::<prop::sample::Index>(),
        ) {
            let want = BatchResult {
                results: results
                    .into_iter()
                    .map(|(id, seq, hlc, cursor)| WriteResult { id, seq, hlc: Hlc(hlc), cursor })
                    .collect(),
            };
            let bytes = codec::to_vec(&want).expect("encode");
            let mut by_hand = Vec::new();
            want.encode_into(&mut by_hand).expect("encode by hand");
            prop_assert_eq!(&by_hand, &bytes);
            if let Some(one) = want.results.first() {
                let mut by_hand = Vec::new();
                one.encode_into(&mut by_hand);
                prop_assert_eq!(by_hand, codec::to_vec(one).expect("encode"));
            }
            prop_assert_eq!(BatchResult::decode(&bytes), Ok(want));
            let short = &bytes[..cut.index(bytes.len())];
            prop_assert_eq!(BatchResult::decode(short).ok(), codec::from_slice(short).ok());
        }
    }

    proptest! {
        #[test]
        fn batch_params_by_hand_are_serdes_bytes(
            db in ".{0,10}",
            writes in proptest::collection::vec(arb_write(), 0..6),
        ) {
            let params = BatchParams { db, writes };
            let serde = codec::to_vec(&params).expect("encode");
            let mut out = Vec::new();
            params.encode_into(&mut out).expect("encode");
            prop_assert_eq!(&out, &serde);
            // A write at a time, as a client encodes them while it adds
            // them, then the head: the same bytes.
            let mut each = Vec::new();
            for write in &params.writes {
                write.encode_into(&mut each).expect("encode a write");
            }
            let mut joined = Vec::new();
            BatchParams::encode_encoded(&mut joined, &params.db, params.writes.len(), &each)
                .expect("encode");
            prop_assert_eq!(&joined, &serde);
        }
    }

    #[test]
    fn get_results_in_another_form_are_read_by_serde_and_bad_ones_refused() {
        // The record's keys in another order, and one it does not know.
        let mut out = Vec::new();
        codec::raw::map_len(&mut out, 1);
        codec::raw::str(&mut out, "record");
        codec::raw::map_len(&mut out, 4);
        for (k, v) in [("version", 7u64), ("extra", 1)] {
            codec::raw::str(&mut out, k);
            codec::raw::uint(&mut out, v);
        }
        codec::raw::str(&mut out, "fields");
        out.extend(
            codec::to_vec(&Fields::from([("a".to_owned(), Value::Int(1))])).expect("encode"),
        );
        codec::raw::str(&mut out, "id");
        codec::raw::str(&mut out, "r1");
        let got = GetResult::decode(&out)
            .expect("decode")
            .record
            .expect("a record");
        assert_eq!(
            (got.id.as_str(), got.version, got.fields.len()),
            ("r1", Hlc(7), 1)
        );

        // Cut short, or with a byte after it: an error, as from serde.
        let mut whole = Vec::new();
        let fields = codec::to_vec(&Fields::new()).expect("encode");
        let rec = EncodedRecord {
            id: "x",
            fields: &fields,
            version: Hlc(1),
        };
        GetResult::encode_from(&mut whole, Some(&rec));
        assert!(GetResult::decode(&whole[..whole.len() - 1]).is_err());
        whole.push(0xc0);
        assert!(GetResult::decode(&whole).is_err());
        let mut many = Vec::new();
        GetManyResult::encode_head(&mut many, 2);
        GetResult::encode_record(&mut many, Some(&rec));
        assert!(GetManyResult::decode(&many).is_err(), "one record of two");
    }

    proptest! {
        #[test]
        fn a_get_many_result_from_encoded_values_is_the_ordinary_encoding(
            records in proptest::collection::vec(proptest::option::of((
                ".{0,12}",
                proptest::collection::btree_map(".{0,8}", arb_value(), 0..4),
                any::<u64>(),
            )), 0..20),
        ) {
            type Encoded = (String, Vec<u8>, u64);
            let encoded: Vec<Option<Encoded>> = records
                .iter()
                .map(|r| r.as_ref().map(|(id, fields, v)| {
                    (id.clone(), codec::to_vec(fields).expect("encode"), *v)
                }))
                .collect();
            let mut out = Vec::new();
            GetManyResult::encode_head(&mut out, encoded.len());
            for r in &encoded {
                let raw = r.as_ref().map(|(id, fields, v)| EncodedRecord {
                    id,
                    fields,
                    version: Hlc(*v),
                });
                GetResult::encode_record(&mut out, raw.as_ref());
            }
            let want = GetManyResult {
                records: records
                    .into_iter()
                    .map(|r| r.map(|(id, fields, v)| Record { id, fields, version: Hlc(v) }))
                    .collect(),
            };
            prop_assert_eq!(&out, &codec::to_vec(&want).expect("encode"));
            // The hand decoder reads it back as serde does.
            prop_assert_eq!(GetManyResult::decode(&out), Ok(want.clone()));
            for (i, r) in want.records.iter().enumerate() {
                let mut one = Vec::new();
                let raw = encoded[i].as_ref().map(|(id, fields, v)| EncodedRecord {
                    id,
                    fields,
                    version: Hlc(*v),
                });
                GetResult::encode_from(&mut one, raw.as_ref());
                prop_assert_eq!(GetResult::decode(&one), Ok(GetResult { record: r.clone() }));
            }
        }
    }
}
