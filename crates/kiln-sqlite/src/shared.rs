//! State shared by the store handle and its writer thread.

use crate::queue::Queues;
use crate::records::LatestRecords;
use kiln_core::Timestamp;
use kiln_store::StatusWatchers;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
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
    /// Set when a write failed for a passing reason (a full disk, an I/O error), cleared by the
    /// next commit: the store is not ready meanwhile.
    pub storage_failing: AtomicBool,
}

impl Shared {
    /// Locks the queues. The queue operations never leave them half-changed, so a poisoned lock
    /// (a panic elsewhere while holding it) is safe to recover.
    pub fn lock_queues(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Shared {
    /// Records whether the last transaction committed.
    pub fn set_storage_failing(&self, failing: bool) {
        if self.storage_failing.swap(failing, Ordering::Relaxed) != failing {
            if failing {
                tracing::error!(
                    "writes to the database fail (disk full or I/O error): new work is refused until they succeed"
                );
            } else {
                tracing::info!("writes to the database succeed again");
            }
        }
    }

    /// Whether the last transaction failed for a passing reason.
    pub fn storage_failing(&self) -> bool {
        self.storage_failing.load(Ordering::Relaxed)
    }
}

/// The wall clock as a [`Timestamp`] (the one in `kiln-core`, which tests can move forward).
pub fn now() -> Timestamp {
    kiln_core::time::now()
}
