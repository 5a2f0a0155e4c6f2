//! Absolute URLs: from the configured public base URL (behind a reverse proxy) or else from the
//! request's `Host`.

use axum::http::{HeaderMap, header};

/// The scheme and authority responses link to, without a trailing slash.
pub fn base_url(public_base_url: Option<&str>, fallback: &str, headers: &HeaderMap) -> String {
    if let Some(base) = public_base_url {
        return base.trim_end_matches('/').to_owned();
    }
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if is_plausible_host(host) => format!("http://{host}"),
        _ => fallback.trim_end_matches('/').to_owned(),
    }
}

/// A `Host` header that can be put into a URL as is (no spaces, slashes or other surprises).
fn is_plausible_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'))
}

/// Percent-encodes a path segment or query value (everything but RFC 3986 unreserved characters).
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn prefers_configuration_then_a_sane_host() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("api.example.com:8080"));
        assert_eq!(base_url(Some("https://x.io/"), "http://f", &headers), "https://x.io");
        assert_eq!(base_url(None, "http://f", &headers), "http://api.example.com:8080");
        headers.insert(header::HOST, HeaderValue::from_static("evil.com/path"));
        assert_eq!(base_url(None, "http://127.0.0.1:7071", &headers), "http://127.0.0.1:7071");
        assert_eq!(encode_component("a b/c%"), "a%20b%2Fc%25");
    }
}
