//! The single writer thread and its group commit.
//!
//! Every change goes through one thread that owns the write connection. It takes all requests
//! that queued up while the previous commit was being made durable and writes them in one
//! transaction (one fsync for many turns), each inside its own savepoint so one failing request
//! does not undo the others. Only after `COMMIT` returns does it update the in-memory queues,
//! wake workers and answer the callers: nothing is visible or acknowledged before it is durable.
//! What each request writes, and which in-memory effects it leaves, is in `ops`.

use crate::codec::store_error;
use crate::ops::{Effect, WriteOp, WriteOutcome, apply};
use crate::shared::{Shared, now};
use kiln_store::{StoreError, StoreResult};
use rusqlite::Connection;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use tokio::sync::oneshot;

/// Most requests written in one transaction.
const MAX_BATCH: usize = 512;

/// A queued write and where to send its result.
pub struct WriteRequest {
    /// The change.
    pub op: WriteOp,
    /// The caller waiting for it to be durable.
    pub reply: oneshot::Sender<StoreResult<WriteOutcome>>,
}

/// Runs the writer loop until every sender is gone.
pub fn run(mut conn: Connection, requests: Receiver<WriteRequest>, shared: Arc<Shared>) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(next) => batch.push(next),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        write_batch(&mut conn, batch, &shared);
    }
}

/// Writes one batch, then applies its effects, wakes workers and answers every request.
fn write_batch(conn: &mut Connection, batch: Vec<WriteRequest>, shared: &Shared) {
    // Leases are checked and pinned before writing, so a lapsing lease cannot be handed to
    // another worker while its holder's commit is in flight.
    let mut accepted = Vec::with_capacity(batch.len());
    for request in batch {
        match pin_lease(&request.op, shared) {
            Ok(()) => accepted.push(request),
            Err(err) => {
                let _ = request.reply.send(Err(err));
            }
        }
    }
    if accepted.is_empty() {
        return;
    }
    let changes_before = conn.total_changes();
    let results = match write_all(conn, &accepted, false) {
        // A request failed after it had written: undo everything and isolate each request.
        Err(BatchError::PartialWrite) => write_all(conn, &accepted, true),
        other => other,
    };
    // Nothing of a failed batch is on disk (it was rolled back whole), so nothing of it may
    // change the in-memory state either: every request is answered with the batch's error.
    let wrote = results.is_ok() && conn.total_changes() != changes_before;
    let mut results = results.unwrap_or_else(|err| {
        tracing::warn!(error = %err, requests = accepted.len(), "group commit failed; nothing was written");
        accepted.iter().map(|_| Err(err.to_store_error())).collect()
    });
    // Storage counts as working again only once a commit wrote rows (a commit of nothing
    // succeeds on a full disk too).
    if results.iter().any(|r| matches!(r, Err(StoreError::Unavailable(_)))) {
        shared.set_storage_failing(true);
    } else if wrote {
        shared.set_storage_failing(false);
    }

    let mut wake_instances = 0usize;
    let mut wake_activities = 0usize;
    let mut changes = Vec::new();
    let at = now();
    {
        let mut queues = shared.lock_queues();
        for (request, result) in accepted.iter().zip(results.iter_mut()) {
            match result {
                Ok((_, effects)) => {
                    for effect in effects.drain(..) {
                        match effect {
                            Effect::Message { instance_id, message, visible_at } => {
                                wake_instances +=
                                    usize::from(queues.push_message(&instance_id, message, visible_at, at));
                            }
                            Effect::Activity(entry) => wake_activities += usize::from(queues.push_activity(entry)),
                            Effect::ReleaseInstance { instance_id, consumed, suspended } => {
                                queues.set_suspended(&instance_id, suspended);
                                wake_instances += usize::from(queues.release_instance(&instance_id, &consumed, true));
                            }
                            Effect::FinishActivity(id) => queues.finish_activity(id),
                            Effect::Heartbeat { id, lease, details } => {
                                queues.set_activity_heartbeat(id, lease, details);
                            }
                            Effect::Forget(ids) => queues.forget_instances(&ids),
                            Effect::WithdrawActivities(id) => queues.withdraw_activities(&id),
                            Effect::Changed(change) => changes.push(change),
                        }
                    }
                }
                // The holders keep their leases and decide: back off and retry, or give the work back.
                Err(_) => match &request.op {
                    WriteOp::CommitTurn(turn) => {
                        queues.unpin_instance(&turn.instance_id, turn.lease);
                        for finished in &turn.finished_activities {
                            queues.unpin_activity(finished.id, finished.lease);
                        }
                    }
                    WriteOp::CompleteActivity { id, lease, .. } => queues.unpin_activity(*id, *lease),
                    _ => {}
                },
            }
        }
        // Under the queue lock: whoever claims a released instance reads its new record.
        shared.records.apply(&mut changes);
    }
    for _ in 0..wake_instances {
        shared.orchestration_ready.notify_one();
    }
    for _ in 0..wake_activities {
        shared.activity_ready.notify_one();
    }
    for change in &changes {
        shared.watchers.notify(&change.instance_id);
    }
    for (request, result) in accepted.into_iter().zip(results) {
        let _ = request.reply.send(result.map(|(outcome, _)| outcome));
    }
}

