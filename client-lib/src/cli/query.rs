//! `blazectl query`.

use clap::Args;

use super::Opts;
use super::fields::parse_filter;
use super::output::{print_json, record_json, records_table};
use crate::{Client, FilterOp};

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
    // A quoted number compared by order (`priority>"3"`) is text, which
    // sorts after every number: said below if nothing matches.
    let mut quoted_numbers = Vec::new();
    for text in &a.filters {
        let f = parse_filter(text)?;
        let ordered = !matches!(f.op, FilterOp::Eq | FilterOp::Ne | FilterOp::Prefix);
        if ordered
            && f.value
                .as_str()
                .is_some_and(|v| v.trim().parse::<f64>().is_ok())
        {
            quoted_numbers.push(text.clone());
        }
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
    if records.is_empty() {
        for text in &quoted_numbers {
            eprintln!(
                "note: in {text:?} the value is quoted, so it is text and matches only text; \
                 leave the quotes out to compare with a number"
            );
        }
    }
    if let Some(c) = next {
        eprintln!("more: --cursor {c}");
    }
    Ok(())
}
