//! What agents say to each other over QUIC, apart from sync itself, and the
//! invite code one device hands another to let it join a mesh.
//!
//! A connection carries one bidirectional control stream, opened by the
//! dialler, on which each side first proves it belongs to the mesh
//! ([`PeerMessage::Hello`], or [`PeerMessage::Join`] with an invite), then
//! keeps the other up to date on membership. Sync messages
//! ([`SyncMessage`](crate::SyncMessage)) travel on unidirectional streams,
//! one per database and direction. Every stream carries frames: a `u32`
//! big-endian length, then one MessagePack value.

use serde::{Deserialize, Serialize};

use crate::base32;
use crate::codec::{self, CodecError};
use crate::frame;
use crate::message::EncodeError;
use crate::op::DeviceId;

/// The TLS application protocol agents speak.
pub const ALPN: &[u8] = b"blazedb/1";

/// The version of the peer protocol, sent in [`PeerMessage::Hello`].
pub const PEER_PROTOCOL_VERSION: u32 = 1;

/// The largest frame a peer may send on any stream, in bytes.
pub const MAX_PEER_FRAME: u32 = 8 * 1024 * 1024;

/// The label of the TLS exporter from which membership proofs are made.
pub const PROOF_LABEL: &[u8] = b"EXPORTER-blazedb-mesh-proof";

/// Identifies a mesh. It is not secret: mDNS announces a tag made from it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MeshId(#[serde(with = "serde_bytes")] pub [u8; 16]);

impl MeshId {
    /// The id as lowercase hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// A short tag for mDNS and logs: the first 8 hex characters.
    pub fn tag(&self) -> String {
        hex(&self.0[..4])
    }
}

impl std::fmt::Debug for MeshId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MeshId({})", self.to_hex())
    }
}

/// Formats bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses lowercase or uppercase hex into exactly `N` bytes.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// What a device is in the mesh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An ordinary device.
    #[default]
    Device,
    /// An always-on relay reachable by address.
    Hub,
}

/// One device of a mesh, as members tell each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The device.
    pub device: DeviceId,
    /// Its name, for people.
    pub name: String,
    /// Its role.
    #[serde(default)]
    pub role: Role,
    /// Whether it was removed from the mesh. Removal is final: a removed
    /// device stays removed whatever other members say.
    pub removed: bool,
    /// Where it listens, as `host:port`.
    pub addrs: Vec<String>,
}

/// A control-stream message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// A member introduces itself and proves it holds the mesh secret.
    Hello {
        /// [`PEER_PROTOCOL_VERSION`].
        version: u32,
        /// The mesh.
        mesh: MeshId,
        /// HMAC-SHA256 under the mesh secret over this connection's
        /// exported keying material and the sender's id.
        #[serde(with = "serde_bytes")]
        proof: [u8; 32],
        /// The sender as a member (name, role, addresses).
        me: Member,
    },
    /// A device with an invite asks to join; sent instead of `Hello`.
    Join {
        /// [`PEER_PROTOCOL_VERSION`].
        version: u32,
        /// Which invite.
        #[serde(with = "serde_bytes")]
        invite: [u8; 8],
        /// HMAC-SHA256 under the invite's secret, made as for `Hello`.
        #[serde(with = "serde_bytes")]
        proof: [u8; 32],
        /// The sender as a member.
        me: Member,
    },
    /// The inviter admits a joining device and hands it the mesh's keys.
    Welcome {
        /// The mesh.
        mesh: MeshId,
        /// The mesh secret.
        #[serde(with = "serde_bytes")]
        secret: [u8; 32],
        /// HMAC-SHA256 under the invite's secret, proving the inviter
        /// issued the invite.
        #[serde(with = "serde_bytes")]
        proof: [u8; 32],
        /// Every member the inviter knows, itself included.
        members: Vec<Member>,
    },
    /// The members the sender knows; sent after `Hello` and on changes.
    Members {
        /// The members.
        members: Vec<Member>,
    },
    /// The sender will not talk to the receiver; the connection closes.
    Refused {
        /// Why, for the receiver's logs.
        reason: String,
    },
}

impl PeerMessage {
    /// Encodes the message.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::to_vec(self)
    }

    /// Decodes a message.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::from_slice(bytes)
    }
}

/// Encodes `msg` (a [`PeerMessage`] or a
/// [`SyncMessage`](crate::SyncMessage)) as one frame for a peer stream,
/// refusing one over [`MAX_PEER_FRAME`].
pub fn to_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    let start = frame::begin_frame(&mut out);
    codec::encode_into(&mut out, msg)?;
    frame::finish_frame(&mut out, start, MAX_PEER_FRAME)?;
    Ok(out)
}

