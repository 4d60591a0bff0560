//! The agent's fjall store merges operations from other replicas exactly
//! as the in-memory reference store does, whatever order they arrive in.
//!
//! The store takes shortcuts the reference does not (a put newer than
//! everything it holds replaces a record without reading it); these tests
//! hold it to the reference's results, the refusals of writes checked
//! against an access rule included.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use blazed::access::view::View;
use blazed::store::{Store, StoreOptions};
use blazed::sync::{MemoryStore, Refusal, SyncStore, WriteScreen};
use blazedb_proto::api::{DbSettings, Durability, Filter, FilterOp, QueryParams, SyncMode, Write};
use blazedb_proto::{DeviceId, Fields, Hlc, Op, OpBody, Value};
use proptest::prelude::*;

const DB: &str = "merge";
const COLLECTION: &str = "c0";
/// Far enough in the past that every local write is newer.
const T0: u64 = 1_750_000_000_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An agent store with one database, and the reference store beside it.
struct Pair {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    store: Store,
    reference: MemoryStore,
}

impl Pair {
    fn new(local_priority: u8) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let store = Store::open(dir.path(), DeviceId([200; 32]), StoreOptions::default()).unwrap();
        let settings = DbSettings {
            durability: Durability::Buffered,
            sync_mode: SyncMode::Sync,
            priority: local_priority,
            ..DbSettings::default()
        };
        rt.block_on(store.create_db(DB, settings, false)).unwrap();
        let mut reference = MemoryStore::new(DeviceId([201; 32]));
        reference.create_db(DB, 1, SyncMode::Sync, local_priority);
        Pair {
            _dir: dir,
            rt,
            store,
            reference,
        }
    }

    fn apply(&mut self, ops: Vec<Op>) {
        self.apply_screened(ops, &WriteScreen::default());
    }

    /// Applies `ops` to both stores, checking writes as `screen` says, and
    /// returns the writes both refused.
    fn apply_screened(&mut self, ops: Vec<Op>, screen: &WriteScreen) -> Vec<Refusal> {
        let expected = self.reference.apply_ops(DB, ops.clone(), screen).unwrap();
        let refused = self.store.apply_ops(DB, ops, screen).unwrap();
        assert!(refused.unopened.is_empty(), "a plain op did not open");
        let (expected, refused) = (expected.refused, refused.refused);
        assert_eq!(refused, expected, "refusals differ from the reference's");
        refused
    }

    /// A put made on the agent's store, passed on to the reference as the
    /// operation another replica would receive.
    fn put_locally(&mut self, id: &str, f: &[(&str, i64)]) {
        let write = Write::Put {
            collection: COLLECTION.into(),
            id: Some(id.into()),
            fields: fields(f),
        };
        let results = self.rt.block_on(self.store.write(DB, vec![write])).unwrap();
        let op = self.store.read_op(DB, results[0].cursor).unwrap();
        self.reference
            .apply_ops(DB, vec![op], &WriteScreen::default())
            .unwrap();
    }

    /// The visible fields of record `id`.
    fn record(&self, id: &str) -> Fields {
        self.visible()[&(COLLECTION.to_owned(), id.to_owned())].clone()
    }

    fn visible(&self) -> BTreeMap<(String, String), Fields> {
        let params = QueryParams {
            db: DB.into(),
            collection: COLLECTION.into(),
            limit: Some(10_000),
            ..QueryParams::default()
        };
        match self.store.query(&params) {
            Ok(res) => res
                .records
                .into_iter()
                .map(|r| ((COLLECTION.to_owned(), r.id), r.fields))
                .collect(),
            Err(blazed::store::StoreError::UnknownCollection { .. }) => BTreeMap::new(),
            Err(e) => panic!("query failed: {e}"),
        }
    }

    /// Reads records `a`, `b` and `c` by key, twice (the second read
    /// comes from the store's record cache), and holds them to the
    /// reference: a get sees every op once it is applied.
    fn assert_gets_agree(&self) {
        let expected = self.reference.visible(DB);
        for id in ["a", "b", "c", "a", "b", "c"] {
            let got = match self.store.get(DB, COLLECTION, id) {
                Ok(r) => r.map(|r| r.fields),
                Err(blazed::store::StoreError::UnknownCollection { .. }) => None,
                Err(e) => panic!("get failed: {e}"),
            };
            let want = expected.get(&(COLLECTION.to_owned(), id.to_owned()));
            assert_eq!(
                got.as_ref(),
                want,
                "a get of {id} differs from the reference"
            );
        }
    }

    fn assert_agree(&self) {
        assert_eq!(self.visible(), self.reference.visible(DB));
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.store.shutdown());
    }
}

