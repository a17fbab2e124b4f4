//! INCREMENTAL: the rows whose replication key is at or past the bookmark,
//! in key order, bookmarking the last key sent every `state_interval` rows.

use std::io::Write;

use pg_connect::{quote_ident, quote_literal};
use postgres::Client;
use serde_json::Value;
use singer_core::{MessageWriter, State};

use crate::copy::{emit_rows, where_clause, CopyQuery, StreamCtx};
use crate::error::{StreamError, SyncError};
use crate::plan::Prepared;
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
    let count = incremental(client, &ctx, key, state, out)?;
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
    if let Some(value) = bookmarks::incremental_bookmark(state, id, key) {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(StreamError::BadBookmark(other.clone()).at(id)),
        };
        conditions.push(format!(
            "{} >= {}::{}",
            quote_ident(key),
            quote_literal(&text),
            key_col.sql_datatype
        ));
    }
    query.push_str(&where_clause(&conditions));
    query.push_str(&format!(" ORDER BY {}", quote_ident(key)));
    // Rows in key order: the bookmark after the last one is where the next run goes on.
    query.push_str(&ctx.limit_clause());

    let copy = CopyQuery {
        sql: &query,
        version: None,
        with_ctid: false,
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
