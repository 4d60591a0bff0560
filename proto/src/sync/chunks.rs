//! The wire form of a `Chunks` message: chunks of the sender's op log as
//! it stores them ([`crate::log_chunk`]), each sent whole to a peer that
//! lacks every entry in it. The sender copies them rather than reading
//! and packing each op, and a receiver that applies every op of one logs
//! its bytes as they came.
//!
//! ```text
//! {"log_chunks": [db, epoch, chunks]}
//! db            str
//! epoch         uint
//! chunks        array of bin: each a stored chunk, compact or compressed
//! ```

use crate::codec::{CodecError, raw};
use crate::log_chunk;
use crate::mesh::MAX_PEER_FRAME;
use crate::op::{DeviceId, Op};

use super::SyncMessage;

/// The key that marks the message.
const KEY: &str = "log_chunks";

/// The most bytes a chunk from a peer may hold once decompressed: no
/// more than a frame could bring of it uncompressed.
pub const MAX_CHUNK_LEN: usize = MAX_PEER_FRAME as usize;

/// One chunk of an op log, as its store holds it, and the ops in it.
#[derive(Debug, Clone)]
pub struct LogChunk {
    stored: Vec<u8>,
    /// Each op's writer and seq, in order.
    ids: Vec<(DeviceId, u64)>,
    /// The ops, once read (a received chunk is read as it is decoded).
    ops: Option<Vec<Op>>,
}

impl LogChunk {
    /// The chunk its store holds as `stored`, whose ops' writers and seqs
    /// are `ids`, in order (the sender read them to choose to send it).
    pub fn new(stored: Vec<u8>, ids: Vec<(DeviceId, u64)>) -> LogChunk {
        LogChunk {
            stored,
            ids,
            ops: None,
        }
    }

    /// The chunk as its sender stores it.
    pub fn stored(&self) -> &[u8] {
        &self.stored
    }

    /// Each op's writer ([`Op::writer`]) and seq, in order.
    pub fn ids(&self) -> &[(DeviceId, u64)] {
        &self.ids
    }

    /// The chunk's bytes and its ops, read from them if they were not yet.
    pub fn into_parts(self) -> Result<(Vec<u8>, Vec<Op>), CodecError> {
        let ops = match self.ops {
            Some(ops) => ops,
            None => log_chunk::ops(&self.stored, MAX_CHUNK_LEN)?,
        };
        Ok((self.stored, ops))
    }

    /// Reads a chunk a peer sent.
    fn read(stored: &[u8]) -> Result<LogChunk, CodecError> {
        let ops = log_chunk::ops(stored, MAX_CHUNK_LEN)?;
        Ok(LogChunk {
            stored: stored.to_vec(),
            ids: ops.iter().map(|op| (op.writer(), op.seq)).collect(),
            ops: Some(ops),
        })
    }
}

/// Two chunks are the same if their bytes are: the rest is read from them.
impl PartialEq for LogChunk {
    fn eq(&self, other: &LogChunk) -> bool {
        self.stored == other.stored
    }
}

/// Appends a `Chunks` message about `db`.
pub(super) fn encode_into(out: &mut Vec<u8>, db: &str, epoch: u64, chunks: &[LogChunk]) {
    super::write_keyed_head(out, KEY, 3, db, epoch);
    raw::array_len(out, u32::try_from(chunks.len()).unwrap_or(u32::MAX));
    for chunk in chunks {
        raw::bin(out, &chunk.stored);
    }
}

/// Reads a `Chunks` message; `None` when `bytes` are not one, an error
/// when they are one but damaged (a chunk included).
pub(super) fn decode(bytes: &[u8]) -> Option<Result<SyncMessage, CodecError>> {
    super::keyed(bytes, KEY).map(read_body)
}

fn read_body(mut r: raw::Reader<'_>) -> Result<SyncMessage, CodecError> {
    if r.array_len("log chunks")? != 3 {
        return Err(CodecError("log chunks are not three items".into()));
    }
    let db = r.str("the log chunks' database")?.to_owned();
    let epoch = r.uint("the log chunks' epoch")?;
    let n = r.array_len("the log chunks")?;
    // The count is the sender's: grow as chunks arrive.
    let mut chunks = Vec::with_capacity((n as usize).min(64));
    for _ in 0..n {
        chunks.push(LogChunk::read(r.bin("a log chunk")?)?);
    }
    r.end()?;
    Ok(SyncMessage::Chunks { db, epoch, chunks })
}
