//! The `blazed` command line: with no subcommand it runs the agent;
//! `install-service` and `uninstall-service` manage it as a service.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use blazedb_proto::error::one_line;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, Overrides};
use crate::service::{self, Change, Manager, Removal, Scope, Target, notify};

/// The BlazeDB agent: owns this machine's databases and serves local apps.
#[derive(Debug, Parser)]
#[command(
    name = "blazed",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Where databases and the device key live.
    #[arg(long, env = "BLAZED_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The Unix socket local apps connect to.
    #[arg(long, env = "BLAZED_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// A TOML config file (default: blazed.toml in the config directory).
    #[arg(long, env = "BLAZED_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The largest IPC frame accepted, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_frame: Option<u32>,
    /// `device`, or `hub`: an always-on relay reachable by address.
    #[arg(long, value_enum, value_name = "ROLE")]
    pub role: Option<RoleArg>,
    /// Where the mesh listens (UDP), `ip:port` (default 0.0.0.0:7340).
    #[arg(long, env = "BLAZED_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Do not announce or look for peers with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Announce and look for peers with mDNS on loopback only (several
    /// agents on one host).
    #[arg(long, hide = true)]
    pub mdns_loopback: bool,
    /// How many operations of an end-to-end encrypted database a key
    /// holder writes or takes before handing a blind hub a new sealed
    /// checkpoint (default 10000).
    #[arg(long, value_name = "OPS")]
    pub checkpoint_ops: Option<u64>,
    /// Serve processes of the agent's own user only with a token: the
    /// owner token (in the data directory, read by blazectl) or an app's.
    #[arg(long)]
    pub require_app_tokens: bool,
    /// Let members of this group reach the socket (directory 0750, socket
    /// 0660), for a system agent serving apps of several users; each
    /// user's apps still need a token bound to their uid.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// This device's name, shown to other members (default: host name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Where to serve the dashboard and Prometheus metrics, `ip:port` on
    /// loopback (default 127.0.0.1:7341).
    #[arg(long, env = "BLAZED_HTTP", value_name = "ADDR")]
    pub http: Option<String>,
    /// Do not serve the dashboard and metrics.
    #[arg(long)]
    pub no_http: bool,
    /// Do not count metrics (the dashboard then shows no rates).
    #[arg(long)]
    pub no_metrics: bool,
    /// An address to dial always, `host:port` (repeatable): a hub, a peer
    /// mDNS does not reach.
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<String>,
    /// An address to tell other members instead of this device's own,
    /// `host:port` (repeatable): for port forwarding or NAT.
    #[arg(long = "announce", value_name = "ADDR")]
    pub announce: Vec<String>,
    /// Something other than running the agent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Installs blazed as a service that starts at login (--user, the
    /// default) or at boot (--system), enables it and starts it.
    InstallService(InstallArgs),
    /// Stops and disables the service and removes its unit or plist.
    UninstallService(ServiceArgs),
    /// Looks for damaged files in a stopped agent's store by reading every
    /// entry; with --rebuild, keeps what can be read of a damaged database
    /// and takes the rest back from peers. Exits with 1 while damage is
    /// left.
    Repair(RepairArgs),
}

/// `repair`'s arguments.
#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    /// The agent's data directory (default: as for the agent).
    #[arg(long, env = "BLAZED_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A TOML config file naming the data directory.
    #[arg(long, env = "BLAZED_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Rebuild damaged databases: indexes from the records; records and
    /// change log from what can still be read, and the rest from peers.
    #[arg(long)]
    pub rebuild: bool,
    /// Move the whole store aside (for a store that cannot be opened):
    /// the next start begins empty and takes every synced database back
    /// from peers.
    #[arg(long, conflicts_with = "rebuild")]
    pub set_aside: bool,
}

/// Which service `install-service` and `uninstall-service` act on.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// This user's agent, started at login by the user's service manager
    /// (the default).
    #[arg(long, conflicts_with = "system")]
    pub user: bool,
    /// One user's agent started at boot by the system's service manager
    /// (systemd only; needs root).
    #[arg(long)]
    pub system: bool,
    /// The user a --system service runs as (default: $SUDO_USER, else the
    /// current user).
    #[arg(long = "for", value_name = "USER", requires = "system")]
    pub for_user: Option<String>,
    /// Write into this directory tree as if it were `/`, and leave the
    /// service manager alone.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// The service manager to write for (default: this platform's; another
    /// only with --root).
    #[arg(long, value_enum, requires = "root")]
    pub manager: Option<ManagerArg>,
}

/// `install-service`'s arguments.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Which service.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The blazed binary the service runs (default: this one).
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
}

/// A role, as named on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// An ordinary device.
    Device,
    /// An always-on relay.
    Hub,
}

