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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::base32;
use crate::codec::{self, CodecError};
use crate::frame;
use crate::message::EncodeError;
use crate::op::DeviceId;
use crate::sync::SyncMessage;

/// The TLS application protocol agents speak.
pub const ALPN: &[u8] = b"blazedb/1";

/// The version of the peer protocol, sent in [`PeerMessage::Hello`]. 4
/// added access rules, partial replicas (`Projected`, cut snapshots) and
/// refused writes (`OpBody::Rejected`); 5 sends snapshot records in the
/// store's compact form, which version 4 cannot read; 6 seals a put's
/// body as its parts alone ([`crate::PutParts`]), which version 5 cannot
/// read once opened; 7 sends `Ops` packed ([`SyncMessage::encode_into`]),
/// which version 6 cannot read; 8 sends chunks of the op log whole
/// (`SyncMessage::Chunks`), which version 7 cannot read.
pub const PEER_PROTOCOL_VERSION: u32 = 8;

/// The largest frame a peer may send on any stream, in bytes.
pub const MAX_PEER_FRAME: u32 = 8 * 1024 * 1024;

/// The label of the TLS exporter from which membership proofs are made.
pub const PROOF_LABEL: &[u8] = b"EXPORTER-blazedb-mesh-proof";

/// Identifies a mesh. It is not secret, but it is never announced: mDNS
/// carries only tags that members alone can link to a mesh.
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

/// One device's place in a mesh, as an admin signed it (see [`Signed`]).
///
/// A record replaces an older one for the same device when its `version`
/// is higher; a removed device's record is final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The mesh the record belongs to.
    pub mesh: MeshId,
    /// The device.
    pub device: DeviceId,
    /// The device's public key (SEC1): its id is the key's SHA-256, and
    /// records it signs are checked against it.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Its name, for people.
    pub name: String,
    /// What it is in the mesh.
    #[serde(default)]
    pub role: Role,
    /// The teams it belongs to, which access rules select on.
    #[serde(default)]
    pub teams: Vec<String>,
    /// Whether it may sign member records (add, change and remove devices).
    pub admin: bool,
    /// Set once the device is removed or leaves; final.
    pub removed: Option<Removal>,
    /// Higher versions replace lower ones.
    pub version: u64,
    /// The device whose key signed this version.
    pub signer: DeviceId,
    /// When it was signed, in ms since the Unix epoch (for people).
    pub signed_ms: u64,
}

/// How a device left the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// Who removed it (the device itself when it left).
    pub by: DeviceId,
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// Whether the device left by itself.
    pub left: bool,
    /// Per database, the highest `seq` of the device's operations that the
    /// remover held and accepts; replicas refuse the device's operations
    /// beyond it. These count the device's first write incarnation.
    pub cutoffs: BTreeMap<String, u64>,
    /// The same for the device's later write incarnations: per database,
    /// per incarnation the remover held operations of, the highest `seq`
    /// held. In a database in `cutoffs`, operations of an incarnation not
    /// listed here are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub incarnations: BTreeMap<String, BTreeMap<u32, u64>>,
}

/// Where a device listens, signed by the device itself so no other member
/// can misdirect its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    /// The mesh.
    pub mesh: MeshId,
    /// The device.
    pub device: DeviceId,
    /// Where it listens, as `host:port`.
    pub addrs: Vec<String>,
    /// Higher versions replace lower ones.
    pub version: u64,
}

/// A new mesh secret, made by an admin when a device left, wrapped for
/// each member that keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The mesh.
    pub mesh: MeshId,
    /// The secret's epoch: one more than the secret it replaces.
    pub epoch: u32,
    /// The admin that made it.
    pub signer: DeviceId,
    /// Devices that were gone when it was made, and do not get it.
    pub excluded: Vec<DeviceId>,
    /// The secret, once for each member.
    pub keys: Vec<WrappedKey>,
}

/// A secret wrapped for one device: ECDH of an ephemeral P-256 key with
/// the device's key, HKDF-SHA256, AES-256-GCM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// Who can open it.
    pub device: DeviceId,
    /// The ephemeral public key (SEC1).
    #[serde(with = "serde_bytes")]
    pub ephemeral: Vec<u8>,
    /// The nonce, then the ciphertext and its tag.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

