//! Runtime configuration.

use crate::retention::Retention;
use kiln_core::PayloadLimits;
use std::collections::HashMap;
use std::time::Duration;

/// How the runtime dispatches and protects work. The defaults suit one node.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Orchestration turns processed at once. Turns mostly wait for their group commit, so many
    /// cheap workers let one commit carry many turns.
    pub orchestration_concurrency: usize,
    /// Activities running at once.
    pub activity_concurrency: usize,
    /// Most activities of one name running at once, unless [`RuntimeConfig::activity_limits`]
    /// names it; `None`: three quarters of `activity_concurrency`, so that one kind of work
    /// cannot take every slot. Activities over their limit wait in the store, unclaimed.
    pub activity_limit_per_name: Option<usize>,
    /// Limits of particular activity names (overriding the per-name default).
    pub activity_limits: HashMap<String, usize>,
    /// How long a claim on a work item lasts before another worker may take it over. Running
    /// activities renew theirs.
    pub lease_duration: Duration,
    /// Live executions kept in memory between turns (0 disables the cache: every turn replays).
    pub cache_capacity: usize,
    /// A work item claimed this many times without finishing is given up on (poison).
    pub max_dequeue_count: u32,
    /// Payload size limits.
    pub limits: PayloadLimits,
    /// How long shutdown waits for running activities before releasing them.
    pub shutdown_grace: Duration,
    /// How long an instance whose orchestration version is not registered here, or an activity
    /// whose function is not, waits before it is offered again.
    pub unregistered_retry: Duration,
    /// How long finished instances are kept, and how the background purger runs.
    pub retention: Retention,
}

impl RuntimeConfig {
    /// How many activities named `name` may run at once.
    pub fn activity_limit(&self, name: &str) -> usize {
        let default = self.activity_limit_per_name.unwrap_or(self.activity_concurrency * 3 / 4);
        self.activity_limits.get(name).copied().unwrap_or(default).max(1)
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            orchestration_concurrency: 64,
            activity_concurrency: 256,
            activity_limit_per_name: None,
            activity_limits: HashMap::new(),
            lease_duration: Duration::from_secs(30),
            cache_capacity: 10_000,
            max_dequeue_count: 10,
            limits: PayloadLimits::default(),
            shutdown_grace: Duration::from_secs(10),
            unregistered_retry: Duration::from_secs(5),
            retention: Retention::default(),
        }
    }
}
