//! The requests the load generator sends and the packets it tells apart, built on the test
//! kit's jute codec ([`crate::jute`]), which is written from the protocol, not from the server
//! under test.

use anyhow::Result;

pub use crate::jute::{create_mode, err as code, frame, op as opcode, xid, ConnectRequest, ConnectResponse};
use crate::jute::{Jute, Rd};

/// Bytes a request adds around its path and data: header (8), path length (4), data length
/// (4), an `OPEN_ACL_UNSAFE` vector (4 + 4 + 4 + 5 + 4 + 6 = 27) and flags (4), rounded up. A
/// path of `max_packet_bytes - REQUEST_OVERHEAD` bytes keeps any request of this module within
/// a packet of `max_packet_bytes`.
pub const REQUEST_OVERHEAD: usize = 64;

/// What a `getData` result adds to its data inside a `multiRead` reply: the `MultiHeader`
/// (4 + 1 + 4), the buffer length (4) and the `Stat` (68).
pub const MULTI_READ_RESULT_OVERHEAD: usize = 81;

/// A request after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// create, with `OPEN_ACL_UNSAFE`.
    Create {
        /// Node path.
        path: String,
        /// Node data.
        data: Vec<u8>,
        /// One of [`create_mode`].
        flags: i32,
    },
    /// exists.
    Exists {
        /// Node path.
        path: String,
        /// Leave a watch.
        watch: bool,
    },
    /// getData.
    GetData {
        /// Node path.
        path: String,
        /// Leave a watch.
        watch: bool,
    },
    /// setData at any version.
    SetData {
        /// Node path.
        path: String,
        /// New data.
        data: Vec<u8>,
    },
    /// delete at any version.
    Delete {
        /// Node path.
        path: String,
    },
    /// sync: a read after it sees every write committed before it.
    Sync {
        /// Node path (servers answer it back; it selects nothing).
        path: String,
    },
    /// multiRead of one getData per path.
    MultiReadData {
        /// The nodes to read.
        paths: Vec<String>,
    },
    /// ping (sent with xid -2 whatever xid the caller gives).
    Ping,
    /// closeSession.
    CloseSession,
}

impl Request {
    /// Its opcode.
    pub fn opcode(&self) -> i32 {
        match self {
            Request::Create { .. } => opcode::CREATE,
            Request::Exists { .. } => opcode::EXISTS,
            Request::GetData { .. } => opcode::GET_DATA,
            Request::SetData { .. } => opcode::SET_DATA,
            Request::Delete { .. } => opcode::DELETE,
            Request::Sync { .. } => opcode::SYNC,
            Request::MultiReadData { .. } => opcode::MULTI_READ,
            Request::Ping => opcode::PING,
            Request::CloseSession => opcode::CLOSE_SESSION,
        }
    }

    /// The payload with header `xid` (pings always carry [`xid::PING`]), without the length
    /// prefix.
    pub fn encode(&self, xid: i32) -> Vec<u8> {
        let xid = if matches!(self, Request::Ping) { xid::PING } else { xid };
        let w = Jute::new().int(xid).int(self.opcode());
        match self {
            Request::Create { path, data, flags } => w.string(path).buffer(Some(data)).open_acl().int(*flags),
            Request::Exists { path, watch } | Request::GetData { path, watch } => w.string(path).boolean(*watch),
            Request::SetData { path, data } => w.string(path).buffer(Some(data)).int(-1),
            Request::Delete { path } => w.string(path).int(-1),
            Request::Sync { path } => w.string(path),
            Request::MultiReadData { paths } => {
                // Each op: MultiHeader{type, done = false, err = -1} and a GetDataRequest;
                // the end: MultiHeader{-1, true, -1}.
                let ops = paths
                    .iter()
                    .fold(w, |w, path| w.int(opcode::GET_DATA).boolean(false).int(-1).string(path).boolean(false));
                ops.int(-1).boolean(true).int(-1)
            }
            Request::Ping | Request::CloseSession => w,
        }
        .into_vec()
    }
}

/// A packet from the server after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// The reply to a request.
    Reply {
        /// The request's xid ([`xid::PING`] for a ping).
        xid: i32,
        /// The server's zxid.
        zxid: i64,
        /// 0 or a ZooKeeper error code.
        err: i32,
        /// The body, empty when `err` is not 0.
        body: Vec<u8>,
    },
    /// A watch notification.
    Notification {
        /// The event type.
        event: i32,
        /// The node.
        path: String,
    },
}

