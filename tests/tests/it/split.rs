//! One huge table split into ctid ranges (`split_table_min_pages` with
//! `max_parallel_streams` > 1): every row exactly once, a bookmark per range
//! that never runs ahead of the rows written, and convergence after runs cut
//! short or killed anywhere and resumed with any worker count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_tests::{compare_table, discover, pipe, select, tap_sync, write_json};
use pg_testkit::snapshot::wait_for_older_transactions;
use pg_testkit::{cluster, TestDb};
use serde_json::{json, Value};

use crate::keyless::SavepointWriter;

/// Rows per table: with 200-byte rows, about 60 pages each.
const ROWS: i64 = 2000;

struct Setup {
    src: TestDb,
    dir: tempfile::TempDir,
    catalog: PathBuf,
}

impl Setup {
    /// `big` (keyed) and `heap` (key-less, every tenth row twice).
    fn new(name: &str) -> Setup {
        let src = cluster().create_database(&format!("{name}_src"));
        src.client()
            .batch_execute(&format!(
                "CREATE TABLE big (id int PRIMARY KEY, pad text); \
                 INSERT INTO big SELECT g, repeat('b', 200) FROM generate_series(1, {ROWS}) g; \
                 CREATE TABLE heap (n int, pad text); \
                 INSERT INTO heap SELECT g, repeat('h', 200) FROM generate_series(1, {ROWS}) g; \
                 INSERT INTO heap SELECT n, pad FROM heap WHERE n % 10 = 0"
            ))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = discover(&write_json(dir.path(), "discover.json", &src.config()));
        select(
            &mut catalog,
            &["public-big", "public-heap"],
            "FULL_TABLE",
            None,
        );
        let catalog = write_json(dir.path(), "catalog.json", &catalog);
        Setup { src, dir, catalog }
    }

    /// Ranges from 4 pages on, a STATE every 50 records.
    fn tap_config(&self, workers: usize) -> PathBuf {
        self.tap_config_with(workers, json!({}))
    }

    fn tap_config_with(&self, workers: usize, extra: Value) -> PathBuf {
        let mut c = self.src.config();
        c["state_interval_records"] = json!(50);
        c["max_parallel_streams"] = json!(workers);
        c["split_table_min_pages"] = json!(4);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        write_json(self.dir.path(), &format!("tap{workers}.json"), &c)
    }

    fn state(&self, value: &Value) -> PathBuf {
        write_json(self.dir.path(), "state.json", value)
    }

    fn output(&self, workers: usize, state: Option<&Value>) -> Vec<Value> {
        self.output_of(&self.tap_config(workers), state)
    }

    /// The tap's messages, run with `config`.
    fn output_of(&self, config: &Path, state: Option<&Value>) -> Vec<Value> {
        let file = state.map(|s| self.state(s));
        let out = tap_sync(config, &self.catalog, file.as_deref())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Each source row's identity: `big`'s ids, `heap`'s ctids.
    fn source_rows(&self) -> (BTreeSet<i64>, BTreeSet<String>) {
        let mut c = self.src.client();
        let ids = c.query("SELECT id::bigint FROM big", &[]).unwrap();
        let ctids = c.query("SELECT ctid::text FROM heap", &[]).unwrap();
        (
            ids.iter().map(|r| r.get(0)).collect(),
            ctids.iter().map(|r| r.get(0)).collect(),
        )
    }
}

fn records<'a>(messages: &'a [Value], stream: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    messages
        .iter()
        .filter(move |m| m["type"] == "RECORD" && m["stream"] == stream)
        .map(|m| &m["record"])
}

/// Whether any STATE holds ranges for `stream`.
fn split(messages: &[Value], stream: &str) -> bool {
    messages
        .iter()
        .any(|m| m["type"] == "STATE" && m["value"]["bookmarks"][stream]["ranges"].is_array())
}

/// `(page, item)` of a ctid's text.
fn tid(ctid: &str) -> (u32, u32) {
    let (p, i) = ctid[1..ctid.len() - 1].split_once(',').unwrap();
    (p.parse().unwrap(), i.parse().unwrap())
}

