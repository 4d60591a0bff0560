//! `blazectl topology`: this device's links, per database, as a table,
//! JSON or a Graphviz graph.

use std::fmt::Write as _;

use blazedb_proto::topology::{DbLink, LinkInfo, LinkState, TopologyResult};

use super::Opts;
use super::output::{print_json, table};
use crate::Client;

/// Options of `blazectl topology`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopologyArgs {
    /// Print the graph in Graphviz's dot language (`| dot -Tsvg`).
    #[arg(long, conflicts_with = "json")]
    dot: bool,
}

pub(crate) async fn run(client: &Client, args: TopologyArgs, opts: Opts) -> anyhow::Result<()> {
    let t = client.topology().await?;
    if opts.json {
        return print_json(&serde_json::to_value(&t)?);
    }
    if args.dot {
        print!("{}", dot(&t));
    } else {
        print!("{}", links_table(&t));
    }
    Ok(())
}

/// Operations per second, as people read them.
pub(super) fn per_s(rate: f64) -> String {
    if rate == 0.0 {
        "0".into()
    } else if rate < 10.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.0}")
    }
}

/// Bytes per second, in B, KiB or MiB.
pub(super) fn bytes_per_s(rate: f64) -> String {
    match rate {
        r if r < 1024.0 => format!("{r:.0} B/s"),
        r if r < 1024.0 * 1024.0 => format!("{:.1} KiB/s", r / 1024.0),
        r => format!("{:.1} MiB/s", r / (1024.0 * 1024.0)),
    }
}

/// A duration in milliseconds, short.
pub(super) fn span(ms: u64) -> String {
    match ms {
        m if m < 1000 => format!("{m}ms"),
        m if m < 60_000 => format!("{:.1}s", m as f64 / 1000.0),
        m => format!("{}m{}s", m / 60_000, m / 1000 % 60),
    }
}

/// How far behind the peer is: `-` when unknown or not sent to.
pub(super) fn lag(d: &DbLink) -> String {
    match (d.lag_ops, d.lag_ms) {
        (None, _) => "-".into(),
        (Some(0), _) => "0".into(),
        (Some(n), Some(ms)) => format!("{n} ({})", span(ms)),
        (Some(n), None) => n.to_string(),
    }
}

/// Which way a database goes over a link, seen from this device.
pub(super) fn direction(d: &DbLink) -> &'static str {
    match (d.sending, d.taking) {
        (true, true) => "<->",
        (true, false) => "->",
        (false, true) => "<-",
        (false, false) => "-",
    }
}

/// How a member is reached, with the hub or the last error.
pub(super) fn state(l: &LinkInfo) -> String {
    match (l.state, &l.via, &l.error) {
        (LinkState::Relayed, Some(via), _) => format!("relayed via {via}"),
        (LinkState::BackingOff, _, Some(e)) => match l.retry_in_ms {
            Some(ms) => format!("backing off {}: {e}", span(ms)),
            None => format!("backing off: {e}"),
        },
        (s, _, _) => s.as_str().replace('_', " "),
    }
}

/// When, relative to `now`, something last happened.
pub(super) fn ago(ms: Option<u64>, now: u64) -> String {
    ms.map_or("-".into(), |ms| {
        format!("{} ago", span(now.saturating_sub(ms)))
    })
}

/// One row per link and database (a link with none gets one row).
pub(crate) fn links_table(t: &TopologyResult) -> String {
    let mut rows = Vec::new();
    for l in &t.links {
        let head = [l.name.clone(), l.role.clone(), state(l)];
        if l.databases.is_empty() {
            let mut row = head.to_vec();
            row.extend(["-"; 6].map(String::from));
            row.push(l.rtt_ms.map_or("-".into(), |r| format!("{r:.1}ms")));
            rows.push(row);
        }
        for d in &l.databases {
            let mut row = head.to_vec();
            row.extend([
                format!("{}{}", d.db, if d.e2e { " (e2e)" } else { "" }),
                direction(d).to_owned(),
                format!("{} / {}", per_s(d.ops_in_per_s), per_s(d.ops_out_per_s)),
                format!(
                    "{} / {}",
                    bytes_per_s(d.bytes_in_per_s),
                    bytes_per_s(d.bytes_out_per_s)
                ),
                lag(d),
                ago(d.last_sync_ms, t.at_ms),
                l.rtt_ms.map_or("-".into(), |r| format!("{r:.1}ms")),
            ]);
            rows.push(row);
        }
    }
    let mut out = format!(
        "{} ({}){}\n",
        t.name,
        t.role,
        t.mesh
            .as_ref()
            .map_or(String::from(", in no mesh"), |m| format!(
                ", mesh {}",
                &m[..m.len().min(12)]
            ))
    );
    out.push_str(&table(
        &[
            "PEER",
            "ROLE",
            "STATE",
            "DATABASE",
            "DIR",
            "OPS/S IN / OUT",
            "BYTES/S IN / OUT",
            "LAG",
            "LAST SYNC",
            "RTT",
        ],
        rows,
    ));
    out
}

