//! The reader's side: messages handed over in batches from a thread that
//! owns the socket. The thread keeps the session alive (feedback within
//! `wal_sender_timeout`) while the reader is busy or blocked, e.g. on a
//! slow destination, which the SQL peek function never needed.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use pg_connect::ConnectionSettings;

use super::session::{Session, StartReplication};
use super::ReplicationError;
use crate::Lsn;

/// Messages per hand-over, at most.
const BATCH: usize = 512;
/// Bytes per hand-over, at most (one message more can go over it).
const BATCH_BYTES: usize = 1 << 20;
/// Hand-overs in flight: with [`BATCH_BYTES`], what bounds memory.
const IN_FLIGHT: usize = 16;
/// How often the socket thread looks up from a read or a full hand-over
/// to send feedback or see that the reader is done.
const TICK: Duration = Duration::from_millis(200);
/// How long the socket thread waits between tries of a full hand-over.
const FULL_WAIT: Duration = Duration::from_millis(2);

enum Handover {
    Messages(Vec<(Lsn, Bytes)>),
    /// The end LSN was reached; the COPY is closed.
    End,
    Failed(ReplicationError),
}

struct Shared {
    confirmed: AtomicU64,
    /// The reader is gone or finishing: stop streaming.
    stop: AtomicBool,
}

/// The pgoutput messages of the transactions committed before the end LSN,
/// each with the LSN of its WAL record, as the server decodes them (so the
/// first arrives whatever the backlog). Memory is bounded by a few batches.
///
/// Feedback reports only what [`ReplicationStream::confirm`] was given.
/// [`ReplicationStream::finish`] closes the session cleanly; dropping the
/// stream closes the socket, and the server frees the slot at once.
pub struct ReplicationStream {
    batches: Option<Receiver<Handover>>,
    current: std::vec::IntoIter<(Lsn, Bytes)>,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<Result<Session, ReplicationError>>>,
    ended: bool,
}

impl ReplicationStream {
    /// Opens a replication connection (TLS and tunnel as `settings` say: pass
    /// `Connector::settings()`) and starts streaming `request.slot`.
    pub fn start(
        settings: &ConnectionSettings,
        application_name: &str,
        request: &StartReplication<'_>,
    ) -> Result<Self, ReplicationError> {
        let session = Session::start(settings, application_name, request)?;
        let shared = Arc::new(Shared {
            confirmed: AtomicU64::new(session.confirmed()),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::sync_channel(IN_FLIGHT);
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("replication".into())
                .spawn(move || pump(session, &shared, &tx))
                .map_err(ReplicationError::Io)?
        };
        Ok(ReplicationStream {
            batches: Some(rx),
            current: Vec::new().into_iter(),
            shared,
            worker: Some(worker),
            ended: false,
        })
    }

    /// The destination has committed everything before `lsn`: the slot may
    /// be confirmed up to it (never further, whatever has been read). Lower
    /// values than before are ignored. Sent within a fraction of a second,
    /// and at the latest by [`ReplicationStream::finish`].
    pub fn confirm(&self, lsn: Lsn) {
        self.shared.confirmed.fetch_max(lsn, Ordering::SeqCst);
    }

    /// The position feedback reports.
    pub fn confirmed(&self) -> Lsn {
        self.shared.confirmed.load(Ordering::SeqCst)
    }

    /// Ends the session cleanly (also before the end LSN): the COPY is ended,
    /// the last confirmed position is sent, the connection closed.
    pub fn finish(mut self) -> Result<(), ReplicationError> {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Unblocks a full hand-over.
        self.batches = None;
        let worker = self.worker.take().expect("finish runs once");
        let mut session = worker
            .join()
            .map_err(|_| ReplicationError::Protocol("the replication thread panicked".into()))??;
        // Confirmed while the COPY is open: sent as feedback; else the
        // session advances the slot itself.
        session.confirm(self.confirmed())?;
        session.end_copy()?;
        session.terminate();
        Ok(())
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.shared.stop.store(true, Ordering::SeqCst);
            self.batches = None;
            // Within a tick; the session's socket closes with it.
            let _ = worker.join();
        }
    }
}

impl Iterator for ReplicationStream {
    type Item = Result<(Lsn, Bytes), ReplicationError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(m) = self.current.next() {
                return Some(Ok(m));
            }
            if self.ended {
                return None;
            }
            let handover = self.batches.as_ref().and_then(|rx| rx.recv().ok());
            match handover {
                Some(Handover::Messages(batch)) => self.current = batch.into_iter(),
                Some(Handover::End) => self.ended = true,
                Some(Handover::Failed(e)) => {
                    self.ended = true;
                    return Some(Err(e));
                }
                None => {
                    self.ended = true;
                    return Some(Err(ReplicationError::Protocol(
                        "the replication thread stopped".into(),
                    )));
                }
            }
        }
    }
}

fn timed_out(e: &ReplicationError) -> bool {
    matches!(e, ReplicationError::Io(e)
        if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// The socket thread: reads, batches and hands over until the end LSN or
/// until the reader stops; returns the session for a clean close.
fn pump(
    mut session: Session,
    shared: &Shared,
    tx: &SyncSender<Handover>,
) -> Result<Session, ReplicationError> {
    session.set_read_timeout(Some(TICK))?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut batch_bytes = 0;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(session);
        }
        if let Err(e) = session.confirm(shared.confirmed.load(Ordering::SeqCst)) {
            let _ = tx.send(Handover::Failed(e));
            return Ok(session);
        }
        match session.next_message() {
            Ok(Some(m)) => {
                batch_bytes += m.1.len();
                batch.push(m);
                if batch.len() < BATCH && batch_bytes < BATCH_BYTES && session.has_message() {
                    continue;
                }
            }
            Ok(None) => {}
            Err(e) if timed_out(&e) => {}
            Err(e) => {
                let _ = hand_over(&mut session, shared, tx, Handover::Failed(e));
                return Ok(session);
            }
        }
        if !batch.is_empty() {
            let messages = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            batch_bytes = 0;
            if !hand_over(&mut session, shared, tx, Handover::Messages(messages)) {
                return Ok(session);
            }
        }
        if session.done {
            // Nothing more to stream: the server stops decoding now, and
            // the idle session needs no feedback while the reader catches up.
            let last = match session.end_copy() {
                Ok(()) => Handover::End,
                Err(e) => Handover::Failed(e),
            };
            hand_over(&mut session, shared, tx, last);
            return Ok(session);
        }
    }
}

/// Hands `item` to the reader, keeping the session alive while the reader
/// is busy; false when the reader stopped.
fn hand_over(
    session: &mut Session,
    shared: &Shared,
    tx: &SyncSender<Handover>,
    mut item: Handover,
) -> bool {
    loop {
        match tx.try_send(item) {
            Ok(()) => return true,
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(back)) => {
                if shared.stop.load(Ordering::SeqCst) {
                    return false;
                }
                // A failed feedback shows as the next read's error.
                let _ = session
                    .confirm(shared.confirmed.load(Ordering::SeqCst))
                    .and_then(|()| session.keep_alive());
                item = back;
                std::thread::sleep(FULL_WAIT);
            }
        }
    }
}
