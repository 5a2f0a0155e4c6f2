//! End to end against a real `kiln serve` process: the report-job flow over HTTP, a `kill -9`
//! in the middle of a job, and the CLI client commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, agent, free_port};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

/// GETs a status URL until it stops answering 202; returns the final status and body.
fn poll(url: &str) -> (u16, Value) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match agent().get(url).call() {
            Ok(mut response) if response.status() != 202 => {
                let status = response.status().as_u16();
                return (status, serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap());
            }
            _ => {
                assert!(Instant::now() < deadline, "{url} did not finish");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn start_report(server: &Server, delay: u64) -> (String, String) {
    let body = format!(r#"{{"customer_id":"c-7","operation":"yearly","delay_seconds":{delay}}}"#);
    let mut response = agent()
        .post(format!("{}/api/jobs/reports", server.public))
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    assert_eq!(response.status(), 202);
    let headers = response.headers().clone();
    let location = headers.get("location").unwrap().to_str().unwrap().to_owned();
    assert_eq!(headers.get("operation-location").unwrap(), location.as_str());
    assert!(headers.get("retry-after").unwrap().to_str().unwrap().parse::<u64>().is_ok());
    let accepted: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    (accepted["id"].as_str().unwrap().to_owned(), location)
}

#[test]
fn a_report_job_survives_kill_9_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port());
    let server = Server::start(dir.path(), ports);
    let (id, location) = start_report(&server, 0);
    let (status, done) = poll(&location);
    assert_eq!(status, 200);
    assert_eq!(
        done["result"],
        serde_json::json!({"status": "completed", "instanceId": id, "result": {"customerId": "c-7", "operation": "yearly"}})
    );

    let (id, location) = start_report(&server, 2);
    let running = agent().get(&location).call().unwrap();
    assert_eq!(running.status(), 202, "mid-job");
    server.kill_9();
    let server = Server::start(dir.path(), ports);
    let (status, done) = poll(&location);
    assert_eq!(status, 200, "the same status URL works after the restart");
    assert_eq!(done["status"], "Succeeded");
    assert_eq!(done["output"]["instanceId"], id.as_str());
    drop(server);
}

#[test]
fn cli_commands_drive_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), (free_port(), free_port()));
    let ok = |out: &Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let input = r#"{"customer_id":"c-1","operation":"daily","delay_seconds":0}"#;
    let waited = ok(&server.cli(&["start", "report_job", "--input", input, "--id", "job-1", "--wait"]));
    assert!(waited.contains("\"customerId\": \"c-1\""), "{waited}");
    let status: Value = serde_json::from_str(&ok(&server.cli(&["status", "job-1"]))).unwrap();
    assert_eq!(status["runtimeStatus"], "Completed");
    assert!(ok(&server.cli(&["list", "--status", "Completed"])).contains("job-1\tCompleted\treport_job"));
    // Labels: attached at start, shown by `list`, and listed by.
    let input = r#"{"customer_id":"c-2","operation":"daily","delay_seconds":0}"#;
    let labels = ["--label", "customer_id:c-2", "--label", "region:eu"];
    ok(&server.cli(&[&["start", "report_job", "--input", input, "--id", "job-2", "--wait"][..], &labels].concat()));
    let listed = ok(&server.cli(&["list", "--label", "customer_id:c-2"]));
    assert!(listed.starts_with("job-2\t") && listed.trim_end().ends_with("\tcustomer_id:c-2,region:eu"), "{listed}");
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(ok(&server.cli(&["list", "--label", "customer_id:c-2", "--label", "region:us"])).is_empty());
    let refused = server.cli(&["list", "--label", "no-colon"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("key:value"));
    assert_eq!(ok(&server.cli(&["purge", "job-2"])).trim(), "1");
    let history: Value = serde_json::from_str(&ok(&server.cli(&["history", "job-1"]))).unwrap();
    assert_eq!(history[0]["EventType"], "ExecutionStarted");
    // `history export` gives what `replay_history` replays: today's code replays it, a change
    // to the steps does not.
    let exported: kiln::ExportedHistory =
        serde_json::from_str(&ok(&server.cli(&["history", "export", "job-1"]))).unwrap();
    assert_eq!((exported.instance_id.as_str(), exported.name.as_str()), ("job-1", "report_job"));
    kiln::replay_history(kiln_samples::report_jobs::report_job, &exported).unwrap();
    let changed = async |ctx: kiln::OrchestrationContext, _: serde_json::Value| -> Result<(), kiln::Failure> {
        ctx.call_activity::<_, ()>("render_report", &()).await
    };
    let mismatch = kiln::replay_history(changed, &exported).unwrap_err().to_string();
    assert!(mismatch.contains("TaskScheduled('generate_report')"), "{mismatch}");
    let approval = ok(&server.cli(&["start", "approval", "--input", r#"{"subject":"s","timeout_seconds":60}"#]));
    let approval = approval.trim();
    ok(&server.cli(&["raise", approval, "Approval", r#"{"approved":false,"by":"cli"}"#]));
    let waiting = ok(&server.cli(&[
        "start",
        "approval",
        "--input",
        r#"{"subject":"t","timeout_seconds":60}"#,
        "--id",
        "to-stop",
    ]));
    assert_eq!(waiting.trim(), "to-stop");
    ok(&server.cli(&["terminate", "to-stop", "--reason", "not needed"]));
    // `bulk`: a dry run lists what it selects; the operation follows its progress to the end.
    let input = r#"{"subject":"b","timeout_seconds":60}"#;
    assert_eq!(ok(&server.cli(&["start", "approval", "--input", input, "--id", "bulk-me"])).trim(), "bulk-me");
    let dry = ok(&server.cli(&["bulk", "terminate", "--name", "approval", "--dry-run"]));
    assert!(dry.starts_with("would terminate 1 instance(s)") && dry.contains("bulk-me\tapproval"), "{dry}");
    let totals = ok(&server.cli(&["bulk", "terminate", "--name", "approval", "--reason", "cli", "--wait"]));
    assert!(totals.contains("\"done\": 1"), "{totals}");
    // The operation asked for the termination; the instance's own turn carries it out.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stopped: Value = serde_json::from_str(&ok(&server.cli(&["status", "bulk-me"]))).unwrap();
        if stopped["runtimeStatus"] == "Terminated" {
            break;
        }
        assert!(Instant::now() < deadline, "{stopped}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!server.cli(&["bulk", "rewind", "--status", "Running"]).status.success());
    // `purge --dry-run` lists what a filter selects and deletes nothing.
    let dry = ok(&server.cli(&["purge", "--name", "report_job", "--status", "Completed", "--dry-run"]));
    assert!(dry.starts_with("would purge 1 instance(s)") && dry.contains("job-1\treport_job\tCompleted"), "{dry}");
    let none = ok(&server.cli(&["purge", "--finished-before", "2001-01-01T00:00:00Z", "--dry-run"]));
    assert!(none.starts_with("would purge 0 instance(s)"), "{none}");
    assert!(!server.cli(&["purge"]).status.success(), "a purge of everything needs a filter");
    assert_eq!(ok(&server.cli(&["purge", "job-1"])).trim(), "1");
    let missing = server.cli(&["status", "job-1"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.lines().count(), 1, "one-line error: {stderr}");
    assert!(stderr.starts_with("error: instance 'job-1' not found"), "{stderr}");
    let bad = server.cli(&["start", "nope"]);
    assert!(!bad.status.success());
    // `keys rotate`: a status URL handed out before still answers; new ones work too.
    let (_, before) = start_report(&server, 0);
    assert!(ok(&server.cli(&["keys", "rotate"])).contains("token secret rotated"));
    assert_eq!(poll(&before).0, 200);
    let (_, after) = start_report(&server, 0);
    assert_ne!(before.split("token=").nth(1), after.split("token=").nth(1));
    assert_eq!(poll(&after).0, 200);
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), (free_port(), free_port()));
    let (_, location) = start_report(&server, 0);
    poll(&location);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "kiln serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    // The database is released: a new server starts on it at once.
    let again = Server::start(dir.path(), (free_port(), free_port()));
    drop(again);
}

/// Runs `kiln serve` on all interfaces with `args` until it is ready, then stops it; returns
/// what it printed to stderr and the status of an anonymous start.
fn serve_on_all_interfaces(dir: &std::path::Path, args: &[&str]) -> (String, u16) {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--listen", &format!("0.0.0.0:{port}")])
        .args(["--management-listen", &format!("127.0.0.1:{}", free_port())])
        .args(args)
        .current_dir(dir)
        .env("KILN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let public = format!("http://127.0.0.1:{port}");
    common::wait_ready(&public);
    let start = agent()
        .post(format!("{public}/api/jobs/reports"))
        .header("content-type", "application/json")
        .send(r#"{"customer_id":"c-7","operation":"yearly","delay_seconds":0}"#)
        .unwrap()
        .status()
        .as_u16();
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&output.stderr).into_owned(), start)
}

#[test]
fn open_starters_on_a_public_address_are_warned_of_and_protected_ones_refuse_anonymous_callers() {
    let dir = tempfile::tempdir().unwrap();
    let (stderr, anonymous) = serve_on_all_interfaces(dir.path(), &[]);
    assert!(stderr.contains("WARNING: kiln listens on 0.0.0.0:"), "{stderr}");
    assert!(stderr.contains("/api/jobs/reports"), "the open starters are named: {stderr}");
    assert_eq!(anonymous, 202);

    let made = Command::new(env!("CARGO_BIN_EXE_kiln")).args(["keys", "new-api-key", "ops"]).output().unwrap();
    let made = String::from_utf8(made.stdout).unwrap();
    let line = made.lines().skip_while(|l| !l.starts_with("Add this line")).nth(1).unwrap().trim().to_owned();
    assert!(line.starts_with("ops sha256:") && !line.contains("kiln_"), "the line holds the hash, not the key: {made}");
    let (stderr, anonymous) =
        serve_on_all_interfaces(dir.path(), &["--starter-access", "api-key", "--api-keys", &line]);
    assert!(!stderr.contains("WARNING"), "{stderr}");
    assert_eq!(anonymous, 401);
}

/// Open long polls no longer hold a deploy: on SIGTERM every `Prefer: wait=60` poll is answered
/// at once (202 + Retry-After: the instance still runs; its client polls again, on any node),
/// `/readyz` turns 503, and the process exits in seconds. (Before: it waited out every poll,
/// 60 s with a single one open.)
#[test]
fn sigterm_answers_open_long_polls_at_once() {
    const POLLS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    // The report's activity runs an hour: after 2 s of grace its lease is handed back.
    let args = vec!["--shutdown-grace-seconds".to_owned(), "2".to_owned()];
    let mut server = Server::start_with(dir.path(), (free_port(), free_port()), args);
    let (_, location) = start_report(&server, 3_600);
    let pollers: Vec<_> = (0..POLLS)
        .map(|_| {
            let location = location.clone();
            std::thread::spawn(move || {
                let mut response = agent().get(&location).header("prefer", "wait=60").call().unwrap();
                let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_owned());
                let body = response.body_mut().read_to_string().unwrap_or_default();
                (response.status().as_u16(), retry_after, body)
            })
        })
        .collect();
    // Every poll is waiting (the server's own gauge says so) before the signal.
    let metrics = format!("{}/metrics", server.public);
    let deadline = Instant::now() + DEADLINE;
    let open_polls = || {
        let text = agent().get(&metrics).call().unwrap().body_mut().read_to_string().unwrap();
        text.lines().find_map(|l| l.strip_prefix("kiln_http_long_polls ")).and_then(|n| n.parse::<usize>().ok())
    };
    while open_polls() != Some(POLLS) {
        assert!(Instant::now() < deadline, "the long polls did not all open: {:?}", open_polls());
        std::thread::sleep(Duration::from_millis(50));
    }
    let signaled = Instant::now();
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    for poller in pollers {
        let (status, retry_after, body) = poller.join().unwrap();
        assert_eq!(status, 202, "{body}");
        assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok()), "{body}");
    }
    let answered = signaled.elapsed();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < signaled + DEADLINE, "kiln serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited = signaled.elapsed();
    assert!(status.success(), "exit status {status}");
    // (Bounds loose for two loaded cores; the point is seconds, not the polls' 60 s.) The exit
    // waits the grace out: the hour-long activity was running.
    assert!(answered < Duration::from_secs(15), "polls answered {answered:?} after SIGTERM");
    assert!(exited >= Duration::from_secs(2), "exited {exited:?}: before the activity's grace ran out");
    assert!(exited < Duration::from_secs(20), "exited {exited:?} after SIGTERM (polls answered in {answered:?})");
    eprintln!("{POLLS} long polls answered {answered:?} after SIGTERM; exited after {exited:?}");
}

#[test]
fn retention_naming_an_orchestration_the_app_lacks_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kiln.toml"), "[retention.orchestrations.reprot_job]\ncompleted = \"1d\"\n")
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--management-listen", &format!("127.0.0.1:{}", free_port())])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("retention names orchestration 'reprot_job', which is not registered"), "{stderr}");
    assert!(!stderr.contains("cannot open the store"), "{stderr}");
}