/// The graph in Graphviz's dot language: members as nodes (hubs as
/// boxes), this device's links as edges labelled with their databases'
/// rates and lag, and other members' sessions as grey edges.
pub(crate) fn dot(t: &TopologyResult) -> String {
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let quote = |s: &str| format!("\"{}\"", escape(s));
    let node = |id: &str| quote(&id[..id.len().min(16)]);
    let shape = |role: &str| if role == "hub" { "box" } else { "ellipse" };
    let mut out =
        String::from("digraph blazedb {\n  rankdir=LR;\n  node [fontname=\"sans-serif\"];\n");
    let _ = writeln!(
        out,
        "  {} [label={}, shape={}, style=bold];",
        node(&t.device_id),
        quote(&t.name),
        shape(&t.role)
    );
    for l in &t.links {
        let style = match l.state {
            LinkState::Direct => "solid",
            LinkState::Relayed => "dashed",
            _ => "dotted",
        };
        let _ = writeln!(
            out,
            "  {} [label={}, shape={}, style={style}];",
            node(&l.device_id),
            quote(&l.name),
            shape(&l.role)
        );
        if l.state != LinkState::Direct {
            continue;
        }
        let (sending, taking) = (
            l.databases.iter().any(|d| d.sending),
            l.databases.iter().any(|d| d.taking),
        );
        let dir = match (sending, taking) {
            (true, true) => "both",
            (true, false) => "forward",
            (false, true) => "back",
            (false, false) => "none",
        };
        let label: Vec<String> = l
            .databases
            .iter()
            .map(|d| {
                escape(&format!(
                    "{}{} {} ops/s, lag {}",
                    d.db,
                    if d.e2e { " \u{1f512}" } else { "" },
                    per_s(d.ops_in_per_s + d.ops_out_per_s),
                    lag(d)
                ))
            })
            .collect();
        // `\n` is dot's line break inside a label.
        let _ = writeln!(
            out,
            "  {} -> {} [dir={dir}, label=\"{}\"];",
            node(&t.device_id),
            node(&l.device_id),
            label.join("\\n")
        );
    }
    // This device's own sessions are drawn above.
    for e in t.edges.iter().filter(|e| e.from != t.device_id) {
        let _ = writeln!(
            out,
            "  {} -> {} [dir=none, color=grey];",
            node(&e.from),
            node(&e.to)
        );
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use blazedb_proto::topology::Edge;

    /// A hub's view: one device direct with two databases, one relayed,
    /// one backing off.
    pub(crate) fn sample() -> TopologyResult {
        let id = |c: char| c.to_string().repeat(63);
        TopologyResult {
            device_id: id('h'),
            name: "hub1".into(),
            role: "hub".into(),
            mesh: Some("0123456789abcdef".into()),
            at_ms: 1_764_745_200_000,
            links: vec![
                LinkInfo {
                    device_id: id('a'),
                    name: "laptop".into(),
                    role: "device".into(),
                    state: LinkState::Direct,
                    via: None,
                    error: None,
                    retry_in_ms: None,
                    address: Some("127.0.0.1:40001".into()),
                    rtt_ms: Some(0.42),
                    databases: vec![
                        DbLink {
                            db: "notes".into(),
                            sending: true,
                            taking: true,
                            ops_in_per_s: 120.0,
                            ops_out_per_s: 2.5,
                            bytes_in_per_s: 48_000.0,
                            bytes_out_per_s: 900.0,
                            ops_in: 1200,
                            ops_out: 25,
                            bytes_in: 480_000,
                            bytes_out: 9000,
                            lag_ops: Some(3),
                            lag_ms: Some(120),
                            last_sync_ms: Some(1_764_745_199_000),
                            ..DbLink::default()
                        },
                        DbLink {
                            db: "secrets".into(),
                            taking: true,
                            e2e: true,
                            lag_ops: None,
                            ..DbLink::default()
                        },
                    ],
                },
                LinkInfo {
                    device_id: id('b'),
                    name: "phone".into(),
                    role: "device".into(),
                    state: LinkState::BackingOff,
                    via: None,
                    error: Some("127.0.0.1:40002: timed out".into()),
                    retry_in_ms: Some(4000),
                    address: None,
                    rtt_ms: None,
                    databases: Vec::new(),
                },
            ],
            edges: vec![Edge {
                from: id('c'),
                to: id('b'),
            }],
        }
    }

    #[test]
    fn topology_table_snapshot() {
        insta::assert_snapshot!(links_table(&sample()));
    }

    #[test]
    fn topology_dot_snapshot() {
        insta::assert_snapshot!(dot(&sample()));
    }

    #[test]
    fn topology_json_snapshot() {
        insta::assert_json_snapshot!(serde_json::to_value(sample()).expect("json"));
    }
}
