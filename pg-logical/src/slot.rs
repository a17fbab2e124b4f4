//! Prerequisites, publications and replication slots.

use postgres::types::PgLsn;
use postgres::Client;

use crate::{db, format_lsn, LogicalError, Lsn};
use pg_connect::{quote_ident, quote_qualified};

/// Checks `wal_level = logical` and that the role may replicate.
pub fn check_prerequisites(client: &mut Client) -> Result<(), LogicalError> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_user::text, \
             (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .map_err(db("checking wal_level and the REPLICATION attribute"))?;
    let wal_level: String = row.get(0);
    if wal_level != "logical" {
        return Err(LogicalError::WalLevel(wal_level));
    }
    let user: String = row.get(1);
    if !row.get::<_, Option<bool>>(2).unwrap_or(false) {
        return Err(LogicalError::NoReplication(user));
    }
    Ok(())
}

/// The server's `server_version_num` (e.g. 150004): which options exist.
pub fn server_version(client: &mut Client) -> Result<u32, LogicalError> {
    let text: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .map_err(db("reading the server version"))?
        .get(0);
    Ok(text.trim().parse().unwrap_or(0))
}

/// The publication options a server supports, asked for when this tap creates one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicationOptions {
    /// `publish_via_partition_root` (PostgreSQL 13+): a partitioned table's
    /// changes arrive as the parent's, so the parent can be one stream.
    pub via_partition_root: bool,
    /// `publish_generated_columns = stored` (PostgreSQL 18+): stored generated
    /// columns carry their values in the log.
    pub generated_columns: bool,
}

impl PublicationOptions {
    pub fn for_server(server_version: u32) -> Self {
        PublicationOptions {
            via_partition_root: server_version >= 130000,
            generated_columns: server_version >= 180000,
        }
    }

    fn with_clause(&self) -> String {
        let mut options = Vec::new();
        if self.via_partition_root {
            options.push("publish_via_partition_root = true");
        }
        if self.generated_columns {
            options.push("publish_generated_columns = stored");
        }
        if options.is_empty() {
            String::new()
        } else {
            format!(" WITH ({})", options.join(", "))
        }
    }
}

/// Makes sure publication `name` exists and includes every table, whole
/// (see [`publish_tables`]). Returns whether tables joined the publication
/// now: transactions older than that may have written to them unpublished
/// (see [`wait_for_older_transactions`]).
pub fn ensure_publication(
    client: &mut Client,
    name: &str,
    tables: &[(String, String)],
    options: &PublicationOptions,
    needs_via_root: bool,
) -> Result<bool, LogicalError> {
    let specs: Vec<TableSpec> = tables
        .iter()
        .map(|(schema, table)| TableSpec::whole(schema, table))
        .collect();
    let mut joined = false;
    for table in publish_tables(client, name, &specs, options, needs_via_root)? {
        joined |= table?;
    }
    Ok(joined)
}

