//! `parallelism` > 1: several streams load at once on their own connections,
//! land exactly, print only STATE values whose rows are all committed, and
//! converge after a kill -9 when rerun from the last printed state.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use crate::common::*;
use pg_testkit::TestDb;
use serde_json::{json, Value};

const KEYED: [&str; 4] = ["s0", "s1", "s2", "s3"];
const KEYLESS: &str = "k0";

fn schema(stream: &str, keys: &[&str]) -> String {
    json!({"type": "SCHEMA", "stream": stream, "key_properties": keys, "schema": {"type": "object",
        "properties": {"id": {"type": "integer"}, "v": {"type": ["null", "string"]}}}})
    .to_string()
}

fn schemas() -> Vec<String> {
    let mut out: Vec<String> = KEYED.iter().map(|s| schema(s, &["id"])).collect();
    out.push(schema(KEYLESS, &[]));
    out
}

/// Streams interleaved record by record: each keyed stream sends ids
/// `0..n`, then every id again updated (every 7th deleted); the key-less
/// stream sends `0..n` once. STATE `{"pos": <its own line index>}` every
/// `every` lines and at the end.
fn input(n: i64, every: usize) -> Vec<String> {
    let mut lines = schemas();
    let state = |lines: &mut Vec<String>| {
        let pos = lines.len();
        lines.push(json!({"type": "STATE", "value": {"pos": pos}}).to_string());
    };
    for i in 0..2 * n {
        for s in KEYED {
            let id = i % n;
            let mut rec = json!({"id": id, "v": format!("{s} {i}")});
            if i >= n && id % 7 == 0 {
                rec["_sdc_deleted_at"] = json!("2024-01-01T00:00:00Z");
            }
            lines.push(json!({"type": "RECORD", "stream": s, "record": rec}).to_string());
        }
        if i < n {
            let rec = json!({"id": i, "v": format!("{KEYLESS} {i}")});
            lines.push(json!({"type": "RECORD", "stream": KEYLESS, "record": rec}).to_string());
        }
        if lines.len() % every < 6 {
            state(&mut lines);
        }
    }
    state(&mut lines);
    lines
}

fn bytes(lines: &[String]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    s.into_bytes()
}

