//! `blazectl` as people use it: one word for each sync mode, the same exit
//! code with and without `--json`, one clear line per error, and no panic
//! when its reader goes away.

use std::path::Path;
use std::process::{Command, Stdio};

use blazedb_tests::{TestAgent, blazectl_ok};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");
const CTL: &str = env!("CARGO_BIN_EXE_blazectl-test");

/// Runs blazectl against `socket`; returns whether it succeeded, and what
/// it printed on stdout and stderr.
fn blazectl(socket: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(CTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run blazectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn sync_modes_are_on_pull_push_and_off_everywhere() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let ctl = |args: &[&str]| blazectl_ok(CTL, &agent.socket(), args);
    ctl(&["db", "create", "notes", "--mode", "off"]);
    ctl(&["db", "create", "feed", "--mode", "pull"]);
    // The protocol's own names are accepted too.
    ctl(&["db", "create", "old", "--mode", "local"]);
    let list = ctl(&["db", "list"]);
    let mode_of = |db: &str| {
        list.lines()
            .find(|l| l.starts_with(db))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_owned)
    };
    assert_eq!(mode_of("notes").as_deref(), Some("off"), "{list}");
    assert_eq!(mode_of("feed").as_deref(), Some("pull"), "{list}");
    assert_eq!(mode_of("old").as_deref(), Some("off"), "{list}");
    assert!(ctl(&["db", "sync", "notes", "on"]).contains("now syncs in mode on"));
    assert!(ctl(&["db", "sync", "notes", "local"]).contains("now syncs in mode off"));
}

#[tokio::test]
async fn a_missing_record_fails_the_same_with_and_without_json() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    blazectl_ok(CTL, &agent.socket(), &["db", "create", "notes"]);
    blazectl_ok(
        CTL,
        &agent.socket(),
        &["put", "notes", "todo", "t1", "x:=1"],
    );
    let (ok, out, err) = blazectl(&agent.socket(), &["get", "notes", "todo", "nope"]);
    assert!(
        !ok && out.is_empty() && err.contains("no record nope"),
        "{err}"
    );
    let (ok, out, err) = blazectl(&agent.socket(), &["--json", "get", "notes", "todo", "nope"]);
    assert!(!ok, "--json exits as without it");
    assert_eq!(out.trim(), "null", "JSON readers still get a value");
    assert!(err.contains("no record nope"), "{err}");

    // Several ids: one request, every record found, the missing named.
    let (ok, out, err) = blazectl(
        &agent.socket(),
        &["--json", "get", "notes", "todo", "t1", "nope", "t1"],
    );
    assert!(!ok && err.contains("no record nope"), "{err}");
    let got: serde_json::Value = serde_json::from_str(&out).expect("json");
    let ids: Vec<_> = got
        .as_array()
        .expect("an array, one entry per id")
        .iter()
        .map(|r| r.get("id").cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        ids,
        [
            serde_json::json!("t1"),
            serde_json::Value::Null,
            serde_json::json!("t1")
        ]
    );
    blazectl_ok(
        CTL,
        &agent.socket(),
        &["put", "notes", "todo", "t2", "x:=2"],
    );
    let text = blazectl_ok(CTL, &agent.socket(), &["get", "notes", "todo", "t1", "t2"]);
    assert!(text.contains("t1") && text.contains("t2"), "{text}");
}

