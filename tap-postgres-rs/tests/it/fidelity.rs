//! Shapes and values real databases hold that a plain table of common types
//! does not: inheritance hierarchies, tables without columns, and the
//! special values a plain JSON schema cannot hold (each SCHEMA honest about
//! what follows it).

use crate::common::Setup;
use pg_testkit::catalog::select_only;
use serde_json::{json, Value};

/// An inheritance parent is its own rows (`FROM ONLY`); each child is a
/// stream of its own; a partitioned parent still reads its partitions.
#[test]
fn inheritance_parents_read_only_their_own_rows() {
    let db = pg_testkit::cluster().create_database("tap_inherit");
    db.client()
        .batch_execute(
            "CREATE TABLE parent (id integer PRIMARY KEY, v text);
             CREATE TABLE child (extra integer) INHERITS (parent);
             INSERT INTO parent VALUES (1, 'p1'), (2, 'p2');
             INSERT INTO child VALUES (10, 'c10', 7), (11, 'c11', 8), (12, 'c12', 9);
             CREATE TABLE part (id integer, v text) PARTITION BY RANGE (id);
             CREATE TABLE part_a PARTITION OF part FOR VALUES FROM (0) TO (100);
             INSERT INTO part VALUES (1, 'a'), (50, 'b');
             ANALYZE;",
        )
        .unwrap();
    let setup = Setup::new(&db.config());
    let catalog = setup.discover();
    let ids = |out: &crate::common::Output, stream: &str| -> Vec<i64> {
        out.records(stream)
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };
    let streams = ["public-parent", "public-child", "public-part"];
    let out = setup.sync_ok(&select_only(&catalog, &streams, "FULL_TABLE", None), None);
    assert_eq!(ids(&out, "public-parent"), [1, 2]);
    assert_eq!(ids(&out, "public-child"), [10, 11, 12]);
    assert_eq!(ids(&out, "public-part"), [1, 50]);

    let out = setup.sync_ok(
        &select_only(&catalog, &["public-parent"], "INCREMENTAL", Some("id")),
        None,
    );
    assert_eq!(ids(&out, "public-parent"), [1, 2]);

    // The row-count estimate is the parent's own rows too.
    let row_count = |stream: &str| -> Value {
        catalog["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["tap_stream_id"] == stream)
            .unwrap()["metadata"][0]["metadata"]["row-count"]
            .clone()
    };
    assert_eq!(row_count("public-parent"), json!(2));
    assert_eq!(row_count("public-child"), json!(3));
}

/// A table whose every column was dropped still has rows: it syncs as empty
/// records under an empty SCHEMA, and the streams after it sync too.
#[test]
fn a_table_without_columns_syncs_and_never_stops_the_run() {
    let db = pg_testkit::cluster().create_database("tap_nocols");
    db.client()
        .batch_execute(
            "CREATE TABLE a_empty (x integer);
             INSERT INTO a_empty SELECT generate_series(1, 3);
             ALTER TABLE a_empty DROP COLUMN x;
             CREATE TABLE b_after (id integer PRIMARY KEY);
             INSERT INTO b_after VALUES (1);",
        )
        .unwrap();
    let setup = Setup::new(&db.config());
    let catalog = select_only(
        &setup.discover(),
        &["public-a_empty", "public-b_after"],
        "FULL_TABLE",
        None,
    );
    let out = setup.sync_ok(&catalog, None);
    let schema = out
        .of_type("SCHEMA")
        .into_iter()
        .find(|m| m["stream"] == "public-a_empty")
        .unwrap()["schema"]
        .clone();
    // No columns, and no key: three rows told apart only by their ctid.
    assert_eq!(
        schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["_sdc_source_ctid"]
    );
    assert_eq!(
        out.records("public-a_empty"),
        [
            &json!({"_sdc_source_ctid": "(0,1)"}),
            &json!({"_sdc_source_ctid": "(0,2)"}),
            &json!({"_sdc_source_ctid": "(0,3)"})
        ]
    );
    assert_eq!(out.records("public-b_after"), [&json!({"id": 1})]);
}

/// Values the plain schema cannot hold, in the order they are read.
const SPECIALS: &str = "
    CREATE TABLE s (id integer PRIMARY KEY, n numeric(10,2), f double precision,
                    d date, ts timestamp, tstz timestamptz, tz timetz,
                    a integer[], na numeric[], t time);
    INSERT INTO s VALUES
      (1, 1.5, 0.25, '2024-02-29', '2024-01-02 03:04:05', '2024-01-02 03:04:05+00',
          '13:14:15+05:30', '{1,2}', '{1.5}', '24:00:00'),
      (2, 'NaN', 0.5, 'infinity', '2024-01-01 00:00:00', '2024-01-01 00:00:00+00',
          '24:00:00-15:59', '[0:1]={7,8}', '{2.5}', '00:00:00'),
      (3, 2.5, '-Infinity', '0044-03-15 BC', '10000-01-01 00:00:00',
          '0044-03-15 00:00:00+00 BC', '00:00:00+00', '{3}', '{NaN,1}', '12:00:00'),
      (4, 'NaN', 'NaN', '5874897-12-31', '-infinity', 'infinity',
          '13:14:15+05:30:15', NULL, '[0:1]={1.1,2.2}', NULL);";

fn property_types(schema: &Value) -> Vec<(String, Value)> {
    schema["properties"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("x-sql-datatype");
            (k.clone(), v)
        })
        .collect()
}

