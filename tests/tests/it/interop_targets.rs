//! Our tap into other Singer programs from PyPI (the interop tier, "our tap →
//! other targets"): meltanolabs-target-postgres, target-duckdb and
//! meltanolabs-target-csv land a table of common types and a table of special
//! values; every record validates against its SCHEMA under the Python
//! validator SDK targets run; meltano-map-transform sits in the middle of a
//! shell pipe and of `meltano run`. Where a peer has a limitation of its own,
//! the test asserts what the peer does and says so, so that a change on our
//! side is still caught. The README's compatibility table lists these pins;
//! the last test keeps it true.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_tests::orchestrator::{
    path_with_binaries, venv, MeltanoProject, MELTANO, PIPELINEWISE_TAP_POSTGRES, SINGER_TOOLS,
    TARGET_JSONL,
};
use e2e_tests::{compare_table, discover, select, tap_sync, write_json};
use pg_testkit::{cluster, TestDb};
use serde_json::{json, Value};

use super::interop::{assert_quiet_log, messages, pg_quote, run_with_input};

const MELTANOLABS_TARGET_POSTGRES: &str = "meltanolabs-target-postgres==0.8.1";
const TARGET_DUCKDB: &str = "target-duckdb==0.8.0";
/// target-duckdb loads each batch with `COPY ... FROM 'batch.csv'` (no
/// header); duckdb 1.3 and later (2.x too) sniff the first line of such a
/// file as a header when its types differ from the rest, and a row is lost.
/// 1.2.2 is the newest duckdb that keeps every row.
const DUCKDB: &str = "duckdb==1.2.2";
const TARGET_CSV: &str = "meltanolabs-target-csv==0.5.0";
/// The validator SDK targets run (`Draft7Validator` with its format checker;
/// the `format` extra brings the date-time checker).
const JSONSCHEMA: &str = "jsonschema[format]==4.26.0";
const MELTANO_MAP_TRANSFORM: &str = "meltano-map-transform==0.12.3";

/// Common types, three rows: extremes, edge strings, all NULL. (A jsonb
/// holding a bare string, `'"s"'`, is left out: target-duckdb writes it
/// unquoted into its CSV batch and fails, "Could not convert string "s" to
/// 'JSON'": its limitation, not one a table of common values should hide
/// every other value behind.)
const COMMON: &str = r#"
    CREATE TABLE common (
        id int PRIMARY KEY,
        i2 smallint, i4 integer, i8 bigint,
        n12 numeric(12,2), n numeric,
        f4 real, f8 double precision,
        t text, vc varchar(20), b boolean,
        d date, ts timestamp, tstz timestamptz, tm time,
        u uuid, j json, jb jsonb,
        ia integer[], ta text[],
        by bytea
    );
    INSERT INTO common VALUES
        (1, -32768, -2147483648, -9223372036854775808, -9999999999.99,
         123456789012345678901234567890.123456789, 1.5, 0.1, E'tab\t"quote" \\ é', 'short', true,
         '2024-02-29', '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.5+02', '13:14:15.123456',
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.50]}', '{"b": {"c": null}}',
         '{1,NULL,3}', '{"x,y","",NULL}', '\x00ff10'),
        (2, 32767, 2147483647, 9223372036854775807, 9999999999.99, -0.000000000000000001,
         -3.25, -1e300, '', 'ü', false,
         '0001-01-01', '1999-12-31 23:59:59', '1970-01-01 00:00:00+00', '00:00:00',
         '00000000-0000-0000-0000-000000000000', '[]', '[true, "s"]',
         '{}', '{}', '\x'),
        (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

/// Special values, one kind a row after a plain first row: NaN, +∞, -∞, BC,
/// a year past 9999. Numeric ±Infinity exists from PostgreSQL 14; older
/// servers hold NULL there (the value is skipped, not the test).
fn special_sql(numeric_infinity: bool) -> String {
    let (inf, minus_inf) = if numeric_infinity {
        ("'Infinity'", "'-Infinity'")
    } else {
        ("NULL", "NULL")
    };
    format!(
        "CREATE TABLE special (
            id int PRIMARY KEY,
            n numeric, f8 double precision, f4 real,
            d date, ts timestamp, tstz timestamptz
        );
        INSERT INTO special VALUES
            (1, 1.25, 2.5, 0.5, '2024-01-01', '2024-01-01 00:00:00', '2024-01-01 00:00:00+00'),
            (2, 'NaN', 'NaN', 'NaN', '0044-03-15 BC', '0044-03-15 12:00:00 BC',
             '0044-03-15 12:00:00+00 BC'),
            (3, {inf}, 'Infinity', 'Infinity', 'infinity', 'infinity', 'infinity'),
            (4, {minus_inf}, '-Infinity', '-Infinity', '-infinity', '-infinity', '-infinity'),
            (5, 2, 3, 4, '10000-01-01', '10000-01-01 00:00:00', '10000-01-01 00:00:00+00');"
    )
}

/// The source database of one test: both tables.
struct Source {
    db: TestDb,
    /// Whether the server has numeric ±Infinity (PostgreSQL 14+).
    numeric_infinity: bool,
}

