//! What this device remembers about its mesh: the mesh's id, secret and
//! genesis, the signed membership, open invites and static peers, and, once
//! it left, how. Kept in `mesh.json` in the data directory (mode 0600,
//! since it holds the secret), rewritten atomically on every change.
//!
//! Invariants:
//! - Member records are stored signed and checked again on load: the file
//!   is no authority of its own.
//! - A device in no mesh holds no secret and no roster.

use std::path::{Path, PathBuf};

use blazedb_proto::DeviceId;
use blazedb_proto::mesh::{Genesis, Invite, MeshId, Roster as WireRoster, Signed, hex, parse_hex};
use serde::{Deserialize, Serialize};

use crate::access::Roster;

/// The state file's name in the data directory.
pub const STATE_FILE: &str = "mesh.json";

/// The mesh's id and the shared secret members prove they hold.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKeys {
    /// The mesh.
    pub id: MeshId,
    /// The secret every member proves it holds.
    pub secret: [u8; 32],
    /// Which secret: 0 at creation, one more at every rotation.
    pub epoch: u32,
}

impl std::fmt::Debug for MeshKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshKeys")
            .field("id", &self.id)
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// An invite this device issued and that may still be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenInvite {
    /// Its id.
    pub id: [u8; 8],
    /// Its secret.
    pub secret: [u8; 32],
    /// When it stops working, in ms since the Unix epoch.
    pub expires_ms: u64,
    /// How many more devices may use it; `None` for no limit.
    pub uses_left: Option<u32>,
    /// The teams a device that joins with it belongs to.
    pub teams: Vec<String>,
}

/// How this device left the mesh it was in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departure {
    /// The mesh, as hex.
    pub mesh: String,
    /// Who removed it (itself when it left), in the form people compare.
    pub by: String,
    /// That device's name.
    pub by_name: String,
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// Whether it left by itself.
    pub left: bool,
}

/// Everything remembered about the mesh.
#[derive(Debug, Clone, Default)]
pub struct MeshState {
    path: PathBuf,
    /// The mesh's keys, once created or joined.
    pub keys: Option<MeshKeys>,
    /// The membership, whenever there are keys.
    pub roster: Option<Roster>,
    /// Open invites.
    pub invites: Vec<OpenInvite>,
    /// Addresses to dial whatever mDNS says, as `host:port`.
    pub static_peers: Vec<String>,
    /// How this device left its last mesh.
    pub departed: Option<Departure>,
}

