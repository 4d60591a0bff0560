//! The layout of a sealed op body: what a replica without the database's
//! key sees in place of an [`OpBody`](crate::OpBody), and the associated
//! data that binds it to its op.
//!
//! ```text
//! 0xC1 | 0x01 | key epoch (u32 BE) | nonce (12 bytes) | AES-256-GCM ciphertext and tag
//! ```
//!
//! `0xC1` is the one byte MessagePack never uses, so no plain body starts
//! with it and a replica tells the two apart without a key. The second
//! byte is the layout's version.
//!
//! The associated data names the database, the op's readable header
//! (writer, seq, clock reading, priority) and the key epoch, so a sealed
//! body opens only as the op it was made for: a relay can neither alter it
//! nor move it to another database, seq or epoch. (The mesh needs no
//! naming: a content key is drawn at random for one database of one mesh.)

use crate::op::{DeviceId, Hlc};

/// The first byte of every sealed body.
pub const SEALED_MARK: u8 = 0xC1;
/// The layout version this build writes and reads.
pub const SEALED_VERSION: u8 = 1;
/// The nonce's length, in bytes.
pub const NONCE_LEN: usize = 12;
/// The AES-GCM tag's length, in bytes.
pub const TAG_LEN: usize = 16;
/// The bytes before the ciphertext.
pub const HEADER_LEN: usize = 2 + 4 + NONCE_LEN;

/// A sealed body's parts, borrowed from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedBody<'a> {
    /// The epoch of the database key it is sealed under.
    pub key_epoch: u32,
    /// The AES-GCM nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The ciphertext, tag included.
    pub ciphertext: &'a [u8],
}

impl<'a> SealedBody<'a> {
    /// Reads a sealed body. `None` when `bytes` are not one (a plain body,
    /// another layout version, or too short to hold a tag).
    pub fn parse(bytes: &'a [u8]) -> Option<SealedBody<'a>> {
        let (head, ciphertext) = bytes.split_at_checked(HEADER_LEN)?;
        if head[0] != SEALED_MARK || head[1] != SEALED_VERSION || ciphertext.len() < TAG_LEN {
            return None;
        }
        let key_epoch = u32::from_be_bytes(head[2..6].try_into().ok()?);
        let nonce = head[6..].try_into().ok()?;
        Some(SealedBody {
            key_epoch,
            nonce,
            ciphertext,
        })
    }

    /// The body's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext.len());
        SealedBody::write_header(&mut out, self.key_epoch, &self.nonce);
        out.extend_from_slice(self.ciphertext);
        out
    }

    /// Appends the [`HEADER_LEN`] bytes that come before the ciphertext,
    /// for a sealer that encrypts in place after them.
    pub fn write_header(out: &mut Vec<u8>, key_epoch: u32, nonce: &[u8; NONCE_LEN]) {
        out.extend_from_slice(&[SEALED_MARK, SEALED_VERSION]);
        out.extend_from_slice(&key_epoch.to_be_bytes());
        out.extend_from_slice(nonce);
    }
}

/// Whether an op body is sealed (whatever its layout version), so that a
/// replica without the key neither tries to read it as a plain body nor
/// mistakes a newer layout for damage.
pub fn is_sealed(body: &[u8]) -> bool {
    body.first() == Some(&SEALED_MARK)
}

/// The op a sealed body belongs to: everything a relay can read of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedOp<'a> {
    /// The database.
    pub db: &'a str,
    /// The writer that made it ([`crate::Op::writer`]): the device itself
    /// in its first incarnation.
    pub writer: DeviceId,
    /// Its seq.
    pub seq: u64,
    /// Its clock reading.
    pub hlc: Hlc,
    /// Its conflict priority.
    pub priority: u8,
}

