//! Values from data nobody here wrote: each test is one class of value or
//! declared type that real taps send, loaded into real Postgres, with the
//! stored values read back as Postgres prints them.

use crate::common::*;
use pg_testkit::rows::text;
use pg_testkit::TestDb;
use serde_json::{json, Value};

fn schema(stream: &str, props: Value) -> String {
    json!({"type": "SCHEMA", "stream": stream, "schema": {"type": "object", "properties": props}, "key_properties": []}).to_string()
}

fn record(stream: &str, rec: Value) -> String {
    json!({"type": "RECORD", "stream": stream, "record": rec}).to_string()
}

/// One SCHEMA, then one RECORD per line of `records` (raw JSON objects, so
/// numbers beyond f64 keep their digits).
fn input(stream: &str, props: Value, records: &[&str]) -> Vec<u8> {
    let mut s = schema(stream, props);
    for r in records {
        s.push('\n');
        s.push_str(&format!(
            r#"{{"type": "RECORD", "stream": "{stream}", "record": {r}}}"#
        ));
    }
    s.push('\n');
    s.into_bytes()
}

fn cfg() -> Value {
    json!({"default_target_schema": "t", "add_record_metadata": false})
}

/// Both COPY formats: each test runs once in binary and once in text COPY.
fn both_formats(name: &str, mut f: impl FnMut(&TestDb, Value)) {
    for text_copy in [false, true] {
        let db = pg_testkit::cluster().create_database(&format!("{name}{}", text_copy as u8));
        let mut c = cfg();
        c["text_copy"] = json!(text_copy);
        f(&db, c);
    }
}

/// The column's values as Postgres prints them, in insertion order.
fn column(db: &TestDb, table: &str, col: &str) -> Vec<Option<String>> {
    db.client()
        .query(
            &format!("SELECT {col}::text FROM t.{table} ORDER BY ctid"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn column_type(db: &TestDb, table: &str, col: &str) -> String {
    text(
        db,
        &format!(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 't.{table}'::regclass AND attname = '{col}'"
        ),
    )
    .unwrap()
}

fn some(v: &[&str]) -> Vec<Option<String>> {
    v.iter().map(|s| Some(s.to_string())).collect()
}

#[test]
fn json_keeps_nul_escapes_and_jsonb_names_the_fix() {
    both_formats("jsonnul", |db, c| {
        let props = json!({
            "j": {"type": ["null", "object"], "x-sql-datatype": "json"},
            "ja": {"type": ["null", "array"], "x-sql-datatype": "json[]"},
        });
        let r = run(
            db,
            c.clone(),
            &input(
                "s",
                props,
                &[r#"{"j": {"k": "a\u0000b"}, "ja": ["\u0000", {"x": "\u0000"}]}"#],
            ),
        );
        assert!(r.ok, "{}", r.stderr);
        assert_eq!(column(db, "s", "j"), some(&[r#"{"k": "a\u0000b"}"#]));
        assert_eq!(
            column(db, "s", "ja"),
            some(&[r#"{"\"\\u0000\"","{\"x\": \"\\u0000\"}"}"#])
        );
        // jsonb can't hold NUL: the error names stream, line, field and the fix.
        let props = json!({"b": {"type": ["null", "object"], "x-sql-datatype": "jsonb"}});
        let r = run(
            db,
            c,
            &input(
                "s2",
                props,
                &[r#"{"b": {"k": "ok"}}"#, r#"{"b": {"k": "a\u0000b"}}"#],
            ),
        );
        assert!(!r.ok);
        assert_eq!(
            r.last_error(),
            "target-postgres-rs: error: input line 3 (stream `s2`): field `b` contains a NUL character (\\u0000), \
             which text and jsonb columns can't hold; set `sanitize_null_text_characters: true` to strip it, \
             or declare the column `json` (`x-sql-datatype`), which keeps it"
        );
    });
}

#[test]
fn integers_beyond_bigint_land_exactly() {
    both_formats("bigints", |db, c| {
        // Unbounded: bigint until the first value beyond it, then numeric.
        let props = json!({"n": {"type": ["null", "integer"]}, "m": {"type": ["null", "integer"]}});
        let r = run(
            db,
            c.clone(),
            &input("u", props.clone(), &[r#"{"n": 1, "m": 2}"#]),
        );
        assert!(r.ok, "{}", r.stderr);
        assert_eq!(column_type(db, "u", "n"), "bigint");
        let r = run(
            db,
            c.clone(),
            &input(
                "u",
                props,
                &[
                    r#"{"n": 9223372036854775807, "m": 3}"#,
                    r#"{"n": 18446744073709551615, "m": 4}"#,
                    r#"{"n": -9223372036854775809, "m": -9223372036854775809}"#,
                    r#"{"n": 5, "m": 5}"#,
                ],
            ),
        );
        assert!(r.ok, "{}", r.stderr);
        assert_eq!(column_type(db, "u", "n"), "numeric");
        assert_eq!(column_type(db, "u", "m"), "numeric");
        assert_eq!(
            column(db, "u", "n"),
            some(&[
                "1",
                "9223372036854775807",
                "18446744073709551615",
                "-9223372036854775809",
                "5"
            ])
        );
        assert_eq!(
            column(db, "u", "m"),
            some(&["2", "3", "4", "-9223372036854775809", "5"])
        );
        // Bounds beyond bigint: numeric from the start; bounds within: bigint.
        let props = json!({
            "big": {"type": "integer", "minimum": 0, "maximum": 18446744073709551615u64},
            "neg": {"type": "integer", "minimum": -9223372036854775809i128 as f64, "maximum": 0},
            "small": {"type": "integer", "minimum": -10, "maximum": 10},
        });
        let r = run(
            db,
            c,
            &input(
                "b",
                props,
                &[r#"{"big": 18446744073709551615, "neg": -9223372036854775809, "small": 10}"#],
            ),
        );
        assert!(r.ok, "{}", r.stderr);
        assert_eq!(column_type(db, "b", "big"), "numeric");
        assert_eq!(column_type(db, "b", "neg"), "numeric");
        assert_eq!(column_type(db, "b", "small"), "bigint");
        assert_eq!(column(db, "b", "big"), some(&["18446744073709551615"]));
        assert_eq!(column(db, "b", "neg"), some(&["-9223372036854775809"]));
    });
}
