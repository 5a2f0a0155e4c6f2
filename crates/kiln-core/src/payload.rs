//! Payloads: JSON text carried through history, messages and the store without re-encoding.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A JSON document kept as text. Inputs, outputs, event data and custom status travel as
/// payloads, so the engine never needs to know their types.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(String);

impl Payload {
    /// The JSON `null`.
    pub fn null() -> Payload {
        Payload("null".to_owned())
    }

    /// Encodes a value as JSON.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Payload, serde_json::Error> {
        serde_json::to_string(value).map(Payload)
    }

    /// Wraps text after checking that it is one JSON value.
    pub fn from_json(text: impl Into<String>) -> Result<Payload, serde_json::Error> {
        let text = text.into();
        // Walked in full, not skimmed: skimming accepts what no orchestration could decode
        // later (nesting past serde_json's depth limit of 128, a lone UTF-16 surrogate).
        serde_json::from_str::<FullyParsed>(&text)?;
        Ok(Payload(text))
    }

    /// Wraps text that is already known to be JSON (for example read back from the store).
    pub fn from_trusted(text: String) -> Payload {
        Payload(text)
    }

    /// Decodes the JSON into a typed value.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// Decodes into a typed value; if that fails and the payload is a JSON string that itself
    /// holds JSON (Durable Functions' Python client encodes inputs and event data twice), decodes
    /// that inner JSON instead. The first error is reported if both fail.
    pub fn decode_lenient<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.decode().or_else(|err| match serde_json::from_str::<String>(&self.0) {
            Ok(inner) => serde_json::from_str(&inner).map_err(|_| err),
            Err(_) => Err(err),
        })
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Size of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty text (never the case for a valid payload).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Unwraps the JSON text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 120;
        match self.0.char_indices().nth(SHOWN) {
            Some((cut, _)) => write!(f, "Payload({}…)", &self.0[..cut]),
            None => write!(f, "Payload({})", self.0),
        }
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Size limits on payloads, enforced at every boundary where a payload enters the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Largest input, output or event payload, in bytes (default 1 MiB).
    pub max_payload_bytes: usize,
    /// Largest custom status, in bytes (default 16 KiB).
    pub max_custom_status_bytes: usize,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        PayloadLimits { max_payload_bytes: 1 << 20, max_custom_status_bytes: 16 << 10 }
    }
}

/// A payload was larger than its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is {size} bytes, over the limit of {limit} bytes")]
pub struct PayloadTooLarge {
    /// What the payload was (e.g. "input", "custom status").
    pub what: &'static str,
    /// Its size in bytes.
    pub size: usize,
    /// The limit in bytes.
    pub limit: usize,
}

impl PayloadLimits {
    /// Checks an input, output or event payload.
    pub fn check(&self, what: &'static str, payload: &Payload) -> Result<(), PayloadTooLarge> {
        check(what, payload, self.max_payload_bytes)
    }

    /// Checks a custom status.
    pub fn check_custom_status(&self, payload: &Payload) -> Result<(), PayloadTooLarge> {
        check("custom status", payload, self.max_custom_status_bytes)
    }
}

fn check(what: &'static str, payload: &Payload, limit: usize) -> Result<(), PayloadTooLarge> {
    if payload.len() > limit { Err(PayloadTooLarge { what, size: payload.len(), limit }) } else { Ok(()) }
}

/// Any JSON value, walked as a typed decode would walk it (every string decoded, serde_json's
/// depth limit applied) and then forgotten: no tree is built.
struct FullyParsed;

impl<'de> Deserialize<'de> for FullyParsed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FullyParsed)
    }
}

impl<'de> serde::de::Visitor<'de> for FullyParsed {
    type Value = FullyParsed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<FullyParsed, E> {
        Ok(FullyParsed)
    }

    fn visit_i64<E>(self, _: i64) -> Result<FullyParsed, E> {
        Ok(FullyParsed)
    }

    fn visit_u64<E>(self, _: u64) -> Result<FullyParsed, E> {
        Ok(FullyParsed)
    }

    fn visit_f64<E>(self, _: f64) -> Result<FullyParsed, E> {
        Ok(FullyParsed)
    }

    fn visit_str<E>(self, _: &str) -> Result<FullyParsed, E> {
        Ok(FullyParsed)
    }

    fn visit_unit<E>(self) -> Result<FullyParsed, E> {
        Ok(FullyParsed)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FullyParsed, A::Error> {
        while seq.next_element::<FullyParsed>()?.is_some() {}
        Ok(FullyParsed)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FullyParsed, A::Error> {
        while map.next_entry::<FullyParsed, FullyParsed>()?.is_some() {}
        Ok(FullyParsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_decoding_unwraps_double_encoded_json() {
        let twice = Payload::encode(r#"{"a":1}"#).unwrap();
        let value: serde_json::Value = twice.decode_lenient().unwrap();
        assert_eq!(value, serde_json::json!(r#"{"a":1}"#), "a string target keeps the string");
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct A {
            a: u32,
        }
        assert_eq!(twice.decode_lenient::<A>().unwrap(), A { a: 1 });
        assert!(Payload::null().decode_lenient::<A>().is_err());
    }

    #[test]
    fn validates_and_limits() {
        assert!(Payload::from_json("{\"a\":1}").is_ok());
        assert!(Payload::from_json("{\"a\":").is_err());
        assert!(Payload::from_json("[1] x").is_err(), "one value, nothing after it");
        // What no orchestration could decode later is refused at once.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Payload::from_json(deep).is_err(), "nested past the depth limit");
        assert!(Payload::from_json(r#""\ud800""#).is_err(), "a lone surrogate");
        assert!(Payload::from_json(r#""\ud83d\ude00""#).is_ok(), "a surrogate pair");
        let nested = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(Payload::from_json(nested).is_ok(), "ordinary nesting");
        let every_kind = r#"{"a":[1,-2,3.5,true,null,"s\u00e9"],"\ud83d\ude00":{"b":{}}}"#;
        assert!(Payload::from_json(every_kind).is_ok(), "every kind of value");
        assert!(Payload::from_json(r#"{"\udc00":1}"#).is_err(), "a lone surrogate in a key");
        let limits = PayloadLimits { max_payload_bytes: 4, max_custom_status_bytes: 2 };
        assert!(limits.check("input", &Payload::null()).is_ok());
        let err = limits.check_custom_status(&Payload::null()).unwrap_err();
        assert_eq!(err.to_string(), "custom status is 4 bytes, over the limit of 2 bytes");
    }
}
