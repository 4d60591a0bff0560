//! Reading values from the command line.
//!
//! - `name=text` sets a string;
//! - `name:=json` sets any JSON value (`priority:=5`, `done:=true`,
//!   `tags:='["a","b"]'`);
//! - a single argument that starts with `{` is a JSON object of fields.
//!
//! Filters are `field OP value` with OP one of `= != < <= > >=`, or the
//! words `in` and `prefix` surrounded by spaces; the value is read as JSON
//! when it parses, as text otherwise (`status=open`, `priority>3`,
//! `tag in ["a","b"]`, `title prefix Fix`).

use anyhow::{Context as _, bail};
use blazedb_proto::api::{Filter, FilterOp};

use crate::{Fields, Value};

/// Converts JSON into a value: integers stay integers.
pub(crate) fn from_json(j: serde_json::Value) -> Value {
    match j {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(s),
        serde_json::Value::Array(a) => Value::List(a.into_iter().map(from_json).collect()),
        serde_json::Value::Object(o) => {
            Value::Map(o.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
    }
}

/// Parses `name=text` / `name:=json` arguments (or one JSON object).
pub(crate) fn parse_fields(args: &[String]) -> anyhow::Result<Fields> {
    if let [one] = args
        && one.trim_start().starts_with('{')
    {
        let j: serde_json::Value =
            serde_json::from_str(one).context("the fields argument is not valid JSON")?;
        return match from_json(j) {
            Value::Map(m) => Ok(m),
            _ => bail!("the fields argument must be a JSON object"),
        };
    }
    let mut out = Fields::new();
    for arg in args {
        if let Some((name, json)) = arg.split_once(":=") {
            let j: serde_json::Value = serde_json::from_str(json)
                .with_context(|| format!("{arg:?}: the value after := must be JSON"))?;
            out.insert(name.to_owned(), from_json(j));
        } else if let Some((name, text)) = arg.split_once('=') {
            out.insert(name.to_owned(), Value::String(text.to_owned()));
        } else {
            bail!("{arg:?} is not a field: write name=text or name:=json");
        }
    }
    Ok(out)
}

fn loose_value(text: &str) -> Value {
    match serde_json::from_str::<serde_json::Value>(text.trim()) {
        Ok(j) => from_json(j),
        Err(_) => Value::String(text.trim().to_owned()),
    }
}

/// Parses one `--where` expression.
pub(crate) fn parse_filter(expr: &str) -> anyhow::Result<Filter> {
    for (word, op) in [(" in ", FilterOp::In), (" prefix ", FilterOp::Prefix)] {
        if let Some((field, value)) = expr.split_once(word) {
            let value = match op {
                FilterOp::Prefix => Value::String(value.trim().to_owned()),
                _ => loose_value(value),
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
        value: loose_value(&rest[len..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
