//! The Durable Functions management API under `/runtime/webhooks/durabletask/`.
//!
//! Routes, status codes and JSON casing follow Durable Functions' `HttpApiHandler`, except that
//! its `500` quirks (duplicate start, suspend/resume/rewind in the wrong state) are `409`, and
//! every error body is problem+json carrying DF's `Message`/`ExceptionMessage`. On the public
//! listener every route needs the system key (`code=`, `x-functions-key` or a bearer token).

mod payloads;

use crate::KilnHttp;
use crate::accepted::now;
use crate::extract::Body;
use crate::params::{PathParams, QueryParams};
use crate::problem::Problem;
use axum::Router;
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kiln::{
    ClientError, InstanceQuery, InstanceRecord, LabelFilter, Labels, PageCursor, Payload, PurgeFilter, RuntimeStatus,
    StartOptions, Timestamp,
};
use serde_json::{Value, json};
use std::time::Duration;

/// Header carrying the list continuation token (request and response).
const CONTINUATION: &str = "x-ms-continuation-token";
/// Page size of a list without `top` (the Python client does not follow continuation tokens,
/// so without `top` every matching instance is returned, read in pages of this size).
const LIST_PAGE: usize = 1_000;
/// `Retry-After` of DF's start and status responses.
const START_RETRY_AFTER: u32 = 10;
const STATUS_RETRY_AFTER: u32 = 5;

pub(crate) fn routes() -> Router<KilnHttp> {
    Router::new()
        .route("/orchestrators/{name}", post(start_with_random_id))
        .route("/orchestrators/{name}/{id}", post(start))
        .route("/instances", get(list).delete(purge_many))
        .route("/instances/", get(list).delete(purge_many))
        .route("/instances/{id}", get(status).delete(purge))
        .route("/instances/{id}/history", get(export_history))
        .route("/instances/{id}/raiseEvent/{event}", post(raise_event))
        .route("/instances/{id}/{operation}", post(operate))
        .route("/bulk/{action}", post(bulk))
        .route("/tokenSecret/rotate", post(rotate_token_secret))
}

/// Rotates the stored secret that signs status tokens (Kiln's own, not in Durable Functions'
/// API; `kiln keys rotate`): new status URLs carry tokens signed with a new secret, and those
/// handed out before stay valid until they expire.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/tokenSecret/rotate",
    tag = "management",
    responses(
        (status = 200, description = "`{\"rotatedAt\", \"previousAcceptedUntil\"}` (RFC 3339)"),
        (status = 401, description = "Missing or wrong system key", content_type = "application/problem+json"),
        (status = 409, description = "The secret is configured (`token_secret`): rotate it there; or 16 retired secrets still verify live tokens", content_type = "application/problem+json"),
        (status = 503, description = "Other rotations kept winning, or the store is unavailable", content_type = "application/problem+json"),
    )
)]
async fn rotate_token_secret(State(http): State<KilnHttp>) -> Result<Response, Problem> {
    use crate::token_secrets::RotateError;
    match http.inner.tokens.rotate(http.client()).await {
        Ok(rotation) => {
            tracing::info!(previous_accepted_until = %rotation.previous_accepted_until, "token secret rotated");
            let body = json!({
                "rotatedAt": rotation.rotated_at.to_rfc3339(),
                "previousAcceptedUntil": rotation.previous_accepted_until.to_rfc3339(),
            });
            Ok(json_response(StatusCode::OK, &body))
        }
        Err(err @ (RotateError::Configured | RotateError::TooMany { .. })) => {
            Err(Problem::new(StatusCode::CONFLICT, err.to_string()).for_durable_functions())
        }
        Err(RotateError::Contended) => Err(Problem::unavailable().for_durable_functions()),
        Err(err @ RotateError::Encoding(_)) => Err(Problem::internal(StatusCode::INTERNAL_SERVER_ERROR, &err)),
        Err(RotateError::Client(err)) => Err(df(err)),
    }
}

