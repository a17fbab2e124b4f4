//! The harness itself: a private cluster with TLS, fresh databases, and
//! nothing left behind when the test process ends.

use std::time::Duration;

use pg_testkit::process::rerun_ignored_test;
use pg_testkit::{cluster, TestDb};

#[test]
fn two_fresh_databases_over_verified_tls() {
    let a = cluster().create_database("harness_a");
    let b = cluster().create_database("harness_b");
    assert_ne!(a.name, b.name);
    for db in [&a, &b] {
        let mut config = db.config();
        config["host"] = "localhost".into();
        config["ssl_mode"] = "verify-full".into();
        config["ssl_certificate_authority"] = cluster().ca_cert().to_str().unwrap().into();
        let config = singer_core::Config::from_map(config.as_object().unwrap().clone());
        let settings = pg_connect::ConnectionSettings::from_config(&config).unwrap();
        let mut client = pg_connect::connect(&settings, "harness-test").unwrap();
        let row = client
            .query_one(
                "SELECT current_database(), ssl, current_setting('wal_level') \
                 FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), db.name);
        assert!(row.get::<_, bool>(1), "connection is not TLS");
        assert_eq!(row.get::<_, String>(2), "logical");
    }
    // A fresh database has no user tables.
    let n: i64 = a
        .client()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[test]
fn verify_full_rejects_an_unknown_ca() {
    let db = cluster().create_database("harness_wrong_host");
    let mut config = db.config();
    config["host"] = "localhost".into();
    config["ssl_mode"] = "verify-full".into();
    config["ssl_certificate_authority"] = cluster().ca_cert().to_str().unwrap().into();
    let config = singer_core::Config::from_map(config.as_object().unwrap().clone());
    let settings = pg_connect::ConnectionSettings::from_config(&config).unwrap();
    assert!(pg_connect::connect(&settings, "harness-test").is_ok());
    // The system trust store does not know the test CA.
    let mut no_ca = settings.clone();
    no_ca.ssl_ca = None;
    let err = match pg_connect::connect(&no_ca, "harness-test") {
        Ok(_) => panic!("verify-full without the CA must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("certificate verify failed"), "{err}");
}

/// Run as a child process by `cluster_is_gone_after_the_run`.
#[test]
#[ignore = "helper: run by cluster_is_gone_after_the_run in a child process"]
fn child_starts_a_cluster() {
    let c = cluster();
    println!("CLUSTER {} {}", c.port(), c.dir().display());
}

#[test]
fn cluster_is_gone_after_the_run() {
    let out = rerun_ignored_test("child_starts_a_cluster")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("CLUSTER "))
        .expect("child printed its cluster");
    let mut parts = line.split_whitespace().skip(1);
    let port: u16 = parts.next().unwrap().parse().unwrap();
    let dir = std::path::PathBuf::from(parts.next().unwrap());
    let gone = TestDb::wait_for(Duration::from_secs(30), || !dir.exists());
    assert!(gone, "cluster directory {} still exists", dir.display());
    let refused = TestDb::wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    assert!(refused, "a server still listens on port {port}");
}

/// Run as a child process with `PG_BINDIR` pointing nowhere.
#[test]
#[ignore = "helper: run by missing_binaries_fail_at_once_with_the_fix in a child process"]
fn child_without_binaries() {
    pg_testkit::cluster();
}

#[test]
fn missing_binaries_fail_at_once_with_the_fix() {
    let out = rerun_ignored_test("child_without_binaries")
        .env("PG_BINDIR", "/nonexistent/pg/bin")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the harness must fail, never skip");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "pg-testkit: PG_BINDIR=/nonexistent/pg/bin has no initdb/pg_ctl/postgres: point it at the \
             PostgreSQL server binaries, or unset it (install them with `apt-get install -y postgresql`)"
        ),
        "{text}"
    );
}
