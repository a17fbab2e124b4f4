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