/// Rejects management requests without the system key (`code=`, `x-functions-key`, or bearer).
pub(crate) async fn require_system_key(
    State(http): State<KilnHttp>,
    query: QueryParams,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let presented = query
        .get("code")
        .map(str::to_owned)
        .or_else(|| headers.get("x-functions-key").and_then(|v| v.to_str().ok()).map(str::to_owned))
        .or_else(|| crate::extract::bearer_token(headers).map(str::to_owned));
    match presented {
        Some(key) if constant_time_eq(key.as_bytes(), http.system_key().as_bytes()) => next.run(request).await,
        _ => Problem::new(StatusCode::UNAUTHORIZED, "the management API needs the system key")
            .for_durable_functions()
            .into_response(),
    }
}

/// Compares without an early exit, so timing does not reveal how much of a key matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn df(err: ClientError) -> Problem {
    Problem::from(err).for_durable_functions()
}

fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, detail).for_durable_functions()
}

/// The absolute base of the management API as this request reached it, and the query suffix
/// its links carry.
fn links(http: &KilnHttp, uri: &OriginalUri, headers: &HeaderMap, query: &QueryParams) -> (String, String) {
    let path = uri.0.path();
    let prefix = ["/orchestrators", "/instances", "/bulk"]
        .iter()
        .filter_map(|marker| path.find(marker))
        .min()
        .map_or(path, |i| &path[..i]);
    let base = format!("{}{prefix}", http.link_base(headers));
    let mut suffix = format!(
        "taskHub={}&connection={}",
        query.get("taskHub").unwrap_or("kiln"),
        query.get("connection").unwrap_or("Storage")
    );
    if let Some(code) = query.get("code") {
        suffix.push_str(&format!("&code={}", crate::urls::encode_component(code)));
    }
    (base, suffix)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn parse_time(query: &QueryParams, key: &str) -> Result<Option<Timestamp>, Problem> {
    match query.get(key) {
        None | Some("") => Ok(None),
        Some(text) => {
            Timestamp::parse(text).map(Some).ok_or_else(|| bad_request(format!("'{key}' is not a date-time: {text}")))
        }
    }
}

fn parse_statuses(query: &QueryParams) -> Result<Vec<RuntimeStatus>, Problem> {
    query
        .list("runtimeStatus")
        .iter()
        .map(|s| s.parse::<RuntimeStatus>().map_err(|e| bad_request(e.to_string())))
        .collect()
}

/// `labels=key:value,…` (repeatable): labels to start with, or that listed instances carry. At
/// most [`kiln::MAX_LABELS`] distinct ones: no instance carries more.
fn parse_labels(query: &QueryParams) -> Result<Vec<LabelFilter>, Problem> {
    let mut labels: Vec<LabelFilter> = Vec::new();
    for text in query.list("labels") {
        let label: LabelFilter = text.parse().map_err(|e: kiln::InvalidLabel| bad_request(e.to_string()))?;
        if !labels.contains(&label) {
            if labels.len() == kiln::MAX_LABELS {
                return Err(bad_request(format!("at most {} distinct labels are allowed", kiln::MAX_LABELS)));
            }
            labels.push(label);
        }
    }
    Ok(labels)
}

async fn existing(http: &KilnHttp, id: &str) -> Result<InstanceRecord, Problem> {
    http.client().status(id).await.map_err(df)?.ok_or_else(|| df(ClientError::NotFound(id.to_owned())))
}

/// Starts an orchestration (DF `StartNew`); `timeout` + `pollingInterval` wait for the result.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/orchestrators/{name}/{id}",
    tag = "management",
    params(
        ("name" = String, Path, description = "Orchestration name"),
        ("id" = Option<String>, Path, description = "Instance id (also `POST orchestrators/{name}` for a random one)"),
        ("timeout" = Option<f64>, Query, description = "Wait up to this many seconds for the result"),
        ("pollingInterval" = Option<f64>, Query, description = "Needed with `timeout`"),
        ("labels" = Option<String>, Query, description = "Comma-separated `key:value` labels to attach"),
        ("code" = Option<String>, Query, description = "System key (public listener)"),
    ),
    request_body(content = Object, description = "The orchestration input (any JSON; empty means null)"),
    responses(
        (status = 202, description = "Started; check-status payload"),
        (status = 200, description = "Wait mode: completed; the body is the output"),
        (status = 400, description = "Unknown orchestration, invalid id or invalid JSON", content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong system key", content_type = "application/problem+json"),
        (status = 409, description = "An unfinished instance has this id", content_type = "application/problem+json"),
        (status = 413, description = "Body or input too large", content_type = "application/problem+json"),
    )
)]
async fn start(
    State(http): State<KilnHttp>,
    uri: OriginalUri,
    path: PathParams,
    query: QueryParams,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Problem> {
    let input = if body.is_empty() {
        Payload::null()
    } else {
        let text = String::from_utf8(body.to_vec()).map_err(|_| bad_request("Invalid JSON content: not UTF-8"))?;
        Payload::from_json(text).map_err(|e| bad_request(format!("Invalid JSON content: {e}")))?
    };
    let name = path.get("name");
    let labels = parse_labels(&query)?.into_iter().map(|l| (l.key, l.value));
    let options = StartOptions {
        instance_id: path.0.get("id").cloned(),
        version: None,
        labels: Labels::new(labels).map_err(|e| bad_request(e.to_string()))?,
        correlation: crate::correlation::from_request(&headers).map_err(Problem::for_durable_functions)?,
    };
    let labels = options.labels.clone();
    let started = http.client().start_instance(name, input, options).await.map_err(df)?;
    crate::accepted::log_started(&started, name, &labels, true);
    let id = started.instance_id;
    let (base, suffix) = links(&http, &uri, &headers, &query);
    if let (Some(timeout), Some(_)) = (query.seconds("timeout"), query.seconds("pollingInterval")) {
        let done = |r: &InstanceRecord| r.status.is_terminal();
        let waited =
            http.wait_for_instance(&id, Duration::from_secs_f64(timeout.min(3600.0)), done).await.map_err(df)?;
        // Not finished in time (or this node is shutting down): it may have finished just then.
        let finished = match waited {
            Some(record) => Some(record),
            None => http.client().status(&id).await.map_err(df)?.filter(done),
        };
        if let Some(record) = finished {
            let mut response = if record.status == RuntimeStatus::Completed {
                let output = record.output.as_ref().map_or(Value::Null, crate::status::payload_value);
                json_response(StatusCode::OK, &output)
            } else {
                status_response(&record, &query, None)
            };
            crate::correlation::add_to_response(response.headers_mut(), started.correlation.as_ref());
            return Ok(response);
        }
    }
    let mut response = check_status_response(&base, &id, &suffix);
    crate::correlation::add_to_response(response.headers_mut(), started.correlation.as_ref());
    Ok(response)
}

/// Starts an orchestration under a random instance id (see `start`).
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/orchestrators/{name}",
    tag = "management",
    params(
        ("name" = String, Path, description = "Orchestration name"),
        ("timeout" = Option<f64>, Query, description = "Wait up to this many seconds for the result"),
        ("pollingInterval" = Option<f64>, Query, description = "Needed with `timeout`"),
        ("labels" = Option<String>, Query, description = "Comma-separated `key:value` labels to attach"),
    ),
    request_body(content = Object, description = "The orchestration input (any JSON; empty means null)"),
    responses(
        (status = 202, description = "Started; check-status payload"),
        (status = 200, description = "Wait mode: completed; the body is the output"),
        (status = 400, description = "Unknown orchestration or invalid JSON", content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong system key", content_type = "application/problem+json"),
        (status = 413, description = "Body or input too large", content_type = "application/problem+json"),
    )
)]
async fn start_with_random_id(
    state: State<KilnHttp>,
    uri: OriginalUri,
    path: PathParams,
    query: QueryParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    start(state, uri, path, query, headers, body).await
}

