//! Who may call the starters: open, or callers with an API key or a JWT bearer token, per route.
//!
//! The operator sets a default [`Access`] and, per path pattern, others (first match wins).
//! Patterns are matched against the percent-decoded path: axum routes `/api/%65cho` to the same
//! handler, with the same decoded parameters, as `/api/echo`. A starter that needs a credential
//! answers `401` with `WWW-Authenticate: Bearer …` (RFC 6750) when none, a wrong kind or an
//! invalid one is presented, and `403` (`insufficient_scope`) when the caller lacks the route's
//! scope; refusals count against the client address's rate limit. An authenticated request
//! carries its [`Caller`] as an extension: the rate limits count per caller, and a starter may
//! read it.
//!
//! Credentials: `Authorization: Bearer <JWT>`, or an API key as `X-API-Key: kiln_…` or
//! `Authorization: Bearer kiln_…` (see [`api_keys`] and [`jwt`]).
//!
//! The status monitor needs none of these: its URL's token is the capability (see `token`).

pub mod api_keys;
pub mod jwt;

pub use api_keys::ApiKeys;
pub use jwt::JwtVerifier;

use crate::problem::Problem;
use crate::{KilnHttp, rate_limit};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeSet;

/// The header an API key may come in (besides `Authorization: Bearer`).
pub const API_KEY_HEADER: &str = "x-api-key";

/// Who called, once authenticated: a request extension on the starters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// `key:NAME` for an API key, `jwt:SUBJECT` for a token: the rate limits' bucket.
    pub id: String,
    /// The scopes the credential grants.
    pub scopes: BTreeSet<String>,
}

/// What a starter asks of its callers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Access {
    /// Anyone may call it (for local use, or behind a gateway that authenticates).
    #[default]
    Open,
    /// Callers must present a credential of an allowed kind, granting `scope` when one is set.
    Authenticated {
        /// Whether API keys are accepted.
        api_key: bool,
        /// Whether JWT bearer tokens are accepted.
        jwt: bool,
        /// A scope the credential must grant.
        scope: Option<String>,
    },
}

impl std::fmt::Display for Access {
    /// `open`, or the credentials taken (`an API key or a JWT`) and the scope.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Access::Authenticated { api_key, jwt, scope } = self else { return f.write_str("open") };
        f.write_str(match (api_key, jwt) {
            (true, true) => "an API key or a JWT",
            (true, false) => "an API key",
            (false, true) => "a JWT",
            (false, false) => "no credential at all",
        })?;
        match scope {
            Some(scope) => write!(f, " granting {scope}"),
            None => Ok(()),
        }
    }
}

fn check_scope(rule: &str, access: &Access) -> Result<(), AuthConfigError> {
    match access {
        Access::Authenticated { scope: Some(scope), .. } if !api_keys::is_valid_scope(scope) => {
            Err(AuthConfigError(format!("{rule}: '{scope}' is not a valid scope")))
        }
        _ => Ok(()),
    }
}

/// Why an authentication setup is refused (at start, never per request).
#[derive(Debug, thiserror::Error)]
#[error("starter authentication: {0}")]
pub struct AuthConfigError(String);

/// The starters' authentication: a default [`Access`], rules per path pattern, and the
/// credentials known.
#[derive(Clone, Debug, Default)]
pub struct StarterAuth {
    default: Access,
    routes: Vec<(String, Access)>,
    api_keys: ApiKeys,
    jwt: Option<JwtVerifier>,
}

impl StarterAuth {
    /// Starters need `default` unless a route rule says otherwise.
    pub fn new(default: Access) -> Result<StarterAuth, AuthConfigError> {
        check_scope("the default", &default)?;
        Ok(StarterAuth { default, ..StarterAuth::default() })
    }

