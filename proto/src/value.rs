//! Field values and their MessagePack encoding.
//!
//! Values map onto MessagePack's own types, so any MessagePack library can
//! read and write them: nil, bool, int, float, str, bin, array and map. The
//! two types MessagePack lacks use extension types: a UUID is ext type `1`
//! holding the 16 bytes, and a timestamp is the standard timestamp extension
//! (type `-1`, 4, 8 or 12 bytes).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

pub use uuid::Uuid;

/// The MessagePack extension type that carries a UUID.
pub const EXT_UUID: i8 = 1;
/// The MessagePack extension type that carries a timestamp (the standard one).
pub const EXT_TIMESTAMP: i8 = -1;

/// The fields of a record: field name to value, sorted by name.
pub type Fields = BTreeMap<String, Value>;

/// A point in time as nanoseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Builds a timestamp from whole seconds and nanoseconds past them.
    pub fn from_parts(secs: i64, nanos: u32) -> Option<Self> {
        // In i128: the earliest timestamp's seconds times 10^9 are below
        // i64's range although the sum with its nanoseconds is not.
        let n = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        i64::try_from(n).ok().map(Timestamp)
    }

    /// Splits the timestamp into whole seconds and nanoseconds past them.
    pub fn to_parts(self) -> (i64, u32) {
        let secs = self.0.div_euclid(1_000_000_000);
        // rem_euclid is in 0..1e9, so it always fits in u32.
        let nanos = u32::try_from(self.0.rem_euclid(1_000_000_000)).unwrap_or(0);
        (secs, nanos)
    }

    /// Encodes the timestamp as the payload of MessagePack's timestamp
    /// extension, choosing the shortest of the three standard forms.
    pub fn to_ext_bytes(self) -> Vec<u8> {
        let (secs, nanos) = self.to_parts();
        if nanos == 0 && (0..=i64::from(u32::MAX)).contains(&secs) {
            (secs as u32).to_be_bytes().to_vec()
        } else if (0..(1i64 << 34)).contains(&secs) {
            ((u64::from(nanos) << 34) | secs as u64)
                .to_be_bytes()
                .to_vec()
        } else {
            let mut out = nanos.to_be_bytes().to_vec();
            out.extend_from_slice(&secs.to_be_bytes());
            out
        }
    }

    /// Decodes the payload of MessagePack's timestamp extension.
    pub fn from_ext_bytes(bytes: &[u8]) -> Option<Self> {
        match bytes.len() {
            4 => {
                let secs = u32::from_be_bytes(bytes.try_into().ok()?);
                Self::from_parts(i64::from(secs), 0)
            }
            8 => {
                let v = u64::from_be_bytes(bytes.try_into().ok()?);
                let nanos = (v >> 34) as u32;
                let secs = (v & ((1 << 34) - 1)) as i64;
                (nanos < 1_000_000_000).then_some(())?;
                Self::from_parts(secs, nanos)
            }
            12 => {
                let nanos = u32::from_be_bytes(bytes[..4].try_into().ok()?);
                let secs = i64::from_be_bytes(bytes[4..].try_into().ok()?);
                (nanos < 1_000_000_000).then_some(())?;
                Self::from_parts(secs, nanos)
            }
            _ => None,
        }
    }
}

/// How many lists and maps deep a field value may nest. Every message
/// that carries a value (a write, a record read back, an event, a synced
/// operation) then stays well inside the codec's limit.
pub const MAX_VALUE_DEPTH: usize = 100;

