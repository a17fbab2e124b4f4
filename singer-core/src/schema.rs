//! A JSON Schema model good enough to map types both ways between Singer and
//! SQL: `type` as a string or a list, `format`, `anyOf`/`oneOf`, `items`,
//! `properties`, `additionalProperties`, `$ref` into `definitions`/`$defs`,
//! `maxLength`, `multipleOf`, `minimum`/`maximum`, `contentEncoding`, `enum`,
//! and our `x-sql-datatype` extension (the exact source column type).

use serde_json::{Map, Value};

/// The extension key carrying the exact source SQL type of a property.
pub const SQL_DATATYPE_KEY: &str = "x-sql-datatype";

/// One (sub)schema. Unknown keywords are ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonSchema {
    /// `type`, as a list (a single string becomes a list of one). Empty: untyped.
    pub types: Vec<String>,
    pub format: Option<String>,
    pub any_of: Vec<JsonSchema>,
    pub items: Option<Box<JsonSchema>>,
    /// `properties`, in the order sent.
    pub properties: Vec<(String, JsonSchema)>,
    pub has_properties: bool,
    pub additional_properties: Option<Box<JsonSchema>>,
    pub max_length: Option<u64>,
    /// Kept as JSON numbers so no digit is lost.
    pub multiple_of: Option<serde_json::Number>,
    pub minimum: Option<serde_json::Number>,
    pub maximum: Option<serde_json::Number>,
    pub content_encoding: Option<String>,
    pub enum_values: Option<Vec<Value>>,
    pub sql_datatype: Option<String>,
}

/// A schema that can't be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("`$ref` {0:?} does not point into `definitions` or `$defs`")]
    UnresolvedRef(String),
    #[error("`$ref` {0:?} refers to itself in a loop")]
    RefLoop(String),
    #[error("schema at `{0}` is not a JSON object")]
    NotAnObject(String),
}

const MAX_REF_DEPTH: usize = 32;

impl JsonSchema {
    /// Reads a schema, resolving `$ref`s against the root's `definitions`/`$defs`.
    /// Recursive references are cut off after a fixed depth (an untyped schema
    /// is left there), since SQL columns can't recurse anyway.
    pub fn from_value(root: &Value) -> Result<JsonSchema, SchemaError> {
        Self::read(root, root, "", 0)
    }

