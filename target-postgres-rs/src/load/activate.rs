//! ACTIVATE_VERSION: rows of older table versions are deleted (`hard_delete`)
//! or marked deleted; with `process_activate_version_messages` off, nothing
//! happens.
//!
//! With soft delete, an *opening* ACTIVATE_VERSION (one that arrives before
//! any RECORD of its stream in this run: a tap's first copy of a stream, and
//! every full-table run of taps that clear the version when done) is
//! deferred. Applied at once, it would mark every row of the table, and the
//! records of the new version would then rewrite each of them again to clear
//! the mark. Deferred, it is dropped when a later ACTIVATE_VERSION of the same
//! or a newer version arrives (the closing one, which marks a superset and
//! runs at once), and otherwise applied in a flush, after its merges and
//! before its COMMIT: before a RECORD of that stream of another version (or
//! none), so that such a row is never marked; before a SCHEMA that moves the
//! stream to another table; and at the end of input (a tap stopped by
//! `max_record_count` or a failure before its closing one leaves the table
//! as if it had been applied at once). Once its version's records are
//! coming, STATE does not apply it: a STATE printed in between shows the old
//! rows still live, as every later run of a tap that opens without
//! ACTIVATE_VERSION does. A STATE that arrives before any of them does (a
//! closing ACTIVATE_VERSION of an empty table looks like an opening one), so
//! that STATE covers it. A target killed in between
//! converges all the same: the resumed run carries the version in its
//! bookmark and ends with the closing ACTIVATE_VERSION, which marks every
//! older row. `hard_delete` stays immediate: its DELETE empties the table, so
//! the new version loads by direct COPY.

use std::io::Write;

use pg_connect::quote_ident;
use postgres::Client;
use singer_core::{ActivateVersionMessage, RecordMessage};

use super::error::db_err;
use super::{LoadError, Loader};
use crate::naming::{table_for_stream, TableName};
use crate::stream::{DELETED_AT, TABLE_VERSION};

/// Retiring the rows older than a version: the statement, with the version
/// as `$1`.
pub(super) struct Retire {
    table: TableName,
    version: i64,
    /// `None`: soft delete on a table without `_sdc_deleted_at` (nothing to mark).
    sql: Option<String>,
    /// Deferred, and a record of its version has arrived since.
    fed: bool,
}

impl<W: Write> Loader<W> {
    /// ACTIVATE_VERSION: rows of older versions are deleted (hard) or marked
    /// (soft), at once or deferred (see the module's comment).
    pub(super) fn activate_version(&mut self, m: ActivateVersionMessage) -> Result<(), LoadError> {
        if !self.settings.process_activate_version {
            tracing::debug!(stream = %m.stream, version = m.version,
                "ACTIVATE_VERSION ignored (process_activate_version_messages is off): rows of older versions kept");
            return Ok(());
        }
        let subsumed = match self.deferred.remove(&m.stream) {
            Some(d) if m.version >= d.version => {
                tracing::debug!(stream = %m.stream, deferred = d.version, version = m.version,
                    "the deferred ACTIVATE_VERSION is subsumed by this one");
                true
            }
            Some(d) => {
                self.flush_retiring(vec![(m.stream.clone(), d)])?;
                false
            }
            None => false,
        };
        let opening = !subsumed && !self.settings.hard_delete && !self.recorded.contains(&m.stream);
        if !opening {
            self.flush()?;
        }
        let Some(retire) = self.retirement(&m.stream, m.version)? else {
            return Ok(());
        };
        if opening && retire.sql.is_some() {
            tracing::debug!(stream = %m.stream, version = m.version,
                "ACTIVATE_VERSION deferred until its version's records are in (or another version's arrive)");
            self.deferred.insert(m.stream, retire);
            return Ok(());
        }
        let n = self.apply(&m.stream, &retire)?;
        self.report(&m.stream, m.version, n);
        Ok(())
    }

    /// Before a RECORD of `r`'s stream: a deferred ACTIVATE_VERSION of
    /// another version than the record's is applied first.
    pub(super) fn before_record(&mut self, r: &RecordMessage) -> Result<(), LoadError> {
        if !self.recorded.contains(&*r.stream) {
            self.recorded.insert(r.stream.to_string());
        }
        match self.deferred.get_mut(&*r.stream) {
            Some(d) if r.version == Some(d.version) => d.fed = true,
            Some(_) => {
                let d = self.deferred.remove(&*r.stream).expect("checked");
                self.flush_retiring(vec![(r.stream.to_string(), d)])?;
            }
            None => {}
        }
        Ok(())
    }

