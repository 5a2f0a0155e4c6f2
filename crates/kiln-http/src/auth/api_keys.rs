//! API keys for the starters, kept as SHA-256 hashes.
//!
//! A key is `kiln_` and 32 bytes from the operating system's generator (base64url): far too
//! much entropy to guess, so one SHA-256 is enough to keep it unusable to whoever reads the key
//! list (a slow password hash protects low-entropy secrets; it adds nothing here and would cost
//! every request). The list (a file or `KILN_API_KEYS`) holds one key per line:
//!
//! ```text
//! # name     hash                                                                     scopes
//! ci-bot     sha256:9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab  jobs:start
//! ```
//!
//! Blank lines and `#` comments are skipped (`#` is in no name, hash or scope); scopes are
//! optional, comma-separated.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};

/// The prefix every key starts with, so a leaked key is recognisable (and a scanner can find it).
pub const API_KEY_PREFIX: &str = "kiln_";

/// Longest key name.
const MAX_NAME_LEN: usize = 64;

/// One known key: its name and the scopes it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Who the key belongs to (logged, and the rate-limit bucket's name; never the key).
    pub name: String,
    /// The scopes it grants.
    pub scopes: BTreeSet<String>,
}

/// The known keys, by the SHA-256 of the key.
#[derive(Clone, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], ApiKey>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.by_hash.values().map(|key| key.name.as_str()).collect();
        f.debug_struct("ApiKeys").field("names", &names).finish()
    }
}

/// Why a key list cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("API key list, line {line}: {problem}")]
pub struct ApiKeyListError {
    /// The line (from 1).
    pub line: usize,
    /// What is wrong with it.
    pub problem: String,
}

impl ApiKeys {
    /// Parses a key list (see the module documentation).
    pub fn parse(text: &str) -> Result<ApiKeys, ApiKeyListError> {
        let mut keys = ApiKeys::default();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let error = |problem: String| ApiKeyListError { line: line_number, problem };
            let line = line.split_once('#').map_or(line, |(before, _)| before).trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(name), Some(hash)) = (fields.next(), fields.next()) else {
                return Err(error("expected `NAME sha256:HEX [SCOPES]`".to_owned()));
            };
            if !is_valid_name(name) {
                return Err(error(format!(
                    "key names are 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-', not '{name}'"
                )));
            }
            let hash = parse_hash(hash).ok_or_else(|| {
                error("the hash must be `sha256:` and 64 hex digits (`kiln keys new-api-key` prints it)".to_owned())
            })?;
            let scopes = match fields.next() {
                Some(scopes) => parse_scopes(scopes).map_err(error)?,
                None => BTreeSet::new(),
            };
            if fields.next().is_some() {
                return Err(error("scopes are one comma-separated field".to_owned()));
            }
            if keys.by_hash.values().any(|key| key.name == name) {
                return Err(error(format!("the name '{name}' is used twice")));
            }
            if keys.by_hash.insert(hash, ApiKey { name: name.to_owned(), scopes }).is_some() {
                return Err(error("the same key is listed twice".to_owned()));
            }
        }
        Ok(keys)
    }

    /// Adds every key of `other`; a name or key listed in both is an error.
    pub fn merge(mut self, other: ApiKeys) -> Result<ApiKeys, String> {
        for (hash, key) in other.by_hash {
            if self.by_hash.values().any(|known| known.name == key.name) || self.by_hash.contains_key(&hash) {
                return Err(format!("the API key '{}' is listed twice", key.name));
            }
            self.by_hash.insert(hash, key);
        }
        Ok(self)
    }

    /// The key `presented` is, if it is known. The lookup is by hash, so its timing says
    /// nothing about a stored key.
    pub fn find(&self, presented: &str) -> Option<&ApiKey> {
        self.by_hash.get(&hash_of(presented))
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// A key just made, and the line that lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// The key, for the caller (shown once, kept nowhere).
    pub key: String,
    /// `NAME sha256:HEX [SCOPES]`, for the key list.
    pub line: String,
}

/// Why a key cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NewApiKeyError(String);

