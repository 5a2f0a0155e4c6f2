//! Turning panics in user code into failures instead of crashed workers.

use kiln_core::{FailureDetails, error_types};
use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The failure recorded for a panic, carrying its message.
pub(crate) fn panic_failure(payload: Box<dyn Any + Send>) -> FailureDetails {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned());
    FailureDetails::new(error_types::PANIC, format!("panicked: {message}"))
}

/// Polls a future, catching a panic raised while polling.
pub(crate) fn poll_catching<F: Future + ?Sized>(
    future: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Result<Poll<F::Output>, FailureDetails> {
    // The future is dropped right after a panic and never polled again, so observing it in a
    // broken state cannot happen: asserting unwind safety is sound here.
    catch_unwind(AssertUnwindSafe(|| future.poll(cx))).map_err(panic_failure)
}

/// A future that resolves to `Err` with the panic's failure if the inner future panics.
pub(crate) struct CatchPanic<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> CatchPanic<F> {
    pub(crate) fn new(inner: F) -> Self {
        CatchPanic { inner: Box::pin(inner) }
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, FailureDetails>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match poll_catching(self.inner.as_mut(), cx) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(failure) => Poll::Ready(Err(failure)),
        }
    }
}
