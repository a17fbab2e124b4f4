//! Other taps → our target, live: meltanolabs-tap-postgres, pipelinewise-tap-mysql
//! (against a private MariaDB) and an SDK file tap (tap-jsonl), each from PyPI
//! at a pinned version. Every value must land exactly, compared with the
//! source by SQL; a second run from the state our target printed must
//! converge (no duplicates, no re-sync of what the state covers).
//!
//! Where a peer has a limitation of its own (sends a MySQL DATE as a
//! date-time, reads JSON numbers as floats, ...), the test asserts what the
//! peer actually does and says so, so a change on our side is still caught.
//!
//! Run alone: `cargo test -p e2e-tests --test it -- interop_taps::` (the first
//! run installs each peer into a cached virtualenv).

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_tests::mariadb::{self, MariaDb};
use e2e_tests::orchestrator::venv;
use e2e_tests::{columns, pipe_from, write_json, PipeRun};
use pg_testkit::cluster;
use serde_json::{json, Value};

/// The MeltanoLabs (Singer SDK) Postgres tap.
const MELTANOLABS_TAP_POSTGRES: &str = "meltanolabs-tap-postgres==0.10.0";
/// The MySQL/MariaDB tap (meltanolabs-tap-mysql is not on PyPI).
const PIPELINEWISE_TAP_MYSQL: &str = "pipelinewise-tap-mysql==1.6.0";
/// A Singer SDK file tap.
const TAP_JSONL: &str = "tap-jsonl==0.3.1";

/// A column's value as text (`None` for NULL), row by row.
type Rows = Vec<Vec<Option<String>>>;

/// `SELECT <exprs> FROM <table> [WHERE ..]` in Postgres, every expression
/// as text; rows sorted, so both sides compare whatever their storage order.
fn pg_rows(client: &mut postgres::Client, table: &str, exprs: &[&str], filter: &str) -> Rows {
    let list: Vec<String> = exprs.iter().map(|e| format!("({e})::text")).collect();
    let sql = format!("SELECT {} FROM {table} {filter}", list.join(", "));
    let mut rows: Rows = client
        .query(&sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| (0..exprs.len()).map(|i| r.get(i)).collect())
        .collect();
    rows.sort();
    rows
}

/// Both processes exited 0 and our target logged no error or warning.
/// Runs a peer tap (`--config`, then its catalog flag and file when given,
/// then `--state` when given) into our target; both must succeed.
fn peer_into_target(
    tap: &Path,
    config: &Path,
    catalog: Option<(&str, &Path)>,
    state: Option<&Path>,
    target_config: &Path,
    who: &str,
) -> PipeRun {
    let mut cmd = Command::new(tap);
    cmd.arg("--config").arg(config);
    if let Some((flag, file)) = catalog {
        cmd.arg(flag).arg(file);
    }
    if let Some(s) = state {
        cmd.arg("--state").arg(s);
    }
    let run = pipe_from(cmd, target_config);
    assert_loaded(&run, who);
    run
}