/// The ctids that a STATE's `ranges` say were sent.
fn claimed<'a>(ranges: &[Value], ctids: &'a BTreeSet<String>) -> Vec<&'a String> {
    let mut all = Vec::new();
    for r in ranges {
        let lo = r["lo"].as_u64().unwrap() as u32;
        let hi = r["hi"].as_u64().map_or(u32::MAX, |h| h as u32);
        let upto = if r["done"] == json!(true) {
            (hi, 0)
        } else {
            let c = tid(r["ctid"].as_str().unwrap());
            (c.0, c.1 + 1)
        };
        all.extend(ctids.iter().filter(|c| (lo, 0) <= tid(c) && tid(c) < upto));
    }
    all
}

#[test]
fn a_big_table_is_read_in_ranges_every_row_once() {
    let setup = Setup::new("split_once");
    let (ids, ctids) = setup.source_rows();
    let out = setup.output(3, None);

    let mut sent: Vec<i64> = records(&out, "public-big")
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    sent.sort_unstable();
    assert_eq!(sent, ids.iter().copied().collect::<Vec<_>>());
    let mut sent: Vec<String> = records(&out, "public-heap")
        .map(|r| r["_sdc_source_ctid"].as_str().unwrap().to_owned())
        .collect();
    sent.sort_unstable();
    assert_eq!(sent, ctids.iter().cloned().collect::<Vec<_>>());

    // One version per stream: opened once (a first copy), closed after its
    // last RECORD.
    for stream in ["public-big", "public-heap"] {
        let at: Vec<usize> = (0..out.len())
            .filter(|&i| out[i]["type"] == "ACTIVATE_VERSION" && out[i]["stream"] == stream)
            .collect();
        let last_record = (0..out.len())
            .rfind(|&i| out[i]["type"] == "RECORD" && out[i]["stream"] == stream)
            .unwrap();
        assert_eq!(at.len(), 2, "{stream}");
        assert!(at[1] > last_record, "{stream}: closed before its last row");
        let version = &out[at[0]]["version"];
        assert!(records(&out, stream).count() > 0);
        assert!(out
            .iter()
            .filter(|m| m["type"] == "RECORD" && m["stream"] == stream)
            .all(|m| &m["version"] == version));
    }

    // Every STATE's ranges: three, covering the table; each claims only
    // rows already written before that STATE.
    let mut seen: BTreeSet<(u32, u32)> = BTreeSet::new();
    let mut with_ranges = 0;
    for m in &out {
        if m["type"] == "RECORD" && m["stream"] == "public-heap" {
            seen.insert(tid(m["record"]["_sdc_source_ctid"].as_str().unwrap()));
        }
        if m["type"] != "STATE" {
            continue;
        }
        let Some(ranges) = m["value"]["bookmarks"]["public-heap"]["ranges"].as_array() else {
            continue;
        };
        with_ranges += 1;
        assert_eq!(ranges.len(), 3, "{m}");
        assert_eq!(ranges[0]["lo"], json!(0));
        assert_eq!(ranges[2]["hi"], Value::Null);
        for c in claimed(ranges, &ctids) {
            assert!(
                seen.contains(&tid(c)),
                "{c} claimed before it was sent: {m}"
            );
        }
    }
    assert!(with_ranges > 3, "only {with_ranges} STATEs with ranges");
    let last = &out.last().unwrap()["value"]["bookmarks"];
    for stream in ["public-big", "public-heap"] {
        let b = last[stream].as_object().unwrap();
        assert!(b.contains_key("version"), "{stream}: {b:?}");
        assert!(
            !b.contains_key("ranges") && !b.contains_key("ctid"),
            "{stream}: {b:?}"
        );
    }

    // One worker (the default) reads as before: no ranges.
    let one = setup.output(1, None);
    assert!(!split(&one, "public-heap"));
    assert_eq!(records(&one, "public-heap").count(), ctids.len());
}

