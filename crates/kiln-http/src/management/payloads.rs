//! Durable Functions' JSON shapes: the status object, the check-status payload and the history
//! as DF's HTTP API shows it.

use crate::status::payload_value;
use crate::urls::encode_component;
use kiln::{EventKind, HistoryEvent, InstanceRecord, InstanceSummary, RuntimeStatus};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// The status object (`StatusResponsePayload`): all eight keys, nulls included, and Kiln's
/// `labels` and `correlationId`.
pub fn status_object(record: &InstanceRecord, show_input: bool, history: Option<Vec<Value>>) -> Value {
    let output = match record.status {
        RuntimeStatus::Completed | RuntimeStatus::Terminated | RuntimeStatus::Canceled => {
            record.output.as_ref().map_or(Value::Null, payload_value)
        }
        RuntimeStatus::Failed => {
            record.failure.as_ref().map_or(Value::Null, |f| Value::String(f.error_message.clone()))
        }
        _ => Value::Null,
    };
    let mut status = json!({
        "name": record.name,
        "instanceId": record.instance_id,
        "runtimeStatus": record.status.as_str(),
        "input": if show_input { payload_value(&record.input) } else { Value::Null },
        "customStatus": record.custom_status.as_ref().map_or(Value::Null, payload_value),
        "output": output,
        "createdTime": record.created_at.to_rfc3339_seconds(),
        "lastUpdatedTime": record.updated_at.to_rfc3339_seconds(),
        "labels": record.labels,
        "correlationId": record.correlation.as_ref().map(|c| c.id.as_str()),
    });
    if let (Some(events), Value::Object(fields)) = (history, &mut status) {
        fields.insert("historyEvents".into(), Value::Array(events));
    }
    status
}

/// An instance a dry run selects.
pub fn instance_summary(candidate: &InstanceSummary) -> Value {
    json!({
        "instanceId": candidate.instance_id,
        "name": candidate.name,
        "runtimeStatus": candidate.status.as_str(),
        "createdTime": candidate.created_at.to_rfc3339_seconds(),
        "lastUpdatedTime": candidate.updated_at.to_rfc3339_seconds(),
    })
}

/// The check-status payload (`HttpManagementPayload` without rewind, as DF's start returns):
/// `base` is the management API's absolute base URL, `query` the common query suffix.
pub fn check_status(base: &str, instance_id: &str, query: &str) -> Value {
    let instance = format!("{base}/instances/{}", encode_component(instance_id));
    json!({
        "id": instance_id,
        "statusQueryGetUri": format!("{instance}?{query}"),
        "sendEventPostUri": format!("{instance}/raiseEvent/{{eventName}}?{query}"),
        "terminatePostUri": format!("{instance}/terminate?reason={{text}}&{query}"),
        "purgeHistoryDeleteUri": format!("{instance}?{query}"),
        "restartPostUri": format!("{instance}/restart?{query}"),
        "suspendPostUri": format!("{instance}/suspend?reason={{text}}&{query}"),
        "resumePostUri": format!("{instance}/resume?reason={{text}}&{query}"),
    })
}

/// History as DF shows it: `EventType` names, no `EventId`, no `OrchestratorStarted`, scheduling
/// events merged into their completions (`FunctionName`, `ScheduledTime`), results only with
/// `show_output`, inputs only with `show_input`.
pub fn history(events: &[HistoryEvent], show_output: bool, show_input: bool) -> Vec<Value> {
    let mut scheduled: HashMap<u64, &HistoryEvent> = HashMap::new();
    let mut completed = std::collections::HashSet::new();
    for event in events {
        match &event.kind {
            EventKind::TaskScheduled { .. } | EventKind::SubOrchestrationInstanceCreated { .. } => {
                if let Ok(id) = u64::try_from(event.event_id) {
                    scheduled.insert(id, event);
                }
            }
            EventKind::TaskCompleted { task_scheduled_id, .. }
            | EventKind::TaskFailed { task_scheduled_id, .. }
            | EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id, .. }
            | EventKind::SubOrchestrationInstanceFailed { task_scheduled_id, .. } => {
                completed.insert(*task_scheduled_id);
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let merged_away =
            matches!(event.kind, EventKind::TaskScheduled { .. } | EventKind::SubOrchestrationInstanceCreated { .. })
                && u64::try_from(event.event_id).is_ok_and(|id| completed.contains(&id));
        if matches!(event.kind, EventKind::OrchestratorStarted) || merged_away {
            continue;
        }
        let mut fields = to_fields(event);
        let completion_of = match &event.kind {
            EventKind::TaskCompleted { task_scheduled_id, .. }
            | EventKind::TaskFailed { task_scheduled_id, .. }
            | EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id, .. }
            | EventKind::SubOrchestrationInstanceFailed { task_scheduled_id, .. } => scheduled.get(task_scheduled_id),
            _ => None,
        };
        if let Some(origin) = completion_of {
            let origin_fields = to_fields(origin);
            if let Some(name) = origin_fields.get("Name") {
                fields.insert("FunctionName".into(), name.clone());
            }
            fields.insert("ScheduledTime".into(), json!(origin.timestamp.to_rfc3339()));
            if let (true, Some(input)) = (show_input, origin_fields.get("Input")) {
                fields.insert("Input".into(), input.clone());
            }
            fields.remove("TaskScheduledId");
        }
        if let Some(name) = fields.remove("Name").filter(|_| matches!(event.kind, EventKind::ExecutionStarted { .. })) {
            fields.insert("FunctionName".into(), name);
            for kiln_only in ["Version", "Parent", "Labels", "Correlation"] {
                fields.remove(kiln_only);
            }
        }
        if !show_output {
            fields.remove("Result");
        }
        if !show_input {
            fields.remove("Input");
        }
        out.push(Value::Object(fields));
    }
    out
}

/// One event as PascalCase fields: `EventType`, ISO timestamps, payloads parsed back to JSON.
fn to_fields(event: &HistoryEvent) -> Map<String, Value> {
    let Ok(Value::Object(mut fields)) = serde_json::to_value(event) else { return Map::new() };
    fields.remove("EventId");
    fields.insert("Timestamp".into(), json!(event.timestamp.to_rfc3339()));
    for key in ["Input", "Result"] {
        if let Some(Value::String(text)) = fields.get(key) {
            let parsed = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()));
            fields.insert(key.into(), parsed);
        }
    }
    if let Some(fire_at) = fields.get("FireAt").and_then(Value::as_i64) {
        fields.insert("FireAt".into(), json!(kiln::Timestamp(fire_at).to_rfc3339()));
    }
    fields
}
