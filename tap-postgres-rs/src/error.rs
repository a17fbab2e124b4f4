//! The tap's errors: what failed, in which stream and phase, with the cause
//! as `source()`. Each level says only its own part; main.rs renders the
//! chain once, joined by `: `, into the one line a failed run ends with.

use pg_connect::ConnectError;
use pg_logical::{format_lsn, LogicalError, Lsn};
use singer_core::WriteError;

/// A query failed, shown as [`pg_connect::describe`] renders it: severity,
/// message, detail and hint on one line. That already says all that the
/// `postgres::Error`'s own chain would, so the chain ends here.
#[derive(Debug, thiserror::Error)]
#[error("{}", pg_connect::describe(.0))]
pub struct QueryError(pub postgres::Error);

/// A catalog query failed.
#[derive(Debug, thiserror::Error)]
#[error("discovery query failed")]
pub struct DiscoverError {
    pub phase: DiscoverPhase,
    #[source]
    pub source: QueryError,
}

/// The catalog queries discovery runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoverPhase {
    Database,
    Relations,
    Columns,
    Types,
    EnumLabels,
}

impl DiscoverError {
    /// For `map_err`: a failed query of this phase.
    pub fn at(phase: DiscoverPhase) -> impl FnOnce(postgres::Error) -> DiscoverError {
        move |e| DiscoverError {
            phase,
            source: QueryError(e),
        }
    }
}

/// A sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("stream {stream}")]
    Stream {
        stream: String,
        #[source]
        source: Box<StreamError>,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Setting up the session for scans.
    #[error(transparent)]
    Session(QueryError),
    /// Loading the database's types.
    #[error(transparent)]
    Types(DiscoverError),
    /// Setting up or reading LOG_BASED replication.
    #[error("LOG_BASED")]
    LogBased(#[source] LogicalError),
    /// `--drop-slot`.
    #[error(transparent)]
    DropSlot(LogicalError),
    /// Exporting the snapshot parallel streams share (`max_parallel_streams`).
    #[error("exporting the snapshot for parallel streams failed: {0}")]
    ExportSnapshot(QueryError),
    /// Streams that could not be synced while the others were.
    #[error("{}", skipped_text(.0))]
    Skipped(Vec<(String, StreamError)>),
}

fn skipped_text(skipped: &[(String, StreamError)]) -> String {
    let list: Vec<String> = skipped
        .iter()
        .map(|(id, why)| format!("stream {id}: {why}"))
        .collect();
    format!(
        "{} of the selected streams skipped (the others synced, their state is saved): {}",
        skipped.len(),
        list.join("; ")
    )
}

/// One stream failed; the variant is the phase it failed in.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the stream's table from the catalog.
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error("table {table} does not exist (or this user cannot see it)")]
    NoTable { table: String },
    #[error("unknown replication method {0:?} (use FULL_TABLE, INCREMENTAL or LOG_BASED)")]
    UnknownMethod(String),
    #[error("INCREMENTAL needs a replication-key in the catalog metadata")]
    NoReplicationKey,
    #[error("replication key {key:?} is not a column of {table}")]
    KeyNotAColumn { key: String, table: String },
    #[error(
        "replication key \"xmin\" needs a table, partitioned table or materialized view, and {table} is a {kind} \
         (its rows have no xmin of their own): use FULL_TABLE, or a column as the replication key"
    )]
    XminNotATable { table: String, kind: &'static str },
    /// Taking the snapshot an INCREMENTAL read by xmin bookmarks.
    #[error(transparent)]
    XminSnapshot(QueryError),
    #[error(
        "LOG_BASED works on tables only (views, materialized views and foreign tables have no \
         change log of their own): use FULL_TABLE or INCREMENTAL for this stream"
    )]
    LogBasedNotATable,
    #[error("no column is selected")]
    NoColumn,
    /// Reading the replica identity index of a table without a primary key.
    #[error(transparent)]
    ReplicaIdentityKey(QueryError),
    /// Taking the snapshot a FULL_TABLE resume needs.
    #[error(transparent)]
    Snapshot(QueryError),
    /// Starting the COPY.
    #[error(transparent)]
    Copy(QueryError),
    /// Reading the COPY's rows (the postgres error inside, in one line).
    #[error("reading rows failed: {}", io_reason(.0))]
    ReadRows(std::io::Error),
    #[error("row {row} is not UTF-8")]
    NotUtf8 {
        row: u64,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("row {row} has too few fields")]
    TooFewFields { row: u64 },
    #[error("bookmark replication_key_value {0} is neither a string nor a number")]
    BadBookmark(serde_json::Value),
    #[error(
        "bookmark replication_key_value {0} of replication key \"xmin\" is not a transaction id \
         (a whole number from an earlier run): remove the stream's bookmark to read the table again"
    )]
    BadXminBookmark(serde_json::Value),
    /// Checking the table's replica identity.
    #[error(transparent)]
    ReplicaIdentityCheck(QueryError),
    #[error(
        "LOG_BASED needs a replica identity, and {table} has none (no primary key, REPLICA IDENTITY {identity}): \
         publishing it would make the application's own UPDATEs and DELETEs fail. Add a primary key, \
         or run `ALTER TABLE {table} REPLICA IDENTITY FULL`, or sync it FULL_TABLE."
    )]
    NoReplicaIdentity {
        table: String,
        identity: &'static str,
    },
    #[error(
        "{}{RESYNC_HINT}",
        lost_text(.slot, *.state, .lost)
    )]
    ChangesLost {
        slot: String,
        state: Lsn,
        lost: Lost,
    },
    #[error(
        "LOG_BASED reads a partitioned table through publish_via_partition_root, which PostgreSQL 12 \
         does not have: select its partitions as streams, or sync it FULL_TABLE or INCREMENTAL"
    )]
    PartitionedBeforePg13,
    /// Opening the second session that reads what the log does not carry.
    #[error(transparent)]
    SideConnect(ConnectError),
    /// Opening a parallel stream's own connection (`max_parallel_streams`).
    #[error("opening its own connection (max_parallel_streams) failed")]
    WorkerConnect(#[source] ConnectError),
    /// Importing the shared snapshot into a parallel stream's connection.
    #[error("importing the shared snapshot failed: {0}")]
    ImportSnapshot(QueryError),
    /// Measuring a table to decide whether to split it (`split_table_min_pages`).
    #[error("reading the table's size (split_table_min_pages) failed: {0}")]
    TableSize(QueryError),
    /// Reading unchanged TOASTed values and generated columns by key.
    #[error(transparent)]
    ByKeyQuery(QueryError),
    /// Naming the types of a table's columns as the log describes them.
    #[error(transparent)]
    ColumnTypes(QueryError),
    /// Reading the table's column layout.
    #[error(transparent)]
    Layout(QueryError),
    #[error("custom_where_clauses (stream_options) is not a valid condition on this table")]
    BadRowFilter(#[source] QueryError),
    #[error(
        "custom_where_clauses (stream_options) of a LOG_BASED stream filter on the server through \
         a publication row filter, which PostgreSQL {version} does not have (it needs PostgreSQL 15 \
         or later): remove the stream's custom_where_clauses, or sync it FULL_TABLE or INCREMENTAL"
    )]
    RowFilterBeforePg15 { version: String },
    /// Giving the table its row filter and column list in the publication.
    #[error("setting the publication's row filter and column list for this table")]
    Publication(#[source] LogicalError),
    /// Reading which columns the publication must list.
    #[error(transparent)]
    PublicationColumns(QueryError),
}