#[test]
fn a_run_cut_anywhere_resumes_by_its_ranges_with_any_worker_count() {
    let setup = Setup::new("split_cut");
    // Each resume below sends exactly the rows its bookmarks do not claim
    // only if the first run's snapshot sees the whole setup.
    wait_for_older_transactions(&mut setup.src.client());
    let (ids, ctids) = setup.source_rows();
    let full = setup.output(3, None);
    let total = full.len();
    let mut resumed_ranges = 0;
    for (k, cut) in [total / 10, total / 3, total / 2, total * 9 / 10]
        .into_iter()
        .enumerate()
    {
        let head = &full[..cut];
        let Some(state) = head
            .iter()
            .rfind(|m| m["type"] == "STATE")
            .map(|m| m["value"].clone())
        else {
            continue;
        };
        // Resumed with 2, 1 and 4 workers: the stored ranges as they are.
        let workers = [2, 1, 4, 3][k];
        let rest = setup.output(workers, Some(&state));
        let mut got_ids: BTreeSet<i64> = BTreeSet::new();
        let mut got_ctids: BTreeSet<String> = BTreeSet::new();
        for part in [head, &rest[..]] {
            got_ids.extend(records(part, "public-big").map(|r| r["id"].as_i64().unwrap()));
            got_ctids.extend(
                records(part, "public-heap")
                    .map(|r| r["_sdc_source_ctid"].as_str().unwrap().to_owned()),
            );
        }
        assert_eq!(got_ids, ids, "cut at {cut} of {total}, {workers} workers");
        assert_eq!(
            got_ctids, ctids,
            "cut at {cut} of {total}, {workers} workers"
        );
        // The resume goes on from the bookmarks: exactly the rows they do
        // not claim (nothing changed in between).
        let again = records(&rest, "public-heap").count();
        if let Some(ranges) = state["bookmarks"]["public-heap"]["ranges"].as_array() {
            let expected = ctids.len() - claimed(ranges, &ctids).len();
            assert_eq!(again, expected, "cut at {cut}: {state}");
            resumed_ranges += 1;
        }
        // Rows of the resumed run belong to the interrupted run's version.
        let version = &state["bookmarks"]["public-heap"]["version"];
        if state["bookmarks"]["public-heap"]["ranges"].is_array() {
            assert!(rest
                .iter()
                .filter(|m| m["type"] == "RECORD" && m["stream"] == "public-heap")
                .all(|m| &m["version"] == version));
        }
    }
    assert!(resumed_ranges >= 2, "only {resumed_ranges} cuts had ranges");
}

/// Rows a transaction in progress at the first snapshot wrote in a
/// SAVEPOINT carry a subtransaction's xid, which the snapshot's `xip` does
/// not list: written into space freed in range 0, behind its bookmark, the
/// resume still reads them.
#[test]
fn rows_written_in_a_savepoint_behind_a_range_bookmark_are_read_on_resume() {
    let setup = Setup::new("split_savepoint");
    let writer = SavepointWriter::open(&setup.src, 5001, 10);
    let full = setup.output(2, None);
    // The newest STATE with range 0 past page 0, before the copy finished.
    let state = full
        .iter()
        .filter(|m| m["type"] == "STATE")
        .map(|m| &m["value"])
        .rfind(|v| {
            v["bookmarks"]["public-heap"]["ranges"]
                .get(0)
                .is_some_and(|r| r["done"] == json!(true) || tid(r["ctid"].as_str().unwrap()).0 > 0)
        })
        .expect("a STATE with range 0 past page 0")
        .clone();
    let new_ctids = writer.ctids.clone();
    writer.commit_after(&state, "public-heap");
    let rest = setup.output(2, Some(&state));
    let resent: BTreeSet<String> = records(&rest, "public-heap")
        .map(|r| r["_sdc_source_ctid"].as_str().unwrap().to_owned())
        .collect();
    let missing: Vec<&String> = new_ctids.difference(&resent).collect();
    assert!(
        missing.is_empty(),
        "not read on resume: {missing:?}; {state}"
    );
    let (_, ctids) = setup.source_rows();
    let cut = full
        .iter()
        .position(|m| m["type"] == "STATE" && m["value"] == state)
        .unwrap();
    let mut got: BTreeSet<String> = records(&full[..cut], "public-heap")
        .map(|r| r["_sdc_source_ctid"].as_str().unwrap().to_owned())
        .collect();
    got.extend(resent);
    assert_eq!(got, ctids);
}

