//! Queries against a reference computed here: filters, ordering and cursor
//! pagination, with and without indexes.

use std::cmp::Ordering;

use blazedb::{Fields, FilterOp, Record, Value};
use blazedb_proto::api::Filter;
use blazedb_tests::{Rng, TestAgent};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");

fn make_records(rng: &mut Rng, n: usize) -> Vec<(String, Fields)> {
    let statuses = ["open", "closed", "wontfix", "open-later"];
    (0..n)
        .map(|i| {
            let mut f = Fields::new();
            // Sometimes missing, sometimes a float, to exercise kinds.
            match rng.below(10) {
                0 => {}
                1 => {
                    f.insert("priority".into(), Value::Float(rng.below(10) as f64 + 0.5));
                }
                _ => {
                    f.insert("priority".into(), Value::Int(rng.below(10)));
                }
            }
            f.insert(
                "status".into(),
                Value::String(statuses[rng.below(4) as usize].into()),
            );
            if rng.below(3) == 0 {
                f.insert("tag".into(), Value::List(vec![Value::Int(1)]));
            }
            // Numbers where floats and integers part ways: beyond 2^53,
            // and the two zeros.
            let two_53 = 1i64 << 53;
            let tricky = [
                Value::Int(two_53 - 1),
                Value::Int(two_53),
                Value::Int(two_53 + 1),
                Value::Float(two_53 as f64),
                Value::Int(i64::MAX),
                Value::Float(9.3e18),
                Value::Int(0),
                Value::Float(0.0),
                Value::Float(-0.0),
                Value::Float(-0.5),
            ];
            f.insert(
                "n".into(),
                tricky[rng.below(tricky.len() as u64) as usize].clone(),
            );
            (format!("r{:03}-{}", rng.below(1000), i), f)
        })
        .collect()
}

fn matches(f: &Filter, id: &str, fields: &Fields) -> bool {
    let v = if f.field == "$id" {
        Some(Value::String(id.to_owned()))
    } else {
        fields.get(&f.field).cloned()
    };
    let Some(v) = v else {
        return f.op == FilterOp::Ne;
    };
    let cmp = v.total_cmp(&f.value);
    let same = v.type_rank() == f.value.type_rank();
    match f.op {
        FilterOp::Eq => cmp == Ordering::Equal,
        FilterOp::Ne => cmp != Ordering::Equal,
        FilterOp::Lt => same && cmp == Ordering::Less,
        FilterOp::Le => same && cmp != Ordering::Greater,
        FilterOp::Gt => same && cmp == Ordering::Greater,
        FilterOp::Ge => same && cmp != Ordering::Less,
        FilterOp::In => match &f.value {
            Value::List(l) => l.iter().any(|x| v.total_cmp(x) == Ordering::Equal),
            _ => false,
        },
        FilterOp::Prefix => match (&v, &f.value) {
            (Value::String(s), Value::String(p)) => s.starts_with(p.as_str()),
            _ => false,
        },
    }
}

fn reference(
    records: &[(String, Fields)],
    filters: &[Filter],
    order_by: Option<&str>,
    desc: bool,
) -> Vec<String> {
    let mut hits: Vec<(Value, String)> = records
        .iter()
        .filter(|(id, f)| filters.iter().all(|flt| matches(flt, id, f)))
        .map(|(id, f)| {
            let key = order_by
                .and_then(|o| f.get(o).cloned())
                .unwrap_or(Value::Null);
            (key, id.clone())
        })
        .collect();
    hits.sort_by(|a, b| {
        let o = a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1));
        if desc { o.reverse() } else { o }
    });
    hits.into_iter().map(|(_, id)| id).collect()
}

fn filter(field: &str, op: FilterOp, value: Value) -> Filter {
    Filter {
        field: field.into(),
        op,
        value,
    }
}

