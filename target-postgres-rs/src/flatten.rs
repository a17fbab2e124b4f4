//! Flattening (`flattening_enabled`, `flattening_max_depth`): nested object
//! properties become `parent__child` properties, named as the Meltano SDK
//! names them (`singer_sdk.helpers._flattening`), before the stream's shape
//! is built, so schema evolution and upserts see ordinary properties.
//!
//! An object property with `properties` is spread while its level is below
//! the depth; anything else (deeper objects, objects without `properties`,
//! arrays) stays one property, a jsonb column. Unlike the SDK, which writes
//! those as JSON text, they keep their JSON type.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use singer_core::SchemaMessage;

/// Between the parts of a flattened name (the SDK's default).
const SEPARATOR: &str = "__";
/// A flattened name this long (in characters) or longer is shortened (the SDK's default).
const MAX_KEY_LENGTH: usize = 255;

/// How one stream's records are flattened: the properties spread into
/// columns, level by level.
#[derive(Debug, Default, PartialEq)]
pub struct RecordPlan {
    /// Property name → its flattened name and, when spread, its properties' plan.
    spread: Vec<(String, String, RecordPlan)>,
}

/// A record a flattened SCHEMA can't take.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlattenError {
    #[error(
        "field `{field}` is {found}, not the object its SCHEMA declares (flattened into \
         `{field}{SEPARATOR}…` columns); fix the tap's SCHEMA or its records, or turn \
         `flattening_enabled` off"
    )]
    NotObject { field: String, found: &'static str },
    #[error("record is not a JSON object: {0}")]
    NotRecord(String),
}

/// The SCHEMA with nested object properties spread `max_depth` levels deep,
/// and the plan that flattens its records the same way. Key properties
/// are renamed as any top-level property (a no-op below 255 characters).
pub fn schema(
    message: &SchemaMessage,
    max_depth: usize,
) -> Result<(SchemaMessage, RecordPlan), String> {
    let mut flat = Map::new();
    let plan = spread(&message.schema, &mut Vec::new(), max_depth, &mut flat)?;
    let mut schema = message.schema.clone();
    schema["properties"] = Value::Object(flat);
    let key_properties = message
        .key_properties
        .iter()
        .map(|k| flatten_key(&[k.as_str()]))
        .collect();
    Ok((
        SchemaMessage {
            stream: message.stream.clone(),
            schema,
            key_properties,
            bookmark_properties: message.bookmark_properties.clone(),
        },
        plan,
    ))
}

/// Adds `node`'s properties (under `parents`) to `flat`; returns their plan.
fn spread<'a>(
    node: &'a Value,
    parents: &mut Vec<&'a str>,
    max_depth: usize,
    flat: &mut Map<String, Value>,
) -> Result<RecordPlan, String> {
    let mut plan = RecordPlan::default();
    let Some(properties) = node.get("properties").and_then(Value::as_object) else {
        return Ok(plan);
    };
    for (name, sub) in properties {
        parents.push(name);
        let key = flatten_key(parents);
        if parents.len() <= max_depth && spreads(sub) {
            let inner = spread(sub, parents, max_depth, flat)?;
            plan.spread.push((name.clone(), key, inner));
        } else if flat.insert(key.clone(), sub.clone()).is_some() {
            return Err(format!(
                "flattening makes two properties named `{key}`; fix: rename one in the tap, \
                 or lower `flattening_max_depth`"
            ));
        }
        parents.pop();
    }
    Ok(plan)
}

/// An object schema with `properties`: its properties become columns.
fn spreads(schema: &Value) -> bool {
    let object = match schema.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
        _ => false,
    };
    object && schema.get("properties").is_some_and(Value::is_object)
}

/// The SDK's `flatten_key`: the parts joined by `__`; while the name is 255
/// characters or longer, parts from the first on are shortened to the
/// capitals of their camelized form (`customer_address` → `ca`), or to
/// their first 3 characters when that leaves fewer than 2.
fn flatten_key(parts: &[&str]) -> String {
    let mut parts: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
    let mut reduce = 0;
    while parts.join(SEPARATOR).chars().count() >= MAX_KEY_LENGTH && reduce < parts.len() {
        let capitals: String = camelize(&parts[reduce])
            .chars()
            .filter(|c| !c.is_ascii_lowercase())
            .collect();
        let short = if capitals.chars().count() > 1 {
            capitals
        } else {
            parts[reduce].chars().take(3).collect()
        };
        parts[reduce] = short.to_lowercase();
        reduce += 1;
    }
    parts.join(SEPARATOR)
}

