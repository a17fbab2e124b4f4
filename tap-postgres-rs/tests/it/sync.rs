//! FULL_TABLE (messages, interrupted and resumed), INCREMENTAL (every key
//! type), column selection, and the read-only user.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::{Output, Setup, TAP};
use pg_testkit::catalog::{select_column, select_only};
use pg_testkit::process::write_json;
use pg_testkit::snapshot::wait_for_older_transactions;
use serde_json::{json, Value};

fn ids(records: &[&Value]) -> Vec<i64> {
    records.iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

#[test]
fn full_table_messages_state_and_version() {
    let db = pg_testkit::cluster().create_database("tap_full");
    db.client()
        .batch_execute(
            "CREATE TABLE items (id integer PRIMARY KEY, name text, price numeric(8,2));
             INSERT INTO items SELECT i, 'n' || i, i / 100.0 FROM generate_series(1, 2500) i;",
        )
        .unwrap();
    let mut config = db.config();
    config["state_interval_records"] = json!("1000");
    let setup = Setup::new(&config);
    let catalog = select_only(&setup.discover(), &["public-items"], "FULL_TABLE", None);
    let r = setup.sync(&catalog, None);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        !r.stderr.to_lowercase().contains("error")
            && !r.stderr.to_lowercase().contains("exception"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(r#"INFO METRIC: {"type":"counter","metric":"record_count","value":2500,"tags":{"stream":"public-items"}}"#), "{}", r.stderr);
    let out = Output::parse(&r.stdout);
    out.validate_records();
    let kinds: Vec<&str> = out
        .messages
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .filter(|t| *t != "RECORD")
        .collect();
    assert_eq!(
        kinds,
        [
            "SCHEMA",
            "STATE",
            "ACTIVATE_VERSION",
            "STATE",
            "STATE",
            "ACTIVATE_VERSION",
            "STATE",
            "STATE"
        ]
    );
    // ACTIVATE_VERSION right before the first and right after the last record.
    let first_rec = out
        .messages
        .iter()
        .position(|m| m["type"] == "RECORD")
        .unwrap();
    let last_rec = out
        .messages
        .iter()
        .rposition(|m| m["type"] == "RECORD")
        .unwrap();
    assert_eq!(out.messages[first_rec - 1]["type"], "ACTIVATE_VERSION");
    assert_eq!(out.messages[last_rec + 1]["type"], "ACTIVATE_VERSION");
    let version = out.of_type("ACTIVATE_VERSION")[0]["version"]
        .as_i64()
        .unwrap();
    let records: Vec<&Value> = out.of_type("RECORD");
    assert_eq!(records.len(), 2500);
    assert!(records
        .iter()
        .all(|m| m["version"] == version && m["time_extracted"].is_string()));
    assert_eq!(
        out.records("public-items")[41],
        &json!({"id": 42, "name": "n42", "price": 0.42})
    );
    assert_eq!(
        out.messages[1]["value"]["currently_syncing"],
        "public-items"
    );
    let mid = &out.of_type("STATE")[1]["value"];
    assert_eq!(mid["currently_syncing"], "public-items");
    assert!(mid["bookmarks"]["public-items"]["ctid"].is_string());
    assert_eq!(
        out.last_state(),
        json!({"currently_syncing": null, "bookmarks": {"public-items": {"version": version, "last_replication_method": "FULL_TABLE"}}})
    );
    assert_eq!(out.of_type("SCHEMA")[0]["key_properties"], json!(["id"]));
}

#[test]
fn full_table_killed_halfway_resumes_from_its_last_state() {
    const ROWS: i64 = 60_000;
    let db = pg_testkit::cluster().create_database("tap_resume");
    let mut client = db.client();
    client
        .batch_execute(&format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, v text);
             ALTER TABLE big ALTER v SET STORAGE PLAIN;
             INSERT INTO big SELECT i, repeat('x', 100) FROM generate_series(1, {ROWS}) i;"
        ))
        .unwrap();
    client.batch_execute("VACUUM ANALYZE big").unwrap();
    // The resume below must not send the rows before its bookmark again: the
    // first run's snapshot has to see the whole setup.
    wait_for_older_transactions(&mut client);
    let mut config = db.config();
    config["state_interval_records"] = json!(1000);
    let setup = Setup::new(&config);
    let catalog = select_only(&setup.discover(), &["public-big"], "FULL_TABLE", None);
    let cat_path = write_json(setup.dir.path(), "catalog.json", &catalog);

    // First run: read until a few checkpoints have gone by, then kill it.
    let mut child = Command::new(TAP)
        .arg("--config")
        .arg(&setup.config)
        .arg("--catalog")
        .arg(&cat_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut states = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains(r#""ctid":"#) {
            states += 1;
        }
        first.push_str(&line);
        first.push('\n');
        if states == 20 {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first = Output::parse(&first);
    let state = first.last_state();
    let bookmark = &state["bookmarks"]["public-big"];
    let ctid = bookmark["ctid"].as_str().unwrap().to_owned();
    let first_ids: BTreeSet<i64> = ids(&first.records("public-big")).into_iter().collect();
    assert!(first_ids.len() >= 20_000 && first_ids.len() < ROWS as usize / 2);

    // While it was down: free space early in the table, then update a row
    // past the bookmark so that its new version lands before the bookmark.
    // Its server session would hold its snapshot (keeping VACUUM from freeing
    // anything) until it notices the closed socket: end it now.
    client
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .unwrap();
    assert!(pg_testkit::TestDb::wait_for(
        std::time::Duration::from_secs(10),
        || {
            client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            == 0
        }
    ));
    client
        .batch_execute("DELETE FROM big WHERE id <= 300")
        .unwrap();
    // A new version too big for the free space of its page and of the last,
    // half-full page (PLAIN storage: not compressed or toasted): only the
    // pages emptied above can take it. VACUUM frees them only once no
    // snapshot anywhere in the cluster can see the deleted rows (another
    // test's transaction or a logical slot being created holds that back for
    // a while): until the row moves, roll back and retry.
    let mut writer = db.client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        // INDEX_CLEANUP ON: with so few dead rows VACUUM would otherwise skip
        // its second heap pass, and the freed pages would not reach the FSM.
        client
            .batch_execute("VACUUM (INDEX_CLEANUP ON) big")
            .unwrap();
        writer
            .batch_execute(
                "BEGIN; UPDATE big SET v = repeat('y', 5000) WHERE id = 40000; \
                 INSERT INTO big VALUES (100000, 'new');",
            )
            .unwrap();
        let moved_before: bool = writer
            .query_one(
                "SELECT ctid < $1::text::tid FROM big WHERE id = 40000",
                &[&ctid],
            )
            .unwrap()
            .get(0);
        if moved_before {
            writer.batch_execute("COMMIT").unwrap();
            break;
        }
        writer.batch_execute("ROLLBACK").unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "the update did not move the row before {ctid} in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    println!(
        "resuming after {ctid}; {} rows were sent before the kill",
        first_ids.len()
    );

    let second = setup.sync_ok(&catalog, Some(&state));
    let recs = second.records("public-big");
    let second_ids: BTreeSet<i64> = ids(&recs).into_iter().collect();
    // It resumed (did not start over) and kept the version.
    assert!(
        second_ids.len() < ROWS as usize - first_ids.len() + 1000,
        "{}",
        second_ids.len()
    );
    let version = bookmark["version"].as_i64().unwrap();
    let activates = second.of_type("ACTIVATE_VERSION");
    assert_eq!(
        activates.len(),
        1,
        "only the closing ACTIVATE_VERSION on resume"
    );
    assert_eq!(activates[0]["version"], version);
    assert!(second
        .of_type("RECORD")
        .iter()
        .all(|m| m["version"] == version));
    assert!(recs.contains(&&json!({"id": 40000, "v": "y".repeat(5000)})));
    assert!(recs.contains(&&json!({"id": 100000, "v": "new"})));
    // The union has every row now in the table.
    let now: BTreeSet<i64> = client
        .query("SELECT id FROM big", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let union: BTreeSet<i64> = first_ids.union(&second_ids).copied().collect();
    assert!(
        now.is_subset(&union),
        "missing: {:?}",
        now.difference(&union).take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        second.last_state()["bookmarks"]["public-big"],
        json!({"version": version, "last_replication_method": "FULL_TABLE"})
    );

    // A rewritten table (VACUUM FULL) cannot be resumed by ctid: it starts over.
    client.batch_execute("VACUUM FULL big").unwrap();
    let third = setup.sync_ok(&catalog, Some(&state));
    assert_eq!(third.records("public-big").len(), now.len());
    // Not the stream's first copy: only the closing ACTIVATE_VERSION, so the
    // old rows stay visible until the new version is complete.
    assert_eq!(third.of_type("ACTIVATE_VERSION").len(), 1);
    assert_ne!(third.of_type("ACTIVATE_VERSION")[0]["version"], version);
    let last_record = third
        .messages
        .iter()
        .rposition(|m| m["type"] == "RECORD")
        .unwrap();
    let first_record = third
        .messages
        .iter()
        .position(|m| m["type"] == "RECORD")
        .unwrap();
    let activate = third
        .messages
        .iter()
        .position(|m| m["type"] == "ACTIVATE_VERSION")
        .unwrap();
    assert!(first_record < activate && activate == last_record + 1);
}

/// The last record's value of `key` as a bookmark holds it: numeric as its
/// exact text, the rest as the JSON value.
fn exact(out: &Output, key: &str) -> Value {
    let raw = &out.raw_records.last().unwrap().1[key];
    if key == "k_num" {
        json!(raw)
    } else {
        serde_json::from_str(raw).unwrap()
    }
}

#[test]
fn incremental_second_run_emits_only_rows_at_or_after_the_bookmark() {
    let db = pg_testkit::cluster().create_database("tap_incremental");
    let mut client = db.client();
    client
        .batch_execute(
            "CREATE TABLE ev (id integer PRIMARY KEY, k_ts timestamp, k_tstz timestamptz, k_date date,
                              k_int bigint, k_num numeric(30,10), k_text text, payload text);
             INSERT INTO ev SELECT i, timestamp '2024-01-01' + i * interval '1 hour',
                    timestamptz '2024-01-01 00:00:00.5+00' + i * interval '1 hour',
                    date '2024-01-01' + i, i * 10, 12345678901234567890.0000000001 + i,
                    lpad(i::text, 5, '0'), 'p' || i
               FROM generate_series(1, 50) i;",
        )
        .unwrap();
    let setup = Setup::new(&db.config());
    let discovered = setup.discover();
    for key in ["k_ts", "k_tstz", "k_date", "k_int", "k_num", "k_text"] {
        let catalog = select_only(&discovered, &["public-ev"], "INCREMENTAL", Some(key));
        let first = setup.sync_ok(&catalog, None);
        assert_eq!(first.records("public-ev").len(), 50, "{key}");
        assert_eq!(
            first.of_type("SCHEMA")[0]["bookmark_properties"],
            json!([key])
        );
        let state = first.last_state();
        let bm = &state["bookmarks"]["public-ev"];
        assert_eq!(bm["replication_key"], key);
        assert_eq!(bm["last_replication_method"], "INCREMENTAL");
        assert_eq!(
            bm["replication_key_value"],
            exact(&first, key),
            "{key}: bookmark is the last value"
        );

        // New rows: one tie with the bookmark, one after, one before.
        client
            .batch_execute(&format!(
                "INSERT INTO ev (id, {key}) SELECT 1000, {key} FROM ev WHERE id = 50;
                 INSERT INTO ev (id, {key}) SELECT 1001, {key} FROM ev WHERE id = 49;
                 INSERT INTO ev SELECT 1002, k_ts + interval '1 day', k_tstz + interval '1 day',
                        k_date + 1, k_int + 1, k_num + 1, k_text || 'z', 'after' FROM ev WHERE id = 50;"
            ))
            .unwrap();
        let second = setup.sync_ok(&catalog, Some(&state));
        let got: BTreeSet<i64> = ids(&second.records("public-ev")).into_iter().collect();
        assert_eq!(got, BTreeSet::from([50, 1000, 1002]), "{key}");
        let after = second.last_state();
        assert_eq!(
            after["bookmarks"]["public-ev"]["replication_key_value"],
            exact(&second, key)
        );
        // Nothing new: the third run re-sends only the ties.
        let third = setup.sync_ok(&catalog, Some(&after));
        assert_eq!(ids(&third.records("public-ev")), vec![1002], "{key}");
        client
            .batch_execute("DELETE FROM ev WHERE id >= 1000")
            .unwrap();
    }
    // numeric bookmarks keep every digit (as a string).
    let catalog = select_only(&discovered, &["public-ev"], "INCREMENTAL", Some("k_num"));
    let out = setup.sync_ok(&catalog, None);
    assert_eq!(
        out.last_state()["bookmarks"]["public-ev"]["replication_key_value"],
        "12345678901234567940.0000000001"
    );
}

#[test]
fn deselected_columns_are_not_read_and_keys_always_are() {
    let db = pg_testkit::cluster().create_database("tap_columns");
    db.client()
        .batch_execute(
            "CREATE TABLE people (id integer PRIMARY KEY, name text, secret text, age integer);
             INSERT INTO people VALUES (1, 'ann', 's3cret', 30);",
        )
        .unwrap();
    let setup = Setup::new(&db.config());
    let mut catalog = select_only(&setup.discover(), &["public-people"], "FULL_TABLE", None);
    select_column(&mut catalog, "public-people", "secret", false);
    select_column(&mut catalog, "public-people", "age", false);
    select_column(&mut catalog, "public-people", "id", false);
    let out = setup.sync_ok(&catalog, None);
    assert_eq!(
        out.records("public-people"),
        vec![&json!({"id": 1, "name": "ann"})]
    );
    let props = out.of_type("SCHEMA")[0]["schema"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(props, ["id", "name"]);
}

fn setup_sync_ok(config: &Value, catalog: &Value) -> Output {
    Setup::new(config).sync_ok(catalog, None)
}

#[test]
fn read_only_user_can_discover_and_sync() {
    let db = pg_testkit::cluster().create_database("tap_readonly");
    let mut admin = db.client();
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA app;
             CREATE TABLE app.t (id integer PRIMARY KEY, updated_at timestamptz NOT NULL, v text);
             INSERT INTO app.t SELECT i, timestamptz '2024-01-01' + i * interval '1 minute', 'v' || i
               FROM generate_series(1, 100) i;
             DROP ROLE IF EXISTS tap_reader;
             CREATE ROLE tap_reader LOGIN PASSWORD 'reader-pw';
             GRANT CONNECT ON DATABASE \"{0}\" TO tap_reader;
             GRANT USAGE ON SCHEMA app TO tap_reader;
             GRANT SELECT ON ALL TABLES IN SCHEMA app TO tap_reader;
             CREATE TABLE app.private (id integer);
             CREATE TABLE public.not_granted (id integer);
             CREATE TABLE app.some_columns (id integer, secret text);
             INSERT INTO app.some_columns VALUES (1, 'hidden');
             GRANT SELECT (id) ON app.some_columns TO tap_reader;",
            db.name
        ))
        .unwrap();
    let mut config = db.config();
    config["user"] = json!("tap_reader");
    config["password"] = json!("reader-pw");
    // Without a schema filter: only what this user may read.
    let everything = Setup::new(&config).discover();
    let streams: Vec<&str> = everything["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tap_stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["app-some_columns", "app-t"]);
    let some = everything["streams"][0]["schema"]["properties"]
        .as_object()
        .unwrap();
    assert_eq!(some.keys().collect::<Vec<_>>(), ["id"]);
    let partial = setup_sync_ok(
        &config,
        &select_only(&everything, &["app-some_columns"], "FULL_TABLE", None),
    );
    // Without SELECT on the whole table there is no ctid: a key-less
    // stream's rows are keyed by their position in the copy.
    assert_eq!(
        partial.records("app-some_columns"),
        vec![&json!({"id": 1, "_sdc_row_number": 1})]
    );

    config["filter_schemas"] = json!(["app"]);
    let setup = Setup::new(&config);
    let discovered = setup.discover();
    let full = setup.sync_ok(
        &select_only(&discovered, &["app-t"], "FULL_TABLE", None),
        None,
    );
    assert_eq!(full.records("app-t").len(), 100);
    let inc_cat = select_only(&discovered, &["app-t"], "INCREMENTAL", Some("updated_at"));
    let inc = setup.sync_ok(&inc_cat, None);
    assert_eq!(inc.records("app-t").len(), 100);
    let again = setup.sync_ok(&inc_cat, Some(&inc.last_state()));
    assert_eq!(ids(&again.records("app-t")), vec![100]);
}

#[test]
fn views_matviews_and_partitioned_parents_sync_in_full() {
    let db = pg_testkit::cluster().create_database("tap_relkinds");
    db.client()
        .batch_execute(
            "CREATE TABLE m (id bigint, day date NOT NULL, v numeric(8,3), PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
             CREATE TABLE m_2023 PARTITION OF m FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
             CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
             INSERT INTO m SELECT i, date '2023-01-01' + (i % 700), i / 8.0 FROM generate_series(1, 3000) i;
             CREATE VIEW big_v AS SELECT id, v FROM m WHERE v > 100;
             CREATE MATERIALIZED VIEW mv AS SELECT day, count(*) AS n FROM m GROUP BY day;",
        )
        .unwrap();
    let mut config = db.config();
    config["state_interval_records"] = json!(1000);
    let setup = Setup::new(&config);
    let catalog = select_only(
        &setup.discover(),
        &["public-big_v", "public-m", "public-mv"],
        "FULL_TABLE",
        None,
    );
    let out = setup.sync_ok(&catalog, None);
    assert_eq!(out.records("public-m").len(), 3000);
    assert_eq!(out.records("public-big_v").len(), 3000 - 800);
    assert_eq!(out.records("public-mv").len(), 700);
    assert_eq!(out.of_type("ACTIVATE_VERSION").len(), 6);
    // A STATE at least every 1000 records even where there is no ctid to bookmark.
    let mut since = 0;
    for m in &out.messages {
        match m["type"].as_str().unwrap() {
            "RECORD" => since += 1,
            "STATE" => since = 0,
            _ => {}
        }
        assert!(since <= 1000);
    }
}

#[test]
fn default_replication_method_applies_only_where_the_catalog_names_none() {
    let db = pg_testkit::cluster().create_database("tap_default_method");
    db.client()
        .batch_execute(
            "CREATE TABLE a (id integer PRIMARY KEY, at date); INSERT INTO a VALUES (1, '2024-01-01'), (2, '2024-01-02');
             CREATE TABLE b (id integer PRIMARY KEY); INSERT INTO b VALUES (1);",
        )
        .unwrap();
    let mut config = db.config();
    config["default_replication_method"] = json!("incremental");
    let setup = Setup::new(&config);
    let mut catalog = select_only(
        &setup.discover(),
        &["public-a", "public-b"],
        "FULL_TABLE",
        None,
    );
    for s in catalog["streams"].as_array_mut().unwrap() {
        let is_a = s["tap_stream_id"] == "public-a";
        let meta = &mut s["metadata"][0]["metadata"];
        if is_a {
            // No method named: the default (INCREMENTAL) applies.
            meta.as_object_mut().unwrap().remove("replication-method");
            meta["replication-key"] = json!("at");
        }
    }
    let out = setup.sync_ok(&catalog, None);
    let state = out.last_state();
    assert_eq!(
        state["bookmarks"]["public-a"],
        json!({"replication_key": "at", "replication_key_value": "2024-01-02", "last_replication_method": "INCREMENTAL"})
    );
    assert_eq!(
        state["bookmarks"]["public-b"]["last_replication_method"],
        "FULL_TABLE"
    );
    let activates: Vec<&Value> = out.of_type("ACTIVATE_VERSION");
    assert!(activates.iter().all(|m| m["stream"] == "public-b"));
}

#[test]
fn messages_use_the_catalog_stream_name_and_state_the_stream_id() {
    let db = pg_testkit::cluster().create_database("tap_stream_name");
    db.client()
        .batch_execute("CREATE TABLE t (id integer PRIMARY KEY); INSERT INTO t VALUES (1);")
        .unwrap();
    let setup = Setup::new(&db.config());
    let mut catalog = select_only(&setup.discover(), &["public-t"], "FULL_TABLE", None);
    catalog["streams"][0]["stream"] = json!("renamed");
    let out = setup.sync_ok(&catalog, None);
    let names: BTreeSet<&str> = out
        .messages
        .iter()
        .filter(|m| m["type"] != "STATE")
        .map(|m| m["stream"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["renamed"]));
    assert!(out.last_state()["bookmarks"]["public-t"]["version"].is_i64());
}
