//! History events: the durable record an orchestration is replayed from.
//!
//! Names follow the Durable Task protocol (`ExecutionStarted`, `TaskScheduled`, `TaskCompleted`,
//! …) so that a Durable Task front end can later read the same histories. Scheduling events carry
//! an `EventId` equal to the step's sequence number; completions point back at it through
//! `TaskScheduledId` (for timers, `TimerId`).

use crate::{ActivityTimeouts, Correlation, FailureDetails, Labels, Payload, RuntimeStatus, Timestamp};
use serde::{Deserialize, Serialize};

/// One entry of an instance's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryEvent {
    /// The step's sequence number for scheduling events, `-1` for all others.
    pub event_id: i64,
    /// When the event was recorded.
    pub timestamp: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Replay behaviours an execution was started under. Each is recorded in the execution's
/// `ExecutionStarted`, so that a history written by an older Kiln keeps replaying the way it was
/// recorded after an upgrade changes the behaviour (as Temporal's SDK flags do).
pub mod features {
    /// `call_activity_with_retry` schedules its first attempt when it is called (before: at its
    /// first poll), and a retried call whose output does not decode is not retried.
    pub const EAGER_RETRY: u32 = 1;
    /// The behaviours new executions get.
    pub const CURRENT: u32 = EAGER_RETRY;
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

impl HistoryEvent {
    /// An event that is not a scheduling event (`EventId = -1`).
    pub fn new(timestamp: Timestamp, kind: EventKind) -> HistoryEvent {
        HistoryEvent { event_id: -1, timestamp, kind }
    }
}

/// The parent of a sub-orchestration, recorded in the child's `ExecutionStarted`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ParentInstance {
    /// The parent's instance id.
    pub instance_id: String,
    /// The parent's execution (generation) that created the child.
    pub execution: u64,
    /// The parent's sequence number of the `SubOrchestrationInstanceCreated` step.
    pub task_scheduled_id: u64,
}

