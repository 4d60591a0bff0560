//! Hand-written decoders for the shapes on the hot paths: `put`, `batch`,
//! `get`, `get_many` and `delete` params and op bodies, in the canonical
//! form `codec` encodes (structs as maps, enums as `{"variant": fields}`).
//!
//! Decoding through serde costs most of a write's CPU (every value goes
//! through the generic `deserialize_any` machinery). These decoders take
//! the common case only and give up (`None`) on anything else: another
//! form serde also accepts (structs as arrays, extension values, 32-bit
//! floats, bytes where a string is expected), deep nesting, or input
//! serde refuses. The caller then decodes with serde, so what is accepted
//! and how it is refused are serde's, and a proptest checks that whenever
//! these decoders answer, serde answers the same.

use std::collections::BTreeMap;

use crate::api::{BatchParams, GetManyParams, PutParams, RecordRef, Write};
use crate::codec;
use crate::op::OpBody;
use crate::value::{Fields, Value};

/// Nesting beyond this is left to serde (which enforces the real limit).
const MAX_NEST: usize = 32;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn str_len(&mut self, marker: u8) -> Option<usize> {
        Some(match marker {
            0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return None,
        })
    }

    fn str(&mut self) -> Option<&'a str> {
        let marker = self.byte()?;
        let len = self.str_len(marker)?;
        codec::utf8(self.take(len)?)
    }

    fn map_len(&mut self) -> Option<usize> {
        Some(match self.byte()? {
            m @ 0x80..=0x8f => usize::from(m & 0x0f),
            0xde => self.be(2)? as usize,
            0xdf => self.be(4)? as usize,
            _ => return None,
        })
    }

    fn array_len(&mut self) -> Option<usize> {
        Some(match self.byte()? {
            m @ 0x90..=0x9f => usize::from(m & 0x0f),
            0xdc => self.be(2)? as usize,
            0xdd => self.be(4)? as usize,
            _ => return None,
        })
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        let marker = self.byte()?;
        Some(match marker {
            0x00..=0x7f => Value::Int(i64::from(marker)),
            0xe0..=0xff => Value::Int(i64::from(marker as i8)),
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xcc => Value::Int(self.be(1)? as i64),
            0xcd => Value::Int(self.be(2)? as i64),
            0xce => Value::Int(self.be(4)? as i64),
            0xcf => Value::Int(i64::try_from(self.be(8)?).ok()?),
            0xd0 => Value::Int(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Value::Int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Value::Int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Value::Int(self.be(8)? as i64),
            0xcb => Value::Float(f64::from_bits(self.be(8)?)),
            0xa0..=0xbf | 0xd9 | 0xda | 0xdb => {
                let len = self.str_len(marker)?;
                Value::String(codec::utf8(self.take(len)?)?.to_owned())
            }
            0xc4..=0xc6 => {
                let len = self.be(1 << (marker - 0xc4))? as usize;
                Value::Bytes(self.take(len)?.to_vec())
            }
            0x90..=0x9f | 0xdc | 0xdd => {
                if depth >= MAX_NEST {
                    return None;
                }
                self.pos -= 1;
                let len = self.array_len()?;
                // The length is the sender's: grow as items arrive.
                let mut items = Vec::with_capacity(len.min(64));
                for _ in 0..len {
                    items.push(self.value(depth + 1)?);
                }
                Value::List(items)
            }
            0x80..=0x8f | 0xde | 0xdf => {
                if depth >= MAX_NEST {
                    return None;
                }
                self.pos -= 1;
                Value::Map(self.fields(depth + 1)?)
            }
            // Extensions (uuid, timestamp) and 32-bit floats: serde's.
            _ => return None,
        })
    }

    fn fields(&mut self, depth: usize) -> Option<Fields> {
        let len = self.map_len()?;
        let mut out = BTreeMap::new();
        for _ in 0..len {
            let key = self.str()?.to_owned();
            let value = self.value(depth)?;
            // A repeated key: the later one wins, as with serde.
            out.insert(key, value);
        }
        Some(out)
    }

    /// Passes over a value that [`Cursor::value`] would decode, without
    /// building it; returns its bytes.
    fn checked(&mut self, depth: usize) -> Option<&'a [u8]> {
        let start = self.pos;
        let marker = self.byte()?;
        match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => {}
            0xcc..=0xce | 0xd0..=0xd3 | 0xcb => {
                let n = match marker {
                    0xcc | 0xd0 => 1,
                    0xcd | 0xd1 => 2,
                    0xce | 0xd2 => 4,
                    _ => 8,
                };
                self.take(n)?;
            }
            0xcf => {
                i64::try_from(self.be(8)?).ok()?;
            }
            0xa0..=0xbf | 0xd9..=0xdb => {
                let len = self.str_len(marker)?;
                codec::utf8(self.take(len)?)?;
            }
            0xc4..=0xc6 => {
                let len = self.be(1 << (marker - 0xc4))? as usize;
                self.take(len)?;
            }
            0x90..=0x9f | 0xdc | 0xdd if depth < MAX_NEST => {
                self.pos -= 1;
                for _ in 0..self.array_len()? {
                    self.checked(depth + 1)?;
                }
            }
            0x80..=0x8f | 0xde | 0xdf if depth < MAX_NEST => {
                self.pos -= 1;
                for _ in 0..self.map_len()? {
                    self.str()?;
                    self.checked(depth + 1)?;
                }
            }
            _ => return None,
        }
        Some(&self.buf[start..self.pos])
    }

    /// A map key's bytes, to match against the keys a decoder knows: a
    /// key that matches one is UTF-8, and one that matches none is
    /// checked by [`Cursor::unknown`].
    fn key(&mut self) -> Option<&'a [u8]> {
        let marker = self.byte()?;
        let len = self.str_len(marker)?;
        self.take(len)
    }

    /// Passes over the value of a key no field has, as serde does; a key
    /// that is not UTF-8 is refused, as serde refuses it.
    fn unknown(&mut self, key: &[u8]) -> Option<()> {
        codec::utf8(key)?;
        self.ignored()
    }

    /// Skips a field serde would ignore: only simple values, so that
    /// nothing serde refuses is passed over.
    fn ignored(&mut self) -> Option<()> {
        self.value(MAX_NEST - 1).map(drop)
    }

    fn end(&self) -> Option<()> {
        (self.pos == self.buf.len()).then_some(())
    }
}

