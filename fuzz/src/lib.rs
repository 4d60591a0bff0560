//! The fuzz targets' bodies: every decoder that reads bytes from outside
//! the process (a local app, a peer, a person typing), each fed arbitrary
//! input. None may panic, and whatever decodes must encode and decode
//! again to the same bytes, so a decoder never accepts what its encoder
//! cannot say.
//!
//! `fuzz/fuzz_targets/` wraps each in libFuzzer (`fuzz/run.sh` runs them);
//! `fuzz/tests/corpus.rs` replays the corpora in the normal test run.

use blazedb_proto::api::{self, Write};
use blazedb_proto::codec;
use blazedb_proto::frame;
use blazedb_proto::mesh::{Invite, PeerMessage};
use blazedb_proto::message;
use blazedb_proto::rules::Selector;
use blazedb_proto::sealed::SealedOp;
use blazedb_proto::{
    DeviceId, Hlc, OpBody, RawFields, RawPut, RawPuts, RawRecordRef, Request, SyncMessage, Value,
};

/// A target's body: takes any bytes, panics on a bug.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/run.sh` and the corpus replay know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("request", request),
    ("peer_message", peer_message),
    ("sync_message", sync_message),
    ("invite", invite),
    ("value", value),
    ("selector", selector),
    ("cli_fields", cli_fields),
    ("cli_filter", cli_filter),
    ("sealed", sealed),
    ("record", record),
    ("log_chunk", log_chunk),
];

/// Every IPC method: `request` decodes params as each of them.
const METHODS: &[&str] = &[
    "hello",
    "status",
    "db.create",
    "db.open",
    "db.list",
    "db.drop",
    "index.create",
    "index.drop",
    "put",
    "patch",
    "delete",
    "get",
    "get_many",
    "query",
    "batch",
    "subscribe",
    "unsubscribe",
    "db.sync",
    "db.set",
    "db.peers",
    "db.rules.set",
    "db.rules.get",
    "db.key.grant",
    "db.key.rotate",
    "mesh.status",
    "mesh.create",
    "mesh.invite",
    "mesh.join",
    "mesh.remove",
    "mesh.admin",
    "mesh.device.set",
    "mesh.leave",
    "peers",
    "peer.add",
    "peer.list",
    "peer.remove",
    "app.add",
    "app.list",
    "app.show",
    "app.remove",
    "app.grant",
    "app.revoke",
    "topology",
    "dashboard",
];

/// A frame's length prefix, then its payload as a request and as a
/// response or notification (what the agent and the client read).
pub fn frame(data: &[u8]) {
    const MAX: u32 = 1 << 20;
    match frame::frame_len(data, MAX) {
        Ok(Some(len)) => {
            assert!(len <= data.len(), "a frame longer than its bytes");
            let payload = &data[frame::LEN_PREFIX..len];
            let _ = message::decode_request(payload);
            if let Ok(message::RawIncoming::Response {
                result: Ok(result), ..
            }) = message::decode_incoming(payload)
            {
                client_results(result);
            }
        }
        Ok(None) => {}
        Err(e) => assert!(e.len > u64::from(MAX), "{e:?}"),
    }
}

/// An IPC request: the envelope, then its params as the method it names,
/// and as a method the first byte picks (so every params decoder sees
/// every input).
pub fn request(data: &[u8]) {
    if let Ok(raw) = message::decode_request(data) {
        let _ = Request::decode(raw.method, raw.params);
        raw_puts(raw.method, raw.params);
    }
    if let Some((first, params)) = data.split_first() {
        let method = METHODS[usize::from(*first) % METHODS.len()];
        let decoded = Request::decode(method, params).is_ok();
        raw_puts(method, params);
        // The agent reads params after the envelope unchecked and walks
        // them only when they do not decode: whatever decodes must be one
        // well-formed value, or a malformed frame would be answered.
        if decoded || RawPuts::parse(method, params).is_some() {
            message::check_params(params).expect("params that decode are one value");
        }
        record_ref(params);
    }
}

/// A get's params read in place must name what decoding them names, and
/// be one well-formed value (the agent answers them without walking them).
fn record_ref(params: &[u8]) {
    let Some(raw) = RawRecordRef::parse(params) else {
        return;
    };
    let decoded: api::RecordRef = codec::from_slice(params).expect("read in place, so decodes");
    assert_eq!(
        (raw.db, raw.collection, raw.id),
        (
            decoded.db.as_str(),
            decoded.collection.as_str(),
            decoded.id.as_str()
        )
    );
    message::check_params(params).expect("params read in place are one value");
}

