//! `blazectl status`: the agent, the mesh, its peers and every database's
//! sync in one view.

use std::fmt::Write as _;

use blazedb_proto::api::{DbInfo, MeshStatusResult, StatusResult};
use blazedb_proto::topology::{DashboardResult, TopologyResult};
use serde_json::json;

use super::Opts;
use super::output::{print_json, table};
use super::topology::{ago, direction, lag, per_s, span, state};
use crate::Client;

/// Everything `status` shows. What the connection may not see (an app's
/// view of the mesh), or what is not running, is `None`.
#[derive(Debug)]
pub(crate) struct StatusView {
    pub(crate) agent: StatusResult,
    pub(crate) mesh: Option<MeshStatusResult>,
    pub(crate) topology: Option<TopologyResult>,
    pub(crate) databases: Vec<DbInfo>,
    pub(crate) dashboard: Option<DashboardResult>,
}

pub(crate) async fn run(client: &Client, opts: Opts) -> anyhow::Result<()> {
    let view = StatusView {
        agent: client.status().await?,
        mesh: client.mesh_status().await.ok(),
        topology: client.topology().await.ok(),
        databases: client.databases().await?,
        dashboard: client.dashboard().await.ok(),
    };
    if opts.json {
        return print_json(&status_json(&view)?);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    print!("{}", status_text(&view, now));
    Ok(())
}

/// The dashboard's address without its token.
fn dashboard_addr(d: &DashboardResult) -> &str {
    d.url.split('?').next().unwrap_or(&d.url)
}

/// The status's own fields, then `mesh`, `peers` (this device's links),
/// `databases` and `dashboard`.
pub(crate) fn status_json(v: &StatusView) -> anyhow::Result<serde_json::Value> {
    let mut out = serde_json::to_value(&v.agent)?;
    if let Some(map) = out.as_object_mut() {
        map.insert("mesh".into(), serde_json::to_value(&v.mesh)?);
        map.insert(
            "peers".into(),
            serde_json::to_value(v.topology.as_ref().map(|t| &t.links))?,
        );
        map.insert("databases".into(), serde_json::to_value(&v.databases)?);
        map.insert(
            "dashboard".into(),
            json!(v.dashboard.as_ref().map(dashboard_addr)),
        );
    }
    Ok(out)
}

/// The view for people: a few lines on the agent and the mesh, then a
/// table of peers and one of databases.
pub(crate) fn status_text(v: &StatusView, now: u64) -> String {
    let a = &v.agent;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agent      {}, up {}, {} client(s), {} subscription(s)",
        a.agent,
        span(a.uptime_ms),
        a.connections,
        a.subscriptions
    );
    let _ = writeln!(out, "device     {}", a.device_id);
    match &v.mesh {
        Some(m) => {
            let _ = writeln!(
                out,
                "name       {} ({}{})",
                m.name,
                m.role,
                if m.admin { ", admin" } else { "" }
            );
            let _ = writeln!(
                out,
                "mesh       {}, {} other member(s), listening on {}{}",
                m.mesh
                    .as_deref()
                    .map_or("none (blazectl mesh create, or join)", |id| &id
                        [..id.len().min(12)]),
                m.members,
                m.listen,
                if m.mdns { ", mDNS on" } else { "" }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "mesh       not shown (not running, or not for this app)"
            );
        }
    }
    let _ = writeln!(out, "data       {}", a.data_dir);
    let _ = writeln!(out, "socket     {}", a.socket);
    if let Some(d) = &v.dashboard {
        let _ = writeln!(
            out,
            "dashboard  {} (blazectl dashboard opens it)",
            dashboard_addr(d)
        );
    }
    if let Some(why) = &a.store_failed {
        let _ = writeln!(
            out,
            "STORE      takes no writes, and sync stalls, until blazed restarts: {why}"
        );
    }
    if let Some(why) = &a.new_incarnation {
        let _ = writeln!(
            out,
            "writes     new incarnation {} at this start: {why}",
            a.incarnation
        );
    }
    for u in &a.unopened {
        let _ = writeln!(
            out,
            "{} {}/{} seq {}: did not open {} time(s): {}",
            if u.quarantined {
                "QUARANTINED"
            } else {
                "unopened   "
            },
            u.db,
            u.origin,
            u.seq,
            u.times,
            u.reason
        );
    }
    if let Some(t) = &v.topology
        && !t.links.is_empty()
    {
        out.push('\n');
        let rows = t
            .links
            .iter()
            .map(|l| {
                let sum = |f: fn(&blazedb_proto::topology::DbLink) -> f64| {
                    l.databases.iter().map(f).sum::<f64>()
                };
                let worst = l.databases.iter().max_by_key(|d| d.lag_ops.unwrap_or(0));
                vec![
                    l.name.clone(),
                    l.role.clone(),
                    state(l),
                    l.address.clone().unwrap_or_else(|| "-".into()),
                    l.rtt_ms.map_or("-".into(), |r| format!("{r:.1}ms")),
                    per_s(sum(|d| d.ops_in_per_s)),
                    per_s(sum(|d| d.ops_out_per_s)),
                    worst.map_or("-".into(), lag),
                    ago(l.databases.iter().filter_map(|d| d.last_sync_ms).max(), now),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "PEER",
                "ROLE",
                "STATE",
                "ADDRESS",
                "RTT",
                "IN OPS/S",
                "OUT OPS/S",
                "LAG",
                "LAST SYNC",
            ],
            rows,
        ));
    }
    if !v.databases.is_empty() {
        out.push('\n');
        let rows = v
            .databases
            .iter()
            .map(|d| {
                let links: Vec<_> = v
                    .topology
                    .iter()
                    .flat_map(|t| &t.links)
                    .flat_map(|l| {
                        l.databases
                            .iter()
                            .filter(|x| x.db == d.name)
                            .map(move |x| (l, x))
                    })
                    .collect();
                let peers: Vec<String> = links
                    .iter()
                    .map(|(l, x)| format!("{} {}", direction(x), l.name))
                    .collect();
                let max_lag = links.iter().max_by_key(|(_, x)| x.lag_ops.unwrap_or(0));
                vec![
                    d.name.clone(),
                    super::output::mode_word(d.settings.sync_mode).to_owned(),
                    d.settings.encryption.as_str().to_owned(),
                    d.head.to_string(),
                    d.ops_held.to_string(),
                    if peers.is_empty() {
                        "-".into()
                    } else {
                        peers.join(", ")
                    },
                    max_lag.map_or("-".into(), |(_, x)| lag(x)),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "DATABASE",
                "MODE",
                "ENCRYPTION",
                "HEAD",
                "OPS HELD",
                "PEERS",
                "MAX LAG",
            ],
            rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use blazedb_proto::api::{DbSettings, Encryption, SyncMode};

    fn sample() -> StatusView {
        let topology = super::super::topology::tests::sample();
        StatusView {
            agent: StatusResult {
                agent: "blazed 0.1.0".into(),
                device_id: topology.device_id.clone(),
                data_dir: "/var/lib/blazed".into(),
                socket: "/run/blazed/blazed.sock".into(),
                uptime_ms: 93_000,
                databases: 2,
                connections: 1,
                subscriptions: 0,
                unopened: Vec::new(),
                incarnation: 0,
                new_incarnation: None,
                store_failed: None,
            },
            mesh: Some(MeshStatusResult {
                device_id: topology.device_id.clone(),
                name: "hub1".into(),
                role: "hub".into(),
                mesh: Some("0123456789abcdef".into()),
                listen: "0.0.0.0:7340".into(),
                addrs: vec!["192.0.2.1:7340".into()],
                mdns: false,
                members: 2,
                admin: true,
                teams: Vec::new(),
                admins: Vec::new(),
                key_epoch: 1,
                departed: None,
                static_peers: Vec::new(),
                already_member: false,
            }),
            databases: vec![
                DbInfo {
                    name: "notes".into(),
                    settings: DbSettings::default(),
                    collections: Vec::new(),
                    head: 1225,
                    key_epoch: None,
                    ops_held: 1225,
                    peers: None,
                    log: 7,
                },
                DbInfo {
                    name: "secrets".into(),
                    settings: DbSettings {
                        sync_mode: SyncMode::Pull,
                        encryption: Encryption::E2e,
                        ..DbSettings::default()
                    },
                    collections: Vec::new(),
                    head: 0,
                    key_epoch: None,
                    ops_held: 40,
                    peers: None,
                    log: 9,
                },
            ],
            topology: Some(topology),
            dashboard: Some(DashboardResult {
                url: "http://127.0.0.1:7341/?token=SECRET".into(),
                metrics_url: "http://127.0.0.1:7341/metrics".into(),
                metrics_token: "SECRET2".into(),
            }),
        }
    }

    #[test]
    fn status_text_snapshot() {
        insta::assert_snapshot!(status_text(&sample(), 1_764_745_200_000));
    }

    #[test]
    fn a_new_write_incarnation_is_shown_with_why() {
        let mut v = sample();
        assert!(!status_text(&v, 0).contains("incarnation"));
        v.agent.incarnation = 77;
        v.agent.new_incarnation = Some("the agent did not stop cleanly last time".into());
        let text = status_text(&v, 0);
        assert!(
            text.contains(
                "writes     new incarnation 77 at this start: the agent did not stop cleanly"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_failed_store_is_shown_with_why() {
        let mut v = sample();
        assert!(!status_text(&v, 0).contains("STORE"));
        v.agent.store_failed = Some("syncing the journal failed: I/O error".into());
        let text = status_text(&v, 0);
        assert!(
            text.contains(
                "STORE      takes no writes, and sync stalls, until blazed restarts: syncing the \
                 journal failed: I/O error"
            ),
            "{text}"
        );
    }

    #[test]
    fn status_json_snapshot() {
        let v = status_json(&sample()).expect("json");
        assert!(!v.to_string().contains("SECRET"), "no token in status");
        insta::assert_json_snapshot!(v);
    }
}
