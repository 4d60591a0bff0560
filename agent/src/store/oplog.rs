//! The op log's layout: entries stored in chunks.
//!
//! A commit group appends each database's new log entries as one fjall
//! entry, a *chunk*, keyed by the cursor of its first entry (big-endian,
//! so chunks iterate in commit order). A write then costs its record entry
//! and a share of one chunk rather than two fjall entries of its own,
//! which is most of what a batched write costs fjall. Entry `i` of the
//! chunk keyed `c` has cursor `c + i`: a chunk's cursors are contiguous.
//!
//! A chunk is written in the compact form, compressed when it is at
//! least [`COMPRESS_FROM`] bytes long and that saves an eighth of it or
//! more ([`blazedb_proto::log_chunk`] has the layout: sync sends a stored
//! chunk whole to a peer that lacks every entry of it).
//!
//! A chunk holding a sealed body (an end-to-end encrypted database's) is
//! not tried, and once one chunk does not compress, the others of its
//! commit group are not either.
//! A chunk's entries repeat their field names, and their clocks and seqs
//! differ in the low bytes only: the bench's puts give the disk a third
//! fewer bytes a record with their log compressed (252 against 378).
//! Those bytes are what a log costs the store: written to
//! fjall's journal, kept in its memtables (which then fill and flush
//! later) and written again to a table. Readers decompress a chunk once
//! and share it, as they share a compact chunk's bytes.
//!
//! Logs written in earlier forms still read: a bare `Op` in MessagePack
//! (starts with a map marker), or [`FRAMED_MARK`] followed by entries that
//! are each a big-endian `u32` length and an `Op` in MessagePack.
//!
//! Chunks are never changed in place: dropping entries (compaction, a kept
//! checkpoint) removes a chunk and writes what is left of it as new chunks
//! in the same batch, so a reader sees the old chunk or the new ones.

use blazedb_proto::codec::{self, CodecError, raw};
use blazedb_proto::log_chunk::{self, COMPACT_MARK, LZ4_MARK};
use blazedb_proto::op_entry;
use blazedb_proto::sealed::is_sealed;
use blazedb_proto::sync::PackedOps;
use blazedb_proto::{DeviceId, Hlc, Op};
use fjall::{Keyspace, OwnedWriteBatch, Slice};

use super::StoreError;
use super::keys;
use super::sealing::{Clear, Outgoing};

/// The first byte of a chunk in the earlier framed form.
pub(crate) const FRAMED_MARK: u8 = 0xC1;

/// A compact chunk shorter than this is stored as it is: compressing a
/// few entries saves little and costs a call.
const COMPRESS_FROM: usize = 1024;

/// A chunk is closed once it holds this many bytes: reading one entry
/// then reads at most this much, and fjall keeps its values small. A
/// reader starting inside a chunk parses the entries before its start to
/// find it (entries have no fixed size), and sync reads 512 at a time: in
/// chunks of 256 KiB (two thousand of the bench's puts) that was three
/// entries parsed for each one sent, in chunks of 32 KiB it is one and a
/// quarter, for one more fjall entry every 250 puts.
const CHUNK_BYTES: usize = 32 * 1024;

/// A chunk is closed once its origin table holds this many devices, so
/// finding an origin's place stays a short scan.
const CHUNK_ORIGINS: usize = 64;

/// One log entry: its cursor and its op, whose body is shared with the
/// chunk it was read from (no copy until [`Entry::op`]).
pub(crate) struct Entry {
    /// The entry's cursor.
    pub(crate) cursor: u64,
    chunk: Slice,
    form: Form,
}

enum Form {
    /// An entry of a compact chunk: its op but the body, and where the
    /// body lies in the chunk.
    Compact {
        head: Head,
        start: usize,
        end: usize,
        /// The body is a put's without its keys.
        put: bool,
    },
    /// An `Op` in MessagePack, at these offsets of the chunk.
    Framed { start: usize, end: usize },
}

#[derive(Clone, Copy)]
struct Head {
    origin: DeviceId,
    seq: u64,
    hlc: Hlc,
    priority: u8,
    incarnation: u32,
}

impl Entry {
    /// The writer and seq of the entry's op, which is not built (in the
    /// compact form).
    pub(crate) fn writer_seq(&self) -> Result<(DeviceId, u64), StoreError> {
        writer_seq(self.cursor, &self.chunk, &self.form)
    }

    /// The entry's origin and what follows it, as a compact chunk stores
    /// them; `None` for an entry in an earlier form.
    fn rest(&self) -> Option<(DeviceId, op_entry::Rest<'_>)> {
        match self.form {
            Form::Compact {
                head,
                start,
                end,
                put,
            } => Some((
                head.origin,
                op_entry::Rest {
                    seq: head.seq,
                    hlc: head.hlc,
                    priority: head.priority,
                    incarnation: head.incarnation,
                    body: &self.chunk[start..end],
                    put,
                },
            )),
            Form::Framed { .. } => None,
        }
    }

