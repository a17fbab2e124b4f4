//! The tap's bookmarks, in the pipelinewise/singer-io shape:
//! `{"currently_syncing": id, "bookmarks": {id: {"version", "replication_key",
//! "replication_key_value", "lsn", "last_replication_method", ...}}}`.
//!
//! FULL_TABLE resumption adds `ctid` (last row read), `relfilenode` (the heap
//! file those ctids belong to), and as `snapshot_xmax` and `snapshot_xip`
//! (32-bit xids) the snapshot of the run that read up to `ctid` (the first
//! run's, or that of a resumed run once it read past the bookmark it
//! started from): row versions written by transactions that snapshot could
//! not see are re-read on resume, wherever an INSERT or UPDATE put them. The resume reads every xid from the
//! snapshot's xmin (the oldest `snapshot_xip`, else `snapshot_xmax`) on,
//! because `snapshot_xip` lists no subtransactions (SAVEPOINTs) of the
//! transactions in it.
//!
//! A FULL_TABLE copy split into ctid ranges ([`crate::split`]) keeps the
//! same `version`, `relfilenode` and snapshot keys, and instead of `ctid`
//! one bookmark per range: `ranges: [{"lo", "hi", "ctid", "done"}]`.

use serde_json::{json, Value};
use singer_core::State;

pub const VERSION: &str = "version";
pub const REPLICATION_KEY: &str = "replication_key";
pub const REPLICATION_KEY_VALUE: &str = "replication_key_value";
pub const LAST_METHOD: &str = "last_replication_method";
pub const CTID: &str = "ctid";
pub const RELFILENODE: &str = "relfilenode";
pub const SNAPSHOT_XMAX: &str = "snapshot_xmax";
pub const SNAPSHOT_XIP: &str = "snapshot_xip";
/// A split FULL_TABLE copy's ranges, each with its own bookmark.
pub const RANGES: &str = "ranges";
/// LOG_BASED: changes committed before this LSN are in the destination
/// (pipelinewise-compatible `lsn`).
pub const LSN: &str = "lsn";
/// LOG_BASED: the LSN read before an initial copy that has not finished yet.
pub const INITIAL_COPY_LSN: &str = "initial_copy_lsn";

/// Where an interrupted FULL_TABLE sync stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullTableResume {
    pub version: i64,
    /// `(page,item)` of the last row emitted.
    pub ctid: String,
    pub relfilenode: u32,
    /// The snapshot rows up to `ctid` were read in: xids from `snapshot_xmax` on, those in
    /// `snapshot_xip` (in progress then) and their subtransactions' (not
    /// listed, but newer than their parents) were invisible to it.
    pub snapshot_xmax: u32,
    pub snapshot_xip: Vec<u32>,
}

/// A resumable FULL_TABLE bookmark, when the state holds a complete one.
pub fn full_table_resume(state: &State, stream: &str) -> Option<FullTableResume> {
    let ctid = state.get(stream, CTID)?.as_str()?;
    parse_ctid(ctid)?;
    let (version, relfilenode, snapshot_xmax, snapshot_xip) = copy_snapshot(state, stream)?;
    Some(FullTableResume {
        version,
        ctid: ctid.to_owned(),
        relfilenode,
        snapshot_xmax,
        snapshot_xip,
    })
}

/// `(page, item)` of a `(digits,digits)` ctid: only that shape is used in
/// SQL, so nothing else can reach it.
pub(crate) fn parse_ctid(ctid: &str) -> Option<(u32, u16)> {
    let inner = ctid.strip_prefix('(')?.strip_suffix(')')?;
    let (page, item) = inner.split_once(',')?;
    Some((page.parse().ok()?, item.parse().ok()?))
}

/// An unfinished copy's version, heap file and first snapshot.
fn copy_snapshot(state: &State, stream: &str) -> Option<(i64, u32, u32, Vec<u32>)> {
    Some((
        state.get(stream, VERSION)?.as_i64()?,
        u32::try_from(state.get(stream, RELFILENODE)?.as_u64()?).ok()?,
        u32::try_from(state.get(stream, SNAPSHOT_XMAX)?.as_u64()?).ok()?,
        state
            .get(stream, SNAPSHOT_XIP)?
            .as_array()?
            .iter()
            .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect::<Option<Vec<u32>>>()?,
    ))
}