/// Bytes and a signature over them: `body` is the MessagePack of a
/// [`MemberRecord`], [`Addresses`] or [`Rotation`], kept as sent so the
/// signature is checked over exactly what was signed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Signed {
    /// The signed value's encoding.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// ECDSA P-256 with SHA-256 over a purpose label and `body`, as the 64
    /// bytes `r || s`.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl Signed {
    /// Decodes the signed value (before its signature is checked).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, CodecError> {
        codec::from_slice(&self.body)
    }

    /// Encodes `value` as the body to sign.
    pub fn encode_body<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
        codec::to_vec(value)
    }
}

/// Where a mesh comes from: its id is derived from the creator's id and a
/// random salt, which binds the creator's key to the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// The device that created the mesh: its first admin.
    pub creator: DeviceId,
    /// The salt.
    #[serde(with = "serde_bytes")]
    pub salt: [u8; 16],
}

/// Everything a member knows of the mesh's membership, as members pass it
/// on: every member record, every device's addresses, the latest secret
/// rotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// Signed [`MemberRecord`]s.
    pub records: Vec<Signed>,
    /// Signed [`Addresses`].
    pub addrs: Vec<Signed>,
    /// The latest signed [`Rotation`], if the secret was ever rotated.
    pub rotation: Option<Signed>,
    /// Signed [`AccessRules`](crate::rules::AccessRules), the newest
    /// version per database.
    #[serde(default)]
    pub rules: Vec<Signed>,
    /// Signed [`KeyGrant`]s: end-to-end encrypted databases' content
    /// keys, each wrapped for one member.
    #[serde(default)]
    pub grants: Vec<Signed>,
}

/// One epoch of an end-to-end encrypted database's content key, wrapped
/// for one member by a member that holds it. Relays (hubs included) pass
/// it on without being able to open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGrant {
    /// The mesh.
    pub mesh: MeshId,
    /// The database.
    pub db: String,
    /// The key epoch.
    pub epoch: u32,
    /// The member that wrapped it and signed this.
    pub granter: DeviceId,
    /// When, in wall-clock milliseconds.
    pub at_ms: u64,
    /// The key, wrapped for its recipient (`key.device`) in a context
    /// naming the mesh, the database, the epoch and the recipient.
    pub key: WrappedKey,
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
        /// The epoch of the secret the proof is made with.
        epoch: u32,
        /// HMAC-SHA256 under the mesh secret over this connection's
        /// exported keying material and the sender's id.
        #[serde(with = "serde_bytes")]
        proof: [u8; 32],
        /// The sender's own member record and those of its signers, back
        /// to the creator, so a member that has not heard of it yet can
        /// check it.
        chain: Vec<Signed>,
        /// The sender's signed [`Addresses`].
        addrs: Signed,
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
        /// The joining device's name.
        name: String,
        /// Its role.
        role: Role,
    },
    /// The inviter admits a joining device and hands it the mesh's keys.
    Welcome {
        /// The mesh.
        mesh: MeshId,
        /// Where the mesh id comes from.
        genesis: Genesis,
        /// The mesh secret's epoch.
        epoch: u32,
        /// The mesh secret.
        #[serde(with = "serde_bytes")]
        secret: [u8; 32],
        /// HMAC-SHA256 under the invite's secret, proving the inviter
        /// issued the invite.
        #[serde(with = "serde_bytes")]
        proof: [u8; 32],
        /// The membership, the joining device's new record included.
        roster: Roster,
    },
    /// The membership the sender knows; sent after the handshake and on
    /// changes.
    Members {
        /// The records.
        roster: Roster,
    },
    /// The receiver was removed from the mesh (or left it): its signed
    /// record says by whom and when. The connection closes.
    Removed {
        /// The records of the remover and its signers back to the
        /// creator, then the removed device's final record.
        chain: Vec<Signed>,
    },
    /// The two sides hold secrets of different epochs. The side with the
    /// newer one sends its rotation (the other side's copy of the secret is
    /// wrapped in it) and the membership it follows from; the connection
    /// closes and the dialler tries again.
    Rekey {
        /// The sender's secret epoch.
        epoch: u32,
        /// The sender's membership and, when it is the newer side, its
        /// rotation.
        roster: Roster,
    },
    /// The devices the sender has a session with now, so members can tell
    /// which devices they reach through a hub.
    Links {
        /// The devices.
        connected: Vec<DeviceId>,
    },
    /// The devices the sender's sessions came up with (`up`) or ended with
    /// (`down`) since its last `Links` or `LinksChanged`: a hub sends its
    /// whole list once per session, then only the changes, in batches.
    LinksChanged {
        /// Devices now linked.
        up: Vec<DeviceId>,
        /// Devices no longer linked.
        down: Vec<DeviceId>,
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

/// Encodes `msg` (a [`PeerMessage`]) as one frame for a peer stream,
/// refusing one over [`MAX_PEER_FRAME`]. Sync messages go through
/// [`append_sync_frame`], which packs `Ops`.
pub fn to_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    append_frame(&mut out, msg)?;
    Ok(out)
}

