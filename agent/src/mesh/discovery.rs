//! Finding peers on the LAN with mDNS: this device announces
//! `_blazedb._udp.local.` with its id, its mesh's tag (never the secret)
//! and the protocol version, and browses for others of the same mesh.
//!
//! One instance resolves several times as its address list grows (IPv4,
//! IPv6, loopback); the addresses are merged per device.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use blazedb_proto::DeviceId;
use blazedb_proto::mesh::{MeshId, PEER_PROTOCOL_VERSION};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::watch;

use super::{Shared, lock};
use crate::store::wall_ms;

/// The service type agents announce.
pub const SERVICE_TYPE: &str = "_blazedb._udp.local.";

/// Starts announcing and browsing; both stop at shutdown.
pub(crate) fn start(
    shared: Arc<Shared>,
    port: u16,
    loopback_only: bool,
    mut mesh: watch::Receiver<Option<MeshId>>,
) -> anyhow::Result<()> {
    let daemon = ServiceDaemon::new().context("cannot start mDNS")?;
    if loopback_only {
        daemon.disable_interface(IfKind::All)?;
        daemon.enable_interface(IfKind::LoopbackV4)?;
    }
    let instance = shared.me.to_base32().to_lowercase();
    let fullname = format!("{instance}.{SERVICE_TYPE}");
    let events = daemon.browse(SERVICE_TYPE)?;
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let mut announced = false;
        let mut current: Option<MeshId> = None;
        let mut changed = true;
        loop {
            if changed {
                changed = false;
                current = *mesh.borrow_and_update();
                if announced {
                    let _ = daemon.unregister(&fullname);
                    announced = false;
                }
                if let Some(id) = current {
                    match announce(&daemon, &instance, port, &id) {
                        Ok(()) => announced = true,
                        Err(e) => tracing::warn!("cannot announce this device with mDNS: {e:#}"),
                    }
                }
            }
            tokio::select! {
                ev = events.recv_async() => match ev {
                    Ok(ServiceEvent::ServiceResolved(info)) => {
                        let Some(tag) = current.map(|m| m.tag()) else { continue };
                        if info.get_property_val_str("mesh") != Some(tag.as_str()) {
                            continue;
                        }
                        let Some(device) = info
                            .get_property_val_str("id")
                            .and_then(|s| s.parse::<DeviceId>().ok())
                            .filter(|d| *d != shared.me)
                        else {
                            continue;
                        };
                        let addrs: Vec<SocketAddr> = info
                            .addresses
                            .iter()
                            .map(|ip| SocketAddr::new(ip.to_ip_addr(), info.port))
                            .filter(|a| !matches!(a.ip(), std::net::IpAddr::V6(v6) if v6.is_unicast_link_local()))
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
                            // Heard again while unlinked: it is likely
                            // reachable now, whatever the backoff says.
                            lock(&shared.dials).retry_soon(Some(&device.to_base32()), wall_ms());
                        }
                        if fresh || !linked {
                            tracing::debug!(peer = %device.short(), "found by mDNS");
                            shared.wake.notify_one();
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
                r = mesh.changed() => {
                    if r.is_err() { break; }
                    changed = true;
                }
                _ = shutdown.changed() => break,
            }
        }
        if announced {
            let _ = daemon.unregister(&fullname);
        }
        let _ = daemon.shutdown();
    });
    Ok(())
}

fn announce(
    daemon: &ServiceDaemon,
    instance: &str,
    port: u16,
    mesh: &MeshId,
) -> anyhow::Result<()> {
    let props = [
        ("id", instance.to_owned()),
        ("mesh", mesh.tag()),
        ("v", PEER_PROTOCOL_VERSION.to_string()),
    ];
    let info = ServiceInfo::new(
        SERVICE_TYPE,
        instance,
        &format!("{instance}.local."),
        "",
        port,
        &props[..],
    )?
    .enable_addr_auto();
    daemon.register(info)?;
    Ok(())
}
