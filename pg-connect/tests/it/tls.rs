//! Every libpq sslmode against a real server with TLS and one without,
//! certificate verification, client certificates required by `pg_hba.conf`,
//! and the exact error a user sees for each thing to fix.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use pg_connect::{ConnectionSettings, SslMode};
use pg_testkit::{cluster, start_cluster, Cluster, ClusterOptions};
use serde_json::{json, Value};

fn settings(config: Value) -> ConnectionSettings {
    let config = singer_core::Config::from_map(config.as_object().unwrap().clone());
    ConnectionSettings::from_config(&config).unwrap()
}

/// A connector config for `database` on `c`, as `user`, by host name `localhost`.
fn config_for(c: &Cluster, database: &str, user: &str, extra: Value) -> Value {
    let mut v = json!({"host": "localhost", "port": c.port(), "user": user, "database": database});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

/// Connects and reports whether the session is encrypted.
fn connect_tls(s: &ConnectionSettings) -> Result<bool, String> {
    let mut client = pg_connect::connect(s, "pg-connect-tls-test").map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

fn err(s: &ConnectionSettings) -> String {
    match connect_tls(s) {
        Ok(tls) => panic!("connection succeeded (tls: {tls}) but must fail"),
        Err(e) => e,
    }
}

/// A server without TLS, shared by the tests of this file.
fn plain_cluster() -> &'static Cluster {
    static PLAIN: OnceLock<Cluster> = OnceLock::new();
    PLAIN.get_or_init(|| {
        start_cluster(ClusterOptions {
            tls: false,
            private_network: false,
            ..Default::default()
        })
    })
}

/// A CA that signed nothing the servers use.
fn unrelated_ca(dir: &Path) -> PathBuf {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=unrelated CA",
            "-keyout",
            "other-ca.key",
            "-out",
            "other-ca.crt",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("other-ca.crt")
}

fn ca() -> String {
    cluster().ca_cert().to_str().unwrap().to_owned()
}

#[test]
fn every_sslmode_against_a_server_with_tls() {
    let db = cluster().create_database("tls_modes");
    let with = |extra: Value| settings(config_for(cluster(), &db.name, "postgres", extra));
    // libpq: disable and allow stay plain when the server accepts plain.
    assert_eq!(
        connect_tls(&with(json!({"ssl_mode": "disable"}))),
        Ok(false)
    );
    assert_eq!(connect_tls(&with(json!({"ssl_mode": "allow"}))), Ok(false));
    assert_eq!(
        connect_tls(&with(json!({}))),
        Ok(true),
        "prefer is the default"
    );
    assert_eq!(connect_tls(&with(json!({"ssl_mode": "prefer"}))), Ok(true));
    // require checks nothing: the test CA is unknown to the system store.
    assert_eq!(connect_tls(&with(json!({"ssl_mode": "require"}))), Ok(true));
    assert_eq!(connect_tls(&with(json!({"ssl": "true"}))), Ok(true));
    for mode in ["verify-ca", "verify-full"] {
        let s = with(json!({"ssl_mode": mode, "ssl_certificate_authority": ca()}));
        assert_eq!(connect_tls(&s), Ok(true), "{mode}");
        // The CA as PEM contents instead of a path.
        let pem = std::fs::read_to_string(cluster().ca_cert()).unwrap();
        let s = with(json!({"ssl_mode": mode, "ssl_certificate_authority": pem}));
        assert_eq!(connect_tls(&s), Ok(true), "{mode} with PEM contents");
    }
    assert_eq!(
        connect_tls(&with(
            json!({"ssl_enable": true, "ssl_certificate_authority": ca()})
        )),
        Ok(true)
    );

    let dir = tempfile::tempdir().unwrap();
    let other = unrelated_ca(dir.path()).to_str().unwrap().to_owned();
    let port = cluster().port();
    let untrusted = format!(
        "cannot connect to PostgreSQL at localhost:{port} (database `{}`, user `postgres`): \
         the server's certificate is not trusted (certificate verify failed: self-signed certificate in certificate chain): \
         set ssl_certificate_authority to the CA that signed it",
        db.name
    );
    for extra in [
        json!({"ssl_mode": "verify-full"}),
        json!({"ssl_mode": "verify-ca"}),
        json!({"ssl_mode": "verify-full", "ssl_certificate_authority": other}),
        // require with a CA behaves as verify-ca, as in libpq.
        json!({"ssl_mode": "require", "ssl_certificate_authority": other}),
    ] {
        assert_eq!(err(&with(extra.clone())), untrusted, "{extra}");
    }
}

#[test]
fn every_sslmode_against_a_server_without_tls() {
    let c = plain_cluster();
    c.client("postgres")
        .batch_execute("SELECT 1")
        .expect("plain cluster up");
    let with = |extra: Value| settings(config_for(c, "postgres", "postgres", extra));
    for mode in ["disable", "allow", "prefer"] {
        assert_eq!(
            connect_tls(&with(json!({"ssl_mode": mode}))),
            Ok(false),
            "{mode}"
        );
    }
    assert_eq!(connect_tls(&with(json!({}))), Ok(false));
    for mode in ["require", "verify-ca", "verify-full"] {
        let s = with(json!({"ssl_mode": mode, "ssl_certificate_authority": ca()}));
        assert_eq!(
            err(&s),
            format!(
                "cannot connect to PostgreSQL at localhost:{} (database `postgres`, user `postgres`): \
                 the server does not offer TLS, but ssl_mode `{mode}` requires it: \
                 turn ssl on in the server's postgresql.conf, or set ssl_mode to prefer",
                c.port()
            )
        );
    }
}

#[test]
fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let db = cluster().create_database("tls_host_name");
    let mut s = settings(config_for(
        cluster(),
        &db.name,
        "postgres",
        json!({"ssl_mode": "verify-full", "ssl_certificate_authority": ca()}),
    ));
    // Reach the server by address while naming a host its certificate does not.
    s.host = "db.example.invalid".into();
    s.hostaddr = Some("127.0.0.1".parse().unwrap());
    assert_eq!(
        err(&s),
        format!(
            "cannot connect to PostgreSQL at db.example.invalid:{} (database `{}`, user `postgres`): \
             the server's certificate does not name the host `db.example.invalid` (verify-full): \
             connect by a name the certificate lists, or use ssl_mode verify-ca",
            cluster().port(),
            db.name
        )
    );
    s.ssl_mode = SslMode::VerifyCa;
    assert_eq!(connect_tls(&s), Ok(true));
}

