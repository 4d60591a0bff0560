//! What replicas say to each other to sync a database: version vectors,
//! operation batches and state snapshots.
//!
//! Every message names its database and carries the sender's epoch for it.
//! Operation bodies travel as opaque bytes, so a replica that cannot read
//! them (a blind hub) still stores, deduplicates and forwards them by their
//! headers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::op::{DeviceId, Hlc, Op};
use crate::rules::SyncWish;

mod chunks;
mod packed;

pub use chunks::{LogChunk, MAX_CHUNK_LEN};
pub use packed::PackedOps;

/// Per origin device, the highest sequence number up to which a replica
/// holds every operation (or their effect) with no gap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionVector(BTreeMap<DeviceId, u64>);

impl VersionVector {
    /// An empty vector: nothing from anyone.
    pub fn new() -> Self {
        VersionVector::default()
    }

    /// The highest contiguous sequence number held from `origin`.
    pub fn get(&self, origin: &DeviceId) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    /// Sets the entry for `origin` (zero removes it).
    pub fn set(&mut self, origin: DeviceId, seq: u64) {
        if seq == 0 {
            self.0.remove(&origin);
        } else {
            self.0.insert(origin, seq);
        }
    }

    /// Whether the operation `(origin, seq)` is covered.
    pub fn contains(&self, origin: &DeviceId, seq: u64) -> bool {
        seq <= self.get(origin)
    }

    /// Takes in operation `(origin, seq)` if it is the next one from its
    /// origin, and says whether it was: an operation is held only once,
    /// and only with every earlier one from its origin.
    pub fn advance(&mut self, origin: DeviceId, seq: u64) -> bool {
        // One look-up: the writer advances its vector for every op it
        // applies.
        match self.0.entry(origin) {
            std::collections::btree_map::Entry::Occupied(mut held) => {
                let next = *held.get() + 1 == seq;
                if next {
                    *held.get_mut() = seq;
                }
                next
            }
            std::collections::btree_map::Entry::Vacant(none) => {
                let next = seq == 1;
                if next {
                    none.insert(seq);
                }
                next
            }
        }
    }

    /// Raises every entry to at least the one in `other`.
    pub fn merge(&mut self, other: &VersionVector) {
        for (o, s) in &other.0 {
            let e = self.0.entry(*o).or_insert(0);
            *e = (*e).max(*s);
        }
    }

    /// The entry-wise minimum of the two.
    pub fn meet(&self, other: &VersionVector) -> VersionVector {
        VersionVector(
            self.0
                .iter()
                .filter_map(|(o, s)| {
                    let m = (*s).min(other.get(o));
                    (m > 0).then_some((*o, m))
                })
                .collect(),
        )
    }

    /// Whether every entry is at least the one in `other`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        !other.is_ahead_of(self)
    }

    /// Per entry of `self`, its value and `other`'s for the same origin,
    /// in one walk over both (a hub compares vectors of a thousand origins
    /// with a thousand peers' at every write; lookups one by one cost a
    /// tree descent each).
    fn paired<'a>(&'a self, other: &'a VersionVector) -> impl Iterator<Item = (u64, u64)> + 'a {
        let mut theirs = other.0.iter().peekable();
        self.0.iter().map(move |(o, s)| {
            while theirs.next_if(|(t, _)| *t < o).is_some() {}
            match theirs.peek() {
                Some((t, v)) if *t == o => (*s, **v),
                _ => (*s, 0),
            }
        })
    }

    /// How many operations `self` holds that `other` lacks.
    pub fn ahead_of(&self, other: &VersionVector) -> u64 {
        self.paired(other).map(|(a, b)| a.saturating_sub(b)).sum()
    }

    /// Whether `self` holds any operation `other` lacks.
    pub fn is_ahead_of(&self, other: &VersionVector) -> bool {
        self.paired(other).any(|(a, b)| a > b)
    }

    /// The sum of all entries: it grows whenever the vector does.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// How many origins have entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no origin has an entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, by origin.
    pub fn iter(&self) -> impl Iterator<Item = (&DeviceId, &u64)> {
        self.0.iter()
    }

    /// The entries of `device`'s writers, one per write incarnation held
    /// ([`DeviceId::writer`]).
    pub fn writers_of(&self, device: &DeviceId) -> impl Iterator<Item = (&DeviceId, &u64)> {
        self.0.range(device.writers())
    }
}

