//! The MessagePack encoding every BlazeDB type uses, in one place.
//!
//! Structs are encoded as maps keyed by field name and enums as
//! `{"variant": fields}` (or the bare variant name when it has none), so the
//! encoding is self-describing and readable from any language.

use serde::Serialize;

/// How many lists and maps deep a decoded value may nest (the value
/// itself counting as one when it is a list or map). It bounds the stack
/// a hostile frame can make the decoder use.
pub const MAX_DEPTH: usize = 128;

/// A value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

impl CodecError {
    fn decode(e: rmp_serde::decode::Error) -> Self {
        CodecError(e.to_string())
    }
}

/// `bytes` as a `str` when they are UTF-8. Most strings on the wire
/// (names, ids, short values) are ASCII, which is checked a word at a
/// time here, where `std::str::from_utf8` walks a short string byte by
/// byte at several times the cost; anything else goes to it.
#[inline]
pub fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: every ASCII byte sequence is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

/// Encodes `value` as MessagePack.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    // Most values are records of a few hundred bytes: start big enough that
    // they rarely grow.
    let mut out = Vec::with_capacity(256);
    encode_into(&mut out, value)?;
    Ok(out)
}

/// Appends the MessagePack encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), CodecError> {
    let mut ser = rmp_serde::Serializer::new(out).with_struct_map();
    value
        .serialize(&mut ser)
        .map_err(|e| CodecError(e.to_string()))
}

/// Decodes one MessagePack value from `bytes`; trailing bytes are an error.
pub fn from_slice<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    // The decoder refuses a container at its limit: one more lets
    // exactly MAX_DEPTH of them nest, as `skip` does.
    de.set_max_depth(MAX_DEPTH + 1);
    let value = T::deserialize(&mut de).map_err(CodecError::decode)?;
    let used = de.position() as usize;
    if used != bytes.len() {
        return Err(CodecError(format!(
            "{} unexpected bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Returns the length in bytes of the one MessagePack value at the start
/// of `bytes`, without decoding it.
pub fn value_len(bytes: &[u8]) -> Result<usize, CodecError> {
    let mut pos = 0;
    skip(bytes, &mut pos, 0)?;
    Ok(pos)
}

fn take(bytes: &[u8], pos: &mut usize, n: usize) -> Result<(), CodecError> {
    let end = pos
        .checked_add(n)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| CodecError("truncated MessagePack value".into()))?;
    *pos = end;
    Ok(())
}

fn be(bytes: &[u8], pos: &mut usize, n: usize) -> Result<usize, CodecError> {
    let start = *pos;
    take(bytes, pos, n)?;
    Ok(bytes[start..*pos]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)))
}

fn skip(bytes: &[u8], pos: &mut usize, depth: usize) -> Result<(), CodecError> {
    let marker = *bytes
        .get(*pos)
        .ok_or_else(|| CodecError("truncated MessagePack value".into()))?;
    let container = matches!(marker, 0x80..=0x9f | 0xdc..=0xdf);
    if container && depth >= MAX_DEPTH {
        return Err(CodecError(format!(
            "value nests deeper than {MAX_DEPTH} lists and maps"
        )));
    }
    *pos += 1;
    let (items, data) = match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
        0x80..=0x8f => (2 * usize::from(marker & 0x0f), 0),
        0x90..=0x9f => (usize::from(marker & 0x0f), 0),
        0xa0..=0xbf => (0, usize::from(marker & 0x1f)),
        0xc4 | 0xd9 => (0, be(bytes, pos, 1)?),
        0xc5 | 0xda => (0, be(bytes, pos, 2)?),
        0xc6 | 0xdb => (0, be(bytes, pos, 4)?),
        0xc7 => (0, be(bytes, pos, 1)? + 1),
        0xc8 => (0, be(bytes, pos, 2)? + 1),
        0xc9 => (0, be(bytes, pos, 4)? + 1),
        0xca => (0, 4),
        0xcb => (0, 8),
        0xcc | 0xd0 => (0, 1),
        0xcd | 0xd1 => (0, 2),
        0xce | 0xd2 => (0, 4),
        0xcf | 0xd3 => (0, 8),
        0xd4 => (0, 2),
        0xd5 => (0, 3),
        0xd6 => (0, 5),
        0xd7 => (0, 9),
        0xd8 => (0, 17),
        0xdc => (be(bytes, pos, 2)?, 0),
        0xdd => (be(bytes, pos, 4)?, 0),
        0xde => (2 * be(bytes, pos, 2)?, 0),
        0xdf => (2 * be(bytes, pos, 4)?, 0),
        0xc1 => return Err(CodecError("invalid MessagePack marker 0xc1".into())),
    };
    take(bytes, pos, data)?;
    for _ in 0..items {
        skip(bytes, pos, depth + 1)?;
    }
    Ok(())
}

