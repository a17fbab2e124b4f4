//! An opening ACTIVATE_VERSION with soft delete is deferred: the rows the
//! new version re-sends are written once (no mark, then unmark), the rows it
//! does not re-send are marked once, and the final table is the one an
//! immediate activation leaves, however the input ends.

use std::io::Write;
use std::time::Duration;

use crate::common::*;
use pg_testkit::rows::text;
use pg_testkit::TestDb;
use serde_json::{json, Value};

const STREAM: &str = "av";

fn schema() -> Value {
    json!({"type": "SCHEMA", "stream": STREAM, "key_properties": ["id"], "schema": {"type": "object",
        "properties": {"id": {"type": "integer"}, "v": {"type": ["null", "string"]}}}})
}

fn rec(id: i64, version: Option<i64>) -> Value {
    let mut r = json!({"type": "RECORD", "stream": STREAM,
        "record": {"id": id, "v": format!("{id}@{}", version.unwrap_or(0))}});
    if let Some(v) = version {
        r["version"] = json!(v);
    }
    r
}

fn activate(version: i64) -> Value {
    json!({"type": "ACTIVATE_VERSION", "stream": STREAM, "version": version})
}

fn state(n: i64) -> Value {
    json!({"type": "STATE", "value": {"n": n}})
}

fn lines(messages: &[Value]) -> Vec<u8> {
    messages
        .iter()
        .map(|m| format!("{m}\n"))
        .collect::<String>()
        .into_bytes()
}

/// `id:v:version:marked` of every row, by id.
fn rows(db: &TestDb) -> String {
    text(
        db,
        "SELECT string_agg(format('%s:%s:%s:%s', id, v, _sdc_table_version, _sdc_deleted_at IS NOT NULL), ',' ORDER BY id) FROM public.av",
    )
    .unwrap_or_default()
}

/// `id:marked` of every UPDATE of a row, by id then time (a trigger logs them).
fn updates(db: &TestDb) -> String {
    text(
        db,
        "SELECT string_agg(format('%s:%s', id, marked), ',' ORDER BY id, n) FROM public.av_updates",
    )
    .unwrap_or_default()
}

/// Version 1 of ids 1..=6 (opened and closed), then a trigger that logs
/// every later UPDATE of a row.
fn populated(db: &TestDb, settings: &Value) {
    let mut first = vec![schema(), activate(1)];
    first.extend((1..=6).map(|id| rec(id, Some(1))));
    first.push(activate(1));
    let r = run(db, settings.clone(), &lines(&first));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        rows(db),
        "1:1@1:1:f,2:2@1:1:f,3:3@1:1:f,4:4@1:1:f,5:5@1:1:f,6:6@1:1:f"
    );
    db.client()
        .batch_execute(
            "CREATE TABLE public.av_updates (n serial, id bigint, marked boolean);
             CREATE FUNCTION public.av_log() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO public.av_updates (id, marked) VALUES (NEW.id, NEW._sdc_deleted_at IS NOT NULL);
                 RETURN NEW;
             END $$;
             CREATE TRIGGER av_log AFTER UPDATE ON public.av FOR EACH ROW EXECUTE FUNCTION public.av_log();",
        )
        .unwrap();
}

/// One loader and two (the stream then has its own worker).
fn each_parallelism(test: impl Fn(&TestDb, &Value)) {
    for parallelism in [1, 2] {
        let db = pg_testkit::cluster().create_database(&format!("activation_p{parallelism}"));
        test(
            &db,
            &json!({"parallelism": parallelism, "batch_size_rows": 2}),
        );
    }
}

