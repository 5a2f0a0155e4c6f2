//! [`ActivityContext`]: what an activity knows about the call it serves, and its heartbeats;
//! [`Timeouts`] and [`ActivityOptions`]: the limits an activity call runs under.

use crate::Failure;
use crate::retry::RetryPolicy;
use kiln_core::{InvalidTimeout, Payload, PayloadLimits, error_types, timeout_millis};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An activity's timeouts (named as in Temporal). Given with a call
/// ([`ActivityOptions`]), they bound that call; registered with the activity
/// ([`KilnBuilder::activity_with_timeouts`](crate::KilnBuilder::activity_with_timeouts)), they
/// bound every call that leaves them out.
///
/// - **start-to-close**: one attempt may run this long once a worker starts it; then it fails
///   with a [`Timeout`](error_types::TIMEOUT) failure (retried like any failure) and its future
///   is dropped. A delivery after a lost worker gets the full time again.
/// - **schedule-to-close**: the whole call, every attempt and wait between them, must end this
///   long after its first attempt was scheduled; then it fails with
///   [`ScheduleToCloseTimeout`](error_types::SCHEDULE_TO_CLOSE_TIMEOUT), never retried.
/// - **heartbeat**: an attempt that goes this long without [`ActivityContext::heartbeat`] fails
///   with a `Timeout` failure. Its lease is then as short as the heartbeat timeout (at least
///   5 s), so that the attempt of a worker that died is taken over about as soon.
///
/// Each must be more than zero and at most a year ([`kiln_core::MAX_ACTIVITY_TIMEOUT`]). The
/// activity runs in a task of its own, so code that blocks its thread does not stop its
/// timeouts from firing while the runtime has other threads; its future is dropped at its next
/// `.await`, so code that never awaits runs on after the attempt has failed. Run blocking code
/// with `tokio::task::spawn_blocking`. A call's
/// schedule-to-close limit also holds for an attempt no worker starts: a durable timer fails it.
/// Limits registered with an activity are recorded with the calls a node that has the
/// registration schedules; a worker applies its own registration to the limits a call has not
/// recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    start_to_close: Option<Duration>,
    schedule_to_close: Option<Duration>,
    heartbeat: Option<Duration>,
}

impl Timeouts {
    /// No limits.
    pub fn new() -> Timeouts {
        Timeouts::default()
    }

    /// Sets the start-to-close limit of one attempt.
    pub fn start_to_close(mut self, timeout: Duration) -> Timeouts {
        self.start_to_close = Some(timeout);
        self
    }

    /// Sets the schedule-to-close limit of the whole call.
    pub fn schedule_to_close(mut self, timeout: Duration) -> Timeouts {
        self.schedule_to_close = Some(timeout);
        self
    }

    /// Sets the heartbeat timeout.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Timeouts {
        self.heartbeat = Some(timeout);
        self
    }

    /// The recorded form, checked against the bounds.
    pub(crate) fn record(&self) -> Result<kiln_core::ActivityTimeouts, InvalidTimeout> {
        let check = |what, timeout: Option<Duration>| timeout.map(|t| timeout_millis(what, t)).transpose();
        Ok(kiln_core::ActivityTimeouts {
            start_to_close_ms: check("start-to-close", self.start_to_close)?,
            schedule_to_close_ms: check("schedule-to-close", self.schedule_to_close)?,
            heartbeat_ms: check("heartbeat", self.heartbeat)?,
            first_scheduled_at: None,
        })
    }
}

/// How an activity call runs: its [`Timeouts`] and its [`RetryPolicy`] (one attempt without
/// one). See [`OrchestrationContext::call_activity_with_options`](crate::OrchestrationContext::call_activity_with_options).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActivityOptions {
    pub(crate) timeouts: Timeouts,
    pub(crate) retry: Option<RetryPolicy>,
}

impl ActivityOptions {
    /// One attempt, no timeouts of the call's own.
    pub fn new() -> ActivityOptions {
        ActivityOptions::default()
    }

    /// Sets the start-to-close limit of each attempt.
    pub fn start_to_close(mut self, timeout: Duration) -> ActivityOptions {
        self.timeouts = self.timeouts.start_to_close(timeout);
        self
    }

    /// Sets the schedule-to-close limit of the whole call.
    pub fn schedule_to_close(mut self, timeout: Duration) -> ActivityOptions {
        self.timeouts = self.timeouts.schedule_to_close(timeout);
        self
    }

    /// Sets the heartbeat timeout of each attempt.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> ActivityOptions {
        self.timeouts = self.timeouts.heartbeat_timeout(timeout);
        self
    }

    /// Retries failed attempts under `policy`.
    pub fn retry(mut self, policy: RetryPolicy) -> ActivityOptions {
        self.retry = Some(policy);
        self
    }
}

