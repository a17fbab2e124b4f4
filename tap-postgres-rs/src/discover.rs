//! Discovery: two catalog queries for the whole database (relations and
//! columns; types come from [`crate::pg_type::TypeMap`]), never one per table,
//! turned into Singer streams. Sync plans the one table it reads with the
//! same code, so a stream's columns, codecs and schema are always the live ones.

use std::collections::HashMap;

use postgres::Client;
use serde_json::{json, Map, Value};

use crate::codec::Codec;
use crate::error::{DiscoverError, DiscoverPhase as Phase};
use crate::pg_type::{PgType, TypeMap};

/// What kind of relation a stream reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelKind {
    Table,
    View,
    MaterializedView,
    PartitionedTable,
    ForeignTable,
}

impl RelKind {
    fn from_char(c: i8) -> Option<RelKind> {
        match c as u8 {
            b'r' => Some(RelKind::Table),
            b'v' => Some(RelKind::View),
            b'm' => Some(RelKind::MaterializedView),
            b'p' => Some(RelKind::PartitionedTable),
            b'f' => Some(RelKind::ForeignTable),
            _ => None,
        }
    }

    /// Whether rows have one `ctid` each, stable within one heap file.
    pub fn has_ctid(self) -> bool {
        matches!(self, RelKind::Table | RelKind::MaterializedView)
    }
}

/// One column, resolved.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// `format_type()`, user-defined types schema-qualified.
    pub sql_datatype: String,
    pub ty: PgType,
    /// `ty`'s codec, built once.
    pub codec: Codec,
    pub nullable: bool,
}

impl Column {
    /// The property schema with `x-sql-datatype`: the plain one, or
    /// `widened` to admit special values (see [`Codec::encode`]).
    pub fn property_schema(&self, widened: bool) -> Value {
        let mut s = if widened {
            self.ty.widened_schema(self.nullable)
        } else {
            self.ty.schema(self.nullable)
        };
        s[singer_core::SQL_DATATYPE_KEY] = json!(self.sql_datatype);
        s
    }
}

/// One table, view, materialized view, partitioned parent or foreign table.
#[derive(Debug, Clone)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    pub kind: RelKind,
    pub row_estimate: i64,
    pub primary_key: Vec<String>,
    pub relfilenode: u32,
    /// SELECT on the whole table (not only on some columns): needed to read `ctid`.
    pub table_select: bool,
    pub columns: Vec<Column>,
}

