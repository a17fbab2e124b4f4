//! LOG_BASED end to end: `tap-postgres-rs | target-postgres-rs` runs with
//! changes between them; after every run the destination's live rows equal the
//! source (soft delete: deleted rows marked; hard delete: gone).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use e2e_tests::{bin, discover, pipe, select, table_rows, tap_sync, write_json, PipeRun};
use pg_testkit::{cluster, Cluster, TestDb};
use serde_json::{json, Value};

/// A source and a destination database, and the files of `tap | target` runs between them.
pub(crate) struct Cdc {
    pub src: TestDb,
    pub dst: TestDb,
    pub dir: tempfile::TempDir,
    pub slot: String,
    hard_delete: bool,
    /// Settings added to the tap's config.
    pub tap_extra: Mutex<serde_json::Map<String, Value>>,
}

impl Cdc {
    pub fn new(name: &str, hard_delete: bool) -> Cdc {
        Cdc::on(cluster(), name, hard_delete)
    }

    /// Source and destination on `cluster`.
    pub fn on(cluster: &Cluster, name: &str, hard_delete: bool) -> Cdc {
        let src = cluster.create_database(&format!("{name}_src"));
        let dst = cluster.create_database(&format!("{name}_dst"));
        let slot = format!("slot_{}", src.name);
        Cdc {
            src,
            dst,
            dir: tempfile::tempdir().unwrap(),
            slot,
            hard_delete,
            tap_extra: Mutex::default(),
        }
    }

    /// A superuser connection to the source (on whichever cluster it is).
    pub fn src_client(&self) -> postgres::Client {
        connect(&self.src)
    }

    pub fn dst_client(&self) -> postgres::Client {
        connect(&self.dst)
    }

    /// The source's `server_version_num`.
    pub fn server_version(&self) -> u32 {
        let v: String = self
            .src_client()
            .query_one("SHOW server_version_num", &[])
            .unwrap()
            .get(0);
        v.parse().unwrap()
    }

    pub fn tap_config(&self) -> PathBuf {
        let mut c = self.src.config();
        c["replication_slot_name"] = json!(self.slot);
        c["publication_name"] = json!(format!("pub_{}", self.src.name));
        for (k, v) in self.tap_extra.lock().unwrap().iter() {
            c[k] = v.clone();
        }
        write_json(self.dir.path(), "tap.json", &c)
    }

    pub fn target_config(&self) -> PathBuf {
        let mut c = self.dst.config();
        c["hard_delete"] = json!(self.hard_delete);
        write_json(self.dir.path(), "target.json", &c)
    }

    pub fn catalog(&self, tables: &[&str]) -> PathBuf {
        let mut catalog = discover(&self.tap_config());
        select(&mut catalog, tables, "LOG_BASED", None);
        write_json(self.dir.path(), "catalog.json", &catalog)
    }

    /// One `tap | target` run from `state`, whatever its outcome.
    pub fn run_raw(&self, tables: &[&str], state: Option<&Value>) -> PipeRun {
        let state_path = state.map(|s| write_json(self.dir.path(), "state.json", s));
        pipe(
            &self.tap_config(),
            &self.catalog(tables),
            state_path.as_deref(),
            &self.target_config(),
        )
    }

    /// One `tap | target` run from `state`; returns the last committed state.
    pub fn run(&self, tables: &[&str], state: Option<&Value>) -> Value {
        let r = self.run_raw(tables, state);
        r.assert_success();
        // Meltano treats log lines with "error" as failures.
        let noisy: Vec<&str> = r
            .tap_stderr
            .lines()
            .filter(|l| l.to_lowercase().contains("error"))
            .collect();
        assert!(noisy.is_empty(), "{noisy:?}");
        r.last_state()
            .cloned()
            .expect("the target committed a state")
    }

    /// The source table's rows equal the destination's live rows.
    pub fn assert_converged(&self, table: &str, columns: &[&str]) {
        let want = table_rows(&mut self.src_client(), "public", table, columns, None);
        let live = table_rows(
            &mut self.dst_client(),
            "public",
            table,
            columns,
            Some("_sdc_deleted_at IS NULL"),
        );
        assert_eq!(
            live, want,
            "table {table} (hard_delete={})",
            self.hard_delete
        );
        let all = table_rows(&mut self.dst_client(), "public", table, columns, None);
        if self.hard_delete {
            assert_eq!(
                all.len(),
                live.len(),
                "hard delete leaves no marked rows in {table}"
            );
        }
    }