#[test]
fn prefer_falls_back_to_plain_for_hostnossl_and_unix_sockets_stay_plain() {
    let c = cluster();
    c.client("postgres")
        .batch_execute("CREATE ROLE plainonly LOGIN")
        .unwrap();
    c.prepend_hba(
        "hostnossl all plainonly 127.0.0.1/32 trust\n\
         hostssl all plainonly 127.0.0.1/32 reject",
    );
    let with = |extra: Value| settings(config_for(c, "postgres", "plainonly", extra));
    assert_eq!(connect_tls(&with(json!({"ssl_mode": "prefer"}))), Ok(false));
    // The server's own words, which PostgreSQL 14 changed.
    let ssl = if c.server_version_num() >= 140_000 {
        "SSL encryption"
    } else {
        "SSL on"
    };
    assert_eq!(
        err(&with(json!({"ssl_mode": "require"}))),
        format!(
            "cannot connect to PostgreSQL at localhost:{} (database `postgres`, user `plainonly`): \
             FATAL: pg_hba.conf rejects connection for host \"127.0.0.1\", user \"plainonly\", database \"postgres\", {ssl}: \
             the server's pg_hba.conf has no line that lets user `plainonly` connect to database `postgres` from this address this way: \
             add one (then reload the server), or connect with the TLS setting or role one allows",
            c.port()
        )
    );
    // A Unix socket (a directory as host) never offers TLS: prefer connects plain.
    let socket = settings(config_for(
        c,
        "postgres",
        "postgres",
        json!({"host": c.socket_dir().to_str().unwrap()}),
    ));
    assert_eq!(connect_tls(&socket), Ok(false));
}

