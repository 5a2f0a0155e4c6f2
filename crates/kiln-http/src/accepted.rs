//! The `202 Accepted` response a starter returns, with `Idempotency-Key` handling.
//!
//! A starter validates its request, then calls [`KilnHttp::accept`]. The response carries the
//! absolute status URL (with a per-instance token) as `Location` and `Operation-Location`, an
//! integer `Retry-After`, and a small body. With an `Idempotency-Key`, a repeat of the same
//! request returns the same instance; a different request with the key gets 422; a repeat
//! while the first is still being processed gets 409. The instance keeps the request's
//! correlation (see [`crate::correlation`]), returned as `X-Correlation-ID`, and the labels the
//! starter gives it.

use crate::problem::Problem;
use crate::token::Scopes;
use crate::{KilnHttp, correlation, retry_after, urls};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln::{Labels, Payload, StartOptions, Started, Timestamp};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 255;

/// Options for one accepted start.
#[derive(Clone, Debug)]
pub struct AcceptOptions {
    /// A caller-chosen instance id; random otherwise.
    pub instance_id: Option<String>,
    /// What the status URL's token allows (default: read and cancel).
    pub scopes: Scopes,
    /// Business ids to attach to the instance (see [`kiln::Labels`] for the rules; labels that
    /// break them get a `400`).
    pub labels: BTreeMap<String, String>,
}

impl Default for AcceptOptions {
    fn default() -> Self {
        AcceptOptions { instance_id: None, scopes: Scopes::ALL, labels: BTreeMap::new() }
    }
}

impl AcceptOptions {
    /// Adds a label: `AcceptOptions::default().label("customer_id", &body.customer_id)`.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> AcceptOptions {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// The body of a `202 Accepted` from a starter: the fields of the seed document's starter
/// (`status`, `instanceId`, `statusQueryGetUri`) and those Durable Functions' check-status
/// payload gives clients (`id`, `runtimeStatus`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedBody {
    /// Always `accepted`: the work was taken and will run. (Azure long-running-operation pollers
    /// read any status but `Succeeded`, `Failed` and `Canceled` as still in progress.)
    pub status: &'static str,
    /// The instance id.
    pub instance_id: String,
    /// The status monitor URL (also in `Location` and `Operation-Location`).
    pub status_query_get_uri: String,
    /// The instance id again, under Durable Functions' name for it.
    pub id: String,
    /// Durable Functions runtime status: always `Pending` here.
    pub runtime_status: &'static str,
}

/// Removes an idempotency key from the in-flight set when the request ends, however it ends.
struct InFlight<'a> {
    http: &'a KilnHttp,
    key: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.http.inner.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// The wall clock (the one in `kiln-core`, which tests can move forward).
pub(crate) fn now() -> Timestamp {
    kiln_core::time::now()
}

impl KilnHttp {
    /// Starts `orchestration` with `input` and answers `202 Accepted` (see the module docs).
    pub async fn accept<I: Serialize + ?Sized>(
        &self,
        headers: &HeaderMap,
        orchestration: &str,
        input: &I,
        options: AcceptOptions,
    ) -> Result<Response, Problem> {
        let payload = Payload::encode(input)
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("input is not valid JSON: {e}")))?;
        let labels =
            Labels::try_from(options.labels).map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        let correlation = correlation::from_request(headers)?;
        let start =
            StartOptions { instance_id: options.instance_id, version: None, labels: labels.clone(), correlation };
        let client = self.client();
        let (started, created) = match idempotency_key(headers)? {
            Some(key) => {
                let _guard = self.enter(&key)?;
                let fingerprint = fingerprint(orchestration, &payload, &labels);
                let retention = self.options().idempotency_retention;
                client.start_idempotent(orchestration, payload, start, &key, &fingerprint, retention).await?
            }
            None => (client.start_instance(orchestration, payload, start).await?, true),
        };
        log_started(&started, orchestration, &labels, created);
        let Started { instance_id, created_at, correlation } = started;
        let status_url = self.status_url(headers, &instance_id, created_at, options.scopes);
        let retry = retry_after::retry_after_seconds(client.typical_duration(orchestration), Duration::ZERO);
        let body = AcceptedBody {
            status: "accepted",
            instance_id: instance_id.clone(),
            status_query_get_uri: status_url.clone(),
            id: instance_id,
            runtime_status: "Pending",
        };
        let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Ok(location) = HeaderValue::from_str(&status_url) {
            headers.insert(header::LOCATION, location.clone());
            headers.insert(HeaderName::from_static("operation-location"), location);
        }
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry));
        correlation::add_to_response(headers, correlation.as_ref());
        Ok(response)
    }

    /// The absolute status monitor URL for the instance `instance_id` created at `created_at`,
    /// with a fresh token.
    pub fn status_url(&self, headers: &HeaderMap, instance_id: &str, created_at: Timestamp, scopes: Scopes) -> String {
        let options = self.options();
        let base = self.link_base(headers);
        let expires = now().plus_millis(i64::try_from(options.token_ttl.as_millis()).unwrap_or(i64::MAX));
        let token = self.inner.tokens.sign(instance_id, created_at, scopes, expires);
        format!("{base}/api/status/{}?token={}", urls::encode_component(instance_id), urls::encode_component(&token))
    }

    /// Marks a key as being processed; 409 if it already is.
    fn enter(&self, key: &str) -> Result<InFlight<'_>, Problem> {
        let mut in_flight = self.inner.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if !in_flight.insert(key.to_owned()) {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "a request with this Idempotency-Key is still being processed",
            ));
        }
        Ok(InFlight { http: self, key: key.to_owned() })
    }
}

