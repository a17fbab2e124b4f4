//! Progress a person can watch: with a short interval (the hidden
//! `SINGER_PG_RS_PROGRESS_SECONDS`), both binaries log per-stream progress
//! lines while rows move and a summary at the end, in a fixed shape.

use std::process::{Command, Stdio};

use e2e_tests::{bin, discover, select, write_json};
use pg_testkit::cluster;

/// A log line with its timestamp and every number replaced by `N`.
fn shape(line: &str) -> String {
    let line = line.split_once("  ").map_or(line, |(_, rest)| rest);
    let mut out = String::new();
    let mut in_number = false;
    for c in line.chars() {
        if c.is_ascii_digit() || (in_number && c == '.') {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

#[test]
fn tap_and_target_log_progress_and_summaries() {
    let src = cluster().create_database("progress_src");
    let dst = cluster().create_database("progress_dst");
    src.client()
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, pad text);
             INSERT INTO big SELECT i, repeat('x', 200) FROM generate_series(1, 150000) i;
             CREATE TABLE nokey (a int);
             INSERT INTO nokey SELECT i FROM generate_series(1, 10) i;",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tap_config = write_json(dir.path(), "tap.json", &src.config());
    let mut catalog = discover(&tap_config);
    select(
        &mut catalog,
        &["public-big", "public-nokey"],
        "FULL_TABLE",
        None,
    );
    let catalog = write_json(dir.path(), "catalog.json", &catalog);
    let mut tap = Command::new(bin("tap-postgres-rs"))
        .arg("--config")
        .arg(&tap_config)
        .arg("--catalog")
        .arg(&catalog)
        .env("SINGER_PG_RS_PROGRESS_SECONDS", "0.2")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut target_config_batches: serde_json::Value = dst.config();
    target_config_batches["batch_size_rows"] = serde_json::json!(10000);
    let target_config = write_json(dir.path(), "target.json", &target_config_batches);
    let target = Command::new(bin("target-postgres-rs"))
        .arg("--config")
        .arg(&target_config)
        .env("SINGER_PG_RS_PROGRESS_SECONDS", "0.2")
        .env_remove("RUST_LOG")
        .stdin(tap.stdout.take().unwrap())
        .output()
        .unwrap();
    let tap_err = std::io::read_to_string(tap.stderr.take().unwrap()).unwrap();
    assert!(tap.wait().unwrap().success(), "{tap_err}");
    let target_err = String::from_utf8_lossy(&target.stderr).into_owned();
    assert!(target.status.success(), "{target_err}");

    let shapes = |log: &str| -> Vec<String> { log.lines().map(shape).collect() };
    let tap_lines = shapes(&tap_err);
    let target_lines = shapes(&target_err);
    for want in [
        "INFO singer_core::progress: progress stream=public-big rows=N rows_per_s=N elapsed_s=N",
        "INFO singer_core::progress: progress total streams=N rows=N rows_per_s=N elapsed_s=N",
        "INFO singer_core::progress: sync finished stream=public-big rows=N rows_per_s=N seconds=N",
        "INFO singer_core::progress: sync finished stream=public-nokey rows=N rows_per_s=N seconds=N",
        "INFO singer_core::progress: run summary streams=N rows=N rows_per_s=N seconds=N",
    ] {
        assert!(tap_lines.iter().any(|l| l == want), "tap log lacks {want:?}:\n{tap_err}");
    }
    assert!(
        tap_err.contains("sync finished stream=public-big rows=150000 "),
        "{tap_err}"
    );
    assert!(
        tap_err.contains("run summary streams=2 rows=150010 "),
        "{tap_err}"
    );
    for want in [
        "INFO singer_core::progress: progress stream=public-big rows_committed=N batches=N rows_per_s=N elapsed_s=N",
        "INFO singer_core::progress: stream summary stream=public-big rows_loaded=N rows_deleted=N batches=N rows_per_s=N seconds=N",
        "INFO singer_core::progress: run summary streams=N rows=N rows_per_s=N seconds=N",
    ] {
        assert!(target_lines.iter().any(|l| l == want), "target log lacks {want:?}:\n{target_err}");
    }
    assert!(
        target_err.contains(
            "stream summary stream=public-big rows_loaded=150000 rows_deleted=0 batches=15 "
        ),
        "{target_err}"
    );
    // Quiet by default: no line per batch, no `activated version … rows=0`.
    assert!(!target_err.contains("batch loaded"), "{target_err}");
    assert!(!target_err.contains("activated version"), "{target_err}");
}

/// A second FULL_TABLE run of a key-less table with soft delete: the log
/// says what ACTIVATE_VERSION did and how to query the live rows.
#[test]
fn activate_version_says_how_to_query_live_rows() {
    let src = cluster().create_database("activate_log_src");
    let dst = cluster().create_database("activate_log_dst");
    src.client()
        .batch_execute(
            "CREATE TABLE nokey (a int); INSERT INTO nokey SELECT i FROM generate_series(1, 7) i;",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Without row identity, each copy of a key-less table is new rows.
    let mut tap = src.config();
    tap["keyless_row_identity"] = serde_json::json!(false);
    let tap_config = write_json(dir.path(), "tap.json", &tap);
    let target_config = write_json(dir.path(), "target.json", &dst.config());
    let mut catalog = discover(&tap_config);
    select(&mut catalog, &["public-nokey"], "FULL_TABLE", None);
    let catalog = write_json(dir.path(), "catalog.json", &catalog);
    e2e_tests::pipe(&tap_config, &catalog, None, &target_config).assert_success();
    let second = e2e_tests::pipe(&tap_config, &catalog, None, &target_config);
    second.assert_success();
    assert!(
        second.target_stderr.contains(
            "activated version: 7 rows of older versions marked deleted (_sdc_deleted_at); live rows: WHERE _sdc_deleted_at IS NULL"
        ),
        "{}",
        second.target_stderr
    );
    let counts: (i64, i64) = {
        let row = dst
            .client()
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE _sdc_deleted_at IS NULL) FROM public.nokey",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        counts,
        (14, 7),
        "both versions kept; the live ones are the newest"
    );
}
