//! End-to-end encrypted databases in the store.
//!
//! The store keeps the content keys this device holds (the keyring, in
//! the store's directory) beside the databases they open. On a device that
//! holds a database's key, records are stored readable (this device may
//! read them). Its op log holds the ops of peers sealed, exactly as they
//! travel, so that relaying one never seals it again; its own ops it logs
//! *clear*: the plaintext their seal covers beside the nonce drawn for it
//! ([`CLEAR_MARK`]), sealed on their way out ([`Outgoing`]). A clear body
//! compresses with its chunk, as a sealed one cannot, and a write no
//! longer waits on its seal. It adds nothing readable at rest: the
//! records are readable here, and the keyring that opens the sealed
//! entries lies beside them. A device without the key holds the database
//! *blind*: its op log only, no records, no collections, and nothing in
//! it readable.
//!
//! Invariants:
//! - No op body of an `e2e` database leaves the device unsealed, nor is
//!   taken from a peer unsealed: every read of the log for a peer
//!   ([`Outgoing`]) seals the clear bodies in it, and a clear body from a
//!   peer is refused as any unsealed one is.
//! - A clear body's nonce was drawn for it alone, and log entries are
//!   never changed in place (compaction copies them as stored): sealing
//!   it again gives the same bytes, never a second plaintext under the
//!   nonce.
//! - An op a key holder cannot open is neither applied nor logged: its
//!   origin's later ops wait behind it, and the sync engine asks again.
//! - When a blind device gets its first key, every logged op is applied
//!   (records merge the same whatever the order, so ops applied twice
//!   change nothing).

use blazedb_proto::api::{DbInfo, Encryption};
use blazedb_proto::codec::CodecError;
use blazedb_proto::sealed::{NONCE_LEN, SealedOp, is_sealed};
use blazedb_proto::{Op, OpBody, PutParts, RawPut};

use super::{DbState, Store, StoreError, read_lock, write_lock};
use crate::crypto::seal::{self, ContentKey, SealError};
use crate::sync::Unopened;

impl Unopened {
    fn of(op: &Op, e: &SealError) -> Unopened {
        let (reason, damaged) = match e {
            SealError::NoKey(epoch) => (
                format!("sealed under key epoch {epoch}, which this device does not hold"),
                false,
            ),
            SealError::NotSealed => (
                "not sealed, in an end-to-end encrypted database".to_owned(),
                true,
            ),
            other => (
                format!("does not open under its epoch's key ({other}): altered or forged"),
                true,
            ),
        };
        Unopened {
            origin: op.writer(),
            seq: op.seq,
            reason,
            damaged,
        }
    }
}

/// How this replica reads the bodies of one database's ops.
pub(crate) enum Reader {
    /// The database is not end-to-end encrypted: bodies are plain.
    Plain,
    /// This replica holds none of the database's keys: it logs and relays
    /// sealed bodies without reading them.
    Blind,
    /// This replica holds keys of the database: it opens what they open.
    Keys(Vec<ContentKey>),
}

/// One op's body as this replica reads it.
pub(crate) enum Body<'a> {
    /// The body to apply (plain, or opened).
    Readable(Plain<'a>),
    /// A sealed body a blind replica logs without applying.
    Blind,
    /// A body that may not be applied nor logged.
    Refused(Unopened),
}

/// A readable body: as the op carries it, or opened as it was sealed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Plain<'a> {
    /// An encoded `OpBody`.
    Body(&'a [u8]),
    /// A put's parts, as [`seal_body`] seals a put ([`PutParts::stored`]).
    PutParts(&'a [u8]),
}

impl<'a> Plain<'a> {
    /// What a seal covered: a put's parts, or any other body whole.
    fn of_sealed(plain: &'a [u8]) -> Plain<'a> {
        if PutParts::of_stored(plain).is_some() {
            Plain::PutParts(plain)
        } else {
            Plain::Body(plain)
        }
    }

    /// The put this body is, read in place; `None` for anything else
    /// (which [`Plain::decode`] reads).
    pub(crate) fn raw_put(self) -> Option<RawPut<'a>> {
        match self {
            Plain::Body(b) => RawPut::parse(b),
            Plain::PutParts(p) => RawPut::parse_stored(p),
        }
    }

    /// The body decoded.
    pub(crate) fn decode(self) -> Result<OpBody, CodecError> {
        OpBody::decode(&self.to_body())
    }

    /// The body as an encoded `OpBody`.
    pub(crate) fn to_body(self) -> std::borrow::Cow<'a, [u8]> {
        match self {
            Plain::Body(b) => std::borrow::Cow::Borrowed(b),
            // `PutParts` only comes from bytes that have parts.
            Plain::PutParts(p) => std::borrow::Cow::Owned(
                PutParts::of_stored(p).map_or_else(|| p.to_vec(), |parts| parts.body()),
            ),
        }
    }
}

