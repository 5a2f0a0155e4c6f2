//! Two nodes on one schema: a turn's activities run on the node that ran the turn, and reach the
//! other node when that node stops (handed back) or dies (its lease lapses).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kiln_core::{EventKind, HistoryEvent, Payload, RuntimeStatus, Timestamp};
use kiln_postgres::PostgresStore;
use kiln_store::{ActivityWorkItem, NewInstance, Store, Unrunnable};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LEASE: Duration = Duration::from_secs(30);
const NO_WAIT: Duration = Duration::ZERO;
const WAIT: Duration = Duration::from_secs(5);

fn now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64)
}

/// Starts `id` with a first turn that schedules one activity.
async fn start_with_activity(store: &dyn Store, id: &str) {
    start_with_activities(store, id, 1).await;
}

/// A new instance `id` of orchestration `orch` at `version`.
fn new_instance(id: &str, version: &str) -> NewInstance {
    NewInstance {
        instance_id: id.to_owned(),
        name: "orch".to_owned(),
        version: version.to_owned(),
        input: Payload::null(),
        parent: None,
        created_at: now(),
        execution: 0,
        labels: Default::default(),
        correlation: None,
    }
}

/// Starts `id` with a first turn that schedules `count` activities.
async fn start_with_activities(store: &dyn Store, id: &str, count: u64) {
    let instance = new_instance(id, "");
    let item = instance.first_work_item();
    let turn = common::turn_with_activities(&item, RuntimeStatus::Running, 1..=count, now());
    store.create_instance_with_first_turn(instance, turn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turns_activities_run_on_its_node_until_it_stops_or_its_lease_lapses() {
    let Some((_store, _guard)) = common::fresh_store().await else { return };
    let options = common::fresh_options();
    let _cleanup = common::SchemaGuard::new(options.schema.as_deref().unwrap_or_default());
    let first = PostgresStore::connect(options.clone()).await.unwrap();
    let second = PostgresStore::connect(options.clone()).await.unwrap();

    // Claimed by the node that ran the turn: the other node, looking in the table (as every node
    // does once it starts), finds nothing to do.
    start_with_activity(&first, "kept").await;
    assert!(second.fetch_activity_work(LEASE, NO_WAIT, 8, &[]).await.unwrap().is_empty());
    let taken = first.fetch_activity_work(LEASE, NO_WAIT, 8, &[]).await.unwrap();
    assert_eq!(ids(&taken), ["kept"]);

    // Handed back, and the other nodes told, when the node stops.
    start_with_activity(&first, "handed_back").await;
    first.shutdown().await;
    let taken = second.fetch_activity_work(LEASE, WAIT, 8, &[]).await.unwrap();
    assert_eq!(ids(&taken), ["handed_back"]);
    assert_eq!(taken[0].dequeue_count, 1, "a claim that never ran is not counted");

    // A node that dies keeps its claims only until their lease lapses: the other node's
    // fallback look (every second) finds the activity still leased, then free.
    let dying = PostgresStore::connect(options).await.unwrap();
    dying.fetch_activity_work(Duration::from_millis(1_500), NO_WAIT, 1, &[]).await.unwrap();
    start_with_activity(&dying, "lapsed").await;
    drop(dying);
    assert!(second.fetch_activity_work(LEASE, Duration::from_millis(1_100), 8, &[]).await.unwrap().is_empty());
    let taken = second.fetch_activity_work(LEASE, WAIT, 8, &[]).await.unwrap();
    assert_eq!(ids(&taken), ["lapsed"]);
    second.shutdown().await;
}

fn ids(items: &[ActivityWorkItem]) -> Vec<&str> {
    items.iter().map(|item| item.activity.instance_id.as_str()).collect()
}

/// A node kept busy by its own turns' activities still looks in the table at least once per
/// fallback period: a dead node's activities and a fan-out too large to claim locally are taken
/// over while the local work goes on (the flag that says "look" used to be lost under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_busy_with_its_own_work_still_takes_work_from_the_table() {
    let Some((_store, _guard)) = common::fresh_store().await else { return };
    let options = common::fresh_options();
    let _cleanup = common::SchemaGuard::new(options.schema.as_deref().unwrap_or_default());
    let busy = PostgresStore::connect(options.clone()).await.unwrap();
    let dying = PostgresStore::connect(options.clone()).await.unwrap();
    dying.fetch_activity_work(Duration::from_millis(1_000), NO_WAIT, 1, &[]).await.unwrap();
    start_with_activity(&dying, "orphan").await;
    drop(dying);
    start_with_activities(&busy, "fanout", 1_000).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (mut orphan, mut fanned_out) = (false, 0);
    for n in 0.. {
        start_with_activity(&busy, &format!("local-{n}")).await;
        for item in busy.fetch_activity_work(LEASE, WAIT, 8, &[]).await.unwrap() {
            match item.activity.instance_id.as_str() {
                "orphan" => orphan = true,
                "fanout" => fanned_out += 1,
                _ => {}
            }
        }
        if orphan && fanned_out == 1_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "while busy: orphan taken over {orphan}, {fanned_out} of 1,000 fanned-out activities"
        );
    }
    busy.shutdown().await;
}

