//! An op in its compact entry form, which the agent's op log stores and
//! packed `Ops` messages send: a flags byte, the origin (each names it
//! its own way, so it is left to them), then the rest:
//!
//! ```text
//! seq           MessagePack uint
//! hlc           u64, big-endian
//! priority      with HAS_PRIORITY: one byte
//! incarnation   with HAS_INCARNATION: MessagePack uint
//! body          MessagePack uint n, then the n bytes of the encoded
//!               (possibly sealed) body, or with PUT_PARTS a put body's
//!               `PutParts::stored`
//! ```
//!
//! A priority or an incarnation left out is zero. A put's body in its
//! usual encoding travels as its parts and is put back byte for byte.

use crate::codec::{CodecError, raw};
use crate::fast::PutParts;
use crate::op::{DeviceId, Hlc, Op};

/// Flag: a priority byte follows the clock reading.
pub const HAS_PRIORITY: u8 = 2;
/// Flag: an incarnation follows the priority.
pub const HAS_INCARNATION: u8 = 4;
/// Flag: the body is a put body's parts.
pub const PUT_PARTS: u8 = 8;

/// The flags an op's entry carries, and its body's put parts when it is a
/// put in its usual encoding.
pub fn flags_of(op: &Op) -> (u8, Option<PutParts<'_>>) {
    let put = PutParts::of_body(&op.body);
    (flags(op.priority, op.incarnation, put.is_some()), put)
}

/// The flags of an entry with this priority and incarnation, whose body
/// is a put's parts when `put`.
fn flags(priority: u8, incarnation: u32, put: bool) -> u8 {
    let mut flags = 0;
    if priority != 0 {
        flags |= HAS_PRIORITY;
    }
    if incarnation != 0 {
        flags |= HAS_INCARNATION;
    }
    if put {
        flags |= PUT_PARTS;
    }
    flags
}

/// Appends what follows an entry's origin, `put` as [`flags_of`] gave it.
pub fn write_rest(out: &mut Vec<u8>, op: &Op, put: Option<PutParts<'_>>) {
    write_head(out, op.seq, op.hlc, op.priority, op.incarnation);
    match put {
        Some(parts) => {
            raw::uint(out, parts.stored_len() as u64);
            parts.stored(out);
        }
        None => {
            raw::uint(out, op.body.len() as u64);
            out.extend_from_slice(&op.body);
        }
    }
}

/// Appends an entry's seq, clock reading, and the priority and
/// incarnation its flags say follow.
fn write_head(out: &mut Vec<u8>, seq: u64, hlc: Hlc, priority: u8, incarnation: u32) {
    raw::uint(out, seq);
    out.extend_from_slice(&hlc.0.to_be_bytes());
    if priority != 0 {
        out.push(priority);
    }
    if incarnation != 0 {
        raw::uint(out, u64::from(incarnation));
    }
}

/// What follows an entry's origin, its body borrowed from the input.
#[derive(Debug, Clone, Copy)]
pub struct Rest<'a> {
    /// The op's sequence number.
    pub seq: u64,
    /// The op's clock reading.
    pub hlc: Hlc,
    /// The op's conflict priority.
    pub priority: u8,
    /// The op's write incarnation.
    pub incarnation: u32,
    /// The body as the entry holds it: a put's parts when `put`.
    pub body: &'a [u8],
    /// The body is a put body's parts (checked to start with two strs).
    pub put: bool,
}

impl Rest<'_> {
    /// The body as its writer encoded it.
    pub fn body(&self) -> Vec<u8> {
        body_of(self.body, self.put)
    }

    /// The op of `origin` whose entry holds this.
    pub fn op(&self, origin: DeviceId) -> Op {
        Op {
            origin,
            seq: self.seq,
            hlc: self.hlc,
            priority: self.priority,
            incarnation: self.incarnation,
            body: self.body(),
        }
    }

    /// The flags an entry of this op carries (as [`flags_of`] gives them
    /// for the op built from it).
    pub fn flags(&self) -> u8 {
        flags(self.priority, self.incarnation, self.put)
    }

    /// Appends it as [`write_rest`] writes the op built from it: the same
    /// bytes, copied rather than rebuilt.
    pub fn write(&self, out: &mut Vec<u8>) {
        write_head(out, self.seq, self.hlc, self.priority, self.incarnation);
        raw::uint(out, self.body.len() as u64);
        out.extend_from_slice(self.body);
    }
}

/// The body an entry holds as `stored` (a put body's parts when `put`), as
/// its writer encoded it.
pub fn body_of(stored: &[u8], put: bool) -> Vec<u8> {
    match PutParts::of_stored(stored) {
        Some(parts) if put => parts.body(),
        _ => stored.to_vec(),
    }
}

/// Reads what follows an entry's origin, given the entry's `flags`.
pub fn read_rest<'a>(r: &mut raw::Reader<'a>, flags: u8) -> Result<Rest<'a>, CodecError> {
    let seq = r.uint("an op's seq")?;
    let hlc = Hlc(r.u64_be("an op's clock reading")?);
    let priority = if flags & HAS_PRIORITY != 0 {
        r.byte("an op's priority")?
    } else {
        0
    };
    let incarnation = if flags & HAS_INCARNATION != 0 {
        u32::try_from(r.uint("an op's incarnation")?)
            .map_err(|_| CodecError("an op's incarnation is over 32 bits".into()))?
    } else {
        0
    };
    let len = r.uint("an op's body length")?;
    let body = usize::try_from(len)
        .map_err(|_| CodecError("an op's body is cut short".into()))
        .and_then(|len| r.bytes(len, "an op's body"))?;
    let put = flags & PUT_PARTS != 0;
    if put && PutParts::of_stored(body).is_none() {
        return Err(CodecError(
            "an op's put body has no collection and id".into(),
        ));
    }
    Ok(Rest {
        seq,
        hlc,
        priority,
        incarnation,
        body,
        put,
    })
}
