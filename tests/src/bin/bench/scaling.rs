//! `bench --scaling`: the benchmark rows split over 8 tables, read by the tap
//! with `max_parallel_streams` 1, 2 and 4, alone (to /dev/null) and into the
//! target: rows/s, and CPU microseconds per row of the tap (and target) and of
//! the server backends serving them. Medians over `--repeat` passes.
//!
//! CPU: the binaries' from this process's reaped-children times
//! (`/proc/self/stat` cutime + cstime, exact); the server's by sampling its
//! backends' `/proc/<pid>/stat` every 10 ms while they run (a backend's last
//! few ms are missed).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{median, Bench};

const TABLES: usize = 8;
const WORKERS: [usize; 3] = [1, 2, 4];
/// `/proc` times are in USER_HZ, 100 on Linux.
const TICKS_PER_S: f64 = 100.0;

/// Clock ticks of `/proc/<pid>/stat` fields 14.. (utime, stime, cutime, cstime).
fn proc_times(pid: &str) -> Option<[u64; 4]> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields count from after its ')'.
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Some([*f.first()?, *f.get(1)?, *f.get(2)?, *f.get(3)?])
}

/// CPU seconds of this process's reaped children so far.
fn children_cpu() -> f64 {
    let t = proc_times("self").expect("/proc/self/stat");
    (t[2] + t[3]) as f64 / TICKS_PER_S
}

/// One measured run.
#[derive(Clone, Copy)]
struct Run {
    wall: f64,
    /// The binaries' CPU seconds.
    client_cpu: f64,
    /// The server backends' CPU seconds (sampled).
    server_cpu: f64,
}

