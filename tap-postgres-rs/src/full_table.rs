//! FULL_TABLE: a whole-table copy, framed by ACTIVATE_VERSION, that resumes
//! by physical position. Also LOG_BASED's initial copy.
//!
//! The first run is a plain sequential scan (synchronized scans and parallel
//! workers off, so rows arrive in ctid order) and bookmarks the ctid of the
//! last row sent. A resumed run reads `ctid > bookmark OR <xmin not older than
//! the bookmark's snapshot's xmin>` (see [`unseen_by`]): still one
//! sequential pass, and rows that snapshot could not see are read again
//! wherever an INSERT or UPDATE put them. Once a resumed run has read past
//! the bookmark, its own snapshot takes the first one's place, so a later
//! resume re-reads only what changed since.
//! A changed heap file (VACUUM FULL, CLUSTER, REFRESH, TRUNCATE) restarts the
//! stream.

use std::io::Write;

use pg_connect::quote_literal;
use postgres::Client;
use singer_core::{MessageWriter, State};

use crate::copy::{emit_rows, limit_clause, where_clause, CopyQuery, StreamCtx};
use crate::error::{query_failed, StreamError, SyncError};
use crate::plan::Prepared;
use crate::settings::TapSettings;
use crate::state::{self as bookmarks, FullTableResume};

