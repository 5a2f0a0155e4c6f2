//! Query and path parameters with Durable Functions' parsing rules: keys match
//! case-insensitively, a key may repeat, `+` means a space, booleans are case-insensitive and
//! an unparsable boolean falls back to its default (except a [`QueryParams::strict_flag`]).
//! Rejections are problems.

use crate::problem::Problem;
use axum::extract::{FromRequestParts, Path, RawQuery};
use axum::http::StatusCode;
use axum::http::request::Parts;
use std::collections::HashMap;

/// The query string as ordered pairs.
#[derive(Debug, Default)]
pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    /// Parses a raw query string.
    pub fn parse(raw: &str) -> QueryParams {
        QueryParams(form_urlencoded::parse(raw.as_bytes()).into_owned().collect())
    }

    /// The first value of `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, each split on commas (for lists such as `runtimeStatus`).
    pub fn list(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .flat_map(|(_, v)| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned))
            .collect()
    }

    /// A boolean flag; missing or unparsable gives `default`.
    pub fn flag(&self, key: &str, default: bool) -> bool {
        match self.get(key).map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            _ => default,
        }
    }

    /// A flag that guards something destructive (`dryRun`): present without a value, or
    /// `true`, is true; absent or `false` is false; anything else is refused, so that a typo
    /// never turns a dry run into the real thing.
    pub fn strict_flag(&self, key: &str) -> Result<bool, Problem> {
        match self.get(key).map(str::trim) {
            None => Ok(false),
            Some(v) if v.is_empty() || v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(Problem::new(StatusCode::BAD_REQUEST, format!("'{key}' must be true or false, not '{v}'"))),
        }
    }

    /// A number of seconds, if present and valid.
    pub fn seconds(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.trim().parse::<f64>().ok()).filter(|s| s.is_finite() && *s >= 0.0)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let RawQuery(raw) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "unreadable query string"))?;
        Ok(QueryParams::parse(raw.as_deref().unwrap_or("")))
    }
}

/// Path parameters by name, with a problem for undecodable segments.
#[derive(Debug)]
pub struct PathParams(pub HashMap<String, String>);

impl PathParams {
    /// A parameter the route always has.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathParams {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Path(params)| PathParams(params))
            .map_err(|rejection| Problem::new(StatusCode::BAD_REQUEST, rejection.body_text()))
    }
}
