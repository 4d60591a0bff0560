//! Access rules: who may see and write what of one database.
//!
//! An admin signs a database's [`AccessRules`]; every replica holds the
//! same signed copy and enforces it. A rule selects devices and says what
//! they get: which collections, which records (a filter that may refer to
//! the receiving device, such as `team = $device.team`), which fields are
//! never sent, and whether they may write. The first rule that selects a
//! device decides; a device no rule selects gets the `default`.
//!
//! A device may also ask for less than its rule allows ([`SyncWish`]):
//! what it receives is what both allow.
//!
//! The same signed document may say who syncs the database with whom
//! ([`LinkRule`]): hub-and-spoke, broadcast, aggregation, chains and
//! hierarchies of hubs are a few lines of it. A device's own peer list
//! (`db.peers`) overrides the links for that device.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::api::{Filter, FilterOp, SyncMode};
use crate::mesh::MeshId;
use crate::op::DeviceId;
use crate::value::Value;

/// What a rule gives the devices it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AccessLevel {
    /// Nothing: the database is not sent to them and their writes are
    /// refused.
    #[serde(rename = "none")]
    None,
    /// They receive what the rule lets them see; their writes are refused.
    #[serde(rename = "read")]
    Read,
    /// They receive what the rule lets them see and may write inside it.
    #[serde(rename = "read-write", alias = "full")]
    ReadWrite,
}

impl AccessLevel {
    /// The level as written in rules files and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLevel::None => "none",
            AccessLevel::Read => "read",
            AccessLevel::ReadWrite => "read-write",
        }
    }
}

/// Which devices a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Selector {
    /// One device (`device:ID`, the full id in signed rules).
    Device(DeviceId),
    /// Every member of a team (`team:NAME`).
    Team(String),
    /// Every hub (`role:hub`).
    Hubs,
    /// Every device (`*`).
    Everyone,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Device(d) => write!(f, "device:{d}"),
            Selector::Team(t) => write!(f, "team:{t}"),
            Selector::Hubs => f.write_str("role:hub"),
            Selector::Everyone => f.write_str("*"),
        }
    }
}

/// Why a selector could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a device selector: use device:ID, team:NAME, role:hub or * (for every device)"
)]
pub struct BadSelector(pub String);

impl FromStr for Selector {
    type Err = BadSelector;

    fn from_str(s: &str) -> Result<Self, BadSelector> {
        let bad = || BadSelector(s.to_owned());
        match s.split_once(':') {
            _ if s == "*" => Ok(Selector::Everyone),
            Some(("role", "hub")) => Ok(Selector::Hubs),
            Some(("team", t)) if !t.is_empty() => Ok(Selector::Team(t.to_owned())),
            Some(("device", d)) => d.parse().map(Selector::Device).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An attribute of the device a rule is applied to, usable in filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceAttr {
    /// `$device.id`: the device id, as `blazectl` prints it.
    Id,
    /// `$device.name`: the device's name in the mesh.
    Name,
    /// `$device.team`: any of the device's teams (only with `=` and `!=`).
    Team,
}

impl DeviceAttr {
    /// The attribute as written in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceAttr::Id => "$device.id",
            DeviceAttr::Name => "$device.name",
            DeviceAttr::Team => "$device.team",
        }
    }

    /// Reads `$device.id`, `$device.name` or `$device.team`.
    pub fn parse(s: &str) -> Option<DeviceAttr> {
        match s {
            "$device.id" => Some(DeviceAttr::Id),
            "$device.name" => Some(DeviceAttr::Name),
            "$device.team" => Some(DeviceAttr::Team),
            _ => None,
        }
    }
}

/// One condition of a rule's filter: `field op value`, where the value may
/// be an attribute of the receiving device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleFilter {
    /// The field (or `$id`).
    pub field: String,
    /// The comparison.
    pub op: FilterOp,
    /// What to compare with, when `device` is not set (nil when it is).
    pub value: Value,
    /// Compare with this attribute of the receiving device instead.
    #[serde(default)]
    pub device: Option<DeviceAttr>,
}

impl fmt::Display for RuleFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.field, self.op.as_str())?;
        match self.device {
            Some(a) => f.write_str(a.as_str()),
            None => write!(f, "{}", self.value),
        }
    }
}

/// One rule: which devices, and what they get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessRule {
    /// The devices it applies to (any of them).
    pub devices: Vec<Selector>,
    /// The collections they may see; every collection when `None`.
    #[serde(default)]
    pub collections: Option<Vec<String>>,
    /// Conditions a record must meet to be seen (all of them).
    #[serde(default, rename = "where")]
    pub filter: Vec<RuleFilter>,
    /// Fields never sent to them, nor accepted from them.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Whether they may read, and write.
    pub access: AccessLevel,
}

