//! Row filters (`stream_options.<stream>.custom_where_clauses`) in all three
//! methods, LOG_BASED's publication row filter and column list (PostgreSQL
//! 15+; refused before), clauses that are not one condition, and
//! `max_record_count`: the tap's own output, on real Postgres.

use std::path::Path;

use e2e_tests::{discover, pipe, select, table_rows, tap_sync, write_json};
use pg_testkit::catalog::select_column;
use pg_testkit::process::{run, Run};
use pg_testkit::snapshot::wait_for_older_transactions;
use pg_testkit::{cluster, TestDb};
use serde_json::{json, Value};

use crate::log_based::Cdc;

/// A table `t` of ten rows: even ids in region `eu`, odd in `us`.
fn source(hint: &str) -> TestDb {
    let db = cluster().create_database(hint);
    cluster()
        .client(&db.name)
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, region text NOT NULL, updated int NOT NULL);
             CREATE TABLE victim (id int);
             INSERT INTO t SELECT i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, i
               FROM generate_series(1, 10) i;",
        )
        .unwrap();
    db
}

/// Runs the tap over `db` with `extra` settings, the catalog selecting `t`.
fn sync(
    db: &TestDb,
    dir: &Path,
    extra: Value,
    method: &str,
    key: Option<&str>,
    state: Option<&Value>,
) -> Run {
    let mut catalog = discover(&write_json(dir, "plain.json", &db.config()));
    let mut config = db.config();
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let config = write_json(dir, "tap.json", &config);
    select(&mut catalog, &["public-t"], method, key);
    let catalog = write_json(dir, "catalog.json", &catalog);
    let state = state.map(|s| write_json(dir, "state.json", s));
    run(&mut tap_sync(&config, &catalog, state.as_deref()), b"")
}

/// The `id`s of the RECORDs, in order.
fn ids(run: &Run) -> Vec<i64> {
    run.stdout_json()
        .iter()
        .filter(|m| m["type"] == "RECORD")
        .map(|m| m["record"]["id"].as_i64().unwrap())
        .collect()
}

fn last_state(run: &Run) -> Value {
    run.stdout_json()
        .into_iter()
        .rfind(|m| m["type"] == "STATE")
        .expect("a STATE")["value"]
        .clone()
}

fn filters(clauses: &[&str]) -> Value {
    json!({"stream_options": {"public-t": {"custom_where_clauses": clauses}}})
}

#[test]
fn full_table_and_incremental_read_only_the_filtered_rows() {
    let db = source("filter_reads");
    let dir = tempfile::tempdir().unwrap();
    let eu = filters(&["region = 'eu'", "id > 2 -- a comment"]);
    let full = sync(&db, dir.path(), eu.clone(), "FULL_TABLE", None, None);
    assert!(full.ok, "{}", full.stderr);
    assert_eq!(ids(&full), [4, 6, 8, 10]);
    let inc = sync(&db, dir.path(), eu, "INCREMENTAL", Some("updated"), None);
    assert!(inc.ok, "{}", inc.stderr);
    assert_eq!(ids(&inc), [4, 6, 8, 10]);
    assert_eq!(
        last_state(&inc)["bookmarks"]["public-t"]["replication_key_value"],
        10
    );
}

