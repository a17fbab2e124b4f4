//! Every file in testdata/vectors, fed to the binary against a fresh database,
//! with the outcomes testdata/vectors/README.md and reference-results/ describe
//! (and the right thing where the reference target is wrong).

use crate::common::*;
use pg_testkit::rows::{count, tables, text};
use serde_json::{json, Value};

fn cfg() -> Value {
    json!({"default_target_schema": "vectors"})
}

/// (file, expected tables with row counts) for files that must load.
const LOADS: &[(&str, &[(&str, i64)])] = &[
    ("singer-sdk/array_data.singer", &[("test_array_data", 4)]),
    ("singer-sdk/camelcase.singer", &[("TestCamelcase", 2)]),
    (
        "singer-sdk/camelcase_complex_schema.singer",
        &[("ForecastingTypeToCategory", 0)],
    ),
    (
        "singer-sdk/duplicate_records.singer",
        &[("test_duplicate_records", 2)],
    ),
    (
        "singer-sdk/multiple_state_messages.singer",
        &[
            ("test_multiple_state_messages_a", 6),
            ("test_multiple_state_messages_b", 6),
        ],
    ),
    ("singer-sdk/no_primary_keys.singer", &[("test_no_pk", 3)]),
    (
        "singer-sdk/no_primary_keys_append.singer",
        &[("test_no_pk", 5)],
    ),
    (
        "singer-sdk/optional_attributes.singer",
        &[("test_optional_attributes", 4)],
    ),
    ("singer-sdk/pk_updates.singer", &[("example_stream", 2)]),
    (
        "singer-sdk/record_missing_fields.singer",
        &[("record_missing_fields", 2)],
    ),
    (
        "singer-sdk/schema_no_properties.singer",
        &[
            ("test_object_schema_no_properties", 2),
            ("test_object_schema_with_properties", 2),
        ],
    ),
    (
        "singer-sdk/schema_updates.singer",
        &[("test_schema_updates", 6)],
    ),
    (
        "singer-sdk/special_chars_in_attributes.singer",
        &[("test:SpecialChars!in?attributes", 1)],
    ),
    (
        "singer-sdk/user_location_data.singer",
        &[
            ("test_locations", 3),
            ("test_user_in_location", 3),
            ("test_users", 5),
        ],
    ),
    (
        "singer-sdk/user_location_upsert_data.singer",
        &[
            ("test_locations", 4),
            ("test_user_in_location", 4),
            ("test_users", 6),
        ],
    ),
    (
        "singer-sdk/extra/countries_activate_version.tap.jsonl",
        &[("continents", 7), ("countries", 250)],
    ),
    ("singer-sdk/extra/fake_people.tap.jsonl", &[("people", 100)]),
    ("singer-sdk/extra/messages.jsonl", &[("users", 2)]),
    (
        "singer-sdk/extra/parent_child_activate_version.jsonl",
        &[("versioned", 2)],
    ),
    (
        "singer-sdk/extra/parent_child_incremental.jsonl",
        &[("child_incr", 2), ("parent_incr", 2)],
    ),
    (
        "pipelinewise-target-postgres/logical-streams.json",
        &[("logical1_table2", 20)],
    ),
    (
        "pipelinewise-target-postgres/messages-pg-logical-streams-no-records.json",
        &[
            ("logical1_edgydata", 0),
            ("logical1_table1", 0),
            ("logical1_table2", 0),
            ("logical2_table1", 0),
        ],
    ),
    // The reference target rejects `[]` in an object column; the JSON value lands as jsonb.
    (
        "pipelinewise-target-postgres/messages-pg-logical-streams.json",
        &[
            ("logical1_edgydata", 19),
            ("logical1_table1", 4),
            ("logical1_table2", 20),
            ("logical2_table1", 3),
        ],
    ),
    (
        "pipelinewise-target-postgres/messages-with-long-texts.json",
        &[("test_table_long_texts", 5)],
    ),
    // The reference target crashes on ACTIVATE_VERSION before SCHEMA.
    (
        "pipelinewise-target-postgres/messages-with-multiple-streams.json",
        &[
            ("test_table_four", 3),
            ("test_table_one", 1),
            ("test_table_three", 3),
            ("test_table_two", 2),
        ],
    ),
    (
        "pipelinewise-target-postgres/messages-with-multiple-streams-modified-column.json",
        &[
            ("test_table_one", 1),
            ("test_table_three", 2),
            ("test_table_two", 2),
        ],
    ),
    // The reference target rejects `[1,2,3]` in an object column.
    (
        "pipelinewise-target-postgres/messages-with-nested-schema.json",
        &[("test_table_nested_schema", 1)],
    ),
    (
        "pipelinewise-target-postgres/messages-with-non-db-friendly-columns.json",
        &[("test_table_non_db_friendly_columns", 5)],
    ),
    // The reference target can't parse `+00:00+00:00`.
    (
        "pipelinewise-target-postgres/messages-with-reserved-name-as-table-name.json",
        &[("order", 4)],
    ),
    (
        "pipelinewise-target-postgres/messages-with-space-in-table-name.json",
        &[("table with space and UPPERCase", 4)],
    ),
    // The reference target enforces maxLength; strings land exactly.
    (
        "pipelinewise-target-postgres/messages-with-unicode-characters.json",
        &[("test_table_unicode", 6)],
    ),
];

