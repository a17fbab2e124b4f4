//! Interop with Singer peers from PyPI, both directions: our tap's output is
//! valid for `singer-check-tap` and loads through `target-jsonl`; output of
//! pipelinewise-tap-postgres (recorded vectors and a live run) loads through
//! our target. Also the orchestrator-facing behaviour of the target: exit
//! codes, state lines on stdout, reading its input to the end after an error.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use e2e_tests::orchestrator::{venv, PIPELINEWISE_TAP_POSTGRES, SINGER_TOOLS, TARGET_JSONL};
use e2e_tests::{bin, discover, select, tap_sync, write_json};
use pg_testkit::cluster;
use serde_json::{json, Value};

/// A small source with the types most tables have.
const SOURCE: &str = r#"
    CREATE TABLE products (
        id int PRIMARY KEY,
        name text NOT NULL,
        price numeric(10,2),
        weight double precision,
        tags text[],
        attrs jsonb,
        created timestamptz,
        sold_on date,
        active boolean,
        code uuid,
        note varchar(40)
    );
    INSERT INTO products
        SELECT i, 'product ' || i, i * 1.5, i / 3.0, ARRAY['t' || i, 'common'],
               jsonb_build_object('n', i, 'nested', jsonb_build_object('even', i % 2 = 0)),
               timestamptz '2024-03-01 12:00:00+00' + i * interval '1 hour',
               date '2024-03-01' + i, i % 2 = 0, md5(i::text)::uuid,
               CASE WHEN i % 5 = 0 THEN NULL ELSE 'note "' || i || '"' END
        FROM generate_series(1, 40) i;
    CREATE TABLE "order lines" (order_id bigint, line smallint, qty int NOT NULL, PRIMARY KEY (order_id, line));
    INSERT INTO "order lines" SELECT i / 3, i % 3, i FROM generate_series(3, 32) i;
"#;

/// Runs the tap (all tables FULL_TABLE) over `SOURCE` and returns its stdout.
fn tap_output(db_hint: &str, dir: &Path) -> Vec<u8> {
    let src = cluster().create_database(db_hint);
    src.client().batch_execute(SOURCE).unwrap();
    let config = write_json(dir, "tap.json", &src.config());
    let mut catalog = discover(&config);
    select(&mut catalog, &[], "FULL_TABLE", None);
    let catalog = write_json(dir, "catalog.json", &catalog);
    let out = tap_sync(&config, &catalog, None).output().unwrap();
    assert!(
        out.status.success(),
        "tap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_quiet_log("tap-postgres-rs", &String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Meltano's `config test` (and users' log alerts) treat these words as failure.
pub(super) fn assert_quiet_log(who: &str, stderr: &str) {
    let bad: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("exception")
        })
        .collect();
    assert!(bad.is_empty(), "{who} logged on success: {bad:#?}");
}

pub(super) fn messages(stdout: &[u8]) -> Vec<Value> {
    stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("tap stdout is JSON lines"))
        .collect()
}

/// Runs `program args` with `input` on stdin; returns (status, stdout, stderr).
pub(super) fn run_with_input(
    program: &Path,
    args: &[&str],
    cwd: &Path,
    input: Vec<u8>,
) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let writer = e2e_tests::feed(child.stdin.take().unwrap(), input);
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tap_output_passes_singer_check_tap() {
    let dir = tempfile::tempdir().unwrap();
    let output = tap_output("interop_check", dir.path());
    let check = venv("singer-tools", &[SINGER_TOOLS]).join("bin/singer-check-tap");
    let (status, stdout, stderr) = run_with_input(&check, &[], dir.path(), output);
    assert!(
        status.success() && stdout.contains("The output is valid."),
        "singer-check-tap rejected our output:\n{stdout}\n{stderr}"
    );
    // Its summary table: stream | records | schemas.
    for (stream, records) in [("public-products", 40), ("public-order lines", 30)] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&format!("| {stream}"))
                    && l.contains(&format!("| {records} "))),
            "singer-check-tap did not count {records} records for {stream}:\n{stdout}"
        );
    }
}