/// Sets `slot` unless it was set: serde refuses a repeated field.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

/// The fields of a write or op body, whichever of them appear.
#[derive(Default)]
struct WriteFields {
    db: Option<String>,
    collection: Option<String>,
    id: Option<Option<String>>,
    fields: Option<Fields>,
}

fn write_fields(c: &mut Cursor<'_>, with_db: bool) -> Option<WriteFields> {
    let mut w = WriteFields::default();
    for _ in 0..c.map_len()? {
        match c.key()? {
            b"db" if with_db => once(&mut w.db, c.str()?.to_owned())?,
            b"collection" => once(&mut w.collection, c.str()?.to_owned())?,
            b"id" => {
                let id = if c.peek()? == 0xc0 {
                    c.byte()?;
                    None
                } else {
                    Some(c.str()?.to_owned())
                };
                once(&mut w.id, id)?;
            }
            b"fields" => once(&mut w.fields, c.fields(1)?)?,
            other => c.unknown(other)?,
        }
    }
    Some(w)
}

/// Decodes `put` params, or `None` to leave them to serde.
pub(crate) fn put_params(bytes: &[u8]) -> Option<PutParams> {
    let mut c = Cursor { buf: bytes, pos: 0 };
    let w = write_fields(&mut c, true)?;
    c.end()?;
    Some(PutParams {
        db: w.db?,
        collection: w.collection?,
        id: w.id.flatten(),
        fields: w.fields?,
    })
}

/// Decodes `batch` params whose writes are all puts, or `None` to leave
/// them to serde.
pub(crate) fn batch_params(bytes: &[u8]) -> Option<BatchParams> {
    let mut c = Cursor { buf: bytes, pos: 0 };
    let (mut db, mut writes) = (None, None);
    for _ in 0..c.map_len()? {
        match c.key()? {
            b"db" => once(&mut db, c.str()?.to_owned())?,
            b"writes" => {
                let out = c.puts(|c| {
                    let w = write_fields(c, false)?;
                    Some(Write::Put {
                        collection: w.collection?,
                        id: w.id.flatten(),
                        fields: w.fields?,
                    })
                })?;
                once(&mut writes, out)?;
            }
            other => c.unknown(other)?,
        }
    }
    c.end()?;
    Some(BatchParams {
        db: db?,
        writes: writes?,
    })
}

/// Decodes params naming one record (`get`, `delete`), or `None` to
/// leave them to serde.
pub(crate) fn record_ref(bytes: &[u8]) -> Option<RecordRef> {
    RawRecordRef::parse(bytes).map(|r| RecordRef {
        db: r.db.to_owned(),
        collection: r.collection.to_owned(),
        id: r.id.to_owned(),
    })
}

impl RecordRef {
    /// The same names, borrowed.
    pub fn borrowed(&self) -> RawRecordRef<'_> {
        RawRecordRef {
            db: &self.db,
            collection: &self.collection,
            id: &self.id,
        }
    }
}

/// The params of a `get` or `delete` read in place: the names it gives,
/// borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecordRef<'a> {
    /// The database.
    pub db: &'a str,
    /// The collection.
    pub collection: &'a str,
    /// The record id.
    pub id: &'a str,
}

impl<'a> RawRecordRef<'a> {
    /// Reads params naming one record. `Some` only where decoding them as
    /// a [`RecordRef`] gives the same names; `None` for anything else,
    /// which is then decoded.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let mut c = Cursor { buf: bytes, pos: 0 };
        let (mut db, mut collection, mut id) = (None, None, None);
        for _ in 0..c.map_len()? {
            match c.key()? {
                b"db" => once(&mut db, c.str()?)?,
                b"collection" => once(&mut collection, c.str()?)?,
                b"id" => once(&mut id, c.str()?)?,
                other => c.unknown(other)?,
            }
        }
        c.end()?;
        Some(RawRecordRef {
            db: db?,
            collection: collection?,
            id: id?,
        })
    }

    /// Appends these params byte for byte as serde encodes the same
    /// [`RecordRef`], without making one.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        use crate::codec::raw;
        raw::map_len(out, 3);
        raw::str(out, "db");
        raw::str(out, self.db);
        raw::str(out, "collection");
        raw::str(out, self.collection);
        raw::str(out, "id");
        raw::str(out, self.id);
    }
}

