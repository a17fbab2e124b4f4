//! A private, throwaway PostgreSQL cluster for tests.
//!
//! The first call to [`cluster`] in a test process runs `initdb` from the
//! local PostgreSQL binaries (`$PG_BINDIR`, `pg_config --bindir`, or the
//! newest `/usr/lib/postgresql/*/bin`) into a temporary directory, as the
//! `postgres` OS user when running as root (initdb refuses root), and starts
//! it on a free loopback port with `wal_level=logical` and TLS on (a CA and a
//! server certificate generated for it). Each test takes a fresh database
//! with [`Cluster::create_database`].
//!
//! A small watcher process stops the server and removes its directory as soon
//! as the test process is gone, however it ended (panic, `exit`, SIGKILL).
//!
//! Every crate's tests share the rest of their support here: [`process`]
//! (JSON argument files, running a binary with stdin and capturing its exit
//! code and output, re-running an ignored test in a child process),
//! [`catalog`] (selecting streams), [`rows`] (reading what landed, as text)
//! and [`snapshot`] (waiting out other tests' older transactions).
//!
//! ```no_run
//! let db = pg_testkit::cluster().create_database("my_test");
//! let mut client = db.client();
//! client.batch_execute("CREATE TABLE t (id int)").unwrap();
//! ```

pub mod bastion;
pub mod catalog;
pub mod process;
pub mod rows;
pub mod snapshot;

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The superuser every test connects as (trust authentication on loopback).
pub const SUPERUSER: &str = "postgres";

/// A running private cluster.
#[derive(Debug)]
pub struct Cluster {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as_postgres: bool,
    options: ClusterOptions,
    /// Extra clusters (see [`start_cluster`]) stop when dropped; the shared one lives for the process.
    stop_on_drop: bool,
    create_lock: Mutex<()>,
    server_version_num: OnceLock<u32>,
}

/// How an extra cluster (see [`start_cluster`]) differs from the shared one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterOptions {
    /// TLS on, with a CA and server certificate generated for it.
    pub tls: bool,
    /// Listen on every address (all loopback: 127.0.0.0/8, ::1) inside a network namespace of its own, so that no
    /// TCP client outside it can reach the server (root only). The test
    /// process still reaches it as superuser over its Unix socket
    /// ([`Cluster::client`]), and [`bastion::Bastion`] can forward into it.
    pub private_network: bool,
    /// `wal_level` (the shared cluster's is `logical`).
    pub wal_level: &'static str,
}

impl Default for ClusterOptions {
    /// The shared cluster's options: TLS on, loopback, logical WAL.
    fn default() -> Self {
        ClusterOptions {
            tls: true,
            private_network: false,
            wal_level: "logical",
        }
    }
}