impl FromIterator<(DeviceId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (DeviceId, u64)>>(iter: I) -> Self {
        let mut v = VersionVector::new();
        for (o, s) in iter {
            if s > v.get(&o) {
                v.set(o, s);
            }
        }
        v
    }
}

/// Identifies one history of a database on one replica. A replica that is
/// reset or restored from a backup gets a new, larger epoch, which tells
/// its peers that what they remember about it no longer holds.
pub type Epoch = u64;

/// What a replica says about itself: every operation it holds and the
/// latest clock reading it has used or seen. Every operation it makes after
/// this report has a later clock reading than `clock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The replica.
    pub device: DeviceId,
    /// Its epoch: reports of an earlier epoch no longer hold.
    pub epoch: Epoch,
    /// Its version vector.
    pub vector: VersionVector,
    /// Its clock when it made the report.
    pub clock: Hlc,
}

/// What every replica of a database holds, as a replica that has reports
/// from all of them works it out. A receiver may compact its op log as far
/// as this allows without hearing from every replica itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stable {
    /// Every replica holds at least these operations.
    pub vector: VersionVector,
    /// Every replica holds every operation stamped before this, so
    /// tombstones older than it may go.
    pub horizon: Hlc,
}

/// One record of a snapshot: its stored form, with every field's stamp, so
/// that the receiver merges it like any other replica state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The record's key in its database (collection and id).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The record's stored state.
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

/// A range of record keys: after `after` (from the start when `None`) up
/// to and including `upto` (to the end when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// The range starts after this key.
    #[serde(default)]
    pub after: Option<serde_bytes::ByteBuf>,
    /// The range ends with this key.
    #[serde(default)]
    pub upto: Option<serde_bytes::ByteBuf>,
}

impl Span {
    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.after.as_deref().is_none_or(|a| key > &a[..])
            && self.upto.as_deref().is_none_or(|u| key <= &u[..])
    }
}

