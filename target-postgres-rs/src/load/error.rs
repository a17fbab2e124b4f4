//! Why a load failed: every error names the stream, the input line, the
//! column or the step (phase) where it can, and what to fix.

use pg_connect::{describe, quote_ident};
use postgres::error::SqlState;
use singer_core::{ReadError, WriteError};

use crate::evolve::{EvolveError, Step};
use crate::naming::TableName;
use crate::row::RowError;
use crate::stream::StreamShape;

/// Why a load failed. Each names the stream and input line where it can.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("input line {line}: RECORD for stream `{stream}` arrives before its SCHEMA")]
    NoSchema { line: usize, stream: String },
    #[error("input line {line} (stream `{stream}`): {problem}")]
    Schema {
        line: usize,
        stream: String,
        problem: String,
    },
    #[error("input line {line} (stream `{stream}`): {source}")]
    Row {
        line: usize,
        stream: String,
        source: RowError,
    },
    #[error(
        "input line {line} (stream `{stream}`): column `{column}`: cannot load value: {message}"
    )]
    Value {
        line: usize,
        stream: String,
        column: String,
        message: String,
    },
    #[error(
        "input line {line} (stream `{stream}`): record does not match the stream's SCHEMA {}: {message}; \
         fix the tap's SCHEMA or its records, or turn `validate_records` off",
        at_field(.pointer)
    )]
    Invalid {
        line: usize,
        stream: String,
        /// JSON pointer of the offending value (`""`: the record itself).
        pointer: String,
        message: String,
    },
    #[error("stream `{stream}` (table {table}): {what} failed: {message}")]
    Db {
        stream: String,
        table: String,
        what: &'static str,
        message: String,
    },
    #[error("{what} failed: {message}")]
    Session { what: &'static str, message: String },
    #[error("cannot write state: {0}")]
    Output(#[from] WriteError),
}

fn at_field(pointer: &str) -> String {
    if pointer.is_empty() {
        "at the record's top level".to_owned()
    } else {
        format!("at field `{pointer}`")
    }
}

pub(super) fn session(what: &'static str) -> impl Fn(postgres::Error) -> LoadError {
    move |e| LoadError::Session {
        what,
        message: describe(&e),
    }
}

pub(super) fn db_err(
    stream: &str,
    table: &TableName,
    what: &'static str,
    e: &postgres::Error,
) -> LoadError {
    LoadError::Db {
        stream: stream.to_owned(),
        table: table.qualified(),
        what,
        message: describe(e),
    }
}

/// The session's role and database, named in the GRANT a fix needs.
pub(super) struct Who {
    pub role: String,
    pub database: String,
}

impl Who {
    pub(super) fn of(client: &mut postgres::Client) -> Who {
        match client.query_one("SELECT current_user::text, current_database()::text", &[]) {
            Ok(r) => Who {
                role: r.get(0),
                database: r.get(1),
            },
            Err(e) => {
                tracing::debug!("cannot read the session's role: {}", describe(&e));
                Who {
                    role: "<role>".into(),
                    database: "<database>".into(),
                }
            }
        }
    }
}

/// A failure to create or alter a table, with the GRANT (or the ownership
/// change) that fixes a missing privilege.
pub(super) fn evolve_err(stream: &str, table: &TableName, e: &EvolveError, who: &Who) -> LoadError {
    let mut message = describe(&e.source);
    if let Some(fix) = privilege_fix(e, table, who).or_else(|| views_fix(e, table)) {
        message.push_str("; ");
        message.push_str(&fix);
    }
    LoadError::Db {
        stream: stream.to_owned(),
        table: table.qualified(),
        what: e.step.describe(),
        message,
    }
}

fn privilege_fix(e: &EvolveError, table: &TableName, who: &Who) -> Option<String> {
    let db = e.source.as_db_error()?;
    if db.code() == &SqlState::UNDEFINED_OBJECT && db.message().starts_with("role ") {
        return Some(
            "fix: create the role (CREATE ROLE <name>; NOLOGIN will do), or remove it from \
             default_target_schema_select_permission or the schema_mapping entry's \
             target_schema_select_permissions"
                .into(),
        );
    }
    if db.code() != &SqlState::INSUFFICIENT_PRIVILEGE {
        return None;
    }
    let role = quote_ident(&who.role);
    let schema = quote_ident(&table.schema);
    let qualified = table.qualified();
    let text = db.message();
    Some(if e.step == Step::CreateSchema {
        format!(
            "role {role} may not create schema {schema}; fix: GRANT CREATE ON DATABASE {} TO {role}, \
             or create the schema for it: CREATE SCHEMA {schema} AUTHORIZATION {role}",
            quote_ident(&who.database)
        )
    } else if text.starts_with("permission denied for schema") {
        format!("fix: GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}")
    } else if text.starts_with("must be owner") {
        let owner = e.owner.as_deref().map(quote_ident);
        let owner = owner.as_deref().unwrap_or("another role");
        format!(
            "table {qualified} is owned by {owner}, not by {role}, and only its owner may add or \
             widen columns; fix: as {owner} or a superuser, ALTER TABLE {qualified} OWNER TO {role}"
        )
    } else if text.starts_with("permission denied for table") {
        format!("fix: GRANT SELECT, INSERT, UPDATE, DELETE ON {qualified} TO {role}")
    } else {
        return None;
    })
}

/// A widening under views failed: which views, and how to widen by hand.
fn views_fix(e: &EvolveError, table: &TableName) -> Option<String> {
    let v = e.views.as_ref()?;
    let qualified = table.qualified();
    let col = quote_ident(&v.column);
    let by_hand = format!(
        "ALTER TABLE {qualified} ALTER COLUMN {col} TYPE {}",
        v.new_type
    );
    Some(if v.kept.is_empty() {
        format!(
            "the views {} depend on column {col}; they were dropped and recreated around the \
             widening in one transaction, which was rolled back (nothing changed); fix: drop \
             them, {by_hand}, and recreate them adjusted to the new type, then run again",
            v.names.join(", ")
        )
    } else {
        format!(
            "the views {} depend on column {col}, and {} cannot be recreated by the target (a \
             materialized view, or a view with triggers, rules or column defaults), so none was \
             touched; fix: drop them, {by_hand}, recreate them, then run again",
            v.names.join(", "),
            v.kept.join(", ")
        )
    })
}

/// A COPY failure, naming the input line and column when Postgres says which.
pub(super) fn copy_error(e: &postgres::Error, shape: &StreamShape, lines: &[usize]) -> LoadError {
    let stream = shape.stream.clone();
    if let Some(db) = e.as_db_error() {
        if let Some(place) = db.where_() {
            // "COPY name, line 3, column c: "value""
            let copy_line = place
                .split(", line ")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<usize>().ok());
            let after_col = place.split_once(", column ").map(|(_, r)| r);
            if let (Some(n), Some(rest)) = (copy_line, after_col) {
                let column = shape
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .filter(|c| rest.starts_with(&format!("{c}: ")))
                    .max_by_key(|c| c.len())
                    .unwrap_or(rest)
                    .to_owned();
                let value = rest.strip_prefix(&format!("{column}: ")).unwrap_or("");
                let mut message = db.message().to_owned();
                if !value.is_empty() && !message.contains(value) {
                    message.push_str(&format!(" (value {value})"));
                }
                return LoadError::Value {
                    line: lines.get(n.wrapping_sub(1)).copied().unwrap_or(0),
                    stream,
                    column,
                    message,
                };
            }
        }
    }
    db_err(&stream, &shape.table, "COPY", e)
}
