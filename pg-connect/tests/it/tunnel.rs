//! SSH tunnels against a real `sshd` on a loopback port, to a database that
//! listens only inside a private network namespace: nothing but the bastion
//! can reach it, so a working connection proves the traffic went through it.

use std::sync::{Mutex, MutexGuard, OnceLock};

use pg_connect::{ConnectionSettings, Connector};
use pg_testkit::bastion::Bastion;
use pg_testkit::{start_cluster, Cluster, ClusterOptions};
use serde_json::{json, Value};

/// The hidden database and its bastion, shared by the tests of this file.
fn hidden() -> &'static (Cluster, Bastion) {
    static HIDDEN: OnceLock<(Cluster, Bastion)> = OnceLock::new();
    HIDDEN.get_or_init(|| {
        let c = start_cluster(ClusterOptions {
            tls: true,
            private_network: true,
            ..Default::default()
        });
        let b = Bastion::start(&c);
        (c, b)
    })
}

/// One test at a time: they count the bastion's connections and look for
/// ssh processes.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A config reaching the hidden database through the bastion with TLS
/// verify-full against `localhost`, the database's name as the bastion sees it.
fn tunnel_config(known_hosts: &std::path::Path, extra: Value) -> Value {
    let (c, b) = hidden();
    let mut ssh = json!({
        "enable": true,
        "host": b.host(),
        "port": b.port(),
        "username": b.user(),
        "private_key": b.private_key().to_str().unwrap(),
        "known_hosts_file": known_hosts.to_str().unwrap(),
    });
    ssh.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({
        "host": "localhost",
        "port": c.port(),
        "user": "postgres",
        "database": "postgres",
        "ssl_mode": "verify-full",
        "ssl_certificate_authority": c.ca_cert().to_str().unwrap(),
        "ssh_tunnel": ssh,
    })
}

fn settings(config: &Value) -> ConnectionSettings {
    let config = singer_core::Config::from_map(config.as_object().unwrap().clone());
    ConnectionSettings::from_config(&config).unwrap()
}

fn open_err(config: &Value) -> String {
    match Connector::new(settings(config), "tunnel-test") {
        Ok(_) => panic!("the tunnel opened but must not"),
        Err(e) => e.to_string(),
    }
}

/// The arguments of the `ssh` process forwarding `port`, if one runs.
fn ssh_forwarding_args(port: u16) -> Option<Vec<String>> {
    let pattern = format!("127.0.0.1:{port}:");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| {
            String::from_utf8_lossy(&c)
                .split('\0')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|args| args[0] == "ssh" && args.iter().any(|a| a.starts_with(&pattern)))
}

fn ssh_forwarding(port: u16) -> bool {
    ssh_forwarding_args(port).is_some()
}

#[test]
fn the_database_is_reachable_only_through_the_tunnel_with_verify_full() {
    let _serial = serial();
    let (c, b) = hidden();
    let db = c.create_database("tunnel_verify_full");
    // Directly, over TCP, nothing answers: the server is in another network.
    assert!(std::net::TcpStream::connect(("127.0.0.1", c.port())).is_err());

    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("state dir/known_hosts");
    let mut config = tunnel_config(&known_hosts, json!({}));
    config["database"] = db.name.clone().into();
    let before = b.connections();
    let connector = Connector::new(settings(&config), "tunnel-test").unwrap();
    assert!(connector.is_tunnelled());
    let local_port = connector.settings().port;
    assert_ne!(local_port, c.port());
    // Several sessions share one tunnel (the tap opens more than one).
    let mut sessions: Vec<_> = (0..3).map(|_| connector.connect().unwrap()).collect();
    assert_eq!(
        b.connections(),
        before + 1,
        "one SSH connection for all sessions"
    );
    for client in &mut sessions {
        let row = client
            .query_one(
                "SELECT current_database(), ssl, current_setting('TimeZone') \
                 FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), db.name);
        assert!(row.get::<_, bool>(1), "TLS through the tunnel");
        assert_eq!(row.get::<_, String>(2), "UTC");
    }
    // Trusted on first use, remembered in our private file.
    let remembered = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(
        remembered.contains(&format!("[127.0.0.1]:{} {}", b.port(), b.host_key())),
        "{remembered}"
    );

    // ssh uses a private 0600 copy of the key, in a private 0700 directory.
    let args = ssh_forwarding_args(local_port).expect("ssh runs");
    let key = std::path::PathBuf::from(&args[args.iter().position(|a| a == "-i").unwrap() + 1]);
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(key.parent().unwrap()), 0o700);
    assert_ne!(key, b.private_key());

    // The tunnel closes with the connector, and the key copy is gone.
    drop(sessions);
    assert!(ssh_forwarding(local_port));
    drop(connector);
    assert!(!ssh_forwarding(local_port));
    assert!(std::net::TcpStream::connect(("127.0.0.1", local_port)).is_err());
    assert!(!key.parent().unwrap().exists());
}

