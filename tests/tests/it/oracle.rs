//! Postgres as the oracle: generated values of every kind of type (edge
//! values included: long and special numerics, NaN/±Infinity/-0 floats, BC
//! and infinite dates, times at 24:00, arrays with NULLs and bounds, nested
//! json, ranges, multiranges, geometric types, domains, enums) go through
//! `tap-postgres-rs | target-postgres-rs`, and Postgres prints each column of
//! source and destination (`col::text`): the two must be identical.
//!
//! A few cases per run, ~50 rows each, in one table per case (a pipe run per
//! case), so it stays well under a minute in debug builds.

use std::cell::{Cell, RefCell};

use e2e_tests::{discover, pipe, select, write_json};
use pg_testkit::cluster;
use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Created in source and destination before the first case.
const TYPES: &str = "
    CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy', 'a \"quoted\", label');
    CREATE DOMAIN public.posint AS integer CHECK (VALUE > 0);
    CREATE DOMAIN public.short_text AS text CHECK (length(VALUE) < 100);
    CREATE DOMAIN public.int_list AS integer[];";

type Value = Option<String>;

fn nullable(s: impl Strategy<Value = String> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![1 => Just(None), 6 => s.prop_map(Some)].boxed()
}

fn digits(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(0u8..10, 1..=max)
        .prop_map(|d| d.into_iter().map(|d| char::from(b'0' + d)).collect())
}

/// numeric: up to 40 integer and 30 fraction digits, and the special values
/// (±Infinity only from PostgreSQL 14: the value is skipped, not the test).
fn numeric(pg14: bool) -> impl Strategy<Value = String> {
    let finite = (any::<bool>(), digits(40), proptest::option::of(digits(30))).prop_map(
        |(neg, int, frac)| {
            let sign = if neg { "-" } else { "" };
            match frac {
                Some(f) => format!("{sign}{int}.{f}"),
                None => format!("{sign}{int}"),
            }
        },
    );
    let infinity = if pg14 { "Infinity" } else { "NaN" };
    let minus_infinity = if pg14 { "-Infinity" } else { "NaN" };
    prop_oneof![
        8 => finite,
        1 => Just("NaN".to_owned()),
        1 => Just(infinity.to_owned()),
        1 => Just(minus_infinity.to_owned()),
    ]
}

fn float8() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => any::<f64>().prop_map(float_text),
        1 => prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(f64::MIN_POSITIVE),
            Just(5e-324)
        ]
        .prop_map(float_text),
    ]
}

fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{f:e}")
    }
}

/// Text with what COPY, JSON and array syntax escape (no NUL: Postgres text
/// cannot hold one).
fn text() -> impl Strategy<Value = String> {
    const CHARS: &[char] = &[
        'a', 'Z', '0', ' ', '\t', '\n', '\r', '"', '\'', '\\', '{', '}', ',', '=', '>', 'é', '漢',
        '😀', '\u{1}', '\u{7f}', '\u{200b}', 'N', 'U', 'L',
    ];
    proptest::collection::vec(proptest::sample::select(CHARS), 0..16)
        .prop_map(|c| c.into_iter().collect())
}

/// `YYYY-MM-DD[ BC]`: years 1..=9999 either side of Christ, past 9999, and
/// the infinities.
fn date() -> impl Strategy<Value = String> {
    let ymd = (1u32..=12, 1u32..=28);
    prop_oneof![
        6 => (1u32..=9999, ymd.clone()).prop_map(|(y, (m, d))| format!("{y:04}-{m:02}-{d:02}")),
        1 => (1u32..=4712, ymd.clone()).prop_map(|(y, (m, d))| format!("{y:04}-{m:02}-{d:02} BC")),
        1 => (10000u32..=294275, ymd).prop_map(|(y, (m, d))| format!("{y}-{m:02}-{d:02}")),
        1 => Just("infinity".to_owned()),
        1 => Just("-infinity".to_owned()),
    ]
}

fn time() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => (0u32..24, 0u32..60, 0u32..60, 0u32..1_000_000)
            .prop_map(|(h, m, s, us)| format!("{h:02}:{m:02}:{s:02}.{us:06}")),
        1 => Just("24:00:00".to_owned()),
    ]
}

