//! Progress a person can watch during long runs: per stream, at a steady
//! interval, the rows so far, the rate and the elapsed time, then a summary
//! per stream and a total at the end. Info-level log lines through `tracing`
//! (so `--log-format json` structures them); the Singer `INFO METRIC` lines
//! stay as they are, for orchestrators.
//!
//! Counting is an atomic add on a handle the hot loop owns; a background
//! thread reads the counts and logs, so no row pays for a clock read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Seconds between progress lines; a knob for tests, not a setting.
pub const INTERVAL_ENV: &str = "SINGER_PG_RS_PROGRESS_SECONDS";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The counts of one stream, shared by the code that moves its rows and the
/// reporting thread.
#[derive(Debug)]
struct Tally {
    started: Instant,
    /// Rows extracted (tap) or committed (target).
    rows: AtomicU64,
    /// Batches committed (target only).
    batches: AtomicU64,
    /// Rows deleted or marked deleted (target only).
    deleted: AtomicU64,
    /// When the stream ended (its summary was logged), as seconds since start.
    ended: Mutex<Option<f64>>,
    /// Rows at the last progress line: an unchanged stream is not repeated.
    reported: AtomicU64,
}

/// A handle on one stream's counts. Cheap to clone; adding is one atomic add.
#[derive(Clone, Debug)]
pub struct StreamProgress {
    name: Arc<str>,
    tally: Arc<Tally>,
}

impl StreamProgress {
    /// Counts `n` more rows.
    pub fn rows(&self, n: u64) {
        self.tally.rows.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one committed batch of `rows` rows (target).
    pub fn batch(&self, rows: u64) {
        self.tally.batches.fetch_add(1, Ordering::Relaxed);
        self.rows(rows);
    }

    /// Counts rows deleted or marked deleted (target).
    pub fn deleted(&self, n: u64) {
        self.tally.deleted.fetch_add(n, Ordering::Relaxed);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Rows so far and seconds since the stream started.
    pub fn totals(&self) -> (u64, f64) {
        (
            self.tally.rows.load(Ordering::Relaxed),
            self.tally.started.elapsed().as_secs_f64(),
        )
    }
}

/// What the rows of a run are: `extracted` (tap) or `committed` (target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Tap,
    Target,
}

struct Reporter {
    role: Role,
    started: Instant,
    interval: Duration,
    streams: Mutex<BTreeMap<String, StreamProgress>>,
}

static REPORTER: OnceLock<Reporter> = OnceLock::new();

/// The interval from [`INTERVAL_ENV`] (fractional seconds), else 10 s.
fn interval() -> Duration {
    std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(DEFAULT_INTERVAL, Duration::from_secs_f64)
}

/// Starts progress reporting for this process (once; later calls are no-ops).
pub fn start(role: Role) {
    let mut first = false;
    let reporter = REPORTER.get_or_init(|| {
        first = true;
        Reporter {
            role,
            started: Instant::now(),
            interval: interval(),
            streams: Mutex::new(BTreeMap::new()),
        }
    });
    if first {
        let every = reporter.interval;
        // A detached thread: it dies with the process, and logs nothing once
        // every stream has ended.
        let _ = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                reporter.tick();
            });
    }
}

/// The handle for `stream` (created on first use, also when [`start`] was not
/// called: then nothing is logged at intervals).
pub fn stream(name: &str) -> StreamProgress {
    let Some(reporter) = REPORTER.get() else {
        return StreamProgress {
            name: name.into(),
            tally: Arc::new(Tally::new()),
        };
    };
    let mut streams = reporter.streams.lock().unwrap_or_else(|p| p.into_inner());
    streams
        .entry(name.to_owned())
        .or_insert_with(|| StreamProgress {
            name: name.into(),
            tally: Arc::new(Tally::new()),
        })
        .clone()
}

impl Tally {
    fn new() -> Tally {
        Tally {
            started: Instant::now(),
            rows: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            ended: Mutex::new(None),
            reported: AtomicU64::new(0),
        }
    }
}

fn rate(rows: u64, secs: f64) -> u64 {
    if secs > 0.0 {
        (rows as f64 / secs) as u64
    } else {
        0
    }
}

/// Seconds rounded to a tenth, for log fields.
fn tenths(secs: f64) -> f64 {
    (secs * 10.0).round() / 10.0
}

impl Reporter {
    /// One line per stream that moved since the last line, and the total.
    fn tick(&self) {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let mut moved = false;
        for s in streams.values() {
            let t = &s.tally;
            if t.ended.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                continue;
            }
            let rows = t.rows.load(Ordering::Relaxed);
            if rows == t.reported.swap(rows, Ordering::Relaxed) {
                continue;
            }
            moved = true;
            let secs = t.started.elapsed().as_secs_f64();
            let (elapsed_s, rows_per_s) = (tenths(secs), rate(rows, secs));
            match self.role {
                Role::Tap => {
                    tracing::info!(stream = %s.name, rows, rows_per_s, elapsed_s, "progress")
                }
                Role::Target => {
                    let batches = t.batches.load(Ordering::Relaxed);
                    tracing::info!(stream = %s.name, rows_committed = rows, batches, rows_per_s, elapsed_s, "progress")
                }
            }
        }
        if moved {
            let rows: u64 = streams.values().map(|s| s.totals().0).sum();
            let secs = self.started.elapsed().as_secs_f64();
            let (elapsed_s, rows_per_s) = (tenths(secs), rate(rows, secs));
            tracing::info!(
                streams = streams.len(),
                rows,
                rows_per_s,
                elapsed_s,
                "progress total"
            );
        }
    }
}

/// Logs a stream's summary (once) and stops its interval lines.
pub fn end_stream(s: &StreamProgress) {
    let t = &s.tally;
    let secs = t.started.elapsed().as_secs_f64();
    {
        let mut ended = t.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.is_some() {
            return;
        }
        *ended = Some(secs);
    }
    let rows = t.rows.load(Ordering::Relaxed);
    let (seconds, rows_per_s) = (tenths(secs), rate(rows, secs));
    match REPORTER.get().map_or(Role::Tap, |r| r.role) {
        Role::Tap => tracing::info!(stream = %s.name, rows, rows_per_s, seconds, "sync finished"),
        Role::Target => {
            let (batches, deleted) = (
                t.batches.load(Ordering::Relaxed),
                t.deleted.load(Ordering::Relaxed),
            );
            tracing::info!(stream = %s.name, rows_loaded = rows, rows_deleted = deleted, batches, rows_per_s, seconds, "stream summary")
        }
    }
}

/// Logs the summary of every stream not ended yet, then the run's total.
pub fn finish() {
    let Some(reporter) = REPORTER.get() else {
        return;
    };
    let streams: Vec<StreamProgress> = reporter
        .streams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    for s in &streams {
        end_stream(s);
    }
    let rows: u64 = streams.iter().map(|s| s.totals().0).sum();
    let secs = reporter.started.elapsed().as_secs_f64();
    let (seconds, rows_per_s) = (tenths(secs), rate(rows, secs));
    tracing::info!(
        streams = streams.len(),
        rows,
        rows_per_s,
        seconds,
        "run summary"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_tenths() {
        assert_eq!(rate(1000, 0.5), 2000);
        assert_eq!(rate(5, 0.0), 0);
        assert_eq!(tenths(12.345), 12.3);
    }

    #[test]
    fn a_handle_without_a_reporter_still_counts() {
        let s = stream("public-t");
        s.rows(3);
        s.batch(2);
        assert_eq!(s.totals().0, 5);
        assert_eq!(s.tally.batches.load(Ordering::Relaxed), 1);
    }
}
