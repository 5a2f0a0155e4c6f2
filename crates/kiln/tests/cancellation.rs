//! Terminating an instance cancels its activities: running ones have their future dropped, queued
//! ones never start, and none of them runs again after a restart — on SQLite (one process) and
//! on PostgreSQL across nodes (the node running the activity learns it when it renews the lease).
//! Counted by side effects: starts and drops of the activity's future.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kiln::{ActivityContext, Failure, Kiln, KilnBuilder, OrchestrationContext, RuntimeConfig, RuntimeStatus, join_all};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Starts and drops of `endless` runs, by instance and branch.
static STARTS: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());
static DROPS: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

fn count(map: &Mutex<BTreeMap<String, u32>>, key: &str) -> u32 {
    map.lock().unwrap().get(key).copied().unwrap_or(0)
}

fn total(map: &Mutex<BTreeMap<String, u32>>, prefix: &str) -> u32 {
    map.lock().unwrap().iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, n)| n).sum()
}

/// Counts its drop: the activity's future was dropped (canceled) or finished.
struct DropCounter(String);

impl Drop for DropCounter {
    fn drop(&mut self) {
        *DROPS.lock().unwrap().entry(self.0.clone()).or_default() += 1;
    }
}

/// Runs until canceled.
async fn endless(ctx: ActivityContext, branch: u32) -> Result<u32, Failure> {
    let key = format!("{}/{branch}", ctx.instance_id());
    *STARTS.lock().unwrap().entry(key.clone()).or_default() += 1;
    let _dropped = DropCounter(key);
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Two endless activities in parallel.
async fn two_endless(ctx: OrchestrationContext, _: ()) -> Result<Vec<u32>, Failure> {
    let branches = (0..2).map(|branch| ctx.call_activity::<_, u32>("endless", &branch));
    join_all(branches.collect()).await.into_iter().collect()
}

fn config(lease: Duration) -> RuntimeConfig {
    RuntimeConfig {
        // One slot: the second branch waits in the queue while the first runs.
        activity_concurrency: 1,
        lease_duration: lease,
        shutdown_grace: Duration::from_millis(200),
        ..RuntimeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_cancels_running_activities_and_queued_ones_never_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let builder = || {
        Kiln::builder()
            .config(config(Duration::from_secs(30)))
            .orchestration("two_endless", two_endless)
            .activity("endless", endless)
            .sqlite(&path)
    };
    let kiln = builder().start().await.unwrap();
    let client = kiln.client();
    let id = client.start("two_endless", &()).await.unwrap();
    let started = format!("{id}/");
    common::wait_for("the first branch starts", || total(&STARTS, &started) == 1).await;
    client.terminate(&id, Some("enough")).await.unwrap();
    let record = client.wait_for_completion(&id, common::DEADLINE).await.unwrap();
    assert_eq!(record.status, RuntimeStatus::Terminated);
    // The running branch's future is dropped (the lease is 30 s: not by a lapse).
    common::wait_for("the running activity is canceled", || total(&DROPS, &started) == 1).await;
    assert_eq!(kiln.client().metrics().canceled, 1);
    kiln.shutdown().await;

    // Neither branch runs after a restart.
    let kiln = builder().start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(total(&STARTS, &started), 1, "only the first branch ever started: {:?}", STARTS.lock().unwrap());
    kiln.shutdown().await;
}

/// Two PostgreSQL nodes: one runs only the activity, the other only the orchestration, so the
/// terminate commits on the node that does not run the activity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_another_nodes_terminate_cancels_at_the_next_lease_renewal() {
    let url = std::env::var("KILN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("kiln_cancel_{}", uuid::Uuid::new_v4().simple());
    let store = || async {
        let mut options = kiln_postgres::PostgresOptions::new(url.clone());
        options.schema = Some(schema.clone());
        options.pool_size = 4;
        kiln_postgres::PostgresStore::connect(options).await
    };
    let worker_store = match store().await {
        Ok(store) => store,
        Err(err) => {
            let required = std::env::var("KILN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
            assert!(!required, "PostgreSQL is required (KILN_REQUIRE_POSTGRES=1): {err}");
            eprintln!("skipped: PostgreSQL at {url} is not available ({err})");
            return;
        }
    };
    let lease = Duration::from_secs(3);
    let start = |builder: KilnBuilder, store| builder.config(config(lease)).store(std::sync::Arc::new(store)).start();
    let activities = start(Kiln::builder().activity("endless", endless), worker_store).await.unwrap();
    let orchestrations =
        start(Kiln::builder().orchestration("two_endless", two_endless), store().await.unwrap()).await.unwrap();
    let client = orchestrations.client();
    let id = client.start("two_endless", &()).await.unwrap();
    let started = format!("{id}/");
    common::wait_for("the first branch starts", || total(&STARTS, &started) == 1).await;
    client.terminate(&id, None).await.unwrap();
    client.wait_for_completion(&id, common::DEADLINE).await.unwrap();
    // Canceled at the next renewal (a third of the lease), not after the lease lapsed.
    let terminated = Instant::now();
    common::wait_for("the running activity is canceled", || total(&DROPS, &started) == 1).await;
    assert!(terminated.elapsed() < lease, "canceled after {:?}", terminated.elapsed());
    tokio::time::sleep(lease).await;
    assert_eq!(total(&STARTS, &started), 1, "the queued branch never starts: {:?}", STARTS.lock().unwrap());
    assert_eq!(count(&DROPS, &format!("{id}/0")) + count(&DROPS, &format!("{id}/1")), 1);
    activities.shutdown().await;
    orchestrations.shutdown().await;
    let _ = kiln_postgres::schema::drop_schema(&url, &schema).await;
}
