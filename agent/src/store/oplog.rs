//! The op log's layout: entries stored in chunks.
//!
//! A commit group appends each database's new log entries as one fjall
//! entry, a *chunk*, keyed by the cursor of its first entry (big-endian,
//! so chunks iterate in commit order). A write then costs its record entry
//! and a share of one chunk rather than two fjall entries of its own,
//! which is most of what a batched write costs fjall.
//!
//! A chunk holding one entry is stored bare: the entry's bytes (an `Op` in
//! MessagePack, which starts with a map marker). A longer chunk starts with
//! [`CHUNK_MARK`] (0xC1, which MessagePack never uses) followed by its
//! entries, each a big-endian `u32` length and the entry's bytes. Entry
//! `i` of the chunk keyed `c` has cursor `c + i`: a chunk's cursors are
//! contiguous. Every log written before chunks existed reads as chunks of
//! one.
//!
//! Chunks are never changed in place: dropping entries (compaction, a kept
//! checkpoint) removes a chunk and writes what is left of it as new chunks
//! in the same batch, so a reader sees the old chunk or the new ones.

use blazedb_proto::{Op, codec};
use fjall::{Keyspace, OwnedWriteBatch, Slice};

use super::StoreError;
use super::keys;

/// The first byte of a chunk of more than one entry.
pub(crate) const CHUNK_MARK: u8 = 0xC1;

/// A chunk is closed once it holds this many bytes: reading one entry
/// then reads at most this much, and fjall keeps its values small.
const CHUNK_BYTES: usize = 256 * 1024;

/// One log entry: its cursor and its bytes, shared with the chunk it was
/// read from (no copy).
pub(crate) struct Entry {
    /// The entry's cursor.
    pub(crate) cursor: u64,
    chunk: Slice,
    start: usize,
    end: usize,
}

impl Entry {
    /// The entry's bytes: an `Op` in MessagePack.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.chunk[self.start..self.end]
    }

    /// The entry decoded.
    pub(crate) fn op(&self) -> Result<Op, StoreError> {
        Ok(codec::from_slice(self.bytes())?)
    }
}

/// The entries of the chunk stored at `key`, as `(start, end)` offsets.
fn spans(key: &[u8], chunk: &[u8]) -> Result<(u64, Vec<(usize, usize)>), StoreError> {
    let first = keys::cursor_of_log_key(key)
        .ok_or_else(|| StoreError::Corrupt("op-log key is not 8 bytes".into()))?;
    if chunk.first() != Some(&CHUNK_MARK) {
        return Ok((first, vec![(0, chunk.len())]));
    }
    let mut out = Vec::new();
    let mut at = 1;
    while at < chunk.len() {
        let len = chunk
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap_or_default()) as usize)
            .ok_or_else(|| cut_chunk(first))?;
        let end = at + 4 + len;
        if end > chunk.len() {
            return Err(cut_chunk(first));
        }
        out.push((at + 4, end));
        at = end;
    }
    Ok((first, out))
}

fn cut_chunk(first: u64) -> StoreError {
    StoreError::Corrupt(format!("the op-log chunk at cursor {first} is cut short"))
}

/// The entries of one stored chunk.
fn entries(key: &[u8], chunk: Slice) -> Result<Vec<Entry>, StoreError> {
    let (first, spans) = spans(key, &chunk)?;
    Ok(spans
        .into_iter()
        .enumerate()
        .map(|(i, (start, end))| Entry {
            cursor: first + i as u64,
            chunk: chunk.clone(),
            start,
            end,
        })
        .collect())
}

/// The entries after cursor `after`, in cursor order.
pub(crate) fn after(log: &Keyspace, after: u64) -> Forward {
    let from = after.saturating_add(1);
    // The chunk holding `from` may start before it.
    let start = match log.range(..=keys::log_key(from)).next_back() {
        Some(kv) => match kv.key() {
            Ok(k) => keys::cursor_of_log_key(&k).unwrap_or(from),
            Err(e) => return Forward::failed(e.into()),
        },
        None => from,
    };
    Forward {
        chunks: Some(log.range(keys::log_key(start)..)),
        current: Vec::new().into_iter(),
        from,
        failed: None,
    }
}

/// Reads the log forwards (see [`after`]).
pub(crate) struct Forward {
    chunks: Option<fjall::Iter>,
    current: std::vec::IntoIter<Entry>,
    from: u64,
    failed: Option<StoreError>,
}

impl Forward {
    fn failed(e: StoreError) -> Self {
        Forward {
            chunks: None,
            current: Vec::new().into_iter(),
            from: 0,
            failed: Some(e),
        }
    }
}

