//! `blazectl`, the command line client: one module per verb, all built on
//! the client crate.

mod app;
mod completions;
mod dashboard;
mod db;
mod export;
pub mod fields;
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
mod topology;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{Client, ErrorCode, Login, OWNER_TOKEN_FILE, default_data_dir};

/// Talk to the local BlazeDB agent.
#[derive(Debug, Parser)]
#[command(
    name = "blazectl",
    version,
    about = "blazectl: read, write and watch BlazeDB databases, and run the mesh, \
             through the local blazed agent",
    after_help = "Each command takes --json for output programs read. The agent's socket \
                  is found on its own; set BLAZED_SOCKET or --socket to use another."
)]
pub struct Cli {
    /// The agent's socket (default: $BLAZED_SOCKET, then the runtime directory).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The owner token's file, for an agent that asks for tokens
    /// (default: owner.token in the default data directory, tried when
    /// the agent refuses a connection without it).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "BLAZEDB_OWNER_TOKEN_FILE"
    )]
    owner_token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the agent, the mesh, its peers and every database's sync.
    Status,
    /// Local apps and what each may read and write.
    #[command(subcommand)]
    App(app::AppCommand),
    /// Create, list and drop databases.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Add or remove secondary indexes.
    #[command(subcommand)]
    Index(index::IndexCommand),
    /// Write a whole record: `put DB COLLECTION ID title=Fix priority:=5`
    /// (ID `-` lets the agent pick one).
    Put(records::PutArgs),
    /// Read a record, or several in one request: `get DB COLLECTION ID...`.
    Get(records::GetArgs),
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
    /// This device's links, per database, with rates and lag; `--dot`
    /// for Graphviz.
    Topology(topology::TopologyArgs),
    /// Print the local dashboard's address and open it in a browser.
    Dashboard(dashboard::DashboardArgs),
    /// Print shell completions: `blazectl completions bash >
    /// ~/.local/share/bash-completion/completions/blazectl`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `blazectl man > blazectl.1`.
    Man,
    /// Write a database's records as JSON lines: `export DB > backup.jsonl`.
    Export(export::ExportArgs),
    /// Put records from JSON lines (as `export` writes them) into a
    /// database: `import DB < backup.jsonl`.
    Import(export::ImportArgs),
}

/// Global options every verb sees.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opts {
    pub(crate) json: bool,
}

/// Runs `blazectl` with the process's arguments.
pub fn main() -> ExitCode {
    die_quietly_on_closed_stdout();
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
            eprintln!("blazectl: {}", blazedb_proto::error::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Makes a write to a closed pipe end the process as it ends `cat` or
/// `ls` (`blazectl db list | head`), instead of failing the write, which
/// `println!` turns into a panic. Rust starts programs with `SIGPIPE`
/// ignored; this puts back the default.
fn die_quietly_on_closed_stdout() {
    // SAFETY: called first thing in `main`, before any other thread
    // exists; setting a signal's disposition to its default has no
    // further preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Connects as the app in `BLAZEDB_APP` if set, else as the owner: with
/// the owner token from `token_file` if given, else without a token, and
/// with the default data directory's owner token if the agent asks for
/// one.
async fn connect(socket: &Path, token_file: Option<PathBuf>) -> anyhow::Result<Client> {
    let login = Login::from_env("blazectl");
    if login.app.is_some() {
        return Ok(Client::connect_with(socket, login).await?);
    }
    let read_token = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .with_context(|| format!("cannot read the owner token from {}", path.display()))
    };
    if let Some(path) = token_file {
        let token = Some(read_token(&path)?);
        return Ok(Client::connect_with(socket, Login { token, ..login }).await?);
    }
    match Client::connect_with(socket, login.clone()).await {
        Err(e) if e.code() == Some(ErrorCode::PermissionDenied) => {
            let path = default_data_dir().join(OWNER_TOKEN_FILE);
            match read_token(&path) {
                Ok(token) => Ok(Client::connect_with(
                    socket,
                    Login {
                        token: Some(token),
                        ..login
                    },
                )
                .await?),
                Err(_) => Err(e.into()),
            }
        }
        other => Ok(other?),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Completions { shell } => return completions::completions(shell),
        Command::Man => return completions::man(),
        _ => {}
    }
    let socket = crate::resolve_socket(cli.socket);
    let client = connect(&socket, cli.owner_token_file).await?;
    let opts = Opts { json: cli.json };
    match cli.command {
        Command::Status => status::run(&client, opts).await,
        Command::App(c) => app::run(&client, c, opts).await,
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
        Command::Topology(a) => topology::run(&client, a, opts).await,
        Command::Dashboard(a) => dashboard::run(&client, a, opts).await,
        Command::Export(a) => export::export(&client, a, opts).await,
        Command::Import(a) => export::import(&client, a, opts).await,
        Command::Completions { .. } | Command::Man => unreachable!("handled before connecting"),
    }
}