/// Makes a random key for `name` granting `scopes`.
pub fn new_api_key(name: &str, scopes: &[String]) -> Result<NewApiKey, NewApiKeyError> {
    if !is_valid_name(name) {
        return Err(NewApiKeyError(format!("key names are 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-'")));
    }
    if let Some(scope) = scopes.iter().find(|scope| !is_valid_scope(scope)) {
        return Err(NewApiKeyError(format!("'{scope}' is not a valid scope: {SCOPE_RULE}")));
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| NewApiKeyError(format!("no randomness from the system: {e}")))?;
    let key = format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let mut line = format!("{name} {}", hash_line(&key));
    let scopes: BTreeSet<&str> = scopes.iter().map(String::as_str).collect();
    if !scopes.is_empty() {
        line.push(' ');
        line.push_str(&scopes.into_iter().collect::<Vec<_>>().join(","));
    }
    Ok(NewApiKey { key, line })
}

/// `sha256:HEX` of a key, as a key list holds it.
pub fn hash_line(key: &str) -> String {
    let hex: String = hash_of(key).iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

fn hash_of(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_hash(field: &str) -> Option<[u8; 32]> {
    let hex = field.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(hash)
}

fn parse_scopes(field: &str) -> Result<BTreeSet<String>, String> {
    let parse = |scope: &str| {
        if is_valid_scope(scope) {
            Ok(scope.to_owned())
        } else {
            Err(format!("'{scope}' is not a valid scope: {SCOPE_RULE}"))
        }
    };
    field.split(',').filter(|scope| !scope.is_empty()).map(parse).collect()
}

/// What [`is_valid_scope`] accepts, in words.
const SCOPE_RULE: &str = "1 to 128 printable ASCII characters without spaces or , ; # \" \\";

fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A scope as OAuth 2 allows one (RFC 6749 §3.3), less what separates scopes and entries in a
/// key list (`,` `;` `#`) and what a `WWW-Authenticate` quoted string cannot hold (`"` `\`).
pub(crate) fn is_valid_scope(scope: &str) -> bool {
    (1..=128).contains(&scope.len())
        && scope.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'#' | b'"' | b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_found_by_its_listed_hash_and_nothing_else_is() {
        let NewApiKey { key, line } = new_api_key("ci-bot", &["jobs:start".to_owned()]).unwrap();
        assert!(key.starts_with(API_KEY_PREFIX) && key.len() == API_KEY_PREFIX.len() + 43, "{key}");
        assert!(!line.contains(&key), "the list holds the hash, never the key");
        let keys = ApiKeys::parse(&format!("# the bots\n\n{line}  # trailing comment\n")).unwrap();
        let found = keys.find(&key).unwrap();
        assert_eq!(
            (found.name.as_str(), found.scopes.iter().map(String::as_str).collect::<Vec<_>>()),
            ("ci-bot", vec!["jobs:start"])
        );
        assert!(keys.find(&format!("{key}x")).is_none());
        assert!(keys.find(&hash_line(&key)).is_none(), "the hash itself is not a key");
        assert_ne!(key, new_api_key("ci-bot", &[]).unwrap().key, "keys are random");
    }

    #[test]
    fn bad_lists_name_the_line() {
        let hash = hash_line("kiln_x");
        let cases = [
            ("ci-bot".to_owned(), "expected"),
            ("ci bot sha256:00".to_owned(), "hash"),
            (format!("bad/name {hash}"), "key names"),
            (format!("a {hash} x y"), "one comma-separated field"),
            (format!("a {hash}\nb {hash}"), "listed twice"),
            (format!("a {hash}\na {}", hash_line("kiln_y")), "used twice"),
            (format!("a sha256:{}", "g".repeat(64)), "hash"),
            (format!("a {hash} sco\"pe"), "not a valid scope"),
        ];
        for (text, expected) in cases {
            let err = ApiKeys::parse(&text).unwrap_err();
            assert!(err.to_string().contains(expected), "{text:?}: {err}");
        }
        assert_eq!(ApiKeys::parse(&format!("\n\nx {hash} ,")).map(|k| k.is_empty()), Ok(false));
        assert!(new_api_key("", &[]).is_err());
        for scope in ["a b", "a,b", "jobs#start", "a;b", ""] {
            assert!(new_api_key("ok", &[scope.to_owned()]).is_err(), "{scope:?} would not mean the same in a list");
        }
    }

    #[test]
    fn merged_lists_refuse_duplicates() {
        let a = ApiKeys::parse(&format!("a {}", hash_line("kiln_a"))).unwrap();
        let b = ApiKeys::parse(&format!("b {}", hash_line("kiln_b"))).unwrap();
        let both = a.clone().merge(b).unwrap();
        assert!(both.find("kiln_a").is_some() && both.find("kiln_b").is_some());
        assert!(both.merge(a).is_err());
    }
}
