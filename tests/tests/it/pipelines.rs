//! Many pipelines at once, the way an orchestrator runs them past one
//! machine: `tap | target` pipelines on disjoint stream sets (FULL_TABLE
//! groups, LOG_BASED groups each with its own slot and publication), started
//! at the same moment into one destination schema that does not exist yet,
//! each with its own state. They must never conflict (schema creation races,
//! NOTIFY) and must all converge, run after run.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Barrier};

use postgres::fallible_iterator::FallibleIterator;

use e2e_tests::{bin, discover, pipe, select, table_rows, write_json, PipeRun};
use pg_testkit::{cluster, TestDb};
use serde_json::{json, Value};

/// The schema every pipeline lands in (created by whichever pipeline wins).
const SCHEMA: &str = "landing";
const CHANNEL: &str = "landing_loads";
const COLUMNS: &[&str] = &["id", "v", "n"];
const ROWS: i32 = 1000;

/// One pipeline: its streams, its method, its own files and state.
struct Group {
    name: &'static str,
    method: &'static str,
    tables: [&'static str; 2],
    dir: tempfile::TempDir,
    state: Option<Value>,
}

impl Group {
    fn new(name: &'static str, method: &'static str, tables: [&'static str; 2]) -> Group {
        Group {
            name,
            method,
            tables,
            dir: tempfile::tempdir().unwrap(),
            state: None,
        }
    }

    fn slot(&self, src: &TestDb) -> String {
        format!("slot_{}_{}", self.name, src.name)
    }

    fn tap_config(&self, src: &TestDb) -> PathBuf {
        let mut c = src.config();
        if self.method == "LOG_BASED" {
            c["replication_slot_name"] = json!(self.slot(src));
            c["publication_name"] = json!(format!("pub_{}_{}", self.name, src.name));
        }
        write_json(self.dir.path(), "tap.json", &c)
    }

    fn target_config(&self, dst: &TestDb) -> PathBuf {
        let mut c = dst.config();
        c["default_target_schema"] = json!(SCHEMA);
        c["notify_channel"] = json!(CHANNEL);
        // Small batches: many commits (and NOTIFYs) interleave between pipelines.
        c["batch_size_rows"] = json!(200);
        write_json(self.dir.path(), "target.json", &c)
    }

    fn catalog(&self, discovered: &Value) -> PathBuf {
        let mut catalog = discovered.clone();
        let ids: Vec<String> = self.tables.iter().map(|t| format!("public-{t}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        select(&mut catalog, &ids, self.method, None);
        write_json(self.dir.path(), "catalog.json", &catalog)
    }
}

/// Runs every group's pipeline at the same moment; returns their runs in order.
fn run_all(groups: &[Group], src: &TestDb, dst: &TestDb, discovered: &Value) -> Vec<PipeRun> {
    let start = Arc::new(Barrier::new(groups.len()));
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .iter()
            .map(|g| {
                let tap = g.tap_config(src);
                let target = g.target_config(dst);
                let catalog = g.catalog(discovered);
                let state = g
                    .state
                    .as_ref()
                    .map(|s| write_json(g.dir.path(), "state.json", s));
                let start = Arc::clone(&start);
                scope.spawn(move || {
                    start.wait();
                    pipe(&tap, &catalog, state.as_deref(), &target)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Every pipeline succeeded, its state names only its own streams (and a
/// LOG_BASED one its position in its own slot), and every table's live rows
/// equal the source.
fn assert_converged(groups: &mut [Group], runs: &[PipeRun], src: &TestDb, dst: &TestDb) {
    for (g, r) in groups.iter_mut().zip(runs) {
        r.assert_success();
        let state = r
            .last_state()
            .cloned()
            .expect("the target committed a state");
        let bookmarks = state["bookmarks"].as_object().expect("bookmarks");
        let ids: BTreeSet<&str> = bookmarks.keys().map(String::as_str).collect();
        let want: BTreeSet<String> = g.tables.iter().map(|t| format!("public-{t}")).collect();
        let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
        assert_eq!(
            ids, want,
            "pipeline {}: its state holds its streams only",
            g.name
        );
        for (id, b) in bookmarks {
            assert_eq!(b["last_replication_method"], json!(g.method), "{id}");
            assert_eq!(
                b.get("lsn").is_some(),
                g.method == "LOG_BASED",
                "{id}: {b:?}"
            );
        }
        g.state = Some(state);
    }
    let mut s = src.client();
    let mut d = dst.client();
    for t in groups.iter().flat_map(|g| g.tables) {
        let want = table_rows(&mut s, "public", t, COLUMNS, None);
        let live = table_rows(&mut d, SCHEMA, t, COLUMNS, Some("_sdc_deleted_at IS NULL"));
        assert_eq!(live.len(), want.len(), "{SCHEMA}.{t}: live rows");
        assert_eq!(live, want, "{SCHEMA}.{t}");
    }
}

/// The tables named by the NOTIFY payloads received so far.
fn notified_tables(listener: &mut postgres::Client) -> BTreeSet<String> {
    // Notifications arrive with the next exchange with the server.
    listener.batch_execute("SELECT 1").unwrap();
    let mut tables = BTreeSet::new();
    let mut notes = listener.notifications();
    let mut iter = notes.iter();
    while let Some(n) = iter.next().unwrap() {
        assert_eq!(n.channel(), CHANNEL);
        let payload: Value = serde_json::from_str(n.payload()).unwrap();
        for t in payload["tables"].as_array().unwrap() {
            assert_eq!(t["schema"], json!(SCHEMA), "{payload}");
            assert!(t["rows"].as_u64().unwrap() > 0, "{payload}");
            tables.insert(t["table"].as_str().unwrap().to_owned());
        }
    }
    tables
}

#[test]
fn four_pipelines_on_disjoint_streams_started_at_once_all_converge() {
    let src = cluster().create_database("pipes_src");
    let dst = cluster().create_database("pipes_dst");
    let mut groups = vec![
        Group::new("full_a", "FULL_TABLE", ["a1", "a2"]),
        Group::new("full_b", "FULL_TABLE", ["b1", "b2"]),
        Group::new("log_c", "LOG_BASED", ["c1", "c2"]),
        Group::new("log_d", "LOG_BASED", ["d1", "d2"]),
    ];
    let tables: Vec<&str> = groups.iter().flat_map(|g| g.tables).collect();
    let mut s = src.client();
    for t in &tables {
        s.batch_execute(&format!(
            "CREATE TABLE {t} (id integer PRIMARY KEY, v text, n numeric);
             INSERT INTO {t} SELECT i, '{t} ' || i, i * 1.25 FROM generate_series(1, {ROWS}) i;"
        ))
        .unwrap();
    }
    let discovered = discover(&groups[0].tap_config(&src));
    let mut listener = dst.client();
    listener
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .unwrap();

    let runs = run_all(&groups, &src, &dst, &discovered);
    assert_converged(&mut groups, &runs, &src, &dst);
    let landed: Vec<String> = pg_testkit::rows::tables(&dst, SCHEMA)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let mut want: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    want.sort();
    assert_eq!(landed, want, "one table per stream in {SCHEMA}");
    assert_eq!(
        notified_tables(&mut listener),
        want.iter().cloned().collect(),
        "every pipeline's commits were notified"
    );

    // Changes to every table, then every pipeline again from its own state.
    for t in &tables {
        s.batch_execute(&format!(
            "INSERT INTO {t} SELECT i, 'new ' || i, i FROM generate_series({ROWS} + 1, {ROWS} + 200) i;
             UPDATE {t} SET v = 'changed', n = n * 2 WHERE id % 7 = 0;
             DELETE FROM {t} WHERE id % 11 = 0;"
        ))
        .unwrap();
    }
    let versions = |groups: &[Group]| -> Vec<Value> {
        (groups.iter().filter(|g| g.method == "LOG_BASED"))
            .flat_map(|g| {
                g.state.as_ref().unwrap()["bookmarks"]
                    .as_object()
                    .unwrap()
                    .values()
            })
            .map(|b| b["version"].clone())
            .collect()
    };
    let before = versions(&groups);
    let runs = run_all(&groups, &src, &dst, &discovered);
    assert_converged(&mut groups, &runs, &src, &dst);
    // Each LOG_BASED group read its changes from its own slot: no new copy.
    assert_eq!(versions(&groups), before);
    assert_eq!(
        notified_tables(&mut listener),
        want.iter().cloned().collect()
    );

    for g in groups.iter().filter(|g| g.method == "LOG_BASED") {
        s.query_one("SELECT pg_drop_replication_slot($1)", &[&g.slot(&src)])
            .unwrap();
    }
}

/// Targets alone, many at once, each the first into a schema that does not
/// exist yet, round after round: no loser of the schema creation race fails.
#[test]
fn targets_started_at_once_into_one_new_schema_all_succeed() {
    const TARGETS: usize = 6;
    const ROUNDS: usize = 4;
    let dst = cluster().create_database("pipes_race");
    let dir = tempfile::tempdir().unwrap();
    for round in 0..ROUNDS {
        let schema = format!("race_{round}");
        let mut config = dst.config();
        config["default_target_schema"] = json!(schema);
        config["notify_channel"] = json!(CHANNEL);
        let config = write_json(dir.path(), &format!("target_{round}.json"), &config);
        let start = Arc::new(Barrier::new(TARGETS));
        let runs: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..TARGETS)
                .map(|i| {
                    let config = config.clone();
                    let start = Arc::clone(&start);
                    scope.spawn(move || {
                        let input = format!(
                            "{}\n{}\n{}\n",
                            json!({"type": "SCHEMA", "stream": format!("t{i}"), "key_properties": ["id"],
                                   "schema": {"properties": {"id": {"type": "integer"}}}}),
                            json!({"type": "RECORD", "stream": format!("t{i}"), "record": {"id": i}}),
                            json!({"type": "STATE", "value": {"target": i}}),
                        );
                        let mut cmd = Command::new(bin("target-postgres-rs"));
                        cmd.arg("--config").arg(&config);
                        start.wait();
                        pg_testkit::process::run(&mut cmd, input.as_bytes())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, r) in runs.iter().enumerate() {
            assert!(r.ok, "round {round}, target {i}: {}", r.stderr);
            assert_eq!(r.stdout_json(), vec![json!({"target": i})]);
        }
        let tables = pg_testkit::rows::tables(&dst, &schema);
        let want: Vec<(String, i64)> = (0..TARGETS).map(|i| (format!("t{i}"), 1)).collect();
        assert_eq!(tables, want, "round {round}");
    }
}

/// Streams read in parallel (`max_parallel_streams`): the tables of the
/// parallel tests, with row counts (one INCREMENTAL on `updated_at`).
const PARALLEL: &[(&str, i32)] = &[
    ("p1", 20000),
    ("p2", 12000),
    ("p3", 0),
    ("p4", 8000),
    ("p5", 15000),
];
const INCREMENTAL_TABLE: &str = "p4";

fn parallel_source() -> TestDb {
    let src = cluster().create_database("parallel_src");
    let mut s = src.client();
    for (t, n) in PARALLEL {
        // Updates move some rows to the heap's end: ctid order is not id order.
        s.batch_execute(&format!(
            "CREATE TABLE {t} (id integer PRIMARY KEY, v text, updated_at integer);
             INSERT INTO {t} SELECT i, repeat('x', i % 50), i FROM generate_series(1, {n}) i;
             UPDATE {t} SET v = 'moved' WHERE id % 97 = 0;"
        ))
        .unwrap();
    }
    src
}

/// A catalog selecting every parallel table (one INCREMENTAL).
fn parallel_catalog(dir: &std::path::Path, tap: &std::path::Path) -> PathBuf {
    let mut catalog = discover(tap);
    let full: Vec<String> = (PARALLEL.iter())
        .filter(|(t, _)| *t != INCREMENTAL_TABLE)
        .map(|(t, _)| format!("public-{t}"))
        .collect();
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    select(&mut catalog, &full, "FULL_TABLE", None);
    select(
        &mut catalog,
        &[&format!("public-{INCREMENTAL_TABLE}")],
        "INCREMENTAL",
        Some("updated_at"),
    );
    write_json(dir, "catalog.json", &catalog)
}

/// Runs the tap alone; returns its messages.
fn tap_messages(
    tap: &std::path::Path,
    catalog: &std::path::Path,
    state: Option<&Value>,
    dir: &std::path::Path,
) -> Vec<Value> {
    let state = state.map(|s| write_json(dir, "state.json", s));
    let out = e2e_tests::tap_sync(tap, catalog, state.as_deref())
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

/// The source ids a STATE's bookmark of `table` claims are sent: rows up to
/// its ctid (FULL_TABLE in progress), below its replication key value
/// (INCREMENTAL), none without either.
fn claimed_ids(src: &mut postgres::Client, table: &str, bookmark: &Value) -> Vec<i32> {
    let (sql, arg) = if let Some(ctid) = bookmark["ctid"].as_str() {
        (
            format!("SELECT id FROM {table} WHERE ctid <= $1::text::tid"),
            ctid.to_owned(),
        )
    } else if let Some(v) = bookmark["replication_key_value"].as_i64() {
        (
            format!("SELECT id FROM {table} WHERE updated_at < $1::text::integer"),
            v.to_string(),
        )
    } else {
        return Vec::new();
    };
    src.query(&sql, &[&arg])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn parallel_streams_interleave_whole_messages_with_states_only_behind_their_rows() {
    let src = parallel_source();
    let dir = tempfile::tempdir().unwrap();
    let mut config = src.config();
    config["max_parallel_streams"] = json!(3);
    config["state_interval_records"] = json!(500);
    let tap = write_json(dir.path(), "tap.json", &config);
    let catalog = parallel_catalog(dir.path(), &tap);
    let messages = tap_messages(&tap, &catalog, None, dir.path());

    let mut s = src.client();
    let mut sent: std::collections::BTreeMap<String, BTreeSet<i32>> = Default::default();
    let mut schema_seen = BTreeSet::new();
    let mut states = 0;
    let mut snapshot: Option<(Value, Value)> = None;
    // Which stream each RECORD belongs to, in output order: streams interleave.
    let mut order: Vec<String> = Vec::new();
    for (n, m) in messages.iter().enumerate() {
        match m["type"].as_str().unwrap() {
            "SCHEMA" => {
                schema_seen.insert(m["stream"].as_str().unwrap().to_owned());
            }
            "RECORD" => {
                let stream = m["stream"].as_str().unwrap().to_owned();
                assert!(
                    schema_seen.contains(&stream),
                    "message {n}: RECORD of {stream} before its SCHEMA"
                );
                let id = m["record"]["id"].as_i64().unwrap() as i32;
                assert!(
                    sent.entry(stream.clone()).or_default().insert(id),
                    "{stream} id {id} twice"
                );
                if order.last() != Some(&stream) {
                    order.push(stream);
                }
            }
            "STATE" => {
                states += 1;
                // One snapshot for every stream: the same xmax and in-progress list.
                for b in m["value"]["bookmarks"].as_object().unwrap().values() {
                    if let Some(x) = b.get("snapshot_xmax") {
                        let seen = (x.clone(), b["snapshot_xip"].clone());
                        assert_eq!(snapshot.get_or_insert(seen.clone()), &seen, "message {n}");
                    }
                }
                for (id, bookmark) in m["value"]["bookmarks"].as_object().unwrap() {
                    let table = id.strip_prefix("public-").unwrap();
                    let empty = BTreeSet::new();
                    let so_far = sent.get(id).unwrap_or(&empty);
                    for claimed in claimed_ids(&mut s, table, bookmark) {
                        assert!(so_far.contains(&claimed), "message {n}: STATE claims {id} row {claimed}, not sent yet: {bookmark} (sent so far: {:?})", sent.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>());
                    }
                }
            }
            _ => {}
        }
    }
    for (t, rows) in PARALLEL {
        let got = sent.get(&format!("public-{t}")).map_or(0, BTreeSet::len);
        assert_eq!(got, *rows as usize, "{t}: every row once");
    }
    assert!(states > 50, "{states} states");
    assert!(
        snapshot.is_some(),
        "FULL_TABLE bookmarks carry the snapshot"
    );
    assert!(
        order.len() > PARALLEL.len(),
        "streams interleave: {order:?}"
    );
    let last = &messages.last().unwrap()["value"];
    assert_eq!(last["currently_syncing"], Value::Null);
    for (t, rows) in PARALLEL {
        let b = &last["bookmarks"][format!("public-{t}")];
        if *t == INCREMENTAL_TABLE {
            assert_eq!(b["replication_key_value"], json!(rows), "{b}");
        } else {
            assert!(b["version"].is_i64() && b.get("ctid").is_none(), "{t}: {b}");
        }
    }

    // Resumable from any STATE: from one halfway, the rows before it and
    // the rows of the resumed run together are every row.
    let (half, state) = (messages.iter().enumerate())
        .filter(|(_, m)| m["type"] == "STATE")
        .nth(states / 2)
        .map(|(i, m)| (i, m["value"].clone()))
        .unwrap();
    let mut before: std::collections::BTreeMap<String, BTreeSet<i32>> = Default::default();
    for m in &messages[..half] {
        if m["type"] == "RECORD" {
            before
                .entry(m["stream"].as_str().unwrap().to_owned())
                .or_default()
                .insert(m["record"]["id"].as_i64().unwrap() as i32);
        }
    }
    let resumed = tap_messages(&tap, &catalog, Some(&state), dir.path());
    for m in &resumed {
        if m["type"] == "RECORD" {
            before
                .entry(m["stream"].as_str().unwrap().to_owned())
                .or_default()
                .insert(m["record"]["id"].as_i64().unwrap() as i32);
        }
    }
    for (t, rows) in PARALLEL {
        assert_eq!(
            before.get(&format!("public-{t}")).map_or(0, BTreeSet::len),
            *rows as usize,
            "{t} after resuming from message {half}"
        );
    }
}

#[test]
fn parallel_streams_through_the_target_converge_run_after_run() {
    let src = parallel_source();
    let dst = cluster().create_database("parallel_dst");
    let dir = tempfile::tempdir().unwrap();
    let mut config = src.config();
    config["max_parallel_streams"] = json!(4);
    config["state_interval_records"] = json!(1000);
    let tap = write_json(dir.path(), "tap.json", &config);
    let catalog = parallel_catalog(dir.path(), &tap);
    let target = write_json(dir.path(), "target.json", &dst.config());
    let mut state: Option<Value> = None;
    for run in 0..2 {
        if run == 1 {
            let mut s = src.client();
            for (t, n) in PARALLEL {
                s.batch_execute(&format!(
                    "INSERT INTO {t} VALUES ({n} + 1, 'new', {n} + 1); UPDATE {t} SET v = 'again', updated_at = {n} + 2 WHERE id = 1;"
                ))
                .unwrap();
            }
        }
        let state_path = state
            .as_ref()
            .map(|s| write_json(dir.path(), "state.json", s));
        let r = pipe(&tap, &catalog, state_path.as_deref(), &target);
        r.assert_success();
        state = r.last_state().cloned();
        let mut s = src.client();
        let mut d = dst.client();
        for (t, _) in PARALLEL {
            let want = table_rows(&mut s, "public", t, &["id", "v", "updated_at"], None);
            let live = table_rows(
                &mut d,
                "public",
                t,
                &["id", "v", "updated_at"],
                Some("_sdc_deleted_at IS NULL"),
            );
            assert_eq!(live, want, "run {run}: {t}");
        }
    }
}
