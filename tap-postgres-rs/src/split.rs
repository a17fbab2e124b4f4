//! One huge table: a FULL_TABLE copy split into ctid page ranges that the
//! parallel workers ([`crate::parallel`]) read at once, all in the one
//! exported snapshot, each range resumable on its own.
//!
//! A table of at least `split_table_min_pages` pages (with
//! `max_parallel_streams` > 1) gets up to `max_parallel_streams` ranges of
//! about as many pages each, the last one open-ended (pages added later
//! belong to it). The writer of stdout opens the stream (SCHEMA, the
//! bookmark with every range, ACTIVATE_VERSION on a first copy), merges each
//! range's bookmark as it arrives after that range's rows, and closes the
//! stream (ACTIVATE_VERSION, bookmark finished) once every range is done.
//!
//! A resumed copy reads, in each range, the rows after its bookmark and the
//! row versions the first run's snapshot could not see (as an unsplit
//! resume does over the whole table; a done range reads only those). The
//! ranges cover the table without overlap, so each row version is read
//! exactly once. Stored ranges are resumed as they are, whatever the worker
//! count now (with one worker, one range after another, still in one
//! snapshot: a row an UPDATE moves into a range read earlier would otherwise
//! be missed).
//!
//! Each range reads with its own copy of the stream's [`Prepared`], so it
//! widens its own SCHEMA: a later SCHEMA from another range may declare
//! fewer columns widened (targets that only ever widen, like ours, keep the
//! widest).

use std::io::Write;

use pg_connect::{quote_literal, quote_qualified};
use postgres::Client;
use singer_core::{MessageWriter, State};

use crate::copy::{emit_rows, where_clause, CopyQuery, StreamCtx};
use crate::error::{query_failed, StreamError, SyncError};
use crate::full_table::{current_snapshot, in_ctid_order, unseen_by};
use crate::plan::{self, Prepared};
use crate::settings::TapSettings;
use crate::state::{self as bookmarks, CtidRange, SplitResume};

/// Whether (and how) a stream is read in ranges, decided before the
/// snapshot is exported.
pub enum Decision {
    /// The state holds this split copy's bookmark, of the same heap file.
    Resume(SplitResume),
    /// A new copy of a table of this many pages, in this many ranges.
    Fresh { pages: u32, ranges: u32 },
}

/// A split copy as its workers read it.
#[derive(Clone)]
pub struct Split {
    pub copy: SplitResume,
    /// Resuming an interrupted copy (each range also re-reads what the first
    /// snapshot could not see).
    pub resumed: bool,
}

/// Decides whether stream `p` is read in ranges.
pub fn decide(
    client: &mut Client,
    p: &Prepared,
    state: &State,
    settings: &TapSettings,
) -> Result<Option<Decision>, SyncError> {
    let id = p.id.as_str();
    if p.replication_key.is_some() || !p.rel.ctid_readable() {
        return Ok(None);
    }
    if let Some(s) = bookmarks::split_resume(state, id) {
        if s.relfilenode == p.rel.relfilenode {
            return Ok(Some(Decision::Resume(s)));
        }
        tracing::info!(
            stream = id,
            "table was rewritten since the bookmark: starting over"
        );
    }
    let unsplit_resume =
        bookmarks::full_table_resume(state, id).is_some_and(|r| r.relfilenode == p.rel.relfilenode);
    let workers = settings.max_parallel_streams as u64;
    let Some(min_pages) = settings.split_table_min_pages else {
        return Ok(None);
    };
    // A limited copy stops as if interrupted, by its one ctid bookmark.
    if workers < 2 || unsplit_resume || settings.max_record_count.is_some() {
        return Ok(None);
    }
    let pages: i64 = client
        .query_one(
            "SELECT pg_relation_size($1::text::regclass) / current_setting('block_size')::bigint",
            &[&quote_qualified(&p.rel.schema, &p.rel.name)],
        )
        .map_err(query_failed(id, StreamError::TableSize))?
        .get(0);
    let pages = pages.max(0) as u64;
    if pages < min_pages.max(2) {
        return Ok(None);
    }
    Ok(Some(Decision::Fresh {
        pages: u32::try_from(pages).unwrap_or(u32::MAX),
        ranges: workers.min(pages) as u32,
    }))
}

impl Decision {
    /// The split copy, its new bookmark taken in the exported snapshot
    /// `client` is in (rows it cannot see are the ones a resume re-reads).
    pub fn start(self, client: &mut Client, p: &Prepared) -> Result<Split, SyncError> {
        match self {
            Decision::Resume(copy) => Ok(Split {
                copy,
                resumed: true,
            }),
            Decision::Fresh { pages, ranges } => {
                let (snapshot_xmax, snapshot_xip) = current_snapshot(client, &p.id)?;
                Ok(Split {
                    copy: SplitResume {
                        version: chrono::Utc::now().timestamp_millis(),
                        relfilenode: p.rel.relfilenode,
                        snapshot_xmax,
                        snapshot_xip,
                        ranges: bounds(pages, ranges),
                    },
                    resumed: false,
                })
            }
        }
    }
}

/// `n` ranges of about `pages / n` pages each, the last open-ended.
fn bounds(pages: u32, n: u32) -> Vec<CtidRange> {
    let lo = |i: u32| (u64::from(pages) * u64::from(i) / u64::from(n)) as u32;
    (0..n)
        .map(|i| CtidRange::new(lo(i), (i + 1 < n).then(|| lo(i + 1))))
        .collect()
}

