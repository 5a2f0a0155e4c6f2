//! The status monitor's costs: signing and verifying a status token, and one whole status read
//! (`GET /api/status/{id}?token=…` through the router: token check, store read, JSON body) of
//! a finished instance on the embedded store.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use kiln::{ActivityContext, Failure, Kiln, OrchestrationContext, Timestamp};
use kiln_http::{HttpOptions, KilnHttp, Scope, Scopes, TokenSigner};
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::Duration;
use tower::ServiceExt;

const SECRET: &str = "bench-token-secret-0123456789abcdef";

async fn greet(_: ActivityContext, name: String) -> Result<String, Failure> {
    Ok(format!("Hello, {name}!"))
}

async fn hello(ctx: OrchestrationContext, name: String) -> Result<Value, Failure> {
    ctx.set_custom_status(&json!({"stage": "greeting"}));
    let greeting: String = ctx.call_activity("greet", &name).await?;
    Ok(json!({"greeting": greeting, "instanceId": ctx.instance_id()}))
}

fn tokens(c: &mut Criterion) {
    let signer = TokenSigner::new(SECRET);
    let expires = Timestamp(4_000_000_000_000);
    let created = Timestamp(1_795_976_798_123);
    let token = signer.sign("0192f3c4a5b6c7d8e9f0a1b2c3d4e5f6", created, Scopes::ALL, expires);
    c.bench_function("token/sign", |b| {
        b.iter(|| signer.sign(black_box("0192f3c4a5b6c7d8e9f0a1b2c3d4e5f6"), created, Scopes::ALL, expires));
    });
    c.bench_function("token/verify", |b| {
        b.iter(|| {
            let grant = signer.verify(black_box(&token), "0192f3c4a5b6c7d8e9f0a1b2c3d4e5f6", Scope::Read, Timestamp(0));
            assert!(grant.is_some());
        });
    });
}

fn status_read(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (router, uri, kiln) = runtime.block_on(async {
        let kiln = Kiln::builder()
            .sqlite(dir.path().join("kiln.db"))
            .orchestration("hello", hello)
            .activity("greet", greet)
            .start()
            .await
            .unwrap();
        let client = kiln.client();
        let id = client.start("hello", "bench").await.unwrap();
        client.wait_for_completion(&id, Duration::from_secs(10)).await.unwrap();
        let options = HttpOptions { token_secret: Some(SECRET.into()), ..HttpOptions::default() };
        let http = KilnHttp::new(client, options).await.unwrap();
        let router = http.public_router(axum::Router::new(), utoipa::openapi::OpenApi::default());
        let created = http.client().status(&id).await.unwrap().unwrap().created_at;
        let token = TokenSigner::new(SECRET).sign(&id, created, Scopes::READ, Timestamp(4_000_000_000_000));
        (router, format!("/api/status/{id}?token={token}"), kiln)
    });
    c.bench_function("status/read_finished", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request = Request::get(uri.as_str()).body(Body::empty()).unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                black_box(response.into_body().collect().await.unwrap().to_bytes());
            })
        });
    });
    runtime.block_on(kiln.shutdown());
}

criterion_group!(benches, tokens, status_read);
criterion_main!(benches);
