//! The dispatch loops: orchestration workers that run turns, and the activity dispatcher that
//! runs activities under a concurrency limit, renews their leases and reports their results.
//! Both wait on the store for work (no fixed-interval polling) and stop on the shutdown signal.

use crate::RuntimeConfig;
use crate::activity::Heartbeats;
use crate::attempt::{Ended, run_attempt, save_heartbeat};
use crate::log_fields;
use crate::runtime::Runtime;
use crate::turn::run_turn;
use kiln_core::{EventKind, FailureDetails, HistoryEvent, Payload, error_types};
use kiln_store::{ActivityWorkItem, FinishedActivity, NewActivity, StoreError, Unrunnable};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

/// Longest a fetch waits before the loop checks again (bounds how late a new lease expiry is seen).
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// Pause after a store error before trying again; doubles while errors go on, up to the max.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(5);
/// Most activities claimed in one store round trip.
const MAX_ACTIVITY_BATCH: usize = 64;
/// When an activity claimed beyond its name's limit (a name not running yet, claimed more
/// times in one batch than its limit) is offered again.
const OVER_LIMIT_RETRY: Duration = Duration::from_millis(250);
/// Longest a fetch waits while some name is at its limit, so that a slot coming free is soon
/// used.
const SATURATED_FETCH_WAIT: Duration = Duration::from_millis(100);

/// Backoff while the store keeps failing (e.g. its database is unreachable), so that many
/// workers neither hammer it nor flood the log.
struct Backoff(Option<Duration>);

impl Backoff {
    async fn failed(&mut self, what: &str, err: &StoreError) {
        let delay = self.0.map_or(ERROR_BACKOFF, |d| (d * 2).min(MAX_ERROR_BACKOFF));
        if self.0.is_none() {
            tracing::warn!(error = %err, "{what} failed; retrying with backoff");
        }
        self.0 = Some(delay);
        tokio::time::sleep(delay).await;
    }

    fn succeeded(&mut self) {
        if self.0.take().is_some() {
            tracing::info!("the store answers again");
        }
    }
}

/// Runs orchestration turns until shutdown.
pub(crate) async fn orchestration_worker(rt: Arc<Runtime>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff(None);
    while !*shutdown.borrow() {
        let fetched = tokio::select! {
            fetched = rt.store.fetch_orchestration_work(rt.config.lease_duration, FETCH_WAIT) => fetched,
            _ = shutdown.changed() => break,
        };
        match fetched {
            Ok(Some(item)) => {
                backoff.succeeded();
                run_turn(&rt, item, None).await;
            }
            Ok(None) => backoff.succeeded(),
            Err(err) => backoff.failed("fetching orchestration work", &err).await,
        }
    }
}

/// Claims and runs activities until shutdown, then lets running ones finish within the grace
/// period and releases the rest. Claims skip the names whose limit is reached (see
/// [`NameLimits`]).
pub(crate) async fn activity_dispatcher(rt: Arc<Runtime>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(rt.config.activity_concurrency.max(1)));
    let limits = Arc::new(NameLimits::default());
    let mut tasks = JoinSet::new();
    let mut backoff = Backoff(None);
    while !*shutdown.borrow() {
        let first = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        // Claim as many activities as there are free slots, in one store round trip.
        let mut batch = vec![first];
        while batch.len() < MAX_ACTIVITY_BATCH
            && let Ok(permit) = Arc::clone(&permits).try_acquire_owned()
        {
            batch.push(permit);
        }
        // Names at their limit are not claimed; a name close to it caps the batch, so that a
        // batch does not bring more of it than it has slots for. While some name is at its
        // limit, the fetch waits only briefly: a slot coming free is seen soon. (The fetch is
        // never dropped for that: one dropped mid-claim would strand what it claimed.)
        let ClaimPlan { excluded, headroom } = limits.plan(&rt.config);
        batch.truncate(headroom.max(1));
        let wait = if excluded.is_empty() { FETCH_WAIT } else { SATURATED_FETCH_WAIT };
        let fetch = rt.store.fetch_activity_work(rt.config.lease_duration, wait, batch.len(), &excluded);
        let fetched = tokio::select! {
            fetched = fetch => fetched,
            _ = shutdown.changed() => break,
        };
        while tasks.try_join_next().is_some() {}
        match fetched {
            Ok(items) => {
                backoff.succeeded();
                for (item, permit) in items.into_iter().zip(batch) {
                    let Some(slot) = limits.try_start(&rt.config, &item.activity.name) else {
                        // A name not running before came more times than its limit: back for later.
                        let _ = rt.store.abandon_activity_work(&item, OVER_LIMIT_RETRY).await;
                        continue;
                    };
                    // Registered until it ends; an activity aborted at shutdown stays registered,
                    // to be handed back with its last heartbeat details.
                    let heartbeats = Arc::new(Heartbeats::new(rt.config.limits, item.activity.heartbeat.clone()));
                    let cancel = rt.running.start(&item, &heartbeats);
                    let rt = Arc::clone(&rt);
                    tasks.spawn(async move {
                        let (instance_id, id) = (item.activity.instance_id.clone(), item.id);
                        run_activity(&rt, item, &cancel, heartbeats).await;
                        rt.running.finish(&instance_id, id, &cancel);
                        drop((slot, permit));
                    });
                }
            }
            Err(err) => backoff.failed("fetching activity work", &err).await,
        }
    }
    let drained =
        tokio::time::timeout(rt.config.shutdown_grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tasks.abort_all();
        for (item, heartbeats) in rt.running.drain() {
            save_heartbeat(&rt, &item, &heartbeats).await;
            let _ = rt.store.abandon_activity_work(&item, Duration::ZERO).await;
        }
    }
}

