//! `parallelism` > 1: several streams load at once. Each table belongs to one
//! of N workers, a [`Loader`] on its own thread with its own connections,
//! batches and transactions, fed its streams' messages in input order through
//! a bounded channel (memory: workers × batch size). Every STATE becomes a
//! numbered barrier sent to every worker; a worker acknowledges barrier `k`
//! (through its own [`crate::state::StateOut`]) once all its rows before it
//! are committed, and the printer writes a STATE value only when every worker
//! has acknowledged it.
//!
//! Key-less rows can't be matched on a rerun, so none may be committed before
//! the STATE they precede is printed (a kill in between would send them
//! again). All key-less streams load on worker 0, which commits them at
//! barrier `k` only once every other worker has acknowledged `k`: its COMMIT
//! makes `k` printable at once, as with one loader. Until then the others are
//! asked to commit at each barrier; at the end of input worker 0 ends last.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use postgres::Client;
use serde_json::{json, Value};
use singer_core::{Message, StateMessage};

use super::{Input, Item, LoadError, Loader};
use crate::naming::{table_for_stream, TableName};
use crate::settings::{LoadMethod, TargetSettings};
use crate::state::StateOut;

/// Opens one more connection (each worker's second, see [`super::commit`]).
pub type Connect = Arc<dyn Fn() -> Result<Client, String> + Send + Sync>;

/// Chunks of messages in flight to each worker.
const IN_FLIGHT: usize = 16;

/// What the workers and the printer share.
struct Shared {
    /// Per worker: the newest barrier all its rows before are committed.
    acks: Mutex<Vec<u64>>,
    /// Worker 0 holds key-less rows that wait for the others' commits.
    keyless_waiting: AtomicBool,
    /// The first worker that failed.
    failed: OnceLock<usize>,
    /// Stop everything: a worker failed, or the output did.
    stop: AtomicBool,
}

/// A loader's place among the workers.
#[derive(Clone)]
pub(super) struct Worker {
    index: usize,
    shared: Arc<Shared>,
}

impl Worker {
    /// Every other worker has acknowledged barrier `seq`.
    fn others_acked(&self, seq: u64) -> bool {
        let acks = self.shared.acks.lock().unwrap_or_else(|p| p.into_inner());
        (acks.iter().enumerate()).all(|(w, &a)| w == self.index || a >= seq)
    }

    pub(super) fn check_running(&self) -> Result<(), LoadError> {
        if self.shared.stop.load(Ordering::SeqCst) {
            return Err(LoadError::Session {
                what: "loading",
                message: "stopped: another worker failed".into(),
            });
        }
        Ok(())
    }
}

