//! A decoder of PostgreSQL's built-in `pgoutput` logical replication messages,
//! independent of how they were fetched (SQL `pg_logical_slot_peek_binary_changes`
//! today, the streaming replication protocol later).
//!
//! Every read is bounds-checked: malformed input is a [`DecodeError`], never a panic.
//! Column values stay borrowed text (Postgres's text output form), so one
//! text codec can serve snapshots and change data alike.
//!
//! ```no_run
//! # let bytes: &[u8] = &[];
//! use pg_logical::pgoutput::{decode, Message, RelationCache};
//! let mut relations = RelationCache::default();
//! match decode(bytes)? {
//!     Message::Relation(r) => relations.insert(r),
//!     Message::Insert(i) => {
//!         let rel = relations.get(i.relation_id).expect("relation sent before its rows");
//!         for (col, value) in rel.columns.iter().zip(&i.new.columns) {
//!             println!("{} = {:?}", col.name, value);
//!         }
//!     }
//!     _ => {}
//! }
//! # Ok::<(), pg_logical::pgoutput::DecodeError>(())
//! ```

use std::collections::HashMap;

/// A log sequence number.
pub type Lsn = u64;

/// Formats an LSN the way Postgres prints it (`16/B374D848`).
pub fn format_lsn(lsn: Lsn) -> String {
    postgres::types::PgLsn::from(lsn).to_string()
}

/// Parses `16/B374D848` from text (a state file, say; reading from the
/// server, `pg_lsn` columns decode as `PgLsn`). Unlike `PgLsn`'s parser it
/// trims and rejects halves wider than 32 bits.
pub fn parse_lsn(text: &str) -> Option<Lsn> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= 0xFFFF_FFFF && lo <= 0xFFFF_FFFF).then_some((hi << 32) | lo)
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput message ends early: needed {needed} more byte(s) at offset {offset} reading {what}")]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
    },
    #[error("pgoutput message is empty")]
    Empty,
    #[error("unknown pgoutput message type {0:?}")]
    UnknownMessage(char),
    #[error("unknown tuple column kind {kind:?} at offset {offset}")]
    UnknownColumnKind { kind: char, offset: usize },
    #[error("unexpected tuple marker {marker:?} at offset {offset} (expected {expected})")]
    UnexpectedMarker {
        marker: char,
        offset: usize,
        expected: &'static str,
    },
    #[error("a string in the message is not valid UTF-8")]
    NotUtf8,
    #[error("{0} trailing byte(s) after the message")]
    Trailing(usize),
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    Begin(Begin),
    Commit(Commit),
    Origin {
        lsn: Lsn,
        name: &'a str,
    },
    Relation(Relation),
    Type {
        id: u32,
        namespace: &'a str,
        name: &'a str,
    },
    Insert(Insert<'a>),
    Update(Update<'a>),
    Delete(Delete<'a>),
    Truncate(Truncate),
    /// `pg_logical_emit_message` output (only with the `messages` option).
    Logical {
        transactional: bool,
        lsn: Lsn,
        prefix: &'a str,
        content: &'a [u8],
    },
    /// Protocol 2 streaming of in-progress transactions.
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        commit: Commit,
    },
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
    pub xid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// The end of the commit record: where the next read may start.
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// `REPLICA IDENTITY` of a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    Default,
    Nothing,
    Full,
    Index,
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key sent for updates and deletes).
    pub is_key: bool,
    pub name: String,
    pub type_id: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

/// One column of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column<'a> {
    Null,
    /// A TOASTed value the change did not touch: its value is not sent.
    UnchangedToast,
    /// The value in Postgres's text output form.
    Text(&'a [u8]),
    /// The value in binary form (only with the `binary` option).
    Binary(&'a [u8]),
}

impl<'a> Column<'a> {
    /// The text form, when the column carries one.
    pub fn text(&self) -> Option<Result<&'a str, DecodeError>> {
        match self {
            Column::Text(b) => Some(std::str::from_utf8(b).map_err(|_| DecodeError::NotUtf8)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple<'a> {
    pub columns: Vec<Column<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert<'a> {
    pub relation_id: u32,
    pub new: Tuple<'a>,
}

/// The old row of an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// Only the replica identity's key columns (others are null).
    Key(Tuple<'a>),
    /// The whole old row (`REPLICA IDENTITY FULL`).
    Full(Tuple<'a>),
}

impl<'a> OldTuple<'a> {
    pub fn tuple(&self) -> &Tuple<'a> {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update<'a> {
    pub relation_id: u32,
    /// Sent when the key changed, or always with `REPLICA IDENTITY FULL`.
    pub old: Option<OldTuple<'a>>,
    pub new: Tuple<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete<'a> {
    pub relation_id: u32,
    pub old: OldTuple<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub cascade: bool,
    pub restart_identity: bool,
    pub relation_ids: Vec<u32>,
}

/// Relations seen so far in the stream, by OID. Postgres sends a Relation
/// message before the first change of a relation in each session and again
/// whenever its definition changes.
#[derive(Debug, Default, Clone)]
pub struct RelationCache {
    relations: HashMap<u32, Relation>,
}

impl RelationCache {
    pub fn insert(&mut self, relation: Relation) {
        self.relations.insert(relation.id, relation);
    }
    pub fn get(&self, id: u32) -> Option<&Relation> {
        self.relations.get(&id)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: n.saturating_sub(self.buf.len().saturating_sub(self.pos)),
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(self.u32(what)? as i32)
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(self.u64(what)? as i64)
    }
    /// A NUL-terminated string.
    fn cstr(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let rest = &self.buf[self.pos..];
        let len = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: 1,
            })?;
        let s = std::str::from_utf8(&rest[..len]).map_err(|_| DecodeError::NotUtf8)?;
        self.pos += len + 1;
        Ok(s)
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn old_tuple(&mut self, marker: u8) -> Result<OldTuple<'a>, DecodeError> {
        Ok(match marker {
            b'K' => OldTuple::Key(self.tuple()?),
            _ => OldTuple::Full(self.tuple()?),
        })
    }

    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let n = self.i16("tuple column count")?.max(0) as usize;
        // Never trust a count to size an allocation beyond what the bytes can hold.
        let mut columns = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            let offset = self.pos;
            let kind = self.u8("tuple column kind")?;
            columns.push(match kind {
                b'n' => Column::Null,
                b'u' => Column::UnchangedToast,
                b't' | b'b' => {
                    let len = self.i32("column length")?;
                    let len = usize::try_from(len).map_err(|_| DecodeError::Truncated {
                        what: "column value (negative length)",
                        offset,
                        needed: 0,
                    })?;
                    let data = self.take(len, "column value")?;
                    if kind == b't' {
                        Column::Text(data)
                    } else {
                        Column::Binary(data)
                    }
                }
                other => {
                    return Err(DecodeError::UnknownColumnKind {
                        kind: other as char,
                        offset,
                    })
                }
            });
        }
        Ok(Tuple { columns })
    }
}

/// Decodes one message (protocol version 1 unless `streaming` ids are present:
/// in-stream messages of protocol 2 carry a transaction id first; decode them
/// with [`decode_in_stream`]).
pub fn decode(data: &[u8]) -> Result<Message<'_>, DecodeError> {
    decode_inner(data, false)
}

/// Decodes a message sent between Stream Start and Stream Stop (protocol 2),
/// where change messages carry the transaction id first.
pub fn decode_in_stream(data: &[u8]) -> Result<Message<'_>, DecodeError> {
    decode_inner(data, true)
}