fn assert_loaded(run: &PipeRun, who: &str) {
    assert!(
        run.tap_status.success() && run.target_status.success(),
        "{who} | target-postgres-rs failed: tap {} target {}\n--- tap stderr (tail)\n{}\n--- target stderr\n{}",
        run.tap_status,
        run.target_status,
        tail(&run.tap_stderr, 30),
        run.target_stderr
    );
    let bad: Vec<&str> = run
        .target_stderr
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("exception") || l.contains(" warn ")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "our target warned on {who}'s output: {bad:#?}"
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last state our target printed, as a file for the tap's `--state`.
fn state_file(run: &PipeRun, dir: &Path, name: &str) -> PathBuf {
    let last = run
        .last_state()
        .unwrap_or_else(|| panic!("our target printed no state: {}", run.target_stderr));
    write_json(dir, name, last)
}

/// Runs `<tap> --discover` and parses the catalog.
fn peer_discover(tap: &Path, config: &Path) -> Value {
    let out = Command::new(tap)
        .arg("--config")
        .arg(config)
        .arg("--discover")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} --discover failed: {}",
        tap.display(),
        tail(&String::from_utf8_lossy(&out.stderr), 30)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Selects every stream and column of a discovered catalog; `method` gives
/// each stream's replication method and key (by stream id).
fn select_all(catalog: &mut Value, method: impl Fn(&str) -> (&'static str, Option<&'static str>)) {
    for stream in catalog["streams"].as_array_mut().unwrap() {
        let id = stream["tap_stream_id"].as_str().unwrap().to_owned();
        let (replication, key) = method(&id);
        for m in stream["metadata"].as_array_mut().unwrap() {
            m["metadata"]["selected"] = json!(true);
            if m["breadcrumb"].as_array().is_some_and(|b| b.is_empty()) {
                m["metadata"]["replication-method"] = json!(replication);
                if let Some(k) = key {
                    m["metadata"]["replication-key"] = json!(k);
                }
            }
        }
    }
}

fn type_of(client: &mut postgres::Client, schema: &str, table: &str, column: &str) -> String {
    columns(client, schema, table)
        .into_iter()
        .find(|(n, _)| n == column)
        .map(|(_, t)| t)
        .unwrap_or_else(|| format!("(no column {column})"))
}

// --- meltanolabs-tap-postgres ------------------------------------------------

const PG_SOURCE: &str = r#"
    CREATE TABLE typed (
        id int PRIMARY KEY,
        small smallint, big bigint,
        price numeric(12,2), exact numeric,
        ratio double precision, real4 real,
        name text, vc varchar(20), flag boolean,
        day date, ts timestamp, tstz timestamptz, t time,
        u uuid, j json, jb jsonb, ints int[], raw bytea,
        updated_at timestamptz NOT NULL
    );
    INSERT INTO typed VALUES
        (1, -32768, 9223372036854775807, 1234567890.12, 3.14159265358979323846264338327950288,
         1.5, 0.25, E'héllo "w" ☃ 𝄞\ttab\nline \\ back', 'abc', true,
         '2024-02-29', '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.123456+02', '23:59:59.999999',
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.5, "x"], "b" : null}', '{"b": {"c": null}}',
         '{1,2,3}', '\x00ff10', '2023-12-31 00:00:00+00'),
        (2, NULL, NULL, 0.00, 1e-30, NULL, NULL, '', NULL, false,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '2023-12-31 01:00:00+00');
    INSERT INTO typed
        SELECT i, (i - 25)::smallint, i::bigint * 100000000000, round(i * 1.37, 2), i::numeric / 7,
               i / 4.0, i / 8.0, 'row ' || i, 'v' || i, i % 2 = 0,
               date '2000-01-01' + i, timestamp '2024-01-01 00:00:00.5' + i * interval '61.25 seconds',
               timestamptz '2024-06-30 23:00:00+05' + i * interval '1 day', time '00:00:01' + i * interval '1 second',
               md5(i::text)::uuid, json_build_object('i', i, 's', repeat('x', i % 4)),
               jsonb_build_array(i, NULL, 'y'), ARRAY[i, -i, NULL], decode(lpad(to_hex(i), 4, '0'), 'hex'),
               timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour'
        FROM generate_series(3, 50) i;
    CREATE TABLE plain (id int, label text, qty numeric(12,2), PRIMARY KEY (id, label));
    INSERT INTO plain SELECT i, 'l' || (i % 3), i * 0.25 FROM generate_series(1, 30) i;
"#;

/// `typed`'s columns: source expression, destination expression (both as
/// text, session time zone UTC).
const PG_TYPED: &[(&str, &str)] = &[
    ("id", "id"),
    ("small", "small"),
    ("big", "big"),
    // The SDK sends numerics as exact JSON number text ("1.50", "1E-30").
    ("price", "price"),
    ("exact", "exact"),
    // Floats land as numeric (JSON Schema `number`); equal as the source type.
    ("ratio", "ratio::float8"),
    ("real4", "real4::real"),
    ("name", "name"),
    ("vc", "vc"),
    ("flag", "flag"),
    ("day", "day"),
    // Peer: a `timestamp` (no zone) is sent as a date-time in UTC, so it
    // lands as timestamptz; its UTC wall clock is the source value.
    ("ts", "ts AT TIME ZONE 'UTC'"),
    ("tstz", "tstz"),
    ("t", "t"),
    // Peer: uuid has no `format`, so it lands as text.
    ("u", "u"),
    // Peer: json is parsed and re-serialized (whitespace lost): compare as jsonb.
    ("j::jsonb", "j"),
    ("jb", "jb"),
    // Peer: an array is a JSON array (`type: array`): it lands as jsonb.
    ("to_jsonb(ints)", "ints"),
    // Peer: bytea is sent as bare hex, no contentEncoding: it lands as text.
    ("encode(raw, 'hex')", "raw"),
    ("updated_at", "updated_at"),
];