/// Buffers opened bodies are read into, which one reader of many ops
/// (the writer applying a message) passes for each.
#[derive(Debug, Default)]
pub(crate) struct Opened {
    plain: Vec<u8>,
    aad: Vec<u8>,
}

impl Reader {
    /// Reads the body of `op`, an op this replica logged (a clear body is
    /// its own, read as it is), of the database `db`.
    pub(crate) fn read_logged<'a>(&self, db: &str, op: &'a Op, opened: &'a mut Opened) -> Body<'a> {
        match (self, Clear::parse(&op.body)) {
            (Reader::Keys(_), Some(clear)) => Body::Readable(Plain::of_sealed(clear.plain)),
            _ => self.read(db, op, opened),
        }
    }

    /// Reads the body of `op`, an op of the database `db`, opening it into
    /// `opened` if it is sealed.
    pub(crate) fn read<'a>(&self, db: &str, op: &'a Op, opened: &'a mut Opened) -> Body<'a> {
        match self {
            Reader::Plain => Body::Readable(Plain::Body(&op.body)),
            Reader::Blind if is_sealed(&op.body) => Body::Blind,
            Reader::Blind => Body::Refused(Unopened::of(op, &SealError::NotSealed)),
            // A change this replica logged for its subscribers (seq 0: a
            // snapshot's record, never sent on) is kept as the records
            // are, in the clear on a device holding the key.
            Reader::Keys(_) if op.seq == 0 && !is_sealed(&op.body) => {
                Body::Readable(Plain::Body(&op.body))
            }
            Reader::Keys(keys) => {
                let header = SealedOp::of(db, op);
                let Opened { plain, aad } = opened;
                match seal::open_into(
                    |e| keys.iter().find(|k| k.epoch == e),
                    |epoch, aad| header.associated_data_into(epoch, aad),
                    &op.body,
                    aad,
                    plain,
                ) {
                    Ok(()) => Body::Readable(Plain::of_sealed(plain)),
                    Err(e) => Body::Refused(Unopened::of(op, &e)),
                }
            }
        }
    }
}

impl DbState {
    /// Whether the database is end-to-end encrypted.
    pub fn is_e2e(&self) -> bool {
        self.settings().encryption == Encryption::E2e
    }
}

/// How many damaged copies of one op make it quarantined in `status`.
pub(crate) const QUARANTINE_AFTER: u32 = 3;

/// What is known of an op that did not open here.
#[derive(Debug, Clone)]
pub(crate) struct Noted {
    times: u32,
    reason: String,
    damaged: bool,
}

impl Store {
    /// Notes that an op of `db` did not open, for `status`.
    pub fn note_unopened(&self, db: &str, u: &Unopened) {
        let mut noted = super::lock(&self.inner.unopened);
        let n = noted
            .entry((db.to_owned(), u.origin, u.seq))
            .or_insert_with(|| Noted {
                times: 0,
                reason: String::new(),
                damaged: false,
            });
        n.times = n.times.saturating_add(1);
        n.reason.clone_from(&u.reason);
        n.damaged |= u.damaged;
    }

    /// The ops that did not open here and are still not held, oldest
    /// origin and seq first.
    pub fn unopened(&self) -> Vec<blazedb_proto::api::UnopenedOp> {
        let mut noted = super::lock(&self.inner.unopened);
        noted.retain(|(db, origin, seq), _| {
            self.db(db)
                .is_ok_and(|d| d.sync_meta().vector.get(origin) < *seq)
        });
        noted
            .iter()
            .map(|((db, origin, seq), n)| blazedb_proto::api::UnopenedOp {
                db: db.clone(),
                origin: origin.to_string(),
                seq: *seq,
                times: n.times,
                reason: n.reason.clone(),
                quarantined: n.damaged && n.times >= QUARANTINE_AFTER,
            })
            .collect()
    }

    /// The key new ops of `db` are sealed with: the newest epoch held.
    pub fn current_key(&self, db: &str) -> Option<ContentKey> {
        read_lock(&self.inner.keys).current(db).cloned()
    }

    /// The newest key epoch of `db` this device holds.
    pub fn key_epoch(&self, db: &str) -> Option<u32> {
        self.current_key(db).map(|k| k.epoch)
    }

