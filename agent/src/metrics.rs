//! The agent's Prometheus metrics. Requests and commit times are counted
//! as they happen; everything else (links, lag, store sizes) is read when
//! `/metrics` is scraped, so nothing is counted twice and a scrape shows
//! the same figures as `blazectl topology`.

use std::sync::Arc;

use blazedb_proto::ErrorCode;
use blazedb_proto::api::StatusResult;
use blazedb_proto::topology::TopologyResult;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::store::{DbSize, RecordCacheStats};

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    peer: String,
    peer_id: String,
    db: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabels {
    peer: String,
    peer_id: String,
    db: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    peer_id: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbLabels {
    db: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// What the agent counts as it runs.
#[derive(Debug)]
pub struct Metrics {
    enabled: bool,
    requests: Family<RequestLabels, Counter>,
    commit_seconds: Histogram,
}

/// What a scrape reads besides the counters.
#[derive(Debug, Default)]
pub struct Scrape {
    /// The agent's status.
    pub status: Option<StatusResult>,
    /// The links, if the mesh runs.
    pub topology: Option<TopologyResult>,
    /// Every database's size.
    pub sizes: Vec<DbSize>,
    /// Every database's head (changes committed) and operations held.
    pub heads: Vec<(String, u64, u64)>,
    /// The store's record cache.
    pub record_cache: RecordCacheStats,
}

impl Metrics {
    /// Metrics that count if `enabled`; off, requests and commits are not
    /// counted (to measure what counting costs).
    pub fn new(enabled: bool) -> Arc<Metrics> {
        Arc::new(Metrics {
            enabled,
            requests: Family::default(),
            // 50 µs to about 1.6 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        })
    }

    /// Whether anything is counted.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Counts a request to `method` that succeeded (`None`) or failed
    /// with `code`.
    pub fn request(&self, method: &'static str, code: Option<ErrorCode>) {
        if !self.enabled {
            return;
        }
        let code = code.map_or("ok", ErrorCode::as_str);
        self.requests
            .get_or_create(&RequestLabels { method, code })
            .inc();
    }

    /// The histogram the store records commit times in, when counting.
    pub fn commit_seconds(&self) -> Option<Histogram> {
        self.enabled.then(|| self.commit_seconds.clone())
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self, scrape: &Scrape) -> String {
        let mut r = Registry::with_prefix("blazed");
        r.register(
            "ipc_requests",
            "Requests from local clients, by method and outcome (ok or the error code)",
            self.requests.clone(),
        );
        r.register_with_unit(
            "commit",
            "How long each group commit to the store took, until it was durable",
            Unit::Seconds,
            self.commit_seconds.clone(),
        );
        if let Some(s) = &scrape.status {
            let g = |v: i64| {
                let g = Gauge::<i64>::default();
                g.set(v);
                g
            };
            r.register(
                "ipc_connections",
                "Local clients connected",
                g(i64::from(s.connections)),
            );
            r.register(
                "ipc_subscriptions",
                "Change subscriptions open",
                g(i64::from(s.subscriptions)),
            );
            r.register(
                "store_failed",
                "1 once a commit or a sync of the store's journal failed: no more writes, and sync stalls, until the agent restarts",
                g(i64::from(s.store_failed.is_some())),
            );
            let up = FloatGauge::default();
            up.set(s.uptime_ms as f64 / 1000.0);
            r.register_with_unit("uptime", "Time since the agent started", Unit::Seconds, up);
        }
        self.register_dbs(&mut r, scrape);
        register_record_cache(&mut r, &scrape.record_cache);
        if let Some(t) = &scrape.topology {
            register_links(&mut r, t);
        }
        let mut text = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &r);
        text
    }

    fn register_dbs(&self, r: &mut Registry, scrape: &Scrape) {
        let changes = Family::<DbLabels, Counter>::default();
        let held = Family::<DbLabels, Gauge>::default();
        for (db, head, ops_held) in &scrape.heads {
            let l = DbLabels { db: db.clone() };
            changes.get_or_create(&l).inc_by(*head);
            held.get_or_create(&l).set(*ops_held as i64);
        }
        r.register(
            "db_changes",
            "Changes committed to each database, local writes and synced operations",
            changes,
        );
        r.register(
            "db_ops_held",
            "Operations each database holds, this device's and every other's",
            held,
        );
        let records = Family::<DbLabels, Gauge>::default();
        let log = Family::<DbLabels, Gauge>::default();
        let disk = Family::<DbLabels, Gauge>::default();
        let memtables = Family::<DbLabels, Gauge>::default();
        for s in &scrape.sizes {
            let l = DbLabels { db: s.name.clone() };
            records.get_or_create(&l).set(s.records as i64);
            log.get_or_create(&l).set(s.log_entries as i64);
            disk.get_or_create(&l).set(s.disk_bytes as i64);
            memtables.get_or_create(&l).set(s.memtable_bytes as i64);
        }
        r.register(
            "db_records",
            "Records in each database, estimated (tombstones count until compacted)",
            records,
        );
        r.register(
            "db_log_entries",
            "Op-log entries of each database, estimated",
            log,
        );
        r.register_with_unit(
            "db_disk",
            "Size of each database's tables on disk",
            Unit::Bytes,
            disk,
        );
        r.register_with_unit(
            "db_memtable",
            "What each database's memtables being written to hold, not yet flushed to its tables",
            Unit::Bytes,
            memtables,
        );
    }
}

/// What the record cache holds, and how many gets it answered.
fn register_record_cache(r: &mut Registry, stats: &RecordCacheStats) {
    let bytes = Gauge::<i64>::default();
    bytes.set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
    r.register_with_unit(
        "record_cache",
        "What the records kept after gets take, by the cache's weight (record_cache_mb bounds it)",
        Unit::Bytes,
        bytes,
    );
    let (hits, misses) = (Counter::<u64>::default(), Counter::<u64>::default());
    hits.inc_by(stats.hits);
    misses.inc_by(stats.misses);
    r.register(
        "record_cache_hits",
        "Gets answered from the record cache",
        hits,
    );
    r.register(
        "record_cache_misses",
        "Gets that read the store's tables",
        misses,
    );
}

/// Per peer and database: what the link carried, and the lag.
fn register_links(r: &mut Registry, t: &TopologyResult) {
    let peers = Family::<PeerLabels, Gauge>::default();
    let rtt = Family::<PeerLabels, FloatGauge>::default();
    let ops = Family::<FlowLabels, Counter>::default();
    let bytes = Family::<FlowLabels, Counter>::default();
    let lag_ops = Family::<LinkLabels, Gauge>::default();
    let lag_seconds = Family::<LinkLabels, FloatGauge>::default();
    for link in &t.links {
        let p = PeerLabels {
            peer: link.name.clone(),
            peer_id: link.device_id.clone(),
            state: link.state.as_str(),
        };
        peers.get_or_create(&p).set(1);
        if let Some(ms) = link.rtt_ms {
            rtt.get_or_create(&p).set(ms / 1000.0);
        }
        for d in &link.databases {
            let flow = |direction| FlowLabels {
                peer: link.name.clone(),
                peer_id: link.device_id.clone(),
                db: d.db.clone(),
                direction,
            };
            ops.get_or_create(&flow("in")).inc_by(d.ops_in);
            ops.get_or_create(&flow("out")).inc_by(d.ops_out);
            bytes.get_or_create(&flow("in")).inc_by(d.bytes_in);
            bytes.get_or_create(&flow("out")).inc_by(d.bytes_out);
            let l = LinkLabels {
                peer: link.name.clone(),
                peer_id: link.device_id.clone(),
                db: d.db.clone(),
            };
            if let Some(n) = d.lag_ops {
                lag_ops.get_or_create(&l).set(n as i64);
                lag_seconds
                    .get_or_create(&l)
                    .set(d.lag_ms.unwrap_or(0) as f64 / 1000.0);
            }
        }
    }
    r.register(
        "peer",
        "Each member of the mesh with how it is reached (the value is always 1)",
        peers,
    );
    r.register_with_unit(
        "peer_rtt",
        "Round-trip time to each peer",
        Unit::Seconds,
        rtt,
    );
    r.register(
        "sync_ops",
        "Operations sent to and received from each peer, per database",
        ops,
    );
    r.register_with_unit(
        "sync",
        "Bytes of sync messages sent to and received from each peer, per database",
        Unit::Bytes,
        bytes,
    );
    r.register(
        "sync_lag_ops",
        "Operations this device holds that the peer has not acknowledged",
        lag_ops,
    );
    r.register_with_unit(
        "sync_lag",
        "How long the oldest operation the peer lacks has waited here",
        Unit::Seconds,
        lag_seconds,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_method_and_outcome_and_off_counts_nothing() {
        let m = Metrics::new(true);
        m.request("put", None);
        m.request("put", None);
        m.request("put", Some(ErrorCode::UnknownDatabase));
        let text = m.render(&Scrape::default());
        assert!(
            text.contains(r#"blazed_ipc_requests_total{method="put",code="ok"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"blazed_ipc_requests_total{method="put",code="unknown_database"} 1"#),
            "{text}"
        );
        let stats = RecordCacheStats {
            bytes: 4096,
            hits: 7,
            misses: 3,
        };
        let text = m.render(&Scrape {
            record_cache: stats,
            ..Scrape::default()
        });
        for line in [
            "blazed_record_cache_bytes 4096",
            "blazed_record_cache_hits_total 7",
            "blazed_record_cache_misses_total 3",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        let off = Metrics::new(false);
        off.request("put", None);
        assert!(!off.render(&Scrape::default()).contains("method=\"put\""));
        assert!(off.commit_seconds().is_none());
    }

    #[test]
    fn a_failed_store_shows_as_one() {
        let mut status = StatusResult {
            agent: "blazed".into(),
            device_id: "d".into(),
            data_dir: "/d".into(),
            socket: "/s".into(),
            uptime_ms: 1000,
            databases: 0,
            connections: 0,
            subscriptions: 0,
            unopened: Vec::new(),
            incarnation: 0,
            new_incarnation: None,
            store_failed: None,
        };
        let m = Metrics::new(true);
        let render = |status: &StatusResult| {
            m.render(&Scrape {
                status: Some(status.clone()),
                ..Scrape::default()
            })
        };
        let text = render(&status);
        assert!(text.contains("blazed_store_failed 0"), "{text}");
        status.store_failed = Some("the disk is full".into());
        let text = render(&status);
        assert!(text.contains("blazed_store_failed 1"), "{text}");
    }
}
