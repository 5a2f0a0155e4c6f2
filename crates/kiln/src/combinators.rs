//! Combinators over durable steps that resolve in **history order**: when several steps are
//! done, the one whose result was recorded first wins, whatever order the code polls them in.
//! That keeps replays deterministic.

use crate::context::DurableFuture;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// One of two results.
#[derive(Debug, PartialEq, Eq)]
pub enum Either<A, B> {
    /// The first future finished first.
    Left(A),
    /// The second future finished first.
    Right(B),
}

/// A future of one durable result that combinators can race in history order: a step
/// ([`DurableFuture`]) or an activity call under a retry policy ([`RetryCall`](crate::RetryCall)).
/// Sealed: only Kiln's own futures know where in history they resolve.
pub trait DurableStep: Future + Unpin + sealed::Sealed {
    /// The history position of the result that resolves this future, once it has one.
    fn completed_at(&self) -> Option<u64>;
}

pub(crate) mod sealed {
    /// Keeps [`super::DurableStep`] to Kiln's own futures.
    pub trait Sealed {}
}

impl<T> sealed::Sealed for DurableFuture<T> {}

impl<T: DeserializeOwned> DurableStep for DurableFuture<T> {
    fn completed_at(&self) -> Option<u64> {
        DurableFuture::completed_at(self)
    }
}

/// Polls a future that has no resolving result yet, so that one made of several steps (a retried
/// call) takes its next step; a plain step without a result stays pending. Combinators advance
/// their futures only while the race is undecided: a loser takes no further step.
fn advance<F: DurableStep>(future: &mut F, cx: &mut Context<'_>) {
    // Pending by construction: without a resolving result nothing can resolve it, and a step it
    // takes now has no result yet.
    let _ = Pin::new(future).poll(cx);
}

/// Waits for whichever of two steps finished first in history. The other is dropped: a losing
/// activity, timer or sub-orchestration's result is ignored when it arrives; a losing
/// `wait_for_event` stops waiting, and an event that reached it anyway stays buffered for the
/// next wait with that name.
pub fn select2<A: DurableStep, B: DurableStep>(a: A, b: B) -> Select2<A, B> {
    Select2 { a, b }
}

/// Future returned by [`select2`].
pub struct Select2<A, B> {
    a: A,
    b: B,
}

impl<A: DurableStep, B: DurableStep> Future for Select2<A, B> {
    type Output = Either<A::Output, B::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.a.completed_at().is_none() && this.b.completed_at().is_none() {
            advance(&mut this.a, cx);
            advance(&mut this.b, cx);
        }
        let first = match (this.a.completed_at(), this.b.completed_at()) {
            (Some(a), Some(b)) => a <= b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return Poll::Pending,
        };
        if first {
            Pin::new(&mut this.a).poll(cx).map(Either::Left)
        } else {
            Pin::new(&mut this.b).poll(cx).map(Either::Right)
        }
    }
}

/// Waits for the first of many steps in history order; returns its index and result.
pub fn select_all<F: DurableStep>(futures: Vec<F>) -> SelectAll<F> {
    SelectAll { futures }
}

/// Future returned by [`select_all`].
pub struct SelectAll<F> {
    futures: Vec<F>,
}

impl<F: DurableStep> Future for SelectAll<F> {
    type Output = (usize, F::Output);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.futures.iter().all(|f| f.completed_at().is_none()) {
            self.futures.iter_mut().for_each(|f| advance(f, cx));
        }
        let winner = self
            .futures
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.completed_at().map(|pos| (pos, i)))
            .min()
            .map(|(_, i)| i);
        match winner {
            Some(i) => Pin::new(&mut self.futures[i]).poll(cx).map(|result| (i, result)),
            None => Poll::Pending,
        }
    }
}

/// Waits for all futures; outputs come back in the order the futures were given.
pub fn join_all<F: Future + Unpin>(futures: Vec<F>) -> JoinAll<F> {
    let outputs = futures.iter().map(|_| None).collect();
    JoinAll { futures: futures.into_iter().map(Some).collect(), outputs }
}

/// Future returned by [`join_all`].
pub struct JoinAll<F: Future> {
    futures: Vec<Option<F>>,
    outputs: Vec<Option<F::Output>>,
}

impl<F: Future + Unpin> Future for JoinAll<F>
where
    F::Output: Unpin,
{
    type Output = Vec<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        for (slot, output) in this.futures.iter_mut().zip(this.outputs.iter_mut()) {
            if let Some(future) = slot
                && let Poll::Ready(value) = Pin::new(future).poll(cx)
            {
                *output = Some(value);
                *slot = None;
            }
        }
        if this.futures.iter().all(Option::is_none) {
            Poll::Ready(this.outputs.iter_mut().filter_map(Option::take).collect())
        } else {
            Poll::Pending
        }
    }
}

/// Waits for two futures of different types.
pub async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut out_a, mut out_b) = (None, None);
    std::future::poll_fn(|cx| {
        if out_a.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            out_a = Some(v);
        }
        if out_b.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            out_b = Some(v);
        }
        match (out_a.take(), out_b.take()) {
            (Some(x), Some(y)) => Poll::Ready((x, y)),
            (x, y) => {
                out_a = x;
                out_b = y;
                Poll::Pending
            }
        }
    })
    .await
}