/// What a history event records. Serialized with an `EventType` tag and PascalCase fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "EventType", rename_all_fields = "PascalCase")]
pub enum EventKind {
    /// A turn began; its timestamp is the orchestration's replay-safe current time.
    OrchestratorStarted,
    /// The execution began with this input.
    ExecutionStarted {
        /// Orchestration name.
        name: String,
        /// Orchestration version the instance runs on.
        version: String,
        /// Input payload.
        input: Payload,
        /// Set when this is a sub-orchestration.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentInstance>,
        /// The replay behaviours the execution runs under ([`features`]); 0 in histories written
        /// before there were any.
        #[serde(default, skip_serializing_if = "is_zero")]
        features: u32,
        /// The business ids the starter attached (carried on by continue-as-new and to
        /// sub-orchestrations).
        #[serde(default, skip_serializing_if = "Labels::is_empty")]
        labels: Labels,
        /// The correlation id and trace context of the request that started the instance; none
        /// in histories written before there were any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        correlation: Option<Correlation>,
    },
    /// The execution ended.
    ExecutionCompleted {
        /// `Completed` or `Failed`.
        orchestration_status: RuntimeStatus,
        /// The output, when completed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Payload>,
        /// Why it failed, when failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure_details: Option<FailureDetails>,
    },
    /// A client asked to terminate the instance.
    ExecutionTerminated {
        /// The client's reason.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The orchestration scheduled an activity.
    TaskScheduled {
        /// Activity name.
        name: String,
        /// Activity input.
        input: Payload,
        /// Attempt number under the call's retry policy, from 1.
        attempt: u32,
        /// The call's timeouts; none in histories written before there were any.
        #[serde(default, skip_serializing_if = "ActivityTimeouts::is_empty")]
        timeouts: ActivityTimeouts,
    },
    /// An activity returned.
    TaskCompleted {
        /// The `EventId` of the `TaskScheduled` step.
        task_scheduled_id: u64,
        /// The activity's output.
        result: Payload,
    },
    /// An activity failed.
    TaskFailed {
        /// The `EventId` of the `TaskScheduled` step.
        task_scheduled_id: u64,
        /// Why.
        failure_details: FailureDetails,
    },
    /// The orchestration started a sub-orchestration.
    SubOrchestrationInstanceCreated {
        /// The child's orchestration name.
        name: String,
        /// The child's version.
        version: String,
        /// The child's instance id.
        instance_id: String,
        /// The child's input.
        input: Payload,
    },
    /// A sub-orchestration completed.
    SubOrchestrationInstanceCompleted {
        /// The `EventId` of the `SubOrchestrationInstanceCreated` step.
        task_scheduled_id: u64,
        /// The child's output.
        result: Payload,
    },
    /// A sub-orchestration failed (or was terminated).
    SubOrchestrationInstanceFailed {
        /// The `EventId` of the `SubOrchestrationInstanceCreated` step.
        task_scheduled_id: u64,
        /// Why.
        failure_details: FailureDetails,
    },
    /// The orchestration created a durable timer.
    TimerCreated {
        /// When it fires.
        fire_at: Timestamp,
    },
    /// A durable timer fired.
    TimerFired {
        /// The `EventId` of the `TimerCreated` step.
        timer_id: u64,
        /// When it was due.
        fire_at: Timestamp,
    },
    /// The orchestration sent an event to another instance.
    EventSent {
        /// Target instance.
        instance_id: String,
        /// Event name.
        name: String,
        /// Event data.
        input: Payload,
    },
    /// An external event arrived.
    EventRaised {
        /// Event name.
        name: String,
        /// Event data.
        input: Payload,
    },
    /// The execution ended by restarting with a new input and an empty history.
    ContinueAsNew {
        /// The input of the next execution.
        input: Payload,
    },
    /// A client suspended the instance.
    ExecutionSuspended {
        /// The client's reason.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A client resumed the instance.
    ExecutionResumed {
        /// The client's reason.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The orchestration took the new branch of a patch ([`ReplayState::patched`]) for the
    /// first time in this execution. Not a step: it takes no sequence number.
    ///
    /// [`ReplayState::patched`]: crate::ReplayState::patched
    Patched {
        /// The patch's id.
        patch_id: String,
        /// The sequence number the code's next step had when it asked: where in the code the
        /// patch is.
        before_step: u64,
    },
    /// A client rewound a failed instance: its failed steps run again.
    ExecutionRewound {
        /// The client's reason.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The activity steps the rewind runs again (in the event the rewind records; empty in
        /// the client's request): their calls' limits run again from the rewind.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        redone_activities: Vec<u64>,
    },
}

impl EventKind {
    /// The Durable Task name of this event type, e.g. `"TaskScheduled"`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::OrchestratorStarted => "OrchestratorStarted",
            EventKind::ExecutionStarted { .. } => "ExecutionStarted",
            EventKind::ExecutionCompleted { .. } => "ExecutionCompleted",
            EventKind::ExecutionTerminated { .. } => "ExecutionTerminated",
            EventKind::TaskScheduled { .. } => "TaskScheduled",
            EventKind::TaskCompleted { .. } => "TaskCompleted",
            EventKind::TaskFailed { .. } => "TaskFailed",
            EventKind::SubOrchestrationInstanceCreated { .. } => "SubOrchestrationInstanceCreated",
            EventKind::SubOrchestrationInstanceCompleted { .. } => "SubOrchestrationInstanceCompleted",
            EventKind::SubOrchestrationInstanceFailed { .. } => "SubOrchestrationInstanceFailed",
            EventKind::TimerCreated { .. } => "TimerCreated",
            EventKind::TimerFired { .. } => "TimerFired",
            EventKind::EventSent { .. } => "EventSent",
            EventKind::EventRaised { .. } => "EventRaised",
            EventKind::ContinueAsNew { .. } => "ContinueAsNew",
            EventKind::ExecutionSuspended { .. } => "ExecutionSuspended",
            EventKind::ExecutionResumed { .. } => "ExecutionResumed",
            EventKind::ExecutionRewound { .. } => "ExecutionRewound",
            EventKind::Patched { .. } => "Patched",
        }
    }

    /// True for the result of a step: an activity's, a timer's or a sub-orchestration's.
    pub fn is_step_result(&self) -> bool {
        matches!(
            self,
            EventKind::TaskCompleted { .. }
                | EventKind::TaskFailed { .. }
                | EventKind::TimerFired { .. }
                | EventKind::SubOrchestrationInstanceCompleted { .. }
                | EventKind::SubOrchestrationInstanceFailed { .. }
        )
    }

    /// True for what hands the code something: a step's result or an external event.
    pub fn delivers_to_code(&self) -> bool {
        self.is_step_result() || matches!(self, EventKind::EventRaised { .. })
    }

    /// True for messages that a suspended instance still processes (resume and terminate).
    pub fn is_control(&self) -> bool {
        matches!(self, EventKind::ExecutionResumed { .. } | EventKind::ExecutionTerminated { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_durable_task_names() {
        let event = HistoryEvent {
            event_id: 3,
            timestamp: Timestamp(5),
            kind: EventKind::TaskScheduled {
                name: "greet".into(),
                input: Payload::null(),
                attempt: 1,
                timeouts: ActivityTimeouts::default(),
            },
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"EventId":3,"Timestamp":5,"EventType":"TaskScheduled","Name":"greet","Input":"null","Attempt":1}"#
        );
        assert_eq!(serde_json::from_str::<HistoryEvent>(&json).unwrap(), event);
    }
}
