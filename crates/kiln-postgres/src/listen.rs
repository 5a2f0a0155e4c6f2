//! `LISTEN/NOTIFY`: wakes this node's idle workers and status waiters when any node commits.
//!
//! Payloads on the store's channel: the sending node's id, a space, then `w` (instance work), `a`
//! (activity work) or `s:{instance id}` (an instance changed). A node woke its own waiters when it
//! published, so its listener skips its own notifications. The listener reconnects after a lost connection; while it is down the
//! workers' fallback poll keeps work moving, and every waiter is woken once it is back, since
//! notifications may have been missed meanwhile.

use crate::store::FALLBACK_POLL;
use crate::tls::KilnTls;
use kiln_store::StatusWatchers;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

/// Pause before reconnecting a lost listener.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Where notifications go.
#[derive(Debug)]
pub struct Wakers {
    /// Orchestration workers.
    pub orchestrations: Notify,
    /// Activity workers.
    pub activities: Notify,
    /// Status waiters.
    pub watchers: StatusWatchers,
    /// Set when the activities table may hold unclaimed work (a node inserted some, or
    /// notifications may have been missed); the dispatcher looks there only then or on its
    /// fallback poll. (Activities a node claims for itself reach it without the table.)
    activities_in_table: AtomicBool,
}

impl Default for Wakers {
    fn default() -> Self {
        Wakers {
            orchestrations: Notify::new(),
            activities: Notify::new(),
            // A notification can be lost (a failed NOTIFY, a dropped connection): status
            // waiters look again as often as idle workers do.
            watchers: StatusWatchers::with_recheck(FALLBACK_POLL),
            activities_in_table: AtomicBool::new(false),
        }
    }
}

impl Wakers {
    /// Someone inserted activities no node has claimed: wake a dispatcher to look.
    pub fn activities_in_table(&self) {
        self.activities_in_table.store(true, Ordering::Release);
        self.activities.notify_one();
    }

    /// Whether the activities table is worth a look (and clears the flag).
    pub fn take_activities_in_table(&self) -> bool {
        self.activities_in_table.swap(false, Ordering::AcqRel)
    }

    /// Wakes a handler for one payload.
    pub fn dispatch(&self, payload: &str) {
        match payload {
            "w" => self.orchestrations.notify_one(),
            "a" => self.activities_in_table(),
            _ => {
                if let Some(instance_id) = payload.strip_prefix("s:") {
                    self.watchers.notify(instance_id);
                }
            }
        }
    }
}

/// Listens on `channel` for other nodes' notifications (this node is `node`) until the task is
/// aborted.
pub async fn run(config: tokio_postgres::Config, tls: KilnTls, channel: String, node: String, wakers: Arc<Wakers>) {
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let driver = tokio::spawn(async move {
                    while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                if tx.send(n.payload().to_owned()).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN \"{channel}\"")).await {
                    Ok(()) => {
                        // Notifications may have been missed while not listening.
                        wakers.orchestrations.notify_waiters();
                        wakers.activities_in_table();
                        wakers.watchers.notify_all();
                        while let Some(payload) = rx.recv().await {
                            match payload.split_once(' ') {
                                Some((sender, _)) if sender == node => {}
                                Some((_, payload)) => wakers.dispatch(payload),
                                None => wakers.dispatch(&payload),
                            }
                        }
                        tracing::warn!("lost the LISTEN connection to PostgreSQL; reconnecting");
                    }
                    Err(err) => tracing::warn!(error = %err, "LISTEN failed; retrying"),
                }
                driver.abort();
            }
            Err(err) => tracing::warn!(error = %err, "cannot connect to PostgreSQL for LISTEN; retrying"),
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}
