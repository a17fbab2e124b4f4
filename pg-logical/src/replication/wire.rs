//! The client side of the wire protocol on a replication connection: TCP or
//! TLS (pg-connect's OpenSSL set-up, so every sslmode verifies the same as
//! ordinary connections), startup with `replication=database`,
//! authentication (trust, password, md5, SCRAM-SHA-256 with channel binding
//! over TLS), simple queries and framed messages.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ssl::{SslRef, SslStream};
use pg_connect::{ConnectionSettings, SslMode};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};

use super::ReplicationError;

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

enum Socket {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(s) => s.read(buf),
            Socket::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(s) => s.write(buf),
            Socket::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Plain(s) => s.flush(),
            Socket::Tls(s) => s.flush(),
        }
    }
}

/// One backend message: its tag and its body (without tag and length).
pub(super) struct Frame {
    pub tag: u8,
    pub body: BytesMut,
}

/// A server error, in one line (as `pg_connect::describe` writes them), and its SQLSTATE.
#[derive(Debug)]
pub(super) struct ServerError {
    pub code: String,
    pub text: String,
}

/// An authenticated session on a replication connection.
pub(super) struct Wire {
    socket: Socket,
    /// The same socket, for its timeouts (the TLS stream owns `socket`'s).
    tcp: TcpStream,
    input: BytesMut,
    output: BytesMut,
    /// `server_version_num`'s major (e.g. 15), from the startup parameters.
    pub server_major: u32,
}

/// Why a connection attempt failed: the server's refusal (which `allow` and
/// `prefer` may retry the other way) or anything else.
enum Attempt {
    Refused(ServerError),
    Failed(String),
}

impl From<io::Error> for Attempt {
    fn from(e: io::Error) -> Self {
        Attempt::Failed(e.to_string())
    }
}

