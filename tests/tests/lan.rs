//! Agents on a LAN of network namespaces (`tests/netns-lab.sh`): they find
//! each other by mDNS alone, ride out an unplugged link and replay what
//! was written meanwhile, and converge over a chain A-B-C where A and C
//! cannot reach each other.
//!
//! Needs root; skipped loudly elsewhere, and an error under CI
//! (`BLAZEDB_NETNS=require`).

use blazedb::Client;
use blazedb_tests::netns::Lab;
use blazedb_tests::{TestAgent, connected, join_mesh, put_numbered, records, wait_until};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");
const NODES: [char; 3] = ['a', 'b', 'c'];

async fn write(cl: &Client, prefix: &str, n: usize) {
    put_numbered(cl, "lab", "r", prefix, n).await.expect("put");
}

/// Waits until every client holds the same `n` records.
async fn converged(what: &str, clients: &[Client], n: usize) {
    wait_until(what, || async {
        let first = records(&clients[0], "lab", "r").await;
        if first.len() != n {
            return false;
        }
        for cl in &clients[1..] {
            if records(cl, "lab", "r").await != first {
                return false;
            }
        }
        true
    })
    .await
    .expect(what);
}

/// Starts an agent in each of the lab's member nodes, listening on
/// `listen`, and joins them into one mesh over the LAN.
async fn lab_mesh(lab: &Lab, listen: &str) -> (Vec<TestAgent>, Vec<Client>) {
    let mut agents = Vec::new();
    for node in NODES {
        let mut a = TestAgent::stopped_in(AGENT, &lab.namespace(node), &["--listen", listen])
            .expect("agent");
        a.restart().await.expect("start");
        agents.push(a);
    }
    let cls = clients(&agents).await;
    join_mesh(&cls[0], &[&cls[1], &cls[2]])
        .await
        .expect("a full mesh over the LAN");
    (agents, cls)
}

async fn clients(agents: &[TestAgent]) -> Vec<Client> {
    let mut out = Vec::new();
    for a in agents {
        out.push(a.client().await.expect("client"));
    }
    out
}

async fn peer_state(cl: &Client, device: &str) -> Option<String> {
    cl.peers()
        .await
        .ok()?
        .into_iter()
        .find(|p| p.device_id == device)
        .map(|p| p.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_mdns_unplugged_link_and_chain() {
    let Some(lab) = Lab::up("bzt", "10.79.0", NODES.len()).expect("lab") else {
        return;
    };
    let listen = |port: u16| format!("0.0.0.0:{port}");
    let (mut agents, cls) = lab_mesh(&lab, &listen(7340)).await;
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for cl in &cls {
            v.push(cl.mesh_status().await.expect("status").device_id);
        }
        v
    };
    cls[0].db("lab").create().await.expect("create db");
    for (cl, who) in cls.iter().zip(["a0", "b0", "c0"]) {
        wait_until("the database everywhere", || async {
            cl.databases()
                .await
                .is_ok_and(|ds| ds.iter().any(|d| d.name == "lab"))
        })
        .await
        .expect("db synced");
        write(cl, who, 10).await;
    }
    converged("the first writes everywhere", &cls, 30).await;

    // B's cable is pulled for longer than the idle timeout; both sides
    // write meanwhile; once it is back, both replay what the other missed.
    lab.set_link('b', false).expect("unplug b");
    write(&cls[0], "a-while-b-out", 20).await;
    write(&cls[1], "b-while-out", 20).await;
    wait_until("a to notice b is gone", || async {
        peer_state(&cls[0], &ids[1]).await.as_deref() != Some("connected")
    })
    .await
    .expect("b dropped");
    assert_eq!(records(&cls[1], "lab", "r").await.len(), 50);
    lab.set_link('b', true).expect("plug b back");
    converged("the replay after b's outage", &cls, 70).await;

    // Everyone stops, then starts on a new port, so the addresses they
    // remember are all stale: only mDNS can bring them together again.
    let second = listen(7341);
    for a in &mut agents {
        a.stop().await.expect("stop");
    }
    for a in &mut agents {
        a.set_args(&["--listen", &second]);
        a.restart().await.expect("restart");
    }
    let cls = clients(&agents).await;
    for cl in &cls {
        wait_until("a full mesh found by mDNS", || connected(cl, 2))
            .await
            .expect("mDNS mesh");
    }

    // A and C lose sight of each other; B is the only way between them.
    for (i, (from, to)) in [('a', 'c'), ('c', 'a')].into_iter().enumerate() {
        let agent = &mut agents[if i == 0 { 0 } else { 2 }];
        agent.stop().await.expect("stop");
        lab.cut(from, to).expect("cut");
    }
    agents[0].restart().await.expect("restart a");
    agents[2].restart().await.expect("restart c");
    let cls = clients(&agents).await;
    wait_until("b to link a and c", || connected(&cls[1], 2))
        .await
        .expect("chain");
    write(&cls[0], "a-chain", 10).await;
    write(&cls[2], "c-chain", 10).await;
    let (va, vc) = (
        serde_json::json!({ "title": "from a" }),
        serde_json::json!({ "title": "from c", "extra": true }),
    );
    let lab_a = cls[0].db("lab").collection("r");
    let lab_c = cls[2].db("lab").collection("r");
    let (ra, rc) = tokio::join!(lab_a.put("both", &va), lab_c.put("both", &vc));
    ra.expect("put a");
    rc.expect("put c");
    converged("the chain to converge", &cls, 91).await;
    for (cl, other) in [(&cls[0], &ids[2]), (&cls[2], &ids[0])] {
        assert_ne!(
            peer_state(cl, other).await.as_deref(),
            Some("connected"),
            "a and c were meant to be cut off from each other"
        );
    }
}

const BROWSE: &str = env!("CARGO_BIN_EXE_blazedb-mdns-browse");

/// What a stranger in `ns` resolves by mDNS within `secs`: one JSON value
/// per service.
fn browse_as_stranger(ns: &str, secs: u64) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, BROWSE, &secs.to_string()])
        .output()
        .expect("run the browser");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// The distinct instances among what a browse resolved.