/// Copies a prepared stream's whole table (FULL_TABLE, and LOG_BASED's
/// initial copy): resumable, framed by ACTIVATE_VERSION. Returns the number
/// of records.
pub fn copy_stream<W: Write>(
    client: &mut Client,
    p: &Prepared,
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<u64, SyncError> {
    let ctx = StreamCtx::begin(p, state, settings, out)?;
    let count = full_table(client, &ctx, state, out)?;
    ctx.end(count, state, out)?;
    Ok(count)
}

fn full_table<W: Write>(
    client: &mut Client,
    ctx: &StreamCtx<'_>,
    state: &mut State,
    out: &mut MessageWriter<W>,
) -> Result<u64, SyncError> {
    let id = ctx.p.id.as_str();
    let rel = &ctx.p.rel;
    let saved = bookmarks::full_table_resume(state, id);
    let with_ctid = rel.ctid_readable();
    let resume = saved
        .clone()
        .filter(|r| with_ctid && r.relfilenode == rel.relfilenode);
    if saved.is_some() && resume.is_none() {
        tracing::info!(
            stream = id,
            "table was rewritten since the bookmark: starting over"
        );
    }
    let mut progress = match &resume {
        Some(r) => r.clone(),
        None => {
            // Taken before the COPY's own snapshot: anything that snapshot
            // cannot see was in progress here or started later.
            let (snapshot_xmax, snapshot_xip) = current_snapshot(client, id)?;
            FullTableResume {
                version: chrono::Utc::now().timestamp_millis(),
                ctid: "(0,0)".into(),
                relfilenode: rel.relfilenode,
                snapshot_xmax,
                snapshot_xip,
            }
        }
    };
    // A resumed run's own snapshot: once it has read past the bookmark,
    // every row before its position that this snapshot could see was sent.
    let this_run = match &resume {
        Some(_) => Some(current_snapshot(client, id)?),
        None => None,
    };
    let mut query = format!("SELECT {}", ctx.select_list());
    if with_ctid {
        // A table without columns reads its ctid alone.
        query.push_str(if ctx.p.columns.is_empty() {
            "ctid"
        } else {
            ", ctid"
        });
    }
    query.push_str(&format!(" FROM {}", ctx.read_from()));
    let mut conditions: Vec<String> = ctx.p.row_filter.iter().cloned().collect();
    if let Some(r) = &resume {
        tracing::info!(stream = id, ctid = %r.ctid, "resuming after the bookmark");
        conditions.push(resume_condition(r));
    } else {
        // Only a stream's first copy opens with ACTIVATE_VERSION, so that its
        // rows show at once. A later copy must not: the target would delete
        // (or mark deleted) every row before the new ones arrive, and readers
        // would see an empty table for the whole copy. The closing
        // ACTIVATE_VERSION retires the old rows either way.
        let first_copy = state.get(id, bookmarks::VERSION).is_none();
        bookmarks::finish_full_table(state, id, progress.version);
        if first_copy {
            out.write_activate_version(&ctx.p.name, progress.version)?;
        }
    }

    // Without ctids a limited copy is a whole (smaller) version; with them,
    // it stops as if interrupted. A resumed one first re-reads the rows
    // changed before its bookmark, which do not count: were they as many
    // as the limit, it would stop before the bookmark every time.
    let before_bookmark = resume
        .as_ref()
        .map(|r| format!("ctid <= {}::tid", quote_literal(&r.ctid)));
    let limit = ctx.limit_past(client, &conditions, before_bookmark)?;
    query.push_str(&where_clause(&conditions));
    query.push_str(&limit_clause(limit));
    let ordered_scan = with_ctid && ctx.p.row_filter.is_some();

    let version = progress.version;
    let copy = CopyQuery {
        sql: &query,
        version: Some(version),
        with_position: with_ctid,
        key_index: None,
        // The stream's final STATE follows the closing ACTIVATE_VERSION,
        // unless a limit may stop it first.
        final_checkpoint: with_ctid && limit.is_some(),
    };
    let count = in_ctid_order(client, id, ordered_scan, |client| {
        emit_rows(client, ctx, &copy, out, |tracker, out| {
            // Without ctids (views, partitioned parents, foreign tables) an
            // interrupted sync starts over; the STATE still lets targets flush.
            if with_ctid {
                match (&resume, &this_run) {
                    (Some(r), Some(run)) => advance(&mut progress, r, &tracker.position, run),
                    _ => {
                        progress.ctid.clear();
                        progress.ctid.push_str(&tracker.position);
                    }
                }
                bookmarks::set_full_table_progress(state, id, &progress);
            }
            out.write_state(&state.to_value())?;
            Ok(())
        })
    })?;
    if with_ctid && limit == Some(count) {
        // Stopped as if interrupted: the next run goes on after the bookmark.
        tracing::info!(
            stream = id,
            records = count,
            "max_record_count reached: the next run goes on from the bookmark"
        );
        return Ok(count);
    }
    bookmarks::finish_full_table(state, id, version);
    out.write_activate_version(&ctx.p.name, version)?;
    Ok(count)
}

/// A resumed copy's condition: rows after the bookmark, and those before it
/// that the snapshot in the bookmark could not see.
fn resume_condition(r: &FullTableResume) -> String {
    format!(
        "(ctid > {}::tid OR {})",
        quote_literal(&r.ctid),
        unseen_by(r.snapshot_xmax, &r.snapshot_xip)
    )
}

/// A resumed run (bookmark `r`, own snapshot `run`) has sent the rows up to
/// `position`, in ctid order. Before the bookmark its position means
/// nothing yet: the rows after it that the bookmark's snapshot could not
/// see are still to come, so the bookmark stays. Past it, every row up to
/// `position` that `run` could see has been sent: `run` replaces the
/// bookmark's snapshot, and the next resume re-reads only rows changed
/// since this run began.
fn advance(
    progress: &mut FullTableResume,
    r: &FullTableResume,
    position: &str,
    run: &(u32, Vec<u32>),
) {
    let past = match (
        bookmarks::parse_ctid(position),
        bookmarks::parse_ctid(&r.ctid),
    ) {
        (Some(at), Some(bookmark)) => at > bookmark,
        _ => false,
    };
    if past {
        progress.ctid = position.to_owned();
        progress.snapshot_xmax = run.0;
        progress.snapshot_xip.clone_from(&run.1);
    } else {
        progress.clone_from(r);
    }
}

/// The snapshot in force on `client` (32-bit xids): its xmax and the xids
/// in progress in it.
pub(crate) fn current_snapshot(
    client: &mut Client,
    id: &str,
) -> Result<(u32, Vec<u32>), SyncError> {
    let row = client
        .query_one(
            "SELECT (txid_snapshot_xmax(s) % 4294967296)::bigint, \
                    ARRAY(SELECT (x % 4294967296)::bigint FROM txid_snapshot_xip(s) x) \
               FROM txid_current_snapshot() s",
            &[],
        )
        .map_err(query_failed(id, StreamError::Snapshot))?;
    let xip: Vec<i64> = row.get(1);
    Ok((
        row.get::<_, i64>(0) as u32,
        xip.into_iter().map(|x| x as u32).collect(),
    ))
}

/// The condition matching row versions a first run's snapshot could not
/// see: every xid from that snapshot's xmin on. Not only those from `xmax`
/// on and those in `xip`: `xip` lists top-level transactions only, and a row
/// written in a SAVEPOINT of one of them carries its subtransaction's xid,
/// below `xmax` and not in `xip`, though equally invisible. A subtransaction's
/// xid is newer than its parent's, so none is older than the snapshot's xmin.
/// Rows of transactions that committed between that xmin and `xmax` are sent
/// again: the target upserts them by key (or by `_sdc_source_ctid`).
pub(crate) fn unseen_by(xmax: u32, xip: &[u32]) -> String {
    format!(
        "age(xmin) <= age({}::xid)",
        quote_literal(&snapshot_xmin(xmax, xip).to_string())
    )
}

/// The snapshot's xmin, its oldest transaction in progress (`xmax` when none
/// was): the `xip` entry farthest behind `xmax`, in the 32-bit xid circle.
fn snapshot_xmin(xmax: u32, xip: &[u32]) -> u32 {
    xip.iter()
        .copied()
        .max_by_key(|&x| xmax.wrapping_sub(x))
        .unwrap_or(xmax)
}

/// Runs `read` with index scans off when `needed`: resuming needs rows in
/// ctid order, and a filter must not make the planner read them in an
/// index's order.
pub(crate) fn in_ctid_order<T>(
    client: &mut Client,
    id: &str,
    needed: bool,
    read: impl FnOnce(&mut Client) -> Result<T, SyncError>,
) -> Result<T, SyncError> {
    if needed {
        client
            .batch_execute("SET enable_indexscan = off; SET enable_indexonlyscan = off")
            .map_err(query_failed(id, StreamError::Copy))?;
    }
    let result = read(client)?;
    if needed {
        client
            .batch_execute("RESET enable_indexscan; RESET enable_indexonlyscan")
            .map_err(query_failed(id, StreamError::Copy))?;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_xmin_is_the_oldest_xid_in_progress_across_wraparound() {
        assert_eq!(snapshot_xmin(750, &[]), 750);
        assert_eq!(snapshot_xmin(750, &[748, 745, 749]), 745);
        // Past the wrap, 4294967290 is older than 3.
        assert_eq!(snapshot_xmin(10, &[3, 4_294_967_290, 9]), 4_294_967_290);
        assert_eq!(unseen_by(750, &[748, 745]), "age(xmin) <= age('745'::xid)");
    }
}