/// Converts any serializable struct or map into record fields.
pub fn to_fields<T: Serialize + ?Sized>(value: &T) -> Result<crate::Fields, CodecError> {
    match from_slice::<crate::Value>(&to_vec(value)?)? {
        crate::Value::Map(m) => Ok(m),
        other => Err(CodecError(format!(
            "a record must serialize to a map of fields, not a {}",
            other.type_name()
        ))),
    }
}

/// Converts record fields into any deserializable type.
pub fn from_fields<T: serde::de::DeserializeOwned>(
    fields: &crate::Fields,
) -> Result<T, CodecError> {
    from_slice(&to_vec(fields)?)
}

/// Readers and writers for code that handles MessagePack by hand: to
/// encode once and fill in a few numbers later, or to pass encoded values
/// on without decoding them. Writing to a `Vec` cannot fail.
pub mod raw {
    use super::CodecError;

    /// A cursor over encoded bytes that reads one item at a time. Each
    /// reader names what it expected in its error, as `what` says it.
    #[derive(Debug, Clone)]
    pub struct Reader<'a> {
        buf: &'a [u8],
    }

    impl<'a> Reader<'a> {
        /// A reader at the start of `buf`.
        pub fn new(buf: &'a [u8]) -> Self {
            Reader { buf }
        }

        // The readers below match markers by hand: they sit on every
        // get's path, where rmp's generic readers cost several times more.
        // They accept exactly what rmp's do (tested against them).

        /// The first byte and the big-endian number in the `n` after it,
        /// consumed only when all are there.
        fn marked(&mut self, n: usize) -> Option<u64> {
            let bytes = self.buf.get(1..1 + n)?;
            self.buf = &self.buf[1 + n..];
            Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }

        fn len_of(&mut self, fix: std::ops::RangeInclusive<u8>, wide: u8) -> Option<u32> {
            let marker = *self.buf.first()?;
            if fix.contains(&marker) {
                self.buf = &self.buf[1..];
                return Some(u32::from(marker & 0x0f));
            }
            match marker {
                m if m == wide => self.marked(2).map(|n| n as u32),
                m if m == wide + 1 => self.marked(4).map(|n| n as u32),
                _ => None,
            }
        }

        /// Reads an array header and returns its length.
        pub fn array_len(&mut self, what: &str) -> Result<u32, CodecError> {
            self.len_of(0x90..=0x9f, 0xdc)
                .ok_or_else(|| CodecError(format!("{what} must be a MessagePack array")))
        }

        /// Reads a map header and returns its number of entries.
        pub fn map_len(&mut self, what: &str) -> Result<u32, CodecError> {
            self.len_of(0x80..=0x8f, 0xde)
                .ok_or_else(|| CodecError(format!("{what} must be a MessagePack map")))
        }

        /// Reads an unsigned integer of any width (a signed one too, when
        /// it is not negative).
        pub fn uint(&mut self, what: &str) -> Result<u64, CodecError> {
            let err = || CodecError(format!("{what} must be an unsigned integer"));
            let marker = *self.buf.first().ok_or_else(err)?;
            let v = match marker {
                0x00..=0x7f => {
                    self.buf = &self.buf[1..];
                    return Ok(u64::from(marker));
                }
                0xcc..=0xcf => self.marked(1 << (marker - 0xcc)),
                0xd0..=0xd3 => {
                    let n = 1usize << (marker - 0xd0);
                    let raw = self.buf.get(1..1 + n).ok_or_else(err)?;
                    // Negative: refused, as rmp refuses it.
                    if raw[0] & 0x80 != 0 {
                        return Err(err());
                    }
                    self.marked(n)
                }
                _ => None,
            };
            v.ok_or_else(err)
        }

        /// Reads a byte string (MessagePack bin), borrowed from the input.
        pub fn bin(&mut self, what: &str) -> Result<&'a [u8], CodecError> {
            let err = || CodecError(format!("{what} must be a byte string"));
            let (head, len) = match self.buf.first() {
                Some(m @ 0xc4..=0xc6) => {
                    let n = 1usize << (m - 0xc4);
                    let raw = self.buf.get(1..1 + n).ok_or_else(err)?;
                    (
                        1 + n,
                        raw.iter()
                            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
                    )
                }
                _ => return Err(err()),
            };
            let bytes = self.buf.get(head..head + len).ok_or_else(err)?;
            self.buf = &self.buf[head + len..];
            Ok(bytes)
        }

        /// Reads a boolean.
        pub fn bool(&mut self, what: &str) -> Result<bool, CodecError> {
            let v = match self.buf.first() {
                Some(0xc2) => false,
                Some(0xc3) => true,
                _ => return Err(CodecError(format!("{what} must be a boolean"))),
            };
            self.buf = &self.buf[1..];
            Ok(v)
        }

        /// Reads a string, borrowed from the input.
        pub fn str(&mut self, what: &str) -> Result<&'a str, CodecError> {
            let err = || CodecError(format!("{what} must be a string"));
            let marker = *self.buf.first().ok_or_else(err)?;
            let (head, len) = match marker {
                0xa0..=0xbf => (1, usize::from(marker & 0x1f)),
                0xd9..=0xdb => {
                    let n = 1usize << (marker - 0xd9);
                    let raw = self.buf.get(1..1 + n).ok_or_else(err)?;
                    let len = raw
                        .iter()
                        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                    (1 + n, len)
                }
                _ => return Err(err()),
            };
            let bytes = self.buf.get(head..head + len).ok_or_else(err)?;
            let s = super::utf8(bytes).ok_or_else(err)?;
            self.buf = &self.buf[head + len..];
            Ok(s)
        }

        /// Reads one value into a [`Value`](crate::Value) by hand, where
        /// serde's generic decoder costs several times more. `None` for
        /// anything but the plain forms (an integer above `i64::MAX`, a
        /// string that is not UTF-8, a map key that is not a string, an
        /// extension other than a uuid or a timestamp, nesting deeper than
        /// [`MAX_DEPTH`](super::MAX_DEPTH), truncation): the caller then
        /// decodes the bytes with serde, which gives the value or the
        /// error. Where it gives a value, it is serde's (tested against it).
        pub fn value_tree(&mut self) -> Option<crate::Value> {
            self.tree(0)
        }

        fn tree(&mut self, depth: usize) -> Option<crate::Value> {
            use crate::Value;
            let marker = *self.buf.first()?;
            let container = matches!(marker, 0x80..=0x9f | 0xdc..=0xdf);
            if container && depth >= super::MAX_DEPTH {
                return None;
            }
            let value = match marker {
                0x00..=0x7f | 0xe0..=0xff => {
                    self.buf = &self.buf[1..];
                    Value::Int(i64::from(marker as i8))
                }
                0xc0 => {
                    self.buf = &self.buf[1..];
                    Value::Null
                }
                0xc2 | 0xc3 => {
                    self.buf = &self.buf[1..];
                    Value::Bool(marker == 0xc3)
                }
                0xcc..=0xcf => Value::Int(i64::try_from(self.marked(1 << (marker - 0xcc))?).ok()?),
                0xd0..=0xd3 => {
                    let n = 1u32 << (marker - 0xd0);
                    let shift = 64 - 8 * n;
                    Value::Int(((self.marked(n as usize)? << shift) as i64) >> shift)
                }
                0xca => Value::Float(f64::from(f32::from_bits(self.marked(4)? as u32))),
                0xcb => Value::Float(f64::from_bits(self.marked(8)?)),
                0xa0..=0xbf | 0xd9..=0xdb => Value::String(self.str("").ok()?.to_owned()),
                0xc4..=0xc6 => {
                    let len = self.marked(1 << (marker - 0xc4))? as usize;
                    Value::Bytes(self.bytes(len, "").ok()?.to_vec())
                }
                0x90..=0x9f | 0xdc | 0xdd => {
                    let len = self.len_of(0x90..=0x9f, 0xdc)? as usize;
                    // Cap the pre-allocation: the length comes from the input.
                    let mut items = Vec::with_capacity(len.min(1024));
                    for _ in 0..len {
                        items.push(self.tree(depth + 1)?);
                    }
                    Value::List(items)
                }
                0x80..=0x8f | 0xde | 0xdf => {
                    let len = self.len_of(0x80..=0x8f, 0xde)?;
                    // Collected and then built at once: maps arrive with
                    // their keys in order (every writer sorts them), which
                    // a bulk build takes in one pass, where inserting one
                    // at a time searches the map for each. A repeated key
                    // keeps its last value, as inserting does.
                    let mut entries = Vec::with_capacity((len as usize).min(1024));
                    for _ in 0..len {
                        let key = self.str("").ok()?.to_owned();
                        entries.push((key, self.tree(depth + 1)?));
                    }
                    Value::Map(entries.into_iter().collect())
                }
                0xd4..=0xd8 | 0xc7..=0xc9 => {
                    let len = match marker {
                        0xd4..=0xd8 => {
                            self.buf = &self.buf[1..];
                            1 << (marker - 0xd4)
                        }
                        _ => self.marked(1 << (marker - 0xc7))? as usize,
                    };
                    let tag = self.byte("").ok()? as i8;
                    let data = self.bytes(len, "").ok()?;
                    match tag {
                        crate::value::EXT_UUID => Value::Uuid(uuid::Uuid::from_slice(data).ok()?),
                        crate::value::EXT_TIMESTAMP => {
                            Value::Timestamp(crate::value::Timestamp::from_ext_bytes(data)?)
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            };
            Some(value)
        }

        /// Reads the next string if it is `want` and says whether it was:
        /// a map key whose name is known, compared as the bytes an encoder
        /// writes for it before anything is decoded.
        pub fn key_is(&mut self, want: &str) -> bool {
            let n = want.len();
            let short = n < 32
                && self.buf.first() == Some(&(0xa0 | n as u8))
                && self.buf.get(1..1 + n) == Some(want.as_bytes());
            if short {
                self.buf = &self.buf[1 + n..];
                return true;
            }
            // Any wider form of the same string.
            let mut ahead = self.clone();
            if ahead.str("").is_ok_and(|s| s == want) {
                *self = ahead;
                return true;
            }
            false
        }

        /// Skips one whole value and returns its encoded bytes.
        pub fn value(&mut self) -> Result<&'a [u8], CodecError> {
            let len = super::value_len(self.buf)?;
            let (v, rest) = self.buf.split_at(len);
            self.buf = rest;
            Ok(v)
        }

        /// Whether the next item is nil (it is not consumed).
        pub fn is_nil(&self) -> bool {
            self.buf.first() == Some(&0xc0)
        }

        /// The next byte, not consumed.
        pub fn peek(&self) -> Option<u8> {
            self.buf.first().copied()
        }

        /// Reads the next `n` bytes as they are (for formats that frame
        /// MessagePack items with bytes of their own).
        pub fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
            if n > self.buf.len() {
                return Err(CodecError(format!("{what} is cut short")));
            }
            let (v, rest) = self.buf.split_at(n);
            self.buf = rest;
            Ok(v)
        }

        /// How many bytes are left to read.
        pub fn remaining(&self) -> usize {
            self.buf.len()
        }

        /// Reads one byte as it is.
        pub fn byte(&mut self, what: &str) -> Result<u8, CodecError> {
            Ok(self.bytes(1, what)?[0])
        }

        /// Reads eight bytes as a big-endian `u64`.
        pub fn u64_be(&mut self, what: &str) -> Result<u64, CodecError> {
            let b = self.bytes(8, what)?;
            Ok(b.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }

        /// Fails unless every byte has been read.
        pub fn end(&self) -> Result<(), CodecError> {
            if self.buf.is_empty() {
                Ok(())
            } else {
                Err(CodecError(format!(
                    "{} unexpected bytes after the value",
                    self.buf.len()
                )))
            }
        }
    }

    /// The marker of a 64-bit unsigned integer.
    pub const U64: u8 = 0xcf;

    // The headers below are written by hand, byte for byte as `rmp` writes
    // them (the unit tests and proptests compare the two at every width's
    // boundary): `rmp` goes through `io::Write` a piece at a time, and these
    // run for every name and value of every put, on both sides of the
    // socket.

    /// Appends a marker and its big-endian length or value, of `N` bytes.
    #[inline]
    fn head<const N: usize>(out: &mut Vec<u8>, marker: u8, be: [u8; N]) {
        out.push(marker);
        out.extend_from_slice(&be);
    }

    /// Appends the header of a string or byte string of `len` bytes:
    /// `fix` (ORed with the length) below `fix_max`, else the 8-, 16- or
    /// 32-bit form starting at marker `wide`. Lengths past `u32::MAX`
    /// are cut, as `rmp` cuts them; no frame holds one.
    #[inline]
    fn len_head(out: &mut Vec<u8>, len: usize, fix: Option<u8>, wide: u8) {
        let len = len as u32;
        match fix {
            Some(fix) if len < 32 => out.push(fix | len as u8),
            _ if len < 256 => head(out, wide, [len as u8]),
            _ if len <= u32::from(u16::MAX) => head(out, wide + 1, (len as u16).to_be_bytes()),
            _ => head(out, wide + 2, len.to_be_bytes()),
        }
    }

    /// Appends the header of a map or an array of `len` entries: `fix`
    /// (ORed with the length) below 16, else the 16- or 32-bit form
    /// starting at marker `wide`.
    #[inline]
    fn count_head(out: &mut Vec<u8>, len: u32, fix: u8, wide: u8) {
        if len < 16 {
            out.push(fix | len as u8);
        } else if len <= u32::from(u16::MAX) {
            head(out, wide, (len as u16).to_be_bytes());
        } else {
            head(out, wide + 1, len.to_be_bytes());
        }
    }

    /// Appends a string.
    pub fn str(out: &mut Vec<u8>, s: &str) {
        len_head(out, s.len(), Some(0xa0), 0xd9);
        out.extend_from_slice(s.as_bytes());
    }

    /// Appends a byte string.
    pub fn bin(out: &mut Vec<u8>, b: &[u8]) {
        len_head(out, b.len(), None, 0xc4);
        out.extend_from_slice(b);
    }

    /// Appends a map header.
    pub fn map_len(out: &mut Vec<u8>, len: u32) {
        count_head(out, len, 0x80, 0xde);
    }

    /// Appends an array header.
    pub fn array_len(out: &mut Vec<u8>, len: u32) {
        count_head(out, len, 0x90, 0xdc);
    }

    /// Appends an unsigned integer in its shortest form, as encoding a
    /// `u64` does.
    pub fn uint(out: &mut Vec<u8>, v: u64) {
        if v < 128 {
            out.push(v as u8);
        } else if v < 1 << 8 {
            head(out, 0xcc, [v as u8]);
        } else if v < 1 << 16 {
            head(out, 0xcd, (v as u16).to_be_bytes());
        } else if v < 1 << 32 {
            head(out, 0xce, (v as u32).to_be_bytes());
        } else {
            head(out, U64, v.to_be_bytes());
        }
    }

    /// Appends a signed integer in its shortest form, as encoding an
    /// `i64` does: non-negative ones as unsigned.
    pub fn sint(out: &mut Vec<u8>, v: i64) {
        match v {
            0.. => uint(out, v as u64),
            -32..=-1 => out.push(v as u8),
            -128..=-33 => head(out, 0xd0, [v as u8]),
            -32_768..=-129 => head(out, 0xd1, (v as i16).to_be_bytes()),
            -2_147_483_648..=-32_769 => head(out, 0xd2, (v as i32).to_be_bytes()),
            _ => head(out, 0xd3, v.to_be_bytes()),
        }
    }

    /// Appends nil.
    pub fn nil(out: &mut Vec<u8>) {
        out.push(0xc0);
    }

    /// Appends a value, byte for byte as encoding it through serde does,
    /// without serde's per-value cost (extension values still take it).
    pub fn value(out: &mut Vec<u8>, v: &crate::Value) -> Result<(), CodecError> {
        use crate::Value;
        match v {
            Value::Null => nil(out),
            Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Value::Int(i) => sint(out, *i),
            Value::Float(f) => head(out, 0xcb, f.to_be_bytes()),
            Value::String(s) => str(out, s),
            Value::Bytes(b) => bin(out, b),
            Value::List(items) => {
                array_len(out, len_u32(items.len())?);
                for item in items {
                    value(out, item)?;
                }
            }
            Value::Map(m) => {
                fields(out, m)?;
            }
            Value::Uuid(_) | Value::Timestamp(_) => super::encode_into(out, v)?,
        }
        Ok(())
    }

    /// Appends a map of fields, as encoding it through serde does.
    pub fn fields(out: &mut Vec<u8>, m: &crate::Fields) -> Result<(), CodecError> {
        map_len(out, len_u32(m.len())?);
        for (k, v) in m {
            str(out, k);
            value(out, v)?;
        }
        Ok(())
    }

    /// A list's or map's length as MessagePack's 32-bit header holds it.
    pub fn len_u32(len: usize) -> Result<u32, CodecError> {
        u32::try_from(len)
            .map_err(|_| CodecError("a list or map holds more than 2^32 items".into()))
    }

    /// Overwrites the eight bytes at `at` with `v`, big-endian.
    pub fn patch_u64(out: &mut [u8], at: usize, v: u64) {
        out[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The ASCII shortcut takes what `std::str::from_utf8` takes and
        /// refuses what it refuses: any bytes, and strings of any script.
        #[test]
        fn utf8_agrees_with_std(bytes in proptest::collection::vec(any::<u8>(), 0..40), text in ".{0,24}") {
            prop_assert_eq!(utf8(&bytes), std::str::from_utf8(&bytes).ok());
            prop_assert_eq!(utf8(text.as_bytes()), Some(text.as_str()));
        }
    }

    #[test]
    fn utf8_takes_ascii_and_other_scripts_and_refuses_broken_sequences() {
        assert_eq!(utf8(b""), Some(""));
        assert_eq!(utf8(b"k00000001"), Some("k00000001"));
        assert_eq!(
            utf8("caf\u{e9} \u{1f525}".as_bytes()),
            Some("caf\u{e9} \u{1f525}")
        );
        // A lone continuation byte after sixteen ASCII bytes, where a word
        // at a time would have passed over it if it read only the first.
        assert_eq!(utf8(b"0123456789abcdef\x80"), None);
        assert_eq!(utf8(b"\xff"), None);
        assert_eq!(utf8(&[b'a', 0xe2, 0x82]), None, "a cut sequence");
    }

    proptest! {
        // Every marker byte, a few hundred times each.
        #![proptest_config(ProptestConfig::with_cases(50_000))]
        /// The hand-written readers answer as rmp's readers do.
        #[test]
        fn raw_readers_accept_what_rmp_accepts(bytes in proptest::collection::vec(any::<u8>(), 0..12), first in any::<u8>()) {
            let mut b = bytes;
            b.insert(0, first);
            let ours = |f: &dyn Fn(&mut raw::Reader<'_>) -> Option<u64>| f(&mut raw::Reader::new(&b));
            let theirs = |f: &dyn Fn(&mut &[u8]) -> Option<u64>| f(&mut &b[..]);
            prop_assert_eq!(
                ours(&|r| r.array_len("a").ok().map(u64::from)),
                theirs(&|s| rmp::decode::read_array_len(s).ok().map(u64::from))
            );
            prop_assert_eq!(
                ours(&|r| r.map_len("m").ok().map(u64::from)),
                theirs(&|s| rmp::decode::read_map_len(s).ok().map(u64::from))
            );
            prop_assert_eq!(ours(&|r| r.uint("u").ok()), theirs(&|s| rmp::decode::read_int(s).ok()));
            prop_assert_eq!(
                ours(&|r| r.bool("b").ok().map(u64::from)),
                theirs(&|s| rmp::decode::read_bool(s).ok().map(u64::from))
            );
            let rmp_str = |s: &mut &[u8]| -> Option<String> {
                let len = rmp::decode::read_str_len(s).ok()? as usize;
                std::str::from_utf8(s.get(..len)?).ok().map(str::to_owned)
            };
            prop_assert_eq!(raw::Reader::new(&b).str("s").ok().map(str::to_owned), rmp_str(&mut &b[..]));
            let rmp_bin = |s: &mut &[u8]| -> Option<Vec<u8>> {
                let len = rmp::decode::read_bin_len(s).ok()? as usize;
                s.get(..len).map(<[u8]>::to_vec)
            };
            prop_assert_eq!(raw::Reader::new(&b).bin("b").ok().map(<[u8]>::to_vec), rmp_bin(&mut &b[..]));
        }
    }

    /// The lengths and integers where a header changes width, and one
    /// either side of each.
    fn boundaries() -> Vec<i128> {
        let edges: [i128; 12] = [
            0,
            16,
            32,
            128,
            256,
            1 << 16,
            1 << 32,
            -32,
            -128,
            -(1 << 15),
            -(1 << 31),
            i128::from(i64::MIN),
        ];
        let mut out: Vec<i128> = edges.iter().flat_map(|e| [e - 1, *e, e + 1]).collect();
        out.extend([i128::from(i64::MAX), i128::from(u64::MAX)]);
        out
    }

    /// The header writers write what rmp writes, at every width.
    #[test]
    fn raw_writers_write_what_rmp_writes() {
        fn same(ours: impl Fn(&mut Vec<u8>), theirs: impl Fn(&mut Vec<u8>)) {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            ours(&mut a);
            theirs(&mut b);
            assert_eq!(a, b);
        }
        for n in boundaries() {
            if let Ok(v) = u64::try_from(n) {
                same(|o| raw::uint(o, v), |o| drop(rmp::encode::write_uint(o, v)));
            }
            if let Ok(v) = i64::try_from(n) {
                same(|o| raw::sint(o, v), |o| drop(rmp::encode::write_sint(o, v)));
            }
            if let Ok(len) = u32::try_from(n) {
                same(
                    |o| raw::map_len(o, len),
                    |o| drop(rmp::encode::write_map_len(o, len)),
                );
                same(
                    |o| raw::array_len(o, len),
                    |o| drop(rmp::encode::write_array_len(o, len)),
                );
                // Long strings only up to a few widths: 4 GiB is not built.
                if len <= 1 << 17 {
                    let s = "x".repeat(len as usize);
                    same(|o| raw::str(o, &s), |o| drop(rmp::encode::write_str(o, &s)));
                    same(
                        |o| raw::bin(o, s.as_bytes()),
                        |o| drop(rmp::encode::write_bin(o, s.as_bytes())),
                    );
                }
            }
        }
        for f in [0.0, -0.0, 1.5, f64::MAX, f64::NAN, f64::INFINITY] {
            same(
                |o| drop(raw::value(o, &crate::Value::Float(f))),
                |o| drop(rmp::encode::write_f64(o, f)),
            );
        }
    }

    proptest! {
        /// Any integer and any length is written as rmp writes it.
        #[test]
        fn raw_writers_agree_with_rmp_anywhere(i in any::<i64>(), u in any::<u64>(), len in 0u32..70_000) {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            raw::sint(&mut a, i);
            raw::uint(&mut a, u);
            raw::map_len(&mut a, len);
            raw::array_len(&mut a, len);
            let s = "y".repeat(len as usize);
            raw::str(&mut a, &s);
            raw::bin(&mut a, s.as_bytes());
            let _ = rmp::encode::write_sint(&mut b, i);
            let _ = rmp::encode::write_uint(&mut b, u);
            let _ = rmp::encode::write_map_len(&mut b, len);
            let _ = rmp::encode::write_array_len(&mut b, len);
            let _ = rmp::encode::write_str(&mut b, &s);
            let _ = rmp::encode::write_bin(&mut b, s.as_bytes());
            prop_assert_eq!(a, b);
        }
    }

    /// What serde makes of `bytes` as one value, where the hand decoder
    /// makes something of them.
    fn tree_agrees_with_serde(bytes: &[u8]) -> Result<(), TestCaseError> {
        let mut r = raw::Reader::new(bytes);
        if let Some(v) = r.value_tree() {
            let used = bytes.len() - r.remaining();
            let serde = from_slice::<crate::Value>(&bytes[..used]);
            // Compared encoded: a NaN equals nothing, itself included.
            prop_assert_eq!(
                serde.map(|s| to_vec(&s).expect("encodes")),
                Ok(to_vec(&v).expect("encodes"))
            );
        }
        Ok(())
    }

    #[test]
    fn a_nan_reads_by_hand_as_serde_reads_it() {
        // A float 32 NaN: the value serde gives is not equal to itself.
        tree_agrees_with_serde(&[0xca, 0x7f, 0x80, 0x00, 0x01]).expect("agrees");
        tree_agrees_with_serde(&[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 1]).expect("agrees");
    }

    #[test]
    fn a_map_out_of_order_or_with_a_repeated_key_reads_as_serde_reads_it() {
        // {"b": 1, "a": 2, "b": 3}: serde inserts in order, so the last
        // "b" wins and the keys come out sorted.
        let bytes = [0x83, 0xa1, b'b', 1, 0xa1, b'a', 2, 0xa1, b'b', 3];
        let tree = raw::Reader::new(&bytes).value_tree().expect("read by hand");
        assert_eq!(Ok(tree.clone()), from_slice::<crate::Value>(&bytes));
        let crate::Value::Map(map) = tree else {
            panic!("a map")
        };
        assert_eq!(
            map.into_iter().collect::<Vec<_>>(),
            vec![
                ("a".to_owned(), crate::Value::Int(2)),
                ("b".to_owned(), crate::Value::Int(3)),
            ]
        );
    }

    proptest! {
        /// Every value reads back by hand as serde reads it.
        #[test]
        fn value_tree_reads_what_serde_reads(v in crate::value::tests::arb_value()) {
            let bytes = to_vec(&v).expect("encode");
            let mut r = raw::Reader::new(&bytes);
            prop_assert_eq!(r.value_tree(), Some(v));
            prop_assert_eq!(r.remaining(), 0);
        }

        /// Damaged values: where the hand decoder reads something, serde
        /// reads the same.
        #[test]
        fn value_tree_on_damaged_input_agrees_with_serde(
            v in crate::value::tests::arb_value(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
        ) {
            let mut bytes = to_vec(&v).expect("encode");
            let i = at.index(bytes.len());
            if cut {
                bytes.truncate(i);
            } else {
                bytes[i] = byte;
            }
            tree_agrees_with_serde(&bytes)?;
        }

        #[test]
        fn value_tree_on_any_bytes_agrees_with_serde(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            tree_agrees_with_serde(&bytes)?;
        }
    }

    #[test]
    fn a_key_is_matched_in_any_string_form() {
        let short = to_vec("seq").expect("encode");
        let mut r = raw::Reader::new(&short);
        assert!(!r.key_is("se"));
        assert!(!r.key_is("seqq"));
        assert!(r.key_is("seq"));
        assert_eq!(r.remaining(), 0);
        // str8, which rmp does not write for a short string.
        let wide = [0xd9, 3, b's', b'e', b'q', 0xc0];
        let mut r = raw::Reader::new(&wide);
        assert!(r.key_is("seq"));
        assert_eq!(r.remaining(), 1);
        let mut r = raw::Reader::new(&[0xc0]);
        assert!(!r.key_is("seq"));
        assert_eq!(r.remaining(), 1, "nothing read when it is not the key");
    }

    #[test]
    fn value_tree_reads_every_width_and_leaves_the_rest_to_serde() {
        use crate::Value;
        let tree = |b: &[u8]| raw::Reader::new(b).value_tree();
        // Wider encodings than rmp writes, of both signs.
        assert_eq!(tree(&[0xd1, 0xff, 0xfe]), Some(Value::Int(-2)));
        assert_eq!(tree(&[0xd0, 0x7f]), Some(Value::Int(127)));
        assert_eq!(tree(&[0xcd, 0x01, 0x00]), Some(Value::Int(256)));
        assert_eq!(tree(&[0xca, 0x3f, 0xc0, 0, 0]), Some(Value::Float(1.5)));
        for b in [
            &[0xd1, 0xff, 0xfe][..],
            &[0xcd, 1, 0],
            &[0xca, 0x3f, 0xc0, 0, 0],
        ] {
            tree_agrees_with_serde(b).expect("agrees");
        }
        // Left to serde: too large an integer (refused there), a string
        // that is not UTF-8 (bytes there), a key that is not a string.
        let big = [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(tree(&big), None);
        assert!(from_slice::<Value>(&big).is_err());
        assert_eq!(tree(&[0xa1, 0xff]), None);
        assert_eq!(
            from_slice::<Value>(&[0xa1, 0xff]),
            Ok(Value::Bytes(vec![0xff]))
        );
        assert_eq!(tree(&[0x81, 0x01, 0x02]), None);
    }

    #[test]
    fn value_len_spans_nested_values() {
        let bytes = to_vec(&(
            1u8,
            vec!["ab", "c"],
            std::collections::BTreeMap::from([("k", 3.5f64)]),
        ))
        .expect("encode");
        assert_eq!(value_len(&bytes), Ok(bytes.len()));
        assert!(value_len(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = to_vec(&7u32).expect("encode");
        bytes.push(0xc0);
        assert!(from_slice::<u32>(&bytes).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut bytes = vec![0x91; 10_000];
        bytes.push(0xc0);
        assert!(value_len(&bytes).is_err());
        assert!(from_slice::<crate::Value>(&bytes).is_err());
    }
}

#[cfg(test)]
mod depth_tests {
    use super::*;

    fn nested(lists: usize) -> Vec<u8> {
        let mut bytes = vec![0x91u8; lists];
        bytes.push(0x01);
        bytes
    }

    #[test]
    fn skipping_and_decoding_allow_the_same_depth() {
        let at_limit = nested(MAX_DEPTH);
        assert!(value_len(&at_limit).is_ok());
        assert_eq!(
            from_slice::<crate::Value>(&at_limit).map(|v| v.depth()),
            Ok(MAX_DEPTH)
        );
        let over = nested(MAX_DEPTH + 1);
        assert!(value_len(&over).is_err());
        assert!(from_slice::<crate::Value>(&over).is_err());
    }
}
