//! Chaos: `kill -9` in the middle of a mixed write load (puts, patches,
//! deletes, batches of all three, index builds and drops), round after
//! round on the same data directory. After every kill a checker proves
//! that every acknowledged write survived with its last acknowledged
//! value, that the write in flight at the kill landed whole or not at all,
//! and that an index answers exactly as a full scan does.
//!
//! 20 rounds by default; `BLAZEDB_CHAOS_ROUNDS=N` runs N, and
//! `BLAZEDB_CHAOS_SEED=S` replays one run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use blazedb::{Client, Durability, Fields, FilterOp, Value};
use blazedb_tests::{Rng, TestAgent, assert_unclean_start};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");
const WRITERS: u64 = 6;
/// Keys per writer: few enough that records are rewritten, patched and
/// deleted many times each round.
const KEYS: u64 = 30;
/// The indexed field's values.
const GROUPS: i64 = 4;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One write of a client's request (a batch holds several).
#[derive(Debug, Clone)]
enum Write {
    Put(String, Fields),
    Patch(String, Fields, Vec<String>),
    Delete(String),
}

/// The records of one writer's keys, as its acknowledged writes left them.
type State = BTreeMap<String, Fields>;

fn apply(state: &mut State, writes: &[Write]) {
    for w in writes {
        match w {
            Write::Put(id, f) => {
                state.insert(id.clone(), f.clone());
            }
            Write::Patch(id, set, unset) => {
                let rec = state.get_mut(id).expect("patches only name live records");
                rec.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                for u in unset {
                    rec.remove(u);
                }
            }
            Write::Delete(id) => {
                state.remove(id);
            }
        }
    }
}

/// Picks one write for writer `w` that is valid against `state`: patches
/// only name records that exist, so every refusal is a failure.
fn pick(rng: &mut Rng, w: u64, n: i64, state: &State) -> Write {
    let id = format!("w{w}-{}", rng.below(KEYS));
    let live = state.contains_key(&id);
    match rng.below(10) {
        0..=4 => {
            let mut f = Fields::new();
            f.insert("v".into(), Value::Int(n));
            f.insert("g".into(), Value::Int(rng.below(GROUPS as u64)));
            f.insert(
                "s".into(),
                Value::String("x".repeat(rng.below(300) as usize)),
            );
            Write::Put(id, f)
        }
        5..=7 if live => {
            let mut set = Fields::new();
            set.insert("p".into(), Value::Int(n));
            if rng.chance(0.5) {
                set.insert("g".into(), Value::Int(rng.below(GROUPS as u64)));
            }
            let unset = if rng.chance(0.3) {
                vec!["s".to_owned()]
            } else {
                Vec::new()
            };
            Write::Patch(id, set, unset)
        }
        _ => Write::Delete(id),
    }
}

/// What a writer knew when its connection broke.
struct Outcome {
    state: State,
    in_flight: Option<Vec<Write>>,
}

/// Writes until the agent goes away. Each request is one write or a batch
/// of up to 8; `acks` counts acknowledged requests.
async fn writer(
    client: Client,
    w: u64,
    seed: u64,
    mut state: State,
    acks: Arc<AtomicUsize>,
) -> Outcome {
    let mut rng = Rng::new(seed);
    let db = client.db("chaos");
    let coll = db.collection("items");
    for n in 0i64.. {
        let writes: Vec<Write> = if rng.chance(0.2) {
            let mut after = state.clone();
            let mut ws = Vec::new();
            for _ in 0..2 + rng.below(7) {
                let write = pick(&mut rng, w, n, &after);
                apply(&mut after, std::slice::from_ref(&write));
                ws.push(write);
            }
            ws
        } else {
            vec![pick(&mut rng, w, n, &state)]
        };
        let sent = if let [one] = writes.as_slice() {
            match one {
                Write::Put(id, f) => coll.put_fields(id, f.clone()).await.map(drop),
                Write::Patch(id, set, unset) => {
                    let unset: Vec<&str> = unset.iter().map(String::as_str).collect();
                    coll.patch(id, set.clone(), &unset).await.map(drop)
                }
                Write::Delete(id) => coll.delete(id).await.map(drop),
            }
        } else {
            let mut batch = db.batch();
            for write in &writes {
                batch = match write {
                    Write::Put(id, f) => batch.put("items", Some(id), f.clone()),
                    Write::Patch(id, set, unset) => {
                        let unset: Vec<&str> = unset.iter().map(String::as_str).collect();
                        batch.patch("items", id, set.clone(), &unset)
                    }
                    Write::Delete(id) => batch.delete("items", id),
                };
            }
            batch.commit().await.map(drop)
        };
        match sent {
            Ok(()) => {
                apply(&mut state, &writes);
                acks.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Only a broken connection may end the load: the writes
                // are valid, so an answer with an error code is a bug.
                assert!(e.code().is_none(), "the agent refused {writes:?}: {e}");
                return Outcome {
                    state,
                    in_flight: Some(writes),
                };
            }
        }
    }
    unreachable!("the load ends only when the agent is killed")
}

