//! Bad input from a local client: every case gets a clear error, the agent
//! keeps serving, and nothing acknowledged is lost.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use blazedb::{ErrorCode, Value};
use blazedb_proto::api::{HelloParams, PROTOCOL_VERSION};
use blazedb_proto::frame::{DEFAULT_MAX_FRAME, LEN_PREFIX};
use blazedb_proto::message::{self, RawIncoming};
use blazedb_proto::{ErrorInfo, codec};
use blazedb_tests::TestAgent;

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");

/// A raw connection that speaks frames by hand.
struct Raw {
    s: UnixStream,
    next_id: u64,
}

impl Raw {
    fn connect(agent: &TestAgent) -> Raw {
        let s = UnixStream::connect(agent.socket()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Raw { s, next_id: 1 }
    }

    fn hello(agent: &TestAgent) -> Raw {
        let mut raw = Raw::connect(agent);
        let r = raw.call(
            "hello",
            &HelloParams {
                protocol: PROTOCOL_VERSION,
                client: "raw".into(),
                ..Default::default()
            },
        );
        assert!(r.is_ok(), "hello failed: {r:?}");
        raw
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    fn send<P: serde::Serialize>(&mut self, method: &str, params: &P) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = Vec::new();
        message::encode_request(&mut buf, id, method, params, DEFAULT_MAX_FRAME).expect("encode");
        self.send_bytes(&buf);
        id
    }

    /// Reads one frame; `None` when the agent closed the connection.
    fn read_frame(&mut self) -> Option<Vec<u8>> {
        let mut len = [0u8; LEN_PREFIX];
        self.s.read_exact(&mut len).ok()?;
        let mut payload = vec![0; u32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut payload).ok()?;
        Some(payload)
    }

    /// Reads one response: its id and its result bytes or error.
    fn response(&mut self) -> (u64, Result<Vec<u8>, ErrorInfo>) {
        let frame = self.read_frame().expect("a response frame");
        match message::decode_incoming(&frame).expect("decodable") {
            RawIncoming::Response { id, result } => (id, result.map(<[u8]>::to_vec)),
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn call<P: serde::Serialize>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<Vec<u8>, ErrorInfo> {
        let id = self.send(method, params);
        let (rid, result) = self.response();
        assert_eq!(rid, id);
        result
    }

    fn assert_closed(&mut self) {
        assert_eq!(
            self.read_frame(),
            None,
            "the agent should close the connection"
        );
    }
}

fn code(r: Result<Vec<u8>, ErrorInfo>) -> ErrorCode {
    r.expect_err("an error").code
}

async fn agent_with_data() -> (TestAgent, blazedb::Client) {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    client.db("bugs").create().await.expect("create");
    let bugs = client.db("bugs").collection("bugs");
    for i in 0..20 {
        bugs.put_fields(&format!("b{i}"), [("n".to_owned(), Value::Int(i))].into())
            .await
            .expect("put");
    }
    (agent, client)
}

async fn assert_data_intact(agent: &TestAgent) {
    let client = agent.client().await.expect("the agent still serves");
    let all = client
        .db("bugs")
        .collection("bugs")
        .query()
        .fetch_all()
        .await
        .expect("query");
    assert_eq!(all.len(), 20, "acknowledged writes must all be there");
}

#[tokio::test]
async fn oversized_frame_is_refused_before_allocating() {
    let (agent, _client) = agent_with_data().await;
    let mut raw = Raw::hello(&agent);
    // Declare 4 GiB - 1 and send nothing more: the agent must answer from
    // the prefix alone.
    raw.send_bytes(&u32::MAX.to_be_bytes());
    let (id, r) = raw.response();
    assert_eq!(id, 0);
    let err = r.expect_err("an error");
    assert_eq!(err.code, ErrorCode::FrameTooLarge);
    assert!(err.message.contains("over the limit"), "{}", err.message);
    raw.assert_closed();
    assert_data_intact(&agent).await;
}

#[tokio::test]
async fn frame_limit_is_configurable() {
    let agent = TestAgent::start_with(AGENT, &["--max-frame", "2048"])
        .await
        .expect("agent");
    let client = agent.client().await.expect("client");
    client.db("d").create().await.expect("create");
    let big = "x".repeat(4096);
    let err = client
        .db("d")
        .collection("c")
        .put_fields("a", [("big".to_owned(), Value::String(big.clone()))].into())
        .await
        .expect_err("too large");
    // The client knows the limit from hello and refuses locally.
    assert!(
        matches!(err, blazedb::Error::TooLarge { max: 2048, .. }),
        "{err}"
    );
    // A client that sends it anyway is answered and closed.
    let mut raw = Raw::hello(&agent);
    let mut buf = Vec::new();
    message::encode_request(&mut buf, 1, "put", &big, u32::MAX).expect("encode");
    raw.send_bytes(&buf);
    assert_eq!(code(raw.response().1), ErrorCode::FrameTooLarge);
    raw.assert_closed();
}

#[tokio::test]
async fn a_write_near_the_frame_limit_never_breaks_a_subscription() {
    const MAX: usize = 4096;
    let agent = TestAgent::start_with(AGENT, &["--max-frame", &MAX.to_string()])
        .await
        .expect("agent");
    let client = agent.client().await.expect("client");
    let db = client.db("d");
    db.create().await.expect("create");
    let mut sub = db.subscribe().await.expect("subscribe");
    let coll = db.collection("c");
    let put = |len: usize| {
        let fields = [("big".to_owned(), Value::String("x".repeat(len)))].into();
        coll.put_fields("a", fields)
    };
    // The request fits the frame, but its change event would not.
    let err = put(MAX - 100).await.expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
    let text = err.to_string();
    let number_after = |words: &str| -> usize {
        text.split(words)
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the error says {words:?}: {text}"))
    };
    let (encoded, most) = (number_after(" is "), number_after("at most "));
    assert!(most < MAX - 100 && most > MAX - 400, "{text}");
    // The largest write allowed reaches the subscriber; one byte more is
    // refused; and the subscription goes on.
    let largest = most - (encoded - (MAX - 100));
    put(largest).await.expect("the largest write");
    put(largest + 1).await.expect_err("one byte more");
    db.collection("c")
        .put_fields("b", [("n".to_owned(), Value::Int(1))].into())
        .await
        .expect("put");
    for id in ["a", "b"] {
        let c = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("in time")
            .expect("the subscription goes on");
        assert_eq!(c.id, id);
    }
}

#[tokio::test]
async fn nesting_limits_are_the_documented_ones_with_their_codes() {
    use blazedb_proto::api::PutParams;
    let (agent, _client) = agent_with_data().await;
    let put = |lists: usize| {
        let mut v = Value::Int(1);
        for _ in 0..lists {
            v = Value::List(vec![v]);
        }
        PutParams {
            db: "bugs".into(),
            collection: "deep".into(),
            id: Some("deep".into()),
            fields: [("x".to_owned(), v)].into(),
        }
    };
    let mut raw = Raw::hello(&agent);
    // A value may nest 100 lists and maps, and reads back whole.
    raw.send("put", &put(100));
    raw.response().1.expect("100 levels are taken");
    raw.send(
        "get",
        &serde_json::json!({"db": "bugs", "collection": "deep", "id": "deep"}),
    );
    raw.response().1.expect("and read back");
    // Deeper values are refused; the connection stays.
    for lists in [101, 126] {
        raw.send("put", &put(lists));
        assert_eq!(
            code(raw.response().1),
            ErrorCode::InvalidArgument,
            "{lists}"
        );
    }
    // Params nesting past 128 lists and maps are not decoded at all.
    raw.send("put", &put(127));
    assert_eq!(code(raw.response().1), ErrorCode::BadFrame);
    raw.assert_closed();
    assert_data_intact(&agent).await;
}

#[tokio::test]
async fn bin_where_str_is_expected_is_taken_as_the_str_it_spells() {
    use serde_bytes::Bytes;
    use std::collections::BTreeMap;
    #[derive(serde::Serialize)]
    struct Put<'a> {
        db: &'a Bytes,
        collection: &'a Bytes,
        id: &'a str,
        fields: BTreeMap<&'a str, BTreeMap<&'a Bytes, i64>>,
    }
    let (agent, client) = agent_with_data().await;
    let mut raw = Raw::hello(&agent);
    let inner = BTreeMap::from([(Bytes::new(b"k"), 1)]);
    let put = Put {
        db: Bytes::new(b"bugs"),
        collection: Bytes::new(b"bin"),
        id: "x",
        fields: BTreeMap::from([("v", inner)]),
    };
    raw.call("put", &put)
        .expect("bin that spells UTF-8 is taken");
    let rec = client
        .db("bugs")
        .collection("bin")
        .get_record("x")
        .await
        .expect("get")
        .expect("written");
    assert_eq!(
        rec.fields["v"],
        Value::Map([("k".to_owned(), Value::Int(1))].into()),
        "the key reads back as a str"
    );
    let not_utf8 = Put {
        collection: Bytes::new(&[0xff, 0xfe]),
        ..put
    };
    assert_eq!(code(raw.call("put", &not_utf8)), ErrorCode::InvalidParams);
    assert_data_intact(&agent).await;
}

#[tokio::test]
async fn undecodable_frame_gets_an_error_and_a_clean_close() {
    let (agent, _client) = agent_with_data().await;
    let mut raw = Raw::hello(&agent);
    raw.send_bytes(&[0, 0, 0, 3, 0xc1, 0xff, 0x00]);
    let (id, r) = raw.response();
    assert_eq!(id, 0);
    assert_eq!(code(r), ErrorCode::BadFrame);
    raw.assert_closed();
    assert_data_intact(&agent).await;
}

/// A put or a get whose params are followed by stray bytes, or cut short:
/// the frame is refused whole and the connection closed, never the
/// request answered as if its params were whole.
#[tokio::test]
async fn params_with_bytes_after_them_or_cut_short_are_a_bad_frame() {
    let (agent, client) = agent_with_data().await;
    let put = serde_json::json!({
        "db": "bugs", "collection": "bugs", "id": "stray", "fields": {"n": 1}
    });
    let get = serde_json::json!({"db": "bugs", "collection": "c", "id": "a"});
    for (method, params) in [("put", &put), ("get", &get), ("no.such", &get)] {
        let mut buf = Vec::new();
        message::encode_request(&mut buf, 7, method, params, DEFAULT_MAX_FRAME).expect("encode");
        let mut stray = buf.clone();
        stray.push(0xc0);
        let mut cut = buf.clone();
        cut.pop();
        for mut frame in [stray, cut] {
            let len = (frame.len() - LEN_PREFIX) as u32;
            frame[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
            let mut raw = Raw::hello(&agent);
            raw.send_bytes(&frame);
            let (id, r) = raw.response();
            assert_eq!((id, code(r)), (0, ErrorCode::BadFrame), "{method}");
            raw.assert_closed();
        }
    }
    let stray = client
        .db("bugs")
        .collection("bugs")
        .get_record("stray")
        .await;
    assert_eq!(stray.expect("get"), None, "the refused put wrote nothing");
    assert_data_intact(&agent).await;
}

#[tokio::test]
async fn requests_before_hello_are_refused() {
    let (agent, _client) = agent_with_data().await;
    let mut raw = Raw::connect(&agent);
    let r = raw.call("db.list", &serde_json::json!({}));
    assert_eq!(code(r), ErrorCode::HandshakeRequired);
    raw.assert_closed();

    let mut raw = Raw::connect(&agent);
    let r = raw.call(
        "hello",
        &HelloParams {
            protocol: 99,
            ..Default::default()
        },
    );
    assert_eq!(code(r), ErrorCode::UnsupportedProtocol);
    raw.assert_closed();
}

#[tokio::test]
async fn bad_requests_fail_alone_and_the_connection_survives() {
    let (agent, _client) = agent_with_data().await;
    let mut raw = Raw::hello(&agent);

    let r = raw.call("frobnicate", &serde_json::json!({}));
    assert_eq!(code(r), ErrorCode::UnknownMethod);

    // A missing field.
    let err = raw
        .call("put", &serde_json::json!({ "db": "bugs", "fields": {} }))
        .expect_err("missing collection");
    assert_eq!(err.code, ErrorCode::InvalidParams);
    assert!(err.message.contains("collection"), "{}", err.message);

    // A wrong type.
    let err = raw
        .call(
            "get",
            &serde_json::json!({ "db": "bugs", "collection": "bugs", "id": 5 }),
        )
        .expect_err("id must be a string");
    assert_eq!(err.code, ErrorCode::InvalidParams);

    // Params that are not a map at all.
    assert_eq!(code(raw.call("get", &7u8)), ErrorCode::InvalidParams);

    let r = raw.call(
        "get",
        &serde_json::json!({ "db": "nope", "collection": "c", "id": "x" }),
    );
    let err = r.expect_err("unknown db");
    assert_eq!(err.code, ErrorCode::UnknownDatabase);
    assert!(
        err.message.contains("blazectl db create nope"),
        "{}",
        err.message
    );

    let err = raw
        .call(
            "get",
            &serde_json::json!({ "db": "bugs", "collection": "bgus", "id": "x" }),
        )
        .expect_err("unknown collection");
    assert_eq!(err.code, ErrorCode::UnknownCollection);
    assert!(
        err.message.contains("its collections are: bugs"),
        "{}",
        err.message
    );

    let err = raw
        .call(
            "patch",
            &serde_json::json!({ "db": "bugs", "collection": "bugs", "id": "missing", "set": {} }),
        )
        .expect_err("patch of a missing record");
    assert_eq!(err.code, ErrorCode::NotFound);

    let err = raw
        .call(
            "query",
            &serde_json::json!({ "db": "bugs", "collection": "bugs",
                "where": [{ "field": "n", "op": "in", "value": 3 }] }),
        )
        .expect_err("in needs a list");
    assert_eq!(err.code, ErrorCode::TypeMismatch);

    let err = raw
        .call("db.create", &serde_json::json!({ "name": "" }))
        .expect_err("empty name");
    assert_eq!(err.code, ErrorCode::InvalidArgument);

    // A batch with one bad write writes nothing.
    let err = raw
        .call(
            "batch",
            &serde_json::json!({ "db": "bugs", "writes": [
                { "put": { "collection": "bugs", "id": "new1", "fields": {} } },
                { "patch": { "collection": "bugs", "id": "missing", "set": {} } },
            ]}),
        )
        .expect_err("atomic batch");
    assert_eq!(err.code, ErrorCode::NotFound);
    let got = raw
        .call(
            "get",
            &serde_json::json!({ "db": "bugs", "collection": "bugs", "id": "new1" }),
        )
        .expect("get");
    let got: blazedb_proto::api::GetResult = codec::from_slice(&got).expect("decode");
    assert_eq!(got.record, None, "a failed batch must leave nothing behind");

    // After all that, the same connection still works.
    let ok = raw.call("db.list", &serde_json::json!({}));
    assert!(ok.is_ok(), "{ok:?}");
    assert_data_intact(&agent).await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_frame_harms_nobody() {
    let (agent, client) = agent_with_data().await;
    let mut raw = Raw::hello(&agent);
    // Half a frame, then hang up.
    let mut buf = Vec::new();
    message::encode_request(
        &mut buf,
        9,
        "put",
        &serde_json::json!({ "db": "bugs", "collection": "bugs", "id": "half", "fields": {} }),
        DEFAULT_MAX_FRAME,
    )
    .expect("encode");
    raw.send_bytes(&buf[..buf.len() / 2]);
    drop(raw);
    // The agent keeps serving the existing client and new ones.
    let r = client.db("bugs").collection("bugs").get_record("b3").await;
    assert!(r.expect("get").is_some());
    assert_eq!(
        client
            .db("bugs")
            .collection("bugs")
            .get_record("half")
            .await
            .expect("get"),
        None
    );
    assert_data_intact(&agent).await;
}

#[tokio::test]
async fn a_client_gets_a_clear_error_when_the_agent_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = std::time::Instant::now();
    let err = blazedb::Client::connect_to(dir.path().join("none.sock"))
        .await
        .expect_err("no agent");
    assert!(start.elapsed() < Duration::from_secs(5), "must not hang");
    let msg = err.to_string();
    assert!(msg.contains("no BlazeDB agent is listening"), "{msg}");
    assert!(msg.contains("start it with `blazed`"), "{msg}");
}

#[tokio::test]
async fn pipelined_requests_see_the_database_they_follow() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let mut raw = Raw::hello(&agent);
    // Sent back to back, before any answer: the put queues behind the create.
    let create = raw.send("db.create", &serde_json::json!({ "name": "fresh" }));
    let put = raw.send(
        "put",
        &serde_json::json!({ "db": "fresh", "collection": "c", "id": "a", "fields": { "n": null } }),
    );
    let mut answers = std::collections::HashMap::new();
    for _ in 0..2 {
        let (id, r) = raw.response();
        answers.insert(id, r);
    }
    assert!(answers[&create].is_ok(), "{:?}", answers[&create]);
    assert!(answers[&put].is_ok(), "{:?}", answers[&put]);

    // A null field is kept, read back and matched by `= null`.
    let client = agent.client().await.expect("client");
    let coll = client.db("fresh").collection("c");
    let rec = coll.get_record("a").await.expect("get").expect("record");
    assert_eq!(rec.fields.get("n"), Some(&Value::Null));
    let hits = coll
        .query()
        .filter("n", blazedb::FilterOp::Eq, Value::Null)
        .fetch()
        .await
        .expect("query");
    assert_eq!(hits.records.len(), 1);

    // A patch may not both set and unset a field.
    let err = coll
        .patch("a", [("n".to_owned(), Value::Int(1))].into(), &["n"])
        .await
        .expect_err("set and unset");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
}

#[tokio::test]
async fn a_client_that_half_closes_still_gets_its_answers() {
    let (agent, _client) = agent_with_data().await;
    let mut raw = Raw::hello(&agent);
    let id = raw.send(
        "put",
        &serde_json::json!({ "db": "bugs", "collection": "bugs", "id": "late", "fields": {} }),
    );
    raw.s
        .shutdown(std::net::Shutdown::Write)
        .expect("half close");
    let (rid, r) = raw.response();
    assert_eq!(rid, id);
    assert!(r.is_ok(), "{r:?}");
    raw.assert_closed();
}

/// `n` gets of records `b0` to `b29`, ids 1000 on, as one burst of bytes.
fn burst_of_gets(n: u64) -> Vec<u8> {
    let mut burst = Vec::new();
    for i in 0..n {
        let params =
            serde_json::json!({ "db": "bugs", "collection": "bugs", "id": format!("b{}", i % 30) });
        message::encode_request(&mut burst, 1000 + i, "get", &params, DEFAULT_MAX_FRAME)
            .expect("encode");
    }
    burst
}

/// Reads the answers to [`burst_of_gets`]`(n)`: each a record, in order.
fn assert_gets_answered(raw: &mut Raw, n: u64) {
    for i in 0..n {
        let (id, r) = raw.response();
        assert_eq!(id, 1000 + i, "gets are answered in order");
        assert!(r.is_ok(), "{r:?}");
    }
}

#[tokio::test]
async fn an_oversized_frame_after_many_gets_is_refused_once_they_are_answered() {
    let (agent, _client) = agent_with_data().await;
    let mut raw = Raw::hello(&agent);
    // Gets enough for several whole passes of the agent (16 gets each),
    // then a prefix over the limit, and nothing more: the agent must
    // answer every get, then refuse the frame, though a pass ends just
    // before it.
    let mut burst = burst_of_gets(96);
    burst.extend_from_slice(&u32::MAX.to_be_bytes());
    raw.send_bytes(&burst);
    assert_gets_answered(&mut raw, 96);
    let (id, r) = raw.response();
    assert_eq!(id, 0);
    assert_eq!(code(r), ErrorCode::FrameTooLarge);
    raw.assert_closed();
}

#[tokio::test]
async fn a_client_that_half_closes_after_many_gets_gets_every_answer() {
    let (agent, _client) = agent_with_data().await;
    let mut raw = Raw::hello(&agent);
    raw.send_bytes(&burst_of_gets(100));
    raw.s
        .shutdown(std::net::Shutdown::Write)
        .expect("half close");
    assert_gets_answered(&mut raw, 100);
    raw.assert_closed();
}

#[tokio::test]
async fn a_long_run_of_pipelined_gets_is_answered_in_order() {
    let (agent, client) = agent_with_data().await;
    // Gets of records that exist and that do not, and one each for a
    // database and a collection that do not, all in one burst, with a
    // write in the middle: long
    // enough to take the agent many passes.
    let mut raw = Raw::hello(&agent);
    let mut burst = Vec::new();
    let mut sent = Vec::new();
    let mut frame = |method: &str, params: serde_json::Value, id: u64| {
        message::encode_request(&mut burst, id, method, &params, DEFAULT_MAX_FRAME)
            .expect("encode");
    };
    for i in 0..400u64 {
        let id = i + 100;
        if i == 200 {
            frame(
                "put",
                serde_json::json!({ "db": "bugs", "collection": "bugs", "id": "b3", "fields": { "n": -1 } }),
                id,
            );
            continue;
        }
        let (db, collection, rid) = match i {
            77 => ("nope", "bugs", "b1".to_owned()),
            78 => ("bugs", "nope", "b1".to_owned()),
            _ => ("bugs", "bugs", format!("b{}", i % 30)),
        };
        frame(
            "get",
            serde_json::json!({ "db": db, "collection": collection, "id": rid }),
            id,
        );
        sent.push((id, i, rid));
    }
    raw.send_bytes(&burst);

    let mut order = Vec::new();
    let mut answers = std::collections::HashMap::new();
    for _ in 0..400 {
        let (id, r) = raw.response();
        order.push(id);
        answers.insert(id, r);
    }
    let gets_in_order: Vec<u64> = order.iter().copied().filter(|&id| id != 300).collect();
    let sent_ids: Vec<u64> = sent.iter().map(|s| s.0).collect();
    assert_eq!(gets_in_order, sent_ids, "reads come back in the order sent");
    assert!(answers[&300].is_ok(), "{:?}", answers[&300]);
    for (id, i, rid) in &sent {
        let result = answers.remove(id).expect("answered");
        if *i == 77 {
            assert_eq!(code(result), ErrorCode::UnknownDatabase);
            continue;
        }
        if *i == 78 {
            assert_eq!(code(result), ErrorCode::UnknownCollection);
            continue;
        }
        let got: blazedb_proto::api::GetResult =
            codec::from_slice(&result.expect("a get succeeds")).expect("decode");
        let n: i64 = rid[1..].parse().expect("numbered id");
        match got.record {
            Some(r) if n < 20 => {
                assert_eq!(r.id, *rid);
                // Reads sent before the write never see it.
                if n != 3 || *i < 200 {
                    assert_eq!(r.fields.get("n"), Some(&Value::Int(n)), "{rid} sent {i}");
                }
            }
            None if n >= 20 => {}
            other => panic!("{rid}: unexpected {other:?}"),
        }
    }
    let b3 = client
        .db("bugs")
        .collection("bugs")
        .get_record("b3")
        .await
        .expect("get")
        .expect("b3");
    assert_eq!(b3.fields.get("n"), Some(&Value::Int(-1)));
}
