//! Agents on one host, each with its own data directory, socket and
//! loopback port, joined into a mesh by invite: writes reach every member,
//! conflicts converge, a restarted agent catches up, and devices without an
//! invite or removed from the mesh get nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use blazedb::{Client, Value};
use blazedb_proto::mesh::Invite;
use blazedb_tests::{
    TestAgent, connected, copy_dir, put_numbered, records, start_mesh, wait_until, wait_within,
};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");

/// Starts `n` agents; the first creates a mesh, the others join it.
async fn mesh_of(n: usize) -> (Vec<TestAgent>, Vec<Client>) {
    start_mesh(AGENT, n).await.expect("full mesh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_joined_by_invite_sync_converge_and_catch_up() {
    let (mut agents, clients) = mesh_of(3).await;
    let (a, b, c) = (&clients[0], &clients[1], &clients[2]);

    // A database made on one device appears on the others with its data.
    a.db("notes").create().await.expect("create");
    let notes = |cl: &Client| cl.db("notes").collection("n");
    wait_until("notes to reach b", || async {
        b.databases()
            .await
            .is_ok_and(|d| d.iter().any(|d| d.name == "notes"))
    })
    .await
    .expect("db synced to b");
    notes(b)
        .put("from-b", &serde_json::json!({ "text": "hello from b" }))
        .await
        .expect("put on b");
    for (name, cl) in [("a", a), ("c", c)] {
        wait_until(&format!("b's write to reach {name}"), || async {
            records(cl, "notes", "n").await.contains_key("from-b")
        })
        .await
        .expect("propagated");
    }

    // Conflicting writes to one record on two devices converge everywhere.
    let (na, nc) = (notes(a), notes(c));
    let (va, vc) = (
        serde_json::json!({ "title": "A", "by": "a" }),
        serde_json::json!({ "title": "C", "tags": 1 }),
    );
    let (ra, rc) = tokio::join!(na.put("doc", &va), nc.put("doc", &vc));
    ra.expect("put a");
    rc.expect("put c");
    wait_until("all three to agree", || async {
        let (x, y, z) = tokio::join!(
            records(a, "notes", "n"),
            records(b, "notes", "n"),
            records(c, "notes", "n")
        );
        x.contains_key("doc") && x == y && y == z
    })
    .await
    .expect("converged");

    // C stops; A and B write around it; C comes back and gets exactly that.
    agents[2].stop().await.expect("stop c");
    for i in 0..50 {
        let (w, cl) = if i % 2 == 0 { ("a", a) } else { ("b", b) };
        notes(cl)
            .put(
                &format!("missed-{i}"),
                &serde_json::json!({ "i": i, "by": w }),
            )
            .await
            .expect("put while c is down");
    }
    notes(a)
        .delete("from-b")
        .await
        .expect("delete while c is down");
    agents[2].restart().await.expect("restart c");
    let c = agents[2].client().await.expect("client c");
    wait_until("c to catch up", || async {
        let (x, z) = tokio::join!(records(a, "notes", "n"), records(&c, "notes", "n"));
        x.len() == 51 && x == z
    })
    .await
    .expect("caught up");
    let z = records(&c, "notes", "n").await;
    assert!(
        !z.contains_key("from-b"),
        "the delete made while c was down reached it"
    );
    assert_eq!(z["missed-49"]["by"], Value::String("b".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_forged_invites_are_refused() {
    let (_agents, clients) = mesh_of(1).await;
    let a = &clients[0];
    let a_addr = a.mesh_status().await.expect("status").listen;
    let invite = Invite::from_code(&a.invite(Some(600), Some(1)).await.expect("invite").code)
        .expect("parse");

    // A device that never got an invite: its own mesh, A's address.
    let stranger = TestAgent::start(AGENT).await.expect("agent");
    let s = stranger.client().await.expect("client");
    s.create_mesh().await.expect("its own mesh");
    s.add_peer(&a_addr).await.expect("peer add");
    // A forged invite: the real invite's id and address, another secret.
    let forged = Invite {
        secret: [0x5a; 32],
        ..invite.clone()
    };
    let forger = TestAgent::start(AGENT).await.expect("agent");
    let f = forger.client().await.expect("client");
    let err = f.join(&forged.to_code()).await.expect_err("forged invite");
    assert!(err.to_string().contains("refused"), "{err}");

    // The real invite still works once, then no more.
    let friend = TestAgent::start(AGENT).await.expect("agent");
    friend
        .client()
        .await
        .expect("client")
        .join(&invite.to_code())
        .await
        .expect("real invite");
    let late = TestAgent::start(AGENT).await.expect("agent");
    let err = late
        .client()
        .await
        .expect("client")
        .join(&invite.to_code())
        .await
        .expect_err("used-up invite");
    assert!(err.to_string().contains("refused"), "{err}");

    // A syncs with its friend only.
    a.db("private").create().await.expect("create");
    a.db("private")
        .collection("c")
        .put("secret", &serde_json::json!({ "v": 1 }))
        .await
        .expect("put");
    let fr = friend.client().await.expect("client");
    wait_until("the friend to get the record", || async {
        records(&fr, "private", "c").await.contains_key("secret")
    })
    .await
    .expect("friend synced");
    for (who, cl) in [("stranger", &s), ("forger", &f)] {
        assert!(
            cl.databases()
                .await
                .expect("list")
                .iter()
                .all(|d| d.name != "private"),
            "the {who} got the database"
        );
    }
    let peers = a.peers().await.expect("peers");
    assert_eq!(peers.len(), 1, "only the friend is a member: {peers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_is_refused_and_gets_nothing_new() {
    let (_agents, clients) = mesh_of(3).await;
    let (a, b, c) = (&clients[0], &clients[1], &clients[2]);
    a.db("team").create().await.expect("create");
    let team = |cl: &Client| cl.db("team").collection("t");
    team(a)
        .put("before", &serde_json::json!({ "v": 1 }))
        .await
        .expect("put");
    for cl in [b, c] {
        wait_until("the first record everywhere", || async {
            records(cl, "team", "t").await.contains_key("before")
        })
        .await
        .expect("synced");
    }

    let b_id = b.mesh_status().await.expect("status").device_id;
    a.remove_device(&b_id).await.expect("remove b");
    for (name, cl) in [("a", a), ("c", c)] {
        wait_until(&format!("{name} to see b removed and unlinked"), || async {
            cl.peers().await.is_ok_and(|ps| {
                ps.iter()
                    .any(|p| p.device_id == b_id && p.state == "removed")
            })
        })
        .await
        .expect("removal spread");
    }
    team(a)
        .put("after", &serde_json::json!({ "v": 2 }))
        .await
        .expect("put");
    wait_until("c to get the new record", || async {
        records(c, "team", "t").await.contains_key("after")
    })
    .await
    .expect("c synced");
    // B stays cut off: it is refused on every reconnect.
    wait_until("b to have no links", || connected(b, 0))
        .await
        .expect("b unlinked");
    assert!(!records(b, "team", "t").await.contains_key("after"));
}

/// An address on loopback where nothing listens.
fn dead_address() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").to_string()
}

/// Writes `n` records named `{prefix}-{i}` on the agent behind `cl`.
async fn write_many(cl: &Client, prefix: &str, n: usize) {
    put_numbered(cl, "shared", "r", prefix, n)
        .await
        .expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spokes_sync_through_a_hub_then_directly_without_duplicates() {
    let hub = TestAgent::start_with(AGENT, &["--role", "hub"])
        .await
        .expect("hub");
    let h = hub.client().await.expect("client");
    h.create_mesh().await.expect("create mesh");
    let hub_addr = h.mesh_status().await.expect("status").listen;
    let code = h.invite(Some(600), Some(2)).await.expect("invite").code;

    // Each spoke tells the others an address where nothing listens, so the
    // two reach each other only through the hub until one is given the
    // other's real address.
    let dead = dead_address();
    let mut spokes = Vec::new();
    for _ in 0..2 {
        let agent = TestAgent::start_with(AGENT, &["--announce", &dead, "--peer", &hub_addr])
            .await
            .expect("spoke");
        let cl = agent.client().await.expect("client");
        cl.join(&code).await.expect("join through the hub");
        spokes.push((agent, cl));
    }
    let (a, b) = (&spokes[0].1, &spokes[1].1);
    wait_until("the hub to link both spokes", || connected(&h, 2))
        .await
        .expect("hub linked");
    for cl in [a, b] {
        wait_until("a spoke to link the hub", || connected(cl, 1))
            .await
            .expect("spoke linked");
    }
    let b_status = b.mesh_status().await.expect("status");

    // Through the hub only.
    a.db("shared").create().await.expect("create");
    write_many(a, "a1", 20).await;
    wait_until("the database and a's writes to reach b", || async {
        records(b, "shared", "r").await.len() == 20
    })
    .await
    .expect("relayed to b");
    write_many(b, "b1", 20).await;
    wait_until("b's writes to reach a", || async {
        records(a, "shared", "r").await.len() == 40
    })
    .await
    .expect("relayed to a");
    // A shows B as reached through the hub, not as offline.
    let hub_name = h.mesh_status().await.expect("status").name;
    wait_until("a to show b relayed via the hub", || async {
        a.peers().await.is_ok_and(|ps| {
            ps.iter().any(|p| {
                p.device_id == b_status.device_id
                    && p.state == "relayed"
                    && p.via.as_deref() == Some(hub_name.as_str())
            })
        })
    })
    .await
    .expect("relayed state");
    assert!(
        records(&h, "shared", "r").await.len() == 40,
        "the hub keeps the relayed database"
    );

    // A direct link appears beside the hub path.
    a.add_peer(&b_status.listen).await.expect("peer add");
    for cl in [a, b] {
        wait_until("the spokes to link directly", || connected(cl, 2))
            .await
            .expect("direct link");
    }
    write_many(a, "a2", 20).await;
    write_many(b, "b2", 20).await;
    write_many(a, "last", 1).await;
    wait_until("both spokes and the hub to agree", || async {
        let (x, y, z) = tokio::join!(
            records(a, "shared", "r"),
            records(b, "shared", "r"),
            records(&h, "shared", "r")
        );
        x.len() == 81 && x == y && y == z
    })
    .await
    .expect("converged");

    // B's change log holds every write exactly once, whichever path (or
    // both) brought it.
    let a_id = a.mesh_status().await.expect("status").device_id;
    let mut sub = b
        .db("shared")
        .subscribe_from(None, Some(0))
        .await
        .expect("subscribe");
    let mut seen = BTreeMap::new();
    while !seen.contains_key(&(a_id.clone(), 41)) {
        let change = tokio::time::timeout(blazedb_tests::DEADLINE, sub.next())
            .await
            .expect("the change log to replay")
            .expect("subscription open");
        *seen.entry((change.origin, change.seq)).or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "changes applied twice on b: {dups:?}");
    let from = |id: &str| seen.keys().filter(|(o, _)| o == id).count();
    assert_eq!(from(&a_id), 41, "a's writes in b's log");
    assert_eq!(from(&b_status.device_id), 40, "b's own writes in its log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_device_is_reported_by_its_peers_and_both_copies_writes_arrive() {
    let (mut agents, clients) = mesh_of(2).await;
    let b = &clients[1];
    let a_id = clients[0].mesh_status().await.expect("status").device_id;
    clients[0].db("notes").create().await.expect("create");

    // A copy of A's whole data directory (key, mesh, databases) starts on
    // a port of its own beside A, as after cloning a disk.
    agents[0].stop().await.expect("stop a");
    let mut clone = TestAgent::stopped(AGENT, &[]).expect("clone");
    copy_dir(&agents[0].data_dir(), &clone.data_dir());
    agents[0].restart().await.expect("restart a");
    clone.restart().await.expect("start the clone");

    // Detection counts sessions pushed out again and again within a
    // minute (`mesh::clones`), as each copy dials back after its backoff:
    // on a loaded machine that takes longer than the usual deadline.
    wait_within(
        "b to report a running in two places",
        Duration::from_secs(60),
        || async {
            b.peers().await.is_ok_and(|ps| {
                ps.iter().any(|p| {
                    p.device_id == a_id
                        && p.warning
                            .as_deref()
                            .is_some_and(|w| w.contains("two machines"))
                })
            })
        },
    )
    .await
    .expect("clone reported");

    // Both copies write at once: each in a write incarnation of its own
    // (the clone's store is a copy, so it took a new one), so neither's
    // writes are taken for the other's, and every replica gets all ten.
    let (a, c) = (
        agents[0].client().await.expect("a"),
        clone.client().await.expect("clone"),
    );
    let a_status = a.status().await.expect("a status");
    assert_eq!(a_status.new_incarnation, None, "a stopped cleanly");
    let c_status =
        blazedb_tests::assert_new_incarnation(&c, "copied or restored", "the clone").await;
    assert_ne!(a_status.incarnation, c_status.incarnation);
    let (wa, wc) = tokio::join!(
        put_numbered(&a, "notes", "n", "original", 5),
        put_numbered(&c, "notes", "n", "clone", 5)
    );
    wa.expect("writes on a");
    wc.expect("writes on the clone");
    wait_within(
        "b to hold the writes of both copies",
        Duration::from_secs(60),
        || async { records(b, "notes", "n").await.len() == 10 },
    )
    .await
    .expect("no write of either copy lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_restored_from_a_backup_loses_no_write_and_reuses_no_seq() {
    let (mut agents, clients) = mesh_of(2).await;
    let b = &clients[1];
    let a = &clients[0];
    a.db("notes").create().await.expect("create");
    put_numbered(a, "notes", "n", "before", 3)
        .await
        .expect("writes before the backup");
    wait_until("b to hold a's first writes", || async {
        records(b, "notes", "n").await.len() == 3
    })
    .await
    .expect("synced");

    // A backup of A's data directory, taken while it is stopped.
    agents[0].stop().await.expect("stop a");
    let backup = tempfile::tempdir().expect("backup dir");
    copy_dir(&agents[0].data_dir(), backup.path());

    // A writes on, and B takes those writes.
    agents[0].restart().await.expect("restart a");
    let a = agents[0].client().await.expect("client a");
    put_numbered(&a, "notes", "n", "after", 3)
        .await
        .expect("writes after the backup");
    wait_until("b to hold a's later writes", || async {
        records(b, "notes", "n").await.len() == 6
    })
    .await
    .expect("synced");

    // A's disk goes back to the backup, and A writes again while offline
    // from B's point of view until it links again.
    agents[0].stop().await.expect("stop a again");
    agents[0].restore_data_dir(backup.path());
    agents[0].restart().await.expect("start the restored a");
    let a = agents[0].client().await.expect("client a");
    blazedb_tests::assert_new_incarnation(&a, "copied or restored", "the restore was not noticed")
        .await;
    put_numbered(&a, "notes", "n", "restored", 3)
        .await
        .expect("writes after the restore");

    // Every replica ends with every write: B gets the restored A's new
    // writes (their seqs are new), A gets back the writes it lost.
    for (name, cl) in [("a", &a), ("b", b)] {
        wait_until(&format!("{name} to hold all nine writes"), || async {
            records(cl, "notes", "n").await.len() == 9
        })
        .await
        .expect("no acknowledged write lost");
    }
    assert_eq!(
        records(&a, "notes", "n").await,
        records(b, "notes", "n").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inviter_back_on_a_new_port_dials_the_device_it_invited() {
    // The invited device never learns the inviter's new port; only the
    // inviter, which got the device's addresses when it joined, can dial.
    let (mut agents, _) = mesh_of(2).await;
    agents[0].stop().await.expect("stop the inviter");
    agents[0].restart().await.expect("restart on a new port");
    let a = agents[0].client().await.expect("client");
    wait_until("the inviter to link with the device again", || {
        connected(&a, 1)
    })
    .await
    .expect("the inviter dialled the device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_dropped_here_stays_dropped_until_made_here_again() {
    let (mut agents, mut cls) = mesh_of(2).await;
    cls[0].db("notes").create().await.expect("create");
    put_numbered(&cls[0], "notes", "r", "n", 5)
        .await
        .expect("put");
    wait_until("b to hold the notes", || async {
        records(&cls[1], "notes", "r").await.len() == 5
    })
    .await
    .expect("synced");

    assert!(cls[1].db("notes").drop_db().await.expect("drop"));
    agents[1].stop().await.expect("stop");
    agents[1].restart().await.expect("restart");
    cls[1] = agents[1].client().await.expect("client");
    // a writes on, and makes a database b has never had: once that one
    // arrives, b has heard a announce the dropped one too.
    put_numbered(&cls[0], "notes", "r", "later", 1)
        .await
        .expect("put");
    cls[0].db("marker").create().await.expect("create");
    put_numbered(&cls[0], "marker", "r", "m", 1)
        .await
        .expect("put");
    wait_until("b to take a's new database", || async {
        records(&cls[1], "marker", "r").await.len() == 1
    })
    .await
    .expect("marker");
    let names: Vec<String> = cls[1]
        .databases()
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(!names.contains(&"notes".to_owned()), "{names:?}");
    assert_eq!(
        records(&cls[0], "notes", "r").await.len(),
        6,
        "a keeps its own"
    );

    // Made here again, it syncs again.
    cls[1].db("notes").create().await.expect("create again");
    wait_until("b to hold the notes again", || async {
        records(&cls[1], "notes", "r").await.len() == 6
    })
    .await
    .expect("synced again");
}
