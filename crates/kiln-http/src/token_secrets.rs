//! The secrets that sign status tokens: configured (`token_secret`, `previous_token_secrets`),
//! or kept in the store — generated once, rotated on demand, and reloaded by every node.
//!
//! A rotation ([`TokenSecrets::rotate`], `kiln keys rotate`) first adds the current secret to
//! the retired ones (`http.previous_token_secrets`, each with the time it retired), then
//! replaces the current one (`http.token_secret`) by compare-and-set, so concurrent rotations
//! cannot lose a secret. Tokens signed with a retired secret verify until they could have
//! expired (`token_ttl` after it retired, plus [`RETIRED_GRACE`] for nodes that signed with it
//! until their next reload, and for clock skew); then it is dropped. At most [`MAX_RETIRED`]
//! are kept.
//!
//! Every node reloads the secrets every [`RELOAD_INTERVAL`], and when a token fails to verify it
//! reads the current secret (one point read, shared by the misses waiting for it) and reloads
//! if another node rotated it: a token signed by a node that rotated is accepted everywhere at
//! its first poll. A rotation that would retire more than [`MAX_RETIRED`] secrets still in use
//! is refused.

use crate::token::{Grant, Scope, Scopes, TokenSigner};
use kiln::{ClientError, KilnClient, Timestamp};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The stored setting that holds the current secret.
const CURRENT: &str = "http.token_secret";
/// The stored setting that holds the retired secrets (JSON).
const RETIRED: &str = "http.previous_token_secrets";
/// How often a node reloads stored secrets.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// How long a retired secret is accepted beyond a token's life.
const RETIRED_GRACE: Duration = Duration::from_secs(5 * 60);
/// Most retired secrets kept (each costs an HMAC when a token fails to verify).
const MAX_RETIRED: usize = 16;
/// Longest a token's miss waits for the store before the request is answered `503`.
const MISS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts of a rotation racing other rotations.
const ROTATION_ATTEMPTS: usize = 5;

/// A retired secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Retired {
    secret: String,
    /// When it stopped signing, in Unix milliseconds.
    retired_at: i64,
}

/// Why secrets cannot be rotated.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The secret comes from configuration: rotate it there.
    #[error("token_secret is configured: rotate it in the configuration (docs/security.md)")]
    Configured,
    /// Other rotations kept winning.
    #[error("other rotations kept changing the secret; try again")]
    Contended,
    /// As many retired secrets as are kept still verify tokens.
    #[error("{MAX_RETIRED} retired token secrets still verify live tokens; rotate again after {until}")]
    TooMany {
        /// When the oldest stops verifying.
        until: Timestamp,
    },
    /// The retired secrets could not be written down.
    #[error("cannot encode the retired secrets: {0}")]
    Encoding(String),
    /// The store failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The signer in force, and where its secrets come from.
pub(crate) struct TokenSecrets {
    in_force: RwLock<Arc<InForce>>,
    /// `None` when the secret is configured (never reloaded).
    stored: Option<Stored>,
}

/// A signer, and the current secret it signs with.
struct InForce {
    signer: TokenSigner,
    current: String,
}

struct Stored {
    /// How long a token lives: how long a retired secret stays accepted.
    ttl: Duration,
    /// Configured earlier secrets, accepted besides the stored ones.
    configured_previous: Vec<Vec<u8>>,
    /// When the last completed check of the stored secret (for a token's miss) started; held
    /// while checking, so that checks run one at a time.
    last_check: tokio::sync::Mutex<Option<Instant>>,
}

