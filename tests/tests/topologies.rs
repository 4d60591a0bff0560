//! Who syncs what with whom, and changing it while agents run: a
//! push-only database reaching a collector with its creator's settings,
//! writes held back by `pull` leaving as soon as sync is back on, a
//! conflict priority changed at run time, and the shapes per-database
//! peer lists make of one mesh: a chain, a broadcast, an aggregation, and
//! a star turned into a mesh live; and the same shapes set mesh-wide by an
//! admin's signed links, which a device's own list overrides.

use std::time::Duration;

use blazedb::{Client, Value};
use blazedb_proto::api::{DbPeer, DbSettings, Durability, SyncMode};
use blazedb_proto::topology::DbLink;
use blazedb_tests::{
    TestAgent, blazectl_ok, put_numbered, records, start_mesh, wait_until, wait_within,
};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");
const CTL: &str = env!("CARGO_BIN_EXE_blazectl-test");

async fn field(cl: &Client, db: &str, id: &str) -> Option<Value> {
    records(cl, db, "r").await.get(id)?.get("x").cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_only_database_reaches_a_collector_with_its_settings() {
    let (_agents, cls) = start_mesh(AGENT, 2).await.expect("mesh");
    let (device, collector) = (&cls[0], &cls[1]);
    let settings = DbSettings {
        sync_mode: SyncMode::Push,
        durability: Durability::Buffered,
        priority: 7,
        ..DbSettings::default()
    };
    device
        .db("metrics")
        .create_with(settings, false)
        .await
        .expect("create");
    put_numbered(device, "metrics", "r", "m", 10)
        .await
        .expect("put");
    wait_until("the metrics to reach the collector", || async {
        records(collector, "metrics", "r").await.len() == 10
    })
    .await
    .expect("collected");
    let info = collector.db("metrics").info().await.expect("info");
    assert_eq!(info.settings.durability, Durability::Buffered);
    assert_eq!(info.settings.priority, 7);
    assert_eq!(
        info.settings.sync_mode,
        SyncMode::Sync,
        "it takes and gives"
    );

    // The device sends and takes nothing back.
    let me = collector.mesh_status().await.expect("status").device_id;
    let t = device.topology().await.expect("topology");
    let link = t
        .links
        .iter()
        .find(|l| l.device_id == me)
        .and_then(|l| l.databases.iter().find(|d| d.db == "metrics"))
        .expect("the link carries metrics");
    assert!(link.sending && !link.taking, "{link:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_held_back_by_pull_leave_within_a_second_of_sync_on() {
    let (_agents, cls) = start_mesh(AGENT, 2).await.expect("mesh");
    let (a, b) = (&cls[0], &cls[1]);
    a.db("notes").create().await.expect("create");
    put_numbered(a, "notes", "r", "first", 1)
        .await
        .expect("put");
    wait_until("b to have the database", || async {
        records(b, "notes", "r").await.len() == 1
    })
    .await
    .expect("synced");

    a.db("notes")
        .set_sync_mode(SyncMode::Pull)
        .await
        .expect("pull");
    put_numbered(a, "notes", "r", "held", 5).await.expect("put");
    // b's writes still arrive at a, which pulls.
    put_numbered(b, "notes", "r", "from-b", 1)
        .await
        .expect("put");
    wait_until("a to pull b's write", || async {
        records(a, "notes", "r").await.len() == 7
    })
    .await
    .expect("pulled");
    assert_eq!(
        records(b, "notes", "r").await.len(),
        2,
        "a held its writes back"
    );

    a.db("notes")
        .set_sync_mode(SyncMode::Sync)
        .await
        .expect("on");
    wait_within(
        "the held writes to reach b",
        Duration::from_secs(1),
        || async { records(b, "notes", "r").await.len() == 7 },
    )
    .await
    .expect("within a second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_set_at_run_time_wins_the_next_conflicts() {
    let (_agents, cls) = start_mesh(AGENT, 2).await.expect("mesh");
    let (hub_like, device) = (&cls[0], &cls[1]);
    hub_like.db("shared").create().await.expect("create");
    let info = hub_like
        .db("shared")
        .set_settings(Some(5), None)
        .await
        .expect("set priority");
    assert_eq!(info.settings.priority, 5);
    let too_high = hub_like.db("shared").set_settings(Some(200), None).await;
    assert!(
        too_high.is_err_and(|e| e.to_string().contains("use 0 to 127")),
        "a priority over 127 is refused"
    );
    let put = |cl: &Client, x: i64| {
        let coll = cl.db("shared").collection("r");
        async move { coll.put("k", &serde_json::json!({ "x": x })).await }
    };
    put(hub_like, 1).await.expect("put");
    wait_until("the device to see x = 1", || async {
        field(device, "shared", "k").await == Some(Value::Int(1))
    })
    .await
    .expect("synced");
    // A later write of lower priority loses everywhere.
    put(device, 2).await.expect("put");
    let hub = hub_like.mesh_status().await.expect("status").device_id;
    wait_until("the device's write to reach the other", || async {
        device.topology().await.is_ok_and(|t| {
            t.links.iter().any(|l| {
                l.device_id == hub
                    && l.databases
                        .iter()
                        .any(|d| d.db == "shared" && d.lag_ops == Some(0))
            })
        })
    })
    .await
    .expect("acknowledged");
    for cl in [hub_like, device] {
        assert_eq!(field(cl, "shared", "k").await, Some(Value::Int(1)));
    }
}

/// Three agents in one mesh, each linked with both others, with `db`
/// created on each (so no peer list is ever bypassed by a creation), and
/// their device ids.
async fn three_with(db: &str) -> (Vec<TestAgent>, Vec<Client>, Vec<String>) {
    let (agents, cls) = start_mesh(AGENT, 3).await.expect("mesh");
    let mut ids = Vec::new();
    for cl in &cls {
        cl.db(db).create_if_missing().await.expect("create");
        ids.push(cl.mesh_status().await.expect("status").device_id);
    }
    (agents, cls, ids)
}

fn only(device: &str, sync_mode: SyncMode) -> Option<Vec<DbPeer>> {
    Some(vec![DbPeer {
        device: device.to_owned(),
        sync_mode,
    }])
}

/// What `cl`'s link to `peer` carries of `db`.
async fn carried(cl: &Client, peer: &str, db: &str) -> DbLink {
    let t = cl.topology().await.expect("topology");
    t.links
        .into_iter()
        .find(|l| l.device_id == peer)
        .and_then(|l| l.databases.into_iter().find(|d| d.db == db))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_carries_writes_end_to_end_through_its_middle() {
    let (agents, cls, ids) = three_with("log").await;
    let (a, b, c) = (&cls[0], &cls[1], &cls[2]);
    // a - b - c: the ends sync `log` with the middle only; c's list is set
    // with blazectl, naming b by an id prefix.
    a.db("log")
        .set_peers(only(&ids[1], SyncMode::Sync))
        .await
        .expect("a");
    let ctl = |args: &[&str]| blazectl_ok(CTL, &agents[2].socket(), args);
    ctl(&["db", "peers", "log", "set", &ids[1][..12]]);
    let shown: serde_json::Value =
        serde_json::from_str(&ctl(&["--json", "db", "peers", "log", "show"])).expect("json");
    assert_eq!(shown["peers"][0]["device"], ids[1].as_str(), "{shown}");
    assert_eq!(shown["peers"][0]["sync_mode"], "sync");
    assert!(ctl(&["db", "peers", "log"]).contains(&ids[1]));
    put_numbered(a, "log", "r", "a", 20).await.expect("put");
    put_numbered(c, "log", "r", "c", 20).await.expect("put");
    for (name, cl) in [("a", a), ("b", b), ("c", c)] {
        wait_until(&format!("{name} to hold both ends' writes"), || async {
            records(cl, "log", "r").await.len() == 40
        })
        .await
        .expect("converged");
    }
    // Nothing went between the ends directly.
    let (a_to_c, c_to_a) = (
        carried(a, &ids[2], "log").await,
        carried(c, &ids[0], "log").await,
    );
    assert!(
        !a_to_c.sending && !a_to_c.taking && a_to_c.ops_out == 0,
        "{a_to_c:?}"
    );
    assert!(
        !c_to_a.sending && !c_to_a.taking && c_to_a.ops_in == 0,
        "{c_to_a:?}"
    );
    assert!(carried(b, &ids[0], "log").await.ops_in >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_devices_that_only_pull() {
    let (_agents, cls, ids) = three_with("news").await;
    let (source, d1, d2) = (&cls[0], &cls[1], &cls[2]);
    for d in [d1, d2] {
        d.db("news")
            .set_peers(only(&ids[0], SyncMode::Pull))
            .await
            .expect("pull");
    }
    put_numbered(source, "news", "r", "s", 10)
        .await
        .expect("put");
    // d1 writes locally; it never leaves d1.
    put_numbered(d1, "news", "r", "d1", 1).await.expect("put");
    put_numbered(source, "news", "r", "later", 1)
        .await
        .expect("put");
    for d in [d1, d2] {
        wait_until("a device to pull the source's news", || async {
            records(d, "news", "r").await.contains_key("later-0")
        })
        .await
        .expect("broadcast");
    }
    assert_eq!(
        records(source, "news", "r").await.len(),
        11,
        "the source took nothing"
    );
    assert_eq!(
        records(d2, "news", "r").await.len(),
        11,
        "d2 got only the source's"
    );
    assert_eq!(records(d1, "news", "r").await.len(), 12);
    let up = carried(d1, &ids[0], "news").await;
    assert!(up.taking && !up.sending && up.ops_out == 0, "{up:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_push_to_a_collector_and_get_nothing_back() {
    let (_agents, cls, ids) = three_with("metrics").await;
    let (collector, d1, d2) = (&cls[0], &cls[1], &cls[2]);
    for d in [d1, d2] {
        d.db("metrics")
            .set_peers(only(&ids[0], SyncMode::Push))
            .await
            .expect("push");
    }
    // The collector learns that the devices take nothing before anything
    // is written: one device's writes would otherwise pass on to the other.
    for id in [&ids[1], &ids[2]] {
        wait_until("the collector to stop sending to a device", || async {
            let l = carried(collector, id, "metrics").await;
            l.taking && !l.sending
        })
        .await
        .expect("told");
    }
    put_numbered(d1, "metrics", "r", "d1", 5)
        .await
        .expect("put");
    put_numbered(d2, "metrics", "r", "d2", 5)
        .await
        .expect("put");
    put_numbered(collector, "metrics", "r", "c", 1)
        .await
        .expect("put");
    wait_until("the collector to hold every device's metrics", || async {
        records(collector, "metrics", "r").await.len() == 11
    })
    .await
    .expect("collected");
    for (d, peer_of_other) in [(d1, &ids[2]), (d2, &ids[1])] {
        let down = carried(d, &ids[0], "metrics").await;
        assert!(down.sending && !down.taking && down.ops_in == 0, "{down:?}");
        assert_eq!(carried(d, peer_of_other, "metrics").await.ops_in, 0);
        assert_eq!(
            records(d, "metrics", "r").await.len(),
            5,
            "a device holds its own only"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_becomes_a_mesh_while_it_runs() {
    let (_agents, cls, ids) = three_with("live").await;
    let (a, c) = (&cls[0], &cls[2]);
    a.db("live")
        .set_peers(only(&ids[1], SyncMode::Sync))
        .await
        .expect("a");
    c.db("live")
        .set_peers(only(&ids[1], SyncMode::Sync))
        .await
        .expect("c");
    put_numbered(a, "live", "r", "star", 10).await.expect("put");
    wait_until("c to get a's writes through b", || async {
        records(c, "live", "r").await.len() == 10
    })
    .await
    .expect("through the middle");
    assert_eq!(carried(c, &ids[0], "live").await.ops_in, 0);

    // Every member again, at once: a's next writes go to c directly.
    a.db("live").set_peers(None).await.expect("a");
    let info = c.db("live").set_peers(None).await.expect("c");
    assert_eq!(info.peers, None);
    put_numbered(a, "live", "r", "mesh", 10).await.expect("put");
    wait_until("a and c to sync directly", || async {
        let d = carried(c, &ids[0], "live").await;
        d.taking && d.sending && d.ops_in > 0 && records(c, "live", "r").await.len() == 20
    })
    .await
    .expect("direct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_climb_a_two_level_hub_hierarchy_and_come_down_in_another_region() {
    // A central hub, two regional hubs, and one device under each region.
    let central = TestAgent::start_with(AGENT, &["--role", "hub", "--name", "central"])
        .await
        .expect("central");
    let c = central.client().await.expect("client");
    c.create_mesh().await.expect("mesh");
    let central_addr = c.mesh_status().await.expect("status").listen;
    let code = c.invite(Some(600), Some(4)).await.expect("invite").code;
    let mut agents = vec![central];
    let mut cls = vec![c];
    for (name, role) in [
        ("north", "hub"),
        ("south", "hub"),
        ("n1", "device"),
        ("s1", "device"),
    ] {
        let a = TestAgent::start_with(
            AGENT,
            &["--role", role, "--name", name, "--peer", &central_addr],
        )
        .await
        .expect("agent");
        let cl = a.client().await.expect("client");
        cl.join(&code).await.expect("join");
        agents.push(a);
        cls.push(cl);
    }
    let mut ids = Vec::new();
    for cl in &cls {
        cl.db("inventory")
            .create_if_missing()
            .await
            .expect("create");
        ids.push(cl.mesh_status().await.expect("status").device_id);
    }
    let [central_id, north, south, n1, s1] = [0, 1, 2, 3, 4].map(|i| ids[i].clone());
    let peer = |d: &str| DbPeer {
        device: d.to_owned(),
        sync_mode: SyncMode::Sync,
    };
    // Each device syncs with its region's hub; each regional hub with its
    // devices and the central hub; the central hub with the regions.
    let lists = [
        (0, vec![peer(&north), peer(&south)]),
        (1, vec![peer(&central_id), peer(&n1)]),
        (2, vec![peer(&central_id), peer(&s1)]),
        (3, vec![peer(&north)]),
        (4, vec![peer(&south)]),
    ];
    for (i, list) in lists {
        cls[i]
            .db("inventory")
            .set_peers(Some(list))
            .await
            .expect("peers");
    }
    put_numbered(&cls[3], "inventory", "r", "n1", 10)
        .await
        .expect("put");
    put_numbered(&cls[4], "inventory", "r", "s1", 10)
        .await
        .expect("put");
    for (i, cl) in cls.iter().enumerate() {
        wait_until(
            &format!("agent {i} to hold both regions' writes"),
            || async { records(cl, "inventory", "r").await.len() == 20 },
        )
        .await
        .expect("converged");
    }
    // n1's writes went up through north only: no other link carried them.
    for other in [&central_id, &south, &s1] {
        let d = carried(&cls[3], other, "inventory").await;
        assert!(d.ops_out == 0 && d.ops_in == 0, "n1 and {other}: {d:?}");
    }
    assert!(carried(&cls[1], &central_id, "inventory").await.ops_out >= 10);
    assert!(carried(&cls[0], &south, "inventory").await.ops_out >= 10);
    assert_eq!(carried(&cls[0], &n1, "inventory").await.ops_out, 0);
    drop(agents);
}

/// A hub that made a mesh and two devices, `a` and `b`, joined to it by
/// invite, each with the database `tasks`: the agents (hub first), the
/// hub's client and the devices' clients.
async fn hub_with_spokes() -> (Vec<TestAgent>, Client, Vec<Client>) {
    let hub = TestAgent::start_with(AGENT, &["--role", "hub", "--name", "hub"])
        .await
        .expect("hub");
    let h = hub.client().await.expect("client");
    h.create_mesh().await.expect("mesh");
    let hub_addr = h.mesh_status().await.expect("status").listen;
    let code = h.invite(Some(600), Some(2)).await.expect("invite").code;
    let mut agents = vec![hub];
    let mut spokes = Vec::new();
    for name in ["a", "b"] {
        let agent = TestAgent::start_with(AGENT, &["--peer", &hub_addr, "--name", name])
            .await
            .expect("spoke");
        let cl = agent.client().await.expect("client");
        cl.join(&code).await.expect("join");
        agents.push(agent);
        spokes.push(cl);
    }
    for cl in std::iter::once(&h).chain(&spokes) {
        cl.db("tasks").create_if_missing().await.expect("create");
    }
    (agents, h, spokes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_spoke_becomes_a_mesh_while_it_runs() {
    let (agents, h, spokes) = hub_with_spokes().await;
    let hub_id = h.mesh_status().await.expect("status").device_id;
    let b_id = spokes[1].mesh_status().await.expect("status").device_id;
    // Hub and spoke: each spoke syncs `tasks` with the hub only.
    for cl in &spokes {
        cl.db("tasks")
            .set_peers(only(&hub_id, SyncMode::Sync))
            .await
            .expect("hub only");
    }
    let (a, b) = (&spokes[0], &spokes[1]);
    put_numbered(a, "tasks", "r", "spoke", 10)
        .await
        .expect("put");
    wait_until("b to get a's tasks through the hub", || async {
        records(b, "tasks", "r").await.len() == 10
    })
    .await
    .expect("through the hub");
    assert_eq!(carried(a, &b_id, "tasks").await.ops_out, 0);

    // A mesh: the spokes sync with every member, each other included.
    for cl in &spokes {
        cl.db("tasks").set_peers(None).await.expect("everyone");
    }
    put_numbered(a, "tasks", "r", "mesh", 10)
        .await
        .expect("put");
    wait_until("a to send b its tasks directly", || async {
        let d = carried(a, &b_id, "tasks").await;
        d.sending && d.ops_out > 0 && records(b, "tasks", "r").await.len() == 20
    })
    .await
    .expect("direct");
    // The hub still gets all, whichever link carries them first.
    wait_until("the hub to hold all 20", || async {
        records(&h, "tasks", "r").await.len() == 20
    })
    .await
    .expect("the hub still gets all");
    drop(agents);
}

/// Sets `tasks`'s links with `blazectl db rules set` on the admin's agent.
fn set_links(agent: &TestAgent, links: &str) {
    let file = agent.data_dir().join("links.toml");
    std::fs::write(&file, links).expect("write the rules file");
    let path = file.to_str().expect("utf-8 path");
    blazectl_ok(CTL, &agent.socket(), &["db", "rules", "tasks", "set", path]);
}

/// The version of `tasks`'s rules `cl` holds.
async fn links_version(cl: &Client) -> u64 {
    cl.db("tasks")
        .rules()
        .await
        .ok()
        .and_then(|r| r.rules)
        .map_or(0, |r| r.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_shapes_the_mesh_with_signed_links_and_a_device_may_override_them() {
    let (agents, h, spokes) = hub_with_spokes().await;
    let (hub, spoke_agents) = (&agents[0], &agents[1..]);
    let (a, b) = (&spokes[0], &spokes[1]);
    let hub_id = h.mesh_status().await.expect("status").device_id;
    let (a_id, b_id) = (
        a.mesh_status().await.expect("status").device_id,
        b.mesh_status().await.expect("status").device_id,
    );

    // Hub and spoke, in one link the hub's admin signs.
    set_links(
        hub,
        "[[link]]\ndevices = [\"*\"]\npeers = [\"role:hub\"]\nmode = \"on\"\n",
    );
    for cl in [a, b] {
        wait_until("the links to reach the spokes", || async {
            links_version(cl).await == 1
        })
        .await
        .expect("gossiped");
    }
    let shown = blazectl_ok(CTL, &spoke_agents[0].socket(), &["db", "peers", "tasks"]);
    assert!(
        shown.contains("as the mesh's links say")
            && shown.contains(&hub_id)
            && !shown.contains(&b_id),
        "{shown}"
    );
    let rules = blazectl_ok(
        CTL,
        &spoke_agents[0].socket(),
        &["db", "rules", "tasks", "show"],
    );
    assert!(
        rules.contains("this device syncs with: hub (on)"),
        "{rules}"
    );
    put_numbered(a, "tasks", "r", "spoke", 10)
        .await
        .expect("put");
    wait_until("b to get a's tasks through the hub", || async {
        records(b, "tasks", "r").await.len() == 10
    })
    .await
    .expect("through the hub");
    let direct = carried(a, &b_id, "tasks").await;
    assert!(!direct.sending && direct.ops_out == 0, "{direct:?}");

    // A broadcast: the devices now only pull from the hub.
    set_links(
        hub,
        "[[link]]\ndevices = [\"*\"]\npeers = [\"role:hub\"]\nmode = \"pull\"\n",
    );
    wait_until("a to stop sending to the hub", || async {
        let up = carried(a, &hub_id, "tasks").await;
        up.taking && !up.sending
    })
    .await
    .expect("pull only");
    put_numbered(a, "tasks", "r", "held", 1).await.expect("put");
    put_numbered(&h, "tasks", "r", "news", 1)
        .await
        .expect("put");
    for cl in [a, b] {
        wait_until("a spoke to pull the hub's news", || async {
            records(cl, "tasks", "r").await.contains_key("news-0")
        })
        .await
        .expect("broadcast");
    }
    assert!(
        !records(&h, "tasks", "r").await.contains_key("held-0"),
        "a's write stays on a"
    );

    // Back to both ways: what a held back leaves within a second of the
    // new links reaching it.
    set_links(hub, "[[link]]\ndevices = [\"*\"]\npeers = [\"role:hub\"]\n");
    wait_until("the new links to reach a", || async {
        links_version(a).await == 3
    })
    .await
    .expect("gossiped");
    wait_within(
        "a's held write to reach the hub",
        Duration::from_secs(1),
        || async { records(&h, "tasks", "r").await.contains_key("held-0") },
    )
    .await
    .expect("within a second");

    // A device's own list wins over the links: a and b sync directly.
    a.db("tasks")
        .set_peers(Some(vec![
            DbPeer {
                device: hub_id.clone(),
                sync_mode: SyncMode::Sync,
            },
            DbPeer {
                device: b_id.clone(),
                sync_mode: SyncMode::Sync,
            },
        ]))
        .await
        .expect("a's own list");
    b.db("tasks")
        .set_peers(only(&a_id, SyncMode::Sync))
        .await
        .expect("b's own list");
    put_numbered(a, "tasks", "r", "direct", 5)
        .await
        .expect("put");
    wait_until("a to send b its tasks directly", || async {
        let d = carried(a, &b_id, "tasks").await;
        d.ops_out >= 5 && records(b, "tasks", "r").await.contains_key("direct-4")
    })
    .await
    .expect("direct");
    drop(agents);
}
