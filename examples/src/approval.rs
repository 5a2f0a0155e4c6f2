//! Approval with a timeout: wait for the external event `Approval` or a durable timer,
//! whichever comes first.

use kiln::{Either, Failure, KilnBuilder, OrchestrationContext, select2};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// Orchestration name.
pub const ORCHESTRATION: &str = "approval";
/// Name of the event that carries the decision.
pub const EVENT: &str = "Approval";

/// What needs approving.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalRequest {
    /// What is asked for.
    pub subject: String,
    /// How long to wait for a decision.
    pub timeout_seconds: u64,
}

/// The decision an approver sends as the `Approval` event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalDecision {
    /// Approved or not.
    pub approved: bool,
    /// Who decided.
    pub by: String,
}

/// The outcome.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalOutcome {
    /// `approved`, `rejected` or `timed_out`.
    pub outcome: String,
    /// Who decided, unless it timed out.
    pub by: Option<String>,
}

/// The orchestration.
pub async fn approval(ctx: OrchestrationContext, request: ApprovalRequest) -> Result<ApprovalOutcome, Failure> {
    ctx.set_custom_status(&json!({"stage": "awaiting approval", "subject": request.subject}));
    let decision = ctx.wait_for_event::<ApprovalDecision>(EVENT);
    let timeout = ctx.sleep(Duration::from_secs(request.timeout_seconds));
    Ok(match select2(decision, timeout).await {
        Either::Left(decision) => {
            let decision = decision?;
            let outcome = if decision.approved { "approved" } else { "rejected" };
            ApprovalOutcome { outcome: outcome.to_owned(), by: Some(decision.by) }
        }
        Either::Right(timer) => {
            timer?;
            ApprovalOutcome { outcome: "timed_out".to_owned(), by: None }
        }
    })
}

/// Registers the orchestration.
pub fn register(builder: KilnBuilder) -> KilnBuilder {
    builder.orchestration(ORCHESTRATION, approval)
}
