//! Activity timeouts as an activity call records them, and the bounds every timeout must keep.
//!
//! Three limits, named as in Temporal:
//! - **start-to-close**: how long one attempt may run once a worker starts it;
//! - **schedule-to-close**: how long the whole call may take, every attempt and every wait
//!   between them included, from when its first attempt was scheduled;
//! - **heartbeat**: how long an attempt may go without a heartbeat.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The longest any activity timeout may be: a year. Longer ones are mistakes (a unit confused),
/// refused when they are configured.
pub const MAX_ACTIVITY_TIMEOUT: Duration = Duration::from_secs(366 * 24 * 3600);

/// An activity call's timeouts, as recorded in its `TaskScheduled` event and carried by the work
/// item. Every field is optional; a limit the call leaves out is taken from the worker's
/// registration of the activity, if it has one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivityTimeouts {
    /// Longest one attempt may run, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_to_close_ms: Option<u64>,
    /// Longest the whole call may take, in milliseconds, from [`ActivityTimeouts::first_scheduled_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_to_close_ms: Option<u64>,
    /// Longest an attempt may go without a heartbeat, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    /// When the call's first attempt was scheduled. History records it on retries only; for a
    /// first attempt it is the `TaskScheduled` event's own time, and the work item always has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_scheduled_at: Option<Timestamp>,
}

impl ActivityTimeouts {
    /// True when no field is set (nothing to record).
    pub fn is_empty(&self) -> bool {
        *self == ActivityTimeouts::default()
    }

    /// These timeouts, with the limits they leave out taken from `defaults`.
    pub fn or(self, defaults: &ActivityTimeouts) -> ActivityTimeouts {
        ActivityTimeouts {
            start_to_close_ms: self.start_to_close_ms.or(defaults.start_to_close_ms),
            schedule_to_close_ms: self.schedule_to_close_ms.or(defaults.schedule_to_close_ms),
            heartbeat_ms: self.heartbeat_ms.or(defaults.heartbeat_ms),
            first_scheduled_at: self.first_scheduled_at.or(defaults.first_scheduled_at),
        }
    }

    /// The four fields as integer columns, for a store: start-to-close, schedule-to-close and
    /// heartbeat in milliseconds, then the first attempt's time in milliseconds since the epoch.
    pub fn to_columns(&self) -> [Option<i64>; 4] {
        let millis = |ms: Option<u64>| ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
        [
            millis(self.start_to_close_ms),
            millis(self.schedule_to_close_ms),
            millis(self.heartbeat_ms),
            self.first_scheduled_at.map(Timestamp::millis),
        ]
    }

    /// The timeouts [`ActivityTimeouts::to_columns`] wrote (a negative limit, never written,
    /// reads as none).
    pub fn from_columns([start_to_close, schedule_to_close, heartbeat, first_scheduled_at]: [Option<i64>; 4]) -> Self {
        let millis = |value: Option<i64>| value.and_then(|ms| u64::try_from(ms).ok());
        ActivityTimeouts {
            start_to_close_ms: millis(start_to_close),
            schedule_to_close_ms: millis(schedule_to_close),
            heartbeat_ms: millis(heartbeat),
            first_scheduled_at: first_scheduled_at.map(Timestamp),
        }
    }

    /// When the whole call must be done, if it has a schedule-to-close limit and its first
    /// attempt's time is known.
    pub fn deadline(&self) -> Option<Timestamp> {
        let limit = i64::try_from(self.schedule_to_close_ms?).unwrap_or(i64::MAX);
        Some(self.first_scheduled_at?.plus_millis(limit))
    }
}

/// A timeout outside the bounds every activity timeout must keep.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTimeout {
    /// Zero would fail every attempt before it starts.
    #[error("{0} timeout must be more than zero")]
    Zero(&'static str),
    /// Longer than [`MAX_ACTIVITY_TIMEOUT`].
    #[error("{what} timeout of {seconds} s is longer than the maximum of {max} s (a year)")]
    TooLong {
        /// Which timeout.
        what: &'static str,
        /// Its length in whole seconds.
        seconds: u64,
        /// The maximum in seconds.
        max: u64,
    },
}

/// Checks one timeout against the bounds; returns it in milliseconds.
pub fn timeout_millis(what: &'static str, timeout: Duration) -> Result<u64, InvalidTimeout> {
    if timeout.is_zero() {
        return Err(InvalidTimeout::Zero(what));
    }
    if timeout > MAX_ACTIVITY_TIMEOUT {
        return Err(InvalidTimeout::TooLong { what, seconds: timeout.as_secs(), max: MAX_ACTIVITY_TIMEOUT.as_secs() });
    }
    // At least 1 ms: a timeout of a few microseconds still means "some time".
    Ok((timeout.as_millis() as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_refuse_zero_and_beyond_a_year() {
        assert_eq!(timeout_millis("start-to-close", Duration::ZERO), Err(InvalidTimeout::Zero("start-to-close")));
        assert!(timeout_millis("heartbeat", MAX_ACTIVITY_TIMEOUT + Duration::from_secs(1)).is_err());
        assert_eq!(timeout_millis("heartbeat", Duration::from_secs(5)), Ok(5_000));
        assert_eq!(timeout_millis("heartbeat", Duration::from_micros(10)), Ok(1));
    }

    #[test]
    fn call_limits_win_over_defaults_and_the_deadline_runs_from_the_first_attempt() {
        let call = ActivityTimeouts { start_to_close_ms: Some(1_000), ..ActivityTimeouts::default() };
        let defaults = ActivityTimeouts {
            start_to_close_ms: Some(9_000),
            schedule_to_close_ms: Some(60_000),
            ..ActivityTimeouts::default()
        };
        let merged = call.or(&defaults);
        assert_eq!((merged.start_to_close_ms, merged.schedule_to_close_ms), (Some(1_000), Some(60_000)));
        assert_eq!(merged.deadline(), None, "no first attempt time, no deadline");
        let scheduled = ActivityTimeouts { first_scheduled_at: Some(Timestamp(1_000)), ..merged };
        assert_eq!(scheduled.deadline(), Some(Timestamp(61_000)));
    }

    #[test]
    fn an_empty_record_is_not_written() {
        let json = serde_json::to_string(&ActivityTimeouts::default()).unwrap();
        assert_eq!(json, "{}");
        let parsed: ActivityTimeouts = serde_json::from_str(r#"{"StartToCloseMs":5}"#).unwrap();
        assert_eq!(parsed.start_to_close_ms, Some(5));
    }
}
