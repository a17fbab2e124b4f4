//! The README's examples run as written: the blocks marked
//! `<!-- tested: readme::NAME -->` are extracted and executed; only the
//! connection (host, port, user, password, database) is pointed at the
//! private cluster, through the environment variables the binaries and
//! Meltano read anyway (`TAP_POSTGRES_RS_HOST`, ...).

use std::path::Path;
use std::process::Command;

use e2e_tests::orchestrator::{path_with_binaries, venv, MELTANO};
use e2e_tests::{bin, select, write_json};
use pg_testkit::cluster;
use serde_json::Value;

const README: &str = include_str!("../../../README.md");

/// The code blocks after each `<!-- tested: readme::NAME` marker, in order.
fn blocks(name: &str) -> Vec<String> {
    let marker = format!("<!-- tested: readme::{name}");
    let mut out = Vec::new();
    let mut rest = README;
    while let Some(at) = rest.find(&marker) {
        rest = &rest[at..];
        let open = rest.find("```").expect("a code block after the marker");
        let body = &rest[open..];
        let start = body.find('\n').unwrap() + 1;
        let end = body[start..].find("```").unwrap() + start;
        out.push(body[start..end].to_owned());
        rest = &body[end + 3..];
    }
    assert!(!out.is_empty(), "README has no block marked readme::{name}");
    out
}

/// The commands of a shell block: every line that is not blank or a comment.
fn commands(block: &str) -> Vec<&str> {
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// `KEY=value` variables for a binary's connection settings from a test db.
fn connection_env(prefix: &str, config: &Value) -> Vec<(String, String)> {
    config
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            (format!("{prefix}_{}", k.to_ascii_uppercase()), v)
        })
        .collect()
}

struct Ran {
    ok: bool,
    output: String,
}

fn sh(dir: &Path, line: &str, env: &[(String, String)], path: &std::ffi::OsString) -> Ran {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", line])
        .current_dir(dir)
        .env("PATH", path)
        .env("MELTANO_SEND_ANONYMOUS_USAGE_STATS", "false")
        .env("MELTANO_CLI_DISABLE_VERSION_CHECK", "true")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    Ran {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The pipe at the top of the README, then the resumed run from the last
/// state line.
#[test]
fn shell_pipe() {
    let src = cluster().create_database("readme_pipe_src");
    let dst = cluster().create_database("readme_pipe_dst");
    src.client()
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, updated_at int NOT NULL);
             INSERT INTO items SELECT i, i FROM generate_series(1, 50) i;",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tap = write_json(dir.path(), "tap.json", &src.config());
    write_json(dir.path(), "target.json", &dst.config());
    let mut catalog = e2e_tests::discover(&tap);
    select(
        &mut catalog,
        &["public-items"],
        "INCREMENTAL",
        Some("updated_at"),
    );
    write_json(dir.path(), "catalog.json", &catalog);
    bin("target-postgres-rs");
    let path = path_with_binaries(&[]);
    for line in commands(&blocks("shell_pipe")[0]) {
        let ran = sh(dir.path(), line, &[], &path);
        assert!(ran.ok, "README line failed: {line}\n{}", ran.output);
    }
    let states = std::fs::read_to_string(dir.path().join("state.jsonl")).unwrap();
    let last: Value = serde_json::from_str(states.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["bookmarks"]["public-items"]["replication_key_value"],
        serde_json::json!(50),
        "{states}"
    );
    let n: i64 = dst
        .client()
        .query_one("SELECT count(*) FROM public.items", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 50);
    // The whole file works as --state too (the last line is taken).
    let ran = sh(
        dir.path(),
        "tap-postgres-rs --config tap.json --catalog catalog.json --state state.jsonl > /dev/null",
        &[],
        &path,
    );
    assert!(ran.ok, "{}", ran.output);
    assert!(
        ran.output
            .contains("state state.jsonl holds 2 JSON lines: using the last one"),
        "{}",
        ran.output
    );
}

/// The Meltano quick start: the README's meltano.yml in a fresh project, the
/// shipped plugin block copied beside it, then every command of the shell
/// block, each asserted by the text its comment promises.
#[test]
fn meltano_quick_start() {
    let src = cluster().create_database("readme_meltano_src");
    let dst = cluster().create_database("readme_meltano_dst");
    src.client()
        .batch_execute(
            "CREATE TABLE customers (id int PRIMARY KEY, email text);
             INSERT INTO customers SELECT i, 'c' || i FROM generate_series(1, 10) i;
             CREATE TABLE orders (id int PRIMARY KEY, customer_id int, updated_at timestamptz NOT NULL);
             INSERT INTO orders SELECT i, 1 + i % 10, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute'
               FROM generate_series(1, 30) i;",
        )
        .unwrap();
    let blocks = blocks("meltano_quick_start");
    let (yaml, shell) = (&blocks[0], &blocks[1]);
    assert!(yaml.starts_with("# ~/my-project/meltano.yml"), "{yaml}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meltano.yml"), yaml).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../meltano/meltano.yml"),
        dir.path().join("plugins.meltano.yml"),
    )
    .unwrap();
    let meltano_bin = venv("meltano", &[MELTANO]).join("bin");
    let path = path_with_binaries(&[&meltano_bin]);
    let mut env = connection_env("TAP_POSTGRES_RS", &src.config());
    env.extend(connection_env("TARGET_POSTGRES_RS", &dst.config()));
    // `export` lines carry over to the later lines, as in one shell.
    let mut exports = String::new();
    for line in commands(shell) {
        if line.starts_with("export ") {
            exports.push_str(line);
            exports.push_str("; ");
            continue;
        }
        let (command, promise) = match line.split_once("  #") {
            Some((c, comment)) => (c.trim(), comment.split('"').nth(1)),
            None => (line, None),
        };
        let ran = sh(dir.path(), &format!("{exports}{command}"), &env, &path);
        assert!(ran.ok, "README line failed: {line}\n{}", ran.output);
        if let Some(text) = promise {
            assert!(
                ran.output.contains(text),
                "README line {line}: output lacks {text:?}\n{}",
                ran.output
            );
        }
        if command.starts_with("meltano state get") {
            assert!(
                ran.output.contains("2024-01-01T00:30:00"),
                "the orders bookmark is the newest updated_at: {}",
                ran.output
            );
        }
    }
    let mut d = dst.client();
    for (table, rows) in [("orders", 30), ("customers", 10)] {
        let n: i64 = d
            .query_one(
                &format!("SELECT count(*) FROM tap_postgres_rs.{table}"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, rows, "{table}");
    }
}
