//! The command line: --about, --version, --help, aliases, and every error
//! case with its exact stderr line and exit code.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::{tap, Setup, TAP};
use pg_testkit::catalog::select_only;
use pg_testkit::process::{run, write_json, Run};
use serde_json::{json, Value};

/// The run failed with exit code 1 and this as its last stderr line.
fn assert_fails_with(r: &Run, want: &str) {
    assert!(!r.ok, "expected a failure; stdout: {}", r.stdout);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(
        r.stderr.lines().last().unwrap_or(""),
        want,
        "stderr: {}",
        r.stderr
    );
}

#[test]
fn about_version_and_help() {
    for args in [
        vec!["--about"],
        vec!["--about", "--format=json"],
        vec!["--about", "--format", "json"],
    ] {
        let r = tap(&args);
        assert!(r.ok, "{}", r.stderr);
        let about: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(about["name"], "tap-postgres-rs");
        assert_eq!(
            about["capabilities"],
            json!([
                "about",
                "catalog",
                "discover",
                "state",
                "activate-version",
                "properties",
                "log-based"
            ])
        );
        let props = about["settings"]["properties"].as_object().unwrap();
        for key in [
            "host",
            "port",
            "user",
            "password",
            "database",
            "filter_schemas",
            "default_replication_method",
            "state_interval_records",
        ] {
            assert!(props.contains_key(key), "{key}");
        }
        // user and database may come from sqlalchemy_url instead: required
        // one way or the other, which the descriptions say.
        assert_eq!(about["settings"]["required"], json!([]));
        for key in ["user", "database"] {
            assert!(
                props[key]["description"]
                    .as_str()
                    .unwrap()
                    .contains("Required, unless `sqlalchemy_url` names it."),
                "{key}"
            );
        }
    }
    let md = tap(&["--about", "--format=markdown"]);
    assert!(
        md.stdout.starts_with("# `tap-postgres-rs`"),
        "{}",
        md.stdout
    );
    assert!(md.stdout.contains("| filter_schemas |"));
    let v = tap(&["--version"]);
    assert_eq!(
        v.stdout,
        format!("tap-postgres-rs {}\n", env!("CARGO_PKG_VERSION"))
    );
    let help = tap(&["--help"]);
    assert!(help.ok);
    for s in [
        "--properties",
        "filter_schemas",
        "default_replication_method",
        "ssl_mode",
        "TAP_POSTGRES_RS_",
    ] {
        assert!(help.stdout.contains(s), "--help lacks {s}: {}", help.stdout);
    }
    let bad = tap(&["--format", "yaml", "--about"]);
    assert_eq!(bad.code, Some(2));
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            json!({"database": "d"}),
            "tap-postgres-rs: error: config: `user` is required",
        ),
        (
            json!({"user": "u", "database": "d", "port": "many"}),
            "tap-postgres-rs: error: config: `port` must be a whole number, not \"many\"",
        ),
        (
            json!({"user": "u", "database": "d", "filter_schemas": 3}),
            "tap-postgres-rs: error: config: `filter_schemas` must be a list of strings, not a number",
        ),
    ];
    for (config, want) in cases {
        let c = write_json(dir.path(), "c.json", &config);
        let r = tap(&["--config".as_ref(), c.as_os_str(), "--discover".as_ref()]);
        assert_fails_with(&r, want);
    }
    // No --config: the settings come from the environment alone (here none).
    let r = tap(&["--discover"]);
    assert_fails_with(&r, "tap-postgres-rs: error: config: `user` is required");
}

