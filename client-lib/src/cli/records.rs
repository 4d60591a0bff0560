//! `blazectl put|get|patch|delete`.

use clap::Args;

use super::Opts;
use super::fields::parse_fields;
use super::output::{print_json, record_json, value_text};
use crate::api::{Put, PutParams};
use crate::{Client, WriteResult};

#[derive(Debug, Args)]
pub(crate) struct RecordArgs {
    /// The database.
    db: String,
    /// The collection.
    collection: String,
    /// The record id.
    id: String,
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// The database.
    db: String,
    /// The collection.
    collection: String,
    /// The record ids (several are read in one request).
    #[arg(required = true, num_args = 1..)]
    ids: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PutArgs {
    /// The database.
    db: String,
    /// The collection.
    collection: String,
    /// The record id (`-` lets the agent pick a UUID).
    id: String,
    /// Fields: `name=text`, `name:=json`, or one JSON object.
    fields: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PatchArgs {
    /// The database.
    db: String,
    /// The collection.
    collection: String,
    /// The record id.
    id: String,
    /// Fields to set: `name=text`, `name:=json`, or one JSON object.
    fields: Vec<String>,
    /// A field to remove (repeatable).
    #[arg(long, value_name = "FIELD")]
    unset: Vec<String>,
}

fn print_write(what: &str, r: &WriteResult, opts: Opts) -> anyhow::Result<()> {
    if opts.json {
        return print_json(&serde_json::to_value(r)?);
    }
    println!("{what} {} (seq {}, cursor {})", r.id, r.seq, r.cursor);
    Ok(())
}

pub(crate) async fn put(client: &Client, a: PutArgs, opts: Opts) -> anyhow::Result<()> {
    // `put db coll title=x` (the id forgotten) would make a record with id
    // `title=x` and no fields.
    anyhow::ensure!(
        !(a.fields.is_empty() && a.id.contains('=')),
        "{:?} looks like a field, not an id: write put {} {} ID {} (ID - lets the agent pick one)",
        a.id,
        a.db,
        a.collection,
        a.id
    );
    let params = PutParams {
        fields: parse_fields(&a.fields)?,
        // `-` lets the agent pick the id; the result says which.
        id: (a.id != "-").then_some(a.id),
        db: a.db,
        collection: a.collection,
    };
    let r = client.call::<Put>(&params).await?;
    print_write("put", &r, opts)
}

pub(crate) async fn get(client: &Client, a: GetArgs, opts: Opts) -> anyhow::Result<()> {
    let coll = client.db(&a.db).collection(&a.collection);
    let records = match a.ids.as_slice() {
        [id] => vec![coll.get_record(id).await?],
        ids => coll.get_many(ids).await?,
    };
    let missing: Vec<&str> = a
        .ids
        .iter()
        .zip(&records)
        .filter(|(_, r)| r.is_none())
        .map(|(id, _)| id.as_str())
        .collect();
    let json = |r: &Option<crate::Record>| r.as_ref().map_or(serde_json::Value::Null, record_json);
    if opts.json {
        // One id: the record (or `null`); several: an array in the order
        // asked. The exit code is the same as without `--json`.
        match records.as_slice() {
            [r] => print_json(&json(r))?,
            _ => print_json(&records.iter().map(json).collect())?,
        }
    } else {
        for (i, r) in records.iter().flatten().enumerate() {
            if i > 0 {
                println!();
            }
            let width = r.fields.keys().map(|k| k.len()).max().unwrap_or(0).max(2);
            println!("{:<width$}  {}", "id", r.id);
            for (k, v) in &r.fields {
                println!("{k:<width$}  {}", value_text(v));
            }
        }
    }
    match missing.as_slice() {
        [] => Ok(()),
        [id] => anyhow::bail!("no record {id} in {}/{}", a.db, a.collection),
        ids => anyhow::bail!("no records {} in {}/{}", ids.join(", "), a.db, a.collection),
    }
}

pub(crate) async fn patch(client: &Client, a: PatchArgs, opts: Opts) -> anyhow::Result<()> {
    let set = parse_fields(&a.fields)?;
    let unset: Vec<&str> = a.unset.iter().map(String::as_str).collect();
    let r = client
        .db(&a.db)
        .collection(&a.collection)
        .patch(&a.id, set, &unset)
        .await?;
    print_write("patched", &r, opts)
}

pub(crate) async fn delete(client: &Client, a: RecordArgs, opts: Opts) -> anyhow::Result<()> {
    let r = client
        .db(&a.db)
        .collection(&a.collection)
        .delete(&a.id)
        .await?;
    print_write("deleted", &r, opts)
}
