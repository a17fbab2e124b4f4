//! Tables follow their stream's SCHEMA: created when missing, columns added
//! for new properties, types widened when a property's type changes. Nothing
//! is ever dropped or narrowed, and the same SCHEMA again changes nothing.

use pg_connect::{quote_ident, quote_literal};
use postgres::Client;

use crate::stream::StreamShape;
use crate::types::{declared_column_type, widen, ColumnType};

/// What the destination table looks like after [`ensure_table`].
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The actual type of each of the shape's columns.
    pub types: Vec<ColumnType>,
    /// Holds no rows (so a first batch may be copied straight in).
    pub empty: bool,
    /// A unique index exists on exactly the key columns (so `ON CONFLICT` works).
    pub unique_on_keys: bool,
}

/// The DDL step of [`ensure_table`] that failed (its fix differs per step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Inspect,
    CreateSchema,
    CreateTable,
    AlterTable,
}

impl Step {
    pub fn describe(self) -> &'static str {
        match self {
            Step::Inspect => "inspecting the table",
            Step::CreateSchema => "creating the schema",
            Step::CreateTable => "creating the table",
            Step::AlterTable => "altering the table",
        }
    }
}

/// Why [`ensure_table`] failed: the step, and for an existing table its
/// owner (a role that doesn't own a table can't alter it).
#[derive(Debug, thiserror::Error)]
#[error("{} failed", step.describe())]
pub struct EvolveError {
    pub step: Step,
    pub owner: Option<String>,
    #[source]
    pub source: postgres::Error,
}

/// Creates the schema and table when missing, adds and widens columns.
pub fn ensure_table(
    client: &mut Client,
    shape: &StreamShape,
    primary_key: bool,
) -> Result<TableInfo, EvolveError> {
    let mut step = Step::Inspect;
    let mut owner = None;
    evolve(client, shape, primary_key, &mut step, &mut owner).map_err(|source| EvolveError {
        step,
        owner,
        source,
    })
}

fn evolve(
    client: &mut Client,
    shape: &StreamShape,
    primary_key: bool,
    step: &mut Step,
    owner: &mut Option<String>,
) -> Result<TableInfo, postgres::Error> {
    let table = &shape.table;
    let qualified = table.qualified();
    let schema_exists = client
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&table.schema],
        )?
        .is_some();
    if !schema_exists {
        // Only when missing: CREATE SCHEMA IF NOT EXISTS still needs CREATE on
        // the database, which a role confined to its own schema lacks.
        *step = Step::CreateSchema;
        create_schema(client, &table.schema)?;
    }
    *step = Step::Inspect;
    let existing: Vec<(String, String)> = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&qualified],
        )?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if existing.is_empty() {
        let mut defs: Vec<String> = shape
            .columns
            .iter()
            .map(|c| format!("{} {}", quote_ident(&c.name), c.wanted_type))
            .collect();
        if primary_key && !shape.keys.is_empty() {
            defs.push(format!("PRIMARY KEY ({})", key_list(shape)));
        }
        *step = Step::CreateTable;
        client.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {qualified} ({})",
            defs.join(", ")
        ))?;
        tracing::info!(table = %qualified, "created table");
        let types = (shape.columns.iter())
            .map(|c| column_type(client, &c.wanted_type))
            .collect::<Result<_, _>>()?;
        return Ok(TableInfo {
            types,
            empty: true,
            unique_on_keys: primary_key && !shape.keys.is_empty(),
        });
    }
    *owner = client
        .query_opt(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = to_regclass($1)",
            &[&qualified],
        )?
        .map(|r| r.get(0));
    *step = Step::AlterTable;
    let mut types = Vec::with_capacity(shape.columns.len());
    for c in &shape.columns {
        let col = quote_ident(&c.name);
        match existing.iter().find(|(n, _)| *n == c.name) {
            None => {
                client.batch_execute(&format!(
                    "ALTER TABLE {qualified} ADD COLUMN {col} {}",
                    c.wanted_type
                ))?;
                tracing::info!(table = %qualified, column = %c.name, r#type = %c.wanted_type, "added column");
                types.push(column_type(client, &c.wanted_type)?);
            }
            Some((_, have)) => {
                let have = column_type(client, have)?;
                match widen(&have, &column_type(client, &c.wanted_type)?) {
                    None => types.push(have),
                    Some(w) => {
                        client.batch_execute(&format!(
                            "ALTER TABLE {qualified} ALTER COLUMN {col} TYPE {} USING {}",
                            w.new_type,
                            w.using.replace("{}", &col)
                        ))?;
                        tracing::info!(table = %qualified, column = %c.name, from = %have.sql(), to = %w.new_type, "widened column");
                        types.push(ColumnType::parse(&w.new_type));
                    }
                }
            }
        }
    }
    *step = Step::Inspect;
    let empty: bool = client
        .query_one(
            &format!("SELECT NOT EXISTS (SELECT 1 FROM {qualified})"),
            &[],
        )?
        .get(0);
    let unique_on_keys = if shape.keys.is_empty() {
        false
    } else {
        let names: Vec<String> = shape
            .keys
            .iter()
            .map(|&k| shape.columns[k].name.clone())
            .collect();
        let n = names.len() as i16;
        client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass($1) \
                 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = $3 \
                 AND (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = i.indrelid \
                      AND a.attnum = ANY(i.indkey) AND a.attname::text = ANY($2)) = $3)",
                &[&qualified, &names, &n],
            )?
            .get(0)
    };
    Ok(TableInfo {
        types,
        empty,
        unique_on_keys,
    })
}

