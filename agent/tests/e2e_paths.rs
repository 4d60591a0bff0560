//! An end-to-end encrypted database over two paths: a blind hub that
//! alters a sealed op on its way to a device, and the op's writer, linked
//! to that device directly. Sync engines over real stores, driven by hand
//! with the hub's messages passed through a tampering relay.

#![allow(clippy::unwrap_used)]

use blazed::store::{Store, StoreOptions};
use blazed::sync::{Engine, EngineConfig, Event, SyncStore};
use blazedb_proto::api::{DbSettings, Encryption, Write};
use blazedb_proto::{DeviceId, Fields, SyncMessage, Value, VersionVector};

const DB: &str = "notes";

/// The wall clock: local writes are stamped by it, and an engine holds
/// back operations stamped far ahead of the time it is given.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
    engine: Engine<Store>,
    events: Vec<Event>,
}

fn e2e() -> DbSettings {
    DbSettings {
        encryption: Encryption::E2e,
        ..DbSettings::default()
    }
}

fn node(rt: &tokio::runtime::Runtime, n: u8, make_key: bool) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), DeviceId([n; 32]), StoreOptions::default()).unwrap();
    if make_key {
        rt.block_on(store.create_db(DB, e2e(), false)).unwrap();
    } else {
        rt.block_on(store.create_db_from_peer(DB, e2e())).unwrap();
    }
    let engine = Engine::new(
        store.device(),
        store.clone(),
        EngineConfig::default(),
        now(),
    );
    Node {
        _dir: dir,
        store,
        engine,
        events: Vec::new(),
    }
}

/// Passes messages between `a` and `b` until neither has more, each from
/// `a` through `relay` (which may alter it).
fn exchange(a: &mut Node, b: &mut Node, relay: &mut dyn FnMut(&mut SyncMessage)) {
    let (a_id, b_id) = (a.store.device(), b.store.device());
    a.engine.connected(b_id, now());
    b.engine.connected(a_id, now());
    loop {
        let mut moved = false;
        while let Some((_, m)) = a.engine.poll_transmit() {
            let mut m = over_the_wire(&m);
            relay(&mut m);
            b.engine.handle(a_id, m, now());
            moved = true;
        }
        while let Some((_, m)) = b.engine.poll_transmit() {
            a.engine.handle(b_id, over_the_wire(&m), now());
            moved = true;
        }
        for n in [&mut *a, &mut *b] {
            while let Some(e) = n.engine.poll_event() {
                n.events.push(e);
            }
        }
        if !moved && !durable_then_pumped(a) && !durable_then_pumped(b) {
            break;
        }
    }
    a.engine.disconnected(&b_id);
    b.engine.disconnected(&a_id);
}

/// `m` as the peer reads it: encoded and decoded, as the agent's sessions
/// send it.
fn over_the_wire(m: &SyncMessage) -> SyncMessage {
    SyncMessage::decode(&m.encode().expect("encodes")).expect("decodes")
}

/// Waits, ten seconds at most, until what `n`'s store applied is durable,
/// then has its engine pass it on, as the agent's driver does on the
/// store's notice; says whether that sent anything.
fn durable_then_pumped(n: &mut Node) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while n.store.durable_generation() < n.store.commit_generation() {
        assert!(
            std::time::Instant::now() < deadline,
            "a commit never became durable"
        );
        std::thread::yield_now();
    }
    n.engine.local_commit(DB, now());
    n.engine.has_transmit()
}

fn held(n: &Node, origin: &DeviceId) -> u64 {
    n.store.sync_state(DB).unwrap().vector.get(origin)
}

/// Every op `n` logged, in log order, as it goes to a peer.
fn logged(n: &Node) -> Vec<blazedb_proto::Op> {
    let all = blazed::sync::ReadLimits {
        max_items: 100,
        max_bytes: 1 << 20,
    };
    n.store
        .read_ops(DB, &VersionVector::new(), 0, all)
        .unwrap()
        .ops
}

fn record(n: &Node, id: &str) -> Option<Fields> {
    n.store.get(DB, "secret", id).unwrap().map(|r| r.fields)
}