fn cases() -> Vec<Vec<Filter>> {
    use FilterOp::*;
    vec![
        vec![],
        vec![filter("priority", Gt, Value::Int(3))],
        vec![filter("priority", Ge, Value::Float(4.5))],
        vec![filter("priority", Lt, Value::Int(2))],
        vec![filter("priority", Le, Value::Int(2))],
        vec![filter("priority", Eq, Value::Int(5))],
        vec![filter("priority", Ne, Value::Int(5))],
        vec![filter(
            "priority",
            In,
            Value::List(vec![Value::Int(1), Value::Float(2.5), Value::Int(7)]),
        )],
        vec![filter("status", Eq, Value::from("open"))],
        vec![filter("status", Prefix, Value::from("open"))],
        vec![
            filter("status", Gt, Value::from("closed")),
            filter("priority", Lt, Value::Int(8)),
        ],
        vec![filter("priority", Gt, Value::from("a"))],
        vec![filter("tag", Eq, Value::List(vec![Value::Int(1)]))],
        vec![filter("$id", Prefix, Value::from("r1"))],
        vec![filter("$id", Lt, Value::from("r5"))],
        vec![filter("n", Lt, Value::Int((1 << 53) + 1))],
        vec![filter("n", Le, Value::Float((1u64 << 53) as f64))],
        vec![filter("n", Gt, Value::Int(1 << 53))],
        vec![filter("n", Ge, Value::Int(i64::MAX))],
        vec![filter("n", Eq, Value::Int((1 << 53) + 1))],
        vec![filter("n", Eq, Value::Float(-0.0))],
        vec![filter("n", Lt, Value::Int(0))],
        vec![filter(
            "n",
            In,
            Value::List(vec![Value::Int((1 << 53) + 1), Value::Int(0)]),
        )],
    ]
}

async fn check_all(coll: &blazedb::Collection, records: &[(String, Fields)], label: &str) {
    for filters in cases() {
        for (order, desc) in [
            (None, false),
            (None, true),
            (Some("priority"), false),
            (Some("status"), true),
        ] {
            for limit in [7u32, 1000] {
                let want = reference(records, &filters, order, desc);
                let mut q = coll.query().limit(limit);
                for f in &filters {
                    q = q.filter(&f.field, f.op, f.value.clone());
                }
                if let Some(o) = order {
                    q = q.order_by(o);
                }
                if desc {
                    q = q.desc();
                }
                // Page by page, checking each page is full but the last.
                let mut got: Vec<Record> = Vec::new();
                let mut page = q.fetch().await.expect("query");
                loop {
                    got.extend(page.records.iter().cloned());
                    match page.next_cursor.clone() {
                        Some(c) => {
                            assert_eq!(page.records.len(), limit as usize);
                            page = q.clone().after(c).fetch().await.expect("next page");
                        }
                        None => break,
                    }
                }
                let got_ids: Vec<String> = got.iter().map(|r| r.id.clone()).collect();
                assert_eq!(
                    got_ids, want,
                    "{label}: filters {filters:?} order {order:?} desc {desc} limit {limit}"
                );
                for r in &got {
                    let (_, f) = records.iter().find(|(id, _)| *id == r.id).expect("known");
                    assert_eq!(&r.fields, f, "{label}: fields of {}", r.id);
                }
            }
        }
    }
}

#[tokio::test]
async fn queries_match_a_reference_with_and_without_indexes() {
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    client.db("q").create().await.expect("create");
    let coll = client.db("q").collection("bugs");
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut records = make_records(&mut rng, 300);
    let mut batch = client.db("q").batch();
    for (id, f) in &records {
        batch = batch.put("bugs", Some(id), f.clone());
    }
    batch.commit().await.expect("load");
    // Deleted and overwritten records must not show up as they were.
    for (id, f) in records.iter_mut().step_by(17) {
        f.insert("status".into(), Value::from("closed"));
        coll.put_fields(id, f.clone()).await.expect("overwrite");
    }
    let deleted: Vec<String> = records
        .iter()
        .skip(5)
        .step_by(23)
        .map(|r| r.0.clone())
        .collect();
    for id in &deleted {
        coll.delete(id).await.expect("delete");
    }
    records.retain(|(id, _)| !deleted.contains(id));

    check_all(&coll, &records, "no index").await;
    assert!(coll.create_index("priority").await.expect("index"));
    assert!(coll.create_index("status").await.expect("index"));
    assert!(coll.create_index("n").await.expect("index"));
    check_all(&coll, &records, "indexed").await;

    // Writes after the index exists keep it right.
    for (id, f) in records.iter_mut().step_by(11) {
        f.insert("priority".into(), Value::Int(rng.below(10)));
        coll.patch(
            id,
            [("priority".to_owned(), f["priority"].clone())].into(),
            &[],
        )
        .await
        .expect("patch");
    }
    check_all(&coll, &records, "indexed after patches").await;

    // So do puts over records that exist.
    for (id, f) in records.iter_mut().step_by(13) {
        f.insert("status".into(), Value::from("reopened"));
        f.insert("priority".into(), Value::Int(rng.below(10)));
        coll.put_fields(id, f.clone()).await.expect("overwrite");
    }
    check_all(&coll, &records, "indexed after puts").await;

    let err = coll
        .query()
        .order_by("priority")
        .after("00ff")
        .fetch()
        .await
        .expect_err("garbage cursor");
    assert_eq!(err.code(), Some(blazedb::ErrorCode::InvalidArgument));
}

