//! The memtables of all databases share one budget: however many
//! databases are written to, what they hold in memory stays within it, and
//! what the budget flushed is all there, after a restart too. An idle
//! store flushes what a burst left in them, into compressed tables.

#![allow(clippy::unwrap_used)]

use blazed::store::{Store, StoreOptions};
use blazedb_proto::api::{DbSettings, Write};
use blazedb_proto::{DeviceId, Value};

const MIB: u64 = 1024 * 1024;

fn open(dir: &std::path::Path, budget: u64) -> Store {
    let options = StoreOptions {
        write_buffer_bytes: budget,
        ..StoreOptions::default()
    };
    Store::open(dir, DeviceId([1; 32]), options).unwrap()
}

/// Fifty puts of 1 KiB values: about 50 KiB of records in memtables, and
/// their op-log entries, which take a few hundred bytes (the values are
/// one byte repeated, and the log's chunks are stored compressed).
fn puts(round: usize) -> Vec<Write> {
    (0..50)
        .map(|i| Write::Put {
            collection: "c".into(),
            id: Some(format!("r{round}-{i}")),
            fields: [("v".to_owned(), Value::Bytes(vec![round as u8; 1024]))].into(),
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn memtables(store: &Store) -> u64 {
    store.sizes().iter().map(|s| s.memtable_bytes).sum()
}

#[test]
fn many_databases_share_one_memtable_budget() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let budget = 2 * MIB;
    let store = open(dir.path(), budget);
    let dbs = ["a", "b", "c"];
    for db in dbs {
        rt.block_on(store.create_db(db, DbSettings::default(), false))
            .unwrap();
    }
    // 24 MiB in all. The writer looks at the budget after each command,
    // and while a flush is under way only once another MiB came in, so
    // what a look leaves grows by that and one command before the next.
    let rounds = 240;
    let mut most = 0;
    for round in 0..rounds {
        rt.block_on(store.write(dbs[round % 3], puts(round)))
            .unwrap();
        most = most.max(memtables(&store));
    }
    assert!(
        most <= budget + 2 * MIB,
        "the memtables held {most} bytes against a budget of {budget}"
    );
    // Whether a look comes before or after the test reads the sizes is a
    // race: the writer answers first. Half the budget shows the test wrote
    // enough for the budget to matter.
    assert!(
        most > budget / 2,
        "the memtables never came near the budget ({most} bytes): the test wrote too little"
    );

    rt.block_on(store.shutdown()).unwrap();
    drop(store);
    let store = open(dir.path(), budget);
    for round in 0..rounds {
        let db = dbs[round % 3];
        for i in [0, 49] {
            let got = store.get(db, "c", &format!("r{round}-{i}")).unwrap();
            let fields = got
                .unwrap_or_else(|| panic!("r{round}-{i} lost from {db}"))
                .fields;
            assert_eq!(fields["v"], Value::Bytes(vec![round as u8; 1024]));
        }
    }
    rt.block_on(store.shutdown()).unwrap();
}

#[test]
fn an_idle_store_flushes_what_a_burst_left_in_its_memtables() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    // A quarter of it is 1 MiB; the burst leaves about 1.5 MiB, below the
    // budget, so nothing but idleness flushes it.
    let budget = 4 * MIB;
    let store = open(dir.path(), budget);
    rt.block_on(store.create_db("a", DbSettings::default(), false))
        .unwrap();
    let rounds = 30;
    let burst = std::time::Instant::now();
    for round in 0..rounds {
        rt.block_on(store.write("a", puts(round))).unwrap();
    }
    let held = memtables(&store);
    if burst.elapsed() < std::time::Duration::from_millis(500) {
        assert!(
            held > MIB,
            "the burst's memtables ({held} bytes) were flushed while it wrote"
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let sizes = store.sizes();
        // A memtable under a 64th of the budget is left as it is: here
        // the op log's, its chunks compressed to a few bytes an entry.
        if memtables(&store) < budget / 64 && sizes[0].disk_bytes > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "an idle store still holds {} bytes in memtables and {} on disk",
            memtables(&store),
            sizes[0].disk_bytes
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for round in 0..rounds {
        let got = store.get("a", "c", &format!("r{round}-7")).unwrap();
        assert!(got.is_some(), "r{round}-7 lost in the flush");
    }
    // Each value is one byte repeated: its tables are compressed.
    let disk = store.sizes()[0].disk_bytes;
    assert!(
        disk * 4 < held,
        "the memtables held {held} bytes of repeated bytes, and their tables take {disk} on disk"
    );
    rt.block_on(store.shutdown()).unwrap();
}