/// A claim that waited in this node's queue is renewed when handed out, so the activity starts
/// with a whole lease ahead of it (its first renewal comes a third of the lease later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_claims_are_handed_out_with_a_fresh_lease() {
    let Some((store, _guard)) = common::fresh_store().await else { return };
    let lease = Duration::from_millis(3_000);
    store.fetch_activity_work(lease, NO_WAIT, 1, &[]).await.unwrap();
    start_with_activity(store.as_ref(), "waited").await;
    // Let the claim age past a third of its lease while nobody takes it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let taken = store.fetch_activity_work(lease, NO_WAIT, 1, &[]).await.unwrap();
    assert_eq!(ids(&taken), ["waited"]);
    let left = taken[0].lease.expires_at.0 - now().0;
    assert!(left > 2_500, "handed out with {left} ms of lease left");
    let renewed = store.renew_activity_lease(&taken[0], lease, None).await;
    assert!(renewed.is_ok(), "the renewed claim is the one held: {renewed:?}");
}

/// A rolling deploy: a node that cannot run an orchestration version or an activity leaves it
/// to the nodes that can. Its claims skip that work from then on, so it can give it back at
/// once; given back with a delay instead, the work was hidden from every node meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaves_the_work_it_cannot_run_to_the_others() {
    let Some((_store, _guard)) = common::fresh_store().await else { return };
    let options = common::fresh_options();
    let _cleanup = common::SchemaGuard::new(options.schema.as_deref().unwrap_or_default());
    let old = PostgresStore::connect(options.clone()).await.unwrap();
    let new = PostgresStore::connect(options.clone()).await.unwrap();
    old.create_instance(new_instance("on-v2", "2")).await.unwrap();

    // The old node claims it once, finds version 2 missing and gives it back at once.
    let claimed = old.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("the start");
    let v2 = Unrunnable::Orchestration { name: "orch".into(), version: "2".into() };
    assert!(old.skip_in_claims(&v2), "a shared store skips what its node cannot run");
    old.abandon_orchestration_work("on-v2", claimed.lease, Duration::ZERO).await.unwrap();
    old.create_instance(new_instance("on-v1", "1")).await.unwrap();
    let taken = old.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("version 1");
    assert_eq!(taken.instance.instance_id, "on-v1");
    assert!(old.fetch_orchestration_work(LEASE, NO_WAIT).await.unwrap().is_none(), "version 2 is skipped");
    let taken = new.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("version 2 on the new node");
    assert_eq!(taken.instance.instance_id, "on-v2");
    assert_eq!(taken.dequeue_count, 1, "giving back did not count");

    // A resume needs the code (the events it lets through run): it is left to the new node.
    old.create_instance(new_instance("resumed", "2")).await.unwrap();
    let resume = EventKind::ExecutionResumed { reason: None };
    old.send_message("resumed", HistoryEvent::new(now(), resume)).await.unwrap();
    assert!(old.fetch_orchestration_work(LEASE, NO_WAIT).await.unwrap().is_none(), "the resume is skipped");
    let taken = new.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("the resume on the new node");
    assert_eq!(taken.instance.instance_id, "resumed");

    // A terminate needs no code: the skipping node still takes it.
    old.create_instance(new_instance("stopped", "2")).await.unwrap();
    let stop = EventKind::ExecutionTerminated { reason: None };
    old.send_message("stopped", HistoryEvent::new(now(), stop)).await.unwrap();
    let taken = old.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("the terminate");
    assert_eq!(taken.instance.instance_id, "stopped");

    // An activity the old node has not registered, claimed by its own turn.
    start_with_activity(&old, "new-activity").await;
    let item = old.fetch_activity_work(LEASE, WAIT, 8, &[]).await.unwrap().pop().expect("claimed locally");
    assert!(old.skip_in_claims(&Unrunnable::Activity { name: "work".into() }));
    old.abandon_activity_work(&item, Duration::ZERO).await.unwrap();
    assert!(old.fetch_activity_work(LEASE, Duration::from_millis(1_100), 8, &[]).await.unwrap().is_empty());
    let taken = new.fetch_activity_work(LEASE, WAIT, 8, &[]).await.unwrap();
    assert_eq!(ids(&taken), ["new-activity"]);
    // From then on, the old node's turns leave such activities in the table.
    start_with_activity(&old, "scheduled-after").await;
    assert!(old.fetch_activity_work(LEASE, Duration::from_millis(1_100), 8, &[]).await.unwrap().is_empty());
    let taken = new.fetch_activity_work(LEASE, WAIT, 8, &[]).await.unwrap();
    assert_eq!(ids(&taken), ["scheduled-after"]);

    // What a skipped instance's reason holds does not break the claim (a NUL is valid JSON text,
    // but not valid `jsonb`).
    old.create_instance(new_instance("nul", "2")).await.unwrap();
    let resume = EventKind::ExecutionResumed { reason: Some("\0".into()) };
    old.send_message("nul", HistoryEvent::new(now(), resume)).await.unwrap();
    assert!(old.fetch_orchestration_work(LEASE, NO_WAIT).await.unwrap().is_none());
    let taken = new.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("the NUL one on the new node");
    assert_eq!(taken.instance.instance_id, "nul");

    // A finished instance's messages need no code: the skipping node takes them. A rewind of a
    // failed one does, and so does what comes after it (for the rewound code): the instance is
    // left to the new node.
    for (id, status) in [("done", RuntimeStatus::Completed), ("failed", RuntimeStatus::Failed)] {
        new.create_instance(new_instance(id, "2")).await.unwrap();
        let item = new.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("its start");
        new.commit_turn(common::turn_with_activities(&item, status, [], now())).await.unwrap();
    }
    let late = EventKind::EventRaised { name: "late".into(), input: Payload::null() };
    old.send_message("done", HistoryEvent::new(now(), late)).await.unwrap();
    let taken = old.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("the finished instance's event");
    assert_eq!(taken.instance.instance_id, "done");
    old.send_message(
        "failed",
        HistoryEvent::new(now(), EventKind::ExecutionRewound { reason: None, redone_activities: Vec::new() }),
    )
    .await
    .unwrap();
    let after = EventKind::EventRaised { name: "approval".into(), input: Payload::null() };
    old.send_message("failed", HistoryEvent::new(now(), after)).await.unwrap();
    assert!(old.fetch_orchestration_work(LEASE, NO_WAIT).await.unwrap().is_none(), "the rewind is skipped");
    let taken = new.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("the rewind on the new node");
    assert_eq!(taken.instance.instance_id, "failed");
    assert_eq!(taken.messages.len(), 2, "the rewind and the event after it");
    old.shutdown().await;
    new.shutdown().await;
}

