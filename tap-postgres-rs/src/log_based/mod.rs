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
//!
//! Steps 1 to 3 live here; step 4 in [`apply`].

mod apply;

use std::io::Write;

use pg_connect::{quote_qualified, Connector};
use pg_logical::{format_lsn, slot, Lsn};
use postgres::Client;
use serde_json::{json, Value};
use singer_core::{MessageWriter, State};

use crate::error::{query_failed, StreamError, SyncError};
use crate::full_table;
use crate::plan::Prepared;
use crate::settings::TapSettings;
use crate::state::{INITIAL_COPY_LSN, LAST_METHOD, LSN, VERSION};
use apply::LogStream;

/// The bookmark `key` (an LSN) of stream `id`, if the state holds one.
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

/// Drops the slot and the publication (the `--drop-slot` command).
pub fn drop_slot(client: &mut Client, settings: &TapSettings) -> Result<(bool, bool), SyncError> {
    let e = SyncError::DropSlot;
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
    let setup = SyncError::LogBased;
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
                return Err(StreamError::StateBehindSlot {
                    slot: slot_name.to_owned(),
                    state: lsn,
                    confirmed,
                }
                .at(&p.id));
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
        full_table::copy_stream(client, p, state, settings, out)?;
        state.remove(&p.id, INITIAL_COPY_LSN);
        state.set(&p.id, LSN, json!(start));
        state.set(&p.id, LAST_METHOD, json!("LOG_BASED"));
        state.set_currently_syncing(None);
        out.write_state(&state.to_value())?;
        out.flush()?;
    }

    let mut streams: Vec<LogStream<'_>> = prepared
        .iter()
        .map(|p| {
            let lsn = lsn_of(state, &p.id, LSN).unwrap_or(0);
            let version = state
                .get(&p.id, VERSION)
                .and_then(Value::as_i64)
                .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
            LogStream::new(p, lsn, version)
        })
        .collect();
    let finished = apply::read_changes(client, connector, &mut streams, state, settings, out)?;
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
            .map_err(query_failed(&p.id, StreamError::ReplicaIdentityCheck))?;
        let ident: String = row.get(0);
        let has_index: bool = row.get(1);
        let ok = match ident.as_str() {
            "f" => true,
            "n" => false,
            _ => has_index,
        };
        if !ok {
            return Err(StreamError::NoReplicaIdentity {
                table: quote_qualified(&p.rel.schema, &p.rel.name),
                identity: if ident == "n" { "NOTHING" } else { "DEFAULT" },
            }
            .at(&p.id));
        }
    }
    Ok(())
}
