//! Queries: filters, ordering and cursor pagination over one collection.
//!
//! With no usable index a query scans the collection in id order, stopping
//! as soon as a page is full when it is ordered by id. When a filter's field
//! has an index, the index narrows the candidates first. Ordering by a
//! field sorts the matches in memory.
//!
//! Comparisons (`<`, `<=`, `>`, `>=`) match only values of the same kind as
//! the operand (numbers with numbers, strings with strings, ...), `=` and
//! `in` match equal values (`5` equals `5.0`), `!=` also matches records
//! without the field, and `prefix` matches strings (or bytes) that start
//! with the operand. Sorting by a field puts records without it first, as
//! if it were null.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeSet;

use blazedb_proto::api::{Filter, FilterOp, ID_FIELD, QueryParams, QueryResult, Record};
use blazedb_proto::{Fields, Value, codec};
use serde::{Deserialize, Serialize};

use super::keys;
use super::record::StoredRecord;
use super::{CollectionMeta, DbState, StoreError};

/// Records a page holds when the query does not say.
pub(crate) const DEFAULT_LIMIT: u32 = 100;
/// The most records one page may hold.
pub(crate) const MAX_LIMIT: u32 = 10_000;

#[derive(Debug, Serialize, Deserialize)]
struct QueryCursor {
    order_by: Option<String>,
    desc: bool,
    key: Option<Value>,
    id: String,
}

