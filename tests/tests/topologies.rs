//! Who syncs what with whom, and changing it while agents run: a
//! push-only database reaching a collector with its creator's settings,
//! writes held back by `pull` leaving as soon as sync is back on, and a
//! conflict priority changed at run time.

use std::time::Duration;

use blazedb::{Client, Value};
use blazedb_proto::api::{DbSettings, Durability, SyncMode};
use blazedb_tests::{put_numbered, records, start_mesh, wait_until, wait_within};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");

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
