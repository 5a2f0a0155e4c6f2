//! Retry policies for activity calls. Each wait between attempts is a durable timer.

use crate::Failure;
use std::time::Duration;

/// How an activity call is retried, as in Durable Functions' `RetryOptions`.
///
/// The delay before retry *n* (from 0) is
/// `min(first_interval × backoff_coefficient^n, max_interval)`. Retries stop after
/// `max_attempts`, or when the next attempt would start after `total_timeout` (measured from
/// the first attempt, on the orchestration's replay-safe clock). Failures whose error type is
/// listed as non-retryable (as Temporal's `NonRetryableErrorTypes`) end the call at once.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (at least 1).
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub first_interval: Duration,
    /// Growth factor of the wait (1.0 = constant).
    pub backoff_coefficient: f64,
    /// Longest wait between attempts.
    pub max_interval: Duration,
    /// Give up when the next attempt would start later than this after the first.
    pub total_timeout: Option<Duration>,
    /// Error types ([`Failure::error_type`]) that are not retried.
    pub non_retryable_error_types: Vec<String>,
}

impl RetryPolicy {
    /// `max_attempts` attempts, `first_interval` apart, no backoff, no total timeout.
    pub fn new(max_attempts: u32, first_interval: Duration) -> RetryPolicy {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            first_interval,
            backoff_coefficient: 1.0,
            max_interval: Duration::from_secs(6 * 24 * 3600),
            total_timeout: None,
            non_retryable_error_types: Vec::new(),
        }
    }

    /// Sets the backoff coefficient.
    pub fn with_backoff(mut self, coefficient: f64) -> RetryPolicy {
        self.backoff_coefficient = coefficient;
        self
    }

    /// Sets the longest wait.
    pub fn with_max_interval(mut self, max_interval: Duration) -> RetryPolicy {
        self.max_interval = max_interval;
        self
    }

    /// Sets the total timeout.
    pub fn with_total_timeout(mut self, timeout: Duration) -> RetryPolicy {
        self.total_timeout = Some(timeout);
        self
    }

    /// Sets the error types that are not retried (e.g. a validation failure of the activity's own).
    pub fn with_non_retryable_error_types<S: Into<String>>(
        mut self,
        types: impl IntoIterator<Item = S>,
    ) -> RetryPolicy {
        self.non_retryable_error_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Whether a failed attempt may be retried (attempts and time allowing). Only types the
    /// policy lists are not: the list is part of the orchestration's code, so histories recorded
    /// under a policy replay under the same one.
    pub fn retries(&self, failure: &Failure) -> bool {
        !self.non_retryable_error_types.iter().any(|t| t == failure.error_type())
    }

    /// The wait before retry `n` (0 = the wait after the first attempt failed).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = self.backoff_coefficient.max(0.0).powi(i32::try_from(n).unwrap_or(i32::MAX));
        let millis = self.first_interval.as_millis() as f64 * factor;
        let capped = millis.min(self.max_interval.as_millis() as f64);
        Duration::from_millis(if capped.is_finite() { capped as u64 } else { u64::MAX })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        let policy =
            RetryPolicy::new(5, Duration::from_secs(1)).with_backoff(2.0).with_max_interval(Duration::from_secs(5));
        let delays: Vec<u64> = (0..4).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 5]);
    }
}
