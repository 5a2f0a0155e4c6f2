//! The samples' HTTP starters: each validates its body, starts its orchestration, and answers
//! Kiln's `202 Accepted` with a status URL for the caller's own instance.

use crate::approval::{self, ApprovalRequest};
use crate::call_for_speakers::{self, Submission};
use crate::report_jobs::{self, DEFAULT_DELAY_SECONDS, DEFAULT_OPERATION, MAX_DELAY_SECONDS, ReportRequest};
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use garde::Validate;
use kiln_http::extract::ValidJson;
use kiln_http::{AcceptOptions, KilnHttp, Problem};
use serde::Deserialize;
use utoipa::{OpenApi, ToSchema};

/// `POST /api/submissions`: a talk for the call for speakers.
#[derive(Debug, Deserialize, Validate, ToSchema)]
pub struct SubmissionRequest {
    /// Speaker's name.
    #[garde(length(min = 1, max = 200))]
    pub speaker: String,
    /// Speaker's email address.
    #[garde(length(min = 3, max = 254), custom(looks_like_email))]
    pub email: String,
    /// Talk title.
    #[garde(length(min = 1, max = 300))]
    pub title: String,
    /// Talk abstract.
    #[serde(rename = "abstract")]
    #[garde(length(min = 1, max = 10_000))]
    pub abstract_text: String,
}

/// A plausible address: one `@` between a non-empty local part and a dotted domain.
fn looks_like_email(value: &str, _: &()) -> garde::Result {
    match value.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.contains('@') && domain.contains('.') && !domain.starts_with('.') =>
        {
            Ok(())
        }
        _ => Err(garde::Error::new("not an email address")),
    }
}

/// `POST /api/jobs/reports`: a report to generate (the seed document's `ReportJobRequest`).
#[derive(Debug, Deserialize, Validate, ToSchema)]
pub struct ReportJobRequest {
    /// The customer (required). Ids starting with `closed-` belong to closed accounts: the job is
    /// accepted and then fails with `AccountClosed`.
    #[garde(length(chars, min = 1, max = 100))]
    pub customer_id: String,
    /// Which report, any name (default `rebuild-report`); the result echoes it.
    #[garde(length(chars, min = 1, max = 200))]
    #[schema(default = json!(DEFAULT_OPERATION))]
    pub operation: Option<String>,
    /// How long generating takes, 0–3600 s (default 5).
    #[garde(range(min = 0, max = MAX_DELAY_SECONDS))]
    #[schema(default = json!(DEFAULT_DELAY_SECONDS), maximum = 3600)]
    pub delay_seconds: Option<u64>,
}

/// `POST /api/approvals`: something to approve before a timeout.
#[derive(Debug, Deserialize, Validate, ToSchema)]
pub struct ApprovalStartRequest {
    /// What is asked for.
    #[garde(length(min = 1, max = 200))]
    pub subject: String,
    /// How long to wait for the `Approval` event, 1 s – 7 days.
    #[garde(range(min = 1, max = 604_800))]
    pub timeout_seconds: u64,
}

/// Submits a talk.
#[utoipa::path(
    post,
    path = "/api/submissions",
    tag = "samples",
    request_body = SubmissionRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe")),
    responses(
        (status = 202, description = "Accepted; poll `Location`", body = kiln_http::AcceptedBody),
        (status = 400, description = "Invalid body (field paths in `errors`)", content_type = "application/problem+json"),
        (status = 409, description = "The same Idempotency-Key is still being processed", content_type = "application/problem+json"),
        (status = 413, description = "Body too large", content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key reused with another body", content_type = "application/problem+json"),
    )
)]
async fn submit(
    State(http): State<KilnHttp>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<SubmissionRequest>,
) -> Result<Response, Problem> {
    let submission =
        Submission { speaker: body.speaker, email: body.email, title: body.title, abstract_text: body.abstract_text };
    http.accept(&headers, call_for_speakers::ORCHESTRATION, &submission, AcceptOptions::default()).await
}

/// Starts a report job.
#[utoipa::path(
    post,
    path = "/api/jobs/reports",
    tag = "samples",
    request_body = ReportJobRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe")),
    responses(
        (status = 202, description = "Accepted; poll `Location`", body = kiln_http::AcceptedBody),
        (status = 400, description = "Invalid body (field paths in `errors`)", content_type = "application/problem+json"),
        (status = 409, description = "The same Idempotency-Key is still being processed", content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key reused with another body", content_type = "application/problem+json"),
    )
)]
async fn report(
    State(http): State<KilnHttp>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<ReportJobRequest>,
) -> Result<Response, Problem> {
    // The customer is the job's business id: operators find its jobs by it (`labels=customer_id:…`).
    let options = AcceptOptions::default().label("customer_id", &body.customer_id);
    let request = ReportRequest {
        customer_id: body.customer_id,
        operation: body.operation.unwrap_or_else(|| DEFAULT_OPERATION.to_owned()),
        delay_seconds: body.delay_seconds.unwrap_or(DEFAULT_DELAY_SECONDS),
    };
    http.accept(&headers, report_jobs::ORCHESTRATION, &request, options).await
}

/// Starts an approval that times out.
#[utoipa::path(
    post,
    path = "/api/approvals",
    tag = "samples",
    request_body = ApprovalStartRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe")),
    responses(
        (status = 202, description = "Accepted; poll `Location`", body = kiln_http::AcceptedBody),
        (status = 400, description = "Invalid body (field paths in `errors`)", content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", content_type = "application/problem+json"),
    )
)]
async fn start_approval(
    State(http): State<KilnHttp>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<ApprovalStartRequest>,
) -> Result<Response, Problem> {
    let request = ApprovalRequest { subject: body.subject, timeout_seconds: body.timeout_seconds };
    http.accept(&headers, approval::ORCHESTRATION, &request, AcceptOptions::default()).await
}

#[derive(OpenApi)]
#[openapi(
    paths(submit, report, start_approval),
    components(schemas(SubmissionRequest, ReportJobRequest, ApprovalStartRequest)),
    tags((name = "samples", description = "The samples' starters"))
)]
struct SamplesApi;

/// The samples' starter routes and their OpenAPI document.
pub fn starters() -> (Router<KilnHttp>, utoipa::openapi::OpenApi) {
    let routes = Router::new()
        .route("/api/submissions", post(submit))
        .route("/api/jobs/reports", post(report))
        .route("/api/approvals", post(start_approval));
    (routes, SamplesApi::openapi())
}
