//! Two `kiln serve` nodes on one PostgreSQL schema, one of them paused (`SIGSTOP`) past its
//! leases while it holds running activities: the other node takes its work over and finishes
//! every job (running those activities again: at least once); when the paused node wakes, each
//! of its late results is refused, so every job ends once, with its own output, a history with
//! one result per step that does not change afterwards, and no message left in its inbox. The
//! woken node then serves new work as usual.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, agent, database_url, drop_schema, free_port, postgres_args, postgres_available, report_jobs};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const JOBS: usize = 24;
const LEASE_SECONDS: u64 = 2;
/// How long each job's activity runs: the paused node holds them all when it stops.
const ACTIVITY_SECONDS: u64 = 1;

fn signal(server: &Server, signal: &str) {
    let status = Command::new("kill").args([signal, &server.child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill {signal}");
}

fn start_job(server: &Server, customer: &str) -> String {
    let body = json!({"customer_id": customer, "delay_seconds": ACTIVITY_SECONDS});
    let mut response = agent().post(format!("{}/api/jobs/reports", server.public)).send_json(body).unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// The instance's history through the management API (Durable Functions' `showHistory`).
fn history(server: &Server, id: &str) -> Vec<Value> {
    let url = format!("{}/runtime/webhooks/durabletask/instances/{id}?showHistory=true", server.management);
    let mut response = agent().get(url).call().unwrap();
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    body["historyEvents"].as_array().cloned().unwrap_or_default()
}

/// How many inbox rows these instances have, read from PostgreSQL directly.
fn inbox_rows<'a>(schema: &str, ids: impl Iterator<Item = &'a String>) -> i64 {
    let ids: Vec<&String> = ids.collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        let sql = format!("SELECT count(*) FROM \"{schema}\".inbox WHERE instance_id = ANY($1)");
        let count: i64 = client.query_one(&sql, &[&ids]).await.unwrap().get(0);
        drop(client);
        let _ = driver.await;
        count
    })
}

fn completed(server: &Server, jobs: &BTreeMap<String, String>) -> usize {
    let all = report_jobs(&server.management);
    jobs.iter()
        .filter(|(id, customer)| all.get(*id) == Some(&("Completed".to_owned(), Some((*customer).clone()))))
        .count()
}

#[test]
fn a_node_paused_past_its_leases_loses_its_work_to_the_other_and_its_late_results_are_refused() {
    if !postgres_available() {
        return;
    }
    let schema = format!("kiln_paused_{}", std::process::id());
    drop_schema(&schema);
    let dir = tempfile::tempdir().unwrap();
    let args = || postgres_args(&database_url(), &schema, LEASE_SECONDS);
    let paused = Server::start_with(dir.path(), (free_port(), free_port()), args());
    let other = Server::start_with(dir.path(), (free_port(), free_port()), args());

    // Jobs started through the node about to pause: their first turns run there and their
    // activities are claimed for it.
    let jobs: BTreeMap<String, String> =
        (0..JOBS).map(|n| format!("paused-{n}")).map(|customer| (start_job(&paused, &customer), customer)).collect();
    signal(&paused, "-STOP");

    // Its leases lapse; the other node runs everything to the end meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed(&other, &jobs) < JOBS {
        assert!(
            Instant::now() < deadline,
            "the other node did not take the work over: {:?}",
            report_jobs(&other.management)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // What the other node finished, as it stands.
    let finished: BTreeMap<String, Vec<Value>> = jobs.keys().map(|id| (id.clone(), history(&other, id))).collect();

    // The paused node wakes with stale leases, activities that finish late and turns in flight:
    // each of its activities either reports a result its lease no longer covers, and is
    // refused, or — if its lease renewal comes first — is canceled as its lease is gone.
    signal(&paused, "-CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = |log: &str| {
        log.matches("activity finished after its lease lapsed").count()
            + log.matches("activity canceled: its lease is gone").count()
    };
    while refused(&paused.log()) < JOBS {
        assert!(Instant::now() < deadline, "the woken node did not report its late results: {}", paused.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(completed(&other, &jobs), JOBS, "{:?}", report_jobs(&other.management));
    for (id, before) in &finished {
        let events = history(&other, id);
        assert_eq!(&events, before, "{id}: nothing changed once finished");
        let count = |kind: &str| events.iter().filter(|e| e["EventType"] == kind).count();
        assert_eq!(count("ExecutionCompleted"), 1, "{id}: {events:?}");
        // Durable Functions shows a step once, as its result (with the time it was scheduled).
        assert_eq!(count("TaskCompleted"), 1, "{id}: {events:?}");
        assert_eq!(events.len(), 3, "{id}: {events:?}");
    }
    // No late result went into a finished instance's inbox either.
    assert_eq!(inbox_rows(&schema, jobs.keys()), 0);

    // Awake again, it serves new work as usual.
    let more: BTreeMap<String, String> =
        (0..4).map(|n| format!("woken-{n}")).map(|customer| (start_job(&paused, &customer), customer)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed(&paused, &more) < more.len() {
        assert!(Instant::now() < deadline, "{:?}", report_jobs(&paused.management));
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((paused, other));
    drop_schema(&schema);
}
