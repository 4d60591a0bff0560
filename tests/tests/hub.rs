//! One hub and thirty devices, each its own agent, joining at once: every
//! join succeeds, devices keep a bounded number of links, every write
//! reaches every device, and no control stream loses its place.

use std::time::Duration;

use blazedb::Client;
use blazedb_tests::{TestAgent, connected, records, signal, wait_within};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");
const DEVICES: usize = 30;
/// The hub, `member_links` (8 by default) ring neighbours, and one more
/// for a link being replaced.
const MAX_LINKS: usize = 10;
const PATIENCE: Duration = Duration::from_secs(90);
/// How long a device's link count may stay over the bound while the
/// overlay replaces a link.
const SETTLE: Duration = Duration::from_secs(10);

/// How many peers the agent behind `cl` is linked with now.
async fn links(cl: &Client) -> usize {
    cl.peers().await.map_or(usize::MAX, |ps| {
        ps.iter().filter(|p| p.state == "connected").count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_devices_join_one_hub_at_once_and_every_write_reaches_all() {
    let started = std::time::Instant::now();
    let logs = tempfile::tempdir().expect("log dir");
    let log = |name: &str| logs.path().join(format!("{name}.log"));
    let mut hub = TestAgent::stopped(AGENT, &["--role", "hub", "--name", "hub"]).expect("hub");
    hub.log_to(log("hub"));
    hub.restart().await.expect("hub starts");
    let h = hub.client().await.expect("hub client");
    h.create_mesh().await.expect("mesh");
    h.db("notes").create().await.expect("database on the hub");
    let code = h.invite(Some(600), Some(0)).await.expect("invite").code;

    let mut agents = Vec::new();
    let mut clients = Vec::new();
    for i in 0..DEVICES {
        let name = format!("dev{i}");
        let mut a = TestAgent::stopped(AGENT, &["--name", &name]).expect("agent");
        a.log_to(log(&name));
        a.restart().await.expect("agent starts");
        clients.push(a.client().await.expect("client"));
        agents.push(a);
    }

    // Every device redeems the invite at the same moment.
    let mut joins = tokio::task::JoinSet::new();
    for (i, cl) in clients.iter().enumerate() {
        let (cl, code) = (cl.clone(), code.clone());
        joins.spawn(async move { (i, cl.join(&code).await) });
    }
    while let Some(r) = joins.join_next().await {
        let (i, r) = r.expect("join task");
        let s = r.unwrap_or_else(|e| panic!("device {i} could not join: {e}"));
        assert!(s.mesh.is_some(), "device {i} joined, yet is in no mesh");
    }
    eprintln!("all joined after {:?}", started.elapsed());
    wait_within("the hub to link every device", PATIENCE, || {
        connected(&h, DEVICES)
    })
    .await
    .expect("hub linked with all");
    eprintln!("the hub linked with all after {:?}", started.elapsed());

    // Three devices write; every device and the hub ends with all three.
    for i in [0, DEVICES / 2, DEVICES - 1] {
        let cl = &clients[i];
        wait_within("the database to reach a writer", PATIENCE, || async {
            cl.databases()
                .await
                .is_ok_and(|dbs| dbs.iter().any(|d| d.name == "notes"))
        })
        .await
        .expect("database arrived");
        cl.db("notes")
            .collection("n")
            .put(&format!("from-{i}"), &serde_json::json!({ "by": i }))
            .await
            .expect("write");
    }
    for (i, cl) in clients.iter().chain([&h]).enumerate() {
        wait_within(
            &format!("agent {i} to hold every write"),
            PATIENCE,
            || async { records(cl, "notes", "n").await.len() == 3 },
        )
        .await
        .expect("every write everywhere");
    }

    eprintln!("every write everywhere after {:?}", started.elapsed());
    // A device may briefly hold one link more while the overlay swaps a
    // ring neighbour, so each count is given time to settle rather than
    // read at one instant; a device that stays over the bound fails.
    for (i, cl) in clients.iter().enumerate() {
        let settled = wait_within(&format!("device {i}'s links to settle"), SETTLE, || async {
            (1..=MAX_LINKS).contains(&links(cl).await)
        })
        .await;
        assert!(
            settled.is_ok(),
            "device {i} keeps {} links; a device sharing only a hub keeps at most {MAX_LINKS}",
            links(cl).await
        );
    }

    // All are told to stop at once; each then has its own deadline.
    for a in agents.iter().chain([&hub]) {
        signal(a.pid().expect("running"), "TERM").expect("SIGTERM");
    }
    for a in agents.iter_mut().chain([&mut hub]) {
        a.stop().await.expect("agent stops");
    }
    for entry in std::fs::read_dir(logs.path()).expect("logs") {
        let path = entry.expect("log").path();
        let text = std::fs::read_to_string(&path).expect("read log");
        for bad in [
            "over the limit",
            "bad control frame",
            "undecodable control message",
        ] {
            assert!(
                !text.contains(bad),
                "{} says \"{bad}\":\n{}",
                path.display(),
                text.lines()
                    .filter(|l| l.contains(bad))
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}
