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
