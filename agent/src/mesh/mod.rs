//! The mesh: this device's peers, and the QUIC connections that carry sync
//! between them.
//!
//! - [`tls`]: certificates and the verifiers that pin device ids.
//! - [`proof`]: membership proofs bound to one connection.
//! - [`state`]: the mesh's keys, members, invites and static peers, on disk.
//! - [`session`]: one connection: handshake, membership gossip, sync streams.
//! - [`driver`]: the sync engine on its own thread, over the real store.
//! - [`discovery`]: mDNS announcements and browsing.
//!
//! One QUIC endpoint both listens and dials, so a peer's address as seen on
//! an incoming connection is also where it listens. Between two devices
//! there is one session: when both dial at once, the connection dialled by
//! the device with the smaller id is kept, by both sides alike.

mod clones;
mod dials;
pub mod discovery;
pub mod driver;
mod frames;
mod gossip;
mod inbox;
mod keys;
pub mod members;
pub mod overlay;
pub mod proof;
pub mod session;
pub mod state;
pub mod tls;
pub mod topology;
pub mod traffic;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use blazedb_proto::DeviceId;
use blazedb_proto::mesh::{Invite, MemberRecord, MeshId, PeerMessage, Removal, Role};
use tokio::sync::{Notify, mpsc, watch};

use crate::access::Roster;
use crate::identity::Identity;
use crate::store::Store;
use crate::store::wall_ms;
use blazedb_proto::api::{
    DbPeer, DbRulesResult, DbRulesSetParams, FilterOp, LinkSpec, RuleSpec, SyncMode,
};
use blazedb_proto::rules::{AccessRule, AccessRules, DeviceAttr, LinkRule, Selector, SyncWish};
use driver::{Driver, Input};
use session::{Control, SessionError};
use state::{MeshKeys, MeshState};

/// QUIC application close codes.
pub mod close_code {
    use quinn::VarInt;
    /// The agent is stopping.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// Another connection with the same peer is kept instead.
    pub const DUPLICATE: VarInt = VarInt::from_u32(1);
    /// The peer is not let in.
    pub const REFUSED: VarInt = VarInt::from_u32(2);
    /// The peer broke the protocol.
    pub const PROTOCOL: VarInt = VarInt::from_u32(3);
    /// The peer was removed from the mesh.
    pub const REMOVED: VarInt = VarInt::from_u32(4);
    /// The link is not needed: both ends reach each other otherwise.
    pub const UNNEEDED: VarInt = VarInt::from_u32(5);
}

/// The UDP port agents listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7340;

/// How long shutdown waits for connection closes to be sent.
const CLOSE_GRACE: Duration = Duration::from_millis(150);

/// How long leaving waits for the linked members to take its record.
const LEAVE_RECEIPT: Duration = Duration::from_secs(2);

/// How the mesh runs.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Where to listen (UDP).
    pub listen: SocketAddr,
    /// What this device is.
    pub role: Role,
    /// This device's name, for people.
    pub name: String,
    /// Whether to announce and browse with mDNS.
    pub mdns: bool,
    /// Keep mDNS on loopback (for several agents on one host in tests).
    pub mdns_loopback_only: bool,
    /// Addresses to announce instead of the interfaces' own.
    pub announce: Vec<String>,
    /// Addresses always dialled (hubs, far peers).
    pub peers: Vec<String>,
    /// How many other devices (not hubs) this device keeps links with,
    /// chosen so the mesh stays connected (see [`overlay`]).
    pub member_links: usize,
    /// Operations between the sealed checkpoints a key holder gives a
    /// blind hub.
    pub checkpoint_ops: u64,
    /// Count what each link carries (off only to measure what counting
    /// costs).
    pub count_traffic: bool,
}

/// A connected peer's session, as the rest of the mesh sees it.
#[derive(Debug)]
struct SessionEntry {
    link: u64,
    conn: quinn::Connection,
    dialled: bool,
    ctl: mpsc::UnboundedSender<Control>,
}

/// What every task of the mesh shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) me: DeviceId,
    identity: Identity,
    name: String,
    role: Role,
    /// How many ring neighbours to keep links with.
    member_links: usize,
    /// The addresses this device announces; refreshed when its interfaces
    /// change unless they were given.
    addrs: Mutex<Vec<String>>,
    state: Arc<Mutex<MeshState>>,
    store: Store,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    pub(crate) driver: std::sync::mpsc::Sender<Input>,
    sessions: Mutex<BTreeMap<DeviceId, SessionEntry>>,
    dials: Mutex<dials::Dials>,
    /// Addresses mDNS found, per device.
    discovered: Mutex<BTreeMap<DeviceId, BTreeSet<SocketAddr>>>,
    clones: Mutex<clones::CloneWatch>,
    /// The devices each connected hub says it has a session with.
    hub_links: Mutex<BTreeMap<DeviceId, BTreeSet<DeviceId>>>,
    /// The last error dialling each target, by dial key (a static peer's
    /// key is its address).
    dial_errors: Mutex<BTreeMap<String, String>>,
    /// What each link carries.
    traffic: Arc<traffic::Traffic>,
    next_link: AtomicU64,
    wake: Notify,
    /// The state has changes not yet written to its file.
    dirty: AtomicBool,
    save_wake: Notify,
    /// Membership and link news waiting for the next batch.
    gossip: Mutex<gossip::Pending>,
    gossip_wake: Notify,
    /// Counts changes of the mesh's keys, so discovery announces new tags.
    mesh_changed: watch::Sender<u64>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// A role's name as the protocol spells it.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Device => "device",
        Role::Hub => "hub",
    }
}

/// Locks a mutex of the mesh. Where one task holds several, it takes them
/// in this order: `state`, `discovered`, `sessions`, `hub_links`, `clones`,
/// `dials`, `dial_errors`, `gossip`.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct StateGate(Arc<Mutex<MeshState>>);

impl tls::Gate for StateGate {
    fn admits(&self, _device: &DeviceId) -> bool {
        lock(&self.0).admits(wall_ms())
    }
}

impl Shared {
    pub(crate) fn keys(&self) -> Option<MeshKeys> {
        lock(&self.state).keys.clone()
    }

