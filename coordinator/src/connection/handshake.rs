//! The first frame of a connection: a four-letter word, or a ConnectRequest that creates or
//! resumes a session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tracing::debug;

use super::{now_ms, Shared};
use crate::frame::{read_body, read_prefix};
use crate::outbox::{CloseReason, Outbox};
use crate::proto::{ErrorCode, Id, SessionId};
use crate::request::{encode_connect_response, ConnectRequest};
use crate::state::{ConnEntry, ConnStats};
use crate::txn::{Txn, TxnOp, TxnReply};
use crate::watch::ConnId;

/// A session established on a connection.
pub(super) struct Established {
    pub session: SessionId,
    pub timeout: Duration,
    /// The identities the connection starts with (its address).
    pub auth: Arc<[Id]>,
    pub outbox: Arc<Outbox>,
}

/// Runs the handshake. `Ok(None)`: nothing more to do on this connection (a four-letter word
/// was answered, or the client left before saying anything).
pub(super) async fn run(
    shared: &Arc<Shared>,
    id: ConnId,
    peer: SocketAddr,
    rd: &mut BufReader<OwnedReadHalf>,
    wr: &mut BufWriter<OwnedWriteHalf>,
) -> Result<Option<Established>, String> {
    let max = shared.config.max_packet_bytes;
    let limit = Duration::from_millis(shared.config.handshake_timeout_ms);
    let prefix = match tokio::time::timeout(limit, read_prefix(rd)).await {
        Err(_) => return Err(format!("no ConnectRequest within {} ms (handshake_timeout_ms)", limit.as_millis())),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(None)) => return Ok(None),
        Ok(Ok(Some(p))) => p,
    };
    if let Some(cmd) = crate::fourlw::parse(prefix) {
        let text = if shared.not_serving.load(std::sync::atomic::Ordering::Relaxed) {
            crate::fourlw::answer_not_serving(cmd, &shared.config)
        } else {
            let ensemble = crate::fourlw::ensemble_stats(&shared.raft.metrics().borrow());
            crate::fourlw::answer(cmd, &shared.config, &shared.state, shared.mode(), ensemble.as_ref())
        };
        debug!(conn = id, %peer, cmd, "four-letter word");
        // A client that asks and never reads would hold this connection, and its address's
        // slot, for good once the answer passes the socket buffers (a `cons` or `dump` of a
        // busy server): the answer has the handshake's bound to be taken, as Apache ZooKeeper
        // drops a connection without a session after a while.
        let send = async {
            wr.write_all(text.as_bytes()).await?;
            wr.flush().await?;
            let _ = wr.shutdown().await;
            Ok::<_, std::io::Error>(None)
        };
        return match tokio::time::timeout(limit, send).await {
            Ok(sent) => sent.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "the client did not take the {} bytes answering {cmd} within {} ms (handshake_timeout_ms)",
                text.len(),
                limit.as_millis()
            )),
        };
    }
    let frame = tokio::time::timeout(limit, read_body(rd, prefix, max))
        .await
        .map_err(|_| format!("ConnectRequest not complete within {} ms (handshake_timeout_ms)", limit.as_millis()))?
        .map_err(|e| e.to_string())?;
    let connect = ConnectRequest::decode(&frame).map_err(|e| format!("malformed ConnectRequest: {e}"))?;
    // Cut off from the ensemble: no session here (the client tries its next server).
    if let Some(why) = shared.lock().refusing_clients.clone() {
        return Err(format!("refusing the session: {why}"));
    }

    let Some((session, timeout_ms, password)) = open_session(shared, &connect).await? else {
        // ZooKeeper's answer to an expired, unknown or wrongly authenticated session.
        let frame = encode_connect_response(0, 0, &[0; 16], server_read_only(&connect));
        let _ = wr.write_all(&frame).await;
        let _ = wr.flush().await;
        return Err(format!("session 0x{:x} is expired or unknown", connect.session_id));
    };

    // Every connection is authenticated by its address (ZooKeeper's ip provider).
    let auth: Arc<[Id]> = Arc::from(vec![ip_identity(peer.ip())]);
    let outbox = Arc::new(Outbox::new(id, shared.config.max_queued_outbound_bytes));
    {
        let mut st = shared.lock();
        // A newer connection takes the session over; the older one is closed, as in ZooKeeper.
        for c in st.conns.values().filter(|c| c.session == session) {
            c.outbox.close(CloseReason::SessionMoved);
        }
        let stats = ConnStats { established_ms: now_ms(), timeout_ms, ..ConnStats::default() };
        st.conns.insert(id, ConnEntry { session, auth: auth.clone(), outbox: outbox.clone(), peer, stats });
        st.counters.connections_accepted = st.counters.connections_accepted.saturating_add(1);
    }
    wr.write_all(&encode_connect_response(timeout_ms, session.0, &password, server_read_only(&connect)))
        .await
        .map_err(|e| e.to_string())?;
    wr.flush().await.map_err(|e| e.to_string())?;
    debug!(conn = id, %peer, session = %session, timeout_ms, "session established");
    let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0));
    Ok(Some(Established { session, timeout, auth, outbox }))
}

