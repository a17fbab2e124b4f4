//! Connecting to PostgreSQL, shared by the tap and the target: the connection
//! settings, libpq's `sslmode`s over OpenSSL, a session pinned to stable text
//! output, and identifier/literal quoting.
//!
//! ```no_run
//! use singer_core::Config;
//! let config = Config::from_files(&["tap.json"])?;
//! let settings = pg_connect::ConnectionSettings::from_config(&config)?;
//! // One connector per process: it owns the SSH tunnel, when there is one.
//! let connector = pg_connect::Connector::new(settings, "tap-postgres-rs")?;
//! let mut client = connector.connect()?;
//! let n: i64 = client.query_one("SELECT count(*) FROM pg_class", &[])?.get(0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod quote;
mod settings;
mod tls;

pub use quote::{quote_ident, quote_literal, quote_qualified};
pub use settings::{ConnectionSettings, SshTunnelSettings, SslMode, CONNECTION_SETTINGS};

use std::time::Duration;

/// Connecting failed. The message names the server and database, never the password.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to PostgreSQL at {host}:{port} (database `{database}`, user `{user}`): {reason}")]
pub struct ConnectError {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub reason: String,
}

/// Statements run on every new session so that the text form of every value is
/// the same whatever the server's or role's defaults: UTC, ISO dates, ISO 8601
/// intervals, shortest exact floats, hex bytea.
pub const SESSION_SETUP: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
    SET IntervalStyle = 'iso_8601'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
    SET standard_conforming_strings = on; SET client_encoding = 'UTF8'";

/// Opens connections for one process. Open it once and call
/// [`Connector::connect`] for every session: a tunnel, when configured, is
/// shared by all of them and closed when the connector is dropped.
#[derive(Debug)]
pub struct Connector {
    settings: ConnectionSettings,
    application_name: String,
}

impl Connector {
    pub fn new(
        settings: ConnectionSettings,
        application_name: &str,
    ) -> Result<Connector, ConnectError> {
        Ok(Connector {
            settings,
            application_name: application_name.to_owned(),
        })
    }

    /// The settings connections use (with `hostaddr` set when tunnelled).
    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }

    /// A new session, pinned (see [`SESSION_SETUP`]).
    pub fn connect(&self) -> Result<postgres::Client, ConnectError> {
        connect(&self.settings, &self.application_name)
    }
}

/// Opens a connection with the session pinned (see [`SESSION_SETUP`]).
/// Prefer [`Connector`], which also handles SSH tunnels.
pub fn connect(
    settings: &ConnectionSettings,
    application_name: &str,
) -> Result<postgres::Client, ConnectError> {
    let fail = |reason: String| ConnectError {
        host: settings.host.clone(),
        port: settings.port,
        database: settings.database.clone(),
        user: settings.user.clone(),
        reason,
    };
    let mut config = postgres::Config::new();
    config
        .host(&settings.host)
        .port(settings.port)
        .user(&settings.user)
        .dbname(&settings.database)
        .application_name(application_name)
        .connect_timeout(Duration::from_secs(settings.connect_timeout_secs));
    if let Some(addr) = &settings.hostaddr {
        config.hostaddr(*addr);
    }
    if let Some(p) = &settings.password {
        config.password(p);
    }
    let mut client = tls::connect(&config, settings).map_err(fail)?;
    client
        .batch_execute(SESSION_SETUP)
        .map_err(|e| fail(format!("session set-up failed: {}", describe(&e))))?;
    Ok(client)
}

/// The whole error chain of a postgres error in one line (its `Display` alone
/// often says just "db error").
pub fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" (detail: {d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!(" (hint: {h})"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}
