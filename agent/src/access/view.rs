//! What one device may see and write of one database: its access rule
//! (resolved against the device's id, name and teams) intersected with
//! what the device asks for itself. IO-free; the sync engine asks it about
//! every record it sends to a partial replica and every write it takes
//! from one.

use std::collections::BTreeSet;
use std::sync::Arc;

use blazedb_proto::api::{Filter, FilterOp};
use blazedb_proto::rules::{AccessLevel, AccessRule, AccessRules, DeviceAttr, Selector, SyncWish};
use blazedb_proto::{DeviceId, OpBody, Value};

use crate::store::query;
use crate::store::record::StoredRecord;

/// What rules select devices by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceAttrs {
    /// The device's name in the mesh.
    pub name: String,
    /// Its teams.
    pub teams: Vec<String>,
    /// Whether it is a hub.
    pub hub: bool,
}

/// A device's access to one database.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    /// Everything: it holds a full replica and may write anything.
    Full,
    /// Less than everything: it holds a partial replica, receives only
    /// what the view sees, and its writes are checked.
    Partial(Arc<View>),
}

impl Access {
    /// The access in words, as `db rules show` prints it.
    pub fn describe(&self) -> String {
        let Access::Partial(v) = self else {
            return "full".into();
        };
        if !v.sees_anything() {
            return "none".into();
        }
        let mut parts = vec![if v.write { "read-write" } else { "read" }.to_owned()];
        if let Some(c) = &v.collections {
            parts.push(format!(
                "collections {}",
                c.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if !v.filter.is_empty() {
            let conds: Vec<String> = v
                .filter
                .iter()
                .map(|f| format!("{} {} {}", f.field, f.op.as_str(), f.value))
                .collect();
            parts.push(format!("where {}", conds.join(" and ")));
        }
        if !v.exclude.is_empty() {
            parts.push(format!(
                "without {}",
                v.exclude.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        format!("partial: {}", parts.join("; "))
    }

    /// The view, for a partial replica.
    pub fn view(&self) -> Option<&Arc<View>> {
        match self {
            Access::Full => None,
            Access::Partial(v) => Some(v),
        }
    }
}

/// What a partial replica may see and write.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Whether it may write (inside what it sees).
    pub write: bool,
    /// The collections it sees; all when `None`.
    pub collections: Option<BTreeSet<String>>,
    /// Conditions every record it sees meets, with the device's
    /// attributes filled in.
    pub filter: Vec<Filter>,
    /// Fields it never receives nor may write.
    pub exclude: BTreeSet<String>,
}

impl View {
    /// A view of nothing: the `none` access level.
    pub fn nothing() -> View {
        View {
            write: false,
            collections: Some(BTreeSet::new()),
            filter: Vec::new(),
            exclude: BTreeSet::new(),
        }
    }

    /// Whether the view can see any record at all.
    pub fn sees_anything(&self) -> bool {
        self.collections.as_ref().is_none_or(|c| !c.is_empty())
    }

    /// Whether the view sees the collection.
    pub fn sees_collection(&self, collection: &str) -> bool {
        self.collections
            .as_ref()
            .is_none_or(|c| c.contains(collection))
    }

    /// Whether the view sees the record `id` of `collection` in the state
    /// `rec`: it is live, in a collection seen, and meets the filter.
    pub(crate) fn sees(&self, collection: &str, id: &str, rec: &StoredRecord) -> bool {
        rec.is_live()
            && self.sees_collection(collection)
            && self.filter.iter().all(|f| query::matches(f, id, rec))
    }

    /// Whether a change to this field can change what the view sees.
    pub fn filters_on(&self, field: &str) -> bool {
        self.filter.iter().any(|f| f.field == field)
    }

    /// The record as the view may receive it: excluded fields keep their
    /// stamp but lose their value, so that the receiver drops a value of
    /// its own that is older, and learns none.
    pub(crate) fn project(&self, rec: &StoredRecord) -> StoredRecord {
        if self.exclude.is_empty() {
            return rec.clone();
        }
        rec.without_values(&self.exclude)
    }

    /// Whether a device with this view may make the write `body`, which
    /// turns the record from `before` (`None`: never written here) into
    /// `after`. `Err` says why not, for the writer and the log.
    pub(crate) fn check_write(
        &self,
        body: &OpBody,
        before: Option<&StoredRecord>,
        after: &StoredRecord,
    ) -> Result<(), String> {
        let (collection, id) = (body.collection(), body.id());
        self.check_fields_written(body)?;
        let existed = before.is_some_and(StoredRecord::is_live);
        if existed && before.is_some_and(|b| !self.sees(collection, id, b)) {
            return Err(format!(
                "record {collection}/{id} is outside what this device may see"
            ));
        }
        if let OpBody::Delete { .. } = body {
            return Ok(());
        }
        if !self.sees(collection, id, after) {
            return Err(moved_out(collection, id));
        }
        Ok(())
    }

    /// [`View::check_write`] for a put of a record this replica has never
    /// held (its state after the write is just the put's fields), without
    /// building that state.
    pub(crate) fn check_create(&self, body: &OpBody) -> Result<(), String> {
        self.check_fields_written(body)?;
        let OpBody::Put {
            collection,
            id,
            fields,
        } = body
        else {
            return Ok(());
        };
        if !self
            .filter
            .iter()
            .all(|f| query::fields_match(f, id, fields))
        {
            return Err(moved_out(collection, id));
        }
        Ok(())
    }

    /// The checks of a write that need no record: access, collection and
    /// excluded fields.
    fn check_fields_written(&self, body: &OpBody) -> Result<(), String> {
        let collection = body.collection();
        if !self.write {
            return Err("this device may only read the database".into());
        }
        if !self.sees_collection(collection) {
            return Err(format!(
                "this device may not write to collection {collection:?}"
            ));
        }
        let touched: Vec<&String> = match body {
            OpBody::Put { fields, .. } => fields.keys().collect(),
            OpBody::Patch { set, unset, .. } => set.keys().chain(unset).collect(),
            OpBody::Delete { .. } | OpBody::Rejected { .. } => Vec::new(),
        };
        if let Some(f) = touched.iter().find(|f| self.exclude.contains(f.as_str())) {
            return Err(format!("field {f:?} is excluded for this device"));
        }
        Ok(())
    }

    /// What both this view and the device's own wish allow.
    fn narrowed(mut self, wish: &SyncWish) -> View {
        if let Some(want) = &wish.collections {
            let want: BTreeSet<String> = want.iter().cloned().collect();
            self.collections = Some(match self.collections {
                Some(c) => c.intersection(&want).cloned().collect(),
                None => want,
            });
        }
        self.filter.extend(wish.filter.iter().cloned());
        self.exclude.extend(wish.exclude.iter().cloned());
        self
    }
}

/// Why a write that would take a record out of the writer's view is
/// refused.
fn moved_out(collection: &str, id: &str) -> String {
    format!("the write would put record {collection}/{id} outside what this device may see")
}

pub(crate) fn selects(sel: &Selector, device: &DeviceId, attrs: Option<&DeviceAttrs>) -> bool {
    match sel {
        Selector::Everyone => true,
        Selector::Device(d) => d == device,
        Selector::Team(t) => attrs.is_some_and(|a| a.teams.iter().any(|x| x == t)),
        Selector::Hubs => attrs.is_some_and(|a| a.hub),
    }
}

/// Fills the device's attributes into a rule's filter. `$device.team`
/// compares with any of the device's teams: `=` becomes `in`, `!=` one
/// `!=` per team. Other comparisons with a team list match nothing (the
/// agent refuses such rules when they are set).
fn resolve(rule: &AccessRule, device: &DeviceId, attrs: Option<&DeviceAttrs>) -> Vec<Filter> {
    let none = |field: &str| Filter {
        field: field.to_owned(),
        op: FilterOp::In,
        value: Value::List(Vec::new()),
    };
    let mut out = Vec::new();
    for f in &rule.filter {
        let with = |value: Value| Filter {
            field: f.field.clone(),
            op: f.op,
            value,
        };
        match f.device {
            None => out.push(with(f.value.clone())),
            Some(DeviceAttr::Id) => out.push(with(Value::String(device.to_string()))),
            Some(DeviceAttr::Name) => match attrs {
                Some(a) => out.push(with(Value::String(a.name.clone()))),
                None => out.push(none(&f.field)),
            },
            Some(DeviceAttr::Team) => {
                let teams: Vec<Value> = attrs
                    .map(|a| a.teams.iter().cloned().map(Value::String).collect())
                    .unwrap_or_default();
                match f.op {
                    FilterOp::Eq => out.push(Filter {
                        field: f.field.clone(),
                        op: FilterOp::In,
                        value: Value::List(teams),
                    }),
                    FilterOp::Ne => out.extend(teams.into_iter().map(with)),
                    _ => out.push(none(&f.field)),
                }
            }
        }
    }
    out
}

/// The access `device` has to the database governed by `rules` (`None`:
/// no rules, everyone gets everything), narrowed by its own `wish`.
pub fn access(
    rules: Option<&AccessRules>,
    device: &DeviceId,
    attrs: Option<&DeviceAttrs>,
    wish: Option<&SyncWish>,
) -> Access {
    let view = match rules {
        None => None,
        Some(rules) => {
            let rule = rules
                .rules
                .iter()
                .find(|r| r.devices.iter().any(|s| selects(s, device, attrs)));
            match rule {
                None => match rules.default {
                    AccessLevel::ReadWrite => None,
                    AccessLevel::Read => Some(View {
                        write: false,
                        collections: None,
                        filter: Vec::new(),
                        exclude: BTreeSet::new(),
                    }),
                    AccessLevel::None => Some(View::nothing()),
                },
                Some(r) if r.access == AccessLevel::None => Some(View::nothing()),
                Some(r) => {
                    let v = View {
                        write: r.access == AccessLevel::ReadWrite,
                        collections: r.collections.as_ref().map(|c| c.iter().cloned().collect()),
                        filter: resolve(r, device, attrs),
                        exclude: r.exclude.iter().cloned().collect(),
                    };
                    let everything = v.write
                        && v.collections.is_none()
                        && v.filter.is_empty()
                        && v.exclude.is_empty();
                    (!everything).then_some(v)
                }
            }
        }
    };
    let wish = wish.filter(|w| !w.is_everything());
    match (view, wish) {
        (None, None) => Access::Full,
        (Some(v), None) => Access::Partial(Arc::new(v)),
        (None, Some(w)) => Access::Partial(Arc::new(
            View {
                write: true,
                collections: None,
                filter: Vec::new(),
                exclude: BTreeSet::new(),
            }
            .narrowed(w),
        )),
        (Some(v), Some(w)) => Access::Partial(Arc::new(v.narrowed(w))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::Stamp;
    use blazedb_proto::rules::RuleFilter;
    use blazedb_proto::{Fields, Hlc};

    fn dev(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    fn team_rules() -> AccessRules {
        AccessRules {
            mesh: blazedb_proto::mesh::MeshId([3; 16]),
            db: "bugs".into(),
            version: 1,
            default: AccessLevel::ReadWrite,
            rules: vec![
                AccessRule {
                    devices: vec![Selector::Device(dev(9))],
                    collections: None,
                    filter: vec![],
                    exclude: vec![],
                    access: AccessLevel::Read,
                },
                AccessRule {
                    devices: vec![Selector::Team("ios".into()), Selector::Team("web".into())],
                    collections: Some(vec!["bugs".into()]),
                    filter: vec![RuleFilter {
                        field: "team".into(),
                        op: FilterOp::Eq,
                        value: Value::Null,
                        device: Some(DeviceAttr::Team),
                    }],
                    exclude: vec!["largeAttachment".into()],
                    access: AccessLevel::ReadWrite,
                },
            ],
            signer: dev(1),
            signed_ms: 0,
            links: Vec::new(),
        }
    }

    fn ios() -> DeviceAttrs {
        DeviceAttrs {
            name: "phone".into(),
            teams: vec!["ios".into()],
            hub: false,
        }
    }

    fn record(fields: &[(&str, &str)], hlc: u64) -> StoredRecord {
        let stamp = Stamp {
            priority: 0,
            hlc: Hlc(hlc),
            origin: dev(1),
        };
        let fields: Fields = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        StoredRecord::from_put(&stamp, fields)
    }

    fn patch(set: &[(&str, &str)]) -> OpBody {
        OpBody::Patch {
            collection: "bugs".into(),
            id: "b1".into(),
            set: set
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect(),
            unset: vec![],
        }
    }

    #[test]
    fn the_first_rule_that_selects_a_device_decides_and_others_get_the_default() {
        let rules = team_rules();
        let phone = access(Some(&rules), &dev(2), Some(&ios()), None);
        let view = phone.view().expect("partial");
        assert!(view.write);
        assert_eq!(view.filter[0].op, FilterOp::In);
        // Device 9 is in team ios too, but its own rule comes first.
        let reader = access(Some(&rules), &dev(9), Some(&ios()), None);
        assert!(!reader.view().expect("partial").write);
        assert_eq!(access(Some(&rules), &dev(3), None, None), Access::Full);
        assert_eq!(access(None, &dev(3), None, None), Access::Full);
        let mut closed = rules;
        closed.default = AccessLevel::None;
        let v = access(Some(&closed), &dev(3), None, None);
        assert!(!v.view().expect("partial").sees_anything());
    }

    #[test]
    fn a_team_member_sees_its_teams_records_without_excluded_fields() {
        let rules = team_rules();
        let access = access(Some(&rules), &dev(2), Some(&ios()), None);
        let view = access.view().expect("partial");
        let mine = record(&[("team", "ios"), ("largeAttachment", "MARKER")], 5);
        let theirs = record(&[("team", "web")], 5);
        assert!(view.sees("bugs", "b1", &mine));
        assert!(!view.sees("bugs", "b2", &theirs));
        assert!(!view.sees("other", "b1", &mine));
        let projected = view.project(&mine);
        assert_eq!(projected.field("team"), Some(&Value::from("ios")));
        assert_eq!(projected.field("largeAttachment"), None);
        assert!(!format!("{projected:?}").contains("MARKER"));
    }

    #[test]
    fn writes_are_checked_before_and_after() {
        let rules = team_rules();
        let access = access(Some(&rules), &dev(2), Some(&ios()), None);
        let view = access.view().expect("partial");
        let mine = record(&[("team", "ios")], 5);
        let theirs = record(&[("team", "web")], 5);
        let stamp = Stamp {
            priority: 0,
            hlc: Hlc(9),
            origin: dev(2),
        };
        let apply = |before: &StoredRecord, body: &OpBody| {
            let mut after = before.clone();
            after.apply(&stamp, body);
            after
        };
        let ok = patch(&[("title", "x")]);
        assert_eq!(
            view.check_write(&ok, Some(&mine), &apply(&mine, &ok)),
            Ok(())
        );
        let into_theirs = view.check_write(&ok, Some(&theirs), &apply(&theirs, &ok));
        assert!(into_theirs.expect_err("refused").contains("outside"));
        let move_out = patch(&[("team", "web")]);
        let moved = view.check_write(&move_out, Some(&mine), &apply(&mine, &move_out));
        assert!(moved.expect_err("refused").contains("would put"));
        let secret = patch(&[("largeAttachment", "x")]);
        let excluded = view.check_write(&secret, Some(&mine), &apply(&mine, &secret));
        assert!(excluded.expect_err("refused").contains("excluded"));
        let reader = super::access(Some(&rules), &dev(9), None, None);
        let read_only = reader.view().expect("partial");
        let refused = read_only.check_write(&ok, Some(&mine), &apply(&mine, &ok));
        assert!(refused.expect_err("refused").contains("only read"));
    }

    #[test]
    fn a_wish_narrows_but_never_widens() {
        let rules = team_rules();
        let wish = SyncWish {
            collections: Some(vec!["bugs".into(), "secrets".into()]),
            filter: vec![Filter {
                field: "status".into(),
                op: FilterOp::Ne,
                value: Value::from("archived"),
            }],
            exclude: vec!["log".into()],
        };
        let a = access(Some(&rules), &dev(2), Some(&ios()), Some(&wish));
        let v = a.view().expect("partial");
        assert_eq!(v.collections, Some(BTreeSet::from(["bugs".to_owned()])));
        assert_eq!(v.filter.len(), 2);
        assert!(v.exclude.contains("log") && v.exclude.contains("largeAttachment"));
        let full = access(None, &dev(2), None, Some(&wish));
        assert!(
            full.view()
                .expect("a wish alone makes a partial replica")
                .write
        );
        let nothing = access(None, &dev(2), None, Some(&SyncWish::default()));
        assert_eq!(nothing, Access::Full);
    }
}
