//! Per-instance status tokens: an HMAC over the instance id, the granted scopes and an expiry.
//!
//! A status URL carries its token in `?token=`. Whoever holds the URL can read (and, with the
//! `cancel` scope, cancel) that one instance and nothing else. A wrong, foreign or expired token
//! is treated exactly like an unknown instance.

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

    fn allows(code: &str, needed: Scope) -> bool {
        match needed {
            Scope::Read => code.contains('r'),
            Scope::Cancel => code.contains('c'),
        }
    }
}

/// Signs and verifies status tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<secret>)")
    }
}

impl TokenSigner {
    /// A signer with this secret (at least 32 bytes recommended).
    pub fn new(secret: impl Into<Vec<u8>>) -> TokenSigner {
        TokenSigner { secret: secret.into() }
    }

    fn mac(&self, instance_id: &str, expires: i64, scopes: &str) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
        mac.update(instance_id.as_bytes());
        mac.update(b"\0");
        mac.update(expires.to_string().as_bytes());
        mac.update(b"\0");
        mac.update(scopes.as_bytes());
        mac
    }

    /// A token for `instance_id` with `scopes`, valid until `expires_at` (second precision).
    pub fn sign(&self, instance_id: &str, scopes: Scopes, expires_at: Timestamp) -> String {
        let expires = expires_at.millis().div_euclid(1000);
        let code = scopes.encode();
        let tag = self.mac(instance_id, expires, code).finalize().into_bytes();
        format!("{expires}.{code}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// True if `token` was issued for `instance_id`, grants `needed` and has not expired.
    pub fn verify(&self, token: &str, instance_id: &str, needed: Scope, now: Timestamp) -> bool {
        let mut parts = token.splitn(3, '.');
        let (Some(expires), Some(code), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let Ok(expires) = expires.parse::<i64>() else { return false };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else { return false };
        // `verify_slice` compares in constant time.
        let authentic = self.mac(instance_id, expires, code).verify_slice(&tag).is_ok();
        authentic && expires.saturating_mul(1000) > now.millis() && Scopes::allows(code, needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_instance_scope_and_expiry() {
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef".to_vec());
        let now = Timestamp(1_000_000);
        let token = signer.sign("a", Scopes::READ, now.plus_millis(60_000));
        assert!(signer.verify(&token, "a", Scope::Read, now));
        assert!(!signer.verify(&token, "a", Scope::Cancel, now), "scope not granted");
        assert!(!signer.verify(&token, "b", Scope::Read, now), "foreign instance");
        assert!(!signer.verify(&token, "a", Scope::Read, now.plus_millis(61_000)), "expired");
        assert!(!TokenSigner::new(b"other".to_vec()).verify(&token, "a", Scope::Read, now), "other secret");
        assert!(!signer.verify("garbage", "a", Scope::Read, now));
        let forged = token.replace(".r.", ".rc.");
        assert!(!signer.verify(&forged, "a", Scope::Cancel, now), "scopes are signed");
    }
}
