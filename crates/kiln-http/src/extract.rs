//! Request-body extractors whose every rejection is a problem+json response: wrong media type
//! (415), too large (413), malformed JSON (400), invalid fields (400 with field paths).

use crate::problem::{FieldError, Problem};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

/// The raw body, with the size limit turned into a 413 problem.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|rejection| Problem::new(rejection.status(), rejection.body_text()))
    }
}

/// Middleware: `413` for a body announced (`Content-Length`) larger than `max_body_bytes`,
/// before anything reads it — so a client sending `Expect: 100-continue` is refused at once
/// instead of being told to send it.
pub(crate) async fn refuse_announced_oversize(
    axum::extract::State(http): axum::extract::State<crate::KilnHttp>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let max = http.options().max_body_bytes;
    let announced = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|length| length > max as u64) {
        let detail = format!("the request body is larger than the limit of {max} bytes");
        return axum::response::IntoResponse::into_response(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, detail));
    }
    next.run(request).await
}

/// True if the request says its body is JSON (`application/json`, any parameters).
pub fn is_json(req: &Request) -> bool {
    media_type(req.headers()).is_some_and(|media| media == "application/json")
}

/// The credential of an `Authorization: Bearer …` header (the scheme in any case, RFC 7235),
/// if the header is one.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let (scheme, credential) = headers.get(header::AUTHORIZATION)?.to_str().ok()?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credential.trim())
}

/// The media type `Content-Type` declares, lower case, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// A JSON body deserialized into `T` and checked with `garde`.
pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + garde::Validate<Context = ()>> FromRequest<S> for ValidJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the request body must be application/json"));
        }
        let Body(bytes) = Body::from_request(req, state).await?;
        let value: T = parse_json(&bytes)?;
        value.validate().map_err(|report| {
            let errors = report
                .iter()
                .map(|(path, error)| FieldError { field: path.to_string(), message: error.message().to_owned() })
                .collect();
            Problem::validation(errors)
        })?;
        Ok(ValidJson(value))
    }
}

/// Parses JSON, naming the path of the offending field on a type mismatch. One JSON value and
/// nothing after it (but whitespace).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = deserialize(&mut deserializer)?;
    deserializer.end().map_err(|err| Problem::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {err}")))?;
    Ok(value)
}

fn deserialize<'de, T: DeserializeOwned>(
    deserializer: &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
) -> Result<T, Problem> {
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if !matches!(inner.classify(), serde_json::error::Category::Data) {
            return Problem::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {inner}"));
        }
        let message = inner.to_string();
        // A missing field is reported at its parent; name the field itself.
        let field = match message.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
            Some(missing) if path == "." => missing.to_owned(),
            Some(missing) => format!("{path}.{missing}"),
            None => path,
        };
        Problem::validation(vec![FieldError { field, message }])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_value_and_nothing_after_it() {
        assert_eq!(parse_json::<Vec<u32>>(b" [1, 2] \n").ok(), Some(vec![1, 2]));
        let trailing = parse_json::<Vec<u32>>(b"[1, 2] {\"more\": true}").unwrap_err();
        assert_eq!(axum::response::IntoResponse::into_response(trailing).status(), StatusCode::BAD_REQUEST);
        assert!(parse_json::<String>(br#""\ud800""#).is_err(), "a lone surrogate");
    }
}