impl Relation {
    pub fn stream_id(&self) -> String {
        format!("{}-{}", self.schema, self.name)
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Whether a copy can read (and resume by) `ctid`: its rows have one, and
    /// it is readable only with SELECT on the whole table.
    pub fn ctid_readable(&self) -> bool {
        self.kind.has_ctid() && self.table_select
    }
}

/// Streams are the relations this user can read (a read-only user with
/// grants on some schemas sees just those).
const RELKINDS: &str = "c.relkind IN ('r','v','m','p','f') AND NOT c.relispartition \
    AND has_schema_privilege(n.oid, 'USAGE') AND has_any_column_privilege(c.oid, 'SELECT')";
const SYSTEM_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog','information_schema') \
    AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp_'";

/// A column's [`Column::sql_datatype`], from `a.atttypid` and `a.atttypmod`
/// joined with [`SQL_DATATYPE_JOINS`].
pub const SQL_DATATYPE: &str = "CASE WHEN tn.nspname = 'pg_catalog' OR en.nspname = 'pg_catalog' \
           THEN format_type(a.atttypid, a.atttypmod) \
         WHEN et.oid IS NOT NULL \
           THEN quote_ident(en.nspname) || '.' || quote_ident(et.typname) || '[]' \
         ELSE quote_ident(tn.nspname) || '.' || quote_ident(t.typname) END";
pub const SQL_DATATYPE_JOINS: &str = "JOIN pg_type t ON t.oid = a.atttypid \
    JOIN pg_namespace tn ON tn.oid = t.typnamespace \
    LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
    LEFT JOIN pg_namespace en ON en.oid = et.typnamespace";

/// Which relations to read.
pub enum Scope<'a> {
    /// Every relation in these schemas (empty: every non-system schema).
    Schemas(&'a [String]),
    /// One relation.
    One { schema: &'a str, name: &'a str },
}

/// Reads every relation in scope with its columns, in a deterministic order
/// (schema, name).
pub fn relations(
    client: &mut Client,
    scope: &Scope<'_>,
    types: &TypeMap,
) -> Result<Vec<Relation>, DiscoverError> {
    let (filter, params): (String, Vec<Vec<String>>) = match scope {
        Scope::Schemas([]) => (SYSTEM_SCHEMAS.to_owned(), vec![]),
        Scope::Schemas(list) => ("n.nspname = ANY($1)".to_owned(), vec![list.to_vec()]),
        Scope::One { schema, name } => (
            "n.nspname = ($1::text[])[1] AND c.relname = ($1::text[])[2]".to_owned(),
            vec![vec![schema.to_string(), name.to_string()]],
        ),
    };
    let param_refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect();

    let rel_sql = format!(
        "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind, \
                greatest(c.reltuples, 0)::bigint, c.relfilenode, \
                coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) \
                   FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                  WHERE i.indrelid = c.oid AND i.indisprimary), '{{}}'), \
                has_table_privilege(c.oid, 'SELECT') \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE {RELKINDS} AND {filter} \
          ORDER BY n.nspname, c.relname"
    );
    let col_sql = format!(
        "SELECT a.attrelid, a.attname::text, a.atttypid, a.atttypmod, a.attnotnull, {SQL_DATATYPE} \
           FROM pg_attribute a \
           JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
           {SQL_DATATYPE_JOINS} \
          WHERE a.attnum > 0 AND NOT a.attisdropped AND {RELKINDS} AND {filter} \
            AND has_column_privilege(c.oid, a.attnum, 'SELECT') \
          ORDER BY a.attrelid, a.attnum"
    );

    let mut columns: HashMap<u32, Vec<Column>> = HashMap::new();
    for row in client
        .query(&col_sql, &param_refs)
        .map_err(DiscoverError::at(Phase::Columns))?
    {
        let relid: u32 = row.get(0);
        let ty = types.parse(row.get(2), row.get(3));
        let not_null: bool = row.get(4);
        columns.entry(relid).or_default().push(Column {
            name: row.get(1),
            sql_datatype: row.get(5),
            codec: ty.codec(),
            nullable: !not_null,
            ty,
        });
    }
    let mut out = Vec::new();
    for row in client
        .query(&rel_sql, &param_refs)
        .map_err(DiscoverError::at(Phase::Relations))?
    {
        let oid: u32 = row.get(0);
        let Some(kind) = RelKind::from_char(row.get(3)) else {
            continue;
        };
        out.push(Relation {
            schema: row.get(1),
            name: row.get(2),
            kind,
            row_estimate: row.get(4),
            relfilenode: row.get(5),
            primary_key: row.get(6),
            table_select: row.get(7),
            columns: columns.remove(&oid).unwrap_or_default(),
        });
    }
    Ok(out)
}

/// The catalog entry of one relation.
pub fn catalog_entry(rel: &Relation, database: &str) -> Value {
    let properties: Map<String, Value> = rel
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.property_schema(false)))
        .collect();
    let is_view = matches!(rel.kind, RelKind::View | RelKind::MaterializedView);
    let valid_keys: Vec<&str> = rel
        .columns
        .iter()
        .filter(|c| c.ty.bookmarkable())
        .map(|c| c.name.as_str())
        .collect();
    let mut stream_meta = json!({
        "table-key-properties": rel.primary_key,
        "schema-name": rel.schema,
        "database-name": database,
        "is-view": is_view,
        "row-count": rel.row_estimate,
        "valid-replication-keys": valid_keys,
        "selected-by-default": false,
    });
    if !matches!(rel.kind, RelKind::Table | RelKind::PartitionedTable) && valid_keys.is_empty() {
        stream_meta["forced-replication-method"] = json!("FULL_TABLE");
    }
    let mut metadata = vec![json!({"breadcrumb": [], "metadata": stream_meta})];
    for c in &rel.columns {
        let inclusion = if rel.primary_key.contains(&c.name) {
            "automatic"
        } else {
            "available"
        };
        metadata.push(json!({
            "breadcrumb": ["properties", c.name],
            "metadata": {
                "sql-datatype": c.sql_datatype,
                "inclusion": inclusion,
                "selected-by-default": true,
            }
        }));
    }
    let id = rel.stream_id();
    json!({
        "tap_stream_id": id,
        "table_name": rel.name,
        "stream": id,
        "schema": {"type": "object", "properties": properties},
        "metadata": metadata,
    })
}

/// The whole catalog for the configured schemas.
pub fn catalog(client: &mut Client, schemas: &[String]) -> Result<Value, DiscoverError> {
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .map_err(DiscoverError::at(Phase::Database))?
        .get(0);
    let types = TypeMap::load(client)?;
    let rels = relations(client, &Scope::Schemas(schemas), &types)?;
    let streams: Vec<Value> = rels.iter().map(|r| catalog_entry(r, &database)).collect();
    Ok(json!({ "streams": streams }))
}
