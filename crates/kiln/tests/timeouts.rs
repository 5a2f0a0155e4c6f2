//! Activity timeouts and heartbeats, on SQLite and on PostgreSQL: a hung attempt is failed with a
//! `Timeout` (its future dropped) and retried from its last heartbeat details; a call's
//! schedule-to-close limit ends it for good; registered timeouts apply to calls that set none;
//! timeouts out of bounds are refused; a running activity handed back at shutdown resumes
//! elsewhere from its last heartbeat. Counted by side effects: the items an activity processed,
//! and the starts and drops of its futures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Backend;
use kiln::{
    ActivityContext, ActivityOptions, EventKind, Failure, Kiln, KilnBuilder, OrchestrationContext, RetryPolicy,
    RuntimeConfig, RuntimeStatus, StartError, Timeouts, WaitingOn, error_types,
};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Items processed, by instance, in order (the side effect counted).
static PROCESSED: Mutex<BTreeMap<String, Vec<u32>>> = Mutex::new(BTreeMap::new());
/// One start of an activity future: (attempt, delivery, the item it resumed at).
type Start = (u32, u32, u32);
/// Each start of an activity future, by instance.
static STARTS: Mutex<BTreeMap<String, Vec<Start>>> = Mutex::new(BTreeMap::new());
/// Drops of activity futures, by instance (finished or canceled).
static DROPS: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

struct DropCounter(String);

impl Drop for DropCounter {
    fn drop(&mut self) {
        *DROPS.lock().unwrap().entry(self.0.clone()).or_default() += 1;
    }
}

/// What `crunch` is asked to do.
#[derive(serde::Serialize, serde::Deserialize)]
struct Job {
    items: u32,
    /// Hang (without heartbeats) after this many items, in the first attempt only.
    hang_after: Option<u32>,
}

