//! Meltano drives the two binaries as a user's project would: the shipped
//! plugin block (`meltano/meltano.yml`) included verbatim, Meltano 4.4.1 from
//! PyPI in a cached virtualenv, the binaries found on PATH, both databases on
//! the private test cluster.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e_tests::orchestrator::{meltano_parse_logs, plugin_block, MeltanoProject};
use e2e_tests::{bin, compare_table};
use pg_testkit::cluster;
use serde_json::{json, Value};

const STATE_ID: &str = "dev:tap-postgres-rs-to-target-postgres-rs";

/// One Meltano at a time: each run starts several Python processes, and the
/// SIGTERM test's timing must not depend on what the others are doing.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(super) fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
/// Where Meltano's convention (`default_target_schema: $MELTANO_EXTRACT__LOAD_SCHEMA`,
/// the extractor's namespace) lands the streams.
pub(super) const LOAD_SCHEMA: &str = "tap_postgres_rs";

fn about(binary: &str) -> Value {
    let out = Command::new(bin(binary))
        .args(["--about", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{binary} --about failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{binary} --about --format json is not JSON: {e}"))
}

/// Settings of an `--about` JSON Schema, flattened to dotted names:
/// name -> (meltano kind, secret, default).
fn about_settings(about: &Value) -> Vec<(String, String, bool, Option<Value>)> {
    fn walk(prefix: &str, props: &Value, out: &mut Vec<(String, String, bool, Option<Value>)>) {
        for (name, schema) in props.as_object().expect("properties") {
            let full = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let types: Vec<&str> = match &schema["type"] {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let main = types.iter().find(|t| **t != "null").copied().unwrap_or("");
            if main == "object" && schema.get("properties").is_some() {
                walk(&full, &schema["properties"], out);
                continue;
            }
            let kind = if schema.get("enum").is_some() {
                "options"
            } else {
                main
            };
            let secret = schema["secret"] == json!(true) || schema["writeOnly"] == json!(true);
            out.push((
                full,
                kind.to_owned(),
                secret,
                schema.get("default").cloned(),
            ));
        }
    }
    let mut out = Vec::new();
    walk("", &about["settings"]["properties"], &mut out);
    out
}

/// The plugin block declares exactly what each binary implements: the same
/// capabilities as `--about`, every setting with the same kind, secrets
/// `sensitive`, the same defaults (Meltano's load-schema convention aside).
#[test]
fn plugin_block_declares_what_the_binaries_implement() {
    let _serial = serial();
    let block = plugin_block();
    let mut problems = Vec::new();
    for (section, binary) in [
        ("extractors", "tap-postgres-rs"),
        ("loaders", "target-postgres-rs"),
    ] {
        let plugin = block["plugins"][section]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == binary))
            .unwrap_or_else(|| panic!("meltano/meltano.yml has no {section} entry {binary}"));
        assert!(plugin.get("pip_url").is_none(), "{binary}: no pip_url");
        assert_eq!(plugin["executable"], json!(binary), "{binary}: executable");
        assert_eq!(
            plugin["namespace"],
            json!(binary.replace('-', "_")),
            "{binary}: namespace"
        );
        let about = about(binary);
        assert_eq!(about["name"], json!(binary));
        let caps = |v: &Value| -> BTreeSet<String> {
            v.as_array()
                .unwrap_or(&vec![])
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        };
        if caps(&plugin["capabilities"]) != caps(&about["capabilities"]) {
            problems.push(format!(
                "{binary}: capabilities in meltano.yml {:?} but --about says {:?}",
                caps(&plugin["capabilities"]),
                caps(&about["capabilities"])
            ));
        }
        // Meltano checks required settings through settings_group_validation.
        let required = caps(&about["settings"]["required"]);
        let groups: Vec<BTreeSet<String>> = plugin["settings_group_validation"]
            .as_array()
            .map(|g| g.iter().map(caps).collect())
            .unwrap_or_default();
        if !required.is_empty() && !groups.contains(&required) {
            problems.push(format!(
                "{binary}: settings_group_validation {groups:?} does not list the required {required:?}"
            ));
        }
        let declared: Vec<&Value> = plugin["settings"].as_array().unwrap().iter().collect();
        let implemented = about_settings(&about);
        for (name, kind, secret, default) in &implemented {
            let Some(d) = declared.iter().find(|d| d["name"] == json!(name)) else {
                problems.push(format!(
                    "{binary}: setting `{name}` ({kind}) is missing from meltano.yml"
                ));
                continue;
            };
            let yml_kind = d["kind"].as_str().unwrap_or("string");
            if yml_kind != kind {
                problems.push(format!(
                    "{binary}: `{name}` is kind {yml_kind} in meltano.yml, {kind} in --about"
                ));
            }
            if (d["sensitive"] == json!(true)) != *secret {
                problems.push(format!(
                    "{binary}: `{name}` sensitive in meltano.yml: {}, secret in --about: {secret}",
                    d["sensitive"]
                ));
            }
            if d["description"].as_str().unwrap_or("").is_empty() {
                problems.push(format!("{binary}: `{name}` has no description"));
            }
            let yml_default = d.get("value").cloned();
            // ssl_mode's default (prefer) applies only when neither ssl_enable
            // nor ssl is set: a `value:` here would always outrank them.
            let meltano_convention = (name == "default_target_schema"
                && yml_default == Some(json!("$MELTANO_EXTRACT__LOAD_SCHEMA")))
                || (name == "ssl_mode" && yml_default.is_none());
            if !meltano_convention && yml_default != *default {
                problems.push(format!(
                    "{binary}: `{name}` default {yml_default:?} in meltano.yml, {default:?} in --about"
                ));
            }
        }
        for d in &declared {
            let name = d["name"].as_str().unwrap();
            if !implemented.iter().any(|(n, ..)| n == name) {
                problems.push(format!(
                    "{binary}: meltano.yml declares `{name}`, which --about does not list"
                ));
            }
        }
        if binary == "target-postgres-rs" {
            let schema = declared
                .iter()
                .find(|d| d["name"] == "default_target_schema")
                .expect("default_target_schema declared");
            assert_eq!(schema["value"], json!("$MELTANO_EXTRACT__LOAD_SCHEMA"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

const SOURCE: &str = "
    CREATE TABLE items (
        id int PRIMARY KEY,
        name text NOT NULL,
        price numeric(12,2),
        updated_at timestamptz NOT NULL
    );
    INSERT INTO items
        SELECT i, 'item ' || i, i * 1.25, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute'
        FROM generate_series(1, 100) i;
    CREATE TABLE customers (id int PRIMARY KEY, email text);
    INSERT INTO customers SELECT i, 'c' || i || '@example.com' FROM generate_series(1, 10) i;
    CREATE TABLE not_selected (id int PRIMARY KEY, secret text);
    INSERT INTO not_selected VALUES (1, 'never copied');
";

fn count(client: &mut postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

fn table_exists(client: &mut postgres::Client, schema: &str, table: &str) -> bool {
    client
        .query_one(
            "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
            &[&schema, &table],
        )
        .unwrap()
        .get(0)
}

/// Lines Meltano relayed from the two plugins that carry the words Meltano's
/// checks treat as failures.
fn alarming_plugin_lines(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.contains("tap-postgres-rs") || l.contains("target-postgres-rs"))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("exception")
        })
        .map(str::to_owned)
        .collect()
}

fn bookmark(state: &Value) -> Value {
    state["singer_state"]["bookmarks"]["public-items"]["replication_key_value"].clone()
}

#[test]
fn meltano_runs_the_pair_and_resumes_incrementally_from_stored_state() {
    let _serial = serial();
    let src = cluster().create_database("meltano_src");
    let dst = cluster().create_database("meltano_dst");
    src.client().batch_execute(SOURCE).unwrap();
    let project = MeltanoProject::new(
        json!({
            "config": src.config(),
            "select": ["public-items.*", "public-customers.*"],
            "metadata": {
                "public-items": {"replication-method": "INCREMENTAL", "replication-key": "updated_at"},
                "public-customers": {"replication-method": "FULL_TABLE"},
            },
        }),
        json!({"config": dst.config()}),
    );

    // `meltano config test ...`: the tap emits a RECORD; the loader takes
    // Meltano's test messages without a line mentioning error/exception.
    let test = project
        .meltano(&["config", "test", "tap-postgres-rs"])
        .assert_success("config test tap-postgres-rs");
    assert!(
        format!("{}{}", test.stdout, test.stderr).contains("Plugin configuration is valid"),
        "config test output: {test:?}"
    );
    // Meltano logs "Test data was written" only when the loader exited 0 and
    // printed neither "error" nor "exception". (4.4.1 then sometimes crashes
    // itself with ProcessLookupError, terminating the already-reaped loader:
    // Meltano's race, not a verdict on the loader.)
    let test = project.meltano(&["config", "test", "target-postgres-rs"]);
    let all = format!("{}{}", test.stdout, test.stderr);
    assert!(
        all.contains("Test data was written to your target system")
            && (test.success || all.contains("ProcessLookupError")),
        "config test target-postgres-rs: {test:?}"
    );

    // No pip_url: `meltano install` skips both plugins and succeeds.
    let install = project.meltano(&["install"]).assert_success("install");
    assert!(
        install
            .stderr
            .contains("Skipped installing extractor 'tap-postgres-rs'")
            && install
                .stderr
                .contains("Skipped installing loader 'target-postgres-rs'"),
        "meltano install: {install:?}"
    );

    // `meltano invoke` passes flags through.
    let markdown = project
        .meltano(&[
            "invoke",
            "tap-postgres-rs",
            "--about",
            "--format",
            "markdown",
        ])
        .assert_success("invoke tap-postgres-rs --about --format markdown");
    assert!(
        markdown.stdout.starts_with("# `tap-postgres-rs`"),
        "markdown about: {markdown:?}"
    );
    let about = project
        .meltano(&["invoke", "tap-postgres-rs", "--about", "--format", "json"])
        .assert_success("invoke tap-postgres-rs --about");
    let about: Value = serde_json::from_str(&about.stdout)
        .unwrap_or_else(|e| panic!("--about via meltano invoke is not JSON ({e}): {about:?}"));
    assert_eq!(about["name"], json!("tap-postgres-rs"));
    let discovered = project
        .meltano(&["invoke", "tap-postgres-rs", "--discover"])
        .assert_success("invoke tap-postgres-rs --discover");
    let catalog: Value = serde_json::from_str(&discovered.stdout)
        .unwrap_or_else(|e| panic!("--discover via meltano invoke is not JSON ({e})"));
    let ids: BTreeSet<&str> = catalog["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["tap_stream_id"].as_str())
        .collect();
    for id in ["public-items", "public-customers", "public-not_selected"] {
        assert!(ids.contains(id), "{id} not discovered: {ids:?}");
    }

    // `meltano select --list` reads our catalog: the selected streams with
    // their columns, the others excluded.
    let list = project
        .meltano(&["select", "tap-postgres-rs", "--list", "--all"])
        .assert_success("select --list");
    for line in [
        "[automatic  ] public-items.id",
        "[selected   ] public-items.updated_at",
        "[selected   ] public-customers.email",
        "[excluded   ] public-not_selected.secret",
    ] {
        assert!(
            list.stdout.contains(line),
            "`meltano select --list` lacks {line:?}:\n{}",
            list.stdout
        );
    }
    // First run: every selected table lands in the extractor's load schema.
    let run = project
        .meltano(&["run", "tap-postgres-rs", "target-postgres-rs"])
        .assert_success("run");
    let alarming = alarming_plugin_lines(&run.stderr);
    assert!(
        alarming.is_empty(),
        "a successful run logged: {alarming:#?}"
    );
    // Progress as Meltano users expect it: the tap's Singer metrics, relayed.
    for stream in ["public-items", "public-customers"] {
        assert!(
            run.stderr.lines().any(|l| l.contains("tap-postgres-rs")
                && l.contains("INFO METRIC:")
                && l.contains("record_count")
                && l.contains(stream)),
            "no record_count METRIC for {stream} in the run's log:\n{}",
            run.stderr
        );
    }
    let mut s = src.client();
    let mut d = dst.client();
    for table in ["items", "customers"] {
        let cmp = compare_table(&mut s, &mut d, "public", table, LOAD_SCHEMA, table);
        assert!(cmp.is_identical(), "{table} after the first run: {cmp:#?}");
    }
    assert!(
        !table_exists(&mut d, LOAD_SCHEMA, "not_selected"),
        "a stream that was not selected was loaded"
    );
    let first = project.state(STATE_ID);
    let first_bookmark = bookmark(&first);
    assert!(
        first_bookmark
            .as_str()
            .is_some_and(|v| v.starts_with("2024-01-01T01:40:00")),
        "bookmark after the first run is the newest updated_at (01:40): {first}"
    );

    // Between runs: one row changes, one is added at the source; canaries are
    // removed at the destination. An incremental run must not bring back the
    // items canary (its updated_at is below the bookmark); a full-table run
    // brings back the customers one.
    s.batch_execute(
        "UPDATE items SET name = 'changed', updated_at = '2025-01-01 00:00:00+00' WHERE id = 50;
         INSERT INTO items VALUES (101, 'new', 9.99, '2025-01-02 00:00:00+00');
         INSERT INTO customers VALUES (11, 'c11@example.com');",
    )
    .unwrap();
    d.batch_execute(&format!(
        "DELETE FROM {LOAD_SCHEMA}.items WHERE id = 1; DELETE FROM {LOAD_SCHEMA}.customers WHERE id = 1;"
    ))
    .unwrap();

    let second_run = project
        .meltano(&["run", "tap-postgres-rs", "target-postgres-rs"])
        .assert_success("second run");
    // The changed row, the new row, and at most the row at the bookmark
    // (`>=`: ties are re-read, the target's upsert dedups them).
    let moved = records_counted(&second_run.stderr, "public-items");
    assert!(
        (2..=3).contains(&moved),
        "the second run moved {moved} items records:\n{}",
        second_run.stderr
    );
    let items = |d: &mut postgres::Client, id: i32| -> Option<String> {
        d.query_opt(
            &format!("SELECT name FROM {LOAD_SCHEMA}.items WHERE id = $1"),
            &[&id],
        )
        .unwrap()
        .map(|r| r.get(0))
    };
    assert_eq!(items(&mut d, 50).as_deref(), Some("changed"));
    assert_eq!(items(&mut d, 101).as_deref(), Some("new"));
    assert_eq!(
        items(&mut d, 1),
        None,
        "the second run re-sent an unchanged row: it did not use the stored state"
    );
    assert_eq!(
        count(&mut d, &format!("SELECT count(*) FROM {LOAD_SCHEMA}.items")),
        100
    );
    assert_eq!(
        count(
            &mut d,
            &format!("SELECT count(*) FROM {LOAD_SCHEMA}.customers WHERE id IN (1, 11)")
        ),
        2,
        "the FULL_TABLE stream is copied whole again"
    );
    let second = project.state(STATE_ID);
    assert!(
        bookmark(&second)
            .as_str()
            .is_some_and(|v| v.starts_with("2025-01-02T00:00:00")),
        "bookmark advanced to the newest change: {second}"
    );

    // `--full-refresh` ignores the stored state: the items canary comes back.
    project
        .meltano(&[
            "run",
            "--full-refresh",
            "tap-postgres-rs",
            "target-postgres-rs",
        ])
        .assert_success("run --full-refresh");
    assert_eq!(items(&mut d, 1).as_deref(), Some("item 1"));
    let cmp = compare_table(&mut s, &mut d, "public", "items", LOAD_SCHEMA, "items");
    assert!(cmp.is_identical(), "items after --full-refresh: {cmp:#?}");
}

/// `meltano run --timeout` sends SIGTERM to both binaries: they stop at once,
/// hold no connection afterwards, and every state Meltano stored is covered by
/// rows the target committed.
#[test]
fn meltano_timeout_stops_both_cleanly_with_only_committed_state() {
    let _serial = serial();
    let src = cluster().create_database("meltano_term_src");
    let dst = cluster().create_database("meltano_term_dst");
    src.client()
        .batch_execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, pad text NOT NULL);
             INSERT INTO big SELECT i, md5(i::text) FROM generate_series(1, 3000000) i;",
        )
        .unwrap();
    let project = MeltanoProject::new(
        json!({
            "config": src.config(),
            "select": ["public-big.*"],
            "metadata": {"public-big": {"replication-method": "INCREMENTAL", "replication-key": "id"}},
        }),
        json!({"config": {
            "host": dst.host, "port": dst.port, "user": pg_testkit::SUPERUSER, "password": "",
            "database": dst.name, "ssl_mode": "disable", "batch_size_rows": 20000,
        }}),
    );
    let started = Instant::now();
    let run = project.meltano(&[
        "run",
        "--timeout",
        "6",
        "tap-postgres-rs",
        "target-postgres-rs",
    ]);
    let took = started.elapsed();
    let mut d = dst.client();
    let landed = if table_exists(&mut d, LOAD_SCHEMA, "big") {
        count(&mut d, &format!("SELECT count(*) FROM {LOAD_SCHEMA}.big"))
    } else {
        0
    };
    assert!(
        landed < 3_000_000,
        "the run finished before the timeout ({took:?}); make the table bigger: {run:?}"
    );
    assert!(
        took < Duration::from_secs(30),
        "the binaries took {took:?} to stop after SIGTERM: {run:?}"
    );
    // Nobody is left connected (the server notices a closed socket at once).
    let idle = |db: &pg_testkit::TestDb, app: &str| {
        let mut c = db.client();
        pg_testkit::TestDb::wait_for(Duration::from_secs(10), || {
            c.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = $1",
                &[&app],
            )
            .unwrap()
            .get::<_, i64>(0)
                == 0
        })
    };
    assert!(
        idle(&src, "tap-postgres-rs"),
        "the tap still holds a connection after SIGTERM"
    );
    assert!(
        idle(&dst, "target-postgres-rs"),
        "the target still holds a connection after SIGTERM"
    );
    assert!(
        !run.stderr.contains("panicked"),
        "a binary panicked on SIGTERM: {}",
        run.stderr
    );
    // Meltano stored a state line the target printed; every row it names is
    // in the destination (the target printed it only after committing them).
    let state = project.state(STATE_ID);
    let v = bookmark_of(&state, "public-big")
        .unwrap_or_else(|| panic!("no bookmark for public-big in {state}"));
    let committed = count(
        &mut d,
        &format!("SELECT count(*) FROM {LOAD_SCHEMA}.big WHERE id <= {v}"),
    );
    assert!(v > 0 && landed >= v, "bookmark {v}, {landed} rows landed");
    assert_eq!(
        committed, v,
        "state says rows up to id {v} are loaded, the destination has {committed} of them"
    );
}

fn bookmark_of(state: &Value, stream: &str) -> Option<i64> {
    let v = &state["singer_state"]["bookmarks"][stream]["replication_key_value"];
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// When the target fails (here a CHECK constraint at the destination rejects
/// the first batch), Meltano reports the loader's error; the tap is not killed
/// by a broken pipe (the target reads its input to the end) and no state
/// past what was committed is stored.
#[test]
fn meltano_reports_the_loader_failure_and_stores_no_uncommitted_state() {
    let _serial = serial();
    let src = cluster().create_database("meltano_fail_src");
    let dst = cluster().create_database("meltano_fail_dst");
    src.client()
        .batch_execute(
            "CREATE TABLE wide (id int PRIMARY KEY, pad text NOT NULL);
             INSERT INTO wide SELECT i, repeat('x', 200) FROM generate_series(1, 50000) i;",
        )
        .unwrap();
    dst.client()
        .batch_execute(&format!(
            "CREATE SCHEMA {LOAD_SCHEMA};
             CREATE TABLE {LOAD_SCHEMA}.wide (id int PRIMARY KEY CHECK (id <= 500), pad text);"
        ))
        .unwrap();
    let mut target = dst.config();
    target["batch_size_rows"] = json!(1000);
    let project = MeltanoProject::new(
        json!({
            "config": src.config(),
            "select": ["public-wide.*"],
            "metadata": {"public-wide": {"replication-method": "INCREMENTAL", "replication-key": "id"}},
        }),
        json!({ "config": target }),
    );
    let run = project.meltano(&["run", "tap-postgres-rs", "target-postgres-rs"]);
    assert!(!run.success, "the run succeeded: {run:?}");
    assert!(
        run.stderr.contains("Loader failed") && !run.stderr.contains("Extractor failed"),
        "Meltano blames the loader, and only the loader:\n{}",
        run.stderr
    );
    let plugin_lines = |name: &str| -> Vec<&str> {
        run.stderr
            .lines()
            .filter(|l| l.contains(name))
            .collect::<Vec<_>>()
    };
    assert!(
        plugin_lines("target-postgres-rs")
            .iter()
            .any(|l| l.contains("wide") && l.to_ascii_lowercase().contains("check constraint")),
        "the loader's error names the table and the constraint:\n{}",
        run.stderr
    );
    let tap_lines = plugin_lines("tap-postgres-rs")
        .join("\n")
        .to_ascii_lowercase();
    assert!(
        !tap_lines.contains("pipe") && !tap_lines.contains("error"),
        "the tap was cut off instead of finishing its writes:\n{}",
        run.stderr
    );
    assert_eq!(
        records_counted(&run.stderr, "public-wide"),
        50_000,
        "the tap did not get to write every record:\n{}",
        run.stderr
    );
    let mut d = dst.client();
    assert_eq!(
        count(&mut d, &format!("SELECT count(*) FROM {LOAD_SCHEMA}.wide")),
        0,
        "a failed batch left rows behind"
    );
    let list = project
        .meltano(&["state", "list"])
        .assert_success("state list");
    if list.stdout.contains(STATE_ID) {
        let state = project.state(STATE_ID);
        assert!(
            bookmark_of(&state, "public-wide").is_none(),
            "Meltano stored a bookmark for rows that were never committed: {state}"
        );
    }
}

/// Secrets the way the README tells users to keep them: only in the
/// environment (`TAP_POSTGRES_RS_PASSWORD`, `TARGET_POSTGRES_RS_PASSWORD`),
/// for a role that pg_hba.conf makes authenticate by password. Meltano hands
/// them to the binaries; no line of the run shows them.
#[test]
fn meltano_passes_passwords_from_the_environment_and_no_log_shows_them() {
    let _serial = serial();
    const ROLE: &str = "meltano_pw";
    const PASSWORD: &str = "Pw-9f2c-never-logged";
    let c = cluster();
    c.client("postgres")
        .batch_execute(&format!(
            "CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD}'"
        ))
        .unwrap();
    c.prepend_hba(&format!("host all {ROLE} 127.0.0.1/32 scram-sha-256"));
    let src = c.create_database("meltano_pw_src");
    let dst = c.create_database("meltano_pw_dst");
    src.client().batch_execute(SOURCE).unwrap();
    let without_password = |db: &pg_testkit::TestDb| {
        let mut config = db.config();
        let o = config.as_object_mut().unwrap();
        o.remove("password");
        o.insert("user".into(), json!(ROLE));
        config
    };
    // Control: without the password the role cannot connect.
    let dir = tempfile::tempdir().unwrap();
    let bare = e2e_tests::write_json(dir.path(), "bare.json", &without_password(&src));
    let out = Command::new(bin("tap-postgres-rs"))
        .arg("--config")
        .arg(&bare)
        .arg("--discover")
        .env_remove("TAP_POSTGRES_RS_PASSWORD")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{ROLE} connected without a password: pg_hba.conf is not in force"
    );

    let mut project = MeltanoProject::new(
        json!({
            "config": without_password(&src),
            "select": ["public-customers.*"],
            "metadata": {"public-customers": {"replication-method": "FULL_TABLE"}},
        }),
        json!({ "config": without_password(&dst) }),
    );
    project.env("TAP_POSTGRES_RS_PASSWORD", PASSWORD);
    project.env("TARGET_POSTGRES_RS_PASSWORD", PASSWORD);
    let run = project
        .meltano(&["run", "tap-postgres-rs", "target-postgres-rs"])
        .assert_success("run with passwords from the environment");
    let cmp = compare_table(
        &mut src.client(),
        &mut dst.client(),
        "public",
        "customers",
        LOAD_SCHEMA,
        "customers",
    );
    assert!(cmp.is_identical(), "customers: {cmp:#?}");
    assert!(
        !run.stderr.contains(PASSWORD) && !run.stdout.contains(PASSWORD),
        "the password appears in the run's output"
    );
}

/// The sum of the tap's Singer `record_count` counters for a stream (each
/// METRIC line counts the records since the previous one).
fn records_counted(log: &str, stream: &str) -> i64 {
    log.lines()
        .filter(|l| l.contains("tap-postgres-rs"))
        .filter_map(|l| l.split_once("INFO METRIC: ").map(|(_, m)| m))
        .filter_map(|m| serde_json::from_str::<Value>(m.trim()).ok())
        .filter(|m| m["metric"] == "record_count" && m["tags"]["stream"] == stream)
        .map(|m| m["value"].as_i64().unwrap_or(0))
        .sum()
}

/// LOG_BASED through Meltano: the initial copy, then inserts, updates and
/// deletes read from the WAL from the LSN Meltano stored; a run with no
/// changes moves nothing.
#[test]
fn meltano_log_based_replicates_inserts_updates_and_deletes() {
    let _serial = serial();
    let src = cluster().create_database("meltano_cdc_src");
    let dst = cluster().create_database("meltano_cdc_dst");
    src.client()
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance numeric(12,2), note text);
             INSERT INTO accounts SELECT i, i * 10.5, 'n' || i FROM generate_series(1, 20) i;",
        )
        .unwrap();
    let project = MeltanoProject::new(
        json!({
            "config": src.config(),
            "select": ["public-accounts.*"],
            "metadata": {"public-accounts": {"replication-method": "LOG_BASED"}},
        }),
        json!({ "config": dst.config() }),
    );
    let run = || {
        project
            .meltano(&["run", "tap-postgres-rs", "target-postgres-rs"])
            .assert_success("run")
    };
    let lsn = |state: &Value| -> u64 {
        let v = &state["singer_state"]["bookmarks"]["public-accounts"]["lsn"];
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("no numeric lsn bookmark in {state}"))
    };
    run();
    let mut s = src.client();
    let mut d = dst.client();
    let cmp = compare_table(
        &mut s,
        &mut d,
        "public",
        "accounts",
        LOAD_SCHEMA,
        "accounts",
    );
    assert!(cmp.is_identical(), "after the initial copy: {cmp:#?}");
    let first = lsn(&project.state(STATE_ID));

    s.batch_execute(
        "INSERT INTO accounts VALUES (21, 1.25, 'new');
         UPDATE accounts SET balance = 999.99 WHERE id = 5;
         DELETE FROM accounts WHERE id = 7;",
    )
    .unwrap();
    let second_run = run();
    let moved = records_counted(&second_run.stderr, "public-accounts");
    assert_eq!(
        moved, 3,
        "one insert, one update, one delete:\n{}",
        second_run.stderr
    );
    let row = |d: &mut postgres::Client, id: i32| {
        d.query_opt(
            &format!(
                "SELECT balance::text, _sdc_deleted_at IS NOT NULL FROM {LOAD_SCHEMA}.accounts WHERE id = $1"
            ),
            &[&id],
        )
        .unwrap()
        .map(|r| (r.get::<_, Option<String>>(0), r.get::<_, bool>(1)))
    };
    assert_eq!(row(&mut d, 21), Some((Some("1.25".into()), false)));
    assert_eq!(row(&mut d, 5), Some((Some("999.99".into()), false)));
    assert_eq!(
        row(&mut d, 7).map(|r| r.1),
        Some(true),
        "a deleted row is kept, marked _sdc_deleted_at (soft delete)"
    );
    let second = lsn(&project.state(STATE_ID));
    assert!(
        second > first,
        "the lsn bookmark advanced: {first} -> {second}"
    );

    let third_run = run();
    assert_eq!(
        records_counted(&third_run.stderr, "public-accounts"),
        0,
        "a run without changes re-sent rows:\n{}",
        third_run.stderr
    );
}

