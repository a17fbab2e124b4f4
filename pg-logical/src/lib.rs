//! Logical replication from PostgreSQL with the built-in `pgoutput` plugin:
//! nothing to install on the source server.
//!
//! - [`pgoutput`]: a transport-free decoder of pgoutput messages.
//! - [`slot`]: prerequisites, publications, replication slots, WAL lag (over
//!   an ordinary SQL connection).
//! - [`replication`]: the streaming replication protocol (`START_REPLICATION
//!   SLOT … LOGICAL` on a `replication=database` connection): the messages of
//!   the transactions committed before an end LSN, as the server decodes
//!   them, with feedback that confirms the slot only as far as the caller says.
//! - [`changes`]: those messages decoded into owned [`changes::Change`]s.
//!
//! ```no_run
//! use pg_logical::changes::Decoder;
//! use pg_logical::replication::{ReplicationStream, StartReplication};
//! use pg_logical::slot;
//! # fn run(connector: &pg_connect::Connector) -> Result<(), pg_logical::LogicalError> {
//! let mut client = connector.connect().expect("connected");
//! slot::check_prerequisites(&mut client)?;
//! let server = slot::server_version(&mut client)?;
//! let tables = [("public".into(), "orders".into())];
//! slot::ensure_publication(&mut client, "my_pub", &tables, &slot::PublicationOptions::for_server(server), false)?;
//! slot::create_slot_if_missing(&mut client, "my_slot")?;
//! let end = slot::current_flush_lsn(&mut client)?;
//! let request = StartReplication { slot: "my_slot", publication: "my_pub", start: 0, end };
//! let mut stream = ReplicationStream::start(connector.settings(), "my-app", &request)?;
//! let mut decoder = Decoder::new();
//! for message in stream.by_ref() {
//!     let (lsn, data) = message?;
//!     if let Some(change) = decoder.decode(lsn, &data)? {
//!         println!("{change:?}");
//!     }
//! }
//! // Confirms nothing: call `stream.confirm(lsn)` once the destination has it.
//! stream.finish()?;
//! # Ok(()) }
//! ```

pub mod changes;
pub mod pgoutput;
pub mod replication;
pub mod slot;

pub use pgoutput::{format_lsn, parse_lsn, Lsn};
use postgres::types::PgLsn;

/// What went wrong with logical replication, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LogicalError {
    #[error("wal_level is `{0}`, but LOG_BASED replication needs `logical`: set wal_level = logical in postgresql.conf and restart the server")]
    WalLevel(String),
    #[error("role `{0}` may not use logical replication: grant it with `ALTER ROLE \"{0}\" REPLICATION` (or connect as a superuser)")]
    NoReplication(String),
    #[error("replication slot `{slot}` is in use by another process (pid {pid}): wait for that reader to finish, or stop it (`SELECT pg_terminate_backend({pid})`) if nothing should be reading; do not choose another replication_slot_name, which would start from now and lose this slot's position")]
    SlotBusy { slot: String, pid: i32 },
    #[error("replication slot `{slot}` uses the `{plugin}` plugin, not pgoutput: drop it or choose another replication_slot_name")]
    WrongPlugin { slot: String, plugin: String },
    #[error("replication slot `{slot}` belongs to database `{database}`: choose another replication_slot_name for this database")]
    OtherDatabase { slot: String, database: String },
    #[error("publication `{0}` does not exist and this role cannot create it: create it as the tables' owner (`CREATE PUBLICATION \"{0}\" FOR TABLE ...`) or set publication_name to an existing publication")]
    NoPublication(String),
    #[error("publication `{publication}` does not include {tables} and this role cannot add them: `ALTER PUBLICATION \"{publication}\" ADD TABLE ...` as the tables' owner")]
    PublicationMissingTables { publication: String, tables: String },
    #[error("replication slot `{0}` does not exist")]
    NoSlot(String),
    #[error("publication `{0}` does not publish partitioned tables as their root (needed to read a partitioned table) and this role cannot change it: `ALTER PUBLICATION \"{0}\" SET (publish_via_partition_root = true)` as its owner")]
    PublicationNotViaRoot(String),
    #[error("cannot decode a change at LSN {lsn}")]
    Decode {
        lsn: PgLsn,
        #[source]
        source: pgoutput::DecodeError,
    },
    #[error("change for relation {0} arrived before its description (Relation message)")]
    UnknownRelation(u32),
    #[error("{context}: {message}")]
    Db { context: String, message: String },
    #[error("the row filter or column list would make the application's own UPDATEs and DELETEs of {table} fail, so the publication was left as it was: {message}. PostgreSQL allows only replica identity columns (the primary key) in a row filter and requires them in a column list: filter on key columns, or set `ALTER TABLE {table} REPLICA IDENTITY FULL`")]
    BreaksWrites { table: String, message: String },
    #[error("publication `{publication}` publishes {table} FOR ALL TABLES or TABLES IN SCHEMA, which cannot carry a row filter: set publication_name to a publication of this tap's own (it creates one listing its tables), or list the table in `{publication}`")]
    NoRowFilterHere { publication: String, table: String },
    #[error(transparent)]
    Replication(#[from] replication::ReplicationError),
}

pub(crate) fn db(context: &str) -> impl Fn(postgres::Error) -> LogicalError + '_ {
    move |e| LogicalError::Db {
        context: context.to_owned(),
        message: pg_connect::describe(&e),
    }
}