#[tokio::test]
async fn query_results_come_back_as_the_callers_type() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Bug {
        title: String,
        priority: i64,
    }
    let agent = TestAgent::start(AGENT).await.expect("agent");
    let client = agent.client().await.expect("client");
    client.db("t").create().await.expect("create");
    let bugs = client.db("t").collection("bugs");
    for (title, priority) in [("a", 1), ("b", 5), ("c", 9)] {
        bugs.insert(&Bug {
            title: title.into(),
            priority,
        })
        .await
        .expect("insert");
    }
    let mut urgent: Vec<Bug> = bugs
        .query()
        .filter("priority", blazedb::FilterOp::Gt, 3)
        .fetch_all_as()
        .await
        .expect("typed");
    urgent.sort_by_key(|b| b.priority);
    assert_eq!(
        urgent,
        [
            Bug {
                title: "b".into(),
                priority: 5
            },
            Bug {
                title: "c".into(),
                priority: 9
            }
        ]
    );
    let raw = bugs.query().fetch_all().await.expect("raw");
    let one: Bug = raw[0].decode().expect("decode");
    assert!(["a", "b", "c"].contains(&one.title.as_str()));
    // A record that is not a Bug says so instead of passing.
    bugs.put_fields("odd", [("title".to_owned(), blazedb::Value::Int(1))].into())
        .await
        .expect("put");
    let err = bugs
        .query()
        .fetch_all_as::<Bug>()
        .await
        .expect_err("not a Bug");
    assert!(matches!(err, blazedb::Error::Codec(_)), "{err}");
}

#[tokio::test]
async fn get_many_answers_each_id_in_the_order_asked() {
    let agent = TestAgent::start_with(AGENT, &["--max-frame", "65536"])
        .await
        .expect("agent");
    let client = agent.client().await.expect("client");
    client.db("t").create().await.expect("create");
    let items = client.db("t").collection("items");
    for i in 0..50i64 {
        items
            .put_fields(&format!("k{i}"), [("n".to_owned(), Value::Int(i))].into())
            .await
            .expect("put");
    }
    items.delete("k7").await.expect("delete");
    // Present, missing, deleted and repeated ids, in an order of our own.
    let ids = ["k42", "nope", "k7", "k3", "k42", "k0"];
    let got = items.get_many(&ids).await.expect("get_many");
    assert_eq!(got.len(), ids.len());
    for (id, rec) in ids.iter().zip(&got) {
        let single = items.get_record(id).await.expect("get");
        assert_eq!(rec, &single, "{id}: get_many answers as get does");
    }
    let present: Vec<&str> = got.iter().flatten().map(|r| r.id.as_str()).collect();
    assert_eq!(present, ["k42", "k3", "k42", "k0"]);
    assert!(items.get_many::<&str>(&[]).await.expect("none").is_empty());
    // Enough ids to be shared among threads answer the same, in order.
    let ids: Vec<String> = (0..300).map(|i| format!("k{}", (i * 7) % 60)).collect();
    let got = items.get_many(&ids).await.expect("get_many of many");
    assert_eq!(got.len(), ids.len());
    for (id, rec) in ids.iter().zip(&got) {
        let single = items.get_record(id).await.expect("get");
        assert_eq!(rec, &single, "{id}: get_many of many answers as get does");
    }

    // An unknown collection fails the whole request, as a get does.
    let err = client
        .db("t")
        .collection("nothing")
        .get_many(&["k1"])
        .await
        .expect_err("unknown collection");
    assert!(err.to_string().contains("no collection"), "{err}");
    // Too many ids, or an answer over the frame limit, says what to do.
    let many: Vec<String> = (0..=blazedb_proto::api::MAX_GET_MANY)
        .map(|i| format!("k{i}"))
        .collect();
    let err = items.get_many(&many).await.expect_err("too many ids");
    assert!(err.to_string().contains("split them"), "{err}");
    let big = "x".repeat(4000);
    for i in 0..20 {
        items
            .put_fields(
                &format!("big{i}"),
                [("b".to_owned(), Value::from(big.as_str()))].into(),
            )
            .await
            .expect("put");
    }
    let bigs: Vec<String> = (0..20).map(|i| format!("big{i}")).collect();
    let err = items
        .get_many(&bigs)
        .await
        .expect_err("over the frame limit");
    assert!(err.to_string().contains("fewer ids"), "{err}");
    let shared: Vec<&String> = bigs.iter().cycle().take(200).collect();
    let err = items
        .get_many(&shared)
        .await
        .expect_err("over the frame limit, shared among threads");
    assert!(err.to_string().contains("fewer ids"), "{err}");
    // The connection goes on.
    assert_eq!(items.get_many(&bigs[..2]).await.expect("fits").len(), 2);
}