    /// Starters whose path matches `pattern` need `access`. A pattern is a path as a client
    /// sends it, decoded (`/api/jobs/reports`), or a prefix ending in `*` (`/api/jobs/*`); the
    /// first matching rule wins. Route templates (`{name}`) are not patterns.
    pub fn route(mut self, pattern: &str, access: Access) -> Result<StarterAuth, AuthConfigError> {
        let wildcard = pattern.find('*');
        let template = pattern.contains(['{', '}', '%']);
        if !pattern.starts_with('/') || wildcard.is_some_and(|at| at != pattern.len() - 1) || template {
            return Err(AuthConfigError(format!(
                "route patterns are decoded paths starting with '/' that may end with '*' (no '{{…}}', \
                 '%' or '*' elsewhere), not '{pattern}'"
            )));
        }
        check_scope(pattern, &access)?;
        self.routes.push((pattern.to_owned(), access));
        Ok(self)
    }

    /// The API keys accepted.
    pub fn api_keys(mut self, keys: ApiKeys) -> StarterAuth {
        self.api_keys = keys;
        self
    }

    /// How JWT bearer tokens are verified.
    pub fn jwt(mut self, verifier: JwtVerifier) -> StarterAuth {
        self.jwt = Some(verifier);
        self
    }

    /// Checks that every access asked for can be granted: a rule taking only API keys with no
    /// key known (or only JWTs with no verifier) would refuse everyone.
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        let rules = std::iter::once(("the default", &self.default))
            .chain(self.routes.iter().map(|(pattern, access)| (pattern.as_str(), access)));
        for (rule, access) in rules {
            let Access::Authenticated { api_key, jwt, .. } = access else { continue };
            let keys = *api_key && !self.api_keys.is_empty();
            let tokens = *jwt && self.jwt.as_ref().is_some_and(JwtVerifier::has_keys);
            if !(keys || tokens) {
                let wanted = Access::Authenticated { api_key: *api_key, jwt: *jwt, scope: None };
                return Err(AuthConfigError(format!("{rule} asks for {wanted} but none is configured")));
            }
        }
        Ok(())
    }

    /// What starters without a matching rule need.
    pub fn default_access(&self) -> &Access {
        &self.default
    }

    /// Whether every starter is open (no rule asks for a credential).
    pub fn is_open_everywhere(&self) -> bool {
        self.default == Access::Open && self.routes.iter().all(|(_, access)| *access == Access::Open)
    }

    /// What a request to `path` (decoded) needs.
    pub fn access_for(&self, path: &str) -> &Access {
        let matches = |pattern: &str| match pattern.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == pattern,
        };
        self.routes.iter().find(|(pattern, _)| matches(pattern)).map_or(&self.default, |(_, access)| access)
    }

    /// The caller a request's credentials speak for, when `access` takes them.
    fn authenticate(&self, headers: &HeaderMap, access: &Access) -> Result<Option<Caller>, Refusal> {
        let Access::Authenticated { api_key, jwt, scope } = access else { return Ok(None) };
        let caller = match presented(headers)? {
            None => return Err(Refusal::missing(*api_key, *jwt)),
            Some(Credential::ApiKey(_)) if !api_key => return Err(Refusal::missing(false, true)),
            Some(Credential::Jwt(_)) if !jwt => return Err(Refusal::missing(true, false)),
            Some(Credential::ApiKey(key)) => match self.api_keys.find(key) {
                Some(found) => Caller { id: format!("key:{}", found.name), scopes: found.scopes.clone() },
                None => return Err(Refusal::invalid("the API key is not known")),
            },
            Some(Credential::Jwt(token)) => match self.jwt.as_ref().map(|verifier| verifier.verify(token)) {
                Some(Ok(caller)) => caller,
                Some(Err(rejection)) => return Err(Refusal::invalid(rejection.reason())),
                None => return Err(Refusal::invalid("JWTs are not configured")),
            },
        };
        match scope {
            Some(scope) if !caller.scopes.contains(scope) => Err(Refusal::insufficient_scope(scope)),
            _ => Ok(Some(caller)),
        }
    }
}

