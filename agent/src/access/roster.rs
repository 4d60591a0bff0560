//! The mesh's membership as signed records, and the rules that decide
//! which records a member accepts. IO-free: records come in as bytes and
//! the caller logs what was refused.
//!
//! Invariants:
//! - The creator's key is bound to the mesh id ([`mesh_id_of`]); its first
//!   record, signed by itself, is the root of all authority.
//! - Every other record is signed by a device that is an active admin in
//!   the records already held, and whose key the held records name.
//! - A device's key never changes: a record's key must hash to its id.
//! - A record replaces the held one only with a higher version (or, at an
//!   equal version, a greater encoding, so two admins' concurrent edits end
//!   the same everywhere). A removal is final.
//! - A device may sign one record about itself without being an admin:
//!   its own leaving.

use std::collections::BTreeMap;

use blazedb_proto::DeviceId;
use blazedb_proto::mesh::{
    Addresses, Genesis, KeyGrant, MemberRecord, MeshId, Removal, Role, Roster as WireRoster,
    Rotation, Signed,
};
use blazedb_proto::rules::AccessRules;
use sha2::{Digest as _, Sha256};

use super::sign::{self, Purpose};

/// The id of the mesh a genesis makes: a hash of the creator's id and the
/// salt, so no other key can pose as the creator.
pub fn mesh_id_of(genesis: &Genesis) -> MeshId {
    let mut h = Sha256::new();
    h.update(b"blazedb mesh id\0");
    h.update(genesis.creator.0);
    h.update(genesis.salt);
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    MeshId(id)
}

/// Why a signed value was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The bytes are not a value of the expected kind.
    #[error("undecodable")]
    Undecodable,
    /// It belongs to another mesh.
    #[error("it belongs to another mesh")]
    WrongMesh,
    /// The record's key does not hash to its device id.
    #[error("the key does not belong to device {0}")]
    KeyMismatch(DeviceId),
    /// The signature does not verify.
    #[error("forged: the signature of {0} does not verify")]
    BadSignature(DeviceId),
    /// The signer has no record here (yet).
    #[error("signed by {0}, which is not a known member")]
    SignerUnknown(DeviceId),
    /// The signer is not an active admin.
    #[error("signed by {0}, which is not an admin")]
    SignerNotAdmin(DeviceId),
    /// A newer version is held.
    #[error("an older version ({got}) than the one held ({held})")]
    Stale {
        /// The version held.
        held: u64,
        /// The version offered.
        got: u64,
    },
    /// The device was removed, and removal is final.
    #[error("device {0} was removed, and removal is final")]
    RemovalIsFinal(DeviceId),
}

impl Rejection {
    /// Whether this says someone tried to forge or overstep authority, as
    /// opposed to a peer being behind.
    pub fn is_suspicious(&self) -> bool {
        !matches!(
            self,
            Rejection::Stale { .. } | Rejection::SignerUnknown(_) | Rejection::RemovalIsFinal(_)
        )
    }
}

#[derive(Debug, Clone)]
struct Held<T> {
    value: T,
    signed: Signed,
}

/// What a merge changed and refused.
#[derive(Debug, Default)]
pub struct Merged {
    /// Member records changed.
    pub members: bool,
    /// Addresses changed.
    pub addrs: bool,
    /// A newer rotation was taken.
    pub rotation: bool,
    /// Newer access rules were taken.
    pub rules: bool,
    /// Key grants were taken.
    pub grants: bool,
    /// What was refused, with the device it was about where known.
    pub rejected: Vec<(Option<DeviceId>, Rejection)>,
    /// What was taken, to pass on to other peers.
    pub taken: WireRoster,
}

impl Merged {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        self.members || self.addrs || self.rotation || self.rules || self.grants
    }
}

/// The membership of one mesh.
#[derive(Debug, Clone)]
pub struct Roster {
    mesh: MeshId,
    genesis: Genesis,
    members: BTreeMap<DeviceId, Held<MemberRecord>>,
    addrs: BTreeMap<DeviceId, Held<Addresses>>,
    rotation: Option<Held<Rotation>>,
    rules: BTreeMap<String, Held<AccessRules>>,
    /// By database, key epoch and recipient.
    grants: BTreeMap<(String, u32, DeviceId), Held<KeyGrant>>,
}

impl Roster {
    /// An empty roster for the mesh `genesis` makes.
    pub fn new(genesis: Genesis) -> Roster {
        Roster {
            mesh: mesh_id_of(&genesis),
            genesis,
            members: BTreeMap::new(),
            addrs: BTreeMap::new(),
            rotation: None,
            rules: BTreeMap::new(),
            grants: BTreeMap::new(),
        }
    }

    /// The mesh.
    pub fn mesh(&self) -> MeshId {
        self.mesh
    }

    /// Where the mesh comes from.
    pub fn genesis(&self) -> Genesis {
        self.genesis
    }

    /// The record of `device`.
    pub fn record(&self, device: &DeviceId) -> Option<&MemberRecord> {
        self.members.get(device).map(|h| &h.value)
    }

