//! Two `kiln serve` nodes on one PostgreSQL schema, one of them paused (`SIGSTOP`) past its
//! leases while it holds running activities: the other node takes its work over and finishes
//! every job; when the paused node wakes, its late results and turns are refused, so every job
//! ends once, with its own output and a history with one result per step. The woken node then
//! serves new work as usual.
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

fn completed(server: &Server, jobs: &BTreeMap<String, String>) -> usize {
    let all = report_jobs(&server.management);
    jobs.iter()
        .filter(|(id, customer)| all.get(*id) == Some(&("Completed".to_owned(), Some((*customer).clone()))))
        .count()
}

#[test]
fn a_node_paused_past_its_leases_loses_its_work_to_the_other_and_nothing_runs_twice_to_the_end() {
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

    // The paused node wakes with stale leases, activities that finish late and turns in flight.
    signal(&paused, "-CONT");
    std::thread::sleep(Duration::from_secs(LEASE_SECONDS + ACTIVITY_SECONDS + 1));
    assert_eq!(completed(&other, &jobs), JOBS, "{:?}", report_jobs(&other.management));
    for id in jobs.keys() {
        let events = history(&other, id);
        let count = |kind: &str| events.iter().filter(|e| e["EventType"] == kind).count();
        assert_eq!(count("ExecutionCompleted"), 1, "{id}: {events:?}");
        // Durable Functions shows a step once, as its result (with the time it was scheduled).
        assert_eq!(count("TaskCompleted"), 1, "{id}: {events:?}");
        assert_eq!(events.len(), 3, "{id}: {events:?}");
    }

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