/// Runs `children` (already spawned) to the end, sampling the CPU of the
/// server's client backends of `databases`.
fn measure(mut children: Vec<Child>, databases: &[&str], started: Instant, cpu0: f64) -> Run {
    let mut admin = pg_testkit::cluster().client("postgres");
    let mut backend_ticks: HashMap<i32, u64> = HashMap::new();
    let dbs: Vec<String> = databases.iter().map(|d| d.to_string()).collect();
    let mut done = vec![false; children.len()];
    while done.iter().any(|d| !d) {
        let pids: Vec<i32> = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1) AND backend_type = 'client backend'",
                &[&dbs],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for pid in pids {
            if let Some(t) = proc_times(&pid.to_string()) {
                let e = backend_ticks.entry(pid).or_default();
                *e = (*e).max(t[0] + t[1]);
            }
        }
        for (i, c) in children.iter_mut().enumerate() {
            if !done[i] {
                if let Some(status) = c.try_wait().unwrap() {
                    assert!(status.success(), "bench run failed: {status}");
                    done[i] = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Run {
        wall: started.elapsed().as_secs_f64(),
        client_cpu: children_cpu() - cpu0,
        server_cpu: backend_ticks.values().sum::<u64>() as f64 / TICKS_PER_S,
    }
}

/// (workers, alone runs, piped runs, piped into a target with `parallelism` = workers)
type Passes = (usize, Vec<Run>, Vec<Run>, Vec<Run>);

pub fn run(b: &Bench, rows: u64, repeat: usize) {
    let mut client = pg_testkit::cluster().client("bench_src");
    let table = pg_connect::quote_qualified("public", &b.table);
    let mut ids = Vec::new();
    for k in 0..TABLES {
        let name = format!("scale_{k}");
        client
            .batch_execute(&format!(
                "CREATE TABLE {name} AS SELECT * FROM {table} WHERE id % {TABLES} = {k};
                 ALTER TABLE {name} ADD PRIMARY KEY (id);"
            ))
            .unwrap();
        client
            .batch_execute(&format!("VACUUM (FREEZE, ANALYZE) {name}"))
            .unwrap();
        ids.push(format!("public-{name}"));
    }
    let dir = b.dir.path();
    let conn = |db: &str| json!({"host": "127.0.0.1", "port": b.port, "user": "postgres", "password": "", "database": db, "ssl_mode": "disable"});
    let mut catalog = e2e_tests::discover(&dir.join("tap.json"));
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    e2e_tests::select(&mut catalog, &ids, "FULL_TABLE", None);
    let catalog = e2e_tests::write_json(dir, "scaling-catalog.json", &catalog);

    let tap = |workers: usize| -> Command {
        let mut config = conn("bench_src");
        config["max_parallel_streams"] = json!(workers);
        let config = e2e_tests::write_json(dir, &format!("scaling-tap-{workers}.json"), &config);
        e2e_tests::tap_sync(&config, &catalog, None)
    };
    let target = || b.target();
    // The target with `parallelism` workers of its own.
    let target_par = |workers: usize| -> Command {
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("target.json")).unwrap()).unwrap();
        config["parallelism"] = json!(workers);
        let path = e2e_tests::write_json(dir, &format!("scaling-target-{workers}.json"), &config);
        let mut c = Command::new(e2e_tests::bin("target-postgres-rs"));
        c.arg("--config").arg(path);
        c
    };
    let loaded = || -> u64 {
        (0..TABLES)
            .map(|k| {
                b.query(
                    "bench_dst",
                    &format!("SELECT count(*) FROM public.scale_{k}"),
                )
                .parse::<u64>()
                .unwrap()
            })
            .sum()
    };

    let mut results: Vec<Passes> = Vec::new();
    for workers in WORKERS {
        let (mut alone, mut piped, mut par) = (Vec::new(), Vec::new(), Vec::new());
        for pass in 1..=repeat {
            eprintln!("bench --scaling: {workers} worker(s), pass {pass}/{repeat}");
            b.sql("postgres", "CHECKPOINT");
            let (started, cpu0) = (Instant::now(), children_cpu());
            let t = tap(workers)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            alone.push(measure(vec![t], &["bench_src"], started, cpu0));

            for (into, runs) in [(target(), &mut piped), (target_par(workers), &mut par)] {
                b.fresh_dst(false);
                let (started, cpu0) = (Instant::now(), children_cpu());
                let mut t = tap(workers)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let mut into = into;
                let g = into
                    .stdin(Stdio::from(t.stdout.take().unwrap()))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                runs.push(measure(
                    vec![t, g],
                    &["bench_src", "bench_dst"],
                    started,
                    cpu0,
                ));
                assert_eq!(loaded(), rows, "rows loaded with {workers} worker(s)");
            }
        }
        results.push((workers, alone, piped, par));
    }

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\n{rows} rows of {} in {TABLES} tables; max_parallel_streams 1, 2, 4; medians of {repeat} passes on {cores} cores",
        b.table
    );
    println!(
        "\n| workers | tap alone rows/s | x 1 worker | tap µs CPU/row | server µs CPU/row | tap \\| target rows/s | x 1 worker | tap+target µs CPU/row | server µs CPU/row | tap \\| target (`parallelism` = workers) rows/s | x 1 worker | tap+target µs CPU/row | server µs CPU/row |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let summary = |runs: &[Run]| {
        let wall = median(runs.iter().map(|r| r.wall).collect());
        let client = median(runs.iter().map(|r| r.client_cpu).collect());
        let server = median(runs.iter().map(|r| r.server_cpu).collect());
        let per_row = |s: f64| s * 1e6 / rows as f64;
        (rows as f64 / wall, per_row(client), per_row(server))
    };
    let (base_alone, _, _) = summary(&results[0].1);
    let (base_piped, _, _) = summary(&results[0].2);
    for (workers, alone, piped, par) in &results {
        let (ra, ca, sa) = summary(alone);
        let (rp, cp, sp) = summary(piped);
        let (rq, cq, sq) = summary(par);
        println!(
            "| {workers} | {ra:.0} | {:.2} | {ca:.2} | {sa:.2} | {rp:.0} | {:.2} | {cp:.2} | {sp:.2} | {rq:.0} | {:.2} | {cq:.2} | {sq:.2} |",
            ra / base_alone,
            rp / base_piped,
            rq / base_piped
        );
    }
    println!(
        "\n(`tap | target`: the target loads on one connection whatever the tap does; the last columns give it `parallelism` workers too; server CPU is sampled every 10 ms)"
    );
}