fn fields(pairs: &[(&str, i64)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::Int(*v)))
        .collect()
}

fn op(origin: u8, seq: u64, hlc: Hlc, priority: u8, body: &OpBody) -> Op {
    Op {
        origin: DeviceId([origin; 32]),
        seq,
        hlc,
        priority,
        incarnation: 0,
        body: body.encode().unwrap(),
    }
}

fn put(id: &str, f: &[(&str, i64)]) -> OpBody {
    OpBody::Put {
        collection: COLLECTION.into(),
        id: id.into(),
        fields: fields(f),
    }
}

#[test]
fn an_older_remote_put_does_not_replace_a_newer_local_write() {
    let mut pair = Pair::new(0);
    pair.put_locally("a", &[("x", 1)]);
    // Stamped long before the local write: it loses, field by field.
    pair.apply(vec![op(1, 1, Hlc::new(T0, 0), 0, &put("a", &[("y", 2)]))]);
    pair.assert_agree();
    assert_eq!(pair.record("a"), fields(&[("x", 1)]));
}

#[test]
fn a_remote_put_of_higher_priority_replaces_a_newer_local_write() {
    let mut pair = Pair::new(0);
    pair.put_locally("a", &[("x", 1)]);
    pair.apply(vec![op(1, 1, Hlc::new(T0, 0), 5, &put("a", &[("y", 2)]))]);
    pair.assert_agree();
    // Now an equal-priority put from elsewhere, later than everything,
    // still loses to the priority-5 write.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let later = Hlc::new(now_ms + 60_000, 0);
    pair.apply(vec![op(2, 1, later, 0, &put("a", &[("z", 3)]))]);
    pair.assert_agree();
    assert_eq!(pair.record("a"), fields(&[("y", 2)]));
}

#[test]
fn a_later_remote_patch_keeps_the_fields_it_does_not_touch() {
    let mut pair = Pair::new(0);
    pair.apply(vec![
        op(1, 1, Hlc::new(T0, 0), 0, &put("a", &[("x", 1), ("y", 1)])),
        op(
            1,
            2,
            Hlc::new(T0 + 1, 0),
            0,
            &OpBody::Patch {
                collection: COLLECTION.into(),
                id: "a".into(),
                set: fields(&[("y", 2)]),
                unset: Vec::new(),
            },
        ),
    ]);
    pair.assert_agree();
    assert_eq!(pair.record("a"), fields(&[("x", 1), ("y", 2)]));
}

