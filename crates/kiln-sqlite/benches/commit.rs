//! The embedded store's turn commit, durable (`synchronous=FULL`): one turn at a time (each
//! pays its own fsync) and 64 turns in flight (the writer groups them into shared commits).
//! Each iteration starts an instance, claims it and commits a turn that schedules an activity.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln_core::{Payload, RuntimeStatus, Timestamp};
use kiln_sqlite::{SqliteOptions, SqliteStore};
use kiln_store::{HistoryUpdate, NewActivity, NewInstance, Store, TurnCommit};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Starts an instance, claims it, and commits its first turn.
async fn start_and_commit(store: &dyn Store) {
    let instance_id = format!("bench-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let now = Timestamp(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64);
    let input = Payload::from_json(r#"{"steps":1}"#).unwrap();
    let instance = NewInstance {
        instance_id: instance_id.clone(),
        name: "steps".into(),
        version: String::new(),
        input,
        parent: None,
        created_at: now,
        execution: 0,
        labels: Default::default(),
        correlation: None,
    };
    store.create_instance(instance).await.unwrap();
    let item = loop {
        // Other tasks' instances may come first; commit whatever is claimed.
        if let Some(item) = store.fetch_orchestration_work(LEASE, LEASE).await.unwrap() {
            break item;
        }
    };
    let activity = NewActivity {
        instance_id: item.instance.instance_id.clone(),
        execution: 0,
        step: 0,
        name: "echo".into(),
        input: Payload::null(),
        attempt: 1,
        timeouts: Default::default(),
        heartbeat: None,
        context: None,
    };
    store
        .commit_turn(TurnCommit {
            instance_id: item.instance.instance_id.clone(),
            lease: item.lease,
            consumed: item.messages.iter().map(|m| m.id).collect(),
            history: HistoryUpdate::Append(item.messages.iter().map(|m| m.event.clone()).collect()),
            execution: 0,
            version: item.instance.version.clone(),
            input: item.instance.input.clone(),
            status: RuntimeStatus::Running,
            output: None,
            failure: None,
            custom_status: None,
            waiting_on: Vec::new(),
            activities: vec![activity],
            messages: Vec::new(),
            sub_orchestrations: Vec::new(),
            finished_activities: Vec::new(),
            now,
        })
        .await
        .unwrap();
}

fn turn_commit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path().join("bench.db"))).unwrap());
    let mut group = c.benchmark_group("turn_commit");
    group.sample_size(20);
    for in_flight in [1usize, 64] {
        group.throughput(Throughput::Elements(in_flight as u64));
        group.bench_with_input(BenchmarkId::new("in_flight", in_flight), &in_flight, |b, &in_flight| {
            b.iter(|| {
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..in_flight)
                        .map(|_| {
                            let store = Arc::clone(&store);
                            tokio::spawn(async move { start_and_commit(store.as_ref()).await })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                });
            });
        });
    }
    group.finish();
    runtime.block_on(store.shutdown());
}

criterion_group!(benches, turn_commit);
criterion_main!(benches);