    /// The signed record of `device`.
    pub fn signed_record(&self, device: &DeviceId) -> Option<&Signed> {
        self.members.get(device).map(|h| &h.signed)
    }

    /// Every record, removed devices included, by device id.
    pub fn records(&self) -> impl Iterator<Item = &MemberRecord> {
        self.members.values().map(|h| &h.value)
    }

    /// Whether `device` has a record and was not removed.
    pub fn is_active(&self, device: &DeviceId) -> bool {
        self.record(device).is_some_and(|r| r.removed.is_none())
    }

    /// Whether `device` is an active admin.
    pub fn is_admin(&self, device: &DeviceId) -> bool {
        self.record(device)
            .is_some_and(|r| r.removed.is_none() && r.admin)
    }

    /// The active members' records.
    pub fn active(&self) -> impl Iterator<Item = &MemberRecord> {
        self.records().filter(|r| r.removed.is_none())
    }

    /// The active admins' records.
    pub fn admins(&self) -> impl Iterator<Item = &MemberRecord> {
        self.active().filter(|r| r.admin)
    }

    /// How `device` left the mesh, if it did.
    pub fn removal(&self, device: &DeviceId) -> Option<&Removal> {
        self.record(device).and_then(|r| r.removed.as_ref())
    }

    /// The version the next record of `device` must have.
    pub fn next_version(&self, device: &DeviceId) -> u64 {
        self.record(device).map_or(1, |r| r.version + 1)
    }

    /// Where `device` says it listens.
    pub fn addrs(&self, device: &DeviceId) -> &[String] {
        self.addrs
            .get(device)
            .map_or(&[][..], |h| h.value.addrs.as_slice())
    }

    /// The version of `device`'s addresses held, 0 for none.
    pub fn addrs_version(&self, device: &DeviceId) -> u64 {
        self.addrs.get(device).map_or(0, |h| h.value.version)
    }

    /// The latest secret rotation.
    pub fn rotation(&self) -> Option<&Rotation> {
        self.rotation.as_ref().map(|h| &h.value)
    }

    /// Everything, to pass on.
    pub fn to_wire(&self) -> WireRoster {
        WireRoster {
            records: self.members.values().map(|h| h.signed.clone()).collect(),
            addrs: self.addrs.values().map(|h| h.signed.clone()).collect(),
            rotation: self.rotation.as_ref().map(|h| h.signed.clone()),
            rules: self.rules.values().map(|h| h.signed.clone()).collect(),
            grants: self.grants.values().map(|h| h.signed.clone()).collect(),
        }
    }

    /// Every key grant held, by database, key epoch and recipient.
    pub fn grants(&self) -> impl Iterator<Item = &KeyGrant> {
        self.grants.values().map(|h| &h.value)
    }

    /// Whether a grant of `db`'s key of `epoch` for `recipient` is held.
    pub fn has_grant(&self, db: &str, epoch: u32, recipient: &DeviceId) -> bool {
        self.grants
            .contains_key(&(db.to_owned(), epoch, *recipient))
    }

    /// Takes a key grant if its granter is an active member that may give
    /// the key to its recipient: any member for a device, an admin for a
    /// hub (a hub that an admin gave an earlier epoch gets later ones from
    /// any holder). Of two grants for one recipient and epoch, the lower
    /// granter id's is kept, then the greater bytes, so all end alike.
    pub fn accept_grant(&mut self, signed: &Signed) -> Result<bool, Rejection> {
        let g: KeyGrant = signed.decode().map_err(|_| Rejection::Undecodable)?;
        if g.mesh != self.mesh {
            return Err(Rejection::WrongMesh);
        }
        let slot = (g.db.clone(), g.epoch, g.key.device);
        if let Some(h) = self.grants.get(&slot) {
            if h.signed == *signed {
                return Ok(false);
            }
            let rank = |g: &KeyGrant, s: &Signed| (std::cmp::Reverse(g.granter), s.body.clone());
            if rank(&g, signed) <= rank(&h.value, &h.signed) {
                return Err(Rejection::Stale {
                    held: u64::from(h.value.epoch),
                    got: u64::from(g.epoch),
                });
            }
        }
        let Some(granter) = self.record(&g.granter).filter(|r| r.removed.is_none()) else {
            return Err(Rejection::SignerUnknown(g.granter));
        };
        let (granter_admin, granter_key) = (granter.admin, granter.key.clone());
        let Some(recipient) = self.record(&g.key.device).filter(|r| r.removed.is_none()) else {
            return Err(Rejection::SignerUnknown(g.key.device));
        };
        if recipient.role == Role::Hub && !granter_admin {
            let admin_gave = self.grants.values().any(|h| {
                h.value.db == g.db
                    && h.value.key.device == g.key.device
                    && self.is_admin(&h.value.granter)
            });
            if !admin_gave {
                return Err(Rejection::SignerNotAdmin(g.granter));
            }
        }
        if !sign::verify(&granter_key, Purpose::KeyGrant, signed) {
            return Err(Rejection::BadSignature(g.granter));
        }
        self.grants.insert(
            slot,
            Held {
                value: g,
                signed: signed.clone(),
            },
        );
        Ok(true)
    }

