//! Operations: what every write becomes, and what replicas exchange.
//!
//! An operation has a readable header (origin device, per-origin sequence
//! number, hybrid logical clock) and a body of opaque bytes. Only devices
//! that hold a database's key decode the body; anyone can store, order,
//! deduplicate and forward the operation by its header.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::base32;

use crate::codec::{self, CodecError};
use crate::value::Fields;

/// Identifies a device: the SHA-256 of its long-term public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl DeviceId {
    /// The id in base32 without separators (52 characters).
    pub fn to_base32(&self) -> String {
        base32::encode(&self.0)
    }

    /// A short form for logs and tables: the first 7 characters.
    pub fn short(&self) -> String {
        self.to_base32()[..7].to_owned()
    }

    /// The id this device's writes of `incarnation` are counted under (in
    /// version vectors and record stamps). Incarnation 0 is the device id
    /// itself; a later one differs from it in the last four bytes only, so
    /// a writer's device is known by the first 28 ([`same_device`]).
    ///
    /// [`same_device`]: DeviceId::same_device
    pub fn writer(&self, incarnation: u32) -> DeviceId {
        let mut id = *self;
        for (b, x) in id.0[28..].iter_mut().zip(incarnation.to_be_bytes()) {
            *b ^= x;
        }
        id
    }

    /// Whether two ids (a device's and a writer's, or two writers') belong
    /// to the same device.
    pub fn same_device(&self, other: &DeviceId) -> bool {
        self.0[..28] == other.0[..28]
    }

    /// Every id a writer of this device can have, as a range of ids (they
    /// share the first 28 bytes), to look them up in an ordered map.
    pub fn writers(&self) -> std::ops::RangeInclusive<DeviceId> {
        let (mut lo, mut hi) = (*self, *self);
        lo.0[28..].fill(0);
        hi.0[28..].fill(0xff);
        lo..=hi
    }

    /// The incarnation of this device that `writer` stands for, if it is
    /// one of this device's writers.
    pub fn incarnation_of(&self, writer: &DeviceId) -> Option<u32> {
        self.same_device(writer).then(|| {
            let mut x = [0u8; 4];
            for (i, b) in x.iter_mut().enumerate() {
                *b = self.0[28 + i] ^ writer.0[28 + i];
            }
            u32::from_be_bytes(x)
        })
    }
}

impl fmt::Display for DeviceId {
    /// Formats the id for people: the 52 base32 characters in four runs of
    /// 13, each followed by a check character (Luhn mod 32), shown in eight
    /// groups of seven, easy to read aloud and compare. A mistyped
    /// character fails the check instead of naming another device.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = self.to_base32();
        let mut s = Vec::with_capacity(56);
        for run in plain.as_bytes().chunks(13) {
            s.extend_from_slice(run);
            s.push(luhn32(run));
        }
        for (i, chunk) in s.chunks(7).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

/// The Luhn mod 32 check character of a run of base32 characters.
fn luhn32(run: &[u8]) -> u8 {
    let mut factor = 1;
    let mut sum = 0;
    for &c in run {
        let v = u32::from(base32::value(c).unwrap_or(0));
        let addend = factor * v;
        factor = if factor == 2 { 1 } else { 2 };
        sum += addend / 32 + addend % 32;
    }
    base32::ALPHABET[((32 - sum % 32) % 32) as usize]
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.short())
    }
}

/// The text was not a device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a device id: expected 56 base32 characters as `blazectl id` prints them \
     (dashes allowed), and one of them is wrong or missing"
)]
pub struct ParseDeviceIdError;

impl FromStr for DeviceId {
    type Err = ParseDeviceIdError;

    /// Reads the form [`Display`](fmt::Display) writes, checking its check
    /// characters, or the 52 plain characters of [`DeviceId::to_base32`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let chars: Vec<u8> = s
            .bytes()
            .filter(|&c| c != b'-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let plain: Vec<u8> = match chars.len() {
            52 => chars,
            56 => {
                let mut plain = Vec::with_capacity(52);
                for run in chars.chunks(14) {
                    let (body, check) = run.split_at(13);
                    if luhn32(body) != check[0] {
                        return Err(ParseDeviceIdError);
                    }
                    plain.extend_from_slice(body);
                }
                plain
            }
            _ => return Err(ParseDeviceIdError),
        };
        let bytes = base32::decode(&plain).ok_or(ParseDeviceIdError)?;
        let out: [u8; 32] = bytes.try_into().map_err(|_| ParseDeviceIdError)?;
        Ok(DeviceId(out))
    }
}

/// A hybrid logical clock reading: wall-clock milliseconds in the high 48
/// bits and a counter in the low 16, so that comparing the `u64`s compares
/// the readings.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    /// Bits used by the counter.
    pub const COUNTER_BITS: u32 = 16;

    /// Builds a reading from milliseconds since the Unix epoch and a counter.
    pub fn new(millis: u64, counter: u16) -> Self {
        Hlc((millis << Self::COUNTER_BITS) | u64::from(counter))
    }

    /// The wall-clock part, in milliseconds since the Unix epoch.
    pub fn millis(self) -> u64 {
        self.0 >> Self::COUNTER_BITS
    }

    /// The logical counter.
    pub fn counter(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
}

/// What an operation does, before it is encoded into the op body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpBody {
    /// Replaces the whole record with these fields (creating it if needed).
    Put {
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
        /// The record's fields.
        fields: Fields,
    },
    /// Sets some fields and removes others, keeping the rest.
    Patch {
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
        /// Fields to set.
        set: Fields,
        /// Fields to remove.
        unset: Vec<String>,
    },
    /// Deletes the record (it leaves a tombstone).
    Delete {
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
    },
    /// A write the replica that first took it refused under the
    /// database's access rules. It changes nothing; it stands in for the
    /// write so that the writer's sequence numbers stay contiguous.
    Rejected {
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
        /// Why it was refused.
        reason: String,
    },
}

