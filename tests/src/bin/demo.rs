//! The main job in one command: start a throwaway PostgreSQL (or use yours),
//! create a realistic sample database, discover it, select every stream, pipe
//! `tap-postgres-rs | target-postgres-rs`, and report rows and throughput per
//! stream. Everything it created is removed when it ends.
//!
//! ```text
//! cargo run --release --bin demo                  # throwaway server, ~430k rows
//! cargo run --release --bin demo -- --scale 5     # five times the rows (any N >= 1)
//! PGPASSWORD=... cargo run --release --bin demo -- --host db.example --port 5432 --user me
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::{bin, select, write_json};
use serde_json::{json, Value};

/// Where the demo's databases live.
struct Server {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    throwaway: bool,
}

impl Server {
    fn client(&self, database: &str) -> postgres::Client {
        let mut c = postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(database);
        if let Some(p) = &self.password {
            c.password(p);
        }
        c.connect(postgres::NoTls).unwrap_or_else(|e| {
            eprintln!(
                "demo: cannot connect to {}:{} as {}: {}",
                self.host,
                self.port,
                self.user,
                chain(&e)
            );
            std::process::exit(1);
        })
    }

    fn config(&self, database: &str) -> Value {
        json!({"host": self.host, "port": self.port, "user": self.user,
               "password": self.password.clone().unwrap_or_default(), "database": database,
               "ssl_mode": if self.throwaway { "disable" } else { "prefer" }})
    }
}

/// demo: throwaway Postgres + sample database + tap-postgres-rs | target-postgres-rs
#[derive(clap::Parser, Debug)]
#[command(name = "demo")]
struct Args {
    /// Multiply the sample's ~430k rows by N.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    scale: u64,
    /// Use your server instead of a throwaway one (password from PGPASSWORD).
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// Its port.
    #[arg(long, default_value_t = 5432, value_name = "P")]
    port: u16,
    /// Its user.
    #[arg(long, default_value = "postgres", value_name = "U")]
    user: String,
}

/// An error and its causes: `postgres::Error` alone says only `db error`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = s.source();
    }
    text
}

