//! Key layouts inside the store's keyspaces.
//!
//! - records: `collection 0x00 id`
//! - op log: the cursor of a chunk's first entry as a big-endian `u64`, so
//!   the log iterates in commit order (chunks: [`super::oplog`])
//! - index: `collection 0x00 field 0x00 value-key id`, where the value key
//!   sorts in the order queries compare values in (see [`value_key`])

use blazedb_proto::Value;

/// The key of a record.
pub(crate) fn record_key(collection: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + 1 + id.len());
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// [`record_key`] as the store hands keys to fjall. A short key is put
/// together on the stack: fjall keeps keys of up to 20 bytes inline, so
/// most keys then take no allocation at all.
pub(crate) fn record_key_slice(collection: &str, id: &str) -> fjall::Slice {
    const ON_STACK: usize = 64;
    let len = collection.len() + 1 + id.len();
    if len > ON_STACK {
        return record_key(collection, id).into();
    }
    let mut k = [0u8; ON_STACK];
    k[..collection.len()].copy_from_slice(collection.as_bytes());
    k[collection.len() + 1..len].copy_from_slice(id.as_bytes());
    fjall::Slice::from(&k[..len])
}

/// The prefix every record key of a collection starts with.
pub(crate) fn collection_prefix(collection: &str) -> Vec<u8> {
    record_key(collection, "")
}

/// The id part of a record key.
pub(crate) fn id_of_record_key(key: &[u8]) -> Option<&str> {
    let sep = key.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&key[sep + 1..]).ok()
}

/// The collection and id of a record key.
pub(crate) fn split_record_key(key: &[u8]) -> Option<(&str, &str)> {
    let sep = key.iter().position(|&b| b == 0)?;
    Some((
        std::str::from_utf8(&key[..sep]).ok()?,
        std::str::from_utf8(&key[sep + 1..]).ok()?,
    ))
}

/// The key of an op-log chunk whose first entry has `cursor`.
pub(crate) fn log_key(cursor: u64) -> [u8; 8] {
    cursor.to_be_bytes()
}

/// The cursor of an op-log key (its chunk's first entry).
pub(crate) fn cursor_of_log_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// The prefix every index entry of `collection.field` starts with.
pub(crate) fn index_prefix(collection: &str, field: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + field.len() + 2);
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(field.as_bytes());
    k.push(0);
    k
}

/// The key of one index entry, or `None` for values that are not indexed
/// (lists and maps: no range or equality filter on a scalar can match them).
pub(crate) fn index_key(collection: &str, field: &str, value: &Value, id: &str) -> Option<Vec<u8>> {
    let mut k = index_prefix(collection, field);
    if !value_key(value, &mut k) {
        return None;
    }
    k.extend_from_slice(id.as_bytes());
    Some(k)
}

/// Type tags of value keys, in the order of [`Value::type_rank`].
pub(crate) mod tag {
    pub(crate) const NULL: u8 = 0x01;
    pub(crate) const BOOL: u8 = 0x02;
    pub(crate) const NUMBER: u8 = 0x03;
    pub(crate) const STRING: u8 = 0x04;
    pub(crate) const BYTES: u8 = 0x05;
    pub(crate) const UUID: u8 = 0x06;
    pub(crate) const TIMESTAMP: u8 = 0x07;
}

