//! `blazectl query`.

use clap::Args;

use super::Opts;
use super::fields::parse_filter;
use super::output::{print_json, record_json, records_table};
use crate::Client;

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The database.
    db: String,
    /// The collection.
    collection: String,
    /// A condition, e.g. 'priority>3', 'status=open', 'title prefix Fix'
    /// (repeatable; all must hold).
    #[arg(long = "where", short = 'w', value_name = "EXPR")]
    filters: Vec<String>,
    /// Sort by this field (default: by id).
    #[arg(long)]
    order_by: Option<String>,
    /// Sort descending.
    #[arg(long)]
    desc: bool,
    /// Records per page.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Continue after the page that printed this cursor.
    #[arg(long)]
    cursor: Option<String>,
    /// Fetch every page.
    #[arg(long)]
    all: bool,
}

pub(crate) async fn run(client: &Client, a: QueryArgs, opts: Opts) -> anyhow::Result<()> {
    let mut q = client
        .db(&a.db)
        .collection(&a.collection)
        .query()
        .limit(a.limit);
    for f in &a.filters {
        let f = parse_filter(f)?;
        q = q.filter(&f.field, f.op, f.value);
    }
    if let Some(o) = &a.order_by {
        q = q.order_by(o);
    }
    if a.desc {
        q = q.desc();
    }
    if let Some(c) = a.cursor {
        q = q.after(c);
    }
    let (records, next) = if a.all {
        (q.fetch_all().await?, None)
    } else {
        let page = q.fetch().await?;
        (page.records, page.next_cursor)
    };
    if opts.json {
        return print_json(&serde_json::json!({
            "records": records.iter().map(record_json).collect::<Vec<_>>(),
            "next_cursor": next,
        }));
    }
    print!("{}", records_table(&records));
    if let Some(c) = next {
        eprintln!("more: --cursor {c}");
    }
    Ok(())
}
