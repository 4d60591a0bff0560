//! Membership on the running mesh: taking in what peers say (signed
//! records, addresses, secret rotations), learning that this device was
//! removed, and this device's own changes as an admin. The rules that
//! decide what counts are in [`crate::access::roster`]; this module applies
//! their outcome: it saves, logs, and tells the sessions, the sync driver
//! and discovery.
//!
//! Invariants:
//! - A change that cannot be had again from peers (a new secret, this
//!   device's removal) is saved before anyone is told of it. Records
//!   gossiped or signed here for a joining device are saved in batches: a
//!   peer that holds them shows them again.
//! - An admin that holds the records of devices that left after the
//!   latest secret rotation rotates the secret, so whoever left cannot
//!   prove membership with a copy of it.
//! - A device that learns it was removed (or left) forgets the mesh at
//!   once: keys, membership and invites; its databases stay.

use std::collections::{BTreeMap, BTreeSet};

use blazedb_proto::mesh::{
    Genesis, MemberRecord, MeshId, PeerMessage, Role, Roster as WireRoster, Rotation, Signed,
    WrappedKey,
};
use blazedb_proto::{DeviceId, Hlc};

use super::state::{Departure, MeshKeys, MeshState};
use super::{Shared, close_code, lock};
use crate::access::Roster;
use crate::access::view::DeviceAttrs;
use crate::crypto::wrap;
use crate::identity::Identity;
use crate::store::wall_ms;
use crate::sync::Cutoff;

/// The active members that are hubs.
pub(crate) fn hubs_of(roster: &Roster) -> BTreeSet<DeviceId> {
    roster
        .active()
        .filter(|r| r.role == Role::Hub)
        .map(|r| r.device)
        .collect()
}

/// Every database's access rules, and what they select members by, for
/// the sync driver.
pub(crate) fn access_of(roster: &Roster) -> super::driver::Input {
    super::driver::Input::Access {
        rules: roster.all_rules().cloned().collect(),
        devices: attrs_of(roster),
    }
}

/// What rules select each active member by.
pub(crate) fn attrs_of(roster: &Roster) -> BTreeMap<DeviceId, DeviceAttrs> {
    roster
        .active()
        .map(|r| {
            let attrs = DeviceAttrs {
                name: r.name.clone(),
                teams: r.teams.clone(),
                hub: r.role == Role::Hub,
            };
            (r.device, attrs)
        })
        .collect()
}

/// The HKDF context of a mesh secret wrapped for `device`.
fn secret_context(mesh: &MeshId, epoch: u32, device: &DeviceId) -> Vec<u8> {
    let mut c = b"blazedb mesh secret\0".to_vec();
    c.extend_from_slice(&mesh.0);
    c.extend_from_slice(&epoch.to_be_bytes());
    c.extend_from_slice(&device.0);
    c
}

/// Takes the latest rotation's secret if it is newer than the one held
/// and this device can open its copy. Returns whether the keys changed.
fn apply_rotation(state: &mut MeshState, identity: &Identity) -> bool {
    let (Some(roster), Some(keys)) = (&state.roster, &mut state.keys) else {
        return false;
    };
    let Some(rot) = roster.rotation() else {
        return false;
    };
    if rot.epoch < keys.epoch {
        return false;
    }
    let me = identity.device_id();
    let Some(mine) = rot.keys.iter().find(|k| k.device == me) else {
        return false;
    };
    let context = secret_context(&rot.mesh, rot.epoch, &me);
    match wrap::unwrap(identity.secret(), &mine.ephemeral, &mine.sealed, &context) {
        Ok(secret) if secret != keys.secret || rot.epoch != keys.epoch => {
            *keys = MeshKeys {
                id: keys.id,
                secret,
                epoch: rot.epoch,
            };
            tracing::info!(epoch = rot.epoch, "took the mesh's new secret");
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(
                signer = %rot.signer,
                "cannot open this device's copy of the mesh's new secret: {e}"
            );
            false
        }
    }
}