/// One page range of a split copy: pages `lo` up to (not including) `hi`,
/// the last range open-ended; `ctid` is the last row sent (`(lo,0)` before
/// the first: no row has item 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtidRange {
    pub lo: u32,
    pub hi: Option<u32>,
    pub ctid: String,
    pub done: bool,
}

impl CtidRange {
    pub fn new(lo: u32, hi: Option<u32>) -> CtidRange {
        CtidRange {
            lo,
            hi,
            ctid: format!("({lo},0)"),
            done: false,
        }
    }

    pub fn to_value(&self) -> Value {
        json!({"lo": self.lo, "hi": self.hi, "ctid": self.ctid, "done": self.done})
    }

    fn from_value(v: &Value) -> Option<CtidRange> {
        let ctid = v.get("ctid")?.as_str()?;
        parse_ctid(ctid)?;
        let hi = match v.get("hi")? {
            Value::Null => None,
            h => Some(u32::try_from(h.as_u64()?).ok()?),
        };
        Some(CtidRange {
            lo: u32::try_from(v.get("lo")?.as_u64()?).ok()?,
            hi,
            ctid: ctid.to_owned(),
            done: v.get("done")?.as_bool()?,
        })
    }
}

/// Where an interrupted split FULL_TABLE copy stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitResume {
    pub version: i64,
    pub relfilenode: u32,
    pub snapshot_xmax: u32,
    pub snapshot_xip: Vec<u32>,
    pub ranges: Vec<CtidRange>,
}

/// A resumable split bookmark, when the state holds a complete one.
pub fn split_resume(state: &State, stream: &str) -> Option<SplitResume> {
    let (version, relfilenode, snapshot_xmax, snapshot_xip) = copy_snapshot(state, stream)?;
    let ranges = state
        .get(stream, RANGES)?
        .as_array()?
        .iter()
        .map(CtidRange::from_value)
        .collect::<Option<Vec<_>>>()?;
    // The ranges must still cover the whole table, one after another.
    let covered = ranges.first().is_some_and(|r| r.lo == 0)
        && ranges.last().is_some_and(|r| r.hi.is_none())
        && ranges.windows(2).all(|w| w[0].hi == Some(w[1].lo));
    covered.then_some(SplitResume {
        version,
        relfilenode,
        snapshot_xmax,
        snapshot_xip,
        ranges,
    })
}

/// Records a split copy's start (or its resumption).
pub fn set_split(state: &mut State, stream: &str, s: &SplitResume) {
    state.remove(stream, CTID);
    state.set(stream, VERSION, json!(s.version));
    state.set(stream, RELFILENODE, json!(s.relfilenode));
    state.set(stream, SNAPSHOT_XMAX, json!(s.snapshot_xmax));
    state.set(stream, SNAPSHOT_XIP, json!(s.snapshot_xip));
    let ranges: Vec<Value> = s.ranges.iter().map(CtidRange::to_value).collect();
    state.set(stream, RANGES, Value::Array(ranges));
    state.set(stream, LAST_METHOD, json!("FULL_TABLE"));
}

/// Records one range's progress; returns whether every range is done.
/// Does nothing when the state holds no such range.
pub fn set_range(state: &mut State, stream: &str, index: usize, range: &CtidRange) -> bool {
    let Some(Value::Array(mut ranges)) = state.remove(stream, RANGES) else {
        return false;
    };
    if let Some(slot) = ranges.get_mut(index) {
        *slot = range.to_value();
    }
    let all_done = ranges.iter().all(|r| r["done"] == json!(true));
    state.set(stream, RANGES, Value::Array(ranges));
    all_done
}

/// One range of a split bookmark, as a worker's view of the state holds it.
pub fn range_of(state: &Value, stream: &str, index: usize) -> Option<CtidRange> {
    CtidRange::from_value(&state["bookmarks"][stream][RANGES][index])
}

