//! Chunks of the op log sent whole: a peer that lacks every op of a
//! stored chunk is sent its bytes as they are, and a replica that applies
//! every op of one as it came keeps those bytes in its own log.

use blazedb_proto::api::{DbSettings, Write};
use blazedb_proto::{DeviceId, Fields, Op, Value, VersionVector};

use super::Store;
use super::test_dev::{Dev, dev, published, rt};
use crate::sync::{PackedRead, ReadLimits, SyncStore as _, WholeChunk, WriteScreen};

/// Room for every op the tests write.
const ALL: ReadLimits = ReadLimits {
    max_items: 10_000,
    max_bytes: 16 << 20,
};

/// Writes `n` puts to "notes" on `d` in one write.
fn write_puts(rt: &tokio::runtime::Runtime, d: &Dev, from: usize, n: usize) {
    let writes = (from..from + n)
        .map(|i| Write::Put {
            collection: "notes".into(),
            id: Some(format!("note-{i:06}")),
            fields: Fields::from([
                ("text".to_owned(), Value::from(format!("note number {i}"))),
                ("done".to_owned(), Value::Bool(i % 2 == 0)),
            ]),
        })
        .collect();
    rt.block_on(d.store.write("notes", writes)).expect("write");
}

/// The op log of "notes" as stored: each chunk's key and bytes.
fn stored_log(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = store.db("notes").expect("db");
    db.log
        .iter()
        .map(|kv| {
            let (k, v) = kv.into_inner().expect("a log chunk");
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

/// Each chunk's key and length, to say what a log holds.
fn sizes(log: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, usize)> {
    log.iter().map(|(k, v)| (k.clone(), v.len())).collect()
}

/// What `store` reads of "notes" for a peer holding `have`, from `from`.
fn read_for(store: &Store, have: &VersionVector, from: u64, limits: ReadLimits) -> PackedRead {
    store
        .read_ops_packed("notes", have, from, limits)
        .expect("read for a peer")
}

/// Every op of "notes" in log order.
fn all_ops(store: &Store) -> Vec<Op> {
    store
        .read_ops("notes", &VersionVector::new(), 0, ALL)
        .expect("read the log")
        .ops
}

/// The ops of `chunks` and the runs they came in, as the engine hands
/// them to the store.
fn as_received(chunks: Vec<blazedb_proto::sync::LogChunk>) -> (Vec<Op>, Vec<WholeChunk>) {
    let (mut ops, mut whole) = (Vec::new(), Vec::new());
    for chunk in chunks {
        let (stored, read) = chunk.into_parts().expect("a chunk read back");
        let start = ops.len();
        ops.extend(read);
        whole.push(WholeChunk {
            ops: start..ops.len(),
            stored,
        });
    }
    (ops, whole)
}

fn two_with_notes(rt: &tokio::runtime::Runtime) -> (Dev, Dev) {
    let (a, b) = (dev(1), dev(2));
    for d in [&a, &b] {
        rt.block_on(d.store.create_db("notes", DbSettings::default(), false))
            .expect("create");
    }
    (a, b)
}

#[test]
fn a_peer_lacking_whole_chunks_is_sent_them_as_stored_and_keeps_them_so() {
    let rt = rt();
    let (a, mut b) = two_with_notes(&rt);
    write_puts(&rt, &a, 0, 300);
    write_puts(&rt, &a, 300, 900);
    let a_log = stored_log(&a.store);
    assert!(a_log.len() >= 2, "several chunks: {}", a_log.len());

    let read = read_for(&a.store, &VersionVector::new(), 0, ALL);
    assert!(read.ops.is_empty(), "whole chunks, not ops");
    assert_eq!(read.next, 1200);
    let sent: Vec<&[u8]> = read.chunks.iter().map(|c| c.stored()).collect();
    let kept: Vec<&[u8]> = a_log.iter().map(|(_, v)| &v[..]).collect();
    assert_eq!(sent, kept, "each chunk as A stores it");
    let ids: Vec<u64> = read
        .chunks
        .iter()
        .flat_map(|c| c.ids().iter().map(|(_, seq)| *seq))
        .collect();
    assert_eq!(ids, (1..=1200).collect::<Vec<_>>());

    let (ops, whole) = as_received(read.chunks);
    let applied = b
        .store
        .apply_chunks("notes", ops, &WriteScreen::default(), whole)
        .expect("apply");
    assert_eq!(applied.logged, Some(1..=1200));
    published(&b.store, "notes", 1200);
    let b_log = stored_log(&b.store);
    assert!(
        b_log == a_log,
        "B keeps A's chunks as they came: B {:?}, A {:?}",
        sizes(&b_log),
        sizes(&a_log)
    );
    assert_eq!(all_ops(&b.store), all_ops(&a.store));
    let note = b
        .store
        .get("notes", "notes", "note-000777")
        .expect("get")
        .expect("the record");
    assert_eq!(note.fields["text"], Value::from("note number 777"));

    // B, restarted, reads the same log, and sends its chunks on whole.
    let expected = all_ops(&a.store);
    let Dev { dir, store } = b;
    rt.block_on(store.shutdown()).expect("shut down");
    drop(store);
    let store = Store::open(dir.path(), DeviceId([2; 32]), Default::default()).expect("reopen");
    assert_eq!(all_ops(&store), expected);
    let relayed = read_for(&store, &VersionVector::new(), 0, ALL);
    let relayed: Vec<&[u8]> = relayed.chunks.iter().map(|c| c.stored()).collect();
    assert_eq!(relayed, kept, "relayed as they came");
}

#[test]
fn a_peer_holding_part_of_a_chunk_is_sent_the_rest_op_by_op() {
    let rt = rt();
    let (a, _) = two_with_notes(&rt);
    write_puts(&rt, &a, 0, 300);
    let writer = all_ops(&a.store)[0].writer();

    let mut have = VersionVector::new();
    have.set(writer, 10);
    let read = read_for(&a.store, &have, 0, ALL);
    assert!(read.chunks.is_empty());
    let seqs: Vec<u64> = read.ops.ids().iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs, (11..=300).collect::<Vec<_>>());

    // A read that starts inside a chunk reads it op by op too.
    have.set(writer, 5);
    let read = read_for(&a.store, &have, 5, ALL);
    assert!(read.chunks.is_empty());
    assert_eq!(read.ops.len(), 295);

    // Past the chunk the peer held part of, it is sent whole chunks: the
    // read of ops stops at that chunk's end.
    write_puts(&rt, &a, 300, 900);
    have.set(writer, 10);
    let read = read_for(&a.store, &have, 0, ALL);
    assert!(read.chunks.is_empty());
    assert_eq!(read.next, 300, "the first chunk's end");
    have.set(writer, 300);
    let read = read_for(&a.store, &have, 300, ALL);
    assert!(read.ops.is_empty());
    assert_eq!(read.next, 1200);

    // A read that fills up on whole chunks says where the next starts.
    let one = ReadLimits {
        max_items: 1,
        max_bytes: usize::MAX,
    };
    let read = read_for(&a.store, &VersionVector::new(), 0, one);
    assert_eq!(read.chunks.len(), 1);
    assert_eq!(read.next, read.chunks[0].ids().len() as u64);
}

#[test]
fn a_chunk_not_applied_as_it_came_is_logged_op_by_op() {
    let rt = rt();
    let (a, mut b) = two_with_notes(&rt);
    write_puts(&rt, &a, 0, 300);
    let read = read_for(&a.store, &VersionVector::new(), 0, ALL);
    let (ops, whole) = as_received(read.chunks);
    // B holds the first op already: it skips it, so the chunk it came in
    // is not what B logs.
    b.store
        .apply_ops("notes", ops[..1].to_vec(), &WriteScreen::default())
        .expect("apply the first");
    let applied = b
        .store
        .apply_chunks("notes", ops, &WriteScreen::default(), whole)
        .expect("apply");
    assert_eq!(applied.logged, Some(2..=300));
    published(&b.store, "notes", 300);
    assert_eq!(all_ops(&b.store), all_ops(&a.store));
    assert!(stored_log(&b.store) != stored_log(&a.store));
}

#[test]
fn a_damaged_chunk_from_a_peer_is_refused_as_it_is_decoded() {
    let rt = rt();
    let (a, _) = two_with_notes(&rt);
    write_puts(&rt, &a, 0, 300);
    let read = read_for(&a.store, &VersionVector::new(), 0, ALL);
    let message = |stored: Vec<u8>| {
        let chunk = blazedb_proto::sync::LogChunk::new(stored, Vec::new());
        blazedb_proto::SyncMessage::Chunks {
            db: "notes".into(),
            epoch: 1,
            chunks: vec![chunk],
        }
        .encode()
        .expect("encode")
    };
    let stored = read.chunks[0].stored().to_vec();
    assert_eq!(stored[0], blazedb_proto::log_chunk::LZ4_MARK);
    assert!(blazedb_proto::SyncMessage::decode(&message(stored.clone())).is_ok());

    // A length no frame could bring, claimed before anything is inflated.
    let mut huge = stored.clone();
    huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
    let err = blazedb_proto::SyncMessage::decode(&message(huge)).expect_err("refused");
    assert!(err.to_string().contains("claims"), "{err}");
    // A block cut short.
    let cut = stored[..stored.len() - 9].to_vec();
    assert!(blazedb_proto::SyncMessage::decode(&message(cut)).is_err());
    // Entries cut short inside a compact chunk.
    let compact = blazedb_proto::log_chunk::decompress(&stored, usize::MAX).expect("inflates");
    let cut = compact[..compact.len() - 3].to_vec();
    let err = blazedb_proto::SyncMessage::decode(&message(cut)).expect_err("refused");
    assert!(err.to_string().contains("cut short"), "{err}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 12,
        ..Default::default()
    })]

    /// Whatever a replica held already, reading for it as sync does (whole
    /// chunks where it lacks all of one, packed ops elsewhere) and
    /// applying what was read leaves it the writer's log, in order; and
    /// every chunk it was sent whole, it keeps as it came.
    #[test]
    fn a_replica_catching_up_on_chunks_and_ops_holds_the_writers_log(
        batches in proptest::collection::vec(1usize..400, 1..5),
        held in 0usize..1500,
        max_items in 1usize..700,
    ) {
        let rt = rt();
        let (a, mut b) = two_with_notes(&rt);
        let mut written = 0;
        for n in &batches {
            write_puts(&rt, &a, written, *n);
            written += n;
        }
        let expected = all_ops(&a.store);
        let held = held.min(written);
        if held > 0 {
            b.store
                .apply_ops("notes", expected[..held].to_vec(), &WriteScreen::default())
                .expect("apply what B held");
        }
        let limits = ReadLimits { max_items, max_bytes: usize::MAX };
        let (mut have, mut from) = (b.store.sync_state("notes").expect("state").vector, 0);
        let mut sent_whole = Vec::new();
        loop {
            let read = read_for(&a.store, &have, from, limits);
            proptest::prop_assert!(read.ops.is_empty() || read.chunks.is_empty());
            let whole = read.chunks.iter().flat_map(|c| c.ids());
            let ids: Vec<_> = read.ops.ids().iter().chain(whole).copied().collect();
            if ids.is_empty() {
                break;
            }
            for (writer, seq) in &ids {
                have.set(*writer, *seq);
            }
            from = read.next;
            if read.chunks.is_empty() {
                let ops = read.ops.to_ops().expect("packed ops build");
                b.store.apply_ops("notes", ops, &WriteScreen::default()).expect("apply");
            } else {
                sent_whole.extend(read.chunks.iter().map(|c| c.stored().to_vec()));
                let (ops, whole) = as_received(read.chunks);
                b.store
                    .apply_chunks("notes", ops, &WriteScreen::default(), whole)
                    .expect("apply");
            }
        }
        published(&b.store, "notes", written as u64);
        proptest::prop_assert_eq!(all_ops(&b.store), expected);
        let kept: Vec<Vec<u8>> = stored_log(&b.store).into_iter().map(|(_, v)| v).collect();
        for chunk in &sent_whole {
            proptest::prop_assert!(kept.contains(chunk), "a chunk sent whole was not kept");
        }
        // Past the chunk it held part of, it is sent whole chunks.
        let a_log = stored_log(&a.store);
        let after_held = a_log
            .iter()
            .filter(|(k, _)| u64::from_be_bytes(k[..].try_into().expect("a log key")) > held as u64)
            .count();
        proptest::prop_assert!(
            sent_whole.len() >= after_held,
            "{} chunks sent whole of {} after what B held",
            sent_whole.len(),
            after_held
        );
    }
}
