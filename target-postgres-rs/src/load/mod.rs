//! Loading: records stream into COPY (straight into the table when nothing
//! can conflict, else into a temporary staging table; see [`policy`]), a
//! flush merges every pending stream, applies hard deletes, notifies, commits
//! in one transaction, and only then emits STATE.
//!
//! Steps by module: [`policy`] (how a batch lands), [`copy`] (one COPY of a
//! run of records), [`merge`] (staging → table at flush), [`activate`]
//! (ACTIVATE_VERSION), [`error`] (what a failure says).

mod activate;
mod commit;
mod copy;
mod error;
mod merge;
pub mod parallel;
mod policy;
mod prepare;

use std::collections::{HashMap, HashSet};
use std::io::Write;

use pg_connect::describe;
use postgres::Client;
use serde_json::{json, Value};
use singer_core::{JsonSchema, Message, ReadError, SchemaMessage};

use crate::binary::BinKind;
use crate::encode::TextKind;
use crate::evolve::{ensure_table, resolve_type, TableInfo};
use crate::flatten;
use crate::naming::{select_roles, table_for_stream, TableName};
use crate::settings::{LoadMethod, TargetSettings};
use crate::state::StateOut;
use crate::stream::{Source, StreamShape, Wanted, DELETED_AT};
use crate::types::{declared_sql_type, json_schema_type, unbounded_integer, ColumnType};
use crate::validate::RecordValidator;

use activate::Retire;
use commit::{Behind, Job, Step};
pub use error::LoadError;
use error::{evolve_err, session, Who};
use policy::{Batch, Keying};
use prepare::Prepare;

/// One input item from the reader thread.
pub type Item = Result<(usize, Message), ReadError>;

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

/// A stream's table, how its rows are encoded, and its pending batch.
struct StreamLoad {
    shape: StreamShape,
    /// Text COPY kind of each column.
    text: Vec<TextKind>,
    /// Binary COPY kinds, when every column has one (and text COPY isn't asked for).
    binary: Option<Vec<BinKind>>,
    info: TableInfo,
    /// Per column: a value beyond bigint widens it to numeric (an unbounded
    /// integer whose column is still an integer type; never a key).
    grows: Vec<bool>,
    /// Staging table name (unique per stream in this run).
    stage: String,
    keying: Keying,
    batch: Batch,
    /// Checks and reshaping before a record becomes a row.
    prepare: Prepare,
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
    /// (stream, property) already warned of a declared type the destination
    /// lacks: once per column, however often its SCHEMA arrives.
    warned: HashSet<(String, String)>,
    /// Named in the fix for a missing privilege.
    who: Who,
    /// A batch is full but a key-less stream is pending: flush at the next
    /// STATE (see [`Loader::flush_when_full`]).
    flush_at_state: bool,
    /// Opens a second connection, for flushes that commit behind the loader
    /// (see [`commit`]); `None` once that failed (flushes then wait).
    connect_more: Option<Box<dyn FnMut() -> Result<Client, String>>>,
    /// The second connection, when no flush is running on it.
    spare: Option<Client>,
    /// The flush committing behind the loader.
    behind: Option<Behind>,
    /// One of several loaders (`parallelism` > 1): STATE messages are
    /// numbered barriers (see [`parallel`]).
    worker: Option<parallel::Worker>,
    /// Deferred ACTIVATE_VERSIONs, by stream (see [`activate`]).
    deferred: HashMap<String, Retire>,
    /// Streams that had a RECORD in this run: their ACTIVATE_VERSION closes.
    recorded: HashSet<String>,
}

/// Session settings every connection of the loader gets.
fn set_up_session(client: &mut Client) {
    // Staging tables live in temp buffers: room for a batch of wide rows
    // (server memory, allocated only as used; must be set before the first).
    if let Err(e) = client.batch_execute("SET temp_buffers = '256MB'") {
        tracing::warn!("cannot raise temp_buffers: {}", describe(&e));
    }
}

impl<W: Write> Loader<W> {
    pub fn new(mut client: Client, settings: TargetSettings, out: W) -> Self {
        set_up_session(&mut client);
        let now = chrono::Utc::now();
        let who = Who::of(&mut client);
        Loader {
            who,
            warned: HashSet::new(),
            client,
            settings,
            streams: HashMap::new(),
            in_tx: false,
            state: StateOut::new(out),
            sequence_base: now.timestamp_micros().saturating_mul(1000),
            type_cache: HashMap::new(),
            overwritten: HashSet::new(),
            next_stage: 0,
            flush_at_state: false,
            connect_more: None,
            spare: None,
            behind: None,
            worker: None,
            deferred: HashMap::new(),
            recorded: HashSet::new(),
        }
    }

