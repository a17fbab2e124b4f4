//! Singer messages: SCHEMA, RECORD, STATE and ACTIVATE_VERSION.
//!
//! A line is parsed into one flat struct keyed by its `type` string (an
//! internally tagged enum is markedly slower with serde), then checked into a
//! [`Message`]. A record keeps its `record` object as raw JSON text, so numbers
//! pass through with every digit and a target decides how to decode each field.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// One Singer message.
#[derive(Debug, Clone)]
pub enum Message {
    Schema(SchemaMessage),
    Record(RecordMessage),
    State(StateMessage),
    ActivateVersion(ActivateVersionMessage),
}

impl Message {
    /// The stream a message belongs to; `None` for STATE.
    pub fn stream(&self) -> Option<&str> {
        match self {
            Message::Schema(m) => Some(&m.stream),
            Message::Record(m) => Some(&m.stream),
            Message::ActivateVersion(m) => Some(&m.stream),
            Message::State(_) => None,
        }
    }
}

/// `{"type":"SCHEMA","stream":…,"schema":…,"key_properties":[…]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaMessage {
    pub stream: String,
    pub schema: Value,
    /// Missing `key_properties` is read as none (some taps omit it).
    pub key_properties: Vec<String>,
    pub bookmark_properties: Option<Vec<String>>,
}

/// `{"type":"RECORD","stream":…,"record":{…}}`.
#[derive(Debug, Clone)]
pub struct RecordMessage {
    pub stream: String,
    /// The `record` value exactly as sent (a JSON object, checked by the parser).
    pub record: Box<RawValue>,
    pub version: Option<i64>,
    pub time_extracted: Option<String>,
}

/// `{"type":"STATE","value":…}`.
#[derive(Debug, Clone, PartialEq)]
pub struct StateMessage {
    pub value: Value,
}

/// `{"type":"ACTIVATE_VERSION","stream":…,"version":…}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivateVersionMessage {
    pub stream: String,
    pub version: i64,
}

/// Why a line is not a valid Singer message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("a message must be a JSON object with a `type`")]
    NoType,
    #[error("unknown message type `{0}` (expected SCHEMA, RECORD, STATE or ACTIVATE_VERSION)")]
    UnknownType(String),
    #[error("BATCH messages are not supported: configure the tap to send RECORD messages")]
    BatchNotSupported,
    #[error("{kind} message has no `{field}`")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{kind} message: `{field}` {problem}")]
    InvalidField {
        kind: &'static str,
        field: &'static str,
        problem: String,
    },
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    stream: Option<String>,
    #[serde(borrow)]
    record: Option<&'a RawValue>,
    schema: Option<Value>,
    key_properties: Option<Value>,
    bookmark_properties: Option<Value>,
    value: Option<Value>,
    version: Option<Value>,
    time_extracted: Option<Value>,
}

/// Parses one line. On error the stream name is returned when the line named one,
/// so that the caller can report it.
pub fn parse_message(line: &str) -> Result<Message, (MessageError, Option<String>)> {
    let raw: RawMessage<'_> = serde_json::from_str(line).map_err(|e| {
        let err = if e.is_data() {
            MessageError::NoType
        } else {
            MessageError::NotJson(e.to_string())
        };
        (err, None)
    })?;
    let stream = raw.stream.clone();
    parse_raw(raw).map_err(|e| (e, stream))
}

fn parse_raw(raw: RawMessage<'_>) -> Result<Message, MessageError> {
    let kind = raw.kind.ok_or(MessageError::NoType)?;
    if kind.eq_ignore_ascii_case("RECORD") {
        let stream = require_stream("RECORD", raw.stream)?;
        let record = raw.record.ok_or(MessageError::MissingField {
            kind: "RECORD",
            field: "record",
        })?;
        if !record.get().starts_with('{') {
            return Err(MessageError::InvalidField {
                kind: "RECORD",
                field: "record",
                problem: "must be a JSON object".into(),
            });
        }
        Ok(Message::Record(RecordMessage {
            stream,
            record: record.to_owned(),
            version: optional_version("RECORD", raw.version)?,
            time_extracted: match raw.time_extracted {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s),
                Some(_) => {
                    return Err(MessageError::InvalidField {
                        kind: "RECORD",
                        field: "time_extracted",
                        problem: "must be a date-time string".into(),
                    })
                }
            },
        }))
    } else if kind.eq_ignore_ascii_case("SCHEMA") {
        let stream = require_stream("SCHEMA", raw.stream)?;
        let schema = raw.schema.ok_or(MessageError::MissingField {
            kind: "SCHEMA",
            field: "schema",
        })?;
        Ok(Message::Schema(SchemaMessage {
            stream,
            schema,
            key_properties: string_list("key_properties", raw.key_properties)?.unwrap_or_default(),
            bookmark_properties: string_list("bookmark_properties", raw.bookmark_properties)?,
        }))
    } else if kind.eq_ignore_ascii_case("STATE") {
        let value = raw.value.ok_or(MessageError::MissingField {
            kind: "STATE",
            field: "value",
        })?;
        Ok(Message::State(StateMessage { value }))
    } else if kind.eq_ignore_ascii_case("ACTIVATE_VERSION") {
        let stream = require_stream("ACTIVATE_VERSION", raw.stream)?;
        let version = optional_version("ACTIVATE_VERSION", raw.version)?.ok_or(
            MessageError::MissingField {
                kind: "ACTIVATE_VERSION",
                field: "version",
            },
        )?;
        Ok(Message::ActivateVersion(ActivateVersionMessage {
            stream,
            version,
        }))
    } else if kind.eq_ignore_ascii_case("BATCH") {
        Err(MessageError::BatchNotSupported)
    } else {
        Err(MessageError::UnknownType(kind.into_owned()))
    }
}

