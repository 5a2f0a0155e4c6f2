//! Runs each sample end to end on a temporary database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln::{ClientError, Failure, Kiln, KilnClient, OrchestrationContext, RuntimeStatus};
use kiln_samples::approval::{self, ApprovalDecision, ApprovalRequest};
use kiln_samples::call_for_speakers::{self, Submission};
use kiln_samples::report_jobs::{self, ReportRequest};
use serde_json::{Value, json};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);

async fn start() -> (Kiln, KilnClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kiln = kiln_samples::register_all(Kiln::builder()).sqlite(dir.path().join("kiln.db")).start().await.unwrap();
    let client = kiln.client();
    (kiln, client, dir)
}

fn output(record: &kiln::InstanceRecord) -> Value {
    assert_eq!(record.status, RuntimeStatus::Completed, "{:?}", record.failure);
    serde_json::from_str(record.output.as_ref().unwrap().as_str()).unwrap()
}

fn submission(abstract_text: &str) -> Submission {
    Submission {
        speaker: "Ada".into(),
        email: "ada@example.com".into(),
        title: "Durable Rust".into(),
        abstract_text: abstract_text.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_for_speakers_shows_every_stage_and_decides() {
    let (kiln, client, _dir) = start().await;
    let long = "word ".repeat(40);
    let id = client.start(call_for_speakers::ORCHESTRATION, &submission(&long)).await.unwrap();
    let mut stages = Vec::new();
    let done = client
        .wait_until(&id, DEADLINE, |record| {
            if let Some(status) = &record.custom_status {
                let status: Value = serde_json::from_str(status.as_str()).unwrap();
                if stages.last() != Some(&status) {
                    stages.push(status);
                }
            }
            record.status.is_terminal()
        })
        .await
        .unwrap()
        .unwrap();
    let decision = output(&done);
    assert_eq!(decision["decision"], "accepted");
    assert_eq!(decision["notification"], "sent 'accepted' to ada@example.com");
    assert_eq!(stages.last().unwrap(), &json!({"stage": "done", "progress": 4, "of": 4}));
    for stage in &stages {
        assert_eq!(stage["of"], 4, "every stage says how many there are: {stage}");
    }
    let history = client.history(&id).await.unwrap();
    let activities: Vec<String> = history
        .iter()
        .filter_map(|e| match &e.kind {
            kiln::EventKind::TaskScheduled { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(activities, ["validate_submission", "screen_content", "review", "notify_speaker"]);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_for_speakers_rejects_and_fails_clearly() {
    let (kiln, client, _dir) = start().await;
    let spam = client.start(call_for_speakers::ORCHESTRATION, &submission("buy spam now")).await.unwrap();
    let decision = output(&client.wait_for_completion(&spam, DEADLINE).await.unwrap());
    assert_eq!(decision["decision"], "rejected");
    assert_eq!(decision["reason"], "the abstract did not pass content screening");
    let mut incomplete = submission("text");
    incomplete.email = String::new();
    let invalid = client.start(call_for_speakers::ORCHESTRATION, &incomplete).await.unwrap();
    let failed = client.wait_for_completion(&invalid, DEADLINE).await.unwrap();
    assert_eq!(failed.status, RuntimeStatus::Failed);
    let failure = failed.failure.unwrap();
    assert_eq!(
        (failure.error_type.as_str(), failure.error_message.as_str()),
        ("ValidationFailed", "missing fields: email")
    );
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_job_returns_the_report() {
    let (kiln, client, _dir) = start().await;
    let request = ReportRequest { customer_id: "c-1".into(), operation: "monthly".into(), delay_seconds: 1 };
    let id = client.start(report_jobs::ORCHESTRATION, &request).await.unwrap();
    let waiting = client.wait_until(&id, DEADLINE, |r| !r.waiting_on.is_empty()).await.unwrap().unwrap();
    let kiln::WaitingOn::Activity { name, start_to_close_ms, heartbeat_timeout_ms, .. } = &waiting.waiting_on[0] else {
        panic!("waits on the activity: {:?}", waiting.waiting_on)
    };
    assert_eq!(name, "generate_report");
    // The sample's limits: the delay plus a minute per attempt, and a heartbeat every 30 s.
    assert_eq!((*start_to_close_ms, *heartbeat_timeout_ms), (Some(61_000), Some(30_000)));
    let done = client.wait_for_completion(&id, DEADLINE).await.unwrap();
    assert_eq!(
        output(&done),
        json!({"status": "completed", "instanceId": id, "result": {"customerId": "c-1", "operation": "monthly"}})
    );
    let closed = ReportRequest { customer_id: "closed-1".into(), operation: "monthly".into(), delay_seconds: 0 };
    let id = client.start(report_jobs::ORCHESTRATION, &closed).await.unwrap();
    let failed = client.wait_for_completion(&id, DEADLINE).await.unwrap();
    assert_eq!(failed.failure.unwrap().error_type, "AccountClosed");
    let history = client.history(&id).await.unwrap();
    let attempts = history.iter().filter(|e| matches!(e.kind, kiln::EventKind::TaskScheduled { .. })).count();
    assert_eq!(attempts, 1, "a refusal is not retried");
    kiln.shutdown().await;
}

/// The seed document's names start the same job, and its input may leave out what has defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_job_answers_to_the_seed_names_and_defaults() {
    let (kiln, client, _dir) = start().await;
    let input = json!({"customer_id": "cust-123", "delay_seconds": 0});
    let id = client.start(report_jobs::SEED_ORCHESTRATION, &input).await.unwrap();
    let done = client.wait_for_completion(&id, DEADLINE).await.unwrap();
    assert_eq!(
        output(&done),
        json!({"status": "completed", "instanceId": id, "result": {"customerId": "cust-123", "operation": "rebuild-report"}})
    );
    kiln.shutdown().await;

    // An orchestration written against the seed calls the activity by the seed's name.
    async fn seed_caller(ctx: OrchestrationContext, input: Value) -> Result<Value, Failure> {
        ctx.call_activity(report_jobs::SEED_ACTIVITY, &input).await
    }
    let dir = tempfile::tempdir().unwrap();
    let kiln = report_jobs::register(Kiln::builder())
        .orchestration("seed_caller", seed_caller)
        .sqlite(dir.path().join("kiln.db"))
        .start()
        .await
        .unwrap();
    let client = kiln.client();
    let id = client.start("seed_caller", &json!({"customer_id": "cust-9", "delay_seconds": 0})).await.unwrap();
    let done = client.wait_for_completion(&id, DEADLINE).await.unwrap();
    assert_eq!(output(&done), json!({"customerId": "cust-9", "operation": "rebuild-report"}));
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_takes_the_event_or_times_out() {
    let (kiln, client, _dir) = start().await;
    let approved = client
        .start(approval::ORCHESTRATION, &ApprovalRequest { subject: "laptop".into(), timeout_seconds: 60 })
        .await
        .unwrap();
    let timed_out = client
        .start(approval::ORCHESTRATION, &ApprovalRequest { subject: "yacht".into(), timeout_seconds: 1 })
        .await
        .unwrap();
    client
        .raise_event(&approved, approval::EVENT, &ApprovalDecision { approved: true, by: "grace".into() })
        .await
        .unwrap();
    assert_eq!(
        output(&client.wait_for_completion(&approved, DEADLINE).await.unwrap()),
        json!({"outcome": "approved", "by": "grace"})
    );
    assert_eq!(
        output(&client.wait_for_completion(&timed_out, DEADLINE).await.unwrap()),
        json!({"outcome": "timed_out", "by": null})
    );
    let late =
        client.raise_event(&timed_out, approval::EVENT, &ApprovalDecision { approved: true, by: "late".into() }).await;
    assert!(matches!(late, Err(ClientError::Finished { .. })));
    kiln.shutdown().await;
}

#[test]
fn sample_programs_run() {
    let dir = tempfile::tempdir().unwrap();
    for (program, expected) in [
        (env!("CARGO_BIN_EXE_report_jobs"), "Completed: {"),
        (env!("CARGO_BIN_EXE_call_for_speakers"), "\"decision\":\"accepted\""),
        (env!("CARGO_BIN_EXE_approval"), "\"outcome\":\"timed_out\""),
    ] {
        let db = dir.path().join(format!("{}.db", program.rsplit('/').next().unwrap()));
        let out = std::process::Command::new(program).arg(&db).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{program} failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(expected), "{program} printed: {stdout}");
    }
}
