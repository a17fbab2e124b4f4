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
    /// Widening a column views depend on (see [`DependentViews`]).
    WidenUnderViews,
}

impl Step {
    pub fn describe(self) -> &'static str {
        match self {
            Step::Inspect => "inspecting the table",
            Step::CreateSchema => "creating the schema",
            Step::CreateTable => "creating the table",
            Step::AlterTable => "altering the table",
            Step::WidenUnderViews => "widening a column that views depend on",
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
    /// The views on the column being widened ([`Step::WidenUnderViews`]).
    pub views: Option<Box<DependentViews>>,
    #[source]
    pub source: postgres::Error,
}

/// Views that depend on a column being widened (Postgres refuses `ALTER
/// COLUMN … TYPE` under a view): plain views are dropped and recreated
/// around the change, in one transaction, with their options, owner, grants
/// and comments; others make the widening fail before any row loads.
#[derive(Debug, Clone)]
pub struct DependentViews {
    pub column: String,
    pub new_type: String,
    /// Qualified names, views on views after the views they read.
    pub names: Vec<String>,
    /// Those the target cannot recreate (materialized views, views with
    /// triggers, rules or column defaults); empty: all were recreated.
    pub kept: Vec<String>,
}

/// Creates the schema and table when missing (granting `select_roles`
/// USAGE on a schema and SELECT on a table it creates), adds and widens columns.
pub fn ensure_table(
    client: &mut Client,
    shape: &StreamShape,
    primary_key: bool,
    select_roles: &[String],
) -> Result<TableInfo, EvolveError> {
    let mut ctx = Context {
        step: Step::Inspect,
        owner: None,
        views: None,
    };
    let grant = Grant {
        roles: select_roles,
    };
    evolve(client, shape, primary_key, &grant, &mut ctx).map_err(|source| EvolveError {
        step: ctx.step,
        owner: ctx.owner,
        views: ctx.views,
        source,
    })
}

/// What [`EvolveError`] tells beyond the database's error.
struct Context {
    step: Step,
    owner: Option<String>,
    views: Option<Box<DependentViews>>,
}

/// Read access for some roles on what the target creates.
struct Grant<'r> {
    roles: &'r [String],
}

impl Grant<'_> {
    /// `; GRANT <privilege> ON <object> TO <roles>` to append to the
    /// statement that creates the object: one query string is one
    /// transaction, so the object never exists without its grants.
    fn on(&self, privilege: &str, object: &str) -> String {
        if self.roles.is_empty() {
            return String::new();
        }
        let roles: Vec<String> = self.roles.iter().map(|r| quote_ident(r)).collect();
        tracing::info!(object, roles = %roles.join(", "), privilege, "granting");
        format!("; GRANT {privilege} ON {object} TO {}", roles.join(", "))
    }
}

fn evolve(
    client: &mut Client,
    shape: &StreamShape,
    primary_key: bool,
    grant: &Grant<'_>,
    ctx: &mut Context,
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
        ctx.step = Step::CreateSchema;
        create_schema(
            client,
            &table.schema,
            &grant.on("USAGE", &format!("SCHEMA {}", quote_ident(&table.schema))),
        )?;
    }
    ctx.step = Step::Inspect;
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
        ctx.step = Step::CreateTable;
        client.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {qualified} ({}){}",
            defs.join(", "),
            grant.on("SELECT", &format!("TABLE {qualified}"))
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
    ctx.owner = client
        .query_opt(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = to_regclass($1)",
            &[&qualified],
        )?
        .map(|r| r.get(0));
    ctx.step = Step::AlterTable;
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
                        let alter = format!(
                            "ALTER TABLE {qualified} ALTER COLUMN {col} TYPE {} USING {}",
                            w.new_type,
                            w.using.replace("{}", &col)
                        );
                        widen_under_views(client, &qualified, &c.name, &w.new_type, &alter, ctx)?;
                        tracing::info!(table = %qualified, column = %c.name, from = %have.sql(), to = %w.new_type, "widened column");
                        types.push(ColumnType::parse(&w.new_type));
                    }
                }
            }
        }
    }
    ctx.step = Step::Inspect;
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
/// database even when the schema exists. `grants` (statements, each after a
/// `;`) run in the same implicit transaction, so the schema never exists
/// without them.
fn create_schema(client: &mut Client, schema: &str, grants: &str) -> Result<(), postgres::Error> {
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
    client.batch_execute(&format!("DO {tag}{body}{tag}{grants}"))
}

