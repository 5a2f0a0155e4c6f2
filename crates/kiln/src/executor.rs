//! [`Execution`]: one live orchestration future driven through the replay state.
//!
//! The executor applies history events one at a time and polls the orchestration right after
//! each event that can unblock it. Polling after every single result is what makes combinators
//! resolve in history order. Polls use a no-op waker: orchestration code may only await Kiln's
//! own durable futures, which are resolved by applying events, never by I/O.

use crate::cache::RecordStamp;
use crate::context::{ContextInner, OrchestrationContext};
use crate::panic::poll_catching;
use crate::registry::{ActivityDefaults, ErasedFuture, OrchestrationFn};
use kiln_core::{Applied, ExecutionOutcome, FailureDetails, HistoryEvent, PayloadLimits, ReplayError, ReplayState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A live execution of an orchestration.
pub(crate) struct Execution {
    inner: Arc<ContextInner>,
    orchestration: OrchestrationFn,
    future: Option<ErasedFuture>,
    outcome: Option<ExecutionOutcome>,
    /// The instance record as the turn that last advanced this execution left it (set before
    /// that turn's commit): the cache hands the execution only to a turn whose record is exactly
    /// this one, i.e. that commit landed and nothing was written since.
    pub(crate) committed: Option<RecordStamp>,
}

impl Execution {
    pub(crate) fn new(
        instance_id: &str,
        name: &str,
        execution: u64,
        orchestration: OrchestrationFn,
        limits: PayloadLimits,
        activity_defaults: Arc<ActivityDefaults>,
    ) -> Execution {
        let inner = Arc::new(ContextInner {
            state: Arc::new(Mutex::new(ReplayState::new(instance_id, execution))),
            limits,
            activity_defaults,
            name: name.to_owned(),
            fatal: Mutex::new(None),
        });
        Execution { inner, orchestration, future: None, outcome: None, committed: None }
    }

    /// Replays stored history. No new actions may come out of it.
    pub(crate) fn replay(&mut self, history: &[HistoryEvent]) -> Result<(), ReplayError> {
        {
            let mut state = self.inner.lock();
            state.begin_replay();
            state.note_recorded_patches(history);
        }
        for event in history {
            self.apply(event, false)?;
        }
        self.inner.lock().end_replay()?;
        Ok(())
    }

    /// Applies a new event; returns whether it belongs in history (duplicates do not).
    pub(crate) fn apply_new(&mut self, event: &HistoryEvent) -> Result<bool, ReplayError> {
        if self.outcome.is_some() {
            return Ok(false);
        }
        self.apply(event, true)
    }

    fn apply(&mut self, event: &HistoryEvent, is_new: bool) -> Result<bool, ReplayError> {
        let applied = self.inner.lock().apply(event, is_new)?;
        match applied {
            Applied::Nothing => {}
            Applied::Duplicate => return Ok(false),
            Applied::Start { input } => {
                let ctx = OrchestrationContext::new(Arc::clone(&self.inner));
                self.future = Some((self.orchestration)(ctx, input));
                self.poll()?;
            }
            Applied::Poll => self.poll()?,
        }
        Ok(true)
    }

    fn poll(&mut self) -> Result<(), ReplayError> {
        let Some(future) = self.future.as_mut() else {
            return Ok(());
        };
        if self.outcome.is_some() {
            return Ok(());
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut polled = poll_catching(future.as_mut(), &mut cx);
        // A wait the code dropped may have handed its event to another wait: poll until the
        // code has seen every result it was given (the same on every replay).
        while matches!(polled, Ok(Poll::Pending)) && self.inner.lock().take_handed_over() {
            polled = poll_catching(future.as_mut(), &mut cx);
        }
        if let Some(err) = self.inner.lock().take_code_error() {
            return Err(err);
        }
        let fatal = self.inner.fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
        let continue_as_new = self.inner.lock().continue_as_new_request().cloned();
        self.outcome = match (fatal, polled) {
            (Some(failure), _) | (None, Err(failure)) => Some(ExecutionOutcome::Failed(failure)),
            (None, Ok(_)) if continue_as_new.is_some() => {
                continue_as_new.map(|(input, preserve_unprocessed_events)| ExecutionOutcome::ContinuedAsNew {
                    input,
                    preserve_unprocessed_events,
                })
            }
            (None, Ok(Poll::Ready(Ok(output)))) => Some(ExecutionOutcome::Completed(output)),
            (None, Ok(Poll::Ready(Err(failure)))) => Some(ExecutionOutcome::Failed(failure)),
            (None, Ok(Poll::Pending)) => None,
        };
        if self.outcome.is_some() {
            self.future = None;
        }
        Ok(())
    }

    /// Whether the execution started (its `ExecutionStarted` was applied).
    pub(crate) fn started(&self) -> bool {
        self.future.is_some() || self.outcome.is_some()
    }

    /// How the execution ended, if it did.
    pub(crate) fn outcome(&self) -> Option<&ExecutionOutcome> {
        self.outcome.as_ref()
    }

    /// The replay state (for actions, status and what it waits on).
    pub(crate) fn state(&self) -> MutexGuard<'_, ReplayState> {
        self.inner.lock()
    }

    /// Records a failure found outside the code (e.g. an oversized output).
    pub(crate) fn fail(&mut self, failure: FailureDetails) {
        self.future = None;
        self.outcome = Some(ExecutionOutcome::Failed(failure));
    }
}

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
