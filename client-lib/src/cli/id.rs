//! `blazectl id`: this device's id, to read aloud and compare.

use super::Opts;
use super::output::print_json;
use crate::Client;

/// Prints the id the agent gave at the handshake: it is known whether or
/// not the mesh runs.
pub(crate) async fn run(client: &Client, opts: Opts) -> anyhow::Result<()> {
    if opts.json {
        return print_json(&serde_json::json!({ "device_id": client.device_id() }));
    }
    println!("{}", client.device_id());
    Ok(())
}
