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

mod diagnosis;
mod quote;
mod settings;
mod tls;
mod tunnel;

pub use quote::{quote_ident, quote_literal, quote_qualified};
pub use settings::{ConnectionSettings, SshTunnelSettings, SslMode, CONNECTION_SETTINGS};
pub use tls::{explain as explain_tls_failure, openssl_connector, TlsError};
pub use tunnel::TunnelError;

use std::time::Duration;

/// Connecting failed. The message names the server and database, never the password.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to PostgreSQL at {host}:{port} (database `{database}`, user `{user}`): {reason}")]
pub struct ConnectError {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    // Boxed: keeps `Result<_, ConnectError>` small.
    #[source]
    pub reason: Box<ConnectFailure>,
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server took the session, but [`SESSION_SETUP`] failed.
    #[error("session set-up failed: {0}")]
    SessionSetup(String),
    /// What ssh says about a connection through the tunnel that failed.
    #[error("{0}")]
    ThroughTunnel(String),
}

/// Statements run on every new session so that the text form of every value is
/// the same whatever the server's or role's defaults: UTC, ISO dates, ISO 8601
/// intervals, shortest exact floats, hex bytea.
pub const SESSION_SETUP: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
    SET IntervalStyle = 'iso_8601'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
    SET standard_conforming_strings = on; SET client_encoding = 'UTF8'";

/// Opens connections for one process. Open it once and call
/// [`Connector::connect`] for every session: a tunnel, when configured, is
/// opened here, shared by all of them, and closed when the connector is
/// dropped (or by a watcher, when the process dies without dropping it).
#[derive(Debug)]
pub struct Connector {
    settings: ConnectionSettings,
    /// The configured port, for messages (`settings.port` is the tunnel's).
    port: u16,
    application_name: String,
    tunnel: Option<tunnel::Tunnel>,
}

impl Connector {
    /// `application_name` is what sessions report unless the settings name
    /// one of their own (the binary's name, by convention).
    pub fn new(
        settings: ConnectionSettings,
        application_name: &str,
    ) -> Result<Connector, ConnectError> {
        let port = settings.port;
        let application_name = settings
            .application_name
            .clone()
            .unwrap_or_else(|| application_name.to_owned());
        let mut settings = settings;
        let tunnel = match &settings.ssh_tunnel {
            Some(ssh) => {
                let t = tunnel::Tunnel::open(
                    ssh,
                    &settings.host,
                    settings.port,
                    Duration::from_secs(settings.connect_timeout_secs),
                )
                .map_err(|e| ConnectError {
                    host: settings.host.clone(),
                    port,
                    database: settings.database.clone(),
                    user: settings.user.clone(),
                    reason: Box::new(e.into()),
                })?;
                // TLS still checks `host`, the database's real name.
                settings.hostaddr = Some(std::net::IpAddr::from([127, 0, 0, 1]));
                settings.port = t.local_port();
                Some(t)
            }
            None => None,
        };
        Ok(Connector {
            settings,
            port,
            application_name,
            tunnel,
        })
    }

    /// The settings connections use (with `hostaddr` 127.0.0.1 and the
    /// forwarded local port when tunnelled).
    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }

    /// The `application_name` sessions report.
    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    /// The configured port (for messages: [`Connector::settings`] has the
    /// tunnel's local one when tunnelled).
    pub fn configured_port(&self) -> u16 {
        self.port
    }

    /// Whether connections go through an SSH tunnel.
    pub fn is_tunnelled(&self) -> bool {
        self.tunnel.is_some()
    }

    /// A new session, pinned (see [`SESSION_SETUP`]).
    pub fn connect(&self) -> Result<postgres::Client, ConnectError> {
        let mark = self.tunnel.as_ref().map(|t| t.mark()).unwrap_or(0);
        connect_showing(&self.settings, &self.application_name, self.port).map_err(|mut e| {
            // A failure at the far end of the tunnel shows here only as a
            // reset connection: ssh knows the real reason.
            if let Some(why) = self.tunnel.as_ref().and_then(|t| t.diagnose(mark)) {
                e.reason = Box::new(ConnectFailure::ThroughTunnel(why));
            }
            e
        })
    }
}

/// Opens a connection with the session pinned (see [`SESSION_SETUP`]).
/// Prefer [`Connector`], which also handles SSH tunnels.
pub fn connect(
    settings: &ConnectionSettings,
    application_name: &str,
) -> Result<postgres::Client, ConnectError> {
    let name = settings
        .application_name
        .as_deref()
        .unwrap_or(application_name);
    connect_showing(settings, name, settings.port)
}

/// [`connect`], naming `shown_port` in errors (the configured one, not a tunnel's).
fn connect_showing(
    settings: &ConnectionSettings,
    application_name: &str,
    shown_port: u16,
) -> Result<postgres::Client, ConnectError> {
    let fail = |reason: ConnectFailure| ConnectError {
        host: settings.host.clone(),
        port: shown_port,
        database: settings.database.clone(),
        user: settings.user.clone(),
        reason: Box::new(reason),
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
    let mut client = tls::connect(&config, settings, shown_port).map_err(|e| fail(e.into()))?;
    client
        .batch_execute(SESSION_SETUP)
        .map_err(|e| fail(ConnectFailure::SessionSetup(describe(&e))))?;
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
    singer_core::cli::chain_text(e)
}

#[cfg(test)]
mod tests {
    fn shareable<T: Send + Sync>() {}

    #[test]
    fn a_connector_can_be_shared_between_threads() {
        // The tap opens sessions from several threads through one tunnel.
        shareable::<super::Connector>();
    }
}
