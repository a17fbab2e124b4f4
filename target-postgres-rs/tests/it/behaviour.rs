//! What users rely on: state after commit, crash convergence, schema
//! evolution, deletes and versions, names, exact values, NOTIFY, grants.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use pg_testkit::rows::{count, tables, text};
use postgres::fallible_iterator::FallibleIterator;
use serde_json::{json, Value};

fn schema(stream: &str, props: Value, keys: &[&str]) -> String {
    json!({"type": "SCHEMA", "stream": stream, "schema": {"type": "object", "properties": props}, "key_properties": keys}).to_string()
}

fn record(stream: &str, rec: Value) -> String {
    json!({"type": "RECORD", "stream": stream, "record": rec}).to_string()
}

fn lines(ls: &[String]) -> Vec<u8> {
    let mut s = ls.join("\n");
    s.push('\n');
    s.into_bytes()
}

#[test]
fn states_are_emitted_only_after_their_data_is_committed() {
    let db = pg_testkit::cluster().create_database("statecommit");
    let cfg = config(
        &db,
        json!({"default_target_schema": "t", "batch_size_rows": 2}),
    );
    let Live {
        mut child,
        mut stdin,
        printed: rx,
    } = live_target(cfg.path());
    let input =
        std::fs::read_to_string(vectors().join("singer-sdk/multiple_state_messages.singer"))
            .unwrap();
    let mut emitted = Vec::new();
    let check = |state: &Value| {
        // Every record before this state is in the destination.
        for (stream, col) in [
            (
                "test_multiple_state_messages_a",
                "test_multiple_state_messages_a",
            ),
            (
                "test_multiple_state_messages_b",
                "test_multiple_state_messages_b",
            ),
        ] {
            let upto = state[col].as_i64().unwrap();
            let n: i64 = db
                .client()
                .query_one(
                    &format!("SELECT count(*) FROM t.{stream} WHERE id <= $1"),
                    &[&upto],
                )
                .unwrap()
                .get(0);
            assert_eq!(
                n, upto,
                "state {state} emitted before stream {stream} had ids 1..{upto}"
            );
        }
    };
    for line in input.lines() {
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        // The target is waiting for input now: whatever it emitted must be committed.
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
            let v: Value = serde_json::from_str(&l).unwrap();
            check(&v);
            emitted.push(v);
        }
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
        emitted.push(serde_json::from_str(&l).unwrap());
    }
    assert!(emitted.len() >= 3, "{emitted:?}");
    assert_eq!(
        emitted.last().unwrap(),
        &json!({"test_multiple_state_messages_a": 5, "test_multiple_state_messages_b": 6})
    );
    assert_eq!(count(&db, "t", "test_multiple_state_messages_a"), Some(6));
    assert_eq!(count(&db, "t", "test_multiple_state_messages_b"), Some(6));
}

/// Records with repeated keys (every key appears twice, the second time updated).
fn big_input(n: i64) -> Vec<u8> {
    let mut out = String::new();
    out.push_str(&schema(
        "public-big",
        json!({"id": {"type": "integer"}, "v": {"type": ["null", "string"]}, "n": {"type": ["null", "number"]}}),
        &["id"],
    ));
    out.push('\n');
    for i in 0..n {
        out.push_str(&record(
            "public-big",
            json!({"id": i % (n / 2), "v": format!("row {i}"), "n": i}),
        ));
        out.push('\n');
        if i % 1000 == 999 {
            out.push_str(
                &json!({"type": "STATE", "value": {"bookmarks": {"public-big": {"i": i}}}})
                    .to_string(),
            );
            out.push('\n');
        }
    }
    out.into_bytes()
}