    pub(crate) fn next_link(&self) -> u64 {
        self.next_link.fetch_add(1, Ordering::Relaxed)
    }

    fn save(&self, state: &MeshState) {
        self.dirty.store(false, Ordering::Relaxed);
        if let Err(e) = state.save() {
            tracing::error!("cannot save the mesh state: {e:#}");
        }
    }

    /// Marks the state for saving with the next batch.
    pub(crate) fn save_soon(&self) {
        self.dirty.store(true, Ordering::Relaxed);
        self.save_wake.notify_one();
    }

    /// Writes the state if it has unsaved changes.
    fn flush(&self) {
        if self.dirty.load(Ordering::Relaxed) {
            self.save(&lock(&self.state));
        }
    }

    /// Uses up the invite `invite` if `check` accepts its secret and this
    /// device is an admin that can sign the newcomer's record.
    pub(crate) fn redeem(
        &self,
        invite: &[u8; 8],
        check: impl Fn(&[u8; 32]) -> bool,
    ) -> Result<state::OpenInvite, String> {
        let mut s = lock(&self.state);
        if !s.roster.as_ref().is_some_and(|r| r.is_admin(&self.me)) {
            return Err(
                "the inviter is no longer an admin of the mesh: ask an admin for a new invite"
                    .into(),
            );
        }
        let redeemed = s
            .redeem(invite, wall_ms(), check)
            .ok_or("the invite is unknown, expired, used up or was not proved")?;
        // Saved with the next batch: a crash within it can let an invite
        // be used once more than it says, which costs less than a write of
        // the whole state per joining device.
        self.save_soon();
        Ok(redeemed)
    }

    /// What a connected hub says it is linked to.
    pub(crate) fn note_links(&self, peer: DeviceId, connected: Vec<DeviceId>) {
        lock(&self.hub_links).insert(peer, connected.into_iter().collect());
    }

    /// What changed in a connected hub's links since it last said.
    pub(crate) fn note_links_changed(
        &self,
        peer: DeviceId,
        up: Vec<DeviceId>,
        down: Vec<DeviceId>,
    ) {
        let mut links = lock(&self.hub_links);
        let set = links.entry(peer).or_default();
        for d in down {
            set.remove(&d);
        }
        set.extend(up);
    }

    /// Makes `conn` the session with `peer`, unless another one is kept,
    /// and tells the sync driver, which sends the peer's sync messages
    /// through `sync` from then on.
    pub(crate) fn register(
        &self,
        peer: DeviceId,
        link: u64,
        conn: &quinn::Connection,
        dialled: bool,
        ctl: mpsc::UnboundedSender<Control>,
        sync: mpsc::UnboundedSender<blazedb_proto::SyncMessage>,
    ) -> bool {
        let mut sessions = lock(&self.sessions);
        if let Some(existing) = sessions.get(&peer) {
            let keep_new = if existing.dialled == dialled {
                // Same direction: the peer came back (restart, new address).
                true
            } else {
                let new_dialler = if dialled { self.me } else { peer };
                new_dialler == self.me.min(peer)
            };
            if !keep_new {
                return false;
            }
            let (old, new) = (existing.conn.remote_address(), conn.remote_address());
            if existing.dialled == dialled
                && existing.conn.close_reason().is_none()
                && lock(&self.clones).replaced_live(peer, old, new, wall_ms())
            {
                tracing::error!(
                    peer = %peer,
                    "device {peer} is live at {old} and at {new} at once: two machines run \
                     with one key (a cloned disk or a restored backup). Give one of them a new \
                     identity by moving its device.key away"
                );
            }
            existing.conn.close(close_code::DUPLICATE, b"replaced");
        }
        if self.role == Role::Hub {
            // As a hub, says which devices it is linked with, so members
            // can show which devices they reach through it: the whole list
            // once, then the changes in batches.
            let connected = sessions.keys().copied().chain([peer]).collect();
            let _ = ctl.send(Control::Send(Box::new(PeerMessage::Links { connected })));
            self.gossip_link(peer, true);
        }
        sessions.insert(
            peer,
            SessionEntry {
                link,
                conn: conn.clone(),
                dialled,
                ctl,
            },
        );
        // Told while the sessions are locked, so that the driver hears of
        // sessions in the order they were kept. Told after the lock, a
        // session that lost the race to a newer one could reach the driver
        // last and take the route: the live session's sync messages were
        // then dropped, and the old one's end left the peer with no sync
        // at all while its control stream (membership, keys) still worked.
        let _ = self.driver.send(Input::Connected {
            peer,
            link,
            tx: sync,
        });
        drop(sessions);
        // A session came up, so the network works: targets that failed
        // while it was down are tried again now, not a minute from now.
        lock(&self.dials).retry_soon(None, wall_ms());
        self.wake.notify_one();
        true
    }

    pub(crate) fn unregister(&self, peer: DeviceId, link: u64) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(&peer).is_some_and(|s| s.link == link) {
            sessions.remove(&peer);
            lock(&self.hub_links).remove(&peer);
            if self.role == Role::Hub {
                self.gossip_link(peer, false);
            }
        }
        drop(sessions);
        self.wake.notify_one();
    }

    fn connected(&self, peer: &DeviceId) -> bool {
        lock(&self.sessions).contains_key(peer)
    }
}

/// The running mesh; cheap to clone.
#[derive(Debug, Clone)]
pub struct Mesh {
    shared: Arc<Shared>,
    driver: Arc<Driver>,
    config: Arc<MeshConfig>,
    local: SocketAddr,
}

/// How this device reaches a member, as `blazectl peers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// A session is up.
    Connected,
    /// No session, but a connected hub has one: sync goes through it.
    Relayed {
        /// The hub's name.
        via: String,
    },
    /// Not reachable now.
    Offline,
    /// Removed from the mesh, or left it.
    Removed,
}

