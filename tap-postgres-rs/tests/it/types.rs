//! Every type: the value written in SQL, the exact JSON the tap emits, and
//! (for scalars) Postgres parsing that JSON back to the same value.

use crate::common::Setup;
use pg_testkit::catalog::select_only;

/// (column type, SQL literal, exact JSON emitted). One row per case.
const CASES: &[(&str, &str, &str)] = &[
    ("smallint", "-32768", "-32768"),
    ("integer", "2147483647", "2147483647"),
    ("bigint", "-9223372036854775808", "-9223372036854775808"),
    ("bigint", "9223372036854775807", "9223372036854775807"),
    ("oid", "4294967295", "4294967295"),
    (
        "numeric",
        "12345678901234567890.123456789012345678901234567890",
        "12345678901234567890.123456789012345678901234567890",
    ),
    (
        "numeric",
        "-0.00000000000000000001",
        "-0.00000000000000000001",
    ),
    ("numeric", "'NaN'", "\"NaN\""),
    ("numeric", "'Infinity'", "\"Infinity\""),
    ("numeric", "'-Infinity'", "\"-Infinity\""),
    ("numeric(18,4)", "1.5", "1.5000"),
    ("real", "3.14159274", "3.1415927"),
    ("real", "'NaN'", "\"NaN\""),
    ("real", "'-Infinity'", "\"-Infinity\""),
    ("double precision", "0.1", "0.1"),
    ("double precision", "1e308", "1e+308"),
    ("double precision", "4.9e-324", "5e-324"),
    ("double precision", "'Infinity'", "\"Infinity\""),
    ("money", "1234.56", "1234.56"),
    ("money", "-92233720368547758.08", "-92233720368547758.08"),
    ("boolean", "true", "true"),
    ("boolean", "false", "false"),
    ("bit(1)", "B'1'", "\"1\""),
    ("bit(8)", "B'10101010'", "\"10101010\""),
    ("bit varying(16)", "B'1101'", "\"1101\""),
    ("character(5)", "'ab'", "\"ab   \""),
    ("character varying(20)", "'varchar'", "\"varchar\""),
    (
        "text",
        "E'tab\\there\\nnew line\\\\back slash \"quotes\" ''single'' \\r'",
        "\"tab\\there\\nnew line\\\\back slash \\\"quotes\\\" 'single' \\r\"",
    ),
    (
        "text",
        "'ÜNICODE 漢字 😀 \u{200b}'",
        "\"ÜNICODE 漢字 😀 \u{200b}\"",
    ),
    ("text", "''", "\"\""),
    ("text", "E'\\x01ctl'", "\"\\u0001ctl\""),
    ("public.citext", "'CiText'", "\"CiText\""),
    ("name", "'a_name'", "\"a_name\""),
    ("\"char\"", "'x'", "\"x\""),
    (
        "uuid",
        "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
        "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"",
    ),
    ("date", "'2024-02-29'", "\"2024-02-29\""),
    ("date", "'infinity'", "\"infinity\""),
    ("date", "'-infinity'", "\"-infinity\""),
    ("date", "'0044-03-15 BC'", "\"0044-03-15 BC\""),
    ("date", "'5874897-12-31'", "\"5874897-12-31\""),
    ("time", "'13:14:15.123456'", "\"13:14:15.123456\""),
    ("time", "'24:00:00'", "\"24:00:00\""),
    ("time(3)", "'13:14:15.1239'", "\"13:14:15.124\""),
    (
        "time with time zone",
        "'13:14:15+05:30'",
        "\"13:14:15+05:30\"",
    ),
    ("time with time zone", "'00:00:00+00'", "\"00:00:00+00:00\""),
    (
        "time with time zone",
        "'24:00:00-15:59'",
        "\"24:00:00-15:59\"",
    ),
    (
        "timestamp",
        "'2024-02-29 13:14:15.123456'",
        "\"2024-02-29T13:14:15.123456+00:00\"",
    ),
    ("timestamp", "'infinity'", "\"infinity\""),
    (
        "timestamp",
        "'4713-01-01 00:00:00 BC'",
        "\"4713-01-01T00:00:00+00:00 BC\"",
    ),
    (
        "timestamp",
        "'294276-12-31 23:59:59.999999'",
        "\"294276-12-31T23:59:59.999999+00:00\"",
    ),
    (
        "timestamp(3) with time zone",
        "'2024-02-29 13:14:15.1234+02'",
        "\"2024-02-29T11:14:15.123+00:00\"",
    ),
    (
        "timestamp with time zone",
        "'2024-02-29 13:14:15.123456-07:30'",
        "\"2024-02-29T20:44:15.123456+00:00\"",
    ),
    ("timestamp with time zone", "'-infinity'", "\"-infinity\""),
    (
        "timestamp with time zone",
        "'10000-01-01 00:00:00+00'",
        "\"10000-01-01T00:00:00+00:00\"",
    ),
    (
        "timestamp with time zone",
        "'4714-11-24 00:00:00+00 BC'",
        "\"4714-11-24T00:00:00+00:00 BC\"",
    ),
    (
        "interval",
        "'1 year 2 months 3 days 04:05:06.789'",
        "\"P1Y2M3DT4H5M6.789S\"",
    ),
    ("interval", "'-178000000 years'", "\"P-178000000Y\""),
    ("interval year to month", "'1 year 2 months'", "\"P1Y2M\""),
    (
        "json",
        "'{\"a\": [1, 2.50, {\"b\": null}],\n \"n\": 12345678901234567890}'",
        "{\"a\": [1, 2.50, {\"b\": null}],  \"n\": 12345678901234567890}",
    ),
    ("json", "'\"just a string\"'", "\"just a string\""),
    (
        "jsonb",
        "'{\"b\": 1, \"a\": 12345678901234567890.5, \"t\": \"x\\ty\"}'",
        "{\"a\": 12345678901234567890.5, \"b\": 1, \"t\": \"x\\ty\"}",
    ),
    ("jsonb", "'null'", "null"),
    (
        "public.hstore",
        "'a=>1, \"b c\"=>NULL, \"q\\\"uote\"=>\"x\"'",
        "{\"a\":\"1\",\"b c\":null,\"q\\\"uote\":\"x\"}",
    ),
    ("public.mood", "'happy'", "\"happy\""),
    ("public.positive_int", "42", "42"),
    ("public.complex", "ROW(1.5, -2.25)", "\"(1.5,-2.25)\""),
    ("inet", "'192.168.1.5/24'", "\"192.168.1.5/24\""),
    ("cidr", "'2001:db8::/32'", "\"2001:db8::/32\""),
    ("macaddr", "'08:00:2b:01:02:03'", "\"08:00:2b:01:02:03\""),
    (
        "macaddr8",
        "'08:00:2b:01:02:03:04:05'",
        "\"08:00:2b:01:02:03:04:05\"",
    ),
    ("int4range", "'[1,10)'", "\"[1,10)\""),
    (
        "tstzrange",
        "'[2024-01-01 00:00+00,infinity)'",
        "\"[\\\"2024-01-01 00:00:00+00\\\",infinity)\"",
    ),
    ("daterange", "'empty'", "\"empty\""),
    ("point", "'(1,2)'", "\"(1,2)\""),
    ("box", "'(1,1),(0,0)'", "\"(1,1),(0,0)\""),
    (
        "polygon",
        "'((0,0),(1,1),(1,0))'",
        "\"((0,0),(1,1),(1,0))\"",
    ),
    ("circle", "'<(0,0),5>'", "\"<(0,0),5>\""),
    (
        "xml",
        "'<doc><a x=\"1\">text &amp; more</a></doc>'",
        "\"<doc><a x=\\\"1\\\">text &amp; more</a></doc>\"",
    ),
    (
        "tsvector",
        "'the quick brown fox'",
        "\"'brown' 'fox' 'quick' 'the'\"",
    ),
    ("bytea", "'\\x00010203ff00'::bytea", "\"00010203ff00\""),
    ("bytea", "'\\x'::bytea", "\"\""),
    ("integer[]", "'{{1,NULL},{NULL,4}}'", "[[1,null],[null,4]]"),
    (
        "integer[]",
        "'{{{1},{2}},{{3},{4}}}'",
        "[[[1],[2]],[[3],[4]]]",
    ),
    ("integer[]", "'{}'", "[]"),
    ("integer[]", "'[0:1]={7,8}'", "\"[0:1]={7,8}\""),
    (
        "text[]",
        "'{\"a\",\"b c\",\"d,e\",\"f\\\"g\",\"h\\\\i\",\"\",NULL,\"NULL\"}'",
        "[\"a\",\"b c\",\"d,e\",\"f\\\"g\",\"h\\\\i\",\"\",null,\"NULL\"]",
    ),
    (
        "text[]",
        "ARRAY[E'tab\\there', E'new\\nline']",
        "[\"tab\\there\",\"new\\nline\"]",
    ),
    (
        "character varying(10)[]",
        "'{abc,def}'",
        "[\"abc\",\"def\"]",
    ),
    ("numeric(10,2)[]", "'{1.5,NaN,NULL}'", "[1.50,\"NaN\",null]"),
    (
        "double precision[]",
        "'{NaN,Infinity,-Infinity,0.1}'",
        "[\"NaN\",\"Infinity\",\"-Infinity\",0.1]",
    ),
    ("boolean[]", "'{t,f,NULL}'", "[true,false,null]"),
    (
        "date[]",
        "'{2024-01-01,infinity,0044-03-15 BC}'",
        "[\"2024-01-01\",\"infinity\",\"0044-03-15 BC\"]",
    ),
    (
        "timestamp with time zone[]",
        "'{\"2024-01-01 00:00:00+02\",-infinity}'",
        "[\"2023-12-31T22:00:00+00:00\",\"-infinity\"]",
    ),
    (
        "uuid[]",
        "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'",
        "[\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"]",
    ),
    (
        "jsonb[]",
        "ARRAY['{\"a\": 1}'::jsonb, '[1, 2]'::jsonb, 'null'::jsonb, NULL]",
        "[{\"a\": 1},[1, 2],null,null]",
    ),
    ("public.mood[]", "'{sad,happy}'", "[\"sad\",\"happy\"]"),
    (
        "bytea[]",
        "ARRAY['\\x00ff'::bytea, '\\x'::bytea, NULL]",
        "[\"00ff\",\"\",null]",
    ),
    (
        "box[]",
        "ARRAY['(1,1),(0,0)'::box, '(3,3),(2,2)'::box]",
        "[\"(1,1),(0,0)\",\"(3,3),(2,2)\"]",
    ),
    ("money[]", "'{1.25,-3}'", "[1.25,-3.00]"),
    ("inet[]", "'{10.0.0.1,::1}'", "[\"10.0.0.1\",\"::1\"]"),
    (
        "public.hstore[]",
        "ARRAY['a=>1'::public.hstore]",
        "[{\"a\":\"1\"}]",
    ),
    ("public.positive_int[]", "'{1,2}'", "[1,2]"),
    ("int2vector", "'1 2 3'", "\"1 2 3\""),
    ("tsquery", "'fox & dog'", "\"'fox' & 'dog'\""),
    ("txid_snapshot", "'10:20:10,14,15'", "\"10:20:10,14,15\""),
    ("pg_lsn", "'16/B374D848'", "\"16/B374D848\""),
];

