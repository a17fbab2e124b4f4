//! Decoded changes: pgoutput messages (as [`crate::replication`] streams
//! them) turned into owned [`Change`]s with their relation attached, one
//! message at a time, so memory does not grow with the number of changes.

use std::collections::HashMap;
use std::sync::Arc;

use postgres::types::PgLsn;

use crate::pgoutput::{self, Column, Message, OldTuple, Relation};
use crate::{LogicalError, Lsn};

/// One column value of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the change left as it was: not sent, must not become NULL.
    UnchangedToast,
    /// Postgres's text output form.
    Text(String),
}

/// One decoded change, with its relation attached.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Begin {
        xid: u32,
        final_lsn: Lsn,
        /// Microseconds since 2000-01-01 UTC.
        commit_time: i64,
    },
    Insert {
        relation: Arc<Relation>,
        new: Vec<Value>,
    },
    Update {
        relation: Arc<Relation>,
        /// The old key (when it changed) or the whole old row (`REPLICA IDENTITY FULL`).
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        relation: Arc<Relation>,
        /// The key columns (others NULL), or the whole row with `REPLICA IDENTITY FULL`.
        old: Vec<Value>,
    },
    Truncate {
        relations: Vec<Arc<Relation>>,
    },
    Commit {
        commit_lsn: Lsn,
        /// Where the next read starts: the position to bookmark after this transaction.
        end_lsn: Lsn,
        commit_time: i64,
    },
}

fn values(columns: &[Column<'_>], lsn: PgLsn) -> Result<Vec<Value>, LogicalError> {
    columns
        .iter()
        .map(|c| {
            Ok(match c {
                Column::Null => Value::Null,
                Column::UnchangedToast => Value::UnchangedToast,
                Column::Text(_) => Value::Text(
                    c.text()
                        .expect("text column")
                        .map_err(|source| LogicalError::Decode { lsn, source })?
                        .to_owned(),
                ),
                // We never ask for binary; treat it as an error rather than guess.
                Column::Binary(_) => {
                    return Err(LogicalError::Decode {
                        lsn,
                        source: pgoutput::DecodeError::UnknownColumnKind {
                            kind: 'b',
                            offset: 0,
                        },
                    })
                }
            })
        })
        .collect()
}

/// Turns pgoutput messages into [`Change`]s, whatever transport brought
/// them: keeps each table's latest Relation message and attaches it to the
/// changes that follow.
#[derive(Debug, Default)]
pub struct Decoder {
    relations: HashMap<u32, Arc<Relation>>,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    /// The change one message carries, or `None` for a message that carries
    /// nothing to sync (a Relation, which it records; origins, types and
    /// logical messages: our heartbeats among them, whose transactions still
    /// end in a Commit that moves the read position). `lsn` is the message's
    /// WAL position, for errors (the walsender sends 0 for Relation messages).
    pub fn decode(&mut self, lsn: Lsn, data: &[u8]) -> Result<Option<Change>, LogicalError> {
        let lsn = PgLsn::from(lsn);
        let message =
            pgoutput::decode(data).map_err(|source| LogicalError::Decode { lsn, source })?;
        let relation = |id: u32| {
            self.relations
                .get(&id)
                .cloned()
                .ok_or(LogicalError::UnknownRelation(id))
        };
        let change = match message {
            Message::Relation(r) => {
                self.relations.insert(r.id, Arc::new(r));
                return Ok(None);
            }
            Message::Begin(b) => Change::Begin {
                xid: b.xid,
                final_lsn: b.final_lsn,
                commit_time: b.commit_time,
            },
            Message::Commit(c) => Change::Commit {
                commit_lsn: c.commit_lsn,
                end_lsn: c.end_lsn,
                commit_time: c.commit_time,
            },
            Message::Insert(i) => Change::Insert {
                relation: relation(i.relation_id)?,
                new: values(&i.new.columns, lsn)?,
            },
            Message::Update(u) => Change::Update {
                relation: relation(u.relation_id)?,
                old: u
                    .old
                    .as_ref()
                    .map(|o| values(&o.tuple().columns, lsn))
                    .transpose()?,
                new: values(&u.new.columns, lsn)?,
            },
            Message::Delete(d) => Change::Delete {
                relation: relation(d.relation_id)?,
                old: match &d.old {
                    OldTuple::Key(t) | OldTuple::Full(t) => values(&t.columns, lsn)?,
                },
            },
            Message::Truncate(t) => Change::Truncate {
                relations: t
                    .relation_ids
                    .iter()
                    .map(|id| relation(*id))
                    .collect::<Result<_, _>>()?,
            },
            _ => return Ok(None),
        };
        Ok(Some(change))
    }
}
