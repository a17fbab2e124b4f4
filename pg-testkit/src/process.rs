//! Running a connector binary the way the tests do: its JSON arguments
//! written to files, its stdin fed in the background, and its exit code,
//! stdout and stderr captured.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

use serde_json::Value;

/// Writes `value` as JSON to `dir/name` and returns the path.
pub fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// What one run of a binary did.
#[derive(Debug)]
pub struct Run {
    /// Exited 0.
    pub ok: bool,
    /// The exit code (`None` when a signal ended it).
    pub code: Option<i32>,
    /// The whole input was written (the child read its stdin to the end).
    pub stdin_ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The last stderr line: where both binaries put the error that stopped them.
    pub fn last_error(&self) -> &str {
        self.stderr.lines().last().unwrap_or("")
    }

    /// Each stdout line as JSON (the target's committed states, the tap's messages).
    pub fn stdout_json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line {l:?}: {e}")))
            .collect()
    }
}

/// Runs `cmd` to the end with `input` on its stdin (nothing: stdin closed at
/// once), capturing its output. Both outputs must be UTF-8.
pub fn run(cmd: &mut Command, input: &[u8]) -> Run {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let feeder = feed(child.stdin.take().unwrap(), input.to_vec());
    let out = child.wait_with_output().unwrap();
    let stdin_ok = feeder.join().unwrap();
    let text = |bytes: Vec<u8>, what: &str| {
        String::from_utf8(bytes)
            .unwrap_or_else(|e| panic!("{:?} wrote non-UTF-8 {what}: {e}", cmd.get_program()))
    };
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdin_ok,
        stdout: text(out.stdout, "stdout"),
        stderr: text(out.stderr, "stderr"),
    }
}

/// Writes `data` to a child's stdin in the background (so that a child that
/// stops reading cannot block the test); the handle tells whether all of it
/// was written.
pub fn feed(mut stdin: ChildStdin, data: Vec<u8>) -> JoinHandle<bool> {
    std::thread::spawn(move || stdin.write_all(&data).is_ok())
}

/// A running process's peak resident set so far (`VmHWM`), in kB. (`ru_maxrss`
/// from wait4 can't be used: a child started with vfork+exec inherits the
/// parent's RSS there.) `None` once the process has exited.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What a tap wrote, read to the end by [`drain_records`].
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    pub records: u64,
    pub bytes: u64,
    /// The child's peak RSS in kB, sampled every 2,000 records.
    pub peak_rss_kb: u64,
}

/// Reads a tap's piped stdout to the end, counting RECORD lines and bytes,
/// and sampling the tap's peak RSS as it goes.
pub fn drain_records(child: &mut Child) -> Drained {
    let pid = child.id();
    let mut reader = BufReader::with_capacity(1 << 20, child.stdout.take().expect("piped stdout"));
    let mut d = Drained {
        records: 0,
        bytes: 0,
        peak_rss_kb: 0,
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).unwrap();
        if n == 0 {
            return d;
        }
        d.bytes += n as u64;
        if line.starts_with(br#"{"type":"RECORD""#) {
            d.records += 1;
            if d.records.is_multiple_of(2000) {
                d.peak_rss_kb = d.peak_rss_kb.max(peak_rss_kb(pid).unwrap_or(0));
            }
        }
    }
}

/// Runs the ignored test `name` (its full path in the test binary, e.g.
/// `tunnel::child_opens_a_tunnel_and_waits`) in a child process: this test
/// binary again, filtered to that one test, with its output not captured.
pub fn rerun_ignored_test(name: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args(["--ignored", "--exact", name, "--nocapture"]);
    cmd
}
