//! Local apps: who connects to the agent, and what each may do.
//!
//! The owner of the device (blazectl, and token-less processes of the
//! agent's user) may do anything. An app connects with its name and token
//! and gets what the owner granted it, and full access to the databases it
//! made. The apps live in `apps.json` in the data directory (mode 0600);
//! a token is shown once when its app is added and only its SHA-256 is
//! kept. The owner token lives in `owner.token` beside it (0600), for an
//! agent that takes no token-less connections (`require_app_tokens`).
//!
//! Invariants:
//! - A token is compared in constant time, by hash, and an unknown app
//!   name costs the same comparison as a wrong token.
//! - A process of another user is served only as an app bound to its uid;
//!   an app bound to a uid is served only to processes of that uid.
//! - Taking any right away from an app (a revoke, a replaced grant, its
//!   removal) cuts its open connections: each holds a [`Ticket`] that no
//!   longer matches. Grants never leave this device.

pub mod rights;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use blazedb_proto::apps::{AppGrant, AppInfo};
use blazedb_proto::{ErrorCode, ErrorInfo, base32};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::private_file;
pub use rights::{Access, AppView, FieldLimit, Rights, Touch};

/// The apps' file in the data directory.
pub const APPS_FILE: &str = "apps.json";
pub use blazedb_proto::paths::OWNER_TOKEN_FILE;
/// What every token starts with, so one is recognised in a config or log.
const TOKEN_PREFIX: &str = "blz_";

/// Why the apps could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// `apps.json` is not what this agent writes.
    #[error(
        "{path} is damaged ({source}); restore it from a backup or remove it to forget every app"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: serde_json::Error,
    },
}

/// One app as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AppRecord {
    /// SHA-256 of its token, hex.
    token_sha256: String,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    grants: Vec<AppGrant>,
    #[serde(default)]
    owned: BTreeSet<String>,
    /// Drawn when the app is added, so a re-added app's old connections
    /// do not count as its own.
    instance: u64,
    /// Bumped whenever a right is taken away.
    cuts: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AppsFile {
    apps: BTreeMap<String, AppRecord>,
}

/// What a connection of an app holds: which app, and which of its cuts it
/// was opened after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The app's name.
    pub name: String,
    instance: u64,
    cuts: u64,
}

/// The apps of this device.
#[derive(Debug)]
pub struct Apps {
    path: PathBuf,
    owner_token: [u8; 32],
    state: RwLock<AppsFile>,
    /// Serialises changes, so the file is written in the order they are
    /// made.
    change: Mutex<()>,
    changes: watch::Sender<u64>,
    connections: Mutex<BTreeMap<String, u32>>,
}

pub(crate) fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What a name that is no app's is checked against: no token hashes to
/// it.
const NO_APP_HASH: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

/// Compares two hashes in time that does not depend on where they differ.
pub(crate) fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn new_token() -> Result<String, ErrorInfo> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        ErrorInfo::new(
            ErrorCode::Internal,
            format!("no randomness from the OS: {e}"),
        )
    })?;
    Ok(format!("{TOKEN_PREFIX}{}", base32::encode(&bytes)))
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // A zero instance only makes a re-added app's instance less unique.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

fn denied(message: String) -> ErrorInfo {
    ErrorInfo::new(ErrorCode::PermissionDenied, message)
}

fn no_app(name: &str) -> ErrorInfo {
    ErrorInfo::new(
        ErrorCode::NotFound,
        format!("there is no app {name:?}; blazectl app list shows them"),
    )
}

fn check_name(name: &str) -> Result<(), ErrorInfo> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ErrorInfo::new(
            ErrorCode::InvalidArgument,
            format!(
                "app name {name:?} is not allowed: use 1 to 64 letters, digits, '-', '_' or '.'"
            ),
        ))
    }
}

/// How a client proves who it is in `hello`.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The app it connects as; the owner when missing.
    pub app: Option<&'a str>,
    /// The app's token, or the owner token.
    pub token: Option<&'a str>,
    /// The uid of the connecting process, from the socket.
    pub peer_uid: Option<u32>,
}

