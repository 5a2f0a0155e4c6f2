//! Statements that run inside a store transaction: reading an instance's status, inserting a
//! message, creating an instance (replacing a finished one), and purging with cascade.

use crate::cached;
use crate::rows::{backend, is_unique_violation, to_json};
use deadpool_postgres::GenericClient;
use kiln_core::{HistoryEvent, RuntimeStatus, Timestamp};
use kiln_store::{NewInstance, StoreError, StoreResult};

/// Terminal status codes, as stored.
pub fn terminal_codes() -> Vec<i16> {
    RuntimeStatus::ALL.iter().filter(|s| s.is_terminal()).map(|s| s.code() as i16).collect()
}

/// An instance's status and execution, optionally locking its row.
pub async fn instance_status(
    tx: &impl GenericClient,
    instance_id: &str,
    lock: bool,
) -> StoreResult<Option<(RuntimeStatus, u64)>> {
    let sql = if lock {
        "SELECT status, execution FROM instances WHERE instance_id = $1 FOR UPDATE"
    } else {
        "SELECT status, execution FROM instances WHERE instance_id = $1"
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
async fn delete_instance_rows(tx: &impl GenericClient, instance_id: &str) -> StoreResult<()> {
    for sql in [
        "DELETE FROM history WHERE instance_id = $1",
        "DELETE FROM inbox WHERE instance_id = $1",
        "DELETE FROM activities WHERE instance_id = $1",
        "DELETE FROM instances WHERE instance_id = $1",
    ] {
        cached::execute(tx, sql, &[&instance_id]).await.map_err(backend)?;
    }
    Ok(())
}

/// Creates an instance inside a transaction; `AlreadyExists` if an unfinished one has the id.
pub async fn create_instance_tx(tx: &impl GenericClient, instance: &NewInstance) -> StoreResult<()> {
    let mut execution = 0u64;
    if let Some((status, previous)) = instance_status(tx, &instance.instance_id, true).await? {
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
    let inserted = cached::execute(
        tx,
        "INSERT INTO instances (instance_id, name, version, execution, status, input, created_at, updated_at, \
             parent, parent_instance_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)",
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
    Ok(())
}

/// Deletes instances and, recursively, their finished sub-orchestrations.
pub async fn purge_tx(tx: &impl GenericClient, roots: Vec<String>) -> StoreResult<Vec<String>> {
    let terminal = terminal_codes();
    let mut pending = roots;
    let mut deleted = Vec::new();
    while let Some(id) = pending.pop() {
        let children = cached::query(
            tx,
            "SELECT instance_id FROM instances WHERE parent_instance_id = $1 AND status = ANY($2)",
            &[&id, &terminal],
        )
        .await
        .map_err(backend)?;
        pending.extend(children.iter().map(|r| r.get::<_, String>(0)));
        delete_instance_rows(tx, &id).await?;
        deleted.push(id);
    }
    Ok(deleted)
}