/// A field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A UTF-8 string.
    String(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A UUID.
    Uuid(Uuid),
    /// A point in time.
    Timestamp(Timestamp),
    /// An ordered list of values.
    List(Vec<Value>),
    /// A map from string keys to values.
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// The name of this value's type, as used in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Uuid(_) => "uuid",
            Value::Timestamp(_) => "timestamp",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    /// How many lists and maps deep the value nests: 0 for a scalar, 1
    /// for a list of scalars.
    pub fn depth(&self) -> usize {
        match self {
            Value::List(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Map(m) => 1 + m.values().map(Value::depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// The rank of this value's type in the total order of values.
    ///
    /// Integers and floats share a rank so that they compare by number.
    pub fn type_rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::String(_) => 3,
            Value::Bytes(_) => 4,
            Value::Uuid(_) => 5,
            Value::Timestamp(_) => 6,
            Value::List(_) => 7,
            Value::Map(_) => 8,
        }
    }

    /// Compares two values in the total order queries sort by: first by type
    /// (null < bool < number < string < bytes < uuid < timestamp < list <
    /// map), then by value. Integers and floats compare as numbers, so `5`
    /// equals `5.0`.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        use Value::*;
        match (self, other) {
            (Null, Null) => Ordering::Equal,
            (Bool(a), Bool(b)) => a.cmp(b),
            (Int(a), Int(b)) => a.cmp(b),
            (Float(a), Float(b)) => cmp_f64(*a, *b),
            (Int(a), Float(b)) => cmp_int_float(*a, *b),
            (Float(a), Int(b)) => cmp_int_float(*b, *a).reverse(),
            (String(a), String(b)) => a.cmp(b),
            (Bytes(a), Bytes(b)) => a.cmp(b),
            (Uuid(a), Uuid(b)) => a.cmp(b),
            (Timestamp(a), Timestamp(b)) => a.cmp(b),
            (List(a), List(b)) => {
                for (x, y) in a.iter().zip(b) {
                    let o = x.total_cmp(y);
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                a.len().cmp(&b.len())
            }
            (Map(a), Map(b)) => {
                for ((ka, va), (kb, vb)) in a.iter().zip(b) {
                    let o = ka.cmp(kb).then_with(|| va.total_cmp(vb));
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                a.len().cmp(&b.len())
            }
            _ => self.type_rank().cmp(&other.type_rank()),
        }
    }

    /// Returns the string inside, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Returns the integer inside, if this is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// Compares an integer with a float exactly, whatever their size: `2^53
/// + 1` is above the float `2^53`, which it would equal if converted.
/// `-0.0` is `0`, and a NaN is above every number (below, if its sign bit
/// is set), as in [`cmp_f64`].
fn cmp_int_float(a: i64, b: f64) -> Ordering {
    // 2^63, exact as a float: every i64 is below it and at or above its
    // negation.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if b.is_nan() {
        return if b.is_sign_negative() {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    if b >= TWO_63 {
        return Ordering::Less;
    }
    if b < -TWO_63 {
        return Ordering::Greater;
    }
    let whole = b.trunc();
    // In range and whole, so the conversion is exact; so is `b - whole`.
    let by_whole = a.cmp(&(whole as i64));
    by_whole.then_with(|| 0.0.partial_cmp(&(b - whole)).unwrap_or(Ordering::Equal))
}

/// Compares floats as numbers (`-0.0` equals `0.0`), with NaN after
/// everything, so the order is total.
fn cmp_f64(a: f64, b: f64) -> Ordering {
    if a == b {
        Ordering::Equal
    } else {
        a.total_cmp(&b)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i64::from(i))
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<Uuid> for Value {
    fn from(u: Uuid) -> Self {
        Value::Uuid(u)
    }
}
impl From<Timestamp> for Value {
    fn from(t: Timestamp) -> Self {
        Value::Timestamp(t)
    }
}

impl fmt::Display for Value {
    /// Formats the value the way `blazectl` shows it in tables.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::String(s) => f.write_str(s),
            Value::Bytes(b) => {
                f.write_str("0x")?;
                b.iter().try_for_each(|x| write!(f, "{x:02x}"))
            }
            Value::Uuid(u) => write!(f, "{u}"),
            Value::Timestamp(t) => {
                let (s, n) = t.to_parts();
                write!(f, "@{s}.{n:09}")
            }
            Value::List(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(m) => {
                f.write_str("{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// The payload of a MessagePack extension, as rmp-serde hands it over.
#[derive(Serialize)]
#[serde(rename = "_ExtStruct")]
struct ExtOut<'a>((i8, &'a serde_bytes::Bytes));

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(x) => s.serialize_f64(*x),
            Value::String(x) => s.serialize_str(x),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::Uuid(u) => {
                ExtOut((EXT_UUID, serde_bytes::Bytes::new(u.as_bytes()))).serialize(s)
            }
            Value::Timestamp(t) => {
                let bytes = t.to_ext_bytes();
                ExtOut((EXT_TIMESTAMP, serde_bytes::Bytes::new(&bytes))).serialize(s)
            }
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a BlazeDB value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {v} is larger than the largest int (i64)")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // Cap the pre-allocation: the length comes from the peer.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::List(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            out.insert(k, v);
        }
        Ok(Value::Map(out))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        let (tag, data) = d.deserialize_tuple(2, ExtVisitor)?;
        match tag {
            EXT_UUID => Uuid::from_slice(&data)
                .map(Value::Uuid)
                .map_err(|_| de::Error::custom("a uuid (ext type 1) must hold exactly 16 bytes")),
            EXT_TIMESTAMP => Timestamp::from_ext_bytes(&data)
                .map(Value::Timestamp)
                .ok_or_else(|| de::Error::custom("malformed timestamp (ext type -1)")),
            other => Err(de::Error::custom(format!(
                "unsupported MessagePack extension type {other} (BlazeDB knows 1 = uuid, -1 = timestamp)"
            ))),
        }
    }
}

struct ExtVisitor;

impl<'de> Visitor<'de> for ExtVisitor {
    type Value = (i8, Vec<u8>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MessagePack extension")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let tag: i8 = seq
            .next_element()?
            .ok_or_else(|| de::Error::custom("extension without a type"))?;
        let data: serde_bytes::ByteBuf = seq
            .next_element()?
            .ok_or_else(|| de::Error::custom("extension without data"))?;
        Ok((tag, data.into_vec()))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec;
    use proptest::prelude::*;

    pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>()
                .prop_filter("NaN never equals itself", |x| !x.is_nan())
                .prop_map(Value::Float),
            ".{0,12}".prop_map(Value::String),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
            any::<[u8; 16]>().prop_map(|b| Value::Uuid(Uuid::from_bytes(b))),
            any::<i64>().prop_map(|n| Value::Timestamp(Timestamp(n))),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                proptest::collection::btree_map(".{0,6}", inner, 0..4).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn value_round_trips(v in arb_value()) {
            let bytes = codec::to_vec(&v).expect("encode");
            let back: Value = codec::from_slice(&bytes).expect("decode");
            prop_assert_eq!(back, v);
        }

        #[test]
        fn timestamp_ext_round_trips(n in any::<i64>()) {
            let t = Timestamp(n);
            prop_assert_eq!(Timestamp::from_ext_bytes(&t.to_ext_bytes()), Some(t));
        }

        #[test]
        fn total_cmp_is_antisymmetric(a in arb_value(), b in arb_value()) {
            prop_assert_eq!(a.total_cmp(&b), b.total_cmp(&a).reverse());
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = codec::from_slice::<Value>(&bytes);
        }
    }

    #[test]
    fn uuid_uses_ext_type_1() {
        let u = Uuid::from_bytes([7; 16]);
        let bytes = codec::to_vec(&Value::Uuid(u)).expect("encode");
        // fixext16 marker, type 1, then the 16 bytes.
        assert_eq!(bytes[0], 0xd8);
        assert_eq!(bytes[1], 1);
        assert_eq!(&bytes[2..], &[7; 16]);
    }

    #[test]
    fn timestamp_uses_standard_ext() {
        let bytes =
            codec::to_vec(&Value::Timestamp(Timestamp(1_700_000_000_000_000_000))).expect("encode");
        // fixext4 marker, type -1, then seconds as u32.
        assert_eq!(&bytes[..2], &[0xd6, 0xff]);
        assert_eq!(&bytes[2..], &1_700_000_000u32.to_be_bytes());
    }

    #[test]
    fn the_documented_first_and_last_timestamps_round_trip() {
        // 1677-09-21T00:12:43.145224192Z and 2262-04-11T23:47:16.854775807Z.
        for n in [i64::MIN, i64::MAX] {
            let v = Value::Timestamp(Timestamp(n));
            let bytes = codec::to_vec(&v).expect("encode");
            assert_eq!(codec::from_slice::<Value>(&bytes).expect("decode"), v);
        }
        assert_eq!(
            Timestamp(i64::MIN).to_parts(),
            (-9_223_372_037, 145_224_192)
        );
        assert_eq!(Timestamp::from_parts(-9_223_372_037, 145_224_191), None);
    }

    #[test]
    fn big_integers_compare_exactly_with_floats() {
        let two_53 = 1i64 << 53;
        let f = Value::Float(two_53 as f64);
        assert_eq!(Value::Int(two_53).total_cmp(&f), Ordering::Equal);
        assert_eq!(Value::Int(two_53 + 1).total_cmp(&f), Ordering::Greater);
        assert_eq!(f.total_cmp(&Value::Int(two_53 + 1)), Ordering::Less);
        assert_eq!(
            Value::Int(i64::MAX).total_cmp(&Value::Float(9.3e18)),
            Ordering::Less
        );
        assert_eq!(
            Value::Int(i64::MIN).total_cmp(&Value::Float(-9.3e18)),
            Ordering::Greater
        );
        assert_eq!(Value::Int(3).total_cmp(&Value::Float(3.5)), Ordering::Less);
        assert_eq!(
            Value::Int(-3).total_cmp(&Value::Float(-3.5)),
            Ordering::Greater
        );
        assert_eq!(
            Value::Int(0).total_cmp(&Value::Float(-0.0)),
            Ordering::Equal
        );
        assert_eq!(
            Value::Int(i64::MAX).total_cmp(&Value::Float(f64::NAN)),
            Ordering::Less
        );
        assert_eq!(
            Value::Int(i64::MIN).total_cmp(&Value::Float(-f64::NAN)),
            Ordering::Greater
        );
    }

    #[test]
    fn numbers_compare_across_int_and_float() {
        assert_eq!(Value::Int(5).total_cmp(&Value::Float(5.0)), Ordering::Equal);
        assert_eq!(Value::Int(5).total_cmp(&Value::Float(5.5)), Ordering::Less);
        assert_eq!(Value::Null.total_cmp(&Value::Bool(false)), Ordering::Less);
        assert_eq!(
            Value::String("a".into()).total_cmp(&Value::Int(9)),
            Ordering::Greater
        );
    }

    #[test]
    fn zero_and_negative_zero_are_equal() {
        assert_eq!(
            Value::Float(-0.0).total_cmp(&Value::Float(0.0)),
            Ordering::Equal
        );
        assert_eq!(
            Value::Float(-0.0).total_cmp(&Value::Int(0)),
            Ordering::Equal
        );
    }

    #[test]
    fn huge_unsigned_is_refused() {
        let bytes = codec::to_vec(&u64::MAX).expect("encode");
        let err = codec::from_slice::<Value>(&bytes).expect_err("must fail");
        assert!(
            err.to_string().contains("larger than the largest int"),
            "{err}"
        );
    }
}
