//! Retention, on SQLite and on PostgreSQL: finished instances go once their policy's time has
//! passed (per status and per orchestration), unfinished ones never do; the background purger
//! runs on one node at a time; bad settings are refused at start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, DEADLINE};
use kiln::{
    Failure, InvalidRetention, Keep, Kiln, KilnBuilder, OrchestrationContext, Retention, RetentionPolicy,
    RuntimeConfig, RuntimeStatus, StartError, Timestamp,
};
use std::collections::BTreeMap;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);

async fn quick(_: OrchestrationContext, _: ()) -> Result<(), Failure> {
    Ok(())
}

async fn boom(_: OrchestrationContext, _: ()) -> Result<(), Failure> {
    Err(Failure::typed("Boom", "it broke"))
}

async fn waits(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
    ctx.wait_for_event::<()>("go").await
}

async fn sleeps(ctx: OrchestrationContext, _: ()) -> Result<(), Failure> {
    ctx.sleep(Duration::from_secs(3600)).await
}

/// `quick`, `boom`, `waits`, `sleeps`, and `kept` (like `quick`, with a policy of its own).
fn builder(retention: Retention) -> KilnBuilder {
    let config = RuntimeConfig { retention, shutdown_grace: Duration::from_millis(200), ..RuntimeConfig::default() };
    Kiln::builder()
        .config(config)
        .orchestration("quick", quick)
        .orchestration("kept", quick)
        .orchestration("boom", boom)
        .orchestration("waits", waits)
        .orchestration("sleeps", sleeps)
}

/// Completed and terminated: a minute; failed: 30 days; `kept`'s completed ones: forever. The
/// background purger waits a day (the tests apply the policies at times of their choosing).
fn policies() -> Retention {
    let minute = Keep::For(MINUTE);
    let default = RetentionPolicy { completed: minute, failed: Keep::For(30 * DAY), terminated: minute };
    Retention {
        check_every: DAY,
        default,
        orchestrations: BTreeMap::from([("kept".to_owned(), RetentionPolicy { completed: Keep::Forever, ..default })]),
        ..Retention::default()
    }
}

