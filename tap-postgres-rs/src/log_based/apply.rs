//! Step 4 of LOG_BASED: the changes committed up to the WAL position seen at
//! the start, read from the slot and applied to the streams they belong to
//! as whole-row RECORDs (deletes with `_sdc_deleted_at`, unchanged TOASTed
//! values read back by key), ACTIVATE_VERSION for a TRUNCATE, and a STATE
//! with the commit's end LSN as transactions complete.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use pg_connect::{quote_ident, quote_qualified, Connector};
use pg_logical::changes::{Change, ChangeStream, Value as Cell};
use pg_logical::pgoutput::{Relation as WalRelation, ReplicaIdentity};
use pg_logical::{format_lsn, slot, Lsn};
use postgres::Client;
use serde_json::json;
use singer_core::metrics::{tags, Counter};
use singer_core::{MessageWriter, State};

use crate::error::{query_failed, StreamError, SyncError};
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
    /// For each column of the WAL relation: the index of the selected column it feeds.
    mapping: Vec<Option<usize>>,
    mapped_relation: u32,
    key_indexes: Vec<usize>,
    record: RecordBuilder<'a>,
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
    pub fn new(p: &'a Prepared, lsn: Lsn, version: i64) -> Self {
        LogStream {
            p,
            lsn,
            version,
            mapping: Vec::new(),
            mapped_relation: 0,
            key_indexes: Vec::new(),
            record: RecordBuilder::new(&p.columns, &p.widening),
        }
    }

    fn map_relation(&mut self, rel: &WalRelation) {
        if self.mapped_relation == rel.id && !self.mapping.is_empty() {
            return;
        }
        self.mapping = rel
            .columns
            .iter()
            .map(|c| self.p.columns.iter().position(|s| s.name == c.name))
            .collect();
        self.key_indexes = self
            .p
            .key_properties
            .iter()
            .filter_map(|k| rel.columns.iter().position(|c| &c.name == k))
            .collect();
        self.mapped_relation = rel.id;
    }
}

struct Emitter<'s, W: Write> {
    out: &'s mut MessageWriter<W>,
    time_extracted: String,
    counters: HashMap<String, Counter>,
}

impl<W: Write> Emitter<'_, W> {
    /// Writes one whole-row RECORD. `values[i]` feeds the WAL relation's column i.
    fn row(
        &mut self,
        s: &mut LogStream<'_>,
        values: &[Cell],
        lsn: Lsn,
        deleted_at: Option<&str>,
    ) -> Result<(), SyncError> {
        let r = &mut s.record;
        r.begin();
        for (i, v) in values.iter().enumerate() {
            let Some(Some(col_index)) = s.mapping.get(i) else {
                continue;
            };
            match v {
                // Not known here (a delete's non-key column): leave it out
                // rather than claim it is NULL.
                Cell::UnchangedToast => continue,
                Cell::Null if deleted_at.is_some() => continue,
                Cell::Null => r.field(*col_index, None),
                Cell::Text(t) => {
                    let text = s.p.columns[*col_index].ty.read_form(t);
                    r.field(*col_index, Some(&text))
                }
            }
        }
        r.log_position(lsn, deleted_at);
        if r.schema_changed() {
            plan::write_schema(s.p, self.out)?;
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
        Ok(())
    }
}

/// Reads the current values of columns an update left TOASTed, by key, on a
/// second connection (the first is busy streaming the log).
struct ToastFiller<'c> {
    connector: &'c Connector,
    client: Option<Client>,
}

