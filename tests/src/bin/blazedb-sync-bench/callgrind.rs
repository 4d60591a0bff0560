//! `--callgrind`: instructions per applied op, counted by valgrind's
//! callgrind, for the engine applying a peer's ops into the store (the
//! engine's loop over the messages and the store's writer thread) and for
//! raw fjall inserting the same records (its insert loop). Instruction
//! counts repeat from run to run where wall-clock rates on a shared
//! machine swing, so a change to the apply path shows in them. Neither
//! counts making the ops or freeing the memtables at the end.
//!
//! Each figure is the difference of two runs that differ only in the
//! number of ops, divided by that difference.

use std::path::Path;

use anyhow::bail;
use blazed::sync::EngineConfig;
use blazedb_tests::bench::{
    callgrind_command, callgrind_dir, callgrind_instructions, valgrind_present,
};

/// Counts and prints instructions per applied op, engine and raw.
pub(crate) fn run(quick: bool, json: bool, keep: Option<&Path>) -> anyhow::Result<()> {
    valgrind_present()?;
    let (small, large) = if quick {
        (2_000, 6_000)
    } else {
        (5_000, 15_000)
    };
    let tmp = tempfile::tempdir()?;
    let dir = callgrind_dir(keep, &tmp)?;
    let batch = EngineConfig::default().batch.max_items;
    println!(
        "blazedb-sync-bench --callgrind: instructions per applied op ({small} and {large} ops, \
         {batch} to a message, fsync per message)\n"
    );
    let per_op = |what: &str| -> anyhow::Result<f64> {
        let a = child_run(dir, what, small)?;
        let b = child_run(dir, what, large)?;
        Ok(b.saturating_sub(a) as f64 / (large - small) as f64)
    };
    let raw = per_op("raw")?;
    let engine = per_op("engine")?;
    println!("remote puts of new records");
    println!("  raw fjall batch inserts  {raw:>8.0} instructions per op");
    println!(
        "  engine into fjall store  {engine:>8.0} instructions per op  ({:.2}x raw)",
        engine / raw
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "callgrind_apply_engine_ir": engine,
                "callgrind_apply_raw_ir": raw,
                "callgrind_apply_ratio_raw": engine / raw,
            })
        );
    }
    Ok(())
}

/// Runs this binary under callgrind as a child doing `what` with `n` ops;
/// returns the instructions it ran.
fn child_run(dir: &Path, what: &str, n: usize) -> anyhow::Result<u64> {
    let out = dir.join(format!("apply-{what}-{n}.callgrind"));
    let mut valgrind = callgrind_command(&out);
    if what == "raw" {
        // Raw's records are encoded before its clock starts: only the
        // inserts are counted.
        valgrind.arg("--toggle-collect=*raw_apply_batches*");
    } else {
        valgrind
            .arg("--toggle-collect=*apply_messages*")
            .arg("--toggle-collect=blazed::store::writer::Writer::run");
    }
    let status = valgrind
        .arg(std::env::current_exe()?)
        .arg("--apply-child")
        .arg(what)
        .arg(n.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "the {what} run failed: {status}");
    callgrind_instructions(&out)
}

/// In the child: apply `n` ops with the engine (`engine`), or insert
/// their records into raw fjall (`raw`).
pub(crate) fn child(what: &str, n: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ops = super::apply_ops(n);
    let batch = EngineConfig::default().batch.max_items;
    match what {
        "engine" => {
            super::engine_apply(dir.path(), &ops, batch, None, None)?;
        }
        "raw" => {
            super::raw_fjall(dir.path(), &ops, batch)?;
        }
        other => bail!("--apply-child takes engine or raw, not {other}"),
    }
    Ok(())
}
