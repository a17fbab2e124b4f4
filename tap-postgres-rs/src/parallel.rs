//! FULL_TABLE and INCREMENTAL streams, below the dispatcher: one after
//! another ([`sync_stream`]), or with `max_parallel_streams` > 1 several at
//! once ([`sync_parallel`]), each on a connection of its own, all in one
//! snapshot.
//!
//! The dispatcher's connection exports its snapshot (`pg_export_snapshot`,
//! in a REPEATABLE READ transaction held open until every stream is done);
//! a worker imports it (`SET TRANSACTION SNAPSHOT`) for each stream it takes
//! and syncs the stream exactly as one after another would, into a
//! [`StreamSink`] instead of stdout. Sinks send whole messages through one
//! bounded channel (memory: a few chunks per worker) to the calling thread,
//! the only writer of stdout, so a stream's messages keep their order (its
//! SCHEMA before its first RECORD) while streams interleave. A worker's STATE
//! is not forwarded as it is (its other streams' bookmarks are stale): the
//! writer merges that stream's bookmark into the run's state and writes the
//! whole state then. A stream's bookmark arrives after its rows, so every
//! STATE claims only rows already written before it.
//!
//! A big table can be split into ctid ranges ([`crate::split`]): each range
//! is a job a worker takes like a stream, and its STATE carries only its
//! range's bookmark, which the writer merges range by range.

use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use pg_connect::quote_literal;
use postgres::Client;
use serde_json::Value;
use singer_core::{MessageWriter, State};

use crate::error::{QueryError, StreamError, SyncError};
use crate::plan::{self, Prepared};
use crate::settings::TapSettings;
use crate::split::{self, Split};
use crate::{full_table, incremental};

/// How every reading session is set up: synchronized scans and parallel
/// workers off, so that a sequential scan returns rows in ctid order.
pub const SCAN_SESSION: &str =
    "SET synchronize_seqscans = off; SET max_parallel_workers_per_gather = 0";

/// A sink sends its whole lines on once this many bytes are pending.
const CHUNK: usize = 2 << 20;

/// One FULL_TABLE or INCREMENTAL stream: its SCHEMA, then its rows.
pub fn sync_stream<W: Write>(
    client: &mut Client,
    p: &Prepared,
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    plan::write_schema(p, out)?;
    match &p.replication_key {
        None => full_table::copy_stream(client, p, state, settings, out).map(drop),
        Some(key) => incremental::sync(client, p, key, state, settings, out),
    }
}

/// What a worker takes: a whole stream, or one range of a split one.
enum Job {
    Stream(Prepared),
    Range {
        p: Prepared,
        split: Split,
        index: usize,
    },
}

/// The jobs no worker has taken yet, with their stream's index.
type Jobs = std::vec::IntoIter<(usize, Job)>;

/// What a worker sends the writer.
enum Piece {
    /// Whole messages, as encoded.
    Lines(Vec<u8>),
    /// The STATE a worker wrote after the lines before it (its view of the
    /// state: only the bookmark of `stream`, an index into the streams, is
    /// news; of a split stream, only that of its range `range`).
    State {
        stream: usize,
        range: Option<usize>,
        value: Value,
    },
    /// A worker failed (its error is in `first_error`): stop.
    Failed,
}

