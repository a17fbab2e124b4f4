//! The benchmark: in one run on one dataset (`bench_wide` from
//! `bench/dataset.sql`), measures
//! - raw `COPY ... TO STDOUT | COPY ... FROM STDIN` between the same two databases (the practical limit),
//! - `tap | target` full load into an empty database,
//! - raw SQL upsert: the same `\copy` into a temporary table, then
//!   `INSERT … SELECT … ON CONFLICT (id) DO UPDATE` of every column, in one
//!   transaction, into the table the raw COPY pipe just populated,
//! - `tap | target` re-load (upsert) into the populated database,
//! - the tap alone to /dev/null, and the target alone from a saved file,
//!
//! and prints rows/s, MB/s (logical: rows x text-COPY bytes per row / wall),
//! peak RSS and CPU seconds of each process and of the server, and each
//! figure's ratio to the raw COPY pipe (the upsert re-load's also to the raw
//! SQL upsert pipe). Passes alternate the runs; medians over `--repeat`
//! passes. Not a test: timings on shared machines are noisy, CPU seconds less so.
//! With `--cdc N` the same run then replays N LOG_BASED changes, against
//! `pg_recvlogical` reading the same range (`--backlog-mb N` adds N MB of WAL
//! of unpublished changes after them). Other modes: `--scan` (the tap's
//! read against the server's own COPY variants, see scan.rs), `--synthetic`
//! (the target alone on a generated stream, see synthetic.rs), `--scaling`
//! (8 tables with 1, 2 and 4 parallel streams, see scaling.rs).
//!
//! ```text
//! cargo run --release --bin bench -- --rows 1000000 --repeat 3
//! cargo run --release --bin bench -- --rows 100000        # a quick run
//! cargo run --release --bin bench -- --rows 200000 --cdc 200000 --backlog-mb 1000
//! cargo run --release --bin bench -- --scan
//! cargo run --release --bin bench -- --synthetic
//! cargo run --release --bin bench -- --rows 800000 --scaling
//! ```

mod scaling;
mod scan;
mod synthetic;
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use e2e_tests::{bin, select, tap_sync, write_json};
use serde_json::json;

struct Args {
    rows: u64,
    repeat: usize,
    table: String,
    /// LOG_BASED mode: apply this many mixed changes and measure their replay.
    cdc: Option<u64>,
    /// With `--cdc`: this many MB of WAL of unpublished changes after them.
    backlog_mb: u64,
    /// The tap's scan against the server's COPY (scan.rs).
    scan: bool,
    /// The target alone on generated records (synthetic.rs).
    synthetic: bool,
    /// 8 tables read with 1, 2 and 4 parallel streams (scaling.rs).
    scaling: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        rows: 1_000_000,
        repeat: 3,
        table: "bench_wide".into(),
        cdc: None,
        backlog_mb: 0,
        scan: false,
        synthetic: false,
        scaling: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match arg.as_str() {
            "--rows" => a.rows = value().replace('_', "").parse().expect("--rows N"),
            "--repeat" => a.repeat = value().parse().expect("--repeat N"),
            "--table" => a.table = value(),
            "--cdc" => a.cdc = Some(value().replace('_', "").parse().expect("--cdc N")),
            "--backlog-mb" => {
                a.backlog_mb = value().replace('_', "").parse().expect("--backlog-mb N")
            }
            "--scan" => a.scan = true,
            "--synthetic" => a.synthetic = true,
            "--scaling" => a.scaling = true,
            "-h" | "--help" => {
                println!(
                    "bench [--rows N (1000000)] [--repeat N (3)] [--table bench_wide|bench_narrow] [--cdc N [--backlog-mb N] | --scan | --synthetic | --scaling]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?}"),
        }
    }
    a
}

/// The child's peak RSS so far, in MB.
fn vm_hwm_mb(pid: u32) -> Option<f64> {
    pg_testkit::process::peak_rss_kb(pid).map(|kb| kb as f64 / 1024.0)
}

/// How a child ended: its status, peak RSS (MB) and CPU seconds.
#[derive(Clone, Copy)]
struct Ended {
    status: std::process::ExitStatus,
    rss: f64,
    cpu: f64,
}

