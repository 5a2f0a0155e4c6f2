//! JWT bearer tokens for the starters, verified against keys the operator configures: a JWKS
//! document (as an identity provider publishes it, saved to a file), PEM public keys, or a shared
//! HMAC secret.
//!
//! A token passes when its signature verifies with a configured key of the algorithm its header
//! names (a key never verifies another algorithm family's signature, so an RSA public key cannot
//! be replayed as an HMAC secret), its `iss` and `aud` are the configured ones, it has not
//! expired and is not early (`exp`, `nbf`, with a small leeway), and it names its `sub`ject. Its
//! scopes are read from `scope` and `scp` (a space-separated string or an array) or other claims
//! the operator names (e.g. Microsoft Entra ID's `roles`).

use super::Caller;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

/// Checks JWT bearer tokens.
#[derive(Clone)]
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    keys: Vec<VerificationKey>,
    leeway: Duration,
    scope_claims: Vec<String>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct VerificationKey {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Why a verifier cannot be set up (a configuration error).
#[derive(Debug, thiserror::Error)]
#[error("JWT configuration: {0}")]
pub struct JwtConfigError(String);

/// Why a token was refused: said to the client (`error_description`), so it names no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JwtRejection(&'static str);

impl JwtRejection {
    /// The reason, in words.
    pub fn reason(&self) -> &'static str {
        self.0
    }
}

/// The most clock skew a verifier allows.
pub const MAX_LEEWAY: Duration = Duration::from_secs(600);

/// Longest subject kept (it names the caller's rate-limit bucket).
const MAX_SUBJECT_LEN: usize = 256;

/// Shortest HMAC secret (RFC 7518 §3.2: at least the hash's size).
const MIN_HMAC_SECRET: usize = 32;

impl JwtVerifier {
    /// A verifier for tokens from `issuer` meant for `audience`, with no key yet.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Result<JwtVerifier, JwtConfigError> {
        let (issuer, audience) = (issuer.into(), audience.into());
        if issuer.trim().is_empty() || audience.trim().is_empty() {
            return Err(JwtConfigError(
                "issuer and audience must be set: a token meant for another service must not pass".into(),
            ));
        }
        Ok(JwtVerifier {
            issuer,
            audience,
            keys: Vec::new(),
            leeway: Duration::from_secs(60),
            scope_claims: vec!["scope".to_owned(), "scp".to_owned()],
        })
    }

    /// Adds every signing key of a JWKS document (`{"keys": [...]}`); keys marked for
    /// encryption (`"use": "enc"`) are skipped.
    pub fn with_jwks(mut self, jwks_json: &str) -> Result<JwtVerifier, JwtConfigError> {
        let set: JwkSet = serde_json::from_str(jwks_json)
            .map_err(|err| JwtConfigError(format!("the JWKS is not a valid key set: {err}")))?;
        let before = self.keys.len();
        for jwk in &set.keys {
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            let named = |what: &str| match &jwk.common.key_id {
                Some(id) => format!("JWKS key '{id}': {what}"),
                None => format!("a JWKS key without kid: {what}"),
            };
            let algorithm = match jwk.common.key_algorithm {
                Some(KeyAlgorithm::UNKNOWN_ALGORITHM) | None => default_algorithm(&jwk.algorithm),
                Some(algorithm) => Algorithm::from_str(&algorithm.to_string()).ok(),
            }
            .ok_or_else(|| {
                JwtConfigError(named("its algorithm is not one Kiln verifies (RS*, PS*, ES256/384, EdDSA, HS*)"))
            })?;
            let key = DecodingKey::from_jwk(jwk).map_err(|err| JwtConfigError(named(&err.to_string())))?;
            if key.family() != algorithm.family() {
                return Err(JwtConfigError(named("its key type does not fit its algorithm")));
            }
            if key.try_get_hmac_secret().is_ok_and(|secret| secret.len() < MIN_HMAC_SECRET) {
                return Err(JwtConfigError(named("an HMAC key must be at least 32 bytes")));
            }
            self.keys.push(VerificationKey { id: jwk.common.key_id.clone(), algorithm, key });
        }
        if self.keys.len() == before {
            return Err(JwtConfigError("the JWKS holds no signing key".into()));
        }
        Ok(self)
    }

    /// Adds a PEM public key (RSA, EC or Ed25519) for `algorithm`, with an optional key id.
    pub fn with_pem_key(
        mut self,
        algorithm: Algorithm,
        pem: &[u8],
        id: Option<String>,
    ) -> Result<JwtVerifier, JwtConfigError> {
        use jsonwebtoken::AlgorithmFamily::{Ec, Ed, Hmac, Rsa};
        let key = match algorithm.family() {
            Rsa => DecodingKey::from_rsa_pem(pem),
            Ec => DecodingKey::from_ec_pem(pem),
            Ed => DecodingKey::from_ed_pem(pem),
            Hmac => return Err(JwtConfigError("an HMAC algorithm takes a shared secret, not a PEM key".into())),
        }
        .map_err(|err| JwtConfigError(format!("the {algorithm:?} PEM key cannot be read: {err}")))?;
        self.keys.push(VerificationKey { id, algorithm, key });
        Ok(self)
    }

    /// Adds a shared secret for HS256 (at least 32 bytes, as RFC 7518 asks).
    pub fn with_hmac_secret(mut self, secret: &[u8]) -> Result<JwtVerifier, JwtConfigError> {
        if secret.len() < MIN_HMAC_SECRET {
            return Err(JwtConfigError("the HMAC secret must be at least 32 bytes".into()));
        }
        self.keys.push(VerificationKey {
            id: None,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        });
        Ok(self)
    }

    /// How far `exp` and `nbf` may be off (clock skew): one minute by default, at most
    /// [`MAX_LEEWAY`].
    pub fn with_leeway(mut self, leeway: Duration) -> JwtVerifier {
        self.leeway = leeway.min(MAX_LEEWAY);
        self
    }

    /// The claims scopes are read from (default `scope` and `scp`).
    pub fn with_scope_claims(mut self, claims: Vec<String>) -> JwtVerifier {
        self.scope_claims = claims;
        self
    }

    /// Whether any key is configured.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The caller a token speaks for, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Caller, JwtRejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtRejection("the bearer token is not a JWT"))?;
        let mut candidates = self
            .keys
            .iter()
            .filter(|key| key.algorithm == header.alg)
            .filter(|key| header.kid.is_none() || key.id.is_none() || key.id == header.kid)
            .peekable();
        if candidates.peek().is_none() {
            return Err(JwtRejection("no configured key verifies this token's algorithm and key id"));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        let mut rejection = JwtRejection("the token's signature does not verify");
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return self.caller(&data.claims),
                Err(err) if matches!(err.kind(), ErrorKind::InvalidSignature) => continue,
                Err(err) => {
                    rejection = rejection_of(err.kind());
                    break;
                }
            }
        }
        Err(rejection)
    }

    fn caller(&self, claims: &Map<String, Value>) -> Result<Caller, JwtRejection> {
        // Present, and matching, by the validation; one issuer, not a list that holds it.
        if !claims.get("iss").is_some_and(Value::is_string) {
            return Err(JwtRejection("the token's iss must be one string"));
        }
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|sub| (1..=MAX_SUBJECT_LEN).contains(&sub.len()))
            .ok_or(JwtRejection("the token's sub must be a string of 1 to 256 bytes"))?;
        let mut scopes = BTreeSet::new();
        for claim in &self.scope_claims {
            match claims.get(claim) {
                Some(Value::String(list)) => {
                    scopes.extend(list.split(' ').filter(|s| !s.is_empty()).map(str::to_owned))
                }
                Some(Value::Array(items)) => scopes.extend(items.iter().filter_map(Value::as_str).map(str::to_owned)),
                _ => {}
            }
        }
        Ok(Caller { id: format!("jwt:{subject}"), scopes })
    }
}

