//! Wrapping a 32-byte secret for one device: an ephemeral P-256 key, ECDH
//! with the device's long-term key, HKDF-SHA256 with a context that names
//! what the secret is for and who it is for, then AES-256-GCM.
//!
//! The context is both the HKDF info and the AEAD's associated data, so a
//! wrapped key taken from one context (another mesh, epoch or recipient)
//! does not open in another.

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

/// The nonce's length, in bytes.
const NONCE_LEN: usize = 12;

/// Why a secret could not be wrapped or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    /// The OS gave no randomness.
    #[error("no randomness from the OS: {0}")]
    Random(String),
    /// A key is not a valid P-256 point.
    #[error("not a P-256 public key")]
    BadKey,
    /// The sealed bytes are damaged, or meant for another key or context.
    #[error("the wrapped secret does not open with this device's key")]
    NotForMe,
}

fn random<const N: usize>() -> Result<[u8; N], WrapError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| WrapError::Random(e.to_string()))?;
    Ok(buf)
}

fn cipher(shared: &p256::ecdh::SharedSecret, context: &[u8]) -> Aes256Gcm {
    let hkdf = shared.extract::<Sha256>(None);
    let mut key = [0u8; 32];
    hkdf.expand(context, &mut key)
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
    Aes256Gcm::new(&key.into())
}

/// Wraps `secret` for the holder of `recipient`'s private key. Returns the
/// ephemeral public key (SEC1) and the nonce followed by the ciphertext.
pub fn wrap(
    recipient: &PublicKey,
    secret: &[u8; 32],
    context: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), WrapError> {
    let ephemeral = loop {
        // Almost every 32-byte string is a valid scalar.
        if let Ok(k) = SecretKey::from_slice(&random::<32>()?) {
            break k;
        }
    };
    let shared = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), recipient.as_affine());
    let nonce = random::<NONCE_LEN>()?;
    let sealed = cipher(&shared, context)
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: secret,
                aad: context,
            },
        )
        .map_err(|_| WrapError::BadKey)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok((ephemeral.public_key().to_sec1_bytes().to_vec(), out))
}

/// Opens what [`wrap`] made for `me` in `context`.
pub fn unwrap(
    me: &SecretKey,
    ephemeral: &[u8],
    sealed: &[u8],
    context: &[u8],
) -> Result<[u8; 32], WrapError> {
    let ephemeral = PublicKey::from_sec1_bytes(ephemeral).map_err(|_| WrapError::BadKey)?;
    if sealed.len() < NONCE_LEN {
        return Err(WrapError::NotForMe);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| WrapError::NotForMe)?;
    let shared = p256::ecdh::diffie_hellman(me.to_nonzero_scalar(), ephemeral.as_affine());
    let plain = cipher(&shared, context)
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ct,
                aad: context,
            },
        )
        .map_err(|_| WrapError::NotForMe)?;
    plain.try_into().map_err(|_| WrapError::NotForMe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_slice(&[n; 32]).expect("scalar")
    }

    #[test]
    fn a_wrapped_secret_opens_only_for_its_recipient_and_context() {
        let (alice, bob) = (key(1), key(2));
        let secret = [42u8; 32];
        let (eph, sealed) = wrap(&alice.public_key(), &secret, b"mesh 1 epoch 2").expect("wrap");
        assert_eq!(unwrap(&alice, &eph, &sealed, b"mesh 1 epoch 2"), Ok(secret));
        assert_eq!(
            unwrap(&bob, &eph, &sealed, b"mesh 1 epoch 2"),
            Err(WrapError::NotForMe),
            "another device opened it"
        );
        assert_eq!(
            unwrap(&alice, &eph, &sealed, b"mesh 1 epoch 3"),
            Err(WrapError::NotForMe),
            "it opened in another context"
        );
        let mut damaged = sealed.clone();
        damaged[20] ^= 1;
        assert_eq!(
            unwrap(&alice, &eph, &damaged, b"mesh 1 epoch 2"),
            Err(WrapError::NotForMe)
        );
        assert_eq!(
            unwrap(&alice, &eph, &sealed[..5], b"mesh 1 epoch 2"),
            Err(WrapError::NotForMe)
        );
        assert_eq!(
            unwrap(&alice, b"junk", &sealed, b"mesh 1 epoch 2"),
            Err(WrapError::BadKey)
        );
    }

    #[test]
    fn each_wrap_is_fresh() {
        let alice = key(3);
        let a = wrap(&alice.public_key(), &[1; 32], b"c").expect("wrap");
        let b = wrap(&alice.public_key(), &[1; 32], b"c").expect("wrap");
        assert_ne!(a, b, "two wraps of one secret looked alike");
    }
}