/// Run in a child process by `the_tunnel_closes_when_the_process_is_killed`.
#[test]
#[ignore = "helper: run in a child process that gets killed"]
fn child_opens_a_tunnel_and_waits() {
    let dir = tempfile::tempdir().unwrap();
    let config = tunnel_config(&dir.path().join("known_hosts"), json!({}));
    let connector = Connector::new(settings(&config), "tunnel-test").unwrap();
    connector.connect().unwrap();
    println!("TUNNEL {}", connector.settings().port);
    std::thread::sleep(std::time::Duration::from_secs(120));
}

#[test]
fn the_tunnel_closes_when_the_process_is_killed() {
    use std::io::BufRead;
    let _serial = serial();
    let mut child =
        pg_testkit::process::rerun_ignored_test("tunnel::child_opens_a_tunnel_and_waits")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let port: u16 = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("TUNNEL ").map(|p| p.parse().unwrap()))
        .expect("the child opened a tunnel");
    let args = ssh_forwarding_args(port).expect("ssh runs");
    let key = std::path::PathBuf::from(&args[args.iter().position(|a| a == "-i").unwrap() + 1]);
    assert!(key.exists());
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let start = std::time::Instant::now();
    while ssh_forwarding(port) && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!ssh_forwarding(port), "ssh outlived the killed process");
    let gone = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        !key.exists()
    });
    assert!(gone, "the key copy outlived the killed process");
}

#[test]
fn verify_full_through_the_tunnel_checks_the_real_host_name() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut config = tunnel_config(&dir.path().join("known_hosts"), json!({}));
    // 127.0.0.2 reaches the same server inside its namespace, but the
    // certificate names only localhost and 127.0.0.1.
    config["host"] = "127.0.0.2".into();
    let connector = Connector::new(settings(&config), "tunnel-test").unwrap();
    let e = connector.connect().err().expect("must fail").to_string();
    assert_eq!(
        e,
        format!(
            "cannot connect to PostgreSQL at 127.0.0.2:{} (database `postgres`, user `postgres`): \
             the server's certificate does not name the host `127.0.0.2` (verify-full): \
             connect by a name the certificate lists, or use ssl_mode verify-ca",
            hidden().0.port()
        )
    );
}

#[test]
fn pinned_host_keys_and_changed_host_keys() {
    let _serial = serial();
    let (_, b) = hidden();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    // The right pin works (and writes nothing to the trust-on-first-use file).
    let config = tunnel_config(&known_hosts, json!({"host_key": b.host_key()}));
    let connector = Connector::new(settings(&config), "tunnel-test").unwrap();
    connector.connect().unwrap();
    drop(connector);
    assert!(!known_hosts.exists());

    let wrong = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDHfJRLAndHjI0vru7uu4WDUbJWvVFdGIYRjLSLQhwBx";
    let config = tunnel_config(&known_hosts, json!({"host_key": wrong}));
    assert_eq!(
        open_err(&config),
        format!(
            "cannot connect to PostgreSQL at localhost:{} (database `postgres`, user `postgres`): \
             the SSH bastion 127.0.0.1:{} presented a host key that does not match ssh_tunnel.host_key",
            hidden().0.port(),
            b.port()
        )
    );

    // A remembered key that no longer matches: refused, never re-trusted.
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{} {wrong}\n", b.port())).unwrap();
    let config = tunnel_config(&known_hosts, json!({}));
    assert_eq!(
        open_err(&config),
        format!(
            "cannot connect to PostgreSQL at localhost:{} (database `postgres`, user `postgres`): \
             the SSH bastion 127.0.0.1:{port} presented a host key different from the one trusted on first use, \
             remembered in {}: if the change is expected, remove the line for [127.0.0.1]:{port} from that file \
             (or pin the new key with ssh_tunnel.host_key)",
            hidden().0.port(),
            known_hosts.display(),
            port = b.port()
        )
    );
}