    fn read(v: &Value, root: &Value, path: &str, depth: usize) -> Result<JsonSchema, SchemaError> {
        let obj = match v {
            Value::Object(o) => o,
            // `true` is the schema that accepts anything.
            Value::Bool(true) => return Ok(JsonSchema::default()),
            _ => return Err(SchemaError::NotAnObject(path.to_owned())),
        };
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            if depth >= MAX_REF_DEPTH {
                return Ok(JsonSchema::default());
            }
            let target =
                resolve_ref(root, r).ok_or_else(|| SchemaError::UnresolvedRef(r.into()))?;
            return Self::read(target, root, path, depth + 1);
        }
        let mut s = JsonSchema {
            types: match obj.get("type") {
                Some(Value::String(t)) => vec![t.clone()],
                Some(Value::Array(ts)) => ts
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            },
            format: str_field(obj, "format"),
            content_encoding: str_field(obj, "contentEncoding"),
            sql_datatype: str_field(obj, SQL_DATATYPE_KEY),
            max_length: obj.get("maxLength").and_then(Value::as_u64),
            multiple_of: num_field(obj, "multipleOf"),
            minimum: num_field(obj, "minimum"),
            maximum: num_field(obj, "maximum"),
            enum_values: obj.get("enum").and_then(Value::as_array).cloned(),
            ..JsonSchema::default()
        };
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(alts)) = obj.get(key) {
                for (i, alt) in alts.iter().enumerate() {
                    s.any_of
                        .push(Self::read(alt, root, &format!("{path}/{key}/{i}"), depth)?);
                }
            }
        }
        if let Some(items) = obj.get("items") {
            if items.is_object() {
                s.items = Some(Box::new(Self::read(
                    items,
                    root,
                    &format!("{path}/items"),
                    depth,
                )?));
            }
        }
        if let Some(Value::Object(props)) = obj.get("properties") {
            s.has_properties = true;
            for (name, p) in props {
                let sub = Self::read(p, root, &format!("{path}/properties/{name}"), depth)?;
                s.properties.push((name.clone(), sub));
            }
        }
        if let Some(ap) = obj.get("additionalProperties") {
            if ap.is_object() {
                s.additional_properties = Some(Box::new(Self::read(
                    ap,
                    root,
                    &format!("{path}/additionalProperties"),
                    depth,
                )?));
            }
        }
        Ok(s)
    }

    /// The non-null types, from `type` and every `anyOf` branch, deduplicated in order.
    pub fn non_null_types(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for t in self.types.iter().map(String::as_str) {
            if t != "null" && !out.contains(&t) {
                out.push(t);
            }
        }
        for alt in &self.any_of {
            for t in alt.non_null_types() {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// Whether `null` is allowed (explicitly, through `anyOf`, or by being untyped).
    pub fn is_nullable(&self) -> bool {
        (self.types.is_empty() && self.any_of.is_empty())
            || self.types.iter().any(|t| t == "null")
            || self.any_of.iter().any(JsonSchema::is_nullable)
    }

    /// The `format` here or in the first `anyOf` branch that has one.
    pub fn effective_format(&self) -> Option<&str> {
        self.format
            .as_deref()
            .or_else(|| self.any_of.iter().find_map(JsonSchema::effective_format))
    }

    /// A property by name.
    pub fn property(&self, name: &str) -> Option<&JsonSchema> {
        self.properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }
}

fn str_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn num_field(obj: &Map<String, Value>, key: &str) -> Option<serde_json::Number> {
    match obj.get(key) {
        Some(Value::Number(n)) => Some(n.clone()),
        _ => None,
    }
}

/// Follows a local `$ref` (`#/definitions/x`, `#/$defs/x`, or any `#/a/b` pointer).
fn resolve_ref<'a>(root: &'a Value, r: &str) -> Option<&'a Value> {
    let pointer = r.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_types_formats_and_bounds() {
        let s = JsonSchema::from_value(&json!({
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": -9223372036854775808i64, "maximum": 9223372036854775807i64},
                "amount": {"type": ["null", "number"], "multipleOf": 0.0001, "x-sql-datatype": "numeric(18,4)"},
                "at": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": ["string", "null"]}]},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}},
                "blob": {"type": "string", "contentEncoding": "base16"},
                "any": {}
            }
        }))
        .unwrap();
        assert_eq!(s.properties.len(), 6);
        let amount = s.property("amount").unwrap();
        assert_eq!(amount.non_null_types(), vec!["number"]);
        assert!(amount.is_nullable());
        assert_eq!(amount.sql_datatype.as_deref(), Some("numeric(18,4)"));
        assert_eq!(amount.multiple_of.as_ref().unwrap().to_string(), "0.0001");
        let at = s.property("at").unwrap();
        assert_eq!(at.effective_format(), Some("date-time"));
        assert_eq!(at.non_null_types(), vec!["string"]);
        assert!(at.is_nullable());
        assert_eq!(
            s.property("tags")
                .unwrap()
                .items
                .as_ref()
                .unwrap()
                .max_length,
            Some(10)
        );
        assert_eq!(
            s.property("blob").unwrap().content_encoding.as_deref(),
            Some("base16")
        );
        assert!(s.property("any").unwrap().is_nullable());
        assert!(!s.property("id").unwrap().is_nullable());
    }

    #[test]
    fn resolves_refs_and_cuts_recursion() {
        let s = JsonSchema::from_value(&json!({
            "definitions": {
                "rec": {"type": ["null", "array"], "items": {"$ref": "#/definitions/rec"}},
                "name": {"type": "string"}
            },
            "type": "object",
            "properties": {"n": {"$ref": "#/definitions/name"}, "r": {"$ref": "#/definitions/rec"}}
        }))
        .unwrap();
        assert_eq!(s.property("n").unwrap().types, vec!["string"]);
        assert_eq!(s.property("r").unwrap().non_null_types(), vec!["array"]);
        let err =
            JsonSchema::from_value(&json!({"properties": {"x": {"$ref": "#/definitions/nope"}}}));
        assert_eq!(
            err.unwrap_err().to_string(),
            "`$ref` \"#/definitions/nope\" does not point into `definitions` or `$defs`"
        );
    }
}
