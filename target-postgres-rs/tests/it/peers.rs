//! What third-party taps send (testdata/peers): nullable unions, `anyOf`,
//! formats, encodings, bounds, `multipleOf`, numbers as strings, and
//! `x-sql-datatype` names that are upper case or from other SQL dialects.

use std::path::Path;

use crate::common::*;
use pg_testkit::rows::text;
use serde_json::json;

fn peers(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/peers")
        .join(file)
}

#[test]
fn sdk_tap_conventions_land_typed_and_exact() {
    let db = pg_testkit::cluster().create_database("peers");
    let r = run_file(&db, json!({}), &peers("sdk-tap-types.jsonl"));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let types = text(
        &db,
        "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
         FROM pg_attribute WHERE attrelid = 'public.peer_types'::regclass AND attnum > 0 \
         AND attname NOT LIKE '\\_sdc\\_%'",
    );
    assert_eq!(
        types.as_deref(),
        Some(
            "id bigint, name text, updated_at timestamp with time zone, birthday date, \
             opens time without time zone, ref uuid, email text, photo text, small bigint, \
             unsigned_big numeric, price numeric, amount numeric, \
             pg_ts timestamp without time zone, pg_varchar character varying, pg_int integer, \
             pg_bigint bigint, pg_double double precision, pg_jsonb jsonb, pg_numeric numeric(10,2), \
             my_flag boolean, my_datetime timestamp with time zone, my_longtext text, added text"
        )
    );
    let rows = text(
        &db,
        "SELECT string_agg(concat_ws('|', id, name, updated_at, birthday, opens, ref, email, photo, \
           small, unsigned_big, price, amount, pg_ts, pg_varchar, pg_int, pg_bigint, pg_double, \
           pg_jsonb, pg_numeric, my_flag, my_datetime, my_longtext, added), E'\\n' ORDER BY id) \
         FROM public.peer_types",
    );
    // multipleOf is not a scale: numeric(p, 0.01's scale) would round 1.005.
    assert_eq!(
        rows.as_deref(),
        Some(
            "1|Ada|2024-05-01 12:34:56.789+00|1815-12-10|09:30:00|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|\
             ada@example.com|aGVsbG8=|-32768|18446744073709551615|1.005|12.50|2024-05-01 12:34:56|v|\
             2147483647|9223372036854775807|1.5|{\"k\": [1, \"x\"]}|12.34|t|2024-05-01 12:34:56+00|long\n\
             2\n\
             3|Ada|2024-05-01 12:34:56.789+00|1815-12-10|09:30:00|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|\
             ada@example.com|aGVsbG8=|-32768|18446744073709551615|1.005|-0.5|2024-05-01 12:34:56|v|\
             2147483647|9223372036854775807|1.5|{\"k\": [1, \"x\"]}|12.34|t|2024-05-01 12:34:56+00|long|x\n\
             4"
        )
    );
    // Modifiers are kept for Postgres' own spelling in any case (NUMERIC(10, 2)),
    // not for another spelling (VARCHAR(255): unbounded, refusing nothing).
    // One warning per column whose declared type the destination lacks,
    // however often its SCHEMA arrives.
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("no such type"))
        .collect();
    assert_eq!(warnings.len(), 3, "{}", r.stderr);
    for (column, declared) in [
        ("my_flag", "TINYINT(1)"),
        ("my_datetime", "DATETIME"),
        ("my_longtext", "LONGTEXT"),
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("property=\"{column}\""))
                    && w.contains(&format!("type=\"{declared}\""))),
            "{column}: {warnings:?}"
        );
    }
}
