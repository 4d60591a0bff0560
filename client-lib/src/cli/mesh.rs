//! `blazectl mesh status|create|remove|leave|admin|device`.

use clap::Subcommand;

use super::Opts;
use super::output::{format_ms, print_json};
use crate::Client;
use crate::api::MeshStatusResult;

#[derive(Debug, Subcommand)]
pub(crate) enum MeshCommand {
    /// Show this device's mesh: id, admins, members, where it listens.
    Status,
    /// Create a mesh with this device as its first member and admin.
    Create,
    /// Remove a device from the mesh, on every member (admins only): it
    /// is told, refused from then on, and gets nothing new.
    Remove {
        /// The device: its id, 7 or more of its first characters, or its
        /// name.
        device: String,
    },
    /// Leave the mesh: the members are told, this device forgets the mesh
    /// and keeps its databases.
    Leave,
    /// Make a device an admin, or take that away (admins only).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Change a device's name or teams (admins only).
    Device {
        /// The device: its id, 7 or more of its first characters, or its
        /// name.
        device: String,
        #[command(subcommand)]
        action: DeviceAction,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Let a device sign member records: add, change and remove devices.
    Add {
        /// The device.
        device: String,
    },
    /// Take that away again.
    Remove {
        /// The device.
        device: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeviceAction {
    /// Set the name, the teams, or both.
    Set {
        /// The new name.
        #[arg(long)]
        name: Option<String>,
        /// The teams, separated by commas (replacing the old ones; an
        /// empty string for none).
        #[arg(long)]
        teams: Option<String>,
    },
}

/// Teams given as `a,b,c`.
pub(crate) fn split_teams(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn print_status(s: &MeshStatusResult) {
    println!("device   {}", s.device_id);
    println!("name     {}", s.name);
    println!(
        "role     {}{}",
        s.role,
        if s.admin { ", admin" } else { "" }
    );
    if !s.teams.is_empty() {
        println!("teams    {}", s.teams.join(","));
    }
    match (&s.mesh, &s.departed) {
        (Some(m), _) => println!("mesh     {m}"),
        (None, Some(d)) if d.left => println!(
            "mesh     (none: left mesh {} at {})",
            d.mesh,
            format_ms(d.at_ms)
        ),
        (None, Some(d)) => println!(
            "mesh     (none: removed from mesh {} by {} ({}) at {})",
            d.mesh,
            d.by.name,
            d.by.device_id,
            format_ms(d.at_ms)
        ),
        (None, None) => println!("mesh     (none)"),
    }
    if s.mesh.is_some() {
        let admins: Vec<String> = s
            .admins
            .iter()
            .map(|a| format!("{} ({})", a.name, a.device_id))
            .collect();
        println!("admins   {}", admins.join(", "));
        println!("members  {}", s.members);
    }
    println!("listen   {}", s.listen);
    println!("addrs    {}", s.addrs.join(" "));
    println!("mdns     {}", if s.mdns { "on" } else { "off" });
    for p in &s.static_peers {
        match (&p.device_id, &p.last_error) {
            (Some(d), _) => println!("peer     {} (connected to {d})", p.addr),
            (None, Some(e)) => println!("peer     {} (unreachable: {e})", p.addr),
            (None, None) => println!("peer     {} (not tried yet)", p.addr),
        }
    }
}

pub(crate) async fn run(client: &Client, cmd: MeshCommand, opts: Opts) -> anyhow::Result<()> {
    if let MeshCommand::Device { device, action } = &cmd {
        let DeviceAction::Set { name, teams } = action;
        if name.is_none() && teams.is_none() {
            anyhow::bail!("say what to set: --name NAME, --teams a,b or both");
        }
        let p = client
            .set_device(device, name.as_deref(), teams.as_deref().map(split_teams))
            .await?;
        if opts.json {
            return print_json(&serde_json::to_value(&p)?);
        }
        println!(
            "{} is now {:?}, teams {}",
            p.device_id,
            p.name,
            if p.teams.is_empty() {
                "(none)".to_owned()
            } else {
                p.teams.join(",")
            }
        );
        return Ok(());
    }
    let s = match &cmd {
        MeshCommand::Status => match client.mesh_status().await {
            Ok(s) => s,
            // The mesh is not running (its port was taken, or it is
            // turned off): still say who this device is, in the form
            // asked for, and fail.
            Err(crate::Error::Agent(e)) if opts.json => {
                print_json(&serde_json::json!({
                    "device_id": client.device_id(),
                    "mesh": null,
                    "error": e.message,
                }))?;
                anyhow::bail!("{}", e.message);
            }
            Err(e) => return Err(e.into()),
        },
        MeshCommand::Create => client.create_mesh().await?,
        MeshCommand::Remove { device } => client.remove_device(device).await?,
        MeshCommand::Leave => client.leave_mesh().await?,
        MeshCommand::Admin(AdminCommand::Add { device }) => client.set_admin(device, true).await?,
        MeshCommand::Admin(AdminCommand::Remove { device }) => {
            client.set_admin(device, false).await?
        }
        MeshCommand::Device { .. } => unreachable!("handled above"),
    };
    if opts.json {
        return print_json(&serde_json::to_value(&s)?);
    }
    match cmd {
        MeshCommand::Status => print_status(&s),
        MeshCommand::Create => {
            println!("created mesh {}", s.mesh.as_deref().unwrap_or("?"));
            println!("this device is its admin");
            println!("add devices with `blazectl invite` here and `blazectl join CODE` there");
        }
        MeshCommand::Remove { device } => println!(
            "removed {device} from the mesh; the mesh secret was replaced (epoch {})",
            s.key_epoch
        ),
        MeshCommand::Leave => println!("left the mesh; the databases stay on this device"),
        MeshCommand::Admin(AdminCommand::Add { device }) => println!("{device} is now an admin"),
        MeshCommand::Admin(AdminCommand::Remove { device }) => {
            println!("{device} is no longer an admin")
        }
        MeshCommand::Device { .. } => {}
    }
    Ok(())
}
