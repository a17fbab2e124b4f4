//! Connection settings, shared by both binaries, defined once for parsing and `--about`.

use std::net::IpAddr;

use singer_core::{Config, ConfigError, Setting, SettingKind};

mod url;

const HOST: Setting = Setting::new(
    "host",
    SettingKind::String,
    "Hostname or IP address of the PostgreSQL server.",
)
.default_text("localhost");
const PORT: Setting = Setting::new(
    "port",
    SettingKind::Integer,
    "Port of the PostgreSQL server (a number or a numeric string).",
)
.default_integer(5432);
const USER: Setting = Setting::new(
    "user",
    SettingKind::String,
    "User name to connect as. Required, unless `sqlalchemy_url` names it.",
)
.aliases(&["username"]);
const PASSWORD: Setting = Setting::new(
    "password",
    SettingKind::Password,
    "Password of `user`. Never logged.",
);
const DATABASE: Setting = Setting::new(
    "database",
    SettingKind::String,
    "Database to connect to. Required, unless `sqlalchemy_url` names it.",
)
.aliases(&["dbname"]);
const SSL_ENABLE: Setting = Setting::new(
    "ssl_enable",
    SettingKind::Boolean,
    "Use TLS. `true` alone means `ssl_mode: verify-full`, `false` alone means `disable`; an explicit `ssl_mode` always wins.",
);
const SSL_MODE: Setting = Setting::new(
    "ssl_mode",
    SettingKind::String,
    "libpq's sslmode: disable, allow, prefer, require, verify-ca or verify-full. `require` with a certificate authority behaves as verify-ca, as in libpq. Unset: from `ssl_enable` or `ssl` when either is set, else prefer.",
)
.default_text("prefer")
.aliases(&["sslmode"])
.choices(&["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]);
const SSL_LEGACY: Setting = Setting::new(
    "ssl",
    SettingKind::Boolean,
    "pipelinewise's spelling: `true` (or `\"true\"`) means `ssl_mode: require`; `ssl_mode` and `ssl_enable` win over it.",
);
const SSL_CA: Setting = Setting::new(
    "ssl_certificate_authority",
    SettingKind::String,
    "Certificate authority to verify the server with: PEM contents or a file path.",
)
.aliases(&["sslrootcert"]);
const SSL_CERT: Setting = Setting::new(
    "ssl_client_certificate",
    SettingKind::String,
    "Client certificate for `cert` authentication: PEM contents or a file path.",
)
.aliases(&["sslcert"]);
const SSL_KEY: Setting = Setting::new(
    "ssl_client_private_key",
    SettingKind::Password,
    "Private key of the client certificate: PEM contents or a file path. Never logged.",
)
.aliases(&["sslkey"]);
const SSH_ENABLE: Setting = Setting::new(
    "ssh_tunnel.enable",
    SettingKind::Boolean,
    "Connect through an SSH tunnel.",
)
.default_boolean(false);
const SSH_HOST: Setting = Setting::new("ssh_tunnel.host", SettingKind::String, "SSH bastion host.");
const SSH_PORT: Setting =
    Setting::new("ssh_tunnel.port", SettingKind::Integer, "SSH bastion port.").default_integer(22);
const SSH_USER: Setting = Setting::new(
    "ssh_tunnel.username",
    SettingKind::String,
    "User name on the bastion.",
);
const SSH_KEY: Setting = Setting::new(
    "ssh_tunnel.private_key",
    SettingKind::Password,
    "Private key for the bastion: PEM contents or a file path. Never logged.",
);
const SSH_KEY_PASSWORD: Setting = Setting::new(
    "ssh_tunnel.private_key_password",
    SettingKind::Password,
    "Passphrase of the private key, if it has one.",
);
const SSH_HOST_KEY: Setting = Setting::new(
    "ssh_tunnel.host_key",
    SettingKind::String,
    "Pin the bastion's host key (`ssh-ed25519 AAAA...`, or a known_hosts line); unset: trust on first use.",
);
const SSH_KNOWN_HOSTS: Setting = Setting::new(
    "ssh_tunnel.known_hosts_file",
    SettingKind::String,
    "Where bastion host keys trusted on first use are remembered (default `$XDG_STATE_HOME/singer-postgres-rs/known_hosts`, else `~/.local/state/singer-postgres-rs/known_hosts`).",
);

const URL: Setting = Setting::new(
    "sqlalchemy_url",
    SettingKind::Password,
    "The connection as a URL (MeltanoLabs' setting): `postgresql://user:password@host:port/database?sslmode=require` (also `postgres://` and SQLAlchemy's `postgresql+psycopg2://`; percent-encode reserved characters), with the query parameters sslmode, sslrootcert, sslcert, sslkey, application_name and connect_timeout. What the URL names wins over the separate settings (a warning names each one it overrides); what it leaves out comes from them (e.g. `password`). Never logged.",
)
.aliases(&["url"]);
const CONNECT_TIMEOUT: Setting = Setting::new(
    "connect_timeout",
    SettingKind::Integer,
    "Seconds to wait for the TCP connection to the server (and to the SSH bastion) before giving up.",
)
.default_integer(30);
const APPLICATION_NAME: Setting = Setting::new(
    "application_name",
    SettingKind::String,
    "The `application_name` the sessions report (in pg_stat_activity and the server log). Default: the binary's name, tap-postgres-rs or target-postgres-rs.",
);

/// Every connection setting, for `--about`, `--help` and the README.
pub const CONNECTION_SETTINGS: &[Setting] = &[
    HOST,
    PORT,
    USER,
    PASSWORD,
    DATABASE,
    SSL_ENABLE,
    SSL_MODE,
    SSL_LEGACY,
    SSL_CA,
    SSL_CERT,
    SSL_KEY,
    SSH_ENABLE,
    SSH_HOST,
    SSH_PORT,
    SSH_USER,
    SSH_KEY,
    SSH_KEY_PASSWORD,
    SSH_HOST_KEY,
    SSH_KNOWN_HOSTS,
    URL,
    CONNECT_TIMEOUT,
    APPLICATION_NAME,
];

/// libpq's sslmode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// libpq's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// SSH tunnel settings (the nested `ssh_tunnel` object as Meltano writes it).
#[derive(Clone, PartialEq, Eq)]
pub struct SshTunnelSettings {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub private_key: Option<String>,
    pub private_key_password: Option<String>,
    pub host_key: Option<String>,
    /// Trust-on-first-use file; `None`: the default location.
    pub known_hosts_file: Option<String>,
}

impl std::fmt::Debug for SshTunnelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTunnelSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Where and how to connect. `Debug` never shows secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    pub host: String,
    pub port: u16,
    /// Connect to this address while still checking TLS against `host`
    /// (set when a tunnel forwards a local port).
    pub hostaddr: Option<IpAddr>,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub ssl_mode: SslMode,
    pub ssl_ca: Option<String>,
    pub ssl_client_certificate: Option<String>,
    pub ssl_client_private_key: Option<String>,
    pub ssh_tunnel: Option<SshTunnelSettings>,
    pub connect_timeout_secs: u64,
    /// `None`: the binary's name (see [`crate::Connector::new`]).
    pub application_name: Option<String>,
}

impl std::fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssh_tunnel", &self.ssh_tunnel)
            .finish_non_exhaustive()
    }
}

