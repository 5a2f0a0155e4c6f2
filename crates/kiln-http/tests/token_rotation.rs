//! Rotating the stored token secret on one node: status URLs handed out before keep working on
//! every node, and new ones (signed with the new secret) work on every node at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestApp, path_of, request};
use kiln_http::HttpOptions;

/// Polls a status URL through `router`; the HTTP status.
async fn poll(app: &TestApp, router: &axum::Router, status_url: &str) -> u16 {
    app.call(router, request("GET", &path_of(status_url), None, &[])).await.status.as_u16()
}

async fn rotate(app: &TestApp) -> common::Reply {
    app.manage("POST", "/tokenSecret/rotate", None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_keeps_old_status_urls_and_every_node_takes_new_ones_at_once() {
    let app = TestApp::with_secrets_as_given(HttpOptions::default()).await;
    let other_node = app.second_node().await;
    let before = app.start_via("echo", "1").await;
    let old_url = before.header("location").to_owned();
    assert!(matches!(poll(&app, &other_node, &old_url).await, 200 | 202));

    let rotated = rotate(&app).await;
    assert_eq!(rotated.status, 200, "{}", rotated.raw);
    assert!(rotated.body["previousAcceptedUntil"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", rotated.raw);

    let after = app.start_via("echo", "2").await;
    let new_url = after.header("location").to_owned();
    let token = |url: &str| url.split("token=").nth(1).unwrap_or_default().to_owned();
    assert_ne!(token(&new_url).rsplit('.').next(), token(&old_url).rsplit('.').next());
    for router in [&app.public, &other_node] {
        assert!(matches!(poll(&app, router, &old_url).await, 200 | 202), "a URL from before the rotation");
        assert!(matches!(poll(&app, router, &new_url).await, 200 | 202), "a URL signed with the new secret");
    }
    // A forged token is still refused.
    let forged = old_url.replace(&token(&old_url), "1999999999.rc.1.AAAA");
    assert_eq!(poll(&app, &other_node, &forged).await, 404);

    // Rotations racing each other, on both nodes, lose no secret.
    let on_other_node = || {
        let path = "/runtime/webhooks/durabletask/tokenSecret/rotate";
        app.call(&other_node, request("POST", path, None, &[("x-functions-key", common::SYSTEM_KEY)]))
    };
    let (a, b, c) = tokio::join!(rotate(&app), on_other_node(), on_other_node());
    let rotated = [&a, &b, &c].iter().filter(|reply| reply.status.is_success()).count();
    assert!(rotated >= 1, "{} / {} / {}", a.raw, b.raw, c.raw);
    let newest = app.start_via("echo", "3").await.header("location").to_owned();
    assert!(matches!(poll(&app, &other_node, &newest).await, 200 | 202));
    assert!(matches!(poll(&app, &app.public, &newest).await, 200 | 202));
    for url in [&old_url, &new_url] {
        assert!(matches!(poll(&app, &other_node, url).await, 200 | 202), "after two more rotations: {url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_secret_is_rotated_in_the_configuration_not_here() {
    let app = TestApp::start().await;
    let refused = rotate(&app).await;
    refused.assert_problem(409);
    assert!(refused.body["detail"].as_str().unwrap().contains("configured"), "{}", refused.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_stop_before_a_live_token_would_lose_its_secret() {
    let app = TestApp::with_secrets_as_given(HttpOptions::default()).await;
    let first = app.start_via("echo", "1").await.header("location").to_owned();
    for _ in 0..16 {
        assert_eq!(rotate(&app).await.status, 200);
    }
    let refused = rotate(&app).await;
    refused.assert_problem(409);
    assert!(refused.body["detail"].as_str().unwrap().contains("rotate again after"), "{}", refused.raw);
    assert!(matches!(poll(&app, &app.public, &first).await, 200 | 202), "the first secret still verifies");
}

/// A rotation cut off between its two writes leaves the current secret listed as retired (at
/// that time) while it goes on signing: the next rotation retires it anew, so its latest tokens
/// keep their whole life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_left_listed_by_an_interrupted_rotation_retires_anew() {
    let app = TestApp::with_secrets_as_given(HttpOptions::default()).await;
    let client = app.kiln.client();
    let current = client.setting("http.token_secret").await.unwrap().unwrap();
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // Listed a day ago: well inside a token's life (7 days), so still kept.
    let a_day_ago = before - 24 * 3600 * 1000;
    let interrupted = serde_json::json!([{ "secret": current, "retired_at": a_day_ago }]).to_string();
    assert!(client.replace_setting("http.previous_token_secrets", None, &interrupted).await.unwrap());
    assert_eq!(rotate(&app).await.status, 200);
    let retired = client.setting("http.previous_token_secrets").await.unwrap().unwrap();
    let retired: serde_json::Value = serde_json::from_str(&retired).unwrap();
    let entries: Vec<_> = retired.as_array().unwrap().iter().filter(|r| r["secret"] == current.as_str()).collect();
    assert_eq!(entries.len(), 1, "{retired}");
    assert!(
        entries[0]["retired_at"].as_i64().unwrap() >= before,
        "retired now, not at the interrupted time: {retired}"
    );
}
