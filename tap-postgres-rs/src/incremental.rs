//! INCREMENTAL: the rows whose replication key is at or past the bookmark,
//! in key order, bookmarking the last key sent every `state_interval` rows.
//!
//! With the replication key `xmin` (for tables with no usable column, like
//! Airbyte's Xmin method) the rows are those written (inserted or updated)
//! by a transaction the previous run's snapshot could not rule out as seen.
//! The bookmark is that snapshot's xmin as a 64-bit transaction id (epoch
//! included, from `txid_current_snapshot()`, which a standby can answer
//! too): every transaction below it had ended when the previous run read,
//! so its rows were read then. A row's 32-bit `xmin` is widened to 64 bits
//! relative to the current snapshot (a live xmin is never more than 2^31
//! transactions old, or the server would have stopped for wraparound), so
//! the comparison stays right across wraparound; an xmin older than that,
//! or the frozen/bootstrap ids below 3, belongs to a frozen row, which is
//! never new. Rows come in xmin order, so an interrupted run resumes from
//! the last one sent. At least once: rows of transactions that were still
//! running at the previous read's start, or that share the last xmin sent,
//! come again. Deletes leave no row, so they are never seen.

use std::io::Write;

use pg_connect::{quote_ident, quote_literal};
use postgres::Client;
use serde_json::{json, Value};
use singer_core::{MessageWriter, State};

use crate::copy::{emit_rows, limit_clause, where_clause, CopyQuery, StreamCtx};
use crate::error::query_failed;
use crate::error::{StreamError, SyncError};
use crate::plan::{Prepared, XMIN_KEY};
use crate::settings::TapSettings;
use crate::state as bookmarks;

/// Syncs a prepared stream by its replication key `key`.
pub fn sync<W: Write>(
    client: &mut Client,
    p: &Prepared,
    key: &str,
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    let ctx = StreamCtx::begin(p, state, settings, out)?;
    let count = if key == XMIN_KEY {
        by_xmin(client, &ctx, state, out)?
    } else {
        incremental(client, &ctx, key, state, out)?
    };
    ctx.end(count, state, out)
}

fn incremental<W: Write>(
    client: &mut Client,
    ctx: &StreamCtx<'_>,
    key: &str,
    state: &mut State,
    out: &mut MessageWriter<W>,
) -> Result<u64, SyncError> {
    let id = ctx.p.id.as_str();
    let key_index = ctx
        .p
        .columns
        .iter()
        .position(|c| c.name == key)
        .expect("the replication key is always selected");
    let key_col = &ctx.p.columns[key_index];
    let mut query = format!("SELECT {} FROM {}", ctx.select_list(), ctx.read_from());
    let mut conditions: Vec<String> = ctx.p.row_filter.iter().cloned().collect();
    let mut at_bookmark = None;
    if let Some(value) = bookmarks::incremental_bookmark(state, id, key) {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(StreamError::BadBookmark(other.clone()).at(id)),
        };
        let bookmark = format!("{}::{}", quote_literal(&text), key_col.sql_datatype);
        conditions.push(format!("{} >= {bookmark}", quote_ident(key)));
        // The bookmark is inclusive: the rows at it were sent already.
        at_bookmark = Some(format!("{} = {bookmark}", quote_ident(key)));
    }
    let limit = ctx.limit_past(client, &conditions, at_bookmark)?;
    query.push_str(&where_clause(&conditions));
    query.push_str(&format!(" ORDER BY {}", quote_ident(key)));
    // Rows in key order: the bookmark after the last one is where the next run goes on.
    query.push_str(&limit_clause(limit));

    let copy = CopyQuery {
        sql: &query,
        version: None,
        with_position: false,
        key_index: Some(key_index),
        final_checkpoint: true,
    };
    emit_rows(client, ctx, &copy, out, |tracker, out| {
        if let Some(text) = &tracker.key {
            let value = key_col.ty.bookmark_value(&key_col.codec, text);
            bookmarks::set_incremental(state, id, key, value);
        }
        out.write_state(&state.to_value())?;
        Ok(())
    })
}

/// 2^32: xids wrap around modulo this.
const XID_SPAN: &str = "4294967296";

/// A row's `xmin` widened to the 64-bit id it stands for, relative to
/// `xmax` (the reading snapshot's, 64-bit): 0 for a frozen row.
fn full_xmin(xmax: u64) -> String {
    let behind =
        format!("((({xmax} - xmin::text::bigint) % {XID_SPAN} + {XID_SPAN}) % {XID_SPAN})");
    format!(
        "(CASE WHEN xmin::text::bigint >= 3 AND {behind} BETWEEN 1 AND 2147483648 \
         THEN {xmax} - {behind} ELSE 0 END)"
    )
}

