//! Integer keys that arrive nearly in order (as a tap's physical-order scan
//! sends them) go straight into the table when they can't conflict; anything
//! that might (a key loaded before, a repeat) is merged. Either way the table
//! ends with the last record per key.

/// Runs the target in batches of 4: (exit 0, stderr).
fn run_target(db: &pg_testkit::TestDb, input: &str) -> (bool, String) {
    // "batch loaded" lines are debug-level.
    let cfg = crate::common::config(db, serde_json::json!({"batch_size_rows": 4}));
    let r = pg_testkit::process::run(
        crate::common::target(cfg.path()).env("RUST_LOG", "target_postgres_rs=debug"),
        input.as_bytes(),
    );
    assert!(r.stdin_ok, "the target stopped reading: {}", r.stderr);
    (r.ok, r.stderr)
}

fn messages(records: &[(i64, &str)]) -> String {
    let mut s = String::from(
        r#"{"type":"SCHEMA","stream":"public-t","schema":{"type":"object","properties":{"id":{"type":"integer","x-sql-datatype":"bigint"},"v":{"type":["null","string"]}}},"key_properties":["id"]}"#,
    );
    s.push('\n');
    for (id, v) in records {
        s.push_str(&format!(
            r#"{{"type":"RECORD","stream":"public-t","record":{{"id":{id},"v":"{v}"}}}}"#
        ));
        s.push('\n');
    }
    s
}

#[test]
fn nearly_ordered_keys_with_repeats_converge() {
    let db = pg_testkit::cluster().create_database("direct_keys");
    // Batches of 4: out of order, an update of an earlier batch's key, a repeat
    // inside a batch, a key below everything loaded so far, a gap.
    let first: Vec<(i64, &str)> = vec![
        (1, "a"),
        (2, "a"),
        (4, "a"),
        (3, "a"),
        (5, "a"),
        (2, "b"),
        (6, "a"),
        (7, "a"),
        (9, "a"),
        (8, "a"),
        (9, "b"),
        (10, "a"),
        (0, "a"),
        (100, "a"),
        (11, "a"),
        (12, "a"),
        (13, "a"),
    ];
    let (ok, err) = run_target(&db, &messages(&first));
    assert!(ok, "{err}");
    // The first batch (1, 2, 4, 3) went straight in; the second (a repeat of 2) was merged.
    let batches: Vec<&str> = err.lines().filter(|l| l.contains("batch loaded")).collect();
    assert!(batches[0].contains("staged=false"), "{batches:?}");
    assert!(batches[1].contains("staged=true"), "{batches:?}");
    // A second run into the populated table: updates and new keys, mixed.
    let second: Vec<(i64, &str)> = vec![(14, "c"), (1, "c"), (15, "c"), (100, "c"), (101, "c")];
    let (ok, err) = run_target(&db, &messages(&second));
    assert!(ok, "{err}");

    let rows: Vec<(i64, String)> = db
        .client()
        .query("SELECT id, v FROM public.t ORDER BY id", &[])
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut want: std::collections::BTreeMap<i64, &str> = Default::default();
    for (k, v) in first.iter().chain(&second) {
        want.insert(*k, v);
    }
    let want: Vec<(i64, String)> = want.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    assert_eq!(rows, want);
}

/// A writer still in flight when a run starts (a killed predecessor's
/// backend finishing its COMMIT, as an orchestrator's quick retry meets it)
/// must not make the table's largest key look smaller, or the table empty:
/// the run waits for it, then merges by key instead of a direct COPY that
/// would fail on the unique index. For an integer key and a text key.
#[test]
fn a_writer_in_flight_at_start_is_waited_for_and_merged() {
    for (name, ty, sql, start) in [
        ("inflight_int", "integer", "bigint", 3),
        ("inflight_text", "string", "text", 1),
    ] {
        let db = pg_testkit::cluster().create_database(name);
        let id = |i: i64| {
            if ty == "integer" {
                i.to_string()
            } else {
                format!("\"{i}\"")
            }
        };
        let input = |ids: std::ops::RangeInclusive<i64>, v: &str| {
            let mut s = format!(
                r#"{{"type":"SCHEMA","stream":"public-t","schema":{{"type":"object","properties":{{"id":{{"type":"{ty}","x-sql-datatype":"{sql}"}},"v":{{"type":["null","string"]}}}}}},"key_properties":["id"]}}"#
            );
            s.push('\n');
            for i in ids {
                s.push_str(&format!(
                    r#"{{"type":"RECORD","stream":"public-t","record":{{"id":{},"v":"{v}"}}}}"#,
                    id(i)
                ));
                s.push('\n');
            }
            s
        };
        // What earlier runs committed: keys below `start` (none for text,
        // whose table is then empty).
        let (ok, stderr) = run_target(&db, &input(1..=start - 1, "old"));
        assert!(ok, "{stderr}");
        let mut other = db.client();
        let mut tx = other.transaction().unwrap();
        let literal = if ty == "integer" {
            start.to_string()
        } else {
            format!("'{start}'")
        };
        tx.batch_execute(&format!(
            "INSERT INTO public.t (id, v) VALUES ({literal}, 'in flight')"
        ))
        .unwrap();
        let run = {
            let db = db.clone();
            let input = input(start..=start + 1, "new");
            std::thread::spawn(move || run_target(&db, &input))
        };
        std::thread::sleep(std::time::Duration::from_millis(1500));
        tx.commit().unwrap();
        let (ok, stderr) = run.join().unwrap();
        assert!(ok, "{name}: {stderr}");
        let rows: Vec<(String, String)> = db
            .client()
            .query("SELECT id::text, v FROM public.t ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let expected: Vec<(String, String)> = (1..=start + 1)
            .map(|i| {
                (
                    i.to_string(),
                    if i < start { "old" } else { "new" }.to_owned(),
                )
            })
            .collect();
        assert_eq!(rows, expected, "{name}");
    }
}