    /// Adds the entry's op to `out`: copied as it is stored, or built
    /// first if it is in an earlier form; a clear body is sealed by
    /// `outgoing` (which a log that may hold one passes).
    pub(crate) fn pack_into(
        &self,
        out: &mut PackedOps,
        outgoing: Option<&mut Outgoing>,
    ) -> Result<(), StoreError> {
        match (self.rest(), outgoing) {
            (Some((origin, rest)), Some(outgoing)) => {
                let writer = origin.writer(rest.incarnation);
                match outgoing.seal(writer, rest.seq, rest.hlc, rest.priority, rest.body)? {
                    Some(sealed) => out.push_entry(
                        origin,
                        &op_entry::Rest {
                            body: sealed,
                            ..rest
                        },
                    ),
                    None => out.push_entry(origin, &rest),
                }
            }
            (Some((origin, rest)), None) => out.push_entry(origin, &rest),
            (None, outgoing) => {
                let mut op = self.op()?;
                if let Some(outgoing) = outgoing {
                    outgoing.seal_op(&mut op)?;
                }
                out.push(&op);
            }
        }
        Ok(())
    }

    /// Adds the entry to `chunker` at its cursor: copied as it is stored,
    /// or built first if it is in an earlier form.
    fn keep_in(&self, chunker: &mut Chunker) -> Result<(), StoreError> {
        match self.rest() {
            Some((origin, rest)) => chunker.push_rest(self.cursor, origin, &rest),
            None => chunker.push(self.cursor, &self.op()?),
        }
        Ok(())
    }

    /// The bytes the entry's op takes, about: its body as stored, and a
    /// share for the rest.
    pub(crate) fn size(&self) -> usize {
        let body = match self.form {
            Form::Compact { start, end, .. } | Form::Framed { start, end } => end - start,
        };
        body + 64
    }

    /// The entry's op.
    pub(crate) fn op(&self) -> Result<Op, StoreError> {
        Ok(match self.form {
            Form::Compact {
                head,
                start,
                end,
                put,
            } => Op {
                origin: head.origin,
                seq: head.seq,
                hlc: head.hlc,
                priority: head.priority,
                incarnation: head.incarnation,
                body: op_entry::body_of(&self.chunk[start..end], put),
            },
            Form::Framed { start, end } => {
                codec::from_slice(&self.chunk[start..end]).map_err(|e| {
                    StoreError::Corrupt(format!("the op-log entry at cursor {}: {e}", self.cursor))
                })?
            }
        })
    }
}

/// The writer and seq of the entry at `cursor`, in the `form` it has in
/// `chunk`: from its head in a compact chunk, without building its op.
fn writer_seq(cursor: u64, chunk: &[u8], form: &Form) -> Result<(DeviceId, u64), StoreError> {
    Ok(match form {
        Form::Compact { head, .. } => (head.origin.writer(head.incarnation), head.seq),
        Form::Framed { start, end } => {
            let op: Op = codec::from_slice(&chunk[*start..*end]).map_err(|e| {
                StoreError::Corrupt(format!("the op-log entry at cursor {cursor}: {e}"))
            })?;
            (op.writer(), op.seq)
        }
    })
}

/// The entries of the chunk stored at `key`.
fn entries(key: &[u8], chunk: Slice) -> Result<Vec<Entry>, StoreError> {
    let mut reader = ChunkReader::new(key, chunk)?;
    let mut out = Vec::new();
    while let Some(entry) = reader.next_entry() {
        out.push(entry?);
    }
    Ok(out)
}

/// Reads one chunk's entries front to back, one at a time: a reader that
/// wants a few entries of a large chunk (sync reads 512 ops at a time
/// from chunks of thousands) parses no further, and shares the chunk's
/// bytes only with the entries it keeps.
struct ChunkReader {
    chunk: Slice,
    /// The chunk as stored (compressed, when `chunk` was inflated from it).
    stored: Slice,
    /// The chunk's key: the cursor of its first entry.
    first: u64,
    /// The cursor of the next entry.
    cursor: u64,
    /// Where the next entry starts in `chunk`.
    at: usize,
    /// The origin table of a compact chunk so far.
    origins: Vec<DeviceId>,
    kind: ChunkKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChunkKind {
    Compact,
    Framed,
    /// A chunk of one bare `Op`, the first form.
    Bare,
}

impl ChunkReader {
    fn new(key: &[u8], chunk: Slice) -> Result<ChunkReader, StoreError> {
        let cursor = keys::cursor_of_log_key(key)
            .ok_or_else(|| StoreError::Corrupt("op-log key is not 8 bytes".into()))?;
        let stored = chunk;
        let chunk = match stored.first() {
            Some(&LZ4_MARK) => decompress(&stored).map_err(|e| {
                StoreError::Corrupt(format!("the op-log chunk at cursor {cursor}: {e}"))
            })?,
            _ => stored.clone(),
        };
        let (kind, at) = match chunk.first() {
            Some(&COMPACT_MARK) => (ChunkKind::Compact, 1),
            Some(&FRAMED_MARK) => (ChunkKind::Framed, 1),
            _ => (ChunkKind::Bare, 0),
        };
        Ok(ChunkReader {
            chunk,
            stored,
            first: cursor,
            cursor,
            at,
            origins: Vec::new(),
            kind,
        })
    }

