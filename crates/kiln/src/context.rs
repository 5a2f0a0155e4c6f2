//! [`OrchestrationContext`]: what orchestration code uses to take durable steps.
//!
//! Every method that takes a step records it in the replay state at the moment it is called, so
//! the order of calls — not the order of awaits — defines the history. The futures it returns
//! ([`DurableFuture`]) resolve from results that replay delivers in history order.

use crate::activity::ActivityOptions;
use crate::failure::Failure;
use crate::registry::ActivityDefaults;
use crate::retry::{RetryCall, RetryPolicy};
use kiln_core::{
    ActivityTimeouts, FailureDetails, Outcome, Payload, PayloadLimits, ReplayState, Slot, Timestamp, error_types,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

/// Longest patch id ([`OrchestrationContext::patched`]).
const MAX_PATCH_ID_CHARS: usize = 100;

/// Namespace for replay-safe UUIDs (v5), so ids are stable across replays.
const UUID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b696c6e_2d6f_7263_6865_737472617465);

pub(crate) struct ContextInner {
    pub(crate) state: Arc<Mutex<ReplayState>>,
    pub(crate) limits: PayloadLimits,
    /// The timeouts registered with activities on this node, which calls that leave a limit
    /// out get (and record) when scheduled.
    pub(crate) activity_defaults: Arc<ActivityDefaults>,
    pub(crate) name: String,
    /// A failure that ends the execution at the end of the current poll (e.g. an oversized
    /// custom status).
    pub(crate) fatal: Mutex<Option<FailureDetails>>,
}

impl ContextInner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, ReplayState> {
        // Replay state changes are single-step and leave it consistent even if user code panicked
        // while a guard was alive, so recovering a poisoned lock is safe.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fail(&self, failure: FailureDetails) {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(failure);
    }
}

/// The handle an orchestration uses to call activities, wait on timers and events, and more.
/// Cheap to clone.
#[derive(Clone)]
pub struct OrchestrationContext {
    pub(crate) inner: Arc<ContextInner>,
}

impl OrchestrationContext {
    pub(crate) fn new(inner: Arc<ContextInner>) -> OrchestrationContext {
        OrchestrationContext { inner }
    }

    /// This instance's id.
    pub fn instance_id(&self) -> String {
        self.inner.lock().instance_id().to_owned()
    }

    /// The orchestration's registered name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The replay-safe current time: when the current turn started, the same on every replay.
    pub fn current_time(&self) -> Timestamp {
        self.inner.lock().current_time()
    }

    /// True while the code is being replayed from history (use it to skip logging twice).
    pub fn is_replaying(&self) -> bool {
        self.inner.lock().is_replaying()
    }

    /// Whether this execution takes the new branch of a code change (as Temporal's `patched`):
    /// wrap the change in `if ctx.patched("my-change") { new } else { old }`. Executions that
    /// reach this point for the first time on code with the patch take the new branch (and
    /// history records it); executions whose history reached it on the code from before take the
    /// old one, so they keep replaying as recorded. The answer holds for the whole execution.
    /// Once no execution from before the patch is left, drop the old branch (keep the call, or
    /// remove it with the branch). See `docs/versioning.md`.
    ///
    /// A patch id must be 1–100 characters; another fails the orchestration. Reusing an id for
    /// another change fails executions that recorded it with a non-determinism error naming it.
    pub fn patched(&self, patch_id: &str) -> bool {
        if patch_id.is_empty() || patch_id.chars().count() > MAX_PATCH_ID_CHARS {
            self.inner.fail(FailureDetails::new(
                error_types::INVALID_PATCH_ID,
                format!("a patch id must be 1–{MAX_PATCH_ID_CHARS} characters, not {}", patch_id.chars().count()),
            ));
            return false;
        }
        self.inner.lock().patched(patch_id)
    }

    /// A replay-safe UUID: the same value on every replay of this step.
    pub fn new_uuid(&self) -> String {
        let seed = self.inner.lock().next_uuid_seed();
        uuid::Uuid::new_v5(&UUID_NAMESPACE, seed.as_bytes()).to_string()
    }