fn require_stream(kind: &'static str, stream: Option<String>) -> Result<String, MessageError> {
    match stream {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(MessageError::MissingField {
            kind,
            field: "stream",
        }),
    }
}

fn optional_version(kind: &'static str, v: Option<Value>) -> Result<Option<i64>, MessageError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| MessageError::InvalidField {
                kind,
                field: "version",
                problem: format!("must be an integer, not {n}"),
            }),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| MessageError::InvalidField {
            kind,
            field: "version",
            problem: format!("must be an integer, not {s:?}"),
        }),
        Some(other) => Err(MessageError::InvalidField {
            kind,
            field: "version",
            problem: format!("must be an integer, not {other}"),
        }),
    }
}

fn string_list(field: &'static str, v: Option<Value>) -> Result<Option<Vec<String>>, MessageError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                other => Err(MessageError::InvalidField {
                    kind: "SCHEMA",
                    field,
                    problem: format!("must be a list of strings, found {other}"),
                }),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        // A single name is a common hand-written slip; take it as a list of one.
        Some(Value::String(s)) => Ok(Some(vec![s])),
        Some(other) => Err(MessageError::InvalidField {
            kind: "SCHEMA",
            field,
            problem: format!("must be a list of strings, found {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_each_type_case_insensitively() {
        let m = parse_message(r#"{"type":"record","stream":"s","record":{"a":1.50}}"#).unwrap();
        let Message::Record(r) = m else {
            panic!("{m:?}")
        };
        assert_eq!(r.stream, "s");
        assert_eq!(r.record.get(), r#"{"a":1.50}"#);

        let m = parse_message(r#"{"type":"Schema","stream":"s","schema":{"type":"object"},"key_properties":["id"],"extra":1}"#).unwrap();
        let Message::Schema(s) = m else { panic!() };
        assert_eq!(s.key_properties, vec!["id".to_string()]);
        assert_eq!(s.schema, json!({"type":"object"}));

        let m = parse_message(r#"{"type":"STATE","value":{"bookmarks":{}}}"#).unwrap();
        assert!(
            matches!(m, Message::State(StateMessage { value }) if value == json!({"bookmarks":{}}))
        );

        let m =
            parse_message(r#"{"type":"ACTIVATE_VERSION","stream":"s","version":1700000000000}"#)
                .unwrap();
        assert!(matches!(
            m,
            Message::ActivateVersion(ActivateVersionMessage {
                version: 1700000000000,
                ..
            })
        ));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let cases = [
            (
                "THIS IS A TEST",
                "not valid JSON: expected value at line 1 column 1",
            ),
            (
                r#"{"stream":"s"}"#,
                "a message must be a JSON object with a `type`",
            ),
            ("[1,2]", "a message must be a JSON object with a `type`"),
            (
                r#"{"type":"NOPE"}"#,
                "unknown message type `NOPE` (expected SCHEMA, RECORD, STATE or ACTIVATE_VERSION)",
            ),
            (
                r#"{"type":"BATCH","stream":"s"}"#,
                "BATCH messages are not supported: configure the tap to send RECORD messages",
            ),
            (
                r#"{"type":"RECORD","record":{}}"#,
                "RECORD message has no `stream`",
            ),
            (
                r#"{"type":"RECORD","stream":"s"}"#,
                "RECORD message has no `record`",
            ),
            (
                r#"{"type":"RECORD","stream":"s","record":[1]}"#,
                "RECORD message: `record` must be a JSON object",
            ),
            (
                r#"{"type":"SCHEMA","stream":"s"}"#,
                "SCHEMA message has no `schema`",
            ),
            (r#"{"type":"STATE"}"#, "STATE message has no `value`"),
            (
                r#"{"type":"ACTIVATE_VERSION","stream":"s"}"#,
                "ACTIVATE_VERSION message has no `version`",
            ),
            (
                r#"{"type":"RECORD","stream":"s","record":{},"version":"x"}"#,
                "RECORD message: `version` must be an integer, not \"x\"",
            ),
        ];
        for (line, want) in cases {
            let (err, _) = parse_message(line).unwrap_err();
            assert_eq!(err.to_string(), want, "for {line}");
        }
    }

    #[test]
    fn error_keeps_the_stream_name() {
        let (_, stream) = parse_message(r#"{"type":"RECORD","stream":"users"}"#).unwrap_err();
        assert_eq!(stream.as_deref(), Some("users"));
    }
}