#[test]
fn missing_ca_file_says_so() {
    let s = settings(config_for(
        cluster(),
        "postgres",
        "postgres",
        json!({"ssl_mode": "verify-full", "ssl_certificate_authority": "/nonexistent/root.crt"}),
    ));
    assert_eq!(
        err(&s),
        format!(
            "cannot connect to PostgreSQL at localhost:{} (database `postgres`, user `postgres`): \
             ssl_certificate_authority: file \"/nonexistent/root.crt\" does not exist \
             (give the PEM contents or the path of a readable file)",
            cluster().port()
        )
    );
}

#[test]
fn client_certificates_required_by_pg_hba() {
    let c = cluster();
    let db = c.create_database("tls_client_cert");
    c.client("postgres")
        .batch_execute("CREATE ROLE certuser LOGIN; CREATE ROLE otheruser LOGIN")
        .unwrap();
    c.prepend_hba(
        "hostssl all certuser 127.0.0.1/32 cert\n\
         host all certuser 127.0.0.1/32 reject",
    );
    let (crt, key) = c.client_certificate("certuser");
    let (other_crt, other_key) = c.client_certificate("otheruser");
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap();
    let with = |extra: Value| settings(config_for(c, &db.name, "certuser", extra));
    let port = c.port();
    let prefix = format!(
        "cannot connect to PostgreSQL at localhost:{port} (database `{}`, user `certuser`): ",
        db.name
    );

    // Paths, and PEM contents.
    for (cert, key) in [(path(&crt), path(&key)), (read(&crt), read(&key))] {
        let s = with(
            json!({"ssl_mode": "verify-full", "ssl_certificate_authority": ca(),
                            "ssl_client_certificate": cert, "ssl_client_private_key": key}),
        );
        let mut client = pg_connect::connect(&s, "cert-test").unwrap();
        let row = client
            .query_one(
                "SELECT current_user::text, ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "certuser");
        assert!(row.get::<_, bool>(1));
        assert_eq!(row.get::<_, String>(2), "/CN=certuser");
    }
    // allow: plain is refused by pg_hba, so it retries over TLS with the certificate.
    let s = with(
        json!({"ssl_mode": "allow", "ssl_client_certificate": path(&crt),
                        "ssl_client_private_key": path(&key)}),
    );
    assert_eq!(connect_tls(&s), Ok(true));

    // No certificate: the server's own words.
    let s = with(json!({"ssl_mode": "require"}));
    assert_eq!(
        err(&s),
        format!("{prefix}FATAL: connection requires a valid client certificate")
    );
    // A certificate for another role.
    let s = with(
        json!({"ssl_mode": "require", "ssl_client_certificate": path(&other_crt),
                        "ssl_client_private_key": path(&other_key)}),
    );
    assert_eq!(
        err(&s),
        format!("{prefix}FATAL: certificate authentication failed for user \"certuser\"")
    );
    // The key of another certificate.
    let s = with(
        json!({"ssl_mode": "require", "ssl_client_certificate": path(&crt),
                        "ssl_client_private_key": path(&other_key)}),
    );
    assert_eq!(
        err(&s),
        format!("{prefix}ssl_client_private_key does not match ssl_client_certificate")
    );
}

#[test]
fn key_material_never_appears_in_errors() {
    let c = cluster();
    let (crt, _) = c.client_certificate("nobody");
    let secret =
        "-----BEGIN PRIVATE KEY-----\nU0VDUkVUS0VZTUFURVJJQUw=\n-----END PRIVATE KEY-----\n";
    let s = settings(config_for(
        c,
        "postgres",
        "postgres",
        json!({"ssl_mode": "require", "password": "hunter2",
               "ssl_client_certificate": crt.to_str().unwrap(), "ssl_client_private_key": secret}),
    ));
    let e = err(&s);
    assert_eq!(
        e,
        format!(
            "cannot connect to PostgreSQL at localhost:{} (database `postgres`, user `postgres`): \
             ssl_client_private_key is not a PEM private key (PKCS#1, PKCS#8 or SEC1)",
            c.port()
        )
    );
    let dbg = format!("{s:?}");
    for text in [&e, &dbg] {
        assert!(
            !text.contains("U0VDUkVU") && !text.contains("hunter2"),
            "{text}"
        );
    }
}
