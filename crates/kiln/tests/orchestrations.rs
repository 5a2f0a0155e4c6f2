//! End-to-end behaviour of the programming model on the SQLite store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DEADLINE, TestKiln, failure_message, output};
use kiln::{
    ActivityContext, ClientError, Either, Failure, Kiln, OrchestrationContext, Payload, RetryPolicy, RuntimeStatus,
    StartOptions, WaitingOn, join_all, select2,
};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

async fn echo(_ctx: ActivityContext, input: Value) -> Result<Value, Failure> {
    Ok(input)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_run_in_order_and_custom_status_is_saved() {
    async fn chain(ctx: OrchestrationContext, n: u32) -> Result<Vec<Value>, Failure> {
        let mut outputs = Vec::new();
        for i in 0..n {
            ctx.set_custom_status(&json!({"step": i}));
            outputs.push(ctx.call_activity("echo", &i).await?);
        }
        Ok(outputs)
    }
    let t = TestKiln::start(Kiln::builder().orchestration("chain", chain).activity("echo", echo)).await;
    let id = t.client.start("chain", &3).await.unwrap();
    let done = t.finish(&id).await;
    assert_eq!(output(&done), json!([0, 1, 2]));
    assert_eq!(done.custom_status.unwrap().as_str(), r#"{"step":2}"#);
    assert!(done.waiting_on.is_empty());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_on_durable_timers_and_see_their_attempt() {
    async fn flaky(ctx: ActivityContext, _: ()) -> Result<u32, Failure> {
        if ctx.attempt() < 3 {
            Err(Failure::new(format!("attempt {} failed", ctx.attempt())))
        } else {
            Ok(ctx.attempt())
        }
    }
    async fn retrying(ctx: OrchestrationContext, max: u32) -> Result<u32, Failure> {
        let policy = RetryPolicy::new(max, Duration::from_millis(50)).with_backoff(2.0);
        ctx.call_activity_with_retry("flaky", &(), policy).await
    }
    let t = TestKiln::start(Kiln::builder().orchestration("retrying", retrying).activity("flaky", flaky)).await;
    let ok = t.client.start("retrying", &3).await.unwrap();
    let gives_up = t.client.start("retrying", &2).await.unwrap();
    assert_eq!(output(&t.finish(&ok).await), json!(3));
    assert_eq!(failure_message(&t.finish(&gives_up).await), "attempt 2 failed");
    let history = t.client.history(&ok).await.unwrap();
    let timers = history.iter().filter(|e| e.kind.name() == "TimerCreated").count();
    assert_eq!(timers, 2, "one durable timer between each pair of attempts");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_total_timeout_stops_early() {
    async fn always_fails(_: ActivityContext, _: ()) -> Result<(), Failure> {
        Err(Failure::new("nope"))
    }
    async fn bounded(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
        let policy = RetryPolicy::new(100, Duration::from_millis(100)).with_total_timeout(Duration::from_millis(250));
        ctx.call_activity_with_retry("always_fails", &(), policy).await
    }
    let t =
        TestKiln::start(Kiln::builder().orchestration("bounded", bounded).activity("always_fails", always_fails)).await;
    let id = t.client.start("bounded", &()).await.unwrap();
    let done = t.finish(&id).await;
    assert_eq!(done.failure.as_ref().unwrap().error_type, "RetryTimeout");
    t.stop().await;
}

async fn child(ctx: OrchestrationContext, n: i64) -> Result<i64, Failure> {
    if n < 0 {
        return Err(Failure::typed("Negative", "child got a negative number"));
    }
    ctx.call_activity("echo", &(n * 2)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestrations_return_results_and_failures() {
    async fn parent(ctx: OrchestrationContext, n: i64) -> Result<Value, Failure> {
        let doubled: i64 = ctx.call_sub_orchestration("child", &n).await?;
        let failed = ctx.call_sub_orchestration::<_, i64>("child", &-1).await.unwrap_err();
        let named: i64 =
            ctx.call_sub_orchestration_with_id("child", &format!("{}-named", ctx.instance_id()), &1).await?;
        Ok(json!({"doubled": doubled, "failed": failed.message(), "named": named}))
    }
    let t = TestKiln::start(
        Kiln::builder().orchestration("parent", parent).orchestration("child", child).activity("echo", echo),
    )
    .await;
    let id = t.client.start("parent", &21).await.unwrap();
    let done = t.finish(&id).await;
    assert_eq!(output(&done), json!({"doubled": 42, "failed": "child got a negative number", "named": 2}));
    let child_record = t.client.status(&format!("{id}-named")).await.unwrap().unwrap();
    assert_eq!(child_record.parent.unwrap().instance_id, id);
    assert_eq!(t.client.purge(&id).await.unwrap(), 4, "purge cascades to all three children");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_raised_before_anyone_waits_are_kept_in_order() {
    async fn collector(ctx: OrchestrationContext, _: ()) -> Result<Vec<u32>, Failure> {
        ctx.wait_for_event::<()>("go").await?;
        let mut items = Vec::new();
        for _ in 0..3 {
            items.push(ctx.wait_for_event::<u32>("item").await?);
        }
        Ok(items)
    }
    let t = TestKiln::start(Kiln::builder().orchestration("collector", collector)).await;
    let id = t.client.start("collector", &()).await.unwrap();
    for n in [1, 2, 3] {
        t.client.raise_event(&id, "item", &n).await.unwrap();
    }
    let waiting = t.waiting(&id).await;
    assert_eq!(waiting.waiting_on, vec![WaitingOn::Event { name: "go".into() }]);
    t.client.raise_event(&id, "go", &()).await.unwrap();
    assert_eq!(output(&t.finish(&id).await), json!([1, 2, 3]));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_takes_the_first_in_history_and_ignores_the_loser() {
    async fn race(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
        let event = ctx.wait_for_event::<String>("answer");
        let timer = ctx.sleep(Duration::from_millis(100));
        let first = match select2(event, timer).await {
            Either::Left(answer) => answer?,
            Either::Right(fired) => fired.map(|_| "timeout".to_owned())?,
        };
        let late = ctx.sleep(Duration::from_millis(300)).await.map(|_| "after");
        Ok(format!("{first} {}", late?))
    }
    let t = TestKiln::start(Kiln::builder().orchestration("race", race)).await;
    let id = t.client.start("race", &()).await.unwrap();
    t.reach(&id, RuntimeStatus::Running).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The timer has won; this event arrives after the race and is buffered, never delivered.
    let _ = t.client.raise_event(&id, "answer", &"late").await;
    assert_eq!(output(&t.finish(&id).await), json!("timeout after"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_all_waits_for_every_activity() {
    async fn fan_out(ctx: OrchestrationContext, n: u32) -> Result<u32, Failure> {
        let calls: Vec<_> = (0..n).map(|i| ctx.call_activity::<_, u32>("echo", &i)).collect();
        let results = join_all(calls).await;
        results.into_iter().sum::<Result<u32, Failure>>()
    }
    let t = TestKiln::start(Kiln::builder().orchestration("fan_out", fan_out).activity("echo", echo)).await;
    let id = t.client.start("fan_out", &100).await.unwrap();
    assert_eq!(output(&t.finish(&id).await), json!(4950));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_restarts_with_a_fresh_history() {
    async fn counter(ctx: OrchestrationContext, n: u32) -> Result<u32, Failure> {
        if n >= 5 {
            return Ok(n);
        }
        if n == 0 {
            // Holds the first execution until the test has seen its number.
            ctx.wait_for_event::<()>("go").await?;
        }
        let next: u32 = ctx.call_activity("echo", &(n + 1)).await?;
        ctx.continue_as_new(&next).await
    }
    let t = TestKiln::start(Kiln::builder().orchestration("counter", counter).activity("echo", echo)).await;
    let id = t.client.start("counter", &0).await.unwrap();
    let first = t.waiting(&id).await.execution;
    t.client.raise_event(&id, "go", &()).await.unwrap();
    let done = t.finish(&id).await;
    assert_eq!(output(&done), json!(5));
    assert_eq!(done.execution, first + 5, "one execution per continue-as-new");
    assert_eq!(done.input.as_str(), "5");
    let history = t.client.history(&id).await.unwrap();
    assert!(history.len() <= 4, "only the last execution's history is kept: {history:?}");
    t.stop().await;
}

async fn waits_forever(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
    ctx.wait_for_event::<()>("never").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_cascades_to_sub_orchestrations() {
    async fn parent(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
        ctx.call_sub_orchestration_with_id("waits_forever", &format!("{}-child", ctx.instance_id()), &()).await
    }
    let t =
        TestKiln::start(Kiln::builder().orchestration("parent", parent).orchestration("waits_forever", waits_forever))
            .await;
    let id = t.client.start("parent", &()).await.unwrap();
    let child_id = format!("{id}-child");
    t.waiting(&id).await;
    t.waiting(&child_id).await;
    t.client.terminate(&id, Some("no longer needed")).await.unwrap();
    let done = t.finish(&id).await;
    assert_eq!(done.status, RuntimeStatus::Terminated);
    assert_eq!(done.output.unwrap().as_str(), r#""no longer needed""#);
    assert_eq!(t.finish(&child_id).await.status, RuntimeStatus::Terminated);
    assert!(matches!(t.client.terminate(&id, None).await, Err(ClientError::Finished { .. })));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_works_on_an_unregistered_orchestration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let first = TestKiln::start_at(Kiln::builder().orchestration("retired", waits_forever), &path).await;
    let id = first.client.start("retired", &()).await.unwrap();
    first.waiting(&id).await;
    first.stop().await;
    let second = TestKiln::start_at(Kiln::builder().orchestration("other", waits_forever), &path).await;
    second.client.terminate(&id, None).await.unwrap();
    assert_eq!(second.finish(&id).await.status, RuntimeStatus::Terminated);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_instances_hold_events_until_resumed() {
    async fn one_event(ctx: OrchestrationContext, _: ()) -> Result<u32, Failure> {
        ctx.wait_for_event("value").await
    }
    let t = TestKiln::start(Kiln::builder().orchestration("one_event", one_event)).await;
    let id = t.client.start("one_event", &()).await.unwrap();
    t.waiting(&id).await;
    t.client.suspend(&id, Some("maintenance")).await.unwrap();
    t.reach(&id, RuntimeStatus::Suspended).await;
    assert!(matches!(t.client.suspend(&id, None).await, Err(ClientError::WrongState { .. })));
    t.client.raise_event(&id, "value", &7).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.client.status(&id).await.unwrap().unwrap().status, RuntimeStatus::Suspended, "held while suspended");
    t.client.resume(&id, None).await.unwrap();
    assert_eq!(output(&t.finish(&id).await), json!(7));
    assert!(matches!(t.client.resume(&id, None).await, Err(ClientError::Finished { .. })));
    t.stop().await;
}

static REWIND_FIXED: AtomicU32 = AtomicU32::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_runs_the_failed_step_again() {
    async fn fragile(_: ActivityContext, _: ()) -> Result<&'static str, Failure> {
        if REWIND_FIXED.load(Ordering::SeqCst) == 0 { Err(Failure::new("downstream is down")) } else { Ok("recovered") }
    }
    async fn uses_fragile(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
        let first: String = ctx.call_activity("echo", &"first").await?;
        let second: String = ctx.call_activity("fragile", &()).await?;
        Ok(vec![first, second])
    }
    let t = TestKiln::start(
        Kiln::builder().orchestration("uses_fragile", uses_fragile).activity("fragile", fragile).activity("echo", echo),
    )
    .await;
    let id = t.client.start("uses_fragile", &()).await.unwrap();
    assert_eq!(failure_message(&t.finish(&id).await), "downstream is down");
    assert!(matches!(t.client.rewind("nope", None).await, Err(ClientError::NotFound(_))));
    REWIND_FIXED.store(1, Ordering::SeqCst);
    t.client.rewind(&id, Some("fixed")).await.unwrap();
    let done = t.client.wait_until(&id, DEADLINE, |r| r.status == RuntimeStatus::Completed).await.unwrap().unwrap();
    assert_eq!(output(&done), json!(["first", "recovered"]));
    assert!(matches!(t.client.rewind(&id, None).await, Err(ClientError::Finished { .. })));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_become_failures_with_their_message() {
    async fn panicky_activity(_: ActivityContext, _: ()) -> Result<(), Failure> {
        panic!("activity exploded")
    }
    async fn calls_panicky(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
        ctx.call_activity("panicky_activity", &()).await
    }
    async fn panicky_orchestration(_: OrchestrationContext, _: ()) -> Result<(), Failure> {
        panic!("orchestration exploded")
    }
    let t = TestKiln::start(
        Kiln::builder()
            .orchestration("calls_panicky", calls_panicky)
            .orchestration("panicky_orchestration", panicky_orchestration)
            .activity("panicky_activity", panicky_activity),
    )
    .await;
    let a = t.client.start("calls_panicky", &()).await.unwrap();
    let b = t.client.start("panicky_orchestration", &()).await.unwrap();
    assert_eq!(failure_message(&t.finish(&a).await), "panicked: activity exploded");
    assert_eq!(failure_message(&t.finish(&b).await), "panicked: orchestration exploded");
    let still_works = t.client.start("calls_panicky", &()).await.unwrap();
    assert_eq!(t.finish(&still_works).await.status, RuntimeStatus::Failed, "workers survive panics");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_limits_fail_clearly() {
    async fn typed(_: OrchestrationContext, n: u32) -> Result<u32, Failure> {
        Ok(n)
    }
    async fn big_status(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
        ctx.set_custom_status(&"x".repeat(20_000));
        Ok(())
    }
    async fn big_output(_: ActivityContext, _: ()) -> Result<String, Failure> {
        Ok("y".repeat(2 << 20))
    }
    async fn calls_big_output(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
        ctx.call_activity("big_output", &()).await
    }
    let t = TestKiln::start(
        Kiln::builder()
            .orchestration("typed", typed)
            .orchestration("big_status", big_status)
            .orchestration("calls_big_output", calls_big_output)
            .activity("big_output", big_output),
    )
    .await;
    let c = &t.client;
    let bad = c.start("typed", &"not a number").await.unwrap();
    let message = failure_message(&t.finish(&bad).await);
    assert!(message.starts_with("orchestration input: invalid type: string"), "{message}");
    assert!(matches!(c.start("missing", &()).await, Err(ClientError::UnknownOrchestration { .. })));
    let options = StartOptions { instance_id: Some("a/b".into()), ..Default::default() };
    assert!(matches!(c.start_with("typed", Payload::null(), options).await, Err(ClientError::InvalidInstanceId(_))));
    let huge = Payload::encode(&"z".repeat(2 << 20)).unwrap();
    assert!(matches!(c.start_with("typed", huge, StartOptions::default()).await, Err(ClientError::PayloadTooLarge(_))));
    let status = c.start("big_status", &()).await.unwrap();
    assert!(failure_message(&t.finish(&status).await).starts_with("custom status is 20002 bytes"));
    let output = c.start("calls_big_output", &()).await.unwrap();
    assert!(failure_message(&t.finish(&output).await).starts_with("activity output is"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_running_instances_are_taken_and_finished_ones_can_be_reused() {
    let t = TestKiln::start(Kiln::builder().orchestration("waits_forever", waits_forever)).await;
    let options = || StartOptions { instance_id: Some("order-1".into()), ..Default::default() };
    t.client.start_with("waits_forever", Payload::null(), options()).await.unwrap();
    let first = t.client.status("order-1").await.unwrap().unwrap().execution;
    let again = t.client.start_with("waits_forever", Payload::null(), options()).await;
    assert!(matches!(again, Err(ClientError::AlreadyExists { .. })), "{again:?}");
    t.client.terminate("order-1", None).await.unwrap();
    t.finish("order-1").await;
    t.client.start_with("waits_forever", Payload::null(), options()).await.unwrap();
    let record = t.waiting("order-1").await;
    assert_eq!((record.status, record.execution), (RuntimeStatus::Running, first + 1), "its numbers go on");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_names_the_activity_timer_and_event() {
    async fn slow(_: ActivityContext, _: ()) -> Result<(), Failure> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    }
    async fn three_ways(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
        let activity = ctx.call_activity::<_, ()>("slow", &());
        let timer = ctx.sleep(Duration::from_secs(3600));
        let event = ctx.wait_for_event::<()>("poke");
        let _ = select2(activity, select2_timer_event(timer, event)).await;
        Ok(())
    }
    fn select2_timer_event(timer: kiln::DurableFuture<()>, event: kiln::DurableFuture<()>) -> kiln::DurableFuture<()> {
        drop(timer);
        event
    }
    let t = TestKiln::start(Kiln::builder().orchestration("three_ways", three_ways).activity("slow", slow)).await;
    let id = t.client.start("three_ways", &()).await.unwrap();
    let record = t.waiting(&id).await;
    let kinds: Vec<&str> = record
        .waiting_on
        .iter()
        .map(|w| match w {
            WaitingOn::Activity { .. } => "activity",
            WaitingOn::Timer { .. } => "timer",
            WaitingOn::Event { .. } => "event",
            WaitingOn::SubOrchestration { .. } => "sub",
        })
        .collect();
    assert_eq!(kinds, vec!["activity", "timer", "event"]);
    t.client.terminate(&id, None).await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_and_purges() {
    let t = TestKiln::start(
        Kiln::builder().orchestration("chain", |_: OrchestrationContext, n: u32| async move { Ok::<_, Failure>(n) }),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(t.client.start("chain", &n).await.unwrap());
    }
    for id in &ids {
        t.finish(id).await;
    }
    let mut query =
        kiln::InstanceQuery { page_size: 2, statuses: vec![RuntimeStatus::Completed], ..Default::default() };
    let mut listed = 0;
    loop {
        let page = t.client.list(&query).await.unwrap();
        listed += page.instances.len();
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(listed, 5);
    assert_eq!(t.client.purge(&ids[0]).await.unwrap(), 1);
    assert!(t.client.status(&ids[0]).await.unwrap().is_none());
    assert_eq!(t.client.purge_many(&kiln::PurgeFilter::default()).await.unwrap(), 4);
    assert!(matches!(
        t.client.wait_for_completion("gone", Duration::from_millis(10)).await,
        Err(ClientError::NotFound(_))
    ));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_context_gives_a_stable_idempotency_key() {
    async fn keyed(ctx: ActivityContext, _: ()) -> Result<String, Failure> {
        Ok(format!("{}|{}|{}", ctx.idempotency_key(), ctx.attempt(), ctx.delivery()))
    }
    async fn calls_keyed(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
        let a: String = ctx.call_activity("keyed", &()).await?;
        let b: String = ctx.call_activity("keyed", &()).await?;
        Ok(vec![a, b, ctx.new_uuid()])
    }
    let t = TestKiln::start(Kiln::builder().orchestration("calls_keyed", calls_keyed).activity("keyed", keyed)).await;
    let id = t.client.start("calls_keyed", &()).await.unwrap();
    let done = t.finish(&id).await;
    let (out, execution) = (output(&done), done.execution);
    assert_eq!(out[0], json!(format!("{id}:{execution}:0|1|1")));
    assert_eq!(out[1], json!(format!("{id}:{execution}:1|1|1")));
    assert_eq!(out[2].as_str().unwrap().len(), 36);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_completion_times_out_without_polling() {
    let t = TestKiln::start(Kiln::builder().orchestration("waits_forever", waits_forever)).await;
    let id = t.client.start("waits_forever", &()).await.unwrap();
    let result = t.client.wait_for_completion(&id, Duration::from_millis(200)).await;
    assert!(matches!(result, Err(ClientError::Timeout(_))));
    t.stop().await;
}

static SHUTDOWN_RUNS: AtomicU32 = AtomicU32::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_running_activities_within_the_grace_period_and_releases_the_rest() {
    async fn sleeps(_: ActivityContext, millis: u64) -> Result<u64, Failure> {
        SHUTDOWN_RUNS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok(millis)
    }
    async fn calls_sleeps(ctx: OrchestrationContext, millis: u64) -> Result<u64, Failure> {
        ctx.call_activity("sleeps", &millis).await
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let start = || async {
        let config = kiln::RuntimeConfig { shutdown_grace: Duration::from_millis(600), ..Default::default() };
        let builder = Kiln::builder().config(config).sqlite(&path);
        builder.orchestration("calls_sleeps", calls_sleeps).activity("sleeps", sleeps).start().await.unwrap()
    };
    let kiln = start().await;
    let client = kiln.client();
    let short = client.start("calls_sleeps", &200u64).await.unwrap();
    let long = client.start("calls_sleeps", &1_500u64).await.unwrap();
    for id in [&short, &long] {
        client.wait_until(id, DEADLINE, |r| !r.waiting_on.is_empty()).await.unwrap().unwrap();
    }
    while SHUTDOWN_RUNS.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kiln.shutdown().await;

    let kiln = start().await;
    let client = kiln.client();
    let short_done = client.wait_for_completion(&short, DEADLINE).await.unwrap();
    assert_eq!(output(&short_done), json!(200));
    let long_done = client.wait_for_completion(&long, DEADLINE).await.unwrap();
    assert_eq!(output(&long_done), json!(1_500));
    assert_eq!(SHUTDOWN_RUNS.load(Ordering::SeqCst), 3, "only the released activity ran again");
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_served_from_memory_equal_the_stored_rows() {
    async fn mixed(ctx: OrchestrationContext, n: u32) -> Result<u32, Failure> {
        ctx.set_custom_status(&json!({"n": n}));
        let child = format!("{}-child", ctx.instance_id());
        let doubled: u32 = ctx.call_sub_orchestration_with_id("double", &child, &n).await?;
        if n == 1 {
            return Err(Failure::new("one is not allowed"));
        }
        if n == 2 {
            return ctx.continue_as_new(&3).await;
        }
        Ok(doubled)
    }
    async fn double(ctx: OrchestrationContext, n: u32) -> Result<u32, Failure> {
        ctx.call_activity("echo", &(n * 2)).await
    }
    let t = TestKiln::start(
        Kiln::builder()
            .orchestration("mixed", mixed)
            .orchestration("double", double)
            .orchestration("waits_forever", waits_forever)
            .activity("echo", echo),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..3u32 {
        let id = t.client.start("mixed", &n).await.unwrap();
        t.finish(&id).await;
        ids.push(format!("{id}-child"));
        ids.push(id);
    }
    let waiting = t.client.start("waits_forever", &()).await.unwrap();
    t.waiting(&waiting).await;
    let terminated = t.client.start("waits_forever", &()).await.unwrap();
    t.client.terminate(&terminated, Some("enough")).await.unwrap();
    t.finish(&terminated).await;
    ids.extend([waiting, terminated]);

    // Listing always reads the database; status reads of these instances come from memory.
    let stored = t.client.list(&kiln::InstanceQuery { page_size: 100, ..Default::default() }).await.unwrap();
    assert_eq!(stored.instances.len(), ids.len());
    for row in &stored.instances {
        assert!(ids.contains(&row.instance_id));
        assert_eq!(t.client.status(&row.instance_id).await.unwrap().as_ref(), Some(row));
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_sent_under_a_name_no_client_could_raise_fails_the_sender() {
    async fn sends(ctx: OrchestrationContext, name: String) -> Result<(), Failure> {
        ctx.send_event("elsewhere", &name, &());
        Ok(())
    }
    let t = TestKiln::start(Kiln::builder().orchestration("sends", sends)).await;
    for name in ["line\r\nbreak", ""] {
        let id = t.client.start("sends", &name).await.unwrap();
        let message = failure_message(&t.finish(&id).await);
        assert!(message.contains("event name"), "{message}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_and_correlation_carry_on_to_new_executions_and_sub_orchestrations() {
    async fn parent(ctx: OrchestrationContext, restarts: u32) -> Result<u32, Failure> {
        if restarts > 0 {
            return ctx.continue_as_new(&(restarts - 1)).await;
        }
        ctx.call_sub_orchestration_with_id("child", &format!("{}-child", ctx.instance_id()), &()).await
    }
    async fn child(_ctx: OrchestrationContext, _: ()) -> Result<u32, Failure> {
        Ok(7)
    }
    let t = TestKiln::start(Kiln::builder().orchestration("parent", parent).orchestration("child", child)).await;
    let trace = kiln::TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None).unwrap();
    let options = StartOptions {
        instance_id: Some("job".into()),
        labels: kiln::Labels::new([("customer_id", "cust-123")]).unwrap(),
        correlation: Some(kiln::correlate(Some(trace), None)),
        ..Default::default()
    };
    let started = t.client.start_instance("parent", Payload::encode(&2).unwrap(), options.clone()).await.unwrap();
    assert_eq!(started.correlation, options.correlation);
    let done = t.finish("job").await;
    assert_eq!(output(&done), json!(7));
    assert_eq!(done.input.as_str(), "0", "it continued as new twice");
    let child = t.finish("job-child").await;
    for record in [&done, &child] {
        assert_eq!(record.labels, options.labels, "{}", record.instance_id);
        assert_eq!(record.correlation, options.correlation, "{}", record.instance_id);
        assert_eq!(record.correlation.as_ref().unwrap().id, "4bf92f3577b34da6a3ce929d0e0e4736");
        // The history of the execution now running says so too (the new execution's start was
        // written by the turn that continued as new; the child's by its parent's turn).
        let history = t.client.history(&record.instance_id).await.unwrap();
        let started = history.iter().find(|e| matches!(e.kind, kiln::EventKind::ExecutionStarted { .. }));
        let Some(kiln::EventKind::ExecutionStarted { labels, correlation, .. }) = started.map(|e| &e.kind) else {
            panic!("{history:?}");
        };
        assert_eq!((labels, correlation), (&options.labels, &options.correlation), "{}", record.instance_id);
    }
    // Without a correlation, a start begins a trace of its own, named by its trace id.
    let started = t.client.start_instance("child", Payload::null(), StartOptions::default()).await.unwrap();
    let correlation = t.finish(&started.instance_id).await.correlation.unwrap();
    assert_eq!(correlation.id, correlation.trace.trace_id());
    assert_eq!(Some(correlation), started.correlation);
    t.stop().await;
}
