//! The wire form of an `Ops` message, most of what sync sends.
//!
//! serde writes an [`Op`] as a map that names each of its fields and
//! carries its origin's 32 bytes, and its body, a put's, names its
//! collection, id and fields again: 213 bytes for a put of 99 bytes of
//! fields. The packed form keeps an origin table per message and writes
//! each op as the store's op log does ([`crate::op_entry`]: a put's body
//! as its parts), in about 130:
//!
//! ```text
//! {"packed_ops": [db, epoch, ops, origins]}
//! db            str
//! epoch         uint
//! ops           bin: the ops back to back, each
//!   flags       `op_entry`'s flags
//!   origin      uint, a place in origins
//!   ...         the rest of the entry, as `op_entry` writes it
//! origins       bin: device ids of 32 bytes back to back
//! ```
//!
//! The table comes last because it is known only once every op is
//! written: so the encoder writes the message in one pass.
//!
//! Bodies stay byte for byte what their writer made: a put's parts are
//! put back around the same keys, and anything else (a sealed body
//! among them) travels as it is.

use std::collections::HashMap;

use crate::codec::{CodecError, raw};
use crate::op::{DeviceId, Op};
use crate::op_entry::{self, HAS_INCARNATION, HAS_PRIORITY, PUT_PARTS};

use super::SyncMessage;

/// The key that marks the packed form, where serde writes `ops`.
pub(super) const KEY: &str = "packed_ops";

/// The fewest bytes an op takes: flags, origin, seq, clock, body length.
const LEAST_OP: usize = 1 + 1 + 1 + 8 + 1;

/// Appends an `Ops` message about `db` in the packed form.
pub(super) fn encode_into(out: &mut Vec<u8>, db: &str, epoch: u64, ops: &[Op]) {
    write_head(out, db, epoch);
    let head = out.len();
    bin_head(out, 0);
    let start = out.len();
    let mut origins = OriginTable::default();
    for op in ops {
        write_op(out, &mut origins, op);
    }
    let ops_len = bin_len(out.len() - start);
    out[head + 1..start].copy_from_slice(&ops_len.to_be_bytes());
    origins.write(out);
}

/// Appends `op` as a packed message holds it, its origin named by its
/// place in `origins`.
fn write_op(out: &mut Vec<u8>, origins: &mut OriginTable, op: &Op) {
    let (flags, put) = op_entry::flags_of(op);
    out.push(flags);
    raw::uint(out, origins.place(op.origin));
    op_entry::write_rest(out, op, put);
}

/// The message's key, then its database and epoch.
fn write_head(out: &mut Vec<u8>, db: &str, epoch: u64) {
    super::write_keyed_head(out, KEY, 4, db, epoch);
}

/// The origins a packed message names, each at the place it was first
/// named in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct OriginTable {
    origins: Vec<DeviceId>,
    places: HashMap<DeviceId, u64>,
    /// The origin named last and its place: ops mostly come a writer at a
    /// time.
    last: Option<(DeviceId, u64)>,
}

impl OriginTable {
    /// The place of `origin`, which takes the next one if it is new.
    fn place(&mut self, origin: DeviceId) -> u64 {
        match self.last {
            Some((last, place)) if last == origin => place,
            _ => {
                let place = *self.places.entry(origin).or_insert_with(|| {
                    self.origins.push(origin);
                    self.origins.len() as u64 - 1
                });
                self.last = Some((origin, place));
                place
            }
        }
    }

    /// Appends the table as a message ends with it.
    fn write(&self, out: &mut Vec<u8>) {
        bin_head(out, self.origins.len() * 32);
        for origin in &self.origins {
            out.extend_from_slice(&origin.0);
        }
    }
}

/// The ops of an `Ops` message in the packed form, added one at a time:
/// what a sender builds from the entries of its op log without making an
/// [`Op`] of each, as the log stores them in the form the message sends.
/// [`SyncMessage::Packed`] carries it, and it arrives as
/// [`SyncMessage::Ops`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedOps {
    /// The ops back to back, as the message holds them.
    stream: Vec<u8>,
    origins: OriginTable,
    /// Each op's writer and seq, in order.
    ids: Vec<(DeviceId, u64)>,
}

impl PackedOps {
    /// Room for `ops` ops of `bytes` bytes in all, reserved at once: a
    /// stream grown as it is written copies what it holds at each step.
    pub fn with_capacity(ops: usize, bytes: usize) -> PackedOps {
        PackedOps {
            stream: Vec::with_capacity(bytes),
            origins: OriginTable::default(),
            ids: Vec::with_capacity(ops),
        }
    }

    /// Adds `op`.
    pub fn push(&mut self, op: &Op) {
        write_op(&mut self.stream, &mut self.origins, op);
        self.ids.push((op.writer(), op.seq));
    }

    /// Adds the op of `origin` whose entry holds `rest`, its bytes copied
    /// as they are: the same bytes [`PackedOps::push`] writes for the op
    /// built from it.
    pub fn push_entry(&mut self, origin: DeviceId, rest: &op_entry::Rest<'_>) {
        self.stream.push(rest.flags());
        raw::uint(&mut self.stream, self.origins.place(origin));
        rest.write(&mut self.stream);
        self.ids.push((origin.writer(rest.incarnation), rest.seq));
    }