/// Builds and drops the index on `g` over and over until the agent goes
/// away; returns whether the last acknowledged step left it built, and
/// whether a step was in flight.
async fn indexer(client: Client, built: bool) -> (bool, bool) {
    let coll = client.db("chaos").collection("items");
    let mut built = built;
    loop {
        let step = if built {
            coll.drop_index("g").await
        } else {
            coll.create_index("g").await
        };
        match step {
            Ok(changed) => {
                assert!(
                    changed,
                    "the index was {} already",
                    if built { "gone" } else { "built" }
                );
                built = !built;
            }
            Err(e) => {
                assert!(e.code().is_none(), "the agent refused an index step: {e}");
                return (built, true);
            }
        }
    }
}

fn writer_keys(all: &State, w: u64) -> State {
    let prefix = format!("w{w}-");
    all.iter()
        .filter(|(id, _)| id.starts_with(&prefix))
        .map(|(id, f)| (id.clone(), f.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_mixed_load_loses_no_acknowledged_write() {
    let rounds = env_or("BLAZEDB_CHAOS_ROUNDS", 20);
    let seed = env_or("BLAZEDB_CHAOS_SEED", 0x5eed_c4a0_5000_0001);
    eprintln!("kill -9 chaos: {rounds} rounds, BLAZEDB_CHAOS_SEED={seed}");
    let mut rng = Rng::new(seed);
    let mut agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    client.db("chaos").create().await.expect("create");

    let mut states: Vec<State> = vec![State::new(); WRITERS as usize];
    let mut index_built = false;
    let mut total_acks = 0;
    // How often the request in flight at the kill had landed, and how
    // often not: both must happen for the run to have tested anything.
    let (mut landed, mut not_landed) = (0, 0);
    let started = Instant::now();
    for round in 0..rounds {
        let client = agent.client().await.expect("client");
        // Half the rounds acknowledge after the commit and before the
        // fsync: a killed process must not lose those either.
        let durability = if round % 2 == 0 {
            Durability::Fsync
        } else {
            Durability::Buffered
        };
        client
            .db("chaos")
            .set_settings(None, Some(durability))
            .await
            .expect("durability");
        let acks = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(
                    client.clone(),
                    w,
                    rng.next_u64(),
                    states[w as usize].clone(),
                    acks.clone(),
                ))
            })
            .collect();
        let indexer = tokio::spawn(indexer(client.clone(), index_built));

        // Kill at a different point of the load every round.
        let kill_after = 100 + rng.below(900) as usize;
        blazedb_tests::wait_for(&format!("{kill_after} acknowledged writes"), || {
            (acks.load(Ordering::Relaxed) >= kill_after).then_some(())
        })
        .await
        .expect("the load runs");
        agent.kill();
        let mut outcomes = Vec::new();
        for w in writers {
            outcomes.push(w.await.expect("writer"));
        }
        let (acked_built, index_in_flight) = indexer.await.expect("indexer");
        total_acks += acks.load(Ordering::Relaxed);

        agent.restart().await.expect("restart");
        let client = agent.client().await.expect("client");
        assert_unclean_start(&client, &format!("round {round}")).await;
        let found: State = client
            .db("chaos")
            .collection("items")
            .query()
            .fetch_all()
            .await
            .expect("scan")
            .into_iter()
            .map(|r| (r.id, r.fields))
            .collect();

        // Each writer's keys hold what it was told was written, or that
        // plus the whole of the request in flight at the kill.
        for (w, out) in outcomes.into_iter().enumerate() {
            let got = writer_keys(&found, w as u64);
            let mut with_in_flight = out.state.clone();
            if let Some(writes) = &out.in_flight {
                apply(&mut with_in_flight, writes);
            }
            if out.in_flight.is_some() && got != out.state {
                landed += 1;
            } else if out.in_flight.is_some() && got != with_in_flight {
                not_landed += 1;
            }
            assert!(
                got == out.state || got == with_in_flight,
                "round {round}, writer {w}: the records are neither as acknowledged nor \
                 with the whole request in flight ({:?}) applied.\nacknowledged: {:?}\nfound: {:?}",
                out.in_flight,
                out.state,
                got
            );
            states[w] = got;
        }

        // The index is built or gone as acknowledged (either, for a step
        // in flight), and a query through it agrees with a full scan.
        let info = client.db("chaos").info().await.expect("info");
        let built = info
            .collections
            .iter()
            .any(|c| c.name == "items" && c.indexes.iter().any(|f| f == "g"));
        assert!(
            built == acked_built || index_in_flight,
            "round {round}: the index on g is {} after its last acknowledged {}",
            if built { "built" } else { "missing" },
            if acked_built { "build" } else { "drop" }
        );
        index_built = built;
        for g in 0..GROUPS {
            let mut by_query: Vec<String> = client
                .db("chaos")
                .collection("items")
                .query()
                .filter("g", FilterOp::Eq, g)
                .fetch_all()
                .await
                .expect("query")
                .into_iter()
                .map(|r| r.id)
                .collect();
            by_query.sort();
            let by_scan: Vec<String> = found
                .iter()
                .filter(|(_, f)| f.get("g") == Some(&Value::Int(g)))
                .map(|(id, _)| id.clone())
                .collect();
            assert_eq!(
                by_query, by_scan,
                "round {round}: g = {g} through the index (built: {built}) differs from a scan"
            );
        }
    }
    eprintln!(
        "kill -9 chaos: {rounds} rounds, {total_acks} acknowledged requests, none lost, in {:?}; \
         the request in flight at a kill had landed {landed} times and not {not_landed} times",
        started.elapsed()
    );
}
