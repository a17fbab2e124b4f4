//! LOG_BASED under what production databases do: schema changes inside and
//! between runs, tables joining while transactions write to them, slots
//! dropped, replaced or invalidated, generated columns, partitioned tables,
//! streams that cannot be replicated, and kills at random moments. After
//! every run the destination equals the source.

use std::time::Duration;

use e2e_tests::write_json;
use pg_testkit::TestDb;
use serde_json::{json, Value};

use crate::log_based::Cdc;

fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or_default()
}

#[test]
fn ddl_inside_a_run_maps_columns_by_name() {
    let cdc = Cdc::new("cdc_ddl_in", false);
    let mut src = cdc.src.client();
    src.batch_execute(
        "CREATE TABLE t (id integer PRIMARY KEY, p integer, q integer, r integer, s integer);
         INSERT INTO t VALUES (1, 10, 11, 12, 13), (2, 20, 21, 22, 23);",
    )
    .unwrap();
    let tables = ["public-t"];
    let state = cdc.run(&tables, None);
    // Changes before and after the DDL, all inside the next run's range.
    src.batch_execute(
        "INSERT INTO t VALUES (3, 30, 31, 32, 33);
         ALTER TABLE t DROP COLUMN p, ADD COLUMN u integer;
         INSERT INTO t (id, q, r, s, u) VALUES (4, 1111, 2111, 3111, 4111);
         UPDATE t SET u = 5 WHERE id = 1;
         ALTER TABLE t ADD COLUMN v text;
         INSERT INTO t (id, q, v) VALUES (5, 15, 'five');
         UPDATE t SET v = 'two' WHERE id = 2;",
    )
    .unwrap();
    let state = cdc.run(&tables, Some(&state));
    cdc.assert_converged("t", &["id", "q", "r", "s", "u", "v"]);
    let row: (Option<i32>, Option<i32>) = {
        let r = cdc
            .dst
            .client()
            .query_one("SELECT q, u FROM public.t WHERE id = 4", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        row,
        (Some(1111), Some(4111)),
        "no value moved to another column"
    );
    // The stream's layout bookmark now names the new columns.
    let layout = state["bookmarks"]["public-t"]["layout"].to_string();
    assert!(
        layout.contains(":u\"") && layout.contains(":v\""),
        "{layout}"
    );
    src.batch_execute("INSERT INTO t (id, q, u, v) VALUES (6, 16, 6, 'six')")
        .unwrap();
    cdc.run(&tables, Some(&state));
    cdc.assert_converged("t", &["id", "q", "r", "s", "u", "v"]);
}

#[test]
fn ddl_that_leaves_destination_rows_wrong_recopies_the_table() {
    let cdc = Cdc::new("cdc_ddl_recopy", false);
    let mut src = cdc.src.client();
    src.batch_execute(
        "CREATE TABLE t (id integer PRIMARY KEY, a text, c numeric(10,2));
         INSERT INTO t SELECT i, 'a' || i, i + 0.25 FROM generate_series(1, 20) i;",
    )
    .unwrap();
    let tables = ["public-t"];
    let mut state = cdc.run(&tables, None);
    // Each change, then rows written after it (inside the next run's range)
    // and rows not touched since (only a copy can fix those).
    for (ddl, columns) in [
        (
            "ALTER TABLE t ADD COLUMN d integer DEFAULT 7",
            &["id", "a", "c", "d"][..],
        ),
        ("ALTER TABLE t RENAME COLUMN a TO b", &["id", "b", "c", "d"]),
        (
            "ALTER TABLE t ALTER COLUMN c TYPE numeric(10,0)",
            &["id", "b", "c", "d"],
        ),
        (
            "ALTER TABLE t ADD COLUMN twice numeric GENERATED ALWAYS AS (c * 2) STORED",
            &["id", "b", "c", "d", "twice"],
        ),
    ] {
        src.batch_execute(ddl).unwrap();
        src.batch_execute("INSERT INTO t (id, c) SELECT max(id) + 1, 1.5 FROM t")
            .unwrap();
        state = cdc.run(&tables, Some(&state));
        cdc.assert_converged("t", columns);
    }
    // A plain ADD COLUMN and a DROP COLUMN need no copy: the version stays.
    let version = state["bookmarks"]["public-t"]["version"].clone();
    src.batch_execute("ALTER TABLE t ADD COLUMN e text; ALTER TABLE t DROP COLUMN d; UPDATE t SET e = 'e' WHERE id = 3")
        .unwrap();
    let state = cdc.run(&tables, Some(&state));
    cdc.assert_converged("t", &["id", "b", "c", "e", "twice"]);
    assert_eq!(state["bookmarks"]["public-t"]["version"], version);
}

#[test]
fn table_added_while_a_writing_transaction_is_open() {
    let cdc = Cdc::new("cdc_open_txn", true);
    let mut src = cdc.src.client();
    src.batch_execute(
        "CREATE TABLE first (id integer PRIMARY KEY);
         CREATE TABLE later (id integer PRIMARY KEY, v text);
         INSERT INTO later SELECT i, 'v' || i FROM generate_series(1, 20) i;",
    )
    .unwrap();
    let state = cdc.run(&["public-first"], None);
    let mut writer = cdc.src.client();
    writer
        .batch_execute(
            "BEGIN;
             INSERT INTO later SELECT i, 'open' FROM generate_series(101, 110) i;
             DELETE FROM later WHERE id IN (1, 2, 3);",
        )
        .unwrap();
    let both = ["public-first", "public-later"];
    let state = std::thread::scope(|scope| {
        let run = scope.spawn(|| cdc.run(&both, Some(&state)));
        // The tap has added the table to the publication and waits.
        let joined = TestDb::wait_for(Duration::from_secs(30), || {
            cdc.src
                .client()
                .query_one(
                    "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'later'",
                    &[&format!("pub_{}", cdc.src.name)],
                )
                .map(|r| r.get::<_, i64>(0) == 1)
                .unwrap_or(false)
        });
        assert!(joined, "the tap did not add the table");
        std::thread::sleep(Duration::from_millis(500));
        writer
            .batch_execute("UPDATE later SET v = 'late' WHERE id = 4; COMMIT")
            .unwrap();
        run.join().unwrap()
    });
    cdc.assert_converged("later", &["id", "v"]);
    cdc.run(&both, Some(&state));
    cdc.assert_converged("later", &["id", "v"]);
}

/// A run that must fail with `expected` as the tap's last line, and leave the destination alone.
fn assert_fails(cdc: &Cdc, tables: &[&str], state: &Value, expected: &str) {
    let r = cdc.run_raw(tables, Some(state));
    assert!(!r.tap_status.success(), "{}", r.tap_stderr);
    let last = last_line(&r.tap_stderr);
    assert!(
        last.starts_with("tap-postgres-rs: error: stream public-t: ") && last.contains(expected),
        "{last}"
    );
}

#[test]
fn dropped_or_replaced_slot_fails_or_resyncs() {
    let cdc = Cdc::new("cdc_slot_gone", false);
    let mut src = cdc.src.client();
    src.batch_execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    )
    .unwrap();
    let tables = ["public-t"];
    let state = cdc.run(&tables, None);
    // Changes, then the slot is dropped: they are gone from the log.
    src.batch_execute(
        "INSERT INTO t SELECT i, 'gone' FROM generate_series(10, 39) i; DELETE FROM t WHERE id = 1",
    )
    .unwrap();
    src.query_one("SELECT pg_drop_replication_slot($1)", &[&cdc.slot])
        .unwrap();
    assert_fails(
        &cdc,
        &tables,
        &state,
        &format!("but replication slot `{}` does not exist (dropped since the last run?): the changes since then are gone. Set on_lost_changes to resync", cdc.slot),
    );
    // Dropped and created again by someone: its position is past the state's.
    src.query_one(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&cdc.slot],
    )
    .unwrap();
    assert_fails(
        &cdc,
        &tables,
        &state,
        "the changes in between are gone. Set on_lost_changes to resync",
    );
    cdc.tap_extra
        .lock()
        .unwrap()
        .insert("on_lost_changes".into(), json!("resync"));
    let state = cdc.run(&tables, Some(&state));
    cdc.assert_converged("t", &["id", "v"]);
    src.batch_execute("UPDATE t SET v = 'after' WHERE id = 2")
        .unwrap();
    cdc.run(&tables, Some(&state));
    cdc.assert_converged("t", &["id", "v"]);
}

