//! A body that fails once no frame has arrived for a while: used for the
//! requests the host serves (a client that stops sending its upload) and
//! for the answers activities and `ctx.call_http` read (a server that stops
//! sending its answer). The wait starts when the body is first read, so a
//! reader that comes late does not find it expired.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::{Body, Frame};

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the body stalled: no byte arrived for {0:?}")]
pub struct BodyStalled(pub Duration);

/// `B`, failing with [`BodyStalled`] once `timeout` passes between frames.
pub struct StallDeadline<B> {
    inner: B,
    timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> StallDeadline<B> {
    /// `inner`, whose frames may be at most `timeout` apart.
    pub fn new(inner: B, timeout: Duration) -> Self {
        StallDeadline {
            inner,
            timeout,
            deadline: None,
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(deadline.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyStalled(timeout).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
