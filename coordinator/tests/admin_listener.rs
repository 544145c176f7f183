//! The admin HTTP listener (`admin_listen`) against clients that hold connections: a request's
//! headers are awaited only so long, the open connections are capped, and shutdown closes
//! what is left, so that nobody who reaches the admin port can hold the server's shutdown or
//! take the file descriptors its client and peer ports need.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use common::within;
use referee_http_serve::{max_per_address, DRAIN_TIMEOUT, MAX_CONNECTIONS};
use referee_testkit::{free_port, within_for, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

/// A server with an admin listener; its admin address.
async fn start() -> Result<(TestServer, SocketAddr)> {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let server = TestServer::start_with(|c| c.admin_listen = Some(admin)).await?;
    Ok((server, admin))
}

/// Reads until the server closes the connection (a reset counts as closed); what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends a whole request on a new connection; the answer, or nothing if the server closed it
/// unanswered.
async fn ask(admin: SocketAddr) -> Result<Vec<u8>> {
    let mut stream = within("connecting to the admin port", TcpStream::connect(admin)).await??;
    // A connection closed at once may refuse the request: what counts is what comes back.
    let _ = stream.write_all(METRICS).await;
    within("the admin port to answer or close the connection", read_to_close(&mut stream)).await
}

fn answered(got: &[u8]) -> bool {
    got.starts_with(b"HTTP/1.1 200")
}

/// The status line of what the server sent, for a failure's message.
fn status_line(got: &[u8]) -> String {
    String::from_utf8_lossy(got).lines().next().unwrap_or_default().to_string()
}

/// A client that sends half a request line and waits neither holds the server's shutdown nor
/// keeps its connection past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_on_the_admin_port_is_closed_by_shutdown() -> Result<()> {
    let (server, admin) = start().await?;
    let mut idle = within("connecting to the admin port", TcpStream::connect(admin)).await??;
    idle.write_all(b"GET /metrics HTTP/1.1\r\n").await?;
    // Connections are accepted in order: once a later one is answered, the server holds the
    // half-sent one.
    let got = ask(admin).await?;
    ensure!(answered(&got), "the admin port did not answer: {:?}", status_line(&got));
    // `stop` fails past 10 s: the half-sent request may hold the admin listener's drain
    // (`DRAIN_TIMEOUT`), never the server.
    server.stop().await?;
    let got =
        within_for(DRAIN_TIMEOUT, "the half-sent request's connection to be closed", read_to_close(&mut idle)).await?;
    ensure!(!answered(&got), "a half-sent request was answered: {:?}", status_line(&got));
    Ok(())
}

/// One address past its share of the limit (a quarter of it) has its new connections closed
/// at once, unanswered; once one of its held ones ends, the port answers it again. (At the
/// whole limit new connections wait in the backlog instead: referee-http-serve's tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_past_an_address_share_are_closed_and_room_comes_back() -> Result<()> {
    let (server, admin) = start().await?;
    let share = max_per_address(MAX_CONNECTIONS);
    let mut held = Vec::with_capacity(share);
    for _ in 0..share {
        held.push(within("connecting to the admin port", TcpStream::connect(admin)).await??);
    }
    // Connections are accepted in order, so this one comes after the held ones fill this
    // address's share (they are well within their header timeout: opening them takes
    // milliseconds).
    let got = ask(admin).await?;
    ensure!(got.is_empty(), "a connection past one address's share of {share} was answered: {:?}", status_line(&got));
    drop(held.pop());
    // Room comes back once the server sees that connection end; until then one more is closed.
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        let got = ask(admin).await?;
        if answered(&got) {
            break;
        }
        if Instant::now() >= deadline {
            bail!("no room on the admin port after a held connection ended: {:?}", status_line(&got));
        }
        tokio::task::yield_now().await;
    }
    drop(held);
    server.stop().await
}
