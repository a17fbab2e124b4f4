//! The Singer catalog: streams, their schemas and their metadata.
//!
//! Orchestrators spell the same thing several ways (metadata
//! `replication-method`, top-level `replication_method`,
//! `forced-replication-method`; `table-key-properties` or `view-key-properties`);
//! the accessors here accept every spelling so the taps don't have to.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A whole catalog: `{"streams": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub streams: Vec<CatalogEntry>,
}

/// One stream of a catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub tap_stream_id: String,
    pub stream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_name: Option<String>,
    pub schema: Value,
    #[serde(default)]
    pub metadata: Vec<MetadataEntry>,
    /// Old-style top-level fields some orchestrators still write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_properties: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected: Option<bool>,
    /// Anything else, kept so a catalog round-trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `{"breadcrumb": [...], "metadata": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataEntry {
    pub breadcrumb: Vec<String>,
    pub metadata: Map<String, Value>,
}

/// Reading a catalog failed.
#[derive(Debug, thiserror::Error)]
#[error("invalid catalog: {0}")]
pub struct CatalogError(String);

impl Catalog {
    /// Parses a catalog from JSON text.
    pub fn from_json(text: &str) -> Result<Catalog, CatalogError> {
        serde_json::from_str(text).map_err(|e| CatalogError(e.to_string()))
    }

    /// The streams whose stream-level metadata selects them.
    pub fn selected_streams(&self) -> impl Iterator<Item = &CatalogEntry> {
        self.streams.iter().filter(|s| s.is_selected())
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn as_string_list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => Some(vec![s.clone()]),
        _ => None,
    }
}

impl CatalogEntry {
    /// The metadata at a breadcrumb (`[]` for the stream, `["properties", col]`
    /// for a column).
    pub fn metadata_at(&self, breadcrumb: &[&str]) -> Option<&Map<String, Value>> {
        self.metadata
            .iter()
            .find(|m| {
                m.breadcrumb
                    .iter()
                    .map(String::as_str)
                    .eq(breadcrumb.iter().copied())
            })
            .map(|m| &m.metadata)
    }

    fn stream_meta(&self, key: &str) -> Option<&Value> {
        self.metadata_at(&[]).and_then(|m| m.get(key))
    }

    /// Selected by `selected` in stream metadata, the old top-level
    /// `selected`, or else `selected-by-default`.
    pub fn is_selected(&self) -> bool {
        if let Some(b) = self.stream_meta("selected").and_then(as_bool) {
            return b;
        }
        if let Some(b) = self.selected {
            return b;
        }
        self.stream_meta("selected-by-default")
            .and_then(as_bool)
            .unwrap_or(false)
    }