/// Work given back for other nodes, many items at once (a rolling deploy), with the smallest
/// pools: each give-back tells the other nodes after its update. Told while still holding its
/// connection, the give-backs took every lease connection and waited for one more, stalling the
/// node (and every commit waiting to notify) for the pool's whole wait timeout of 5 s, and the
/// notifications were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_give_backs_at_once_do_not_starve_the_connection_pools() {
    let Some((store, _guard)) = common::fresh_store().await else { return };
    start_with_activities(store.as_ref(), "wide", 8).await;
    let items = store.fetch_activity_work(LEASE, WAIT, 8, &[]).await.unwrap();
    assert_eq!(items.len(), 8);
    let began = std::time::Instant::now();
    let mut give_backs = tokio::task::JoinSet::new();
    for item in items {
        let store = std::sync::Arc::clone(&store);
        give_backs.spawn(async move { store.abandon_activity_work(&item, Duration::ZERO).await });
    }
    while let Some(given_back) = give_backs.join_next().await {
        given_back.unwrap().unwrap();
    }
    // Milliseconds when nothing waits; a deadlock lasts the pool's wait timeout (5 s).
    let took = began.elapsed();
    assert!(took < Duration::from_millis(2_500), "8 give-backs took {took:?}");
}

/// A name excluded from claims (its concurrency limit is reached on the claiming node) is passed
/// over in the table too, and claimed once it is no longer excluded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_claims_pass_over_excluded_names() {
    let Some((_store, _guard)) = common::fresh_store().await else { return };
    let options = common::fresh_options();
    let _cleanup = common::SchemaGuard::new(options.schema.as_deref().unwrap_or_default());
    let scheduling = PostgresStore::connect(options.clone()).await.unwrap();
    let claiming = PostgresStore::connect(options).await.unwrap();
    start_with_activities(&scheduling, "limited", 2).await;
    // The scheduling node's turn claimed them for itself: it gives them back to the table.
    for item in scheduling.fetch_activity_work(LEASE, WAIT, 8, &[]).await.unwrap() {
        scheduling.abandon_activity_work(&item, Duration::ZERO).await.unwrap();
    }
    let busy = ["work".to_owned()];
    assert!(claiming.fetch_activity_work(LEASE, Duration::from_millis(1_100), 8, &busy).await.unwrap().is_empty());
    let taken = claiming.fetch_activity_work(LEASE, WAIT, 8, &[]).await.unwrap();
    assert_eq!(ids(&taken), ["limited", "limited"]);
}
