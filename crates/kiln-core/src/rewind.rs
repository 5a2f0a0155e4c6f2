//! Rewind: turning the history of a failed execution back into a running one.
//!
//! A rewind undoes the failures the code did not get past, and only those. A failure the code
//! took and then went on from — it caught it, retried it, or took any further step — stays:
//! replayed without it, the code would not take the steps history records after it. Which is
//! which comes from one replay of the failed history with the code's decisions traced
//! ([`DecisionTrace`]): a failure is undone if the code took no step after taking it, or never
//! took it (a sibling that failed while the code awaited something else, or after it had failed)
//! and did not drop its step and go on without it (the loser of a `select2` stays as it ended).
//!
//! Steps the failing turn took were never carried out (an ended execution dispatches only the
//! events it sent), so they are forgotten as if never taken — unless an event sent later in that
//! turn pins their sequence numbers; those are kept and carried out now.
//!
//! The rewritten history has two parts. Events up to the one whose poll took the code's last
//! remaining step replay as recorded. What reached the code after it — step results and external
//! events, in their order — and what is kept after the end for this (the failing batch's events
//! the code never saw, and step results that arrived while the instance was failed) is applied
//! anew after the `ExecutionRewound` marker, so the code may take new steps on it. (External
//! events raised while the instance was failed are not kept: as in Durable Functions, a finished
//! instance drops them.)

use crate::{Action, ActivityTimeouts, DecisionTrace, EventKind, HistoryEvent, Timestamp, TracedStep};
use std::collections::{BTreeMap, BTreeSet};

/// What a rewind changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewindPlan {
    /// The history that replays as recorded, ending in `ExecutionRewound`.
    pub history: Vec<HistoryEvent>,
    /// Results to apply anew after it, in their order.
    pub reapplied: Vec<HistoryEvent>,
    /// Steps to carry out again if they are still open after the reapplied results: activities
    /// whose failure was undone, and steps the failing turn kept but never carried out.
    pub redo: Vec<Action>,
    /// Sub-orchestrations whose failure was undone: each is rewound, or created again.
    pub failed_children: Vec<Action>,
}

/// A failed execution's history without its end (and the results kept after it): what a rewind
/// replays to trace the code's decisions.
pub fn rewind_body(history: &[HistoryEvent]) -> &[HistoryEvent] {
    match history.iter().rposition(|e| matches!(e.kind, EventKind::ExecutionCompleted { .. })) {
        Some(end) => &history[..end],
        None => history,
    }
}