/// What a JWK's key type implies when it names no algorithm.
fn default_algorithm(parameters: &AlgorithmParameters) -> Option<Algorithm> {
    match parameters {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            EllipticCurve::P521 | EllipticCurve::Ed25519 => None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => (okp.curve == EllipticCurve::Ed25519).then_some(Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => Some(Algorithm::HS256),
    }
}

fn rejection_of(kind: &ErrorKind) -> JwtRejection {
    JwtRejection(match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "the token's issuer is not the configured one",
        ErrorKind::InvalidAudience => "the token is not meant for this service (aud)",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp, iss, aud and sub)",
        ErrorKind::InvalidClaimFormat(_) => "a claim of the token has the wrong type",
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not fit the key",
        _ => "the token is malformed",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims() -> Value {
        json!({ "iss": "https://idp.example", "aud": "kiln", "sub": "ci-bot", "exp": now() + 300, "scope": "jobs:start read" })
    }

    fn hs256(claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new("https://idp.example", "kiln").unwrap().with_hmac_secret(SECRET).unwrap()
    }

    /// An Ed25519 key pair: the signing key and the JWK of its public half.
    fn ed25519_pair(kid: &str) -> (EncodingKey, Value) {
        let seed: [u8; 32] = *uuid::Uuid::new_v4().as_bytes().repeat(2).first_chunk().unwrap();
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let mut pkcs8 =
            vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        pkcs8.extend_from_slice(&seed);
        let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(public) });
        (EncodingKey::from_ed_der(&pkcs8), jwk)
    }

    #[test]
    fn a_valid_token_names_its_subject_and_scopes() {
        let caller = verifier().verify(&hs256(&claims())).unwrap();
        assert_eq!(caller.id, "jwt:ci-bot");
        assert_eq!(caller.scopes.into_iter().collect::<Vec<_>>(), ["jobs:start", "read"]);
        let mut roles = claims();
        roles["roles"] = json!(["Starter"]);
        let caller = verifier().with_scope_claims(vec!["roles".into()]).verify(&hs256(&roles)).unwrap();
        assert_eq!(caller.scopes.into_iter().collect::<Vec<_>>(), ["Starter"]);
    }

    #[test]
    fn every_broken_claim_is_refused() {
        let cases: [(&str, Value, &str); 8] = [
            ("exp", json!(now() - 3_600), "expired"),
            ("exp", json!("99999999999"), "lacks a required claim"),
            ("nbf", json!(now() + 3_600), "not valid yet"),
            ("nbf", json!("99999999999"), "wrong type"),
            ("iss", json!("https://evil.example"), "issuer"),
            ("aud", json!("another-service"), "aud"),
            ("sub", Value::Null, "required claim"),
            ("exp", Value::Null, "required claim"),
        ];
        for (claim, value, expected) in cases {
            let mut claims = claims();
            match value {
                Value::Null => drop(claims.as_object_mut().unwrap().remove(claim)),
                value => claims[claim] = value,
            }
            let rejection = verifier().verify(&hs256(&claims)).unwrap_err();
            assert!(rejection.0.contains(expected), "{claim}: {rejection}");
        }
        for (claim, value) in [("sub", json!(7)), ("sub", json!("")), ("sub", json!("x".repeat(257)))] {
            let mut claims = claims();
            claims[claim] = value;
            assert!(verifier().verify(&hs256(&claims)).is_err(), "{claims}");
        }
        let mut issuers = claims();
        issuers["iss"] = json!(["https://idp.example", "https://evil.example"]);
        let rejection = verifier().verify(&hs256(&issuers)).unwrap_err();
        assert!(rejection.0.contains("one string"), "{rejection}");
    }

    #[test]
    fn forged_and_confused_tokens_are_refused() {
        let token = hs256(&claims());
        let (head, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let mut forged = claims();
        forged["sub"] = json!("admin");
        let forged_body = URL_SAFE_NO_PAD.encode(forged.to_string());
        assert!(verifier().verify(&format!("{head}.{forged_body}.{signature}")).is_err(), "a swapped body");
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        assert!(verifier().verify(&format!("{none_header}.{forged_body}.")).is_err(), "alg none");
        let other =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(&[7; 32]));
        assert!(verifier().verify(&other.unwrap()).is_err(), "another secret");
        // An Ed25519 verifier must not take the public key as an HMAC secret.
        let (_, jwk) = ed25519_pair("k1");
        let ed_only = JwtVerifier::new("https://idp.example", "kiln").unwrap();
        let ed_only = ed_only.with_jwks(&json!({ "keys": [jwk] }).to_string()).unwrap();
        let public = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        let confused =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(&public));
        let rejection = ed_only.verify(&confused.unwrap()).unwrap_err();
        assert!(rejection.0.contains("no configured key"), "{rejection}");
        assert!(verifier().verify("not-a-token").is_err() && verifier().verify("").is_err());
    }

    #[test]
    fn jwks_keys_are_chosen_by_key_id() {
        let (signing_1, jwk_1) = ed25519_pair("k1");
        let (signing_2, jwk_2) = ed25519_pair("k2");
        let jwks = json!({ "keys": [jwk_1, jwk_2, { "kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB" }] });
        let verifier = JwtVerifier::new("https://idp.example", "kiln").unwrap().with_jwks(&jwks.to_string()).unwrap();
        let sign = |key: &EncodingKey, kid: Option<&str>| {
            let header = Header { kid: kid.map(str::to_owned), ..Header::new(Algorithm::EdDSA) };
            jsonwebtoken::encode(&header, &claims(), key).unwrap()
        };
        assert!(verifier.verify(&sign(&signing_1, Some("k1"))).is_ok());
        assert!(verifier.verify(&sign(&signing_2, Some("k2"))).is_ok());
        assert!(verifier.verify(&sign(&signing_2, None)).is_ok(), "without kid, every key of the algorithm is tried");
        assert!(verifier.verify(&sign(&signing_2, Some("k1"))).is_err(), "k1 does not verify k2's signature");
        assert!(verifier.verify(&sign(&signing_1, Some("k9"))).is_err(), "unknown kid");
    }

    #[test]
    fn bad_configuration_is_refused() {
        assert!(JwtVerifier::new("", "kiln").is_err() && JwtVerifier::new("iss", " ").is_err());
        let base = || JwtVerifier::new("iss", "aud").unwrap();
        assert!(base().with_hmac_secret(b"short").is_err());
        assert!(base().with_jwks("{").is_err());
        assert!(base().with_jwks(r#"{"keys": []}"#).is_err());
        assert!(base().with_jwks(r#"{"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]}"#).is_err());
        assert!(base().with_jwks(r#"{"keys": [{"kty": "oct", "k": "AQ"}]}"#).is_err(), "a one-byte HMAC key");
        let long = base().with_hmac_secret(&[1; 32]).unwrap().with_leeway(Duration::MAX);
        assert_eq!(long.leeway, MAX_LEEWAY);
        assert!(long.verify(&hs256(&claims())).is_err(), "no overflow, and not this secret");
        assert!(
            base()
                .with_pem_key(Algorithm::RS256, b"-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n", None)
                .is_err()
        );
        assert!(base().with_pem_key(Algorithm::HS256, b"", None).is_err());
    }
}
