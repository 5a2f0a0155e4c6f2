//! The Durable Functions management API: routes, status codes, JSON shapes, the system key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{LOOPBACK_HOST, SYSTEM_KEY, TestApp, request};
use serde_json::{Value, json};

const BASE: &str = "/runtime/webhooks/durabletask";

async fn start(app: &TestApp, name: &str, body: &str) -> String {
    let reply = app.manage("POST", &format!("/orchestrators/{name}"), Some(body)).await;
    assert_eq!(reply.status, 202, "{}", reply.raw);
    reply.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_listener_needs_the_system_key() {
    let app = TestApp::start().await;
    let path = format!("{BASE}/instances");
    app.public("GET", &path, None).await.assert_problem(401);
    let wrong = app.public("GET", &format!("{path}?code=wrong-key-0123456789"), None).await;
    wrong.assert_problem(401);
    assert!(wrong.body["ExceptionMessage"].is_string(), "DF fields on management problems");
    assert_eq!(app.public("GET", &format!("{path}?code={SYSTEM_KEY}"), None).await.status, 200);
    let header = request("GET", &path, None, &[("x-functions-key", SYSTEM_KEY)]);
    assert_eq!(app.call(&app.public, header).await.status, 200);
    let bearer = request("GET", &path, None, &[("authorization", &format!("Bearer {SYSTEM_KEY}"))]);
    assert_eq!(app.call(&app.public, bearer).await.status, 200);
    assert_eq!(app.manage("GET", "/instances", None).await.status, 200, "loopback needs no key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_returns_the_check_status_payload() {
    let app = TestApp::start().await;
    let reply = app.manage("POST", "/orchestrators/echo/my-id?taskHub=H&connection=C", Some(r#"{"a":1}"#)).await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.header("retry-after"), "10");
    let payload = reply.body.as_object().unwrap();
    let keys: Vec<&str> = payload.keys().map(String::as_str).collect();
    for key in [
        "id",
        "statusQueryGetUri",
        "sendEventPostUri",
        "terminatePostUri",
        "purgeHistoryDeleteUri",
        "restartPostUri",
        "suspendPostUri",
        "resumePostUri",
    ] {
        assert!(keys.contains(&key), "missing {key}");
    }
    assert_eq!(keys.len(), 8);
    assert_eq!(payload["id"], "my-id");
    let status_uri = payload["statusQueryGetUri"].as_str().unwrap();
    assert_eq!(status_uri, format!("http://{LOOPBACK_HOST}{BASE}/instances/my-id?taskHub=H&connection=C"));
    assert_eq!(reply.header("location"), status_uri);
    assert!(payload["sendEventPostUri"].as_str().unwrap().contains("/raiseEvent/{eventName}?"));
    assert!(payload["terminatePostUri"].as_str().unwrap().contains("/terminate?reason={text}&"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_use_df_codes_with_message_fields() {
    let app = TestApp::start().await;
    let unknown = app.manage("POST", "/orchestrators/nope", Some("{}")).await;
    unknown.assert_problem(400);
    assert!(unknown.body["ExceptionMessage"].as_str().unwrap().contains("'nope' is not registered"));
    app.manage("POST", "/orchestrators/echo", Some("{broken")).await.assert_problem(400);
    app.manage("POST", "/orchestrators/echo/a%40b%3Fc", Some("{}")).await.assert_problem(400);
    // Refused at the edge, not failed later (issue 13, item 8): trailing bytes, nesting past the
    // depth limit, a lone surrogate, ids whose links change meaning when paths are normalised.
    app.manage("POST", "/orchestrators/echo", Some("{} {}")).await.assert_problem(400);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    app.manage("POST", "/orchestrators/echo", Some(&deep)).await.assert_problem(400);
    app.manage("POST", "/orchestrators/echo", Some(r#""\ud800""#)).await.assert_problem(400);
    for dots in ["%2E", "%2E%2E"] {
        let refused = app.manage("POST", &format!("/orchestrators/echo/{dots}"), Some("{}")).await;
        refused.assert_problem(400);
        assert!(refused.body["detail"].as_str().unwrap_or_default().contains("'.' or '..'"), "{:?}", refused.body);
    }
    start(&app, "wait_event/dup", "{}").await;
    let duplicate = app.manage("POST", "/orchestrators/wait_event/dup", Some("{}")).await;
    duplicate.assert_problem(409);
    assert!(duplicate.body["Message"].is_string());
    let empty = app
        .call(
            &app.management,
            request(
                "POST",
                &format!("{BASE}/orchestrators/echo"),
                None,
                &[("content-type", "application/octet-stream"), ("host", LOOPBACK_HOST)],
            ),
        )
        .await;
    assert_eq!(empty.status, 202, "no body and no JSON content type is a null input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_in_wait_mode_returns_the_output() {
    let app = TestApp::start().await;
    let reply = app.manage("POST", "/orchestrators/echo?timeout=10&pollingInterval=1", Some(r#"{"x":1}"#)).await;
    assert_eq!(reply.status, 200, "{}", reply.raw);
    assert_eq!(reply.body, json!({"x": 1}));
    let waiting = app.manage("POST", "/orchestrators/wait_event?timeout=0.2&pollingInterval=0.1", Some("{}")).await;
    assert_eq!(waiting.status, 202, "still running after the timeout: the check-status payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_df_codes_and_shapes() {
    let app = TestApp::start().await;
    let id = start(&app, "wait_event", r#""in""#).await;
    app.started(&id).await;
    let running = app.manage("GET", &format!("/instances/{id}"), None).await;
    assert_eq!(running.status, 202);
    assert_eq!(running.header("retry-after"), "5");
    assert!(running.header("location").ends_with(&format!("/instances/{id}")));
    let object = running.body.as_object().unwrap();
    for key in
        ["name", "instanceId", "runtimeStatus", "input", "customStatus", "output", "createdTime", "lastUpdatedTime"]
    {
        assert!(object.contains_key(key), "missing {key}");
    }
    assert_eq!(running.body["input"], "in");
    assert!(running.body["createdTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(app.manage("GET", &format!("/instances/{id}?showInput=False"), None).await.body["input"], Value::Null);
    app.kiln.client().raise_event(&id, "go", &"out").await.unwrap();
    app.finish(&id).await;
    let done = app.manage("GET", &format!("/instances/{id}?showHistory=true&showHistoryOutput=true"), None).await;
    assert_eq!(done.status, 200);
    assert_eq!(done.body["output"], "out");
    let history: Vec<&str> =
        done.body["historyEvents"].as_array().unwrap().iter().map(|e| e["EventType"].as_str().unwrap()).collect();
    assert_eq!(history, ["ExecutionStarted", "EventRaised", "ExecutionCompleted"]);
    assert_eq!(done.body["historyEvents"][0]["FunctionName"], "wait_event");
    app.manage("GET", "/instances/unknown", None).await.assert_problem(404);
    let failed = start(&app, "fail", "null").await;
    app.finish(&failed).await;
    let reply = app.manage("GET", &format!("/instances/{failed}"), None).await;
    assert_eq!((reply.status.as_u16(), reply.body["output"].as_str()), (200, Some("it broke")));
    assert_eq!(
        app.manage("GET", &format!("/instances/{failed}?returnInternalServerErrorOnFailure=true"), None).await.status,
        500
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_merges_scheduling_into_completions() {
    let app = TestApp::start().await;
    let id = start(&app, "echo", "7").await;
    app.finish(&id).await;
    let reply = app.manage("GET", &format!("/instances/{id}?showHistory=true"), None).await;
    let events = reply.body["historyEvents"].as_array().unwrap();
    let completed = events.iter().find(|e| e["EventType"] == "TaskCompleted").unwrap();
    assert_eq!(completed["FunctionName"], "echo_activity");
    assert!(completed["ScheduledTime"].is_string());
    assert!(completed.get("Result").is_none(), "results only with showHistoryOutput");
    assert!(!events.iter().any(|e| e["EventType"] == "TaskScheduled" || e["EventType"] == "OrchestratorStarted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_pages_with_continuation_tokens() {
    let app = TestApp::start().await;
    for i in 0..5 {
        let id = format!("job-{i}");
        let reply = app.manage("POST", &format!("/orchestrators/echo/{id}"), Some("1")).await;
        assert_eq!(reply.status, 202);
        app.finish(&id).await;
    }
    start(&app, "wait_event", "{}").await;
    let all = app.manage("GET", "/instances", None).await;
    assert_eq!(all.body.as_array().unwrap().len(), 6, "without top, everything");
    assert_eq!(all.header("x-ms-continuation-token"), "", "the header is always there; empty on the last page");
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let uri = format!("{BASE}/instances?top=2&runtimeStatus=Completed&instanceIdPrefix=job-");
        let reply = app
            .call(
                &app.management,
                request("GET", &uri, None, &[("x-ms-continuation-token", &token), ("host", LOOPBACK_HOST)]),
            )
            .await;
        assert_eq!(reply.status, 200);
        seen.extend(reply.body.as_array().unwrap().iter().map(|s| s["instanceId"].as_str().unwrap().to_owned()));
        token = reply.header("x-ms-continuation-token").to_owned();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, (0..5).map(|i| format!("job-{i}")).collect::<Vec<_>>());
    let running = app.manage("GET", "/instances?runtimeStatus=running,pending", None).await;
    assert_eq!(running.body.as_array().unwrap().len(), 1, "statuses match case-insensitively");
    let future = app.manage("GET", "/instances?createdTimeFrom=2999-01-01T00:00:00Z", None).await;
    assert_eq!(future.body, json!([]));
    app.manage("GET", "/instances?runtimeStatus=Sleeping", None).await.assert_problem(400);
    app.manage("GET", "/instances?createdTimeFrom=yesterday", None).await.assert_problem(400);
    app.manage("GET", "/instances?top=0", None).await.assert_problem(400);
    let bad = request(
        "GET",
        &format!("{BASE}/instances?top=1"),
        None,
        &[("x-ms-continuation-token", "!!"), ("host", LOOPBACK_HOST)],
    );
    app.call(&app.management, bad).await.assert_problem(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raise_event_checks_instance_state_and_content() {
    let app = TestApp::start().await;
    let id = start(&app, "wait_event", "{}").await;
    let path = format!("{BASE}/instances/{id}/raiseEvent/go");
    let text = request("POST", &format!("{path}?code={SYSTEM_KEY}"), Some("1"), &[("content-type", "text/plain")]);
    app.call(&app.public, text).await.assert_problem(400);
    app.manage("POST", &format!("/instances/{id}/raiseEvent/go"), Some("{not json")).await.assert_problem(400);
    app.manage("POST", "/instances/nope/raiseEvent/go", Some("1")).await.assert_problem(404);
    // Event names with a NUL, a line break, or 5,000 characters; data nested past the limit.
    for name in ["a%00b".to_owned(), "a%0D%0Ab".to_owned(), "x".repeat(5_000)] {
        let refused = app.manage("POST", &format!("/instances/{id}/raiseEvent/{name}"), Some("1")).await;
        refused.assert_problem(400);
        assert!(refused.body["detail"].as_str().unwrap_or_default().contains("event name"), "{:?}", refused.body);
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    app.manage("POST", &format!("/instances/{id}/raiseEvent/go"), Some(&deep)).await.assert_problem(400);
    let ok = app.manage("POST", &format!("/instances/{id}/raiseEvent/go"), Some(r#""hi""#)).await;
    assert_eq!(ok.status, 202);
    app.finish(&id).await;
    app.manage("POST", &format!("/instances/{id}/raiseEvent/go"), Some("1")).await.assert_problem(410);
    // A name that can never be raised is refused first, whatever the instance's state.
    app.manage("POST", &format!("/instances/{id}/raiseEvent/%2E%2E"), Some("1")).await.assert_problem(400);
    app.manage("POST", "/instances/nope/raiseEvent/a%00b", Some("1")).await.assert_problem(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_suspend_resume_follow_the_state_matrix() {
    let app = TestApp::start().await;
    let id = start(&app, "wait_event", "{}").await;
    app.started(&id).await;
    let op = |name: &str| format!("/instances/{id}/{name}?reason=some+reason");
    app.manage("POST", &op("resume"), None).await.assert_problem(409);
    assert_eq!(app.manage("POST", &op("suspend"), None).await.status, 202);
    app.kiln
        .client()
        .wait_until(&id, std::time::Duration::from_secs(10), |r| r.status == kiln::RuntimeStatus::Suspended)
        .await
        .unwrap()
        .unwrap();
    app.manage("POST", &op("suspend"), None).await.assert_problem(409);
    assert_eq!(app.manage("POST", &op("resume"), None).await.status, 202);
    app.manage("POST", &op("rewind"), None).await.assert_problem(409);
    assert_eq!(app.manage("POST", &op("terminate"), None).await.status, 202);
    app.finish(&id).await;
    let done = app.manage("GET", &format!("/instances/{id}"), None).await;
    assert_eq!(
        (done.body["runtimeStatus"].as_str(), done.body["output"].as_str()),
        (Some("Terminated"), Some("some reason"))
    );
    for name in ["terminate", "suspend", "resume", "rewind"] {
        app.manage("POST", &op(name), None).await.assert_problem(410);
    }
    app.manage("POST", "/instances/nope/terminate", None).await.assert_problem(404);
    app.manage("POST", &op("explode"), None).await.assert_problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_and_restart() {
    let app = TestApp::start().await;
    let failed = start(&app, "fail", r#""again""#).await;
    app.finish(&failed).await;
    assert_eq!(app.manage("POST", &format!("/instances/{failed}/rewind"), None).await.status, 202);
    let done = start(&app, "echo", r#""same""#).await;
    app.finish(&done).await;
    let restarted = app.manage("POST", &format!("/instances/{done}/restart"), None).await;
    assert_eq!(restarted.status, 202);
    let new_id = restarted.body["id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, done);
    app.finish(&new_id).await;
    assert_eq!(app.manage("GET", &format!("/instances/{new_id}"), None).await.body["output"], "same");
    let same = app.manage("POST", &format!("/instances/{done}/restart?restartWithNewInstanceId=false"), None).await;
    assert_eq!(same.body["id"], done.as_str());
    app.manage("POST", "/instances/nope/restart", None).await.assert_problem(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_one_and_many() {
    let app = TestApp::start().await;
    let running = start(&app, "wait_event", "{}").await;
    app.manage("DELETE", &format!("/instances/{running}"), None).await.assert_problem(409);
    let done = start(&app, "echo", "1").await;
    app.finish(&done).await;
    let purged = app.manage("DELETE", &format!("/instances/{done}"), None).await;
    assert_eq!((purged.status.as_u16(), purged.body.clone()), (200, json!({"instancesDeleted": 1})));
    app.manage("DELETE", &format!("/instances/{done}"), None).await.assert_problem(404);
    app.manage("DELETE", "/instances", None).await.assert_problem(400);
    for _ in 0..3 {
        let id = start(&app, "echo", "1").await;
        app.finish(&id).await;
    }
    let many =
        app.manage("DELETE", "/instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Completed", None).await;
    assert_eq!(many.body, json!({"instancesDeleted": 3}));
    app.manage("DELETE", "/instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Completed", None)
        .await
        .assert_problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_purge_lists_what_the_filter_selects_and_deletes_nothing() {
    let app = TestApp::start().await;
    let running = start(&app, "wait_event", "{}").await;
    let mut done = Vec::new();
    for _ in 0..2 {
        let id = start(&app, "echo", "1").await;
        app.finish(&id).await;
        done.push(id);
    }
    let failed = start(&app, "fail", "{}").await;
    app.finish(&failed).await;
    let filter = "/instances?createdTimeFrom=2000-01-01T00:00:00Z&name=echo";
    let dry = app.manage("DELETE", &format!("{filter}&dryRun=true"), None).await;
    assert_eq!((dry.status.as_u16(), &dry.body["dryRun"], &dry.body["matched"]), (200, &json!(true), &json!(2)));
    let mut listed: Vec<&str> =
        dry.body["instances"].as_array().unwrap().iter().map(|i| i["instanceId"].as_str().unwrap()).collect();
    listed.sort_unstable();
    done.sort_unstable();
    assert_eq!(listed, done);
    assert_eq!(dry.body["instances"][0]["runtimeStatus"], "Completed");
    let everything = app.manage("DELETE", "/instances?createdTimeFrom=2000-01-01T00:00:00Z&dryRun=true", None).await;
    assert_eq!(everything.body["matched"], 3, "finished ones only, not {running}: {}", everything.raw);
    let past = "/instances?createdTimeFrom=2000-01-01T00:00:00Z&finishedTimeTo=2001-01-01T00:00:00Z&dryRun=true";
    assert_eq!(app.manage("DELETE", past, None).await.body["matched"], 0);
    for id in done.iter().chain([&failed, &running]) {
        let status = app.manage("GET", &format!("/instances/{id}"), None).await.status;
        assert!(status == 200 || status == 202, "{id} is still there: {status}");
    }
    // A dry run asked for wrongly is refused, never carried out; a bare key is a dry run.
    app.manage("DELETE", &format!("{filter}&dryRun=1"), None).await.assert_problem(400);
    app.manage("POST", "/bulk/terminate?dryRun=yes", None).await.assert_problem(400);
    assert_eq!(app.manage("DELETE", &format!("{filter}&dryRun"), None).await.body["matched"], 2);
    assert_eq!(app.manage("DELETE", filter, None).await.body, json!({"instancesDeleted": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loopback_listener_serves_no_browser_page_from_elsewhere() {
    let app = TestApp::start().await;
    let victim = start(&app, "wait_event", "{}").await;
    let start_path = format!("{BASE}/orchestrators/wait_event/chosen-by-attacker");
    let attacks = [
        // A "simple" cross-site form post: text/plain body, foreign Origin.
        request(
            "POST",
            &start_path,
            Some("{}"),
            &[("host", LOOPBACK_HOST), ("origin", "http://evil.example"), ("content-type", "text/plain")],
        ),
        // The same without an Origin (older browsers, some redirects): the body type gives it away.
        request("POST", &start_path, Some("{}"), &[("host", LOOPBACK_HOST), ("content-type", "text/plain")]),
        request(
            "POST",
            &format!("{BASE}/instances/{victim}/terminate"),
            None,
            &[("host", LOOPBACK_HOST), ("sec-fetch-site", "cross-site")],
        ),
        // DNS rebinding: same-origin to the browser, but the Host is the attacker's name.
        request("GET", &format!("{BASE}/instances"), None, &[("host", "evil.example:7072")]),
        request("DELETE", &format!("{BASE}/instances/{victim}"), None, &[("host", "evil.example:7072")]),
    ];
    for attack in attacks {
        let described = format!("{} {} {:?}", attack.method(), attack.uri(), attack.headers());
        let reply = app.call(&app.management, attack).await;
        assert!([403, 415].contains(&reply.status.as_u16()), "{described}: {}", reply.raw);
        reply.assert_problem(reply.status.as_u16());
    }
    app.manage("GET", "/instances/chosen-by-attacker", None).await.assert_problem(404);
    assert_eq!(app.manage("GET", &format!("/instances/{victim}"), None).await.body["runtimeStatus"], "Running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_operation_runs_as_an_instance_whose_status_shows_its_progress() {
    let app = TestApp::start().await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let id = start(&app, "wait_event", "{}").await;
        app.started(&id).await;
        waiting.push(id);
    }
    let dry = app.manage("POST", "/bulk/terminate?name=wait_event&dryRun=true", None).await;
    assert_eq!((dry.status.as_u16(), &dry.body["matched"], &dry.body["complete"]), (200, &json!(3), &json!(true)));
    assert_eq!(dry.body["instances"][0]["runtimeStatus"], "Running");
    let started = app.manage("POST", "/bulk/terminate?name=wait_event&reason=cleanup", None).await;
    assert_eq!(started.status, 202, "{}", started.raw);
    let location = started.header("location").to_owned();
    assert!(location.contains("/runtime/webhooks/durabletask/instances/"), "{location}");
    let op = started.body["id"].as_str().unwrap().to_owned();
    app.finish(&op).await;
    let status = app.manage("GET", &format!("/instances/{op}"), None).await;
    assert_eq!((status.status.as_u16(), &status.body["runtimeStatus"]), (200, &json!("Completed")), "{}", status.raw);
    assert_eq!(status.body["name"], "kiln.bulk");
    assert_eq!(status.body["output"], json!({"done": 3, "skipped": 0, "pages": 1}));
    assert_eq!(status.body["customStatus"], status.body["output"]);
    for id in &waiting {
        app.finish(id).await;
        let terminated = app.manage("GET", &format!("/instances/{id}"), None).await;
        assert_eq!(terminated.body["runtimeStatus"], "Terminated", "{}", terminated.raw);
    }
    app.manage("POST", "/bulk/explode", None).await.assert_problem(400);
    let refused = app.manage("POST", "/bulk/rewind?runtimeStatus=Running", None).await;
    refused.assert_problem(400);
    assert!(refused.body["detail"].as_str().unwrap().contains("does not apply to Running"), "{}", refused.raw);
    app.manage("POST", "/bulk/purge?createdTimeFrom=yesterday", None).await.assert_problem(400);
    app.manage("POST", "/orchestrators/kiln.bulk", Some("{}")).await.assert_problem(400);
}
