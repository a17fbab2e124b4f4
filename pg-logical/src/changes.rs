//! The changes committed up to an LSN, read with
//! `pg_logical_slot_peek_binary_changes`: peeked, so nothing is consumed
//! before the destination has committed it (the slot is advanced separately).
//! Rows are streamed from the server and decoded one at a time: memory does
//! not grow with the number of changes.

use std::collections::HashMap;
use std::sync::Arc;

use fallible_iterator::FallibleIterator;
use postgres::types::PgLsn;
use postgres::{Client, RowIter};

use crate::pgoutput::{self, Column, Message, OldTuple, Relation};
use crate::{db, LogicalError, Lsn};

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

/// Streams the changes of transactions committed before `upto`.
pub struct ChangeStream<'c> {
    rows: RowIter<'c>,
    relations: HashMap<u32, Arc<Relation>>,
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

impl<'c> ChangeStream<'c> {
    /// Starts reading `slot` through `publication` up to `upto` (exclusive of
    /// transactions committing at or after it), with the pgoutput options
    /// server `server_version` (`server_version_num`) knows.
    pub fn open(
        client: &'c mut Client,
        slot: &str,
        publication: &str,
        upto: Lsn,
        server_version: u32,
    ) -> Result<Self, LogicalError> {
        let publication_names = pg_connect::quote_ident(publication);
        let upto = PgLsn::from(upto);
        let params: [&(dyn postgres::types::ToSql + Sync); 3] = [&slot, &upto, &publication_names];
        // `messages` exists from PostgreSQL 14; before it a transaction that
        // wrote only a logical message (the heartbeat) is sent without it.
        let messages = if server_version >= 140000 {
            ", 'messages', 'true'"
        } else {
            ""
        };
        let sql = format!(
            "SELECT lsn, data FROM pg_logical_slot_peek_binary_changes(\
             $1, $2, NULL, 'proto_version', '1', 'publication_names', $3{messages})"
        );
        let rows = client
            .query_raw(sql.as_str(), params)
            .map_err(db("reading changes from the replication slot"))?;
        Ok(ChangeStream {
            rows,
            relations: HashMap::new(),
        })
    }

    /// The next change and the LSN of its WAL record, or `None` at the end.
    pub fn next_change(&mut self) -> Result<Option<(Lsn, Change)>, LogicalError> {
        loop {
            let Some(row) = self
                .rows
                .next()
                .map_err(db("reading changes from the replication slot"))?
            else {
                return Ok(None);
            };
            let lsn: PgLsn = row.get(0);
            let data: &[u8] = row.get(1);
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
                    continue;
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
                // Origins, types and logical messages (our heartbeats among
                // them) carry nothing to sync; their transactions still end
                // in a Commit that moves the read position.
                _ => continue,
            };
            return Ok(Some((lsn.into(), change)));
        }
    }
}
