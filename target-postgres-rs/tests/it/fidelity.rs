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

fn declared(t: &str, json_type: Value) -> Value {
    json!({"type": json_type, "x-sql-datatype": t})
}

#[test]
fn types_without_a_modifier_keep_their_unbounded_meaning() {
    both_formats("unmodified", |db, c| {
        let props = json!({
            "ch": declared("character", json!(["null", "string"])),
            "chs": declared("character[]", json!(["null", "array"])),
            "ch3": declared("character(3)", json!(["null", "string"])),
            "b": declared("bit", json!(["null", "string"])),
            "b4": declared("bit(4)", json!(["null", "string"])),
            "vc": declared("character varying", json!(["null", "string"])),
            "n": declared("numeric", json!(["null", "number"])),
            "ts": declared("timestamp", json!(["null", "string"])),
        });
        let r = run(
            db,
            c,
            &input(
                "m",
                props,
                &[
                    r#"{"ch": "foo", "chs": ["ab", "cde"], "ch3": "ab", "b": "101101", "b4": "1010", "vc": "any length", "n": 1.2345678901234567890123, "ts": "2020-01-02 03:04:05.123456"}"#,
                ],
            ),
        );
        assert!(r.ok, "{}", r.stderr);
        for (col, ty) in [
            ("ch", "bpchar"),
            ("chs", "bpchar[]"),
            ("ch3", "character(3)"),
            ("b", "\"bit\""),
            ("b4", "bit(4)"),
            ("vc", "character varying"),
            ("n", "numeric"),
            ("ts", "timestamp without time zone"),
        ] {
            assert_eq!(column_type(db, "m", col), ty, "column {col}");
        }
        let got: Vec<_> = ["ch", "chs", "ch3", "b", "b4", "vc", "n", "ts"]
            .iter()
            .map(|col| column(db, "m", col).remove(0).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "foo",
                "{ab,cde}",
                "ab",
                "101101",
                "1010",
                "any length",
                "1.2345678901234567890123",
                "2020-01-02 03:04:05.123456"
            ]
        );
    });
}

