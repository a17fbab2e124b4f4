//! Shared pieces of the end-to-end tests, the demo and the benchmark: finding
//! the two binaries, running `tap | target`, selecting streams in a catalog,
//! and comparing a source table with its copy value for value and type for type.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use pg_connect::quote_qualified;
use serde_json::Value;

// Writing JSON files, feeding stdin, selecting streams and reading rows as
// text live in pg-testkit, for every crate's tests.
pub use pg_testkit::catalog::select;
pub use pg_testkit::process::{feed, write_json};
pub use pg_testkit::rows::table_rows;

// --- Orchestrator and peer-connector helpers (Meltano, singer-tools, target-jsonl,
// pipelinewise-tap-postgres from PyPI): see orchestrator.rs.
pub mod orchestrator;

// --- A private MariaDB server for the MySQL-tap interop tests.
pub mod mariadb;

/// The directory holding the workspace's built binaries (the profile directory
/// of the running test, demo or benchmark executable).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    // Test executables live in <profile>/deps.
    if dir.ends_with("deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary (`tap-postgres-rs`, `target-postgres-rs`),
/// built on first use with the same profile and target directory as the caller.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = profile_dir();
    BUILT.get_or_init(|| {
        let release = dir.file_name().is_some_and(|n| n == "release");
        let target_dir = dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "tap-postgres-rs",
            "-p",
            "target-postgres-rs",
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    let path = dir.join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Runs `tap-postgres-rs --config C --discover` and returns the catalog.
pub fn discover(tap_config: &Path) -> Value {
    let out = Command::new(bin("tap-postgres-rs"))
        .arg("--config")
        .arg(tap_config)
        .arg("--discover")
        .output()
        .expect("run tap --discover");
    assert!(
        out.status.success(),
        "discovery failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("discovery prints JSON")
}

/// `tap-postgres-rs --config C --catalog K [--state S]`, ready to run.
pub fn tap_sync(tap_config: &Path, catalog: &Path, state: Option<&Path>) -> Command {
    let mut cmd = Command::new(bin("tap-postgres-rs"));
    cmd.arg("--config")
        .arg(tap_config)
        .arg("--catalog")
        .arg(catalog);
    if let Some(s) = state {
        cmd.arg("--state").arg(s);
    }
    cmd
}

/// What one `tap | target` run did.
#[derive(Debug)]
pub struct PipeRun {
    pub tap_status: ExitStatus,
    pub target_status: ExitStatus,
    pub tap_stderr: String,
    pub target_stderr: String,
    /// The target's stdout lines: the state values it committed.
    pub states: Vec<Value>,
}

impl PipeRun {
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.tap_status.success() && self.target_status.success(),
            "pipe failed: tap {} target {}\n--- tap stderr\n{}\n--- target stderr\n{}",
            self.tap_status,
            self.target_status,
            self.tap_stderr,
            self.target_stderr
        );
        self
    }

    /// The last state the target committed, as a file for the next `--state`.
    pub fn last_state(&self) -> Option<&Value> {
        self.states.last()
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Runs `tap --config T --catalog C [--state S] | target --config G`.
pub fn pipe(
    tap_config: &Path,
    catalog: &Path,
    state: Option<&Path>,
    target_config: &Path,
) -> PipeRun {
    pipe_from(tap_sync(tap_config, catalog, state), target_config)
}

/// Runs `<tap> | target-postgres-rs --config G`, for any tap command (ours
/// or a peer's).
pub fn pipe_from(mut tap: Command, target_config: &Path) -> PipeRun {
    let mut tap: Child = tap
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tap");
    let tap_out = tap.stdout.take().unwrap();
    let mut target = Command::new(bin("target-postgres-rs"))
        .arg("--config")
        .arg(target_config)
        .stdin(Stdio::from(tap_out))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn target");
    let tap_err = drain(tap.stderr.take().unwrap());
    let target_err = drain(target.stderr.take().unwrap());
    let states: Vec<Value> = BufReader::new(target.stdout.take().unwrap())
        .lines()
        .map(|l| {
            let l = l.expect("read target stdout");
            serde_json::from_str(&l)
                .unwrap_or_else(|e| panic!("target stdout line is not JSON ({e}): {l}"))
        })
        .collect();
    let tap_status = tap.wait().unwrap();
    let target_status = target.wait().unwrap();
    PipeRun {
        tap_status,
        target_status,
        tap_stderr: tap_err.join().unwrap(),
        target_stderr: target_err.join().unwrap(),
        states,
    }
}

/// A table's columns as `(name, format_type)`, in column order.
pub fn columns(client: &mut postgres::Client, schema: &str, table: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&schema, &table],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The values of `columns` (one text COPY line per row), sorted.
fn column_values(
    client: &mut postgres::Client,
    schema: &str,
    table: &str,
    column: &str,
) -> Vec<String> {
    table_rows(client, schema, table, &[column], None)
}

/// How a destination table compares with its source.
#[derive(Debug, Default)]
pub struct TableComparison {
    pub columns: usize,
    pub type_identical: Vec<String>,
    pub value_identical: Vec<String>,
    /// `column: source type -> destination type`
    pub type_differences: Vec<String>,
    /// `column: first differing value, source vs destination`
    pub value_differences: Vec<String>,
    pub source_rows: usize,
    pub destination_rows: usize,
    /// Whole rows (all source columns together) equal as multisets.
    pub rows_identical: bool,
}

impl TableComparison {
    pub fn is_identical(&self) -> bool {
        self.type_differences.is_empty()
            && self.value_differences.is_empty()
            && self.rows_identical
            && self.source_rows == self.destination_rows
    }
}

/// Compares every source column with the same-named destination column:
/// `format_type` and the multiset of text values. Extra destination columns
/// (`_sdc_*`) are ignored.
pub fn compare_table(
    src: &mut postgres::Client,
    dst: &mut postgres::Client,
    schema: &str,
    table: &str,
    dst_schema: &str,
    dst_table: &str,
) -> TableComparison {
    let src_cols = columns(src, schema, table);
    let dst_cols = columns(dst, dst_schema, dst_table);
    let mut cmp = TableComparison {
        columns: src_cols.len(),
        ..Default::default()
    };
    let count = |c: &mut postgres::Client, s: &str, t: &str| -> usize {
        let n: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM {}", quote_qualified(s, t)),
                &[],
            )
            .unwrap()
            .get(0);
        n as usize
    };
    cmp.source_rows = count(src, schema, table);
    cmp.destination_rows = if dst_cols.is_empty() {
        0
    } else {
        count(dst, dst_schema, dst_table)
    };
    let names: Vec<&str> = src_cols.iter().map(|(n, _)| n.as_str()).collect();
    cmp.rows_identical = dst_cols.len() >= src_cols.len()
        && names.iter().all(|n| dst_cols.iter().any(|(d, _)| d == n))
        && table_rows(src, schema, table, &names, None)
            == table_rows(dst, dst_schema, dst_table, &names, None);
    for (name, src_type) in &src_cols {
        let Some((_, dst_type)) = dst_cols.iter().find(|(n, _)| n == name) else {
            cmp.type_differences
                .push(format!("{name}: {src_type} -> (missing)"));
            cmp.value_differences.push(format!("{name}: missing"));
            continue;
        };
        if src_type == dst_type {
            cmp.type_identical.push(name.clone());
        } else {
            cmp.type_differences
                .push(format!("{name}: {src_type} -> {dst_type}"));
        }
        let a = column_values(src, schema, table, name);
        let b = column_values(dst, dst_schema, dst_table, name);
        if a == b {
            cmp.value_identical.push(name.clone());
        } else {
            let first = a
                .iter()
                .zip(b.iter())
                .find(|(x, y)| x != y)
                .map(|(x, y)| format!("{x:?} vs {y:?}"))
                .unwrap_or_else(|| format!("{} vs {} values", a.len(), b.len()));
            cmp.value_differences.push(format!("{name}: {first}"));
        }
    }
    cmp
}

/// `psql` from the test cluster's binaries, as the superuser on `port`,
/// stopping at the first error, ready for more arguments.
pub fn psql_command(port: u16, database: &str) -> Command {
    let mut cmd = Command::new(pg_testkit::cluster().bindir().join("psql"));
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-U",
        pg_testkit::SUPERUSER,
    ])
    .arg("-p")
    .arg(port.to_string())
    .arg("-d")
    .arg(database);
    cmd
}

/// Runs `sql` through `psql` from the test cluster's binaries (for `\` commands
/// and files with psql variables, such as the benchmark dataset).
pub fn psql(port: u16, database: &str, args: &[&str]) {
    let out = psql_command(port, database)
        .args(args)
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `tap | target` (the tap with `tap_sync`), SIGKILLs both after `delay`; returns the last STATE
/// the target printed, and whether the run had ended on its own.
pub fn killed_pipe(
    tap: &Path,
    catalog: &Path,
    state: Option<&Path>,
    target: &Path,
    delay: std::time::Duration,
) -> (Option<Value>, bool) {
    let mut tap_proc = tap_sync(tap, catalog, state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut target_proc = Command::new(bin("target-postgres-rs"))
        .arg("--config")
        .arg(target)
        .stdin(Stdio::from(tap_proc.stdout.take().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = target_proc.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .last()
            .map(|l| serde_json::from_str::<Value>(&l).expect("the target prints JSON state lines"))
    });
    std::thread::sleep(delay);
    let finished = target_proc.try_wait().unwrap().is_some();
    let _ = target_proc.kill(); // SIGKILL
    let _ = tap_proc.kill();
    let status = target_proc.wait().unwrap();
    let _ = tap_proc.wait();
    (reader.join().unwrap(), finished && status.success())
}