#[test]
fn max_record_count_stops_and_the_next_run_goes_on() {
    let db = source("filter_limit");
    // The resumed runs below send exactly the rows after the bookmark only
    // if the first run's snapshot sees the whole setup.
    wait_for_older_transactions(&mut db.client());
    let dir = tempfile::tempdir().unwrap();
    let mut extra = filters(&["region = 'eu'"]);
    extra["max_record_count"] = json!(2);
    // FULL_TABLE: stopped as if interrupted, resumed (with the filter ANDed
    // to the resume predicate), then completed by a run below the limit.
    let first = sync(&db, dir.path(), extra.clone(), "FULL_TABLE", None, None);
    assert!(first.ok, "{}", first.stderr);
    assert_eq!(ids(&first), [2, 4]);
    let activations = |r: &Run| {
        r.stdout_json()
            .iter()
            .filter(|m| m["type"] == "ACTIVATE_VERSION")
            .count()
    };
    assert_eq!(activations(&first), 1, "only the opening ACTIVATE_VERSION");
    let state = last_state(&first);
    assert!(
        state["bookmarks"]["public-t"]["ctid"].is_string(),
        "{state}"
    );
    let second = sync(
        &db,
        dir.path(),
        extra.clone(),
        "FULL_TABLE",
        None,
        Some(&state),
    );
    assert_eq!(ids(&second), [6, 8]);
    let third = sync(
        &db,
        dir.path(),
        extra.clone(),
        "FULL_TABLE",
        None,
        Some(&last_state(&second)),
    );
    assert_eq!(ids(&third), [10]);
    assert_eq!(activations(&third), 1, "the closing ACTIVATE_VERSION");
    // INCREMENTAL: LIMIT in key order; the bookmark is the last key sent.
    let inc = sync(
        &db,
        dir.path(),
        extra.clone(),
        "INCREMENTAL",
        Some("updated"),
        None,
    );
    assert_eq!(ids(&inc), [2, 4]);
    let next = sync(
        &db,
        dir.path(),
        extra,
        "INCREMENTAL",
        Some("updated"),
        Some(&last_state(&inc)),
    );
    assert_eq!(
        ids(&next),
        [4, 6, 8],
        "from the bookmark, inclusive (4 again, not counted), then two more"
    );
}

/// INCREMENTAL with `max_record_count` below the number of rows sharing one
/// key value: the run stops among them, and the next sends them all again
/// (not counted against the limit) and goes on; counted, every run would
/// stop at the same rows.
#[test]
fn limited_incremental_runs_go_on_past_a_key_value_many_rows_share() {
    let db = cluster().create_database("limit_ties");
    db.client()
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, region text NOT NULL, updated int NOT NULL);
             INSERT INTO t SELECT i, 'eu', CASE WHEN i <= 5 THEN 1 ELSE i END
               FROM generate_series(1, 10) i;",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = json!({"max_record_count": 2});
    let mut state: Option<Value> = None;
    let mut sent = Vec::new();
    for _ in 0..4 {
        let r = sync(
            &db,
            dir.path(),
            extra.clone(),
            "INCREMENTAL",
            Some("updated"),
            state.as_ref(),
        );
        assert!(r.ok, "{}", r.stderr);
        let mut run = ids(&r);
        run.sort_unstable();
        sent.push(run);
        state = Some(last_state(&r));
    }
    assert!(
        sent[0].len() == 2 && sent[0].iter().all(|id| *id <= 5),
        "two of the five rows at 1: {sent:?}"
    );
    assert_eq!(sent[1], [1, 2, 3, 4, 5, 6, 7], "{sent:?}");
    assert_eq!(sent[2], [7, 8, 9], "{sent:?}");
    assert_eq!(sent[3], [9, 10], "{sent:?}");
    assert_eq!(
        state.unwrap()["bookmarks"]["public-t"]["replication_key_value"],
        10
    );
}

