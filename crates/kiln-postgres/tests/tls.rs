//! PostgreSQL over TLS, against the local server and its self-signed certificate: each
//! `sslmode` connects or refuses as libpq's does, and every connection a store opens is
//! encrypted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kiln_postgres::{OpenError, PostgresOptions, PostgresStore};
use kiln_store::Store;
use std::time::{Duration, Instant};

/// A plain connection to the test database, and the server's certificate file, when the
/// server has TLS on (else `None` after saying why, unless PostgreSQL is required).
async fn tls_server() -> Option<(tokio_postgres::Client, String)> {
    let required = std::env::var("KILN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    let skip = |why: String| {
        assert!(!required, "PostgreSQL with TLS is required (KILN_REQUIRE_POSTGRES=1): {why}");
        eprintln!("skipped: {why}");
        None
    };
    let (client, connection) = match tokio_postgres::connect(&common::database_url(), tokio_postgres::NoTls).await {
        Ok(connected) => connected,
        Err(err) => return skip(format!("PostgreSQL is not available ({err})")),
    };
    tokio::spawn(connection);
    let show = |setting: &'static str| {
        let client = &client;
        async move { client.query_one(&format!("SHOW {setting}"), &[]).await.map(|row| row.get::<_, String>(0)) }
    };
    match (show("ssl").await, show("ssl_cert_file").await) {
        (Ok(on), Ok(cert)) if on == "on" => Some((client, cert)),
        (on, _) => skip(format!("the server's ssl is {on:?} (.ci/run turns it on)")),
    }
}

/// The test database's URL naming the server `host`, with `parameters` (`a=b&c=d`).
fn url(host: &str, parameters: &str) -> String {
    let base = common::database_url().replacen("@127.0.0.1:", &format!("@{host}:"), 1);
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}{parameters}")
}

/// A store in a fresh schema (dropped with the guard) through `url`.
async fn connect(url: String) -> (Result<PostgresStore, OpenError>, common::SchemaGuard) {
    let options = PostgresOptions { schema: common::fresh_options().schema, ..PostgresOptions::new(url) };
    let guard = common::SchemaGuard::new(options.schema.as_deref().unwrap_or_default());
    (PostgresStore::connect(options).await, guard)
}

/// How many of `application`'s connections are open, and how many of them use TLS, once it has
/// at least one.
async fn connections_of(client: &tokio_postgres::Client, application: &str) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s ON s.pid = a.pid WHERE a.application_name = $1",
                &[&application],
            )
            .await
            .unwrap();
        let counts: (i64, i64) = (row.get(0), row.get(1));
        if counts.0 > 0 || Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_s_every_connection_is_encrypted_when_asked_and_plain_when_disabled() {
    let Some((client, cert)) = tls_server().await else { return };
    let application = format!("kiln-tls-{}", uuid::Uuid::new_v4().simple());
    let verified = url("localhost", &format!("sslmode=verify-full&sslrootcert={cert}&application_name={application}"));
    let (store, _guard) = connect(verified).await;
    let store = store.unwrap();
    store.health().await.unwrap();
    let (open, encrypted) = connections_of(&client, &application).await;
    assert!(open >= 1 && encrypted == open, "{encrypted} of {open} connections use TLS");
    drop(store);

    // No sslmode: prefer, as libpq, so TLS whenever the server offers it.
    let preferring = format!("{application}-prefer");
    let (default, _default_guard) = connect(url("127.0.0.1", &format!("application_name={preferring}"))).await;
    default.unwrap().health().await.unwrap();
    let (open, encrypted) = connections_of(&client, &preferring).await;
    assert!(open >= 1 && encrypted == open, "default sslmode: {encrypted} of {open} connections use TLS");

    let plain_application = format!("{application}-plain");
    let (plain, _plain_guard) =
        connect(url("localhost", &format!("sslmode=disable&application_name={plain_application}"))).await;
    plain.unwrap().health().await.unwrap();
    let (open, encrypted) = connections_of(&client, &plain_application).await;
    assert!(open >= 1 && encrypted == 0, "sslmode=disable: {encrypted} of {open} connections use TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_refuses_a_server_it_cannot_vouch_for() {
    let Some((_client, cert)) = tls_server().await else { return };
    // The certificate names `localhost`, not 127.0.0.1.
    let (wrong_name, _) = connect(url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={cert}"))).await;
    let err = wrong_name.err().expect("verify-full must check the name");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    connect(url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={cert}"))).await.0.unwrap();
    // Roots that do not include the server's certificate: the first public CA of the system's
    // bundle (Debian's /etc/ssl/certs directory itself also holds the snakeoil certificate).
    match std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt") {
        Ok(bundle) => {
            let end = "-----END CERTIFICATE-----";
            let first = &bundle[..bundle.find(end).expect("a certificate in the bundle") + end.len()];
            let other_root =
                std::env::temp_dir().join(format!("kiln-other-root-{}.pem", uuid::Uuid::new_v4().simple()));
            std::fs::write(&other_root, first).unwrap();
            let parameters = format!("sslmode=verify-full&sslrootcert={}", other_root.display());
            let (untrusted, _) = connect(url("localhost", &parameters)).await;
            let _ = std::fs::remove_file(&other_root);
            let err = untrusted.err().expect("a certificate outside the trusted roots must be refused");
            assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        }
        Err(err) => eprintln!("not checked: no system CA bundle to take another root from ({err})"),
    }
    // require: encrypted, not verified (as libpq).
    connect(url("127.0.0.1", "sslmode=require")).await.0.unwrap();
    let (bad_mode, _) = connect(url("localhost", "sslmode=verify")).await;
    assert!(matches!(bad_mode, Err(OpenError::Config(_))), "{:?}", bad_mode.err());
}