/// `--log-format json` lines are what Meltano's structured-log parser (the
/// `singer-sdk` one, Meltano's default) understands: each line parses with its
/// level and message, so Meltano shows the binaries' levels instead of
/// relaying every line as `info` text.
#[test]
fn json_logs_parse_as_meltano_structured_logs() {
    let _serial = serial();
    let src = cluster().create_database("meltano_logjson_src");
    src.client().batch_execute(SOURCE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = e2e_tests::write_json(dir.path(), "tap.json", &src.config());
    let mut catalog = e2e_tests::discover(&config);
    e2e_tests::select(&mut catalog, &["public-customers"], "FULL_TABLE", None);
    let catalog = e2e_tests::write_json(dir.path(), "catalog.json", &catalog);
    let tap = Command::new(bin("tap-postgres-rs"))
        .args(["--log-format", "json", "--config"])
        .arg(&config)
        .arg("--catalog")
        .arg(&catalog)
        .output()
        .unwrap();
    assert!(tap.status.success());
    let stderr = String::from_utf8_lossy(&tap.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("INFO METRIC: "))
        .collect();
    assert!(!lines.is_empty(), "the tap logged nothing");
    let parsed = meltano_parse_logs(&lines);
    assert_eq!(
        parsed.len(),
        lines.len(),
        "one parse result per line: {parsed:?}"
    );
    for (line, p) in lines.iter().zip(&parsed) {
        let Some((level, message)) = p else {
            panic!("Meltano cannot parse this log line as a structured log: {line}");
        };
        assert_eq!(level, "INFO", "{line}");
        assert!(!message.is_empty(), "{line}");
    }
}
