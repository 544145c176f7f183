//! Bounded HTTP serving for every Referee listener: the failover agent's probes, admin API and
//! peer API, the coordinator's admin listener (`admin_listen`) and the demo master all serve
//! through [`serve_listener`], which takes an already bound listener, an axum `Router`, an
//! optional TLS acceptor (tokio-rustls) and a stop signal, and serves each connection with
//! hyper's HTTP/1 server on its own task. [`stopped`] is the stop signal's wait, for callers
//! that share it.
//!
//! ```text
//!   open < limit? ──no──▶ accept() not called: new connections wait in the kernel's backlog
//!        │ yes
//!        ▼
//!   listener ─accept─▶ this address below its share? ──no──▶ closed at once (a warning at most every 10 s)
//!                           │ yes
//!                           ▼
//!          own task: [TLS handshake] ─▶ HTTP/1, headers within HEADER_TIMEOUT,
//!                                       body within BODY_TIMEOUT ─▶ Router
//!
//!   stop turns true ─▶ no more accepts ─▶ requests in flight get DRAIN_TIMEOUT ─▶ dropped
//! ```
//!
//! Every listener is served the same way: each connection on its own task, its request
//! headers within [`HEADER_TIMEOUT`] (an idle keep-alive connection too), the body of a request
//! whole within [`BODY_TIMEOUT`] of its headers (past it the request is answered `408` and the
//! connection closed), at most [`MAX_CONNECTIONS`] open at once and at most
//! [`max_per_address`] of them from one remote address, and at shutdown open requests given
//! [`DRAIN_TIMEOUT`] to finish before their connections are dropped.
//!
//! The bounds keep anyone who can reach a port from holding the process behind it: a client
//! that sends half a request line, or a body a byte at a time, and waits would otherwise keep
//! its connection, and the process's shutdown, forever; a thousand of them would take every
//! file descriptor the rest of the process needs (the agent's health checks, fencing methods
//! and coordinator connection; the coordinator's client and peer ports).
//!
//! # At the limits
//!
//! - **All connections in use**: the listener stops accepting. A new client's connection
//!   waits in the kernel's backlog and is served once one ends; a client that gives up first
//!   sees its own timeout. Accepting and closing it instead would tell a health check that the
//!   server crashed (the agent counts a refused or cut connection very differently from a
//!   late answer: see `failover-agent`'s health monitor), and turn a flood of idle connections
//!   into a failover of a healthy master.
//! - **One address over its share** (a quarter of the limit): its new connection is accepted
//!   and closed at once, so one client cannot fill the listener and the rest of the limit stays
//!   for everyone else: a local agent's health checks and a load balancer's probes get through
//!   while one other host holds its share. What this cannot protect is a client flooding from
//!   the *same* address as a legitimate one: every connection from 127.0.0.1 shares one
//!   share, so a local flood closes the local agent's checks too. The agent counts such a cut
//!   connection as ambiguous (under `health.slow_fall`, not `fall`), so a flood from the
//!   agent's own address fails the master over only if it outlasts `slow_fall` checks. Many
//!   addresses together can still fill the whole limit; their excess then waits in the
//!   backlog, which the agent reads as slow, not dead. A proxy in front of a listener is one
//!   address too, and gets one share.

#![deny(missing_docs)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// A TLS handshake, or a request's headers (the first or the next on a kept-alive connection),
/// must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's body must arrive whole within this of its headers; past it the request is
/// answered `408 Request Timeout` and its connection closed.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish their request once shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections one listener keeps open at once; more wait in the backlog until some end.
pub const MAX_CONNECTIONS: usize = 256;
/// The least time between two warnings about a listener at its limits.
const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The connections one remote address may hold open at once on a listener of
/// `max_connections`: a quarter of them (at least one). More from that address are closed as
/// they arrive.
pub fn max_per_address(max_connections: usize) -> usize {
    (max_connections / 4).max(1)
}

/// Completes once shutdown has started (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, not across an await.
    let _ = stop.wait_for(|s| *s).await;
}

/// [`serve_listener`] without TLS, at most [`MAX_CONNECTIONS`] at once, until `shutdown`
/// completes: for a listener whose owner stops it with a future rather than a watch.
pub async fn serve_until(
    what: &'static str,
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let serving = serve_listener(what, listener, router, None, MAX_CONNECTIONS, stop_rx);
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => return served,
        () = shutdown => {}
    }
    let _ = stop_tx.send(true);
    serving.await
}

/// Rate-limits one kind of warning to one every [`LIMIT_WARNING_INTERVAL`].
#[derive(Default)]
struct Warned(Option<Instant>);

impl Warned {
    fn due(&mut self) -> bool {
        let due = self.0.is_none_or(|at| at.elapsed() >= LIMIT_WARNING_INTERVAL);
        if due {
            self.0 = Some(Instant::now());
        }
        due
    }
}

