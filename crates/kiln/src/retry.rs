//! Retry policies for activity calls, and [`RetryCall`], the call that follows one. Each wait
//! between attempts is a durable timer.

use crate::Failure;
use crate::combinators::DurableStep;
use crate::context::{DurableFuture, OrchestrationContext, millis};
use kiln_core::{ActivityTimeouts, Payload, Timestamp, error_types, features};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// How an activity call is retried, as in Durable Functions' `RetryOptions`.
///
/// The delay before retry *n* (from 0) is
/// `min(first_interval × backoff_coefficient^n, max_interval)`. Retries stop after
/// `max_attempts`, or when the next attempt would start after `total_timeout` (measured from
/// the first attempt, on the orchestration's replay-safe clock). Failures whose error type is
/// listed as non-retryable (as Temporal's `NonRetryableErrorTypes`) end the call at once, and so
/// does an output that does not decode into the type the orchestration asked for (another attempt
/// would only run the activity's side effects again).
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

    /// Whether a failed attempt may be retried (attempts and time allowing): not if the policy
    /// lists its type. The list is part of the orchestration's code, so histories recorded under
    /// a policy replay under the same one.
    pub fn retries(&self, failure: &Failure) -> bool {
        self.retries_type(failure.error_type())
    }

    fn retries_type(&self, error_type: &str) -> bool {
        !self.non_retryable_error_types.iter().any(|t| t == error_type)
    }

    /// The wait before retry `n` (0 = the wait after the first attempt failed).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = self.backoff_coefficient.max(0.0).powi(i32::try_from(n).unwrap_or(i32::MAX));
        let millis = self.first_interval.as_millis() as f64 * factor;
        let capped = millis.min(self.max_interval.as_millis() as f64);
        Duration::from_millis(if capped.is_finite() { capped as u64 } else { u64::MAX })
    }
}

/// An activity call under a [`RetryPolicy`] and timeouts (from
/// [`OrchestrationContext::call_activity_with_retry`] or
/// [`OrchestrationContext::call_activity_with_options`]). Its first attempt is scheduled when it
/// is created (in executions started before [`features::EAGER_RETRY`], at its first poll, as
/// they were recorded); it resolves with the first success or the failure that ends the retries,
/// and races in [`select2`](crate::select2) by the history position of that result. Each retry
/// starts from the last heartbeat details of the attempt before it.
pub struct RetryCall<O> {
    ctx: OrchestrationContext,
    name: String,
    input: Payload,
    policy: RetryPolicy,
    timeouts: ActivityTimeouts,
    first_attempt_at: Timestamp,
    attempt: u32,
    /// The last heartbeat details of the attempt before, for the next one.
    heartbeat: Option<Payload>,
    /// The current attempt's step.
    step: Option<u64>,
    /// The execution runs under [`features::EAGER_RETRY`].
    eager: bool,
    state: RetryState<O>,
}

enum RetryState<O> {
    /// Not scheduled yet (executions recorded before [`features::EAGER_RETRY`]).
    NotStarted,
    /// The current attempt runs.
    Running(DurableFuture<O>),
    /// Waiting for the timer before the next attempt.
    Backoff(DurableFuture<()>),
    /// Resolved (or failed before any attempt).
    Done(Option<Failure>),
}

impl<O: DeserializeOwned> RetryCall<O> {
    /// Starts a call; `policy` is `None` for a single attempt, which is scheduled at once in
    /// every execution (as `call_activity` is).
    pub(crate) fn start(
        ctx: &OrchestrationContext,
        name: &str,
        input: Payload,
        policy: Option<RetryPolicy>,
        timeouts: ActivityTimeouts,
    ) -> RetryCall<O> {
        let eager = policy.is_none() || ctx.inner.lock().has_feature(features::EAGER_RETRY);
        let policy = policy.unwrap_or_else(|| RetryPolicy::new(1, Duration::ZERO));
        // Every attempt, and the decision to retry, under the same limits.
        let timeouts = ctx.with_registered_timeouts(name, timeouts);
        let mut call = RetryCall {
            ctx: ctx.clone(),
            name: name.to_owned(),
            input,
            policy,
            timeouts,
            first_attempt_at: ctx.current_time(),
            attempt: 1,
            heartbeat: None,
            step: None,
            eager,
            state: RetryState::NotStarted,
        };
        if eager {
            call.schedule_attempt();
        }
        call
    }

    fn schedule_attempt(&mut self) {
        let mut timeouts = self.timeouts;
        if self.attempt == 1 {
            // The total timeout and the schedule-to-close limit run from the first attempt.
            self.first_attempt_at = self.ctx.current_time();
        } else {
            timeouts.first_scheduled_at = Some(self.first_attempt_at);
        }
        let attempt: DurableFuture<O> =
            self.ctx.schedule_payload(&self.name, self.input.clone(), self.attempt, timeouts, self.heartbeat.take());
        self.step = attempt.step();
        self.state = RetryState::Running(attempt);
    }

    pub(crate) fn failed(ctx: &OrchestrationContext, failure: Failure) -> RetryCall<O> {
        RetryCall {
            ctx: ctx.clone(),
            name: String::new(),
            input: Payload::null(),
            policy: RetryPolicy::new(1, Duration::ZERO),
            timeouts: ActivityTimeouts::default(),
            first_attempt_at: ctx.current_time(),
            attempt: 1,
            heartbeat: None,
            step: None,
            eager: true,
            state: RetryState::Done(Some(failure)),
        }
    }

