//! libpq's sslmodes over OpenSSL.
//!
//! tokio-postgres knows only disable/prefer/require and always verifies when
//! it verifies; the verification level is set here on the OpenSSL connector:
//! prefer/require check nothing (unless a CA is given: then as verify-ca, like
//! libpq), verify-ca checks the chain, verify-full the chain and the host name.

use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use postgres::config::SslMode as PgSslMode;
use postgres::NoTls;
use postgres_openssl::MakeTlsConnector;

use crate::settings::{ConnectionSettings, SslMode};

/// Why a TLS (or plain) connection could not be made: a setting to fix, the
/// OpenSSL error underneath, or the server's refusal explained.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key setting is wrong.
    #[error("{0}")]
    Setting(String),
    #[error("{what}: cannot read file {path:?}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    OpenSsl {
        what: &'static str,
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// Connecting failed; the text is the driver's whole chain (see
    /// [`crate::describe`]) or, for the failures users meet most, what to fix.
    #[error("{0}")]
    Connect(String),
}

fn openssl(what: &'static str) -> impl Fn(openssl::error::ErrorStack) -> TlsError + Copy {
    move |source| TlsError::OpenSsl { what, source }
}

/// PEM text as given, or the contents of the file it names.
fn pem_or_file(value: &str, what: &'static str) -> Result<Vec<u8>, TlsError> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    if !std::path::Path::new(value).exists() {
        return Err(TlsError::Setting(format!(
            "{what}: file {value:?} does not exist (give the PEM contents or the path of a readable file)"
        )));
    }
    std::fs::read(value).map_err(|source| TlsError::Read {
        what,
        path: value.to_owned(),
        source,
    })
}

/// What to fix, for the TLS failures users meet most (`msg`: the failure's
/// whole text). Public for connections the driver does not make (the
/// streaming replication protocol), so that they say the same.
pub fn explain(msg: String, s: &ConnectionSettings) -> String {
    if msg.contains("server does not support TLS") {
        return format!(
            "the server does not offer TLS, but ssl_mode `{}` requires it: turn ssl on in the server's postgresql.conf, or set ssl_mode to prefer",
            s.ssl_mode.name()
        );
    }
    if !msg.contains("certificate verify failed") {
        return msg;
    }
    // OpenSSL's reason comes last: "...certificate verify failed:<file>:<line>:: <reason>".
    let reason = msg.rsplit(":: ").next().unwrap_or(&msg).trim();
    if reason.contains("hostname mismatch") || reason.contains("IP address mismatch") {
        format!(
            "the server's certificate does not name the host `{}` (verify-full): connect by a name the certificate lists, or use ssl_mode verify-ca",
            s.host
        )
    } else {
        format!(
            "the server's certificate is not trusted (certificate verify failed: {reason}): set ssl_certificate_authority to the CA that signed it"
        )
    }
}

/// What to fix for a failed attempt: the common failures explained (see
/// [`crate::diagnosis`]), else the TLS ones, else the driver's text.
fn failed(e: &postgres::Error, s: &ConnectionSettings, shown_port: u16) -> TlsError {
    TlsError::Connect(
        crate::diagnosis::explain(e, s, shown_port)
            .unwrap_or_else(|| explain(crate::describe(e), s)),
    )
}

