//! The deterministic simulator: many sync engines on in-memory stores, a
//! virtual clock and a hostile virtual network, driven by one seed.
//!
//! `cargo test -p blazed --test sim` checks 1,000 seeds. Run any number
//! with `BLAZEDB_SIM_SEEDS=N` (starting at `BLAZEDB_SIM_FIRST`, default 0),
//! or one with `BLAZEDB_SIM_SEED=S` (add `BLAZEDB_SIM_TRACE=1` to see every
//! event). A failing seed prints the command that replays it.

#![allow(clippy::unwrap_used)]

mod world;

use world::{Scenario, World};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn run_seed(seed: u64) {
    let scenario = Scenario::from_seed(seed);
    let mut world = World::new(scenario);
    if let Err(e) = world.run() {
        panic!(
            "seed {seed} failed: {e}\n  scenario: {:?}\n  replay: BLAZEDB_SIM_SEED={seed} BLAZEDB_SIM_TRACE=1 cargo test -p blazed --test sim -- --nocapture",
            world.scenario()
        );
    }
}

#[test]
fn seeds_converge() {
    if let Some(seed) = env_u64("BLAZEDB_SIM_SEED") {
        run_seed(seed);
        return;
    }
    let first = env_u64("BLAZEDB_SIM_FIRST").unwrap_or(0);
    let count = env_u64("BLAZEDB_SIM_SEEDS").unwrap_or(1000);
    let start = std::time::Instant::now();
    for seed in first..first + count {
        run_seed(seed);
    }
    eprintln!(
        "{count} seeds from {first} converged in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}
