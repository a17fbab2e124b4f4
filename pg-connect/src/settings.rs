//! Connection settings, shared by both binaries, defined once for parsing and `--about`.

use std::net::IpAddr;

use singer_core::{Config, ConfigError, Setting, SettingKind};

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
const USER: Setting = Setting::new("user", SettingKind::String, "User name to connect as.")
    .required()
    .aliases(&["username"]);
const PASSWORD: Setting = Setting::new(
    "password",
    SettingKind::Password,
    "Password of `user`. Never logged.",
);
const DATABASE: Setting = Setting::new("database", SettingKind::String, "Database to connect to.")
    .required()
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

    fn parse(s: &str) -> SslMode {
        match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => SslMode::Prefer,
        }
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
        // Only a mode the config sets outranks ssl_enable and ssl, not its default.
        let explicit_mode = match config.raw(&SSL_MODE) {
            Some(_) => config.string(&SSL_MODE)?,
            None => None,
        };
        let ssl_mode = match (
            explicit_mode,
            config.boolean(&SSL_ENABLE)?,
            config.boolean(&SSL_LEGACY)?,
        ) {
            (Some(m), _, _) => SslMode::parse(&m),
            (None, Some(true), _) => SslMode::VerifyFull,
            (None, Some(false), _) => SslMode::Disable,
            (None, None, Some(true)) => SslMode::Require,
            (None, None, _) => SslMode::Prefer,
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
        Ok(ConnectionSettings {
            host: config.string_or_default(&HOST)?,
            port: port(config, &PORT)?,
            hostaddr: None,
            user: config.string(&USER)?.unwrap_or_default(),
            password: config.string(&PASSWORD)?,
            database: config.string(&DATABASE)?.unwrap_or_default(),
            ssl_mode,
            ssl_ca: non_empty(&SSL_CA)?,
            ssl_client_certificate: non_empty(&SSL_CERT)?,
            ssl_client_private_key: non_empty(&SSL_KEY)?,
            ssh_tunnel,
            connect_timeout_secs: 30,
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
}
