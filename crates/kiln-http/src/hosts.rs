//! Which `Host`s and `Origin`s Kiln trusts.
//!
//! - Links (`Location`, `statusQueryGetUri`, …) carry a valid status token, so only a host the
//!   operator vouches for may shape them ([`HostAllowList`]): a configured one, a loopback name,
//!   or the listen address. Any other `Host` gets links to the fallback base URL.
//! - The key-less loopback listener serves only what a local program sends
//!   ([`refuse_browsers_from_elsewhere`]): a loopback `Host` (a DNS-rebinding page sends its own
//!   name), no cross-site `Origin` or `Sec-Fetch-Site`, and JSON bodies only (a cross-site "simple"
//!   request cannot set `Content-Type: application/json` without a CORS preflight, which this
//!   listener refuses).

use crate::problem::Problem;
use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The hosts allowed to shape absolute URLs.
#[derive(Debug, Clone, Default)]
pub struct HostAllowList {
    /// Lower-case entries: `name` (any port) or `name:port`.
    entries: Vec<String>,
}

impl HostAllowList {
    /// Allows `entries` (`name` for any port, `name:port` for one) besides loopback names and the
    /// authority of `fallback_base_url`.
    pub fn new(entries: &[String], fallback_base_url: &str) -> HostAllowList {
        let fallback = fallback_base_url.split_once("://").map_or(fallback_base_url, |(_, rest)| rest);
        let fallback = fallback.split('/').next().unwrap_or_default();
        let entries = entries.iter().map(String::as_str).chain([fallback]).map(str::to_ascii_lowercase).collect();
        HostAllowList { entries }
    }

    /// Whether `entry` can be an allow-list entry (`name` or `name:port`).
    pub fn is_valid_entry(entry: &str) -> bool {
        split_host(entry).is_some()
    }

    /// Whether a `Host` header's value may appear in links.
    pub fn allows(&self, host: &str) -> bool {
        let Some((name, _)) = split_host(host) else { return false };
        if is_loopback_name(name) {
            return true;
        }
        let host = host.to_ascii_lowercase();
        let name = name.to_ascii_lowercase();
        self.entries.iter().any(|entry| *entry == host || *entry == name)
    }
}

/// Splits `name[:port]` (the name may be a bracketed IPv6 literal); `None` if it is not a plain
/// authority (no user info, path, spaces or other surprises).
fn split_host(host: &str) -> Option<(&str, Option<&str>)> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_');
    if host.is_empty() || host.len() > 255 || !host.bytes().all(plain) {
        return None;
    }
    let (name, port) = match host.rfind(':') {
        Some(colon) if !host[colon..].contains(']') => (&host[..colon], Some(&host[colon + 1..])),
        _ => (host, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = !name.is_empty() && (!name.contains(':') || (name.starts_with('[') && name.ends_with(']')));
    (port_ok && name_ok).then_some((name, port))
}

/// `localhost`, `127.0.0.1` or `[::1]` (exactly: browsers resolve only these to this machine
/// without asking a DNS server an attacker controls).
fn is_loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1" || name == "[::1]"
}

/// Whether a request's `Host` header names this machine's loopback interface.
fn has_loopback_host(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    host.and_then(split_host).is_some_and(|(name, _)| is_loopback_name(name))
}

/// Middleware of the key-less loopback listener: `403` for a request a browser sent on behalf of
/// another site (a non-loopback `Host`, a foreign `Origin`, `Sec-Fetch-Site: cross-site` or
/// `same-site`), `415` for a body that is not JSON.
pub(crate) async fn refuse_browsers_from_elsewhere(request: Request, next: Next) -> Response {
    let has_body = request.body().size_hint().exact() != Some(0);
    match check_local(request.headers(), has_body) {
        Ok(()) => next.run(request).await,
        Err(problem) => {
            tracing::warn!(detail = problem.detail(), "request on the loopback listener refused");
            problem.into_response()
        }
    }
}

fn check_local(headers: &HeaderMap, has_body: bool) -> Result<(), Problem> {
    let forbidden = |detail: &str| Problem::new(StatusCode::FORBIDDEN, detail).for_durable_functions();
    if !has_loopback_host(headers) {
        return Err(forbidden(
            "this listener answers only requests addressed to localhost, 127.0.0.1 or [::1] (Host header)",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        let same_origin = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|authority| authority.eq_ignore_ascii_case(host));
        if !same_origin {
            return Err(forbidden("cross-origin requests are refused on this listener"));
        }
    }
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|site| !matches!(site, "same-origin" | "none")) {
        return Err(forbidden("cross-site requests are refused on this listener"));
    }
    if has_body && !is_json(headers) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a request body on this listener must be sent as Content-Type: application/json",
        )
        .for_durable_functions());
    }
    Ok(())
}

/// `application/json` or any `+json` type, with or without parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let essence = crate::extract::media_type(headers).unwrap_or_default();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_vouched_for_hosts_shape_links() {
        let list = HostAllowList::new(&["api.example.com".into(), "Other.example:8443".into()], "http://10.0.0.5:7071");
        for host in
            ["localhost:7071", "127.0.0.1", "[::1]:9", "api.example.com:1", "other.example:8443", "10.0.0.5:7071"]
        {
            assert!(list.allows(host), "{host}");
        }
        for host in [
            "attacker.example",
            "other.example:8444",
            "10.0.0.5:7072",
            "127.0.0.2",
            "localhost.attacker.example",
            "evil.com/path",
            "user@localhost",
            "localhost:",
            "localhost:99999x",
            "::1",
            "",
        ] {
            assert!(!list.allows(host), "{host}");
        }
    }

    #[test]
    fn the_loopback_listener_refuses_what_a_foreign_page_can_send() {
        let local = [("host", "127.0.0.1:7072")];
        assert!(check_local(&headers(&local), false).is_ok());
        let json_body = [("host", "localhost:7072"), ("content-type", "application/json; charset=utf-8")];
        assert!(check_local(&headers(&json_body), true).is_ok());
        let same_origin =
            [("host", "127.0.0.1:7072"), ("origin", "http://127.0.0.1:7072"), ("sec-fetch-site", "same-origin")];
        assert!(check_local(&headers(&same_origin), false).is_ok());

        let refused: [&[(&str, &str)]; 7] = [
            &[("host", "evil.example:7072")],
            &[],
            &[("host", "127.0.0.1:7072"), ("origin", "http://evil.example")],
            &[("host", "127.0.0.1:7072"), ("origin", "null")],
            &[("host", "127.0.0.1:7072"), ("origin", "http://127.0.0.1:3000")],
            &[("host", "127.0.0.1:7072"), ("sec-fetch-site", "cross-site")],
            &[("host", "127.0.0.1:7072"), ("sec-fetch-site", "same-site")],
        ];
        for case in refused {
            assert_eq!(check_local(&headers(case), false).unwrap_err().status(), StatusCode::FORBIDDEN, "{case:?}");
        }
        for body_type in
            [&[("host", "127.0.0.1:7072"), ("content-type", "text/plain")][..], &[("host", "127.0.0.1:7072")]]
        {
            let refused = check_local(&headers(body_type), true).unwrap_err();
            assert_eq!(refused.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body_type:?}");
        }
    }
}
