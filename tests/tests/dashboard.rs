//! What a user sees of the sync: `blazectl topology` and `status`, the
//! Prometheus metrics, and the dashboard in a real browser, on a hub with
//! three spokes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use blazedb::Client;
use blazedb_proto::topology::{DbLink, LinkState, TopologyResult};
use blazedb_tests::browser::{self, Browser};
use blazedb_tests::{TestAgent, blazectl_ok, connected, http, put_numbered, records, wait_until};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");
const CTL: &str = env!("CARGO_BIN_EXE_blazectl-test");

struct Star {
    _agents: Vec<TestAgent>,
    hub: Client,
    /// The spokes `a`, `b`, `c`, by name.
    spokes: BTreeMap<String, (Client, String)>,
    hub_socket: std::path::PathBuf,
}

/// A hub and three spokes that reach each other only through it: each
/// spoke announces an address where nothing listens.
async fn star() -> Star {
    let hub = TestAgent::start_with(AGENT, &["--role", "hub", "--name", "hub"])
        .await
        .expect("hub");
    let h = hub.client().await.expect("client");
    h.create_mesh().await.expect("create mesh");
    let hub_addr = h.mesh_status().await.expect("status").listen;
    let code = h.invite(Some(600), Some(3)).await.expect("invite").code;
    let dead = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr").to_string()
    };
    let mut agents = vec![];
    let mut spokes = BTreeMap::new();
    for name in ["a", "b", "c"] {
        let agent = TestAgent::start_with(
            AGENT,
            &["--announce", &dead, "--peer", &hub_addr, "--name", name],
        )
        .await
        .expect("spoke");
        let cl = agent.client().await.expect("client");
        cl.join(&code).await.expect("join");
        let id = cl.mesh_status().await.expect("status").device_id;
        spokes.insert(name.to_owned(), (cl, id));
        agents.push(agent);
    }
    wait_until("the hub to link all three spokes", || connected(&h, 3))
        .await
        .expect("linked");
    let hub_socket = hub.socket();
    agents.push(hub);
    Star {
        _agents: agents,
        hub: h,
        spokes,
        hub_socket,
    }
}

