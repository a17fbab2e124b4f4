//! Discovery: streams, metadata, types, order, schema filtering, and speed.

use std::time::Instant;

use crate::common::Setup;
use serde_json::{json, Value};

fn stream<'a>(catalog: &'a Value, id: &str) -> &'a Value {
    catalog["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["tap_stream_id"] == id)
        .unwrap_or_else(|| panic!("no stream {id}"))
}

fn meta(s: &Value, crumb: Value) -> &Value {
    &s["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["breadcrumb"] == crumb)
        .unwrap()["metadata"]
}

#[test]
fn streams_metadata_and_types() {
    let db = pg_testkit::cluster().create_database("tap_discover");
    db.client()
        .batch_execute(
            "CREATE SCHEMA shop; CREATE SCHEMA other;
             CREATE TYPE shop.mood AS ENUM ('sad', 'happy');
             CREATE DOMAIN shop.positive_int AS integer CHECK (VALUE > 0);
             CREATE TABLE shop.orders (
                 tenant text, id bigint, amount numeric(18,4) NOT NULL, note character varying(20),
                 mood shop.mood, qty shop.positive_int, tags integer[], updated_at timestamp(3) with time zone,
                 PRIMARY KEY (tenant, id));
             INSERT INTO shop.orders SELECT 't', i, i FROM generate_series(1, 100) i; ANALYZE shop.orders;
             CREATE VIEW shop.order_notes AS SELECT id, note FROM shop.orders;
             CREATE VIEW shop.moods AS SELECT mood, tags FROM shop.orders;
             CREATE MATERIALIZED VIEW shop.totals AS SELECT tenant, sum(amount) AS total FROM shop.orders GROUP BY 1;
             CREATE TABLE shop.events (id bigint, day date NOT NULL, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
             CREATE TABLE shop.events_2024 PARTITION OF shop.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
             CREATE TABLE shop.\"Mixed Case\" (\"Id\" integer PRIMARY KEY);
             CREATE TABLE other.hidden (id integer);
             CREATE EXTENSION file_fdw; CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
             CREATE FOREIGN TABLE shop.ext (line text) SERVER files OPTIONS (filename '/dev/null');",
        )
        .unwrap();
    let mut config = db.config();
    config["filter_schemas"] = json!("shop");
    let setup = Setup::new(&config);
    let catalog = setup.discover();
    let ids: Vec<&str> = catalog["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tap_stream_id"].as_str().unwrap())
        .collect();
    // Partitions are not streams; other schemas are filtered out; sorted.
    assert_eq!(
        ids,
        [
            "shop-Mixed Case",
            "shop-events",
            "shop-ext",
            "shop-moods",
            "shop-order_notes",
            "shop-orders",
            "shop-totals"
        ]
    );

    let orders = stream(&catalog, "shop-orders");
    assert_eq!(orders["stream"], "shop-orders");
    assert_eq!(orders["table_name"], "orders");
    assert_eq!(
        *meta(orders, json!([])),
        json!({
            "table-key-properties": ["tenant", "id"],
            "schema-name": "shop",
            "database-name": db.name,
            "is-view": false,
            "row-count": 100,
            "valid-replication-keys": ["tenant", "id", "amount", "note", "qty", "updated_at"],
            "selected-by-default": false,
        })
    );
    assert_eq!(
        *meta(orders, json!(["properties", "id"])),
        json!({"sql-datatype": "bigint", "inclusion": "automatic", "selected-by-default": true})
    );
    assert_eq!(
        *meta(orders, json!(["properties", "note"])),
        json!({"sql-datatype": "character varying(20)", "inclusion": "available", "selected-by-default": true})
    );
    let props = &orders["schema"]["properties"];
    assert_eq!(
        props["amount"],
        json!({"type": ["number"], "x-sql-datatype": "numeric(18,4)"})
    );
    assert_eq!(
        props["note"],
        json!({"type": ["null", "string"], "maxLength": 20, "x-sql-datatype": "character varying(20)"})
    );
    assert_eq!(
        props["mood"],
        json!({"type": ["null", "string"], "enum": ["sad", "happy", null], "x-sql-datatype": "shop.mood"})
    );
    assert_eq!(
        props["qty"],
        json!({"type": ["null", "integer"], "minimum": -2147483648i64, "maximum": 2147483647, "x-sql-datatype": "shop.positive_int"})
    );
    assert_eq!(
        props["tags"],
        json!({"type": ["null", "array"], "items": {"type": ["null", "integer", "array"], "minimum": -2147483648i64, "maximum": 2147483647}, "x-sql-datatype": "integer[]"})
    );
    assert_eq!(
        props["updated_at"],
        json!({"type": ["null", "string"], "format": "date-time", "x-sql-datatype": "timestamp(3) with time zone"})
    );
    // Key columns are NOT NULL.
    assert_eq!(props["id"]["type"], json!(["integer"]));

    let view = stream(&catalog, "shop-order_notes");
    let vm = meta(view, json!([]));
    assert_eq!(vm["is-view"], true);
    assert_eq!(vm["table-key-properties"], json!([]));
    assert_eq!(vm["valid-replication-keys"], json!(["id", "note"]));
    assert!(vm.get("forced-replication-method").is_none());
    // A view with nothing to bookmark can only be read in full.
    assert_eq!(
        meta(stream(&catalog, "shop-moods"), json!([]))["forced-replication-method"],
        "FULL_TABLE"
    );
    assert_eq!(
        meta(stream(&catalog, "shop-totals"), json!([]))["is-view"],
        true
    );
    let events = meta(stream(&catalog, "shop-events"), json!([]));
    assert_eq!(events["table-key-properties"], json!(["id", "day"]));
    assert_eq!(events["is-view"], false);
    assert_eq!(
        stream(&catalog, "shop-ext")["schema"]["properties"]["line"]["x-sql-datatype"],
        "text"
    );

    // Deterministic: a second discovery is byte-identical.
    assert_eq!(setup.discover(), catalog);
}

#[test]
fn five_thousand_tables_discover_fast() {
    let db = pg_testkit::cluster().create_database("tap_discover_many");
    db.client()
        .batch_execute(
            "DO $$ BEGIN FOR i IN 1..5000 LOOP
               EXECUTE format('CREATE TABLE t%s (id bigint PRIMARY KEY, name text, price numeric(10,2), at timestamptz, tags text[])', i);
             END LOOP; END $$;",
        )
        .unwrap();
    let setup = Setup::new(&db.config());
    let start = Instant::now();
    let catalog = setup.discover();
    let took = start.elapsed();
    println!("discovered 5,000 tables in {took:?}");
    let streams = catalog["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 5000);
    assert_eq!(streams[0]["tap_stream_id"], "public-t1");
    assert_eq!(
        stream(&catalog, "public-t4321")["schema"]["properties"]["price"]["x-sql-datatype"],
        "numeric(10,2)"
    );
    assert!(took.as_secs() < 20, "discovery took {took:?}");
}