/// Appends `msg` to `out` as [`to_frame`] encodes it, so a sender can
/// reuse one buffer for all its frames. On an error `out` is as it was.
pub fn append_frame<T: Serialize>(out: &mut Vec<u8>, msg: &T) -> Result<(), EncodeError> {
    framed(out, |out| codec::encode_into(out, msg))
}

/// Appends a sync message as one frame for a peer stream, encoded by
/// [`SyncMessage::encode_into`] (`Ops` packed), refusing one over
/// [`MAX_PEER_FRAME`]. On an error `out` is as it was.
pub fn append_sync_frame(out: &mut Vec<u8>, msg: &SyncMessage) -> Result<(), EncodeError> {
    framed(out, |out| msg.encode_into(out))
}

/// Appends the frame `encode` writes, leaving `out` as it was on an error.
fn framed(
    out: &mut Vec<u8>,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
) -> Result<(), EncodeError> {
    let start = frame::begin_frame(out);
    if let Err(e) = encode(out) {
        out.truncate(start);
        return Err(e.into());
    }
    frame::finish_frame(out, start, MAX_PEER_FRAME)?;
    Ok(())
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

/// The prefix of every invite code made now.
pub const INVITE_PREFIX: &str = "blz2-";

/// The prefix of the first, longer form (MessagePack), still read.
const INVITE_PREFIX_V1: &str = "blz1-";

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
    /// Encodes the invite as a code to paste or scan: `blz2-` and base32
    /// of a fixed layout (version, mesh, id, secret, inviter, expiry in
    /// seconds, addresses as IP and port, a CRC-32), about 170
    /// characters with one address. Loopback addresses are left out when
    /// there are others: a device on the same machine finds the inviter
    /// without them, and far devices cannot use them.
    pub fn to_code(&self) -> String {
        let mut b = vec![2u8];
        b.extend_from_slice(&self.mesh.0);
        b.extend_from_slice(&self.id);
        b.extend_from_slice(&self.secret);
        b.extend_from_slice(&self.inviter.0);
        let secs = self.expires_ms.div_ceil(1000);
        b.extend_from_slice(&u32::try_from(secs).unwrap_or(u32::MAX).to_be_bytes());
        let parsed: Vec<(&String, Option<std::net::SocketAddr>)> =
            self.addrs.iter().map(|a| (a, a.parse().ok())).collect();
        let far = |a: &Option<std::net::SocketAddr>| !a.is_some_and(|a| a.ip().is_loopback());
        let any_far = parsed.iter().any(|(_, a)| far(a));
        for (text, addr) in parsed.iter().filter(|(_, a)| !any_far || far(a)) {
            match addr {
                Some(std::net::SocketAddr::V4(a)) => {
                    b.push(4);
                    b.extend_from_slice(&a.ip().octets());
                    b.extend_from_slice(&a.port().to_be_bytes());
                }
                Some(std::net::SocketAddr::V6(a)) => {
                    b.push(6);
                    b.extend_from_slice(&a.ip().octets());
                    b.extend_from_slice(&a.port().to_be_bytes());
                }
                None if text.len() <= 255 => {
                    b.push(0);
                    b.push(text.len() as u8);
                    b.extend_from_slice(text.as_bytes());
                }
                None => {}
            }
        }
        b.extend_from_slice(&crc32(&b).to_be_bytes());
        format!("{INVITE_PREFIX}{}", base32::encode(&b).to_lowercase())
    }

    /// Reads a code made by [`Invite::to_code`] (or the older `blz1-`
    /// form). Case and surrounding whitespace do not matter; a code with
    /// anything changed, cut or added is refused.
    pub fn from_code(code: &str) -> Result<Invite, InviteError> {
        let code = code.trim();
        let prefix = code.get(..INVITE_PREFIX.len()).ok_or(InviteError::Prefix)?;
        let body = &code[INVITE_PREFIX.len()..];
        let bytes = base32::decode(body.as_bytes()).ok_or(InviteError::Damaged)?;
        // Base32 drops leftover bits: a character added at the end would
        // otherwise pass unnoticed.
        if !base32::encode(&bytes).eq_ignore_ascii_case(body) {
            return Err(InviteError::Damaged);
        }
        if prefix.eq_ignore_ascii_case(INVITE_PREFIX_V1) {
            return codec::from_slice(&bytes).map_err(|_| InviteError::Damaged);
        }
        if !prefix.eq_ignore_ascii_case(INVITE_PREFIX) {
            return Err(InviteError::Prefix);
        }
        decode_v2(&bytes).ok_or(InviteError::Damaged)
    }
}

