//! The sticky execution cache: live orchestration futures kept between turns, so a hot instance
//! continues from where it stopped instead of replaying its whole history. Bounded; the least
//! recently used entry is evicted, and an evicted instance simply replays on its next turn.

use crate::executor::Execution;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// A bounded LRU map from instance id to its live execution.
pub(crate) struct ExecutionCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    entries: HashMap<String, (u64, Execution)>,
    /// Use order; entries whose tick no longer matches are stale and skipped.
    order: VecDeque<(u64, String)>,
    tick: u64,
}

impl ExecutionCache {
    pub(crate) fn new(capacity: usize) -> ExecutionCache {
        ExecutionCache { capacity, inner: Mutex::new(CacheInner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // Every operation leaves the maps consistent before it can panic, so poison is harmless.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes an instance's execution out of the cache (the turn owns it while it runs).
    pub(crate) fn take(&self, instance_id: &str) -> Option<Execution> {
        self.lock().entries.remove(instance_id).map(|(_, e)| e)
    }

    /// Puts an execution back after a committed turn.
    pub(crate) fn put(&self, instance_id: String, execution: Execution) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.order.push_back((tick, instance_id.clone()));
        inner.entries.insert(instance_id, (tick, execution));
        while inner.entries.len() > self.capacity {
            let Some((tick, id)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&id).is_some_and(|(t, _)| *t == tick) {
                inner.entries.remove(&id);
            }
        }
        if inner.order.len() > self.capacity.saturating_mul(4).max(64) {
            let CacheInner { entries, order, .. } = &mut *inner;
            order.retain(|(tick, id)| entries.get(id).is_some_and(|(t, _)| t == tick));
        }
    }
}