    /// Signs `grant` with `key` and takes it, as a copy from a peer would
    /// be taken. Returns the signed grant, to pass on.
    pub fn take_grant(
        &mut self,
        key: &p256::SecretKey,
        grant: &KeyGrant,
    ) -> Result<Signed, Rejection> {
        let signed =
            sign::sign(key, Purpose::KeyGrant, grant).map_err(|_| Rejection::Undecodable)?;
        self.accept_grant(&signed)?;
        Ok(signed)
    }

    /// The access rules of `db`, if an admin set any.
    pub fn rules(&self, db: &str) -> Option<&AccessRules> {
        self.rules.get(db).map(|h| &h.value)
    }

    /// Every database's access rules.
    pub fn all_rules(&self) -> impl Iterator<Item = &AccessRules> {
        self.rules.values().map(|h| &h.value)
    }

    /// Takes a database's access rules signed by an admin if they are
    /// newer than the ones held (an equal version with greater bytes wins,
    /// so two admins' concurrent edits end alike everywhere).
    pub fn accept_rules(&mut self, signed: &Signed) -> Result<bool, Rejection> {
        let r: AccessRules = signed.decode().map_err(|_| Rejection::Undecodable)?;
        if r.mesh != self.mesh {
            return Err(Rejection::WrongMesh);
        }
        if let Some(h) = self.rules.get(&r.db) {
            if h.signed == *signed {
                return Ok(false);
            }
            if (r.version, &signed.body) <= (h.value.version, &h.signed.body) {
                return Err(Rejection::Stale {
                    held: h.value.version,
                    got: r.version,
                });
            }
        }
        let Some(signer) = self.record(&r.signer) else {
            return Err(Rejection::SignerUnknown(r.signer));
        };
        if signer.removed.is_some() || !signer.admin {
            return Err(Rejection::SignerNotAdmin(r.signer));
        }
        if !sign::verify(&signer.key, Purpose::Rules, signed) {
            return Err(Rejection::BadSignature(r.signer));
        }
        self.rules.insert(
            r.db.clone(),
            Held {
                value: r,
                signed: signed.clone(),
            },
        );
        Ok(true)
    }

    /// Signs `rules` with `key` and takes them: they fail exactly as a
    /// forged copy would if this device may not set them.
    pub fn take_rules(
        &mut self,
        key: &p256::SecretKey,
        rules: &AccessRules,
    ) -> Result<(), Rejection> {
        let signed = sign::sign(key, Purpose::Rules, rules).map_err(|_| Rejection::Undecodable)?;
        self.accept_rules(&signed).map(|_| ())
    }

    /// `device`'s record and those of its signers, back to the creator:
    /// enough for a member that knows only the creator to check it.
    pub fn chain(&self, device: &DeviceId) -> Vec<Signed> {
        let mut out: Vec<Signed> = Vec::new();
        let mut next = Some(*device);
        while let Some(d) = next.take() {
            let Some(h) = self.members.get(&d) else { break };
            if out.contains(&h.signed) {
                break;
            }
            out.push(h.signed.clone());
            if h.value.signer != d {
                next = Some(h.value.signer);
            }
        }
        // Signers first, so a receiver can take them in order.
        out.reverse();
        out
    }

