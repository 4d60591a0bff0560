//! The same hub with real device agents, each its own process, for mesh
//! sizes small enough to run here: how many links each device keeps, and
//! what one write costs the whole mesh in CPU as the mesh grows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use blazedb::Client;
use blazedb_tests::bench::{Samples, cpu_seconds};
use blazedb_tests::{TestAgent, connected, sibling_bin, wait_within};

use super::DB;

/// How long anything that should happen may take.
const PATIENCE: Duration = Duration::from_secs(120);

/// What one mesh size measured.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Row {
    /// Device agents besides the hub.
    pub(crate) n: usize,
    /// Time for all of them to join at once, in seconds.
    pub(crate) join_s: f64,
    /// Joins that failed.
    pub(crate) join_failed: usize,
    /// The most links any device keeps.
    pub(crate) links_max: usize,
    /// Links per device on average.
    pub(crate) links_mean: f64,
    /// One write on one device until each other device's change event.
    pub fanout_p50_ms: f64,
    /// The same, 99th percentile.
    pub fanout_p99_ms: f64,
    /// CPU of every agent together per write, above idle, in ms.
    pub(crate) mesh_cpu_ms_per_write: f64,
}

/// Every agent's CPU time so far, in seconds.
fn mesh_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(Some(*p))).sum()
}

async fn links(cl: &Client) -> usize {
    cl.peers()
        .await
        .map_or(0, |ps| ps.iter().filter(|p| p.state == "connected").count())
}

/// Runs a hub and `n` device agents and measures them.
pub(crate) async fn run(n: usize, rounds: usize, writes: usize) -> anyhow::Result<Row> {
    let bin = sibling_bin("blazed-test-agent");
    let hub = TestAgent::start_with(&bin, &["--role", "hub", "--name", "hub"]).await?;
    let h = hub.client().await?;
    h.create_mesh().await?;
    h.db(DB).create().await?;
    let code = h.invite(Some(3600), Some(0)).await?.code;
    let mut agents = Vec::new();
    let mut clients = Vec::new();
    for i in 0..n {
        let a = TestAgent::start_with(&bin, &["--name", &format!("dev{i}")]).await?;
        clients.push(a.client().await?);
        agents.push(a);
    }
    let mut pids: Vec<u32> = agents.iter().filter_map(TestAgent::pid).collect();
    pids.extend(hub.pid());

    let start = Instant::now();
    let mut joins = tokio::task::JoinSet::new();
    for cl in &clients {
        let (cl, code) = (cl.clone(), code.clone());
        joins.spawn(async move { cl.join(&code).await });
    }
    let mut join_failed = 0;
    while let Some(r) = joins.join_next().await {
        if !matches!(r, Ok(Ok(_))) {
            join_failed += 1;
        }
    }
    let join_s = start.elapsed().as_secs_f64();
    wait_within("the hub to link every device", PATIENCE, || {
        connected(&h, n - join_failed)
    })
    .await?;
    for cl in &clients {
        wait_within("the database to reach every device", PATIENCE, || async {
            cl.databases()
                .await
                .is_ok_and(|dbs| dbs.iter().any(|d| d.name == DB))
        })
        .await?;
    }

    // Every device counts the changes it sees and notes the probe's.
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let (probe_tx, mut probes) = tokio::sync::mpsc::unbounded_channel::<(usize, String, Instant)>();
    for (i, cl) in clients.iter().enumerate() {
        let mut sub = cl.db(DB).subscribe().await?;
        let (seen, probe_tx) = (seen.clone(), probe_tx.clone());
        tokio::spawn(async move {
            while let Some(c) = sub.next().await {
                seen[i].fetch_add(1, Ordering::Relaxed);
                if c.id.starts_with("probe-") {
                    let _ = probe_tx.send((i, c.id, Instant::now()));
                }
            }
        });
    }
    let held = |want: u64| {
        let seen = seen.clone();
        async move { seen.iter().all(|s| s.load(Ordering::Relaxed) >= want) }
    };

    let mut fanout = Samples::default();
    let mut total = 0u64;
    for r in 0..rounds {
        let w = (r * 7) % n;
        let writer = &clients[w];
        let id = format!("probe-{r}");
        let t0 = Instant::now();
        writer
            .db(DB)
            .collection("items")
            .put(&id, &serde_json::json!({ "r": r }))
            .await?;
        total += 1;
        let mut got = 0;
        // Every device but the writer, which sees its own write at once.
        while got < n - 1 {
            let (device, pid, at) = tokio::time::timeout(PATIENCE, probes.recv())
                .await
                .context("a probe did not arrive")?
                .context("subscriptions ended")?;
            if pid == id && device != w {
                fanout.0.push(at.duration_since(t0).as_secs_f64() * 1000.0);
                got += 1;
            }
        }
    }
    wait_within("every device to hold the probes", PATIENCE, || held(total)).await?;

    // Idle CPU over as long as the sustained run takes, then the run.
    let rate = 20.0;
    let secs = writes as f64 / rate;
    let before = mesh_cpu(&pids);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let idle = mesh_cpu(&pids) - before;
    let before = mesh_cpu(&pids);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for w in 0..writes {
        tick.tick().await;
        clients[(w * 13) % n]
            .db(DB)
            .collection("items")
            .put(&format!("w{w}"), &serde_json::json!({ "w": w }))
            .await?;
    }
    total += writes as u64;
    wait_within("every device to hold every write", PATIENCE, || held(total)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let busy = mesh_cpu(&pids) - before - idle * elapsed / secs;
    let mesh_cpu_ms_per_write = busy.max(0.0) * 1000.0 / writes as f64;

    let mut per_device = Vec::new();
    for cl in &clients {
        per_device.push(links(cl).await);
    }
    let links_max = per_device.iter().copied().max().unwrap_or(0);
    let links_mean = per_device.iter().sum::<usize>() as f64 / n as f64;
    Ok(Row {
        n,
        join_s,
        join_failed,
        links_max,
        links_mean,
        fanout_p50_ms: fanout.p(50.0),
        fanout_p99_ms: fanout.p(99.0),
        mesh_cpu_ms_per_write,
    })
}
