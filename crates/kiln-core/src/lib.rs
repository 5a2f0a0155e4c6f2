//! The sans-IO core of Kiln.
//!
//! Everything here is deterministic data and logic: no clock, no randomness, no I/O, no async
//! runtime. The runtime (`kiln`) and the stores (`kiln-sqlite`, …) build on these types.
//!
//! # Layout
//! - [`time`]: timestamps and their text forms.
//! - [`status`]: runtime statuses, named as in Durable Functions.
//! - [`ids`]: instance id rules.
//! - [`payload`]: JSON payloads and their size limits.
//! - [`failure`]: failure details.
//! - [`timeouts`]: activity timeouts and their bounds.
//! - [`labels`]: the business ids a starter attaches to an instance.
//! - [`correlation`]: the correlation id and W3C trace context an instance carries.
//! - [`history`]: history events (the Durable Task vocabulary).
//! - [`action`]: what a turn asks the runtime to do.
//! - [`waiting`]: what an instance waits on.
//! - [`replay`]: the deterministic replay state machine.
//! - [`rewind`]: rewriting a failed history so its failed steps run again.

pub mod action;
pub mod correlation;
pub mod failure;
pub mod history;
pub mod ids;
pub mod labels;
pub mod payload;
pub mod replay;
pub mod rewind;
pub mod status;
pub mod time;
pub mod timeouts;
pub mod waiting;

pub use action::{Action, ExecutionOutcome};
pub use correlation::{
    Correlation, InstanceContext, InvalidCorrelationId, InvalidTraceParent, MAX_CORRELATION_ID_LEN, TraceContext,
    validate_correlation_id,
};
pub use failure::{FailureDetails, error_types};
pub use history::{EventKind, HistoryEvent, ParentInstance, features};
pub use ids::{
    InvalidEventName, InvalidInstanceId, MAX_EVENT_NAME_LEN, MAX_INSTANCE_ID_LEN, validate_event_name,
    validate_instance_id,
};
pub use labels::{
    InvalidLabel, LabelFilter, Labels, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS, is_layout_control,
};
pub use payload::{Payload, PayloadLimits, PayloadTooLarge};
pub use replay::{Applied, Completion, DecisionTrace, Outcome, ReplayError, ReplayState, Slot, TracedStep};
pub use rewind::{RewindPlan, plan_rewind, rewind_body};
pub use status::{RuntimeStatus, UnknownStatus};
pub use time::Timestamp;
pub use timeouts::{ActivityTimeouts, InvalidTimeout, MAX_ACTIVITY_TIMEOUT, timeout_millis};
pub use waiting::WaitingOn;