#[test]
fn every_type_emits_exact_json_and_round_trips() {
    let db = pg_testkit::cluster().create_database("tap_types");
    let mut client = db.client();
    client
        .batch_execute(
            "CREATE EXTENSION citext; CREATE EXTENSION hstore;
             CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy');
             CREATE DOMAIN public.positive_int AS integer CHECK (VALUE > 0);
             CREATE TYPE public.complex AS (r double precision, i double precision);
             SET lc_monetary = 'C';",
        )
        .unwrap();
    // numeric Infinity and -Infinity exist from PostgreSQL 14 on: older servers reject the literal.
    let numeric_infinity = pg_testkit::cluster().server_version_num() >= 140_000;
    let cases: Vec<_> = CASES
        .iter()
        .filter(|(ty, literal, _)| {
            numeric_infinity || !(*ty == "numeric" && literal.contains("Infinity"))
        })
        .collect();
    for (i, (ty, literal, _)) in cases.iter().enumerate() {
        client
            .batch_execute(&format!(
                "CREATE TABLE t{i} (id integer PRIMARY KEY, v {ty});
                 INSERT INTO t{i} VALUES (1, {literal}), (2, NULL);"
            ))
            .unwrap_or_else(|e| panic!("case {i} ({ty} {literal}): {e}"));
    }
    let setup = Setup::new(&db.config());
    let catalog = setup.discover();
    let ids: Vec<String> = (0..cases.len()).map(|i| format!("public-t{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let out = setup.sync_ok(&select_only(&catalog, &ids, "FULL_TABLE", None), None);

    let mut failures = Vec::new();
    for (i, (ty, literal, want)) in cases.iter().enumerate() {
        let stream = format!("public-t{i}");
        let rows: Vec<_> = out
            .raw_records
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(rows.len(), 2, "{stream}");
        let got = &rows[0]["v"];
        if got != want {
            failures.push(format!("{ty} {literal}: got {got}, want {want}"));
        }
        assert_eq!(rows[1]["v"], "null", "{ty}: NULL");
        // Scalars: Postgres parses what we sent back to the same value.
        let parsed: serde_json::Value = serde_json::from_str(got).unwrap();
        let text = match &parsed {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(_) => Some(got.clone()),
            _ => None,
        };
        if let (Some(text), false) = (text, ty.ends_with("[]") || ty.starts_with("json")) {
            // bytea travels as plain hex (contentEncoding base16).
            let parse = if *ty == "bytea" {
                "decode($1::text, 'hex')".to_owned()
            } else {
                format!("($1::text)::{ty}")
            };
            let same: bool = client
                .query_one(
                    &format!("SELECT {parse}::text = v::text FROM t{i} WHERE id = 1"),
                    &[&text],
                )
                .unwrap_or_else(|e| panic!("{ty}: {text:?} does not parse back: {e}"))
                .get(0);
            if !same {
                failures.push(format!(
                    "{ty} {literal}: {text:?} parses back to another value"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The SCHEMA carries the exact source type.
    let schemas = out.of_type("SCHEMA");
    for (i, (ty, _, _)) in cases.iter().enumerate() {
        let s = schemas
            .iter()
            .find(|m| m["stream"] == format!("public-t{i}"))
            .unwrap();
        let declared = s["schema"]["properties"]["v"]["x-sql-datatype"]
            .as_str()
            .unwrap();
        let want: String = client
            .query_one(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = $1::text::regclass AND attname = 'v'",
                &[&format!("t{i}")],
            )
            .unwrap()
            .get(0);
        let want = match want.as_str() {
            "citext" | "hstore" | "mood" | "positive_int" | "complex" => format!("public.{want}"),
            "hstore[]" | "mood[]" | "positive_int[]" => format!("public.{want}"),
            _ => want,
        };
        assert_eq!(declared, want, "case {i} ({ty})");
    }
}

/// Strings full of what COPY, array and hstore syntax escape, through text,
/// text[] (with SQL NULLs) and hstore: what arrives is exactly what was stored.
#[test]
fn awkward_strings_survive_copy_array_and_hstore_syntax() {
    const ALPHABET: &[char] = &[
        'a', 'Z', '"', '\\', '{', '}', ',', ' ', '\t', '\n', '\r', '=', '>', 'N', 'U', 'L', 'é',
        '漢', '😀', '\u{1}', '\u{7f}', '\'', ';', '(', ')', '[', ']', ':',
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let word = |next: &mut dyn FnMut(usize) -> usize| -> String {
        let len = next(10);
        (0..len).map(|_| ALPHABET[next(ALPHABET.len())]).collect()
    };
    let db = pg_testkit::cluster().create_database("tap_awkward");
    let mut client = db.client();
    client
        .batch_execute(
            "CREATE EXTENSION hstore;
             CREATE TABLE w (id integer PRIMARY KEY, s text, arr text[], h public.hstore)",
        )
        .unwrap();
    let mut expected = Vec::new();
    for id in 0..300i32 {
        let s = word(&mut next);
        let mut arr: Vec<Option<String>> = (0..next(4)).map(|_| Some(word(&mut next))).collect();
        if id % 7 == 0 {
            arr.push(None);
            arr.push(Some("NULL".into()));
        }
        let keys: Vec<String> = (0..next(3))
            .map(|k| format!("{k}{}", word(&mut next)))
            .collect();
        let values: Vec<Option<String>> = keys
            .iter()
            .map(|_| (next(5) > 0).then(|| word(&mut next)))
            .collect();
        client
            .execute(
                "INSERT INTO w VALUES ($1, $2, $3, public.hstore($4::text[], $5::text[]))",
                &[&id, &s, &arr, &keys, &values],
            )
            .unwrap();
        assert_eq!(keys.len(), values.len());
        let h: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .cloned()
            .zip(values.iter().map(|v| serde_json::json!(v)))
            .collect();
        expected.push(serde_json::json!({"id": id, "s": s, "arr": arr, "h": h}));
    }
    let setup = Setup::new(&db.config());
    let out = setup.sync_ok(
        &select_only(&setup.discover(), &["public-w"], "FULL_TABLE", None),
        None,
    );
    let got = out.records("public-w");
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(*g, e);
    }
}
