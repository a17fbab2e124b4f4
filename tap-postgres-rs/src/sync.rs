//! Sync: FULL_TABLE and INCREMENTAL, both streaming `COPY (SELECT ...) TO
//! STDOUT` text through the codec into RECORD messages built in one reused
//! buffer (memory grows with the widest row, never with the table).
//!
//! FULL_TABLE resumes by physical position: the first run is a plain
//! sequential scan (synchronized scans and parallel workers off, so rows
//! arrive in ctid order) and bookmarks the ctid of the last row sent. A
//! resumed run reads `ctid > bookmark OR <xmin invisible to the first run's
//! snapshot>`: still one sequential pass, and rows written after the first
//! run started are read again wherever an UPDATE moved them. A changed heap file
//! (VACUUM FULL, CLUSTER, REFRESH, TRUNCATE) restarts the stream.

use std::io::{BufRead, BufReader, Write};

use pg_connect::{quote_ident, quote_literal, quote_qualified};
use postgres::Client;
use serde_json::{json, Value};
use singer_core::metrics::{tags, Counter};
use singer_core::{Catalog, CatalogEntry, MessageWriter, State, WriteError};

use crate::codec::{unescape_copy_field, Codec};
use crate::discover::{self, Column, Relation, Scope, TypeMap};
use crate::settings::{Method, TapSettings};
use crate::state::{self as bookmarks, FullTableResume};

/// A sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("stream {stream}: {problem}")]
    Stream { stream: String, problem: String },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{0}")]
    Query(String),
}

pub fn stream_err(stream: &str, problem: impl Into<String>) -> SyncError {
    SyncError::Stream {
        stream: stream.to_owned(),
        problem: problem.into(),
    }
}

/// Syncs every selected stream of the catalog, the one the state says was
/// interrupted first; LOG_BASED streams last, together, from one slot.
pub fn run<W: Write>(
    client: &mut Client,
    connector: &pg_connect::Connector,
    catalog: &Catalog,
    mut state: State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    client
        .batch_execute("SET synchronize_seqscans = off; SET max_parallel_workers_per_gather = 0")
        .map_err(|e| SyncError::Query(pg_connect::describe(&e)))?;
    let mut streams: Vec<&CatalogEntry> = catalog.selected_streams().collect();
    if let Some(current) = state.currently_syncing().map(str::to_owned) {
        streams.sort_by_key(|s| s.tap_stream_id != current);
    }
    if streams.is_empty() {
        tracing::warn!("no stream is selected in the catalog");
    }
    // Types are loaded once per run, not once per stream.
    let types = TypeMap::load(client).map_err(|e| SyncError::Query(e.to_string()))?;
    let mut log_based = Vec::new();
    for entry in streams {
        let p = prepare(client, &types, entry, settings)?;
        if p.method == Method::LogBased {
            log_based.push(p);
            continue;
        }
        sync_prepared(client, &p, &mut state, settings, out)?;
    }
    if !log_based.is_empty() {
        for p in &log_based {
            write_schema(p, out)?;
        }
        crate::log_based::sync(client, connector, &log_based, &mut state, settings, out)?;
    }
    state.set_currently_syncing(None);
    out.write_state(&state.to_value())?;
    out.flush()?;
    Ok(())
}

/// The `(schema, table)` a catalog entry reads.
fn table_of(entry: &CatalogEntry) -> (String, String) {
    let id = &entry.tap_stream_id;
    let split = id.split_once('-');
    let schema = entry
        .stream_metadata_str("schema-name")
        .map(str::to_owned)
        .or_else(|| split.map(|(s, _)| s.to_owned()))
        .unwrap_or_else(|| "public".to_owned());
    let table = entry
        .table_name
        .clone()
        .or_else(|| split.map(|(_, t)| t.to_owned()))
        .unwrap_or_else(|| id.clone());
    (schema, table)
}

/// A selected stream, resolved against the database: what to read and how.
pub struct Prepared {
    /// `tap_stream_id`: the state's key.
    pub id: String,
    /// The catalog's `stream` name: what messages carry.
    pub name: String,
    pub rel: Relation,
    /// The columns read, in table order.
    pub columns: Vec<Column>,
    pub key_properties: Vec<String>,
    pub method: Method,
    pub replication_key: Option<String>,
}

