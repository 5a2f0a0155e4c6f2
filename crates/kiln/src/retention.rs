//! Retention: how long finished instances are kept, and the background purger that deletes
//! them (with their history) once that time has passed, along with expired idempotency keys.
//!
//! One node purges at a time: the purger holds a lease kept in the store's settings (a
//! compare-and-set, so nodes sharing a database take turns), renewed between batches. (A batch
//! that outlasts the lease may overlap the next holder's first: harmless, as both skip rows the
//! other holds.) A pass works
//! in bounded batches with pauses as long as the batch took, so turns waiting for the same
//! database are never held up behind a long purge.

use crate::runtime::{Runtime, wall_clock};
use kiln_core::{RuntimeStatus, Timestamp};
use kiln_store::{PurgeFilter, StoreResult};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The shortest retention accepted: anything shorter would purge what a client is still
/// polling for.
pub const MIN_RETENTION: Duration = Duration::from_secs(60);

/// The longest check interval accepted.
pub const MAX_CHECK_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The largest batch accepted (one transaction each; on SQLite, the writer's time).
pub const MAX_BATCH_SIZE: usize = 10_000;

/// The setting that holds the purger's lease: `NODE UNTIL_MS` (`- 0` once given up).
pub const PURGER_LEASE: &str = "kiln.retention.purger";

/// The shortest pause between two batches of one pass.
const MIN_BATCH_PAUSE: Duration = Duration::from_millis(10);

/// How long finished instances of one kind are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Purged this long after they finished.
    For(Duration),
    /// Never purged by retention.
    Forever,
}

/// How long finished instances are kept, per terminal status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Instances that completed.
    pub completed: Keep,
    /// Instances that failed (kept longer by default: someone may want to rewind them).
    pub failed: Keep,
    /// Instances that were terminated or canceled.
    pub terminated: Keep,
}

impl RetentionPolicy {
    /// How long instances that ended in `status` are kept (`None` for a status that is not
    /// terminal).
    pub fn keep(&self, status: RuntimeStatus) -> Option<Keep> {
        match status {
            RuntimeStatus::Completed => Some(self.completed),
            RuntimeStatus::Failed => Some(self.failed),
            RuntimeStatus::Terminated | RuntimeStatus::Canceled => Some(self.terminated),
            _ => None,
        }
    }
}

impl Default for RetentionPolicy {
    /// Completed 7 days, failed 30 days, terminated 7 days: the database stops growing once
    /// the load is steady, and a failure stays around long enough to be looked at.
    fn default() -> Self {
        let days = |d: u64| Keep::For(Duration::from_secs(d * 24 * 3600));
        RetentionPolicy { completed: days(7), failed: days(30), terminated: days(7) }
    }
}

/// Retention for every orchestration, and how the purger runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Whether finished instances are purged at all (expired idempotency keys are, either way).
    pub enabled: bool,
    /// The policy of orchestrations without one of their own.
    pub default: RetentionPolicy,
    /// Policies of particular orchestrations (by name), replacing the default for them.
    pub orchestrations: BTreeMap<String, RetentionPolicy>,
    /// How often the purger looks for expired instances.
    pub check_every: Duration,
    /// Most instances (or keys) one batch deletes.
    pub batch_size: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            enabled: true,
            default: RetentionPolicy::default(),
            orchestrations: BTreeMap::new(),
            check_every: Duration::from_secs(60),
            batch_size: 100,
        }
    }
}

/// A retention setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRetention {
    /// A retention shorter than [`MIN_RETENTION`].
    #[error("retention of {status} instances of {scope} must be at least a minute, not {keep:?}")]
    TooShort {
        /// `every orchestration`, or `orchestration 'NAME'`.
        scope: String,
        /// The status it is for.
        status: &'static str,
        /// What was asked for.
        keep: Duration,
    },
    /// A policy for an orchestration that is not registered.
    #[error("retention names orchestration '{0}', which is not registered")]
    UnknownOrchestration(String),
    /// A check interval or batch size out of bounds.
    #[error(
        "the retention check interval (check_seconds) must be above zero and at most a day, and the batch size from 1 to 10,000"
    )]
    OutOfBounds,
}

