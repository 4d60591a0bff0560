//! A chunk of op-log entries: how the agent's op log stores a run of
//! entries, and how sync sends a stored chunk whole to a peer that lacks
//! all of it ([`crate::sync::LogChunk`]).
//!
//! A chunk in the compact form:
//!
//! ```text
//! 0xC2                  mark
//! then, for each entry:
//! flags                 bit 0: a new origin follows; bits 1 to 3 are
//!                       `op_entry`'s (a priority, an incarnation, a put
//!                       body's parts)
//! origin                with bit 0: a device id of 32 bytes, which takes
//!                       the next place in the chunk's origin table;
//!                       without: MessagePack uint, a place in that table
//! seq, hlc, priority,   the rest of the entry as `op_entry` writes it,
//! incarnation, body     which packed `Ops` messages send too
//! ```
//!
//! A put's body in its usual encoding, `{"put": {"collection": c, "id":
//! i, "fields": f}}` with the keys in that order, is stored as the bytes
//! of `c`, of `i` and of `f` alone (`PutParts`), and read back byte for
//! byte. So an entry costs its op's collection, id and fields and about
//! fifteen bytes, where an `Op` in MessagePack repeats its origin and
//! every name in every entry.
//!
//! A compact chunk may be compressed:
//!
//! ```text
//! 0xC3                  mark
//! length                big-endian u32: the compact chunk's length
//! block                 the compact chunk, mark and all, as an LZ4 block
//! ```
//!
//! Entries carry no cursor: entry `i` of a chunk whose first entry is at
//! cursor `c` is at `c + i`, so a chunk reads the same under any first
//! cursor, and a replica that applies every op of a peer's chunk keeps
//! the chunk's bytes as they came.

use crate::codec::{CodecError, raw};
use crate::op::{DeviceId, Op};
use crate::op_entry::{self, HAS_INCARNATION, HAS_PRIORITY, PUT_PARTS, Rest};

/// The first byte of a chunk in the compact form.
pub const COMPACT_MARK: u8 = 0xC2;

/// The first byte of a compact chunk compressed with LZ4.
pub const LZ4_MARK: u8 = 0xC3;

/// Flag: the entry's origin is new to the chunk and follows whole; the
/// other flags are `op_entry`'s.
const NEW_ORIGIN: u8 = 1;

/// Appends an entry's flags and origin, naming the origin by its place in
/// `origins` (the chunk's table so far), or whole, taking the next place,
/// if it is new. The rest of the entry follows as `op_entry` writes it.
pub fn write_head(out: &mut Vec<u8>, flags: u8, origin: DeviceId, origins: &mut Vec<DeviceId>) {
    // Most chunks are one device's writes: its place is the last one.
    match origins.iter().rposition(|o| *o == origin) {
        Some(at) => {
            out.push(flags);
            raw::uint(out, at as u64);
        }
        None => {
            out.push(flags | NEW_ORIGIN);
            out.extend_from_slice(&origin.0);
            origins.push(origin);
        }
    }
}

/// Reads the entry of a compact chunk that starts at `*at`, and moves
/// `*at` past it; `origins` is the chunk's origin table so far, which an
/// entry naming a new origin adds to.
pub fn read_entry<'a>(
    chunk: &'a [u8],
    at: &mut usize,
    origins: &mut Vec<DeviceId>,
) -> Result<(DeviceId, Rest<'a>), CodecError> {
    let mut r = raw::Reader::new(chunk.get(*at..).unwrap_or_default());
    let flags = r.byte("an entry's flags")?;
    if flags & !(NEW_ORIGIN | HAS_PRIORITY | HAS_INCARNATION | PUT_PARTS) != 0 {
        return Err(CodecError(format!("an entry has unknown flags {flags:#x}")));
    }
    let origin = if flags & NEW_ORIGIN != 0 {
        let id = r.bytes(32, "an entry's origin")?;
        let mut origin = DeviceId([0; 32]);
        origin.0.copy_from_slice(id);
        origins.push(origin);
        origin
    } else {
        let place = r.uint("an entry's origin")?;
        *usize::try_from(place)
            .ok()
            .and_then(|place| origins.get(place))
            .ok_or_else(|| CodecError(format!("an entry names origin {place}, not in the chunk")))?
    };
    let rest = op_entry::read_rest(&mut r, flags & !NEW_ORIGIN)?;
    *at = chunk.len() - r.remaining();
    Ok((origin, rest))
}

/// `compact` as an [`LZ4_MARK`] chunk, or `None` when that saves less
/// than an eighth of it.
pub fn compress(compact: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(compact.len()).ok()?;
    let mut out = vec![0; 5 + lz4_flex::block::get_maximum_output_size(compact.len())];
    out[0] = LZ4_MARK;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    let written = lz4_flex::block::compress_into(compact, &mut out[5..]).ok()?;
    out.truncate(5 + written);
    (out.len() <= compact.len() - compact.len() / 8).then_some(out)
}