    /// Back to the chunk's first entry.
    fn rewind(&mut self) {
        self.cursor = self.first;
        self.at = usize::from(self.kind != ChunkKind::Bare);
        self.origins.clear();
    }

    /// Whether its entries are all read.
    fn is_done(&self) -> bool {
        self.at >= self.chunk.len() && !(self.kind == ChunkKind::Bare && self.at == 0)
    }

    /// The next entry's cursor and form, without sharing the chunk.
    fn next_form(&mut self) -> Option<Result<(u64, Form), StoreError>> {
        if self.is_done() {
            return None;
        }
        let read = match self.kind {
            ChunkKind::Compact => self.compact_form(),
            ChunkKind::Framed => self.framed_form(),
            ChunkKind::Bare => {
                self.at = self.chunk.len().max(1);
                Ok(Form::Framed {
                    start: 0,
                    end: self.chunk.len(),
                })
            }
        };
        Some(match read {
            Ok(form) => {
                self.cursor += 1;
                Ok((self.cursor - 1, form))
            }
            Err(e) => {
                // Nothing after a bad entry can be found: stop there.
                self.at = usize::MAX;
                Err(StoreError::Corrupt(format!(
                    "the op-log chunk at cursor {}: {e}",
                    self.first
                )))
            }
        })
    }

    /// The next entry.
    fn next_entry(&mut self) -> Option<Result<Entry, StoreError>> {
        Some(self.next_form()?.map(|(cursor, form)| Entry {
            cursor,
            chunk: self.chunk.clone(),
            form,
        }))
    }

    fn compact_form(&mut self) -> Result<Form, CodecError> {
        let (origin, rest) = log_chunk::read_entry(&self.chunk, &mut self.at, &mut self.origins)?;
        let end = self.at;
        Ok(Form::Compact {
            head: Head {
                origin,
                seq: rest.seq,
                hlc: rest.hlc,
                priority: rest.priority,
                incarnation: rest.incarnation,
            },
            start: end - rest.body.len(),
            end,
            put: rest.put,
        })
    }

    fn framed_form(&mut self) -> Result<Form, CodecError> {
        let chunk = &self.chunk[..];
        let mut r = raw::Reader::new(&chunk[self.at..]);
        let len = r.bytes(4, "an entry's length")?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let entry = r.bytes(len, "an entry")?;
        let end = chunk.len() - r.remaining();
        self.at = end;
        Ok(Form::Framed {
            start: end - entry.len(),
            end,
        })
    }
}

/// The compact chunk an [`LZ4_MARK`] chunk holds. The store's own chunks
/// are bounded only by what an LZ4 block can reach.
fn decompress(stored: &[u8]) -> Result<Slice, CodecError> {
    log_chunk::decompress(stored, usize::MAX).map(Slice::from)
}

/// The ops of a chunk's bytes, as the log reads them, and the same ops
/// chunked again as the store writes them. For the fuzz targets.
pub(crate) fn reread_chunk(bytes: &[u8]) -> Result<(Vec<Op>, Vec<Vec<u8>>), StoreError> {
    let key = keys::log_key(1);
    let ops = entries(&key, Slice::from(bytes))?
        .iter()
        .map(Entry::op)
        .collect::<Result<Vec<_>, _>>()?;
    let mut chunker = Chunker::default();
    for (i, op) in ops.iter().enumerate() {
        chunker.push(1 + i as u64, op);
    }
    Ok((ops, chunker.finish().map(|(_, chunk)| chunk).collect()))
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
        current: None,
        from,
        failed: None,
    }
}

/// A chunk of the log whole, as [`Forward::take_whole`] gives it.
pub(crate) struct WholeRead {
    /// The chunk as stored.
    pub(crate) stored: Slice,
    /// Each entry's writer (`Op::writer`) and seq, in order.
    pub(crate) ids: Vec<(DeviceId, u64)>,
    /// The cursor of its last entry.
    pub(crate) last: u64,
}

/// Reads the log forwards (see [`after`]).
pub(crate) struct Forward {
    chunks: Option<fjall::Iter>,
    current: Option<ChunkReader>,
    from: u64,
    failed: Option<StoreError>,
}

impl Forward {
    fn failed(e: StoreError) -> Self {
        Forward {
            chunks: None,
            current: None,
            from: 0,
            failed: Some(e),
        }
    }

