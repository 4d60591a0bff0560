//! Finding peers on the LAN with mDNS without telling strangers anything:
//! this device announces `_blazedb._udp.local.` under an opaque tag, an
//! HMAC under the mesh secret of its id and the current hour, and nothing
//! else but its port, the addresses it answers on and the protocol
//! version. A member recognises the tag by computing it for every member
//! it knows; a stranger sees a random name that changes every hour and
//! differs from mesh to mesh, so it can neither follow a device nor tell
//! which devices share a mesh.
//!
//! A device in no mesh (never joined, removed, or left) announces nothing.
//! One instance resolves several times as its address list grows; the
//! addresses are merged per device.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use blazedb_proto::DeviceId;
use blazedb_proto::mesh::PEER_PROTOCOL_VERSION;
use hmac::Mac as _;
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::watch;

use super::state::MeshKeys;
use super::{Shared, lock};
use crate::store::wall_ms;

/// The service type agents announce.
pub const SERVICE_TYPE: &str = "_blazedb._udp.local.";

/// How long one tag lasts.
pub const WINDOW_MS: u64 = 3_600_000;

/// The tag `device` announces in `window` of the mesh whose secret is
/// `secret`: 16 lowercase base32 characters.
pub fn tag(secret: &[u8; 32], device: &DeviceId, window: u64) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"blazedb mdns tag\0");
    mac.update(&device.0);
    mac.update(&window.to_be_bytes());
    let out = mac.finalize().into_bytes();
    blazedb_proto::base32::encode(&out[..10]).to_lowercase()
}

/// The tags each of `members` may announce around `now_ms` (the previous,
/// current and next window, for clocks that disagree a little).
pub fn tags_of(keys: &MeshKeys, members: &[DeviceId], now_ms: u64) -> BTreeMap<String, DeviceId> {
    let w = now_ms / WINDOW_MS;
    let mut out = BTreeMap::new();
    for d in members {
        for window in [w.saturating_sub(1), w, w + 1] {
            out.insert(tag(&keys.secret, d, window), *d);
        }
    }
    out
}

/// What this device announces now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Announcement {
    tag: String,
    ips: Vec<IpAddr>,
}

fn announcement(shared: &Shared) -> Option<Announcement> {
    let keys = shared.keys()?;
    let mut ips: Vec<IpAddr> = lock(&shared.addrs)
        .iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.ip())
        .collect();
    ips.sort();
    ips.dedup();
    Some(Announcement {
        tag: tag(&keys.secret, &shared.me, wall_ms() / WINDOW_MS),
        ips,
    })
}

/// Starts announcing and browsing; both stop at shutdown.
pub(crate) fn start(
    shared: Arc<Shared>,
    port: u16,
    loopback_only: bool,
    mut changed: watch::Receiver<u64>,
) -> anyhow::Result<()> {
    let daemon = ServiceDaemon::new().context("cannot start mDNS")?;
    if loopback_only {
        daemon.disable_interface(IfKind::All)?;
        daemon.enable_interface(IfKind::LoopbackV4)?;
    }
    let events = daemon.browse(SERVICE_TYPE)?;
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let mut announced: Option<Announcement> = None;
        loop {
            let want = announcement(&shared);
            if want != announced {
                if let Some(old) = announced.take() {
                    let _ = daemon.unregister(&format!("{}.{SERVICE_TYPE}", old.tag));
                }
                if let Some(new) = want {
                    match announce(&daemon, &new, port) {
                        Ok(()) => announced = Some(new),
                        Err(e) => tracing::warn!("cannot announce this device with mDNS: {e:#}"),
                    }
                }
            }
            // Wake at the next window to announce the next tag.
            let next_window = (wall_ms() / WINDOW_MS + 1) * WINDOW_MS;
            let until_next = Duration::from_millis(next_window.saturating_sub(wall_ms()) + 10);
            tokio::select! {
                ev = events.recv_async() => match ev {
                    Ok(ServiceEvent::ServiceResolved(info)) => found(&shared, &info),
                    Ok(_) => {}
                    Err(_) => break,
                },
                r = changed.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(until_next) => {}
                _ = shutdown.changed() => break,
            }
        }
        if let Some(old) = announced {
            let _ = daemon.unregister(&format!("{}.{SERVICE_TYPE}", old.tag));
        }
        let _ = daemon.shutdown();
    });
    Ok(())
}

/// A service was resolved: if its tag is a member's, note where it is.
fn found(shared: &Shared, info: &mdns_sd::ResolvedService) {
    let Some(tag) = info
        .get_fullname()
        .strip_suffix(SERVICE_TYPE)
        .and_then(|s| s.strip_suffix('.'))
    else {
        return;
    };
    let device = {
        let s = lock(&shared.state);
        let (Some(keys), Some(roster)) = (&s.keys, &s.roster) else {
            return;
        };
        let members: Vec<DeviceId> = roster
            .active()
            .filter(|r| r.device != shared.me)
            .map(|r| r.device)
            .collect();
        match tags_of(keys, &members, wall_ms()).get(tag) {
            Some(d) => *d,
            None => return,
        }
    };
    let addrs: Vec<SocketAddr> = info
        .addresses
        .iter()
        .map(|ip| SocketAddr::new(ip.to_ip_addr(), info.port))
        .filter(|a| !matches!(a.ip(), IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect();
    let fresh = {
        let mut d = lock(&shared.discovered);
        let set = d.entry(device).or_default();
        let before = set.len();
        set.extend(addrs);
        set.len() != before
    };
    let linked = shared.connected(&device);
    if !linked {
        // Heard again while unlinked: it is likely reachable now, whatever
        // the backoff says.
        lock(&shared.dials).retry_soon(Some(&super::mdns_dial_key(&device)), wall_ms());
    }
    if fresh || !linked {
        tracing::debug!(peer = %device.short(), "found by mDNS");
        shared.wake.notify_one();
    }
}

fn announce(daemon: &ServiceDaemon, a: &Announcement, port: u16) -> anyhow::Result<()> {
    let props = [("v", PEER_PROTOCOL_VERSION.to_string())];
    let ips: Vec<String> = a.ips.iter().map(ToString::to_string).collect();
    let info = ServiceInfo::new(
        SERVICE_TYPE,
        &a.tag,
        &format!("{}.local.", a.tag),
        ips.join(",").as_str(),
        port,
        &props[..],
    )?;
    daemon.register(info)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blazedb_proto::mesh::MeshId;

    #[test]
    fn a_tag_names_a_device_only_to_holders_of_the_secret_and_only_for_a_while() {
        let keys = MeshKeys {
            id: MeshId([1; 16]),
            secret: [2; 32],
            epoch: 0,
        };
        let (a, b) = (DeviceId([3; 32]), DeviceId([4; 32]));
        let now = 10 * WINDOW_MS + 5;
        let t = tag(&keys.secret, &a, 10);
        assert_eq!(t.len(), 16);
        assert!(!t.contains(&a.to_base32().to_lowercase()[..7]));
        let known = tags_of(&keys, &[a, b], now);
        assert_eq!(known.get(&t), Some(&a));
        assert_eq!(
            known.get(&tag(&keys.secret, &a, 9)),
            Some(&a),
            "last hour's"
        );
        assert_ne!(tag(&keys.secret, &a, 11), t, "the tag changes every window");
        assert_ne!(tag(&[9; 32], &a, 10), t, "another mesh sees another tag");
        assert_ne!(tag(&keys.secret, &b, 10), t);
        assert_eq!(known.get(&tag(&keys.secret, &a, 12)), None, "too far ahead");
    }
}