/// Opens a split stream on stdout, before any of its rows: its SCHEMA, the
/// bookmark with every range, and ACTIVATE_VERSION on a first copy.
pub fn open<W: Write>(
    p: &Prepared,
    split: &Split,
    state: &mut State,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    let id = p.id.as_str();
    plan::write_schema(p, out)?;
    // As in an unsplit copy: only a first copy opens with ACTIVATE_VERSION.
    let first_copy = state.get(id, bookmarks::VERSION).is_none();
    bookmarks::set_split(state, id, &split.copy);
    state.set_currently_syncing(Some(id));
    out.write_state(&state.to_value())?;
    if first_copy {
        out.write_activate_version(&p.name, split.copy.version)?;
    }
    tracing::info!(
        stream = id,
        ranges = split.copy.ranges.len(),
        resumed = split.resumed,
        "sync started, in ctid ranges"
    );
    Ok(())
}

/// Takes range `index`'s bookmark from a worker's STATE into the run's, and
/// closes the stream once every range is done: ACTIVATE_VERSION, then the
/// finished bookmark. The STATE to write follows.
pub fn merge_range<W: Write>(
    state: &mut State,
    id: &str,
    name: &str,
    index: usize,
    worker: &serde_json::Value,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    let Some(range) = bookmarks::range_of(worker, id, index) else {
        return Ok(());
    };
    if !bookmarks::set_range(state, id, index, &range) {
        return Ok(());
    }
    let version = state
        .get(id, bookmarks::VERSION)
        .and_then(serde_json::Value::as_i64)
        .unwrap_or_default();
    bookmarks::finish_full_table(state, id, version);
    out.write_activate_version(name, version)?;
    if state.currently_syncing() == Some(id) {
        state.set_currently_syncing(None);
    }
    singer_core::progress::end_stream(&singer_core::progress::stream(id));
    Ok(())
}

/// Copies range `index` of a split stream (on a worker, in the snapshot):
/// a STATE with the range's bookmark every `state_interval` records, and one
/// marking it done at the end.
pub fn copy_range<W: Write>(
    client: &mut Client,
    p: &Prepared,
    split: &Split,
    index: usize,
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<u64, SyncError> {
    let id = p.id.as_str();
    let mut range = split.copy.ranges[index].clone();
    let ctx = StreamCtx::new(p, settings);
    let mut query = format!("SELECT {}", ctx.select_list());
    query.push_str(if p.columns.is_empty() {
        "ctid"
    } else {
        ", ctid"
    });
    query.push_str(&format!(" FROM {}", ctx.read_from()));
    let mut conditions: Vec<String> = p.row_filter.iter().cloned().collect();
    // Bounds the planner reads as a TID range scan (PostgreSQL 14+).
    conditions.push(format!("ctid >= '({},0)'::tid", range.lo));
    if let Some(hi) = range.hi {
        conditions.push(format!("ctid < '({hi},0)'::tid"));
    }
    if split.resumed {
        let unseen = unseen_by(split.copy.snapshot_xmax, &split.copy.snapshot_xip);
        conditions.push(if range.done {
            format!("({unseen})")
        } else {
            format!("(ctid > {}::tid OR {unseen})", quote_literal(&range.ctid))
        });
    }
    query.push_str(&where_clause(&conditions));
    tracing::debug!(stream = id, range = index, lo = range.lo, hi = ?range.hi, "reading a range");
    let copy = CopyQuery {
        sql: &query,
        version: Some(split.copy.version),
        with_position: true,
        key_index: None,
        final_checkpoint: false,
    };
    let count = in_ctid_order(client, id, p.row_filter.is_some(), |client| {
        emit_rows(client, &ctx, &copy, out, |tracker, out| {
            if !range.done {
                range.ctid.clear();
                range.ctid.push_str(&tracker.position);
            }
            bookmarks::set_range(state, id, index, &range);
            out.write_state(&state.to_value())?;
            Ok(())
        })
    })?;
    range.done = true;
    bookmarks::set_range(state, id, index, &range);
    out.write_state(&state.to_value())?;
    out.flush()?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_last_range_done_closes_the_stream() {
        let mut state = State::default();
        let copy = SplitResume {
            version: 5,
            relfilenode: 1,
            snapshot_xmax: 9,
            snapshot_xip: vec![],
            ranges: bounds(8, 2),
        };
        bookmarks::set_split(&mut state, "s", &copy);
        let mut worker = state.clone();
        let mut buf = Vec::new();
        let mut out = MessageWriter::new(&mut buf);
        // A range's progress, from a worker whose other range is stale.
        let first = CtidRange {
            ctid: "(2,7)".into(),
            ..copy.ranges[0].clone()
        };
        bookmarks::set_range(&mut worker, "s", 0, &first);
        merge_range(&mut state, "s", "s", 0, &worker.to_value(), &mut out).unwrap();
        assert_eq!(
            bookmarks::split_resume(&state, "s").unwrap().ranges[0],
            first
        );
        for i in [0, 1] {
            let done = CtidRange {
                done: true,
                ..copy.ranges[i].clone()
            };
            let mut worker = State::default();
            bookmarks::set_split(&mut worker, "s", &copy);
            bookmarks::set_range(&mut worker, "s", i, &done);
            merge_range(&mut state, "s", "s", i, &worker.to_value(), &mut out).unwrap();
        }
        out.flush().unwrap();
        drop(out);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "{\"type\":\"ACTIVATE_VERSION\",\"stream\":\"s\",\"version\":5}\n"
        );
        assert_eq!(
            state.to_value()["bookmarks"]["s"],
            json!({"version": 5, "last_replication_method": "FULL_TABLE"})
        );
    }

    #[test]
    fn ranges_cover_every_page_once() {
        let r = bounds(10, 3);
        let spans: Vec<(u32, Option<u32>)> = r.iter().map(|r| (r.lo, r.hi)).collect();
        assert_eq!(spans, [(0, Some(3)), (3, Some(6)), (6, None)]);
        assert_eq!(r[1].ctid, "(3,0)");
    }
}
