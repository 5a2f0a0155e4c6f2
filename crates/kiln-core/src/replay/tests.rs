//! Replay state machine tests driven by hand-written histories. The "code" is simulated by
//! calling the state's scheduling methods where an orchestration would.

use super::*;
use crate::{FailureDetails, Payload, Timestamp};

fn ev(id: i64, kind: EventKind) -> HistoryEvent {
    HistoryEvent { event_id: id, timestamp: Timestamp(1_000), kind }
}

fn started() -> HistoryEvent {
    ev(-1, started_kind())
}

/// The `ExecutionStarted` of a test orchestration "o" with a null input (shared with the rewind tests).
pub(crate) fn started_kind() -> EventKind {
    EventKind::ExecutionStarted {
        name: "o".into(),
        version: String::new(),
        input: Payload::null(),
        parent: None,
        features: crate::features::CURRENT,
        labels: Default::default(),
        correlation: None,
    }
}

fn scheduled(step: i64, name: &str) -> HistoryEvent {
    ev(step, scheduled_kind(name, 1))
}

/// The `TaskScheduled` of attempt `attempt` of activity `name`, with a null input and no
/// timeouts (shared with the rewind tests).
pub(crate) fn scheduled_kind(name: &str, attempt: u32) -> EventKind {
    EventKind::TaskScheduled { name: name.into(), input: Payload::null(), attempt, timeouts: Default::default() }
}

fn completed(step: u64, result: &str) -> HistoryEvent {
    ev(-1, EventKind::TaskCompleted { task_scheduled_id: step, result: Payload::from_json(result).unwrap() })
}

#[test]
fn fresh_run_emits_new_actions() {
    let mut state = ReplayState::new("i", 0);
    assert_eq!(state.apply(&started(), true).unwrap(), Applied::Start { input: Payload::null() });
    let step = state.schedule_activity("a", Payload::null(), 1, Default::default(), None);
    assert_eq!(step, 0);
    let actions = state.take_new_actions();
    assert_eq!(actions.len(), 1);
    assert!(matches!(&actions[0], Action::ScheduleTask { name, .. } if name == "a"));
    assert_eq!(
        state.waiting_on(),
        vec![WaitingOn::Activity {
            name: "a".into(),
            attempt: 1,
            task_id: 0,
            deadline: None,
            start_to_close_ms: None,
            heartbeat_timeout_ms: None
        }]
    );
}

#[test]
fn partial_history_replays_without_new_actions_then_continues() {
    let mut state = ReplayState::new("i", 0);
    state.begin_replay();
    state.apply(&started(), false).unwrap();
    state.schedule_activity("a", Payload::null(), 1, Default::default(), None);
    state.apply(&scheduled(0, "a"), false).unwrap();
    assert_eq!(state.apply(&completed(0, "1"), false).unwrap(), Applied::Poll);
    assert_eq!(state.take(Slot::Step(0)).unwrap().outcome, Outcome::Completed(Payload::from_json("1").unwrap()));
    state.schedule_activity("b", Payload::null(), 1, Default::default(), None);
    state.apply(&scheduled(1, "b"), false).unwrap();
    state.end_replay().unwrap();
    assert!(state.take_new_actions().is_empty(), "replayed steps are not new");
    assert_eq!(state.apply(&completed(1, "2"), true).unwrap(), Applied::Poll);
    state.schedule_activity("c", Payload::null(), 1, Default::default(), None);
    assert_eq!(state.take_new_actions().len(), 1);
}

#[test]
fn completions_out_of_order_carry_history_positions() {
    let mut state = ReplayState::new("i", 0);
    state.begin_replay();
    state.apply(&started(), false).unwrap();
    state.schedule_activity("a", Payload::null(), 1, Default::default(), None);
    state.schedule_activity("b", Payload::null(), 1, Default::default(), None);
    state.apply(&scheduled(0, "a"), false).unwrap();
    state.apply(&scheduled(1, "b"), false).unwrap();
    state.apply(&completed(1, "\"b\""), false).unwrap();
    state.apply(&completed(0, "\"a\""), false).unwrap();
    let a = state.position_of(Slot::Step(0)).unwrap();
    let b = state.position_of(Slot::Step(1)).unwrap();
    assert!(b < a, "b completed first in history");
}

