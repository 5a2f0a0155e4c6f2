//! The two seed documents, end to end against a real `kiln serve` process: every request and
//! expected output they print. Seed 004 (report jobs): `POST /api/jobs/reports` answers
//! `202 {"status":"accepted","instanceId",…}`, its status URL `202 Running` and then
//! `200 Completed` with the report; the seed's own starter (`start_new("report_job_orchestrator")`)
//! through the management API; defaults, invalid bodies and closed accounts. Seed 000 (call for
//! speakers): polling by `Location` + `Retry-After`, a custom status per stage, and answers that
//! show the caller its own status only (no management URLs, keys or inputs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{agent, free_port};
use serde_json::{Value, json};
use std::process::Child;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(30);
/// The seed's `curl -d` body, byte for byte.
const SEED_BODY: &str = r#"{"customer_id":"cust-123","operation":"rebuild-report","delay_seconds":5}"#;
const SUBMISSION: &str = r#"{"speaker":"Ada","email":"ada@example.com","title":"Durable Rust","abstract":"How replaying an event history makes ordinary async Rust survive crashes."}"#;
/// Text of each sample's input that its status answers must not show.
const REPORT_INPUT: &str = "customer_id";
const SUBMISSION_INPUT: &str = "How replaying an event history";
const DURABLETASK: &str = "/runtime/webhooks/durabletask";

/// A `kiln serve` process in its own working directory, killed when dropped.
struct Server {
    child: Child,
    dir: TempDir,
    /// The public listener as the seed's client names it: `http://localhost:PORT`.
    public: String,
    /// The keyless loopback management listener.
    management: String,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let ports = (free_port(), free_port());
        let public = format!("http://localhost:{}", ports.0);
        let child = common::serve(dir.path(), ports, &public);
        Server { child, dir, public, management: format!("http://127.0.0.1:{}", ports.1) }
    }

    fn system_key(&self) -> String {
        let key = std::fs::read_to_string(self.dir.path().join("kiln.key")).unwrap().trim().to_owned();
        assert!(key.len() >= 16, "a real system key: {key:?}");
        key
    }

    /// How many instances exist, per the management API's list.
    fn instance_count(&self) -> usize {
        let list = get(&format!("{}{DURABLETASK}/instances", self.management));
        assert_eq!(list.status, 200, "{}", list.text);
        list.json.as_array().expect("the instance list is an array").len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP answer, read whole.
struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
    text: String,
    /// The body as JSON (`null` if it is not JSON).
    json: Value,
}

impl Reply {
    fn read(mut response: ureq::http::Response<ureq::Body>) -> Reply {
        let text = response.body_mut().read_to_string().unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status: response.status().as_u16(), headers: response.headers().clone(), text, json }
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap_or_else(|| panic!("no {name} header on {}", self.text)).to_str().unwrap()
    }

    /// `Retry-After`, which must be whole seconds.
    fn retry_after(&self) -> Duration {
        Duration::from_secs(self.header("retry-after").parse().expect("Retry-After in whole seconds"))
    }
}

fn post(url: &str, body: &str) -> Reply {
    Reply::read(agent().post(url).header("Content-Type", "application/json").send(body).unwrap())
}

fn get(url: &str) -> Reply {
    Reply::read(agent().get(url).call().unwrap())
}

/// GETs a status URL, the first time at once, until it stops answering 202, waiting its
/// `Retry-After` (0.1–1 s) between reads. Returns the 202 answers and the final one.
fn poll(url: &str) -> (Vec<Reply>, Reply) {
    let deadline = Instant::now() + DEADLINE;
    let mut running = Vec::new();
    loop {
        let reply = get(url);
        if reply.status != 202 {
            return (running, reply);
        }
        assert!(Instant::now() < deadline, "{url} did not finish: {}", reply.text);
        std::thread::sleep(reply.retry_after().clamp(Duration::from_millis(100), Duration::from_secs(1)));
        running.push(reply);
    }
}

