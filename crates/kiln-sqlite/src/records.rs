//! The latest records of recently written instances, kept in memory for status reads.
//!
//! Clients poll status URLs while instances run and after they finish. Every commit that
//! changes an instance's row passes its new record here (the writer knows it in full after a
//! turn or a creation) or drops the old one (purges), so those reads are answered from memory
//! instead of a reader connection, whose page cache SQLite empties whenever the WAL has grown.
//! A record read from the database is kept only if no commit came while it was being read, so
//! the map never serves a stale record.

use kiln_store::InstanceRecord;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Records kept at most (the oldest kept go first).
const CAPACITY: usize = 16_384;

/// A change one commit made to an instance's record.
#[derive(Debug)]
pub struct RecordChange {
    /// The instance.
    pub instance_id: String,
    /// Its record after the commit, or `None` when the commit does not know it (or deleted it).
    pub record: Option<InstanceRecord>,
}

/// The map and the commit generation it was last changed at.
#[derive(Debug, Default)]
pub struct LatestRecords {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every commit that changes instances.
    generation: u64,
    records: HashMap<String, (InstanceRecord, u64)>,
    /// Insertion order for eviction: `(id, insertion number)`; stale entries are skipped.
    order: VecDeque<(String, u64)>,
    inserted: u64,
}

impl Inner {
    fn insert(&mut self, record: InstanceRecord) {
        self.inserted += 1;
        let number = self.inserted;
        self.order.push_back((record.instance_id.clone(), number));
        self.records.insert(record.instance_id.clone(), (record, number));
        while self.records.len() > CAPACITY {
            let Some((id, number)) = self.order.pop_front() else { break };
            if self.records.get(&id).is_some_and(|(_, kept)| *kept == number) {
                self.records.remove(&id);
            }
        }
        if self.order.len() > 2 * CAPACITY {
            let records = &self.records;
            self.order.retain(|(id, n)| records.get(id).is_some_and(|(_, kept)| kept == n));
        }
    }
}

impl LatestRecords {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every operation leaves the map consistent; a poisoned lock is safe to recover.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The kept record of an instance, if any.
    pub fn get(&self, instance_id: &str) -> Option<InstanceRecord> {
        self.lock().records.get(instance_id).map(|(record, _)| record.clone())
    }

    /// The current generation; take it before reading a record to keep.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps a record read from the database at `generation`, if no commit came since.
    pub fn keep(&self, record: &InstanceRecord, generation: u64) {
        let mut inner = self.lock();
        if inner.generation == generation {
            inner.insert(record.clone());
        }
    }

    /// Applies one commit's changes, in order (taking their records), and starts a new generation.
    pub fn apply(&self, changes: &mut [RecordChange]) {
        let mut inner = self.lock();
        inner.generation += 1;
        for change in changes {
            match change.record.take() {
                Some(record) => inner.insert(record),
                None => {
                    inner.records.remove(&change.instance_id);
                }
            }
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
            labels: Default::default(),
            correlation: None,
        }
    }

    fn change(id: &str, record: Option<InstanceRecord>) -> RecordChange {
        RecordChange { instance_id: id.into(), record }
    }

    #[test]
    fn commits_replace_or_drop_records() {
        let latest = LatestRecords::default();
        latest.apply(&mut [change("a", Some(record("a", RuntimeStatus::Running)))]);
        assert_eq!(latest.get("a").map(|r| r.status), Some(RuntimeStatus::Running));
        latest.apply(&mut [change("a", Some(record("a", RuntimeStatus::Completed)))]);
        assert_eq!(latest.get("a").map(|r| r.status), Some(RuntimeStatus::Completed));
        latest.apply(&mut [change("a", Some(record("a", RuntimeStatus::Running))), change("a", None)]);
        assert!(latest.get("a").is_none(), "changes apply in commit order");
    }

    #[test]
    fn a_read_is_kept_only_if_no_commit_came_while_it_ran() {
        let latest = LatestRecords::default();
        let generation = latest.generation();
        latest.keep(&record("read", RuntimeStatus::Running), generation);
        assert!(latest.get("read").is_some());
        let generation = latest.generation();
        latest.apply(&mut [change("other", None)]);
        latest.keep(&record("stale", RuntimeStatus::Running), generation);
        assert!(latest.get("stale").is_none(), "a record read before a commit is not kept");
    }

    #[test]
    fn holds_at_most_its_capacity() {
        let latest = LatestRecords::default();
        for i in 0..CAPACITY + 10 {
            latest.apply(&mut [
                change("x", None),
                change(&format!("i{i}"), Some(record(&format!("i{i}"), RuntimeStatus::Completed))),
            ]);
        }
        assert!(latest.get("i0").is_none(), "the oldest went first");
        assert!(latest.get(&format!("i{}", CAPACITY + 9)).is_some());
        assert_eq!(latest.lock().records.len(), CAPACITY);
        assert!(latest.lock().order.len() <= 2 * CAPACITY + 1);
    }
}