#[test]
fn tap_output_loads_through_target_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let output = tap_output("interop_jsonl", dir.path());
    let sent = messages(&output);
    let out_dir = dir.path().join("jsonl");
    std::fs::create_dir(&out_dir).unwrap();
    let config = write_json(
        dir.path(),
        "target-jsonl.json",
        &json!({"destination_path": out_dir, "do_timestamp_file": false}),
    );
    let target = venv("target-jsonl", &[TARGET_JSONL]).join("bin/target-jsonl");
    let (status, stdout, stderr) = run_with_input(
        &target,
        &["--config", config.to_str().unwrap()],
        dir.path(),
        output,
    );
    assert!(status.success(), "target-jsonl failed:\n{stderr}");
    // It echoes the last state it saw.
    let last_state = sent
        .iter()
        .rev()
        .find(|m| m["type"] == "STATE")
        .map(|m| m["value"].clone())
        .expect("the tap sent a STATE");
    let echoed: Value = serde_json::from_str(stdout.lines().last().expect("a state line")).unwrap();
    assert_eq!(echoed, last_state);
    // Every record we sent is in its file, value for value.
    for stream in ["public-products", "public-order lines"] {
        let file = out_dir.join(format!("{stream}.jsonl"));
        let landed: Vec<Value> = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let records: Vec<&Value> = sent
            .iter()
            .filter(|m| m["type"] == "RECORD" && m["stream"] == stream)
            .map(|m| &m["record"])
            .collect();
        assert_eq!(landed.len(), records.len(), "{stream}: row count");
        assert!(!records.is_empty(), "{stream}: no records sent");
        for (a, b) in records.iter().zip(&landed) {
            assert_eq!(*a, b, "{stream}: a record changed on the way");
        }
    }
}

/// What a recorded Singer stream should leave behind in our target (upserts,
/// soft deletes): per stream, the number of distinct keys; and the last state.
fn expected_from_vector(path: &Path) -> (BTreeMap<String, usize>, Option<Value>) {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut last_state = None;
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let m: Value = serde_json::from_str(line).unwrap();
        let stream = m["stream"].as_str().unwrap_or_default().to_owned();
        match m["type"].as_str() {
            Some("SCHEMA") => {
                let k = m["key_properties"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap().to_owned())
                    .collect();
                keys.insert(stream.clone(), k);
                ids.entry(stream).or_default();
            }
            Some("RECORD") => {
                let key: Vec<&Value> = keys[&stream].iter().map(|k| &m["record"][k]).collect();
                ids.get_mut(&stream)
                    .unwrap()
                    .insert(serde_json::to_string(&key).unwrap());
            }
            Some("STATE") => last_state = Some(m["value"].clone()),
            _ => {}
        }
    }
    (
        ids.into_iter().map(|(s, v)| (s, v.len())).collect(),
        last_state,
    )
}

fn vector(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/vectors/pipelinewise-target-postgres")
        .join(name)
}

/// Runs our target on a file; returns (status, state lines, stderr).
fn target_on_file(config: &Path, input: &Path) -> (std::process::ExitStatus, Vec<Value>, String) {
    let out = Command::new(bin("target-postgres-rs"))
        .arg("--config")
        .arg(config)
        .stdin(std::fs::File::open(input).unwrap())
        .output()
        .unwrap();
    let states = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("target stdout has a non-JSON line ({e}): {l}"))
        })
        .collect();
    (
        out.status,
        states,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pipelinewise_tap_postgres_recordings_load_through_our_target() {
    let vectors = vector("");
    assert!(
        vectors.is_dir(),
        "{} is missing: the repo keeps its test vectors in testdata/vectors",
        vectors.display()
    );
    for file in [
        "messages-pg-logical-streams.json",
        "logical-streams.json",
        "messages-pg-logical-streams-no-records.json",
    ] {
        let dst = cluster().create_database("interop_pw_vector");
        let dir = tempfile::tempdir().unwrap();
        let config = write_json(dir.path(), "target.json", &dst.config());
        let path = vector(file);
        let (status, states, stderr) = target_on_file(&config, &path);
        assert!(status.success(), "{file}: target failed:\n{stderr}");
        assert_quiet_log("target-postgres-rs", &stderr);
        let (expected, last_state) = expected_from_vector(&path);
        assert!(
            states
                .iter()
                .all(|s| !s.as_object().is_some_and(|o| o.is_empty())),
            "{file}: the target printed an empty state"
        );
        assert_eq!(
            states.last(),
            last_state.as_ref(),
            "{file}: the last state line is not the last state of the input"
        );
        let mut client = dst.client();
        for (stream, rows) in expected {
            let (schema, table) = stream.split_once('-').unwrap();
            let n: i64 = client
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {}.{}",
                        pg_quote(schema),
                        pg_quote(table)
                    ),
                    &[],
                )
                .unwrap_or_else(|e| panic!("{file}: table for {stream}: {e}"))
                .get(0);
            assert_eq!(n as usize, rows, "{file}: rows in {schema}.{table}");
        }
    }
}