impl Wire {
    /// Connects as `settings` say, with the sslmode fallbacks libpq (and
    /// pg-connect) apply: `allow` tries plain first, `prefer` TLS first and
    /// plain when the server does not offer TLS or `pg_hba.conf` refuses it.
    pub fn connect(
        settings: &ConnectionSettings,
        application_name: &str,
    ) -> Result<Wire, ReplicationError> {
        let fail = |text: String| ReplicationError::Connect {
            host: settings.host.clone(),
            port: settings.port,
            database: settings.database.clone(),
            user: settings.user.clone(),
            reason: pg_connect::explain_tls_failure(text, settings),
        };
        let attempt = |tls: Tls| Wire::attempt(settings, application_name, tls);
        let result = match settings.ssl_mode {
            SslMode::Disable => attempt(Tls::Off),
            // Plain first; TLS only when the server refuses plain (e.g. a
            // `hostssl` rule), as libpq does.
            SslMode::Allow => match attempt(Tls::Off) {
                Err(Attempt::Refused(_)) => attempt(Tls::Required),
                other => other,
            },
            // A server whose pg_hba.conf refuses TLS sessions (e.g. only a
            // `hostnossl` rule) is tried again in plain text, as libpq does.
            // Not after a wrong password (28P01).
            SslMode::Prefer => match attempt(Tls::Preferred) {
                Err(Attempt::Refused(e)) if e.code == "28000" => {
                    attempt(Tls::Off).map_err(|_| Attempt::Refused(e))
                }
                other => other,
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => attempt(Tls::Required),
        };
        result.map_err(|e| match e {
            Attempt::Refused(e) => fail(e.text),
            Attempt::Failed(text) => fail(text),
        })
    }

    fn attempt(
        settings: &ConnectionSettings,
        application_name: &str,
        tls: Tls,
    ) -> Result<Wire, Attempt> {
        let timeout = Duration::from_secs(settings.connect_timeout_secs.max(1));
        let tcp = tcp_connect(settings, timeout)?;
        tcp.set_nodelay(true)?;
        // Startup and authentication may not hang; streaming reads block.
        tcp.set_read_timeout(Some(timeout))?;
        let tcp_for_stream = tcp.try_clone()?;
        let mut socket = Socket::Plain(tcp);
        let mut channel_binding = None;
        if tls != Tls::Off {
            let mut buf = BytesMut::new();
            frontend::ssl_request(&mut buf);
            socket.write_all(&buf)?;
            let mut answer = [0u8; 1];
            socket.read_exact(&mut answer)?;
            match (answer[0], tls) {
                (b'S', _) => {
                    let Socket::Plain(tcp) = socket else {
                        unreachable!("plain before TLS")
                    };
                    let (connector, verify_hostname) = pg_connect::openssl_connector(settings)
                        .map_err(|e| Attempt::Failed(e.to_string()))?;
                    let mut config = connector
                        .configure()
                        .map_err(|e| Attempt::Failed(format!("TLS set-up failed: {e}")))?;
                    config.set_verify_hostname(verify_hostname);
                    // The real host name, also through a tunnel (`hostaddr`).
                    let stream = config.connect(&settings.host, tcp).map_err(|e| {
                        Attempt::Failed(format!("error performing TLS handshake: {e}"))
                    })?;
                    channel_binding = tls_server_end_point(stream.ssl());
                    socket = Socket::Tls(Box::new(stream));
                }
                (b'N', Tls::Preferred) => {}
                (b'N', _) => {
                    return Err(Attempt::Failed("server does not support TLS".into()));
                }
                (other, _) => {
                    return Err(Attempt::Failed(format!(
                        "unexpected answer {:?} to the TLS request",
                        other as char
                    )))
                }
            }
        }
        let mut wire = Wire {
            socket,
            tcp: tcp_for_stream,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: BytesMut::new(),
            server_major: 0,
        };
        wire.startup(settings, application_name, channel_binding)?;
        wire.set_read_timeout(None)?;
        Ok(wire)
    }

    fn startup(
        &mut self,
        settings: &ConnectionSettings,
        application_name: &str,
        channel_binding: Option<Vec<u8>>,
    ) -> Result<(), Attempt> {
        let params = [
            ("user", settings.user.as_str()),
            ("database", settings.database.as_str()),
            ("application_name", application_name),
            ("replication", "database"),
            // pgoutput converts text values to the client encoding, as it
            // did for the SQL sessions (which pin UTF8).
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut self.output)?;
        self.send()?;
        let password = || {
            settings
                .password
                .as_deref()
                .map(str::as_bytes)
                .ok_or_else(|| {
                    Attempt::Failed("the server asks for a password, but none is set".into())
                })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let frame = self.frame()?;
            match frame.tag {
                b'R' => {}
                b'E' => return Err(Attempt::Refused(server_error(frame)?)),
                b'S' => {
                    let mut body = frame.body;
                    let name = cstr(&mut body)?;
                    let value = cstr(&mut body)?;
                    if name == "server_version" {
                        self.server_major = value
                            .split(|c: char| !c.is_ascii_digit())
                            .next()
                            .and_then(|m| m.parse().ok())
                            .unwrap_or(0);
                    }
                    continue;
                }
                b'K' | b'N' => continue,
                b'Z' => return Ok(()),
                other => {
                    return Err(Attempt::Failed(format!(
                        "unexpected message {:?} during authentication",
                        other as char
                    )))
                }
            }
            match parse(frame)? {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut self.output)?;
                    self.send()?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(settings.user.as_bytes(), password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.output)?;
                    self.send()?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let (mut plain, mut plus) = (false, false);
                    let mut mechanisms = body.mechanisms();
                    while let Some(m) = mechanisms.next()? {
                        plain |= m == sasl::SCRAM_SHA_256;
                        plus |= m == sasl::SCRAM_SHA_256_PLUS;
                    }
                    // As tokio-postgres chooses.
                    let (binding, mechanism) = match (&channel_binding, plus, plain) {
                        (Some(cb), true, _) => (
                            sasl::ChannelBinding::tls_server_end_point(cb.clone()),
                            sasl::SCRAM_SHA_256_PLUS,
                        ),
                        (Some(_), false, true) => {
                            (sasl::ChannelBinding::unrequested(), sasl::SCRAM_SHA_256)
                        }
                        (None, _, true) => {
                            (sasl::ChannelBinding::unsupported(), sasl::SCRAM_SHA_256)
                        }
                        _ => return Err(Attempt::Failed("unsupported SASL mechanism".into())),
                    };
                    let s = sasl::ScramSha256::new(password()?, binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut self.output)?;
                    self.send()?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        Attempt::Failed("SASL continue before SASL start".into())
                    })?;
                    s.update(body.data())?;
                    frontend::sasl_response(s.message(), &mut self.output)?;
                    self.send()?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Attempt::Failed("SASL final before SASL start".into()))?;
                    s.finish(body.data())?;
                }
                _ => {
                    return Err(Attempt::Failed(
                        "unsupported authentication method (trust, password, md5 and SCRAM-SHA-256 are)"
                            .into(),
                    ))
                }
            }
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp.set_read_timeout(timeout)
    }

    /// Writes what was encoded into `output`.
    pub fn send(&mut self) -> io::Result<()> {
        self.socket.write_all(&self.output)?;
        self.output.clear();
        self.socket.flush()
    }

    /// The buffer to encode the next messages into (sent by [`Wire::send`]).
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    /// Whether a whole message is buffered.
    pub fn has_frame(&self) -> bool {
        self.input.len() >= 5
            && self.input.len()
                > u32::from_be_bytes(self.input[1..5].try_into().expect("4 bytes")) as usize
    }

    /// The next whole message from the server.
    pub fn frame(&mut self) -> io::Result<Frame> {
        loop {
            if self.input.len() >= 5 {
                let len =
                    u32::from_be_bytes(self.input[1..5].try_into().expect("4 bytes")) as usize;
                if len < 4 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "invalid message length",
                    ));
                }
                if self.input.len() > len {
                    let mut body = self.input.split_to(1 + len);
                    let tag = body[0];
                    body.advance(5);
                    return Ok(Frame { tag, body });
                }
                self.input.reserve(1 + len - self.input.len());
            }
            let start = self.input.len();
            // At most a chunk per read: the room is zeroed first, and a big
            // message's whole room zeroed at every read would be quadratic.
            self.input.reserve(READ_CHUNK);
            self.input.resize(start + READ_CHUNK, 0);
            let n = loop {
                match self.socket.read(&mut self.input[start..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let n = n.inspect_err(|_| self.input.truncate(start))?;
            self.input.truncate(start + n);
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
        }
    }

    /// Runs one simple query and returns its rows' text values.
    pub fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(sql, &mut self.output).map_err(ReplicationError::Io)?;
        self.send().map_err(ReplicationError::Io)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.frame().map_err(ReplicationError::Io)?;
            match frame.tag {
                b'Z' => break,
                b'E' => error = Some(server_error(frame).map_err(ReplicationError::Io)?),
                b'D' => {
                    let backend::Message::DataRow(row) =
                        parse(frame).map_err(ReplicationError::Io)?
                    else {
                        unreachable!("tag D is a DataRow")
                    };
                    let buf = row.buffer();
                    let values = row
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
                        .collect()
                        .map_err(ReplicationError::Io)?;
                    rows.push(values);
                }
                // RowDescription, CommandComplete, notices, parameter changes.
                _ => {}
            }
        }
        match error {
            Some(e) => Err(ReplicationError::Server {
                context: format!("running `{}`", sql.split_whitespace().next().unwrap_or(sql)),
                code: e.code,
                message: e.text,
            }),
            None => Ok(rows),
        }
    }

    /// Closes the session politely (Terminate), ignoring a server already gone.
    pub fn terminate(mut self) {
        frontend::terminate(&mut self.output);
        let _ = self.send();
        if let Socket::Tls(s) = &mut self.socket {
            let _ = s.shutdown();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    Off,
    /// TLS if the server offers it.
    Preferred,
    Required,
}

fn tcp_connect(settings: &ConnectionSettings, timeout: Duration) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = match settings.hostaddr {
        Some(ip) => vec![SocketAddr::new(ip, settings.port)],
        None => (settings.host.as_str(), settings.port)
            .to_socket_addrs()?
            .collect(),
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The `tls-server-end-point` channel binding data (as postgres-openssl computes it).
fn tls_server_end_point(ssl: &SslRef) -> Option<Vec<u8>> {
    let cert = ssl.peer_certificate()?;
    let algorithms = cert
        .signature_algorithm()
        .object()
        .nid()
        .signature_algorithms()?;
    let md = match algorithms.digest {
        Nid::MD5 | Nid::SHA1 => MessageDigest::sha256(),
        nid => MessageDigest::from_nid(nid)?,
    };
    cert.digest(md).ok().map(|b| b.to_vec())
}

fn cstr(body: &mut BytesMut) -> io::Result<String> {
    let end = body
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unterminated string"))?;
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance(end + 1);
    Ok(s)
}

/// Parses a frame with postgres-protocol (which needs tag and length back).
fn parse(frame: Frame) -> io::Result<backend::Message> {
    let mut buf = BytesMut::with_capacity(frame.body.len() + 5);
    buf.extend_from_slice(&[frame.tag]);
    buf.extend_from_slice(&(frame.body.len() as u32 + 4).to_be_bytes());
    buf.extend_from_slice(&frame.body);
    backend::Message::parse(&mut buf)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "truncated message"))
}

/// An ErrorResponse frame as `severity: message (detail: …) (hint: …)`.
pub(super) fn server_error(frame: Frame) -> io::Result<ServerError> {
    let backend::Message::ErrorResponse(body) = parse(frame)? else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an error response",
        ));
    };
    let (mut severity, mut message, mut detail, mut hint, mut code) =
        (String::new(), String::new(), None, None, String::new());
    let mut fields = body.fields();
    while let Some(f) = fields.next()? {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => severity = v,
            b'S' if severity.is_empty() => severity = v,
            b'M' => message = v,
            b'D' => detail = Some(v),
            b'H' => hint = Some(v),
            b'C' => code = v,
            _ => {}
        }
    }
    let mut text = format!("{severity}: {message}");
    if let Some(d) = detail {
        text.push_str(&format!(" (detail: {d})"));
    }
    if let Some(h) = hint {
        text.push_str(&format!(" (hint: {h})"));
    }
    Ok(ServerError { code, text })
}
