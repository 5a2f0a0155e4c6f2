//! What a real `kiln serve` logs: with `--log-format json`, every line is a JSON object, and
//! one report job's lines, from the starter's accept to its activity and its end, carry the same
//! instance id, label and correlation; no secret (the system key, a status token) ever appears.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, agent, free_port};
use serde_json::Value;
use std::time::{Duration, Instant};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[test]
fn one_report_jobs_json_lines_are_tied_together_and_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--log-format", "json", "--log", "debug"].map(String::from).to_vec();
    let server = Server::start_with(dir.path(), (free_port(), free_port()), args);
    let system_key = std::fs::read_to_string(dir.path().join("kiln.key")).unwrap().trim().to_owned();
    assert!(system_key.len() >= 16, "the key file holds the key");

    let body = r#"{"customer_id":"cust-123","operation":"rebuild-report","delay_seconds":0}"#;
    let mut accepted = agent()
        .post(format!("{}/api/jobs/reports", server.public))
        .header("content-type", "application/json")
        .header("traceparent", TRACEPARENT)
        .send(body)
        .unwrap();
    assert_eq!(accepted.status(), 202);
    assert_eq!(accepted.headers().get("x-correlation-id").unwrap(), TRACE_ID);
    let location = accepted.headers().get("location").unwrap().to_str().unwrap().to_owned();
    let token = location.split("token=").nth(1).unwrap().to_owned();
    let id = serde_json::from_str::<Value>(&accepted.body_mut().read_to_string().unwrap()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The key and the token travel in requests; neither may reach the log.
    let listed = agent()
        .get(format!("{}/runtime/webhooks/durabletask/instances?code={system_key}", server.public))
        .call()
        .unwrap();
    assert_eq!(listed.status(), 200);

    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines: Vec<Value> = server.log().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        let finished = lines.iter().any(|l| l["instance_id"] == id.as_str() && l["message"] == "instance finished");
        if finished {
            break lines;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {lines:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(agent().get(&location).call().unwrap().status() == 200, "the status URL still works");

    let job: Vec<&Value> = lines.iter().filter(|l| l["instance_id"] == id.as_str()).collect();
    for line in &job {
        println!("{line}");
    }
    let messages: Vec<&str> = job.iter().map(|l| l["message"].as_str().unwrap()).collect();
    for expected in
        ["instance accepted", "turn committed", "activity started", "activity completed", "instance finished"]
    {
        assert!(messages.contains(&expected), "no '{expected}' line: {messages:?}");
    }
    // Two turns: the first (run as the job was created) and the one that took the result.
    assert_eq!(messages.iter().filter(|m| **m == "turn committed").count(), 2, "{messages:?}");
    for line in &job {
        assert_eq!(line["correlation_id"], TRACE_ID, "{line}");
        assert_eq!(line["labels"], "customer_id:cust-123", "{line}");
        assert!(line["orchestration"] == "report_job" && line["level"].is_string(), "{line}");
    }
    for message in ["instance accepted", "activity completed", "instance finished"] {
        let line = job.iter().find(|l| l["message"] == message).unwrap();
        assert_eq!(line["trace_id"], TRACE_ID, "{line}");
    }
    let completed = job.iter().find(|l| l["message"] == "activity completed").unwrap();
    assert!(completed["millis"].is_u64() && completed["attempt"] == 1, "{completed}");
    assert_eq!(job.iter().find(|l| l["message"] == "instance finished").unwrap()["status"], "Completed");

    let log = server.log();
    assert!(!log.contains(&system_key), "the system key was logged");
    assert!(!log.contains(&token) && !log.contains(token.split('.').next_back().unwrap()), "a status token was logged");
}
