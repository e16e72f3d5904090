//! The HTTP/1 server of the API and the schema registry: what a server on a public port
//! needs beyond the router.
//!
//! - At most `api.max_connections` connections are served at once. Past the cap, the next
//!   connection is accepted and waits for a slot, the rest wait in the kernel's accept queue
//!   (their clients see a slow first answer, not a reset), and idle connections make room: one
//!   waiting for a request head for a second with no byte of it read (a kept-alive connection
//!   between requests, or one that never sent anything) closes for each connection that waits, as
//!   nginx closes keep-alive connections when it runs out. Otherwise idle connections kept
//!   every slot until their idle timeout (60 s): a client pool that had opened the cap's worth
//!   and kept them, or anyone who opened them and sent nothing, locked every other client out.
//! - A connection gets `api.idle_timeout_ms` to start its next request (after it is accepted,
//!   or after the previous response), and `api.header_read_timeout_ms` from that request's
//!   first byte to the end of its head. Both are enforced by hyper's header-read timer, fed a
//!   timer that moves the deadline forward once the first byte arrives; a connection past
//!   either is closed. (Without a timer, as under `axum::serve`, hyper enforces neither, and
//!   a half-sent head held a connection open indefinitely.)
//! - On shutdown nothing more is accepted, idle connections close, and requests in progress
//!   get `max_wait_ms` plus a grace period to finish.
//! - The listening socket's accept queue is as deep as the kernel allows ([`listen`]). With
//!   the 128 that `TcpListener::bind` asks for, a client opening a few hundred connections at
//!   once (an open-loop client after a short pause, a pool warming up) overflowed it while the
//!   cap was reached; the kernel drops a handshake that does not fit, and the client resends it
//!   after 1, 3, 7, 15 s: GETs stalled for 13-16 s and thousands failed (BENCHMARKS.md).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream, ToSocketAddrs};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connection limits (the `[api]` section's, which the registry shares).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub idle: Duration,
    pub header_read: Duration,
    /// How long requests in progress may take to finish once shutdown starts.
    pub drain: Duration,
}

/// Beyond the longest wait a request may ask for, before a draining connection is dropped.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The defaults of `[api]`'s `max_connections`, `idle_timeout_ms`, `header_read_timeout_ms`
/// and `max_wait_ms`, also a registry's without an `[api]` section.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);
pub const DEFAULT_HEADER_READ: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: DEFAULT_MAX_CONNECTIONS, idle: DEFAULT_IDLE, header_read: DEFAULT_HEADER_READ, drain: DEFAULT_MAX_WAIT + DRAIN_GRACE }
    }
}

/// After a failed `accept` (out of file descriptors, say): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The accept queue asked for: Linux cuts it to `net.core.somaxconn` (4096 by default since
/// 5.4), so this means "as deep as the host allows".
const BACKLOG: u32 = 65_535;

/// Binds a listening socket on the first of `addresses` that can be bound, with the deepest
/// accept queue the host allows (see the module doc).
pub async fn listen(addresses: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let mut last = None;
    for address in tokio::net::lookup_host(addresses).await? {
        let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        // As `TcpListener::bind` does: a restarted server rebinds a port still in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket.bind(address).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the address resolved to nothing")))
}

/// Slots wanted by connections waiting past the cap: an idle connection that claims one closes
/// (see the module doc).
#[derive(Default)]
struct Pressure {
    wanted: AtomicBool,
    notify: Arc<Notify>,
}

impl Pressure {
    /// A connection waits for a slot: one idle connection is to give up its own.
    fn want_one(&self) {
        self.wanted.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn satisfied(&self) {
        self.wanted.store(false, Ordering::SeqCst);
    }

    fn wants(&self) -> bool {
        self.wanted.load(Ordering::SeqCst)
    }

    /// Whether this idle connection is the one to close.
    fn claim(&self) -> bool {
        self.wanted.compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// A wake-up for the next `want_one`, registered before it is polled so none is missed
    /// between checking `wanted` and waiting.
    fn listen(&self) -> Pin<Box<OwnedNotified>> {
        let mut notified = Box::pin(self.notify.clone().notified_owned());
        notified.as_mut().enable();
        notified
    }
}

/// Serves `app` on `listener` until `shutdown`, then drains the open connections.
pub async fn run(listener: TcpListener, app: Router, limits: Limits, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let pressure = Arc::new(Pressure::default());
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Answers and event-stream frames go out as written: with Nagle's algorithm
                    // a small SSE frame waited for the client's delayed ACK of the one before
                    // (up to 40 ms on Linux; chunk latency p50 11 ms, max 44 ms, before this).
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "setting TCP_NODELAY on an API connection");
                    }
                    stream
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting an API connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                pressure.want_one();
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = permits.clone().acquire_owned() => permit,
                };
                pressure.satisfied();
                match permit {
                    Ok(permit) => permit,
                    // The semaphore is never closed; were it, there would be nothing to wait for.
                    Err(_) => break,
                }
            }
            Err(TryAcquireError::Closed) => break,
        };
        connections.spawn(connection(stream, app.clone(), limits, permit, pressure.clone(), shutdown.clone()));
    }
    // Stop accepting at once: a client connecting now is refused rather than left waiting.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One connection, holding its permit until it closes.