/// Limited FULL_TABLE runs over a table whose rows before the bookmark keep
/// changing between runs: each resumed run re-sends exactly the rows changed
/// since the run before it (its snapshot handed on with the bookmark, not
/// the first run's, which would bring every row changed since) and then
/// `max_record_count` new ones. Re-sent rows do
/// not count against the limit: were they as many as the limit, every run
/// would stop before its bookmark and never finish.
#[test]
fn limited_runs_go_on_while_rows_before_the_bookmark_change() {
    const LIMIT: usize = 40;
    const ROWS: usize = 300;
    let db = cluster().create_database("limit_progress");
    let mut c = db.client();
    // Pages a third full: an UPDATE keeps the new version in its page
    // (before the bookmark) rather than moving it to the end.
    c.batch_execute(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, updated int NOT NULL, pad text NOT NULL) \
           WITH (fillfactor = 30);
         INSERT INTO t SELECT i, 0, repeat('x', 100) FROM generate_series(1, {ROWS}) i;"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = json!({"max_record_count": LIMIT});
    let mut latest = std::collections::BTreeMap::new();
    let mut state: Option<Value> = None;
    let mut expected: Option<Vec<i64>> = None;
    // The rows a run read after its bookmark (all, in the first run).
    let mut fresh: Option<Vec<i32>> = None;
    for run in 1.. {
        assert!(
            run <= ROWS / LIMIT + 2,
            "not done after {run} runs: {state:?}"
        );
        wait_for_older_transactions(&mut c);
        let r = sync(
            &db,
            dir.path(),
            extra.clone(),
            "FULL_TABLE",
            None,
            state.as_ref(),
        );
        assert!(r.ok, "{}", r.stderr);
        let mut sent = Vec::new();
        for m in r.stdout_json().iter().filter(|m| m["type"] == "RECORD") {
            let id = m["record"]["id"].as_i64().unwrap();
            latest.insert(id, m["record"]["updated"].as_i64().unwrap());
            sent.push(id);
        }
        if let Some(expected) = expected.take() {
            sent.sort_unstable();
            assert_eq!(sent, expected, "run {run}");
        }
        let s = last_state(&r);
        let Some(bookmark) = s["bookmarks"]["public-t"]["ctid"]
            .as_str()
            .map(str::to_owned)
        else {
            break;
        };
        state = Some(s);
        // Change the rows this run read after its bookmark, then work out
        // what the next run must send: those now at or before the new
        // bookmark, and the first LIMIT rows after it.
        let changed = fresh
            .take()
            .unwrap_or_else(|| sent.iter().map(|&id| id as i32).collect());
        c.execute(
            "UPDATE t SET updated = $1 WHERE id = ANY($2)",
            &[&(run as i32), &changed],
        )
        .unwrap();
        let resent = c
            .query(
                "SELECT id FROM t WHERE id = ANY($1) AND ctid <= $2::text::tid",
                &[&changed, &bookmark],
            )
            .unwrap();
        let next = c
            .query(
                "SELECT id FROM (SELECT id, ctid FROM t WHERE ctid > $1::text::tid \
                   ORDER BY ctid LIMIT $2) n",
                &[&bookmark, &(LIMIT as i64)],
            )
            .unwrap();
        assert!(
            resent.len() >= LIMIT / 2,
            "only {} rows stayed before {bookmark}",
            resent.len()
        );
        fresh = Some(next.iter().map(|row| row.get(0)).collect());
        let mut ids: Vec<i64> = resent
            .iter()
            .chain(&next)
            .map(|row| i64::from(row.get::<_, i32>(0)))
            .collect();
        ids.sort_unstable();
        expected = Some(ids);
    }
    let source: std::collections::BTreeMap<i64, i64> = c
        .query("SELECT id, updated FROM t", &[])
        .unwrap()
        .iter()
        .map(|row| {
            (
                i64::from(row.get::<_, i32>(0)),
                i64::from(row.get::<_, i32>(1)),
            )
        })
        .collect();
    assert_eq!(latest, source, "the latest version of every row was sent");
}

#[test]
fn a_clause_that_is_not_one_condition_is_refused_before_anything_runs() {
    let db = source("filter_injection");
    let dir = tempfile::tempdir().unwrap();
    for (clause, problem) in [
        (
            "1=1); DROP TABLE victim; --",
            "has a `)` without its `(`: a clause must be one whole condition",
        ),
        (
            "1=1; DROP TABLE victim",
            "contains `;`: a clause is one SQL condition, not statements (quote a literal `;` as ';')",
        ),
        ("id > 0) OR (true", "has a `)` without its `(`: a clause must be one whole condition"),
        ("region = 'eu", "has an unterminated string ('...')"),
        ("id > 0 /* DROP", "has an unterminated comment (/* ...)"),
    ] {
        let r = sync(&db, dir.path(), filters(&["id > 0", clause]), "FULL_TABLE", None, None);
        assert!(!r.ok);
        assert_eq!(
            error(&r),
            format!("config: `stream_options.public-t.custom_where_clauses[1]` {problem}"),
            "{clause}"
        );
        assert!(ids(&r).is_empty());
    }
    let exists = pg_testkit::rows::text(&db, "SELECT to_regclass('public.victim')::text");
    assert_eq!(
        exists.as_deref(),
        Some("victim"),
        "the table is still there"
    );
    // Not a valid condition on the table: refused with the stream named,
    // before any stream syncs.
    let r = sync(
        &db,
        dir.path(),
        filters(&["no_such_column > 1"]),
        "FULL_TABLE",
        None,
        None,
    );
    assert!(!r.ok);
    assert!(r.stdout_json().iter().all(|m| m["type"] != "SCHEMA"));
    assert_eq!(
        error(&r),
        "stream public-t: custom_where_clauses (stream_options) is not a valid condition on this table: \
         ERROR: column \"no_such_column\" does not exist"
    );
    let r = sync(
        &db,
        dir.path(),
        filters(&["region"]),
        "FULL_TABLE",
        None,
        None,
    );
    assert_eq!(
        error(&r),
        "stream public-t: custom_where_clauses (stream_options) is not a valid condition on this table: \
         ERROR: argument of WHERE must be type boolean, not type text"
    );
    // Options for a stream the catalog does not have: a warning naming it.
    let mut extra = filters(&["id > 8"]);
    extra["stream_options"]["public-nope"] = json!({"custom_where_clauses": ["true"]});
    let r = sync(&db, dir.path(), extra, "FULL_TABLE", None, None);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(ids(&r), [9, 10]);
    assert!(
        r.stderr
            .contains("stream_options names streams the catalog does not have")
            && r.stderr.contains("public-nope"),
        "{}",
        r.stderr
    );
    // A misspelled option is an error, not a silently unfiltered copy.
    let extra = json!({"stream_options": {"public-t": {"custom_where_clause": ["id > 8"]}}});
    let r = sync(&db, dir.path(), extra, "FULL_TABLE", None, None);
    assert_eq!(
        error(&r),
        "config: `stream_options.public-t.custom_where_clause` is not a stream option (the options are: custom_where_clauses)"
    );
}

