//! Authenticated starters through the public router: API keys and JWTs per route, `401`/`403`
//! problems with their challenge, rate limits per caller, and the status URL needing no more
//! than its token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestApp, path_of, request};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kiln_http::auth::{ApiKeys, JwtVerifier, api_keys::new_api_key};
use kiln_http::{Access, HttpOptions, RateLimit, StarterAuth};
use serde_json::json;

const HMAC_SECRET: &[u8] = b"a shared secret of at least 32 bytes";

struct Keys {
    starter: String,
    reader: String,
}

/// Starters take a JWT or an API key by default; `/api/echo` only an API key granting
/// `echo:start`; `/api/wait*` are open.
async fn protected_app(rate_limit: Option<RateLimit>) -> (TestApp, Keys) {
    let starter = new_api_key("starter", &["echo:start".to_owned()]).unwrap();
    let reader = new_api_key("reader", &[]).unwrap();
    let jwt = JwtVerifier::new("https://idp.example", "kiln").unwrap().with_hmac_secret(HMAC_SECRET).unwrap();
    let auth = StarterAuth::new(Access::Authenticated { api_key: true, jwt: true, scope: None })
        .unwrap()
        .api_keys(ApiKeys::parse(&format!("{}\n{}", starter.line, reader.line)).unwrap())
        .jwt(jwt)
        .route("/api/echo", Access::Authenticated { api_key: true, jwt: false, scope: Some("echo:start".into()) })
        .unwrap()
        .route("/api/wait*", Access::Open)
        .unwrap();
    auth.validate().unwrap();
    let options = HttpOptions { starter_auth: auth, starter_rate_limit: rate_limit, ..HttpOptions::default() };
    (TestApp::with_options(options).await, Keys { starter: starter.key, reader: reader.key })
}

fn jwt(subject: &str, audience: &str) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 300;
    let claims = json!({ "iss": "https://idp.example", "aud": audience, "sub": subject, "exp": exp });
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(HMAC_SECRET)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_starter_admits_only_what_its_rule_says() {
    let (app, keys) = protected_app(None).await;
    let post = |uri: &'static str, headers: Vec<(&'static str, String)>| {
        let app = &app;
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            app.call(&app.public, request("POST", uri, Some("1"), &headers)).await
        }
    };
    let anonymous = post("/api/echo", vec![]).await;
    anonymous.assert_problem(401);
    assert_eq!(anonymous.header("www-authenticate"), "Bearer realm=\"kiln\"");
    assert!(anonymous.body["detail"].as_str().unwrap().contains("API key"), "{}", anonymous.raw);

    let wrong = post("/api/echo", vec![("x-api-key", "kiln_not-a-key".into())]).await;
    wrong.assert_problem(401);
    assert!(
        wrong.header("www-authenticate").contains("error=\"invalid_token\""),
        "{}",
        wrong.header("www-authenticate")
    );

    let unscoped = post("/api/echo", vec![("x-api-key", keys.reader.clone())]).await;
    unscoped.assert_problem(403);
    assert!(unscoped.header("www-authenticate").contains("scope=\"echo:start\""));
    // The router decodes `/api/%65cho` to the same starter: so does the rule.
    for encoded in ["/api/%65cho", "/api/%65%63%68%6F"] {
        post(encoded, vec![("x-api-key", keys.reader.clone())]).await.assert_problem(403);
        post(encoded, vec![]).await.assert_problem(401);
    }

    let token_on_keys_only = post("/api/echo", vec![("authorization", format!("Bearer {}", jwt("ci", "kiln")))]).await;
    token_on_keys_only.assert_problem(401);

    let accepted = post("/api/echo", vec![("x-api-key", keys.starter.clone())]).await;
    assert_eq!(accepted.status, 202, "{}", accepted.raw);
    // The status URL is its own capability: polled without any credential.
    let poll = app.public("GET", &path_of(accepted.header("location")), None).await;
    assert!(poll.status == 200 || poll.status == 202, "{}", poll.raw);

    // The default rule: a JWT for this audience, or any known key.
    let by_token = post("/api/fail", vec![("authorization", format!("Bearer {}", jwt("ci", "kiln")))]).await;
    assert_eq!(by_token.status, 202, "{}", by_token.raw);
    let by_key = post("/api/fail", vec![("authorization", format!("Bearer {}", keys.reader))]).await;
    assert_eq!(by_key.status, 202, "{}", by_key.raw);
    let other_audience = post("/api/fail", vec![("authorization", format!("Bearer {}", jwt("ci", "billing")))]).await;
    other_audience.assert_problem(401);
    assert!(other_audience.body["detail"].as_str().unwrap().contains("aud"), "{}", other_audience.raw);
    post("/api/fail", vec![]).await.assert_problem(401);

    // Open routes stay open; the management API keeps its own key.
    assert_eq!(post("/api/wait", vec![]).await.status, 202);
    assert_eq!(post("/api/wait-readonly", vec![]).await.status, 202);
    let list = app.public("GET", "/runtime/webhooks/durabletask/instances", None).await;
    list.assert_problem(401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_per_caller_not_per_address() {
    let (app, keys) = protected_app(Some(RateLimit { per_second: 0.1, burst: 1 })).await;
    let from = |address: [u8; 4], key: &str| {
        let mut request = request("POST", "/api/fail", Some("1"), &[("x-api-key", key)]);
        request.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((address, 5000))));
        request
    };
    assert_eq!(app.call(&app.public, from([10, 0, 0, 1], &keys.starter)).await.status, 202);
    app.call(&app.public, from([10, 0, 0, 2], &keys.starter)).await.assert_problem(429);
    let other_caller = app.call(&app.public, from([10, 0, 0, 1], &keys.reader)).await;
    assert_eq!(other_caller.status, 202, "another key from the same address has its own bucket");
    // An anonymous caller of an open route is counted by its address.
    let mut open = request("POST", "/api/wait", Some("1"), &[]);
    open.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from(([10, 0, 0, 1], 5000))));
    assert_eq!(app.call(&app.public, open).await.status, 202);
    // Refusals count against the address: guessing keys is no faster than starting.
    let guess = || from([10, 0, 0, 9], "kiln_guess");
    app.call(&app.public, guess()).await.assert_problem(401);
    let limited = app.call(&app.public, guess()).await;
    limited.assert_problem(429);
    assert!(limited.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1));
}
