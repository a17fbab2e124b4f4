//! Orchestrators and peer connectors from PyPI, for the Meltano and interop
//! tests: pinned virtualenvs cached between runs (`tests/meltano/venv.sh`), and
//! a throwaway Meltano project that uses the shipped plugin block.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::bin;

/// Meltano, as DESIGN.md observed it.
pub const MELTANO: &str = "meltano==4.4.1";
/// `singer-check-tap`.
pub const SINGER_TOOLS: &str = "singer-tools==0.4.1";
/// A simple third-party Singer target.
pub const TARGET_JSONL: &str = "target-jsonl==0.1.4";
/// The Python tap whose output our target must load.
pub const PIPELINEWISE_TAP_POSTGRES: &str = "pipelinewise-tap-postgres==1.8.4";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The directory of a cached virtualenv holding `specs` (installed from PyPI
/// on first use). Fails the test with pip's message when it can't install:
/// these tests never skip silently.
pub fn venv(name: &str, specs: &[&str]) -> PathBuf {
    let script = repo_root().join("tests/meltano/venv.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(name)
        .args(specs)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "could not install {specs:?} from PyPI into a virtualenv (needs python3 with venv and \
         network access to PyPI):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        dir.join("bin/python").is_file(),
        "{} has no python",
        dir.display()
    );
    dir
}

/// A PATH with the built binaries and `extra` directories first.
pub fn path_with_binaries(extra: &[&Path]) -> std::ffi::OsString {
    let tap = bin("tap-postgres-rs");
    bin("target-postgres-rs");
    let mut dirs: Vec<PathBuf> = vec![tap.parent().unwrap().to_path_buf()];
    dirs.extend(extra.iter().map(|p| p.to_path_buf()));
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// `meltano/meltano.yml` (the shipped plugin block) as JSON, read with the
/// YAML parser Meltano itself uses.
pub fn plugin_block() -> Value {
    let python = venv("meltano", &[MELTANO]).join("bin/python");
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, json, ruamel.yaml; \
             print(json.dumps(ruamel.yaml.YAML(typ='safe').load(open(sys.argv[1]))))",
        ])
        .arg(repo_root().join("meltano/meltano.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meltano/meltano.yml is not valid YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Each log line as Meltano 4.4.1's structured-log parser (`singer-sdk`, the
/// default `log_parser`) reads it: `Some((level, message))`, or `None` when
/// Meltano would relay the line as unparsed text.
pub fn meltano_parse_logs(lines: &[&str]) -> Vec<Option<(String, String)>> {
    let python = venv("meltano", &[MELTANO]).join("bin/python");
    let script = "import sys, json, logging\n\
        from meltano.core.logging.parsers import SingerSDKLogParser\n\
        p = SingerSDKLogParser()\n\
        for line in sys.stdin:\n\
        \x20   r = p.parse(line)\n\
        \x20   print(json.dumps(r and [logging.getLevelName(r.level), r.message]))\n";
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let writer = crate::feed(child.stdin.take().unwrap(), input.into_bytes());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "Meltano's log parser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A Meltano project in a temp dir: the shipped `meltano/meltano.yml`, copied
/// verbatim and included, plus a `dev` environment that points both plugins
/// at test databases.
pub struct MeltanoProject {
    pub dir: tempfile::TempDir,
    meltano: PathBuf,
    path: std::ffi::OsString,
    envs: Vec<(String, String)>,
}

/// What one `meltano ...` command did.
#[derive(Debug)]
pub struct MeltanoOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl MeltanoOutput {
    /// Panics with everything Meltano printed unless it exited 0.
    pub fn assert_success(self, what: &str) -> MeltanoOutput {
        assert!(
            self.success,
            "`meltano {what}` failed ({:?})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

impl MeltanoProject {
    /// `extractor` and `loader` are the environment's plugin entries beyond
    /// `name` (`config`, `select`, `metadata`, ...).
    pub fn new(extractor: Value, loader: Value) -> MeltanoProject {
        let meltano = venv("meltano", &[MELTANO]).join("bin/meltano");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo_root().join("meltano/meltano.yml"),
            dir.path().join("plugins.meltano.yml"),
        )
        .unwrap();
        let mut extractor = extractor;
        extractor["name"] = json!("tap-postgres-rs");
        let mut loader = loader;
        loader["name"] = json!("target-postgres-rs");
        // JSON is YAML: no YAML writer needed.
        let project = json!({
            "project_id": "00000000-0000-4000-8000-00000000e2e0",
            "send_anonymous_usage_stats": false,
            "include_paths": ["./plugins.meltano.yml"],
            "default_environment": "dev",
            "environments": [{
                "name": "dev",
                "config": {"plugins": {"extractors": [extractor], "loaders": [loader]}},
            }],
        });
        std::fs::write(
            dir.path().join("meltano.yml"),
            serde_json::to_string_pretty(&project).unwrap(),
        )
        .unwrap();
        MeltanoProject {
            dir,
            meltano,
            path: path_with_binaries(&[]),
            envs: Vec::new(),
        }
    }

    /// Sets an environment variable for every later `meltano` command (as a
    /// user's shell or `.env` would, e.g. `TAP_POSTGRES_RS_PASSWORD`).
    pub fn env(&mut self, key: &str, value: &str) {
        self.envs.push((key.to_owned(), value.to_owned()));
    }

    /// Runs `meltano <args>` in the project.
    pub fn meltano(&self, args: &[&str]) -> MeltanoOutput {
        let out: Output = self.command(args).output().expect("run meltano");
        MeltanoOutput {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `meltano <args>` ready to spawn (cwd, PATH with the binaries, no
    /// telemetry, no version check).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.meltano);
        // Meltano 4 ignores the default environment for `config` and `state`.
        cmd.arg("--environment=dev")
            .args(args)
            .current_dir(self.dir.path())
            .env("PATH", &self.path)
            .env("MELTANO_SEND_ANONYMOUS_USAGE_STATS", "false")
            .env("MELTANO_CLI_DISABLE_VERSION_CHECK", "true")
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// The state Meltano stored for `state_id` (`meltano state get`).
    pub fn state(&self, state_id: &str) -> Value {
        let out = self
            .meltano(&["state", "get", state_id])
            .assert_success("state get");
        let line = out
            .stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or_else(|| panic!("no state for {state_id}: {}", out.stdout));
        serde_json::from_str(line).unwrap()
    }
}