/// Plans the rewind of a failed execution's history, given the decisions the code made when
/// [`rewind_body`] was replayed.
pub fn plan_rewind(
    history: &[HistoryEvent],
    trace: &DecisionTrace,
    now: Timestamp,
    reason: Option<String>,
) -> RewindPlan {
    let body = rewind_body(history);
    let kept_after_end = history.get(body.len() + 1..).unwrap_or_default();
    let scheduled: BTreeMap<u64, Action> = body.iter().filter_map(Action::from_event).map(|a| (a.id(), a)).collect();

    // The failing turn's steps, if the execution ended: forgotten above its last sent event,
    // kept (and carried out now) below it.
    let failing_turn = if body.len() < history.len() {
        body.iter().rposition(|e| matches!(e.kind, EventKind::OrchestratorStarted)).unwrap_or(0)
    } else {
        body.len()
    };
    let failing_turn_steps: Vec<&Action> = body[failing_turn..]
        .iter()
        .filter_map(|e| u64::try_from(e.event_id).ok())
        .filter_map(|s| scheduled.get(&s))
        .collect();
    let last_sent = failing_turn_steps.iter().filter(|a| matches!(a, Action::SendEvent { .. })).map(|a| a.id()).max();
    let (forgotten, never_carried_out): (BTreeSet<u64>, Vec<&Action>) = {
        let undispatched = failing_turn_steps.iter().filter(|a| !matches!(a, Action::SendEvent { .. }));
        let (below, above): (Vec<&Action>, Vec<&Action>) =
            undispatched.partition(|a| last_sent.is_some_and(|s| a.id() < s));
        (above.iter().map(|a| a.id()).collect(), below)
    };

    // The code's last remaining step: failures it took after it are undone.
    let remaining_steps = forgotten.first().map_or(trace.steps.len() as u64, |first| *first);
    let last = remaining_steps
        .checked_sub(1)
        .and_then(|step| trace.steps.get(usize::try_from(step).ok()?))
        .copied()
        .unwrap_or(TracedStep::default());
    // A failure the code never took is undone unless the code dropped its step and went on
    // without it (dropped as the code returned is not that).
    let undone = |step: &u64| match (trace.failures_taken.get(step), trace.dropped_steps.get(step)) {
        (Some(taken), _) => *taken > last.tick,
        (None, Some(dropped)) => *dropped > last.tick,
        (None, None) => true,
    };

    let mut plan =
        RewindPlan { history: Vec::new(), reapplied: Vec::new(), redo: Vec::new(), failed_children: Vec::new() };
    // Undone steps, once each (a step may have failed twice: a duplicate run kept after the end).
    let mut undone_steps = BTreeSet::new();
    // An activity done again gets a fresh schedule-to-close limit, from the rewind, and starts
    // from the last heartbeat details of the attempt that failed.
    let mut undo = |step: u64, failed: &EventKind, plan: &mut RewindPlan| {
        if !undone_steps.insert(step) {
            return;
        }
        match scheduled.get(&step) {
            Some(Action::ScheduleTask { id, name, input, attempt, timeouts, .. }) => {
                let heartbeat = match failed {
                    EventKind::TaskFailed { failure_details, .. } => failure_details.last_heartbeat_details.clone(),
                    _ => None,
                };
                plan.redo.push(Action::ScheduleTask {
                    id: *id,
                    name: name.clone(),
                    input: input.clone(),
                    attempt: *attempt,
                    timeouts: ActivityTimeouts { first_scheduled_at: None, ..*timeouts },
                    heartbeat,
                });
            }
            Some(action @ Action::CreateSubOrchestration { .. }) => plan.failed_children.push(action.clone()),
            _ => {}
        }
    };
    for (index, event) in body.iter().enumerate() {
        let position = index as u64 + 1;
        if u64::try_from(event.event_id).is_ok_and(|step| forgotten.contains(&step)) {
            continue;
        }
        match &event.kind {
            EventKind::TaskFailed { task_scheduled_id: step, .. }
            | EventKind::SubOrchestrationInstanceFailed { task_scheduled_id: step, .. }
                if undone(step) && scheduled.contains_key(step) =>
            {
                undo(*step, &event.kind, &mut plan);
            }
            kind if kind.delivers_to_code() && position > last.position => plan.reapplied.push(event.clone()),
            _ => plan.history.push(event.clone()),
        }
    }
    // What was kept after the end (step results, and events of the failing batch): failures
    // among them were never taken either.
    for event in kept_after_end.iter().filter(|e| e.kind.delivers_to_code()) {
        match &event.kind {
            EventKind::TaskFailed { task_scheduled_id: step, .. }
            | EventKind::SubOrchestrationInstanceFailed { task_scheduled_id: step, .. } => {
                if undone(step) {
                    undo(*step, &event.kind, &mut plan);
                }
            }
            _ => plan.reapplied.push(event.clone()),
        }
    }
    // Steps the failing turn kept but never carried out get their limits from the rewind too.
    plan.redo.extend(never_carried_out.into_iter().map(|action| match action.clone() {
        Action::ScheduleTask { id, name, input, attempt, timeouts, heartbeat } => Action::ScheduleTask {
            id,
            name,
            input,
            attempt,
            timeouts: ActivityTimeouts { first_scheduled_at: None, ..timeouts },
            heartbeat,
        },
        other => other,
    }));
    let redone_activities =
        plan.redo.iter().filter(|a| matches!(a, Action::ScheduleTask { .. })).map(Action::id).collect();
    plan.history.push(HistoryEvent::new(now, EventKind::ExecutionRewound { reason, redone_activities }));
    plan
}

#[cfg(test)]
mod tests;