#[test]
fn keys_as_contents_with_passphrases_and_wrong_keys() {
    let _serial = serial();
    let (c, b) = hidden();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    let prefix = format!(
        "cannot connect to PostgreSQL at localhost:{} (database `postgres`, user `postgres`): ",
        c.port()
    );

    // PEM contents, protected by a passphrase.
    let key = b.new_user_key("s3cret phrase", true);
    let contents = std::fs::read_to_string(&key).unwrap();
    let config = tunnel_config(
        &known_hosts,
        json!({"private_key": contents, "private_key_password": "s3cret phrase"}),
    );
    let connector = Connector::new(settings(&config), "tunnel-test").unwrap();
    connector.connect().unwrap();
    drop(connector);

    let config = tunnel_config(
        &known_hosts,
        json!({"private_key": contents, "private_key_password": "wrong"}),
    );
    assert_eq!(
        open_err(&config),
        format!("{prefix}ssh_tunnel.private_key_password does not decrypt ssh_tunnel.private_key")
    );
    let config = tunnel_config(&known_hosts, json!({"private_key": contents}));
    assert_eq!(
        open_err(&config),
        format!("{prefix}ssh_tunnel.private_key is protected by a passphrase: set ssh_tunnel.private_key_password")
    );
    let config = tunnel_config(
        &known_hosts,
        json!({"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----"}),
    );
    let e = open_err(&config);
    assert_eq!(
        e,
        format!("{prefix}ssh_tunnel.private_key is not a private key ssh can read (OpenSSH or PEM format)")
    );
    assert!(!e.contains("bm90IGEga2V5"));

    // A valid key the bastion does not accept.
    let stranger = b.new_user_key("", false);
    let config = tunnel_config(
        &known_hosts,
        json!({"private_key": stranger.to_str().unwrap()}),
    );
    assert_eq!(
        open_err(&config),
        format!(
            "{prefix}the SSH bastion 127.0.0.1:{} refused the key for user `{}`: check ssh_tunnel.username \
             and ssh_tunnel.private_key (its public key must be in that user's authorized_keys)",
            b.port(),
            b.user()
        )
    );
}

#[test]
fn unreachable_bastion_and_unreachable_database() {
    let _serial = serial();
    let (c, _) = hidden();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = tunnel_config(&known_hosts, json!({"port": closed}));
    assert_eq!(
        open_err(&config),
        format!(
            "cannot connect to PostgreSQL at localhost:{} (database `postgres`, user `postgres`): \
             cannot reach the SSH bastion at 127.0.0.1:{closed} (check ssh_tunnel.host and ssh_tunnel.port): \
             ssh: connect to host 127.0.0.1 port {closed}: Connection refused",
            c.port()
        )
    );

    // A bastion name that does not resolve (the resolver's words vary).
    let config = tunnel_config(&known_hosts, json!({"host": "bastion.invalid"}));
    let e = open_err(&config);
    assert!(
        e.starts_with(&format!(
            "cannot connect to PostgreSQL at localhost:{} (database `postgres`, user `postgres`): \
             cannot resolve the SSH bastion host `bastion.invalid` (ssh_tunnel.host): \
             ssh: Could not resolve hostname bastion.invalid: ",
            c.port()
        )),
        "{e}"
    );

    // The bastion is fine, but no database listens where it forwards.
    let mut config = tunnel_config(&known_hosts, json!({}));
    config["port"] = closed.into();
    let connector = Connector::new(settings(&config), "tunnel-test").unwrap();
    let e = connector.connect().err().expect("must fail").to_string();
    assert_eq!(
        e,
        format!(
            "cannot connect to PostgreSQL at localhost:{closed} (database `postgres`, user `postgres`): \
             the SSH bastion cannot reach the database at localhost:{closed} (connect failed: Connection refused)"
        )
    );
}