impl Packet {
    /// Decodes a post-handshake payload.
    pub fn decode(payload: &[u8]) -> Result<Packet> {
        let mut r = Rd::new(payload);
        let xid = r.int()?;
        let zxid = r.long()?;
        let err = r.int()?;
        if xid == xid::NOTIFICATION {
            let event = r.int()?;
            let _state = r.int()?;
            let path = r.string()?;
            return Ok(Packet::Notification { event, path });
        }
        Ok(Packet::Reply { xid, zxid, err, body: payload[16..].to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden bytes, written out by hand from the jute layouts: a change to the encoder that
    /// moves a byte fails here before it confuses a server.
    #[test]
    fn requests_encode_to_zookeepers_bytes() {
        let connect = ConnectRequest::new_session(6000).encode();
        let mut expected = vec![0, 0, 0, 0]; // protocolVersion
        expected.extend_from_slice(&[0; 8]); // lastZxidSeen
        expected.extend_from_slice(&6000i32.to_be_bytes()); // timeOut
        expected.extend_from_slice(&[0; 8]); // sessionId
        expected.extend_from_slice(&[0, 0, 0, 16]); // passwd length
        expected.extend_from_slice(&[0; 16]);
        expected.push(0); // readOnly
        assert_eq!(connect, expected);

        let get = Request::GetData { path: "/a".into(), watch: true }.encode(7);
        assert_eq!(get, [0, 0, 0, 7, 0, 0, 0, 4, 0, 0, 0, 2, b'/', b'a', 1]);

        let set = Request::SetData { path: "/a".into(), data: vec![9] }.encode(8);
        assert_eq!(set, [0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 2, b'/', b'a', 0, 0, 0, 1, 9, 255, 255, 255, 255]);

        let create = Request::Create { path: "/a".into(), data: vec![], flags: create_mode::EPHEMERAL }.encode(1);
        let mut expected = vec![0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, b'/', b'a', 0, 0, 0, 0];
        expected.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 31, 0, 0, 0, 5]);
        expected.extend_from_slice(b"world");
        expected.extend_from_slice(&[0, 0, 0, 6]);
        expected.extend_from_slice(b"anyone");
        expected.extend_from_slice(&[0, 0, 0, 1]);
        assert_eq!(create, expected);
        assert!(create.len() - 2 <= REQUEST_OVERHEAD, "REQUEST_OVERHEAD covers a create's fixed fields");

        let multi = Request::MultiReadData { paths: vec!["/a".into()] }.encode(3);
        let mut expected = vec![0, 0, 0, 3, 0, 0, 0, 22];
        expected.extend_from_slice(&[0, 0, 0, 4, 0, 255, 255, 255, 255, 0, 0, 0, 2, b'/', b'a', 0]);
        expected.extend_from_slice(&[255, 255, 255, 255, 1, 255, 255, 255, 255]);
        assert_eq!(multi, expected);

        let delete = Request::Delete { path: "/a".into() }.encode(9);
        assert_eq!(delete, [0, 0, 0, 9, 0, 0, 0, 2, 0, 0, 0, 2, b'/', b'a', 255, 255, 255, 255]);

        assert_eq!(Request::Ping.encode(5), [255, 255, 255, 254, 0, 0, 0, 11]);
        assert_eq!(frame(&[1, 2]), [0, 0, 0, 2, 1, 2]);
    }

    #[test]
    fn replies_and_notifications_decode() {
        let mut reply = vec![0, 0, 0, 7];
        reply.extend_from_slice(&5i64.to_be_bytes());
        reply.extend_from_slice(&[0, 0, 0, 0, 0xaa]);
        assert_eq!(Packet::decode(&reply).unwrap(), Packet::Reply { xid: 7, zxid: 5, err: 0, body: vec![0xaa] });

        let mut note = (-1i32).to_be_bytes().to_vec();
        note.extend_from_slice(&(-1i64).to_be_bytes());
        note.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 2, b'/', b'h']);
        assert_eq!(Packet::decode(&note).unwrap(), Packet::Notification { event: 3, path: "/h".into() });

        let mut connect = vec![0, 0, 0, 0, 0, 0, 0x17, 0x70];
        connect.extend_from_slice(&0x42i64.to_be_bytes());
        connect.extend_from_slice(&[0, 0, 0, 1, 9]);
        let without_ro = ConnectResponse::decode(&connect).unwrap();
        assert_eq!((without_ro.timeout_ms, without_ro.session_id, without_ro.passwd.clone()), (6000, 0x42, vec![9]));
        assert_eq!(without_ro.read_only, None);
        connect.push(0);
        let with_ro = ConnectResponse::decode(&connect).unwrap();
        assert_eq!((with_ro.timeout_ms, with_ro.session_id, with_ro.passwd), (6000, 0x42, vec![9]));
        assert_eq!(with_ro.read_only, Some(false));
        assert!(without_ro.granted());
    }
}
