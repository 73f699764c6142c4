//! Serving connections (plain HTTP, or HTTPS with `server.tls`): the accept loop, the connection
//! cap (`server.max_connections`) and each connection's timers (`server.header_read_timeout_seconds`,
//! `server.idle_timeout_seconds`), with hyper's HTTP/1 connection driven directly (axum's
//! `serve` has no knobs for any of these).
//!
//! Each connection is in one of three phases, and two of them have a deadline:
//! - **head**: from the connection's opening (TLS handshake included), or from the first byte
//!   after an idle period, until a request head is complete: at most the header timeout;
//! - **busy**: a request is being handled; the handlers' own deadline
//!   (`server.request_timeout_seconds`) bounds reading the body, the WAL's bounds the append;
//! - **idle**: after a response, waiting for the next request: at most the idle timeout.
//!
//! A connection past its deadline is closed. The phase is tracked by a wrapper around the socket
//! (a byte arriving while idle starts a head) and one around the service (a call means the head
//! is complete; its end means idle again), so slow-header and idle clients are told apart from
//! slow requests, which hyper's own `header_read_timeout` cannot do (its timer also runs while a
//! keep-alive connection waits, so it would be the idle timeout as well).
//!
//! Over the cap, a connection is still accepted (so it leaves the kernel's queue and holds no
//! client in a hang): up to [`OVERFLOW_CONNECTIONS`] of them get one answer — `/health` as
//! usual, `/ready` and every other route `503` with `ServiceUnavailableException`, which SDKs
//! retry — and are closed; beyond those it is closed at once. Refusals are logged once per
//! [`REFUSAL_LOG_INTERVAL`] with their count.
//!
//! Must not: hold a connection without a deadline outside a request, or keep accepting after
//! the shutdown signal; dropping [`serve`]'s future closes every connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

pub use crate::config::OVERFLOW_CONNECTIONS;
use crate::sources::{MAX_REQUEST_BODY_BYTES, ThrottleLog};

/// How long a connection past the cap has to send its request (TLS handshake included), at
/// most: long enough for a client across the world, short enough that silent connections cannot
/// keep `/health` from being answered for long.
pub const OVERFLOW_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How often "connection limit reached" may be logged (with the count since the last line).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The connection limits, from `server:`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(server.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs(server.idle_timeout_seconds),
            max_connections: server.max_connections,
        }
    }
}

/// The connection counts `serve` keeps, exported on `/metrics`.
pub use crate::metrics::ConnectionStats;