/// Asserts that an answer of the public API shows the caller its own status only: no
/// management URL, system key or input, in the body or the `Location`.
fn assert_least_privilege(server: &Server, reply: &Reply, input: &str) {
    let key = server.system_key();
    let location = reply.headers.get("location").map_or("", |v| v.to_str().unwrap());
    for shown in [reply.text.as_str(), location] {
        for secret in ["/runtime/webhooks", "sendEventPostUri", "terminatePostUri", "code=", &key, input] {
            assert!(!shown.contains(secret), "{secret:?} shown in {shown}");
        }
    }
    assert!(reply.json.get("input").is_none(), "{}", reply.text);
}

/// POSTs a starter body as the seeds' clients do and checks the `202 Accepted`: `Location` =
/// `Operation-Location` = a status URL on the Host the request named, and `Retry-After`.
/// Returns the answer and its status URL.
fn accept(server: &Server, path: &str, body: &str, input: &str) -> (Reply, String) {
    let accepted = post(&format!("{}{path}", server.public), body);
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    let location = accepted.header("location").to_owned();
    assert_eq!(accepted.header("operation-location"), location);
    accepted.retry_after();
    assert!(location.starts_with(&format!("{}/api/status/", server.public)), "{location}");
    assert_least_privilege(server, &accepted, input);
    (accepted, location)
}

/// Polls a status URL to the end, checking each `202` (still `Running`, no output, `Location`
/// to the same instance's status) and that every answer shows only the caller's own status.
fn follow(server: &Server, location: &str, input: &str) -> (Vec<Reply>, Reply) {
    let (running, done) = poll(location);
    let same_status = &location[..location.find("?token=").expect("a token in the status URL") + 7];
    for reply in &running {
        assert_eq!(reply.json["runtimeStatus"], "Running", "{}", reply.text);
        assert!(reply.json.get("output").is_none(), "{}", reply.text);
        assert!(reply.header("location").starts_with(same_status), "{}", reply.header("location"));
        assert_least_privilege(server, reply, input);
    }
    assert_eq!(done.status, 200, "{}", done.text);
    assert_least_privilege(server, &done, input);
    (running, done)
}

/// The output of `report_job_orchestrator`, as the seed prints it.
fn report_output(id: &str) -> Value {
    json!({"status": "completed", "instanceId": id, "result": {"customerId": "cust-123", "operation": "rebuild-report"}})
}