fn instances(seen: &[serde_json::Value]) -> std::collections::BTreeSet<String> {
    seen.iter()
        .filter_map(|v| v["fullname"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_strangers_learn_nothing_from_mdns_and_a_removed_device_goes_quiet() {
    // Three members and a stranger (d) on one LAN.
    let Some(lab) = Lab::up("bzm", "10.79.1", 4).expect("lab") else {
        return;
    };
    let (mut agents, cls) = lab_mesh(&lab, "0.0.0.0:7340").await;
    let mut ids = Vec::new();
    for cl in &cls {
        ids.push(cl.mesh_status().await.expect("status"));
    }

    // Everyone restarts on a new port, so only mDNS brings them together.
    for a in &mut agents {
        a.stop().await.expect("stop");
        a.set_args(&["--listen", "0.0.0.0:7341"]);
    }
    for a in &mut agents {
        a.restart().await.expect("restart");
    }
    let started = std::time::Instant::now();
    let cls = clients(&agents).await;
    for cl in &cls {
        wait_until("a full mesh found by mDNS", || connected(cl, 2))
            .await
            .expect("mDNS mesh");
    }
    let took = started.elapsed();
    eprintln!("members found each other by mDNS alone in {took:?}");
    assert!(
        took < std::time::Duration::from_secs(2),
        "finding each other by mDNS took {took:?}"
    );

    // A stranger sees three services and nothing that names a device or
    // the mesh.
    let seen = browse_as_stranger(&lab.namespace('d'), 3);
    assert_eq!(instances(&seen).len(), 3, "{seen:?}");
    let text = serde_json::to_string(&seen).expect("json").to_lowercase();
    for s in &ids {
        let mesh = s.mesh.as_deref().expect("a mesh");
        let plain: String = s.device_id.chars().filter(|c| *c != '-').collect();
        for leak in [
            plain.to_lowercase(),
            plain[..7].to_lowercase(),
            s.device_id.to_lowercase(),
            mesh[..8].to_owned(),
        ] {
            assert!(!text.contains(&leak), "mDNS gives away {leak}: {text}");
        }
    }
    for v in &seen {
        for addr in v["addrs"].as_array().expect("addrs") {
            let ip = addr.as_str().expect("ip");
            assert!(
                ip.starts_with("10.79.1."),
                "an address the agent does not answer on is announced: {ip}"
            );
        }
    }

    // C is removed: it learns it, stops announcing, and a stranger sees two
    // (A and B under the tags of the mesh's new secret).
    let epoch = ids[0].key_epoch;
    cls[0]
        .remove_device(&ids[2].device_id)
        .await
        .expect("remove c");
    wait_until("c to learn it was removed", || async {
        cls[2].mesh_status().await.is_ok_and(|s| s.mesh.is_none())
    })
    .await
    .expect("removal learned");
    for cl in &cls[..2] {
        wait_until("a and b to take the new secret", || async {
            cl.mesh_status().await.is_ok_and(|s| s.key_epoch > epoch)
        })
        .await
        .expect("secret rotated");
    }
    let seen = browse_as_stranger(&lab.namespace('d'), 3);
    assert_eq!(instances(&seen).len(), 2, "{seen:?}");
    for cl in &cls[..2] {
        wait_until("a and b to stay linked", || connected(cl, 1))
            .await
            .expect("a-b link");
    }
}
