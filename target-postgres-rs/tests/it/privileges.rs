//! A role missing a privilege gets the GRANT (or ownership change) to run,
//! naming the schema, table, database and role.

use crate::common::*;
use serde_json::json;

fn input(stream: &str, props: serde_json::Value) -> Vec<u8> {
    let mut s = json!({"type": "SCHEMA", "stream": stream,
        "schema": {"type": "object", "properties": props}, "key_properties": ["id"]})
    .to_string();
    s.push('\n');
    s.push_str(&json!({"type": "RECORD", "stream": stream, "record": {"id": 1}}).to_string());
    s.push('\n');
    s.into_bytes()
}

/// A login role `name` (cluster-wide, so one per test) with no privileges in
/// `db` beyond CONNECT and whatever `grants` gives it.
fn role(db: &pg_testkit::TestDb, name: &str, grants: &str) -> serde_json::Value {
    db.client()
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN \
               CREATE ROLE {name} LOGIN PASSWORD 'pw' NOSUPERUSER NOCREATEDB NOCREATEROLE; END IF; END $$; \
             REVOKE CREATE ON DATABASE \"{db}\" FROM PUBLIC; REVOKE ALL ON SCHEMA public FROM PUBLIC; {grants}",
            db = db.name
        ))
        .unwrap();
    json!({"user": name, "password": "pw", "default_target_schema": "dest"})
}

#[test]
fn creating_a_schema_without_create_on_the_database_names_the_grant() {
    let db = pg_testkit::cluster().create_database("nogrant_db");
    let cfg = role(&db, "nogrant_db", "");
    let r = run(&db, cfg, &input("t", json!({"id": {"type": "integer"}})));
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(
        r.last_error(),
        format!(
            "target-postgres-rs: error: stream `t` (table \"dest\".\"t\"): creating the schema failed: \
             ERROR: permission denied for database {0}; role \"nogrant_db\" may not create schema \"dest\"; \
             fix: GRANT CREATE ON DATABASE \"{0}\" TO \"nogrant_db\", or create the schema for it: \
             CREATE SCHEMA \"dest\" AUTHORIZATION \"nogrant_db\"",
            db.name
        )
    );
}

#[test]
fn creating_a_table_without_create_on_the_schema_names_the_grant() {
    let db = pg_testkit::cluster().create_database("nogrant_schema");
    // USAGE only; then nothing at all (the table can't even be looked up):
    // both need the same GRANT.
    for (grants, step) in [
        (
            "CREATE SCHEMA dest; GRANT USAGE ON SCHEMA dest TO nogrant_schema;",
            "creating",
        ),
        (
            "REVOKE ALL ON SCHEMA dest FROM nogrant_schema;",
            "inspecting",
        ),
    ] {
        let cfg = role(&db, "nogrant_schema", grants);
        let r = run(&db, cfg, &input("t", json!({"id": {"type": "integer"}})));
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        assert_eq!(
            r.last_error(),
            format!(
                "target-postgres-rs: error: stream `t` (table \"dest\".\"t\"): {step} the table failed: \
                 ERROR: permission denied for schema dest; \
                 fix: GRANT USAGE, CREATE ON SCHEMA \"dest\" TO \"nogrant_schema\""
            )
        );
    }
}

#[test]
fn altering_a_table_owned_by_another_role_says_who_owns_it() {
    let db = pg_testkit::cluster().create_database("nogrant_owner");
    let owner = db
        .client()
        .query_one("SELECT current_user::text", &[])
        .unwrap();
    let owner: String = owner.get(0);
    let cfg = role(
        &db,
        "nogrant_owner",
        "CREATE SCHEMA dest; GRANT ALL ON SCHEMA dest TO nogrant_owner; \
         CREATE TABLE dest.t (id bigint PRIMARY KEY); GRANT ALL ON dest.t TO nogrant_owner;",
    );
    // The `_sdc_*` columns (and `v`) must be added: only the owner may.
    let props = json!({"id": {"type": "integer"}, "v": {"type": "string"}});
    let r = run(&db, cfg, &input("t", props));
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(
        r.last_error(),
        format!(
            "target-postgres-rs: error: stream `t` (table \"dest\".\"t\"): altering the table failed: \
             ERROR: must be owner of table t; table \"dest\".\"t\" is owned by \"{owner}\", not by \
             \"nogrant_owner\", and only its owner may add or widen columns; fix: as \"{owner}\" or a \
             superuser, ALTER TABLE \"dest\".\"t\" OWNER TO \"nogrant_owner\""
        )
    );
}
