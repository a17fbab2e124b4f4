//! First-hour mistakes explain themselves, in both binaries: a misspelt
//! setting is warned about with the closest name (and the run goes on), a
//! wrong type names the setting, the environment alone is a whole config,
//! an empty discovery or selection says why and how to fix it, and a
//! mistyped flag gets a suggestion.

use std::process::Command;

use e2e_tests::{bin, discover, write_json};
use pg_testkit::process::{run, Run};
use serde_json::{json, Value};

/// A binary with nothing from the test's own environment that it reads.
fn command(binary: &str) -> Command {
    let mut cmd = Command::new(bin(binary));
    cmd.env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("TAP_POSTGRES_RS_") || key.starts_with("TARGET_POSTGRES_RS_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn with(mut config: Value, extra: Value) -> Value {
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    config
}

#[test]
fn misspelt_settings_warn_with_the_closest_name_and_the_run_goes_on() {
    let db = pg_testkit::cluster().create_database("mistakes_misspelt");
    db.client()
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tap_config = write_json(
        dir.path(),
        "tap.json",
        &with(
            db.config(),
            json!({"hostname": "elsewhere", "filter_schema": ["x"], "default_replication_methd": "LOG_BASED",
                   "ssh_tunnel": {"enable": false, "hots": "b"}, "stream_maps": {}, "flattening_enabled": true}),
        ),
    );
    let r = run(
        command("tap-postgres-rs")
            .arg("--config")
            .arg(&tap_config)
            .arg("--discover"),
        b"",
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("\"public-t\""), "{}", r.stdout);
    for line in [
        "unknown setting \"hostname\" (did you mean \"host\"?); it is ignored",
        "unknown setting \"filter_schema\" (did you mean \"filter_schemas\"?); it is ignored",
        "unknown setting \"default_replication_methd\" (did you mean \"default_replication_method\"?); it is ignored",
        "unknown setting \"ssh_tunnel.hots\" (did you mean \"ssh_tunnel.host\"?); it is ignored",
        "tap-postgres-rs does not implement the Meltano SDK settings stream_maps, flattening_enabled; they are ignored",
    ] {
        assert!(r.stderr.contains(line), "no {line:?} in: {}", r.stderr);
    }
    assert_eq!(r.stderr.matches("WARN").count(), 4, "{}", r.stderr);

    let target_config = write_json(
        dir.path(),
        "target.json",
        &with(
            db.config(),
            json!({"default_target_shema": "raw", "batch_size": 5, "batch_config": {}}),
        ),
    );
    let r = run(
        command("target-postgres-rs")
            .arg("--config")
            .arg(&target_config),
        b"",
    );
    assert!(r.ok, "{}", r.stderr);
    for line in [
        "unknown setting \"default_target_shema\" (did you mean \"default_target_schema\"?); it is ignored",
        "unknown setting \"batch_size\" (did you mean \"batch_size_rows\"?); it is ignored",
        "target-postgres-rs does not implement the Meltano SDK settings batch_config; they are ignored",
    ] {
        assert!(r.stderr.contains(line), "no {line:?} in: {}", r.stderr);
    }
}

#[test]
fn a_setting_of_the_wrong_type_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_json(
        dir.path(),
        "c.json",
        &json!({"user": "u", "database": "d", "port": "abc"}),
    );
    for binary in ["tap-postgres-rs", "target-postgres-rs"] {
        let mut cmd = command(binary);
        cmd.arg("--config").arg(&config).arg("--discover");
        if binary == "target-postgres-rs" {
            cmd = command(binary);
            cmd.arg("--config").arg(&config);
        }
        let r = run(&mut cmd, b"");
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        assert_eq!(
            r.last_error(),
            format!("{binary}: error: config: `port` must be a whole number, not \"abc\"")
        );
    }
}

/// `<PREFIX>_HOST`, `_PORT`, ... for every connection setting of `db`.
fn env_config(cmd: &mut Command, prefix: &str, db: &pg_testkit::TestDb) {
    cmd.env(format!("{prefix}_HOST"), &db.host)
        .env(format!("{prefix}_PORT"), db.port.to_string())
        .env(format!("{prefix}_USER"), pg_testkit::SUPERUSER)
        .env(format!("{prefix}_DATABASE"), &db.name)
        .env(format!("{prefix}_SSL_MODE"), "disable");
}

