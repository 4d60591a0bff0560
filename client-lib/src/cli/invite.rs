//! `blazectl invite`: a code that lets another device join this mesh. The
//! code is alone on the last line, so scripts can take it with `tail -1`;
//! on a terminal a QR code of it comes first, for a phone's camera.

use std::io::IsTerminal as _;

use super::Opts;
use super::mesh::split_teams;
use super::output::print_json;
use crate::Client;
use crate::api::MeshInviteParams;

#[derive(Debug, clap::Args)]
pub(crate) struct InviteArgs {
    /// How long the code works, in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// How many devices may use it (0: any number until it expires).
    #[arg(long, default_value_t = 1)]
    uses: u32,
    /// The teams a device that joins with it belongs to, separated by
    /// commas.
    #[arg(long)]
    teams: Option<String>,
}

pub(crate) async fn run(client: &Client, args: InviteArgs, opts: Opts) -> anyhow::Result<()> {
    let r = client
        .invite_with(MeshInviteParams {
            ttl_secs: Some(args.ttl),
            uses: Some(args.uses),
            teams: args.teams.as_deref().map(split_teams).unwrap_or_default(),
        })
        .await?;
    if opts.json {
        return print_json(&serde_json::to_value(&r)?);
    }
    let uses = match r.uses {
        Some(1) => "one device".to_owned(),
        Some(n) => format!("{n} devices"),
        None => "any number of devices".to_owned(),
    };
    if std::io::stdout().is_terminal()
        && let Some(qr) = qr_text(&r.code)
    {
        println!("{qr}");
    }
    println!(
        "On the other device run `blazectl join CODE`. The code works for {} s, for {uses}:",
        args.ttl
    );
    println!("{}", r.code);
    Ok(())
}

/// The code as a QR code drawn with half blocks. Upper case, so that it
/// fits QR's compact alphanumeric mode; codes are read in either case.
fn qr_text(code: &str) -> Option<String> {
    let qr = qrcode::QrCode::new(code.to_uppercase().as_bytes()).ok()?;
    Some(
        qr.render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_code_fits_a_qr_a_terminal_can_show() {
        let code = format!("blz2-{}", "a".repeat(170));
        let qr = super::qr_text(&code).expect("encodes");
        let rows = qr.lines().count();
        let cols = qr.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(rows <= 40 && cols <= 80, "{rows} x {cols}");
    }
}