    /// The key that must have signed `rec`, if its signer may sign it.
    fn signer_key<'a>(
        &'a self,
        rec: &'a MemberRecord,
        held: Option<&'a Held<MemberRecord>>,
    ) -> Result<&'a [u8], Rejection> {
        if rec.signer == rec.device {
            let root = rec.device == self.genesis.creator
                && held.is_none()
                && rec.admin
                && rec.removed.is_none();
            let leaving = held.is_some()
                && self.is_active(&rec.device)
                && rec
                    .removed
                    .as_ref()
                    .is_some_and(|r| r.left && r.by == rec.device);
            if root || leaving || self.is_admin(&rec.device) {
                return Ok(&rec.key);
            }
            return Err(Rejection::SignerNotAdmin(rec.signer));
        }
        let signer = self
            .members
            .get(&rec.signer)
            .ok_or(Rejection::SignerUnknown(rec.signer))?;
        if signer.value.removed.is_some() || !signer.value.admin {
            return Err(Rejection::SignerNotAdmin(rec.signer));
        }
        Ok(&signer.value.key)
    }

    /// Takes a signed member record if the rules allow. Returns whether
    /// anything changed (`false`: this very record was held already).
    pub fn accept_member(&mut self, signed: &Signed) -> Result<bool, Rejection> {
        let rec: MemberRecord = signed.decode().map_err(|_| Rejection::Undecodable)?;
        if rec.mesh != self.mesh {
            return Err(Rejection::WrongMesh);
        }
        if sign::device_of_key(&rec.key) != Some(rec.device) {
            return Err(Rejection::KeyMismatch(rec.device));
        }
        let held = self.members.get(&rec.device);
        if let Some(h) = held {
            if h.signed == *signed {
                return Ok(false);
            }
            if h.value.removed.is_some() {
                return Err(Rejection::RemovalIsFinal(rec.device));
            }
            if (rec.version, &signed.body) <= (h.value.version, &h.signed.body) {
                return Err(Rejection::Stale {
                    held: h.value.version,
                    got: rec.version,
                });
            }
        }
        let key = self.signer_key(&rec, held)?;
        if !sign::verify(key, Purpose::Member, signed) {
            return Err(Rejection::BadSignature(rec.signer));
        }
        if rec.removed.is_some() {
            self.addrs.remove(&rec.device);
        }
        self.members.insert(
            rec.device,
            Held {
                value: rec,
                signed: signed.clone(),
            },
        );
        Ok(true)
    }

    /// Takes a device's signed addresses if they are newer and its own.
    pub fn accept_addrs(&mut self, signed: &Signed) -> Result<bool, Rejection> {
        let a: Addresses = signed.decode().map_err(|_| Rejection::Undecodable)?;
        if a.mesh != self.mesh {
            return Err(Rejection::WrongMesh);
        }
        let Some(rec) = self.record(&a.device) else {
            return Err(Rejection::SignerUnknown(a.device));
        };
        if rec.removed.is_some() {
            return Err(Rejection::RemovalIsFinal(a.device));
        }
        if let Some(h) = self.addrs.get(&a.device) {
            if h.signed == *signed {
                return Ok(false);
            }
            if a.version <= h.value.version {
                return Err(Rejection::Stale {
                    held: h.value.version,
                    got: a.version,
                });
            }
        }
        if !sign::verify(&rec.key, Purpose::Addresses, signed) {
            return Err(Rejection::BadSignature(a.device));
        }
        self.addrs.insert(
            a.device,
            Held {
                value: a,
                signed: signed.clone(),
            },
        );
        Ok(true)
    }

    /// Takes a secret rotation signed by an admin if it is newer than the
    /// one held.
    pub fn accept_rotation(&mut self, signed: &Signed) -> Result<bool, Rejection> {
        let r: Rotation = signed.decode().map_err(|_| Rejection::Undecodable)?;
        if r.mesh != self.mesh {
            return Err(Rejection::WrongMesh);
        }
        if let Some(h) = &self.rotation {
            if h.signed == *signed {
                return Ok(false);
            }
            if (r.epoch, &signed.body) <= (h.value.epoch, &h.signed.body) {
                return Err(Rejection::Stale {
                    held: u64::from(h.value.epoch),
                    got: u64::from(r.epoch),
                });
            }
        }
        let Some(signer) = self.record(&r.signer) else {
            return Err(Rejection::SignerUnknown(r.signer));
        };
        if signer.removed.is_some() || !signer.admin {
            return Err(Rejection::SignerNotAdmin(r.signer));
        }
        if !sign::verify(&signer.key, Purpose::Rotation, signed) {
            return Err(Rejection::BadSignature(r.signer));
        }
        self.rotation = Some(Held {
            value: r,
            signed: signed.clone(),
        });
        Ok(true)
    }

    /// A new mesh created by the holder of `key`: its genesis from `salt`,
    /// and the creator's own record, the root of authority.
    pub fn create(
        key: &p256::SecretKey,
        name: &str,
        role: Role,
        salt: [u8; 16],
        now_ms: u64,
    ) -> Result<Roster, Rejection> {
        let me = crate::identity::device_id_of(&key.public_key());
        let mut roster = Roster::new(Genesis { creator: me, salt });
        let root = MemberRecord {
            mesh: roster.mesh,
            device: me,
            key: sign::public_key_bytes(key),
            name: name.to_owned(),
            role,
            teams: Vec::new(),
            admin: true,
            removed: None,
            version: 1,
            signer: me,
            signed_ms: now_ms,
        };
        let signed = sign::sign(key, Purpose::Member, &root).map_err(|_| Rejection::Undecodable)?;
        roster.accept_member(&signed)?;
        Ok(roster)
    }

    /// Signs, with `key`, a record for `device` that admits it as a new
    /// member, and takes it if the signer may. Returns the signed record.
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        &mut self,
        key: &p256::SecretKey,
        device_key: &[u8],
        name: &str,
        role: Role,
        teams: Vec<String>,
        now_ms: u64,
    ) -> Result<Signed, Rejection> {
        let device = sign::device_of_key(device_key).ok_or(Rejection::Undecodable)?;
        let rec = MemberRecord {
            mesh: self.mesh,
            device,
            key: device_key.to_vec(),
            name: name.to_owned(),
            role,
            teams,
            admin: false,
            removed: None,
            version: self.next_version(&device),
            signer: crate::identity::device_id_of(&key.public_key()),
            signed_ms: now_ms,
        };
        self.sign_and_take(key, &rec)
    }

    /// Signs, with `key`, the next version of `device`'s record as `change`
    /// makes it, and takes it if the signer may. Returns the signed record.
    pub fn edit(
        &mut self,
        key: &p256::SecretKey,
        device: &DeviceId,
        now_ms: u64,
        change: impl FnOnce(&mut MemberRecord),
    ) -> Result<Signed, Rejection> {
        let mut rec = self
            .record(device)
            .cloned()
            .ok_or(Rejection::SignerUnknown(*device))?;
        change(&mut rec);
        rec.version = self.next_version(device);
        rec.signer = crate::identity::device_id_of(&key.public_key());
        rec.signed_ms = now_ms;
        self.sign_and_take(key, &rec)
    }

    fn sign_and_take(
        &mut self,
        key: &p256::SecretKey,
        rec: &MemberRecord,
    ) -> Result<Signed, Rejection> {
        let signed = sign::sign(key, Purpose::Member, rec).map_err(|_| Rejection::Undecodable)?;
        self.accept_member(&signed)?;
        Ok(signed)
    }

    /// Signs this device's own addresses with `key` and takes them, if they
    /// differ from those held. Returns whether they changed.
    pub fn set_own_addrs(
        &mut self,
        key: &p256::SecretKey,
        addrs: &[String],
        now_ms: u64,
    ) -> Result<bool, Rejection> {
        let me = crate::identity::device_id_of(&key.public_key());
        if self.addrs.contains_key(&me) && self.addrs(&me) == addrs {
            return Ok(false);
        }
        let a = Addresses {
            mesh: self.mesh,
            device: me,
            addrs: addrs.to_vec(),
            version: now_ms.max(self.addrs_version(&me) + 1),
        };
        let signed = sign::sign(key, Purpose::Addresses, &a).map_err(|_| Rejection::Undecodable)?;
        self.accept_addrs(&signed)
    }

    /// The signed addresses of `device`.
    pub fn signed_addrs(&self, device: &DeviceId) -> Option<&Signed> {
        self.addrs.get(device).map(|h| &h.signed)
    }

    /// Signs and takes a rotation made with `key`.
    pub fn take_rotation(
        &mut self,
        key: &p256::SecretKey,
        rotation: &Rotation,
    ) -> Result<(), Rejection> {
        let signed =
            sign::sign(key, Purpose::Rotation, rotation).map_err(|_| Rejection::Undecodable)?;
        self.accept_rotation(&signed).map(|_| ())
    }

    /// Finds the one device `spec` names: its full id, a prefix of its id
    /// of at least 7 characters (dashes optional), or its name.
    pub fn resolve(&self, spec: &str) -> Result<DeviceId, ResolveError> {
        resolve(self.records(), spec)
    }

    /// Takes what it may of a roster a peer sent: records in any order
    /// (each one waits for its signer), then addresses, then the rotation.
    pub fn merge(&mut self, wire: &WireRoster) -> Merged {
        let mut out = Merged::default();
        let mut pending: Vec<&Signed> = wire.records.iter().collect();
        loop {
            let before = pending.len();
            let mut waiting = Vec::new();
            let mut refused = Vec::new();
            for s in pending {
                match self.accept_member(s) {
                    Ok(changed) => {
                        out.members |= changed;
                        if changed {
                            out.taken.records.push(s.clone());
                        }
                    }
                    Err(Rejection::SignerUnknown(_) | Rejection::SignerNotAdmin(_)) => {
                        waiting.push(s)
                    }
                    Err(e) => refused.push((about(s), e)),
                }
            }
            out.rejected.extend(refused);
            pending = waiting;
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        for s in pending {
            match self.accept_member(s) {
                Ok(changed) => {
                    out.members |= changed;
                    if changed {
                        out.taken.records.push(s.clone());
                    }
                }
                Err(e) => out.rejected.push((about(s), e)),
            }
        }
        for s in &wire.addrs {
            match self.accept_addrs(s) {
                Ok(changed) => {
                    out.addrs |= changed;
                    if changed {
                        out.taken.addrs.push(s.clone());
                    }
                }
                Err(Rejection::Stale { .. } | Rejection::RemovalIsFinal(_)) => {}
                Err(e) => out.rejected.push((None, e)),
            }
        }
        for s in &wire.rules {
            match self.accept_rules(s) {
                Ok(changed) => {
                    out.rules |= changed;
                    if changed {
                        out.taken.rules.push(s.clone());
                    }
                }
                Err(Rejection::Stale { .. }) => {}
                Err(e) => out.rejected.push((None, e)),
            }
        }
        for s in &wire.grants {
            match self.accept_grant(s) {
                Ok(changed) => {
                    out.grants |= changed;
                    if changed {
                        out.taken.grants.push(s.clone());
                    }
                }
                Err(Rejection::Stale { .. }) => {}
                Err(e) => out.rejected.push((None, e)),
            }
        }
        if let Some(s) = &wire.rotation {
            match self.accept_rotation(s) {
                Ok(changed) => {
                    out.rotation = changed;
                    if changed {
                        out.taken.rotation = Some(s.clone());
                    }
                }
                Err(Rejection::Stale { .. }) => {}
                Err(e) => out.rejected.push((None, e)),
            }
        }
        out
    }
}

