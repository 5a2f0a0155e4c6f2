//! [`Failure`]: the error type orchestrations and activities return, and the error an
//! orchestration sees when a step it awaited failed.

use kiln_core::{FailureDetails, error_types};
use std::fmt;

/// Why user code (or a step it awaited) failed. Converts from strings and serde errors, so `?`
/// works in orchestrations and activities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    details: FailureDetails,
}

impl Failure {
    /// A failure with error type `Error` and this message.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure::typed("Error", message)
    }

    /// A failure with an explicit error type (e.g. `"ValidationFailed"`).
    pub fn typed(error_type: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure { details: FailureDetails::new(error_type, message) }
    }

    /// A failure from any error, keeping its message and its source chain as details.
    pub fn from_error(err: &(dyn std::error::Error + 'static)) -> Failure {
        let mut chain = Vec::new();
        let mut source = err.source();
        while let Some(cause) = source {
            chain.push(cause.to_string());
            source = cause.source();
        }
        let mut failure = Failure::new(err.to_string());
        if !chain.is_empty() {
            failure.details.details = Some(chain.join(": "));
        }
        failure
    }

    /// Adds detail text.
    pub fn with_details(mut self, details: impl Into<String>) -> Failure {
        self.details.details = Some(details.into());
        self
    }

    /// The error type.
    pub fn error_type(&self) -> &str {
        &self.details.error_type
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.details.error_message
    }

    /// The recorded form.
    pub fn details(&self) -> &FailureDetails {
        &self.details
    }

    /// Converts into the recorded form.
    pub fn into_details(self) -> FailureDetails {
        self.details
    }

    pub(crate) fn serialization(what: &str, err: &serde_json::Error) -> Failure {
        Failure::typed(error_types::SERIALIZATION, format!("{what}: {err}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.details)
    }
}

impl std::error::Error for Failure {}

impl From<FailureDetails> for Failure {
    fn from(details: FailureDetails) -> Failure {
        Failure { details }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::new(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::new(message)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(err: serde_json::Error) -> Failure {
        Failure::typed(error_types::SERIALIZATION, err.to_string())
    }
}
