//! The status monitor: `GET /api/status/{id}?token=…` and `DELETE` (cancel).
//!
//! One resource serves Location pollers (Durable Functions style: `202` while running, `200`
//! when done), Operation-Location pollers (azure-core: `status` in `NotStarted`, `Running`,
//! `Succeeded`, `Failed`, `Canceled`) and people. It never shows inputs or management links.

use crate::accepted::now;
use crate::params::{PathParams, QueryParams};
use crate::problem::Problem;
use crate::token::{Grant, Scope};
use crate::{KilnHttp, retry_after};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kiln::{ClientError, InstanceRecord, RuntimeStatus, WaitingOn};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;

/// Longest `Prefer: wait=N` honoured, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;

pub(crate) fn routes() -> Router<KilnHttp> {
    Router::new().route("/api/status/{id}", get(get_status).delete(cancel))
}

/// What the status monitor shows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusMonitor<'a> {
    /// Instance id.
    id: &'a str,
    /// Orchestration name.
    name: &'a str,
    /// `NotStarted`, `Running`, `Succeeded`, `Failed` or `Canceled`.
    status: &'static str,
    /// Durable Functions runtime status.
    runtime_status: RuntimeStatusName,
    /// The orchestration's custom status (`null` until set).
    #[schema(value_type = Object)]
    custom_status: Option<PayloadJson<'a>>,
    /// When the instance was created (RFC 3339).
    created_time: String,
    /// When it last changed (RFC 3339).
    last_updated_time: String,
    /// What it waits for while running.
    #[schema(value_type = Vec<Object>)]
    waiting_on: &'a [WaitingOn],
    /// The output, when succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    output: Option<PayloadJson<'a>>,
    /// The output again, under the name Azure's long-running-operation guidelines use.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    result: Option<PayloadJson<'a>>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<StatusError<'a>>,
    /// Why it was canceled or terminated.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// A runtime status name as it appears on the wire.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(value_type = String, example = "Running")]
struct RuntimeStatusName(&'static str);

/// Why an instance failed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatusError<'a> {
    /// The error type (e.g. `ValidationFailed`).
    #[serde(rename = "type")]
    error_type: &'a str,
    /// The message.
    message: &'a str,
    /// More detail, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a str>,
}

/// A stored payload written out as the JSON it holds, without parsing it into a tree first (a
/// text that is not JSON is written as a string).
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(untagged)]
enum PayloadJson<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

impl<'a> PayloadJson<'a> {
    fn of(payload: &'a kiln::Payload) -> PayloadJson<'a> {
        serde_json::from_str(payload.as_str()).map_or(PayloadJson::Text(payload.as_str()), PayloadJson::Json)
    }
}

/// The long-running-operation status for a runtime status.
pub(crate) fn operation_status(status: RuntimeStatus) -> &'static str {
    match status {
        RuntimeStatus::Pending => "NotStarted",
        RuntimeStatus::Running | RuntimeStatus::Suspended | RuntimeStatus::ContinuedAsNew => "Running",
        RuntimeStatus::Completed => "Succeeded",
        RuntimeStatus::Failed => "Failed",
        RuntimeStatus::Terminated | RuntimeStatus::Canceled => "Canceled",
    }
}

/// Parses a stored JSON payload back into a value (a non-JSON text stays a string).
pub(crate) fn payload_value(payload: &kiln::Payload) -> Value {
    serde_json::from_str(payload.as_str()).unwrap_or_else(|_| Value::String(payload.as_str().to_owned()))
}

