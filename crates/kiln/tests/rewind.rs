//! Rewind on paths real applications hit (issue 12, item 6): failures the code handled, results
//! that arrived while the instance was failed, steps the failing turn never ran, and children
//! that failed for other reasons than their own code. Each test failed before its fix, or says
//! it is a guard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DEADLINE, TestKiln, failure_message, output};
use kiln::{ActivityContext, Either, Failure, Kiln, OrchestrationContext, RuntimeStatus, StartOptions, select2};
use kiln_core::{EventKind, Payload};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

/// Every activity run: (instance id, key).
static RUNS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Keys whose `fallible` activity succeeds (set by the tests: "the bug was fixed").
static FIXED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn ran(ctx: &ActivityContext, key: &str) {
    RUNS.lock().unwrap().push((ctx.instance_id().to_owned(), key.to_owned()));
}

fn runs(key: &str) -> usize {
    RUNS.lock().unwrap().iter().filter(|(_, k)| k == key).count()
}

fn fix(key: &str) {
    FIXED.lock().unwrap().insert(key.to_owned());
}

/// Fails until its key is fixed; then returns the key.
async fn fallible(ctx: ActivityContext, key: String) -> Result<String, Failure> {
    ran(&ctx, &key);
    if FIXED.lock().unwrap().contains(&key) { Ok(key) } else { Err(Failure::new(format!("{key} is down"))) }
}

/// Returns its key after a while.
async fn slow(ctx: ActivityContext, key: String) -> Result<String, Failure> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    ran(&ctx, &key);
    Ok(key)
}

/// Returns its key.
async fn ok(ctx: ActivityContext, key: String) -> Result<String, Failure> {
    ran(&ctx, &key);
    Ok(key)
}

fn builder() -> kiln::KilnBuilder {
    Kiln::builder()
        .activity("fallible", fallible)
        .activity("slow", slow)
        .activity("ok", ok)
        .orchestration("handled_then_unhandled", handled_then_unhandled)
        .orchestration("awaits_out_of_order", awaits_out_of_order)
        .orchestration("sibling_outlives_the_failure", sibling_outlives_the_failure)
        .orchestration("cleans_up_without_waiting", cleans_up_without_waiting)
        .orchestration("calls_child", calls_child)
        .orchestration("calls_child_with_id", calls_child_with_id)
        .orchestration("waits_for_go", waits_for_go)
        .orchestration("child_calls_fallible", child_calls_fallible)
        .orchestration("gives_up_on_go", gives_up_on_go)
        .orchestration("both_slow", both_slow)
        .orchestration("tells_then_fails", tells_then_fails)
        .activity("slow_fallible", slow_fallible)
        .activity("slower", slower)
        .orchestration("races_then_fails", races_then_fails)
        .orchestration("child_with_its_own_bug", child_with_its_own_bug)
        .orchestration("then_waits_for_go", then_waits_for_go)
}

/// Waits longer than the slowest activity takes, so that a wrong re-run would have counted.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(800)).await;
}

async fn rewind_and_finish(t: &TestKiln, id: &str) -> kiln::InstanceRecord {
    t.client.rewind(id, Some("fixed")).await.unwrap();
    let done = t.client.wait_until(id, DEADLINE, |r| r.status == RuntimeStatus::Completed).await.unwrap();
    match done {
        Some(done) => done,
        None => panic!("the rewound instance did not complete: {:?}", t.client.history(id).await),
    }
}

