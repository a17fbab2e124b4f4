//! Stream planning, below every sync method: a selected catalog entry
//! resolved against the live database into a [`Prepared`] stream (its table,
//! columns, key, method and replication key), and its SCHEMA message.

use std::io::Write;

use pg_connect::quote_qualified;
use postgres::Client;
use serde_json::{json, Value};
use singer_core::{CatalogEntry, MessageWriter};

use crate::discover::{self, Column, RelKind, Relation, Scope};
use crate::error::{query_failed, StreamError, SyncError};
use crate::pg_type::TypeMap;
use crate::record::{self, RowIdentity, Widening};
use crate::settings::{Method, SpecialValues, TapSettings};

/// The replication key that asks INCREMENTAL to read by row version (the
/// system column `xmin`, which no user column can be named) rather than by a
/// column: see [`crate::incremental`].
pub const XMIN_KEY: &str = "xmin";

/// A selected stream, resolved against the database: what to read and how.
/// (Cloned for each range of a split table: each reader widens its own.)
#[derive(Clone)]
pub struct Prepared {
    /// `tap_stream_id`: the state's key.
    pub id: String,
    /// The catalog's `stream` name: what messages carry.
    pub name: String,
    pub rel: Relation,
    /// The columns read, in table order.
    pub columns: Vec<Column>,
    pub key_properties: Vec<String>,
    pub method: Method,
    pub replication_key: Option<String>,
    /// Which columns the SCHEMA in force declares widened.
    pub widening: Widening,
    /// `custom_where_clauses` as one condition ([`crate::row_filter::combine`]).
    pub row_filter: Option<String>,
    /// A key-less FULL_TABLE stream's synthetic key (then `key_properties`).
    pub row_identity: Option<RowIdentity>,
}

/// The `(schema, table)` a catalog entry reads.
pub(crate) fn table_of(entry: &CatalogEntry) -> (String, String) {
    let id = &entry.tap_stream_id;
    let split = id.split_once('-');
    let schema = entry
        .stream_metadata_str("schema-name")
        .map(str::to_owned)
        .or_else(|| split.map(|(s, _)| s.to_owned()))
        .unwrap_or_else(|| "public".to_owned());
    let table = entry
        .table_name
        .clone()
        .or_else(|| split.map(|(_, t)| t.to_owned()))
        .unwrap_or_else(|| id.clone());
    (schema, table)
}

/// The stream's replication method: the catalog's, else `default_replication_method`.
pub fn method(entry: &CatalogEntry, settings: &TapSettings) -> Result<Method, SyncError> {
    Ok(match entry.replication_method() {
        Some(m) => Method::parse(&m)
            .ok_or_else(|| StreamError::UnknownMethod(m).at(&entry.tap_stream_id))?,
        None => settings.default_method,
    })
}