#[test]
fn the_environment_alone_is_a_whole_config_for_both_binaries() {
    let db = pg_testkit::cluster().create_database("mistakes_env_only");
    db.client()
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .unwrap();
    let mut tap = command("tap-postgres-rs");
    tap.arg("--discover");
    env_config(&mut tap, "TAP_POSTGRES_RS", &db);
    let r = run(&mut tap, b"");
    assert!(r.ok, "{}", r.stderr);
    let catalog: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(catalog["streams"][0]["tap_stream_id"], "public-t");

    let mut target = command("target-postgres-rs");
    env_config(&mut target, "TARGET_POSTGRES_RS", &db);
    let input = concat!(
        r#"{"type":"SCHEMA","stream":"landed","schema":{"properties":{"id":{"type":"integer"}}},"key_properties":["id"]}"#,
        "\n",
        r#"{"type":"RECORD","stream":"landed","record":{"id":7}}"#,
        "\n",
    );
    let r = run(&mut target, input.as_bytes());
    assert!(r.ok, "{}", r.stderr);
    let n: i64 = db
        .client()
        .query_one("SELECT count(*) FROM public.landed WHERE id = 7", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

fn tap_with(config: &Value, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = write_json(dir.path(), "tap.json", config);
    run(
        command("tap-postgres-rs")
            .arg("--config")
            .arg(&path)
            .args(args),
        b"",
    )
}

#[test]
fn an_empty_discovery_or_selection_says_why_and_how_to_fix_it() {
    let db = pg_testkit::cluster().create_database("mistakes_empty");
    db.client()
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY);
             DROP ROLE IF EXISTS mistakes_nobody; CREATE ROLE mistakes_nobody LOGIN",
        )
        .unwrap();
    // A schema that does not exist.
    let r = tap_with(
        &with(db.config(), json!({"filter_schemas": ["pubic"]})),
        &["--discover"],
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), r#"{"streams":[]}"#);
    assert!(
        r.stderr.contains(&format!(
            "discovery found no stream in filter_schemas pubic: no schema named pubic exists in database `{}` (check filter_schemas)",
            db.name
        )),
        "{}",
        r.stderr
    );
    // A role that may read nothing.
    let r = tap_with(
        &with(
            db.config(),
            json!({"user": "mistakes_nobody", "filter_schemas": "public"}),
        ),
        &["--discover"],
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), r#"{"streams":[]}"#);
    assert!(
        r.stderr.contains(
            "discovery found no table, view or foreign table that user `mistakes_nobody` may read in filter_schemas public: \
             grant access as the tables' owner, e.g. `GRANT USAGE ON SCHEMA public TO mistakes_nobody; \
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO mistakes_nobody`"
        ),
        "{}",
        r.stderr
    );
    let r = tap_with(
        &with(db.config(), json!({"user": "mistakes_nobody"})),
        &["--discover"],
    );
    assert!(
        r.ok && r.stderr.contains(&format!(
            "discovery found no table, view or foreign table that user `mistakes_nobody` may read in database `{}`",
            db.name
        )),
        "{}",
        r.stderr
    );
    // A catalog with nothing selected.
    let dir = tempfile::tempdir().unwrap();
    let config = write_json(dir.path(), "tap.json", &db.config());
    let catalog = write_json(dir.path(), "catalog.json", &discover(&config));
    let r = tap_with(&db.config(), &["--catalog", catalog.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "no stream is selected in the catalog, so nothing is synced: select a stream with `\"selected\": true` \
             in its metadata entry whose breadcrumb is [] (with Meltano: `meltano select tap-postgres-rs <stream> \"*\"`)"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn a_mistyped_flag_gets_a_suggestion() {
    for (binary, typo, meant) in [
        ("tap-postgres-rs", "--discovr", "--discover"),
        ("target-postgres-rs", "--confg", "--config"),
    ] {
        let r = run(command(binary).arg(typo), b"");
        assert_eq!(r.code, Some(2), "{}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("tip: a similar argument exists: '{meant}'")),
            "{binary}: {}",
            r.stderr
        );
    }
}
