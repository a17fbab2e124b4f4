//! Lossless Postgres -> Postgres through `tap-postgres-rs | target-postgres-rs`:
//! every column of every table compared, source against destination, value
//! for value (text COPY under the same session settings) and type for type
//! (`format_type`).

use e2e_tests::{compare_table, discover, pipe, select, write_json, TableComparison};
use pg_testkit::cluster;
use serde_json::{json, Value};

const FIXTURE: &str = include_str!("../../fixtures/source.sql");
/// The fixture's numeric Infinity values: PostgreSQL 14 and newer only.
const FIXTURE_NUMERIC_INFINITY: &str = include_str!("../../fixtures/source-numeric-infinity.sql");

/// Every table and view of the fixture: (schema, name).
const TABLES: &[(&str, &str)] = &[
    ("public", "all_types"),
    ("public", "same_name"),
    ("other", "same_name"),
    ("public", "no_pk"),
    ("public", "composite_key"),
    ("public", "happy_rows"),
    ("public", "measurements"),
    ("public", "order"),
    ("public", "CamelCase Table"),
    ("public", "таблица"),
    (
        "public",
        "t23456789012345678901234567890123456789012345678901234567890123",
    ),
];

struct Pair {
    src: pg_testkit::TestDb,
    dst: pg_testkit::TestDb,
    dir: tempfile::TempDir,
}

