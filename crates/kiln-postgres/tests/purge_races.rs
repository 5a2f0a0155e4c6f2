//! Purge racing writes into the purged instance: a message sent or an activity result reported
//! while the instance is purged must either arrive before the purge (and go with it) or find no
//! instance — never stay behind in the inbox, where an instance later started with the same id
//! would receive it ahead of its `ExecutionStarted`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kiln_core::{EventKind, HistoryEvent, Payload, RuntimeStatus, Timestamp};
use kiln_store::{NewInstance, Store, StoreError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LEASE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(2);
const ROUNDS: usize = 100;

fn now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64)
}

fn instance(id: &str) -> NewInstance {
    NewInstance {
        instance_id: id.to_owned(),
        name: "orch".into(),
        version: String::new(),
        input: Payload::null(),
        parent: None,
        created_at: now(),
        execution: 0,
        labels: Default::default(),
        correlation: None,
    }
}

fn raised() -> HistoryEvent {
    HistoryEvent::new(now(), EventKind::EventRaised { name: "poke".into(), input: Payload::null() })
}

/// Starts `id` and finishes it in its first turn, leaving one activity of it claimed (its result
/// arrives after the instance finished, as after a terminate).
async fn finished_with_running_activity(store: &dyn Store, id: &str) -> kiln_store::ActivityWorkItem {
    store.create_instance(instance(id)).await.unwrap();
    let item = store.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("the start");
    let commit = common::turn_with_activities(&item, RuntimeStatus::Terminated, [0], now());
    store.commit_turn(commit).await.unwrap();
    store.fetch_activity_work(LEASE, WAIT, 1, &[]).await.unwrap().pop().expect("the activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_a_purge_leave_no_orphan_rows() {
    let Some((store, guard)) = common::fresh_store().await else { return };
    for round in 0..ROUNDS {
        let id = format!("raced-{round}");
        let activity = finished_with_running_activity(store.as_ref(), &id).await;
        let (sender, reporter, purger) = (store.clone(), store.clone(), store.clone());
        let target = id.clone();
        let sends = tokio::spawn(async move {
            // Until the purge wins: every send before it is accepted, every one after is refused.
            loop {
                match sender.send_message(&target, raised()).await {
                    Ok(()) => tokio::task::yield_now().await,
                    Err(StoreError::NotFound(_)) => return,
                    Err(other) => panic!("send: {other}"),
                }
            }
        });
        let done = HistoryEvent::new(now(), EventKind::TaskCompleted { task_scheduled_id: 0, result: Payload::null() });
        let report = tokio::spawn(async move { reporter.complete_activity(&activity, done).await });
        let target = id.clone();
        let purge = tokio::spawn(async move { purger.purge_instance(&target).await });
        sends.await.unwrap();
        match report.await.unwrap() {
            // Reported before the purge, or the purge deleted the activity first.
            Ok(()) | Err(StoreError::LeaseLost(_)) => {}
            Err(other) => panic!("complete_activity: {other}"),
        }
        assert_eq!(purge.await.unwrap().unwrap(), 1);
    }
    let (client, connection) = tokio_postgres::connect(&common::database_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let schema = guard.schema();
    let orphans: i64 = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM \"{schema}\".inbox m WHERE NOT EXISTS \
                   (SELECT 1 FROM \"{schema}\".instances i WHERE i.instance_id = m.instance_id)) + \
                 (SELECT count(*) FROM \"{schema}\".activities a WHERE NOT EXISTS \
                   (SELECT 1 FROM \"{schema}\".instances i WHERE i.instance_id = a.instance_id))"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0, "rows left behind by writes racing {ROUNDS} purges");
    // And what such a row did: an instance started again with a raced id begins with its start.
    store.create_instance(instance("raced-0")).await.unwrap();
    let item = store.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("the new start");
    assert!(matches!(item.messages[0].event.kind, EventKind::ExecutionStarted { .. }), "{:?}", item.messages[0]);
    store.shutdown().await;
}

/// A bulk purge racing a message sent to the finished instance it selects (a rewind, say): the
/// message is either refused (the purge came first) or kept with its instance, never accepted
/// and then deleted with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_purge_never_deletes_a_message_it_raced() {
    let Some((store, _guard)) = common::fresh_store().await else { return };
    let filter = kiln_store::PurgeFilter::default();
    let mut kept = 0;
    for round in 0..ROUNDS {
        let id = format!("raced-{round}");
        store.create_instance(instance(&id)).await.unwrap();
        let item = store.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("the start");
        let commit = common::turn_with_activities(&item, RuntimeStatus::Failed, [], now());
        store.commit_turn(commit).await.unwrap();
        let (sender, purger, target) = (store.clone(), store.clone(), id.clone());
        let send = tokio::spawn(async move { sender.send_message(&target, raised()).await });
        let purge_filter = filter.clone();
        let purge = tokio::spawn(async move { purger.purge_batch(&purge_filter, 10).await });
        let sent = send.await.unwrap();
        purge.await.unwrap().unwrap();
        let exists = store.get_instance(&id).await.unwrap().is_some();
        match sent {
            Ok(()) => {
                assert!(exists, "round {round}: a message was accepted, then purged with its instance");
                kept += 1;
                // Its message consumed, the instance goes with the next purge.
                let item = store.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("the message");
                let commit = common::turn_with_activities(&item, RuntimeStatus::Failed, [], now());
                store.commit_turn(commit).await.unwrap();
                assert_eq!(store.purge_instances(&filter).await.unwrap(), 1);
            }
            Err(StoreError::NotFound(_)) => assert!(!exists),
            Err(other) => panic!("send: {other}"),
        }
    }
    eprintln!("{kept} of {ROUNDS} messages arrived before the purge took the instance");
    store.shutdown().await;
}
