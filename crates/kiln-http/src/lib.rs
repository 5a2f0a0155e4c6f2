//! Kiln's HTTP surfaces, as axum routers.
//!
//! - **Client surface** (least privilege): the `202 Accepted` response that starters return
//!   ([`KilnHttp::accept`]) and the status monitor `GET/DELETE /api/status/{id}?token=…`, which
//!   serves Durable-Functions-style (Location) and Azure-style (Operation-Location) pollers.
//! - **Management surface**: Durable Functions' HTTP API under `/runtime/webhooks/durabletask/`,
//!   behind the system key on the public listener and open on a loopback-only listener.
//! - **Operations surface**: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`.
//!
//! # Layout
//! - [`problem`]: RFC 9457 errors (the only place errors become responses); [`extract`]: body
//!   extractors; [`token`]: per-instance HMAC tokens; [`urls`]: absolute URLs; [`hosts`]: which
//!   `Host`s may shape them, and the loopback listener's guard against browsers; [`auth`]: who
//!   may call the starters (API keys, JWTs); [`rate_limit`]: how often;
//!   [`retry_after`]: adaptive polling advice.
//! - `accepted` (starters), `status` (the monitor), `management` (DF API), `ops`, `openapi`.

mod accepted;
pub mod auth;
pub mod correlation;
pub mod extract;
pub mod hosts;
mod management;
mod openapi;
mod ops;
mod params;
pub mod problem;
pub mod rate_limit;
pub mod retry_after;
mod status;
pub mod token;
mod token_secrets;
pub mod urls;

pub use accepted::{AcceptOptions, AcceptedBody};
pub use auth::{Access, Caller, StarterAuth};
pub use problem::{FieldError, Problem};
pub use rate_limit::RateLimit;
pub use token::{Grant, Scope, Scopes, TokenSigner};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use hosts::HostAllowList;
use kiln::{ClientError, KilnClient};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Name of the stored setting that holds the system key when none is configured.
const SYSTEM_KEY_SETTING: &str = "http.system_key";

/// HTTP settings.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Public base URL for links (e.g. behind a reverse proxy); otherwise the request's `Host`
    /// when it is allowed.
    pub public_base_url: Option<String>,
    /// Hosts (`name` or `name:port`) besides loopback names and the fallback's that may shape
    /// links when there is no public base URL.
    pub allowed_hosts: Vec<String>,
    /// Base URL used when a request's `Host` is missing or not allowed (the listen address).
    pub fallback_base_url: String,
    /// How long status tokens stay valid.
    pub token_ttl: Duration,
    /// How long `Idempotency-Key`s are remembered.
    pub idempotency_retention: Duration,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// The management system key; generated once and stored when `None`.
    pub system_key: Option<String>,
    /// The token-signing secret; generated once and stored when `None`.
    pub token_secret: Option<String>,
    /// Earlier token secrets still accepted (not used to sign): during a rotation, until the
    /// tokens they signed have expired (`token_ttl`).
    pub previous_token_secrets: Vec<String>,
    /// A bearer token `/metrics` on the public listener requires (a scraper needs no more than
    /// that); open when `None`. The loopback listener serves `/metrics` without it.
    pub metrics_key: Option<String>,
    /// Who may call the starters (open by default).
    pub starter_auth: StarterAuth,
    /// Requests each client (an authenticated caller, else an address) may make to the
    /// starters (`429` beyond); unlimited when `None`.
    pub starter_rate_limit: Option<RateLimit>,
    /// Whether the rightmost `X-Forwarded-For` address (appended by a trusted reverse proxy)
    /// names the client for rate limits, instead of the connection's peer.
    pub trust_forwarded_for: bool,
    /// Most `Prefer: wait` long polls held open at once; beyond it, polls are answered at once.
    pub max_long_polls: usize,
    /// Page size of a management list request without `top`; `None` returns every match in one
    /// response (Durable Functions' Python client does not follow continuation tokens).
    pub list_page_size: Option<usize>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            public_base_url: None,
            allowed_hosts: Vec::new(),
            fallback_base_url: "http://127.0.0.1:7071".to_owned(),
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            idempotency_retention: Duration::from_secs(24 * 3600),
            max_body_bytes: 2 << 20,
            system_key: None,
            token_secret: None,
            previous_token_secrets: Vec::new(),
            starter_auth: StarterAuth::default(),
            starter_rate_limit: None,
            trust_forwarded_for: false,
            max_long_polls: 1_024,
            metrics_key: None,
            list_page_size: None,
        }
    }
}

/// Reloads the stored token secrets now and then (another node may rotate them), for as long as
/// the HTTP layer lives.
async fn reload_token_secrets(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(token_secrets::RELOAD_INTERVAL).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(err) = inner.tokens.reload(&inner.client).await {
            tracing::warn!(error = %err, "cannot reload the token secrets; keeping those in force");
        }
    }
}

/// The HTTP layer's shared state. Cheap to clone.
#[derive(Clone)]
pub struct KilnHttp {
    inner: Arc<Inner>,
}

struct Inner {
    client: KilnClient,
    options: HttpOptions,
    system_key: String,
    tokens: token_secrets::TokenSecrets,
    hosts: HostAllowList,
    /// Token buckets of the starters' clients, when they are rate-limited.
    starter_limiter: Option<rate_limit::RateLimiter>,
    /// Permits for `Prefer: wait` long polls.
    long_polls: Arc<tokio::sync::Semaphore>,
    /// Whether this node is shutting down (see [`KilnHttp::begin_shutdown`]).
    shutting_down: tokio::sync::watch::Sender<bool>,
    /// Idempotency keys whose first request is still being processed.
    in_flight: Mutex<HashSet<String>>,
    metrics: ops::HttpMetrics,
    instance_counts: ops::InstanceCounts,
}

