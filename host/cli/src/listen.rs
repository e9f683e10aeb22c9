//! The HTTP server's accept loop, hardened against hostile clients: a cap
//! on open connections (refused with a 503 past it), a deadline for a
//! request's head and for the idle time between requests, a deadline
//! between the frames of a request body, and one for a response the client
//! stopped reading. Every limit has a default and a flag.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use duro_wasm::stall::{Stall, StallDeadline};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The server's limits on clients; see `SECURITY.md`.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections open at once; past it a new one is answered 503 and
    /// closed.
    pub max_connections: usize,
    /// How long a client may take to send a request's head, and how long a
    /// connection may sit idle between requests.
    pub header_timeout: Duration,
    /// How long a request body may go without a byte arriving.
    pub body_timeout: Duration,
    /// How long a response may wait for a client that stopped reading.
    pub write_timeout: Duration,
    /// Largest request body an app route or the management API takes
    /// (a deploy has its own).
    pub max_request_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_request_bytes: 2 << 20,
        }
    }
}

/// Largest request head (request line and headers) a client may send.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most headers a request may carry.
const MAX_HEADERS: usize = 128;
/// Connections past the cap being told so at once; more are closed.
const MAX_REFUSALS: usize = 256;
/// File descriptors kept for the store, the compiled-code cache and
/// outbound calls, out of the process's limit, when sizing the cap.
const RESERVED_FDS: u64 = 256;

/// The connection cap that fits the process's file-descriptor limit,
/// raised to its hard limit first (as Go's runtime does): `wanted`, or less
/// with a warning.
pub fn fit_connection_cap(wanted: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let Some(soft) = limit.current else {
        return wanted;
    };
    let fits = soft.saturating_sub(RESERVED_FDS + MAX_REFUSALS as u64) as usize;
    if fits < wanted {
        tracing::warn!(
            "the file-descriptor limit ({soft}) fits {fits} connections, not {wanted}: \
             at most {fits} are served at once (raise `ulimit -n` for more)"
        );
        fits.max(1)
    } else {
        wanted
    }
}

/// Serve `router` on `listener` until `shutdown` resolves; then stop
/// accepting, let the connections finish what they are answering (5 s at
/// most), and return.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Arc::new(limits);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Refusals hold a descriptor for up to a second each: bounded too, past
    // which a connection is closed without a word.
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors (or a connection reset before it
                // was accepted): wait a little rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small JSON answers: send them now rather than wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Ok(refusing) = refusals.clone().try_acquire_owned() {
                let cap = limits.max_connections;
                tokio::spawn(async move {
                    refuse(tcp, cap).await;
                    drop(refusing);
                });
            }
            continue;
        };
        let (router, limits, stopped) = (router.clone(), limits.clone(), stopped.clone());
        tokio::spawn(async move {
            connection(tcp, router, &limits, stopped).await;
            drop(slot);
        });
    }
    let _ = stop.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(5), slots.acquire_many(all)).await;
}

/// Past the cap: a clear answer, then the connection closed.
async fn refuse(mut tcp: TcpStream, cap: usize) {
    use tokio::io::AsyncWriteExt as _;
    let body = format!(
        "{{\"error\":\"the host serves {cap} connections at once and all are taken; try again\"}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Read what the client sends while answering: closing a socket with
    // unread data resets it, and the client would see a reset, not the 503.
    let exchange = async {
        use tokio::io::AsyncReadExt as _;
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = MAX_HEAD_BYTES;
        while left > 0 {
            let n = tcp.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), exchange).await;
}

/// What a connection's watchdog reads: requests under way, and since when
/// none has been.
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `start` when the last request ended.
    idle_since: AtomicU64,
    start: Instant,
}

impl Activity {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// Counts a request as under way until its answer's head is ready.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(self.0.now(), Ordering::Release);
        }
    }
}

async fn connection(
    tcp: TcpStream,
    router: axum::Router,
    limits: &HttpLimits,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        idle_since: AtomicU64::new(0),
        start: Instant::now(),
    });
    let body_timeout = limits.body_timeout;
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            activity.in_flight.fetch_add(1, Ordering::AcqRel);
            let in_flight = InFlight(activity.clone());
            let request = request.map(|body| Body::new(StallDeadline::new(body, body_timeout)));
            let router = router.clone();
            async move {
                let response = tower::ServiceExt::oneshot(router, request).await;
                drop(in_flight);
                response
            }
        })
    };
    let io = TokioIo::new(WriteDeadline::new(tcp, limits.write_timeout));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service);
    tokio::pin!(connection);
    // The watchdog: a connection with no request under way for longer than
    // the head deadline (idle, or dribbling the next request's head) is
    // closed, which hyper's own timer does for the first request only.
    let tick = (limits.header_timeout / 4).max(Duration::from_millis(50));
    let idle_limit = limits.header_timeout.as_millis() as u64;
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = tokio::time::sleep(tick), if !closing => {
                let idle = activity.in_flight.load(Ordering::Acquire) == 0
                    && activity.now().saturating_sub(activity.idle_since.load(Ordering::Acquire))
                        > idle_limit;
                if idle {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = stopped.changed(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// A socket whose writes fail once they have waited `timeout` for a client
/// that does not read.
struct WriteDeadline {
    inner: TcpStream,
    stall: Stall,
}

impl WriteDeadline {
    fn new(inner: TcpStream, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            stall: Stall::new(timeout),
        }
    }

    /// `result` of a write: progress clears the deadline; waiting starts it
    /// and, once it has passed, fails the write.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.stall.watch(cx, result).map(|watched| {
            watched.unwrap_or_else(|timeout| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client read nothing of the answer for {timeout:?}"),
                ))
            })
        })
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.deadline(cx, result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.deadline(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.deadline(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