/// Starts an extra cluster of its own (e.g. TLS off, or reachable only
/// through a private network namespace). It is stopped and removed when
/// dropped, or by its watcher when the test process ends.
pub fn start_cluster(options: ClusterOptions) -> Cluster {
    Cluster::start(options).unwrap_or_else(|e| panic!("pg-testkit: {e}"))
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The cluster of this test process, started on first use.
///
/// Panics with the exact install command when no PostgreSQL server binaries
/// are found: tests never skip silently.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        Cluster::start(ClusterOptions::default()).unwrap_or_else(|e| panic!("pg-testkit: {e}"))
    })
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`.
pub fn find_bindir() -> Result<PathBuf, String> {
    let has_server = |dir: &Path| {
        dir.join("initdb").is_file()
            && dir.join("pg_ctl").is_file()
            && dir.join("postgres").is_file()
    };
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return Ok(dir);
        }
        return Err(format!(
            "PG_BINDIR={} has no initdb/pg_ctl/postgres: point it at the PostgreSQL server \
             binaries, or unset it (install them with `apt-get install -y postgresql`)",
            dir.display()
        ));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, dir)| dir).ok_or_else(|| {
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found. Install them with \
         `apt-get install -y postgresql` (Debian/Ubuntu), or set PG_BINDIR to their directory."
            .to_string()
    })
}

fn free_port() -> Result<u16, String> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Cluster {
    fn start(options: ClusterOptions) -> Result<Cluster, String> {
        let bindir = find_bindir()?;
        let cluster = Cluster::prepare_dir(bindir, options)?;
        let data = cluster.data_dir();
        cluster.run_pg(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ],
        )?;
        cluster.start_on_free_port()
    }

    /// A directory of its own, watched (removed when the test process is
    /// gone), with TLS files when asked for, owned by `postgres` when root.
    fn prepare_dir(bindir: PathBuf, options: ClusterOptions) -> Result<Cluster, String> {
        let run_as_postgres = running_as_root();
        if options.private_network && !run_as_postgres {
            return Err(
                "a cluster in a private network namespace needs root (unshare --net)".into(),
            );
        }
        let base = std::env::temp_dir().join(format!(
            "pg-testkit-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&base)
            .map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        let cluster = Cluster {
            bindir,
            dir: base,
            port: 0,
            run_as_postgres,
            options,
            stop_on_drop: false,
            create_lock: Mutex::new(()),
            server_version_num: OnceLock::new(),
        };
        // From here on the watcher cleans up whatever happens next.
        cluster.spawn_reaper()?;
        if options.tls {
            cluster.generate_tls()?;
        }
        if run_as_postgres {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&cluster.dir),
                "chown",
            )?;
        }
        Ok(cluster)
    }

    fn start_on_free_port(&self) -> Result<Cluster, String> {
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let mut cluster = self.clone_parts();
            cluster.port = port;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    // Only extra clusters are ever dropped (the shared one is a static).
                    cluster.stop_on_drop = true;
                    return Ok(cluster);
                }
                Err(e) => last_err = e,
            }
        }
        Err(format!("cannot start the test cluster: {last_err}"))
    }

    /// A `pg_basebackup` that can copy this server: the server's own bindir's,
    /// else the newest installed client's when it is at least the server's
    /// major (pg_basebackup refuses newer servers). `Err` says what is missing.
    pub fn pg_basebackup(&self) -> Result<PathBuf, String> {
        let own = self.bindir.join("pg_basebackup");
        if own.is_file() {
            return Ok(own);
        }
        let major = self.server_version_num() / 10000;
        let mut installed: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let exe = e.path().join("bin/pg_basebackup");
                exe.is_file().then_some((version, exe))
            })
            .collect();
        installed.sort();
        match installed.pop() {
            Some((v, exe)) if v >= major => Ok(exe),
            Some((v, _)) => Err(format!(
                "no pg_basebackup for PostgreSQL {major}: {} has none, and the installed client is PostgreSQL {v}'s, which refuses newer servers",
                self.bindir.display()
            )),
            None => Err(format!(
                "no pg_basebackup: {} has none and no PostgreSQL client is installed (`apt-get install -y postgresql-client`)",
                self.bindir.display()
            )),
        }
    }

    /// Starts a hot standby of this cluster: `pg_basebackup -R` (streaming
    /// WAL) into a directory of its own, started on a free port with this
    /// cluster's options. Stopped and removed when dropped, like
    /// [`start_cluster`]'s. `Err` when no usable pg_basebackup is installed
    /// (see [`Cluster::pg_basebackup`]) or the copy fails.
    pub fn start_standby(&self) -> Result<Cluster, String> {
        if self.options.private_network {
            return Err(
                "start_standby copies over 127.0.0.1: not from a cluster in a private network"
                    .into(),
            );
        }
        let basebackup = self.pg_basebackup()?;
        let standby = Cluster::prepare_dir(self.bindir.clone(), self.options)?;
        let port = self.port.to_string();
        let data = standby.data_dir();
        // An absolute program path: `run_pg` joins it onto the bindir, which keeps it.
        standby.run_pg(
            basebackup.to_str().expect("utf-8 path"),
            &[
                "-h",
                self.host(),
                "-p",
                &port,
                "-U",
                SUPERUSER,
                "-D",
                data.to_str().expect("utf-8 path"),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        )?;
        standby.start_on_free_port()
    }

    fn clone_parts(&self) -> Cluster {
        Cluster {
            bindir: self.bindir.clone(),
            dir: self.dir.clone(),
            port: self.port,
            run_as_postgres: self.run_as_postgres,
            options: self.options,
            stop_on_drop: false,
            create_lock: Mutex::new(()),
            server_version_num: OnceLock::new(),
        }
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let tls = self.tls_dir();
        // In a private namespace every address is a loopback one.
        let listen = if self.options.private_network {
            "'*'"
        } else {
            "127.0.0.1"
        };
        // password_encryption: SCRAM, the default from PostgreSQL 14 on (md5 before), so that
        // password roles work with `scram-sha-256` pg_hba lines on every version.
        let mut opts = format!(
            "-c port={port} -c listen_addresses={listen} -c unix_socket_directories={dir} \
             -c wal_level={wal_level} -c max_replication_slots=64 -c max_wal_senders=32 \
             -c max_connections=300 -c fsync=off -c full_page_writes=off \
             -c shared_buffers=128MB -c password_encryption=scram-sha-256",
            port = self.port,
            dir = self.dir.display(),
            wal_level = self.options.wal_level,
        );
        if self.options.tls {
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={tls}/server.crt -c ssl_key_file={tls}/server.key \
                 -c ssl_ca_file={tls}/ca.crt",
                tls = tls.display()
            ));
        }
        let log = self.dir.join("server.log");
        let program = if self.options.private_network {
            "pg_ctl in a new network namespace"
        } else {
            "pg_ctl"
        };
        self.run_pg(
            program,
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-o",
                &opts,
                "start",
            ],
        )
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{e}\nserver log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
    }

    /// Runs a PostgreSQL binary, as `postgres` when we are root.
    fn run_pg(&self, program: &str, args: &[&str]) -> Result<String, String> {
        if let Some(program) = program.strip_suffix(" in a new network namespace") {
            // The postmaster (and so every backend) lives in a network
            // namespace with only its own loopback, brought up first.
            let exe = self.bindir.join(program);
            let mut cmd = Command::new("unshare");
            cmd.args([
                "--net",
                "sh",
                "-c",
                "ip link set lo up && exec \"$@\"",
                "sh",
                "runuser",
                "-u",
                "postgres",
                "--",
            ])
            .arg(&exe)
            .args(args)
            .current_dir(&self.dir);
            return run(&mut cmd, program);
        }
        let exe = self.bindir.join(program);
        let mut cmd = if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(&self.dir);
        run(&mut cmd, program)
    }

    fn generate_tls(&self) -> Result<(), String> {
        let tls = self.tls_dir();
        std::fs::create_dir_all(&tls).map_err(|e| e.to_string())?;
        let openssl = |args: &[&str]| {
            run(
                Command::new("openssl").args(args).current_dir(&tls),
                "openssl",
            )
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3",
            "-subj",
            "/CN=pg-testkit CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ])?;
        std::fs::write(
            tls.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .map_err(|e| e.to_string())?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ])?;
        std::fs::set_permissions(
            tls.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Stops the server and removes the directory once this process is gone.
    fn spawn_reaper(&self) -> Result<(), String> {
        let script = r#"
            while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
            pidfile="$2/data/postmaster.pid"
            if [ -f "$pidfile" ]; then
                pm=$(head -n 1 "$pidfile")
                kill -INT "$pm" 2>/dev/null
                for _ in $(seq 1 100); do kill -0 "$pm" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pm" 2>/dev/null
            fi
            rm -rf "$2"
        "#;
        let mut cmd = Command::new("setsid");
        cmd.args(["sh", "-c", script, "pg-testkit-reaper"])
            .arg(std::process::id().to_string())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn()
            .map(|_| ())
            .map_err(|e| format!("cannot start the cleanup watcher: {e}"))
    }

    /// Where the cluster's files live (removed at the end of the run).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }
    /// The CA that signed the server certificate (`CN=localhost`, SAN `localhost`, `127.0.0.1`).
    pub fn ca_cert(&self) -> PathBuf {
        self.tls_dir().join("ca.crt")
    }

    /// The options this cluster was started with.
    pub fn options(&self) -> ClusterOptions {
        self.options
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The postmaster's process id (e.g. to enter its network namespace).
    pub fn postmaster_pid(&self) -> u32 {
        let pidfile = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .expect("read postmaster.pid");
        pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("postmaster.pid starts with the pid")
    }

    /// A client certificate for `role` (`CN=<role>`) signed by this cluster's
    /// CA, for `hostssl ... cert` rules: `(certificate, private key)` paths.
    pub fn client_certificate(&self, role: &str) -> (PathBuf, PathBuf) {
        assert!(
            self.options.tls,
            "client_certificate needs a cluster with TLS"
        );
        let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let tls = self.tls_dir();
        let (crt, key, csr) = (
            format!("client-{n}.crt"),
            format!("client-{n}.key"),
            format!("client-{n}.csr"),
        );
        let openssl = |args: &[&str]| {
            run(
                Command::new("openssl").args(args).current_dir(&tls),
                "openssl",
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let subject = format!("/CN={role}");
        openssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out",
            &csr,
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3",
            "-out",
            &crt,
        ]);
        (tls.join(crt), tls.join(key))
    }
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The server log, for test failure messages.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Runs another PostgreSQL binary (e.g. `pg_ctl reload`) as the cluster's owner.
    pub fn run_bin(&self, program: &str, args: &[&str]) -> Result<String, String> {
        self.run_pg(program, args)
    }

    /// The server's `server_version_num` (e.g. `120022`, `180004`), read once: for tests whose
    /// values or the server's wording depend on the version.
    pub fn server_version_num(&self) -> u32 {
        *self.server_version_num.get_or_init(|| {
            let text: String = self
                .client("postgres")
                .query_one("SHOW server_version_num", &[])
                .unwrap_or_else(|e| panic!("pg-testkit: SHOW server_version_num: {e}"))
                .get(0);
            text.parse()
                .unwrap_or_else(|e| panic!("pg-testkit: server_version_num {text:?}: {e}"))
        })
    }

    /// Prepends lines to `pg_hba.conf` and reloads the server.
    pub fn prepend_hba(&self, lines: &str) {
        let path = self.data_dir().join("pg_hba.conf");
        let old = std::fs::read_to_string(&path).expect("read pg_hba.conf");
        std::fs::write(&path, format!("{lines}\n{old}")).expect("write pg_hba.conf");
        self.client("postgres")
            .batch_execute("SELECT pg_reload_conf()")
            .expect("reload");
    }

    /// A superuser connection (plain TCP, trust; the Unix socket for a
    /// cluster in a private network) to `database`.
    pub fn client(&self, database: &str) -> postgres::Client {
        let host = if self.options.private_network {
            self.dir.to_str().expect("utf-8 temp dir").to_owned()
        } else {
            self.host().to_owned()
        };
        postgres::Config::new()
            .host(&host)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(database)
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to test database {database}: {e}"))
    }

    /// Creates a fresh, empty database for one test. `hint` names it (sanitised).
    pub fn create_database(&self, hint: &str) -> TestDb {
        let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut name: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        name = format!("{name}_{}_{n}", std::process::id());
        let _guard = self.create_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.client("postgres")
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        TestDb {
            name,
            host: self.host().to_owned(),
            port: self.port,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stop_on_drop {
            return;
        }
        let data = self.data_dir();
        let _ = self.run_pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A database of its own for one test. (Its `client()` is for the shared
/// cluster; for an extra cluster use `Cluster::client(&db.name)`.)
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl TestDb {
    /// A superuser connection to this database.
    pub fn client(&self) -> postgres::Client {
        cluster().client(&self.name)
    }

    /// A connector config (`host`, `port`, `user`, `password`, `database`)
    /// for this database as the superuser, TLS off.
    pub fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "host": self.host,
            "port": self.port,
            "user": SUPERUSER,
            "password": "",
            "database": self.name,
            "ssl_mode": "disable",
        })
    }

    /// Waits until `f` holds or `timeout` passes; returns whether it held.
    pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        f()
    }
}
