//! `--callgrind`: instructions per put and per get, counted by valgrind's
//! callgrind for the agent's process and for raw fjall doing the same
//! work, and for the client's side in the app's process. Instruction
//! counts repeat from run to run where wall-clock rates on a shared
//! machine swing two- or threefold, so a change to either path shows in
//! them.
//!
//! Each figure is the difference of two runs that differ only in the
//! number of operations (`small` and `large`), divided by that
//! difference: start-up, set-up and shutdown cancel out.

use std::path::{Path, PathBuf};

use anyhow::bail;
use blazedb::Client;
use blazedb_proto::api::Encryption;
use blazedb_tests::bench::{
    PutBatches, batched_puts, callgrind_command, callgrind_dir, callgrind_instructions,
    raw_fjall_puts, valgrind_present,
};
use blazedb_tests::{TestAgent, sibling_bin};
use fjall::KeyspaceCreateOptions;

/// Records the get runs read from.
const GET_KEYS: usize = 4000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Puts,
    Gets,
    /// Puts to an end-to-end encrypted database (agent only: beside the
    /// agent's plaintext puts).
    E2ePuts,
    /// Gets of 1000 ids a `get_many` request (beside raw gets).
    GetMany,
}

/// Counts and prints instructions per put and per get, agent and raw.
pub(crate) async fn run(quick: bool, json: bool, keep: Option<PathBuf>) -> anyhow::Result<()> {
    valgrind_present()?;
    let (small, large) = if quick { (1000, 2000) } else { (2000, 6000) };
    let tmp = tempfile::tempdir()?;
    let dir = callgrind_dir(keep.as_deref(), &tmp)?;
    println!("blazedb-bench --callgrind: instructions per operation ({small} and {large} ops)\n");
    let mut figures = serde_json::Map::new();
    for work in [Work::Puts, Work::Gets, Work::GetMany] {
        let agent = per_op(small, large, |n| agent_run(dir, work, n)).await?;
        let raw = per_op(small, large, |n| async move { raw_run(dir, work, n) }).await?;
        let (name, what) = match work {
            Work::Puts => ("put", "durable batched puts (1000 a batch)"),
            Work::Gets | Work::E2ePuts => ("get", "random point gets (128 in flight)"),
            Work::GetMany => ("get_many", "random gets, 1000 ids a get_many request"),
        };
        println!("{what}");
        println!("  raw fjall          {raw:>10.0} instructions per op");
        println!(
            "  blazed (agent)     {agent:>10.0} instructions per op  ({:.2}x raw)\n",
            agent / raw
        );
        figures.insert(format!("callgrind_{name}_agent_ir"), agent.into());
        figures.insert(format!("callgrind_{name}_raw_ir"), raw.into());
        figures.insert(format!("callgrind_{name}_ratio_raw"), (agent / raw).into());
    }
    // The client's side, in the app's process (the blazedb crate):
    // against an agent run natively.
    let agent = TestAgent::start(sibling_bin("blazed-test-agent")).await?;
    {
        let client = Client::connect_to(agent.socket()).await?;
        super::create_db(&client, "bench", Encryption::None).await?;
        batched_puts(&client, "bench", GET_KEYS, 1000).await?;
    }
    let socket = agent.socket();
    println!("the client's side (the blazedb crate, in the app's process)");
    // The records a put sends are built before the clock starts in the
    // wall-clock figures (as raw fjall's values are): their building, run
    // alone, is taken off here too.
    let build = per_op(small, large, |n| {
        let socket = socket.clone();
        async move { client_run(dir, &socket, "build", n) }
    })
    .await?;
    for (what, name) in [("puts", "put"), ("gets", "get"), ("get_many", "get_many")] {
        let mut client = per_op(small, large, |n| {
            let socket = socket.clone();
            async move { client_run(dir, &socket, what, n) }
        })
        .await?;
        if what == "puts" {
            client -= build;
        }
        println!("  {what:<18} {client:>10.0} instructions per op");
        figures.insert(format!("callgrind_{name}_client_ir"), client.into());
    }
    println!();
    let e2e = per_op(small, large, |n| agent_run(dir, Work::E2ePuts, n)).await?;
    let plain = figures
        .get("callgrind_put_agent_ir")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(f64::NAN);
    println!("durable batched puts to an end-to-end encrypted database");
    println!(
        "  blazed (agent)     {e2e:>10.0} instructions per op  ({:.2}x plaintext)\n",
        e2e / plain
    );
    figures.insert("callgrind_e2e_put_agent_ir".into(), e2e.into());
    figures.insert("callgrind_e2e_put_ratio_plain".into(), (e2e / plain).into());
    if json {
        println!("{}", serde_json::Value::Object(figures));
    }
    Ok(())
}

