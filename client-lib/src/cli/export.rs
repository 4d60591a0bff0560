//! `blazectl export DB [--collection C] > file.jsonl` and
//! `blazectl import DB < file.jsonl`: a database's records as JSON lines,
//! one record per line, `{"collection", "id", "fields"}`, with bytes,
//! UUIDs and timestamps in the typed forms `--json` prints, so importing
//! an export gives back the same values.

use std::io::{BufRead as _, Write as _};

use anyhow::Context as _;
use clap::Args;

use super::Opts;
use super::fields::from_json;
use super::output::value_json;
use crate::{Client, Value};

/// Writes per batch on import: large enough to amortise a commit, small
/// enough to stay far below the frame limit for ordinary records.
const IMPORT_BATCH: usize = 500;

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The database.
    db: String,
    /// Only this collection (every one when missing).
    #[arg(long)]
    collection: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The database (created if missing).
    db: String,
}

pub(crate) async fn export(client: &Client, a: ExportArgs, _opts: Opts) -> anyhow::Result<()> {
    let db = client.db(&a.db);
    let collections = match a.collection {
        Some(c) => vec![c],
        None => db
            .info()
            .await?
            .collections
            .into_iter()
            .map(|c| c.name)
            .collect(),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut n = 0u64;
    for c in &collections {
        for r in db.collection(c).query().fetch_all().await? {
            let line = serde_json::json!({
                "collection": c,
                "id": r.id,
                "fields": value_json(&Value::Map(r.fields)),
            });
            writeln!(out, "{line}")?;
            n += 1;
        }
    }
    out.flush()?;
    eprintln!("exported {n} records of {}", a.db);
    Ok(())
}

pub(crate) async fn import(client: &Client, a: ImportArgs, _opts: Opts) -> anyhow::Result<()> {
    let db = client.db(&a.db);
    db.create_if_missing().await?;
    let mut batch = db.batch();
    let (mut pending, mut n) = (0usize, 0u64);
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("cannot read standard input")?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("line {}", i + 1);
        let j: serde_json::Value = serde_json::from_str(&line).with_context(at)?;
        let text = |k: &str| {
            j.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("{}: no {k:?} string", at()))
        };
        let (collection, id) = (text("collection")?, text("id")?);
        let fields = match j
            .get("fields")
            .cloned()
            .map(from_json)
            .transpose()
            .with_context(at)?
        {
            Some(Value::Map(m)) => m,
            _ => anyhow::bail!("{}: \"fields\" must be an object", at()),
        };
        batch = batch.put(&collection, Some(&id), fields);
        pending += 1;
        if pending == IMPORT_BATCH {
            n += batch.commit().await.with_context(at)?.len() as u64;
            batch = db.batch();
            pending = 0;
        }
    }
    if pending > 0 {
        n += batch.commit().await?.len() as u64;
    }
    eprintln!("imported {n} records into {}", a.db);
    Ok(())
}
