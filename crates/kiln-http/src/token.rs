//! Per-instance status tokens: an HMAC over the instance id, its creation time, the granted
//! scopes and an expiry.
//!
//! A status URL carries its token in `?token=`. Whoever holds the URL can read (and, with the
//! `cancel` scope, cancel) that one instance and nothing else — not another instance created
//! later under the same id (its creation time differs). A wrong, foreign or expired token is
//! treated exactly like an unknown instance.
//!
//! Format: `{expires}.{scopes}.{created}.{tag}` (expiry in Unix seconds, creation in Unix
//! milliseconds, tag base64url). Tokens of the earlier format `{expires}.{scopes}.{tag}`, not
//! bound to a run, are still honoured until they expire, so that status URLs handed out before
//! an upgrade (and by nodes not upgraded yet) keep working.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use kiln::Timestamp;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scopes {
    /// Read the status.
    pub read: bool,
    /// Cancel the instance.
    pub cancel: bool,
}

/// One permission a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Read the status.
    Read,
    /// Cancel the instance.
    Cancel,
}

impl Scopes {
    /// Read and cancel (the default for starters).
    pub const ALL: Scopes = Scopes { read: true, cancel: true };
    /// Read only.
    pub const READ: Scopes = Scopes { read: true, cancel: false };

    fn encode(self) -> &'static str {
        match (self.read, self.cancel) {
            (true, true) => "rc",
            (true, false) => "r",
            (false, true) => "c",
            (false, false) => "-",
        }
    }

    fn decode(code: &str) -> Scopes {
        Scopes { read: code.contains('r'), cancel: code.contains('c') }
    }

    fn allows(code: &str, needed: Scope) -> bool {
        match needed {
            Scope::Read => code.contains('r'),
            Scope::Cancel => code.contains('c'),
        }
    }
}

/// What a verified token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Its scopes.
    pub scopes: Scopes,
    /// The creation time of the instance it was issued for (`None` for a token of the earlier
    /// format, which is not bound to one run).
    pub created_at: Option<Timestamp>,
}

/// Signs status tokens with one secret and verifies them with it or with earlier secrets still
/// honoured during a rotation.
#[derive(Clone)]
pub struct TokenSigner {
    secret: Vec<u8>,
    previous: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<secret>)")
    }
}

impl TokenSigner {
    /// A signer with this secret (at least 32 bytes recommended).
    pub fn new(secret: impl Into<Vec<u8>>) -> TokenSigner {
        TokenSigner { secret: secret.into(), previous: Vec::new() }
    }

    /// Also accepts tokens signed with `previous` secrets (a rotation: keep the old secret here
    /// until the tokens it signed have expired).
    pub fn with_previous(mut self, previous: impl IntoIterator<Item = Vec<u8>>) -> TokenSigner {
        self.previous.extend(previous);
        self
    }

    /// The MAC over `parts`, separated by NULs.
    fn mac(secret: &[u8], parts: &[&str]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
        for (n, part) in parts.iter().enumerate() {
            if n > 0 {
                mac.update(b"\0");
            }
            mac.update(part.as_bytes());
        }
        mac
    }

    /// A token for the instance `instance_id` created at `created_at`, with `scopes`, valid
    /// until `expires_at` (second precision).
    pub fn sign(&self, instance_id: &str, created_at: Timestamp, scopes: Scopes, expires_at: Timestamp) -> String {
        let expires = expires_at.millis().div_euclid(1000);
        let created = created_at.millis();
        let code = scopes.encode();
        let parts = [instance_id, &created.to_string(), &expires.to_string(), code];
        let tag = TokenSigner::mac(&self.secret, &parts).finalize().into_bytes();
        format!("{expires}.{code}.{created}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// What `token` grants, if it was issued for `instance_id`, grants `needed` and has not
    /// expired. The caller must still check [`Grant::created_at`] against the instance it reads.
    pub fn verify(&self, token: &str, instance_id: &str, needed: Scope, now: Timestamp) -> Option<Grant> {
        let mut fields = token.split('.');
        let (expires, code) = (fields.next()?.parse::<i64>().ok()?, fields.next()?);
        let (created, tag) = match fields.collect::<Vec<_>>()[..] {
            [created, tag] => (Some(created.parse::<i64>().ok()?), tag),
            [tag] => (None, tag),
            _ => return None,
        };
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // The MAC covers the numbers as signed (canonical text), the creation only when present.
        let (created_text, expires_text) = (created.map(|c| c.to_string()), expires.to_string());
        let parts: Vec<&str> =
            std::iter::once(instance_id).chain(created_text.as_deref()).chain([expires_text.as_str(), code]).collect();
        // `verify_slice` compares in constant time.
        let authentic = std::iter::once(&self.secret)
            .chain(&self.previous)
            .any(|secret| TokenSigner::mac(secret, &parts).verify_slice(&tag).is_ok());
        let valid = authentic && expires.saturating_mul(1000) > now.millis() && Scopes::allows(code, needed);
        valid.then(|| Grant { scopes: Scopes::decode(code), created_at: created.map(Timestamp) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_instance_creation_scope_and_expiry() {
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef".to_vec());
        let now = Timestamp(1_000_000);
        let created = Timestamp(999_123);
        let token = signer.sign("a", created, Scopes::READ, now.plus_millis(60_000));
        assert_eq!(
            signer.verify(&token, "a", Scope::Read, now),
            Some(Grant { scopes: Scopes::READ, created_at: Some(created) })
        );
        assert!(signer.verify(&token, "a", Scope::Cancel, now).is_none(), "scope not granted");
        assert!(signer.verify(&token, "b", Scope::Read, now).is_none(), "foreign instance");
        assert!(signer.verify(&token, "a", Scope::Read, now.plus_millis(61_000)).is_none(), "expired");
        assert!(TokenSigner::new(b"other".to_vec()).verify(&token, "a", Scope::Read, now).is_none(), "other secret");
        assert!(signer.verify("garbage", "a", Scope::Read, now).is_none());
        let forged = token.replace(".r.", ".rc.");
        assert!(signer.verify(&forged, "a", Scope::Cancel, now).is_none(), "scopes are signed");
        let moved = token.replace(".999123.", ".999124.");
        assert!(signer.verify(&moved, "a", Scope::Read, now).is_none(), "the creation is signed");
        // A token of the earlier format (no creation) is honoured, bound to no run.
        let secret = b"0123456789abcdef0123456789abcdef";
        let expires = now.plus_millis(60_000).millis() / 1000;
        let tag = TokenSigner::mac(secret, &["a", &expires.to_string(), "r"]).finalize().into_bytes();
        let legacy = format!("{expires}.r.{}", URL_SAFE_NO_PAD.encode(tag));
        let grant = Grant { scopes: Scopes::READ, created_at: None };
        assert_eq!(signer.verify(&legacy, "a", Scope::Read, now), Some(grant));
        assert!(signer.verify(&legacy, "b", Scope::Read, now).is_none());
        assert!(signer.verify(&format!("{token}.x"), "a", Scope::Read, now).is_none(), "five parts");
        // A rotation: the new secret signs, the old one still verifies.
        let rotated = TokenSigner::new(b"new".to_vec()).with_previous([b"0123456789abcdef0123456789abcdef".to_vec()]);
        assert!(rotated.verify(&token, "a", Scope::Read, now).is_some(), "an old token still works");
        let fresh = rotated.sign("a", created, Scopes::READ, now.plus_millis(60_000));
        assert!(signer.verify(&fresh, "a", Scope::Read, now).is_none(), "new tokens use the new secret");
    }
}
