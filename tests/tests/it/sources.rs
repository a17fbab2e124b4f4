//! Where the tap reads from, as users of other taps configure it: the URL form
//! of the connection (`sqlalchemy_url`/`url`) with `application_name` seen in
//! `pg_stat_activity`, INCREMENTAL by `xmin` for tables with no replication
//! key, and `use_secondary` reading from a streaming standby the test starts.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_tests::{bin, discover, select, tap_sync, write_json};
use pg_testkit::catalog::select_only;
use pg_testkit::process::run;
use pg_testkit::{cluster, start_cluster, ClusterOptions, TestDb};
use serde_json::{json, Value};

/// The tap's messages of one type.
fn of_type<'a>(messages: &'a [Value], kind: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["type"] == kind).collect()
}

/// `(id, body)` of every RECORD, in order.
fn records(messages: &[Value]) -> Vec<(i64, String)> {
    of_type(messages, "RECORD")
        .iter()
        .map(|m| {
            (
                m["record"]["id"].as_i64().unwrap(),
                m["record"]["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The logs of a successful `--discover`.
fn discover_logs(config: &Path) -> pg_testkit::process::Run {
    let out = run(
        Command::new(bin("tap-postgres-rs"))
            .arg("--config")
            .arg(config)
            .arg("--discover"),
        b"",
    );
    assert!(out.ok, "{}", out.stderr);
    out
}

fn sync(config: &Path, catalog: &Path, state: Option<&Path>) -> (Vec<Value>, String) {
    let out = run(&mut tap_sync(config, catalog, state), b"");
    assert!(out.ok, "tap failed: {}", out.stderr);
    (out.stdout_json(), out.stderr)
}

/// What `pg_stat_activity` shows for the tap's session while it waits for a
/// lock this test holds on the table it copies: `(application_name, query)`.
fn session_while_copying(db: &TestDb, config: Value, dir: &Path) -> (String, String) {
    let mut client = db.client();
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS seen (id int PRIMARY KEY, body text); INSERT INTO seen VALUES (1, 'a') ON CONFLICT DO NOTHING")
        .unwrap();
    let config = write_json(dir, "seen_config.json", &config);
    let catalog = select_only(&discover(&config), &["public-seen"], "FULL_TABLE", None);
    let catalog = write_json(dir, "seen_catalog.json", &catalog);
    let mut lock = db.client();
    let mut tx = lock.transaction().unwrap();
    tx.batch_execute("LOCK TABLE seen IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let tap = tap_sync(&config, &catalog, None)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = None;
    let waited = TestDb::wait_for(Duration::from_secs(20), || {
        seen = client
            .query_opt(
                "SELECT application_name, query FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .map(|r| (r.get(0), r.get(1)));
        seen.is_some()
    });
    tx.commit().unwrap();
    let out = tap.wait_with_output().unwrap();
    assert!(
        waited && out.status.success(),
        "the tap never waited for the lock, or failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let messages: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records(&messages), vec![(1, "a".to_owned())]);
    seen.unwrap()
}

#[test]
fn a_url_connects_and_application_name_shows_in_pg_stat_activity() {
    let db = cluster().create_database("sources_url");
    let dir = tempfile::tempdir().unwrap();
    // Everything from the URL, with libpq's query parameters.
    let url = format!(
        "postgresql+psycopg2://postgres@{}:{}/{}?sslmode=disable&application_name=nightly%20load",
        db.host, db.port, db.name
    );
    let (app, query) = session_while_copying(&db, json!({ "sqlalchemy_url": url }), dir.path());
    assert_eq!(app, "nightly load");
    assert!(query.starts_with("COPY (SELECT"), "{query}");
    // `url`, and the application_name setting: the URL wins over stale
    // separate settings, which are warned about.
    let url = format!(
        "postgres://postgres@{}:{}/{}?sslmode=disable",
        db.host, db.port, db.name
    );
    let config =
        json!({"url": url, "application_name": "from-setting", "database": "stale", "port": 1});
    let (app, _) = session_while_copying(&db, config, dir.path());
    assert_eq!(app, "from-setting");
    // From the environment alone, as Meltano passes a sensitive setting.
    let out = run(
        Command::new(bin("tap-postgres-rs"))
            .arg("--discover")
            .env("TAP_POSTGRES_RS_SQLALCHEMY_URL", &url),
        b"",
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("\"tap_stream_id\":\"public-seen\""),
        "{}",
        out.stdout
    );
    // Unset: the binary's name.
    let (app, _) = session_while_copying(&db, db.config(), dir.path());
    assert_eq!(app, "tap-postgres-rs");

    let config = write_json(
        dir.path(),
        "warn.json",
        &json!({"url": url, "database": "stale"}),
    );
    let out = discover_logs(&config);
    assert!(
        out.stderr.contains(&format!(
            "`database` is \"stale\" but `sqlalchemy_url` says \"{}\": the URL's is used",
            db.name
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn a_wrong_url_never_shows_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "hunter2-not-for-logs";
    for binary in ["tap-postgres-rs", "target-postgres-rs"] {
        for (url, want) in [
            (
                format!("postgresql://postgres:{secret}@127.0.0.1:notaport/db"),
                format!("{binary}: error: config: `sqlalchemy_url` has port \"notaport\", which is not a port number (1-65535)"),
            ),
            (
                format!("mysql://postgres:{secret}@127.0.0.1/db"),
                format!("{binary}: error: config: `sqlalchemy_url` must start with postgresql:// (or postgres://, postgresql+psycopg2://), not mysql://"),
            ),
            // The target connects only once messages come: the tap shows the connection error.
            (
                format!("postgresql://postgres:{secret}@127.0.0.1:1/db?sslmode=disable&connect_timeout=3"),
                "tap-postgres-rs: error: cannot connect to PostgreSQL at 127.0.0.1:1 (database `db`, user `postgres`): ".to_owned(),
            ),
        ] {
            if !want.starts_with(binary) {
                continue;
            }
            let config = write_json(dir.path(), "bad_url.json", &json!({ "sqlalchemy_url": url }));
            let mut cmd = Command::new(bin(binary));
            cmd.arg("--config").arg(&config);
            if binary == "tap-postgres-rs" {
                cmd.arg("--discover");
            }
            let out = run(&mut cmd, b"");
            assert!(!out.ok, "{binary} {url}: {}", out.stderr);
            assert!(
                out.last_error().starts_with(&want),
                "{binary}: {:?} does not start with {want:?}",
                out.last_error()
            );
            assert!(
                !out.stderr.contains(secret) && !out.stdout.contains(secret),
                "{binary} showed the password: {}",
                out.stderr
            );
        }
    }
}

/// INCREMENTAL by `xmin` honours `stream_options` row filters and
/// `max_record_count`: a limited run stops as if interrupted, so the next run
/// goes on from its checkpoint instead of jumping to the snapshot.
#[test]
fn xmin_incremental_with_a_row_filter_and_a_limit() {
    let cluster = start_cluster(ClusterOptions::default());
    let db = cluster.create_database("sources_xmin_limit");
    let mut client = cluster.client(&db.name);
    client
        .batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .unwrap();
    for i in 1..=8 {
        client
            .execute("INSERT INTO notes VALUES ($1, 'v1')", &[&i])
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = db.config();
    config["stream_options"] = json!({"public-notes": {"custom_where_clauses": ["id % 2 = 0"]}});
    config["max_record_count"] = json!(2);
    let config = write_json(dir.path(), "config.json", &config);
    let discovered = discover(&config);
    let catalog = write_json(
        dir.path(),
        "catalog.json",
        &select_only(&discovered, &["public-notes"], "INCREMENTAL", Some("xmin")),
    );
    let (first, _) = sync(&config, &catalog, None);
    assert_eq!(records(&first), vec![(2, "v1".into()), (4, "v1".into())]);
    let state = of_type(&first, "STATE").last().unwrap()["value"].clone();
    let state_file = write_json(dir.path(), "state.json", &state);
    // Goes on from the last row sent (inclusive: 4 again, not counted
    // against the limit), then two more.
    let (second, _) = sync(&config, &catalog, Some(&state_file));
    assert_eq!(
        records(&second),
        vec![(4, "v1".into()), (6, "v1".into()), (8, "v1".into())]
    );
    let state = of_type(&second, "STATE").last().unwrap()["value"].clone();
    let state_file = write_json(dir.path(), "state2.json", &state);
    let (third, _) = sync(&config, &catalog, Some(&state_file));
    assert_eq!(records(&third), vec![(8, "v1".into())]);

    // Rows of one transaction share one xmin: a limit smaller than their
    // number stops inside them, and the next run sends them all again and
    // goes on (were they counted, every run would stop at the same rows).
    client
        .execute("INSERT INTO notes VALUES (10, 'v1')", &[])
        .unwrap();
    client
        .batch_execute("INSERT INTO notes SELECT i, 'v1' FROM generate_series(11, 20) i")
        .unwrap();
    for i in [22, 24] {
        client
            .execute("INSERT INTO notes VALUES ($1, 'v1')", &[&i])
            .unwrap();
    }
    let mut state = of_type(&third, "STATE").last().unwrap()["value"].clone();
    let mut sent_ids = Vec::new();
    for run in 0..3 {
        let state_file = write_json(dir.path(), &format!("tie{run}.json"), &state);
        let (out, _) = sync(&config, &catalog, Some(&state_file));
        let mut ids: Vec<i64> = records(&out).into_iter().map(|(id, _)| id).collect();
        ids.sort_unstable();
        sent_ids.push(ids);
        state = of_type(&out, "STATE").last().unwrap()["value"].clone();
    }
    let tie = |ids: &[i64]| ids.iter().all(|id| (12..=20).contains(id));
    // 10 (again, when the bookmark is its xmin), then one or two of the
    // transaction's five: the run stops among them.
    assert!(
        (2..=3).contains(&sent_ids[0].len()) && sent_ids[0][0] == 10 && tie(&sent_ids[0][1..]),
        "10, then some of the transaction's five: {sent_ids:?}"
    );
    assert_eq!(sent_ids[1], [12, 14, 16, 18, 20, 22, 24], "{sent_ids:?}");
    assert_eq!(sent_ids[2], [24], "{sent_ids:?}");
}

/// INCREMENTAL by `xmin`, on a cluster of its own: the bookmark is the oldest
/// transaction still running, and other tests' transactions would move it.
#[test]
fn xmin_incremental_catches_inserts_and_updates() {
    let cluster = start_cluster(ClusterOptions::default());
    let db = cluster.create_database("sources_xmin");
    let mut client = cluster.client(&db.name);
    client
        .batch_execute(
            "CREATE TABLE notes (id int PRIMARY KEY, body text);
             CREATE VIEW notes_view AS SELECT * FROM notes;
             CREATE TABLE parts (id int, body text) PARTITION BY RANGE (id);
             CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (100);
             CREATE TABLE parts_2 PARTITION OF parts FOR VALUES FROM (100) TO (200);",
        )
        .unwrap();
    // One transaction per row: distinct xmins, in id order.
    for i in 1..=5 {
        client
            .execute("INSERT INTO notes VALUES ($1, 'v1')", &[&i])
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = db.config();
    config["state_interval_records"] = json!(2);
    let config = write_json(dir.path(), "config.json", &config);
    let discovered = discover(&config);
    let catalog = write_json(
        dir.path(),
        "catalog.json",
        &select_only(&discovered, &["public-notes"], "INCREMENTAL", Some("xmin")),
    );

    let (first, _) = sync(&config, &catalog, None);
    assert_eq!(
        records(&first),
        (1..=5).map(|i| (i, "v1".to_owned())).collect::<Vec<_>>()
    );
    // No bookmark property: xmin is not in the records.
    let schema = of_type(&first, "SCHEMA")[0];
    assert!(schema.get("bookmark_properties").is_none(), "{schema}");
    assert!(schema["schema"]["properties"].get("xmin").is_none());
    let states = of_type(&first, "STATE");
    let state = states.last().unwrap()["value"].clone();
    let bookmark = &state["bookmarks"]["public-notes"];
    assert_eq!(bookmark["replication_key"], "xmin");
    assert_eq!(bookmark["last_replication_method"], "INCREMENTAL");
    let after_first = bookmark["replication_key_value"].as_u64().unwrap();
    let next_xid: i64 = client
        .query_one("SELECT txid_current()", &[])
        .unwrap()
        .get(0);
    assert!(after_first <= next_xid as u64, "{after_first} {next_xid}");

    // An interrupted run resumes from its last checkpoint: after 2 rows, the
    // second's xmin (so the second is sent again, a tie).
    let checkpoint = states
        .iter()
        .map(|s| s["value"].clone())
        .find(|v| v["bookmarks"]["public-notes"]["replication_key_value"].is_u64())
        .unwrap();
    let resumed_from = write_json(dir.path(), "checkpoint.json", &checkpoint);
    let (resumed, _) = sync(&config, &catalog, Some(&resumed_from));
    assert_eq!(
        records(&resumed),
        (2..=5).map(|i| (i, "v1".to_owned())).collect::<Vec<_>>()
    );

    // Inserts and updates since the bookmark come; the delete cannot.
    for change in [
        "UPDATE notes SET body = 'v2' WHERE id = 2",
        "INSERT INTO notes VALUES (6, 'v1')",
        "DELETE FROM notes WHERE id = 3",
        "UPDATE notes SET body = 'v3' WHERE id = 4",
    ] {
        client.execute(change, &[]).unwrap();
    }
    let state_file = write_json(dir.path(), "state.json", &state);
    let (second, _) = sync(&config, &catalog, Some(&state_file));
    assert_eq!(
        records(&second),
        vec![(2, "v2".into()), (6, "v1".into()), (4, "v3".into())]
    );
    let state = of_type(&second, "STATE").last().unwrap()["value"].clone();
    let after_second = state["bookmarks"]["public-notes"]["replication_key_value"]
        .as_u64()
        .unwrap();
    assert!(after_second > after_first, "{after_second} {after_first}");
    // Nothing changed: nothing sent; the bookmark round-trips.
    let state_file = write_json(dir.path(), "state2.json", &state);
    let (third, _) = sync(&config, &catalog, Some(&state_file));
    assert_eq!(records(&third), vec![]);
    assert_eq!(
        of_type(&third, "STATE").last().unwrap()["value"]["bookmarks"]["public-notes"]
            ["replication_key_value"],
        json!(after_second)
    );

    // A bookmark from another server (ahead of this one's ids): warned, all read.
    let mut ahead = state.clone();
    ahead["bookmarks"]["public-notes"]["replication_key_value"] = json!(1u64 << 40);
    let ahead = write_json(dir.path(), "ahead.json", &ahead);
    let (all, stderr) = sync(&config, &catalog, Some(&ahead));
    assert_eq!(records(&all).len(), 5);
    assert!(
        stderr.contains("the xmin bookmark is ahead of this server's transaction ids"),
        "{stderr}"
    );

    // A partitioned table reads its partitions' xmins.
    client
        .batch_execute("INSERT INTO parts VALUES (1, 'a'), (150, 'b')")
        .unwrap();
    let parts = write_json(
        dir.path(),
        "parts.json",
        &select_only(&discovered, &["public-parts"], "INCREMENTAL", Some("xmin")),
    );
    let (first, _) = sync(&config, &parts, None);
    assert_eq!(records(&first).len(), 2);
    let state = of_type(&first, "STATE").last().unwrap()["value"].clone();
    client
        .batch_execute("UPDATE parts SET body = 'c' WHERE id = 150")
        .unwrap();
    let state = write_json(dir.path(), "parts_state.json", &state);
    let (second, _) = sync(&config, &parts, Some(&state));
    assert_eq!(records(&second), vec![(150, "c".to_owned())]);

    // A view has no xmin of its own: refused, the stream named.
    let view = write_json(
        dir.path(),
        "view.json",
        &select_only(
            &discovered,
            &["public-notes_view"],
            "INCREMENTAL",
            Some("xmin"),
        ),
    );
    let out = run(&mut tap_sync(&config, &view, None), b"");
    assert!(!out.ok);
    assert_eq!(
        out.last_error(),
        "tap-postgres-rs: error: stream public-notes_view: replication key \"xmin\" needs a table, partitioned table or materialized view, and \"public\".\"notes_view\" is a view (its rows have no xmin of their own): use FULL_TABLE, or a column as the replication key"
    );
}

#[test]
fn use_secondary_reads_from_a_standby_and_log_based_from_the_primary() {
    let primary = start_cluster(ClusterOptions::default());
    let db = primary.create_database("sources_standby");
    let mut client = primary.client(&db.name);
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, body text);
             INSERT INTO items SELECT i, 'v1' FROM generate_series(1, 3) i;",
        )
        .unwrap();
    // A secondary that is no standby is read from all the same, with a warning.
    let dir = tempfile::tempdir().unwrap();
    let mut config = db.config();
    config["use_secondary"] = json!(true);
    config["secondary_host"] = json!(primary.host());
    let not_standby = write_json(dir.path(), "not_standby.json", &config);
    let out = discover_logs(&not_standby);
    assert!(
        out.stderr.contains(&format!(
            "use_secondary: {}:{} is not a standby (pg_is_in_recovery() is false): check secondary_host and secondary_port",
            primary.host(),
            primary.port()
        )),
        "{}",
        out.stderr
    );
    let standby = match primary.start_standby() {
        Ok(s) => s,
        Err(e) if e.starts_with("no pg_basebackup") => {
            // The server bundles of other majors ship no pg_basebackup, and
            // the installed client refuses newer servers: nothing to test with.
            eprintln!(
                "SKIPPED use_secondary on PostgreSQL {}: {e}",
                primary.server_version_num()
            );
            return;
        }
        Err(e) => panic!("cannot start a standby: {e}"),
    };
    let mut on_standby = standby.client(&db.name);
    let caught_up = TestDb::wait_for(Duration::from_secs(30), || {
        on_standby
            .query_one("SELECT count(*) FROM items", &[])
            .map(|r| r.get::<_, i64>(0) == 3)
            .unwrap_or(false)
    });
    assert!(caught_up, "the standby never caught up");
    let in_recovery: bool = on_standby
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery);
    // From here on the standby lags: what the tap reads tells where it read.
    on_standby
        .batch_execute("SELECT pg_wal_replay_pause()")
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO items VALUES (4, 'v1'), (5, 'v1'); UPDATE items SET body = 'v2' WHERE id = 1;
             CREATE TABLE late (id int PRIMARY KEY)",
        )
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut config = db.config();
    let primary_config = write_json(dir.path(), "primary.json", &config);
    config["use_secondary"] = json!(true);
    config["secondary_host"] = json!(standby.host());
    config["secondary_port"] = json!(standby.port());
    let config = write_json(dir.path(), "secondary.json", &config);

    let ids = |catalog: &Value| -> Vec<String> {
        catalog["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["tap_stream_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let from_standby = discover(&config);
    assert_eq!(ids(&from_standby), vec!["public-items"]);
    assert_eq!(
        ids(&discover(&primary_config)),
        vec!["public-items", "public-late"]
    );

    let standby_rows = vec![(1, "v1".to_owned()), (2, "v1".into()), (3, "v1".into())];
    for (method, key) in [
        ("FULL_TABLE", None),
        ("INCREMENTAL", Some("id")),
        ("INCREMENTAL", Some("xmin")),
    ] {
        let catalog = write_json(
            dir.path(),
            "catalog.json",
            &select_only(&from_standby, &["public-items"], method, key),
        );
        let (messages, stderr) = sync(&config, &catalog, None);
        let mut rows = records(&messages);
        rows.sort();
        assert_eq!(rows, standby_rows, "{method} {key:?}");
        assert!(
            stderr.contains("use_secondary: discovery, FULL_TABLE and INCREMENTAL read from the secondary; LOG_BASED uses the primary"),
            "{stderr}"
        );
        let (messages, _) = sync(&primary_config, &catalog, None);
        assert_eq!(
            records(&messages).len(),
            5,
            "{method} {key:?} on the primary"
        );
    }

    // LOG_BASED: the slot, the initial copy and the changes are the primary's.
    let mut catalog = from_standby.clone();
    select(&mut catalog, &["public-items"], "LOG_BASED", None);
    let catalog = write_json(dir.path(), "log.json", &catalog);
    let (messages, _) = sync(&config, &catalog, None);
    let mut rows = records(&messages);
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (1, "v2".to_owned()),
            (2, "v1".into()),
            (3, "v1".into()),
            (4, "v1".into()),
            (5, "v1".into())
        ]
    );
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(slots, 1);
    client
        .batch_execute("INSERT INTO items VALUES (6, 'v1')")
        .unwrap();
    let state = of_type(&messages, "STATE").last().unwrap()["value"].clone();
    let state = write_json(dir.path(), "log_state.json", &state);
    let (messages, _) = sync(&config, &catalog, Some(&state));
    assert_eq!(records(&messages), vec![(6, "v1".to_owned())]);
    drop(on_standby);
}