fn check_status_response(base: &str, id: &str, suffix: &str) -> Response {
    let payload = payloads::check_status(base, id, suffix);
    let mut response = json_response(StatusCode::ACCEPTED, &payload);
    if let Some(location) = payload["statusQueryGetUri"].as_str().and_then(|l| HeaderValue::from_str(l).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(START_RETRY_AFTER));
    response
}

/// 202 while running, 200 when finished (500 for a failure when asked), with DF's status object.
fn status_response(record: &InstanceRecord, query: &QueryParams, history: Option<Vec<Value>>) -> Response {
    let show_input = query.flag("showInput", true);
    let body = payloads::status_object(record, show_input, history);
    let code = if !record.status.is_terminal() {
        StatusCode::ACCEPTED
    } else if record.status == RuntimeStatus::Failed && query.flag("returnInternalServerErrorOnFailure", false) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let mut response = json_response(code, &body);
    if !record.status.is_terminal() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(STATUS_RETRY_AFTER));
    }
    response
}

/// Reads an instance's status (DF `GetStatus`).
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/instances/{id}",
    tag = "management",
    params(
        ("id" = String, Path, description = "Instance id"),
        ("showHistory" = Option<bool>, Query, description = "Include `historyEvents`"),
        ("showHistoryOutput" = Option<bool>, Query, description = "Include results in history"),
        ("showInput" = Option<bool>, Query, description = "Include the input (default true)"),
        ("returnInternalServerErrorOnFailure" = Option<bool>, Query, description = "500 for a failed instance"),
    ),
    responses(
        (status = 200, description = "Finished; DF status object"),
        (status = 202, description = "Not finished; DF status object"),
        (status = 404, description = "Unknown instance", content_type = "application/problem+json"),
        (status = 500, description = "Failed, when asked"),
    )
)]
async fn status(
    State(http): State<KilnHttp>,
    uri: OriginalUri,
    path: PathParams,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let record = existing(&http, path.get("id")).await?;
    let history = if query.flag("showHistory", false) && record.status != RuntimeStatus::Pending {
        let events = http.client().history(&record.instance_id).await.map_err(df)?;
        Some(payloads::history(&events, query.flag("showHistoryOutput", false), query.flag("showInput", true)))
    } else {
        None
    };
    let mut response = status_response(&record, &query, history);
    if !record.status.is_terminal() {
        let base = http.link_base(&headers);
        if let Ok(location) = HeaderValue::from_str(&format!("{base}{}", uri.0)) {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    Ok(response)
}

/// Exports an instance's current execution with its history, event for event (Kiln's own;
/// `kiln history export`): what `kiln::replay_history` replays against new code before a deploy.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/instances/{id}/history",
    tag = "management",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "`{instanceId, name, version, execution, events}`, the events as Kiln records them"),
        (status = 404, description = "Unknown instance", content_type = "application/problem+json"),
    )
)]
async fn export_history(State(http): State<KilnHttp>, path: PathParams) -> Result<Response, Problem> {
    let exported = http.client().export_history(path.get("id")).await.map_err(df)?;
    Ok((StatusCode::OK, axum::Json(exported)).into_response())
}