fn later(by: Duration) -> Timestamp {
    Timestamp(kiln_core::time::now().0 + by.as_millis() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_instances_go_when_their_policy_says_and_unfinished_ones_never() {
    for backend in Backend::all().await {
        let kiln = builder(policies()).store(backend.open().await).start().await.unwrap();
        let client = kiln.client();
        let mut ids = BTreeMap::new();
        for name in ["quick", "kept", "boom", "waits", "sleeps"] {
            ids.insert(name, client.start(name, &()).await.unwrap());
        }
        let terminated = client.start("waits", &()).await.unwrap();
        let suspended = client.start("waits", &()).await.unwrap();
        for name in ["quick", "kept", "boom"] {
            client.wait_for_completion(&ids[name], DEADLINE).await.unwrap();
        }
        for id in [&ids["waits"], &ids["sleeps"], &terminated, &suspended] {
            client.wait_until(id, DEADLINE, |r| !r.waiting_on.is_empty()).await.unwrap().unwrap();
        }
        client.terminate(&terminated, None).await.unwrap();
        client.suspend(&suspended, None).await.unwrap();
        client.wait_until(&terminated, DEADLINE, |r| r.status == RuntimeStatus::Terminated).await.unwrap().unwrap();
        client.wait_until(&suspended, DEADLINE, |r| r.status == RuntimeStatus::Suspended).await.unwrap().unwrap();
        let exists = |id: String| {
            let client = client.clone();
            async move { client.status(&id).await.unwrap().is_some() }
        };

        let pass = kiln.apply_retention(later(Duration::from_secs(30))).await.unwrap();
        assert_eq!(pass.purged, 0, "{}: nothing is a minute old", backend.name());
        let pass = kiln.apply_retention(later(2 * MINUTE)).await.unwrap();
        assert_eq!(pass.purged, 2, "{}: quick and the terminated one", backend.name());
        assert!(!exists(ids["quick"].clone()).await && !exists(terminated.clone()).await);
        assert!(exists(ids["kept"].clone()).await, "{}: kept's completed instances stay", backend.name());
        assert!(exists(ids["boom"].clone()).await, "{}: failures stay 30 days", backend.name());
        let pass = kiln.apply_retention(later(31 * DAY)).await.unwrap();
        assert_eq!(pass.purged, 1, "{}: the failure, after 30 days", backend.name());
        let pass = kiln.apply_retention(later(3650 * DAY)).await.unwrap();
        assert_eq!(pass.purged, 0, "{}: nothing else, ever", backend.name());
        kiln.shutdown().await;
        let off = Retention { enabled: false, ..policies() };
        let kiln = builder(off).store(backend.open().await).start().await.unwrap();
        let client = kiln.client();
        assert_eq!(kiln.apply_retention(later(3650 * DAY)).await.unwrap().purged, 0, "retention off");
        for id in [&ids["kept"], &ids["waits"], &ids["sleeps"], &suspended] {
            let record = client.status(id).await.unwrap().unwrap_or_else(|| panic!("{}: {id} purged", backend.name()));
            assert!(record.status == RuntimeStatus::Completed || !record.status.is_terminal(), "{record:?}");
        }
        kiln.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_purger_runs_on_one_node_at_a_time() {
    let backends = Backend::all().await;
    // Two nodes share a database on PostgreSQL only (a SQLite file has one process).
    let Some(backend) = backends.iter().find(|b| b.name() == "postgres") else { return };
    let retention = Retention { check_every: Duration::from_secs(2), ..policies() };
    let first = builder(retention.clone()).store(backend.open().await).start().await.unwrap();
    let second = builder(retention).store(backend.open().await).start().await.unwrap();
    let id = first.client().start("quick", &()).await.unwrap();
    first.client().wait_for_completion(&id, DEADLINE).await.unwrap();
    // Passes at 2 s and 4 s after start (the first waits one interval).
    tokio::time::sleep(Duration::from_millis(4_800)).await;
    let passes = [first.metrics().retention_passes, second.metrics().retention_passes];
    assert!(passes.iter().sum::<u64>() >= 2 && passes.contains(&0), "passes per node: {passes:?}");
    // The holder gives the lease up as it stops; the other takes it at its next check.
    let (holder, other) = if passes[0] > 0 { (first, second) } else { (second, first) };
    holder.shutdown().await;
    let lease = other.store().get_setting(kiln::retention::PURGER_LEASE).await.unwrap();
    assert_eq!(lease.as_deref(), Some("- 0"), "given up");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(other.metrics().retention_passes >= 1, "no takeover: {:?}", other.metrics());
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_that_cannot_work_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let start = |retention: Retention| builder(retention).sqlite(dir.path().join("kiln.db")).start();
    let short = Retention {
        default: RetentionPolicy { completed: Keep::For(Duration::from_secs(59)), ..RetentionPolicy::default() },
        ..Retention::default()
    };
    let err = start(short).await.err().expect("refused");
    assert!(matches!(err, StartError::InvalidRetention(InvalidRetention::TooShort { status: "completed", .. })));
    assert!(err.to_string().contains("at least a minute"), "{err}");
    let unknown = Retention {
        orchestrations: BTreeMap::from([("nope".to_owned(), RetentionPolicy::default())]),
        ..Retention::default()
    };
    let err = start(unknown).await.err().expect("refused");
    assert_eq!(err.to_string(), "retention names orchestration 'nope', which is not registered");
    let zero = Retention { check_every: Duration::ZERO, ..Retention::default() };
    assert!(matches!(start(zero).await.err(), Some(StartError::InvalidRetention(InvalidRetention::OutOfBounds))));
}
