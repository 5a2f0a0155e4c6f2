use super::*;
use crate::{FailureDetails, Payload, RuntimeStatus};
use std::collections::BTreeMap;

/// A history written out event by event: `at(n)` is the position (1-based) of the n-th event.
struct Written(Vec<HistoryEvent>);

impl Written {
    fn new() -> Written {
        Written(Vec::new())
    }

    fn push(mut self, event_id: i64, kind: EventKind) -> Written {
        self.0.push(HistoryEvent { event_id, timestamp: Timestamp(1), kind });
        self
    }

    fn turn(self) -> Written {
        self.push(-1, EventKind::OrchestratorStarted)
    }

    fn start(self) -> Written {
        self.turn().push(-1, crate::replay::tests::started_kind())
    }

    fn schedule(self, step: i64, name: &str) -> Written {
        self.push(step, crate::replay::tests::scheduled_kind(name, 1))
    }

    fn send(self, step: i64) -> Written {
        self.push(step, EventKind::EventSent { instance_id: "x".into(), name: "e".into(), input: Payload::null() })
    }

    fn fail(self, step: u64) -> Written {
        self.push(
            -1,
            EventKind::TaskFailed { task_scheduled_id: step, failure_details: FailureDetails::new("E", "boom") },
        )
    }

    fn complete(self, step: u64) -> Written {
        self.push(-1, EventKind::TaskCompleted { task_scheduled_id: step, result: Payload::null() })
    }

    fn end(self) -> Written {
        self.push(
            -1,
            EventKind::ExecutionCompleted {
                orchestration_status: RuntimeStatus::Failed,
                result: None,
                failure_details: Some(FailureDetails::new("E", "boom")),
            },
        )
    }
}

fn trace(steps: &[(u64, u64)], failures_taken: &[(u64, u64)]) -> DecisionTrace {
    DecisionTrace {
        steps: steps.iter().map(|&(tick, position)| TracedStep { tick, position }).collect(),
        failures_taken: failures_taken.iter().copied().collect(),
        dropped_steps: BTreeMap::new(),
    }
}

fn names(actions: &[Action]) -> Vec<String> {
    actions.iter().map(Action::describe).collect()
}

fn kinds(events: &[HistoryEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.name()).collect()
}

#[test]
fn a_failure_the_code_went_on_from_stays_and_the_last_one_is_undone() {
    // a fails, the code catches it and calls b (step 1), which fails the execution.
    let history = Written::new().start().schedule(0, "a").turn().fail(0).schedule(1, "b").turn().fail(1).end().0;
    let plan = plan_rewind(&history, &trace(&[(1, 2), (3, 5)], &[(0, 2), (1, 4)]), Timestamp(9), None);
    assert_eq!(names(&plan.redo), ["call_activity('b')"]);
    assert!(plan.history.contains(&history[4]), "a's failure stays: the code took b after it");
    assert!(!plan.history.contains(&history[7]));
    assert_eq!(plan.history.last().map(|e| e.kind.name()), Some("ExecutionRewound"));
    assert!(plan.reapplied.is_empty());
}

#[test]
fn a_failure_is_judged_by_when_the_code_took_it_not_where_it_is_in_history() {
    // a and b run in parallel; a fails first but the code awaits b, calls c, and only then a.
    let history = Written::new()
        .start()
        .schedule(0, "a")
        .schedule(1, "b")
        .turn()
        .fail(0)
        .turn()
        .complete(1)
        .schedule(2, "c")
        .turn()
        .complete(2)
        .end()
        .0;
    let plan = plan_rewind(&history, &trace(&[(1, 2), (2, 2), (3, 8)], &[(0, 4)]), Timestamp(9), None);
    assert_eq!(names(&plan.redo), ["call_activity('a')"]);
    assert_eq!(kinds(&plan.reapplied), ["TaskCompleted"], "c's result came after the code's last step");
    assert_eq!(
        kinds(&plan.history),
        [
            "OrchestratorStarted",
            "ExecutionStarted",
            "TaskScheduled",
            "TaskScheduled",
            "OrchestratorStarted",
            "OrchestratorStarted",
            "TaskCompleted",
            "TaskScheduled",
            "OrchestratorStarted",
            "ExecutionRewound"
        ]
    );
}

#[test]
fn steps_the_failing_turn_never_carried_out_are_forgotten() {
    // a fails; the code calls "cleanup" without awaiting it and fails in the same poll.
    let history = Written::new().start().schedule(0, "a").turn().fail(0).schedule(1, "cleanup").end().0;
    let plan = plan_rewind(&history, &trace(&[(1, 2), (3, 5)], &[(0, 2)]), Timestamp(9), None);
    assert_eq!(names(&plan.redo), ["call_activity('a')"]);
    assert!(plan.history.iter().all(|e| e.event_id != 1), "cleanup was never run: as if never taken");
}