/// Python `inflection.camelize`: the first character and each one after an
/// `_` upper-cased, those `_` dropped (`re.sub(r"(?:^|_)(.)", upper, s)`).
fn camelize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    if let Some(&c) = chars.peek() {
        if c != '\n' {
            out.extend(c.to_uppercase());
            chars.next();
        }
    }
    while let Some(c) = chars.next() {
        match chars.peek() {
            Some(&next) if c == '_' && next != '\n' => {
                out.extend(next.to_uppercase());
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

impl RecordPlan {
    /// The record with the planned objects spread into `parent__child`
    /// fields; every value is kept as its raw JSON text.
    pub fn record(&self, record: &str) -> Result<Box<RawValue>, FlattenError> {
        let mut out = String::with_capacity(record.len() + 64);
        out.push('{');
        let mut first = true;
        self.write(record, &[], &mut out, &mut first)?;
        out.push('}');
        Ok(RawValue::from_string(out).expect("built from valid JSON pieces"))
    }

    fn write(
        &self,
        object: &str,
        parents: &[&str],
        out: &mut String,
        first: &mut bool,
    ) -> Result<(), FlattenError> {
        let fields = fields(object).map_err(|e| FlattenError::NotRecord(e.to_string()))?;
        for (name, raw) in fields {
            let planned = self.spread.iter().find(|(n, _, _)| *n == name);
            match planned {
                Some((_, key, inner)) => match raw.get().as_bytes().first() {
                    Some(b'{') => {
                        let mut path = parents.to_vec();
                        path.push(name.as_str());
                        inner.write(raw.get(), &path, out, first)?;
                    }
                    // No object: its columns stay NULL.
                    Some(b'n') => {}
                    other => {
                        return Err(FlattenError::NotObject {
                            field: key.clone(),
                            found: match other {
                                Some(b'[') => "an array",
                                Some(b'"') => "a string",
                                Some(b't' | b'f') => "a boolean",
                                _ => "a number",
                            },
                        })
                    }
                },
                None => {
                    let mut path = parents.to_vec();
                    path.push(name.as_str());
                    if !std::mem::take(first) {
                        out.push(',');
                    }
                    out.push_str(
                        &serde_json::to_string(&flatten_key(&path)).expect("a string serializes"),
                    );
                    out.push(':');
                    out.push_str(raw.get());
                }
            }
        }
        Ok(())
    }
}

/// An object's fields in order, each value as its raw JSON text.
fn fields(object: &str) -> Result<Vec<(String, &RawValue)>, serde_json::Error> {
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Vec<(String, &'de RawValue)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(object);
    de.deserialize_map(Fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(properties: Value, keys: &[&str]) -> SchemaMessage {
        SchemaMessage {
            stream: "s".into(),
            schema: json!({"type": "object", "properties": properties}),
            key_properties: keys.iter().map(|k| (*k).to_owned()).collect(),
            bookmark_properties: None,
        }
    }

    fn nested() -> Value {
        json!({
            "id": {"type": "string"},
            "foo": {"type": ["object", "null"], "properties": {
                "bar": {"type": "object", "properties": {
                    "baz": {"type": "object", "properties": {"qux": {"type": "string"}}}}},
                "tags": {"type": "array", "items": {"type": "string"}}}},
            "free": {"type": "object"},
        })
    }

    fn flat_properties(depth: usize) -> Vec<(String, Value)> {
        let (m, _) = schema(&message(nested(), &["id"]), depth).unwrap();
        m.schema["properties"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    #[test]
    fn schemas_flatten_to_the_depth_as_the_sdk_names_them() {
        let names =
            |depth| -> Vec<String> { flat_properties(depth).into_iter().map(|(k, _)| k).collect() };
        assert_eq!(names(0), ["id", "foo", "free"]);
        assert_eq!(names(1), ["id", "foo__bar", "foo__tags", "free"]);
        assert_eq!(names(2), ["id", "foo__bar__baz", "foo__tags", "free"]);
        assert_eq!(names(3), ["id", "foo__bar__baz__qux", "foo__tags", "free"]);
        // Beyond the depth, the object stays whole (a jsonb column).
        assert_eq!(
            flat_properties(2)[1].1,
            json!({"type": "object", "properties": {"qux": {"type": "string"}}})
        );
    }

    #[test]
    fn records_flatten_with_their_raw_values() {
        let (_, plan) = schema(&message(nested(), &["id"]), 2).unwrap();
        let rec = RawValue::from_string(
            r#"{"id":"a","foo":{"bar":{"baz":{"qux":"deep"}},"tags":["x"],"extra":1.50},"free":{"k":[1]},"_sdc_deleted_at":null}"#
                .into(),
        )
        .unwrap();
        assert_eq!(
            plan.record(rec.get()).unwrap().get(),
            r#"{"id":"a","foo__bar__baz":{"qux":"deep"},"foo__tags":["x"],"foo__extra":1.50,"free":{"k":[1]},"_sdc_deleted_at":null}"#
        );
        let null = RawValue::from_string(r#"{"id":"a","foo":null}"#.into()).unwrap();
        assert_eq!(plan.record(null.get()).unwrap().get(), r#"{"id":"a"}"#);
        let wrong = RawValue::from_string(r#"{"id":"a","foo":{"bar":"x"}}"#.into()).unwrap();
        assert_eq!(
            plan.record(wrong.get()).unwrap_err(),
            FlattenError::NotObject {
                field: "foo__bar".into(),
                found: "a string"
            }
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let props = json!({"a__b": {"type": "string"},
            "a": {"type": "object", "properties": {"b": {"type": "string"}}}});
        assert_eq!(
            schema(&message(props, &[]), 1).unwrap_err(),
            "flattening makes two properties named `a__b`; fix: rename one in the tap, or lower `flattening_max_depth`"
        );
    }

    #[test]
    fn long_names_are_shortened_as_the_sdk_shortens_them() {
        assert_eq!(camelize("customer_address"), "CustomerAddress");
        assert_eq!(camelize("a__b"), "A_b");
        assert_eq!(camelize("_x"), "_x");
        let long = "a".repeat(250);
        // 250 + 2 + 3 = 255: the first part ("aaa…" camelizes to one capital) is cut to 3.
        assert_eq!(flatten_key(&[&long, "bcd"]), "aaa__bcd");
        let parent = format!("customer_address_{}", "x".repeat(240));
        assert_eq!(flatten_key(&[&parent, "city"]), "cax__city");
        assert_eq!(flatten_key(&["short", "name"]), "short__name");
    }
}