    /// Every key of `db` this device holds, oldest first.
    pub fn keys_of(&self, db: &str) -> Vec<ContentKey> {
        read_lock(&self.inner.keys).all(db)
    }

    /// How this replica reads the ops of `db`.
    pub(crate) fn reader(&self, db: &DbState) -> Reader {
        if !db.is_e2e() {
            return Reader::Plain;
        }
        match self.keys_of(&db.name) {
            keys if keys.is_empty() => Reader::Blind,
            keys => Reader::Keys(keys),
        }
    }

    /// Fails with [`StoreError::Sealed`] if `db` is end-to-end encrypted
    /// and this device cannot read it.
    pub(crate) fn readable(&self, db: &DbState) -> Result<(), StoreError> {
        if db.is_e2e() && self.current_key(&db.name).is_none() {
            return Err(StoreError::Sealed(db.name.clone()));
        }
        Ok(())
    }

    /// Takes a key of `db`, durably. Returns whether it was new. The first
    /// key of a database held blind so far makes the writer apply every
    /// op logged for it.
    pub fn add_key(&self, db: &str, key: ContentKey) -> Result<bool, StoreError> {
        let first = self.current_key(db).is_none();
        let added = write_lock(&self.inner.keys).insert(db, key)?;
        if added && first && self.db(db).is_ok_and(|d| d.is_e2e()) {
            let db = db.to_owned();
            self.submit(super::Command::Materialize {
                db,
                reply: Box::new(|r| {
                    if let Err(e) = r {
                        tracing::warn!("could not apply the ops held blind until now: {e}");
                    }
                }),
            });
        }
        Ok(added)
    }

    /// Makes the first key of a database created here.
    pub(crate) fn make_first_key(&self, db: &str) -> Result<(), StoreError> {
        if self.current_key(db).is_some() {
            return Ok(());
        }
        let key = ContentKey::generate(1)
            .map_err(|e| StoreError::Storage(format!("cannot make a content key: {e}")))?;
        write_lock(&self.inner.keys).insert(db, key)?;
        Ok(())
    }

    /// Forgets the keys of a dropped database.
    pub(crate) fn forget_keys(&self, db: &str) -> Result<(), StoreError> {
        Ok(write_lock(&self.inner.keys).forget(db)?)
    }

    /// A database's description, with the key epoch this device holds.
    pub(crate) fn info_of(&self, db: &DbState) -> DbInfo {
        let mut info = db.info();
        if db.is_e2e() {
            info.key_epoch = self.key_epoch(&db.name);
        }
        info
    }
}

/// The first byte of a clear body: this device's own op of an `e2e`
/// database as its log holds it, sealed only on its way out.
///
/// ```text
/// 0xC7 | key epoch (u32 BE) | nonce (12 bytes) | what the seal will cover
/// ```
///
/// What the seal covers is a put's parts ([`PutParts::stored`]) or any
/// other body whole, as [`seal_body`] seals them. No op body starts with
/// 0xC7 (a MessagePack ext, where an `OpBody` is a map), nor does a sealed
/// one, and a clear body never travels.
pub(crate) const CLEAR_MARK: u8 = 0xC7;

/// The bytes of a clear body before its plaintext.
const CLEAR_HEADER: usize = 1 + 4 + NONCE_LEN;

/// A clear body's parts, borrowed from its bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clear<'a> {
    epoch: u32,
    nonce: [u8; NONCE_LEN],
    plain: &'a [u8],
}

impl<'a> Clear<'a> {
    /// Reads a clear body; `None` for any other.
    pub(crate) fn parse(body: &'a [u8]) -> Option<Clear<'a>> {
        let (head, plain) = body.split_at_checked(CLEAR_HEADER)?;
        if head[0] != CLEAR_MARK {
            return None;
        }
        Some(Clear {
            epoch: u32::from_be_bytes(head[1..5].try_into().ok()?),
            nonce: head[5..].try_into().ok()?,
            plain,
        })
    }

    /// The clear body of this device's new op, which `body` is (a put as
    /// its parts when `parts`), to be sealed under `key` with a nonce drawn
    /// for it now.
    pub(crate) fn of_new(
        key: &ContentKey,
        body: &[u8],
        parts: bool,
    ) -> Result<Vec<u8>, StoreError> {
        let nonce = key.next_nonce().map_err(cannot_seal)?;
        let put = if parts { None } else { PutParts::of_body(body) };
        let len = put.as_ref().map_or(body.len(), PutParts::stored_len);
        let mut out = Vec::with_capacity(CLEAR_HEADER + len);
        out.push(CLEAR_MARK);
        out.extend_from_slice(&key.epoch.to_be_bytes());
        out.extend_from_slice(&nonce);
        match put {
            Some(put) => put.stored(&mut out),
            None => out.extend_from_slice(body),
        }
        Ok(out)
    }
}

/// Seals the clear bodies of one database's log as they are read for a
/// peer: each under the key of the epoch it names, with the nonce drawn
/// for it, so every peer gets the bytes the op was given.
pub(crate) struct Outgoing {
    db: String,
    keys: Vec<ContentKey>,
    aad: Vec<u8>,
    sealed: Vec<u8>,
}

impl Outgoing {
    /// The sealer of `db`'s log; `None` for a database that is not
    /// end-to-end encrypted, whose bodies go as they are stored. Where the
    /// keys are missing, a clear body fails to seal: it is never sent as
    /// it is.
    pub(crate) fn of(store: &Store, db: &DbState) -> Option<Outgoing> {
        db.is_e2e().then(|| Outgoing {
            db: db.name.clone(),
            keys: store.keys_of(&db.name),
            aad: Vec::new(),
            sealed: Vec::new(),
        })
    }

