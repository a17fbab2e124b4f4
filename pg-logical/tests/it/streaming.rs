//! The streaming replication transport against a real server.

use std::time::{Duration, Instant};

use pg_connect::{ConnectionSettings, SslMode};
use pg_logical::pgoutput::{self, Message};
use pg_logical::replication::{ReplicationStream, StartReplication};
use pg_logical::{slot, Lsn};
use pg_testkit::{cluster, TestDb};

const OPTIONS: slot::PublicationOptions = slot::PublicationOptions {
    via_partition_root: false,
    generated_columns: false,
};

pub(crate) fn settings(db: &TestDb) -> ConnectionSettings {
    ConnectionSettings {
        host: db.host.clone(),
        port: db.port,
        hostaddr: None,
        user: pg_testkit::SUPERUSER.into(),
        password: None,
        database: db.name.clone(),
        ssl_mode: SslMode::Disable,
        ssl_ca: None,
        ssl_client_certificate: None,
        ssl_client_private_key: None,
        ssh_tunnel: None,
        connect_timeout_secs: 10,
        application_name: None,
    }
}

/// A database with published table `a`, unpublished `b`, publication `p` and slot `s`.
fn setup(hint: &str) -> (TestDb, postgres::Client) {
    let db = cluster().create_database(hint);
    let mut c = db.client();
    c.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int, pad text)",
    )
    .unwrap();
    slot::ensure_publication(
        &mut c,
        "p",
        &[("public".into(), "a".into())],
        &OPTIONS,
        false,
    )
    .unwrap();
    slot::create_slot_if_missing(&mut c, &slot_name(&db)).unwrap();
    (db, c)
}

fn slot_name(db: &TestDb) -> String {
    slot::object_name(&format!("s_{}", db.name))
}

/// Publication `p` of `slot` from the slot's position to `end`.
fn request(slot: &str, end: Lsn) -> StartReplication<'_> {
    StartReplication {
        slot,
        publication: "p",
        start: 0,
        end,
    }
}

fn start(db: &TestDb, end: Lsn) -> ReplicationStream {
    let slot = slot_name(db);
    ReplicationStream::start(
        &settings(db),
        "pg-logical-streaming-test",
        &request(&slot, end),
    )
    .unwrap()
}

/// One line per message, decoded by the pgoutput decoder.
fn summary(data: &[u8]) -> String {
    match pgoutput::decode(data).unwrap() {
        Message::Begin(_) => "B".into(),
        Message::Commit(_) => "C".into(),
        Message::Relation(r) => format!("R {}", r.name),
        Message::Insert(i) => format!("I {:?}", texts(&i.new.columns)),
        Message::Update(u) => format!("U {:?}", texts(&u.new.columns)),
        Message::Delete(d) => format!("D {:?}", texts(&d.old.tuple().columns)),
        other => format!("{other:?}"),
    }
}

/// The summaries without empty transactions (`B` then `C`): before
/// PostgreSQL 15, pgoutput also sends a transaction that touched no
/// published table, as an empty one.
fn non_empty(lines: impl IntoIterator<Item = String>) -> impl Iterator<Item = String> {
    let mut lines = lines.into_iter().peekable();
    std::iter::from_fn(move || loop {
        let line = lines.next()?;
        if line == "B" && lines.peek().is_some_and(|next| next == "C") {
            lines.next();
            continue;
        }
        return Some(line);
    })
}