#[test]
fn mismatched_step_is_non_determinism_naming_both_sides() {
    let mut state = ReplayState::new("i", 0);
    state.begin_replay();
    state.apply(&started(), false).unwrap();
    state.schedule_activity("review", Payload::null(), 1, Default::default(), None);
    let err = state.apply(&scheduled(0, "screen_content"), false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "non-determinism at step 0: history has TaskScheduled('screen_content') but the orchestration called call_activity('review')"
    );
}

#[test]
fn missing_step_is_non_determinism() {
    let mut state = ReplayState::new("i", 0);
    state.begin_replay();
    state.apply(&started(), false).unwrap();
    assert!(matches!(state.apply(&scheduled(0, "a"), false), Err(ReplayError::NonDeterminism { .. })));
}

#[test]
fn extra_step_is_non_determinism_at_end_of_replay() {
    let mut state = ReplayState::new("i", 0);
    state.begin_replay();
    state.apply(&started(), false).unwrap();
    state.create_timer(Timestamp(5));
    let err = state.end_replay().unwrap_err();
    assert!(err.to_string().contains("history has no further step but the orchestration called create_timer"));
}

#[test]
fn corrupted_histories_are_reported() {
    let mut state = ReplayState::new("i", 0);
    state.begin_replay();
    state.apply(&started(), false).unwrap();
    assert!(matches!(state.apply(&completed(7, "1"), false), Err(ReplayError::Corrupted(_))));
    assert!(matches!(state.apply(&started(), false), Err(ReplayError::Corrupted(_))));
    let scheduled_as_message = scheduled(0, "a");
    assert!(matches!(state.apply(&scheduled_as_message, true), Err(ReplayError::Corrupted(_))));
}

#[test]
fn duplicate_new_completion_is_ignored() {
    let mut state = ReplayState::new("i", 0);
    state.apply(&started(), true).unwrap();
    state.schedule_activity("a", Payload::null(), 1, Default::default(), None);
    assert_eq!(state.apply(&completed(0, "1"), true).unwrap(), Applied::Poll);
    assert_eq!(state.apply(&completed(0, "1"), true).unwrap(), Applied::Duplicate);
}

#[test]
fn events_raised_before_waiting_are_buffered_in_order() {
    let mut state = ReplayState::new("i", 0);
    state.apply(&started(), true).unwrap();
    for n in ["1", "2"] {
        let raised = ev(-1, EventKind::EventRaised { name: "E".into(), input: Payload::from_json(n).unwrap() });
        assert_eq!(state.apply(&raised, true).unwrap(), Applied::Nothing);
    }
    let first = state.wait_for_event("E");
    let second = state.wait_for_event("E");
    assert_eq!(state.take(first).unwrap().outcome, Outcome::Completed(Payload::from_json("1").unwrap()));
    assert_eq!(state.take(second).unwrap().outcome, Outcome::Completed(Payload::from_json("2").unwrap()));
    let third = state.wait_for_event("E");
    assert!(state.take(third).is_none());
    assert_eq!(state.waiting_on(), vec![WaitingOn::Event { name: "E".into() }]);
}

#[test]
fn sub_orchestrations_get_stable_ids_and_failures() {
    let mut state = ReplayState::new("parent", 2);
    state.apply(&started(), true).unwrap();
    let step = state.schedule_sub_orchestration("child", "", None, Payload::null());
    let actions = state.take_new_actions();
    assert!(matches!(&actions[0], Action::CreateSubOrchestration { instance_id, .. } if instance_id == "parent:2:0"));
    assert_eq!(state.open_sub_orchestrations(), vec!["parent:2:0".to_owned()]);
    let failed = ev(
        -1,
        EventKind::SubOrchestrationInstanceFailed {
            task_scheduled_id: step,
            failure_details: FailureDetails::new("E", "child broke"),
        },
    );
    assert_eq!(state.apply(&failed, true).unwrap(), Applied::Poll);
    assert!(matches!(state.take(Slot::Step(step)).unwrap().outcome, Outcome::Failed(_)));
}