/// The bookmark of an xmin stream: a 64-bit xid (a number, or its digits).
fn xmin_bookmark(state: &State, id: &str) -> Result<Option<u64>, SyncError> {
    match bookmarks::incremental_bookmark(state, id, XMIN_KEY) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .map(Some)
            .ok_or_else(|| StreamError::BadXminBookmark(v.clone()).at(id)),
    }
}

fn by_xmin<W: Write>(
    client: &mut Client,
    ctx: &StreamCtx<'_>,
    state: &mut State,
    out: &mut MessageWriter<W>,
) -> Result<u64, SyncError> {
    let id = ctx.p.id.as_str();
    // One snapshot for both: the bookmark is the xmin of the snapshot the COPY reads.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .map_err(query_failed(id, StreamError::XminSnapshot))?;
    let row = client
        .query_one(
            "SELECT txid_snapshot_xmin(s)::text, txid_snapshot_xmax(s)::text FROM txid_current_snapshot() s",
            &[],
        )
        .map_err(query_failed(id, StreamError::XminSnapshot))?;
    let xid = |i: usize| {
        row.get::<_, String>(i)
            .parse::<u64>()
            .expect("txid is a bigint")
    };
    let (snapshot_xmin, snapshot_xmax) = (xid(0), xid(1));
    let mut since = xmin_bookmark(state, id)?;
    if let Some(b) = since.filter(|b| *b > snapshot_xmax) {
        tracing::warn!(
            stream = id,
            bookmark = b,
            current = snapshot_xmax,
            "the xmin bookmark is ahead of this server's transaction ids (a state from another server, or a restored backup): reading the whole table again"
        );
        since = None;
    }
    let full = full_xmin(snapshot_xmax);
    let list = ctx.select_list();
    let mut query = format!(
        "SELECT {list}{}{full}::text FROM {}",
        if list.is_empty() { "" } else { ", " },
        ctx.read_from()
    );
    let mut conditions: Vec<String> = ctx.p.row_filter.iter().cloned().collect();
    if let Some(b) = since {
        conditions.push(format!("{full} >= {b}"));
    }
    // The bookmark is inclusive: the rows at it were sent already (one
    // transaction's rows share one xmin).
    let limit = ctx.limit_past(client, &conditions, since.map(|b| format!("{full} = {b}")))?;
    query.push_str(&where_clause(&conditions));
    query.push_str(&format!(" ORDER BY {full}"));
    query.push_str(&limit_clause(limit));
    let copy = CopyQuery {
        sql: &query,
        version: None,
        with_position: true,
        key_index: None,
        // A limited read may stop short: its last row is where the next run goes on.
        final_checkpoint: limit.is_some(),
    };
    let count = emit_rows(client, ctx, &copy, out, |tracker, out| {
        // Rows are in xmin order: every row below the last one sent is out,
        // unless its transaction was still running when this read began.
        if let Ok(last) = tracker.position.parse::<u64>() {
            bookmarks::set_incremental(state, id, XMIN_KEY, json!(last.min(snapshot_xmin)));
        }
        out.write_state(&state.to_value())?;
        Ok(())
    })?;
    client
        .batch_execute("COMMIT")
        .map_err(query_failed(id, StreamError::XminSnapshot))?;
    // Cut short by `max_record_count`: the checkpoint above is where the next
    // run goes on; only a read to the end may move the bookmark to the snapshot.
    if limit != Some(count) {
        bookmarks::set_incremental(state, id, XMIN_KEY, json!(snapshot_xmin));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The widening, evaluated by Postgres for raw xmins around an epoch
    /// boundary (`xmin` here is a VALUES column standing in for the system one).
    #[test]
    fn xmin_widens_across_wraparound_and_freezing() {
        let db = pg_testkit::cluster().create_database("xmin_widening");
        let mut client = db.client();
        let epoch = 3u64 << 32;
        let mut widen = |xmax: u64, raw: u32| -> i64 {
            client
                .query_one(
                    &format!(
                        "SELECT {} FROM (VALUES ('{raw}'::xid)) v(xmin)",
                        full_xmin(xmax)
                    ),
                    &[],
                )
                .unwrap()
                .get(0)
        };
        // Just past the epoch boundary: small raw ids are this epoch's, large ones the last.
        let xmax = epoch + 10;
        assert_eq!(widen(xmax, 5), (epoch + 5) as i64);
        assert_eq!(widen(xmax, 4_294_967_290), (epoch - 6) as i64);
        // A row older than 2^31 transactions can only be frozen: never new.
        assert_eq!(widen(xmax, 2_147_483_000), 0);
        // The frozen and bootstrap ids, and the snapshot's own xmax (no row has it).
        assert_eq!(widen(xmax, 2), 0);
        assert_eq!(widen(xmax, 1), 0);
        assert_eq!(widen(xmax, 10), 0);
        // Epoch 0: plain ids.
        assert_eq!(widen(1000, 999), 999);
        assert_eq!(widen(1000, 3), 3);
    }
}
