//! Signing values with a device's key, and checking signatures against a
//! public key. Every signature covers a purpose label and the value's
//! encoding, so a signature made for one kind of value never stands for
//! another.

use blazedb_proto::DeviceId;
use blazedb_proto::codec::CodecError;
use blazedb_proto::mesh::Signed;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::Serialize;

/// What a signature is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A [`MemberRecord`](blazedb_proto::mesh::MemberRecord).
    Member,
    /// A device's [`Addresses`](blazedb_proto::mesh::Addresses).
    Addresses,
    /// A secret [`Rotation`](blazedb_proto::mesh::Rotation).
    Rotation,
    /// A database's [`AccessRules`](blazedb_proto::rules::AccessRules).
    Rules,
    /// A [`KeyGrant`](blazedb_proto::mesh::KeyGrant).
    KeyGrant,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Member => b"blazedb member record\0",
            Purpose::Addresses => b"blazedb addresses\0",
            Purpose::Rotation => b"blazedb secret rotation\0",
            Purpose::Rules => b"blazedb access rules\0",
            Purpose::KeyGrant => b"blazedb key grant\0",
        }
    }
}

fn message(purpose: Purpose, body: &[u8]) -> Vec<u8> {
    let mut m = purpose.label().to_vec();
    m.extend_from_slice(body);
    m
}

/// Encodes `value` and signs it with `key`.
pub fn sign<T: Serialize>(
    key: &p256::SecretKey,
    purpose: Purpose,
    value: &T,
) -> Result<Signed, CodecError> {
    let body = Signed::encode_body(value)?;
    let sig: Signature = SigningKey::from(key).sign(&message(purpose, &body));
    Ok(Signed {
        body,
        sig: sig.to_bytes().to_vec(),
    })
}

/// Whether `signed` was signed for `purpose` by the holder of the public
/// key `key` (SEC1).
pub fn verify(key: &[u8], purpose: Purpose, signed: &Signed) -> bool {
    let Ok(vk) = VerifyingKey::from_sec1_bytes(key) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&signed.sig) else {
        return false;
    };
    vk.verify(&message(purpose, &signed.body), &sig).is_ok()
}

/// The public key (SEC1) of a secret key, as member records carry it.
pub fn public_key_bytes(key: &p256::SecretKey) -> Vec<u8> {
    key.public_key().to_sec1_bytes().to_vec()
}

/// The device a public key (SEC1) stands for, if it is a valid key.
pub fn device_of_key(key: &[u8]) -> Option<DeviceId> {
    let key = p256::PublicKey::from_sec1_bytes(key).ok()?;
    Some(crate::identity::device_id_of(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_its_key_purpose_and_bytes_only() {
        let (a, b) = (
            p256::SecretKey::from_slice(&[1; 32]).expect("key"),
            p256::SecretKey::from_slice(&[2; 32]).expect("key"),
        );
        let s = sign(&a, Purpose::Member, &("hello", 1u32)).expect("sign");
        assert!(verify(&public_key_bytes(&a), Purpose::Member, &s));
        assert!(!verify(&public_key_bytes(&b), Purpose::Member, &s));
        assert!(!verify(&public_key_bytes(&a), Purpose::Rotation, &s));
        let mut changed = s.clone();
        changed.body[1] ^= 1;
        assert!(!verify(&public_key_bytes(&a), Purpose::Member, &changed));
        assert!(!verify(b"junk", Purpose::Member, &s));
        assert_eq!(
            device_of_key(&public_key_bytes(&a)),
            Some(crate::identity::device_id_of(&a.public_key()))
        );
    }
}