    /// The replication method as configured: metadata `replication-method`,
    /// then top-level `replication_method`, then `forced-replication-method`.
    /// Upper-cased (`FULL_TABLE`, `INCREMENTAL`, `LOG_BASED`).
    pub fn replication_method(&self) -> Option<String> {
        let from_meta = |key| {
            self.stream_meta(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        from_meta("replication-method")
            .or(self.replication_method.as_deref().filter(|s| !s.is_empty()))
            .or_else(|| from_meta("forced-replication-method"))
            .map(|s| s.trim().to_ascii_uppercase().replace('-', "_"))
    }

    /// Metadata `replication-key`, else top-level `replication_key`.
    pub fn replication_key(&self) -> Option<String> {
        self.stream_meta("replication-key")
            .and_then(Value::as_str)
            .or(self.replication_key.as_deref())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    /// `table-key-properties`, `view-key-properties`, else top-level `key_properties`.
    pub fn key_properties(&self) -> Vec<String> {
        for key in ["table-key-properties", "view-key-properties"] {
            if let Some(list) = self.stream_meta(key).and_then(as_string_list) {
                if !list.is_empty() || key == "view-key-properties" {
                    return list;
                }
            }
        }
        if let Some(list) = &self.key_properties {
            return list.clone();
        }
        self.stream_meta("table-key-properties")
            .and_then(as_string_list)
            .unwrap_or_default()
    }

    /// A string stream-level metadata value (e.g. `schema-name`).
    pub fn stream_metadata_str(&self, key: &str) -> Option<&str> {
        self.stream_meta(key).and_then(Value::as_str)
    }

    /// Whether column `name` is to be synced: `unsupported` never, `automatic`
    /// always, else an explicit `selected`, else `selected-by-default`, else yes.
    pub fn is_column_selected(&self, name: &str) -> bool {
        let Some(m) = self.metadata_at(&["properties", name]) else {
            return true;
        };
        match m.get("inclusion").and_then(Value::as_str) {
            Some("unsupported") => return false,
            Some("automatic") => return true,
            _ => {}
        }
        if let Some(b) = m.get("selected").and_then(as_bool) {
            return b;
        }
        m.get("selected-by-default")
            .and_then(as_bool)
            .unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(v: Value) -> CatalogEntry {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reads_every_spelling_of_method_and_keys() {
        let meta = entry(json!({
            "tap_stream_id": "public-t", "stream": "t", "schema": {},
            "metadata": [{"breadcrumb": [], "metadata": {
                "selected": true, "replication-method": "incremental",
                "replication-key": "updated_at", "table-key-properties": ["id"]}}]
        }));
        assert!(meta.is_selected());
        assert_eq!(meta.replication_method().as_deref(), Some("INCREMENTAL"));
        assert_eq!(meta.replication_key().as_deref(), Some("updated_at"));
        assert_eq!(meta.key_properties(), vec!["id"]);

        let top = entry(json!({
            "tap_stream_id": "public-t", "stream": "t", "schema": {},
            "selected": true, "replication_method": "LOG_BASED", "replication_key": "k",
            "key_properties": ["a", "b"], "metadata": []
        }));
        assert!(top.is_selected());
        assert_eq!(top.replication_method().as_deref(), Some("LOG_BASED"));
        assert_eq!(top.replication_key().as_deref(), Some("k"));
        assert_eq!(top.key_properties(), vec!["a", "b"]);

        let forced = entry(json!({
            "tap_stream_id": "v", "stream": "v", "schema": {},
            "metadata": [{"breadcrumb": [], "metadata": {
                "forced-replication-method": "FULL_TABLE", "view-key-properties": ["k"],
                "selected-by-default": true}}]
        }));
        assert!(forced.is_selected());
        assert_eq!(forced.replication_method().as_deref(), Some("FULL_TABLE"));
        assert_eq!(forced.key_properties(), vec!["k"]);

        let none = entry(json!({"tap_stream_id": "x", "stream": "x", "schema": {}}));
        assert!(!none.is_selected());
        assert_eq!(none.replication_method(), None);
        assert!(none.key_properties().is_empty());
    }

    #[test]
    fn column_selection_rules() {
        let e = entry(json!({
            "tap_stream_id": "x", "stream": "x", "schema": {},
            "metadata": [
                {"breadcrumb": ["properties", "id"], "metadata": {"inclusion": "automatic", "selected": false}},
                {"breadcrumb": ["properties", "a"], "metadata": {"inclusion": "available", "selected": false}},
                {"breadcrumb": ["properties", "b"], "metadata": {"inclusion": "available", "selected-by-default": true}},
                {"breadcrumb": ["properties", "c"], "metadata": {"inclusion": "unsupported", "selected": true}},
                {"breadcrumb": ["properties", "d"], "metadata": {"inclusion": "available", "selected-by-default": false}}
            ]
        }));
        assert!(e.is_column_selected("id"));
        assert!(!e.is_column_selected("a"));
        assert!(e.is_column_selected("b"));
        assert!(!e.is_column_selected("c"));
        assert!(!e.is_column_selected("d"));
        assert!(e.is_column_selected("no_metadata"));
    }

    #[test]
    fn catalog_round_trips_unknown_fields() {
        let text = r#"{"streams":[{"tap_stream_id":"a","stream":"a","schema":{},"metadata":[],"database_name":"db"}]}"#;
        let c = Catalog::from_json(text).unwrap();
        assert_eq!(c.streams[0].extra["database_name"], json!("db"));
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["streams"][0]["database_name"], json!("db"));
        assert!(Catalog::from_json("{")
            .unwrap_err()
            .to_string()
            .starts_with("invalid catalog: "));
    }
}
