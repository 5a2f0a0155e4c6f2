//! Operations endpoints — `/healthz`, `/readyz`, `/metrics` — the request counter behind the
//! metrics, and the problem+json answers for unknown routes and wrong methods.

use crate::KilnHttp;
use crate::problem::Problem;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kiln::{RuntimeStatus, Timestamp};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// HTTP request counts by route template and status code.
#[derive(Debug, Default)]
pub(crate) struct HttpMetrics {
    requests: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
}

/// `/metrics`, behind `HttpOptions::metrics_key` when `keyed` and a key is configured.
pub(crate) fn metrics_routes(http: &KilnHttp, keyed: bool) -> Router<KilnHttp> {
    let route = Router::new().route("/metrics", get(metrics));
    match keyed && http.options().metrics_key.is_some() {
        true => route.layer(axum::middleware::from_fn_with_state(http.clone(), require_metrics_key)),
        false => route,
    }
}

/// `401` unless the request carries `Authorization: Bearer <metrics_key>`.
async fn require_metrics_key(State(http): State<KilnHttp>, request: Request, next: Next) -> Response {
    let presented = crate::extract::bearer_token(request.headers());
    let expected = http.options().metrics_key.as_deref().unwrap_or_default();
    match presented {
        Some(key) if crate::management::constant_time_eq(key.as_bytes(), expected.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            let mut response =
                Problem::new(StatusCode::UNAUTHORIZED, "/metrics needs the metrics key as a bearer token")
                    .into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// How long instance counts are reused across scrapes: counting reads every instance.
const INSTANCE_COUNTS_TTL: Duration = Duration::from_secs(10);

/// Instance counts by status, and the creation time of the oldest finished instance per status.
#[derive(Clone)]
struct Counts {
    by_status: Vec<(RuntimeStatus, u64)>,
    oldest_finished: Vec<(RuntimeStatus, Timestamp)>,
}

/// Instance counts, shared by the scrapes of [`INSTANCE_COUNTS_TTL`]: concurrent scrapes wait
/// for one count instead of each running their own.
#[derive(Default)]
pub(crate) struct InstanceCounts {
    latest: tokio::sync::Mutex<Option<(Instant, Counts)>>,
}

impl InstanceCounts {
    async fn get(&self, client: &kiln::KilnClient) -> Option<Counts> {
        let mut latest = self.latest.lock().await;
        if let Some((at, counts)) = latest.as_ref()
            && at.elapsed() < INSTANCE_COUNTS_TTL
        {
            return Some(counts.clone());
        }
        let counts = Counts {
            by_status: client.count_by_status().await.ok()?,
            oldest_finished: client.oldest_finished().await.ok()?,
        };
        *latest = Some((Instant::now(), counts.clone()));
        Some(counts)
    }
}

pub(crate) fn health_routes() -> Router<KilnHttp> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

/// Counts every request by its route template (not its raw path, to keep the label set small).
pub(crate) async fn count_requests(State(http): State<KilnHttp>, request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status().as_u16();
    let mut requests = http.inner.metrics.requests.lock().unwrap_or_else(|p| p.into_inner());
    // Allocates only for a route's first request.
    match requests.get_mut(route) {
        Some(by_status) => *by_status.entry(status).or_default() += 1,
        None => {
            requests.insert(route.to_owned(), BTreeMap::from([(status, 1)]));
        }
    }
    response
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Up")))]
pub(crate) async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// The store answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready"),
        (status = 503, description = "The store cannot take work (unreachable, or its disk is full)", content_type = "application/problem+json"),
    )
)]
pub(crate) async fn readyz(State(http): State<KilnHttp>) -> Response {
    if http.is_shutting_down() {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "this node is shutting down")
            .retry_after(1)
            .into_response();
    }
    match http.client().check_store().await {
        Ok(()) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(err) => {
            tracing::debug!(error = %err, "not ready");
            Problem::unavailable().into_response()
        }
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub(crate) async fn metrics(State(http): State<KilnHttp>) -> Response {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP kiln_http_requests_total HTTP requests by route and status.");
    let _ = writeln!(out, "# TYPE kiln_http_requests_total counter");
    {
        let requests = http.inner.metrics.requests.lock().unwrap_or_else(|p| p.into_inner());
        for (route, by_status) in requests.iter() {
            for (status, count) in by_status {
                let _ = writeln!(
                    out,
                    "kiln_http_requests_total{{route=\"{}\",status=\"{status}\"}} {count}",
                    escape(route)
                );
            }
        }
    }
    let _ = writeln!(out, "# HELP kiln_instances Instances by runtime status (counted at most every 10 s).");
    let _ = writeln!(out, "# TYPE kiln_instances gauge");
    let counts = http.inner.instance_counts.get(http.client()).await;
    if let Some(counts) = &counts {
        for (status, count) in &counts.by_status {
            let _ = writeln!(out, "kiln_instances{{status=\"{status}\"}} {count}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP kiln_retention_oldest_age_seconds Age of the oldest finished instance kept (since its creation), by status."
    );
    let _ = writeln!(out, "# TYPE kiln_retention_oldest_age_seconds gauge");
    if let Some(counts) = &counts {
        let now = crate::accepted::now();
        for (status, created) in &counts.oldest_finished {
            let age = (now.0 - created.0).max(0) as f64 / 1e3;
            let _ = writeln!(out, "kiln_retention_oldest_age_seconds{{status=\"{status}\"}} {age}");
        }
    }
    let _ = writeln!(out, "# HELP kiln_http_long_polls Long polls waiting for an instance now.");
    let _ = writeln!(out, "# TYPE kiln_http_long_polls gauge\nkiln_http_long_polls {}", http.waiting_long_polls());
    let m = http.client().metrics();
    for (name, help, value) in [
        ("kiln_turns_total", "Orchestration turns committed.", m.turns),
        ("kiln_turn_replays_total", "Turns that replayed history (execution cache misses).", m.replays),
        ("kiln_activity_duration_seconds_count", "Activities finished.", m.activities),
        (
            "kiln_unregistered_total",
            "Work given back because its orchestration version or activity is not registered on this worker.",
            m.unregistered,
        ),
        (
            "kiln_activities_canceled_total",
            "Running activities canceled: their instance was terminated, or their lease was lost.",
            m.canceled,
        ),
        (
            "kiln_activity_timeouts_total",
            "Activity attempts failed for running past a timeout (start-to-close, schedule-to-close or heartbeat).",
            m.timed_out,
        ),
        (
            "kiln_retention_purged_total",
            "Finished instances the retention purger deleted, sub-orchestrations included.",
            m.purged,
        ),
        (
            "kiln_retention_idempotency_keys_expired_total",
            "Expired idempotency keys the retention purger deleted.",
            m.idempotency_keys_expired,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }
    let _ = writeln!(out, "# HELP kiln_activity_duration_seconds_sum Time spent in activities.");
    let _ = writeln!(out, "# TYPE kiln_activity_duration_seconds_sum counter");
    let _ = writeln!(out, "kiln_activity_duration_seconds_sum {}", m.activity_millis as f64 / 1e3);
    let mut response = out.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// 404 for a path no route serves.
pub(crate) async fn not_found(method: Method, uri: Uri) -> Problem {
    Problem::not_found(format!("no route for {method} {}", uri.path()))
}

/// 405 for a served path with the wrong method.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
}