/// Lists instances (DF `ListInstances`), keyset-paged with `top` and `x-ms-continuation-token`.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/instances",
    tag = "management",
    params(
        ("createdTimeFrom" = Option<String>, Query, description = "Created at or after"),
        ("createdTimeTo" = Option<String>, Query, description = "Created at or before"),
        ("runtimeStatus" = Option<String>, Query, description = "Comma-separated statuses"),
        ("instanceIdPrefix" = Option<String>, Query, description = "Id prefix"),
        ("labels" = Option<String>, Query, description = "Comma-separated `key:value` labels every listed instance carries"),
        ("showInput" = Option<bool>, Query, description = "Include inputs (default true)"),
        ("top" = Option<u32>, Query, description = "Page size; without it every match is returned"),
        ("x-ms-continuation-token" = Option<String>, Header, description = "From the previous page"),
    ),
    responses(
        (status = 200, description = "Array of DF status objects; `x-ms-continuation-token` is empty on the last page"),
        (status = 400, description = "Invalid filter or token", content_type = "application/problem+json"),
    )
)]
async fn list(State(http): State<KilnHttp>, query: QueryParams, headers: HeaderMap) -> Result<Response, Problem> {
    let top = match query.get("top") {
        Some(text) => Some(
            text.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad_request(format!("'top' must be a positive integer, not '{text}'")))?,
        ),
        None => None,
    };
    let after = match headers.get(CONTINUATION).and_then(|v| v.to_str().ok()).filter(|t| !t.is_empty() && *t != "null")
    {
        Some(token) => Some(decode_continuation(token).ok_or_else(|| bad_request("invalid x-ms-continuation-token"))?),
        None => None,
    };
    let mut instance_query = InstanceQuery {
        statuses: parse_statuses(&query)?,
        name: None,
        created_from: parse_time(&query, "createdTimeFrom")?,
        created_to: parse_time(&query, "createdTimeTo")?,
        instance_id_prefix: query.get("instanceIdPrefix").filter(|p| !p.is_empty()).map(str::to_owned),
        labels: parse_labels(&query)?,
        page_size: top.or(http.options().list_page_size).unwrap_or(LIST_PAGE),
        after,
    };
    let single_page = top.or(http.options().list_page_size);
    let show_input = query.flag("showInput", true);
    let mut items = Vec::new();
    let next = loop {
        let page = http.client().list(&instance_query).await.map_err(df)?;
        items.extend(page.instances.iter().map(|r| payloads::status_object(r, show_input, None)));
        match (page.next, single_page) {
            (Some(next), None) => instance_query.after = Some(next),
            (next, _) => break next,
        }
    };
    let mut response = json_response(StatusCode::OK, &Value::Array(items));
    let token = next.map(|cursor| encode_continuation(&cursor)).unwrap_or_default();
    if let Ok(value) = HeaderValue::from_str(&token) {
        response.headers_mut().insert(CONTINUATION, value);
    }
    Ok(response)
}