    /// Lets full batches that merge commit behind the loader, on a second
    /// connection `connect` opens when first needed.
    pub fn with_second_connection(
        mut self,
        connect: Box<dyn FnMut() -> Result<Client, String>>,
    ) -> Self {
        self.connect_more = Some(connect);
        self
    }

    /// Loads every message, then commits what is pending.
    pub fn run<I: Iterator<Item = Item>>(&mut self, input: &mut Input<I>) -> Result<(), LoadError> {
        // Workers share the progress report their dispatcher starts.
        let alone = self.worker.is_none();
        if alone {
            singer_core::progress::start(singer_core::progress::Role::Target);
        }
        let loaded = self.load_all(input);
        if loaded.is_err() {
            // A flush committing behind still ends as it would have before
            // the failure: committed, then its STATE.
            let _ = self.settle();
        }
        loaded?;
        if alone {
            singer_core::progress::finish();
        }
        Ok(())
    }

    fn load_all<I: Iterator<Item = Item>>(
        &mut self,
        input: &mut Input<I>,
    ) -> Result<(), LoadError> {
        while let Some(item) = input.next() {
            let (line, message) = item?;
            match message {
                Message::Record(r) => {
                    self.before_record(&r)?;
                    self.records(line, r, input)?
                }
                Message::Schema(s) => self.schema(line, s)?,
                Message::State(s) if self.worker.is_some() => {
                    self.before_state()?;
                    self.barrier(s.value)?
                }
                Message::State(s) => {
                    self.before_state()?;
                    self.state.received(s.value);
                    if self.flush_at_state {
                        self.flush()?;
                    } else {
                        self.settle_if_done()?;
                    }
                }
                Message::ActivateVersion(a) => self.activate_version(a)?,
            }
        }
        if let Some(worker) = &self.worker {
            // Another worker failed: commit nothing more (the open
            // transaction rolls back with the connection).
            worker.check_running()?;
        }
        // Deferred ACTIVATE_VERSIONs apply in the last flush, before its COMMIT.
        let deferred = self.take_deferred();
        self.flush_retiring(deferred)
    }

    /// Waits for the flush committing behind, then emits its STATE.
    fn settle(&mut self) -> Result<(), LoadError> {
        if let Some(behind) = self.behind.take() {
            let done = behind.finish()?;
            self.spare = Some(done.client);
            for (name, rows) in done.streams {
                singer_core::progress::stream(&name).batch(rows);
            }
            self.state.committed_up_to(done.state)?;
        }
        Ok(())
    }

    /// [`Loader::settle`] when the flush behind has finished: its STATE goes out at once.
    fn settle_if_done(&mut self) -> Result<(), LoadError> {
        if self.behind.as_ref().is_some_and(Behind::is_finished) {
            self.settle()?;
        }
        Ok(())
    }

