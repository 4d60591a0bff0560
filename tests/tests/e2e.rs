//! End-to-end encrypted databases through a blind hub: the hub stores and
//! relays what it cannot read, devices with access get the key from one
//! another, and a device catches up from the hub alone.

use std::time::Duration;

use blazedb::api::{DbInfo, DbSettings, Encryption};
use blazedb::{Client, ErrorCode, Value};
use blazedb_tests::{TestAgent, files_holding, records, wait_within};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");
const DB: &str = "notes";
const PATIENCE: Duration = Duration::from_secs(60);

/// The database on the agent behind `cl`, once it has it.
async fn db_info(cl: &Client) -> Option<DbInfo> {
    cl.databases()
        .await
        .ok()?
        .into_iter()
        .find(|d| d.name == DB)
}

/// Writes `n` records whose collection, ids, field names and values all
/// carry `mark`.
async fn write_marked(cl: &Client, mark: &str, from: usize, n: usize) {
    let coll = cl.db(DB).collection(&format!("{mark}-col"));
    for i in from..from + n {
        coll.put(
            &format!("{mark}-id-{i}"),
            &serde_json::Map::from_iter([(
                format!("{mark}-field"),
                serde_json::Value::from(format!("{mark}-value-{i}")),
            )]),
        )
        .await
        .expect("write");
    }
}

/// A hub that makes the mesh, its log in `log`.
async fn start_hub(log: std::path::PathBuf) -> (TestAgent, Client) {
    let mut agent = TestAgent::stopped(AGENT, &["--role", "hub", "--name", "hub"]).expect("hub");
    agent.log_to(log);
    agent.restart().await.expect("hub starts");
    let hub = agent.client().await.expect("hub client");
    hub.create_mesh().await.expect("mesh");
    (agent, hub)
}

/// Makes the test's database, end-to-end encrypted, on the agent of `cl`.
async fn create_e2e(cl: &Client) -> DbInfo {
    cl.db(DB)
        .create_with(
            DbSettings {
                encryption: Encryption::E2e,
                ..DbSettings::default()
            },
            false,
        )
        .await
        .expect("create an e2e database")
}

