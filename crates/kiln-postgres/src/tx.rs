//! Statements that run inside a store transaction: reading an instance's status, inserting a
//! message, creating an instance (replacing a finished one), writing a turn, reading a claimed
//! instance's work, and purging with cascade.

use crate::cached;
use crate::rows::{self, backend, is_unique_violation, to_json};
use crate::store::now;
use deadpool_postgres::{GenericClient, Object, Transaction};
use kiln_core::{EventKind, FailureDetails, HistoryEvent, Payload, RuntimeStatus, Timestamp, error_types};
use kiln_store::{
    ActivityWorkItem, InboxMessage, Lease, NewInstance, OrchestrationWorkItem, StoreError, StoreResult, TurnCommit,
    UNSTORED_MESSAGE_ID,
};
use std::sync::LazyLock;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Terminal status codes, as stored.
pub fn terminal_codes() -> Vec<i16> {
    RuntimeStatus::ALL.iter().filter(|s| s.is_terminal()).map(|s| s.code() as i16).collect()
}

/// How [`instance_status`] locks the instance's row until the transaction ends.
///
/// The row is the lock for everything of its instance: a write into an instance's inbox or
/// activities holds at least `KeyShare` on its row, and deleting the instance (purge, or a start
/// replacing a finished one) takes its row first, `FOR UPDATE`, and only then deletes the rest.
/// So a write either commits before the deletion (and its rows go with the instance) or finds no
/// instance; it can never leave a row behind for a later instance with the same id.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RowLock {
    /// The row may be changed, but not deleted, until the transaction ends (writes into the
    /// instance). Compatible with a turn's commit, which holds `FOR NO KEY UPDATE`: two turns
    /// messaging each other's instances do not deadlock.
    KeyShare,
    /// The row is ours to delete.
    Update,
}

/// An instance's status and execution, locking its row as `lock` says.
pub async fn instance_status(
    tx: &impl GenericClient,
    instance_id: &str,
    lock: RowLock,
) -> StoreResult<Option<(RuntimeStatus, u64)>> {
    let sql = match lock {
        RowLock::KeyShare => "SELECT status, execution FROM instances WHERE instance_id = $1 FOR KEY SHARE",
        RowLock::Update => "SELECT status, execution FROM instances WHERE instance_id = $1 FOR UPDATE",
    };
    let row = cached::query_opt(tx, sql, &[&instance_id]).await.map_err(backend)?;
    Ok(row.map(|r| {
        let status = RuntimeStatus::from_code(i64::from(r.get::<_, i16>(0))).unwrap_or(RuntimeStatus::Running);
        (status, r.get::<_, i64>(1) as u64)
    }))
}