/// Records FULL_TABLE progress.
pub fn set_full_table_progress(state: &mut State, stream: &str, r: &FullTableResume) {
    state.set(stream, VERSION, json!(r.version));
    state.set(stream, CTID, json!(r.ctid));
    state.set(stream, RELFILENODE, json!(r.relfilenode));
    state.set(stream, SNAPSHOT_XMAX, json!(r.snapshot_xmax));
    state.set(stream, SNAPSHOT_XIP, json!(r.snapshot_xip));
    state.set(stream, LAST_METHOD, json!("FULL_TABLE"));
}

/// A FULL_TABLE sync finished: the version stays, the resume point goes.
pub fn finish_full_table(state: &mut State, stream: &str, version: i64) {
    for key in [CTID, RELFILENODE, SNAPSHOT_XMAX, SNAPSHOT_XIP, RANGES] {
        state.remove(stream, key);
    }
    state.set(stream, VERSION, json!(version));
    state.set(stream, LAST_METHOD, json!("FULL_TABLE"));
}

/// The INCREMENTAL bookmark value, if it was taken on this replication key.
pub fn incremental_bookmark<'a>(state: &'a State, stream: &str, key: &str) -> Option<&'a Value> {
    let same_key = state
        .get(stream, REPLICATION_KEY)
        .and_then(Value::as_str)
        .is_none_or(|k| k == key);
    state
        .get(stream, REPLICATION_KEY_VALUE)
        .filter(|v| same_key && !v.is_null())
}

pub fn set_incremental(state: &mut State, stream: &str, key: &str, value: Value) {
    state.set(stream, REPLICATION_KEY, json!(key));
    state.set(stream, REPLICATION_KEY_VALUE, value);
    state.set(stream, LAST_METHOD, json!("INCREMENTAL"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_table_round_trip_and_garbage() {
        let mut s = State::default();
        let r = FullTableResume {
            version: 17,
            ctid: "(12,3)".into(),
            relfilenode: 16384,
            snapshot_xmax: 750,
            snapshot_xip: vec![745, 748],
        };
        set_full_table_progress(&mut s, "public-t", &r);
        assert_eq!(full_table_resume(&s, "public-t"), Some(r));
        s.set("public-t", CTID, json!("(1,1); DROP TABLE x"));
        assert_eq!(full_table_resume(&s, "public-t"), None);
        finish_full_table(&mut s, "public-t", 17);
        assert_eq!(
            s.bookmark("public-t").unwrap(),
            json!({"version": 17, "last_replication_method": "FULL_TABLE"})
                .as_object()
                .unwrap()
        );
    }

    #[test]
    fn split_round_trip_and_gaps() {
        let mut s = State::default();
        let mut r = SplitResume {
            version: 17,
            relfilenode: 16384,
            snapshot_xmax: 750,
            snapshot_xip: vec![745],
            ranges: vec![CtidRange::new(0, Some(10)), CtidRange::new(10, None)],
        };
        set_split(&mut s, "t", &r);
        assert_eq!(split_resume(&s, "t"), Some(r.clone()));
        assert_eq!(full_table_resume(&s, "t"), None);
        let first = CtidRange {
            ctid: "(9,4)".into(),
            done: true,
            ..CtidRange::new(0, Some(10))
        };
        assert!(!set_range(&mut s, "t", 0, &first));
        r.ranges[0] = first;
        assert_eq!(split_resume(&s, "t"), Some(r.clone()));
        assert!(set_range(
            &mut s,
            "t",
            1,
            &CtidRange {
                done: true,
                ..CtidRange::new(10, None)
            }
        ));
        // A gap between ranges is not a bookmark to resume from.
        r.ranges[1].lo = 11;
        set_split(&mut s, "t", &r);
        assert_eq!(split_resume(&s, "t"), None);
        finish_full_table(&mut s, "t", 17);
        assert_eq!(s.get("t", RANGES), None);
    }

    #[test]
    fn incremental_ignores_other_keys() {
        let mut s = State::default();
        set_incremental(&mut s, "a", "updated_at", json!("2024-01-01"));
        assert_eq!(
            incremental_bookmark(&s, "a", "updated_at"),
            Some(&json!("2024-01-01"))
        );
        assert_eq!(incremental_bookmark(&s, "a", "id"), None);
    }
}
