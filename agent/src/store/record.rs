//! A record as the store keeps it: every field with the stamp of the write
//! that set it, so that replicas can merge writes in any order.
//!
//! The merge is last-writer-wins per field, ordered by [`Stamp`]
//! (priority, then clock, then origin device). A put or delete also sets
//! the record's *base*: fields older than the latest put are gone, and a
//! delete removes every field older than itself. Applying the same set of
//! operations in any order, any number of times, gives the same record.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use blazedb_proto::codec::CodecError;
use blazedb_proto::codec::raw::Reader;
use blazedb_proto::{DeviceId, Fields, Hlc, OpBody, Value};
use serde::{Deserialize, Serialize};

pub(crate) mod format;

/// Orders concurrent writes: a higher priority wins, then a later clock,
/// then the larger device id (an arbitrary but agreed tie-break).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Stamp {
    /// The database's conflict priority on the writing device.
    pub(crate) priority: u8,
    /// The write's clock reading.
    pub(crate) hlc: Hlc,
    /// The writer ([`blazedb_proto::Op::writer`]): the writing device in
    /// one write incarnation.
    pub(crate) origin: DeviceId,
}

impl Stamp {
    /// The stamp of an operation: its writer, not just its device, so two
    /// incarnations of one device never tie.
    pub(crate) fn of(op: &blazedb_proto::Op) -> Stamp {
        Stamp {
            priority: op.priority,
            hlc: op.hlc,
            origin: op.writer(),
        }
    }
}

/// A stamp inside a record: the origin is a position in the record's
/// `origins` table, which keeps the stored form small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct CellStamp(u8, Hlc, u16);

/// A field's stamp and value; `None` is a field removed by a patch. The
/// value is stored as a list of zero or one, because `Some(Value::Null)`
/// and `None` would both encode as nil.
#[derive(Debug, Clone, PartialEq)]
struct Cell(CellStamp, Option<Value>);

// Records are written in [`format`]'s form; the MessagePack form is read
// for records written before it, and written only by tests of that.
#[cfg(test)]
impl Serialize for Cell {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.0, self.1.as_slice()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (stamp, mut value): (CellStamp, Vec<Value>) = Deserialize::deserialize(d)?;
        if value.len() > 1 {
            return Err(serde::de::Error::custom("a field holds at most one value"));
        }
        Ok(Cell(stamp, value.pop()))
    }
}

/// A record with tombstones and field stamps, as stored
/// ([`StoredRecord::encode`]).
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(test, derive(Serialize))]
pub(crate) struct StoredRecord {
    origins: Vec<DeviceId>,
    /// The latest put or delete, and whether it was a delete.
    base: Option<(CellStamp, bool)>,
    fields: BTreeMap<String, Cell>,
}

impl StoredRecord {
    fn stamp(&self, s: CellStamp) -> Stamp {
        Stamp {
            priority: s.0,
            hlc: s.1,
            origin: self.origins[usize::from(s.2)],
        }
    }

    fn cell_stamp(&mut self, s: &Stamp) -> CellStamp {
        let pos = match self.origins.iter().position(|o| *o == s.origin) {
            Some(p) => p,
            None => {
                self.origins.push(s.origin);
                self.origins.len() - 1
            }
        };
        // A record written by more than 65 536 devices is not a case we
        // meet; saturating keeps the encoding valid if it ever happens.
        CellStamp(s.priority, s.hlc, u16::try_from(pos).unwrap_or(u16::MAX))
    }

    fn base_cmp(&self, s: &Stamp) -> Ordering {
        match self.base {
            None => Ordering::Less,
            Some((b, _)) => self.stamp(b).cmp(s),
        }
    }

    /// The record a put makes when nothing older needs merging: the same as
    /// applying the put to an empty record, without copying the fields.
    pub(crate) fn from_put(stamp: &Stamp, fields: Fields) -> Self {
        let cs = CellStamp(stamp.priority, stamp.hlc, 0);
        StoredRecord {
            origins: vec![stamp.origin],
            base: Some((cs, false)),
            fields: fields
                .into_iter()
                .map(|(k, v)| (k, Cell(cs, Some(v))))
                .collect(),
        }
    }

