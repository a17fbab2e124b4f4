//! Step 4 of LOG_BASED: the changes committed up to the WAL position seen at
//! the start, read from the slot and applied to the streams they belong to
//! as whole-row RECORDs (deletes with `_sdc_deleted_at`, unchanged TOASTed
//! values and generated columns read back by key), ACTIVATE_VERSION for a
//! TRUNCATE, and a STATE with the commit's end LSN as transactions complete.
//!
//! Every Relation message (sent before a table's first change and again after
//! each change of its layout) maps the log's columns to the stream's by name.
//! A column the stream did not have, or whose type changed, makes the stream
//! a new SCHEMA before its next RECORD; a dropped column is no longer mapped.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_connect::{quote_ident, quote_qualified, Connector};
use pg_logical::changes::{Change, Decoder, Value as Cell};
use pg_logical::pgoutput::{Relation as WalRelation, ReplicaIdentity};
use pg_logical::replication::{ReplicationError, ReplicationStream, StartReplication};
use pg_logical::{format_lsn, slot, LogicalError, Lsn};
use postgres::Client;
use serde_json::json;
use singer_core::metrics::{tags, Counter};
use singer_core::{MessageWriter, State};

use crate::discover::{Column, SQL_DATATYPE, SQL_DATATYPE_JOINS};
use crate::error::{query_failed, StreamError, SyncError};
use crate::pg_type::TypeMap;
use crate::plan::{self, Prepared};
use crate::record::{self, RecordBuilder};
use crate::settings::TapSettings;
use crate::state::{LSN, VERSION};

/// One LOG_BASED stream during a run.
pub struct LogStream<'a> {
    p: &'a Prepared,
    /// Changes whose transaction commits before this are already in the destination.
    lsn: Lsn,
    version: i64,
    /// For each column of the WAL relation: the index of the stream column it feeds.
    mapping: Vec<Option<usize>>,
    /// The Relation message `mapping` was made from.
    mapped: Option<Arc<WalRelation>>,
    key_indexes: Vec<usize>,
    /// Generated columns the log does not carry: stream column indexes, read back by key.
    by_key: Vec<usize>,
    /// Names of the table's generated columns.
    generated: Vec<String>,
    /// The stream's columns (those of its last SCHEMA) and its records.
    record: RecordBuilder<'static>,
    /// RECORDs sent from the log in this run, for `max_record_count`.
    records: u64,
}

/// Microseconds since 2000-01-01 UTC as ISO 8601.
fn pg_time(micros: i64) -> String {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let secs = micros.div_euclid(1_000_000) + PG_EPOCH_UNIX_SECS;
    let nanos = (micros.rem_euclid(1_000_000) * 1000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(record::format_time)
        .unwrap_or_default()
}

impl<'a> LogStream<'a> {
    pub fn new(p: &'a Prepared, lsn: Lsn, version: i64, generated: Vec<String>) -> Self {
        LogStream {
            p,
            lsn,
            version,
            mapping: Vec::new(),
            mapped: None,
            key_indexes: Vec::new(),
            by_key: Vec::new(),
            generated,
            // After the initial copies: carries what they widened.
            record: RecordBuilder::owned(p.columns.clone(), p.widening.clone()),
            records: 0,
        }
    }

    fn columns(&self) -> &[Column] {
        self.record.columns()
    }

    /// Maps a Relation message's columns to the stream's by name. Returns
    /// whether the stream gained or retyped a column (a new SCHEMA is due).
    fn map_relation(
        &mut self,
        rel: &Arc<WalRelation>,
        side: &mut Side<'_>,
    ) -> Result<bool, SyncError> {
        if self.mapped.as_ref().is_some_and(|m| Arc::ptr_eq(m, rel)) {
            return Ok(false);
        }
        let types = side.column_types(&self.p.id, rel)?;
        let mut columns: Vec<Column> = self.columns().to_vec();
        let mut changed = false;
        self.mapping = Vec::with_capacity(rel.columns.len());
        for (c, (sql_datatype, ty)) in rel.columns.iter().zip(types) {
            let at = columns.iter().position(|s| s.name == c.name);
            let fresh = || Column {
                name: c.name.clone(),
                sql_datatype: sql_datatype.clone(),
                codec: ty.codec(),
                // Nullability is not in the log: claim nothing.
                nullable: true,
                ty: ty.clone(),
            };
            match at {
                Some(i) if columns[i].sql_datatype == sql_datatype => self.mapping.push(Some(i)),
                Some(i) => {
                    columns[i] = fresh();
                    changed = true;
                    self.mapping.push(Some(i));
                }
                // A column of the table at the start that the catalog did not select.
                None if self.p.rel.column(&c.name).is_some() => self.mapping.push(None),
                None => {
                    columns.push(fresh());
                    changed = true;
                    self.mapping.push(Some(columns.len() - 1));
                }
            }
        }
        self.key_indexes = self
            .p
            .key_properties
            .iter()
            .filter_map(|k| rel.columns.iter().position(|c| &c.name == k))
            .collect();
        self.by_key = (0..columns.len())
            .filter(|i| {
                self.generated.contains(&columns[*i].name) && !self.mapping.contains(&Some(*i))
            })
            .collect();
        if changed {
            let widening = self.record.widening().remap(self.columns(), &columns);
            self.record = RecordBuilder::owned(columns, widening);
        }
        self.mapped = Some(Arc::clone(rel));
        Ok(changed)
    }
}

struct Emitter<'s, W: Write> {
    out: &'s mut MessageWriter<W>,
    time_extracted: String,
    counters: HashMap<String, Counter>,
    /// Changes per stream for the progress lines (`<stream> (log)`: apart
    /// from the stream's initial copy).
    progress: HashMap<String, singer_core::progress::StreamProgress>,
}