/// The first SCHEMA declares plain types (`number`, `format: date`...); the
/// first special value in a column brings a new SCHEMA widening that column
/// only, before its record; every record validates (Draft 7, formats
/// checked) against the SCHEMA in force; `x-sql-datatype` stays.
#[test]
fn special_values_widen_the_schema_before_their_record() {
    let db = pg_testkit::cluster().create_database("tap_special");
    db.client().batch_execute(SPECIALS).unwrap();
    let setup = Setup::new(&db.config());
    let catalog = select_only(&setup.discover(), &["public-s"], "FULL_TABLE", None);
    // sync_ok validates every record against the SCHEMA in force.
    let out = setup.sync_ok(&catalog, None);
    let sequence: Vec<Value> = out
        .messages
        .iter()
        .filter(|m| m["type"] == "SCHEMA" || m["type"] == "RECORD")
        .map(|m| match m["type"].as_str().unwrap() {
            "RECORD" => m["record"]["id"].clone(),
            _ => json!("SCHEMA"),
        })
        .collect();
    assert_eq!(
        sequence,
        [
            json!("SCHEMA"),
            json!(1),
            json!("SCHEMA"),
            json!(2),
            json!("SCHEMA"),
            json!(3),
            json!(4)
        ]
    );
    let schemas = out.of_type("SCHEMA");
    let plain = property_types(&schemas[0]["schema"]);
    assert_eq!(
        plain,
        [
            (
                "id".into(),
                json!({"type": ["integer"], "minimum": -2147483648i64, "maximum": 2147483647})
            ),
            ("n".into(), json!({"type": ["null", "number"]})),
            ("f".into(), json!({"type": ["null", "number"]})),
            (
                "d".into(),
                json!({"type": ["null", "string"], "format": "date"})
            ),
            (
                "ts".into(),
                json!({"type": ["null", "string"], "format": "date-time"})
            ),
            (
                "tstz".into(),
                json!({"type": ["null", "string"], "format": "date-time"})
            ),
            (
                "tz".into(),
                json!({"type": ["null", "string"], "format": "time"})
            ),
            (
                "a".into(),
                json!({"type": ["null", "array"], "items": {"type": ["null", "integer", "array"], "minimum": -2147483648i64, "maximum": 2147483647}})
            ),
            (
                "na".into(),
                json!({"type": ["null", "array"], "items": {"type": ["null", "number", "array"]}})
            ),
            ("t".into(), json!({"type": ["null", "string"]})),
        ]
    );
    let widened = |i: usize| -> Vec<String> {
        let before = property_types(&schemas[i - 1]["schema"]);
        property_types(&schemas[i]["schema"])
            .into_iter()
            .zip(before)
            .filter(|(now, then)| now != then)
            .map(|(now, _)| now.0)
            .collect()
    };
    // Row 2 widens the columns it holds a special value in, row 3 the ones
    // first special there (an array by an element); row 4 needs nothing new.
    assert_eq!(widened(1), ["n", "d", "tz", "a"]);
    assert_eq!(widened(2), ["f", "ts", "tstz", "na"]);
    let last = property_types(&schemas[2]["schema"]);
    assert_eq!(
        last[1],
        ("n".into(), json!({"type": ["null", "number", "string"]}))
    );
    assert_eq!(last[3], ("d".into(), json!({"type": ["null", "string"]})));
    assert_eq!(
        last[7],
        (
            "a".into(),
            json!({"type": ["null", "array", "string"], "items": {"type": ["null", "integer", "array"], "minimum": -2147483648i64, "maximum": 2147483647}})
        )
    );
    assert_eq!(
        last[8],
        (
            "na".into(),
            json!({"type": ["null", "array", "string"], "items": {"type": ["null", "number", "string", "array"]}})
        )
    );
    assert_eq!(
        schemas[2]["schema"]["properties"]["d"]["x-sql-datatype"],
        "date"
    );
    // The values: Postgres's text form where JSON has no place for it.
    let r = out.records("public-s");
    assert_eq!(r[1]["a"], "[0:1]={7,8}");
    assert_eq!(r[2]["na"], json!(["NaN", 1]));
    assert_eq!(r[3]["na"], "[0:1]={1.1,2.2}");
    assert_eq!(r[3]["tz"], "13:14:15+05:30:15");
    assert_eq!(r[2]["tstz"], "0044-03-15T00:00:00+00:00 BC");
}

/// `special_values: string_columns` declares every column that can hold a
/// special value as also a string from the first SCHEMA: one SCHEMA, no change.
#[test]
fn string_columns_declares_widened_types_up_front() {
    let db = pg_testkit::cluster().create_database("tap_special_str");
    db.client().batch_execute(SPECIALS).unwrap();
    let mut config = db.config();
    config["special_values"] = json!("string_columns");
    let setup = Setup::new(&config);
    let catalog = select_only(&setup.discover(), &["public-s"], "FULL_TABLE", None);
    let out = setup.sync_ok(&catalog, None);
    let schemas = out.of_type("SCHEMA");
    assert_eq!(schemas.len(), 1);
    let types = property_types(&schemas[0]["schema"]);
    assert_eq!(types[0].1["type"], json!(["integer"]));
    assert_eq!(types[1].1, json!({"type": ["null", "number", "string"]}));
    assert_eq!(types[3].1, json!({"type": ["null", "string"]}));
    assert_eq!(types[9].1, json!({"type": ["null", "string"]}));
    assert_eq!(out.records("public-s").len(), 4);
}