/// Accepts connections on `listener` until `stop` turns true, each served on its own task, at
/// most `max_connections` at once and [`max_per_address`] of them from one address; then gives
/// open requests [`DRAIN_TIMEOUT`]. `what` names the listener in the logs.
pub async fn serve_listener(
    what: &'static str,
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let share = max_per_address(max_connections);
    info!(%local, tls = tls.is_some(), max_connections, max_per_address = share, "{what} listening");
    let mut connections = JoinSet::new();
    // The remote address of each connection's task, and how many each address holds: a task
    // that panics returns nothing but its id, and its address must still be let go.
    let mut addresses: HashMap<tokio::task::Id, IpAddr> = HashMap::new();
    let mut held: HashMap<IpAddr, usize> = HashMap::new();
    // Each connection watches its own receiver; `stop` is borrowed by the select below.
    let for_connections = stop.clone();
    let mut closed_over_share = 0u64;
    let (mut warned_full, mut warned_share) = (Warned::default(), Warned::default());
    loop {
        let room = connections.len() < max_connections;
        if !room && warned_full.due() {
            warn!(
                %local,
                "{what}: {max_connections} connections open, the most kept; new ones wait in the backlog until \
                 some end (a client holding connections idle?)"
            );
        }
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(joined) = connections.join_next_with_id(), if !connections.is_empty() => {
                let id = match joined {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                if let Some(ip) = addresses.remove(&id) {
                    if let Some(n) = held.get_mut(&ip) {
                        *n -= 1;
                        if *n == 0 {
                            held.remove(&ip);
                        }
                    }
                }
            }
            // At the limit accept is not called: the kernel keeps new connections waiting.
            accepted = listener.accept(), if room => match accepted {
                Ok((tcp, remote)) => {
                    let ip = remote.ip().to_canonical();
                    let n = held.entry(ip).or_default();
                    if *n >= share {
                        drop(tcp);
                        closed_over_share += 1;
                        if warned_share.due() {
                            warn!(
                                %local, %remote, closed = closed_over_share,
                                "{what}: {ip} holds {share} connections, its most; closing its new ones until \
                                 some end"
                            );
                        }
                        continue;
                    }
                    *n += 1;
                    let _ = tcp.set_nodelay(true);
                    let task = connections.spawn(serve_connection(
                        what,
                        tcp,
                        remote,
                        router.clone(),
                        tls.clone(),
                        for_connections.clone(),
                    ));
                    addresses.insert(task.id(), ip);
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!(%local, "{what} accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(%local, "{what}: connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}

async fn serve_connection(
    what: &'static str,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    router: Router,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    let service = ConnectionService { inner: TowerToHyperService::new(router), remote };
    match tls {
        None => serve_io(what, tcp, service, stop).await,
        Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => serve_io(what, stream, service, stop).await,
            Ok(Err(e)) => debug!(%remote, "{what}: TLS handshake failed: {e}"),
            Err(_) => debug!(%remote, "{what}: TLS handshake timed out"),
        },
    }
}

async fn serve_io<IO>(what: &'static str, io: IO, service: ConnectionService, mut stop: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = service.remote;
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                debug!(%remote, "{what} connection: {e}");
            }
            return;
        }
        _ = stopped(&mut stop) => conn.as_mut().graceful_shutdown(),
    }
    // Finishes the request in flight, then closes; the listener bounds how long this may take.
    let _ = conn.await;
}

/// The router for one connection, stamping each request with the peer's address for the logs
/// and bounding the time its body may take.
#[derive(Clone)]
struct ConnectionService {
    inner: TowerToHyperService<Router>,
    remote: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnectionService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ConnectInfo(self.remote));
        let expired = Arc::new(AtomicBool::new(false));
        let body = if body.is_end_stream() {
            Body::new(body)
        } else {
            Body::new(TimedBody {
                inner: body,
                deadline: Box::pin(tokio::time::sleep(BODY_TIMEOUT)),
                expired: expired.clone(),
            })
        };
        let answer = self.inner.call(hyper::Request::from_parts(parts, body));
        let remote = self.remote;
        Box::pin(async move {
            let response = answer.await?;
            if !expired.load(Ordering::Relaxed) {
                return Ok(response);
            }
            // Whatever the handler made of a body cut short, the client is told why, and the
            // connection (its body unread) is not kept.
            debug!(%remote, "request body not received within {BODY_TIMEOUT:?}; closing the connection");
            let message = format!("the request body did not arrive within {} s\n", BODY_TIMEOUT.as_secs());
            Ok((StatusCode::REQUEST_TIMEOUT, [(header::CONNECTION, "close")], message).into_response())
        })
    }
}

/// A request body must arrive within [`BODY_TIMEOUT`] of its headers.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {BODY_TIMEOUT:?}")]
struct BodyTimedOut;

/// A request body that fails once its deadline passes, and says so in `expired`.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    expired: Arc<AtomicBool>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
