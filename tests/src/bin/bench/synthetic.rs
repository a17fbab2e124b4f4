//! `bench --synthetic`: the target alone on a generated, tap-like
//! `bench_wide` stream. Prints rows/s and peak RSS for a full load into a new
//! table, an upsert re-load of the same rows, and, for comparison, a plain
//! text `COPY FROM` of the same rows into a table with the same primary key
//! (the write limit). `BENCH_LOG=info` shows the target's batch lines.

use std::io::{BufWriter, Write};
use std::process::Command;
use std::time::Instant;

use e2e_tests::{bin, write_json};
use serde_json::json;

fn md5ish(i: u64) -> String {
    // Deterministic hex, shaped like md5 text (not the real digest).
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut s = String::with_capacity(40);
    for _ in 0..5 {
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        s.push_str(&format!("{:08x}", x as u32));
    }
    s
}

/// Writes a SCHEMA like tap-postgres-rs sends for bench_wide, then `rows`
/// RECORDs, and the same rows as COPY text.
fn generate(rows: u64, singer: &std::path::Path, copy: &std::path::Path) {
    let mut s = BufWriter::with_capacity(1 << 20, std::fs::File::create(singer).unwrap());
    let mut c = BufWriter::with_capacity(1 << 20, std::fs::File::create(copy).unwrap());
    let x = |t: &str, mut v: serde_json::Value| {
        v["x-sql-datatype"] = json!(t);
        v
    };
    let schema = json!({"type": "SCHEMA", "stream": "public-bench_wide", "key_properties": ["id"], "schema": {"type": "object", "properties": {
        "id": x("bigint", json!({"type": "integer"})),
        "int_col": x("integer", json!({"type": ["null", "integer"]})),
        "small_col": x("smallint", json!({"type": ["null", "integer"]})),
        "num_col": x("numeric(18,4)", json!({"type": ["null", "number", "string"]})),
        "dbl_col": x("double precision", json!({"type": ["null", "number", "string"]})),
        "bool_col": x("boolean", json!({"type": ["null", "boolean"]})),
        "text_col": x("text", json!({"type": ["null", "string"]})),
        "vc_col": x("character varying(255)", json!({"type": ["null", "string"], "maxLength": 255})),
        "ts_col": x("timestamp with time zone", json!({"type": ["null", "string"], "format": "date-time"})),
        "date_col": x("date", json!({"type": ["null", "string"], "format": "date"})),
        "uuid_col": x("uuid", json!({"type": ["null", "string"], "format": "uuid"})),
        "json_col": x("jsonb", json!({})),
        "arr_col": x("text[]", json!({"type": ["null", "array"], "items": {"type": ["null", "string"]}})),
        "updated_at": x("timestamp with time zone", json!({"type": "string", "format": "date-time"})),
    }}});
    writeln!(s, "{schema}").unwrap();
    writeln!(
        s,
        r#"{{"type":"ACTIVATE_VERSION","stream":"public-bench_wide","version":1}}"#
    )
    .unwrap();
    for i in 1..=rows {
        let text = if i % 997 == 0 {
            "O'Reilly \"q\" back\\slash\ttab\nnewline ü é 漢字 ✓".to_owned()
        } else {
            md5ish(i)
        };
        let vc = (i % 10 != 6).then(|| {
            format!(
                "customer-{i}-{}",
                "abcdefghijklmnopqrstuvwxyz"
                    .chars()
                    .nth((i % 26) as usize)
                    .unwrap()
                    .to_string()
                    .repeat((i % 60) as usize)
            )
        });
        let num = (i % 10 != 3).then(|| {
            format!(
                "{}.{:04}",
                (i * 104729 % 2_000_000) as i64 - 1_000_000,
                i % 10000
            )
        });
        let dbl = (i % 10 != 4).then(|| {
            format!(
                "{:?}",
                (i as f64 / 7.0) * if i % 2 == 0 { 1.0 } else { -1.0 }
            )
        });
        let ts = format!(
            "2020-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
            1 + i % 12,
            1 + i % 28,
            i % 24,
            i % 60,
            (i / 60) % 60,
            i % 1_000_000
        );
        let date = format!("20{:02}-{:02}-{:02}", i % 25, 1 + i % 12, 1 + i % 28);
        let uuid = {
            let h = md5ish(i + 7);
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        };
        let jsonv = (i % 10 != 7).then(|| format!(r#"{{"k": {}, "name": "item-{i}", "price": {}.{:02}, "tags": ["t{}", "t{}"], "active": {}}}"#, i % 100, i % 100, i % 100, i % 5, i % 7, i % 2 == 0));
        let arr = (i % 10 != 8).then(|| {
            (
                format!("a{}", i % 7),
                format!("b{}", i % 11),
                format!("c,{}", i % 13),
            )
        });
        let upd = format!(
            "2024-01-{:02}T{:02}:{:02}:{:02}.{:03}000+00:00",
            1 + (i / 86400) % 28,
            (i / 3600) % 24,
            (i / 60) % 60,
            i % 60,
            i % 1000
        );
        let int_col = ((i * 7919) % 2_000_000_001) as i64 - 1_000_000_000;
        let small = ((i * 31) % 65535) as i64 - 32767;
        let boolv = (i % 10 != 5).then_some(i % 3 == 0);
        let js = |o: Option<String>| {
            o.map(|v| serde_json::to_string(&v).unwrap())
                .unwrap_or("null".into())
        };
        writeln!(
            s,
            r#"{{"type":"RECORD","stream":"public-bench_wide","record":{{"id":{i},"int_col":{int_col},"small_col":{small},"num_col":{},"dbl_col":{},"bool_col":{},"text_col":{},"vc_col":{},"ts_col":"{ts}","date_col":"{date}","uuid_col":"{uuid}","json_col":{},"arr_col":{},"updated_at":"{upd}"}},"version":1,"time_extracted":"2026-11-22T00:00:00.000000+00:00"}}"#,
            num.clone().unwrap_or("null".into()),
            dbl.clone().unwrap_or("null".into()),
            boolv.map(|b| b.to_string()).unwrap_or("null".into()),
            serde_json::to_string(&text).unwrap(),
            js(vc.clone()),
            jsonv.clone().unwrap_or("null".into()),
            arr.as_ref().map(|(a, b, c)| format!(r#"["{a}","{b}","{c}"]"#)).unwrap_or("null".into()),
        )
        .unwrap();
        let esc = |t: &str| {
            t.replace('\\', "\\\\")
                .replace('\t', "\\t")
                .replace('\n', "\\n")
        };
        let n = |o: Option<String>| o.unwrap_or("\\N".into());
        writeln!(
            c,
            "{i}\t{int_col}\t{small}\t{}\t{}\t{}\t{}\t{}\t{ts}\t{date}\t{uuid}\t{}\t{}\t{upd}",
            n(num),
            n(dbl),
            n(boolv.map(|b| b.to_string())),
            esc(&text),
            n(vc),
            n(jsonv.map(|j| esc(&j))),
            n(arr.map(|(a, b, c)| format!("{{{a},{b},\"{c}\"}}"))),
        )
        .unwrap();
    }
    writeln!(
        s,
        r#"{{"type":"ACTIVATE_VERSION","stream":"public-bench_wide","version":1}}"#
    )
    .unwrap();
    writeln!(
        s,
        r#"{{"type":"STATE","value":{{"bookmarks":{{"public-bench_wide":{{"version":1}}}}}}}}"#
    )
    .unwrap();
}

/// Wall seconds, peak RSS MB, target CPU seconds.
fn timed_target(db: &pg_testkit::TestDb, input: &std::path::Path) -> (f64, u64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_json(dir.path(), "target.json", &db.config());
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M %U %S"])
        .arg(bin("target-postgres-rs"))
        .arg("--config")
        .arg(&cfg)
        .arg("--input")
        .arg(input)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or("warn".into()),
        )
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for l in stderr
        .lines()
        .filter(|l| l.contains("batch loaded") || l.contains("flush step"))
    {
        println!("  {l}");
    }
    let last: Vec<&str> = stderr.lines().last().unwrap().split_whitespace().collect();
    let rss_kb: u64 = last[0].parse().unwrap();
    let cpu: f64 = last[1].parse::<f64>().unwrap() + last[2].parse::<f64>().unwrap();
    (secs, rss_kb / 1024, cpu)
}

/// Loads `rows` generated records twice (new table, then upsert) and
/// compares with a plain text `COPY FROM` of the same rows.
pub fn run(rows: u64) {
    let dir = tempfile::tempdir().unwrap();
    let singer = dir.path().join("bench_wide.singer");
    let copy = dir.path().join("bench_wide.copy");
    generate(rows, &singer, &copy);
    let mb = std::fs::metadata(&singer).unwrap().len() as f64 / 1e6;
    println!("rows {rows}, singer stream {mb:.0} MB");

    let db = pg_testkit::cluster().create_database("bench_synthetic");
    let (secs, rss, cpu) = timed_target(&db, &singer);
    println!(
        "full load (new table): {secs:.2} s, {:.0} rows/s, peak RSS {rss} MB, target CPU {cpu:.2} s",
        rows as f64 / secs
    );
    let (secs, rss, cpu) = timed_target(&db, &singer);
    println!(
        "upsert re-load:        {secs:.2} s, {:.0} rows/s, peak RSS {rss} MB, target CPU {cpu:.2} s",
        rows as f64 / secs
    );
    let n: i64 = db
        .client()
        .query_one("SELECT count(*) FROM public.bench_wide", &[])
        .unwrap()
        .get(0);
    assert_eq!(n as u64, rows);

    // The write limit: plain text COPY FROM into the same shape of table.
    let mut c = db.client();
    c.batch_execute(
        "CREATE TABLE public.copy_wide (id bigint PRIMARY KEY, int_col integer, small_col smallint, num_col numeric(18,4), \
         dbl_col double precision, bool_col boolean, text_col text, vc_col varchar(255), ts_col timestamptz, date_col date, \
         uuid_col uuid, json_col jsonb, arr_col text[], updated_at timestamptz NOT NULL)",
    )
    .unwrap();
    let start = Instant::now();
    let mut w = c.copy_in("COPY public.copy_wide FROM STDIN").unwrap();
    std::io::copy(&mut std::fs::File::open(&copy).unwrap(), &mut w).unwrap();
    w.finish().unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "plain text COPY FROM:  {secs:.2} s, {:.0} rows/s",
        rows as f64 / secs
    );
    // Every value the target landed equals what plain COPY landed.
    let differing: i64 = c
        .query_one(
            "SELECT count(*) FROM public.bench_wide b FULL JOIN public.copy_wide c USING (id) \
             WHERE (b.int_col, b.small_col, b.num_col, b.dbl_col, b.bool_col, b.text_col, b.vc_col, b.ts_col, \
                    b.date_col, b.uuid_col, b.json_col, b.arr_col, b.updated_at) \
             IS DISTINCT FROM (c.int_col, c.small_col, c.num_col, c.dbl_col, c.bool_col, c.text_col, c.vc_col, \
                    c.ts_col, c.date_col, c.uuid_col, c.json_col, c.arr_col, c.updated_at)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(differing, 0);
    println!("all {rows} rows identical to the plain COPY");
}
