//! What the workers and the client share: the store, the registry, configuration, the
//! execution cache and counters.

use crate::cache::ExecutionCache;
use crate::config::RuntimeConfig;
use crate::registry::Registry;
use kiln_core::Timestamp;
use kiln_store::Store;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Shared runtime state.
pub(crate) struct Runtime {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Registry,
    pub(crate) config: RuntimeConfig,
    pub(crate) cache: ExecutionCache,
    pub(crate) metrics: Metrics,
}

/// Counters of the runtime's work since start.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) turns: AtomicU64,
    pub(crate) replays: AtomicU64,
    pub(crate) activities: AtomicU64,
    pub(crate) activity_millis: AtomicU64,
}

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
}

impl Metrics {
    /// Reads the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            turns: self.turns.load(Ordering::Relaxed),
            replays: self.replays.load(Ordering::Relaxed),
            activities: self.activities.load(Ordering::Relaxed),
            activity_millis: self.activity_millis.load(Ordering::Relaxed),
        }
    }
}

impl Runtime {
    pub(crate) fn new(store: Arc<dyn Store>, registry: Registry, config: RuntimeConfig) -> Runtime {
        let cache = ExecutionCache::new(config.cache_capacity);
        Runtime { store, registry, config, cache, metrics: Metrics::default() }
    }
}

/// The wall clock as a [`Timestamp`] (the runtime's only clock; orchestrations see turn stamps).
pub(crate) fn wall_clock() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Timestamp(millis)
}