#[test]
fn unreachable_host_and_wrong_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let c = write_json(
        dir.path(),
        "c.json",
        &json!({"host": "127.0.0.1", "port": port, "user": "u", "password": "hunter2-secret", "database": "d", "ssl_mode": "disable"}),
    );
    let r = tap(&["--config".as_ref(), c.as_os_str(), "--discover".as_ref()]);
    assert_fails_with(
        &r,
        &format!("tap-postgres-rs: error: cannot connect to PostgreSQL at 127.0.0.1:{port} (database `d`, user `u`): connection refused (is the server running on 127.0.0.1 and accepting TCP connections on port {port}?)"),
    );
    assert!(!r.stderr.contains("hunter2"));

    let cluster = pg_testkit::cluster();
    let db = cluster.create_database("tap_password");
    db.client()
        .batch_execute("DROP ROLE IF EXISTS tap_pw; CREATE ROLE tap_pw LOGIN PASSWORD 'right-pw'")
        .unwrap();
    cluster.prepend_hba("host all tap_pw 127.0.0.1/32 scram-sha-256");
    let mut config = db.config();
    config["user"] = json!("tap_pw");
    config["password"] = json!("wrong-pw-hunter2");
    let setup = Setup::new(&config);
    let r = tap(&[
        "--config".as_ref(),
        setup.config.as_os_str(),
        "--discover".as_ref(),
    ]);
    assert_fails_with(
        &r,
        &format!("tap-postgres-rs: error: cannot connect to PostgreSQL at 127.0.0.1:{} (database `{}`, user `tap_pw`): FATAL: password authentication failed for user \"tap_pw\": check user and password (the server rejected the password for user `tap_pw`)", cluster.port(), db.name),
    );
    assert!(!r.stderr.contains("hunter2") && !r.stdout.contains("hunter2"));
    config["password"] = json!("right-pw");
    assert_eq!(Setup::new(&config).discover()["streams"], json!([]));
}

#[test]
fn sync_errors_name_the_stream() {
    let db = pg_testkit::cluster().create_database("tap_errors");
    let mut client = db.client();
    client
        .batch_execute(
            "CREATE TABLE t (id integer PRIMARY KEY, v text); CREATE TABLE gone (id integer);
             CREATE TABLE keyless (v text); CREATE VIEW v AS SELECT * FROM t;",
        )
        .unwrap();
    let setup = Setup::new(&db.config());
    let discovered = setup.discover();
    client.batch_execute("DROP TABLE gone").unwrap();

    let r = setup.sync(
        &select_only(&discovered, &["public-gone"], "FULL_TABLE", None),
        None,
    );
    assert_fails_with(&r, "tap-postgres-rs: error: stream public-gone: table \"public\".\"gone\" does not exist (or this user cannot see it)");
    let r = setup.sync(
        &select_only(&discovered, &["public-t"], "INCREMENTAL", Some("nope")),
        None,
    );
    assert_fails_with(&r, "tap-postgres-rs: error: stream public-t: replication key \"nope\" is not a column of \"public\".\"t\"");
    let r = setup.sync(
        &select_only(&discovered, &["public-t"], "INCREMENTAL", None),
        None,
    );
    assert_fails_with(&r, "tap-postgres-rs: error: stream public-t: INCREMENTAL needs a replication-key in the catalog metadata");
    let r = setup.sync(
        &select_only(&discovered, &["public-v"], "LOG_BASED", None),
        None,
    );
    assert_fails_with(
        &r,
        "tap-postgres-rs: error: 1 of the selected streams skipped (the others synced, their state is saved): stream public-v: LOG_BASED works on tables only (views, materialized views and foreign tables have no change log of their own): use FULL_TABLE or INCREMENTAL for this stream",
    );
    let r = setup.sync(
        &select_only(&discovered, &["public-keyless"], "LOG_BASED", None),
        None,
    );
    assert_fails_with(
        &r,
        "tap-postgres-rs: error: 1 of the selected streams skipped (the others synced, their state is saved): stream public-keyless: LOG_BASED needs a replica identity, and \"public\".\"keyless\" has none (no primary key, REPLICA IDENTITY DEFAULT): publishing it would make the application's own UPDATEs and DELETEs fail. Add a primary key, or run `ALTER TABLE \"public\".\"keyless\" REPLICA IDENTITY FULL`, or sync it FULL_TABLE.",
    );
    let r = setup.sync(
        &select_only(&discovered, &["public-t"], "SOMETIMES", None),
        None,
    );
    assert_fails_with(&r, "tap-postgres-rs: error: stream public-t: unknown replication method \"SOMETIMES\" (use FULL_TABLE, INCREMENTAL or LOG_BASED)");

    // Malformed files.
    let dir = setup.dir.path();
    let bad_catalog = dir.join("bad-catalog.json");
    std::fs::write(&bad_catalog, "{\"streams\": [").unwrap();
    let r = tap(&[
        "--config".as_ref(),
        setup.config.as_os_str(),
        "--catalog".as_ref(),
        bad_catalog.as_os_str(),
    ]);
    assert_fails_with(&r, &format!("tap-postgres-rs: error: catalog {}: invalid catalog: EOF while parsing a list at line 1 column 13", bad_catalog.display()));
    let good_catalog = write_json(
        dir,
        "good.json",
        &select_only(&discovered, &["public-t"], "FULL_TABLE", None),
    );
    let bad_state = dir.join("bad-state.json");
    std::fs::write(&bad_state, "[1]").unwrap();
    let r = tap(&[
        "--config".as_ref(),
        setup.config.as_os_str(),
        "--properties".as_ref(),
        good_catalog.as_os_str(),
        "--state".as_ref(),
        bad_state.as_os_str(),
    ]);
    assert_fails_with(
        &r,
        &format!(
            "tap-postgres-rs: error: state {}: invalid state: expected a JSON object, found [1]",
            bad_state.display()
        ),
    );
    let missing = dir.join("missing.json");
    let r = tap(&[
        "--config".as_ref(),
        setup.config.as_os_str(),
        "--catalog".as_ref(),
        missing.as_os_str(),
    ]);
    assert_fails_with(
        &r,
        &format!(
            "tap-postgres-rs: error: cannot read catalog {}: No such file or directory (os error 2)",
            missing.display()
        ),
    );

    // --discover ignores --catalog and --state, even broken ones.
    let r = tap(&[
        "--config".as_ref(),
        setup.config.as_os_str(),
        "--discover".as_ref(),
        "--catalog".as_ref(),
        bad_catalog.as_os_str(),
        "--state".as_ref(),
        bad_state.as_os_str(),
    ]);
    assert!(r.ok, "{}", r.stderr);
    // --properties is --catalog.
    let r = tap(&[
        "--config".as_ref(),
        setup.config.as_os_str(),
        "--properties".as_ref(),
        good_catalog.as_os_str(),
    ]);
    assert!(r.ok, "{}", r.stderr);
}

