//! Column types: JSON Schema → SQL type, how each column's values are encoded,
//! and how a column widens when its stream's schema changes.

use singer_core::JsonSchema;

/// What a column's COPY text looks like, from its destination type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Parsed by Postgres from the value's text (numbers, booleans, text, dates...).
    Scalar,
    /// `timestamp[tz]`: text, with a doubled UTC offset repaired.
    Timestamp,
    /// `json`/`jsonb`: the value's JSON text, strings included.
    Json,
    /// A Postgres array: JSON arrays become array literals.
    Array(Element),
    /// `bytea`: hex strings get the `\x` prefix Postgres needs.
    Bytea,
    /// `hstore`: a JSON object of strings becomes an hstore literal.
    Hstore,
}

/// How the elements of an array column are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// Nested JSON arrays are dimensions; scalars are written as their text.
    Scalar,
    /// `json[]`/`jsonb[]`: each item of the top-level array is one JSON value
    /// (a JSON array item is a value, not a dimension).
    Json,
    /// `bytea[]`: hex strings with the `\x` prefix.
    Bytea,
    /// `hstore[]`: objects as hstore literals.
    Hstore,
}

fn is_hstore(t: &str) -> bool {
    t == "hstore" || t.ends_with(".hstore")
}

/// The kind of a column of type `sql_type` (as `format_type()` prints it).
pub fn kind_of(sql_type: &str) -> ColumnKind {
    if let Some(elem) = sql_type.strip_suffix("[]") {
        let elem = elem.trim_end_matches("[]");
        ColumnKind::Array(match elem {
            "json" | "jsonb" => Element::Json,
            "bytea" => Element::Bytea,
            e if is_hstore(e) => Element::Hstore,
            _ => Element::Scalar,
        })
    } else if is_hstore(sql_type) {
        ColumnKind::Hstore
    } else if sql_type == "json" || sql_type == "jsonb" {
        ColumnKind::Json
    } else if sql_type == "bytea" {
        ColumnKind::Bytea
    } else if sql_type.starts_with("timestamp") {
        ColumnKind::Timestamp
    } else {
        ColumnKind::Scalar
    }
}

/// The property's `x-sql-datatype`, when it is something worth asking the
/// destination about (a type name, never a statement).
pub fn declared_sql_type(schema: &JsonSchema) -> Option<&str> {
    let t = schema.sql_datatype.as_deref()?.trim();
    let plausible = !t.is_empty()
        && t.len() < 200
        && !t.contains(';')
        && !t.contains("--")
        && !t.contains("/*")
        && !t.contains('\'');
    plausible.then_some(t)
}

const BIGINT_MIN: i128 = i64::MIN as i128;
const BIGINT_MAX: i128 = i64::MAX as i128;

/// The SQL type for a property from plain JSON Schema (what third-party taps send).
pub fn json_schema_type(schema: &JsonSchema) -> String {
    let types = schema.non_null_types();
    let t = match types.as_slice() {
        [] => "jsonb",
        [one] => match *one {
            "integer" => {
                if fits_bigint(schema) {
                    "bigint"
                } else {
                    "numeric"
                }
            }
            "number" => "numeric",
            "boolean" => "boolean",
            "string" => {
                if schema.content_encoding.as_deref() == Some("base16") {
                    "bytea"
                } else {
                    match schema.effective_format() {
                        Some("date-time") => "timestamp with time zone",
                        Some("date") => "date",
                        Some("time") => "time without time zone",
                        _ => "text",
                    }
                }
            }
            _ => "jsonb",
        },
        // An integer that may also be fractional is a number.
        [a, b] if matches!((*a, *b), ("integer", "number") | ("number", "integer")) => "numeric",
        // Any other union keeps the exact JSON value.
        _ => "jsonb",
    };
    t.to_owned()
}

fn fits_bigint(schema: &JsonSchema) -> bool {
    let within = |n: &Option<serde_json::Number>| match n {
        None => true,
        Some(n) => n
            .to_string()
            .parse::<i128>()
            .map(|v| (BIGINT_MIN..=BIGINT_MAX).contains(&v))
            .unwrap_or(false),
    };
    within(&schema.minimum) && within(&schema.maximum)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Int(u8),
    Float(u8),
    Numeric,
    Text,
    Date,
    Timestamp,
    Json,
    Other,
}

fn family(t: &str) -> Family {
    match t {
        "smallint" => Family::Int(1),
        "integer" => Family::Int(2),
        "bigint" => Family::Int(3),
        "real" => Family::Float(1),
        "double precision" => Family::Float(2),
        "text" => Family::Text,
        "date" => Family::Date,
        "json" | "jsonb" => Family::Json,
        _ if t.ends_with("[]") => Family::Other,
        _ if t.starts_with("numeric") => Family::Numeric,
        _ if t.starts_with("character") => Family::Text,
        _ if t.starts_with("timestamp") => Family::Timestamp,
        _ => Family::Other,
    }
}

/// A column change: the new type and the `USING` expression (with `{}` for the column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Widening {
    pub new_type: String,
    pub using: String,
}