pub fn prepare(
    client: &mut Client,
    types: &TypeMap,
    entry: &CatalogEntry,
    settings: &TapSettings,
) -> Result<Prepared, SyncError> {
    let id = entry.tap_stream_id.as_str();
    let (schema, table) = table_of(entry);
    let rel = discover::relations(
        client,
        &Scope::One {
            schema: &schema,
            name: &table,
        },
        types,
    )
    .map_err(|e| StreamError::from(e).at(id))?
    .into_iter()
    .next()
    .ok_or_else(|| {
        StreamError::NoTable {
            table: quote_qualified(&schema, &table),
        }
        .at(id)
    })?;

    let method = method(entry, settings)?;
    let replication_key = match method {
        Method::FullTable | Method::LogBased => None,
        Method::Incremental => {
            let key = entry
                .replication_key()
                .ok_or_else(|| StreamError::NoReplicationKey.at(id))?;
            if key == XMIN_KEY {
                let kind = match rel.kind {
                    RelKind::View => Some("view"),
                    RelKind::ForeignTable => Some("foreign table"),
                    RelKind::Table | RelKind::MaterializedView | RelKind::PartitionedTable => None,
                };
                if let Some(kind) = kind {
                    return Err(StreamError::XminNotATable {
                        table: quote_qualified(&rel.schema, &rel.name),
                        kind,
                    }
                    .at(id));
                }
            } else if rel.column(&key).is_none() {
                return Err(StreamError::KeyNotAColumn {
                    key,
                    table: quote_qualified(&rel.schema, &rel.name),
                }
                .at(id));
            }
            Some(key)
        }
    };

    let mut key_properties = entry.key_properties();
    if key_properties.is_empty() {
        key_properties = rel.primary_key.clone();
    }
    if key_properties.is_empty() && method == Method::LogBased {
        // Without a primary key, the replica identity index identifies rows
        // in the log; the target needs the same key to apply updates and deletes.
        key_properties = client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
                 WHERE n.nspname = $1 AND c.relname = $2 AND i.indisreplident ORDER BY k.ord",
                &[&rel.schema, &rel.name],
            )
            .map_err(query_failed(id, StreamError::ReplicaIdentityKey))?
            .iter()
            .map(|r| r.get(0))
            .collect();
    }
    let columns: Vec<Column> = rel
        .columns
        .iter()
        .filter(|c| {
            entry.is_column_selected(&c.name)
                || key_properties.contains(&c.name)
                || replication_key.as_deref() == Some(c.name.as_str())
        })
        .cloned()
        .collect();
    // A table without columns (all dropped) still has rows: it syncs them as
    // empty records; only a deselection of every column is an error.
    if columns.is_empty() && !rel.columns.is_empty() {
        return Err(StreamError::NoColumn.at(id));
    }
    // A key-less copy re-sends rows after a resume (those after the last
    // STATE the target printed) or a re-copy: keyed by their identity, they
    // replace themselves. Not LOG_BASED: a change in the log has no ctid.
    let mut row_identity = None;
    if key_properties.is_empty() && method == Method::FullTable && settings.keyless_row_identity {
        let identity = if rel.ctid_readable() {
            RowIdentity::Ctid
        } else {
            RowIdentity::RowNumber
        };
        if rel.column(identity.property()).is_some() {
            tracing::warn!(
                stream = id,
                column = identity.property(),
                "the table has a column of the row identity's name: the stream is sent without a key"
            );
        } else {
            key_properties = vec![identity.property().to_owned()];
            row_identity = Some(identity);
        }
    }
    let widening = Widening::new(
        &columns,
        settings.special_values == SpecialValues::StringColumns,
    );
    Ok(Prepared {
        id: id.to_owned(),
        name: entry.stream.clone(),
        rel,
        columns,
        key_properties,
        method,
        replication_key,
        widening,
        row_filter: settings
            .stream_options
            .get(id)
            .and_then(|o| crate::row_filter::combine(&o.where_clauses)),
        row_identity,
    })
}

/// The stream's SCHEMA message, as [`Prepared::widening`] says now
/// (LOG_BASED streams also carry `_sdc_lsn` and `_sdc_deleted_at`).
pub fn write_schema<W: Write>(p: &Prepared, out: &mut MessageWriter<W>) -> Result<(), SyncError> {
    write_schema_of(p, &p.columns, &p.widening, out)
}

/// The stream's SCHEMA with these columns (LOG_BASED, after the table changed).
pub fn write_schema_of<W: Write>(
    p: &Prepared,
    columns: &[Column],
    widening: &Widening,
    out: &mut MessageWriter<W>,
) -> Result<(), SyncError> {
    let mut properties: serde_json::Map<String, Value> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), c.property_schema(widening.is_widened(i))))
        .collect();
    if p.method == Method::LogBased {
        properties.extend(record::log_properties());
    }
    if let Some(identity) = p.row_identity {
        properties.insert(identity.property().to_owned(), identity.schema());
    }
    let schema_json = json!({"type": "object", "properties": properties});
    // xmin is no property of the records: nothing for a target to bookmark on.
    let bookmark_props = p
        .replication_key
        .as_ref()
        .filter(|k| *k != XMIN_KEY)
        .map(|k| vec![k.clone()]);
    out.write_schema(
        &p.name,
        &schema_json,
        &p.key_properties,
        bookmark_props.as_deref(),
    )?;
    Ok(())
}