fn prepare(
    client: &mut Client,
    types: &TypeMap,
    entry: &CatalogEntry,
    settings: &TapSettings,
) -> Result<Prepared, SyncError> {
    let id = entry.tap_stream_id.as_str();
    let (schema, table) = table_of(entry);
    let rel = discover::relations(
        client,
        &Scope::One {
            schema: &schema,
            name: &table,
        },
        types,
    )
    .map_err(|e| stream_err(id, e.to_string()))?
    .into_iter()
    .next()
    .ok_or_else(|| {
        stream_err(
            id,
            format!(
                "table {} does not exist (or this user cannot see it)",
                quote_qualified(&schema, &table)
            ),
        )
    })?;

    let method = match entry.replication_method() {
        Some(m) => Method::parse(&m).ok_or_else(|| {
            stream_err(
                id,
                format!(
                    "unknown replication method {m:?} (use FULL_TABLE, INCREMENTAL or LOG_BASED)"
                ),
            )
        })?,
        None => settings.default_method,
    };
    let replication_key = match method {
        Method::FullTable | Method::LogBased => None,
        Method::Incremental => {
            let key = entry.replication_key().ok_or_else(|| {
                stream_err(
                    id,
                    "INCREMENTAL needs a replication-key in the catalog metadata",
                )
            })?;
            if rel.column(&key).is_none() {
                return Err(stream_err(
                    id,
                    format!(
                        "replication key {key:?} is not a column of {}",
                        quote_qualified(&rel.schema, &rel.name)
                    ),
                ));
            }
            Some(key)
        }
    };
    if method == Method::LogBased && rel.kind != discover::RelKind::Table {
        return Err(stream_err(
            id,
            "LOG_BASED works on ordinary tables only (views, materialized views, foreign and partitioned \
             tables have no change log of their own): use FULL_TABLE or INCREMENTAL for this stream",
        ));
    }

    let mut key_properties = entry.key_properties();
    if key_properties.is_empty() {
        key_properties = rel.primary_key.clone();
    }
    if key_properties.is_empty() && method == Method::LogBased {
        // Without a primary key, the replica identity index identifies rows
        // in the log; the target needs the same key to apply updates and deletes.
        key_properties = client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
                 WHERE n.nspname = $1 AND c.relname = $2 AND i.indisreplident ORDER BY k.ord",
                &[&rel.schema, &rel.name],
            )
            .map_err(|e| stream_err(id, pg_connect::describe(&e)))?
            .iter()
            .map(|r| r.get(0))
            .collect();
    }
    let columns: Vec<Column> = rel
        .columns
        .iter()
        .filter(|c| {
            entry.is_column_selected(&c.name)
                || key_properties.contains(&c.name)
                || replication_key.as_deref() == Some(c.name.as_str())
        })
        .cloned()
        .collect();
    if columns.is_empty() {
        return Err(stream_err(id, "no column is selected"));
    }
    Ok(Prepared {
        id: id.to_owned(),
        name: entry.stream.clone(),
        rel,
        columns,
        key_properties,
        method,
        replication_key,
    })
}

/// The stream's SCHEMA message (LOG_BASED streams also carry `_sdc_lsn` and
/// `_sdc_deleted_at`).
fn write_schema<W: Write>(p: &Prepared, out: &mut MessageWriter<W>) -> Result<(), SyncError> {
    let mut properties: serde_json::Map<String, Value> = p
        .columns
        .iter()
        .map(|c| (c.name.clone(), discover::property_schema(c)))
        .collect();
    if p.method == Method::LogBased {
        properties.extend(crate::log_based::extra_properties());
    }
    let schema_json = json!({"type": "object", "properties": properties});
    let bookmark_props = p.replication_key.as_ref().map(|k| vec![k.clone()]);
    out.write_schema(
        &p.name,
        &schema_json,
        &p.key_properties,
        bookmark_props.as_deref(),
    )?;
    Ok(())
}

fn sync_prepared<W: Write>(
    client: &mut Client,
    p: &Prepared,
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    write_schema(p, out)?;
    match &p.replication_key {
        None => {
            copy_stream(client, p, state, settings, out)?;
        }
        Some(key) => {
            let ctx = begin(p, state, settings, out)?;
            let count = incremental(client, &ctx, key, state, out)?;
            end(p, count, state, out)?;
        }
    }
    Ok(())
}

fn begin<'a, W: Write>(
    p: &'a Prepared,
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<StreamCtx<'a>, SyncError> {
    state.set_currently_syncing(Some(&p.id));
    out.write_state(&state.to_value())?;
    tracing::info!(stream = %p.id, method = p.method.as_str(), "sync started");
    Ok(StreamCtx {
        id: &p.id,
        name: &p.name,
        rel: &p.rel,
        columns: p.columns.iter().collect(),
        interval: settings.state_interval,
        time_extracted: chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
            .to_string(),
    })
}

fn end<W: Write>(
    p: &Prepared,
    count: u64,
    state: &mut State,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    state.set_currently_syncing(None);
    out.write_state(&state.to_value())?;
    out.flush()?;
    tracing::info!(stream = %p.id, records = count, "sync finished");
    Ok(())
}