fn monitor(record: &InstanceRecord) -> StatusMonitor<'_> {
    let output = (record.status == RuntimeStatus::Completed).then(|| record.output.as_ref().map(PayloadJson::of));
    let output = output.flatten();
    let terminated = matches!(record.status, RuntimeStatus::Terminated | RuntimeStatus::Canceled);
    StatusMonitor {
        id: &record.instance_id,
        name: &record.name,
        status: operation_status(record.status),
        runtime_status: RuntimeStatusName(record.status.as_str()),
        custom_status: record.custom_status.as_ref().map(PayloadJson::of),
        created_time: record.created_at.to_rfc3339(),
        last_updated_time: record.updated_at.to_rfc3339(),
        waiting_on: &record.waiting_on,
        result: output,
        output,
        error: record.failure.as_ref().map(|f| StatusError {
            error_type: &f.error_type,
            message: &f.error_message,
            details: f.details.as_deref(),
        }),
        reason: terminated
            .then(|| record.output.as_ref().map(payload_value).and_then(|v| v.as_str().map(str::to_owned)))
            .flatten(),
    }
}

fn etag(record: &InstanceRecord) -> String {
    format!("\"{}-{}-{}\"", record.updated_at.millis(), record.status.code(), record.history_len)
}

/// `Prefer: wait=N` (RFC 7240), capped at [`MAX_WAIT_SECONDS`].
fn preferred_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|pref| {
            let (name, value) = pref.trim().split_once('=')?;
            (name.trim().eq_ignore_ascii_case("wait")).then(|| value.trim().trim_matches('"').parse::<u64>().ok())?
        })
        .map(|seconds| seconds.min(MAX_WAIT_SECONDS))
}

/// The instance and what the token grants, if it grants `scope` on this run of the instance
/// (otherwise the same 404 as an unknown id). With `wait`, its state as soon as it finishes, or
/// after `wait`: the wait subscribes before its first read, so an instance that has finished
/// costs one read and a change is never missed.
async fn authorized(
    http: &KilnHttp,
    id: &str,
    query: &QueryParams,
    scope: Scope,
    wait: Option<Duration>,
) -> Result<(InstanceRecord, Grant), Problem> {
    let unknown = || Problem::not_found(format!("no instance '{id}' (or the token does not grant access to it)"));
    let token = query.get("token").ok_or_else(unknown)?;
    let grant = http.inner.tokens.verify(http.client(), token, id, scope, now()).await?.ok_or_else(unknown)?;
    let record = match wait {
        None => http.client().status(id).await?,
        Some(wait) => match http.wait_for_instance(id, wait, |r| r.status.is_terminal()).await {
            Ok(Some(finished)) => Some(finished),
            // Timed out, or this node is shutting down: its latest state.
            Ok(None) => http.client().status(id).await?,
            Err(ClientError::NotFound(_)) => None,
            Err(other) => return Err(other.into()),
        },
    };
    // An instance created later under the same id is not the one the token was issued for.
    // (A token of the earlier format is bound to no run.)
    record.filter(|r| grant.created_at.is_none_or(|c| r.created_at == c)).map(|r| (r, grant)).ok_or_else(unknown)
}