#[test]
fn meltanolabs_tap_postgres_loads_exactly_and_resumes_from_our_state() {
    let src = cluster().create_database("interop_ml_src");
    let dst = cluster().create_database("interop_ml_dst");
    src.client().batch_execute(PG_SOURCE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tap =
        venv("meltanolabs-tap-postgres", &[MELTANOLABS_TAP_POSTGRES]).join("bin/tap-postgres");
    let config = write_json(
        dir.path(),
        "ml.json",
        &json!({
            "host": src.host, "port": src.port, "user": pg_testkit::SUPERUSER,
            "password": "", "database": src.name, "filter_schemas": ["public"],
        }),
    );
    let mut catalog = peer_discover(&tap, &config);
    select_all(&mut catalog, |id| match id {
        "public-typed" => ("INCREMENTAL", Some("updated_at")),
        _ => ("FULL_TABLE", None),
    });
    let catalog = write_json(dir.path(), "catalog.json", &catalog);
    let target_config = write_json(dir.path(), "target.json", &dst.config());
    let run = |state: Option<&Path>| {
        peer_into_target(
            &tap,
            &config,
            Some(("--catalog", &catalog)),
            state,
            &target_config,
            "meltanolabs-tap-postgres",
        )
    };

    let first = run(None);
    assert_eq!(
        first.last_state().unwrap()["bookmarks"]["public-typed"]["replication_key_value"],
        json!("2024-01-03T02:00:00.000000+00:00"),
        "the target's last state is not the tap's final bookmark: {:?}",
        first.states
    );
    let mut s = src.client();
    let mut d = dst.client();
    for c in [&mut s, &mut d] {
        c.batch_execute("SET TimeZone = 'UTC'").unwrap();
    }
    let (src_exprs, dst_exprs): (Vec<&str>, Vec<&str>) = PG_TYPED.iter().copied().unzip();
    let compare = |s: &mut postgres::Client, d: &mut postgres::Client, filter: &str| {
        let want = pg_rows(s, "public.typed", &src_exprs, filter);
        let got = pg_rows(d, "public.typed", &dst_exprs, filter);
        assert_eq!(got.len(), want.len(), "typed: row count ({filter})");
        for (w, g) in want.iter().zip(&got) {
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                assert_eq!(b, a, "typed.{} of row id={:?}", PG_TYPED[i].0, w[0]);
            }
        }
        let plain = ["id", "label", "qty"];
        assert_eq!(
            pg_rows(d, "public.plain", &plain, ""),
            pg_rows(s, "public.plain", &plain, ""),
            "plain"
        );
    };
    compare(&mut s, &mut d, "");
    // Exact types where JSON Schema carries them.
    for (column, want) in [
        ("big", "bigint"),
        ("price", "numeric"),
        ("exact", "numeric"),
        ("flag", "boolean"),
        ("day", "date"),
        ("tstz", "timestamp with time zone"),
        ("t", "time without time zone"),
        ("jb", "jsonb"),
    ] {
        assert_eq!(
            type_of(&mut d, "public", "typed", column),
            want,
            "typed.{column}"
        );
    }

    // Resume from the state our target printed. Canaries deleted at the
    // destination tell what the tap re-sent: INCREMENTAL must not re-send
    // row 3 (below the bookmark), FULL_TABLE re-sends everything.
    s.batch_execute(
        "UPDATE typed SET name = 'changed', updated_at = '2025-01-01 00:00:00+00' WHERE id = 10;
         INSERT INTO typed (id, name, updated_at) VALUES (51, 'new', '2025-01-02 00:00:00+00');
         UPDATE plain SET qty = 99.99 WHERE id = 2;
         INSERT INTO plain VALUES (31, 'l1', 7.75);",
    )
    .unwrap();
    d.batch_execute("DELETE FROM public.typed WHERE id = 3; DELETE FROM public.plain WHERE id = 1")
        .unwrap();
    let state = state_file(&first, dir.path(), "state.json");
    let second = run(Some(&state));
    assert_eq!(
        second.last_state().unwrap()["bookmarks"]["public-typed"]["replication_key_value"],
        json!("2025-01-02T00:00:00.000000+00:00")
    );
    compare(&mut s, &mut d, "WHERE id <> 3");
    let count = |c: &mut postgres::Client, t: &str| -> i64 {
        c.query_one(&format!("SELECT count(*) FROM public.{t}"), &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(
        count(&mut d, "typed"),
        50,
        "typed: 51 rows, canary 3 not re-sent"
    );
    assert_eq!(
        count(&mut d, "plain"),
        count(&mut s, "plain"),
        "plain: no duplicates"
    );
}

/// Special values and types without a JSON Schema counterpart, as
/// meltanolabs-tap-postgres sends them: its own limits, asserted so that a
/// change on either side shows. (BC dates and years past 9999 make the tap
/// itself exit 1, "year -44 is out of range", so they are not in the table.)
#[test]
fn meltanolabs_tap_postgres_special_values_land_as_the_peer_sends_them() {
    let src = cluster().create_database("interop_ml_special_src");
    let dst = cluster().create_database("interop_ml_special_dst");
    // Numeric Infinity exists from PostgreSQL 14; older servers hold NULL
    // there, which the peer sends the same way.
    let numeric_infinity = if cluster().server_version_num() >= 140_000 {
        "'Infinity'"
    } else {
        "NULL"
    };
    src.client()
        .batch_execute(&format!(
            r#"CREATE TABLE special (id int PRIMARY KEY, n numeric, f float8, d date, ts timestamp,
                   tz timestamptz, i interval, r int4range, addr inet, m money, arr text[], pt point);
               INSERT INTO special VALUES
                   (1, 'NaN', 'NaN', 'infinity', 'infinity', '-infinity', '1 day 2 hours', '[1,5)',
                    '10.0.0.1/8', 12.34, '{{"a,b",NULL,"c\"d"}}', '(1,2)'),
                   (2, {numeric_infinity}, '-Infinity', NULL, NULL, NULL, NULL, 'empty', NULL, NULL, '{{}}', NULL);"#
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tap =
        venv("meltanolabs-tap-postgres", &[MELTANOLABS_TAP_POSTGRES]).join("bin/tap-postgres");
    let config = write_json(
        dir.path(),
        "ml.json",
        &json!({
            "host": src.host, "port": src.port, "user": pg_testkit::SUPERUSER,
            "password": "", "database": src.name, "filter_schemas": ["public"],
        }),
    );
    let mut catalog = peer_discover(&tap, &config);
    select_all(&mut catalog, |_| ("FULL_TABLE", None));
    let catalog = write_json(dir.path(), "catalog.json", &catalog);
    let target_config = write_json(dir.path(), "target.json", &dst.config());
    peer_into_target(
        &tap,
        &config,
        Some(("--catalog", &catalog)),
        None,
        &target_config,
        "meltanolabs-tap-postgres",
    );
    let mut d = dst.client();
    d.batch_execute("SET TimeZone = 'UTC'").unwrap();
    let cols = [
        "id", "n", "f", "d", "ts", "tz", "i", "r", "addr", "m", "arr", "pt",
    ];
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        pg_rows(&mut d, "public.special", &cols, ""),
        [
            // Peer: NaN is sent as null; ±infinity dates and timestamps as
            // the largest/smallest Python datetime; an interval as a
            // date-time after the Unix epoch; other types as their text.
            vec![
                s("1"),
                None,
                None,
                s("9999-12-31"),
                s("9999-12-31 23:59:59.999999+00"),
                s("0001-01-01 00:00:00+00"),
                s("1970-01-02T02:00:00+00:00"),
                s("[1,5)"),
                s("10.0.0.1/8"),
                s("$12.34"),
                s(r#"["a,b", null, "c\"d"]"#),
                s("(1,2)")
            ],
            vec![
                s("2"),
                None,
                None,
                None,
                None,
                None,
                None,
                s("empty"),
                None,
                None,
                s("[]"),
                None
            ],
        ]
    );
}

/// Third-party `x-sql-datatype` values that are not Postgres types (Snowflake
/// and MySQL spellings that SDK taps pass through) fall back to the JSON
/// Schema mapping with one warning per column, however often the SCHEMA is
/// re-sent; SDK decimals sent as strings land as numeric.
#[test]
fn foreign_sql_datatype_hints_fall_back_with_one_warning_per_column() {
    let dst = cluster().create_database("interop_hints");
    let dir = tempfile::tempdir().unwrap();
    let config = write_json(dir.path(), "target.json", &dst.config());
    // Each SCHEMA adds a column, so the target rebuilds the stream's shape
    // (an identical SCHEMA would be skipped before any type is looked at).
    let mut input = String::new();
    for i in 0..3 {
        let mut properties = json!({
            "id": {"type": "integer"},
            "at": {"type": ["string", "null"], "format": "date-time", "x-sql-datatype": "TIMESTAMP_NTZ"},
            "n": {"type": ["integer", "null"], "x-sql-datatype": "mediumint unsigned"},
            "s": {"type": ["string", "null"], "x-sql-datatype": "string"},
            // Singer SDK taps' `use_singer_decimal`: decimals as strings.
            "dec": {"type": ["string", "null"], "format": "singer.decimal"},
        });
        properties[format!("extra{i}")] = json!({"type": ["string", "null"]});
        let schema = json!({"type": "SCHEMA", "stream": "hints", "key_properties": ["id"],
                            "schema": {"type": "object", "properties": properties}});
        input += &format!("{schema}\n");
        input += &format!(
            "{}\n",
            json!({"type": "RECORD", "stream": "hints", "record":
                {"id": i, "at": "2024-02-29T13:14:15Z", "n": 16777215, "s": "x",
                 "dec": "12345678901234567890.50"}})
        );
    }
    let run = pg_testkit::process::run(
        Command::new(e2e_tests::bin("target-postgres-rs"))
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG"),
        input.as_bytes(),
    );
    assert!(run.ok, "target failed: {}", run.stderr);
    let warnings: Vec<&str> = run.stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 3, "one warning per column: {warnings:#?}");
    for (prop, t) in [
        ("at", "TIMESTAMP_NTZ"),
        ("n", "mediumint unsigned"),
        ("s", "string"),
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("property=\"{prop}\"")) && w.contains(t)),
            "no warning names {prop} ({t}): {warnings:#?}"
        );
    }
    let mut d = dst.client();
    for (column, want) in [
        ("at", "timestamp with time zone"),
        ("n", "bigint"),
        ("s", "text"),
        ("dec", "numeric"),
    ] {
        assert_eq!(
            type_of(&mut d, "public", "hints", column),
            want,
            "hints.{column}"
        );
    }
    assert_eq!(pg_testkit::rows::count(&dst, "public", "hints"), Some(3));
    assert_eq!(
        pg_testkit::rows::text(
            &dst,
            "SELECT string_agg(DISTINCT dec::text, ',') FROM hints"
        ),
        Some("12345678901234567890.50".to_owned())
    );
}