/// Why a batch was not committed. Whichever it is, the whole batch was rolled back.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// A request failed after writing some rows (only without savepoints).
    #[error("a request failed part-way")]
    PartialWrite,
    /// SQLite rolled the transaction back by itself while a request was being written (it may,
    /// on a full disk, an I/O error or lack of memory): the rest of the batch must not run,
    /// since each of its statements would commit on its own.
    #[error("the transaction was rolled back: {0}")]
    RolledBack(StoreError),
    /// A statement of the batch's own (begin, savepoint, commit) failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

impl BatchError {
    /// What each request of the failed batch is told.
    fn to_store_error(&self) -> StoreError {
        match self {
            BatchError::RolledBack(err) => err.clone(),
            BatchError::Sqlite(err) => match store_error(err) {
                StoreError::Unavailable(why) => StoreError::Unavailable(why),
                _ => StoreError::Backend(format!("the batch could not be committed: {err}")),
            },
            other => StoreError::Backend(format!("the batch could not be committed: {other}")),
        }
    }
}

/// What each request of a batch did.
type BatchResults = Vec<StoreResult<(WriteOutcome, Vec<Effect>)>>;

/// Writes a batch in one transaction. Requests check everything that can refuse them before
/// they write, so a refused request normally leaves no trace and needs no savepoint (a
/// savepoint costs two statements and journal copies per request). Without `savepoints`, a
/// request that fails after writing rolls the whole batch back with
/// [`BatchError::PartialWrite`], and the caller retries with a savepoint around each request.
fn write_all(conn: &Connection, batch: &[WriteRequest], savepoints: bool) -> Result<BatchResults, BatchError> {
    let attempt = (|| -> Result<BatchResults, BatchError> {
        run_cached(conn, "BEGIN IMMEDIATE")?;
        let mut results = Vec::with_capacity(batch.len());
        // Instances deleted earlier in this batch (purged, or replaced by a new start under
        // their id). Leases were pinned before the batch began, so a turn of such an instance
        // still holds its pin: it ran on what is gone and must not write over a new instance.
        let mut deleted: HashSet<String> = HashSet::new();
        for request in batch {
            if savepoints {
                run_cached(conn, "SAVEPOINT op")?;
            }
            let changes_before = conn.total_changes();
            let mut effects = Vec::new();
            let result = match &request.op {
                WriteOp::CommitTurn(turn) if deleted.contains(&turn.instance_id) => {
                    Err(StoreError::LeaseLost(turn.instance_id.clone()))
                }
                op => apply(conn, op, &mut effects),
            };
            for effect in &effects {
                if let Effect::Forget(ids) = effect {
                    deleted.extend(ids.iter().cloned());
                }
            }
            if let Err(err) = &result
                && conn.is_autocommit()
            {
                return Err(BatchError::RolledBack(err.clone()));
            }
            if savepoints {
                if result.is_err() {
                    run_cached(conn, "ROLLBACK TO op")?;
                }
                run_cached(conn, "RELEASE op")?;
            } else if result.is_err() && conn.total_changes() != changes_before {
                return Err(BatchError::PartialWrite);
            }
            results.push(result.map(|outcome| (outcome, effects)));
        }
        run_cached(conn, "COMMIT")?;
        Ok(results)
    })();
    if attempt.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    attempt
}

