//! What a later snapshot sees on a cluster that other tests share: waiting
//! until the transactions older than a test's own setup have ended.

use std::time::{Duration, Instant};

/// How long [`wait_for_older_transactions`] waits before it names the
/// transactions in the way.
const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until no transaction older than the newest one committed (in any
/// database of `client`'s cluster) is running any more: from then on, every
/// snapshot's xmin is past every row committed so far (they are all "seen").
///
/// Why: a resumed FULL_TABLE copy re-reads every row whose xmin is at or
/// after the first run's snapshot xmin (the tap's `unseen_by`, a superset
/// needed for rows written in savepoints). When another test's transaction
/// is still running as the first run takes its snapshot, that xmin is older
/// than this test's own setup, so every row the setup wrote is sent again
/// on resume. Call this after the setup and before the first run in tests
/// that count the rows a resumed run sends; never while the test itself
/// holds a transaction open (it would wait for that one).
///
/// Panics after 60 s, naming the sessions still running older transactions.
pub fn wait_for_older_transactions(client: &mut postgres::Client) {
    wait_within(client, DEADLINE);
}

fn wait_within(client: &mut postgres::Client, deadline: Duration) {
    // One past the newest xid committed (reading it assigns none): every
    // row committed so far has an older xmin. Transactions newer than that
    // may go on: a snapshot cannot see their rows anyway.
    let next: i64 = one(
        client,
        "SELECT txid_snapshot_xmax(txid_current_snapshot())",
        &[],
    );
    let start = Instant::now();
    loop {
        // Each query is a transaction of its own: a fresh snapshot, whose
        // xmin is its oldest transaction in progress.
        let xmin: i64 = one(
            client,
            "SELECT txid_snapshot_xmin(txid_current_snapshot())",
            &[],
        );
        if xmin >= next {
            return;
        }
        if start.elapsed() >= deadline {
            let blocking: String = one(client, BLOCKING, &[&next]);
            panic!(
                "pg-testkit: transactions older than xid {next} are still running after \
                 {deadline:?}, so a snapshot would count this test's rows as unseen: {blocking}"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The transactions in progress older than `$1` (a 64-bit txid), with their
/// sessions (or prepared transactions).
const BLOCKING: &str = "\
    SELECT coalesce(string_agg(format('xid %s: %s', x, coalesce( \
             format('pid %s (database %s, %s since %s): %s', a.pid, a.datname, a.state, a.xact_start, \
                    left(a.query, 200)), \
             format('prepared transaction %L', p.gid), 'no session found')), '; ' ORDER BY x), \
           'none any more') \
      FROM txid_snapshot_xip(txid_current_snapshot()) x \
      LEFT JOIN pg_stat_activity a ON a.backend_xid::text::bigint = x % 4294967296 \
      LEFT JOIN pg_prepared_xacts p ON p.transaction::text::bigint = x % 4294967296 \
     WHERE x < $1";

fn one<T: for<'a> postgres::types::FromSql<'a>>(
    client: &mut postgres::Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> T {
    client
        .query_one(sql, params)
        .unwrap_or_else(|e| panic!("pg-testkit: {sql}: {e}"))
        .get(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster;

    /// `(xid of a committed write, xmin of a snapshot taken after it)`.
    fn write_then_snapshot(client: &mut postgres::Client) -> (i64, i64) {
        let written: i64 = one(client, "SELECT txid_current()", &[]);
        let xmin: i64 = one(
            client,
            "SELECT txid_snapshot_xmin(txid_current_snapshot())",
            &[],
        );
        (written, xmin)
    }

    #[test]
    fn waits_for_an_older_transaction_of_another_database_then_rows_are_seen() {
        let db = cluster().create_database("snapshot_wait");
        let other = cluster().create_database("snapshot_wait_other");
        let mut holder = other.client();
        holder
            .batch_execute("BEGIN; SELECT txid_current()")
            .unwrap();
        let mut client = db.client();
        let (written, xmin) = write_then_snapshot(&mut client);
        assert!(xmin <= written, "the holder keeps xmin back: {xmin}");
        let committer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            holder.batch_execute("COMMIT").unwrap();
        });
        let start = Instant::now();
        wait_for_older_transactions(&mut client);
        assert!(start.elapsed() >= Duration::from_millis(250));
        committer.join().unwrap();
        let xmin: i64 = one(
            &mut client,
            "SELECT txid_snapshot_xmin(txid_current_snapshot())",
            &[],
        );
        assert!(xmin > written, "{xmin} <= {written}");
    }

    #[test]
    fn names_the_session_in_the_way_when_it_does_not_end() {
        let db = cluster().create_database("snapshot_deadline");
        let mut holder = db.client();
        holder.batch_execute("BEGIN").unwrap();
        let xid: i64 = one(&mut holder, "SELECT txid_current()", &[]);
        let pid: i32 = one(&mut holder, "SELECT pg_backend_pid()", &[]);
        let mut client = db.client();
        write_then_snapshot(&mut client);
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_within(&mut client, Duration::from_millis(200))
        }))
        .unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        let blocker = format!(
            "xid {xid}: pid {pid} (database {}, idle in transaction since ",
            db.name
        );
        assert!(
            message.starts_with("pg-testkit: transactions older than xid ")
                && message.contains(&blocker)
                && message.contains("): SELECT pg_backend_pid()"),
            "{message}"
        );
        holder.batch_execute("COMMIT").unwrap();
    }
}