    /// The sealed body of the op with this header and `body`, if `body`
    /// is clear; `None` if it goes as it is stored.
    pub(crate) fn seal(
        &mut self,
        writer: blazedb_proto::DeviceId,
        seq: u64,
        hlc: blazedb_proto::Hlc,
        priority: u8,
        body: &[u8],
    ) -> Result<Option<&[u8]>, StoreError> {
        let Some(clear) = Clear::parse(body) else {
            return Ok(None);
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.epoch == clear.epoch)
            .ok_or_else(|| cannot_seal(SealError::NoKey(clear.epoch)))?;
        let header = SealedOp {
            db: &self.db,
            writer,
            seq,
            hlc,
            priority,
        };
        self.aad.clear();
        header.associated_data_into(clear.epoch, &mut self.aad);
        self.sealed.clear();
        key.seal_at(clear.nonce, &self.aad, &mut self.sealed, |out| {
            out.extend_from_slice(clear.plain);
        })
        .map_err(cannot_seal)?;
        Ok(Some(&self.sealed))
    }

    /// `op` as it goes to a peer: its body sealed if it is clear.
    pub(crate) fn seal_op(&mut self, op: &mut Op) -> Result<(), StoreError> {
        if let Some(sealed) = self.seal(op.writer(), op.seq, op.hlc, op.priority, &op.body)? {
            op.body = sealed.to_vec();
        }
        Ok(())
    }
}

/// Seals `body` as the body of the op `header` under `key`. A put's body
/// is sealed as its parts alone ([`PutParts::stored`]), which spares the
/// keys of its maps; [`Reader::read`] gives the body back whole. The
/// associated data is built in `aad`, a buffer the caller may reuse.
pub(crate) fn seal_body(
    key: &ContentKey,
    header: &SealedOp<'_>,
    body: &[u8],
    aad: &mut Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    aad.clear();
    header.associated_data_into(key.epoch, aad);
    match PutParts::of_body(body) {
        Some(parts) => key.seal_written(aad, parts.stored_len(), |out| parts.stored(out)),
        None => key.seal_with(aad, body),
    }
    .map_err(cannot_seal)
}

fn cannot_seal(e: SealError) -> StoreError {
    StoreError::Storage(format!("cannot seal an op: {e}"))
}

#[cfg(test)]
mod tests {
    use blazedb_proto::api::{DbSettings, Encryption, Write};
    use blazedb_proto::{DeviceId, Fields, Value, VersionVector};

    use super::*;
    use crate::store::test_dev::{Dev, dev, published, rt};
    use crate::sync::{ReadLimits, SyncStore as _, WriteScreen};

    const MARK: &str = "zebra-marker";

    /// Room for every op the tests write.
    const ALL: ReadLimits = ReadLimits {
        max_items: 1000,
        max_bytes: 1 << 20,
    };

    fn e2e() -> DbSettings {
        DbSettings {
            encryption: Encryption::E2e,
            ..DbSettings::default()
        }
    }

    /// Writes `n` marked records on `d`'s e2e database "notes" and returns
    /// the ops as a peer receives them.
    fn write_marked(rt: &tokio::runtime::Runtime, d: &Dev, n: usize) -> Vec<Op> {
        let writes = (0..n)
            .map(|i| Write::Put {
                collection: format!("{MARK}-col"),
                id: Some(format!("{MARK}-{i}")),
                fields: Fields::from([(format!("{MARK}-field"), Value::from(MARK))]),
            })
            .collect();
        rt.block_on(d.store.write("notes", writes)).expect("write");
        d.store
            .read_ops("notes", &VersionVector::new(), 0, ALL)
            .expect("read the log")
            .ops
    }

