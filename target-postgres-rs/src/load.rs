//! Loading: records stream into COPY (straight into a new, empty table, else
//! into a temporary staging table), a flush merges every pending stream
//! (`INSERT … SELECT DISTINCT ON (keys) … ON CONFLICT DO UPDATE`), applies hard
//! deletes, notifies, commits in one transaction, and only then emits STATE.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use pg_connect::{describe, quote_ident};
use postgres::Client;
use serde_json::{json, Value};
use singer_core::{
    ActivateVersionMessage, JsonSchema, Message, ReadError, RecordMessage, SchemaMessage,
    WriteError,
};

use crate::binary::{self, bin_kind, BinKind};
use crate::evolve::{ensure_table, key_list, resolve_type, TableInfo};
use crate::naming::{table_for_stream, TableName};
use crate::settings::{LoadMethod, TargetSettings};
use crate::state::StateOut;
use crate::stream::{
    append_row, append_row_binary, BinaryRowError, RowContext, RowError, Source, StreamShape,
    DELETED_AT, TABLE_VERSION,
};
use crate::types::{declared_sql_type, json_schema_type, kind_of, ColumnKind};

/// Keys remembered per batch to tell whether it repeats one; past this the
/// batch is assumed to (memory stays bounded).
const MAX_TRACKED_KEYS: usize = 200_000;

/// Integer keys as disjoint ranges (`start -> end`, inclusive): a handful of
/// entries for serial keys however many rows, so memory stays flat.
#[derive(Debug, Default)]
struct KeyRanges {
    ranges: std::collections::BTreeMap<i64, i64>,
}

impl KeyRanges {
    /// Past this many ranges (checked between batches) the keys are too
    /// scattered to track, and the stream's batches are staged.
    const MAX_RANGES: usize = 50_000;

    /// Adds `k`; `false` when it was there already.
    fn insert(&mut self, k: i64) -> bool {
        let before = self.ranges.range(..=k).next_back().map(|(s, e)| (*s, *e));
        if before.is_some_and(|(_, e)| k <= e) {
            return false;
        }
        let joins_before = before
            .filter(|(_, e)| e.checked_add(1) == Some(k))
            .map(|(s, _)| s);
        let after = k
            .checked_add(1)
            .and_then(|n| self.ranges.get(&n).map(|e| (n, *e)));
        match (joins_before, after) {
            (Some(s), Some((n, e))) => {
                self.ranges.remove(&n);
                self.ranges.insert(s, e);
            }
            (Some(s), None) => {
                self.ranges.insert(s, k);
            }
            (None, Some((n, e))) => {
                self.ranges.remove(&n);
                self.ranges.insert(k, e);
            }
            (None, None) => {
                self.ranges.insert(k, k);
            }
        }
        true
    }

    fn too_big(&self) -> bool {
        self.ranges.len() > Self::MAX_RANGES
    }
}

/// The single integer key of a row's key buffer (the key's JSON text, NUL-terminated).
fn integer_of(key: &[u8]) -> Option<i64> {
    let k = key.split(|&b| b == 0).next()?;
    std::str::from_utf8(k).ok()?.parse().ok()
}

/// One input item from the reader thread.
pub type Item = Result<(usize, Message), ReadError>;