/// A message of the sync protocol, about one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMessage {
    /// What the sender holds. Sent when a link comes up, now and then
    /// afterwards, and after every batch received (then it is the ACK).
    /// The receiver answers by sending what the sender lacks.
    Vector {
        /// The database.
        db: String,
        /// The sender's epoch for it.
        epoch: Epoch,
        /// The sender's version vector.
        vector: VersionVector,
        /// Whether the sender takes operations for this database (its mode
        /// is `sync` or `pull`).
        want: bool,
        /// What the sender knows about every replica (itself included),
        /// from which replicas work out what all of them hold. Empty in
        /// plain acknowledgements.
        reports: Vec<Report>,
        /// Devices removed from the mesh, each with the `seq` beyond which
        /// the sender refuses its operations: once the sender holds
        /// everything up to it, the receiver stops offering the rest.
        #[serde(default)]
        refused: Vec<(DeviceId, u64)>,
        /// What every replica holds, as the sender worked out from all
        /// their reports: a hub sends this to its devices in place of a
        /// thousand replicas' reports.
        #[serde(default)]
        stable: Option<Stable>,
        /// Less than its access rule allows, which the sender asks to
        /// receive; everything the rule allows when `None`.
        #[serde(default)]
        wish: Option<SyncWish>,
        /// The sender's records were cut to a view it no longer has: a
        /// full replica that held a partial one wants a whole snapshot, a
        /// partial one whose view changed wants a snapshot cut to its
        /// current view.
        #[serde(default)]
        lacking: bool,
        /// The database is end-to-end encrypted on the sender: its op
        /// bodies are sealed, and a replica creating it from this message
        /// makes it so too.
        #[serde(default)]
        sealed: bool,
        /// The database is end-to-end encrypted and the sender holds none
        /// of its keys: it takes sealed checkpoints, never snapshots.
        #[serde(default)]
        blind: bool,
        /// Whether the sender gives operations for this database (its mode
        /// is `sync` or `push`): a replica without the database creates it
        /// to take them.
        #[serde(default)]
        sends: bool,
        /// The sender's settings for the database, in announcements (not
        /// in acknowledgements): a replica creating the database copies
        /// its durability and conflict priority.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        settings: Option<crate::api::DbSettings>,
        /// The sender's write incarnation ([`DeviceId::writer`]; 0 for
        /// its first): a receiver tells which of a device's incarnations
        /// is still running, two copies of one disk included.
        #[serde(default, skip_serializing_if = "is_zero")]
        incarnation: u32,
    },
    /// One part of a sealed checkpoint of an end-to-end encrypted
    /// database: its records as of `vector`, encoded and sealed part by
    /// part by a device holding the key. A replica without the key keeps
    /// the newest it has whole and passes it on in place of a snapshot; a
    /// replica with the key merges it like a snapshot.
    Checkpoint {
        /// The database.
        db: String,
        /// The sender's epoch.
        epoch: Epoch,
        /// Which checkpoint: chosen at random by the device that made it.
        id: u64,
        /// What the checkpoint holds.
        vector: VersionVector,
        /// This part's number, from 0.
        part: u32,
        /// How many parts there are.
        parts: u32,
        /// The sealed part (`crate::sealed` layout).
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// Operations the receiver lacks, oldest first; per origin the
    /// sequence numbers are contiguous.
    Ops {
        /// The database.
        db: String,
        /// The sender's epoch.
        epoch: Epoch,
        /// The operations.
        ops: Vec<Op>,
    },
    /// [`SyncMessage::Ops`] as a sender builds them from its op log,
    /// already in the packed form: sent as `Ops` are, and decoded as
    /// `Ops`.
    #[serde(skip)]
    Packed {
        /// The database.
        db: String,
        /// The sender's epoch.
        epoch: Epoch,
        /// The operations.
        ops: PackedOps,
    },
    /// Operations the receiver lacks as chunks of the sender's op log,
    /// each sent whole as the sender stores it (see `chunks`): the
    /// receiver lacks every op in them. Oldest first, like `Ops`.
    #[serde(skip)]
    Chunks {
        /// The database.
        db: String,
        /// The sender's epoch.
        epoch: Epoch,
        /// The chunks.
        chunks: Vec<LogChunk>,
    },
    /// A piece of the sender's state, for a receiver too far behind for the
    /// op stream. Records come in key order; the last piece says so.
    Snapshot {
        /// The database.
        db: String,
        /// The sender's epoch.
        epoch: Epoch,
        /// Which snapshot of the sender's this piece belongs to.
        id: u64,
        /// The piece's number, from 0.
        part: u32,
        /// What the snapshot holds: once every piece is merged, the
        /// receiver holds at least this much.
        vector: VersionVector,
        /// The records of this piece.
        records: Vec<SnapshotRecord>,
        /// Whether this is the last piece.
        last: bool,
        /// For a partial replica: the key range this piece stands for.
        /// The receiver drops what it holds in the range that the piece
        /// does not carry (the records it may no longer see).
        #[serde(default)]
        span: Option<Span>,
        /// The records are cut to what the receiver, a partial replica,
        /// may see.
        #[serde(default)]
        cut: bool,
        /// Per write incarnation of a device removed from the mesh, up to
        /// which seq the sender has refused its late operations (those
        /// past its cut-off): they are being corrected, and the
        /// corrections win over whatever of them the records hold. A
        /// receiver that knows of the removal merges no snapshot holding
        /// late operations that neither it nor the sender refused.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        undone: Vec<(DeviceId, u64)>,
    },
    /// To a partial replica, in place of `Ops`: what operations it lacks
    /// did to the records it may see. Each record comes as the sender's
    /// current state of it, cut to what the receiver may see; records it
    /// may not see (any more) are named in `evict`.
    Projected {
        /// The database.
        db: String,
        /// The sender's epoch.
        epoch: Epoch,
        /// The sender's whole vector when it read the records: the
        /// receiver takes the message only if this holds everything it
        /// has taken before, so a record never goes back to an older
        /// state.
        at: VersionVector,
        /// The operations covered, per origin the first and last seq.
        /// Empty when the records are sent again: those the receiver's own
        /// writes touched, which it kept whole through a replacing
        /// snapshot.
        covers: Vec<(DeviceId, u64, u64)>,
        /// The records, cut to what the receiver may see.
        records: Vec<SnapshotRecord>,
        /// Keys of records the receiver may not see and must drop.
        #[serde(default)]
        evict: Vec<serde_bytes::ByteBuf>,
        /// The receiver's own writes refused by the sender, with why.
        #[serde(default)]
        rejected: Vec<(u64, String)>,
    },
    /// The receiver of a snapshot has merged every piece up to `part`.
    SnapshotAck {
        /// The database.
        db: String,
        /// The snapshot.
        id: u64,
        /// The latest piece merged.
        part: u32,
    },
    /// Operations of a device removed from the mesh, past its cut-off,
    /// that other replicas applied before they heard of the removal. The
    /// sender refused them but cannot undo them itself (it took some of
    /// the device's late operations too); a receiver that took none
    /// writes back the records they touched, and one that did passes them
    /// on.
    Refuted {
        /// The database.
        db: String,
        /// The operations.
        ops: Vec<Op>,
    },
}

