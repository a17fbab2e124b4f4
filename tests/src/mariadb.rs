//! A private, throwaway MariaDB server for the MySQL-tap interop tests:
//! Debian's `mariadb-server` binaries, a datadir in a temp dir, a free
//! loopback port and a socket beside the datadir. Stopped on drop, or by a
//! watcher when the test process ends without dropping it.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The account the taps connect as, over TCP (created at start).
pub const USER: &str = "singer";
/// Its password.
pub const PASSWORD: &str = "singer-secret";

/// A running private server.
pub struct MariaDb {
    dir: tempfile::TempDir,
    port: u16,
    server: Child,
}

/// A binary of `mariadb-server`/`mariadb-client`, from PATH or the sbin
/// directories root's PATH has and a user's may lack.
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: the MySQL-tap interop tests need MariaDB's server \
                 (`apt-get install -y mariadb-server`, listed in .ci/apt-packages)"
            )
        })
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A watcher that kills the server and removes its directory once the test
/// process is gone, however it ended (a normal drop has removed both before).
fn spawn_reaper(dir: &Path) {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
        [ -f "$2/pid" ] && kill -KILL "$(cat "$2/pid")" 2>/dev/null
        rm -rf "$2"
    "#;
    Command::new("setsid")
        .args(["sh", "-c", script, "mariadb-reaper"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        // The watcher outlives this process by design: nothing waits for it.
        .map(drop)
        .unwrap_or_else(|e| panic!("cannot start the MariaDB cleanup watcher (setsid): {e}"));
}

impl MariaDb {
    /// Initializes a datadir and starts `mariadbd` on it; returns once it
    /// accepts connections, with the [`USER`] account created.
    pub fn start() -> MariaDb {
        let dir = tempfile::Builder::new()
            .prefix("mariadb-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        // mariadbd refuses to run as root unless told to; the temp dir is
        // root's own then, so running as root is what fits.
        let user: Vec<String> = if running_as_root() {
            vec!["--user=root".into()]
        } else {
            Vec::new()
        };
        let out = Command::new(program("mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(&user)
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = dir.path().join("server.log");
        let server = Command::new(program("mariadbd"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(&user)
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .args([
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mariadbd");
        spawn_reaper(dir.path());
        let mut db = MariaDb { dir, port, server };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if db
                .client(None)
                .arg("-e")
                .arg("SELECT 1")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                break;
            }
            let exited = db.server.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "mariadbd did not start ({exited:?}); its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        db.execute(
            None,
            &format!(
                "CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; \
                 GRANT ALL ON *.* TO '{USER}'@'127.0.0.1';"
            ),
        );
        db
    }

    /// The loopback TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory (datadir, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `mariadb` as root over the socket, in batch mode, utf8mb4, ready for
    /// more arguments.
    fn client(&self, database: Option<&str>) -> Command {
        let mut cmd = Command::new(program("mariadb"));
        cmd.arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .args(["--user=root", "--default-character-set=utf8mb4", "--batch"]);
        if let Some(d) = database {
            cmd.arg(format!("--database={d}"));
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `sql` (one or more statements), panicking with the server's
    /// message on error.
    pub fn execute(&self, database: Option<&str>, sql: &str) {
        self.query(database, sql);
    }

    /// The rows `sql` returns, each value as the client's batch mode prints
    /// it (`NULL` for NULL; tabs, newlines and backslashes escaped).
    pub fn query(&self, database: Option<&str>, sql: &str) -> Vec<Vec<String>> {
        let out = self
            .client(database)
            .arg("--skip-column-names")
            .arg("-e")
            .arg(sql)
            .output()
            .expect("run mariadb");
        assert!(
            out.status.success(),
            "mariadb: {}\n--- statement\n{sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8mb4 output")
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // The datadir is thrown away: no clean shutdown needed.
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