#[test]
fn domains_are_written_as_their_base_type() {
    both_formats("domains", |db, c| {
        db.client()
            .batch_execute(
                "CREATE DOMAIN public.ints AS integer[]; \
                 CREATE DOMAIN public.pos AS integer CHECK (VALUE > 0); \
                 CREATE DOMAIN public.pos_ints AS public.ints CHECK (cardinality(VALUE) > 0); \
                 CREATE DOMAIN public.doc AS jsonb; \
                 CREATE DOMAIN public.blob AS bytea; \
                 CREATE DOMAIN public.texts AS text[]",
            )
            .unwrap();
        let props = json!({
            "a": declared("public.ints", json!(["null", "array"])),
            "p": declared("public.pos", json!(["null", "integer"])),
            "pa": declared("public.pos_ints", json!(["null", "array"])),
            "j": declared("public.doc", json!(["null", "object", "array"])),
            "bl": declared("public.blob", json!(["null", "string"])),
            "t": declared("public.texts", json!(["null", "array"])),
        });
        let rec = r#"{"a": [2, 2], "p": 7, "pa": [[1, 2], [3, 4]], "j": [1, {"k": "v"}], "bl": "00ff", "t": ["a,b", null, "c\"d"]}"#;
        let r = run(db, c.clone(), &input("d", props.clone(), &[rec]));
        assert!(r.ok, "{}", r.stderr);
        for (col, ty, value) in [
            ("a", "ints", "{2,2}"),
            ("p", "pos", "7"),
            ("pa", "pos_ints", "{{1,2},{3,4}}"),
            ("j", "doc", r#"[1, {"k": "v"}]"#),
            ("bl", "blob", "\\x00ff"),
            ("t", "texts", r#"{"a,b",NULL,"c\"d"}"#),
        ] {
            assert_eq!(column_type(db, "d", col), ty, "column {col}");
            assert_eq!(column(db, "d", col), some(&[value]), "column {col}");
        }
        // The same SCHEMA again, into the existing table: the same codec.
        let r = run(db, c, &input("d", props, &[rec]));
        assert!(r.ok, "{}", r.stderr);
        assert_eq!(
            column(db, "d", "pa"),
            some(&["{{1,2},{3,4}}", "{{1,2},{3,4}}"])
        );
    });
}

#[test]
fn a_tables_row_type_lands_as_its_text_form() {
    both_formats("rowtypes", |db, c| {
        // The destination's `t.item` is the target's own table (with `_sdc_*`
        // columns when metadata is on), not the source's row type.
        let mut with_meta = c.clone();
        with_meta["add_record_metadata"] = json!(true);
        let item = json!({"id": {"type": "integer"}, "name": {"type": ["null", "string"]}});
        let r = run(
            db,
            with_meta.clone(),
            &input("item", item, &[r#"{"id": 1, "name": "a"}"#]),
        );
        assert!(r.ok, "{}", r.stderr);
        let props = json!({
            "one": declared("t.item", json!(["null", "string"])),
            "many": declared("t.item[]", json!(["null", "array"])),
        });
        let r = run(
            db,
            with_meta,
            &input(
                "orders",
                props,
                &[r#"{"one": "(1,a)", "many": ["(1,a)", "(2,\"b c\")", null]}"#],
            ),
        );
        assert!(r.ok, "{}", r.stderr);
        assert_eq!(column_type(db, "orders", "one"), "text");
        assert_eq!(column_type(db, "orders", "many"), "text[]");
        assert_eq!(column(db, "orders", "one"), some(&["(1,a)"]));
        assert_eq!(
            column(db, "orders", "many"),
            some(&[r#"{"(1,a)","(2,\"b c\")",NULL}"#])
        );
    });
}

#[test]
fn base16_strings_are_kept_as_sent_or_decoded_on_request() {
    both_formats("base16", |db, c| {
        let props = json!({
            "h": {"type": ["null", "string"], "contentEncoding": "base16"},
            // Our tap's bytea: the declared type wins, with or without the setting.
            "own": {"type": ["null", "string"], "contentEncoding": "base16", "x-sql-datatype": "bytea"},
        });
        let recs = [
            r#"{"h": "0xDEADbeef", "own": "00ff"}"#,
            r#"{"h": "abc", "own": ""}"#,
            r#"{"h": "", "own": null}"#,
            r#"{"h": "0x", "own": "0a"}"#,
        ];
        let r = run(db, c.clone(), &input("plain", props.clone(), &recs));
        assert!(r.ok, "{}", r.stderr);
        assert_eq!(column_type(db, "plain", "h"), "text");
        assert_eq!(
            column(db, "plain", "h"),
            some(&["0xDEADbeef", "abc", "", "0x"])
        );
        assert_eq!(column_type(db, "plain", "own"), "bytea");
        assert_eq!(
            column(db, "plain", "own"),
            vec![
                Some("\\x00ff".into()),
                Some("\\x".into()),
                None,
                Some("\\x0a".into())
            ]
        );
        let mut on = c;
        on["interpret_content_encoding"] = json!(true);
        let r = run(db, on, &input("decoded", props, &recs));
        assert!(r.ok, "{}", r.stderr);
        assert_eq!(column_type(db, "decoded", "h"), "bytea");
        assert_eq!(
            column(db, "decoded", "h"),
            some(&["\\xdeadbeef", "\\x0abc", "\\x", "\\x"])
        );
        assert_eq!(column_type(db, "decoded", "own"), "bytea");
    });
}

/// A key-less stream as a tap sends it: records `from+1..=to` (with
/// `version` when given), a STATE `{"bookmark": n}` after every 10th.
fn keyless_lines(from: u64, to: u64, version: Option<i64>) -> Vec<String> {
    let mut ls = vec![schema(
        "k",
        json!({"n": {"type": "integer"}, "pad": {"type": "string"}}),
    )];
    for n in from + 1..=to {
        let mut rec =
            json!({"type": "RECORD", "stream": "k", "record": {"n": n, "pad": "x".repeat(50)}});
        if let Some(v) = version {
            rec["version"] = json!(v);
        }
        ls.push(rec.to_string());
        if n % 10 == 0 {
            ls.push(json!({"type": "STATE", "value": {"bookmark": n}}).to_string());
        }
    }
    ls
}

/// Feeds the first `upto` lines, waits until the target has handled them
/// (its session waits for the client: idle, or in a COPY waiting for rows), kills it with SIGKILL; returns
/// the last STATE it printed.
fn kill_after(db: &TestDb, cfg: &std::path::Path, lines: &[String], upto: usize) -> Option<Value> {
    use std::io::Write;
    let mut live = live_target(cfg);
    let mut data = lines[..upto].join("\n");
    data.push('\n');
    live.stdin.write_all(data.as_bytes()).unwrap();
    live.stdin.flush().unwrap();
    let mut c = db.client();
    let mut idle_polls = 0;
    let waiting = pg_testkit::TestDb::wait_for(std::time::Duration::from_secs(30), || {
        let idle: bool = c
            .query_one(
                "SELECT coalesce(count(*) = 1 AND bool_and(wait_event = 'ClientRead'), false) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        idle_polls = if idle { idle_polls + 1 } else { 0 };
        idle_polls >= 3
    });
    assert!(
        waiting,
        "the target never waited for input (after {upto} lines)"
    );
    live.child.kill().unwrap(); // SIGKILL
    live.child.wait().unwrap();
    // The reader ends at the closed pipe: every line printed before the kill.
    live.printed
        .iter()
        .last()
        .map(|l| serde_json::from_str(&l).unwrap())
}

#[test]
fn a_keyless_stream_killed_anywhere_then_resumed_converges() {
    const N: u64 = 95;
    let lines = keyless_lines(0, N, None);
    // Batches of 7 end between STATEs (every 10 records): a commit there
    // would hold rows that a resume from the newest STATE sends again.
    for upto in [
        4, 9, 12, 17, 19, 23, 30, 38, 45, 52, 60, 67, 75, 83, 90, 99, 104,
    ] {
        let db = pg_testkit::cluster().create_database(&format!("keyless{upto}"));
        let cfg = config(
            &db,
            json!({"batch_size_rows": 7, "add_record_metadata": false}),
        );
        let resume_from = kill_after(&db, cfg.path(), &lines, upto)
            .map_or(0, |s| s["bookmark"].as_u64().unwrap());
        eprintln!(
            "upto {upto}: resume {resume_from}, committed {:?}",
            pg_testkit::rows::count(&db, "public", "k")
        );
        let mut rest = keyless_lines(resume_from, N, None).join("\n");
        rest.push('\n');
        let r = run(
            &db,
            json!({"batch_size_rows": 7, "add_record_metadata": false}),
            rest.as_bytes(),
        );
        assert!(r.ok, "{}", r.stderr);
        let row = db
            .client()
            .query_one("SELECT count(*), count(DISTINCT n) FROM public.k", &[])
            .unwrap();
        let (total, distinct): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            (total, distinct),
            (N as i64, N as i64),
            "killed after {upto} input lines, resumed from bookmark {resume_from}"
        );
    }
}

#[test]
fn a_view_killed_anywhere_then_resynced_converges() {
    // A view has no position to resume from: the tap starts it over under a
    // new table version, and the closing ACTIVATE_VERSION removes the rows
    // of the interrupted one.
    const N: u64 = 45;
    let cfg_value = json!({"batch_size_rows": 7, "hard_delete": true});
    for upto in [5, 13, 22, 31, 40, 49] {
        let db = pg_testkit::cluster().create_database(&format!("keylessview{upto}"));
        let cfg = config(&db, cfg_value.clone());
        kill_after(&db, cfg.path(), &keyless_lines(0, N, Some(1)), upto);
        let mut again = keyless_lines(0, N, Some(2));
        again.push(json!({"type": "ACTIVATE_VERSION", "stream": "k", "version": 2}).to_string());
        let mut again = again.join("\n");
        again.push('\n');
        let r = run(&db, cfg_value.clone(), again.as_bytes());
        assert!(r.ok, "{}", r.stderr);
        let row = db
            .client()
            .query_one(
                "SELECT count(*), count(DISTINCT n), min(_sdc_table_version) FROM public.k",
                &[],
            )
            .unwrap();
        let (total, distinct, v): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (total, distinct, v),
            (N as i64, N as i64, 2),
            "killed after {upto} input lines"
        );
    }
}

#[test]
fn numeric_infinity_lands_or_is_refused_clearly_on_every_server() {
    both_formats("numinf", |db, c| {
        let version: i32 = text(db, "SHOW server_version_num")
            .unwrap()
            .parse()
            .unwrap();
        let props = json!({"n": declared("numeric", json!(["null", "number", "string"]))});
        let r = run(
            db,
            c,
            &input(
                "inf",
                props,
                &[
                    r#"{"n": 1.5}"#,
                    r#"{"n": "NaN"}"#,
                    r#"{"n": "Infinity"}"#,
                    r#"{"n": "-Infinity"}"#,
                ],
            ),
        );
        if version >= 140000 {
            assert!(r.ok, "{}", r.stderr);
            assert_eq!(
                column(db, "inf", "n"),
                some(&["1.5", "NaN", "Infinity", "-Infinity"])
            );
        } else {
            // Numeric infinity exists from PostgreSQL 14: the same clear
            // message in both COPY formats, naming line and column.
            assert!(!r.ok);
            assert_eq!(
                r.last_error(),
                "target-postgres-rs: error: input line 4 (stream `inf`): column `n`: cannot load value: \
                 invalid input syntax for type numeric: \"Infinity\""
            );
        }
    });
}