/// A member as `blazectl peers` shows it.
#[derive(Debug, Clone)]
pub struct PeerView {
    /// The member's signed record.
    pub record: MemberRecord,
    /// Where it says it listens.
    pub addrs: Vec<String>,
    /// How it is reached.
    pub reach: Reach,
    /// The session's remote address.
    pub address: Option<SocketAddr>,
    /// The session's round-trip time.
    pub rtt: Option<Duration>,
    /// When sync with it last made progress, in ms since the Unix epoch.
    pub last_sync_ms: Option<u64>,
    /// The addresses it was seen live at at once, if two machines seem to
    /// run with its key.
    pub clone_addrs: Option<Vec<SocketAddr>>,
}

/// A static peer as `blazectl peer list` shows it.
#[derive(Debug, Clone)]
pub struct StaticPeerView {
    /// `host:port`.
    pub addr: String,
    /// The device it led to, if a session with it is up.
    pub device: Option<DeviceId>,
    /// Why the last dial failed, if it did and no session is up.
    pub last_error: Option<String>,
}

impl Mesh {
    /// Binds the endpoint and starts listening, dialling, discovery and
    /// sync. Everything stops when `shutdown` turns true.
    pub async fn start(
        config: MeshConfig,
        identity: &Identity,
        store: Store,
        data_dir: &std::path::Path,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Mesh> {
        let mut state = MeshState::load(data_dir)?;
        for p in &config.peers {
            if !state.static_peers.contains(p) {
                state.static_peers.push(p.clone());
            }
        }
        let state = Arc::new(Mutex::new(state));
        let (server, client) = tls::quic_configs(
            identity,
            Arc::new(StateGate(state.clone())),
            Arc::new(transport_config()),
        )?;
        let endpoint = endpoint(config.listen, Some(server))
            .with_context(|| format!("cannot listen on UDP {}", config.listen))?;
        let local = endpoint.local_addr()?;
        let addrs = if config.announce.is_empty() {
            local_addrs(local)
        } else {
            config.announce.clone()
        };
        let members: Vec<DeviceId> = {
            let mut s = lock(&state);
            let me = identity.device_id();
            if let Some(roster) = &s.roster
                && !roster.is_active(&me)
            {
                // A copied mesh.json, or a device key moved away: the file
                // is no membership of this device's.
                tracing::warn!(
                    mesh = roster.mesh().to_hex(),
                    "mesh.json holds no active member record for this device (was the device \
                     key replaced, or the file copied from another device?): this device is \
                     in no mesh. Join with an invite"
                );
                s.keys = None;
                s.roster = None;
                s.invites.clear();
                s.save()?;
            }
            if let Some(roster) = s.roster.as_mut()
                && roster.set_own_addrs(identity.secret(), &addrs, wall_ms())?
            {
                s.save()?;
            }
            s.roster
                .as_ref()
                .map(|r| r.active().map(|m| m.device).collect())
                .unwrap_or_else(|| vec![me])
        };
        let driver = Driver::start(
            store.clone(),
            members,
            config.role == Role::Hub,
            config.checkpoint_ops,
        )?;
        if let Some(roster) = lock(&state).roster.as_ref() {
            let _ = driver
                .sender()
                .send(Input::Cutoffs(members::cutoffs_of(roster)));
            let _ = driver.sender().send(Input::Hubs(members::hubs_of(roster)));
            let _ = driver.sender().send(members::access_of(roster));
        }
        let (mesh_changed, mesh_rx) = watch::channel(0);
        let shared = Arc::new(Shared {
            me: identity.device_id(),
            identity: identity.clone(),
            name: config.name.clone(),
            role: config.role,
            member_links: config.member_links,
            addrs: Mutex::new(addrs),
            state,
            store,
            endpoint,
            client,
            driver: driver.sender(),
            sessions: Mutex::new(BTreeMap::new()),
            dials: Mutex::default(),
            discovered: Mutex::new(BTreeMap::new()),
            clones: Mutex::default(),
            hub_links: Mutex::default(),
            dial_errors: Mutex::default(),
            traffic: Arc::new(traffic::Traffic::new(config.count_traffic)),
            next_link: AtomicU64::new(1),
            wake: Notify::new(),
            dirty: AtomicBool::new(false),
            save_wake: Notify::new(),
            gossip: Mutex::default(),
            gossip_wake: Notify::new(),
            mesh_changed,
            shutdown,
        });
        tokio::spawn(accept_loop(shared.clone()));
        tokio::spawn(dial_loop(shared.clone()));
        tokio::spawn(save_loop(shared.clone()));
        tokio::spawn(gossip::run(shared.clone()));
        tokio::spawn(keys::run(shared.clone()));
        if config.announce.is_empty() && local.ip().is_unspecified() {
            tokio::spawn(watch_interfaces(shared.clone(), local));
        }
        if config.mdns {
            discovery::start(
                shared.clone(),
                local.port(),
                config.mdns_loopback_only,
                mesh_rx,
            )?;
        }
        tracing::info!(
            listen = %local,
            role = ?config.role,
            mdns = config.mdns,
            "mesh endpoint is up"
        );
        Ok(Mesh {
            shared,
            driver: Arc::new(driver),
            config: Arc::new(config),
            local,
        })
    }

    /// Where the endpoint listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The addresses this device announces.
    pub fn addrs(&self) -> Vec<String> {
        lock(&self.shared.addrs).clone()
    }

    /// The mesh's role setting.
    pub fn role(&self) -> Role {
        self.config.role
    }

    /// Whether mDNS runs.
    pub fn mdns(&self) -> bool {
        self.config.mdns
    }

    /// This device's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The mesh this device is in.
    pub fn mesh_id(&self) -> Option<MeshId> {
        self.shared.keys().map(|k| k.id)
    }

    /// The membership as this device sees it.
    pub fn membership(&self) -> members::MembershipView {
        self.shared.membership()
    }

    /// Creates a new mesh with this device as its first member and admin.
    pub fn create(&self) -> anyhow::Result<MeshId> {
        let id = {
            let mut s = lock(&self.shared.state);
            if let Some(k) = &s.keys {
                anyhow::bail!(
                    "this device is already in mesh {}; a device is in one mesh at a time \
                     (`blazectl mesh leave` first)",
                    k.id.to_hex()
                );
            }
            let mut roster = Roster::create(
                self.shared.identity.secret(),
                &self.shared.name,
                self.shared.role,
                state::random()?,
                wall_ms(),
            )
            .map_err(|e| anyhow::anyhow!("cannot sign this device's record: {e}"))?;
            roster
                .set_own_addrs(self.shared.identity.secret(), &self.addrs(), wall_ms())
                .map_err(|e| anyhow::anyhow!("cannot sign this device's addresses: {e}"))?;
            let keys = MeshKeys {
                id: roster.mesh(),
                secret: state::random()?,
                epoch: 0,
            };
            let id = keys.id;
            s.keys = Some(keys);
            s.roster = Some(roster);
            s.departed = None;
            s.save()?;
            id
        };
        self.shared.keys_changed();
        tracing::info!(mesh = id.to_hex(), "created a mesh");
        Ok(id)
    }

    /// Issues an invite valid for `ttl`, for `uses` devices (`None`: any
    /// number), whose devices join `teams`. Admins only: the inviter signs
    /// the newcomer's record.
    pub fn invite(
        &self,
        ttl: Duration,
        uses: Option<u32>,
        teams: Vec<String>,
    ) -> anyhow::Result<Invite> {
        let addrs = self.addrs();
        self.shared.as_admin(|s, identity| {
            s.new_invite(
                identity.device_id(),
                addrs,
                wall_ms(),
                ttl.as_millis() as u64,
                uses,
                teams,
            )
        })
    }

    /// Joins the mesh of `invite` by dialling the inviter; returns once the
    /// inviter has admitted this device. Returns `false` if this device
    /// already is an active member of that mesh.
    pub async fn join(&self, invite: &Invite) -> anyhow::Result<bool> {
        if let Some(k) = self.shared.keys() {
            if k.id == invite.mesh && self.shared.is_active(&self.shared.me) {
                return Ok(false);
            }
            anyhow::bail!(
                "this device is already in mesh {}; a device is in one mesh at a time \
                 (`blazectl mesh leave` first)",
                k.id.to_hex()
            );
        }
        if invite.expires_ms <= wall_ms() {
            anyhow::bail!("the invite has expired: ask for a new one");
        }
        if invite.inviter == self.shared.me {
            anyhow::bail!("this device made the invite: use it on another device");
        }
        let mut last = anyhow::anyhow!("the invite lists no address to reach the inviter at");
        for addr in &invite.addrs {
            match dial(&self.shared, addr, Some(invite.inviter)).await {
                Ok(conn) => {
                    match session::dial_handshake(&self.shared, &conn, invite.inviter, Some(invite))
                        .await
                    {
                        Ok((send, recv)) => {
                            tokio::spawn(session::run(
                                self.shared.clone(),
                                conn,
                                invite.inviter,
                                true,
                                true,
                                send,
                                recv,
                            ));
                            return Ok(true);
                        }
                        Err(SessionError::Refused(r)) => {
                            anyhow::bail!("the inviter refused: {r}")
                        }
                        Err(e) => last = anyhow::anyhow!("{addr}: {e}"),
                    }
                }
                Err(e) => last = anyhow::anyhow!("{addr}: {e:#}"),
            }
        }
        Err(last.context("cannot reach the inviter"))
    }

    /// Finds the member `spec` names: its id, 7 or more of its first
    /// characters, or its name.
    pub fn resolve(&self, spec: &str) -> anyhow::Result<DeviceId> {
        let s = lock(&self.shared.state);
        let roster = s
            .roster
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this device is in no mesh"))?;
        Ok(roster.resolve(spec)?)
    }

    /// Removes `device` from the mesh, on every member: its signed record
    /// says so, with a cut-off per database past which its operations are
    /// refused, and the mesh secret is rotated. Admins only.
    pub fn remove(&self, device: &DeviceId) -> anyhow::Result<()> {
        if *device == self.shared.me {
            anyhow::bail!("a device cannot remove itself: use `blazectl mesh leave`");
        }
        let cutoffs = self.cutoffs(device);
        let me = self.shared.me;
        self.shared.as_admin(|s, identity| {
            let roster = s
                .roster
                .as_mut()
                .ok_or_else(|| anyhow::anyhow!("no mesh"))?;
            if roster.removal(device).is_some() {
                anyhow::bail!("device {device} was already removed");
            }
            roster
                .edit(
                    identity.secret(),
                    device,
                    wall_ms(),
                    removal(me, false, cutoffs),
                )
                .map_err(|e| anyhow::anyhow!("cannot remove {device}: {e}"))?;
            Ok(())
        })?;
        tracing::info!(device = %device, "removed a device from the mesh");
        Ok(())
    }

    /// Per synced database, the highest seq of `device`'s operations this
    /// replica holds: of its first write incarnation, and of each later one.
    fn cutoffs(&self, device: &DeviceId) -> Cutoffs {
        use crate::sync::SyncStore as _;
        let store = &self.shared.store;
        let mut out = Cutoffs::default();
        for db in store.databases() {
            let Some(st) = store.sync_state(&db) else {
                continue;
            };
            let later: BTreeMap<u32, u64> = st
                .vector
                .writers_of(device)
                .filter_map(|(w, seq)| Some((device.incarnation_of(w).filter(|n| *n != 0)?, *seq)))
                .collect();
            if !later.is_empty() {
                out.1.insert(db.clone(), later);
            }
            out.0.insert(db, st.vector.get(device));
        }
        out
    }

    /// Makes `device` an admin, or takes that away. Admins only; the mesh
    /// always keeps one admin.
    pub fn set_rules(&self, p: DbRulesSetParams) -> anyhow::Result<()> {
        self.shared.as_admin(|s, identity| {
            let roster = s
                .roster
                .as_mut()
                .ok_or_else(|| anyhow::anyhow!("this device is in no mesh"))?;
            let rules = p
                .rules
                .into_iter()
                .enumerate()
                .map(|(i, spec)| {
                    rule_of(roster, spec).with_context(|| format!("rule {} of {}", i + 1, p.db))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let links = p
                .links
                .into_iter()
                .enumerate()
                .map(|(i, spec)| {
                    link_of(roster, spec).with_context(|| format!("link {} of {}", i + 1, p.db))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let version = roster.rules(&p.db).map_or(1, |r| r.version + 1);
            let rules = AccessRules {
                mesh: roster.mesh(),
                db: p.db.clone(),
                version,
                default: p.default,
                rules,
                signer: identity.device_id(),
                signed_ms: wall_ms(),
                links,
            };
            roster
                .take_rules(identity.secret(), &rules)
                .map_err(|e| anyhow::anyhow!("cannot set the rules of {}: {e}", p.db))
        })
    }

    /// Grants every key of the end-to-end encrypted database `db` this
    /// device holds to `device` (admins only). Returns how many epochs
    /// were granted now.
    pub fn grant_key(&self, db: &str, device: &DeviceId) -> anyhow::Result<u32> {
        self.shared.grant_keys_to(db, device)
    }

    /// Makes the next key epoch of the end-to-end encrypted database `db`
    /// and grants it. Returns the new epoch.
    pub fn rotate_key(&self, db: &str) -> anyhow::Result<u32> {
        self.shared.rotate_key(db)
    }

    /// A database's access rules, the names of the devices they and their
    /// signer name, what they give this device (with its `wish`), and the
    /// members their links give it to sync with.
    pub fn rules(&self, db: &str, wish: Option<&SyncWish>) -> DbRulesResult {
        let s = lock(&self.shared.state);
        let roster = s.roster.as_ref();
        let rules = roster.and_then(|r| r.rules(db)).cloned();
        let names = roster
            .map(|r| {
                r.records()
                    .map(|m| (m.device.to_string(), m.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let me = self.shared.me;
        let devices = roster.map(members::attrs_of).unwrap_or_default();
        let access = crate::access::view::access(rules.as_ref(), &me, devices.get(&me), wish);
        let links_here = rules.as_ref().filter(|r| !r.links.is_empty()).map(|r| {
            devices
                .keys()
                .filter(|d| **d != me)
                .filter_map(|d| {
                    let mode = crate::access::links::link_mode(Some(r), &me, d, &devices)?;
                    (mode != SyncMode::Local).then(|| DbPeer {
                        device: d.to_string(),
                        sync_mode: mode,
                    })
                })
                .collect()
        });
        DbRulesResult {
            db: db.to_owned(),
            rules,
            names,
            this_device: access.describe(),
            links_here,
        }
    }

    /// Makes a device an admin of the mesh, or takes that away.
    pub fn set_admin(&self, device: &DeviceId, admin: bool) -> anyhow::Result<()> {
        self.shared.as_admin(|s, identity| {
            let roster = roster_for(s, device)?;
            let others = roster.admins().filter(|r| r.device != *device).count();
            if !admin && others == 0 {
                anyhow::bail!(
                    "{device} is the mesh's only admin: make another device an admin first"
                );
            }
            roster
                .edit(identity.secret(), device, wall_ms(), |r| r.admin = admin)
                .map_err(|e| anyhow::anyhow!("cannot change {device}: {e}"))?;
            Ok(())
        })
    }

    /// Sets a device's name and teams. Admins only.
    pub fn set_device(
        &self,
        device: &DeviceId,
        name: Option<String>,
        teams: Option<Vec<String>>,
    ) -> anyhow::Result<()> {
        if let Some(n) = &name
            && n.trim().is_empty()
        {
            anyhow::bail!("a device's name cannot be empty");
        }
        self.shared.as_admin(|s, identity| {
            roster_for(s, device)?
                .edit(identity.secret(), device, wall_ms(), |r| {
                    if let Some(n) = name {
                        r.name = n;
                    }
                    if let Some(t) = teams {
                        r.teams = t;
                    }
                })
                .map_err(|e| anyhow::anyhow!("cannot change {device}: {e}"))?;
            Ok(())
        })
    }

    /// Leaves the mesh: signs this device's own leaving, tells the members
    /// it is linked with, and forgets the mesh. The databases stay.
    pub async fn leave(&self) -> anyhow::Result<()> {
        let me = self.shared.me;
        let cutoffs = self.cutoffs(&me);
        let chain = {
            let mut s = lock(&self.shared.state);
            let roster = s
                .roster
                .as_mut()
                .ok_or_else(|| anyhow::anyhow!("this device is in no mesh"))?;
            let other_admins = roster.admins().filter(|r| r.device != me).count();
            let others = roster.active().filter(|r| r.device != me).count();
            if roster.is_admin(&me) && other_admins == 0 && others > 0 {
                anyhow::bail!(
                    "this device is the mesh's only admin: make another member an admin first \
                     (`blazectl mesh admin add DEVICE`)"
                );
            }
            roster
                .edit(
                    self.shared.identity.secret(),
                    &me,
                    wall_ms(),
                    removal(me, true, cutoffs),
                )
                .map_err(|e| anyhow::anyhow!("cannot sign this device's leaving: {e}"))?;
            s.save()?;
            s.roster.as_ref().map(Roster::to_wire).unwrap_or_default()
        };
        // Tell every linked member. A member that takes the record closes
        // the session (it tells a departed device so, then closes): that
        // close is the receipt. Closing first would drop the record with
        // the connection if it had not been delivered yet.
        let linked: Vec<quinn::Connection> = lock(&self.shared.sessions)
            .values()
            .map(|sess| {
                let _ = sess.ctl.send(Control::Send(Box::new(PeerMessage::Members {
                    roster: chain.clone(),
                })));
                sess.conn.clone()
            })
            .collect();
        let deadline = tokio::time::Instant::now() + LEAVE_RECEIPT;
        for conn in linked {
            let _ = tokio::time::timeout_at(deadline, conn.closed()).await;
        }
        let rec = lock(&self.shared.state)
            .roster
            .as_ref()
            .and_then(|r| r.record(&me).cloned());
        if let Some(rec) = rec {
            let mut s = lock(&self.shared.state);
            self.shared.forget_mesh(&mut s, &rec);
        }
        Ok(())
    }

    /// Adds an address to dial always. Returns `false` if it was there.
    pub fn add_peer(&self, addr: &str) -> anyhow::Result<bool> {
        let added = {
            let mut s = lock(&self.shared.state);
            if s.static_peers.iter().any(|p| p == addr) {
                false
            } else {
                s.static_peers.push(addr.to_owned());
                s.save()?;
                true
            }
        };
        self.shared.wake.notify_one();
        Ok(added)
    }

    /// Stops dialling an address. Returns `false` if it was not there.
    pub fn remove_peer(&self, addr: &str) -> anyhow::Result<bool> {
        let mut s = lock(&self.shared.state);
        let before = s.static_peers.len();
        s.static_peers.retain(|p| p != addr);
        if s.static_peers.len() == before {
            return Ok(false);
        }
        s.save()?;
        lock(&self.shared.dial_errors).remove(addr);
        Ok(true)
    }

    /// The static peers, with the device each led to or its last error.
    pub fn static_peers(&self) -> Vec<StaticPeerView> {
        let peers = lock(&self.shared.state).static_peers.clone();
        // Sessions before dials, as the dial loop takes them.
        let sessions = lock(&self.shared.sessions);
        let dials = lock(&self.shared.dials);
        let errors = lock(&self.shared.dial_errors);
        peers
            .into_iter()
            .map(|addr| {
                let device = dials
                    .reached(&addr)
                    .filter(|d| sessions.contains_key(d))
                    .or_else(|| {
                        sessions
                            .iter()
                            .find(|(_, x)| x.conn.remote_address().to_string() == addr)
                            .map(|(d, _)| *d)
                    });
                StaticPeerView {
                    last_error: device
                        .is_none()
                        .then(|| errors.get(&addr).cloned())
                        .flatten(),
                    device,
                    addr,
                }
            })
            .collect()
    }

    /// The members with their link state, this device excluded.
    pub fn peers(&self) -> Vec<PeerView> {
        let last_sync = self.driver.last_sync();
        let (records, addrs): (Vec<MemberRecord>, BTreeMap<DeviceId, Vec<String>>) = {
            let s = lock(&self.shared.state);
            match s.roster.as_ref() {
                Some(r) => (
                    r.records()
                        .filter(|m| m.device != self.shared.me)
                        .cloned()
                        .collect(),
                    r.records()
                        .map(|m| (m.device, r.addrs(&m.device).to_vec()))
                        .collect(),
                ),
                None => Default::default(),
            }
        };
        let names: BTreeMap<DeviceId, String> =
            records.iter().map(|r| (r.device, r.name.clone())).collect();
        let sessions = lock(&self.shared.sessions);
        let hub_links = lock(&self.shared.hub_links);
        let clones = lock(&self.shared.clones);
        let now = wall_ms();
        records
            .into_iter()
            .map(|m| {
                let s = sessions.get(&m.device);
                let via = hub_links
                    .iter()
                    .find(|(hub, linked)| sessions.contains_key(hub) && linked.contains(&m.device))
                    .map(|(hub, _)| names.get(hub).cloned().unwrap_or_else(|| hub.short()));
                let reach = if m.removed.is_some() {
                    Reach::Removed
                } else if s.is_some() {
                    Reach::Connected
                } else if let Some(via) = via {
                    Reach::Relayed { via }
                } else {
                    Reach::Offline
                };
                PeerView {
                    clone_addrs: clones.suspect(&m.device, now),
                    reach,
                    address: s.map(|s| s.conn.remote_address()),
                    rtt: s.map(|s| s.conn.rtt()),
                    last_sync_ms: last_sync
                        .range((m.device, String::new())..)
                        .take_while(|((d, _), _)| *d == m.device)
                        .map(|(_, at)| *at)
                        .max(),
                    addrs: addrs.get(&m.device).cloned().unwrap_or_default(),
                    record: m,
                }
            })
            .collect()
    }

    /// Stops sync after the sessions have closed.
    pub async fn stop(self) {
        self.shared
            .endpoint
            .close(close_code::SHUTDOWN, b"agent stopping");
        self.shared.flush();
        // Long enough for the close to reach live peers; a peer that just
        // went away never answers it, and notices by its idle timeout, so
        // waiting for it would only hold the shutdown up.
        let _ = tokio::time::timeout(CLOSE_GRACE, self.shared.endpoint.wait_idle()).await;
        if let Ok(driver) = Arc::try_unwrap(self.driver) {
            tokio::task::spawn_blocking(move || driver.stop())
                .await
                .ok();
        } else {
            let _ = self.shared.driver.send(Input::Stop);
        }
    }
}

/// The roster of `s`, for a change to the active member `device`.
/// A rule as the command line gave it, with its devices resolved to ids.
fn rule_of(roster: &Roster, spec: RuleSpec) -> anyhow::Result<AccessRule> {
    if spec.devices.is_empty() {
        anyhow::bail!("a rule must say which devices it is for (devices = [\"team:ios\"], ...)");
    }
    let devices = selectors(roster, &spec.devices)?;
    for f in &spec.filter {
        if f.device == Some(DeviceAttr::Team) && !matches!(f.op, FilterOp::Eq | FilterOp::Ne) {
            anyhow::bail!("{f}: a device's teams are a list; compare them with = or != only");
        }
    }
    Ok(AccessRule {
        devices,
        collections: spec.collections,
        filter: spec.filter,
        exclude: spec.exclude,
        access: spec.access,
    })
}

fn link_of(roster: &Roster, spec: LinkSpec) -> anyhow::Result<LinkRule> {
    if spec.devices.is_empty() || spec.peers.is_empty() {
        anyhow::bail!("a link must name both its ends (devices = [\"*\"], peers = [\"role:hub\"])");
    }
    Ok(LinkRule {
        devices: selectors(roster, &spec.devices)?,
        peers: selectors(roster, &spec.peers)?,
        sync_mode: spec.sync_mode,
    })
}

/// Reads selectors as people write them: `device:` takes a member's name,
/// id or id prefix, which is signed as the full id.
fn selectors(roster: &Roster, written: &[String]) -> anyhow::Result<Vec<Selector>> {
    written
        .iter()
        .map(|d| match d.strip_prefix("device:") {
            Some(name) => roster
                .resolve(name)
                .map(Selector::Device)
                .map_err(anyhow::Error::from),
            None => d.parse::<Selector>().map_err(anyhow::Error::from),
        })
        .collect()
}

fn roster_for<'a>(s: &'a mut MeshState, device: &DeviceId) -> anyhow::Result<&'a mut Roster> {
    let roster = s
        .roster
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("this device is in no mesh"))?;
    if !roster.is_active(device) {
        anyhow::bail!("device {device} is not an active member");
    }
    Ok(roster)
}

/// Per database, the highest seq held of a device's first write
/// incarnation, and of each later one ([`Removal`]).
type Cutoffs = (BTreeMap<String, u64>, BTreeMap<String, BTreeMap<u32, u64>>);

/// The change that marks a member record removed by `by` now (itself, when
/// `left`), with `cutoffs`.
fn removal(
    by: DeviceId,
    left: bool,
    (cutoffs, incarnations): Cutoffs,
) -> impl FnOnce(&mut MemberRecord) {
    move |r| {
        r.removed = Some(Removal {
            by,
            at_ms: wall_ms(),
            left,
            cutoffs,
            incarnations,
        })
    }
}

/// The addresses to announce for an endpoint bound to `local`.
fn local_addrs(local: SocketAddr) -> Vec<String> {
    if !local.ip().is_unspecified() {
        return vec![local.to_string()];
    }
    let mut out = Vec::new();
    let mut loopback = Vec::new();
    for iface in if_addrs::get_if_addrs().unwrap_or_default() {
        let ip = iface.ip();
        // An IPv4 endpoint cannot answer on IPv6; one bound to `::` takes
        // both.
        if local.is_ipv4() && ip.is_ipv6() {
            continue;
        }
        if let std::net::IpAddr::V6(v6) = ip
            && v6.is_unicast_link_local()
        {
            // Link-local addresses need a scope that other hosts lack.
            continue;
        }
        let addr = SocketAddr::new(ip, local.port()).to_string();
        if ip.is_loopback() {
            loopback.push(addr);
        } else {
            out.push(addr);
        }
    }
    out.extend(loopback);
    out
}

/// Dials `addr` (`host:port`), expecting `device` there if given.
async fn dial(
    shared: &Shared,
    addr: &str,
    device: Option<DeviceId>,
) -> anyhow::Result<quinn::Connection> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve {addr}"))?
        .collect();
    let local = shared.endpoint.local_addr()?;
    let local_v4 = local.is_ipv4();
    let target = resolved
        .iter()
        .find(|a| a.is_ipv4() == local_v4 || !local_v4)
        .copied()
        .ok_or_else(|| anyhow::anyhow!("{addr} has no address this endpoint can reach"))?;
    // A member's loopback address is its own host's: on another host with
    // the same port it leads back here.
    let is_self = target.port() == local.port()
        && (target.ip().is_loopback()
            || target.ip() == local.ip()
            || lock(&shared.addrs).contains(&target.to_string()));
    anyhow::ensure!(!is_self, "{addr} is this device's own address");
    let name = tls::server_name_for(device.as_ref());
    let connecting = shared
        .endpoint
        .connect_with(shared.client.clone(), target, &name)?;
    let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {target} within 5 s"))??;
    Ok(conn)
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("an incoming connection failed: {e}");
                    return;
                }
            };
            let Some(peer) = tls::peer_device(&conn) else {
                conn.close(close_code::PROTOCOL, b"no certificate");
                return;
            };
            match session::accept_handshake(&shared, &conn, peer).await {
                Ok((send, recv, joined)) => {
                    session::run(shared, conn, peer, false, joined, send, recv).await
                }
                Err(e) => tracing::info!(peer = %peer, "refused an incoming connection: {e}"),
            }
        });
    }
}