fn encode_continuation(cursor: &PageCursor) -> String {
    URL_SAFE_NO_PAD.encode(cursor.encode())
}

fn decode_continuation(token: &str) -> Option<PageCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    PageCursor::decode(std::str::from_utf8(&bytes).ok()?)
}

/// Purges one finished instance and its sub-orchestrations (DF `PurgeInstanceHistory`).
#[utoipa::path(
    delete,
    path = "/runtime/webhooks/durabletask/instances/{id}",
    tag = "management",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "`{\"instancesDeleted\": n}`"),
        (status = 404, description = "Unknown instance", content_type = "application/problem+json"),
        (status = 409, description = "The instance has not finished", content_type = "application/problem+json"),
    )
)]
async fn purge(State(http): State<KilnHttp>, path: PathParams) -> Result<Response, Problem> {
    let deleted = http.client().purge(path.get("id")).await.map_err(df)?;
    Ok(json_response(StatusCode::OK, &json!({ "instancesDeleted": deleted })))
}

/// Purges finished instances created in a time window (DF `PurgeInstanceHistory` by filter), or
/// with `dryRun=true` shows what it would purge.
#[utoipa::path(
    delete,
    path = "/runtime/webhooks/durabletask/instances",
    tag = "management",
    params(
        ("createdTimeFrom" = String, Query, description = "Required: created at or after"),
        ("createdTimeTo" = Option<String>, Query, description = "Created at or before (default now)"),
        ("runtimeStatus" = Option<String>, Query, description = "Comma-separated terminal statuses"),
        ("name" = Option<String>, Query, description = "Only instances of this orchestration"),
        ("finishedTimeTo" = Option<String>, Query, description = "Finished (last updated) at or before"),
        ("dryRun" = Option<bool>, Query, description = "Delete nothing: count the matches (up to 10,000) and list the first 100; a value other than true/false is refused"),
    ),
    responses(
        (status = 200, description = "`{\"instancesDeleted\": n}`; with `dryRun`, `{\"instancesDeleted\": 0, \"dryRun\": true, \"matched\": n, \"complete\": bool, \"instances\": [...]}`"),
        (status = 400, description = "`createdTimeFrom` missing or invalid", content_type = "application/problem+json"),
        (status = 404, description = "Nothing matched", content_type = "application/problem+json"),
    )
)]
async fn purge_many(State(http): State<KilnHttp>, query: QueryParams) -> Result<Response, Problem> {
    let created_from = parse_time(&query, "createdTimeFrom")?
        .ok_or_else(|| bad_request("Please provide value for 'createdTimeFrom' parameter."))?;
    let filter = PurgeFilter {
        created_from: Some(created_from),
        created_to: Some(parse_time(&query, "createdTimeTo")?.unwrap_or_else(now)),
        statuses: parse_statuses(&query)?,
        name: query.get("name").map(str::to_owned),
        finished_before: parse_time(&query, "finishedTimeTo")?,
        ..PurgeFilter::default()
    };
    if query.strict_flag("dryRun").map_err(Problem::for_durable_functions)? {
        let preview = http.client().preview_purge(&filter, DRY_RUN_LIST).await.map_err(df)?;
        let mut body = dry_run(preview.matched, preview.complete, &preview.first);
        body["instancesDeleted"] = json!(0);
        return Ok(json_response(StatusCode::OK, &body));
    }
    match http.client().purge_many(&filter).await.map_err(df)? {
        0 => Err(Problem::not_found("no finished instance matched").for_durable_functions()),
        deleted => Ok(json_response(StatusCode::OK, &json!({ "instancesDeleted": deleted }))),
    }
}

