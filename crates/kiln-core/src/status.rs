//! Runtime statuses of an orchestration instance, named as in Durable Functions.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where an instance is in its life. Names and numeric codes match Durable Functions'
/// `OrchestrationRuntimeStatus`, so they can cross the wire unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuntimeStatus {
    /// The orchestration has started (or resumed) executing.
    Running,
    /// The orchestration returned a value.
    Completed,
    /// The orchestration restarted itself with a new history (transient).
    ContinuedAsNew,
    /// The orchestration failed; its failure details say why.
    Failed,
    /// Present for Durable Functions compatibility; Kiln reports cancellation as `Terminated`.
    Canceled,
    /// The instance was terminated by a client.
    Terminated,
    /// The instance was accepted but has not run its first turn yet.
    Pending,
    /// The instance is paused: it keeps receiving messages but does not process them.
    Suspended,
}

impl RuntimeStatus {
    /// Every status, in Durable Functions' numeric order.
    pub const ALL: [RuntimeStatus; 8] = [
        RuntimeStatus::Running,
        RuntimeStatus::Completed,
        RuntimeStatus::ContinuedAsNew,
        RuntimeStatus::Failed,
        RuntimeStatus::Canceled,
        RuntimeStatus::Terminated,
        RuntimeStatus::Pending,
        RuntimeStatus::Suspended,
    ];

    /// True once the instance can no longer change on its own.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RuntimeStatus::Completed | RuntimeStatus::Failed | RuntimeStatus::Canceled | RuntimeStatus::Terminated
        )
    }

    /// Durable Functions' numeric code, used as the stored representation.
    pub fn code(self) -> i64 {
        match self {
            RuntimeStatus::Running => 0,
            RuntimeStatus::Completed => 1,
            RuntimeStatus::ContinuedAsNew => 2,
            RuntimeStatus::Failed => 3,
            RuntimeStatus::Canceled => 4,
            RuntimeStatus::Terminated => 5,
            RuntimeStatus::Pending => 6,
            RuntimeStatus::Suspended => 7,
        }
    }

    /// The status for a stored numeric code.
    pub fn from_code(code: i64) -> Option<RuntimeStatus> {
        RuntimeStatus::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The name used on the wire (`"Running"`, `"Completed"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeStatus::Running => "Running",
            RuntimeStatus::Completed => "Completed",
            RuntimeStatus::ContinuedAsNew => "ContinuedAsNew",
            RuntimeStatus::Failed => "Failed",
            RuntimeStatus::Canceled => "Canceled",
            RuntimeStatus::Terminated => "Terminated",
            RuntimeStatus::Pending => "Pending",
            RuntimeStatus::Suspended => "Suspended",
        }
    }
}

impl fmt::Display for RuntimeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not the name of a runtime status.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown runtime status '{0}' (expected one of Running, Completed, ContinuedAsNew, Failed, Canceled, Terminated, Pending, Suspended)"
)]
pub struct UnknownStatus(pub String);

impl FromStr for RuntimeStatus {
    type Err = UnknownStatus;

    /// Parses a status name case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RuntimeStatus::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for status in RuntimeStatus::ALL {
            assert_eq!(RuntimeStatus::from_code(status.code()), Some(status));
            assert_eq!(status.as_str().to_lowercase().parse::<RuntimeStatus>().ok(), Some(status));
        }
        assert!("Sleeping".parse::<RuntimeStatus>().is_err());
    }
}