fn link<'t>(t: &'t TopologyResult, device: &str, db: &str) -> Option<(LinkState, &'t DbLink)> {
    let l = t.links.iter().find(|l| l.device_id == device)?;
    Some((l.state, l.databases.iter().find(|d| d.db == db)?))
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

async fn scrape(client: &Client) -> prometheus_parse::Scrape {
    let d = client.dashboard().await.expect("dashboard");
    let r = http::get(&d.metrics_url, Some(&d.metrics_token))
        .await
        .expect("scrape");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        r.headers
    );
    let text = r.text();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_status_and_metrics_follow_the_writes() {
    let s = star().await;
    let (a, a_id) = &s.spokes["a"];
    let b_id = &s.spokes["b"].1;
    a.db("notes").create().await.expect("create");
    put_numbered(a, "notes", "n", "a", 200).await.expect("put");
    for (name, (cl, _)) in &s.spokes {
        wait_until(&format!("the notes to reach {name}"), || async {
            records(cl, "notes", "n").await.len() == 200
        })
        .await
        .expect("synced");
    }

    // The hub took a's writes and passed them to b; b lacks nothing.
    wait_until("the hub's topology to show the flow", || async {
        let Ok(t) = s.hub.topology().await else {
            return false;
        };
        let from_a = link(&t, a_id, "notes");
        let to_b = link(&t, b_id, "notes");
        from_a.is_some_and(|(st, d)| st == LinkState::Direct && d.ops_in >= 200 && d.taking)
            && to_b.is_some_and(|(_, d)| {
                d.ops_out >= 200 && d.sending && d.lag_ops == Some(0) && d.last_sync_ms.is_some()
            })
    })
    .await
    .expect("hub topology");
    let t = s.hub.topology().await.expect("topology");
    let (_, from_a) = link(&t, a_id, "notes").expect("link");
    assert!(
        from_a.ops_in_per_s > 0.0 && from_a.bytes_in > 0,
        "{from_a:?}"
    );
    assert!(t.links.iter().all(|l| l.rtt_ms.is_some()), "{t:?}");

    // a reaches b only through the hub.
    wait_until("a to show b relayed via the hub", || async {
        a.topology().await.is_ok_and(|t| {
            t.links.iter().any(|l| {
                l.device_id == *b_id
                    && l.state == LinkState::Relayed
                    && l.via.as_deref() == Some("hub")
            })
        })
    })
    .await
    .expect("relayed");

    // blazectl shows the same.
    let ctl = |args: &[&str]| blazectl_ok(CTL, &s.hub_socket, args);
    let status: serde_json::Value =
        serde_json::from_str(&ctl(&["status", "--json"])).expect("json");
    assert_eq!(
        status["peers"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    assert_eq!(status["mesh"]["role"], "hub");
    assert_eq!(status["databases"][0]["name"], "notes");
    let table = ctl(&["status"]);
    for name in ["a", "b", "c", "notes"] {
        assert!(table.contains(name), "{table}");
    }
    let dot = ctl(&["topology", "--dot"]);
    assert!(
        dot.starts_with("digraph") && dot.matches(" -> ").count() == 3,
        "{dot}"
    );

    // Metrics: refused without a token, and moving with writes.
    let d = s.hub.dashboard().await.expect("dashboard");
    for token in [None, Some("wrong")] {
        let r = http::get(&d.metrics_url, token).await.expect("get");
        assert_eq!(r.status, 401, "{}", r.text());
    }
    let before_hub = scrape(&s.hub).await;
    let before_a = scrape(a).await;
    let flow = [("db", "notes"), ("direction", "in"), ("peer", "a")];
    let puts = [("method", "put"), ("code", "ok")];
    let hub_in = sample(&before_hub, "blazed_sync_ops_total", &flow).expect("sync ops");
    assert!(hub_in >= 200.0, "{hub_in}");
    let a_puts = sample(&before_a, "blazed_ipc_requests_total", &puts).expect("puts");
    assert!(a_puts >= 200.0, "{a_puts}");
    let commits = sample(&before_a, "blazed_commit_seconds_count", &[]).expect("commits");
    assert_eq!(
        sample(&before_a, "blazed_store_failed", &[]),
        Some(0.0),
        "a healthy store"
    );
    assert!(
        sample(&before_hub, "blazed_db_changes_total", &[("db", "notes")]) >= Some(200.0),
        "the hub's database counts the changes it applied"
    );

    put_numbered(a, "notes", "n", "more", 50)
        .await
        .expect("put");
    assert!(
        a.db("nope")
            .collection("x")
            .get::<serde_json::Value>("1")
            .await
            .is_err()
    );
    wait_until("the hub to take the new writes", || async {
        records(&s.hub, "notes", "n").await.len() == 250
    })
    .await
    .expect("synced");
    let after_a = scrape(a).await;
    assert_eq!(
        sample(&after_a, "blazed_ipc_requests_total", &puts),
        Some(a_puts + 50.0)
    );
    assert!(sample(&after_a, "blazed_commit_seconds_count", &[]) >= Some(commits + 50.0));
    assert_eq!(
        sample(
            &after_a,
            "blazed_ipc_requests_total",
            &[("method", "get"), ("code", "unknown_database")]
        ),
        Some(1.0)
    );
    wait_until("the hub's counters to move", || async {
        let after = scrape(&s.hub).await;
        sample(&after, "blazed_sync_ops_total", &flow) >= Some(hub_in + 50.0)
    })
    .await
    .expect("moved");
}

/// What the page draws, as the test reads it.
const READ_PAGE: &str = r#"
    const rate = (peer) => {
        const t = document.querySelector(`g.link[data-peer="${peer}"] text.rate`);
        return t ? t.textContent : null;
    };
    return {
        nodes: document.querySelectorAll('#graph g.node').length,
        hubs: document.querySelectorAll('#graph g.node[data-role="hub"]').length,
        links: document.querySelectorAll('#graph g.link').length,
        peers: document.querySelectorAll('#peers tbody tr[data-peer]').length,
        notes: !!document.querySelector('#databases tr[data-db="notes"]'),
        updated: (document.getElementById('updated') || {}).textContent || '',
        rates: Array.from(document.querySelectorAll('#graph g.link text.rate')).map(t => t.textContent),
    };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_the_mesh_live_in_a_browser() {
    if !browser::available() {
        return;
    }
    let s = star().await;
    let (a, a_id) = &s.spokes["a"];
    a.db("notes").create().await.expect("create");
    // Keep writing while the page is open, so its figures are live.
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            let coll = a.db("notes").collection("n");
            for i in 0.. {
                let _ = coll
                    .put(&format!("live-{i}"), &serde_json::json!({ "i": i }))
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let url = s.hub.dashboard().await.expect("dashboard").url;
    let b = Browser::start().await.expect("browser");
    b.goto(&url).await.expect("open the dashboard");
    let live_rate = format!(
        "const t = document.querySelector('g.link[data-peer=\"{a_id}\"] text.rate'); \
         return t ? t.textContent : '';"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = serde_json::Value::Null;
    let drawn = loop {
        if let (Ok(v), Ok(rate)) = (b.eval(READ_PAGE).await, b.eval(&live_rate).await) {
            let whole = v["nodes"] == 4
                && v["hubs"] == 1
                && v["links"] == 3
                && v["peers"] == 3
                && v["notes"] == true;
            // A link label reads like "12.5 ops/s · lag 0".
            let live = rate.as_str().is_some_and(|t| {
                t.contains("ops/s")
                    && t.split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<f64>().ok())
                        .is_some_and(|n| n > 0.0)
            });
            seen = v;
            if whole && live {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let shot = b
        .screenshot(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"))
        .await
        .expect("screenshot");
    eprintln!("dashboard screenshot: {}", shot.display());
    // The writer's own operations never travel back to it.
    let t = s.hub.topology().await.expect("topology");
    let (_, to_a) = link(&t, a_id, "notes").expect("link to a");
    assert!(to_a.ops_in > 0 && to_a.ops_out == 0, "{to_a:?}");
    assert!(
        drawn,
        "the graph was not drawn with live figures: the page showed {seen}"
    );

    // The page keeps updating on its own.
    let first = b.eval(READ_PAGE).await.expect("read")["updated"].clone();
    wait_until("the page to update", || async {
        let changed = b.eval(READ_PAGE).await.is_ok_and(|v| v["updated"] != first);
        if !changed {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        changed
    })
    .await
    .expect("live updates");
    writer.abort();
    b.close().await;
}
