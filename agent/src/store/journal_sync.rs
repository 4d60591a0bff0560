//! Syncs fjall's journal without holding its lock through the fsync.
//!
//! fjall's own `persist(SyncAll)` holds the journal's lock while the disk
//! syncs, so the writer's next commit, which needs that lock to append,
//! waited for the syncer's fsync: the fsync that `syncer` takes off the
//! writer's path was back on it whenever the writer had more to commit
//! (in a sustained replication run, each agent's writer spent an eighth of
//! its time so). Here the lock is held only while fjall hands its write
//! buffer to the kernel (`PersistMode::Buffer`); the fsync then runs on a
//! descriptor of the agent's own for the same file, while the writer
//! appends the next group.
//!
//! Why that is as durable as fjall's own sync:
//!
//! - fsync writes back a file, whichever descriptor names it.
//! - The journal that the buffer was handed to is either the newest in the
//!   store's directory, which is the one synced here, or an older one.
//!   fjall syncs a journal before it creates the next (`Writer::rotate`),
//!   and creates none when that sync fails, so a newer journal's existence
//!   means the older one is on disk.
//! - A write-back error is reported on every descriptor that was open when
//!   it happened, and on one opened later while nobody has seen it. This
//!   descriptor is opened at the first sync of its journal and kept.
//! - When the sync fails, fjall is made to sync through its own
//!   descriptor too, which reports the same error, so that fjall poisons
//!   itself and refuses every later commit, as when it failed its own sync;
//!   and every later sync here fails as well.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use fjall::PersistMode;

use super::{StoreError, lock};

/// Syncs a store's journal; shared by the writer and the syncer, whose
/// syncs never overlap (see `syncer`).
pub(super) struct JournalSync {
    fj: fjall::Database,
    dir: PathBuf,
    /// The newest journal, once synced, and its number.
    open: Mutex<Option<(u64, File)>>,
    /// Why a sync failed, once one has: every later sync fails too. The
    /// kernel reports a write-back error once a descriptor, so a second
    /// fsync here could say done of pages it already dropped.
    failed: OnceLock<String>,
}

impl std::fmt::Debug for JournalSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalSync")
            .field("dir", &self.dir)
            .finish()
    }
}

impl JournalSync {
    /// Syncs the journal of `fj`, whose files are in `dir`.
    pub(super) fn new(fj: fjall::Database, dir: &Path) -> JournalSync {
        JournalSync {
            fj,
            dir: dir.to_owned(),
            open: Mutex::new(None),
            failed: OnceLock::new(),
        }
    }

    /// Makes durable everything committed to fjall before the call.
    pub(super) fn sync(&self) -> Result<(), StoreError> {
        if let Some(why) = self.failed.get() {
            return Err(StoreError::Storage(format!(
                "an earlier sync of the journal failed: {why}"
            )));
        }
        self.fj.persist(PersistMode::Buffer)?;
        let mut open = lock(&self.open);
        let newest = self.newest(open.as_ref().map(|(number, _)| *number))?;
        let file = match &mut *open {
            Some((number, file)) if *number == newest => file,
            slot => {
                let path = self.path(newest);
                let file = File::open(&path)
                    .map_err(|e| StoreError::Storage(format!("{}: {e}", path.display())))?;
                &mut slot.insert((newest, file)).1
            }
        };
        file.sync_all().map_err(|e| {
            // fjall's descriptor reports the same error, and fjall then
            // takes no more commits.
            let _ = self.fj.persist(PersistMode::SyncAll);
            let e = StoreError::from(fjall::Error::Io(e));
            let _ = self.failed.set(e.to_string());
            e
        })
    }

    /// The number of the newest journal: from `known` on, the next
    /// numbers that exist (fjall numbers them one by one), or else the
    /// highest in the directory.
    fn newest(&self, known: Option<u64>) -> Result<u64, StoreError> {
        let err = |e: std::io::Error| StoreError::Storage(format!("{}: {e}", self.dir.display()));
        if let Some(mut number) = known {
            while self.path(number + 1).try_exists().map_err(err)? {
                number += 1;
            }
            return Ok(number);
        }
        let mut newest = None;
        for entry in std::fs::read_dir(&self.dir).map_err(err)? {
            let name = entry.map_err(err)?.file_name();
            let number = name
                .to_str()
                .and_then(|n| n.strip_suffix(".jnl"))
                .and_then(|n| n.parse::<u64>().ok());
            newest = newest.max(number);
        }
        newest.ok_or_else(|| StoreError::Storage(format!("no journal in {}", self.dir.display())))
    }

    fn path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number}.jnl"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (fjall::Database, fjall::Keyspace) {
        let fj = fjall::Database::builder(dir).open().expect("open");
        let ks = fj
            .keyspace("k", fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        (fj, ks)
    }

    #[test]
    fn what_is_synced_is_in_the_newest_journal_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fj, ks) = open(dir.path());
        let sync = JournalSync::new(fj.clone(), dir.path());
        let mut batch = fj.batch().durability(None);
        batch.insert(&ks, "a", vec![7u8; 4000]);
        batch.commit().expect("commit");
        let newest = sync.newest(None).expect("newest");
        let before = std::fs::read(sync.path(newest)).expect("read");
        sync.sync().expect("sync");
        let after = std::fs::read(sync.path(newest)).expect("read");
        // fjall's buffer reached the file: the value's bytes are in it.
        let holds = |bytes: &[u8]| bytes.windows(4000).any(|w| w == [7u8; 4000]);
        assert!(!holds(&before), "fjall's buffer was already in the file");
        assert!(holds(&after), "the sync left the write in fjall's buffer");
    }

    #[test]
    fn after_a_failed_sync_every_later_one_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fj, _ks) = open(dir.path());
        let sync = JournalSync::new(fj, dir.path());
        sync.sync().expect("sync");
        // As the error path records it.
        let _ = sync.failed.set("an I/O error".into());
        let err = sync.sync().expect_err("a sync after a failed one");
        assert!(err.to_string().contains("an I/O error"), "{err}");
    }

    #[test]
    fn the_newest_journal_is_found_as_fjall_adds_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fj, _ks) = open(dir.path());
        let sync = JournalSync::new(fj, dir.path());
        let first = sync.newest(None).expect("newest");
        assert_eq!(sync.newest(Some(first)).expect("newest"), first);
        File::create(sync.path(first + 1)).expect("create");
        File::create(sync.path(first + 2)).expect("create");
        assert_eq!(sync.newest(Some(first)).expect("newest"), first + 2);
        assert_eq!(sync.newest(None).expect("newest"), first + 2);
    }
}
