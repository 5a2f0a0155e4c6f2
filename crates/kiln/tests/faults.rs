//! Fault injection at every store write point: a [`Store`] wrapper that fails calls before they
//! reach the store, fails them *after* the store committed (the caller never hears that it
//! worked, as when a connection drops during `COMMIT`), or delays them. Under a steady rate of
//! such faults, orchestrations with activities, timers, sub-orchestrations and fan-outs must all
//! complete with their own outputs and sound histories; and what the running store served from
//! memory must equal what a fresh process reads from disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use kiln::{
    ActivityContext, ClientError, Failure, Kiln, OrchestrationContext, RuntimeConfig, RuntimeStatus, StartOptions,
    Store, StoreError, join_all,
};
use kiln_core::{EventKind, HistoryEvent, Payload};
use kiln_store::{
    ActivityWorkItem, IdempotencyKey, IdempotentStart, InstancePage, InstanceQuery, InstanceRecord, Lease, NewInstance,
    OrchestrationWorkItem, PurgeFilter, StatusWatchers, StoreResult, TurnCommit,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one call is made to suffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// The call fails before it reaches the store.
    FailBefore,
    /// The store does the work, then the caller is told it failed.
    FailAfter,
    /// The call waits a few milliseconds first.
    Delay,
}

/// A store that injects faults into every call that writes or claims, at a rate in per mille,
/// from a seeded generator (a failing seed reproduces the same mix, if not the same schedule).
struct FaultyStore {
    inner: Arc<dyn Store>,
    per_mille: u64,
    enabled: AtomicBool,
    state: AtomicU64,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    injected: Mutex<BTreeMap<(&'static str, Fault), u32>>,
}

impl FaultyStore {
    fn new(inner: Arc<dyn Store>, per_mille: u64, seed: u64) -> FaultyStore {
        FaultyStore {
            inner,
            per_mille,
            enabled: AtomicBool::new(true),
            state: AtomicU64::new(seed),
            calls: Mutex::default(),
            injected: Mutex::default(),
        }
    }

