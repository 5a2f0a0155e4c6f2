//! Failure details: why an activity, sub-orchestration or orchestration failed.

use crate::Payload;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A failure as recorded in history (`FailureDetails` in the Durable Task protocol).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FailureDetails {
    /// A short machine-readable kind, e.g. `ActivityFailed`, `Panic`, `NonDeterminism`.
    pub error_type: String,
    /// The human-readable message.
    pub error_message: String,
    /// Optional extra detail (a cause chain, the serde path of a bad input, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// For a failed activity attempt that heartbeated: its last heartbeat details (a retry's
    /// next attempt starts from them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_details: Option<Payload>,
}

impl FailureDetails {
    /// A failure with a type and message and no details.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> FailureDetails {
        FailureDetails {
            error_type: error_type.into(),
            error_message: message.into(),
            details: None,
            last_heartbeat_details: None,
        }
    }
}

impl fmt::Display for FailureDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.error_message)
    }
}

/// Well-known `error_type` values written by the engine itself.
pub mod error_types {
    /// User code panicked.
    pub const PANIC: &str = "Panic";
    /// Replay did not match the recorded history.
    pub const NON_DETERMINISM: &str = "NonDeterminism";
    /// The stored history is inconsistent.
    pub const CORRUPTED_HISTORY: &str = "CorruptedHistory";
    /// Input or output did not (de)serialize into the function's types.
    pub const SERIALIZATION: &str = "SerializationError";
    /// A payload exceeded its size limit.
    pub const PAYLOAD_TOO_LARGE: &str = "PayloadTooLarge";
    /// The activity or orchestration is not registered on this worker.
    pub const NOT_REGISTERED: &str = "NotRegistered";
    /// A work item kept failing to be processed and was given up on.
    pub const POISON: &str = "PoisonMessage";
    /// An activity attempt ran past its start-to-close limit, or went longer than its heartbeat
    /// timeout without a heartbeat. Retried like any failure.
    pub const TIMEOUT: &str = "Timeout";
    /// An activity call ran past its schedule-to-close limit. Never retried.
    pub const SCHEDULE_TO_CLOSE_TIMEOUT: &str = "ScheduleToCloseTimeout";
    /// An activity call's options were out of bounds (e.g. a timeout of zero).
    pub const INVALID_ACTIVITY_OPTIONS: &str = "InvalidActivityOptions";
    /// A patch id was empty or too long.
    pub const INVALID_PATCH_ID: &str = "InvalidPatchId";
    /// A retry policy's total timeout elapsed.
    pub const RETRY_TIMEOUT: &str = "RetryTimeout";
    /// A sub-orchestration was terminated.
    pub const TERMINATED: &str = "Terminated";
    /// A sub-orchestration could not be created because its id was in use.
    pub const ALREADY_EXISTS: &str = "AlreadyExists";
    /// The orchestration awaited something that is not a durable step (e.g. `tokio::time::sleep`),
    /// so nothing could ever wake it.
    pub const NON_DURABLE_AWAIT: &str = "NonDurableAwait";
}