#[test]
fn invalidated_slot_fails_or_resyncs() {
    let cluster = pg_testkit::start_cluster(pg_testkit::ClusterOptions {
        tls: false,
        ..Default::default()
    });
    let cdc = Cdc::on(&cluster, "cdc_slot_lost", true);
    if cdc.server_version() < 130000 {
        eprintln!("max_slot_wal_keep_size exists from PostgreSQL 13");
        return;
    }
    let mut src = cdc.src_client();
    src.batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .unwrap();
    src.batch_execute(
        "SELECT pg_reload_conf();
         CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');",
    )
    .unwrap();
    let tables = ["public-t"];
    let state = cdc.run(&tables, None);
    src.batch_execute("INSERT INTO t VALUES (2, 'lost'); DELETE FROM t WHERE id = 1")
        .unwrap();
    let lost = TestDb::wait_for(Duration::from_secs(30), || {
        // Unpublished WAL (temporary tables write none), then a checkpoint.
        src.batch_execute(
            "CREATE TABLE IF NOT EXISTS filler (x text); INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 3000);
             SELECT pg_switch_wal();",
        )
        .unwrap();
        src.batch_execute("CHECKPOINT").unwrap();
        src.query_one(
            "SELECT wal_status = 'lost' FROM pg_replication_slots WHERE slot_name = $1",
            &[&cdc.slot],
        )
        .unwrap()
        .get::<_, bool>(0)
    });
    assert!(lost, "the slot was not invalidated");
    assert_fails(
        &cdc,
        &tables,
        &state,
        &format!("but the server invalidated replication slot `{}` (wal_status = lost: it kept more WAL than max_slot_wal_keep_size allows): the changes since then are gone.", cdc.slot),
    );
    cdc.tap_extra
        .lock()
        .unwrap()
        .insert("on_lost_changes".into(), json!("resync"));
    let state = cdc.run(&tables, Some(&state));
    cdc.assert_converged("t", &["id", "v"]);
    src.batch_execute("INSERT INTO t VALUES (3, 'after')")
        .unwrap();
    cdc.run(&tables, Some(&state));
    cdc.assert_converged("t", &["id", "v"]);
}