impl TokenSecrets {
    /// The configured secret, or the stored ones (generated when there are none yet).
    pub(crate) async fn new(
        client: &KilnClient,
        configured: Option<&str>,
        configured_previous: &[String],
        ttl: Duration,
    ) -> Result<TokenSecrets, ClientError> {
        let previous: Vec<Vec<u8>> = configured_previous.iter().map(|s| s.clone().into_bytes()).collect();
        if let Some(secret) = configured {
            let signer = TokenSigner::new(secret.as_bytes().to_vec()).with_previous(previous);
            let in_force = InForce { signer, current: secret.to_owned() };
            return Ok(TokenSecrets { in_force: RwLock::new(Arc::new(in_force)), stored: None });
        }
        let stored = Stored { ttl, configured_previous: previous, last_check: tokio::sync::Mutex::new(None) };
        let in_force = stored.load(client).await?;
        Ok(TokenSecrets { in_force: RwLock::new(Arc::new(in_force)), stored: Some(stored) })
    }

    fn in_force(&self) -> Arc<InForce> {
        Arc::clone(&self.in_force.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Signs a token with the current secret.
    pub(crate) fn sign(
        &self,
        instance_id: &str,
        created_at: Timestamp,
        scopes: Scopes,
        expires_at: Timestamp,
    ) -> String {
        self.in_force().signer.sign(instance_id, created_at, scopes, expires_at)
    }

    /// Verifies a token. On a miss, makes sure the secrets in force are the stored ones as of
    /// after this request arrived (another node may have rotated them): one check at a time, and
    /// a request that waited for a check started after it arrived takes that check's verdict. A
    /// forged token so costs at most one settings read, shared, and no valid token is refused
    /// for another's sake. `Err` when the store cannot say in time.
    pub(crate) async fn verify(
        &self,
        client: &KilnClient,
        token: &str,
        instance_id: &str,
        needed: Scope,
        now: Timestamp,
    ) -> Result<Option<Grant>, ClientError> {
        let verify = || self.in_force().signer.verify(token, instance_id, needed, now);
        if let Some(grant) = verify() {
            return Ok(Some(grant));
        }
        let Some(stored) = &self.stored else { return Ok(None) };
        let arrived = Instant::now();
        let mut last_check = stored.last_check.lock().await;
        if last_check.is_some_and(|started| started >= arrived) {
            return Ok(verify());
        }
        let started = Instant::now();
        let known = self.in_force().current.clone();
        let read = tokio::time::timeout(MISS_CHECK_TIMEOUT, client.setting(CURRENT)).await;
        let current = read.map_err(|_| unavailable("reading the token secret took too long"))??;
        if current.is_some_and(|current| current != known) {
            self.reload(client).await?;
        }
        *last_check = Some(started);
        Ok(verify())
    }

    /// Reads the stored secrets again (nothing to do when they are configured).
    pub(crate) async fn reload(&self, client: &KilnClient) -> Result<(), ClientError> {
        let Some(stored) = &self.stored else { return Ok(()) };
        let in_force = stored.load(client).await?;
        *self.in_force.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(in_force);
        Ok(())
    }

    /// Whether secrets come from the store (and are reloaded).
    pub(crate) fn is_stored(&self) -> bool {
        self.stored.is_some()
    }

    /// Replaces the stored secret by a new one; the old one is accepted until `accepted_until`.
    pub(crate) async fn rotate(&self, client: &KilnClient) -> Result<Rotation, RotateError> {
        let stored = self.stored.as_ref().ok_or(RotateError::Configured)?;
        for _ in 0..ROTATION_ATTEMPTS {
            let current = client.secret(CURRENT).await?;
            let retired_json = client.setting(RETIRED).await?;
            let now = kiln_core::time::now();
            let mut retired = stored.unexpired(retired_json.as_deref(), now);
            // Listed already when an earlier rotation stopped between its two writes: it signs
            // until now, so it retires now.
            retired.retain(|r| r.secret != current);
            retired.insert(0, Retired { secret: current.clone(), retired_at: now.millis() });
            if retired.len() > MAX_RETIRED {
                let oldest = retired.iter().map(|r| r.retired_at).min().unwrap_or(now.millis());
                return Err(RotateError::TooMany { until: Timestamp(oldest.saturating_add(stored.accepted_for())) });
            }
            let retired_now = serde_json::to_string(&retired).map_err(|e| RotateError::Encoding(e.to_string()))?;
            if !client.replace_setting(RETIRED, retired_json.as_deref(), &retired_now).await? {
                continue;
            }
            if client.replace_setting(CURRENT, Some(&current), &KilnClient::generate_secret()).await? {
                if let Err(err) = self.reload(client).await {
                    // Rotated all the same: the next reload (or a token's miss) picks it up.
                    tracing::warn!(error = %err, "rotated the token secret, but cannot reload it yet");
                }
                let accepted_until = now.plus_millis(stored.accepted_for());
                return Ok(Rotation { rotated_at: now, previous_accepted_until: accepted_until });
            }
        }
        Err(RotateError::Contended)
    }
}

fn unavailable(why: &str) -> ClientError {
    ClientError::Store(kiln::StoreError::Unavailable(why.to_owned()))
}

/// What a rotation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rotation {
    /// When the new secret started signing.
    pub(crate) rotated_at: Timestamp,
    /// Until when tokens signed with the old one verify.
    pub(crate) previous_accepted_until: Timestamp,
}

impl Stored {
    /// A signer for the stored secrets: the current one (generated if there is none) and the
    /// retired ones still accepted, then the configured earlier ones.
    async fn load(&self, client: &KilnClient) -> Result<InForce, ClientError> {
        let current = client.secret(CURRENT).await?;
        let retired = self.unexpired(client.setting(RETIRED).await?.as_deref(), kiln_core::time::now());
        let previous =
            retired.into_iter().map(|r| r.secret.into_bytes()).chain(self.configured_previous.iter().cloned());
        Ok(InForce { signer: TokenSigner::new(current.clone().into_bytes()).with_previous(previous), current })
    }

