//! Singer state: `{"bookmarks": {<tap_stream_id>: {...}}, "currently_syncing": ...}`.
//!
//! The shape is the one singer-io and pipelinewise taps write, so their state
//! files can be handed to our tap and ours to theirs. Bookmark fields we don't
//! know are kept as they are.

use serde_json::{Map, Value};

/// Reading a state file failed.
#[derive(Debug, thiserror::Error)]
#[error("invalid state: {0}")]
pub struct StateError(String);

/// A tap's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    bookmarks: Map<String, Value>,
    currently_syncing: Option<String>,
    /// Other top-level keys, kept so a state round-trips.
    extra: Map<String, Value>,
}

impl State {
    /// Parses a state file. Accepts the state value itself, a whole
    /// `{"type":"STATE","value":…}` message, an empty file, `{}` and `null`.
    /// A file of several JSON values (a target's output: one state line per
    /// commit) means its last one, the newest; see [`State::from_json_values`].
    pub fn from_json(text: &str) -> Result<State, StateError> {
        State::from_json_values(text).map(|(state, _)| state)
    }

    /// [`State::from_json`], also returning how many JSON values the text
    /// held (more than 1: the last was taken), so the caller can say so.
    pub fn from_json_values(text: &str) -> Result<(State, usize), StateError> {
        let mut last = None;
        let mut count = 0;
        for v in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            last = Some(v.map_err(|e| StateError(e.to_string()))?);
            count += 1;
        }
        match last {
            None => Ok((State::default(), 0)),
            Some(v) => Ok((State::from_value(v)?, count)),
        }
    }

    pub fn from_value(v: Value) -> Result<State, StateError> {
        let mut obj = match v {
            Value::Null => return Ok(State::default()),
            Value::Object(o) => o,
            other => return Err(StateError(format!("expected a JSON object, found {other}"))),
        };
        let is_message = obj
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("STATE"));
        if is_message {
            return State::from_value(obj.remove("value").unwrap_or(Value::Null));
        }
        let bookmarks = match obj.remove("bookmarks") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(b)) => b,
            Some(other) => {
                return Err(StateError(format!(
                    "`bookmarks` must be an object, found {other}"
                )))
            }
        };
        let currently_syncing = match obj.remove("currently_syncing") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Ok(State {
            bookmarks,
            currently_syncing,
            extra: obj,
        })
    }

    pub fn to_value(&self) -> Value {
        let mut obj = self.extra.clone();
        obj.insert(
            "currently_syncing".into(),
            self.currently_syncing
                .clone()
                .map_or(Value::Null, Value::String),
        );
        obj.insert("bookmarks".into(), Value::Object(self.bookmarks.clone()));
        Value::Object(obj)
    }

    pub fn currently_syncing(&self) -> Option<&str> {
        self.currently_syncing.as_deref()
    }

    pub fn set_currently_syncing(&mut self, stream: Option<&str>) {
        self.currently_syncing = stream.map(str::to_owned);
    }

    /// The bookmark object of a stream, if any.
    pub fn bookmark(&self, tap_stream_id: &str) -> Option<&Map<String, Value>> {
        self.bookmarks.get(tap_stream_id).and_then(Value::as_object)
    }

    /// One field of a stream's bookmark.
    pub fn get(&self, tap_stream_id: &str, key: &str) -> Option<&Value> {
        self.bookmark(tap_stream_id).and_then(|b| b.get(key))
    }

    /// Sets one field of a stream's bookmark (creating the bookmark).
    pub fn set(&mut self, tap_stream_id: &str, key: &str, value: Value) {
        let entry = self
            .bookmarks
            .entry(tap_stream_id.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        if let Value::Object(b) = entry {
            b.insert(key.to_owned(), value);
        }
    }

    /// Removes one field of a stream's bookmark.
    pub fn remove(&mut self, tap_stream_id: &str, key: &str) -> Option<Value> {
        self.bookmarks
            .get_mut(tap_stream_id)
            .and_then(Value::as_object_mut)
            .and_then(|b| b.remove(key))
    }

    /// Every stream id that has a bookmark.
    pub fn stream_ids(&self) -> impl Iterator<Item = &str> {
        self.bookmarks.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_pipelinewise_state_and_round_trips() {
        let text = r#"{"currently_syncing": "public-orders", "bookmarks": {"public-orders":
            {"last_replication_method": "LOG_BASED", "lsn": 24139296, "version": 1570922723596, "xmin": null}}}"#;
        let s = State::from_json(text).unwrap();
        assert_eq!(s.currently_syncing(), Some("public-orders"));
        assert_eq!(s.get("public-orders", "lsn"), Some(&json!(24139296)));
        let back = State::from_value(s.to_value()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn accepts_wrapped_empty_and_null() {
        let s =
            State::from_json(r#"{"type":"STATE","value":{"bookmarks":{"a":{"x":1}}}}"#).unwrap();
        assert_eq!(s.get("a", "x"), Some(&json!(1)));
        assert_eq!(State::from_json("").unwrap(), State::default());
        assert_eq!(State::from_json("{}").unwrap(), State::default());
        assert_eq!(State::from_json("null").unwrap(), State::default());
        assert_eq!(
            State::from_json("[1]").unwrap_err().to_string(),
            "invalid state: expected a JSON object, found [1]"
        );
    }

    /// A target's output saved whole (`target ... > state.jsonl`): the last
    /// line is the newest committed state; a pretty-printed file is one value.
    #[test]
    fn several_json_lines_mean_the_last() {
        let (s, n) = State::from_json_values(
            "{\"bookmarks\":{\"a\":{\"x\":1}}}\n{\"bookmarks\":{\"a\":{\"x\":2}}}\n",
        )
        .unwrap();
        assert_eq!((s.get("a", "x"), n), (Some(&json!(2)), 2));
        let (s, n) =
            State::from_json_values("{\n  \"bookmarks\": {\"a\": {\"x\": 3}}\n}\n").unwrap();
        assert_eq!((s.get("a", "x"), n), (Some(&json!(3)), 1));
        assert_eq!(
            State::from_json("{}\n{oops").unwrap_err().to_string(),
            "invalid state: key must be a string at line 2 column 2"
        );
    }

    #[test]
    fn set_and_remove() {
        let mut s = State::default();
        s.set("a", "replication_key_value", json!("2024-01-01"));
        s.set("a", "replication_key", json!("updated_at"));
        assert_eq!(s.remove("a", "replication_key"), Some(json!("updated_at")));
        assert_eq!(
            s.to_value(),
            json!({"currently_syncing": null, "bookmarks": {"a": {"replication_key_value": "2024-01-01"}}})
        );
    }
}
