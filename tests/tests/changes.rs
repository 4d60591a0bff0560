//! Change streams across processes: a `blazectl watch` process sees every
//! write another process makes, in order, and resumes from its cursor with
//! nothing missed and nothing twice.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use blazedb::Value;
use blazedb_tests::{DEADLINE, TestAgent};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");
const CTL: &str = env!("CARGO_BIN_EXE_blazectl-test");

/// A `blazectl watch --json` child whose output lines arrive on a channel.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Watcher {
    fn start(agent: &TestAgent, since: Option<u64>) -> Watcher {
        let mut cmd = Command::new(CTL);
        cmd.arg("--socket")
            .arg(agent.socket())
            .args(["watch", "bugs", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(s) = since {
            cmd.args(["--since", &s.to_string()]);
        }
        let mut child = cmd.spawn().expect("spawn blazectl watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines: rx }
    }

    fn next(&self) -> serde_json::Value {
        self.lines
            .recv_timeout(DEADLINE)
            .expect("a change within the deadline")
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn another_process_sees_every_change_in_order_and_resumes_exactly() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    client.db("bugs").create().await.expect("create");
    let bugs = client.db("bugs").collection("bugs");
    // Make the collection exist before the watcher starts.
    bugs.put_fields("b0", [("n".to_owned(), Value::Int(0))].into())
        .await
        .expect("put");

    let watcher = Watcher::start(&agent, Some(1));
    // The watcher is live once it has subscribed: wait for the status to say so.
    blazedb_tests::wait_for("the watcher to subscribe", || {
        let status = std::process::Command::new(CTL)
            .arg("--socket")
            .arg(agent.socket())
            .args(["status", "--json"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).ok()?;
        (v["subscriptions"] == 1).then_some(())
    })
    .await
    .expect("subscribed");

    // Writes of every kind, from this process.
    let mut expected = Vec::new();
    for i in 1..=150i64 {
        let id = format!("b{}", i % 40);
        let kind = if i % 10 == 0 {
            bugs.delete(&id).await.expect("delete");
            "delete"
        } else if i % 3 == 0 && i > 40 {
            match bugs
                .patch(&id, [("n".to_owned(), Value::Int(i))].into(), &[])
                .await
            {
                Ok(_) => "patch",
                // The record was deleted earlier: patch refuses, no change.
                Err(e) if e.code() == Some(blazedb::ErrorCode::NotFound) => continue,
                Err(e) => panic!("patch failed: {e}"),
            }
        } else {
            bugs.put_fields(&id, [("n".to_owned(), Value::Int(i))].into())
                .await
                .expect("put");
            "put"
        };
        expected.push((kind.to_owned(), id));
    }

    let mut last_cursor = 1;
    for (i, (kind, id)) in expected.iter().enumerate() {
        let c = watcher.next();
        assert_eq!(c["kind"], kind.as_str(), "change {i}: {c}");
        assert_eq!(c["id"], id.as_str(), "change {i}: {c}");
        let cursor = c["cursor"].as_u64().expect("cursor");
        assert_eq!(cursor, last_cursor + 1, "cursors are contiguous");
        last_cursor = cursor;
        if i == 99 {
            break;
        }
    }
    // Disconnect after 100 changes, write more, and resume from the cursor.
    watcher.kill();
    for i in 0..20 {
        bugs.put_fields(&format!("late{i}"), Default::default())
            .await
            .expect("put");
        expected.push(("put".into(), format!("late{i}")));
    }
    let resumed = Watcher::start(&agent, Some(last_cursor));
    for (kind, id) in &expected[100..] {
        let c = resumed.next();
        assert_eq!(
            (c["kind"].as_str(), c["id"].as_str()),
            (Some(kind.as_str()), Some(id.as_str()))
        );
        let cursor = c["cursor"].as_u64().expect("cursor");
        assert_eq!(
            cursor,
            last_cursor + 1,
            "no gap and no repeat after resuming"
        );
        last_cursor = cursor;
    }
    // Nothing beyond what was written.
    assert!(
        resumed
            .lines
            .recv_timeout(Duration::from_millis(200))
            .is_err(),
        "no duplicate or extra change"
    );
    resumed.kill();
}

#[tokio::test]
async fn subscriptions_filter_by_collection_and_start_at_the_head() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    let db = client.db("bugs");
    db.create().await.expect("create");
    db.collection("users")
        .put_fields("u0", Default::default())
        .await
        .expect("put");
    db.collection("bugs")
        .put_fields("old", Default::default())
        .await
        .expect("put");

    // From the head: the earlier writes are not replayed.
    let mut sub = db
        .collection("bugs")
        .subscribe(None)
        .await
        .expect("subscribe");
    assert_eq!(sub.cursor(), 2);
    db.collection("users")
        .put_fields("u1", Default::default())
        .await
        .expect("put");
    db.collection("bugs")
        .put_fields("new", Default::default())
        .await
        .expect("put");
    let c = tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("in time")
        .expect("a change");
    assert_eq!(
        (c.collection.as_str(), c.id.as_str(), c.cursor),
        ("bugs", "new", 4)
    );
    assert_eq!(sub.cursor(), 4);
    sub.close().await.expect("close");
}

#[tokio::test]
async fn dropping_a_database_ends_its_subscriptions_with_a_reason() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    let db = client.db("gone");
    db.create().await.expect("create");
    let mut sub = db.subscribe().await.expect("subscribe");
    assert_eq!(client.status().await.expect("status").subscriptions, 1);
    assert!(db.drop_db().await.expect("drop"));
    let next = tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("in time");
    assert!(next.is_none(), "the stream ends");
    let reason = sub.end_reason().expect("a reason");
    assert_eq!(reason.code, blazedb::ErrorCode::UnknownDatabase);
    blazedb_tests::wait_until("the subscription count to drop", || async {
        client.status().await.is_ok_and(|s| s.subscriptions == 0)
    })
    .await
    .expect("count back to zero");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_snapshot_brings_are_in_the_change_stream() {
    let (_agents, cls) = blazedb_tests::start_mesh(AGENT, 2).await.expect("mesh");
    let (a, b) = (&cls[0], &cls[1]);
    a.db("notes").create().await.expect("create");
    blazedb_tests::put_numbered(a, "notes", "r", "n", 30)
        .await
        .expect("put");
    a.db("notes")
        .collection("r")
        .delete("n-0")
        .await
        .expect("delete");
    blazedb_tests::wait_until("b to hold a's notes", || async {
        blazedb_tests::records(b, "notes", "r").await.len() == 29
    })
    .await
    .expect("synced");

    // b starts the database over (a new epoch): a sends its state whole,
    // as a snapshot.
    b.db("notes").drop_db().await.expect("drop");
    b.db("notes").create_if_missing().await.expect("again");
    blazedb_tests::wait_until("b to get the notes back", || async {
        blazedb_tests::records(b, "notes", "r").await.len() == 29
    })
    .await
    .expect("by snapshot");
    let info = b.db("notes").info().await.expect("info");
    assert!(info.head > 0, "the change log moved: {info:?}");

    // An app building its copy from cursor 0 ends with what b holds.
    let mut sub = b
        .db("notes")
        .subscribe_from(None, Some(0))
        .await
        .expect("subscribe");
    let mut copy: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Value>> =
        std::collections::BTreeMap::new();
    while sub.cursor() < info.head {
        let c = tokio::time::timeout(DEADLINE, sub.next())
            .await
            .expect("in time")
            .expect("a change");
        match c.kind {
            blazedb::ChangeKind::Put => {
                copy.insert(c.id, c.fields.into_iter().collect());
            }
            _ => {
                copy.remove(&c.id);
            }
        }
    }
    let held = blazedb_tests::records(b, "notes", "r").await;
    assert_eq!(copy.len(), held.len());
    for (id, fields) in &held {
        assert_eq!(copy.get(id), Some(fields), "{id}");
    }
}

/// A subscriber that keeps its cursor with the change log it came from is
/// refused, not misled, once the agent hands that cursor out again: here
/// after its data directory was restored from a backup and new writes
/// passed the old head. A cursor the backup still holds resumes, and a
/// plain crash keeps every cursor up to the recovered head.
#[tokio::test]
async fn a_cursor_handed_out_again_after_a_restore_is_refused() {
    let mut agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    let db = client.db("d");
    db.create().await.expect("create");
    let put = |client: blazedb::Client, from: usize, n: usize| async move {
        let coll = client.db("d").collection("c");
        for i in from..from + n {
            coll.put_fields(
                &format!("r{i}"),
                [("i".to_owned(), Value::Int(i as i64))].into(),
            )
            .await
            .expect("put");
        }
    };
    put(client.clone(), 0, 5).await;
    agent.stop().await.expect("stop");
    let backup = tempfile::tempdir().expect("backup dir");
    blazedb_tests::copy_dir(&agent.data_dir(), backup.path());

    // Five more writes, all seen by a subscriber that keeps its place.
    agent.restart().await.expect("restart");
    let client = agent.client().await.expect("client");
    put(client.clone(), 5, 5).await;
    let mut sub = client
        .db("d")
        .subscribe_from(None, Some(0))
        .await
        .expect("subscribe");
    let mut early = None;
    for want in 1..=10 {
        let c = tokio::time::timeout(DEADLINE, sub.next())
            .await
            .expect("in time")
            .expect("change");
        assert_eq!(c.cursor, want);
        if want == 4 {
            early = Some(sub.resume_point());
        }
    }
    let (log, last) = sub.resume_point();
    assert_eq!(last, 10);
    let (early_log, early_cursor) = early.expect("seen");
    assert_eq!(early_log, log);

    // The disk goes back to the backup; the agent writes seven others.
    agent.stop().await.expect("stop");
    agent.restore_data_dir(backup.path());
    agent.restart().await.expect("start the restored copy");
    let client = agent.client().await.expect("client");
    put(client.clone(), 100, 7).await;
    let info = client.db("d").info().await.expect("info");
    assert_eq!(info.head, 12, "the backup's 5 and the 7 new ones");
    assert_ne!(info.log, log, "the restored change log has a new id");

    // Cursor 10 now names a different change: resuming there is refused.
    let refused = client
        .db("d")
        .resume(None, last, log)
        .await
        .expect_err("a cursor handed out again");
    assert_eq!(refused.code(), Some(blazedb::ErrorCode::CursorExpired));
    assert!(
        refused.to_string().contains("handed out again"),
        "{refused}"
    );
    // Cursor 4 is in the backup too: it resumes at the backup's fifth
    // write, then the new ones.
    let mut sub = client
        .db("d")
        .resume(None, early_cursor, early_log)
        .await
        .expect("a cursor the restored log still holds");
    let c = tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("in time")
        .expect("change");
    assert_eq!((c.cursor, c.id.as_str()), (5, "r4"));
    assert_eq!(sub.resume_point().0, info.log);

    // After kill -9 every cursor up to the recovered head keeps its place.
    let (log, head) = (info.log, info.head);
    agent.kill();
    agent.restart().await.expect("restart after kill");
    let client = agent.client().await.expect("client");
    assert_ne!(client.db("d").info().await.expect("info").log, log);
    client
        .db("d")
        .resume(None, head, log)
        .await
        .expect("a cursor up to the recovered head survives a crash");
}
