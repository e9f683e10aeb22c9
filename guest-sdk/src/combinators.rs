//! Racing and joining durable tasks.
//!
//! The host delivers one completion per step, in history order, and these
//! combinators poll their branches left to right: so a race between an event
//! and a timer is decided the same way on every replay. Losers are dropped
//! when the race is decided, at the same point on every replay, so their
//! cancellation is deterministic too.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// The winner of a [`select`].
///
/// ```
/// let winner: duro_sdk::Either<u32, ()> = duro_sdk::Either::Left(7);
/// assert_eq!(winner, duro_sdk::Either::Left(7));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Either<L, R> {
    /// The first future finished first.
    Left(L),
    /// The second future finished first.
    Right(R),
}

/// Wait for whichever of two futures finishes first. The loser is dropped,
/// which cancels it if it is a [`Task`](crate::Task) (a wait takes no event,
/// a timer fires nothing); race `&mut task` to keep a task for later.
///
/// ```no_run
/// # async fn f(ctx: duro_sdk::OrchestrationContext) {
/// use duro_sdk::{select, Either};
/// let event = ctx.wait_for_external_event::<String>("Go");
/// let timer = ctx.sleep(std::time::Duration::from_secs(60));
/// match select(event, timer).await {
///     Either::Left(payload) => { let _ = payload; }
///     Either::Right(()) => {}
/// }
/// # }
/// ```
pub fn select<A, B>(a: A, b: B) -> impl Future<Output = Either<A::Output, B::Output>>
where
    A: Future,
    B: Future,
{
    let mut a = Box::pin(a);
    let mut b = Box::pin(b);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    })
}

/// Wait for the first of many futures; resolves to its index and output.
/// The others are dropped, which cancels the tasks among them.
///
/// ```no_run
/// # async fn f(ctx: duro_sdk::OrchestrationContext) {
/// let names = ["A", "B", "C"];
/// let waits = names.iter().map(|n| ctx.wait_for_external_event::<String>(n));
/// let (index, _payload) = duro_sdk::when_any(waits).await;
/// # let _ = index; }
/// ```
pub fn when_any<F: Future>(
    futures: impl IntoIterator<Item = F>,
) -> impl Future<Output = (usize, F::Output)> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(move |cx| {
        for (index, future) in futures.iter_mut().enumerate() {
            if let Poll::Ready(v) = future.as_mut().poll(cx) {
                return Poll::Ready((index, v));
            }
        }
        Poll::Pending
    })
}

/// Wait for both futures; resolves to both outputs.
///
/// ```no_run
/// # async fn f(ctx: duro_sdk::OrchestrationContext) {
/// let (a, b) = duro_sdk::join(
///     ctx.wait_for_external_event::<u32>("A"),
///     ctx.wait_for_external_event::<u32>("B"),
/// ).await;
/// # let _ = (a, b); }
/// ```
pub fn join<A, B>(a: A, b: B) -> impl Future<Output = (A::Output, B::Output)>
where
    A: Future,
    B: Future,
{
    let mut outputs: (Option<A::Output>, Option<B::Output>) = (None, None);
    let mut a = Box::pin(a);
    let mut b = Box::pin(b);
    std::future::poll_fn(move |cx| {
        if outputs.0.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            outputs.0 = Some(v);
        }
        if outputs.1.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            outputs.1 = Some(v);
        }
        if outputs.0.is_some() && outputs.1.is_some() {
            Poll::Ready((outputs.0.take().unwrap(), outputs.1.take().unwrap()))
        } else {
            Poll::Pending
        }
    })
}

/// Wait for all futures; resolves to their outputs in the order given.
///
/// ```no_run
/// # async fn f(ctx: duro_sdk::OrchestrationContext) {
/// let waits = ["A", "B"].map(|n| ctx.wait_for_external_event::<u32>(n));
/// let all: Vec<_> = duro_sdk::when_all(waits).await;
/// # let _ = all; }
/// ```
pub fn when_all<F: Future>(
    futures: impl IntoIterator<Item = F>,
) -> impl Future<Output = Vec<F::Output>> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut left = futures.len();
    // Each branch is polled with a waker of its own, and after the first
    // poll only the branches woken since (their task's completion came):
    // a step then costs O(1), not O(branches), so joining n tasks costs
    // O(n) over the whole run instead of O(n²).
    let woken = Arc::new(Woken {
        branches: Mutex::new((0..futures.len()).collect()),
        parent: Mutex::new(None),
    });
    let wakers: Vec<Waker> = (0..futures.len())
        .map(|index| {
            Waker::from(Arc::new(BranchWaker {
                index,
                woken: woken.clone(),
            }))
        })
        .collect();
    // Swapped with the woken list on each poll, so neither allocates again.
    let mut ready = Vec::new();
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        let mut parent = woken.parent.lock().expect("single-threaded");
        match parent.as_mut() {
            Some(known) => known.clone_from(cx.waker()),
            None => *parent = Some(cx.waker().clone()),
        }
        drop(parent);
        std::mem::swap(
            &mut ready,
            &mut *woken.branches.lock().expect("single-threaded"),
        );
        // Left to right, as a full scan would: the same order on every replay.
        ready.sort_unstable();
        ready.dedup();
        for index in ready.drain(..) {
            if outputs[index].is_some() {
                continue;
            }
            let mut branch_cx = Context::from_waker(&wakers[index]);
            if let Poll::Ready(v) = futures[index].as_mut().poll(&mut branch_cx) {
                outputs[index] = Some(v);
                left -= 1;
            }
        }
        if left == 0 {
            Poll::Ready(outputs.iter_mut().map(|o| o.take().unwrap()).collect())
        } else {
            Poll::Pending
        }
    })
}

/// The branches of a `when_all` woken since its last poll, and who to wake
/// when one is.
struct Woken {
    branches: Mutex<Vec<usize>>,
    parent: Mutex<Option<Waker>>,
}

struct BranchWaker {
    index: usize,
    woken: Arc<Woken>,
}

impl Wake for BranchWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken
            .branches
            .lock()
            .expect("single-threaded")
            .push(self.index);
        if let Some(parent) = self.woken.parent.lock().expect("single-threaded").as_ref() {
            parent.wake_by_ref();
        }
    }
}
