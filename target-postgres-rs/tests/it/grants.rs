//! `default_target_schema_select_permission` and a `schema_mapping` entry's
//! `target_schema_select_permissions` (pipelinewise's names): the roles can
//! read what the target creates, checked by connecting as them.

use crate::common::*;
use pg_testkit::TestDb;
use serde_json::json;

fn input(stream: &str) -> Vec<u8> {
    let mut s = json!({"type": "SCHEMA", "stream": stream,
        "schema": {"type": "object", "properties": {"id": {"type": "integer"}}}, "key_properties": ["id"]})
    .to_string();
    s.push('\n');
    s.push_str(&json!({"type": "RECORD", "stream": stream, "record": {"id": 7}}).to_string());
    s.push('\n');
    s.into_bytes()
}

/// A login role (cluster-wide) with CONNECT only.
fn reader(db: &TestDb, name: &str) {
    db.client()
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN \
               CREATE ROLE \"{name}\" LOGIN PASSWORD 'pw'; END IF; END $$; \
             REVOKE ALL ON SCHEMA public FROM PUBLIC"
        ))
        .unwrap();
}

/// `SELECT id FROM <table>` as `role`: the ids, or the error text.
fn select_as(db: &TestDb, role: &str, table: &str) -> Result<Vec<i64>, String> {
    let mut c = postgres::Config::new()
        .host(&db.host)
        .port(db.port)
        .user(role)
        .password("pw")
        .dbname(&db.name)
        .connect(postgres::NoTls)
        .unwrap();
    c.query(&format!("SELECT id FROM {table}"), &[])
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .map_err(|e| {
            e.as_db_error()
                .map_or(e.to_string(), |d| d.message().to_owned())
        })
}

#[test]
fn granted_roles_read_new_schemas_and_tables() {
    let db = pg_testkit::cluster().create_database("grants_default");
    for r in [
        "grant_analyst",
        "Grant Auditor",
        "grant_app",
        "grant_nobody",
    ] {
        reader(&db, r);
    }
    let cfg = json!({
        "default_target_schema_select_permission": ["grant_analyst", "Grant Auditor"],
        "schema_mapping": {"app": {"target_schema": "app_raw", "target_schema_select_permissions": "grant_app"}},
    });
    let mut input_all = input("public-t");
    input_all.extend(input("app-u"));
    input_all.extend(input("new_schema-v"));
    let r = run(&db, cfg, &input_all);
    assert!(r.ok, "{}", r.stderr);
    for role in ["grant_analyst", "Grant Auditor"] {
        // A table in a schema the target found (public: no USAGE grant of
        // its own) and one in a schema it created.
        assert_eq!(select_as(&db, role, "new_schema.v"), Ok(vec![7]), "{role}");
        assert_eq!(
            select_as(&db, role, "app_raw.u"),
            Err("permission denied for schema app_raw".into()),
            "{role}: the mapping's own roles replace the default"
        );
    }
    assert_eq!(select_as(&db, "grant_app", "app_raw.u"), Ok(vec![7]));
    assert_eq!(
        select_as(&db, "grant_app", "new_schema.v"),
        Err("permission denied for schema new_schema".into())
    );
    assert_eq!(
        select_as(&db, "grant_nobody", "new_schema.v"),
        Err("permission denied for schema new_schema".into())
    );
    // SELECT on public.t was granted (USAGE on public is the DBA's).
    db.client()
        .batch_execute("GRANT USAGE ON SCHEMA public TO grant_analyst, grant_nobody")
        .unwrap();
    assert_eq!(select_as(&db, "grant_analyst", "public.t"), Ok(vec![7]));
    assert_eq!(
        select_as(&db, "grant_nobody", "public.t"),
        Err("permission denied for table t".into())
    );
}

#[test]
fn an_unknown_role_fails_before_the_table_exists_and_names_the_fix() {
    let db = pg_testkit::cluster().create_database("grants_unknown");
    let cfg = json!({"default_target_schema_select_permission": "grant_no_such_role"});
    let r = run(&db, cfg, &input("fresh-t"));
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(
        r.last_error(),
        "target-postgres-rs: error: stream `fresh-t` (table \"fresh\".\"t\"): creating the schema failed: \
         ERROR: role \"grant_no_such_role\" does not exist; fix: create the role (CREATE ROLE <name>; \
         NOLOGIN will do), or remove it from default_target_schema_select_permission or the \
         schema_mapping entry's target_schema_select_permissions"
    );
    // Nothing was left behind without its grants.
    assert_eq!(
        pg_testkit::rows::text(
            &db,
            "SELECT count(*)::text FROM pg_namespace WHERE nspname = 'fresh'"
        ),
        Some("0".into())
    );
}
