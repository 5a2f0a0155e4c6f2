//! hello-app: a Kiln application of its own. `cargo build --release && ./target/release/hello-app serve`

use axum::{extract::State, http::HeaderMap, response::Response};
use kiln::{ActivityContext, Failure, KilnBuilder, OrchestrationContext};
use kiln_http::{AcceptOptions, KilnHttp, Problem, extract::ValidJson};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The starter's body, validated before anything starts.
#[derive(Serialize, Deserialize, garde::Validate)]
struct GreetingRequest {
    #[garde(length(chars, min = 1, max = 100))]
    name: String,
}

async fn make_greeting(_ctx: ActivityContext, name: String) -> Result<String, Failure> {
    Ok(format!("Hello, {name}!"))
}

async fn greet(ctx: OrchestrationContext, request: GreetingRequest) -> Result<Value, Failure> {
    let greeting: String = ctx.call_activity("make_greeting", &request.name).await?;
    Ok(json!({ "greeting": greeting }))
}

async fn start_greeting(
    State(http): State<KilnHttp>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<GreetingRequest>,
) -> Result<Response, Problem> {
    http.accept(&headers, "greet", &body, AcceptOptions::default()).await
}

fn register(kiln: KilnBuilder) -> KilnBuilder {
    kiln.orchestration("greet", greet).activity("make_greeting", make_greeting)
}

fn main() -> std::process::ExitCode {
    let app = kiln_cli::App::new("hello-app").version(env!("CARGO_PKG_VERSION")).register(register);
    app.starter("/api/greetings", start_greeting).run()
}