/// Appends `get_many` params byte for byte as serde encodes the same
/// [`GetManyParams`], without copying the ids into one.
pub fn encode_get_many<I: AsRef<str>>(out: &mut Vec<u8>, db: &str, collection: &str, ids: &[I]) {
    use crate::codec::raw;
    raw::map_len(out, 3);
    raw::str(out, "db");
    raw::str(out, db);
    raw::str(out, "collection");
    raw::str(out, collection);
    raw::str(out, "ids");
    // More ids than u32::MAX cannot come through a frame.
    raw::array_len(out, u32::try_from(ids.len()).unwrap_or(u32::MAX));
    for id in ids {
        raw::str(out, id.as_ref());
    }
}

/// Decodes `get_many` params, or `None` to leave them to serde.
pub(crate) fn get_many_params(bytes: &[u8]) -> Option<GetManyParams> {
    let mut c = Cursor { buf: bytes, pos: 0 };
    let (mut db, mut collection, mut ids) = (None, None, None);
    for _ in 0..c.map_len()? {
        match c.key()? {
            b"db" => once(&mut db, c.str()?.to_owned())?,
            b"collection" => once(&mut collection, c.str()?.to_owned())?,
            b"ids" => {
                let len = c.array_len()?;
                let mut out = Vec::with_capacity(len.min(4096));
                for _ in 0..len {
                    out.push(c.str()?.to_owned());
                }
                once(&mut ids, out)?;
            }
            other => c.unknown(other)?,
        }
    }
    c.end()?;
    Some(GetManyParams {
        db: db?,
        collection: collection?,
        ids: ids?,
    })
}

/// A put's body read in place: its collection, id, and each field's name
/// and encoded value, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPut<'a> {
    /// The collection.
    pub collection: &'a str,
    /// The record id.
    pub id: &'a str,
    /// The fields, names strictly increasing, each value as encoded.
    pub fields: RawFields<'a>,
}

impl<'a> RawPut<'a> {
    /// Reads a put's body without decoding its values. `Some` only when
    /// [`OpBody::decode`] gives a put with these fields (each value's
    /// bytes decoding to its value) and the names come in order, once
    /// each; `None` for anything else, which is then decoded.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let mut c = Cursor { buf: bytes, pos: 0 };
        if c.map_len()? != 1 || c.key()? != b"put" {
            return None;
        }
        let (mut collection, mut id, mut fields) = (None, None, None);
        for _ in 0..c.map_len()? {
            match c.key()? {
                b"collection" => once(&mut collection, c.str()?)?,
                b"id" => once(&mut id, c.str()?)?,
                b"fields" => once(&mut fields, c.raw_fields()?)?,
                other => c.unknown(other)?,
            }
        }
        c.end()?;
        Some(RawPut {
            collection: collection?,
            id: id?,
            fields: fields?,
        })
    }

    /// Reads a put kept as its parts ([`PutParts::stored`]): `Some` exactly
    /// when [`RawPut::parse`] of the body the parts make
    /// ([`PutParts::body`]) gives a put, and then the same one, without
    /// making that body.
    pub fn parse_stored(stored: &'a [u8]) -> Option<Self> {
        let mut c = Cursor {
            buf: stored,
            pos: 0,
        };
        let collection = c.str()?;
        let id = c.str()?;
        let fields = c.raw_fields()?;
        c.end()?;
        Some(RawPut {
            collection,
            id,
            fields,
        })
    }
}

impl<'a> Cursor<'a> {
    /// A batch's `writes`, each read by `put`; `None` unless every one is
    /// a put.
    fn puts<T>(&mut self, mut put: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let len = self.array_len()?;
        // The length is the sender's: grow as writes arrive.
        let mut out = Vec::with_capacity(len.min(4096));
        for _ in 0..len {
            if self.map_len()? != 1 || self.key()? != b"put" {
                return None;
            }
            out.push(put(self)?);
        }
        Some(out)
    }

    /// A map of fields, each value's bytes checked but not decoded; `None`
    /// unless the names come in order, once each.
    fn raw_fields(&mut self) -> Option<RawFields<'a>> {
        let len = self.map_len()?;
        let start = self.pos;
        let mut list: Vec<(&str, &[u8])> = Vec::with_capacity(len.min(256));
        let mut shortest = true;
        for _ in 0..len {
            // Names, and most values, are short strings and small
            // integers: read those here, anything else by the general
            // readers, which accept the same.
            let name = match self.short_str() {
                Some(name) => name,
                None => {
                    let before = self.pos;
                    let name = self.str()?;
                    shortest &= self.pos - before - name.len() == str_head_len(name.len());
                    name
                }
            };
            if list.last().is_some_and(|(last, _)| *last >= name) {
                return None;
            }
            let at = self.pos;
            let value = match self.buf.get(at) {
                Some(0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3) => {
                    self.pos += 1;
                    &self.buf[at..self.pos]
                }
                Some(0xa0..=0xbf) if self.short_str().is_some() => &self.buf[at..self.pos],
                _ => self.checked(1)?,
            };
            list.push((name, value));
        }
        let entries = shortest.then(|| &self.buf[start..self.pos]);
        Some(RawFields { list, entries })
    }

    /// A string in its one-byte-header form (under 32 bytes), or `None`,
    /// the cursor unmoved, for anything else.
    #[inline]
    fn short_str(&mut self) -> Option<&'a str> {
        let marker = *self.buf.get(self.pos)?;
        if !(0xa0..=0xbf).contains(&marker) {
            return None;
        }
        let start = self.pos + 1;
        let s = codec::utf8(self.buf.get(start..start + usize::from(marker & 0x1f))?)?;
        self.pos = start + s.len();
        Some(s)
    }

    /// A put of a `put` or `batch` request: its fields after `db` when
    /// `with_db`.
    fn raw_write(&mut self, with_db: bool) -> Option<(Option<&'a str>, RawWrite<'a>)> {
        let (mut db, mut collection, mut id, mut fields) = (None, None, None, None);
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"db" if with_db => once(&mut db, self.str()?)?,
                b"collection" => once(&mut collection, self.str()?)?,
                b"id" => {
                    let id_ = if self.peek()? == 0xc0 {
                        self.byte()?;
                        None
                    } else {
                        Some(self.str()?)
                    };
                    once(&mut id, id_)?;
                }
                b"fields" => once(&mut fields, self.raw_fields()?)?,
                other => self.unknown(other)?,
            }
        }
        let write = RawWrite {
            collection: collection?,
            id: id.flatten(),
            fields: fields?,
        };
        Some((db, write))
    }
}