// --- pipelinewise-tap-mysql against MariaDB -----------------------------------

const MYSQL_SOURCE: &str = r#"
    CREATE DATABASE shop CHARACTER SET utf8mb4;
    USE shop;
    CREATE TABLE typed (
        id INT PRIMARY KEY,
        big_u BIGINT UNSIGNED, big_s BIGINT,
        amount DECIMAL(30,10), ratio DOUBLE,
        at_dt DATETIME(6), day DATE, tod TIME,
        name VARCHAR(40), flag TINYINT(1),
        blob_col BLOB, vb VARBINARY(16), doc JSON,
        updated_at DATETIME NOT NULL
    );
    INSERT INTO typed VALUES
        (1, 18446744073709551615, -9223372036854775808, 12345678901234567890.0123456789, 1.5,
         '2024-02-29 13:14:15.123456', '2024-02-29', '23:59:59', 'héllo "w" ☃ 𝄞', 1,
         X'00FF10', X'DEADBEEF', '{"a": [1, 2.5, "x"],  "b" : null}', '2023-12-31 00:00:00'),
        (2, 0, NULL, -0.0000000001, NULL, NULL, NULL, NULL, '', 0,
         NULL, NULL, NULL, '2023-12-31 01:00:00'),
        (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, '2023-12-31 02:00:00');
    INSERT INTO typed
        SELECT seq, seq * 1000000000000000, -seq, seq * 1.25, seq / 4,
               TIMESTAMP '2024-01-01 00:00:00.5' + INTERVAL seq * 61 SECOND, DATE '2000-01-01' + INTERVAL seq DAY,
               SEC_TO_TIME(seq * 7), CONCAT('row ', seq), seq % 2,
               UNHEX(LPAD(HEX(seq), 4, '0')), UNHEX(LPAD(HEX(seq), 6, '0')), JSON_OBJECT('i', seq),
               TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq HOUR
        FROM seq_4_to_40;
    CREATE TABLE order_lines (
        order_id BIGINT UNSIGNED, line SMALLINT, qty INT NOT NULL, PRIMARY KEY (order_id, line)
    );
    INSERT INTO order_lines SELECT seq DIV 3, seq % 3, seq FROM seq_3_to_32;