/// Makes sure publication `name` exists and lists the table of every spec:
/// creates it (with `options`), or adds the missing tables, when the role
/// may; otherwise says what to run. A table joins with its row filter and
/// column list in the same statement (PostgreSQL 15+; pass whole tables
/// before), so none of its changes is decoded under another filter; a table
/// already listed keeps what it has (see [`set_table_spec`]). An existing
/// publication is switched to `publish_via_partition_root` when
/// `needs_via_root` (a partitioned table is read).
///
/// Returns, per spec, whether its table joined the publication now:
/// transactions older than that may have written to it unpublished (see
/// [`wait_for_older_transactions`]), and a reader positioned before now
/// missed its changes in between. Or why it could not join: a table with a
/// row filter or column list joins alone, and one the server refuses, or
/// that would make the application's own UPDATEs or DELETEs fail, stays out.
pub fn publish_tables(
    client: &mut Client,
    name: &str,
    specs: &[TableSpec],
    options: &PublicationOptions,
    needs_via_root: bool,
) -> Result<Vec<Result<bool, LogicalError>>, LogicalError> {
    let exists = client
        .query_opt(
            "SELECT puballtables, (to_jsonb(p) ->> 'pubviaroot')::bool FROM pg_publication p WHERE pubname = $1",
            &[&name],
        )
        .map_err(db("reading publications"))?;
    let names = |specs: &[&TableSpec]| {
        specs
            .iter()
            .map(|s| s.qualified())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let joins: Vec<Join> = match exists {
        None => {
            let whole: Vec<&TableSpec> = specs.iter().filter(|s| s.is_whole()).collect();
            let listed = if whole.is_empty() {
                String::new()
            } else {
                format!(" FOR TABLE {}", names(&whole))
            };
            let sql = format!(
                "CREATE PUBLICATION {}{listed}{}",
                quote_ident(name),
                options.with_clause()
            );
            client.batch_execute(&sql).map_err(|e| {
                if is_permission_error(&e) {
                    LogicalError::NoPublication(name.to_owned())
                } else {
                    db("creating the publication")(e)
                }
            })?;
            tracing::info!(
                publication = name,
                tables = whole.len(),
                "created publication"
            );
            specs.iter().map(|s| Join::new(s, true)).collect()
        }
        Some(row) if row.get::<_, bool>(0) => vec![Join::Listed; specs.len()],
        Some(row) => {
            if needs_via_root && row.get::<_, Option<bool>>(1) == Some(false) {
                let sql = format!(
                    "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                    quote_ident(name)
                );
                client.batch_execute(&sql).map_err(|e| {
                    if is_permission_error(&e) {
                        LogicalError::PublicationNotViaRoot(name.to_owned())
                    } else {
                        db("setting publish_via_partition_root")(e)
                    }
                })?;
                tracing::info!(
                    publication = name,
                    "publication now publishes via partition root"
                );
            }
            let included: Vec<(String, String)> = client
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&name],
                )
                .map_err(db("reading the publication's tables"))?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let joins: Vec<Join> = specs
                .iter()
                .map(|s| {
                    let missing = !included.iter().any(|(i, t)| *i == s.schema && *t == s.name);
                    Join::new(s, missing)
                })
                .collect();
            let whole: Vec<&TableSpec> = specs
                .iter()
                .zip(&joins)
                .filter_map(|(s, join)| (*join == Join::Joined).then_some(s))
                .collect();
            if !whole.is_empty() {
                let sql = format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(name),
                    names(&whole)
                );
                client.batch_execute(&sql).map_err(|e| {
                    if is_permission_error(&e) {
                        LogicalError::PublicationMissingTables {
                            publication: name.to_owned(),
                            tables: names(&whole),
                        }
                    } else {
                        db("adding tables to the publication")(e)
                    }
                })?;
                tracing::info!(
                    publication = name,
                    added = whole.len(),
                    "added tables to publication"
                );
            }
            joins
        }
    };
    Ok(specs
        .iter()
        .zip(joins)
        .map(|(spec, join)| match join {
            Join::Listed => Ok(false),
            Join::Joined => Ok(true),
            Join::Alone => add_table(client, name, spec).map(|()| true),
        })
        .collect())
}

/// How a table of [`publish_tables`] stands in the publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Join {
    /// Listed already.
    Listed,
    /// Whole: joins with the other whole tables, in one statement.
    Joined,
    /// With a row filter or column list: joins in a statement of its own,
    /// so that an error is the table's.
    Alone,
}

impl Join {
    fn new(spec: &TableSpec, missing: bool) -> Join {
        match (missing, spec.is_whole()) {
            (false, _) => Join::Listed,
            (true, true) => Join::Joined,
            (true, false) => Join::Alone,
        }
    }
}

/// Adds a table with its row filter and column list to publication `name`,
/// in a transaction that commits only if they leave the application's
/// writes working.
fn add_table(client: &mut Client, name: &str, spec: &TableSpec) -> Result<(), LogicalError> {
    let table = spec.qualified();
    let mut tx = client
        .transaction()
        .map_err(db("adding a table to the publication"))?;
    // The extended protocol: a row filter is one statement's part only.
    tx.execute(
        &format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(name),
            spec.listed()
        ),
        &[],
    )
    .map_err(|e| {
        if is_permission_error(&e) {
            LogicalError::PublicationMissingTables {
                publication: name.to_owned(),
                tables: table.clone(),
            }
        } else {
            LogicalError::Db {
                context: format!(
                    "adding {table} with its row filter and column list to publication `{name}`"
                ),
                message: pg_connect::describe(&e),
            }
        }
    })?;
    check_writes(&mut tx, &table)?;
    tx.commit()
        .map_err(db("adding a table to the publication"))?;
    tracing::info!(publication = name, table = %table, "added the table with its row filter and column list to the publication");
    Ok(())
}

