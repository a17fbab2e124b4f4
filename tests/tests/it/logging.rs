//! `--log-format json`: every stderr line of both binaries is one JSON object
//! (Singer `INFO METRIC:` lines aside), with level and message.

use std::process::{Command, Stdio};

use e2e_tests::{bin, discover, select, write_json};
use serde_json::Value;

fn assert_json_lines(who: &str, stderr: &str) -> usize {
    let mut n = 0;
    for line in stderr.lines().filter(|l| !l.starts_with("INFO METRIC: ")) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{who}: not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["message"].is_string(),
            "{who}: {line}"
        );
        n += 1;
    }
    n
}

#[test]
fn both_binaries_log_json_lines() {
    let src = pg_testkit::cluster().create_database("logjson_src");
    let dst = pg_testkit::cluster().create_database("logjson_dst");
    src.client()
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tap_config = write_json(dir.path(), "tap.json", &src.config());
    let target_config = write_json(dir.path(), "target.json", &dst.config());
    let mut catalog = discover(&tap_config);
    select(&mut catalog, &["public-t"], "FULL_TABLE", None);
    let catalog = write_json(dir.path(), "catalog.json", &catalog);

    let tap = Command::new(bin("tap-postgres-rs"))
        .args(["--log-format", "json", "--config"])
        .arg(&tap_config)
        .arg("--catalog")
        .arg(&catalog)
        .output()
        .unwrap();
    assert!(tap.status.success());
    let input = dir.path().join("messages.jsonl");
    std::fs::write(&input, &tap.stdout).unwrap();
    let target = Command::new(bin("target-postgres-rs"))
        .args(["--log-format", "json", "--config"])
        .arg(&target_config)
        .arg("--input")
        .arg(&input)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        target.status.success(),
        "{}",
        String::from_utf8_lossy(&target.stderr)
    );
    assert!(assert_json_lines("tap-postgres-rs", &String::from_utf8_lossy(&tap.stderr)) >= 2);
    assert!(
        assert_json_lines(
            "target-postgres-rs",
            &String::from_utf8_lossy(&target.stderr)
        ) >= 1
    );

    let bad = Command::new(bin("tap-postgres-rs"))
        .args(["--log-format", "yaml", "--about"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr)
        .contains("unknown log format \"yaml\" (use text or json)"));
}
