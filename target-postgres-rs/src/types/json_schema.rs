//! JSON Schema → SQL type names: what a property's type is when the tap
//! sends plain JSON Schema, and which declared `x-sql-datatype` texts are
//! worth asking the destination about.

use singer_core::JsonSchema;

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

/// The SQL type for a property from plain JSON Schema (what third-party taps
/// send). `base16` strings are bytea only with `interpret_content_encoding`
/// (third-party taps' hex comes with `0x` prefixes, odd lengths, or is not
/// meant as bytes at all: by default it stays as sent).
pub fn json_schema_type(schema: &JsonSchema, interpret_content_encoding: bool) -> String {
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
                if interpret_content_encoding
                    && schema.content_encoding.as_deref() == Some("base16")
                {
                    "bytea"
                } else {
                    match schema.effective_format() {
                        Some("date-time") => "timestamp with time zone",
                        Some("date") => "date",
                        Some("time") => "time without time zone",
                        Some("uuid") => "uuid",
                        // Singer SDK taps' decimals as strings (`use_singer_decimal`):
                        // the SDK's schema says `singer.decimal`, its targets
                        // also read `x-singer.decimal`.
                        Some("singer.decimal" | "x-singer.decimal") => "numeric",
                        // Formats without a type of their own (email, uri,
                        // ipv4, ...) and unknown ones keep the text as sent.
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

/// A JSON Schema integer with no bounds: its column is `bigint` until a
/// value beyond bigint arrives, then `numeric` (see [`crate::stream::Column`]).
pub fn unbounded_integer(schema: &JsonSchema) -> bool {
    schema.non_null_types().as_slice() == ["integer"]
        && schema.minimum.is_none()
        && schema.maximum.is_none()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ty(v: serde_json::Value) -> String {
        json_schema_type(&JsonSchema::from_value(&v).unwrap(), true)
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
        assert_eq!(ty(json!({"type": "string", "format": "uuid"})), "uuid");
        assert_eq!(ty(json!({"type": "string", "format": "email"})), "text");
        assert_eq!(
            ty(json!({"type": ["string"], "format": "singer.decimal"})),
            "numeric"
        );
        assert_eq!(
            ty(json!({"type": ["null", "string"], "format": "x-singer.decimal"})),
            "numeric"
        );
        assert_eq!(ty(json!({"type": "string", "format": "x-unknown"})), "text");
        // multipleOf is no scale: numeric(p, s) would round what doesn't fit.
        assert_eq!(ty(json!({"type": "number", "multipleOf": 0.01})), "numeric");
        assert_eq!(ty(json!({"type": ["null", "string"]})), "text");
        assert_eq!(
            ty(json!({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]})),
            "timestamp with time zone"
        );
        assert_eq!(
            ty(json!({"type": "string", "contentEncoding": "base16"})),
            "bytea"
        );
        let plain = JsonSchema::from_value(&json!({"type": "string", "contentEncoding": "base16"}));
        assert_eq!(json_schema_type(&plain.unwrap(), false), "text");
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
}