/// One origin's operations: a priority, and bodies with strictly rising
/// clock readings.
fn origin_ops() -> impl Strategy<Value = (u8, Vec<(u64, OpBody)>)> {
    let field = prop_oneof![Just("f0"), Just("f1"), Just("f2")];
    let id = prop_oneof![Just("a"), Just("b"), Just("c")];
    let some_fields = proptest::collection::btree_map(field.clone(), 0i64..4, 0..3);
    let body = prop_oneof![
        3 => (id.clone(), some_fields.clone()).prop_map(|(id, f)| OpBody::Put {
            collection: COLLECTION.into(),
            id: id.into(),
            fields: f.into_iter().map(|(k, v)| (k.to_owned(), Value::Int(v))).collect(),
        }),
        2 => (id.clone(), some_fields, proptest::collection::vec(field, 0..2)).prop_map(
            |(id, set, unset)| OpBody::Patch {
                collection: COLLECTION.into(),
                id: id.into(),
                unset: unset
                    .into_iter()
                    .filter(|u| !set.contains_key(u))
                    .map(str::to_owned)
                    .collect(),
                set: set.into_iter().map(|(k, v)| (k.to_owned(), Value::Int(v))).collect(),
            }
        ),
        1 => id.prop_map(|id| OpBody::Delete {
            collection: COLLECTION.into(),
            id: id.into(),
        }),
    ];
    (
        0u8..3,
        0u64..10,
        proptest::collection::vec((1u64..4, body), 1..8),
    )
        .prop_map(|(priority, start, steps)| {
            let mut at = T0 + start;
            let ops = steps
                .into_iter()
                .map(|(step, body)| {
                    at += step;
                    (at, body)
                })
                .collect();
            (priority, ops)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Three origins' operations, interleaved in any order that keeps each
    /// origin's own order, and delivered in batches of any size; the first
    /// origin's writes checked against an access rule or not.
    #[test]
    fn remote_ops_merge_like_the_reference(
        local_priority in 0u8..3,
        origins in proptest::collection::vec(origin_ops(), 3),
        picks in proptest::collection::vec(0usize..3, 64),
        batch_sizes in proptest::collection::vec(1usize..5, 64),
        restricted in any::<bool>(),
    ) {
        let screen = screen_of(restricted);
        let mut queues: Vec<std::collections::VecDeque<Op>> = origins
            .iter()
            .enumerate()
            .map(|(o, (priority, ops))| {
                ops.iter()
                    .enumerate()
                    .map(|(i, (ms, body))| {
                        op(o as u8 + 1, i as u64 + 1, Hlc::new(*ms, 0), *priority, body)
                    })
                    .collect()
            })
            .collect();
        let mut order = Vec::new();
        let mut pick = picks.iter().cycle();
        while queues.iter().any(|q| !q.is_empty()) {
            let start = *pick.next().unwrap_or(&0);
            let q = (start..start + 3).map(|i| i % 3).find(|&i| !queues[i].is_empty()).unwrap_or(0);
            order.extend(queues[q].pop_front());
        }
        let mut pair = Pair::new(local_priority);
        let mut sizes = batch_sizes.iter().cycle();
        let mut rest = order.as_slice();
        let mut refused = 0;
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&1)).min(rest.len());
            refused += pair.apply_screened(rest[..n].to_vec(), &screen).len();
            pair.assert_gets_agree();
            rest = &rest[n..];
        }
        prop_assert_eq!(pair.visible(), pair.reference.visible(DB));
        // What was refused is logged as a stand-in, so the vector still
        // counts every operation.
        let applied = pair.store.sync_state(DB).unwrap().vector;
        prop_assert_eq!(applied, pair.reference.sync_state(DB).unwrap().vector);
        if !restricted {
            prop_assert_eq!(refused, 0);
        }
    }
}

/// Checks origin 1's writes, when `restricted`, against a rule that lets
/// it see and write only records whose `f0` is not 3, and never `f2`.
fn screen_of(restricted: bool) -> WriteScreen {
    let mut screen = WriteScreen::default();
    if restricted {
        let view = View {
            write: true,
            collections: None,
            filter: vec![Filter {
                field: "f0".into(),
                op: FilterOp::Ne,
                value: Value::Int(3),
            }],
            exclude: BTreeSet::from(["f2".to_owned()]),
        };
        screen.restrict(DeviceId([1; 32]), Arc::new(view));
    }
    screen
}

#[test]
fn refused_writes_change_nothing_and_are_reported() {
    let mut pair = Pair::new(0);
    let screen = screen_of(true);
    let ok = op(1, 1, Hlc::new(T0 + 1, 0), 0, &put("a", &[("f0", 1)]));
    let excluded = op(1, 2, Hlc::new(T0 + 2, 0), 0, &put("b", &[("f2", 1)]));
    let moves_out = op(1, 3, Hlc::new(T0 + 3, 0), 0, &put("a", &[("f0", 3)]));
    let refused = pair.apply_screened(vec![ok, excluded.clone(), moves_out], &screen);
    let reasons: Vec<(u64, &str)> = refused
        .iter()
        .map(|r| (r.op.seq, r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (2, "field \"f2\" is excluded for this device"),
            (
                3,
                "the write would put record c0/a outside what this device may see"
            ),
        ]
    );
    assert_eq!(
        refused[0].op, excluded,
        "the refusal keeps the write as made"
    );
    assert_eq!(pair.record("a"), fields(&[("f0", 1)]));
    assert!(
        !pair
            .visible()
            .contains_key(&(COLLECTION.to_owned(), "b".to_owned()))
    );
    assert_eq!(
        pair.store
            .sync_state(DB)
            .unwrap()
            .vector
            .get(&DeviceId([1; 32])),
        3
    );
}