#[test]
fn closed_stdout_is_a_clean_reported_stop() {
    let db = pg_testkit::cluster().create_database("tap_pipe");
    db.client()
        .batch_execute("CREATE TABLE t AS SELECT i AS id, repeat('x', 200) AS v FROM generate_series(1, 200000) i")
        .unwrap();
    let setup = Setup::new(&db.config());
    let catalog = write_json(
        setup.dir.path(),
        "cat.json",
        &select_only(&setup.discover(), &["public-t"], "FULL_TABLE", None),
    );
    let mut child = Command::new(TAP)
        .arg("--config")
        .arg(&setup.config)
        .arg("--catalog")
        .arg(&catalog)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"SCHEMA\""));
    // The reader is gone (dropped above).
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("stdout was closed by the reader; stopping"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn config_files_merge_and_env_fills_gaps() {
    let db = pg_testkit::cluster().create_database("tap_config_merge");
    db.client()
        .batch_execute(
            "CREATE SCHEMA a; CREATE TABLE a.t (id integer); CREATE TABLE public.u (id integer)",
        )
        .unwrap();
    let full = db.config();
    let dir = tempfile::tempdir().unwrap();
    // Connection in one file, a wrong port overridden by a later file, the
    // database and the schema filter from the environment.
    let first = write_json(
        dir.path(),
        "1.json",
        &json!({"host": full["host"], "port": 1, "user": full["user"], "password": "", "ssl_mode": "disable"}),
    );
    let second = write_json(
        dir.path(),
        "2.json",
        &json!({"port": full["port"].to_string(), "unknown_key": true}),
    );
    let r = run(
        Command::new(TAP)
            .args([
                "--config".as_ref(),
                first.as_os_str(),
                "--config".as_ref(),
                second.as_os_str(),
                "--discover".as_ref(),
            ])
            .env("TAP_POSTGRES_RS_DATABASE", &db.name)
            .env("TAP_POSTGRES_RS_FILTER_SCHEMAS", "a"),
        b"",
    );
    assert!(r.ok, "{}", r.stderr);
    let catalog: Value = serde_json::from_str(&r.stdout).unwrap();
    let ids: Vec<&str> = catalog["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tap_stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-t"]);
}