#[test]
fn without_an_agent_the_error_is_one_line_that_says_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no.sock");
    let (ok, _, err) = blazectl(&missing, &["status"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "the OS error once: {err}"
    );
    assert!(err.contains("start it with `blazed`"), "{err}");

    let (ok, _, err) = blazectl(dir.path(), &["status"]);
    assert!(!ok);
    assert!(
        err.contains("is a directory") && !err.contains("refused"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reader_that_goes_away_does_not_make_blazectl_panic() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    for i in 0..40 {
        blazectl_ok(
            CTL,
            &agent.socket(),
            &["db", "create", &format!("database-with-a-long-name-{i}")],
        );
    }
    for args in [&["--json", "db", "list"][..], &["db", "list"][..]] {
        let mut child = Command::new(CTL)
            .arg("--socket")
            .arg(agent.socket())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run blazectl");
        // Like `| head -0`: the reader is gone before blazectl writes.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: nothing to say: {err}");
    }
}

#[tokio::test]
async fn dropping_an_index_that_never_was_says_so() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let ctl = |args: &[&str]| blazectl_ok(CTL, &agent.socket(), args);
    ctl(&["db", "create", "notes"]);
    ctl(&["put", "notes", "todo", "t1", "priority:=3"]);
    let never = ctl(&["index", "drop", "notes", "todo", "priority"]);
    assert!(never.contains("todo.priority has no index"), "{never}");
    assert!(ctl(&["index", "create", "notes", "todo", "priority"]).contains("created"));
    let twice = ctl(&["index", "create", "notes", "todo", "priority"]);
    assert!(twice.contains("indexed already"), "{twice}");
    assert!(ctl(&["index", "drop", "notes", "todo", "priority"]).contains("dropped index"));
}

#[test]
fn help_opens_with_what_the_tool_does() {
    let out = Command::new(CTL).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    let first = help.lines().next().unwrap_or_default();
    assert!(first.starts_with("blazectl: "), "{help}");
    assert!(!help.contains("Async client"), "{help}");
}

#[tokio::test]
async fn the_id_and_a_json_mesh_status_survive_a_mesh_port_in_use() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").to_string();
    let agent = TestAgent::start_with(AGENT, &["--listen", &port])
        .await
        .expect("the agent serves apps without its mesh");
    let id = blazectl_ok(CTL, &agent.socket(), &["id"]);
    let hello_id = agent.client().await.expect("client").device_id().to_owned();
    assert_eq!(id.trim(), hello_id);

    let (ok, out, err) = blazectl(&agent.socket(), &["--json", "mesh", "status"]);
    assert!(!ok, "the mesh is not running");
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON even so");
    assert_eq!(status["device_id"], hello_id.as_str());
    assert!(status["mesh"].is_null());
    assert!(
        status["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{status}"
    );
    assert!(err.contains("mesh"), "{err}");
    drop(taken);
}

#[tokio::test]
async fn a_forgotten_id_and_typed_values_are_handled_as_a_user_means_them() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let ctl = |args: &[&str]| blazectl_ok(CTL, &agent.socket(), args);
    ctl(&["db", "create", "notes"]);
    let (ok, _, err) = blazectl(&agent.socket(), &["put", "notes", "todo", "x=1"]);
    assert!(!ok && err.contains("looks like a field"), "{err}");

    ctl(&[
        "put",
        "notes",
        "todo",
        "t1",
        r#"when:={"$timestamp":"2026-12-01T10:00:00Z"}"#,
        r#"odd:={"$map":{"$timestamp":1}}"#,
    ]);
    let got: serde_json::Value =
        serde_json::from_str(&ctl(&["--json", "get", "notes", "todo", "t1"])).expect("json");
    assert_eq!(
        got["fields"]["when"],
        serde_json::json!({"$timestamp": 1_796_119_200_000_000_000_i64})
    );
    assert_eq!(
        got["fields"]["odd"],
        serde_json::json!({"$map": {"$timestamp": 1}})
    );
    // The same value shows the same in a get and in a query table.
    let get = ctl(&["get", "notes", "todo", "t1"]);
    let table = ctl(&["query", "notes", "todo"]);
    let shown = r#"{"$map":{"$timestamp":1}}"#;
    assert!(
        get.contains(shown) && table.contains(shown),
        "{get}\n{table}"
    );

    // A quoted number compared by order is text: said when nothing matches.
    ctl(&["put", "notes", "todo", "t2", "priority:=5"]);
    let (ok, out, err) = blazectl(
        &agent.socket(),
        &["query", "notes", "todo", "--where", r#"priority>"3""#],
    );
    assert!(ok && !out.contains("t2"), "{out}");
    assert!(err.contains("quoted"), "{err}");
    let (ok, out, err) = blazectl(
        &agent.socket(),
        &["query", "notes", "todo", "--where", "priority>3"],
    );
    assert!(ok && out.contains("t2") && err.is_empty(), "{out}{err}");
}

#[test]
fn completions_and_a_man_page_come_without_an_agent() {
    // A socket nobody listens on: these must not need the agent.
    let run = |args: &[&str]| blazectl_ok(CTL, Path::new("/nonexistent/blazed.sock"), args);
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        assert!(
            script.contains("blazectl") && script.contains("topology"),
            "{shell}"
        );
    }
    let man = run(&["man"]);
    assert!(
        man.contains(".TH blazectl") && man.contains("dashboard"),
        "{man}"
    );
}

#[tokio::test]
async fn an_export_imports_back_to_the_same_records_and_values() {
    use blazedb::Value;
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    let source = client.db("notes");
    source.create().await.expect("create");
    let typed: blazedb::Fields = [
        (
            "when".to_owned(),
            Value::Timestamp(blazedb::Timestamp(i64::MIN)),
        ),
        ("blob".to_owned(), Value::Bytes(vec![0, 1, 0xff])),
        (
            "uuid".to_owned(),
            Value::Uuid(
                "67e55044-10b1-426f-9247-bb680e5fe0c8"
                    .parse()
                    .expect("uuid"),
            ),
        ),
        ("big".to_owned(), Value::Int(i64::MAX)),
        ("x".to_owned(), Value::Float(-0.5)),
        (
            "nested".to_owned(),
            Value::Map(
                [(
                    "$odd".to_owned(),
                    Value::List(vec![Value::Null, Value::Bool(true)]),
                )]
                .into(),
            ),
        ),
        ("text".to_owned(), Value::from("line\nbreak \"quoted\"")),
    ]
    .into();
    source
        .collection("a")
        .put_fields("t1", typed)
        .await
        .expect("put");
    for i in 0..700 {
        source
            .collection("b")
            .put_fields(
                &format!("r{i:03}"),
                [("n".to_owned(), Value::Int(i))].into(),
            )
            .await
            .expect("put");
    }
    let export = Command::new(CTL)
        .arg("--socket")
        .arg(agent.socket())
        .args(["export", "notes"])
        .output()
        .expect("export");
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    assert_eq!(export.stdout.iter().filter(|b| **b == b'\n').count(), 701);

    let mut import = Command::new(CTL)
        .arg("--socket")
        .arg(agent.socket())
        .args(["import", "copy"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("import");
    {
        use std::io::Write as _;
        let mut stdin = import.stdin.take().expect("stdin");
        stdin.write_all(&export.stdout).expect("feed");
    }
    let done = import.wait_with_output().expect("wait");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    for c in ["a", "b"] {
        let of = |db: &str| {
            let coll = client.db(db).collection(c);
            async move {
                coll.query()
                    .fetch_all()
                    .await
                    .expect("query")
                    .into_iter()
                    .map(|r| (r.id, r.fields))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(of("copy").await, of("notes").await, "collection {c}");
    }
}
