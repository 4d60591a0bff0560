//! Notices when opening the store cut a damaged tail off fjall's journal.
//!
//! fjall's recovery drops a journal's last batch when it is incomplete or
//! fails its checksum, and says nothing. After a crash that batch was never
//! acknowledged (a write is answered only once its batch is in the journal
//! and, when fsync is asked for, synced). After a clean stop, or on a disk
//! that lied about fsync, or in a copy taken mid-write, it may have held
//! acknowledged writes. Either way the user is told, and the store stops
//! trusting its write incarnation (see `incarnation`): the seqs that batch
//! used may already be out at peers.
//!
//! The journals are `*.jnl` files in the store's directory; the check
//! compares where their data ends before fjall opens them with their
//! lengths after. fjall makes each journal 64 MiB long up front and cuts
//! the unused zeros off at the next open, so only bytes before the
//! trailing zeros count as data.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use super::StoreError;

/// Where the data of each journal file in a store's directory ends (its
/// length without trailing zeros), by path.
#[derive(Debug, Default)]
pub(super) struct Lengths(BTreeMap<PathBuf, u64>);

/// A journal file that recovery cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedTail {
    /// The journal file.
    pub file: PathBuf,
    /// How many bytes were cut off its end.
    pub bytes: u64,
}

impl std::fmt::Display for DroppedTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the last {} bytes of the journal {} were incomplete or damaged and were dropped",
            self.bytes,
            self.file.display()
        )
    }
}

/// Reads where the data of each journal in `dir` ends (none in a new
/// directory).
pub(super) fn data_ends(dir: &Path) -> Result<Lengths, StoreError> {
    journals(dir, data_end)
}

/// Reads the length of each journal in `dir`.
pub(super) fn lengths(dir: &Path) -> Result<Lengths, StoreError> {
    journals(dir, |path| Ok(std::fs::metadata(path)?.len()))
}

fn journals(
    dir: &Path,
    measure: impl Fn(&Path) -> std::io::Result<u64>,
) -> Result<Lengths, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lengths::default()),
        Err(e) => return Err(StoreError::Storage(format!("{}: {e}", dir.display()))),
    };
    let mut out = BTreeMap::new();
    for entry in entries {
        let path = entry
            .map_err(|e| StoreError::Storage(format!("{}: {e}", dir.display())))?
            .path();
        if path.extension().is_some_and(|x| x == "jnl") {
            let len = measure(&path)
                .map_err(|e| StoreError::Storage(format!("{}: {e}", path.display())))?;
            out.insert(path, len);
        }
    }
    Ok(Lengths(out))
}

/// The offset just past the last non-zero byte of the file at `path`.
fn data_end(path: &Path) -> std::io::Result<u64> {
    const CHUNK: u64 = 1 << 20;
    let mut file = File::open(path)?;
    let mut end = file.metadata()?.len();
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The journals that are now shorter than their data was in `before`
/// (from [`data_ends`]). A journal that is gone was retired whole (its
/// writes are in tables), not cut.
pub(super) fn dropped_tails(before: &Lengths, after: &Lengths) -> Vec<DroppedTail> {
    before
        .0
        .iter()
        .filter_map(|(file, &was)| {
            let now = *after.0.get(file)?;
            (now < was).then(|| DroppedTail {
                file: file.clone(),
                bytes: was - now,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_cut_off_a_journal_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = |name: &str, data: usize, zeros: usize| {
            let mut bytes = vec![7u8; data];
            bytes.resize(data + zeros, 0);
            std::fs::write(dir.path().join(name), bytes).expect("write");
        };
        j("0.jnl", 100, 0);
        j("1.jnl", 50, 0);
        j("2.jnl", 10, 0);
        // Unused room fjall made up front, with data ending inside a chunk
        // and exactly at a chunk's end.
        j("3.jnl", 40, 3 << 20);
        j("4.jnl", 1 << 20, 1 << 20);
        j("other", 70, 0);
        let before = data_ends(dir.path()).expect("data ends");
        j("0.jnl", 100, 0);
        std::fs::remove_file(dir.path().join("1.jnl")).expect("retire");
        j("2.jnl", 3, 0);
        j("3.jnl", 40, 0);
        j("4.jnl", 1 << 20, 0);
        j("5.jnl", 5, 0);
        j("other", 1, 0);
        let after = lengths(dir.path()).expect("lengths");
        assert_eq!(
            dropped_tails(&before, &after),
            vec![DroppedTail {
                file: dir.path().join("2.jnl"),
                bytes: 7
            }]
        );
        assert!(
            data_ends(&dir.path().join("missing"))
                .expect("a new store")
                .0
                .is_empty()
        );
    }
}
