//! The bytes a record is stored (and sent in snapshots) as.
//!
//! ```text
//! 0xC1                  mark: MessagePack never starts with it, so records
//!                       written before this form (a MessagePack map) are
//!                       told apart and still read
//! version               u64, big-endian: the latest clock reading of any
//!                       write the record holds, so a read need not look
//!                       at the stamps
//! flags                 bit 0: there is a base; bit 1: the base is a delete
//! origins               MessagePack uint n, then n device ids of 32 bytes
//! base stamp            if there is a base: a stamp (below)
//! visible               u32 n, big-endian, then n bytes: a MessagePack map
//!                       of the fields that hold a value, in name order,
//!                       as a get answers with them (copied, not walked)
//! their stamps          one stamp ref per field of that map, in its order
//! removed               MessagePack uint n, then n times, in name order:
//!                       name (MessagePack string) and stamp ref
//! stamp ref             0: the base's stamp; 1: a stamp follows;
//!                       2: the stamp of the field before (visible fields
//!                       first, then removed ones)
//! stamp                 priority (one byte), clock (u64, big-endian),
//!                       origin (MessagePack uint, a position in origins)
//! ```
//!
//! A put's fields carry its own stamp, so a record most puts leave costs
//! one byte per field beside its name and value, where a stamp in full
//! costs eleven or more; and a put's fields map is stored as it came.

use std::collections::BTreeMap;

use blazedb_proto::codec::raw::{self, Reader};
use blazedb_proto::codec::{self, CodecError};
use blazedb_proto::{DeviceId, Hlc};
use serde::Deserialize;

use super::{Cell, CellStamp, Stamp, StoredRecord, Visible};

/// A record as it was stored before this form: a MessagePack map.
#[derive(Deserialize)]
struct Legacy {
    origins: Vec<DeviceId>,
    base: Option<(CellStamp, bool)>,
    fields: BTreeMap<String, Cell>,
}

/// The first byte of a record in this form.
pub(crate) const MARK: u8 = 0xC1;
const HAS_BASE: u8 = 1;
const DELETED: u8 = 2;
const BASE_STAMP: u8 = 0;
const OWN_STAMP: u8 = 1;
const PREVIOUS_STAMP: u8 = 2;

impl StoredRecord {
    /// The record's stored bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 32 * self.origins.len() + 48 * self.fields.len());
        out.push(MARK);
        out.extend_from_slice(&self.version().0.to_be_bytes());
        out.push(match self.base {
            None => 0,
            Some((_, false)) => HAS_BASE,
            Some((_, true)) => HAS_BASE | DELETED,
        });
        raw::uint(&mut out, self.origins.len() as u64);
        for o in &self.origins {
            out.extend_from_slice(&o.0);
        }
        if let Some((b, _)) = self.base {
            stamp(&mut out, b);
        }
        let visible: Vec<_> = self
            .fields
            .iter()
            .filter_map(|(name, c)| c.1.as_ref().map(|v| (name, c.0, v)))
            .collect();
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        raw::map_len(&mut out, visible.len() as u32);
        for (name, _, value) in &visible {
            raw::str(&mut out, name);
            // A value that will not encode (a map of more than u32::MAX
            // entries) cannot have come through the frame limits.
            if raw::value(&mut out, value).is_err() {
                out.push(0xc0);
            }
        }
        let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        let mut refs = StampRefs {
            base: self.base.map(|(b, _)| b),
            previous: None,
        };
        for (_, s, _) in &visible {
            refs.put(&mut out, *s);
        }
        let removed = self.fields.iter().filter(|(_, c)| c.1.is_none());
        raw::uint(&mut out, removed.clone().count() as u64);
        for (name, cell) in removed {
            raw::str(&mut out, name);
            refs.put(&mut out, cell.0);
        }
        out
    }

    /// Reads a record's stored bytes, in this form or the one before it.
    pub(crate) fn decode(bytes: &[u8]) -> Result<StoredRecord, CodecError> {
        if bytes.first() != Some(&MARK) {
            let Legacy {
                origins,
                base,
                fields,
            } = codec::from_slice(bytes)?;
            let legacy = StoredRecord {
                origins,
                base,
                fields,
            };
            legacy.check()?;
            return Ok(legacy);
        }
        let mut r = Reader::new(&bytes[1..]);
        let version = r.u64_be("a record's version")?;
        let flags = r.byte("a record's flags")?;
        if flags & !(HAS_BASE | DELETED) != 0 {
            return Err(CodecError(format!("unknown record flags {flags:#x}")));
        }
        let origins = (0..r.uint("a record's origin count")?)
            .map(|_| {
                let id = r.bytes(32, "a record's origin")?;
                Ok(DeviceId(id.try_into().unwrap_or([0; 32])))
            })
            .collect::<Result<Vec<_>, CodecError>>()?;
        let base = if flags & HAS_BASE != 0 {
            Some((read_stamp(&mut r)?, flags & DELETED != 0))
        } else {
            None
        };
        let len = r.bytes(4, "a record's visible length")?;
        let len = u32::from_be_bytes(len.try_into().unwrap_or_default()) as usize;
        let mut map = Reader::new(r.bytes(len, "a record's visible fields")?);
        let mut visible = Vec::new();
        for _ in 0..map.map_len("a record's visible fields")? {
            let name = map.str("a field name")?;
            visible.push((name, map.value()?));
        }
        map.end()?;
        let mut refs = StampRefs {
            base: base.map(|(b, _)| b),
            previous: None,
        };
        let mut fields = BTreeMap::new();
        for (name, value) in visible {
            let stamp = refs.read(&mut r, name)?;
            fields.insert(name.to_owned(), Cell(stamp, Some(read_value(value)?)));
        }
        for _ in 0..r.uint("a record's removed count")? {
            let name = r.str("a field name")?;
            let stamp = refs.read(&mut r, name)?;
            fields.insert(name.to_owned(), Cell(stamp, None));
        }
        r.end()?;
        let rec = StoredRecord {
            origins,
            base,
            fields,
        };
        rec.check()?;
        if rec.version().0 != version {
            return Err(CodecError(format!(
                "a record's version {version} is not its latest write's {}",
                rec.version().0
            )));
        }
        Ok(rec)
    }

    /// Fails when a stamp names an origin the record does not list, which
    /// only corrupt bytes do.
    fn check(&self) -> Result<(), CodecError> {
        let stamps = self
            .base
            .iter()
            .map(|(b, _)| b)
            .chain(self.fields.values().map(|c| &c.0));
        for s in stamps {
            if usize::from(s.2) >= self.origins.len() {
                return Err(CodecError(format!(
                    "a stamp names origin {} of {}",
                    s.2,
                    self.origins.len()
                )));
            }
        }
        Ok(())
    }
}

