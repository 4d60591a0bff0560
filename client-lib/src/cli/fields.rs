//! Reading values from the command line.
//!
//! - `name=text` sets a string;
//! - `name:=json` sets any JSON value (`priority:=5`, `done:=true`,
//!   `tags:='["a","b"]'`);
//! - a single argument that starts with `{` is a JSON object of fields;
//! - in JSON, `{"$timestamp": ns}` (or `"2026-12-01T10:00:00Z"`),
//!   `{"$bytes": hex}` and `{"$uuid": text}` write those types, as
//!   `--json` prints them; `{"$map": {..}}` writes a map as it is.
//!
//! Filters are `field OP value` with OP one of `= != < <= > >=`, or the
//! words `in` and `prefix` surrounded by spaces; the value is read as JSON
//! when it parses, as text otherwise (`status=open`, `priority>3`,
//! `tag in ["a","b"]`, `title prefix Fix`).

use anyhow::{Context as _, bail};
use blazedb_proto::api::{Filter, FilterOp};

use crate::{Fields, Value};

/// Converts JSON into a value: integers stay integers, and the forms
/// `blazectl` prints the types JSON lacks in are read back as those types:
/// `{"$timestamp": nanoseconds}` (or an RFC 3339 text), `{"$bytes": hex}`,
/// `{"$uuid": text}`; `{"$map": {...}}` is a map taken as it is, for maps
/// whose keys start with `$`.
pub(crate) fn from_json(j: serde_json::Value) -> anyhow::Result<Value> {
    Ok(match j {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.is_f64()) {
            (Some(i), _) => Value::Int(i),
            (None, true) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            (None, false) => bail!(
                "{n} is beyond the 64-bit integer range: write it as a float ({}) or a string",
                n.as_f64()
                    .map_or_else(|| n.to_string(), |f| format!("{f:e}"))
            ),
        },
        serde_json::Value::String(s) => Value::String(s),
        serde_json::Value::Array(a) => Value::List(
            a.into_iter()
                .map(from_json)
                .collect::<anyhow::Result<_>>()?,
        ),
        serde_json::Value::Object(o) => {
            if o.len() == 1
                && let Some((k, v)) = o.iter().next()
                && k.starts_with('$')
            {
                return typed(k, v);
            }
            Value::Map(
                o.into_iter()
                    .map(|(k, v)| Ok((k, from_json(v)?)))
                    .collect::<anyhow::Result<_>>()?,
            )
        }
    })
}

/// Reads one of the typed forms: `{"$timestamp": ..}` and the others.
fn typed(kind: &str, v: &serde_json::Value) -> anyhow::Result<Value> {
    use serde_json::Value as J;
    Ok(match (kind, v) {
        ("$timestamp", J::Number(n)) => Value::Timestamp(crate::Timestamp(
            n.as_i64()
                .context("a $timestamp is whole nanoseconds since 1970 (a 64-bit integer)")?,
        )),
        ("$timestamp", J::String(text)) => Value::Timestamp(rfc3339(text)?),
        ("$bytes", J::String(hex)) => Value::Bytes(unhex(hex)?),
        ("$uuid", J::String(u)) => Value::Uuid(
            u.parse()
                .map_err(|_| anyhow::anyhow!("{u:?} is not a UUID"))?,
        ),
        ("$map", J::Object(m)) => Value::Map(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), from_json(v.clone())?)))
                .collect::<anyhow::Result<_>>()?,
        ),
        _ => bail!(
            "{{{kind:?}: {v}}} is not a typed value: use {{\"$timestamp\": nanoseconds or \
             \"2026-12-01T10:00:00Z\"}}, {{\"$bytes\": \"hex\"}}, {{\"$uuid\": \"...\"}}, or \
             {{\"$map\": {{...}}}} for a map whose keys start with $"
        ),
    })
}

fn unhex(hex: &str) -> anyhow::Result<Vec<u8>> {
    // Checked first, so the pairs below never cut a character in two.
    anyhow::ensure!(
        hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hex:?}: $bytes takes hex digits"
    );
    anyhow::ensure!(
        hex.len().is_multiple_of(2),
        "{hex:?}: $bytes takes pairs of hex digits"
    );
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .map_err(|_| anyhow::anyhow!("{hex:?}: $bytes takes hex digits"))
        })
        .collect()
}

