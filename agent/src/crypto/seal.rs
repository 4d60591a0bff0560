//! Sealing op bodies of end-to-end encrypted databases, and handing their
//! keys to devices.
//!
//! Each such database has a 256-bit content key per key epoch. A body is
//! sealed with AES-256-GCM under the epoch's key, with the op's readable
//! header as associated data (layout in `blazedb_proto::sealed`).
//!
//! Nonces never depend on the op or on anything stored: each time a key
//! is loaded or made, it draws a 64-bit random prefix from the OS, and its
//! nonces are that prefix and a 32-bit count. A restored backup that makes
//! an op with a seq it made before therefore still uses a fresh nonce, and
//! a nonce repeats only if two loads of one key draw the same prefix. One
//! load seals at most 2^32 bodies; a database moves to a new key epoch
//! long before (see [`ROTATE_AFTER`]).
//!
//! A content key reaches a device wrapped for that device's key
//! ([`super::wrap`]) in a context naming the mesh, the database, the epoch
//! and the recipient, so a wrapped key opens nowhere else.

use blazedb_proto::DeviceId;
use blazedb_proto::mesh::MeshId;
use blazedb_proto::sealed::{HEADER_LEN, NONCE_LEN, SealedBody, SealedOp, TAG_LEN};
use p256::{PublicKey, SecretKey};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::wrap::{self, WrapError};

/// Ops sealed under one key epoch after which the database moves to a new
/// epoch, well inside the 2^32 that random nonces allow.
pub const ROTATE_AFTER: u64 = 1 << 30;

/// One epoch of a database's content key.
#[derive(Clone)]
pub struct ContentKey {
    /// The key epoch; later epochs replace earlier ones for new ops.
    pub epoch: u32,
    key: [u8; 32],
    // ring's AES-GCM rather than the `aes-gcm` crate's: the same cipher,
    // two to three times faster on the short bodies of ops, which every
    // local write and every applied remote op pays on one thread.
    cipher: Arc<LessSafeKey>,
    nonces: Arc<Nonces>,
}

/// Where a loaded key's nonces come from: a random prefix and a count,
/// shared by the key's clones.
struct Nonces {
    prefix: [u8; 8],
    next: AtomicU64,
}

impl PartialEq for ContentKey {
    fn eq(&self, other: &Self) -> bool {
        self.epoch == other.epoch && self.key == other.key
    }
}

impl Eq for ContentKey {}

impl std::fmt::Debug for ContentKey {
    /// Shows the epoch, never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentKey")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// Why a body could not be sealed or opened, or a key handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The OS gave no randomness.
    #[error("no randomness from the OS: {0}")]
    Random(String),
    /// The body is not a sealed body this build reads.
    #[error("the op body is not sealed, or sealed in a newer layout")]
    NotSealed,
    /// This device holds no key of the epoch the body is sealed under.
    #[error("this device holds no key of epoch {0} of the database")]
    NoKey(u32),
    /// This load of the key sealed all the bodies it may.
    #[error("key epoch {0} sealed 2^32 bodies since it was loaded; rotate the key")]
    Exhausted(u32),
    /// The body was changed, moved to another op, or sealed under another
    /// key of the same epoch.
    #[error("the sealed op body does not open: damaged, or not made for this op")]
    Damaged,
    /// A wrapped key did not open for this device.
    #[error(transparent)]
    Wrap(#[from] WrapError),
}

fn random<const N: usize>() -> Result<[u8; N], SealError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| SealError::Random(e.to_string()))?;
    Ok(buf)
}

impl ContentKey {
    /// A new random key for `epoch`.
    pub fn generate(epoch: u32) -> Result<ContentKey, SealError> {
        ContentKey::from_bytes(epoch, random()?)
    }

