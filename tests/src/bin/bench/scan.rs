//! `bench --scan`: the tap's FULL_TABLE read of the benchmark table against
//! the server's own COPY, and the cost of the resumption scheme (plain scan
//! in ctid order) next to ordering by the key, on the table as loaded and on
//! the same rows stored in random key order.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::Bench;

pub fn run(b: &Bench, rows: u64) {
    let mut client = pg_testkit::cluster().client("bench_src");
    let table = pg_connect::quote_qualified("public", &b.table);
    client
        .batch_execute(&format!(
            "CREATE TABLE bench_shuffled AS SELECT * FROM {table} ORDER BY md5(id::text);
             ALTER TABLE bench_shuffled ADD PRIMARY KEY (id);"
        ))
        .unwrap();
    // VACUUM can't run in the transaction of a multi-statement query.
    for t in ["bench_shuffled", table.as_str()] {
        client
            .batch_execute(&format!("VACUUM (FREEZE, ANALYZE) {t}"))
            .unwrap();
    }
    let pages: i64 = client
        .query_one(&format!("SELECT pg_relation_size('{table}') / 8192"), &[])
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
    let (copy_bytes, copy_s) = drain(&format!("COPY {table} TO STDOUT"));
    let (_, plain_s) = drain(&format!("COPY (SELECT *, ctid FROM {table}) TO STDOUT"));
    let (_, ordered_s) = drain(&format!(
        "COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT"
    ));
    let (_, resume_s) = drain(&format!(
        "COPY (SELECT *, ctid FROM {table} WHERE ctid > '({},0)'::tid OR age(xmin) <= age('{xmax}'::xid) OR xmin = ANY('{{}}'::xid[])) TO STDOUT",
        pages / 2
    ));
    // The same rows stored in random key order: what ORDER BY the key costs
    // when the table is not physically sorted by it.
    let (_, shuffled_plain_s) = drain("COPY (SELECT *, ctid FROM bench_shuffled) TO STDOUT");
    let (_, shuffled_ordered_s) =
        drain("COPY (SELECT * FROM bench_shuffled ORDER BY id) TO STDOUT");

    // The tap itself, counting its RECORDs and its Singer bytes.
    let start = Instant::now();
    // TAP_WRAP="perf record -g -o /tmp/tap.perf --" (or `/usr/bin/time -o F`):
    // run the tap under a profiler or timer.
    let wrap = std::env::var("TAP_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut tap = b.tap();
    if let Some(program) = words.next() {
        let mut wrapped = Command::new(program);
        wrapped
            .args(words)
            .arg(tap.get_program())
            .args(tap.get_args());
        tap = wrapped;
    }
    let mut tap = tap
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pg_testkit::process::Drained {
        records,
        bytes,
        peak_rss_kb: peak,
    } = pg_testkit::process::drain_records(&mut tap);
    assert!(tap.wait().unwrap().success());
    let tap_s = start.elapsed().as_secs_f64();
    assert_eq!(records, rows);
    println!(
        "{} {rows} rows: raw COPY {copy_s:.2}s ({:.0} MB text); plain scan+ctid {plain_s:.2}s; \
         ORDER BY id {ordered_s:.2}s; resume from the middle page {resume_s:.2}s; \
         shuffled copy: plain {shuffled_plain_s:.2}s, ORDER BY id {shuffled_ordered_s:.2}s; \
         tap {tap_s:.2}s = {:.0} rows/s, {:.0} MB/s of Singer JSON, peak RSS {peak} kB",
        b.table,
        copy_bytes as f64 / 1e6,
        rows as f64 / tap_s,
        bytes as f64 / 1e6 / tap_s
    );
}
