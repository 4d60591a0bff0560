//! What this device remembers about its mesh: the mesh's id and secret,
//! the members, open invites and static peers. Kept in `mesh.json` in the
//! data directory (mode 0600, since it holds the secret), rewritten
//! atomically on every change.
//!
//! Invariants:
//! - A removed member stays removed: merging never brings it back.
//! - Only the device itself sets its addresses; gossip fills them in only
//!   where none are known.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use blazedb_proto::DeviceId;
use blazedb_proto::mesh::{Invite, Member, MeshId, Role, hex, parse_hex};
use serde::{Deserialize, Serialize};

/// The state file's name in the data directory.
pub const STATE_FILE: &str = "mesh.json";

/// The mesh's id and shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKeys {
    /// The mesh.
    pub id: MeshId,
    /// The secret every member proves it holds.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for MeshKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshKeys").field("id", &self.id).finish()
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
}

/// Everything remembered about the mesh.
#[derive(Debug, Clone, Default)]
pub struct MeshState {
    path: PathBuf,
    /// The mesh, once created or joined.
    pub keys: Option<MeshKeys>,
    /// Every member but this device, removed ones included.
    pub members: BTreeMap<DeviceId, Member>,
    /// Open invites.
    pub invites: Vec<OpenInvite>,
    /// Addresses to dial whatever mDNS says, as `host:port`.
    pub static_peers: Vec<String>,
}