/// The sample: a small shop. Deterministic (no random()), varied types.
fn sample_sql(scale: u64) -> String {
    let n = |base: u64| base * scale;
    format!(
        "CREATE TYPE order_status AS ENUM ('pending', 'paid', 'shipped', 'cancelled');
         CREATE TABLE customers (
             id bigint PRIMARY KEY, email text NOT NULL, name text, country char(2),
             created_at timestamptz NOT NULL, balance numeric(12,2), tags text[], prefs jsonb);
         INSERT INTO customers SELECT i, 'user' || i || '@example.com', 'Customer ' || i,
             (ARRAY['DE','FR','US','JP','BR','IN'])[1 + i % 6], '2020-01-01'::timestamptz + i * interval '17 minutes',
             round((i % 100000)::numeric / 7, 2), ARRAY['t' || (i % 5), 'vip' || (i % 3)],
             jsonb_build_object('newsletter', i % 2 = 0, 'lang', (ARRAY['de','fr','en'])[1 + i % 3])
           FROM generate_series(1::bigint, {customers}) i;
         CREATE TABLE products (
             id integer PRIMARY KEY, sku uuid NOT NULL, name varchar(120), price numeric(10,2),
             weight_kg real, active boolean, dims jsonb);
         INSERT INTO products SELECT i, md5('sku' || i)::uuid, 'Product ' || i || E' \\u2014 \"special\"',
             round((i % 5000)::numeric / 3 + 1, 2), (i % 97) / 10.0, i % 11 <> 0,
             jsonb_build_object('w', i % 50, 'h', i % 30, 'd', i % 20)
           FROM generate_series(1::bigint, {products}) i;
         CREATE TABLE orders (
             id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers, placed_at timestamptz NOT NULL,
             status order_status NOT NULL, total numeric(14,2), shipping_address text, client_ip inet, notes text);
         INSERT INTO orders SELECT i, 1 + (i * 7919) % {customers}, '2023-01-01'::timestamptz + i * interval '3 minutes',
             (ARRAY['pending','paid','shipped','cancelled']::order_status[])[1 + i % 4],
             round((i % 100000)::numeric / 9, 2), i || E' Main Street\\nApt ' || (i % 50),
             ('10.' || (i % 256) || '.' || (i / 256 % 256) || '.1')::inet,
             CASE WHEN i % 13 = 0 THEN E'gift\\twrap, \"fragile\" \\\\ ok' END
           FROM generate_series(1::bigint, {orders}) i;
         CREATE TABLE order_items (
             order_id bigint REFERENCES orders, line smallint, product_id integer REFERENCES products,
             quantity integer NOT NULL, unit_price numeric(10,2), PRIMARY KEY (order_id, line));
         INSERT INTO order_items SELECT o, l, 1 + (o * 31 + l) % {products}, 1 + (o + l) % 5, round(((o + l) % 5000)::numeric / 3 + 1, 2)
           FROM generate_series(1::bigint, {orders}) o, generate_series(1, 2 + (o % 2)::int) l;
         CREATE TABLE events (
             id bigint PRIMARY KEY, occurred_at timestamptz NOT NULL, kind text, payload jsonb, duration interval,
             latency_ms double precision);
         INSERT INTO events SELECT i, '2024-01-01'::timestamptz + i * interval '1 second' + (i % 1000) * interval '1 microsecond',
             (ARRAY['view','click','purchase','refund'])[1 + i % 4],
             jsonb_build_object('page', '/p/' || (i % 500), 'ua', 'Mozilla/5.0', 'items', jsonb_build_array(i % 7, i % 11)),
             (i % 3600) * interval '1 second', (i % 10000) / 7.0
           FROM generate_series(1::bigint, {events}) i;
         ANALYZE;",
        customers = n(20_000),
        products = n(2_000),
        orders = n(100_000),
        events = n(60_000),
    )
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Per-stream counts seen on the pipe, with first and last record times.
#[derive(Default)]
struct StreamStats {
    rows: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    let started = Instant::now();
    // `bin` builds the two binaries behind `cargo --quiet`: say why it waits.
    eprint!(
        "demo: building tap-postgres-rs and target-postgres-rs ({}, first run takes about 1-2 minutes) ... ",
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    bin("tap-postgres-rs");
    bin("target-postgres-rs");
    eprintln!("{:.1} s", started.elapsed().as_secs_f64());
    let server = match &args.host {
        Some(h) => Server {
            host: h.clone(),
            port: args.port,
            user: args.user.clone(),
            password: std::env::var("PGPASSWORD").ok(),
            throwaway: false,
        },
        None => {
            eprint!("demo: starting a throwaway PostgreSQL ... ");
            let c = pg_testkit::cluster();
            eprintln!(
                "port {} ({:.1} s)",
                c.port(),
                started.elapsed().as_secs_f64()
            );
            Server {
                host: c.host().into(),
                port: c.port(),
                user: pg_testkit::SUPERUSER.into(),
                password: None,
                throwaway: true,
            }
        }
    };
    let source = format!("demo_source_{}", std::process::id());
    let target = format!("demo_target_{}", std::process::id());
    {
        let mut admin = server.client("postgres");
        for db in [&source, &target] {
            if let Err(e) = admin.batch_execute(&format!("CREATE DATABASE \"{db}\"")) {
                eprintln!("demo: cannot create database {db}: {}", chain(&e));
                std::process::exit(1);
            }
        }
    }
    let result = std::panic::catch_unwind(|| run(&server, &source, &target, args.scale));
    if !server.throwaway {
        let mut admin = server.client("postgres");
        for db in [&source, &target] {
            // End its sessions first: DROP DATABASE ... WITH (FORCE) needs PostgreSQL 13.
            let _ = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[db],
            );
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\""));
        }
    }
    match result {
        Ok(true) => eprintln!(
            "demo: done in {:.1} s; everything it created is being removed.",
            started.elapsed().as_secs_f64()
        ),
        _ => std::process::exit(1),
    }
}

