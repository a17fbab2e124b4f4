//! ACTIVATE_VERSION: after everything before it is committed, rows of older
//! table versions are deleted (`hard_delete`) or marked deleted; with
//! `process_activate_version_messages` off, nothing happens.

use std::io::Write;

use pg_connect::quote_ident;
use postgres::Client;
use singer_core::ActivateVersionMessage;

use super::error::db_err;
use super::{LoadError, Loader};
use crate::naming::table_for_stream;
use crate::stream::{DELETED_AT, TABLE_VERSION};

impl<W: Write> Loader<W> {
    /// ACTIVATE_VERSION: rows of older versions are deleted (hard) or marked (soft).
    pub(super) fn activate_version(&mut self, m: ActivateVersionMessage) -> Result<(), LoadError> {
        if !self.settings.process_activate_version {
            tracing::debug!(stream = %m.stream, version = m.version,
                "ACTIVATE_VERSION ignored (process_activate_version_messages is off): rows of older versions kept");
            return Ok(());
        }
        self.flush()?;
        let table = match self.streams.get(&m.stream) {
            Some(st) => st.shape.table.clone(),
            None => table_for_stream(&m.stream, &self.settings),
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
        let check = |e: postgres::Error| db_err(&m.stream, &table, "ACTIVATE_VERSION", &e);
        if !has(&mut self.client, TABLE_VERSION).map_err(check)? {
            tracing::info!(stream = %m.stream, "ACTIVATE_VERSION for a table without `_sdc_table_version` (not created yet): nothing to do");
            return Ok(());
        }
        let v = quote_ident(TABLE_VERSION);
        let n = if self.settings.hard_delete {
            self.client.execute(
                &format!("DELETE FROM {qualified} WHERE {v} IS NULL OR {v} < $1"),
                &[&m.version],
            )
        } else if has(&mut self.client, DELETED_AT).map_err(check)? {
            let d = quote_ident(DELETED_AT);
            self.client.execute(
                &format!(
                    "UPDATE {qualified} SET {d} = now() WHERE ({v} IS NULL OR {v} < $1) AND {d} IS NULL"
                ),
                &[&m.version],
            )
        } else {
            Ok(0)
        }
        .map_err(check)?;
        // A FULL_TABLE run activates its version at its start and its end:
        // only a change is news at info level.
        if n == 0 {
            tracing::debug!(stream = %m.stream, version = m.version, "activated version: no rows of older versions");
        } else if self.settings.hard_delete {
            tracing::info!(stream = %m.stream, version = m.version, rows = n, "activated version: {n} rows of older versions deleted");
        } else {
            tracing::info!(
                stream = %m.stream, version = m.version, rows = n,
                "activated version: {n} rows of older versions marked deleted ({DELETED_AT}); live rows: WHERE {DELETED_AT} IS NULL"
            );
        }
        singer_core::progress::stream(&m.stream).deleted(n);
        Ok(())
    }
}