    /// The next entry that `keep` wants, asked with each entry's cursor,
    /// writer (`Op::writer`) and seq. The entries it passes over share no
    /// chunk and build no op: a reader that skips most of what it walks
    /// (sync reading for a peer that holds most of the log already) pays
    /// for a head each.
    pub(crate) fn next_kept(
        &mut self,
        mut keep: impl FnMut(u64, DeviceId, u64) -> bool,
    ) -> Option<Result<Entry, StoreError>> {
        self.next_where(|cursor, chunk, form| {
            let (writer, seq) = writer_seq(cursor, chunk, form)?;
            Ok(keep(cursor, writer, seq))
        })
    }

    /// The next chunk whole, when the read stands between chunks, the
    /// next one starts at or after where it began, it inflates to at most
    /// `max_len` bytes, and `take` takes every entry of it, asked with
    /// each entry's cursor, writer (`Op::writer`), seq and whether its
    /// body is clear ([`super::sealing`]). Asked in order, and no further
    /// than the first it does not take: then the chunk is read entry by
    /// entry as usual, and `None` comes back, as it does inside a chunk,
    /// at the end of the log, or for a chunk in an earlier form.
    pub(crate) fn take_whole(
        &mut self,
        max_len: usize,
        mut take: impl FnMut(u64, DeviceId, u64, bool) -> bool,
    ) -> Option<Result<WholeRead, StoreError>> {
        if self.failed.is_some() || self.current.as_ref().is_some_and(|c| !c.is_done()) {
            return None;
        }
        let next = self.chunks.as_mut()?.next()?;
        let mut reader = match next
            .into_inner()
            .map_err(StoreError::from)
            .and_then(|(k, v)| ChunkReader::new(&k, v))
        {
            Ok(reader) => reader,
            Err(e) => return Some(Err(e)),
        };
        if reader.kind != ChunkKind::Compact
            || reader.first < self.from
            || reader.chunk.len() > max_len
        {
            self.current = Some(reader);
            return None;
        }
        let mut whole = WholeRead {
            stored: reader.stored.clone(),
            ids: Vec::new(),
            last: reader.first,
        };
        while let Some(read) = reader.next_form() {
            let taken = match read {
                Ok((
                    cursor,
                    Form::Compact {
                        head,
                        start,
                        end,
                        put,
                    },
                )) => {
                    let writer = head.origin.writer(head.incarnation);
                    let clear = !put && Clear::parse(&reader.chunk[start..end]).is_some();
                    whole.ids.push((writer, head.seq));
                    whole.last = cursor;
                    take(cursor, writer, head.seq, clear)
                }
                Ok((_, Form::Framed { .. })) => false,
                Err(e) => return Some(Err(e)),
            };
            if !taken {
                reader.rewind();
                self.current = Some(reader);
                return None;
            }
        }
        self.current = None;
        Some(Ok(whole))
    }

    /// Whether the read stands between chunks: the entries of the one
    /// it read last are all read.
    pub(crate) fn between_chunks(&self) -> bool {
        self.current.as_ref().is_none_or(ChunkReader::is_done)
    }