/// Keeps a session up with every member, found device and static peer.
async fn dial_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return;
        }
        prune_links(&shared);
        for (key, device, addrs) in dial_targets(&shared) {
            if !lock(&shared.dials).begin(&key, wall_ms()) {
                continue;
            }
            let shared = shared.clone();
            tokio::spawn(async move {
                let reached = dial_one(&shared, &key, device, &addrs).await;
                lock(&shared.dials).finished(&key, reached, wall_ms(), jitter());
                shared.wake.notify_one();
            });
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Writes the state file in batches: at most one write per
/// [`SAVE_BATCH`] however much gossip arrives, and once more at shutdown.
async fn save_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = shared.save_wake.notified() => {}
            _ = shutdown.changed() => {
                shared.flush();
                return;
            }
        }
        tokio::time::sleep(SAVE_BATCH).await;
        shared.flush();
    }
}

/// How long gossip is gathered before the state file is written.
const SAVE_BATCH: Duration = Duration::from_millis(250);

/// A random spread for backoffs.
fn jitter() -> u16 {
    state::random::<2>().map_or(0, u16::from_le_bytes)
}

/// The UDP socket buffers a mesh endpoint asks for. A hub that a
/// thousand devices dial at once takes bursts of handshake packets that
/// overflow the kernel's default buffer (about 200 KiB) and are dropped;
/// the kernel caps the request at `net.core.rmem_max` and `wmem_max`.
const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// A QUIC endpoint on `addr` with large socket buffers, taking incoming
/// connections when given a `server` configuration.
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // A smaller buffer than asked for still works, only with more loss.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
}