fn offset() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        0u32..16,
        0u32..60,
        prop_oneof![3 => Just(0u32), 1 => 0u32..60],
    )
        .prop_map(|(neg, h, m, s)| {
            let sign = if neg { '-' } else { '+' };
            if s == 0 {
                format!("{sign}{h:02}:{m:02}")
            } else {
                format!("{sign}{h:02}:{m:02}:{s:02}")
            }
        })
}

fn timestamp(with_tz: bool) -> impl Strategy<Value = String> {
    (date(), time(), offset()).prop_map(move |(d, t, o)| {
        if d.ends_with("infinity") {
            return d;
        }
        let t = if t.starts_with("24") {
            "23:59:59.999999".to_owned()
        } else {
            t
        };
        let (d, bc) = match d.strip_suffix(" BC") {
            Some(d) => (d.to_owned(), " BC"),
            None => (d, ""),
        };
        let o = if with_tz { o } else { String::new() };
        format!("{d} {t}{o}{bc}")
    })
}

fn interval() -> impl Strategy<Value = String> {
    (
        -10000i32..10000,
        -100i32..100,
        -1000i32..1000,
        any::<i32>(),
        0u32..1_000_000,
    )
        .prop_map(|(y, mo, d, s, us)| {
            format!("{y} years {mo} mons {d} days {s} seconds {us} microseconds")
        })
}

fn uuid() -> impl Strategy<Value = String> {
    any::<[u8; 16]>().prop_map(|b| {
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    })
}

fn inet() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32)
            .prop_map(|(a, m)| format!("{}.{}.{}.{}/{m}", a[0], a[1], a[2], a[3])),
        (any::<[u16; 8]>()).prop_map(|a| a
            .iter()
            .map(|x| format!("{x:x}"))
            .collect::<Vec<_>>()
            .join(":")),
    ]
}

/// Nested JSON (serialized compactly: a newline between tokens is the
/// documented limit of `json`, see the README's value contract). With
/// `nul`, strings may hold NUL (written `\u0000`): `json` keeps the escape
/// verbatim, `jsonb` refuses it.
fn json_value(nul: bool) -> impl Strategy<Value = serde_json::Value> {
    let nul_text = if nul {
        (text(), text())
            .prop_map(|(a, b)| format!("{a}\0{b}"))
            .boxed()
    } else {
        text().boxed()
    };
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1e10f64..1e10).prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
        nul_text.prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-z\"\\\\ ]{0,4}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A json column's value: any JSON but a top-level `null`, which arrives as
/// SQL NULL (the documented limit: a Singer record cannot tell them apart).
fn json_document(nul: bool) -> impl Strategy<Value = String> {
    json_value(nul)
        .prop_filter("a top-level null is SQL NULL", |v| !v.is_null())
        .prop_map(|v| v.to_string())
}

fn quote_element(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An array literal of 0–4 elements (NULLs among them), with explicit lower
/// bounds now and then.
fn array(
    element: impl Strategy<Value = String> + 'static,
    quote: bool,
) -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(proptest::option::of(element), 0..5),
        prop_oneof![4 => Just(None), 1 => (-5i32..5).prop_map(Some)],
    )
        .prop_map(move |(items, lower)| {
            let body: Vec<String> = items
                .iter()
                .map(|i| match i {
                    None => "NULL".to_owned(),
                    Some(s) if quote => quote_element(s),
                    Some(s) => s.clone(),
                })
                .collect();
            let body = format!("{{{}}}", body.join(","));
            match lower {
                Some(lb) if !items.is_empty() => {
                    format!("[{lb}:{}]={body}", lb + items.len() as i32 - 1)
                }
                _ => body,
            }
        })
}

fn int4range() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("empty".to_owned()),
        6 => (any::<i32>(), any::<i32>(), proptest::sample::select(&["[)", "(]", "[]", "()"][..]))
            .prop_map(|(a, b, br)| {
                let (lo, hi) = (a.min(b), a.max(b));
                let br = br.as_bytes();
                format!("{}{lo},{hi}{}", br[0] as char, br[1] as char)
            }),
        1 => any::<i32>().prop_map(|a| format!("[{a},)")),
    ]
}

fn point() -> impl Strategy<Value = String> {
    (-1e6f64..1e6, -1e6f64..1e6).prop_map(|(x, y)| format!("({x},{y})"))
}

