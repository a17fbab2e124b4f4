//! LOG_BASED sync: change data capture through the built-in `pgoutput`
//! plugin over an ordinary connection (nothing to install on the server).
//!
//! One slot and one publication serve every LOG_BASED stream. A run:
//! 1. checks `wal_level` and the REPLICATION attribute, refuses tables without
//!    a replica identity (publishing them would break the application's own
//!    UPDATEs and DELETEs), makes sure the publication has every table, and
//!    creates the slot on first use;
//! 2. advances the slot to the lowest LSN the state (what the target
//!    committed) holds for the slot's streams: only forward, and only to
//!    positions the destination has;
//! 3. gives each new stream its initial copy (FULL_TABLE, resumable), with the
//!    LSN read *before* the copy as its bookmark: a change committed after it
//!    is read again from the log (the target's upsert makes that harmless);
//! 4. writes a heartbeat, then reads every transaction committed up to the WAL
//!    position it saw at start, peeked (never consumed), emitting whole-row
//!    RECORDs (deletes with `_sdc_deleted_at`) and a STATE with the commit's
//!    end LSN as each transaction completes.
//!
//! Records of LOG_BASED streams carry the stream's table version, so a
//! TRUNCATE becomes a new version announced by ACTIVATE_VERSION: the target
//! removes (hard delete) or marks (soft delete) every older row.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use pg_connect::{quote_ident, quote_qualified, Connector};
use pg_logical::changes::{Change, ChangeStream, Value as Cell};
use pg_logical::pgoutput::{Relation as WalRelation, ReplicaIdentity};
use pg_logical::{format_lsn, slot, Lsn};
use postgres::Client;
use serde_json::{json, Value};
use singer_core::metrics::{tags, Counter};
use singer_core::{push_json_string, MessageWriter, State};

use crate::codec::Codec;
use crate::discover::Column;
use crate::settings::TapSettings;
use crate::state::{LAST_METHOD, VERSION};
use crate::sync::{stream_err, Prepared, SyncError};

/// Bookmark keys of LOG_BASED streams (pipelinewise-compatible `lsn`).
pub const LSN: &str = "lsn";
/// The LSN read before an initial copy that has not finished yet.
pub const INITIAL_COPY_LSN: &str = "initial_copy_lsn";

/// Extra properties every LOG_BASED stream's SCHEMA carries.
pub fn extra_properties() -> Vec<(String, Value)> {
    vec![
        (
            "_sdc_lsn".into(),
            json!({"type": ["null", "integer"], "minimum": 0, "description": "LSN of the change in the source's WAL"}),
        ),
        (
            "_sdc_deleted_at".into(),
            json!({"type": ["null", "string"], "format": "date-time", "description": "Commit time of the DELETE that removed the row"}),
        ),
    ]
}

fn lsn_of(state: &State, id: &str, key: &str) -> Option<Lsn> {
    // An LSN left from an earlier LOG_BASED period is stale once the stream
    // was synced another way: copy it again.
    if state
        .get(id, LAST_METHOD)
        .and_then(Value::as_str)
        .is_some_and(|m| m != "LOG_BASED")
        && key == LSN
    {
        return None;
    }
    match state.get(id, key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok().or_else(|| pg_logical::parse_lsn(s)),
        _ => None,
    }
}

/// One LOG_BASED stream during a run.
struct LogStream<'a> {
    p: &'a Prepared,
    /// Changes whose transaction commits before this are already in the destination.
    lsn: Lsn,
    version: i64,
    /// For each column of the WAL relation: the index of the selected column it feeds.
    mapping: Vec<Option<usize>>,
    mapped_relation: u32,
    key_indexes: Vec<usize>,
}

/// Drops the slot and the publication (the `--drop-slot` command).
pub fn drop_slot(client: &mut Client, settings: &TapSettings) -> Result<(bool, bool), SyncError> {
    let e = |e: pg_logical::LogicalError| SyncError::Query(e.to_string());
    let slot_dropped = slot::drop_slot(client, &settings.replication_slot).map_err(e)?;
    let pub_dropped = slot::drop_publication(client, &settings.publication).map_err(e)?;
    Ok((slot_dropped, pub_dropped))
}

