//! `blazectl db rules NAME set FILE.toml | show`: a database's access
//! rules and links. The file says what devices no rule selects get, then
//! the rules in order (the first that selects a device decides), then who
//! syncs with whom (the first link that joins two devices decides; every
//! member with every other when there is no link):
//!
//! ```toml
//! default = "read-write"        # or "read", "none"
//!
//! [[rule]]
//! devices = ["team:ios", "team:web"]   # device:NAME, team:NAME, role:hub, *
//! collections = ["bugs"]               # all when missing
//! where = ["team = $device.team"]      # $device.id, $device.name, $device.team
//! exclude = ["largeAttachment"]        # never sent to them
//! access = "read-write"                # or "read", "none"
//!
//! [[link]]
//! devices = ["*"]                      # one end, selected as in rules
//! peers = ["role:hub"]                 # the other end
//! mode = "on"                          # as `devices` see it: on, pull, push, off
//! ```

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde::Deserialize;

use super::Opts;
use super::fields::parse_filter;
use super::output::{format_ms, mode_word, print_json, table};
use crate::Client;
use crate::api::{DbRulesResult, LinkSpec, RuleSpec, SyncMode};
use blazedb_proto::Value;
use blazedb_proto::rules::{AccessLevel, AccessRules, DeviceAttr, RuleFilter, Selector};

#[derive(Debug, Subcommand)]
pub(crate) enum RulesAction {
    /// Show the rules, and what they give this device.
    Show,
    /// Set the rules from a TOML file (mesh admins only). They replace the
    /// ones before, reach every member and apply at once.
    Set {
        /// The rules file.
        file: PathBuf,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default = "read_write")]
    default: AccessLevel,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleEntry>,
    #[serde(default, rename = "link")]
    links: Vec<LinkEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkEntry {
    devices: Vec<String>,
    peers: Vec<String>,
    #[serde(default = "both_ways")]
    mode: String,
}

fn both_ways() -> String {
    "on".into()
}

/// Reads a link's direction: `on` (or `sync`), `pull`, `push` or `off`
/// (or `local`).
fn link_mode(word: &str) -> anyhow::Result<SyncMode> {
    Ok(match word {
        "on" | "sync" => SyncMode::Sync,
        "pull" => SyncMode::Pull,
        "push" => SyncMode::Push,
        "off" | "local" => SyncMode::Local,
        other => anyhow::bail!("mode {other:?}: use on, pull, push or off"),
    })
}

fn read_write() -> AccessLevel {
    AccessLevel::ReadWrite
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    devices: Vec<String>,
    #[serde(default)]
    collections: Option<Vec<String>>,
    #[serde(default, rename = "where")]
    filter: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    access: AccessLevel,
}

/// Reads one condition of a rule: a `--where` expression whose value may
/// be `$device.id`, `$device.name` or `$device.team`.
fn rule_filter(expr: &str) -> anyhow::Result<RuleFilter> {
    let f = parse_filter(expr)?;
    let device = match &f.value {
        Value::String(s) if s.starts_with("$device.") => {
            Some(DeviceAttr::parse(s).with_context(|| {
                format!("{expr:?}: use $device.id, $device.name or $device.team")
            })?)
        }
        _ => None,
    };
    Ok(RuleFilter {
        field: f.field,
        op: f.op,
        value: if device.is_some() {
            Value::Null
        } else {
            f.value
        },
        device,
    })
}

/// What a rules file holds, as `db.rules.set` takes it.
#[derive(Debug)]
struct RulesSpec {
    default: AccessLevel,
    rules: Vec<RuleSpec>,
    links: Vec<LinkSpec>,
}