/// First key of the advisory locks this target takes (the second is a hash
/// of the schema name); "sdc" in ASCII, so other applications' locks are unlikely to collide.
const SCHEMA_LOCK_SPACE: i32 = 0x0073_6463;

/// Creates a missing schema. Pipelines started together into one new schema
/// would race: the loser's `CREATE SCHEMA` fails on pg_namespace's unique
/// index (or with "already exists"). So the creator holds a
/// transaction-level advisory lock keyed on the name, and whoever waited for
/// it finds the schema and creates nothing. One statement (a DO block), so
/// that the lock lasts until the creation commits whether or not a
/// transaction is open; still no `IF NOT EXISTS`, which needs CREATE on the
/// database even when the schema exists.
fn create_schema(client: &mut Client, schema: &str) -> Result<(), postgres::Error> {
    let name = quote_literal(schema);
    let body = format!(
        "BEGIN PERFORM pg_advisory_xact_lock({SCHEMA_LOCK_SPACE}, hashtext({name})); \
         IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {name}) THEN \
         EXECUTE format('CREATE SCHEMA %I', {name}); END IF; END"
    );
    // A dollar-quote tag the body (the name) cannot contain.
    let mut tag = "$sdc$".to_owned();
    while body.contains(&tag) {
        tag.insert(1, 'x');
    }
    client.batch_execute(&format!("DO {tag}{body}{tag}"))
}

/// The quoted key columns, comma-separated.
pub fn key_list(shape: &StreamShape) -> String {
    shape
        .keys
        .iter()
        .map(|&k| quote_ident(&shape.columns[k].name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The destination's column type for a declared type, or `None` when the
/// destination has no such type (see [`declared_column_type`]).
pub fn resolve_type(client: &mut Client, declared: &str) -> Option<String> {
    let row = client
        .query_opt(
            "SELECT format_type(t.oid, NULL), format_type(t.oid, -1), \
             EXISTS (SELECT 1 FROM pg_type e JOIN pg_class c ON c.oid = e.typrelid \
                     WHERE e.oid = CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE t.oid END \
                     AND c.relkind <> 'c') \
             FROM pg_type t WHERE t.oid = to_regtype($1)",
            &[&declared],
        )
        .ok()??;
    Some(declared_column_type(
        declared,
        &row.get::<_, String>(0),
        &row.get::<_, String>(1),
        row.get(2),
    ))
}

/// A column type as the destination knows it: a domain (over a domain...)
/// is written as its innermost base type.
fn column_type(client: &mut Client, sql: &str) -> Result<ColumnType, postgres::Error> {
    let parsed = ColumnType::parse(sql);
    if !parsed.may_be_domain() {
        return Ok(parsed);
    }
    let base: Option<String> = client
        .query_opt(
            "WITH RECURSIVE d(oid, base, typmod, depth) AS ( \
               SELECT t.oid, t.typbasetype, t.typtypmod, 0 FROM pg_type t \
                 WHERE t.oid = to_regtype($1) AND t.typtype = 'd' \
               UNION ALL SELECT t.oid, t.typbasetype, t.typtypmod, d.depth + 1 \
                 FROM pg_type t JOIN d ON t.oid = d.base WHERE t.typtype = 'd') \
             SELECT format_type(base, typmod) FROM d ORDER BY depth DESC LIMIT 1",
            &[&sql],
        )?
        .map(|r| r.get(0));
    Ok(match base {
        Some(base) => ColumnType::domain(sql, &base),
        None => parsed,
    })
}
