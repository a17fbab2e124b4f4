//! Discovery: four catalog queries for the whole database (relations, columns,
//! types, enum labels), never one per table, turned into Singer streams.
//! Sync uses the same code for the one table it reads, so a stream's columns,
//! codecs and schema are always the live ones.

use std::collections::HashMap;

use postgres::Client;
use serde_json::{json, Map, Value};

use crate::codec::Codec;

/// A catalog query failed.
#[derive(Debug, thiserror::Error)]
#[error("discovery query failed: {0}")]
pub struct DiscoverError(String);

impl From<postgres::Error> for DiscoverError {
    fn from(e: postgres::Error) -> Self {
        DiscoverError(pg_connect::describe(&e))
    }
}

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
    pub codec: Codec,
    /// The property schema (without `x-sql-datatype`, null included when nullable).
    pub schema: Value,
    /// money is read as `::numeric` (its text form depends on lc_monetary).
    pub read_as_numeric: bool,
    /// Orderable in a way INCREMENTAL can bookmark.
    pub replication_key_candidate: bool,
    /// numeric/real/double: bookmark values are kept as strings (exact digits).
    pub numeric_like: bool,
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
}

/// Streams are the relations this user can read (a read-only user with
/// grants on some schemas sees just those).
const RELKINDS: &str = "c.relkind IN ('r','v','m','p','f') AND NOT c.relispartition \
    AND has_schema_privilege(n.oid, 'USAGE') AND has_any_column_privilege(c.oid, 'SELECT')";
