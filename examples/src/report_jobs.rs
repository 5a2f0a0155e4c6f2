//! Report jobs, the async HTTP polling example of the seed document: one activity that takes
//! `delay_seconds` to generate a report and echoes the customer and operation back.
//!
//! The orchestration and activity also answer to the seed's Durable Functions names,
//! [`SEED_ORCHESTRATION`] and [`SEED_ACTIVITY`], so a client written against that document can
//! start `report_job_orchestrator` through the management API.
//!
//! Failing example: reports are refused for closed accounts, so a customer id starting with
//! [`CLOSED_ACCOUNT_PREFIX`] (e.g. `closed-17`) is accepted with `202` and then fails the job
//! with `AccountClosed` — validation deep in the workflow, after the `202`.
//!
//! Limits, as the seed's "Production Considerations" ask: the activity reports its progress with
//! heartbeats, an attempt that stops reporting for [`HEARTBEAT_TIMEOUT`] or runs a minute past
//! its delay is failed with a `Timeout` and retried (up to [`ATTEMPTS`] attempts) from its last
//! reported progress; after a crash the same attempt runs again from there. Refusals are not
//! retried.

use kiln::{ActivityContext, ActivityOptions, Failure, KilnBuilder, OrchestrationContext, RetryPolicy};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Orchestration name.
pub const ORCHESTRATION: &str = "report_job";
/// Activity name.
pub const ACTIVITY: &str = "generate_report";
/// The seed document's name of the orchestration (an alias of [`ORCHESTRATION`]).
pub const SEED_ORCHESTRATION: &str = "report_job_orchestrator";
/// The seed document's name of the activity (an alias of [`ACTIVITY`]).
pub const SEED_ACTIVITY: &str = "generate_report_activity";
/// The operation of a request that names none.
pub const DEFAULT_OPERATION: &str = "rebuild-report";
/// The delay of a request that gives none, in seconds.
pub const DEFAULT_DELAY_SECONDS: u64 = 5;
/// Longest accepted delay.
pub const MAX_DELAY_SECONDS: u64 = 3600;
/// Customer ids that start with this belong to closed accounts: their reports fail.
pub const CLOSED_ACCOUNT_PREFIX: &str = "closed-";
/// An attempt that reports no progress for this long is failed (and retried).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an attempt may run beyond the requested delay.
pub const ATTEMPT_MARGIN: Duration = Duration::from_secs(60);
/// Attempts in all, the first included.
pub const ATTEMPTS: u32 = 3;
/// The failure of a request the activity refuses.
const VALIDATION_FAILED: &str = "ValidationFailed";
/// The failure of a report for a closed account.
const ACCOUNT_CLOSED: &str = "AccountClosed";

/// A report request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportRequest {
    /// The customer the report is for.
    pub customer_id: String,
    /// Which report (any name; echoed in the result).
    #[serde(default = "default_operation")]
    pub operation: String,
    /// How long generating takes, 0–3600 s.
    #[serde(default = "default_delay_seconds")]
    pub delay_seconds: u64,
}

fn default_operation() -> String {
    DEFAULT_OPERATION.to_owned()
}

fn default_delay_seconds() -> u64 {
    DEFAULT_DELAY_SECONDS
}

/// The generated report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The customer.
    pub customer_id: String,
    /// The operation.
    pub operation: String,
}

/// What a finished job returns, its fields in the seed document's order:
/// `{"status":"completed","instanceId":…,"result":{"customerId":…,"operation":…}}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReportJobOutput {
    /// Always `completed`.
    pub status: String,
    /// The job's instance id.
    pub instance_id: String,
    /// The report.
    pub result: Report,
}

/// The orchestration: calls the activity under its limits and wraps its report in a
/// [`ReportJobOutput`].
pub async fn report_job(ctx: OrchestrationContext, request: ReportRequest) -> Result<ReportJobOutput, Failure> {
    let delay = Duration::from_secs(request.delay_seconds.min(MAX_DELAY_SECONDS));
    let options =
        ActivityOptions::new().start_to_close(delay + ATTEMPT_MARGIN).heartbeat_timeout(HEARTBEAT_TIMEOUT).retry(
            RetryPolicy::new(ATTEMPTS, Duration::from_secs(5))
                .with_backoff(2.0)
                .with_non_retryable_error_types([VALIDATION_FAILED, ACCOUNT_CLOSED]),
        );
    let result: Report = ctx.call_activity_with_options(ACTIVITY, &request, options).await?;
    Ok(ReportJobOutput { status: "completed".to_owned(), instance_id: ctx.instance_id(), result })
}

/// Generates the report: `delay_seconds` of work, one second at a time, each reported with a
/// heartbeat so that a retry resumes where the last attempt got to. The management API starts
/// orchestrations without the starter's validation, so the delay's bound is checked again here:
/// an unchecked delay could hold an activity slot for days.
pub async fn generate_report(ctx: ActivityContext, request: ReportRequest) -> Result<Report, Failure> {
    if request.delay_seconds > MAX_DELAY_SECONDS {
        return Err(Failure::typed(VALIDATION_FAILED, format!("delay_seconds must be 0–{MAX_DELAY_SECONDS}")));
    }
    if request.customer_id.starts_with(CLOSED_ACCOUNT_PREFIX) {
        return Err(Failure::typed(
            ACCOUNT_CLOSED,
            format!("customer '{}' has a closed account: no reports are generated", request.customer_id),
        ));
    }
    let mut seconds_done: u64 = ctx.heartbeat_details().unwrap_or(0);
    while seconds_done < request.delay_seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        seconds_done += 1;
        ctx.heartbeat(&seconds_done)?;
    }
    Ok(Report { customer_id: request.customer_id, operation: request.operation })
}

/// Registers the orchestration and its activity, under the sample's and the seed's names.
pub fn register(builder: KilnBuilder) -> KilnBuilder {
    builder
        .orchestration(ORCHESTRATION, report_job)
        .orchestration(SEED_ORCHESTRATION, report_job)
        .activity(ACTIVITY, generate_report)
        .activity(SEED_ACTIVITY, generate_report)
}
