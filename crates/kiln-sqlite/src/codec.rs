//! Encoding of records to and from SQLite columns.

use kiln_core::{
    Correlation, FailureDetails, HistoryEvent, Labels, ParentInstance, Payload, RuntimeStatus, Timestamp, WaitingOn,
};
use kiln_store::{InstanceRecord, StoreError};
use rusqlite::Row;
use serde::Serialize;

/// The columns [`instance_from_row`] reads, in order.
pub const INSTANCE_COLUMNS: &str = "instance_id, name, version, execution, status, input, output, failure, \
     custom_status, created_at, updated_at, waiting_on, parent, history_len, labels, correlation";

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

/// Encodes one event (an inbox message).
pub fn encode_event(event: &HistoryEvent) -> Result<String, StoreError> {
    to_json(event)
}

/// Decodes one event (an inbox message).
pub fn decode_event(text: &str) -> Result<HistoryEvent, StoreError> {
    from_json(text, "event")
}

/// Encodes the events one turn appended as one history row: a single event as its object, several
/// as an array (one row per turn instead of per event: fewer B-tree inserts per commit).
pub fn encode_events(events: &[HistoryEvent]) -> Result<String, StoreError> {
    match events {
        [event] => to_json(event),
        _ => to_json(&events),
    }
}

/// Decodes a history row written by [`encode_events`] (rows of schema version 2 hold one event)
/// and appends its events to `history`.
pub fn decode_events(text: &str, history: &mut Vec<HistoryEvent>) -> Result<(), StoreError> {
    if text.starts_with('[') {
        history.extend(from_json::<Vec<HistoryEvent>>(text, "history events")?);
    } else {
        history.push(decode_event(text)?);
    }
    Ok(())
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
        labels: labels_from_column(row.get(14).map_err(get_err)?)?,
        correlation: correlation_from_column(row.get(15).map_err(get_err)?)?,
    })
}

/// The `labels` column: NULL when there are none.
pub fn labels_column(labels: &Labels) -> Result<Option<String>, StoreError> {
    if labels.is_empty() { Ok(None) } else { to_json(labels).map(Some) }
}

/// Reads the `labels` column.
pub fn labels_from_column(column: Option<String>) -> Result<Labels, StoreError> {
    column.map_or_else(|| Ok(Labels::default()), |text| from_json(&text, "labels"))
}

/// Reads the `correlation` column.
pub fn correlation_from_column(column: Option<String>) -> Result<Option<Correlation>, StoreError> {
    column.map(|text| from_json(&text, "correlation")).transpose()
}

/// Maps a SQLite error to a store error: a full disk, an I/O error, memory or the database
/// being busy pass, so they are [`StoreError::Unavailable`] (callers back off and retry).
pub fn backend(err: rusqlite::Error) -> StoreError {
    store_error(&err)
}

/// [`backend`] for a borrowed error.
pub fn store_error(err: &rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match err.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Unavailable("the disk is full".into()),
        Some(ErrorCode::SystemIoFailure) => StoreError::Unavailable("disk I/O error".into()),
        Some(ErrorCode::OutOfMemory) => StoreError::Unavailable("out of memory".into()),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable("the database is busy".into())
        }
        Some(ErrorCode::CannotOpen) => StoreError::Unavailable("the database file cannot be opened".into()),
        _ => StoreError::Backend(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::EventKind;

    #[test]
    fn a_history_row_holds_one_event_or_one_turns_events() {
        let started = HistoryEvent::new(Timestamp(1), EventKind::OrchestratorStarted);
        let turn = vec![started.clone(), started.clone()];
        let mut history = Vec::new();
        // A row written by schema version 2 (one event), then one written now (a turn's events).
        decode_events(&encode_event(&started).unwrap_or_default(), &mut history).unwrap_or_default();
        decode_events(&encode_events(&turn).unwrap_or_default(), &mut history).unwrap_or_default();
        assert_eq!(history, vec![started; 3]);
        assert!(decode_events("[{\"not\": \"an event\"}]", &mut history).is_err());
    }
}
