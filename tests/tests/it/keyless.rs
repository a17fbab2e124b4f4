//! Key-less FULL_TABLE streams (a table without a primary key, a view) after a
//! crash: the tap keys their rows by identity (`_sdc_source_ctid`,
//! `_sdc_row_number`), so whatever a resumed run sends again replaces itself.
//! The window that used to duplicate rows (the target committed, then died
//! before its STATE line reached the orchestrator) is produced exactly by
//! resuming from a STATE older than the newest one the target committed; the
//! kill -9 sweep lands real kills at many points of `tap | target` runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e_tests::{bin, compare_table, discover, pipe, select, tap_sync, write_json};
use pg_testkit::{cluster, TestDb};
use serde_json::{json, Value};

/// Rows of the key-less table: every fifth one has an identical twin, which
/// only an identity tells apart.
const ROWS: i64 = 400;

struct Setup {
    src: TestDb,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(name: &str, rows: i64) -> Setup {
        let src = cluster().create_database(&format!("{name}_src"));
        src.client()
            .batch_execute(&format!(
                "CREATE TABLE heap (n int, pad text); \
                 INSERT INTO heap SELECT g, repeat('x', 40) FROM generate_series(1, {rows}) g; \
                 INSERT INTO heap SELECT n, pad FROM heap WHERE n % 5 = 0; \
                 CREATE VIEW evens AS SELECT n, pad FROM heap WHERE n % 2 = 0; \
                 CREATE TABLE keyed (id int PRIMARY KEY)"
            ))
            .unwrap();
        Setup {
            src,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn tap_config(&self, extra: Value) -> PathBuf {
        self.tap_config_file("tap.json", extra)
    }

    fn tap_config_file(&self, name: &str, extra: Value) -> PathBuf {
        let mut c = self.src.config();
        c["state_interval_records"] = json!(7);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        write_json(self.dir.path(), name, &c)
    }

    fn catalog(&self, streams: &[&str]) -> PathBuf {
        let mut catalog = discover(&self.tap_config_file("discover.json", json!({})));
        select(&mut catalog, streams, "FULL_TABLE", None);
        write_json(self.dir.path(), "catalog.json", &catalog)
    }

    fn state(&self, value: &Value) -> PathBuf {
        write_json(self.dir.path(), "state.json", value)
    }
}

/// Batches of 5 rows end between the tap's STATEs (every 7 records).
fn target_config(dir: &Path, dst: &TestDb, extra: Value) -> PathBuf {
    let mut c = dst.config();
    c["batch_size_rows"] = json!(5);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    write_json(dir, "target.json", &c)
}

/// The destination holds exactly the source's rows (duplicates counted).
fn assert_exact(src: &TestDb, dst: &TestDb, table: &str, what: &str) {
    let mut s = src.client();
    let mut d = dst.client();
    let cmp = compare_table(&mut s, &mut d, "public", table, "public", table);
    assert!(
        cmp.rows_identical && cmp.source_rows == cmp.destination_rows,
        "{what}: {table}: {} source rows, {} destination rows: {cmp:?}",
        cmp.source_rows,
        cmp.destination_rows
    );
}

/// The tap's whole output, as lines.
fn tap_output(tap: &Path, catalog: &Path) -> Vec<String> {
    let out = tap_sync(tap, catalog, None).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn message(line: &str) -> Value {
    serde_json::from_str(line).unwrap()
}

#[test]
fn key_less_full_table_streams_are_keyed_by_row_identity() {
    let setup = Setup::new("keyless_schema", 3);
    let catalog = setup.catalog(&["public-heap", "public-evens", "public-keyed"]);
    let schemas = |extra: Value| -> Vec<(String, Value, Value)> {
        tap_output(&setup.tap_config(extra), &catalog)
            .iter()
            .map(|l| message(l))
            .filter(|m| m["type"] == "SCHEMA")
            .map(|m| {
                (
                    m["stream"].as_str().unwrap().to_owned(),
                    m["key_properties"].clone(),
                    m["schema"]["properties"].clone(),
                )
            })
            .collect()
    };
    let on = schemas(json!({}));
    let find = |all: &[(String, Value, Value)], s: &str| {
        all.iter().find(|(n, _, _)| n == s).unwrap().clone()
    };
    let (_, keys, props) = find(&on, "public-heap");
    assert_eq!(keys, json!(["_sdc_source_ctid"]));
    assert_eq!(props["_sdc_source_ctid"]["type"], json!("string"));
    let (_, keys, props) = find(&on, "public-evens");
    assert_eq!(keys, json!(["_sdc_row_number"]));
    assert_eq!(props["_sdc_row_number"]["type"], json!("integer"));
    let (_, keys, props) = find(&on, "public-keyed");
    assert_eq!(keys, json!(["id"]));
    assert_eq!(props.as_object().unwrap().len(), 1);

    // Records carry the identity: the row's ctid, the view row's position.
    let lines = tap_output(&setup.tap_config(json!({})), &catalog);
    let records: Vec<Value> = lines
        .iter()
        .map(|l| message(l))
        .filter(|m| m["type"] == "RECORD")
        .collect();
    let heap: Vec<&Value> = records
        .iter()
        .filter(|m| m["stream"] == "public-heap")
        .map(|m| &m["record"]["_sdc_source_ctid"])
        .collect();
    assert_eq!(heap, [&json!("(0,1)"), &json!("(0,2)"), &json!("(0,3)")]);
    let evens: Vec<&Value> = records
        .iter()
        .filter(|m| m["stream"] == "public-evens")
        .map(|m| &m["record"]["_sdc_row_number"])
        .collect();
    assert_eq!(evens, [&json!(1)]);

    let off = schemas(json!({"keyless_row_identity": false}));
    for stream in ["public-heap", "public-evens"] {
        let (_, keys, props) = find(&off, stream);
        assert_eq!(keys, json!([]), "{stream}");
        assert_eq!(props.as_object().unwrap().len(), 2, "{stream}: {props}");
    }
}

/// Feeds the target the tap's first `cut` lines and lets it finish (it
/// commits all of them), then resumes the tap from the STATE before the
/// newest one the target printed: the orchestrator's view when the target
/// died right after a COMMIT, before that commit's STATE line left it.
fn commit_then_lose_its_state(
    setup: &Setup,
    target: &Path,
    tap: &Path,
    catalog: &Path,
    lines: &[String],
    cut: usize,
) {
    let mut input = lines[..cut].join("\n");
    input.push('\n');
    let r = pg_testkit::process::run(
        Command::new(bin("target-postgres-rs"))
            .arg("--config")
            .arg(target),
        input.as_bytes(),
    );
    assert!(r.ok, "{}", r.stderr);
    let printed = r.stdout_json();
    assert!(
        !printed.is_empty(),
        "cut {cut}: the target printed no STATE"
    );
    // The STATE before the newest the target printed (none: the very start).
    let newest = printed.last().unwrap();
    let sent: Vec<Value> = lines[..cut]
        .iter()
        .map(|l| message(l))
        .filter(|m| m["type"] == "STATE")
        .map(|m| m["value"].clone())
        .collect();
    let at = sent
        .iter()
        .rposition(|v| v == newest)
        .expect("the target prints a STATE the tap sent");
    let state = at.checked_sub(1).map(|i| setup.state(&sent[i]));
    let run = pipe(tap, catalog, state.as_deref(), target);
    run.assert_success();
}

#[test]
fn a_commit_whose_state_never_arrived_is_sent_again_and_lands_once() {
    let setup = Setup::new("keyless_window", ROWS);
    let tap = setup.tap_config(json!({}));
    let catalog = setup.catalog(&["public-heap", "public-evens"]);
    let lines = tap_output(&tap, &catalog);
    let record_lines: Vec<usize> = (0..lines.len())
        .filter(|&i| message(&lines[i])["type"] == "RECORD")
        .collect();
    // Cuts right after a record (mid-batch, between STATEs), across both
    // streams, from the first rows to the last.
    let step = record_lines.len() / 9;
    for (trial, &i) in record_lines.iter().step_by(step).skip(1).enumerate() {
        for hard_delete in [false, true] {
            let dst = cluster().create_database(&format!("keyless_window{trial}_{hard_delete}"));
            let target = target_config(setup.dir.path(), &dst, json!({"hard_delete": hard_delete}));
            commit_then_lose_its_state(&setup, &target, &tap, &catalog, &lines, i + 1);
            let what = format!("cut after line {}, hard_delete {hard_delete}", i + 1);
            assert_exact(&setup.src, &dst, "heap", &what);
            assert_exact(&setup.src, &dst, "evens", &what);
        }
    }
}

#[test]
fn without_row_identity_the_window_duplicates_rows() {
    // The limit the identity removes, shown once with it off.
    let setup = Setup::new("keyless_window_off", 100);
    let tap = setup.tap_config(json!({"keyless_row_identity": false}));
    let catalog = setup.catalog(&["public-heap"]);
    let lines = tap_output(&tap, &catalog);
    let dst = cluster().create_database("keyless_window_off_dst");
    let target = target_config(setup.dir.path(), &dst, json!({}));
    commit_then_lose_its_state(&setup, &target, &tap, &catalog, &lines, 60);
    let source = pg_testkit::rows::count(&setup.src, "public", "heap").unwrap();
    let landed = pg_testkit::rows::count(&dst, "public", "heap").unwrap();
    assert!(
        landed > source,
        "{landed} rows landed for {source} source rows"
    );
}

#[test]
fn killed_anywhere_then_resumed_lands_every_row_once() {
    let setup = Setup::new("keyless_kill", 3000);
    let tap = setup.tap_config(json!({}));
    let catalog = setup.catalog(&["public-heap", "public-evens"]);
    // Delays spread over a run (a few hundred ms in a debug build), a few
    // kills per trial, each resumed from the newest STATE the target printed.
    let delays = [3, 11, 23, 37, 53, 71, 97, 131, 173, 229, 307, 401];
    let mut total_kills = 0;
    for (trial, chunk) in delays.chunks(3).enumerate() {
        for hard_delete in [false, true] {
            let dst = cluster().create_database(&format!("keyless_kill{trial}_{hard_delete}"));
            let target = target_config(setup.dir.path(), &dst, json!({"hard_delete": hard_delete}));
            let mut state: Option<Value> = None;
            let mut kills = 0;
            for &ms in chunk {
                let file = state.as_ref().map(|s| setup.state(s));
                let (last, finished) = e2e_tests::killed_pipe(
                    &tap,
                    &catalog,
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
            }
            if kills > 0 {
                let file = state.as_ref().map(|s| setup.state(s));
                pipe(&tap, &catalog, file.as_deref(), &target).assert_success();
            }
            total_kills += kills;
            eprintln!("trial {trial} ({chunk:?} ms): {kills} kills");
            let what =
                format!("trial {trial} ({chunk:?} ms, {kills} kills), hard_delete {hard_delete}");
            assert_exact(&setup.src, &dst, "heap", &what);
            assert_exact(&setup.src, &dst, "evens", &what);
        }
    }
    // The first delays land before any run can finish.
    assert!(total_kills >= 3, "only {total_kills} runs were killed");
}

#[test]
fn a_rewritten_table_and_a_changed_view_converge_on_resume() {
    // A rewrite (VACUUM FULL) between the interrupted run and the resume
    // moves every ctid: the tap starts over as a new version, whose rows
    // replace the old ones at the same identities, and ACTIVATE_VERSION
    // removes the rest. The view changed size meanwhile.
    let setup = Setup::new("keyless_rewrite", ROWS);
    let tap = setup.tap_config(json!({}));
    let catalog = setup.catalog(&["public-heap", "public-evens"]);
    let lines = tap_output(&tap, &catalog);
    let dst = cluster().create_database("keyless_rewrite_dst");
    let target = target_config(setup.dir.path(), &dst, json!({"hard_delete": true}));
    let mut input = lines[..lines.len() * 2 / 3].join("\n");
    input.push('\n');
    let r = pg_testkit::process::run(
        Command::new(bin("target-postgres-rs"))
            .arg("--config")
            .arg(&target),
        input.as_bytes(),
    );
    assert!(r.ok, "{}", r.stderr);
    let state = setup.state(r.stdout_json().last().unwrap());
    setup
        .src
        .client()
        .batch_execute("DELETE FROM heap WHERE n % 3 = 0")
        .unwrap();
    setup
        .src
        .client()
        .batch_execute("VACUUM FULL heap")
        .unwrap();
    pipe(&tap, &catalog, Some(&state), &target).assert_success();
    assert_exact(&setup.src, &dst, "heap", "after VACUUM FULL");
    assert_exact(&setup.src, &dst, "evens", "after the view shrank");
}

#[test]
fn each_full_copy_replaces_the_rows_in_place() {
    // Soft delete (the default): a re-copy's rows replace the old version's
    // at the same identity, so only rows gone from the source stay, marked.
    let setup = Setup::new("keyless_again", 20);
    let tap = setup.tap_config(json!({}));
    let catalog = setup.catalog(&["public-heap", "public-evens"]);
    let dst = cluster().create_database("keyless_again_dst");
    let target = target_config(setup.dir.path(), &dst, json!({}));
    let live = |table: &str| -> (i64, i64) {
        let row = dst
            .client()
            .query_one(
                &format!(
                    "SELECT count(*), count(*) FILTER (WHERE _sdc_deleted_at IS NULL) FROM public.{table}"
                ),
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    pipe(&tap, &catalog, None, &target).assert_success();
    pipe(&tap, &catalog, None, &target).assert_success();
    assert_eq!(live("heap"), (24, 24));
    assert_eq!(live("evens"), (12, 12));
    setup
        .src
        .client()
        .batch_execute("DELETE FROM heap WHERE n IN (19, 20)")
        .unwrap();
    pipe(&tap, &catalog, None, &target).assert_success();
    // n = 20 had a twin; the view shrank by both at its end.
    assert_eq!(live("heap"), (24, 21));
    assert_eq!(live("evens"), (12, 10));
}

#[test]
fn rows_written_in_a_savepoint_before_the_bookmark_land_on_resume() {
    // A transaction in progress at the first run's snapshot writes rows in a
    // SAVEPOINT: their xmin is the subtransaction's xid, which the snapshot's
    // `xip` (top-level transactions only) does not list. They land in space
    // freed at the table's start, before the bookmark, so only the resume
    // predicate can bring them.
    let setup = Setup::new("keyless_savepoint", ROWS);
    let writer = SavepointWriter::open(&setup.src, 1001, 20);
    let catalog = setup.catalog(&["public-heap"]);
    let dst = cluster().create_database("keyless_savepoint_dst");
    let target = target_config(setup.dir.path(), &dst, json!({}));
    let first = pipe(
        &setup.tap_config(json!({"max_record_count": 200})),
        &catalog,
        None,
        &target,
    );
    first.assert_success();
    let state = first.last_state().expect("a STATE").clone();
    writer.commit_after(&state, "public-heap");
    let bookmark = state["bookmarks"]["public-heap"]["ctid"]
        .as_str()
        .unwrap_or_else(|| panic!("no ctid bookmark: {state}"))
        .to_owned();
    let before: i64 = setup
        .src
        .client()
        .query_one(
            "SELECT count(*) FROM heap WHERE n > 1000 AND ctid < $1::text::tid",
            &[&bookmark],
        )
        .unwrap()
        .get(0);
    assert_eq!(before, 20, "bookmark {bookmark}");

    let file = setup.state(&state);
    pipe(&setup.tap_config(json!({})), &catalog, Some(&file), &target).assert_success();
    assert_exact(
        &setup.src,
        &dst,
        "heap",
        &format!("resumed after {bookmark}"),
    );
}

/// A transaction left open after inserting rows into `heap` in a SAVEPOINT,
/// into its page 0 (emptied for them): rows a snapshot taken now cannot see,
/// with a subtransaction's xid as their xmin.
pub(crate) struct SavepointWriter {
    client: postgres::Client,
    /// The top-level transaction's 32-bit xid.
    xid: i64,
    /// Where the rows landed.
    pub ctids: BTreeSet<String>,
}

impl SavepointWriter {
    /// Inserts `rows` rows, `n` from `first` on.
    pub(crate) fn open(src: &TestDb, first: i64, rows: i64) -> SavepointWriter {
        let mut other = src.client();
        other
            .batch_execute("DELETE FROM heap WHERE ctid < '(1,0)'")
            .unwrap();
        let mut client = src.client();
        // VACUUM frees page 0 only once no snapshot anywhere in the cluster
        // can still see its rows; another test's transaction or a logical
        // slot being created holds that horizon back for a while, and the
        // rows then land in other pages' free space. Roll back and retry.
        let deadline = Instant::now() + Duration::from_secs(60);
        let ctids = loop {
            other.batch_execute("VACUUM heap").unwrap();
            client
                .batch_execute(&format!(
                    "BEGIN; SAVEPOINT s; INSERT INTO heap \
                     SELECT g, 'savepoint' FROM generate_series({first}, {}) g",
                    first + rows - 1
                ))
                .unwrap();
            let ctids: BTreeSet<String> = client
                .query(
                    "SELECT ctid::text FROM heap WHERE n >= $1::bigint",
                    &[&first],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            if ctids.len() == rows as usize && ctids.iter().all(|c| c.starts_with("(0,")) {
                break ctids;
            }
            client.batch_execute("ROLLBACK").unwrap();
            assert!(
                Instant::now() < deadline,
                "not in the freed page 0 after 60 s of VACUUM: {ctids:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let xid: i64 = client
            .query_one("SELECT (txid_current() % 4294967296)::bigint", &[])
            .unwrap()
            .get(0);
        // A snapshot lists the writer in `xip` only once a later transaction
        // has ended (else the writer is at or past its `xmax`, and so are the
        // rows).
        other.query_one("SELECT txid_current()", &[]).unwrap();
        SavepointWriter { client, xid, ctids }
    }

    /// Commits, once the tap's `state` shows the writer was in progress at
    /// the first snapshot of `stream`.
    pub(crate) fn commit_after(mut self, state: &Value, stream: &str) {
        let xip = &state["bookmarks"][stream]["snapshot_xip"];
        assert!(
            xip.as_array().unwrap().contains(&json!(self.xid)),
            "writer {} not in {xip}",
            self.xid
        );
        self.client.batch_execute("COMMIT").unwrap();
    }
}
