//! Slots, publications and decoded changes against a real server.

use pg_logical::changes::{Change, Decoder, Value};
use pg_logical::replication::{ReplicationStream, StartReplication};
use pg_logical::slot;
use pg_logical::LogicalError;

/// What a publication this tap creates asks for on a current server.
const OPTIONS: slot::PublicationOptions = slot::PublicationOptions {
    via_partition_root: false,
    generated_columns: false,
};

fn connect_as(db: &pg_testkit::TestDb, user: &str) -> postgres::Client {
    postgres::Config::new()
        .host(&db.host)
        .port(db.port)
        .user(user)
        .dbname(&db.name)
        .connect(postgres::NoTls)
        .unwrap()
}

#[test]
fn prerequisites_and_permission_errors_say_what_to_do() {
    let db = pg_testkit::cluster().create_database("logical_prereq");
    let mut admin = db.client();
    slot::check_prerequisites(&mut admin).unwrap();
    let role = format!("plain_{}", db.name);
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" LOGIN; CREATE TABLE t (id int PRIMARY KEY); GRANT SELECT ON t TO \"{role}\""
        ))
        .unwrap();
    let mut plain = connect_as(&db, &role);
    let err = slot::check_prerequisites(&mut plain).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("role `{role}` may not use logical replication: grant it with `ALTER ROLE \"{role}\" REPLICATION` (or connect as a superuser)")
    );
    let err = slot::ensure_publication(
        &mut plain,
        "p1",
        &[("public".into(), "t".into())],
        &OPTIONS,
        false,
    )
    .unwrap_err();
    assert!(matches!(err, LogicalError::NoPublication(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "publication `p1` does not exist and this role cannot create it: create it as the tables' owner (`CREATE PUBLICATION \"p1\" FOR TABLE ...`) or set publication_name to an existing publication"
    );
}

#[test]
fn slot_lifecycle_and_change_stream() {
    // A cluster of its own: the slot's lag figures below count every byte of
    // WAL the server writes, which the other tests' writes would inflate.
    let own = pg_testkit::start_cluster(pg_testkit::ClusterOptions::default());
    let db = own.create_database("logical_stream");
    let mut c = own.client(&db.name);
    c.batch_execute("CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, n numeric)")
        .unwrap();
    let slot_name = slot::object_name(&format!("s_{}", db.name));
    slot::ensure_publication(
        &mut c,
        "pub_ab",
        &[("public".into(), "a".into())],
        &OPTIONS,
        false,
    )
    .unwrap();
    // A second call adds the missing table and keeps the first.
    slot::ensure_publication(
        &mut c,
        "pub_ab",
        &[("public".into(), "a".into()), ("public".into(), "b".into())],
        &OPTIONS,
        false,
    )
    .unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'pub_ab'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    let (info, created) = slot::create_slot_if_missing(&mut c, &slot_name).unwrap();
    assert!(created);
    assert_eq!(info.plugin, "pgoutput");
    let (_, created_again) = slot::create_slot_if_missing(&mut c, &slot_name).unwrap();
    assert!(!created_again);

    c.batch_execute("INSERT INTO a VALUES (1, E'x\\ty'), (2, NULL)")
        .unwrap();
    // Touches no row: no transaction id, nothing in the WAL stream.
    c.batch_execute("UPDATE b SET n = 1").unwrap();
    c.batch_execute("INSERT INTO b VALUES (1, 1.50)").unwrap();
    c.batch_execute("DELETE FROM a WHERE id = 2").unwrap();
    let end = slot::current_flush_lsn(&mut c).unwrap();
    c.batch_execute("INSERT INTO a VALUES (3, 'after the end')")
        .unwrap();

    // Streamed without confirming anything: the slot does not move.
    let settings = crate::streaming::settings(&db);
    let read_all = |_: &mut postgres::Client, end| {
        let request = StartReplication {
            slot: &slot_name,
            publication: "pub_ab",
            start: 0,
            end,
        };
        let mut stream = ReplicationStream::start(&settings, "slot-test", &request).unwrap();
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for m in stream.by_ref() {
            let (lsn, data) = m.unwrap();
            out.extend(decoder.decode(lsn, &data).unwrap());
        }
        stream.finish().unwrap();
        out
    };
    let changes = read_all(&mut c, end);
    let summary: Vec<String> = changes
        .iter()
        .map(|ch| match ch {
            Change::Begin { .. } => "B".to_string(),
            Change::Commit { .. } => "C".to_string(),
            Change::Insert { relation, new } => format!("I {} {:?}", relation.name, new),
            Change::Update { relation, .. } => format!("U {}", relation.name),
            Change::Delete { relation, old } => format!("D {} {:?}", relation.name, old),
            Change::Truncate { .. } => "T".to_string(),
        })
        .collect();
    let t = |s: &str| Value::Text(s.to_owned());
    assert_eq!(
        summary,
        vec![
            "B".to_string(),
            format!("I a {:?}", vec![t("1"), t("x\ty")]),
            format!("I a {:?}", vec![t("2"), Value::Null]),
            "C".into(),
            "B".into(),
            format!("I b {:?}", vec![t("1"), t("1.50")]),
            "C".into(),
            "B".into(),
            format!("D a {:?}", vec![t("2"), Value::Null]),
            "C".into(),
        ]
    );
    // Reading consumed nothing: the same changes come back.
    assert_eq!(read_all(&mut c, end), changes);

    // Advance to the last commit read: those transactions are gone, the later one remains.
    let last_end = changes
        .iter()
        .rev()
        .find_map(|ch| match ch {
            Change::Commit { end_lsn, .. } => Some(*end_lsn),
            _ => None,
        })
        .unwrap();
    let confirmed = slot::advance_slot(&mut c, &slot_name, last_end).unwrap();
    assert_eq!(confirmed, Some(last_end));
    // Never backwards.
    assert_eq!(
        slot::advance_slot(&mut c, &slot_name, 1).unwrap(),
        Some(last_end)
    );
    let now = slot::current_flush_lsn(&mut c).unwrap();
    let rest = read_all(&mut c, now);
    assert!(
        matches!(&rest[1], Change::Insert { new, .. } if new[1] == t("after the end")),
        "{rest:?}"
    );
    // A heartbeat on a quiet publication still yields a commit to bookmark.
    let beat = slot::heartbeat(&mut c, "test").unwrap();
    let upto = slot::current_flush_lsn(&mut c).unwrap();
    let quiet = read_all(&mut c, upto);
    let beat_end = quiet
        .iter()
        .rev()
        .find_map(|ch| match ch {
            Change::Commit { end_lsn, .. } => Some(*end_lsn),
            _ => None,
        })
        .expect("the heartbeat's commit");
    assert!(beat_end > beat);
    slot::advance_slot(&mut c, &slot_name, beat_end).unwrap();
    let info = slot::slot_info(&mut c, &slot_name).unwrap().unwrap();
    assert!(
        info.pending_bytes < 64 * 1024,
        "pending {}",
        info.pending_bytes
    );
    c.batch_execute("CHECKPOINT").unwrap();
    let info = slot::slot_info(&mut c, &slot_name).unwrap().unwrap();
    assert!(
        info.retained_bytes < 16 * 1024 * 1024,
        "retained {}",
        info.retained_bytes
    );

    assert!(slot::drop_slot(&mut c, &slot_name).unwrap());
    assert!(!slot::drop_slot(&mut c, &slot_name).unwrap());
    assert!(slot::drop_publication(&mut c, "pub_ab").unwrap());
}