/// Why a stream's position in the log can no longer be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The slot has confirmed (consumed) past the state's position.
    Behind { confirmed: Lsn },
    /// The slot does not exist (dropped since, or never created here).
    NoSlot,
    /// The server invalidated the slot (`wal_status = lost`).
    Invalidated,
}

const RESYNC_HINT: &str =
    " Set on_lost_changes to resync to copy the affected streams again as new \
    table versions, or remove the stream's bookmark from the state.";

fn lost_text(slot: &str, state: Lsn, lost: &Lost) -> String {
    let state = format_lsn(state);
    match lost {
        Lost::Behind { confirmed } => format!(
            "the state's LSN {state} is older than replication slot `{slot}`'s confirmed position {}: \
             the changes in between are gone.",
            format_lsn(*confirmed)
        ),
        Lost::NoSlot => format!(
            "the state's LSN is {state}, but replication slot `{slot}` does not exist (dropped since \
             the last run?): the changes since then are gone."
        ),
        Lost::Invalidated => format!(
            "the state's LSN is {state}, but the server invalidated replication slot `{slot}` \
             (wal_status = lost: it kept more WAL than max_slot_wal_keep_size allows): the changes \
             since then are gone."
        ),
    }
}

impl StreamError {
    /// This error, in `stream`.
    pub fn at(self, stream: &str) -> SyncError {
        SyncError::Stream {
            stream: stream.to_owned(),
            source: Box::new(self),
        }
    }
}

/// For `map_err`: a query of `phase` failed in `stream`.
pub fn query_failed(
    stream: &str,
    phase: fn(QueryError) -> StreamError,
) -> impl FnOnce(postgres::Error) -> SyncError + '_ {
    move |e| phase(QueryError(e)).at(stream)
}

/// The postgres error inside an I/O error from a COPY reader, in one line.
fn io_reason(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<postgres::Error>())
    {
        Some(pg) => pg_connect::describe(pg),
        None => e.to_string(),
    }
}