fn run(server: &Server, source: &str, target: &str, scale: u64) -> bool {
    let t = Instant::now();
    eprint!("demo: creating the sample database (customers, products, orders, order_items, events) ... ");
    if let Err(e) = server.client(source).batch_execute(&sample_sql(scale)) {
        eprintln!("\ndemo: creating the sample failed: {}", chain(&e));
        return false;
    }
    eprintln!("{:.1} s", t.elapsed().as_secs_f64());

    let dir = tempfile::tempdir().unwrap();
    let tap_config = write_json(dir.path(), "tap.json", &server.config(source));
    let target_config = write_json(dir.path(), "target.json", &server.config(target));
    let (tap, target_bin) = (bin("tap-postgres-rs"), bin("target-postgres-rs"));

    let out = Command::new(&tap)
        .arg("--config")
        .arg(&tap_config)
        .arg("--discover")
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "demo: discovery failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return false;
    }
    let mut catalog: Value = serde_json::from_slice(&out.stdout).unwrap();
    select(&mut catalog, &[], "FULL_TABLE", None);
    let streams = catalog["streams"].as_array().map_or(0, Vec::len);
    let catalog_path = write_json(dir.path(), "catalog.json", &catalog);
    eprintln!("demo: discovered {streams} streams, all selected (FULL_TABLE)");
    eprintln!(
        "demo: {} --config tap.json --catalog catalog.json | {} --config target.json",
        tap.display(),
        target_bin.display()
    );

    let mut tap_child = Command::new(&tap)
        .arg("--config")
        .arg(&tap_config)
        .arg("--catalog")
        .arg(&catalog_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut target_child = Command::new(&target_bin)
        .arg("--config")
        .arg(&target_config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tap_err = std::thread::spawn({
        let e = tap_child.stderr.take().unwrap();
        move || std::io::read_to_string(e).unwrap_or_default()
    });
    let target_err = std::thread::spawn({
        let e = target_child.stderr.take().unwrap();
        move || std::io::read_to_string(e).unwrap_or_default()
    });
    let states = std::thread::spawn({
        let o = target_child.stdout.take().unwrap();
        move || BufReader::new(o).lines().map_while(Result::ok).count()
    });

    // Relay the pipe through here to count rows per stream for the progress line.
    let total = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let progress = std::thread::spawn({
        let total = total.clone();
        let done = done.clone();
        move || {
            let start = Instant::now();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let n = total.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64();
                eprint!(
                    "\rdemo: moving ... {} rows, {} rows/s   ",
                    thousands(n),
                    thousands((n as f64 / secs) as u64)
                );
            }
            eprintln!();
        }
    });
    let pipe_start = Instant::now();
    let mut stats: BTreeMap<String, StreamStats> = BTreeMap::new();
    {
        let mut reader = BufReader::with_capacity(1 << 20, tap_child.stdout.take().unwrap());
        let mut writer = BufWriter::with_capacity(1 << 20, target_child.stdin.take().unwrap());
        let mut line = Vec::new();
        const PREFIX: &[u8] = b"{\"type\":\"RECORD\",\"stream\":";
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            if line.starts_with(PREFIX) {
                if let Ok(stream) = serde_json::Deserializer::from_slice(&line[PREFIX.len()..])
                    .into_iter::<String>()
                    .next()
                    .transpose()
                {
                    let s = stats.entry(stream.unwrap_or_default()).or_default();
                    let now = Instant::now();
                    s.rows += 1;
                    s.first.get_or_insert(now);
                    s.last = Some(now);
                    total.fetch_add(1, Ordering::Relaxed);
                }
            }
            if writer.write_all(&line).is_err() {
                break;
            }
            line.clear();
        }
    }
    let tap_status = tap_child.wait().unwrap();
    let target_status = target_child.wait().unwrap();
    let elapsed = pipe_start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    progress.join().unwrap();
    let state_lines = states.join().unwrap();
    let (tap_err, target_err) = (tap_err.join().unwrap(), target_err.join().unwrap());
    if !tap_status.success() || !target_status.success() {
        eprintln!("demo: the pipe failed (tap {tap_status}, target {target_status})\n--- tap\n{tap_err}\n--- target\n{target_err}");
        return false;
    }

    println!(
        "\n{:<28} {:>12} {:>10} {:>14}",
        "stream", "rows", "seconds", "rows/s"
    );
    let mut dst = server.client(target);
    let mut src = server.client(source);
    let mut all_match = true;
    let mut rows_total = 0;
    for (stream, s) in &stats {
        let secs = match (s.first, s.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-3),
            _ => 0.0,
        };
        let (schema, table) = stream.split_once('-').unwrap_or(("public", stream));
        let count = |c: &mut postgres::Client| -> i64 {
            c.query_one(
                &format!(
                    "SELECT count(*) FROM {}",
                    pg_connect::quote_qualified(schema, table)
                ),
                &[],
            )
            .map(|r| r.get(0))
            .unwrap_or(-1)
        };
        let (want, got) = (count(&mut src), count(&mut dst));
        all_match &= want == got;
        rows_total += s.rows;
        println!(
            "{:<28} {:>12} {:>10.2} {:>14}{}",
            stream,
            thousands(s.rows),
            secs,
            thousands((s.rows as f64 / secs.max(1e-3)) as u64),
            if want == got {
                String::new()
            } else {
                format!("   MISMATCH: source {want}, destination {got}")
            }
        );
    }
    println!(
        "{:<28} {:>12} {:>10.2} {:>14}",
        "total",
        thousands(rows_total),
        elapsed,
        thousands((rows_total as f64 / elapsed) as u64)
    );
    println!(
        "\n{} state line(s) committed by the target; destination row counts {} the source.",
        state_lines,
        if all_match { "match" } else { "DO NOT match" }
    );
    all_match
}