impl Source {
    fn new(hint: &str) -> Source {
        let numeric_infinity = cluster().server_version_num() >= 140_000;
        let db = cluster().create_database(hint);
        db.client()
            .batch_execute(&format!("{COMMON}{}", special_sql(numeric_infinity)))
            .unwrap();
        Source {
            db,
            numeric_infinity,
        }
    }

    /// The special table's `n` column in rows 3 and 4, as Postgres prints it.
    fn n_infinities(&self) -> [Option<&'static str>; 2] {
        if self.numeric_infinity {
            [Some("Infinity"), Some("-Infinity")]
        } else {
            [None, None]
        }
    }

    fn tap_config(&self, dir: &Path, special_values: &str) -> PathBuf {
        let mut config = self.db.config();
        config["special_values"] = json!(special_values);
        write_json(dir, &format!("tap-{special_values}.json"), &config)
    }

    fn catalog(&self, dir: &Path, tables: &[&str]) -> PathBuf {
        let mut catalog = discover(&self.tap_config(dir, "widen_schema"));
        select(&mut catalog, tables, "FULL_TABLE", None);
        write_json(dir, &format!("catalog-{}.json", tables.join("-")), &catalog)
    }

    /// The tap's stdout for `tables` (FULL_TABLE) under `special_values`.
    fn tap_output(&self, dir: &Path, tables: &[&str], special_values: &str) -> Vec<u8> {
        let out = tap_sync(
            &self.tap_config(dir, special_values),
            &self.catalog(dir, tables),
            None,
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "tap failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_quiet_log("tap-postgres-rs", &String::from_utf8_lossy(&out.stderr));
        out.stdout
    }
}

/// What a peer connector did with our output.
struct PeerRun {
    success: bool,
    stderr: String,
}

/// Runs `program --config <config>` on `input`, in `dir`.
fn run_peer(program: &Path, config: &Value, dir: &Path, input: Vec<u8>) -> PeerRun {
    let name = program.file_name().unwrap().to_string_lossy().into_owned();
    let config = write_json(dir, &format!("{name}.json"), config);
    let (status, _stdout, stderr) =
        run_with_input(program, &["--config", config.to_str().unwrap()], dir, input);
    PeerRun {
        success: status.success(),
        stderr,
    }
}

impl PeerRun {
    fn assert_success(self, who: &str) -> PeerRun {
        assert!(self.success, "{who} failed on our output:\n{}", self.stderr);
        self
    }
}

/// A table's columns as information_schema names their types (what a user
/// querying the destination sees), without the SDK's `_sdc_*` columns.
fn data_types(client: &mut postgres::Client, schema: &str, table: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 AND column_name NOT LIKE '\\_sdc\\_%' \
             ORDER BY ordinal_position",
            &[&schema, &table],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// One column's values as Postgres prints them (`::text`), by `id`.
fn column_text(
    client: &mut postgres::Client,
    schema: &str,
    table: &str,
    column: &str,
) -> Vec<Option<String>> {
    client
        .query(
            &format!(
                "SELECT {}::text FROM {}.{} ORDER BY id",
                pg_quote(column),
                pg_quote(schema),
                pg_quote(table)
            ),
            &[],
        )
        .unwrap_or_else(|e| panic!("{schema}.{table}.{column}: {e}"))
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

/// Asserts each `(column, data type, values by id)` of a destination table:
/// the columns are exactly these (beyond `_sdc_*`), typed so, holding these.
fn assert_landed(
    client: &mut postgres::Client,
    schema: &str,
    table: &str,
    expected: &[(&str, &str, Vec<Option<&str>>)],
) {
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|(c, t, _)| ((*c).to_owned(), (*t).to_owned()))
        .collect();
    assert_eq!(
        data_types(client, schema, table),
        want,
        "{schema}.{table}: column types"
    );
    for (column, _, values) in expected {
        let values: Vec<Option<String>> = values.iter().map(|v| v.map(str::to_owned)).collect();
        assert_eq!(
            column_text(client, schema, table, column),
            values,
            "{schema}.{table}.{column}"
        );
    }
}

fn some<const N: usize>(values: [&'static str; N]) -> Vec<Option<&'static str>> {
    values.into_iter().map(Some).collect()
}

fn mtp_config(dst: &TestDb) -> Value {
    json!({
        "host": dst.host, "port": dst.port, "user": pg_testkit::SUPERUSER, "password": "",
        "database": dst.name, "default_target_schema": "landed",
    })
}

/// Every common value arrives in meltanolabs-target-postgres, numeric columns
/// as numeric (our SCHEMA says plain `number`), dates and timestamps typed.
#[test]
fn meltanolabs_target_postgres_lands_common_types_natively() {
    let src = Source::new("it_mtp_common_src");
    let dst = cluster().create_database("it_mtp_common_dst");
    let dir = tempfile::tempdir().unwrap();
    let output = src.tap_output(dir.path(), &["common"], "widen_schema");
    let target = venv(
        "meltanolabs-target-postgres",
        &[MELTANOLABS_TARGET_POSTGRES],
    )
    .join("bin/target-postgres");
    run_peer(&target, &mtp_config(&dst), dir.path(), output)
        .assert_success("meltanolabs-target-postgres");
    let null = None;
    let minus_1e300 = format!("-1{}", "0".repeat(300));
    // Its own type mapping (not ours to change): real and double become
    // numeric (exact digits of the double kept), varchar text, timestamptz a
    // timestamp holding the UTC value, time (no `format`) and bytea text,
    // arrays jsonb[] (so a NULL element is JSON `null`), a JSON null jsonb
    // `null` rather than SQL NULL.
    assert_landed(
        &mut dst.client(),
        "landed",
        "common",
        &[
            ("id", "integer", some(["1", "2", "3"])),
            ("i2", "smallint", vec![Some("-32768"), Some("32767"), null]),
            (
                "i4",
                "integer",
                vec![Some("-2147483648"), Some("2147483647"), null],
            ),
            (
                "i8",
                "bigint",
                vec![
                    Some("-9223372036854775808"),
                    Some("9223372036854775807"),
                    null,
                ],
            ),
            (
                "n12",
                "numeric",
                vec![Some("-9999999999.99"), Some("9999999999.99"), null],
            ),
            (
                "n",
                "numeric",
                vec![
                    Some("123456789012345678901234567890.123456789"),
                    Some("-0.000000000000000001"),
                    null,
                ],
            ),
            ("f4", "numeric", vec![Some("1.5"), Some("-3.25"), null]),
            (
                "f8",
                "numeric",
                vec![Some("0.1"), Some(minus_1e300.as_str()), null],
            ),
            (
                "t",
                "text",
                vec![Some("tab\t\"quote\" \\ é"), Some(""), null],
            ),
            ("vc", "text", vec![Some("short"), Some("ü"), null]),
            ("b", "boolean", vec![Some("true"), Some("false"), null]),
            (
                "d",
                "date",
                vec![Some("2024-02-29"), Some("0001-01-01"), null],
            ),
            (
                "ts",
                "timestamp without time zone",
                vec![
                    Some("2024-02-29 13:14:15.123456"),
                    Some("1999-12-31 23:59:59"),
                    null,
                ],
            ),
            (
                "tstz",
                "timestamp without time zone",
                vec![
                    Some("2024-02-29 11:14:15.5"),
                    Some("1970-01-01 00:00:00"),
                    null,
                ],
            ),
            (
                "tm",
                "text",
                vec![Some("13:14:15.123456"), Some("00:00:00"), null],
            ),
            (
                "u",
                "uuid",
                vec![
                    Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                    Some("00000000-0000-0000-0000-000000000000"),
                    null,
                ],
            ),
            ("j", "jsonb", some([r#"{"a": [1, 2.50]}"#, "[]", "null"])),
            (
                "jb",
                "jsonb",
                some([r#"{"b": {"c": null}}"#, r#"[true, "s"]"#, "null"]),
            ),
            (
                "ia",
                "ARRAY",
                vec![Some(r#"{1,"null",3}"#), Some("{}"), null],
            ),
            (
                "ta",
                "ARRAY",
                vec![Some(r#"{"\"x,y\"","\"\"","null"}"#), Some("{}"), null],
            ),
            ("by", "text", vec![Some("00ff10"), Some(""), null]),
        ],
    );
}

/// The special values in meltanolabs-target-postgres. It cannot change a
/// column's type once created ("Altering columns is not supported"), so the
/// mid-stream SCHEMA that widens a column at its first special value stops
/// it: its limitation, and the reason `special_values: string_columns`
/// exists. With that setting every special value lands, as Postgres's text.
#[test]
fn meltanolabs_target_postgres_and_special_values() {
    let src = Source::new("it_mtp_special_src");
    let dir = tempfile::tempdir().unwrap();
    let target = venv(
        "meltanolabs-target-postgres",
        &[MELTANOLABS_TARGET_POSTGRES],
    )
    .join("bin/target-postgres");

    let dst = cluster().create_database("it_mtp_widen_dst");
    let output = src.tap_output(dir.path(), &["special"], "widen_schema");
    let run = run_peer(&target, &mtp_config(&dst), dir.path(), output);
    assert!(
        !run.success,
        "meltanolabs-target-postgres took a widened column"
    );
    assert!(
        run.stderr.contains(
            "Altering columns is not supported. Could not convert column \
             'landed.special.n' from 'NUMERIC' to 'TEXT'."
        ),
        "{}",
        run.stderr
    );
    // The table it created before the widening holds no row (not a partial load).
    assert_eq!(pg_testkit::rows::count(&dst, "landed", "special"), Some(0));

    let dst = cluster().create_database("it_mtp_strings_dst");
    let output = src.tap_output(dir.path(), &["special"], "string_columns");
    run_peer(&target, &mtp_config(&dst), dir.path(), output)
        .assert_success("meltanolabs-target-postgres");
    let [inf, minus_inf] = src.n_infinities();
    assert_landed(
        &mut dst.client(),
        "landed",
        "special",
        &[
            ("id", "integer", some(["1", "2", "3", "4", "5"])),
            (
                "n",
                "text",
                vec![Some("1.25"), Some("NaN"), inf, minus_inf, Some("2")],
            ),
            (
                "f8",
                "text",
                some(["2.5", "NaN", "Infinity", "-Infinity", "3"]),
            ),
            (
                "f4",
                "text",
                some(["0.5", "NaN", "Infinity", "-Infinity", "4"]),
            ),
            (
                "d",
                "text",
                some([
                    "2024-01-01",
                    "0044-03-15 BC",
                    "infinity",
                    "-infinity",
                    "10000-01-01",
                ]),
            ),
            (
                "ts",
                "text",
                some([
                    "2024-01-01T00:00:00+00:00",
                    "0044-03-15T12:00:00+00:00 BC",
                    "infinity",
                    "-infinity",
                    "10000-01-01T00:00:00+00:00",
                ]),
            ),
            (
                "tstz",
                "text",
                some([
                    "2024-01-01T00:00:00+00:00",
                    "0044-03-15T12:00:00+00:00 BC",
                    "infinity",
                    "-infinity",
                    "10000-01-01T00:00:00+00:00",
                ]),
            ),
        ],
    );
}

/// Reads back tables of a DuckDB file with the duckdb module of the
/// target's own venv: per table, `types` (column → type) and `rows` (by id,
/// each value as Python's `str`, NULL as null).
const DUCKDB_QUERY: &str = r#"
import duckdb, json, sys
c = duckdb.connect(sys.argv[1], read_only=True)
out = {}
for t in sys.argv[2:]:
    types = c.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'landed' AND table_name = ?", [t]).fetchall()
    rows = c.execute(f"SELECT * FROM landed.{t} ORDER BY id").fetchall()
    names = [d[0] for d in c.description]
    out[t] = {"types": dict(types),
              "rows": [{k: None if v is None else str(v) for k, v in zip(names, r)} for r in rows]}
print(json.dumps(out))
"#;

fn duckdb_tables(venv: &Path, file: &Path, tables: &[&str]) -> Value {
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", DUCKDB_QUERY])
        .arg(file)
        .args(tables)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reading {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // target-duckdb "versions" a column whose type changes: the old one is
    // renamed `<name>_<YYYYMMDD>_<HHMM>`. Name the version, not the minute.
    fn unversion(key: &str) -> String {
        match key.rsplit_once('_').and_then(|(rest, hhmm)| {
            let (name, day) = rest.rsplit_once('_')?;
            (hhmm.len() == 4
                && day.len() == 8
                && (hhmm.to_owned() + day).bytes().all(|b| b.is_ascii_digit()))
            .then(|| format!("{name}_<version>"))
        }) {
            Some(k) => k,
            None => key.to_owned(),
        }
    }
    fn rename(obj: &mut Value) {
        let map = std::mem::take(obj.as_object_mut().unwrap());
        *obj = Value::Object(map.into_iter().map(|(k, v)| (unversion(&k), v)).collect());
    }
    for table in v.as_object_mut().unwrap().values_mut() {
        rename(&mut table["types"]);
        for row in table["rows"].as_array_mut().unwrap() {
            rename(row);
        }
    }
    v
}

/// Our tap into target-duckdb: every row arrives, typed natively where
/// target-duckdb can (integers, booleans, doubles, timestamps, JSON).
/// Its own mapping: numbers are DOUBLE (numeric digits beyond a double are
/// lost), dates VARCHAR, `''` becomes NULL (an empty CSV field), timestamptz
/// a TIMESTAMP in UTC. At the first special value a column changes type: it
/// keeps the old column renamed and adds a VARCHAR one (doubles already take
/// NaN and ±inf); with `string_columns` the columns are VARCHAR from the start.
#[test]
fn target_duckdb_lands_every_row_typed() {
    let src = Source::new("it_duckdb_src");
    let dir = tempfile::tempdir().unwrap();
    let env = venv("target-duckdb", &[TARGET_DUCKDB, DUCKDB]);
    let target = env.join("bin/target-duckdb");
    let load = |special_values: &str| -> Value {
        // The file's stem is the catalog name in DuckDB: no dots.
        let file = dir.path().join(format!("{}.duckdb", special_values));
        let output = src.tap_output(dir.path(), &["common", "special"], special_values);
        run_peer(
            &target,
            &json!({"filepath": file, "default_target_schema": "landed"}),
            dir.path(),
            output,
        )
        .assert_success("target-duckdb");
        duckdb_tables(&env, &file, &["common", "special"])
    };
    let [n_inf, n_minus_inf] = src
        .n_infinities()
        .map(|v| v.map(|s| if s.starts_with('-') { "-inf" } else { "inf" }));

    let widened = load("widen_schema");
    let common = &widened["common"];
    assert_eq!(
        common["types"],
        json!({
            "id": "INTEGER", "i2": "SMALLINT", "i4": "INTEGER", "i8": "BIGINT",
            "n12": "DOUBLE", "n": "DOUBLE", "f4": "DOUBLE", "f8": "DOUBLE",
            "t": "VARCHAR", "vc": "VARCHAR", "b": "BOOLEAN", "d": "VARCHAR",
            "ts": "TIMESTAMP", "tstz": "TIMESTAMP", "tm": "VARCHAR", "u": "VARCHAR",
            "j": "JSON", "jb": "JSON", "ia": "JSON", "ta": "JSON", "by": "VARCHAR",
        })
    );
    let null_row = |id: &str, columns: &Value| -> Value {
        let mut row: serde_json::Map<String, Value> = columns
            .as_object()
            .unwrap()
            .keys()
            .map(|k| (k.clone(), Value::Null))
            .collect();
        row.insert("id".into(), json!(id));
        Value::Object(row)
    };
    assert_eq!(
        common["rows"],
        json!([
            {"id": "1", "i2": "-32768", "i4": "-2147483648", "i8": "-9223372036854775808",
             "n12": "-9999999999.99", "n": "1.2345678901234568e+29", "f4": "1.5", "f8": "0.1",
             "t": "tab\t\"quote\" \\ é", "vc": "short", "b": "True", "d": "2024-02-29",
             "ts": "2024-02-29 13:14:15.123456", "tstz": "2024-02-29 11:14:15.500000",
             "tm": "13:14:15.123456", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
             "j": "{\"a\": [1, 2.5]}", "jb": "{\"b\": {\"c\": null}}",
             "ia": "[1, null, 3]", "ta": "[\"x,y\", \"\", null]", "by": "00ff10"},
            {"id": "2", "i2": "32767", "i4": "2147483647", "i8": "9223372036854775807",
             "n12": "9999999999.99", "n": "-1e-18", "f4": "-3.25", "f8": "-1e+300",
             "t": null, "vc": "ü", "b": "False", "d": "0001-01-01",
             "ts": "1999-12-31 23:59:59", "tstz": "1970-01-01 00:00:00",
             "tm": "00:00:00", "u": "00000000-0000-0000-0000-000000000000",
             "j": "[]", "jb": "[true, \"s\"]", "ia": "[]", "ta": "[]", "by": null},
            null_row("3", &common["types"]),
        ])
    );
    let special = &widened["special"];
    assert_eq!(
        special["types"],
        json!({
            "id": "INTEGER", "n": "DOUBLE", "f8": "DOUBLE", "f4": "DOUBLE", "d": "VARCHAR",
            "ts_<version>": "TIMESTAMP", "tstz_<version>": "TIMESTAMP",
            "ts": "VARCHAR", "tstz": "VARCHAR",
        })
    );
    let base = [
        json!({"id": "1", "n": "1.25", "f8": "2.5", "f4": "0.5", "d": "2024-01-01"}),
        json!({"id": "2", "n": "nan", "f8": "nan", "f4": "nan", "d": "0044-03-15 BC"}),
        json!({"id": "3", "n": n_inf, "f8": "inf", "f4": "inf", "d": "infinity"}),
        json!({"id": "4", "n": n_minus_inf, "f8": "-inf", "f4": "-inf", "d": "-infinity"}),
        json!({"id": "5", "n": "2.0", "f8": "3.0", "f4": "4.0", "d": "10000-01-01"}),
    ];
    let stamps = [
        "2024-01-01T00:00:00+00:00",
        "0044-03-15T12:00:00+00:00 BC",
        "infinity",
        "-infinity",
        "10000-01-01T00:00:00+00:00",
    ];
    // Row 1 stays in the renamed TIMESTAMP columns; rows 2-5 in the VARCHAR ones.
    let widened_rows: Vec<Value> = base
        .iter()
        .zip(stamps)
        .enumerate()
        .map(|(i, (row, stamp))| {
            let mut row = row.clone();
            let (old, new) = match i {
                0 => (json!("2024-01-01 00:00:00"), Value::Null),
                _ => (Value::Null, json!(stamp)),
            };
            for k in ["ts", "tstz"] {
                row[k] = new.clone();
                row[format!("{k}_<version>").as_str()] = old.clone();
            }
            row
        })
        .collect();
    assert_eq!(special["rows"], json!(widened_rows));

    let strings = load("string_columns");
    assert_eq!(
        strings["special"]["types"],
        json!({"id": "INTEGER", "n": "DOUBLE", "f8": "DOUBLE", "f4": "DOUBLE", "d": "VARCHAR",
               "ts": "VARCHAR", "tstz": "VARCHAR"})
    );
    let string_rows: Vec<Value> = base
        .iter()
        .zip(stamps)
        .map(|(row, stamp)| {
            let mut row = row.clone();
            row["ts"] = json!(stamp);
            row["tstz"] = json!(stamp);
            row
        })
        .collect();
    assert_eq!(strings["special"]["rows"], json!(string_rows));
    // string_columns declares every timestamp column a string: VARCHAR, the
    // values as we sent them; the rest as in the first run.
    assert_eq!(strings["common"]["types"]["tstz"], "VARCHAR");
    assert_eq!(
        strings["common"]["rows"][0]["tstz"],
        "2024-02-29T11:14:15.5+00:00"
    );
    assert_eq!(strings["common"]["rows"][0]["i8"], common["rows"][0]["i8"]);
    assert_eq!(strings["common"]["rows"].as_array().unwrap().len(), 3);
}

/// A CSV file as JSON rows (column → text), read by Python's `csv` module
/// of the target's own venv.
fn csv_rows(venv: &Path, file: &Path) -> Vec<Value> {
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import csv, json, sys; print(json.dumps(list(csv.DictReader(open(sys.argv[1], newline='')))))",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reading {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.sort_by_key(|r| r["id"].as_str().unwrap().parse::<i64>().unwrap());
    rows
}

/// Our tap into meltanolabs-target-csv (an SDK file target, records
/// validated): every row of both tables arrives under both `special_values`
/// settings; BC, infinite and year-10000 dates do not stop it.
/// Its own rendering: it parses `date-time` values and writes Python's
/// `str()` of them, and writes JSON and arrays as Python reprs
/// (`Decimal('2.50')`, `None`), not JSON.
#[test]
fn meltanolabs_target_csv_lands_every_row() {
    let src = Source::new("it_csv_src");
    let dir = tempfile::tempdir().unwrap();
    let env = venv("meltanolabs-target-csv", &[TARGET_CSV]);
    let target = env.join("bin/target-csv");
    let load = |special_values: &str| -> (Vec<Value>, Vec<Value>) {
        let out_dir = dir.path().join(special_values);
        std::fs::create_dir(&out_dir).unwrap();
        let output = src.tap_output(dir.path(), &["common", "special"], special_values);
        run_peer(
            &target,
            &json!({"output_path": out_dir, "file_naming_scheme": "{stream_name}.csv",
                    "validate_records": true}),
            dir.path(),
            output,
        )
        .assert_success("meltanolabs-target-csv");
        (
            csv_rows(&env, &out_dir.join("public-common.csv")),
            csv_rows(&env, &out_dir.join("public-special.csv")),
        )
    };
    let [n_inf, n_minus_inf] = src.n_infinities().map(|v| v.unwrap_or(""));
    let special = |first: &str| {
        let row = |id, n, f8, f4, d, ts| json!({"id": id, "n": n, "f8": f8, "f4": f4, "d": d, "ts": ts, "tstz": ts});
        vec![
            row("1", "1.25", "2.5", "0.5", "2024-01-01", first),
            row(
                "2",
                "NaN",
                "NaN",
                "NaN",
                "0044-03-15 BC",
                "0044-03-15T12:00:00+00:00 BC",
            ),
            row("3", n_inf, "Infinity", "Infinity", "infinity", "infinity"),
            row(
                "4",
                n_minus_inf,
                "-Infinity",
                "-Infinity",
                "-infinity",
                "-infinity",
            ),
            row(
                "5",
                "2",
                "3",
                "4",
                "10000-01-01",
                "10000-01-01T00:00:00+00:00",
            ),
        ]
    };

    let (common, specials) = load("widen_schema");
    let empty = |id: &str| {
        let mut row = common[0].clone();
        for v in row.as_object_mut().unwrap().values_mut() {
            *v = json!("");
        }
        row["id"] = json!(id);
        row
    };
    assert_eq!(
        common,
        [
            json!({"id": "1", "i2": "-32768", "i4": "-2147483648", "i8": "-9223372036854775808",
                   "n12": "-9999999999.99", "n": "123456789012345678901234567890.123456789",
                   "f4": "1.5", "f8": "0.1", "t": "tab\t\"quote\" \\ é", "vc": "short",
                   "b": "True", "d": "2024-02-29", "ts": "2024-02-29 13:14:15.123456+00:00",
                   "tstz": "2024-02-29 11:14:15.500000+00:00", "tm": "13:14:15.123456",
                   "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                   "j": "{'a': [1, Decimal('2.50')]}", "jb": "{'b': {'c': None}}",
                   "ia": "[1, None, 3]", "ta": "['x,y', '', None]", "by": "00ff10"}),
            json!({"id": "2", "i2": "32767", "i4": "2147483647", "i8": "9223372036854775807",
                   "n12": "9999999999.99", "n": "-1E-18", "f4": "-3.25", "f8": "-1E+300",
                   "t": "", "vc": "ü", "b": "False", "d": "0001-01-01",
                   "ts": "1999-12-31 23:59:59+00:00", "tstz": "1970-01-01 00:00:00+00:00",
                   "tm": "00:00:00", "u": "00000000-0000-0000-0000-000000000000",
                   "j": "[]", "jb": "[True, 's']", "ia": "[]", "ta": "[]", "by": ""}),
            empty("3"),
        ]
    );
    // Row 1, sent before its column widened, went through the date-time parser.
    assert_eq!(specials, special("2024-01-01 00:00:00+00:00"));

    let (common, specials) = load("string_columns");
    assert_eq!(specials, special("2024-01-01T00:00:00+00:00"));
    // Timestamps are strings from the start: written as sent.
    assert_eq!(common[0]["tstz"], "2024-02-29T11:14:15.5+00:00");
    assert_eq!(common.len(), 3);
}

/// Validates a Singer stream on stdin as SDK targets validate records: each
/// RECORD against its stream's SCHEMA in force, `Draft7Validator` with its
/// format checker, numbers parsed as `Decimal`. Prints the formats the
/// checker really checks (the `format` extra must be there; `uuid` is not a
/// Draft 7 format), the records
/// seen per stream and every error.
const VALIDATE: &str = r#"
import decimal, json, sys
from jsonschema import Draft7Validator
checker = Draft7Validator.FORMAT_CHECKER
validators, records, errors = {}, {}, []
for n, line in enumerate(sys.stdin, 1):
    m = json.loads(line, parse_float=decimal.Decimal)
    if m["type"] == "SCHEMA":
        Draft7Validator.check_schema(m["schema"])
        validators[m["stream"]] = Draft7Validator(m["schema"], format_checker=checker)
    elif m["type"] == "RECORD":
        records[m["stream"]] = records.get(m["stream"], 0) + 1
        for e in validators[m["stream"]].iter_errors(m["record"]):
            errors.append(f"line {n}, {m['stream']}, {'/'.join(map(str, e.path))}: {e.message}")
print(json.dumps({"formats": sorted(checker.checkers), "records": records, "errors": errors}))
"#;

/// Every record of both tables validates against the SCHEMA in force under
/// Python's jsonschema (what SDK targets run), formats checked, for both
/// `special_values` settings. (The tap's own tests check the same with the
/// Rust `jsonschema` crate; this is the validator the peers use.)
#[test]
fn tap_output_validates_under_python_jsonschema_with_formats() {
    let src = Source::new("it_jsonschema_src");
    let dir = tempfile::tempdir().unwrap();
    let python = venv("jsonschema", &[JSONSCHEMA]).join("bin/python");
    for special_values in ["widen_schema", "string_columns"] {
        let output = src.tap_output(dir.path(), &["common", "special"], special_values);
        let (status, stdout, stderr) =
            run_with_input(&python, &["-c", VALIDATE], dir.path(), output);
        assert!(
            status.success(),
            "{special_values}: the validator failed: {stderr}"
        );
        let report: Value = serde_json::from_str(&stdout).unwrap();
        let formats: BTreeSet<&str> = report["formats"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for format in ["date", "date-time", "time"] {
            assert!(
                formats.contains(format),
                "{format} is not checked: {formats:?}"
            );
        }
        assert_eq!(
            report["records"],
            json!({"public-common": 3, "public-special": 5}),
            "{special_values}"
        );
        assert_eq!(
            report["errors"],
            json!([]),
            "{special_values}: invalid records"
        );
    }
    // The validator would notice: without the widening SCHEMAs, the special
    // values break the first one.
    let mut seen = BTreeSet::new();
    let plain_only: Vec<u8> = messages(&src.tap_output(dir.path(), &["special"], "widen_schema"))
        .into_iter()
        .filter(|m| m["type"] != "SCHEMA" || seen.insert(m["stream"].to_string()))
        .flat_map(|m| format!("{m}\n").into_bytes())
        .collect();
    let (_, stdout, _) = run_with_input(&python, &["-c", VALIDATE], dir.path(), plain_only);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let errors = report["errors"].to_string();
    for expected in [
        "public-special, d: '0044-03-15 BC' is not a 'date'",
        "public-special, ts: '10000-01-01T00:00:00+00:00' is not a 'date-time'",
        "public-special, f8: 'NaN' is not of type 'null', 'number'",
    ] {
        assert!(errors.contains(expected), "{expected} not in {errors}");
    }
}

/// The mapper's `stream_maps`: drop `vc`, add `id_x10`.
fn stream_maps() -> Value {
    json!({"public-common": {"vc": null, "id_x10": "id * 10"}})
}

/// What the mapper leaves in our target: every source column but `vc`
/// exactly (type and values: `x-sql-datatype` passes through the mapper;
/// `json` text aside),
/// plus `id_x10`, which the mapper declares a string (it types no computed
/// property), so it lands as text.
fn assert_mapped(src: &Source, dst: &TestDb, schema: &str) {
    let cmp = compare_table(
        &mut src.db.client(),
        &mut dst.client(),
        "public",
        "common",
        schema,
        "common",
    );
    assert_eq!(
        cmp.type_differences,
        ["vc: character varying(20) -> (missing)"],
        "{cmp:#?}"
    );
    // The mapper re-serializes JSON values compactly (digits kept): a `json`
    // column, which keeps its text, shows it; `jsonb` does not.
    assert_eq!(
        cmp.value_differences,
        [
            "vc: missing",
            r#"j: "{\"a\": [1, 2.50]}" vs "{\"a\":[1,2.50]}""#
        ],
        "{cmp:#?}"
    );
    assert_eq!(cmp.value_identical.len(), cmp.columns - 2, "{cmp:#?}");
    assert_eq!(cmp.destination_rows, 3);
    let mut d = dst.client();
    assert_eq!(
        data_types(&mut d, schema, "common").last().unwrap(),
        &("id_x10".to_owned(), "text".to_owned())
    );
    assert_eq!(
        column_text(&mut d, schema, "common", "id_x10"),
        [
            Some("10".to_owned()),
            Some("20".to_owned()),
            Some("30".to_owned())
        ]
    );
}

fn map_transform() -> PathBuf {
    venv("meltano-map-transform", &[MELTANO_MAP_TRANSFORM]).join("bin/meltano-map-transform")
}

/// `tap-postgres-rs | meltano-map-transform | target-postgres-rs` in a shell.
#[test]
fn map_transform_in_a_shell_pipe() {
    let src = Source::new("it_map_pipe_src");
    let dst = cluster().create_database("it_map_pipe_dst");
    let dir = tempfile::tempdir().unwrap();
    let mapper = map_transform();
    let map_config = write_json(
        dir.path(),
        "map.json",
        &json!({"stream_maps": stream_maps()}),
    );
    let target_config = write_json(dir.path(), "target.json", &dst.config());
    let out = Command::new("bash")
        .args([
            "-c",
            r#"set -o pipefail; "$1" --config "$2" --catalog "$3" | "$4" --config "$5" | "$6" --config "$7""#,
            "pipe",
        ])
        .arg(e2e_tests::bin("tap-postgres-rs"))
        .arg(src.tap_config(dir.path(), "widen_schema"))
        .arg(src.catalog(dir.path(), &["common"]))
        .arg(&mapper)
        .arg(&map_config)
        .arg(e2e_tests::bin("target-postgres-rs"))
        .arg(&target_config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the pipe failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The state the tap sent came through the mapper and our target.
    let last: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .expect("a state line"),
    )
    .unwrap();
    assert_eq!(
        last["bookmarks"]["public-common"]["last_replication_method"],
        "FULL_TABLE"
    );
    assert_mapped(&src, &dst, "public");
}

/// `meltano run tap-postgres-rs <mapping> target-postgres-rs`: the mapper as
/// a Meltano mapper plugin (a custom one, executable on PATH) between ours.
#[test]
fn map_transform_in_meltano_run() {
    let _serial = super::meltano::serial();
    let src = Source::new("it_map_meltano_src");
    let dst = cluster().create_database("it_map_meltano_dst");
    let project = MeltanoProject::new(
        json!({
            "config": src.db.config(),
            "select": ["public-common.*"],
            "metadata": {"public-common": {"replication-method": "FULL_TABLE"}},
        }),
        json!({"config": dst.config()}),
    );
    // Add the mapper to the project file (JSON is YAML).
    let file = project.dir.path().join("meltano.yml");
    let mut yml: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    yml["plugins"] = json!({"mappers": [{
        "name": "map-transform",
        "namespace": "map_transform",
        "executable": "meltano-map-transform",
        "mappings": [{"name": "drop-vc", "config": {"stream_maps": stream_maps()}}],
    }]});
    std::fs::write(&file, serde_json::to_string_pretty(&yml).unwrap()).unwrap();
    let mapper = map_transform();
    let out = project
        .command(&["run", "tap-postgres-rs", "drop-vc", "target-postgres-rs"])
        .env("PATH", path_with_binaries(&[mapper.parent().unwrap()]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meltano run with the mapper failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_mapped(&src, &dst, super::meltano::LOAD_SCHEMA);
}

/// Every `program`/`version` of the README's compatibility table is a pin
/// the tests install (a `"name==version"` literal in the test sources, so
/// rows other modules add are checked too), and every pin of this module
/// and of the orchestrator is in the table.
#[test]
fn compatibility_table_lists_the_pinned_versions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../README.md")).unwrap();
    let section = readme
        .split("\n## Compatibility\n")
        .nth(1)
        .expect("README has a ## Compatibility section");
    let rows: Vec<Vec<&str>> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    assert!(!rows.is_empty(), "the compatibility table has no rows");
    // Each `+`-separated part of the program cell names its package in its
    // first backticks; the version cell has one version per part.
    let mut listed = BTreeSet::new();
    for row in &rows {
        let names: Vec<&str> = row[0]
            .split(" + ")
            .map(|part| {
                part.split('`')
                    .nth(1)
                    .unwrap_or_else(|| panic!("no `name` in {row:?}"))
            })
            .collect();
        let versions: Vec<&str> = row[1].split(" + ").collect();
        assert_eq!(
            names.len(),
            versions.len(),
            "one version per program: {row:?}"
        );
        for (name, version) in names.iter().zip(versions) {
            listed.insert(format!("{name}=={version}"));
        }
    }
    let mut sources = std::fs::read_to_string(root.join("src/orchestrator.rs")).unwrap();
    for entry in std::fs::read_dir(root.join("tests/it")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            sources.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    for pin in &listed {
        assert!(
            sources.contains(&format!("\"{pin}\"")),
            "README's compatibility table lists {pin}, which no test pins"
        );
    }
    for pin in [
        MELTANO,
        SINGER_TOOLS,
        TARGET_JSONL,
        PIPELINEWISE_TAP_POSTGRES,
        MELTANOLABS_TARGET_POSTGRES,
        TARGET_DUCKDB,
        DUCKDB,
        TARGET_CSV,
        JSONSCHEMA,
        MELTANO_MAP_TRANSFORM,
    ] {
        assert!(
            listed.contains(pin),
            "{pin} is tested but not in README's compatibility table: {listed:?}"
        );
    }
}

/// `singer-check-tap` accepts the tap's output of both tables under both
/// `special_values` settings: one widening SCHEMA for the special table
/// (row 2 holds the first special value of every column) or none.
#[test]
fn singer_check_tap_accepts_every_type_and_special_value() {
    let src = Source::new("it_check_tap_src");
    let dir = tempfile::tempdir().unwrap();
    let check = venv("singer-tools", &[SINGER_TOOLS]).join("bin/singer-check-tap");
    for (special_values, special_schemas) in [("widen_schema", 2), ("string_columns", 1)] {
        let output = src.tap_output(dir.path(), &["common", "special"], special_values);
        let (status, stdout, stderr) = run_with_input(&check, &[], dir.path(), output);
        assert!(
            status.success() && stdout.contains("The output is valid."),
            "{special_values}: singer-check-tap rejected our output:\n{stdout}\n{stderr}"
        );
        for (stream, records, schemas) in [
            ("public-common ", 3, 1),
            ("public-special", 5, special_schemas),
        ] {
            let row = format!("| {stream} | {records:<7} | {schemas:<7} |");
            assert!(
                stdout.contains(&row),
                "{special_values}: no {row:?} in\n{stdout}"
            );
        }
    }
}