impl<W: Write> Emitter<'_, W> {
    /// Writes one whole-row RECORD. `values[i]` feeds the WAL relation's
    /// column i; `by_key[j]` (when read) the stream's column `s.by_key[j]`.
    fn row(
        &mut self,
        s: &mut LogStream<'_>,
        values: &[Cell],
        by_key: &[Cell],
        lsn: Lsn,
        deleted_at: Option<&str>,
    ) -> Result<(), SyncError> {
        let r = &mut s.record;
        r.begin();
        let cells = values
            .iter()
            .zip(&s.mapping)
            .filter_map(|(v, m)| m.map(|i| (i, v)))
            .chain(s.by_key.iter().copied().zip(by_key));
        for (col_index, v) in cells {
            match v {
                // Not known here (a delete's non-key column): leave it out
                // rather than claim it is NULL.
                Cell::UnchangedToast => continue,
                Cell::Null if deleted_at.is_some() => continue,
                Cell::Null => r.field(col_index, None),
                Cell::Text(t) => {
                    let text = r.columns()[col_index].ty.read_form(t);
                    r.field(col_index, Some(&text))
                }
            }
        }
        r.log_position(lsn, deleted_at);
        if r.schema_changed() {
            plan::write_schema_of(s.p, r.columns(), r.widening(), self.out)?;
        }
        self.out.write_record_raw(
            &s.p.name,
            r.finish(),
            Some(s.version),
            Some(&self.time_extracted),
        )?;
        self.counters
            .entry(s.p.id.clone())
            .or_insert_with(|| Counter::new("record_count", tags([("stream", json!(s.p.id))])))
            .add(1);
        self.progress
            .entry(s.p.id.clone())
            .or_insert_with(|| singer_core::progress::stream(&format!("{} (log)", s.p.id)))
            .rows(1);
        s.records += 1;
        Ok(())
    }
}

/// A second session for what the log does not say while the first streams
/// it: the current values of unchanged TOASTed and of generated columns (by
/// key), and the types of columns a table gained.
pub struct Side<'c> {
    connector: &'c Connector,
    client: Option<Client>,
    types: &'c TypeMap,
    /// Reloaded when the log names a type created after the run started.
    reloaded: Option<TypeMap>,
}

impl<'c> Side<'c> {
    pub fn new(connector: &'c Connector, types: &'c TypeMap) -> Self {
        Side {
            connector,
            client: None,
            types,
            reloaded: None,
        }
    }

