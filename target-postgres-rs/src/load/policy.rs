//! Batch policy: how a stream's batch lands. Rows go straight into the table
//! when none can conflict with a row already there (append-only; a new, empty
//! table until a key repeats; or integer keys above the table's largest and
//! new to this run), else through a staging table merged at flush.

use std::collections::{BTreeMap, HashSet};

use pg_connect::quote_ident;
use postgres::Client;

use crate::stream::StreamShape;

/// Keys remembered per batch to tell whether it repeats one; past this the
/// batch is assumed to (memory stays bounded).
const MAX_TRACKED_KEYS: usize = 200_000;

/// Integer keys as disjoint ranges (`start -> end`, inclusive): a handful of
/// entries for serial keys however many rows, so memory stays flat.
#[derive(Debug, Default)]
pub(super) struct KeyRanges {
    ranges: BTreeMap<i64, i64>,
}

impl KeyRanges {
    /// Past this many ranges (checked between batches) the keys are too
    /// scattered to track, and the stream's batches are staged.
    const MAX_RANGES: usize = 50_000;

    /// Adds `k`; `false` when it was there already.
    fn insert(&mut self, k: i64) -> bool {
        let before = self.ranges.range(..=k).next_back().map(|(s, e)| (*s, *e));
        if before.is_some_and(|(_, e)| k <= e) {
            return false;
        }
        let joins_before = before
            .filter(|(_, e)| e.checked_add(1) == Some(k))
            .map(|(s, _)| s);
        let after = k
            .checked_add(1)
            .and_then(|n| self.ranges.get(&n).map(|e| (n, *e)));
        match (joins_before, after) {
            (Some(s), Some((n, e))) => {
                self.ranges.remove(&n);
                self.ranges.insert(s, e);
            }
            (Some(s), None) => {
                self.ranges.insert(s, k);
            }
            (None, Some((n, e))) => {
                self.ranges.remove(&n);
                self.ranges.insert(k, e);
            }
            (None, None) => {
                self.ranges.insert(k, k);
            }
        }
        true
    }

    fn too_big(&self) -> bool {
        self.ranges.len() > Self::MAX_RANGES
    }
}

/// The single integer key of a row's key buffer (the key's JSON text, NUL-terminated).
fn integer_of(key: &[u8]) -> Option<i64> {
    let k = key.split(|&b| b == 0).next()?;
    std::str::from_utf8(k).ok()?.parse().ok()
}

/// What this run knows of a stream's keys, across its batches.
#[derive(Debug)]
pub(super) enum Keying {
    /// Nothing can conflict: append-only, or a stream without key properties.
    Append,
    /// Keys judged per batch.
    Keys,
    /// A single integer key column (`shape.keys[0]`) with a unique index on it.
    Integer(RunKeys),
}

/// The keys a single-integer-key stream has loaded in this run.
#[derive(Debug)]
pub(super) enum RunKeys {
    /// Not looked at yet (or the table was just emptied).
    Unknown,
    /// `floor`: the table's largest key when this run first wrote to it;
    /// every row at or below it may exist already. `loaded`: keys this run
    /// has loaded, directly or through staging.
    Tracked { floor: i64, loaded: KeyRanges },
    /// Too scattered to track compactly: batches are judged as for [`Keying::Keys`].
    Untracked,
}

/// How the current batch lands, decided at its first record.
#[derive(Debug)]
pub(super) enum BatchPolicy {
    /// No record of this batch yet; the table is untouched.
    Undecided,
    /// Straight into the table: nothing can conflict.
    Append,
    /// Straight into the table while each key is above the floor and new to
    /// this run (see [`RunKeys::Tracked`]), so it can't conflict.
    FreshIntegerKeys,
    /// Straight into a new, empty table with a unique index on the keys,
    /// while no key repeats (the keys so far, all distinct).
    UntilRepeat(HashSet<Box<[u8]>>),
    /// Through the staging table, which exists in the open transaction;
    /// merged into the table at flush.
    Staged(BatchKeys),
}

