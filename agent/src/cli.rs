//! The `blazed` command line.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, Overrides};
use crate::service::notify;

/// The BlazeDB agent: owns this machine's databases and serves local apps.
#[derive(Debug, Parser)]
#[command(name = "blazed", version, about)]
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
}

/// Parses the command line, runs the agent, and returns its exit code.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::resolve(Overrides {
        data_dir: args.data_dir,
        socket: args.socket,
        config: args.config,
        max_frame: args.max_frame,
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("blazed: {e:#}");
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
            tracing::error!("{e:#}");
            eprintln!("blazed: {e:#}");
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