pub(super) fn pg_quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A live pipelinewise-tap-postgres (from PyPI) run piped into our target.
#[test]
fn live_pipelinewise_tap_postgres_loads_through_our_target() {
    let src = cluster().create_database("interop_pw_src");
    let dst = cluster().create_database("interop_pw_dst");
    src.client().batch_execute(SOURCE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pw =
        venv("pipelinewise-tap-postgres", &[PIPELINEWISE_TAP_POSTGRES]).join("bin/tap-postgres");
    let config = write_json(
        dir.path(),
        "pw.json",
        &json!({
            "host": src.host, "port": src.port, "user": pg_testkit::SUPERUSER,
            "password": "", "dbname": src.name, "filter_schemas": "public",
        }),
    );
    let out = Command::new(&pw)
        .arg("--config")
        .arg(&config)
        .arg("--discover")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pipelinewise discovery failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut catalog: Value = serde_json::from_slice(&out.stdout).unwrap();
    for stream in catalog["streams"].as_array_mut().unwrap() {
        let products = stream["tap_stream_id"] == "public-products";
        for m in stream["metadata"].as_array_mut().unwrap() {
            if m["breadcrumb"].as_array().is_some_and(|b| b.is_empty()) {
                m["metadata"]["selected"] = json!(true);
                if products {
                    m["metadata"]["replication-method"] = json!("INCREMENTAL");
                    m["metadata"]["replication-key"] = json!("id");
                } else {
                    m["metadata"]["replication-method"] = json!("FULL_TABLE");
                }
            }
        }
    }
    let properties = write_json(dir.path(), "properties.json", &catalog);
    let target_config = write_json(dir.path(), "target.json", &dst.config());
    // pipelinewise-tap-postgres [--state S] | target-postgres-rs: the state lines.
    let run = |state: Option<&Path>| -> Vec<Value> {
        let mut cmd = Command::new(&pw);
        cmd.arg("--config")
            .arg(&config)
            .arg("--properties")
            .arg(&properties);
        if let Some(s) = state {
            cmd.arg("--state").arg(s);
        }
        let mut tap = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let target = Command::new(bin("target-postgres-rs"))
            .arg("--config")
            .arg(&target_config)
            .stdin(Stdio::from(tap.stdout.take().unwrap()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let tap_err = {
            let mut e = tap.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s).unwrap();
                s
            })
        };
        let target_out = target.wait_with_output().unwrap();
        let tap_status = tap.wait().unwrap();
        let tap_err = tap_err.join().unwrap();
        assert!(tap_status.success(), "pipelinewise tap failed:\n{tap_err}");
        assert!(
            target_out.status.success(),
            "our target failed on pipelinewise output:\n{}",
            String::from_utf8_lossy(&target_out.stderr)
        );
        assert_quiet_log(
            "target-postgres-rs",
            &String::from_utf8_lossy(&target_out.stderr),
        );
        String::from_utf8_lossy(&target_out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("state lines are JSON"))
            .collect()
    };
    let states = run(None);
    let last = states.last().cloned().unwrap_or_default();
    assert_eq!(
        last["bookmarks"]["public-products"]["replication_key_value"],
        json!(40),
        "the target did not echo pipelinewise's final state: {states:?}"
    );
    // Same rows: compare the text of the columns pipelinewise types exactly
    // (it sends a date as a date-time at midnight UTC: compare the date).
    let mut s = src.client();
    let mut d = dst.client();
    for c in [&mut s, &mut d] {
        c.batch_execute("SET TimeZone = 'UTC'").unwrap();
    }
    for (table, cols) in [
        (
            "products",
            "id, name, price, (sold_on AT TIME ZONE 'UTC')::date, active, code::text, note",
        ),
        ("order lines", "order_id, line, qty"),
    ] {
        let q = |c: &mut postgres::Client, schema: &str| -> Vec<String> {
            c.query(
                &format!(
                    "SELECT row({cols})::text FROM {}.{} ORDER BY 1",
                    pg_quote(schema),
                    pg_quote(table)
                ),
                &[],
            )
            .unwrap_or_else(|e| panic!("{schema}.{table}: {e}"))
            .into_iter()
            .map(|r| r.get(0))
            .collect()
        };
        let want = q(&mut s, "public");
        let got = q(&mut d, "public");
        assert_eq!(got.len(), want.len(), "{table}: row count");
        assert_eq!(got, want, "{table}: values");
    }

    // The state our target printed is the state pipelinewise resumes from:
    // with a canary removed at the destination (below the bookmark) and a new
    // source row, the second run brings the new row and not the canary.
    s.batch_execute("INSERT INTO products (id, name) VALUES (41, 'new')")
        .unwrap();
    d.batch_execute("DELETE FROM public.products WHERE id = 1")
        .unwrap();
    let state = write_json(dir.path(), "state.json", &last);
    let states = run(Some(&state));
    let ids: Vec<i32> = d
        .query(
            "SELECT id::int FROM public.products WHERE id IN (1, 40, 41) ORDER BY id",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ids,
        [40, 41],
        "second run from our state: rows 1 (canary), 40, 41"
    );
    assert_eq!(
        states.last().unwrap()["bookmarks"]["public-products"]["replication_key_value"],
        json!(41)
    );
}

