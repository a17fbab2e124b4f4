//! The COPY reader, below FULL_TABLE and INCREMENTAL: a planned stream's
//! `COPY (SELECT ...) TO STDOUT` text, streamed row by row through the codec
//! into RECORD messages (memory grows with the widest row, never with the
//! table), with a checkpoint every `state_interval` records; and the STATE
//! messages that open and close a copied stream.

use std::io::{BufRead, BufReader, Write};

use pg_connect::{quote_ident, quote_qualified};
use postgres::Client;
use serde_json::json;
use singer_core::metrics::{tags, Counter};
use singer_core::{MessageWriter, State};

use crate::codec::unescape_copy_field;
use crate::discover::RelKind;
use crate::error::{query_failed, StreamError, SyncError};
use crate::plan::{self, Prepared};
use crate::record::{self, RecordBuilder};
use crate::settings::TapSettings;

/// A stream being copied.
pub struct StreamCtx<'a> {
    pub p: &'a Prepared,
    interval: u64,
    time_extracted: String,
    /// Rows so far, for the progress lines a person watches.
    progress: singer_core::progress::StreamProgress,
    /// `max_record_count`, for FULL_TABLE and INCREMENTAL (a LOG_BASED
    /// stream's initial copy is never cut short).
    limit: Option<u64>,
}

impl<'a> StreamCtx<'a> {
    /// Starts a stream: marks it `currently_syncing` in a STATE.
    pub fn begin<W: Write>(
        p: &'a Prepared,
        state: &mut State,
        settings: &TapSettings,
        out: &mut MessageWriter<W>,
    ) -> Result<StreamCtx<'a>, SyncError> {
        state.set_currently_syncing(Some(&p.id));
        out.write_state(&state.to_value())?;
        tracing::info!(stream = %p.id, method = p.method.as_str(), "sync started");
        Ok(StreamCtx::new(p, settings))
    }

    /// A stream's copy without the opening STATE: one range of a split
    /// table, whose stream the writer of stdout opens and ends.
    pub fn new(p: &'a Prepared, settings: &TapSettings) -> StreamCtx<'a> {
        StreamCtx {
            p,
            interval: settings.state_interval,
            time_extracted: record::format_time(chrono::Utc::now()),
            progress: singer_core::progress::stream(&p.id),
            limit: settings
                .max_record_count
                .filter(|_| p.method != crate::settings::Method::LogBased),
        }
    }

    /// Ends a stream of `count` records: a STATE without `currently_syncing`.
    pub fn end<W: Write>(
        self,
        count: u64,
        state: &mut State,
        out: &mut MessageWriter<W>,
    ) -> Result<(), SyncError> {
        state.set_currently_syncing(None);
        out.write_state(&state.to_value())?;
        out.flush()?;
        tracing::debug!(stream = %self.p.id, records = count, "stream done");
        singer_core::progress::end_stream(&self.progress);
        Ok(())
    }

    /// The SELECT list of the stream's columns, each read as its type says.
    pub fn select_list(&self) -> String {
        let mut list = String::new();
        for (i, c) in self.p.columns.iter().enumerate() {
            if i > 0 {
                list.push_str(", ");
            }
            list.push_str(&quote_ident(&c.name));
            if let Some(cast) = c.ty.read_cast() {
                list.push_str(cast);
            }
        }
        list
    }

    /// The most records this stream may send in this run.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// ` LIMIT n` when the stream has a limit.
    pub fn limit_clause(&self) -> String {
        self.limit
            .map(|n| format!(" LIMIT {n}"))
            .unwrap_or_default()
    }

    /// What the SELECT reads `FROM`: a table's own rows only (`ONLY`: an
    /// inheritance child is a stream of its own), a partitioned parent's
    /// through the parent (its partitions are not streams).
    pub fn read_from(&self) -> String {
        let table = quote_qualified(&self.p.rel.schema, &self.p.rel.name);
        match self.p.rel.kind {
            RelKind::Table | RelKind::ForeignTable => format!("ONLY {table}"),
            _ => table,
        }
    }
}