fn texts(columns: &[pgoutput::Column<'_>]) -> Vec<Option<String>> {
    columns
        .iter()
        .map(|c| c.text().map(|t| t.unwrap().to_owned()))
        .collect()
}

fn confirmed_flush(c: &mut postgres::Client, slot: &str) -> Lsn {
    let lsn: postgres::types::PgLsn = c
        .query_one(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .unwrap()
        .get(0);
    lsn.into()
}

fn slot_active(c: &mut postgres::Client, slot: &str) -> bool {
    c.query_one(
        "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .unwrap()
    .get(0)
}

/// What the SQL peek function returns for the same range.
fn peeked(c: &mut postgres::Client, slot: &str, upto: Lsn) -> Vec<(Lsn, Vec<u8>)> {
    // The `messages` option exists from PostgreSQL 14.
    let messages = if cluster().server_version_num() >= 140_000 {
        ", 'messages', 'true'"
    } else {
        ""
    };
    c.query(
        &format!(
            "SELECT lsn, data FROM pg_logical_slot_peek_binary_changes($1, $2, NULL, \
             'proto_version', '1', 'publication_names', 'p'{messages})"
        ),
        &[&slot, &postgres::types::PgLsn::from(upto)],
    )
    .unwrap()
    .iter()
    .map(|r| {
        let lsn: postgres::types::PgLsn = r.get(0);
        (lsn.into(), r.get::<_, Vec<u8>>(1))
    })
    .collect()
}

#[test]
fn streams_changes_up_to_the_end_and_confirms_only_what_it_is_told() {
    let (db, mut c) = setup("stream_changes");
    let slot = slot_name(&db);
    let created_at = confirmed_flush(&mut c, &slot);
    c.batch_execute("INSERT INTO a VALUES (1, 'one'), (2, NULL)")
        .unwrap();
    c.batch_execute("INSERT INTO b VALUES (1, 'not published')")
        .unwrap();
    c.batch_execute("UPDATE a SET v = 'uno' WHERE id = 1")
        .unwrap();
    c.batch_execute("DELETE FROM a WHERE id = 2").unwrap();
    let end = slot::current_flush_lsn(&mut c).unwrap();
    c.batch_execute("INSERT INTO a VALUES (3, 'after the end')")
        .unwrap();

    let peek = peeked(&mut c, &slot, end);
    let mut stream = start(&db, end);
    let messages: Vec<(Lsn, Vec<u8>)> = stream
        .by_ref()
        .map(|m| m.map(|(lsn, data)| (lsn, data.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap();
    let lines: Vec<String> = non_empty(messages.iter().map(|(_, d)| summary(d))).collect();
    assert_eq!(
        lines,
        [
            "B",
            "R a",
            r#"I [Some("1"), Some("one")]"#,
            r#"I [Some("2"), None]"#,
            "C",
            "B",
            r#"U [Some("1"), Some("uno")]"#,
            "C",
            "B",
            r#"D [Some("2"), None]"#,
            "C",
        ]
    );
    // Exactly what the SQL peek function gives for the range, LSNs included,
    // except that the walsender sends LSN 0 for a Relation message (written
    // ahead of the change it describes).
    let expected: Vec<(Lsn, Vec<u8>)> = peek
        .into_iter()
        .map(|(lsn, d)| (if d[0] == b'R' { 0 } else { lsn }, d))
        .collect();
    assert_eq!(messages, expected);

    // Everything was read, but only the first transaction is confirmed.
    let first_commit_end = messages
        .iter()
        .find_map(|(_, d)| match pgoutput::decode(d).unwrap() {
            Message::Commit(commit) => Some(commit.end_lsn),
            _ => None,
        })
        .unwrap();
    stream.confirm(first_commit_end);
    stream.confirm(1);
    assert_eq!(stream.confirmed(), first_commit_end);
    stream.finish().unwrap();
    assert!(TestDb::wait_for(Duration::from_secs(5), || !slot_active(
        &mut c, &slot
    )));
    assert_eq!(confirmed_flush(&mut c, &slot), first_commit_end);
    assert!(first_commit_end > created_at);

    // A run that confirms nothing leaves the slot where it was, and the next
    // run starts after the confirmed transaction.
    let end = slot::current_flush_lsn(&mut c).unwrap();
    let stream = start(&db, end);
    let lines: Vec<String> = non_empty(stream.map(|m| summary(&m.unwrap().1))).collect();
    assert_eq!(
        lines,
        [
            "B",
            "R a",
            r#"U [Some("1"), Some("uno")]"#,
            "C",
            "B",
            r#"D [Some("2"), None]"#,
            "C",
            "B",
            r#"I [Some("3"), Some("after the end")]"#,
            "C",
        ]
    );
    assert!(TestDb::wait_for(Duration::from_secs(5), || !slot_active(
        &mut c, &slot
    )));
    assert_eq!(confirmed_flush(&mut c, &slot), first_commit_end);
}

#[test]
fn a_slot_in_use_is_refused_with_its_sqlstate() {
    let (db, mut c) = setup("stream_busy_slot");
    c.batch_execute("INSERT INTO a VALUES (1, 'x')").unwrap();
    let end = slot::current_flush_lsn(&mut c).unwrap();
    // Never reaching its end, it holds the slot.
    let first = start(&db, Lsn::MAX);
    let slot = slot_name(&db);
    let to_end = request(&slot, end);
    let err = ReplicationStream::start(&settings(&db), "second", &to_end)
        .err()
        .unwrap();
    let pid: i32 = c
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .unwrap()
        .get(0);
    match &err {
        pg_logical::replication::ReplicationError::Server { code, .. } => {
            assert_eq!(code, "55006")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("starting replication from slot `{slot}`: ERROR: replication slot \"{slot}\" is active for PID {pid}")
    );
    drop(first);
}

#[test]
fn an_end_with_nothing_left_to_send_ends_the_run() {
    let (db, mut c) = setup("stream_idle_end");
    c.batch_execute("INSERT INTO b VALUES (1, 'not published')")
        .unwrap();
    let end = slot::current_flush_lsn(&mut c).unwrap();
    let started = Instant::now();
    let mut stream = start(&db, end);
    let lines: Vec<String> = non_empty(stream.by_ref().map(|m| summary(&m.unwrap().1))).collect();
    assert_eq!(lines, Vec::<String>::new());
    stream.finish().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_first_message_does_not_wait_for_the_backlog_and_a_dropped_reader_frees_the_slot() {
    let (db, mut c) = setup("stream_backlog");
    let slot = slot_name(&db);
    c.batch_execute("INSERT INTO a VALUES (1, 'first')")
        .unwrap();
    // About 150 MB of WAL no published table is part of.
    c.batch_execute("INSERT INTO b SELECT g, repeat('x', 1000) FROM generate_series(1, 150000) g")
        .unwrap();
    c.batch_execute("INSERT INTO a VALUES (2, 'last')").unwrap();
    let end = slot::current_flush_lsn(&mut c).unwrap();

    let started = Instant::now();
    let mut stream = start(&db, end);
    let (_, first) = stream.next().unwrap().unwrap();
    let first_after = started.elapsed();
    assert_eq!(summary(&first), "B");
    eprintln!("streaming: first message after {first_after:?}");
    assert!(first_after < Duration::from_secs(5), "{first_after:?}");

    // The reader goes away in the middle of the backlog (as a killed tap's socket closes).
    drop(stream);
    let dropped = Instant::now();
    assert!(
        TestDb::wait_for(Duration::from_secs(10), || !slot_active(&mut c, &slot)),
        "the slot stayed active"
    );
    let freed_after = dropped.elapsed();
    eprintln!("streaming: slot freed {freed_after:?} after the reader closed");
    assert!(freed_after < Duration::from_secs(3), "{freed_after:?}");

    let started = Instant::now();
    let peek = c
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, $2, NULL, \
             'proto_version', '1', 'publication_names', 'p')",
            &[&slot, &postgres::types::PgLsn::from(end)],
        )
        .map(|r| r.get::<_, i64>(0));
    eprintln!(
        "SQL peek: first row after {:?} ({peek:?})",
        started.elapsed()
    );

    // The whole range, to the end.
    let stream = start(&db, end);
    let lines: Vec<String> = non_empty(stream.map(|m| summary(&m.unwrap().1))).collect();
    assert_eq!(
        lines,
        [
            "B",
            "R a",
            r#"I [Some("1"), Some("first")]"#,
            "C",
            "B",
            r#"I [Some("2"), Some("last")]"#,
            "C"
        ]
    );
}

#[test]
fn a_busy_reader_is_not_timed_out() {
    let (db, mut c) = setup("stream_busy");
    let role = format!("r_{}", db.name);
    // More changes than the hand-over holds, so the socket thread waits on
    // the reader, and a server that gives up on a silent client within 1 s.
    c.batch_execute(&format!(
        "CREATE ROLE \"{role}\" LOGIN REPLICATION; \
         ALTER ROLE \"{role}\" SET wal_sender_timeout = '1s'; \
         INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 30000) g"
    ))
    .unwrap();
    let end = slot::current_flush_lsn(&mut c).unwrap();
    let slot = slot_name(&db);
    let mut s = settings(&db);
    s.user = role;
    let to_end = request(&slot, end);
    let mut stream = ReplicationStream::start(&s, "pg-logical-busy-test", &to_end).unwrap();
    assert_eq!(summary(&stream.next().unwrap().unwrap().1), "B");
    // The reader is busy (e.g. a slow destination) for 4 timeouts.
    std::thread::sleep(Duration::from_secs(4));
    let inserts = stream
        .by_ref()
        .map(|m| m.unwrap())
        .filter(|(_, d)| d[0] == b'I')
        .count();
    assert_eq!(inserts, 30000);
    stream.finish().unwrap();
}

#[test]
fn every_sslmode_and_every_password_method() {
    let (db, mut c) = setup("stream_modes");
    let slot = slot_name(&db);
    let ca = cluster().ca_cert().to_str().unwrap().to_owned();
    let ssl_of = |c: &mut postgres::Client, app: &str| -> bool {
        c.query_one(
            "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_replication USING (pid) \
             WHERE application_name = $1",
            &[&app],
        )
        .unwrap()
        .get(0)
    };
    let mut check = |s: &ConnectionSettings, app: &str| -> bool {
        let stream = ReplicationStream::start(s, app, &request(&slot, Lsn::MAX))
            .unwrap_or_else(|e| panic!("{app}: {e}"));
        let ssl = ssl_of(&mut c, app);
        drop(stream);
        assert!(TestDb::wait_for(Duration::from_secs(5), || !slot_active(
            &mut c, &slot
        )));
        ssl
    };
    // libpq: disable and allow stay plain when the server accepts plain.
    for (mode, tls) in [
        (SslMode::Disable, false),
        (SslMode::Allow, false),
        (SslMode::Prefer, true),
        (SslMode::Require, true),
        (SslMode::VerifyCa, true),
        (SslMode::VerifyFull, true),
    ] {
        let mut s = settings(&db);
        s.host = "localhost".into();
        s.ssl_mode = mode;
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            s.ssl_ca = Some(ca.clone());
        }
        assert_eq!(check(&s, &format!("mode-{}", mode.name())), tls, "{mode:?}");
    }

    let mut admin = db.client();
    let (md5, plain) = (format!("m_{}", db.name), format!("p_{}", db.name));
    admin
        .batch_execute(&format!(
            "SET password_encryption = 'md5'; \
             CREATE ROLE \"{md5}\" LOGIN REPLICATION PASSWORD 'md5 pw'; \
             SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE \"{plain}\" LOGIN REPLICATION PASSWORD 'plain pw'"
        ))
        .unwrap();
    // Logical replication connections match `all`, never `replication`.
    cluster().prepend_hba(&format!(
        "host all \"{md5}\" 127.0.0.1/32 md5\n\
         host all \"{plain}\" 127.0.0.1/32 password"
    ));
    for (user, password) in [(&md5, "md5 pw"), (&plain, "plain pw")] {
        let mut s = settings(&db);
        s.user = user.clone();
        s.password = Some(password.into());
        assert!(!check(&s, user));
        s.password = Some("wrong".into());
        let err = ReplicationStream::start(&s, user, &request(&slot, Lsn::MAX))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.ends_with(&format!(
                "FATAL: password authentication failed for user \"{user}\""
            )),
            "{err}"
        );
    }
}

#[test]
fn tls_verify_full_with_the_cluster_ca_and_scram() {
    let (db, mut c) = setup("stream_tls");
    let role = format!("r_{}", db.name);
    c.batch_execute(&format!(
        "SET password_encryption = 'scram-sha-256'; \
         CREATE ROLE \"{role}\" LOGIN REPLICATION PASSWORD 'sekret'; \
         GRANT SELECT ON a TO \"{role}\""
    ))
    .unwrap();
    // Logical replication connections match `all` (or the database), never
    // `replication` (physical only).
    cluster().prepend_hba(&format!(
        "hostssl all \"{role}\" 127.0.0.1/32 scram-sha-256"
    ));
    c.batch_execute("INSERT INTO a VALUES (1, 'over TLS')")
        .unwrap();
    let end = slot::current_flush_lsn(&mut c).unwrap();
    let slot = slot_name(&db);
    let to_end = request(&slot, end);
    let mut s = settings(&db);
    s.host = "localhost".into();
    s.user = role.clone();
    s.password = Some("sekret".into());
    s.ssl_mode = SslMode::VerifyFull;

    // The system store does not know the test CA.
    let err = ReplicationStream::start(&s, "pg-logical-tls-test", &to_end)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("the server's certificate is not trusted (certificate verify failed"),
        "{err}"
    );

    s.ssl_ca = Some(cluster().ca_cert().to_str().unwrap().to_owned());
    let mut wrong = s.clone();
    wrong.password = Some("wrong".into());
    let err = ReplicationStream::start(&wrong, "pg-logical-tls-test", &to_end)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!(
            "cannot open a replication connection to PostgreSQL at localhost:{} (database `{}`, user `{role}`): FATAL: password authentication failed for user \"{role}\"",
            db.port, db.name
        )
    );

    let mut stream = ReplicationStream::start(&s, "pg-logical-tls-test", &to_end).unwrap();
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_replication USING (pid) \
             WHERE application_name = 'pg-logical-tls-test'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ssl);
    let lines: Vec<String> = non_empty(stream.by_ref().map(|m| summary(&m.unwrap().1))).collect();
    assert_eq!(
        lines,
        ["B", "R a", r#"I [Some("1"), Some("over TLS")]"#, "C"]
    );
    stream.finish().unwrap();

    // Waiting on an idle server (the socket thread's reads time out every
    // tick) loses nothing of the TLS stream.
    let mut stream =
        ReplicationStream::start(&s, "pg-logical-tls-test", &request(&slot, Lsn::MAX)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    c.batch_execute("INSERT INTO a VALUES (2, 'later')")
        .unwrap();
    let lines: Vec<String> = non_empty(stream.by_ref().map(|m| summary(&m.unwrap().1)))
        .take(7)
        .collect();
    // Nothing was confirmed: the first transaction comes again.
    assert_eq!(
        lines,
        [
            "B",
            "R a",
            r#"I [Some("1"), Some("over TLS")]"#,
            "C",
            "B",
            r#"I [Some("2"), Some("later")]"#,
            "C"
        ]
    );
}

/// `cargo test -p pg-logical --release --test it streaming::bench -- --ignored --nocapture`:
/// changes/s of this transport (decoding every message) against
/// `pg_recvlogical` writing the same range to /dev/null.
#[test]
#[ignore = "a measurement, not a check"]
fn bench_against_pg_recvlogical() {
    let rows: i64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let (db, mut c) = setup("stream_bench");
    let ours = slot_name(&db);
    let theirs = format!("{ours}_recv");
    slot::create_slot_if_missing(&mut c, &theirs).unwrap();
    c.batch_execute(&format!(
        "INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"
    ))
    .unwrap();
    let end = slot::current_flush_lsn(&mut c).unwrap();

    let started = Instant::now();
    let mut n = 0u64;
    for m in start(&db, end) {
        let (_, data) = m.unwrap();
        if let Message::Insert(_) = pgoutput::decode(&data).unwrap() {
            n += 1;
        }
    }
    let ours_secs = started.elapsed().as_secs_f64();
    assert_eq!(n, rows as u64);

    let recvlogical = cluster().bindir().join("pg_recvlogical");
    let started = Instant::now();
    let out = std::process::Command::new(&recvlogical)
        .args([
            "-h",
            &db.host,
            "-p",
            &db.port.to_string(),
            "-U",
            pg_testkit::SUPERUSER,
            "-d",
            &db.name,
            "--slot",
            &theirs,
            "--start",
            "--no-loop",
            "-E",
            &pg_logical::format_lsn(end),
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=p",
            "-f",
            "/dev/null",
        ])
        .output()
        .unwrap();
    let theirs_secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{rows} inserts: streaming {:.0}/s ({ours_secs:.2} s), pg_recvlogical {:.0}/s ({theirs_secs:.2} s), ratio {:.2}",
        rows as f64 / ours_secs,
        rows as f64 / theirs_secs,
        theirs_secs / ours_secs
    );
}

#[test]
fn through_an_ssh_tunnel_with_verify_full() {
    // A database only the bastion can reach (a network namespace of its own).
    let c = pg_testkit::start_cluster(pg_testkit::ClusterOptions {
        tls: true,
        private_network: true,
        ..Default::default()
    });
    let b = pg_testkit::bastion::Bastion::start(&c);
    let db = c.create_database("stream_tunnel");
    let mut admin = c.client(&db.name);
    admin
        .batch_execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
        .unwrap();
    slot::ensure_publication(
        &mut admin,
        "p",
        &[("public".into(), "a".into())],
        &OPTIONS,
        false,
    )
    .unwrap();
    let slot = slot_name(&db);
    slot::create_slot_if_missing(&mut admin, &slot).unwrap();
    admin
        .batch_execute("INSERT INTO a VALUES (1, 'through the tunnel')")
        .unwrap();
    let end = slot::current_flush_lsn(&mut admin).unwrap();

    let mut s = settings(&db);
    s.host = "localhost".into();
    s.port = c.port();
    s.ssl_mode = SslMode::VerifyFull;
    s.ssl_ca = Some(c.ca_cert().to_str().unwrap().to_owned());
    s.ssh_tunnel = Some(pg_connect::SshTunnelSettings {
        host: b.host().into(),
        port: b.port(),
        username: b.user().into(),
        private_key: Some(b.private_key().to_str().unwrap().to_owned()),
        private_key_password: None,
        host_key: None,
        known_hosts_file: Some(c.dir().join("known_hosts").to_str().unwrap().to_owned()),
    });
    let connector = pg_connect::Connector::new(s, "pg-logical-tunnel-test").unwrap();
    assert!(connector.is_tunnelled());
    let to_end = request(&slot, end);
    let mut stream =
        ReplicationStream::start(connector.settings(), "pg-logical-tunnel-test", &to_end).unwrap();
    let ssl: bool = admin
        .query_one(
            "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_replication USING (pid) \
             WHERE application_name = 'pg-logical-tunnel-test'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ssl, "TLS through the tunnel");
    let lines: Vec<String> = non_empty(stream.by_ref().map(|m| summary(&m.unwrap().1))).collect();
    assert_eq!(
        lines,
        [
            "B",
            "R a",
            r#"I [Some("1"), Some("through the tunnel")]"#,
            "C"
        ]
    );
    stream.finish().unwrap();
}
