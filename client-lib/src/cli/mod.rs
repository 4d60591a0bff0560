//! `blazectl`, the command line client: one module per verb, all built on
//! the client crate.

mod db;
mod fields;
mod id;
mod index;
mod invite;
mod join;
mod mesh;
mod output;
mod peer;
mod peers;
mod query;
mod records;
mod rules;
mod status;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::Client;

/// Talk to the local BlazeDB agent.
#[derive(Debug, Parser)]
#[command(name = "blazectl", version, about)]
pub struct Cli {
    /// The agent's socket (default: $BLAZED_SOCKET, then the runtime directory).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the agent's status.
    Status,
    /// Create, list and drop databases.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Add or remove secondary indexes.
    #[command(subcommand)]
    Index(index::IndexCommand),
    /// Write a whole record: `put DB COLLECTION ID title=Fix priority:=5`
    /// (ID `-` lets the agent pick one).
    Put(records::PutArgs),
    /// Read a record.
    Get(records::RecordArgs),
    /// Change some fields of a record: `patch DB COLLECTION ID status=done`.
    Patch(records::PatchArgs),
    /// Delete a record.
    Delete(records::RecordArgs),
    /// Find records: `query DB COLLECTION --where 'priority>3'`.
    Query(query::QueryArgs),
    /// Stream changes until interrupted.
    Watch(watch::WatchArgs),
    /// Print this device's id, to read aloud and compare.
    Id,
    /// Create a mesh, show it, leave it; admins add and remove devices.
    #[command(subcommand)]
    Mesh(mesh::MeshCommand),
    /// Make a code that lets another device join this mesh.
    Invite(invite::InviteArgs),
    /// Join the mesh of a code made by `blazectl invite` on another device.
    Join(join::JoinArgs),
    /// List the mesh's members with state, address, RTT and last sync.
    Peers,
    /// Add, list and remove addresses to dial always.
    #[command(subcommand)]
    Peer(peer::PeerCommand),
}

/// Global options every verb sees.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opts {
    pub(crate) json: bool,
}

/// Runs `blazectl` with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("blazectl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blazectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = crate::resolve_socket(cli.socket);
    let client = Client::connect_as(&socket, "blazectl").await?;
    let opts = Opts { json: cli.json };
    match cli.command {
        Command::Status => status::run(&client, opts).await,
        Command::Db(c) => db::run(&client, c, opts).await,
        Command::Index(c) => index::run(&client, c, opts).await,
        Command::Put(a) => records::put(&client, a, opts).await,
        Command::Get(a) => records::get(&client, a, opts).await,
        Command::Patch(a) => records::patch(&client, a, opts).await,
        Command::Delete(a) => records::delete(&client, a, opts).await,
        Command::Query(a) => query::run(&client, a, opts).await,
        Command::Watch(a) => watch::run(&client, a, opts).await,
        Command::Id => id::run(&client, opts).await,
        Command::Mesh(c) => mesh::run(&client, c, opts).await,
        Command::Invite(a) => invite::run(&client, a, opts).await,
        Command::Join(a) => join::run(&client, a, opts).await,
        Command::Peers => peers::run(&client, opts).await,
        Command::Peer(c) => peer::run(&client, c, opts).await,
    }
}
