//! A fault-injecting [`Store`] wrapper shared by the fault and simulation tests: it fails calls
//! before they reach the store, fails them *after* the store committed (the caller never hears
//! that it worked, as when a connection drops during `COMMIT`), or delays them.

use async_trait::async_trait;
use kiln::{RuntimeStatus, Store, StoreError};
use kiln_core::{HistoryEvent, Payload, Timestamp};
use kiln_store::{
    ActivityWorkItem, IdempotencyKey, IdempotentStart, InstancePage, InstanceQuery, InstanceRecord, Lease, NewInstance,
    OrchestrationWorkItem, PurgeFilter, PurgePreview, PurgedBatch, StatusWatchers, StoreResult, TurnCommit, Unrunnable,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one call is made to suffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// The call fails before it reaches the store.
    FailBefore,
    /// The store does the work, then the caller is told it failed.
    FailAfter,
    /// The call waits a few milliseconds first.
    Delay,
    /// A claim that waits for work does not hear that work arrived: it waits out its whole
    /// wait, then looks (only with [`FaultyStore::lose_notifications`]).
    LostNotification,
}

/// A store that injects faults into every call that writes or claims, at a rate in per mille,
/// from a seeded generator (a failing seed reproduces the same mix, if not the same schedule).
pub struct FaultyStore {
    /// The store underneath.
    pub inner: Arc<dyn Store>,
    per_mille: u64,
    /// Whether the first calls at each point get each fault in turn.
    each_kind_first: bool,
    /// Per mille of waiting claims that miss their wake-up (0 unless set).
    deaf_per_mille: AtomicU64,
    /// Faults are injected only while this is set.
    pub enabled: AtomicBool,
    state: AtomicU64,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    injected: Mutex<BTreeMap<(&'static str, Fault), u32>>,
}

impl FaultyStore {
    /// Wraps `inner`, failing or delaying about `per_mille` of its write calls (0: none).
    pub fn new(inner: Arc<dyn Store>, per_mille: u64, seed: u64) -> FaultyStore {
        FaultyStore {
            inner,
            per_mille,
            enabled: AtomicBool::new(true),
            each_kind_first: true,
            deaf_per_mille: AtomicU64::new(0),
            state: AtomicU64::new(seed),
            calls: Mutex::default(),
            injected: Mutex::default(),
        }
    }

    /// Draws every fault at random, without giving the first calls at each point each kind in
    /// turn (which makes every run start with back-offs).
    pub fn at_random(mut self) -> FaultyStore {
        self.each_kind_first = false;
        self
    }

    /// Makes about `per_mille` of the claims that wait for work miss their wake-up.
    pub fn lose_notifications(&self, per_mille: u64) {
        self.deaf_per_mille.store(per_mille, Ordering::Relaxed);
    }

    /// Whether this claim of `point` misses its wake-up (and counts it if so).
    fn deaf(&self, point: &'static str) -> bool {
        let per_mille = self.deaf_per_mille.load(Ordering::Relaxed);
        if per_mille == 0 || !self.enabled.load(Ordering::Relaxed) || self.next() % 1000 >= per_mille {
            return false;
        }
        *self.injected.lock().unwrap().entry((point, Fault::LostNotification)).or_default() += 1;
        true
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
            1 if self.each_kind_first => 0,
            2 if self.each_kind_first => 1,
            3 if self.each_kind_first => 2,
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
            // `roll` never draws a lost notification (see `deaf`).
            None | Some(Fault::LostNotification) => call.await,
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

    /// The faults injected so far, by call point and kind.
    pub fn injected(&self) -> BTreeMap<(&'static str, Fault), u32> {
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
        let point = "fetch_orchestration_work";
        if self.deaf(point) {
            tokio::time::sleep(wait).await;
            return self.write(point, self.inner.fetch_orchestration_work(lease_for, Duration::ZERO)).await;
        }
        self.write(point, self.inner.fetch_orchestration_work(lease_for, wait)).await
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
        excluded: &[String],
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let point = "fetch_activity_work";
        if self.deaf(point) {
            tokio::time::sleep(wait).await;
            return self.write(point, self.inner.fetch_activity_work(lease_for, Duration::ZERO, max, excluded)).await;
        }
        self.write(point, self.inner.fetch_activity_work(lease_for, wait, max, excluded)).await
    }

    fn takes_first_turns(&self) -> bool {
        self.inner.takes_first_turns()
    }

    fn skip_in_claims(&self, work: &Unrunnable) -> bool {
        self.inner.skip_in_claims(work)
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

    async fn renew_activity_lease(
        &self,
        item: &ActivityWorkItem,
        lease_for: Duration,
        heartbeat: Option<&Payload>,
    ) -> StoreResult<Lease> {
        self.write("renew_activity_lease", self.inner.renew_activity_lease(item, lease_for, heartbeat)).await
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

    async fn purge_batch(&self, filter: &PurgeFilter, max: usize) -> StoreResult<PurgedBatch> {
        self.write("purge_batch", self.inner.purge_batch(filter, max)).await
    }

    async fn preview_purge(&self, filter: &PurgeFilter, max: usize) -> StoreResult<PurgePreview> {
        self.inner.preview_purge(filter, max).await
    }

    async fn expire_idempotency_keys(&self, now: Timestamp, max: usize) -> StoreResult<u64> {
        self.write("expire_idempotency_keys", self.inner.expire_idempotency_keys(now, max)).await
    }

    async fn oldest_finished(&self) -> StoreResult<Vec<(RuntimeStatus, Timestamp)>> {
        self.inner.oldest_finished().await
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

    async fn replace_setting(&self, key: &str, expected: Option<&str>, value: &str) -> StoreResult<bool> {
        self.inner.replace_setting(key, expected, value).await
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
