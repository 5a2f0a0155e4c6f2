//! The store conformance suite: behaviour every backend must have, written once.
//!
//! A backend's test crate invokes [`conformance_tests!`](crate::conformance_tests) with a
//! factory that returns a fresh, empty store and a guard that keeps its resources alive, or
//! `None` when the backend is not available (the factory says why):
//!
//! ```ignore
//! kiln_store::conformance_tests!(|| async {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = MyStore::open(dir.path()).unwrap();
//!     Some((std::sync::Arc::new(store) as std::sync::Arc<dyn kiln_store::Store>, dir))
//! });
//! ```
// Test code (compiled only with the `conformance` feature, by test crates): a failed unwrap is
// a failed check, which is what a test should report.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::{
    FinishedActivity, HistoryUpdate, IdempotencyKey, IdempotentStart, InstanceQuery, NewActivity, NewInstance,
    NewSubOrchestration, OrchestrationWorkItem, OutgoingMessage, PurgeFilter, Store, StoreError, TurnCommit,
};
use kiln_core::{
    ActivityTimeouts, Correlation, EventKind, FailureDetails, HistoryEvent, InstanceContext, LabelFilter, Labels,
    ParentInstance, Payload, RuntimeStatus, Timestamp, TraceContext,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LEASE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(2);
const NO_WAIT: Duration = Duration::from_millis(50);

/// Generates one `#[tokio::test]` per conformance check, each on a fresh store from `$factory`.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@each $factory;
            start_is_handed_out_as_execution_started,
            unfinished_id_is_refused_and_finished_id_is_replaced,
            each_creation_starts_at_its_own_execution_number,
            turn_commit_is_atomic,
            a_turn_can_pin_the_version,
            lapsed_lease_cannot_commit,
            activity_result_reaches_its_instance,
            activities_are_claimed_in_batches,
            terminating_an_instance_withdraws_its_activities,
            claims_pass_over_excluded_names,
            activity_result_can_go_straight_into_a_turn,
            instance_and_first_turn_are_one_commit,
            timers_wait_until_due,
            messages_arriving_during_a_turn_come_next,
            suspended_instance_wakes_only_for_control_messages,
            message_to_unknown_instance_is_not_found,
            ids_no_instance_can_have_are_absent,
            list_filters_and_keyset_pages,
            labels_and_correlation_are_kept_and_listed_by,
            activities_carry_their_instance_context,
            purge_cascades_and_refuses_unfinished,
            bulk_purge_takes_children_whose_parent_is_gone,
            purge_filters_by_name_and_finish_time_and_spares_waiting_messages,
            a_timer_due_later_does_not_keep_a_finished_instance_but_a_childs_rewind_does,
            expired_idempotency_keys_go_in_bounded_batches,
            sub_orchestration_with_taken_id_fails_the_parent_step,
            watchers_wake_on_commit,
            settings_keep_their_value_until_compared_and_set,
            abandoned_work_comes_back,
            message_to_self_in_a_consuming_commit_is_delivered,
            idempotency_keys_start_once_and_refuse_other_requests,
            instances_are_counted_by_status,
            heartbeat_details_survive_a_lost_worker,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, _guard)) = ($factory)().await else { return };
                $crate::conformance::$name(store.as_ref()).await;
                store.shutdown().await;
            }
        )*
    };
}

fn now() -> Timestamp {
    // Invariant: the clock is past 1970.
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64)
}

fn new_instance(id: &str, created_at: Timestamp) -> NewInstance {
    NewInstance {
        instance_id: id.to_owned(),
        name: "orch".to_owned(),
        version: String::new(),
        // Invariant: a JSON literal.
        input: Payload::from_json(r#"{"n":1}"#).unwrap(),
        parent: None,
        created_at,
        execution: 0,
        labels: Default::default(),
        correlation: None,
    }
}

/// A commit of `item` that consumes all its messages and keeps the instance running.
fn running_commit(item: &OrchestrationWorkItem) -> TurnCommit {
    TurnCommit {
        instance_id: item.instance.instance_id.clone(),
        lease: item.lease,
        consumed: item.messages.iter().map(|m| m.id).collect(),
        history: HistoryUpdate::Append(item.messages.iter().map(|m| m.event.clone()).collect()),
        execution: item.instance.execution,
        version: item.instance.version.clone(),
        input: item.instance.input.clone(),
        status: RuntimeStatus::Running,
        output: None,
        failure: None,
        custom_status: None,
        waiting_on: Vec::new(),
        activities: Vec::new(),
        messages: Vec::new(),
        sub_orchestrations: Vec::new(),
        finished_activities: Vec::new(),
        now: now(),
    }
}

/// Activity `work` of instance `a` at `step`.
fn activity(step: u64) -> NewActivity {
    NewActivity {
        instance_id: "a".into(),
        execution: 0,
        step,
        name: "work".into(),
        input: Payload::null(),
        attempt: 1,
        timeouts: ActivityTimeouts::default(),
        heartbeat: None,
        context: None,
    }
}

fn completed(mut commit: TurnCommit) -> TurnCommit {
    commit.status = RuntimeStatus::Completed;
    // Invariant: a JSON literal.
    commit.output = Some(Payload::from_json("42").unwrap());
    commit
}

async fn fetch(store: &dyn Store) -> OrchestrationWorkItem {
    store.fetch_orchestration_work(LEASE, WAIT).await.unwrap().expect("work should be available")
}

async fn start(store: &dyn Store, id: &str) {
    store.create_instance(new_instance(id, now())).await.unwrap();
}

async fn assert_no_work(store: &dyn Store, why: &str) {
    assert!(store.fetch_orchestration_work(LEASE, NO_WAIT).await.unwrap().is_none(), "{why}");
}

async fn start_and_finish(store: &dyn Store, id: &str, created_at: Timestamp) {
    store.create_instance(new_instance(id, created_at)).await.unwrap();
    let item = fetch(store).await;
    store.commit_turn(completed(running_commit(&item))).await.unwrap();
}

fn raised(name: &str) -> HistoryEvent {
    HistoryEvent::new(now(), EventKind::EventRaised { name: name.to_owned(), input: Payload::null() })
}

pub async fn start_is_handed_out_as_execution_started(store: &dyn Store) {
    start(store, "a").await;
    let record = store.get_instance("a").await.unwrap().unwrap();
    assert_eq!(record.status, RuntimeStatus::Pending);
    assert_eq!(record.input.as_str(), r#"{"n":1}"#);
    let item = fetch(store).await;
    assert_eq!(item.instance.instance_id, "a");
    assert_eq!(item.messages.len(), 1);
    assert!(matches!(item.messages[0].event.kind, EventKind::ExecutionStarted { .. }));
    assert_no_work(store, "one holder at a time").await;
}

pub async fn unfinished_id_is_refused_and_finished_id_is_replaced(store: &dyn Store) {
    start(store, "a").await;
    let err = store.create_instance(new_instance("a", now())).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_, RuntimeStatus::Pending)), "{err}");
    let item = fetch(store).await;
    store.commit_turn(completed(running_commit(&item))).await.unwrap();
    start(store, "a").await;
    let record = store.get_instance("a").await.unwrap().unwrap();
    assert_eq!((record.status, record.execution, record.history_len), (RuntimeStatus::Pending, 1, 0));
    assert!(store.get_history("a").await.unwrap().is_empty());
}