impl Pair {
    fn new(name: &str) -> Pair {
        let src = cluster().create_database(&format!("{name}_src"));
        let dst = cluster().create_database(&format!("{name}_dst"));
        Pair {
            src,
            dst,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn tap_config(&self) -> std::path::PathBuf {
        write_json(self.dir.path(), "tap.json", &self.src.config())
    }

    fn target_config(&self, extra: Value) -> std::path::PathBuf {
        let mut config = self.dst.config();
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        write_json(self.dir.path(), "target.json", &config)
    }

    fn catalog(&self, only: &[&str], method: &str, key: Option<&str>) -> std::path::PathBuf {
        let mut catalog = discover(&self.tap_config());
        select(&mut catalog, only, method, key);
        write_json(self.dir.path(), "catalog.json", &catalog)
    }
}

fn report(results: &[((&str, &str), TableComparison)]) -> String {
    let mut out = String::new();
    for ((schema, table), c) in results {
        if !c.is_identical() {
            out.push_str(&format!(
                "{schema}.{table}: rows {} -> {}, whole rows identical: {}\n  types: {:?}\n  values: {:?}\n",
                c.source_rows, c.destination_rows, c.rows_identical, c.type_differences, c.value_differences
            ));
        }
    }
    out
}

#[test]
fn every_type_and_shape_arrives_identical() {
    let pair = Pair::new("roundtrip");
    pair.src.client().batch_execute(FIXTURE).unwrap();
    if cluster().server_version_num() >= 140_000 {
        pair.src
            .client()
            .batch_execute(FIXTURE_NUMERIC_INFINITY)
            .unwrap();
    }
    // User-defined types are kept when the destination has them: create them
    // there first, as a user would (e.g. from `pg_dump --schema-only`).
    let types = FIXTURE
        .split("-- end of user-defined types")
        .next()
        .unwrap();
    pair.dst.client().batch_execute(types).unwrap();
    let catalog = pair.catalog(&[], "FULL_TABLE", None);
    let run = pipe(
        &pair.tap_config(),
        &catalog,
        None,
        &pair.target_config(json!({})),
    );
    run.assert_success();
    assert!(run.last_state().is_some(), "the target committed no state");

    let mut src = pair.src.client();
    let mut dst = pair.dst.client();
    let results: Vec<_> = TABLES
        .iter()
        .map(|&(schema, table)| {
            (
                (schema, table),
                compare_table(&mut src, &mut dst, schema, table, schema, table),
            )
        })
        .collect();
    let columns: usize = results.iter().map(|(_, c)| c.columns).sum();
    let type_identical: usize = results.iter().map(|(_, c)| c.type_identical.len()).sum();
    let value_identical: usize = results.iter().map(|(_, c)| c.value_identical.len()).sum();
    eprintln!(
        "round trip: {columns} columns in {} tables; type-identical {type_identical}, value-identical {value_identical}",
        TABLES.len()
    );
    assert_eq!(
        (type_identical, value_identical),
        (columns, columns),
        "not every column is identical:\n{}",
        report(&results)
    );
    assert!(
        results.iter().all(|(_, c)| c.is_identical()),
        "{}",
        report(&results)
    );
}

#[test]
fn incremental_second_run_converges_after_updates_and_inserts() {
    let pair = Pair::new("incremental");
    let mut src = pair.src.client();
    src.batch_execute(
        "CREATE TABLE public.events (id bigint PRIMARY KEY, body text, amount numeric(12,2), updated_at timestamptz NOT NULL);
         INSERT INTO public.events SELECT i, 'v1 ' || i, i * 1.25, '2024-01-01'::timestamptz + i * interval '1 minute'
           FROM generate_series(1, 500) i;",
    )
    .unwrap();
    let catalog = pair.catalog(&["public-events"], "INCREMENTAL", Some("updated_at"));
    let target = pair.target_config(json!({}));
    let first = pipe(&pair.tap_config(), &catalog, None, &target);
    first.assert_success();
    let state = write_json(
        pair.dir.path(),
        "state.json",
        first.last_state().expect("a state"),
    );

    src.batch_execute(
        "UPDATE public.events SET body = 'v2 ' || id, updated_at = '2025-01-01'::timestamptz + id * interval '1 second'
           WHERE id % 50 = 0;
         INSERT INTO public.events SELECT i, 'new ' || i, NULL, '2025-06-01'::timestamptz + i * interval '1 second'
           FROM generate_series(501, 600) i;",
    )
    .unwrap();
    let second = pipe(&pair.tap_config(), &catalog, Some(&state), &target);
    second.assert_success();
    let mut dst = pair.dst.client();
    let cmp = compare_table(&mut src, &mut dst, "public", "events", "public", "events");
    assert!(cmp.is_identical(), "{cmp:?}");
    assert_eq!(cmp.destination_rows, 600);
}

#[test]
fn full_table_rerun_removes_source_deletes() {
    for hard_delete in [true, false] {
        let pair = Pair::new(if hard_delete { "fullhard" } else { "fullsoft" });
        let mut src = pair.src.client();
        src.batch_execute(
            "CREATE TABLE public.items (id integer PRIMARY KEY, name text);
             INSERT INTO public.items SELECT i, 'item ' || i FROM generate_series(1, 100) i;",
        )
        .unwrap();
        let catalog = pair.catalog(&["public-items"], "FULL_TABLE", None);
        let target = pair.target_config(json!({"hard_delete": hard_delete}));
        pipe(&pair.tap_config(), &catalog, None, &target).assert_success();
        src.batch_execute("DELETE FROM public.items WHERE id > 90; UPDATE public.items SET name = 'renamed' WHERE id = 1")
            .unwrap();
        pipe(&pair.tap_config(), &catalog, None, &target).assert_success();

        let mut dst = pair.dst.client();
        let live: i64 = dst
            .query_one(
                "SELECT count(*) FROM public.items WHERE _sdc_deleted_at IS NULL",
                &[],
            )
            .unwrap()
            .get(0);
        let all: i64 = dst
            .query_one("SELECT count(*) FROM public.items", &[])
            .unwrap()
            .get(0);
        let name: String = dst
            .query_one("SELECT name FROM public.items WHERE id = 1", &[])
            .unwrap()
            .get(0);
        assert_eq!(live, 90, "hard_delete={hard_delete}");
        assert_eq!(
            all,
            if hard_delete { 90 } else { 100 },
            "hard_delete={hard_delete}"
        );
        assert_eq!(name, "renamed");
    }
}

/// Singer has one null: a json/jsonb value that is the JSON literal `null`
/// travels as `null` and lands as SQL NULL, like every other NULL. The one
/// documented exception to value identity.
#[test]
fn json_null_literal_lands_as_sql_null() {
    let pair = Pair::new("jsonnull");
    pair.src
        .client()
        .batch_execute(
            "CREATE TABLE public.j (id int PRIMARY KEY, v jsonb);
             INSERT INTO public.j VALUES (1, 'null'), (2, NULL), (3, '[null]');",
        )
        .unwrap();
    let catalog = pair.catalog(&["public-j"], "FULL_TABLE", None);
    pipe(
        &pair.tap_config(),
        &catalog,
        None,
        &pair.target_config(json!({})),
    )
    .assert_success();
    let rows: Vec<(i32, Option<String>)> = pair
        .dst
        .client()
        .query("SELECT id, v::text FROM public.j ORDER BY id", &[])
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![(1, None), (2, None), (3, Some("[null]".to_string()))]
    );
}