/// Syncs `streams` on up to `settings.max_parallel_streams` connections at
/// once, in the snapshot `client` exports, big tables split into ranges;
/// the run's state follows each. One stream not split is synced on `client`.
pub fn sync_parallel<W: Write>(
    client: &mut Client,
    connector: &pg_connect::Connector,
    streams: Vec<Prepared>,
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    let mut decisions = Vec::with_capacity(streams.len());
    for p in &streams {
        decisions.push(split::decide(client, p, state, settings)?);
    }
    if let ([p], [None]) = (streams.as_slice(), decisions.as_slice()) {
        return sync_stream(client, p, state, settings, out);
    }
    let snapshot: String = client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .and_then(|()| client.query_one("SELECT pg_export_snapshot()", &[]))
        .map(|row| row.get(0))
        .map_err(|e| SyncError::ExportSnapshot(QueryError(e)))?;
    tracing::info!(
        streams = streams.len(),
        snapshot = %snapshot,
        "reading streams in parallel, in one snapshot"
    );
    let mut splits = Vec::with_capacity(streams.len());
    let mut started = Ok(());
    for (p, d) in streams.iter().zip(decisions) {
        match d.map(|d| d.start(client, p)).transpose() {
            Ok(s) => splits.push(s),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let result = started
        .and_then(|()| run_workers(connector, streams, splits, &snapshot, state, settings, out));
    // The snapshot is no longer needed (nothing was written in it).
    let ended = client.batch_execute("COMMIT");
    result?;
    ended.map_err(|e| SyncError::ExportSnapshot(QueryError(e)))
}

fn run_workers<W: Write>(
    connector: &pg_connect::Connector,
    streams: Vec<Prepared>,
    splits: Vec<Option<Split>>,
    snapshot: &str,
    state: &mut State,
    settings: &TapSettings,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    let ids: Vec<String> = streams.iter().map(|p| p.id.clone()).collect();
    let names: Vec<String> = streams.iter().map(|p| p.name.clone()).collect();
    // Each job goes to one worker (a Prepared is not shared: its widening
    // changes as rows are read). Ranges first: they are the big ones.
    let mut jobs = Vec::new();
    let mut whole = Vec::new();
    for (i, (p, split)) in streams.into_iter().zip(splits).enumerate() {
        match split {
            Some(split) => {
                split::open(&p, &split, state, out)?;
                for index in 0..split.copy.ranges.len() {
                    let (p, split) = (p.clone(), split.clone());
                    jobs.push((i, Job::Range { p, split, index }));
                }
            }
            None => whole.push((i, Job::Stream(p))),
        }
    }
    jobs.extend(whole);
    let workers = settings.max_parallel_streams.min(jobs.len()).max(1);
    tracing::info!(jobs = jobs.len(), workers, "workers started");
    // A stream's (or range's) bookmark changes only in its own worker, so
    // each worker starts from the state as it is now.
    let start = state.clone();
    let next = Mutex::new(jobs.into_iter());
    let first_error: Mutex<Option<SyncError>> = Mutex::new(None);
    let (tx, rx) = sync_channel::<Piece>(workers * 2);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (start, next, first_error) = (&start, &next, &first_error);
            scope.spawn(move || {
                if let Err(e) = worker(connector, next, snapshot, start, settings, &tx) {
                    // Errors after the first are mostly its consequence.
                    first_error.lock().expect("not poisoned").get_or_insert(e);
                    let _ = tx.send(Piece::Failed);
                }
            });
        }
        drop(tx);
        if let Err(e) = write_pieces(&rx, &ids, &names, state, out) {
            // Recorded before the channel closes: the workers' failures to
            // send are its consequence, not the cause.
            first_error.lock().expect("not poisoned").get_or_insert(e);
        }
        drop(rx);
    });
    match first_error.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The one writer of stdout: writes the workers' lines as they come, and the
/// run's state after each stream's bookmark. Returns when every worker is
/// done, or at the first failure (then dropping the channel stops the others).
fn write_pieces<W: Write>(
    rx: &Receiver<Piece>,
    ids: &[String],
    names: &[String],
    state: &mut State,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    for piece in rx {
        match piece {
            Piece::Lines(lines) => out.write_encoded(&lines)?,
            Piece::State {
                stream,
                range: None,
                value,
            } => {
                merge_bookmark(state, &ids[stream], &value);
                out.write_state(&state.to_value())?;
            }
            Piece::State {
                stream,
                range: Some(range),
                value,
            } => {
                split::merge_range(state, &ids[stream], &names[stream], range, &value, out)?;
                out.write_state(&state.to_value())?;
            }
            Piece::Failed => break,
        }
    }
    out.flush()?;
    Ok(())
}

/// Takes stream `id`'s bookmark (and whether it is the one syncing) from a
/// worker's state into the run's.
fn merge_bookmark(state: &mut State, id: &str, worker: &Value) {
    let new = worker["bookmarks"][id].as_object();
    let old: Vec<String> = (state.bookmark(id).into_iter())
        .flat_map(|b| b.keys().cloned())
        .collect();
    for key in old {
        if new.is_none_or(|n| !n.contains_key(&key)) {
            state.remove(id, &key);
        }
    }
    for (key, value) in new.into_iter().flatten() {
        state.set(id, key, value.clone());
    }
    if worker["currently_syncing"].as_str() == Some(id) {
        state.set_currently_syncing(Some(id));
    } else if state.currently_syncing() == Some(id) {
        state.set_currently_syncing(None);
    }
}

/// One worker: its own connection; takes the next job until none is left.
fn worker(
    connector: &pg_connect::Connector,
    next: &Mutex<Jobs>,
    snapshot: &str,
    start: &State,
    settings: &TapSettings,
    tx: &SyncSender<Piece>,
) -> Result<(), SyncError> {
    let mut client: Option<Client> = None;
    loop {
        let Some((i, job)) = next.lock().expect("not poisoned").next() else {
            return Ok(());
        };
        let (p, range) = match &job {
            Job::Stream(p) => (p, None),
            Job::Range { p, index, .. } => (p, Some(*index)),
        };
        let id = p.id.as_str();
        let client = match &mut client {
            Some(c) => c,
            None => {
                let mut c = connector
                    .connect()
                    .map_err(|e| StreamError::WorkerConnect(e).at(id))?;
                c.batch_execute(SCAN_SESSION)
                    .map_err(|e| SyncError::Session(QueryError(e)))?;
                client.insert(c)
            }
        };
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(snapshot)
            ))
            .map_err(|e| StreamError::ImportSnapshot(QueryError(e)).at(id))?;
        let mut state = start.clone();
        let mut out = MessageWriter::new(StreamSink::new(tx.clone(), i, range));
        match &job {
            Job::Stream(p) => sync_stream(client, p, &mut state, settings, &mut out)?,
            Job::Range { p, split, index } => {
                split::copy_range(client, p, split, *index, &mut state, settings, &mut out)
                    .map(drop)?
            }
        }
        out.flush()?;
        client
            .batch_execute("COMMIT")
            .map_err(|e| SyncError::Session(QueryError(e)))?;
    }
}

