//! Operations endpoints and the error answers every route shares.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{LOOPBACK_HOST, SYSTEM_KEY, TestApp, path_of, request};
use kiln_http::HttpOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let app = TestApp::start().await;
    assert_eq!(app.public("GET", "/healthz", None).await.body["status"], "ok");
    assert_eq!(app.public("GET", "/readyz", None).await.body["status"], "ready");
    assert_eq!(app.manage("GET", "/instances", None).await.status, 200);
    assert_eq!(
        app.call(&app.management, request("GET", "/healthz", None, &[("host", LOOPBACK_HOST)])).await.status,
        200
    );
    let id = app.start_via("echo", "1").await.body["id"].as_str().unwrap().to_owned();
    app.finish(&id).await;
    let metrics = app.public("GET", "/metrics", None).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").starts_with("text/plain"));
    for line in [
        "kiln_http_requests_total{route=\"/api/{name}\",status=\"202\"} 1",
        // Both listeners count into the same series.
        "kiln_http_requests_total{route=\"/healthz\",status=\"200\"} 2",
        "kiln_instances{status=\"Completed\"} 1",
        "kiln_activity_duration_seconds_count 1",
    ] {
        assert!(metrics.raw.contains(line), "missing {line} in\n{}", metrics.raw);
    }
    assert!(metrics.raw.contains("kiln_turns_total "));
    // Counting reads every instance: scrapes within 10 s share one count.
    let later = app.start_via("echo", "2").await.body["id"].as_str().unwrap().to_owned();
    app.finish(&later).await;
    let again = app.public("GET", "/metrics", None).await;
    assert!(again.raw.contains("kiln_instances{status=\"Completed\"} 1"), "{}", again.raw);
    let loopback = app.call(&app.management, request("GET", "/metrics", None, &[("host", LOOPBACK_HOST)])).await;
    assert_eq!(loopback.status, 200, "the loopback listener serves /metrics too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_key_of_their_own() {
    let key = "metrics-key-0123456789";
    let app = TestApp::with_options(HttpOptions { metrics_key: Some(key.to_owned()), ..HttpOptions::default() }).await;
    let open = app.public("GET", "/metrics", None).await;
    open.assert_problem(401);
    assert_eq!(open.header("www-authenticate"), "Bearer");
    let system = request("GET", "/metrics", None, &[("authorization", &format!("Bearer {SYSTEM_KEY}"))]);
    app.call(&app.public, system).await.assert_problem(401);
    let keyed = request("GET", "/metrics", None, &[("authorization", &format!("Bearer {key}"))]);
    assert_eq!(app.call(&app.public, keyed).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_store_is_gone() {
    let app = TestApp::start().await;
    app.kiln.shutdown().await;
    app.public("GET", "/readyz", None).await.assert_problem(503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_covers_every_route_and_docs_are_served() {
    let app = TestApp::start().await;
    let doc = app.public("GET", "/openapi.json", None).await;
    assert_eq!(doc.status, 200);
    let paths = doc.body["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/status/{id}", "get"),
        ("/api/status/{id}", "delete"),
        ("/runtime/webhooks/durabletask/orchestrators/{name}", "post"),
        ("/runtime/webhooks/durabletask/orchestrators/{name}/{id}", "post"),
        ("/runtime/webhooks/durabletask/instances", "get"),
        ("/runtime/webhooks/durabletask/instances", "delete"),
        ("/runtime/webhooks/durabletask/instances/{id}", "get"),
        ("/runtime/webhooks/durabletask/instances/{id}", "delete"),
        ("/runtime/webhooks/durabletask/instances/{id}/raiseEvent/{event}", "post"),
        ("/runtime/webhooks/durabletask/instances/{id}/{operation}", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is not documented");
    }
    // A start links to the operations on the instance it started (what stateful tools follow),
    // and says which names it takes.
    let start = &paths["/runtime/webhooks/durabletask/orchestrators/{name}/{id}"]["post"];
    let links = &start["responses"]["202"]["links"];
    for operation_id in ["status", "raise_event", "operate", "purge"] {
        assert_eq!(links[operation_id]["operationId"], operation_id, "{links}");
        let operation_ids = paths.values().flat_map(|item| item.as_object().unwrap().values());
        assert!(operation_ids.clone().any(|op| op["operationId"] == operation_id), "no operation {operation_id}");
    }
    assert_eq!(links["purge"]["parameters"]["id"], "$response.body#/id");
    let after_purge = &paths["/runtime/webhooks/durabletask/instances/{id}"]["delete"]["responses"]["200"]["links"];
    assert_eq!(after_purge["status"]["parameters"]["id"], "$request.path.id", "{after_purge}");
    let names = start["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "name").unwrap();
    assert_eq!(names["schema"]["enum"], serde_json::json!(["echo", "fail", "wait_event"]));
    let docs = app.public("GET", "/docs/", None).await;
    assert_eq!(docs.status, 200);
    assert!(docs.raw.contains("swagger"), "Swagger UI is served from compiled-in assets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_wrong_methods_and_big_bodies_are_problems() {
    let options = HttpOptions { max_body_bytes: 2_048, ..HttpOptions::default() };
    let app = TestApp::with_options(options).await;
    app.public("GET", "/no/such/route", None).await.assert_problem(404);
    app.public("PUT", "/healthz", None).await.assert_problem(405);
    app.public("POST", "/api/status/x", None).await.assert_problem(405);
    let big = format!("\"{}\"", "x".repeat(4_096));
    app.public("POST", "/api/echo", Some(&big)).await.assert_problem(413);
    app.manage("POST", "/orchestrators/echo", Some(&big)).await.assert_problem(413);
    let nothing = request("GET", "/nothing", None, &[("host", LOOPBACK_HOST)]);
    app.call(&app.management, nothing).await.assert_problem(404);
}

/// Shutting down: `/readyz` turns 503 at once (load balancers stop sending), a long poll
/// already open is answered at once with the running instance's state (202 + Retry-After), and
/// a new one is not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_turns_not_ready_and_answers_long_polls() {
    let app = TestApp::start().await;
    let waiting = app.start_via("wait", "1").await;
    let path = path_of(waiting.header("location"));
    let open = {
        let (router, path) = (app.public.clone(), path.clone());
        tokio::spawn(async move {
            let request = request("GET", &path, None, &[("prefer", "wait=60")]);
            let response = tower::ServiceExt::oneshot(router, request).await.unwrap();
            (response.status().as_u16(), response.headers().get("retry-after").cloned())
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.http.waiting_long_polls() == 0 {
        assert!(std::time::Instant::now() < deadline, "the long poll did not open");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    app.http.begin_shutdown();
    let (status, retry_after) = tokio::time::timeout(std::time::Duration::from_secs(5), open).await.unwrap().unwrap();
    assert_eq!(status, 202);
    assert!(retry_after.is_some());
    app.public("GET", "/readyz", None).await.assert_problem(503);
    let again = app.call(&app.public, request("GET", &path, None, &[("prefer", "wait=60")]));
    let again = tokio::time::timeout(std::time::Duration::from_secs(5), again).await.unwrap();
    assert_eq!(again.status, 202, "a new long poll is not held either");
    assert_eq!(again.header("preference-applied"), "", "not held, so no wait was applied");
    // The management API's wait mode is not held either: DF's check-status payload at once.
    let start = app.manage("POST", "/orchestrators/wait_event/held?timeout=60&pollingInterval=1", Some("1"));
    let started = tokio::time::timeout(std::time::Duration::from_secs(5), start).await.unwrap();
    assert_eq!(started.status, 202, "{}", started.raw);
    assert!(started.body["statusQueryGetUri"].is_string(), "{}", started.raw);
}
