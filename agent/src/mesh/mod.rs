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
pub mod proof;
pub mod session;
pub mod state;
pub mod tls;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use blazedb_proto::DeviceId;
use blazedb_proto::mesh::{Invite, Member, MeshId, PeerMessage, Role};
use tokio::sync::{Notify, mpsc, watch};

use crate::identity::Identity;
use crate::store::Store;
use crate::store::wall_ms;
use driver::{Driver, Input};
use session::SessionError;
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
}

/// The UDP port agents listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7340;

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
}

/// A connected peer's session, as the rest of the mesh sees it.
#[derive(Debug)]
struct SessionEntry {
    link: u64,
    conn: quinn::Connection,
    dialled: bool,
    ctl: mpsc::UnboundedSender<PeerMessage>,
}

/// What every task of the mesh shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) me: DeviceId,
    name: String,
    role: Role,
    addrs: Vec<String>,
    state: Arc<Mutex<MeshState>>,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    pub(crate) driver: std::sync::mpsc::Sender<Input>,
    sessions: Mutex<BTreeMap<DeviceId, SessionEntry>>,
    dials: Mutex<dials::Dials>,
    /// Addresses mDNS found, per device.
    discovered: Mutex<BTreeMap<DeviceId, BTreeSet<SocketAddr>>>,
    clones: Mutex<clones::CloneWatch>,
    next_link: AtomicU64,
    wake: Notify,
    /// Tells discovery the mesh changed, so it announces the new tag.
    mesh_changed: watch::Sender<Option<MeshId>>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct StateGate(Arc<Mutex<MeshState>>);

impl tls::Gate for StateGate {
    fn admits(&self, device: &DeviceId) -> bool {
        lock(&self.0).admits(device, wall_ms())
    }
}

impl Shared {
    pub(crate) fn keys(&self) -> Option<MeshKeys> {
        lock(&self.state).keys.clone()
    }

    pub(crate) fn me_as_member(&self) -> Member {
        Member {
            device: self.me,
            name: self.name.clone(),
            role: self.role,
            removed: false,
            addrs: self.addrs.clone(),
        }
    }

    pub(crate) fn is_removed(&self, device: &DeviceId) -> bool {
        lock(&self.state).is_removed(device)
    }

    /// Every member known, this device included.
    pub(crate) fn member_list(&self) -> Vec<Member> {
        let mut list: Vec<Member> = lock(&self.state).members.values().cloned().collect();
        list.push(self.me_as_member());
        list
    }

    pub(crate) fn next_link(&self) -> u64 {
        self.next_link.fetch_add(1, Ordering::Relaxed)
    }

    fn save(&self, state: &MeshState) {
        if let Err(e) = state.save() {
            tracing::error!("cannot save the mesh state: {e:#}");
        }
    }

    fn members_changed(&self) {
        let (members, removed): (Vec<DeviceId>, Vec<DeviceId>) = {
            let s = lock(&self.state);
            (
                s.active_members().map(|m| m.device).collect(),
                s.members
                    .values()
                    .filter(|m| m.removed)
                    .map(|m| m.device)
                    .collect(),
            )
        };
        let mut all = members;
        all.push(self.me);
        let _ = self.driver.send(Input::Members(all));
        let list = self.member_list();
        let sessions = lock(&self.sessions);
        for (peer, s) in sessions.iter() {
            if removed.contains(peer) {
                s.conn.close(close_code::REMOVED, b"removed from the mesh");
            } else {
                let _ = s.ctl.send(PeerMessage::Members {
                    members: list.clone(),
                });
            }
        }
        self.wake.notify_one();
    }

    /// Records what a member says of itself on connecting.
    pub(crate) fn note_member(&self, m: &Member) {
        let changed = {
            let mut s = lock(&self.state);
            let known = s.members.contains_key(&m.device);
            let changed = s.note_member(m);
            if changed {
                self.save(&s);
            }
            changed && !known
        };
        if changed {
            self.members_changed();
        }
    }

    /// Merges a member list a peer sent.
    pub(crate) fn merge_members(&self, list: &[Member]) {
        if list.iter().any(|m| m.device == self.me && m.removed) {
            tracing::error!(
                "this device was removed from the mesh by another member: leaving it. \
                 Join again with a new invite to sync"
            );
            let mut s = lock(&self.state);
            s.keys = None;
            s.members.clear();
            s.invites.clear();
            self.save(&s);
            drop(s);
            let _ = self.mesh_changed.send(None);
            for (_, sess) in lock(&self.sessions).iter() {
                sess.conn
                    .close(close_code::REMOVED, b"removed from the mesh");
            }
            return;
        }
        let changed = {
            let mut s = lock(&self.state);
            let changed = s.merge_members(&self.me, list);
            if changed {
                self.save(&s);
            }
            changed
        };
        if changed {
            self.members_changed();
        }
    }