/// Syncs the LOG_BASED streams (each already prepared: SCHEMA written).
pub fn sync<W: Write>(
    client: &mut Client,
    connector: &Connector,
    prepared: &[Prepared],
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    if prepared.is_empty() {
        return Ok(());
    }
    let slot_name = settings.replication_slot.as_str();
    let publication = settings.publication.as_str();
    let setup = |e: pg_logical::LogicalError| SyncError::Query(format!("LOG_BASED: {e}"));
    slot::check_prerequisites(client).map_err(setup)?;
    check_replica_identity(client, prepared)?;
    let tables: Vec<(String, String)> = prepared
        .iter()
        .map(|p| (p.rel.schema.clone(), p.rel.name.clone()))
        .collect();
    slot::ensure_publication(client, publication, &tables).map_err(setup)?;
    let (info, created) = slot::create_slot_if_missing(client, slot_name).map_err(setup)?;
    report_lag(&info, settings, "before the run");

    // The slot may move up to what every stream's destination has committed.
    let confirmed = info.confirmed_flush_lsn.unwrap_or(0);
    let mut committed: Option<Lsn> = None;
    for p in prepared {
        if let Some(lsn) = lsn_of(state, &p.id, LSN) {
            if lsn < confirmed && !created {
                return Err(stream_err(
                    &p.id,
                    format!(
                        "the state's LSN {} is older than replication slot `{slot_name}`'s confirmed position {}: \
                         the changes in between are gone. Remove the stream's bookmark from the state to copy it again.",
                        format_lsn(lsn),
                        format_lsn(confirmed)
                    ),
                ));
            }
            committed = Some(committed.map_or(lsn, |c: Lsn| c.min(lsn)));
        }
    }
    if let Some(lsn) = committed {
        slot::advance_slot(client, slot_name, lsn).map_err(setup)?;
    }

    // Initial copies for streams the slot has not covered yet.
    for p in prepared {
        if lsn_of(state, &p.id, LSN).is_some() {
            continue;
        }
        let start = match lsn_of(state, &p.id, INITIAL_COPY_LSN) {
            Some(l) => l,
            None => {
                let l = slot::current_flush_lsn(client)
                    .map_err(setup)?
                    .max(confirmed);
                state.set(&p.id, INITIAL_COPY_LSN, json!(l));
                state.set(&p.id, LAST_METHOD, json!("LOG_BASED"));
                l
            }
        };
        tracing::info!(stream = %p.id, lsn = %format_lsn(start), "initial copy before reading the log");
        crate::sync::copy_stream(client, p, state, settings, out)?;
        state.remove(&p.id, INITIAL_COPY_LSN);
        state.set(&p.id, LSN, json!(start));
        state.set(&p.id, LAST_METHOD, json!("LOG_BASED"));
        state.set_currently_syncing(None);
        out.write_state(&state.to_value())?;
        out.flush()?;
    }

    let mut streams: Vec<LogStream<'_>> = prepared
        .iter()
        .map(|p| LogStream {
            p,
            lsn: lsn_of(state, &p.id, LSN).unwrap_or(0),
            version: state
                .get(&p.id, VERSION)
                .and_then(Value::as_i64)
                .unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
            mapping: Vec::new(),
            mapped_relation: 0,
            key_indexes: Vec::new(),
        })
        .collect();
    let finished = read_changes(client, connector, &mut streams, state, settings, out)?;
    // After an early stop the connection still has unread rows: leave it.
    if finished {
        if let Ok(Some(info)) = slot::slot_info(client, slot_name) {
            report_lag(&info, settings, "after the run");
        }
    }
    Ok(())
}

fn report_lag(info: &slot::SlotInfo, settings: &TapSettings, when: &str) {
    tracing::info!(
        slot = %info.name,
        pending_bytes = info.pending_bytes,
        retained_bytes = info.retained_bytes,
        "replication slot lag {when}"
    );
    if info.retained_bytes > settings.slot_lag_warning_bytes {
        tracing::warn!(
            slot = %info.name,
            retained_bytes = info.retained_bytes,
            threshold = settings.slot_lag_warning_bytes,
            "the replication slot keeps more WAL than slot_lag_warning_bytes on the server: run the tap more often, \
             or drop the slot with --drop-slot if this pipeline is gone"
        );
    }
}