/// Waits for children, sampling each one's peak RSS and CPU time until it
/// exits (/proc forgets both once a process has exited, so all are sampled
/// together; the CPU time misses at most the last 10 ms).
fn wait_all(children: &mut [&mut Child]) -> Vec<Ended> {
    let mut done: Vec<Option<Ended>> = vec![None; children.len()];
    let mut peaks = vec![0.0f64; children.len()];
    let mut cpus = vec![0.0f64; children.len()];
    while done.iter().any(Option::is_none) {
        for (i, child) in children.iter_mut().enumerate() {
            if done[i].is_some() {
                continue;
            }
            if let Some(mb) = vm_hwm_mb(child.id()) {
                peaks[i] = peaks[i].max(mb);
            }
            if let Some(cpu) = cpu_s(child.id()) {
                cpus[i] = cpus[i].max(cpu);
            }
            if let Some(status) = child.try_wait().unwrap() {
                done[i] = Some(Ended {
                    status,
                    rss: peaks[i],
                    cpu: cpus[i],
                });
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    done.into_iter().map(Option::unwrap).collect()
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 14th field.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLOCK_TICKS)
}

/// `USER_HZ`: the unit of /proc times (100 on every Linux build that matters).
const CLOCK_TICKS: f64 = 100.0;

/// The server's CPU seconds so far: the postmaster and its live children,
/// plus every child it has reaped (the backends of finished sessions).
fn server_cpu_s(postmaster: u32) -> f64 {
    let stat = |pid: &str| -> Option<(u32, [f64; 4])> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        Some((f.get(1)?.parse().ok()?, [n(11), n(12), n(13), n(14)]))
    };
    let mut ticks = 0.0;
    if let Some((_, t)) = stat(&postmaster.to_string()) {
        ticks += t.iter().sum::<f64>();
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some((ppid, t)) = stat(pid) {
            if ppid == postmaster {
                ticks += t[0] + t[1];
            }
        }
    }
    ticks / CLOCK_TICKS
}

/// One measured run: wall seconds, and the peak RSS and CPU seconds of each
/// side and of the server.
#[derive(Clone, Copy, Default)]
struct Sample {
    wall: f64,
    left_rss: f64,
    right_rss: f64,
    left_cpu: f64,
    right_cpu: f64,
    server_cpu: f64,
}

struct Bench {
    port: u16,
    postmaster: u32,
    bindir: std::path::PathBuf,
    table: String,
    dir: tempfile::TempDir,
}

impl Bench {
    fn psql(&self, db: &str) -> Command {
        e2e_tests::psql_command(self.port, db)
    }

    fn sql(&self, db: &str, sql: &str) {
        let out = self.psql(db).args(["-c", sql]).output().unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn fresh_dst(&self, with_table: bool) {
        // End its sessions first: DROP DATABASE ... WITH (FORCE) needs PostgreSQL 13.
        self.sql(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'bench_dst'",
        );
        self.sql("postgres", "DROP DATABASE IF EXISTS bench_dst");
        self.sql("postgres", "CREATE DATABASE bench_dst");
        if with_table {
            let dump = Command::new(self.bindir.join("pg_dump"))
                .args(["-s", "-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(self.port.to_string())
                .args(["-t", &self.table, "bench_src"])
                .output()
                .unwrap();
            assert!(dump.status.success());
            let mut p = self
                .psql("bench_dst")
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            p.stdin.take().unwrap().write_all(&dump.stdout).unwrap();
            assert!(p.wait().unwrap().success());
        }
        self.sql("postgres", "CHECKPOINT");
    }

    /// Rows of the benchmark table in `db` that match `filter`.
    fn count(&self, db: &str, filter: &str) -> u64 {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {filter}",
            pg_connect::quote_qualified("public", &self.table)
        );
        let out = self.psql(db).args(["-At", "-c", &sql]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// One value, as psql prints it.
    fn query(&self, db: &str, sql: &str) -> String {
        let out = self.psql(db).args(["-At", "-c", sql]).output().unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn count_dst(&self) -> u64 {
        self.count("bench_dst", "true")
    }

    /// The server's CPU seconds since `before`, once the backends of
    /// finished sessions have been reaped.
    fn server_cpu_since(&self, before: f64) -> f64 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        server_cpu_s(self.postmaster) - before
    }

    /// `left | right`, both measured.
    fn pipe(&self, mut left: Command, mut right: Command) -> Sample {
        let server = server_cpu_s(self.postmaster);
        let start = Instant::now();
        let mut l = left
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut r = right
            .stdin(Stdio::from(l.stdout.take().unwrap()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let waited = wait_all(&mut [&mut l, &mut r]);
        let (left, right) = (waited[0], waited[1]);
        let wall = start.elapsed().as_secs_f64();
        assert!(
            left.status.success() && right.status.success(),
            "pipe failed: {} | {}",
            left.status,
            right.status
        );
        Sample {
            wall,
            left_rss: left.rss,
            right_rss: right.rss,
            left_cpu: left.cpu,
            right_cpu: right.cpu,
            server_cpu: self.server_cpu_since(server),
        }
    }

    fn single(&self, mut cmd: Command, stdin: Stdio, stdout: Stdio) -> Sample {
        let server = server_cpu_s(self.postmaster);
        let start = Instant::now();
        let mut c = cmd
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let ended = wait_all(&mut [&mut c])[0];
        let wall = start.elapsed().as_secs_f64();
        assert!(ended.status.success(), "{}", ended.status);
        Sample {
            wall,
            left_rss: ended.rss,
            right_rss: ended.rss,
            left_cpu: ended.cpu,
            right_cpu: 0.0,
            server_cpu: self.server_cpu_since(server),
        }
    }

    fn tap(&self) -> Command {
        tap_sync(
            &self.dir.path().join("tap.json"),
            &self.dir.path().join("catalog.json"),
            None,
        )
    }

    fn target(&self) -> Command {
        self.target_at(&bin("target-postgres-rs"))
    }

    fn target_at(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new(program);
        c.arg("--config").arg(self.dir.path().join("target.json"));
        c
    }
}

/// `cmd` run under the command in environment variable `var`, when set
/// (e.g. `RELOAD_WRAP="perf record -g -o /tmp/reload.perf --"`).
fn wrapped(cmd: Command, var: &str) -> Command {
    let wrap = std::env::var(var).unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let Some(program) = words.next() else {
        return cmd;
    };
    let mut w = Command::new(program);
    w.args(words).arg(cmd.get_program()).args(cmd.get_args());
    w
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

fn main() {
    let args = parse_args();
    if args.synthetic {
        return synthetic::run(args.rows);
    }
    let cluster = pg_testkit::cluster();
    let b = Bench {
        port: cluster.port(),
        postmaster: cluster.postmaster_pid(),
        bindir: cluster.bindir().to_path_buf(),
        table: args.table.clone(),
        dir: tempfile::tempdir().unwrap(),
    };
    eprintln!(
        "bench: building the {} dataset ({} rows) ...",
        args.table, args.rows
    );
    b.sql("postgres", "CREATE DATABASE bench_src");
    let dataset = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/dataset.sql");
    let out = b
        .psql("bench_src")
        .arg("-v")
        .arg(format!("rows={}", args.rows))
        .arg("-v")
        .arg(format!("narrow_rows={}", args.rows))
        .arg("-f")
        .arg(&dataset)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dataset: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Bytes per row of the table in text COPY: the unit of the MB/s column.
    let copy_bytes = {
        let out = b
            .psql("bench_src")
            .args([
                "-c",
                &format!(
                    "\\copy {} TO STDOUT",
                    pg_connect::quote_qualified("public", &args.table)
                ),
            ])
            .output()
            .unwrap();
        out.stdout.len() as f64
    };
    let bytes_per_row = copy_bytes / args.rows as f64;

    let conn = |db: &str| json!({"host": "127.0.0.1", "port": b.port, "user": "postgres", "password": "", "database": db, "ssl_mode": "disable"});
    let tap_config = write_json(b.dir.path(), "tap.json", &conn("bench_src"));
    write_json(b.dir.path(), "target.json", &conn("bench_dst"));
    let mut catalog = e2e_tests::discover(&tap_config);
    select(
        &mut catalog,
        &[&format!("public-{}", args.table)],
        "FULL_TABLE",
        None,
    );
    write_json(b.dir.path(), "catalog.json", &catalog);
    if args.scan {
        return scan::run(&b, args.rows);
    }
    if args.scaling {
        return scaling::run(&b, args.rows, args.repeat);
    }
    let saved = b.dir.path().join("tap-output.jsonl");
    b.single(
        b.tap(),
        Stdio::null(),
        Stdio::from(File::create(&saved).unwrap()),
    );
    let singer_bytes = std::fs::metadata(&saved).unwrap().len() as f64;

    let names = [
        "raw COPY text pipe",
        "raw SQL upsert pipe (\\copy to temp, INSERT ... ON CONFLICT)",
        "tap | target, full load",
        "tap | target, upsert re-load",
        "tap alone > /dev/null",
        "target alone < saved file",
    ];
    let qt = pg_connect::quote_qualified("public", &args.table);
    let raw_upsert = raw_upsert_sql(&b, &args.table);
    let copy_out = || {
        let mut left = b.psql("bench_src");
        left.args(["-c", &format!("\\copy {qt} TO STDOUT")]);
        left
    };
    // BENCH_TARGET_BASE=<a target binary>: its full load and re-load too, in
    // every pass (an A/B comparison of two builds in the same run).
    let base = std::env::var_os("BENCH_TARGET_BASE").map(std::path::PathBuf::from);
    let mut names = names.to_vec();
    if base.is_some() {
        names.extend([
            "BENCH_TARGET_BASE full load",
            "BENCH_TARGET_BASE upsert re-load",
        ]);
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); names.len()];
    for pass in 1..=args.repeat {
        eprintln!("bench: pass {pass}/{}", args.repeat);
        b.fresh_dst(true);
        let mut right = b.psql("bench_dst");
        right.args(["-c", &format!("\\copy {qt} FROM STDIN")]);
        samples[0].push(b.pipe(copy_out(), right));
        assert_eq!(b.count_dst(), args.rows);

        // Into the table the raw pipe just populated: every row conflicts.
        b.sql("postgres", "CHECKPOINT");
        let mut right = b.psql("bench_dst");
        right.arg("-1");
        for sql in &raw_upsert {
            right.args(["-c", sql]);
        }
        samples[1].push(b.pipe(copy_out(), right));
        assert_eq!(b.count_dst(), args.rows, "raw upsert row count");

        b.fresh_dst(false);
        samples[2].push(b.pipe(b.tap(), b.target()));
        assert_eq!(b.count_dst(), args.rows, "full load row count");
        b.sql("postgres", "CHECKPOINT");
        samples[3].push(b.pipe(b.tap(), wrapped(b.target(), "RELOAD_WRAP")));
        assert_eq!(b.count_dst(), args.rows, "re-load row count");

        b.sql("postgres", "CHECKPOINT");
        samples[4].push(b.single(b.tap(), Stdio::null(), Stdio::null()));

        b.fresh_dst(false);
        samples[5].push(b.single(
            b.target(),
            Stdio::from(File::open(&saved).unwrap()),
            Stdio::null(),
        ));
        assert_eq!(b.count_dst(), args.rows, "target-alone row count");

        if let Some(base) = &base {
            b.fresh_dst(false);
            samples[6].push(b.pipe(b.tap(), b.target_at(base)));
            assert_eq!(b.count_dst(), args.rows, "base full load row count");
            b.sql("postgres", "CHECKPOINT");
            samples[7].push(b.pipe(b.tap(), b.target_at(base)));
            assert_eq!(b.count_dst(), args.rows, "base re-load row count");
        }
    }

    let wall = |i: usize| median(samples[i].iter().map(|s| s.wall).collect());
    let raw_rate = args.rows as f64 / wall(0);
    println!(
        "\n{} rows of {} ({:.1} bytes/row in text COPY; Singer stream {:.1} bytes/row); medians of {} passes on {} cores",
        args.rows,
        args.table,
        bytes_per_row,
        singer_bytes / args.rows as f64,
        args.repeat,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "\n| run | wall s | rows/s | MB/s | x raw COPY | left RSS MB | right RSS MB | left CPU s | right CPU s | server CPU s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, (name, s)) in names.iter().zip(&samples).enumerate() {
        let rate = args.rows as f64 / wall(i);
        let rss_l = s.iter().map(|x| x.left_rss).fold(0.0, f64::max);
        let rss_r = s.iter().map(|x| x.right_rss).fold(0.0, f64::max);
        let cpu = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
        println!(
            "| {} | {:.2} | {:.0} | {:.1} | {:.2} | {rss_l:.1} | {rss_r:.1} | {:.2} | {:.2} | {:.2} |",
            name.replace('|', "\\|"),
            wall(i),
            rate,
            rate * bytes_per_row / 1e6,
            rate / raw_rate,
            cpu(|x| x.left_cpu),
            cpu(|x| x.right_cpu),
            cpu(|x| x.server_cpu),
        );
    }
    println!("\n(single-process rows show the same process in both RSS columns and its CPU as left; raw sides are psql; server CPU: every backend and background process)");
    // Ratios of medians, and the median of each pass's own ratio (the runs
    // of one pass are measured minutes apart, not hours).
    let ratio = |a: usize, b: usize| {
        let per_pass = median(
            samples[a]
                .iter()
                .zip(&samples[b])
                .map(|(x, y)| y.wall / x.wall)
                .collect(),
        );
        format!("{:.2}x (per pass median {per_pass:.2}x)", wall(b) / wall(a))
    };
    println!("\nfull load / raw COPY text pipe: {}", ratio(2, 0));
    println!("upsert re-load / raw SQL upsert pipe: {}", ratio(3, 1));
    println!("upsert re-load / raw COPY text pipe: {}", ratio(3, 0));
    if base.is_some() {
        println!(
            "BENCH_TARGET_BASE full load / raw COPY text pipe: {}",
            ratio(6, 0)
        );
        println!(
            "BENCH_TARGET_BASE upsert re-load / raw SQL upsert pipe: {}",
            ratio(7, 1)
        );
    }
    if let Some(changes) = args.cdc {
        cdc(&b, &args, changes);
    }
}

/// The raw SQL upsert, as psql `-c` commands (run with `-1`): the rows
/// through `\\copy` into a temporary table without indexes, then one
/// `INSERT … SELECT … ON CONFLICT (id) DO UPDATE` of every other column.
fn raw_upsert_sql(b: &Bench, table: &str) -> Vec<String> {
    let qt = pg_connect::quote_qualified("public", table);
    let columns = b.query(
        "bench_src",
        &format!(
            "SELECT string_agg(quote_ident(attname), ',' ORDER BY attnum) FROM pg_attribute \
             WHERE attrelid = '{qt}'::regclass AND attnum > 0 AND NOT attisdropped AND attname <> 'id'"
        ),
    );
    let set: Vec<String> = columns
        .split(',')
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    vec![
        format!("CREATE TEMPORARY TABLE bench_stage (LIKE {qt}) ON COMMIT DROP"),
        "\\copy bench_stage FROM pstdin".to_owned(),
        format!(
            "INSERT INTO {qt} SELECT * FROM bench_stage ON CONFLICT (id) DO UPDATE SET {}",
            set.join(", ")
        ),
    ]
}

/// LOG_BASED: initial copy of `rows`, then `changes` mixed changes (half
/// inserts, 30% updates, 20% deletes, in transactions of 10,000), then
/// `--backlog-mb` of WAL of unpublished changes and one published change
/// (so that the run reads through the backlog), replayed by one
/// `tap | target` run. Then the same range read by `pg_recvlogical` (its own
/// slot, created at the same point) and by the tap alone, both to /dev/null:
/// changes/s, time to the first RECORD, and peak RSS side by side.
fn cdc(b: &Bench, args: &Args, changes: u64) {
    let table = &args.table;
    let conn = |db: &str| json!({"host": "127.0.0.1", "port": b.port, "user": "postgres", "password": "", "database": db, "ssl_mode": "disable"});
    let mut tap_conn = conn("bench_src");
    tap_conn["replication_slot_name"] = json!("bench_tap");
    tap_conn["publication_name"] = json!("bench_pub");
    write_json(b.dir.path(), "tap.json", &tap_conn);
    write_json(b.dir.path(), "target.json", &conn("bench_dst"));
    let mut catalog = e2e_tests::discover(&b.dir.path().join("tap.json"));
    select(
        &mut catalog,
        &[&format!("public-{table}")],
        "LOG_BASED",
        None,
    );
    write_json(b.dir.path(), "catalog.json", &catalog);
    b.fresh_dst(false);
    let run = |state: Option<&std::path::Path>| -> (Sample, serde_json::Value) {
        let mut tap = b.tap();
        if let Some(s) = state {
            tap.arg("--state").arg(s);
        }
        let states = b.dir.path().join("states.jsonl");
        let start = Instant::now();
        let mut l = tap
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut r = b
            .target()
            .stdin(Stdio::from(l.stdout.take().unwrap()))
            .stdout(Stdio::from(File::create(&states).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let waited = wait_all(&mut [&mut l, &mut r]);
        let wall = start.elapsed().as_secs_f64();
        assert!(
            waited[0].status.success() && waited[1].status.success(),
            "cdc pipe failed"
        );
        let last = std::fs::read_to_string(&states)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_owned();
        (
            Sample {
                wall,
                left_rss: waited[0].rss,
                right_rss: waited[1].rss,
                left_cpu: waited[0].cpu,
                right_cpu: waited[1].cpu,
                ..Sample::default()
            },
            serde_json::from_str(&last).unwrap(),
        )
    };
    let (copy, state) = run(None);
    eprintln!(
        "bench: initial copy of {} rows in {:.2} s",
        args.rows, copy.wall
    );
    let state_path = write_json(b.dir.path(), "state.json", &state);
    // pg_recvlogical's slot, at the point the tap's state starts from (the
    // only transaction between them is the first run's heartbeat).
    b.sql(
        "bench_src",
        "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')",
    );

    let inserts = changes / 2;
    let updates = changes * 3 / 10;
    let deletes = changes - inserts - updates;
    assert!(
        updates + deletes <= args.rows,
        "--rows must be at least 50% of --cdc"
    );
    let t = Instant::now();
    let step = 10_000;
    let qt = pg_connect::quote_qualified("public", table);
    // Runs `sql(from, to)` over key ranges of at most `step` ids, one transaction each.
    let batches = |first: u64, count: u64, sql: &dyn Fn(u64, u64) -> String| {
        let mut i = 0;
        while i < count {
            let n = step.min(count - i);
            b.sql("bench_src", &sql(first + i, first + i + n));
            i += n;
        }
    };
    let cols = "int_col, small_col, num_col, dbl_col, bool_col, text_col, vc_col, ts_col, date_col, uuid_col, json_col, arr_col, updated_at";
    let off = args.rows * 2;
    batches(0, inserts, &|a, z| {
        format!("INSERT INTO {qt} SELECT id + {off}, {cols} FROM {qt} WHERE id > {a} AND id <= {z}")
    });
    batches(0, updates, &|a, z| {
        format!(
            "UPDATE {qt} SET text_col = text_col || '+', num_col = num_col + 1, \
             updated_at = updated_at + interval '1 second' WHERE id > {a} AND id <= {z}"
        )
    });
    batches(args.rows - deletes, deletes, &|a, z| {
        format!("DELETE FROM {qt} WHERE id > {a} AND id <= {z}")
    });
    eprintln!(
        "bench: applied {changes} changes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let backlog = write_backlog(b, args.backlog_mb);
    // One published change after the backlog: the run must read through it.
    let tail = if args.backlog_mb > 0 {
        b.sql(
            "bench_src",
            &format!("UPDATE {qt} SET text_col = text_col || '!' WHERE id = 1"),
        );
        1
    } else {
        0
    };
    let total = changes + tail;
    b.sql("postgres", "CHECKPOINT");
    let (replay, _) = run(Some(&state_path));
    let src_count = b.count("bench_src", "true");
    let live = b.count("bench_dst", "_sdc_deleted_at IS NULL");
    assert_eq!(live, src_count, "live rows after the replay");

    let alone = tap_alone(b, &state_path);
    assert_eq!(alone.records, total, "records read by the tap alone");
    // pg_recvlogical ends at the first message past its end position: a
    // published change after it (the tap ends on its own heartbeat instead).
    let end = b.query("bench_src", "SELECT pg_current_wal_flush_lsn()::text");
    b.sql(
        "bench_src",
        &format!("UPDATE {qt} SET text_col = text_col WHERE id = 2"),
    );
    let recv = b.single(
        {
            let mut c = Command::new(b.bindir.join("pg_recvlogical"));
            c.args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(b.port.to_string())
                .args([
                    "-d",
                    "bench_src",
                    "-S",
                    "bench_recv",
                    "--start",
                    "--no-loop",
                ])
                .args(["-f", "/dev/null", "-E", &end])
                .args(["-o", "proto_version=1", "-o", "publication_names=bench_pub"]);
            c
        },
        Stdio::null(),
        Stdio::null(),
    );
    b.sql("bench_src", "SELECT pg_drop_replication_slot('bench_recv')");

    println!(
        "\nLOG_BASED: {changes} changes ({inserts} inserts, {updates} updates, {deletes} deletes, transactions of {step}) on {} rows of {table}{}",
        args.rows,
        if args.backlog_mb > 0 {
            format!(", then {backlog:.0} MB of WAL of unpublished changes and 1 published update")
        } else {
            String::new()
        }
    );
    println!(
        "\n| run | wall s | changes/s | first RECORD s | RSS MB (tap / reader) | target RSS MB |\n|---|---:|---:|---:|---:|---:|"
    );
    println!(
        "| initial copy ({} rows) | {:.2} | {:.0} rows/s | | {:.1} | {:.1} |",
        args.rows,
        copy.wall,
        args.rows as f64 / copy.wall,
        copy.left_rss,
        copy.right_rss
    );
    println!(
        "| tap \\| target replay | {:.2} | {:.0} | | {:.1} | {:.1} |",
        replay.wall,
        total as f64 / replay.wall,
        replay.left_rss,
        replay.right_rss
    );
    println!(
        "| tap alone > /dev/null | {:.2} | {:.0} | {:.3} (last at {:.2}) | {:.1} | |",
        alone.sample.wall,
        total as f64 / alone.sample.wall,
        alone.first_record,
        alone.last_record,
        alone.sample.left_rss,
    );
    println!(
        "| pg_recvlogical > /dev/null | {:.2} | {:.0} | | {:.1} | |",
        recv.wall,
        total as f64 / recv.wall,
        recv.left_rss,
    );
    println!(
        "\ntap alone / pg_recvlogical changes/s: {:.2}x; tap | target replay / pg_recvlogical: {:.2}x",
        recv.wall / alone.sample.wall,
        recv.wall / replay.wall
    );
}

/// Writes about `mb` MB of WAL into an unpublished table, in transactions of
/// about 100 MB (each spilled by the decoder: larger than
/// logical_decoding_work_mem), truncated after each so that the table takes
/// no disk; returns the MB of WAL written.
fn write_backlog(b: &Bench, mb: u64) -> f64 {
    if mb == 0 {
        return 0.0;
    }
    let t = Instant::now();
    b.sql(
        "bench_src",
        "CREATE TABLE bench_backlog (id bigint, pad text)",
    );
    let start = b.query("bench_src", "SELECT pg_current_wal_lsn()::text");
    let written = || -> f64 {
        b.query(
            "bench_src",
            &format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start}') / 1048576"),
        )
        .parse()
        .unwrap()
    };
    let mut mb_now = 0.0;
    while mb_now < mb as f64 {
        b.sql(
            "bench_src",
            "INSERT INTO bench_backlog SELECT i, repeat('b', 200) FROM generate_series(1, 350000) i",
        );
        b.sql("bench_src", "TRUNCATE bench_backlog");
        mb_now = written();
    }
    eprintln!(
        "bench: wrote {mb_now:.0} MB of WAL of unpublished changes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    mb_now
}

/// The tap alone from `state` to a pipe read here: when its first and last
/// RECORD came (seconds from the start), and its peak RSS.
struct Alone {
    sample: Sample,
    first_record: f64,
    last_record: f64,
    records: u64,
}

fn tap_alone(b: &Bench, state: &std::path::Path) -> Alone {
    use std::io::BufRead;
    let start = Instant::now();
    let mut tap = b.tap();
    let mut child = tap
        .arg("--state")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut first, mut last, mut records) = (None, 0.0, 0u64);
        for line in std::io::BufReader::with_capacity(1 << 20, stdout).split(b'\n') {
            let line = line.unwrap();
            if line.starts_with(br#"{"type":"RECORD""#) {
                let at = start.elapsed().as_secs_f64();
                first.get_or_insert(at);
                last = at;
                records += 1;
            }
        }
        (first.unwrap_or(f64::NAN), last, records)
    });
    let ended = wait_all(&mut [&mut child])[0];
    let wall = start.elapsed().as_secs_f64();
    assert!(ended.status.success(), "tap alone: {}", ended.status);
    let (first_record, last_record, records) = reader.join().unwrap();
    Alone {
        sample: Sample {
            wall,
            left_rss: ended.rss,
            right_rss: ended.rss,
            left_cpu: ended.cpu,
            ..Sample::default()
        },
        first_record,
        last_record,
        records,
    }
}
