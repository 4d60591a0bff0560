//! The mesh as this device sees it, for `blazectl topology`, the dashboard
//! and metrics: how each member is reached, and per database what the
//! link carries and how far behind the peer is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use blazedb_proto::DeviceId;
use blazedb_proto::topology::{DbLink, Edge, LinkInfo, LinkState, TopologyResult};

use super::{Mesh, Reach, lock, mdns_dial_key, role_name};
use crate::store::wall_ms;

/// How long a view waits for the sync engine's figures before it goes
/// without lag.
const ENGINE_WAIT: Duration = Duration::from_secs(2);

impl Mesh {
    /// This device's link with every member, per database.
    pub async fn topology(&self) -> TopologyResult {
        let reports = self.driver.link_reports(ENGINE_WAIT).await;
        let traffic = &self.shared.traffic;
        let (flows, meter_ms) = (traffic.flows(), traffic.now_ms());
        let last_sync = self.driver.last_sync();
        let now = wall_ms();
        let view = self.membership();
        let mut dbs: BTreeMap<DeviceId, BTreeMap<String, DbLink>> = BTreeMap::new();
        for r in reports {
            let link = dbs.entry(r.peer).or_default().entry(r.db.clone());
            let d = link.or_insert_with(|| DbLink {
                db: r.db.clone(),
                ..DbLink::default()
            });
            d.sending = r.sending;
            d.taking = r.taking;
            d.e2e = r.sealed;
            d.lag_ops = r.lag_ops;
            d.lag_ms = r.lag_since.map(|t| now.saturating_sub(t));
        }
        for ((peer, db), f) in flows {
            let d = dbs
                .entry(peer)
                .or_default()
                .entry(db.clone())
                .or_insert_with(|| DbLink {
                    db,
                    ..DbLink::default()
                });
            d.ops_in = f.ops_in.total();
            d.ops_out = f.ops_out.total();
            d.bytes_in = f.bytes_in.total();
            d.bytes_out = f.bytes_out.total();
            d.ops_in_per_s = f.ops_in.rate(meter_ms);
            d.ops_out_per_s = f.ops_out.rate(meter_ms);
            d.bytes_in_per_s = f.bytes_in.rate(meter_ms);
            d.bytes_out_per_s = f.bytes_out.rate(meter_ms);
        }
        for ((peer, db), at) in last_sync {
            if let Some(d) = dbs.get_mut(&peer).and_then(|l| l.get_mut(&db)) {
                d.last_sync_ms = Some(at);
            }
        }
        let links = self
            .peers()
            .into_iter()
            .map(|p| {
                let device = p.record.device;
                let (state, via) = match p.reach {
                    Reach::Connected => (LinkState::Direct, None),
                    Reach::Relayed { via } => (LinkState::Relayed, Some(via)),
                    Reach::Removed => (LinkState::Removed, None),
                    Reach::Offline => (self.dialling(&device), None),
                };
                let (error, retry_in_ms) = match state {
                    LinkState::BackingOff => self.backoff(&device, now),
                    _ => (None, None),
                };
                LinkInfo {
                    device_id: device.to_string(),
                    name: p.record.name.clone(),
                    role: role_name(p.record.role).to_owned(),
                    state,
                    via,
                    error,
                    retry_in_ms,
                    address: p.address.map(|a| a.to_string()),
                    rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    databases: dbs
                        .remove(&device)
                        .map(|m| m.into_values().collect())
                        .unwrap_or_default(),
                }
            })
            .collect();
        TopologyResult {
            device_id: self.shared.me.to_string(),
            name: view
                .me
                .as_ref()
                .map_or_else(|| self.name().to_owned(), |r| r.name.clone()),
            role: role_name(self.role()).to_owned(),
            mesh: view.mesh.map(|(id, _)| id.to_hex()),
            at_ms: now,
            links,
            edges: self.edges(),
        }
    }

    /// The dial keys of a member: its signed addresses, and what mDNS
    /// heard.
    fn dial_keys(device: &DeviceId) -> [String; 2] {
        [device.to_base32(), mdns_dial_key(device)]
    }

    /// Whether a member without a session is being dialled, waiting after
    /// a failure, or neither.
    fn dialling(&self, device: &DeviceId) -> LinkState {
        let dials = lock(&self.shared.dials);
        let states: Vec<_> = Self::dial_keys(device)
            .iter()
            .filter_map(|k| dials.waiting(k))
            .collect();
        if states.iter().any(|(in_flight, _)| *in_flight) {
            LinkState::Connecting
        } else if states.iter().any(|(_, next)| next.is_some()) {
            LinkState::BackingOff
        } else {
            LinkState::Offline
        }
    }

    /// Why the last dial of a member failed, and when the next is due.
    fn backoff(&self, device: &DeviceId, now: u64) -> (Option<String>, Option<u64>) {
        let keys = Self::dial_keys(device);
        let next = {
            let dials = lock(&self.shared.dials);
            keys.iter()
                .filter_map(|k| dials.waiting(k).and_then(|(_, next)| next))
                .min()
        };
        let errors = lock(&self.shared.dial_errors);
        let error = keys.iter().find_map(|k| errors.get(k).cloned());
        (error, next.map(|t| t.saturating_sub(now)))
    }

    /// Sessions between other members that connected hubs report.
    fn edges(&self) -> Vec<Edge> {
        let me = self.shared.me;
        let sessions: BTreeSet<DeviceId> = lock(&self.shared.sessions).keys().copied().collect();
        lock(&self.shared.hub_links)
            .iter()
            .filter(|(hub, _)| sessions.contains(hub))
            .flat_map(|(hub, linked)| {
                linked.iter().filter(|d| **d != me).map(|d| Edge {
                    from: hub.to_string(),
                    to: d.to_string(),
                })
            })
            .collect()
    }
}