    /// Merges one operation into the record. Returns false when the
    /// operation changed nothing (it was older than what it would replace).
    pub(crate) fn apply(&mut self, stamp: &Stamp, body: &OpBody) -> bool {
        match body {
            OpBody::Put { fields, .. } => self.put(stamp, fields),
            OpBody::Patch { set, unset, .. } => self.patch(stamp, set, unset),
            OpBody::Delete { .. } => self.reset(stamp, true),
            OpBody::Rejected { .. } => false,
        }
    }

    fn put(&mut self, stamp: &Stamp, fields: &Fields) -> bool {
        if !self.reset(stamp, false) {
            return false;
        }
        let cs = self.cell_stamp(stamp);
        for (name, value) in fields {
            // A field newer than this put (a later patch) stays.
            let keep_existing = self
                .fields
                .get(name)
                .is_some_and(|c| self.stamp(c.0) > *stamp);
            if !keep_existing {
                self.fields
                    .insert(name.clone(), Cell(cs, Some(value.clone())));
            }
        }
        true
    }

    fn patch(&mut self, stamp: &Stamp, set: &Fields, unset: &[String]) -> bool {
        if self.base_cmp(stamp) != Ordering::Less {
            return false;
        }
        let cs = self.cell_stamp(stamp);
        let mut changed = false;
        let updates = set
            .iter()
            .map(|(k, v)| (k, Some(v)))
            .chain(unset.iter().map(|k| (k, None)));
        for (name, value) in updates {
            let older = self
                .fields
                .get(name)
                .is_none_or(|c| self.stamp(c.0) < *stamp);
            if older {
                self.fields.insert(name.clone(), Cell(cs, value.cloned()));
                changed = true;
            }
        }
        changed
    }

    /// Makes `stamp` the record's base if it is newer than the current one,
    /// dropping every field older than it.
    fn reset(&mut self, stamp: &Stamp, deleted: bool) -> bool {
        if self.base_cmp(stamp) != Ordering::Less {
            return false;
        }
        let cs = self.cell_stamp(stamp);
        self.base = Some((cs, deleted));
        let origins = &self.origins;
        self.fields.retain(|_, c| {
            let s = Stamp {
                priority: c.0.0,
                hlc: c.0.1,
                origin: origins[usize::from(c.0.2)],
            };
            s > *stamp
        });
        true
    }

    /// Merges another replica's state of the same record into this one.
    /// The merge is a join: commutative, associative and idempotent, and
    /// merging two states gives the state of applying both their writes.
    /// Returns whether anything changed.
    pub(crate) fn merge(&mut self, other: &StoredRecord) -> bool {
        self.merge_with(other, false)
    }

    /// [`StoredRecord::merge`] on a partial replica, for a state cut to
    /// its view: a field the sender left without its value (excluded for
    /// this replica) loses the value here too.
    pub(crate) fn merge_cut(&mut self, other: &StoredRecord) -> bool {
        self.merge_with(other, true)
    }

    fn merge_with(&mut self, other: &StoredRecord, cut: bool) -> bool {
        let mut changed = false;
        if let Some((b, deleted)) = other.base {
            changed |= self.reset(&other.stamp(b), deleted);
        }
        for (name, cell) in &other.fields {
            let stamp = other.stamp(cell.0);
            // Fields older than the latest put or delete are gone; the
            // base put's own fields carry its stamp and stay.
            if self.base_cmp(&stamp) == Ordering::Greater {
                continue;
            }
            // One stamp is one write, so one value: the same stamp with
            // and without a value means a copy was cut to a view. A whole
            // copy fills the value in; on a partial replica, a copy cut to
            // its current view says which values it may hold.
            let newer = self.fields.get(name).is_none_or(|c| {
                let held = self.stamp(c.0);
                held < stamp
                    || (held == stamp
                        && c.1.is_some() != cell.1.is_some()
                        && (cut || cell.1.is_some()))
            });
            if newer {
                let cs = self.cell_stamp(&stamp);
                self.fields.insert(name.clone(), Cell(cs, cell.1.clone()));
                changed = true;
            }
        }
        changed
    }