impl SyncMessage {
    /// The database the message is about.
    pub fn db(&self) -> &str {
        match self {
            SyncMessage::Vector { db, .. }
            | SyncMessage::Ops { db, .. }
            | SyncMessage::Packed { db, .. }
            | SyncMessage::Chunks { db, .. }
            | SyncMessage::Snapshot { db, .. }
            | SyncMessage::Checkpoint { db, .. }
            | SyncMessage::SnapshotAck { db, .. }
            | SyncMessage::Refuted { db, .. }
            | SyncMessage::Projected { db, .. } => db,
        }
    }

    /// Encodes the message: `Ops` in its packed form (see `packed`),
    /// `Chunks` as `chunks` says, the rest as serde writes them.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Appends the message, encoded as [`SyncMessage::encode`] does.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            SyncMessage::Ops { db, epoch, ops } => {
                packed::encode_into(out, db, *epoch, ops);
                Ok(())
            }
            SyncMessage::Packed { db, epoch, ops } => {
                ops.encode_into(out, db, *epoch);
                Ok(())
            }
            SyncMessage::Chunks { db, epoch, chunks } => {
                chunks::encode_into(out, db, *epoch, chunks);
                Ok(())
            }
            _ => codec::encode_into(out, self),
        }
    }

    /// Decodes a message, `Ops` in either form.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if let Some(ops) = packed::decode(bytes) {
            return ops;
        }
        if let Some(chunks) = chunks::decode(bytes) {
            return chunks;
        }
        codec::from_slice(bytes)
    }
}

/// Starts a hand-written message: a map of one entry keyed `key`, whose
/// value is an array of `items` that starts with the database and epoch.
fn write_keyed_head(out: &mut Vec<u8>, key: &str, items: u32, db: &str, epoch: u64) {
    codec::raw::map_len(out, 1);
    codec::raw::str(out, key);
    codec::raw::array_len(out, items);
    codec::raw::str(out, db);
    codec::raw::uint(out, epoch);
}

/// A reader at the value of a message that is a map of one entry keyed
/// `key`; `None` for any other message.
fn keyed<'a>(bytes: &'a [u8], key: &str) -> Option<codec::raw::Reader<'a>> {
    let mut r = codec::raw::Reader::new(bytes);
    (r.map_len("").ok()? == 1 && r.key_is(key)).then_some(r)
}

/// Whether an incarnation is the first, left out of an encoded message.
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A [`VersionVector`] being read and moved op by op, which keeps the
/// entry of the writer it last touched apart: a run of ops mostly comes a
/// writer at a time, in seq order, so reading and moving their writers'
/// entries costs a map look-up a writer rather than two an op.
/// [`RunVector::into_vector`] gives the vector back.
#[derive(Debug)]
pub struct RunVector {
    rest: VersionVector,
    /// The writer touched last and its entry, which `rest` may not hold
    /// yet.
    last: Option<(DeviceId, u64)>,
}