/// What a snapshot's record state tells the receiver when it can be
/// stored as it came: it is in this form, well formed, and merging it into
/// no record would give the same record (see [`fresh_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FreshState<'a> {
    /// [`StoredRecord::version`].
    pub(crate) version: Hlc,
    /// [`StoredRecord::max_priority`].
    pub(crate) max_priority: u8,
    /// [`StoredRecord::latest_origin`].
    pub(crate) latest_origin: Option<DeviceId>,
    /// [`StoredRecord::is_live`].
    pub(crate) live: bool,
    /// Whether the state holds anything: a base or a field.
    pub(crate) holds: bool,
    /// The visible fields, one encoded MessagePack map.
    pub(crate) visible: &'a [u8],
    /// The same fields, each name with its encoded value, in name order.
    pub(crate) fields: blazedb_proto::RawFields<'a>,
}

impl FreshState<'_> {
    /// [`StoredRecord::field`]: the value of field `name`, if it has one.
    pub(crate) fn field(&self, name: &str) -> Result<Option<blazedb_proto::Value>, CodecError> {
        match self.fields.binary_search_by(|(n, _)| (*n).cmp(name)) {
            Ok(at) => read_value(self.fields[at].1).map(Some),
            Err(_) => Ok(None),
        }
    }
}

/// Whether the stored record `bytes` may be a tombstone, seen from its
/// flags alone: `false` only for a record in this form whose base is not
/// a delete, which no tombstone is. Compaction looks for tombstones
/// among every record of a database, and most are live.
pub(crate) fn may_be_tombstone(bytes: &[u8]) -> bool {
    // The mark, the version (8 bytes), then the flags.
    match (bytes.first(), bytes.get(9)) {
        (Some(&MARK), Some(flags)) => flags & DELETED != 0,
        _ => true,
    }
}