/// The QUIC transport settings of every mesh link: a keep-alive well
/// inside the idle timeout, so a quiet link stays up and a dead one ends
/// within seconds.
pub fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            10_000,
        ))));
    transport
}

/// The dial key of the addresses mDNS found for `device`.
pub(crate) fn mdns_dial_key(device: &DeviceId) -> String {
    format!("mdns:{}", device.to_base32())
}

/// What to dial now: `(key, expected device, addresses)`.
/// The members this device keeps links with: hubs, its ring neighbours
/// and devices mDNS found (static peers aside).
fn wanted_members(
    shared: &Shared,
    s: &MeshState,
    discovered: &BTreeMap<DeviceId, BTreeSet<SocketAddr>>,
) -> BTreeSet<DeviceId> {
    let Some(roster) = s.roster.as_ref() else {
        return BTreeSet::new();
    };
    let hubs: BTreeSet<DeviceId> = members::hubs_of(roster);
    let ring: BTreeSet<DeviceId> = roster
        .active()
        .filter(|m| m.role != Role::Hub)
        .map(|m| m.device)
        .collect();
    let mut devices = overlay::wanted(&shared.me, &hubs, &ring, shared.member_links);
    devices.extend(discovered.keys().filter(|d| !s.is_removed(d)));
    devices.remove(&shared.me);
    devices
}

