//! The `Store` trait: everything the runtime and clients persist through.

use crate::{
    ActivityWorkItem, IdempotencyKey, IdempotentStart, InstancePage, InstanceQuery, InstanceRecord, Lease, NewInstance,
    OrchestrationWorkItem, PurgeFilter, PurgePreview, PurgedBatch, StatusWatchers, StoreError, TurnCommit, Unrunnable,
};
use async_trait::async_trait;
use kiln_core::{HistoryEvent, Payload, Timestamp};
use std::time::Duration;

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Most instances one purge transaction selects, unless its caller asks for fewer.
pub const PURGE_BATCH: usize = 500;

/// A durable backend for Kiln.
///
/// Contract, shared by every backend and checked by the conformance suite:
/// - every method that returns `Ok` has made its change durable;
/// - [`Store::commit_turn`] is atomic and refused (`LeaseLost`) if the lease was lost;
/// - work is handed out under leases: an instance's messages go to one holder at a time, and a
///   lapsed lease makes the work available again with a higher `dequeue_count`;
/// - the `fetch_*` methods wait (up to `wait`) for work instead of making callers poll;
/// - messages with a `visible_at` in the future are not handed out before then.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an instance with an `ExecutionStarted` message in its inbox. An id held by an
    /// unfinished instance gives `AlreadyExists`; a finished one is replaced by a new execution.
    async fn create_instance(&self, instance: NewInstance) -> StoreResult<()>;

    /// Creates an instance unless `key` (unexpired) already started one: then returns that
    /// instance, or `IdempotencyKeyReused` if the fingerprint differs. Atomic with the creation.
    async fn create_instance_idempotent(
        &self,
        instance: NewInstance,
        key: IdempotencyKey,
    ) -> StoreResult<IdempotentStart>;

    /// Puts a message (an external event, terminate, suspend, resume, rewind) into an instance's
    /// inbox. `NotFound` if the instance does not exist.
    async fn send_message(&self, instance_id: &str, event: HistoryEvent) -> StoreResult<()>;

    /// Claims the next instance with messages to process, waiting up to `wait` for one.
    async fn fetch_orchestration_work(
        &self,
        lease_for: Duration,
        wait: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>>;

    /// Commits a turn atomically and releases its lease.
    async fn commit_turn(&self, commit: TurnCommit) -> StoreResult<()>;

    /// Releases a claimed instance without committing; its messages become available again
    /// after `retry_after`. The claim was given back, not lost to a crash, so it does not count
    /// towards the work item's dequeue count (poison detection).
    async fn abandon_orchestration_work(
        &self,
        instance_id: &str,
        lease: Lease,
        retry_after: Duration,
    ) -> StoreResult<()>;

    /// Tells the store that the runtime claiming through it cannot run `work` (it has not
    /// registered it). Returns whether this store's claims skip such work from now on, so that
    /// the runtime can give it back at once for another node that has it. A store that shares
    /// work between nodes must skip it: given back with a delay instead, it would be hidden from
    /// the nodes that can run it. A store that one process owns has no other node to leave it
    /// to and may decline (the default): the runtime then gives the work back after a delay, so
    /// as not to claim it again and again. What needs no code stays claimable: a terminate, and a
    /// finished instance's messages other than a rewind. The skipping is per store object, so
    /// one store object serves one runtime (one registry).
    fn skip_in_claims(&self, work: &Unrunnable) -> bool {
        let _ = work;
        false
    }

    /// Claims up to `max` activities to run (one round trip for a batch), waiting up to `wait`
    /// for at least one; empty when the wait ends with none queued. No activity named in
    /// `excluded` is claimed (its concurrency limit is reached): such activities wait their
    /// turn without holding back the others.
    async fn fetch_activity_work(
        &self,
        lease_for: Duration,
        wait: Duration,
        max: usize,
        excluded: &[String],
    ) -> StoreResult<Vec<ActivityWorkItem>>;

    /// Whether [`Store::create_instance_with_first_turn`] writes an instance and its first turn
    /// in one commit (otherwise there is no point running that turn before the instance exists).
    fn takes_first_turns(&self) -> bool {
        false
    }

    /// Creates an instance together with its first turn, run before the instance was stored
    /// (one commit instead of two; the turn consumed the `ExecutionStarted` message, which is
    /// therefore never queued). `AlreadyExists` if the id is taken: this never replaces an
    /// instance. The turn's lease is not checked, as nothing can hold one on an instance that
    /// does not exist yet. The default creates the instance only; a worker runs the first turn.
    async fn create_instance_with_first_turn(&self, instance: NewInstance, first_turn: TurnCommit) -> StoreResult<()> {
        let _ = first_turn;
        self.create_instance(instance).await
    }

    /// Claims an activity's instance for a turn that takes the activity's `result` directly,
    /// when the instance is idle here: the work item carries `result` as one more message
    /// (not stored), and the turn's commit must list the activity in
    /// [`TurnCommit::finished_activities`], so that result and turn are one commit instead of
    /// two. `None` when the store or the instance's state does not allow it: report the result
    /// with [`Store::complete_activity`] instead. The default never allows it.
    async fn claim_with_activity_result(
        &self,
        item: &ActivityWorkItem,
        result: &HistoryEvent,
        lease_for: Duration,
    ) -> StoreResult<Option<OrchestrationWorkItem>> {
        let _ = (item, result, lease_for);
        Ok(None)
    }

    /// Extends an activity's lease, saving `heartbeat` (its last heartbeat details) with it when
    /// given, so that the next delivery of the same attempt (after its worker was lost) starts
    /// from them; `LeaseLost` if it already lapsed and was handed out again.
    async fn renew_activity_lease(
        &self,
        item: &ActivityWorkItem,
        lease_for: Duration,
        heartbeat: Option<&Payload>,
    ) -> StoreResult<Lease>;

    /// Removes a finished activity and delivers its `TaskCompleted`/`TaskFailed` to the instance,
    /// atomically. `LeaseLost` if the lease lapsed (the activity will run again).
    async fn complete_activity(&self, item: &ActivityWorkItem, result: HistoryEvent) -> StoreResult<()>;

    /// Releases a claimed activity; it becomes available again after `retry_after`. Like
    /// [`Store::abandon_orchestration_work`], the claim does not count towards its dequeue count.
    async fn abandon_activity_work(&self, item: &ActivityWorkItem, retry_after: Duration) -> StoreResult<()>;

    /// Reads an instance's state.
    async fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceRecord>>;

    /// Reads the current execution's history.
    async fn get_history(&self, instance_id: &str) -> StoreResult<Vec<HistoryEvent>>;

    /// Lists instances with filters and keyset paging.
    async fn list_instances(&self, query: &InstanceQuery) -> StoreResult<InstancePage>;

    /// Purges one finished instance and, recursively, its finished sub-orchestrations (but not
    /// one with a message waiting). Returns how many instances were deleted. `NotFound` or
    /// `NotTerminal` otherwise.
    async fn purge_instance(&self, instance_id: &str) -> StoreResult<u64>;

    /// Purges up to `max` finished instances matching the filter, top-level ones and those whose
    /// parent is gone, oldest created first, with their finished sub-orchestrations, in one
    /// transaction. (With one status, a store walks it in index order; several may need a sort.) An instance
    /// or sub-orchestration with a message waiting (one visible now: a rewind on its way, say)
    /// is not purged, nor is one whose row another transaction holds.
    async fn purge_batch(&self, filter: &PurgeFilter, max: usize) -> StoreResult<PurgedBatch>;

    /// Purges every finished instance matching the filter (and their sub-orchestrations), in
    /// batches of [`PURGE_BATCH`], one status at a time, each walked once from its oldest
    /// instance; returns how many instances were deleted.
    async fn purge_instances(&self, filter: &PurgeFilter) -> StoreResult<u64> {
        let statuses: Vec<kiln_core::RuntimeStatus> = match filter.statuses.is_empty() {
            true => kiln_core::RuntimeStatus::ALL.into_iter().filter(|s| s.is_terminal()).collect(),
            false => filter.statuses.iter().copied().filter(|s| s.is_terminal()).collect(),
        };
        let mut total = 0;
        for status in statuses {
            let mut walk = PurgeFilter { statuses: vec![status], ..filter.clone() };
            loop {
                let batch = self.purge_batch(&walk, PURGE_BATCH).await?;
                total += batch.deleted;
                match batch.last {
                    Some(last) if batch.selected == PURGE_BATCH => walk.after = Some(last),
                    _ => break,
                }
            }
        }
        Ok(total)
    }

    /// What [`Store::purge_instances`] would delete now: how many instances the filter selects
    /// (counted up to [`crate::PREVIEW_COUNT_LIMIT`]), and the first `max` of them.
    async fn preview_purge(&self, filter: &PurgeFilter, max: usize) -> StoreResult<PurgePreview>;

    /// Deletes up to `max` idempotency keys that expired at or before `now`; returns how many.
    async fn expire_idempotency_keys(&self, now: Timestamp, max: usize) -> StoreResult<u64>;

    /// The creation time of the oldest instance stored, per terminal status (statuses with no
    /// instance left out): how far back retention keeps history.
    async fn oldest_finished(&self) -> StoreResult<Vec<(kiln_core::RuntimeStatus, Timestamp)>>;

    /// Counts instances per runtime status (statuses with no instances may be left out).
    async fn count_instances_by_status(&self) -> StoreResult<Vec<(kiln_core::RuntimeStatus, u64)>>;

    /// Reads a named setting (e.g. the token-signing secret).
    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>>;

    /// Stores a setting unless one exists; returns the value now stored.
    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<String>;

    /// Replaces a setting if it still holds `expected` (`None`: if it is absent); returns
    /// whether it did (a compare-and-set, so that concurrent rotations cannot lose a secret).
    async fn replace_setting(&self, key: &str, expected: Option<&str>, value: &str) -> StoreResult<bool>;

    /// Checks that the store can serve reads and accept writes.
    async fn health(&self) -> StoreResult<()>;

    /// Change notifications for instances, fed by this store's commits.
    fn watchers(&self) -> &StatusWatchers;

    /// Finishes pending writes and closes the store.
    async fn shutdown(&self);
}
