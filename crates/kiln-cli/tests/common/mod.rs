//! Helpers shared by the `kiln` binary's end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// Where the server listening on this public port writes its log: outside its data directory,
/// which may be a disk the test fills.
pub fn log_path(public_port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("kiln-test-serve-{public_port}.log"))
}

/// Starts `kiln serve` in `dir` on `127.0.0.1` at these ports (public, management), quiet, and
/// waits until `public_url` (the public listener as the caller names it) answers `/readyz`.
/// ([`Server`] keeps the log and shows it when a test fails.)
pub fn serve(dir: &Path, ports: (u16, u16), public_url: &str) -> Child {
    let child = spawn(dir, ports, &[], Stdio::null());
    wait_ready(public_url);
    child
}

/// Arguments for `kiln serve` on PostgreSQL (`url`, `schema`) with leases of `lease_seconds`.
pub fn postgres_args(url: &str, schema: &str, lease_seconds: u64) -> Vec<String> {
    let lease = lease_seconds.to_string();
    ["--database-url", url, "--database-schema", schema, "--lease-seconds", &lease].map(str::to_owned).to_vec()
}

/// Starts `kiln serve` with extra `args`, logging to [`log_path`] (appended across restarts),
/// without waiting for readiness.
pub fn kiln_serve(dir: &Path, ports: (u16, u16), args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path(ports.0)).unwrap();
    spawn(dir, ports, args, log.into())
}

fn spawn(dir: &Path, ports: (u16, u16), args: &[String], stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", ports.0)])
        .args(["--management-listen", &format!("127.0.0.1:{}", ports.1)])
        .args(args)
        .current_dir(dir)
        .env("KILN_LOG", std::env::var("KILN_TEST_SERVE_LOG").unwrap_or_else(|_| "warn".to_owned()))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Waits (up to 30 s) until `public_url` answers `/readyz` with 200.
pub fn wait_ready(public_url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent().get(format!("{public_url}/readyz")).call().map_or(true, |r| r.status() != 200) {
        assert!(Instant::now() < deadline, "kiln serve did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `kiln serve` process on `127.0.0.1`, killed when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    dir: PathBuf,
    ports: (u16, u16),
    args: Vec<String>,
    /// The public listener's base URL.
    pub public: String,
    /// The loopback management listener's base URL.
    pub management: String,
}

impl Server {
    /// Starts a server in `dir` on these ports (public, management) and waits until it is ready.
    pub fn start(dir: &Path, ports: (u16, u16)) -> Server {
        Server::start_with(dir, ports, Vec::new())
    }

    /// Starts a server with extra `args` (e.g. [`postgres_args`]) and waits until it is ready.
    pub fn start_with(dir: &Path, ports: (u16, u16), args: Vec<String>) -> Server {
        // A log left by an earlier test on the same port is not this server's.
        let _ = std::fs::remove_file(log_path(ports.0));
        let public = format!("http://127.0.0.1:{}", ports.0);
        let child = kiln_serve(dir, ports, &args);
        wait_ready(&public);
        let management = format!("http://127.0.0.1:{}", ports.1);
        Server { child, dir: dir.to_owned(), ports, args, public, management }
    }

    /// Kills the server with SIGKILL.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Kills the server with SIGKILL and starts it again on the same directory and ports (the
    /// log goes on in the same file).
    pub fn restart(mut self) -> Server {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = kiln_serve(&self.dir, self.ports, &self.args);
        wait_ready(&self.public);
        self
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(self.ports.0)).unwrap_or_default()
    }

    /// Runs a `kiln` client command against the server's management listener.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiln")).args(["--url", &self.management]).args(args).output().unwrap()
    }
}

impl Drop for Server {
    /// Kills the server; if the test is failing, prints the end of its log first, then removes
    /// the log.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = log_path(self.ports.0);
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(200).collect();
            eprintln!("--- last {} lines of the server's log ({}) ---", tail.len(), log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        } else {
            let _ = std::fs::remove_file(log);
        }
    }
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

/// Every instance on a server, by id: its runtime status and, once a report job completed, the
/// customer its report is for.
pub fn report_jobs(management: &str) -> BTreeMap<String, (String, Option<String>)> {
    let url = format!("{management}/runtime/webhooks/durabletask/instances");
    let mut response = agent().get(url).call().unwrap();
    let list: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let customer = i["output"]["result"]["customerId"].as_str().map(str::to_owned);
            (i["instanceId"].as_str().unwrap().to_owned(), (i["runtimeStatus"].as_str().unwrap().to_owned(), customer))
        })
        .collect()
}

/// Waits until no report job is pending or running, then checks that every accepted one
/// (id → customer) completed with its own customer's report. Other instances may exist only
/// with `unacknowledged_may_exist` (a start whose answer was lost to a crash), and then must
/// have completed too.
pub fn assert_report_jobs_completed(
    management: &str,
    accepted: &BTreeMap<String, String>,
    unacknowledged_may_exist: bool,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let finished = loop {
        let all = report_jobs(management);
        if all.values().all(|(status, _)| status != "Pending" && status != "Running") {
            break all;
        }
        assert!(Instant::now() < deadline, "jobs still unfinished: {all:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let ids: BTreeSet<&String> = finished.keys().collect();
    let acknowledged: BTreeSet<&String> = accepted.keys().collect();
    assert!(ids.is_superset(&acknowledged), "lost: {:?}", acknowledged.difference(&ids).collect::<Vec<_>>());
    if !unacknowledged_may_exist {
        assert_eq!(ids, acknowledged, "an instance exists whose start was refused");
    }
    for (id, (status, customer)) in &finished {
        assert_eq!(status, "Completed", "{id}");
        if let Some(expected) = accepted.get(id) {
            assert_eq!(customer.as_ref(), Some(expected), "{id} reports for its own customer");
        }
    }
}
