//! `blazectl dashboard`: where the agent's dashboard and metrics are.

use super::Opts;
use super::output::print_json;
use crate::Client;

/// Options of `blazectl dashboard`.
#[derive(Debug, clap::Args)]
pub(crate) struct DashboardArgs {
    /// Print the address only; do not open a browser.
    #[arg(long)]
    no_open: bool,
    /// Print where Prometheus scrapes metrics, and the bearer token it
    /// sends, instead.
    #[arg(long)]
    metrics: bool,
}

pub(crate) async fn run(client: &Client, args: DashboardArgs, opts: Opts) -> anyhow::Result<()> {
    let d = client.dashboard().await?;
    if opts.json {
        return print_json(&serde_json::to_value(&d)?);
    }
    if args.metrics {
        println!("{}", d.metrics_url);
        println!("Authorization: Bearer {}", d.metrics_token);
        return Ok(());
    }
    println!("{}", d.url);
    if !args.no_open {
        open(&d.url);
    }
    Ok(())
}

/// Opens `url` in the desktop's browser, if there is a desktop: the
/// address is printed either way, for a machine reached over SSH.
fn open(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        Some("open")
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        Some("xdg-open")
    } else {
        None
    };
    let Some(opener) = opener else {
        return;
    };
    let spawned = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("could not open a browser ({opener}: {e}); open the address above");
    }
}