/// Closes sessions this device dialled to members it no longer wants: as
/// members join, each device's ring neighbours move, and links to the old
/// ones would pile up. A peer that still wants the link (it has not heard
/// of the newcomers yet) dials it again; once both agree, it stays closed.
fn prune_links(shared: &Shared) {
    let s = lock(&shared.state);
    if s.keys.is_none() {
        return;
    }
    let discovered = lock(&shared.discovered);
    let wanted = wanted_members(shared, &s, &discovered);
    let sessions = lock(&shared.sessions);
    let dials = lock(&shared.dials);
    let statics: BTreeSet<DeviceId> = s
        .static_peers
        .iter()
        .filter_map(|p| dials.reached(p))
        .collect();
    for (peer, sess) in sessions.iter() {
        let is_static = statics.contains(peer)
            || s.static_peers
                .contains(&sess.conn.remote_address().to_string());
        if sess.dialled && !wanted.contains(peer) && !is_static {
            tracing::debug!(peer = %peer, "closing a link this device no longer needs");
            sess.conn
                .close(close_code::UNNEEDED, b"link no longer needed");
        }
    }
}

fn dial_targets(shared: &Shared) -> Vec<(String, Option<DeviceId>, Vec<String>)> {
    let s = lock(&shared.state);
    if s.keys.is_none() {
        return Vec::new();
    }
    let Some(roster) = s.roster.as_ref() else {
        return Vec::new();
    };
    let discovered = lock(&shared.discovered);
    let mut out = Vec::new();
    let devices = wanted_members(shared, &s, &discovered);
    for d in devices {
        if shared.connected(&d) {
            continue;
        }
        // What mDNS heard is dialled apart from what the device last
        // signed: a dial stuck on a stale address (one that times out)
        // must not hold up the address just heard.
        let heard: Vec<String> = discovered
            .get(&d)
            .into_iter()
            .flatten()
            .map(|a| a.to_string())
            .collect();
        let signed: Vec<String> = roster
            .addrs(&d)
            .iter()
            .filter(|a| !heard.contains(a))
            .cloned()
            .collect();
        if !heard.is_empty() {
            out.push((mdns_dial_key(&d), Some(d), heard));
        }
        if !signed.is_empty() {
            out.push((d.to_base32(), Some(d), signed));
        }
    }
    let sessions = lock(&shared.sessions);
    let dials = lock(&shared.dials);
    for p in &s.static_peers {
        let known = dials.reached(p);
        let reached = sessions
            .iter()
            .any(|(dev, x)| Some(*dev) == known || x.conn.remote_address().to_string() == *p);
        if !reached {
            out.push((p.clone(), None, vec![p.clone()]));
        }
    }
    out
}

