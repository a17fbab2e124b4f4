//! The target settings users bring from MeltanoLabs and pipelinewise, fed
//! crafted Singer input: `process_activate_version_messages`,
//! `validate_records`, and flattening (`flattening_enabled`,
//! `flattening_max_depth`, pipelinewise' `data_flattening_max_level`).

use std::process::Command;

use e2e_tests::{bin, write_json};
use pg_testkit::process::{run, Run};
use pg_testkit::rows::text;
use pg_testkit::TestDb;
use serde_json::{json, Value};

/// Runs the target on `db` with `extra` settings and `messages` as input.
fn target(db: &TestDb, extra: Value, messages: &[Value]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut config = db.config();
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let config = write_json(dir.path(), "target.json", &config);
    let mut input = String::new();
    for m in messages {
        input.push_str(&m.to_string());
        input.push('\n');
    }
    let mut cmd = Command::new(bin("target-postgres-rs"));
    cmd.env_remove("RUST_LOG").arg("--config").arg(&config);
    run(&mut cmd, input.as_bytes())
}

fn schema(stream: &str, properties: Value, keys: &[&str]) -> Value {
    json!({"type": "SCHEMA", "stream": stream, "key_properties": keys,
           "schema": {"type": "object", "properties": properties}})
}

fn record(stream: &str, record: Value) -> Value {
    json!({"type": "RECORD", "stream": stream, "record": record})
}

fn versioned(stream: &str, record: Value, version: i64) -> Value {
    json!({"type": "RECORD", "stream": stream, "record": record, "version": version})
}

fn activate(stream: &str, version: i64) -> Value {
    json!({"type": "ACTIVATE_VERSION", "stream": stream, "version": version})
}

fn state(n: i64) -> Value {
    json!({"type": "STATE", "value": {"n": n}})
}

/// `id:v:deleted` of every row, by id.
fn versions(db: &TestDb, table: &str) -> Option<String> {
    text(
        db,
        &format!(
            "SELECT string_agg(format('%s:%s:%s', id, v, _sdc_deleted_at IS NOT NULL), ',' ORDER BY id) FROM public.{table}"
        ),
    )
}

#[test]
fn activate_version_is_honoured_by_default_and_ignored_when_asked() {
    let db = pg_testkit::cluster().create_database("tset_activate");
    let props = json!({"id": {"type": "integer"}, "v": {"type": ["null", "string"]}});
    // Version 1 has ids 1, 2, 3; version 2 only id 1.
    let run_of = |stream: &str| -> [Vec<Value>; 2] {
        [
            vec![
                schema(stream, props.clone(), &["id"]),
                activate(stream, 1),
                versioned(stream, json!({"id": 1, "v": "a1"}), 1),
                versioned(stream, json!({"id": 2, "v": "b1"}), 1),
                versioned(stream, json!({"id": 3, "v": "c1"}), 1),
                activate(stream, 1),
            ],
            vec![
                schema(stream, props.clone(), &["id"]),
                activate(stream, 2),
                versioned(stream, json!({"id": 1, "v": "a2"}), 2),
                activate(stream, 2),
            ],
        ]
    };
    for (stream, extra, soft, hard) in [
        ("honoured", json!({}), "1:a2:f,2:b1:t,3:c1:t", "1:a2:f"),
        (
            "ignored",
            json!({"process_activate_version_messages": false}),
            "1:a2:f,2:b1:f,3:c1:f",
            "1:a2:f,2:b1:f,3:c1:f",
        ),
    ] {
        for (hard_delete, want) in [(false, soft), (true, hard)] {
            let table = format!("{stream}_{hard_delete}");
            let mut settings = extra.clone();
            settings["hard_delete"] = json!(hard_delete);
            for messages in run_of(&table) {
                let r = target(&db, settings.clone(), &messages);
                assert_eq!(r.code, Some(0), "{}", r.stderr);
            }
            assert_eq!(versions(&db, &table).as_deref(), Some(want), "{table}");
            // The versions are still recorded for a later cleanup of the user's own.
            if stream == "ignored" {
                assert_eq!(
                    text(&db, &format!("SELECT string_agg(_sdc_table_version::text, ',' ORDER BY id) FROM public.{table}")).as_deref(),
                    Some("2,1,1")
                );
            }
        }
    }
}

