//! Handing end-to-end encrypted databases' content keys around the mesh.
//!
//! A key travels as signed [`KeyGrant`] records in the membership, each
//! the key of one epoch wrapped for one member: relays, hubs included,
//! pass grants on without being able to open them.
//!
//! Invariants:
//! - A device takes from grants only keys wrapped for itself, and keeps
//!   them in the store's keyring (a second key of an epoch is refused).
//! - A device that holds a database's keys grants every epoch it holds to
//!   each active member that may read the database and has no grant of
//!   that epoch yet: devices whose access rules give them anything, and
//!   hubs only once an admin gave them an earlier grant. Removed devices
//!   get nothing new.
//! - Only an admin gives a hub its first key (`db key grant`).
//! - When a device that held a database's newest key may hold it no more
//!   (it was removed, or the rules no longer let it read the database),
//!   the holder of that key with the lowest id among those that may still
//!   hold it makes the next epoch, and grants it like any other: new ops
//!   are sealed under it, which the device that lost access cannot open.
//!   One rotator, chosen alike by every holder from the same membership,
//!   keeps two devices from making rival keys of one epoch. A rotator that
//!   is offline rotates when it is back.

use std::collections::BTreeSet;
use std::time::Duration;

use blazedb_proto::DeviceId;
use blazedb_proto::mesh::{KeyGrant, Role, Roster as WireRoster, WrappedKey};

use super::{Shared, lock};
use crate::access::Roster;
use crate::access::view::{Access, DeviceAttrs, access};
use crate::crypto::seal::ContentKey;
use crate::store::wall_ms;

/// How often a device looks for members that lack keys it holds, besides
/// whenever the membership changes.
const KEY_CHECK: Duration = Duration::from_secs(2);

/// Whether `device` may get `db`'s key from any holder: it is active and
/// not removed, and either a device the access rules let read something,
/// or a hub an admin already gave a key of the database.
fn may_hold(roster: &Roster, db: &str, device: &DeviceId) -> bool {
    let Some(rec) = roster.record(device).filter(|r| r.removed.is_none()) else {
        return false;
    };
    if rec.role == Role::Hub {
        return roster
            .grants()
            .any(|g| g.db == db && g.key.device == *device && roster.is_admin(&g.granter));
    }
    let attrs = DeviceAttrs {
        name: rec.name.clone(),
        teams: rec.teams.clone(),
        hub: false,
    };
    match access(roster.rules(db), device, Some(&attrs), None) {
        Access::Full => true,
        Access::Partial(view) => view.sees_anything(),
    }
}

/// The devices that held `db`'s key of `epoch`: every granter and
/// recipient of a grant of it.
fn holders(roster: &Roster, db: &str, epoch: u32) -> BTreeSet<DeviceId> {
    roster
        .grants()
        .filter(|g| g.db == db && g.epoch == epoch)
        .flat_map(|g| [g.granter, g.key.device])
        .collect()
}

/// The newest key epoch of `db` any grant names.
fn newest_granted(roster: &Roster, db: &str) -> u32 {
    roster
        .grants()
        .filter(|g| g.db == db)
        .map(|g| g.epoch)
        .max()
        .unwrap_or(0)
}

/// Whether this device (`me`, holding `db`'s key of `epoch`, the newest)
/// is the one to make the next epoch: a device that held it may hold it
/// no more, and `me` has the lowest id of those that still may.
fn rotates(roster: &Roster, db: &str, epoch: u32, me: &DeviceId) -> bool {
    if newest_granted(roster, db) > epoch {
        // Someone made a newer one; this device's grant is on its way.
        return false;
    }
    let held = holders(roster, db, epoch);
    let (keep, lost): (Vec<DeviceId>, Vec<DeviceId>) = held
        .into_iter()
        .partition(|d| d == me || may_hold(roster, db, d));
    !lost.is_empty() && keep.iter().min() == Some(me)
}

/// Wraps `key` of `db` for `device` and signs the grant as `granter`.
fn grant(
    shared: &Shared,
    roster: &mut Roster,
    db: &str,
    key: &ContentKey,
    device: &DeviceId,
) -> anyhow::Result<blazedb_proto::mesh::Signed> {
    let rec = roster
        .record(device)
        .ok_or_else(|| anyhow::anyhow!("{device} is not a member"))?;
    let public = p256::PublicKey::from_sec1_bytes(&rec.key)
        .map_err(|_| anyhow::anyhow!("member {device} has no valid key"))?;
    let (ephemeral, sealed) = key.wrap_for(&roster.mesh(), db, device, &public)?;
    let g = KeyGrant {
        mesh: roster.mesh(),
        db: db.to_owned(),
        epoch: key.epoch,
        granter: shared.me,
        at_ms: wall_ms(),
        key: WrappedKey {
            device: *device,
            ephemeral,
            sealed,
        },
    };
    roster
        .take_grant(shared.identity.secret(), &g)
        .map_err(|e| anyhow::anyhow!("cannot grant the key of {db} to {device}: {e}"))
}