/// The tap alone over a [`Cdc`] source, LOG_BASED, `secret` deselected.
fn log_run(cdc: &Cdc, state: Option<&Value>) -> Run {
    let mut catalog = discover(&cdc.tap_config());
    select(&mut catalog, &["public-t"], "LOG_BASED", None);
    select_column(&mut catalog, "public-t", "secret", false);
    let catalog = write_json(cdc.dir.path(), "catalog.json", &catalog);
    let state = state.map(|s| write_json(cdc.dir.path(), "state.json", s));
    run(
        &mut tap_sync(&cdc.tap_config(), &catalog, state.as_deref()),
        b"",
    )
}

/// The error line a failed run ends with, without the binary's prefix.
fn error(run: &Run) -> &str {
    let line = run.last_error();
    line.strip_prefix("tap-postgres-rs: error: ")
        .unwrap_or(line)
}

/// `(op, id)` of each RECORD: `d` for a delete.
fn changes(run: &Run) -> Vec<(char, i64)> {
    run.stdout_json()
        .iter()
        .filter(|m| m["type"] == "RECORD")
        .map(|m| {
            let op = if m["record"]["_sdc_deleted_at"].is_string() {
                'd'
            } else {
                'u'
            };
            (op, m["record"]["id"].as_i64().unwrap())
        })
        .collect()
}

