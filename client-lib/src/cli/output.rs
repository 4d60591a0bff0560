//! How `blazectl` prints: aligned tables for people, JSON for programs.
//!
//! JSON has no bytes, UUID or timestamp, so those print as
//! `{"$bytes": "<hex>"}`, `{"$uuid": "<uuid>"}` and
//! `{"$timestamp": <nanoseconds since the epoch>}`, and a map with a key
//! starting with `$` as `{"$map": {...}}`; blazectl reads them back.

use serde_json::json;

use crate::{Change, Record, Value};

/// A value as JSON.
pub(crate) fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::String(s) => json!(s),
        Value::Bytes(b) => {
            json!({ "$bytes": b.iter().map(|x| format!("{x:02x}")).collect::<String>() })
        }
        Value::Uuid(u) => json!({ "$uuid": u.to_string() }),
        Value::Timestamp(t) => json!({ "$timestamp": t.0 }),
        Value::List(items) => serde_json::Value::Array(items.iter().map(value_json).collect()),
        Value::Map(m) => {
            let obj = serde_json::Value::Object(
                m.iter().map(|(k, v)| (k.clone(), value_json(v))).collect(),
            );
            // A map with a `$` key would read like a typed value: say it
            // is a map.
            if m.keys().any(|k| k.starts_with('$')) {
                json!({ "$map": obj })
            } else {
                obj
            }
        }
    }
}

/// A value as a table cell or a `get` line: scalars as text, lists and
/// maps as JSON, the same wherever it is shown.
pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::List(_) | Value::Map(_) => value_json(v).to_string(),
        _ => v.to_string(),
    }
}

/// A record as JSON: `{"id", "version", "fields"}`.
pub(crate) fn record_json(r: &Record) -> serde_json::Value {
    json!({
        "id": r.id,
        "version": r.version.0,
        "fields": value_json(&Value::Map(r.fields.clone())),
    })
}

/// A change as JSON, one line of `watch --json`.
pub(crate) fn change_json(c: &Change) -> serde_json::Value {
    let mut out = json!({
        "cursor": c.cursor,
        "kind": c.kind,
        "collection": c.collection,
        "id": c.id,
        "seq": c.seq,
        "fields": value_json(&Value::Map(c.fields.clone())),
        "unset": c.unset,
        "origin": c.origin,
        "hlc": c.hlc.0,
    });
    if let (Some(why), Some(map)) = (&c.rejected, out.as_object_mut()) {
        map.insert("rejected".into(), json!(why));
    }
    out
}

/// A time in ms since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
/// A sync mode as `blazectl` writes it everywhere: `on`, `pull`, `push`
/// or `off` (the protocol's `sync`, `pull`, `push` and `local`).
pub(crate) fn mode_word(mode: crate::SyncMode) -> &'static str {
    match mode {
        crate::SyncMode::Sync => "on",
        crate::SyncMode::Pull => "pull",
        crate::SyncMode::Push => "push",
        crate::SyncMode::Local => "off",
    }
}

pub(crate) fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to a civil date (proleptic Gregorian), after H. Hinnant.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Prints pretty JSON.
pub(crate) fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Formats rows under headers, columns padded to their widest cell.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Prints a table.
pub(crate) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    print!("{}", table(headers, rows));
}

/// Records as a table: the id, then every field any of them has.
pub(crate) fn records_table(records: &[Record]) -> String {
    let mut names: Vec<&String> = records.iter().flat_map(|r| r.fields.keys()).collect();
    names.sort();
    names.dedup();
    let mut headers = vec!["ID"];
    headers.extend(names.iter().map(|n| n.as_str()));
    let rows = records
        .iter()
        .map(|r| {
            let mut row = vec![r.id.clone()];
            row.extend(
                names
                    .iter()
                    .map(|n| r.fields.get(*n).map(value_text).unwrap_or_default()),
            );
            row
        })
        .collect();
    table(&headers, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fields, Hlc, Timestamp, Uuid};

    fn sample() -> Record {
        Record {
            id: "b1".into(),
            version: Hlc(123),
            fields: Fields::from([
                ("title".into(), Value::String("Fix".into())),
                ("priority".into(), Value::Int(5)),
                ("score".into(), Value::Float(0.5)),
                ("blob".into(), Value::Bytes(vec![0, 255])),
                ("owner".into(), Value::Uuid(Uuid::from_bytes([1; 16]))),
                (
                    "due".into(),
                    Value::Timestamp(Timestamp(1_700_000_000_000_000_000)),
                ),
                ("tags".into(), Value::List(vec!["a".into(), Value::Null])),
            ]),
        }
    }

    #[test]
    fn record_json_snapshot() {
        insta::assert_json_snapshot!(record_json(&sample()));
    }

    #[test]
    fn records_table_snapshot() {
        let mut other = sample();
        other.id = "b22".into();
        other.fields.remove("blob");
        insta::assert_snapshot!(records_table(&[sample(), other]));
    }

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_ms(1_796_184_000_123), "2026-12-02 04:00:00 UTC");
    }
}
