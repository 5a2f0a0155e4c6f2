//! Replay semantics on paths real applications hit (issue 12): each test is a minimal
//! orchestration and message sequence that lost data or hung before its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DEADLINE, TestKiln, output};
use kiln::{Either, Failure, Kiln, OrchestrationContext, Payload, RuntimeConfig, StartOptions, WaitingOn, select2};
use serde_json::{Value, json};
use std::time::Duration;

/// A reminder loop: wait for an approval, send a reminder (count one) each time the wait times
/// out, and wait again.
async fn reminder_loop(ctx: OrchestrationContext, _: ()) -> Result<Value, Failure> {
    let mut reminders = 0u32;
    loop {
        match select2(ctx.wait_for_event::<String>("Approval"), ctx.sleep(Duration::from_millis(100))).await {
            Either::Left(approval) => return Ok(json!({"approval": approval?, "reminders": reminders})),
            Either::Right(fired) => {
                fired?;
                reminders += 1;
                ctx.set_custom_status(&reminders);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_lost_a_race_gives_its_place_back() {
    let t = TestKiln::start(Kiln::builder().orchestration("reminder_loop", reminder_loop)).await;
    let id = t.client.start("reminder_loop", &()).await.unwrap();
    // Three waits have timed out: the one approval goes to the live wait, not a dead one.
    let reminders = |r: &kiln::InstanceRecord| r.custom_status.as_ref().and_then(|s| s.as_str().parse::<u32>().ok());
    t.client
        .wait_until(&id, DEADLINE, |r| reminders(r).is_some_and(|n| n >= 3))
        .await
        .unwrap()
        .expect("three reminders");
    t.client.raise_event(&id, "Approval", &"yes").await.unwrap();
    let done = t.client.wait_for_completion(&id, Duration::from_secs(5)).await.unwrap();
    let output = output(&done);
    assert_eq!(output["approval"], "yes", "{output}");
    assert!(output["reminders"].as_u64().unwrap() >= 3, "{output}");
    t.stop().await;
}

/// Settings that make a redelivery loop reach poison quickly if giving work back counted.
fn impatient() -> RuntimeConfig {
    RuntimeConfig {
        max_dequeue_count: 2,
        unregistered_retry: Duration::from_millis(20),
        shutdown_grace: Duration::from_millis(200),
        ..RuntimeConfig::default()
    }
}

async fn start_on(builder: kiln::KilnBuilder, path: &std::path::Path) -> Kiln {
    builder.config(impatient()).sqlite(path).start().await.unwrap()
}

async fn approve(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    let who: String = ctx.wait_for_event("Approval").await?;
    ctx.call_activity("stamp", &who).await
}

async fn stamp(_: kiln::ActivityContext, who: String) -> Result<String, Failure> {
    Ok(format!("approved by {who}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_version_is_not_deployed_here_waits_for_a_worker_that_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let v2 = || Kiln::builder().orchestration_version("approve", "2", approve).activity("stamp", stamp);
    let kiln = start_on(v2(), &path).await;
    let options = StartOptions { instance_id: Some("deploy".into()), version: Some("2".into()), ..Default::default() };
    kiln.client().start_with("approve", Payload::null(), options).await.unwrap();
    kiln.client().wait_until("deploy", DEADLINE, |r| !r.waiting_on.is_empty()).await.unwrap().unwrap();
    kiln.shutdown().await;

    // A rollback: this worker has only version 1. The event arrives; the instance is claimed
    // and given back again and again, far past the poison limit, and must not fail.
    let v1 = Kiln::builder().orchestration_version("approve", "1", approve).activity("stamp", stamp);
    let old = start_on(v1, &path).await;
    old.client().raise_event("deploy", "Approval", &"ada").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = old.client().status("deploy").await.unwrap().unwrap();
    assert!(!record.status.is_terminal(), "{:?}: {:?}", record.status, record.failure);
    assert!(old.metrics().unregistered > 2, "{:?}", old.metrics());
    old.shutdown().await;

    // Version 2 is back: the instance goes on from where it was.
    let kiln = start_on(v2(), &path).await;
    let done = kiln.client().wait_for_completion("deploy", DEADLINE).await.unwrap();
    assert_eq!(output(&done), json!("approved by ada"));
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_not_deployed_here_waits_for_a_worker_that_has_it() {
    async fn stamp_once(ctx: OrchestrationContext, who: String) -> Result<String, Failure> {
        ctx.call_activity("stamp", &who).await
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    // An old worker: the orchestration is there, its new activity is not.
    let old = start_on(Kiln::builder().orchestration("stamp_once", stamp_once), &path).await;
    let id = old.client().start("stamp_once", &"ada").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = old.client().status(&id).await.unwrap().unwrap();
    assert!(!record.status.is_terminal(), "{:?}: {:?}", record.status, record.failure);
    assert_eq!(
        record.waiting_on,
        vec![WaitingOn::Activity {
            name: "stamp".into(),
            attempt: 1,
            task_id: 0,
            deadline: None,
            start_to_close_ms: None,
            heartbeat_timeout_ms: None
        }],
        "still waiting on the activity"
    );
    assert!(old.metrics().unregistered > 2, "{:?}", old.metrics());
    old.shutdown().await;

    let new = start_on(Kiln::builder().orchestration("stamp_once", stamp_once).activity("stamp", stamp), &path).await;
    let done = new.client().wait_for_completion(&id, DEADLINE).await.unwrap();
    assert_eq!(output(&done), json!("approved by ada"));
    new.shutdown().await;
}

/// Lets the `gated` activity finish (set by the test).
static GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

async fn gated(_: kiln::ActivityContext, _: ()) -> Result<String, Failure> {
    GATE.notified().await;
    Ok("result".into())
}

async fn one_gated_step(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    ctx.call_activity("gated", &()).await
}

/// The `hog` instances holding their runtime's only orchestration worker right now.
static HOGGING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Holds the only orchestration worker for a while (no real orchestration would block), so that
/// what the test sends meanwhile lands in one batch.
async fn hog(ctx: OrchestrationContext, millis: u64) -> Result<(), Failure> {
    HOGGING.lock().unwrap().push(ctx.instance_id());
    std::thread::sleep(Duration::from_millis(millis));
    HOGGING.lock().unwrap().retain(|id| *id != ctx.instance_id());
    Ok(())
}

/// Starts `hog` for `millis` under a fresh id and waits until it holds the worker.
async fn hold_the_worker(client: &kiln::KilnClient, id: &str, millis: u64) {
    let options = StartOptions { instance_id: Some(id.into()), ..Default::default() };
    client.start_with("hog", Payload::encode(&millis).unwrap(), options).await.unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while !HOGGING.lock().unwrap().iter().any(|hogging| hogging == id) {
        assert!(std::time::Instant::now() < deadline, "the hog never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_that_arrives_with_a_pending_suspend_is_kept_for_after_the_resume() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { orchestration_concurrency: 1, ..impatient() };
    let builder = Kiln::builder()
        .orchestration("one_gated_step", one_gated_step)
        .orchestration("hog", hog)
        .activity("gated", gated);
    let kiln = builder.config(config).sqlite(dir.path().join("kiln.db")).start().await.unwrap();
    let client = kiln.client();
    let id = client.start("one_gated_step", &()).await.unwrap();
    client.wait_until(&id, DEADLINE, |r| !r.waiting_on.is_empty()).await.unwrap().unwrap();
    // With the only worker busy, the suspend waits in the inbox while the activity finishes:
    // its result and the suspend meet in one turn, run by the activity's task.
    hold_the_worker(&client, "hog-suspend", 1_000).await;
    client.suspend(&id, Some("maintenance")).await.unwrap();
    GATE.notify_one();
    client.wait_until(&id, DEADLINE, |r| r.status == kiln::RuntimeStatus::Suspended).await.unwrap().unwrap();
    client.resume(&id, None).await.unwrap();
    let done = client.wait_for_completion(&id, DEADLINE).await.unwrap();
    assert_eq!(output(&done), json!("result"));
    kiln.shutdown().await;
}

async fn slow(_: kiln::ActivityContext, _: ()) -> Result<(), Failure> {
    tokio::time::sleep(Duration::from_millis(400)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_result_for_a_finished_instance_does_not_count_as_it_finishing_again() {
    async fn impatient_race(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
        // The timer wins; the activity's result arrives after the instance finished.
        let _ = select2(ctx.call_activity::<_, ()>("slow", &()), ctx.sleep(Duration::from_millis(10))).await;
        Ok(())
    }
    let t =
        TestKiln::start(Kiln::builder().orchestration("impatient_race", impatient_race).activity("slow", slow)).await;
    let id = t.client.start("impatient_race", &()).await.unwrap();
    t.finish(&id).await;
    // The worker records the duration just after its commit is visible.
    let deadline = std::time::Instant::now() + DEADLINE;
    let typical = loop {
        if let Some(typical) = t.client.typical_duration("impatient_race") {
            break typical;
        }
        assert!(std::time::Instant::now() < deadline, "the finish was never recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let turns = t.client.metrics().turns;
    while t.client.metrics().turns == turns {
        assert!(std::time::Instant::now() < deadline, "the late result was never processed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(t.client.typical_duration("impatient_race"), Some(typical), "the late turn is not a second finish");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaiting_something_that_is_not_a_durable_step_fails_the_instance_with_a_reason() {
    async fn runtime_sleep(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
        ctx.call_activity::<_, ()>("slow", &()).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    }
    let t = TestKiln::start(Kiln::builder().orchestration("runtime_sleep", runtime_sleep).activity("slow", slow)).await;
    let id = t.client.start("runtime_sleep", &()).await.unwrap();
    let done = t.finish(&id).await;
    assert_eq!(done.status, kiln::RuntimeStatus::Failed);
    let failure = done.failure.unwrap();
    assert_eq!(failure.error_type, kiln::error_types::NON_DURABLE_AWAIT, "{failure:?}");
    assert!(failure.error_message.contains("ctx.sleep"), "{failure:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_as_new_preserving_events_keeps_every_event_of_the_batch_in_order() {
    /// Takes one `item` per execution and carries the list so far into the next.
    async fn collect(ctx: OrchestrationContext, mut seen: Vec<u32>) -> Result<Vec<u32>, Failure> {
        seen.push(ctx.wait_for_event("item").await?);
        if seen.len() == 4 {
            return Ok(seen);
        }
        ctx.continue_as_new_preserving_events(&seen).await
    }
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { orchestration_concurrency: 1, ..impatient() };
    let builder = Kiln::builder().orchestration("collect", collect).orchestration("hog", hog);
    let kiln = builder.config(config).sqlite(dir.path().join("kiln.db")).start().await.unwrap();
    let client = kiln.client();
    let options = StartOptions { instance_id: Some("collect".into()), ..Default::default() };
    client.start_with("collect", Payload::encode(&Vec::<u32>::new()).unwrap(), options).await.unwrap();
    client.wait_until("collect", DEADLINE, |r| !r.waiting_on.is_empty()).await.unwrap().unwrap();
    // The only worker is busy: all four events land in the instance's next batch.
    hold_the_worker(&client, "hog-collect", 500).await;
    for n in 1..=4u32 {
        client.raise_event("collect", "item", &n).await.unwrap();
    }
    let done = client.wait_for_completion("collect", DEADLINE).await.unwrap();
    assert_eq!(output(&done), json!([1, 2, 3, 4]));
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_execution_cache_still_serves_every_turn_of_a_busy_instance() {
    async fn steps(ctx: OrchestrationContext, n: u32) -> Result<u32, Failure> {
        let mut total = 0;
        for i in 0..n {
            total += ctx.call_activity::<_, u32>("double", &i).await?;
        }
        Ok(total)
    }
    async fn double(_: kiln::ActivityContext, n: u32) -> Result<u32, Failure> {
        Ok(2 * n)
    }
    let t = TestKiln::start(Kiln::builder().orchestration("steps", steps).activity("double", double)).await;
    for _ in 0..5 {
        let id = t.client.start("steps", &5).await.unwrap();
        assert_eq!(output(&t.finish(&id).await), json!(20));
    }
    // Each record the cache keys on is the one its own commit left: no turn had to replay.
    assert_eq!(t.client.metrics().replays, 0, "{:?}", t.client.metrics());
    t.stop().await;
}

/// Runs of the `counted_failure` activity, by instance id.
static FAILURE_RUNS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

async fn counted_failure(ctx: kiln::ActivityContext, error_type: String) -> Result<(), Failure> {
    FAILURE_RUNS.lock().unwrap().push(ctx.instance_id().to_owned());
    Err(Failure::typed(error_type, "no point trying again"))
}

fn runs_of(id: &str) -> usize {
    FAILURE_RUNS.lock().unwrap().iter().filter(|run| *run == id).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_error_types_the_policy_names() {
    async fn retried(ctx: OrchestrationContext, error_type: String) -> Result<(), Failure> {
        let policy = kiln::RetryPolicy::new(5, Duration::from_millis(10)).with_non_retryable_error_types(["Invalid"]);
        ctx.call_activity_with_retry("counted_failure", &error_type, policy).await
    }
    let t =
        TestKiln::start(Kiln::builder().orchestration("retried", retried).activity("counted_failure", counted_failure))
            .await;
    let invalid = t.client.start("retried", &"Invalid").await.unwrap();
    let passing = t.client.start("retried", &"Busy").await.unwrap();
    for id in [&invalid, &passing] {
        assert_eq!(t.finish(id).await.status, kiln::RuntimeStatus::Failed);
    }
    assert_eq!(runs_of(&invalid), 1, "a type the policy names is not retried");
    assert_eq!(runs_of(&passing), 5, "any other failure is");
    t.stop().await;
}

/// Lets the `held` activity finish (set by the test).
static HELD: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Set once `held` runs.
static HELD_STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn held(_: kiln::ActivityContext, _: ()) -> Result<String, Failure> {
    HELD_STARTED.store(true, std::sync::atomic::Ordering::SeqCst);
    HELD.notified().await;
    Ok("stale".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_from_a_purged_run_does_not_reach_a_new_instance_with_the_same_id() {
    async fn leaves_one_running(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
        // The timer wins; the activity is still running when the instance finishes.
        let _ = select2(ctx.call_activity::<_, String>("held", &()), ctx.sleep(Duration::from_millis(10))).await;
        Ok(())
    }
    async fn sleeper(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
        ctx.sleep(Duration::from_millis(1_500)).await?;
        Ok("slept".into())
    }
    let builder = Kiln::builder()
        .orchestration("leaves_one_running", leaves_one_running)
        .orchestration("sleeper", sleeper)
        .activity("held", held);
    let t = TestKiln::start(builder).await;
    let reuse = || StartOptions { instance_id: Some("reuse".into()), ..Default::default() };
    t.client.start_with("leaves_one_running", Payload::null(), reuse()).await.unwrap();
    t.finish("reuse").await;
    let deadline = std::time::Instant::now() + DEADLINE;
    while !HELD_STARTED.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "the activity never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(t.client.purge("reuse").await.unwrap(), 1);
    t.client.start_with("sleeper", Payload::null(), reuse()).await.unwrap();
    t.waiting("reuse").await;
    // The purged run's activity finishes now: its result (step 0 of execution 0) must not
    // resolve the new run's step 0, a timer.
    HELD.notify_one();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = t.client.status("reuse").await.unwrap().unwrap();
    assert_eq!(record.status, kiln::RuntimeStatus::Running, "{:?}", record.output);
    assert_eq!(output(&t.finish("reuse").await), json!("slept"));
    t.stop().await;
}

/// An id reused after a purge while a child of the purged run still runs: the new run's child
/// gets an id of its own (it was derived from execution number 0 in both runs, so the new run
/// failed with `AlreadyExists`), and the old child's answer does not reach the new run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_created_under_a_purged_run_s_id_is_not_confused_with_it() {
    async fn waits_for_a_child(ctx: OrchestrationContext, patient: bool) -> Result<String, Failure> {
        let child = ctx.call_sub_orchestration::<_, String>("waits_for_go", &());
        if patient {
            return child.await;
        }
        // The timer wins; the child is still running when its parent finishes.
        let _ = select2(child, ctx.sleep(Duration::from_millis(10))).await;
        Ok("left its child".into())
    }
    async fn waits_for_go(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
        ctx.wait_for_event("go").await
    }
    let builder = Kiln::builder()
        .orchestration("waits_for_a_child", waits_for_a_child)
        .orchestration("waits_for_go", waits_for_go);
    let t = TestKiln::start(builder).await;
    let reuse = || StartOptions { instance_id: Some("family".into()), ..Default::default() };
    t.client.start_with("waits_for_a_child", Payload::from_json("false").unwrap(), reuse()).await.unwrap();
    let first = t.finish("family").await;
    let old_child = format!("family:{}:0", first.execution);
    t.waiting(&old_child).await;
    assert_eq!(t.client.purge("family").await.unwrap(), 1, "only the finished parent is purged");

    t.client.start_with("waits_for_a_child", Payload::from_json("true").unwrap(), reuse()).await.unwrap();
    let second = t.waiting("family").await;
    assert_ne!(second.execution, first.execution, "a new run, a new execution number");
    let new_child = format!("family:{}:0", second.execution);
    t.waiting(&new_child).await;
    // The old child answers its parent's (purged) run: the new run must not take it.
    t.client.raise_event(&old_child, "go", &"old").await.unwrap();
    assert_eq!(output(&t.finish(&old_child).await), json!("old"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let record = t.client.status("family").await.unwrap().unwrap();
    assert_eq!(record.status, kiln::RuntimeStatus::Running, "{:?}", record.output);
    t.client.raise_event(&new_child, "go", &"new").await.unwrap();
    assert_eq!(output(&t.finish("family").await), json!("new"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_whose_orchestration_is_not_on_the_parent_s_worker_waits_for_one_that_has_it() {
    async fn parent(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
        ctx.call_sub_orchestration_with_id("child", "the-child", &"ada").await
    }
    async fn child(ctx: OrchestrationContext, who: String) -> Result<String, Failure> {
        ctx.call_activity("stamp", &who).await
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    // This worker runs parents only.
    let parents_only = start_on(Kiln::builder().orchestration("parent", parent), &path).await;
    let id = parents_only.client().start("parent", &()).await.unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while parents_only.client().status("the-child").await.unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the child was never created");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = parents_only.client().status(&id).await.unwrap().unwrap();
    assert_eq!(waiting.status, kiln::RuntimeStatus::Running, "{:?}", waiting.failure);
    parents_only.shutdown().await;

    // A worker that has the child (version "2" is its default) runs it and pins that version.
    let builder = Kiln::builder()
        .orchestration("parent", parent)
        .orchestration_version("child", "2", child)
        .activity("stamp", stamp);
    let both = start_on(builder, &path).await;
    let done = both.client().wait_for_completion(&id, DEADLINE).await.unwrap();
    assert_eq!(output(&done), json!("approved by ada"));
    assert_eq!(both.client().status("the-child").await.unwrap().unwrap().version, "2");
    both.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unversioned_instance_keeps_running_its_version_after_a_new_one_is_deployed() {
    async fn v1(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
        let who: String = ctx.wait_for_event("Approval").await?;
        Ok(format!("v1 for {who}"))
    }
    async fn v2(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
        ctx.sleep(Duration::from_millis(1)).await?;
        Ok("v2".into())
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let first = start_on(Kiln::builder().orchestration("order", v1), &path).await;
    let id = first.client().start("order", &()).await.unwrap();
    first.client().wait_until(&id, DEADLINE, |r| !r.waiting_on.is_empty()).await.unwrap().unwrap();
    first.shutdown().await;
    // Version "2" is the new default; the running instance (version "") stays on v1.
    let second =
        start_on(Kiln::builder().orchestration("order", v1).orchestration_version("order", "2", v2), &path).await;
    second.client().raise_event(&id, "Approval", &"ada").await.unwrap();
    let done = second.client().wait_for_completion(&id, DEADLINE).await.unwrap();
    assert_eq!(output(&done), json!("v1 for ada"));
    assert_eq!(done.version, "");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_reserved_for_unpinned_children_cannot_be_registered() {
    let started = Kiln::builder().orchestration_version("order", "*", approve).sqlite(":memory:").start().await;
    assert!(matches!(started, Err(kiln::StartError::ReservedVersion(name)) if name == "order"));
}

/// Runs of `fails_twice`, by key.
static FLAKY_RUNS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Fails the first two times it runs for a key.
async fn fails_twice(_: kiln::ActivityContext, key: String) -> Result<String, Failure> {
    let mut runs = FLAKY_RUNS.lock().unwrap();
    runs.push(key.clone());
    let n = runs.iter().filter(|k| **k == key).count();
    if n < 3 { Err(Failure::new(format!("attempt {n} failed"))) } else { Ok(format!("{key} ok after {n}")) }
}

fn flaky_runs(key: &str) -> usize {
    FLAKY_RUNS.lock().unwrap().iter().filter(|k| *k == key).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_call_is_a_step_when_called_and_races_in_select2() {
    async fn raced(ctx: OrchestrationContext, key: String) -> Result<String, Failure> {
        let policy = kiln::RetryPolicy::new(3, Duration::from_millis(20));
        let call = ctx.call_activity_with_retry::<_, String>("fails_twice", &key, policy);
        match select2(call, ctx.sleep(Duration::from_secs(60))).await {
            Either::Left(result) => result,
            Either::Right(_) => Err(Failure::new("the deadline passed first")),
        }
    }
    async fn called_then_slept(ctx: OrchestrationContext, key: String) -> Result<String, Failure> {
        let policy = kiln::RetryPolicy::new(3, Duration::from_millis(20));
        let call = ctx.call_activity_with_retry::<_, String>("fails_twice", &key, policy);
        ctx.sleep(Duration::from_millis(50)).await?;
        call.await
    }
    let t = TestKiln::start(
        Kiln::builder()
            .orchestration("raced", raced)
            .orchestration("called_then_slept", called_then_slept)
            .activity("fails_twice", fails_twice),
    )
    .await;
    let raced_id = t.client.start("raced", &"raced").await.unwrap();
    assert_eq!(output(&t.finish(&raced_id).await), "raced ok after 3");
    let slept = t.client.start("called_then_slept", &"slept").await.unwrap();
    assert_eq!(output(&t.finish(&slept).await), "slept ok after 3");
    // Before: the first attempt was scheduled at the first await, after the timer.
    let history = t.client.history(&slept).await.unwrap();
    let first_step = history.iter().find(|e| e.event_id == 0).map(|e| e.kind.name());
    assert_eq!(first_step, Some("TaskScheduled"), "{history:?}");
    assert_eq!(flaky_runs("raced") + flaky_runs("slept"), 6);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_no_attempt_can_fix_is_not_retried() {
    async fn wants_a_number(ctx: OrchestrationContext, _: ()) -> Result<u64, Failure> {
        let policy = kiln::RetryPolicy::new(4, Duration::from_millis(10));
        ctx.call_activity_with_retry("counted_text", &(), policy).await
    }
    async fn counted_text(ctx: kiln::ActivityContext, _: ()) -> Result<String, Failure> {
        FAILURE_RUNS.lock().unwrap().push(ctx.instance_id().to_owned());
        Ok("not a number".into())
    }
    let t = TestKiln::start(
        Kiln::builder().orchestration("wants_a_number", wants_a_number).activity("counted_text", counted_text),
    )
    .await;
    let id = t.client.start("wants_a_number", &()).await.unwrap();
    let failed = t.finish(&id).await;
    assert_eq!(failed.failure.as_ref().map(|f| f.error_type.as_str()), Some("SerializationError"), "{failed:?}");
    // Before: every attempt ran the activity again for an output that can never decode.
    assert_eq!(runs_of(&id), 1);
    t.stop().await;
}