impl QueryCursor {
    fn encode(&self) -> Result<String, StoreError> {
        let bytes = codec::to_vec(self)?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    fn decode(text: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::InvalidArgument(format!("{text:?} is not a query cursor"));
        if !text.len().is_multiple_of(2) || !text.is_ascii() {
            return Err(bad());
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad())?;
        codec::from_slice(&bytes).map_err(|_| bad())
    }
}

fn validate(f: &Filter) -> Result<(), StoreError> {
    match (f.op, &f.value) {
        (FilterOp::In, Value::List(_)) => Ok(()),
        (FilterOp::In, v) => Err(StoreError::TypeMismatch(format!(
            "filter {} in ...: needs a list of values, got a {}",
            f.field,
            v.type_name()
        ))),
        (FilterOp::Prefix, Value::String(_) | Value::Bytes(_)) => Ok(()),
        (FilterOp::Prefix, v) => Err(StoreError::TypeMismatch(format!(
            "filter {} prefix ...: needs a string or bytes, got a {}",
            f.field,
            v.type_name()
        ))),
        _ => Ok(()),
    }
}

fn field_value<'a>(field: &str, id: &'a str, rec: &'a StoredRecord) -> Option<Cow<'a, Value>> {
    if field == ID_FIELD {
        Some(Cow::Owned(Value::String(id.to_owned())))
    } else {
        rec.field(field).map(Cow::Borrowed)
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    a.total_cmp(b) == Ordering::Equal
}

/// Whether a record passes one filter.
pub(crate) fn matches(f: &Filter, id: &str, rec: &StoredRecord) -> bool {
    value_matches(f, field_value(&f.field, id, rec).as_deref())
}

/// Whether a record made of just `fields` passes one filter.
pub(crate) fn fields_match(f: &Filter, id: &str, fields: &Fields) -> bool {
    if f.field == ID_FIELD {
        value_matches(f, Some(&Value::String(id.to_owned())))
    } else {
        value_matches(f, fields.get(&f.field))
    }
}

/// Whether a record whose filtered field holds `v` (`None`: it has no
/// such field) passes the filter.
fn value_matches(f: &Filter, v: Option<&Value>) -> bool {
    let Some(v) = v else {
        return f.op == FilterOp::Ne;
    };
    let same_kind = || v.type_rank() == f.value.type_rank();
    match f.op {
        FilterOp::Eq => equal(v, &f.value),
        FilterOp::Ne => !equal(v, &f.value),
        FilterOp::Lt => same_kind() && v.total_cmp(&f.value) == Ordering::Less,
        FilterOp::Le => same_kind() && v.total_cmp(&f.value) != Ordering::Greater,
        FilterOp::Gt => same_kind() && v.total_cmp(&f.value) == Ordering::Greater,
        FilterOp::Ge => same_kind() && v.total_cmp(&f.value) != Ordering::Less,
        FilterOp::In => match &f.value {
            Value::List(items) => items.iter().any(|x| equal(v, x)),
            _ => false,
        },
        FilterOp::Prefix => match (v, &f.value) {
            (Value::String(s), Value::String(p)) => s.starts_with(p.as_str()),
            (Value::Bytes(b), Value::Bytes(p)) => b.starts_with(p),
            _ => false,
        },
    }
}

/// Key ranges of the index on `f.field` that hold every record `f` can
/// match, or `None` when the index cannot narrow this filter.
fn index_ranges(collection: &str, f: &Filter) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let base = keys::index_prefix(collection, &f.field);
    let with = |v: &Value| {
        let mut k = base.clone();
        keys::value_key(v, &mut k).then_some(k)
    };
    // Ids are UTF-8, which never holds 0xff: appending it bounds every id.
    let after = |mut k: Vec<u8>| {
        k.push(0xff);
        k
    };
    let kind_start = |v: &Value| {
        let mut k = with(v)?;
        k.truncate(base.len() + 1);
        Some(k)
    };
    let kind_end = |v: &Value| {
        let mut k = kind_start(v)?;
        *k.last_mut()? += 1;
        Some(k)
    };
    let v = &f.value;
    Some(match f.op {
        FilterOp::Eq => {
            let k = with(v)?;
            vec![(k.clone(), after(k))]
        }
        FilterOp::In => {
            let Value::List(items) = v else { return None };
            items
                .iter()
                .map(|x| with(x).map(|k| (k.clone(), after(k))))
                .collect::<Option<Vec<_>>>()?
        }
        // Keys only narrow: numbers beyond ±2^53 share keys with their
        // neighbours, so strict bounds take the boundary key in too, and
        // every candidate is checked against the filter itself.
        FilterOp::Lt | FilterOp::Le => vec![(kind_start(v)?, after(with(v)?))],
        FilterOp::Gt | FilterOp::Ge => vec![(with(v)?, kind_end(v)?)],
        FilterOp::Prefix => {
            let Value::String(p) = v else { return None };
            let mut k = base.clone();
            keys::string_prefix_key(p, &mut k);
            vec![(k.clone(), after(k))]
        }
        FilterOp::Ne => return None,
    })
}

/// Runs a query against one collection.
pub(crate) fn run(
    db: &DbState,
    meta: &CollectionMeta,
    p: &QueryParams,
) -> Result<QueryResult, StoreError> {
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(StoreError::InvalidArgument(format!(
            "limit {limit} is out of range: use 1 to {MAX_LIMIT}"
        )));
    }
    let limit = limit as usize;
    p.filters.iter().try_for_each(validate)?;
    let order_by = p.order_by.clone().filter(|o| o != ID_FIELD);
    let cursor = p.cursor.as_deref().map(QueryCursor::decode).transpose()?;
    if let Some(c) = &cursor
        && (c.order_by != order_by || c.desc != p.desc)
    {
        return Err(StoreError::InvalidArgument(
            "this cursor belongs to a query with another order; \
             pass the same order_by and desc as the query that returned it"
                .into(),
        ));
    }

    let index_plan = p.filters.iter().find_map(|f| {
        meta.indexes
            .contains(&f.field)
            .then(|| index_ranges(&p.collection, f))
            .flatten()
    });

    let passes = |id: &str, rec: &StoredRecord| {
        rec.is_live() && p.filters.iter().all(|f| matches(f, id, rec))
    };

    let mut page: Vec<(String, StoredRecord)> = Vec::new();
    let mut more = false;

