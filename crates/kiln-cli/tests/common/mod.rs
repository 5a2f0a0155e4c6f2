//! Helpers shared by the `kiln` binary's end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::time::Duration;

/// An HTTP client that reports every status instead of failing on 4xx/5xx.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The PostgreSQL test database.
pub fn database_url() -> String {
    std::env::var("KILN_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// True if PostgreSQL answers; without it the caller skips (saying why) unless
/// `KILN_REQUIRE_POSTGRES=1` makes it a failure.
pub fn postgres_available() -> bool {
    let required = std::env::var("KILN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reachable =
        runtime.block_on(async { tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await.is_ok() });
    assert!(
        reachable || !required,
        "PostgreSQL is required (KILN_REQUIRE_POSTGRES=1) but {} is not reachable",
        database_url()
    );
    if !reachable {
        eprintln!(
            "skipped: PostgreSQL at {} is not available; set KILN_REQUIRE_POSTGRES=1 to fail instead",
            database_url()
        );
    }
    reachable
}

/// Drops a PostgreSQL schema (test cleanup).
pub fn drop_schema(schema: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await.unwrap();
        drop(client);
        let _ = driver.await;
    });
}
