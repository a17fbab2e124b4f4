//! LOG_BASED sync: change data capture through the built-in `pgoutput`
//! plugin over an ordinary connection (nothing to install on the server).
//!
//! One slot and one publication serve every LOG_BASED stream. A run:
//! 1. checks `wal_level` and the REPLICATION attribute, skips (and reports)
//!    streams it cannot replicate (tables without a replica identity, whose
//!    publishing would break the application's own UPDATEs and DELETEs;
//!    views; partitioned tables before PostgreSQL 13), makes sure the
//!    publication has every table, each joining with its row filter and
//!    column list in one statement (waiting for transactions older than a
//!    table's joining it), and creates the slot on first use;
//! 2. checks the state's positions can still be served (slot dropped,
//!    replaced or invalidated: fail, or copy again with `on_lost_changes =
//!    resync`), copies again a positioned stream whose table joined the
//!    publication only now (its changes in between were never decoded),
//!    and checks the tables' layouts, row filters and selected columns
//!    against their bookmarks ([`layout`]);
//!    then advances the slot to the lowest LSN the state (what the target
//!    committed) holds for the slot's streams: only forward, and only to
//!    positions the destination has;
//! 3. gives each new (or forgotten) stream its initial copy (FULL_TABLE,
//!    resumable), with the LSN read *before* the copy as its bookmark: a
//!    change committed after it is read again from the log (the target's
//!    upsert makes that harmless);
//! 4. writes a heartbeat, then streams every transaction committed up to the
//!    WAL position it saw at start over a replication connection (confirming
//!    nothing: the next run's state moves the slot), emitting whole-row
//!    RECORDs (deletes with `_sdc_deleted_at`) and a STATE with the commit's
//!    end LSN as each transaction completes.
//!
//! Records of LOG_BASED streams carry the stream's table version, so a
//! TRUNCATE becomes a new version announced by ACTIVATE_VERSION: the target
//! removes (hard delete) or marks (soft delete) every older row.
//!
//! Steps 1 to 3 live here; step 4 in [`apply`].

mod apply;
mod layout;

use std::io::Write;

use pg_connect::{quote_qualified, Connector};
use pg_logical::{format_lsn, slot, Lsn};
use postgres::Client;
use serde_json::{json, Value};
use singer_core::{MessageWriter, State};

use crate::discover::RelKind;
use crate::error::{query_failed, Lost, StreamError, SyncError};
use crate::full_table;
use crate::pg_type::TypeMap;
use crate::plan::Prepared;
use crate::settings::{OnLostChanges, TapSettings};
use crate::state::{
    CTID, INITIAL_COPY_LSN, LAST_METHOD, LSN, RELFILENODE, SNAPSHOT_XIP, SNAPSHOT_XMAX, VERSION,
};
use apply::LogStream;
use layout::{Layout, Selection, LAYOUT, SELECTION};

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

/// Whether stream `id` has rows in the destination from a position in the
/// log: a finished initial copy, or one under way.
fn positioned(state: &State, id: &str) -> bool {
    [LSN, INITIAL_COPY_LSN]
        .iter()
        .any(|key| lsn_of(state, id, key).is_some())
}

/// Drops the slot and the publication (the `--drop-slot` command).
pub fn drop_slot(client: &mut Client, settings: &TapSettings) -> Result<(bool, bool), SyncError> {
    let e = SyncError::DropSlot;
    let slot_dropped = slot::drop_slot(client, &settings.replication_slot).map_err(e)?;
    let pub_dropped = slot::drop_publication(client, &settings.publication).map_err(e)?;
    Ok((slot_dropped, pub_dropped))
}