    /// splitmix64: good enough to spread faults over calls, and dependency-free.
    fn next(&self) -> u64 {
        let mut z = self.state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Decides the fault for one call of `point`, if any, and counts it. The first calls at
    /// each point get each fault in turn, so that every point sees every fault however few
    /// calls it gets; the rest are drawn at random.
    fn roll(&self, point: &'static str, after_allowed: bool) -> Option<Fault> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let mut calls = self.calls.lock().unwrap();
        let call = calls.entry(point).or_default();
        *call += 1;
        let roll = match *call {
            1 => 0,
            2 => 1,
            3 => 2,
            _ => self.next() % 1000,
        };
        drop(calls);
        let fault = if roll >= self.per_mille {
            return None;
        } else if roll % 3 == 0 {
            Fault::FailBefore
        } else if roll % 3 == 1 && after_allowed {
            Fault::FailAfter
        } else {
            Fault::Delay
        };
        *self.injected.lock().unwrap().entry((point, fault)).or_default() += 1;
        Some(fault)
    }

    /// Runs a write through the fault schedule.
    async fn write<T: Send>(
        &self,
        point: &'static str,
        call: impl Future<Output = StoreResult<T>> + Send,
    ) -> StoreResult<T> {
        self.inject(point, true, call).await
    }

    async fn inject<T: Send>(
        &self,
        point: &'static str,
        after_allowed: bool,
        call: impl Future<Output = StoreResult<T>> + Send,
    ) -> StoreResult<T> {
        let injected = || StoreError::Unavailable(format!("injected fault at {point}"));
        match self.roll(point, after_allowed) {
            None => call.await,
            Some(Fault::FailBefore) => Err(injected()),
            Some(Fault::FailAfter) => {
                let _ = call.await;
                Err(injected())
            }
            Some(Fault::Delay) => {
                tokio::time::sleep(Duration::from_millis(self.next() % 40)).await;
                call.await
            }
        }
    }

    fn injected(&self) -> BTreeMap<(&'static str, Fault), u32> {
        self.injected.lock().unwrap().clone()
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn create_instance(&self, instance: NewInstance) -> StoreResult<()> {
        self.write("create_instance", self.inner.create_instance(instance)).await
    }

    async fn create_instance_idempotent(
        &self,
        instance: NewInstance,
        key: IdempotencyKey,
    ) -> StoreResult<IdempotentStart> {
        self.write("create_instance_idempotent", self.inner.create_instance_idempotent(instance, key)).await
    }

    async fn send_message(&self, instance_id: &str, event: HistoryEvent) -> StoreResult<()> {
        self.write("send_message", self.inner.send_message(instance_id, event)).await
    }

    async fn fetch_orchestration_work(
        &self,
        lease_for: Duration,
        wait: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        // A claim whose answer is lost leaves a lease nobody holds: it lapses and counts.
        self.write("fetch_orchestration_work", self.inner.fetch_orchestration_work(lease_for, wait)).await
    }

    async fn commit_turn(&self, commit: TurnCommit) -> StoreResult<()> {
        self.write("commit_turn", self.inner.commit_turn(commit)).await
    }

    async fn abandon_orchestration_work(
        &self,
        instance_id: &str,
        lease: Lease,
        retry_after: Duration,
    ) -> StoreResult<()> {
        self.write("abandon_orchestration_work", self.inner.abandon_orchestration_work(instance_id, lease, retry_after))
            .await
    }

    async fn fetch_activity_work(
        &self,
        lease_for: Duration,
        wait: Duration,
        max: usize,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        self.write("fetch_activity_work", self.inner.fetch_activity_work(lease_for, wait, max)).await
    }

    fn takes_first_turns(&self) -> bool {
        self.inner.takes_first_turns()
    }

    async fn create_instance_with_first_turn(&self, instance: NewInstance, first_turn: TurnCommit) -> StoreResult<()> {
        self.write("create_instance_with_first_turn", self.inner.create_instance_with_first_turn(instance, first_turn))
            .await
    }

    async fn claim_with_activity_result(
        &self,
        item: &ActivityWorkItem,
        result: &HistoryEvent,
        lease_for: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        self.write("claim_with_activity_result", self.inner.claim_with_activity_result(item, result, lease_for)).await
    }

    async fn renew_activity_lease(&self, item: &ActivityWorkItem, lease_for: Duration) -> StoreResult<Lease> {
        self.write("renew_activity_lease", self.inner.renew_activity_lease(item, lease_for)).await
    }

    async fn complete_activity(&self, item: &ActivityWorkItem, result: HistoryEvent) -> StoreResult<()> {
        self.write("complete_activity", self.inner.complete_activity(item, result)).await
    }

    async fn abandon_activity_work(&self, item: &ActivityWorkItem, retry_after: Duration) -> StoreResult<()> {
        self.write("abandon_activity_work", self.inner.abandon_activity_work(item, retry_after)).await
    }

    async fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceRecord>> {
        self.inject("get_instance", false, self.inner.get_instance(instance_id)).await
    }

    async fn get_history(&self, instance_id: &str) -> StoreResult<Vec<HistoryEvent>> {
        self.inner.get_history(instance_id).await
    }

    async fn list_instances(&self, query: &InstanceQuery) -> StoreResult<InstancePage> {
        self.inner.list_instances(query).await
    }

    async fn purge_instance(&self, instance_id: &str) -> StoreResult<u64> {
        self.write("purge_instance", self.inner.purge_instance(instance_id)).await
    }

    async fn purge_instances(&self, filter: &PurgeFilter) -> StoreResult<u64> {
        self.write("purge_instances", self.inner.purge_instances(filter)).await
    }

    async fn count_instances_by_status(&self) -> StoreResult<Vec<(RuntimeStatus, u64)>> {
        self.inner.count_instances_by_status().await
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        self.inner.get_setting(key).await
    }

    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<String> {
        self.inner.put_setting_if_absent(key, value).await
    }

    async fn health(&self) -> StoreResult<()> {
        self.inner.health().await
    }

    fn watchers(&self) -> &StatusWatchers {
        self.inner.watchers()
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

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
            let options = StartOptions { instance_id: Some(format!("{tag}-job-{n}")), version: None };
            let key = format!("{tag}-key-{n}");
            client
                .start_idempotent("workflow", input.clone(), options, &key, "same", Duration::from_secs(3600))
                .await
                .map(|(id, _)| id)
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
