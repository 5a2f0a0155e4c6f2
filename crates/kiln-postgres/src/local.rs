//! Activities this node's turns claimed for this node (see `write_turn`): handed to its own
//! dispatchers without a claim round trip.

use kiln_store::ActivityWorkItem;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// Lease for activities claimed before any dispatcher asked (dispatchers ask at once at start).
const DEFAULT_LEASE_MILLIS: i64 = 30_000;
/// Taken only with at least this much lease left: one closer to lapsing may already be claimed
/// by another node, which runs it instead.
const MIN_LEASE_LEFT_MILLIS: i64 = 1_000;

/// The queue and the lease the node's dispatchers ask for.
#[derive(Debug)]
pub struct LocalActivities {
    queue: Mutex<VecDeque<ActivityWorkItem>>,
    lease_millis: AtomicI64,
}

impl Default for LocalActivities {
    fn default() -> LocalActivities {
        LocalActivities { queue: Mutex::default(), lease_millis: AtomicI64::new(DEFAULT_LEASE_MILLIS) }
    }
}

impl LocalActivities {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<ActivityWorkItem>> {
        // Pushes and pops leave the queue consistent; a poisoned lock is safe to recover.
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long a turn claims its activities for: what the dispatchers last asked for.
    pub fn lease_millis(&self) -> i64 {
        self.lease_millis.load(Ordering::Relaxed)
    }

    /// Remembers the lease the dispatchers ask for.
    pub fn set_lease_millis(&self, millis: i64) {
        self.lease_millis.store(millis, Ordering::Relaxed);
    }

    /// Queues committed claims.
    pub fn push(&self, claimed: Vec<ActivityWorkItem>) {
        self.lock().extend(claimed);
    }

    /// Up to `max` queued activities whose lease still holds at `now` (lapsing ones are dropped:
    /// any node claims them from the table) and whose name is not `excluded` (those stay
    /// queued); the second value says whether more are queued.
    pub fn take(&self, max: usize, now: i64, excluded: &[String]) -> (Vec<ActivityWorkItem>, bool) {
        let mut queue = self.lock();
        let mut taken = Vec::new();
        let mut passed_over = Vec::new();
        while taken.len() < max {
            let Some(item) = queue.pop_front() else { break };
            if item.lease.expires_at.0 - now < MIN_LEASE_LEFT_MILLIS {
                continue;
            }
            if excluded.contains(&item.activity.name) {
                passed_over.push(item);
            } else {
                taken.push(item);
            }
        }
        let more = !queue.is_empty() && queue.iter().any(|item| !excluded.contains(&item.activity.name));
        for item in passed_over.into_iter().rev() {
            queue.push_front(item);
        }
        (taken, more)
    }

    /// Drops the queued claims of an instance that was terminated (their rows are gone).
    pub fn withdraw(&self, instance_id: &str) {
        self.lock().retain(|item| item.activity.instance_id != instance_id);
    }

    /// Guards `items` taken from the queue (or claimed for this node) until they are handed
    /// out: dropped on the way — an error, or the caller's future cancelled at shutdown — they
    /// go back to the queue, which shutdown hands back to the table.
    pub fn guard(&self, items: Vec<ActivityWorkItem>) -> Taken<'_> {
        Taken { local: self, items }
    }

    /// Empties the queue (at shutdown, to hand the claims back).
    pub fn drain(&self) -> Vec<ActivityWorkItem> {
        self.lock().drain(..).collect()
    }
}

/// Claims on their way to a dispatcher (see [`LocalActivities::guard`]).
pub struct Taken<'a> {
    local: &'a LocalActivities,
    /// The claims.
    pub items: Vec<ActivityWorkItem>,
}

impl Taken<'_> {
    /// The claims, handed out.
    pub fn hand_out(mut self) -> Vec<ActivityWorkItem> {
        std::mem::take(&mut self.items)
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.items.is_empty() {
            self.local.push(std::mem::take(&mut self.items));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{Payload, Timestamp};
    use kiln_store::{Lease, NewActivity};

    fn item(id: i64, expires_at: i64) -> ActivityWorkItem {
        ActivityWorkItem {
            id,
            activity: NewActivity {
                instance_id: "i".into(),
                execution: 0,
                step: id as u64,
                name: "a".into(),
                input: Payload::null(),
                attempt: 1,
                timeouts: Default::default(),
                heartbeat: None,
                context: None,
            },
            dequeue_count: 1,
            lease: Lease { token: id as u64, expires_at: Timestamp(expires_at) },
        }
    }

    #[test]
    fn takes_in_order_and_drops_lapsing_claims() {
        let local = LocalActivities::default();
        local.push(vec![item(1, 10_000), item(2, 500), item(3, 10_000), item(4, 10_000)]);
        let (taken, more) = local.take(2, 0, &[]);
        assert_eq!(taken.iter().map(|i| i.id).collect::<Vec<_>>(), vec![1, 3], "2 was about to lapse");
        assert!(more);
        let (taken, more) = local.take(10, 0, &[]);
        assert_eq!(taken.iter().map(|i| i.id).collect::<Vec<_>>(), vec![4]);
        assert!(!more);
    }

    #[test]
    fn claims_dropped_on_the_way_go_back_to_the_queue() {
        let local = LocalActivities::default();
        local.push(vec![item(1, 10_000)]);
        let (taken, _) = local.take(1, 0, &[]);
        drop(local.guard(taken));
        let (taken, _) = local.take(1, 0, &[]);
        assert_eq!(local.guard(taken).hand_out().len(), 1, "put back, then handed out");
        assert!(local.drain().is_empty());
    }
}