    pub fn slot_confirmed(&self) -> u64 {
        let text: String = self
            .src_client()
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .unwrap()
            .get(0);
        pg_lsn(&text)
    }

    fn slot_pending_bytes(&self) -> i64 {
        self.src_client()
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .unwrap()
            .get(0)
    }
}

fn connect(db: &TestDb) -> postgres::Client {
    postgres::Config::new()
        .host(&db.host)
        .port(db.port)
        .user(pg_testkit::SUPERUSER)
        .dbname(&db.name)
        .connect(postgres::NoTls)
        .unwrap()
}

pub(crate) fn pg_lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

const ITEMS: &[&str] = &["id", "name", "big", "amount", "tags"];

fn cdc_scenario(hard_delete: bool) {
    let cdc = Cdc::new(
        if hard_delete { "cdc_hard" } else { "cdc_soft" },
        hard_delete,
    );
    let mut src = cdc.src.client();
    src.batch_execute(
        "CREATE TABLE items (id integer PRIMARY KEY, name text, big text, amount numeric(12,2), tags text[]);
         ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO items SELECT i, 'item ' || i, repeat(md5(i::text), 4000), i * 1.5, ARRAY['a', 'b' || i]
           FROM generate_series(1, 100) i;
         CREATE TABLE full_ident (id integer PRIMARY KEY, v text, big text);
         ALTER TABLE full_ident REPLICA IDENTITY FULL;
         ALTER TABLE full_ident ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO full_ident SELECT i, 'v' || i, repeat('y', 50000) FROM generate_series(1, 10) i;
         CREATE TABLE by_index (code text NOT NULL, v integer);
         CREATE UNIQUE INDEX by_index_code ON by_index (code);
         ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
         INSERT INTO by_index VALUES ('a', 1), ('b', 2), ('c', 3);
         CREATE TABLE unselected (id integer PRIMARY KEY, v text);",
    )
    .unwrap();
    let tables = ["public-items", "public-full_ident", "public-by_index"];

    // Run 1: the initial copy.
    let state = cdc.run(&tables, None);
    cdc.assert_converged("items", ITEMS);
    cdc.assert_converged("full_ident", &["id", "v", "big"]);
    cdc.assert_converged("by_index", &["code", "v"]);
    assert!(
        state["bookmarks"]["public-items"]["lsn"].as_u64().is_some(),
        "{state}"
    );

    // Changes: inserts, updates that leave the TOASTed column alone, deletes,
    // a primary key change, and a transaction over a selected and an unselected table.
    for sql in [
        "INSERT INTO items SELECT i, 'new ' || i, repeat('z', 30000), NULL, '{}' FROM generate_series(101, 120) i",
        "UPDATE items SET name = 'renamed ' || id WHERE id % 10 = 0",
        "UPDATE items SET amount = -amount, tags = ARRAY[E'tab\\there', 'new\nline', 'back\\\\slash'] WHERE id BETWEEN 11 AND 15",
        "DELETE FROM items WHERE id IN (2, 4, 6, 8, 105)",
        "UPDATE items SET id = 1003 WHERE id = 3",
        "BEGIN; INSERT INTO unselected VALUES (1, 'x'); UPDATE items SET name = 'in a mixed transaction' WHERE id = 1; COMMIT",
        "UPDATE full_ident SET v = 'changed' WHERE id <= 3",
        "DELETE FROM full_ident WHERE id = 10",
        "UPDATE by_index SET v = 20 WHERE code = 'b'",
        "UPDATE by_index SET code = 'z' WHERE code = 'c'",
        "DELETE FROM by_index WHERE code = 'a'",
    ] {
        src.batch_execute(sql).unwrap();
    }
    let state = cdc.run(&tables, Some(&state));
    cdc.assert_converged("items", ITEMS);
    cdc.assert_converged("full_ident", &["id", "v", "big"]);
    cdc.assert_converged("by_index", &["code", "v"]);
    let big: i64 = cdc
        .dst
        .client()
        .query_one(
            "SELECT length(big)::bigint FROM public.items WHERE id = 10",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        big, 128_000,
        "an unchanged TOASTed value survived the update"
    );
    // The slot is confirmed only up to what the target committed, which the
    // tap learns from --state at the start of the next run: until then this
    // run's changes stay retained.
    let lag_after_changes = cdc.slot_pending_bytes();

    // A truncate, a table added to the selection later, and a quiet run.
    src.batch_execute("TRUNCATE by_index").unwrap();
    src.batch_execute("INSERT INTO by_index VALUES ('after', 1)")
        .unwrap();
    src.batch_execute(
        "CREATE TABLE later (id bigint PRIMARY KEY, at timestamptz); INSERT INTO later VALUES (1, now()), (2, NULL)",
    )
    .unwrap();
    let more = [
        "public-items",
        "public-full_ident",
        "public-by_index",
        "public-later",
    ];
    let state = cdc.run(&more, Some(&state));
    cdc.assert_converged("by_index", &["code", "v"]);
    cdc.assert_converged("later", &["id", "at"]);
    src.batch_execute("INSERT INTO later VALUES (3, '2024-02-29 12:00:00+05')")
        .unwrap();
    let state = cdc.run(&more, Some(&state));
    cdc.assert_converged("later", &["id", "at"]);
    cdc.assert_converged("items", ITEMS);
    // Nothing changed: the run still ends, still moves the slot, and changes nothing.
    let before_quiet = cdc.slot_pending_bytes();
    let quiet = cdc.run(&more, Some(&state));
    assert!(
        quiet["bookmarks"]["public-items"]["lsn"].as_u64()
            >= state["bookmarks"]["public-items"]["lsn"].as_u64()
    );
    // Lag in bytes is cluster-wide WAL (other tests share this cluster), so
    // check the exact thing: the slot has confirmed everything the target had
    // committed before this run.
    let committed = more
        .iter()
        .map(|id| {
            state["bookmarks"][id]["lsn"]
                .as_u64()
                .expect("lsn bookmark")
        })
        .min()
        .unwrap();
    let confirmed = cdc.slot_confirmed();
    assert!(
        confirmed >= committed,
        "slot confirmed {confirmed}, committed {committed} (lag {lag_after_changes} B after the changes, {before_quiet} B before the quiet run)"
    );
}

