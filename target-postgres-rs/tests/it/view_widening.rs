//! Widening a column that views depend on (Postgres refuses `ALTER COLUMN …
//! TYPE` under a view): plain views, and views on them, are recreated around
//! the change in one transaction with the same definition, options, owner,
//! grants and comments; a view the target can't recreate, or one whose
//! definition no longer fits, fails the load before any row, naming the
//! views and the fix, and nothing changes.

use crate::common::*;
use pg_testkit::rows::text;
use pg_testkit::TestDb;
use serde_json::{json, Value};

fn input(v: Value, record: Value) -> Vec<u8> {
    let mut s = json!({"type": "SCHEMA", "stream": "t",
        "schema": {"type": "object", "properties": {"id": {"type": "integer"}, "v": v}},
        "key_properties": ["id"]})
    .to_string();
    s.push('\n');
    s.push_str(&json!({"type": "RECORD", "stream": "t", "record": record}).to_string());
    s.push('\n');
    s.into_bytes()
}

/// The table `public.t (id bigint, v bigint)` with one row.
fn table(db: &TestDb) {
    let r = run(
        db,
        json!({"add_record_metadata": false}),
        &input(json!({"type": "integer"}), json!({"id": 1, "v": 2})),
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(column_type(db, "v"), "bigint");
}

fn column_type(db: &TestDb, column: &str) -> String {
    text(
        db,
        &format!(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'public.t'::regclass AND attname = '{column}'"
        ),
    )
    .unwrap()
}

/// What a view is, beyond its oid: definition, options, owner, grants on it
/// and its columns, comments.
fn describe(db: &TestDb, view: &str) -> Vec<Option<String>> {
    let row = db
        .client()
        .query_one(
            "SELECT pg_get_viewdef(c.oid), c.reloptions::text, pg_get_userbyid(c.relowner)::text, \
                    c.relacl::text, obj_description(c.oid, 'pg_class'), \
                    (SELECT string_agg(attname || ':' || coalesce(attacl::text, '') || ':' || \
                            coalesce(col_description(c.oid, attnum), ''), ',' ORDER BY attnum) \
                       FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0) \
               FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&view],
        )
        .unwrap();
    (0..6).map(|i| row.get(i)).collect()
}

fn oid(db: &TestDb, view: &str) -> Option<String> {
    text(db, &format!("SELECT to_regclass('{view}')::oid::text"))
}

#[test]
fn views_and_views_on_them_survive_a_widening_unchanged() {
    let db = pg_testkit::cluster().create_database("view_widen");
    table(&db);
    db.client()
        .batch_execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'view_widen_owner') THEN \
               CREATE ROLE view_widen_owner; END IF; \
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'view_widen_reader') THEN \
               CREATE ROLE view_widen_reader; END IF; END $$; \
             CREATE VIEW doubled WITH (security_barrier) AS SELECT id, v, v * 2 AS twice FROM t; \
             ALTER VIEW doubled OWNER TO view_widen_owner; GRANT SELECT ON t TO view_widen_owner; \
             GRANT SELECT ON doubled TO view_widen_reader WITH GRANT OPTION; \
             GRANT SELECT (twice) ON doubled TO PUBLIC; \
             COMMENT ON VIEW doubled IS 'v, twice'; \
             COMMENT ON COLUMN doubled.twice IS 'v * 2'; \
             CREATE SCHEMA \"Reports\"; \
             CREATE VIEW \"Reports\".\"on doubled\" AS SELECT id, twice + 1 AS more FROM doubled \
               WITH LOCAL CHECK OPTION; \
             GRANT SELECT ON \"Reports\".\"on doubled\" TO PUBLIC; \
             CREATE VIEW ids AS SELECT id FROM t",
        )
        .unwrap();
    let views = ["doubled", "\"Reports\".\"on doubled\"", "ids"];
    let before: Vec<_> = views.iter().map(|v| describe(&db, v)).collect();
    let ids_oid = oid(&db, "ids");

    let r = run(
        &db,
        json!({"add_record_metadata": false}),
        &input(json!({"type": "number"}), json!({"id": 3, "v": 1.5})),
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(column_type(&db, "v"), "numeric");
    let after: Vec<_> = views.iter().map(|v| describe(&db, v)).collect();
    // The same definition, which Postgres analyzes again for the new type
    // (its text now shows the implicit cast). Postgres is the oracle for
    // that text (its wording differs by version): the same SQL as a fresh
    // view on the widened table. Everything else is as it was.
    let definitions = |d: &[Vec<Option<String>>]| -> Vec<Option<String>> {
        d.iter().map(|v| v[0].clone()).collect()
    };
    db.client()
        .batch_execute(
            "CREATE SCHEMA oracle; \
             CREATE VIEW oracle.doubled AS SELECT id, v, v * 2 AS twice FROM public.t; \
             CREATE VIEW oracle.on_doubled AS SELECT id, twice + 1 AS more FROM public.doubled",
        )
        .unwrap();
    let oracle = |v: &str| describe(&db, v)[0].clone();
    assert_eq!(
        definitions(&after),
        [
            oracle("oracle.doubled").map(|d| d.replace("public.t", "t")),
            oracle("oracle.on_doubled").map(|d| d.replace("public.doubled", "doubled")),
            before[2][0].clone(),
        ]
    );
    assert!(
        after[0][0].as_deref().unwrap().contains("::numeric"),
        "{after:?}"
    );
    assert_ne!(definitions(&before)[..2], definitions(&after)[..2]);
    let rest = |d: &[Vec<Option<String>>]| -> Vec<Vec<Option<String>>> {
        d.iter().map(|v| v[1..].to_vec()).collect()
    };
    assert_eq!(rest(&after), rest(&before));
    assert_eq!(
        after[0][1].as_deref(),
        Some("{security_barrier=true}"),
        "the options came along"
    );
    // The view not on the column was left alone.
    assert_eq!(oid(&db, "ids"), ids_oid);
    assert_eq!(
        text(
            &db,
            "SELECT string_agg(more::text, ',' ORDER BY id) FROM \"Reports\".\"on doubled\""
        ),
        Some("5,4.0".into())
    );
    assert!(
        r.stderr
            .contains("recreated the views on the widened column"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_view_the_target_cannot_recreate_fails_the_widening_and_is_kept() {
    let db = pg_testkit::cluster().create_database("view_widen_kept");
    table(&db);
    db.client()
        .batch_execute(
            "CREATE VIEW plain AS SELECT v FROM t; \
             CREATE MATERIALIZED VIEW summed AS SELECT sum(v) AS s FROM plain",
        )
        .unwrap();
    let plain = oid(&db, "plain");
    let r = run(
        &db,
        json!({"add_record_metadata": false}),
        &input(json!({"type": "number"}), json!({"id": 3, "v": 1.5})),
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(
        r.last_error(),
        "target-postgres-rs: error: stream `t` (table \"public\".\"t\"): widening a column that views \
         depend on failed: ERROR: cannot alter type of a column used by a view or rule \
         (detail: rule _RETURN on view plain depends on column \"v\"); the views public.plain, \
         public.summed depend on column \"v\", and public.summed cannot be recreated by the target (a \
         materialized view, or a view with triggers, rules or column defaults), so none was touched; \
         fix: drop them, ALTER TABLE \"public\".\"t\" ALTER COLUMN \"v\" TYPE numeric, recreate them, \
         then run again"
    );
    assert_eq!(oid(&db, "plain"), plain);
    assert_eq!(column_type(&db, "v"), "bigint");
    assert_eq!(
        text(&db, "SELECT count(*)::text FROM t"),
        Some("1".into()),
        "no row of the new schema loaded"
    );
}

#[test]
fn a_view_that_no_longer_fits_the_new_type_rolls_everything_back() {
    let db = pg_testkit::cluster().create_database("view_widen_misfit");
    table(&db);
    db.client()
        .batch_execute(
            "CREATE VIEW plus AS SELECT v + 1 AS next FROM t; \
             CREATE VIEW on_plus AS SELECT next FROM plus",
        )
        .unwrap();
    let before = (oid(&db, "plus"), oid(&db, "on_plus"));
    // integer -> string: `text + integer` does not exist.
    let r = run(
        &db,
        json!({"add_record_metadata": false}),
        &input(json!({"type": "string"}), json!({"id": 3, "v": "x"})),
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(
        r.last_error(),
        "target-postgres-rs: error: stream `t` (table \"public\".\"t\"): widening a column that views \
         depend on failed: ERROR: operator does not exist: text + integer (hint: No operator matches \
         the given name and argument types. You might need to add explicit type casts.); the views \
         public.plus, public.on_plus depend on column \"v\"; they were dropped and recreated around the \
         widening in one transaction, which was rolled back (nothing changed); fix: drop them, \
         ALTER TABLE \"public\".\"t\" ALTER COLUMN \"v\" TYPE text, and recreate them adjusted to the \
         new type, then run again"
    );
    assert_eq!((oid(&db, "plus"), oid(&db, "on_plus")), before);
    assert_eq!(column_type(&db, "v"), "bigint");
}