/// The client's hand decoders of results read what serde reads.
fn client_results(bytes: &[u8]) {
    use blazedb_proto::api::{BatchResult, GetManyResult, GetResult};
    let encoded = |r: Result<BatchResult, _>| r.ok().and_then(|r| codec::to_vec(&r).ok());
    assert_eq!(
        encoded(BatchResult::decode(bytes)),
        encoded(codec::from_slice(bytes))
    );
    let encoded = |r: Result<GetResult, _>| r.ok().and_then(|r| codec::to_vec(&r).ok());
    assert_eq!(
        encoded(GetResult::decode(bytes)),
        encoded(codec::from_slice(bytes))
    );
    let encoded = |r: Result<GetManyResult, _>| r.ok().and_then(|r| codec::to_vec(&r).ok());
    assert_eq!(
        encoded(GetManyResult::decode(bytes)),
        encoded(codec::from_slice(bytes))
    );
}

/// Puts read in place must be the puts decoding gives.
fn raw_puts(method: &str, params: &[u8]) {
    let Some(raw) = RawPuts::parse(method, params) else {
        return;
    };
    let decoded = match Request::decode(method, params) {
        Ok(Request::Put(p)) => vec![Write::from(p)],
        Ok(Request::Batch(b)) => b.writes,
        other => panic!("RawPuts read params that decode as {other:?}"),
    };
    assert_eq!(raw.puts.len(), decoded.len());
    for (put, write) in raw.puts.iter().zip(decoded) {
        let Write::Put {
            collection,
            id,
            fields,
        } = write
        else {
            panic!("RawPuts read a write that is no put");
        };
        assert_eq!(
            (put.collection, put.id),
            (collection.as_str(), id.as_deref())
        );
        assert_eq!(put.fields.len(), fields.len());
        for ((name, bytes), (want_name, want)) in put.fields.iter().zip(&fields) {
            assert_eq!(name, want_name);
            let got: Value = codec::from_slice(bytes).expect("a raw field value decodes");
            assert_eq!(codec::to_vec(&got).ok(), codec::to_vec(want).ok());
        }
        same_entries(&put.fields);
    }
}

/// A put's field entries copied as they came must be the entries written
/// field by field.
fn same_entries(fields: &RawFields<'_>) {
    let one_by_one = RawFields::new(fields.to_vec());
    assert_eq!(
        blazedb_proto::put_body("c", "i", fields),
        blazedb_proto::put_body("c", "i", &one_by_one),
        "entries copied at once differ from the same entries written one by one"
    );
}

/// A stored record, as a peer's snapshot carries it: reading must not
/// panic, and a record that reads encodes to bytes that read back the
/// same, and that a get sees as the decoded record shows.
pub fn record(data: &[u8]) {
    let _ = blazed::store::read_visible(data);
    if let Some(bytes) = blazed::store::reencode_record(data) {
        assert_eq!(
            blazed::store::reencode_record(&bytes).as_ref(),
            Some(&bytes),
            "a record read back encodes otherwise"
        );
        blazed::store::read_visible(&bytes).expect("a record encoded here reads");
    }
}

/// An op-log chunk as stored: reading must not panic, and the ops of one
/// that reads, chunked again as the store writes them, read back the same
/// and chunk again to the same bytes.
pub fn log_chunk(data: &[u8]) {
    if let Some((ops, chunks)) = blazed::store::reread_log_chunk(data) {
        let mut again = Vec::new();
        for chunk in &chunks {
            let (read, rechunked) =
                blazed::store::reread_log_chunk(chunk).expect("a chunk written here reads");
            assert_eq!(
                &rechunked,
                std::slice::from_ref(chunk),
                "a chunk chunks again otherwise"
            );
            again.extend(read);
        }
        assert_eq!(again, ops, "the ops read back otherwise");
    }
}

/// A control-stream message from a peer.
pub fn peer_message(data: &[u8]) {
    if let Ok(m) = PeerMessage::decode(data) {
        let bytes = m.encode().expect("a decoded message encodes");
        let again = PeerMessage::decode(&bytes).expect("an encoded message decodes");
        assert_eq!(again.encode().expect("encodes"), bytes);
    }
}

/// A sync message from a peer.
pub fn sync_message(data: &[u8]) {
    // Every form serde reads (`Ops` among them, written as serde writes
    // them) decodes as serde reads it; the packed `Ops` form is the
    // decoder's own.
    if let Ok(m) = codec::from_slice::<SyncMessage>(data) {
        assert_eq!(
            SyncMessage::decode(data).ok(),
            Some(m),
            "a message serde reads decoded otherwise"
        );
    }
    if let Ok(m) = SyncMessage::decode(data) {
        let bytes = m.encode().expect("a decoded message encodes");
        let again = SyncMessage::decode(&bytes).expect("an encoded message decodes");
        assert_eq!(again, m, "a message decoded otherwise once encoded again");
        assert_eq!(again.encode().expect("encodes"), bytes);
    }
}

