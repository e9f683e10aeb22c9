//! Waits that may last only so long without progress ([`Stall`]), and a
//! body built on one that fails once no frame has arrived for a while:
//! used for the requests the host serves (a client that stops sending its
//! upload) and for the answers activities and `ctx.call_http` read (a
//! server that stops sending its answer). The wait starts when the body is
//! first read, so a reader that comes late does not find it expired.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::{Body, Frame};

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the body stalled: no byte arrived for {0:?}")]
pub struct BodyStalled(pub Duration);

/// An operation polled again and again that may wait at most `timeout`
/// without progress: progress clears the deadline, waiting starts it.
pub struct Stall {
    timeout: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stall {
    /// At most `timeout` without progress.
    pub fn new(timeout: Duration) -> Self {
        Stall {
            timeout,
            waiting: None,
        }
    }

    /// What the operation's poll gave: ready, passed on (and the deadline
    /// cleared); pending, still pending until the deadline has passed,
    /// then `Err` with the timeout.
    pub fn watch<T>(&mut self, cx: &mut Context<'_>, polled: Poll<T>) -> Poll<Result<T, Duration>> {
        match polled {
            Poll::Ready(value) => {
                self.waiting = None;
                Poll::Ready(Ok(value))
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let waiting = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(waiting.as_mut().poll(cx));
                Poll::Ready(Err(timeout))
            }
        }
    }
}

/// `B`, failing with [`BodyStalled`] once `timeout` passes between frames.
pub struct StallDeadline<B> {
    inner: B,
    stall: Stall,
}

impl<B> StallDeadline<B> {
    /// `inner`, whose frames may be at most `timeout` apart.
    pub fn new(inner: B, timeout: Duration) -> Self {
        StallDeadline {
            inner,
            stall: Stall::new(timeout),
        }
    }
}

impl<B> Body for StallDeadline<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.stall.watch(cx, polled).map(|watched| match watched {
            Ok(frame) => frame.map(|f| f.map_err(Into::into)),
            Err(timeout) => Some(Err(BodyStalled(timeout).into())),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
