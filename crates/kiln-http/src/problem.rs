//! RFC 9457 problem details: the one place errors become HTTP responses.
//!
//! Every error body is `application/problem+json`. On the management surface, problems also
//! carry Durable Functions' `Message` and `ExceptionMessage` fields, which DF's Python client
//! reads on a 400.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kiln::{ClientError, StoreError};
use serde_json::{Map, Value, json};

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An HTTP error with an RFC 9457 body.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    detail: String,
    durable_functions: bool,
    extensions: Map<String, Value>,
    retry_after: Option<u64>,
}

/// How long a client is told to wait when the store cannot take work (a full disk, a lost
/// database connection), in seconds.
pub const UNAVAILABLE_RETRY_AFTER: u64 = 5;

/// One invalid field of a request body.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FieldError {
    /// Path of the field, e.g. `delay_seconds` or `items[2].name`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Problem {
    /// A problem with this status and a human-readable detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem { status, detail: detail.into(), durable_functions: false, extensions: Map::new(), retry_after: None }
    }

    /// 400 with the invalid fields listed under `errors`.
    pub fn validation(errors: Vec<FieldError>) -> Problem {
        let detail = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ");
        let mut problem = Problem::new(StatusCode::BAD_REQUEST, format!("invalid request body: {detail}"));
        problem.extensions.insert("errors".into(), json!(errors));
        problem
    }

    /// 404 for an unknown resource.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, detail)
    }

    /// `503 Service Unavailable` with `Retry-After`: the store cannot take work for now. The
    /// detail says no more than that (the reason goes to the log).
    pub fn unavailable() -> Problem {
        let detail =
            "Kiln cannot store work right now (e.g. its disk is full or its database is unreachable); retry later";
        Problem { retry_after: Some(UNAVAILABLE_RETRY_AFTER), ..Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail) }
    }

    /// `500` (or another server error `status`) for an error whose text may name internals: the
    /// text is logged under a fresh error id, and only the id is sent (`errorId`), so an operator
    /// can find the log line a client reports.
    pub fn internal(status: StatusCode, error: &dyn std::fmt::Display) -> Problem {
        let error_id = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(%status, error_id, %error, "request failed");
        let detail = format!("internal error {error_id}; the server log has the details");
        let mut problem = Problem::new(status, detail);
        problem.extensions.insert("errorId".into(), Value::String(error_id));
        problem
    }

    /// Adds `Retry-After` (seconds) to the response.
    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    /// Adds Durable Functions' `Message`/`ExceptionMessage` fields.
    pub fn for_durable_functions(mut self) -> Problem {
        self.durable_functions = true;
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The detail text.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let mut body = json!({
            "type": "about:blank",
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Value::Object(fields) = &mut body {
            if self.durable_functions {
                fields.insert("Message".into(), Value::String(title.to_owned()));
                fields.insert("ExceptionMessage".into(), Value::String(self.detail.clone()));
            }
            fields.extend(self.extensions);
        }
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<ClientError> for Problem {
    fn from(err: ClientError) -> Problem {
        let status = match &err {
            ClientError::NotFound(_) => StatusCode::NOT_FOUND,
            ClientError::AlreadyExists { .. } | ClientError::WrongState { .. } => StatusCode::CONFLICT,
            ClientError::UnknownOrchestration { .. }
            | ClientError::InvalidInstanceId(_)
            | ClientError::InvalidEventName(_)
            | ClientError::InvalidPayload { .. }
            | ClientError::InvalidBulkOperation(_) => StatusCode::BAD_REQUEST,
            ClientError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ClientError::Finished { .. } => StatusCode::GONE,
            ClientError::IdempotencyKeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ClientError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ClientError::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ClientError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        match status {
            // The reason is logged, never sent: it may name internals.
            StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(error = %err, "request refused: the store is unavailable");
                Problem::unavailable()
            }
            StatusCode::INTERNAL_SERVER_ERROR => Problem::internal(status, &err),
            _ => Problem::new(status, err.to_string()),
        }
    }
}

/// Largest error body the catch-all reads to reuse as a problem's detail.
const MAX_PLAIN_ERROR: usize = 4_096;

/// Turns any error response that is not JSON (e.g. a rejection from one of axum's own
/// extractors in an application's starter) into one, keeping its status and text.
pub(crate) async fn errors_as_problems(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    // JSON error bodies are deliberate (problems, or DF's status object with a 500).
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON) || v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), MAX_PLAIN_ERROR).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    if status.is_server_error() {
        // It may name internals (e.g. a missing extension's type): logged, not sent.
        return Problem::internal(status, &text).into_response();
    }
    Problem::new(status, text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_error_sends_an_error_id_and_no_backend_text() {
        let backend = ClientError::Store(StoreError::Backend("relation kiln_secret_table does not exist".into()));
        let response = Problem::from(backend).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = axum::body::to_bytes(response.into_body(), 4_096).await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let error_id = body["errorId"].as_str().unwrap_or_default();
        assert_eq!(error_id.len(), 32, "{body}");
        assert!(body["detail"].as_str().is_some_and(|d| d.contains(error_id)), "{body}");
        assert!(!String::from_utf8_lossy(&bytes).contains("kiln_secret_table"), "{body}");
    }
}