    /// A key from its bytes, as it was stored or unwrapped, with a fresh
    /// nonce prefix.
    pub fn from_bytes(epoch: u32, key: [u8; 32]) -> Result<ContentKey, SealError> {
        Ok(ContentKey {
            epoch,
            key,
            cipher: Arc::new(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &key).map_err(|_| SealError::Damaged)?,
            )),
            nonces: Arc::new(Nonces {
                prefix: random()?,
                next: AtomicU64::new(0),
            }),
        })
    }

    /// The next nonce of this load of the key. Each is drawn once: a body
    /// sealed again with its nonce (see [`ContentKey::seal_at`]) must be
    /// the same plaintext with the same associated data.
    pub fn next_nonce(&self) -> Result<[u8; NONCE_LEN], SealError> {
        let n = self.nonces.next.fetch_add(1, Ordering::Relaxed);
        let count = u32::try_from(n).map_err(|_| SealError::Exhausted(self.epoch))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&self.nonces.prefix);
        nonce[8..].copy_from_slice(&count.to_be_bytes());
        Ok(nonce)
    }

    /// The key's bytes, for storing it on this device.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key
    }

    /// Seals `body` as the body of `op`.
    pub fn seal(&self, op: &SealedOp<'_>, body: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_with(&op.associated_data(self.epoch), body)
    }

    /// Seals `body` with `aad` as associated data, in the sealed-body
    /// layout (which names this key's epoch).
    pub fn seal_with(&self, aad: &[u8], body: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_written(aad, body.len(), |out| out.extend_from_slice(body))
    }

    /// [`ContentKey::seal_with`] of the bytes `write` appends, written
    /// straight into the sealed body's buffer rather than copied there;
    /// `len`, how many it appends, sizes that buffer at once.
    pub fn seal_written(
        &self,
        aad: &[u8],
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Vec<u8>, SealError> {
        let nonce = self.next_nonce()?;
        let mut out = Vec::with_capacity(HEADER_LEN + len + TAG_LEN);
        self.seal_at(nonce, aad, &mut out, write)?;
        Ok(out)
    }

    /// Appends to `out` the sealed body of the bytes `write` appends, with
    /// `aad` as associated data, under `nonce`: one this key drew
    /// ([`ContentKey::next_nonce`]) for these bytes alone. The same bytes,
    /// associated data and nonce always seal alike, so sealing a body
    /// again with the nonce it was given reuses nothing; any other
    /// plaintext under that nonce would.
    pub fn seal_at(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        out: &mut Vec<u8>,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), SealError> {
        let start = out.len();
        SealedBody::write_header(out, self.epoch, &nonce);
        write(out);
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start + HEADER_LEN..],
            )
            .map_err(|_| SealError::Damaged)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// The context a key of this epoch is wrapped in for `recipient`.
    fn wrap_context(mesh: &MeshId, db: &str, epoch: u32, recipient: &DeviceId) -> Vec<u8> {
        let mut out = b"blazedb content key v1\0".to_vec();
        out.extend_from_slice(&mesh.0);
        out.extend_from_slice(&(db.len() as u64).to_be_bytes());
        out.extend_from_slice(db.as_bytes());
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&recipient.0);
        out
    }

    /// Wraps this key for the device `recipient`, whose public key is
    /// `recipient_key`. Returns the ephemeral public key and the sealed key.
    pub fn wrap_for(
        &self,
        mesh: &MeshId,
        db: &str,
        recipient: &DeviceId,
        recipient_key: &PublicKey,
    ) -> Result<(Vec<u8>, Vec<u8>), SealError> {
        let context = Self::wrap_context(mesh, db, self.epoch, recipient);
        Ok(wrap::wrap(recipient_key, &self.key, &context)?)
    }

    /// Opens a key of `epoch` that [`ContentKey::wrap_for`] wrapped for this
    /// device (`me`, whose private key is `secret`).
    pub fn unwrap(
        mesh: &MeshId,
        db: &str,
        epoch: u32,
        me: &DeviceId,
        secret: &SecretKey,
        ephemeral: &[u8],
        sealed: &[u8],
    ) -> Result<ContentKey, SealError> {
        let context = Self::wrap_context(mesh, db, epoch, me);
        let key = wrap::unwrap(secret, ephemeral, sealed, &context)?;
        ContentKey::from_bytes(epoch, key)
    }
}

/// Opens the sealed body of `op` with the key of its epoch, which `key_of`
/// gives if this device holds it.
pub fn open<'k>(
    key_of: impl FnOnce(u32) -> Option<&'k ContentKey>,
    op: &SealedOp<'_>,
    body: &[u8],
) -> Result<Vec<u8>, SealError> {
    open_with(key_of, |epoch| op.associated_data(epoch), body)
}

