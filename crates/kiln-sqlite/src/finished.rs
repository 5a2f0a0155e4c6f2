//! Finished instances' records, kept in memory for status polling.
//!
//! A finished instance's record stops changing, yet clients keep reading it (status URLs are
//! polled, then read again by people and tools). Reads of those records are answered from here
//! instead of a reader connection. A record is dropped whenever a commit touches its instance
//! (a rewind, a purge, a new instance under the same id), and one read while such a commit was
//! being written is never kept, so the map cannot serve a stale record.

use kiln_store::InstanceRecord;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Records kept at most (the oldest kept go first).
const CAPACITY: usize = 16_384;

/// The map and the commit generation it was last invalidated at.
#[derive(Debug, Default)]
pub struct FinishedRecords {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every commit that touches instances.
    generation: u64,
    records: HashMap<String, (InstanceRecord, u64)>,
    /// Insertion order for eviction: `(id, insertion number)`; stale entries are skipped.
    order: VecDeque<(String, u64)>,
    inserted: u64,
}

impl FinishedRecords {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every operation leaves the map consistent; a poisoned lock is safe to recover.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The kept record of a finished instance, if any.
    pub fn get(&self, instance_id: &str) -> Option<InstanceRecord> {
        self.lock().records.get(instance_id).map(|(record, _)| record.clone())
    }

    /// The current generation; take it before reading a record that may be kept.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps a record read at `generation`, if it is finished and no commit came since.
    pub fn keep(&self, record: &InstanceRecord, generation: u64) {
        if !record.status.is_terminal() {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        inner.inserted += 1;
        let number = inner.inserted;
        inner.records.insert(record.instance_id.clone(), (record.clone(), number));
        inner.order.push_back((record.instance_id.clone(), number));
        while inner.records.len() > CAPACITY {
            let Some((id, number)) = inner.order.pop_front() else { break };
            if inner.records.get(&id).is_some_and(|(_, kept)| *kept == number) {
                inner.records.remove(&id);
            }
        }
        if inner.order.len() > 2 * CAPACITY {
            let records = &inner.records;
            let live: VecDeque<(String, u64)> = inner
                .order
                .iter()
                .filter(|(id, n)| records.get(id).is_some_and(|(_, kept)| kept == n))
                .cloned()
                .collect();
            inner.order = live;
        }
    }

    /// Drops the records of instances a commit touched, and starts a new generation.
    pub fn invalidate<'a>(&self, instance_ids: impl IntoIterator<Item = &'a String>) {
        let mut inner = self.lock();
        inner.generation += 1;
        for id in instance_ids {
            inner.records.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{Payload, RuntimeStatus, Timestamp};

    fn record(id: &str, status: RuntimeStatus) -> InstanceRecord {
        InstanceRecord {
            instance_id: id.into(),
            name: "o".into(),
            version: String::new(),
            execution: 0,
            status,
            input: Payload::null(),
            output: None,
            failure: None,
            custom_status: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            waiting_on: Vec::new(),
            parent: None,
            history_len: 0,
        }
    }

    #[test]
    fn keeps_finished_records_until_a_commit_touches_them() {
        let finished = FinishedRecords::default();
        let generation = finished.generation();
        finished.keep(&record("running", RuntimeStatus::Running), generation);
        finished.keep(&record("done", RuntimeStatus::Completed), generation);
        assert!(finished.get("running").is_none(), "only finished records are kept");
        assert!(finished.get("done").is_some());
        finished.invalidate([&"done".to_owned()]);
        assert!(finished.get("done").is_none());
        finished.keep(&record("done", RuntimeStatus::Completed), generation);
        assert!(finished.get("done").is_none(), "a record read before a commit is not kept");
    }

    #[test]
    fn holds_at_most_its_capacity() {
        let finished = FinishedRecords::default();
        for i in 0..CAPACITY + 10 {
            let generation = finished.generation();
            finished.keep(&record(&format!("i{i}"), RuntimeStatus::Completed), generation);
        }
        assert!(finished.get("i0").is_none(), "the oldest went first");
        assert!(finished.get(&format!("i{}", CAPACITY + 9)).is_some());
        assert_eq!(finished.lock().records.len(), CAPACITY);
    }
}
