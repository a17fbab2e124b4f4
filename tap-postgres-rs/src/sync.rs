//! The sync dispatcher, above every sync method: plans each selected stream
//! and hands it to FULL_TABLE or INCREMENTAL ([`crate::parallel`]: one after
//! another, or with `max_parallel_streams` several at once, big tables split
//! into ctid ranges) or, last and
//! together, LOG_BASED ([`crate::log_based`]); then writes the run's final
//! STATE, and fails if a stream had to be skipped. With `use_secondary`,
//! FULL_TABLE and INCREMENTAL streams are planned and read on the standby
//! (its workers too); LOG_BASED ones on the primary, where the slot is.

use std::io::Write;

use postgres::Client;
use singer_core::{Catalog, CatalogEntry, MessageWriter, State};

use crate::error::QueryError;
pub use crate::error::SyncError;
use crate::pg_type::TypeMap;
use crate::plan;
use crate::settings::{Method, TapSettings};
use crate::state as bookmarks;
use crate::{log_based, parallel};

/// Syncs every selected stream of the catalog, the one the state says was
/// interrupted first; LOG_BASED streams last, together, from one slot.
pub fn run<W: Write>(
    client: &mut Client,
    mut standby: Option<(&mut Client, &pg_connect::Connector)>,
    connector: &pg_connect::Connector,
    catalog: &Catalog,
    mut state: State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    singer_core::progress::start(singer_core::progress::Role::Tap);
    for session in std::iter::once(&mut *client).chain(standby.as_mut().map(|(c, _)| &mut **c)) {
        session
            .batch_execute(parallel::SCAN_SESSION)
            .map_err(|e| SyncError::Session(QueryError(e)))?;
    }
    let mut streams: Vec<&CatalogEntry> = catalog.selected_streams().collect();
    if let Some(current) = state.currently_syncing().map(str::to_owned) {
        streams.sort_by_key(|s| s.tap_stream_id != current);
    }
    if streams.is_empty() {
        tracing::warn!(
            "no stream is selected in the catalog, so nothing is synced: select a stream with `\"selected\": true` in its metadata entry whose breadcrumb is [] (with Meltano: `meltano select tap-postgres-rs <stream> \"*\"`)"
        );
    }
    crate::row_filter::check_all(client, catalog, settings)?;
    // Types are loaded once per run, not once per stream.
    let types = TypeMap::load(client).map_err(SyncError::Types)?;
    let split_connector = standby.as_ref().map_or(connector, |(_, c)| *c);
    let mut log_based = Vec::new();
    // FULL_TABLE and INCREMENTAL streams for `max_parallel_streams` > 1.
    let mut copies = Vec::new();
    // Streams LOG_BASED cannot replicate: reported at the end, the run fails.
    let mut skipped = Vec::new();
    for entry in streams {
        if plan::method(entry, settings)? == Method::LogBased {
            log_based.push(plan::prepare(client, &types, entry, settings)?);
            continue;
        }
        let reader = match standby.as_mut() {
            Some((s, _)) => &mut **s,
            None => &mut *client,
        };
        let p = plan::prepare(reader, &types, entry, settings)?;
        if settings.max_parallel_streams > 1 {
            copies.push(p);
            continue;
        }
        if bookmarks::split_resume(&state, &p.id).is_some() {
            // An interrupted split copy resumes by its ranges, whatever the
            // worker count now.
            parallel::sync_parallel(reader, split_connector, vec![p], &mut state, settings, out)?;
            continue;
        }
        parallel::sync_stream(reader, &p, &mut state, settings, out)?;
    }
    let (reader, reader_connector) = match standby {
        Some((s, c)) => (s, c),
        None => (&mut *client, connector),
    };
    if !copies.is_empty() {
        parallel::sync_parallel(reader, reader_connector, copies, &mut state, settings, out)?;
    }
    if !log_based.is_empty() {
        for p in &log_based {
            plan::write_schema(p, out)?;
        }
        log_based::sync(
            client,
            connector,
            &types,
            &log_based,
            &mut state,
            settings,
            out,
            &mut skipped,
        )?;
    }
    state.set_currently_syncing(None);
    out.write_state(&state.to_value())?;
    out.flush()?;
    singer_core::progress::finish();
    if skipped.is_empty() {
        Ok(())
    } else {
        Err(SyncError::Skipped(skipped))
    }
}
