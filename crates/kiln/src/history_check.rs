//! Replaying stored histories against the current code: the check a deploy runs before it
//! ships. Export production histories with `kiln history export ID > h.json`, and have the
//! application's tests replay them against today's build with [`replay_history`]; a change
//! that would break the instances in flight fails there, naming the first step it changed.

use crate::OrchestrationContext;
use crate::executor::Execution;
use crate::failure::Failure;
use crate::registry::erase;
use kiln_core::{EventKind, ExecutionOutcome, HistoryEvent, Payload, PayloadLimits, ReplayError, RuntimeStatus};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::future::Future;

/// One execution's history as `kiln history export` writes it (and the management API's
/// `GET …/instances/{id}/history` returns it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportedHistory {
    /// The instance id.
    pub instance_id: String,
    /// The orchestration name.
    pub name: String,
    /// The orchestration version the instance runs on.
    pub version: String,
    /// The execution (a continue-as-new starts the next one).
    pub execution: u64,
    /// The execution's events, in order.
    pub events: Vec<HistoryEvent>,
}

/// Why a stored history does not replay against the current code.
#[derive(Debug, thiserror::Error)]
pub enum ReplayMismatch {
    /// The code takes another step than the history records (or the history is inconsistent).
    #[error("{instance_id}: {source}")]
    Replay {
        /// The instance.
        instance_id: String,
        /// The first difference.
        source: ReplayError,
    },
    /// The code takes the recorded steps but ends differently.
    #[error("{instance_id}: the history ends {recorded}, but the code now ends {replayed}")]
    DifferentEnd {
        /// The instance.
        instance_id: String,
        /// How the history ends.
        recorded: String,
        /// How the replay ends.
        replayed: String,
    },
}

/// Replays `history` against `orchestration` (the current code of its orchestration) and
/// reports the first non-determinism: a step the code takes differently, a patch id reused, or
/// an execution that now ends differently (another status, output or continue-as-new input;
/// for a failure, another error type). A history that is still running must replay to the same
/// point, taking no step it does not record.
pub fn replay_history<I, O, F, Fut>(orchestration: F, history: &ExportedHistory) -> Result<(), ReplayMismatch>
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + 'static,
    F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, Failure>> + Send + 'static,
{
    let instance_id = history.instance_id.clone();
    let function = erase(orchestration, "orchestration input", "orchestration output");
    // Registered activity timeouts only change what new steps record: none here.
    let mut execution = Execution::new(
        &instance_id,
        &history.name,
        history.execution,
        function,
        PayloadLimits::default(),
        Default::default(),
    );
    // The events before the end; the end (and what arrived after it) is what the replay is
    // compared with.
    let end = history.events.iter().position(|e| ends_execution(&e.kind));
    let body = &history.events[..end.unwrap_or(history.events.len())];
    execution.replay(body).map_err(|source| ReplayMismatch::Replay { instance_id: instance_id.clone(), source })?;
    let recorded = end.map(|index| &history.events[index].kind);
    let replayed = execution.outcome();
    match (recorded, replayed) {
        (None, None) | (Some(EventKind::ExecutionTerminated { .. }), _) => Ok(()),
        (Some(recorded), Some(replayed)) if same_end(recorded, replayed) => Ok(()),
        (recorded, replayed) => Err(ReplayMismatch::DifferentEnd {
            instance_id,
            recorded: recorded.map_or_else(|| "still running".to_owned(), describe_recorded_end),
            replayed: replayed.map_or_else(|| "still running".to_owned(), describe_outcome),
        }),
    }
}

fn ends_execution(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::ExecutionCompleted { .. } | EventKind::ExecutionTerminated { .. } | EventKind::ContinueAsNew { .. }
    )
}

fn same_end(recorded: &EventKind, replayed: &ExecutionOutcome) -> bool {
    match (recorded, replayed) {
        (
            EventKind::ExecutionCompleted { orchestration_status: RuntimeStatus::Completed, result, .. },
            ExecutionOutcome::Completed(output),
        ) => result.as_ref().is_some_and(|result| same_json(result, output)),
        (
            EventKind::ExecutionCompleted { orchestration_status: RuntimeStatus::Failed, failure_details, .. },
            ExecutionOutcome::Failed(failure),
        ) => failure_details.as_ref().is_some_and(|recorded| recorded.error_type == failure.error_type),
        (EventKind::ContinueAsNew { input }, ExecutionOutcome::ContinuedAsNew { input: replayed, .. }) => {
            same_json(input, replayed)
        }
        _ => false,
    }
}

/// Equal as JSON values (the text may differ in spacing or key order).
fn same_json(a: &Payload, b: &Payload) -> bool {
    match (a.decode::<serde_json::Value>(), b.decode::<serde_json::Value>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn describe_recorded_end(kind: &EventKind) -> String {
    match kind {
        EventKind::ExecutionCompleted { orchestration_status: RuntimeStatus::Completed, result, .. } => {
            format!("completed with {}", result.as_ref().map_or("nothing", |r| r.as_str()))
        }
        EventKind::ExecutionCompleted { failure_details: Some(failure), .. } => format!("failed with {failure}"),
        EventKind::ContinueAsNew { input } => format!("continued as new with {}", input.as_str()),
        other => other.name().to_owned(),
    }
}

fn describe_outcome(outcome: &ExecutionOutcome) -> String {
    match outcome {
        ExecutionOutcome::Completed(output) => format!("completed with {}", output.as_str()),
        ExecutionOutcome::Failed(failure) => format!("failed with {failure}"),
        ExecutionOutcome::ContinuedAsNew { input, .. } => format!("continued as new with {}", input.as_str()),
    }
}