/// How many of the instances a dry run selects it lists.
const DRY_RUN_LIST: usize = 100;

/// A dry run's answer: how many instances it selects (`complete`: all counted) and the first.
fn dry_run(matched: u64, complete: bool, first: &[kiln::InstanceSummary]) -> Value {
    let instances: Vec<Value> = first.iter().map(payloads::instance_summary).collect();
    json!({ "dryRun": true, "matched": matched, "complete": complete, "instances": instances })
}

/// Terminates, purges or rewinds every instance a query selects, as a durable operation (Kiln's
/// own, not in Durable Functions' API; `kiln bulk`): `202` with the operation's check-status
/// payload, whose status shows its progress (`customStatus`: `done`, `skipped`, `pages`); or,
/// with `dryRun=true`, `200` with what it would act on.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/bulk/{action}",
    tag = "management",
    params(
        ("action" = String, Path, description = "`terminate` (unfinished instances), `purge` (finished ones) or `rewind` (failed ones)"),
        ("runtimeStatus" = Option<String>, Query, description = "Comma-separated statuses (default: all the action applies to)"),
        ("name" = Option<String>, Query, description = "Only instances of this orchestration"),
        ("createdTimeFrom" = Option<String>, Query, description = "Created at or after"),
        ("createdTimeTo" = Option<String>, Query, description = "Created at or before (default: now; later instances are left alone)"),
        ("reason" = Option<String>, Query, description = "Recorded with each termination or rewind"),
        ("dryRun" = Option<bool>, Query, description = "Act on nothing: count the matches and list the first 100"),
    ),
    responses(
        (status = 202, description = "Started; the operation's check-status payload"),
        (status = 200, description = "Dry run: `{\"dryRun\": true, \"matched\": n, \"complete\": bool, \"instances\": [...]}`"),
        (status = 400, description = "Unknown action, a status it does not apply to, or an invalid time", content_type = "application/problem+json"),
    )
)]
async fn bulk(
    State(http): State<KilnHttp>,
    uri: OriginalUri,
    path: PathParams,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let action: kiln::BulkAction = path.get("action").parse().map_err(df)?;
    let operation = kiln::BulkOperation {
        action,
        statuses: parse_statuses(&query)?,
        name: query.get("name").map(str::to_owned),
        created_from: parse_time(&query, "createdTimeFrom")?,
        created_to: parse_time(&query, "createdTimeTo")?,
        reason: query.get("reason").map(str::to_owned),
    };
    if query.strict_flag("dryRun").map_err(Problem::for_durable_functions)? {
        let preview = http.client().preview_bulk(&operation, DRY_RUN_LIST).await.map_err(df)?;
        return Ok(json_response(StatusCode::OK, &dry_run(preview.matched, preview.complete, &preview.first)));
    }
    let id = http.client().start_bulk(operation).await.map_err(df)?;
    let (base, suffix) = links(&http, &uri, &headers, &query);
    Ok(check_status_response(&base, &id, &suffix))
}