#[test]
fn cdc_runs_converge_with_soft_delete() {
    cdc_scenario(false);
}

#[test]
fn cdc_runs_converge_with_hard_delete() {
    cdc_scenario(true);
}

#[test]
fn target_killed_mid_run_loses_nothing() {
    let cdc = Cdc::new("cdc_kill", true);
    let mut src = cdc.src.client();
    src.batch_execute("CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 50) i")
        .unwrap();
    let tables = ["public-t"];
    let state = cdc.run(&tables, None);
    for batch in 0..40 {
        src.batch_execute(&format!(
            "INSERT INTO t SELECT i, 'batch {batch}' FROM generate_series({a}, {b}) i;
             UPDATE t SET v = v || '+' WHERE id % 40 = {batch};
             DELETE FROM t WHERE id = {d}",
            a = 1000 + batch * 100,
            b = 1000 + batch * 100 + 99,
            d = 1000 + batch * 100 + 7,
        ))
        .unwrap();
    }
    // The tap's output of this run, then a target that dies halfway through it.
    let state_path = write_json(cdc.dir.path(), "state.json", &state);
    let out = tap_sync(&cdc.tap_config(), &cdc.catalog(&tables), Some(&state_path))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&[u8]> = out.stdout.split(|b| *b == b'\n').collect();
    let half: Vec<u8> = lines[..lines.len() / 2].join(&b'\n');
    let mut target = Command::new(bin("target-postgres-rs"))
        .arg("--config")
        .arg(cdc.target_config())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    e2e_tests::feed(target.stdin.take().unwrap(), half)
        .join()
        .unwrap();
    let partial = target.wait_with_output().unwrap();
    // Whatever it committed before it stopped is what the next run starts from.
    let committed = String::from_utf8_lossy(&partial.stdout)
        .lines()
        .last()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .unwrap_or(state);
    cdc.run(&tables, Some(&committed));
    cdc.assert_converged("t", &["id", "v"]);
}