/// The compact chunk an [`LZ4_MARK`] chunk holds. A stated length over
/// `limit`, or over what an LZ4 block of its size can reach, is refused
/// before anything that size is allocated.
pub fn decompress(stored: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut r = raw::Reader::new(stored.get(1..).unwrap_or_default());
    let len = r.bytes(4, "a compressed chunk's length")?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let block = &stored[5..];
    // An LZ4 block grows at most about 255 times.
    if len > block.len().saturating_mul(255) || len > limit {
        return Err(CodecError(format!(
            "a compressed chunk of {} bytes claims {len}",
            block.len()
        )));
    }
    let mut out = vec![0; len];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(n) if n == len && out.first() == Some(&COMPACT_MARK) => Ok(out),
        Ok(_) => Err(CodecError(
            "a compressed chunk does not hold a compact chunk of its length".into(),
        )),
        Err(e) => Err(CodecError(format!(
            "a compressed chunk does not decompress: {e}"
        ))),
    }
}

/// Calls `each` with every entry of a chunk stored as `stored` (compact
/// or compressed), in order; a compressed chunk may hold at most `limit`
/// bytes.
pub fn for_each_entry(
    stored: &[u8],
    limit: usize,
    mut each: impl FnMut(DeviceId, &Rest<'_>),
) -> Result<(), CodecError> {
    let inflated;
    let compact = match stored.first() {
        Some(&COMPACT_MARK) => stored,
        Some(&LZ4_MARK) => {
            inflated = decompress(stored, limit)?;
            &inflated[..]
        }
        _ => return Err(CodecError("a log chunk has no chunk mark".into())),
    };
    let (mut at, mut origins) = (1, Vec::new());
    while at < compact.len() {
        let (origin, rest) = read_entry(compact, &mut at, &mut origins)?;
        each(origin, &rest);
    }
    Ok(())
}

/// The ops of a chunk stored as `stored`, as [`for_each_entry`] reads it.
pub fn ops(stored: &[u8], limit: usize) -> Result<Vec<Op>, CodecError> {
    let mut ops = Vec::new();
    for_each_entry(stored, limit, |origin, rest| ops.push(rest.op(origin)))?;
    Ok(ops)
}

/// `ops` as one compact chunk, compressed when that saves an eighth: how
/// a store that logged them together would hold them.
pub fn of_ops(ops: &[Op]) -> Vec<u8> {
    let mut out = vec![COMPACT_MARK];
    let mut origins = Vec::new();
    for op in ops {
        let (flags, put) = op_entry::flags_of(op);
        write_head(&mut out, flags, op.origin, &mut origins);
        op_entry::write_rest(&mut out, op, put);
    }
    compress(&out).unwrap_or(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::Hlc;
    use crate::{OpBody, Value, codec};
    use proptest::prelude::*;

    fn op(origin: u8, seq: u64, len: usize) -> Op {
        let body = OpBody::Put {
            collection: "items".into(),
            id: format!("k{seq:08}"),
            fields: [("body".to_owned(), Value::String("x".repeat(len)))].into(),
        };
        Op {
            origin: DeviceId([origin; 32]),
            seq,
            hlc: Hlc(1 << 40 | seq),
            priority: (seq % 3) as u8,
            incarnation: (seq % 2) as u32,
            body: codec::to_vec(&body).expect("encodes"),
        }
    }

    proptest! {
        /// A chunk reads back as the ops it was made of, compressed or
        /// not; damaged, it is refused or reads as some ops, and never
        /// panics.
        #[test]
        fn a_chunk_reads_back_as_its_ops(
            shape in proptest::collection::vec((0u8..3, 0usize..80), 0..40),
            at in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let written: Vec<Op> = shape
                .iter()
                .enumerate()
                .map(|(i, (origin, len))| op(*origin, i as u64 + 1, *len))
                .collect();
            let stored = of_ops(&written);
            prop_assert_eq!(super::ops(&stored, 1 << 20).expect("reads"), written);
            let mut damaged = stored;
            let at = at % damaged.len();
            damaged[at] ^= byte.max(1);
            let _ = super::ops(&damaged, 1 << 20);
            let _ = super::ops(&damaged[..at], 1 << 20);
        }
    }

    #[test]
    fn a_compressed_chunk_over_the_limit_is_refused_before_it_is_inflated() {
        let written: Vec<Op> = (1..200).map(|seq| op(1, seq, 60)).collect();
        let stored = of_ops(&written);
        assert_eq!(stored[0], LZ4_MARK, "like puts compress");
        let err = ops_or_err(&stored, 1024);
        assert!(err.contains("claims"), "{err}");
    }

    fn ops_or_err(stored: &[u8], limit: usize) -> String {
        match super::ops(stored, limit) {
            Ok(ops) => format!("{} ops", ops.len()),
            Err(e) => e.to_string(),
        }
    }
}
