//! Who may change the mesh, as users meet it: only admins remove, rename
//! and promote devices (named by id, id prefix or name); a device removed
//! while it was off learns it the moment it starts, forgets the mesh and
//! keeps its data; a device that leaves is gone for everyone; joining
//! twice, or a second mesh, is refused clearly; static peers are listed
//! with their errors and can be removed.

use std::process::Command;
use std::time::Duration;

use blazedb::Client;
use blazedb_tests::{
    TestAgent, connected, join_mesh, records, start_mesh, wait_until, wait_within,
};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");
const CTL: &str = env!("CARGO_BIN_EXE_blazectl-test");

/// Starts `n` agents; the first creates a mesh, the others join it.
async fn mesh_of(n: usize) -> (Vec<TestAgent>, Vec<Client>) {
    start_mesh(AGENT, n).await.expect("full mesh")
}

async fn id_of(cl: &Client) -> String {
    cl.mesh_status().await.expect("status").device_id
}

/// The peer `device` as `cl` sees it.
async fn peer(cl: &Client, device: &str) -> Option<blazedb::api::PeerInfo> {
    cl.peers()
        .await
        .ok()?
        .into_iter()
        .find(|p| p.device_id == device)
}

/// Runs `blazectl` against `agent`; returns (success, stdout + stderr).
fn blazectl(agent: &TestAgent, args: &[&str]) -> (bool, String) {
    let out = Command::new(CTL)
        .arg("--socket")
        .arg(agent.socket())
        .args(args)
        .output()
        .expect("run blazectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_change_the_mesh_and_devices_are_named_by_prefix_or_name() {
    let (agents, clients) = mesh_of(3).await;
    let (a, b, c) = (&clients[0], &clients[1], &clients[2]);
    let (a_id, b_id, c_id) = (id_of(a).await, id_of(b).await, id_of(c).await);

    let s = a.mesh_status().await.expect("status");
    assert!(s.admin, "the creator is not an admin");
    let s = b.mesh_status().await.expect("status");
    assert!(!s.admin);
    let admins: Vec<&str> = s.admins.iter().map(|m| m.device_id.as_str()).collect();
    assert_eq!(admins, [a_id.as_str()], "b sees the wrong admins");

    // A member that is no admin can change nothing, on the CLI too.
    let (ok, text) = blazectl(&agents[1], &["mesh", "remove", &c_id]);
    assert!(!ok, "a non-admin removed a device: {text}");
    assert!(text.contains("only an admin"), "{text}");
    assert!(
        text.contains(&a_id),
        "the error should name the admins: {text}"
    );
    for err in [
        b.set_device(&c_id, Some("mine"), None)
            .await
            .expect_err("rename"),
        b.set_admin(&b_id, true).await.expect_err("promote itself"),
        b.invite(Some(60), Some(1)).await.expect_err("invite"),
    ] {
        assert!(err.to_string().contains("only an admin"), "{err}");
    }
    assert_eq!(
        peer(a, &c_id).await.map(|p| p.state).as_deref(),
        Some("connected")
    );

    // The admin renames c by 7 characters of its id; everyone learns it.
    a.set_device(&c_id[..7], Some("phone"), Some(vec!["ios".into()]))
        .await
        .expect("rename by prefix");
    wait_until("b to see c renamed", || async {
        peer(b, &c_id)
            .await
            .is_some_and(|p| p.name == "phone" && p.teams == ["ios"])
    })
    .await
    .expect("rename spread");
    wait_until("c to see its own record", || async {
        c.mesh_status()
            .await
            .is_ok_and(|s| s.name == "phone" && s.teams == ["ios"])
    })
    .await
    .expect("c learned its name");
    let (ok, text) = blazectl(
        &agents[0],
        &["mesh", "device", "phone", "set", "--teams", "ios,web"],
    );
    assert!(ok, "{text}");
    assert_eq!(
        peer(a, &c_id).await.map(|p| p.teams),
        Some(vec!["ios".to_owned(), "web".to_owned()])
    );

    // Two devices named alike: the name is ambiguous and both are listed.
    a.set_device(&b_id, Some("phone"), None)
        .await
        .expect("rename b");
    let err = a.remove_device("phone").await.expect_err("ambiguous");
    let msg = err.to_string();
    assert!(
        msg.contains("more than one") && msg.contains(&b_id) && msg.contains(&c_id),
        "{msg}"
    );
    let err = a.remove_device("ab").await.expect_err("too short");
    assert!(err.to_string().contains("at least 7"), "{err}");
    let err = a.remove_device("zzzzzzzzz").await.expect_err("nobody");
    assert!(err.to_string().contains("no member"), "{err}");

    // A second admin can act once the record making it one reached it.
    let (ok, text) = blazectl(&agents[0], &["mesh", "admin", "add", &b_id[..9]]);
    assert!(ok, "{text}");
    wait_until("b to learn it is an admin", || async {
        b.mesh_status().await.is_ok_and(|s| s.admin)
    })
    .await
    .expect("promotion spread");
    b.set_device(&c_id, Some("tablet"), None)
        .await
        .expect("the new admin renames c");
    wait_until("a to see b's change", || async {
        peer(a, &c_id).await.is_some_and(|p| p.name == "tablet")
    })
    .await
    .expect("b's record accepted by a");

    // The mesh keeps one admin at least.
    a.set_admin(&b_id, false).await.expect("demote b");
    let err = a.set_admin(&a_id, false).await.expect_err("last admin");
    assert!(err.to_string().contains("only admin"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_removed_while_offline_learns_it_at_start_and_keeps_its_data() {
    let (mut agents, clients) = mesh_of(3).await;
    let (a, b) = (&clients[0], &clients[1]);
    let (a_id, c_id) = (id_of(a).await, id_of(&clients[2]).await);
    a.db("team").create().await.expect("create");
    let team = |cl: &Client| cl.db("team").collection("t");
    team(a)
        .put("before", &serde_json::json!({ "v": 1 }))
        .await
        .expect("put");
    wait_until("c to get the first record", || async {
        records(&clients[2], "team", "t")
            .await
            .contains_key("before")
    })
    .await
    .expect("synced");
    let epoch = a.mesh_status().await.expect("status").key_epoch;

    agents[2].stop().await.expect("stop c");
    let s = a.remove_device(&c_id).await.expect("remove c while off");
    assert!(s.key_epoch > epoch, "the secret was not rotated");
    wait_until("b to take the new secret", || async {
        b.mesh_status()
            .await
            .is_ok_and(|x| x.key_epoch == s.key_epoch)
    })
    .await
    .expect("rotation reached b");
    team(a)
        .put("after", &serde_json::json!({ "v": 2 }))
        .await
        .expect("put");

    // C starts, dials its old peers, and is told within 5 s.
    agents[2].restart().await.expect("start c");
    let c = agents[2].client().await.expect("client c");
    wait_within(
        "c to learn it was removed",
        Duration::from_secs(5),
        || async {
            c.mesh_status().await.is_ok_and(|s| {
                s.mesh.is_none()
                    && s.departed
                        .as_ref()
                        .is_some_and(|d| !d.left && d.by.device_id == a_id)
            })
        },
    )
    .await
    .expect("removal learned");
    let (_, text) = blazectl(&agents[2], &["mesh", "status"]);
    assert!(text.contains("removed from mesh"), "{text}");
    let kept = records(&c, "team", "t").await;
    assert!(kept.contains_key("before"), "c lost its data");
    assert!(!kept.contains_key("after"), "c got data after its removal");
    assert!(c.peers().await.expect("peers").is_empty());

    // A fresh invite does not bring it back: the inviter says why.
    let code = a.invite(Some(60), Some(1)).await.expect("invite").code;
    let err = c.join(&code).await.expect_err("a removed device rejoined");
    assert!(err.to_string().contains("removed"), "{err}");

    // Nothing flows either way from now on.
    team(&c)
        .put("from-c", &serde_json::json!({ "v": 3 }))
        .await
        .expect("local write on c");
    team(a)
        .put("last", &serde_json::json!({ "v": 4 }))
        .await
        .expect("put");
    wait_until("b to get a's last write", || async {
        records(b, "team", "t").await.contains_key("last")
    })
    .await
    .expect("a and b still sync");
    assert!(!records(a, "team", "t").await.contains_key("from-c"));
    assert!(!records(&c, "team", "t").await.contains_key("last"));
    assert_eq!(
        peer(a, &c_id).await.map(|p| p.state).as_deref(),
        Some("removed")
    );
    assert!(connected(&c, 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_with_a_new_key_and_the_old_secret_is_no_member() {
    let (mut agents, clients) = mesh_of(3).await;
    let a = &clients[0];
    let c_id = id_of(&clients[2]).await;
    a.db("team").create().await.expect("create");
    agents[2].stop().await.expect("stop c");
    a.remove_device(&c_id).await.expect("remove c");

    // C keeps its mesh.json (the old secret and members) but makes itself
    // a new identity.
    std::fs::remove_file(agents[2].data_dir().join("device.key")).expect("move the key away");
    agents[2].restart().await.expect("start c");
    let c = agents[2].client().await.expect("client");
    let s = c.mesh_status().await.expect("status");
    assert_ne!(s.device_id, c_id, "no new identity");
    assert!(
        s.mesh.is_none(),
        "a copied mesh.json made c a member: {s:?}"
    );
    a.db("team")
        .collection("t")
        .put("new", &serde_json::json!({ "v": 1 }))
        .await
        .expect("put");
    wait_until("b to get the write", || async {
        records(&clients[1], "team", "t").await.contains_key("new")
    })
    .await
    .expect("a and b sync");
    for cl in [a, &clients[1]] {
        assert!(
            peer(cl, &s.device_id).await.is_none(),
            "a member knows the new identity"
        );
    }
    assert!(records(&c, "team", "t").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_and_joining_twice() {
    let (_agents, clients) = mesh_of(2).await;
    let (a, b) = (&clients[0], &clients[1]);
    let b_id = id_of(b).await;
    a.db("notes").create().await.expect("create");
    a.db("notes")
        .collection("n")
        .put("x", &serde_json::json!({ "v": 1 }))
        .await
        .expect("put");
    wait_until("b to get the record", || async {
        records(b, "notes", "n").await.contains_key("x")
    })
    .await
    .expect("synced");

    // Joining the same mesh again is no change; another mesh is refused.
    let code = a.invite(Some(60), Some(1)).await.expect("invite").code;
    let s = b.join(&code).await.expect("join again");
    assert!(s.already_member, "{s:?}");
    let other = TestAgent::start(AGENT).await.expect("agent");
    let x = other.client().await.expect("client");
    x.create_mesh().await.expect("another mesh");
    let code_x = x.invite(Some(60), Some(2)).await.expect("invite").code;
    let err = b.join(&code_x).await.expect_err("a second mesh");
    assert!(err.to_string().contains("already in mesh"), "{err}");

    // B leaves: A sees it gone and replaces the secret; B keeps its data.
    let epoch = a.mesh_status().await.expect("status").key_epoch;
    let s = b.leave_mesh().await.expect("leave");
    assert!(s.mesh.is_none());
    assert!(s.departed.as_ref().is_some_and(|d| d.left), "{s:?}");
    wait_until("a to see b gone", || async {
        peer(a, &b_id).await.is_some_and(|p| p.state == "removed")
            && a.mesh_status().await.is_ok_and(|s| s.key_epoch > epoch)
    })
    .await
    .expect("leave spread");
    assert!(records(b, "notes", "n").await.contains_key("x"));

    // Now B may join another mesh, whose only admin may not leave it.
    b.join(&code_x).await.expect("join the other mesh");
    let err = x.leave_mesh().await.expect_err("the last admin left");
    assert!(err.to_string().contains("only admin"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_peers_are_listed_with_their_errors_and_removed() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let cl = agent.client().await.expect("client");
    cl.create_mesh().await.expect("mesh");
    let nowhere = "nosuchhost.invalid:7340";
    assert!(cl.add_peer(nowhere).await.expect("add"));
    assert!(
        !cl.add_peer(nowhere).await.expect("add twice"),
        "added twice"
    );
    let (ok, text) = blazectl(&agent, &["peer", "add", nowhere]);
    assert!(ok && text.contains("already"), "{text}");
    wait_until("the failed dial to show", || async {
        cl.static_peers().await.is_ok_and(|ps| {
            ps.iter().any(|p| {
                p.addr == nowhere
                    && p.state == "unreachable"
                    && p.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("resolve"))
            })
        })
    })
    .await
    .expect("error listed");
    let s = cl.mesh_status().await.expect("status");
    assert!(
        s.static_peers
            .iter()
            .any(|p| p.addr == nowhere && p.last_error.is_some()),
        "{s:?}"
    );
    let (ok, text) = blazectl(&agent, &["peer", "list"]);
    assert!(
        ok && text.contains(nowhere) && text.contains("resolve"),
        "{text}"
    );

    assert!(cl.remove_peer(nowhere).await.expect("remove"));
    assert!(!cl.remove_peer(nowhere).await.expect("remove again"));
    let (ok, text) = blazectl(&agent, &["peer", "remove", nowhere]);
    assert!(!ok && text.contains("not a static peer"), "{text}");
    assert!(cl.static_peers().await.expect("list").is_empty());
}

/// A loopback address with a UDP port nothing listens on now.
fn free_addr() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_devices_writes_during_a_partition_do_not_survive_the_heal() {
    // Fixed ports, so devices that restart find each other again.
    let mut agents = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let addr = free_addr();
        let a = TestAgent::start_with(AGENT, &["--listen", &addr])
            .await
            .expect("agent");
        clients.push(a.client().await.expect("client"));
        agents.push(a);
    }
    join_mesh(&clients[0], &[&clients[1], &clients[2]])
        .await
        .expect("full mesh");
    let (a, g, h) = (&clients[0], &clients[1], &clients[2]);
    let h_id = id_of(h).await;
    a.db("team").create().await.expect("create");
    let team = |cl: &Client| cl.db("team").collection("t");
    team(a)
        .put("doc", &serde_json::json!({ "title": "from a" }))
        .await
        .expect("put");
    wait_until("the database to reach h", || async {
        records(h, "team", "t").await.contains_key("doc")
    })
    .await
    .expect("synced to h");
    team(h)
        .put("early", &serde_json::json!({ "v": 1 }))
        .await
        .expect("put");
    for cl in [a, g, h] {
        wait_until("both records everywhere", || async {
            let r = records(cl, "team", "t").await;
            r.contains_key("doc") && r.contains_key("early")
        })
        .await
        .expect("synced");
    }

    // G and H are cut off from A (both off while A acts); A removes H.
    agents[1].stop().await.expect("stop g");
    agents[2].stop().await.expect("stop h");
    a.remove_device(&h_id).await.expect("remove h");
    agents[0].stop().await.expect("stop a");

    // G and H meet without A: H writes, and G, not knowing, takes it all.
    agents[1].restart().await.expect("start g");
    agents[2].restart().await.expect("start h");
    let (g, h) = (
        agents[1].client().await.expect("g"),
        agents[2].client().await.expect("h"),
    );
    team(&h)
        .put("doc", &serde_json::json!({ "title": "from h, late" }))
        .await
        .expect("late overwrite");
    team(&h)
        .put("late", &serde_json::json!({ "v": 2 }))
        .await
        .expect("late record");
    wait_until("g to take h's late writes", || async {
        records(&g, "team", "t").await.contains_key("late")
    })
    .await
    .expect("g took them");
    agents[2].stop().await.expect("stop h");

    // A comes back: the heal undoes H's late writes on G, not A's state.
    agents[0].restart().await.expect("start a");
    let a = agents[0].client().await.expect("a");
    wait_until(
        "a and g to end identical without h's late writes",
        || async {
            let (x, y) = tokio::join!(records(&a, "team", "t"), records(&g, "team", "t"));
            x == y
                && !x.contains_key("late")
                && x.get("doc")
                    .is_some_and(|d| d["title"] == blazedb::Value::String("from a".into()))
        },
    )
    .await
    .expect("late writes undone");
    let r = records(&a, "team", "t").await;
    assert!(
        r.contains_key("early"),
        "h's write from before its removal was lost"
    );
}