/// A target that fails keeps reading its input to the end before it exits
/// non-zero, so the tap upstream is never killed by a broken pipe (and the
/// orchestrator reports the target's error, not the tap's).
#[test]
fn target_reads_its_input_to_the_end_after_an_error() {
    let dst = cluster().create_database("interop_drain");
    let dir = tempfile::tempdir().unwrap();
    let mut config = dst.config();
    config["batch_size_rows"] = json!(10);
    let config = write_json(dir.path(), "target.json", &config);
    let filler = |n: usize, out: &mut Vec<u8>| {
        for i in 0..n {
            writeln!(
                out,
                r#"{{"type":"RECORD","stream":"public-fine","record":{{"id":{i},"pad":"{}"}}}}"#,
                "x".repeat(100)
            )
            .unwrap();
        }
    };
    let schema = |stream: &str, id_type: &str| {
        format!(
            r#"{{"type":"SCHEMA","stream":"{stream}","schema":{{"type":"object","properties":{{"id":{{"type":"integer","x-sql-datatype":"{id_type}"}},"pad":{{"type":["null","string"]}}}}}},"key_properties":["id"]}}"#
        )
    };
    // Two kinds of failure: a protocol error found while parsing (a RECORD for
    // a stream with no SCHEMA), and a database error found at the first flush
    // (a value too large for the column's type).
    let cases = [
        (
            "record before schema",
            format!(
                "{}\n{}\n",
                schema("public-fine", "bigint"),
                r#"{"type":"RECORD","stream":"public-nowhere","record":{"id":1}}"#
            ),
        ),
        (
            "value out of range",
            format!(
                "{}\n{}\n{}\n",
                schema("public-fine", "bigint"),
                schema("public-small", "smallint"),
                r#"{"type":"RECORD","stream":"public-small","record":{"id":99999}}"#
            ),
        ),
    ];
    for (case, head) in cases {
        let mut input = head.into_bytes();
        filler(200_000, &mut input); // ~25 MB: far more than any pipe buffer
        let total = input.len();
        let mut child = Command::new(bin("target-postgres-rs"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&input).map(|_| total));
        let out = child.wait_with_output().unwrap();
        let written = writer.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            written.is_ok(),
            "{case}: the target stopped reading early ({written:?}); stderr:\n{stderr}"
        );
        assert!(!out.status.success(), "{case}: the target exited 0");
        assert!(
            !stderr.contains("panicked"),
            "{case}: the target panicked:\n{stderr}"
        );
        let line = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        let named = match case {
            "record before schema" => line.contains("public-nowhere"),
            _ => line.contains("public-small") || line.contains("small"),
        };
        assert!(
            named,
            "{case}: the last stderr line should name the failing stream: {stderr}"
        );
    }
}