"#;

/// `typed`'s columns: MariaDB expression, Postgres expression (session time
/// zone UTC). `blob_col` is missing: pipelinewise-tap-mysql marks BLOB
/// columns unsupported and never sends them (asserted below).
const MYSQL_TYPED: &[(&str, &str)] = &[
    ("id", "id"),
    // BIGINT UNSIGNED carries bounds beyond bigint: a numeric column, exact.
    ("big_u", "big_u"),
    ("big_s", "big_s"),
    ("amount", "amount"),
    ("ratio", "ratio::float8"),
    // Peer: DATETIME is sent as a date-time in UTC (lands as timestamptz).
    ("at_dt", "to_char(at_dt, 'YYYY-MM-DD HH24:MI:SS.US')"),
    // Peer: DATE is sent as a date-time at midnight UTC (`format: date-time`).
    ("day", "day::date"),
    ("tod", "tod"),
    // Peer: it connects with charset `utf8` (3-byte utf8mb3), so MariaDB
    // sends each 4-byte character (𝄞) as '?'.
    ("REPLACE(name, '𝄞', '?')", "name"),
    // TINYINT(1) is sent as a boolean.
    ("flag", "flag::int"),
    // Peer: VARBINARY is sent as upper-case hex text (`format: binary`).
    ("HEX(vb)", "vb"),
    // JSON is sent as its text, verbatim: it lands as text.
    ("doc", "doc"),
    ("updated_at", "to_char(updated_at, 'YYYY-MM-DD HH24:MI:SS')"),
];