/// Reads `bytes` as a record state that a record not held here can take
/// as it is, without decoding it: `None` unless they are in this form,
/// decode, name their fields in strictly increasing order (visible ones,
/// then removed ones, no name in both), hold values the decoder reads,
/// and hold no field older than their base (which a merge would drop).
/// Anything else goes the slow way, through decoding and merging.
pub(crate) fn fresh_state(bytes: &[u8]) -> Option<FreshState<'_>> {
    let mut r = Reader::new(bytes.strip_prefix(&[MARK])?);
    let version = r.u64_be("").ok()?;
    let flags = r.byte("").ok()?;
    if flags & !(HAS_BASE | DELETED) != 0 || flags == DELETED {
        return None;
    }
    let n = usize::try_from(r.uint("").ok()?).ok()?;
    let origins = r.bytes(n.checked_mul(32)?, "").ok()?;
    let origin = |i: u16| -> Option<DeviceId> {
        let at = usize::from(i) * 32;
        Some(DeviceId(origins.get(at..at + 32)?.try_into().ok()?))
    };
    let base = if flags & HAS_BASE != 0 {
        Some(read_stamp(&mut r).ok()?)
    } else {
        None
    };
    let base_stamp = match base {
        Some(b) => Some(Stamp {
            priority: b.0,
            hlc: b.1,
            origin: origin(b.2)?,
        }),
        None => None,
    };
    let len = r.bytes(4, "").ok()?;
    let visible = r
        .bytes(u32::from_be_bytes(len.try_into().ok()?) as usize, "")
        .ok()?;
    let names = blazedb_proto::RawFields::parse_map(visible)?;
    let live_fields = !names.is_empty();
    let mut refs = StampRefs {
        base,
        previous: None,
    };
    let mut latest = base_stamp.map(|s| (s.hlc, s.origin));
    let mut max_priority = base.map_or(0, |b| b.0);
    let mut newest = base.map_or(Hlc::default(), |b| b.1);
    let mut field = |r: &mut Reader<'_>, refs: &mut StampRefs| -> Option<()> {
        let s = refs.read(r, "").ok()?;
        let stamp = Stamp {
            priority: s.0,
            hlc: s.1,
            origin: origin(s.2)?,
        };
        if base_stamp.is_some_and(|b| b > stamp) {
            return None;
        }
        latest = latest.max(Some((stamp.hlc, stamp.origin)));
        max_priority = max_priority.max(stamp.priority);
        newest = newest.max(stamp.hlc);
        Some(())
    };
    for _ in &names {
        field(&mut r, &mut refs)?;
    }
    let mut last_removed: Option<&str> = None;
    let removed = r.uint("").ok()?;
    for _ in 0..removed {
        let name = r.str("").ok()?;
        if last_removed.is_some_and(|l| l >= name)
            || names.binary_search_by(|(n, _)| (*n).cmp(name)).is_ok()
        {
            return None;
        }
        last_removed = Some(name);
        field(&mut r, &mut refs)?;
    }
    r.end().ok()?;
    if newest.0 != version {
        return None;
    }
    Some(FreshState {
        version: newest,
        max_priority,
        latest_origin: latest.map(|(_, o)| o),
        live: matches!(flags, HAS_BASE) || live_fields,
        holds: base.is_some() || live_fields || removed > 0,
        visible,
        fields: names,
    })
}

/// Reads one stored field value: by hand where it can (serde's generic
/// decoder costs several times more), else by serde, which gives the
/// value or the error. `value` is one whole value, as the map's reader
/// cut it, so the hand reader stops at its end.
fn read_value(value: &[u8]) -> Result<blazedb_proto::Value, CodecError> {
    let mut r = Reader::new(value);
    match r.value_tree() {
        Some(v) if r.remaining() == 0 => Ok(v),
        _ => codec::from_slice(value),
    }
}

/// Writes and reads field stamps as refs to the base's or the field
/// before's, where they are the same.
struct StampRefs {
    base: Option<CellStamp>,
    previous: Option<CellStamp>,
}

impl StampRefs {
    fn put(&mut self, out: &mut Vec<u8>, s: CellStamp) {
        if Some(s) == self.base {
            out.push(BASE_STAMP);
        } else if Some(s) == self.previous {
            out.push(PREVIOUS_STAMP);
        } else {
            out.push(OWN_STAMP);
            stamp(out, s);
        }
        self.previous = Some(s);
    }

    fn read(&mut self, r: &mut Reader<'_>, name: &str) -> Result<CellStamp, CodecError> {
        let s = match r.byte("a field's stamp")? {
            BASE_STAMP => self.base,
            OWN_STAMP => Some(read_stamp(r)?),
            PREVIOUS_STAMP => self.previous,
            other => return Err(CodecError(format!("unknown field stamp kind {other}"))),
        }
        .ok_or_else(|| CodecError(format!("field {name:?} refers to a stamp it lacks")))?;
        self.previous = Some(s);
        Ok(s)
    }
}

fn stamp(out: &mut Vec<u8>, s: CellStamp) {
    out.push(s.0);
    out.extend_from_slice(&s.1.0.to_be_bytes());
    raw::uint(out, u64::from(s.2));
}

fn read_stamp(r: &mut Reader<'_>) -> Result<CellStamp, CodecError> {
    let priority = r.byte("a stamp's priority")?;
    let hlc = Hlc(r.u64_be("a stamp's clock")?);
    let origin = u16::try_from(r.uint("a stamp's origin")?)
        .map_err(|_| CodecError("a stamp's origin is out of range".into()))?;
    Ok(CellStamp(priority, hlc, origin))
}