/// A credential as presented, not yet checked.
enum Credential<'a> {
    ApiKey(&'a str),
    Jwt(&'a str),
}

/// The request's credential: `Authorization: Bearer …` (an API key when it has the key prefix),
/// else `X-API-Key`.
fn presented(headers: &HeaderMap) -> Result<Option<Credential<'_>>, Refusal> {
    if headers.contains_key(header::AUTHORIZATION) {
        let token = crate::extract::bearer_token(headers)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Refusal::invalid("Authorization must be `Bearer <token or API key>`"))?;
        let credential = if token.starts_with(api_keys::API_KEY_PREFIX) {
            Credential::ApiKey(token)
        } else {
            Credential::Jwt(token)
        };
        return Ok(Some(credential));
    }
    match headers.get(API_KEY_HEADER) {
        Some(value) => value
            .to_str()
            .map(|key| Some(Credential::ApiKey(key.trim())))
            .map_err(|_| Refusal::invalid("the API key is not known")),
        None => Ok(None),
    }
}

/// A `401` or `403`, with its RFC 6750 challenge.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    detail: String,
    challenge: String,
}

impl Refusal {
    fn missing(api_key: bool, jwt: bool) -> Refusal {
        let wanted = Access::Authenticated { api_key, jwt, scope: None };
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            detail: format!("this starter requires {wanted} (X-API-Key: <key>, or Authorization: Bearer <key or JWT>)"),
            challenge: "Bearer realm=\"kiln\"".to_owned(),
        }
    }

    fn invalid(why: &'static str) -> Refusal {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            detail: format!("invalid credentials: {why}"),
            challenge: format!("Bearer realm=\"kiln\", error=\"invalid_token\", error_description=\"{why}\""),
        }
    }

    fn insufficient_scope(scope: &str) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            detail: format!("the credentials do not grant the scope '{scope}' this starter requires"),
            challenge: format!("Bearer realm=\"kiln\", error=\"insufficient_scope\", scope=\"{scope}\""),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = Problem::new(self.status, self.detail).into_response();
        // Scopes and descriptions are printable ASCII without quotes (checked at start).
        if let Ok(challenge) = HeaderValue::from_str(&self.challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// Middleware of the starters: refuses callers their route's [`Access`] does not admit (a
/// refusal counts against the client address's rate limit, so guessing is as slow as
/// starting), and hands the others' [`Caller`] on.
pub(crate) async fn authenticate_starters(State(http): State<KilnHttp>, mut request: Request, next: Next) -> Response {
    let auth = &http.options().starter_auth;
    let path = decoded_path(request.uri().path());
    match auth.authenticate(request.headers(), auth.access_for(&path)) {
        Ok(caller) => {
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            next.run(request).await
        }
        Err(refusal) => {
            if let Err(limited) = rate_limit::charge_address(&http, &request) {
                return limited.into_response();
            }
            tracing::debug!(path = %path, status = %refusal.status, reason = refusal.detail, "starter call refused");
            refusal.into_response()
        }
    }
}

/// A path percent-decoded as axum decodes path parameters (bytes that are not UTF-8 are
/// replaced: axum refuses such a parameter with `400` anyway).
fn decoded_path(path: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::percent_decode_str(path).decode_utf8_lossy()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> (StarterAuth, String, String) {
        let reader = api_keys::new_api_key("reader", &[]).unwrap();
        let jobs = api_keys::new_api_key("jobs-bot", &["jobs:start".to_owned()]).unwrap();
        let keys = ApiKeys::parse(&format!("{}\n{}", reader.line, jobs.line)).unwrap();
        let any_key = Access::Authenticated { api_key: true, jwt: false, scope: None };
        let auth = StarterAuth::new(any_key.clone())
            .unwrap()
            .api_keys(keys)
            .route("/api/open", Access::Open)
            .unwrap()
            .route("/api/jobs/*", Access::Authenticated { api_key: true, jwt: false, scope: Some("jobs:start".into()) })
            .unwrap()
            .route("/api/tokens-only", Access::Authenticated { api_key: false, jwt: true, scope: None })
            .unwrap();
        (auth, reader.key, jobs.key)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (header::HeaderName::from_static(name), value.parse().unwrap())).collect()
    }

    fn check(auth: &StarterAuth, path: &str, pairs: &[(&'static str, &str)]) -> Result<Option<String>, StatusCode> {
        let access = auth.access_for(&decoded_path(path));
        auth.authenticate(&headers(pairs), access).map(|c| c.map(|c| c.id)).map_err(|r| r.status)
    }

    #[test]
    fn each_route_admits_what_its_rule_says() {
        let (auth, reader, jobs) = auth();
        let bearer = |key: &str| format!("Bearer {key}");
        assert_eq!(check(&auth, "/api/open", &[]), Ok(None));
        assert_eq!(check(&auth, "/api/other", &[]), Err(StatusCode::UNAUTHORIZED), "the default");
        assert_eq!(check(&auth, "/api/other", &[("x-api-key", &reader)]), Ok(Some("key:reader".into())));
        assert_eq!(check(&auth, "/api/other", &[("authorization", &bearer(&reader))]), Ok(Some("key:reader".into())));
        assert_eq!(check(&auth, "/api/other", &[("x-api-key", "kiln_nope")]), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(
            check(&auth, "/api/jobs/reports", &[("x-api-key", &reader)]),
            Err(StatusCode::FORBIDDEN),
            "no scope"
        );
        assert_eq!(check(&auth, "/api/jobs/reports", &[("x-api-key", &jobs)]), Ok(Some("key:jobs-bot".into())));
        assert_eq!(
            check(&auth, "/api/jobsx", &[("x-api-key", &reader)]),
            Ok(Some("key:reader".into())),
            "not under /api/jobs/"
        );
        for encoded in ["/api/%6Aobs/reports", "/api/jobs%2Freports", "/api/%6a%6F%62%73/x"] {
            assert_eq!(check(&auth, encoded, &[("x-api-key", &reader)]), Err(StatusCode::FORBIDDEN), "{encoded}");
        }
        assert_eq!(check(&auth, "/api/%6Fpen", &[]), Ok(None), "an encoded open route is open");
        assert_eq!(check(&auth, "/api/%zzopen", &[]), Err(StatusCode::UNAUTHORIZED), "not a valid escape: the default");
        assert_eq!(check(&auth, "/api/tokens-only", &[("x-api-key", &jobs)]), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(check(&auth, "/api/other", &[("authorization", "Basic abc")]), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(check(&auth, "/api/other", &[("authorization", "Bearer ")]), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(
            check(&auth, "/api/other", &[("authorization", "Bearer eyJ.x.y"), ("x-api-key", &reader)]),
            Err(StatusCode::UNAUTHORIZED),
            "Authorization decides when both are sent"
        );
    }

    #[tokio::test]
    async fn refusals_are_problems_with_a_challenge() {
        let response = Refusal::insufficient_scope("jobs:start").into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let challenge = response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap().to_owned();
        assert_eq!(challenge, r#"Bearer realm="kiln", error="insufficient_scope", scope="jobs:start""#);
        assert_eq!(response.headers()[header::CONTENT_TYPE], crate::problem::PROBLEM_JSON);
        let response = Refusal::missing(true, true).into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"kiln\"");
    }

    #[test]
    fn setups_that_refuse_everyone_or_match_nothing_are_errors() {
        let keys_only = Access::Authenticated { api_key: true, jwt: false, scope: None };
        let open = || StarterAuth::new(Access::Open).unwrap();
        assert!(StarterAuth::new(keys_only.clone()).unwrap().validate().is_err(), "no key configured");
        assert!(open().route("/api/x", keys_only.clone()).unwrap().validate().is_err());
        for pattern in ["api/x", "/api/*/x", "/api/{name}", "/api/%65cho"] {
            assert!(open().route(pattern, Access::Open).is_err(), "{pattern}");
        }
        let (auth, _, _) = auth();
        let err = auth.validate().unwrap_err().to_string();
        assert!(err.contains("/api/tokens-only asks for a JWT"), "{err}");
        let line = api_keys::new_api_key("a", &[]).unwrap().line;
        let keyed = StarterAuth::new(keys_only).unwrap().api_keys(ApiKeys::parse(&line).unwrap());
        assert!(keyed.clone().validate().is_ok());
        let bad_scope = Access::Authenticated { api_key: true, jwt: false, scope: Some("a\"b".into()) };
        assert!(keyed.route("/api/y", bad_scope.clone()).is_err());
        assert!(StarterAuth::new(bad_scope).is_err());
    }
}
