//! The COPY reader, below FULL_TABLE and INCREMENTAL: a planned stream's
//! `COPY (SELECT ...) TO STDOUT` text, streamed row by row through the codec
//! into RECORD messages (memory grows with the widest row, never with the
//! table), with a checkpoint every `state_interval` records; and the STATE
//! messages that open and close a copied stream.

use std::io::{self, BufRead, Write};

use pg_connect::{quote_ident, quote_qualified};
use postgres::Client;
use serde_json::json;
use singer_core::metrics::{tags, Counter};
use singer_core::{MessageWriter, RecordFrame, State};

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

    /// The LIMIT of a limited read (`conditions` its WHERE) that resends
    /// first the rows matching `again`, sent by an earlier run: those do not
    /// count against `max_record_count`, or as many of them would stop
    /// every run where it began. `None` without a limit.
    pub fn limit_past(
        &self,
        client: &mut Client,
        conditions: &[String],
        again: Option<String>,
    ) -> Result<Option<u64>, SyncError> {
        let (Some(limit), Some(again)) = (self.limit, again) else {
            return Ok(self.limit);
        };
        let mut resent = conditions.to_vec();
        resent.push(again);
        let sql = format!(
            "SELECT count(*) FROM {}{}",
            self.read_from(),
            where_clause(&resent)
        );
        let count: i64 = client
            .query_one(sql.as_str(), &[])
            .map_err(query_failed(&self.p.id, StreamError::Copy))?
            .get(0);
        Ok(Some(limit + count.max(0) as u64))
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

/// ` LIMIT n`, or nothing.
pub fn limit_clause(limit: Option<u64>) -> String {
    limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default()
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
    let mut lines = Lines::new(reader);
    let mut counter = Counter::new("record_count", tags([("stream", json!(id))]));
    let mut tracker = Tracker {
        position: String::new(),
        key: None,
    };
    let mut builder = RecordBuilder::new(&ctx.p.columns, &ctx.p.widening);
    let frame = RecordFrame::new(&ctx.p.name, query.version, Some(&ctx.time_extracted));
    let mut scratch = String::new();
    let mut count: u64 = 0;
    let mut since_checkpoint: u64 = 0;
    while let Some(line) = lines
        .next_line()
        .map_err(|e| StreamError::ReadRows(e).at(id))?
    {
        let text = std::str::from_utf8(line).map_err(|source| {
            StreamError::NotUtf8 {
                row: count + 1,
                source,
            }
            .at(id)
        })?;
        let mut fields = Fields { rest: Some(text) };
        builder.begin();
        for i in 0..ctx.p.columns.len() {
            let (field, escaped) = fields
                .next()
                .ok_or_else(|| StreamError::TooFewFields { row: count + 1 }.at(id))?;
            if escaped && field == "\\N" {
                builder.field(i, None);
                continue;
            }
            let value = if escaped {
                unescape_copy_field(field, &mut scratch)
            } else {
                field
            };
            builder.field(i, Some(value));
            if query.key_index == Some(i) {
                let k = tracker.key.get_or_insert_with(String::new);
                k.clear();
                k.push_str(value);
            }
        }
        if query.with_position {
            if let Some((position, _)) = fields.next() {
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
        out.write_record_framed(&frame, builder.finish())?;
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

/// The rows of a COPY text stream, read in place from the stream's own
/// messages (Postgres sends one row per message), without the `\n`.
struct Lines<R> {
    reader: R,
    /// Bytes of the reader's buffer the last row returned still borrows.
    used: usize,
    /// A row split across messages, gathered.
    split: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R) -> Self {
        Lines {
            reader,
            used: 0,
            split: Vec::new(),
        }
    }

    fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        self.reader.consume(std::mem::take(&mut self.used));
        self.split.clear();
        loop {
            let chunk = self.reader.fill_buf()?;
            if chunk.is_empty() {
                // The last row, when the stream does not end with a newline.
                return Ok((!self.split.is_empty()).then_some(&self.split[..]));
            }
            match memchr::memchr(b'\n', chunk) {
                Some(end) if self.split.is_empty() => {
                    self.used = end + 1;
                    // The same buffer again (nothing consumed), borrowed for the caller.
                    return Ok(Some(&self.reader.fill_buf()?[..end]));
                }
                Some(end) => {
                    self.split.extend_from_slice(&chunk[..end]);
                    self.reader.consume(end + 1);
                    return Ok(Some(&self.split[..]));
                }
                None => {
                    let n = chunk.len();
                    self.split.extend_from_slice(chunk);
                    self.reader.consume(n);
                }
            }
        }
    }
}

/// A COPY text row's tab-separated fields, as `str::split('\t')` gives
/// them, each with whether it holds a backslash (an escape, or `\N`).
struct Fields<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a str, bool);

    fn next(&mut self) -> Option<(&'a str, bool)> {
        let rest = self.rest?;
        let bytes = rest.as_bytes();
        let mut escaped = false;
        let mut from = 0;
        loop {
            match memchr::memchr2(b'\t', b'\\', &bytes[from..]) {
                Some(i) if bytes[from + i] == b'\\' => {
                    escaped = true;
                    from += i + 1;
                }
                Some(i) => {
                    let end = from + i;
                    self.rest = Some(&rest[end + 1..]);
                    return Some((&rest[..end], escaped));
                }
                None => {
                    self.rest = None;
                    return Some((rest, escaped));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Fields, Lines};

    #[test]
    fn fields_split_as_str_split_does() {
        for row in [
            "",
            "a",
            "a\tb",
            "\t",
            "a\t\\N\tc\\td\t",
            "x\\\\\ty",
            "\\",
            "ü\t漢\\n字",
            "12345678\t",
            "1234567\t\t\\\t12345678\\\t123456789012345\t\t",
            "\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t",
        ] {
            let ours: Vec<&str> = (Fields { rest: Some(row) }).map(|(f, _)| f).collect();
            let std: Vec<&str> = row.split('\t').collect();
            assert_eq!(ours, std, "{row:?}");
            for (f, escaped) in (Fields { rest: Some(row) }) {
                assert_eq!(escaped, f.contains('\\'), "{row:?}");
            }
        }
    }

    /// A reader handing out its input in pieces of `size` bytes, as COPY
    /// messages would.
    struct Pieces<'a> {
        data: &'a [u8],
        size: usize,
    }

    impl std::io::Read for Pieces<'_> {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            unreachable!("read through BufRead")
        }
    }

    impl std::io::BufRead for Pieces<'_> {
        fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
            Ok(&self.data[..self.size.min(self.data.len())])
        }
        fn consume(&mut self, n: usize) {
            self.data = &self.data[n..];
        }
    }

    #[test]
    fn lines_whole_split_and_unterminated() {
        let data = b"one\ttwo\nthree\n\nlast";
        for size in 1..=data.len() {
            let mut lines = Lines::new(Pieces { data, size });
            let mut got = Vec::new();
            while let Some(line) = lines.next_line().unwrap() {
                got.push(String::from_utf8(line.to_vec()).unwrap());
            }
            assert_eq!(got, ["one\ttwo", "three", "", "last"], "pieces of {size}");
        }
    }
}
