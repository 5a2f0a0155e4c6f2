//! Encoding of records to and from SQLite columns.

use kiln_core::{FailureDetails, HistoryEvent, ParentInstance, Payload, RuntimeStatus, Timestamp, WaitingOn};
use kiln_store::{InstanceRecord, StoreError};
use rusqlite::Row;
use serde::Serialize;

/// The columns [`instance_from_row`] reads, in order.
pub const INSTANCE_COLUMNS: &str = "instance_id, name, version, execution, status, input, output, failure, \
     custom_status, created_at, updated_at, waiting_on, parent, history_len";

/// Encodes a value as JSON text for a column.
pub fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("cannot encode record: {e}")))
}

/// Decodes JSON text from a column.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("cannot decode {what}: {e}")))
}

/// Encodes an optional value; `None` stays SQL NULL.
pub fn to_json_opt<T: Serialize>(value: Option<&T>) -> Result<Option<String>, StoreError> {
    value.map(to_json).transpose()
}

/// Encodes a history event.
pub fn encode_event(event: &HistoryEvent) -> Result<String, StoreError> {
    to_json(event)
}

/// Decodes a history event.
pub fn decode_event(text: &str) -> Result<HistoryEvent, StoreError> {
    from_json(text, "history event")
}

/// Reads an instance row selected with [`INSTANCE_COLUMNS`].
pub fn instance_from_row(row: &Row<'_>) -> Result<InstanceRecord, StoreError> {
    let get_err = |e: rusqlite::Error| StoreError::Corrupt(format!("cannot read instance row: {e}"));
    let status_code: i64 = row.get(4).map_err(get_err)?;
    let status = RuntimeStatus::from_code(status_code)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown status code {status_code}")))?;
    let waiting_on: Option<String> = row.get(11).map_err(get_err)?;
    let parent: Option<String> = row.get(12).map_err(get_err)?;
    let failure: Option<String> = row.get(7).map_err(get_err)?;
    Ok(InstanceRecord {
        instance_id: row.get(0).map_err(get_err)?,
        name: row.get(1).map_err(get_err)?,
        version: row.get(2).map_err(get_err)?,
        execution: row.get::<_, i64>(3).map_err(get_err)? as u64,
        status,
        input: Payload::from_trusted(row.get(5).map_err(get_err)?),
        output: row.get::<_, Option<String>>(6).map_err(get_err)?.map(Payload::from_trusted),
        failure: failure.map(|f| from_json::<FailureDetails>(&f, "failure")).transpose()?,
        custom_status: row.get::<_, Option<String>>(8).map_err(get_err)?.map(Payload::from_trusted),
        created_at: Timestamp(row.get(9).map_err(get_err)?),
        updated_at: Timestamp(row.get(10).map_err(get_err)?),
        waiting_on: match waiting_on {
            Some(w) => from_json::<Vec<WaitingOn>>(&w, "waiting_on")?,
            None => Vec::new(),
        },
        parent: parent.map(|p| from_json::<ParentInstance>(&p, "parent")).transpose()?,
        history_len: row.get::<_, i64>(13).map_err(get_err)? as u64,
    })
}

/// Maps a SQLite error to a store error.
pub fn backend(err: rusqlite::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}