/// What a publication sends of one table (PostgreSQL 15+): only the rows
/// `row_filter` matches, only the `columns` listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub schema: String,
    pub name: String,
    /// A condition on the table's columns, already checked to be one
    /// condition; it is sent through the extended protocol, which runs one
    /// statement only.
    pub row_filter: Option<String>,
    /// `None`: every column.
    pub columns: Option<Vec<String>>,
}

impl TableSpec {
    /// Every row and every column of `schema.name`.
    pub fn whole(schema: &str, name: &str) -> Self {
        TableSpec {
            schema: schema.to_owned(),
            name: name.to_owned(),
            row_filter: None,
            columns: None,
        }
    }

    fn is_whole(&self) -> bool {
        self.row_filter.is_none() && self.columns.is_none()
    }

    fn qualified(&self) -> String {
        quote_qualified(&self.schema, &self.name)
    }

    /// The table as a publication lists it: `"s"."t" ("a", "b") WHERE (...)`.
    fn listed(&self) -> String {
        let mut listed = self.qualified();
        if let Some(columns) = &self.columns {
            let names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
            listed.push_str(&format!(" ({})", names.join(", ")));
        }
        if let Some(filter) = &self.row_filter {
            listed.push_str(&format!(" WHERE ({filter})"));
        }
        listed
    }
}

/// A table's row filter (as the server prints it) and column list in a publication.
type PublishedSpec = (Option<String>, Option<Vec<String>>);

/// The row filter and column list a publication has for a table, if it lists the table.
fn published_spec(
    client: &mut impl postgres::GenericClient,
    publication: &str,
    table: &str,
) -> Result<Option<PublishedSpec>, postgres::Error> {
    let row = client.query_opt(
        "SELECT pg_get_expr(r.prqual, r.prrelid), \
                (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
                  WHERE a.attrelid = r.prrelid AND a.attnum = ANY(r.prattrs)) \
           FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
          WHERE p.pubname = $1 AND r.prrelid = $2::text::regclass",
        &[&publication, &table],
    )?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Gives a table of publication `name` the row filter and column list of
/// `spec` (PostgreSQL 15+), replacing what it had; the table must already be
/// in the publication. Nothing changes when it has them already. A filter or
/// column list that would make the application's own UPDATEs or DELETEs of
/// the table fail (PostgreSQL requires replica identity columns in both) is
/// refused with the server's words, and nothing changes. Returns whether the
/// publication changed.
pub fn set_table_spec(
    client: &mut Client,
    name: &str,
    spec: &TableSpec,
) -> Result<bool, LogicalError> {
    let table = spec.qualified();
    let fail = |context: &str| {
        let context = format!("{context} of {table} in publication `{name}`");
        move |e: postgres::Error| LogicalError::Db {
            context,
            message: pg_connect::describe(&e),
        }
    };
    let mut tx = client
        .transaction()
        .map_err(fail("changing the table spec"))?;
    let before = published_spec(&mut tx, name, &table).map_err(fail("reading the row filter"))?;
    let Some(before) = before else {
        // Published FOR ALL TABLES or TABLES IN SCHEMA: no per-table options.
        if spec.row_filter.is_some() {
            return Err(LogicalError::NoRowFilterHere {
                publication: name.to_owned(),
                table,
            });
        }
        if spec.columns.is_some() {
            tracing::info!(publication = name, table = %table, "the publication does not list the table, so it cannot have a column list: every column is decoded and sent, and the tap drops the deselected ones");
        }
        return Ok(false);
    };
    if before == (None, None) && spec.is_whole() {
        return Ok(false);
    }
    let listed = spec.listed();
    // One transaction: every other transaction's changes are decoded under
    // the old spec or the new one, never without the table or unfiltered.
    tx.execute(
        &format!("ALTER PUBLICATION {} DROP TABLE {table}", quote_ident(name)),
        &[],
    )
    .map_err(fail("changing the row filter"))?;
    tx.execute(
        &format!("ALTER PUBLICATION {} ADD TABLE {listed}", quote_ident(name)),
        &[],
    )
    .map_err(fail("setting the row filter and column list"))?;
    let after = published_spec(&mut tx, name, &table).map_err(fail("reading the row filter"))?;
    if after.as_ref() == Some(&before) {
        // The same in the server's terms: leave the catalog untouched.
        return Ok(false);
    }
    check_writes(&mut tx, &table)?;
    tx.commit().map_err(fail("changing the row filter"))?;
    tracing::info!(publication = name, table = %table, "set the table's row filter and column list in the publication");
    Ok(true)
}