/// One put of a `put` or `batch` request, read in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawWrite<'a> {
    /// The collection.
    pub collection: &'a str,
    /// The record id, when the client chose one.
    pub id: Option<&'a str>,
    /// The fields, names strictly increasing, each value as encoded.
    pub fields: RawFields<'a>,
}

/// The puts of a `put` or `batch` request, read in place without decoding
/// their values, so that the agent can store the values as they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPuts<'a> {
    /// The database.
    pub db: &'a str,
    /// The puts, in the request's order.
    pub puts: Vec<RawWrite<'a>>,
}

impl<'a> RawPuts<'a> {
    /// Reads the params of a `put` or `batch` request. `Some` only when
    /// every write is a put whose field names come in order, once each,
    /// and decoding the params gives the same writes (each value's bytes
    /// decoding to its value); `None` for anything else, which is then
    /// decoded.
    pub fn parse(method: &str, params: &'a [u8]) -> Option<Self> {
        let mut c = Cursor {
            buf: params,
            pos: 0,
        };
        let out = match method {
            "put" => {
                let (db, write) = c.raw_write(true)?;
                RawPuts {
                    db: db?,
                    puts: vec![write],
                }
            }
            "batch" => {
                let (mut db, mut writes) = (None, None);
                for _ in 0..c.map_len()? {
                    match c.key()? {
                        b"db" => once(&mut db, c.str()?)?,
                        b"writes" => {
                            let out = c.puts(|c| Some(c.raw_write(false)?.1))?;
                            once(&mut writes, out)?;
                        }
                        other => c.unknown(other)?,
                    }
                }
                RawPuts {
                    db: db?,
                    puts: writes?,
                }
            }
            _ => return None,
        };
        c.end()?;
        Some(out)
    }
}

/// The fields of a put read in place: each name and its value as
/// encoded, names strictly increasing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFields<'a> {
    list: Vec<(&'a str, &'a [u8])>,
    /// The map's entries as they came, when they are what
    /// [`RawFields::write_entries`] writes field by field (every name's
    /// header in its shortest form, as serde writes it): one copy then
    /// does for all.
    entries: Option<&'a [u8]>,
}

impl<'a> RawFields<'a> {
    /// Fields from their names and encoded values, names strictly
    /// increasing.
    pub fn new(list: Vec<(&'a str, &'a [u8])>) -> Self {
        RawFields {
            list,
            entries: None,
        }
    }

    /// Reads `map`, one whole encoded MessagePack map of fields (a put's,
    /// or a stored record's visible ones) in place: `None` unless its
    /// names are strictly increasing and the decoder reads every value.
    pub fn parse_map(map: &'a [u8]) -> Option<Self> {
        let mut c = Cursor { buf: map, pos: 0 };
        let fields = c.raw_fields()?;
        (c.pos == map.len()).then_some(fields)
    }

    /// Appends the entries of the fields' map (not its header): each
    /// name as serde writes a string, then its value's bytes.
    pub fn write_entries(&self, out: &mut Vec<u8>) {
        use crate::codec::raw;
        match self.entries {
            Some(entries) => out.extend_from_slice(entries),
            None => {
                for (name, value) in &self.list {
                    raw::str(out, name);
                    out.extend_from_slice(value);
                }
            }
        }
    }

    /// How many bytes [`RawFields::write_entries`] appends, or a little
    /// more.
    pub fn entries_len(&self) -> usize {
        match self.entries {
            Some(entries) => entries.len(),
            None => self.list.iter().map(|(n, v)| n.len() + v.len() + 5).sum(),
        }
    }
}

impl<'a> std::ops::Deref for RawFields<'a> {
    type Target = [(&'a str, &'a [u8])];

    fn deref(&self) -> &Self::Target {
        &self.list
    }
}

impl<'r, 'a> IntoIterator for &'r RawFields<'a> {
    type Item = &'r (&'a str, &'a [u8]);
    type IntoIter = std::slice::Iter<'r, (&'a str, &'a [u8])>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

/// The length of the header serde writes before a string of `len` bytes.
fn str_head_len(len: usize) -> usize {
    match len {
        0..32 => 1,
        32..256 => 2,
        256..65536 => 3,
        _ => 5,
    }
}

/// The body of a put ([`OpBody::encode`] of `OpBody::Put`) from its
/// fields' encoded values, copied, not decoded.
pub fn put_body(collection: &str, id: &str, fields: &RawFields<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + collection.len() + id.len() + fields.entries_len());
    put_body_head(&mut out, collection, id, fields.len());
    fields.write_entries(&mut out);
    out
}