#[test]
fn log_based_filters_rows_and_columns_on_the_server() {
    let cdc = Cdc::new("filter_log", false);
    let mut src = cdc.src_client();
    src.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, note text, secret text);
         INSERT INTO t SELECT i, 'n' || i, 'PII-' || i FROM generate_series(1, 4) i;",
    )
    .unwrap();
    cdc.tap_extra
        .lock()
        .unwrap()
        .extend(filters(&["id % 2 = 0"]).as_object().unwrap().clone());
    let version = cdc.server_version();
    let first = log_run(&cdc, None);
    if version < 150000 {
        assert!(!first.ok);
        assert_eq!(
            error(&first),
            format!(
                "stream public-t: custom_where_clauses (stream_options) of a LOG_BASED stream filter on the \
                 server through a publication row filter, which PostgreSQL {}.{} does not have (it needs \
                 PostgreSQL 15 or later): remove the stream's custom_where_clauses, or sync it FULL_TABLE \
                 or INCREMENTAL",
                version / 10000,
                version % 10000
            )
        );
        assert!(first.stdout_json().iter().all(|m| m["type"] != "RECORD"));
        return;
    }
    assert!(first.ok, "{}", first.stderr);
    assert_eq!(
        changes(&first),
        [('u', 2), ('u', 4)],
        "the initial copy is filtered too"
    );
    // The publication carries the filter and lists only the selected columns.
    let row = src
        .query_one(
            "SELECT rowfilter, attnames::text[] FROM pg_publication_tables \
              WHERE pubname = $1 AND tablename = 't'",
            &[&format!("pub_{}", cdc.src.name)],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "((id % 2) = 0)");
    assert_eq!(row.get::<_, Vec<String>>(1), ["id", "note"]);

    src.batch_execute(
        "INSERT INTO t VALUES (5, 'n5', 'PII-5'), (6, 'n6', 'PII-6');
         UPDATE t SET note = 'changed' WHERE id IN (5, 6);
         DELETE FROM t WHERE id IN (3, 4);",
    )
    .unwrap();
    let second = log_run(&cdc, Some(&last_state(&first)));
    assert!(second.ok, "{}", second.stderr);
    // Odd ids never left the server: the tap filters nothing itself in LOG_BASED.
    assert_eq!(changes(&second), [('u', 6), ('u', 6), ('d', 4)]);
    for r in [&first, &second] {
        assert!(
            !r.stdout.contains("PII-"),
            "a deselected column's data: {}",
            r.stdout
        );
    }

    // A filter on a column outside the replica identity would break the
    // application's UPDATEs: refused, the publication left as it was.
    cdc.tap_extra
        .lock()
        .unwrap()
        .extend(filters(&["note <> 'x'"]).as_object().unwrap().clone());
    let refused = log_run(&cdc, Some(&last_state(&second)));
    assert!(!refused.ok);
    assert_eq!(
        error(&refused),
        format!(
            "stream public-t: setting the publication's row filter and column list for this table: the row \
             filter or column list would make the application's own UPDATEs and DELETEs of \"public\".\"t\" fail, so \
             the publication was left as it was: ERROR: cannot update table \"t\" (detail: Column used in the \
             publication WHERE expression is not part of the replica identity.). PostgreSQL allows only replica \
             identity columns (the primary key) in a row filter and requires them in a column list: filter on \
             key columns, or set `ALTER TABLE \"public\".\"t\" REPLICA IDENTITY FULL`"
        )
    );
    src.execute("UPDATE t SET note = 'still works'", &[])
        .unwrap();
    let still: String = src
        .query_one(
            "SELECT rowfilter FROM pg_publication_tables WHERE pubname = $1 AND tablename = 't'",
            &[&format!("pub_{}", cdc.src.name)],
        )
        .unwrap()
        .get(0);
    assert_eq!(still, "((id % 2) = 0)");
}

#[test]
fn log_based_max_record_count_stops_at_a_transaction_boundary() {
    let cdc = Cdc::new("filter_log_limit", false);
    let mut src = cdc.src_client();
    src.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, note text, secret text);
         INSERT INTO t SELECT i, 'n', 's' FROM generate_series(1, 4) i;",
    )
    .unwrap();
    cdc.tap_extra
        .lock()
        .unwrap()
        .insert("max_record_count".into(), json!(3));
    let first = log_run(&cdc, None);
    assert!(first.ok, "{}", first.stderr);
    let all: Vec<(char, i64)> = (1..=4).map(|i| ('u', i)).collect();
    assert_eq!(changes(&first), all, "the initial copy is never cut short");
    for pair in [[5, 6], [7, 8], [9, 10]] {
        src.execute(
            "INSERT INTO t VALUES ($1, 'n', 's'), ($2, 'n', 's')",
            &[&pair[0], &pair[1]],
        )
        .unwrap();
    }
    let second = log_run(&cdc, Some(&last_state(&first)));
    assert!(second.ok, "{}", second.stderr);
    // The limit is reached inside the second transaction, which is finished.
    assert_eq!(changes(&second), [('u', 5), ('u', 6), ('u', 7), ('u', 8)]);
    let third = log_run(&cdc, Some(&last_state(&second)));
    assert_eq!(
        changes(&third),
        [('u', 9), ('u', 10)],
        "the next run goes on"
    );
}