/// Devices hand the hub a sealed checkpoint every 20 ops, so that tests
/// see it kept, and the ops it covers dropped.
async fn device(hub: &Client, name: &str, log: std::path::PathBuf) -> (TestAgent, Client) {
    let mut agent =
        TestAgent::stopped(AGENT, &["--name", name, "--checkpoint-ops", "20"]).expect("agent");
    agent.log_to(log);
    agent.restart().await.expect("agent starts");
    let cl = agent.client().await.expect("client");
    let code = hub.invite(Some(600), Some(1)).await.expect("invite").code;
    cl.join(&code).await.expect("join");
    (agent, cl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_hub_relays_what_it_cannot_read_and_serves_catch_up_alone() {
    let mark = format!("qzmark{}", std::process::id());
    let logs = tempfile::tempdir().expect("log dir");
    let log = |name: &str| logs.path().join(format!("{name}.log"));
    let (mut hub_agent, hub) = start_hub(log("hub")).await;

    let (mut a_agent, a) = device(&hub, "alpha", log("alpha")).await;
    let made = create_e2e(&a).await;
    assert_eq!(made.settings.encryption, Encryption::E2e);
    assert_eq!(made.key_epoch, Some(1), "the creator holds the first key");
    write_marked(&a, &mark, 0, 20).await;

    let (mut b_agent, b) = device(&hub, "bravo", log("bravo")).await;
    let col = format!("{mark}-col");
    wait_within(
        "bravo to get the key and read alpha's records",
        PATIENCE,
        || async { records(&b, DB, &col).await.len() == 20 },
    )
    .await
    .expect("bravo reads everything");
    let got = records(&b, DB, &col).await;
    assert_eq!(
        got[&format!("{mark}-id-3")][&format!("{mark}-field")],
        Value::from(format!("{mark}-value-3"))
    );
    write_marked(&b, &mark, 20, 5).await;

    // The hub holds the database blind: all 25 ops, no key, no reads.
    wait_within("the hub to hold every op", PATIENCE, || async {
        db_info(&hub).await.is_some_and(|d| d.ops_held >= 25)
    })
    .await
    .expect("the hub relays");
    let on_hub = db_info(&hub).await.expect("the hub's database");
    assert_eq!(on_hub.settings.encryption, Encryption::E2e);
    assert_eq!(on_hub.key_epoch, None, "the hub got a key nobody gave it");
    assert!(
        on_hub.collections.is_empty(),
        "the hub knows collection names"
    );
    let err = hub
        .db(DB)
        .collection(&col)
        .query()
        .fetch_all()
        .await
        .expect_err("the hub reads a database it holds no key for");
    assert_eq!(err.code(), Some(ErrorCode::Sealed), "{err}");

    // A third device joins and gets its key while alpha is there, then
    // leaves while alpha and bravo write more and go offline.
    let (mut c_agent, c) = device(&hub, "charlie", log("charlie")).await;
    wait_within("charlie to get the key", PATIENCE, || async {
        db_info(&c).await.is_some_and(|d| d.key_epoch == Some(1))
    })
    .await
    .expect("charlie holds the key");
    c_agent.stop().await.expect("charlie stops");
    write_marked(&a, &mark, 25, 30).await;
    wait_within("the hub to hold the new ops", PATIENCE, || async {
        db_info(&hub).await.is_some_and(|d| d.ops_held >= 55)
    })
    .await
    .expect("the hub relays the new ops");
    let hub_log = log("hub");
    // Alpha hands the hub a checkpoint every 20 ops: one covering more
    // than charlie holds (at most 25) leaves charlie below what the hub
    // still logs.
    wait_within(
        "the hub to keep a checkpoint past charlie",
        PATIENCE,
        || async {
            std::fs::read_to_string(&hub_log).is_ok_and(|t| {
                t.lines()
                    .filter(|l| l.contains("kept a sealed checkpoint"))
                    .filter_map(|l| {
                        l.split("covers=")
                            .nth(1)?
                            .split_whitespace()
                            .next()?
                            .parse()
                            .ok()
                    })
                    .any(|covers: u64| covers >= 40)
            })
        },
    )
    .await
    .expect("the hub keeps a checkpoint and drops the ops it covers");
    a_agent.stop().await.expect("alpha stops");
    b_agent.stop().await.expect("bravo stops");
    let c_log_before = std::fs::read_to_string(log("charlie")).map_or(0, |t| t.len());
    c_agent.restart().await.expect("charlie starts again");
    let c = c_agent.client().await.expect("client");
    wait_within(
        "charlie to catch up from the hub alone",
        PATIENCE,
        || async { records(&c, DB, &col).await.len() == 55 },
    )
    .await
    .expect("charlie reads everything, with only the hub online");
    let c_log = std::fs::read_to_string(log("charlie")).expect("charlie's log");
    assert!(
        c_log[c_log_before..].contains("took a sealed checkpoint"),
        "charlie caught up without the hub's checkpoint"
    );

    // Nothing the devices wrote is readable anywhere on the hub: not in
    // its store (journals and tables), nor in its logs. The same search
    // finds the marks on a device, so it would see them.
    hub_agent.stop().await.expect("hub stops");
    c_agent.stop().await.expect("charlie stops");
    let on_hub = files_holding(&hub_agent.data_dir(), mark.as_bytes());
    assert!(
        on_hub.is_empty(),
        "the hub's files show the records: {on_hub:?}"
    );
    let in_log = files_holding(&log("hub"), mark.as_bytes());
    assert!(in_log.is_empty(), "the hub's log shows the records");
    assert!(
        !files_holding(&c_agent.data_dir(), mark.as_bytes()).is_empty(),
        "the search finds nothing even on a device that holds the records"
    );
}

/// Every op of `db` in the store under `data_dir` (the agent stopped).
fn ops_in(store: &blazed::store::Store) -> Vec<blazedb_proto::Op> {
    use blazed::sync::SyncStore as _;
    store
        .read_ops(
            DB,
            &Default::default(),
            0,
            blazed::sync::ReadLimits::UNBOUNDED,
        )
        .expect("read the log")
        .ops
}

fn open_store(agent: &TestAgent) -> blazed::store::Store {
    // The device id only names this store's own writes, and these stores
    // take none.
    blazed::store::Store::open(
        &agent.data_dir().join("store"),
        blazedb_proto::DeviceId([0; 32]),
        Default::default(),
    )
    .expect("open a stopped agent's store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_device_rotates_the_key_so_it_cannot_open_later_ops() {
    use blazed::sync::SyncStore as _;
    let mark = format!("qzrot{}", std::process::id());
    let logs = tempfile::tempdir().expect("log dir");
    let log = |name: &str| logs.path().join(format!("{name}.log"));
    let (mut hub_agent, hub) = start_hub(log("hub")).await;
    let (mut a_agent, a) = device(&hub, "alpha", log("alpha")).await;
    create_e2e(&a).await;
    write_marked(&a, &mark, 0, 5).await;
    let (mut b_agent, b) = device(&hub, "bravo", log("bravo")).await;
    let col = format!("{mark}-col");
    wait_within("bravo to read alpha's records", PATIENCE, || async {
        records(&b, DB, &col).await.len() == 5
    })
    .await
    .expect("bravo reads the first records");
    let bravo_id = b.mesh_status().await.expect("status").device_id;

    hub.remove_device(&bravo_id)
        .await
        .expect("the admin removes bravo");
    wait_within("alpha to make the next key", PATIENCE, || async {
        db_info(&a).await.is_some_and(|d| d.key_epoch == Some(2))
    })
    .await
    .expect("the key rotates");
    write_marked(&a, &mark, 5, 5).await;
    // By hand, too.
    let rotated = a.db(DB).rotate_key().await.expect("rotate by hand");
    assert_eq!(rotated.key_epoch, Some(3));
    write_marked(&a, &mark, 10, 1).await;

    a_agent.stop().await.expect("alpha stops");
    b_agent.stop().await.expect("bravo stops");
    hub_agent.stop().await.expect("hub stops");

    // Bravo's store is fed alpha's whole log, past any membership check.
    let alpha_store = open_store(&a_agent);
    let ops = ops_in(&alpha_store);
    let epochs: Vec<u32> = ops
        .iter()
        .map(|o| {
            blazedb_proto::sealed::SealedBody::parse(&o.body)
                .expect("a sealed body")
                .key_epoch
        })
        .collect();
    assert_eq!(epochs[..5], [1; 5], "the first writes");
    assert_eq!(epochs[5..10], [2; 5], "the writes after bravo was removed");
    assert_eq!(epochs[10..], [3], "the write after the rotation by hand");
    let mut bravo_store = open_store(&b_agent);
    let alpha_id = ops[0].origin;
    let before = bravo_store
        .sync_state(DB)
        .expect("bravo's db")
        .vector
        .get(&alpha_id);
    assert_eq!(before, 5);
    let applied = bravo_store
        .apply_ops(DB, ops, &Default::default())
        .expect("apply");
    assert_eq!(applied.unopened.len(), 1, "{applied:?}");
    assert!(!applied.unopened[0].damaged);
    assert!(
        applied.unopened[0].reason.contains("epoch 2"),
        "{}",
        applied.unopened[0].reason
    );
    assert_eq!(
        bravo_store
            .sync_state(DB)
            .expect("bravo's db")
            .vector
            .get(&alpha_id),
        5,
        "bravo applied an op it cannot open"
    );
    let old = bravo_store
        .get(DB, &col, &format!("{mark}-id-2"))
        .expect("read");
    assert!(old.is_some(), "bravo lost what it read before");
    let new = bravo_store
        .get(DB, &col, &format!("{mark}-id-7"))
        .expect("read");
    assert!(new.is_none(), "bravo reads a write made after its removal");
    let on_alpha = alpha_store
        .get(DB, &col, &format!("{mark}-id-7"))
        .expect("read");
    assert!(on_alpha.is_some(), "alpha's own later write");
    alpha_store.shutdown().await.expect("shut down");
    bravo_store.shutdown().await.expect("shut down");
}
