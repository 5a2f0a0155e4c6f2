//! A Kiln app with small test orchestrations and starters, driven in-process with `oneshot`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::Response;
use axum::routing::post;
use http_body_util::BodyExt;
use kiln::{ActivityContext, Failure, Kiln, OrchestrationContext};
use kiln_http::{AcceptOptions, HttpOptions, KilnHttp, Problem, Scopes};
use serde_json::Value;
use std::time::Duration;
use tower::ServiceExt;

pub const SYSTEM_KEY: &str = "test-system-key-0123456789";
/// The `Host` of requests to the public router (allowed to shape links).
pub const TEST_HOST: &str = "kiln.test";
/// The `Host` of requests to the loopback management router.
pub const LOOPBACK_HOST: &str = "localhost:7072";
pub const TOKEN_SECRET: &str = "test-token-secret-0123456789abcdef";

async fn echo_activity(_: ActivityContext, input: Value) -> Result<Value, Failure> {
    Ok(input)
}

async fn echo(ctx: OrchestrationContext, input: Value) -> Result<Value, Failure> {
    ctx.set_custom_status(&serde_json::json!({"stage": "echoing"}));
    ctx.call_activity("echo_activity", &input).await
}

async fn wait_event(ctx: OrchestrationContext, _: Value) -> Result<Value, Failure> {
    ctx.wait_for_event("go").await
}

async fn fail(_: OrchestrationContext, _: Value) -> Result<Value, Failure> {
    Err(Failure::typed("Boom", "it broke"))
}

async fn accept_as(
    http: &KilnHttp,
    headers: &HeaderMap,
    body: axum::body::Bytes,
    name: &str,
    scopes: Scopes,
) -> Result<Response, Problem> {
    let input: Value = kiln_http::extract::parse_json(&body)?;
    http.accept(headers, name, &input, AcceptOptions { scopes, ..AcceptOptions::default() }).await
}

/// Starters: `POST /api/{echo,wait,fail}` (read+cancel tokens), `/api/wait-readonly`, and
/// `/api/labelled` (echo, with the labels its body's `labels` object names).
fn starters() -> Router<KilnHttp> {
    async fn start(
        State(http): State<KilnHttp>,
        axum::extract::Path(name): axum::extract::Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> Result<Response, Problem> {
        if name == "labelled" {
            // Labels from the body's `labels` object, as a starter takes them from its request.
            let input: Value = kiln_http::extract::parse_json(&body)?;
            let labels = input["labels"].as_object().into_iter().flatten();
            let options = labels.fold(AcceptOptions::default(), |options, (key, value)| {
                options.label(key, value.as_str().unwrap_or_default())
            });
            return http.accept(&headers, "echo", &input, options).await;
        }
        let (orchestration, scopes) = match name.as_str() {
            "echo" => ("echo", Scopes::ALL),
            "wait" => ("wait_event", Scopes::ALL),
            "wait-readonly" => ("wait_event", Scopes::READ),
            "fail" => ("fail", Scopes::ALL),
            _ => return Err(Problem::not_found("no such starter")),
        };
        accept_as(&http, &headers, body, orchestration, scopes).await
    }
    Router::new().route("/api/{name}", post(start))
}

pub struct TestApp {
    pub public: Router,
    pub management: Router,
    pub http: KilnHttp,
    pub kiln: Kiln,
    _dir: tempfile::TempDir,
}

/// A parsed response.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// Asserts a problem+json error with this status.
    pub fn assert_problem(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "{}", self.raw);
        assert_eq!(self.header("content-type"), "application/problem+json", "{}", self.raw);
        assert_eq!(self.body["status"], status);
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
}

impl TestApp {
    pub async fn start() -> TestApp {
        TestApp::with_options(HttpOptions::default()).await
    }

    pub async fn with_options(mut options: HttpOptions) -> TestApp {
        options.token_secret = Some(TOKEN_SECRET.to_owned());
        TestApp::with_secrets_as_given(options).await
    }

    /// With `options.token_secret` as given (`None`: generated and kept in the store).
    pub async fn with_secrets_as_given(mut options: HttpOptions) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let kiln = Kiln::builder()
            .sqlite(dir.path().join("kiln.db"))
            .orchestration("echo", echo)
            .orchestration("wait_event", wait_event)
            .orchestration("fail", fail)
            .activity("echo_activity", echo_activity)
            .start()
            .await
            .unwrap();
        if options.allowed_hosts.is_empty() {
            options.allowed_hosts = vec![TEST_HOST.to_owned()];
        }
        options.system_key = Some(SYSTEM_KEY.to_owned());
        let http = KilnHttp::new(kiln.client(), options).await.unwrap();
        let public = http.public_router(starters(), utoipa::openapi::OpenApi::default());
        let management = http.management_router();
        TestApp { public, management, http, kiln, _dir: dir }
    }

    /// Another node's public router: a second HTTP layer with the same options over the same
    /// store.
    pub async fn second_node(&self) -> Router {
        let http = KilnHttp::new(self.kiln.client(), self.http.options().clone()).await.unwrap();
        http.public_router(starters(), utoipa::openapi::OpenApi::default())
    }

    pub async fn call(&self, router: &Router, request: Request<Body>) -> Reply {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let raw = String::from_utf8_lossy(&bytes).into_owned();
        let body =
            if raw.is_empty() { Value::Null } else { serde_json::from_str(&raw).unwrap_or(Value::String(raw.clone())) };
        Reply { status, headers, body, raw }
    }

    /// A request to the public router.
    pub async fn public(&self, method: &str, uri: &str, body: Option<&str>) -> Reply {
        self.call(&self.public, request(method, uri, body, &[])).await
    }

    /// A request to the loopback management router (no key).
    pub async fn manage(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let uri = format!("/runtime/webhooks/durabletask{path}");
        self.call(&self.management, request(method, &uri, body, &[("host", LOOPBACK_HOST)])).await
    }

    /// Starts through a test starter; returns the reply.
    pub async fn start_via(&self, starter: &str, input: &str) -> Reply {
        self.public("POST", &format!("/api/{starter}"), Some(input)).await
    }

    /// Waits until the instance is terminal.
    pub async fn finish(&self, id: &str) {
        self.kiln.client().wait_for_completion(id, Duration::from_secs(20)).await.unwrap();
    }

    /// Waits until the instance has committed its first turn.
    pub async fn started(&self, id: &str) {
        self.kiln.client().wait_until(id, Duration::from_secs(20), |r| r.history_len > 0).await.unwrap().unwrap();
    }
}

/// A JSON request (body optional) with extra headers (`Host` is [`TEST_HOST`] unless given).
pub fn request(method: &str, uri: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", TEST_HOST);
    }
    if body.is_some() && !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned()))).unwrap()
}

/// The path and query of an absolute URL (for sending it back through `oneshot`).
pub fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/').map_or_else(|| "/".to_owned(), |i| rest[i..].to_owned())
}
