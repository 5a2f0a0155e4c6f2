//! The correlation a start request carries: W3C `traceparent`/`tracestate`, else
//! `X-Correlation-ID` or `X-Request-ID`. The instance keeps it (see [`kiln::Correlation`]) and
//! the `202` returns its id as `X-Correlation-ID`.

use crate::problem::Problem;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header::AsHeaderName};
use kiln::{Correlation, TraceContext, correlate};

/// The response header that returns an instance's correlation id.
pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// The other request header a correlation id may come in.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The correlation a request asks for; `None` when it sent none (the runtime then starts a new
/// trace). A `traceparent` that is not W3C is ignored, as W3C asks; an `X-Correlation-ID` that
/// is not 1 to 128 visible ASCII characters is refused (`400`, unless a valid `traceparent`
/// came, which wins), since dropping it would lose the caller's thread silently; such an
/// `X-Request-ID` is ignored.
pub fn from_request(headers: &HeaderMap) -> Result<Option<Correlation>, Problem> {
    let trace = single(headers, "traceparent")
        .and_then(|traceparent| TraceContext::parse(traceparent, single(headers, "tracestate")).ok());
    if let Some(trace) = trace {
        return Ok(Some(correlate(Some(trace), None)));
    }
    let valid = |name: &HeaderName| {
        headers.get(name).map(|value| value.to_str().ok().filter(|id| kiln::validate_correlation_id(id).is_ok()))
    };
    match valid(&CORRELATION_ID) {
        Some(Some(id)) => return Ok(Some(correlate(None, Some(id.to_owned())))),
        Some(None) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("'{CORRELATION_ID}' must be 1 to {} visible ASCII characters", kiln::MAX_CORRELATION_ID_LEN),
            ));
        }
        None => {}
    }
    // Infrastructure sets `X-Request-ID` (proxies, platforms), not the caller: one that does not
    // fit is passed over rather than refused.
    Ok(valid(&REQUEST_ID).flatten().map(|id| correlate(None, Some(id.to_owned()))))
}

/// Adds `X-Correlation-ID` to a response.
pub fn add_to_response(headers: &mut HeaderMap, correlation: Option<&Correlation>) {
    // A stored id is visible ASCII, so it is always a valid header value.
    if let Some(value) = correlation.and_then(|c| HeaderValue::from_str(&c.id).ok()) {
        headers.insert(CORRELATION_ID, value);
    }
}

/// A header sent exactly once (W3C: several `traceparent` headers make it invalid).
fn single(headers: &HeaderMap, name: impl AsHeaderName + Copy) -> Option<&str> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_traceparent_gives_the_trace_and_the_id() {
        let correlation =
            from_request(&headers(&[("traceparent", TRACEPARENT), ("x-correlation-id", "mine")])).unwrap().unwrap();
        assert_eq!(correlation.id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(correlation.trace.traceparent(), TRACEPARENT);
    }

    #[test]
    fn without_a_valid_traceparent_the_callers_id_is_kept_on_a_new_trace() {
        for pairs in [
            vec![("x-correlation-id", "order-42")],
            vec![("x-request-id", "order-42")],
            vec![("traceparent", "garbage"), ("x-correlation-id", "order-42")],
            vec![("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT), ("x-request-id", "order-42")],
        ] {
            let correlation = from_request(&headers(&pairs)).unwrap().unwrap();
            assert_eq!(correlation.id, "order-42", "{pairs:?}");
            assert_ne!(correlation.trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        assert_eq!(from_request(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn an_unprintable_correlation_id_is_refused_and_such_a_request_id_ignored() {
        let long = "x".repeat(kiln::MAX_CORRELATION_ID_LEN + 1);
        for bad in ["has space", long.as_str()] {
            let problem = from_request(&headers(&[("x-correlation-id", bad)])).unwrap_err();
            assert_eq!(problem.status(), StatusCode::BAD_REQUEST);
            assert_eq!(from_request(&headers(&[("x-request-id", bad)])).unwrap(), None);
        }
    }
}
