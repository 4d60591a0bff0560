//! A store damaged on disk: the agent refuses to start with a message
//! that says what to do, `blazed repair` names the damage, and a store set
//! aside is taken back whole from a peer.

use std::process::Command;

use blazedb::Value;
use blazedb_tests::{TestAgent, records, start_mesh, wait_until};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");

/// Runs `blazed repair` with `args` on `agent`'s data directory; returns
/// its exit code and what it printed.
fn repair(agent: &TestAgent, args: &[&str]) -> (i32, String) {
    let out = Command::new(AGENT)
        .arg("repair")
        .arg("--data-dir")
        .arg(agent.data_dir())
        .args(args)
        .env_remove("BLAZED_CONFIG")
        .output()
        .expect("run blazed repair");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_damaged_mid_journal_is_set_aside_and_taken_back_from_a_peer() {
    let (mut agents, clients) = start_mesh(AGENT, 2).await.expect("mesh");
    clients[0].db("d").create().await.expect("create");
    let coll = clients[0].db("d").collection("c");
    for i in 0..30 {
        coll.put_fields(
            &format!("r{i}"),
            [("v".to_owned(), Value::from(format!("marker-{i:03}")))].into(),
        )
        .await
        .expect("put");
    }
    wait_until("b to hold every record", || async {
        records(&clients[1], "d", "c").await.len() == 30
    })
    .await
    .expect("synced");

    // A byte of an early write's value goes bad on A's disk.
    agents[0].stop().await.expect("stop a");
    let store = agents[0].data_dir().join("store");
    let journal = std::fs::read_dir(&store)
        .expect("store dir")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "jnl")
                && std::fs::read(p).is_ok_and(|b| b.windows(10).any(|w| w == b"marker-005"))
        })
        .expect("the journal holding the writes");
    let mut bytes = std::fs::read(&journal).expect("read journal");
    let at = bytes
        .windows(10)
        .position(|w| w == b"marker-005")
        .expect("the value");
    bytes[at] ^= 0x20;
    std::fs::write(&journal, bytes).expect("damage");

    // The agent will not start on it, and says what to do.
    let err = agents[0]
        .restart()
        .await
        .expect_err("a store damaged in the middle does not open");
    let said = err.to_string();
    assert!(
        said.contains("damaged") && said.contains("blazed repair"),
        "the start names the damage and the way out:\n{said}"
    );

    // `blazed repair` says the same and leaves the store alone.
    let (code, out) = repair(&agents[0], &[]);
    assert_eq!(code, 1, "damage left is an exit code of 1:\n{out}");
    assert!(
        out.contains("cannot be opened") && out.contains("--set-aside"),
        "{out}"
    );
    assert!(journal.exists());

    // Set aside, the store is taken back whole from B.
    let (code, out) = repair(&agents[0], &["--set-aside"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("moved the store to"), "{out}");
    agents[0].restart().await.expect("start on an empty store");
    let a = agents[0].client().await.expect("client");
    let status = a.status().await.expect("status");
    assert!(
        status.new_incarnation.is_some(),
        "a new store takes a new write incarnation: {status:?}"
    );
    wait_until("a to take every record back from b", || async {
        records(&a, "d", "c").await == records(&clients[1], "d", "c").await
            && records(&a, "d", "c").await.len() == 30
    })
    .await
    .expect("taken back");
    a.db("d")
        .collection("c")
        .put_fields("after", [("v".to_owned(), Value::from("new"))].into())
        .await
        .expect("a writes again");
    wait_until("b to get a's new write", || async {
        records(&clients[1], "d", "c").await.contains_key("after")
    })
    .await
    .expect("synced");
}

#[tokio::test]
async fn repair_finds_nothing_wrong_in_a_sound_store() {
    let mut agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    client.db("d").create().await.expect("create");
    client
        .db("d")
        .collection("c")
        .put_fields("r", [("v".to_owned(), Value::Int(1))].into())
        .await
        .expect("put");

    // Not while the agent runs.
    let (code, out) = repair(&agent, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("already running"), "{out}");

    agent.stop().await.expect("stop");
    let (code, out) = repair(&agent, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("d: sound (records 1, changes 1, index entries 0)"),
        "{out}"
    );
    agent.restart().await.expect("restart");
    let client = agent.client().await.expect("client");
    assert_eq!(
        client.status().await.expect("status").new_incarnation,
        None,
        "looking changes nothing"
    );

    // After a crash, opening the store takes a new write incarnation as a
    // start would; the next start then finds a clean stop, so repair is
    // where the crash is told.
    agent.kill();
    let (code, out) = repair(&agent, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("new write incarnation") && out.contains("did not stop cleanly"),
        "{out}"
    );
}
