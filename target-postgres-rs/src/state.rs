//! STATE values go to stdout only after everything received before them is
//! committed: one complete value per line, never `{}`, never the wrapper.

use std::io::Write;

use serde_json::Value;
use singer_core::WriteError;

/// Tracks the newest STATE value and writes it after each commit.
pub struct StateOut<W: Write> {
    out: W,
    latest: Option<Value>,
    emitted: Option<Value>,
}

impl<W: Write> StateOut<W> {
    pub fn new(out: W) -> Self {
        StateOut {
            out,
            latest: None,
            emitted: None,
        }
    }

    /// A STATE message arrived (not yet safe to emit).
    pub fn received(&mut self, value: Value) {
        let empty = match &value {
            Value::Null => true,
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !empty {
            self.latest = Some(value);
        }
    }

    /// Everything received so far is committed: emit the newest value, once.
    pub fn committed(&mut self) -> Result<(), WriteError> {
        self.committed_up_to(self.latest.clone())
    }

    /// The newest value received so far, for [`StateOut::committed_up_to`]
    /// once what came before it is committed.
    pub fn newest(&self) -> Option<Value> {
        self.latest.clone()
    }

    /// Everything received before `newest` (from [`StateOut::newest`]) is
    /// committed: emit it, once.
    pub fn committed_up_to(&mut self, newest: Option<Value>) -> Result<(), WriteError> {
        if let Some(v) = newest.filter(|v| self.emitted.as_ref() != Some(v)) {
            serde_json::to_writer(&mut self.out, &v).map_err(std::io::Error::from)?;
            self.out.write_all(b"\n")?;
            // Orchestrators store each line as it comes.
            self.out.flush()?;
            self.emitted = Some(v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn emits_newest_once_and_never_empty() {
        let mut buf = Vec::new();
        {
            let mut s = StateOut::new(&mut buf);
            s.committed().unwrap();
            s.received(json!({"a": 1}));
            s.received(json!({"a": 2}));
            s.received(json!({}));
            s.committed().unwrap();
            s.committed().unwrap();
            s.received(json!({"a": 3}));
            s.committed().unwrap();
        }
        assert_eq!(String::from_utf8(buf).unwrap(), "{\"a\":2}\n{\"a\":3}\n");
    }
}