/// Refuses a row filter or column list of `table` just set in `tx` that
/// would make the application's own UPDATEs or DELETEs of it fail: the
/// server checks replica identity columns only when a row is updated or
/// deleted, so this plans (not runs) both.
fn check_writes(tx: &mut postgres::Transaction<'_>, table: &str) -> Result<(), LogicalError> {
    let breaks = |e: postgres::Error| LogicalError::BreaksWrites {
        table: table.to_owned(),
        message: pg_connect::describe(&e),
    };
    let column: Option<String> = tx
        .query_opt(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
              AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum LIMIT 1",
            &[&table],
        )
        .map_err(db("reading the columns"))?
        .map(|r| r.get(0));
    if let Some(column) = column {
        let c = quote_ident(&column);
        tx.execute(
            &format!("EXPLAIN UPDATE {table} SET {c} = {c} WHERE false"),
            &[],
        )
        .map_err(breaks)?;
    }
    tx.execute(&format!("EXPLAIN DELETE FROM {table} WHERE false"), &[])
        .map_err(breaks)?;
    Ok(())
}

/// Waits until every transaction that was running when this is called has
/// ended, as `CREATE SUBSCRIPTION`'s table sync does. A transaction that
/// wrote to a table before the table joined the publication has those
/// changes decoded as unpublished; once it has committed, a copy taken
/// afterwards sees them instead.
pub fn wait_for_older_transactions(client: &mut Client) -> Result<(), LogicalError> {
    let snapshot: String = client
        .query_one("SELECT txid_current_snapshot()::text", &[])
        .map_err(db("reading the running transactions"))?
        .get(0);
    let started = std::time::Instant::now();
    let mut logged = std::time::Duration::ZERO;
    loop {
        let row = client
            .query_one(
                "SELECT count(*), string_agg(DISTINCT a.pid::text, ', ') \
                   FROM txid_snapshot_xip($1::text::txid_snapshot) x \
                   LEFT JOIN pg_stat_activity a ON a.backend_xid::text::bigint = x % 4294967296 \
                  WHERE txid_status(x) = 'in progress'",
                &[&snapshot],
            )
            .map_err(db("waiting for older transactions"))?;
        if row.get::<_, i64>(0) == 0 {
            return Ok(());
        }
        if started.elapsed() >= logged {
            tracing::info!(
                transactions = row.get::<_, i64>(0),
                pids = row.get::<_, Option<String>>(1).unwrap_or_default(),
                "waiting for transactions older than the publication change to end before copying"
            );
            logged += std::time::Duration::from_secs(10);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn is_permission_error(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    pub plugin: String,
    pub database: String,
    pub active_pid: Option<i32>,
    /// Changes up to here are confirmed (consumed): they can't be read again.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// WAL from here on is kept on the server for this slot.
    pub restart_lsn: Option<Lsn>,
    /// Bytes of WAL the server keeps for this slot (`pg_current_wal_lsn() - restart_lsn`);
    /// it shrinks only at the server's next checkpoint after the slot advances.
    pub retained_bytes: i64,
    /// Bytes of WAL written since the confirmed position: the replication lag.
    pub pending_bytes: i64,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+): `lost`
    /// means the server removed WAL the slot needed.
    pub wal_status: Option<String>,
    /// Bytes of WAL that can still be written before the slot is at risk of
    /// being invalidated (PostgreSQL 13+, with `max_slot_wal_keep_size`).
    pub safe_wal_size: Option<i64>,
}

impl SlotInfo {
    /// The server invalidated the slot: the WAL it needed is gone.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// Reads a slot, if it exists.
pub fn slot_info(client: &mut Client, slot: &str) -> Result<Option<SlotInfo>, LogicalError> {
    let row = client
        .query_opt(
            "SELECT slot_name::text, coalesce(plugin::text, ''), coalesce(database::text, ''), active_pid, \
             confirmed_flush_lsn, restart_lsn, \
             coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint, \
             coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint, \
             to_jsonb(s) ->> 'wal_status', (to_jsonb(s) ->> 'safe_wal_size')::bigint \
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .map_err(db("reading the replication slot"))?;
    Ok(row.map(|r| SlotInfo {
        name: r.get(0),
        plugin: r.get(1),
        database: r.get(2),
        active_pid: r.get(3),
        confirmed_flush_lsn: r.get::<_, Option<PgLsn>>(4).map(Lsn::from),
        restart_lsn: r.get::<_, Option<PgLsn>>(5).map(Lsn::from),
        retained_bytes: r.get(6),
        pending_bytes: r.get(7),
        wal_status: r.get(8),
        safe_wal_size: r.get(9),
    }))
}

/// Creates a pgoutput slot unless it exists; checks an existing one is ours to use.
/// Returns the slot and whether it was created now.
pub fn create_slot_if_missing(
    client: &mut Client,
    slot: &str,
) -> Result<(SlotInfo, bool), LogicalError> {
    if let Some(info) = slot_info(client, slot)? {
        check_usable(client, &info)?;
        return Ok((info, false));
    }
    client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .map_err(db("creating the replication slot"))?;
    let info = slot_info(client, slot)?.ok_or_else(|| LogicalError::NoSlot(slot.to_owned()))?;
    tracing::info!(slot, lsn = %info.confirmed_flush_lsn.map(format_lsn).unwrap_or_default(), "created replication slot");
    Ok((info, true))
}

fn check_usable(client: &mut Client, info: &SlotInfo) -> Result<(), LogicalError> {
    if info.plugin != "pgoutput" {
        return Err(LogicalError::WrongPlugin {
            slot: info.name.clone(),
            plugin: info.plugin.clone(),
        });
    }
    let current: String = client
        .query_one("SELECT current_database()::text", &[])
        .map_err(db("reading the current database"))?
        .get(0);
    if info.database != current {
        return Err(LogicalError::OtherDatabase {
            slot: info.name.clone(),
            database: info.database.clone(),
        });
    }
    if let Some(pid) = info.active_pid {
        return Err(LogicalError::SlotBusy {
            slot: info.name.clone(),
            pid,
        });
    }
    Ok(())
}

/// Moves the slot forward to `lsn` (never back): the server may then free the
/// WAL before it. Only call it with an LSN the destination has committed.
/// Returns the slot's confirmed position afterwards.
pub fn advance_slot(
    client: &mut Client,
    slot: &str,
    lsn: Lsn,
) -> Result<Option<Lsn>, LogicalError> {
    let info = slot_info(client, slot)?.ok_or_else(|| LogicalError::NoSlot(slot.to_owned()))?;
    check_usable(client, &info)?;
    if info.confirmed_flush_lsn.is_some_and(|c| c >= lsn) {
        return Ok(info.confirmed_flush_lsn);
    }
    client
        .query_one(
            "SELECT pg_replication_slot_advance($1, $2)",
            &[&slot, &PgLsn::from(lsn)],
        )
        .map_err(db("advancing the replication slot"))?;
    Ok(slot_info(client, slot)?.and_then(|i| i.confirmed_flush_lsn))
}

/// The server's current WAL flush position: logical decoding reads only
/// flushed WAL, so this (not the insert position, which is ahead of it under
/// `synchronous_commit = off`) is where a run can promise to have read to.
pub fn current_flush_lsn(client: &mut Client) -> Result<Lsn, LogicalError> {
    let lsn: PgLsn = client
        .query_one("SELECT pg_current_wal_flush_lsn()", &[])
        .map_err(db("reading the current WAL position"))?
        .get(0);
    Ok(lsn.into())
}

/// Writes a transactional logical-decoding message and returns its commit
/// position. pgoutput skips transactions that touch no published table, so a
/// run over a quiet publication would see no commit to bookmark and the slot
/// could never advance past unrelated WAL; the heartbeat's own commit gives
/// every run a position that is safe to confirm. Any role may call it.
pub fn heartbeat(client: &mut Client, prefix: &str) -> Result<Lsn, LogicalError> {
    let lsn: PgLsn = client
        .query_one(
            "SELECT pg_logical_emit_message(true, $1, 'heartbeat')",
            &[&prefix],
        )
        .map_err(db("writing a heartbeat to the WAL"))?
        .get(0);
    Ok(lsn.into())
}

/// Drops the slot if it exists. Returns whether it existed.
pub fn drop_slot(client: &mut Client, slot: &str) -> Result<bool, LogicalError> {
    if slot_info(client, slot)?.is_none() {
        return Ok(false);
    }
    client
        .query_one("SELECT pg_drop_replication_slot($1)", &[&slot])
        .map_err(db("dropping the replication slot"))?;
    Ok(true)
}

/// Drops the publication if it exists. Returns whether it existed.
pub fn drop_publication(client: &mut Client, name: &str) -> Result<bool, LogicalError> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .map_err(db("reading publications"))?
        .is_some();
    if exists {
        client
            .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(name)))
            .map_err(db("dropping the publication"))?;
    }
    Ok(exists)
}

/// A valid slot or publication name (lower-case letters, digits, `_`; at most
/// 63 bytes) made from free text such as `tap_postgres_rs_<database>`.
pub fn object_name(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::{Change, Decoder, Value};

    /// The ids of the inserts slot `slot` decodes through publication `p`.
    fn decoded_ids(c: &mut Client, slot: &str) -> Vec<String> {
        let rows = c
            .query(
                "SELECT lsn, data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
                 'proto_version', '1', 'publication_names', 'p')",
                &[&slot],
            )
            .unwrap();
        let mut decoder = Decoder::new();
        let mut ids = Vec::new();
        for r in rows {
            let lsn: PgLsn = r.get(0);
            if let Some(Change::Insert { new, .. }) =
                decoder.decode(lsn.into(), &r.get::<_, Vec<u8>>(1)).unwrap()
            {
                match &new[0] {
                    Value::Text(id) => ids.push(id.clone()),
                    other => panic!("an id: {other:?}"),
                }
            }
        }
        ids
    }

    /// A table joins the publication with its row filter in one statement:
    /// a change committed right after it (here: in its own transaction, by
    /// an event trigger) is decoded filtered, never unfiltered.
    #[test]
    fn a_table_joins_with_its_row_filter_at_once() {
        let db = pg_testkit::cluster().create_database("join_filtered");
        let mut c = db.client();
        c.batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); CREATE SEQUENCE ids; CREATE PUBLICATION p;
             CREATE FUNCTION write_t() RETURNS event_trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO t VALUES (nextval('ids')), (nextval('ids')); END $$;
             CREATE EVENT TRIGGER write_t ON ddl_command_end WHEN TAG IN ('ALTER PUBLICATION')
               EXECUTE FUNCTION write_t();",
        )
        .unwrap();
        let slot = object_name(&format!("s_{}", db.name));
        create_slot_if_missing(&mut c, &slot).unwrap();
        let spec = TableSpec {
            row_filter: Some("id % 2 = 0".into()),
            ..TableSpec::whole("public", "t")
        };
        let options = PublicationOptions::for_server(server_version(&mut c).unwrap());
        let mut joined = publish_tables(&mut c, "p", &[spec], &options, false).unwrap();
        let joined = joined.remove(0);
        if server_version(&mut c).unwrap() < 150000 {
            // No row filters before PostgreSQL 15: the table stays out.
            let e = joined.unwrap_err().to_string();
            assert!(
                e.starts_with(
                    "adding \"public\".\"t\" with its row filter and column list to publication `p`: \
                     ERROR: syntax error"
                ),
                "{e}"
            );
        } else {
            assert!(joined.unwrap());
            c.batch_execute("DROP EVENT TRIGGER write_t; INSERT INTO t VALUES (100), (101)")
                .unwrap();
            assert_eq!(decoded_ids(&mut c, &slot), ["2", "100"]);
        }
        drop_slot(&mut c, &slot).unwrap();
    }

    #[test]
    fn object_names_are_valid_slot_names() {
        assert_eq!(
            super::object_name("tap-postgres-rs_My DB"),
            "tap_postgres_rs_my_db"
        );
        assert_eq!(super::object_name(&"x".repeat(100)).len(), 63);
    }
}