impl<'a> SealedOp<'a> {
    /// The readable header of `op`, an op of the database `db`.
    pub fn of(db: &'a str, op: &'a crate::Op) -> SealedOp<'a> {
        SealedOp {
            db,
            writer: op.writer(),
            seq: op.seq,
            hlc: op.hlc,
            priority: op.priority,
        }
    }

    /// The associated data a body of this op is sealed with, under the key
    /// of `key_epoch`. Every part has a fixed length or a length prefix,
    /// so two different ops never give the same bytes.
    pub fn associated_data(&self, key_epoch: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.db.len());
        self.associated_data_into(key_epoch, &mut out);
        out
    }

    /// Appends [`SealedOp::associated_data`] to `out`, for a caller that
    /// reuses one buffer for many ops.
    pub fn associated_data_into(&self, key_epoch: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(b"blazedb sealed op v1\0");
        out.extend_from_slice(&(self.db.len() as u64).to_be_bytes());
        out.extend_from_slice(self.db.as_bytes());
        out.extend_from_slice(&self.writer.0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.hlc.0.to_be_bytes());
        out.push(self.priority);
        out.extend_from_slice(&key_epoch.to_be_bytes());
    }
}

/// One part of a sealed checkpoint: what its associated data binds it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPart<'a> {
    /// The database.
    pub db: &'a str,
    /// The checkpoint's id.
    pub id: u64,
    /// The part's number.
    pub part: u32,
    /// How many parts the checkpoint has.
    pub parts: u32,
    /// What the checkpoint holds.
    pub vector: &'a crate::VersionVector,
}

impl CheckpointPart<'_> {
    /// The associated data the part is sealed with under the key of
    /// `key_epoch`: a relay can neither move a part to another checkpoint
    /// or place, drop parts unnoticed, nor claim it holds more.
    pub fn associated_data(&self, key_epoch: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.db.len() + 40 * self.vector.len());
        out.extend_from_slice(b"blazedb checkpoint v1\0");
        out.extend_from_slice(&(self.db.len() as u64).to_be_bytes());
        out.extend_from_slice(self.db.as_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.part.to_be_bytes());
        out.extend_from_slice(&self.parts.to_be_bytes());
        out.extend_from_slice(&(self.vector.len() as u64).to_be_bytes());
        for (origin, seq) in self.vector.iter() {
            out.extend_from_slice(&origin.0);
            out.extend_from_slice(&seq.to_be_bytes());
        }
        out.extend_from_slice(&key_epoch.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_plain_body_looks_sealed() {
        let body = crate::OpBody::Delete {
            collection: "c".into(),
            id: "x".into(),
        }
        .encode()
        .expect("encode");
        assert!(!is_sealed(&body));
        assert_eq!(SealedBody::parse(&body), None);
    }

    #[test]
    fn short_or_other_version_bodies_are_not_read() {
        let body = SealedBody {
            key_epoch: 3,
            nonce: [7; NONCE_LEN],
            ciphertext: &[1; TAG_LEN],
        }
        .to_bytes();
        assert!(SealedBody::parse(&body).is_some());
        assert_eq!(SealedBody::parse(&body[..body.len() - 1]), None);
        let mut newer = body;
        newer[1] = 2;
        assert!(is_sealed(&newer));
        assert_eq!(SealedBody::parse(&newer), None);
    }

    proptest! {
        #[test]
        fn sealed_bodies_round_trip(
            key_epoch in any::<u32>(),
            nonce in any::<[u8; NONCE_LEN]>(),
            ciphertext in proptest::collection::vec(any::<u8>(), TAG_LEN..64),
        ) {
            let body = SealedBody { key_epoch, nonce, ciphertext: &ciphertext };
            let bytes = body.to_bytes();
            prop_assert_eq!(SealedBody::parse(&bytes), Some(body));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SealedBody::parse(&bytes);
        }

        /// Ops that differ in any readable part bind different data.
        #[test]
        fn different_ops_bind_different_data(
            a in (any::<u8>(), "[a-z]{0,3}", any::<u64>(), any::<u64>(), any::<u8>(), any::<u32>()),
            b in (any::<u8>(), "[a-z]{0,3}", any::<u64>(), any::<u64>(), any::<u8>(), any::<u32>()),
        ) {
            let data = |(o, db, seq, hlc, priority, epoch): &(u8, String, u64, u64, u8, u32)| {
                SealedOp {
                    db,
                    writer: DeviceId([*o; 32]),
                    seq: *seq,
                    hlc: Hlc(*hlc),
                    priority: *priority,
                }
                .associated_data(*epoch)
            };
            prop_assert_eq!(a == b, data(&a) == data(&b));
        }
    }
}