/// Skips a stamp.
fn skip_stamp(r: &mut Reader<'_>) -> Result<(), CodecError> {
    r.bytes(9, "a stamp")?;
    r.uint("a stamp's origin")?;
    Ok(())
}

impl<'a> Visible<'a> {
    /// [`Visible::read`] of a record in this form: the version is read, not
    /// worked out, and the fields are one slice; the stamps after them are
    /// not looked at.
    pub(super) fn read_compact(stored: &'a [u8]) -> Result<Option<Visible<'a>>, CodecError> {
        let mut r = Reader::new(stored.get(1..).unwrap_or_default());
        let version = Hlc(r.u64_be("a record's version")?);
        let flags = r.byte("a record's flags")?;
        let origins = r.uint("a record's origin count")?;
        let len = usize::try_from(origins.saturating_mul(32)).unwrap_or(usize::MAX);
        r.bytes(len, "a record's origins")?;
        if flags & HAS_BASE != 0 {
            skip_stamp(&mut r)?;
        }
        let len = r.bytes(4, "a record's visible length")?;
        let len = u32::from_be_bytes(len.try_into().unwrap_or_default()) as usize;
        let fields = r.bytes(len, "a record's visible fields")?;
        let any = Reader::new(fields).map_len("a record's visible fields")? > 0;
        let live_base = flags & (HAS_BASE | DELETED) == HAS_BASE;
        Ok((live_base || any).then_some(Visible {
            version,
            fields: fields.into(),
        }))
    }
}

/// The record a put makes on nothing (`StoredRecord::from_put`), with
/// holes for its version and its base's clock, both the put's clock.
/// `fields` appends the put's `n` fields, names and values, as a map's
/// entries in name order.
pub(crate) fn fresh_record(
    h: &mut crate::store::stamped::Holes,
    origin: &DeviceId,
    priority: u8,
    n: usize,
    fields: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    h.bytes().push(MARK);
    h.bare_hole();
    let out = h.bytes();
    out.push(HAS_BASE);
    raw::uint(out, 1);
    out.extend_from_slice(&origin.0);
    out.push(priority);
    h.bare_hole();
    let out = h.bytes();
    out.push(0);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    raw::map_len(out, u32::try_from(n).unwrap_or(u32::MAX));
    fields(out)?;
    let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    out.resize(out.len() + n, BASE_STAMP);
    raw::uint(out, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use blazedb_proto::api::Write;
    use blazedb_proto::{DeviceId, Fields, Value, codec};

    use crate::store::record::StoredRecord;
    use crate::store::{Store, keys};

    /// A store that holds a record in the form written before this one
    /// (as a store from an earlier version does) reads it, merges a patch
    /// into it, and writes the result in this form.
    #[test]
    fn a_record_stored_in_the_earlier_form_reads_and_is_rewritten() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store =
            Store::open(dir.path(), DeviceId([4; 32]), Default::default()).expect("open the store");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        rt.block_on(store.create_db("d", Default::default(), false))
            .expect("create the database");
        let put = Write::Put {
            collection: "c".into(),
            id: Some("r".into()),
            fields: Fields::from([
                ("a".to_owned(), Value::Int(1)),
                ("b".to_owned(), Value::from("two")),
            ]),
        };
        rt.block_on(store.write("d", vec![put])).expect("put");
        let db = store.db("d").expect("the database");
        let key = keys::record_key("c", "r");
        let stored = db.records.get(&key).expect("read").expect("stored");
        assert_eq!(stored.first(), Some(&super::MARK));
        let record = StoredRecord::decode(&stored).expect("decode");
        let legacy = codec::to_vec(&record).expect("encode the earlier form");
        db.records
            .insert(&key, legacy)
            .expect("write the earlier form");

        let got = store.get("d", "c", "r").expect("get").expect("a record");
        assert_eq!(got.fields.get("b"), Some(&Value::from("two")));
        let patch = Write::Patch {
            collection: "c".into(),
            id: "r".into(),
            set: Fields::from([("a".to_owned(), Value::Int(3))]),
            unset: vec!["b".into()],
        };
        rt.block_on(store.write("d", vec![patch])).expect("patch");
        let got = store.get("d", "c", "r").expect("get").expect("a record");
        assert_eq!(got.fields, Fields::from([("a".to_owned(), Value::Int(3))]));
        let rewritten = db.records.get(&key).expect("read").expect("stored");
        assert_eq!(rewritten.first(), Some(&super::MARK));
        rt.block_on(store.shutdown()).expect("shut down");
    }
}
