//! The fuzz targets' bodies, shared by the libFuzzer targets (`fuzz/fuzz_targets/`, nightly,
//! `scripts/fuzz.sh`) and the stable smoke run in CI (`crates/kiln-http/tests/fuzz_smoke.rs`).
//! Each takes arbitrary bytes and panics only on a real defect: a crash, a broken invariant,
//! or a `5xx` answer to bad input.

use axum::body::Body;
use axum::http::Request;
use kiln::{Kiln, Payload, Timestamp};
use kiln_core::HistoryEvent;
use kiln_http::{HttpOptions, KilnHttp, Scope, Scopes, TokenSigner};
use std::sync::OnceLock;
use tower::ServiceExt;

/// Status tokens: any string is refused unless it is a token this signer issued for this id,
/// and a token it issued verifies for its id only.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (id, token) = text.split_once('\n').unwrap_or(("instance", &text));
    let signer = TokenSigner::new(b"fuzz-secret-0123456789abcdef0123".to_vec());
    let now = Timestamp(1_800_000_000_000);
    for scope in [Scope::Read, Scope::Cancel] {
        assert!(signer.verify(token, id, scope, now).is_none(), "a token nobody signed verified: {token:?}");
    }
    let issued = signer.sign(id, Timestamp(now.millis() - 5), Scopes::READ, Timestamp(now.millis() + 60_000));
    assert!(signer.verify(&issued, id, Scope::Read, now).is_some(), "an issued token did not verify");
    assert!(signer.verify(&issued, id, Scope::Cancel, now).is_none(), "a read token granted cancel");
    assert!(signer.verify(&issued, &format!("{id}x"), Scope::Read, now).is_none(), "a token for another id");
}

/// The JSON edge: a body is one JSON value or a `400`; what is accepted as a payload decodes
/// to the same value again.
pub fn json_edge(data: &[u8]) {
    let parsed = kiln_http::extract::parse_json::<serde_json::Value>(data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(payload) = Payload::from_json(text)
    {
        let value: serde_json::Value =
            payload.decode().unwrap_or_else(|e| panic!("an accepted payload does not decode: {e}"));
        let again = Payload::encode(&value).unwrap_or_else(|e| panic!("a decoded payload does not encode: {e}"));
        assert_eq!(again.decode::<serde_json::Value>().ok(), Some(value));
        assert!(parsed.is_ok(), "a payload accepted as text was refused as a body");
    }
}

/// History decoding: whatever decodes as a history encodes and decodes to the same events.
pub fn history(data: &[u8]) {
    let Ok(events) = serde_json::from_slice::<Vec<HistoryEvent>>(data) else { return };
    let encoded = serde_json::to_vec(&events).unwrap_or_else(|e| panic!("a decoded history does not encode: {e}"));
    let decoded: Vec<HistoryEvent> =
        serde_json::from_slice(&encoded).unwrap_or_else(|e| panic!("an encoded history does not decode: {e}"));
    assert_eq!(decoded, events);
}

/// The management API's query parsing (Durable Functions' list, status and purge queries): any
/// path and query under the management prefix gets an answer below 500.
pub fn management_query(data: &[u8]) {
    let (runtime, router, _) = management();
    let text = String::from_utf8_lossy(data);
    let (path, query) = text.split_once('?').unwrap_or(("instances", &text));
    let encode = |part: &str| -> String {
        part.bytes()
            .map(|b| match b {
                b'a'..=b'z'
                | b'A'..=b'Z'
                | b'0'..=b'9'
                | b'-'
                | b'.'
                | b'_'
                | b'~'
                | b'/'
                | b'='
                | b'&'
                | b','
                | b'%'
                | b'+' => (b as char).to_string(),
                other => format!("%{other:02X}"),
            })
            .collect()
    };
    let uri = format!("/runtime/webhooks/durabletask/{}?{}", encode(path), encode(query));
    let Ok(request) = Request::builder().uri(&uri).header("host", "127.0.0.1:7072").body(Body::empty()) else { return };
    let method_request = |method: &str| {
        Request::builder().method(method).uri(&uri).header("host", "127.0.0.1:7072").body(Body::empty()).ok()
    };
    for request in [Some(request), method_request("DELETE"), method_request("POST")].into_iter().flatten() {
        let status = runtime.block_on(router.clone().oneshot(request)).map(|r| r.status());
        let status = status.unwrap_or_else(|e| match e {});
        assert!(status.as_u16() < 500, "{uri}: {status}");
    }
}

/// One Kiln (an empty SQLite database) and its loopback management router, for every input
/// (kept for the whole process).
fn management() -> &'static (tokio::runtime::Runtime, axum::Router, Kiln) {
    static SHARED: OnceLock<(tokio::runtime::Runtime, axum::Router, Kiln)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build();
        let runtime = runtime.unwrap_or_else(|e| panic!("tokio: {e}"));
        let dir = std::env::temp_dir().join(format!("kiln-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let (router, kiln) = runtime.block_on(async {
            async fn echo(
                _: kiln::OrchestrationContext,
                input: serde_json::Value,
            ) -> Result<serde_json::Value, kiln::Failure> {
                Ok(input)
            }
            let kiln = Kiln::builder().orchestration("echo", echo).sqlite(dir.join("kiln.db")).start().await;
            let kiln = kiln.unwrap_or_else(|e| panic!("kiln: {e}"));
            let options = HttpOptions { system_key: Some("fuzz-system-key-0123".into()), ..HttpOptions::default() };
            let http = KilnHttp::new(kiln.client(), options).await.unwrap_or_else(|e| panic!("http: {e}"));
            (http.management_router(), kiln)
        });
        (runtime, router, kiln)
    })
}
