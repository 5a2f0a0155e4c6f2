//! Fault injection at every store write point, through `common::faulty_store::FaultyStore`: calls
//! fail before they reach the store, fail *after* the store committed (the caller never hears that
//! it worked, as when a connection drops during `COMMIT`), or are delayed. Under a steady rate of
//! such faults, orchestrations with activities, timers, sub-orchestrations and fan-outs must all
//! complete with their own outputs and sound histories; and what the running store served from
//! memory must equal what a fresh process reads from disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::faulty_store::{Fault, FaultyStore};
use kiln::{
    ActivityContext, ClientError, Failure, Kiln, OrchestrationContext, RuntimeConfig, RuntimeStatus, StartOptions,
    Store, StoreError, join_all,
};
use kiln_core::{EventKind, HistoryEvent, Payload};
use kiln_store::{InstanceQuery, InstanceRecord};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn square(ctx: ActivityContext, n: u64) -> Result<u64, Failure> {
    *EFFECTS.lock().unwrap().entry(ctx.idempotency_key()).or_default() += 1;
    Ok(n * n)
}

/// Runs of each activity, by its idempotency key (`instance:execution:step`): at least one
/// each, whatever the faults.
static EFFECTS: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

/// Three steps in sequence, a durable timer, a child orchestration and a fan-out of three: the
/// output is a function of the input alone.
async fn workflow(ctx: OrchestrationContext, n: u64) -> Result<u64, Failure> {
    let mut total = 0;
    for i in 0..3 {
        total += ctx.call_activity::<_, u64>("square", &(n + i)).await?;
    }
    ctx.sleep(Duration::from_millis(20)).await?;
    total += ctx.call_sub_orchestration::<_, u64>("child", &n).await?;
    let fan = join_all((0..3).map(|i| ctx.call_activity::<_, u64>("square", &(n * 10 + i))).collect()).await;
    for result in fan {
        total += result?;
    }
    Ok(total)
}

async fn child(ctx: OrchestrationContext, n: u64) -> Result<u64, Failure> {
    ctx.call_activity("square", &(n + 100)).await
}

fn expected(n: u64) -> u64 {
    let sq = |x: u64| x * x;
    (0..3).map(|i| sq(n + i)).sum::<u64>() + sq(n + 100) + (0..3).map(|i| sq(n * 10 + i)).sum::<u64>()
}

/// Starts `n` through the client until the store takes it: a caller-chosen id with an
/// idempotency key for even `n` (a retry finds the first attempt), a generated id through the
/// first-turn fast path for odd `n` (a start whose success was not heard leaves an instance the
/// caller does not know of, which must complete all the same).
async fn start_until_accepted(client: &kiln::KilnClient, tag: &str, n: u64) -> String {
    let input = Payload::encode(&n).unwrap();
    loop {
        let started = if n.is_multiple_of(2) {
            let options = StartOptions { instance_id: Some(format!("{tag}-job-{n}")), ..Default::default() };
            let key = format!("{tag}-key-{n}");
            client
                .start_idempotent("workflow", input.clone(), options, &key, "same", Duration::from_secs(3600))
                .await
                .map(|(started, _)| started.instance_id)
        } else {
            client.start_with("workflow", input.clone(), StartOptions::default()).await
        };
        match started {
            Ok(id) => return id,
            Err(ClientError::Store(StoreError::Unavailable(_))) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(other) => panic!("start {n}: {other}"),
        }
    }
}

/// Every instance in the store (by id): its record.
async fn all_instances(store: &dyn Store) -> BTreeMap<String, InstanceRecord> {
    let mut all = BTreeMap::new();
    let mut query = InstanceQuery { page_size: 500, ..InstanceQuery::default() };
    loop {
        let page = store.list_instances(&query).await.unwrap();
        for record in page.instances {
            all.insert(record.instance_id.clone(), record);
        }
        match page.next {
            Some(cursor) => query.after = Some(cursor),
            None => return all,
        }
    }
}

/// Checks that a finished instance's history is sound: one start, one completion, one result
/// per scheduled task and timer.
fn check_history(id: &str, history: &[HistoryEvent]) {
    let count = |name: &str| history.iter().filter(|e| e.kind.name() == name).count();
    assert_eq!(count("ExecutionStarted"), 1, "{id}: {history:?}");
    assert_eq!(count("ExecutionCompleted"), 1, "{id}: {history:?}");
    let mut scheduled = BTreeSet::new();
    let mut finished = BTreeSet::new();
    for event in history {
        match &event.kind {
            EventKind::TaskScheduled { .. }
            | EventKind::TimerCreated { .. }
            | EventKind::SubOrchestrationInstanceCreated { .. } => {
                assert!(scheduled.insert(event.event_id), "{id}: step {} scheduled twice", event.event_id);
            }
            EventKind::TaskCompleted { task_scheduled_id: step, .. }
            | EventKind::TimerFired { timer_id: step, .. }
            | EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id: step, .. } => {
                assert!(finished.insert(*step as i64), "{id}: step {step} finished twice");
            }
            _ => {}
        }
    }
    assert_eq!(scheduled, finished, "{id}: every step scheduled finished once");
}