fn assert_exact(src: &TestDb, dst: &TestDb, table: &str, what: &str) {
    let cmp = compare_table(
        &mut src.client(),
        &mut dst.client(),
        "public",
        table,
        "public",
        table,
    );
    assert!(
        cmp.rows_identical && cmp.source_rows == cmp.destination_rows,
        "{what}: {table}: {} source rows, {} destination rows: {cmp:?}",
        cmp.source_rows,
        cmp.destination_rows
    );
}

#[test]
fn killed_anywhere_then_resumed_converges() {
    let setup = Setup::new("split_kill");
    let delays = [5, 17, 41, 83, 131, 197, 271, 367, 479];
    let mut total_kills = 0;
    let mut ranges_resumed = 0;
    for (trial, chunk) in delays.chunks(3).enumerate() {
        let dst = cluster().create_database(&format!("split_kill{trial}"));
        let mut target = dst.config();
        target["batch_size_rows"] = json!(40);
        let target = write_json(setup.dir.path(), "target.json", &target);
        let mut state: Option<Value> = None;
        let mut kills = 0;
        for (n, &ms) in chunk.iter().enumerate() {
            let file = state.as_ref().map(|s| setup.state(s));
            let workers = [3, 2, 4][n];
            let (last, finished) = e2e_tests::killed_pipe(
                &setup.tap_config(workers),
                &setup.catalog,
                file.as_deref(),
                &target,
                Duration::from_millis(ms),
            );
            if finished {
                state = None;
                break;
            }
            kills += 1;
            state = last.or(state);
            let stored = state
                .as_ref()
                .map(|s| &s["bookmarks"]["public-heap"]["ranges"]);
            ranges_resumed += usize::from(stored.is_some_and(Value::is_array));
            // Rows changed between runs: the keyed table's updates are read
            // again wherever they moved, new rows in both land once.
            setup
                .src
                .client()
                .batch_execute(&format!(
                    "UPDATE big SET pad = 'u{trial}{n}' WHERE id % 97 = {n}; \
                     INSERT INTO big SELECT coalesce(max(id), 0) + 1, 'new' FROM big; \
                     INSERT INTO heap VALUES (-1, 'new {trial}{n}')"
                ))
                .unwrap();
        }
        if kills > 0 {
            let file = state.as_ref().map(|s| setup.state(s));
            pipe(
                &setup.tap_config(1),
                &setup.catalog,
                file.as_deref(),
                &target,
            )
            .assert_success();
        }
        total_kills += kills;
        eprintln!("trial {trial} ({chunk:?} ms): {kills} kills");
        let what = format!("trial {trial} ({chunk:?} ms, {kills} kills)");
        assert_exact(&setup.src, &dst, "big", &what);
        assert_exact(&setup.src, &dst, "heap", &what);
    }
    assert!(total_kills >= 3, "only {total_kills} runs were killed");
    assert!(ranges_resumed >= 1, "no run resumed from stored ranges");
}

/// A state whose ranges no longer cover the table is not resumed from.
#[test]
fn ranges_with_a_gap_start_over() {
    let setup = Setup::new("split_gap");
    let (_, ctids) = setup.source_rows();
    let full = setup.output(3, None);
    let mut state = full
        .iter()
        .find(|m| {
            m["type"] == "STATE" && m["value"]["bookmarks"]["public-heap"]["ranges"].is_array()
        })
        .unwrap()["value"]
        .clone();
    state["bookmarks"]["public-heap"]["ranges"][1]["lo"] = json!(1_000_000);
    let rest = setup.output(3, Some(&state));
    let by_ctid: BTreeMap<&str, usize> =
        records(&rest, "public-heap").fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r["_sdc_source_ctid"].as_str().unwrap())
                .or_default() += 1;
            m
        });
    assert_eq!(by_ctid.len(), ctids.len());
    assert!(by_ctid.values().all(|&n| n == 1));
}