#[test]
fn replay_time_follows_orchestrator_started() {
    let mut state = ReplayState::new("i", 0);
    state.begin_replay();
    state.apply(&HistoryEvent::new(Timestamp(42), EventKind::OrchestratorStarted), false).unwrap();
    assert_eq!(state.current_time(), Timestamp(42));
    assert!(state.is_replaying());
    let seed = state.next_uuid_seed();
    assert_eq!(seed, "i_0_42_1");
}

fn raised(name: &str, input: &str) -> HistoryEvent {
    ev(-1, EventKind::EventRaised { name: name.into(), input: Payload::from_json(input).unwrap() })
}

#[test]
fn an_abandoned_event_wait_stops_waiting_and_the_next_wait_gets_the_event() {
    let mut state = ReplayState::new("i", 0);
    state.apply(&started(), true).unwrap();
    let dead = state.wait_for_event("approval");
    state.abandon_event_wait(dead);
    assert!(state.waiting_on().is_empty(), "{:?}", state.waiting_on());
    let live = state.wait_for_event("approval");
    assert_eq!(state.apply(&raised("approval", "1"), true).unwrap(), Applied::Poll);
    assert_eq!(state.take(live).unwrap().outcome, Outcome::Completed(Payload::from_json("1").unwrap()));
    assert!(state.take(dead).is_none());
}

#[test]
fn an_event_handed_to_a_wait_that_is_then_abandoned_is_buffered_again_in_arrival_order() {
    let mut state = ReplayState::new("i", 0);
    state.apply(&started(), true).unwrap();
    let losing = state.wait_for_event("e");
    state.apply(&raised("e", "1"), true).unwrap();
    state.apply(&raised("e", "2"), true).unwrap();
    state.abandon_event_wait(losing);
    assert_eq!(state.unconsumed_events().len(), 2);
    for expected in ["1", "2"] {
        let next = state.wait_for_event("e");
        assert_eq!(state.take(next).unwrap().outcome, Outcome::Completed(Payload::from_json(expected).unwrap()));
    }
}

#[test]
fn an_abandoned_wait_that_took_a_buffered_event_puts_it_back() {
    let mut state = ReplayState::new("i", 0);
    state.apply(&started(), true).unwrap();
    state.apply(&raised("e", "1"), true).unwrap();
    state.apply(&raised("e", "2"), true).unwrap();
    let losing = state.wait_for_event("e");
    state.abandon_event_wait(losing);
    let next = state.wait_for_event("e");
    assert_eq!(state.take(next).unwrap().outcome, Outcome::Completed(Payload::from_json("1").unwrap()));
}

#[test]
fn an_abandoned_wait_hands_its_event_to_the_next_live_wait_in_order() {
    let mut state = ReplayState::new("i", 0);
    state.apply(&started(), true).unwrap();
    let first = state.wait_for_event("x");
    let second = state.wait_for_event("x");
    state.apply(&raised("x", "1"), true).unwrap();
    state.abandon_event_wait(first);
    assert!(state.take_handed_over(), "the code must be polled again");
    assert_eq!(state.take(second).unwrap().outcome, Outcome::Completed(Payload::from_json("1").unwrap()));
    let third = state.wait_for_event("x");
    state.apply(&raised("x", "2"), true).unwrap();
    assert_eq!(state.take(third).unwrap().outcome, Outcome::Completed(Payload::from_json("2").unwrap()));
}

#[test]
fn a_result_resolves_only_an_open_step_of_its_own_kind() {
    let mut state = ReplayState::new("i", 0);
    state.apply(&started(), true).unwrap();
    let timer = state.create_timer(Timestamp(5_000));
    // An activity's result for step 0 (a timer here) is not this run's: ignored.
    assert_eq!(state.apply(&completed(timer, "1"), true).unwrap(), Applied::Duplicate);
    assert!(state.take(Slot::Step(timer)).is_none());
    let fired = ev(-1, EventKind::TimerFired { timer_id: timer, fire_at: Timestamp(5_000) });
    assert_eq!(state.apply(&fired, true).unwrap(), Applied::Poll);
}