/// Columns of the generated table: (name, type, values). `pg14` gates the
/// PostgreSQL 14+ values and types.
fn columns(pg14: bool) -> Vec<(&'static str, &'static str, BoxedStrategy<Value>)> {
    let mut c: Vec<(&'static str, &'static str, BoxedStrategy<Value>)> = vec![
        (
            "i2",
            "smallint",
            nullable(any::<i16>().prop_map(|v| v.to_string())),
        ),
        (
            "i4",
            "integer",
            nullable(any::<i32>().prop_map(|v| v.to_string())),
        ),
        (
            "i8",
            "bigint",
            nullable(any::<i64>().prop_map(|v| v.to_string())),
        ),
        ("n", "numeric", nullable(numeric(pg14))),
        (
            "n_scaled",
            "numeric(12,3)",
            nullable(
                (-999_999_999i64..999_999_999, 0u32..1000).prop_map(|(a, b)| format!("{a}.{b:03}")),
            ),
        ),
        ("f8", "double precision", nullable(float8())),
        (
            "f4",
            "real",
            nullable(any::<f32>().prop_map(|f| float_text(f64::from(f)))),
        ),
        (
            "b",
            "boolean",
            nullable(any::<bool>().prop_map(|b| b.to_string())),
        ),
        ("t", "text", nullable(text())),
        ("vc", "character varying(20)", nullable(text())),
        (
            "by",
            "bytea",
            nullable(proptest::collection::vec(any::<u8>(), 0..20).prop_map(|b| {
                format!(
                    "\\x{}",
                    b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                )
            })),
        ),
        ("d", "date", nullable(date())),
        ("ts", "timestamp", nullable(timestamp(false))),
        (
            "tstz",
            "timestamp with time zone",
            nullable(timestamp(true)),
        ),
        ("tm", "time", nullable(time())),
        (
            "tmtz",
            "time with time zone",
            nullable((time(), offset()).prop_map(|(t, o)| format!("{t}{o}"))),
        ),
        ("iv", "interval", nullable(interval())),
        ("u", "uuid", nullable(uuid())),
        ("ip", "inet", nullable(inet())),
        (
            "net",
            "cidr",
            nullable(any::<[u8; 3]>().prop_map(|a| format!("{}.{}.{}.0/24", a[0], a[1], a[2]))),
        ),
        ("j", "json", nullable(json_document(true))),
        ("jb", "jsonb", nullable(json_document(false))),
        (
            "ai",
            "integer[]",
            nullable(array(any::<i32>().prop_map(|v| v.to_string()), false)),
        ),
        ("an", "numeric[]", nullable(array(numeric(false), false))),
        ("at", "text[]", nullable(array(text(), true))),
        ("ad", "date[]", nullable(array(date(), true))),
        (
            "aai",
            "integer[]",
            nullable(
                (any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>())
                    .prop_map(|(a, b, c, d)| format!("{{{{{a},{b}}},{{{c},NULL}},{{NULL,{d}}}}}")),
            ),
        ),
        ("r", "int4range", nullable(int4range())),
        (
            "nr",
            "numrange",
            nullable((-1e6f64..1e6, 0f64..1e6).prop_map(|(a, w)| format!("[{a},{})", a + w))),
        ),
        (
            "dr",
            "daterange",
            nullable((1u32..=9999, 1u32..=12, 1u32..=28).prop_map(|(y, m, d)| {
                format!(
                    "[{y:04}-{m:02}-{d:02},{:04}-{m:02}-{d:02})",
                    (y + 1).min(9999)
                )
            })),
        ),
        ("pt", "point", nullable(point())),
        (
            "bx",
            "box",
            nullable((point(), point()).prop_map(|(a, b)| format!("{a},{b}"))),
        ),
        (
            "ci",
            "circle",
            nullable((point(), 0f64..1e6).prop_map(|(c, r)| format!("<{c},{r}>"))),
        ),
        (
            "ls",
            "lseg",
            nullable((point(), point()).prop_map(|(a, b)| format!("[{a},{b}]"))),
        ),
        (
            "pa",
            "path",
            nullable(
                proptest::collection::vec(point(), 1..5).prop_map(|p| format!("[{}]", p.join(","))),
            ),
        ),
        (
            "pg",
            "polygon",
            nullable(
                proptest::collection::vec(point(), 1..5).prop_map(|p| format!("({})", p.join(","))),
            ),
        ),
        (
            "mood",
            "public.mood",
            nullable(
                proptest::sample::select(&["sad", "ok", "happy", "a \"quoted\", label"][..])
                    .prop_map(str::to_owned),
            ),
        ),
        (
            "moods",
            "public.mood[]",
            nullable(array(
                proptest::sample::select(&["sad", "a \"quoted\", label"][..])
                    .prop_map(str::to_owned),
                true,
            )),
        ),
        (
            "pos",
            "public.posint",
            nullable((1i32..i32::MAX).prop_map(|v| v.to_string())),
        ),
        ("st", "public.short_text", nullable(text())),
        // bpchar without a length keeps any length (issue 13, defect 4).
        ("bp", "bpchar", nullable(text())),
        // A domain over an array is written as its base array (defect 5).
        (
            "dl",
            "public.int_list",
            nullable(array(any::<i32>().prop_map(|v| v.to_string()), true)),
        ),
    ];
    if pg14 {
        c.push((
            "mr",
            "int4multirange",
            nullable(
                proptest::collection::vec(int4range(), 0..3)
                    .prop_map(|r| format!("{{{}}}", r.join(","))),
            ),
        ));
    }
    c
}

