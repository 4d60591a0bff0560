//! `blazectl peer add|list|remove`: addresses to dial always.

use clap::Subcommand;

use super::Opts;
use super::output::{print_json, print_table};
use crate::Client;

#[derive(Debug, Subcommand)]
pub(crate) enum PeerCommand {
    /// Dial this address always, whatever mDNS finds (a hub, a peer on
    /// another network).
    Add {
        /// `host:port`.
        addr: String,
    },
    /// List the addresses dialled always, with the device each leads to or
    /// why it cannot be reached.
    List,
    /// Stop dialling an address always.
    Remove {
        /// `host:port`, as `peer list` shows it.
        addr: String,
    },
}

pub(crate) async fn run(client: &Client, cmd: PeerCommand, opts: Opts) -> anyhow::Result<()> {
    match cmd {
        PeerCommand::Add { addr } => {
            let added = client.add_peer(&addr).await?;
            if opts.json {
                return print_json(&serde_json::json!({ "addr": addr, "added": added }));
            }
            if added {
                println!("will keep a link to {addr}");
            } else {
                println!("{addr} is already a static peer");
            }
        }
        PeerCommand::List => {
            let peers = client.static_peers().await?;
            if opts.json {
                return print_json(&serde_json::to_value(&peers)?);
            }
            let rows = peers
                .into_iter()
                .map(|p| {
                    vec![
                        p.addr,
                        p.state,
                        p.device_id.or(p.last_error).unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(&["ADDRESS", "STATE", "DEVICE OR LAST ERROR"], rows);
        }
        PeerCommand::Remove { addr } => {
            let removed = client.remove_peer(&addr).await?;
            if opts.json {
                return print_json(&serde_json::json!({ "addr": addr, "removed": removed }));
            }
            if !removed {
                anyhow::bail!("{addr} is not a static peer (see `blazectl peer list`)");
            }
            println!("no longer dialling {addr} always");
        }
    }
    Ok(())
}