/// Processes items `0..items` one by one, heartbeating the next item after each; resumes from
/// the last heartbeat details it is given.
async fn crunch(ctx: ActivityContext, job: Job) -> Result<u32, Failure> {
    let id = ctx.instance_id().to_owned();
    let mut next: u32 = ctx.heartbeat_details().unwrap_or(0);
    STARTS.lock().unwrap().entry(id.clone()).or_default().push((ctx.attempt(), ctx.delivery(), next));
    let _dropped = DropCounter(id.clone());
    while next < job.items {
        PROCESSED.lock().unwrap().entry(id.clone()).or_default().push(next);
        next += 1;
        ctx.heartbeat(&next)?;
        if ctx.attempt() == 1 && ctx.delivery() == 1 && job.hang_after == Some(next) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(next)
}

/// Hangs forever, counting its starts.
async fn hang(ctx: ActivityContext, _: ()) -> Result<(), Failure> {
    let id = ctx.instance_id().to_owned();
    STARTS.lock().unwrap().entry(id.clone()).or_default().push((ctx.attempt(), ctx.delivery(), 0));
    let _dropped = DropCounter(id);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

/// `crunch` under a heartbeat timeout, retried.
async fn crunch_with_heartbeats(ctx: OrchestrationContext, job: Job) -> Result<u32, Failure> {
    let options = ActivityOptions::new()
        .heartbeat_timeout(Duration::from_millis(500))
        .start_to_close(Duration::from_secs(60))
        .retry(RetryPolicy::new(3, Duration::from_millis(100)));
    ctx.call_activity_with_options("crunch", &job, options).await
}

/// `hang` under a start-to-close limit, retried within a schedule-to-close limit.
async fn hang_within_limits(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
    let options = ActivityOptions::new()
        .start_to_close(Duration::from_millis(300))
        .schedule_to_close(Duration::from_millis(1_500))
        .retry(RetryPolicy::new(100, Duration::from_millis(100)));
    ctx.call_activity_with_options("hang", &(), options).await
}

/// `hang` with a schedule-to-close limit shorter than its start-to-close: the call's deadline
/// cuts the running attempt.
async fn hang_past_deadline(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
    let options =
        ActivityOptions::new().start_to_close(Duration::from_secs(60)).schedule_to_close(Duration::from_millis(600));
    ctx.call_activity_with_options("hang", &(), options).await
}

/// An activity no worker has, under a schedule-to-close limit.
async fn never_claimed(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
    let options = ActivityOptions::new().schedule_to_close(Duration::from_millis(500));
    ctx.call_activity_with_options("nobody_has_it", &(), options).await
}

/// `hang` with a start-to-close limit of its own, over the registered one.
async fn hang_with_own_limit(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
    ctx.call_activity_with_options("hang", &(), ActivityOptions::new().start_to_close(Duration::from_millis(400))).await
}

/// `crunch` with a heartbeat timeout long enough for it to hang a while, its details saved.
async fn crunch_watched(ctx: OrchestrationContext, job: Job) -> Result<u32, Failure> {
    let options = ActivityOptions::new().heartbeat_timeout(Duration::from_secs(3));
    ctx.call_activity_with_options("crunch", &job, options).await
}

/// How many more attempts of `flaky` fail, by instance.
static FAILS_LEFT: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

/// Fails (retryably) while its instance has failures left, then succeeds.
async fn flaky(ctx: ActivityContext, _: ()) -> Result<u32, Failure> {
    let mut left = FAILS_LEFT.lock().unwrap();
    let left = left.entry(ctx.instance_id().to_owned()).or_insert(u32::MAX);
    if *left > 0 {
        *left -= 1;
        return Err(Failure::typed("NotYet", "not yet"));
    }
    Ok(ctx.attempt())
}

/// `flaky`, retried within a schedule-to-close limit.
async fn flaky_within_limits(ctx: OrchestrationContext, _: ()) -> Result<u32, Failure> {
    let options = ActivityOptions::new()
        .schedule_to_close(Duration::from_millis(800))
        .retry(RetryPolicy::new(1_000, Duration::from_millis(100)));
    ctx.call_activity_with_options("flaky", &(), options).await
}

/// `hang` under a schedule-to-close limit, beside `flaky`: when `flaky` fails the instance, the
/// hung call is still running.
async fn flaky_beside_a_hung_call(ctx: OrchestrationContext, _: ()) -> Result<u32, Failure> {
    let options =
        ActivityOptions::new().start_to_close(Duration::from_secs(60)).schedule_to_close(Duration::from_millis(1_500));
    let hung = ctx.call_activity_with_options::<_, ()>("hang", &(), options);
    let done: u32 = ctx.call_activity("flaky", &()).await?;
    hung.await?;
    Ok(done)
}

/// `hang` with no timeouts of the call's own: the registration's apply.
async fn hang_plainly(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
    ctx.call_activity("hang", &()).await
}

/// A call whose timeout is zero.
async fn zero_timeout(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
    ctx.call_activity_with_options("hang", &(), ActivityOptions::new().start_to_close(Duration::ZERO)).await
}

/// `crunch` with only a long schedule-to-close limit (to be seen in `waitingOn`).
async fn crunch_slowly(ctx: OrchestrationContext, job: Job) -> Result<u32, Failure> {
    let options = ActivityOptions::new()
        .schedule_to_close(Duration::from_secs(600))
        .start_to_close(Duration::from_secs(120))
        .heartbeat_timeout(Duration::from_secs(60));
    ctx.call_activity_with_options("crunch", &job, options).await
}

/// The start-to-close limit `hang` is registered with.
const REGISTERED_LIMIT_MS: u64 = 300;

fn builder() -> KilnBuilder {
    Kiln::builder()
        .config(RuntimeConfig { shutdown_grace: Duration::from_millis(300), ..RuntimeConfig::default() })
        .orchestration("crunch_with_heartbeats", crunch_with_heartbeats)
        .orchestration("hang_within_limits", hang_within_limits)
        .orchestration("hang_plainly", hang_plainly)
        .orchestration("zero_timeout", zero_timeout)
        .orchestration("crunch_slowly", crunch_slowly)
        .orchestration("hang_past_deadline", hang_past_deadline)
        .orchestration("never_claimed", never_claimed)
        .orchestration("hang_with_own_limit", hang_with_own_limit)
        .orchestration("crunch_watched", crunch_watched)
        .orchestration("flaky_within_limits", flaky_within_limits)
        .orchestration("flaky_beside_a_hung_call", flaky_beside_a_hung_call)
        .activity("flaky", flaky)
        .activity("crunch", crunch)
        .activity_with_timeouts(
            "hang",
            Timeouts::new().start_to_close(Duration::from_millis(REGISTERED_LIMIT_MS)),
            hang,
        )
}

fn starts(id: &str) -> Vec<Start> {
    STARTS.lock().unwrap().get(id).cloned().unwrap_or_default()
}

fn processed(id: &str) -> Vec<u32> {
    PROCESSED.lock().unwrap().get(id).cloned().unwrap_or_default()
}

fn drops(id: &str) -> u32 {
    DROPS.lock().unwrap().get(id).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_attempt_times_out_and_the_retry_resumes_from_its_last_heartbeat() {
    for backend in Backend::all().await {
        let kiln = builder().store(backend.open().await).start().await.unwrap();
        let client = kiln.client();
        let id = client.start("crunch_with_heartbeats", &Job { items: 10, hang_after: Some(5) }).await.unwrap();
        let record = client.wait_for_completion(&id, common::DEADLINE).await.unwrap();
        let on = backend.name();
        assert_eq!(common::output(&record), serde_json::json!(10), "{on}");
        // Each item processed once: the second attempt resumed where the first one's last
        // heartbeat said, not from the start.
        assert_eq!(processed(&id), (0..10).collect::<Vec<_>>(), "{on}");
        assert_eq!(starts(&id), vec![(1, 1, 0), (2, 1, 5)], "{on}");
        assert_eq!(drops(&id), 2, "{on}: the hung attempt's future was dropped, the second one finished");
        let history = client.history(&id).await.unwrap();
        let failure = history
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::TaskFailed { failure_details, .. } => Some(failure_details.clone()),
                _ => None,
            })
            .expect("the first attempt failed");
        assert_eq!(failure.error_type, error_types::TIMEOUT, "{on}");
        assert!(failure.error_message.contains("heartbeat timeout of 0.5 s"), "{on}: {}", failure.error_message);
        assert_eq!(failure.last_heartbeat_details.map(|d| d.as_str().to_owned()), Some("5".to_owned()), "{on}");
        assert!(client.metrics().timed_out >= 1, "{on}");
        kiln.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_to_close_ends_a_call_for_good() {
    for backend in Backend::all().await {
        let kiln = builder().store(backend.open().await).start().await.unwrap();
        let client = kiln.client();
        let started = Instant::now();
        let id = client.start("hang_within_limits", &()).await.unwrap();
        let record = client.wait_for_completion(&id, common::DEADLINE).await.unwrap();
        let on = backend.name();
        assert_eq!(record.status, RuntimeStatus::Failed, "{on}");
        let failure = record.failure.unwrap();
        assert_eq!(failure.error_type, error_types::SCHEDULE_TO_CLOSE_TIMEOUT, "{on}: {failure:?}");
        // Attempts of 300 ms, 100 ms apart, within 1.5 s: a handful, not the 100 the policy allows.
        let attempts = starts(&id).len();
        assert!((2..=5).contains(&attempts), "{on}: {attempts} attempts");
        assert!(started.elapsed() < Duration::from_secs(10), "{on}: ended after {:?}", started.elapsed());
        common::wait_for("every attempt's future is dropped", || drops(&id) as usize == attempts).await;
        kiln.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_s_deadline_cuts_a_running_attempt_and_fails_one_never_started() {
    for backend in Backend::all().await {
        let kiln = builder().store(backend.open().await).start().await.unwrap();
        let client = kiln.client();
        let on = backend.name();
        let running = client.start("hang_past_deadline", &()).await.unwrap();
        let unclaimed = client.start("never_claimed", &()).await.unwrap();
        for id in [&running, &unclaimed] {
            let record = client.wait_for_completion(id, common::DEADLINE).await.unwrap();
            let failure = record.failure.expect("failed");
            assert_eq!(failure.error_type, error_types::SCHEDULE_TO_CLOSE_TIMEOUT, "{on}: {failure:?}");
        }
        assert_eq!(starts(&running).len(), 1, "{on}");
        common::wait_for("the cut attempt's future is dropped", || drops(&running) == 1).await;
        kiln.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_timeouts_bound_calls_that_set_none_and_a_call_s_own_win() {
    for backend in Backend::all().await {
        let kiln = builder().store(backend.open().await).start().await.unwrap();
        let client = kiln.client();
        let on = backend.name();
        let plain = client.start("hang_plainly", &()).await.unwrap();
        let own = client.start("hang_with_own_limit", &()).await.unwrap();
        for (id, limit) in [(&plain, "0.3 s"), (&own, "0.4 s")] {
            let record = client.wait_for_completion(id, common::DEADLINE).await.unwrap();
            assert_eq!(record.status, RuntimeStatus::Failed, "{on}");
            let failure = record.failure.unwrap();
            assert_eq!(failure.error_type, error_types::TIMEOUT, "{on}");
            let expected = format!("start-to-close timeout of {limit}");
            assert!(failure.error_message.contains(&expected), "{on}: {}", failure.error_message);
            assert_eq!(starts(id).len(), 1, "{on}: no retry policy, one attempt");
        }
        // The registered limit is recorded with the call that set none (so `waitingOn` shows it).
        let recorded = client.history(&plain).await.unwrap().into_iter().find_map(|e| match e.kind {
            EventKind::TaskScheduled { timeouts, .. } => timeouts.start_to_close_ms,
            _ => None,
        });
        assert_eq!(recorded, Some(REGISTERED_LIMIT_MS), "{on}");
        kiln.shutdown().await;
    }
}

/// A rewind gives a call that ran out of time its schedule-to-close limit again, from the
/// rewind: the attempt done again may fail and be retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_gives_a_call_its_time_again() {
    for backend in Backend::all().await {
        let kiln = builder().store(backend.open().await).start().await.unwrap();
        let client = kiln.client();
        let on = backend.name();
        let id = client.start("flaky_within_limits", &()).await.unwrap();
        let record = client.wait_for_completion(&id, common::DEADLINE).await.unwrap();
        let failure = record.failure.clone().expect("failed");
        assert_eq!(failure.error_type, error_types::SCHEDULE_TO_CLOSE_TIMEOUT, "{on}: {failure:?}");
        let scheduled = |history: &[kiln::HistoryEvent]| {
            history.iter().filter(|e| matches!(e.kind, EventKind::TaskScheduled { .. })).count() as u64
        };
        let attempts = scheduled(&client.history(&id).await.unwrap());
        // After the rewind the attempt done again fails once more, then the retry succeeds.
        FAILS_LEFT.lock().unwrap().insert(id.clone(), 1);
        client.rewind(&id, Some("the service is back")).await.unwrap();
        // (A late deadline message may touch the failed record before the rewind: wait for the
        // end the rewind leads to.)
        let completed = |r: &kiln::InstanceRecord| r.status == RuntimeStatus::Completed;
        let record = client.wait_until(&id, common::DEADLINE, completed).await.unwrap().expect("completes");
        let expected = serde_json::json!(attempts + 1);
        assert_eq!(common::output(&record), expected, "{on}: the attempt done again failed, the next succeeded");
        kiln.shutdown().await;
    }
}

/// A rewind restarts the limits of the calls it runs again only: a call that was still running
/// keeps its deadline, and is failed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_leaves_a_running_call_its_deadline() {
    for backend in Backend::all().await {
        let kiln = builder().store(backend.open().await).start().await.unwrap();
        let client = kiln.client();
        let on = backend.name();
        let id = client.start("flaky_beside_a_hung_call", &()).await.unwrap();
        let failed = client.wait_for_completion(&id, common::DEADLINE).await.unwrap();
        assert_eq!(failed.failure.as_ref().map(|f| f.error_type.as_str()), Some("NotYet"), "{on}");
        FAILS_LEFT.lock().unwrap().insert(id.clone(), 0);
        client.rewind(&id, None).await.unwrap();
        // (A late deadline message may touch the failed record before the rewind: wait for the
        // end the rewind leads to.)
        let failed_by_the_deadline = |r: &kiln::InstanceRecord| {
            r.failure.as_ref().is_some_and(|f| f.error_type == error_types::SCHEDULE_TO_CLOSE_TIMEOUT)
        };
        let record = client.wait_until(&id, common::DEADLINE, failed_by_the_deadline).await.unwrap();
        assert!(record.is_some(), "{on}: the hung call's deadline fails it after the rewind");
        kiln.shutdown().await;
    }
}

/// A running attempt's heartbeat details are saved with its lease as it is renewed (not only
/// when it ends or is handed back), so that a worker lost without a word leaves them behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_details_are_saved_while_the_attempt_runs() {
    let test = common::TestKiln::start(builder()).await;
    let id = test.client.start("crunch_watched", &Job { items: 4, hang_after: Some(4) }).await.unwrap();
    common::wait_for("the activity hangs after 4 items", || processed(&id).len() == 4).await;
    // The lease follows the heartbeat timeout (at least 5 s): renewed, and the details saved,
    // every 1.7 s, before the 3 s heartbeat timeout fails the hung attempt.
    let saved = || {
        let conn =
            rusqlite::Connection::open_with_flags(&test.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        conn.query_row("SELECT heartbeat FROM activities", [], |r| r.get::<_, Option<String>>(0)).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while saved().as_deref() != Some("4") {
        assert!(Instant::now() < deadline, "details saved: {:?}", saved());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    test.client.terminate(&id, None).await.unwrap();
    test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_out_of_bounds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let zero = Kiln::builder()
        .activity_with_timeouts("hang", Timeouts::new().heartbeat_timeout(Duration::ZERO), hang)
        .sqlite(dir.path().join("a.db"))
        .start()
        .await;
    let Err(err @ StartError::InvalidTimeout { .. }) = zero else { panic!("a zero timeout is refused") };
    assert_eq!(err.to_string(), "activity 'hang': heartbeat timeout must be more than zero");
    let huge = Kiln::builder()
        .activity_with_timeouts("hang", Timeouts::new().start_to_close(Duration::from_secs(400 * 86_400)), hang)
        .sqlite(dir.path().join("b.db"))
        .start()
        .await;
    assert!(
        matches!(&huge, Err(StartError::InvalidTimeout { activity, .. }) if activity == "hang"),
        "a timeout beyond a year is refused"
    );

    // In a call, the call fails with a clear reason, and nothing runs.
    let test = common::TestKiln::start(builder()).await;
    let id = test.client.start("zero_timeout", &()).await.unwrap();
    let record = test.finish(&id).await;
    let failure = record.failure.unwrap();
    assert_eq!(failure.error_type, error_types::INVALID_ACTIVITY_OPTIONS);
    assert_eq!(failure.error_message, "start-to-close timeout must be more than zero");
    assert!(starts(&id).is_empty());
    test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_shows_the_attempt_and_its_limits() {
    let test = common::TestKiln::start(builder()).await;
    let id = test.client.start("crunch_slowly", &Job { items: 1, hang_after: Some(1) }).await.unwrap();
    let record = test.waiting(&id).await;
    let [WaitingOn::Activity { name, attempt, deadline, start_to_close_ms, heartbeat_timeout_ms, .. }] =
        record.waiting_on.as_slice()
    else {
        panic!("waits on the activity: {:?}", record.waiting_on)
    };
    assert_eq!((name.as_str(), *attempt), ("crunch", 1));
    assert_eq!((*start_to_close_ms, *heartbeat_timeout_ms), (Some(120_000), Some(60_000)));
    let deadline = deadline.expect("a schedule-to-close deadline").millis() - record.created_at.millis();
    // From the first turn, which follows the start (by far less than 30 s).
    assert!((600_000..630_000).contains(&deadline), "10 minutes after the start: {deadline} ms");
    test.client.terminate(&id, None).await.unwrap();
    test.stop().await;
}

/// A node that stops while an activity runs hands it back with its last heartbeat details: the
/// next node (or this one, restarted) resumes it there, and nothing is lost or done twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_handed_back_at_shutdown_resumes_from_its_last_heartbeat() {
    for backend in Backend::all().await {
        let first = builder().store(backend.open().await).start().await.unwrap();
        let id = first.client().start("crunch_slowly", &Job { items: 8, hang_after: Some(3) }).await.unwrap();
        common::wait_for("the activity hangs after 3 items", || processed(&id).len() == 3).await;
        // On PostgreSQL the second node runs beside the first; on SQLite it is the restart.
        let second = match backend {
            Backend::Postgres { .. } => Some(builder().store(backend.open().await).start().await.unwrap()),
            Backend::Sqlite(_) => None,
        };
        let stopping = Instant::now();
        first.shutdown().await;
        let on = backend.name();
        assert!(stopping.elapsed() < Duration::from_secs(5), "{on}: stopped after {:?}", stopping.elapsed());
        let second = match second {
            Some(second) => second,
            None => builder().store(backend.open().await).start().await.unwrap(),
        };
        let record = second.client().wait_for_completion(&id, common::DEADLINE).await.unwrap();
        assert_eq!(common::output(&record), serde_json::json!(8), "{on}");
        assert_eq!(processed(&id), (0..8).collect::<Vec<_>>(), "{on}: each item once");
        assert_eq!(
            starts(&id),
            vec![(1, 1, 0), (1, 1, 3)],
            "{on}: the same attempt, handed back (not counted), resumed"
        );
        second.shutdown().await;
    }
}