/// The file's shape: ids and secrets as text, so people can read it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    mesh: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    epoch: u32,
    creator: Option<String>,
    salt: Option<String>,
    #[serde(default)]
    records: Vec<SignedFile>,
    #[serde(default)]
    addrs: Vec<SignedFile>,
    rotation: Option<SignedFile>,
    #[serde(default)]
    rules: Vec<SignedFile>,
    #[serde(default)]
    grants: Vec<SignedFile>,
    #[serde(default)]
    invites: Vec<InviteFile>,
    #[serde(default)]
    static_peers: Vec<String>,
    departed: Option<Departure>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SignedFile {
    body: String,
    sig: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct InviteFile {
    id: String,
    secret: String,
    expires_ms: u64,
    uses_left: Option<u32>,
    #[serde(default)]
    teams: Vec<String>,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl SignedFile {
    fn of(s: &Signed) -> SignedFile {
        SignedFile {
            body: hex(&s.body),
            sig: hex(&s.sig),
        }
    }

    fn read(&self) -> Option<Signed> {
        Some(Signed {
            body: unhex(&self.body)?,
            sig: unhex(&self.sig)?,
        })
    }
}

/// Fills `buf` with random bytes from the OS.
pub fn random<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(buf)
}

impl MeshState {
    /// Loads the state from `dir`, or starts empty if there is none.
    pub fn load(dir: &Path) -> anyhow::Result<MeshState> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(MeshState {
                    path,
                    ..MeshState::default()
                });
            }
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        let bad = |what: &str| anyhow::anyhow!("{}: {what} is not valid", path.display());
        let file: StateFile = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not valid: {e}", path.display()))?;
        let keys = match (&file.mesh, &file.secret) {
            (Some(m), Some(s)) => Some(MeshKeys {
                id: MeshId(parse_hex(m).ok_or_else(|| bad("mesh"))?),
                secret: parse_hex(s).ok_or_else(|| bad("secret"))?,
                epoch: file.epoch,
            }),
            _ => None,
        };
        let roster = match (&keys, &file.creator, &file.salt) {
            (Some(k), Some(c), Some(salt)) => {
                let genesis = Genesis {
                    creator: c.parse::<DeviceId>().map_err(|_| bad("the creator"))?,
                    salt: parse_hex(salt).ok_or_else(|| bad("the salt"))?,
                };
                let mut roster = Roster::new(genesis);
                anyhow::ensure!(
                    roster.mesh() == k.id,
                    "{}: the mesh id does not follow from its creator and salt",
                    path.display()
                );
                let read = |v: &[SignedFile]| -> anyhow::Result<Vec<Signed>> {
                    v.iter()
                        .map(|s| s.read().ok_or_else(|| bad("a signed record")))
                        .collect()
                };
                let wire = WireRoster {
                    records: read(&file.records)?,
                    addrs: read(&file.addrs)?,
                    rotation: file
                        .rotation
                        .as_ref()
                        .map(|s| s.read().ok_or_else(|| bad("the rotation")))
                        .transpose()?,
                    rules: read(&file.rules)?,
                    grants: read(&file.grants)?,
                };
                let merged = roster.merge(&wire);
                for (device, why) in merged.rejected {
                    tracing::warn!(
                        device = ?device,
                        "{}: a stored member record no longer checks out ({why}): dropped",
                        path.display()
                    );
                }
                Some(roster)
            }
            (Some(_), _, _) => anyhow::bail!(
                "{} is from a version of blazed without signed membership: \
                 move it away and join the mesh again with a new invite",
                path.display()
            ),
            _ => None,
        };
        let mut invites = Vec::new();
        for i in file.invites {
            invites.push(OpenInvite {
                id: parse_hex(&i.id).ok_or_else(|| bad("an invite id"))?,
                secret: parse_hex(&i.secret).ok_or_else(|| bad("an invite secret"))?,
                expires_ms: i.expires_ms,
                uses_left: i.uses_left,
                teams: i.teams,
            });
        }
        Ok(MeshState {
            path,
            keys,
            roster,
            invites,
            static_peers: file.static_peers,
            departed: file.departed,
        })
    }

    /// Writes the state to its file, atomically.
    pub fn save(&self) -> anyhow::Result<()> {
        let wire = self
            .roster
            .as_ref()
            .map(Roster::to_wire)
            .unwrap_or_default();
        let genesis = self.roster.as_ref().map(Roster::genesis);
        let file = StateFile {
            mesh: self.keys.as_ref().map(|k| k.id.to_hex()),
            secret: self.keys.as_ref().map(|k| hex(&k.secret)),
            epoch: self.keys.as_ref().map_or(0, |k| k.epoch),
            creator: genesis.map(|g| g.creator.to_string()),
            salt: genesis.map(|g| hex(&g.salt)),
            records: wire.records.iter().map(SignedFile::of).collect(),
            addrs: wire.addrs.iter().map(SignedFile::of).collect(),
            rotation: wire.rotation.as_ref().map(SignedFile::of),
            rules: wire.rules.iter().map(SignedFile::of).collect(),
            grants: wire.grants.iter().map(SignedFile::of).collect(),
            invites: self
                .invites
                .iter()
                .map(|i| InviteFile {
                    id: hex(&i.id),
                    secret: hex(&i.secret),
                    expires_ms: i.expires_ms,
                    uses_left: i.uses_left,
                    teams: i.teams.clone(),
                })
                .collect(),
            static_peers: self.static_peers.clone(),
            departed: self.departed.clone(),
        };
        let text = serde_json::to_string_pretty(&file)?;
        crate::private_file::write(&self.path, text.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.path.display()))
    }

    /// Whether a device may finish a TLS handshake: there is a mesh it
    /// could prove membership of (or learn it was removed from), or an
    /// invite it could use. Who it is is decided after, by its record.
    pub fn admits(&self, now_ms: u64) -> bool {
        self.keys.is_some() || self.invites.iter().any(|i| i.expires_ms > now_ms)
    }

    /// Whether `device` is an active member.
    pub fn is_active(&self, device: &DeviceId) -> bool {
        self.roster.as_ref().is_some_and(|r| r.is_active(device))
    }

    /// Whether `device` was removed from the mesh or left it.
    pub fn is_removed(&self, device: &DeviceId) -> bool {
        self.roster
            .as_ref()
            .is_some_and(|r| r.removal(device).is_some())
    }

    /// Forgets the mesh: keys, membership and invites.
    pub fn forget(&mut self, departed: Departure) {
        self.keys = None;
        self.roster = None;
        self.invites.clear();
        self.departed = Some(departed);
    }

    /// Finds the open invite `id` and uses it up once, if it is valid at
    /// `now_ms` and `check` accepts its secret.
    pub fn redeem(
        &mut self,
        id: &[u8; 8],
        now_ms: u64,
        check: impl Fn(&[u8; 32]) -> bool,
    ) -> Option<OpenInvite> {
        self.invites.retain(|i| i.expires_ms > now_ms);
        let pos = self.invites.iter().position(|i| i.id == *id)?;
        let invite = &mut self.invites[pos];
        if !check(&invite.secret) {
            return None;
        }
        let redeemed = invite.clone();
        match &mut invite.uses_left {
            Some(1) => {
                self.invites.remove(pos);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        Some(redeemed)
    }

    /// Makes a new invite to the mesh.
    pub fn new_invite(
        &mut self,
        me: DeviceId,
        addrs: Vec<String>,
        now_ms: u64,
        ttl_ms: u64,
        uses: Option<u32>,
        teams: Vec<String>,
    ) -> anyhow::Result<Invite> {
        let keys = self.keys.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "this device is in no mesh: run `blazectl mesh create` first, or join one"
            )
        })?;
        let open = OpenInvite {
            id: random()?,
            secret: random()?,
            expires_ms: now_ms.saturating_add(ttl_ms),
            uses_left: uses,
            teams,
        };
        let invite = Invite {
            mesh: keys.id,
            id: open.id,
            secret: open.secret,
            inviter: me,
            addrs,
            expires_ms: open.expires_ms,
        };
        self.invites.retain(|i| i.expires_ms > now_ms);
        self.invites.push(open);
        Ok(invite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blazedb_proto::mesh::Role;

    fn key(n: u8) -> p256::SecretKey {
        p256::SecretKey::from_slice(&[n; 32]).expect("key")
    }

    fn keys_of(roster: &Roster) -> MeshKeys {
        MeshKeys {
            id: roster.mesh(),
            secret: [2; 32],
            epoch: 3,
        }
    }

    #[test]
    fn state_survives_a_reload_and_its_records_are_checked_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = key(9);
        let mut roster = Roster::create(&me, "me", Role::Device, [4; 16], 1).expect("create");
        let other = key(1);
        let pk = crate::access::sign::public_key_bytes(&other);
        roster
            .admit(&me, &pk, "other", Role::Hub, vec!["ios".into()], 2)
            .expect("admit");
        roster
            .set_own_addrs(&me, &["127.0.0.1:7340".into()], 3)
            .expect("addrs");
        let mut s = MeshState::load(dir.path()).expect("load");
        s.keys = Some(keys_of(&roster));
        s.roster = Some(roster);
        s.new_invite(
            DeviceId([9; 32]),
            vec![],
            1000,
            60_000,
            Some(1),
            vec!["web".into()],
        )
        .expect("invite");
        s.static_peers.push("hub.example:7340".into());
        s.save().expect("save");
        let t = MeshState::load(dir.path()).expect("reload");
        assert_eq!(t.keys, s.keys);
        assert_eq!(t.invites, s.invites);
        assert_eq!(t.static_peers, s.static_peers);
        let (a, b) = (
            t.roster.as_ref().expect("roster").to_wire(),
            s.roster.as_ref().expect("roster").to_wire(),
        );
        assert_eq!(a, b);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A record changed in the file no longer counts.
        let other_id = crate::identity::device_id_of(&other.public_key());
        let me_id = crate::identity::device_id_of(&me.public_key());
        let idx = usize::from(me_id < other_id);
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).expect("read");
        let mut file: serde_json::Value = serde_json::from_str(&text).expect("json");
        let body = file["records"][idx]["body"]
            .as_str()
            .expect("body")
            .to_owned();
        let flipped = format!(
            "{}{}",
            &body[..body.len() - 2],
            if body.ends_with("00") { "01" } else { "00" }
        );
        file["records"][idx]["body"] = serde_json::Value::String(flipped);
        std::fs::write(dir.path().join(STATE_FILE), file.to_string()).expect("write");
        let t = MeshState::load(dir.path()).expect("reload");
        let r = t.roster.as_ref().expect("roster");
        assert_eq!(r.records().count(), 1, "the tampered record was kept");
        assert!(r.is_admin(&me_id) && !r.is_active(&other_id));
    }

    #[test]
    fn forgetting_a_mesh_keeps_how_it_ended() {
        let mut s = MeshState::default();
        let me = key(9);
        let roster = Roster::create(&me, "me", Role::Device, [4; 16], 1).expect("create");
        s.keys = Some(keys_of(&roster));
        s.roster = Some(roster);
        assert!(s.admits(0));
        s.forget(Departure {
            mesh: "ab".into(),
            by: "x".into(),
            by_name: "admin".into(),
            at_ms: 5,
            left: false,
        });
        assert!(s.keys.is_none() && s.roster.is_none());
        assert!(!s.admits(0), "a device in no mesh takes no connections");
        assert_eq!(s.departed.as_ref().map(|d| d.at_ms), Some(5));
    }

    #[test]
    fn an_invite_works_until_it_expires_or_is_used_up() {
        let me = DeviceId([9; 32]);
        let mut s = MeshState {
            keys: Some(MeshKeys {
                id: MeshId([1; 16]),
                secret: [2; 32],
                epoch: 0,
            }),
            ..MeshState::default()
        };
        let once = s
            .new_invite(me, vec![], 0, 1000, Some(1), vec!["ios".into()])
            .expect("invite");
        assert_eq!(s.redeem(&once.id, 10, |k| *k != once.secret), None);
        let used = s.redeem(&once.id, 10, |_| true).expect("redeemed");
        assert_eq!(used.secret, once.secret);
        assert_eq!(used.teams, ["ios".to_owned()]);
        assert_eq!(s.redeem(&once.id, 10, |_| true), None, "used up");
        let late = s
            .new_invite(me, vec![], 0, 1000, None, vec![])
            .expect("invite");
        assert!(s.redeem(&late.id, 999, |_| true).is_some());
        assert_eq!(s.redeem(&late.id, 1000, |_| true), None, "expired");
    }
}
