//! Status watchers: wake whoever waits on an instance the moment its state changes, with no
//! polling. Backends call [`StatusWatchers::notify`] after a commit changes an instance.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// Per-instance change notifications.
#[derive(Debug, Default)]
pub struct StatusWatchers {
    senders: Mutex<HashMap<String, watch::Sender<()>>>,
}

/// A subscription to one instance's changes.
#[derive(Debug)]
pub struct StatusSubscription {
    receiver: watch::Receiver<()>,
}

/// Above this many entries, subscribe sweeps out channels nobody listens to.
const SWEEP_THRESHOLD: usize = 4096;

impl StatusWatchers {
    /// Subscribes to changes of `instance_id` from now on. Subscribe *before* reading the state
    /// you want to wait past, so no change slips between the read and the wait.
    pub fn subscribe(&self, instance_id: &str) -> StatusSubscription {
        let mut senders = self.lock();
        if senders.len() > SWEEP_THRESHOLD {
            senders.retain(|_, s| s.receiver_count() > 0);
        }
        let sender = senders.entry(instance_id.to_owned()).or_insert_with(|| watch::channel(()).0);
        StatusSubscription { receiver: sender.subscribe() }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<()>>> {
        // A panic while holding this lock cannot leave the map inconsistent, so recover from poison.
        self.senders.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl StatusSubscription {
    /// Waits for the next change, or returns false after `timeout`.
    pub async fn changed(&mut self, timeout: std::time::Duration) -> bool {
        matches!(tokio::time::timeout(timeout, self.receiver.changed()).await, Ok(Ok(())))
    }
}