/// Accept and serve connections until `shutdown` resolves; then stop accepting, let every
/// connection finish its current request (idle ones close at once) and return.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let overflow_slots = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let refusals = ThrottleLog::new(REFUSAL_LOG_INTERVAL);
    let (stop_sender, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = finished
                    && error.is_panic()
                {
                    tracing::error!(%error, "a connection task panicked");
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(connection) => connection,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning (as axum does).
                tracing::warn!(%error, "cannot accept a connection");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let lane = match slots.clone().try_acquire_owned() {
            Ok(permit) => Lane::Served(permit),
            Err(_) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                if let Some(summary) = refusals.note("", 0, std::time::Instant::now()) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        refused = summary.puts,
                        since_seconds = REFUSAL_LOG_INTERVAL.as_secs(),
                        "connection limit reached; refusing connections (server.max_connections)"
                    );
                }
                match overflow_slots.clone().try_acquire_owned() {
                    Ok(permit) => Lane::Overflow(permit),
                    // Closed at once: the file descriptor is given back now.
                    Err(_) => continue,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection { router: router.clone(), limits, stop: stop.clone(), stats: stats.clone() };
        connections.spawn(connection.run(tcp, peer, tls.clone(), lane));
    }
    drop(listener);
    let _ = stop_sender.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// A connection's place: within the cap, or past it (one answer, then closed).
enum Lane {
    Served(#[allow(dead_code)] OwnedSemaphorePermit),
    Overflow(#[allow(dead_code)] OwnedSemaphorePermit),
}

struct Connection {
    router: Router,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
    stats: Arc<ConnectionStats>,
}

impl Connection {
    async fn run(self, tcp: TcpStream, peer: std::net::SocketAddr, tls: Option<TlsAcceptor>, lane: Lane) {
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        let phase = Arc::new(Phase::new());
        match tls {
            None => self.drive(tcp, phase, &lane).await,
            Some(acceptor) => {
                // The handshake is part of the head: the same deadline. A shutdown does not wait
                // for it (there is no request to finish yet).
                let mut stop = self.stop.clone();
                let handshake_timeout = match lane {
                    Lane::Served(_) => self.limits.header_read_timeout,
                    Lane::Overflow(_) => self.limits.header_read_timeout.min(OVERFLOW_HEADER_READ_TIMEOUT),
                };
                let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
                tokio::select! {
                    handshaken = handshake => match handshaken {
                        Ok(Ok(stream)) => self.drive(stream, phase, &lane).await,
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "tls handshake failed"),
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    },
                    () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                        tracing::debug!(%peer, "shutting down during a tls handshake");
                    }
                }
            }
        }
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        drop(lane);
    }

    async fn drive<Io>(&self, io: Io, phase: Arc<Phase>, lane: &Lane)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let overflow = matches!(lane, Lane::Overflow(_));
        // Past the cap a connection must send its one request promptly: silent connections
        // must not hold the few overflow slots for long.
        let (header_read_timeout, idle_timeout) = if overflow {
            let head = self.limits.header_read_timeout.min(OVERFLOW_HEADER_READ_TIMEOUT);
            (head, head)
        } else {
            (self.limits.header_read_timeout, self.limits.idle_timeout)
        };
        let io = TokioIo::new(Watched { inner: io, phase: phase.clone() });
        let router = self.router.clone();
        let service_phase = phase.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            service_phase.request_started();
            let router = router.clone();
            let phase = service_phase.clone();
            async move {
                let request = request.map(Body::new);
                let response =
                    if overflow { overflow_answer(router, request).await } else { serve_one(router, request).await };
                phase.request_finished();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.keep_alive(!overflow);
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let mut stop = self.stop.clone();
        let mut stopping = false;
        loop {
            let deadline = phase.deadline(header_read_timeout, idle_timeout);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::trace!(%error, "connection ended with an error");
                    }
                    return;
                }
                changed = stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    if changed.is_ok() {
                        connection.as_mut().graceful_shutdown();
                    }
                }
                () = sleep_until_some(deadline) => {
                    // The phase may have moved on since the deadline was computed.
                    if phase.deadline(header_read_timeout, idle_timeout).is_some_and(|at| at <= Instant::now()) {
                        tracing::debug!(phase = phase.name(), "closing a connection past its deadline");
                        return;
                    }
                }
            }
        }
    }
}

/// File descriptors kept free for what is not a connection: WAL segments, checkpoints, sink and
/// source connections, the listener.
const OTHER_FILES: u64 = 128;

/// Warn when `server.max_connections` (plus the overflow connections and room for everything
/// else) does not fit the process's open-file limit: connections would then fail to accept, or
/// WAL files to open, before the cap is reached. Linux only (reads `/proc/self/limits`).
pub fn warn_if_over_open_file_limit(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let Some(soft_limit) = open_files_soft_limit(&limits) else {
        return;
    };
    let needed = (max_connections + OVERFLOW_CONNECTIONS) as u64 + OTHER_FILES;
    if needed > soft_limit {
        tracing::warn!(
            max_connections,
            open_file_limit = soft_limit,
            needed,
            "server.max_connections does not fit the open-file limit (ulimit -n); lower it or raise the limit"
        );
    }
}

/// The soft limit on the "Max open files" line of `/proc/self/limits` (`None` when unlimited).
fn open_files_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn serve_one(router: Router, request: Request<Body>) -> Response<Body> {
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(infallible) => match infallible {},
    }
}

