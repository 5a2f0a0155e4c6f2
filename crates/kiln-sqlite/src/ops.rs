//! The SQL of each write: what one [`WriteOp`] does inside the writer's transaction.
//!
//! Each operation checks what can refuse it before it writes, writes its rows, and records the
//! [`Effect`]s those rows have on the in-memory state. The writer thread (`writer`) owns the
//! transaction: it applies the effects only once the rows are durable, and drops them if not.

use crate::codec::{
    backend, correlation_from_column, encode_event, encode_events, from_json, labels_column, labels_from_column,
    to_json, to_json_opt,
};
use crate::queue::ActivityEntry;
use crate::records::RecordChange;
use crate::shared::now;
use kiln_core::{
    Correlation, EventKind, FailureDetails, HistoryEvent, Labels, ParentInstance, Payload, RuntimeStatus, Timestamp,
    WaitingOn, error_types,
};
use kiln_store::{
    IdempotencyKey, IdempotentStart, InboxMessage, InstanceRecord, Lease, NewActivity, NewInstance, PageCursor,
    PurgeFilter, PurgedBatch, StoreError, StoreResult, TurnCommit,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};

/// A change to make durable.
pub enum WriteOp {
    /// Start (or replace) an instance.
    CreateInstance(NewInstance),
    /// Start an instance together with its first turn, already run.
    CreateWithFirstTurn(NewInstance, Box<TurnCommit>),
    /// Start an instance under an idempotency key.
    CreateIdempotent(NewInstance, IdempotencyKey),
    /// Put a message into an existing instance's inbox.
    SendMessage {
        /// Target.
        instance_id: String,
        /// The event.
        event: HistoryEvent,
    },
    /// Commit an orchestration turn.
    CommitTurn(Box<TurnCommit>),
    /// Finish an activity and deliver its result.
    CompleteActivity {
        /// Activity row id.
        id: i64,
        /// The claim it ran under.
        lease: Lease,
        /// What it was.
        activity: NewActivity,
        /// `TaskCompleted` or `TaskFailed`.
        event: HistoryEvent,
    },
    /// Save a running activity's last heartbeat details.
    RecordHeartbeat {
        /// Activity row id.
        id: i64,
        /// The claim it runs under.
        lease: Lease,
        /// The details.
        details: Payload,
    },
    /// Purge one finished instance and its finished descendants.
    PurgeInstance(String),
    /// Purge up to this many finished instances matching a filter.
    PurgeBatch(PurgeFilter, usize),
    /// Delete up to this many idempotency keys expired at a time.
    ExpireKeys(Timestamp, usize),
    /// Count a claim of recovered work durably (poison detection across crashes).
    MarkClaimed(ClaimTarget),
    /// Write a row for the sake of writing: whether writes work (e.g. once a full disk has room).
    Probe,
    /// Store a setting unless present.
    PutSettingIfAbsent {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Replace a setting that still holds `expected` (absent when `None`).
    ReplaceSetting {
        /// Key.
        key: String,
        /// The value it must hold.
        expected: Option<String>,
        /// The new value.
        value: String,
    },
}

/// Which work item a claim mark is for.
pub enum ClaimTarget {
    /// An instance's pending messages.
    Instance(String),
    /// An activity row.
    Activity(i64),
}

/// What a write returns.
pub enum WriteOutcome {
    /// Nothing to report.
    Done,
    /// A count (purges, expired keys).
    Count(u64),
    /// What a purge batch did.
    Purged(PurgedBatch),
    /// A value (settings).
    Value(String),
    /// What an idempotent start did.
    Started(IdempotentStart),
}

/// A change to the in-memory state, applied once the transaction is durable.
pub enum Effect {
    /// A message was put into an instance's inbox: queue it (held back until `visible_at`).
    Message {
        /// The instance it is for.
        instance_id: String,
        /// The message as stored.
        message: InboxMessage,
        /// When it becomes visible (a timer's firing); `None`: at once.
        visible_at: Option<Timestamp>,
    },
    /// An activity row was inserted: queue it for the activity workers.
    Activity(ActivityEntry),
    /// A turn was committed: its lease ends and its consumed messages leave the queue.
    ReleaseInstance {
        /// The instance whose turn it was.
        instance_id: String,
        /// Inbox row ids the turn consumed.
        consumed: Vec<i64>,
        /// Whether the turn left the instance suspended.
        suspended: bool,
    },
    /// An activity row was deleted: its lease is forgotten.
    FinishActivity(i64),
    /// A running activity's heartbeat details were saved: a later claim of it hands them over
    /// (unless the claim they were saved under is no longer the one held).
    Heartbeat {
        /// Activity row id.
        id: i64,
        /// The claim they were saved under.
        lease: Lease,
        /// The details.
        details: Payload,
    },
    /// Instances were deleted (purged, or replaced by a new start): everything queued for them goes.
    Forget(Vec<String>),
    /// An instance was terminated: its activities' rows were deleted, queued or running.
    WithdrawActivities(String),
    /// The instance's row changed: its latest record is replaced (or dropped), then waiters are told.
    Changed(RecordChange),
}

/// Writes one operation's rows and records their effects; the caller owns the transaction.
pub fn apply(conn: &Connection, op: &WriteOp, effects: &mut Vec<Effect>) -> StoreResult<WriteOutcome> {
    match op {
        WriteOp::CreateInstance(instance) => {
            create_instance(conn, instance, effects)?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::CreateWithFirstTurn(instance, first_turn) => {
            create_with_first_turn(conn, instance, first_turn, effects)?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::CreateIdempotent(instance, key) => {
            create_idempotent(conn, instance, key, effects).map(WriteOutcome::Started)
        }
        WriteOp::SendMessage { instance_id, event } => {
            if !instance_exists(conn, instance_id)? {
                return Err(StoreError::NotFound(instance_id.clone()));
            }
            insert_message(conn, instance_id, None, event, None, effects)?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::CommitTurn(turn) => {
            commit_turn(conn, turn, effects)?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::CompleteActivity { id, activity, event, .. } => {
            let deleted = conn
                .prepare_cached("DELETE FROM activities WHERE id = ?1")
                .and_then(|mut s| s.execute([id]))
                .map_err(backend)?;
            effects.push(Effect::FinishActivity(*id));
            // No row: its instance was purged (earlier in this very batch, perhaps, before the
            // lease check could see it), and the result must not reach a new one with that id.
            if deleted == 1 && instance_exists(conn, &activity.instance_id)? {
                insert_message(conn, &activity.instance_id, Some(activity.execution), event, None, effects)?;
            }
            Ok(WriteOutcome::Done)
        }
        WriteOp::RecordHeartbeat { id, lease, details } => {
            conn.prepare_cached("UPDATE activities SET heartbeat = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, details.as_str()]))
                .map_err(backend)?;
            effects.push(Effect::Heartbeat { id: *id, lease: *lease, details: details.clone() });
            Ok(WriteOutcome::Done)
        }
        WriteOp::PurgeInstance(instance_id) => {
            let status: Option<i64> = conn
                .prepare_cached("SELECT status FROM instances WHERE instance_id = ?1")
                .and_then(|mut s| s.query_row([instance_id], |r| r.get(0)).optional())
                .map_err(backend)?;
            let status = status.ok_or_else(|| StoreError::NotFound(instance_id.clone()))?;
            let status = RuntimeStatus::from_code(status).unwrap_or(RuntimeStatus::Running);
            if !status.is_terminal() {
                return Err(StoreError::NotTerminal(instance_id.clone(), status));
            }
            purge(conn, vec![instance_id.clone()], false, effects).map(WriteOutcome::Count)
        }
        WriteOp::PurgeBatch(filter, max) => {
            let roots = select_purgeable(conn, filter, *max)?;
            let (selected, last) = (roots.len(), roots.last().cloned());
            let deleted = purge(conn, roots.into_iter().map(|r| r.instance_id).collect(), true, effects)?;
            Ok(WriteOutcome::Purged(PurgedBatch { selected, deleted, last }))
        }
        WriteOp::ExpireKeys(now, max) => conn
            .prepare_cached(
                "DELETE FROM idempotency_keys WHERE key IN \
                 (SELECT key FROM idempotency_keys WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![now.0, *max as i64]))
            .map(|n| WriteOutcome::Count(n as u64))
            .map_err(backend),
        WriteOp::MarkClaimed(target) => {
            let updated = match target {
                ClaimTarget::Instance(id) => conn
                    .prepare_cached("UPDATE instances SET dequeue_count = dequeue_count + 1 WHERE instance_id = ?1")
                    .and_then(|mut s| s.execute([id])),
                ClaimTarget::Activity(id) => conn
                    .prepare_cached("UPDATE activities SET dequeue_count = dequeue_count + 1 WHERE id = ?1")
                    .and_then(|mut s| s.execute([id])),
            };
            updated.map_err(backend)?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::Probe => {
            conn.prepare_cached("INSERT OR REPLACE INTO settings (key, value) VALUES ('kiln.probe', ?1)")
                .and_then(|mut s| s.execute([now().0.to_string()]))
                .map_err(backend)?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::PutSettingIfAbsent { key, value } => {
            conn.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?1, ?2)", [key, value])
                .map_err(backend)?;
            let stored: String =
                conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).map_err(backend)?;
            Ok(WriteOutcome::Value(stored))
        }
        WriteOp::ReplaceSetting { key, expected, value } => {
            let changed = match expected {
                Some(expected) => {
                    conn.execute("UPDATE settings SET value = ?3 WHERE key = ?1 AND value = ?2", [key, expected, value])
                }
                None => conn.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?1, ?2)", [key, value]),
            }
            .map_err(backend)?;
            Ok(WriteOutcome::Count(changed as u64))
        }
    }
}

/// Whether an instance's row exists.
fn instance_exists(conn: &Connection, instance_id: &str) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM instances WHERE instance_id = ?1")
        .and_then(|mut s| s.exists([instance_id]))
        .map_err(backend)
}

/// Puts a message into an instance's inbox.
fn insert_message(
    conn: &Connection,
    instance_id: &str,
    execution: Option<u64>,
    event: &HistoryEvent,
    visible_at: Option<Timestamp>,
    effects: &mut Vec<Effect>,
) -> StoreResult<()> {
    let encoded = encode_event(event)?;
    conn.prepare_cached("INSERT INTO inbox (instance_id, execution, visible_at, event) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut s| {
            s.execute(params![instance_id, execution.map(|e| e as i64), visible_at.map(|t| t.0), encoded])
        })
        .map_err(backend)?;
    let message = InboxMessage { id: conn.last_insert_rowid(), execution, event: event.clone() };
    effects.push(Effect::Message { instance_id: instance_id.to_owned(), message, visible_at });
    Ok(())
}

/// Creates an instance; returns `AlreadyExists` when its id is held by an unfinished instance.
fn create_instance(conn: &Connection, instance: &NewInstance, effects: &mut Vec<Effect>) -> StoreResult<()> {
    let existing: Option<(i64, i64)> = conn
        .prepare_cached("SELECT status, execution FROM instances WHERE instance_id = ?1")
        .and_then(|mut s| s.query_row([&instance.instance_id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(backend)?;
    let mut execution = instance.execution;
    if let Some((status, previous)) = existing {
        let status = RuntimeStatus::from_code(status).unwrap_or(RuntimeStatus::Running);
        if !status.is_terminal() {
            return Err(StoreError::AlreadyExists(instance.instance_id.clone(), status));
        }
        execution = previous as u64 + 1;
        delete_rows(conn, &instance.instance_id)?;
        effects.push(Effect::Forget(vec![instance.instance_id.clone()]));
    }
    let record = InstanceRecord {
        instance_id: instance.instance_id.clone(),
        name: instance.name.clone(),
        version: instance.version.clone(),
        execution,
        status: RuntimeStatus::Pending,
        input: instance.input.clone(),
        output: None,
        failure: None,
        custom_status: None,
        created_at: instance.created_at,
        updated_at: instance.created_at,
        waiting_on: Vec::new(),
        parent: instance.parent.clone(),
        history_len: 0,
        labels: instance.labels.clone(),
        correlation: instance.correlation.clone(),
    };
    insert_instance_row(conn, &record)?;
    insert_message(conn, &instance.instance_id, Some(execution), &instance.started_event(), None, effects)?;
    effects.push(Effect::Changed(RecordChange { instance_id: record.instance_id.clone(), record: Some(record) }));
    Ok(())
}

/// Inserts an instance's row holding `record`.
fn insert_instance_row(conn: &Connection, record: &InstanceRecord) -> StoreResult<()> {
    let failure = to_json_opt(record.failure.as_ref())?;
    let waiting_on = waiting_on_column(&record.waiting_on)?;
    let parent = to_json_opt(record.parent.as_ref())?;
    let labels = labels_column(&record.labels)?;
    let correlation = to_json_opt(record.correlation.as_ref())?;
    conn.prepare_cached(
        "INSERT INTO instances (instance_id, name, version, execution, status, input, output, failure, \
         custom_status, created_at, updated_at, waiting_on, parent, parent_instance_id, history_len, labels, \
         correlation) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )
    .and_then(|mut s| {
        s.execute(params![
            record.instance_id,
            record.name,
            record.version,
            record.execution as i64,
            record.status.code(),
            record.input.as_str(),
            record.output.as_ref().map(Payload::as_str),
            failure,
            record.custom_status.as_ref().map(Payload::as_str),
            record.created_at.0,
            record.updated_at.0,
            waiting_on,
            parent,
            record.parent.as_ref().map(|p| p.instance_id.as_str()),
            record.history_len as i64,
            labels,
            correlation,
        ])
    })
    .map_err(backend)?;
    if !record.labels.is_empty() {
        let mut insert = conn
            .prepare_cached("INSERT INTO instance_labels (key, value, created_at, instance_id) VALUES (?1, ?2, ?3, ?4)")
            .map_err(backend)?;
        for (key, value) in record.labels.iter() {
            insert.execute(params![key, value, record.created_at.0, record.instance_id]).map_err(backend)?;
        }
    }
    Ok(())
}

/// The `waiting_on` column: NULL when the instance waits for nothing.
fn waiting_on_column(waiting_on: &[WaitingOn]) -> StoreResult<Option<String>> {
    if waiting_on.is_empty() { Ok(None) } else { to_json(&waiting_on).map(Some) }
}

/// Creates an instance with its first turn, which consumed its `ExecutionStarted` already: the
/// row is inserted as the turn leaves it.
fn create_with_first_turn(
    conn: &Connection,
    instance: &NewInstance,
    first_turn: &TurnCommit,
    effects: &mut Vec<Effect>,
) -> StoreResult<()> {
    let existing: Option<i64> = conn
        .prepare_cached("SELECT status FROM instances WHERE instance_id = ?1")
        .and_then(|mut s| s.query_row([&instance.instance_id], |r| r.get(0)).optional())
        .map_err(backend)?;
    if let Some(status) = existing {
        let status = RuntimeStatus::from_code(status).unwrap_or(RuntimeStatus::Running);
        return Err(StoreError::AlreadyExists(instance.instance_id.clone(), status));
    }
    let record = record_after_turn(
        first_turn,
        Unchanged {
            name: instance.name.clone(),
            created_at: instance.created_at,
            parent: instance.parent.clone(),
            history_len: 0,
            labels: instance.labels.clone(),
            correlation: instance.correlation.clone(),
        },
    );
    insert_instance_row(conn, &record)?;
    write_turn(conn, first_turn, 0, effects)?;
    effects.push(Effect::Changed(RecordChange { instance_id: record.instance_id.clone(), record: Some(record) }));
    Ok(())
}

/// Creates an instance unless an unexpired key already started one.
fn create_idempotent(
    conn: &Connection,
    instance: &NewInstance,
    key: &IdempotencyKey,
    effects: &mut Vec<Effect>,
) -> StoreResult<IdempotentStart> {
    // An expired key is as good as gone (the retention purger deletes it in batches, off this
    // path): the new start takes its place.
    let existing: Option<(String, String)> = conn
        .prepare_cached("SELECT fingerprint, instance_id FROM idempotency_keys WHERE key = ?1 AND expires_at > ?2")
        .and_then(|mut s| {
            s.query_row(params![key.key, instance.created_at.0], |r| Ok((r.get(0)?, r.get(1)?))).optional()
        })
        .map_err(backend)?;
    if let Some((fingerprint, instance_id)) = existing {
        if fingerprint != key.fingerprint {
            return Err(StoreError::IdempotencyKeyReused(key.key.clone()));
        }
        return Ok(IdempotentStart::Existing { instance_id });
    }
    create_instance(conn, instance, effects)?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, instance_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| s.execute(params![key.key, key.fingerprint, instance.instance_id, key.expires_at.0]))
    .map_err(backend)?;
    Ok(IdempotentStart::Created)
}

/// What a turn leaves as it was in an instance's row.
struct Unchanged {
    name: String,
    created_at: Timestamp,
    parent: Option<ParentInstance>,
    /// History length before the turn.
    history_len: u64,
    labels: Labels,
    correlation: Option<Correlation>,
}

/// The instance's record after `turn`.
fn record_after_turn(turn: &TurnCommit, unchanged: Unchanged) -> InstanceRecord {
    let kept = if turn.history.replaces() { 0 } else { unchanged.history_len };
    InstanceRecord {
        instance_id: turn.instance_id.clone(),
        name: unchanged.name,
        version: turn.version.clone(),
        execution: turn.execution,
        status: turn.status,
        input: turn.input.clone(),
        output: turn.output.clone(),
        failure: turn.failure.clone(),
        custom_status: turn.custom_status.clone(),
        created_at: unchanged.created_at,
        updated_at: turn.now,
        waiting_on: turn.waiting_on.clone(),
        parent: unchanged.parent,
        history_len: kept + turn.history.events().len() as u64,
        labels: unchanged.labels,
        correlation: unchanged.correlation,
    }
}

/// Commits a turn to an existing instance: its row, then the rest of the turn (`write_turn`).
fn commit_turn(conn: &Connection, turn: &TurnCommit, effects: &mut Vec<Effect>) -> StoreResult<()> {
    // The unchanged columns are read first: with them the commit knows the new record in full.
    // (A separate read is cheaper than `UPDATE … RETURNING`, which builds a temporary table.)
    let unchanged = conn
        .prepare_cached(
            "SELECT name, created_at, parent, history_len, labels, correlation FROM instances WHERE instance_id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([&turn.instance_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, i64>(3)?, r.get(4)?, r.get(5)?))
            })
            .optional()
        })
        .map_err(backend)?;
    let (name, created_at, parent, history_len, labels, correlation) =
        unchanged.ok_or_else(|| StoreError::NotFound(turn.instance_id.clone()))?;
    let unchanged = Unchanged {
        name,
        created_at: Timestamp(created_at),
        parent: parent.map(|p| from_json::<ParentInstance>(&p, "parent")).transpose()?,
        history_len: history_len as u64,
        labels: labels_from_column(labels)?,
        correlation: correlation_from_column(correlation)?,
    };
    let record = record_after_turn(turn, unchanged);
    let failure = to_json_opt(record.failure.as_ref())?;
    let waiting_on = waiting_on_column(&record.waiting_on)?;
    if turn.history.replaces() {
        conn.prepare_cached("DELETE FROM history WHERE instance_id = ?1")
            .and_then(|mut s| s.execute([&turn.instance_id]))
            .map_err(backend)?;
    }
    conn.prepare_cached(
        "UPDATE instances SET execution = ?2, status = ?3, input = ?4, output = ?5, failure = ?6, \
         custom_status = ?7, waiting_on = ?8, updated_at = ?9, dequeue_count = 0, history_len = ?10, \
         version = ?11 WHERE instance_id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            record.instance_id,
            record.execution as i64,
            record.status.code(),
            record.input.as_str(),
            record.output.as_ref().map(Payload::as_str),
            failure,
            record.custom_status.as_ref().map(Payload::as_str),
            waiting_on,
            record.updated_at.0,
            record.history_len as i64,
            record.version,
        ])
    })
    .map_err(backend)?;
    write_turn(conn, turn, record.history_len - turn.history.events().len() as u64, effects)?;
    effects.push(Effect::Changed(RecordChange { instance_id: record.instance_id.clone(), record: Some(record) }));
    Ok(())
}

/// Writes what a turn did besides the instance's row: its history (from position `first_seq`),
/// consumed messages, finished and new activities, children and outgoing messages.
fn write_turn(conn: &Connection, turn: &TurnCommit, first_seq: u64, effects: &mut Vec<Effect>) -> StoreResult<()> {
    let events = turn.history.events();
    if !events.is_empty() {
        // One row per turn, keyed by its first event's position.
        let encoded = encode_events(events)?;
        conn.prepare_cached("INSERT INTO history (instance_id, seq, event) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![turn.instance_id, first_seq as i64, encoded]))
            .map_err(backend)?;
    }
    {
        let mut delete = conn.prepare_cached("DELETE FROM inbox WHERE id = ?1").map_err(backend)?;
        for id in &turn.consumed {
            delete.execute([id]).map_err(backend)?;
        }
    }
    for finished in &turn.finished_activities {
        conn.prepare_cached("DELETE FROM activities WHERE id = ?1")
            .and_then(|mut s| s.execute([finished.id]))
            .map_err(backend)?;
        effects.push(Effect::FinishActivity(finished.id));
    }
    for activity in &turn.activities {
        let timeouts = activity.timeouts.to_columns();
        let context = to_json_opt(activity.context.as_deref())?;
        conn.prepare_cached(
            "INSERT INTO activities (instance_id, execution, step, name, input, attempt, start_to_close_ms, \
             schedule_to_close_ms, heartbeat_ms, first_scheduled_at, heartbeat, context) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .and_then(|mut s| {
            s.execute(params![
                activity.instance_id,
                activity.execution as i64,
                activity.step as i64,
                activity.name,
                activity.input.as_str(),
                activity.attempt,
                timeouts[0],
                timeouts[1],
                timeouts[2],
                timeouts[3],
                activity.heartbeat.as_ref().map(Payload::as_str),
                context,
            ])
        })
        .map_err(backend)?;
        effects.push(Effect::Activity(ActivityEntry {
            id: conn.last_insert_rowid(),
            activity: activity.clone(),
            dequeue_count: 0,
            recovered: false,
        }));
    }
    if turn.status == RuntimeStatus::Terminated {
        // A terminated instance runs no more activities: queued ones never start, running ones
        // lose their lease (and are canceled when they next renew it).
        conn.prepare_cached("DELETE FROM activities WHERE instance_id = ?1")
            .and_then(|mut s| s.execute([&turn.instance_id]))
            .map_err(backend)?;
        effects.push(Effect::WithdrawActivities(turn.instance_id.clone()));
    }
    for child in &turn.sub_orchestrations {
        let mut child_effects = Vec::new();
        match create_instance(conn, &child.instance, &mut child_effects) {
            Ok(()) => effects.append(&mut child_effects),
            Err(StoreError::AlreadyExists(id, status)) => {
                let Some(parent) = &child.instance.parent else {
                    continue;
                };
                let failed = HistoryEvent::new(
                    turn.now,
                    EventKind::SubOrchestrationInstanceFailed {
                        task_scheduled_id: parent.task_scheduled_id,
                        failure_details: FailureDetails::new(
                            error_types::ALREADY_EXISTS,
                            format!("an instance with id '{id}' already exists and is {status}"),
                        ),
                    },
                );
                insert_message(conn, &turn.instance_id, Some(turn.execution), &failed, None, effects)?;
            }
            Err(other) => return Err(other),
        }
    }
    for message in &turn.messages {
        if message.instance_id == turn.instance_id || instance_exists(conn, &message.instance_id)? {
            insert_message(conn, &message.instance_id, message.execution, &message.event, message.visible_at, effects)?;
        }
    }
    effects.push(Effect::ReleaseInstance {
        instance_id: turn.instance_id.clone(),
        consumed: turn.consumed.clone(),
        suspended: turn.status == RuntimeStatus::Suspended,
    });
    Ok(())
}

/// Deletes an instance's rows from every table.
fn delete_rows(conn: &Connection, instance_id: &str) -> StoreResult<()> {
    for sql in [
        "DELETE FROM history WHERE instance_id = ?1",
        "DELETE FROM inbox WHERE instance_id = ?1",
        "DELETE FROM activities WHERE instance_id = ?1",
        "DELETE FROM instance_labels WHERE instance_id = ?1",
        "DELETE FROM instances WHERE instance_id = ?1",
    ] {
        conn.prepare_cached(sql).and_then(|mut s| s.execute([instance_id])).map_err(backend)?;
    }
    Ok(())
}

/// Up to `max` instances a purge with `filter` selects, oldest created first.
fn select_purgeable(conn: &Connection, filter: &PurgeFilter, max: usize) -> StoreResult<Vec<PageCursor>> {
    let Some((selection, args)) = purgeable(filter) else {
        return Ok(Vec::new());
    };
    let sql = format!("SELECT instance_id, created_at {selection} ORDER BY created_at, instance_id LIMIT {max}");
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |r| {
            Ok(PageCursor { instance_id: r.get(0)?, created_at: Timestamp(r.get(1)?) })
        })
        .map_err(backend)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(backend)
}

