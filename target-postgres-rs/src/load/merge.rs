//! Flush-time steps for a stream's batch: staged rows merged into the table
//! (the last record per key wins), then hard deletes.

use pg_connect::quote_ident;

use super::StreamLoad;
use crate::evolve::key_list;
use crate::naming::TableName;
use crate::stream::DELETED_AT;

/// Staging → table: the last record per key wins (the statements, run at flush).
pub(super) fn merge_sql(st: &StreamLoad) -> String {
    let table = st.shape.table.qualified();
    let stage = quote_ident(&st.stage);
    let cols = &st.shape.column_list;
    let bare = cols.trim_start_matches('(').trim_end_matches(')');
    let keys = key_list(&st.shape);
    let select = if st.batch.repeats() {
        format!("SELECT DISTINCT ON ({keys}) {bare} FROM {stage} ORDER BY {keys}, ctid DESC")
    } else {
        format!("SELECT {bare} FROM {stage}")
    };
    if st.info.unique_on_keys {
        let updates: Vec<String> = st
            .shape
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !st.shape.keys.contains(i))
            .map(|(_, c)| {
                let q = quote_ident(&c.name);
                format!("{q} = EXCLUDED.{q}")
            })
            .collect();
        let action = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        format!("INSERT INTO {table} {cols} {select} ON CONFLICT ({keys}) {action}")
    } else {
        // No unique index on the keys (a table made by hand): replace rows by key.
        let cond: Vec<String> = st
            .shape
            .keys
            .iter()
            .map(|&k| {
                let q = quote_ident(&st.shape.columns[k].name);
                format!("t.{q} = s.{q}")
            })
            .collect();
        format!(
            "DELETE FROM {table} t USING {stage} s WHERE {}; INSERT INTO {table} {cols} {select}",
            cond.join(" AND ")
        )
    }
}

/// `hard_delete`: rows whose record had `_sdc_deleted_at` set are removed.
pub(super) fn delete_deleted_sql(table: &TableName) -> String {
    format!(
        "DELETE FROM {} WHERE {} IS NOT NULL",
        table.qualified(),
        quote_ident(DELETED_AT)
    )
}