    /// The retired secrets in `json` whose tokens may still be alive at `now`, newest first. An
    /// unreadable list is logged and treated as empty (tokens it signed are refused, like
    /// expired ones), never a failure to serve.
    fn unexpired(&self, json: Option<&str>, now: Timestamp) -> Vec<Retired> {
        let mut retired: Vec<Retired> = match json.map(serde_json::from_str) {
            None => Vec::new(),
            Some(Ok(retired)) => retired,
            Some(Err(err)) => {
                tracing::warn!(error = %err, "the stored previous token secrets are unreadable; ignoring them");
                Vec::new()
            }
        };
        let accepted_for = self.accepted_for();
        retired.retain(|r| r.retired_at.saturating_add(accepted_for) > now.millis());
        retired.sort_by_key(|r| std::cmp::Reverse(r.retired_at));
        retired
    }

    /// How long after retiring a secret still verifies, in milliseconds: a token's life, and
    /// the grace.
    fn accepted_for(&self) -> i64 {
        i64::try_from((self.ttl + RETIRED_GRACE).as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_secrets_are_kept_until_their_tokens_could_have_expired() {
        let stored = Stored {
            ttl: Duration::from_secs(100),
            configured_previous: Vec::new(),
            last_check: tokio::sync::Mutex::new(None),
        };
        let grace = i64::try_from(RETIRED_GRACE.as_millis()).unwrap();
        let list = |entries: &[(&str, i64)]| {
            let retired: Vec<Retired> =
                entries.iter().map(|(secret, at)| Retired { secret: (*secret).to_owned(), retired_at: *at }).collect();
            serde_json::to_string(&retired).unwrap()
        };
        let json = list(&[("old", 1_000), ("older", 500), ("ancient", 0)]);
        let kept = stored.unexpired(Some(&json), Timestamp(100_400 + grace));
        let secrets: Vec<&str> = kept.iter().map(|r| r.secret.as_str()).collect();
        assert_eq!(secrets, ["old", "older"], "newest first; 'ancient' retired more than a token's life ago");
        assert!(stored.unexpired(Some(&json), Timestamp(101_000 + grace)).is_empty());
        assert!(stored.unexpired(Some("not json"), Timestamp(0)).is_empty(), "unreadable: none, not a failure");
        assert!(stored.unexpired(None, Timestamp(0)).is_empty());
    }
}