/// A snapshot piece over records the store already holds (older and newer
/// than the piece's, deleted or not) merges as the reference merges it:
/// the store reads the span such a piece covers in one pass, and takes a
/// state as it came only for a record it does not hold.
#[test]
fn a_snapshot_piece_over_held_records_merges_like_the_reference() {
    let mut pair = Pair::new(0);
    let held: Vec<Op> = (0..20)
        .map(|i| {
            let body = put(&format!("k{i:02}"), &[("f0", 1), ("f1", i)]);
            op(1, i as u64 + 1, Hlc::new(T0 + 10, i as u16), 0, &body)
        })
        .collect();
    pair.apply(held);
    // An index the merge keeps up, for records it takes as they came too.
    let index = pair.store.set_index(DB, COLLECTION, "f0", true);
    assert!(pair.rt.block_on(index).unwrap(), "the index is new");

    let mut other = MemoryStore::new(DeviceId([2; 32]));
    other.create_db(DB, 1, SyncMode::Sync, 0);
    let mut ops = Vec::new();
    for i in 10..30 {
        // Older than what the store holds for k10..k14, newer for
        // k15..k19, new records from k20.
        let t = match i {
            10..15 => T0 + 5,
            15..20 => T0 + 20,
            _ => T0 + 1,
        };
        let body = put(&format!("k{i:02}"), &[("f0", 2)]);
        ops.push(op(2, ops.len() as u64 + 1, Hlc::new(t, i as u16), 0, &body));
    }
    for (id, t) in [("k12", T0 + 6), ("k16", T0 + 30), ("k21", T0 + 2)] {
        let body = OpBody::Delete {
            collection: COLLECTION.into(),
            id: id.into(),
        };
        ops.push(op(2, ops.len() as u64 + 1, Hlc::new(t, 0), 0, &body));
    }
    other.apply_ops(DB, ops, &WriteScreen::default()).unwrap();
    let limits = blazed::sync::ReadLimits {
        max_items: 1000,
        max_bytes: usize::MAX,
    };
    let piece = other.read_snapshot(DB, None, limits).unwrap().records;
    assert_eq!(
        piece.len(),
        20,
        "one piece holds every record, tombstones too"
    );

    pair.store
        .merge_snapshot(DB, piece.clone(), None, None)
        .unwrap();
    pair.reference
        .merge_snapshot(DB, piece, None, None)
        .unwrap();
    pair.assert_agree();
    assert_eq!(pair.record("k11"), fields(&[("f0", 1), ("f1", 11)]));
    assert_eq!(pair.record("k12"), fields(&[("f0", 1), ("f1", 12)]));
    assert_eq!(pair.record("k17"), fields(&[("f0", 2)]));
    assert_eq!(pair.record("k25"), fields(&[("f0", 2)]));
    let visible = pair.visible();
    for gone in ["k16", "k21"] {
        assert!(!visible.contains_key(&(COLLECTION.to_owned(), gone.to_owned())));
    }
    // A query by the indexed field finds what the reference holds.
    let by_index = pair
        .store
        .query(&QueryParams {
            db: DB.into(),
            collection: COLLECTION.into(),
            filters: vec![Filter {
                field: "f0".into(),
                op: FilterOp::Eq,
                value: Value::Int(2),
            }],
            limit: Some(1000),
            ..QueryParams::default()
        })
        .unwrap();
    let found: BTreeSet<String> = by_index.records.into_iter().map(|r| r.id).collect();
    let expected: BTreeSet<String> = pair
        .reference
        .visible(DB)
        .into_iter()
        .filter(|(_, f)| f.get("f0") == Some(&Value::Int(2)))
        .map(|((_, id), _)| id)
        .collect();
    assert_eq!(found.len(), 13, "k15, k17..k20 and k22..k29");
    assert_eq!(found, expected);
}
