//! A store in a directory of its own, for the store's tests.

use blazedb_proto::DeviceId;

use super::Store;

/// A store and the directory it lives in.
pub(super) struct Dev {
    pub(super) dir: tempfile::TempDir,
    pub(super) store: Store,
}

/// A store of device `n` in a new temporary directory.
pub(super) fn dev(n: u8) -> Dev {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::open(dir.path(), DeviceId([n; 32]), Default::default()).expect("the store");
    Dev { dir, store }
}

/// A runtime to wait on the store's async calls.
pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
}

/// Waits, ten seconds at most, until `db`'s head on `store` reaches
/// `head`: what an apply wrote is published once it is durable.
pub(super) fn published(store: &Store, db: &str, head: u64) {
    let db = store.db(db).expect("db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.head() < head {
        assert!(
            std::time::Instant::now() < deadline,
            "head {} of {head} published",
            db.head()
        );
        std::thread::yield_now();
    }
}