    /// How far `d` holds `origin`'s ops of "notes".
    fn held(d: &Dev, origin: &DeviceId) -> u64 {
        d.store
            .sync_state("notes")
            .expect("state")
            .vector
            .get(origin)
    }

    fn shows(bytes: &[u8]) -> bool {
        bytes.windows(MARK.len()).any(|w| w == MARK.as_bytes())
    }

    #[test]
    fn a_put_is_sealed_as_its_parts_and_opens_whole() {
        let key = ContentKey::from_bytes(1, [9; 32]).expect("a key");
        let op = |body: Vec<u8>| Op {
            origin: DeviceId([4; 32]),
            seq: 3,
            hlc: blazedb_proto::Hlc(1 << 30),
            priority: 0,
            incarnation: 0,
            body,
        };
        let put = blazedb_proto::OpBody::Put {
            collection: "notes".into(),
            id: "n1".into(),
            fields: [("text".to_owned(), Value::from("hello"))].into(),
        };
        let delete = blazedb_proto::OpBody::Delete {
            collection: "notes".into(),
            id: "n1".into(),
        };
        let reader = Reader::Keys(vec![key.clone()]);
        for (body, spared) in [(put, 27), (delete, 0)] {
            let plain = body.encode().expect("encode");
            let mut sealed = op(Vec::new());
            sealed.body = seal_body(&key, &SealedOp::of("d", &sealed), &plain, &mut Vec::new())
                .expect("seal");
            let whole = key
                .seal(&SealedOp::of("d", &sealed), &plain)
                .expect("seal whole");
            assert_eq!(sealed.body.len() + spared, whole.len(), "{body:?}");
            match reader.read("d", &sealed, &mut Opened::default()) {
                Body::Readable(opened) => assert_eq!(opened.to_body().as_ref(), &plain[..]),
                _ => panic!("{body:?} does not open"),
            }
        }
    }

    #[test]
    fn a_writer_sends_sealed_bodies_and_a_keyless_replica_holds_them_blind_until_its_key() {
        let rt = rt();
        let (a, mut b) = (dev(1), dev(2));
        let info = rt
            .block_on(a.store.create_db("notes", e2e(), false))
            .expect("create");
        assert_eq!(info.key_epoch, Some(1), "the creator makes the first key");
        let ops = write_marked(&rt, &a, 3);
        assert_eq!(ops.len(), 3);
        for op in &ops {
            assert!(is_sealed(&op.body), "a body left plain");
            assert!(!shows(&op.body));
        }
        let got = a
            .store
            .get("notes", &format!("{MARK}-col"), &format!("{MARK}-1"));
        assert!(
            got.expect("read").is_some(),
            "the writer reads its own record"
        );

        // B made the database from a peer's announcement: it holds no key.
        let made = rt
            .block_on(b.store.create_db_from_peer("notes", e2e()))
            .expect("create on b");
        assert_eq!(made.key_epoch, None);
        let applied = b
            .store
            .apply_ops("notes", ops.clone(), &WriteScreen::default())
            .expect("apply");
        assert!(applied.unopened.is_empty());
        let state = b.store.sync_state("notes").expect("state");
        assert_eq!(
            state.vector.get(&DeviceId([1; 32])),
            3,
            "held blind, counted"
        );
        published(&b.store, "notes", 3);
        let err = b
            .store
            .get("notes", &format!("{MARK}-col"), &format!("{MARK}-1"))
            .expect_err("a blind replica reads nothing");
        assert!(matches!(err, StoreError::Sealed(_)), "{err}");
        assert!(
            b.store
                .db("notes")
                .expect("db")
                .collections
                .read()
                .expect("lock")
                .is_empty()
        );
        let relayed = b
            .store
            .read_ops("notes", &VersionVector::new(), 0, ALL)
            .expect("read")
            .ops;
        assert_eq!(relayed, ops, "a blind replica relays the ops as they came");

        // Its key arrives: everything logged is applied.
        let key = a.store.current_key("notes").expect("a's key");
        assert!(b.store.add_key("notes", key).expect("add the key"));
        // The writer applies them on its thread, in queue order: a later
        // command's answer means they are applied.
        rt.block_on(b.store.create_db("barrier", Default::default(), true))
            .expect("round trip");
        let found = b
            .store
            .get("notes", &format!("{MARK}-col"), &format!("{MARK}-2"))
            .expect("read");
        let found = found.expect("the record after the key came");
        assert_eq!(found.fields[&format!("{MARK}-field")], Value::from(MARK));
        rt.block_on(a.store.shutdown()).expect("shut down");
        rt.block_on(b.store.shutdown()).expect("shut down");
    }