#[test]
fn generated_columns_and_money_arrays_carry_their_values() {
    let cdc = Cdc::new("cdc_generated", false);
    let mut src = cdc.src.client();
    let virtual_column = if cdc.server_version() >= 180000 {
        ", thrice integer GENERATED ALWAYS AS (a * 3) VIRTUAL"
    } else {
        ""
    };
    src.batch_execute(&format!(
        "CREATE TABLE g (id integer PRIMARY KEY, a integer, amounts money[],
                         twice integer GENERATED ALWAYS AS (a * 2) STORED{virtual_column});
         INSERT INTO g (id, a, amounts) VALUES (1, 1, '{{1.25}}');"
    ))
    .unwrap();
    let mut columns = vec!["id", "a", "amounts", "twice"];
    if !virtual_column.is_empty() {
        columns.push("thrice");
    }
    let tables = ["public-g"];
    let state = cdc.run(&tables, None);
    src.batch_execute(
        "INSERT INTO g (id, a, amounts) VALUES (2, 20, '{1234.5,-5,NULL}'), (3, NULL, NULL);
         UPDATE g SET a = 10 WHERE id = 1;",
    )
    .unwrap();
    let state = cdc.run(&tables, Some(&state));
    cdc.assert_converged("g", &columns);
    let twice: Option<i32> = cdc
        .dst
        .client()
        .query_one("SELECT twice FROM public.g WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(twice, Some(20));
    src.batch_execute("DELETE FROM g WHERE id = 2").unwrap();
    cdc.run(&tables, Some(&state));
    cdc.assert_converged("g", &columns);
}

#[test]
fn partitioned_parent_replicates_and_unreplicable_streams_are_skipped() {
    let cdc = Cdc::new("cdc_partitions", true);
    let mut src = cdc.src.client();
    src.batch_execute(
        "CREATE TABLE pt (id integer, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE pt_eu PARTITION OF pt FOR VALUES IN ('eu');
         CREATE TABLE pt_us PARTITION OF pt FOR VALUES IN ('us');
         INSERT INTO pt VALUES (1, 'eu', 'a'), (2, 'us', 'b');
         CREATE TABLE ok (id integer PRIMARY KEY, v text); INSERT INTO ok VALUES (1, 'x');
         CREATE TABLE no_key (v text); INSERT INTO no_key VALUES ('y');
         CREATE VIEW a_view AS SELECT * FROM ok;",
    )
    .unwrap();
    let partitioned_works = cdc.server_version() >= 130000;
    let tables = ["public-pt", "public-ok", "public-no_key", "public-a_view"];
    let mut state: Option<Value> = None;
    for change in [
        "",
        "INSERT INTO pt VALUES (3, 'eu', 'c'); UPDATE pt SET v = 'moved' WHERE id = 2; DELETE FROM pt WHERE id = 1;
         INSERT INTO ok VALUES (2, 'z');",
    ] {
        src.batch_execute(change).unwrap();
        let r = cdc.run_raw(&tables, state.as_ref());
        assert_eq!(r.tap_status.code(), Some(1), "{}", r.tap_stderr);
        assert!(r.target_status.success(), "{}", r.target_stderr);
        let last = last_line(&r.tap_stderr);
        let skipped = if partitioned_works { 2 } else { 3 };
        assert!(
            last.starts_with(&format!(
                "tap-postgres-rs: error: {skipped} of the selected streams skipped (the others synced, their state is saved): "
            )) && last.contains("stream public-no_key: LOG_BASED needs a replica identity")
                && last.contains("stream public-a_view: LOG_BASED works on tables only"),
            "{last}"
        );
        let committed = r.last_state().cloned().expect("the target committed a state");
        assert!(
            committed["bookmarks"]["public-ok"]["lsn"].as_u64().is_some(),
            "{committed}"
        );
        cdc.assert_converged("ok", &["id", "v"]);
        if partitioned_works {
            cdc.assert_converged("pt", &["id", "region", "v"]);
        } else {
            assert!(last.contains("stream public-pt: LOG_BASED reads a partitioned table"), "{last}");
        }
        state = Some(committed);
    }
}

