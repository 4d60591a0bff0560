//! Encoding before stamping: the record a put makes is encoded on the
//! caller's thread with fixed-width placeholders where its clock reading
//! goes, and the writer thread only fills them in. Tests check the bytes
//! are exactly what encoding the stamped record gives.

use blazedb_proto::codec::{CodecError, raw};

use super::record::format::fresh_record;
use blazedb_proto::{DeviceId, Fields, Hlc};

/// The most holes a [`Holes`] has: a fresh record's version and its one
/// stamp's clock.
const MAX_HOLES: usize = 2;

/// Encoded bytes with 8-byte holes to fill in. The holes' places are kept
/// inline: a list of them was one more allocation for every put.
#[derive(Debug, Clone, Default)]
pub(crate) struct Holes {
    bytes: Vec<u8>,
    holes: [usize; MAX_HOLES],
    count: usize,
}

impl Holes {
    /// Fills the holes, in order, with `values` (the last one repeats).
    pub(crate) fn fill(mut self, values: &[u64]) -> Vec<u8> {
        for (i, at) in self.holes[..self.count].iter().enumerate() {
            let v = values[i.min(values.len() - 1)];
            raw::patch_u64(&mut self.bytes, *at, v);
        }
        self.bytes
    }

    /// Fills the holes as [`Holes::fill`] does and copies the bytes out,
    /// keeping this buffer for the next record.
    pub(crate) fn filled(&mut self, values: &[u64]) -> fjall::Slice {
        for (i, at) in self.holes[..self.count].iter().enumerate() {
            let v = values[i.min(values.len() - 1)];
            raw::patch_u64(&mut self.bytes, *at, v);
        }
        fjall::Slice::from(&self.bytes[..])
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
    }
}

/// [`fresh_put_record`] from a put's encoded field values (names in
/// order, as [`blazedb_proto::RawPut`] gives them), copied, not decoded.
pub(crate) fn fresh_put_record_raw(
    origin: &DeviceId,
    priority: u8,
    fields: &blazedb_proto::RawFields<'_>,
) -> Holes {
    let mut h = Holes::with_capacity(64 + fields.entries_len() + fields.len());
    fresh_put_record_raw_into(&mut h, origin, priority, fields);
    h
}

/// [`fresh_put_record_raw`] into `h`, which is cleared first, so that one
/// buffer serves every record a writer builds.
pub(crate) fn fresh_put_record_raw_into(
    h: &mut Holes,
    origin: &DeviceId,
    priority: u8,
    fields: &blazedb_proto::RawFields<'_>,
) {
    h.clear();
    // Appending bytes cannot fail.
    let _ = fresh_record(h, origin, priority, fields.len(), |out| {
        fields.write_entries(out);
        Ok(())
    });
}

impl Holes {
    fn with_capacity(bytes: usize) -> Holes {
        Holes {
            bytes: Vec::with_capacity(bytes),
            holes: [0; MAX_HOLES],
            count: 0,
        }
    }

    /// A hole of eight bytes alone, for a big-endian `u64`.
    pub(crate) fn bare_hole(&mut self) {
        // A record format with more holes raises `MAX_HOLES`: indexing
        // past it panics in every test that writes a record.
        self.holes[self.count] = self.bytes.len();
        self.count += 1;
        self.bytes.extend_from_slice(&[0; 8]);
    }

    /// The bytes so far, to append to.
    pub(crate) fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }
}

/// The stored record of a put that replaces everything before it, as
/// `StoredRecord::from_put` would encode, with two holes for the clock
/// reading (fill with `[hlc]`).
pub(crate) fn fresh_put_record(
    origin: &DeviceId,
    priority: u8,
    fields: &Fields,
) -> Result<Holes, CodecError> {
    // Names and typical values: most records fit at once.
    let mut h = Holes::with_capacity(64 + fields.len() * 48);
    fresh_record(&mut h, origin, priority, fields.len(), |out| {
        for (name, value) in fields {
            raw::str(out, name);
            raw::value(out, value)?;
        }
        Ok(())
    })?;
    Ok(h)
}

/// What a put that creates a record leaves on disk: the record's key and
/// stored state, and its op-log entry (at cursor `seq`), for a database of
/// priority 0.
#[derive(Debug, Clone)]
pub struct FreshPutLayout {
    /// The record's key in the records keyspace.
    pub record_key: Vec<u8>,
    /// The record as stored.
    pub record: Vec<u8>,
    /// The op-log key.
    pub log_key: [u8; 8],
    /// The op-log entry.
    pub log_op: blazedb_proto::Op,
}

