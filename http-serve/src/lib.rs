//! Bounded HTTP serving for every Referee listener: the failover agent's probes, admin API and
//! peer API, the coordinator's admin listener (`admin_listen`) and the demo master all serve
//! through [`serve_listener`], which takes an already bound listener, an axum `Router`, an
//! optional TLS acceptor (tokio-rustls) and a stop signal, and serves each connection with
//! hyper's HTTP/1 server on its own task. [`stopped`] is the stop signal's wait, for callers
//! that share it.
//!
//! ```text
//!   listener ─accept─▶ open < limit? ──no──▶ closed at once (a warning at most every 10 s)
//!                           │ yes
//!                           ▼
//!          own task: [TLS handshake] ─▶ HTTP/1, headers within HEADER_TIMEOUT ─▶ Router
//!
//!   stop turns true ─▶ no more accepts ─▶ requests in flight get DRAIN_TIMEOUT ─▶ dropped
//! ```
//!
//! Every listener is served the same way: each connection on its own task, its request
//! headers within [`HEADER_TIMEOUT`] (an idle keep-alive connection too), at most
//! [`MAX_CONNECTIONS`] open at once, and at shutdown open requests given [`DRAIN_TIMEOUT`] to
//! finish before their connections are dropped.
//!
//! The bounds keep anyone who can reach a port from holding the process behind it: a client
//! that sends half a request line and waits would otherwise keep its connection, and the
//! process's shutdown, forever; a thousand of them would take every file descriptor the rest
//! of the process needs (the agent's health checks, fencing methods and coordinator
//! connection; the coordinator's client and peer ports). Past the limit, a new connection is
//! closed at once (a load balancer sees a failed check, never a hung one).

#![deny(missing_docs)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// A TLS handshake, or a request's headers (the first or the next on a kept-alive connection),
/// must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish their request once shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections one listener keeps open at once; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 256;
/// The least time between two warnings about connections closed at the limit.
const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

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

/// Accepts connections on `listener` until `stop` turns true, each served on its own task, at
/// most `max_connections` at once; then gives open requests [`DRAIN_TIMEOUT`]. `what` names
/// the listener in the logs.
pub async fn serve_listener(
    what: &'static str,
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    info!(%local, tls = tls.is_some(), "{what} listening");
    let mut connections = JoinSet::new();
    // Each connection watches its own receiver; `stop` is borrowed by the select below.
    let for_connections = stop.clone();
    let mut refused = 0u64;
    let mut warned: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) if connections.len() >= max_connections => {
                    drop(tcp);
                    refused += 1;
                    if warned.is_none_or(|at| at.elapsed() >= LIMIT_WARNING_INTERVAL) {
                        warn!(
                            %local, %remote, refused,
                            "{what}: {max_connections} connections open, the most kept; closing new ones \
                             until some end (a client holding connections idle?)"
                        );
                        warned = Some(Instant::now());
                    }
                }
                Ok((tcp, remote)) => {
                    let _ = tcp.set_nodelay(true);
                    connections.spawn(serve_connection(what, tcp, remote, router.clone(), tls.clone(), for_connections.clone()));
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

/// The router for one connection, stamping each request with the peer's address for the logs.
#[derive(Clone)]
struct ConnectionService {
    inner: TowerToHyperService<Router>,
    remote: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnectionService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = <TowerToHyperService<Router> as hyper::service::Service<hyper::Request<Incoming>>>::Future;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.remote));
        self.inner.call(request)
    }
}
