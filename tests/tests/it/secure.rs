//! `tap-postgres-rs | target-postgres-rs` over secure connections: TLS
//! verify-full with client certificates that `pg_hba.conf` requires, and an
//! SSH tunnel to databases that nothing but the bastion can reach.

use e2e_tests::{compare_table, discover, pipe, select, write_json};
use pg_testkit::bastion::Bastion;
use pg_testkit::{cluster, start_cluster, ClusterOptions};
use serde_json::{json, Value};
use std::path::Path;

const SOURCE: &str = "
    CREATE TABLE public.accounts (
        id bigint PRIMARY KEY,
        name text NOT NULL,
        balance numeric(20,5),
        opened timestamptz,
        tags jsonb,
        secret bytea
    );
    INSERT INTO public.accounts
    SELECT i, 'account ' || i, i * 1000.12345, '2024-01-01T00:00:00Z'::timestamptz + i * interval '1 hour',
           jsonb_build_object('n', i), decode(md5(i::text), 'hex')
    FROM generate_series(1, 300) i;";

/// Two LOG_BASED `tap | target` runs (the initial copy, then inserts,
/// updates and deletes read over the replication connection) into a
/// destination with hard deletes: afterwards it equals the source.
fn log_based_runs(
    src: &mut dyn FnMut() -> postgres::Client,
    dst: &mut dyn FnMut() -> postgres::Client,
    tap_config: &Path,
    target_config: &Path,
    dir: &Path,
) {
    let mut catalog = discover(tap_config);
    select(&mut catalog, &["public-accounts"], "LOG_BASED", None);
    let catalog = write_json(dir, "log_catalog.json", &catalog);
    let first = pipe(tap_config, &catalog, None, target_config);
    first.assert_success();
    src()
        .batch_execute(
            "INSERT INTO public.accounts (id, name, balance) SELECT i, 'new ' || i, i FROM generate_series(301, 350) i;
             UPDATE public.accounts SET name = 'changed', secret = NULL WHERE id <= 5;
             DELETE FROM public.accounts WHERE id BETWEEN 100 AND 109",
        )
        .unwrap();
    let state = write_json(dir, "log_state.json", first.last_state().unwrap());
    let second = pipe(tap_config, &catalog, Some(&state), target_config);
    second.assert_success();
    let cmp = compare_table(
        &mut src(),
        &mut dst(),
        "public",
        "accounts",
        "public",
        "accounts",
    );
    assert!(cmp.is_identical(), "{cmp:?}");
    assert_eq!(cmp.destination_rows, 340);
}

fn merge(mut base: Value, extra: Value) -> Value {
    base.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    base
}

#[test]
fn tls_verify_full_with_client_certificates_required_by_pg_hba() {
    let c = cluster();
    let src = c.create_database("secure_tls_src");
    let dst = c.create_database("secure_tls_dst");
    src.client().batch_execute(SOURCE).unwrap();
    // Only TLS with a client certificate lets this role in.
    c.client("postgres")
        .batch_execute("CREATE ROLE e2e_cert LOGIN SUPERUSER")
        .unwrap();
    c.prepend_hba(
        "hostssl all e2e_cert 127.0.0.1/32 cert\n\
         host all e2e_cert 127.0.0.1/32 reject",
    );
    let (crt, key) = c.client_certificate("e2e_cert");
    let dir = tempfile::tempdir().unwrap();
    let tls = |db: &pg_testkit::TestDb, pem_contents: bool| {
        let (cert, key) = if pem_contents {
            (
                std::fs::read_to_string(&crt).unwrap(),
                std::fs::read_to_string(&key).unwrap(),
            )
        } else {
            (
                crt.to_str().unwrap().to_owned(),
                key.to_str().unwrap().to_owned(),
            )
        };
        merge(
            db.config(),
            json!({
                "host": "localhost",
                "user": "e2e_cert",
                "ssl_mode": "verify-full",
                "ssl_certificate_authority": c.ca_cert().to_str().unwrap(),
                "ssl_client_certificate": cert,
                "ssl_client_private_key": key,
            }),
        )
    };
    let tap_config = write_json(dir.path(), "tap.json", &tls(&src, false));
    let target_config = write_json(dir.path(), "target.json", &tls(&dst, true));
    let mut catalog = discover(&tap_config);
    select(&mut catalog, &["public-accounts"], "FULL_TABLE", None);
    let catalog = write_json(dir.path(), "catalog.json", &catalog);
    pipe(&tap_config, &catalog, None, &target_config).assert_success();

    let cmp = compare_table(
        &mut src.client(),
        &mut dst.client(),
        "public",
        "accounts",
        "public",
        "accounts",
    );
    assert!(cmp.is_identical(), "{cmp:?}");
    assert_eq!(cmp.destination_rows, 300);

    // LOG_BASED: the replication connection, too, is verify-full with the certificate.
    let cdc = c.create_database("secure_tls_cdc");
    let cdc_config = write_json(
        dir.path(),
        "cdc_target.json",
        &merge(tls(&cdc, true), json!({"hard_delete": true})),
    );
    log_based_runs(
        &mut || src.client(),
        &mut || cdc.client(),
        &tap_config,
        &cdc_config,
        dir.path(),
    );

    // Without the certificate the same pipe is refused, with the server's reason.
    let mut no_cert = tls(&src, false);
    no_cert
        .as_object_mut()
        .unwrap()
        .retain(|k, _| !k.starts_with("ssl_client"));
    let out = std::process::Command::new(e2e_tests::bin("tap-postgres-rs"))
        .arg("--config")
        .arg(write_json(dir.path(), "no_cert.json", &no_cert))
        .arg("--discover")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot connect to PostgreSQL at localhost:{} (database `{}`, user `e2e_cert`): \
             FATAL: connection requires a valid client certificate",
            c.port(),
            src.name
        )),
        "{stderr}"
    );
}