impl Iterator for Forward {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        loop {
            if let Some(entry) = self.current.next() {
                if entry.cursor < self.from {
                    continue;
                }
                return Some(Ok(entry));
            }
            let next = self.chunks.as_mut()?.next()?;
            match next.into_inner().map_err(StoreError::from) {
                Ok((k, v)) => match entries(&k, v) {
                    Ok(e) => self.current = e.into_iter(),
                    Err(e) => return Some(Err(e)),
                },
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// The entries from the newest back.
pub(crate) fn newest_first(log: &Keyspace) -> Backward {
    Backward {
        chunks: log.iter(),
        current: Vec::new().into_iter(),
    }
}

/// Reads the log backwards (see [`newest_first`]).
pub(crate) struct Backward {
    chunks: fjall::Iter,
    current: std::vec::IntoIter<Entry>,
}

impl Iterator for Backward {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.current.next_back() {
                return Some(Ok(entry));
            }
            let next = self.chunks.next_back()?;
            match next.into_inner().map_err(StoreError::from) {
                Ok((k, v)) => match entries(&k, v) {
                    Ok(e) => self.current = e.into_iter(),
                    Err(e) => return Some(Err(e)),
                },
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// The entry at `cursor`, if the log holds it.
pub(crate) fn get(log: &Keyspace, cursor: u64) -> Result<Option<Entry>, StoreError> {
    match after(log, cursor.saturating_sub(1)).next() {
        Some(Ok(e)) if e.cursor == cursor => Ok(Some(e)),
        Some(Err(e)) => Err(e),
        _ => Ok(None),
    }
}

/// Gathers entries into chunks: consecutive cursors share a chunk until it
/// is [`CHUNK_BYTES`] long.
#[derive(Default)]
pub(crate) struct Chunker {
    first: u64,
    count: usize,
    bytes: Vec<u8>,
    done: Vec<(u64, Vec<u8>)>,
}

impl Chunker {
    /// Adds the entry at `cursor`.
    pub(crate) fn push(&mut self, cursor: u64, entry: &[u8]) {
        if self.count > 0
            && (cursor != self.first + self.count as u64 || self.bytes.len() >= CHUNK_BYTES)
        {
            self.close();
        }
        if self.count == 0 {
            self.first = cursor;
            self.bytes.push(CHUNK_MARK);
        }
        self.bytes
            .extend_from_slice(&(entry.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(entry);
        self.count += 1;
    }

    fn close(&mut self) {
        if self.count == 0 {
            return;
        }
        let mut bytes = std::mem::take(&mut self.bytes);
        if self.count == 1 {
            // A chunk of one is the bare entry.
            bytes.drain(..5);
        }
        self.done.push((self.first, bytes));
        self.count = 0;
    }

    /// The chunks, as `(key, value)`.
    pub(crate) fn finish(mut self) -> impl Iterator<Item = ([u8; 8], Vec<u8>)> {
        self.close();
        self.done.into_iter().map(|(c, b)| (keys::log_key(c), b))
    }
}

/// Removes the entries `drop` picks, rewriting each chunk that keeps some
/// of its entries (as new chunks of its contiguous runs). Visits chunks in
/// order and stops at the first chunk `drop` keeps whole after
/// [`Trim::Stop`]. Returns how many entries were dropped.
pub(crate) fn remove_where(
    log: &Keyspace,
    batch: &mut OwnedWriteBatch,
    mut drop: impl FnMut(&Entry) -> Result<Trim, StoreError>,
) -> Result<u64, StoreError> {
    let mut dropped = 0;
    for kv in log.iter() {
        let (k, v) = kv.into_inner()?;
        let all = entries(&k, v)?;
        let mut kept = Chunker::default();
        let (mut gone, mut stop) = (0, false);
        for entry in &all {
            match if stop { Trim::Keep } else { drop(entry)? } {
                Trim::Drop => gone += 1,
                Trim::Keep => kept.push(entry.cursor, entry.bytes()),
                Trim::Stop => {
                    stop = true;
                    kept.push(entry.cursor, entry.bytes());
                }
            }
        }
        if gone > 0 {
            batch.remove(log, k);
            for (key, chunk) in kept.finish() {
                batch.insert(log, key, chunk);
            }
            dropped += gone;
        }
        if stop {
            break;
        }
    }
    Ok(dropped)
}

/// What [`remove_where`] does with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trim {
    /// Remove it.
    Drop,
    /// Keep it and go on.
    Keep,
    /// Keep it and everything after it.
    Stop,
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjall::KeyspaceCreateOptions;
    use proptest::prelude::*;

    fn entry(cursor: u64, len: usize) -> Vec<u8> {
        // Starts like an `Op` map, never like a chunk.
        let mut e = vec![0x84];
        e.extend((0..len).map(|i| (cursor as usize + i) as u8));
        e
    }

    fn write(db: &fjall::Database, log: &Keyspace, groups: &[Vec<(u64, usize)>]) {
        for group in groups {
            let mut chunker = Chunker::default();
            for (c, len) in group {
                chunker.push(*c, &entry(*c, *len));
            }
            let mut batch = db.batch();
            for (k, v) in chunker.finish() {
                batch.insert(log, k, v);
            }
            batch.commit().expect("commit");
        }
    }

    fn read_all(log: &Keyspace, from: u64) -> Vec<(u64, Vec<u8>)> {
        after(log, from)
            .map(|e| e.map(|e| (e.cursor, e.bytes().to_vec())).expect("read"))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the groups, sizes, restarts and trims, reading the log
        /// from any cursor gives exactly the entries written after it.
        #[test]
        fn the_log_reads_back_by_cursor_what_was_written(
            groups in proptest::collection::vec(proptest::collection::vec(0usize..70_000, 1..12), 1..10),
            reopen_after in 0usize..10,
            trim in 0u64..80,
            gap_at in 0usize..10,
        ) {
            let dir = tempfile::tempdir().expect("dir");
            let mut cursor = 0;
            let mut written = Vec::new();
            let groups: Vec<Vec<(u64, usize)>> = groups.iter().enumerate().map(|(g, sizes)| {
                // A gap between groups, as a kept checkpoint may leave.
                if g == gap_at && g > 0 { cursor += 3; }
                sizes.iter().map(|len| { cursor += 1; written.push((cursor, entry(cursor, *len))); (cursor, *len) }).collect()
            }).collect();
            let open = || {
                let db = fjall::Database::builder(dir.path()).open().expect("open");
                let log = db.keyspace("log", KeyspaceCreateOptions::default).expect("keyspace");
                (db, log)
            };
            let (db, log) = open();
            write(&db, &log, &groups[..reopen_after.min(groups.len())]);
            drop((db, log));
            let (db, log) = open();
            write(&db, &log, &groups[reopen_after.min(groups.len())..]);
            for from in [0, 1, trim, cursor.saturating_sub(1), cursor] {
                let want: Vec<_> = written.iter().filter(|(c, _)| *c > from).cloned().collect();
                prop_assert_eq!(read_all(&log, from), want);
            }
            for (c, bytes) in &written {
                prop_assert_eq!(get(&log, *c).expect("get").map(|e| e.bytes().to_vec()), Some(bytes.clone()));
            }
            // Compaction: drop a prefix, then every other entry of what is left
            // (as a kept checkpoint drops what it covers).
            let mut batch = db.batch();
            let n = remove_where(&log, &mut batch, |e| Ok(if e.cursor <= trim { Trim::Drop } else { Trim::Stop })).expect("trim");
            batch.commit().expect("commit");
            prop_assert_eq!(n as usize, written.iter().filter(|(c, _)| *c <= trim).count());
            written.retain(|(c, _)| *c > trim);
            prop_assert_eq!(read_all(&log, 0), written.clone());
            let mut batch = db.batch();
            remove_where(&log, &mut batch, |e| Ok(if e.cursor % 2 == 0 { Trim::Drop } else { Trim::Keep })).expect("drop evens");
            batch.commit().expect("commit");
            written.retain(|(c, _)| c % 2 == 1);
            drop((db, log));
            let (_db, log) = open();
            prop_assert_eq!(read_all(&log, 0), written.clone());
            let newest: Vec<u64> = newest_first(&log).map(|e| e.expect("read back").cursor).collect();
            let mut want: Vec<u64> = written.iter().map(|(c, _)| *c).collect();
            want.reverse();
            prop_assert_eq!(newest, want);
        }
    }

    #[test]
    fn a_damaged_chunk_is_reported_with_its_cursor() {
        let dir = tempfile::tempdir().expect("dir");
        let db = fjall::Database::builder(dir.path()).open().expect("open");
        let log = db
            .keyspace("log", KeyspaceCreateOptions::default)
            .expect("keyspace");
        log.insert(keys::log_key(7), [CHUNK_MARK, 0, 0, 0, 9, 1, 2])
            .expect("insert");
        let err = after(&log, 0)
            .next()
            .expect("an item")
            .err()
            .expect("an error");
        assert!(err.to_string().contains("cursor 7 is cut short"), "{err}");
    }
}
