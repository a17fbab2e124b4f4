//! A flush's server work (merges, hard deletes, NOTIFY, COMMIT), run on the
//! loader's connection, or behind: on its own thread while the next batch
//! streams into a second connection, so that the tap and the target keep
//! working while the server merges. STATE is still written only after the
//! COMMIT (of the value newest when the flush began), and each flush is still
//! one transaction: the next batch only stages meanwhile and merges after it.

use std::thread::JoinHandle;

use postgres::Client;
use serde_json::Value;

use super::error::{session, LoadError};
use crate::naming::TableName;

/// One statement of a flush, and what a failure names.
pub(super) struct Step {
    pub stream: String,
    pub table: TableName,
    pub what: &'static str,
    pub sql: String,
}

/// Everything a flush sends, then COMMIT.
pub(super) struct Job {
    pub steps: Vec<Step>,
    /// `pg_notify(channel, payload)`.
    pub notify: Option<(String, String)>,
    /// Streams and the rows they committed (progress, after the COMMIT).
    pub committed: Vec<(String, u64)>,
    /// Some step merges staged rows: worth running behind.
    pub merges: bool,
}

impl Job {
    pub(super) fn run(&self, client: &mut Client, in_tx: bool) -> Result<(), LoadError> {
        for step in &self.steps {
            let started = std::time::Instant::now();
            client
                .batch_execute(&step.sql)
                .map_err(|e| super::error::db_err(&step.stream, &step.table, step.what, &e))?;
            tracing::debug!(stream = %step.stream, table = %step.table.qualified(), step = step.what,
                ms = started.elapsed().as_millis() as u64, "flush step");
        }
        if let Some((channel, payload)) = &self.notify {
            client
                .execute("SELECT pg_notify($1, $2)", &[channel, payload])
                .map_err(session("NOTIFY"))?;
        }
        if in_tx {
            client.batch_execute("COMMIT").map_err(session("COMMIT"))?;
        }
        Ok(())
    }
}

/// A flush committing behind the loader.
pub(super) struct Behind {
    handle: JoinHandle<(Client, Result<(), LoadError>)>,
    committed: Vec<(String, u64)>,
    /// The STATE value to emit once it has committed.
    state: Option<Value>,
}

impl Behind {
    /// Runs `job` (in the open transaction of `client`) on its own thread.
    pub(super) fn start(mut client: Client, mut job: Job, state: Option<Value>) -> Behind {
        let committed = std::mem::take(&mut job.committed);
        let handle = std::thread::spawn(move || {
            let r = job.run(&mut client, true);
            (client, r)
        });
        Behind {
            handle,
            committed,
            state,
        }
    }

    pub(super) fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the commit.
    pub(super) fn finish(self) -> Result<Committed, LoadError> {
        let (client, r) = self.handle.join().map_err(|_| LoadError::Session {
            what: "COMMIT",
            message: "the committing thread panicked".into(),
        })?;
        r?;
        Ok(Committed {
            client,
            streams: self.committed,
            state: self.state,
        })
    }
}

/// A flush behind that has committed.
pub(super) struct Committed {
    /// The connection, free again.
    pub client: Client,
    /// Streams and the rows they committed.
    pub streams: Vec<(String, u64)>,
    /// The STATE value now safe to emit.
    pub state: Option<Value>,
}
