//! `blazectl watch`: prints changes as they happen, until interrupted.

use clap::Args;

use super::Opts;
use super::output::{change_json, value_json};
use crate::{ChangeKind, Client, Value};

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The database.
    db: String,
    /// Only this collection.
    #[arg(long)]
    collection: Option<String>,
    /// Replay every change after this cursor first.
    #[arg(long)]
    since: Option<u64>,
    /// The change log `--since` came from (printed with it): refuses a
    /// cursor the agent has since handed out again, after a crash or a
    /// restore, instead of resuming at the wrong change.
    #[arg(long, requires = "since")]
    log: Option<u64>,
}

pub(crate) async fn run(client: &Client, a: WatchArgs, opts: Opts) -> anyhow::Result<()> {
    let db = client.db(&a.db);
    let mut sub = match (a.since, a.log) {
        (Some(since), Some(log)) => db.resume(a.collection.as_deref(), since, log).await?,
        _ => db.subscribe_from(a.collection.as_deref(), a.since).await?,
    };
    if !opts.json {
        let (log, cursor) = sub.resume_point();
        eprintln!(
            "watching {} after cursor {cursor} of log {log} (ctrl-c to stop)",
            a.db
        );
    }
    while let Some(c) = sub.next().await {
        if opts.json {
            // One object per line, so other programs can read as it streams.
            println!("{}", change_json(&c));
        } else {
            let kind = match c.kind {
                ChangeKind::Put => "put",
                ChangeKind::Patch => "patch",
                ChangeKind::Delete => "delete",
                ChangeKind::Rejected => "rejected",
                ChangeKind::Evict => "evict",
            };
            let mut fields = value_json(&Value::Map(c.fields)).to_string();
            if !c.unset.is_empty() {
                fields.push_str(&format!(" unset {}", c.unset.join(",")));
            }
            if let Some(why) = &c.rejected {
                fields = format!("refused: {why}");
            }
            println!(
                "{:>8}  {kind:<6}  {}/{}  {fields}",
                c.cursor, c.collection, c.id
            );
        }
    }
    let (log, cursor) = sub.resume_point();
    anyhow::bail!("lost the connection to the agent (resume with --since {cursor} --log {log})")
}