/// The read-only byte of the ConnectResponse: present only if the client sent one, and then
/// saying whether this server is read-only (it never is), as ZooKeeper writes it.
fn server_read_only(c: &ConnectRequest) -> Option<bool> {
    c.read_only.map(|_| false)
}

/// Creates a new session or resumes one. `None` means the client must be told its session is
/// expired.
async fn open_session(shared: &Arc<Shared>, c: &ConnectRequest) -> Result<Option<(SessionId, i32, [u8; 16])>, String> {
    let last = shared.lock().tree.last_zxid();
    if c.last_zxid_seen > last.0 {
        return Err(format!(
            "client has seen zxid 0x{:x} but this server is at {last}; it must try another server",
            c.last_zxid_seen
        ));
    }
    if c.session_id == 0 {
        let timeout_ms = shared.config.negotiate_timeout(c.timeout_ms);
        let mut password = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut password);
        let txn = Txn {
            session: SessionId(0),
            auth: Vec::new(),
            time_ms: now_ms(),
            op: TxnOp::CreateSession { timeout_ms, password },
        };
        let outcome = shared.proposer.write(txn).await.map_err(|e| format!("cannot create session: {e}"))?;
        return match outcome.result {
            Ok(TxnReply::SessionCreated { session, timeout_ms, password }) => Ok(Some((session, timeout_ms, password))),
            other => Err(format!("session creation answered {other:?}")),
        };
    }
    let id = SessionId(c.session_id);
    // A server that does not lead, or leads but has not applied an entry of its own term yet,
    // may not have applied the session's creation (the client was answered by another server,
    // or by the leader before it): before calling it unknown, catch up with the leader, as
    // ZooKeeper's followers revalidate a session with theirs.
    if shared.config.is_ensemble() && shared.leading().is_none() && shared.lock().tree.session(id).is_none() {
        shared.proposer.barrier().await.map_err(|e| format!("cannot check session {id} with the leader: {e}"))?;
    }
    let arrived = Instant::now();
    // A resumed session keeps the timeout it was created with, whatever this client asks for
    // now and whichever server it reaches: Apache ZooKeeper renegotiates it here, but a lease
    // computed from the first grant (as the failover agent's is) must go on bounding the
    // session's life, and every server of an ensemble expires it by the same figure.
    let (password, timeout_ms) = {
        let mut st = shared.lock();
        let Some(s) = st.tree.session(id) else { return Ok(None) };
        if s.password[..] != c.password[..] {
            return Ok(None);
        }
        let (password, timeout_ms) = (s.password, s.timeout_ms);
        let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0));
        if !st.tracker.reopen(id, timeout, arrived) {
            return Ok(None);
        }
        (password, timeout_ms)
    };
    // The resumed session's ConnectResponse renews the client's idea of it, as a reply does.
    shared.liveness_covered(id, arrived).await?;
    if shared.config.is_ensemble() {
        // This server owns the session from now on: every other server closes its connections
        // of it (SessionMoved), and a write it sends for the session is refused. The client
        // is answered only once the claim is applied: a claim lost (the leader changed as it
        // was forwarded) would leave the session owned elsewhere, and every write of this
        // connection refused with SessionMoved. Failed, the client tries again.
        let txn = Txn {
            session: id,
            auth: Vec::new(),
            time_ms: now_ms(),
            op: TxnOp::ClaimSession { server: shared.config.server_id() },
        };
        let claimed = shared.proposer.write(txn).await.map_err(|e| format!("cannot claim session {id} here: {e}"))?;
        match claimed.result {
            Ok(_) => {}
            Err(ErrorCode::SessionExpired) => return Ok(None),
            Err(e) => return Err(format!("claiming session {id} here answered {e:?}")),
        }
    }
    Ok(Some((id, timeout_ms, password)))
}

/// The `ip` identity of a client at `addr`: an IPv4 client of a listener on an IPv6 address
/// arrives as an IPv4-mapped address, and is known by its IPv4 address, as Java reports it,
/// so `ip` ACLs written for IPv4 addresses match it.
pub(crate) fn ip_identity(addr: std::net::IpAddr) -> Id {
    Id { scheme: "ip".into(), id: addr.to_canonical().to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_client_of_an_ipv6_listener_is_known_by_its_ipv4_address() {
        let mapped: std::net::IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_identity(mapped).id, "10.1.2.3");
        assert_eq!(ip_identity("10.1.2.3".parse().unwrap()).id, "10.1.2.3");
        assert_eq!(ip_identity("2001:db8::1".parse().unwrap()).id, "2001:db8::1");
    }
}
