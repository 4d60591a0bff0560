//! Writes the seed corpora of the fuzz targets into `fuzz/corpus/`, from
//! what the tests send: `cargo run -p blazedb-fuzz --example seeds`.
//! Inputs the fuzzer finds are kept beside them.

use std::path::Path;

use blazedb_proto::codec;
use blazedb_proto::mesh::{Invite, MeshId, PeerMessage, Role};
use blazedb_proto::message;
use blazedb_proto::{DeviceId, Hlc, Op, OpBody, SyncMessage, Value};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut seeds: Vec<(&str, &str, Vec<u8>)> = Vec::new();

    let requests = [
        (
            "put",
            json!({"db": "notes", "collection": "todo", "id": "t1", "fields": {"title": "milk", "n": 3}}),
        ),
        (
            "get",
            json!({"db": "notes", "collection": "todo", "id": "t1"}),
        ),
        (
            "get_many",
            json!({"db": "notes", "collection": "todo", "ids": ["t1", "t2"]}),
        ),
        (
            "batch",
            json!({"db": "notes", "writes": [{"put": {"collection": "todo", "id": "a", "fields": {"x": 1}}}, {"delete": {"collection": "todo", "id": "b"}}]}),
        ),
        (
            "query",
            json!({"db": "notes", "collection": "todo", "where": [{"field": "n", "op": ">=", "value": 2}], "limit": 10}),
        ),
        ("subscribe", json!({"db": "notes", "since": 4})),
        ("hello", json!({"protocol": 1, "client": "fuzz"})),
        ("db.create", json!({"name": "notes", "sync_mode": "sync"})),
    ];
    // A batch of puts alone, which is read in place (`RawPuts`).
    let puts = json!({"db": "notes", "writes": [
        {"put": {"collection": "todo", "id": "a", "fields": {"a": [1, {"b": null}], "x": 1.5}}},
        {"put": {"collection": "todo", "id": null, "fields": {}}},
    ]});
    let mut frame = Vec::new();
    message::encode_request(&mut frame, 99, "batch", &puts, 1 << 20)?;
    seeds.push(("request", "batch_of_puts", frame[4..].to_vec()));
    for (i, (method, params)) in requests.iter().enumerate() {
        let mut frame = Vec::new();
        message::encode_request(&mut frame, i as u64 + 1, method, params, 1 << 20)?;
        seeds.push(("frame", method, frame.clone()));
        seeds.push(("request", method, frame[4..].to_vec()));
    }

    let op = |seq: u64, body: &OpBody| -> anyhow::Result<Op> {
        Ok(Op {
            origin: DeviceId([1; 32]),
            seq,
            hlc: Hlc(1_750_000_000_000 << Hlc::COUNTER_BITS),
            priority: 0,
            incarnation: if seq.is_multiple_of(2) { 0 } else { 7 },
            body: body.encode()?,
        })
    };
    let put = OpBody::Put {
        collection: "todo".into(),
        id: "t1".into(),
        fields: [
            ("title".to_owned(), Value::String("milk".into())),
            ("n".to_owned(), Value::Int(3)),
        ]
        .into(),
    };
    let delete = OpBody::Delete {
        collection: "todo".into(),
        id: "t2".into(),
    };
    let ops = SyncMessage::Ops {
        db: "notes".into(),
        epoch: 5,
        ops: vec![op(1, &put)?, op(2, &delete)?],
    };
    seeds.push(("sync_message", "ops", ops.encode()?));
    // The form serde writes, which peers sent before `Ops` were packed.
    seeds.push(("sync_message", "ops_serde", codec::to_vec(&ops)?));
    if let SyncMessage::Ops { db, epoch, ops } = &ops {
        let chunk = blazedb_proto::log_chunk::of_ops(ops);
        let ids = ops.iter().map(|o| (o.writer(), o.seq)).collect();
        let chunks = SyncMessage::Chunks {
            db: db.clone(),
            epoch: *epoch,
            chunks: vec![blazedb_proto::sync::LogChunk::new(chunk, ids)],
        };
        seeds.push(("sync_message", "chunks", chunks.encode()?));
    }
    let ack = SyncMessage::SnapshotAck {
        db: "notes".into(),
        id: 3,
        part: 1,
    };
    seeds.push(("sync_message", "snapshot_ack", ack.encode()?));
    seeds.push(("value", "put_body", put.encode()?));
    seeds.push(("value", "delete_body", delete.encode()?));
    let value = Value::Map(
        [
            (
                "list".to_owned(),
                Value::List(vec![
                    Value::Int(-1),
                    Value::Float(2.5),
                    Value::Bool(true),
                    Value::Null,
                ]),
            ),
            ("bytes".to_owned(), Value::Bytes(vec![0, 1, 2])),
        ]
        .into(),
    );
    seeds.push(("value", "map", codec::to_vec(&value)?));

    // Get results as the agent writes them, which the client reads by hand.
    let Value::Map(fields) = value else {
        unreachable!("the value above is a map")
    };
    let record = blazedb_proto::api::Record {
        id: "t1".into(),
        fields,
        version: Hlc(7),
    };
    let got = blazedb_proto::api::GetResult {
        record: Some(record.clone()),
    };
    let many = blazedb_proto::api::GetManyResult {
        records: vec![Some(record), None],
    };
    seeds.push(("value", "get_result", codec::to_vec(&got)?));
    seeds.push(("value", "get_many_result", codec::to_vec(&many)?));
    let written = blazedb_proto::api::BatchResult {
        results: vec![blazedb_proto::api::WriteResult {
            id: "t1".into(),
            seq: 3,
            hlc: Hlc(7),
            cursor: 9,
        }],
    };
    seeds.push(("value", "batch_result", codec::to_vec(&written)?));
    let mut frame = Vec::new();
    message::encode_response(&mut frame, 5, &many, 1 << 20)?;
    seeds.push(("frame", "get_many_result", frame));

    let join = PeerMessage::Join {
        version: 1,
        invite: [4; 8],
        proof: [5; 32],
        name: "laptop".into(),
        role: Role::Device,
    };
    seeds.push(("peer_message", "join", join.encode()?));

    let invite = Invite {
        mesh: MeshId([9; 16]),
        id: [1; 8],
        secret: [2; 32],
        inviter: DeviceId([3; 32]),
        addrs: vec!["192.0.2.7:7340".into(), "[2001:db8::1]:7340".into()],
        expires_ms: 1_800_000_000_000,
    };
    seeds.push(("invite", "two_addrs", invite.to_code().into_bytes()));

    for (name, text) in [
        ("team", "team:ios"),
        ("hubs", "role:hub"),
        ("everyone", "*"),
    ] {
        seeds.push(("selector", name, text.as_bytes().to_vec()));
    }
    let device = format!("device:{}", DeviceId([3; 32]));
    seeds.push(("selector", "device", device.into_bytes()));

    for (name, text) in [
        ("pairs", "title=milk\0n:=3\0tags:=[\"a\",\"b\"]"),
        (
            "object",
            "{\"when\": {\"$timestamp\": \"2026-12-01T10:00:00Z\"}, \"u\": {\"$uuid\": \"6f1c2b7e-0000-4000-8000-000000000000\"}}",
        ),
        ("bytes", "b:={\"$bytes\": \"00ff\"}"),
    ] {
        seeds.push(("cli_fields", name, text.as_bytes().to_vec()));
    }
    for (name, text) in [
        ("compare", "n >= 3"),
        ("in", "status in [\"open\",\"done\"]"),
        ("prefix", "title prefix mi"),
        ("not", "done != true"),
    ] {
        seeds.push(("cli_filter", name, text.as_bytes().to_vec()));
    }

    let key = blazedb_fuzz::sealing_key();
    seeds.push((
        "sealed",
        "put",
        key.seal(&blazedb_fuzz::SEALED_OP, &put.encode()?)?,
    ));
    seeds.push(("sealed", "empty", Vec::new()));

    let fields = [
        ("title".to_owned(), Value::from("milk")),
        (
            "tags".to_owned(),
            Value::List(vec![Value::Int(1), Value::Null]),
        ),
    ];
    let layout = blazed::store::fresh_put_layout(
        &DeviceId([7; 32]),
        "todo",
        "t1",
        fields.into(),
        1,
        Hlc(1 << 20),
    )?;
    seeds.push(("record", "fresh_put", layout.record));

    let mut ops = vec![layout.log_op.clone()];
    ops.push(Op {
        origin: DeviceId([8; 32]),
        seq: 300,
        priority: 2,
        incarnation: 70_000,
        ..layout.log_op.clone()
    });
    ops.push(Op {
        seq: 2,
        ..layout.log_op
    });
    let chunks =
        blazed::store::log_chunks(ops.iter().enumerate().map(|(i, op)| (i as u64 + 1, op)));
    seeds.push(("log_chunk", "compact", chunks[0].1.clone()));
    // Enough entries alike that their chunk is stored compressed.
    let alike: Vec<Op> = (1..=40)
        .map(|seq| Op {
            seq,
            ..ops[2].clone()
        })
        .collect();
    let compressed =
        blazed::store::log_chunks(alike.iter().enumerate().map(|(i, op)| (i as u64 + 1, op)));
    seeds.push(("log_chunk", "compressed", compressed[0].1.clone()));
    // The forms logs were written in before: a bare op, and ops framed by
    // their lengths after 0xC1.
    let bare = codec::to_vec(&ops[1])?;
    let mut framed = vec![0xC1];
    for op in &ops {
        let bytes = codec::to_vec(op)?;
        framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        framed.extend_from_slice(&bytes);
    }
    seeds.push(("log_chunk", "bare", bare));
    seeds.push(("log_chunk", "framed", framed));

    for (target, name, bytes) in seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}