/// The keys of a staged batch, to tell whether the merge must pick one row per key.
#[derive(Debug)]
pub(super) enum BatchKeys {
    /// All distinct so far.
    Distinct(HashSet<Box<[u8]>>),
    /// A key repeated, or too many to track (then assumed to).
    Repeated,
}

/// A row's place in the batch, judged by its key.
pub(super) enum Verdict {
    /// Into this COPY.
    Copy,
    /// This row and the rest of the batch go through staging, with these keys.
    Stage(BatchKeys),
}

/// A stream's pending batch.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) policy: BatchPolicy,
    /// Rows copied (straight in or staged).
    pub(super) rows: usize,
    /// Some row has `_sdc_deleted_at` set.
    pub(super) deletes: bool,
}

impl Batch {
    pub(super) fn new() -> Batch {
        Batch {
            policy: BatchPolicy::Undecided,
            rows: 0,
            deletes: false,
        }
    }

    /// The batch has touched the table (rows copied or staged).
    pub(super) fn pending(&self) -> bool {
        !matches!(self.policy, BatchPolicy::Undecided)
    }

    pub(super) fn staged(&self) -> bool {
        matches!(self.policy, BatchPolicy::Staged(_))
    }

    /// The staged rows may repeat a key (the merge then keeps the last).
    pub(super) fn repeats(&self) -> bool {
        matches!(self.policy, BatchPolicy::Staged(BatchKeys::Repeated))
    }
}

/// What [`Keying::decide`] chose.
pub(super) enum Decision {
    /// Rows go straight into the table.
    Direct(BatchPolicy),
    /// Rows go through staging (the caller creates the staging table).
    Stage(BatchKeys),
}

impl Keying {
    /// How a stream's keys are judged: `upserts` when records replace rows by key.
    pub(super) fn new(shape: &StreamShape, upserts: bool, integer_key: bool) -> Keying {
        if !upserts || shape.keys.is_empty() {
            Keying::Append
        } else if integer_key {
            Keying::Integer(RunKeys::Unknown)
        } else {
            Keying::Keys
        }
    }

    /// Whether [`Keying::decide`] reads the table to judge that rows can go
    /// straight in (its emptiness or its largest key).
    pub(super) fn judges_table(&self, empty: bool, unique_on_keys: bool) -> bool {
        match self {
            Keying::Append => false,
            Keying::Keys => empty && unique_on_keys,
            Keying::Integer(RunKeys::Unknown) => true,
            Keying::Integer(_) => empty && unique_on_keys,
        }
    }

    /// Decides, at a batch's first record, whether its rows go straight into
    /// the table (`empty` and `unique_on_keys` describe the table now).
    pub(super) fn decide(
        &mut self,
        client: &mut Client,
        shape: &StreamShape,
        empty: bool,
        unique_on_keys: bool,
    ) -> Result<Decision, postgres::Error> {
        match self {
            Keying::Append => return Ok(Decision::Direct(BatchPolicy::Append)),
            Keying::Keys => {}
            Keying::Integer(run) => {
                if let RunKeys::Unknown = run {
                    let max: Option<i64> = client
                        .query_one(
                            &format!(
                                "SELECT max({})::bigint FROM {}",
                                quote_ident(&shape.columns[shape.keys[0]].name),
                                shape.table.qualified()
                            ),
                            &[],
                        )?
                        .get(0);
                    *run = RunKeys::Tracked {
                        floor: max.unwrap_or(i64::MIN),
                        loaded: KeyRanges::default(),
                    };
                }
                // Judged between batches only: within one, the ranges grow by at
                // most the batch size, and a row accepted directly stays accepted.
                if let RunKeys::Tracked { loaded, .. } = run {
                    if loaded.too_big() {
                        *run = RunKeys::Untracked;
                    } else {
                        return Ok(Decision::Direct(BatchPolicy::FreshIntegerKeys));
                    }
                }
            }
        }
        Ok(if empty && unique_on_keys {
            Decision::Direct(BatchPolicy::UntilRepeat(HashSet::new()))
        } else {
            Decision::Stage(BatchKeys::Distinct(HashSet::new()))
        })
    }