fn port(config: &Config, s: &Setting) -> Result<u16, ConfigError> {
    let p = config.integer_or_default(s)?;
    u16::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ConfigError::Invalid {
            key: s.name.into(),
            problem: format!("must be a port number (1-65535), not {p}"),
        })
}

impl ConnectionSettings {
    /// Reads the connection settings from a connector config.
    pub fn from_config(config: &Config) -> Result<ConnectionSettings, ConfigError> {
        let url = match config.string(&URL)?.filter(|u| !u.trim().is_empty()) {
            Some(text) => url::parse(&text).map_err(|problem| ConfigError::Invalid {
                key: URL.name.into(),
                problem,
            })?,
            None => url::ConnectionUrl::default(),
        };
        // Only a mode the config sets outranks ssl_enable and ssl, not its default.
        let explicit_mode = match config.raw(&SSL_MODE) {
            Some(_) => config.string(&SSL_MODE)?,
            None => None,
        };
        let url_mode = match &url.ssl_mode {
            Some(m) => Some(SslMode::parse(m).ok_or_else(|| ConfigError::Invalid {
                key: URL.name.into(),
                problem: format!(
                    "has sslmode={m:?}, which is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ),
            })?),
            None => None,
        };
        let ssl_mode = match (
            url_mode,
            explicit_mode,
            config.boolean(&SSL_ENABLE)?,
            config.boolean(&SSL_LEGACY)?,
        ) {
            (Some(m), _, _, _) => m,
            // The setting's choices already refused anything else.
            (None, Some(m), _, _) => SslMode::parse(&m).unwrap_or(SslMode::Prefer),
            (None, None, Some(true), _) => SslMode::VerifyFull,
            (None, None, Some(false), _) => SslMode::Disable,
            (None, None, None, Some(true)) => SslMode::Require,
            (None, None, None, _) => SslMode::Prefer,
        };
        let ssh_tunnel = if config.boolean_or_default(&SSH_ENABLE)? {
            let need = |s: &Setting| {
                config
                    .string(s)?
                    .filter(|v| !v.is_empty())
                    .ok_or(ConfigError::Missing { key: s.name.into() })
            };
            Some(SshTunnelSettings {
                host: need(&SSH_HOST)?,
                port: port(config, &SSH_PORT)?,
                username: need(&SSH_USER)?,
                private_key: config.string(&SSH_KEY)?.filter(|v| !v.is_empty()),
                private_key_password: config.string(&SSH_KEY_PASSWORD)?.filter(|v| !v.is_empty()),
                host_key: config.string(&SSH_HOST_KEY)?.filter(|v| !v.is_empty()),
                known_hosts_file: config.string(&SSH_KNOWN_HOSTS)?.filter(|v| !v.is_empty()),
            })
        } else {
            None
        };
        let non_empty = |s: &Setting| -> Result<Option<String>, ConfigError> {
            Ok(config.string(s)?.filter(|v| !v.trim().is_empty()))
        };
        // What the URL names wins (as in MeltanoLabs' tap); a separate setting
        // it overrides is worth a warning, since one of the two is stale.
        let pick = |s: &Setting, from_url: Option<String>| -> Result<Option<String>, ConfigError> {
            let explicit = match config.raw(s) {
                Some(_) => non_empty(s)?,
                None => None,
            };
            match (from_url, explicit) {
                (Some(u), Some(e)) => {
                    if u != e {
                        if s.kind == SettingKind::Password {
                            tracing::warn!(
                                "`{}` is set and so is a {} in `sqlalchemy_url`: the URL's is used",
                                s.name,
                                s.name
                            );
                        } else {
                            tracing::warn!(
                                "`{}` is {e:?} but `sqlalchemy_url` says {u:?}: the URL's is used",
                                s.name
                            );
                        }
                    }
                    Ok(Some(u))
                }
                (Some(u), None) => Ok(Some(u)),
                (None, explicit) => Ok(explicit),
            }
        };
        let required = |s: &Setting, from_url: Option<String>| -> Result<String, ConfigError> {
            pick(s, from_url)?.ok_or(ConfigError::Missing { key: s.name.into() })
        };
        let user = required(&USER, url.user.clone())?;
        let database = required(&DATABASE, url.database.clone())?;
        let host = match pick(&HOST, url.host.clone())? {
            Some(h) => h,
            None => config.string_or_default(&HOST)?,
        };
        let port = match url.port {
            Some(p) => {
                if config.raw(&PORT).is_some() && self::port(config, &PORT)? != p {
                    tracing::warn!(
                        "`port` is {} but `sqlalchemy_url` says {p}: the URL's is used",
                        self::port(config, &PORT)?
                    );
                }
                p
            }
            None => self::port(config, &PORT)?,
        };
        let connect_timeout_secs = match url.connect_timeout_secs {
            Some(t) => t,
            None => {
                let t = config.integer_or_default(&CONNECT_TIMEOUT)?;
                u64::try_from(t).ok().ok_or_else(|| ConfigError::Invalid {
                    key: CONNECT_TIMEOUT.name.into(),
                    problem: format!("must be a number of seconds, not {t}"),
                })?
            }
        };
        if connect_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: CONNECT_TIMEOUT.name.into(),
                problem: "must be at least 1 second (0 would give up at once)".into(),
            });
        }
        Ok(ConnectionSettings {
            host,
            port,
            hostaddr: None,
            user,
            password: match url.password.clone() {
                Some(p) => pick(&PASSWORD, Some(p))?,
                // An empty password is still a password (trust setups send one).
                None => config.string(&PASSWORD)?,
            },
            database,
            ssl_mode,
            ssl_ca: pick(&SSL_CA, url.ssl_ca.clone())?,
            ssl_client_certificate: pick(&SSL_CERT, url.ssl_client_certificate.clone())?,
            ssl_client_private_key: pick(&SSL_KEY, url.ssl_client_private_key.clone())?,
            ssh_tunnel,
            connect_timeout_secs,
            application_name: pick(&APPLICATION_NAME, url.application_name.clone())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(v: serde_json::Value) -> Result<ConnectionSettings, ConfigError> {
        ConnectionSettings::from_config(&Config::from_map(v.as_object().unwrap().clone()))
    }

    #[test]
    fn ssl_mode_resolution() {
        let base = json!({"user": "u", "database": "d"});
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            settings(v).unwrap().ssl_mode
        };
        assert_eq!(with(json!({})), SslMode::Prefer);
        assert_eq!(with(json!({"ssl_enable": true})), SslMode::VerifyFull);
        assert_eq!(with(json!({"ssl_enable": false})), SslMode::Disable);
        assert_eq!(
            with(json!({"ssl_enable": true, "ssl_mode": "require"})),
            SslMode::Require
        );
        assert_eq!(with(json!({"ssl": "true"})), SslMode::Require);
        assert_eq!(with(json!({"sslmode": "verify-ca"})), SslMode::VerifyCa);
    }

    #[test]
    fn reads_aliases_and_hides_secrets() {
        let s = settings(json!({"host": "db", "port": "6543", "user": "u", "password": "hunter2", "dbname": "d",
                                "ssh_tunnel": {"enable": true, "host": "b", "username": "me", "private_key": "KEY"}}))
        .unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.database.as_str()),
            ("db", 6543, "d")
        );
        let t = s.ssh_tunnel.as_ref().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("b", 22));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("KEY"), "{dbg}");
        assert_eq!(
            settings(json!({"database": "d"})).unwrap_err().to_string(),
            "config: `user` is required"
        );
        assert_eq!(
            settings(json!({"user": "u", "database": "d", "port": 70000}))
                .unwrap_err()
                .to_string(),
            "config: `port` must be a port number (1-65535), not 70000"
        );
        assert_eq!(
            settings(json!({"user": "u", "database": "d", "ssh_tunnel": {"enable": "true"}}))
                .unwrap_err()
                .to_string(),
            "config: `ssh_tunnel.host` is required"
        );
    }

    #[test]
    fn url_fills_and_wins() {
        let s = settings(json!({
            "sqlalchemy_url": "postgresql+psycopg2://loader:s3cr%2Ft@db.example.com:6543/shop?sslmode=require&application_name=nightly&connect_timeout=5",
            "host": "stale-host", "port": 5432, "ssl_mode": "disable",
        }))
        .unwrap();
        assert_eq!(
            (
                s.host.as_str(),
                s.port,
                s.user.as_str(),
                s.database.as_str()
            ),
            ("db.example.com", 6543, "loader", "shop")
        );
        assert_eq!(s.password.as_deref(), Some("s3cr/t"));
        assert_eq!(s.ssl_mode, SslMode::Require);
        assert_eq!(s.application_name.as_deref(), Some("nightly"));
        assert_eq!(s.connect_timeout_secs, 5);
        // What the URL leaves out comes from the separate settings.
        let s = settings(json!({"url": "postgres://loader@db/shop", "password": "pw",
                                "connect_timeout": "9", "application_name": "me"}))
        .unwrap();
        assert_eq!(
            (s.password.as_deref(), s.port, s.connect_timeout_secs),
            (Some("pw"), 5432, 9)
        );
        assert_eq!(s.application_name.as_deref(), Some("me"));
        let plain = settings(json!({"user": "u", "database": "d"})).unwrap();
        assert_eq!(
            (plain.connect_timeout_secs, plain.application_name),
            (30, None)
        );
        // Without user or database anywhere, the old message.
        assert_eq!(
            settings(json!({"url": "postgresql://db/shop"}))
                .unwrap_err()
                .to_string(),
            "config: `user` is required"
        );
    }

    #[test]
    fn a_wrong_url_never_shows_its_password() {
        for url in [
            "postgresql://loader:hunter2@db:port/shop",
            "mysql://loader:hunter2@db/shop",
            "postgresql://loader:hunter2@db/shop?sslmode=sometimes",
            "postgresql://loader:hunter2@db/shop?password=x",
        ] {
            let err = settings(json!({ "sqlalchemy_url": url }))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("config: `sqlalchemy_url` "), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert_eq!(
            settings(json!({"url": "postgresql://u:hunter2@db/shop?sslmode=sometimes"}))
                .unwrap_err()
                .to_string(),
            "config: `sqlalchemy_url` has sslmode=\"sometimes\", which is not one of disable, allow, prefer, require, verify-ca, verify-full"
        );
        let s = settings(json!({"url": "postgresql://u:hunter2@db/shop"})).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(
            settings(json!({"user": "u", "database": "d", "connect_timeout": 0}))
                .unwrap_err()
                .to_string(),
            "config: `connect_timeout` must be at least 1 second (0 would give up at once)"
        );
    }
}