#[test]
fn validate_records_stops_at_the_first_mismatch_naming_stream_line_and_field() {
    let db = pg_testkit::cluster().create_database("tset_validate");
    let props = json!({
        "id": {"type": "integer"},
        "n": {"type": ["null", "integer"], "maximum": 10},
        "at": {"type": ["null", "string"], "format": "date-time"},
    });
    let input = |stream: &str, bad: Value| {
        vec![
            schema(stream, props.clone(), &["id"]),
            record(
                stream,
                json!({"id": 1, "n": 1, "at": "2024-05-06T07:08:09Z"}),
            ),
            state(1),
            record(stream, json!({"id": 2, "n": null})),
            state(2),
            record(stream, json!({"id": 3, "n": 3})),
            record(stream, bad),
            state(3),
        ]
    };
    let rows = |table: &str| {
        text(
            &db,
            &format!("SELECT string_agg(id::text, ',' ORDER BY id) FROM public.{table}"),
        )
    };
    // Off (the default): Postgres takes what its columns can hold.
    let r = target(
        &db,
        json!({"batch_size_rows": 2}),
        &input("off", json!({"id": 4, "n": 11})),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(rows("off").as_deref(), Some("1,2,3,4"));

    // On: the batch with the bad record is not committed, the one before is
    // (batch_size_rows 2: ids 1 and 2, then STATE 1 emitted).
    for (stream, bad, field) in [
        (
            "over",
            json!({"id": 4, "n": 11}),
            "at field `/n`: 11 is greater than the maximum of 10",
        ),
        (
            "when",
            json!({"id": 4, "at": "yesterday"}),
            "at field `/at`: \"yesterday\" is not a \"date-time\"",
        ),
        (
            "typed",
            json!({"id": "4"}),
            "at field `/id`: \"4\" is not of type \"integer\"",
        ),
    ] {
        let r = target(
            &db,
            json!({"batch_size_rows": 2, "validate_records": true}),
            &input(stream, bad),
        );
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        assert_eq!(
            r.last_error(),
            format!(
                "target-postgres-rs: error: input line 7 (stream `{stream}`): record does not match \
                 the stream's SCHEMA {field}; fix the tap's SCHEMA or its records, or turn \
                 `validate_records` off"
            )
        );
        assert_eq!(rows(stream).as_deref(), Some("1,2"), "{stream}");
        assert_eq!(r.stdout, "{\"n\":1}\n", "{stream}");
    }

    // A missing required property is the record's own fault.
    let required = json!({"type": "SCHEMA", "stream": "req", "key_properties": ["id"],
        "schema": {"type": "object", "required": ["id", "n"], "properties": props}});
    let r = target(
        &db,
        json!({"validate_records": true}),
        &[required, record("req", json!({"id": 1}))],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(
        r.last_error(),
        "target-postgres-rs: error: input line 2 (stream `req`): record does not match the \
         stream's SCHEMA at the record's top level: \"n\" is a required property; fix the tap's \
         SCHEMA or its records, or turn `validate_records` off"
    );
    assert_eq!(rows("req"), None);
}

/// `name type` of a table's columns (the `_sdc_*` ones left out), in order.
fn columns(db: &TestDb, table: &str) -> Option<String> {
    text(
        db,
        &format!(
            "SELECT string_agg(format('%s %s', column_name, data_type), ', ' ORDER BY ordinal_position) \
             FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '{table}' \
             AND column_name NOT LIKE '\\_sdc\\_%'"
        ),
    )
}

#[test]
fn flattening_spreads_nested_objects_into_columns_through_schema_changes_and_upserts() {
    let db = pg_testkit::cluster().create_database("tset_flatten");
    let address = |extra: Value| {
        let mut props = json!({"city": {"type": ["null", "string"]},
                               "lines": {"type": ["null", "array"], "items": {"type": "string"}}});
        props
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({
            "id": {"type": "integer"},
            "address": {"type": ["null", "object"], "properties": props},
            "meta": {"type": "object", "properties": {
                "source": {"type": "object", "properties": {"system": {"type": "string"}}}}},
        })
    };
    for (table, settings) in [
        (
            "sdk",
            json!({"flattening_enabled": true, "flattening_max_depth": 1}),
        ),
        ("pipelinewise", json!({"data_flattening_max_level": 1})),
    ] {
        let first = [
            schema(table, address(json!({})), &["id"]),
            record(
                table,
                json!({"id": 1, "address": {"city": "Oslo", "lines": ["Karl Johans gate 1"]},
                       "meta": {"source": {"system": "crm"}}}),
            ),
            record(table, json!({"id": 2, "address": null, "meta": {}})),
            state(1),
        ];
        let r = target(&db, settings.clone(), &first);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(r.stdout, "{\"n\":1}\n");
        // One level: `address` and `meta` are spread; `meta.source` is below
        // the depth, and arrays stay whole: jsonb.
        assert_eq!(
            columns(&db, table).as_deref(),
            Some("id bigint, address__city text, address__lines jsonb, meta__source jsonb"),
            "{table}"
        );
        // A second SCHEMA adds a nested property: a new column; a record for
        // id 1 again replaces its row (the key is unchanged by flattening).
        let second = [
            schema(
                table,
                address(json!({"zip": {"type": ["null", "string"]}})),
                &["id"],
            ),
            record(
                table,
                json!({"id": 1, "address": {"city": "Bergen", "zip": "5003"}, "meta": {"source": {"system": "erp"}}}),
            ),
            record(
                table,
                json!({"id": 3, "address": {"zip": "0150", "lines": []}, "meta": {"source": null}}),
            ),
            state(2),
        ];
        let r = target(&db, settings, &second);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(
            columns(&db, table).as_deref(),
            Some("id bigint, address__city text, address__lines jsonb, meta__source jsonb, address__zip text"),
            "{table}"
        );
        assert_eq!(
            text(
                &db,
                &format!(
                    "SELECT string_agg(format('%s|%s|%s|%s|%s', id, address__city, address__zip, address__lines, meta__source), ' ; ' ORDER BY id) FROM public.{table}"
                )
            )
            .as_deref(),
            Some(r#"1|Bergen|5003||{"system": "erp"} ; 2|||| ; 3||0150|[]|"#),
            "{table}"
        );
    }

    // Off (the default): the nested objects land whole, one jsonb column each.
    let r = target(
        &db,
        json!({}),
        &[
            schema("whole", address(json!({})), &["id"]),
            record("whole", json!({"id": 1, "address": {"city": "Oslo"}})),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        columns(&db, "whole").as_deref(),
        Some("id bigint, address jsonb, meta jsonb")
    );

    // With validate_records too, records are checked as sent, before flattening.
    let both =
        json!({"flattening_enabled": true, "flattening_max_depth": 1, "validate_records": true});
    let r = target(
        &db,
        both.clone(),
        &[
            schema("checked", address(json!({})), &["id"]),
            record(
                "checked",
                json!({"id": 1, "address": {"city": "Oslo"}, "meta": {}}),
            ),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        text(&db, "SELECT address__city FROM public.checked").as_deref(),
        Some("Oslo")
    );
    let r = target(
        &db,
        both,
        &[
            schema("checked", address(json!({})), &["id"]),
            record(
                "checked",
                json!({"id": 2, "address": {"city": 7}, "meta": {}}),
            ),
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(
        r.last_error(),
        "target-postgres-rs: error: input line 2 (stream `checked`): record does not match the \
         stream's SCHEMA at field `/address/city`: 7 is not of types \"null\", \"string\"; fix the \
         tap's SCHEMA or its records, or turn `validate_records` off"
    );

    // A record whose nested object is not one: the field, the line and the fix.
    let r = target(
        &db,
        json!({"flattening_enabled": true, "flattening_max_depth": 1}),
        &[
            schema("wrong", address(json!({})), &["id"]),
            record("wrong", json!({"id": 1, "address": "Oslo"})),
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(
        r.last_error(),
        "target-postgres-rs: error: input line 2 (stream `wrong`): field `address` is a string, \
         not the object its SCHEMA declares (flattened into `address__…` columns); fix the tap's \
         SCHEMA or its records, or turn `flattening_enabled` off"
    );
}

/// pipelinewise-target-postgres' own nested-schema vector, with its
/// `data_flattening_max_level: 10`: the columns its tests expect.
#[test]
fn pipelinewise_nested_vector_flattens_as_pipelinewise_expects() {
    let db = pg_testkit::cluster().create_database("tset_pw_nested");
    let vector = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/vectors/pipelinewise-target-postgres/messages-with-nested-schema.json"
    ))
    .unwrap();
    let messages: Vec<Value> = vector
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let r = target(
        &db,
        json!({"data_flattening_max_level": 10, "default_target_schema": "public"}),
        &messages,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let table = "test_table_nested_schema";
    assert_eq!(
        columns(&db, table).as_deref(),
        Some(
            "c_pk bigint, c_array jsonb, c_object jsonb, c_object_with_props__key_1 text, \
             c_nested_object__nested_prop_1 text, c_nested_object__nested_prop_2 text, \
             c_nested_object__nested_prop_3__multi_nested_prop_1 text, \
             c_nested_object__nested_prop_3__multi_nested_prop_2 text"
        )
    );
    assert_eq!(
        text(&db, &format!("SELECT format('%s|%s|%s|%s|%s|%s', c_pk, c_array, c_object, c_object_with_props__key_1, c_nested_object__nested_prop_1, c_nested_object__nested_prop_3__multi_nested_prop_2) FROM public.{table}")).as_deref(),
        Some(r#"1|[1, 2, 3]|{"key_1": "value_1"}|value_1|nested_value_1|multi_value_2"#)
    );
}
