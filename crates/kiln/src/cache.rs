//! The sticky execution cache: live orchestration futures kept between turns, so a hot instance
//! continues from where it stopped instead of replaying its whole history. Bounded; the least
//! recently used entry is evicted, and an evicted instance simply replays on its next turn.

use crate::executor::Execution;
use kiln_core::Timestamp;
use kiln_store::InstanceRecord;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Which committed state of its instance a cached execution stands for. Every commit of a turn
/// sets `updated_at` to the turn's time, which differs from the previous commit's even within
/// one millisecond (so a rewind, which rewrites the history in a commit of its own, changes it
/// even when the history keeps its length); a purged and re-created instance has a new
/// `created_at` and new execution numbers. An execution is reused only if all four still match.
/// (Not a true revision: with clocks that disagree, a commit could repeat an older commit's time
/// and history length exactly — a counter in the record would rule that out too.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordStamp {
    pub(crate) created_at: Timestamp,
    pub(crate) execution: u64,
    pub(crate) history_len: u64,
    pub(crate) updated_at: Timestamp,
}

impl RecordStamp {
    /// The stamp of a stored record.
    pub(crate) fn of(record: &InstanceRecord) -> RecordStamp {
        RecordStamp {
            created_at: record.created_at,
            execution: record.execution,
            history_len: record.history_len,
            updated_at: record.updated_at,
        }
    }
}

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

    /// Takes an instance's execution out of the cache if it stands for exactly this record
    /// (a stale one is dropped).
    pub(crate) fn take_matching(&self, record: &InstanceRecord) -> Option<Execution> {
        self.take(&record.instance_id).filter(|e| e.committed == Some(RecordStamp::of(record)))
    }

    /// Puts an execution back after a committed turn.
    pub(crate) fn put(&self, instance_id: String, execution: Execution) {
        if self.capacity == 0 {
            return;
        }
        // Dropping an execution runs the orchestration's drop code and takes its replay lock:
        // evicted ones are dropped after the cache's lock is released.
        let mut evicted = Vec::new();
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.order.push_back((tick, instance_id.clone()));
        evicted.extend(inner.entries.insert(instance_id, (tick, execution)));
        while inner.entries.len() > self.capacity {
            let Some((tick, id)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&id).is_some_and(|(t, _)| *t == tick) {
                evicted.extend(inner.entries.remove(&id));
            }
        }
        if inner.order.len() > self.capacity.saturating_mul(4).max(64) {
            let CacheInner { entries, order, .. } = &mut *inner;
            order.retain(|(tick, id)| entries.get(id).is_some_and(|(t, _)| t == tick));
        }
        drop(inner);
        drop(evicted);
    }
}
