//! `blazectl mesh status|create|remove`.

use clap::Subcommand;

use super::Opts;
use super::output::print_json;
use crate::Client;
use crate::api::MeshStatusResult;

#[derive(Debug, Subcommand)]
pub(crate) enum MeshCommand {
    /// Show this device's mesh: id, members, where it listens.
    Status,
    /// Create a mesh with this device as its first member.
    Create,
    /// Remove a device from the mesh, on every member: it is refused from
    /// then on and gets nothing new.
    Remove {
        /// The device's id, as `blazectl peers` shows it.
        device: String,
    },
}

fn print_status(s: &MeshStatusResult) {
    println!("device   {}", s.device_id);
    println!("name     {}", s.name);
    println!("role     {}", s.role);
    println!("mesh     {}", s.mesh.as_deref().unwrap_or("(none)"));
    println!("members  {}", s.members);
    println!("listen   {}", s.listen);
    println!("addrs    {}", s.addrs.join(" "));
    println!("mdns     {}", if s.mdns { "on" } else { "off" });
}

pub(crate) async fn run(client: &Client, cmd: MeshCommand, opts: Opts) -> anyhow::Result<()> {
    let s = match &cmd {
        MeshCommand::Status => client.mesh_status().await?,
        MeshCommand::Create => client.create_mesh().await?,
        MeshCommand::Remove { device } => client.remove_device(device).await?,
    };
    if opts.json {
        return print_json(&serde_json::to_value(&s)?);
    }
    match cmd {
        MeshCommand::Status => print_status(&s),
        MeshCommand::Create => {
            println!("created mesh {}", s.mesh.as_deref().unwrap_or("?"));
            println!("add devices with `blazectl invite` here and `blazectl join CODE` there");
        }
        MeshCommand::Remove { device } => println!("removed {device} from the mesh"),
    }
    Ok(())
}