fn decode_v2(b: &[u8]) -> Option<Invite> {
    let (body, sum) = b.split_at(b.len().checked_sub(4)?);
    if crc32(body).to_be_bytes() != sum {
        return None;
    }
    let mut r = body;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = r.split_at_checked(n)?;
        r = rest;
        Some(head)
    };
    if take(1)? != [2] {
        return None;
    }
    let mesh = MeshId(take(16)?.try_into().ok()?);
    let id = take(8)?.try_into().ok()?;
    let secret = take(32)?.try_into().ok()?;
    let inviter = DeviceId(take(32)?.try_into().ok()?);
    let secs = u32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut addrs = Vec::new();
    while let Some(tag) = take(1) {
        let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
        match tag[0] {
            4 => {
                let a = take(6)?;
                let ip = std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                addrs.push(std::net::SocketAddr::from((ip, port(&a[4..]))).to_string());
            }
            6 => {
                let a = take(18)?;
                let ip: [u8; 16] = a[..16].try_into().ok()?;
                let ip = std::net::Ipv6Addr::from(ip);
                addrs.push(std::net::SocketAddr::from((ip, port(&a[16..]))).to_string());
            }
            0 => {
                let len = usize::from(take(1)?[0]);
                addrs.push(String::from_utf8(take(len)?.to_vec()).ok()?);
            }
            _ => return None,
        }
    }
    Some(Invite {
        mesh,
        id,
        secret,
        inviter,
        addrs,
        expires_ms: u64::from(secs) * 1000,
    })
}

