//! The tap's bookmarks, in the pipelinewise/singer-io shape:
//! `{"currently_syncing": id, "bookmarks": {id: {"version", "replication_key",
//! "replication_key_value", "lsn", "last_replication_method", ...}}}`.
//!
//! FULL_TABLE resumption adds `ctid` (last row read), `relfilenode` (the heap
//! file those ctids belong to), and the first run's snapshot as
//! `snapshot_xmax` and `snapshot_xip` (32-bit xids): row versions written by
//! transactions that snapshot could not see are re-read on resume, wherever
//! an UPDATE moved them.

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
    /// The first run's snapshot: xids from `snapshot_xmax` on, and those in
    /// `snapshot_xip` (in progress then), were invisible to it.
    pub snapshot_xmax: u32,
    pub snapshot_xip: Vec<u32>,
}

/// A resumable FULL_TABLE bookmark, when the state holds a complete one.
pub fn full_table_resume(state: &State, stream: &str) -> Option<FullTableResume> {
    let ctid = state.get(stream, CTID)?.as_str()?;
    // Only `(digits,digits)` is used in SQL, so nothing else can reach it.
    let inner = ctid.strip_prefix('(')?.strip_suffix(')')?;
    let (page, item) = inner.split_once(',')?;
    page.parse::<u32>().ok()?;
    item.parse::<u16>().ok()?;
    Some(FullTableResume {
        version: state.get(stream, VERSION)?.as_i64()?,
        ctid: ctid.to_owned(),
        relfilenode: u32::try_from(state.get(stream, RELFILENODE)?.as_u64()?).ok()?,
        snapshot_xmax: u32::try_from(state.get(stream, SNAPSHOT_XMAX)?.as_u64()?).ok()?,
        snapshot_xip: state
            .get(stream, SNAPSHOT_XIP)?
            .as_array()?
            .iter()
            .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect::<Option<Vec<u32>>>()?,
    })
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
    for key in [CTID, RELFILENODE, SNAPSHOT_XMAX, SNAPSHOT_XIP] {
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