    proptest::proptest! {
        /// A clear body of any op seals into what opens as that op's body,
        /// into the same bytes every time, and as no other op; and any
        /// bytes read as a clear body give back what was put in them.
        #[test]
        fn a_clear_body_seals_alike_and_opens_as_its_op(
            collection in "[a-z]{1,12}",
            id in ".{0,20}",
            text in ".{0,80}",
            delete in proptest::prelude::any::<bool>(),
            seq in 1u64..1_000_000,
            priority in 0u8..4,
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let body = if delete {
                blazedb_proto::OpBody::Delete { collection, id }
            } else {
                blazedb_proto::OpBody::Put {
                    collection,
                    id,
                    fields: Fields::from([("text".to_owned(), Value::from(text))]),
                }
            }
            .encode()
            .expect("encode");
            let key = ContentKey::from_bytes(2, [5; 32]).expect("a key");
            let op = Op {
                origin: DeviceId([6; 32]),
                seq,
                hlc: blazedb_proto::Hlc(seq << 16),
                priority,
                incarnation: 0,
                body: Clear::of_new(&key, &body, false).expect("clear"),
            };
            let clear = Clear::parse(&op.body).expect("reads back");
            proptest::prop_assert_eq!(clear.epoch, 2);
            let mut out = Outgoing {
                db: "d".into(),
                keys: vec![key.clone()],
                aad: Vec::new(),
                sealed: Vec::new(),
            };
            let mut first = op.clone();
            out.seal_op(&mut first).expect("seal");
            let mut again = op.clone();
            out.seal_op(&mut again).expect("seal again");
            proptest::prop_assert_eq!(&first.body, &again.body);
            let reader = Reader::Keys(vec![key]);
            match reader.read("d", &first, &mut Opened::default()) {
                Body::Readable(plain) => {
                    let opened = plain.to_body().into_owned();
                    proptest::prop_assert_eq!(opened, body);
                }
                _ => proptest::prop_assert!(false, "does not open"),
            }
            let mut moved = first.clone();
            moved.seq += 1;
            proptest::prop_assert!(!matches!(
                reader.read("d", &moved, &mut Opened::default()),
                Body::Readable(_)
            ));
            // Arbitrary bytes: a clear body only behind its mark.
            if let Some(c) = Clear::parse(&junk) {
                proptest::prop_assert_eq!(junk[0], CLEAR_MARK);
                proptest::prop_assert_eq!(c.plain, &junk[CLEAR_HEADER..]);
            }
        }
    }

