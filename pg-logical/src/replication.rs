//! Changes read with the streaming replication protocol
//! (`START_REPLICATION SLOT … LOGICAL` on a `replication=database`
//! connection) instead of the SQL peek function: the server sends each
//! committed transaction as soon as it has decoded it, so the first message
//! arrives whatever the backlog, nothing of the output goes to temp files,
//! and a reader that dies frees the slot as soon as the server sees the
//! socket close.
//!
//! The slot is confirmed only as far as the caller says
//! ([`ReplicationStream::confirm`]): the feedback the server gets never
//! goes past what the destination has committed, however far the stream has
//! read. A run ends at an LSN given at start (the flush position then).
//!
//! Written on `postgres-protocol`'s message codecs and pg-connect's OpenSSL
//! set-up rather than taken from a crate: the replication clients published
//! (pgwire-replication) are tokio-based and verify TLS with rustls, which
//! would give a second TLS stack whose verify-ca/verify-full, CA and client
//! certificate handling differ from the ones every other connection uses.
//!
//! ```no_run
//! use pg_logical::replication::{ReplicationStream, StartReplication};
//! # fn run(connector: &pg_connect::Connector, committed: pg_logical::Lsn, end: pg_logical::Lsn)
//! #     -> Result<(), pg_logical::replication::ReplicationError> {
//! let request = StartReplication { slot: "my_slot", publication: "my_pub", start: committed, end };
//! let mut stream = ReplicationStream::start(connector.settings(), "tap-postgres-rs", &request)?;
//! stream.confirm(committed);
//! while let Some(message) = stream.next() {
//!     let (lsn, bytes) = message?;
//!     let decoded = pg_logical::pgoutput::decode(&bytes);
//! }
//! stream.finish()?;
//! # Ok(()) }
//! ```

mod session;
mod stream;
mod wire;

pub use session::StartReplication;
pub use stream::ReplicationStream;

/// What went wrong on a replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("cannot open a replication connection to PostgreSQL at {host}:{port} (database `{database}`, user `{user}`): {reason}")]
    Connect {
        host: String,
        port: u16,
        database: String,
        user: String,
        reason: String,
    },
    /// The server's error; `code` is its SQLSTATE (e.g. `55006`: the slot
    /// is active for another process).
    #[error("{context}: {message}")]
    Server {
        context: String,
        code: String,
        message: String,
    },
    #[error("replication connection failed")]
    Io(#[source] std::io::Error),
    #[error("unexpected replication message: {0}")]
    Protocol(String),
}
