//! The `[starter_auth]` section of `kiln.toml` (with `KILN_STARTER_ACCESS`, `KILN_API_KEYS`
//! and `KILN_JWT_HMAC_SECRET`), read into [`kiln_http::StarterAuth`] at start: key files are
//! read and every rule checked before anything is served.
//!
//! ```toml
//! [starter_auth]
//! access = "any"                       # open | api_key | jwt | any (default: open)
//! api_keys_file = "api-keys.txt"       # lines of `NAME sha256:HEX [SCOPES]`
//!
//! [starter_auth.jwt]
//! issuer = "https://login.example.com/"
//! audience = "kiln"
//! jwks_file = "jwks.json"
//!
//! [[starter_auth.routes]]
//! path = "/api/jobs/*"
//! access = "api_key"
//! scope = "jobs:start"
//! ```

use anyhow::Context;
use kiln_http::auth::{ApiKeys, JwtVerifier};
use kiln_http::{Access, StarterAuth};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Which credentials a starter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AccessKind {
    /// Anyone may call.
    Open,
    /// An API key.
    #[value(alias = "api_key")]
    ApiKey,
    /// A JWT bearer token.
    Jwt,
    /// An API key or a JWT.
    Any,
}

/// `[starter_auth]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StarterAuthSettings {
    /// What starters without a matching route rule take (default `open`).
    pub access: Option<AccessKind>,
    /// A scope every such starter requires.
    pub scope: Option<String>,
    /// The API key list.
    pub api_keys_file: Option<PathBuf>,
    /// How JWTs are verified.
    pub jwt: Option<JwtSettings>,
    /// Rules per path pattern, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
}

/// `[starter_auth.jwt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// A JWKS document saved from the identity provider.
    pub jwks_file: Option<PathBuf>,
    /// PEM public keys.
    #[serde(default)]
    pub keys: Vec<PemKeySettings>,
    /// How far `exp`/`nbf` may be off, in seconds (default 60).
    pub leeway_seconds: Option<u64>,
    /// Claims the scopes are read from (default `scope` and `scp`).
    pub scope_claims: Option<Vec<String>>,
}

/// One `[[starter_auth.jwt.keys]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PemKeySettings {
    /// The PEM file of the public key.
    pub file: PathBuf,
    /// Its algorithm (`RS256`, `ES256`, `EdDSA`, …).
    pub algorithm: String,
    /// The `kid` tokens signed with it name, if any.
    pub kid: Option<String>,
}

/// One `[[starter_auth.routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// A path, or a prefix ending in `*`.
    pub path: String,
    /// What it takes.
    pub access: AccessKind,
    /// A scope it requires.
    pub scope: Option<String>,
}

/// Where the settings' secrets may also come from (the environment, or flags).
#[derive(Debug, Default, Clone)]
pub struct AuthSecrets {
    /// The default access, over the file's.
    pub access: Option<AccessKind>,
    /// API key lines, besides the file's.
    pub api_keys: Option<String>,
    /// A shared HS256 secret.
    pub jwt_hmac_secret: Option<String>,
}

/// Builds and checks the starters' authentication.
pub fn build(settings: StarterAuthSettings, secrets: AuthSecrets) -> anyhow::Result<StarterAuth> {
    let access = |kind: AccessKind, scope: Option<String>| match kind {
        AccessKind::Open => Access::Open,
        AccessKind::ApiKey => Access::Authenticated { api_key: true, jwt: false, scope },
        AccessKind::Jwt => Access::Authenticated { api_key: false, jwt: true, scope },
        AccessKind::Any => Access::Authenticated { api_key: true, jwt: true, scope },
    };
    if secrets.access == Some(AccessKind::Open) && settings.access.is_some_and(|kind| kind != AccessKind::Open) {
        eprintln!(
            "warning: KILN_STARTER_ACCESS (or --starter-access) = open overrides kiln.toml's starter_auth.access"
        );
    }
    let default_kind = secrets.access.or(settings.access).unwrap_or(AccessKind::Open);
    if default_kind == AccessKind::Open && settings.scope.is_some() {
        anyhow::bail!("starter_auth.scope needs an access other than open");
    }
    let mut auth = StarterAuth::new(access(default_kind, settings.scope))?;
    for route in settings.routes {
        if route.access == AccessKind::Open && route.scope.is_some() {
            anyhow::bail!("starter_auth.routes '{}': a scope needs an access other than open", route.path);
        }
        auth = auth.route(&route.path, access(route.access, route.scope))?;
    }
    let mut keys = ApiKeys::default();
    if let Some(path) = &settings.api_keys_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        keys = ApiKeys::parse(&text).with_context(|| path.display().to_string())?;
    }
    if let Some(lines) = &secrets.api_keys {
        // The environment may hold the list on one line, entries separated by ';'.
        let listed = ApiKeys::parse(&lines.replace(';', "\n")).context("KILN_API_KEYS")?;
        keys = keys.merge(listed).map_err(anyhow::Error::msg)?;
    }
    auth = auth.api_keys(keys);
    match (settings.jwt, secrets.jwt_hmac_secret) {
        (Some(jwt), secret) => auth = auth.jwt(verifier(jwt, secret)?),
        (None, Some(_)) => anyhow::bail!("KILN_JWT_HMAC_SECRET needs a [starter_auth.jwt] section (issuer, audience)"),
        (None, None) => {}
    }
    auth.validate()?;
    Ok(auth)
}