/// Syncs the LOG_BASED streams (each already prepared: SCHEMA written).
/// Streams that cannot be replicated are skipped, with the reason, into
/// `skipped`; the others run.
#[allow(clippy::too_many_arguments)]
pub fn sync<W: Write>(
    client: &mut Client,
    connector: &Connector,
    types: &TypeMap,
    prepared: &[Prepared],
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
    skipped: &mut Vec<(String, StreamError)>,
) -> Result<(), SyncError> {
    if prepared.is_empty() {
        return Ok(());
    }
    let slot_name = settings.replication_slot.as_str();
    let publication = settings.publication.as_str();
    let setup = SyncError::LogBased;
    slot::check_prerequisites(client).map_err(setup)?;
    let server = slot::server_version(client).map_err(setup)?;
    let mut runnable: Vec<&Prepared> = Vec::new();
    for p in prepared {
        match replicable(client, p, server)? {
            None => runnable.push(p),
            Some(why) => {
                tracing::warn!(stream = %p.id, reason = %why, "stream skipped: it cannot be replicated LOG_BASED");
                skipped.push((p.id.clone(), why));
            }
        }
    }
    if runnable.is_empty() {
        return Ok(());
    }
    let needs_via_root = runnable
        .iter()
        .any(|p| p.rel.kind == RelKind::PartitionedTable);
    // Row filters and column lists exist from PostgreSQL 15.
    let specs = if server >= 150000 {
        runnable
            .iter()
            .map(|p| table_spec(client, p))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        runnable
            .iter()
            .map(|p| slot::TableSpec::whole(&p.rel.schema, &p.rel.name))
            .collect()
    };
    let published = slot::publish_tables(
        client,
        publication,
        &specs,
        &slot::PublicationOptions::for_server(server),
        needs_via_root,
    )
    .map_err(setup)?;
    let mut joins = Vec::with_capacity(runnable.len());
    for (p, joined) in runnable.iter().zip(published) {
        joins.push(joined.map_err(|e| StreamError::Publication(e).at(&p.id))?);
    }
    let mut changed = joins.contains(&true);
    if server >= 150000 {
        for ((p, spec), joined) in runnable.iter().zip(&specs).zip(&joins) {
            if !joined {
                changed |= slot::set_table_spec(client, publication, spec)
                    .map_err(|e| StreamError::Publication(e).at(&p.id))?;
            }
        }
    }
    if changed {
        slot::wait_for_older_transactions(client).map_err(setup)?;
    }

    // Positions the slot can no longer serve: fail, or copy those streams again.
    let existing = slot::slot_info(client, slot_name).map_err(setup)?;
    for p in &runnable {
        let Some(lsn) = lsn_of(state, &p.id, LSN) else {
            continue;
        };
        let lost = match &existing {
            None => Some(Lost::NoSlot),
            Some(info) if info.is_lost() => Some(Lost::Invalidated),
            Some(info) => info
                .confirmed_flush_lsn
                .filter(|c| lsn < *c)
                .map(|confirmed| Lost::Behind { confirmed }),
        };
        let Some(lost) = lost else { continue };
        let error = StreamError::ChangesLost {
            slot: slot_name.to_owned(),
            state: lsn,
            lost,
        };
        match settings.on_lost_changes {
            OnLostChanges::Fail => return Err(error.at(&p.id)),
            OnLostChanges::Resync => {
                tracing::warn!(stream = %p.id, reason = %error, "on_lost_changes = resync: copying the stream again");
                forget_position(state, &p.id);
            }
        }
    }
    // A positioned stream whose table was out of the publication (removed
    // from it, or publication_name set to a new one): its changes since the
    // position were never decoded.
    for (p, joined) in runnable.iter().zip(&joins) {
        if *joined && positioned(state, &p.id) {
            tracing::info!(stream = %p.id, publication, "the table joined the publication only now, so its changes since the stream's position were never decoded: copying the stream again as a new version");
            forget_position(state, &p.id);
        }
    }
    if existing.as_ref().is_some_and(slot::SlotInfo::is_lost) {
        // Nothing depends on it any more (or we failed above): start afresh.
        tracing::warn!(
            slot = slot_name,
            "dropping the invalidated replication slot to create it again"
        );
        slot::drop_slot(client, slot_name).map_err(setup)?;
    }
    let (info, _created) = slot::create_slot_if_missing(client, slot_name).map_err(setup)?;
    report_lag(&info, settings, "before the run");

    // The table's layout against the one its destination rows were written
    // under: some changes need the stream copied again (see `layout`).
    let mut layouts = Vec::with_capacity(runnable.len());
    for p in &runnable {
        let now = Layout::read(client, &p.rel.schema, &p.rel.name)
            .map_err(query_failed(&p.id, StreamError::Layout))?;
        let before = state.get(&p.id, LAYOUT).and_then(Layout::from_bookmark);
        if lsn_of(state, &p.id, LSN).is_some() {
            if let Some(why) = before.and_then(|b| now.recopy_reason(&b)) {
                tracing::info!(stream = %p.id, reason = %why, "rows in the destination may be wrong: copying the stream again as a new version");
                forget_position(state, &p.id);
            }
        }
        state.set(&p.id, LAYOUT, now.to_bookmark());
        // The rows and columns the destination was sent under: a copy under
        // way counts too (its rows so far were read under them).
        let selection = Selection::of(p, &now);
        if positioned(state, &p.id) {
            let before = state
                .get(&p.id, SELECTION)
                .and_then(Selection::from_bookmark);
            if let Some(why) = before.and_then(|b| selection.recopy_reason(&b)) {
                tracing::info!(stream = %p.id, reason = %why, "rows in the destination may be missing or stale: copying the stream again as a new version");
                forget_position(state, &p.id);
            }
        }
        state.set(&p.id, SELECTION, selection.to_bookmark());
        layouts.push(now);
    }

    // The slot may move up to what every stream's destination has committed.
    let confirmed = info.confirmed_flush_lsn.unwrap_or(0);
    let committed = runnable
        .iter()
        .filter_map(|p| lsn_of(state, &p.id, LSN))
        .min();
    if let Some(lsn) = committed {
        slot::advance_slot(client, slot_name, lsn).map_err(setup)?;
    }

    // Initial copies for streams the slot has not covered yet.
    for p in &runnable {
        if lsn_of(state, &p.id, LSN).is_some() {
            continue;
        }
        let start = match lsn_of(state, &p.id, INITIAL_COPY_LSN).filter(|l| *l >= confirmed) {
            Some(l) => l,
            None => {
                // A copy interrupted before the slot was replaced starts over.
                forget_position(state, &p.id);
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

    let mut streams: Vec<LogStream<'_>> = runnable
        .iter()
        .zip(&layouts)
        .map(|(p, layout)| {
            let lsn = lsn_of(state, &p.id, LSN).unwrap_or(0);
            let version = state
                .get(&p.id, VERSION)
                .and_then(Value::as_i64)
                .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
            let generated = layout
                .0
                .iter()
                .filter(|c| c.generated)
                .map(|c| c.name.clone())
                .collect();
            LogStream::new(p, lsn, version, generated)
        })
        .collect();
    let mut side = apply::Side::new(connector, types);
    apply::read_changes(
        client,
        connector,
        &mut side,
        &mut streams,
        state,
        settings,
        out,
    )?;
    if let Ok(Some(info)) = slot::slot_info(client, slot_name) {
        report_lag(&info, settings, "after the run");
    }
    Ok(())
}

/// What the publication sends of a stream's table (PostgreSQL 15+): the rows
/// of its row filter, and, when columns are deselected, only the selected and
/// replica identity columns (PostgreSQL requires those), so that deselected
/// columns are never decoded nor sent. Generated columns are never listed
/// (PostgreSQL before 18 refuses them): they are read back by key.
fn table_spec(client: &mut Client, p: &Prepared) -> Result<slot::TableSpec, SyncError> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.attgenerated::text <> '', \
                    CASE c.relreplident WHEN 'f' THEN true WHEN 'n' THEN false \
                    ELSE EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid \
                                   AND CASE c.relreplident WHEN 'd' THEN i.indisprimary ELSE i.indisreplident END \
                                   AND a.attnum = ANY(i.indkey)) END \
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
              ORDER BY a.attnum",
            &[&quote_qualified(&p.rel.schema, &p.rel.name)],
        )
        .map_err(query_failed(&p.id, StreamError::PublicationColumns))?;
    let mut stored = 0;
    let mut listed = Vec::new();
    for r in &rows {
        let name: String = r.get(0);
        if r.get::<_, bool>(1) {
            continue;
        }
        stored += 1;
        if r.get::<_, bool>(2) || p.columns.iter().any(|c| c.name == name) {
            listed.push(name);
        }
    }
    Ok(slot::TableSpec {
        schema: p.rel.schema.clone(),
        name: p.rel.name.clone(),
        row_filter: p.row_filter.clone(),
        columns: (listed.len() < stored).then_some(listed),
    })
}