impl OpBody {
    /// The collection the operation writes to.
    pub fn collection(&self) -> &str {
        match self {
            OpBody::Put { collection, .. }
            | OpBody::Patch { collection, .. }
            | OpBody::Delete { collection, .. }
            | OpBody::Rejected { collection, .. } => collection,
        }
    }

    /// The id of the record the operation writes to.
    pub fn id(&self) -> &str {
        match self {
            OpBody::Put { id, .. }
            | OpBody::Patch { id, .. }
            | OpBody::Delete { id, .. }
            | OpBody::Rejected { id, .. } => id,
        }
    }

    /// Encodes the body into the bytes an [`Op`] carries.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        match self {
            // Puts by hand, byte for byte as serde encodes them.
            OpBody::Put {
                collection,
                id,
                fields,
            } => {
                use codec::raw;
                let mut out =
                    Vec::with_capacity(64 + collection.len() + id.len() + 32 * fields.len());
                crate::fast::put_body_head(&mut out, collection, id, fields.len());
                for (name, value) in fields {
                    raw::str(&mut out, name);
                    raw::value(&mut out, value)?;
                }
                Ok(out)
            }
            _ => codec::to_vec(self),
        }
    }

    /// Decodes the bytes an [`Op`] carries.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        // Puts are decoded by hand; anything else goes to serde.
        match crate::fast::op_body(bytes) {
            Some(body) => Ok(body),
            None => codec::from_slice(bytes),
        }
    }
}

fn is_zero(p: &u8) -> bool {
    *p == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// One operation as it is stored in the op log and sent between replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The device that made the write.
    pub origin: DeviceId,
    /// Contiguous per writer ([`Op::writer`]) and database, starting at 1.
    pub seq: u64,
    /// When the write was made, by the origin's hybrid logical clock.
    pub hlc: Hlc,
    /// The conflict priority the origin gives its writes to this database:
    /// a higher priority wins over any clock reading ("server priority").
    /// Left out of the encoding when zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
    /// The origin's write incarnation: it changes whenever the origin's
    /// store may have gone back in time (a crash, a restore, a copy), so a
    /// seq is never handed out twice under one writer id
    /// ([`Op::writer`]). Left out of the encoding when zero.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub incarnation: u32,
    /// The encoded [`OpBody`], possibly sealed.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl Op {
    /// The id the op is counted under: its origin's writer of its
    /// incarnation. Version vectors, dedup by `(writer, seq)` and record
    /// stamps use it; whatever asks *which device* wrote (rules, removals)
    /// uses `origin`.
    pub fn writer(&self) -> DeviceId {
        self.origin.writer(self.incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_of_one_device_differ_but_share_it() {
        let id = DeviceId([0xa5; 32]);
        assert_eq!(id.writer(0), id);
        assert_ne!(id.writer(1), id);
        assert_ne!(id.writer(1), id.writer(2));
        assert!(id.same_device(&id.writer(7)));
        assert!(id.writer(3).same_device(&id.writer(9)));
        assert!(!id.same_device(&DeviceId([0xa4; 32]).writer(1)));
        assert_eq!(
            id.incarnation_of(&id.writer(0x0102_0304)),
            Some(0x0102_0304)
        );
        assert_eq!(id.incarnation_of(&id), Some(0));
        assert_eq!(id.incarnation_of(&DeviceId([0xa4; 32])), None);
    }

    #[test]
    fn device_id_text_round_trips() {
        let id = DeviceId([0xa5; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), 56 + 7);
        assert_eq!(text.parse::<DeviceId>(), Ok(id));
        assert_eq!(text.to_lowercase().parse::<DeviceId>(), Ok(id));
        assert_eq!(id.to_base32().parse::<DeviceId>(), Ok(id));
        assert!("ABC".parse::<DeviceId>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_single_typo_in_a_device_id_is_caught(
            bytes in proptest::prelude::any::<[u8; 32]>(),
            at in 0usize..56,
            by in 1u8..32,
        ) {
            let id = DeviceId(bytes);
            let text = id.to_string();
            proptest::prop_assert_eq!(text.parse::<DeviceId>(), Ok(id));
            let mut chars: Vec<u8> = text.bytes().filter(|&c| c != b'-').collect();
            let pos = usize::from(base32::value(chars[at]).unwrap_or(0));
            chars[at] = base32::ALPHABET[(pos + usize::from(by)) % 32];
            let typo = String::from_utf8(chars).unwrap_or_default();
            proptest::prop_assert!(typo.parse::<DeviceId>().is_err(), "{} parsed", typo);
        }
    }

    #[test]
    fn hlc_orders_by_millis_then_counter() {
        assert!(Hlc::new(5, 9) < Hlc::new(6, 0));
        assert!(Hlc::new(5, 1) < Hlc::new(5, 2));
        assert_eq!(Hlc::new(1234, 7).millis(), 1234);
        assert_eq!(Hlc::new(1234, 7).counter(), 7);
    }

    #[test]
    fn op_body_round_trips() {
        let body = OpBody::Patch {
            collection: "bugs".into(),
            id: "b1".into(),
            set: Fields::from([("title".into(), "Fix".into())]),
            unset: vec!["old".into()],
        };
        let bytes = body.encode().expect("encode");
        assert_eq!(OpBody::decode(&bytes), Ok(body));
    }
}