/// Puts a message into an instance's inbox.
pub async fn insert_message(
    tx: &impl GenericClient,
    instance_id: &str,
    execution: Option<u64>,
    event: &HistoryEvent,
    visible_at: Option<Timestamp>,
) -> StoreResult<()> {
    let execution = execution.map(|e| e as i64);
    let visible_at = visible_at.map(|t| t.0);
    cached::execute(
        tx,
        "INSERT INTO inbox (instance_id, execution, visible_at, control, event) VALUES ($1, $2, $3, $4, $5)",
        &[&instance_id, &execution, &visible_at, &event.kind.is_control(), &to_json(event)?],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Deletes every row of an instance.
///
/// The instance's row goes first: deleting it waits for writes that hold it (see [`RowLock`]),
/// and each later statement sees what they committed meanwhile.
async fn delete_instance_rows(tx: &impl GenericClient, instance_id: &str) -> StoreResult<()> {
    for sql in [
        "DELETE FROM instances WHERE instance_id = $1",
        "DELETE FROM history WHERE instance_id = $1",
        "DELETE FROM inbox WHERE instance_id = $1",
        "DELETE FROM activities WHERE instance_id = $1",
        "DELETE FROM instance_labels WHERE instance_id = $1",
    ] {
        cached::execute(tx, sql, &[&instance_id]).await.map_err(backend)?;
    }
    Ok(())
}

/// Creates an instance inside a transaction; `AlreadyExists` if an unfinished one has the id.
pub async fn create_instance_tx(tx: &impl GenericClient, instance: &NewInstance) -> StoreResult<()> {
    let mut execution = instance.execution;
    if let Some((status, previous)) = instance_status(tx, &instance.instance_id, RowLock::Update).await? {
        if !status.is_terminal() {
            return Err(StoreError::AlreadyExists(instance.instance_id.clone(), status));
        }
        execution = previous + 1;
        delete_instance_rows(tx, &instance.instance_id).await?;
    }
    insert_instance_row(tx, instance, execution).await?;
    let started = instance.started_event();
    insert_message(tx, &instance.instance_id, Some(execution), &started, None).await
}

/// Inserts an instance's row (status `Pending`); `AlreadyExists` if the id is taken.
pub async fn insert_instance_row(tx: &impl GenericClient, instance: &NewInstance, execution: u64) -> StoreResult<()> {
    let parent = instance.parent.as_ref().map(to_json).transpose()?;
    let labels = if instance.labels.is_empty() { None } else { Some(to_json(&instance.labels)?) };
    let correlation = instance.correlation.as_ref().map(to_json).transpose()?;
    let inserted = cached::execute(
        tx,
        "INSERT INTO instances (instance_id, name, version, execution, status, input, created_at, updated_at, \
             parent, parent_instance_id, labels, correlation) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11)",
        &[
            &instance.instance_id,
            &instance.name,
            &instance.version,
            &(execution as i64),
            &(RuntimeStatus::Pending.code() as i16),
            &instance.input.as_str(),
            &instance.created_at.0,
            &parent,
            &instance.parent.as_ref().map(|p| p.instance_id.as_str()),
            &labels,
            &correlation,
        ],
    )
    .await;
    match inserted {
        Ok(_) => {}
        Err(err) if is_unique_violation(&err) => {
            return Err(StoreError::AlreadyExists(instance.instance_id.clone(), RuntimeStatus::Pending));
        }
        Err(err) => return Err(backend(err)),
    }
    if !instance.labels.is_empty() {
        let (keys, values): (Vec<&str>, Vec<&str>) = instance.labels.iter().unzip();
        cached::execute(
            tx,
            "INSERT INTO instance_labels (key, value, created_at, instance_id) \
             SELECT k, v, $3, $4 FROM unnest($1::text[], $2::text[]) AS l(k, v)",
            &[&keys, &values, &instance.created_at.0, &instance.instance_id],
        )
        .await
        .map_err(backend)?;
    }
    Ok(())
}

/// Which instances a purge leaves alone.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Spare {
    /// None: the roots were named (a purge of one instance).
    Nothing,
    /// A tree in which any instance has a message waiting (visible now: a rewind of a child,
    /// say; a timer due later does not count): the roots were selected by a filter, whose
    /// snapshot may predate the message, and deleting the rest of the tree would leave an
    /// orphan under an id its parent's next run would reuse.
    WaitingTrees,
}

/// Deletes instances (whose rows the caller locked `FOR UPDATE`) and, recursively, their
/// finished sub-orchestrations (locked here, parent before child). A child whose row another
/// transaction holds (a turn writing a message into it) is skipped rather than waited for: a
/// purge waiting on a child while that turn waits on the parent would deadlock. Left behind,
/// it is an orphan, which bulk purges take once their filter matches it. With
/// [`Spare::WaitingTrees`], each tree's inboxes are checked once its rows are locked, by a
/// statement of its own, so that a message sent after the selection's snapshot (its sender held
/// a row, and committed before the lock was granted) is seen: the caller's transaction must be
/// READ COMMITTED.
pub async fn purge_tx(tx: &impl GenericClient, roots: Vec<String>, spare: Spare) -> StoreResult<Vec<String>> {
    let terminal = terminal_codes();
    let mut deleted = Vec::new();
    for root in roots {
        let mut tree = Vec::new();
        let mut pending = vec![root];
        while let Some(id) = pending.pop() {
            let children = cached::query(
                tx,
                "SELECT instance_id FROM instances WHERE parent_instance_id = $1 AND status = ANY($2) \
                 FOR UPDATE SKIP LOCKED",
                &[&id, &terminal],
            )
            .await
            .map_err(backend)?;
            pending.extend(children.iter().map(|r| r.get::<_, String>(0)));
            tree.push(id);
        }
        if spare == Spare::WaitingTrees && any_message_waiting(tx, &tree).await? {
            continue;
        }
        for id in tree {
            delete_instance_rows(tx, &id).await?;
            deleted.push(id);
        }
    }
    Ok(deleted)
}

/// Whether a message visible now waits in the inbox of any of these instances.
async fn any_message_waiting(tx: &impl GenericClient, instance_ids: &[String]) -> StoreResult<bool> {
    let row = cached::query_opt(
        tx,
        "SELECT 1 FROM inbox WHERE instance_id = ANY($1) AND (visible_at IS NULL OR visible_at <= $2) LIMIT 1",
        &[&instance_ids, &now().0],
    )
    .await
    .map_err(backend)?;
    Ok(row.is_some())
}

/// The work item for a claimed instance row (`INSTANCE_COLUMNS`, then lease token, expiry and
/// claim count): the instance and its messages visible at `at`.
pub async fn claimed_work(client: &Object, row: &Row, at: i64) -> StoreResult<OrchestrationWorkItem> {
    let instance = rows::instance(row)?;
    let lease = Lease {
        token: row.try_get::<_, i64>(rows::INSTANCE_COLUMN_COUNT).map_err(backend)? as u64,
        expires_at: Timestamp(row.try_get(rows::INSTANCE_COLUMN_COUNT + 1).map_err(backend)?),
    };
    let dequeue_count = row.try_get::<_, i32>(rows::INSTANCE_COLUMN_COUNT + 2).map_err(backend)? as u32;
    let messages = cached::query(
        client,
        "SELECT id, execution, event FROM inbox WHERE instance_id = $1 \
                 AND (visible_at IS NULL OR visible_at <= $2) ORDER BY id",
        &[&instance.instance_id, &at],
    )
    .await
    .map_err(backend)?
    .iter()
    .map(|r| {
        Ok(InboxMessage {
            id: r.try_get(0).map_err(backend)?,
            execution: r.try_get::<_, Option<i64>>(1).map_err(backend)?.map(|e| e as u64),
            event: rows::event(r.try_get(2).map_err(backend)?)?,
        })
    })
    .collect::<StoreResult<Vec<_>>>()?;
    Ok(OrchestrationWorkItem { instance, messages, lease, dequeue_count })
}

/// Most new activities a turn claims for its own node (more go to every node's dispatchers).
const LOCAL_CLAIM_MAX: usize = 64;

/// What a written turn leaves to do once its transaction has committed.
pub struct TurnWritten {
    /// Notifications to publish.
    pub notes: Vec<String>,
    /// The turn's new activities, claimed for this node until the lease given to [`write_turn`].
    pub claimed: Vec<ActivityWorkItem>,
}

/// Writes a turn's changes in `tx` (the caller checked the lease and read the instance's history
/// length before the turn).
///
/// With `claim_until`, a turn's new activities (up to [`LOCAL_CLAIM_MAX`]) are inserted already
/// claimed for this node until then: the node that ran the turn runs them, with the execution
/// still in its cache, and no node spends a claim on them. If the node dies, the lease lapses
/// and any node claims them.
///
/// The instance's row, its history, consumed messages, finished and new activities do not depend
/// on one another, so their statements go out together (pipelined: one round trip, not five).
pub async fn write_turn(
    tx: &mut Transaction<'_>,
    commit: &TurnCommit,
    history_len_before: u64,
    claim_until: Option<i64>,
) -> StoreResult<TurnWritten> {
    let id = &commit.instance_id;
    let (events, replace) = (commit.history.events(), commit.history.replaces());
    if replace {
        cached::execute(&*tx, "DELETE FROM history WHERE instance_id = $1", &[id]).await.map_err(backend)?;
    }
    let first_seq = if replace { 0 } else { history_len_before as i64 };
    let appended = events.len() as i64;
    let waiting_on = if commit.waiting_on.is_empty() { None } else { Some(to_json(&commit.waiting_on)?) };
    let failure = commit.failure.as_ref().map(to_json).transpose()?;
    let encoded = events.iter().map(to_json).collect::<StoreResult<Vec<String>>>()?;
    let consumed: Vec<i64> = commit.consumed.iter().copied().filter(|id| *id != UNSTORED_MESSAGE_ID).collect();
    let (finished_ids, finished_tokens): (Vec<i64>, Vec<i64>) =
        commit.finished_activities.iter().map(|f| (f.id, f.lease.token as i64)).unzip();
    let new_activities = NewActivityColumns::of(commit);
    let at = now().0;
    let (execution, status, output) =
        (commit.execution as i64, commit.status.code() as i16, commit.output.as_ref().map(Payload::as_str));
    let (custom_status, history_len) = (commit.custom_status.as_ref().map(Payload::as_str), first_seq + appended);
    let update: [&(dyn ToSql + Sync); 11] = [
        id,
        &execution,
        &status,
        &commit.input.as_str(),
        &output,
        &failure,
        &custom_status,
        &waiting_on,
        &commit.now.0,
        &history_len,
        &commit.version,
    ];
    let history: [&(dyn ToSql + Sync); 3] = [id, &first_seq, &encoded];
    let consumed_params: [&(dyn ToSql + Sync); 2] = [id, &consumed];
    let finished: [&(dyn ToSql + Sync); 3] = [&finished_ids, &finished_tokens, &at];
    let columns = &new_activities;
    let claim_until = claim_until.filter(|_| commit.activities.len() <= LOCAL_CLAIM_MAX);
    let inserted: [&(dyn ToSql + Sync); 13] = [
        &columns.instance_ids,
        &columns.executions,
        &columns.steps,
        &columns.names,
        &columns.inputs,
        &columns.attempts,
        &columns.start_to_close,
        &columns.schedule_to_close,
        &columns.heartbeat_timeouts,
        &columns.first_scheduled_at,
        &columns.heartbeats,
        &columns.contexts,
        &claim_until,
    ];
    let shared = &*tx;
    let (updated, history, consumed_deleted, finished_deleted, inserted) = tokio::join!(
        cached::execute(
            shared,
            "UPDATE instances SET execution = $2, status = $3, input = $4, output = $5, failure = $6, \
             custom_status = $7, waiting_on = $8, updated_at = $9, dequeue_count = 0, lock_token = NULL, \
             locked_until = NULL, history_len = $10, version = $11 WHERE instance_id = $1",
            &update,
        ),
        skip_if(
            encoded.is_empty(),
            cached::execute(
                shared,
                "INSERT INTO history (instance_id, seq, event) \
                 SELECT $1, $2 + ordinality - 1, event FROM unnest($3::text[]) WITH ORDINALITY AS e(event, ordinality)",
                &history,
            ),
        ),
        skip_if(
            consumed.is_empty(),
            cached::execute(shared, "DELETE FROM inbox WHERE instance_id = $1 AND id = ANY($2)", &consumed_params),
        ),
        skip_if(
            finished_ids.is_empty(),
            cached::execute(
                shared,
                "DELETE FROM activities a USING unnest($1::bigint[], $2::bigint[]) AS f(id, token) \
                 WHERE a.id = f.id AND a.lock_token = f.token AND a.locked_until >= $3",
                &finished,
            ),
        ),
        async {
            match claim_until {
                _ if columns.names.is_empty() => Ok(Vec::new()),
                Some(_) => cached::query(shared, &INSERT_CLAIMED_ACTIVITIES, &inserted).await,
                None => cached::execute(
                    shared,
                    "INSERT INTO activities (instance_id, execution, step, name, input, attempt, start_to_close_ms, \
                     schedule_to_close_ms, heartbeat_ms, first_scheduled_at, heartbeat, context) \
                     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::int[], \
                     $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[], $12::text[])",
                    &inserted[..12],
                )
                .await
                .map(|_| Vec::new()),
            }
        },
    );
    if updated.map_err(backend)? == 0 {
        return Err(StoreError::NotFound(id.clone()));
    }
    history.map_err(backend)?;
    consumed_deleted.map_err(backend)?;
    if finished_deleted.map_err(backend)? != finished_ids.len() as u64 {
        return Err(StoreError::LeaseLost(format!("an activity of {id}")));
    }
    let claimed = inserted.map_err(backend)?.iter().map(rows::activity_work_item).collect::<StoreResult<Vec<_>>>()?;
    if commit.status == RuntimeStatus::Terminated {
        // A terminated instance runs no more activities: queued ones never start, running ones
        // lose their lease (and are canceled when they next renew it).
        cached::execute(&*tx, "DELETE FROM activities WHERE instance_id = $1", &[id]).await.map_err(backend)?;
    }
    let mut notes = vec![format!("s:{id}")];
    if !commit.activities.is_empty() && claimed.is_empty() {
        notes.push("a".to_owned());
    }
    for child in &commit.sub_orchestrations {
        let savepoint = tx.savepoint("child").await.map_err(backend)?;
        match create_instance_tx(&savepoint, &child.instance).await {
            Ok(()) => {
                savepoint.commit().await.map_err(backend)?;
                notes.push(format!("s:{}", child.instance.instance_id));
            }
            Err(StoreError::AlreadyExists(child_id, status)) => {
                savepoint.rollback().await.map_err(backend)?;
                let Some(parent) = &child.instance.parent else { continue };
                let failed = HistoryEvent::new(
                    commit.now,
                    EventKind::SubOrchestrationInstanceFailed {
                        task_scheduled_id: parent.task_scheduled_id,
                        failure_details: FailureDetails::new(
                            error_types::ALREADY_EXISTS,
                            format!("an instance with id '{child_id}' already exists and is {status}"),
                        ),
                    },
                );
                insert_message(&*tx, id, Some(commit.execution), &failed, None).await?;
            }
            Err(other) => return Err(other),
        }
    }
    // The other instances messaged are locked in one statement, in id order, so that two turns
    // (or a turn and a purge) never take them in opposite orders.
    let mut targets: Vec<&str> =
        commit.messages.iter().map(|m| m.instance_id.as_str()).filter(|target| *target != id.as_str()).collect();
    targets.sort_unstable();
    targets.dedup();
    let existing: Vec<String> = if targets.is_empty() {
        Vec::new()
    } else {
        cached::query(
            &*tx,
            "SELECT instance_id FROM instances WHERE instance_id = ANY($1) ORDER BY instance_id FOR KEY SHARE",
            &[&targets],
        )
        .await
        .map_err(backend)?
        .iter()
        .map(|row| row.get(0))
        .collect()
    };
    for message in &commit.messages {
        if message.instance_id == *id || existing.contains(&message.instance_id) {
            insert_message(&*tx, &message.instance_id, message.execution, &message.event, message.visible_at).await?;
        }
    }
    if !commit.messages.is_empty() || !commit.sub_orchestrations.is_empty() {
        notes.push("w".to_owned());
    }
    Ok(TurnWritten { notes, claimed })
}

/// A statement run only when needed; skipped ones report no rows changed.
async fn skip_if(
    skip: bool,
    statement: impl std::future::Future<Output = Result<u64, tokio_postgres::Error>>,
) -> Result<u64, tokio_postgres::Error> {
    if skip { Ok(0) } else { statement.await }
}

/// Inserts a turn's new activities claimed for this node, returning them as work items.
static INSERT_CLAIMED_ACTIVITIES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO activities (instance_id, execution, step, name, input, attempt, start_to_close_ms, \
         schedule_to_close_ms, heartbeat_ms, first_scheduled_at, heartbeat, context, lock_token, locked_until, \
         dequeue_count) \
         SELECT a.*, nextval('lease_tokens'), $13, 1 FROM unnest($1::text[], $2::bigint[], $3::bigint[], \
         $4::text[], $5::text[], $6::int[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[], \
         $12::text[]) AS a \
         RETURNING {}",
        rows::ACTIVITY_COLUMNS
    )
});