/// Opening ACTIVATE_VERSION 2, ids 1..=3 of version 2, closing one: only ids
/// 4..=6 are marked, and each row is updated once: the re-sent ones by
/// their upsert (never marked first), the others by the activation.
#[test]
fn a_reload_marks_only_the_rows_not_sent_again_and_rewrites_each_row_once() {
    each_parallelism(|db, settings| {
        populated(db, settings);
        let mut second = vec![schema(), activate(2)];
        second.extend((1..=3).map(|id| rec(id, Some(2))));
        second.push(activate(2));
        second.push(state(1));
        let r = run(db, settings.clone(), &lines(&second));
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(
            rows(db),
            "1:1@2:2:f,2:2@2:2:f,3:3@2:2:f,4:4@1:1:t,5:5@1:1:t,6:6@1:1:t"
        );
        assert_eq!(updates(db), "1:f,2:f,3:f,4:t,5:t,6:t");
        assert!(
            r.stderr.contains("activated version: 3 rows of older versions marked deleted (_sdc_deleted_at); live rows: WHERE _sdc_deleted_at IS NULL"),
            "{}",
            r.stderr
        );
        assert_eq!(r.stdout, "{\"n\":1}\n");
    });
}

/// The input ends after the opening ACTIVATE_VERSION and some records (a
/// tap stopped by `max_record_count`, or killed): the last flush applies it
/// before its COMMIT, so the table ends as an immediate activation leaves it.
#[test]
fn input_ending_without_the_closing_activation_still_marks_the_rows_not_sent() {
    each_parallelism(|db, settings| {
        populated(db, settings);
        let mut second = vec![schema(), activate(2)];
        second.extend((1..=3).map(|id| rec(id, Some(2))));
        second.push(state(1));
        let r = run(db, settings.clone(), &lines(&second));
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(
            rows(db),
            "1:1@2:2:f,2:2@2:2:f,3:3@2:2:f,4:4@1:1:t,5:5@1:1:t,6:6@1:1:t"
        );
        assert_eq!(updates(db), "1:f,2:f,3:f,4:t,5:t,6:t");
        assert!(
            r.stderr
                .contains("activated version: 3 rows of older versions marked deleted"),
            "{}",
            r.stderr
        );
        assert_eq!(r.stdout, "{\"n\":1}\n");
    });
}

/// A record without a version, or of another version, after an opening
/// ACTIVATE_VERSION: the activation applies first, so the record stays live
/// (in the middle of one run of records, too).
#[test]
fn a_record_of_another_version_after_an_opening_activation_stays_live() {
    each_parallelism(|db, settings| {
        populated(db, settings);
        let second = vec![
            schema(),
            activate(2),
            rec(1, Some(2)),
            rec(7, None),
            rec(2, Some(3)),
        ];
        let r = run(db, settings.clone(), &lines(&second));
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(
            rows(db),
            "1:1@2:2:f,2:2@3:3:f,3:3@1:1:t,4:4@1:1:t,5:5@1:1:t,6:6@1:1:t,7:7@0::f"
        );
        // Applied before id 7 (after id 1's upsert): id 2 marked, then
        // brought back by its record of version 3.
        assert_eq!(updates(db), "1:f,2:t,2:f,3:t,4:t,5:t,6:t");
        assert!(
            r.stderr
                .contains("activated version: 5 rows of older versions marked deleted"),
            "{}",
            r.stderr
        );
    });
}