    fn tracks_run_keys(&self) -> bool {
        matches!(self, Keying::Integer(RunKeys::Tracked { .. }))
    }

    /// Whether rows need their key written out for [`Keying::admit`].
    pub(super) fn wants_key(&self, policy: &BatchPolicy) -> bool {
        self.tracks_run_keys()
            || matches!(
                policy,
                BatchPolicy::UntilRepeat(_) | BatchPolicy::Staged(BatchKeys::Distinct(_))
            )
    }

    /// Judges one row of the batch by its key (`key`: the row's key buffer,
    /// filled when [`Keying::wants_key`]).
    pub(super) fn admit(&mut self, policy: &mut BatchPolicy, key: &[u8]) -> Verdict {
        let int_key = if self.tracks_run_keys() {
            integer_of(key)
        } else {
            None
        };
        if let BatchPolicy::FreshIntegerKeys = policy {
            let fresh = match (int_key, self) {
                (Some(k), Keying::Integer(RunKeys::Tracked { floor, loaded })) if k > *floor => {
                    loaded.insert(k)
                }
                _ => false,
            };
            // Else a key that may exist already (or repeats in this run):
            // this row and the rest of the batch go through staging.
            return if fresh {
                Verdict::Copy
            } else {
                Verdict::Stage(BatchKeys::Distinct(HashSet::new()))
            };
        }
        if let (Some(k), Keying::Integer(RunKeys::Tracked { loaded, .. })) = (int_key, self) {
            // Staged keys count too: a later batch must not copy them directly.
            let new_to_run = loaded.insert(k);
            if let BatchPolicy::Staged(keys) = policy {
                // A key new to this run is new to the batch: no set of keys
                // needed. One seen before may repeat in the batch (or came in
                // an earlier one): the merge then picks the last per key.
                if !new_to_run {
                    *keys = BatchKeys::Repeated;
                }
                return Verdict::Copy;
            }
        }
        match policy {
            BatchPolicy::UntilRepeat(seen) => {
                if !distinct(seen, key) {
                    // The table can't take a repeated key directly: this row
                    // and the rest of the batch go through staging.
                    return Verdict::Stage(BatchKeys::Repeated);
                }
            }
            BatchPolicy::Staged(keys) => {
                if let BatchKeys::Distinct(seen) = keys {
                    if !distinct(seen, key) {
                        *keys = BatchKeys::Repeated;
                    }
                }
            }
            BatchPolicy::Undecided | BatchPolicy::Append | BatchPolicy::FreshIntegerKeys => {}
        }
        Verdict::Copy
    }
}

/// Adds `key`; `false` when it was there already or the set got too big.
fn distinct(seen: &mut HashSet<Box<[u8]>>, key: &[u8]) -> bool {
    if seen.contains(key) {
        return false;
    }
    seen.insert(key.into());
    seen.len() <= MAX_TRACKED_KEYS
}

#[cfg(test)]
mod tests {
    use super::{integer_of, KeyRanges};

    #[test]
    fn ranges_merge_and_detect_repeats() {
        let mut r = KeyRanges::default();
        for k in [5, 7, 6, 1, 3, 2, 4, i64::MAX, i64::MIN] {
            assert!(r.insert(k), "{k}");
        }
        assert_eq!(
            r.ranges.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
            vec![(i64::MIN, i64::MIN), (1, 7), (i64::MAX, i64::MAX)]
        );
        for k in [1, 4, 7, i64::MAX, i64::MIN] {
            assert!(!r.insert(k), "{k} repeats");
        }
        assert!(r.insert(8));
        assert_eq!(r.ranges.len(), 3);
        assert!(!r.too_big());
    }

    #[test]
    fn integer_keys_from_the_key_buffer() {
        assert_eq!(integer_of(b"42\0"), Some(42));
        assert_eq!(integer_of(b"-7\0"), Some(-7));
        assert_eq!(integer_of(b"\"a\"\0"), None);
        assert_eq!(integer_of(b"1.5\0"), None);
    }
}