impl ToastFiller<'_> {
    fn fill(
        &mut self,
        s: &LogStream<'_>,
        rel: &WalRelation,
        new: &mut [Cell],
    ) -> Result<(), SyncError> {
        let missing: Vec<usize> = (0..new.len())
            .filter(|i| {
                new[*i] == Cell::UnchangedToast && s.mapping.get(*i).is_some_and(Option::is_some)
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if s.key_indexes.is_empty() {
            return Ok(());
        }
        if self.client.is_none() {
            self.client = Some(
                self.connector
                    .connect()
                    .map_err(|e| StreamError::ToastConnect(e).at(&s.p.id))?,
            );
        }
        let client = self.client.as_mut().expect("just connected");
        let select: Vec<String> = missing
            .iter()
            .map(|i| format!("{}::text", quote_ident(&rel.columns[*i].name)))
            .collect();
        let mut params: Vec<String> = Vec::new();
        let mut conds: Vec<String> = Vec::new();
        for k in &s.key_indexes {
            let Cell::Text(t) = &new[*k] else {
                return Ok(());
            };
            params.push(t.clone());
            let col =
                &s.p.rel
                    .columns
                    .iter()
                    .find(|c| c.name == rel.columns[*k].name);
            let ty = col.map_or("text", |c| c.sql_datatype.as_str());
            conds.push(format!(
                "{} = ${}::text::{}",
                quote_ident(&rel.columns[*k].name),
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
        let row = client
            .query_opt(&sql, &refs)
            .map_err(query_failed(&s.p.id, StreamError::ToastQuery))?;
        // Gone since (a later DELETE in the log will say so): leave them out.
        if let Some(row) = row {
            for (j, i) in missing.iter().enumerate() {
                new[*i] = match row.get::<_, Option<String>>(j) {
                    Some(t) => Cell::Text(t),
                    None => Cell::Null,
                };
            }
        }
        Ok(())
    }
}

/// The selected stream a change belongs to, unless its transaction committed
/// before the stream's bookmark (the stream's initial copy already has it).
fn covering<'s, 'p>(
    streams: &'s mut [LogStream<'p>],
    by_table: &mut StreamIndex,
    rel: &WalRelation,
    final_lsn: Lsn,
) -> Option<&'s mut LogStream<'p>> {
    let i = by_table.stream_of(rel)?;
    let s = &mut streams[i];
    if final_lsn < s.lsn {
        return None;
    }
    s.map_relation(rel);
    Some(s)
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

/// Reads and applies the log; returns whether it was read to the end
/// (not stopped by `max_run_seconds`).
pub fn read_changes<W: Write>(
    client: &mut Client,
    connector: &Connector,
    streams: &mut [LogStream<'_>],
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<bool, SyncError> {
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
    let mut toast = ToastFiller {
        connector,
        client: None,
    };
    let mut emit = Emitter {
        out,
        time_extracted: record::format_time(chrono::Utc::now()),
        counters: HashMap::new(),
    };
    tracing::info!(upto = %format_lsn(end), "reading the log");
    let mut changes = ChangeStream::open(
        client,
        &settings.replication_slot,
        &settings.publication,
        end,
    )
    .map_err(setup)?;
    let mut final_lsn: Lsn = 0;
    let mut commit_time = String::new();
    let mut since_state: u64 = 0;
    let mut transactions: u64 = 0;
    let mut finished = true;
    while let Some((lsn, change)) = changes.next_change().map_err(setup)? {
        match change {
            Change::Begin {
                final_lsn: f,
                commit_time: t,
                ..
            } => {
                final_lsn = f;
                commit_time = pg_time(t);
            }
            Change::Insert { relation, new } => {
                let Some(s) = covering(streams, &mut by_table, &relation, final_lsn) else {
                    continue;
                };
                emit.row(s, &new, lsn, None)?;
                since_state += 1;
            }
            Change::Update {
                relation,
                old,
                mut new,
            } => {
                let Some(s) = covering(streams, &mut by_table, &relation, final_lsn) else {
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
                        emit.row(s, &key_only, lsn, Some(&commit_time))?;
                        since_state += 1;
                    }
                }
                toast.fill(s, &relation, &mut new)?;
                emit.row(s, &new, lsn, None)?;
                since_state += 1;
            }
            Change::Delete { relation, old } => {
                let Some(s) = covering(streams, &mut by_table, &relation, final_lsn) else {
                    continue;
                };
                emit.row(s, &old, lsn, Some(&commit_time))?;
                since_state += 1;
            }
            Change::Truncate { relations } => {
                for relation in relations {
                    let Some(s) = covering(streams, &mut by_table, &relation, final_lsn) else {
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
                if since_state >= settings.state_interval || out_of_time {
                    emit.out.write_state(&state.to_value())?;
                    since_state = 0;
                }
                if out_of_time {
                    tracing::info!(
                        seconds = started.elapsed().as_secs(),
                        "max_run_seconds reached: stopping after a whole transaction"
                    );
                    finished = false;
                    break;
                }
            }
        }
    }
    emit.out.write_state(&state.to_value())?;
    emit.out.flush()?;
    tracing::info!(transactions, upto = %format_lsn(end), "log read");
    Ok(finished)
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