/// Raises an external event (DF `RaiseEvent`).
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/instances/{id}/raiseEvent/{event}",
    tag = "management",
    params(("id" = String, Path, description = "Instance id"), ("event" = String, Path, description = "Event name")),
    request_body(content = Object, content_type = "application/json", description = "The event data (any JSON)"),
    responses(
        (status = 202, description = "Delivered (buffered until the orchestration waits for it)"),
        (status = 400, description = "Invalid event name, not application/json, or invalid JSON", content_type = "application/problem+json"),
        (status = 404, description = "Unknown instance", content_type = "application/problem+json"),
        (status = 410, description = "The instance has finished", content_type = "application/problem+json"),
    )
)]
async fn raise_event(State(http): State<KilnHttp>, path: PathParams, request: Request) -> Result<Response, Problem> {
    let id = path.get("id");
    // A name that can never be raised is refused before anything is read.
    kiln::validate_event_name(path.get("event")).map_err(|e| df(ClientError::from(e)))?;
    let record = existing(&http, id).await?;
    if record.status.is_terminal() {
        return Err(df(ClientError::Finished {
            id: id.to_owned(),
            status: record.status,
            operation: "receive events",
        }));
    }
    if !crate::extract::is_json(&request) {
        return Err(bad_request("Only application/json request content is supported"));
    }
    let Body(body) = <Body as axum::extract::FromRequest<()>>::from_request(request, &()).await?;
    let text = String::from_utf8(body.to_vec()).map_err(|_| bad_request("Invalid JSON content: not UTF-8"))?;
    let data = Payload::from_json(text).map_err(|e| bad_request(format!("Invalid JSON content: {e}")))?;
    http.client().raise_event_payload(id, path.get("event"), data).await.map_err(df)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Terminates, suspends, resumes, rewinds or restarts an instance.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/instances/{id}/{operation}",
    tag = "management",
    params(
        ("id" = String, Path, description = "Instance id"),
        ("operation" = String, Path, description = "`terminate`, `suspend`, `resume`, `rewind` or `restart`"),
        ("reason" = Option<String>, Query, description = "Why (terminate, suspend, resume, rewind)"),
        ("restartWithNewInstanceId" = Option<bool>, Query, description = "Restart under a new id (default true)"),
    ),
    responses(
        (status = 202, description = "Accepted (restart: check-status payload of the new instance)"),
        (status = 400, description = "Restart of an unknown instance", content_type = "application/problem+json"),
        (status = 404, description = "Unknown instance or operation", content_type = "application/problem+json"),
        (status = 409, description = "Wrong state (suspend when suspended, resume when not, rewind when not failed)", content_type = "application/problem+json"),
        (status = 410, description = "The instance has finished", content_type = "application/problem+json"),
    )
)]
async fn operate(
    State(http): State<KilnHttp>,
    uri: OriginalUri,
    path: PathParams,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (id, reason) = (path.get("id"), query.get("reason"));
    let client = http.client();
    match path.get("operation") {
        "terminate" => client.terminate(id, reason).await,
        "suspend" => client.suspend(id, reason).await,
        "resume" => client.resume(id, reason).await,
        "rewind" => client.rewind(id, reason).await,
        "restart" => {
            let record = client
                .status(id)
                .await
                .map_err(df)?
                .ok_or_else(|| bad_request(format!("instance '{id}' not found")))?;
            let new_id = if query.flag("restartWithNewInstanceId", true) { None } else { Some(id.to_owned()) };
            // The new run keeps the business ids and takes this request's correlation.
            let options = StartOptions {
                instance_id: new_id,
                version: Some(record.version.clone()),
                labels: record.labels.clone(),
                correlation: crate::correlation::from_request(&headers).map_err(Problem::for_durable_functions)?,
            };
            let started = client.start_instance(&record.name, record.input.clone(), options).await.map_err(df)?;
            crate::accepted::log_started(&started, &record.name, &record.labels, true);
            let (base, suffix) = links(&http, &uri, &headers, &query);
            let mut response = check_status_response(&base, &started.instance_id, &suffix);
            crate::correlation::add_to_response(response.headers_mut(), started.correlation.as_ref());
            return Ok(response);
        }
        other => return Err(Problem::not_found(format!("unknown operation '{other}'")).for_durable_functions()),
    }
    .map_err(df)?;
    Ok(StatusCode::ACCEPTED.into_response())
}