/// Running activities by name, against their limits ([`RuntimeConfig::activity_limit`]).
#[derive(Default)]
struct NameLimits {
    running: Mutex<HashMap<String, usize>>,
}

/// What the next claim may take (see [`NameLimits::plan`]).
struct ClaimPlan {
    /// Names at their limit.
    excluded: Vec<String>,
    /// Most activities one claim may bring without any running name going over its limit.
    headroom: usize,
}

impl NameLimits {
    /// The names the next claim must pass over, and how many activities it may take.
    fn plan(&self, config: &RuntimeConfig) -> ClaimPlan {
        let running = lock(&self.running);
        let mut plan = ClaimPlan { excluded: Vec::new(), headroom: usize::MAX };
        for (name, &count) in running.iter() {
            match config.activity_limit(name).saturating_sub(count) {
                0 => plan.excluded.push(name.clone()),
                left => plan.headroom = plan.headroom.min(left),
            }
        }
        plan
    }

    /// A slot for an activity named `name`, unless its limit is reached.
    fn try_start(self: &Arc<Self>, config: &RuntimeConfig, name: &str) -> Option<NameSlot> {
        let limit = config.activity_limit(name);
        let mut running = lock(&self.running);
        match running.get_mut(name) {
            Some(count) if *count >= limit => return None,
            Some(count) => *count += 1,
            None => {
                running.insert(name.to_owned(), 1);
            }
        }
        Some(NameSlot { limits: Arc::clone(self), name: name.to_owned() })
    }
}

/// One running activity's slot of its name (see [`NameLimits::try_start`]).
struct NameSlot {
    limits: Arc<NameLimits>,
    name: String,
}

