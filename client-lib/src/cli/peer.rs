//! `blazectl peer add HOST:PORT`: an address to dial always.

use clap::Subcommand;

use super::Opts;
use super::output::print_json;
use crate::Client;

#[derive(Debug, Subcommand)]
pub(crate) enum PeerCommand {
    /// Dial this address always, whatever mDNS finds (a hub, a peer on
    /// another network).
    Add {
        /// `host:port`.
        addr: String,
    },
}

pub(crate) async fn run(client: &Client, cmd: PeerCommand, opts: Opts) -> anyhow::Result<()> {
    match cmd {
        PeerCommand::Add { addr } => {
            client.add_peer(&addr).await?;
            if opts.json {
                return print_json(&serde_json::json!({ "added": addr }));
            }
            println!("will keep a link to {addr}");
        }
    }
    Ok(())
}