    #[test]
    fn own_ops_are_logged_clear_and_leave_sealed_alike_every_time() {
        let rt = rt();
        let a = dev(1);
        rt.block_on(a.store.create_db("notes", e2e(), false))
            .expect("create");
        let n = 300;
        let ops = write_marked(&rt, &a, n);
        assert_eq!(ops.len(), n);

        // The log holds them clear, and so compressed with their chunk.
        let db = a.store.db("notes").expect("db");
        let logged: Vec<Op> = super::super::oplog::after(&db.log, 0)
            .map(|e| e.and_then(|e| e.op()).expect("a log entry"))
            .collect();
        assert_eq!(logged.len(), n);
        assert!(
            logged
                .iter()
                .all(|op| Clear::parse(&op.body).is_some() && shows(&op.body))
        );
        for chunk in db.log.iter() {
            let (_, chunk) = chunk.into_inner().expect("a chunk");
            assert_eq!(
                chunk[0],
                blazedb_proto::log_chunk::LZ4_MARK,
                "a chunk of clear bodies is stored compressed"
            );
        }

        // Subscribers read them as written.
        let (changes, last) = a.store.read_changes(&db, 0, None, n).expect("changes");
        assert_eq!(last, n as u64);
        for (i, c) in changes.iter().enumerate() {
            assert_eq!(c.id, format!("{MARK}-{i}"));
            assert_eq!(c.fields[&format!("{MARK}-field")], Value::from(MARK));
        }
        assert_eq!(changes.len(), n);

        // Each leaves sealed, bound to itself, under a nonce of its own.
        let reader = Reader::Keys(vec![a.store.current_key("notes").expect("key")]);
        let mut nonces = std::collections::HashSet::new();
        for (i, op) in ops.iter().enumerate() {
            assert!(
                is_sealed(&op.body) && !shows(&op.body),
                "op {i} left unsealed"
            );
            let sealed = blazedb_proto::sealed::SealedBody::parse(&op.body).expect("sealed");
            assert!(nonces.insert(sealed.nonce), "op {i} reused a nonce");
            match reader.read("notes", op, &mut Opened::default()) {
                Body::Readable(plain) => {
                    let body = plain.decode().expect("decode");
                    assert_eq!(
                        body.id(),
                        format!("{MARK}-{i}"),
                        "op {i} holds another's body"
                    );
                }
                _ => panic!("op {i} does not open"),
            }
            // Bound to its own seq: under another's, it does not open.
            let mut moved = op.clone();
            moved.seq += 1;
            assert!(
                !matches!(
                    reader.read("notes", &moved, &mut Opened::default()),
                    Body::Readable(_)
                ),
                "op {i} opens under another seq"
            );
        }

        // Read again, packed as sync sends them, or after a restart (the
        // key loaded again draws new nonces for new ops only), every op
        // is sealed into the same bytes.
        let all = ALL;
        let packed = a
            .store
            .read_ops_packed("notes", &VersionVector::new(), 0, all)
            .expect("read packed")
            .ops
            .to_ops()
            .expect("unpack");
        assert_eq!(packed, ops);

        // Without the key of their epoch, clear ops are not sent at all,
        // rather than sent as they are.
        let key = a.store.current_key("notes").expect("key");
        a.store
            .inner
            .keys
            .write()
            .expect("lock")
            .forget("notes")
            .expect("forget");
        let none = VersionVector::new();
        let err = a
            .store
            .read_ops("notes", &none, 0, all)
            .expect_err("sent unsealed");
        assert!(err.to_string().contains("no key of epoch 1"), "{err}");
        let err = a
            .store
            .read_ops_packed("notes", &none, 0, all)
            .expect_err("sent unsealed");
        assert!(err.to_string().contains("no key of epoch 1"), "{err}");
        a.store
            .inner
            .keys
            .write()
            .expect("lock")
            .insert("notes", key)
            .expect("insert");
        drop(db);
        let Dev { dir, store } = a;
        rt.block_on(store.shutdown()).expect("shut down");
        drop(store);
        let store = Store::open(dir.path(), DeviceId([1; 32]), Default::default()).expect("reopen");
        let again = store
            .read_ops("notes", &VersionVector::new(), 0, all)
            .expect("read after a restart")
            .ops;
        assert_eq!(again, ops);
        rt.block_on(store.shutdown()).expect("shut down");
    }

    #[test]
    fn an_altered_op_is_neither_applied_nor_logged_and_stops_its_origin_there() {
        let rt = rt();
        let (a, mut b) = (dev(1), dev(2));
        rt.block_on(a.store.create_db("notes", e2e(), false))
            .expect("create");
        rt.block_on(b.store.create_db("notes", e2e(), false))
            .expect("create");
        // B holds A's key in place of the one it made.
        let mut b_keys = b.store.inner.keys.write().expect("lock");
        b_keys.forget("notes").expect("forget");
        b_keys
            .insert("notes", a.store.current_key("notes").expect("key"))
            .expect("insert");
        drop(b_keys);
        let mut ops = write_marked(&rt, &a, 3);
        let last = ops[1].body.len() - 1;
        ops[1].body[last] ^= 1;
        let applied = b
            .store
            .apply_ops("notes", ops.clone(), &WriteScreen::default())
            .expect("apply");
        assert_eq!(applied.unopened.len(), 1, "{applied:?}");
        assert!(applied.unopened[0].damaged);
        assert_eq!(applied.unopened[0].seq, 2);
        let origin = DeviceId([1; 32]);
        assert_eq!(held(&b, &origin), 1);
        let col = format!("{MARK}-col");
        assert!(
            b.store
                .get("notes", &col, &format!("{MARK}-0"))
                .expect("read")
                .is_some()
        );
        assert!(
            b.store
                .get("notes", &col, &format!("{MARK}-2"))
                .expect("read")
                .is_none()
        );

        // The same op unaltered, from another path, opens.
        let fresh = write_marked(&rt, &a, 0);
        let applied = b
            .store
            .apply_ops("notes", fresh[1..].to_vec(), &WriteScreen::default())
            .expect("apply");
        assert!(applied.unopened.is_empty());
        assert_eq!(held(&b, &origin), 3);

        // A plain body in an e2e database is refused too.
        let mut plain = fresh[2].clone();
        plain.seq = 4;
        plain.body = blazedb_proto::OpBody::Delete {
            collection: col,
            id: format!("{MARK}-0"),
        }
        .encode()
        .expect("encode");
        let applied = b
            .store
            .apply_ops("notes", vec![plain], &WriteScreen::default())
            .expect("apply");
        assert_eq!(applied.unopened.len(), 1);
        assert_eq!(held(&b, &origin), 3);

        // So is a clear body, as a writer logs its own: only sealed ones
        // are taken from a peer.
        let mut clear = fresh[2].clone();
        clear.seq = 4;
        clear.body = Clear::of_new(
            &a.store.current_key("notes").expect("key"),
            &blazedb_proto::OpBody::Delete {
                collection: format!("{MARK}-col"),
                id: format!("{MARK}-0"),
            }
            .encode()
            .expect("encode"),
            false,
        )
        .expect("a clear body");
        let applied = b
            .store
            .apply_ops("notes", vec![clear], &WriteScreen::default())
            .expect("apply");
        assert_eq!(applied.unopened.len(), 1, "{applied:?}");
        assert!(applied.unopened[0].damaged);
        assert_eq!(held(&b, &origin), 3);
        rt.block_on(a.store.shutdown()).expect("shut down");
        rt.block_on(b.store.shutdown()).expect("shut down");
    }