    /// How many ops it holds.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether it holds no op.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Each op's writer ([`Op::writer`]) and seq, in order.
    pub fn ids(&self) -> &[(DeviceId, u64)] {
        &self.ids
    }

    /// The ops, built.
    pub fn to_ops(&self) -> Result<Vec<Op>, CodecError> {
        let mut ops = Vec::with_capacity(self.ids.len());
        let mut s = raw::Reader::new(&self.stream);
        while s.remaining() > 0 {
            ops.push(read_op(&mut s, &self.origins.origins)?);
        }
        Ok(ops)
    }

    /// Appends an `Ops` message about `db` holding them, in the packed
    /// form.
    pub(super) fn encode_into(&self, out: &mut Vec<u8>, db: &str, epoch: u64) {
        write_head(out, db, epoch);
        bin_head(out, self.stream.len());
        out.extend_from_slice(&self.stream);
        self.origins.write(out);
    }
}

/// A bin header for `len` bytes, always five bytes wide so the ops' length
/// can be written once they are (MessagePack allows the wider form).
fn bin_head(out: &mut Vec<u8>, len: usize) {
    out.push(0xc6);
    out.extend_from_slice(&bin_len(len).to_be_bytes());
}

/// A length as a bin header holds it. A message is far under 4 GiB: a
/// longer one is refused by the frame limit whatever its header says.
fn bin_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Reads a packed `Ops` message; `None` when `bytes` are not one (serde
/// reads them then), an error when they are one but damaged.
pub(super) fn decode(bytes: &[u8]) -> Option<Result<SyncMessage, CodecError>> {
    super::keyed(bytes, KEY).map(read_body)
}

fn read_body(mut r: raw::Reader<'_>) -> Result<SyncMessage, CodecError> {
    if r.array_len("packed ops")? != 4 {
        return Err(CodecError("packed ops are not four items".into()));
    }
    let db = r.str("the packed ops' database")?.to_owned();
    let epoch = r.uint("the packed ops' epoch")?;
    let stream = r.bin("the packed ops")?;
    let table = r.bin("the packed ops' origins")?;
    if table.len() % 32 != 0 {
        return Err(CodecError(
            "the packed ops' origins are not 32 bytes each".into(),
        ));
    }
    let origins: Vec<DeviceId> = table
        .chunks_exact(32)
        .map(|id| {
            let mut origin = DeviceId([0; 32]);
            origin.0.copy_from_slice(id);
            origin
        })
        .collect();
    r.end()?;
    let mut ops = Vec::with_capacity(stream.len() / LEAST_OP);
    let mut s = raw::Reader::new(stream);
    while s.remaining() > 0 {
        ops.push(read_op(&mut s, &origins)?);
    }
    Ok(SyncMessage::Ops { db, epoch, ops })
}

fn read_op(r: &mut raw::Reader<'_>, origins: &[DeviceId]) -> Result<Op, CodecError> {
    let flags = r.byte("an op's flags")?;
    if flags & !(HAS_PRIORITY | HAS_INCARNATION | PUT_PARTS) != 0 {
        return Err(CodecError(format!("an op has unknown flags {flags:#x}")));
    }
    let place = r.uint("an op's origin")?;
    let origin = *usize::try_from(place)
        .ok()
        .and_then(|at| origins.get(at))
        .ok_or_else(|| CodecError(format!("an op names origin {place}, not in the table")))?;
    Ok(op_entry::read_rest(r, flags)?.op(origin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hlc, OpBody, PutParts, Value, codec};

    /// One writer's puts cost their collection, id and fields and a few
    /// bytes each, where serde's form repeats the origin and every name.
    #[test]
    fn a_put_of_one_writer_costs_its_parts_and_a_few_bytes() {
        let ops: Vec<Op> = (0..100u64)
            .map(|i| {
                let body = OpBody::Put {
                    collection: "items".into(),
                    id: format!("k{i:08}"),
                    fields: [("n".to_owned(), Value::Int(i as i64))].into(),
                };
                Op {
                    origin: DeviceId([3; 32]),
                    seq: 1_000 + i,
                    hlc: Hlc(1 << 40),
                    priority: 0,
                    incarnation: 0,
                    body: codec::to_vec(&body).expect("encodes"),
                }
            })
            .collect();
        let parts: usize = ops
            .iter()
            .map(|op| PutParts::of_body(&op.body).expect("a put").stored_len())
            .sum();
        let mut out = Vec::new();
        encode_into(&mut out, "db", 1, &ops);
        // Flags, origin, seq (3 bytes), clock (8) and length: 14 an op;
        // the origin once; the key, database, epoch and two bin heads.
        assert_eq!(out.len(), parts + 100 * 14 + 32 + 27);
        let SyncMessage::Ops { ops: read, .. } = decode(&out).expect("packed").expect("reads")
        else {
            unreachable!("packed ops read as ops")
        };
        assert_eq!(read, ops);
    }
}
