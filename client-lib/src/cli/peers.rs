//! `blazectl peers`: the mesh's members with their links.

use super::Opts;
use super::output::{print_json, print_table};
use crate::Client;

fn ago(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{:.1}s ago", now.saturating_sub(ms) as f64 / 1000.0)
}

pub(crate) async fn run(client: &Client, opts: Opts) -> anyhow::Result<()> {
    let peers = client.peers().await?;
    if opts.json {
        return print_json(&serde_json::to_value(&peers)?);
    }
    let rows = peers
        .iter()
        .map(|p| {
            vec![
                p.device_id.clone(),
                p.name.clone(),
                if p.admin {
                    format!("{}, admin", p.role)
                } else {
                    p.role.clone()
                },
                p.teams.join(","),
                match &p.via {
                    Some(hub) => format!("relayed via {hub}"),
                    None => p.state.clone(),
                },
                p.address.clone().unwrap_or_else(|| "-".into()),
                p.rtt_ms.map_or("-".into(), |r| format!("{r:.2}ms")),
                ago(p.last_sync_ms),
            ]
        })
        .collect();
    print_table(
        &[
            "DEVICE",
            "NAME",
            "ROLE",
            "TEAMS",
            "STATE",
            "ADDRESS",
            "RTT",
            "LAST SYNC",
        ],
        rows,
    );
    for p in &peers {
        if let Some(w) = &p.warning {
            eprintln!("warning: {} ({}) {w}", p.device_id, p.name);
        }
    }
    Ok(())
}