/// Appends an order-preserving encoding of a scalar value to `out` and
/// returns true; returns false (appending nothing) for lists and maps.
///
/// Byte order of the encodings equals [`Value::total_cmp`] order, except
/// that integers beyond ±2^53 are compared as the nearest float.
/// Strings and bytes are escaped (`00` becomes `00 ff`) and end in `00`, so
/// that a shorter string sorts before its extensions whatever follows it.
pub(crate) fn value_key(value: &Value, out: &mut Vec<u8>) -> bool {
    match value {
        Value::Null => out.push(tag::NULL),
        Value::Bool(b) => out.extend_from_slice(&[tag::BOOL, u8::from(*b)]),
        Value::Int(i) => number_key(*i as f64, out),
        Value::Float(f) => number_key(*f, out),
        Value::String(s) => escaped(tag::STRING, s.as_bytes(), out),
        Value::Bytes(b) => escaped(tag::BYTES, b, out),
        Value::Uuid(u) => {
            out.push(tag::UUID);
            out.extend_from_slice(u.as_bytes());
        }
        Value::Timestamp(t) => {
            out.push(tag::TIMESTAMP);
            out.extend_from_slice(&((t.0 as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::List(_) | Value::Map(_) => return false,
    }
    true
}

/// The prefix of every value key of a string starting with `prefix`: the
/// escaped bytes without the terminator.
pub(crate) fn string_prefix_key(prefix: &str, out: &mut Vec<u8>) {
    escaped(tag::STRING, prefix.as_bytes(), out);
    out.pop();
}

fn number_key(f: f64, out: &mut Vec<u8>) {
    // -0.0 and 0.0 compare equal as numbers, so they share a key.
    let f = if f == 0.0 { 0.0 } else { f };
    let bits = f.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    out.push(tag::NUMBER);
    out.extend_from_slice(&ordered.to_be_bytes());
}

fn escaped(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use blazedb_proto::{Timestamp, Uuid};
    use proptest::prelude::*;

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(1i64 << 53)..(1i64 << 53)).prop_map(Value::Int),
            any::<f64>()
                .prop_filter("NaN", |f| !f.is_nan())
                .prop_map(Value::Float),
            ".{0,6}".prop_map(Value::String),
            proptest::collection::vec(0u8..3, 0..5).prop_map(Value::Bytes),
            any::<[u8; 16]>().prop_map(|b| Value::Uuid(Uuid::from_bytes(b))),
            any::<i64>().prop_map(|t| Value::Timestamp(Timestamp(t))),
        ]
    }

    proptest! {
        #[test]
        fn value_keys_sort_like_values(a in scalar(), b in scalar(), ia in "[a-z]{0,3}", ib in "[a-z]{0,3}") {
            let ka = index_key("c", "f", &a, &ia).expect("scalar");
            let kb = index_key("c", "f", &b, &ib).expect("scalar");
            let by_value = a.total_cmp(&b);
            if by_value != std::cmp::Ordering::Equal {
                prop_assert_eq!(ka.cmp(&kb), by_value);
            }
        }

        /// Integers of any size: keys never order two values against
        /// their order (neighbours beyond ±2^53 may share a key, which
        /// the query then tells apart).
        #[test]
        fn value_keys_never_contradict_values(a in any::<i64>(), b in any::<f64>(), c in any::<i64>()) {
            let key = |v: &Value| index_key("c", "f", v, "").expect("scalar");
            for (x, y) in [(Value::Int(a), Value::Float(b)), (Value::Int(a), Value::Int(c))] {
                match x.total_cmp(&y) {
                    std::cmp::Ordering::Less => prop_assert!(key(&x) <= key(&y)),
                    std::cmp::Ordering::Greater => prop_assert!(key(&x) >= key(&y)),
                    std::cmp::Ordering::Equal => prop_assert_eq!(key(&x), key(&y)),
                }
            }
        }

        #[test]
        fn string_prefix_keys_bound_their_extensions(p in ".{0,4}", rest in ".{0,4}") {
            let mut pk = Vec::new();
            string_prefix_key(&p, &mut pk);
            let mut full = Vec::new();
            value_key(&Value::String(format!("{p}{rest}")), &mut full);
            prop_assert!(full.starts_with(&pk));
        }
    }

    #[test]
    fn record_keys_are_the_same_on_the_stack_or_not() {
        // 58 fills the stack buffer exactly (with "items" and the 0), 59 passes it.
        for id in ["", "k1", &"x".repeat(58), &"x".repeat(59), &"x".repeat(300)] {
            assert_eq!(
                &*record_key_slice("items", id),
                record_key("items", id).as_slice()
            );
        }
    }

    #[test]
    fn record_keys_split_back() {
        let k = record_key("bugs", "b\u{0}1");
        assert_eq!(id_of_record_key(&k), Some("b\u{0}1"));
        assert!(k.starts_with(&collection_prefix("bugs")));
        assert!(!k.starts_with(&collection_prefix("bug")));
    }

    #[test]
    fn lists_are_not_indexed() {
        assert_eq!(index_key("c", "f", &Value::List(vec![]), "x"), None);
    }
}