const SYSTEM_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog','information_schema') \
    AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp_'";

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
        "SELECT a.attrelid, a.attname::text, a.atttypid, a.atttypmod, a.attnotnull, \
                CASE WHEN tn.nspname = 'pg_catalog' OR en.nspname = 'pg_catalog' \
                       THEN format_type(a.atttypid, a.atttypmod) \
                     WHEN et.oid IS NOT NULL \
                       THEN quote_ident(en.nspname) || '.' || quote_ident(et.typname) || '[]' \
                     ELSE quote_ident(tn.nspname) || '.' || quote_ident(t.typname) END \
           FROM pg_attribute a \
           JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
           JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = t.typnamespace \
           LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
           LEFT JOIN pg_namespace en ON en.oid = et.typnamespace \
          WHERE a.attnum > 0 AND NOT a.attisdropped AND {RELKINDS} AND {filter} \
            AND has_column_privilege(c.oid, a.attnum, 'SELECT') \
          ORDER BY a.attrelid, a.attnum"
    );

    let mut columns: HashMap<u32, Vec<Column>> = HashMap::new();
    for row in client.query(&col_sql, &param_refs)? {
        let relid: u32 = row.get(0);
        let type_oid: u32 = row.get(2);
        let typmod: i32 = row.get(3);
        let not_null: bool = row.get(4);
        let sql_datatype: String = row.get(5);
        columns.entry(relid).or_default().push(types.column(
            row.get(1),
            type_oid,
            typmod,
            not_null,
            sql_datatype,
        ));
    }
    let mut out = Vec::new();
    for row in client.query(&rel_sql, &param_refs)? {
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

struct TypeRow {
    name: String,
    typtype: u8,
    base: u32,
    element: u32,
    category: u8,
    delimiter: u8,
}

/// Every type in the database (a few hundred to a few thousand rows), so that
/// domains, arrays and enums resolve without a query per column.
pub struct TypeMap {
    types: HashMap<u32, TypeRow>,
    enum_labels: HashMap<u32, Vec<String>>,
}

/// How a type behaves, once domains and arrays are resolved.
struct Resolved {
    codec: Codec,
    schema: Map<String, Value>,
    money: bool,
    candidate: bool,
    numeric_like: bool,
}

impl TypeMap {
    pub fn load(client: &mut Client) -> Result<TypeMap, DiscoverError> {
        let mut types = HashMap::new();
        for row in client.query(
            "SELECT oid, typname::text, typtype, typbasetype, typelem, typcategory, typdelim \
               FROM pg_type WHERE typtype <> 'c' OR typrelid IN \
                 (SELECT oid FROM pg_class WHERE relkind = 'c')",
            &[],
        )? {
            let oid: u32 = row.get(0);
            types.insert(
                oid,
                TypeRow {
                    name: row.get(1),
                    typtype: row.get::<_, i8>(2) as u8,
                    base: row.get(3),
                    element: row.get(4),
                    category: row.get::<_, i8>(5) as u8,
                    delimiter: row.get::<_, i8>(6) as u8,
                },
            );
        }
        let mut enum_labels = HashMap::new();
        for row in client.query(
            "SELECT enumtypid, array_agg(enumlabel::text ORDER BY enumsortorder) \
               FROM pg_enum GROUP BY enumtypid",
            &[],
        )? {
            enum_labels.insert(row.get::<_, u32>(0), row.get::<_, Vec<String>>(1));
        }
        Ok(TypeMap { types, enum_labels })
    }

    fn column(
        &self,
        name: String,
        type_oid: u32,
        typmod: i32,
        not_null: bool,
        sql_datatype: String,
    ) -> Column {
        let r = self.resolve(type_oid, typmod, 0);
        let mut schema = r.schema;
        if !not_null {
            add_null(&mut schema);
        }
        Column {
            name,
            sql_datatype,
            codec: r.codec,
            schema: Value::Object(schema),
            read_as_numeric: r.money,
            replication_key_candidate: r.candidate,
            numeric_like: r.numeric_like,
        }
    }

    fn resolve(&self, oid: u32, typmod: i32, depth: u32) -> Resolved {
        let text = |schema: Value| Resolved {
            codec: Codec::Text,
            schema: obj(schema),
            money: false,
            candidate: false,
            numeric_like: false,
        };
        let Some(t) = self.types.get(&oid).filter(|_| depth < 16) else {
            return text(json!({"type": ["string"]}));
        };
        if t.typtype == b'd' {
            return self.resolve(t.base, -1, depth + 1);
        }
        // int2vector and oidvector print as `1 2 3`, not as arrays.
        if t.category == b'A' && t.element != 0 && !matches!(oid, 22 | 30) {
            let el = self.resolve(t.element, typmod, depth + 1);
            let delimiter = self.types.get(&t.element).map_or(b',', |e| e.delimiter);
            let mut items = el.schema;
            // Elements may be NULL, and multi-dimensional arrays nest.
            add_null(&mut items);
            add_type(&mut items, "array");
            return Resolved {
                codec: Codec::Array {
                    element: Box::new(el.codec),
                    delimiter,
                },
                schema: obj(json!({"type": ["array"], "items": items})),
                money: el.money,
                candidate: false,
                numeric_like: false,
            };
        }
        if t.typtype == b'e' {
            let labels = self.enum_labels.get(&oid).cloned().unwrap_or_default();
            return text(json!({"type": ["string"], "enum": labels}));
        }
        let resolved = |codec, schema: Value, candidate, numeric_like| Resolved {
            codec,
            schema: obj(schema),
            money: false,
            candidate,
            numeric_like,
        };
        // Lengths from the typmod of char(n) / varchar(n).
        let max_length = (typmod > 4).then(|| typmod - 4);
        match oid {
            21 => resolved(Codec::Integer, int_schema(-32768, 32767), true, false),
            23 => resolved(
                Codec::Integer,
                int_schema(-2147483648, 2147483647),
                true,
                false,
            ),
            20 => resolved(Codec::Integer, int_schema(i64::MIN, i64::MAX), true, false),
            26 | 28 | 29 => resolved(Codec::Integer, int_schema(0, 4294967295), false, false),
            1700 | 700 | 701 => resolved(
                Codec::Number,
                json!({"type": ["number", "string"]}),
                true,
                true,
            ),
            790 => Resolved {
                money: true,
                ..resolved(Codec::Number, json!({"type": ["number"]}), false, false)
            },
            16 => resolved(Codec::Boolean, json!({"type": ["boolean"]}), false, false),
            17 => resolved(
                Codec::Bytea,
                json!({"type": ["string"], "contentEncoding": "base16"}),
                false,
                false,
            ),
            114 | 3802 => resolved(
                Codec::Json,
                json!({"type": ["object", "array", "string", "number", "boolean"]}),
                false,
                false,
            ),
            1082 => resolved(
                Codec::Text,
                json!({"type": ["string"], "format": "date"}),
                true,
                false,
            ),
            1083 => resolved(
                Codec::Text,
                json!({"type": ["string"], "format": "time"}),
                false,
                false,
            ),
            1266 => resolved(
                Codec::Timetz,
                json!({"type": ["string"], "format": "time"}),
                false,
                false,
            ),
            1114 => resolved(
                Codec::Timestamp,
                json!({"type": ["string"], "format": "date-time"}),
                true,
                false,
            ),
            1184 => resolved(
                Codec::Timestamptz,
                json!({"type": ["string"], "format": "date-time"}),
                true,
                false,
            ),
            2950 => resolved(
                Codec::Text,
                json!({"type": ["string"], "format": "uuid"}),
                false,
                false,
            ),
            25 | 19 => resolved(Codec::Text, json!({"type": ["string"]}), true, false),
            1042 | 1043 => {
                let mut s = json!({"type": ["string"]});
                if let Some(n) = max_length {
                    s["maxLength"] = json!(n);
                }
                resolved(Codec::Text, s, true, false)
            }
            _ => match t.name.as_str() {
                "hstore" => resolved(
                    Codec::Hstore,
                    json!({"type": ["object"], "additionalProperties": {"type": ["string", "null"]}}),
                    false,
                    false,
                ),
                "citext" => resolved(Codec::Text, json!({"type": ["string"]}), true, false),
                _ => text(json!({"type": ["string"]})),
            },
        }
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn int_schema(min: i64, max: i64) -> Value {
    json!({"type": ["integer"], "minimum": min, "maximum": max})
}

fn add_type(schema: &mut Map<String, Value>, name: &str) {
    if let Some(Value::Array(types)) = schema.get_mut("type") {
        if !types.iter().any(|t| t == name) {
            types.push(json!(name));
        }
    }
}

/// Makes a property nullable: `"null"` first in its types (and in `enum`).
fn add_null(schema: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = schema.get_mut("type") {
        if !types.iter().any(|t| t == "null") {
            types.insert(0, json!("null"));
        }
    }
    if let Some(Value::Array(labels)) = schema.get_mut("enum") {
        if !labels.iter().any(Value::is_null) {
            labels.push(Value::Null);
        }
    }
}

/// A property's schema with `x-sql-datatype`.
pub fn property_schema(column: &Column) -> Value {
    let mut s = column.schema.clone();
    s[singer_core::SQL_DATATYPE_KEY] = json!(column.sql_datatype);
    s
}

/// The catalog entry of one relation.
pub fn catalog_entry(rel: &Relation, database: &str) -> Value {
    let properties: Map<String, Value> = rel
        .columns
        .iter()
        .map(|c| (c.name.clone(), property_schema(c)))
        .collect();
    let is_view = matches!(rel.kind, RelKind::View | RelKind::MaterializedView);
    let valid_keys: Vec<&str> = rel
        .columns
        .iter()
        .filter(|c| c.replication_key_candidate)
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
        .query_one("SELECT current_database()::text", &[])?
        .get(0);
    let types = TypeMap::load(client)?;
    let rels = relations(client, &Scope::Schemas(schemas), &types)?;
    let streams: Vec<Value> = rels.iter().map(|r| catalog_entry(r, &database)).collect();
    Ok(json!({ "streams": streams }))
}