/// `tap | target` over a [`Cdc`] source, LOG_BASED, `deselected` columns
/// left out; returns the committed state and the tap's log.
fn log_pipe(cdc: &Cdc, deselected: &[&str], state: Option<&Value>) -> (Value, String) {
    let mut catalog = discover(&cdc.tap_config());
    select(&mut catalog, &["public-t"], "LOG_BASED", None);
    for column in deselected {
        select_column(&mut catalog, "public-t", column, false);
    }
    let catalog = write_json(cdc.dir.path(), "catalog.json", &catalog);
    let state = state.map(|s| write_json(cdc.dir.path(), "state.json", s));
    let r = pipe(
        &cdc.tap_config(),
        &catalog,
        state.as_deref(),
        &cdc.target_config(),
    );
    r.assert_success();
    (
        r.last_state().cloned().expect("a committed state"),
        r.tap_stderr,
    )
}

#[test]
fn log_based_copies_the_stream_again_when_its_filter_or_columns_change() {
    let cdc = Cdc::new("filter_change", true);
    let mut src = cdc.src_client();
    src.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, note text, secret text);
         INSERT INTO t SELECT i, 'n' || i, 'PII-' || i FROM generate_series(1, 4) i;",
    )
    .unwrap();
    let set_filter = |clauses: &[&str]| {
        cdc.tap_extra
            .lock()
            .unwrap()
            .extend(filters(clauses).as_object().unwrap().clone())
    };
    set_filter(&["id % 2 = 0"]);
    if cdc.server_version() < 150000 {
        // Refused at start (the wording: log_based_filters_rows_and_columns_on_the_server).
        let refused = log_run(&cdc, None);
        assert!(!refused.ok);
        assert!(error(&refused).contains("does not have (it needs PostgreSQL 15 or later)"));
        return;
    }
    let dst_rows =
        |columns: &[&str]| table_rows(&mut cdc.dst_client(), "public", "t", columns, None);
    let listed = |src: &mut postgres::Client| -> i64 {
        src.query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1",
            &[&format!("pub_{}", cdc.src.name)],
        )
        .unwrap()
        .get(0)
    };
    // A filter the publication cannot carry keeps a new table out of it: it
    // never joins unfiltered.
    set_filter(&["note <> 'x'"]);
    let refused = log_run(&cdc, None);
    assert!(!refused.ok);
    assert!(
        error(&refused).starts_with(
            "stream public-t: setting the publication's row filter and column list for this table: the row \
             filter or column list would make the application's own UPDATEs and DELETEs of \"public\".\"t\" fail"
        ),
        "{}",
        error(&refused)
    );
    assert_eq!(listed(&mut src), 0);
    set_filter(&["id % 2 = 0"]);
    let (first, _) = log_pipe(&cdc, &["secret"], None);
    assert_eq!(listed(&mut src), 1);
    assert_eq!(dst_rows(&["id", "note"]), ["2\tn2", "4\tn4"]);

    // Row 3 now matches, row 2 no longer: neither is ever in the log again.
    set_filter(&["id > 2"]);
    let (second, log) = log_pipe(&cdc, &["secret"], Some(&first));
    assert_eq!(
        dst_rows(&["id", "note"]),
        ["3\tn3", "4\tn4"],
        "the destination holds what the new filter matches"
    );
    assert!(
        log.contains(
            r#"the row filter (custom_where_clauses) changed from "(id % 2 = 0\n)" to "(id > 2\n)""#
        ),
        "{log}"
    );
    src.execute("UPDATE t SET note = 'changed' WHERE id = 4", &[])
        .unwrap();

    // A column selected now: the rows the log does not rewrite have it too.
    let (third, log) = log_pipe(&cdc, &[], Some(&second));
    assert_eq!(
        dst_rows(&["id", "note", "secret"]),
        ["3\tn3\tPII-3", "4\tchanged\tPII-4"]
    );
    assert!(
        log.contains(r#"column "secret" is selected now: rows sent before lack its values"#),
        "{log}"
    );

    // Unchanged but for spacing and a comment: no copy, only the log.
    set_filter(&[" id  >\n  2 -- the same rows"]);
    src.execute("INSERT INTO t VALUES (5, 'n5', 'PII-5')", &[])
        .unwrap();
    let (_, log) = log_pipe(&cdc, &[], Some(&third));
    assert!(!log.contains("copying the stream again"), "{log}");
    assert_eq!(
        dst_rows(&["id", "note", "secret"]),
        ["3\tn3\tPII-3", "4\tchanged\tPII-4", "5\tn5\tPII-5"]
    );
}
