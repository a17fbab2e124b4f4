//! Running the target binary against a pg-testkit database.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pg_testkit::TestDb;
use serde_json::Value;

pub struct Run {
    pub code: i32,
    /// The whole input was written (the target read stdin to the end).
    pub stdin_ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn states(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line {l:?}: {e}")))
            .collect()
    }
    pub fn last_error(&self) -> &str {
        self.stderr.lines().last().unwrap_or("")
    }
}

/// testdata/vectors in the repo (copied byte for byte from the shared vectors).
pub fn vectors() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/vectors");
    assert!(
        dir.is_dir(),
        "test vectors not found at {}: the repo keeps them in testdata/vectors",
        dir.display()
    );
    dir
}

pub fn config(db: &TestDb, extra: Value) -> tempfile::NamedTempFile {
    let mut cfg = db.config();
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(cfg.to_string().as_bytes()).unwrap();
    f
}

/// Runs the target with `input` on stdin.
pub fn run(db: &TestDb, extra: Value, input: &[u8]) -> Run {
    let cfg = config(db, extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_target-postgres-rs"))
        .arg("--config")
        .arg(cfg.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data).is_ok());
    let out = child.wait_with_output().unwrap();
    let stdin_ok = feeder.join().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdin_ok,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn run_file(db: &TestDb, extra: Value, file: &Path) -> Run {
    run(db, extra, &std::fs::read(file).unwrap())
}

/// `count(*)` of a table, `None` when it doesn't exist.
pub fn count(db: &TestDb, schema: &str, table: &str) -> Option<i64> {
    let mut c = db.client();
    let exists: bool = c
        .query_one(
            "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
            &[&schema, &table],
        )
        .unwrap()
        .get(0);
    if !exists {
        return None;
    }
    Some(
        c.query_one(
            &format!(
                "SELECT count(*) FROM {}",
                pg_connect::quote_qualified(schema, table)
            ),
            &[],
        )
        .unwrap()
        .get(0),
    )
}

/// One text value (`None` for NULL or no row).
pub fn text(db: &TestDb, sql: &str) -> Option<String> {
    db.client()
        .query_opt(sql, &[])
        .unwrap()
        .and_then(|r| r.get(0))
}

/// Tables in a schema with their row counts, sorted.
pub fn tables(db: &TestDb, schema: &str) -> Vec<(String, i64)> {
    let names: Vec<String> = db
        .client()
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
            &[&schema],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    names
        .into_iter()
        .map(|n| {
            let c = count(db, schema, &n).unwrap();
            (n, c)
        })
        .collect()
}