fn mysql_rows(db: &MariaDb, table: &str, exprs: &[&str], filter: &str) -> Rows {
    let sql = format!("SELECT {} FROM shop.{table} {filter}", exprs.join(", "));
    let mut rows: Rows = db
        .query(None, &sql)
        .into_iter()
        .map(|r| {
            // Batch mode prints NULL as `NULL`; no source value is that text.
            r.into_iter().map(|v| (v != "NULL").then_some(v)).collect()
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn pipelinewise_tap_mysql_loads_exactly_and_resumes_from_our_state() {
    let my = MariaDb::start();
    my.execute(None, MYSQL_SOURCE);
    let dst = cluster().create_database("interop_mysql_dst");
    let dir = tempfile::tempdir().unwrap();
    let tap = venv("pipelinewise-tap-mysql", &[PIPELINEWISE_TAP_MYSQL]).join("bin/tap-mysql");
    let config = write_json(
        dir.path(),
        "mysql.json",
        &json!({
            "host": "127.0.0.1", "port": my.port(), "user": mariadb::USER,
            "password": mariadb::PASSWORD, "filter_dbs": "shop",
        }),
    );
    let mut catalog = peer_discover(&tap, &config);
    select_all(&mut catalog, |id| match id {
        "shop-typed" => ("INCREMENTAL", Some("updated_at")),
        _ => ("FULL_TABLE", None),
    });
    let blob = catalog["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["tap_stream_id"] == "shop-typed")
        .map(|s| s["schema"]["properties"]["blob_col"].clone())
        .unwrap();
    let catalog = write_json(dir.path(), "catalog.json", &catalog);
    let target_config = write_json(dir.path(), "target.json", &dst.config());
    let run = |state: Option<&Path>| {
        peer_into_target(
            &tap,
            &config,
            Some(("--properties", &catalog)),
            state,
            &target_config,
            "pipelinewise-tap-mysql",
        )
    };
    let first = run(None);
    assert_eq!(
        first.last_state().unwrap()["bookmarks"]["shop-typed"]["replication_key_value"],
        json!("2024-01-02T16:00:00+00:00"),
        "{:?}",
        first.states
    );
    let mut d = dst.client();
    d.batch_execute("SET TimeZone = 'UTC'").unwrap();
    let (my_exprs, pg_exprs): (Vec<&str>, Vec<&str>) = MYSQL_TYPED.iter().copied().unzip();
    let compare = |d: &mut postgres::Client, filter: &str| {
        let want = mysql_rows(&my, "typed", &my_exprs, filter);
        let got = pg_rows(d, "shop.typed", &pg_exprs, filter);
        assert_eq!(got.len(), want.len(), "typed: row count ({filter})");
        for (w, g) in want.iter().zip(&got) {
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                assert_eq!(b, a, "typed.{} of row id={:?}", MYSQL_TYPED[i].0, w[0]);
            }
        }
        let lines = ["order_id", "line", "qty"];
        assert_eq!(
            pg_rows(d, "shop.order_lines", &lines, ""),
            mysql_rows(&my, "order_lines", &lines, ""),
            "order_lines"
        );
    };
    compare(&mut d, "");
    // The values the comparison can't show by itself.
    let row1 = pg_rows(
        &mut d,
        "shop.typed",
        &["id", "big_u", "amount", "name"],
        "WHERE id = 1",
    );
    assert_eq!(
        row1[0],
        [
            Some("1".into()),
            Some("18446744073709551615".into()),
            Some("12345678901234567890.0123456789".into()),
            Some("héllo \"w\" ☃ ?".into()),
        ]
    );
    for (column, want) in [
        ("big_u", "numeric"),
        ("amount", "numeric"),
        ("flag", "boolean"),
        ("tod", "time without time zone"),
    ] {
        assert_eq!(
            type_of(&mut d, "shop", "typed", column),
            want,
            "typed.{column}"
        );
    }
    assert_eq!(
        blob["inclusion"], "unsupported",
        "pipelinewise now sends BLOB: {blob}"
    );
    assert_eq!(
        type_of(&mut d, "shop", "typed", "blob_col"),
        "(no column blob_col)"
    );

    // Resume from our state: INCREMENTAL must not re-send row 2 (a canary
    // deleted at the destination, below the bookmark); FULL_TABLE re-sends
    // every row under a new table version.
    my.execute(
        Some("shop"),
        "UPDATE typed SET name = 'changed', updated_at = '2025-01-01 00:00:00' WHERE id = 10;
         INSERT INTO typed (id, big_u, updated_at) VALUES (41, 18446744073709551614, '2025-01-02 00:00:00');
         UPDATE order_lines SET qty = 99 WHERE order_id = 2;
         INSERT INTO order_lines VALUES (18446744073709551615, 0, 1);",
    );
    d.batch_execute(
        "DELETE FROM shop.typed WHERE id = 2; DELETE FROM shop.order_lines WHERE order_id = 1",
    )
    .unwrap();
    let state = state_file(&first, dir.path(), "state.json");
    let second = run(Some(&state));
    assert_eq!(
        second.last_state().unwrap()["bookmarks"]["shop-typed"]["replication_key_value"],
        json!("2025-01-02T00:00:00+00:00")
    );
    compare(&mut d, "WHERE id <> 2");
    let mut count = |t: &str| -> i64 {
        d.query_one(&format!("SELECT count(*) FROM shop.{t}"), &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(count("typed"), 40, "typed: 41 rows, canary 2 not re-sent");
    assert_eq!(count("order_lines"), 31, "order_lines: every row once");

    // Peer: a MySQL TIME is a duration up to 838:59:59, and the tap sends one
    // past a day as Python's timedelta text under `format: time`. That is no
    // time of day: our target refuses it, naming the line, stream and column,
    // rather than land something else.
    my.execute(
        Some("shop"),
        "CREATE TABLE durations (id INT PRIMARY KEY, took TIME);
         INSERT INTO durations VALUES (1, '12:00:00'), (2, '100:00:00');",
    );
    let mut catalog = peer_discover(&tap, &config);
    catalog["streams"]
        .as_array_mut()
        .unwrap()
        .retain(|s| s["tap_stream_id"] == "shop-durations");
    select_all(&mut catalog, |_| ("FULL_TABLE", None));
    let catalog = write_json(dir.path(), "durations.json", &catalog);
    let out = Command::new(&tap)
        .arg("--config")
        .arg(&config)
        .arg("--properties")
        .arg(&catalog)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = String::from_utf8(out.stdout).unwrap();
    assert!(sent.contains(r#""took": "4 days, 4:00:00""#), "{sent}");
    let line = sent.lines().position(|l| l.contains("4 days")).unwrap() + 1;
    let refused = pg_testkit::process::run(
        Command::new(e2e_tests::bin("target-postgres-rs"))
            .arg("--config")
            .arg(&target_config),
        sent.as_bytes(),
    );
    assert!(!refused.ok, "the target loaded a duration as a time of day");
    assert_eq!(
        refused.last_error(),
        format!(
            "target-postgres-rs: error: input line {line} (stream `shop-durations`): column \
             `took`: cannot load value: invalid input syntax for type time: \"4 days, 4:00:00\""
        )
    );
}

// --- tap-jsonl (Singer SDK file tap) -----------------------------------------

#[test]
fn tap_jsonl_loads_and_converges_on_rerun() {
    let dst = cluster().create_database("interop_jsonl_dst");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Raw text: number literals exactly as a file holds them.
    let mut lines = vec![
        concat!(
            r#"{"id": 1, "name": "h\u00e9llo \"w\" ☃ 𝄞\ttab\nline \\ back", "amount": 12.50, "#,
            r#""precise": 0.1234567890123456789, "ok": true, "tags": ["a", "b"], "#,
            r#""meta": {"k": 1, "n": null}, "at": "2024-02-29T13:14:15Z"}"#
        )
        .to_owned(),
        r#"{"id": 2, "name": "", "amount": null, "precise": 1, "ok": false, "tags": [], "meta": null, "at": null}"#
            .to_owned(),
    ];
    lines.extend((3..=20).map(|i| {
        json!({"id": i, "name": format!("row {i}"), "amount": i as f64 * 0.25, "precise": i,
               "ok": i % 2 == 0, "tags": [i], "meta": {"i": i}, "at": "2024-03-01T00:00:00Z"})
        .to_string()
    }));
    // JSON number text the peer reads as an integer (Python ints are unbounded).
    lines.push(r#"{"id": 21, "big": 18446744073709551615}"#.to_owned());
    std::fs::write(data.join("a.jsonl"), lines.join("\n") + "\n").unwrap();
    let tap = venv("tap-jsonl", &[TAP_JSONL]).join("bin/tap-jsonl");
    let config = write_json(
        dir.path(),
        "jsonl.json",
        &json!({"path": format!("{}/*.jsonl", data.display()), "stream_name": "events",
                "primary_keys": ["id"]}),
    );
    let target_config = write_json(dir.path(), "target.json", &dst.config());
    let run = |state: Option<&Path>| {
        peer_into_target(&tap, &config, None, state, &target_config, "tap-jsonl")
    };
    let first = run(None);
    let mut d = dst.client();
    d.batch_execute("SET TimeZone = 'UTC'").unwrap();
    let cols = [
        "id", "name", "amount", "precise", "ok", "tags", "meta", "at", "big",
    ];
    let got = pg_rows(&mut d, "public.events", &cols, "WHERE id IN (1, 2, 3, 21)");
    let s = |v: &str| Some(v.to_owned());
    let mut want = vec![
        // Peer: it reads JSON numbers as Python floats, so `12.50` lands
        // as 12.5 and digits past a double's are lost.
        vec![
            s("1"),
            s("héllo \"w\" ☃ 𝄞\ttab\nline \\ back"),
            s("12.5"),
            s("0.12345678901234568"),
            s("true"),
            s(r#"["a", "b"]"#),
            s(r#"{"k": 1, "n": null}"#),
            s("2024-02-29 13:14:15+00"),
            None,
        ],
        // '' stays '' (not NULL); a JSON null object is SQL NULL.
        vec![
            s("2"),
            s(""),
            None,
            s("1"),
            s("false"),
            s("[]"),
            None,
            None,
            None,
        ],
        vec![
            s("3"),
            s("row 3"),
            s("0.75"),
            s("3"),
            s("false"),
            s("[3]"),
            s(r#"{"i": 3}"#),
            s("2024-03-01 00:00:00+00"),
            None,
        ],
        // An unbounded integer past bigint: the column becomes numeric, exact.
        vec![
            s("21"),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            s("18446744073709551615"),
        ],
    ];
    want.sort(); // as pg_rows sorts
    assert_eq!(got, want);
    assert_eq!(type_of(&mut d, "public", "events", "big"), "numeric");
    assert_eq!(
        type_of(&mut d, "public", "events", "at"),
        "timestamp with time zone"
    );
    assert_eq!(pg_testkit::rows::count(&dst, "public", "events"), Some(21));

    // Rerun from our state after appending a row. Peer: tap-jsonl 0.3.1
    // re-reads every changed file whole on resume (with several files, every
    // file once per file's partition), so the rows arrive again; the key
    // makes the load converge.
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a newer mtime
    let mut all = lines;
    all.push(r#"{"id": 22, "name": "appended"}"#.to_owned());
    std::fs::write(data.join("a.jsonl"), all.join("\n") + "\n").unwrap();
    let state = state_file(&first, dir.path(), "state.json");
    let second = run(Some(&state));
    assert!(
        second
            .target_stderr
            .contains("stream summary stream=events rows_loaded=22 "),
        "tap-jsonl no longer re-sends the whole file on resume: {}",
        second.target_stderr
    );
    assert_eq!(
        pg_testkit::rows::count(&dst, "public", "events"),
        Some(22),
        "no duplicates"
    );
    assert_eq!(
        pg_rows(&mut d, "public.events", &cols, "WHERE id IN (1, 2, 3, 21)"),
        got,
        "rows changed on the rerun"
    );
    assert_eq!(
        pg_rows(&mut d, "public.events", &["id", "name"], "WHERE id = 22"),
        [vec![s("22"), s("appended")]]
    );
}
