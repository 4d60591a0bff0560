//! Access rules in the simulator: which nodes hold partial replicas, the
//! rules that say so (a second version replaces the first mid-run in some
//! seeds), and an oracle of what a partial replica may hold, written apart
//! from the agent's own code so that the two check each other.

use std::collections::{BTreeMap, BTreeSet};

use blazed::sync::RecordStamps;
use blazedb_proto::api::FilterOp;
use blazedb_proto::rules::{AccessLevel, AccessRule, AccessRules, RuleFilter, Selector};
use blazedb_proto::{DeviceId, Fields, Value};

use crate::world::Rng;

/// What one partial node may see and write, as the oracle reads a rule.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Grant {
    pub(crate) write: bool,
    pub(crate) collection: Option<String>,
    /// Records must have `status` below this.
    pub(crate) status_below: Option<i64>,
    /// Records must have one of these ids.
    pub(crate) ids: Option<BTreeSet<String>>,
    pub(crate) exclude: Option<String>,
}

impl Grant {
    fn random(r: &mut Rng) -> Grant {
        Grant {
            write: r.chance(0.7),
            collection: r.chance(0.4).then(|| "c0".to_owned()),
            status_below: r.chance(0.4).then(|| r.range(20, 80) as i64),
            ids: r
                .chance(0.3)
                .then(|| (0..6).map(|i| format!("r{i}")).collect()),
            exclude: r.chance(0.5).then(|| "prio".to_owned()),
        }
    }

    fn rule(&self, device: DeviceId) -> AccessRule {
        let mut filter = Vec::new();
        if let Some(below) = self.status_below {
            filter.push(RuleFilter {
                field: "status".into(),
                op: FilterOp::Lt,
                value: Value::Int(below),
                device: None,
            });
        }
        if let Some(ids) = &self.ids {
            filter.push(RuleFilter {
                field: "$id".into(),
                op: FilterOp::In,
                value: Value::List(ids.iter().cloned().map(Value::String).collect()),
                device: None,
            });
        }
        AccessRule {
            devices: vec![Selector::Device(device)],
            collections: self.collection.clone().map(|c| vec![c]),
            filter,
            exclude: self.exclude.clone().into_iter().collect(),
            access: if self.write {
                AccessLevel::ReadWrite
            } else {
                AccessLevel::Read
            },
        }
    }

    /// Whether a record with these fields is one the grant sees.
    pub(crate) fn sees(&self, collection: &str, id: &str, fields: &Fields) -> bool {
        self.collection.as_deref().is_none_or(|c| c == collection)
            && self.ids.as_ref().is_none_or(|ids| ids.contains(id))
            && self
                .status_below
                .is_none_or(|b| matches!(fields.get("status"), Some(Value::Int(s)) if *s < b))
    }

    /// What of a full replica's records the grant lets through. A record
    /// no put made, whose every value is excluded, is not sent at all.
    pub(crate) fn project(
        &self,
        full: &BTreeMap<(String, String), Fields>,
        stamps: Option<&BTreeMap<(String, String), RecordStamps>>,
    ) -> BTreeMap<(String, String), Fields> {
        full.iter()
            .filter(|((c, id), f)| self.sees(c, id, f))
            .filter_map(|(k, f)| {
                let mut f = f.clone();
                if let Some(x) = &self.exclude {
                    f.remove(x);
                }
                let put = stamps.and_then(|s| s.get(k)).is_none_or(|s| s.put);
                (put || !f.is_empty()).then(|| (k.clone(), f))
            })
            .collect()
    }

    /// Why the record `held` must not be on the partial replica `me`, if
    /// it must not. What this node wrote itself is its own to hold until
    /// a correction arrives: a record outside the view may hold only its
    /// own writes, an excluded field only its own value, and a record may
    /// fail the filter only on a value of its own.
    pub(crate) fn forbids(
        &self,
        (collection, id): &(String, String),
        held: &Fields,
        stamps: Option<&RecordStamps>,
        me: DeviceId,
    ) -> Option<String> {
        let Some(stamps) = stamps else {
            // Without stamps (the fjall store) only the end state is checked.
            return None;
        };
        let own = |field: &str| stamps.fields.get(field).is_some_and(|(o, _)| *o == me);
        // Only what shows is another's write: another's delete, or a
        // field it removed, under the replica's own later writes shows
        // nothing of the other's (a deleted record comes to a partial
        // replica as its stamps, without values).
        let all_own = held.keys().all(|f| own(f))
            && (stamps.base.is_none_or(|(o, _)| o == me) || !stamps.put);
        if let Some(x) = &self.exclude
            && held.contains_key(x)
            && !own(x)
        {
            return Some(format!("holds excluded field {x}"));
        }
        let outside = self.collection.as_deref().is_some_and(|c| c != collection)
            || self.ids.as_ref().is_some_and(|ids| !ids.contains(id));
        if outside && !all_own {
            return Some("holds another's writes to a record outside its view".into());
        }
        let status_ok = self
            .status_below
            .is_none_or(|b| matches!(held.get("status"), Some(Value::Int(s)) if *s < b));
        // A put of its own may have removed the status.
        let own_put = stamps.base.is_some_and(|(o, _)| o == me) && !held.contains_key("status");
        if !outside && !status_ok && !own("status") && !all_own && !own_put {
            return Some("holds a record its filter does not match".into());
        }
        None
    }
}

/// The access rules of a run: which nodes are partial and what they get,
/// and when a second version replaces the first.
#[derive(Debug, Clone)]
pub(crate) struct AccessPlan {
    pub(crate) first: BTreeMap<usize, Grant>,
    pub(crate) second: Option<(u64, BTreeMap<usize, Grant>)>,
}

impl AccessPlan {
    /// Some of `candidates` get restricted access.
    pub(crate) fn random(r: &mut Rng, candidates: &[usize], chaos_ms: u64) -> AccessPlan {
        let pick = |r: &mut Rng| {
            let mut grants = BTreeMap::new();
            for &c in candidates {
                if r.chance(0.5) || grants.is_empty() && c == *candidates.last().unwrap_or(&c) {
                    grants.insert(c, Grant::random(r));
                }
            }
            grants
        };
        let first = pick(r);
        let second = r
            .chance(0.5)
            .then(|| (r.range(chaos_ms / 4, chaos_ms * 3 / 4), pick(r)));
        AccessPlan { first, second }
    }

    /// The rules as an admin (node 0) signs them.
    pub(crate) fn rules(
        grants: &BTreeMap<usize, Grant>,
        version: u64,
        device: impl Fn(usize) -> DeviceId,
    ) -> AccessRules {
        AccessRules {
            mesh: blazedb_proto::mesh::MeshId([9; 16]),
            db: crate::world::DB.to_owned(),
            version,
            default: AccessLevel::ReadWrite,
            rules: grants.iter().map(|(i, g)| g.rule(device(*i))).collect(),
            signer: device(0),
            signed_ms: 0,
            links: Vec::new(),
        }
    }
}