/// Facts about one activity call. Activities run at least once, so use
/// [`ActivityContext::idempotency_key`] to make side effects idempotent.
#[derive(Clone, Debug)]
pub struct ActivityContext {
    pub(crate) instance_id: String,
    pub(crate) execution: u64,
    pub(crate) task_id: u64,
    pub(crate) name: String,
    pub(crate) attempt: u32,
    pub(crate) delivery: u32,
    pub(crate) heartbeat_details: Option<Payload>,
    pub(crate) heartbeats: Arc<Heartbeats>,
}

impl ActivityContext {
    /// The orchestration instance that called this activity.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The activity's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The step (task id) in the orchestration's history.
    pub fn task_id(&self) -> u64 {
        self.task_id
    }

    /// Attempt number under the caller's retry policy, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many times this very attempt has been handed to a worker, from 1 (more than 1 after a
    /// crash or a lapsed lease).
    pub fn delivery(&self) -> u32 {
        self.delivery
    }

    /// A key that is the same on every delivery of this attempt and different for every other
    /// call: `{instance}:{execution}:{task id}`.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.instance_id, self.execution, self.task_id)
    }

    /// Tells the worker this attempt is alive (resetting its heartbeat timeout) and records
    /// `details` of its progress. The last details reach the next attempt of a retried call,
    /// and the next delivery of this attempt if its worker is lost (they are saved with its
    /// lease, at most a third of a lease apart): read them there with
    /// [`ActivityContext::heartbeat_details`] and resume. New details replace earlier ones.
    ///
    /// Details are for progress (a cursor, a count), not data: they are kept in history with a
    /// failed attempt. Details that do not serialize, or exceed [`MAX_HEARTBEAT_DETAILS_BYTES`]
    /// (or the payload size limit, if smaller), are refused with an error; the heartbeat still
    /// counts.
    pub fn heartbeat<T: Serialize + ?Sized>(&self, details: &T) -> Result<(), Failure> {
        self.heartbeats.beat();
        let payload = Payload::encode(details).map_err(|e| Failure::serialization("heartbeat details", &e))?;
        let limits = PayloadLimits {
            max_payload_bytes: self.heartbeats.limits.max_payload_bytes.min(MAX_HEARTBEAT_DETAILS_BYTES),
            ..self.heartbeats.limits
        };
        limits
            .check("heartbeat details", &payload)
            .map_err(|e| Failure::typed(error_types::PAYLOAD_TOO_LARGE, e.to_string()))?;
        self.heartbeats.record(payload);
        Ok(())
    }

    /// The details of the last heartbeat before this attempt started: from an earlier delivery
    /// of this attempt, or from the call's previous attempt. `None` if there were none, or if
    /// they do not decode into `T`.
    pub fn heartbeat_details<T: DeserializeOwned>(&self) -> Option<T> {
        self.heartbeat_details.as_ref()?.decode_lenient().ok()
    }
}

/// The largest heartbeat details accepted ([`ActivityContext::heartbeat`]): 64 KiB.
pub const MAX_HEARTBEAT_DETAILS_BYTES: usize = 64 * 1024;

/// One running attempt's heartbeats, shared by its [`ActivityContext`] and its worker.
#[derive(Debug)]
pub(crate) struct Heartbeats {
    limits: PayloadLimits,
    state: Mutex<HeartbeatState>,
}

#[derive(Debug)]
struct HeartbeatState {
    /// The last heartbeat, or the attempt's start.
    last_beat: Instant,
    /// The last details: the ones the attempt started with, then its own.
    details: Option<Payload>,
    /// How many details the attempt recorded, and how many of them were saved.
    recorded: u64,
    saved: u64,
}

impl Heartbeats {
    /// The heartbeats of an attempt starting now with `details`.
    pub(crate) fn new(limits: PayloadLimits, details: Option<Payload>) -> Heartbeats {
        let state = HeartbeatState { last_beat: Instant::now(), details, recorded: 0, saved: 0 };
        Heartbeats { limits, state: Mutex::new(state) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeartbeatState> {
        // Each change is one assignment; a panic cannot leave the state half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn beat(&self) {
        self.lock().last_beat = Instant::now();
    }

    fn record(&self, details: Payload) {
        let mut state = self.lock();
        state.details = Some(details);
        state.recorded += 1;
    }

    /// When the last heartbeat was (or the attempt started).
    pub(crate) fn last_beat(&self) -> Instant {
        self.lock().last_beat
    }

    /// The last details.
    pub(crate) fn details(&self) -> Option<Payload> {
        self.lock().details.clone()
    }

    /// The last details if they were not saved yet, with their version for
    /// [`Heartbeats::saved`].
    pub(crate) fn unsaved(&self) -> Option<(u64, Payload)> {
        let state = self.lock();
        (state.recorded > state.saved).then(|| state.details.clone().map(|d| (state.recorded, d))).flatten()
    }

    /// Notes that the details of `version` (from [`Heartbeats::unsaved`]) were saved; later
    /// ones stay unsaved.
    pub(crate) fn saved(&self, version: u64) {
        let mut state = self.lock();
        state.saved = state.saved.max(version);
    }
}