/// A whole-table copy of a prepared stream (FULL_TABLE, and LOG_BASED's
/// initial copy): resumable, framed by ACTIVATE_VERSION.
pub fn copy_stream<W: Write>(
    client: &mut Client,
    p: &Prepared,
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<u64, SyncError> {
    let ctx = begin(p, state, settings, out)?;
    let count = full_table(client, &ctx, state, out)?;
    end(p, count, state, out)?;
    Ok(count)
}

struct StreamCtx<'a> {
    id: &'a str,
    name: &'a str,
    rel: &'a Relation,
    columns: Vec<&'a Column>,
    interval: u64,
    time_extracted: String,
}

impl StreamCtx<'_> {
    fn select_list(&self) -> String {
        let mut list = String::new();
        for (i, c) in self.columns.iter().enumerate() {
            if i > 0 {
                list.push_str(", ");
            }
            list.push_str(&quote_ident(&c.name));
            if c.read_as_numeric {
                // money's text form depends on lc_monetary; numeric's does not.
                list.push_str(if matches!(c.codec, Codec::Array { .. }) {
                    "::numeric[]"
                } else {
                    "::numeric"
                });
            }
        }
        list
    }

    fn table(&self) -> String {
        quote_qualified(&self.rel.schema, &self.rel.name)
    }
}

fn full_table<W: Write>(
    client: &mut Client,
    ctx: &StreamCtx<'_>,
    state: &mut State,
    out: &mut MessageWriter<W>,
) -> Result<u64, SyncError> {
    let id = ctx.id;
    let query_err = |e: postgres::Error| stream_err(id, pg_connect::describe(&e));
    let saved = bookmarks::full_table_resume(state, id);
    // ctid is readable only with SELECT on the whole table.
    let with_ctid = ctx.rel.kind.has_ctid() && ctx.rel.table_select;
    let resume = saved
        .clone()
        .filter(|r| with_ctid && r.relfilenode == ctx.rel.relfilenode);
    if saved.is_some() && resume.is_none() {
        tracing::info!(
            stream = id,
            "table was rewritten since the bookmark: starting over"
        );
    }
    let mut progress = match &resume {
        Some(r) => r.clone(),
        None => {
            // Taken before the COPY's own snapshot: anything that snapshot
            // cannot see was in progress here or started later.
            let row = client
                .query_one(
                    "SELECT (txid_snapshot_xmax(s) % 4294967296)::bigint, \
                            ARRAY(SELECT (x % 4294967296)::bigint FROM txid_snapshot_xip(s) x) \
                       FROM txid_current_snapshot() s",
                    &[],
                )
                .map_err(query_err)?;
            let xip: Vec<i64> = row.get(1);
            FullTableResume {
                version: chrono::Utc::now().timestamp_millis(),
                ctid: "(0,0)".into(),
                relfilenode: ctx.rel.relfilenode,
                snapshot_xmax: row.get::<_, i64>(0) as u32,
                snapshot_xip: xip.into_iter().map(|x| x as u32).collect(),
            }
        }
    };
    let mut query = format!("SELECT {}", ctx.select_list());
    if with_ctid {
        query.push_str(", ctid");
    }
    query.push_str(&format!(" FROM {}", ctx.table()));
    if let Some(r) = &resume {
        tracing::info!(stream = id, ctid = %r.ctid, "resuming after the bookmark");
        let xip: Vec<String> = r.snapshot_xip.iter().map(u32::to_string).collect();
        query.push_str(&format!(
            " WHERE ctid > {}::tid OR age(xmin) <= age({}::xid) OR xmin = ANY({}::xid[])",
            quote_literal(&r.ctid),
            quote_literal(&r.snapshot_xmax.to_string()),
            quote_literal(&format!("{{{}}}", xip.join(",")))
        ));
    } else {
        bookmarks::finish_full_table(state, id, progress.version);
        out.write_activate_version(ctx.name, progress.version)?;
    }

    let version = progress.version;
    let count = emit_rows(
        client,
        ctx,
        &query,
        Some(version),
        with_ctid,
        None,
        // The stream's final STATE follows the closing ACTIVATE_VERSION.
        false,
        out,
        |tracker, out| {
            // Without ctids (views, partitioned parents, foreign tables) an
            // interrupted sync starts over; the STATE still lets targets flush.
            if with_ctid {
                progress.ctid.clear();
                progress.ctid.push_str(&tracker.ctid);
                bookmarks::set_full_table_progress(state, id, &progress);
            }
            out.write_state(&state.to_value())?;
            Ok(())
        },
    )?;
    bookmarks::finish_full_table(state, id, version);
    out.write_activate_version(ctx.name, version)?;
    Ok(count)
}

