//! The URL form of the connection settings: libpq's
//! `postgresql://user:password@host:port/database?sslmode=...` and
//! SQLAlchemy's `postgresql+psycopg2://...` (MeltanoLabs' `sqlalchemy_url`).
//!
//! Errors describe the problem without echoing the URL: it may hold the password.

use percent_encoding::percent_decode_str;

/// What a connection URL sets; `None`: the URL leaves it to the other settings.
#[derive(Default, PartialEq, Eq)]
pub(super) struct ConnectionUrl {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
    pub ssl_mode: Option<String>,
    pub ssl_ca: Option<String>,
    pub ssl_client_certificate: Option<String>,
    pub ssl_client_private_key: Option<String>,
    pub application_name: Option<String>,
    pub connect_timeout_secs: Option<u64>,
}

impl std::fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// The query parameters a URL may carry (libpq's names).
const PARAMETERS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "connect_timeout",
];

fn decode(part: &str, what: &str) -> Result<String, String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("has a {what} that is not UTF-8 once percent-decoded"))
}

/// Parses a connection URL; the error is the problem, to follow the setting's name.
pub(super) fn parse(url: &str) -> Result<ConnectionUrl, String> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(
            "must look like postgresql://user:password@host:port/database (no `://` found)".into(),
        );
    };
    let scheme = scheme.to_ascii_lowercase();
    let dialect = scheme.split_once('+').map_or(scheme.as_str(), |(d, _)| d);
    if dialect != "postgresql" && dialect != "postgres" {
        return Err(format!(
            "must start with postgresql:// (or postgres://, postgresql+psycopg2://), not {scheme}://"
        ));
    }
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i + 1..]),
        None => (before_query, ""),
    };
    let mut out = ConnectionUrl::default();
    // The last `@`: a password may hold an unencoded one.
    let host_port = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            out.user = Some(decode(user, "user name")?).filter(|u| !u.is_empty());
            out.password = password.map(|p| decode(p, "password")).transpose()?;
            host_port
        }
        None => authority,
    };
    if host_port.contains(',') {
        return Err("names several hosts, and only one is supported".into());
    }
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("has an IPv6 address without its closing `]`")?;
        (addr, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    out.host = Some(decode(host, "host")?).filter(|h| !h.is_empty());
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.port = Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("has port {p:?}, which is not a port number (1-65535)"))?,
        );
    }
    out.database = Some(decode(path, "database name")?).filter(|d| !d.is_empty());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value, "query parameter value")?;
        let slot = match key {
            "sslmode" => &mut out.ssl_mode,
            "sslrootcert" => &mut out.ssl_ca,
            "sslcert" => &mut out.ssl_client_certificate,
            "sslkey" => &mut out.ssl_client_private_key,
            "application_name" => &mut out.application_name,
            "connect_timeout" => {
                out.connect_timeout_secs = Some(value.trim().parse().map_err(|_| {
                    format!("has connect_timeout={value:?}, which is not a whole number of seconds")
                })?);
                continue;
            }
            other => {
                return Err(format!(
                    "has the query parameter `{other}`, which is not supported (supported: {})",
                    PARAMETERS.join(", ")
                ))
            }
        };
        *slot = Some(value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libpq_and_sqlalchemy_forms() {
        let u = parse(
            "postgresql+psycopg2://lo%40der:p%40ss:w@rd@db.example.com:6543/shop%20db?sslmode=verify-full&application_name=nightly%20load&connect_timeout=7",
        )
        .unwrap();
        assert_eq!(u.user.as_deref(), Some("lo@der"));
        assert_eq!(u.password.as_deref(), Some("p@ss:w@rd"));
        assert_eq!(u.host.as_deref(), Some("db.example.com"));
        assert_eq!(u.port, Some(6543));
        assert_eq!(u.database.as_deref(), Some("shop db"));
        assert_eq!(u.ssl_mode.as_deref(), Some("verify-full"));
        assert_eq!(u.application_name.as_deref(), Some("nightly load"));
        assert_eq!(u.connect_timeout_secs, Some(7));

        let v6 = parse("postgres://[::1]:5433/d").unwrap();
        assert_eq!(
            (v6.host.as_deref(), v6.port, v6.user, v6.password),
            (Some("::1"), Some(5433), None, None)
        );
        // Everything is optional: the other settings fill the gaps.
        assert_eq!(parse("postgresql://").unwrap(), ConnectionUrl::default());
        let u = parse("postgresql://me@h").unwrap();
        assert_eq!((u.user.as_deref(), u.database), (Some("me"), None));
    }

    #[test]
    fn errors_never_show_the_password() {
        let cases = [
            (
                "mysql://u:hunter2@h/d",
                "must start with postgresql:// (or postgres://, postgresql+psycopg2://), not mysql://",
            ),
            (
                "u:hunter2@h/d",
                "must look like postgresql://user:password@host:port/database (no `://` found)",
            ),
            (
                "postgresql://u:hunter2@h:99999/d",
                "has port \"99999\", which is not a port number (1-65535)",
            ),
            (
                "postgresql://u:hunter2@h/d?sslmod=require",
                "has the query parameter `sslmod`, which is not supported (supported: sslmode, sslrootcert, sslcert, sslkey, application_name, connect_timeout)",
            ),
            (
                "postgresql://u:hunter2@h1,h2/d",
                "names several hosts, and only one is supported",
            ),
            (
                "postgresql://u:hunter2%FF@h/d",
                "has a password that is not UTF-8 once percent-decoded",
            ),
        ];
        for (url, want) in cases {
            let err = parse(url).unwrap_err();
            assert_eq!(err, want, "{url}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let dbg = format!("{:?}", parse("postgresql://u:hunter2@h/d").unwrap());
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