/// A STATE between the opening ACTIVATE_VERSION and the closing one is
/// printed once its rows are committed, and at that point the rows not yet
/// re-sent are still live (as on a later run of a tap that opens without
/// ACTIVATE_VERSION); the closing one then marks them.
#[test]
fn a_state_before_the_closing_activation_leaves_old_rows_live() {
    each_parallelism(|db, settings| {
        populated(db, settings);
        let cfg = config(db, settings.clone());
        let Live {
            mut child,
            mut stdin,
            printed,
        } = live_target(cfg.path());
        let mut send = |messages: &[Value]| {
            stdin.write_all(&lines(messages)).unwrap();
            stdin.flush().unwrap();
        };
        send(&[
            schema(),
            activate(2),
            rec(1, Some(2)),
            rec(2, Some(2)),
            state(1),
            rec(3, Some(2)),
            rec(4, Some(2)),
        ]);
        // STATE 1 is printed after the commit of ids 1 and 2; more STATEs
        // let the target print it once a flush committing behind is done.
        let mut first = None;
        for n in 2..40 {
            send(&[state(n)]);
            if let Ok(l) = printed.recv_timeout(Duration::from_millis(250)) {
                first = Some(l);
                break;
            }
        }
        assert_eq!(first.as_deref(), Some("{\"n\":1}"));
        let live = text(
            db,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM public.av WHERE _sdc_deleted_at IS NULL",
        );
        assert_eq!(live.as_deref(), Some("1,2,3,4,5,6"));
        let v2 = text(
            db,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM public.av WHERE _sdc_table_version = 2",
        );
        assert!(
            matches!(v2.as_deref(), Some("1,2") | Some("1,2,3,4")),
            "{v2:?}"
        );
        send(&[activate(2), state(100)]);
        drop(stdin);
        assert!(child.wait().unwrap().success());
        let rest: Vec<String> = printed.iter().collect();
        assert_eq!(rest.last().map(String::as_str), Some("{\"n\":100}"));
        assert_eq!(
            rows(db),
            "1:1@2:2:f,2:2@2:2:f,3:3@2:2:f,4:4@2:2:f,5:5@1:1:t,6:6@1:1:t"
        );
        assert_eq!(updates(db), "1:f,2:f,3:f,4:f,5:t,6:t");
    });
}

/// A closing ACTIVATE_VERSION of a table now empty (no records of its
/// version at all) looks like an opening one; the STATE after it applies it,
/// so that when that STATE is printed (here: after another stream's batch
/// commits) the old rows are already marked.
#[test]
fn a_state_right_after_an_activation_without_records_applies_it_first() {
    each_parallelism(|db, settings| {
        populated(db, settings);
        let cfg = config(db, settings.clone());
        let Live {
            mut child,
            mut stdin,
            printed,
        } = live_target(cfg.path());
        let other = |id: i64| json!({"type": "RECORD", "stream": "other", "record": {"id": id}});
        let mut send = |messages: &[Value]| {
            stdin.write_all(&lines(messages)).unwrap();
            stdin.flush().unwrap();
        };
        send(&[
            schema(),
            activate(2),
            state(1),
            json!({"type": "SCHEMA", "stream": "other", "key_properties": ["id"],
                "schema": {"type": "object", "properties": {"id": {"type": "integer"}}}}),
        ]);
        // The other stream's batches commit; STATE 1 is printed after one.
        let mut first = None;
        for id in 1..200 {
            send(&[other(id), state(1 + id)]);
            if let Ok(l) = printed.recv_timeout(Duration::from_millis(100)) {
                first = Some(l);
                break;
            }
        }
        let first: Value = serde_json::from_str(&first.expect("a STATE printed")).unwrap();
        assert!(first["n"].as_i64().unwrap() >= 1, "{first}");
        // Checked while the target still runs (its input is open).
        assert_eq!(
            rows(db),
            "1:1@1:1:t,2:2@1:1:t,3:3@1:1:t,4:4@1:1:t,5:5@1:1:t,6:6@1:1:t"
        );
        drop(stdin);
        assert!(child.wait().unwrap().success());
        assert_eq!(updates(db), "1:t,2:t,3:t,4:t,5:t,6:t");
    });
}

/// `hard_delete`: the opening ACTIVATE_VERSION still deletes at once (every
/// row of version 1, before any record of version 2 arrives).
#[test]
fn hard_delete_activates_at_once() {
    let db = pg_testkit::cluster().create_database("activation_hard");
    let settings = json!({"hard_delete": true});
    populated(&db, &settings);
    let mut second = vec![schema(), activate(2)];
    second.extend((1..=3).map(|id| rec(id, Some(2))));
    second.push(activate(2));
    let r = run(&db, settings, &lines(&second));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(rows(&db), "1:1@2:2:f,2:2@2:2:f,3:3@2:2:f");
    assert!(
        r.stderr
            .contains("activated version: 6 rows of older versions deleted"),
        "{}",
        r.stderr
    );
    // Deleted, then inserted anew: no row was updated.
    assert_eq!(updates(&db), "");
}