    /// Before a STATE: deferred ACTIVATE_VERSIONs none of whose records
    /// have come are applied, so that the STATE covers them.
    pub(super) fn before_state(&mut self) -> Result<(), LoadError> {
        let mut idle: Vec<String> = self
            .deferred
            .iter()
            .filter(|(_, d)| !d.fed)
            .map(|(s, _)| s.clone())
            .collect();
        if idle.is_empty() {
            return Ok(());
        }
        idle.sort();
        let due = idle
            .into_iter()
            .map(|s| {
                let d = self.deferred.remove(&s).expect("listed");
                (s, d)
            })
            .collect();
        self.flush_retiring(due)
    }

    /// Before a SCHEMA that puts `stream` in `table`: a deferred
    /// ACTIVATE_VERSION for another table is applied first.
    pub(super) fn before_schema(
        &mut self,
        stream: &str,
        table: &TableName,
    ) -> Result<(), LoadError> {
        if self.deferred.get(stream).is_some_and(|d| d.table != *table) {
            let d = self.deferred.remove(stream).expect("checked");
            self.flush_retiring(vec![(stream.to_owned(), d)])?;
        }
        Ok(())
    }

    /// The version whose records may follow a deferred ACTIVATE_VERSION of `stream`.
    pub(super) fn deferred_version(&self, stream: &str) -> Option<i64> {
        self.deferred.get(stream).map(|d| d.version)
    }

    /// Every deferred ACTIVATE_VERSION, for the last flush.
    pub(super) fn take_deferred(&mut self) -> Vec<(String, Retire)> {
        let mut all: Vec<(String, Retire)> = self.deferred.drain().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Applies deferred retirements on the loader's connection (inside the
    /// flush's open transaction, if any): (stream, version, rows), to report
    /// after the COMMIT.
    pub(super) fn apply_deferred(
        &mut self,
        deferred: Vec<(String, Retire)>,
    ) -> Result<Vec<(String, i64, u64)>, LoadError> {
        let mut done = Vec::new();
        for (stream, retire) in deferred {
            let n = self.apply(&stream, &retire)?;
            done.push((stream, retire.version, n));
        }
        Ok(done)
    }

    /// Logs and counts what retiring did.
    pub(super) fn report(&self, stream: &str, version: i64, n: u64) {
        // A FULL_TABLE run activates its version at its start and its end:
        // only a change is news at info level.
        if n == 0 {
            tracing::debug!(stream = %stream, version, "activated version: no rows of older versions");
        } else if self.settings.hard_delete {
            tracing::info!(stream = %stream, version, rows = n, "activated version: {n} rows of older versions deleted");
        } else {
            tracing::info!(
                stream = %stream, version, rows = n,
                "activated version: {n} rows of older versions marked deleted ({DELETED_AT}); live rows: WHERE {DELETED_AT} IS NULL"
            );
        }
        singer_core::progress::stream(stream).deleted(n);
    }

    /// What retiring the versions of `stream` older than `version` runs;
    /// `None` (logged) when its table has no `_sdc_table_version`.
    fn retirement(&mut self, stream: &str, version: i64) -> Result<Option<Retire>, LoadError> {
        let table = match self.streams.get(stream) {
            Some(st) => st.shape.table.clone(),
            None => table_for_stream(stream, &self.settings),
        };
        let qualified = table.qualified();
        let has = |client: &mut Client, col: &str| -> Result<bool, postgres::Error> {
            Ok(client
                .query_opt(
                    "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped",
                    &[&qualified, &col],
                )?
                .is_some())
        };
        let check = |e: postgres::Error| db_err(stream, &table, "ACTIVATE_VERSION", &e);
        if !has(&mut self.client, TABLE_VERSION).map_err(check)? {
            tracing::info!(stream = %stream, "ACTIVATE_VERSION for a table without `_sdc_table_version` (not created yet): nothing to do");
            return Ok(None);
        }
        let v = quote_ident(TABLE_VERSION);
        let sql = if self.settings.hard_delete {
            Some(format!(
                "DELETE FROM {qualified} WHERE {v} IS NULL OR {v} < $1"
            ))
        } else if has(&mut self.client, DELETED_AT).map_err(check)? {
            let d = quote_ident(DELETED_AT);
            // The statement's time, also when it runs in a flush's transaction.
            Some(format!(
                "UPDATE {qualified} SET {d} = statement_timestamp() WHERE ({v} IS NULL OR {v} < $1) AND {d} IS NULL"
            ))
        } else {
            None
        };
        Ok(Some(Retire {
            table,
            version,
            sql,
            fed: false,
        }))
    }

    /// Runs a retirement: the rows it deleted or marked.
    fn apply(&mut self, stream: &str, retire: &Retire) -> Result<u64, LoadError> {
        let Some(sql) = &retire.sql else {
            return Ok(0);
        };
        self.client
            .execute(sql, &[&retire.version])
            .map_err(|e| db_err(stream, &retire.table, "ACTIVATE_VERSION", &e))
    }
}
