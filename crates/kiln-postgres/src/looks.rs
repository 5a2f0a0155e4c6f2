//! Which of a node's orchestration workers looks in the tables when no notification came.
//!
//! Notifications wake one worker per piece of work. Without one, a look is only needed as a
//! safety net (a missed notification) or when a delayed message falls due; with dozens of idle
//! workers per node, letting each of them look on every timeout would cost the database a
//! steady stream of empty queries. So at most one worker looks per fallback period, and one per
//! due time.

use std::sync::atomic::{AtomicI64, Ordering};

/// No delayed message known.
const NONE: i64 = i64::MAX;

/// The shared schedule of looks.
#[derive(Debug)]
pub struct TableLooks {
    /// When a worker last looked without a notification (ms).
    last_unprompted: AtomicI64,
    /// When the next delayed message falls due (ms), as the last look found it.
    next_due: AtomicI64,
}

impl Default for TableLooks {
    fn default() -> TableLooks {
        TableLooks { last_unprompted: AtomicI64::new(i64::MIN / 2), next_due: AtomicI64::new(NONE) }
    }
}

impl TableLooks {
    /// Whether the caller, woken without a notification at `now`, should look: true for the
    /// first worker at a due time that has come, or for one worker per `period_millis`.
    pub fn unprompted_look(&self, now: i64, period_millis: i64) -> bool {
        let due = self.next_due.load(Ordering::Acquire);
        if due <= now && self.next_due.compare_exchange(due, NONE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return true;
        }
        let last = self.last_unprompted.load(Ordering::Acquire);
        now - last >= period_millis
            && self.last_unprompted.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// When the next delayed message falls due, as last seen.
    pub fn next_due(&self) -> Option<i64> {
        Some(self.next_due.load(Ordering::Acquire)).filter(|due| *due != NONE)
    }

    /// Records what a look found.
    pub fn set_next_due(&self, due: Option<i64>) {
        self.next_due.store(due.unwrap_or(NONE), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_looks_per_period_and_one_per_due_time() {
        let looks = TableLooks::default();
        assert!(looks.unprompted_look(1_000, 1_000), "the first worker looks");
        assert!(!looks.unprompted_look(1_500, 1_000), "the others wait for the period");
        assert!(looks.unprompted_look(2_000, 1_000));
        looks.set_next_due(Some(2_300));
        assert_eq!(looks.next_due(), Some(2_300));
        assert!(!looks.unprompted_look(2_200, 1_000), "not due yet");
        assert!(looks.unprompted_look(2_300, 1_000), "due: one worker looks");
        assert!(!looks.unprompted_look(2_300, 1_000), "and only one");
        assert_eq!(looks.next_due(), None);
    }
}