/// A stream whose table was out of the publication for a while (a DBA
/// dropped it from it): its changes then were never decoded, so when the
/// table joins again the stream is copied again as a new version.
#[test]
fn a_table_back_in_the_publication_is_copied_again() {
    let cdc = Cdc::new("rejoin", true);
    let mut src = cdc.src_client();
    src.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, note text);
         INSERT INTO t SELECT i, 'n' || i FROM generate_series(1, 3) i;",
    )
    .unwrap();
    let first = cdc.run(&["public-t"], None);
    cdc.assert_converged("t", &["id", "note"]);
    src.batch_execute(&format!(
        "ALTER PUBLICATION \"pub_{}\" DROP TABLE t;
         INSERT INTO t VALUES (4, 'unpublished');
         UPDATE t SET note = 'unpublished' WHERE id = 1;
         DELETE FROM t WHERE id = 2;",
        cdc.src.name
    ))
    .unwrap();
    let r = cdc.run_raw(&["public-t"], Some(&first));
    r.assert_success();
    cdc.assert_converged("t", &["id", "note"]);
    assert!(
        r.tap_stderr
            .contains("the table joined the publication only now"),
        "{}",
        r.tap_stderr
    );
    // From then on, the log again.
    src.execute("INSERT INTO t VALUES (5, 'n5')", &[]).unwrap();
    cdc.run(&["public-t"], r.last_state());
    cdc.assert_converged("t", &["id", "note"]);
}