/// An invite code, as a person pastes it.
pub fn invite(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A code read back says the same again (reading may normalise: an
    // older form, addresses a code leaves out).
    if let Ok(invite) = Invite::from_code(text) {
        let code = invite.to_code();
        let again = Invite::from_code(&code).expect("a code made here reads");
        assert_eq!(again.to_code(), code);
    }
}

/// A value, and the same bytes as an op body: the hand decoder of puts
/// (`RawPut`, `OpBody::decode`) must agree with serde's.
pub fn value(data: &[u8]) {
    if let Ok(v) = codec::from_slice::<Value>(data) {
        let bytes = codec::to_vec(&v).expect("a decoded value encodes");
        let again: Value = codec::from_slice(&bytes).expect("an encoded value decodes");
        assert_eq!(codec::to_vec(&again).expect("encodes"), bytes);
    }
    // The hand decoder reads what serde reads (compared encoded: a NaN
    // is not equal to itself).
    let mut r = codec::raw::Reader::new(data);
    if let Some(v) = r.value_tree() {
        let used = &data[..data.len() - r.remaining()];
        let by_serde =
            codec::from_slice::<Value>(used).expect("serde reads what the hand decoder read");
        assert_eq!(codec::to_vec(&v).ok(), codec::to_vec(&by_serde).ok());
    }
    client_results(data);
    let by_serde = codec::from_slice::<OpBody>(data);
    let by_hand = OpBody::decode(data);
    if let Ok(body) = &by_hand {
        assert_eq!(
            codec::to_vec(body).ok(),
            by_serde.as_ref().ok().and_then(|b| codec::to_vec(b).ok()),
            "the hand decoder took a body serde refuses, or read it otherwise"
        );
    }
    if let Some(raw) = RawPut::parse(data) {
        let Ok(OpBody::Put {
            collection,
            id,
            fields,
        }) = by_serde
        else {
            panic!("RawPut took a body that is no put");
        };
        assert_eq!((raw.collection, raw.id), (collection.as_str(), id.as_str()));
        assert_eq!(raw.fields.len(), fields.len());
        for ((name, bytes), (want_name, want)) in raw.fields.iter().zip(&fields) {
            assert_eq!(name, want_name);
            let got: Value = codec::from_slice(bytes).expect("a raw field value decodes");
            assert_eq!(codec::to_vec(&got).ok(), codec::to_vec(want).ok());
        }
        same_entries(&raw.fields);
    }
}

/// A device selector of the access rules, as an admin types it.
pub fn selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = text.parse::<Selector>() {
        let shown = s.to_string();
        assert_eq!(shown.parse::<Selector>().ok(), Some(s), "{shown}");
    }
}

/// `blazectl put`'s field arguments, split at NUL bytes.
pub fn cli_fields(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let args: Vec<String> = text.split('\0').map(str::to_owned).collect();
    let _ = blazedb::cli::fields::parse_fields(&args);
}

/// `blazectl query --where` expressions.
pub fn cli_filter(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = blazedb::cli::fields::parse_filter(text);
}

/// The op the `sealed` target opens bodies as.
pub const SEALED_OP: SealedOp<'static> = SealedOp {
    db: "notes",
    writer: DeviceId([3; 32]),
    seq: 9,
    hlc: Hlc(1 << 20),
    priority: 0,
};

/// The key the `sealed` target holds (epoch 1).
pub fn sealing_key() -> blazed::crypto::seal::ContentKey {
    blazed::crypto::seal::ContentKey::from_bytes(1, [7; 32]).expect("a key")
}

/// A sealed op body from a peer, opened with a key this device holds: a
/// body opens only as the op it was sealed for.
pub fn sealed(data: &[u8]) {
    use blazed::crypto::seal::open;
    let (key, op) = (sealing_key(), SEALED_OP);
    let other = SealedOp { seq: 10, ..op };
    // What opens (a body really sealed for this op) opens as no other.
    if open(|e| (e == 1).then_some(&key), &op, data).is_ok() {
        assert!(open(|_| Some(&key), &other, data).is_err());
    }
    // Sealing the bytes opens them again, and only as this op.
    let sealed = key.seal(&op, data).expect("seals");
    assert_eq!(open(|_| Some(&key), &op, &sealed).as_deref(), Ok(data));
    assert!(open(|_| Some(&key), &other, &sealed).is_err());
}