/// What an invite code carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The mesh to join.
    pub mesh: MeshId,
    /// Which invite, so the inviter can look up its secret.
    #[serde(with = "serde_bytes")]
    pub id: [u8; 8],
    /// The invite's own secret (not the mesh secret).
    #[serde(with = "serde_bytes")]
    pub secret: [u8; 32],
    /// The inviter.
    pub inviter: DeviceId,
    /// Where the inviter listens, as `host:port`.
    pub addrs: Vec<String>,
    /// When the invite stops working, in milliseconds since the Unix epoch.
    pub expires_ms: u64,
}

/// The prefix of every invite code.
pub const INVITE_PREFIX: &str = "blz1-";

/// The text was not an invite code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// The prefix is missing.
    #[error("not an invite code: it should start with {INVITE_PREFIX}")]
    Prefix,
    /// A character is not base32, or the code was cut short.
    #[error("the invite code is damaged (was it copied whole?)")]
    Damaged,
}

impl Invite {
    /// The invite as a code: the prefix, then base32 of its encoding.
    pub fn to_code(&self) -> String {
        // Encoding a struct of plain fields into a Vec cannot fail.
        let bytes = codec::to_vec(self).unwrap_or_default();
        format!("{INVITE_PREFIX}{}", base32::encode(&bytes).to_lowercase())
    }

    /// Reads a code made by [`Invite::to_code`]. Case and surrounding
    /// whitespace do not matter.
    pub fn from_code(code: &str) -> Result<Invite, InviteError> {
        let code = code.trim();
        let body = code
            .get(..INVITE_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(INVITE_PREFIX))
            .map(|_| &code[INVITE_PREFIX.len()..])
            .ok_or(InviteError::Prefix)?;
        let bytes = base32::decode(body.as_bytes()).ok_or(InviteError::Damaged)?;
        codec::from_slice(&bytes).map_err(|_| InviteError::Damaged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(n: u8) -> Member {
        Member {
            device: DeviceId([n; 32]),
            name: format!("dev{n}"),
            role: Role::Device,
            removed: n.is_multiple_of(2),
            addrs: vec!["127.0.0.1:7340".into()],
        }
    }

    #[test]
    fn control_messages_round_trip() {
        for msg in [
            PeerMessage::Hello {
                version: PEER_PROTOCOL_VERSION,
                mesh: MeshId([1; 16]),
                proof: [2; 32],
                me: member(1),
            },
            PeerMessage::Join {
                version: PEER_PROTOCOL_VERSION,
                invite: [3; 8],
                proof: [4; 32],
                me: member(2),
            },
            PeerMessage::Welcome {
                mesh: MeshId([5; 16]),
                secret: [6; 32],
                proof: [7; 32],
                members: vec![member(1), member(2)],
            },
            PeerMessage::Members {
                members: vec![member(3)],
            },
            PeerMessage::Refused {
                reason: "no".into(),
            },
        ] {
            let bytes = msg.encode().expect("encode");
            assert_eq!(PeerMessage::decode(&bytes).expect("decode"), msg);
        }
    }

    #[test]
    fn a_damaged_invite_is_refused() {
        assert_eq!(Invite::from_code("hello"), Err(InviteError::Prefix));
        assert_eq!(Invite::from_code("blz1-!!"), Err(InviteError::Damaged));
        assert_eq!(Invite::from_code("blz1-abc"), Err(InviteError::Damaged));
    }

    #[test]
    fn hex_round_trips() {
        let id = MeshId([0xab; 16]);
        assert_eq!(parse_hex::<16>(&id.to_hex()), Some(id.0));
        assert_eq!(parse_hex::<2>("zz00"), None);
        assert_eq!(parse_hex::<2>("abc"), None);
    }

    proptest! {
        #[test]
        fn invites_round_trip_through_codes(
            mesh in any::<[u8; 16]>(),
            id in any::<[u8; 8]>(),
            secret in any::<[u8; 32]>(),
            inviter in any::<[u8; 32]>(),
            addrs in proptest::collection::vec("[a-z0-9.:]{1,20}", 0..4),
            expires_ms in any::<u64>(),
            upper in any::<bool>(),
        ) {
            let invite = Invite { mesh: MeshId(mesh), id, secret, inviter: DeviceId(inviter), addrs, expires_ms };
            let mut code = invite.to_code();
            if upper {
                code = code.to_uppercase();
            }
            prop_assert_eq!(Invite::from_code(&format!("  {code}\n")), Ok(invite));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = PeerMessage::decode(&bytes);
            let _ = Invite::from_code(&format!("{INVITE_PREFIX}{}", String::from_utf8_lossy(&bytes)));
        }
    }
}