fn rows(db: &TestDb, table: &str) -> Vec<(i64, String)> {
    db.client()
        .query(
            &format!("SELECT id, v FROM public.{table} ORDER BY id, v"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Every keyed table holds exactly what `input(n, _)` leaves: the last
/// version of each row (deleted ones gone). The key-less table holds every
/// row, once, but for `after_kill`: then rows of the one COMMIT a kill may
/// have caught before its STATE was printed (the documented key-less window,
/// README's value contract) may be there twice, and only those: one
/// contiguous run of rows, each twice.
fn assert_landed(db: &TestDb, n: i64, after_kill: bool) {
    for s in KEYED {
        let expected: BTreeMap<i64, String> = (0..n)
            .filter(|id| id % 7 != 0)
            .map(|id| (id, format!("{s} {}", n + id)))
            .collect();
        let expected: Vec<(i64, String)> = expected.into_iter().collect();
        let got = rows(db, s);
        assert_eq!(got.len(), expected.len(), "rows of stream {s}");
        assert!(got == expected, "stream {s}: the rows differ");
    }
    let expected: Vec<(i64, String)> = (0..n).map(|i| (i, format!("{KEYLESS} {i}"))).collect();
    let mut got = rows(db, KEYLESS);
    if after_kill {
        let before = got.len();
        got.dedup();
        let twice: Vec<i64> = {
            let all = rows(db, KEYLESS);
            all.windows(2)
                .filter(|w| w[0] == w[1])
                .map(|w| w[0].0)
                .collect()
        };
        assert_eq!(before - got.len(), twice.len());
        if let (Some(first), Some(last)) = (twice.first(), twice.last()) {
            assert_eq!(
                (last - first + 1) as usize,
                twice.len(),
                "key-less rows twice beyond one commit: {twice:?}"
            );
            // One flush: at most a full batch (300) and the rows up to the
            // next STATE (fewer than 400 lines).
            assert!(
                twice.len() < 700,
                "more than one flush twice: {}",
                twice.len()
            );
        }
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "rows of key-less stream {KEYLESS}"
    );
    assert!(
        got == expected,
        "key-less stream {KEYLESS}: the rows differ"
    );
}

fn settings(extra: Value) -> Value {
    let mut s = json!({"parallelism": 4, "batch_size_rows": 300, "hard_delete": true});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

#[test]
fn parallel_streams_land_exactly_and_print_the_last_state() {
    let db = pg_testkit::cluster().create_database("par_exact");
    let n = 2000;
    let lines = input(n, 500);
    let r = run(&db, settings(json!({})), &bytes(&lines));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_landed(&db, n, false);
    let states = r.stdout_json();
    assert!(states.len() >= 2, "{states:?}");
    assert_eq!(states.last().unwrap(), &json!({"pos": lines.len() - 1}));
    // Each printed once, in input order.
    let pos: Vec<u64> = states.iter().map(|s| s["pos"].as_u64().unwrap()).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
}

#[test]
fn parallel_states_are_printed_only_after_every_streams_rows_are_committed() {
    let db = pg_testkit::cluster().create_database("par_statecommit");
    // Only inserts, ids rising: a STATE says how far each stream had got.
    let mut lines = schemas();
    let mut sent: BTreeMap<&str, i64> = BTreeMap::new();
    for i in 0..3000i64 {
        // Streams at different paces, so the workers commit at different moments.
        for (k, s) in KEYED.iter().chain([&KEYLESS]).enumerate() {
            if i % (k as i64 + 1) == 0 {
                let id = sent.get(s).map_or(0, |v| v + 1);
                sent.insert(s, id);
                let rec = json!({"id": id, "v": "x"});
                lines.push(json!({"type": "RECORD", "stream": s, "record": rec}).to_string());
            }
        }
        if i % 97 == 0 {
            lines.push(json!({"type": "STATE", "value": sent}).to_string());
        }
    }
    lines.push(json!({"type": "STATE", "value": sent}).to_string());
    let cfg = config(&db, settings(json!({"batch_size_rows": 250})));
    let mut child = target(cfg.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let checker = {
        let db_name = db.name.clone();
        std::thread::spawn(move || {
            let mut c = pg_testkit::cluster().client(&db_name);
            let mut checked = 0;
            for l in BufReader::new(stdout).lines() {
                let state: Value = serde_json::from_str(&l.unwrap()).unwrap();
                // At the moment it is printed, every row before it is there
                // (and key-less rows only once).
                for (s, upto) in state.as_object().unwrap() {
                    let upto = upto.as_i64().unwrap();
                    let n: i64 = c
                        .query_one(
                            &format!("SELECT count(*) FROM public.{s} WHERE id <= $1"),
                            &[&upto],
                        )
                        .unwrap()
                        .get(0);
                    assert_eq!(
                        n,
                        upto + 1,
                        "state {state} printed before {s} had ids 0..={upto}"
                    );
                }
                checked += 1;
                let _ = tx.send(state);
            }
            checked
        })
    };
    for chunk in bytes(&lines).chunks(16 * 1024) {
        stdin.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let checked = checker.join().expect("every printed state was committed");
    let printed: Vec<Value> = rx.try_iter().collect();
    assert!(checked >= 3, "{printed:?}");
    assert_eq!(printed.last().unwrap(), &json!(sent));
    for s in KEYED.iter().chain([&KEYLESS]) {
        assert_eq!(
            pg_testkit::rows::count(&db, "public", s),
            Some(sent[s] + 1),
            "{s}"
        );
    }
}

/// Feeds `data` (`chunk` bytes every `sleep_ms`) to the target with
/// [`settings`], kills it (SIGKILL) after `delay_ms`: whether it had already
/// ended, and the last STATE it printed.
fn killed_run(
    db: &TestDb,
    data: &[u8],
    chunk: usize,
    sleep_ms: u64,
    delay_ms: u64,
) -> (bool, Option<Value>) {
    let cfg = config(db, settings(json!({})));
    let mut child = target(cfg.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut last = None;
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            last = Some(serde_json::from_str::<Value>(&l).unwrap());
        }
        last
    });
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || {
        for part in data.chunks(chunk) {
            if stdin.write_all(part).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(sleep_ms));
        }
    });
    std::thread::sleep(Duration::from_millis(delay_ms));
    let ended = child.try_wait().unwrap().is_some();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    feeder.join().unwrap();
    (ended, reader.join().unwrap())
}

#[test]
fn parallel_killed_at_random_moments_then_rerun_from_the_last_state_converges() {
    let n = 6000;
    let lines = input(n, 400);
    let all = bytes(&lines);
    let mut mid_run = 0;
    // Kill moments spread over the run (a fixed spread: reproducible).
    for (trial, delay_ms) in [150u64, 400, 700, 1100, 1600].into_iter().enumerate() {
        let db = pg_testkit::cluster().create_database(&format!("par_kill_{trial}"));
        let (_, last) = killed_run(&db, &all, 32 * 1024, 3, delay_ms);
        let final_pos = lines.len() as u64 - 1;
        if last
            .as_ref()
            .is_some_and(|s| s["pos"].as_u64() != Some(final_pos))
        {
            mid_run += 1;
        }
        // A rerun sends the SCHEMAs, then everything after the last printed STATE.
        let mut rerun = schemas();
        let from = last
            .as_ref()
            .map_or(schemas().len(), |s| s["pos"].as_u64().unwrap() as usize + 1);
        rerun.extend_from_slice(&lines[from..]);
        let r = run(&db, settings(json!({})), &bytes(&rerun));
        assert_eq!(r.code, Some(0), "trial {trial}: {}", r.stderr);
        assert_landed(&db, n, true);
    }
    // Most kills landed after some STATE and before the last.
    assert!(mid_run >= 3, "only {mid_run} of 5 kills landed mid-run");
}

/// A key-less stream that fills its batches ten times faster than the keyed
/// ones: a kill must never find key-less rows committed ahead of the last
/// printed STATE (a rerun from it would send them again), beyond the one
/// COMMIT in flight.
#[test]
fn parallel_keyless_rows_are_never_committed_past_the_last_printed_state() {
    let per = 10;
    let mut lines = schemas();
    let mut keyless_before: Vec<i64> = Vec::new(); // per line: key-less ids sent before it
    let mut sent = 0i64;
    for i in 0..4000i64 {
        for s in &KEYED[..3] {
            let rec = json!({"id": i, "v": format!("{s} {i}")});
            lines.push(json!({"type": "RECORD", "stream": s, "record": rec}).to_string());
        }
        for _ in 0..per {
            let rec = json!({"id": sent, "v": format!("{KEYLESS} {sent}")});
            lines.push(json!({"type": "RECORD", "stream": KEYLESS, "record": rec}).to_string());
            sent += 1;
        }
        if i % 7 == 0 {
            let pos = lines.len();
            lines.push(json!({"type": "STATE", "value": {"pos": pos}}).to_string());
        }
    }
    for l in &lines {
        keyless_before.push(if l.contains(KEYLESS) && l.contains("RECORD") {
            1
        } else {
            0
        });
    }
    let all = bytes(&lines);
    let mut mid_run = 0;
    for (trial, delay_ms) in [200u64, 400, 600, 800].into_iter().enumerate() {
        let db = pg_testkit::cluster().create_database(&format!("par_keyless_{trial}"));
        let (ended, last) = killed_run(&db, &all, 16 * 1024, 5, delay_ms);
        if ended {
            continue;
        }
        mid_run += 1;
        let upto = last.map_or(0, |s| s["pos"].as_u64().unwrap() as usize);
        let allowed: i64 = keyless_before[..upto].iter().sum();
        // Key-less ids rise in input order: ids from `allowed` on are rows
        // past the last printed STATE. The one COMMIT a kill can interrupt
        // before its STATE is printed may hold some (as with one loader: the
        // server completes a COMMIT it has received); more than that one
        // transaction would be a commit ahead of the printed STATE.
        let past: i64 = db
            .client()
            .query_one(
                &format!("SELECT count(DISTINCT xmin::text) FROM public.{KEYLESS} WHERE id >= $1"),
                &[&allowed],
            )
            .map_or(0, |r| r.get(0));
        assert!(
            past <= 1,
            "trial {trial}: key-less rows of {past} transactions committed past the last printed STATE (which covers {allowed} rows)"
        );
    }
    assert!(mid_run >= 3, "only {mid_run} of 4 kills landed mid-run");
}

/// Two workers each create a table in one new schema while both have a
/// batch open: the schema is created outside their transactions, so neither
/// waits for the other's COMMIT (which would wait for input the stalled one
/// holds up).
#[test]
fn parallel_workers_creating_tables_in_one_new_schema_do_not_wait_on_each_other() {
    let db = pg_testkit::cluster().create_database("par_newschema");
    let rec = |s: &str, id: i64| {
        json!({"type": "RECORD", "stream": s, "record": {"id": id, "v": "x"}}).to_string()
    };
    // Routed in turn: public-a and sales-c to worker 1, public-b and sales-d to worker 0.
    let mut lines = vec![schema("public-a", &["id"]), schema("public-b", &["id"])];
    for i in 0..50 {
        lines.push(rec("public-a", i));
        lines.push(rec("public-b", i));
    }
    lines.push(schema("sales-c", &["id"]));
    lines.push(schema("sales-d", &["id"]));
    // Far more than the channels hold, for worker 0 only.
    for i in 0..20_000 {
        lines.push(rec("sales-d", i));
    }
    lines.push(json!({"type": "STATE", "value": {"done": true}}).to_string());
    let cfg = config(&db, json!({"parallelism": 2, "batch_size_rows": 100_000}));
    let mut child = target(cfg.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = bytes(&lines);
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let finished = pg_testkit::TestDb::wait_for(Duration::from_secs(60), || {
        child.try_wait().unwrap().is_some()
    });
    if !finished {
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    feeder.join().unwrap();
    assert!(
        finished,
        "the target hung: two workers waited on each other"
    );
    assert!(status.success(), "{status}");
    assert_eq!(pg_testkit::rows::count(&db, "sales", "d"), Some(20_000));
    assert_eq!(pg_testkit::rows::count(&db, "sales", "c"), Some(0));
    assert_eq!(pg_testkit::rows::count(&db, "public", "a"), Some(50));
}

/// The first worker's error stops every worker: non-zero exit, the error
/// names its stream, and no STATE after the failing record is printed.
#[test]
fn parallel_first_worker_error_stops_all_without_a_later_state() {
    let db = pg_testkit::cluster().create_database("par_error");
    let rec = |s: &str, id: Value| {
        json!({"type": "RECORD", "stream": s, "record": {"id": id, "v": "x"}}).to_string()
    };
    let mut lines = vec![schema("a", &["id"]), schema("b", &["id"])];
    for i in 0..10 {
        lines.push(rec("a", json!(i)));
        lines.push(rec("b", json!(i)));
    }
    lines.push(json!({"type": "STATE", "value": {"n": 1}}).to_string());
    lines.push(rec("a", json!("not a number")));
    for i in 10..5000 {
        lines.push(rec("b", json!(i)));
    }
    lines.push(json!({"type": "STATE", "value": {"n": 2}}).to_string());
    let r = run(&db, json!({"parallelism": 2}), &bytes(&lines));
    assert_ne!(r.code, Some(0), "{}", r.stderr);
    assert!(r.last_error().contains("`a`"), "{}", r.stderr);
    let states = r.stdout_json();
    assert!(
        states.iter().all(|s| s == &json!({"n": 1})),
        "a STATE after the failure: {states:?}"
    );
}