/// As an admin, makes a new secret when devices left after the latest
/// rotation, wrapped for every active member. Returns whether it did.
fn rotate_if_needed(state: &mut MeshState, identity: &Identity) -> anyhow::Result<bool> {
    let (Some(roster), Some(keys)) = (&mut state.roster, &mut state.keys) else {
        return Ok(false);
    };
    let me = identity.device_id();
    if !roster.is_admin(&me) {
        return Ok(false);
    }
    let gone: Vec<DeviceId> = roster
        .records()
        .filter(|r| r.removed.is_some())
        .map(|r| r.device)
        .collect();
    let excluded = roster
        .rotation()
        .map(|r| r.excluded.clone())
        .unwrap_or_default();
    if gone.iter().all(|d| excluded.contains(d)) {
        return Ok(false);
    }
    let epoch = keys.epoch.max(roster.rotation().map_or(0, |r| r.epoch)) + 1;
    let secret = super::state::random::<32>()?;
    let mut wrapped = Vec::new();
    for rec in roster.active() {
        let key = p256::PublicKey::from_sec1_bytes(&rec.key)
            .map_err(|_| anyhow::anyhow!("member {} has no valid key", rec.device))?;
        let (ephemeral, sealed) =
            wrap::wrap(&key, &secret, &secret_context(&keys.id, epoch, &rec.device))?;
        wrapped.push(WrappedKey {
            device: rec.device,
            ephemeral,
            sealed,
        });
    }
    let rotation = Rotation {
        mesh: keys.id,
        epoch,
        signer: me,
        excluded: gone,
        keys: wrapped,
    };
    roster
        .take_rotation(identity.secret(), &rotation)
        .map_err(|e| anyhow::anyhow!("cannot sign the new secret: {e}"))?;
    *keys = MeshKeys {
        id: keys.id,
        secret,
        epoch,
    };
    tracing::info!(epoch, "rotated the mesh secret after a device left");
    Ok(true)
}

/// Where each removed device's operations stop being taken, as its
/// removal says: per database, the highest seq its remover held; elsewhere,
/// anything stamped after the moment of removal.
pub(crate) fn cutoffs_of(roster: &Roster) -> BTreeMap<DeviceId, Cutoff> {
    roster
        .records()
        .filter_map(|r| {
            let removal = r.removed.as_ref()?;
            Some((
                r.device,
                Cutoff {
                    per_db: removal.cutoffs.clone(),
                    incarnations: removal.incarnations.clone(),
                    after: Hlc::new(removal.at_ms, u16::MAX),
                },
            ))
        })
        .collect()
}

/// Logs what a merge refused: forgeries and overreach as warnings, a
/// peer being behind for information.
fn log_rejections(from: &DeviceId, rejected: &[(Option<DeviceId>, crate::access::Rejection)]) {
    for (about, why) in rejected {
        let about = about.map(|d| d.to_string()).unwrap_or_else(|| "?".into());
        if why.is_suspicious() {
            tracing::warn!(peer = %from, device = about, "ignored a member record: {why}");
        } else {
            tracing::info!(peer = %from, device = about, "ignored a member record: {why}");
        }
    }
}

/// What the mesh looks like to `blazectl mesh status`.
#[derive(Debug, Clone, Default)]
pub struct MembershipView {
    /// The mesh and its secret's epoch.
    pub mesh: Option<(MeshId, u32)>,
    /// This device's record.
    pub me: Option<MemberRecord>,
    /// The active admins.
    pub admins: Vec<MemberRecord>,
    /// Active members, this device excluded.
    pub members: usize,
    /// How this device left its last mesh.
    pub departed: Option<Departure>,
}

impl Shared {
    /// The signed parts of this device's `Hello`: its keys, its record's
    /// chain and its addresses.
    pub(crate) fn hello_parts(&self) -> Option<(MeshKeys, Vec<Signed>, Signed)> {
        let s = lock(&self.state);
        let keys = s.keys.clone()?;
        let roster = s.roster.as_ref()?;
        let addrs = roster.signed_addrs(&self.me)?.clone();
        Some((keys, roster.chain(&self.me), addrs))
    }

    /// Everything known of the membership, to pass on.
    pub(crate) fn roster_wire(&self) -> WireRoster {
        lock(&self.state)
            .roster
            .as_ref()
            .map(Roster::to_wire)
            .unwrap_or_default()
    }

    /// `device`'s removal chain, if it was removed or left.
    pub(crate) fn removal_chain(&self, device: &DeviceId) -> Option<Vec<Signed>> {
        let s = lock(&self.state);
        let roster = s.roster.as_ref()?;
        roster.removal(device)?;
        Some(roster.chain(device))
    }

    /// Whether `device` is an active member.
    pub(crate) fn is_active(&self, device: &DeviceId) -> bool {
        lock(&self.state).is_active(device)
    }

