//! TCP sockets by local port through the kernel's socket-diagnostics netlink
//! (`NETLINK_SOCK_DIAG`, the interface `ss` uses).
//!
//! Asked for the LISTEN state only, the kernel walks its listening hash and nothing else,
//! whereas `/proc/net/tcp` walks every bucket of the established-connection hash as well; on a
//! host with a large table that costs tens of milliseconds per read, which `kill` would spend
//! in the middle of a failover. Asked for every state (the sessions a master serves on its port
//! count as much as its listener), the kernel walks both hashes but sends only sockets, not
//! text, and the reader keeps those on the port. The answer is the same set of socket inodes
//! as the text tables give (a test checks the two against each other);
//! [`crate::procfs::port_holders`] falls back to the text tables when netlink is refused.
//!
//! Wire layout (`linux/inet_diag.h`, `linux/netlink.h`): a request is an `nlmsghdr` of type
//! `SOCK_DIAG_BY_FAMILY` with `NLM_F_REQUEST | NLM_F_DUMP`, followed by an `inet_diag_req_v2`;
//! the answer is a run of `nlmsghdr` + `inet_diag_msg` records ended by `NLMSG_DONE`.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::procfs::PortSockets;

/// `SOCK_DIAG_BY_FAMILY` (`linux/sock_diag.h`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCP_LISTEN` in the kernel's TCP state numbering.
const TCP_LISTEN: u32 = 10;
/// Every TCP state a socket held by a process can be in: all of them (`ss` asks for
/// `(1 << 13) - 1`) but SYN_RECV (3), TIME_WAIT (6) and NEW_SYN_RECV (12), which are the
/// kernel's alone and carry no inode.
const HELD_STATES: u32 = ((1 << 13) - 1) & !(1 << 3) & !(1 << 6) & !(1 << 12);
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDR_LEN: usize = 16;
/// `sizeof(struct inet_diag_req_v2)`: family, protocol, ext, pad, states, then a 48-byte id.
const REQ_LEN: usize = 8 + 48;
/// `sizeof(struct inet_diag_msg)`: family, state, timer, retrans, a 48-byte id, then expires,
/// rqueue, wqueue, uid, inode.
const MSG_LEN: usize = 4 + 48 + 20;
/// Offset of `idiag_state` in `inet_diag_msg`.
const MSG_STATE: usize = 1;
/// Offset of `idiag_sport` (network byte order) in `inet_diag_msg`.
const MSG_SPORT: usize = 4;
/// Offset of `idiag_inode` in `inet_diag_msg`.
const MSG_INODE: usize = 4 + 48 + 16;

/// One socket of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Socket {
    /// Local port.
    port: u16,
    inode: u64,
    listening: bool,
}

/// TCP sockets whose local port is `port`, IPv4 and IPv6, in this network namespace: inode →
/// whether it listens.
pub(crate) fn port_sockets(port: u16, which: PortSockets) -> io::Result<BTreeMap<u64, bool>> {
    let states = match which {
        PortSockets::Listening => 1 << TCP_LISTEN,
        PortSockets::All => HELD_STATES,
    };
    let mut sockets = BTreeMap::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        match dump(family as u8, states) {
            Ok(found) => sockets.extend(found.into_iter().filter(|s| s.port == port).map(|s| (s.inode, s.listening))),
            // No IPv6 on this host: nothing can use the port there.
            Err(e) if family == libc::AF_INET6 && e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sockets)
}

/// Every TCP socket of one address family in one of `states` (a bit per TCP state).
fn dump(family: u8, states: u32) -> io::Result<Vec<Socket>> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // Bounds the receive loop below should the kernel stop answering mid-dump.
    let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
    // SAFETY: a valid socket, a valid option and a pointer to a timeval of the stated size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }

    let request = encode_request(family, states);
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value (the kernel as peer).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: a valid socket, a buffer of the stated length, a sockaddr_nl of its size.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut found = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: a valid socket and a buffer of the stated length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        match parse_answer(&buf[..n as usize], &mut found)? {
            Parsed::More => {}
            Parsed::Done => return Ok(found),
        }
    }
}

/// The dump request for the TCP sockets of `family` in `states`.
fn encode_request(family: u8, states: u32) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + REQ_LEN;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    out.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    out.push(family);
    out.push(libc::IPPROTO_TCP as u8);
    out.push(0); // no extensions
    out.push(0); // pad
    out.extend_from_slice(&states.to_ne_bytes());
    out.resize(len, 0); // the socket id: any
    out
}

