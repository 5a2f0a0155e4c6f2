//! What ties an instance to the request that started it: a correlation id for logs and the W3C
//! trace context (`traceparent`, `tracestate`) its spans continue.
//!
//! Both are recorded in the instance's `ExecutionStarted`, so that they survive restarts and
//! reach every node; continue-as-new and sub-orchestrations carry them on. The id comes from the
//! caller's `traceparent` (its trace id), else from `X-Correlation-ID`/`X-Request-ID`, else it is
//! the trace id of a trace the runtime starts; the runtime makes fresh ids (this crate has no
//! randomness).

use crate::Labels;
use serde::{Deserialize, Serialize};

/// Longest correlation id, in bytes.
pub const MAX_CORRELATION_ID_LEN: usize = 128;
/// Longest `tracestate` kept (W3C: 32 members of at most 256 characters, but 512 is what
/// implementations must propagate at least).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// An instance's correlation: the id its logs carry and the trace its spans belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Correlation {
    /// The correlation id (see the module docs).
    pub id: String,
    /// The trace context of the caller (or of the trace started for the instance).
    pub trace: TraceContext,
}

/// What an activity carries from the instance that scheduled it, so that its logs (and spans)
/// tie back to the instance wherever it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceContext {
    /// The orchestration that scheduled it.
    pub orchestration: String,
    /// The instance's labels.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The instance's correlation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<Correlation>,
}

/// Why a correlation id was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a correlation id must be 1 to {MAX_CORRELATION_ID_LEN} visible ASCII characters")]
pub struct InvalidCorrelationId;

/// Checks a caller's correlation id: 1 to [`MAX_CORRELATION_ID_LEN`] visible ASCII characters,
/// so that it prints safely in a log line.
pub fn validate_correlation_id(id: &str) -> Result<(), InvalidCorrelationId> {
    let valid = (1..=MAX_CORRELATION_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic());
    if valid { Ok(()) } else { Err(InvalidCorrelationId) }
}

/// A W3C trace context: a position in a distributed trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredTraceContext", into = "StoredTraceContext")]
pub struct TraceContext {
    trace_id: String,
    parent_id: String,
    flags: u8,
    state: Option<String>,
}

/// [`TraceContext`] as history stores it: the two W3C headers.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StoredTraceContext {
    trace_parent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace_state: Option<String>,
}

/// Why a `traceparent` was not understood (W3C: the receiver then starts a new trace).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'traceparent' is not a W3C trace context")]
pub struct InvalidTraceParent;

impl TraceContext {
    /// A context from its parts: a 128-bit trace id and a 64-bit parent (span) id, neither all
    /// zeros (a zero part is replaced by one, which W3C allows), and whether it is sampled.
    pub fn new(trace_id: [u8; 16], parent_id: [u8; 8], sampled: bool) -> TraceContext {
        let nonzero = |bytes: &[u8]| {
            let text = hex(bytes);
            if bytes.iter().all(|b| *b == 0) { format!("{}1", &text[..text.len() - 1]) } else { text }
        };
        TraceContext {
            trace_id: nonzero(&trace_id),
            parent_id: nonzero(&parent_id),
            flags: u8::from(sampled),
            state: None,
        }
    }

    /// Parses the `traceparent` and `tracestate` headers. An over-long `tracestate` is dropped
    /// (W3C lets a receiver discard it).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<TraceContext, InvalidTraceParent> {
        let traceparent = traceparent.trim();
        let mut parts = traceparent.splitn(5, '-');
        let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidTraceParent);
        };
        let rest = parts.next();
        let is_hex = |text: &str, len: usize| {
            text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let all_zeros = |text: &str| text.bytes().all(|b| b == b'0');
        let valid = is_hex(version, 2)
            && version != "ff"
            // Version 00 has exactly four parts; a later version may add more after a '-'.
            && (rest.is_none() || version != "00")
            && is_hex(trace_id, 32)
            && !all_zeros(trace_id)
            && is_hex(parent_id, 16)
            && !all_zeros(parent_id)
            && is_hex(flags, 2);
        if !valid {
            return Err(InvalidTraceParent);
        }
        let flags = u8::from_str_radix(flags, 16).map_err(|_| InvalidTraceParent)?;
        let state = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN && s.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .map(str::to_owned);
        Ok(TraceContext { trace_id: trace_id.to_owned(), parent_id: parent_id.to_owned(), flags, state })
    }

    /// The trace id: 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The parent (span) id: 16 lowercase hex digits.
    pub fn parent_id(&self) -> &str {
        &self.parent_id
    }

    /// Whether the caller sampled the trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `tracestate` header, if one came.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The `traceparent` header (version 00).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.parent_id, self.flags)
    }
}

impl TryFrom<StoredTraceContext> for TraceContext {
    type Error = InvalidTraceParent;

    fn try_from(stored: StoredTraceContext) -> Result<TraceContext, InvalidTraceParent> {
        TraceContext::parse(&stored.trace_parent, stored.trace_state.as_deref())
    }
}

impl From<TraceContext> for StoredTraceContext {
    fn from(context: TraceContext) -> Self {
        StoredTraceContext { trace_parent: context.traceparent(), trace_state: context.state }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_w3c_traceparent_round_trips() {
        let context = TraceContext::parse(EXAMPLE, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent_id(), "00f067aa0ba902b7");
        assert!(context.sampled());
        assert_eq!(context.traceparent(), EXAMPLE);
        let stored = serde_json::to_string(&context).unwrap();
        assert_eq!(stored, format!(r#"{{"TraceParent":"{EXAMPLE}","TraceState":"congo=t61rcWkgMzE"}}"#));
        assert_eq!(serde_json::from_str::<TraceContext>(&stored).unwrap(), context);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), Err(InvalidTraceParent), "{bad:?}");
        }
        // A later version may carry more fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future";
        assert_eq!(TraceContext::parse(later, None).unwrap().traceparent(), EXAMPLE);
    }

    #[test]
    fn made_contexts_are_valid_even_from_zeros() {
        let context = TraceContext::new([0; 16], [0xab; 8], false);
        assert_eq!(context.traceparent(), "00-00000000000000000000000000000001-abababababababab-00");
        assert!(TraceContext::parse(&context.traceparent(), None).is_ok());
    }

    #[test]
    fn correlation_ids_are_visible_ascii() {
        assert!(validate_correlation_id("req-42/abc").is_ok());
        for bad in ["", "has space", "tab\t", "é", &"x".repeat(MAX_CORRELATION_ID_LEN + 1)] {
            assert_eq!(validate_correlation_id(bad), Err(InvalidCorrelationId), "{bad:?}");
        }
    }
}