#[test]
fn generated_values_of_every_type_arrive_as_postgres_prints_them() {
    let src = cluster().create_database("oracle_src");
    let dst = cluster().create_database("oracle_dst");
    let mut s = src.client();
    let mut d = dst.client();
    let version: i32 = s
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .unwrap()
        .get(0);
    let pg14 = version >= 140000;
    s.batch_execute(TYPES).unwrap();
    d.batch_execute(TYPES).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tap_config = write_json(dir.path(), "tap.json", &src.config());
    let target_config = write_json(dir.path(), "target.json", &dst.config());

    let cols = columns(pg14);
    let row: Vec<BoxedStrategy<Value>> = cols.iter().map(|(_, _, s)| s.clone()).collect();
    let table = proptest::collection::vec(row, 50);
    let mut runner = TestRunner::new(Config {
        cases: 3,
        // Each case is a whole pipe run: report the failing case as it is.
        max_shrink_iters: 0,
        failure_persistence: None,
        ..Config::default()
    });
    // The runner takes a `Fn`: the clients and the case number are borrowed per case.
    let (source, destination) = (RefCell::new(s), RefCell::new(d));
    let case = Cell::new(0);
    runner
        .run(&table, |rows| {
            case.set(case.get() + 1);
            let name = format!("gen{}", case.get());
            let (mut s, mut d) = (source.borrow_mut(), destination.borrow_mut());
            let defs: Vec<String> = cols.iter().map(|(n, t, _)| format!("{n} {t}")).collect();
            s.batch_execute(&format!(
                "CREATE TABLE public.{name} (id integer PRIMARY KEY, {})",
                defs.join(", ")
            ))
            .unwrap();
            let params: Vec<String> = cols
                .iter()
                .enumerate()
                .map(|(i, (_, t, _))| format!("${}::text::{t}", i + 2))
                .collect();
            let insert = s
                .prepare(&format!(
                    "INSERT INTO public.{name} VALUES ($1, {})",
                    params.join(", ")
                ))
                .unwrap();
            for (id, values) in rows.iter().enumerate() {
                let id = id as i32;
                let mut args: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&id];
                args.extend(
                    values
                        .iter()
                        .map(|v| v as &(dyn postgres::types::ToSql + Sync)),
                );
                s.execute(&insert, &args)
                    .map_err(|e| TestCaseError::fail(format!("insert {values:?}: {e}")))?;
            }
            let mut catalog = discover(&tap_config);
            let stream = format!("public-{name}");
            select(&mut catalog, &[stream.as_str()], "FULL_TABLE", None);
            let catalog = write_json(dir.path(), "catalog.json", &catalog);
            pipe(&tap_config, &catalog, None, &target_config).assert_success();

            let mut differences = Vec::new();
            for (col, ty, _) in &cols {
                let sql = format!("SELECT id, {col}::text FROM public.{name} ORDER BY id");
                let a: Vec<(i32, Option<String>)> = s
                    .query(&sql, &[])
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                let b: Vec<(i32, Option<String>)> = d
                    .query(&sql, &[])
                    .map_err(|e| TestCaseError::fail(format!("{col}: {e}")))?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x != y) {
                    differences.push(format!("{col} ({ty}): {x:?} arrived as {y:?}"));
                } else if a.len() != b.len() {
                    differences.push(format!("{col}: {} rows arrived as {}", a.len(), b.len()));
                }
            }
            prop_assert!(differences.is_empty(), "{}", differences.join("\n"));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