    /// The highest conflict priority of any write the record holds.
    pub(crate) fn max_priority(&self) -> u8 {
        let base = self.base.map_or(0, |(b, _)| b.0);
        self.fields.values().map(|c| c.0.0).fold(base, u8::max)
    }

    /// For a record that is only a tombstone (deleted, with nothing written
    /// since), the clock reading of the delete: once every replica holds
    /// every write up to it, the tombstone can go.
    ///
    /// A delete made with a conflict priority is never collectable: it must
    /// go on beating later writes of lower priority, which a missing record
    /// would not.
    pub(crate) fn tombstone_clock(&self) -> Option<Hlc> {
        match self.base {
            Some((b, true)) if self.fields.is_empty() && b.0 == 0 => Some(b.1),
            _ => None,
        }
    }

    /// Whether the record exists: its latest put or delete was a put, or
    /// fields were set after its deletion.
    pub(crate) fn is_live(&self) -> bool {
        match self.base {
            Some((_, false)) => true,
            _ => self.fields.values().any(|c| c.1.is_some()),
        }
    }

    /// The value of one field, if the record is live and has it.
    pub(crate) fn field(&self, name: &str) -> Option<&Value> {
        if !self.is_live() {
            return None;
        }
        self.fields.get(name).and_then(|c| c.1.as_ref())
    }

    /// The visible fields.
    #[cfg(test)]
    pub(crate) fn fields(&self) -> Fields {
        self.fields
            .iter()
            .filter_map(|(k, c)| c.1.as_ref().map(|v| (k.clone(), v.clone())))
            .collect()
    }

    /// The visible fields, taking them out of the record.
    pub(crate) fn into_fields(self) -> Fields {
        self.fields
            .into_iter()
            .filter_map(|(k, c)| c.1.map(|v| (k, v)))
            .collect()
    }

    /// The record with the values of `names` taken out, their stamps kept
    /// (as removals), so a merge still lets them win over older values.
    pub(crate) fn without_values(&self, names: &std::collections::BTreeSet<String>) -> Self {
        let mut out = self.clone();
        for (name, cell) in out.fields.iter_mut() {
            if names.contains(name) {
                cell.1 = None;
            }
        }
        out
    }

    /// Whether the record holds a write of `device`'s (in any
    /// incarnation) stamped `from` or later.
    pub(crate) fn written_by_since(&self, device: &DeviceId, from: Hlc) -> bool {
        self.base_stamp()
            .is_some_and(|s| s.origin.same_device(device) && s.hlc >= from)
            || self
                .field_stamps()
                .any(|(_, o, hlc)| o.same_device(device) && hlc >= from)
    }

    /// The device of the latest write that shaped the record.
    pub(crate) fn latest_origin(&self) -> Option<DeviceId> {
        let base = self.base_stamp().map(|s| (s.hlc, s.origin));
        self.field_stamps()
            .map(|(_, o, hlc)| (hlc, o))
            .chain(base)
            .max()
            .map(|(_, o)| o)
    }

    /// Whether the latest put or delete was a put.
    pub(crate) fn base_is_put(&self) -> bool {
        matches!(self.base, Some((_, false)))
    }

    /// The stamp of the latest put or delete.
    pub(crate) fn base_stamp(&self) -> Option<Stamp> {
        self.base.map(|(b, _)| self.stamp(b))
    }

    /// The device and clock reading of the write that set each field
    /// (removed fields included).
    pub(crate) fn field_stamps(&self) -> impl Iterator<Item = (&str, DeviceId, Hlc)> + '_ {
        self.fields
            .iter()
            .map(|(k, c)| (k.as_str(), self.origins[usize::from(c.0.2)], c.0.1))
    }

    /// The clock reading of the latest write that shaped the record.
    pub(crate) fn version(&self) -> Hlc {
        let base = self.base.map(|(b, _)| b.1).unwrap_or_default();
        self.fields.values().map(|c| c.0.1).fold(base, Hlc::max)
    }
}

