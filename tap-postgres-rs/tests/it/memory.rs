//! Memory stays flat with table size. (Throughput is measured by the e2e
//! `bench` binary: `cargo run --release --bin bench -- --scan`.)

use crate::common::{Setup, TAP};
use pg_testkit::catalog::select_only;
use pg_testkit::process::{drain_records, write_json};
use std::process::{Command, Stdio};

/// Loads `bench_wide` from the repo's benchmark dataset with `rows` rows.
fn load_bench_wide(db: &pg_testkit::TestDb, rows: u64) {
    let sql = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/dataset.sql"))
        .unwrap();
    let start = sql.find("CREATE TABLE bench_wide").unwrap();
    let end = sql.find("CREATE TABLE bench_narrow").unwrap();
    let body = sql[start..end].replace(":rows::bigint", &format!("{rows}::bigint"));
    let mut client = db.client();
    client.batch_execute(&body).unwrap();
    client
        .batch_execute("VACUUM (FREEZE, ANALYZE) bench_wide")
        .unwrap();
}

/// Runs a FULL_TABLE sync of bench_wide, draining stdout; returns (records,
/// peak RSS in kB sampled from /proc while it runs).
fn sync_bench_wide(setup: &Setup) -> (u64, u64) {
    let catalog = select_only(
        &setup.discover(),
        &["public-bench_wide"],
        "FULL_TABLE",
        None,
    );
    let cat = write_json(setup.dir.path(), "cat.json", &catalog);
    let mut child = Command::new(TAP)
        .arg("--config")
        .arg(&setup.config)
        .arg("--catalog")
        .arg(&cat)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = drain_records(&mut child);
    assert!(child.wait().unwrap().success());
    (d.records, d.peak_rss_kb)
}

#[test]
fn peak_memory_is_flat_at_ten_times_the_rows() {
    let cluster = pg_testkit::cluster();
    let small_db = cluster.create_database("tap_mem_small");
    let big_db = cluster.create_database("tap_mem_big");
    load_bench_wide(&small_db, 20_000);
    load_bench_wide(&big_db, 200_000);
    let (n_small, small) = sync_bench_wide(&Setup::new(&small_db.config()));
    let (n_big, big) = sync_bench_wide(&Setup::new(&big_db.config()));
    assert_eq!((n_small, n_big), (20_000, 200_000));
    println!("peak RSS: {small} kB at 20k rows, {big} kB at 200k rows");
    assert!(small > 0 && big > 0, "no /proc samples");
    assert!(
        big <= small + 4 * 1024,
        "peak RSS grew from {small} kB to {big} kB"
    );
}
