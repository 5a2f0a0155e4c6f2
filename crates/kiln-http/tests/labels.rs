//! Labels and correlation: what a starter attaches and a request carries is kept with the
//! instance, returned on the `202`, shown in the management status and listed by.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestApp, request};
use serde_json::json;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Starts through `/api/labelled` with `labels` and extra headers; returns the instance id and
/// the `X-Correlation-ID` of the `202`.
async fn start_labelled(app: &TestApp, labels: serde_json::Value, headers: &[(&str, &str)]) -> (String, String) {
    let body = json!({ "labels": labels }).to_string();
    let reply = app.call(&app.public, request("POST", "/api/labelled", Some(&body), headers)).await;
    assert_eq!(reply.status, 202, "{}", reply.raw);
    (reply.body["instanceId"].as_str().unwrap().to_owned(), reply.header("x-correlation-id").to_owned())
}

fn ids(reply: &common::Reply) -> Vec<String> {
    assert_eq!(reply.status, 200, "{}", reply.raw);
    let mut ids: Vec<String> =
        reply.body.as_array().unwrap().iter().map(|s| s["instanceId"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_correlation_comes_from_traceparent_else_the_callers_id_else_a_new_trace() {
    let app = TestApp::start().await;
    let (traced, id) =
        start_labelled(&app, json!({}), &[("traceparent", TRACEPARENT), ("x-request-id", "ignored")]).await;
    assert_eq!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
    let (_, id) = start_labelled(&app, json!({}), &[("x-correlation-id", "order-42")]).await;
    assert_eq!(id, "order-42");
    let (_, id) = start_labelled(&app, json!({}), &[("x-request-id", "req-7")]).await;
    assert_eq!(id, "req-7");
    let (plain, id) = start_labelled(&app, json!({}), &[("traceparent", "not-a-trace")]).await;
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "a new trace id: {id}");

    let status = app.manage("GET", &format!("/instances/{traced}"), None).await;
    assert_eq!(status.body["correlationId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let record = app.kiln.client().status(&traced).await.unwrap().unwrap();
    assert_eq!(record.correlation.unwrap().trace.traceparent(), TRACEPARENT, "the trace context is kept");
    let status = app.manage("GET", &format!("/instances/{plain}"), None).await;
    assert_eq!(status.body["correlationId"], id.as_str());

    let bad =
        app.call(&app.public, request("POST", "/api/labelled", Some("{}"), &[("x-correlation-id", "two words")])).await;
    bad.assert_problem(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotent_start_returns_the_first_correlation() {
    let app = TestApp::start().await;
    let (first, id) =
        start_labelled(&app, json!({}), &[("idempotency-key", "\"k1\""), ("x-request-id", "first")]).await;
    let (again, repeated) =
        start_labelled(&app, json!({}), &[("idempotency-key", "\"k1\""), ("x-request-id", "second")]).await;
    assert_eq!((again, repeated), (first, id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_shown_and_listed_by() {
    let app = TestApp::start().await;
    let (a, _) = start_labelled(&app, json!({"customer_id": "cust-123", "region": "eu"}), &[]).await;
    let (b, _) = start_labelled(&app, json!({"customer_id": "cust-456", "region": "eu"}), &[]).await;
    let (c, _) = start_labelled(&app, json!({}), &[]).await;

    let status = app.manage("GET", &format!("/instances/{a}"), None).await;
    assert_eq!(status.body["labels"], json!({"customer_id": "cust-123", "region": "eu"}));
    let status = app.manage("GET", &format!("/instances/{c}"), None).await;
    assert_eq!(status.body["labels"], json!({}));

    assert_eq!(ids(&app.manage("GET", "/instances?labels=customer_id:cust-123", None).await), [a.as_str()]);
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(ids(&app.manage("GET", "/instances?labels=region:eu", None).await), both);
    assert_eq!(ids(&app.manage("GET", "/instances?labels=region:eu,customer_id:cust-456", None).await), [b.as_str()]);
    assert_eq!(ids(&app.manage("GET", "/instances?labels=region:eu&labels=customer_id:cust-456", None).await), [b]);
    assert!(ids(&app.manage("GET", "/instances?labels=region:us", None).await).is_empty());
    let listed = app.manage("GET", "/instances?labels=customer_id:cust-123", None).await;
    assert_eq!(listed.body[0]["labels"]["customer_id"], "cust-123", "list items show labels too");

    for bad in ["no-colon", "bad%20key:v", "k:", "1k:v"] {
        app.manage("GET", &format!("/instances?labels={bad}"), None).await.assert_problem(400);
    }
    // More filters than an instance can carry labels: refused before any query (a thousand of
    // them once made SQLite's expression tree too deep: a 500).
    let many: Vec<String> = (0..1_000).map(|i| format!("k{i}:v")).collect();
    app.manage("GET", &format!("/instances?labels={}", many.join(",")), None).await.assert_problem(400);
    let repeated = vec!["region:eu"; 40].join(",");
    assert_eq!(ids(&app.manage("GET", &format!("/instances?labels={repeated}"), None).await).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_that_break_the_rules_get_a_400_at_the_starter() {
    let app = TestApp::start().await;
    let too_many: serde_json::Map<String, serde_json::Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    for labels in [
        json!(too_many),
        json!({"customer_id": "a,b"}),
        json!({"customer_id": "line\nbreak"}),
        json!({"customer_id": "x".repeat(257)}),
        json!({"customer id": "v"}),
        json!({"customer_id": ""}),
    ] {
        let body = json!({ "labels": labels }).to_string();
        let reply = app.public("POST", "/api/labelled", Some(&body)).await;
        reply.assert_problem(400);
        assert!(reply.body["detail"].as_str().unwrap().contains("label"), "{}", reply.raw);
    }
    let listed = app.manage("GET", "/instances", None).await;
    assert_eq!(listed.body, json!([]), "nothing was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_start_takes_labels_and_correlation_and_restart_keeps_the_labels() {
    let app = TestApp::start().await;
    let start = request(
        "POST",
        "/runtime/webhooks/durabletask/orchestrators/echo/job-1?labels=customer_id:cust-9",
        Some("1"),
        &[("host", common::LOOPBACK_HOST), ("traceparent", TRACEPARENT)],
    );
    let reply = app.call(&app.management, start).await;
    assert_eq!(reply.status, 202, "{}", reply.raw);
    assert_eq!(reply.header("x-correlation-id"), "4bf92f3577b34da6a3ce929d0e0e4736");
    app.finish("job-1").await;
    let status = app.manage("GET", "/instances/job-1", None).await;
    assert_eq!(status.body["labels"], json!({"customer_id": "cust-9"}));
    let restarted = app.manage("POST", "/instances/job-1/restart", None).await;
    assert_eq!(restarted.status, 202, "{}", restarted.raw);
    assert_eq!(restarted.header("x-correlation-id").len(), 32, "a new trace: {:?}", restarted.headers);
    let new_id = restarted.body["id"].as_str().unwrap();
    let status = app.manage("GET", &format!("/instances/{new_id}"), None).await;
    assert_eq!(status.body["labels"], json!({"customer_id": "cust-9"}));
    assert_ne!(status.body["correlationId"], "4bf92f3577b34da6a3ce929d0e0e4736", "a restart is a new request");
    app.manage("POST", "/orchestrators/echo?labels=a,b", Some("1")).await.assert_problem(400);
}