/// (file, exact last stderr line) for files that must fail.
const FAILS: &[(&str, &str)] = &[
    (
        "singer-sdk/encoded_string_data.singer",
        "target-postgres-rs: error: input line 12 (stream `test_strings`): field `info` contains a NUL character (\\u0000), which text and jsonb columns can't hold; set `sanitize_null_text_characters: true` to strip it, or declare the column `json` (`x-sql-datatype`), which keeps it",
    ),
    (
        "singer-sdk/invalid_schema.singer",
        "target-postgres-rs: error: input line 1 (stream `test_invalid_schema`): schema must be an object schema with `properties`",
    ),
    (
        "singer-sdk/record_before_schema.singer",
        "target-postgres-rs: error: input line 1: RECORD for stream `test_record_before_schema` arrives before its SCHEMA",
    ),
    (
        "singer-sdk/record_missing_key_property.singer",
        "target-postgres-rs: error: input line 2 (stream `test_record_missing_key_property`): record is missing key property `id`",
    ),
    (
        "singer-sdk/record_missing_required_property.singer",
        "target-postgres-rs: error: input line 2 (stream `test_record_missing_required_property`): record is missing required property `id`",
    ),
    (
        "pipelinewise-target-postgres/invalid-json.json",
        "target-postgres-rs: error: input line 3: not valid JSON: expected value at line 1 column 1",
    ),
    (
        "pipelinewise-target-postgres/invalid-message-order.json",
        "target-postgres-rs: error: input line 3: RECORD for stream `tap_mysql_test-test_table_two` arrives before its SCHEMA",
    ),
    (
        "pipelinewise-target-postgres/messages-with-invalid-records.json",
        "target-postgres-rs: error: input line 4 (stream `tap_mysql_test-test_table_invalid_record`): column `c_pk`: cannot load value: invalid input syntax for type bigint: \"Non Numeric PK\"",
    ),
];