impl Retention {
    /// Checks the bounds: every retention at least [`MIN_RETENTION`], a check interval up to
    /// [`MAX_CHECK_EVERY`] and a batch size up to [`MAX_BATCH_SIZE`], neither zero.
    pub fn validate_bounds(&self) -> Result<(), InvalidRetention> {
        if self.check_every.is_zero()
            || self.check_every > MAX_CHECK_EVERY
            || self.batch_size == 0
            || self.batch_size > MAX_BATCH_SIZE
        {
            return Err(InvalidRetention::OutOfBounds);
        }
        let policies = std::iter::once(("every orchestration".to_owned(), &self.default))
            .chain(self.orchestrations.iter().map(|(name, policy)| (format!("orchestration '{name}'"), policy)));
        for (scope, policy) in policies {
            for (status, keep) in
                [("completed", policy.completed), ("failed", policy.failed), ("terminated", policy.terminated)]
            {
                if let Keep::For(keep) = keep
                    && keep < MIN_RETENTION
                {
                    return Err(InvalidRetention::TooShort { scope, status, keep });
                }
            }
        }
        Ok(())
    }

    /// Checks the bounds, and that every orchestration named is one of `registered`.
    pub(crate) fn validate(&self, registered: impl Fn(&str) -> bool) -> Result<(), InvalidRetention> {
        self.validate_bounds()?;
        match self.orchestrations.keys().find(|name| !registered(name)) {
            Some(name) => Err(InvalidRetention::UnknownOrchestration(name.clone())),
            None => Ok(()),
        }
    }

    /// The purge filters that apply the policies as of `at`: per terminal status, one for the
    /// default (leaving out the orchestrations with a policy of their own) and one per such
    /// orchestration; none where instances are kept forever, nor when retention is off.
    pub fn filters(&self, at: Timestamp) -> Vec<PurgeFilter> {
        if !self.enabled {
            return Vec::new();
        }
        let finished_before =
            |keep: Duration| Timestamp(at.0.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX)));
        let own: Vec<String> = self.orchestrations.keys().cloned().collect();
        let mut filters = Vec::new();
        for status in RuntimeStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            if let Some(Keep::For(keep)) = self.default.keep(status) {
                filters.push(PurgeFilter {
                    statuses: vec![status],
                    excluded_names: own.clone(),
                    finished_before: Some(finished_before(keep)),
                    ..Default::default()
                });
            }
            for (name, policy) in &self.orchestrations {
                if let Some(Keep::For(keep)) = policy.keep(status) {
                    filters.push(PurgeFilter {
                        statuses: vec![status],
                        name: Some(name.clone()),
                        finished_before: Some(finished_before(keep)),
                        ..Default::default()
                    });
                }
            }
        }
        filters
    }
}

/// What one retention pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPass {
    /// Instances purged (with their history), sub-orchestrations included.
    pub purged: u64,
    /// Expired idempotency keys deleted.
    pub keys_expired: u64,
}

/// Purges what the policies let go as of `at`, batch by batch, until nothing is left, `stop`
/// is set, or (with `lease`) this node no longer holds the purger lease, which it renews on its
/// way.
pub(crate) async fn pass(
    rt: &Runtime,
    at: Timestamp,
    stop: &watch::Receiver<bool>,
    mut lease: Option<&mut PurgerLease>,
) -> StoreResult<RetentionPass> {
    let retention = &rt.config.retention;
    let mut done = RetentionPass::default();
    let go_on = async |lease: &mut Option<&mut PurgerLease>| -> StoreResult<bool> {
        if *stop.borrow() {
            return Ok(false);
        }
        match lease {
            Some(lease) => lease.keep(rt).await,
            None => Ok(true),
        }
    };
    for mut filter in retention.filters(at) {
        loop {
            if !go_on(&mut lease).await? {
                return Ok(done);
            }
            let started = Instant::now();
            let batch = rt.store.purge_batch(&filter, retention.batch_size).await?;
            done.purged += batch.deleted;
            rt.metrics.purged.fetch_add(batch.deleted, Ordering::Relaxed);
            // Each batch starts where the last one ended, so what one leaves (a tree with a
            // message waiting) is walked once a pass. A short batch is the last (one that
            // skipped rows other transactions held included: the next pass takes them).
            match batch.last {
                Some(last) if batch.selected == retention.batch_size => filter.after = Some(last),
                _ => break,
            }
            tokio::time::sleep(started.elapsed().max(MIN_BATCH_PAUSE)).await;
        }
    }
    loop {
        if !go_on(&mut lease).await? {
            return Ok(done);
        }
        let started = Instant::now();
        let expired = rt.store.expire_idempotency_keys(at, retention.batch_size).await?;
        done.keys_expired += expired;
        rt.metrics.keys_expired.fetch_add(expired, Ordering::Relaxed);
        if expired < retention.batch_size as u64 {
            return Ok(done);
        }
        tokio::time::sleep(started.elapsed().max(MIN_BATCH_PAUSE)).await;
    }
}