    #[test]
    fn writes_and_reads_of_a_database_without_its_key_say_sealed() {
        let rt = rt();
        let d = dev(1);
        rt.block_on(d.store.create_db_from_peer("notes", e2e()))
            .expect("create");
        let put = Write::Put {
            collection: "c".into(),
            id: Some("x".into()),
            fields: Fields::new(),
        };
        let err = rt
            .block_on(d.store.write("notes", vec![put]))
            .expect_err("no key to seal with");
        assert_eq!(err.code(), blazedb_proto::ErrorCode::Sealed, "{err}");
        assert!(err.to_string().contains("db key grant"), "{err}");
        rt.block_on(d.store.shutdown()).expect("shut down");
    }

    #[test]
    fn a_checkpoint_is_kept_blind_in_place_of_the_ops_it_covers_and_merged_with_the_key() {
        let rt = rt();
        let (a, mut hub, mut c) = (dev(1), dev(2), dev(3));
        rt.block_on(a.store.create_db("notes", e2e(), false))
            .expect("create");
        for d in [&hub, &c] {
            rt.block_on(d.store.create_db_from_peer("notes", e2e()))
                .expect("create");
        }
        let ops = write_marked(&rt, &a, 30);
        hub.store
            .apply_ops("notes", ops[..10].to_vec(), &WriteScreen::default())
            .expect("apply");
        let checkpoint = a
            .store
            .make_checkpoint("notes")
            .expect("make")
            .expect("a key holder makes one");
        assert_eq!(checkpoint.vector.total(), 30);
        assert!(
            checkpoint.parts.iter().all(|p| !shows(p)),
            "a part shows the records"
        );

        // The blind hub keeps it, counts what it covers, drops those ops.
        assert!(
            hub.store
                .take_checkpoint("notes", checkpoint.clone())
                .expect("take")
        );
        let state = hub.store.sync_state("notes").expect("state");
        assert_eq!(state.vector.total(), 30);
        assert_eq!(state.floor.total(), 30);
        let limits = ALL;
        let logged = hub
            .store
            .read_ops("notes", &VersionVector::new(), 0, limits)
            .expect("read");
        assert!(
            logged.ops.is_empty(),
            "ops the checkpoint covers are still logged"
        );
        assert_eq!(
            hub.store.checkpoint("notes").expect("read"),
            Some(checkpoint.clone())
        );
        assert!(
            !hub.store
                .take_checkpoint("notes", checkpoint)
                .expect("take"),
            "the same checkpoint again"
        );

        // A key holder merges what the hub hands on; an altered part is
        // refused whole.
        let kept = hub.store.checkpoint("notes").expect("read").expect("kept");
        let key = a.store.current_key("notes").expect("key");
        c.store.add_key("notes", key).expect("key");
        let mut altered = kept.clone();
        altered.parts[0][30] ^= 1;
        assert!(!c.store.take_checkpoint("notes", altered).expect("take"));
        assert_eq!(
            c.store.sync_state("notes").expect("state").vector.total(),
            0
        );
        assert!(c.store.take_checkpoint("notes", kept).expect("take"));
        assert_eq!(
            c.store.sync_state("notes").expect("state").vector.total(),
            30
        );
        let got = c
            .store
            .get("notes", &format!("{MARK}-col"), &format!("{MARK}-29"))
            .expect("read");
        assert!(got.is_some(), "a record of the checkpoint");
        for d in [a, hub, c] {
            rt.block_on(d.store.shutdown()).expect("shut down");
        }
    }
}
