//! Helpers shared by the `kiln` binary's end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Starts `kiln serve` in `dir` on `127.0.0.1` at these ports (public, management), quiet, and
/// waits until `public_url` (the public listener as the caller names it) answers `/readyz`.
pub fn serve(dir: &Path, ports: (u16, u16), public_url: &str) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", ports.0)])
        .args(["--management-listen", &format!("127.0.0.1:{}", ports.1)])
        .current_dir(dir)
        .env("KILN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent().get(format!("{public_url}/readyz")).call().map_or(true, |r| r.status() != 200) {
        assert!(Instant::now() < deadline, "kiln serve did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
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