/// A device name or id on the command line did not name one member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No member matches.
    #[error(
        "no member of the mesh is {0:?}: give its id (or 7 or more of its first characters) or its name, as `blazectl peers` shows them"
    )]
    NoMatch(String),
    /// A prefix under 7 characters.
    #[error("{0:?} is too short to name a device: give at least 7 characters of its id")]
    TooShort(String),
    /// Several members match.
    #[error("{spec:?} names more than one device: {}", candidates.join(", "))]
    Ambiguous {
        /// What was given.
        spec: String,
        /// The devices it could be, as `id (name)`.
        candidates: Vec<String>,
    },
}

/// Finds the one record `spec` names among `records`: a full id, an id
/// prefix of at least 7 characters (dashes and case do not matter), or a
/// name. An exact id or name wins over a prefix.
pub fn resolve<'a>(
    records: impl Iterator<Item = &'a MemberRecord>,
    spec: &str,
) -> Result<DeviceId, ResolveError> {
    let records: Vec<&MemberRecord> = records.collect();
    if let Ok(id) = spec.parse::<DeviceId>()
        && records.iter().any(|r| r.device == id)
    {
        return Ok(id);
    }
    let named: Vec<&&MemberRecord> = records.iter().filter(|r| r.name == spec).collect();
    let plain: String = spec
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let prefixed: Vec<&&MemberRecord> = if plain.len() >= 7 {
        records
            .iter()
            .filter(|r| {
                let shown: String = r.device.to_string().chars().filter(|c| *c != '-').collect();
                shown.starts_with(&plain) || r.device.to_base32().starts_with(&plain)
            })
            .collect()
    } else {
        Vec::new()
    };
    let found: Vec<&MemberRecord> = if named.is_empty() {
        prefixed.iter().map(|r| **r).collect()
    } else {
        named.iter().map(|r| **r).collect()
    };
    match found.as_slice() {
        [one] => Ok(one.device),
        [] if plain.len() < 7 && named.is_empty() => Err(ResolveError::TooShort(spec.to_owned())),
        [] => Err(ResolveError::NoMatch(spec.to_owned())),
        many => Err(ResolveError::Ambiguous {
            spec: spec.to_owned(),
            candidates: many
                .iter()
                .map(|r| format!("{} ({})", r.device, r.name))
                .collect(),
        }),
    }
}