impl KilnHttp {
    /// Sets up the HTTP layer; secrets not given are generated once and kept in the store.
    pub async fn new(client: KilnClient, options: HttpOptions) -> Result<KilnHttp, ClientError> {
        let system_key = match &options.system_key {
            Some(key) => key.clone(),
            None => client.secret(SYSTEM_KEY_SETTING).await?,
        };
        let tokens = token_secrets::TokenSecrets::new(
            &client,
            options.token_secret.as_deref(),
            &options.previous_token_secrets,
            options.token_ttl,
        )
        .await?;
        let inner = Inner {
            client,
            hosts: HostAllowList::new(&options.allowed_hosts, &options.fallback_base_url),
            starter_limiter: options.starter_rate_limit.map(rate_limit::RateLimiter::new),
            long_polls: Arc::new(tokio::sync::Semaphore::new(options.max_long_polls)),
            shutting_down: tokio::sync::watch::Sender::new(false),
            tokens,
            system_key,
            options,
            in_flight: Mutex::new(HashSet::new()),
            metrics: ops::HttpMetrics::default(),
            instance_counts: ops::InstanceCounts::default(),
        };
        let inner = Arc::new(inner);
        if inner.tokens.is_stored() {
            tokio::spawn(reload_token_secrets(Arc::downgrade(&inner)));
        }
        Ok(KilnHttp { inner })
    }

    /// Stops holding requests, before the listeners close: `/readyz` answers `503` (load
    /// balancers stop sending) and every open long poll (`Prefer: wait`, the management API's
    /// `timeout`) is answered at once with the instance's state — `202` + `Retry-After` while
    /// it runs, so its client polls again, on any node. A deploy's SIGTERM then ends in
    /// moments instead of waiting out every poll.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.send_replace(true);
    }

    /// Whether [`KilnHttp::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutting_down.borrow()
    }

    /// Long polls waiting for an instance now (each holds a subscription to the shutdown
    /// signal while it waits).
    pub fn waiting_long_polls(&self) -> usize {
        self.inner.shutting_down.receiver_count()
    }

    /// Waits until the instance is `done`, for at most `timeout`, or until shutdown begins;
    /// `Ok(None)` when it did not get there (the caller answers with the latest state).
    pub(crate) async fn wait_for_instance(
        &self,
        instance_id: &str,
        timeout: std::time::Duration,
        done: impl FnMut(&kiln::InstanceRecord) -> bool,
    ) -> Result<Option<kiln::InstanceRecord>, ClientError> {
        let mut shutting_down = self.inner.shutting_down.subscribe();
        tokio::select! {
            waited = self.client().wait_until(instance_id, timeout, done) => waited,
            _ = shutting_down.wait_for(|shutting_down| *shutting_down) => Ok(None),
        }
    }

    /// The Kiln client behind the routes.
    pub fn client(&self) -> &KilnClient {
        &self.inner.client
    }

    /// The management system key (never log it).
    pub fn system_key(&self) -> &str {
        &self.inner.system_key
    }

    /// The HTTP settings.
    pub fn options(&self) -> &HttpOptions {
        &self.inner.options
    }

    /// The scheme and authority this request's links start with (see [`urls::base_url`]).
    pub fn link_base(&self, headers: &HeaderMap) -> String {
        let options = &self.inner.options;
        urls::base_url(options.public_base_url.as_deref(), &options.fallback_base_url, &self.inner.hosts, headers)
    }

    /// The router for the public listener: the application's `starters` (documented by
    /// `starters_doc`), the status monitor, the key-protected management API, the operations
    /// endpoints, `/openapi.json` and `/docs`.
    pub fn public_router(&self, starters: Router<KilnHttp>, starters_doc: utoipa::openapi::OpenApi) -> Router {
        let management = management::routes()
            .layer(axum::middleware::from_fn_with_state(self.clone(), management::require_system_key));
        let starters = match self.inner.starter_limiter {
            Some(_) => starters.layer(axum::middleware::from_fn_with_state(self.clone(), rate_limit::limit_starters)),
            None => starters,
        };
        // Outermost: a caller is known before its rate limit is counted.
        let starters = match self.inner.options.starter_auth.is_open_everywhere() {
            true => starters,
            false => starters.layer(axum::middleware::from_fn_with_state(self.clone(), auth::authenticate_starters)),
        };
        let routes = starters
            .merge(status::routes())
            .nest("/runtime/webhooks/durabletask", management)
            .merge(ops::health_routes())
            .merge(ops::metrics_routes(self, true))
            .merge(openapi::routes(openapi::document(starters_doc, &self.inner.client.orchestration_names())));
        self.finish(routes)
    }

    /// The router for the loopback management listener: the management API without a key (what
    /// Durable Functions' client libraries call as `rpcBaseUrl`), health checks and `/metrics`.
    pub fn management_router(&self) -> Router {
        let routes = Router::new()
            .nest("/runtime/webhooks/durabletask", management::routes())
            .nest("/durabletask", management::routes())
            .merge(ops::health_routes())
            .merge(ops::metrics_routes(self, false));
        self.finish(routes).layer(axum::middleware::from_fn(hosts::refuse_browsers_from_elsewhere))
    }

    fn finish(&self, routes: Router<KilnHttp>) -> Router {
        routes
            .fallback(ops::not_found)
            .method_not_allowed_fallback(ops::method_not_allowed)
            .layer(DefaultBodyLimit::max(self.inner.options.max_body_bytes))
            .layer(axum::middleware::from_fn_with_state(self.clone(), extract::refuse_announced_oversize))
            .layer(axum::middleware::from_fn(problem::errors_as_problems))
            .layer(axum::middleware::from_fn_with_state(self.clone(), ops::count_requests))
            .with_state(self.clone())
    }
}