/// A service manager, as named on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ManagerArg {
    /// systemd (Linux).
    Systemd,
    /// launchd (macOS).
    Launchd,
}

/// Parses the command line, runs the agent, and returns its exit code.
pub fn main() -> ExitCode {
    crate::huge_pages::disable();
    let args = Args::parse();
    match args.command {
        None => {}
        Some(Command::InstallService(a)) => return exit(install_service(a)),
        Some(Command::UninstallService(a)) => return exit(uninstall_service(a)),
        Some(Command::Repair(a)) => return repair(a),
    }
    let config = match Config::resolve(Overrides {
        data_dir: args.data_dir,
        socket: args.socket,
        config: args.config,
        max_frame: args.max_frame,
        role: args.role.map(|r| match r {
            RoleArg::Device => blazedb_proto::mesh::Role::Device,
            RoleArg::Hub => blazedb_proto::mesh::Role::Hub,
        }),
        listen: args.listen,
        no_mdns: args.no_mdns,
        mdns_loopback: args.mdns_loopback,
        checkpoint_ops: args.checkpoint_ops,
        require_app_tokens: args.require_app_tokens,
        socket_group: args.socket_group,
        name: args.name,
        peers: args.peers,
        announce: args.announce,
        http: args.http,
        no_http: args.no_http,
        no_metrics: args.no_metrics,
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("blazed: {}", one_line(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    init_logging(config.log.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("blazed")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("blazed: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        shutdown_signal().await;
        notify::stopping();
    };
    match runtime.block_on(crate::agent::run(config, shutdown, notify::ready)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logs go to stderr too: one line there, not a log line and
            // this.
            eprintln!("blazed: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(file_filter: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(file_filter.unwrap_or(DEFAULT_LOG_FILTER)))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if notify::under_systemd() {
        // The journal stamps every line itself.
        logs.without_time().init();
    } else {
        logs.init();
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blazed: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn repair(args: RepairArgs) -> ExitCode {
    let config = match Config::resolve(Overrides {
        data_dir: args.data_dir,
        config: args.config,
        ..Overrides::default()
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("blazed: {}", one_line(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    let mode = if args.set_aside {
        crate::repair::Mode::SetAside
    } else if args.rebuild {
        crate::repair::Mode::Rebuild
    } else {
        crate::repair::Mode::Check
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("blazed: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::repair::run(&config.data_dir, mode)) {
        Ok(crate::repair::Outcome::Sound) => ExitCode::SUCCESS,
        Ok(crate::repair::Outcome::Damaged) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("blazed: {}", one_line(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn install_service(args: InstallArgs) -> anyhow::Result<()> {
    let target = service_target(&args.service)?;
    let bin = match args.bin {
        Some(bin) => std::path::absolute(&bin)?,
        None => std::env::current_exe()?.canonicalize()?,
    };
    let (path, change) = service::install(&target, &bin)?;
    let what = match change {
        Change::Created => "wrote",
        Change::Updated => "updated",
        Change::Unchanged => "unchanged:",
    };
    println!("{what} {}", path.display());
    service::start(&target, change)?;
    if target.root.is_none() {
        println!("the service is enabled and running");
    }
    Ok(())
}

fn uninstall_service(args: ServiceArgs) -> anyhow::Result<()> {
    let target = service_target(&args)?;
    let (path, removal) = service::uninstall(&target)?;
    match removal {
        Removal::Removed => println!("removed {}", path.display()),
        Removal::KeptForOthers => println!(
            "stopped and disabled; kept {}, which other users' services still use",
            path.display()
        ),
        Removal::Absent => println!("not installed: {} does not exist", path.display()),
    }
    Ok(())
}

fn service_target(args: &ServiceArgs) -> anyhow::Result<Target> {
    let scope = if args.system {
        let user = args
            .for_user
            .clone()
            .or_else(|| ["SUDO_USER", "USER", "LOGNAME"].iter().find_map(env_text))
            .ok_or_else(|| {
                anyhow::anyhow!("cannot tell which user to run as: name one with --for")
            })?;
        Scope::System { user }
    } else {
        Scope::User
    };
    let manager = match args.manager {
        None => Manager::native(),
        Some(ManagerArg::Systemd) => Manager::Systemd,
        Some(ManagerArg::Launchd) => Manager::Launchd,
    };
    let home = directories::BaseDirs::new()
        .map(|d| d.home_dir().to_path_buf())
        .ok_or_else(|| anyhow::anyhow!("cannot find the home directory: set HOME"))?;
    let root = match &args.root {
        Some(root) => Some(std::path::absolute(root)?),
        None => None,
    };
    Ok(Target {
        manager,
        scope,
        home,
        root,
    })
}

fn env_text(name: &&str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop blazed with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Our own logs at info; the storage engine's only when they matter.
const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn";