/// A small xorshift: random moments without a dependency.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn concurrent_writers_and_random_kills_converge() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};

    let cdc = Cdc::new("cdc_chaos", true);
    let mut src = cdc.src.client();
    src.batch_execute(
        "CREATE TABLE c (id integer PRIMARY KEY, v integer, note text);
         INSERT INTO c SELECT i, 0, 'start' FROM generate_series(1, 200) i;",
    )
    .unwrap();
    let tables = ["public-c"];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut dice = Dice(seed);
    let stop = AtomicBool::new(false);
    let catalog = cdc.catalog(&tables);
    let mut state: Option<Value> = None;
    std::thread::scope(|scope| {
        for w in 0..2u64 {
            let stop = &stop;
            let db = &cdc.src;
            scope.spawn(move || {
                let mut client = db.client();
                let mut dice = Dice(seed.rotate_left(17 * (w as u32 + 1)) | 1);
                while !stop.load(Ordering::Relaxed) {
                    let id = dice.below(400) + 1;
                    let sql = match dice.below(4) {
                        0 => format!("INSERT INTO c VALUES ({id}, 1, 'w{w}') ON CONFLICT (id) DO UPDATE SET v = c.v + 1"),
                        1 => format!("DELETE FROM c WHERE id = {id}"),
                        2 => format!("BEGIN; UPDATE c SET v = v + 1, note = 'tx' WHERE id BETWEEN {id} AND {id} + 5; INSERT INTO c VALUES ({}, 0, 'tx') ON CONFLICT DO NOTHING; COMMIT", id + 400),
                        _ => format!("UPDATE c SET note = repeat('n', {}) WHERE id = {id}", dice.below(3000)),
                    };
                    // Deadlocks between the two writers are fine: the other goes on.
                    if client.batch_execute(&sql).is_err() {
                        let _ = client.batch_execute("ROLLBACK");
                    }
                    std::thread::sleep(Duration::from_millis(dice.below(5)));
                }
            });
        }
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            let state_path = state
                .as_ref()
                .map(|s| write_json(cdc.dir.path(), "state.json", s));
            let mut tap = e2e_tests::tap_sync(&cdc.tap_config(), &catalog, state_path.as_deref())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut target = Command::new(e2e_tests::bin("target-postgres-rs"))
                .arg("--config")
                .arg(cdc.target_config())
                .stdin(Stdio::from(tap.stdout.take().unwrap()))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let out = target.stdout.take().unwrap();
            let states = std::thread::spawn(move || {
                std::io::BufReader::new(out)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
                    .last()
            });
            std::thread::sleep(Duration::from_millis(dice.below(1500)));
            match dice.below(3) {
                0 => drop(tap.kill()),
                1 => drop(target.kill()),
                _ => {}
            }
            let _ = tap.wait();
            let _ = target.wait();
            if let Some(s) = states.join().unwrap() {
                state = Some(s);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    // A killed tap's session may hold the slot a little longer: runs until one succeeds.
    let mut done = false;
    for _ in 0..30 {
        let r = cdc.run_raw(&tables, state.as_ref());
        if let Some(s) = r.last_state() {
            state = Some(s.clone());
        }
        if r.tap_status.success() && r.target_status.success() {
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(done, "no run succeeded after the writers stopped");
    cdc.assert_converged("c", &["id", "v", "note"]);
}
