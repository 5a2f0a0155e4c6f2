//! Concurrency limits per activity name: one kind of work cannot take every slot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kiln::{ActivityContext, Failure, Kiln, OrchestrationContext, RuntimeConfig, RuntimeStatus, join_all};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// `slow` activities running now, and the most ever at once.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);
/// Opened once the test has seen what it needs; `slow` activities wait for it.
static GATE: AtomicBool = AtomicBool::new(false);
static SERIALIZE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn slow(_: ActivityContext, n: u32) -> Result<u32, Failure> {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MOST.fetch_max(now, Ordering::SeqCst);
    while !GATE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    Ok(n)
}

async fn quick(_: ActivityContext, n: u32) -> Result<u32, Failure> {
    Ok(n + 1)
}

async fn many_slow(ctx: OrchestrationContext, count: u32) -> Result<Vec<u32>, Failure> {
    let calls = (0..count).map(|n| ctx.call_activity::<_, u32>("slow", &n)).collect();
    join_all(calls).await.into_iter().collect()
}

async fn one_quick(ctx: OrchestrationContext, n: u32) -> Result<u32, Failure> {
    ctx.call_activity("quick", &n).await
}

async fn run(config: RuntimeConfig, slow_instances: u32, expected_most: usize) {
    let _serial = SERIALIZE.lock().await;
    GATE.store(false, Ordering::SeqCst);
    MOST.store(0, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let kiln = Kiln::builder()
        .config(config)
        .orchestration("many_slow", many_slow)
        .orchestration("one_quick", one_quick)
        .activity("slow", slow)
        .activity("quick", quick)
        .sqlite(dir.path().join("kiln.db"))
        .start()
        .await
        .unwrap();
    let client = kiln.client();
    let mut slow_ids = Vec::new();
    for _ in 0..slow_instances {
        slow_ids.push(client.start("many_slow", &4u32).await.unwrap());
    }
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while MOST.load(Ordering::SeqCst) < expected_most {
        assert!(std::time::Instant::now() < deadline, "the slow activities never filled their slots");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every slow activity is blocked; other work still gets a slot.
    let quick_id = client.start("one_quick", &1u32).await.unwrap();
    let done = client.wait_for_completion(&quick_id, Duration::from_secs(10)).await;
    assert!(
        done.as_ref().is_ok_and(|r| r.status == RuntimeStatus::Completed),
        "other work waited behind the slow activities: {done:?}"
    );
    assert_eq!(MOST.load(Ordering::SeqCst), expected_most, "slow activities beyond their limit ran");
    GATE.store(true, Ordering::SeqCst);
    for id in slow_ids {
        assert_eq!(client.wait_for_completion(&id, common::DEADLINE).await.unwrap().status, RuntimeStatus::Completed);
    }
    kiln.shutdown().await;
}

/// The default limit (three quarters of the slots) leaves room for other work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_kind_of_work_cannot_take_every_slot() {
    let config = RuntimeConfig { activity_concurrency: 4, ..RuntimeConfig::default() };
    run(config, 2, 3).await;
}

/// A name's own limit, below the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_can_have_its_own_limit() {
    let config = RuntimeConfig {
        activity_concurrency: 16,
        activity_limits: HashMap::from([("slow".to_owned(), 2)]),
        ..RuntimeConfig::default()
    };
    run(config, 2, 2).await;
}