/// A turn's new activities as columns, for one `INSERT … unnest`.
struct NewActivityColumns<'a> {
    instance_ids: Vec<&'a str>,
    executions: Vec<i64>,
    steps: Vec<i64>,
    names: Vec<&'a str>,
    inputs: Vec<&'a str>,
    attempts: Vec<i32>,
    start_to_close: Vec<Option<i64>>,
    schedule_to_close: Vec<Option<i64>>,
    heartbeat_timeouts: Vec<Option<i64>>,
    first_scheduled_at: Vec<Option<i64>>,
    heartbeats: Vec<Option<&'a str>>,
    contexts: Vec<Option<String>>,
}

impl<'a> NewActivityColumns<'a> {
    fn of(commit: &'a TurnCommit) -> NewActivityColumns<'a> {
        let activities = &commit.activities;
        // Each activity's timeouts as columns, computed once.
        let timeouts: Vec<[Option<i64>; 4]> = activities.iter().map(|a| a.timeouts.to_columns()).collect();
        NewActivityColumns {
            instance_ids: activities.iter().map(|a| a.instance_id.as_str()).collect(),
            executions: activities.iter().map(|a| a.execution as i64).collect(),
            steps: activities.iter().map(|a| a.step as i64).collect(),
            names: activities.iter().map(|a| a.name.as_str()).collect(),
            inputs: activities.iter().map(|a| a.input.as_str()).collect(),
            attempts: activities.iter().map(|a| a.attempt as i32).collect(),
            start_to_close: timeouts.iter().map(|t| t[0]).collect(),
            schedule_to_close: timeouts.iter().map(|t| t[1]).collect(),
            heartbeat_timeouts: timeouts.iter().map(|t| t[2]).collect(),
            first_scheduled_at: timeouts.iter().map(|t| t[3]).collect(),
            heartbeats: activities.iter().map(|a| a.heartbeat.as_ref().map(Payload::as_str)).collect(),
            // Plain data always encodes; were it not to, the activity would only lose its log context.
            contexts: activities
                .iter()
                .map(|a| a.context.as_deref().and_then(|c| serde_json::to_string(c).ok()))
                .collect(),
        }
    }
}
