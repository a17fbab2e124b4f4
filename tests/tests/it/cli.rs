//! Snapshots of what both binaries show a person: `--help`, `--about` (JSON
//! and markdown), and the one-line errors of common mistakes. Volatile parts
//! (temporary paths, ports, the version) are replaced by placeholders.
//!
//! After a deliberate change: `INSTA_UPDATE=always cargo test -p e2e-tests
//! --test it cli::`, then review the diff of `tests/tests/it/snapshots/`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use e2e_tests::{bin, write_json};
use serde_json::json;

const BINARIES: [&str; 2] = ["tap-postgres-rs", "target-postgres-rs"];

/// A binary's run with a clean environment for what it reads.
fn command(binary: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin(binary));
    cmd.args(args).env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("TAP_POSTGRES_RS_") || key.starts_with("TARGET_POSTGRES_RS_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Exit code and stdout of a successful run.
fn stdout_of(binary: &str, args: &[&str]) -> String {
    let out = command(binary, args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{binary} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Exit code and the last stderr line of a failed run.
fn failure(mut cmd: Command, stdin: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    format!(
        "exit code: {:?}\n{}",
        out.status.code(),
        stderr.lines().last().unwrap_or("")
    )
}

/// Placeholders for what changes between runs and releases.
fn settings(dir: Option<&Path>) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_prepend_module_to_snapshot(false);
    s.add_filter(&regex_escape(env!("CARGO_PKG_VERSION")), "[VERSION]");
    if let Some(dir) = dir {
        s.add_filter(&regex_escape(&dir.display().to_string()), "[DIR]");
    }
    s.add_filter(r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]");
    s.add_filter(r"on port \d+\?", "on port [PORT]?");
    s
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

#[test]
fn help() {
    for binary in BINARIES {
        let help = stdout_of(binary, &["--help"]);
        settings(None).bind(|| insta::assert_snapshot!(format!("{binary}-help"), help));
    }
}

#[test]
fn about_json() {
    for binary in BINARIES {
        let about = stdout_of(binary, &["--about"]);
        assert_eq!(about, stdout_of(binary, &["--about", "--format", "json"]));
        settings(None).bind(|| insta::assert_snapshot!(format!("{binary}-about-json"), about));
    }
}

#[test]
fn about_markdown() {
    for binary in BINARIES {
        let about = stdout_of(binary, &["--about", "--format", "markdown"]);
        settings(None).bind(|| insta::assert_snapshot!(format!("{binary}-about-markdown"), about));
    }
}

#[test]
fn config_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let invalid = dir.path().join("invalid.json");
    std::fs::write(&invalid, "{\"user\": \"u\",").unwrap();
    for binary in BINARIES {
        for (name, path) in [("missing-config", &missing), ("invalid-config", &invalid)] {
            let mut cmd = command(binary, &["--config"]);
            cmd.arg(path);
            if binary == "tap-postgres-rs" {
                cmd.arg("--discover");
            }
            let line = failure(cmd, "");
            settings(Some(dir.path()))
                .bind(|| insta::assert_snapshot!(format!("{binary}-{name}"), line));
        }
    }
}

#[test]
fn tap_unknown_catalog_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_json(
        dir.path(),
        "tap.json",
        &json!({"user": "u", "database": "d"}),
    );
    let mut cmd = command("tap-postgres-rs", &["--config"]);
    cmd.arg(&config)
        .arg("--catalog")
        .arg(dir.path().join("no-such-catalog.json"));
    let line = failure(cmd, "");
    settings(Some(dir.path()))
        .bind(|| insta::assert_snapshot!("tap-postgres-rs-unknown-catalog", line));
}

#[test]
fn connection_refused() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_json(
        dir.path(),
        "c.json",
        &json!({"host": "127.0.0.1", "port": port, "user": "u", "database": "d", "ssl_mode": "disable"}),
    );
    for binary in BINARIES {
        let mut cmd = command(binary, &["--config"]);
        cmd.arg(&config);
        if binary == "tap-postgres-rs" {
            cmd.arg("--discover");
        }
        let line = failure(cmd, "");
        settings(Some(dir.path()))
            .bind(|| insta::assert_snapshot!(format!("{binary}-connection-refused"), line));
    }
}

#[test]
fn target_fed_a_malformed_line() {
    let db = pg_testkit::cluster().create_database("cli_malformed");
    let dir = tempfile::tempdir().unwrap();
    let config = write_json(dir.path(), "target.json", &db.config());
    let mut cmd = command("target-postgres-rs", &["--config"]);
    cmd.arg(&config);
    let input = concat!(
        r#"{"type":"SCHEMA","stream":"s","schema":{"properties":{"id":{"type":"integer"}}},"key_properties":["id"]}"#,
        "\n",
        r#"{"type":"RECORD","stream":"s","record":{"id":1}"#,
        "\n",
    );
    let line = failure(cmd, input);
    settings(Some(dir.path()))
        .bind(|| insta::assert_snapshot!("target-postgres-rs-malformed-line", line));
}

/// The fatal line follows `--log-format`: `<bin>: error: …` as text, a JSON
/// log object (level error, message the one-line error) as json.
#[test]
fn fatal_line_in_each_log_format() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    for binary in BINARIES {
        let mut text = command(binary, &["--log-format", "text", "--config"]);
        text.arg(&missing);
        let mut json = command(binary, &["--log-format", "json", "--config"]);
        json.arg(&missing);
        let error = format!(
            "config file {}: No such file or directory (os error 2)",
            missing.display()
        );
        assert_eq!(
            failure(text, ""),
            format!("exit code: Some(1)\n{binary}: error: {error}")
        );
        let out = failure(json, "");
        let (code, line) = out.split_once('\n').unwrap();
        assert_eq!(code, "exit code: Some(1)");
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["level"], "error", "{line}");
        assert_eq!(line["message"], json!(error), "{line}");
        assert_eq!(line["app_name"], binary, "{line}");
    }
}
