//! The connection failures people meet most, each explained with what to fix,
//! against a real server; the password never appears.

use pg_connect::ConnectionSettings;
use pg_testkit::cluster;
use serde_json::{json, Value};

fn settings(config: Value) -> ConnectionSettings {
    let config = singer_core::Config::from_map(config.as_object().unwrap().clone());
    ConnectionSettings::from_config(&config).unwrap()
}

/// The error of connecting as `user` (password `password`) to `database`.
fn failure(host: &str, port: u16, user: &str, password: Option<&str>, database: &str) -> String {
    let mut config = json!({"host": host, "port": port, "user": user, "database": database,
                            "ssl_mode": "disable"});
    if let Some(p) = password {
        config["password"] = json!(p);
    }
    match pg_connect::connect(&settings(config), "pg-connect-diagnosis-test") {
        Ok(_) => panic!("connecting as {user} to {database} succeeded but must fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn refused_unknown_host_wrong_password_and_missing_database_say_what_to_fix() {
    let c = cluster();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_eq!(
        failure("127.0.0.1", closed, "u", Some("hunter2"), "d"),
        format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{closed} (database `d`, user `u`): \
             connection refused (is the server running on 127.0.0.1 and accepting TCP connections on port {closed}?)"
        )
    );
    let unknown = failure("no-such-host.invalid", 5432, "u", Some("hunter2"), "d");
    assert!(
        unknown.starts_with(
            "cannot connect to PostgreSQL at no-such-host.invalid:5432 (database `d`, user `u`): \
             unknown host `no-such-host.invalid`: the name does not resolve ("
        ) && unknown.ends_with("); check host"),
        "{unknown}"
    );

    c.client("postgres")
        .batch_execute(
            "DROP ROLE IF EXISTS diag_pw; CREATE ROLE diag_pw LOGIN PASSWORD 'right-pw';
             DROP ROLE IF EXISTS diag_hba; CREATE ROLE diag_hba LOGIN",
        )
        .unwrap();
    c.prepend_hba(
        "host all diag_pw 127.0.0.1/32 scram-sha-256\n\
         host all diag_hba 127.0.0.1/32 reject",
    );
    let port = c.port();
    let wrong = failure(
        "127.0.0.1",
        port,
        "diag_pw",
        Some("wrong-hunter2"),
        "postgres",
    );
    assert_eq!(
        wrong,
        format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port} (database `postgres`, user `diag_pw`): \
             FATAL: password authentication failed for user \"diag_pw\": \
             check user and password (the server rejected the password for user `diag_pw`)"
        )
    );
    assert_eq!(
        failure("127.0.0.1", port, "diag_pw", None, "postgres"),
        format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port} (database `postgres`, user `diag_pw`): \
             the server asks for a password for user `diag_pw`, but none is set: set password"
        )
    );
    // The server's own words, which PostgreSQL 14 changed.
    let plain = if c.server_version_num() >= 140_000 {
        "no encryption"
    } else {
        "SSL off"
    };
    assert_eq!(
        failure("127.0.0.1", port, "diag_hba", None, "postgres"),
        format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port} (database `postgres`, user `diag_hba`): \
             FATAL: pg_hba.conf rejects connection for host \"127.0.0.1\", user \"diag_hba\", database \"postgres\", {plain}: \
             the server's pg_hba.conf has no line that lets user `diag_hba` connect to database `postgres` from this address this way: \
             add one (then reload the server), or connect with the TLS setting or role one allows"
        )
    );
    assert_eq!(
        failure("127.0.0.1", port, "postgres", None, "no_such_db"),
        format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port} (database `no_such_db`, user `postgres`): \
             FATAL: database \"no_such_db\" does not exist: check database: `no_such_db` does not exist on 127.0.0.1:{port} \
             (list the databases with `psql -l` or `SELECT datname FROM pg_database`)"
        )
    );
    assert_eq!(
        failure("127.0.0.1", port, "no_such_role", None, "postgres"),
        format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port} (database `no_such_role`, user `no_such_role`): \
             FATAL: role \"no_such_role\" does not exist: check user: no role `no_such_role` exists on the server"
        )
        .replace("database `no_such_role`", "database `postgres`")
    );
    assert!(!wrong.contains("hunter2"));
}