/// A table rewritten (VACUUM FULL) since the bookmark: its ranges' ctids
/// mean nothing now, so the copy starts over as a new version.
#[test]
fn a_rewritten_table_starts_over() {
    let setup = Setup::new("split_rewrite");
    let full = setup.output(3, None);
    let state = full
        .iter()
        .filter(|m| {
            m["type"] == "STATE" && m["value"]["bookmarks"]["public-heap"]["ranges"].is_array()
        })
        .nth(3)
        .unwrap()["value"]
        .clone();
    setup
        .src
        .client()
        .batch_execute("VACUUM FULL heap")
        .unwrap();
    let (_, ctids) = setup.source_rows();
    let rest = setup.output(2, Some(&state));
    let mut sent: Vec<String> = records(&rest, "public-heap")
        .map(|r| r["_sdc_source_ctid"].as_str().unwrap().to_owned())
        .collect();
    sent.sort_unstable();
    assert_eq!(sent, ctids.iter().cloned().collect::<Vec<_>>());
    let old = &state["bookmarks"]["public-heap"]["version"];
    assert!(records(&rest, "public-heap").count() > 0);
    assert!(rest
        .iter()
        .filter(|m| m["type"] == "RECORD" && m["stream"] == "public-heap")
        .all(|m| &m["version"] != old));
}

/// Row filters apply in every range; `split_table_min_pages: 0` never splits.
#[test]
fn ranges_keep_the_row_filter_and_zero_never_splits() {
    let setup = Setup::new("split_filter");
    let filter =
        json!({"stream_options": {"public-big": {"custom_where_clauses": ["id % 3 = 0"]}}});
    let out = setup.output_of(&setup.tap_config_with(3, filter), None);
    let mut ids: Vec<i64> = records(&out, "public-big")
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=ROWS).filter(|i| i % 3 == 0).collect::<Vec<_>>());
    assert!(split(&out, "public-big"));

    let never = setup.output_of(
        &setup.tap_config_with(3, json!({"split_table_min_pages": 0})),
        None,
    );
    assert!(!split(&never, "public-big"));
    assert_eq!(records(&never, "public-big").count(), ROWS as usize);
}

/// Each range widens its own SCHEMA for special values: one range's SCHEMA
/// may declare a column plain that another range already widened. The
/// target never narrows, so every value still lands.
#[test]
fn special_values_in_different_ranges_land() {
    let setup = Setup::new("split_special");
    setup
        .src
        .client()
        .batch_execute(
            "CREATE TABLE special (id int PRIMARY KEY, a numeric, b float8, pad text); \
             INSERT INTO special SELECT g, \
                 CASE WHEN g IN (2, 1500) THEN 'NaN' ELSE g::numeric END, \
                 CASE WHEN g IN (3, 1900) THEN 'Infinity' ELSE g::float8 END, \
                 repeat('s', 200) FROM generate_series(1, 2000) g",
        )
        .unwrap();
    let tap = setup.tap_config(3);
    let mut catalog = discover(&tap);
    select(&mut catalog, &["public-special"], "FULL_TABLE", None);
    let catalog = write_json(setup.dir.path(), "special.json", &catalog);
    let out = tap_sync(&tap, &catalog, None).output().unwrap();
    assert!(out.status.success());
    let messages: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(split(&messages, "public-special"));
    // Widened: the property admits a string.
    let widened = |m: &Value, c: &str| m["schema"]["properties"][c].to_string().contains("string");
    let schemas: Vec<(bool, bool)> = messages
        .iter()
        .filter(|m| m["type"] == "SCHEMA")
        .map(|m| (widened(m, "a"), widened(m, "b")))
        .collect();
    assert!(schemas.len() >= 3, "{schemas:?}");

    let dst = cluster().create_database("split_special_dst");
    let target = write_json(setup.dir.path(), "special-target.json", &dst.config());
    pipe(&tap, &catalog, None, &target).assert_success();
    assert_exact(&setup.src, &dst, "special", "special values in ranges");
}
