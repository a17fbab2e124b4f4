//! Memory stays flat with table size; throughput on bench_wide (ignored: run
//! with `cargo test --release -p tap-postgres-rs --test perf -- --ignored --nocapture`).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{select, write_json, Setup, TAP};

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

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs a FULL_TABLE sync of bench_wide, draining stdout; returns (records,
/// bytes, peak RSS in kB sampled from /proc while it runs, seconds).
fn sync_bench_wide(setup: &Setup) -> (u64, u64, u64, f64) {
    let catalog = select(
        &setup.discover(),
        &["public-bench_wide"],
        "FULL_TABLE",
        None,
    );
    let cat = write_json(setup.dir.path(), "cat.json", &catalog);
    let start = Instant::now();
    // TAP_WRAP="perf record -g -o /tmp/tap.perf --" (or `/usr/bin/time -o F`):
    // run the tap under a profiler or timer.
    let wrap = std::env::var("TAP_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(TAP);
            c
        }
        None => Command::new(TAP),
    };
    let mut child = cmd
        .arg("--config")
        .arg(&setup.config)
        .arg("--catalog")
        .arg(&cat)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut reader = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
    let (mut records, mut bytes, mut peak) = (0u64, 0u64, 0u64);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).unwrap();
        if n == 0 {
            break;
        }
        bytes += n as u64;
        if line.starts_with(br#"{"type":"RECORD""#) {
            records += 1;
            if records % 2000 == 0 {
                peak = peak.max(vm_hwm_kb(pid).unwrap_or(0));
            }
        }
    }
    assert!(child.wait().unwrap().success());
    (records, bytes, peak, start.elapsed().as_secs_f64())
}

#[test]
fn peak_memory_is_flat_at_ten_times_the_rows() {
    let cluster = pg_testkit::cluster();
    let small_db = cluster.create_database("tap_mem_small");
    let big_db = cluster.create_database("tap_mem_big");
    load_bench_wide(&small_db, 20_000);
    load_bench_wide(&big_db, 200_000);
    let (n_small, _, small, _) = sync_bench_wide(&Setup::new(&small_db.config()));
    let (n_big, _, big, _) = sync_bench_wide(&Setup::new(&big_db.config()));
    assert_eq!((n_small, n_big), (20_000, 200_000));
    println!("peak RSS: {small} kB at 20k rows, {big} kB at 200k rows");
    assert!(small > 0 && big > 0, "no /proc samples");
    assert!(
        big <= small + 4 * 1024,
        "peak RSS grew from {small} kB to {big} kB"
    );
}

/// Throughput against the server's own COPY, and the cost of the FULL_TABLE
/// resumption scheme (plain scan in ctid order) next to ordering by the key.
#[test]
#[ignore]
fn throughput_bench_wide() {
    let rows: u64 = std::env::var("TAP_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let db = pg_testkit::cluster().create_database("tap_bench");
    load_bench_wide(&db, rows);
    let mut client = db.client();
    client
        .batch_execute(
            "CREATE TABLE bench_shuffled AS SELECT * FROM bench_wide ORDER BY md5(id::text);
             ALTER TABLE bench_shuffled ADD PRIMARY KEY (id);",
        )
        .unwrap();
    client
        .batch_execute("VACUUM (FREEZE, ANALYZE) bench_shuffled")
        .unwrap();
    let pages: i64 = client
        .query_one("SELECT pg_relation_size('bench_wide') / 8192", &[])
        .unwrap()
        .get(0);
    let xmax: i64 = client
        .query_one(
            "SELECT (txid_snapshot_xmax(txid_current_snapshot()) % 4294967296)::bigint",
            &[],
        )
        .unwrap()
        .get(0);
    let mut drain = |sql: &str| {
        let start = Instant::now();
        let mut r = client.copy_out(sql).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        (total, start.elapsed().as_secs_f64())
    };
    let (copy_bytes, copy_s) = drain("COPY bench_wide TO STDOUT");
    let (_, plain_s) = drain("COPY (SELECT *, ctid FROM bench_wide) TO STDOUT");
    let (_, ordered_s) = drain("COPY (SELECT * FROM bench_wide ORDER BY id) TO STDOUT");
    let (_, resume_s) = drain(&format!(
        "COPY (SELECT *, ctid FROM bench_wide WHERE ctid > '({},0)'::tid OR age(xmin) <= age('{xmax}'::xid) OR xmin = ANY('{{}}'::xid[])) TO STDOUT",
        pages / 2
    ));
    // The same rows stored in random key order: what ORDER BY the key costs
    // when the table is not physically sorted by it.
    let (_, shuffled_plain_s) = drain("COPY (SELECT *, ctid FROM bench_shuffled) TO STDOUT");
    let (_, shuffled_ordered_s) =
        drain("COPY (SELECT * FROM bench_shuffled ORDER BY id) TO STDOUT");
    let (records, bytes, peak, tap_s) = sync_bench_wide(&Setup::new(&db.config()));
    assert_eq!(records, rows);
    println!(
        "bench_wide {rows} rows: raw COPY {copy_s:.2}s ({:.0} MB text); plain scan+ctid {plain_s:.2}s; \
         ORDER BY id {ordered_s:.2}s; resume from the middle page {resume_s:.2}s; \
         shuffled copy: plain {shuffled_plain_s:.2}s, ORDER BY id {shuffled_ordered_s:.2}s; \
         tap {tap_s:.2}s = {:.0} rows/s, {:.0} MB/s of Singer JSON, peak RSS {peak} kB",
        copy_bytes as f64 / 1e6,
        rows as f64 / tap_s,
        bytes as f64 / 1e6 / tap_s
    );
}