/// The one answer a connection past the cap gets: `/health` as usual (the process is alive), a
/// `503` naming the limit for everything else, `/ready` included (no room for more traffic).
async fn overflow_answer(router: Router, request: Request<Body>) -> Response<Body> {
    if request.uri().path() == "/health" {
        return serve_one(router, request).await;
    }
    // Read what the client sends (bounded, thrown away): closing a socket with unread data in
    // it resets the connection, and the client may lose the answer before reading it.
    let mut frames = request.into_body().into_data_stream();
    let mut drained = 0usize;
    while drained <= MAX_REQUEST_BODY_BYTES {
        match frames.next().await {
            Some(Ok(frame)) => drained += frame.len(),
            Some(Err(_)) | None => break,
        }
    }
    let code = "ServiceUnavailableException";
    let body = serde_json::json!({
        "__type": code,
        "error": code,
        "message": "connection limit reached (server.max_connections); retry later",
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.1"));
    headers.insert("x-amzn-errortype", HeaderValue::from_static(code));
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    crate::sources::direct_put::with_request_id(&mut response);
    response
}

const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// Where a connection is (head, busy, idle) and since when, shared by the socket wrapper, the
/// service and the connection's timer.
struct Phase {
    opened: Instant,
    phase: AtomicU8,
    /// Milliseconds after `opened` the phase began.
    since_ms: AtomicU64,
}

impl Phase {
    fn new() -> Self {
        Self { opened: Instant::now(), phase: AtomicU8::new(HEAD), since_ms: AtomicU64::new(0) }
    }

    fn set(&self, phase: u8) {
        let now_ms = self.opened.elapsed().as_millis() as u64;
        self.since_ms.store(now_ms, Ordering::Release);
        self.phase.store(phase, Ordering::Release);
    }

    /// A byte arrived: if the connection was idle, a request head has begun.
    fn bytes_arrived(&self) {
        if self.phase.load(Ordering::Acquire) == IDLE {
            self.set(HEAD);
        }
    }

    fn request_started(&self) {
        self.set(BUSY);
    }

    fn request_finished(&self) {
        self.set(IDLE);
    }

    fn deadline(&self, header_read_timeout: Duration, idle_timeout: Duration) -> Option<Instant> {
        let since = self.opened + Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        match self.phase.load(Ordering::Acquire) {
            HEAD => Some(since + header_read_timeout),
            IDLE => Some(since + idle_timeout),
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        match self.phase.load(Ordering::Acquire) {
            HEAD => "reading a request head",
            IDLE => "idle",
            _ => "busy",
        }
    }
}

/// The socket, telling [`Phase`] when bytes arrive.
struct Watched<Io> {
    inner: Io,
    phase: Arc<Phase>,
}

impl<Io: AsyncRead + Unpin> AsyncRead for Watched<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.phase.bytes_arrived();
        }
        result
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Watched<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_soft_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_soft_limit(limits), Some(1024));
        let unlimited = "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(open_files_soft_limit(unlimited), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_has_a_head_deadline_then_none_while_busy_then_an_idle_one() {
        let header = Duration::from_secs(2);
        let idle = Duration::from_secs(30);
        let phase = Phase::new();
        let opened = Instant::now();
        assert_eq!(phase.deadline(header, idle), Some(opened + header), "a new connection must send a head");
        tokio::time::advance(Duration::from_secs(1)).await;
        phase.request_started();
        assert_eq!(phase.deadline(header, idle), None, "the handlers' deadline covers a request");
        tokio::time::advance(Duration::from_secs(5)).await;
        phase.request_finished();
        let finished = Instant::now();
        assert_eq!(phase.deadline(header, idle), Some(finished + idle));
        tokio::time::advance(Duration::from_secs(3)).await;
        phase.bytes_arrived();
        assert_eq!(phase.deadline(header, idle), Some(Instant::now() + header), "a byte starts the next head");
        tokio::time::advance(Duration::from_secs(1)).await;
        phase.bytes_arrived();
        assert_eq!(
            phase.deadline(header, idle),
            Some(Instant::now() - Duration::from_secs(1) + header),
            "not moved by more bytes"
        );
    }
}