/// What the store writes for a put that creates a record. Benchmarks write
/// these bytes with fjall directly (the log entries as [`log_chunks`]) to
/// show the floor the store's layout sets, apart from what the store adds.
pub fn fresh_put_layout(
    origin: &DeviceId,
    collection: &str,
    id: &str,
    fields: blazedb_proto::Fields,
    seq: u64,
    hlc: Hlc,
) -> Result<FreshPutLayout, CodecError> {
    let record = fresh_put_record(origin, 0, &fields)?.fill(&[hlc.0]);
    let body = blazedb_proto::OpBody::Put {
        collection: collection.to_owned(),
        id: id.to_owned(),
        fields,
    };
    Ok(FreshPutLayout {
        record_key: super::keys::record_key(collection, id),
        record,
        log_key: super::keys::log_key(seq),
        log_op: blazedb_proto::Op {
            origin: *origin,
            seq,
            hlc,
            priority: 0,
            incarnation: 0,
            body: body.encode()?,
        },
    })
}

/// The op-log chunks the store writes for `entries` (cursor and entry, in
/// cursor order) committed in one group: benchmarks write them to show the
/// floor the layout sets.
pub fn log_chunks<'a>(
    entries: impl IntoIterator<Item = (u64, &'a blazedb_proto::Op)>,
) -> Vec<([u8; 8], Vec<u8>)> {
    let mut chunker = super::oplog::Chunker::default();
    for (cursor, entry) in entries {
        chunker.push(cursor, entry);
    }
    chunker.finish().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{Stamp, StoredRecord};
    use blazedb_proto::{Fields, Value, codec};
    use proptest::prelude::*;

    #[test]
    fn the_fresh_put_layout_is_what_the_store_writes() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let device = DeviceId([5; 32]);
        let store = crate::store::Store::open(dir.path(), device, Default::default())
            .expect("open the store");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let fields = Fields::from([("title".to_owned(), Value::from("hello"))]);
        rt.block_on(store.create_db("d", Default::default(), false))
            .expect("create the database");
        let written = rt
            .block_on(store.write(
                "d",
                vec![blazedb_proto::api::Write::Put {
                    collection: "c".into(),
                    id: Some("r1".into()),
                    fields: fields.clone(),
                }],
            ))
            .expect("write");
        let layout = fresh_put_layout(&device, "c", "r1", fields, written[0].seq, written[0].hlc)
            .expect("encode");
        let db = store.db("d").expect("the database");
        let record = db.records.get(&layout.record_key).expect("read");
        let entry = super::super::oplog::get(&db.log, written[0].cursor)
            .expect("read")
            .map(|e| e.op().expect("the entry reads"));
        assert_eq!(record.as_deref(), Some(&layout.record[..]));
        assert_eq!(entry, Some(layout.log_op));
        rt.block_on(store.shutdown()).expect("shut down");
    }

    proptest! {
        #[test]
        fn fresh_put_bytes_decode_like_the_ordinary_path(
            fields in proptest::collection::btree_map("[a-z]{1,6}", any::<i64>().prop_map(Value::Int), 0..6),
            hlc in any::<u64>(),
            dev in any::<u8>(),
            priority in 0u8..=127,
        ) {
            let origin = DeviceId([dev; 32]);
            let bytes = fresh_put_record(&origin, priority, &fields).expect("encode").fill(&[hlc]);
            let stamp = Stamp { priority, hlc: Hlc(hlc), origin };
            let made = StoredRecord::from_put(&stamp, fields.clone());
            prop_assert_eq!(&bytes, &made.encode());
            prop_assert_eq!(StoredRecord::decode(&bytes).expect("decode"), made);
            // From the encoded values: the same bytes.
            let encoded: Vec<(String, Vec<u8>)> = fields
                .iter()
                .map(|(k, v)| (k.clone(), codec::to_vec(v).expect("encode")))
                .collect();
            let raw: Vec<(&str, &[u8])> = encoded.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            let one_by_one = blazedb_proto::RawFields::new(raw);
            prop_assert_eq!(&fresh_put_record_raw(&origin, priority, &one_by_one).fill(&[hlc]), &bytes);
            // From a put's body read in place, its entries copied at once.
            let body = blazedb_proto::OpBody::Put { collection: "c".into(), id: "i".into(), fields }
                .encode()
                .expect("encode");
            let put = blazedb_proto::RawPut::parse(&body).expect("a plain put");
            prop_assert_eq!(&fresh_put_record_raw(&origin, priority, &put.fields).fill(&[hlc]), &bytes);
            // Into a buffer that held a longer record: the same bytes.
            let mut scratch = Holes::default();
            fresh_put_record_raw_into(&mut scratch, &DeviceId([!dev; 32]), 1, &one_by_one);
            scratch.bytes().extend_from_slice(&[0xc1; 40]);
            fresh_put_record_raw_into(&mut scratch, &origin, priority, &put.fields);
            prop_assert_eq!(&scratch.filled(&[hlc])[..], &bytes[..]);
        }
    }
}