/// How a column of type `existing` must change to also hold values of type
/// `desired`: `None` when it already holds them. Never narrows, never loses a value.
pub fn widen(existing: &str, desired: &str) -> Option<Widening> {
    if existing == desired {
        return None;
    }
    let to = |t: &str, using: &str| {
        Some(Widening {
            new_type: t.to_owned(),
            using: using.to_owned(),
        })
    };
    use Family::*;
    match (family(existing), family(desired)) {
        (Int(a), Int(b)) => (b > a).then(|| Widening {
            new_type: desired.to_owned(),
            using: format!("{{}}::{desired}"),
        }),
        (Float(a), Float(b)) => (b > a).then(|| Widening {
            new_type: desired.to_owned(),
            using: format!("{{}}::{desired}"),
        }),
        (Numeric, Int(_) | Numeric) if existing == "numeric" => None,
        (Int(_) | Numeric, Int(_) | Numeric) => to("numeric", "{}::numeric"),
        // Through the shortest exact float text: a direct cast keeps only 15 digits.
        (Float(_), Int(_) | Numeric) => to("numeric", "{}::text::numeric"),
        (Int(_) | Numeric, Float(_)) if existing == "numeric" => None,
        (Int(_) | Numeric, Float(_)) => to("numeric", "{}::numeric"),
        (Text, _) if existing == "text" => None,
        (Json, _) => None,
        (Timestamp, Date) => None,
        (Timestamp, Timestamp) if existing == "timestamp with time zone" => None,
        (Date | Timestamp, Date | Timestamp) => {
            to("timestamp with time zone", "{}::timestamp with time zone")
        }
        (_, Json) => to("jsonb", "to_jsonb({})"),
        _ => to("text", "{}::text"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ty(v: serde_json::Value) -> String {
        json_schema_type(&JsonSchema::from_value(&v).unwrap())
    }

    #[test]
    fn plain_json_schema_mapping() {
        assert_eq!(ty(json!({"type": ["null", "integer"]})), "bigint");
        assert_eq!(
            ty(json!({"type": "integer", "maximum": 99999999999999999999u128 as f64})),
            "numeric"
        );
        assert_eq!(ty(json!({"type": "number"})), "numeric");
        assert_eq!(ty(json!({"type": ["integer", "number"]})), "numeric");
        assert_eq!(ty(json!({"type": "boolean"})), "boolean");
        assert_eq!(
            ty(json!({"type": "string", "format": "date-time"})),
            "timestamp with time zone"
        );
        assert_eq!(ty(json!({"type": "string", "format": "date"})), "date");
        assert_eq!(
            ty(json!({"type": "string", "format": "time"})),
            "time without time zone"
        );
        assert_eq!(ty(json!({"type": "string", "maxLength": 16})), "text");
        assert_eq!(
            ty(json!({"type": "string", "contentEncoding": "base16"})),
            "bytea"
        );
        assert_eq!(ty(json!({"type": "object"})), "jsonb");
        assert_eq!(ty(json!({"type": "array", "items": {}})), "jsonb");
        assert_eq!(ty(json!({})), "jsonb");
        assert_eq!(ty(json!({"type": ["array", "string"]})), "jsonb");
        assert_eq!(
            ty(
                json!({"anyOf": [{"type": "string", "format": "date-time"}, {"type": ["string", "null"]}]})
            ),
            "timestamp with time zone"
        );
    }

    #[test]
    fn declared_types_are_names_not_statements() {
        let s = |t: &str| JsonSchema::from_value(&json!({"x-sql-datatype": t})).unwrap();
        assert_eq!(
            declared_sql_type(&s("numeric(18,4)")),
            Some("numeric(18,4)")
        );
        assert_eq!(declared_sql_type(&s("int; DROP TABLE x")), None);
        assert_eq!(declared_sql_type(&s("text -- x")), None);
    }

    #[test]
    fn widening_never_narrows() {
        let w = |a: &str, b: &str| widen(a, b).map(|w| w.new_type);
        assert_eq!(w("integer", "bigint").as_deref(), Some("bigint"));
        assert_eq!(w("bigint", "integer"), None);
        assert_eq!(w("bigint", "numeric(18,4)").as_deref(), Some("numeric"));
        assert_eq!(w("numeric", "bigint"), None);
        assert_eq!(
            w("numeric(10,2)", "numeric(18,4)").as_deref(),
            Some("numeric")
        );
        assert_eq!(
            widen("double precision", "numeric").unwrap().using,
            "{}::text::numeric"
        );
        assert_eq!(
            w("real", "double precision").as_deref(),
            Some("double precision")
        );
        assert_eq!(w("boolean", "text").as_deref(), Some("text"));
        assert_eq!(w("text", "boolean"), None);
        assert_eq!(w("character varying(20)", "text").as_deref(), Some("text"));
        assert_eq!(
            w("date", "timestamp with time zone").as_deref(),
            Some("timestamp with time zone")
        );
        assert_eq!(w("timestamp with time zone", "date"), None);
        assert_eq!(
            w("timestamp with time zone", "text").as_deref(),
            Some("text")
        );
        assert_eq!(w("bigint", "jsonb").as_deref(), Some("jsonb"));
        assert_eq!(w("jsonb", "text"), None);
        assert_eq!(w("integer[]", "text[]").as_deref(), Some("text"));
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of("integer[]"), ColumnKind::Array(Element::Scalar));
        assert_eq!(kind_of("jsonb[]"), ColumnKind::Array(Element::Json));
        assert_eq!(kind_of("bytea[]"), ColumnKind::Array(Element::Bytea));
        assert_eq!(kind_of("public.hstore"), ColumnKind::Hstore);
        assert_eq!(kind_of("jsonb"), ColumnKind::Json);
        assert_eq!(kind_of("bytea"), ColumnKind::Bytea);
        assert_eq!(
            kind_of("timestamp(3) with time zone"),
            ColumnKind::Timestamp
        );
        assert_eq!(kind_of("numeric(18,4)"), ColumnKind::Scalar);
    }
}
