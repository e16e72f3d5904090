//! The API's HTTP/1 server: what a server on a public port needs beyond the router.
//!
//! - At most `api.max_connections` connections are served at once. A permit is taken before
//!   `accept`, so a connection past the cap waits in the kernel's backlog until one closes
//!   (its client sees a slow connect, not a reset).
//! - A connection gets `api.idle_timeout_ms` to start its next request (after it is accepted,
//!   or after the previous response), and `api.header_read_timeout_ms` from that request's
//!   first byte to the end of its head. Both are enforced by hyper's header-read timer, fed a
//!   timer that moves the deadline forward once the first byte arrives; a connection past
//!   either is closed. (Without a timer, as under `axum::serve`, hyper enforces neither, and
//!   a half-sent head held a connection open indefinitely.)
//! - On shutdown nothing more is accepted, idle connections close, and requests in progress
//!   get `max_wait_ms` plus a grace period to finish.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ApiConfig;

/// Connection limits, from `[api]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle: Duration,
    pub header_read: Duration,
    /// How long requests in progress may take to finish once shutdown starts.
    pub drain: Duration,
}

/// Beyond the longest wait a request may ask for, before a draining connection is dropped.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// After a failed `accept` (out of file descriptors, say): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl Limits {
    pub fn of(config: &ApiConfig) -> Limits {
        Limits {
            max_connections: config.max_connections,
            idle: Duration::from_millis(config.idle_timeout_ms),
            header_read: Duration::from_millis(config.header_read_timeout_ms),
            drain: Duration::from_millis(config.max_wait_ms) + DRAIN_GRACE,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then drains the open connections.
pub async fn run(listener: TcpListener, app: Router, limits: Limits, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed; were it, there would be nothing to wait for.
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting an API connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        connections.spawn(connection(stream, app.clone(), limits, permit, shutdown.clone()));
    }
    // Stop accepting at once: a client connecting now is refused rather than left waiting.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One connection, holding its permit until it closes.
async fn connection(stream: TcpStream, app: Router, limits: Limits, _permit: OwnedSemaphorePermit, shutdown: CancellationToken) {
    let bytes_read = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Counted { inner: stream, bytes_read: bytes_read.clone() });
    let mut builder = http1::Builder::new();
    // hyper's header-read deadline is the idle one; the timer shortens it to `header_read`
    // once the head's first byte arrives.
    builder.timer(HeadTimer { bytes_read, header_read: limits.header_read }).header_read_timeout(limits.idle);
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.drain, conn.as_mut()).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::info!(drain_ms = limits.drain.as_millis() as u64, "an API connection did not finish within the drain time; closed");
                    return;
                }
            }
        }
    };
    // Timeouts and clients that hang up end here: normal for a public server, not an error of ours.
    if let Err(error) = served {
        tracing::debug!(%error, "API connection ended");
    }
}

/// A TCP stream that counts the bytes read, so the header timer sees a request begin.
struct Counted {
    inner: TcpStream,
    bytes_read: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.bytes_read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The timer of one connection. hyper (1.x, HTTP/1 server) uses it only for the header-read
/// deadline, which it arms when it starts waiting for a request head.
struct HeadTimer {
    bytes_read: Arc<AtomicU64>,
    header_read: Duration,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadDeadline::plain(tokio::time::Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadDeadline {
            sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
            bytes_read: self.bytes_read.clone(),
            read_at_start: self.bytes_read.load(Ordering::Relaxed),
            header_read: Some(self.header_read),
        })
    }
}

/// Fires at the idle deadline, or `header_read` after the first byte read since it was
/// armed, whichever is first. hyper polls it each time a read leaves the head incomplete,
/// so it sees the first byte as soon as it is read.
struct HeadDeadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    bytes_read: Arc<AtomicU64>,
    read_at_start: u64,
    /// Until the head's first byte: then the deadline is moved and this is `None`.
    header_read: Option<Duration>,
}

impl HeadDeadline {
    fn plain(deadline: tokio::time::Instant) -> HeadDeadline {
        HeadDeadline { sleep: Box::pin(tokio::time::sleep_until(deadline)), bytes_read: Arc::new(AtomicU64::new(0)), read_at_start: 0, header_read: None }
    }
}

impl Sleep for HeadDeadline {}

impl Future for HeadDeadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(header_read) = self.header_read
            && self.bytes_read.load(Ordering::Relaxed) > self.read_at_start
        {
            self.header_read = None;
            let head_deadline = tokio::time::Instant::now() + header_read;
            if head_deadline < self.sleep.deadline() {
                self.sleep.as_mut().reset(head_deadline);
            }
        }
        self.sleep.as_mut().poll(cx)
    }
}