/// What a read sees of a stored record, taken from its encoded bytes
/// without decoding them: the visible fields, values still encoded, and
/// the version. It equals `is_live`, `version` and `into_fields` of the
/// decoded record (a test checks it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Visible<'a> {
    /// The clock reading of the latest write that shaped the record.
    pub(crate) version: Hlc,
    /// The fields that hold a value, in name order, as one encoded
    /// MessagePack map: borrowed from the stored bytes, or built from a
    /// record stored in the form before.
    pub(crate) fields: std::borrow::Cow<'a, [u8]>,
}

impl Visible<'_> {
    /// Reads an encoded [`StoredRecord`]; `None` when it is not live (a
    /// tombstone).
    pub(crate) fn read(stored: &[u8]) -> Result<Option<Visible<'_>>, CodecError> {
        if stored.first() == Some(&format::MARK) {
            return Visible::read_compact(stored);
        }
        Visible::read_legacy(stored)
    }

    /// Reads a record stored before [`format`]'s form.
    fn read_legacy(stored: &[u8]) -> Result<Option<Visible<'_>>, CodecError> {
        let mut r = Reader::new(stored);
        let mut version = Hlc::default();
        let mut live_base = false;
        let mut fields = Vec::new();
        for _ in 0..r.map_len("a stored record")? {
            match r.str("a stored record's key")? {
                "base" if !r.is_nil() => {
                    if r.array_len("a record's base")? != 2 {
                        return Err(CodecError(
                            "a record's base must be [stamp, deleted]".into(),
                        ));
                    }
                    version = version.max(cell_hlc(&mut r)?);
                    live_base = !r.bool("a record's deleted flag")?;
                }
                "fields" => {
                    let n = r.map_len("a record's fields")?;
                    fields.reserve((n as usize).min(256));
                    for _ in 0..n {
                        let name = r.str("a field name")?;
                        if r.array_len("a field")? != 2 {
                            return Err(CodecError("a field must be [stamp, [value]]".into()));
                        }
                        version = version.max(cell_hlc(&mut r)?);
                        match r.array_len("a field's value")? {
                            0 => {}
                            1 => fields.push((name, r.value()?)),
                            _ => return Err(CodecError("a field holds at most one value".into())),
                        }
                    }
                }
                // The origins table, and a nil base.
                _ => {
                    r.value()?;
                }
            }
        }
        r.end()?;
        if !live_base && fields.is_empty() {
            return Ok(None);
        }
        let mut map = Vec::with_capacity(stored.len());
        blazedb_proto::codec::raw::map_len(&mut map, fields.len() as u32);
        for (name, value) in fields {
            blazedb_proto::codec::raw::str(&mut map, name);
            map.extend_from_slice(value);
        }
        Ok(Some(Visible {
            version,
            fields: map.into(),
        }))
    }
}

