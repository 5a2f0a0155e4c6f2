//! The client surface: `202 Accepted`, the status monitor's every row, cancel, tokens and
//! `Idempotency-Key`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TOKEN_SECRET, TestApp, path_of, request};
use kiln::Timestamp;
use kiln_http::{HttpOptions, Scopes, TokenSigner};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_links_the_status_monitor_absolutely() {
    let app = TestApp::start().await;
    let reply = app.start_via("echo", r#"{"n":1}"#).await;
    assert_eq!(reply.status, 202, "{}", reply.raw);
    let location = reply.header("location").to_owned();
    assert!(location.starts_with("http://kiln.test/api/status/"), "{location}");
    assert_eq!(reply.header("operation-location"), location);
    assert!(reply.header("retry-after").parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)));
    assert_eq!(reply.body["status"], "accepted");
    assert_eq!(reply.body["runtimeStatus"], "Pending");
    assert_eq!(reply.body["statusQueryGetUri"], location.as_str());
    assert!(reply.body["id"].as_str().is_some_and(|id| location.contains(id)));
    assert_eq!(reply.body["instanceId"], reply.body["id"]);
    // Readable immediately after the 202.
    let status = app.public("GET", &path_of(&location), None).await;
    assert!(status.status == 202 || status.status == 200, "{}", status.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_base_url_is_used_for_links() {
    let options = HttpOptions { public_base_url: Some("https://api.example.com/".into()), ..Default::default() };
    let app = TestApp::with_options(options).await;
    let reply = app.start_via("echo", "1").await;
    assert!(reply.header("location").starts_with("https://api.example.com/api/status/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_nobody_vouched_for_does_not_shape_links() {
    let app = TestApp::start().await;
    // A waiting instance, so that its status answers with a Location too.
    let poisoned = request("POST", "/api/wait", Some("1"), &[("host", "attacker.example")]);
    let reply = app.call(&app.public, poisoned).await;
    assert_eq!(reply.status, 202, "{}", reply.raw);
    let fallback = &app.http.options().fallback_base_url;
    for link in [
        reply.header("location"),
        reply.header("operation-location"),
        reply.body["statusQueryGetUri"].as_str().unwrap(),
    ] {
        assert!(link.starts_with(&format!("{fallback}/api/status/")), "{link}");
    }
    let status = app
        .call(&app.public, request("GET", &path_of(reply.header("location")), None, &[("host", "attacker.example")]))
        .await;
    assert!(status.header("location").starts_with(fallback.as_str()), "{}", status.header("location"));
    let local = request("POST", "/api/echo", Some("1"), &[("host", "localhost:7071")]);
    assert!(app.call(&app.public, local).await.header("location").starts_with("http://localhost:7071/api/status/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_instances_answer_202_with_polling_headers_and_waiting_on() {
    let app = TestApp::start().await;
    let accepted = app.start_via("wait", "{}").await;
    let id = accepted.body["id"].as_str().unwrap().to_owned();
    app.started(&id).await;
    let reply = app.public("GET", &path_of(accepted.header("location")), None).await;
    assert_eq!(reply.status, 202);
    assert!(reply.header("location").starts_with("http://kiln.test/api/status/"));
    assert!(reply.header("retry-after").parse::<u64>().is_ok());
    assert!(!reply.header("etag").is_empty());
    assert_eq!(reply.body["status"], "Running");
    assert_eq!(reply.body["runtimeStatus"], "Running");
    assert_eq!(reply.body["name"], "wait_event");
    assert_eq!(reply.body["waitingOn"][0], serde_json::json!({"kind": "event", "name": "go"}));
    assert!(reply.body.get("input").is_none(), "inputs are never echoed");
    assert!(!reply.raw.contains("runtime/webhooks"), "no management links");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_instances_answer_200_with_output_and_result() {
    let app = TestApp::start().await;
    let accepted = app.start_via("echo", r#"{"answer":42}"#).await;
    app.finish(accepted.body["id"].as_str().unwrap()).await;
    let reply = app.public("GET", &path_of(accepted.header("location")), None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["status"], "Succeeded");
    assert_eq!(reply.body["runtimeStatus"], "Completed");
    assert_eq!(reply.body["output"], serde_json::json!({"answer": 42}));
    assert_eq!(reply.body["result"], reply.body["output"]);
    assert_eq!(reply.body["customStatus"], serde_json::json!({"stage": "echoing"}));
    assert!(reply.headers.get("retry-after").is_none(), "no Retry-After once finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_instances_answer_200_or_500_when_asked() {
    let app = TestApp::start().await;
    let accepted = app.start_via("fail", "null").await;
    app.finish(accepted.body["id"].as_str().unwrap()).await;
    let path = path_of(accepted.header("location"));
    let reply = app.public("GET", &path, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["status"], "Failed");
    assert_eq!(reply.body["error"], serde_json::json!({"type": "Boom", "message": "it broke"}));
    let reply = app.public("GET", &format!("{path}&returnInternalServerErrorOnFailure=true"), None).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.body["status"], "Failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_terminates_and_the_status_becomes_canceled() {
    let app = TestApp::start().await;
    let accepted = app.start_via("wait", "{}").await;
    let id = accepted.body["id"].as_str().unwrap().to_owned();
    let path = path_of(accepted.header("location"));
    let reply = app.public("DELETE", &path, None).await;
    assert_eq!(reply.status, 202, "{}", reply.raw);
    app.finish(&id).await;
    let reply = app.public("GET", &path, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["status"], "Canceled");
    assert_eq!(reply.body["runtimeStatus"], "Terminated");
    assert_eq!(reply.body["reason"], "canceled by the client");
    app.public("DELETE", &path, None).await.assert_problem(410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_cannot_cancel() {
    let app = TestApp::start().await;
    let accepted = app.start_via("wait-readonly", "{}").await;
    let path = path_of(accepted.header("location"));
    app.public("DELETE", &path, None).await.assert_problem(404);
    assert_eq!(app.public("GET", &path, None).await.status.as_u16(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_purged_and_badly_tokened_instances_are_all_404() {
    let app = TestApp::start().await;
    let first = app.start_via("echo", "1").await;
    let other = app.start_via("echo", "2").await;
    let id = first.body["id"].as_str().unwrap().to_owned();
    let other_id = other.body["id"].as_str().unwrap().to_owned();
    let token = |url: &str| url.split_once("token=").unwrap().1.to_owned();
    let signer = TokenSigner::new(TOKEN_SECRET.as_bytes().to_vec());
    let created = app.kiln.client().status(&id).await.unwrap().unwrap().created_at;
    let expired = signer.sign(&id, created, Scopes::ALL, Timestamp(1_000));
    for uri in [
        format!("/api/status/{id}"),
        format!("/api/status/{id}?token=garbage"),
        format!("/api/status/{id}?token={}", token(other.header("location"))),
        format!("/api/status/{id}?token={expired}"),
        format!("/api/status/nope?token={}", token(first.header("location"))),
    ] {
        app.public("GET", &uri, None).await.assert_problem(404);
    }
    app.finish(&id).await;
    app.finish(&other_id).await;
    app.kiln.client().purge(&id).await.unwrap();
    app.public("GET", &path_of(first.header("location")), None).await.assert_problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_for_one_run_of_an_id_not_for_a_later_one() {
    let app = TestApp::start().await;
    let first = app.start_via("echo", "1").await;
    let id = first.body["id"].as_str().unwrap().to_owned();
    app.finish(&id).await;
    let old = path_of(first.header("location"));
    assert_eq!(app.public("GET", &old, None).await.status, 200);
    // The id is taken again (the finished instance is replaced) by someone else.
    let again = format!("/orchestrators/wait_event/{id}");
    assert_eq!(app.manage("POST", &again, Some("{}")).await.status, 202);
    app.started(&id).await;
    app.public("GET", &old, None).await.assert_problem(404);
    app.public("DELETE", &old, None).await.assert_problem(404);
    let record = app.kiln.client().status(&id).await.unwrap().unwrap();
    assert_eq!(record.status, kiln::RuntimeStatus::Running, "the new run was not canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_answer_grants_no_more_than_the_token_it_answers() {
    let app = TestApp::start().await;
    let accepted = app.start_via("wait", "{}").await;
    let id = accepted.body["id"].as_str().unwrap().to_owned();
    let created = app.kiln.client().status(&id).await.unwrap().unwrap().created_at;
    let signer = TokenSigner::new(TOKEN_SECRET.as_bytes().to_vec());
    let cancel_only = Scopes { read: false, cancel: true };
    let token = signer.sign(&id, created, cancel_only, Timestamp(4_000_000_000_000));
    let canceled = app.public("DELETE", &format!("/api/status/{id}?token={token}"), None).await;
    assert_eq!(canceled.status, 202, "{}", canceled.raw);
    app.public("GET", &path_of(canceled.header("location")), None).await.assert_problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_gives_304_until_something_changes() {
    let app = TestApp::start().await;
    let accepted = app.start_via("wait", "{}").await;
    let id = accepted.body["id"].as_str().unwrap().to_owned();
    app.started(&id).await;
    let path = path_of(accepted.header("location"));
    let first = app.public("GET", &path, None).await;
    let etag = first.header("etag").to_owned();
    let unchanged = app.call(&app.public, request("GET", &path, None, &[("if-none-match", &etag)])).await;
    assert_eq!(unchanged.status, 304);
    assert_eq!(unchanged.header("etag"), etag);
    app.kiln.client().raise_event(&id, "go", &1).await.unwrap();
    app.finish(&id).await;
    let changed = app.call(&app.public, request("GET", &path, None, &[("if-none-match", &etag)])).await;
    assert_eq!(changed.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_wait_answers_the_moment_the_instance_finishes() {
    let app = TestApp::start().await;
    let accepted = app.start_via("wait", "{}").await;
    let id = accepted.body["id"].as_str().unwrap().to_owned();
    app.started(&id).await;
    let client = app.kiln.client();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.raise_event(&id, "go", &"done").await.unwrap();
    });
    let started = Instant::now();
    let path = path_of(accepted.header("location"));
    let reply = app.call(&app.public, request("GET", &path, None, &[("prefer", "wait=30")])).await;
    assert_eq!(reply.status, 200, "{}", reply.raw);
    assert_eq!(reply.body["output"], "done");
    assert_eq!(reply.header("preference-applied"), "wait=30");
    assert!(started.elapsed() < Duration::from_secs(10), "answered when finished, not after 30 s");
    let timed = app.start_via("wait", "{}").await;
    let reply =
        app.call(&app.public, request("GET", &path_of(timed.header("location")), None, &[("prefer", "wait=1")])).await;
    assert_eq!(reply.status, 202, "still running after the wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_beyond_the_cap_are_answered_at_once() {
    let app = TestApp::with_options(HttpOptions { max_long_polls: 1, ..HttpOptions::default() }).await;
    let accepted = app.start_via("wait", "{}").await;
    let path = path_of(accepted.header("location"));
    let hold = || {
        let (public, path) = (app.public.clone(), path.clone());
        tokio::spawn(async move {
            let request = request("GET", &path, None, &[("prefer", "wait=3")]);
            tower::ServiceExt::oneshot(public, request).await.unwrap()
        })
    };
    // The first poll holds the one permit (once it has started: a poll that arrives first takes
    // the permit itself and is held instead, and the check starts over).
    let mut attempt = 1;
    let (held, reply) = loop {
        let held = hold();
        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        let started = Instant::now();
        let reply = app.call(&app.public, request("GET", &path, None, &[("prefer", "wait=3")])).await;
        if reply.header("preference-applied").is_empty() {
            assert!(started.elapsed() < Duration::from_secs(2), "answered at once");
            break (held, reply);
        }
        assert!(attempt < 5, "the first poll never took the permit");
        held.await.unwrap();
        attempt += 1;
    };
    assert_eq!(reply.status, 202, "answered at once, not held: the one long poll allowed is open");
    let first = held.await.unwrap();
    assert_eq!(first.headers().get("preference-applied").unwrap(), "wait=3");
    let again = app.call(&app.public, request("GET", &path, None, &[("prefer", "wait=1")])).await;
    assert_eq!(again.header("preference-applied"), "wait=1", "the permit came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starters_are_rate_limited_per_client() {
    let limit = kiln_http::RateLimit { per_second: 0.5, burst: 2 };
    let app = TestApp::with_options(HttpOptions { starter_rate_limit: Some(limit), ..HttpOptions::default() }).await;
    let from = |client: [u8; 4]| {
        let mut request = request("POST", "/api/echo", Some("1"), &[]);
        request.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((client, 5000))));
        request
    };
    let first = app.call(&app.public, from([10, 0, 0, 1])).await;
    assert_eq!(first.status, 202);
    assert_eq!(app.call(&app.public, from([10, 0, 0, 1])).await.status, 202);
    let limited = app.call(&app.public, from([10, 0, 0, 1])).await;
    limited.assert_problem(429);
    assert_eq!(limited.header("retry-after"), "2");
    assert_eq!(app.call(&app.public, from([10, 0, 0, 2])).await.status, 202, "another client is not limited");
    // Polling is not starting: the status monitor is not limited.
    let poll = app.public("GET", &path_of(first.header("location")), None).await;
    assert!(poll.status == 200 || poll.status == 202, "{}", poll.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_refuse_and_validate() {
    let app = TestApp::start().await;
    let send = |body: &'static str, key: &'static str| {
        let app = &app;
        async move { app.call(&app.public, request("POST", "/api/echo", Some(body), &[("idempotency-key", key)])).await }
    };
    let first = send(r#"{"a":1}"#, "\"k-1\"").await;
    let again = send(r#"{"a":1}"#, "\"k-1\"").await;
    assert_eq!((first.status.as_u16(), again.status.as_u16()), (202, 202));
    assert_eq!(first.body["id"], again.body["id"], "same key and body: the same instance");
    send(r#"{"a":2}"#, "\"k-1\"").await.assert_problem(422);
    let unquoted = send(r#"{"a":1}"#, "k-2").await;
    assert_eq!(unquoted.status, 202);
    assert_ne!(unquoted.body["id"], first.body["id"]);
    send(r#"{"a":1}"#, "\"\"").await.assert_problem(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_url_answers_404_once_retention_purged_its_instance() {
    let app = TestApp::start().await;
    let done = app.start_via("echo", "1").await;
    let waiting = app.start_via("wait", "{}").await;
    let (done_url, waiting_url) = (path_of(done.header("location")), path_of(waiting.header("location")));
    app.finish(done.body["id"].as_str().unwrap()).await;
    app.started(waiting.body["id"].as_str().unwrap()).await;
    let days = |d: i64| Timestamp(kiln_core::time::now().0 + d * 24 * 3600 * 1000);
    // The default policy keeps completed instances 7 days.
    assert_eq!(app.kiln.apply_retention(days(6)).await.unwrap().purged, 0);
    assert_eq!(app.public("GET", &done_url, None).await.status, 200);
    assert_eq!(app.kiln.apply_retention(days(8)).await.unwrap().purged, 1);
    app.public("GET", &done_url, None).await.assert_problem(404);
    // However long it has been running, an unfinished instance stays.
    assert_eq!(app.kiln.apply_retention(days(3650)).await.unwrap().purged, 0);
    assert_eq!(app.public("GET", &waiting_url, None).await.status, 202);
}
