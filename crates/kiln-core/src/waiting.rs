//! "Waiting on": what an instance is blocked on, so a user can see why it is not moving.

use crate::Timestamp;
use serde::{Deserialize, Serialize};

/// One thing a running instance waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum WaitingOn {
    /// An activity that has not finished.
    Activity {
        /// Activity name.
        name: String,
        /// Attempt number under its retry policy.
        attempt: u32,
        /// Step sequence number.
        task_id: u64,
        /// When the whole call (every attempt) must be done: its schedule-to-close limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<Timestamp>,
        /// How long one attempt may run, in milliseconds (the call's own start-to-close limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_to_close_ms: Option<u64>,
        /// How long an attempt may go without a heartbeat, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heartbeat_timeout_ms: Option<u64>,
    },
    /// A durable timer.
    Timer {
        /// When it fires.
        fire_at: Timestamp,
        /// Step sequence number.
        timer_id: u64,
    },
    /// A sub-orchestration.
    SubOrchestration {
        /// Child orchestration name.
        name: String,
        /// Child instance id.
        instance_id: String,
    },
    /// An external event.
    Event {
        /// Event name.
        name: String,
    },
}