/// Opens bytes sealed by [`ContentKey::seal_with`], with the associated
/// data `aad_of` gives for the key epoch they name.
pub fn open_with<'k>(
    key_of: impl FnOnce(u32) -> Option<&'k ContentKey>,
    aad_of: impl FnOnce(u32) -> Vec<u8>,
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut plain = Vec::new();
    open_into(
        key_of,
        |epoch, aad| *aad = aad_of(epoch),
        sealed,
        &mut Vec::new(),
        &mut plain,
    )?;
    Ok(plain)
}

/// [`open_with`] into `plain`, the associated data written into `aad` by
/// `aad_of`: both buffers are cleared first, so that one pair serves
/// every op a writer opens.
pub fn open_into<'k>(
    key_of: impl FnOnce(u32) -> Option<&'k ContentKey>,
    aad_of: impl FnOnce(u32, &mut Vec<u8>),
    sealed: &[u8],
    aad: &mut Vec<u8>,
    plain: &mut Vec<u8>,
) -> Result<(), SealError> {
    let sealed = SealedBody::parse(sealed).ok_or(SealError::NotSealed)?;
    let key = key_of(sealed.key_epoch).ok_or(SealError::NoKey(sealed.key_epoch))?;
    aad.clear();
    aad_of(sealed.key_epoch, aad);
    plain.clear();
    plain.extend_from_slice(sealed.ciphertext);
    let len = key
        .cipher
        .open_in_place(
            Nonce::assume_unique_for_key(sealed.nonce),
            Aad::from(&aad[..]),
            plain,
        )
        .map_err(|_| SealError::Damaged)?
        .len();
    plain.truncate(len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blazedb_proto::Hlc;
    use proptest::prelude::*;

    const MESH: MeshId = MeshId([5; 16]);
    const ORIGIN: DeviceId = DeviceId([9; 32]);

    fn op(db: &str, seq: u64) -> SealedOp<'_> {
        SealedOp {
            db,
            writer: ORIGIN,
            seq,
            hlc: Hlc(1_000 + seq),
            priority: 0,
        }
    }

    /// Sealed bodies are plain AES-256-GCM: another implementation of the
    /// cipher (the `aes-gcm` crate) opens them from the layout alone, so a
    /// client in another language can too.
    #[test]
    fn a_sealed_body_is_standard_aes_256_gcm() {
        use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
        let key = ContentKey::generate(3).expect("key");
        let body = b"put bugs/1 title=standard".to_vec();
        let sealed = key.seal(&op("notes", 8), &body).expect("seal");
        let parts = SealedBody::parse(&sealed).expect("layout");
        assert_eq!(parts.key_epoch, 3);
        let other = aes_gcm::Aes256Gcm::new(&key.to_bytes().into());
        let aad = op("notes", 8).associated_data(3);
        let opened = other.decrypt(
            &aes_gcm::Nonce::from(parts.nonce),
            Payload {
                msg: parts.ciphertext,
                aad: &aad,
            },
        );
        assert_eq!(opened.as_deref(), Ok(&body[..]));
    }

    #[test]
    fn a_sealed_body_opens_only_as_its_own_op() {
        let key = ContentKey::generate(1).expect("key");
        let body = b"put bugs/1 title=secret".to_vec();
        let sealed = key.seal(&op("notes", 4), &body).expect("seal");
        assert!(blazedb_proto::sealed::is_sealed(&sealed));
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "the plain body shows through"
        );
        let open_as =
            |o: &SealedOp<'_>, bytes: &[u8]| open(|e| (e == key.epoch).then_some(&key), o, bytes);
        assert_eq!(open_as(&op("notes", 4), &sealed), Ok(body));
        assert_eq!(
            open_as(&op("notes", 5), &sealed),
            Err(SealError::Damaged),
            "another seq"
        );
        assert_eq!(
            open_as(&op("other", 4), &sealed),
            Err(SealError::Damaged),
            "another db"
        );
        let moved = SealedOp {
            priority: 1,
            ..op("notes", 4)
        };
        assert_eq!(
            open_as(&moved, &sealed),
            Err(SealError::Damaged),
            "another priority"
        );
        let other_writer = SealedOp {
            writer: ORIGIN.writer(7),
            ..op("notes", 4)
        };
        assert_eq!(
            open_as(&other_writer, &sealed),
            Err(SealError::Damaged),
            "another incarnation of the device"
        );
        let mut epoch_changed = sealed.clone();
        epoch_changed[5] = 2;
        let both = [
            key.clone(),
            ContentKey::from_bytes(2, key.to_bytes()).expect("key"),
        ];
        assert_eq!(
            open(
                |e| both.iter().find(|k| k.epoch == e),
                &op("notes", 4),
                &epoch_changed
            ),
            Err(SealError::Damaged),
            "the same key bytes under another epoch"
        );
        assert_eq!(
            open(|_| None, &op("notes", 4), &sealed),
            Err(SealError::NoKey(1))
        );
        let other = ContentKey::generate(1).expect("key");
        assert_eq!(
            open(|_| Some(&other), &op("notes", 4), &sealed),
            Err(SealError::Damaged),
            "another key of the same epoch"
        );
        assert_eq!(
            open(|_| Some(&key), &op("notes", 4), b"\x81\xa1a\x01"),
            Err(SealError::NotSealed)
        );
    }

    #[test]
    fn two_seals_of_one_body_differ_even_after_a_reload() {
        let key = ContentKey::generate(1).expect("key");
        let reloaded = ContentKey::from_bytes(1, key.to_bytes()).expect("key");
        let nonce = |b: &[u8]| b[6..18].to_vec();
        let clone = key.clone();
        let a = clone.seal(&op("n", 1), b"same").expect("seal");
        let b = key.seal(&op("n", 1), b"same").expect("seal");
        let c = reloaded.seal(&op("n", 1), b"same").expect("seal");
        assert_ne!(nonce(&a), nonce(&b), "a clone reused a nonce");
        assert_ne!(nonce(&a), nonce(&c), "a reloaded key reused a nonce");
    }

    #[test]
    fn a_wrapped_key_opens_only_for_its_device_database_and_epoch() {
        let key = ContentKey::generate(3).expect("key");
        let alice = SecretKey::from_slice(&[1; 32]).expect("scalar");
        let bob = SecretKey::from_slice(&[2; 32]).expect("scalar");
        let (a_id, b_id) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let (eph, sealed) = key
            .wrap_for(&MESH, "notes", &a_id, &alice.public_key())
            .expect("wrap");
        let got = ContentKey::unwrap(&MESH, "notes", 3, &a_id, &alice, &eph, &sealed);
        assert_eq!(got, Ok(key.clone()));
        let not = |r: Result<ContentKey, SealError>| matches!(r, Err(SealError::Wrap(_)));
        assert!(not(ContentKey::unwrap(
            &MESH, "notes", 3, &b_id, &bob, &eph, &sealed
        )));
        assert!(not(ContentKey::unwrap(
            &MESH, "notes", 3, &b_id, &alice, &eph, &sealed
        )));
        assert!(not(ContentKey::unwrap(
            &MESH, "other", 3, &a_id, &alice, &eph, &sealed
        )));
        assert!(not(ContentKey::unwrap(
            &MESH, "notes", 4, &a_id, &alice, &eph, &sealed
        )));
        assert!(not(ContentKey::unwrap(
            &MeshId([6; 16]),
            "notes",
            3,
            &a_id,
            &alice,
            &eph,
            &sealed
        )));
        assert_eq!(
            format!("{key:?}"),
            "ContentKey { epoch: 3, .. }",
            "a key in a log"
        );
    }

    proptest! {
        #[test]
        fn seal_and_open_round_trip(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            seq in 1u64..1_000_000,
            epoch in any::<u32>(),
        ) {
            let key = ContentKey::generate(epoch).expect("key");
            let sealed = key.seal(&op("db", seq), &body).expect("seal");
            prop_assert_eq!(open(|_| Some(&key), &op("db", seq), &sealed), Ok(body));
        }

        #[test]
        fn any_changed_byte_is_refused(
            body in proptest::collection::vec(any::<u8>(), 0..100),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let key = ContentKey::generate(1).expect("key");
            let mut sealed = key.seal(&op("db", 1), &body).expect("seal");
            let i = at.index(sealed.len());
            sealed[i] ^= flip;
            prop_assert!(open(|e| (e == 1).then_some(&key), &op("db", 1), &sealed).is_err());
        }
    }
}