/// The parts of [`put_body`]'s body ([`PutParts::stored`]), written
/// straight from the put: what the op log keeps of it.
pub fn put_parts(collection: &str, id: &str, fields: &RawFields<'_>) -> Vec<u8> {
    use crate::codec::raw;
    let mut out = Vec::with_capacity(16 + collection.len() + id.len() + fields.entries_len());
    raw::str(&mut out, collection);
    raw::str(&mut out, id);
    // More fields than u32::MAX cannot come through a frame.
    raw::map_len(&mut out, u32::try_from(fields.len()).unwrap_or(u32::MAX));
    fields.write_entries(&mut out);
    out
}

/// The body of a put ([`OpBody::encode`] of `OpBody::Put`) whose fields
/// are `map`, one encoded MessagePack map (a stored record's visible
/// fields, say), copied, not decoded.
pub fn put_body_of_map(collection: &str, id: &str, map: &[u8]) -> Vec<u8> {
    use crate::codec::raw;
    let mut out = Vec::with_capacity(40 + collection.len() + id.len() + map.len());
    out.extend_from_slice(PUT_HEAD);
    raw::str(&mut out, collection);
    out.extend_from_slice(ID_KEY);
    raw::str(&mut out, id);
    out.extend_from_slice(FIELDS_KEY);
    out.extend_from_slice(map);
    out
}

/// A put body up to its fields: what serde writes for `OpBody::Put` before
/// the entries of its map of `fields` fields.
pub(crate) fn put_body_head(out: &mut Vec<u8>, collection: &str, id: &str, fields: usize) {
    use crate::codec::raw;
    out.extend_from_slice(PUT_HEAD);
    raw::str(out, collection);
    out.extend_from_slice(ID_KEY);
    raw::str(out, id);
    out.extend_from_slice(FIELDS_KEY);
    // More fields than u32::MAX cannot come through a frame.
    raw::map_len(out, u32::try_from(fields).unwrap_or(u32::MAX));
}

/// A put body's collection, id and fields as they are encoded: each of
/// collection and id a MessagePack str, header included, and the fields a
/// map. Storage and sealing keep a put's body as these parts back to back
/// ([`PutParts::stored`]), which spares the keys of its maps, and put it
/// back byte for byte ([`PutParts::body`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutParts<'a> {
    /// The collection, as an encoded str.
    pub collection: &'a [u8],
    /// The id, as an encoded str.
    pub id: &'a [u8],
    /// The fields: the rest of the body.
    pub fields: &'a [u8],
}

/// The keys of a put body around its collection, id and fields, as
/// `OpBody::Put` encodes them: `{"put": {"collection": .., "id": ..,
/// "fields": ..}}` (checked against serde by the put body proptests).
const PUT_HEAD: &[u8] = b"\x81\xa3put\x83\xaacollection";
const ID_KEY: &[u8] = b"\xa2id";
const FIELDS_KEY: &[u8] = b"\xa6fields";

impl<'a> PutParts<'a> {
    /// The bytes a put's body holds beyond its parts: the keys of its maps.
    pub const KEYS_LEN: usize = PUT_HEAD.len() + ID_KEY.len() + FIELDS_KEY.len();

    /// The parts of a put body in its usual encoding (its maps' keys in
    /// the order [`put_body`] writes them), or `None` for any other body.
    pub fn of_body(body: &'a [u8]) -> Option<Self> {
        let rest = body.strip_prefix(PUT_HEAD)?;
        let (collection, rest) = rest.split_at(str_item(rest)?);
        let rest = rest.strip_prefix(ID_KEY)?;
        let (id, rest) = rest.split_at(str_item(rest)?);
        Some(PutParts {
            collection,
            id,
            fields: rest.strip_prefix(FIELDS_KEY)?,
        })
    }

    /// The parts of bytes [`PutParts::stored`] wrote, or `None` when they
    /// do not start with two strs. The fields are not checked.
    pub fn of_stored(stored: &'a [u8]) -> Option<Self> {
        let c = str_item(stored)?;
        let id = str_item(&stored[c..])?;
        Some(PutParts {
            collection: &stored[..c],
            id: &stored[c..c + id],
            fields: &stored[c + id..],
        })
    }

    /// How many bytes [`PutParts::stored`] writes.
    pub fn stored_len(&self) -> usize {
        self.collection.len() + self.id.len() + self.fields.len()
    }

    /// Appends the parts back to back: a str first, where a body starts
    /// with a map, so the two are told apart by their first byte.
    pub fn stored(&self, out: &mut Vec<u8>) {
        for part in [self.collection, self.id, self.fields] {
            out.extend_from_slice(part);
        }
    }

    /// The body the parts came from, byte for byte.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.stored_len() + 32);
        for part in [
            PUT_HEAD,
            self.collection,
            ID_KEY,
            self.id,
            FIELDS_KEY,
            self.fields,
        ] {
            out.extend_from_slice(part);
        }
        out
    }
}

/// The length of the MessagePack str at the start of `b`, header
/// included, when it is all there.
fn str_item(b: &[u8]) -> Option<usize> {
    let mut c = Cursor { buf: b, pos: 0 };
    c.key()?;
    Some(c.pos)
}