    fn client(&mut self, stream: &str) -> Result<&mut Client, SyncError> {
        if self.client.is_none() {
            self.client = Some(
                self.connector
                    .connect()
                    .map_err(|e| StreamError::SideConnect(e).at(stream))?,
            );
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Each column's `sql_datatype` and parsed type, from a Relation message's
    /// type OIDs and typmods.
    fn column_types(
        &mut self,
        stream: &str,
        rel: &WalRelation,
    ) -> Result<Vec<(String, crate::pg_type::PgType)>, SyncError> {
        let oids: Vec<u32> = rel.columns.iter().map(|c| c.type_id).collect();
        let typmods: Vec<i32> = rel.columns.iter().map(|c| c.type_modifier).collect();
        let client = self.client(stream)?;
        let names: HashMap<i64, String> = client
            .query(
                &format!(
                    "SELECT a.ord, {SQL_DATATYPE}                        FROM unnest($1::oid[], $2::int4[]) WITH ORDINALITY AS a(atttypid, atttypmod, ord)                        {SQL_DATATYPE_JOINS}"
                ),
                &[&oids, &typmods],
            )
            .map_err(query_failed(stream, StreamError::ColumnTypes))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if self.reloaded.is_none() && oids.iter().any(|o| !self.types.knows(*o)) {
            let client = self.client(stream)?;
            self.reloaded = Some(TypeMap::load(client).map_err(SyncError::Types)?);
        }
        let types = self.reloaded.as_ref().unwrap_or(self.types);
        Ok(rel
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let name = names
                    .get(&(i as i64 + 1))
                    .cloned()
                    .unwrap_or_else(|| "text".to_owned());
                (name, types.parse(c.type_id, c.type_modifier))
            })
            .collect())
    }

    /// Reads, by key, the columns an update left TOASTed (into `new`) and the
    /// stream's generated columns (returned, for [`Emitter::row`]'s `by_key`).
    fn fill(
        &mut self,
        s: &LogStream<'_>,
        rel: &WalRelation,
        new: &mut [Cell],
    ) -> Result<Vec<Cell>, SyncError> {
        let toasted: Vec<usize> = (0..new.len())
            .filter(|i| {
                new[*i] == Cell::UnchangedToast && s.mapping.get(*i).is_some_and(Option::is_some)
            })
            .collect();
        if (toasted.is_empty() && s.by_key.is_empty()) || s.key_indexes.is_empty() {
            return Ok(Vec::new());
        }
        let select: Vec<String> = toasted
            .iter()
            .map(|i| rel.columns[*i].name.as_str())
            .chain(s.by_key.iter().map(|i| s.columns()[*i].name.as_str()))
            .map(|name| format!("{}::text", quote_ident(name)))
            .collect();
        let mut params: Vec<String> = Vec::new();
        let mut conds: Vec<String> = Vec::new();
        for k in &s.key_indexes {
            let Cell::Text(t) = &new[*k] else {
                return Ok(Vec::new());
            };
            params.push(t.clone());
            let name = &rel.columns[*k].name;
            let col = s.columns().iter().find(|c| &c.name == name);
            let ty = col.map_or("text", |c| c.sql_datatype.as_str());
            conds.push(format!(
                "{} = ${}::text::{}",
                quote_ident(name),
                params.len(),
                ty
            ));
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            select.join(", "),
            quote_qualified(&s.p.rel.schema, &s.p.rel.name),
            conds.join(" AND ")
        );
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let row = self
            .client(&s.p.id)?
            .query_opt(&sql, &refs)
            .map_err(query_failed(&s.p.id, StreamError::ByKeyQuery))?;
        // Gone since (a later DELETE in the log will say so): leave them out.
        let Some(row) = row else {
            return Ok(Vec::new());
        };
        let cell = |j: usize| match row.get::<_, Option<String>>(j) {
            Some(t) => Cell::Text(t),
            None => Cell::Null,
        };
        for (j, i) in toasted.iter().enumerate() {
            new[*i] = cell(j);
        }
        Ok((toasted.len()..select.len()).map(cell).collect())
    }
}

/// The selected stream a change belongs to, unless its transaction committed
/// before the stream's bookmark (the stream's initial copy already has it);
/// mapped to the change's relation (with a new SCHEMA first when that changed it).
fn covering<'s, 'p, W: Write>(
    streams: &'s mut [LogStream<'p>],
    by_table: &mut StreamIndex,
    rel: &Arc<WalRelation>,
    final_lsn: Lsn,
    side: &mut Side<'_>,
    out: &mut MessageWriter<W>,
) -> Result<Option<&'s mut LogStream<'p>>, SyncError> {
    let Some(i) = by_table.stream_of(rel) else {
        return Ok(None);
    };
    let s = &mut streams[i];
    if final_lsn < s.lsn {
        return Ok(None);
    }
    if s.map_relation(rel, side)? {
        tracing::info!(stream = %s.p.id, "the table's columns changed in the log: new SCHEMA");
        plan::write_schema_of(s.p, s.columns(), s.record.widening(), out)?;
    }
    Ok(Some(s))
}