/// Runs the jobs through `store` under faults (`tag` keeps their ids apart from other tests'),
/// checks them, and compares what the store served with what `reopen` reads afterwards.
async fn run_under_faults(tag: &str, store: Arc<dyn Store>, reopen: impl AsyncFnOnce() -> Arc<dyn Store>) {
    const JOBS: u64 = 60;
    // Another schedule: KILN_FAULT_SEED=<u64>. The seed is printed so that a failure can be rerun.
    let seed = std::env::var("KILN_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_F417);
    eprintln!("{tag}: KILN_FAULT_SEED={seed}");
    let faulty = Arc::new(FaultyStore::new(store, 80, seed));
    let config = RuntimeConfig {
        lease_duration: Duration::from_secs(2),
        shutdown_grace: Duration::from_millis(200),
        ..RuntimeConfig::default()
    };
    let kiln = Kiln::builder()
        .config(config)
        .store(Arc::clone(&faulty) as Arc<dyn Store>)
        .orchestration("workflow", workflow)
        .orchestration("child", child)
        .activity("square", square)
        .start()
        .await
        .unwrap();
    let client = kiln.client();

    let mut known = BTreeMap::new();
    for n in 0..JOBS {
        known.insert(start_until_accepted(&client, tag, n).await, n);
    }

    // Every instance — the known ones, children, and starts whose success went unheard — ends.
    let deadline = Instant::now() + Duration::from_secs(120);
    let finished = loop {
        let all = all_instances(faulty.inner.as_ref()).await;
        if all.len() >= known.len() && all.values().all(|r| r.status.is_terminal()) {
            break all;
        }
        let pending: Vec<_> = all.iter().filter(|(_, r)| !r.status.is_terminal()).map(|(id, _)| id).collect();
        assert!(Instant::now() < deadline, "unfinished after 120 s: {pending:?}; faults: {:?}", faulty.injected());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    faulty.enabled.store(false, Ordering::Relaxed);
    let injected = faulty.injected();
    eprintln!("faults injected: {injected:?}");
    for point in ["commit_turn", "complete_activity", "create_instance_with_first_turn", "fetch_activity_work"] {
        for fault in [Fault::FailBefore, Fault::FailAfter] {
            assert!(injected.get(&(point, fault)).is_some_and(|&n| n > 0), "no {fault:?} at {point}: {injected:?}");
        }
    }

    for (id, n) in &known {
        let record = &finished[id];
        assert_eq!(record.status, RuntimeStatus::Completed, "{id}: {:?}", record.failure);
        let output: Value = serde_json::from_str(record.output.as_ref().unwrap().as_str()).unwrap();
        assert_eq!(output, json!(expected(*n)), "{id}");
    }
    let mut served = BTreeMap::new();
    for (id, record) in &finished {
        assert_eq!(record.status, RuntimeStatus::Completed, "{id}: {:?}", record.failure);
        let history = client.history(id).await.unwrap();
        check_history(id, &history);
        served.insert(id.clone(), (record.clone(), history));
    }
    // Every activity ran (at least once; the faults make some run twice).
    let effects = EFFECTS.lock().unwrap().clone();
    let workflows = finished.values().filter(|r| r.name == "workflow").count();
    let children = finished.values().filter(|r| r.name == "child").count();
    assert_eq!(children, workflows, "one child per workflow");
    let ran = effects.keys().filter(|key| key.split(':').next().is_some_and(|id| finished.contains_key(id))).count();
    assert_eq!(ran, workflows * 6 + children, "every activity of every instance ran");

    kiln.shutdown().await;
    // In memory equals on disk: a fresh process reads exactly what the running one served.
    let fresh = reopen().await;
    let reread = all_instances(fresh.as_ref()).await;
    assert_eq!(reread.keys().collect::<Vec<_>>(), served.keys().collect::<Vec<_>>());
    for (id, (record, history)) in &served {
        let stored = &reread[id];
        let summary = |r: &InstanceRecord| (r.status, r.output.clone(), r.updated_at, r.history_len, r.execution);
        assert_eq!(summary(stored), summary(record), "{id}");
        assert_eq!(&fresh.get_history(id).await.unwrap(), history, "{id}");
    }
    fresh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_job_completes_under_injected_store_faults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let open = |path: std::path::PathBuf| Arc::new(kiln::SqliteStore::open(kiln::SqliteOptions::new(path)).unwrap());
    let store = open(path.clone());
    run_under_faults("sqlite", store, async || open(path) as Arc<dyn Store>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_job_completes_under_injected_store_faults() {
    let url = std::env::var("KILN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("kiln_faults_{}", uuid::Uuid::new_v4().simple());
    let options = || {
        let mut options = kiln_postgres::PostgresOptions::new(url.clone());
        options.schema = Some(schema.clone());
        options.pool_size = 8;
        options
    };
    let store = match kiln_postgres::PostgresStore::connect(options()).await {
        Ok(store) => Arc::new(store),
        Err(err) => {
            let required = std::env::var("KILN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
            assert!(!required, "PostgreSQL is required (KILN_REQUIRE_POSTGRES=1): {err}");
            eprintln!(
                "skipped: PostgreSQL at {url} is not available ({err}); set KILN_REQUIRE_POSTGRES=1 to fail instead"
            );
            return;
        }
    };
    // Dropped whether the test passes or fails.
    struct DropSchema(String, String);
    impl Drop for DropSchema {
        fn drop(&mut self) {
            let (url, schema) = (self.0.clone(), self.1.clone());
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(kiln_postgres::schema::drop_schema(&url, &schema))
            })
            .join();
        }
    }
    let _guard = DropSchema(url.clone(), schema.clone());
    let reopen = async || Arc::new(kiln_postgres::PostgresStore::connect(options()).await.unwrap()) as Arc<dyn Store>;
    run_under_faults("postgres", store, reopen).await;
}