#[test]
fn an_event_sent_by_the_failing_turn_pins_its_earlier_steps() {
    let history = Written::new().start().schedule(0, "a").turn().fail(0).schedule(1, "cleanup").send(2).end().0;
    let plan = plan_rewind(&history, &trace(&[(1, 2), (3, 5), (4, 5)], &[(0, 2)]), Timestamp(9), None);
    assert_eq!(names(&plan.redo), ["call_activity('cleanup')"], "kept: carried out if the code goes on");
    assert!(plan.history.contains(&history[4]), "the code sent an event after a's failure: it stays");
}

#[test]
fn events_raised_after_the_code_s_last_step_are_applied_anew_in_their_order() {
    let raised = EventKind::EventRaised { name: "cancel".into(), input: Payload::null() };
    let history =
        Written::new().start().schedule(0, "x").schedule(1, "a").turn().complete(0).push(-1, raised).fail(1).end().0;
    let plan = plan_rewind(&history, &trace(&[(1, 2), (2, 2)], &[(1, 4)]), Timestamp(9), None);
    assert_eq!(kinds(&plan.reapplied), ["TaskCompleted", "EventRaised"]);
    assert_eq!(names(&plan.redo), ["call_activity('a')"]);
}

#[test]
fn a_step_that_failed_twice_is_redone_once() {
    let history = Written::new().start().schedule(0, "a").turn().fail(0).end().fail(0).0;
    let plan = plan_rewind(&history, &trace(&[(1, 2)], &[(0, 2)]), Timestamp(9), None);
    assert_eq!(names(&plan.redo), ["call_activity('a')"]);
}

#[test]
fn results_kept_after_the_end_are_applied_anew_and_late_failures_undone() {
    // slow and quick run in parallel; quick fails the execution; slow completes and another
    // sibling fails while the instance is failed.
    let history = Written::new()
        .start()
        .schedule(0, "slow")
        .schedule(1, "quick")
        .schedule(2, "other")
        .turn()
        .fail(1)
        .end()
        .complete(0)
        .fail(2)
        .0;
    let plan = plan_rewind(&history, &trace(&[(1, 2), (2, 2), (3, 2)], &[(1, 4)]), Timestamp(9), None);
    assert_eq!(names(&plan.redo), ["call_activity('quick')", "call_activity('other')"]);
    assert_eq!(kinds(&plan.reapplied), ["TaskCompleted"]);
    assert_eq!(rewind_body(&history).len(), 7);
}

#[test]
fn a_retried_failure_stays() {
    let retried = |attempt| crate::replay::tests::scheduled_kind("flaky", attempt);
    let history = Written::new()
        .start()
        .push(0, retried(1))
        .turn()
        .fail(0)
        .push(1, EventKind::TimerCreated { fire_at: Timestamp(5) })
        .turn()
        .push(-1, EventKind::TimerFired { timer_id: 1, fire_at: Timestamp(5) })
        .push(2, retried(2))
        .turn()
        .fail(2)
        .end()
        .0;
    let plan = plan_rewind(&history, &trace(&[(1, 2), (3, 5), (4, 8)], &[(0, 2), (2, 5)]), Timestamp(9), None);
    assert_eq!(
        plan.redo,
        vec![Action::ScheduleTask {
            id: 2,
            name: "flaky".into(),
            input: Payload::null(),
            attempt: 2,
            timeouts: Default::default(),
            heartbeat: None
        }]
    );
    assert!(plan.history.contains(&history[4]), "the first attempt's failure stays");
}

#[test]
fn a_step_the_code_dropped_is_not_run_again() {
    // select2(loser, b): b wins; the loser fails later (in the body and after the end); c fails.
    let history = Written::new()
        .start()
        .schedule(0, "loser")
        .schedule(1, "b")
        .turn()
        .complete(1)
        .schedule(2, "c")
        .turn()
        .fail(0)
        .fail(2)
        .end()
        .fail(0)
        .0;
    // Dropped at tick 3 (before c was taken at 4), c's failure taken at 5.
    let mut traced = trace(&[(1, 2), (2, 2), (4, 6)], &[(2, 5)]);
    traced.dropped_steps.insert(0, 3);
    let plan = plan_rewind(&history, &traced, Timestamp(9), None);
    assert_eq!(names(&plan.redo), ["call_activity('c')"]);
    // Dropped only as the code returned (after its last step): run again.
    traced.dropped_steps.insert(0, 6);
    let plan = plan_rewind(&history, &traced, Timestamp(9), None);
    assert_eq!(names(&plan.redo), ["call_activity('loser')", "call_activity('c')"]);
}
