//! `blazectl join CODE`: join the mesh of an invite made on another device.

use super::Opts;
use super::output::print_json;
use crate::Client;

#[derive(Debug, clap::Args)]
pub(crate) struct JoinArgs {
    /// The code `blazectl invite` printed.
    code: String,
}

pub(crate) async fn run(client: &Client, args: JoinArgs, opts: Opts) -> anyhow::Result<()> {
    let s = client.join(&args.code).await?;
    if opts.json {
        return print_json(&serde_json::to_value(&s)?);
    }
    if s.already_member {
        println!(
            "this device already is a member of mesh {}",
            s.mesh.as_deref().unwrap_or("?")
        );
    } else {
        println!("joined mesh {}", s.mesh.as_deref().unwrap_or("?"));
    }
    Ok(())
}
