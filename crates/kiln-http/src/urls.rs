//! Absolute URLs: from the configured public base URL (behind a reverse proxy), else from the
//! request's `Host` when the operator vouches for it, else from the listen address.

use crate::hosts::HostAllowList;
use axum::http::{HeaderMap, header};

/// The scheme and authority responses link to, without a trailing slash.
pub fn base_url(public_base_url: Option<&str>, fallback: &str, hosts: &HostAllowList, headers: &HeaderMap) -> String {
    if let Some(base) = public_base_url {
        return base.trim_end_matches('/').to_owned();
    }
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if hosts.allows(host) => format!("http://{host}"),
        _ => fallback.trim_end_matches('/').to_owned(),
    }
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
    fn prefers_configuration_then_an_allowed_host_then_the_listen_address() {
        let fallback = "http://10.0.0.5:7071";
        let hosts = HostAllowList::new(&["api.example.com".to_owned()], fallback);
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("api.example.com:8080"));
        assert_eq!(base_url(Some("https://x.io/"), fallback, &hosts, &headers), "https://x.io");
        assert_eq!(base_url(None, fallback, &hosts, &headers), "http://api.example.com:8080");
        for refused in ["attacker.example", "evil.com/path"] {
            headers.insert(header::HOST, HeaderValue::from_static(refused));
            assert_eq!(base_url(None, fallback, &hosts, &headers), fallback);
        }
        assert_eq!(encode_component("a b/c%"), "a%20b%2Fc%25");
    }
}
