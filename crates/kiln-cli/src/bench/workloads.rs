//! The `kiln bench` workloads: orchestrations whose only cost is the engine's own, and their
//! starters under `/api/bench/…` (served only by `serve --bench-workloads`: a public route
//! that starts ten thousand steps is not something to expose by default).
//!
//! - `steps`: `steps` sequential calls of the no-op activity (`hello` is 1 step, `seq5` 5, `long`
//!   thousands).
//! - `fanout`: `activities` parallel calls of the same activity, joined.
//! - `idle`: waits for the [`RELEASE_EVENT`] event; costs nothing but its stored state meanwhile.

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use garde::Validate;
use kiln::{ActivityContext, Failure, KilnBuilder, OrchestrationContext, join_all};
use kiln_http::extract::ValidJson;
use kiln_http::{AcceptOptions, KilnHttp, Problem};
use serde::{Deserialize, Serialize};

/// The sequential orchestration.
pub const STEPS: &str = "bench_steps";
/// The parallel orchestration.
pub const FANOUT: &str = "bench_fanout";
/// The orchestration that waits for an event.
pub const IDLE: &str = "bench_idle";
/// The event that ends an `idle` instance.
pub const RELEASE_EVENT: &str = "Release";
/// The activity every workload calls: returns its input.
pub const ECHO: &str = "bench_echo";
/// The `steps` starter's path.
pub const STEPS_PATH: &str = "/api/bench/steps";
/// The `fanout` starter's path.
pub const FANOUT_PATH: &str = "/api/bench/fanout";
/// The `idle` starter's path.
pub const IDLE_PATH: &str = "/api/bench/idle";
/// Most steps one `steps` instance may run.
pub const MAX_STEPS: u32 = 100_000;
/// Most activities one `fanout` instance may run.
pub const MAX_ACTIVITIES: u32 = 10_000;

/// Input of `bench_steps`.
#[derive(Clone, Debug, Serialize, Deserialize, Validate)]
pub struct StepsRequest {
    /// How many activities to call one after the other.
    #[garde(range(min = 1, max = MAX_STEPS))]
    pub steps: u32,
}

/// Input of `bench_fanout`.
#[derive(Clone, Debug, Serialize, Deserialize, Validate)]
pub struct FanoutRequest {
    /// How many activities to call at once.
    #[garde(range(min = 1, max = MAX_ACTIVITIES))]
    pub activities: u32,
}

/// Calls the echo activity `steps` times in sequence; returns the number of steps run.
pub async fn steps(ctx: OrchestrationContext, request: StepsRequest) -> Result<u32, Failure> {
    let mut done = 0;
    for step in 0..request.steps {
        done += u32::from(ctx.call_activity::<_, u32>(ECHO, &step).await? == step);
    }
    Ok(done)
}

/// Calls the echo activity `activities` times at once; returns how many answered.
pub async fn fanout(ctx: OrchestrationContext, request: FanoutRequest) -> Result<u32, Failure> {
    let calls = (0..request.activities).map(|i| ctx.call_activity::<_, u32>(ECHO, &i)).collect();
    let results = join_all(calls).await;
    let mut done = 0;
    for result in results {
        done += u32::from(result.is_ok());
    }
    Ok(done)
}

/// Waits for the release event and returns its data.
pub async fn idle(ctx: OrchestrationContext, _: serde_json::Value) -> Result<serde_json::Value, Failure> {
    ctx.wait_for_event(RELEASE_EVENT).await
}

/// The no-op activity.
pub async fn echo(_ctx: ActivityContext, value: u32) -> Result<u32, Failure> {
    Ok(value)
}

/// Registers the workloads' orchestrations and activity.
pub fn register(builder: KilnBuilder) -> KilnBuilder {
    builder.orchestration(STEPS, steps).orchestration(FANOUT, fanout).orchestration(IDLE, idle).activity(ECHO, echo)
}

async fn start_steps(
    State(http): State<KilnHttp>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<StepsRequest>,
) -> Result<Response, Problem> {
    http.accept(&headers, STEPS, &body, AcceptOptions::default()).await
}

async fn start_fanout(
    State(http): State<KilnHttp>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<FanoutRequest>,
) -> Result<Response, Problem> {
    http.accept(&headers, FANOUT, &body, AcceptOptions::default()).await
}

async fn start_idle(State(http): State<KilnHttp>, headers: HeaderMap) -> Result<Response, Problem> {
    http.accept(&headers, IDLE, &serde_json::Value::Null, AcceptOptions::default()).await
}

/// The paths of the workloads' [`starters`].
pub const STARTER_PATHS: [&str; 3] = [STEPS_PATH, FANOUT_PATH, IDLE_PATH];

/// The workloads' starters: `POST /api/bench/steps` (`{"steps": n}`), `/api/bench/fanout`
/// (`{"activities": n}`) and `/api/bench/idle` (no body). Each answers Kiln's `202 Accepted`.
pub fn starters() -> Router<KilnHttp> {
    Router::new()
        .route(STEPS_PATH, post(start_steps))
        .route(FANOUT_PATH, post(start_fanout))
        .route(IDLE_PATH, post(start_idle))
}