/// Reads a rules file into what `db.rules.set` takes.
fn read_rules(text: &str) -> anyhow::Result<RulesSpec> {
    let file: RulesFile = toml::from_str(text)?;
    let links = file
        .links
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(LinkSpec {
                devices: l.devices,
                peers: l.peers,
                sync_mode: link_mode(&l.mode).with_context(|| format!("link {}", i + 1))?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let rules = file
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let filter = r
                .filter
                .iter()
                .map(|e| rule_filter(e))
                .collect::<anyhow::Result<_>>()
                .with_context(|| format!("rule {}", i + 1))?;
            Ok(RuleSpec {
                devices: r.devices,
                collections: r.collections,
                filter,
                exclude: r.exclude,
                access: r.access,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(RulesSpec {
        default: file.default,
        rules,
        links,
    })
}

/// A selector with device ids shown as names where known.
fn selector_text(s: &Selector, r: &DbRulesResult) -> String {
    match s {
        Selector::Device(d) => match r.names.get(&d.to_string()) {
            Some(name) => format!("device:{name}"),
            None => s.to_string(),
        },
        other => other.to_string(),
    }
}

/// The rules as people read them: who signed them, a table of rules in
/// the order they apply, and what this device gets.
fn rules_text(r: &DbRulesResult) -> String {
    let Some(rules) = &r.rules else {
        return format!(
            "database {} has no access rules: every member gets all of it\nthis device: {}\n",
            r.db, r.this_device
        );
    };
    let signer = r
        .names
        .get(&rules.signer.to_string())
        .cloned()
        .unwrap_or_else(|| rules.signer.to_string());
    let rows = rules
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            vec![
                (i + 1).to_string(),
                rule.devices
                    .iter()
                    .map(|s| selector_text(s, r))
                    .collect::<Vec<_>>()
                    .join(", "),
                rule.access.as_str().to_owned(),
                rule.collections
                    .as_ref()
                    .map_or("*".to_owned(), |c| c.join(", ")),
                rule.filter
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join(" and "),
                rule.exclude.join(", "),
            ]
        })
        .chain(std::iter::once(vec![
            "-".into(),
            "everyone else".into(),
            rules.default.as_str().to_owned(),
            "*".into(),
            String::new(),
            String::new(),
        ]))
        .collect();
    format!(
        "database {}: rules version {}, signed by {signer} at {}\n{}this device: {}\n{}",
        r.db,
        rules.version,
        format_ms(rules.signed_ms),
        table(
            &["#", "DEVICES", "ACCESS", "COLLECTIONS", "WHERE", "EXCLUDED"],
            rows,
        ),
        r.this_device,
        links_text(rules, r),
    )
}

/// The rules' links as people read them, and whom they give this device.
fn links_text(rules: &AccessRules, r: &DbRulesResult) -> String {
    let Some(here) = &r.links_here else {
        return "links: none, every member syncs with every other\n".into();
    };
    let ends = |sels: &[Selector]| {
        sels.iter()
            .map(|s| selector_text(s, r))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = rules
        .links
        .iter()
        .enumerate()
        .map(|(i, l)| {
            vec![
                (i + 1).to_string(),
                ends(&l.devices),
                mode_word(l.sync_mode).to_owned(),
                ends(&l.peers),
            ]
        })
        .collect();
    let peers = if here.is_empty() {
        "no member".to_owned()
    } else {
        here.iter()
            .map(|p| {
                let name = r.names.get(&p.device).unwrap_or(&p.device);
                format!("{name} ({})", mode_word(p.sync_mode))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "links (the first that joins two devices decides; unjoined devices do not sync):\n{}\
         this device syncs with: {peers}\n",
        table(&["#", "DEVICES", "MODE", "PEERS"], rows)
    )
}

/// The rules for `--json`: device ids in the form people compare, with
/// the names of those the mesh knows.
fn rules_json(r: &DbRulesResult) -> serde_json::Value {
    let rules = r.rules.as_ref().map(|rules| {
        serde_json::json!({
            "version": rules.version,
            "signer": rules.signer.to_string(),
            "signed_ms": rules.signed_ms,
            "default": rules.default.as_str(),
            "rules": rules.rules.iter().map(|rule| serde_json::json!({
                "devices": rule.devices.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "collections": rule.collections,
                "where": rule.filter.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "exclude": rule.exclude,
                "access": rule.access.as_str(),
            })).collect::<Vec<_>>(),
            "links": rules.links.iter().map(|l| serde_json::json!({
                "devices": l.devices.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "peers": l.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "mode": mode_word(l.sync_mode),
            })).collect::<Vec<_>>(),
        })
    });
    serde_json::json!({
        "db": r.db,
        "rules": rules,
        "names": r.names,
        "this_device": r.this_device,
        "links_here": r.links_here.as_ref().map(|peers| peers.iter().map(|p| serde_json::json!({
            "device": p.device,
            "mode": mode_word(p.sync_mode),
        })).collect::<Vec<_>>()),
    })
}

pub(crate) async fn run(
    client: &Client,
    db: &str,
    action: RulesAction,
    opts: Opts,
) -> anyhow::Result<()> {
    let result = match action {
        RulesAction::Show => client.db(db).rules().await?,
        RulesAction::Set { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let spec = read_rules(&text).with_context(|| format!("in {}", file.display()))?;
            client
                .db(db)
                .set_rules(spec.default, spec.rules, spec.links)
                .await?
        }
    };
    if opts.json {
        return print_json(&rules_json(&result));
    }
    print!("{}", rules_text(&result));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blazedb_proto::DeviceId;
    use blazedb_proto::api::FilterOp;
    use blazedb_proto::mesh::MeshId;
    use blazedb_proto::rules::{AccessRule, LinkRule};
    use std::collections::BTreeMap;

    /// A rules file with a rule of each kind.
    const EXAMPLE: &str = r#"
        default = "read"
        [[rule]]
        devices = ["team:ios", "role:hub"]
        collections = ["bugs"]
        where = ["team = $device.team", "status != archived"]
        exclude = ["largeAttachment"]
        access = "read-write"
        [[rule]]
        devices = ["*"]
        access = "none"
        [[link]]
        devices = ["team:ios"]
        peers = ["role:hub"]
        mode = "pull"
        [[link]]
        devices = ["role:hub"]
        peers = ["role:hub", "*"]
        "#;

    #[test]
    fn a_rules_file_reads_into_rules() {
        let RulesSpec {
            default,
            rules,
            links,
        } = read_rules(EXAMPLE).expect("valid");
        assert_eq!(default, AccessLevel::Read);
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].sync_mode, SyncMode::Pull);
        assert_eq!(links[1].sync_mode, SyncMode::Sync, "on by default");
        assert_eq!(links[1].peers, ["role:hub", "*"]);
        assert_eq!(rules.len(), 2);
        let f = &rules[0].filter;
        assert_eq!(f[0].device, Some(DeviceAttr::Team));
        assert_eq!(
            (f[1].op, &f[1].value),
            (FilterOp::Ne, &Value::from("archived"))
        );
        assert_eq!(rules[0].exclude, ["largeAttachment"]);
        assert_eq!(rules[1].access, AccessLevel::None);
        assert_eq!(rules[1].collections, None);
    }

    /// Rules as `db rules show` gets them: one rule per kind of selector.
    fn sample() -> DbRulesResult {
        let (phone, admin) = (DeviceId([3; 32]), DeviceId([9; 32]));
        let spec = read_rules(EXAMPLE).expect("valid");
        let mut rules: Vec<AccessRule> = spec
            .rules
            .into_iter()
            .map(|s| AccessRule {
                devices: s
                    .devices
                    .iter()
                    .map(|d| d.parse().expect("selector"))
                    .collect(),
                collections: s.collections,
                filter: s.filter,
                exclude: s.exclude,
                access: s.access,
            })
            .collect();
        rules.insert(
            1,
            AccessRule {
                devices: vec![Selector::Device(phone)],
                collections: None,
                filter: Vec::new(),
                exclude: Vec::new(),
                access: AccessLevel::Read,
            },
        );
        DbRulesResult {
            db: "bugs".into(),
            rules: Some(AccessRules {
                mesh: MeshId([1; 16]),
                db: "bugs".into(),
                version: 3,
                default: spec.default,
                rules,
                signer: admin,
                signed_ms: 1_796_184_000_000,
                links: spec
                    .links
                    .into_iter()
                    .map(|l| LinkRule {
                        devices: l.devices.iter().map(|d| d.parse().expect("sel")).collect(),
                        peers: l.peers.iter().map(|d| d.parse().expect("sel")).collect(),
                        sync_mode: l.sync_mode,
                    })
                    .collect(),
            }),
            names: BTreeMap::from([
                (phone.to_string(), "phone".to_owned()),
                (admin.to_string(), "laptop".to_owned()),
            ]),
            this_device: "partial: read-write; collections bugs; where team in [\"ios\"]".into(),
            links_here: Some(vec![crate::api::DbPeer {
                device: admin.to_string(),
                sync_mode: SyncMode::Pull,
            }]),
        }
    }

    #[test]
    fn rules_show_json_snapshot() {
        insta::assert_json_snapshot!(rules_json(&sample()));
    }

    #[test]
    fn rules_show_text_snapshot() {
        insta::assert_snapshot!(rules_text(&sample()));
    }

    #[test]
    fn no_rules_say_so() {
        let none = DbRulesResult {
            rules: None,
            this_device: "full".into(),
            links_here: None,
            ..sample()
        };
        let json = rules_json(&none);
        assert_eq!(json["rules"], serde_json::Value::Null);
        assert!(rules_text(&none).contains("has no access rules"));
    }

    #[test]
    fn mistakes_in_a_rules_file_are_named() {
        let unknown = read_rules("[[rule]]\ndevices = [\"*\"]\naccess = \"read\"\nwho = 1\n");
        assert!(format!("{:#}", unknown.expect_err("unknown key")).contains("who"));
        let attr = read_rules(
            "[[rule]]\ndevices = [\"*\"]\nwhere = [\"a = $device.age\"]\naccess = \"read\"\n",
        );
        assert!(format!("{:#}", attr.expect_err("bad attr")).contains("$device.team"));
        let level = read_rules("default = \"some\"\n");
        assert!(level.is_err());
        let mode = read_rules("[[link]]\ndevices = [\"*\"]\npeers = [\"*\"]\nmode = \"up\"\n");
        let err = format!("{:#}", mode.expect_err("bad mode"));
        assert!(
            err.contains("link 1") && err.contains("on, pull, push or off"),
            "{err}"
        );
    }
}