/// Tables without a replica identity can't be published without breaking the
/// application's UPDATEs and DELETEs: refuse them, saying what to run.
fn check_replica_identity(client: &mut Client, prepared: &[Prepared]) -> Result<(), SyncError> {
    for p in prepared {
        let row = client
            .query_one(
                "SELECT c.relreplident::text, \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&p.rel.schema, &p.rel.name],
            )
            .map_err(|e| stream_err(&p.id, pg_connect::describe(&e)))?;
        let ident: String = row.get(0);
        let has_index: bool = row.get(1);
        let ok = match ident.as_str() {
            "f" => true,
            "n" => false,
            _ => has_index,
        };
        if !ok {
            return Err(stream_err(
                &p.id,
                format!(
                    "LOG_BASED needs a replica identity, and {} has none (no primary key, REPLICA IDENTITY {}): \
                     publishing it would make the application's own UPDATEs and DELETEs fail. Add a primary key, \
                     or run `ALTER TABLE {} REPLICA IDENTITY FULL`, or sync it FULL_TABLE.",
                    quote_qualified(&p.rel.schema, &p.rel.name),
                    if ident == "n" { "NOTHING" } else { "DEFAULT" },
                    quote_qualified(&p.rel.schema, &p.rel.name),
                ),
            ));
        }
    }
    Ok(())
}

/// Microseconds since 2000-01-01 UTC as ISO 8601.
fn pg_time(micros: i64) -> String {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let secs = micros.div_euclid(1_000_000) + PG_EPOCH_UNIX_SECS;
    let nanos = (micros.rem_euclid(1_000_000) * 1000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string())
        .unwrap_or_default()
}

/// money arrives from the log in the server's lc_monetary format
/// (`$1,234.56`, `-$5.00`, `($5.00)`); COPY reads it as numeric instead.
fn money_to_numeric(text: &str) -> String {
    let negative = text.contains('-') || text.starts_with('(');
    let digits: String = text
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    if negative {
        format!("-{digits}")
    } else {
        digits
    }
}

impl LogStream<'_> {
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
    record: String,
    time_extracted: String,
    counters: HashMap<String, Counter>,
}

impl<W: Write> Emitter<'_, W> {
    /// Writes one whole-row RECORD. `values[i]` feeds the WAL relation's column i.
    fn row(
        &mut self,
        s: &LogStream<'_>,
        values: &[Cell],
        lsn: Lsn,
        deleted_at: Option<&str>,
    ) -> Result<(), SyncError> {
        let r = &mut self.record;
        r.clear();
        r.push('{');
        let mut first = true;
        for (i, v) in values.iter().enumerate() {
            let Some(Some(col_index)) = s.mapping.get(i) else {
                continue;
            };
            let col: &Column = &s.p.columns[*col_index];
            let text = match v {
                // Not known here (a delete's non-key column): leave it out
                // rather than claim it is NULL.
                Cell::UnchangedToast => continue,
                Cell::Null if deleted_at.is_some() => continue,
                Cell::Null => None,
                Cell::Text(t) => Some(t),
            };
            if !first {
                r.push(',');
            }
            first = false;
            push_json_string(r, &col.name);
            r.push(':');
            match text {
                None => r.push_str("null"),
                Some(t) if col.read_as_numeric && !matches!(col.codec, Codec::Array { .. }) => {
                    col.codec.encode(&money_to_numeric(t), r)
                }
                Some(t) => col.codec.encode(t, r),
            }
        }
        if !first {
            r.push(',');
        }
        r.push_str(&format!("\"_sdc_lsn\":{lsn},\"_sdc_deleted_at\":"));
        match deleted_at {
            Some(t) => push_json_string(r, t),
            None => r.push_str("null"),
        }
        r.push('}');
        self.out.write_record_raw(
            &s.p.name,
            &self.record,
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
                    .map_err(|e| stream_err(&s.p.id, e.to_string()))?,
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
            .map_err(|e| stream_err(&s.p.id, pg_connect::describe(&e)))?;
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

fn read_changes<W: Write>(
    client: &mut Client,
    connector: &Connector,
    streams: &mut [LogStream<'_>],
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<bool, SyncError> {
    let setup = |e: pg_logical::LogicalError| SyncError::Query(format!("LOG_BASED: {e}"));
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
        record: String::with_capacity(4096),
        time_extracted: chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
            .to_string(),
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
    fn commit_times_and_money() {
        assert_eq!(pg_time(0), "2000-01-01T00:00:00.000000+00:00");
        assert_eq!(pg_time(-1), "1999-12-31T23:59:59.999999+00:00");
        assert_eq!(money_to_numeric("$1,234.56"), "1234.56");
        assert_eq!(money_to_numeric("-$5.00"), "-5.00");
        assert_eq!(money_to_numeric("($5.00)"), "-5.00");
    }
}
