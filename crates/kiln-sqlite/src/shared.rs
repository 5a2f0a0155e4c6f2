//! State shared by the store handle and its writer thread.

use crate::queue::Queues;
use crate::records::LatestRecords;
use kiln_core::Timestamp;
use kiln_store::StatusWatchers;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// What the handle and the writer thread share.
#[derive(Debug, Default)]
pub struct Shared {
    /// In-memory dispatch state.
    pub queues: Mutex<Queues>,
    /// Wakes orchestration workers.
    pub orchestration_ready: Notify,
    /// Wakes activity workers.
    pub activity_ready: Notify,
    /// Wakes status waiters.
    pub watchers: StatusWatchers,
    /// Recently written instances' records, for cheap status reads.
    pub records: LatestRecords,
}

impl Shared {
    /// Locks the queues. The queue operations never leave them half-changed, so a poisoned lock
    /// (a panic elsewhere while holding it) is safe to recover.
    pub fn lock_queues(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The wall clock as a [`Timestamp`].
pub fn now() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Timestamp(millis)
}
