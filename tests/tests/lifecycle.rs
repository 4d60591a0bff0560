//! The agent's life: durability across `kill -9`, clean shutdown, one agent
//! per data directory, socket permissions and stale sockets.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use blazedb::{Durability, Value};
use blazedb_proto::api::DbSettings;
use blazedb_tests::bench::rss_kib;
use blazedb_tests::{DEADLINE, TestAgent, wait_until};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");

async fn acknowledged_writes_survive_kill_9(durability: Durability) {
    let mut agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    client
        .db("load")
        .create_with(
            DbSettings {
                durability,
                ..Default::default()
            },
            false,
        )
        .await
        .expect("create");

    // Eight writers pipeline puts and batches; every acknowledged write is
    // remembered with the value it wrote.
    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let acks = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..8i64 {
        let coll = client.db("load").collection("items");
        let db = client.db("load");
        let acked = acked.clone();
        let acks = acks.clone();
        writers.push(tokio::spawn(async move {
            for i in 0i64.. {
                let id = format!("w{w}-{}", i % 50);
                let ok = if i % 5 == 0 {
                    // Batches of 20: the commit groups' op-log chunks
                    // hold many entries when the agent is killed.
                    let ids: Vec<String> = std::iter::once(id)
                        .chain((0..19).map(|k| format!("w{w}-b{}-{k}", i % 7)))
                        .collect();
                    let mut batch = db.batch();
                    for id in &ids {
                        batch =
                            batch.put("items", Some(id), [("v".to_owned(), Value::Int(i))].into());
                    }
                    batch.commit().await.map(|_| ids)
                } else {
                    coll.put_fields(&id, [("v".to_owned(), Value::Int(i))].into())
                        .await
                        .map(|_| vec![id])
                };
                match ok {
                    Ok(ids) => {
                        let mut a = acked.lock().expect("lock");
                        for id in ids {
                            a.insert(id, i);
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    blazedb_tests::wait_for("2000 acknowledged writes", || {
        (acks.load(Ordering::Relaxed) >= 2000).then_some(())
    })
    .await
    .expect("the load runs");
    agent.kill();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(!acked.is_empty(), "the load made no writes");

    agent.restart().await.expect("restart");
    let client = agent.client().await.expect("client");
    // A killed agent cannot prove its store is as it left it: its writes
    // from now on count under a new write incarnation, and status says so.
    blazedb_tests::assert_unclean_start(&client, "after kill -9").await;
    let items = client.db("load").collection("items");
    for (id, v) in &acked {
        let rec = items.get_record(id).await.expect("get").unwrap_or_else(|| {
            panic!("acknowledged write {id} was lost");
        });
        let got = rec.fields["v"].as_i64().expect("int");
        // A later write may have been applied but not acknowledged.
        assert!(got >= *v, "{id}: acknowledged {v}, found {got}");
    }

    // The op log is contiguous: cursors 1..=head and this device's seqs.
    let head = client.db("load").info().await.expect("info").head;
    let mut sub = client
        .db("load")
        .subscribe_from(None, Some(0))
        .await
        .expect("subscribe");
    for expect in 1..=head {
        let c = tokio::time::timeout(DEADLINE, sub.next())
            .await
            .expect("in time")
            .expect("change");
        assert_eq!(c.cursor, expect, "op-log cursors are contiguous");
        assert_eq!(c.seq, expect, "this device's seqs are contiguous");
    }
}

#[tokio::test]
async fn acknowledged_fsync_writes_survive_kill_9() {
    acknowledged_writes_survive_kill_9(Durability::Fsync).await;
}

#[tokio::test]
async fn acknowledged_buffered_writes_survive_kill_9() {
    acknowledged_writes_survive_kill_9(Durability::Buffered).await;
}

#[tokio::test]
async fn sigterm_finishes_writes_and_exits_cleanly() {
    let mut agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    client.db("d").create().await.expect("create");
    let coll = client.db("d").collection("c");
    coll.put_fields("a", [("x".to_owned(), Value::Int(1))].into())
        .await
        .expect("put");
    let status = agent.stop().await.expect("stop");
    assert!(status.success(), "exit status {status}");
    assert!(!agent.socket().exists(), "the socket file is removed");

    agent.restart().await.expect("restart");
    let client = agent.client().await.expect("client");
    // A clean stop proves the store: nothing is reported as dropped (fjall
    // cuts the unused room off the journal at the first start, which is
    // no damage), and the incarnation stays.
    let status = client.status().await.expect("status");
    assert_eq!(status.new_incarnation, None, "{status:?}");
    let rec = client
        .db("d")
        .collection("c")
        .get_record("a")
        .await
        .expect("get");
    assert_eq!(rec.expect("kept").fields["x"], Value::Int(1));
}

/// A journal whose end was lost after a clean stop (a disk that lied about
/// fsync, a copy taken mid-write): the start says what recovery dropped,
/// and the writes after it count under a new write incarnation.
#[tokio::test]
async fn a_journal_cut_short_is_reported_and_no_seq_is_reused() {
    let logs = tempfile::tempdir().expect("log dir");
    let log = logs.path().join("agent.log");
    let mut agent = TestAgent::stopped(AGENT, &[]).expect("agent");
    agent.log_to(&log);
    agent.restart().await.expect("start");
    let client = agent.client().await.expect("client");
    client.db("d").create().await.expect("create");
    let coll = client.db("d").collection("c");
    for i in 0..20 {
        coll.put_fields(&format!("r{i}"), [("x".to_owned(), Value::Int(i))].into())
            .await
            .expect("put");
    }
    let before = client.status().await.expect("status").incarnation;
    assert!(agent.stop().await.expect("stop").success());

    // Cut the last third off the data in the newest journal (fjall makes
    // journals long up front; the rest is zeros): the last writes' batches
    // go, and one batch is left torn.
    let store = agent.data_dir().join("store");
    let journal = std::fs::read_dir(&store)
        .expect("store dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .max_by_key(|p| p.file_stem().and_then(|n| n.to_str()?.parse::<u64>().ok()))
        .expect("a journal");
    let bytes = std::fs::read(&journal).expect("read journal");
    let data = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1) as u64;
    assert!(data > 1000, "the journal holds the writes");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .expect("open journal")
        .set_len(data - data / 3)
        .expect("cut");

    agent.restart().await.expect("restart");
    let client = agent.client().await.expect("client");
    let status = client.status().await.expect("status");
    let why = status.new_incarnation.clone().unwrap_or_default();
    assert!(
        why.contains("damaged and were dropped") && why.contains(&journal.display().to_string()),
        "status names the damaged journal: {status:?}"
    );
    assert_ne!(status.incarnation, before, "a new write incarnation");
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(
        said.lines()
            .any(|l| l.contains("WARN") && l.contains("recovery: the last") && l.contains("d at ")),
        "the log says what recovery dropped and where the change log now ends:\n{said}"
    );
    let kept = client.db("d").info().await.expect("info").head;
    assert!(
        kept < 20,
        "the cut took the last write with it (head {kept})"
    );

    // New writes take seqs under the new writer id, so none collides with
    // a seq the lost write may have carried to a peer.
    let coll = client.db("d").collection("c");
    coll.put_fields("after", [("x".to_owned(), Value::Int(99))].into())
        .await
        .expect("a write after recovery");
    let mut sub = client
        .db("d")
        .subscribe_from(None, Some(kept))
        .await
        .expect("subscribe");
    let c = tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("in time")
        .expect("change");
    assert_eq!(c.cursor, kept + 1, "the change log goes on from its head");
    assert_eq!(c.seq, 1, "the new writer's seqs start at 1");
}

/// The limit a test holds shutdown to: the target is 300 ms, with room
/// for a loaded test machine; a close waiting on a gone peer took 2 s.
const QUICK_STOP: std::time::Duration = std::time::Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_quick_when_a_peer_just_went_away() {
    let (mut agents, cls) = blazedb_tests::start_mesh(AGENT, 2).await.expect("mesh");
    cls[0].db("d").create().await.expect("create");
    blazedb_tests::put_numbered(&cls[0], "d", "r", "x", 20)
        .await
        .expect("put");
    blazedb_tests::wait_until("the peer to hold the writes", || async {
        blazedb_tests::records(&cls[1], "d", "r").await.len() == 20
    })
    .await
    .expect("synced");
    agents[1].kill();
    let start = std::time::Instant::now();
    let status = agents[0].stop().await.expect("stop");
    let took = start.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < QUICK_STOP, "shutdown took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_quick_while_dialing_a_peer_that_never_answers() {
    // A bound socket that reads nothing: the handshake never completes.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let mut agent = TestAgent::start_with(AGENT, &["--peer", &addr])
        .await
        .expect("agent");
    let client = agent.client().await.expect("client");
    client.create_mesh().await.expect("mesh");
    let mut buf = [0u8; 2048];
    silent.set_read_timeout(Some(DEADLINE)).expect("timeout");
    silent.recv_from(&mut buf).expect("the agent dials");
    let start = std::time::Instant::now();
    let status = agent.stop().await.expect("stop");
    let took = start.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < QUICK_STOP, "shutdown took {took:?}");
}

#[tokio::test]
async fn a_second_agent_on_the_same_data_dir_refuses_to_start() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let out = std::process::Command::new(AGENT)
        .arg("--data-dir")
        .arg(agent.data_dir())
        .arg("--socket")
        .arg(agent.data_dir().join("other.sock"))
        .env("RUST_LOG", "error")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(err.lines().count(), 1, "said once, on one line: {err}");
    assert!(
        err.contains(&agent.pid().expect("pid").to_string()),
        "{err}"
    );
    // The first agent is unharmed.
    agent.client().await.expect("still serving");
}

#[tokio::test]
async fn a_store_a_newer_agent_wrote_is_refused_and_kept() {
    let mut agent = TestAgent::start(AGENT).await.expect("agent");
    let db = agent.client().await.expect("client").db("kept");
    db.create().await.expect("create");
    db.collection("c")
        .put_fields("r", [("n".to_owned(), Value::Int(1))].into())
        .await
        .expect("put");
    agent.kill();
    let store = agent.data_dir().join("store");
    let format = blazed::store::STORE_FORMAT;
    blazed::store::mark_store_format(&store, Some(format + 1)).expect("mark as newer");
    let data_dir = agent.data_dir().into_os_string();
    let socket = agent.socket().into_os_string();
    let start = [
        "--data-dir".into(),
        data_dir.clone(),
        "--socket".into(),
        socket,
    ];
    let repair = ["repair".into(), "--data-dir".into(), data_dir];
    for args in [&start[..], &repair[..]] {
        let out = std::process::Command::new(AGENT)
            .args(args)
            .env("RUST_LOG", "error")
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?} ran on a newer store");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("newer blazed"), "{args:?}: {said}");
        assert!(
            said.contains(&format!("store format {}", format + 1)),
            "{said}"
        );
    }
    // Nothing was changed: marked as it was, it opens and holds the record.
    blazed::store::mark_store_format(&store, Some(format)).expect("mark back");
    agent.restart().await.expect("restart");
    let got = agent
        .client()
        .await
        .expect("client")
        .db("kept")
        .collection("c")
        .get_record("r")
        .await
        .expect("get");
    assert!(got.is_some(), "the record is gone");
}

#[tokio::test]
async fn socket_is_private_and_a_stale_one_is_replaced() {
    let mut agent = TestAgent::start(AGENT).await.expect("agent");
    let sock_mode = std::fs::metadata(agent.socket())
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(sock_mode & 0o777, 0o600, "socket mode {sock_mode:o}");
    let dir = agent.socket().parent().expect("dir").to_path_buf();
    let dir_mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700, "runtime dir mode {dir_mode:o}");

    // A crash leaves the socket file behind; the next start replaces it.
    agent.kill();
    assert!(agent.socket().exists(), "kill -9 leaves the socket file");
    agent.restart().await.expect("restart over a stale socket");
    agent.client().await.expect("serving");

    // A live agent's socket is not taken over by another data dir.
    let other = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(AGENT)
        .arg("--data-dir")
        .arg(other.path())
        .arg("--socket")
        .arg(agent.socket())
        .env("RUST_LOG", "error")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening"), "{err}");
    agent.client().await.expect("first agent still serving");
}

/// The agent turns transparent huge pages off for itself, whatever the
/// system's setting: with them, each first touch of the memory the store
/// turns over (memtables, batches, sync messages) had the kernel zero a
/// whole 2 MiB page.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_agent_runs_without_transparent_huge_pages() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let pid = agent.pid().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim)
        .expect("the kernel reports THP_enabled in /proc/<pid>/status");
    assert_eq!(thp, "0", "the agent runs with transparent huge pages on");
}

/// Puts `mib` MiB of 64 KiB values into `db`, 16 to a batch.
async fn put_mib(db: &blazedb::Db, mib: usize, tag: &str) {
    for b in 0..mib {
        let mut batch = db.batch();
        for i in 0..16 {
            let fields = [("v".to_owned(), Value::Bytes(vec![b as u8; 64 * 1024]))];
            batch = batch.put("items", Some(&format!("{tag}{b}-{i}")), fields.into());
        }
        batch.commit().await.expect("put");
    }
}

/// Dropping databases gives their memory back. fjall keeps every
/// keyspace that was open when its journal moved on to a new file until
/// that file is evicted, so each database here fills a journal file (64
/// MB: 34 MiB of values, written to the records and to the op log) before
/// it is dropped, with its last records and ops still in memory.
#[tokio::test]
async fn dropping_databases_gives_their_memory_back() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    let pid = agent.pid().expect("pid");
    let mut settled = 0;
    for round in 0..6 {
        let db = client.db("scratch");
        db.create().await.expect("create");
        put_mib(&db, 34, &format!("r{round}-")).await;
        db.drop_db().await.expect("drop");
        // The first rounds warm the agent's caches and allocator up.
        if round == 1 {
            settled = rss_kib(pid).expect("rss");
        }
    }
    // While fjall kept up to 512 MiB of journals, each round kept 40-50
    // MiB more: 165-200 MiB over the last four. What may stay is the last
    // dropped database's memtables, pinned until its journal file (still
    // being written) is evicted: up to the 64 MiB memtable budget, about
    // twice that resident, 68-110 MiB over in the runs that kept it.
    let bound = settled + 128 * 1024;
    wait_until("the dropped databases' memory to come back", || async {
        rss_kib(pid).is_some_and(|now| now < bound)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {settled} KiB resident after two rounds, {:?} KiB after six",
            rss_kib(pid)
        )
    });
}

/// The journal files the store keeps stay bounded: writing 200 MiB of
/// values (400 MiB of journal, records and op log) leaves at most a few
/// 64 MB journal files, where fjall's default kept 512 MiB of them, all
/// read again at the next start.
#[tokio::test]
async fn the_journal_files_stay_bounded() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    let db = client.db("big");
    db.create().await.expect("create");
    put_mib(&db, 200, "r").await;
    let store = agent.data_dir().join("store");
    let journals = || {
        std::fs::read_dir(&store)
            .expect("store dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".jnl"))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    // 128 MiB sealed, the file being written and one being let go.
    let bound = 256 * 1024 * 1024;
    wait_until("the journals to be cut back", || async {
        journals() < bound
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {} MB of journals", journals() / 1_000_000));
}