    pub(crate) fn joined(&self, keys: MeshKeys, members: &[Member]) {
        let id = keys.id;
        {
            let mut s = lock(&self.state);
            s.keys = Some(keys);
            s.merge_members(&self.me, members);
            self.save(&s);
        }
        let _ = self.mesh_changed.send(Some(id));
        self.members_changed();
    }

    pub(crate) fn redeem(
        &self,
        invite: &[u8; 8],
        check: impl Fn(&[u8; 32]) -> bool,
    ) -> Option<(MeshKeys, [u8; 32])> {
        let mut s = lock(&self.state);
        let keys = s.keys.clone()?;
        let secret = s.redeem(invite, wall_ms(), check)?;
        self.save(&s);
        Some((keys, secret))
    }

    /// Makes `conn` the session with `peer`, unless another one is kept.
    pub(crate) fn register(
        &self,
        peer: DeviceId,
        link: u64,
        conn: &quinn::Connection,
        dialled: bool,
        ctl: mpsc::UnboundedSender<PeerMessage>,
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
        sessions.insert(
            peer,
            SessionEntry {
                link,
                conn: conn.clone(),
                dialled,
                ctl,
            },
        );
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

/// A member as `blazectl peers` shows it.
#[derive(Debug, Clone)]
pub struct PeerView {
    /// The device.
    pub member: Member,
    /// Whether a session is up.
    pub connected: bool,
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
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(Duration::from_secs(2)))
            .max_idle_timeout(Some(Duration::from_secs(10).try_into()?));
        let (server, client) = tls::quic_configs(
            identity,
            Arc::new(StateGate(state.clone())),
            Arc::new(transport),
        )?;
        let endpoint = quinn::Endpoint::server(server, config.listen)
            .with_context(|| format!("cannot listen on UDP {}", config.listen))?;
        let local = endpoint.local_addr()?;
        let addrs = if config.announce.is_empty() {
            local_addrs(local)
        } else {
            config.announce.clone()
        };
        let members: Vec<DeviceId> = {
            let s = lock(&state);
            s.active_members()
                .map(|m| m.device)
                .chain([identity.device_id()])
                .collect()
        };
        let driver = Driver::start(store, members)?;
        let mesh_id = lock(&state).keys.as_ref().map(|k| k.id);
        let (mesh_changed, mesh_rx) = watch::channel(mesh_id);
        let shared = Arc::new(Shared {
            me: identity.device_id(),
            name: config.name.clone(),
            role: config.role,
            addrs,
            state,
            endpoint,
            client,
            driver: driver.sender(),
            sessions: Mutex::new(BTreeMap::new()),
            dials: Mutex::default(),
            discovered: Mutex::new(BTreeMap::new()),
            clones: Mutex::default(),
            next_link: AtomicU64::new(1),
            wake: Notify::new(),
            mesh_changed,
            shutdown,
        });
        tokio::spawn(accept_loop(shared.clone()));
        tokio::spawn(dial_loop(shared.clone()));
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
    pub fn addrs(&self) -> &[String] {
        &self.shared.addrs
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

    /// How many members there are, this device excluded and removed ones
    /// not counted.
    pub fn member_count(&self) -> usize {
        lock(&self.shared.state).active_members().count()
    }

    /// Creates a new mesh with this device as its only member.
    pub fn create(&self) -> anyhow::Result<MeshId> {
        let id = {
            let mut s = lock(&self.shared.state);
            if let Some(k) = &s.keys {
                anyhow::bail!(
                    "this device is already in mesh {}; a device is in one mesh at a time",
                    k.id.tag()
                );
            }
            let keys = MeshKeys {
                id: MeshId(state::random()?),
                secret: state::random()?,
            };
            let id = keys.id;
            s.keys = Some(keys);
            s.save()?;
            id
        };
        let _ = self.shared.mesh_changed.send(Some(id));
        tracing::info!(mesh = id.tag(), "created a mesh");
        Ok(id)
    }

    /// Issues an invite valid for `ttl`, for `uses` devices (`None`: any
    /// number).
    pub fn invite(&self, ttl: Duration, uses: Option<u32>) -> anyhow::Result<Invite> {
        let mut s = lock(&self.shared.state);
        let invite = s.new_invite(
            self.shared.me,
            self.shared.addrs.clone(),
            wall_ms(),
            ttl.as_millis() as u64,
            uses,
        )?;
        s.save()?;
        Ok(invite)
    }

    /// Joins the mesh of `invite` by dialling the inviter; returns once the
    /// inviter has admitted this device.
    pub async fn join(&self, invite: &Invite) -> anyhow::Result<()> {
        if let Some(k) = self.shared.keys() {
            if k.id == invite.mesh {
                return Ok(());
            }
            anyhow::bail!(
                "this device is already in mesh {}; a device is in one mesh at a time",
                k.id.tag()
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
                                send,
                                recv,
                            ));
                            return Ok(());
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

    /// Removes `device` from the mesh, on every member it reaches.
    pub fn remove(&self, device: &DeviceId) -> anyhow::Result<()> {
        if *device == self.shared.me {
            anyhow::bail!("a device cannot remove itself; remove it from another member");
        }
        {
            let mut s = lock(&self.shared.state);
            if s.keys.is_none() {
                anyhow::bail!("this device is in no mesh");
            }
            let m = s
                .members
                .entry(*device)
                .or_insert_with(|| session::bare_member(*device));
            m.removed = true;
            m.addrs.clear();
            s.save()?;
        }
        tracing::info!(device = %device, "removed a device from the mesh");
        self.shared.members_changed();
        Ok(())
    }

    /// Adds an address to dial always.
    pub fn add_peer(&self, addr: &str) -> anyhow::Result<()> {
        {
            let mut s = lock(&self.shared.state);
            if !s.static_peers.iter().any(|p| p == addr) {
                s.static_peers.push(addr.to_owned());
                s.save()?;
            }
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// The members with their link state.
    pub fn peers(&self) -> Vec<PeerView> {
        let stats = self.driver.stats();
        let members: Vec<Member> = lock(&self.shared.state).members.values().cloned().collect();
        let sessions = lock(&self.shared.sessions);
        let clones = lock(&self.shared.clones);
        let now = wall_ms();
        members
            .into_iter()
            .map(|m| {
                let s = sessions.get(&m.device);
                PeerView {
                    clone_addrs: clones.suspect(&m.device, now),
                    connected: s.is_some(),
                    address: s.map(|s| s.conn.remote_address()),
                    rtt: s.map(|s| s.conn.rtt()),
                    last_sync_ms: stats.get(&m.device).and_then(|x| x.last_sync_ms),
                    member: m,
                }
            })
            .collect()
    }

    /// Stops sync after the sessions have closed.
    pub async fn stop(self) {
        self.shared
            .endpoint
            .close(close_code::SHUTDOWN, b"agent stopping");
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.shared.endpoint.wait_idle()).await;
        if let Ok(driver) = Arc::try_unwrap(self.driver) {
            tokio::task::spawn_blocking(move || driver.stop())
                .await
                .ok();
        } else {
            let _ = self.shared.driver.send(Input::Stop);
        }
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
            || shared.addrs.contains(&target.to_string()));
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
                Ok((send, recv)) => session::run(shared, conn, peer, false, send, recv).await,
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
        for (key, device, addrs) in dial_targets(&shared) {
            if !lock(&shared.dials).begin(&key, wall_ms()) {
                continue;
            }
            let shared = shared.clone();
            tokio::spawn(async move {
                let reached = dial_one(&shared, device, &addrs).await;
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

/// A random spread for backoffs.
fn jitter() -> u16 {
    state::random::<2>().map_or(0, u16::from_le_bytes)
}

/// What to dial now: `(key, expected device, addresses)`.
fn dial_targets(shared: &Shared) -> Vec<(String, Option<DeviceId>, Vec<String>)> {
    let s = lock(&shared.state);
    if s.keys.is_none() {
        return Vec::new();
    }
    let discovered = lock(&shared.discovered);
    let mut out = Vec::new();
    let mut devices: BTreeSet<DeviceId> = s.active_members().map(|m| m.device).collect();
    devices.extend(discovered.keys().filter(|d| !s.is_removed(d)));
    for d in devices {
        if shared.connected(&d) {
            continue;
        }
        let mut addrs: Vec<String> = discovered
            .get(&d)
            .into_iter()
            .flatten()
            .map(|a| a.to_string())
            .collect();
        if let Some(m) = s.members.get(&d) {
            for a in &m.addrs {
                if !addrs.contains(a) {
                    addrs.push(a.clone());
                }
            }
        }
        if !addrs.is_empty() {
            out.push((d.to_base32(), Some(d), addrs));
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
    device: Option<DeviceId>,
    addrs: &[String],
) -> Option<DeviceId> {
    for addr in addrs {
        let conn = match dial(shared, addr, device).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(addr, "dial failed: {e:#}");
                continue;
            }
        };
        let Some(peer) = tls::peer_device(&conn) else {
            continue;
        };
        if shared.connected(&peer) {
            conn.close(close_code::DUPLICATE, b"already connected");
            return Some(peer);
        }
        match session::dial_handshake(shared, &conn, peer, None).await {
            Ok((send, recv)) => {
                session::run(shared.clone(), conn, peer, true, send, recv).await;
                return Some(peer);
            }
            Err(e) => tracing::info!(addr, peer = %peer, "could not join the session: {e}"),
        }
    }
    None
}