    /// The next entry from `from` on that `keep` wants.
    fn next_where(
        &mut self,
        mut keep: impl FnMut(u64, &Slice, &Form) -> Result<bool, StoreError>,
    ) -> Option<Result<Entry, StoreError>> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        loop {
            if let Some(chunk) = &mut self.current {
                // Entries before `from` are only walked past.
                while let Some(read) = chunk.next_form() {
                    match read {
                        Ok((cursor, _)) if cursor < self.from => {}
                        Ok((cursor, form)) => match keep(cursor, &chunk.chunk, &form) {
                            Ok(false) => {}
                            Ok(true) => {
                                return Some(Ok(Entry {
                                    cursor,
                                    chunk: chunk.chunk.clone(),
                                    form,
                                }));
                            }
                            Err(e) => return Some(Err(e)),
                        },
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
            let next = self.chunks.as_mut()?.next()?;
            match next
                .into_inner()
                .map_err(StoreError::from)
                .and_then(|(k, v)| ChunkReader::new(&k, v))
            {
                Ok(reader) => self.current = Some(reader),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl Iterator for Forward {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_where(|_, _, _| Ok(true))
    }
}

/// The entries from the newest back.
pub(crate) fn newest_first(log: &Keyspace) -> Backward {
    Backward {
        chunks: log.iter(),
        current: None,
    }
}

/// Reads the log backwards (see [`newest_first`]).
pub(crate) struct Backward {
    chunks: fjall::Iter,
    /// The chunk being read, and its entries' cursors and forms.
    current: Option<(Slice, Vec<(u64, Form)>)>,
}

impl Iterator for Backward {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((chunk, forms)) = &mut self.current
                && let Some((cursor, form)) = forms.pop()
            {
                return Some(Ok(Entry {
                    cursor,
                    chunk: chunk.clone(),
                    form,
                }));
            }
            let next = self.chunks.next_back()?;
            let read = next
                .into_inner()
                .map_err(StoreError::from)
                .and_then(|(k, v)| {
                    let mut reader = ChunkReader::new(&k, v)?;
                    let mut forms = Vec::new();
                    while let Some(read) = reader.next_form() {
                        forms.push(read?);
                    }
                    Ok((reader.chunk, forms))
                });
            match read {
                Ok(current) => self.current = Some(current),
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

/// Gathers entries into chunks in the compact form: consecutive cursors
/// share a chunk until it is [`CHUNK_BYTES`] long or names
/// [`CHUNK_ORIGINS`] devices.
#[derive(Default)]
pub(crate) struct Chunker {
    first: u64,
    count: usize,
    bytes: Vec<u8>,
    origins: Vec<DeviceId>,
    done: Vec<(u64, Vec<u8>)>,
    /// About how many bytes of entries are still to come, so that a new
    /// chunk is given its room at once instead of growing many times.
    ahead: usize,
    /// A chunk did not compress: its neighbours, written alike, are not
    /// tried.
    incompressible: bool,
    /// The chunk being gathered holds a sealed body, which does not
    /// compress: it is not tried.
    sealed: bool,
}

/// About what an entry adds to a chunk beside its body.
const ENTRY_HEAD: usize = 24;

impl Chunker {
    /// A chunker told that about `bodies` bytes of bodies in `count`
    /// entries will be pushed.
    pub(crate) fn expecting(count: usize, bodies: usize) -> Chunker {
        Chunker {
            ahead: bodies + count * ENTRY_HEAD,
            ..Chunker::default()
        }
    }

    /// Adds the entry at `cursor`.
    pub(crate) fn push(&mut self, cursor: u64, op: &Op) {
        let (flags, put) = op_entry::flags_of(op);
        let sealed = put.is_none() && is_sealed(&op.body);
        self.push_with(cursor, op.origin, flags, op.body.len(), |out| {
            op_entry::write_rest(out, op, put);
        });
        self.sealed |= sealed;
    }

    /// Adds the entry at `cursor` of a put whose `op.body` holds its parts
    /// ([`blazedb_proto::PutParts::stored`]) rather than its body.
    pub(crate) fn push_parts(&mut self, cursor: u64, op: &Op) {
        let rest = op_entry::Rest {
            seq: op.seq,
            hlc: op.hlc,
            priority: op.priority,
            incarnation: op.incarnation,
            body: &op.body,
            put: true,
        };
        self.push_rest(cursor, op.origin, &rest);
    }

    /// Adds the entry at `cursor` of the op of `origin` an entry holds as
    /// `rest`: its bytes copied as they are.
    pub(crate) fn push_rest(&mut self, cursor: u64, origin: DeviceId, rest: &op_entry::Rest<'_>) {
        self.push_with(cursor, origin, rest.flags(), rest.body.len(), |out| {
            rest.write(out);
        });
        self.sealed |= !rest.put && is_sealed(rest.body);
    }

    /// Adds an entry with `flags`, its origin written as the chunk names
    /// it, the rest by `write`; `body` is about its length.
    fn push_with(
        &mut self,
        cursor: u64,
        origin: DeviceId,
        flags: u8,
        body: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        if self.count > 0
            && (cursor != self.first + self.count as u64
                || self.bytes.len() >= CHUNK_BYTES
                || self.origins.len() >= CHUNK_ORIGINS)
        {
            self.close();
        }
        if self.count == 0 {
            self.first = cursor;
            let room = self.ahead.min(CHUNK_BYTES + ENTRY_HEAD + body);
            self.bytes.reserve(room.max(body + 64));
            self.bytes.push(COMPACT_MARK);
        }
        let before = self.bytes.len();
        log_chunk::write_head(&mut self.bytes, flags, origin, &mut self.origins);
        write(&mut self.bytes);
        self.ahead = self.ahead.saturating_sub(self.bytes.len() - before);
        self.count += 1;
    }

    /// Adds `count` entries from `cursor` on as one chunk `stored` as it
    /// is (a peer's, every op of which was logged as it came).
    pub(crate) fn keep_whole(&mut self, cursor: u64, count: usize, stored: Vec<u8>) {
        self.close();
        self.done.push((cursor, stored));
        self.ahead = self.ahead.saturating_sub(count * ENTRY_HEAD);
    }

    fn close(&mut self) {
        if self.count == 0 {
            return;
        }
        let compact = std::mem::take(&mut self.bytes);
        let stored = if compact.len() < COMPRESS_FROM || self.incompressible || self.sealed {
            compact
        } else if let Some(compressed) = log_chunk::compress(&compact) {
            compressed
        } else {
            self.incompressible = true;
            compact
        };
        self.done.push((self.first, stored));
        self.sealed = false;
        self.origins.clear();
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
                Trim::Keep => entry.keep_in(&mut kept)?,
                Trim::Stop => {
                    stop = true;
                    entry.keep_in(&mut kept)?;
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

    /// The op at `cursor`: one of a few origins, some with a priority or
    /// an incarnation; every other one a put (its fields `len` bytes),
    /// the others a body of `len` bytes.
    fn op(cursor: u64, len: usize) -> Op {
        let bytes: Vec<u8> = (0..len).map(|i| (cursor as usize + i) as u8).collect();
        let body = if cursor.is_multiple_of(2) {
            blazedb_proto::OpBody::Put {
                collection: "c".repeat(cursor as usize % 40),
                id: format!("r{cursor}"),
                fields: [("f".to_owned(), blazedb_proto::Value::Bytes(bytes))].into(),
            }
            .encode()
            .expect("encode")
        } else {
            bytes
        };
        Op {
            origin: DeviceId([(cursor % 3) as u8; 32]),
            seq: cursor * 7 % 1000,
            hlc: Hlc(cursor << 20),
            priority: if cursor.is_multiple_of(5) { 9 } else { 0 },
            incarnation: (cursor % 4) as u32 * 100_000,
            body,
        }
    }

    /// How a group is stored: as the store writes it now, or in one of
    /// the forms of earlier versions.
    #[derive(Debug, Clone, Copy)]
    enum Form {
        Compact,
        Framed,
        Bare,
    }

    fn write(db: &fjall::Database, log: &Keyspace, groups: &[(Form, Vec<(u64, usize)>)]) {
        for (form, group) in groups {
            let mut batch = db.batch();
            match form {
                Form::Compact => {
                    let mut chunker = Chunker::default();
                    for (c, len) in group {
                        chunker.push(*c, &op(*c, *len));
                    }
                    for (k, v) in chunker.finish() {
                        batch.insert(log, k, v);
                    }
                }
                Form::Framed => {
                    let mut chunk = vec![FRAMED_MARK];
                    for (c, len) in group {
                        let bytes = codec::to_vec(&op(*c, *len)).expect("encode");
                        chunk.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                        chunk.extend_from_slice(&bytes);
                    }
                    batch.insert(log, keys::log_key(group[0].0), chunk);
                }
                Form::Bare => {
                    for (c, len) in group {
                        let bytes = codec::to_vec(&op(*c, *len)).expect("encode");
                        batch.insert(log, keys::log_key(*c), bytes);
                    }
                }
            }
            batch.commit().expect("commit");
        }
    }

    fn read_all(log: &Keyspace, from: u64) -> Vec<(u64, Op)> {
        after(log, from)
            .map(|e| e.and_then(|e| Ok((e.cursor, e.op()?))).expect("read"))
            .collect()
    }

    fn form() -> impl Strategy<Value = Form> {
        prop_oneof![
            6 => Just(Form::Compact),
            1 => Just(Form::Framed),
            1 => Just(Form::Bare)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the groups, sizes, forms, restarts and trims, reading
        /// the log from any cursor gives exactly the entries written after
        /// it.
        #[test]
        fn the_log_reads_back_by_cursor_what_was_written(
            groups in proptest::collection::vec(
                (form(), proptest::collection::vec(0usize..70_000, 1..12)),
                1..10,
            ),
            reopen_after in 0usize..10,
            trim in 0u64..80,
            gap_at in 0usize..10,
        ) {
            let dir = tempfile::tempdir().expect("dir");
            let mut cursor = 0;
            let mut written = Vec::new();
            let groups: Vec<(Form, Vec<(u64, usize)>)> = groups.iter().enumerate().map(|(g, (form, sizes))| {
                // A gap between groups, as a kept checkpoint may leave.
                if g == gap_at && g > 0 { cursor += 3; }
                (*form, sizes.iter().map(|len| { cursor += 1; written.push((cursor, op(cursor, *len))); (cursor, *len) }).collect())
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
                prop_assert_eq!(read_all(&log, from), want.clone());
                // Passed over by head: every entry is asked about once,
                // and only the ones kept come back whole.
                let (mut asked, mut kept) = (Vec::new(), Vec::new());
                let mut forward = after(&log, from);
                while let Some(e) = forward.next_kept(|c, writer, seq| {
                    asked.push((c, writer, seq));
                    seq % 3 != 0
                }) {
                    let e = e.expect("read");
                    kept.push((e.cursor, e.op().expect("op")));
                }
                let heads: Vec<_> = want.iter().map(|(c, op)| (*c, op.writer(), op.seq)).collect();
                prop_assert_eq!(asked, heads);
                let wanted: Vec<_> = want.into_iter().filter(|(_, op)| op.seq % 3 != 0).collect();
                prop_assert_eq!(kept, wanted);
            }
            for (c, op) in &written {
                prop_assert_eq!(get(&log, *c).expect("get").map(|e| e.op().expect("op")), Some(op.clone()));
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

        /// A damaged chunk reads as an error naming its cursor, or as
        /// entries: never a panic.
        #[test]
        fn a_damaged_chunk_never_panics(
            sizes in proptest::collection::vec(0usize..300, 1..8),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bits in 1u8..=255,
        ) {
            let mut chunker = Chunker::default();
            for (i, len) in sizes.iter().enumerate() {
                chunker.push(10 + i as u64, &op(10 + i as u64, *len));
            }
            let (key, mut chunk) = chunker.finish().next().expect("a chunk");
            let at = flip.index(chunk.len());
            chunk[at] ^= bits;
            for bytes in [chunk.clone(), chunk[..cut.index(chunk.len())].to_vec()] {
                if let Err(e) = entries(&key, Slice::from(bytes)).and_then(|es| es.iter().map(Entry::op).collect::<Result<Vec<_>, _>>()) {
                    prop_assert!(e.to_string().contains("cursor 10"), "{}", e);
                }
            }
        }
    }

    #[test]
    fn a_damaged_chunk_is_reported_with_its_cursor() {
        let dir = tempfile::tempdir().expect("dir");
        let db = fjall::Database::builder(dir.path()).open().expect("open");
        let log = db
            .keyspace("log", KeyspaceCreateOptions::default)
            .expect("keyspace");
        log.insert(keys::log_key(7), [FRAMED_MARK, 0, 0, 0, 9, 1, 2])
            .expect("insert");
        let mut chunker = Chunker::default();
        chunker.push(9, &op(9, 40));
        let (key, chunk) = chunker.finish().next().expect("a chunk");
        log.insert(key, &chunk[..chunk.len() - 1]).expect("insert");
        let errors: Vec<String> = after(&log, 0)
            .filter_map(|e| e.err().map(|e| e.to_string()))
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("cursor 7") && errors[0].contains("cut short"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("cursor 9") && errors[1].contains("body is cut short"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_put_of_one_writer_costs_its_collection_id_and_fields_and_a_few_bytes() {
        let mut chunker = Chunker::default();
        let mut ops = Vec::new();
        let fields: blazedb_proto::Fields = [
            (
                "title".to_owned(),
                blazedb_proto::Value::from("a title of some length"),
            ),
            ("n".to_owned(), blazedb_proto::Value::Int(12_345)),
        ]
        .into();
        let fields_len = codec::to_vec(&fields).expect("encode").len();
        for c in 1..=1000 {
            let op = Op {
                origin: DeviceId([4; 32]),
                seq: 10_000 + c,
                hlc: Hlc((1_750_000_000_000 << 16) + c),
                priority: 0,
                incarnation: 0,
                body: blazedb_proto::OpBody::Put {
                    collection: "items".into(),
                    id: format!("k{c:08}"),
                    fields: fields.clone(),
                }
                .encode()
                .expect("encode"),
            };
            chunker.push(c, &op);
            ops.push(op);
        }
        let chunks: Vec<_> = chunker.finish().collect();
        let stored: usize = chunks.iter().map(|(_, v)| v.len()).sum();
        let framed: usize = ops
            .iter()
            .map(|op| 4 + codec::to_vec(op).expect("encode").len())
            .sum();
        // "items" and the id (6 + 10), the fields; flags, origin place,
        // seq, clock, body length: 1 + 1 + 3 + 8 + 1.
        let each = 16 + fields_len + 14;
        assert!(
            stored <= 1000 * each + 33 * chunks.len(),
            "{stored} bytes, {each} each"
        );
        assert!(
            stored * 2 < framed,
            "{stored} bytes against {framed} framed"
        );
        let read: Vec<Op> = chunks
            .into_iter()
            .flat_map(|(k, v)| entries(&k, Slice::from(v)).expect("read"))
            .map(|e| e.op().expect("op"))
            .collect();
        assert_eq!(read, ops, "put bodies read back byte for byte");
    }

    #[test]
    fn a_chunk_closes_when_its_origin_table_is_full() {
        let mut chunker = Chunker::default();
        let ops: Vec<Op> = (0..CHUNK_ORIGINS as u64 * 2 + 1)
            .map(|c| Op {
                origin: DeviceId([c as u8; 32]),
                ..op(c, 10)
            })
            .collect();
        for (c, op) in ops.iter().enumerate() {
            chunker.push(c as u64 + 1, op);
        }
        let chunks: Vec<_> = chunker.finish().collect();
        assert_eq!(chunks.len(), 3);
        let read: Vec<Op> = chunks
            .into_iter()
            .flat_map(|(k, v)| entries(&k, Slice::from(v)).expect("read"))
            .map(|e| e.op().expect("op"))
            .collect();
        assert_eq!(read, ops);
    }

    /// Puts alike but for their ids and clocks, as an app writes them.
    fn like_puts(n: u64) -> Vec<Op> {
        (1..=n)
            .map(|c| Op {
                origin: DeviceId([1; 32]),
                seq: c,
                hlc: Hlc(1_750_000_000_000 << 16 | c),
                priority: 0,
                incarnation: 0,
                body: blazedb_proto::OpBody::Put {
                    collection: "items".into(),
                    id: format!("k{c:08}"),
                    fields: [
                        (
                            "name".to_owned(),
                            blazedb_proto::Value::String(format!("user {c}")),
                        ),
                        ("score".to_owned(), blazedb_proto::Value::Int(c as i64 * 3)),
                        ("active".to_owned(), blazedb_proto::Value::Bool(true)),
                    ]
                    .into(),
                }
                .encode()
                .expect("encode"),
            })
            .collect()
    }

    /// `ops` chunked as the store writes them, each at its seq's cursor.
    fn chunked(ops: &[Op]) -> Vec<([u8; 8], Vec<u8>)> {
        let mut chunker = Chunker::default();
        for op in ops {
            chunker.push(op.seq, op);
        }
        chunker.finish().collect()
    }

    /// The ops `chunks` hold, in order.
    fn read_chunks(chunks: Vec<([u8; 8], Vec<u8>)>) -> Vec<Op> {
        chunks
            .into_iter()
            .flat_map(|(k, v)| entries(&k, Slice::from(v)).expect("read"))
            .map(|e| e.op().expect("op"))
            .collect()
    }

    #[test]
    fn like_entries_are_stored_compressed_and_read_back_whole_after_a_restart() {
        let ops = like_puts(2_000);
        let chunks = chunked(&ops);
        assert!(chunks.len() > 1, "the entries fill several chunks");
        let stored: usize = chunks.iter().map(|(_, v)| v.len()).sum();
        let mut compact = 0;
        for (_, v) in &chunks {
            assert_eq!(v[0], LZ4_MARK, "a chunk of like entries is compressed");
            compact += decompress(v).expect("decompress").len();
        }
        assert!(
            stored * 2 < compact,
            "stored {stored} bytes for {compact} bytes of entries"
        );

        let dir = tempfile::tempdir().expect("dir");
        for reopen in [false, true] {
            let db = fjall::Database::builder(dir.path()).open().expect("open");
            let log = db
                .keyspace("log", KeyspaceCreateOptions::default)
                .expect("keyspace");
            if !reopen {
                let mut batch = db.batch();
                for (k, v) in &chunks {
                    batch.insert(&log, *k, v.as_slice());
                }
                batch.commit().expect("commit");
            }
            let read: Vec<(u64, Op)> = read_all(&log, 0);
            let want: Vec<(u64, Op)> = ops.iter().map(|o| (o.seq, o.clone())).collect();
            assert_eq!(read, want);
            // One entry from inside a chunk, and a run from there on.
            let got = get(&log, 777).expect("get").expect("entry 777");
            assert_eq!(got.op().expect("op"), ops[776]);
            assert_eq!(read_all(&log, 1_500), want[1_500..].to_vec());
        }
    }

    #[test]
    fn a_damaged_compressed_chunk_is_refused_with_its_cursor() {
        let (key, chunk) = chunked(&like_puts(300)).swap_remove(0);
        assert_eq!(chunk[0], LZ4_MARK);
        let mut claims_much = chunk.clone();
        claims_much[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut claims_more = chunk.clone();
        let len = u32::from_be_bytes([chunk[1], chunk[2], chunk[3], chunk[4]]);
        claims_more[1..5].copy_from_slice(&(len + 1).to_be_bytes());
        let damaged = [
            (claims_much, "claims"),
            (claims_more, "does not hold"),
            (chunk[..chunk.len() / 2].to_vec(), "decompress"),
            (chunk[..3].to_vec(), "length"),
        ];
        for (bytes, says) in damaged {
            let e = entries(&key, Slice::from(bytes)).err().expect("refused");
            let e = e.to_string();
            assert!(e.contains("at cursor 1:") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn entries_that_do_not_compress_are_stored_as_they_are() {
        // Bodies of noise, as sealed bodies are.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let ops: Vec<Op> = (1..=100)
            .map(|c| Op {
                origin: DeviceId([1; 32]),
                seq: c,
                hlc: Hlc(c << 16),
                priority: 0,
                incarnation: 0,
                body: (0..900)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect(),
            })
            .collect();
        let chunks = chunked(&ops);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|(_, v)| v[0] == COMPACT_MARK));
        assert_eq!(read_chunks(chunks), ops);
    }

    #[test]
    fn chunks_of_sealed_bodies_are_not_tried() {
        // Sealed bodies never compress; these would, were they tried.
        let ops: Vec<Op> = like_puts(200)
            .into_iter()
            .map(|op| Op {
                body: [&[blazedb_proto::sealed::SEALED_MARK][..], &[0; 400]].concat(),
                ..op
            })
            .collect();
        let chunks = chunked(&ops);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|(_, v)| v[0] == COMPACT_MARK));
        // Copied as stored (compaction, a blind hub's kept entries), alike.
        let mut again = Chunker::default();
        for (k, v) in chunks {
            for e in entries(&k, Slice::from(v)).expect("read") {
                e.keep_in(&mut again).expect("keep");
            }
        }
        let chunks: Vec<_> = again.finish().collect();
        assert!(chunks.iter().all(|(_, v)| v[0] == COMPACT_MARK));
        assert_eq!(read_chunks(chunks), ops);
    }
}