/// The background purger: a pass every `check_every` (the first one interval after start, so
/// that an operator sees the policy `kiln serve` prints before anything is deleted), on the
/// node that holds the purger lease; the lease is given up when the runtime stops.
pub(crate) async fn purger(rt: Arc<Runtime>, mut stop: watch::Receiver<bool>) {
    let check_every = rt.config.retention.check_every;
    let mut lease = PurgerLease::new(check_every);
    loop {
        tokio::select! {
            () = tokio::time::sleep(check_every) => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
        match lease.keep(&rt).await {
            Ok(true) => {
                rt.metrics.retention_passes.fetch_add(1, Ordering::Relaxed);
                match pass(&rt, wall_clock(), &stop, Some(&mut lease)).await {
                    Ok(done) if done != RetentionPass::default() => {
                        tracing::info!(purged = done.purged, keys_expired = done.keys_expired, "retention pass");
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "retention pass failed; trying again later"),
                }
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, "cannot take the retention purger lease"),
        }
    }
    lease.release(&rt).await;
}

/// The purger lease as one node sees it: a setting holding `NODE UNTIL_MS`, taken and renewed
/// by compare-and-set. Its expiry comes from the holder's clock: nodes' clocks must agree to
/// well within the check interval (as they must for work leases).
pub(crate) struct PurgerLease {
    node: String,
    /// How long a renewal holds it.
    length: Duration,
    /// When this node last took or renewed it (`None`: it does not hold it).
    renewed: Option<Instant>,
}

impl PurgerLease {
    fn new(check_every: Duration) -> PurgerLease {
        PurgerLease { node: uuid::Uuid::new_v4().simple().to_string(), length: 2 * check_every, renewed: None }
    }

    /// Whether this node holds the lease now: taken if free or lapsed, renewed once a quarter
    /// of its length has passed since the last renewal.
    async fn keep(&mut self, rt: &Runtime) -> StoreResult<bool> {
        if self.renewed.is_some_and(|at| at.elapsed() < self.length / 4) {
            return Ok(true);
        }
        let now = wall_clock();
        let held = rt.store.get_setting(PURGER_LEASE).await?;
        if let Some(value) = &held {
            let (holder, until) = value.split_once(' ').unwrap_or((value, "0"));
            if holder != self.node && until.parse::<i64>().is_ok_and(|until| until > now.0) {
                self.renewed = None;
                return Ok(false);
            }
        }
        let until = now.0.saturating_add(i64::try_from(self.length.as_millis()).unwrap_or(i64::MAX));
        let taken = rt.store.replace_setting(PURGER_LEASE, held.as_deref(), &format!("{} {until}", self.node)).await?;
        self.renewed = taken.then(Instant::now);
        Ok(taken)
    }

    /// Gives the lease up (if this node holds it), so that another node takes over at its next
    /// check instead of after the lease runs out.
    async fn release(&mut self, rt: &Runtime) {
        if self.renewed.take().is_none() {
            return;
        }
        if let Ok(Some(value)) = rt.store.get_setting(PURGER_LEASE).await
            && value.split(' ').next() == Some(self.node.as_str())
        {
            let _ = rt.store.replace_setting(PURGER_LEASE, Some(&value), "- 0").await;
        }
    }
}
