//! Selecting streams in a Singer catalog the way a user edits one.

use serde_json::{json, Value};

/// Marks streams selected (all of them when `only` is empty; else those whose
/// `tap_stream_id` or `table_name` is listed) with a replication method
/// (`FULL_TABLE`, `INCREMENTAL`, `LOG_BASED`) and, for INCREMENTAL, a
/// replication key.
pub fn select(catalog: &mut Value, only: &[&str], method: &str, replication_key: Option<&str>) {
    for stream in catalog["streams"].as_array_mut().expect("streams") {
        let id = stream["tap_stream_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let table = stream["table_name"].as_str().unwrap_or_default().to_owned();
        if !only.is_empty() && !only.iter().any(|o| *o == id || *o == table) {
            continue;
        }
        for m in stream["metadata"].as_array_mut().expect("metadata") {
            if m["breadcrumb"].as_array().is_some_and(|b| b.is_empty()) {
                let meta = m["metadata"].as_object_mut().unwrap();
                meta.insert("selected".into(), json!(true));
                meta.insert("replication-method".into(), json!(method));
                if let Some(k) = replication_key {
                    meta.insert("replication-key".into(), json!(k));
                }
            }
        }
    }
}

/// A copy of `catalog` with only `streams` (tap_stream_ids, every one of
/// them discovered), selected as [`select`] does.
pub fn select_only(
    catalog: &Value,
    streams: &[&str],
    method: &str,
    replication_key: Option<&str>,
) -> Value {
    let mut cat = catalog.clone();
    let list = cat["streams"].as_array_mut().expect("streams");
    list.retain(|s| streams.contains(&s["tap_stream_id"].as_str().unwrap()));
    assert_eq!(
        list.len(),
        streams.len(),
        "streams not discovered: {streams:?}"
    );
    select(&mut cat, streams, method, replication_key);
    cat
}

/// Sets `selected` on one column's metadata.
pub fn select_column(catalog: &mut Value, stream: &str, column: &str, selected: bool) {
    for s in catalog["streams"].as_array_mut().expect("streams") {
        if s["tap_stream_id"] != stream {
            continue;
        }
        for m in s["metadata"].as_array_mut().expect("metadata") {
            if m["breadcrumb"] == json!(["properties", column]) {
                m["metadata"]["selected"] = json!(selected);
            }
        }
    }
}
