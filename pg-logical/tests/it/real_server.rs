//! Decoding what a real server sends: changes made in SQL, read back with
//! `pg_logical_slot_peek_binary_changes`, decoded, and checked message by message.

use pg_logical::pgoutput::{
    decode, parse_lsn, Column, Message, OldTuple, RelationCache, ReplicaIdentity,
};

fn text<'a>(c: &Column<'a>) -> Option<&'a str> {
    c.text().map(|r| r.unwrap())
}

#[test]
fn decodes_inserts_updates_deletes_truncates_and_toast() {
    let db = pg_testkit::cluster().create_database("pgoutput_decode");
    let mut client = db.client();
    let slot = format!("slot_{}", db.name);
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, note text, big text);
             ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
             CREATE TABLE f (a int, b text);
             ALTER TABLE f REPLICA IDENTITY FULL;
             CREATE PUBLICATION pub FOR TABLE t, f;",
        )
        .unwrap();
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .unwrap();
    // Separate calls: one simple query with several statements is one transaction.
    for sql in [
        "BEGIN; INSERT INTO t VALUES (1, E'tab\\there\nnew \"line\" \\\\', repeat('x', 100000)), (2, NULL, 'small'); COMMIT",
        "UPDATE t SET note = 'changed' WHERE id = 1",
        "UPDATE t SET id = 10 WHERE id = 2",
        "DELETE FROM t WHERE id = 10",
        "INSERT INTO f VALUES (7, 'full')",
        "UPDATE f SET b = 'fuller'",
        "DELETE FROM f",
        "TRUNCATE t",
    ] {
        client.batch_execute(sql).unwrap();
    }
    let rows = client
        .query(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', 'pub')",
            &[&slot],
        )
        .unwrap();
    let mut relations = RelationCache::default();
    let mut seen = Vec::new();
    let mut commits = Vec::new();
    for row in &rows {
        let lsn = parse_lsn(row.get::<_, &str>(0)).expect("lsn");
        let data: &[u8] = row.get(1);
        let msg = decode(data).unwrap_or_else(|e| panic!("decode at {lsn:X}: {e}"));
        match msg {
            Message::Relation(r) => {
                seen.push(format!("R {} {:?}", r.name, r.replica_identity));
                relations.insert(r);
            }
            Message::Begin(_) => seen.push("B".into()),
            Message::Commit(c) => {
                assert!(c.end_lsn > c.commit_lsn);
                commits.push(c.end_lsn);
                seen.push("C".into());
            }
            Message::Insert(i) => {
                let rel = relations.get(i.relation_id).expect("relation first");
                let vals: Vec<_> = i.new.columns.iter().map(text).collect();
                seen.push(format!(
                    "I {} {:?}",
                    rel.name,
                    vals.iter()
                        .map(|v| v.map(|s| s.len().min(40)))
                        .collect::<Vec<_>>()
                ));
                if rel.name == "t" && vals[0] == Some("1") {
                    assert_eq!(vals[1], Some("tab\there\nnew \"line\" \\"));
                    assert_eq!(vals[2].unwrap().len(), 100000);
                }
            }
            Message::Update(u) => {
                let rel = relations.get(u.relation_id).unwrap();
                let kind = match &u.old {
                    None => "none",
                    Some(OldTuple::Key(_)) => "key",
                    Some(OldTuple::Full(_)) => "full",
                };
                let toast = u.new.columns.contains(&Column::UnchangedToast);
                seen.push(format!("U {} old={kind} toast={toast}", rel.name));
                if kind == "key" {
                    assert_eq!(text(&u.old.as_ref().unwrap().tuple().columns[0]), Some("2"));
                    assert_eq!(text(&u.new.columns[0]), Some("10"));
                }
            }
            Message::Delete(d) => {
                let rel = relations.get(d.relation_id).unwrap();
                let full = matches!(d.old, OldTuple::Full(_));
                seen.push(format!(
                    "D {} full={full} key={:?}",
                    rel.name,
                    text(&d.old.tuple().columns[0])
                ));
            }
            Message::Truncate(t) => {
                let names: Vec<_> = t
                    .relation_ids
                    .iter()
                    .map(|id| relations.get(*id).unwrap().name.clone())
                    .collect();
                seen.push(format!("T {names:?}"));
            }
            other => seen.push(format!("{other:?}")),
        }
    }
    assert_eq!(
        seen,
        vec![
            "B",
            "R t Default",
            "I t [Some(1), Some(21), Some(40)]",
            "I t [Some(1), None, Some(5)]",
            "C",
            "B",
            "U t old=none toast=true",
            "C",
            "B",
            "U t old=key toast=false",
            "C",
            "B",
            "D t full=false key=Some(\"10\")",
            "C",
            "B",
            "R f Full",
            "I f [Some(1), Some(4)]",
            "C",
            "B",
            "U f old=full toast=false",
            "C",
            "B",
            "D f full=true key=Some(\"7\")",
            "C",
            "B",
            "R t Default",
            "T [\"t\"]",
            "C",
        ]
    );
    assert!(commits.windows(2).all(|w| w[0] < w[1]), "commits in order");
    let key_cols: Vec<bool> = relations
        .get(relations_id(&mut client, "t"))
        .unwrap()
        .columns
        .iter()
        .map(|c| c.is_key)
        .collect();
    assert_eq!(key_cols, vec![true, false, false]);
    assert_eq!(
        relations
            .get(relations_id(&mut client, "f"))
            .unwrap()
            .replica_identity,
        ReplicaIdentity::Full
    );
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .unwrap();
}

fn relations_id(client: &mut postgres::Client, name: &str) -> u32 {
    client
        .query_one("SELECT oid FROM pg_class WHERE relname = $1", &[&name])
        .unwrap()
        .get::<_, u32>(0)
}
