//! Status watchers: wake whoever waits on an instance the moment its state changes, with no
//! polling. Backends call [`StatusWatchers::notify`] after a commit changes an instance.
//!
//! A backend whose notifications can be lost (another node's, over the network) sets a recheck
//! period: waiters then look again at least that often, so a lost notification delays them by
//! that period at most, never until their deadline.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// Per-instance change notifications.
#[derive(Debug, Default)]
pub struct StatusWatchers {
    senders: Mutex<HashMap<String, watch::Sender<()>>>,
    recheck: Option<Duration>,
}

/// A subscription to one instance's changes.
#[derive(Debug)]
pub struct StatusSubscription {
    receiver: watch::Receiver<()>,
    recheck: Option<Duration>,
}

/// Above this many entries, subscribe sweeps out channels nobody listens to.
const SWEEP_THRESHOLD: usize = 4096;

impl StatusWatchers {
    /// Watchers whose waiters look again at least every `period` (for notifications that can
    /// be lost).
    pub fn with_recheck(period: Duration) -> StatusWatchers {
        StatusWatchers { senders: Mutex::default(), recheck: Some(period) }
    }

    /// Subscribes to changes of `instance_id` from now on. Subscribe *before* reading the state
    /// you want to wait past, so no change slips between the read and the wait.
    pub fn subscribe(&self, instance_id: &str) -> StatusSubscription {
        let mut senders = self.lock();
        if senders.len() > SWEEP_THRESHOLD {
            senders.retain(|_, s| s.receiver_count() > 0);
        }
        let sender = senders.entry(instance_id.to_owned()).or_insert_with(|| watch::channel(()).0);
        StatusSubscription { receiver: sender.subscribe(), recheck: self.recheck }
    }

    /// Wakes every subscriber of `instance_id`.
    pub fn notify(&self, instance_id: &str) {
        let mut senders = self.lock();
        if let Some(sender) = senders.get(instance_id) {
            if sender.receiver_count() == 0 {
                senders.remove(instance_id);
            } else {
                sender.send_replace(());
            }
        }
    }

    /// Wakes every subscriber (notifications may have been missed, e.g. while a connection was down).
    pub fn notify_all(&self) {
        let mut senders = self.lock();
        senders.retain(|_, sender| sender.receiver_count() > 0);
        for sender in senders.values() {
            sender.send_replace(());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<()>>> {
        // A panic while holding this lock cannot leave the map inconsistent, so recover from poison.
        self.senders.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl StatusSubscription {
    /// Waits for the next notified change, or returns false after `timeout`.
    pub async fn changed(&mut self, timeout: Duration) -> bool {
        matches!(tokio::time::timeout(timeout, self.receiver.changed()).await, Ok(Ok(())))
    }

    /// Waits until the state is worth reading again: a change was notified, or the recheck
    /// period passed. False after `timeout` (or if nobody can notify any more).
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        let wait = self.recheck.map_or(timeout, |period| period.min(timeout));
        match tokio::time::timeout(wait, self.receiver.changed()).await {
            Ok(notified) => notified.is_ok(),
            Err(_) => wait < timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waiters_look_again_after_the_recheck_period_even_without_a_notification() {
        let lossy = StatusWatchers::with_recheck(Duration::from_secs(1));
        let mut subscription = lossy.subscribe("a");
        let started = tokio::time::Instant::now();
        assert!(subscription.wait(Duration::from_secs(30)).await, "time to look again");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(!subscription.wait(Duration::from_millis(500)).await, "the caller's deadline comes first");

        let reliable = StatusWatchers::default();
        let mut subscription = reliable.subscribe("a");
        assert!(!subscription.wait(Duration::from_secs(30)).await, "no recheck: only a notification wakes");
        let mut other = reliable.subscribe("b");
        reliable.notify_all();
        assert!(other.wait(Duration::from_secs(30)).await);
    }
}