/// Every view that depends on `column` of `table`, directly or through other
/// views, ordered so that each comes after the views it reads: its name,
/// whether the target can recreate it, and the statements that do
/// (definition with options, owner, grants on the view and its columns,
/// comments), built by the server so that quoting is the server's own.
const DEPENDENT_VIEWS: &str = "\
WITH RECURSIVE deps(oid, depth) AS ( \
  SELECT r.ev_class, 1 FROM pg_depend d \
    JOIN pg_rewrite r ON r.oid = d.objid \
    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
   WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass \
     AND d.refobjid = to_regclass($1) AND a.attname::text = $2 AND r.ev_class <> d.refobjid \
  UNION ALL \
  SELECT r.ev_class, deps.depth + 1 FROM deps \
    JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = deps.oid \
     AND d.classid = 'pg_rewrite'::regclass \
    JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class <> deps.oid), \
ordered AS (SELECT oid, max(depth) AS depth FROM deps GROUP BY oid) \
SELECT q.name, \
  c.relkind = 'v' \
   AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid) \
   AND NOT EXISTS (SELECT 1 FROM pg_rewrite w WHERE w.ev_class = c.oid AND w.rulename <> '_RETURN') \
   AND NOT EXISTS (SELECT 1 FROM pg_attrdef ad WHERE ad.adrelid = c.oid), \
  format('CREATE VIEW %s%s AS %s', q.name, \
         ' WITH (' || array_to_string(c.reloptions, ', ') || ')', \
         rtrim(pg_get_viewdef(c.oid), '; ')) \
  || format('; ALTER VIEW %s OWNER TO %I', q.name, pg_get_userbyid(c.relowner)) \
  || coalesce((SELECT string_agg(format('; GRANT %s ON %s TO %s%s', g.privilege_type, q.name, \
         CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END, \
         CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END), '') \
       FROM aclexplode(c.relacl) g WHERE g.grantee <> c.relowner), '') \
  || coalesce((SELECT string_agg(format('; GRANT %s (%I) ON %s TO %s%s', g.privilege_type, a.attname, q.name, \
         CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END, \
         CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END), '') \
       FROM pg_attribute a, aclexplode(a.attacl) g WHERE a.attrelid = c.oid AND a.attnum > 0), '') \
  || coalesce(format('; COMMENT ON VIEW %s IS %L', q.name, obj_description(c.oid, 'pg_class')), '') \
  || coalesce((SELECT string_agg(format('; COMMENT ON COLUMN %s.%I IS %L', q.name, a.attname, \
         col_description(c.oid, a.attnum)), '') \
       FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
        AND col_description(c.oid, a.attnum) IS NOT NULL), '') \
FROM ordered o JOIN pg_class c ON c.oid = o.oid \
  JOIN pg_namespace n ON n.oid = c.relnamespace \
  CROSS JOIN LATERAL (SELECT format('%I.%I', n.nspname, c.relname) AS name) q \
ORDER BY o.depth, q.name";

/// Runs `alter` (widening `column` to `new_type`); views on the column are
/// dropped before and recreated after it, in the same query string (one
/// transaction even outside the load's), so a failure changes nothing. A
/// view the target can't recreate is never dropped: Postgres then refuses
/// the widening, and the error names the views and the fix.
fn widen_under_views(
    client: &mut Client,
    table: &str,
    column: &str,
    new_type: &str,
    alter: &str,
    ctx: &mut Context,
) -> Result<(), postgres::Error> {
    let views: Vec<(String, bool, String)> = client
        .query(DEPENDENT_VIEWS, &[&table, &column])?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    if views.is_empty() {
        return client.batch_execute(alter);
    }
    let kept: Vec<String> = (views.iter())
        .filter(|(_, recreatable, _)| !recreatable)
        .map(|(name, _, _)| name.clone())
        .collect();
    ctx.step = Step::WidenUnderViews;
    ctx.views = Some(Box::new(DependentViews {
        column: column.to_owned(),
        new_type: new_type.to_owned(),
        names: views.iter().map(|(name, _, _)| name.clone()).collect(),
        kept: kept.clone(),
    }));
    if !kept.is_empty() {
        return client.batch_execute(alter);
    }
    let mut script: Vec<String> = (views.iter().rev())
        .map(|(name, _, _)| format!("DROP VIEW {name}"))
        .collect();
    script.push(alter.to_owned());
    script.extend(views.iter().map(|(_, _, restore)| restore.clone()));
    client.batch_execute(&script.join("; "))?;
    let names: Vec<&str> = views.iter().map(|(name, _, _)| name.as_str()).collect();
    tracing::info!(table, column, views = %names.join(", "), "recreated the views on the widened column");
    ctx.step = Step::AlterTable;
    ctx.views = None;
    Ok(())
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
