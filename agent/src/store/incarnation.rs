//! The write incarnation: which writer id this start's local writes are
//! counted under ([`blazedb_proto::DeviceId::writer`]).
//!
//! A device's seqs are contiguous per writer, and peers drop an op whose
//! `(writer, seq)` they hold as a duplicate. A store that went back in time
//! (a crash that lost the journal's tail, a restore from a backup, a copy
//! of the data directory running beside the original) would hand out seqs
//! its peers already hold, and its new writes would be lost everywhere. So
//! a start keeps the incarnation only when it can prove the store is as the
//! last run left it; otherwise it draws a new one at random, and the
//! device's writes from then on count under a writer id no copy has used.
//!
//! The proof is a clean-stop mark: a file the writer makes after the last
//! sync of a clean shutdown, naming the incarnation and the file's own
//! device and inode numbers. A start reads it and removes it before taking
//! any write. A crash leaves no mark; a copy or a restore makes the file
//! anew, with other numbers; an older state restored in place still finds
//! the mark gone. (A block-level snapshot of the whole filesystem keeps
//! the numbers: it is beyond what a file can tell.)

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fjall::{Keyspace, PersistMode};

use super::StoreError;
use super::journal::DroppedTail;

/// The clean-stop mark's file name in the store's directory.
const MARK_FILE: &str = "clean-stop";
const MARK_HEADER: &str = "blazedb clean stop v1";
/// The incarnation in the store's meta keyspace.
const META_INCARNATION: &[u8] = b"incarnation";

/// The incarnation this start writes under, and why it changed, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incarnation {
    /// The number (0: the device's first, whose writer id is the device id).
    pub number: u32,
    /// Why this start took a new one; `None` when it kept the last.
    pub changed: Option<String>,
    /// The store may be older than the last run left it (a copy, a
    /// restore), not merely cut short by a crash.
    pub went_back: bool,
}

/// What the store's directory says about how the last run ended.
#[derive(Debug, PartialEq, Eq)]
enum Mark {
    /// A mark made for this very file with this incarnation.
    Clean(u32),
    /// No mark: the last run did not stop cleanly.
    Missing,
    /// A mark that is not this directory's own (copied or restored).
    Foreign(String),
}

/// Decides the incarnation for a start of the store in `dir`, whose meta
/// keyspace is `meta`; `fresh` says the store was empty and the device new
/// (its writes cannot be out there already), and `dropped` lists the
/// journal tails recovery cut off. Removes the mark and stores a new
/// number durably before returning, so no write is taken under an
/// incarnation a crash could forget.
pub(super) fn begin(
    dir: &Path,
    fj: &fjall::Database,
    meta: &Keyspace,
    fresh: bool,
    dropped: &[DroppedTail],
) -> Result<Incarnation, StoreError> {
    let stored: Option<u32> = match meta.get(META_INCARNATION)? {
        Some(v) => Some(u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
            StoreError::Storage("the stored write incarnation is damaged".into())
        })?)),
        None => None,
    };
    let mark = take_mark(dir)?;
    // A clean stop synced everything, so a journal cut short since then
    // lost acknowledged writes: the store went back in time.
    let went_back = matches!(mark, Mark::Foreign(_) | Mark::Clean(_));
    let changed = match (stored, mark) {
        (Some(n), Mark::Clean(m)) if n == m && dropped.is_empty() => {
            return Ok(Incarnation {
                number: n,
                changed: None,
                went_back: false,
            });
        }
        (Some(n), Mark::Clean(m)) if n == m => "it stopped cleanly last time".to_owned(),
        (None, _) if fresh => {
            store_number(fj, meta, 0)?;
            return Ok(Incarnation {
                number: 0,
                changed: None,
                went_back: false,
            });
        }
        (_, Mark::Clean(_)) => "its clean-stop mark names another incarnation".to_owned(),
        (None, Mark::Missing) if meta.is_empty()? => {
            "the store is new but the device has written before".to_owned()
        }
        (None, Mark::Missing) => "the store was made by an older version".to_owned(),
        (_, Mark::Missing) => "the agent did not stop cleanly last time".to_owned(),
        (_, Mark::Foreign(why)) => why,
    };
    let changed = dropped
        .iter()
        .fold(changed, |why, tail| format!("{why}, and {tail}"));
    let number = loop {
        let n = random_u32()?;
        if n != 0 && Some(n) != stored {
            break n;
        }
    };
    store_number(fj, meta, number)?;
    Ok(Incarnation {
        number,
        changed: Some(changed),
        went_back,
    })
}

/// Removes the clean-stop mark in `dir`, if there is one, so the next
/// start takes a new incarnation: for a store changed behind the writer's
/// back (a repair).
pub(crate) fn forget_clean_stop(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(MARK_FILE);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(&path, e)),
    }
}

fn store_number(fj: &fjall::Database, meta: &Keyspace, n: u32) -> Result<(), StoreError> {
    meta.insert(META_INCARNATION, n.to_be_bytes())?;
    fj.persist(PersistMode::SyncAll)?;
    Ok(())
}

fn random_u32() -> Result<u32, StoreError> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b)
        .map_err(|e| StoreError::Storage(format!("no randomness for an incarnation: {e}")))?;
    Ok(u32::from_be_bytes(b))
}