/// Reads `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC only).
fn rfc3339(text: &str) -> anyhow::Result<crate::Timestamp> {
    let bad =
        || anyhow::anyhow!("{text:?}: write a time as 2026-12-01T10:00:00Z (UTC, Z at the end)");
    let body = text.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = body.split_once('T').ok_or_else(bad)?;
    // Digits only: no sign, and a year of at most four (RFC 3339), so the
    // day count below cannot overflow.
    let num = |s: &str| {
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<i64>().map_err(|_| bad())
    };
    let d: Vec<&str> = date.split('-').collect();
    let [y, mo, da] = d.as_slice() else {
        return Err(bad());
    };
    let (clock, frac) = time.split_once('.').unwrap_or((time, ""));
    let t: Vec<&str> = clock.split(':').collect();
    let [h, mi, se] = t.as_slice() else {
        return Err(bad());
    };
    let (y, mo, da, h, mi, se) = (num(y)?, num(mo)?, num(da)?, num(h)?, num(mi)?, num(se)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse::<i64>().map_err(|_| bad())?
    };
    // Days from 1970-01-01 to the date (proleptic Gregorian calendar).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    crate::Timestamp::from_parts(secs, u32::try_from(nanos).map_err(|_| bad())?)
        .ok_or_else(|| anyhow::anyhow!("{text:?} is outside the timestamps a value can hold"))
}

/// Parses `name=text` / `name:=json` arguments (or one JSON object).
pub fn parse_fields(args: &[String]) -> anyhow::Result<Fields> {
    if let [one] = args
        && one.trim_start().starts_with('{')
    {
        let j: serde_json::Value =
            serde_json::from_str(one).context("the fields argument is not valid JSON")?;
        return match from_json(j)? {
            Value::Map(m) => Ok(m),
            _ => bail!("the fields argument must be a JSON object"),
        };
    }
    let mut out = Fields::new();
    for arg in args {
        if let Some((name, json)) = arg.split_once(":=") {
            let j: serde_json::Value = serde_json::from_str(json)
                .with_context(|| format!("{arg:?}: the value after := must be JSON"))?;
            let value = from_json(j).with_context(|| format!("{arg:?}"))?;
            out.insert(name.to_owned(), value);
        } else if let Some((name, text)) = arg.split_once('=') {
            out.insert(name.to_owned(), Value::String(text.to_owned()));
        } else {
            bail!("{arg:?} is not a field: write name=text or name:=json");
        }
    }
    Ok(out)
}

/// A filter's value: JSON when it parses, else the text itself. Text
/// that looks like a list, or starts with an operator, is refused rather
/// than matched as a string no record holds.
fn loose_value(expr: &str, text: &str) -> anyhow::Result<Value> {
    let t = text.trim();
    match serde_json::from_str::<serde_json::Value>(t) {
        Ok(j) => from_json(j).with_context(|| format!("{expr:?}")),
        Err(_) if t.starts_with('[') => {
            bail!("{expr:?}: the list is not JSON; quote its strings, like [\"open\",\"done\"]")
        }
        Err(_) if t.starts_with(['=', '<', '>', '!']) => {
            bail!("{expr:?}: one operator at a time: = != < <= > >=")
        }
        Err(_) => Ok(Value::String(t.to_owned())),
    }
}