/// Runs a parameterless statement through the statement cache (no parsing on the hot path).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Checks that a request's leases are still held and pins them for the commit.
fn pin_lease(op: &WriteOp, shared: &Shared) -> StoreResult<()> {
    let mut queues = shared.lock_queues();
    match op {
        WriteOp::CommitTurn(turn) => {
            for (pinned, finished) in turn.finished_activities.iter().enumerate() {
                if !queues.pin_activity(finished.id, finished.lease) {
                    for earlier in &turn.finished_activities[..pinned] {
                        queues.unpin_activity(earlier.id, earlier.lease);
                    }
                    return Err(StoreError::LeaseLost(format!("an activity of {}", turn.instance_id)));
                }
            }
            if !queues.pin_instance(&turn.instance_id, turn.lease) {
                for finished in &turn.finished_activities {
                    queues.unpin_activity(finished.id, finished.lease);
                }
                return Err(StoreError::LeaseLost(turn.instance_id.clone()));
            }
            Ok(())
        }
        WriteOp::CompleteActivity { id, lease, activity, .. } if !queues.pin_activity(*id, *lease) => {
            Err(StoreError::LeaseLost(format!("activity '{}' of {}", activity.name, activity.instance_id)))
        }
        WriteOp::RecordHeartbeat { id, lease, .. } if !queues.holds_activity(*id, *lease) => {
            Err(StoreError::LeaseLost(format!("activity {id}")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{Payload, RuntimeStatus, Timestamp};
    use kiln_store::{HistoryUpdate, Lease, NewInstance, TurnCommit};

    fn request(op: WriteOp) -> WriteRequest {
        WriteRequest { op, reply: oneshot::channel().0 }
    }

    fn new_instance(execution: u64) -> NewInstance {
        NewInstance {
            instance_id: "job".into(),
            name: "orch".into(),
            version: String::new(),
            input: Payload::null(),
            parent: None,
            created_at: Timestamp(1),
            execution,
            labels: Default::default(),
            correlation: None,
        }
    }

    /// The old run's turn, ending it completed.
    fn completing_turn(execution: u64) -> TurnCommit {
        TurnCommit {
            instance_id: "job".into(),
            lease: Lease { token: 1, expires_at: Timestamp(i64::MAX) },
            consumed: Vec::new(),
            history: HistoryUpdate::Append(Vec::new()),
            execution,
            version: String::new(),
            input: Payload::null(),
            status: RuntimeStatus::Completed,
            output: Some(Payload::null()),
            failure: None,
            custom_status: None,
            waiting_on: Vec::new(),
            activities: Vec::new(),
            messages: Vec::new(),
            sub_orchestrations: Vec::new(),
            finished_activities: Vec::new(),
            now: Timestamp(2),
        }
    }

    /// A start that replaces a finished instance, and a turn of that instance whose lease was
    /// pinned before, in one batch: the turn must not write over the new instance.
    #[test]
    fn a_turn_of_an_instance_replaced_in_the_same_batch_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        let setup = [
            request(WriteOp::CreateInstance(new_instance(7))),
            request(WriteOp::CommitTurn(Box::new(completing_turn(7)))),
        ];
        assert!(write_all(&conn, &setup, false).unwrap().iter().all(Result::is_ok));
        let batch = [
            request(WriteOp::CreateInstance(new_instance(9))),
            request(WriteOp::CommitTurn(Box::new(completing_turn(7)))),
        ];
        let results = write_all(&conn, &batch, false).unwrap();
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(StoreError::LeaseLost(_))), "{:?}", results[1].as_ref().err());
        let status: i64 =
            conn.query_row("SELECT status FROM instances WHERE instance_id = 'job'", [], |r| r.get(0)).unwrap();
        assert_eq!(status, RuntimeStatus::Pending.code(), "the new instance stays as it was started");
    }
}
