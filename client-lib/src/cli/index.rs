//! `blazectl index create|drop`.

use clap::Subcommand;

use super::Opts;
use super::output::print_json;
use crate::Client;
use crate::api::{IndexCreate, IndexDrop, IndexParams};

#[derive(Debug, Subcommand)]
pub(crate) enum IndexCommand {
    /// Index a field so queries filtering on it need not scan.
    Create {
        /// The database.
        db: String,
        /// The collection.
        collection: String,
        /// The field.
        field: String,
    },
    /// Remove an index.
    Drop {
        /// The database.
        db: String,
        /// The collection.
        collection: String,
        /// The field.
        field: String,
    },
}

pub(crate) async fn run(client: &Client, cmd: IndexCommand, opts: Opts) -> anyhow::Result<()> {
    let (create, db, collection, field) = match cmd {
        IndexCommand::Create {
            db,
            collection,
            field,
        } => (true, db, collection, field),
        IndexCommand::Drop {
            db,
            collection,
            field,
        } => (false, db, collection, field),
    };
    let params = IndexParams {
        db,
        collection,
        field,
    };
    let changed = if create {
        client.call::<IndexCreate>(&params).await?.created
    } else {
        client.call::<IndexDrop>(&params).await?.dropped
    };
    if opts.json {
        return print_json(&serde_json::json!({ "changed": changed }));
    }
    let (c, f) = (&params.collection, &params.field);
    match (create, changed) {
        (true, true) => println!("created index on {c}.{f}"),
        (true, false) => println!("nothing to do: {c}.{f} is indexed already"),
        (false, true) => println!("dropped index on {c}.{f}"),
        (false, false) => println!("nothing to do: {c}.{f} has no index"),
    }
    Ok(())
}
