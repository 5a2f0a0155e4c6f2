//! Combinators over durable steps that resolve in **history order**: when several steps are
//! done, the one whose result was recorded first wins, whatever order the code polls them in.
//! That keeps replays deterministic.

use crate::context::DurableFuture;
use crate::failure::Failure;
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

/// Waits for whichever of two steps finished first in history. The other is dropped: a losing
/// activity, timer or sub-orchestration's result is ignored when it arrives; a losing
/// `wait_for_event` stops waiting, and an event that reached it anyway stays buffered for the
/// next wait with that name.
pub fn select2<A: DeserializeOwned, B: DeserializeOwned>(a: DurableFuture<A>, b: DurableFuture<B>) -> Select2<A, B> {
    Select2 { a, b }
}

/// Future returned by [`select2`].
pub struct Select2<A, B> {
    a: DurableFuture<A>,
    b: DurableFuture<B>,
}

impl<A: DeserializeOwned, B: DeserializeOwned> Future for Select2<A, B> {
    type Output = Either<Result<A, Failure>, Result<B, Failure>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let first = match (self.a.completed_at(), self.b.completed_at()) {
            (Some(a), Some(b)) => a <= b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return Poll::Pending,
        };
        if first {
            Pin::new(&mut self.a).poll(cx).map(Either::Left)
        } else {
            Pin::new(&mut self.b).poll(cx).map(Either::Right)
        }
    }
}

/// Waits for the first of many steps in history order; returns its index and result.
pub fn select_all<T: DeserializeOwned>(futures: Vec<DurableFuture<T>>) -> SelectAll<T> {
    SelectAll { futures }
}

/// Future returned by [`select_all`].
pub struct SelectAll<T> {
    futures: Vec<DurableFuture<T>>,
}

impl<T: DeserializeOwned> Future for SelectAll<T> {
    type Output = (usize, Result<T, Failure>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
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
