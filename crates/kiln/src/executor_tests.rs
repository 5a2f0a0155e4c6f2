//! Replay of real orchestration code against hand-written histories.
#![allow(clippy::unwrap_used)]

use super::Execution;
use crate::combinators::{Either, join_all, select2};
use crate::context::OrchestrationContext;
use crate::failure::Failure;
use crate::registry::Registry;
use kiln_core::{
    Action, EventKind, ExecutionOutcome, FailureDetails, HistoryEvent, Payload, PayloadLimits, ReplayError, Timestamp,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;

fn execution<I, O, F, Fut>(f: F) -> Execution
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + 'static,
    F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, Failure>> + Send + 'static,
{
    let mut registry = Registry::default();
    registry.add_orchestration("test", "", f);
    Execution::new(
        "i",
        "test",
        0,
        registry.orchestration("test", "").unwrap(),
        PayloadLimits::default(),
        Default::default(),
    )
}

fn ev(id: i64, kind: EventKind) -> HistoryEvent {
    HistoryEvent { event_id: id, timestamp: Timestamp(1_000), kind }
}

fn json(text: &str) -> Payload {
    Payload::from_json(text).unwrap()
}

fn started(input: &str) -> Vec<HistoryEvent> {
    vec![
        ev(-1, EventKind::OrchestratorStarted),
        ev(
            -1,
            EventKind::ExecutionStarted {
                name: "test".into(),
                version: String::new(),
                input: json(input),
                parent: None,
                features: kiln_core::features::CURRENT,
                labels: Default::default(),
                correlation: None,
            },
        ),
    ]
}

fn scheduled(step: i64, name: &str) -> HistoryEvent {
    ev(
        step,
        EventKind::TaskScheduled { name: name.into(), input: json("null"), attempt: 1, timeouts: Default::default() },
    )
}

fn completed(step: u64, result: &str) -> HistoryEvent {
    ev(-1, EventKind::TaskCompleted { task_scheduled_id: step, result: json(result) })
}

fn outcome_json(execution: &Execution) -> String {
    match execution.outcome() {
        Some(ExecutionOutcome::Completed(output)) => output.to_string(),
        other => panic!("not completed: {other:?}"),
    }
}

async fn two_steps(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
    let a: String = ctx.call_activity("a", &()).await?;
    let b: String = ctx.call_activity("b", &()).await?;
    Ok(vec![a, b])
}

#[test]
fn fresh_run_schedules_the_first_step() {
    let mut exec = execution(two_steps);
    exec.replay(&[]).unwrap();
    for event in started("null") {
        exec.apply_new(&event).unwrap();
    }
    let actions = exec.state().take_new_actions();
    assert!(matches!(&actions[..], [Action::ScheduleTask { name, .. }] if name == "a"));
    assert!(exec.outcome().is_none());
}

#[test]
fn partial_history_continues_from_where_it_stopped() {
    let mut exec = execution(two_steps);
    let mut history = started("null");
    history.extend([scheduled(0, "a"), completed(0, r#""A""#), scheduled(1, "b")]);
    exec.replay(&history).unwrap();
    assert!(exec.state().take_new_actions().is_empty(), "nothing new while replaying");
    exec.apply_new(&completed(1, r#""B""#)).unwrap();
    assert_eq!(outcome_json(&exec), r#"["A","B"]"#);
}

#[test]
fn completions_out_of_order_still_join_in_call_order() {
    async fn both(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
        let calls = vec![ctx.call_activity::<_, String>("a", &()), ctx.call_activity::<_, String>("b", &())];
        join_all(calls).await.into_iter().collect()
    }
    let mut exec = execution(both);
    let mut history = started("null");
    history.extend([scheduled(0, "a"), scheduled(1, "b"), completed(1, r#""B""#), completed(0, r#""A""#)]);
    exec.replay(&history).unwrap();
    assert_eq!(outcome_json(&exec), r#"["A","B"]"#);
}

#[test]
fn select_follows_history_order_not_poll_order() {
    async fn race(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
        let a = ctx.call_activity::<_, String>("a", &());
        let b = ctx.call_activity::<_, String>("b", &());
        ctx.wait_for_event::<()>("go").await?;
        Ok(match select2(a, b).await {
            Either::Left(a) => format!("left {}", a?),
            Either::Right(b) => format!("right {}", b?),
        })
    }
    let mut exec = execution(race);
    let mut history = started("null");
    history.extend([
        scheduled(0, "a"),
        scheduled(1, "b"),
        completed(1, r#""B""#),
        completed(0, r#""A""#),
        ev(-1, EventKind::EventRaised { name: "go".into(), input: json("null") }),
    ]);
    exec.replay(&history).unwrap();
    assert_eq!(outcome_json(&exec), r#""right B""#, "b completed first in history");
}

#[test]
fn select_loser_completing_later_is_ignored() {
    async fn timeout(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
        let work = ctx.call_activity::<_, String>("slow", &());
        let timer = ctx.create_timer(Timestamp(5_000));
        match select2(work, timer).await {
            Either::Left(done) => done,
            Either::Right(_) => Ok("timed out".to_owned()),
        }
    }
    let mut exec = execution(timeout);
    let mut history = started("null");
    history.extend([
        scheduled(0, "slow"),
        ev(1, EventKind::TimerCreated { fire_at: Timestamp(5_000) }),
        ev(-1, EventKind::TimerFired { timer_id: 1, fire_at: Timestamp(5_000) }),
    ]);
    exec.replay(&history).unwrap();
    assert_eq!(outcome_json(&exec), r#""timed out""#);
    assert!(!exec.apply_new(&completed(0, r#""late""#)).unwrap(), "a finished execution records nothing more");
}

#[test]
fn changed_code_is_a_non_determinism_error_naming_both_steps() {
    let mut exec = execution(two_steps);
    let mut history = started("null");
    history.extend([scheduled(0, "screen_content")]);
    let err = exec.replay(&history).unwrap_err();
    assert_eq!(
        err,
        ReplayError::NonDeterminism {
            step: 0,
            recorded: "TaskScheduled('screen_content')".into(),
            actual: "call_activity('a')".into()
        }
    );
}

#[test]
fn corrupted_history_is_reported() {
    let mut exec = execution(two_steps);
    let mut history = started("null");
    history.push(completed(9, "1"));
    assert!(matches!(exec.replay(&history), Err(ReplayError::Corrupted(_))));
}

#[test]
fn continue_as_new_ends_the_execution_with_the_next_input() {
    async fn counter(ctx: OrchestrationContext, n: u32) -> Result<u32, Failure> {
        let next: u32 = ctx.call_activity("inc", &n).await?;
        ctx.continue_as_new(&next).await
    }
    let mut exec = execution(counter);
    let mut history = started("4");
    history.push(scheduled(0, "inc"));
    exec.replay(&history).unwrap();
    exec.apply_new(&completed(0, "5")).unwrap();
    assert_eq!(
        exec.outcome(),
        Some(&ExecutionOutcome::ContinuedAsNew { input: json("5"), preserve_unprocessed_events: false })
    );
}

#[test]
fn sub_orchestration_results_and_failures_replay() {
    async fn parent(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
        let ok: String = ctx.call_sub_orchestration("child", &1).await?;
        let failed = ctx.call_sub_orchestration::<_, String>("child", &2).await.unwrap_err();
        Ok(format!("{ok} / {}", failed.message()))
    }
    let created = |step: i64| {
        ev(
            step,
            EventKind::SubOrchestrationInstanceCreated {
                name: "child".into(),
                version: String::new(),
                instance_id: format!("i:0:{step}"),
                input: json(&(step + 1).to_string()),
            },
        )
    };
    let mut exec = execution(parent);
    let mut history = started("null");
    history.extend([
        created(0),
        ev(-1, EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id: 0, result: json(r#""one""#) }),
        created(1),
        ev(
            -1,
            EventKind::SubOrchestrationInstanceFailed {
                task_scheduled_id: 1,
                failure_details: FailureDetails::new("E", "two broke"),
            },
        ),
    ]);
    exec.replay(&history).unwrap();
    assert_eq!(outcome_json(&exec), r#""one / two broke""#);
}

#[test]
fn replay_safe_values_are_stable_across_replays() {
    async fn stamps(ctx: OrchestrationContext, _: ()) -> Result<(String, i64, bool), Failure> {
        let id = ctx.new_uuid();
        let replaying = ctx.is_replaying();
        Ok((id, ctx.current_time().millis(), replaying))
    }
    let run = |replay: bool| {
        let mut exec = execution(stamps);
        if replay {
            exec.replay(&started("null")).unwrap();
        } else {
            exec.replay(&[]).unwrap();
            for event in started("null") {
                exec.apply_new(&event).unwrap();
            }
        }
        outcome_json(&exec)
    };
    let (replayed, live) = (run(true), run(false));
    assert_eq!(replayed.replace("true", "?"), live.replace("false", "?"));
    assert!(replayed.contains(",1000,true"), "{replayed}");
}

async fn retry_then_other(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
    let retried = ctx.call_activity_with_retry("r", &(), crate::RetryPolicy::new(2, std::time::Duration::ZERO));
    let b: String = ctx.call_activity("b", &()).await?;
    Ok(vec![b, retried.await?])
}

#[test]
fn histories_recorded_before_eager_retry_replay_as_recorded() {
    // Recorded by a Kiln without the feature: the retried call's first attempt went out at its
    // first poll, after "b".
    let mut history = started("null");
    if let EventKind::ExecutionStarted { features, .. } = &mut history[1].kind {
        *features = 0;
    }
    history.extend([scheduled(0, "b"), completed(0, r#""b""#), scheduled(1, "r"), completed(1, r#""r""#)]);
    let mut exec = execution(retry_then_other);
    exec.replay(&history).unwrap();
    assert_eq!(outcome_json(&exec), r#"["b","r"]"#);

    // A new execution takes the retried call first.
    let mut exec = execution(retry_then_other);
    exec.replay(&[]).unwrap();
    for event in started("null") {
        exec.apply_new(&event).unwrap();
    }
    let names: Vec<String> = exec.state().take_new_actions().iter().map(Action::describe).collect();
    assert_eq!(names, ["call_activity('r')", "call_activity('b')"]);
}