    if order_by.is_none() && index_plan.is_none() {
        // Stream the collection in id order and stop once the page is full.
        let prefix = keys::collection_prefix(&p.collection);
        let start = match (&cursor, p.desc) {
            (Some(c), false) => {
                let mut k = keys::record_key(&p.collection, &c.id);
                k.push(0);
                k
            }
            _ => prefix.clone(),
        };
        let end = match (&cursor, p.desc) {
            (Some(c), true) => keys::record_key(&p.collection, &c.id),
            _ => {
                let mut k = prefix;
                k.push(0xff);
                k
            }
        };
        let iter = db.records.range(start..end);
        let iter: Box<dyn Iterator<Item = fjall::Guard>> = if p.desc {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        for kv in iter {
            let (k, v) = kv.into_inner()?;
            let id = keys::id_of_record_key(&k).unwrap_or_default().to_owned();
            let rec = StoredRecord::decode(&v)?;
            if passes(&id, &rec) {
                if page.len() == limit {
                    more = true;
                    break;
                }
                page.push((id, rec));
            }
        }
    } else {
        let mut found: Vec<(String, StoredRecord)> = Vec::new();
        match &index_plan {
            Some(ranges) => {
                let mut ids = BTreeSet::new();
                for (lo, hi) in ranges {
                    for kv in db.index.range(lo.as_slice()..hi.as_slice()) {
                        let (_, v) = kv.into_inner()?;
                        ids.insert(String::from_utf8_lossy(&v).into_owned());
                    }
                }
                for id in ids {
                    if let Some(rec) = db.load_record(&keys::record_key(&p.collection, &id))?
                        && passes(&id, &rec)
                    {
                        found.push((id, rec));
                    }
                }
            }
            None => {
                for kv in db.records.prefix(keys::collection_prefix(&p.collection)) {
                    let (k, v) = kv.into_inner()?;
                    let id = keys::id_of_record_key(&k).unwrap_or_default().to_owned();
                    let rec = StoredRecord::decode(&v)?;
                    if passes(&id, &rec) {
                        found.push((id, rec));
                    }
                }
            }
        }
        let sort_key = |id: &str, rec: &StoredRecord| -> Value {
            match &order_by {
                Some(f) => field_value(f, id, rec).map_or(Value::Null, Cow::into_owned),
                None => Value::Null,
            }
        };
        let mut keyed: Vec<(Value, String, StoredRecord)> = found
            .into_iter()
            .map(|(id, rec)| (sort_key(&id, &rec), id, rec))
            .collect();
        let cmp = |a: &Value, ai: &str, b: &Value, bi: &str| {
            let o = a.total_cmp(b).then_with(|| ai.cmp(bi));
            if p.desc { o.reverse() } else { o }
        };
        keyed.sort_by(|a, b| cmp(&a.0, &a.1, &b.0, &b.1));
        let skip = match &cursor {
            Some(c) => {
                let ck = c.key.clone().unwrap_or(Value::Null);
                keyed.partition_point(|(k, id, _)| cmp(k, id, &ck, &c.id) != Ordering::Greater)
            }
            None => 0,
        };
        let mut rest = keyed.into_iter().skip(skip);
        page.extend(rest.by_ref().take(limit).map(|(_, id, rec)| (id, rec)));
        more = rest.next().is_some();
    }

    let next_cursor = match (more, page.last()) {
        (true, Some((id, rec))) => Some(
            QueryCursor {
                key: order_by
                    .as_ref()
                    .map(|f| field_value(f, id, rec).map_or(Value::Null, Cow::into_owned)),
                order_by,
                desc: p.desc,
                id: id.clone(),
            }
            .encode()?,
        ),
        _ => None,
    };
    let records = page
        .into_iter()
        .map(|(id, rec)| Record {
            version: rec.version(),
            fields: rec.into_fields(),
            id,
        })
        .collect();
    Ok(QueryResult {
        records,
        next_cursor,
    })
}