#[test]
fn killed_mid_stream_then_rerun_converges() {
    let db = pg_testkit::cluster().create_database("sigkill");
    let input = big_input(200_000);
    let cfg = config(&db, json!({"batch_size_rows": 5000}));
    let mut child = target(cfg.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.clone();
    let feeder = std::thread::spawn(move || {
        // Slowly, so that the kill lands mid-stream.
        for chunk in data.chunks(64 * 1024) {
            if stdin.write_all(chunk).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    assert!(pg_testkit::TestDb::wait_for(
        Duration::from_secs(60),
        || { count(&db, "public", "big").unwrap_or(0) > 0 }
    ));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    feeder.join().unwrap();
    let partial = count(&db, "public", "big").unwrap();
    assert!(
        partial > 0 && partial < 100_000,
        "killed mid-stream: {partial}"
    );
    let r = run(&db, json!({"batch_size_rows": 5000}), &input);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let mut c = db.client();
    let row = c
        .query_one(
            "SELECT count(*), count(DISTINCT id), min(n::bigint - id), max(n::bigint - id), bool_and(v = 'row ' || n) FROM public.big",
            &[],
        )
        .unwrap();
    let (total, distinct, lo, hi, ok): (i64, i64, i64, i64, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!((total, distinct), (100_000, 100_000));
    // The last record for each key won: n = id + 100000.
    assert_eq!((lo, hi, ok), (100_000, 100_000, true));
}

fn column_types(db: &pg_testkit::TestDb, table: &str) -> Vec<(String, String)> {
    db.client()
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn schema_evolution_adds_and_widens_and_never_loses() {
    let db = pg_testkit::cluster().create_database("evolve");
    let s1 = schema(
        "s",
        json!({"id": {"type": "integer"}, "amount": {"type": "integer"}, "d": {"type": "string", "format": "date"}, "flag": {"type": "boolean"}}),
        &["id"],
    );
    let r = run(
        &db,
        json!({"add_record_metadata": false}),
        &lines(&[
            s1.clone(),
            record(
                "s",
                json!({"id": 1, "amount": 5, "d": "2024-01-02", "flag": true}),
            ),
        ]),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let relfile = text(
        &db,
        "SELECT relfilenode::text FROM pg_class WHERE oid = 'public.s'::regclass",
    );
    // The same SCHEMA again is a no-op: no rewrite, same columns.
    let r = run(
        &db,
        json!({"add_record_metadata": false}),
        &lines(&[s1.clone(), s1.clone()]),
    );
    assert_eq!(r.code, Some(0));
    assert!(
        !r.stderr.contains("widened") && !r.stderr.contains("added column"),
        "{}",
        r.stderr
    );
    assert_eq!(
        text(
            &db,
            "SELECT relfilenode::text FROM pg_class WHERE oid = 'public.s'::regclass"
        ),
        relfile
    );
    // New property, integer → number, date → date-time, boolean → string.
    let s2 = schema(
        "s",
        json!({"id": {"type": "integer"}, "amount": {"type": "number"}, "d": {"type": "string", "format": "date-time"},
               "flag": {"type": "string"}, "extra": {"type": ["null", "string"]}}),
        &["id"],
    );
    let r = run(
        &db,
        json!({"add_record_metadata": false}),
        &lines(&[
            s2,
            // Raw text: this number must not pass through f64.
            r#"{"type":"RECORD","stream":"s","record":{"id": 2, "amount": 1.000000000000000000001, "d": "2024-01-02T03:04:05.123456+00:00", "flag": "maybe", "extra": "x"}}"#.to_owned(),
        ]),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        column_types(&db, "public.s"),
        vec![
            ("id".into(), "bigint".into()),
            ("amount".into(), "numeric".into()),
            ("d".into(), "timestamp with time zone".into()),
            ("flag".into(), "text".into()),
            ("extra".into(), "text".into()),
        ]
    );
    assert_eq!(
        text(&db, "SELECT string_agg(format('%s|%s|%s|%s|%s', id, amount, d, flag, extra), ';' ORDER BY id) FROM public.s").as_deref(),
        Some("1|5|2024-01-02 00:00:00+00|true|;2|1.000000000000000000001|2024-01-02 03:04:05.123456+00|maybe|x")
    );
    // An older, narrower schema later: nothing narrows or disappears.
    let r = run(
        &db,
        json!({"add_record_metadata": false}),
        &lines(&[
            s1,
            record(
                "s",
                json!({"id": 3, "amount": 7, "d": "2024-02-03", "flag": false}),
            ),
        ]),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(column_types(&db, "public.s").len(), 5);
    assert_eq!(column_types(&db, "public.s")[1].1, "numeric");
    assert_eq!(count(&db, "public", "s"), Some(3));
}

#[test]
fn deletes_and_activate_version() {
    for hard in [false, true] {
        let db = pg_testkit::cluster().create_database("versions");
        let props = json!({"id": {"type": "integer"}, "v": {"type": ["null", "string"]}});
        let rec = |id: i64, version: i64| {
            json!({"type": "RECORD", "stream": "v", "record": {"id": id, "v": format!("v{version}")}, "version": version}).to_string()
        };
        let av = |version: i64| {
            json!({"type": "ACTIVATE_VERSION", "stream": "v", "version": version}).to_string()
        };
        let cfg = json!({"hard_delete": hard});
        let first = lines(&[
            schema("v", props.clone(), &["id"]),
            av(1),
            rec(1, 1),
            rec(2, 1),
            rec(3, 1),
            av(1),
        ]);
        assert_eq!(run(&db, cfg.clone(), &first).code, Some(0));
        // A new version without id 3, and a deleted record for id 2.
        let second = lines(&[
            schema("v", props.clone(), &["id"]),
            av(2),
            rec(1, 2),
            json!({"type": "RECORD", "stream": "v", "record": {"id": 2, "v": "gone", "_sdc_deleted_at": "2024-05-06T07:08:09+00:00"}, "version": 2}).to_string(),
            av(2),
        ]);
        let r = run(&db, cfg.clone(), &second);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let got = text(&db, "SELECT string_agg(format('%s:%s:%s', id, v, _sdc_deleted_at IS NOT NULL), ',' ORDER BY id) FROM public.v");
        if hard {
            assert_eq!(got.as_deref(), Some("1:v2:f"));
        } else {
            assert_eq!(got.as_deref(), Some("1:v2:f,2:gone:t,3:v1:t"));
            let mark = text(
                &db,
                "SELECT _sdc_deleted_at::text FROM public.v WHERE id = 2",
            );
            assert_eq!(mark.as_deref(), Some("2024-05-06 07:08:09+00"));
        }
        // A soft mark is kept by a later ACTIVATE_VERSION; ACTIVATE_VERSION before
        // SCHEMA, with no records, empties the stream's table the same way.
        let marked_before = text(
            &db,
            "SELECT _sdc_deleted_at::text FROM public.v WHERE id = 3",
        );
        let r = run(&db, cfg.clone(), &lines(&[av(3)]));
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        if hard {
            assert_eq!(count(&db, "public", "v"), Some(0));
        } else {
            assert_eq!(count(&db, "public", "v"), Some(3));
            let live: i64 = db
                .client()
                .query_one(
                    "SELECT count(*) FROM public.v WHERE _sdc_deleted_at IS NULL",
                    &[],
                )
                .unwrap()
                .get(0);
            assert_eq!(live, 0);
            assert_eq!(
                text(
                    &db,
                    "SELECT _sdc_deleted_at::text FROM public.v WHERE id = 3"
                ),
                marked_before
            );
        }
        // ACTIVATE_VERSION for a stream never seen: accepted, nothing happens.
        let r = run(
            &db,
            cfg,
            &lines(&[
                json!({"type": "ACTIVATE_VERSION", "stream": "nowhere", "version": 1}).to_string(),
            ]),
        );
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
}

#[test]
fn names_are_kept_quoted_and_long_ones_never_collide() {
    let db = pg_testkit::cluster().create_database("names");
    let long_a = format!("{}_alpha", "l".repeat(70));
    let long_b = format!("{}_beta", "l".repeat(70));
    let long_col = format!("{}_c", "k".repeat(80));
    let mut input = Vec::new();
    for stream in [
        "select",
        "My Table",
        "CamelCase",
        "a:b!c?d",
        "τραπέζι",
        long_a.as_str(),
        long_b.as_str(),
    ] {
        input.push(schema(
            stream,
            json!({"order": {"type": "integer"}, "Column Name": {"type": "string"}, "ünï": {"type": "string"}, long_col.clone(): {"type": "string"}}),
            &["order"],
        ));
        input.push(record(
            stream,
            json!({"order": 1, "Column Name": stream, "ünï": "ü", long_col.clone(): "long"}),
        ));
    }
    let r = run(&db, json!({}), &lines(&input));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let t = tables(&db, "public");
    assert_eq!(t.len(), 7, "{t:?}");
    for (name, n) in &t {
        assert!(name.len() <= 63, "{name}");
        assert_eq!(*n, 1);
    }
    for stream in ["select", "My Table", "CamelCase", "a:b!c?d", "τραπέζι"] {
        let got = text(
            &db,
            &format!(
                "SELECT \"Column Name\" || \"ünï\" FROM public.{}",
                pg_connect::quote_ident(stream)
            ),
        );
        assert_eq!(got, Some(format!("{stream}ü")));
    }
}

#[test]
fn values_of_every_kind_land_exactly() {
    let db = pg_testkit::cluster().create_database("values");
    db.client()
        .batch_execute("CREATE TYPE public.mood AS ENUM ('sad', 'happy')")
        .unwrap();
    let x = |t: &str, extra: Value| {
        let mut v = extra;
        v["x-sql-datatype"] = json!(t);
        v
    };
    let props = json!({
        "id": x("bigint", json!({"type": "integer"})),
        "num": x("numeric(40,10)", json!({"type": ["null", "number", "string"]})),
        "num_free": x("numeric", json!({"type": ["null", "number", "string"]})),
        "dbl": x("double precision", json!({"type": ["null", "number", "string"]})),
        "real4": x("real", json!({"type": ["null", "number", "string"]})),
        "ts": x("timestamp with time zone", json!({"type": ["null", "string"], "format": "date-time"})),
        "ts_plain": x("timestamp(3) without time zone", json!({"type": ["null", "string"], "format": "date-time"})),
        "d": x("date", json!({"type": ["null", "string"], "format": "date"})),
        "tm": x("time without time zone", json!({"type": ["null", "string"], "format": "time"})),
        "tmtz": x("time with time zone", json!({"type": ["null", "string"], "format": "time"})),
        "iv": x("interval", json!({"type": ["null", "string"]})),
        "bin": x("bytea", json!({"type": ["null", "string"], "contentEncoding": "base16"})),
        "ints": x("integer[]", json!({"type": ["null", "array"], "items": {"type": ["null", "integer"]}})),
        "texts": x("text[]", json!({"type": ["null", "array"], "items": {"type": ["null", "string"]}})),
        "grid": x("integer[]", json!({"type": ["null", "array"], "items": {"type": "array"}})),
        "doc": x("jsonb", json!({})),
        "ip": x("inet", json!({"type": ["null", "string"]})),
        "u": x("uuid", json!({"type": ["null", "string"], "format": "uuid"})),
        "m": x("public.mood", json!({"type": ["null", "string"], "enum": ["sad", "happy"]})),
        "gone": x("public.no_such_type", json!({"type": ["null", "string"]})),
        "vc": x("character varying(5)", json!({"type": ["null", "string"], "maxLength": 5})),
    });
    // numeric Infinity exists from PostgreSQL 14 on: older servers get null in row 2's num_free,
    // and the target's refusal of "-Infinity" there is asserted at the end.
    let numeric_infinity = pg_testkit::cluster().server_version_num() >= 140_000;
    let (num_free_2, landed_2) = if numeric_infinity {
        (r#""-Infinity""#, "-Infinity")
    } else {
        ("null", "<null>")
    };
    let row2 = |num_free: &str| {
        format!(
            r#"{{"id": 2, "num": -0.0000000001, "num_free": {num_free}, "dbl": 0.1, "real4": 3.4028235e38,
            "ts": "10000-01-01T00:00:00+00:00", "ts_plain": "2024-01-02T03:04:05.123+00:00", "d": "10000-12-31", "tm": null, "tmtz": null,
            "iv": null, "bin": "", "ints": [], "texts": [], "grid": null, "doc": null, "ip": null, "u": null, "m": null, "gone": null, "vc": null}}"#
        )
    };
    // Raw JSON text: numbers must reach the target with every digit.
    let rows = [
        r#"{"id": 1, "num": 123456789012345678901234567890.0123456789, "num_free": "NaN", "dbl": "Infinity", "real4": "-Infinity",
            "ts": "infinity", "ts_plain": "-infinity", "d": "0044-03-15 BC", "tm": "03:04:05.123456", "tmtz": "03:04:05+02:00",
            "iv": "P1Y2M3DT4H5M6S", "bin": "00ff10", "ints": [1, null, 3], "texts": ["a,b", "q\"t", "back\\s", null, "NULL", "tab\there"],
            "grid": [[1, 2], [3, 4]], "doc": {"k": [1, 2.50, "x\ny"], "n": null}, "ip": "10.0.0.1/8", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "m": "happy", "gone": "whatever", "vc": "abcde"}"#,
        &row2(num_free_2),
        r#"{"id": 3, "num": null, "num_free": 1e-7, "dbl": "NaN", "real4": null, "ts": "0044-03-15T12:00:00+00:00 BC", "ts_plain": null,
            "d": "infinity", "doc": "just a string", "texts": ["üñï", ""]}"#,
        r#"{"id": 4, "doc": [1, "two", {"three": 3}], "dbl": -1.7976931348623157e308, "num_free": 12345678901234567890123456789012345678901234567890}"#,
        r#"{"id": 5, "doc": 0.1000}"#,
    ];
    let input = |rows: &[&str]| {
        let mut input = vec![schema("public-vals", props.clone(), &["id"])];
        input.extend(rows.iter().map(|r| {
            format!(
                r#"{{"type": "RECORD", "stream": "public-vals", "record": {}}}"#,
                r.replace('\n', " ")
            )
        }));
        lines(&input)
    };
    let r = run(&db, json!({}), &input(&rows));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("no such type"),
        "a warning names the fallback: {}",
        r.stderr
    );
    let types: std::collections::HashMap<String, String> =
        column_types(&db, "public.vals").into_iter().collect();
    assert_eq!(types["num"], "numeric(40,10)");
    assert_eq!(types["ts_plain"], "timestamp(3) without time zone");
    assert_eq!(types["ints"], "integer[]");
    assert_eq!(types["m"], "mood");
    assert_eq!(types["gone"], "text");
    assert_eq!(types["vc"], "character varying(5)");
    assert_eq!(types["bin"], "bytea");
    let cols = "num, num_free, dbl, real4, ts, ts_plain, d, tm, tmtz, iv, bin, ints, texts, grid, doc, ip, u, m, gone, vc";
    let got: Vec<String> = db
        .client()
        .query(
            &format!(
                "SELECT concat_ws(' | ', {}) FROM public.vals ORDER BY id",
                cols.split(", ")
                    .map(|c| format!("coalesce({c}::text, '<null>')"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let want = [
        r#"123456789012345678901234567890.0123456789 | NaN | Infinity | -Infinity | infinity | -infinity | 0044-03-15 BC | 03:04:05.123456 | 03:04:05+02 | 1 year 2 mons 3 days 04:05:06 | \x00ff10 | {1,NULL,3} | {"a,b","q\"t","back\\s",NULL,"NULL","tab	here"} | {{1,2},{3,4}} | {"k": [1, 2.50, "x\ny"], "n": null} | 10.0.0.1/8 | a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 | happy | whatever | abcde"#,
        &format!(
            r#"-0.0000000001 | {landed_2} | 0.1 | 3.4028235e+38 | 10000-01-01 00:00:00+00 | 2024-01-02 03:04:05.123 | 10000-12-31 | <null> | <null> | <null> | \x | {{}} | {{}} | <null> | <null> | <null> | <null> | <null> | <null> | <null>"#
        ),
        r#"<null> | 0.0000001 | NaN | <null> | 0044-03-15 12:00:00+00 BC | <null> | infinity | <null> | <null> | <null> | <null> | <null> | {üñï,""} | <null> | "just a string" | <null> | <null> | <null> | <null> | <null>"#,
        r#"<null> | 12345678901234567890123456789012345678901234567890 | -1.7976931348623157e+308 | <null> | <null> | <null> | <null> | <null> | <null> | <null> | <null> | <null> | <null> | <null> | [1, "two", {"three": 3}] | <null> | <null> | <null> | <null> | <null>"#,
        r#"<null> | <null> | <null> | <null> | <null> | <null> | <null> | <null> | <null> | <null> | <null> | <null> | <null> | <null> | 0.1000 | <null> | <null> | <null> | <null> | <null>"#,
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w);
    }
    // JSON null is SQL NULL, jsonb included.
    let n: i64 = db
        .client()
        .query_one("SELECT count(*) FROM public.vals WHERE doc IS NULL", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    if !numeric_infinity {
        let mut rows = rows;
        let with_infinity = row2(r#""-Infinity""#);
        rows[1] = &with_infinity;
        let r = run(&db, json!({}), &input(&rows));
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        assert_eq!(
            r.last_error(),
            "target-postgres-rs: error: input line 3 (stream `public-vals`): column `num_free`: cannot load value: invalid input syntax for type numeric: \"-Infinity\""
        );
    }
}

#[test]
fn values_that_cannot_be_cast_name_stream_line_column_and_value() {
    let db = pg_testkit::cluster().create_database("badvalue");
    let input = lines(&[
        json!({"type": "STATE", "value": {"n": 1}}).to_string(),
        schema(
            "s",
            json!({"id": {"type": "integer"}, "when": {"type": "string", "format": "date-time"}}),
            &["id"],
        ),
        record("s", json!({"id": 1, "when": "2024-01-01T00:00:00Z"})),
        json!({"type": "STATE", "value": {"n": 2}}).to_string(),
        record("s", json!({"id": 2, "when": "not a time"})),
    ]);
    let r = run(&db, json!({}), &input);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.last_error(),
        "target-postgres-rs: error: input line 5 (stream `s`): column `when`: cannot load value: invalid input syntax for type timestamp with time zone: \"not a time\""
    );
    // Nothing past the last committed data: the state before the failed batch is not echoed.
    assert_eq!(r.stdout, "");
    assert_eq!(count(&db, "public", "s"), Some(0));
}

#[test]
fn notify_channel_names_each_table_and_its_rows() {
    let db = pg_testkit::cluster().create_database("notify");
    let mut listener = db.client();
    listener.batch_execute("LISTEN loads").unwrap();
    let input = lines(&[
        schema("app-users", json!({"id": {"type": "integer"}}), &["id"]),
        record("app-users", json!({"id": 1})),
        record("app-users", json!({"id": 2})),
        schema("app-orders", json!({"id": {"type": "integer"}}), &[]),
        record("app-orders", json!({"id": 9})),
    ]);
    let r = run(&db, json!({"notify_channel": "loads"}), &input);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let mut notes = listener.notifications();
    let mut it = notes.timeout_iter(Duration::from_secs(5));
    let n = it.next().unwrap().expect("a notification");
    assert_eq!(n.channel(), "loads");
    let payload: Value = serde_json::from_str(n.payload()).unwrap();
    assert_eq!(
        payload,
        json!({"tables": [{"schema": "app", "table": "orders", "rows": 1}, {"schema": "app", "table": "users", "rows": 2}]})
    );
}

#[test]
fn a_role_confined_to_its_own_schema_can_load() {
    let db = pg_testkit::cluster().create_database("grants");
    // The seed doc's grants: a login role, all privileges on its own schema only;
    // no superuser, no CREATE on the database.
    db.client()
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'loader') THEN \
               CREATE ROLE loader LOGIN PASSWORD 'pw' NOSUPERUSER NOCREATEDB NOCREATEROLE; END IF; END $$; \
             REVOKE CREATE ON DATABASE \"{0}\" FROM PUBLIC; REVOKE ALL ON SCHEMA public FROM PUBLIC; \
             CREATE SCHEMA loader_data; GRANT ALL PRIVILEGES ON SCHEMA loader_data TO loader;",
            db.name
        ))
        .unwrap();
    let can_create: bool = db
        .client()
        .query_one(
            "SELECT has_database_privilege('loader', current_database(), 'CREATE')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!can_create);
    let mut input = vec![schema(
        "src-t",
        json!({"id": {"type": "integer"}, "v": {"type": "string"}}),
        &["id"],
    )];
    for i in 0..10 {
        input.push(record("src-t", json!({"id": i % 5, "v": format!("v{i}")})));
    }
    input.push(json!({"type": "ACTIVATE_VERSION", "stream": "src-t", "version": 1}).to_string());
    let cfg = json!({"user": "loader", "password": "pw", "default_target_schema": "loader_data"});
    for _ in 0..2 {
        let r = run(&db, cfg.clone(), &lines(&input));
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
    assert_eq!(
        text(
            &db,
            "SELECT string_agg(v, ',' ORDER BY id) FROM loader_data.t"
        )
        .as_deref(),
        Some("v5,v6,v7,v8,v9")
    );
}

#[test]
fn user_indexes_and_extra_nullable_columns_never_break_loads() {
    let db = pg_testkit::cluster().create_database("userchanges");
    let s = schema(
        "t",
        json!({"id": {"type": "integer"}, "name": {"type": "string"}}),
        &["id"],
    );
    assert_eq!(
        run(
            &db,
            json!({}),
            &lines(&[s.clone(), record("t", json!({"id": 1, "name": "a"}))])
        )
        .code,
        Some(0)
    );
    db.client()
        .batch_execute("CREATE INDEX t_name ON public.t (name); ALTER TABLE public.t ADD COLUMN note text; UPDATE public.t SET note = 'kept'; INSERT INTO public.t (id, name) VALUES (50, 'by hand')")
        .unwrap();
    let r = run(
        &db,
        json!({}),
        &lines(&[
            s,
            record("t", json!({"id": 1, "name": "b"})),
            record("t", json!({"id": 2, "name": "c"})),
        ]),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        text(&db, "SELECT string_agg(format('%s:%s:%s', id, name, coalesce(note, '-')), ',' ORDER BY id) FROM public.t").as_deref(),
        Some("1:b:kept,2:c:-,50:by hand:-")
    );
}

#[test]
fn a_table_without_a_unique_key_index_is_still_upserted() {
    let db = pg_testkit::cluster().create_database("nounique");
    db.client()
        .batch_execute("CREATE TABLE public.t (id bigint, name text)")
        .unwrap();
    let s = schema(
        "t",
        json!({"id": {"type": "integer"}, "name": {"type": "string"}}),
        &["id"],
    );
    let input = lines(&[
        s,
        record("t", json!({"id": 1, "name": "a"})),
        record("t", json!({"id": 1, "name": "b"})),
    ]);
    for _ in 0..2 {
        let r = run(&db, json!({}), &input);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
    assert_eq!(
        text(&db, "SELECT string_agg(name, ',') FROM public.t").as_deref(),
        Some("b")
    );
}

#[test]
fn load_methods_append_and_overwrite() {
    let db = pg_testkit::cluster().create_database("methods");
    let s = schema("t", json!({"id": {"type": "integer"}}), &["id"]);
    let input = lines(&[
        s,
        record("t", json!({"id": 1})),
        record("t", json!({"id": 1})),
    ]);
    for _ in 0..2 {
        assert_eq!(
            run(&db, json!({"load_method": "append-only"}), &input).code,
            Some(0)
        );
    }
    assert_eq!(count(&db, "public", "t"), Some(4));
    // Overwrite empties the table first; the key still deduplicates the batch.
    let r = run(&db, json!({"load_method": "overwrite"}), &input);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(count(&db, "public", "t"), Some(1));
}

#[test]
fn errors_before_loading_still_drain_the_input() {
    let db = pg_testkit::cluster().create_database("drain");
    let input = big_input(100_000);
    // Unreachable server: fails at once, but reads every line first. (No
    // other key: an unknown one would add its warning line.)
    let r = run(&db, json!({"port": 1}), &input);
    assert_eq!(r.code, Some(1));
    assert!(r.stdin_ok, "the input was read to the end");
    assert!(
        r.last_error()
            .starts_with("target-postgres-rs: error: cannot connect to PostgreSQL at"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    // A bad record early in a big input: same.
    let mut bad = b"{\"type\":\"RECORD\",\"stream\":\"x\",\"record\":{}}\n".to_vec();
    bad.extend_from_slice(&input);
    let r = run(&db, json!({}), &bad);
    assert_eq!(r.code, Some(1));
    assert!(r.stdin_ok);
}

#[test]
fn about_version_and_help() {
    let bin = TARGET;
    let out = Command::new(bin)
        .args(["--about", "--format=json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let about: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(about["name"], "target-postgres-rs");
    for key in [
        "host",
        "database",
        "default_target_schema",
        "schema_mapping",
        "add_record_metadata",
        "hard_delete",
        "load_method",
        "batch_size_rows",
        "sanitize_null_text_characters",
        "notify_channel",
    ] {
        assert!(about["settings"]["properties"].get(key).is_some(), "{key}");
    }
    let md = Command::new(bin)
        .args(["--about", "--format", "markdown"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&md.stdout).contains("| load_method |"));
    let v = Command::new(bin).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("target-postgres-rs {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn keys_in_order_go_straight_in_and_out_of_order_keys_still_upsert() {
    let db = pg_testkit::cluster().create_database("ordered");
    let s = schema(
        "t",
        json!({"id": {"type": "integer"}, "v": {"type": "string"}}),
        &["id"],
    );
    let rec = |id: i64, v: &str| record("t", json!({"id": id, "v": v}));
    let r = run(
        &db,
        json!({}),
        &lines(&[s.clone(), rec(1, "a"), rec(2, "a"), rec(3, "a")]),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // Above the table's largest key and ascending, then an older key (update), a
    // repeat of a new key, and a new key again: all in one batch.
    let r = run(
        &db,
        json!({}),
        &lines(&[
            s.clone(),
            rec(4, "b"),
            rec(5, "b"),
            rec(2, "b"),
            rec(5, "c"),
            rec(6, "b"),
        ]),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        text(
            &db,
            "SELECT string_agg(id || v, ',' ORDER BY id) FROM public.t"
        )
        .as_deref(),
        Some("1a,2b,3a,4b,5c,6b")
    );
    // Across batches of one row each.
    let r = run(
        &db,
        json!({"batch_size_rows": 1}),
        &lines(&[s, rec(7, "d"), rec(1, "d"), rec(7, "e")]),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        text(
            &db,
            "SELECT string_agg(id || v, ',' ORDER BY id) FROM public.t"
        )
        .as_deref(),
        Some("1d,2b,3a,4b,5c,6b,7e")
    );
}

/// Binary COPY (the default for common types) lands exactly what text COPY
/// lands, value for value, including the edges of each type.
#[test]
fn binary_copy_lands_exactly_what_text_copy_lands() {
    let x = |t: &str, v: Value| {
        let mut v = v;
        v["x-sql-datatype"] = json!(t);
        v
    };
    let props = json!({
        "id": x("bigint", json!({"type": "integer"})),
        "i2": x("smallint", json!({"type": ["null", "integer"]})),
        "i4": x("integer", json!({"type": ["null", "integer"]})),
        "n": x("numeric", json!({"type": ["null", "number", "string"]})),
        "n4": x("numeric(18,4)", json!({"type": ["null", "number", "string"]})),
        "f4": x("real", json!({"type": ["null", "number", "string"]})),
        "f8": x("double precision", json!({"type": ["null", "number", "string"]})),
        "b": x("boolean", json!({"type": ["null", "boolean"]})),
        "t": x("text", json!({"type": ["null", "string"]})),
        "vc": x("character varying(20)", json!({"type": ["null", "string"]})),
        "tz": x("timestamp with time zone", json!({"type": ["null", "string"], "format": "date-time"})),
        "ts": x("timestamp without time zone", json!({"type": ["null", "string"], "format": "date-time"})),
        "d": x("date", json!({"type": ["null", "string"], "format": "date"})),
        "u": x("uuid", json!({"type": ["null", "string"]})),
        "j": x("jsonb", json!({})),
        "js": x("json", json!({})),
        "by": x("bytea", json!({"type": ["null", "string"], "contentEncoding": "base16"})),
        "ta": x("text[]", json!({"type": ["null", "array"]})),
        "ia": x("integer[]", json!({"type": ["null", "array"]})),
        "na": x("numeric[]", json!({"type": ["null", "array"]})),
    });
    // numeric Infinity exists from PostgreSQL 14 on: older servers get null in row 4's n, and the
    // target's refusal of "Infinity" there is asserted at the end.
    let numeric_infinity = pg_testkit::cluster().server_version_num() >= 140_000;
    let n_4 = if numeric_infinity {
        r#""Infinity""#
    } else {
        "null"
    };
    let row4 = |n: &str| {
        format!(
            r#"{{"id":4,"n":{n},"n4":-0.00005,"f8":1.7976931348623157e308,"tz":"2019-12-18T13:19:44+00:00+00:00","ts":"2024-01-02 03:04:05","d":"10000-12-31","j":[1,"two"],"f4":1e-45}}"#
        )
    };
    let rows = [
        r#"{"id":1,"i2":-32768,"i4":2147483647,"n":0,"n4":-885536.1314,"f4":3.4028235e38,"f8":-0.0,"b":true,"t":"tab\there \"q\" back\\slash ü 漢","vc":"x","tz":"2024-01-02T03:04:05.123456+05:30","ts":"2024-01-02T03:04:05.5+05:30","d":"2024-02-29","u":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11","j":{"a":[1,2.50,null],"b":"x\ny"},"js":{"z":1,  "a":2},"by":"00ff10","ta":["a,b",null,"NULL",""],"ia":[[1,2],[3,null]],"na":[1.50,"NaN",-1e-3]}"#,
        r#"{"id":2,"n":123456789012345678901234567890.000000000000000000001,"n4":"NaN","f4":"-Infinity","f8":5e-324,"tz":"infinity","ts":"-infinity","d":"infinity","j":"just a string","js":null,"by":"","ta":[],"ia":[],"t":12.50}"#,
        r#"{"id":3,"n":1e-7,"n4":1.5e3,"f4":0.1,"f8":0.1,"tz":"0044-03-15T12:00:00+00:00 BC","ts":"10000-01-01T00:00:00Z","d":"0044-03-15 BC","j":1.000,"t":{"k":"v"},"u":"a0eebc999c0b4ef8bb6d6bb9bd380a11"}"#,
        &row4(n_4),
        r#"{"id":5,"tz":"2024-01-02T03:04:05.1234567Z","ts":"2024-01-02T03:04:05.000001-08:00","n":-0.0,"n4":12.34567}"#,
    ];
    let input = |rows: &[&str]| {
        let mut input = vec![schema("public-bin", props.clone(), &["id"])];
        input.extend(
            rows.iter()
                .map(|r| format!(r#"{{"type":"RECORD","stream":"public-bin","record":{r}}}"#)),
        );
        lines(&input)
    };
    let data = input(&rows);
    let dump = |db: &pg_testkit::TestDb| -> Vec<String> {
        db.client()
            .query("SELECT (b.*)::text FROM (SELECT id,i2,i4,n,n4,f4,f8,b,t,vc,tz,ts,d,u,j,js,by,ta,ia,na FROM public.bin ORDER BY id) b", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let bin_db = pg_testkit::cluster().create_database("binary");
    let r = run(&bin_db, json!({"add_record_metadata": false}), &data);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let text_db = pg_testkit::cluster().create_database("text");
    let cfg = config(&text_db, json!({"add_record_metadata": false}));
    let text_run = pg_testkit::process::run(
        target(cfg.path()).env("TARGET_POSTGRES_RS_TEXT_COPY", "1"),
        &data,
    );
    assert!(text_run.ok && text_run.stdin_ok, "{}", text_run.stderr);
    let (b, t) = (dump(&bin_db), dump(&text_db));
    assert_eq!(b.len(), 5);
    assert_eq!(t.len(), b.len(), "text COPY landed {t:?}");
    for (b, t) in b.iter().zip(&t) {
        assert_eq!(b, t);
    }
    // Rows 4 and 5 hold values only the text parser takes (a doubled offset,
    // 7 fraction digits): the stream switched to text COPY there, losing nothing.
    // Rows 1-3 went in binary; the switch happened at row 4 (input line 5).
    assert!(
        r.stderr
            .contains("continuing in text COPY stream=public-bin line=5"),
        "{}",
        r.stderr
    );
    if !numeric_infinity {
        let mut rows = rows;
        let with_infinity = row4(r#""Infinity""#);
        rows[3] = &with_infinity;
        let data = input(&rows);
        let r = run(&bin_db, json!({"add_record_metadata": false}), &data);
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        // Binary COPY switched to text at this very line (see above): both say the same.
        let refused = "target-postgres-rs: error: input line 5 (stream `public-bin`): column `n`: cannot load value: invalid input syntax for type numeric: \"Infinity\"";
        assert_eq!(r.last_error(), refused);
        let text_run = pg_testkit::process::run(
            target(cfg.path()).env("TARGET_POSTGRES_RS_TEXT_COPY", "1"),
            &data,
        );
        assert_eq!(text_run.code, Some(1), "{}", text_run.stderr);
        assert_eq!(text_run.last_error(), refused);
    }
}

#[test]
fn schema_mapping_input_file_and_environment_settings() {
    let db = pg_testkit::cluster().create_database("mapping");
    let data = lines(&[
        schema("src-t", json!({"id": {"type": "integer"}}), &["id"]),
        record("src-t", json!({"id": 1})),
        schema("other-t", json!({"id": {"type": "integer"}}), &["id"]),
        record("other-t", json!({"id": 2})),
        json!({"type": "STATE", "value": {"done": true}}).to_string(),
    ]);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&data).unwrap();
    // Connection from one config file, the mapping from a second one, the
    // default schema from the environment.
    let conn = config(&db, json!({}));
    let mut mapping = tempfile::NamedTempFile::new().unwrap();
    mapping
        .write_all(
            json!({"schema_mapping": {"src": "dst"}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    // Nothing on stdin: the records come from --input.
    let r = pg_testkit::process::run(
        target(conn.path())
            .arg("--config")
            .arg(mapping.path())
            .arg("--input")
            .arg(file.path())
            .env("TARGET_POSTGRES_RS_DEFAULT_TARGET_SCHEMA", "landing"),
        b"",
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, "{\"done\":true}\n");
    assert_eq!(count(&db, "dst", "t"), Some(1));
    assert_eq!(count(&db, "landing", "t"), Some(1));
    assert_eq!(count(&db, "src", "t"), None);
}