fn verifier(settings: JwtSettings, hmac_secret: Option<String>) -> anyhow::Result<JwtVerifier> {
    let mut verifier = JwtVerifier::new(settings.issuer, settings.audience)?;
    if let Some(path) = &settings.jwks_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        verifier = verifier.with_jwks(&text).with_context(|| path.display().to_string())?;
    }
    for key in settings.keys {
        let algorithm = key
            .algorithm
            .parse()
            .map_err(|_| anyhow::anyhow!("starter_auth.jwt.keys: unknown algorithm '{}'", key.algorithm))?;
        let pem = std::fs::read(&key.file).with_context(|| format!("cannot read {}", key.file.display()))?;
        verifier = verifier.with_pem_key(algorithm, &pem, key.kid).with_context(|| key.file.display().to_string())?;
    }
    if let Some(secret) = hmac_secret {
        verifier = verifier.with_hmac_secret(secret.as_bytes()).context("KILN_JWT_HMAC_SECRET")?;
    }
    if !verifier.has_keys() {
        anyhow::bail!("[starter_auth.jwt] has no key: set jwks_file, keys or KILN_JWT_HMAC_SECRET");
    }
    if let Some(seconds) = settings.leeway_seconds {
        let leeway = Duration::from_secs(seconds);
        if leeway > kiln_http::auth::jwt::MAX_LEEWAY {
            anyhow::bail!(
                "starter_auth.jwt.leeway_seconds must be at most {}",
                kiln_http::auth::jwt::MAX_LEEWAY.as_secs()
            );
        }
        verifier = verifier.with_leeway(leeway);
    }
    if let Some(claims) = settings.scope_claims {
        verifier = verifier.with_scope_claims(claims);
    }
    Ok(verifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> StarterAuthSettings {
        #[derive(Deserialize)]
        struct File {
            starter_auth: StarterAuthSettings,
        }
        toml::from_str::<File>(toml_text).unwrap().starter_auth
    }

    #[test]
    fn a_full_section_builds_and_every_mistake_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let line = kiln_http::auth::api_keys::new_api_key("bot", &["jobs:start".into()]).unwrap().line;
        std::fs::write(dir.path().join("keys.txt"), format!("{line}\n")).unwrap();
        let keys_file = dir.path().join("keys.txt").display().to_string();
        let text = format!(
            "[starter_auth]\naccess = \"api_key\"\napi_keys_file = \"{keys_file}\"\n\
             [[starter_auth.routes]]\npath = \"/api/jobs/*\"\naccess = \"api_key\"\nscope = \"jobs:start\"\n\
             [[starter_auth.routes]]\npath = \"/api/open\"\naccess = \"open\"\n"
        );
        let auth = build(parse(&text), AuthSecrets::default()).unwrap();
        assert_eq!(auth.access_for("/api/open"), &Access::Open);
        assert!(matches!(auth.access_for("/api/jobs/x"), Access::Authenticated { scope: Some(_), .. }));
        assert!(!auth.is_open_everywhere());

        let secrets = |access| AuthSecrets { access: Some(access), ..AuthSecrets::default() };
        let open = build(parse(&text), secrets(AccessKind::Open)).unwrap();
        assert_eq!(open.access_for("/api/other"), &Access::Open, "the flag overrides the file's default");
        let mistakes = [
            ("[starter_auth]\naccess = \"jwt\"\n", "asks for a JWT"),
            ("[starter_auth]\nscope = \"x\"\n", "other than open"),
            ("[starter_auth]\napi_keys_file = \"/nonexistent/keys\"\n", "cannot read"),
            ("[starter_auth.jwt]\nissuer = \"i\"\naudience = \"a\"\n", "has no key"),
            ("[starter_auth.jwt]\nissuer = \"\"\naudience = \"a\"\n", "issuer and audience"),
            ("[[starter_auth.routes]]\npath = \"api\"\naccess = \"open\"\n", "starting with '/'"),
        ];
        for (text, expected) in mistakes {
            let err = format!("{:#}", build(parse(text), AuthSecrets::default()).unwrap_err());
            assert!(err.contains(expected), "{text}: {err}");
        }
        let hmac = AuthSecrets { jwt_hmac_secret: Some("x".repeat(40)), ..AuthSecrets::default() };
        assert!(build(parse("[starter_auth]\n"), hmac.clone()).is_err(), "a secret without issuer and audience");
        let jwt = parse("[starter_auth]\naccess = \"jwt\"\n[starter_auth.jwt]\nissuer = \"i\"\naudience = \"a\"\n");
        assert!(build(jwt, hmac).is_ok());
        let env_keys = AuthSecrets { api_keys: Some(format!("{line};")), ..secrets(AccessKind::ApiKey) };
        assert!(build(parse("[starter_auth]\n"), env_keys).is_ok(), "keys from the environment, ';'-separated");
    }
}