    /// When the call's limits (total timeout, schedule-to-close) started to run: its first
    /// attempt, or the rewind that ran the current attempt again.
    fn limits_start(&self) -> Timestamp {
        let restarted = self.step.and_then(|step| self.ctx.inner.lock().limits_restarted_at(step));
        self.first_attempt_at.max(restarted.unwrap_or(Timestamp(0)))
    }

    /// What follows a failed attempt of `error_type`.
    fn next_attempt(&self, error_type: &str) -> Next {
        if self.attempt >= self.policy.max_attempts
            || !self.policy.retries_type(error_type)
            || error_type == error_types::SCHEDULE_TO_CLOSE_TIMEOUT
        {
            return Next::GiveUp;
        }
        let delay = self.policy.delay(self.attempt - 1);
        let retry_at = self.ctx.current_time().plus_millis(millis(delay));
        let since = self.limits_start();
        let deadline = ActivityTimeouts { first_scheduled_at: Some(since), ..self.timeouts }.deadline();
        match self.policy.total_timeout {
            _ if deadline.is_some_and(|deadline| retry_at >= deadline) => Next::ScheduleToCloseTimeout,
            Some(timeout) if retry_at > since.plus_millis(millis(timeout)) => Next::TotalTimeout,
            _ => Next::RetryAt(retry_at),
        }
    }
}

/// What follows a failed attempt (see [`RetryCall::next_attempt`]).
enum Next {
    /// Another attempt, after a timer that fires then.
    RetryAt(Timestamp),
    /// None: the failure ends the call (not retried, or no attempt left).
    GiveUp,
    /// None: the retry policy's total timeout would be exceeded.
    TotalTimeout,
    /// None: the call's schedule-to-close limit would be exceeded.
    ScheduleToCloseTimeout,
}

impl<O> crate::combinators::sealed::Sealed for RetryCall<O> {}

impl<O: DeserializeOwned> DurableStep for RetryCall<O> {
    /// The history position of the result that resolves the call: a success, or a failure that
    /// is not retried. `None` while attempts are running or waiting.
    fn completed_at(&self) -> Option<u64> {
        match &self.state {
            RetryState::NotStarted | RetryState::Backoff(_) => None,
            RetryState::Running(call) => match call.peek()? {
                // A success ends it (and, under EAGER_RETRY, so does an output that does not decode).
                (position, None) => Some(position),
                (position, Some(error_type)) => {
                    (!matches!(self.next_attempt(&error_type), Next::RetryAt(_))).then_some(position)
                }
            },
            RetryState::Done(failure) => failure.as_ref().map(|_| 0),
        }
    }
}

impl<O: DeserializeOwned> Future for RetryCall<O> {
    type Output = Result<O, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                RetryState::NotStarted => this.schedule_attempt(),
                RetryState::Running(call) => {
                    // A completed attempt whose output does not decode is final (EAGER_RETRY).
                    let completed = this.eager && call.peek().is_some_and(|(_, failed)| failed.is_none());
                    let polled = Pin::new(&mut *call).poll(cx);
                    let heartbeat = call.take_heartbeat_details();
                    let failure = match polled {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(output)) => {
                            this.state = RetryState::Done(None);
                            return Poll::Ready(Ok(output));
                        }
                        Poll::Ready(Err(failure)) if completed => {
                            this.state = RetryState::Done(None);
                            return Poll::Ready(Err(failure));
                        }
                        Poll::Ready(Err(failure)) => failure,
                    };
                    let ended = |error_type, what| {
                        Failure::typed(error_type, format!("{what} elapsed after attempt {}: {failure}", this.attempt))
                    };
                    let retry_at = match this.next_attempt(failure.error_type()) {
                        Next::RetryAt(retry_at) => retry_at,
                        Next::GiveUp => {
                            this.state = RetryState::Done(None);
                            return Poll::Ready(Err(failure));
                        }
                        Next::TotalTimeout => {
                            let ended = ended(error_types::RETRY_TIMEOUT, "retry timeout");
                            this.state = RetryState::Done(None);
                            return Poll::Ready(Err(ended));
                        }
                        Next::ScheduleToCloseTimeout => {
                            let ended = ended(error_types::SCHEDULE_TO_CLOSE_TIMEOUT, "schedule-to-close timeout");
                            this.state = RetryState::Done(None);
                            return Poll::Ready(Err(ended));
                        }
                    };
                    this.heartbeat = heartbeat;
                    // Later attempts keep the limits' start (a rewind may have moved it).
                    this.first_attempt_at = this.limits_start();
                    this.state = RetryState::Backoff(this.ctx.create_timer(retry_at));
                }
                RetryState::Backoff(timer) => match Pin::new(timer).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(failure)) => {
                        this.state = RetryState::Done(None);
                        return Poll::Ready(Err(failure));
                    }
                    Poll::Ready(Ok(())) => {
                        this.attempt += 1;
                        this.schedule_attempt();
                    }
                },
                RetryState::Done(failure) => match failure.take() {
                    Some(failure) => return Poll::Ready(Err(failure)),
                    None => return Poll::Pending,
                },
            }
        }
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