#[test]
fn a_recorded_result_of_another_kind_still_replays_as_recorded() {
    let mut state = ReplayState::new("i", 0);
    state.begin_replay();
    state.apply(&started(), false).unwrap();
    let timer = state.create_timer(Timestamp(5_000));
    state.apply(&ev(timer as i64, EventKind::TimerCreated { fire_at: Timestamp(5_000) }), false).unwrap();
    assert_eq!(state.apply(&completed(timer, "null"), false).unwrap(), Applied::Poll);
}

fn patched(patch_id: &str, before_step: u64) -> HistoryEvent {
    ev(-1, EventKind::Patched { patch_id: patch_id.into(), before_step })
}

#[test]
fn a_live_execution_takes_a_patch_and_records_it_once() {
    let mut state = ReplayState::new("i", 0);
    state.apply(&started(), true).unwrap();
    assert!(state.patched("p"));
    assert!(state.patched("p"), "the same answer for the rest of the execution");
    state.schedule_activity("new", Payload::null(), 1, Default::default(), None);
    assert_eq!(state.take_new_patches(), vec![EventKind::Patched { patch_id: "p".into(), before_step: 0 }]);
    assert!(state.take_new_patches().is_empty());
}

#[test]
fn a_history_from_before_the_patch_keeps_the_old_branch_even_past_its_end() {
    let history = [started(), scheduled(0, "old"), completed(0, "1")];
    let mut state = ReplayState::new("i", 0);
    state.begin_replay();
    state.note_recorded_patches(&history);
    state.apply(&history[0], false).unwrap();
    assert!(!state.patched("p"), "replayed without the patch");
    state.schedule_activity("old", Payload::null(), 1, Default::default(), None);
    state.apply(&history[1], false).unwrap();
    state.apply(&history[2], false).unwrap();
    state.end_replay().unwrap();
    assert!(!state.patched("p"), "still the old branch once live");
    assert!(state.take_new_patches().is_empty(), "nothing recorded");
}

#[test]
fn a_history_that_took_the_patch_replays_the_new_branch() {
    let history = [started(), patched("p", 0), scheduled(0, "new")];
    let mut state = ReplayState::new("i", 0);
    state.begin_replay();
    state.note_recorded_patches(&history);
    state.apply(&history[0], false).unwrap();
    assert!(state.patched("p"));
    state.schedule_activity("new", Payload::null(), 1, Default::default(), None);
    state.apply(&history[1], false).unwrap();
    state.apply(&history[2], false).unwrap();
    state.end_replay().unwrap();
    assert!(state.take_new_patches().is_empty(), "recorded once, not again");
}

#[test]
fn a_patch_id_asked_for_elsewhere_than_recorded_is_a_non_determinism_naming_it() {
    let history = [started(), patched("p", 0), scheduled(0, "new"), completed(0, "1"), scheduled(1, "next")];
    let mut state = ReplayState::new("i", 0);
    state.begin_replay();
    state.note_recorded_patches(&history);
    state.apply(&history[0], false).unwrap();
    state.schedule_activity("new", Payload::null(), 1, Default::default(), None);
    state.apply(&history[1], false).unwrap();
    state.apply(&history[2], false).unwrap();
    state.apply(&history[3], false).unwrap();
    // The id is now used for another change, after the first step.
    state.patched("p");
    let err = state.apply(&history[4], false).unwrap_err();
    assert!(
        matches!(&err, ReplayError::NonDeterminism { step: 1, recorded, .. } if recorded.contains("patch 'p'")),
        "{err}"
    );
}

#[test]
fn a_patch_event_cannot_arrive_as_a_message() {
    let mut state = ReplayState::new("i", 0);
    state.apply(&started(), true).unwrap();
    assert!(matches!(state.apply(&patched("p", 0), true), Err(ReplayError::Corrupted(_))));
}