impl Shared {
    /// Takes keys granted to this device, and grants the keys it holds to
    /// members that may hold them and lack them; the new grants go out
    /// with the next gossip batch.
    pub(crate) fn exchange_keys(&self) {
        let mut s = lock(&self.state);
        let Some(roster) = s.roster.as_mut() else {
            return;
        };
        let store = &self.store;
        let mine: Vec<(String, u32, WrappedKey)> = roster
            .grants()
            .filter(|g| g.key.device == self.me)
            .filter(|g| store.keys_of(&g.db).iter().all(|k| k.epoch != g.epoch))
            .map(|g| (g.db.clone(), g.epoch, g.key.clone()))
            .collect();
        for (db, epoch, wrapped) in mine {
            let opened = ContentKey::unwrap(
                &roster.mesh(),
                &db,
                epoch,
                &self.me,
                self.identity.secret(),
                &wrapped.ephemeral,
                &wrapped.sealed,
            );
            match opened
                .map_err(anyhow::Error::from)
                .and_then(|k| store.add_key(&db, k).map_err(anyhow::Error::from))
            {
                Ok(_) => {
                    tracing::info!(db, epoch, "took the database's key, granted to this device")
                }
                Err(e) => {
                    tracing::warn!(db, epoch, "cannot take the key granted to this device: {e}")
                }
            }
        }

        for info in store.list() {
            let Some(epoch) = info.key_epoch else {
                continue;
            };
            if rotates(roster, &info.name, epoch, &self.me) {
                let next = ContentKey::generate(epoch + 1).map_err(anyhow::Error::from);
                match next.and_then(|k| store.add_key(&info.name, k).map_err(anyhow::Error::from)) {
                    Ok(_) => tracing::info!(
                        db = info.name,
                        epoch = epoch + 1,
                        "a device that held the database's key may no longer: made the next key"
                    ),
                    Err(e) => tracing::warn!(db = info.name, "cannot make the next key: {e}"),
                }
            }
        }

        let mut news = WireRoster::default();
        let members: Vec<DeviceId> = roster
            .active()
            .map(|r| r.device)
            .filter(|d| *d != self.me)
            .collect();
        for info in store.list() {
            if info.key_epoch.is_none() {
                continue;
            }
            let keys = store.keys_of(&info.name);
            for device in &members {
                if !may_hold(roster, &info.name, device) {
                    continue;
                }
                for key in &keys {
                    if roster.has_grant(&info.name, key.epoch, device) {
                        continue;
                    }
                    match grant(self, roster, &info.name, key, device) {
                        Ok(signed) => news.grants.push(signed),
                        Err(e) => tracing::warn!("{e:#}"),
                    }
                }
            }
        }
        if news.grants.is_empty() {
            return;
        }
        tracing::info!(
            grants = news.grants.len(),
            "granted database keys to members"
        );
        self.save_soon();
        drop(s);
        self.gossip_roster(None, news);
    }

    /// As an admin, grants every key of `db` this device holds to
    /// `device` (a hub, which no other device may give a first key).
    pub(crate) fn grant_keys_to(&self, db: &str, device: &DeviceId) -> anyhow::Result<u32> {
        let keys = self.store.keys_of(db);
        if keys.is_empty() {
            anyhow::bail!(
                "this device holds no key of {db}: grant it from a device that does \
                 (see `blazectl db list` there)"
            );
        }
        // Saved and gossiped by `as_admin`.
        self.as_admin(|s, _| {
            let roster = s
                .roster
                .as_mut()
                .ok_or_else(|| anyhow::anyhow!("this device is in no mesh"))?;
            let mut made = 0;
            for key in &keys {
                if !roster.has_grant(db, key.epoch, device) {
                    grant(self, roster, db, key, device)?;
                    made += 1;
                }
            }
            Ok(made)
        })
    }
}

impl Shared {
    /// Makes the next key epoch of `db` by hand, and grants it to every
    /// member that may hold it. Returns the new epoch.
    pub(crate) fn rotate_key(&self, db: &str) -> anyhow::Result<u32> {
        let Some(current) = self.store.key_epoch(db) else {
            anyhow::bail!("this device holds no key of {db}: rotate it on a device that does");
        };
        let newest = lock(&self.state)
            .roster
            .as_ref()
            .map_or(0, |r| newest_granted(r, db));
        if newest > current {
            anyhow::bail!(
                "key epoch {newest} of {db} exists already and has not reached this device yet; \
                 try again once it has (blazectl db list shows the epoch held)"
            );
        }
        self.store.add_key(db, ContentKey::generate(current + 1)?)?;
        tracing::info!(db, epoch = current + 1, "made the next key by hand");
        self.exchange_keys();
        Ok(current + 1)
    }
}

/// Runs [`Shared::exchange_keys`] every [`KEY_CHECK`] until shutdown, so
/// a database made here, or a key taken, reaches members without waiting
/// for a membership change.
pub(crate) async fn run(shared: std::sync::Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        shared.exchange_keys();
        tokio::select! {
            _ = tokio::time::sleep(KEY_CHECK) => {}
            _ = shutdown.changed() => return,
        }
    }
}