fn decode_inner(data: &[u8], in_stream: bool) -> Result<Message<'_>, DecodeError> {
    let mut r = Reader { buf: data, pos: 0 };
    let tag = *data.first().ok_or(DecodeError::Empty)?;
    r.pos = 1;
    let skip_xid = |r: &mut Reader<'_>| -> Result<(), DecodeError> {
        if in_stream {
            r.u32("transaction id")?;
        }
        Ok(())
    };
    let commit = |r: &mut Reader<'_>| -> Result<Commit, DecodeError> {
        Ok(Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_time: r.i64("commit time")?,
        })
    };
    let msg = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: r.u64("final LSN")?,
            commit_time: r.i64("commit time")?,
            xid: r.u32("transaction id")?,
        }),
        b'C' => Message::Commit(commit(&mut r)?),
        b'O' => Message::Origin {
            lsn: r.u64("origin LSN")?,
            name: r.cstr("origin name")?,
        },
        b'R' => {
            skip_xid(&mut r)?;
            let id = r.u32("relation id")?;
            let namespace = r.cstr("namespace")?.to_owned();
            let name = r.cstr("relation name")?.to_owned();
            let replica_identity = match r.u8("replica identity")? {
                b'd' => ReplicaIdentity::Default,
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                b'i' => ReplicaIdentity::Index,
                other => ReplicaIdentity::Other(other),
            };
            let n = r.i16("column count")?.max(0) as usize;
            let mut columns = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                columns.push(RelationColumn {
                    is_key: r.u8("column flags")? & 1 == 1,
                    name: r.cstr("column name")?.to_owned(),
                    type_id: r.u32("column type")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => {
            skip_xid(&mut r)?;
            Message::Type {
                id: r.u32("type id")?,
                namespace: r.cstr("type namespace")?,
                name: r.cstr("type name")?,
            }
        }
        b'I' => {
            skip_xid(&mut r)?;
            let relation_id = r.u32("relation id")?;
            let offset = r.pos;
            let marker = r.u8("insert marker")?;
            if marker != b'N' {
                return Err(DecodeError::UnexpectedMarker {
                    marker: marker as char,
                    offset,
                    expected: "'N'",
                });
            }
            Message::Insert(Insert {
                relation_id,
                new: r.tuple()?,
            })
        }
        b'U' => {
            skip_xid(&mut r)?;
            let relation_id = r.u32("relation id")?;
            let offset = r.pos;
            let mut marker = r.u8("update marker")?;
            let mut old = None;
            if marker == b'K' || marker == b'O' {
                old = Some(r.old_tuple(marker)?);
                marker = r.u8("update marker")?;
            }
            if marker != b'N' {
                return Err(DecodeError::UnexpectedMarker {
                    marker: marker as char,
                    offset,
                    expected: "'K', 'O' or 'N'",
                });
            }
            Message::Update(Update {
                relation_id,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            skip_xid(&mut r)?;
            let relation_id = r.u32("relation id")?;
            let offset = r.pos;
            let marker = r.u8("delete marker")?;
            if marker != b'K' && marker != b'O' {
                return Err(DecodeError::UnexpectedMarker {
                    marker: marker as char,
                    offset,
                    expected: "'K' or 'O'",
                });
            }
            Message::Delete(Delete {
                relation_id,
                old: r.old_tuple(marker)?,
            })
        }
        b'T' => {
            skip_xid(&mut r)?;
            let n = r.u32("relation count")? as usize;
            let options = r.u8("truncate options")?;
            let mut relation_ids = Vec::with_capacity(n.min(r.remaining() / 4));
            for _ in 0..n {
                relation_ids.push(r.u32("relation id")?);
            }
            Message::Truncate(Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relation_ids,
            })
        }
        b'M' => {
            skip_xid(&mut r)?;
            let flags = r.u8("message flags")?;
            let lsn = r.u64("message LSN")?;
            let prefix = r.cstr("message prefix")?;
            let len = r.u32("message length")? as usize;
            Message::Logical {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.take(len, "message content")?,
            }
        }
        b'S' => Message::StreamStart {
            xid: r.u32("transaction id")?,
            first_segment: r.u8("first segment flag")? == 1,
        },
        b'E' => Message::StreamStop,
        b'c' => {
            let xid = r.u32("transaction id")?;
            Message::StreamCommit {
                xid,
                commit: commit(&mut r)?,
            }
        }
        b'A' => Message::StreamAbort {
            xid: r.u32("transaction id")?,
            subxid: r.u32("subtransaction id")?,
        },
        other => return Err(DecodeError::UnknownMessage(other as char)),
    };
    if r.remaining() > 0 {
        return Err(DecodeError::Trailing(r.remaining()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert_bytes() -> Vec<u8> {
        let mut b = vec![b'I'];
        b.extend(16384u32.to_be_bytes());
        b.push(b'N');
        b.extend(3i16.to_be_bytes());
        b.push(b't');
        b.extend(2i32.to_be_bytes());
        b.extend(b"42");
        b.push(b'n');
        b.push(b'u');
        b
    }

    #[test]
    fn decodes_an_insert() {
        let bytes = insert_bytes();
        let Message::Insert(i) = decode(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(i.relation_id, 16384);
        assert_eq!(
            i.new.columns,
            vec![Column::Text(b"42"), Column::Null, Column::UnchangedToast]
        );
    }

    #[test]
    fn never_panics_on_truncated_or_garbage_input() {
        let bytes = insert_bytes();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Every single-byte corruption either decodes or errors; none panics.
        for i in 0..bytes.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = decode(&b);
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode(&long).unwrap_err(), DecodeError::Trailing(1));
        assert_eq!(decode(b"Z").unwrap_err(), DecodeError::UnknownMessage('Z'));
        assert_eq!(decode(b"").unwrap_err(), DecodeError::Empty);
    }

    #[test]
    fn lsn_text_round_trips() {
        for (text, value) in [
            ("0/0", 0u64),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            assert_eq!(parse_lsn(text), Some(value));
            assert_eq!(format_lsn(value), text);
        }
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("1/100000000"), None);
    }
}