#[test]
fn every_vector_file_is_covered() {
    let mut listed: Vec<&str> = LOADS
        .iter()
        .map(|(f, _)| *f)
        .chain(FAILS.iter().map(|(f, _)| *f))
        .collect();
    listed.sort();
    let mut on_disk = Vec::new();
    for dir in [
        "singer-sdk",
        "singer-sdk/extra",
        "pipelinewise-target-postgres",
    ] {
        for e in std::fs::read_dir(vectors().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                on_disk.push(format!(
                    "{dir}/{}",
                    p.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    on_disk.sort();
    assert_eq!(listed, on_disk);
}

#[test]
fn loading_files_land_their_rows() {
    for (file, want) in LOADS {
        let db = pg_testkit::cluster().create_database("vec");
        let r = run_file(&db, cfg(), &vectors().join(file));
        assert_eq!(r.code, Some(0), "{file}: {}", r.stderr);
        let got = tables(&db, "vectors");
        let want: Vec<(String, i64)> = want.iter().map(|(t, n)| (t.to_string(), *n)).collect();
        assert_eq!(got, want, "{file}");
        for s in r.stdout_json() {
            assert_ne!(s, json!({}), "{file}: never an empty state");
            assert!(
                s.get("type").is_none(),
                "{file}: the value, not the wrapper"
            );
        }
        assert!(
            !r.stderr.to_lowercase().contains("error"),
            "{file}: {}",
            r.stderr
        );
    }
}

#[test]
fn failing_files_fail_with_one_clear_line() {
    for (file, want) in FAILS {
        let db = pg_testkit::cluster().create_database("vecfail");
        let r = run_file(&db, cfg(), &vectors().join(file));
        assert_eq!(r.code, Some(1), "{file}: {}", r.stderr);
        assert_eq!(r.last_error(), *want, "{file}");
        assert_eq!(
            r.stderr.matches("error").count(),
            1,
            "{file}: exactly one error line: {}",
            r.stderr
        );
    }
}

#[test]
fn sdk_values_land_as_the_suite_expects() {
    let db = pg_testkit::cluster().create_database("sdkvals");
    let v = vectors().join("singer-sdk");
    let r = run_file(&db, cfg(), &v.join("duplicate_records.singer"));
    assert_eq!(r.code, Some(0));
    assert_eq!(
        text(
            &db,
            "SELECT metric::text FROM vectors.test_duplicate_records WHERE id = 1"
        )
        .as_deref(),
        Some("100")
    );
    let r = run_file(&db, cfg(), &v.join("array_data.singer"));
    assert_eq!(r.code, Some(0));
    assert_eq!(
        text(
            &db,
            "SELECT fruits::text FROM vectors.test_array_data ORDER BY id LIMIT 1"
        )
        .as_deref(),
        Some(r#"["apple", "orange", "pear"]"#)
    );
    let r = run_file(&db, cfg(), &v.join("schema_updates.singer"));
    assert_eq!(r.code, Some(0));
    assert_eq!(
        text(
            &db,
            "SELECT format('%s|%s|%s', a1, a3, a6) FROM vectors.test_schema_updates WHERE id = 1"
        )
        .as_deref(),
        Some("101||")
    );
    assert_eq!(
        text(
            &db,
            "SELECT format('%s|%s|%s', a4, a5, a6) FROM vectors.test_schema_updates WHERE id = 6"
        )
        .as_deref(),
        Some(r#"{"id": 4, "value": 444}|["banana", "orange"]|341"#)
    );
    // no_primary_keys + append, twice each (as TP does): 16 rows, never deduplicated.
    for _ in 0..2 {
        for f in ["no_primary_keys.singer", "no_primary_keys_append.singer"] {
            assert_eq!(run_file(&db, cfg(), &v.join(f)).code, Some(0));
        }
    }
    assert_eq!(count(&db, "vectors", "test_no_pk"), Some(16));
    // user_location_data then the upsert file: TP's expected totals.
    for f in [
        "user_location_data.singer",
        "user_location_upsert_data.singer",
    ] {
        assert_eq!(run_file(&db, cfg(), &v.join(f)).code, Some(0));
    }
    assert_eq!(count(&db, "vectors", "test_users"), Some(8));
    assert_eq!(count(&db, "vectors", "test_locations"), Some(5));
    assert_eq!(count(&db, "vectors", "test_user_in_location"), Some(5));
    // A missing property lands as NULL.
    let r = run_file(&db, cfg(), &v.join("optional_attributes.singer"));
    assert_eq!(r.code, Some(0));
    let nulls: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM vectors.test_optional_attributes WHERE optional IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(nulls > 0);
    // An empty state `{}` is never echoed.
    let r = run_file(&db, cfg(), &v.join("record_missing_fields.singer"));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), ""));
}

#[test]
fn nul_characters_are_stripped_when_asked() {
    let db = pg_testkit::cluster().create_database("nul");
    let r = run_file(
        &db,
        json!({"default_target_schema": "vectors", "sanitize_null_text_characters": true}),
        &vectors().join("singer-sdk/encoded_string_data.singer"),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let got = tables(&db, "vectors");
    let total: i64 = got.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 28, "{got:?}");
    // Nothing with a NUL, and the escaped literal `\\u0000` text survives as text.
    let literal: i64 = db
        .client()
        .query_one(
            r"SELECT count(*) FROM vectors.test_strings WHERE info LIKE '%\\u0000%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(literal >= 1);
}

#[test]
fn pipelinewise_values_land_exactly() {
    let db = pg_testkit::cluster().create_database("pwvals");
    let pw = vectors().join("pipelinewise-target-postgres");
    assert_eq!(
        run_file(&db, cfg(), &pw.join("messages-with-long-texts.json")).code,
        Some(0)
    );
    // Every string exactly as sent (lengths 79 to 32003 characters; then
    // Greek, Japanese, Chinese, Russian, Thai, Arabic past their maxLength).
    for (file, table) in [
        ("messages-with-long-texts.json", "test_table_long_texts"),
        (
            "messages-with-unicode-characters.json",
            "test_table_unicode",
        ),
    ] {
        assert_eq!(run_file(&db, cfg(), &pw.join(file)).code, Some(0));
        let sent: Vec<(i64, String)> = std::fs::read_to_string(pw.join(file))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|m| m["type"] == "RECORD")
            .map(|m| {
                (
                    m["record"]["c_pk"].as_i64().unwrap(),
                    m["record"]["c_varchar"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let landed: Vec<(i64, String)> = db
            .client()
            .query(
                &format!("SELECT c_pk, c_varchar FROM vectors.{table} ORDER BY 1"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert!(landed.len() >= 5);
        assert_eq!(landed, sent, "{file}");
    }

    assert_eq!(
        run_file(&db, cfg(), &pw.join("messages-with-nested-schema.json")).code,
        Some(0)
    );
    assert_eq!(
        text(&db, "SELECT jsonb_typeof(c_object_with_props)||'/'||jsonb_typeof(c_nested_object) FROM vectors.test_table_nested_schema").as_deref(),
        Some("object/object")
    );
    assert!(text(
        &db,
        "SELECT c_array::text FROM vectors.test_table_nested_schema"
    )
    .unwrap()
    .starts_with('['));

    // Soft deletes: the deleted rows stay, marked (the doubled offset repaired).
    assert_eq!(
        run_file(
            &db,
            cfg(),
            &pw.join("messages-with-reserved-name-as-table-name.json")
        )
        .code,
        Some(0)
    );
    assert_eq!(
        text(&db, r#"SELECT string_agg(new || '=' || coalesce(_sdc_deleted_at::text, '-'), ',' ORDER BY new) FROM vectors."order""#).as_deref(),
        Some("706b32=-,706b33=2019-12-18 13:19:44+00,706b34=-,706b35=2019-12-18 13:19:44+00")
    );
    // Hard deletes: gone.
    let db2 = pg_testkit::cluster().create_database("pwhard");
    let r = run_file(
        &db2,
        json!({"default_target_schema": "vectors", "hard_delete": true}),
        &pw.join("messages-with-space-in-table-name.json"),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        count(&db2, "vectors", "table with space and UPPERCase"),
        Some(2)
    );

    // Column type change and rename after the first load: nothing dropped, old values kept.
    let db3 = pg_testkit::cluster().create_database("pwmod");
    assert_eq!(
        run_file(&db3, cfg(), &pw.join("messages-with-multiple-streams.json")).code,
        Some(0)
    );
    let before = text(
        &db3,
        "SELECT c_date::text FROM vectors.test_table_two WHERE c_pk = 2",
    )
    .unwrap();
    let r = run_file(
        &db3,
        cfg(),
        &pw.join("messages-with-multiple-streams-modified-column.json"),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        text(&db3, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'vectors.test_table_two'::regclass AND attname = 'c_date'").as_deref(),
        Some("text")
    );
    let after = text(
        &db3,
        "SELECT c_date FROM vectors.test_table_two WHERE c_pk = 2",
    )
    .unwrap();
    assert!(after.starts_with("2019-02-1"), "{before} -> {after}");
    let cols: i64 = db3
        .client()
        .query_one("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'vectors' AND table_name = 'test_table_three' AND column_name IN ('c_time', 'c_time_renamed')", &[])
        .unwrap()
        .get(0);
    assert_eq!(cols, 2);
}

#[test]
fn logical_streams_emit_states_only_at_flushes() {
    let db = pg_testkit::cluster().create_database("pwlog");
    let file = vectors().join("pipelinewise-target-postgres/logical-streams.json");
    let r = run_file(
        &db,
        json!({"default_target_schema": "vectors", "batch_size_rows": 20}),
        &file,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let states = r.stdout_json();
    // Flushes after 20 and 40 rows, and at the end (for the states after the last row).
    assert_eq!(states.len(), 3, "{states:?}");
    let input: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|m| m["type"] == "STATE")
        .map(|m| m["value"].clone())
        .collect();
    assert_eq!(states.last(), input.last());
    // Emitted states are input states, in input order.
    let positions: Vec<usize> = states
        .iter()
        .map(|s| input.iter().position(|i| i == s).expect("an input state"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
}
