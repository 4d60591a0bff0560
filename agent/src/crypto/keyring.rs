//! The content keys of end-to-end encrypted databases this device holds,
//! by database and key epoch, kept in `keys.json` in the data directory
//! (mode 0600, replaced whole and durably on every change).
//!
//! A key, once taken, is never replaced by other bytes for the same
//! database and epoch: two keys of one epoch would seal ops that half the
//! devices cannot open, so the second is refused loudly instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use blazedb_proto::mesh::{hex, parse_hex};
use serde::{Deserialize, Serialize};

use super::seal::ContentKey;

/// The keyring's file in the data directory.
pub const KEYS_FILE: &str = "keys.json";

/// Why the keyring could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not a keyring.
    #[error(
        "{path} is damaged ({why}); restore it from a backup, or move it away to start without keys"
    )]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// Another key of the same database and epoch is held already.
    #[error("database {db} already has a different key of epoch {epoch}")]
    Conflict {
        /// The database.
        db: String,
        /// The key epoch.
        epoch: u32,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeysFile {
    /// Per database, key epoch → key (hex).
    dbs: BTreeMap<String, BTreeMap<u32, String>>,
}

/// The content keys this device holds.
#[derive(Debug)]
pub struct Keyring {
    path: PathBuf,
    keys: BTreeMap<String, BTreeMap<u32, ContentKey>>,
}

impl Keyring {
    /// Loads the keyring of the data directory `dir` (empty if it has
    /// none yet).
    pub fn load(dir: &Path) -> Result<Keyring, KeyringError> {
        let path = dir.join(KEYS_FILE);
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Keyring {
                    path,
                    keys: BTreeMap::new(),
                });
            }
            Err(source) => {
                return Err(KeyringError::Io {
                    path: shown,
                    source,
                });
            }
        };
        let malformed = |why: String| KeyringError::Malformed {
            path: shown.clone(),
            why,
        };
        let file: KeysFile = serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
        let mut keys = BTreeMap::new();
        for (db, epochs) in file.dbs {
            let mut held = BTreeMap::new();
            for (epoch, key) in epochs {
                let bytes = parse_hex::<32>(&key)
                    .ok_or_else(|| malformed(format!("key {epoch} of {db} is not 32 hex bytes")))?;
                let key =
                    ContentKey::from_bytes(epoch, bytes).map_err(|e| malformed(e.to_string()))?;
                held.insert(epoch, key);
            }
            keys.insert(db, held);
        }
        Ok(Keyring { path, keys })
    }

    /// The key new ops of `db` are sealed with: its latest epoch.
    pub fn current(&self, db: &str) -> Option<&ContentKey> {
        self.keys.get(db)?.values().next_back()
    }

    /// The key of `db` for `epoch`, to open ops sealed under it.
    pub fn get(&self, db: &str, epoch: u32) -> Option<&ContentKey> {
        self.keys.get(db)?.get(&epoch)
    }

    /// Every key of `db` held, oldest epoch first.
    pub fn all(&self, db: &str) -> Vec<ContentKey> {
        self.keys
            .get(db)
            .map(|k| k.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes a key of `db`, durably. Returns whether it was new; the same
    /// key again changes nothing.
    pub fn insert(&mut self, db: &str, key: ContentKey) -> Result<bool, KeyringError> {
        match self.get(db, key.epoch) {
            Some(k) if *k == key => return Ok(false),
            Some(_) => {
                return Err(KeyringError::Conflict {
                    db: db.to_owned(),
                    epoch: key.epoch,
                });
            }
            None => {}
        }
        let mut keys = self.keys.clone();
        keys.entry(db.to_owned())
            .or_default()
            .insert(key.epoch, key);
        self.save(&keys)?;
        self.keys = keys;
        Ok(true)
    }

    /// Forgets every key of `db` (the database was dropped here), durably.
    pub fn forget(&mut self, db: &str) -> Result<(), KeyringError> {
        if !self.keys.contains_key(db) {
            return Ok(());
        }
        let mut keys = self.keys.clone();
        keys.remove(db);
        self.save(&keys)?;
        self.keys = keys;
        Ok(())
    }

    fn save(&self, keys: &BTreeMap<String, BTreeMap<u32, ContentKey>>) -> Result<(), KeyringError> {
        let file = KeysFile {
            dbs: keys
                .iter()
                .map(|(db, epochs)| {
                    let epochs = epochs
                        .iter()
                        .map(|(e, k)| (*e, hex(&k.to_bytes())))
                        .collect();
                    (db.clone(), epochs)
                })
                .collect(),
        };
        let io = |source| KeyringError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        crate::private_file::write(&self.path, text.as_bytes()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn keys_outlive_a_restart_and_the_latest_epoch_seals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ring = Keyring::load(dir.path()).expect("load");
        assert!(ring.current("notes").is_none());
        let (one, two) = (
            ContentKey::generate(1).expect("key"),
            ContentKey::generate(2).expect("key"),
        );
        assert!(ring.insert("notes", two.clone()).expect("insert"));
        assert!(ring.insert("notes", one.clone()).expect("insert"));
        assert!(
            !ring.insert("notes", one.clone()).expect("again"),
            "the same key twice"
        );
        let ring = Keyring::load(dir.path()).expect("reload");
        assert_eq!(ring.current("notes"), Some(&two));
        assert_eq!(ring.get("notes", 1), Some(&one));
        assert_eq!(ring.get("other", 1), None);
        let mode = std::fs::metadata(dir.path().join(KEYS_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_second_key_of_one_epoch_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ring = Keyring::load(dir.path()).expect("load");
        let first = ContentKey::generate(1).expect("key");
        ring.insert("notes", first.clone()).expect("insert");
        let err = ring
            .insert("notes", ContentKey::generate(1).expect("key"))
            .expect_err("a second key of epoch 1");
        assert!(
            err.to_string().contains("different key of epoch 1"),
            "{err}"
        );
        let ring = Keyring::load(dir.path()).expect("reload");
        assert_eq!(ring.get("notes", 1), Some(&first));
    }

    #[test]
    fn forgetting_a_database_drops_its_keys_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ring = Keyring::load(dir.path()).expect("load");
        ring.insert("a", ContentKey::generate(1).expect("key"))
            .expect("insert");
        ring.insert("b", ContentKey::generate(1).expect("key"))
            .expect("insert");
        ring.forget("a").expect("forget");
        let ring = Keyring::load(dir.path()).expect("reload");
        assert!(ring.current("a").is_none());
        assert!(ring.current("b").is_some());
    }

    #[test]
    fn a_damaged_keyring_is_named_not_emptied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(KEYS_FILE);
        std::fs::write(&path, r#"{"dbs": {"notes": {"1": "abcd"}}}"#).expect("write");
        let err = Keyring::load(dir.path()).expect_err("short key");
        assert!(err.to_string().contains("key 1 of notes"), "{err}");
        std::fs::write(&path, "{").expect("write");
        let err = Keyring::load(dir.path()).expect_err("not json");
        assert!(err.to_string().contains("damaged"), "{err}");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"{",
            "the file was touched"
        );
    }
}