/// Connects as `s.ssl_mode` says; errors name `shown_port` (the configured
/// port, not a tunnel's).
pub(crate) fn connect(
    config: &postgres::Config,
    s: &ConnectionSettings,
    shown_port: u16,
) -> Result<postgres::Client, TlsError> {
    let mut config = config.clone();
    let pg_mode = match s.ssl_mode {
        SslMode::Disable => PgSslMode::Disable,
        // After a refused plain attempt, allow retries as prefer.
        SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    };
    if matches!(s.ssl_mode, SslMode::Disable | SslMode::Allow) {
        let mut plain = config.clone();
        plain.ssl_mode(PgSslMode::Disable);
        match plain.connect(NoTls) {
            Ok(client) => return Ok(client),
            // allow: plain first; TLS only when the server refuses plain
            // (e.g. a `hostssl` rule), as libpq does.
            Err(e) if s.ssl_mode == SslMode::Allow && e.as_db_error().is_some() => {}
            Err(e) => return Err(failed(&e, s, shown_port)),
        }
    }
    config.ssl_mode(pg_mode);
    let connector = build_connector(s)?;
    match config.connect(connector) {
        Ok(client) => Ok(client),
        // prefer: a server whose pg_hba.conf refuses TLS sessions (e.g.
        // only a `hostnossl` rule) is tried again in plain text, as libpq
        // does. Not after a wrong password (28P01).
        Err(e) if s.ssl_mode == SslMode::Prefer && hba_refused(&e) => {
            let mut plain = config.clone();
            plain.ssl_mode(PgSslMode::Disable);
            plain.connect(NoTls).map_err(|_| failed(&e, s, shown_port))
        }
        Err(e) => Err(failed(&e, s, shown_port)),
    }
}

fn setting(message: &str) -> TlsError {
    TlsError::Setting(message.to_owned())
}

fn hba_refused(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
}

fn build_connector(s: &ConnectionSettings) -> Result<MakeTlsConnector, TlsError> {
    let (connector, full) = openssl_connector(s)?;
    let mut connector = MakeTlsConnector::new(connector);
    connector.set_callback(move |cfg, _domain| {
        cfg.set_verify_hostname(full);
        Ok(())
    });
    Ok(connector)
}

/// The OpenSSL connector for `s`'s sslmode and certificates, and whether the
/// host name must be checked too (verify-full): what every connection uses,
/// also those the driver does not make (the streaming replication protocol).
pub fn openssl_connector(s: &ConnectionSettings) -> Result<(SslConnector, bool), TlsError> {
    let tls_err = openssl("TLS set-up failed");
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls_err)?;
    let verify = match s.ssl_mode {
        SslMode::VerifyCa | SslMode::VerifyFull => true,
        SslMode::Require if s.ssl_ca.is_some() => true,
        _ => false,
    };
    if let Some(ca) = &s.ssl_ca {
        let pem = pem_or_file(ca, "ssl_certificate_authority")?;
        let certs = X509::stack_from_pem(&pem).map_err(openssl(
            "ssl_certificate_authority is not a PEM certificate",
        ))?;
        for cert in certs {
            builder
                .cert_store_mut()
                .add_cert(cert)
                .map_err(openssl("cannot use ssl_certificate_authority"))?;
        }
    } else if verify {
        builder.set_default_verify_paths().map_err(tls_err)?;
    }
    builder.set_verify(if verify {
        SslVerifyMode::PEER
    } else {
        SslVerifyMode::NONE
    });
    match (&s.ssl_client_certificate, &s.ssl_client_private_key) {
        (Some(cert), Some(key)) => {
            let cert_pem = pem_or_file(cert, "ssl_client_certificate")?;
            let key_pem = pem_or_file(key, "ssl_client_private_key")?;
            let cert = X509::from_pem(&cert_pem)
                .map_err(|_| setting("ssl_client_certificate is not a PEM certificate"))?;
            // Never echo key material or its parse error details.
            let key = PKey::private_key_from_pem(&key_pem).map_err(|_| {
                setting("ssl_client_private_key is not a PEM private key (PKCS#1, PKCS#8 or SEC1)")
            })?;
            let mismatch =
                |_| setting("ssl_client_private_key does not match ssl_client_certificate");
            builder.set_certificate(&cert).map_err(tls_err)?;
            // OpenSSL 3 already checks the pair here, older ones in check_private_key.
            builder.set_private_key(&key).map_err(mismatch)?;
            builder.check_private_key().map_err(mismatch)?;
        }
        (Some(_), None) => {
            return Err(setting(
                "ssl_client_certificate is set but ssl_client_private_key is not",
            ))
        }
        (None, Some(_)) => {
            return Err(setting(
                "ssl_client_private_key is set but ssl_client_certificate is not",
            ))
        }
        (None, None) => {}
    }
    Ok((builder.build(), s.ssl_mode == SslMode::VerifyFull))
}
