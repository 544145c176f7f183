//! The listener's bounds, against real sockets on loopback: at the connection limit new
//! connections wait in the backlog (never accepted and closed), one address cannot take every
//! slot, and a request's body must arrive within its timeout.
//!
//! Loopback answers on all of 127.0.0.0/8, so a client bound to 127.0.0.2 is another address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use referee_http_serve::{max_per_address, serve_listener, BODY_TIMEOUT, HEADER_TIMEOUT, MAX_CONNECTIONS};
use referee_testkit::closed_within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

const KEEP_ALIVE: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
const CLOSE: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

fn router() -> Router {
    Router::new().route("/", get(|| async { "ok" })).route("/echo", post(|body: String| async move { body }))
}

/// A listener on 127.0.0.1 served with `max_connections`; its address and the stop sender.
async fn start(max_connections: usize) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(serve_listener("test", listener, router(), None, max_connections, stop_rx));
    (addr, stop)
}

/// A connection to `to` from 127.0.0.`host`.
async fn connect_from(host: u8, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads one whole `ok` answer on a kept-alive connection (within 5 s); `false` if the
/// connection was closed first.
async fn answered(stream: &mut TcpStream) -> bool {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !got.ends_with(b"\r\n\r\nok") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        true
    });
    read.await.expect("an answer or a close within 5 s")
}

/// Past the limit, a new connection is not accepted and closed (which a health check reads as
/// a crashed server): it waits in the backlog and is served once a held connection ends.
#[tokio::test]
async fn at_the_limit_new_connections_wait_and_are_served_once_room_comes() {
    let (addr, _stop) = start(4).await;
    // Four connections from four addresses (the per-address cap is one here), each seen
    // served, then held idle.
    let mut held = Vec::new();
    for host in 2..6 {
        let mut c = connect_from(host, addr).await;
        c.write_all(KEEP_ALIVE).await.unwrap();
        assert!(answered(&mut c).await, "held connection from 127.0.0.{host} was not served");
        held.push(c);
    }
    let mut waiting = connect_from(6, addr).await;
    waiting.write_all(CLOSE).await.unwrap();
    if let Some(got) = closed_within(&mut waiting, Duration::from_millis(500)).await {
        panic!(
            "a connection past the limit was closed instead of left waiting ({} bytes came back: {:?})",
            got.len(),
            String::from_utf8_lossy(&got)
        );
    }
    drop(held.pop());
    let got = closed_within(&mut waiting, Duration::from_secs(5)).await.expect("served once room came back");
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got));
}

/// One address holding connections gets at most its share; another address is still served.
#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let max = 8;
    let share = max_per_address(max);
    assert!(share >= 1 && share < max, "share {share} of {max}");
    let (addr, _stop) = start(max).await;
    let mut flood = Vec::new();
    let mut served = 0;
    for _ in 0..max + 2 {
        let mut c = connect_from(2, addr).await;
        let _ = c.write_all(KEEP_ALIVE).await;
        if answered(&mut c).await {
            served += 1;
        }
        flood.push(c);
    }
    assert_eq!(served, share, "connections served to one address, with the others still held");
    let mut other = connect_from(1, addr).await;
    other.write_all(CLOSE).await.unwrap();
    let got = closed_within(&mut other, Duration::from_secs(5)).await.expect("answered, not left waiting");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "another address was not served while one held {max} connections: {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// A body trickled a byte at a time cannot hold a connection past the body timeout.
#[tokio::test]
async fn a_trickled_body_is_cut_at_its_timeout() {
    let (addr, _stop) = start(MAX_CONNECTIONS).await;
    let mut c = connect_from(1, addr).await;
    c.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n").await.unwrap();
    let headers_sent = Instant::now();
    let bound = BODY_TIMEOUT + Duration::from_secs(2);
    let (mut read, mut write) = c.into_split();
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if write.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(bound, async {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    assert!(
        closed.is_ok(),
        "a body trickled at 5 bytes a second was still being read {bound:?} after its headers (header timeout \
         {HEADER_TIMEOUT:?}); answered so far: {:?}",
        String::from_utf8_lossy(&got)
    );
    let took = headers_sent.elapsed();
    assert!(took >= BODY_TIMEOUT - Duration::from_millis(100), "cut after {took:?}, before the body timeout");
    assert!(got.starts_with(b"HTTP/1.1 408"), "answered {:?}", String::from_utf8_lossy(&got));
}