    /// Takes in what `from` says of the membership.
    pub(crate) fn merge_roster(&self, from: &DeviceId, wire: &WireRoster) {
        let mut s = lock(&self.state);
        let Some(roster) = s.roster.as_mut() else {
            return;
        };
        let merged = roster.merge(wire);
        log_rejections(from, &merged.rejected);
        if !merged.changed() {
            return;
        }
        if let Some(rec) = roster
            .record(&self.me)
            .filter(|r| r.removed.is_some())
            .cloned()
        {
            self.forget_mesh(&mut s, &rec);
            return;
        }
        let rekeyed = merged.rotation && apply_rotation(&mut s, &self.identity);
        let rotated = match rotate_if_needed(&mut s, &self.identity) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot rotate the mesh secret: {e:#}");
                false
            }
        };
        let mut delta = merged.taken;
        if rotated {
            delta.rotation = s.roster.as_ref().and_then(|r| r.to_wire().rotation);
        }
        if rekeyed || rotated {
            self.save(&s);
        } else {
            // Gossip is saved in batches: lost in a crash, it comes back
            // with the next session's roster.
            self.save_soon();
        }
        drop(s);
        if rekeyed || rotated {
            self.keys_changed();
        }
        self.members_changed(Some((&delta, from)));
    }

    /// A member said this device was removed, with `chain`; if the records
    /// check out, forget the mesh. Returns whether they did.
    pub(crate) fn learned_removed(&self, from: &DeviceId, chain: &[Signed]) -> bool {
        let mut s = lock(&self.state);
        let Some(roster) = s.roster.as_mut() else {
            return false;
        };
        let merged = roster.merge(&WireRoster {
            records: chain.to_vec(),
            ..WireRoster::default()
        });
        log_rejections(from, &merged.rejected);
        match roster
            .record(&self.me)
            .filter(|r| r.removed.is_some())
            .cloned()
        {
            Some(rec) => {
                self.forget_mesh(&mut s, &rec);
                true
            }
            None => {
                tracing::warn!(
                    peer = %from,
                    "a peer says this device was removed, but its records do not show it"
                );
                false
            }
        }
    }

    /// Forgets the mesh after this device's final record `rec`, and closes
    /// every session.
    pub(crate) fn forget_mesh(&self, s: &mut MeshState, rec: &MemberRecord) {
        let Some(removal) = rec.removed.clone() else {
            return;
        };
        let mesh = rec.mesh.to_hex();
        let by_name = s
            .roster
            .as_ref()
            .and_then(|r| r.record(&removal.by))
            .map(|r| r.name.clone())
            .unwrap_or_default();
        if removal.left {
            tracing::info!(mesh = %mesh, "left the mesh; the databases stay on this device");
        } else {
            tracing::warn!(
                mesh = %mesh,
                by = %removal.by,
                by_name,
                "this device was removed from the mesh by {by_name} ({}): it forgets the mesh \
                 and keeps its databases on this device only. Join again with a new invite \
                 and a new device key to sync",
                removal.by
            );
        }
        s.forget(Departure {
            mesh,
            by: removal.by.to_string(),
            by_name,
            at_ms: removal.at_ms,
            left: removal.left,
        });
        self.save(s);
        self.keys_changed();
        let _ = self
            .driver
            .send(super::driver::Input::Members(vec![self.me]));
        for sess in lock(&self.sessions).values() {
            sess.conn.close(close_code::REMOVED, b"left the mesh");
        }
        lock(&self.discovered).clear();
    }

    /// The membership changed: tell the sync driver (for compaction),
    /// every session (removed peers get their removal and are closed) and
    /// the dial loop. With `delta`, sessions get only what changed, and
    /// the peer it came from gets nothing back; without, the whole roster.
    pub(crate) fn members_changed(&self, delta: Option<(&WireRoster, &DeviceId)>) {
        self.exchange_keys();
        let (active, hubs, news, removed) = {
            let s = lock(&self.state);
            let Some(roster) = s.roster.as_ref() else {
                return;
            };
            let _ = self
                .driver
                .send(super::driver::Input::Cutoffs(cutoffs_of(roster)));
            let _ = self.driver.send(access_of(roster));
            let active: Vec<DeviceId> = roster.active().map(|r| r.device).collect();
            let removed: BTreeMap<DeviceId, Vec<Signed>> = roster
                .records()
                .filter(|r| r.removed.is_some())
                .map(|r| (r.device, roster.chain(&r.device)))
                .collect();
            let news = match delta {
                Some((d, from)) => (Some(*from).filter(|f| *f != self.me), d.clone()),
                None => (None, roster.to_wire()),
            };
            (active, hubs_of(roster), news, removed)
        };
        let _ = self.driver.send(super::driver::Input::Members(active));
        let _ = self.driver.send(super::driver::Input::Hubs(hubs));
        for (peer, sess) in lock(&self.sessions).iter() {
            if let Some(chain) = removed.get(peer) {
                let msg = PeerMessage::Removed {
                    chain: chain.clone(),
                };
                let _ = sess.ctl.send(super::session::Control::Send(Box::new(msg)));
            }
        }
        self.gossip_roster(news.0, news.1);
        self.wake.notify_one();
    }

    /// Tells discovery the keys changed (a new mesh, a new secret, or
    /// none), so it announces new tags or stops.
    pub(crate) fn keys_changed(&self) {
        self.mesh_changed.send_modify(|g| *g += 1);
    }

    /// As the inviter, admits the device with public key `key` that used
    /// an invite for `teams`: signs its record. Returns the keys and
    /// roster for its `Welcome`.
    pub(crate) fn admit(
        &self,
        key: &[u8],
        name: &str,
        role: Role,
        teams: Vec<String>,
    ) -> Result<(MeshKeys, Genesis, WireRoster), String> {
        let mut s = lock(&self.state);
        let keys = s.keys.clone().ok_or("this device is in no mesh")?;
        let roster = s.roster.as_mut().ok_or("this device is in no mesh")?;
        let device =
            crate::access::sign::device_of_key(key).ok_or("the device's key is not valid")?;
        let mut delta = WireRoster::default();
        if !roster.is_active(&device) {
            let signed = roster
                .admit(self.identity.secret(), key, name, role, teams, wall_ms())
                .map_err(|e| format!("cannot sign the device's member record: {e}"))?;
            delta.records.push(signed);
        }
        let out = (keys, roster.genesis(), roster.to_wire());
        // Saved with the next batch: if a crash loses the record, the
        // device shows it again (signed by this device) in its `Hello`.
        self.save_soon();
        drop(s);
        self.members_changed(Some((&delta, &self.me)));
        Ok(out)
    }

    /// As the joining device, takes what the inviter's `Welcome` carries,
    /// once it checks out: the mesh id follows from the genesis, and the
    /// roster holds a record admitting this device.
    pub(crate) fn joined(
        &self,
        keys: MeshKeys,
        genesis: Genesis,
        wire: &WireRoster,
    ) -> Result<(), String> {
        let mut roster = Roster::new(genesis);
        if roster.mesh() != keys.id {
            return Err("the mesh id does not follow from its creator: not joining".into());
        }
        let merged = roster.merge(wire);
        log_rejections(&genesis.creator, &merged.rejected);
        if !roster.is_active(&self.me) {
            return Err("the inviter did not sign a member record for this device".into());
        }
        let addrs = lock(&self.addrs).clone();
        roster
            .set_own_addrs(self.identity.secret(), &addrs, wall_ms())
            .map_err(|e| format!("cannot sign this device's addresses: {e}"))?;
        {
            let mut s = lock(&self.state);
            s.keys = Some(keys);
            s.roster = Some(roster);
            s.departed = None;
            self.save(&s);
        }
        self.keys_changed();
        self.members_changed(None);
        Ok(())
    }

    /// What `blazectl mesh status` shows of the membership.
    pub(crate) fn membership(&self) -> MembershipView {
        let s = lock(&self.state);
        let Some(roster) = s.roster.as_ref() else {
            return MembershipView {
                departed: s.departed.clone(),
                ..MembershipView::default()
            };
        };
        MembershipView {
            mesh: s.keys.as_ref().map(|k| (k.id, k.epoch)),
            me: roster.record(&self.me).cloned(),
            admins: roster.admins().cloned().collect(),
            members: roster.active().filter(|r| r.device != self.me).count(),
            departed: s.departed.clone(),
        }
    }

    /// Runs `change` on the state as an admin: it must hold a mesh, and
    /// this device must be an active admin. Saves and tells everyone after.
    pub(crate) fn as_admin<T>(
        &self,
        change: impl FnOnce(&mut MeshState, &Identity) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut s = lock(&self.state);
        let roster = s.roster.as_ref().ok_or_else(|| {
            anyhow::anyhow!("this device is in no mesh: run `blazectl mesh create` or join one")
        })?;
        if !roster.is_admin(&self.me) {
            let admins: Vec<String> = roster
                .admins()
                .map(|r| format!("{} ({})", r.name, r.device))
                .collect();
            anyhow::bail!(
                "only an admin of the mesh can do that, and this device is not one; ask an \
                 admin: {}",
                admins.join(", ")
            );
        }
        let out = change(&mut s, &self.identity)?;
        let rotated = rotate_if_needed(&mut s, &self.identity)?;
        s.save()?;
        drop(s);
        if rotated {
            self.keys_changed();
        }
        self.members_changed(None);
        Ok(out)
    }
}
