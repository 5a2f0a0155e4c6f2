//! Actions: what an orchestration turn asks the runtime to do.

use crate::{ActivityTimeouts, EventKind, FailureDetails, HistoryEvent, Payload, Timestamp};

/// A step the orchestration code took that the runtime must carry out and record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run an activity.
    ScheduleTask {
        /// Step sequence number (the `TaskScheduled` event id).
        id: u64,
        /// Activity name.
        name: String,
        /// Activity input.
        input: Payload,
        /// Attempt number under the call's retry policy, from 1.
        attempt: u32,
        /// The call's timeouts.
        timeouts: ActivityTimeouts,
        /// The previous attempt's last heartbeat details, handed to this one (not recorded in
        /// `TaskScheduled`: the previous attempt's `TaskFailed` holds them).
        heartbeat: Option<Payload>,
    },
    /// Start a durable timer.
    CreateTimer {
        /// Step sequence number.
        id: u64,
        /// When it fires.
        fire_at: Timestamp,
    },
    /// Start a sub-orchestration.
    CreateSubOrchestration {
        /// Step sequence number.
        id: u64,
        /// The child's orchestration name.
        name: String,
        /// The child's version ("" = the default).
        version: String,
        /// The child's instance id.
        instance_id: String,
        /// The child's input.
        input: Payload,
    },
    /// Send an event to another instance.
    SendEvent {
        /// Step sequence number.
        id: u64,
        /// Target instance.
        instance_id: String,
        /// Event name.
        name: String,
        /// Event data.
        input: Payload,
    },
}

impl Action {
    /// The step sequence number.
    pub fn id(&self) -> u64 {
        match self {
            Action::ScheduleTask { id, .. }
            | Action::CreateTimer { id, .. }
            | Action::CreateSubOrchestration { id, .. }
            | Action::SendEvent { id, .. } => *id,
        }
    }

    /// A short description for error messages, e.g. `activity 'screen_content'`.
    pub fn describe(&self) -> String {
        match self {
            Action::ScheduleTask { name, .. } => format!("call_activity('{name}')"),
            Action::CreateTimer { .. } => "create_timer".to_owned(),
            Action::CreateSubOrchestration { name, .. } => {
                format!("call_sub_orchestration('{name}')")
            }
            Action::SendEvent { name, .. } => format!("send_event('{name}')"),
        }
    }

    /// The history event that records this action.
    pub fn to_event(&self, timestamp: Timestamp) -> HistoryEvent {
        let kind = match self.clone() {
            Action::ScheduleTask { name, input, attempt, timeouts, .. } => {
                EventKind::TaskScheduled { name, input, attempt, timeouts }
            }
            Action::CreateTimer { fire_at, .. } => EventKind::TimerCreated { fire_at },
            Action::CreateSubOrchestration { name, version, instance_id, input, .. } => {
                EventKind::SubOrchestrationInstanceCreated { name, version, instance_id, input }
            }
            Action::SendEvent { instance_id, name, input, .. } => EventKind::EventSent { instance_id, name, input },
        };
        HistoryEvent { event_id: self.id() as i64, timestamp, kind }
    }

    /// The action a recorded scheduling event stands for (the inverse of [`Action::to_event`]).
    pub fn from_event(event: &HistoryEvent) -> Option<Action> {
        let id = u64::try_from(event.event_id).ok()?;
        Some(match event.kind.clone() {
            EventKind::TaskScheduled { name, input, attempt, timeouts } => {
                Action::ScheduleTask { id, name, input, attempt, timeouts, heartbeat: None }
            }
            EventKind::TimerCreated { fire_at } => Action::CreateTimer { id, fire_at },
            EventKind::SubOrchestrationInstanceCreated { name, version, instance_id, input } => {
                Action::CreateSubOrchestration { id, name, version, instance_id, input }
            }
            EventKind::EventSent { instance_id, name, input } => Action::SendEvent { id, instance_id, name, input },
            _ => return None,
        })
    }

    /// True when the recorded scheduling event is the one this action would write.
    pub fn matches(&self, recorded: &EventKind) -> bool {
        match (self, recorded) {
            (Action::ScheduleTask { name, .. }, EventKind::TaskScheduled { name: n, .. }) => name == n,
            (Action::CreateTimer { .. }, EventKind::TimerCreated { .. }) => true,
            (
                Action::CreateSubOrchestration { name, instance_id, .. },
                EventKind::SubOrchestrationInstanceCreated { name: n, instance_id: i, .. },
            ) => name == n && instance_id == i,
            (Action::SendEvent { name, instance_id, .. }, EventKind::EventSent { name: n, instance_id: i, .. }) => {
                name == n && instance_id == i
            }
            _ => false,
        }
    }
}

/// How an execution ended in this turn, if it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecutionOutcome {
    /// The orchestration returned a value.
    Completed(Payload),
    /// The orchestration failed.
    Failed(FailureDetails),
    /// The orchestration asked to restart with a new input.
    ContinuedAsNew {
        /// Input of the next execution.
        input: Payload,
        /// Keep external events that no one consumed.
        preserve_unprocessed_events: bool,
    },
}
