//! Singer metrics: `INFO METRIC: {"type":"counter","metric":"record_count","value":N,"tags":{...}}`
//! lines on stderr, as singer-python and the Meltano SDK print them.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

/// Renders one metric line (without the trailing newline).
pub fn metric_line(kind: &str, metric: &str, value: Value, tags: &Map<String, Value>) -> String {
    let body = json!({"type": kind, "metric": metric, "value": value, "tags": tags});
    format!("INFO METRIC: {body}")
}

fn emit(line: &str) {
    // Metrics are best effort: a closed stderr must not stop a sync.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A counter (e.g. `record_count`) that reports at most once per interval and
/// once more when finished.
pub struct Counter {
    metric: String,
    tags: Map<String, Value>,
    value: u64,
    reported: u64,
    last: Instant,
    interval: Duration,
}

impl Counter {
    pub fn new(metric: &str, tags: Map<String, Value>) -> Counter {
        Counter {
            metric: metric.to_owned(),
            tags,
            value: 0,
            reported: 0,
            last: Instant::now(),
            interval: Duration::from_secs(60),
        }
    }

    pub fn value(&self) -> u64 {
        self.value
    }

    /// Adds `n`; reports the count since the last report when the interval has passed.
    pub fn add(&mut self, n: u64) {
        self.value += n;
        // Checking the clock on every call is cheap next to encoding a row,
        // but skip it for the hot single-row path most of the time.
        if (self.value % 1024 < n || n > 1) && self.last.elapsed() >= self.interval {
            self.report();
        }
    }

    /// The line that [`Counter::report`] would print now.
    pub fn line(&self) -> String {
        metric_line(
            "counter",
            &self.metric,
            json!(self.value - self.reported),
            &self.tags,
        )
    }

    /// Prints the count since the last report.
    pub fn report(&mut self) {
        emit(&self.line());
        self.reported = self.value;
        self.last = Instant::now();
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        if self.value > self.reported {
            self.report();
        }
    }
}

/// Builds a tags map from pairs.
pub fn tags<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_line_has_singer_shape() {
        let mut c = Counter::new("record_count", tags([("endpoint", json!("public-users"))]));
        c.add(3);
        c.add(1);
        assert_eq!(
            c.line(),
            r#"INFO METRIC: {"type":"counter","metric":"record_count","value":4,"tags":{"endpoint":"public-users"}}"#
        );
        c.reported = c.value; // don't print from the test
    }
}
