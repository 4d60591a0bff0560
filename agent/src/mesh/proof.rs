//! Membership proofs: an HMAC under a shared secret over keying material
//! exported from this connection's TLS session, and the sender's id.
//!
//! The exported material is the same at both ends of one connection and
//! unrelated on any other, so a proof seen on one connection is useless on
//! the next; the sender's id in the MAC stops a peer from reflecting a
//! proof back to the device that made it.

use blazedb_proto::DeviceId;
use blazedb_proto::mesh::PROOF_LABEL;
use hmac::Mac as _;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The keying material of one connection that proofs are bound to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Binding([u8; 32]);

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Binding(..)")
    }
}

impl Binding {
    /// Exports the material from an established connection.
    pub fn of(conn: &quinn::Connection) -> anyhow::Result<Binding> {
        let mut out = [0u8; 32];
        conn.export_keying_material(&mut out, PROOF_LABEL, b"")
            .map_err(|_| anyhow::anyhow!("the TLS session cannot export keying material"))?;
        Ok(Binding(out))
    }

    /// Material given directly, for tests.
    pub fn from_bytes(bytes: [u8; 32]) -> Binding {
        Binding(bytes)
    }
}

fn mac(secret: &[u8; 32], purpose: &[u8], binding: &Binding, sender: &DeviceId) -> HmacSha256 {
    let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(purpose);
    mac.update(&binding.0);
    mac.update(&sender.0);
    mac
}

/// What `sender` shows, on the connection `binding`, to prove it holds
/// `secret`. `purpose` keeps proofs for one use from serving another.
pub fn make(secret: &[u8; 32], purpose: &[u8], binding: &Binding, sender: &DeviceId) -> [u8; 32] {
    mac(secret, purpose, binding, sender)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `proof` is what [`make`] gives, compared in constant time.
pub fn check(
    secret: &[u8; 32],
    purpose: &[u8],
    binding: &Binding,
    sender: &DeviceId,
    proof: &[u8; 32],
) -> bool {
    mac(secret, purpose, binding, sender)
        .verify_slice(proof)
        .is_ok()
}

/// The purpose of a member's `Hello` proof.
pub const HELLO: &[u8] = b"blazedb mesh hello";
/// The purpose of a joining device's proof.
pub const JOIN: &[u8] = b"blazedb mesh join";
/// The purpose of an inviter's `Welcome` proof.
pub const WELCOME: &[u8] = b"blazedb mesh welcome";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_holds_only_on_its_own_connection_sender_and_secret() {
        let secret = [7u8; 32];
        let (a, b) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let conn1 = Binding::from_bytes([10; 32]);
        let conn2 = Binding::from_bytes([11; 32]);
        let proof = make(&secret, HELLO, &conn1, &a);
        assert!(check(&secret, HELLO, &conn1, &a, &proof));
        assert!(!check(&secret, HELLO, &conn2, &a, &proof), "replayed");
        assert!(!check(&secret, HELLO, &conn1, &b, &proof), "reflected");
        assert!(!check(&[8; 32], HELLO, &conn1, &a, &proof), "other mesh");
        assert!(!check(&secret, JOIN, &conn1, &a, &proof), "other purpose");
    }
}