fn incremental<W: Write>(
    client: &mut Client,
    ctx: &StreamCtx<'_>,
    key: &str,
    state: &mut State,
    out: &mut MessageWriter<W>,
) -> Result<u64, SyncError> {
    let id = ctx.id;
    let key_index = ctx
        .columns
        .iter()
        .position(|c| c.name == key)
        .expect("the replication key is always selected");
    let key_col = ctx.columns[key_index];
    let mut query = format!("SELECT {} FROM {}", ctx.select_list(), ctx.table());
    if let Some(value) = bookmarks::incremental_bookmark(state, id, key) {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(stream_err(
                    id,
                    format!(
                        "bookmark replication_key_value {other} is neither a string nor a number"
                    ),
                ))
            }
        };
        query.push_str(&format!(
            " WHERE {} >= {}::{}",
            quote_ident(key),
            quote_literal(&text),
            key_col.sql_datatype
        ));
    }
    query.push_str(&format!(" ORDER BY {}", quote_ident(key)));

    let count = emit_rows(
        client,
        ctx,
        &query,
        None,
        false,
        Some(key_index),
        true,
        out,
        |tracker, out| {
            if let Some(v) = bookmark_value(key_col, &tracker.key) {
                bookmarks::set_incremental(state, id, key, v);
            }
            out.write_state(&state.to_value())?;
            Ok(())
        },
    )?;
    Ok(count)
}

/// The bookmark for a replication key's text: integers as numbers, other
/// numbers as their exact text, the rest as their JSON string.
fn bookmark_value(col: &Column, text: &Option<String>) -> Option<Value> {
    let text = text.as_deref()?;
    if col.numeric_like {
        return Some(Value::String(text.to_owned()));
    }
    let mut encoded = String::new();
    col.codec.encode(text, &mut encoded);
    Some(serde_json::from_str(&encoded).unwrap_or_else(|_| Value::String(text.to_owned())))
}

/// What a checkpoint needs to know about the last row sent.
struct Tracker {
    ctid: String,
    /// The last non-NULL replication key text.
    key: Option<String>,
}

/// Streams a COPY query as RECORDs, calling `checkpoint` every `interval`
/// records (and after the last one with `final_checkpoint`). Returns the
/// number of records.
#[allow(clippy::too_many_arguments)]
fn emit_rows<W: Write>(
    client: &mut Client,
    ctx: &StreamCtx<'_>,
    query: &str,
    version: Option<i64>,
    with_ctid: bool,
    key_index: Option<usize>,
    final_checkpoint: bool,
    out: &mut MessageWriter<W>,
    mut checkpoint: impl FnMut(&Tracker, &mut MessageWriter<W>) -> Result<(), SyncError>,
) -> Result<u64, SyncError> {
    let id = ctx.id;
    let copy = format!("COPY ({query}) TO STDOUT");
    tracing::debug!(stream = id, sql = %copy, "reading");
    let reader = client
        .copy_out(copy.as_str())
        .map_err(|e| stream_err(id, pg_connect::describe(&e)))?;
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let keys: Vec<String> = ctx
        .columns
        .iter()
        .map(|c| {
            let mut k = String::new();
            singer_core::push_json_string(&mut k, &c.name);
            k.push(':');
            k
        })
        .collect();
    let mut counter = Counter::new("record_count", tags([("stream", json!(id))]));
    let mut tracker = Tracker {
        ctid: String::new(),
        key: None,
    };
    let mut line = Vec::with_capacity(4096);
    let mut record = String::with_capacity(4096);
    let mut scratch = String::new();
    let mut count: u64 = 0;
    let mut since_checkpoint: u64 = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| stream_err(id, format!("reading rows failed: {}", io_reason(&e))))?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let text = std::str::from_utf8(&line)
            .map_err(|e| stream_err(id, format!("row {} is not UTF-8: {e}", count + 1)))?;
        let mut fields = text.split('\t');
        record.clear();
        record.push('{');
        for (i, (col, key)) in ctx.columns.iter().zip(&keys).enumerate() {
            let field = fields
                .next()
                .ok_or_else(|| stream_err(id, format!("row {} has too few fields", count + 1)))?;
            if i > 0 {
                record.push(',');
            }
            record.push_str(key);
            if field == "\\N" {
                record.push_str("null");
                continue;
            }
            let value = unescape_copy_field(field, &mut scratch);
            col.codec.encode(value, &mut record);
            if key_index == Some(i) {
                let k = tracker.key.get_or_insert_with(String::new);
                k.clear();
                k.push_str(value);
            }
        }
        record.push('}');
        if with_ctid {
            if let Some(ctid) = fields.next() {
                tracker.ctid.clear();
                tracker.ctid.push_str(ctid);
            }
        }
        out.write_record_raw(ctx.name, &record, version, Some(&ctx.time_extracted))?;
        count += 1;
        since_checkpoint += 1;
        counter.add(1);
        if since_checkpoint >= ctx.interval {
            since_checkpoint = 0;
            checkpoint(&tracker, out)?;
        }
    }
    if count > 0 && final_checkpoint {
        checkpoint(&tracker, out)?;
    }
    Ok(count)
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
