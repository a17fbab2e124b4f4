//! What a failed connection attempt means for the person running the binary:
//! the failures met most (nothing listening, unknown host, no answer, wrong
//! password, unknown database or role, a `pg_hba.conf` refusal), each told
//! with the setting or server file to fix. Never shows the password.

use std::error::Error as _;
use std::io::ErrorKind;

use postgres::error::SqlState;

use crate::settings::ConnectionSettings;

/// The explanation of `e`, when it is one of the failures this knows;
/// `port` is the configured one (not a tunnel's local port).
pub(crate) fn explain(e: &postgres::Error, s: &ConnectionSettings, port: u16) -> Option<String> {
    if let Some(db) = e.as_db_error() {
        let said = crate::describe(e);
        let hint = match db.code() {
            c if *c == SqlState::INVALID_PASSWORD => format!(
                "check user and password (the server rejected the password for user `{}`)",
                s.user
            ),
            c if *c == SqlState::INVALID_CATALOG_NAME => format!(
                "check database: `{}` does not exist on {}:{port} (list the databases with `psql -l` or `SELECT datname FROM pg_database`)",
                s.database, s.host
            ),
            c if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && db.message().contains("pg_hba.conf") =>
            {
                format!(
                    "the server's pg_hba.conf has no line that lets user `{}` connect to database `{}` from this address this way: add one (then reload the server), or connect with the TLS setting or role one allows",
                    s.user, s.database
                )
            }
            c if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && db.message().starts_with("role ") =>
            {
                format!("check user: no role `{}` exists on the server", s.user)
            }
            _ => return None,
        };
        return Some(format!("{said}: {hint}"));
    }
    if crate::describe(e).contains("password missing") {
        return Some(format!(
            "the server asks for a password for user `{}`, but none is set: set password",
            s.user
        ));
    }
    let mut next = e.source();
    let io = loop {
        let cause = next?;
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            break io;
        }
        next = cause.source();
    };
    let host = &s.host;
    match io.kind() {
        ErrorKind::ConnectionRefused => Some(format!(
            "connection refused (is the server running on {host} and accepting TCP connections on port {port}?)"
        )),
        ErrorKind::TimedOut => Some(format!(
            "no answer from {host}:{port} within {} s (check host and port, and that no firewall drops the connection)",
            s.connect_timeout_secs
        )),
        _ if io.to_string().contains("lookup address") => Some(format!(
            "unknown host `{host}`: the name does not resolve ({io}); check host"
        )),
        _ => None,
    }
}