#[test]
fn an_op_altered_at_the_hub_is_refused_and_the_writer_brings_it_whole() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut writer = node(&rt, 1, true);
    let mut hub = node(&rt, 2, false);
    let mut device = node(&rt, 3, false);
    let key = writer.store.current_key(DB).unwrap();
    device.store.add_key(DB, key).unwrap();
    let origin = writer.store.device();
    let writes = (1..=3)
        .map(|i| Write::Put {
            collection: "secret".into(),
            id: Some(format!("r{i}")),
            fields: Fields::from([("n".to_owned(), Value::Int(i))]),
        })
        .collect();
    rt.block_on(writer.store.write(DB, writes)).unwrap();
    writer.engine.local_commit(DB, now());

    exchange(&mut writer, &mut hub, &mut |_| {});
    assert_eq!(held(&hub, &origin), 3, "the blind hub holds every op");

    // The hub passes the second op on with one byte of its body flipped,
    // in whichever form it sends it.
    let (mut altered, mut whole) = (0, 0);
    let alter = |ops: &mut Vec<blazedb_proto::Op>| {
        let mut n = 0;
        for op in ops.iter_mut().filter(|o| o.seq == 2) {
            let last = op.body.len() - 1;
            op.body[last] ^= 0x40;
            n += 1;
        }
        n
    };
    exchange(&mut hub, &mut device, &mut |m| match m {
        SyncMessage::Ops { ops, .. } => altered += alter(ops),
        SyncMessage::Chunks { chunks, .. } => {
            whole += chunks.len();
            for chunk in chunks.iter_mut() {
                let (_, mut ops) = chunk.clone().into_parts().unwrap();
                let n = alter(&mut ops);
                if n > 0 {
                    altered += n;
                    let ids = ops.iter().map(|o| (o.writer(), o.seq)).collect();
                    let stored = blazedb_proto::log_chunk::of_ops(&ops);
                    *chunk = blazedb_proto::sync::LogChunk::new(stored, ids);
                }
            }
        }
        _ => {}
    });
    assert!(altered > 0, "the relay never saw the op to alter");
    assert!(whole > 0, "a blind hub relays its log's chunks whole");
    assert_eq!(
        held(&device, &origin),
        1,
        "the device counts an op it refused"
    );
    assert!(record(&device, "r1").is_some());
    assert!(
        record(&device, "r2").is_none(),
        "the altered op was applied"
    );
    assert!(
        record(&device, "r3").is_none(),
        "an op after the gap was applied"
    );
    let logged = logged(&device);
    assert_eq!(logged.len(), 1, "the altered op was logged");
    assert!(
        device.events.iter().any(|e| matches!(
            e,
            Event::Unopened { unopened, .. } if unopened.seq == 2 && unopened.damaged
        )),
        "the refusal was not reported: {:?}",
        device.events
    );

    // The writer, linked directly, brings the op as it made it.
    exchange(&mut writer, &mut device, &mut |_| {});
    assert_eq!(held(&device, &origin), 3);
    assert_eq!(
        record(&device, "r2").unwrap()["n"],
        Value::Int(2),
        "the whole op did not arrive by the other path"
    );
    assert!(record(&device, "r3").is_some());
    for n in [writer, hub, device] {
        rt.block_on(n.store.shutdown()).unwrap();
    }
}

/// A put read in place is prepared as the parts the log keeps, whether or
/// not its database seals; where it does, the writer logs those parts
/// clear, they leave sealed as a put's seal covers them, and a peer with
/// the key opens the whole put and applies it.
#[test]
fn a_put_prepared_as_parts_is_sealed_whole_where_its_database_seals() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut writer = node(&rt, 1, true);
    let mut device = node(&rt, 3, false);
    let key = writer.store.current_key(DB).unwrap();
    device.store.add_key(DB, key).unwrap();
    let params = blazedb_proto::api::BatchParams {
        db: DB.into(),
        writes: vec![Write::Put {
            collection: "secret".into(),
            id: Some("r1".into()),
            fields: Fields::from([("n".to_owned(), Value::Int(7))]),
        }],
    };
    let bytes = blazedb_proto::codec::to_vec(&params).unwrap();
    let puts = blazedb_proto::RawPuts::parse("batch", &bytes).unwrap();
    let prepared = blazed::store::prepare_puts(
        &writer.store.device(),
        writer.store.incarnation(),
        0,
        &puts.puts,
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    writer.store.submit(blazed::store::Command::Write {
        db: DB.into(),
        writes: prepared,
        reply: Box::new(move |r| tx.send(r).unwrap()),
    });
    rx.recv().unwrap().unwrap();
    writer.engine.local_commit(DB, now());

    let logged = logged(&writer);
    assert_eq!(logged.len(), 1);
    assert_eq!(
        logged[0].body[0],
        blazedb_proto::sealed::SEALED_MARK,
        "the op left unsealed"
    );
    exchange(&mut writer, &mut device, &mut |_| {});
    assert_eq!(
        record(&device, "r1"),
        Some(Fields::from([("n".to_owned(), Value::Int(7))])),
        "the peer did not open and apply the put"
    );
    for n in [writer, device] {
        rt.block_on(n.store.shutdown()).unwrap();
    }
}