/// The access rules of one database, as an admin signs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessRules {
    /// The mesh they belong to.
    pub mesh: MeshId,
    /// The database they govern.
    pub db: String,
    /// Higher versions replace lower ones.
    pub version: u64,
    /// What devices no rule selects get.
    pub default: AccessLevel,
    /// The rules, in order: the first that selects a device decides.
    pub rules: Vec<AccessRule>,
    /// The admin who signed this version.
    pub signer: DeviceId,
    /// When it was signed, in ms since the Unix epoch (for people).
    pub signed_ms: u64,
    /// Who syncs the database with whom, in order: the first link that
    /// joins two devices (either way round) decides. Every member syncs
    /// with every other when there are none; when there are some, two
    /// devices no link joins do not sync the database with each other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkRule>,
}

/// A link between two sets of devices over which a database syncs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRule {
    /// One end: the devices the direction is said for.
    pub devices: Vec<Selector>,
    /// The other end.
    pub peers: Vec<Selector>,
    /// The direction as `devices` see it: `sync` (both ways), `pull`
    /// (they take from `peers`), `push` (they give to `peers`) or `local`
    /// (no sync between them). `peers` see it the other way round.
    pub sync_mode: SyncMode,
}

impl LinkRule {
    /// The direction `me` syncs with `peer` by this link, if it joins
    /// them; `selects` says whether a selector picks a device.
    pub fn between(
        &self,
        me: &DeviceId,
        peer: &DeviceId,
        selects: impl Fn(&Selector, &DeviceId) -> bool,
    ) -> Option<SyncMode> {
        let any = |sels: &[Selector], d: &DeviceId| sels.iter().any(|s| selects(s, d));
        if any(&self.devices, me) && any(&self.peers, peer) {
            Some(self.sync_mode)
        } else if any(&self.peers, me) && any(&self.devices, peer) {
            Some(match self.sync_mode {
                SyncMode::Pull => SyncMode::Push,
                SyncMode::Push => SyncMode::Pull,
                m => m,
            })
        } else {
            None
        }
    }
}

impl AccessRules {
    /// Whether the rules can ever restrict anyone. Rules that give every
    /// device everything are the same as having none.
    pub fn restricts(&self) -> bool {
        self.default != AccessLevel::ReadWrite
            || self.rules.iter().any(|r| {
                r.access != AccessLevel::ReadWrite
                    || r.collections.is_some()
                    || !r.filter.is_empty()
                    || !r.exclude.is_empty()
            })
    }
}

/// What a device itself asks to receive of a database: never more than
/// its rule allows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncWish {
    /// Only these collections; all when `None`.
    #[serde(default)]
    pub collections: Option<Vec<String>>,
    /// Only records meeting all of these.
    #[serde(default, rename = "where")]
    pub filter: Vec<Filter>,
    /// Never these fields.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl SyncWish {
    /// Whether the wish asks for everything (no restriction at all).
    pub fn is_everything(&self) -> bool {
        self.collections.is_none() && self.filter.is_empty() && self.exclude.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn selectors_read_and_print_alike() {
        let id = DeviceId([7; 32]);
        for s in [
            "*".to_owned(),
            "role:hub".to_owned(),
            "team:ios".to_owned(),
            format!("device:{id}"),
        ] {
            let sel: Selector = s.parse().expect("valid");
            assert_eq!(sel.to_string(), s);
        }
        for bad in ["", "team:", "role:admin", "device:xyz", "ios"] {
            let err = bad.parse::<Selector>().expect_err(bad);
            assert!(err.to_string().contains("team:NAME"), "{err}");
        }
    }

    #[test]
    fn rules_round_trip_and_say_whether_they_restrict() {
        let mut rules = AccessRules {
            mesh: MeshId([3; 16]),
            db: "bugs".into(),
            version: 3,
            default: AccessLevel::ReadWrite,
            rules: vec![AccessRule {
                devices: vec![Selector::Team("ios".into()), Selector::Hubs],
                collections: None,
                filter: vec![],
                exclude: vec![],
                access: AccessLevel::ReadWrite,
            }],
            signer: DeviceId([1; 32]),
            signed_ms: 5,
            links: Vec::new(),
        };
        assert!(!rules.restricts());
        rules.rules[0].filter.push(RuleFilter {
            field: "team".into(),
            op: FilterOp::Eq,
            value: Value::Null,
            device: Some(DeviceAttr::Team),
        });
        assert!(rules.restricts());
        let bytes = codec::to_vec(&rules).expect("encode");
        assert_eq!(
            codec::from_slice::<AccessRules>(&bytes).expect("decode"),
            rules
        );
        assert_eq!(rules.rules[0].filter[0].to_string(), "team = $device.team");
    }
}
