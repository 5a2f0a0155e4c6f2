//! Report jobs: one activity that takes `delay_seconds` to generate a report. An operation it
//! does not know fails the job (validation deep in the workflow, after the `202`).

use kiln::{ActivityContext, Failure, KilnBuilder, OrchestrationContext};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

/// Orchestration name.
pub const ORCHESTRATION: &str = "report_job";
/// Longest accepted delay.
pub const MAX_DELAY_SECONDS: u64 = 3600;
/// The reports `generate_report` knows how to make; any other operation fails the job.
pub const OPERATIONS: &[&str] = &["daily", "weekly", "monthly", "quarterly", "yearly"];

/// A report request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportRequest {
    /// The customer the report is for.
    pub customer_id: String,
    /// Which report.
    pub operation: String,
    /// How long generating takes, 0–3600 s.
    pub delay_seconds: u64,
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

/// The orchestration: `{"status":"completed","instanceId","result":{customerId, operation}}`.
pub async fn report_job(ctx: OrchestrationContext, request: ReportRequest) -> Result<Value, Failure> {
    let report: Report = ctx.call_activity("generate_report", &request).await?;
    Ok(json!({"status": "completed", "instanceId": ctx.instance_id(), "result": report}))
}

/// Generates the report (sleeps `delay_seconds`).
pub async fn generate_report(_ctx: ActivityContext, request: ReportRequest) -> Result<Report, Failure> {
    if request.delay_seconds > MAX_DELAY_SECONDS {
        return Err(Failure::typed("ValidationFailed", format!("delay_seconds must be 0–{MAX_DELAY_SECONDS}")));
    }
    if !OPERATIONS.contains(&request.operation.as_str()) {
        let known = OPERATIONS.join(", ");
        return Err(Failure::typed(
            "UnsupportedOperation",
            format!("no report '{}' (known: {known})", request.operation),
        ));
    }
    tokio::time::sleep(Duration::from_secs(request.delay_seconds)).await;
    Ok(Report { customer_id: request.customer_id, operation: request.operation })
}

/// Registers the orchestration and its activity.
pub fn register(builder: KilnBuilder) -> KilnBuilder {
    builder.orchestration(ORCHESTRATION, report_job).activity("generate_report", generate_report)
}