/// Why a load failed. Each names the stream and input line where it can.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("input line {line}: RECORD for stream `{stream}` arrives before its SCHEMA")]
    NoSchema { line: usize, stream: String },
    #[error("input line {line} (stream `{stream}`): {problem}")]
    Schema {
        line: usize,
        stream: String,
        problem: String,
    },
    #[error("input line {line} (stream `{stream}`): {source}")]
    Row {
        line: usize,
        stream: String,
        source: RowError,
    },
    #[error(
        "input line {line} (stream `{stream}`): column `{column}`: cannot load value: {message}"
    )]
    Value {
        line: usize,
        stream: String,
        column: String,
        message: String,
    },
    #[error("stream `{stream}` (table {table}): {what} failed: {message}")]
    Db {
        stream: String,
        table: String,
        what: &'static str,
        message: String,
    },
    #[error("{what} failed: {message}")]
    Session { what: &'static str, message: String },
    #[error("cannot write state: {0}")]
    Output(#[from] WriteError),
}

fn session(what: &'static str) -> impl Fn(postgres::Error) -> LoadError {
    move |e| LoadError::Session {
        what,
        message: describe(&e),
    }
}

fn db_err(stream: &str, table: &TableName, what: &'static str, e: &postgres::Error) -> LoadError {
    LoadError::Db {
        stream: stream.to_owned(),
        table: table.qualified(),
        what,
        message: describe(e),
    }
}

/// Messages from the reader thread, with one item of look-ahead.
pub struct Input<I: Iterator<Item = Item>> {
    items: I,
    back: Option<Item>,
}

impl<I: Iterator<Item = Item>> Input<I> {
    pub fn new(items: I) -> Self {
        Input { items, back: None }
    }
    fn next(&mut self) -> Option<Item> {
        self.back.take().or_else(|| self.items.next())
    }
    fn push_back(&mut self, item: Item) {
        self.back = Some(item);
    }
}

/// A stream's table and its pending batch.
struct StreamLoad {
    shape: StreamShape,
    kinds: Vec<ColumnKind>,
    /// Binary COPY kinds, when every column has one.
    bins: Option<Vec<BinKind>>,
    info: TableInfo,
    /// Staging table name (unique per stream in this run).
    stage: String,
    /// Rows in the current batch.
    batch_rows: usize,
    /// Rows of this batch go straight into the table (new/empty table, no repeated key yet).
    direct: bool,
    /// The staging table exists in the open transaction.
    staged: bool,
    /// Keys seen in this batch (`None`: not tracked; too many, or `ascending` instead).
    seen: Option<HashSet<Box<[u8]>>>,
    /// Integer-key mode for this batch: a row goes straight into the table
    /// when its key is above `floor` and not yet loaded in this run, so it
    /// can't conflict with a row already there.
    integer_direct: bool,
    /// The table's largest key when this run first wrote to it (for a single
    /// integer key); every row at or below it may exist already.
    floor: Option<i64>,
    /// Keys this run has loaded (directly or through staging). `None` once
    /// they no longer fit compactly: then every batch is staged.
    run_keys: Option<KeyRanges>,
    /// How this batch lands has been decided (at its first record).
    decided: bool,
    repeats: bool,
    deletes: bool,
    /// The batch has touched the table (rows copied or staged).
    pending: bool,
}

impl StreamLoad {
    fn upserts(&self, method: LoadMethod) -> bool {
        method != LoadMethod::AppendOnly && !self.shape.keys.is_empty()
    }

    fn start_batch(&mut self) {
        self.batch_rows = 0;
        self.staged = false;
        self.repeats = false;
        self.deletes = false;
        self.pending = false;
        self.seen = None;
        self.integer_direct = false;
        self.direct = false;
        self.decided = false;
    }

    /// The single integer key column, when the table has a unique index on it.
    fn integer_key(&self) -> Option<usize> {
        match self.shape.keys.as_slice() {
            [k] if self.info.unique_on_keys
                && matches!(
                    self.info.types[*k].as_str(),
                    "smallint" | "integer" | "bigint"
                ) =>
            {
                Some(*k)
            }
            _ => None,
        }
    }

    /// Decides, at the batch's first record, whether rows go straight into the table.
    fn decide(&mut self, client: &mut Client, method: LoadMethod) -> Result<(), postgres::Error> {
        self.decided = true;
        if !self.upserts(method) {
            self.direct = true;
            return Ok(());
        }
        if let Some(k) = self.integer_key() {
            if self.floor.is_none() {
                let max: Option<i64> = client
                    .query_one(
                        &format!(
                            "SELECT max({})::bigint FROM {}",
                            quote_ident(&self.shape.columns[k].name),
                            self.shape.table.qualified()
                        ),
                        &[],
                    )?
                    .get(0);
                self.floor = Some(max.unwrap_or(i64::MIN));
                self.run_keys = Some(KeyRanges::default());
            }
            // Judged between batches only: within one, the ranges grow by at
            // most the batch size, and a row accepted directly stays accepted.
            if self.run_keys.as_ref().is_some_and(KeyRanges::too_big) {
                self.run_keys = None;
            }
            if self.run_keys.is_some() {
                self.integer_direct = true;
                self.direct = true;
                return Ok(());
            }
        }
        self.seen = Some(HashSet::new());
        self.direct = self.info.empty && self.info.unique_on_keys;
        Ok(())
    }
}

/// The loader: one connection, one transaction per flush.
pub struct Loader<W: Write> {
    client: Client,
    settings: TargetSettings,
    streams: HashMap<String, StreamLoad>,
    in_tx: bool,
    state: StateOut<W>,
    /// `_sdc_sequence` = this + input line: increasing within and across runs.
    sequence_base: i64,
    type_cache: HashMap<String, Option<String>>,
    /// Tables emptied by `load_method: overwrite` in this run.
    overwritten: HashSet<TableName>,
    next_stage: usize,
}

impl<W: Write> Loader<W> {
    pub fn new(mut client: Client, settings: TargetSettings, out: W) -> Self {
        // Staging tables live in temp buffers: room for a batch of wide rows
        // (server memory, allocated only as used; must be set before the first).
        if let Err(e) = client.batch_execute("SET temp_buffers = '256MB'") {
            tracing::warn!("cannot raise temp_buffers: {}", describe(&e));
        }
        let now = chrono::Utc::now();
        Loader {
            client,
            settings,
            streams: HashMap::new(),
            in_tx: false,
            state: StateOut::new(out),
            sequence_base: now.timestamp_micros().saturating_mul(1000),
            type_cache: HashMap::new(),
            overwritten: HashSet::new(),
            next_stage: 0,
        }
    }

    /// Loads every message, then commits what is pending.
    pub fn run<I: Iterator<Item = Item>>(&mut self, input: &mut Input<I>) -> Result<(), LoadError> {
        while let Some(item) = input.next() {
            let (line, message) = item?;
            match message {
                Message::Record(r) => self.records(line, r, input)?,
                Message::Schema(s) => self.schema(line, s)?,
                Message::State(s) => self.state.received(s.value),
                Message::ActivateVersion(a) => self.activate_version(a)?,
            }
        }
        self.flush()
    }

    fn begin(&mut self) -> Result<(), LoadError> {
        if !self.in_tx {
            self.client
                .batch_execute("BEGIN")
                .map_err(session("BEGIN"))?;
            self.in_tx = true;
        }
        Ok(())
    }

    fn schema(&mut self, line: usize, message: SchemaMessage) -> Result<(), LoadError> {
        let stream = message.stream.clone();
        let bad = |problem: String| LoadError::Schema {
            line,
            stream: stream.clone(),
            problem,
        };
        let is_object = match message.schema.get("type") {
            None => true,
            Some(Value::String(t)) => t == "object",
            Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
            Some(_) => false,
        };
        if !is_object
            || !message
                .schema
                .get("properties")
                .is_some_and(Value::is_object)
        {
            return Err(bad(
                "schema must be an object schema with `properties`".into()
            ));
        }
        if let Some(known) = self.streams.get(&stream) {
            if known.shape.message == message {
                return Ok(());
            }
            if known.pending {
                self.flush()?;
            }
        }
        let parsed = JsonSchema::from_value(&message.schema).map_err(|e| bad(e.to_string()))?;
        let table = table_for_stream(&stream, &self.settings);
        let mut declared = Vec::new();
        for (_, sub) in &parsed.properties {
            if let Some(t) = declared_sql_type(sub) {
                declared.push(t.to_owned());
            }
        }
        for t in declared {
            if !self.type_cache.contains_key(&t) {
                let resolved = self.resolve(&t);
                self.type_cache.insert(t, resolved);
            }
        }
        let cache = &self.type_cache;
        let mut type_for = |prop: &str, sub: &JsonSchema| -> String {
            if let Some(t) = declared_sql_type(sub) {
                match cache.get(t) {
                    Some(Some(resolved)) => return resolved.clone(),
                    _ => tracing::warn!(
                        stream = %stream, property = prop, r#type = t,
                        "the destination has no such type; using the JSON Schema mapping"
                    ),
                }
            }
            json_schema_type(sub)
        };
        let use_keys = self.settings.load_method != LoadMethod::AppendOnly;
        let shape = StreamShape::new(
            message,
            &parsed,
            table.clone(),
            self.settings.add_record_metadata,
            use_keys,
            &mut type_for,
        )
        .map_err(bad)?;
        let info = ensure_table(&mut self.client, &shape, use_keys)
            .map_err(|e| db_err(&stream, &table, "creating or altering the table", &e))?;
        let kinds = info.types.iter().map(|t| kind_of(t)).collect();
        let bins = binary_kinds(&shape, &info);
        let stage = format!("_sdc_stage_{}", self.next_stage);
        self.next_stage += 1;
        let mut load = StreamLoad {
            shape,
            kinds,
            bins,
            info,
            stage,
            batch_rows: 0,
            direct: false,
            staged: false,
            seen: None,
            integer_direct: false,
            floor: None,
            run_keys: None,
            decided: false,
            repeats: false,
            deletes: false,
            pending: false,
        };
        load.start_batch();
        self.streams.insert(stream, load);
        Ok(())
    }

    /// Asks the destination about a declared type without disturbing an open
    /// transaction (a malformed name raises an error there).
    fn resolve(&mut self, declared: &str) -> Option<String> {
        if self.in_tx {
            self.client.batch_execute("SAVEPOINT sdc_type").ok()?;
            let r = resolve_type(&mut self.client, declared);
            let end = if r.is_some() {
                "RELEASE SAVEPOINT sdc_type"
            } else {
                "ROLLBACK TO SAVEPOINT sdc_type"
            };
            self.client.batch_execute(end).ok()?;
            r
        } else {
            resolve_type(&mut self.client, declared)
        }
    }

    /// Copies a run of consecutive RECORDs of one stream through one COPY.
    fn records<I: Iterator<Item = Item>>(
        &mut self,
        line: usize,
        first: RecordMessage,
        input: &mut Input<I>,
    ) -> Result<(), LoadError> {
        let stream = first.stream.clone();
        if !self.streams.contains_key(&stream) {
            return Err(LoadError::NoSchema { line, stream });
        }
        self.begin()?;
        let method = self.settings.load_method;
        let batch_size = self.settings.batch_size_rows;
        let strip_nul = self.settings.sanitize_nul;
        let sequence_base = self.sequence_base;
        let Loader {
            client,
            streams,
            overwritten,
            ..
        } = self;
        let st = streams.get_mut(&stream).expect("checked above");
        let table = st.shape.table.clone();
        if method == LoadMethod::Overwrite && !overwritten.contains(&table) {
            client
                .batch_execute(&format!("TRUNCATE {}", table.qualified()))
                .map_err(|e| db_err(&stream, &table, "emptying the table (overwrite)", &e))?;
            overwritten.insert(table.clone());
            st.info.empty = true;
            st.floor = None;
            st.run_keys = None;
            st.start_batch();
        }
        if !st.decided {
            st.decide(client, method)
                .map_err(|e| db_err(&stream, &table, "reading the table's largest key", &e))?;
        }
        if !st.direct && !st.staged {
            client
                .batch_execute(&format!(
                    "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA",
                    quote_ident(&st.stage),
                    st.shape
                        .column_list
                        .trim_start_matches('(')
                        .trim_end_matches(')'),
                    table.qualified()
                ))
                .map_err(|e| db_err(&stream, &table, "creating the staging table", &e))?;
            st.staged = true;
        }
        let into = if st.direct {
            table.qualified()
        } else {
            quote_ident(&st.stage)
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut ctx = RowContext {
            received_at: &now,
            batched_at: &now,
            sequence: 0,
            strip_nul,
        };
        st.pending = true;
        let binary = st.bins.is_some();
        let format = if binary { " (FORMAT binary)" } else { "" };
        let mut writer = client
            .copy_in(&format!(
                "COPY {into} {} FROM STDIN{format}",
                st.shape.column_list
            ))
            .map_err(|e| db_err(&stream, &table, "starting COPY", &e))?;
        let mut failed: Option<LoadError> = None;
        if binary {
            if let Err(e) = writer.write_all(binary::HEADER) {
                failed = Some(LoadError::Session {
                    what: "COPY",
                    message: e.to_string(),
                });
            }
        }
        let mut lines: Vec<usize> = Vec::new();
        let mut row = Vec::with_capacity(4096);
        let mut key = Vec::new();
        let mut next = failed.is_none().then_some((line, first));
        let mut to_staging: Option<(usize, RecordMessage)> = None;
        let mut to_text = false;
        let mut flush_after = false;
        while let Some((line, rec)) = next.take() {
            row.clear();
            ctx.sequence = sequence_base + line as i64;
            let want_key = st.seen.is_some() || st.run_keys.is_some();
            let appended = match &st.bins {
                Some(bins) => match append_row_binary(
                    &st.shape,
                    bins,
                    &rec,
                    &ctx,
                    &mut row,
                    want_key.then_some(&mut key),
                ) {
                    Ok(d) => Ok(d),
                    Err(BinaryRowError::Row(e)) => Err(e),
                    Err(BinaryRowError::Fallback) => {
                        // A value only Postgres' text parser can judge: this
                        // stream continues in text COPY from this row on.
                        to_text = true;
                        to_staging = Some((line, rec));
                        break;
                    }
                },
                None => append_row(
                    &st.shape,
                    &st.kinds,
                    &rec,
                    &ctx,
                    &mut row,
                    want_key.then_some(&mut key),
                ),
            };
            match appended {
                Err(source) => {
                    failed = Some(LoadError::Row {
                        line,
                        stream: stream.clone(),
                        source,
                    });
                    break;
                }
                Ok(deleted) => st.deletes |= deleted,
            }
            let int_key = st.run_keys.as_ref().and_then(|_| integer_of(&key));
            if st.integer_direct {
                let fresh = match (int_key, st.floor, st.run_keys.as_mut()) {
                    (Some(k), Some(floor), Some(keys)) if k > floor => keys.insert(k),
                    _ => false,
                };
                if !fresh {
                    // A key that may exist already (or repeats in this run):
                    // this row and the rest of the batch go through staging.
                    st.integer_direct = false;
                    st.seen = Some(HashSet::new());
                    to_staging = Some((line, rec));
                    break;
                }
            } else if let (Some(k), Some(keys)) = (int_key, st.run_keys.as_mut()) {
                // Staged keys count too: a later batch must not copy them directly.
                keys.insert(k);
            }
            if st.integer_direct {
                // Tracked by `run_keys` instead of `seen`.
            } else if let Some(seen) = &mut st.seen {
                if !seen.contains(key.as_slice()) {
                    seen.insert(key.as_slice().into());
                } else {
                    st.repeats = true;
                }
                if seen.len() > MAX_TRACKED_KEYS {
                    st.seen = None;
                    st.repeats = true;
                }
                if st.direct && st.repeats {
                    // The table can't take a repeated key directly: this row
                    // and the rest of the batch go through staging.
                    to_staging = Some((line, rec));
                    break;
                }
            }
            if let Err(e) = writer.write_all(&row) {
                failed = Some(LoadError::Session {
                    what: "COPY",
                    message: e.to_string(),
                });
                break;
            }
            lines.push(line);
            st.batch_rows += 1;
            if st.batch_rows >= batch_size {
                flush_after = true;
                break;
            }
            match input.next() {
                Some(Ok((l, Message::Record(r)))) if r.stream == stream => next = Some((l, r)),
                Some(other) => {
                    input.push_back(other);
                    break;
                }
                None => break,
            }
        }
        if binary && failed.is_none() {
            if let Err(e) = writer.write_all(binary::TRAILER) {
                failed = Some(LoadError::Session {
                    what: "COPY",
                    message: e.to_string(),
                });
            }
        }
        let finished = if failed.is_some() {
            // Abandon the COPY: dropping the writer without finishing aborts it.
            drop(writer);
            Ok(0)
        } else {
            writer.finish()
        };
        if let Some(e) = failed {
            return Err(e);
        }
        if let Err(e) = finished {
            return Err(copy_error(&e, st, &lines));
        }
        if let Some((line, rec)) = to_staging {
            if to_text {
                tracing::info!(stream = %stream, line, "continuing in text COPY");
                st.bins = None;
            } else {
                st.direct = false;
            }
            return self.records(line, rec, input);
        }
        if flush_after {
            self.flush()?;
        }
        Ok(())
    }

    /// Merges every pending stream, commits, notifies, then emits STATE.
    pub fn flush(&mut self) -> Result<(), LoadError> {
        let mut written = Vec::new();
        let hard_delete = self.settings.hard_delete;
        let mut names: Vec<&String> = self.streams.keys().collect();
        names.sort();
        let names: Vec<String> = names.into_iter().cloned().collect();
        for name in names {
            let st = self.streams.get_mut(&name).expect("listed");
            if !st.pending {
                continue;
            }
            let table = st.shape.table.clone();
            let started = std::time::Instant::now();
            if st.staged {
                merge(&mut self.client, st)
                    .map_err(|e| db_err(&name, &table, "merging the batch", &e))?;
            }
            let merge_ms = started.elapsed().as_millis() as u64;
            if hard_delete && st.deletes && st.shape.has_column(DELETED_AT) {
                self.client
                    .batch_execute(&format!(
                        "DELETE FROM {} WHERE {} IS NOT NULL",
                        table.qualified(),
                        quote_ident(DELETED_AT)
                    ))
                    .map_err(|e| db_err(&name, &table, "deleting deleted records", &e))?;
            }
            if st.batch_rows > 0 {
                written.push(
                    json!({"schema": table.schema, "table": table.table, "rows": st.batch_rows}),
                );
                st.info.empty = false;
            }
            tracing::info!(stream = %name, table = %table.qualified(), rows = st.batch_rows, staged = st.staged, merge_ms, "batch loaded");
            st.start_batch();
        }
        if let (Some(channel), false) = (&self.settings.notify_channel, written.is_empty()) {
            let payload = json!({"tables": written}).to_string();
            self.client
                .execute("SELECT pg_notify($1, $2)", &[channel, &payload])
                .map_err(session("NOTIFY"))?;
        }
        if self.in_tx {
            self.client
                .batch_execute("COMMIT")
                .map_err(session("COMMIT"))?;
            self.in_tx = false;
        }
        self.state.committed()?;
        Ok(())
    }

    /// ACTIVATE_VERSION: rows of older versions are deleted (hard) or marked (soft).
    fn activate_version(&mut self, m: ActivateVersionMessage) -> Result<(), LoadError> {
        self.flush()?;
        let table = match self.streams.get(&m.stream) {
            Some(st) => st.shape.table.clone(),
            None => table_for_stream(&m.stream, &self.settings),
        };
        let qualified = table.qualified();
        let has = |client: &mut Client, col: &str| -> Result<bool, postgres::Error> {
            Ok(client
                .query_opt(
                    "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped",
                    &[&qualified, &col],
                )?
                .is_some())
        };
        let check = |e: postgres::Error| db_err(&m.stream, &table, "ACTIVATE_VERSION", &e);
        if !has(&mut self.client, TABLE_VERSION).map_err(check)? {
            tracing::info!(stream = %m.stream, "ACTIVATE_VERSION for a table without `_sdc_table_version` (not created yet): nothing to do");
            return Ok(());
        }
        let v = quote_ident(TABLE_VERSION);
        let n = if self.settings.hard_delete {
            self.client.execute(
                &format!("DELETE FROM {qualified} WHERE {v} IS NULL OR {v} < $1"),
                &[&m.version],
            )
        } else if has(&mut self.client, DELETED_AT).map_err(check)? {
            let d = quote_ident(DELETED_AT);
            self.client.execute(
                &format!(
                    "UPDATE {qualified} SET {d} = now() WHERE ({v} IS NULL OR {v} < $1) AND {d} IS NULL"
                ),
                &[&m.version],
            )
        } else {
            Ok(0)
        }
        .map_err(check)?;
        tracing::info!(stream = %m.stream, version = m.version, rows = n, "activated version");
        Ok(())
    }
}

/// Binary kinds for every column, or `None` when one has no binary form (or
/// a metadata column isn't the type we write).
fn binary_kinds(shape: &StreamShape, info: &TableInfo) -> Option<Vec<BinKind>> {
    if std::env::var_os("TARGET_POSTGRES_RS_TEXT_COPY").is_some() {
        return None;
    }
    shape
        .columns
        .iter()
        .zip(&info.types)
        .map(|(c, t)| {
            let k = bin_kind(t)?;
            match c.source {
                Source::Field(_) => Some(k),
                _ => (t == &c.wanted_type).then_some(k),
            }
        })
        .collect()
}

/// Staging → table: the last record per key wins.
fn merge(client: &mut Client, st: &StreamLoad) -> Result<(), postgres::Error> {
    let table = st.shape.table.qualified();
    let stage = quote_ident(&st.stage);
    let cols = &st.shape.column_list;
    let bare = cols.trim_start_matches('(').trim_end_matches(')');
    let keys = key_list(&st.shape);
    let select = if st.repeats {
        format!("SELECT DISTINCT ON ({keys}) {bare} FROM {stage} ORDER BY {keys}, ctid DESC")
    } else {
        format!("SELECT {bare} FROM {stage}")
    };
    if st.info.unique_on_keys {
        let updates: Vec<String> = st
            .shape
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !st.shape.keys.contains(i))
            .map(|(_, c)| {
                let q = quote_ident(&c.name);
                format!("{q} = EXCLUDED.{q}")
            })
            .collect();
        let action = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        client.batch_execute(&format!(
            "INSERT INTO {table} {cols} {select} ON CONFLICT ({keys}) {action}"
        ))
    } else {
        // No unique index on the keys (a table made by hand): replace rows by key.
        let cond: Vec<String> = st
            .shape
            .keys
            .iter()
            .map(|&k| {
                let q = quote_ident(&st.shape.columns[k].name);
                format!("t.{q} = s.{q}")
            })
            .collect();
        client.batch_execute(&format!(
            "DELETE FROM {table} t USING {stage} s WHERE {}; INSERT INTO {table} {cols} {select}",
            cond.join(" AND ")
        ))
    }
}

/// A COPY failure, naming the input line and column when Postgres says which.
fn copy_error(e: &postgres::Error, st: &StreamLoad, lines: &[usize]) -> LoadError {
    let stream = st.shape.stream.clone();
    if let Some(db) = e.as_db_error() {
        if let Some(place) = db.where_() {
            // "COPY name, line 3, column c: "value""
            let copy_line = place
                .split(", line ")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<usize>().ok());
            let after_col = place.split_once(", column ").map(|(_, r)| r);
            if let (Some(n), Some(rest)) = (copy_line, after_col) {
                let column = st
                    .shape
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .filter(|c| rest.starts_with(&format!("{c}: ")))
                    .max_by_key(|c| c.len())
                    .unwrap_or(rest)
                    .to_owned();
                let value = rest.strip_prefix(&format!("{column}: ")).unwrap_or("");
                let mut message = db.message().to_owned();
                if !value.is_empty() && !message.contains(value) {
                    message.push_str(&format!(" (value {value})"));
                }
                return LoadError::Value {
                    line: lines.get(n.wrapping_sub(1)).copied().unwrap_or(0),
                    stream,
                    column,
                    message,
                };
            }
        }
    }
    db_err(&stream, &st.shape.table, "COPY", e)
}

#[cfg(test)]
mod key_range_tests {
    use super::{integer_of, KeyRanges};

    #[test]
    fn ranges_merge_and_detect_repeats() {
        let mut r = KeyRanges::default();
        for k in [5, 7, 6, 1, 3, 2, 4, i64::MAX, i64::MIN] {
            assert!(r.insert(k), "{k}");
        }
        assert_eq!(
            r.ranges.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
            vec![(i64::MIN, i64::MIN), (1, 7), (i64::MAX, i64::MAX)]
        );
        for k in [1, 4, 7, i64::MAX, i64::MIN] {
            assert!(!r.insert(k), "{k} repeats");
        }
        assert!(r.insert(8));
        assert_eq!(r.ranges.len(), 3);
        assert!(!r.too_big());
    }

    #[test]
    fn integer_keys_from_the_key_buffer() {
        assert_eq!(integer_of(b"42\0"), Some(42));
        assert_eq!(integer_of(b"-7\0"), Some(-7));
        assert_eq!(integer_of(b"\"a\"\0"), None);
        assert_eq!(integer_of(b"1.5\0"), None);
    }
}