impl Apps {
    /// Loads the apps of the data directory `dir`, and its owner token
    /// (made on first start).
    pub fn open(dir: &Path) -> Result<Apps, AppsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AppsError::Io { path, source }
        };
        let path = dir.join(APPS_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| AppsError::Damaged {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AppsFile::default(),
            Err(e) => return Err(io(&path)(e)),
        };
        let token_path = dir.join(OWNER_TOKEN_FILE);
        let owner_token = match std::fs::read_to_string(&token_path) {
            Ok(token) => sha256(token.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token =
                    new_token().map_err(|e| io(&token_path)(std::io::Error::other(e.message)))?;
                private_file::write(&token_path, format!("{token}\n").as_bytes())
                    .map_err(io(&token_path))?;
                sha256(&token)
            }
            Err(e) => return Err(io(&token_path)(e)),
        };
        Ok(Apps {
            path,
            owner_token,
            state: RwLock::new(file),
            change: Mutex::new(()),
            changes: watch::Sender::new(0),
            connections: Mutex::new(BTreeMap::new()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, AppsFile> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the apps with `f`, saves them, and tells every connection.
    /// Nothing changes when `f` fails or the file cannot be written.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut AppsFile) -> Result<T, ErrorInfo>,
    ) -> Result<T, ErrorInfo> {
        let _one_at_a_time = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = AppsFile {
            apps: self.read().apps.clone(),
        };
        let out = f(&mut next)?;
        let bytes = serde_json::to_vec_pretty(&next)
            .map_err(|e| ErrorInfo::new(ErrorCode::Internal, e.to_string()))?;
        private_file::write(&self.path, &bytes).map_err(|e| {
            ErrorInfo::new(
                ErrorCode::Storage,
                format!("could not save {}: {e}", self.path.display()),
            )
        })?;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = next;
        self.changes.send_modify(|n| *n += 1);
        Ok(out)
    }

    /// Tells who a client is from its `hello`: the owner, or an app and
    /// the ticket its connection holds. `agent_uid` is the agent's own
    /// user; with `require_tokens` its processes need the owner token too.
    pub fn login(
        &self,
        c: Credentials<'_>,
        agent_uid: u32,
        require_tokens: bool,
    ) -> Result<(Access, Option<Ticket>), ErrorInfo> {
        let same_user = c.peer_uid == Some(agent_uid);
        let uid = c
            .peer_uid
            .map_or_else(|| "unknown".to_owned(), |u| u.to_string());
        match (c.app, c.token) {
            (Some(name), Some(token)) => {
                let hash = sha256(token);
                let state = self.read();
                let record = state.apps.get(name);
                // Decoded and compared whether or not the app exists, so a
                // name that is not an app takes as long as a wrong token.
                let stored = unhex(record.map_or(NO_APP_HASH, |r| r.token_sha256.as_str()))
                    .unwrap_or([0xff; 32]);
                let matches = same_hash(&hash, &stored);
                let (Some(record), true) = (record, matches) else {
                    return Err(denied(format!(
                        "app {name:?} and this token do not match: check BLAZEDB_APP and \
                         BLAZEDB_APP_TOKEN (a removed and re-added app has a new token)"
                    )));
                };
                if record.uid.unwrap_or(agent_uid) as i64 != c.peer_uid.map_or(-1, i64::from) {
                    return Err(denied(format!(
                        "app {name:?} is for processes of uid {}, and this one runs as uid {uid}",
                        record.uid.unwrap_or(agent_uid)
                    )));
                }
                let view = view_of(name, record);
                let ticket = Ticket {
                    name: name.to_owned(),
                    instance: record.instance,
                    cuts: record.cuts,
                };
                Ok((Access::App(Arc::new(view)), Some(ticket)))
            }
            (Some(name), None) => Err(denied(format!(
                "app {name:?} connects with its token: set BLAZEDB_APP_TOKEN"
            ))),
            (None, Some(token)) => {
                if same_hash(&sha256(token), &self.owner_token) && same_user {
                    Ok((Access::Owner, None))
                } else {
                    Err(denied(format!(
                        "the token is not this agent's owner token, or uid {uid} is not the \
                         agent's user ({agent_uid})"
                    )))
                }
            }
            (None, None) if same_user && !require_tokens => Ok((Access::Owner, None)),
            (None, None) if same_user => Err(denied(format!(
                "this agent requires a token (require_app_tokens): blazectl reads the owner \
                 token from {OWNER_TOKEN_FILE} in the data directory; an app connects with \
                 BLAZEDB_APP and BLAZEDB_APP_TOKEN"
            ))),
            (None, None) => Err(denied(format!(
                "this agent serves the processes of uid {agent_uid}; a process of uid {uid} \
                 connects as an app bound to its uid (blazectl app add NAME --uid {uid}), \
                 with BLAZEDB_APP and BLAZEDB_APP_TOKEN"
            ))),
        }
    }

    /// The app's rights now, or `None` when `ticket`'s connection must be
    /// cut: the app was removed, or lost a right since it connected.
    pub fn view(&self, ticket: &Ticket) -> Option<Arc<AppView>> {
        let state = self.read();
        let record = state.apps.get(&ticket.name)?;
        (record.instance == ticket.instance && record.cuts == ticket.cuts)
            .then(|| Arc::new(view_of(&ticket.name, record)))
    }

    /// Wakes whenever an app changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Counts a connection of the app in `ticket` until the guard drops.
    pub fn connected(self: &Arc<Self>, ticket: &Ticket) -> Connected {
        *self
            .lock_connections()
            .entry(ticket.name.clone())
            .or_default() += 1;
        Connected {
            apps: self.clone(),
            name: ticket.name.clone(),
        }
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u32>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(&self, name: &str, r: &AppRecord) -> AppInfo {
        AppInfo {
            name: name.to_owned(),
            uid: r.uid,
            grants: r.grants.clone(),
            databases: r.owned.iter().cloned().collect(),
            connections: self.lock_connections().get(name).copied().unwrap_or(0),
        }
    }

    /// Adds an app; returns it and its token.
    pub fn add(
        &self,
        name: &str,
        grants: Vec<AppGrant>,
        uid: Option<u32>,
    ) -> Result<(AppInfo, String), ErrorInfo> {
        check_name(name)?;
        let token = new_token()?;
        let record = AppRecord {
            token_sha256: hex(&sha256(&token)),
            uid,
            grants: merge_grants(Vec::new(), grants).0,
            owned: BTreeSet::new(),
            instance: random_u64(),
            cuts: 0,
        };
        self.change(|f| {
            if f.apps.contains_key(name) {
                return Err(ErrorInfo::new(
                    ErrorCode::InvalidArgument,
                    format!("there is an app {name:?} already; remove it first for a new token"),
                ));
            }
            f.apps.insert(name.to_owned(), record.clone());
            Ok(())
        })?;
        Ok((self.info(name, &record), token))
    }

    /// Every app, by name.
    pub fn list(&self) -> Vec<AppInfo> {
        let state = self.read();
        state.apps.iter().map(|(n, r)| self.info(n, r)).collect()
    }

    /// One app.
    pub fn show(&self, name: &str) -> Result<AppInfo, ErrorInfo> {
        let state = self.read();
        let r = state.apps.get(name).ok_or_else(|| no_app(name))?;
        Ok(self.info(name, r))
    }

    /// Removes an app; its connections are cut. Its databases stay, for
    /// the owner.
    pub fn remove(&self, name: &str) -> Result<bool, ErrorInfo> {
        if !self.read().apps.contains_key(name) {
            return Ok(false);
        }
        self.change(|f| Ok(f.apps.remove(name).is_some()))
    }

    /// Adds `grant`, replacing one of the same scope; a replaced grant
    /// cuts the app's connections, as it may have given more.
    pub fn grant(&self, name: &str, grant: AppGrant) -> Result<AppInfo, ErrorInfo> {
        self.change(|f| {
            let r = f.apps.get_mut(name).ok_or_else(|| no_app(name))?;
            let (grants, replaced) = merge_grants(std::mem::take(&mut r.grants), vec![grant]);
            r.grants = grants;
            if replaced {
                r.cuts += 1;
            }
            Ok(())
        })?;
        self.show(name)
    }

    /// Takes back the app's grants on `db` (or on one collection of it);
    /// its connections are cut.
    pub fn revoke(
        &self,
        name: &str,
        db: &str,
        collection: Option<&str>,
    ) -> Result<AppInfo, ErrorInfo> {
        self.change(|f| {
            let r = f.apps.get_mut(name).ok_or_else(|| no_app(name))?;
            let before = r.grants.len();
            r.grants.retain(|g| {
                g.db != db || (collection.is_some() && g.collection.as_deref() != collection)
            });
            if r.grants.len() == before {
                return Err(ErrorInfo::new(
                    ErrorCode::NotFound,
                    format!(
                        "app {name:?} has no grant on {db}{}",
                        collection.map(|c| format!("/{c}")).unwrap_or_default()
                    ),
                ));
            }
            r.cuts += 1;
            Ok(())
        })?;
        self.show(name)
    }

    /// Records that the app `name` made `db`, before it is made, so a
    /// crash never leaves an app's database without its owner. Returns
    /// whether the claim is new.
    pub fn claim(&self, name: &str, db: &str) -> Result<bool, ErrorInfo> {
        if self
            .read()
            .apps
            .get(name)
            .is_some_and(|r| r.owned.contains(db))
        {
            return Ok(false);
        }
        self.change(|f| {
            let r = f.apps.get_mut(name).ok_or_else(|| no_app(name))?;
            Ok(r.owned.insert(db.to_owned()))
        })
    }

    /// Forgets that any app made `db`: it was dropped, or its making
    /// failed.
    pub fn disown(&self, db: &str) {
        let owned = self.read().apps.values().any(|r| r.owned.contains(db));
        if owned {
            let result = self.change(|f| {
                for r in f.apps.values_mut() {
                    r.owned.remove(db);
                }
                Ok(())
            });
            if let Err(e) = result {
                tracing::warn!(
                    db,
                    "could not forget which app made the database: {}",
                    e.message
                );
            }
        }
    }
}

fn view_of(name: &str, r: &AppRecord) -> AppView {
    AppView::new(name.to_owned(), r.owned.clone(), r.grants.clone())
}

/// `grants` with `new` added, each replacing a grant of the same scope;
/// and whether one was replaced by a different one.
fn merge_grants(mut grants: Vec<AppGrant>, new: Vec<AppGrant>) -> (Vec<AppGrant>, bool) {
    let mut replaced = false;
    for g in new {
        if let Some(old) = grants.iter_mut().find(|o| o.same_scope(&g)) {
            replaced |= *old != g;
            *old = g;
        } else {
            grants.push(g);
        }
    }
    (grants, replaced)
}

/// Counts one open connection of an app while it lives.
#[derive(Debug)]
pub struct Connected {
    apps: Arc<Apps>,
    name: String,
}

impl Drop for Connected {
    fn drop(&mut self) {
        let mut c = self.apps.lock_connections();
        if let Some(n) = c.get_mut(&self.name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;

    fn creds<'a>(app: Option<&'a str>, token: Option<&'a str>, uid: u32) -> Credentials<'a> {
        Credentials {
            app,
            token,
            peer_uid: Some(uid),
        }
    }

    fn grant(spec: &str) -> AppGrant {
        AppGrant::parse(spec, None).expect("grant")
    }

    #[test]
    fn an_app_logs_in_with_its_own_token_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let apps = Apps::open(dir.path()).expect("open");
        let (_, token) = apps.add("dash", vec![grant("bugs")], None).expect("add");
        let (_, other) = apps.add("other", vec![], None).expect("add");
        let (access, ticket) = apps
            .login(creds(Some("dash"), Some(&token), ME), ME, false)
            .expect("login");
        assert_eq!(access.app(), Some("dash"));
        assert!(apps.view(&ticket.expect("ticket")).is_some());
        for (app, token) in [
            ("dash", other.as_str()),
            ("nobody", token.as_str()),
            ("dash", "blz_x"),
        ] {
            let e = apps
                .login(creds(Some(app), Some(token), ME), ME, false)
                .expect_err("refused");
            assert_eq!(e.code, ErrorCode::PermissionDenied);
        }
        assert!(
            apps.login(creds(Some("dash"), None, ME), ME, false)
                .is_err()
        );
        // A removed and re-added app has a new token; the old one is dead.
        apps.remove("dash").expect("remove");
        let (_, fresh) = apps.add("dash", vec![], None).expect("add again");
        assert!(
            apps.login(creds(Some("dash"), Some(&token), ME), ME, false)
                .is_err()
        );
        assert!(
            apps.login(creds(Some("dash"), Some(&fresh), ME), ME, false)
                .is_ok()
        );
        // Only the hash is on disk, and the file is the owner's alone.
        let stored = std::fs::read_to_string(dir.path().join(APPS_FILE)).expect("file");
        assert!(!stored.contains(&fresh[TOKEN_PREFIX.len()..]));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(APPS_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }

    /// A wrong token takes as long to refuse whether it shares a long
    /// prefix with the right one, shares none, or names no app at all:
    /// medians of interleaved trials, within a margin far wider than any
    /// early-exit comparison of 32 bytes would leave and far narrower than
    /// the hash itself.
    #[test]
    fn refusing_a_token_takes_the_same_time_however_it_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let apps = Apps::open(dir.path()).expect("open");
        let (_, token) = apps.add("dash", vec![], None).expect("add");
        let mut near = token.clone();
        near.pop();
        near.push(if token.ends_with('a') { 'b' } else { 'a' });
        let far = format!(
            "{TOKEN_PREFIX}{}",
            "z".repeat(token.len() - TOKEN_PREFIX.len())
        );
        let cases = [
            ("dash", near.as_str()),
            ("dash", far.as_str()),
            ("ghost", token.as_str()),
        ];
        let mut times = vec![Vec::new(); cases.len()];
        for _ in 0..3000 {
            for (i, (app, t)) in cases.iter().enumerate() {
                let start = std::time::Instant::now();
                let r = apps.login(creds(Some(app), Some(t), ME), ME, false);
                times[i].push(start.elapsed().as_nanos());
                assert!(r.is_err());
            }
        }
        let medians: Vec<u128> = times
            .iter_mut()
            .map(|t| {
                t.sort_unstable();
                t[t.len() / 2]
            })
            .collect();
        let (lo, hi) = (medians.iter().min().copied(), medians.iter().max().copied());
        let (lo, hi) = (lo.unwrap_or(0).max(1), hi.unwrap_or(0));
        assert!(hi * 10 < lo * 15, "refusal times differ: {medians:?} ns");
    }

    #[test]
    fn the_owner_and_other_users() {
        let dir = tempfile::tempdir().expect("tempdir");
        let apps = Apps::open(dir.path()).expect("open");
        let owner = std::fs::read_to_string(dir.path().join(OWNER_TOKEN_FILE)).expect("token");
        let owner = owner.trim();
        assert!(
            apps.login(creds(None, None, ME), ME, false)
                .expect("owner")
                .0
                .is_owner()
        );
        assert!(apps.login(creds(None, None, ME), ME, true).is_err());
        assert!(
            apps.login(creds(None, Some(owner), ME), ME, true)
                .expect("owner")
                .0
                .is_owner()
        );
        assert!(apps.login(creds(None, None, 1001), ME, false).is_err());
        assert!(
            apps.login(creds(None, Some(owner), 1001), ME, false)
                .is_err()
        );
        let (_, token) = apps.add("theirs", vec![], Some(1001)).expect("add");
        assert!(
            apps.login(creds(Some("theirs"), Some(&token), 1001), ME, false)
                .is_ok()
        );
        assert!(
            apps.login(creds(Some("theirs"), Some(&token), 1002), ME, false)
                .is_err()
        );
        assert!(
            apps.login(creds(Some("theirs"), Some(&token), ME), ME, false)
                .is_err()
        );
        let (_, mine) = apps.add("mine", vec![], None).expect("add");
        assert!(
            apps.login(creds(Some("mine"), Some(&mine), 1001), ME, false)
                .is_err()
        );
    }

    #[test]
    fn taking_a_right_away_cuts_connections_and_giving_one_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let apps = Apps::open(dir.path()).expect("open");
        let (_, token) = apps.add("dash", vec![grant("bugs")], None).expect("add");
        let (_, ticket) = apps
            .login(creds(Some("dash"), Some(&token), ME), ME, false)
            .expect("login");
        let ticket = ticket.expect("ticket");
        apps.grant("dash", grant("notes")).expect("grant");
        let view = apps.view(&ticket).expect("still connected");
        assert_eq!(view.grants.len(), 2);
        apps.claim("dash", "mine").expect("claim");
        assert!(apps.view(&ticket).expect("still").owned.contains("mine"));
        apps.revoke("dash", "notes", None).expect("revoke");
        assert!(apps.view(&ticket).is_none(), "a revoke cuts");
        // Everything survives a restart.
        drop(apps);
        let apps = Apps::open(dir.path()).expect("reopen");
        let info = apps.show("dash").expect("show");
        assert_eq!(info.grants, vec![grant("bugs")]);
        assert_eq!(info.databases, vec!["mine".to_owned()]);
        apps.disown("mine");
        assert!(apps.show("dash").expect("show").databases.is_empty());
        assert!(apps.revoke("dash", "nothing", None).is_err());
    }
}