#[test]
fn log_based_errors_are_clear_and_drop_slot_cleans_up() {
    let cdc = Cdc::new("cdc_refusals", false);
    let mut src = cdc.src.client();
    let role = format!("norepl_{}", cdc.src.name);
    src.batch_execute(&format!(
        "CREATE TABLE t (id integer PRIMARY KEY); CREATE ROLE \"{role}\" LOGIN; GRANT SELECT ON t TO \"{role}\""
    ))
    .unwrap();
    let tap = |config: &Value, catalog: &PathBuf, extra: &[&str]| {
        let path = write_json(cdc.dir.path(), "tap-x.json", config);
        tap_sync(&path, catalog, None).args(extra).output().unwrap()
    };
    let catalog = cdc.catalog(&["public-t"]);
    let mut config = cdc.src.config();
    config["user"] = json!(role);
    let out = tap(&config, &catalog, &[]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap(),
        format!("tap-postgres-rs: error: LOG_BASED: role `{role}` may not use logical replication: grant it with `ALTER ROLE \"{role}\" REPLICATION` (or connect as a superuser)")
    );

    // A state LSN the slot has already passed: its changes are gone.
    let state = cdc.run(&["public-t"], None);
    src.batch_execute("INSERT INTO t VALUES (1)").unwrap();
    let newer = cdc.run(&["public-t"], Some(&state));
    cdc.run(&["public-t"], Some(&newer));
    let stale = write_json(cdc.dir.path(), "stale.json", &state);
    let config =
        serde_json::from_str::<Value>(&std::fs::read_to_string(cdc.tap_config()).unwrap()).unwrap();
    let out = tap(&config, &catalog, &["--state", stale.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("tap-postgres-rs: error: stream public-t: the state's LSN ")
            && last.ends_with("the changes in between are gone. Set on_lost_changes to resync to copy the affected streams again as new table versions, or remove the stream's bookmark from the state."),
        "{last}"
    );

    // --drop-slot removes the slot and the publication.
    let out = tap(&config, &catalog, &["--drop-slot"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: i64 = src
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1) + \
                    (SELECT count(*) FROM pg_publication WHERE pubname = $2)",
            &[&cdc.slot, &format!("pub_{}", cdc.src.name)],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn wal_level_and_busy_slot_are_refused_clearly() {
    // A server without logical WAL.
    let replica = pg_testkit::start_cluster(pg_testkit::ClusterOptions {
        tls: false,
        wal_level: "replica",
        ..Default::default()
    });
    let db = replica.create_database("cdc_walrep");
    replica
        .client(&db.name)
        .batch_execute("CREATE TABLE t (id integer PRIMARY KEY)")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_json(dir.path(), "tap.json", &db.config());
    let mut catalog = discover(&config);
    select(&mut catalog, &["public-t"], "LOG_BASED", None);
    let catalog = write_json(dir.path(), "catalog.json", &catalog);
    let out = tap_sync(&config, &catalog, None).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap(),
        "tap-postgres-rs: error: LOG_BASED: wal_level is `replica`, but LOG_BASED replication needs `logical`: \
         set wal_level = logical in postgresql.conf and restart the server"
    );

    // A slot another reader holds.
    let cdc = Cdc::new("cdc_busy", false);
    cdc.src
        .client()
        .batch_execute("CREATE TABLE t (id integer PRIMARY KEY)")
        .unwrap();
    cdc.run(&["public-t"], None);
    let mut holder = Command::new(cluster().bindir().join("pg_recvlogical"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(cluster().port().to_string())
        .args([
            "-d",
            &cdc.src.name,
            "-S",
            &cdc.slot,
            "--start",
            "-f",
            "/dev/null",
        ])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names=pub_{}", cdc.src.name))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let held = TestDb::wait_for(std::time::Duration::from_secs(20), || {
        cdc.src
            .client()
            .query_one(
                "SELECT active_pid IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1",
                &[&cdc.slot],
            )
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    });
    assert!(held, "pg_recvlogical did not take the slot");
    let out = tap_sync(&cdc.tap_config(), &cdc.catalog(&["public-t"]), None)
        .output()
        .unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!out.status.success());
    let last = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    assert!(
        last.starts_with(&format!(
            "tap-postgres-rs: error: LOG_BASED: replication slot `{}` is in use by another process (pid ",
            cdc.slot
        )) && last.ends_with("if nothing should be reading; do not choose another replication_slot_name, which would start from now and lose this slot's position"),
        "{last}"
    );
}

#[test]
fn killed_tap_frees_the_slot_at_once_and_a_rerun_converges() {
    let cdc = Cdc::new("cdc_sigkill", false);
    let mut src = cdc.src.client();
    src.batch_execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); CREATE TABLE unpublished (id integer, pad text);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 10) i",
    )
    .unwrap();
    let tables = ["public-t"];
    let state = cdc.run(&tables, None);
    // A backlog: published changes, a large unpublished transaction the
    // server decodes (and spills) without sending anything, then more.
    for batch in 0..10 {
        src.batch_execute(&format!(
            "INSERT INTO t SELECT i, repeat('x', 200) FROM generate_series({a}, {b}) i",
            a = 1000 + batch * 10_000,
            b = 1000 + batch * 10_000 + 9_999,
        ))
        .unwrap();
    }
    src.batch_execute(
        "INSERT INTO unpublished SELECT i, repeat('p', 100) FROM generate_series(1, 1000000) i",
    )
    .unwrap();
    src.batch_execute("UPDATE t SET v = 'after' WHERE id <= 10")
        .unwrap();

    let state_path = write_json(cdc.dir.path(), "state.json", &state);
    let mut tap = tap_sync(&cdc.tap_config(), &cdc.catalog(&tables), Some(&state_path))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Mid-stream: records are coming, and the tap is blocked writing more.
    let mut stdout = std::io::BufReader::new(tap.stdout.take().unwrap());
    let mut records = 0;
    let mut line = String::new();
    while records < 100 {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0,
            "the tap ended early"
        );
        records += usize::from(line.contains(r#""type":"RECORD""#));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let active = |cdc: &Cdc| -> bool {
        cdc.src_client()
            .query_one(
                "SELECT active_pid IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1",
                &[&cdc.slot],
            )
            .unwrap()
            .get(0)
    };
    assert!(active(&cdc), "the tap holds the slot while it reads");
    tap.kill().unwrap(); // SIGKILL
    let killed = std::time::Instant::now();
    tap.wait().unwrap();
    drop(stdout);
    let freed = TestDb::wait_for(std::time::Duration::from_secs(10), || !active(&cdc));
    let took = killed.elapsed();
    assert!(
        freed,
        "the slot is still held 10 s after the tap was killed"
    );
    assert!(
        took < std::time::Duration::from_secs(2),
        "the slot was freed {took:?} after the tap was killed"
    );
    // The same slot, from the same state, at once.
    cdc.run(&tables, Some(&state));
    cdc.assert_converged("t", &["id", "v"]);
}