fn about(s: &Signed) -> Option<DeviceId> {
    s.decode::<MemberRecord>().ok().map(|r| r.device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::SecretKey;

    struct Dev {
        key: SecretKey,
        id: DeviceId,
    }

    fn dev(n: u8) -> Dev {
        let key = SecretKey::from_slice(&[n; 32]).expect("key");
        let id = crate::identity::device_id_of(&key.public_key());
        Dev { key, id }
    }

    fn record(g: &Genesis, who: &Dev, signer: &Dev, version: u64, admin: bool) -> MemberRecord {
        MemberRecord {
            mesh: mesh_id_of(g),
            device: who.id,
            key: sign::public_key_bytes(&who.key),
            name: format!("dev-{}", who.id.short()),
            role: Role::Device,
            teams: Vec::new(),
            admin,
            removed: None,
            version,
            signer: signer.id,
            signed_ms: 0,
        }
    }

    fn signed(by: &Dev, rec: &MemberRecord) -> Signed {
        sign::sign(&by.key, Purpose::Member, rec).expect("sign")
    }

    /// A mesh created by device 1, with device 2 an admin and 3 a member.
    fn mesh() -> (Genesis, Roster, [Dev; 4]) {
        let devs = [dev(1), dev(2), dev(3), dev(4)];
        let g = Genesis {
            creator: devs[0].id,
            salt: [7; 16],
        };
        let mut r = Roster::new(g);
        let root = record(&g, &devs[0], &devs[0], 1, true);
        assert_eq!(r.accept_member(&signed(&devs[0], &root)), Ok(true));
        let admin = record(&g, &devs[1], &devs[0], 1, true);
        assert_eq!(r.accept_member(&signed(&devs[0], &admin)), Ok(true));
        let member = record(&g, &devs[2], &devs[1], 1, false);
        assert_eq!(r.accept_member(&signed(&devs[1], &member)), Ok(true));
        (g, r, devs)
    }

    #[test]
    fn the_chain_runs_from_the_creator_through_admins_to_records() {
        let (g, r, d) = mesh();
        assert!(r.is_admin(&d[0].id) && r.is_admin(&d[1].id));
        assert!(r.is_active(&d[2].id) && !r.is_admin(&d[2].id));

        // A member that knows nothing takes the chain of device 3 alone.
        let mut fresh = Roster::new(g);
        let merged = fresh.merge(&WireRoster {
            records: r.chain(&d[2].id),
            ..WireRoster::default()
        });
        assert!(merged.rejected.is_empty(), "{:?}", merged.rejected);
        assert!(fresh.is_active(&d[2].id));
        assert_eq!(r.chain(&d[2].id).len(), 3, "creator, admin, member");

        // Records in reverse order wait for their signers.
        let mut wire = r.to_wire();
        wire.records.reverse();
        let mut fresh = Roster::new(g);
        let merged = fresh.merge(&wire);
        assert!(merged.members && merged.rejected.is_empty());
        assert!(fresh.is_active(&d[2].id));
    }

    #[test]
    fn only_the_creator_bound_to_the_mesh_id_is_the_root() {
        let (g, _, d) = mesh();
        let mut r = Roster::new(g);
        // Device 2 claims to be a root by signing itself an admin.
        let fake = record(&g, &d[1], &d[1], 1, true);
        assert_eq!(
            r.accept_member(&signed(&d[1], &fake)),
            Err(Rejection::SignerNotAdmin(d[1].id))
        );
        // Another salt is another mesh.
        let other = Genesis { salt: [8; 16], ..g };
        assert_ne!(mesh_id_of(&other), mesh_id_of(&g));
        let root = record(&other, &d[0], &d[0], 1, true);
        assert_eq!(
            r.accept_member(&signed(&d[0], &root)),
            Err(Rejection::WrongMesh)
        );
    }

    #[test]
    fn a_forged_signature_or_a_borrowed_key_is_refused() {
        let (g, mut r, d) = mesh();
        // Device 4's record claims admin 2 signed it, but 3 did.
        let rec = record(&g, &d[3], &d[1], 1, false);
        assert_eq!(
            r.accept_member(&signed(&d[2], &rec)),
            Err(Rejection::BadSignature(d[1].id))
        );
        // A record whose key is not the device's.
        let mut rec = record(&g, &d[3], &d[1], 1, false);
        rec.key = sign::public_key_bytes(&d[2].key);
        assert_eq!(
            r.accept_member(&signed(&d[1], &rec)),
            Err(Rejection::KeyMismatch(d[3].id))
        );
        // Damaged bytes.
        let mut s = signed(&d[1], &record(&g, &d[3], &d[1], 1, false));
        s.sig[3] ^= 0x40;
        assert_eq!(r.accept_member(&s), Err(Rejection::BadSignature(d[1].id)));
        assert!(!r.is_active(&d[3].id));
    }

    #[test]
    fn a_non_admin_cannot_sign_and_a_removed_admin_no_longer_can() {
        let (g, mut r, d) = mesh();
        // Member 3 tries to remove admin 2.
        let mut rm = record(&g, &d[1], &d[2], 2, true);
        rm.removed = Some(Removal {
            by: d[2].id,
            at_ms: 1,
            left: false,
            cutoffs: BTreeMap::new(),
            incarnations: BTreeMap::new(),
        });
        assert_eq!(
            r.accept_member(&signed(&d[2], &rm)),
            Err(Rejection::SignerNotAdmin(d[2].id))
        );
        assert!(r.is_admin(&d[1].id));

        // The creator removes admin 2; records 2 signs after that fail.
        let mut rm = record(&g, &d[1], &d[0], 2, true);
        rm.removed = Some(Removal {
            by: d[0].id,
            at_ms: 1,
            left: false,
            cutoffs: BTreeMap::new(),
            incarnations: BTreeMap::new(),
        });
        assert_eq!(r.accept_member(&signed(&d[0], &rm)), Ok(true));
        let late = record(&g, &d[3], &d[1], 1, false);
        assert_eq!(
            r.accept_member(&signed(&d[1], &late)),
            Err(Rejection::SignerNotAdmin(d[1].id))
        );
        // And the removal is final, even from the creator.
        let back = record(&g, &d[1], &d[0], 3, true);
        assert_eq!(
            r.accept_member(&signed(&d[0], &back)),
            Err(Rejection::RemovalIsFinal(d[1].id))
        );
    }

    #[test]
    fn an_older_version_is_a_replay_and_is_ignored() {
        let (g, mut r, d) = mesh();
        let v1 = signed(&d[1], &record(&g, &d[2], &d[1], 1, false));
        let mut rec = record(&g, &d[2], &d[1], 2, false);
        rec.teams = vec!["ios".into()];
        let v2 = signed(&d[1], &rec);
        assert_eq!(r.accept_member(&v2), Ok(true));
        assert_eq!(
            r.accept_member(&v1),
            Err(Rejection::Stale { held: 2, got: 1 })
        );
        assert_eq!(
            r.record(&d[2].id).map(|x| x.teams.clone()),
            Some(vec!["ios".into()])
        );
        // The same record again is no change and no error.
        assert_eq!(r.accept_member(&v2), Ok(false));
    }

    #[test]
    fn concurrent_edits_of_one_version_end_the_same_in_any_order() {
        let (g, r, d) = mesh();
        let mut a = record(&g, &d[2], &d[0], 2, false);
        a.name = "by-creator".into();
        let mut b = record(&g, &d[2], &d[1], 2, false);
        b.name = "by-admin".into();
        let (sa, sb) = (signed(&d[0], &a), signed(&d[1], &b));
        let mut x = r.clone();
        let mut y = r;
        let _ = x.accept_member(&sa);
        let _ = x.accept_member(&sb);
        let _ = y.accept_member(&sb);
        let _ = y.accept_member(&sa);
        assert_eq!(x.record(&d[2].id), y.record(&d[2].id));
    }

    #[test]
    fn a_member_may_sign_its_own_leaving_and_nothing_else() {
        let (g, mut r, d) = mesh();
        let mut promote = record(&g, &d[2], &d[2], 2, true);
        assert_eq!(
            r.accept_member(&signed(&d[2], &promote)),
            Err(Rejection::SignerNotAdmin(d[2].id))
        );
        promote.admin = false;
        promote.removed = Some(Removal {
            by: d[2].id,
            at_ms: 5,
            left: true,
            cutoffs: BTreeMap::new(),
            incarnations: BTreeMap::new(),
        });
        assert_eq!(r.accept_member(&signed(&d[2], &promote)), Ok(true));
        assert!(!r.is_active(&d[2].id));
        assert!(r.removal(&d[2].id).is_some_and(|x| x.left));
    }

    #[test]
    fn addresses_are_signed_by_their_device_and_rotations_by_an_admin() {
        let (g, mut r, d) = mesh();
        let a = Addresses {
            mesh: mesh_id_of(&g),
            device: d[2].id,
            addrs: vec!["10.0.0.3:7340".into()],
            version: 5,
        };
        let by_other = sign::sign(&d[1].key, Purpose::Addresses, &a).expect("sign");
        assert_eq!(
            r.accept_addrs(&by_other),
            Err(Rejection::BadSignature(d[2].id))
        );
        let own = sign::sign(&d[2].key, Purpose::Addresses, &a).expect("sign");
        assert_eq!(r.accept_addrs(&own), Ok(true));
        assert_eq!(r.addrs(&d[2].id), ["10.0.0.3:7340".to_owned()]);
        let old = Addresses { version: 4, ..a };
        let old = sign::sign(&d[2].key, Purpose::Addresses, &old).expect("sign");
        assert_eq!(
            r.accept_addrs(&old),
            Err(Rejection::Stale { held: 5, got: 4 })
        );

        let rot = Rotation {
            mesh: mesh_id_of(&g),
            epoch: 1,
            signer: d[2].id,
            excluded: Vec::new(),
            keys: Vec::new(),
        };
        let s = sign::sign(&d[2].key, Purpose::Rotation, &rot).expect("sign");
        assert_eq!(
            r.accept_rotation(&s),
            Err(Rejection::SignerNotAdmin(d[2].id))
        );
        let rot = Rotation {
            signer: d[1].id,
            ..rot
        };
        let s = sign::sign(&d[1].key, Purpose::Rotation, &rot).expect("sign");
        assert_eq!(r.accept_rotation(&s), Ok(true));
        assert_eq!(r.rotation().map(|x| x.epoch), Some(1));
    }

    #[test]
    fn a_device_is_named_by_id_prefix_or_name_and_ambiguity_lists_candidates() {
        let (g, mut r, d) = mesh();
        let id = d[2].id;
        assert_eq!(r.resolve(&id.to_string()), Ok(id));
        assert_eq!(r.resolve(&id.to_base32()), Ok(id));
        assert_eq!(r.resolve(&id.to_string()[..7]), Ok(id));
        assert_eq!(r.resolve(&id.to_string()[..7].to_lowercase()), Ok(id));
        assert_eq!(r.resolve(&id.to_string()[..10]), Ok(id), "across a dash");
        assert_eq!(r.resolve(&format!("dev-{}", id.short())), Ok(id));
        assert_eq!(r.resolve("abc"), Err(ResolveError::TooShort("abc".into())));
        assert!(matches!(
            r.resolve("zzzzzzzz"),
            Err(ResolveError::NoMatch(_))
        ));
        // Two devices with one name: both are listed.
        let mut other = record(&g, &d[3], &d[0], 1, false);
        other.name = format!("dev-{}", id.short());
        r.accept_member(&signed(&d[0], &other)).expect("take");
        match r.resolve(&format!("dev-{}", id.short())) {
            Err(ResolveError::Ambiguous { candidates, .. }) => {
                assert_eq!(candidates.len(), 2, "{candidates:?}");
                assert!(candidates.iter().any(|c| c.contains(&d[3].id.to_string())));
            }
            other => panic!("expected ambiguity, got {other:?}"),
        }
    }

    #[test]
    fn local_edits_go_through_the_same_rules() {
        let (_, mut r, d) = mesh();
        // A non-admin's edit is refused like a forged one.
        let e = r.edit(&d[2].key, &d[1].id, 1, |x| x.name = "mine".into());
        assert_eq!(e, Err(Rejection::SignerNotAdmin(d[2].id)));
        let s = r
            .edit(&d[1].key, &d[2].id, 1, |x| x.teams = vec!["web".into()])
            .expect("admin edit");
        assert_eq!(r.record(&d[2].id).map(|x| x.version), Some(2));
        assert_eq!(r.signed_record(&d[2].id), Some(&s));
        let admitted = r
            .admit(
                &d[0].key,
                &sign::public_key_bytes(&d[3].key),
                "new",
                Role::Hub,
                vec![],
                1,
            )
            .expect("admit");
        assert!(r.is_active(&d[3].id));
        assert_eq!(
            admitted.decode::<MemberRecord>().map(|x| x.role),
            Ok(Role::Hub)
        );
        let created = Roster::create(&d[0].key, "first", Role::Device, [3; 16], 1).expect("create");
        assert!(created.is_admin(&d[0].id));
        assert_eq!(created.genesis().creator, d[0].id);
    }
}
