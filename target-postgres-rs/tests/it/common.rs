//! Running the target binary against a pg-testkit database.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use pg_testkit::process::{self, Run};
use pg_testkit::TestDb;
use serde_json::Value;

pub const TARGET: &str = env!("CARGO_BIN_EXE_target-postgres-rs");

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

/// A config file for `db` with `extra` settings on top.
pub fn config(db: &TestDb, extra: Value) -> tempfile::NamedTempFile {
    let mut cfg = db.config();
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(cfg.to_string().as_bytes()).unwrap();
    f
}

/// `target-postgres-rs --config <config>`, ready for more arguments.
pub fn target(config: &Path) -> Command {
    let mut cmd = Command::new(TARGET);
    cmd.arg("--config").arg(config);
    cmd
}

/// Runs the target with `input` on stdin.
pub fn run(db: &TestDb, extra: Value, input: &[u8]) -> Run {
    let cfg = config(db, extra);
    process::run(&mut target(cfg.path()), input)
}

pub fn run_file(db: &TestDb, extra: Value, file: &Path) -> Run {
    run(db, extra, &std::fs::read(file).unwrap())
}

/// The target running with piped stdin, its stdout lines arriving on a
/// channel as it prints them (stderr dropped): for tests that watch what it
/// prints while feeding it.
pub struct Live {
    pub child: std::process::Child,
    pub stdin: std::process::ChildStdin,
    pub printed: std::sync::mpsc::Receiver<String>,
}

pub fn live_target(config: &Path) -> Live {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = target(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(l.unwrap());
        }
    });
    Live {
        child,
        stdin,
        printed,
    }
}