/// Whether the dump goes on after one datagram.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    More,
    Done,
}

/// Parses one datagram of the answer, adding each socket to `found`.
fn parse_answer(mut data: &[u8], found: &mut Vec<Socket>) -> io::Result<Parsed> {
    let truncated = || io::Error::new(io::ErrorKind::InvalidData, "truncated socket-diagnostics answer");
    while data.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDR_LEN || len > data.len() {
            return Err(truncated());
        }
        let body = &data[NLMSG_HDR_LEN..len];
        match kind as i32 {
            libc::NLMSG_DONE => return Ok(Parsed::Done),
            libc::NLMSG_ERROR => {
                let errno = body.get(0..4).ok_or_else(truncated)?;
                let errno = i32::from_ne_bytes(errno.try_into().expect("4 bytes"));
                return Err(io::Error::from_raw_os_error(-errno));
            }
            _ if kind == SOCK_DIAG_BY_FAMILY => {
                if body.len() < MSG_LEN {
                    return Err(truncated());
                }
                let port = u16::from_be_bytes(body[MSG_SPORT..MSG_SPORT + 2].try_into().expect("2 bytes"));
                let inode = u32::from_ne_bytes(body[MSG_INODE..MSG_INODE + 4].try_into().expect("4 bytes"));
                let listening = u32::from(body[MSG_STATE]) == TCP_LISTEN;
                // No inode: a socket no process holds (being torn down, or not yet accepted).
                if inode != 0 {
                    found.push(Socket { port, inode: u64::from(inode), listening });
                }
            }
            // Anything else (NLMSG_NOOP, say) carries nothing for us.
            _ => {}
        }
        // Records are aligned to 4 bytes.
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or(&[]);
    }
    Ok(Parsed::More)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR_LEN + body.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(body);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn socket(port: u16, inode: u32, state: u32) -> Vec<u8> {
        let mut body = vec![0u8; MSG_LEN];
        body[0] = libc::AF_INET as u8;
        body[MSG_STATE] = state as u8;
        body[MSG_SPORT..MSG_SPORT + 2].copy_from_slice(&port.to_be_bytes());
        body[MSG_INODE..MSG_INODE + 4].copy_from_slice(&inode.to_ne_bytes());
        record(SOCK_DIAG_BY_FAMILY, &body)
    }

    #[test]
    fn request_layout() {
        let r = encode_request(libc::AF_INET6 as u8, 1 << TCP_LISTEN);
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(r[6..8].try_into().unwrap()), 0x301);
        assert_eq!(r[16], libc::AF_INET6 as u8);
        assert_eq!(r[17], 6);
        assert_eq!(u32::from_ne_bytes(r[20..24].try_into().unwrap()), 1 << 10);
        assert!(r[24..].iter().all(|b| *b == 0));
    }

    #[test]
    fn answers_are_parsed_until_done() {
        let mut found = Vec::new();
        let datagram = [socket(8080, 111, TCP_LISTEN), socket(22, 333, 1)].concat();
        assert_eq!(parse_answer(&datagram, &mut found).unwrap(), Parsed::More);
        let datagram = [socket(9090, 0, TCP_LISTEN), record(libc::NLMSG_DONE as u16, &[0; 4])].concat();
        assert_eq!(parse_answer(&datagram, &mut found).unwrap(), Parsed::Done);
        // An inode of 0 (a socket being torn down) is held by no process.
        assert_eq!(
            found,
            vec![Socket { port: 8080, inode: 111, listening: true }, Socket { port: 22, inode: 333, listening: false }]
        );
        // Listeners and sessions in every state a process can hold (established, closing, ...)
        // are asked for; TIME_WAIT and the embryonic states are not.
        for held in [TCP_LISTEN, 1, 4, 5, 7, 8, 9, 11] {
            assert_ne!(HELD_STATES & (1 << held), 0, "state {held}");
        }
        for unheld in [3, 6, 12] {
            assert_eq!(HELD_STATES & (1 << unheld), 0, "state {unheld}");
        }
    }

    #[test]
    fn errors_and_truncation_are_reported() {
        let mut found = Vec::new();
        let error = record(libc::NLMSG_ERROR as u16, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(parse_answer(&error, &mut found).unwrap_err().raw_os_error(), Some(libc::EPERM));
        let mut cut = socket(8080, 1, TCP_LISTEN);
        cut.truncate(30);
        assert_eq!(parse_answer(&cut, &mut found).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
