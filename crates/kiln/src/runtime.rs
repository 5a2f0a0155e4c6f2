//! What the workers and the client share: the store, the registry, configuration, the
//! execution cache and counters.

use crate::cache::ExecutionCache;
use crate::config::RuntimeConfig;
use crate::registry::Registry;
use kiln_core::Timestamp;
use kiln_store::Store;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Shared runtime state.
pub(crate) struct Runtime {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Registry,
    pub(crate) config: RuntimeConfig,
    pub(crate) cache: ExecutionCache,
    pub(crate) metrics: Metrics,
    pub(crate) running: crate::worker::RunningActivities,
    /// The registry's activity timeouts, shared by every execution.
    pub(crate) activity_defaults: Arc<crate::registry::ActivityDefaults>,
}

/// Counters of the runtime's work since start.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) turns: AtomicU64,
    pub(crate) replays: AtomicU64,
    pub(crate) activities: AtomicU64,
    pub(crate) activity_millis: AtomicU64,
    pub(crate) unregistered: AtomicU64,
    pub(crate) canceled: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) purged: AtomicU64,
    pub(crate) retention_passes: AtomicU64,
    pub(crate) keys_expired: AtomicU64,
    /// Moving average of instance durations (created → finished) per orchestration, in ms.
    durations: Mutex<HashMap<String, f64>>,
}

/// Weight of the newest observation in the duration moving average.
const DURATION_WEIGHT: f64 = 0.2;

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Orchestration turns committed.
    pub turns: u64,
    /// Turns that had to replay history (cache misses).
    pub replays: u64,
    /// Activities finished.
    pub activities: u64,
    /// Total time spent in activities, in milliseconds.
    pub activity_millis: u64,
    /// Work given back because its orchestration version or activity is not registered on this
    /// worker (it waits for a worker that has it: a deploy in progress, or a missing one).
    pub unregistered: u64,
    /// Running activities canceled because their instance was terminated or their lease was
    /// lost (another worker runs them).
    pub canceled: u64,
    /// Activity attempts that ran past a timeout (start-to-close, schedule-to-close or
    /// heartbeat) and were failed with a timeout failure.
    pub timed_out: u64,
    /// Retention passes this node's purger ran (while it held the purger lease).
    pub retention_passes: u64,
    /// Finished instances the retention purger deleted (sub-orchestrations included).
    pub purged: u64,
    /// Expired idempotency keys the retention purger deleted.
    pub idempotency_keys_expired: u64,
}

impl Metrics {
    /// Records how long an instance of `name` took from creation to its end.
    pub(crate) fn record_duration(&self, name: &str, duration: Duration) {
        let millis = duration.as_secs_f64() * 1e3;
        let mut durations = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        durations.entry(name.to_owned()).and_modify(|avg| *avg += DURATION_WEIGHT * (millis - *avg)).or_insert(millis);
    }

    /// The moving average duration of `name`, if any instance of it finished.
    pub(crate) fn typical_duration(&self, name: &str) -> Option<Duration> {
        let durations = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        durations.get(name).map(|millis| Duration::from_secs_f64(millis.max(0.0) / 1e3))
    }

    /// Reads the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            turns: self.turns.load(Ordering::Relaxed),
            replays: self.replays.load(Ordering::Relaxed),
            activities: self.activities.load(Ordering::Relaxed),
            activity_millis: self.activity_millis.load(Ordering::Relaxed),
            unregistered: self.unregistered.load(Ordering::Relaxed),
            canceled: self.canceled.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            purged: self.purged.load(Ordering::Relaxed),
            retention_passes: self.retention_passes.load(Ordering::Relaxed),
            idempotency_keys_expired: self.keys_expired.load(Ordering::Relaxed),
        }
    }
}

impl Runtime {
    pub(crate) fn new(store: Arc<dyn Store>, registry: Registry, config: RuntimeConfig) -> Runtime {
        let cache = ExecutionCache::new(config.cache_capacity);
        let activity_defaults = Arc::new(registry.activity_defaults());
        Runtime {
            store,
            registry,
            config,
            cache,
            metrics: Metrics::default(),
            running: Default::default(),
            activity_defaults,
        }
    }
}

/// The wall clock as a [`Timestamp`] (the runtime's only clock; orchestrations see turn stamps).
pub(crate) fn wall_clock() -> Timestamp {
    kiln_core::time::now()
}

/// A new run's first execution number (see [`kiln_store::NewInstance::execution`]): 40 random
/// bits, so numbers stay exact in JSON and a purged run's numbers are never met again in
/// practice.
pub(crate) fn new_run_execution() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0 >> 24
}

/// A correlation from what a caller sent: its trace context, else a new (sampled) trace; its
/// correlation id, else the trace id.
pub fn correlate(trace: Option<kiln_core::TraceContext>, id: Option<String>) -> kiln_core::Correlation {
    let trace = trace.unwrap_or_else(|| kiln_core::TraceContext::new(random_bytes(), random_bytes(), true));
    kiln_core::Correlation { id: id.unwrap_or_else(|| trace.trace_id().to_owned()), trace }
}

/// `N` random bytes (at most 16): a random UUID's, with the bits that name its version and
/// variant (bytes 6 and 8) replaced by random ones of another.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut random = *uuid::Uuid::new_v4().as_bytes();
    let other = uuid::Uuid::new_v4();
    (random[6], random[8]) = (other.as_bytes()[0], other.as_bytes()[1]);
    let mut bytes = [0; N];
    bytes.copy_from_slice(&random[..N]);
    bytes
}