    /// The second connection, opened when first needed.
    fn take_spare(&mut self) -> Option<Client> {
        if let Some(c) = self.spare.take() {
            return Some(c);
        }
        let connect = self.connect_more.as_mut()?;
        match connect() {
            Ok(mut c) => {
                set_up_session(&mut c);
                Some(c)
            }
            Err(e) => {
                tracing::warn!(
                    "cannot open a second connection ({e}); each flush waits for its merge"
                );
                self.connect_more = None;
                None
            }
        }
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
        self.settle()?;
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
        // The validator checks records as sent, against the SCHEMA as sent.
        let sent_schema = self
            .settings
            .validate_records
            .then(|| message.schema.clone());
        let (message, flatten) = match self.settings.flattening_max_depth {
            Some(depth) => {
                let (flat, plan) = flatten::schema(&message, depth).map_err(&bad)?;
                (flat, Some(plan))
            }
            None => (message, None),
        };
        if let Some(known) = self.streams.get(&stream) {
            if known.shape.message == message {
                return Ok(());
            }
            if known.batch.pending() {
                self.flush()?;
            }
        }
        let validator = match sent_schema {
            Some(schema) => Some(RecordValidator::new(&schema).map_err(|e| {
                bad(format!(
                    "validate_records: the schema is not valid JSON Schema Draft 7: {e}; \
                     fix the tap's SCHEMA, or turn `validate_records` off"
                ))
            })?),
            None => None,
        };
        let parsed = JsonSchema::from_value(&message.schema).map_err(|e| bad(e.to_string()))?;
        let table = table_for_stream(&stream, &self.settings);
        self.before_schema(&stream, &table)?;
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
        let warned = &mut self.warned;
        let interpret = self.settings.interpret_content_encoding;
        let mut type_for = |prop: &str, sub: &JsonSchema| -> Wanted {
            if let Some(t) = declared_sql_type(sub) {
                match cache.get(t) {
                    Some(Some(resolved)) => {
                        return Wanted {
                            sql: resolved.clone(),
                            grows_to_numeric: false,
                        }
                    }
                    _ => {
                        if warned.insert((stream.clone(), prop.to_owned())) {
                            tracing::warn!(
                                stream = %stream, property = prop, r#type = t,
                                "the destination has no such type; using the JSON Schema mapping"
                            )
                        }
                    }
                }
            }
            Wanted {
                sql: json_schema_type(sub, interpret),
                grows_to_numeric: unbounded_integer(sub),
            }
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
        if self.worker.is_some() && self.in_tx {
            let roles = select_roles(&stream, &self.settings).to_vec();
            self.create_outside_transaction(&shape, use_keys, &roles)
                .map_err(|e| evolve_err(&stream, &table, &e, &self.who))?;
        }
        let roles = select_roles(&stream, &self.settings);
        let info = ensure_table(&mut self.client, &shape, use_keys, roles)
            .map_err(|e| evolve_err(&stream, &table, &e, &self.who))?;
        let text = info.types.iter().map(ColumnType::text_kind).collect();
        let grows = (shape.columns.iter().zip(&info.types).enumerate())
            .map(|(i, (c, t))| c.grows_to_numeric && t.is_integer() && !shape.keys.contains(&i))
            .collect();
        let binary = if self.settings.text_copy {
            None
        } else {
            binary_kinds(&shape, &info)
        };
        let stage = format!("_sdc_stage_{}", self.next_stage);
        self.next_stage += 1;
        let integer_key = matches!(shape.keys.as_slice(), [k] if info.unique_on_keys && info.types[*k].is_integer());
        let keying = Keying::new(&shape, use_keys, integer_key);
        let load = StreamLoad {
            shape,
            text,
            binary,
            info,
            grows,
            stage,
            keying,
            batch: Batch::new(),
            prepare: Prepare { validator, flatten },
        };
        self.streams.insert(stream, load);
        Ok(())
    }

    /// A worker creates a missing table (and its schema) on its second
    /// connection, committed at once: created in the open transaction, the
    /// schema's creation lock would stall another worker creating a table in
    /// the same schema until this one commits, which may wait for input that
    /// the stalled worker holds up.
    fn create_outside_transaction(
        &mut self,
        shape: &StreamShape,
        use_keys: bool,
        roles: &[String],
    ) -> Result<(), crate::evolve::EvolveError> {
        let exists = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&shape.table.schema, &shape.table.table],
            )
            .is_ok_and(|r| r.is_some());
        if exists {
            return Ok(());
        }
        let Some(mut spare) = self.take_spare() else {
            return Ok(());
        };
        let created = ensure_table(&mut spare, shape, use_keys, roles).map(|_| ());
        if self.spare.is_none() {
            self.spare = Some(spare);
        }
        created
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

    /// A batch is full. Rows of a key-less stream are committed only up to a
    /// STATE: a rerun from the newest STATE emitted re-sends every row after
    /// it, and key-less rows can't be matched, so rows committed past that
    /// STATE would land twice. The flush then waits for the next STATE (or
    /// the end of input); the rows keep streaming into the open transaction.
    /// Keyed streams converge by upsert, so they flush at once.
    fn flush_when_full(&mut self) -> Result<(), LoadError> {
        let keyless = self
            .streams
            .values()
            .any(|st| st.batch.pending() && st.shape.keys.is_empty());
        if keyless {
            if !self.flush_at_state {
                tracing::info!(
                    "batch full; committing at the next STATE (a key-less stream is pending)"
                );
            }
            self.flush_at_state = true;
            Ok(())
        } else {
            self.flush_behind()
        }
    }