/// Reads the mark in `dir` and removes it (durably), whatever it says.
fn take_mark(dir: &Path) -> Result<Mark, StoreError> {
    let path = dir.join(MARK_FILE);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Mark::Missing),
        Err(e) => return Err(io_error(&path, e)),
    };
    let found = file.metadata().map_err(|e| io_error(&path, e))?;
    let mut text = String::new();
    let read = file.read_to_string(&mut text);
    drop(file);
    fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
    sync_dir(dir)?;
    if read.is_err() {
        return Ok(Mark::Foreign("its clean-stop mark is unreadable".into()));
    }
    Ok(parse_mark(&text, found.dev(), found.ino()))
}

fn parse_mark(text: &str, dev: u64, ino: u64) -> Mark {
    let mut lines = text.lines();
    if lines.next() != Some(MARK_HEADER) {
        return Mark::Foreign("its clean-stop mark is damaged".into());
    }
    let mut field = |name: &str| -> Option<u64> {
        lines
            .next()?
            .strip_prefix(name)?
            .strip_prefix(' ')?
            .parse()
            .ok()
    };
    let (Some(n), Some(d), Some(i)) = (field("incarnation"), field("dev"), field("ino")) else {
        return Mark::Foreign("its clean-stop mark is damaged".into());
    };
    if (d, i) != (dev, ino) {
        return Mark::Foreign("the store was copied or restored since it stopped".into());
    }
    match u32::try_from(n) {
        Ok(n) => Mark::Clean(n),
        Err(_) => Mark::Foreign("its clean-stop mark is damaged".into()),
    }
}

/// Marks the store in `dir` as stopped cleanly in incarnation `number`.
/// Called after the last sync: nothing is written after it.
pub(super) fn mark_clean_stop(dir: &Path, number: u32) -> Result<(), StoreError> {
    let path = dir.join(MARK_FILE);
    let _ = fs::remove_file(&path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    let at = file.metadata().map_err(|e| io_error(&path, e))?;
    let text = format!(
        "{MARK_HEADER}\nincarnation {number}\ndev {}\nino {}\n",
        at.dev(),
        at.ino()
    );
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(&path, e))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Storage(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (fjall::Database, Keyspace) {
        let fj = fjall::Database::builder(dir).open().expect("open");
        let meta = fj
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .expect("meta");
        (fj, meta)
    }

    #[test]
    fn a_clean_stop_keeps_the_incarnation_and_anything_else_changes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        let first = {
            let (fj, meta) = open(&store);
            let first = begin(&store, &fj, &meta, true, &[]).expect("begin");
            assert_eq!(
                first,
                Incarnation {
                    number: 0,
                    changed: None,
                    went_back: false
                }
            );
            meta.insert("x", "y").expect("insert");
            first
        };
        // No mark: the last run was killed.
        let second = {
            let (fj, meta) = open(&store);
            let second = begin(&store, &fj, &meta, false, &[]).expect("begin");
            assert_ne!(second.number, first.number);
            assert!(
                second
                    .changed
                    .as_deref()
                    .is_some_and(|w| w.contains("did not stop cleanly"))
            );
            assert!(!second.went_back, "a crash cuts the store short, no more");
            mark_clean_stop(&store, second.number).expect("mark");
            second
        };
        // A copy of the stopped store is not the store.
        let copy = dir.path().join("copy");
        fs::create_dir(&copy).expect("mkdir");
        for entry in walk(&store) {
            let to = copy.join(entry.strip_prefix(&store).expect("under"));
            fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            fs::copy(&entry, &to).expect("copy");
        }
        let (fj, meta) = open(&copy);
        let copied = begin(&copy, &fj, &meta, false, &[]).expect("begin");
        assert_ne!(copied.number, second.number);
        assert!(
            copied
                .changed
                .as_deref()
                .is_some_and(|w| w.contains("copied or restored"))
        );
        assert!(copied.went_back);
        drop((fj, meta));
        // The original, stopped cleanly, keeps its incarnation, once.
        let (fj, meta) = open(&store);
        assert_eq!(
            begin(&store, &fj, &meta, false, &[]).expect("begin"),
            Incarnation {
                number: second.number,
                changed: None,
                went_back: false
            }
        );
        drop((fj, meta));
        let (fj, meta) = open(&store);
        assert_ne!(
            begin(&store, &fj, &meta, false, &[]).expect("begin").number,
            second.number
        );
    }

    #[test]
    fn a_new_store_of_a_device_that_wrote_before_takes_a_new_incarnation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fj, meta) = open(dir.path());
        let inc = begin(dir.path(), &fj, &meta, false, &[]).expect("begin");
        assert_ne!(inc.number, 0);
        assert!(
            inc.changed
                .as_deref()
                .is_some_and(|w| w.contains("written before"))
        );
    }

    #[test]
    fn a_damaged_mark_proves_nothing() {
        assert_eq!(
            parse_mark("blazedb clean stop v1\nincarnation 7\ndev 1\nino 2\n", 1, 2),
            Mark::Clean(7)
        );
        for text in [
            "",
            "blazedb clean stop v1\nincarnation x\ndev 1\nino 2\n",
            "other\n",
        ] {
            assert!(
                matches!(parse_mark(text, 1, 2), Mark::Foreign(_)),
                "{text:?}"
            );
        }
        assert!(matches!(
            parse_mark("blazedb clean stop v1\nincarnation 7\ndev 1\nino 3\n", 1, 2),
            Mark::Foreign(_)
        ));
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