/// Where a worker's [`MessageWriter`] writes: collects whole lines and sends
/// them on, a STATE line as [`Piece::State`].
struct StreamSink {
    tx: SyncSender<Piece>,
    stream: usize,
    range: Option<usize>,
    buf: Vec<u8>,
    /// Where the first incomplete line in `buf` starts (every line before it
    /// is complete and not a STATE).
    line_start: usize,
}

/// How [`MessageWriter::write_state`] starts a line.
const STATE_PREFIX: &[u8] = b"{\"type\":\"STATE\",";

impl StreamSink {
    fn new(tx: SyncSender<Piece>, stream: usize, range: Option<usize>) -> StreamSink {
        StreamSink {
            tx,
            stream,
            range,
            buf: Vec::with_capacity(CHUNK + 4096),
            line_start: 0,
        }
    }

    fn send(&self, piece: Piece) -> io::Result<()> {
        self.tx
            .send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the writer of stdout stopped"))
    }

    /// Sends the complete lines pending (none of them a STATE).
    fn send_lines(&mut self) -> io::Result<()> {
        if self.line_start > 0 {
            let rest = self.buf.split_off(self.line_start);
            let lines = std::mem::replace(&mut self.buf, rest);
            self.line_start = 0;
            self.buf.reserve(CHUNK);
            self.send(Piece::Lines(lines))?;
        }
        Ok(())
    }
}

impl Write for StreamSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut from = self.buf.len();
        self.buf.extend_from_slice(data);
        while let Some(n) = self.buf[from..].iter().position(|&b| b == b'\n') {
            let end = from + n + 1;
            if self.buf[self.line_start..].starts_with(STATE_PREFIX) {
                let line = self.buf[self.line_start..end].to_vec();
                let message: Value = serde_json::from_slice(&line)?;
                self.buf.drain(self.line_start..end);
                self.send_lines()?;
                let value = message.get("value").cloned().unwrap_or_default();
                self.send(Piece::State {
                    stream: self.stream,
                    range: self.range,
                    value,
                })?;
                from = self.line_start;
            } else {
                self.line_start = end;
                from = end;
            }
        }
        if self.line_start >= CHUNK {
            self.send_lines()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_lines()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_sink_sends_whole_lines_and_states_in_order() {
        let (tx, rx) = sync_channel(64);
        let mut out = MessageWriter::new(StreamSink::new(tx, 3, None));
        out.write_record_raw("s", "{\"id\":1}", None, None).unwrap();
        out.write_state(&json!({"bookmarks": {"s": {"ctid": "(0,1)"}}}))
            .unwrap();
        out.write_record_raw("s", "{\"id\":2}", None, None).unwrap();
        out.flush().unwrap();
        drop(out);
        let pieces: Vec<String> = rx
            .iter()
            .map(|p| match p {
                Piece::Lines(l) => String::from_utf8(l).unwrap(),
                Piece::State { stream, value, .. } => format!("state {stream} {value}"),
                Piece::Failed => "failed".into(),
            })
            .collect();
        assert_eq!(
            pieces,
            [
                "{\"type\":\"RECORD\",\"stream\":\"s\",\"record\":{\"id\":1}}\n",
                "state 3 {\"bookmarks\":{\"s\":{\"ctid\":\"(0,1)\"}}}",
                "{\"type\":\"RECORD\",\"stream\":\"s\",\"record\":{\"id\":2}}\n",
            ]
        );
    }

    #[test]
    fn a_merge_takes_one_streams_bookmark() {
        let mut run = State::default();
        run.set("a", "version", json!(1));
        run.set("b", "ctid", json!("(0,5)"));
        run.set_currently_syncing(Some("b"));
        // b's worker started from an older state: a's bookmark there is stale.
        let worker = json!({"currently_syncing": null,
            "bookmarks": {"a": {}, "b": {"version": 7}}});
        merge_bookmark(&mut run, "b", &worker);
        assert_eq!(
            run.to_value(),
            json!({"currently_syncing": null, "bookmarks": {"a": {"version": 1}, "b": {"version": 7}}})
        );
    }
}