    /// Sets the custom status shown by status queries (saved with the turn). A status over the
    /// size limit fails the orchestration with a clear reason.
    pub fn set_custom_status<T: Serialize + ?Sized>(&self, status: &T) {
        match Payload::encode(status) {
            Ok(payload) => match self.inner.limits.check_custom_status(&payload) {
                Ok(()) => self.inner.lock().set_custom_status(payload),
                Err(err) => self.inner.fail(FailureDetails::new(error_types::PAYLOAD_TOO_LARGE, err.to_string())),
            },
            Err(err) => self.inner.fail(Failure::serialization("custom status", &err).into_details()),
        }
    }

    /// Calls an activity once and waits for its output.
    pub fn call_activity<I: Serialize + ?Sized, O: DeserializeOwned>(&self, name: &str, input: &I) -> DurableFuture<O> {
        match self.encode_payload("activity input", input) {
            Ok(payload) => self.schedule_payload(name, payload, 1, ActivityTimeouts::default(), None),
            Err(failure) => DurableFuture::failed(self, failure),
        }
    }

    /// Calls an activity under a retry policy; waits between attempts are durable timers.
    /// Failures the policy does not retry ([`RetryPolicy::retries`]) end the call at once. Like
    /// every step, the first attempt is scheduled now; the call can be raced with [`select2`].
    ///
    /// [`select2`]: crate::select2
    pub fn call_activity_with_retry<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
        policy: RetryPolicy,
    ) -> RetryCall<O> {
        self.call_activity_with_options(name, input, ActivityOptions::new().retry(policy))
    }

    /// Calls an activity under [`ActivityOptions`]: its timeouts (see
    /// [`Timeouts`](crate::Timeouts)) and retry policy. A timeout out of bounds fails the call
    /// at once with an `InvalidActivityOptions` failure. Like every step, the first attempt is
    /// scheduled now.
    pub fn call_activity_with_options<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
        options: ActivityOptions,
    ) -> RetryCall<O> {
        let timeouts = match options.timeouts.record() {
            Ok(timeouts) => timeouts,
            Err(err) => {
                return RetryCall::failed(self, Failure::typed(error_types::INVALID_ACTIVITY_OPTIONS, err.to_string()));
            }
        };
        match self.encode_payload("activity input", input) {
            Ok(payload) => RetryCall::start(self, name, payload, options.retry, timeouts),
            Err(failure) => RetryCall::failed(self, failure),
        }
    }

    /// `timeouts`, with the limits they leave out taken from the activity's registration on
    /// this node, if it has one.
    pub(crate) fn with_registered_timeouts(&self, name: &str, timeouts: ActivityTimeouts) -> ActivityTimeouts {
        match self.inner.activity_defaults.get(name) {
            Some(defaults) => timeouts.or(defaults),
            None => timeouts,
        }
    }

    /// Schedules one attempt of an activity call.
    pub(crate) fn schedule_payload<O: DeserializeOwned>(
        &self,
        name: &str,
        input: Payload,
        attempt: u32,
        timeouts: ActivityTimeouts,
        heartbeat: Option<Payload>,
    ) -> DurableFuture<O> {
        let timeouts = self.with_registered_timeouts(name, timeouts);
        let step = self.inner.lock().schedule_activity(name, input, attempt, timeouts, heartbeat);
        DurableFuture::new(self, Slot::Step(step), format!("activity '{name}'"))
    }

    /// Starts a sub-orchestration with an id derived from this instance and waits for its output.
    pub fn call_sub_orchestration<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
    ) -> DurableFuture<O> {
        self.start_sub_orchestration(name, None, input)
    }

    /// Starts a sub-orchestration with a chosen instance id and waits for its output.
    pub fn call_sub_orchestration_with_id<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        name: &str,
        instance_id: &str,
        input: &I,
    ) -> DurableFuture<O> {
        self.start_sub_orchestration(name, Some(instance_id.to_owned()), input)
    }

    fn start_sub_orchestration<I: Serialize + ?Sized, O: DeserializeOwned>(
        &self,
        name: &str,
        instance_id: Option<String>,
        input: &I,
    ) -> DurableFuture<O> {
        if let Some(Err(err)) = instance_id.as_deref().map(kiln_core::validate_instance_id) {
            return DurableFuture::failed(self, Failure::typed("InvalidInstanceId", err.to_string()));
        }
        match self.encode_payload("sub-orchestration input", input) {
            Ok(payload) => {
                let step = self.inner.lock().schedule_sub_orchestration(name, "", instance_id, payload);
                DurableFuture::new(self, Slot::Step(step), format!("sub-orchestration '{name}'"))
            }
            Err(failure) => DurableFuture::failed(self, failure),
        }
    }

    /// A durable timer that fires at `fire_at`.
    pub fn create_timer(&self, fire_at: Timestamp) -> DurableFuture<()> {
        let step = self.inner.lock().create_timer(fire_at);
        DurableFuture::new(self, Slot::Step(step), "timer".to_owned())
    }

    /// A durable timer that fires `duration` after the current (replay-safe) time.
    pub fn sleep(&self, duration: Duration) -> DurableFuture<()> {
        self.create_timer(self.current_time().plus_millis(millis(duration)))
    }

    /// Waits for the next external event with this name. Events raised before anyone waits are
    /// kept and handed over in arrival order.
    pub fn wait_for_event<T: DeserializeOwned>(&self, name: &str) -> DurableFuture<T> {
        let slot = self.inner.lock().wait_for_event(name);
        DurableFuture::new(self, slot, format!("event '{name}'"))
    }

    /// Sends an event to another instance (fire and forget). A target id or event name that
    /// breaks the rules a client's would have to follow fails this instance.
    pub fn send_event<T: Serialize + ?Sized>(&self, instance_id: &str, name: &str, data: &T) {
        if let Err(err) = kiln_core::validate_instance_id(instance_id) {
            return self.inner.fail(Failure::typed("InvalidInstanceId", err.to_string()).into_details());
        }
        if let Err(err) = kiln_core::validate_event_name(name) {
            return self.inner.fail(Failure::typed("InvalidEventName", err.to_string()).into_details());
        }
        match self.encode_payload("event data", data) {
            Ok(payload) => self.inner.lock().send_event(instance_id, name, payload),
            Err(failure) => self.inner.fail(failure.into_details()),
        }
    }

    /// Ends this execution and starts a new one with `input` and an empty history. Await it as
    /// the orchestration's last step: it never resolves. External events nobody consumed are
    /// dropped unless [`OrchestrationContext::continue_as_new_preserving_events`] is used.
    pub fn continue_as_new<I: Serialize + ?Sized, T>(&self, input: &I) -> impl Future<Output = T> + Send + use<I, T> {
        self.request_continue_as_new(input, false)
    }

    /// Like [`OrchestrationContext::continue_as_new`], carrying unconsumed events over.
    pub fn continue_as_new_preserving_events<I: Serialize + ?Sized, T>(
        &self,
        input: &I,
    ) -> impl Future<Output = T> + Send + use<I, T> {
        self.request_continue_as_new(input, true)
    }

    fn request_continue_as_new<I: Serialize + ?Sized, T>(
        &self,
        input: &I,
        preserve: bool,
    ) -> impl Future<Output = T> + Send + use<I, T> {
        match self.encode_payload("continue-as-new input", input) {
            Ok(payload) => self.inner.lock().request_continue_as_new(payload, preserve),
            Err(failure) => self.inner.fail(failure.into_details()),
        }
        std::future::pending()
    }

    fn encode_payload<T: Serialize + ?Sized>(&self, what: &'static str, value: &T) -> Result<Payload, Failure> {
        let payload = Payload::encode(value).map_err(|e| Failure::serialization(what, &e))?;
        self.inner
            .limits
            .check(what, &payload)
            .map_err(|e| Failure::typed(error_types::PAYLOAD_TOO_LARGE, e.to_string()))?;
        Ok(payload)
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The result of one durable step. Resolves when replay delivers the step's result; its
/// [`DurableFuture::completed_at`] position lets combinators resolve in history order.
pub struct DurableFuture<T> {
    inner: Arc<ContextInner>,
    slot: Option<Slot>,
    immediate: Option<Failure>,
    /// A failed activity attempt's last heartbeat details, kept from the failure the code sees.
    heartbeat: Option<Payload>,
    what: String,
    _output: PhantomData<fn() -> T>,
}

impl<T> DurableFuture<T> {
    fn new(ctx: &OrchestrationContext, slot: Slot, what: String) -> DurableFuture<T> {
        DurableFuture {
            inner: Arc::clone(&ctx.inner),
            slot: Some(slot),
            immediate: None,
            heartbeat: None,
            what,
            _output: PhantomData,
        }
    }

    pub(crate) fn failed(ctx: &OrchestrationContext, failure: Failure) -> DurableFuture<T> {
        DurableFuture {
            inner: Arc::clone(&ctx.inner),
            slot: None,
            immediate: Some(failure),
            heartbeat: None,
            what: String::new(),
            _output: PhantomData,
        }
    }

    /// The history position of this step's result, once it has one (0 for a step that failed
    /// before it was scheduled).
    pub fn completed_at(&self) -> Option<u64> {
        match self.slot {
            Some(slot) => self.inner.lock().position_of(slot),
            None => self.immediate.as_ref().map(|_| 0),
        }
    }
}

impl<T> DurableFuture<T> {
    /// The step this future waits on, if it is one.
    pub(crate) fn step(&self) -> Option<u64> {
        match self.slot {
            Some(Slot::Step(step)) => Some(step),
            _ => None,
        }
    }

    /// The last heartbeat details of the failed activity attempt this future resolved with, if
    /// it had any (for the call's next attempt).
    pub(crate) fn take_heartbeat_details(&mut self) -> Option<Payload> {
        self.heartbeat.take()
    }

    /// The step's result, once it has one, without taking it: its history position, and the
    /// failure's error type if it failed.
    pub(crate) fn peek(&self) -> Option<(u64, Option<String>)> {
        match self.slot {
            Some(slot) => self.inner.lock().peek(slot).map(|completion| match &completion.outcome {
                Outcome::Completed(_) => (completion.position, None),
                Outcome::Failed(details) => (completion.position, Some(details.error_type.clone())),
            }),
            None => self.immediate.as_ref().map(|failure| (0, Some(failure.error_type().to_owned()))),
        }
    }
}

impl<T> Drop for DurableFuture<T> {
    /// A wait for an external event that ends without its result gives its place back (see
    /// [`kiln_core::ReplayState::abandon_event_wait`]); other steps stay open until they finish,
    /// noted as abandoned ([`kiln_core::ReplayState::abandon_step`]).
    fn drop(&mut self) {
        match self.slot {
            Some(slot @ Slot::Event(_)) => self.inner.lock().abandon_event_wait(slot),
            Some(Slot::Step(step)) => self.inner.lock().abandon_step(step),
            None => {}
        }
    }
}

impl<T: DeserializeOwned> Future for DurableFuture<T> {
    type Output = Result<T, Failure>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(failure) = self.immediate.take() {
            return Poll::Ready(Err(failure));
        }
        let Some(slot) = self.slot else {
            return Poll::Pending;
        };
        let Some(completion) = self.inner.lock().take(slot) else {
            return Poll::Pending;
        };
        self.slot = None;
        Poll::Ready(match completion.outcome {
            Outcome::Completed(payload) => {
                payload.decode_lenient().map_err(|e| Failure::serialization(&format!("output of {}", self.what), &e))
            }
            Outcome::Failed(mut details) => {
                // Progress for the call's next attempt, not part of the failure the code sees
                // (which a `?` would copy into the instance's own failure).
                self.heartbeat = details.last_heartbeat_details.take();
                Err(Failure::from(details))
            }
        })
    }
}