/// The file's shape: ids and secrets as text, so people can read it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    mesh: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    members: Vec<MemberFile>,
    #[serde(default)]
    invites: Vec<InviteFile>,
    #[serde(default)]
    static_peers: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct MemberFile {
    device: String,
    name: String,
    #[serde(default)]
    role: Role,
    removed: bool,
    addrs: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct InviteFile {
    id: String,
    secret: String,
    expires_ms: u64,
    uses_left: Option<u32>,
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
        let keys = match (file.mesh, file.secret) {
            (Some(m), Some(s)) => Some(MeshKeys {
                id: MeshId(parse_hex(&m).ok_or_else(|| bad("mesh"))?),
                secret: parse_hex(&s).ok_or_else(|| bad("secret"))?,
            }),
            _ => None,
        };
        let mut members = BTreeMap::new();
        for m in file.members {
            let device: DeviceId = m.device.parse().map_err(|_| bad("a member's device"))?;
            members.insert(
                device,
                Member {
                    device,
                    name: m.name,
                    role: m.role,
                    removed: m.removed,
                    addrs: m.addrs,
                },
            );
        }
        let mut invites = Vec::new();
        for i in file.invites {
            invites.push(OpenInvite {
                id: parse_hex(&i.id).ok_or_else(|| bad("an invite id"))?,
                secret: parse_hex(&i.secret).ok_or_else(|| bad("an invite secret"))?,
                expires_ms: i.expires_ms,
                uses_left: i.uses_left,
            });
        }
        Ok(MeshState {
            path,
            keys,
            members,
            invites,
            static_peers: file.static_peers,
        })
    }

    /// Writes the state to its file, atomically.
    pub fn save(&self) -> anyhow::Result<()> {
        let file = StateFile {
            mesh: self.keys.as_ref().map(|k| k.id.to_hex()),
            secret: self.keys.as_ref().map(|k| hex(&k.secret)),
            members: self
                .members
                .values()
                .map(|m| MemberFile {
                    device: m.device.to_string(),
                    name: m.name.clone(),
                    role: m.role,
                    removed: m.removed,
                    addrs: m.addrs.clone(),
                })
                .collect(),
            invites: self
                .invites
                .iter()
                .map(|i| InviteFile {
                    id: hex(&i.id),
                    secret: hex(&i.secret),
                    expires_ms: i.expires_ms,
                    uses_left: i.uses_left,
                })
                .collect(),
            static_peers: self.static_peers.clone(),
        };
        let text = serde_json::to_string_pretty(&file)?;
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.path.display()))
    }

    /// Whether `device` may finish a TLS handshake: it is not removed, and
    /// there is a mesh it could prove membership of or an invite it could
    /// use.
    pub fn admits(&self, device: &DeviceId, now_ms: u64) -> bool {
        if self.members.get(device).is_some_and(|m| m.removed) {
            return false;
        }
        self.keys.is_some() || self.invites.iter().any(|i| i.expires_ms > now_ms)
    }

    /// The members that are not removed.
    pub fn active_members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| !m.removed)
    }

    /// Whether `device` was removed from the mesh.
    pub fn is_removed(&self, device: &DeviceId) -> bool {
        self.members.get(device).is_some_and(|m| m.removed)
    }

    /// Merges a member list from a peer. Returns whether anything changed.
    pub fn merge_members(&mut self, me: &DeviceId, list: &[Member]) -> bool {
        let mut changed = false;
        for m in list {
            if m.device == *me {
                continue;
            }
            match self.members.get_mut(&m.device) {
                None => {
                    self.members.insert(m.device, m.clone());
                    changed = true;
                }
                Some(known) => {
                    if m.removed && !known.removed {
                        known.removed = true;
                        changed = true;
                    }
                    if known.addrs.is_empty() && !m.addrs.is_empty() {
                        known.addrs = m.addrs.clone();
                        changed = true;
                    }
                    if known.name.is_empty() && !m.name.is_empty() {
                        known.name = m.name.clone();
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    /// Records what a member says of itself. Returns whether anything
    /// changed; a removed device stays removed.
    pub fn note_member(&mut self, m: &Member) -> bool {
        let Some(entry) = self.members.get_mut(&m.device) else {
            self.members.insert(
                m.device,
                Member {
                    removed: false,
                    ..m.clone()
                },
            );
            return true;
        };
        let before = entry.clone();
        entry.name = m.name.clone();
        entry.role = m.role;
        if !m.addrs.is_empty() {
            entry.addrs = m.addrs.clone();
        }
        *entry != before
    }

    /// Finds the open invite `id` and uses it up once, if it is valid at
    /// `now_ms` and `check` accepts its secret.
    pub fn redeem(
        &mut self,
        id: &[u8; 8],
        now_ms: u64,
        check: impl Fn(&[u8; 32]) -> bool,
    ) -> Option<[u8; 32]> {
        self.invites.retain(|i| i.expires_ms > now_ms);
        let pos = self.invites.iter().position(|i| i.id == *id)?;
        let invite = &mut self.invites[pos];
        if !check(&invite.secret) {
            return None;
        }
        let secret = invite.secret;
        match &mut invite.uses_left {
            Some(1) => {
                self.invites.remove(pos);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        Some(secret)
    }

    /// Makes a new invite to the mesh.
    pub fn new_invite(
        &mut self,
        me: DeviceId,
        addrs: Vec<String>,
        now_ms: u64,
        ttl_ms: u64,
        uses: Option<u32>,
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

    fn member(n: u8, removed: bool) -> Member {
        Member {
            device: DeviceId([n; 32]),
            name: format!("d{n}"),
            role: Role::Device,
            removed,
            addrs: vec![format!("127.0.0.{n}:1")],
        }
    }

    #[test]
    fn state_survives_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = DeviceId([9; 32]);
        let mut s = MeshState::load(dir.path()).expect("load");
        s.keys = Some(MeshKeys {
            id: MeshId([1; 16]),
            secret: [2; 32],
        });
        s.merge_members(&me, &[member(1, false), member(2, true)]);
        s.new_invite(me, vec![], 1000, 60_000, Some(1))
            .expect("invite");
        s.static_peers.push("hub.example:7340".into());
        s.save().expect("save");
        let t = MeshState::load(dir.path()).expect("reload");
        assert_eq!(t.keys, s.keys);
        assert_eq!(t.members, s.members);
        assert_eq!(t.invites, s.invites);
        assert_eq!(t.static_peers, s.static_peers);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn removal_is_final_whatever_gossip_says() {
        let me = DeviceId([9; 32]);
        let mut s = MeshState::default();
        assert!(s.merge_members(&me, &[member(1, true)]));
        assert!(!s.merge_members(&me, &[member(1, false)]));
        s.note_member(&member(1, false));
        assert!(s.is_removed(&DeviceId([1; 32])));
        assert!(!s.admits(&DeviceId([1; 32]), 0));
    }

    #[test]
    fn a_new_member_counts_as_a_change_so_it_is_saved() {
        let mut s = MeshState::default();
        assert!(s.note_member(&member(3, false)), "a newcomer is a change");
        assert!(!s.note_member(&member(3, false)), "the same again is not");
    }

    #[test]
    fn an_invite_works_until_it_expires_or_is_used_up() {
        let me = DeviceId([9; 32]);
        let mut s = MeshState {
            keys: Some(MeshKeys {
                id: MeshId([1; 16]),
                secret: [2; 32],
            }),
            ..MeshState::default()
        };
        let once = s.new_invite(me, vec![], 0, 1000, Some(1)).expect("invite");
        assert_eq!(s.redeem(&once.id, 10, |k| *k != once.secret), None);
        assert_eq!(s.redeem(&once.id, 10, |_| true), Some(once.secret));
        assert_eq!(s.redeem(&once.id, 10, |_| true), None, "used up");
        let late = s.new_invite(me, vec![], 0, 1000, None).expect("invite");
        assert_eq!(s.redeem(&late.id, 999, |_| true), Some(late.secret));
        assert_eq!(s.redeem(&late.id, 1000, |_| true), None, "expired");
    }
}