/// The instances a purge with `filter` selects, as `FROM instances c WHERE …` and its
/// arguments; `None` when the filter names no terminal status. Finished instances only, with no
/// message waiting (visible now: a rewind on its way; not a timer due later), top-level or orphaned: a sub-orchestration whose
/// parent is gone (it was still running when its parent was purged) has nobody left to purge
/// it with. The creation range walks `instances_by_created`.
pub(crate) fn purgeable(filter: &PurgeFilter) -> Option<(String, Vec<Value>)> {
    let statuses = filter.statuses.iter().filter(|s| s.is_terminal()).map(|s| s.code());
    let statuses: Vec<i64> = if filter.statuses.is_empty() {
        RuntimeStatus::ALL.iter().filter(|s| s.is_terminal()).map(|s| s.code()).collect()
    } else {
        statuses.collect()
    };
    if statuses.is_empty() {
        return None;
    }
    let list = statuses.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let sql = format!(
        "FROM instances c WHERE created_at >= ?1 AND created_at <= ?2 AND status IN ({list}) \
         AND updated_at <= ?3 AND (?4 IS NULL OR name = ?4) \
         AND name NOT IN (SELECT value FROM json_each(?5)) \
         AND (created_at > ?7 OR (created_at = ?7 AND instance_id > ?8)) \
         AND NOT EXISTS (SELECT 1 FROM inbox m WHERE m.instance_id = c.instance_id \
           AND (m.visible_at IS NULL OR m.visible_at <= ?6)) \
         AND (parent_instance_id IS NULL \
           OR NOT EXISTS (SELECT 1 FROM instances p WHERE p.instance_id = c.parent_instance_id))"
    );
    let excluded = serde_json::to_string(&filter.excluded_names).unwrap_or_else(|_| "[]".to_owned());
    let args = vec![
        // From where the last batch ended, if later: the walk of the creation index starts there.
        Value::Integer(
            filter
                .created_from
                .map_or(i64::MIN, |t| t.0)
                .max(filter.after.as_ref().map_or(i64::MIN, |a| a.created_at.0)),
        ),
        Value::Integer(filter.created_until().map_or(i64::MAX, |t| t.0)),
        Value::Integer(filter.finished_before.map_or(i64::MAX, |t| t.0)),
        filter.name.clone().map_or(Value::Null, Value::Text),
        Value::Text(excluded),
        Value::Integer(now().0),
        Value::Integer(filter.after.as_ref().map_or(i64::MIN, |a| a.created_at.0)),
        Value::Text(filter.after.as_ref().map_or(String::new(), |a| a.instance_id.clone())),
    ];
    Some((sql, args))
}

