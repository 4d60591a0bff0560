//! `--only metrics`: what counting metrics costs. Two pairs of agents,
//! one with metrics on (and `/metrics` scraped every second, as a
//! dashboard or an eager Prometheus would) and one with `--no-metrics
//! --no-http`, in turn: single puts, batched puts, and replication of
//! batched puts from one agent of a pair to the other.

use std::time::{Duration, Instant};

use blazedb::Client;
use blazedb_tests::bench::{alternating, batched_puts};
use blazedb_tests::{TestAgent, http, join_mesh};

/// One pair of agents in a mesh, and a task scraping the first's metrics.
struct Pair {
    _agents: [TestAgent; 2],
    writer: Client,
    reader: Client,
    scraper: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Some(s) = &self.scraper {
            s.abort();
        }
    }
}

async fn pair(bin: &std::path::Path, metrics: bool) -> anyhow::Result<Pair> {
    let args: &[&str] = if metrics {
        &[]
    } else {
        &["--no-metrics", "--no-http"]
    };
    let a = TestAgent::start_with(bin, args).await?;
    let b = TestAgent::start_with(bin, args).await?;
    let (writer, reader) = (a.client().await?, b.client().await?);
    join_mesh(&writer, &[&reader]).await?;
    let scraper = if metrics {
        let d = writer.dashboard().await?;
        Some(tokio::spawn(async move {
            loop {
                let _ = http::get(&d.metrics_url, Some(&d.metrics_token)).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    } else {
        None
    };
    writer.db("bench").create().await?;
    Ok(Pair {
        _agents: [a, b],
        writer,
        reader,
        scraper,
    })
}

/// Writes `n` records in batches of 100 on the pair's writer and waits
/// until the reader holds them all; returns operations replicated per
/// second, counted from the first write.
async fn replicate(p: &Pair, round: usize, n: usize) -> anyhow::Result<f64> {
    let db = format!("repl{round}");
    p.writer.db(&db).create().await?;
    let t = Instant::now();
    batched_puts(&p.writer, &db, n, 100).await?;
    loop {
        let held = p
            .reader
            .databases()
            .await?
            .into_iter()
            .find(|d| d.name == db)
            .map_or(0, |d| d.ops_held);
        if held >= n as u64 {
            return Ok(n as f64 / t.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(120),
            "replication stalled at {held} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) async fn run(bin: &std::path::Path, puts: usize) -> anyhow::Result<()> {
    let on = pair(bin, true).await?;
    let off = pair(bin, false).await?;
    println!("metrics on (scraped every second) vs --no-metrics --no-http, rounds in turn");
    let single = (puts / 10).max(1000);
    let (with, without) = alternating(
        async |_| batched_puts(&on.writer, "bench", single, 1).await,
        async |_| batched_puts(&off.writer, "bench", single, 1).await,
    )
    .await?;
    report("single puts (4 in flight)", with, without);
    let (with, without) = alternating(
        async |_| batched_puts(&on.writer, "bench", puts, 100).await,
        async |_| batched_puts(&off.writer, "bench", puts, 100).await,
    )
    .await?;
    report("batched puts (100 a commit)", with, without);
    let (with, without) = alternating(
        async |r| replicate(&on, r, puts).await,
        async |r| replicate(&off, r, puts).await,
    )
    .await?;
    report("replication to a peer", with, without);
    Ok(())
}

fn report(what: &str, with: f64, without: f64) {
    println!(
        "  {what:<30} {with:>10.0} ops/s with, {without:>10.0} without: {:>5.1}%",
        with / without * 100.0
    );
}