/// Dials one target's addresses in turn and runs the session on the first
/// that answers. Returns the device reached, if any.
async fn dial_one(
    shared: &Arc<Shared>,
    key: &str,
    device: Option<DeviceId>,
    addrs: &[String],
) -> Option<DeviceId> {
    for addr in addrs {
        let conn = match dial(shared, addr, device).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(addr, "dial failed: {e:#}");
                note_dial_error(shared, key, device, addr, format!("{e:#}"));
                continue;
            }
        };
        let Some(peer) = tls::peer_device(&conn) else {
            continue;
        };
        lock(&shared.dial_errors).remove(key);
        if shared.connected(&peer) {
            conn.close(close_code::DUPLICATE, b"already connected");
            return Some(peer);
        }
        match session::dial_handshake(shared, &conn, peer, None).await {
            Ok((send, recv)) => {
                session::run(shared.clone(), conn, peer, true, false, send, recv).await;
                return Some(peer);
            }
            // The keys were exchanged: try again at once.
            Err(SessionError::Rekeyed) => return Some(peer),
            Err(e) => {
                tracing::info!(addr, peer = %peer, "could not join the session: {e}");
                note_dial_error(shared, key, device, addr, e.to_string());
            }
        }
    }
    None
}

/// Keeps why dialling `key` failed. A member's addresses are several, so
/// its error names the one that failed; a static peer's key is its
/// address.
fn note_dial_error(shared: &Shared, key: &str, device: Option<DeviceId>, addr: &str, e: String) {
    let e = match device {
        Some(_) => format!("{addr}: {e}"),
        None => e,
    };
    lock(&shared.dial_errors).insert(key.to_owned(), e);
}

/// Keeps the announced addresses in step with the interfaces: when they
/// change (a new network, a new lease), signs and spreads the new ones.
async fn watch_interfaces(shared: Arc<Shared>, local: SocketAddr) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => return,
        }
        let now = local_addrs(local);
        if *lock(&shared.addrs) == now {
            continue;
        }
        tracing::info!(addrs = ?now, "this device's addresses changed");
        *lock(&shared.addrs) = now.clone();
        let signed = {
            let mut s = lock(&shared.state);
            let changed = s
                .roster
                .as_mut()
                .map(|r| r.set_own_addrs(shared.identity.secret(), &now, wall_ms()));
            match changed {
                Some(Ok(true)) => {
                    shared.save(&s);
                    s.roster
                        .as_ref()
                        .and_then(|r| r.signed_addrs(&shared.me).cloned())
                }
                Some(Err(e)) => {
                    tracing::warn!("cannot sign this device's new addresses: {e}");
                    None
                }
                _ => None,
            }
        };
        if let Some(signed) = signed {
            shared.keys_changed();
            let delta = blazedb_proto::mesh::Roster {
                addrs: vec![signed],
                ..Default::default()
            };
            shared.members_changed(Some((&delta, &shared.me)));
        }
    }
}