impl<W: Write> Loader<W> {
    /// A barrier (`{"barrier": k, "flush": bool}`): acknowledge `k` once
    /// every row before it is committed. `flush` asks to commit now (this
    /// worker received no record since the last barrier, or key-less rows
    /// wait for it); an idle worker acknowledges at once.
    pub(super) fn barrier(&mut self, value: Value) -> Result<(), LoadError> {
        let worker = self.worker.clone().expect("a worker");
        let seq = value["barrier"].as_u64().unwrap_or(0);
        let asked = value["flush"].as_bool().unwrap_or(false);
        self.state.received(json!(seq));
        let idle = self.behind.is_none() && !self.streams.values().any(|s| s.batch.pending());
        if !(self.flush_at_state || asked || idle) {
            return self.settle_if_done();
        }
        let keyless = (self.streams.values()).any(|s| s.batch.pending() && s.shape.keys.is_empty());
        if keyless && !worker.others_acked(seq) {
            worker.shared.keyless_waiting.store(true, Ordering::SeqCst);
            self.flush_at_state = true;
            return self.settle_if_done();
        }
        self.flush()?;
        if keyless {
            worker.shared.keyless_waiting.store(false, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// A worker's STATE output: each line is a barrier it acknowledges.
struct Acks {
    worker: usize,
    events: mpsc::Sender<Event>,
    line: Vec<u8>,
}

impl Write for Acks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        while let Some(end) = self.line.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.line.drain(..=end).collect();
            let seq = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0);
            // The printer is gone only when everything stops.
            let _ = self.events.send(Event::Ack(self.worker, seq));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Event {
    /// STATE number `seq` arrived with this value.
    State(u64, Value),
    /// Worker `w` has committed every row before barrier `seq`.
    Ack(usize, u64),
}

/// Prints each STATE value once every worker has acknowledged it.
fn print<W: Write>(
    events: mpsc::Receiver<Event>,
    shared: &Shared,
    out: W,
) -> Result<(), LoadError> {
    let mut out = StateOut::new(out);
    let mut states: VecDeque<(u64, Value)> = VecDeque::new();
    for event in events {
        match event {
            Event::State(seq, value) => states.push_back((seq, value)),
            Event::Ack(w, seq) => {
                let all = {
                    let mut acks = shared.acks.lock().unwrap_or_else(|p| p.into_inner());
                    acks[w] = acks[w].max(seq);
                    acks.iter().copied().min().unwrap_or(0)
                };
                while states.front().is_some_and(|(s, _)| *s <= all) {
                    let (_, value) = states.pop_front().expect("checked");
                    out.received(value);
                }
                if shared.failed.get().is_none() {
                    out.committed()?;
                }
            }
        }
    }
    Ok(())
}

/// Which worker loads each table.
struct Routes {
    workers: usize,
    streams: HashMap<String, usize>,
    tables: HashMap<TableName, usize>,
    next: usize,
}

impl Routes {
    /// A stream's worker, chosen at its first message: key-less streams on
    /// worker 0, others in turn from worker 1; a table always on one worker
    /// (two connections writing one table would conflict).
    fn of(&mut self, message: &Message, settings: &TargetSettings) -> usize {
        let stream = match message {
            Message::Record(r) => &*r.stream,
            Message::Schema(s) => s.stream.as_str(),
            Message::ActivateVersion(a) => a.stream.as_str(),
            Message::State(_) => return 0,
        };
        if let Some(&w) = self.streams.get(stream) {
            return w;
        }
        let table = table_for_stream(stream, settings);
        let keyless = match message {
            Message::Schema(s) => {
                s.key_properties.is_empty() || settings.load_method == LoadMethod::AppendOnly
            }
            _ => false,
        };
        let w = match self.tables.get(&table) {
            Some(&w) => w,
            None if keyless => 0,
            None => {
                self.next += 1;
                self.next % self.workers
            }
        };
        self.tables.insert(table, w);
        self.streams.insert(stream.to_owned(), w);
        w
    }
}

/// Loads every message on `clients.len()` workers, printing STATE values to
/// `out` as described above.
pub fn run<W: Write + Send>(
    clients: Vec<Client>,
    connect: Connect,
    settings: &TargetSettings,
    input: impl Iterator<Item = Vec<Item>>,
    out: W,
) -> Result<(), LoadError> {
    let n = clients.len();
    let shared = Arc::new(Shared {
        acks: Mutex::new(vec![0; n]),
        keyless_waiting: AtomicBool::new(false),
        failed: OnceLock::new(),
        stop: AtomicBool::new(false),
    });
    singer_core::progress::start(singer_core::progress::Role::Target);
    let (events, events_rx) = mpsc::channel();
    let mut read_error = None;
    let mut results: Vec<Option<Result<(), LoadError>>> = (0..n).map(|_| None).collect();
    let printed = std::thread::scope(|scope| {
        let printer = scope.spawn(|| {
            let r = print(events_rx, &shared, out);
            if r.is_err() {
                shared.stop.store(true, Ordering::SeqCst);
            }
            r
        });
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for (index, client) in clients.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel::<Vec<Item>>(IN_FLIGHT);
            senders.push(Some(tx));
            let worker = Worker {
                index,
                shared: Arc::clone(&shared),
            };
            let acks = Acks {
                worker: index,
                events: events.clone(),
                line: Vec::new(),
            };
            let settings = settings.clone();
            let connect = Arc::clone(&connect);
            handles.push(Some(scope.spawn(move || {
                let mut loader = Loader::new(client, settings, acks)
                    .with_second_connection(Box::new(move || connect()));
                loader.worker = Some(worker.clone());
                let r = loader.run(&mut Input::new(rx.into_iter().flatten()));
                if r.is_err() {
                    let _ = worker.shared.failed.set(index);
                    worker.shared.stop.store(true, Ordering::SeqCst);
                }
                r
            })));
        }
        let mut routes = Routes {
            workers: n,
            streams: HashMap::new(),
            tables: HashMap::new(),
            next: 0,
        };
        let mut quiet = vec![true; n];
        let mut seq = 0u64;
        'input: for chunk in input {
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let mut parts: Vec<Vec<Item>> = (0..n).map(|_| Vec::new()).collect();
            for item in chunk {
                let (line, message) = match item {
                    Ok(m) => m,
                    Err(e) => {
                        read_error = Some(e);
                        shared.stop.store(true, Ordering::SeqCst);
                        break 'input;
                    }
                };
                if let Message::State(s) = message {
                    seq += 1;
                    let _ = events.send(Event::State(seq, s.value));
                    let waiting = shared.keyless_waiting.load(Ordering::SeqCst);
                    for (w, part) in parts.iter_mut().enumerate() {
                        let flush = quiet[w] || (w != 0 && waiting);
                        let value = json!({"barrier": seq, "flush": flush});
                        part.push(Ok((line, Message::State(StateMessage { value }))));
                        quiet[w] = true;
                    }
                    continue;
                }
                let w = routes.of(&message, settings);
                if matches!(message, Message::Record(_)) {
                    quiet[w] = false;
                }
                parts[w].push(Ok((line, message)));
            }
            for (w, part) in parts.into_iter().enumerate() {
                let sent =
                    part.is_empty() || senders[w].as_ref().is_some_and(|s| s.send(part).is_ok());
                if !sent {
                    break 'input;
                }
            }
        }
        // Key-less rows commit last: worker 0 ends after the others.
        for w in (1..n).chain([0]) {
            senders[w] = None;
            let handle = handles[w].take().expect("once");
            results[w] = Some(handle.join().unwrap_or_else(|_| {
                Err(LoadError::Session {
                    what: "loading",
                    message: "a worker thread panicked".into(),
                })
            }));
            if results[w].as_ref().is_some_and(Result::is_err) {
                let _ = shared.failed.set(w);
                shared.stop.store(true, Ordering::SeqCst);
            }
        }
        drop(events);
        printer.join().unwrap_or_else(|_| {
            Err(LoadError::Session {
                what: "writing state",
                message: "the printing thread panicked".into(),
            })
        })
    });
    if let Some(e) = read_error {
        return Err(e.into());
    }
    if let Some(&w) = shared.failed.get() {
        return results[w].take().expect("joined");
    }
    printed?;
    singer_core::progress::finish();
    Ok(())
}
