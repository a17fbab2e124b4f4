//! `validate_records`: each record is checked against its stream's SCHEMA
//! (JSON Schema Draft 7, `format` checked, as Meltano SDK targets check)
//! before it becomes a row. The validator is compiled once per SCHEMA.

use serde_json::Value;

/// One stream's compiled SCHEMA.
pub struct RecordValidator(jsonschema::Validator);

/// Why a record does not match its SCHEMA.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// JSON pointer of the offending value (`""`: the record itself).
    pub pointer: String,
    pub message: String,
}

impl RecordValidator {
    /// Compiles `schema` (the SCHEMA message's `schema`, as sent).
    pub fn new(schema: &Value) -> Result<RecordValidator, String> {
        jsonschema::draft7::options()
            .should_validate_formats(true)
            .build(schema)
            .map(RecordValidator)
            .map_err(|e| e.to_string())
    }

    /// The first way `record` breaks the schema, if any.
    pub fn check(&self, record: &str) -> Result<(), Mismatch> {
        // Parsed only for the check: the row is still written from the raw text.
        let value: Value = serde_json::from_str(record).map_err(|e| Mismatch {
            pointer: String::new(),
            message: format!("cannot be checked: {e}"),
        })?;
        self.0.validate(&value).map_err(|e| Mismatch {
            pointer: e.instance_path().to_string(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(schema: Value, record: &str) -> Result<(), Mismatch> {
        RecordValidator::new(&schema).unwrap().check(record)
    }

    #[test]
    fn names_the_field_by_json_pointer() {
        let s = json!({"type": "object", "required": ["id"], "properties": {
            "id": {"type": "integer"},
            "at": {"type": ["null", "string"], "format": "date-time"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "d": {"type": "string", "format": "singer.decimal"}}});
        assert_eq!(
            check(
                s.clone(),
                r#"{"id": 1, "at": null, "tags": ["a"], "d": "1.5"}"#
            ),
            Ok(())
        );
        let bad = |r: &str| check(s.clone(), r).unwrap_err();
        assert_eq!(
            bad(r#"{"id": "x"}"#),
            Mismatch {
                pointer: "/id".into(),
                message: r#""x" is not of type "integer""#.into()
            }
        );
        assert_eq!(bad(r#"{"id": 1, "at": "yesterday"}"#).pointer, "/at");
        assert_eq!(bad(r#"{"id": 1, "tags": ["a", 2]}"#).pointer, "/tags/1");
        assert_eq!(
            bad(r#"{"at": null}"#),
            Mismatch {
                pointer: "".into(),
                message: r#""id" is a required property"#.into()
            }
        );
    }

    #[test]
    fn a_schema_that_is_not_draft_7_is_refused() {
        assert!(RecordValidator::new(&json!({"type": "decimal"})).is_err());
    }
}