/// Parses one `--where` expression.
pub fn parse_filter(expr: &str) -> anyhow::Result<Filter> {
    for (word, op) in [(" in ", FilterOp::In), (" prefix ", FilterOp::Prefix)] {
        if let Some((field, value)) = expr.split_once(word) {
            let value = match op {
                FilterOp::Prefix => Value::String(value.trim().to_owned()),
                _ => loose_value(expr, value)?,
            };
            return Ok(Filter {
                field: field.trim().to_owned(),
                op,
                value,
            });
        }
    }
    let pos = expr
        .find(['=', '!', '<', '>'])
        .with_context(|| format!("{expr:?} has no operator: use = != < <= > >= in prefix"))?;
    let (field, rest) = expr.split_at(pos);
    let (op, len) = [
        ("!=", FilterOp::Ne),
        ("<=", FilterOp::Le),
        (">=", FilterOp::Ge),
        ("=", FilterOp::Eq),
        ("<", FilterOp::Lt),
        (">", FilterOp::Gt),
    ]
    .into_iter()
    .find(|(s, _)| rest.starts_with(s))
    .map(|(s, op)| (op, s.len()))
    .with_context(|| format!("{expr:?}: unknown operator"))?;
    let field = field.trim();
    if field.is_empty() {
        bail!("{expr:?} names no field");
    }
    Ok(Filter {
        field: field.to_owned(),
        op,
        value: loose_value(expr, &rest[len..])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_json_forms_read_back_what_json_output_prints() {
        use crate::cli::output::value_json;
        let values = [
            Value::Timestamp(crate::Timestamp(1_764_583_200_000_000_000)),
            Value::Bytes(vec![0, 0xab, 0xff]),
            Value::Uuid(
                "67e55044-10b1-426f-9247-bb680e5fe0c8"
                    .parse()
                    .expect("uuid"),
            ),
            Value::Map([("$timestamp".to_owned(), Value::Int(1))].into()),
            Value::List(vec![Value::Map([("a".to_owned(), Value::Int(1))].into())]),
        ];
        for v in values {
            assert_eq!(from_json(value_json(&v)).expect("reads back"), v);
        }
        // A real timestamp and a map that looks like one print apart.
        let real = value_json(&Value::Timestamp(crate::Timestamp(1)));
        let lookalike = value_json(&Value::Map(
            [("$timestamp".to_owned(), Value::Int(1))].into(),
        ));
        assert_ne!(real, lookalike);
        let f = parse_fields(&["when:={\"$timestamp\":\"2026-12-01T10:00:00.5Z\"}".into()])
            .expect("parse");
        assert_eq!(
            f["when"],
            Value::Timestamp(crate::Timestamp(1_796_119_200_500_000_000))
        );
        let min = from_json(serde_json::json!({"$timestamp": "1677-09-21T00:12:43.145224192Z"}));
        assert_eq!(
            min.expect("the earliest"),
            Value::Timestamp(crate::Timestamp(i64::MIN))
        );
    }

    #[test]
    fn quietly_wrong_input_is_refused_with_a_hint() {
        let big = parse_fields(&["n:=18446744073709551615".into()]).expect_err("beyond i64");
        assert!(
            format!("{big:#}").contains("64-bit integer range"),
            "{big:#}"
        );
        let list = parse_filter("status in [open,done]").expect_err("unquoted list");
        assert!(
            format!("{list:#}").contains(r#"["open","done"]"#),
            "{list:#}"
        );
        let twice = parse_filter("priority>>3").expect_err("two operators");
        assert!(format!("{twice:#}").contains("one operator"), "{twice:#}");
        let typo = parse_fields(&["x:={\"$stamp\":1}".into()]).expect_err("unknown form");
        assert!(format!("{typo:#}").contains("$timestamp"), "{typo:#}");
    }

    #[test]
    fn fields_from_text_json_and_objects() {
        let f = parse_fields(&["title=Fix it".into(), "priority:=5".into()]).expect("parse");
        assert_eq!(f["title"], Value::String("Fix it".into()));
        assert_eq!(f["priority"], Value::Int(5));
        let f = parse_fields(&[r#"{"a": 1.5, "b": [true]}"#.into()]).expect("parse");
        assert_eq!(f["a"], Value::Float(1.5));
        assert_eq!(f["b"], Value::List(vec![Value::Bool(true)]));
        assert!(parse_fields(&["novalue".into()]).is_err());
        assert!(parse_fields(&["n:=nope".into()]).is_err());
    }

    #[test]
    fn bytes_take_hex_digits_only_and_other_characters_are_an_error() {
        let f = parse_fields(&[r#"b:={"$bytes": "00ff"}"#.into()]).expect("parse");
        assert_eq!(f["b"], Value::Bytes(vec![0, 0xff]));
        // A character of two bytes where a hex digit belongs (found by the
        // cli_fields fuzz target) is refused, not a panic.
        let err = parse_fields(&["b:={\"$bytes\": \"0\u{41e}f\"}".into()]).expect_err("refused");
        assert!(format!("{err:#}").contains("hex digits"), "{err:#}");
    }

    #[test]
    fn times_out_of_range_or_signed_are_an_error() {
        let ok = parse_fields(&[r#"t:={"$timestamp": "2026-12-01T10:00:00.5Z"}"#.into()]);
        assert!(ok.is_ok(), "{ok:?}");
        // Found by the cli_fields fuzz target: a year of 21 digits
        // overflowed the day count; a signed minute passed the range check.
        for text in [
            "000499214638560428524-12-01T011:00:-1200Z",
            "2026-12-01T10:-5:00Z",
            "2026-12-01T10:00:+5Z",
        ] {
            let arg = format!(r#"t:={{"$timestamp": "{text}"}}"#);
            assert!(parse_fields(&[arg]).is_err(), "{text}");
        }
    }

    #[test]
    fn filters() {
        let f = parse_filter("priority>3").expect("parse");
        assert_eq!(
            (f.field.as_str(), f.op, f.value),
            ("priority", FilterOp::Gt, Value::Int(3))
        );
        let f = parse_filter("status != open").expect("parse");
        assert_eq!(
            (f.op, f.value),
            (FilterOp::Ne, Value::String("open".into()))
        );
        let f = parse_filter("p<=2.5").expect("parse");
        assert_eq!((f.op, f.value), (FilterOp::Le, Value::Float(2.5)));
        let f = parse_filter("tag in [\"a\", 2]").expect("parse");
        assert_eq!(f.op, FilterOp::In);
        let f = parse_filter("title prefix Fix ").expect("parse");
        assert_eq!(
            (f.op, f.value),
            (FilterOp::Prefix, Value::String("Fix".into()))
        );
        assert!(parse_filter("nothing").is_err());
        assert!(parse_filter("=3").is_err());
    }
}