/// ` WHERE a AND b` (each condition already parenthesized where it needs to
/// be), or nothing.
pub fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// What a checkpoint needs to know about the last row sent.
pub struct Tracker {
    /// The trailing column of a [`CopyQuery::with_position`] query: the
    /// row's `ctid` (FULL_TABLE) or 64-bit xmin (INCREMENTAL by xmin).
    pub position: String,
    /// The last non-NULL replication key text.
    pub key: Option<String>,
}

/// How to read one COPY.
pub struct CopyQuery<'q> {
    /// The `SELECT` (the stream's columns first, then the position if `with_position`).
    pub sql: &'q str,
    /// The table version records carry.
    pub version: Option<i64>,
    /// Whether the SELECT ends with one more column, kept in [`Tracker::position`].
    pub with_position: bool,
    /// The column whose last value [`Tracker::key`] keeps.
    pub key_index: Option<usize>,
    /// Whether to checkpoint after the last row too.
    pub final_checkpoint: bool,
}

/// Streams a COPY query as RECORDs, calling `checkpoint` every `interval`
/// records (and after the last one with `final_checkpoint`). Returns the
/// number of records.
pub fn emit_rows<W: Write>(
    client: &mut Client,
    ctx: &StreamCtx<'_>,
    query: &CopyQuery<'_>,
    out: &mut MessageWriter<W>,
    mut checkpoint: impl FnMut(&Tracker, &mut MessageWriter<W>) -> Result<(), SyncError>,
) -> Result<u64, SyncError> {
    let id = ctx.p.id.as_str();
    let copy = format!("COPY ({}) TO STDOUT", query.sql);
    tracing::debug!(stream = id, sql = %copy, "reading");
    let reader = client
        .copy_out(copy.as_str())
        .map_err(query_failed(id, StreamError::Copy))?;
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut counter = Counter::new("record_count", tags([("stream", json!(id))]));
    let mut tracker = Tracker {
        position: String::new(),
        key: None,
    };
    let mut builder = RecordBuilder::new(&ctx.p.columns, &ctx.p.widening);
    let mut line = Vec::with_capacity(4096);
    let mut scratch = String::new();
    let mut count: u64 = 0;
    let mut since_checkpoint: u64 = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| StreamError::ReadRows(e).at(id))?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let text = std::str::from_utf8(&line).map_err(|source| {
            StreamError::NotUtf8 {
                row: count + 1,
                source,
            }
            .at(id)
        })?;
        let mut fields = text.split('\t');
        builder.begin();
        for i in 0..ctx.p.columns.len() {
            let field = fields
                .next()
                .ok_or_else(|| StreamError::TooFewFields { row: count + 1 }.at(id))?;
            if field == "\\N" {
                builder.field(i, None);
                continue;
            }
            let value = unescape_copy_field(field, &mut scratch);
            builder.field(i, Some(value));
            if query.key_index == Some(i) {
                let k = tracker.key.get_or_insert_with(String::new);
                k.clear();
                k.push_str(value);
            }
        }
        if query.with_position {
            if let Some(position) = fields.next() {
                tracker.position.clear();
                tracker.position.push_str(position);
            }
        }
        if let Some(identity) = ctx.p.row_identity {
            builder.identity(identity, &tracker.position, count + 1);
        }
        if builder.schema_changed() {
            plan::write_schema(ctx.p, out)?;
        }
        let record = builder.finish();
        out.write_record_raw(
            &ctx.p.name,
            record,
            query.version,
            Some(&ctx.time_extracted),
        )?;
        count += 1;
        since_checkpoint += 1;
        counter.add(1);
        ctx.progress.rows(1);
        if since_checkpoint >= ctx.interval {
            since_checkpoint = 0;
            checkpoint(&tracker, out)?;
        }
    }
    if count > 0 && query.final_checkpoint {
        checkpoint(&tracker, out)?;
    }
    Ok(count)
}
