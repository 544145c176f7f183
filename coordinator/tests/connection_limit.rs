//! The per-address connection limit (`max_connections_per_address`, ZooKeeper's
//! maxClientCnxns): connections over the limit are closed at once, before any handshake; the
//! limit is per client address, counts every open connection (four-letter words included, as in
//! ZooKeeper), frees a slot when a connection closes, and 0 means unlimited.

mod common;

use std::net::{IpAddr, SocketAddr};

use anyhow::{ensure, Result};
use common::raw::{body, frame, op, ConnectRequest, ConnectResponse, Raw};
use common::*;
use referee_testkit::{wait_until, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn open_from(server: &TestServer, ip: IpAddr) -> u32 {
    server.state.lock().unwrap().open_per_address.get(&ip).copied().unwrap_or(0)
}

fn rejected(server: &TestServer) -> u64 {
    server.state.lock().unwrap().counters.connections_rejected
}

/// Reads from a socket the server is expected to close without a word: EOF (or a reset) with
/// no byte received.
async fn expect_closed_silently(s: &mut TcpStream) -> Result<()> {
    let mut buf = [0u8; 64];
    match within("the server to close the connection", s.read(&mut buf)).await? {
        Ok(0) => Ok(()),
        Ok(n) => anyhow::bail!("the server sent {n} bytes instead of closing: {:02x?}", &buf[..n]),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Handshakes on an already connected socket; returns the session id.
async fn handshake(s: &mut TcpStream) -> Result<i64> {
    s.write_all(&frame(&ConnectRequest::new_session(5000).encode())).await?;
    let mut len = [0u8; 4];
    within("ConnectResponse", s.read_exact(&mut len)).await??;
    let mut payload = vec![0u8; i32::from_be_bytes(len) as usize];
    within("ConnectResponse body", s.read_exact(&mut payload)).await??;
    let resp = ConnectResponse::decode(&payload)?;
    ensure!(resp.session_id != 0, "no session: {resp:?}");
    Ok(resp.session_id)
}

async fn connect_from(ip: IpAddr, server: SocketAddr) -> Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(ip, 0))?;
    Ok(within("TCP connect", sock.connect(server)).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_over_the_limit_is_closed_at_once() -> Result<()> {
    let server = TestServer::start_with(|c| c.max_connections_per_address = 3).await?;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Raw::connect(server.addr, 5000).await?);
    }
    assert_eq!(open_from(&server, LOCAL), 3);

    // The fourth is accepted by the kernel and closed by the server without a ConnectResponse.
    let mut fourth = TcpStream::connect(server.addr).await?;
    expect_closed_silently(&mut fourth).await?;
    assert_eq!(rejected(&server), 1);
    // Even a four-letter word: the limit counts connections, whatever they carry.
    let mut word = TcpStream::connect(server.addr).await?;
    word.write_all(b"ruok").await.ok();
    expect_closed_silently(&mut word).await?;
    assert_eq!(rejected(&server), 2);
    assert_eq!(open_from(&server, LOCAL), 3, "refused connections take no slot");

    // The first three still work.
    for c in clients.iter_mut() {
        c.call(op::EXISTS, &body::path_watch("/", false)).await?.ok()?;
    }

    // Closing one frees a slot for a new connection.
    drop(clients.pop());
    wait_until(DEADLINE, "the closed connection to free its slot", || open_from(&server, LOCAL) == 2).await?;
    let mut again = Raw::connect(server.addr, 5000).await?;
    again.call(op::EXISTS, &body::path_watch("/", false)).await?.ok()?;
    assert_eq!(open_from(&server, LOCAL), 3);
    let mut fifth = TcpStream::connect(server.addr).await?;
    expect_closed_silently(&mut fifth).await?;
    assert_eq!(rejected(&server), 3);

    // mntr reports the refusals once a slot is free for it.
    drop(again);
    wait_until(DEADLINE, "a free slot", || open_from(&server, LOCAL) == 2).await?;
    let mut m = TcpStream::connect(server.addr).await?;
    m.write_all(b"mntr").await?;
    let mut out = String::new();
    within("mntr", m.read_to_string(&mut out)).await??;
    assert!(out.contains("\nzk_connection_rejected\t3\n"), "{out}");
    drop(clients);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_is_per_client_address() -> Result<()> {
    let server = TestServer::start_with(|c| c.max_connections_per_address = 2).await?;
    let other: IpAddr = "127.0.0.2".parse()?;
    let mut from_one = [connect_from(LOCAL, server.addr).await?, connect_from(LOCAL, server.addr).await?];
    for s in from_one.iter_mut() {
        handshake(s).await?;
    }
    let mut refused = connect_from(LOCAL, server.addr).await?;
    expect_closed_silently(&mut refused).await?;
    // Another loopback address has its own two slots.
    let mut a = connect_from(other, server.addr).await?;
    let mut b = connect_from(other, server.addr).await?;
    handshake(&mut a).await?;
    handshake(&mut b).await?;
    assert_eq!((open_from(&server, LOCAL), open_from(&server, other)), (2, 2));
    let mut c = connect_from(other, server.addr).await?;
    expect_closed_silently(&mut c).await?;
    assert_eq!(rejected(&server), 2);
    assert_eq!(server.connection_count(), 4);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_means_unlimited() -> Result<()> {
    let server = TestServer::start_with(|c| c.max_connections_per_address = 0).await?;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(Raw::connect(server.addr, 5000).await?);
    }
    for c in clients.iter_mut() {
        c.call(op::EXISTS, &body::path_watch("/", false)).await?.ok()?;
    }
    assert_eq!(server.connection_count(), 100);
    assert_eq!(open_from(&server, LOCAL), 100);
    assert_eq!(rejected(&server), 0);
    drop(clients);
    wait_until(DEADLINE, "every connection to close", || open_from(&server, LOCAL) == 0).await?;
    server.stop().await
}
