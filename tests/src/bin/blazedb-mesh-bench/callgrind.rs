//! `--callgrind`: instructions per replicated record, counted by
//! valgrind's callgrind in each agent (every thread of its process: IPC,
//! the writer, sync, QUIC, fjall's workers), beside raw fjall's batch
//! inserts of the same records. Wall-clock rates of replication swing
//! between runs on a shared machine; instruction counts repeat to within
//! a few percent, so a change to the replication path shows in them.
//!
//! Both agents run under callgrind. After a warm-up replication, their
//! counters are zeroed, `n` records are written on A until B holds them
//! all, and the counters are dumped. Kept out of the count: fjall's
//! compaction of the log (`Writer::compact`, a timer, which the slow
//! agents reach within the run) and the app's side (the bench process is
//! not under callgrind). The kernel's share (fsync, the journal's writes,
//! UDP) is not counted either.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use blazedb::Client;
use blazedb_tests::bench::{
    PutBatches, callgrind_command, callgrind_dir, callgrind_instructions, raw_fjall_puts, record,
    valgrind_present,
};
use blazedb_tests::{TestAgent, join_mesh, sibling_bin};

use super::{BATCH, LAST, has, shared_db};

/// Counts and prints instructions per replicated record, A's, B's and raw
/// fjall's.
pub(crate) async fn run(
    quick: bool,
    json: bool,
    in_flight: usize,
    keep: Option<&Path>,
) -> anyhow::Result<()> {
    valgrind_present()?;
    let (warm, n) = if quick {
        (1_000, 4_000)
    } else {
        (2_000, 20_000)
    };
    let tmp = tempfile::tempdir()?;
    let dir = callgrind_dir(keep, &tmp)?;
    println!(
        "blazedb-mesh-bench --callgrind: instructions per replicated record \
         ({n} records in batches of {BATCH}, {in_flight} in flight, after {warm} to warm up)\n"
    );
    let raw = raw_per_record(dir, n)?;
    let wrapper = agent_under_callgrind(dir)?;
    let mut a = TestAgent::start(&wrapper).await?;
    let mut b = TestAgent::start(&wrapper).await?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    join_mesh(&ca, &[&cb]).await?;
    replicate(&ca, &cb, "warm-up", warm, in_flight).await?;
    shared_db(&ca, &cb, "measured").await?;
    let pids = [pid(&a)?, pid(&b)?];
    for p in pids {
        callgrind_control("-z", p)?;
    }
    replicate_into(&ca, &cb, "measured", n, in_flight).await?;
    let mut counts = Vec::new();
    for p in pids {
        callgrind_control("-d", p)?;
        counts.push(callgrind_instructions(&dir.join(format!("agent.{p}.1")))? as f64 / n as f64);
    }
    a.kill();
    b.kill();
    let (sender, receiver) = (counts[0], counts[1]);
    let both = sender + receiver;
    println!("  raw fjall batch inserts   {raw:>8.0} instructions a record");
    println!(
        "  A, the sender             {sender:>8.0} instructions a record  ({:.2}x raw)",
        sender / raw
    );
    println!(
        "  B, the receiver           {receiver:>8.0} instructions a record  ({:.2}x raw)",
        receiver / raw
    );
    println!(
        "  both agents               {both:>8.0} instructions a record  ({:.2}x raw; \
         two stores at raw's count would be 2x)",
        both / raw
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "callgrind_replication_sender_ir": sender,
                "callgrind_replication_receiver_ir": receiver,
                "callgrind_replication_raw_ir": raw,
                "callgrind_replication_ratio_raw": both / raw,
                "callgrind_replication_in_flight": in_flight,
            })
        );
    }
    Ok(())
}

/// Writes a script that runs the agent beside this binary under
/// callgrind, its counts to `dir/agent.<pid>`; returns its path.
fn agent_under_callgrind(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let agent = sibling_bin("blazed-test-agent");
    anyhow::ensure!(
        agent.exists(),
        "{} is missing: build it first with `cargo build --release -p blazedb-tests --bins`",
        agent.display()
    );
    let script = dir.join("blazed-under-callgrind");
    // `exec`, so that the agent's pid is valgrind's: the counters are
    // zeroed and dumped by pid. Collection is on from the start and
    // toggled off inside compaction.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec valgrind -q --tool=callgrind --dump-instr=no \
             --toggle-collect='*Writer>::compact' --collect-atstart=yes \
             --callgrind-out-file='{}/agent.%p' '{}' \"$@\"\n",
            dir.display(),
            agent.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

fn pid(agent: &TestAgent) -> anyhow::Result<u32> {
    agent.pid().context("the agent is not running")
}

/// Runs `callgrind_control` with `flag` (`-z` zeroes, `-d` dumps) on the
/// process `pid`; it returns once the agent has done it.
fn callgrind_control(flag: &str, pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("callgrind_control")
        .arg(flag)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("cannot run callgrind_control (it comes with valgrind)")?;
    anyhow::ensure!(
        status.success(),
        "callgrind_control {flag} {pid} failed: {status}"
    );
    Ok(())
}

/// Replicates `n` records through a new database `db`, `in_flight`
/// batches at a time.
async fn replicate(
    ca: &Client,
    cb: &Client,
    db: &str,
    n: usize,
    in_flight: usize,
) -> anyhow::Result<()> {
    shared_db(ca, cb, db).await?;
    replicate_into(ca, cb, db, n, in_flight).await
}

/// Writes `n` records on A into `db`, which B has, `in_flight` batches at
/// a time, and waits until B holds them all.
async fn replicate_into(
    ca: &Client,
    cb: &Client,
    db: &str,
    n: usize,
    in_flight: usize,
) -> anyhow::Result<()> {
    PutBatches::new(n, BATCH)
        .put_in_flight(ca, db, in_flight)
        .await?;
    ca.db(db)
        .collection("items")
        .put_fields(LAST, record(0))
        .await?;
    // B is asked now and then, not every few milliseconds as in the timed
    // runs: each get is counted in B.
    let deadline = std::time::Instant::now() + Duration::from_secs(1800);
    while !has(cb, db, LAST).await {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "B did not receive every record of {db} in time"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Raw fjall's instructions a record, batch inserts of `n` records in a
/// child of this binary under callgrind (only its insert loop counted).
fn raw_per_record(dir: &Path, n: usize) -> anyhow::Result<f64> {
    let out = dir.join(format!("raw-{n}.callgrind"));
    let status = callgrind_command(&out)
        .arg("--toggle-collect=*raw_insert_batches*")
        .arg(std::env::current_exe()?)
        .arg("--raw-child")
        .arg(n.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "the raw fjall run failed: {status}");
    Ok(callgrind_instructions(&out)? as f64 / n as f64)
}

/// In the child: `n` records inserted into raw fjall as the timed raw run
/// inserts them (only its insert loop runs under collection).
pub(crate) fn raw_child(n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    raw_fjall_puts(dir.path(), n, BATCH).map(|_| ())
}