async fn connection(stream: TcpStream, app: Router, limits: Limits, _permit: OwnedSemaphorePermit, pressure: Arc<Pressure>, shutdown: CancellationToken) {
    let bytes_read = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Counted { inner: stream, bytes_read: bytes_read.clone() });
    let mut builder = http1::Builder::new();
    // hyper's header-read deadline is the idle one; the timer shortens it to `header_read`
    // once the head's first byte arrives.
    builder.timer(HeadTimer { bytes_read, header_read: limits.header_read, pressure }).header_read_timeout(limits.idle);
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
    pressure: Arc<Pressure>,
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
            shed: Some(Shed::new(self.pressure.clone())),
        })
    }
}

/// Fires at the idle deadline, or `header_read` after the first byte read since it was
/// armed, whichever is first, or at once while the connection is idle (no byte of the head
/// yet) and a connection waiting past the cap wants its slot. hyper polls it each time a
/// read leaves the head incomplete, so it sees the first byte as soon as it is read, and a
/// `want_one` wakes the connection to poll it.
struct HeadDeadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    bytes_read: Arc<AtomicU64>,
    read_at_start: u64,
    /// Until the head's first byte: then the deadline is moved and this is `None`.
    header_read: Option<Duration>,
    /// While idle: who may ask for the slot, and the wake-up for when one does.
    shed: Option<Shed>,
}

/// How long a connection must have waited for a request head, with none of it read, before
/// it counts as idle and may be closed for a connection waiting past the cap. Not at once:
/// a connection just accepted, or between two requests of a busy client, often has its next
/// request in flight or in the socket before its first read sees it (tokio learns that a new
/// socket is readable only from the next epoll round), and closing it then would fail a
/// request the client had already sent.
const SHED_GRACE: Duration = Duration::from_secs(1);

/// An idle connection's side of [`Pressure`].
struct Shed {
    pressure: Arc<Pressure>,
    notified: Pin<Box<OwnedNotified>>,
    /// When it may be closed for a waiting connection: [`SHED_GRACE`] after it became idle.
    from: tokio::time::Instant,
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Shed {
    fn new(pressure: Arc<Pressure>) -> Shed {
        let notified = pressure.listen();
        Shed { pressure, notified, from: tokio::time::Instant::now() + SHED_GRACE, grace: None }
    }

    /// Ready when this connection is to close for one waiting past the cap; otherwise it is
    /// woken by the next `want_one`, or at the end of its grace while one is wanted.
    fn poll_claimed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Ends: each pass but the last consumes a wake-up, which needs a new `want_one` (at
        // most one per connection accepted past the cap), or the grace, which ends once.
        loop {
            if self.pressure.wants() {
                if tokio::time::Instant::now() >= self.from {
                    if self.pressure.claim() {
                        return Poll::Ready(());
                    }
                } else {
                    let from = self.from;
                    let grace = self.grace.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(from)));
                    if grace.as_mut().poll(cx).is_ready() {
                        continue;
                    }
                }
            }
            match self.notified.as_mut().poll(cx) {
                Poll::Ready(()) => self.notified = self.pressure.listen(),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl HeadDeadline {
    fn plain(deadline: tokio::time::Instant) -> HeadDeadline {
        HeadDeadline {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            bytes_read: Arc::new(AtomicU64::new(0)),
            read_at_start: 0,
            header_read: None,
            shed: None,
        }
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
            // A request is coming: this connection is no longer idle.
            self.shed = None;
            let head_deadline = tokio::time::Instant::now() + header_read;
            if head_deadline < self.sleep.deadline() {
                self.sleep.as_mut().reset(head_deadline);
            }
        }
        if let Some(shed) = &mut self.shed
            && shed.poll_claimed(cx).is_ready()
        {
            return Poll::Ready(());
        }
        self.sleep.as_mut().poll(cx)
    }
}