#[test]
fn through_an_ssh_tunnel_to_databases_only_the_bastion_reaches() {
    let hidden = start_cluster(ClusterOptions {
        tls: true,
        private_network: true,
        ..Default::default()
    });
    let bastion = Bastion::start(&hidden);
    // Nothing outside the namespace reaches the server over TCP.
    assert!(std::net::TcpStream::connect(("127.0.0.1", hidden.port())).is_err());
    let src = hidden.create_database("secure_ssh_src");
    let dst = hidden.create_database("secure_ssh_dst");
    hidden.client(&src.name).batch_execute(SOURCE).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let key = std::fs::read_to_string(bastion.private_key()).unwrap();
    let config = |database: &str, known_hosts: &str| {
        json!({
            "host": "localhost",
            "port": hidden.port(),
            "user": "postgres",
            "database": database,
            "ssl_mode": "verify-full",
            "ssl_certificate_authority": hidden.ca_cert().to_str().unwrap(),
            "ssh_tunnel": {
                "enable": true,
                "host": bastion.host(),
                "port": bastion.port(),
                "username": bastion.user(),
                "private_key": key,
                "known_hosts_file": dir.path().join(known_hosts).to_str().unwrap(),
            },
        })
    };
    let tap_config = write_json(
        dir.path(),
        "tap.json",
        &config(&src.name, "tap_known_hosts"),
    );
    let target_config = write_json(
        dir.path(),
        "target.json",
        &config(&dst.name, "target_known_hosts"),
    );
    let before = bastion.connections();
    let mut catalog = discover(&tap_config);
    select(&mut catalog, &["public-accounts"], "FULL_TABLE", None);
    let catalog = write_json(dir.path(), "catalog.json", &catalog);
    let run = pipe(&tap_config, &catalog, None, &target_config);
    run.assert_success();
    // discover, tap and target: one SSH connection each.
    assert_eq!(
        bastion.connections() - before,
        3,
        "sshd log:\n{}",
        bastion.log()
    );

    let cmp = compare_table(
        &mut hidden.client(&src.name),
        &mut hidden.client(&dst.name),
        "public",
        "accounts",
        "public",
        "accounts",
    );
    assert!(cmp.is_identical(), "{cmp:?}");
    assert_eq!(cmp.destination_rows, 300);
    // LOG_BASED through the tunnel: the replication connection takes the
    // tap's tunnel (still one SSH connection per binary).
    let cdc = hidden.create_database("secure_ssh_cdc");
    let cdc_config = write_json(
        dir.path(),
        "cdc_target.json",
        &merge(
            config(&cdc.name, "target_known_hosts"),
            json!({"hard_delete": true}),
        ),
    );
    let before = bastion.connections();
    log_based_runs(
        &mut || hidden.client(&src.name),
        &mut || hidden.client(&cdc.name),
        &tap_config,
        &cdc_config,
        dir.path(),
    );
    assert_eq!(
        bastion.connections() - before,
        5,
        "discover, then tap and target twice; sshd log:\n{}",
        bastion.log()
    );

    // Both binaries trusted the bastion on first use.
    for f in ["tap_known_hosts", "target_known_hosts"] {
        let remembered = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(
            remembered.contains(&bastion.host_key()),
            "{f}: {remembered}"
        );
    }
    // No ssh left behind by the binaries (at most the watcher's half second).
    let ssh_running = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .any(|c| c.starts_with("ssh ") && c.contains(&format!("-p {} ", bastion.port())))
    };
    let gone = pg_testkit::TestDb::wait_for(std::time::Duration::from_secs(5), || !ssh_running());
    assert!(gone, "an ssh process outlived the binaries");
}