/// Reads an instance's status.
#[utoipa::path(
    get,
    path = "/api/status/{id}",
    tag = "client",
    params(
        ("id" = String, Path, description = "Instance id"),
        ("token" = String, Query, description = "The token from the status URL"),
        ("returnInternalServerErrorOnFailure" = Option<bool>, Query, description = "Answer 500 for a failed instance"),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: answer as soon as the instance finishes, or after N ≤ 60 s"),
        ("If-None-Match" = Option<String>, Header, description = "ETag of a previous answer"),
    ),
    responses(
        (status = 200, description = "Finished (succeeded, failed or canceled)", body = StatusMonitor),
        (status = 202, description = "Not finished; poll `Location` after `Retry-After` seconds", body = StatusMonitor),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 404, description = "Unknown instance, or a bad, foreign or expired token", content_type = "application/problem+json"),
        (status = 500, description = "Failed, with `returnInternalServerErrorOnFailure=true`", body = StatusMonitor),
    )
)]
pub(crate) async fn get_status(
    State(http): State<KilnHttp>,
    path: PathParams,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = path.get("id");
    // Beyond the cap on open long polls, a poll is answered at once (without Preference-Applied).
    let permit = || Arc::clone(&http.inner.long_polls).try_acquire_owned().ok();
    let long_poll = preferred_wait(&headers).and_then(|wait| Some((wait, permit()?)));
    let wait = long_poll.as_ref().map(|&(wait, _)| wait);
    let (record, grant) = authorized(&http, id, &query, Scope::Read, wait.map(Duration::from_secs)).await?;
    let tag = etag(&record);
    let terminal = record.status.is_terminal();
    let code = if !terminal {
        StatusCode::ACCEPTED
    } else if record.status == RuntimeStatus::Failed && query.flag("returnInternalServerErrorOnFailure", false) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|candidate| candidate.trim() == tag || candidate.trim() == "*"));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (code, axum::Json(monitor(&record))).into_response()
    };
    let out = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&tag) {
        out.insert(header::ETAG, value);
    }
    // Not when a shutdown answered it at once.
    if let Some(seconds) = wait.filter(|_| !http.is_shutting_down())
        && let Ok(value) = HeaderValue::from_str(&format!("wait={seconds}"))
    {
        out.insert("preference-applied", value);
    }
    if !terminal {
        let age = Duration::from_millis(u64::try_from(now().millis() - record.created_at.millis()).unwrap_or(0));
        let retry = retry_after::retry_after_seconds(http.client().typical_duration(&record.name), age);
        out.insert(header::RETRY_AFTER, HeaderValue::from(retry));
        // The next poll's token grants what this one did, no more.
        let location = http.status_url(&headers, id, record.created_at, grant.scopes);
        if let Ok(location) = HeaderValue::from_str(&location) {
            out.insert(header::LOCATION, location);
        }
    }
    Ok(response)
}

/// Cancels an instance (it ends as `Canceled` / `Terminated`).
#[utoipa::path(
    delete,
    path = "/api/status/{id}",
    tag = "client",
    params(
        ("id" = String, Path, description = "Instance id"),
        ("token" = String, Query, description = "The token from the status URL (needs the cancel scope)"),
    ),
    responses(
        (status = 202, description = "Cancellation accepted; the status becomes `Canceled`", body = StatusMonitor),
        (status = 404, description = "Unknown instance, or a token without the cancel scope", content_type = "application/problem+json"),
        (status = 410, description = "The instance has already finished", content_type = "application/problem+json"),
    )
)]
pub(crate) async fn cancel(
    State(http): State<KilnHttp>,
    path: PathParams,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = path.get("id");
    let (_, grant) = authorized(&http, id, &query, Scope::Cancel, None).await?;
    http.client().terminate(id, Some("canceled by the client")).await?;
    let record = http.client().status(id).await?.ok_or_else(|| Problem::not_found(format!("no instance '{id}'")))?;
    let mut response = (StatusCode::ACCEPTED, axum::Json(monitor(&record))).into_response();
    // The answer's link grants what the caller's token did, no more.
    let location = http.status_url(&headers, id, record.created_at, grant.scopes);
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln::{Payload, Timestamp};
    use serde_json::json;

    #[test]
    fn payloads_are_written_as_the_json_they_hold() {
        let record = InstanceRecord {
            instance_id: "i".into(),
            name: "o".into(),
            version: String::new(),
            execution: 0,
            status: RuntimeStatus::Completed,
            input: Payload::null(),
            output: Some(Payload::from_trusted(r#"{"a": [1, "two"]}"#.into())),
            failure: None,
            custom_status: Some(Payload::from_trusted("not json".into())),
            created_at: Timestamp(0),
            updated_at: Timestamp(1_000),
            waiting_on: Vec::new(),
            parent: None,
            history_len: 3,
            labels: Default::default(),
            correlation: None,
        };
        let written = serde_json::to_value(monitor(&record)).unwrap_or_default();
        assert_eq!(written["output"], json!({"a": [1, "two"]}));
        assert_eq!(written["result"], written["output"]);
        assert_eq!(written["customStatus"], json!("not json"), "a text that is not JSON stays a string");
        assert_eq!(written["lastUpdatedTime"], json!("1970-01-01T00:00:01.000Z"));
        assert_eq!(written["status"], json!("Succeeded"));
    }
}