/// Decodes an op body that is a put, or `None` to leave it to serde.
pub(crate) fn op_body(bytes: &[u8]) -> Option<OpBody> {
    let mut c = Cursor { buf: bytes, pos: 0 };
    if c.map_len()? != 1 || c.key()? != b"put" {
        return None;
    }
    let w = write_fields(&mut c, false)?;
    c.end()?;
    Some(OpBody::Put {
        collection: w.collection?,
        // An op body's id is required: a nil one is serde's to refuse.
        id: w.id??,
        fields: w.fields?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::value::tests::arb_value;
    use proptest::prelude::*;

    fn arb_fields() -> impl Strategy<Value = Fields> {
        proptest::collection::btree_map(".{0,8}", arb_value(), 0..6)
    }

    fn arb_put() -> impl Strategy<Value = PutParams> {
        (
            ".{0,6}",
            ".{0,6}",
            proptest::option::of(".{0,8}"),
            arb_fields(),
        )
            .prop_map(|(db, collection, id, fields)| PutParams {
                db,
                collection,
                id,
                fields,
            })
    }

    /// The writes `raw` stands for, its values decoded.
    fn decoded(raw: &RawPuts<'_>) -> Vec<Write> {
        raw.puts
            .iter()
            .map(|w| Write::Put {
                collection: w.collection.to_owned(),
                id: w.id.map(str::to_owned),
                fields: w
                    .fields
                    .iter()
                    .map(|(n, v)| {
                        (
                            (*n).to_owned(),
                            codec::from_slice(v).expect("a checked value decodes"),
                        )
                    })
                    .collect(),
            })
            .collect()
    }

    /// Bytes near `bytes`: one byte changed, cut short, or one added.
    fn mutated(bytes: Vec<u8>, at: usize, to: u8, how: u8) -> Vec<u8> {
        let mut b = bytes;
        if b.is_empty() {
            return b;
        }
        let at = at % b.len();
        match how % 3 {
            0 => b[at] = to,
            1 => b.truncate(at),
            _ => b.insert(at, to),
        }
        b
    }

    proptest! {
        #[test]
        fn put_params_decode_as_serde_does(p in arb_put(), at in any::<usize>(), to in any::<u8>(), how in any::<u8>()) {
            let bytes = codec::to_vec(&p).expect("encode");
            let serde: PutParams = codec::from_slice(&bytes).expect("decode");
            // Extension values and the like are serde's: when the fast
            // decoder answers, it answers as serde.
            if let Some(fast) = put_params(&bytes) {
                prop_assert_eq!(&fast, &serde);
            }
            let near = mutated(bytes, at, to, how);
            if let Some(fast) = put_params(&near) {
                prop_assert_eq!(Ok(fast), codec::from_slice::<PutParams>(&near));
            }
        }

        #[test]
        fn batch_params_decode_as_serde_does(
            puts in proptest::collection::vec(arb_put(), 0..5),
            delete in any::<bool>(),
            at in any::<usize>(), to in any::<u8>(), how in any::<u8>(),
        ) {
            let mut writes: Vec<Write> = puts
                .into_iter()
                .map(|p| Write::Put { collection: p.collection, id: p.id, fields: p.fields })
                .collect();
            if delete {
                writes.push(Write::Delete { collection: "c".into(), id: "x".into() });
            }
            let p = BatchParams { db: "d".into(), writes };
            let bytes = codec::to_vec(&p).expect("encode");
            match batch_params(&bytes) {
                Some(fast) => prop_assert_eq!(fast, p),
                None => prop_assert!(delete || bytes.iter().any(|b| matches!(b, 0xc7..=0xc9 | 0xd4..=0xd8 | 0xca)),
                    "a batch of plain puts is decoded"),
            }
            let near = mutated(bytes, at, to, how);
            if let Some(fast) = batch_params(&near) {
                prop_assert_eq!(Ok(fast), codec::from_slice::<BatchParams>(&near));
            }
        }

        #[test]
        fn raw_puts_read_as_decoding_does(
            puts in proptest::collection::vec(arb_put(), 1..4),
            delete in any::<bool>(),
            at in any::<usize>(), to in any::<u8>(), how in any::<u8>(),
        ) {
            let single = codec::to_vec(&puts[0]).expect("encode");
            let writes: Vec<Write> = puts
                .into_iter()
                .map(|p| Write::Put { collection: p.collection, id: p.id, fields: p.fields })
                .collect();
            let mut batch = BatchParams { db: "d".into(), writes };
            if delete {
                batch.writes.push(Write::Delete { collection: "c".into(), id: "x".into() });
            }
            let bytes = codec::to_vec(&batch).expect("encode");
            match RawPuts::parse("batch", &bytes) {
                Some(raw) => {
                    prop_assert_eq!(decoded(&raw), batch.writes.clone());
                    // The body made from the encoded values is the put's.
                    for (write, put) in batch.writes.iter().zip(&raw.puts) {
                        let Write::Put { collection, id, fields } = write.clone() else { continue };
                        let id = id.unwrap_or_default();
                        let map = codec::to_vec(&fields).expect("encode");
                        let read = RawFields::parse_map(&map).expect("a map serde wrote reads");
                        prop_assert_eq!(&*read, &*put.fields);
                        let body = OpBody::Put { collection, id: id.clone(), fields };
                        let encoded = body.encode().expect("encode");
                        prop_assert_eq!(put_body(put.collection, &id, &put.fields), encoded.clone());
                        // Its parts, written straight, are the body's.
                        let parts = put_parts(put.collection, &id, &put.fields);
                        let mut stored = Vec::new();
                        PutParts::of_body(&encoded).expect("a put body").stored(&mut stored);
                        prop_assert_eq!(&parts, &stored);
                        prop_assert_eq!(parts.len() + PutParts::KEYS_LEN, encoded.len());
                        prop_assert_eq!(put_body_of_map(put.collection, &id, &map), body.encode().expect("encode"));
                    }
                }
                None => prop_assert!(delete || bytes.iter().any(|b| matches!(b, 0xc7..=0xc9 | 0xd4..=0xd8 | 0xca)),
                    "a batch of plain puts is read"),
            }
            if let Some(raw) = RawPuts::parse("put", &single) {
                let serde: PutParams = codec::from_slice(&single).expect("decode");
                prop_assert_eq!(raw.db, serde.db.as_str());
                prop_assert_eq!(decoded(&raw), vec![Write::from(serde)]);
            }
            let near = mutated(bytes, at, to, how);
            if let Some(raw) = RawPuts::parse("batch", &near) {
                let serde = codec::from_slice::<BatchParams>(&near).expect("serde decodes it too");
                prop_assert_eq!(raw.db, serde.db.as_str());
                prop_assert_eq!(decoded(&raw), serde.writes);
                // Entries copied as they came are the entries written
                // field by field, whatever the damage let through.
                for put in &raw.puts {
                    let one_by_one = RawFields::new(put.fields.to_vec());
                    prop_assert_eq!(put_body("c", "i", &put.fields), put_body("c", "i", &one_by_one));
                }
            }
        }

        #[test]
        fn a_put_body_and_its_parts_convert_byte_for_byte(
            p in arb_put(),
            other in prop_oneof![Just(0u8), 1u8..4],
            at in any::<usize>(), to in any::<u8>(), how in any::<u8>(),
        ) {
            let (collection, id, fields) = (p.collection, p.id.unwrap_or_default(), p.fields);
            let body = match other {
                0 => OpBody::Put { collection, id, fields },
                1 => OpBody::Delete { collection, id },
                _ => OpBody::Patch { collection, id, set: fields, unset: Vec::new() },
            }
            .encode()
            .expect("encode");
            match PutParts::of_body(&body) {
                Some(parts) => {
                    prop_assert_eq!(other, 0);
                    let mut stored = Vec::new();
                    parts.stored(&mut stored);
                    prop_assert_eq!(stored.len(), parts.stored_len());
                    prop_assert!(stored.len() + 20 < body.len());
                    // A body starts with a map, the stored parts with a str.
                    prop_assert!(PutParts::of_stored(&body).is_none());
                    let back = PutParts::of_stored(&stored).expect("the stored parts read");
                    prop_assert_eq!(back, parts);
                    prop_assert_eq!(back.body(), body.clone());
                }
                None => prop_assert_ne!(other, 0, "every put body has parts"),
            }
            // Whatever bytes have parts give them back whole.
            let near = mutated(body, at, to, how);
            if let Some(parts) = PutParts::of_body(&near) {
                prop_assert_eq!(parts.body(), near.clone());
            }
            if let Some(parts) = PutParts::of_stored(&near) {
                let mut stored = Vec::new();
                parts.stored(&mut stored);
                prop_assert_eq!(stored, near);
            }
        }

        #[test]
        fn values_and_put_bodies_encode_by_hand_as_serde_does(v in arb_value(), p in arb_put()) {
            let mut out = Vec::new();
            codec::raw::value(&mut out, &v).expect("encode");
            prop_assert_eq!(out, codec::to_vec(&v).expect("encode"));
            let body = OpBody::Put { collection: p.collection, id: p.id.unwrap_or_default(), fields: p.fields };
            prop_assert_eq!(body.encode().expect("encode"), codec::to_vec(&body).expect("encode"));
        }

        #[test]
        fn read_params_decode_as_serde_does(
            db in ".{0,6}", collection in ".{0,6}", ids in proptest::collection::vec(".{0,6}", 0..5),
            at in any::<usize>(), to in any::<u8>(), how in any::<u8>(),
        ) {
            let one = RecordRef { db: db.clone(), collection: collection.clone(), id: ids.first().cloned().unwrap_or_default() };
            let bytes = codec::to_vec(&one).expect("encode");
            let mut by_hand = Vec::new();
            RawRecordRef { db: &one.db, collection: &one.collection, id: &one.id }.encode_into(&mut by_hand);
            prop_assert_eq!(&by_hand, &bytes);
            prop_assert_eq!(record_ref(&bytes), Some(one));
            let near = mutated(bytes, at, to, how);
            if let Some(fast) = record_ref(&near) {
                prop_assert_eq!(Ok(fast), codec::from_slice::<RecordRef>(&near));
            }
            let many = GetManyParams { db, collection, ids };
            let bytes = codec::to_vec(&many).expect("encode");
            let mut by_hand = Vec::new();
            encode_get_many(&mut by_hand, &many.db, &many.collection, &many.ids);
            prop_assert_eq!(&by_hand, &bytes);
            prop_assert_eq!(get_many_params(&bytes), Some(many));
            let near = mutated(bytes, at, to, how);
            if let Some(fast) = get_many_params(&near) {
                prop_assert_eq!(Ok(fast), codec::from_slice::<GetManyParams>(&near));
            }
        }

        #[test]
        fn a_raw_put_reads_what_decoding_gives(p in arb_put(), at in any::<usize>(), to in any::<u8>(), how in any::<u8>()) {
            let body = OpBody::Put { collection: p.collection, id: p.id.unwrap_or_default(), fields: p.fields };
            let bytes = body.encode().expect("encode");
            let same = |bytes: &[u8]| -> Result<(), TestCaseError> {
                if let Some(raw) = RawPut::parse(bytes) {
                    let Ok(OpBody::Put { collection, id, fields }) = OpBody::decode(bytes) else {
                        return Err(TestCaseError::fail("a raw put that does not decode as a put"));
                    };
                    prop_assert_eq!(raw.collection, collection.as_str());
                    prop_assert_eq!(raw.id, id.as_str());
                    let names: Vec<&str> = raw.fields.iter().map(|(n, _)| *n).collect();
                    prop_assert_eq!(names, fields.keys().map(String::as_str).collect::<Vec<_>>());
                    for (name, value) in &raw.fields {
                        let decoded = codec::from_slice::<Value>(value);
                        prop_assert_eq!(Ok(&fields[*name]), decoded.as_ref());
                    }
                }
                Ok(())
            };
            same(&bytes)?;
            same(&mutated(bytes.clone(), at, to, how))?;
            // Kept as its parts, the put reads the same, damaged or not.
            let mut stored = Vec::new();
            PutParts::of_body(&bytes).expect("parts").stored(&mut stored);
            prop_assert_eq!(RawPut::parse_stored(&stored), RawPut::parse(&bytes));
            let near = mutated(stored, at, to, how);
            let whole = PutParts::of_stored(&near).map(|parts| parts.body());
            prop_assert_eq!(
                RawPut::parse_stored(&near),
                whole.as_deref().and_then(RawPut::parse),
                "stored parts {:x?}", near
            );
        }

        #[test]
        fn op_bodies_decode_as_serde_does(p in arb_put(), at in any::<usize>(), to in any::<u8>(), how in any::<u8>()) {
            let body = OpBody::Put { collection: p.collection, id: p.id.unwrap_or_default(), fields: p.fields };
            let bytes = body.encode().expect("encode");
            if let Some(fast) = op_body(&bytes) {
                prop_assert_eq!(&fast, &body);
            }
            let near = mutated(bytes, at, to, how);
            if let Some(fast) = op_body(&near) {
                prop_assert_eq!(Ok(fast), codec::from_slice::<OpBody>(&near));
            }
        }
    }

    #[test]
    fn plain_puts_take_the_fast_path() {
        let p = PutParams {
            db: "d".into(),
            collection: "c".into(),
            id: Some("r".into()),
            fields: Fields::from([
                ("n".to_owned(), Value::Int(-5)),
                ("big".to_owned(), Value::Int(i64::MAX)),
                ("f".to_owned(), Value::Float(1.5)),
                ("s".to_owned(), Value::from("x".repeat(300).as_str())),
                ("b".to_owned(), Value::Bytes(vec![1; 70_000])),
                (
                    "l".to_owned(),
                    Value::List(vec![Value::Null, Value::Bool(true)]),
                ),
            ]),
        };
        let bytes = codec::to_vec(&p).expect("encode");
        assert_eq!(put_params(&bytes), Some(p.clone()));
        let body = OpBody::Put {
            collection: p.collection,
            id: p.id.unwrap_or_default(),
            fields: p.fields,
        }
        .encode()
        .expect("encode");
        let raw = RawPut::parse(&body).expect("a plain put reads raw");
        assert_eq!(raw.fields.len(), 6);
    }

    #[test]
    fn a_field_name_in_a_longer_header_than_needed_is_stored_as_serde_writes_it() {
        // {"put": {"collection": "c", "id": "i", "fields": {"a": 1, "b": 2}}}
        // with "b" written as a str8, which serde never writes.
        let mut body = Vec::new();
        put_body_head(&mut body, "c", "i", 2);
        let canonical_tail = [0xa1, b'a', 1, 0xa1, b'b', 2];
        let mut canonical = body.clone();
        canonical.extend_from_slice(&canonical_tail);
        body.extend_from_slice(&[0xa1, b'a', 1, 0xd9, 1, b'b', 2]);
        let raw = RawPut::parse(&body).expect("a plain put");
        assert_eq!(raw.fields.len(), 2);
        assert_eq!(put_body(raw.collection, raw.id, &raw.fields), canonical);
        let shortest = RawPut::parse(&canonical).expect("a plain put");
        assert_eq!(
            put_body(shortest.collection, shortest.id, &shortest.fields),
            canonical
        );
    }

    #[test]
    fn integers_at_every_width_boundary_encode_and_decode_as_serde_does() {
        let edges = [
            0i64,
            1,
            31,
            32,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as i64,
            1 << 32,
        ];
        for v in edges
            .iter()
            .flat_map(|e| [*e, -*e, e - 1, -e - 1, e + 1])
            .chain([i64::MIN, i64::MAX])
        {
            let mut out = Vec::new();
            codec::raw::value(&mut out, &Value::Int(v)).expect("encode");
            assert_eq!(out, codec::to_vec(&Value::Int(v)).expect("encode"), "{v}");
            let mut c = Cursor { buf: &out, pos: 0 };
            assert_eq!(c.value(0), Some(Value::Int(v)), "{v}");
        }
    }
}