/// CRC-32 (IEEE), to refuse an invite code with a character changed.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn signed(n: u8) -> Signed {
        Signed {
            body: vec![n; 5],
            sig: vec![n; 64],
        }
    }

    fn roster() -> Roster {
        Roster {
            records: vec![signed(1), signed(2)],
            addrs: vec![signed(3)],
            rotation: Some(signed(4)),
            rules: vec![signed(5)],
            grants: vec![signed(6)],
        }
    }

    #[test]
    fn control_messages_round_trip() {
        for msg in [
            PeerMessage::Hello {
                version: PEER_PROTOCOL_VERSION,
                mesh: MeshId([1; 16]),
                epoch: 3,
                proof: [2; 32],
                chain: vec![signed(1)],
                addrs: signed(2),
            },
            PeerMessage::Join {
                version: PEER_PROTOCOL_VERSION,
                invite: [3; 8],
                proof: [4; 32],
                name: "laptop".into(),
                role: Role::Hub,
            },
            PeerMessage::Welcome {
                mesh: MeshId([5; 16]),
                genesis: Genesis {
                    creator: DeviceId([8; 32]),
                    salt: [9; 16],
                },
                epoch: 0,
                secret: [6; 32],
                proof: [7; 32],
                roster: roster(),
            },
            PeerMessage::Members { roster: roster() },
            PeerMessage::Removed {
                chain: vec![signed(5)],
            },
            PeerMessage::Rekey {
                epoch: 2,
                roster: roster(),
            },
            PeerMessage::Links {
                connected: vec![DeviceId([1; 32])],
            },
            PeerMessage::LinksChanged {
                up: vec![DeviceId([2; 32])],
                down: vec![DeviceId([3; 32])],
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
    fn signed_bodies_decode_to_what_was_encoded() {
        let record = MemberRecord {
            mesh: MeshId([1; 16]),
            device: DeviceId([2; 32]),
            key: vec![4; 65],
            name: "phone".into(),
            role: Role::Device,
            teams: vec!["ios".into()],
            admin: false,
            removed: Some(Removal {
                by: DeviceId([3; 32]),
                at_ms: 7,
                left: false,
                cutoffs: [("notes".to_owned(), 12)].into(),
                incarnations: [("notes".to_owned(), [(7, 3)].into())].into(),
            }),
            version: 2,
            signer: DeviceId([3; 32]),
            signed_ms: 7,
        };
        let s = Signed {
            body: Signed::encode_body(&record).expect("encode"),
            sig: Vec::new(),
        };
        assert_eq!(s.decode::<MemberRecord>().expect("decode"), record);
    }

    fn sample_invite(addrs: &[&str]) -> Invite {
        Invite {
            mesh: MeshId([7; 16]),
            id: [8; 8],
            secret: [9; 32],
            inviter: DeviceId([10; 32]),
            addrs: addrs.iter().map(|a| (*a).to_owned()).collect(),
            expires_ms: 1_796_119_200_000,
        }
    }

    #[test]
    fn a_damaged_invite_is_refused() {
        assert_eq!(Invite::from_code("hello"), Err(InviteError::Prefix));
        assert_eq!(Invite::from_code("blz2-!!"), Err(InviteError::Damaged));
        assert_eq!(Invite::from_code("blz1-abc"), Err(InviteError::Damaged));
        let code = sample_invite(&["192.168.1.5:7340"]).to_code();
        for extra in ["a", "q", "7"] {
            let longer = format!("{code}{extra}");
            assert_eq!(
                Invite::from_code(&longer),
                Err(InviteError::Damaged),
                "{extra}"
            );
        }
        let mut changed = code.clone().into_bytes();
        let i = changed.len() / 2;
        changed[i] = if changed[i] == b'a' { b'b' } else { b'a' };
        let changed = String::from_utf8(changed).expect("ascii");
        assert_eq!(Invite::from_code(&changed), Err(InviteError::Damaged));
        assert_eq!(
            Invite::from_code(&code[..code.len() - 1]),
            Err(InviteError::Damaged)
        );
    }

    #[test]
    fn invite_codes_are_short_and_leave_loopback_out_when_they_can() {
        let lan = sample_invite(&["127.0.0.1:7340", "192.168.1.5:7340"]);
        let code = lan.to_code();
        assert!(code.len() < 180, "{} characters: {code}", code.len());
        let back = Invite::from_code(&code).expect("valid");
        assert_eq!(back.addrs, ["192.168.1.5:7340"]);
        let alone = sample_invite(&["127.0.0.1:7340", "[::1]:7340"]);
        assert_eq!(Invite::from_code(&alone.to_code()), Ok(alone));
    }

    #[test]
    fn codes_of_the_first_form_are_still_read() {
        let invite = sample_invite(&["127.0.0.1:7340"]);
        let v1 = format!(
            "blz1-{}",
            crate::base32::encode(&codec::to_vec(&invite).expect("encode")).to_lowercase()
        );
        assert_eq!(Invite::from_code(&v1), Ok(invite));
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
            ips in proptest::collection::vec((1u8..127, any::<[u8; 3]>(), any::<u16>()), 0..3),
            hosts in proptest::collection::vec("[a-z]{1,12}\\.example:[0-9]{1,5}", 0..2),
            expires_s in any::<u32>(),
            upper in any::<bool>(),
        ) {
            let mut addrs: Vec<String> = ips
                .iter()
                .map(|(a, bcd, port)| format!("{a}.{}.{}.{}:{port}", bcd[0], bcd[1], bcd[2]))
                .collect();
            addrs.extend(hosts);
            let expires_ms = u64::from(expires_s) * 1000;
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
