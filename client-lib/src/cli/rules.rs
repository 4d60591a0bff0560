//! `blazectl db rules NAME set FILE.toml | show`: a database's access
//! rules. The file says what devices no rule selects get, then the rules
//! in order (the first that selects a device decides):
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
//! ```

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde::Deserialize;

use super::Opts;
use super::fields::parse_filter;
use super::output::{format_ms, print_json, print_table};
use crate::Client;
use crate::api::{DbRulesResult, RuleSpec};
use blazedb_proto::Value;
use blazedb_proto::rules::{AccessLevel, DeviceAttr, RuleFilter, Selector};

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

/// Reads a rules file into what `db.rules.set` takes.
fn read_rules(text: &str) -> anyhow::Result<(AccessLevel, Vec<RuleSpec>)> {
    let file: RulesFile = toml::from_str(text)?;
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
    Ok((file.default, rules))
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

fn show(r: &DbRulesResult) {
    let Some(rules) = &r.rules else {
        println!(
            "database {} has no access rules: every member gets all of it",
            r.db
        );
        println!("this device: {}", r.this_device);
        return;
    };
    let signer = r
        .names
        .get(&rules.signer.to_string())
        .cloned()
        .unwrap_or_else(|| rules.signer.to_string());
    println!(
        "database {}: rules version {}, signed by {signer} at {}",
        r.db,
        rules.version,
        format_ms(rules.signed_ms)
    );
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
    print_table(
        &["#", "DEVICES", "ACCESS", "COLLECTIONS", "WHERE", "EXCLUDED"],
        rows,
    );
    println!("this device: {}", r.this_device);
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
            let (default, rules) =
                read_rules(&text).with_context(|| format!("in {}", file.display()))?;
            client.db(db).set_rules(default, rules).await?
        }
    };
    if opts.json {
        return print_json(&serde_json::to_value(&result)?);
    }
    show(&result);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blazedb_proto::api::FilterOp;

    #[test]
    fn a_rules_file_reads_into_rules() {
        let (default, rules) = read_rules(
            r#"
            default = "none"
            [[rule]]
            devices = ["team:ios"]
            collections = ["bugs"]
            where = ["team = $device.team", "status != archived"]
            exclude = ["largeAttachment"]
            access = "read-write"
            [[rule]]
            devices = ["*"]
            access = "read"
            "#,
        )
        .expect("valid");
        assert_eq!(default, AccessLevel::None);
        assert_eq!(rules.len(), 2);
        let f = &rules[0].filter;
        assert_eq!(f[0].device, Some(DeviceAttr::Team));
        assert_eq!(
            (f[1].op, &f[1].value),
            (FilterOp::Ne, &Value::from("archived"))
        );
        assert_eq!(rules[1].access, AccessLevel::Read);
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
    }
}