pub async fn each_creation_starts_at_its_own_execution_number(store: &dyn Store) {
    let numbered = |execution| NewInstance { execution, ..new_instance("a", now()) };
    store.create_instance(numbered(41)).await.unwrap();
    let item = fetch(store).await;
    assert_eq!((item.instance.execution, item.messages[0].execution), (41, Some(41)));
    store.commit_turn(completed(running_commit(&item))).await.unwrap();
    // Over a finished instance: its numbers go on.
    store.create_instance(numbered(7)).await.unwrap();
    let item = fetch(store).await;
    assert_eq!((item.instance.execution, item.messages[0].execution), (42, Some(42)));
    store.commit_turn(completed(running_commit(&item))).await.unwrap();
    // After a purge: the new number.
    store.purge_instance("a").await.unwrap();
    store.create_instance(numbered(7)).await.unwrap();
    assert_eq!(fetch(store).await.instance.execution, 7);
}

pub async fn a_turn_can_pin_the_version(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    commit.version = "2".into();
    store.commit_turn(commit).await.unwrap();
    assert_eq!(store.get_instance("a").await.unwrap().unwrap().version, "2");
}

pub async fn turn_commit_is_atomic(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    commit.custom_status = Some(Payload::from_json(r#"{"stage":"one"}"#).unwrap());
    commit.activities.push(activity(0));
    store.commit_turn(commit).await.unwrap();
    let record = store.get_instance("a").await.unwrap().unwrap();
    assert_eq!(record.status, RuntimeStatus::Running);
    assert_eq!(record.custom_status.unwrap().as_str(), r#"{"stage":"one"}"#);
    assert_eq!(record.history_len, 1);
    assert_eq!(store.get_history("a").await.unwrap().len(), 1);
    let activity =
        store.fetch_activity_work(LEASE, WAIT, 1, &[]).await.unwrap().pop().expect("activity queued by the commit");
    assert_eq!(activity.activity.name, "work");
    assert_no_work(store, "consumed messages are gone").await;
}

pub async fn lapsed_lease_cannot_commit(store: &dyn Store) {
    start(store, "a").await;
    let first = store.fetch_orchestration_work(Duration::from_millis(100), WAIT).await.unwrap().unwrap();
    let second = fetch(store).await;
    assert_eq!(second.dequeue_count, 2);
    assert!(matches!(store.commit_turn(running_commit(&first)).await, Err(StoreError::LeaseLost(_))));
    store.commit_turn(running_commit(&second)).await.unwrap();
}

pub async fn activity_result_reaches_its_instance(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    commit.activities.push(activity(3));
    store.commit_turn(commit).await.unwrap();
    let activity = store.fetch_activity_work(LEASE, WAIT, 1, &[]).await.unwrap().pop().unwrap();
    let lease = store.renew_activity_lease(&activity, LEASE, None).await.unwrap();
    assert_eq!(lease.token, activity.lease.token);
    let done = HistoryEvent::new(now(), EventKind::TaskCompleted { task_scheduled_id: 3, result: Payload::null() });
    store.complete_activity(&activity, done.clone()).await.unwrap();
    let next = fetch(store).await;
    assert_eq!(next.messages.len(), 1);
    assert_eq!(next.messages[0].event, done);
    assert_eq!(next.messages[0].execution, Some(0));
    assert!(matches!(store.complete_activity(&activity, done).await, Err(StoreError::LeaseLost(_))), "completed once");
}

pub async fn activities_are_claimed_in_batches(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    commit.activities.extend((0..3).map(activity));
    store.commit_turn(commit).await.unwrap();
    let first = store.fetch_activity_work(LEASE, WAIT, 2, &[]).await.unwrap();
    let rest = store.fetch_activity_work(LEASE, WAIT, 5, &[]).await.unwrap();
    assert_eq!((first.len(), rest.len()), (2, 1), "a batch takes at most `max`, and what is left comes next");
    let mut steps: Vec<u64> = first.iter().chain(&rest).map(|a| a.activity.step).collect();
    steps.sort_unstable();
    assert_eq!(steps, vec![0, 1, 2], "each activity is handed out once");
    assert!(store.fetch_activity_work(LEASE, NO_WAIT, 5, &[]).await.unwrap().is_empty());
}

/// A terminated instance runs no more activities. The turn that ends it takes them all in its
/// commit: a running one can neither renew its lease nor store its result, and a queued one is
/// never handed out — so none of them comes back after a restart either. (A completed
/// instance's activities, e.g. a race's loser, are left to finish.)
pub async fn terminating_an_instance_withdraws_its_activities(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    commit.activities.extend((0..3).map(activity));
    store.commit_turn(commit).await.unwrap();
    let running = store.fetch_activity_work(LEASE, WAIT, 1, &[]).await.unwrap().pop().unwrap();
    let terminate = HistoryEvent::new(now(), EventKind::ExecutionTerminated { reason: None });
    store.send_message("a", terminate).await.unwrap();
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    commit.status = RuntimeStatus::Terminated;
    store.commit_turn(commit).await.unwrap();
    let renewed = store.renew_activity_lease(&running, LEASE, None).await;
    assert!(matches!(renewed, Err(StoreError::LeaseLost(_))), "a running activity loses its lease: {renewed:?}");
    let done = HistoryEvent::new(now(), EventKind::TaskCompleted { task_scheduled_id: 0, result: Payload::null() });
    let stored = store.complete_activity(&running, done).await;
    assert!(matches!(stored, Err(StoreError::LeaseLost(_))), "its result is not stored: {stored:?}");
    let queued = store.fetch_activity_work(LEASE, Duration::from_millis(300), 5, &[]).await.unwrap();
    assert!(queued.is_empty(), "queued activities never start: {queued:?}");
}

/// Activities of a name at its concurrency limit wait, unclaimed and in order, while the others
/// are claimed past them.
pub async fn claims_pass_over_excluded_names(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    let named = |step, name: &str| NewActivity { name: name.into(), ..activity(step) };
    commit.activities.extend([named(0, "busy"), named(1, "busy"), named(2, "free")]);
    store.commit_turn(commit).await.unwrap();
    let busy = ["busy".to_owned()];
    let first = store.fetch_activity_work(LEASE, WAIT, 5, &busy).await.unwrap();
    assert_eq!(first.iter().map(|a| a.activity.step).collect::<Vec<_>>(), vec![2], "only the free name");
    assert!(store.fetch_activity_work(LEASE, NO_WAIT, 5, &busy).await.unwrap().is_empty());
    let mut rest: Vec<u64> =
        store.fetch_activity_work(LEASE, WAIT, 5, &[]).await.unwrap().iter().map(|a| a.activity.step).collect();
    rest.sort_unstable();
    assert_eq!(rest, vec![0, 1], "claimed once the name is no longer excluded");
}

/// Stores that hand an activity's result straight to a turn do so only for an idle instance,
/// and finish the activity with that turn's commit.
pub async fn activity_result_can_go_straight_into_a_turn(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    commit.activities.push(activity(0));
    store.commit_turn(commit).await.unwrap();
    let activity = store.fetch_activity_work(LEASE, WAIT, 1, &[]).await.unwrap().pop().unwrap();
    let done = HistoryEvent::new(now(), EventKind::TaskCompleted { task_scheduled_id: 0, result: Payload::null() });

    store.send_message("a", raised("meanwhile")).await.unwrap();
    let busy = fetch(store).await;
    let claimed = store.claim_with_activity_result(&activity, &done, LEASE).await.unwrap();
    assert!(claimed.is_none(), "an instance in a turn cannot take the result directly");
    store.commit_turn(running_commit(&busy)).await.unwrap();

    let Some(work) = store.claim_with_activity_result(&activity, &done, LEASE).await.unwrap() else {
        // This store always reports results through the inbox.
        store.complete_activity(&activity, done).await.unwrap();
        return;
    };
    assert_eq!(work.messages.last().map(|m| &m.event), Some(&done));
    let mut commit = running_commit(&work);
    commit.finished_activities.push(FinishedActivity { id: activity.id, lease: activity.lease });
    store.commit_turn(commit).await.unwrap();
    let history = store.get_history("a").await.unwrap();
    assert_eq!(history.last(), Some(&done), "the result is in history");
    assert!(
        matches!(store.complete_activity(&activity, done).await, Err(StoreError::LeaseLost(_))),
        "the activity was finished by the turn"
    );
    assert_no_work(store, "nothing is left to do").await;
    assert!(store.fetch_activity_work(LEASE, NO_WAIT, 1, &[]).await.unwrap().is_empty());
}

/// An instance created with its first turn is never handed out for that turn again.
pub async fn instance_and_first_turn_are_one_commit(store: &dyn Store) {
    let instance = new_instance("a", now());
    let started = instance.started_event();
    let item = instance.first_work_item();
    let mut first_turn = running_commit(&item);
    first_turn.activities.push(activity(0));
    store.create_instance_with_first_turn(instance.clone(), first_turn).await.unwrap();
    if !store.takes_first_turns() {
        // The instance was created alone; its first turn comes from the inbox.
        assert_eq!(fetch(store).await.messages[0].event, started);
        return;
    }
    let stored = store.get_instance("a").await.unwrap().unwrap();
    assert_eq!((stored.status, stored.history_len), (RuntimeStatus::Running, 1));
    assert_eq!(store.get_history("a").await.unwrap(), vec![started]);
    assert_no_work(store, "the first turn was committed with the instance").await;
    assert_eq!(store.fetch_activity_work(LEASE, WAIT, 1, &[]).await.unwrap().len(), 1, "its activity is queued");
    let again = store.create_instance_with_first_turn(instance, running_commit(&item)).await;
    assert!(matches!(again, Err(StoreError::AlreadyExists(..))), "an id is never replaced this way");
}

pub async fn timers_wait_until_due(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    let fire_at = now().plus_millis(300);
    commit.messages.push(OutgoingMessage {
        instance_id: "a".into(),
        execution: Some(0),
        event: HistoryEvent::new(fire_at, EventKind::TimerFired { timer_id: 0, fire_at }),
        visible_at: Some(fire_at),
    });
    store.commit_turn(commit).await.unwrap();
    assert_no_work(store, "not before it is due").await;
    let item = fetch(store).await;
    assert!(now() >= fire_at);
    assert!(matches!(item.messages[0].event.kind, EventKind::TimerFired { .. }));
}

pub async fn messages_arriving_during_a_turn_come_next(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    store.send_message("a", raised("late")).await.unwrap();
    store.commit_turn(running_commit(&item)).await.unwrap();
    let next = fetch(store).await;
    assert_eq!(next.messages.len(), 1);
    assert!(matches!(&next.messages[0].event.kind, EventKind::EventRaised { name, .. } if name == "late"));
}

pub async fn suspended_instance_wakes_only_for_control_messages(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    commit.status = RuntimeStatus::Suspended;
    store.commit_turn(commit).await.unwrap();
    store.send_message("a", raised("held")).await.unwrap();
    assert_no_work(store, "held while suspended").await;
    let resume = HistoryEvent::new(now(), EventKind::ExecutionResumed { reason: None });
    store.send_message("a", resume).await.unwrap();
    let item = fetch(store).await;
    assert_eq!(item.messages.len(), 2, "the held event and the resume");
}

pub async fn message_to_unknown_instance_is_not_found(store: &dyn Store) {
    assert!(matches!(store.send_message("ghost", raised("x")).await, Err(StoreError::NotFound(_))));
    assert!(store.get_instance("ghost").await.unwrap().is_none());
}

/// Ids come from clients (URL paths); one with a NUL names no instance (creation refuses it), on
/// every backend — PostgreSQL text cannot hold it, and must not answer with a backend error.
pub async fn ids_no_instance_can_have_are_absent(store: &dyn Store) {
    let id = "a\0b";
    assert!(store.get_instance(id).await.unwrap().is_none());
    assert!(store.get_history(id).await.unwrap().is_empty());
    assert!(matches!(store.send_message(id, raised("e")).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.purge_instance(id).await, Err(StoreError::NotFound(_))));
    let query = InstanceQuery { instance_id_prefix: Some(id.to_owned()), ..InstanceQuery::default() };
    assert!(store.list_instances(&query).await.unwrap().instances.is_empty());
}

pub async fn list_filters_and_keyset_pages(store: &dyn Store) {
    let base = now();
    for i in 0..7 {
        let id = format!("job-{i}");
        if i % 2 == 0 {
            start_and_finish(store, &id, base.plus_millis(i)).await;
        } else {
            store.create_instance(new_instance(&id, base.plus_millis(i))).await.unwrap();
        }
    }
    store.create_instance(new_instance("other", base)).await.unwrap();
    let mut query = InstanceQuery { instance_id_prefix: Some("job-".into()), page_size: 3, ..Default::default() };
    let mut seen = Vec::new();
    loop {
        let page = store.list_instances(&query).await.unwrap();
        seen.extend(page.instances.iter().map(|r| r.instance_id.clone()));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("job-{i}")).collect::<Vec<_>>());
    let completed = InstanceQuery { statuses: vec![RuntimeStatus::Completed], page_size: 100, ..Default::default() };
    assert_eq!(store.list_instances(&completed).await.unwrap().instances.len(), 4);
    let window = InstanceQuery {
        created_from: Some(base.plus_millis(2)),
        created_to: Some(base.plus_millis(3)),
        page_size: 100,
        ..Default::default()
    };
    assert_eq!(store.list_instances(&window).await.unwrap().instances.len(), 2);
}

fn labelled(id: &str, labels: &[(&str, &str)]) -> NewInstance {
    let trace = TraceContext::new([7; 16], [9; 8], true);
    NewInstance {
        labels: Labels::new(labels.iter().copied()).unwrap(),
        correlation: Some(Correlation { id: format!("corr-{id}"), trace }),
        ..new_instance(id, now())
    }
}

async fn ids_labelled(store: &dyn Store, filters: &[&str]) -> Vec<String> {
    let labels: Vec<LabelFilter> = filters.iter().map(|f| f.parse().unwrap()).collect();
    let mut query = InstanceQuery { labels, page_size: 1, ..Default::default() };
    let mut ids = Vec::new();
    loop {
        let page = store.list_instances(&query).await.unwrap();
        ids.extend(page.instances.iter().map(|r| r.instance_id.clone()));
        match page.next {
            Some(next) => query.after = Some(next),
            None => return ids,
        }
    }
}

/// Labels and the correlation stay with the instance through its turns, whichever way it was
/// created; a listing filters by every label asked (AND); a replaced or purged instance's labels
/// find nothing any more.
pub async fn labels_and_correlation_are_kept_and_listed_by(store: &dyn Store) {
    let a = labelled("a", &[("customer_id", "c1"), ("region", "eu")]);
    store.create_instance(a.clone()).await.unwrap();
    store.create_instance(labelled("b", &[("customer_id", "c2"), ("region", "eu")])).await.unwrap();
    let c = labelled("c", &[("customer_id", "c1")]);
    let item = c.first_work_item();
    store.create_instance_with_first_turn(c, running_commit(&item)).await.unwrap();
    for _ in 0..2 {
        let item = fetch(store).await;
        store.commit_turn(running_commit(&item)).await.unwrap();
    }
    let stored = store.get_instance("a").await.unwrap().unwrap();
    assert_eq!(
        (stored.status, &stored.labels, &stored.correlation),
        (RuntimeStatus::Running, &a.labels, &a.correlation)
    );
    let EventKind::ExecutionStarted { labels, correlation, .. } = &store.get_history("a").await.unwrap()[0].kind else {
        panic!("the history starts with ExecutionStarted");
    };
    assert_eq!((labels, correlation), (&a.labels, &a.correlation), "the history keeps them too");
    assert_eq!(store.get_instance("c").await.unwrap().unwrap().labels.get("customer_id"), Some("c1"));
    assert_eq!(ids_labelled(store, &["customer_id:c1"]).await, ["a", "c"]);
    assert_eq!(ids_labelled(store, &["region:eu"]).await, ["a", "b"]);
    assert_eq!(ids_labelled(store, &["customer_id:c1", "region:eu"]).await, ["a"]);
    assert!(ids_labelled(store, &["customer_id:nobody"]).await.is_empty());
    assert!(ids_labelled(store, &["c1:customer_id"]).await.is_empty());

    for id in ["a", "b"] {
        let terminated = HistoryEvent::new(now(), EventKind::ExecutionTerminated { reason: None });
        store.send_message(id, terminated).await.unwrap();
        let item = fetch(store).await;
        let mut commit = running_commit(&item);
        commit.status = RuntimeStatus::Terminated;
        store.commit_turn(commit).await.unwrap();
    }
    store.create_instance(new_instance("a", now())).await.unwrap();
    assert!(store.get_instance("a").await.unwrap().unwrap().labels.is_empty(), "the new run has its own labels");
    assert_eq!(ids_labelled(store, &["customer_id:c1"]).await, ["c"]);
    assert_eq!(store.purge_instance("b").await.unwrap(), 1);
    assert!(ids_labelled(store, &["region:eu"]).await.is_empty());
}

/// An activity carries its instance's name, labels and correlation to whichever worker claims
/// it (one claimed by the committing node included); one scheduled without them has none.
pub async fn activities_carry_their_instance_context(store: &dyn Store) {
    let instance = labelled("a", &[("customer_id", "c1")]);
    store.create_instance(instance.clone()).await.unwrap();
    let item = fetch(store).await;
    let context = InstanceContext {
        orchestration: instance.name.clone(),
        labels: instance.labels.clone(),
        correlation: instance.correlation.clone(),
    };
    let mut commit = running_commit(&item);
    commit.activities.push(NewActivity { context: Some(std::sync::Arc::new(context.clone())), ..activity(0) });
    commit.activities.push(activity(1));
    store.commit_turn(commit).await.unwrap();
    let mut claimed = store.fetch_activity_work(LEASE, WAIT, 2, &[]).await.unwrap();
    if claimed.len() < 2 {
        claimed.extend(store.fetch_activity_work(LEASE, WAIT, 1, &[]).await.unwrap());
    }
    claimed.sort_by_key(|c| c.activity.step);
    let contexts: Vec<Option<&InstanceContext>> = claimed.iter().map(|c| c.activity.context.as_deref()).collect();
    assert_eq!(contexts, [Some(&context), None]);
}

pub async fn purge_cascades_and_refuses_unfinished(store: &dyn Store) {
    start(store, "parent").await;
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    let mut child = new_instance("parent:0:0", now());
    child.parent = Some(ParentInstance { instance_id: "parent".into(), execution: 0, task_scheduled_id: 0 });
    commit.sub_orchestrations.push(NewSubOrchestration { instance: child });
    store.commit_turn(commit).await.unwrap();
    assert!(matches!(store.purge_instance("parent").await, Err(StoreError::NotTerminal(_, _))));
    let child_item = fetch(store).await;
    assert_eq!(child_item.instance.instance_id, "parent:0:0");
    store.commit_turn(completed(running_commit(&child_item))).await.unwrap();
    store.send_message("parent", raised("child done")).await.unwrap();
    let parent_item = fetch(store).await;
    store.commit_turn(completed(running_commit(&parent_item))).await.unwrap();
    assert_eq!(store.purge_instance("parent").await.unwrap(), 2);
    assert!(store.get_instance("parent:0:0").await.unwrap().is_none());
    assert!(matches!(store.purge_instance("parent").await, Err(StoreError::NotFound(_))));
    start_and_finish(store, "old", Timestamp(1_000)).await;
    start_and_finish(store, "new", now()).await;
    let filter = PurgeFilter { created_to: Some(Timestamp(2_000)), ..Default::default() };
    assert_eq!(store.purge_instances(&filter).await.unwrap(), 1);
    assert!(store.get_instance("new").await.unwrap().is_some());
}

/// What retention's purges select: an orchestration name (or all but some), a finish time, and
/// never an instance with a message waiting (a rewind on its way) or one still running; the
/// preview counts what the purge then deletes, and batches stop at their size.
pub async fn purge_filters_by_name_and_finish_time_and_spares_waiting_messages(store: &dyn Store) {
    let finish = |id: &'static str, name: &'static str, status: RuntimeStatus| async move {
        let mut instance = new_instance(id, now());
        instance.name = name.to_owned();
        store.create_instance(instance).await.unwrap();
        let item = fetch(store).await;
        let mut commit = completed(running_commit(&item));
        commit.status = status;
        store.commit_turn(commit).await.unwrap();
    };
    finish("orch-1", "orch", RuntimeStatus::Completed).await;
    finish("orch-2", "orch", RuntimeStatus::Completed).await;
    finish("orch-failed", "orch", RuntimeStatus::Failed).await;
    finish("other-1", "other", RuntimeStatus::Completed).await;
    finish("rewinding", "orch", RuntimeStatus::Failed).await;
    store.send_message("rewinding", raised("a rewind, say")).await.unwrap();
    start(store, "running").await;
    let finished = now();

    let before = PurgeFilter { finished_before: Some(Timestamp(finished.0 - 60_000)), ..Default::default() };
    assert_eq!(store.preview_purge(&before, 10).await.unwrap().matched, 0, "nothing finished a minute ago");
    let orch = PurgeFilter { name: Some("orch".into()), finished_before: Some(finished), ..Default::default() };
    let preview = store.preview_purge(&orch, 2).await.unwrap();
    assert_eq!(preview.matched, 3, "orch-1, orch-2, orch-failed; not the one a message waits for");
    assert_eq!(preview.first.len(), 2, "at most the number asked for");
    assert!(preview.first.iter().all(|c| c.name == "orch" && c.status.is_terminal() && c.updated_at <= finished));
    let batch = store.purge_batch(&orch, 2).await.unwrap();
    assert_eq!((batch.selected, batch.deleted), (2, 2));
    assert_eq!(store.preview_purge(&orch, 2).await.unwrap().matched, 1);
    let rest = PurgeFilter { excluded_names: vec!["orch".into()], ..Default::default() };
    assert_eq!(store.purge_instances(&rest).await.unwrap(), 1, "other-1 only");
    assert!(store.get_instance("other-1").await.unwrap().is_none());
    assert_eq!(store.purge_instances(&PurgeFilter::default()).await.unwrap(), 1, "the last finished orch");
    for kept in ["rewinding", "running"] {
        assert!(store.get_instance(kept).await.unwrap().is_some(), "{kept} is not purged");
    }
    let oldest = store.oldest_finished().await.unwrap();
    assert_eq!(oldest.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![RuntimeStatus::Failed], "{oldest:?}");
}

/// A timer that a finished instance left behind (a timeout it no longer waits for) does not
/// keep it from being purged; a message waiting for a finished sub-orchestration (a rewind of
/// it) keeps its whole tree from a purge by filter (a purge by name takes the tree).
pub async fn a_timer_due_later_does_not_keep_a_finished_instance_but_a_childs_rewind_does(store: &dyn Store) {
    start(store, "timed").await;
    let item = fetch(store).await;
    let mut commit = completed(running_commit(&item));
    let fire_at = now().plus_millis(24 * 3600 * 1000);
    commit.messages.push(OutgoingMessage {
        instance_id: "timed".into(),
        execution: Some(0),
        event: HistoryEvent::new(fire_at, EventKind::TimerFired { timer_id: 0, fire_at }),
        visible_at: Some(fire_at),
    });
    store.commit_turn(commit).await.unwrap();
    let timed = PurgeFilter { name: Some("orch".into()), ..Default::default() };
    assert_eq!(store.purge_instances(&timed).await.unwrap(), 1, "the timer does not count");

    for parent in ["by-filter", "by-name", "after-it"] {
        let mut instance = new_instance(parent, now());
        if parent == "by-name" {
            instance.name = "named".into();
        }
        store.create_instance(instance).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Each parent completes, starting a child; each child fails; after-it completes (in
    // whatever order they come). Then a message waits for each child.
    for _ in 0..5 {
        let item = fetch(store).await;
        let id = item.instance.instance_id.clone();
        if item.instance.parent.is_some() {
            let mut failed = running_commit(&item);
            failed.status = RuntimeStatus::Failed;
            store.commit_turn(failed).await.unwrap();
        } else if id == "after-it" {
            store.commit_turn(completed(running_commit(&item))).await.unwrap();
        } else {
            let mut commit = completed(running_commit(&item));
            let mut child = new_instance(&format!("{id}:0:0"), now());
            child.parent = Some(ParentInstance { instance_id: id, execution: 0, task_scheduled_id: 0 });
            commit.sub_orchestrations.push(NewSubOrchestration { instance: child });
            store.commit_turn(commit).await.unwrap();
        }
    }
    for child in ["by-filter:0:0", "by-name:0:0"] {
        store.send_message(child, raised("a rewind, say")).await.unwrap();
    }
    for child in ["by-filter:0:0", "by-name:0:0"] {
        assert_eq!(store.get_instance(child).await.unwrap().map(|r| r.status), Some(RuntimeStatus::Failed));
    }
    let by_filter = PurgeFilter { excluded_names: vec!["named".into()], ..Default::default() };
    // A batch of one selects the waiting tree's root and leaves it; the next, from there, goes
    // past it (what a walk left is not selected again).
    let first = store.purge_batch(&by_filter, 1).await.unwrap();
    assert_eq!((first.selected, first.deleted), (1, 0), "{first:?}");
    assert_eq!(first.last.as_ref().map(|l| l.instance_id.as_str()), Some("by-filter"));
    let next = store.purge_batch(&PurgeFilter { after: first.last, ..by_filter.clone() }, 1).await.unwrap();
    assert_eq!((next.selected, next.deleted), (1, 1), "after-it: {next:?}");
    assert_eq!(store.purge_instances(&by_filter).await.unwrap(), 0, "the tree stays whole, its child waited for");
    for kept in ["by-filter", "by-filter:0:0"] {
        assert!(store.get_instance(kept).await.unwrap().is_some(), "{kept} is kept");
    }
    assert_eq!(store.purge_instance("by-name").await.unwrap(), 2, "named, the whole tree goes");
    assert!(store.get_instance("by-name:0:0").await.unwrap().is_none());
}

/// A sub-orchestration still running when its parent was purged is left alone (running instances
/// are never purged), and once it finishes the bulk purge takes it like a top-level instance:
/// no parent is left to purge it with, so otherwise retention would keep it forever. A finished
/// child whose parent still exists stays for its parent's purge.
pub async fn bulk_purge_takes_children_whose_parent_is_gone(store: &dyn Store) {
    start(store, "parent").await;
    let item = fetch(store).await;
    let mut commit = completed(running_commit(&item));
    for n in 0..2 {
        let mut child = new_instance(&format!("parent:0:{n}"), now());
        child.parent = Some(ParentInstance { instance_id: "parent".into(), execution: 0, task_scheduled_id: n });
        commit.sub_orchestrations.push(NewSubOrchestration { instance: child });
    }
    store.commit_turn(commit).await.unwrap();
    let first = fetch(store).await;
    store.commit_turn(completed(running_commit(&first))).await.unwrap();
    let kept = if first.instance.instance_id == "parent:0:0" { "parent:0:1" } else { "parent:0:0" };
    let filter = PurgeFilter::default();
    assert_eq!(store.purge_instances(&filter).await.unwrap(), 2, "the parent and its finished child");
    assert!(store.get_instance(kept).await.unwrap().is_some(), "a running child is not purged");
    assert_eq!(store.purge_instances(&filter).await.unwrap(), 0, "nor by a later bulk purge");

    let orphan = fetch(store).await;
    assert_eq!(orphan.instance.instance_id, kept);
    store.commit_turn(completed(running_commit(&orphan))).await.unwrap();

    start(store, "other").await;
    let other = fetch(store).await;
    let mut commit = running_commit(&other);
    let mut child = new_instance("other:0:0", now());
    child.parent = Some(ParentInstance { instance_id: "other".into(), execution: 0, task_scheduled_id: 0 });
    commit.sub_orchestrations.push(NewSubOrchestration { instance: child });
    store.commit_turn(commit).await.unwrap();
    let child = fetch(store).await;
    store.commit_turn(completed(running_commit(&child))).await.unwrap();

    assert_eq!(store.purge_instances(&filter).await.unwrap(), 1, "the orphan, now finished");
    assert!(store.get_instance(kept).await.unwrap().is_none());
    assert!(store.get_instance("other:0:0").await.unwrap().is_some(), "its parent, running, purges it later");
}

pub async fn sub_orchestration_with_taken_id_fails_the_parent_step(store: &dyn Store) {
    start(store, "taken").await;
    start(store, "parent").await;
    let mut parent = fetch(store).await;
    if parent.instance.instance_id != "parent" {
        let other = parent;
        parent = fetch(store).await;
        store.commit_turn(running_commit(&other)).await.unwrap();
    }
    let mut commit = running_commit(&parent);
    let mut child = new_instance("taken", now());
    child.parent = Some(ParentInstance { instance_id: "parent".into(), execution: 0, task_scheduled_id: 4 });
    commit.sub_orchestrations.push(NewSubOrchestration { instance: child });
    store.commit_turn(commit).await.unwrap();
    let next = fetch(store).await;
    assert_eq!(next.instance.instance_id, "parent");
    match &next.messages[0].event.kind {
        EventKind::SubOrchestrationInstanceFailed {
            task_scheduled_id: 4,
            failure_details: FailureDetails { error_type, .. },
        } => {
            assert_eq!(error_type, "AlreadyExists");
        }
        other => panic!("unexpected message {other:?}"),
    }
}

pub async fn watchers_wake_on_commit(store: &dyn Store) {
    start(store, "a").await;
    let mut subscription = store.watchers().subscribe("a");
    let item = fetch(store).await;
    store.commit_turn(completed(running_commit(&item))).await.unwrap();
    assert!(subscription.changed(WAIT).await, "a commit wakes the subscriber");
}

pub async fn settings_keep_their_value_until_compared_and_set(store: &dyn Store) {
    store.health().await.unwrap();
    assert_eq!(store.get_setting("secret").await.unwrap(), None);
    assert_eq!(store.put_setting_if_absent("secret", "one").await.unwrap(), "one");
    assert_eq!(store.put_setting_if_absent("secret", "two").await.unwrap(), "one");
    assert_eq!(store.get_setting("secret").await.unwrap().as_deref(), Some("one"));
    assert!(!store.replace_setting("secret", Some("stale"), "three").await.unwrap(), "compare fails");
    assert!(!store.replace_setting("secret", None, "three").await.unwrap(), "present, not absent");
    assert!(store.replace_setting("secret", Some("one"), "three").await.unwrap());
    assert_eq!(store.get_setting("secret").await.unwrap().as_deref(), Some("three"));
    assert!(store.replace_setting("other", None, "x").await.unwrap(), "absent: inserted");
    assert_eq!(store.get_setting("other").await.unwrap().as_deref(), Some("x"));
}

pub async fn abandoned_work_comes_back(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    store.abandon_orchestration_work("a", item.lease, Duration::from_millis(100)).await.unwrap();
    assert_no_work(store, "not before retry_after").await;
    let again = fetch(store).await;
    assert_eq!(again.messages.len(), 1);
    assert_eq!(again.dequeue_count, item.dequeue_count, "work given back is no failed delivery");
    let mut commit = running_commit(&again);
    commit.activities.push(activity(0));
    store.commit_turn(commit).await.unwrap();
    let activity = store.fetch_activity_work(LEASE, WAIT, 1, &[]).await.unwrap().pop().unwrap();
    store.abandon_activity_work(&activity, Duration::ZERO).await.unwrap();
    let again = store.fetch_activity_work(LEASE, WAIT, 1, &[]).await.unwrap().pop().unwrap();
    assert_eq!((again.id, again.dequeue_count), (activity.id, activity.dequeue_count), "given back, not failed");
}

/// An activity keeps its timeouts, and its last heartbeat details reach its next delivery after
/// its lease lapsed; a worker that lost the lease can no longer record any.
pub async fn heartbeat_details_survive_a_lost_worker(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    let timeouts = ActivityTimeouts {
        start_to_close_ms: Some(5_000),
        schedule_to_close_ms: Some(60_000),
        heartbeat_ms: Some(1_000),
        first_scheduled_at: Some(Timestamp(1_234)),
    };
    let details = |n: u32| Payload::encode(&serde_json::json!({ "done": n })).unwrap();
    commit.activities.push(NewActivity { timeouts, heartbeat: Some(details(1)), ..activity(0) });
    store.commit_turn(commit).await.unwrap();
    let first = store.fetch_activity_work(LEASE, WAIT, 1, &[]).await.unwrap().pop().unwrap();
    assert_eq!(first.activity.timeouts, timeouts);
    assert_eq!(first.activity.heartbeat, Some(details(1)), "the previous attempt's details");
    store.renew_activity_lease(&first, LEASE, Some(&details(5))).await.unwrap();
    store.renew_activity_lease(&first, LEASE, None).await.unwrap();
    // The worker is lost: its lease, renewed a last time with its last details, lapses.
    let short = Duration::from_millis(200);
    store.renew_activity_lease(&first, short, Some(&details(7))).await.unwrap();
    tokio::time::sleep(short * 2).await;
    let second = store.fetch_activity_work(LEASE, WAIT, 1, &[]).await.unwrap().pop().unwrap();
    assert_eq!((second.id, second.dequeue_count), (first.id, 2));
    assert_eq!(second.activity.heartbeat, Some(details(7)), "the lost delivery's last details");
    let stale = store.renew_activity_lease(&first, LEASE, Some(&details(3))).await;
    assert!(matches!(stale, Err(StoreError::LeaseLost(_))), "the lost worker saves nothing: {stale:?}");
    store.abandon_activity_work(&second, Duration::ZERO).await.unwrap();
    let third = store.fetch_activity_work(LEASE, WAIT, 1, &[]).await.unwrap().pop().unwrap();
    assert_eq!(third.activity.heartbeat, Some(details(7)), "still the last saved details");
}

/// A turn that consumes the newest message and sends itself one in the same commit (as
/// continue-as-new does) must get that message: message ids are never reused.
pub async fn message_to_self_in_a_consuming_commit_is_delivered(store: &dyn Store) {
    start(store, "a").await;
    let item = fetch(store).await;
    let mut commit = running_commit(&item);
    commit.messages.push(OutgoingMessage {
        instance_id: "a".into(),
        execution: None,
        event: raised("again"),
        visible_at: None,
    });
    store.commit_turn(commit).await.unwrap();
    let next = fetch(store).await;
    assert!(matches!(&next.messages[0].event.kind, EventKind::EventRaised { name, .. } if name == "again"));
    assert!(next.messages[0].id > item.messages[0].id);
}

pub async fn idempotency_keys_start_once_and_refuse_other_requests(store: &dyn Store) {
    let key = |fingerprint: &str, expires_at| IdempotencyKey {
        key: "k1".into(),
        fingerprint: fingerprint.into(),
        expires_at,
    };
    let later = now().plus_millis(60_000);
    let first = store.create_instance_idempotent(new_instance("a", now()), key("f", later)).await.unwrap();
    assert_eq!(first, IdempotentStart::Created);
    let again = store.create_instance_idempotent(new_instance("b", now()), key("f", later)).await.unwrap();
    assert_eq!(again, IdempotentStart::Existing { instance_id: "a".into() });
    assert!(store.get_instance("b").await.unwrap().is_none(), "a replay starts nothing");
    let other = store.create_instance_idempotent(new_instance("c", now()), key("g", later)).await;
    assert!(matches!(other, Err(StoreError::IdempotencyKeyReused(_))));
    let expiring = IdempotencyKey { key: "k2".into(), fingerprint: "f".into(), expires_at: now().plus_millis(1) };
    store.create_instance_idempotent(new_instance("d", now()), expiring.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let renewed = store.create_instance_idempotent(new_instance("e", now()), expiring).await.unwrap();
    assert_eq!(renewed, IdempotentStart::Created, "an expired key is forgotten");
}

/// Expired keys are forgotten at once (a new start under one is a new start) and deleted in
/// batches of the size asked for; unexpired ones stay.
pub async fn expired_idempotency_keys_go_in_bounded_batches(store: &dyn Store) {
    let key = |key: &str, expires_at| IdempotencyKey { key: key.into(), fingerprint: "f".into(), expires_at };
    let soon = now().plus_millis(1);
    for n in 0..3 {
        store
            .create_instance_idempotent(new_instance(&format!("old-{n}"), now()), key(&format!("old-{n}"), soon))
            .await
            .unwrap();
    }
    let later = now().plus_millis(60_000);
    store.create_instance_idempotent(new_instance("kept", now()), key("kept", later)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = store.create_instance_idempotent(new_instance("new-0", now()), key("old-0", later)).await.unwrap();
    assert_eq!(again, IdempotentStart::Created, "an expired key that is not deleted yet is forgotten");
    assert_eq!(store.expire_idempotency_keys(now(), 1).await.unwrap(), 1);
    assert_eq!(store.expire_idempotency_keys(now(), 10).await.unwrap(), 1, "the other (old-0 was taken again)");
    assert_eq!(store.expire_idempotency_keys(now(), 10).await.unwrap(), 0);
    let kept = store.create_instance_idempotent(new_instance("other", now()), key("kept", later)).await.unwrap();
    assert_eq!(kept, IdempotentStart::Existing { instance_id: "kept".into() });
    let taken = store.create_instance_idempotent(new_instance("other", now()), key("old-0", later)).await.unwrap();
    assert_eq!(taken, IdempotentStart::Existing { instance_id: "new-0".into() });
}

pub async fn instances_are_counted_by_status(store: &dyn Store) {
    start_and_finish(store, "done", now()).await;
    start(store, "waiting").await;
    let mut counts = store.count_instances_by_status().await.unwrap();
    counts.sort_by_key(|(status, _)| status.code());
    assert_eq!(counts, vec![(RuntimeStatus::Completed, 1), (RuntimeStatus::Pending, 1)]);
}
