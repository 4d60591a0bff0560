//! `--only metrics`: what counting metrics costs. Two pairs of agents,
//! one with metrics on (and `/metrics` scraped every second, as an open
//! dashboard or an eager Prometheus would) and one with `--no-metrics
//! --no-http`, measured in turn (the order swapped every round, and each
//! pair left to finish replicating before the other starts): single puts,
//! batched puts, and replication of batched puts to the pair's other
//! agent. Each figure is the median of the rounds' rates, with the CPU
//! both agents of the pair spent per operation beside it, which the
//! machine's noise moves less than a rate.

use std::time::{Duration, Instant};

use blazedb::Client;
use blazedb_tests::bench::{ROUNDS, batched_puts, cpu_seconds, median};
use blazedb_tests::{TestAgent, http, join_mesh};

/// One pair of agents in a mesh, and a task scraping the first's metrics.
struct Pair {
    agents: [TestAgent; 2],
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

impl Pair {
    async fn start(bin: &std::path::Path, metrics: bool) -> anyhow::Result<Pair> {
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
        Ok(Pair {
            agents: [a, b],
            writer,
            reader,
            scraper,
        })
    }

    fn cpu(&self) -> f64 {
        self.agents
            .iter()
            .filter_map(|a| cpu_seconds(a.pid()))
            .sum()
    }

    /// Waits until the reader holds all `n` operations of `db`.
    async fn replicated(&self, db: &str, n: usize) -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            let held = self
                .reader
                .databases()
                .await?
                .into_iter()
                .find(|d| d.name == db)
                .map_or(0, |d| d.ops_held);
            if held >= n as u64 {
                return Ok(());
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(120),
                "replication stalled at {held} of {n}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Writes `n` records, `batch` to a request, into a new database;
    /// returns the rate of the writes alone, or until the reader holds
    /// them all (`until_replicated`), and the pair's CPU per operation in
    /// microseconds (the replication counted in both cases).
    async fn round(
        &self,
        name: &str,
        n: usize,
        batch: usize,
        until_replicated: bool,
    ) -> anyhow::Result<(f64, f64)> {
        self.writer.db(name).create().await?;
        let cpu = self.cpu();
        let t = Instant::now();
        batched_puts(&self.writer, name, n, batch).await?;
        let mut elapsed = t.elapsed();
        self.replicated(name, n).await?;
        if until_replicated {
            elapsed = t.elapsed();
        }
        let per_op = (self.cpu() - cpu) / n as f64 * 1e6;
        Ok((n as f64 / elapsed.as_secs_f64(), per_op))
    }
}

pub(crate) async fn run(bin: &std::path::Path, puts: usize) -> anyhow::Result<()> {
    let pairs = [
        Pair::start(bin, true).await?,
        Pair::start(bin, false).await?,
    ];
    println!(
        "metrics on (scraped every second) vs --no-metrics --no-http, {ROUNDS} rounds in turn"
    );
    let cases = [
        ("single puts (4 in flight)", (puts / 10).max(1000), 1, false),
        ("batched puts (100 a commit)", puts, 100, false),
        ("replication to a peer", puts, 100, true),
    ];
    for (case, (what, n, batch, replicated)) in cases.into_iter().enumerate() {
        let mut rates = [Vec::new(), Vec::new()];
        let mut cpus = [Vec::new(), Vec::new()];
        for round in 0..ROUNDS {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for p in order {
                let db = format!("m{case}r{round}");
                let (rate, cpu) = pairs[p].round(&db, n, batch, replicated).await?;
                rates[p].push(rate);
                cpus[p].push(cpu);
            }
        }
        let [with, without] = rates.map(|mut r| median(&mut r));
        let [cpu_with, cpu_without] = cpus.map(|mut c| median(&mut c));
        println!(
            "  {what:<28} {with:>8.0} ops/s with, {without:>8.0} without: {:>5.1}%   \
             CPU {cpu_with:>5.1} µs/op with, {cpu_without:>5.1} without: {:>5.1}%",
            with / without * 100.0,
            cpu_with / cpu_without * 100.0
        );
    }
    Ok(())
}
