//! `blazectl id`: this device's id, to read aloud and compare.

use super::Opts;
use super::output::print_json;
use crate::Client;

pub(crate) async fn run(client: &Client, opts: Opts) -> anyhow::Result<()> {
    let s = client.mesh_status().await?;
    if opts.json {
        return print_json(&serde_json::to_value(&s)?);
    }
    println!("{}", s.device_id);
    Ok(())
}
