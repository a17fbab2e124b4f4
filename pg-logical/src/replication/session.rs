//! `START_REPLICATION … LOGICAL` and the CopyBoth stream on one socket:
//! XLogData in, keepalives answered, feedback only up to what the caller
//! confirmed, the COPY ended at the end LSN.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use pg_connect::{quote_ident, quote_literal, ConnectionSettings};
use postgres_protocol::message::frontend;

use super::wire::{server_error, Wire};
use super::ReplicationError;
use crate::{format_lsn, Lsn};

/// How often feedback is sent unasked (pg_recvlogical's default too), or a
/// third of the server's `wal_sender_timeout` when that is shorter.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// `wal_sender_timeout` as `SHOW` prints it (`60s`, `1min`, `500ms`, `0`).
fn parse_timeout(text: &str) -> Option<Duration> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..digits].parse().ok()?;
    let ms = match &text[digits..] {
        "" | "ms" => n,
        "s" => n * 1000,
        "min" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return None,
    };
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// How long [`Session::end_copy`] waits for the server to end the COPY.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Microseconds between the Unix epoch and Postgres's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Where to read from and until when.
#[derive(Debug, Clone, Copy)]
pub struct StartReplication<'a> {
    pub slot: &'a str,
    pub publication: &'a str,
    /// Where to start; the server starts at the slot's confirmed position
    /// when that is later (0 means: from the slot).
    pub start: Lsn,
    /// The run ends with the last transaction committed before this LSN
    /// (e.g. the flush position when the run started).
    pub end: Lsn,
}

/// A replication session streaming one slot.
pub(super) struct Session {
    wire: Wire,
    end: Lsn,
    /// Feedback never reports more than this (see [`Session::confirm`]).
    confirmed: Lsn,
    last_feedback: Instant,
    status_interval: Duration,
    /// What the server was last told.
    sent: Lsn,
    in_transaction: bool,
    /// The end LSN is reached.
    pub done: bool,
    /// The COPY is still open.
    copying: bool,
    slot: String,
}

fn be_u64(b: &[u8], at: usize) -> Result<u64, ReplicationError> {
    b.get(at..at + 8)
        .map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| ReplicationError::Protocol(format!("message too short ({} bytes)", b.len())))
}

/// A string literal of the replication command grammar: quotes doubled,
/// backslashes plain (it has no `E'…'`).
fn replication_literal(text: &str) -> String {
    format!("'{}'", text.replace('\0', "").replace('\'', "''"))
}