/// Reads a [`CellStamp`] and returns its clock reading.
fn cell_hlc(r: &mut Reader<'_>) -> Result<Hlc, CodecError> {
    if r.array_len("a stamp")? != 3 {
        return Err(CodecError(
            "a stamp must be [priority, clock, origin]".into(),
        ));
    }
    r.uint("a stamp's priority")?;
    let hlc = Hlc(r.uint("a stamp's clock")?);
    r.uint("a stamp's origin")?;
    Ok(hlc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blazedb_proto::codec;
    use proptest::prelude::*;

    fn stamp(hlc: u64, dev: u8) -> Stamp {
        Stamp {
            priority: 0,
            hlc: Hlc(hlc),
            origin: DeviceId([dev; 32]),
        }
    }

    fn put(fields: &[(&str, i64)]) -> OpBody {
        OpBody::Put {
            collection: "c".into(),
            id: "r".into(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).into(), Value::Int(*v)))
                .collect(),
        }
    }

    fn patch(set: &[(&str, i64)], unset: &[&str]) -> OpBody {
        OpBody::Patch {
            collection: "c".into(),
            id: "r".into(),
            set: set
                .iter()
                .map(|(k, v)| ((*k).into(), Value::Int(*v)))
                .collect(),
            unset: unset.iter().map(|s| (*s).into()).collect(),
        }
    }

    fn delete() -> OpBody {
        OpBody::Delete {
            collection: "c".into(),
            id: "r".into(),
        }
    }

    #[test]
    fn put_replaces_and_patch_merges() {
        let mut r = StoredRecord::default();
        assert!(r.apply(&stamp(1, 1), &put(&[("a", 1), ("b", 2)])));
        assert!(r.apply(&stamp(2, 1), &patch(&[("b", 3)], &["a"])));
        assert_eq!(r.fields(), Fields::from([("b".into(), Value::Int(3))]));
        assert!(r.apply(&stamp(3, 1), &put(&[("c", 4)])));
        assert_eq!(r.fields(), Fields::from([("c".into(), Value::Int(4))]));
        assert_eq!(r.version(), Hlc(3));
    }

    #[test]
    fn from_put_equals_applying_a_put_to_nothing() {
        let body = put(&[("a", 1), ("b", 2)]);
        let mut applied = StoredRecord::default();
        applied.apply(&stamp(7, 3), &body);
        let OpBody::Put { fields, .. } = body else {
            unreachable!()
        };
        assert_eq!(StoredRecord::from_put(&stamp(7, 3), fields), applied);
    }

    #[test]
    fn null_fields_survive_storage_and_removed_fields_stay_removed() {
        let mut r = StoredRecord::default();
        r.apply(
            &stamp(1, 1),
            &OpBody::Put {
                collection: "c".into(),
                id: "r".into(),
                fields: Fields::from([("n".into(), Value::Null), ("x".into(), Value::Int(1))]),
            },
        );
        r.apply(&stamp(2, 1), &patch(&[], &["x"]));
        let back = StoredRecord::decode(&r.encode()).expect("decode");
        assert_eq!(back, r);
        assert_eq!(back.fields(), Fields::from([("n".into(), Value::Null)]));
    }

    #[test]
    fn delete_wins_over_older_writes_only() {
        let mut r = StoredRecord::default();
        r.apply(&stamp(5, 1), &delete());
        assert!(!r.apply(&stamp(4, 2), &put(&[("a", 1)])));
        assert!(!r.is_live());
        assert!(r.apply(&stamp(6, 2), &put(&[("a", 1)])));
        assert!(r.is_live());
    }

    #[test]
    fn priority_beats_a_later_clock() {
        let mut r = StoredRecord::default();
        let hub = Stamp {
            priority: 1,
            ..stamp(1, 9)
        };
        r.apply(&hub, &put(&[("a", 1)]));
        assert!(!r.apply(&stamp(100, 1), &patch(&[("a", 2)], &[])));
        assert_eq!(r.field("a"), Some(&Value::Int(1)));
    }

    #[test]
    fn equal_clocks_break_ties_by_device() {
        let mut x = StoredRecord::default();
        x.apply(&stamp(1, 1), &patch(&[("a", 1)], &[]));
        x.apply(&stamp(1, 2), &patch(&[("a", 2)], &[]));
        let mut y = StoredRecord::default();
        y.apply(&stamp(1, 2), &patch(&[("a", 2)], &[]));
        y.apply(&stamp(1, 1), &patch(&[("a", 1)], &[]));
        assert_eq!(x.fields(), y.fields());
        assert_eq!(x.field("a"), Some(&Value::Int(2)));
    }

    fn arb_op() -> impl Strategy<Value = (Stamp, OpBody)> {
        let body = prop_oneof![
            proptest::collection::vec(("[abc]", 0i64..5), 0..3).prop_map(|f| {
                let f: Vec<(&str, i64)> = f
                    .iter()
                    .map(|(k, v)| {
                        (
                            match k.as_str() {
                                "a" => "a",
                                "b" => "b",
                                _ => "c",
                            },
                            *v,
                        )
                    })
                    .collect();
                put(&f)
            }),
            (
                proptest::collection::vec(("[abc]", 0i64..5), 0..3),
                proptest::collection::vec("[abc]", 0..2)
            )
                .prop_map(|(s, u)| OpBody::Patch {
                    collection: "c".into(),
                    id: "r".into(),
                    set: s.into_iter().map(|(k, v)| (k, Value::Int(v))).collect(),
                    unset: u,
                }),
            Just(delete()),
        ];
        (0u64..6, 0u8..3, 0u8..2, body).prop_map(|(h, d, p, b)| {
            (
                Stamp {
                    priority: p,
                    hlc: Hlc(h),
                    origin: DeviceId([d; 32]),
                },
                b,
            )
        })
    }

    fn visible(r: &StoredRecord) -> (bool, Fields) {
        (
            r.is_live(),
            if r.is_live() {
                r.fields()
            } else {
                Fields::new()
            },
        )
    }

    /// The record with every stamp spelled out, so that states built in
    /// different orders (and so with different origin tables) compare.
    type Canonical = (
        Option<(Stamp, bool)>,
        BTreeMap<String, (Stamp, Option<Value>)>,
    );

    fn canonical(r: &StoredRecord) -> Canonical {
        (
            r.base.map(|(b, d)| (r.stamp(b), d)),
            r.fields
                .iter()
                .map(|(k, c)| (k.clone(), (r.stamp(c.0), c.1.clone())))
                .collect(),
        )
    }

    fn unique(ops: Vec<(Stamp, OpBody)>) -> Vec<(Stamp, OpBody)> {
        let mut seen = std::collections::HashSet::new();
        ops.into_iter().filter(|(s, _)| seen.insert(*s)).collect()
    }

    fn applied(ops: &[(Stamp, OpBody)]) -> StoredRecord {
        let mut r = StoredRecord::default();
        for (s, b) in ops {
            r.apply(s, b);
        }
        r
    }

    fn merged(a: &StoredRecord, b: &StoredRecord) -> StoredRecord {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    #[test]
    fn tombstones_are_recognised() {
        let mut r = StoredRecord::default();
        r.apply(&stamp(1, 1), &put(&[("a", 1)]));
        assert_eq!(r.tombstone_clock(), None);
        r.apply(&stamp(2, 1), &delete());
        assert_eq!(r.tombstone_clock(), Some(Hlc(2)));
        r.apply(&stamp(3, 1), &patch(&[("a", 2)], &[]));
        assert_eq!(r.tombstone_clock(), None);
        let mut hub = StoredRecord::default();
        let high = Stamp {
            priority: 1,
            ..stamp(4, 2)
        };
        hub.apply(&high, &delete());
        assert_eq!(hub.tombstone_clock(), None);
    }

    proptest! {
        /// Merging two replicas' states gives the state of applying all
        /// their writes on one replica.
        #[test]
        fn merging_states_equals_applying_all_writes(
            ops in proptest::collection::vec(arb_op(), 0..10),
            split in proptest::collection::vec(0u8..3, 10),
        ) {
            let ops = unique(ops);
            // Each op goes to replica a, b or both.
            let a: Vec<_> = ops.iter().zip(&split).filter(|(_, w)| **w != 1).map(|(o, _)| o.clone()).collect();
            let b: Vec<_> = ops.iter().zip(&split).filter(|(_, w)| **w != 0).map(|(o, _)| o.clone()).collect();
            let joined = merged(&applied(&a), &applied(&b));
            prop_assert_eq!(canonical(&joined), canonical(&applied(&ops)));
        }

        /// The merge is commutative, associative and idempotent.
        #[test]
        fn merge_is_a_join(
            x in proptest::collection::vec(arb_op(), 0..5),
            y in proptest::collection::vec(arb_op(), 0..5),
            z in proptest::collection::vec(arb_op(), 0..5),
        ) {
            // Stamps are unique across replicas: one stamp is one write.
            let all = unique(x.iter().chain(&y).chain(&z).cloned().collect());
            let keep = |v: &[(Stamp, OpBody)]| -> Vec<(Stamp, OpBody)> {
                all.iter().filter(|o| v.iter().any(|p| p.0 == o.0 && p.1 == o.1)).cloned().collect()
            };
            let (a, b, c) = (applied(&keep(&x)), applied(&keep(&y)), applied(&keep(&z)));
            prop_assert_eq!(canonical(&merged(&a, &b)), canonical(&merged(&b, &a)));
            prop_assert_eq!(
                canonical(&merged(&merged(&a, &b), &c)),
                canonical(&merged(&a, &merged(&b, &c)))
            );
            prop_assert_eq!(canonical(&merged(&a, &a)), canonical(&a));
            let ab = merged(&a, &b);
            prop_assert_eq!(canonical(&merged(&ab, &b)), canonical(&ab));
        }
    }

    proptest! {
        /// Any order and any duplication of the same operations gives the
        /// same visible record.
        #[test]
        fn merge_is_order_and_duplicate_insensitive(
            ops in proptest::collection::vec(arb_op(), 0..8),
            perm in any::<proptest::sample::Index>(),
            dup in any::<proptest::sample::Index>(),
        ) {
            // Two writes never share a stamp: a stamp is one operation.
            let mut seen = std::collections::HashSet::new();
            let ops: Vec<_> = ops.into_iter().filter(|(s, _)| seen.insert(*s)).collect();
            let mut a = StoredRecord::default();
            for (s, b) in &ops {
                a.apply(s, b);
            }
            let mut shuffled = ops.clone();
            if !shuffled.is_empty() {
                let k = perm.index(shuffled.len());
                shuffled.rotate_left(k);
                shuffled.reverse();
                let d = dup.index(shuffled.len());
                shuffled.push(shuffled[d].clone());
            }
            let mut b = StoredRecord::default();
            for (s, body) in &shuffled {
                b.apply(s, body);
            }
            prop_assert_eq!(visible(&a), visible(&b));
        }
    }

    proptest! {
        /// The change a merged record is logged as, built from its stored
        /// bytes, is the one built from the decoded record.
        #[test]
        fn a_change_from_the_stored_bytes_is_the_decoded_records(
            ops in proptest::collection::vec(arb_op(), 0..8),
        ) {
            use crate::store::replicate::{record_change, stored_change};
            let rec = applied(&unique(ops));
            let me = DeviceId([9; 32]);
            let key = crate::store::keys::record_key("c", "r");
            let from_bytes = stored_change(me, &key, &rec, &rec.encode()).expect("from bytes");
            let decoded = record_change(me, &key, &rec, rec.is_live()).expect("decoded");
            prop_assert_eq!(
                OpBody::decode(&from_bytes.body).expect("decode"),
                OpBody::decode(&decoded.body).expect("decode")
            );
            prop_assert_eq!(
                (from_bytes.origin, from_bytes.hlc, from_bytes.seq),
                (decoded.origin, decoded.hlc, decoded.seq)
            );
        }
    }

    proptest! {
        /// A record's flags never rule out a tombstone that decoding finds.
        #[test]
        fn a_tombstone_is_never_passed_over_by_its_flags(
            ops in proptest::collection::vec(arb_op(), 0..8),
        ) {
            let rec = applied(&unique(ops));
            for bytes in [rec.encode(), codec::to_vec(&rec).expect("encode")] {
                let decoded = StoredRecord::decode(&bytes).expect("decode");
                if decoded.tombstone_clock().is_some() {
                    prop_assert!(format::may_be_tombstone(&bytes));
                }
            }
            if rec.is_live() && rec.base.is_none_or(|(_, deleted)| !deleted) {
                prop_assert!(!format::may_be_tombstone(&rec.encode()));
            }
        }
    }

    proptest! {
        /// Reading a stored record's bytes without decoding them sees what
        /// the decoded record shows.
        #[test]
        fn reading_the_encoded_record_sees_the_decoded_one(
            ops in proptest::collection::vec(arb_op(), 0..8),
        ) {
            let rec = applied(&unique(ops));
            // Both forms: records written before the compact one are read
            // as they are.
            let legacy = codec::to_vec(&rec).expect("encode");
            let compact = rec.encode();
            let seen = Visible::read(&compact).expect("read");
            prop_assert_eq!(&Visible::read(&legacy).expect("read legacy"), &seen);
            let expected = rec.is_live().then(|| {
                let fields: Vec<(String, Vec<u8>)> = rec
                    .clone()
                    .into_fields()
                    .iter()
                    .map(|(k, v)| (k.clone(), codec::to_vec(v).expect("encode")))
                    .collect();
                (rec.version(), fields)
            });
            let seen = seen.map(|v| {
                let mut r = Reader::new(&v.fields);
                let fields: Vec<(String, Vec<u8>)> = (0..r.map_len("fields").expect("a map"))
                    .map(|_| {
                        let name = r.str("name").expect("a name").to_owned();
                        (name, r.value().expect("a value").to_vec())
                    })
                    .collect();
                r.end().expect("the map is all");
                (v.version, fields)
            });
            prop_assert_eq!(seen, expected);
        }
    }

    proptest! {
        /// A record reads back as it was written, in the compact form and
        /// from the MessagePack form records were written in before it.
        #[test]
        fn stored_records_read_back_in_either_form(
            ops in proptest::collection::vec(arb_op(), 0..10),
        ) {
            let rec = applied(&unique(ops));
            prop_assert_eq!(&StoredRecord::decode(&rec.encode()).expect("decode"), &rec);
            let legacy = codec::to_vec(&rec).expect("encode");
            prop_assert_eq!(&StoredRecord::decode(&legacy).expect("decode legacy"), &rec);
        }

        /// A snapshot state taken as it came is, to anything that reads
        /// it, the record merging it into nothing makes; a record this
        /// store wrote is always taken so, damaged ones only when they
        /// still decode.
        #[test]
        fn a_state_taken_as_it_came_is_what_merging_it_into_nothing_makes(
            ops in proptest::collection::vec(arb_op(), 0..8),
            other in proptest::collection::vec(arb_op(), 0..5),
            how in 0u8..3,
            damage in any::<bool>(),
            flip in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
        ) {
            // A record as one replica's writes left it, or merged with
            // another replica's state, whole or cut to a view.
            let mut rec = applied(&unique(ops));
            let other = applied(&unique(other));
            match how {
                1 => { rec.merge(&other); }
                2 => { rec.merge_cut(&other.without_values(&["a".to_owned()].into())); }
                _ => {}
            }
            let mut bytes = rec.encode();
            if damage {
                let at = flip.index(bytes.len());
                bytes[at] = byte;
            }
            let taken = format::fresh_state(&bytes);
            if !damage {
                prop_assert!(taken.is_some(), "a record this store wrote is taken as it came");
            }
            let Some(f) = taken else { return Ok(()) };
            let state = StoredRecord::decode(&bytes).expect("a state taken as it came decodes");
            let mut merged = StoredRecord::default();
            prop_assert_eq!(f.holds, merged.merge(&state));
            let seen = |r: &StoredRecord| {
                let base = r.base.map(|(b, deleted)| (r.stamp(b), deleted));
                let fields: Vec<_> = r
                    .fields
                    .iter()
                    .map(|(name, c)| (name.clone(), r.stamp(c.0), c.1.clone()))
                    .collect();
                (base, fields)
            };
            prop_assert_eq!(seen(&state), seen(&merged));
            prop_assert_eq!(f.version, merged.version());
            prop_assert_eq!(f.max_priority, merged.max_priority());
            prop_assert_eq!(f.latest_origin, merged.latest_origin());
            prop_assert_eq!(f.live, merged.is_live());
            for name in ["a", "b", "c", "d"] {
                prop_assert_eq!(f.field(name).expect("a value"), merged.field(name).cloned());
            }
            let visible = Visible::read(&bytes).expect("read");
            let encoded = merged.encode();
            prop_assert_eq!(&visible, &Visible::read(&encoded).expect("read"));
            if let Some(v) = visible {
                prop_assert_eq!(f.visible, &*v.fields);
            }
        }

        /// Damaged bytes give an error, never a panic or a record whose
        /// stamps point nowhere.
        #[test]
        fn damaged_records_are_refused_or_read_whole(
            ops in proptest::collection::vec(arb_op(), 1..6),
            cut in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let bytes = applied(&unique(ops)).encode();
            let short = &bytes[..cut.index(bytes.len())];
            prop_assert!(StoredRecord::decode(short).is_err());
            // A read stops at the visible fields: a cut past them goes
            // unseen there, but never panics.
            let _ = Visible::read(short);
            let mut flipped = bytes.clone();
            flipped[flip.index(bytes.len())] = byte;
            if let Ok(rec) = StoredRecord::decode(&flipped) {
                // What decoded must be whole: it encodes and reads again.
                prop_assert_eq!(StoredRecord::decode(&rec.encode()).expect("decode"), rec);
            }
            let _ = Visible::read(&flipped);
        }
    }
}