/// Which selected stream a WAL relation feeds: looked up by name once per
/// relation OID, then by OID, so a change costs no allocation.
struct StreamIndex {
    by_name: HashMap<(String, String), usize>,
    by_oid: HashMap<u32, Option<usize>>,
}

impl StreamIndex {
    fn stream_of(&mut self, rel: &WalRelation) -> Option<usize> {
        if let Some(hit) = self.by_oid.get(&rel.id) {
            return *hit;
        }
        let i = self
            .by_name
            .get(&(rel.namespace.clone(), rel.name.clone()))
            .copied();
        self.by_oid.insert(rel.id, i);
        i
    }
}

/// Opens the replication connection (through the tunnel, with the TLS
/// settings of every other session) and starts streaming the slot from its
/// confirmed position. A slot another process holds gets the slot-busy
/// advice, naming that process.
fn start_stream(
    client: &mut Client,
    connector: &Connector,
    settings: &TapSettings,
    end: Lsn,
) -> Result<ReplicationStream, LogicalError> {
    let request = StartReplication {
        slot: &settings.replication_slot,
        publication: &settings.publication,
        // From the slot's confirmed position: the lowest LSN of `--state`.
        start: 0,
        end,
    };
    match ReplicationStream::start(connector.settings(), connector.application_name(), &request) {
        Ok(stream) => Ok(stream),
        Err(e @ ReplicationError::Server { .. }) if is_slot_busy(&e) => {
            let info = slot::slot_info(client, &settings.replication_slot)?;
            match info.and_then(|i| i.active_pid) {
                Some(pid) => Err(LogicalError::SlotBusy {
                    slot: settings.replication_slot.clone(),
                    pid,
                }),
                // Freed since: the server's own words.
                None => Err(e.into()),
            }
        }
        Err(ReplicationError::Connect {
            host,
            database,
            user,
            reason,
            ..
        }) => Err(ReplicationError::Connect {
            host,
            // The configured port, not a tunnel's local one.
            port: connector.configured_port(),
            database,
            user,
            reason,
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// SQLSTATE 55006 (object in use): the slot is active for another process.
fn is_slot_busy(e: &ReplicationError) -> bool {
    matches!(e, ReplicationError::Server { code, .. } if code == "55006")
}

/// Reads and applies the log, up to the WAL position seen at start or until
/// `max_run_seconds` (after a whole transaction).
pub fn read_changes<W: Write>(
    client: &mut Client,
    connector: &Connector,
    side: &mut Side<'_>,
    streams: &mut [LogStream<'_>],
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    let setup = SyncError::LogBased;
    slot::heartbeat(client, "tap-postgres-rs").map_err(setup)?;
    let end = slot::current_flush_lsn(client).map_err(setup)?;
    let mut by_table = StreamIndex {
        by_name: streams
            .iter()
            .enumerate()
            .map(|(i, s)| ((s.p.rel.schema.clone(), s.p.rel.name.clone()), i))
            .collect(),
        by_oid: HashMap::new(),
    };
    let started = Instant::now();
    let deadline = settings.max_run_seconds.map(Duration::from_secs);
    let mut emit = Emitter {
        out,
        time_extracted: record::format_time(chrono::Utc::now()),
        counters: HashMap::new(),
        progress: HashMap::new(),
    };
    tracing::info!(upto = %format_lsn(end), "reading the log");
    // Nothing is confirmed from here: the slot was moved to what `--state`
    // holds, and the next run's state says how far the target got.
    let mut stream = start_stream(client, connector, settings, end).map_err(setup)?;
    let mut decoder = Decoder::new();
    let mut final_lsn: Lsn = 0;
    let mut commit_time = String::new();
    let mut since_state: u64 = 0;
    let mut transactions: u64 = 0;
    for message in stream.by_ref() {
        let (lsn, data) = message.map_err(|e| setup(e.into()))?;
        let Some(change) = decoder.decode(lsn, &data).map_err(setup)? else {
            continue;
        };
        match change {
            Change::Begin {
                final_lsn: f,
                commit_time: t,
                ..
            } => {
                final_lsn = f;
                commit_time = pg_time(t);
            }
            Change::Insert { relation, mut new } => {
                let Some(s) =
                    covering(streams, &mut by_table, &relation, final_lsn, side, emit.out)?
                else {
                    continue;
                };
                let by_key = side.fill(s, &relation, &mut new)?;
                emit.row(s, &new, &by_key, lsn, None)?;
                since_state += 1;
            }
            Change::Update {
                relation,
                old,
                mut new,
            } => {
                let Some(s) =
                    covering(streams, &mut by_table, &relation, final_lsn, side, emit.out)?
                else {
                    continue;
                };
                if let Some(old) = &old {
                    // REPLICA IDENTITY FULL carries the old row: take unchanged TOAST from it.
                    if relation.replica_identity == ReplicaIdentity::Full {
                        for (n, o) in new.iter_mut().zip(old) {
                            if *n == Cell::UnchangedToast && !matches!(o, Cell::UnchangedToast) {
                                *n = o.clone();
                            }
                        }
                    }
                    // The key changed: the old key's row is gone.
                    let key_changed = s
                        .key_indexes
                        .iter()
                        .any(|k| old.get(*k) != new.get(*k) && old.get(*k) != Some(&Cell::Null));
                    if key_changed {
                        let key_only: Vec<Cell> = old
                            .iter()
                            .enumerate()
                            .map(|(j, v)| {
                                if s.key_indexes.contains(&j) {
                                    v.clone()
                                } else {
                                    Cell::Null
                                }
                            })
                            .collect();
                        emit.row(s, &key_only, &[], lsn, Some(&commit_time))?;
                        since_state += 1;
                    }
                }
                let by_key = side.fill(s, &relation, &mut new)?;
                emit.row(s, &new, &by_key, lsn, None)?;
                since_state += 1;
            }
            Change::Delete { relation, old } => {
                let Some(s) =
                    covering(streams, &mut by_table, &relation, final_lsn, side, emit.out)?
                else {
                    continue;
                };
                emit.row(s, &old, &[], lsn, Some(&commit_time))?;
                since_state += 1;
            }
            Change::Truncate { relations } => {
                for relation in relations {
                    let Some(s) =
                        covering(streams, &mut by_table, &relation, final_lsn, side, emit.out)?
                    else {
                        continue;
                    };
                    // A new version: the target drops (or marks) every older row.
                    s.version = s.version.max(chrono::Utc::now().timestamp_millis()) + 1;
                    state.set(&s.p.id, VERSION, json!(s.version));
                    emit.out.write_activate_version(&s.p.name, s.version)?;
                    tracing::info!(stream = %s.p.id, version = s.version, "TRUNCATE in the log: activating a new version");
                }
            }
            Change::Commit { end_lsn, .. } => {
                transactions += 1;
                for s in streams.iter_mut() {
                    if end_lsn > s.lsn {
                        s.lsn = end_lsn;
                        state.set(&s.p.id, LSN, json!(end_lsn));
                    }
                }
                let out_of_time = deadline.is_some_and(|d| started.elapsed() >= d);
                let at_limit = settings
                    .max_record_count
                    .is_some_and(|n| streams.iter().any(|s| s.records >= n));
                if since_state >= settings.state_interval || out_of_time || at_limit {
                    emit.out.write_state(&state.to_value())?;
                    since_state = 0;
                }
                if out_of_time {
                    tracing::info!(
                        seconds = started.elapsed().as_secs(),
                        "max_run_seconds reached: stopping after a whole transaction"
                    );
                    break;
                }
                if at_limit {
                    tracing::info!(
                        "max_record_count reached: stopping after a whole transaction (the next run goes on from here)"
                    );
                    break;
                }
            }
        }
    }
    emit.out.write_state(&state.to_value())?;
    emit.out.flush()?;
    // Also after an early stop: the server stops decoding at once.
    stream.finish().map_err(|e| setup(e.into()))?;
    tracing::info!(transactions, upto = %format_lsn(end), "log read");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_times() {
        assert_eq!(pg_time(0), "2000-01-01T00:00:00.000000+00:00");
        assert_eq!(pg_time(-1), "1999-12-31T23:59:59.999999+00:00");
    }
}