async fn handled_then_unhandled(ctx: OrchestrationContext, tag: String) -> Result<String, Failure> {
    let first = ctx.call_activity::<_, String>("fallible", &format!("{tag}-never")).await;
    let note = if first.is_err() { "recovered" } else { "first worked" };
    let second: String = ctx.call_activity("fallible", &format!("{tag}-second")).await?;
    Ok(format!("{note}, {second}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_the_code_handled_stays_and_only_the_unhandled_step_runs_again() {
    let t = TestKiln::start(builder()).await;
    let id = t.client.start("handled_then_unhandled", &"t1").await.unwrap();
    assert_eq!(failure_message(&t.finish(&id).await), "t1-second is down");
    fix("t1-second");
    // Before: both failures were undone; replay then met a step the code no longer took.
    let done = rewind_and_finish(&t, &id).await;
    assert_eq!(output(&done), "recovered, t1-second");
    assert_eq!((runs("t1-never"), runs("t1-second")), (1, 2));
    t.stop().await;
}

async fn awaits_out_of_order(ctx: OrchestrationContext, tag: String) -> Result<String, Failure> {
    let a = ctx.call_activity::<_, String>("fallible", &format!("{tag}-a"));
    let b: String = ctx.call_activity("slow", &format!("{tag}-b")).await?;
    let c: String = ctx.call_activity("ok", &format!("{tag}-c")).await?;
    let a = a.await?;
    Ok(format!("{a} {b} {c}"))
}

/// Guard: the failure that arrives first in history is the one the code takes last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failure_undone_is_the_one_the_code_took_last_whatever_order_results_came_in() {
    let t = TestKiln::start(builder()).await;
    let id = t.client.start("awaits_out_of_order", &"t2").await.unwrap();
    assert_eq!(failure_message(&t.finish(&id).await), "t2-a is down");
    fix("t2-a");
    assert_eq!(output(&rewind_and_finish(&t, &id).await), "t2-a t2-b t2-c");
    settle().await;
    assert_eq!((runs("t2-a"), runs("t2-b"), runs("t2-c")), (2, 1, 1));
    t.stop().await;
}

async fn sibling_outlives_the_failure(ctx: OrchestrationContext, tag: String) -> Result<String, Failure> {
    let slow = ctx.call_activity::<_, String>("slow", &format!("{tag}-slow"));
    let quick: String = ctx.call_activity("fallible", &format!("{tag}-quick")).await?;
    let slow = slow.await?;
    Ok(format!("{quick} {slow}"))
}

/// Waits until a failed instance's history ends with a result kept after its end.
async fn result_kept(t: &TestKiln, id: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let history = t.client.history(id).await.unwrap();
        if history.last().is_some_and(|e| e.kind.is_step_result()) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the late result was dropped: {history:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_arrives_while_the_instance_is_failed_is_kept_for_a_rewind() {
    let t = TestKiln::start(builder()).await;
    let id = t.client.start("sibling_outlives_the_failure", &"t3").await.unwrap();
    assert_eq!(failure_message(&t.finish(&id).await), "t3-quick is down");
    // The slow sibling finishes after the failure; its result is kept after the end.
    result_kept(&t, &id).await;
    assert_eq!(t.finish(&id).await.status, RuntimeStatus::Failed, "keeping it did not change the instance");
    fix("t3-quick");
    // Before: the rewind reopened the slow step, and nothing would ever complete it.
    assert_eq!(output(&rewind_and_finish(&t, &id).await), "t3-quick t3-slow");
    settle().await;
    assert_eq!((runs("t3-quick"), runs("t3-slow")), (2, 1));
    t.stop().await;
}

async fn cleans_up_without_waiting(ctx: OrchestrationContext, tag: String) -> Result<String, Failure> {
    match ctx.call_activity::<_, String>("fallible", &format!("{tag}-a")).await {
        Ok(a) => Ok(a),
        Err(failure) => {
            // Taken, never awaited: the execution ends in this turn, so it never runs.
            let _cleanup = ctx.call_activity::<_, String>("ok", &format!("{tag}-cleanup"));
            Err(failure)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_the_failing_turn_took_but_never_ran_is_forgotten() {
    let t = TestKiln::start(builder()).await;
    let id = t.client.start("cleans_up_without_waiting", &"t4").await.unwrap();
    assert_eq!(failure_message(&t.finish(&id).await), "t4-a is down");
    fix("t4-a");
    // Before: the failure was undone but the cleanup step stayed; replay did not take it.
    assert_eq!(output(&rewind_and_finish(&t, &id).await), "t4-a");
    settle().await;
    assert_eq!((runs("t4-a"), runs("t4-cleanup")), (2, 0));
    t.stop().await;
}

async fn waits_for_go(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    let go: String = ctx.wait_for_event("go").await?;
    Ok(format!("child got {go}"))
}

async fn calls_child(ctx: OrchestrationContext, name: String) -> Result<String, Failure> {
    ctx.call_sub_orchestration(&name, &()).await
}

/// The id of `parent`'s first child (derived from its execution number and step 0).
async fn first_child_of(t: &TestKiln, parent: &str) -> String {
    let execution = t.client.status(parent).await.unwrap().expect("the parent").execution;
    format!("{parent}:{execution}:0")
}

async fn child_for(t: &TestKiln, parent: &str) -> String {
    let child = first_child_of(t, parent).await;
    t.waiting(&child).await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewinding_a_parent_whose_child_was_terminated_runs_the_child_again() {
    let t = TestKiln::start(builder()).await;
    let id = t.client.start("calls_child", &"waits_for_go").await.unwrap();
    let child = child_for(&t, &id).await;
    t.client.terminate(&child, Some("by hand")).await.unwrap();
    assert_eq!(t.finish(&id).await.status, RuntimeStatus::Failed);
    // Before: the terminated child was sent a rewind it ignores; the parent waited forever.
    t.client.rewind(&id, None).await.unwrap();
    t.client.wait_until(&child, DEADLINE, |r| r.status == RuntimeStatus::Running).await.unwrap().unwrap();
    t.waiting(&child).await;
    t.client.raise_event(&child, "go", &"green").await.unwrap();
    let done = t.client.wait_until(&id, DEADLINE, |r| r.status.is_terminal()).await.unwrap().unwrap();
    assert_eq!(output(&done), "child got green");
    t.stop().await;
}

async fn child_calls_fallible(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    ctx.call_activity("fallible", &"t6-child").await
}

/// Guard: a child that failed itself is rewound, not created again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_failed_itself_is_rewound_in_place() {
    let t = TestKiln::start(builder()).await;
    let id = t.client.start("calls_child", &"child_calls_fallible").await.unwrap();
    assert_eq!(t.finish(&id).await.status, RuntimeStatus::Failed);
    let child = t.finish(&first_child_of(&t, &id).await).await;
    fix("t6-child");
    assert_eq!(output(&rewind_and_finish(&t, &id).await), "t6-child");
    let rewound = t.finish(&child.instance_id).await;
    assert_eq!(rewound.created_at, child.created_at, "the same child, rewound");
    assert_eq!(runs("t6-child"), 2);
    t.stop().await;
}

async fn gives_up_on_go(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    let _: String = ctx.wait_for_event("go").await?;
    Err(Failure::new("the bystander gave up"))
}

async fn calls_child_with_id(ctx: OrchestrationContext, child_id: String) -> Result<String, Failure> {
    ctx.call_sub_orchestration_with_id("ok_child", &child_id, &()).await
}

async fn ok_child(_: OrchestrationContext, _: ()) -> Result<String, Failure> {
    Ok("our child ran".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewinding_a_parent_whose_child_id_was_taken_never_rewinds_the_other_instance() {
    let t = TestKiln::start(builder().orchestration("ok_child", ok_child)).await;
    let options = StartOptions { instance_id: Some("taken-7".into()), ..StartOptions::default() };
    t.client.start_with("gives_up_on_go", Payload::null(), options).await.unwrap();
    t.waiting("taken-7").await;
    let id = t.client.start("calls_child_with_id", &"taken-7").await.unwrap();
    let failed = t.finish(&id).await;
    assert_eq!(failed.failure.as_ref().unwrap().error_type, "AlreadyExists", "{failed:?}");
    // The unrelated instance fails on its own; the parent's rewind must not rewind it.
    t.client.raise_event("taken-7", "go", &"now").await.unwrap();
    assert_eq!(failure_message(&t.finish("taken-7").await), "the bystander gave up");
    t.client.rewind(&id, None).await.unwrap();
    let done = t.client.wait_until(&id, DEADLINE, |r| r.status == RuntimeStatus::Completed).await.unwrap();
    // Before: the bystander was rewound (it failed again at once) and the parent waited forever.
    assert_eq!(output(&done.expect("the parent completes")), "our child ran");
    let child = t.finish("taken-7").await;
    assert_eq!((child.name.as_str(), child.status), ("ok_child", RuntimeStatus::Completed), "created anew");
    t.stop().await;
}

/// `fallible`, after a while.
async fn slow_fallible(ctx: ActivityContext, key: String) -> Result<String, Failure> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    fallible(ctx, key).await
}

/// `slow`, twice as slow.
async fn slower(ctx: ActivityContext, key: String) -> Result<String, Failure> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow(ctx, key).await
}

async fn both_slow(ctx: OrchestrationContext, tag: String) -> Result<String, Failure> {
    let slow = ctx.call_activity::<_, String>("slower", &format!("{tag}-slow"));
    let failing: String = ctx.call_activity("slow_fallible", &format!("{tag}-failing")).await?;
    Ok(format!("{failing} {}", slow.await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_in_the_same_batch_as_the_failure_is_kept_for_a_rewind() {
    let t = TestKiln::start(builder()).await;
    let id = t.client.start("both_slow", &"t8").await.unwrap();
    // Suspended, the instance holds both results back; resumed, it takes them in one batch, the
    // failure first.
    t.client.suspend(&id, None).await.unwrap();
    t.reach(&id, RuntimeStatus::Suspended).await;
    while runs("t8-slow") + runs("t8-failing") < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    t.client.resume(&id, None).await.unwrap();
    assert_eq!(failure_message(&t.finish(&id).await), "t8-failing is down");
    let history = t.client.history(&id).await.unwrap();
    let end = history.iter().position(|e| matches!(e.kind, EventKind::ExecutionCompleted { .. })).unwrap();
    // Before: the failing turn consumed the sibling's result and recorded nothing of it.
    assert!(
        history[end..].iter().any(|e| matches!(e.kind, EventKind::TaskCompleted { task_scheduled_id: 0, .. })),
        "{history:?}"
    );
    fix("t8-failing");
    assert_eq!(output(&rewind_and_finish(&t, &id).await), "t8-failing t8-slow");
    settle().await;
    assert_eq!((runs("t8-failing"), runs("t8-slow")), (2, 1));
    t.stop().await;
}

async fn tells_then_fails(ctx: OrchestrationContext, tag: String) -> Result<String, Failure> {
    match ctx.call_activity::<_, String>("fallible", &format!("{tag}-a")).await {
        Ok(a) => Ok(a),
        Err(failure) => {
            // An effect that cannot be taken back: the failure stays.
            ctx.send_event("somewhere-else", "failed", &tag);
            Err(failure)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_after_which_the_code_fails_again_at_once_leaves_the_instance_as_it_was() {
    let t = TestKiln::start(builder()).await;
    let id = t.client.start("tells_then_fails", &"t9").await.unwrap();
    let failed = t.finish(&id).await;
    let history = t.client.history(&id).await.unwrap();
    fix("t9-a");
    // The failing turn counts itself just after its commit: let it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let turns = t.client.metrics().turns;
    t.client.rewind(&id, None).await.unwrap();
    // The rewind's turn commits (its message consumed) without changing anything.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while t.client.metrics().turns == turns {
        assert!(tokio::time::Instant::now() < deadline, "the rewind's turn never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = t.finish(&id).await;
    // Before: the rewrite was committed: the undone failure was gone, the instance failed again.
    assert_eq!((after.status, &after.failure), (failed.status, &failed.failure));
    assert_eq!(t.client.history(&id).await.unwrap(), history, "the history is untouched");
    settle().await;
    assert_eq!(runs("t9-a"), 1);
    t.stop().await;
}

async fn races_then_fails(ctx: OrchestrationContext, tag: String) -> Result<String, Failure> {
    let loser = ctx.call_activity::<_, String>("slow_fallible", &format!("{tag}-loser"));
    let winner = ctx.call_activity::<_, String>("ok", &format!("{tag}-winner"));
    if let Either::Left(_) = select2(loser, winner).await {
        return Err(Failure::new("the slow one won"));
    }
    ctx.call_activity("fallible", &format!("{tag}-c")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_the_code_dropped_and_went_on_without_is_not_run_again() {
    let t = TestKiln::start(builder()).await;
    let id = t.client.start("races_then_fails", &"t10").await.unwrap();
    assert_eq!(failure_message(&t.finish(&id).await), "t10-c is down");
    // The select2 loser fails later; its failure is kept, but nothing awaits that step.
    result_kept(&t, &id).await;
    fix("t10-c");
    assert_eq!(output(&rewind_and_finish(&t, &id).await), "t10-c");
    settle().await;
    assert_eq!((runs("t10-loser"), runs("t10-winner"), runs("t10-c")), (1, 1, 2));
    t.stop().await;
}

async fn child_with_its_own_bug(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    let _: String = ctx.call_activity("ok", &"t11-child-step").await?;
    Err(Failure::new("the child's own bug"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_whose_child_cannot_be_rewound_fails_again_instead_of_waiting_forever() {
    let t = TestKiln::start(builder()).await;
    let id = t.client.start("calls_child", &"child_with_its_own_bug").await.unwrap();
    let failed = t.finish(&id).await;
    assert_eq!(failed.status, RuntimeStatus::Failed);
    t.client.rewind(&id, None).await.unwrap();
    // The child's rewind changes nothing (its code fails again at once); it says so to the parent.
    let again = t
        .client
        .wait_until(&id, DEADLINE, |r| r.status == RuntimeStatus::Failed && r.updated_at != failed.updated_at)
        .await
        .unwrap();
    let again = again.unwrap_or_else(|| panic!("the parent waits forever on its child"));
    assert_eq!(again.failure.as_ref().map(|f| f.error_message.as_str()), Some("the child's own bug"));
    t.stop().await;
}

async fn then_waits_for_go(ctx: OrchestrationContext, tag: String) -> Result<String, Failure> {
    let a: String = ctx.call_activity("slow_fallible", &format!("{tag}-a")).await?;
    let go: String = ctx.wait_for_event("go").await?;
    Ok(format!("{a} {go}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_raised_in_the_same_batch_as_the_failure_is_kept_for_a_rewind() {
    let t = TestKiln::start(builder()).await;
    let id = t.client.start("then_waits_for_go", &"t12").await.unwrap();
    // Suspended, the instance holds back the failure and the event; resumed, it takes both.
    t.client.suspend(&id, None).await.unwrap();
    t.reach(&id, RuntimeStatus::Suspended).await;
    while runs("t12-a") < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.client.raise_event(&id, "go", &"green").await.unwrap();
    t.client.resume(&id, None).await.unwrap();
    assert_eq!(failure_message(&t.finish(&id).await), "t12-a is down");
    fix("t12-a");
    // Before: the event was consumed with the failing batch; the rewound instance waited for it.
    assert_eq!(output(&rewind_and_finish(&t, &id).await), "t12-a green");
    t.stop().await;
}