/// Logs a start with the fields that tie later lines to it (`repeated`: an idempotent repeat,
/// which started nothing).
pub(crate) fn log_started(started: &Started, orchestration: &str, labels: &Labels, created: bool) {
    let correlation = started.correlation.as_ref();
    tracing::info!(
        instance_id = started.instance_id,
        orchestration,
        correlation_id = correlation.map_or("", |c| c.id.as_str()),
        trace_id = correlation.map_or("", |c| c.trace.trace_id()),
        %labels,
        repeated = !created,
        "instance accepted"
    );
}

/// Reads `Idempotency-Key`: a structured-header string (`"…"`) or, leniently, a bare token.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let invalid = |why: &str| Problem::new(StatusCode::BAD_REQUEST, format!("invalid Idempotency-Key: {why}"));
    let text = value.to_str().map_err(|_| invalid("not visible ASCII"))?.trim();
    let key = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(quoted) => quoted,
        None => text,
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(invalid("must be 1–255 characters"));
    }
    Ok(Some(key.to_owned()))
}

/// A digest of what a start asks for: the orchestration and its input.
fn fingerprint(orchestration: &str, input: &Payload, labels: &Labels) -> String {
    let mut digest = Sha256::new();
    digest.update(orchestration.as_bytes());
    digest.update(b"\n");
    digest.update(input.as_str().as_bytes());
    // Only when there are labels, so that keys stored before labels existed still match.
    if !labels.is_empty() {
        digest.update(format!("\nlabels {labels}").as_bytes());
    }
    digest.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HttpOptions;

    #[tokio::test]
    async fn a_key_still_being_processed_is_refused_with_409() {
        let dir = tempfile::tempdir().unwrap();
        let kiln = kiln::Kiln::builder().sqlite(dir.path().join("kiln.db")).start().await.unwrap();
        let http = KilnHttp::new(kiln.client(), HttpOptions::default()).await.unwrap();
        let first = http.enter("k").unwrap();
        assert_eq!(http.enter("k").err().map(|p| p.status()), Some(StatusCode::CONFLICT));
        assert!(http.enter("other").is_ok(), "other keys are independent");
        drop(first);
        assert!(http.enter("k").is_ok(), "released when the first request ends");
        kiln.shutdown().await;
    }

    #[test]
    fn keys_are_read_as_structured_strings_or_tokens() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).unwrap(), None);
        headers.insert("idempotency-key", HeaderValue::from_static("\"8e03978e\""));
        assert_eq!(idempotency_key(&headers).unwrap().as_deref(), Some("8e03978e"));
        headers.insert("idempotency-key", HeaderValue::from_static("plain"));
        assert_eq!(idempotency_key(&headers).unwrap().as_deref(), Some("plain"));
        headers.insert("idempotency-key", HeaderValue::from_static("\"\""));
        assert!(idempotency_key(&headers).is_err());
    }
}