/// Deletes instances and, recursively, their finished sub-orchestrations. With `spare_waiting`
/// (a purge by filter), a tree in which any instance has a message waiting (visible now: a
/// rewind of a child, say) is left whole: deleting the rest would leave an orphan under an id
/// its parent's next run would reuse.
fn purge(conn: &Connection, roots: Vec<String>, spare_waiting: bool, effects: &mut Vec<Effect>) -> StoreResult<u64> {
    let mut deleted = Vec::new();
    for root in roots {
        let tree = finished_tree(conn, root)?;
        if spare_waiting && any_message_waiting(conn, &tree)? {
            continue;
        }
        for id in tree {
            delete_rows(conn, &id)?;
            deleted.push(id);
        }
    }
    let count = deleted.len() as u64;
    for id in &deleted {
        effects.push(Effect::Changed(RecordChange { instance_id: id.clone(), record: None }));
    }
    effects.push(Effect::Forget(deleted));
    Ok(count)
}

/// An instance and, recursively, its finished sub-orchestrations.
fn finished_tree(conn: &Connection, root: String) -> StoreResult<Vec<String>> {
    let mut tree = Vec::new();
    let mut pending = vec![root];
    while let Some(id) = pending.pop() {
        let mut stmt = conn
            .prepare_cached("SELECT instance_id, status FROM instances WHERE parent_instance_id = ?1")
            .map_err(backend)?;
        let children = stmt.query_map([&id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(backend)?;
        for child in children {
            let (child, status) = child.map_err(backend)?;
            if RuntimeStatus::from_code(status).is_some_and(RuntimeStatus::is_terminal) {
                pending.push(child);
            }
        }
        tree.push(id);
    }
    Ok(tree)
}

/// Whether a message visible now waits in the inbox of any of these instances.
fn any_message_waiting(conn: &Connection, instance_ids: &[String]) -> StoreResult<bool> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT 1 FROM inbox WHERE instance_id = ?1 AND (visible_at IS NULL OR visible_at <= ?2) LIMIT 1",
        )
        .map_err(backend)?;
    for id in instance_ids {
        if stmt.query_row(params![id, now().0], |_| Ok(())).optional().map_err(backend)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}
