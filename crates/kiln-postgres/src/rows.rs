//! Row encoding shared by the PostgreSQL store's queries.

use kiln_core::{
    ActivityTimeouts, Correlation, FailureDetails, HistoryEvent, Labels, ParentInstance, Payload, RuntimeStatus,
    Timestamp, WaitingOn,
};
use kiln_store::{ActivityWorkItem, InstanceRecord, Lease, NewActivity, StoreError};
use serde::Serialize;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

/// The instance columns [`instance`] reads, in order.
pub const INSTANCE_COLUMNS: &str = "instance_id, name, version, execution, status, input, output, failure, \
     custom_status, created_at, updated_at, waiting_on, parent, history_len, labels, correlation";

/// How many columns [`INSTANCE_COLUMNS`] names (a claim's lease columns follow them).
pub const INSTANCE_COLUMN_COUNT: usize = 16;

/// The same columns qualified with the table name (for `UPDATE … RETURNING` with joins).
pub const QUALIFIED_INSTANCE_COLUMNS: &str = "instances.instance_id, instances.name, instances.version, \
     instances.execution, instances.status, instances.input, instances.output, instances.failure, \
     instances.custom_status, instances.created_at, instances.updated_at, instances.waiting_on, \
     instances.parent, instances.history_len, instances.labels, instances.correlation";

/// Reads an instance row selected with [`INSTANCE_COLUMNS`].
pub fn instance(row: &Row) -> Result<InstanceRecord, StoreError> {
    let code: i16 = row.try_get(4).map_err(backend)?;
    let status = RuntimeStatus::from_code(i64::from(code))
        .ok_or_else(|| StoreError::Corrupt(format!("unknown status code {code}")))?;
    let failure: Option<String> = row.try_get(7).map_err(backend)?;
    let waiting_on: Option<String> = row.try_get(11).map_err(backend)?;
    let parent: Option<String> = row.try_get(12).map_err(backend)?;
    Ok(InstanceRecord {
        instance_id: row.try_get(0).map_err(backend)?,
        name: row.try_get(1).map_err(backend)?,
        version: row.try_get(2).map_err(backend)?,
        execution: row.try_get::<_, i64>(3).map_err(backend)? as u64,
        status,
        input: Payload::from_trusted(row.try_get(5).map_err(backend)?),
        output: row.try_get::<_, Option<String>>(6).map_err(backend)?.map(Payload::from_trusted),
        failure: failure.map(|f| from_json::<FailureDetails>(&f, "failure")).transpose()?,
        custom_status: row.try_get::<_, Option<String>>(8).map_err(backend)?.map(Payload::from_trusted),
        created_at: Timestamp(row.try_get(9).map_err(backend)?),
        updated_at: Timestamp(row.try_get(10).map_err(backend)?),
        waiting_on: match waiting_on {
            Some(w) => from_json::<Vec<WaitingOn>>(&w, "waiting_on")?,
            None => Vec::new(),
        },
        parent: parent.map(|p| from_json::<ParentInstance>(&p, "parent")).transpose()?,
        history_len: row.try_get::<_, i64>(13).map_err(backend)? as u64,
        labels: row
            .try_get::<_, Option<String>>(14)
            .map_err(backend)?
            .map_or_else(|| Ok(Labels::default()), |text| from_json(&text, "labels"))?,
        correlation: row
            .try_get::<_, Option<String>>(15)
            .map_err(backend)?
            .map(|text| from_json::<Correlation>(&text, "correlation"))
            .transpose()?,
    })
}

/// Encodes a value as JSON text for a column.
/// The columns [`activity_work_item`] reads, in order.
pub const ACTIVITY_COLUMNS: &str = "id, instance_id, execution, step, name, input, attempt, dequeue_count, lock_token, \
     locked_until, start_to_close_ms, schedule_to_close_ms, heartbeat_ms, first_scheduled_at, heartbeat, context";

/// A claimed activity, selected with [`ACTIVITY_COLUMNS`].
pub fn activity_work_item(row: &Row) -> Result<ActivityWorkItem, StoreError> {
    let get_i64 = |index: usize| row.try_get::<_, i64>(index).map_err(backend);
    let get_i32 = |index: usize| row.try_get::<_, i32>(index).map_err(backend);
    let get_opt_i64 = |index: usize| row.try_get::<_, Option<i64>>(index).map_err(backend);
    Ok(ActivityWorkItem {
        id: get_i64(0)?,
        activity: NewActivity {
            instance_id: row.try_get(1).map_err(backend)?,
            execution: get_i64(2)? as u64,
            step: get_i64(3)? as u64,
            name: row.try_get(4).map_err(backend)?,
            input: Payload::from_trusted(row.try_get(5).map_err(backend)?),
            attempt: get_i32(6)? as u32,
            timeouts: ActivityTimeouts::from_columns([
                get_opt_i64(10)?,
                get_opt_i64(11)?,
                get_opt_i64(12)?,
                get_opt_i64(13)?,
            ]),
            heartbeat: row.try_get::<_, Option<String>>(14).map_err(backend)?.map(Payload::from_trusted),
            // An unreadable context only costs the activity its log context.
            context: row
                .try_get::<_, Option<String>>(15)
                .map_err(backend)?
                .and_then(|c| serde_json::from_str(&c).ok())
                .map(std::sync::Arc::new),
        },
        dequeue_count: get_i32(7)? as u32,
        lease: Lease { token: get_i64(8)? as u64, expires_at: Timestamp(get_i64(9)?) },
    })
}

pub fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("cannot encode record: {e}")))
}

/// Decodes JSON text from a column.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("cannot decode {what}: {e}")))
}

/// Decodes a history event.
pub fn event(text: &str) -> Result<HistoryEvent, StoreError> {
    from_json(text, "history event")
}

/// Maps a PostgreSQL error: an error without an SQLSTATE (closed connection, I/O, EOF) means the
/// database is out of reach and is `Unavailable` (the caller may retry); the rest are backend
/// errors.
pub fn backend(err: tokio_postgres::Error) -> StoreError {
    // A deadlock victim, a serialization failure or a lock wait cut short is aborted by
    // PostgreSQL and may simply be retried: passing, like a lost connection.
    let transient =
        [SqlState::T_R_DEADLOCK_DETECTED, SqlState::T_R_SERIALIZATION_FAILURE, SqlState::LOCK_NOT_AVAILABLE];
    if err.is_closed() || err.as_db_error().is_none() || err.code().is_some_and(|code| transient.contains(code)) {
        StoreError::Unavailable(format!("PostgreSQL: {err}"))
    } else {
        StoreError::Backend(format!("PostgreSQL: {err}"))
    }
}

/// True for a unique-constraint violation.
pub fn is_unique_violation(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&SqlState::UNIQUE_VIOLATION)
}