/// Starts a report job and follows it to `Completed` with the seed's report. Returns the
/// `202 Accepted`, its status URL, the `202`s of the status URL, and how long the job took.
fn complete_report(server: &Server, body: &str) -> (Reply, String, Vec<Reply>, Duration) {
    let started = Instant::now();
    let (accepted, location) = accept(server, "/api/jobs/reports", body, REPORT_INPUT);
    let id = accepted.json["instanceId"].as_str().expect("instanceId");
    let (running, done) = follow(server, &location, REPORT_INPUT);
    assert_eq!(done.json["runtimeStatus"], "Completed", "{}", done.text);
    assert_eq!(done.json["output"], report_output(id), "{}", done.text);
    // The seed prints the output with its fields in this order: it is served byte for byte.
    let printed = format!(
        r#""output":{{"status":"completed","instanceId":"{id}","result":{{"customerId":"cust-123","operation":"rebuild-report"}}}}"#
    );
    assert!(done.text.contains(r#""runtimeStatus":"Completed""#) && done.text.contains(&printed), "{}", done.text);
    let took = started.elapsed();
    (accepted, location, running, took)
}

#[test]
fn seed_report_job_is_accepted_runs_for_its_delay_and_completes_with_the_report() {
    let server = Server::start();
    let (accepted, location, running, took) = complete_report(&server, SEED_BODY);
    let id = accepted.json["instanceId"].as_str().unwrap();
    assert!(!id.is_empty());
    let expected = format!(
        r#"{{"status":"accepted","instanceId":"{id}","statusQueryGetUri":"{location}","id":"{id}","runtimeStatus":"Pending"}}"#
    );
    assert_eq!(accepted.text, expected, "the seed's fields first, then Durable Functions' own");
    assert!(!running.is_empty(), "the first GET, at once, answers 202 Running");
    assert!(took >= Duration::from_secs(5), "done after {took:?}, before delay_seconds");
}

#[test]
fn a_report_request_naming_only_the_customer_gets_the_default_operation_and_delay() {
    let server = Server::start();
    let (_, _, _, took) = complete_report(&server, r#"{"customer_id":"cust-123"}"#);
    assert!(took >= Duration::from_secs(5), "done after {took:?}: the default delay is 5 s");
}

#[test]
fn a_closed_account_is_accepted_and_then_fails_with_account_closed() {
    let server = Server::start();
    let (_, location) = accept(&server, "/api/jobs/reports", r#"{"customer_id":"closed-17"}"#, REPORT_INPUT);
    let (_, done) = follow(&server, &location, REPORT_INPUT);
    assert_eq!(done.json["runtimeStatus"], "Failed", "{}", done.text);
    assert_eq!(done.json["status"], "Failed", "{}", done.text);
    assert_eq!(done.json["error"]["type"], "AccountClosed", "{}", done.text);
}

#[test]
fn invalid_report_requests_are_400_problems_naming_the_field_and_start_nothing() {
    let server = Server::start();
    let before = server.instance_count();
    let cases = [
        (r#"{"operation":"rebuild-report","delay_seconds":5}"#, Some("customer_id")),
        (r#"{"customer_id":"cust-123","delay_seconds":"soon"}"#, Some("delay_seconds")),
        (r#"{"customer_id":"cust-123","delay_seconds":3601}"#, Some("delay_seconds")),
        (r#"{"customer_id":"cust-123","delay_seconds":-1}"#, Some("delay_seconds")),
        (r#"{"customer_id":"","operation":"rebuild-report"}"#, Some("customer_id")),
        (r#"{"customer_id":"cust-123","operation":""}"#, Some("operation")),
        (r#"{"customer_id":5}"#, Some("customer_id")),
        ("customer_id=cust-123", None),
        (r#"{"customer_id":"cust-123""#, None),
    ];
    for (body, field) in cases {
        let reply = post(&format!("{}/api/jobs/reports", server.public), body);
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert!(reply.header("content-type").starts_with("application/problem+json"), "{body}");
        if let Some(field) = field {
            let errors = reply.json["errors"].as_array().unwrap_or_else(|| panic!("{body}: {}", reply.text));
            let fields: Vec<&Value> = errors.iter().map(|e| &e["field"]).collect();
            assert_eq!(fields, [field], "{body}: {}", reply.text);
            assert!(errors[0]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}: {}", reply.text);
        }
    }
    assert_eq!(server.instance_count(), before, "a refused request starts no instance");
    accept(&server, "/api/jobs/reports", r#"{"customer_id":"cust-123","delay_seconds":0}"#, REPORT_INPUT);
    assert_eq!(server.instance_count(), before + 1, "the list does count a started instance");
}

#[test]
fn the_seed_starter_starts_report_job_orchestrator_through_the_management_api() {
    let server = Server::start();
    let management = format!("{}{DURABLETASK}", server.management);
    let body = r#"{"customer_id":"cust-123","operation":"rebuild-report","delay_seconds":1}"#;
    let started = post(&format!("{management}/orchestrators/report_job_orchestrator"), body);
    assert_eq!(started.status, 202, "{}", started.text);
    let id = started.json["id"].as_str().expect("id");
    let instance = format!("{management}/instances/{id}");
    let status_url = started.json["statusQueryGetUri"].as_str().expect("statusQueryGetUri");
    assert!(status_url.starts_with(&instance), "{status_url}");

    let (_, done) = poll(&instance);
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.json["name"], "report_job_orchestrator", "{}", done.text);
    assert_eq!(done.json["runtimeStatus"], "Completed", "{}", done.text);
    assert_eq!(done.json["output"], report_output(id), "{}", done.text);
}

#[test]
fn a_call_for_speakers_submission_shows_its_stage_then_the_decision() {
    let server = Server::start();
    let (_, location) = accept(&server, "/api/submissions", SUBMISSION, SUBMISSION_INPUT);
    let (running, done) = follow(&server, &location, SUBMISSION_INPUT);
    assert!(!running.is_empty(), "the first GET, at once, answers 202 while the stages run");
    for reply in &running {
        assert!(reply.json["customStatus"]["stage"].is_string(), "{}", reply.text);
    }
    assert_eq!(done.json["runtimeStatus"], "Completed", "{}", done.text);
    assert!(matches!(done.json["output"]["decision"].as_str(), Some("accepted" | "rejected")), "{}", done.text);
}
