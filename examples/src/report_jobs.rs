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

use kiln::{ActivityContext, Failure, KilnBuilder, OrchestrationContext};
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

/// The orchestration: calls the activity and wraps its report in a [`ReportJobOutput`].
pub async fn report_job(ctx: OrchestrationContext, request: ReportRequest) -> Result<ReportJobOutput, Failure> {
    let result: Report = ctx.call_activity(ACTIVITY, &request).await?;
    Ok(ReportJobOutput { status: "completed".to_owned(), instance_id: ctx.instance_id(), result })
}

/// Generates the report (sleeps `delay_seconds`). The management API starts orchestrations
/// without the starter's validation, so the delay's bound is checked again here: an unchecked
/// delay could hold an activity slot for days.
pub async fn generate_report(_ctx: ActivityContext, request: ReportRequest) -> Result<Report, Failure> {
    if request.delay_seconds > MAX_DELAY_SECONDS {
        return Err(Failure::typed("ValidationFailed", format!("delay_seconds must be 0–{MAX_DELAY_SECONDS}")));
    }
    if request.customer_id.starts_with(CLOSED_ACCOUNT_PREFIX) {
        return Err(Failure::typed(
            "AccountClosed",
            format!("customer '{}' has a closed account: no reports are generated", request.customer_id),
        ));
    }
    tokio::time::sleep(Duration::from_secs(request.delay_seconds)).await;
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
