//! The samples' HTTP starters: validation with field paths, and a start of each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use kiln::Kiln;
use kiln_http::{HttpOptions, KilnHttp};
use serde_json::Value;
use tower::ServiceExt;

async fn app() -> (axum::Router, Kiln, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kiln = kiln_samples::register_all(Kiln::builder()).sqlite(dir.path().join("kiln.db")).start().await.unwrap();
    let http = KilnHttp::new(kiln.client(), HttpOptions::default()).await.unwrap();
    let (starters, doc) = kiln_samples::http::starters();
    (http.public_router(starters, doc), kiln, dir)
}

async fn post(router: &axum::Router, path: &str, body: &str) -> (u16, Value) {
    let request =
        Request::post(path).header("content-type", "application/json").body(Body::from(body.to_owned())).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_starter_accepts_valid_work() {
    let (router, kiln, _dir) = app().await;
    for (path, body) in [
        ("/api/submissions", r#"{"speaker":"Ada","email":"ada@example.com","title":"T","abstract":"A"}"#),
        ("/api/jobs/reports", r#"{"customer_id":"c-1","operation":"monthly","delay_seconds":0}"#),
        ("/api/approvals", r#"{"subject":"laptop","timeout_seconds":60}"#),
    ] {
        let (status, accepted) = post(&router, path, body).await;
        assert_eq!(status, 202, "{path}: {accepted}");
        assert_eq!(
            (accepted["status"].as_str(), accepted["runtimeStatus"].as_str()),
            (Some("accepted"), Some("Pending"))
        );
    }
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bodies_name_the_fields() {
    let (router, kiln, _dir) = app().await;
    let (status, problem) =
        post(&router, "/api/jobs/reports", r#"{"customer_id":"","operation":"m","delay_seconds":4000}"#).await;
    assert_eq!(status, 400);
    assert_eq!(fields(&problem), ["customer_id", "delay_seconds"]);
    let (status, problem) = post(&router, "/api/jobs/reports", r#"{"operation":"m","delay_seconds":1}"#).await;
    assert_eq!((status, fields(&problem)), (400, vec!["customer_id".to_owned()]));
    let (status, problem) =
        post(&router, "/api/jobs/reports", r#"{"customer_id":"c","operation":"m","delay_seconds":"soon"}"#).await;
    assert_eq!((status, fields(&problem)), (400, vec!["delay_seconds".to_owned()]));
    let (status, problem) =
        post(&router, "/api/submissions", r#"{"speaker":"A","email":"nope","title":"T","abstract":"A"}"#).await;
    assert_eq!((status, fields(&problem)), (400, vec!["email".to_owned()]));
    for (body, field) in [
        (r#"{"customer_id":"c","operation":""}"#, "operation"),
        (r#"{"customer_id":"c","delay_seconds":-1}"#, "delay_seconds"),
        (r#"{"customer_id":"c","delay_seconds":3601}"#, "delay_seconds"),
        (r#"{"customer_id":5}"#, "customer_id"),
        (r#"{"customer_id":null}"#, "customer_id"),
    ] {
        let (status, problem) = post(&router, "/api/jobs/reports", body).await;
        assert_eq!((status, fields(&problem)), (400, vec![field.to_owned()]), "{body}");
    }
    let (status, problem) = post(&router, "/api/approvals", r#"{"subject":"s","timeout_seconds":0"#).await;
    assert_eq!(status, 400);
    assert!(problem["detail"].as_str().unwrap().starts_with("malformed JSON"));
    let query = kiln::InstanceQuery { page_size: 10, ..Default::default() };
    assert!(kiln.client().list(&query).await.unwrap().instances.is_empty(), "no invalid body starts anything");
    kiln.shutdown().await;
}

/// `operation` and `delay_seconds` are optional (the seed's defaults); `operation` is any name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_jobs_take_the_seed_defaults_and_any_operation() {
    let (router, kiln, _dir) = app().await;
    let operation = "é".repeat(200);
    for (body, expected) in [
        (r#"{"customer_id":"cust-123"}"#.to_owned(), ("rebuild-report", 5)),
        (format!(r#"{{"customer_id":"c","operation":"{operation}","delay_seconds":0}}"#), (operation.as_str(), 0)),
    ] {
        let (status, accepted) = post(&router, "/api/jobs/reports", &body).await;
        assert_eq!(status, 202, "{accepted}");
        let id = accepted["instanceId"].as_str().unwrap();
        let input = kiln.client().status(id).await.unwrap().unwrap().input;
        let input: Value = serde_json::from_str(input.as_str()).unwrap();
        assert_eq!((input["operation"].as_str().unwrap(), input["delay_seconds"].as_u64().unwrap()), expected);
    }
    let (status, _) =
        post(&router, "/api/jobs/reports", &format!(r#"{{"customer_id":"c","operation":"{operation}é"}}"#)).await;
    assert_eq!(status, 400, "201 characters is one too many");
    kiln.shutdown().await;
}