impl Drop for NameSlot {
    fn drop(&mut self) {
        let mut running = lock(&self.limits.running);
        let Some(count) = running.get_mut(&self.name) else { return };
        *count -= 1;
        if *count == 0 {
            running.remove(&self.name);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps are only inserted into and removed from; a panic cannot leave them half-changed.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The activities running in this process, by instance: terminating an instance here cancels
/// its running activities at once, and shutdown hands back the ones it had to abort.
#[derive(Default)]
pub(crate) struct RunningActivities {
    by_instance: Mutex<HashMap<String, RunningOfInstance>>,
}

/// An instance's running activities, by work item id.
type RunningOfInstance = HashMap<i64, RunningActivity>;

/// One running activity: its claim, its heartbeats and its cancellation signal.
struct RunningActivity {
    item: ActivityWorkItem,
    heartbeats: Arc<Heartbeats>,
    canceled: Arc<Notify>,
}

impl RunningActivities {
    /// Registers a running activity until [`RunningActivities::finish`]; its cancellation is
    /// signalled on the returned `Notify`.
    fn start(&self, item: &ActivityWorkItem, heartbeats: &Arc<Heartbeats>) -> Arc<Notify> {
        let canceled = Arc::new(Notify::new());
        let entry =
            RunningActivity { item: item.clone(), heartbeats: Arc::clone(heartbeats), canceled: Arc::clone(&canceled) };
        lock(&self.by_instance).entry(item.activity.instance_id.clone()).or_default().insert(item.id, entry);
        canceled
    }

    /// Unregisters the activity that `canceled` was handed out for (an entry registered since
    /// for the same work item, claimed again after its lease lapsed, is not this one's).
    fn finish(&self, instance_id: &str, id: i64, canceled: &Arc<Notify>) {
        let mut by_instance = lock(&self.by_instance);
        if let Some(running) = by_instance.get_mut(instance_id) {
            if running.get(&id).is_some_and(|entry| Arc::ptr_eq(&entry.canceled, canceled)) {
                running.remove(&id);
            }
            if running.is_empty() {
                by_instance.remove(instance_id);
            }
        }
    }

    /// Cancels the running activities of the instance's `execution` (a run created later under
    /// the same id has other execution numbers, so its activities are left alone).
    pub(crate) fn cancel(&self, instance_id: &str, execution: u64) {
        if let Some(running) = lock(&self.by_instance).get(instance_id) {
            running
                .values()
                .filter(|entry| entry.item.activity.execution == execution)
                .for_each(|entry| entry.canceled.notify_one());
        }
    }

    /// Unregisters every activity still registered (at shutdown, after aborting them).
    fn drain(&self) -> Vec<(ActivityWorkItem, Arc<Heartbeats>)> {
        lock(&self.by_instance)
            .drain()
            .flat_map(|(_, running)| running.into_values().map(|entry| (entry.item, entry.heartbeats)))
            .collect()
    }
}

/// Why a running activity's future was dropped before it finished (see [`Ended`]).
enum Cancellation {
    Terminated,
    LeaseGone,
}

/// Logs and counts an activity whose future was dropped before it finished.
fn canceled(rt: &Runtime, item: &ActivityWorkItem, why: Cancellation) {
    rt.metrics.canceled.fetch_add(1, Ordering::Relaxed);
    let activity = &item.activity;
    let key = format!("{}:{}:{}", activity.instance_id, activity.execution, activity.step);
    let (id, name, attempt) = (&activity.instance_id, &activity.name, activity.attempt);
    match why {
        Cancellation::Terminated => {
            tracing::info!(
                instance_id = id,
                activity = name,
                key,
                attempt,
                "activity canceled: its instance was terminated"
            );
        }
        Cancellation::LeaseGone => tracing::warn!(
            instance_id = id,
            activity = name,
            key,
            attempt,
            "activity canceled: its lease is gone (its instance was terminated, or the lease lapsed and another worker runs it)"
        ),
    }
}

/// Runs one activity, renewing its lease meanwhile, and reports the result. An activity that is
/// not registered here is given back, uncounted, for a worker that has it (a rolling deploy).
async fn run_activity(rt: &Runtime, mut item: ActivityWorkItem, cancel: &Notify, heartbeats: Arc<Heartbeats>) {
    let activity = &item.activity;
    let started = Instant::now();
    let outcome = match rt.registry.activity(&activity.name) {
        _ if item.dequeue_count > rt.config.max_dequeue_count => Err(FailureDetails::new(
            error_types::POISON,
            format!(
                "activity '{}' was claimed {} times without completing; giving up",
                activity.name,
                item.dequeue_count - 1
            ),
        )),
        None => {
            // Offered again every few seconds until a worker has it: logged at the 1st, 2nd,
            // 4th, 8th… give-back of this process, counted every time.
            let given_back = rt.metrics.unregistered.fetch_add(1, Ordering::Relaxed) + 1;
            if given_back.is_power_of_two() {
                tracing::warn!(
                    instance_id = activity.instance_id,
                    activity = activity.name,
                    given_back,
                    "activity is not registered on this worker; it waits for one that has it"
                );
            }
            // Given back at once when this store's claims skip it from now on (for another
            // node); otherwise after a delay.
            let unrunnable = Unrunnable::Activity { name: activity.name.clone() };
            let retry =
                if rt.store.skip_in_claims(&unrunnable) { Duration::ZERO } else { rt.config.unregistered_retry };
            let _ = rt.store.abandon_activity_work(&item, retry).await;
            return;
        }
        Some(registered) => {
            let (orchestration, labels, correlation) = log_fields::context(activity.context.as_deref());
            tracing::debug!(
                instance_id = activity.instance_id,
                orchestration,
                execution = activity.execution,
                activity = activity.name,
                attempt = activity.attempt,
                delivery = item.dequeue_count,
                correlation_id = log_fields::correlation_id(correlation),
                %labels,
                "activity started"
            );
            match run_attempt(rt, &mut item, registered, cancel, &heartbeats).await {
                Ended::Finished(result) => result,
                Ended::Terminated => return canceled(rt, &item, Cancellation::Terminated),
                Ended::LeaseGone => return canceled(rt, &item, Cancellation::LeaseGone),
            }
        }
    };
    let outcome = outcome.and_then(|output: Payload| match rt.config.limits.check("activity output", &output) {
        Ok(()) => Ok(output),
        Err(err) => Err(FailureDetails::new(error_types::PAYLOAD_TOO_LARGE, err.to_string())),
    });
    let millis = started.elapsed().as_millis() as u64;
    rt.metrics.activities.fetch_add(1, Ordering::Relaxed);
    rt.metrics.activity_millis.fetch_add(millis, Ordering::Relaxed);
    log_attempt(&item.activity, &outcome, millis);
    let step = item.activity.step;
    let kind = match outcome {
        Ok(result) => EventKind::TaskCompleted { task_scheduled_id: step, result },
        Err(failure_details) => EventKind::TaskFailed { task_scheduled_id: step, failure_details },
    };
    let event = HistoryEvent::new(crate::runtime::wall_clock(), kind);
    // Fast path: if the instance is idle, run its next turn here with the result in hand, and
    // commit result and turn together (one durable commit instead of two).
    if let Ok(Some(work)) = rt.store.claim_with_activity_result(&item, &event, rt.config.lease_duration).await {
        let finished = FinishedActivity { id: item.id, lease: item.lease };
        if run_turn(rt, work, Some(finished)).await {
            return;
        }
    }
    report_result(rt, item, event).await;
}

/// Logs how an activity attempt ended: `info` when it returned, `warn` when it failed.
fn log_attempt(activity: &NewActivity, outcome: &Result<Payload, FailureDetails>, millis: u64) {
    let (orchestration, labels, correlation) = log_fields::context(activity.context.as_deref());
    let (correlation_id, trace_id) = (log_fields::correlation_id(correlation), log_fields::trace_id(correlation));
    let (instance_id, execution, name, attempt) =
        (activity.instance_id.as_str(), activity.execution, activity.name.as_str(), activity.attempt);
    match outcome {
        Ok(_) => tracing::info!(
            instance_id,
            orchestration,
            execution,
            activity = name,
            attempt,
            millis,
            correlation_id,
            trace_id,
            %labels,
            "activity completed"
        ),
        Err(failure) => tracing::warn!(
            instance_id,
            orchestration,
            execution,
            activity = name,
            attempt,
            millis,
            error = %failure,
            correlation_id,
            trace_id,
            %labels,
            "activity failed"
        ),
    }
}

/// Stores an activity's result. While the store cannot take it for a passing reason (a full
/// disk, a lost database connection), the result is kept in hand and the lease renewed, so the
/// activity does not run again for nothing.
async fn report_result(rt: &Runtime, mut item: ActivityWorkItem, event: HistoryEvent) {
    let mut backoff = Backoff(None);
    loop {
        match rt.store.complete_activity(&item, event.clone()).await {
            Ok(()) => return,
            Err(StoreError::LeaseLost(what)) => {
                tracing::warn!(what, "activity finished after its lease lapsed; it runs again");
                return;
            }
            Err(err @ StoreError::Unavailable(_)) => {
                backoff.failed("storing an activity result", &err).await;
                // A renewal the store cannot take either is retried with the result; once the
                // lease has lapsed, the store answers `LeaseLost`.
                match rt.store.renew_activity_lease(&item, rt.config.lease_duration, None).await {
                    Ok(lease) => item.lease = lease,
                    Err(StoreError::Unavailable(_)) => {}
                    Err(_) => {
                        tracing::warn!(
                            instance_id = item.activity.instance_id,
                            "activity lease lapsed while its result could not be stored; it runs again"
                        );
                        return;
                    }
                }
            }
            Err(err) => {
                // It may fail every time: the lease is left to lapse, so the rerun counts and an
                // activity whose result can never be stored ends as poison.
                tracing::error!(instance_id = item.activity.instance_id, error = %err, "storing an activity result failed; it runs again when its lease lapses");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn signalled(canceled: &Notify) -> bool {
        tokio::time::timeout(Duration::from_millis(10), canceled.notified()).await.is_ok()
    }

    fn beats() -> Arc<Heartbeats> {
        Arc::new(Heartbeats::new(kiln_core::PayloadLimits::default(), None))
    }

    fn claim(id: i64, execution: u64) -> ActivityWorkItem {
        let activity = kiln_store::NewActivity {
            instance_id: "job".into(),
            execution,
            step: 0,
            name: "work".into(),
            input: Payload::null(),
            attempt: 1,
            timeouts: kiln_core::ActivityTimeouts::default(),
            heartbeat: None,
            context: None,
        };
        let lease = kiln_store::Lease { token: 1, expires_at: kiln_core::Timestamp(0) };
        ActivityWorkItem { id, activity, lease, dequeue_count: 1 }
    }

    #[tokio::test]
    async fn a_terminate_cancels_its_own_run_s_activities_only() {
        let running = RunningActivities::default();
        let old_run = running.start(&claim(1, 5), &beats());
        let new_run = running.start(&claim(2, 6), &beats());
        running.cancel("job", 5);
        assert!(signalled(&old_run).await);
        assert!(!signalled(&new_run).await, "a later run under the same id is left alone");
    }

    #[tokio::test]
    async fn an_old_claim_ending_does_not_unregister_a_newer_one() {
        let running = RunningActivities::default();
        let old = running.start(&claim(1, 5), &beats());
        let newer = running.start(&claim(1, 5), &beats());
        running.finish("job", 1, &old);
        running.cancel("job", 5);
        assert!(signalled(&newer).await, "still registered, so still canceled");
    }
}