impl Session {
    /// Opens a replication connection (TLS and tunnel as `settings` say) and
    /// starts streaming `request.slot`.
    pub fn start(
        settings: &ConnectionSettings,
        application_name: &str,
        request: &StartReplication<'_>,
    ) -> Result<Self, ReplicationError> {
        let mut wire = Wire::connect(settings, application_name)?;
        // The same text output of every value as the SQL sessions have.
        wire.simple_query(pg_connect::SESSION_SETUP)?;
        // Feedback below the slot's confirmed position would move it back
        // (PostgreSQL before 17 takes any flush position it is sent).
        let timeout = wire.simple_query("SHOW wal_sender_timeout")?;
        let status_interval = timeout
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|t| parse_timeout(&t))
            .map_or(STATUS_INTERVAL, |t| STATUS_INTERVAL.min(t / 3));
        let rows = wire.simple_query(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(request.slot)
        ))?;
        let confirmed = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|t| crate::parse_lsn(&t))
            .unwrap_or(0);
        let mut options = format!(
            "proto_version '1', publication_names {}",
            replication_literal(&quote_ident(request.publication))
        );
        // The heartbeat's logical message counts only with it on 15+; the
        // option does not exist before 14.
        if wire.server_major >= 14 {
            options.push_str(", messages 'true'");
        }
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({options})",
            quote_ident(request.slot),
            format_lsn(request.start)
        );
        tracing::debug!(%command, "starting replication");
        frontend::query(&command, wire.output()).map_err(ReplicationError::Io)?;
        wire.send().map_err(ReplicationError::Io)?;
        loop {
            let frame = wire.frame().map_err(ReplicationError::Io)?;
            match frame.tag {
                // CopyBothResponse: streaming.
                b'W' => break,
                b'E' => {
                    let e = server_error(frame).map_err(ReplicationError::Io)?;
                    return Err(ReplicationError::Server {
                        context: format!("starting replication from slot `{}`", request.slot),
                        code: e.code,
                        message: e.text,
                    });
                }
                b'N' | b'S' => {}
                other => {
                    return Err(ReplicationError::Protocol(format!(
                        "{:?} in answer to START_REPLICATION",
                        other as char
                    )))
                }
            }
        }
        Ok(Session {
            wire,
            end: request.end,
            confirmed,
            sent: 0,
            last_feedback: Instant::now(),
            status_interval,
            in_transaction: false,
            done: false,
            copying: true,
            slot: request.slot.to_owned(),
        })
    }

    /// Raises the position feedback may report to `lsn` (never lowers it),
    /// and tells the server at once.
    pub fn confirm(&mut self, lsn: Lsn) -> Result<(), ReplicationError> {
        if lsn > self.confirmed {
            self.confirmed = lsn;
        }
        if self.confirmed > self.sent {
            if self.copying {
                self.feedback()?;
            } else {
                // The COPY is over: advance the slot directly (this session
                // no longer holds it).
                self.wire.simple_query(&format!(
                    "SELECT pg_replication_slot_advance({}, {})",
                    quote_literal(&self.slot),
                    quote_literal(&format_lsn(self.confirmed))
                ))?;
                self.sent = self.confirmed;
            }
        }
        Ok(())
    }

    /// The position feedback reports.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Sends feedback when the status interval has passed without any, so
    /// that the server does not time the session out while the reader is busy.
    pub fn keep_alive(&mut self) -> Result<(), ReplicationError> {
        if self.copying && self.last_feedback.elapsed() >= self.status_interval {
            self.feedback()?;
        }
        Ok(())
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), ReplicationError> {
        self.wire
            .set_read_timeout(timeout)
            .map_err(ReplicationError::Io)
    }

    /// Whether the next message is already buffered (reading it will not block).
    pub fn has_message(&self) -> bool {
        self.wire.has_frame()
    }

    /// A Standby Status Update with write = flush = apply = the confirmed
    /// position, so the server frees nothing the destination lacks.
    fn feedback(&mut self) -> Result<(), ReplicationError> {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
            - PG_EPOCH_MICROS;
        let mut update = Vec::with_capacity(34);
        update.push(b'r');
        for _ in 0..3 {
            update.extend_from_slice(&self.confirmed.to_be_bytes());
        }
        update.extend_from_slice(&micros.to_be_bytes());
        // No reply requested.
        update.push(0);
        frontend::CopyData::new(&update[..])
            .map_err(ReplicationError::Io)?
            .write(self.wire.output());
        self.wire.send().map_err(ReplicationError::Io)?;
        self.sent = self.confirmed;
        self.last_feedback = Instant::now();
        Ok(())
    }

    /// The next pgoutput message and its WAL record's LSN (0 for a Relation
    /// or Type message: the walsender sends no LSN for a message written
    /// ahead of the change it describes); `None` after the last transaction
    /// committed before the end LSN.
    ///
    /// A read timeout (see [`Session::set_read_timeout`]) comes back as an
    /// `Io` error of kind `WouldBlock` or `TimedOut`, with nothing lost.
    pub fn next_message(&mut self) -> Result<Option<(Lsn, Bytes)>, ReplicationError> {
        if self.done {
            return Ok(None);
        }
        loop {
            self.keep_alive()?;
            let frame = self.wire.frame().map_err(ReplicationError::Io)?;
            match frame.tag {
                b'd' => {}
                b'E' => {
                    let e = server_error(frame).map_err(ReplicationError::Io)?;
                    return Err(ReplicationError::Server {
                        context: format!("streaming from replication slot `{}`", self.slot),
                        code: e.code,
                        message: e.text,
                    });
                }
                b'N' => {
                    if let Ok(e) = server_error(frame) {
                        tracing::info!(notice = %e.text, "server notice");
                    }
                    continue;
                }
                // The server ended the COPY (e.g. shutting down).
                b'c' => {
                    self.done = true;
                    return Err(ReplicationError::Protocol(
                        "the server ended the stream before the end position".into(),
                    ));
                }
                other => {
                    return Err(ReplicationError::Protocol(format!(
                        "{:?} inside the replication stream",
                        other as char
                    )))
                }
            }
            let mut body: BytesMut = frame.body;
            match body.first() {
                // XLogData: start, server WAL end, send time, then the message.
                Some(b'w') => {
                    let lsn = be_u64(&body, 1)?;
                    if body.len() < 26 {
                        return Err(ReplicationError::Protocol("empty XLogData".into()));
                    }
                    body.advance(25);
                    let data = body.freeze();
                    match data[0] {
                        b'B' => {
                            // A transaction committing at or after the end
                            // belongs to the next run.
                            if be_u64(&data, 1)? >= self.end {
                                self.done = true;
                                return Ok(None);
                            }
                            self.in_transaction = true;
                        }
                        b'C' => {
                            self.in_transaction = false;
                            if be_u64(&data, 10)? >= self.end {
                                self.done = true;
                            }
                        }
                        _ => {}
                    }
                    return Ok(Some((lsn, data)));
                }
                // Primary keepalive: the server's decoding position, and
                // whether it wants an answer now (else it times us out).
                Some(b'k') => {
                    let sent_up_to = be_u64(&body, 1)?;
                    if body.get(17).copied().unwrap_or(0) != 0 {
                        self.feedback()?;
                    }
                    // Decoded past the end with no transaction open: every
                    // transaction committed before it has been sent.
                    if !self.in_transaction && sent_up_to >= self.end {
                        self.done = true;
                        return Ok(None);
                    }
                }
                other => {
                    return Err(ReplicationError::Protocol(format!(
                        "CopyData of kind {:?}",
                        other.map(|b| *b as char)
                    )))
                }
            }
        }
    }

    /// Ends the COPY cleanly: last feedback, CopyDone, then what the server
    /// still had in flight is skipped up to its end of the command.
    pub fn end_copy(&mut self) -> Result<(), ReplicationError> {
        if !self.copying {
            return Ok(());
        }
        self.feedback()?;
        frontend::copy_done(self.wire.output());
        self.wire.send().map_err(ReplicationError::Io)?;
        self.copying = false;
        self.set_read_timeout(Some(FINISH_TIMEOUT))?;
        loop {
            let frame = self.wire.frame().map_err(ReplicationError::Io)?;
            match frame.tag {
                b'Z' => return Ok(()),
                b'E' => {
                    let e = server_error(frame).map_err(ReplicationError::Io)?;
                    return Err(ReplicationError::Server {
                        context: format!("ending replication from slot `{}`", self.slot),
                        code: e.code,
                        message: e.text,
                    });
                }
                // What was in flight, the server's CopyDone, CommandComplete.
                _ => {}
            }
        }
    }

    /// Closes the session politely.
    pub fn terminate(self) {
        self.wire.terminate();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_timeout;
    use std::time::Duration;

    #[test]
    fn wal_sender_timeout_as_show_prints_it() {
        assert_eq!(parse_timeout("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_timeout("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_timeout("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("0"), None, "0 disables the timeout");
        assert_eq!(parse_timeout("soon"), None);
    }
}