    /// Merges every pending stream, commits, notifies, then emits STATE.
    pub fn flush(&mut self) -> Result<(), LoadError> {
        self.flush_retiring(Vec::new())
    }

    /// [`Loader::flush`], applying `deferred` ACTIVATE_VERSIONs after the
    /// merges, before the COMMIT.
    fn flush_retiring(&mut self, deferred: Vec<(String, Retire)>) -> Result<(), LoadError> {
        self.settle()?;
        let job = self.take_batches();
        self.commit_now(job, deferred)
    }

    /// Runs a flush's job on the loader's connection (with `deferred`
    /// ACTIVATE_VERSIONs before its COMMIT), then emits STATE.
    fn commit_now(&mut self, job: Job, deferred: Vec<(String, Retire)>) -> Result<(), LoadError> {
        let retired = if deferred.is_empty() {
            job.run(&mut self.client, self.in_tx)?;
            Vec::new()
        } else {
            job.run(&mut self.client, false)?;
            let retired = self.apply_deferred(deferred)?;
            if self.in_tx {
                self.client
                    .batch_execute("COMMIT")
                    .map_err(session("COMMIT"))?;
            }
            retired
        };
        self.in_tx = false;
        for (name, rows) in job.committed {
            singer_core::progress::stream(&name).batch(rows);
        }
        for (stream, version, n) in retired {
            self.report(&stream, version, n);
        }
        self.state.committed()?;
        Ok(())
    }

    /// [`Loader::flush`], but a flush that merges commits behind: the next
    /// batch streams meanwhile into the second connection (and merges only
    /// after this flush has committed).
    fn flush_behind(&mut self) -> Result<(), LoadError> {
        self.settle()?;
        let job = self.take_batches();
        if let (true, true, Some(next)) = (job.merges, self.in_tx, self.take_spare()) {
            let client = std::mem::replace(&mut self.client, next);
            self.in_tx = false;
            self.behind = Some(Behind::start(client, job, self.state.newest()));
            return Ok(());
        }
        self.commit_now(job, Vec::new())
    }

    /// What a flush sends for every pending stream (whose batches start anew).
    fn take_batches(&mut self) -> Job {
        self.flush_at_state = false;
        let mut job = Job {
            steps: Vec::new(),
            notify: None,
            committed: Vec::new(),
            merges: false,
        };
        let mut written = Vec::new();
        let hard_delete = self.settings.hard_delete;
        let mut names: Vec<&String> = self.streams.keys().collect();
        names.sort();
        let names: Vec<String> = names.into_iter().cloned().collect();
        for name in names {
            let st = self.streams.get_mut(&name).expect("listed");
            if !st.batch.pending() {
                continue;
            }
            let table = st.shape.table.clone();
            let staged = st.batch.staged();
            let step = |what, sql| Step {
                stream: name.clone(),
                table: table.clone(),
                what,
                sql,
            };
            if staged {
                job.steps
                    .push(step("merging the batch", merge::merge_sql(st)));
                job.merges = true;
            }
            if hard_delete && st.batch.deletes && st.shape.has_column(DELETED_AT) {
                job.steps.push(step(
                    "deleting deleted records",
                    merge::delete_deleted_sql(&table),
                ));
            }
            let rows = st.batch.rows;
            if rows > 0 {
                written.push(json!({"schema": table.schema, "table": table.table, "rows": rows}));
                st.info.empty = false;
            }
            tracing::debug!(stream = %name, table = %table.qualified(), rows, staged, "batch loaded");
            job.committed.push((name.clone(), rows as u64));
            st.batch = Batch::new();
        }
        if let (Some(channel), false) = (&self.settings.notify_channel, written.is_empty()) {
            job.notify = Some((channel.clone(), json!({"tables": written}).to_string()));
        }
        job
    }
}

/// Binary kinds for every column, or `None` when one has no binary form (or
/// a metadata column's type isn't written as the type we write).
fn binary_kinds(shape: &StreamShape, info: &TableInfo) -> Option<Vec<BinKind>> {
    shape
        .columns
        .iter()
        .zip(&info.types)
        .map(|(c, t)| {
            let k = t.binary()?;
            match c.source {
                Source::Field(_) => Some(k),
                _ => (ColumnType::parse(&c.wanted_type).binary() == Some(k)).then_some(k),
            }
        })
        .collect()
}