impl RunVector {
    /// Starts from `vector`.
    pub fn new(vector: VersionVector) -> RunVector {
        RunVector {
            rest: vector,
            last: None,
        }
    }

    /// The entry of `writer`.
    pub fn get(&mut self, writer: &DeviceId) -> u64 {
        *self.entry(writer)
    }

    /// Sets the entry of `writer`.
    pub fn set(&mut self, writer: &DeviceId, seq: u64) {
        *self.entry(writer) = seq;
    }

    fn entry(&mut self, writer: &DeviceId) -> &mut u64 {
        if self.last.as_ref().is_none_or(|(w, _)| w != writer) {
            if let Some((w, seq)) = self.last.take() {
                self.rest.set(w, seq);
            }
            self.last = Some((*writer, self.rest.get(writer)));
        }
        match &mut self.last {
            Some((_, seq)) => seq,
            None => unreachable!("the entry was just taken out"),
        }
    }

    /// The vector, every entry set put back.
    pub fn into_vector(mut self) -> VersionVector {
        if let Some((w, seq)) = self.last.take() {
            self.rest.set(w, seq);
        }
        self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    #[test]
    fn a_devices_writers_are_found_among_others() {
        let v: VersionVector = [
            (dev(1), 3),
            (dev(1).writer(9), 4),
            (dev(1).writer(u32::MAX), 5),
            (dev(2), 6),
            (dev(0).writer(1), 7),
        ]
        .into_iter()
        .collect();
        let found: Vec<u64> = v.writers_of(&dev(1)).map(|(_, s)| *s).collect();
        assert_eq!(found.len(), 3);
        assert!(found.iter().all(|s| [3, 4, 5].contains(s)));
        assert_eq!(v.writers_of(&dev(3)).count(), 0);
    }

    #[test]
    fn vectors_merge_meet_and_compare() {
        let a: VersionVector = [(dev(1), 3), (dev(2), 5)].into_iter().collect();
        let b: VersionVector = [(dev(1), 4), (dev(3), 1)].into_iter().collect();
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(
            m,
            [(dev(1), 4), (dev(2), 5), (dev(3), 1)]
                .into_iter()
                .collect()
        );
        assert_eq!(a.meet(&b), [(dev(1), 3)].into_iter().collect());
        assert!(m.dominates(&a) && m.dominates(&b) && !a.dominates(&b));
        assert_eq!(m.ahead_of(&a), 2);
        assert!(a.contains(&dev(2), 5) && !a.contains(&dev(2), 6) && !a.contains(&dev(9), 1));
        let mut b = a;
        assert!(!b.advance(dev(2), 5) && !b.advance(dev(2), 7) && b.advance(dev(2), 6));
        assert!(b.advance(dev(9), 1) && b.get(&dev(9)) == 1);
    }

    fn arb_vector() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u8..4, 0u64..6), 0..5)
            .prop_map(|v| v.into_iter().map(|(d, s)| (dev(d), s)).collect())
    }

    /// An op whose body is random bytes, or a put's in its usual
    /// encoding (which the packed form stores as its parts).
    fn arb_op() -> impl Strategy<Value = Op> {
        (
            0u8..4,
            1u64..1000,
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<bool>(),
        )
            .prop_map(|(d, seq, hlc, bytes, put)| Op {
                origin: dev(d),
                seq,
                hlc: Hlc(hlc),
                priority: d % 2,
                incarnation: u32::from(d % 3) * 0x1_0001,
                body: if put {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    let fields = [("f".to_owned(), crate::Value::String(text.clone()))].into();
                    let body = crate::OpBody::Put {
                        collection: "c".into(),
                        id: text,
                        fields,
                    };
                    codec::to_vec(&body).expect("a put body encodes")
                } else {
                    bytes
                },
            })
    }

    fn arb_message() -> impl Strategy<Value = SyncMessage> {
        prop_oneof![
            (
                arb_vector(),
                any::<u64>(),
                proptest::collection::vec((0u8..4, arb_vector(), any::<u64>()), 0..3)
            )
                .prop_map(|(vector, epoch, reports)| SyncMessage::Vector {
                    db: "bugs".into(),
                    sealed: epoch % 7 == 0,
                    blind: epoch % 11 == 0,
                    epoch,
                    stable: (epoch % 5 == 0).then(|| Stable {
                        vector: vector.clone(),
                        horizon: Hlc(epoch / 2),
                    }),
                    vector,
                    want: epoch % 2 == 0,
                    sends: epoch % 4 == 0,
                    incarnation: (epoch % 3) as u32,
                    settings: (epoch % 6 == 0).then(|| crate::api::DbSettings {
                        priority: (epoch % 100) as u8,
                        ..Default::default()
                    }),
                    refused: if epoch % 3 == 0 {
                        vec![(dev(1), epoch / 7)]
                    } else {
                        Vec::new()
                    },
                    reports: reports
                        .into_iter()
                        .map(|(d, vector, c)| Report {
                            device: dev(d),
                            epoch: c / 3,
                            vector,
                            clock: Hlc(c)
                        })
                        .collect(),
                    wish: (epoch % 7 == 0).then(|| SyncWish {
                        collections: Some(vec!["bugs".into()]),
                        filter: Vec::new(),
                        exclude: vec!["big".into()],
                    }),
                    lacking: epoch % 11 == 0,
                }),
            (any::<u64>(), proptest::collection::vec(arb_op(), 0..4)).prop_map(|(epoch, ops)| {
                SyncMessage::Ops {
                    db: "d".into(),
                    epoch,
                    ops,
                }
            }),
            (
                any::<u64>(),
                arb_vector(),
                proptest::collection::vec(any::<u8>(), 0..30),
                any::<bool>()
            )
                .prop_map(|(id, vector, state, last)| SyncMessage::Snapshot {
                    db: "d".into(),
                    epoch: 7,
                    id,
                    part: (id % 5) as u32,
                    vector,
                    records: vec![SnapshotRecord {
                        key: b"c\0r".to_vec(),
                        state
                    }],
                    last,
                    span: (id % 3 == 0).then(|| Span {
                        after: Some(serde_bytes::ByteBuf::from(b"c\0a".to_vec())),
                        upto: None,
                    }),
                    cut: id % 2 == 0,
                    undone: if id % 4 == 1 {
                        vec![(DeviceId([3; 32]), id % 1000)]
                    } else {
                        Vec::new()
                    },
                }),
            (
                any::<u64>(),
                arb_vector(),
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(id, vector, sealed)| SyncMessage::Checkpoint {
                    db: "d".into(),
                    epoch: 9,
                    id,
                    vector,
                    part: (id % 4) as u32,
                    parts: 4,
                    sealed,
                }),
            (arb_vector(), proptest::collection::vec(arb_op(), 0..3)).prop_map(|(at, ops)| {
                SyncMessage::Projected {
                    db: "d".into(),
                    epoch: 3,
                    covers: ops.iter().map(|o| (o.origin, o.seq, o.seq)).collect(),
                    records: ops
                        .iter()
                        .map(|o| SnapshotRecord {
                            key: b"c\0r".to_vec(),
                            state: o.body.clone(),
                        })
                        .collect(),
                    evict: vec![serde_bytes::ByteBuf::from(b"c\0x".to_vec())],
                    rejected: ops.iter().map(|o| (o.seq, "no".to_owned())).collect(),
                    at,
                }
            }),
            (any::<u64>(), any::<u32>()).prop_map(|(id, part)| SyncMessage::SnapshotAck {
                db: "d".into(),
                id,
                part
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(seq, hlc)| SyncMessage::Refuted {
                db: "d".into(),
                ops: vec![Op {
                    origin: dev(2),
                    seq,
                    hlc: Hlc(hlc),
                    priority: 0,
                    incarnation: 0,
                    body: vec![1, 2, 3],
                }],
            }),
        ]
    }

    proptest! {
        #[test]
        fn vector_comparisons_match_their_definitions(a in arb_vector(), b in arb_vector()) {
            let origins: Vec<DeviceId> = a.iter().chain(b.iter()).map(|(o, _)| *o).collect();
            let ahead: u64 = origins
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|o| a.get(o).saturating_sub(b.get(o)))
                .sum();
            prop_assert_eq!(a.ahead_of(&b), ahead);
            prop_assert_eq!(a.is_ahead_of(&b), ahead > 0);
            prop_assert_eq!(b.dominates(&a), ahead == 0);
        }

        #[test]
        fn messages_round_trip(msg in arb_message()) {
            let bytes = msg.encode().expect("encode");
            prop_assert_eq!(SyncMessage::decode(&bytes).expect("decode"), msg);
        }

        /// Ops packed one at a time, from themselves or from their entry
        /// form, make the same message as `Ops` holding them, and build
        /// back into them.
        #[test]
        fn packed_ops_are_ops_messages(
            epoch in any::<u64>(),
            ops in proptest::collection::vec(arb_op(), 0..8),
        ) {
            let (mut built, mut copied) = (PackedOps::default(), PackedOps::default());
            for op in &ops {
                built.push(op);
                // The entry the op log would hold, read back.
                let (flags, put) = crate::op_entry::flags_of(op);
                let mut entry = Vec::new();
                crate::op_entry::write_rest(&mut entry, op, put);
                let mut r = codec::raw::Reader::new(&entry);
                let rest = crate::op_entry::read_rest(&mut r, flags).expect("reads");
                prop_assert_eq!(rest.flags(), flags);
                copied.push_entry(op.origin, &rest);
            }
            prop_assert_eq!(&built, &copied);
            let ids: Vec<(DeviceId, u64)> = ops.iter().map(|o| (o.writer(), o.seq)).collect();
            prop_assert_eq!(copied.ids(), &ids[..]);
            prop_assert_eq!(copied.len(), ops.len());
            prop_assert_eq!(&copied.to_ops().expect("builds"), &ops);
            let as_ops = SyncMessage::Ops { db: "d".into(), epoch, ops };
            let packed = SyncMessage::Packed { db: "d".into(), epoch, ops: copied };
            prop_assert_eq!(packed.db(), "d");
            let bytes = packed.encode().expect("encode");
            prop_assert_eq!(&bytes, &as_ops.encode().expect("encode"));
            prop_assert_eq!(SyncMessage::decode(&bytes).expect("decode"), as_ops);
        }

        /// Ops sent as chunks of a log arrive as the same chunks, each
        /// read into its ops; a damaged message is refused or reads as one
        /// that encodes to what it read.
        #[test]
        fn chunks_messages_carry_their_chunks_whole(
            epoch in any::<u64>(),
            ops in proptest::collection::vec(arb_op(), 1..8),
            split in any::<usize>(),
            at in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let split = split % (ops.len() + 1);
            let ids = |ops: &[Op]| -> Vec<(DeviceId, u64)> {
                ops.iter().map(|o| (o.writer(), o.seq)).collect()
            };
            let chunks: Vec<LogChunk> = [&ops[..split], &ops[split..]]
                .into_iter()
                .filter(|run| !run.is_empty())
                .map(|run| LogChunk::new(crate::log_chunk::of_ops(run), ids(run)))
                .collect();
            let msg = SyncMessage::Chunks { db: "d".into(), epoch, chunks };
            prop_assert_eq!(msg.db(), "d");
            let bytes = msg.encode().expect("encode");
            let back = SyncMessage::decode(&bytes).expect("decode");
            prop_assert_eq!(&back, &msg);
            let SyncMessage::Chunks { chunks, .. } = back else { unreachable!() };
            let mut read = Vec::new();
            for chunk in chunks {
                let held = chunk.ids().to_vec();
                let (_, chunk_ops) = chunk.into_parts().expect("reads");
                prop_assert_eq!(held, ids(&chunk_ops));
                read.extend(chunk_ops);
            }
            prop_assert_eq!(read, ops);
            let mut damaged = bytes;
            let at = at % damaged.len();
            damaged[at] ^= byte.max(1);
            if let Ok(m) = SyncMessage::decode(&damaged) {
                let again = m.encode().expect("encodes");
                prop_assert_eq!(SyncMessage::decode(&again).expect("decodes"), m);
            }
        }

        /// `Ops` go packed, in fewer bytes than serde writes them, and
        /// serde's form still reads. A damaged packed message is refused
        /// or reads as a message that encodes to what it read.
        #[test]
        fn ops_messages_go_packed(
            epoch in any::<u64>(),
            ops in proptest::collection::vec(arb_op(), 0..6),
            at in any::<usize>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
        ) {
            let msg = SyncMessage::Ops { db: "d".into(), epoch, ops };
            let bytes = msg.encode().expect("encode");
            let serde = codec::to_vec(&msg).expect("serde encodes");
            prop_assert!(packed::decode(&bytes).is_some());
            prop_assert!(packed::decode(&serde).is_none());
            let SyncMessage::Ops { ops, .. } = &msg else { unreachable!() };
            if ops.len() > 1 {
                prop_assert!(bytes.len() < serde.len(), "{} >= {}", bytes.len(), serde.len());
            }
            prop_assert_eq!(SyncMessage::decode(&serde).expect("serde's form decodes"), msg);
            let mut damaged = bytes;
            let i = at % damaged.len();
            if cut {
                damaged.truncate(i);
            } else {
                damaged[i] = byte;
            }
            if let Ok(read) = SyncMessage::decode(&damaged) {
                let again = read.encode().expect("encode");
                prop_assert_eq!(SyncMessage::decode(&again).expect("decode"), read);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = SyncMessage::decode(&bytes);
        }

        /// Damaged messages of every kind (bytes changed, the end cut
        /// off) reach deep into the decoder, which random bytes seldom do.
        #[test]
        fn damaged_messages_never_panic(
            msg in arb_message(),
            changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            keep in any::<prop::sample::Index>(),
        ) {
            let mut bytes = msg.encode().expect("encode");
            for (at, b) in changes {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            let _ = SyncMessage::decode(&bytes);
            let _ = SyncMessage::decode(&bytes[..keep.index(bytes.len())]);
        }

        #[test]
        fn advance_takes_exactly_the_next_op(v in arb_vector(), d in 0u8..5, seq in 0u64..8) {
            let mut advanced = v.clone();
            let next = v.get(&dev(d)) + 1 == seq;
            prop_assert_eq!(advanced.advance(dev(d), seq), next);
            let mut expected = v;
            if next {
                expected.set(dev(d), seq);
            }
            prop_assert_eq!(advanced, expected);
        }

        #[test]
        fn merge_is_the_least_upper_bound(a in arb_vector(), b in arb_vector()) {
            let mut m = a.clone();
            m.merge(&b);
            prop_assert!(m.dominates(&a) && m.dominates(&b));
            let mut m2 = b.clone();
            m2.merge(&a);
            prop_assert_eq!(&m, &m2);
            let meet = a.meet(&b);
            prop_assert!(a.dominates(&meet) && b.dominates(&meet));
        }
    }

    proptest! {
        /// Gets and sets in any order, over a few writers, read and leave
        /// what the same on a plain vector do.
        #[test]
        fn reads_and_leaves_what_a_plain_vector_does(
            start in proptest::collection::vec((0u8..4, 0u64..5), 0..4),
            steps in proptest::collection::vec((any::<bool>(), 0u8..4, 0u64..8), 0..40),
        ) {
            let mut plain = VersionVector::new();
            for (w, seq) in start {
                plain.set(DeviceId([w; 32]), seq);
            }
            let mut run = RunVector::new(plain.clone());
            for (is_set, w, seq) in steps {
                let writer = DeviceId([w; 32]);
                if is_set {
                    plain.set(writer, seq);
                    run.set(&writer, seq);
                } else {
                    prop_assert_eq!(run.get(&writer), plain.get(&writer));
                }
            }
            prop_assert_eq!(run.into_vector(), plain);
        }
    }
}