/// Forgets where a stream is, so that it is copied again (a new table version).
fn forget_position(state: &mut State, id: &str) {
    for key in [
        LSN,
        INITIAL_COPY_LSN,
        CTID,
        RELFILENODE,
        SNAPSHOT_XMAX,
        SNAPSHOT_XIP,
    ] {
        state.remove(id, key);
    }
}

/// Why a stream cannot be replicated LOG_BASED, if it cannot.
fn replicable(
    client: &mut Client,
    p: &Prepared,
    server: u32,
) -> Result<Option<StreamError>, SyncError> {
    match p.rel.kind {
        RelKind::Table => {}
        RelKind::PartitionedTable if server >= 130000 => {}
        RelKind::PartitionedTable => return Ok(Some(StreamError::PartitionedBeforePg13)),
        _ => return Ok(Some(StreamError::LogBasedNotATable)),
    }
    replica_identity_problem(client, p)
}

fn report_lag(info: &slot::SlotInfo, settings: &TapSettings, when: &str) {
    tracing::info!(
        slot = %info.name,
        pending_bytes = info.pending_bytes,
        retained_bytes = info.retained_bytes,
        wal_status = info.wal_status.as_deref().unwrap_or("n/a"),
        safe_wal_size = info.safe_wal_size.map_or("n/a".to_owned(), |b| b.to_string()),
        "replication slot lag {when}"
    );
    if info.wal_status.as_deref() == Some("unreserved") {
        tracing::warn!(
            slot = %info.name,
            "the replication slot is past max_slot_wal_keep_size: the server may invalidate it at its next checkpoint (run the tap now, or raise max_slot_wal_keep_size)"
        );
    }
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
/// application's UPDATEs and DELETEs: say what to run instead.
fn replica_identity_problem(
    client: &mut Client,
    p: &Prepared,
) -> Result<Option<StreamError>, SyncError> {
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
    Ok((!ok).then(|| StreamError::NoReplicaIdentity {
        table: quote_qualified(&p.rel.schema, &p.rel.name),
        identity: if ident == "n" { "NOTHING" } else { "DEFAULT" },
    }))
}
