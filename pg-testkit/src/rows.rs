//! Reading what landed in a test database, as text: one value, a table's row
//! count, a schema's tables, or whole rows as text COPY lines.

use std::io::Read;

use crate::TestDb;

/// One text value (`None` for NULL or no row).
pub fn text(db: &TestDb, sql: &str) -> Option<String> {
    db.client()
        .query_opt(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .and_then(|r| r.get(0))
}

/// `count(*)` of a table, `None` when it doesn't exist.
pub fn count(db: &TestDb, schema: &str, table: &str) -> Option<i64> {
    let mut c = db.client();
    // The server quotes the name (and says whether the table exists).
    let name: Option<String> = c
        .query_one(
            "SELECT to_regclass(format('%I.%I', $1::text, $2::text))::text",
            &[&schema, &table],
        )
        .unwrap()
        .get(0);
    let name = name?;
    Some(
        c.query_one(&format!("SELECT count(*) FROM {name}"), &[])
            .unwrap()
            .get(0),
    )
}

/// Tables in a schema with their row counts, sorted by name.
pub fn tables(db: &TestDb, schema: &str) -> Vec<(String, i64)> {
    let names: Vec<String> = db
        .client()
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
            &[&schema],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    names
        .into_iter()
        .map(|n| {
            let c = count(db, schema, &n).unwrap();
            (n, c)
        })
        .collect()
}

/// Rows of `columns` (one text COPY line each, under pinned session
/// settings, so that equal values print equally), sorted; `filter` is an SQL
/// condition such as `_sdc_deleted_at IS NULL`.
pub fn table_rows(
    client: &mut postgres::Client,
    schema: &str,
    table: &str,
    columns: &[&str],
    filter: Option<&str>,
) -> Vec<String> {
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
             SET extra_float_digits = 3; SET bytea_output = 'hex'",
        )
        .unwrap();
    let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    // The server quotes the names.
    let names = client
        .query_one(
            "SELECT format('%I.%I', $1::text, $2::text), \
             (SELECT string_agg(quote_ident(c), ', ' ORDER BY n) FROM unnest($3::text[]) WITH ORDINALITY u(c, n))",
            &[&schema, &table, &columns],
        )
        .unwrap();
    let (table, columns): (String, String) = (names.get(0), names.get(1));
    let sql = format!(
        "COPY (SELECT {columns} FROM {table} WHERE {f}) TO STDOUT",
        f = filter.unwrap_or("true")
    );
    let mut text = String::new();
    client
        .copy_out(sql.as_str())
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .read_to_string(&mut text)
        .unwrap();
    let mut values: Vec<String> = text.lines().map(str::to_owned).collect();
    values.sort();
    values
}