/// Instructions per operation: the difference of a `large` and a `small`
/// run over the difference in operations.
async fn per_op<F: Future<Output = anyhow::Result<u64>>>(
    small: usize,
    large: usize,
    mut run: impl FnMut(usize) -> F,
) -> anyhow::Result<f64> {
    let a = run(small).await?;
    let b = run(large).await?;
    Ok(b.saturating_sub(a) as f64 / (large - small) as f64)
}

/// Runs an agent under callgrind, has it do `n` puts (or write
/// [`GET_KEYS`] records and then do `n` gets), stops it and returns the
/// instructions it ran.
async fn agent_run(dir: &Path, work: Work, n: usize) -> anyhow::Result<u64> {
    let out = dir.join(format!("agent-{work:?}-{n}.callgrind"));
    let script = dir.join(format!("agent-{work:?}-{n}.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec valgrind -q --tool=callgrind --callgrind-out-file={} {} \"$@\"\n",
            out.display(),
            sibling_bin("blazed-test-agent").display()
        ),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut agent = TestAgent::stopped(&script, &["--no-metrics", "--no-http"])?;
    agent.restart().await?;
    let client = Client::connect_to(agent.socket()).await?;
    let encryption = match work {
        Work::E2ePuts => Encryption::E2e,
        Work::Puts | Work::Gets | Work::GetMany => Encryption::None,
    };
    super::create_db(&client, "bench", encryption).await?;
    match work {
        Work::Puts | Work::E2ePuts => {
            batched_puts(&client, "bench", n, 1000).await?;
        }
        Work::Gets => {
            batched_puts(&client, "bench", GET_KEYS, 1000).await?;
            super::pipelined_gets(&client, n, GET_KEYS, 128).await?;
        }
        Work::GetMany => {
            batched_puts(&client, "bench", GET_KEYS, 1000).await?;
            super::get_many(&client, n, GET_KEYS, 1000).await?;
        }
    }
    drop(client);
    agent.stop().await?;
    callgrind_instructions(&out)
}

/// Runs raw fjall under callgrind in a child process of this binary.
fn raw_run(dir: &Path, work: Work, n: usize) -> anyhow::Result<u64> {
    let out = dir.join(format!("raw-{work:?}-{n}.callgrind"));
    let mut valgrind = callgrind_command(&out);
    if work == Work::Puts {
        // The agent's figure starts from the client's bytes, so raw's
        // starts from encoded records: only the inserts are counted.
        valgrind.arg("--toggle-collect=*raw_insert_batches*");
    }
    let status = valgrind
        .arg(std::env::current_exe()?)
        .arg("--raw-fjall")
        .arg(if work == Work::Puts { "puts" } else { "gets" })
        .arg(n.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "the raw fjall run failed: {status}");
    callgrind_instructions(&out)
}

/// Runs this binary under callgrind as a client of the agent on `socket`
/// doing `n` operations (`puts`, 1000 a batch; `gets`, 128 in flight; or
/// `get_many`, 1000 ids a request; or `build`, only building what `n`
/// puts send) and returns the instructions it ran.
fn client_run(dir: &Path, socket: &Path, what: &str, n: usize) -> anyhow::Result<u64> {
    let out = dir.join(format!("client-{what}-{n}.callgrind"));
    let status = callgrind_command(&out)
        .arg(std::env::current_exe()?)
        .arg("--client-ops")
        .arg(socket)
        .arg(what)
        .arg(n.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "the client run failed: {status}");
    callgrind_instructions(&out)
}

/// The client side, in the child: `n` puts, or `n` reads of the
/// [`GET_KEYS`] records the parent wrote.
pub(crate) async fn client_ops(socket: &str, what: &str, n: usize) -> anyhow::Result<()> {
    let client = Client::connect_to(socket).await?;
    match what {
        "puts" => batched_puts(&client, "bench", n, 1000).await?,
        "build" => {
            std::hint::black_box(PutBatches::new(n, 1000));
            0.0
        }
        "gets" => super::pipelined_gets(&client, n, GET_KEYS, 128).await?,
        "get_many" => super::get_many(&client, n, GET_KEYS, 1000).await?,
        other => bail!("--client-ops takes puts, build, gets or get_many, not {other}"),
    };
    Ok(())
}

/// The raw side, in the child: `n` durable batched inserts, or
/// [`GET_KEYS`] inserts and then `n` random gets.
pub(crate) fn raw_fjall(what: &str, n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    match what {
        "puts" => {
            raw_fjall_puts(dir.path(), n, 1000)?;
        }
        "gets" => {
            raw_fjall_puts(dir.path(), GET_KEYS, 1000)?;
            let db = fjall::Database::builder(dir.path().join("raw")).open()?;
            let ks = db.keyspace("items", KeyspaceCreateOptions::default)?;
            super::random_gets(&ks, n, GET_KEYS)?;
        }
        other => bail!("--raw-fjall takes puts or gets, not {other}"),
    }
    Ok(())
}
