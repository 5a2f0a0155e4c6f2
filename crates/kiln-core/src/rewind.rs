//! Rewind: turning the history of a failed execution back into a running one.
//!
//! A rewind removes the final `ExecutionCompleted` and every failure that the orchestration did
//! not retry (a failed attempt that a later attempt of the same activity follows is kept, so
//! replay stays deterministic). The steps whose failures were removed are open again: their
//! activities run again and failed sub-orchestrations are rewound in turn.

use crate::{EventKind, HistoryEvent, Payload, Timestamp};
use std::collections::{HashMap, HashSet};

/// An activity that must run again after a rewind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RerunActivity {
    /// Step sequence number.
    pub step: u64,
    /// Activity name.
    pub name: String,
    /// Activity input.
    pub input: Payload,
    /// Attempt number.
    pub attempt: u32,
}

/// What a rewind changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewindPlan {
    /// The rewritten history, ending in `ExecutionRewound`.
    pub history: Vec<HistoryEvent>,
    /// Activities to dispatch again.
    pub rerun_activities: Vec<RerunActivity>,
    /// Failed sub-orchestrations to rewind.
    pub rewind_children: Vec<String>,
}

/// Plans the rewind of a failed execution's history.
pub fn plan_rewind(history: &[HistoryEvent], now: Timestamp, reason: Option<String>) -> RewindPlan {
    let mut scheduled: HashMap<u64, &EventKind> = HashMap::new();
    for event in history {
        if let (Ok(step), EventKind::TaskScheduled { .. } | EventKind::SubOrchestrationInstanceCreated { .. }) =
            (u64::try_from(event.event_id), &event.kind)
        {
            scheduled.insert(step, &event.kind);
        }
    }
    // (name, attempt) of every activity attempt, to tell retried failures from final ones.
    let attempts: HashSet<(&str, u32)> = scheduled
        .values()
        .filter_map(|k| match k {
            EventKind::TaskScheduled { name, attempt, .. } => Some((name.as_str(), *attempt)),
            _ => None,
        })
        .collect();

    let mut plan = RewindPlan { history: Vec::new(), rerun_activities: Vec::new(), rewind_children: Vec::new() };
    for event in history {
        match &event.kind {
            EventKind::ExecutionCompleted { .. } => continue,
            EventKind::TaskFailed { task_scheduled_id, .. } => {
                if let Some(EventKind::TaskScheduled { name, input, attempt }) = scheduled.get(task_scheduled_id)
                    && !attempts.contains(&(name.as_str(), attempt + 1))
                {
                    plan.rerun_activities.push(RerunActivity {
                        step: *task_scheduled_id,
                        name: name.clone(),
                        input: input.clone(),
                        attempt: *attempt,
                    });
                    continue;
                }
            }
            EventKind::SubOrchestrationInstanceFailed { task_scheduled_id, .. } => {
                if let Some(EventKind::SubOrchestrationInstanceCreated { instance_id, .. }) =
                    scheduled.get(task_scheduled_id)
                {
                    plan.rewind_children.push(instance_id.clone());
                    continue;
                }
            }
            _ => {}
        }
        plan.history.push(event.clone());
    }
    plan.history.push(HistoryEvent::new(now, EventKind::ExecutionRewound { reason }));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FailureDetails, RuntimeStatus};

    fn ev(id: i64, kind: EventKind) -> HistoryEvent {
        HistoryEvent { event_id: id, timestamp: Timestamp(1), kind }
    }

    fn scheduled(name: &str, attempt: u32) -> EventKind {
        EventKind::TaskScheduled { name: name.into(), input: Payload::null(), attempt }
    }

    fn failed(step: u64) -> EventKind {
        EventKind::TaskFailed { task_scheduled_id: step, failure_details: FailureDetails::new("E", "boom") }
    }

    #[test]
    fn removes_only_final_failures_and_the_completion() {
        let history = vec![
            ev(-1, EventKind::OrchestratorStarted),
            ev(0, scheduled("flaky", 1)),
            ev(-1, failed(0)),
            ev(1, EventKind::TimerCreated { fire_at: Timestamp(5) }),
            ev(-1, EventKind::TimerFired { timer_id: 1, fire_at: Timestamp(5) }),
            ev(2, scheduled("flaky", 2)),
            ev(-1, failed(2)),
            ev(
                -1,
                EventKind::ExecutionCompleted {
                    orchestration_status: RuntimeStatus::Failed,
                    result: None,
                    failure_details: Some(FailureDetails::new("E", "boom")),
                },
            ),
        ];
        let plan = plan_rewind(&history, Timestamp(9), Some("retry".into()));
        assert_eq!(plan.rerun_activities.len(), 1);
        assert_eq!(plan.rerun_activities[0].step, 2);
        assert_eq!(plan.history.len(), 7);
        assert!(plan.history.contains(&history[2]), "the retried failure stays");
        assert!(matches!(plan.history.last().map(|e| &e.kind), Some(EventKind::ExecutionRewound { .. })));
    }
}
