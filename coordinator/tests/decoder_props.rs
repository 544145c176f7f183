//! Property tests of the decoders a client's bytes meet first: whatever the bytes,
//! `ConnectRequest::decode`, `Request::decode` (every opcode from -11 to 110),
//! `request::decode_header`, the jute `Reader` and `frame::read_frame` return a value or an error
//! and never panic; valid requests, encoded here by an encoder written independently of the
//! server's, decode to exactly the request that was encoded, and no strict prefix of one decodes.
//!
//! Case counts are kept small enough for the file to run in a few seconds in a debug build;
//! `PROPTEST_CASES` raises them.

use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::collection::vec;
use proptest::prelude::*;
use referee_coordinator::frame::{read_frame, FrameError};
use referee_coordinator::jute::Reader;
use referee_coordinator::proto::{Acl, Id};
use referee_coordinator::request::{decode_header, ConnectRequest, ReadOp, Request};
use referee_coordinator::txn::WriteOp;
use tokio::io::{AsyncRead, ReadBuf};

/// The jute encoding, written from the protocol description, not from the server's `Writer`.
#[derive(Default, Clone)]
struct Enc(Vec<u8>);

impl Enc {
    fn int(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn long(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn boolean(&mut self, v: bool) -> &mut Self {
        self.0.push(u8::from(v));
        self
    }
    fn buffer(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            None => self.int(-1),
            Some(b) => {
                self.int(b.len() as i32);
                self.0.extend_from_slice(b);
                self
            }
        }
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.buffer(Some(s.as_bytes()))
    }
    fn strings(&mut self, v: &[String]) -> &mut Self {
        self.int(v.len() as i32);
        for s in v {
            self.string(s);
        }
        self
    }
    fn acl(&mut self, acl: &[Acl]) -> &mut Self {
        self.int(acl.len() as i32);
        for a in acl {
            self.int(a.perms).string(&a.id.scheme).string(&a.id.id);
        }
        self
    }
}

/// Opcodes (ZooDefs.OpCode), spelled out here rather than taken from the server.
mod opc {
    pub const CREATE: i32 = 1;
    pub const DELETE: i32 = 2;
    pub const EXISTS: i32 = 3;
    pub const GET_DATA: i32 = 4;
    pub const SET_DATA: i32 = 5;
    pub const GET_ACL: i32 = 6;
    pub const SET_ACL: i32 = 7;
    pub const GET_CHILDREN: i32 = 8;
    pub const SYNC: i32 = 9;
    pub const GET_CHILDREN2: i32 = 12;
    pub const CHECK: i32 = 13;
    pub const MULTI: i32 = 14;
    pub const CREATE2: i32 = 15;
    pub const CHECK_WATCHES: i32 = 17;
    pub const REMOVE_WATCHES: i32 = 18;
    pub const CREATE_CONTAINER: i32 = 19;
    pub const CREATE_TTL: i32 = 21;
    pub const MULTI_READ: i32 = 22;
    pub const AUTH: i32 = 100;
    pub const SET_WATCHES: i32 = 101;
    pub const GET_EPHEMERALS: i32 = 103;
    pub const GET_ALL_CHILDREN_NUMBER: i32 = 104;
    pub const SET_WATCHES2: i32 = 105;
    pub const ADD_WATCH: i32 = 106;
}

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,10}", "(/[a-z0-9]{1,4}){0,4}", Just(String::new())]
}

fn data() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::weighted(0.8, vec(any::<u8>(), 0..24))
}

fn acl() -> impl Strategy<Value = Vec<Acl>> {
    vec((any::<i32>(), text(), text()).prop_map(|(perms, scheme, id)| Acl { perms, id: Id { scheme, id } }), 0..4)
}

fn small_int() -> impl Strategy<Value = i32> {
    prop_oneof![Just(-1), Just(0), -3i32..8, any::<i32>()]
}

/// A write as an op of a multi or a request of its own: (opcode, body, decoded op).
fn write_op(in_multi: bool) -> BoxedStrategy<(i32, Vec<u8>, WriteOp)> {
    let create = (
        prop_oneof![Just(opc::CREATE), Just(opc::CREATE2), Just(opc::CREATE_CONTAINER), Just(opc::CREATE_TTL)],
        text(),
        data(),
        acl(),
        small_int(),
        any::<i64>(),
    )
        .prop_map(|(opcode, path, data, acl, flags, ttl)| {
            let mut e = Enc::default();
            e.string(&path).buffer(data.as_deref()).acl(&acl).int(flags);
            let ttl_ms = if opcode == opc::CREATE_TTL {
                e.long(ttl);
                ttl
            } else {
                0
            };
            (opcode, e.0, WriteOp::Create { opcode, path, data, acl, flags, ttl_ms })
        });
    let delete = (text(), small_int()).prop_map(|(path, version)| {
        let mut e = Enc::default();
        e.string(&path).int(version);
        (opc::DELETE, e.0, WriteOp::Delete { path, version })
    });
    let set_data = (text(), data(), small_int()).prop_map(|(path, data, version)| {
        let mut e = Enc::default();
        e.string(&path).buffer(data.as_deref()).int(version);
        (opc::SET_DATA, e.0, WriteOp::SetData { path, data, version })
    });
    let check = (text(), small_int()).prop_map(|(path, version)| {
        let mut e = Enc::default();
        e.string(&path).int(version);
        (opc::CHECK, e.0, WriteOp::Check { path, version })
    });
    if in_multi {
        prop_oneof![create, delete, set_data, check].boxed()
    } else {
        let set_acl = (text(), acl(), small_int()).prop_map(|(path, acl, version)| {
            let mut e = Enc::default();
            e.string(&path).acl(&acl).int(version);
            (opc::SET_ACL, e.0, WriteOp::SetAcl { path, acl, version })
        });
        prop_oneof![create, delete, set_data, check, set_acl].boxed()
    }
}

/// A valid request: (opcode, body, what it must decode to).
fn request() -> impl Strategy<Value = (i32, Vec<u8>, Request)> {
    let single = write_op(false).prop_map(|(opcode, body, op)| (opcode, body, Request::Write(op)));
    let multi = vec(write_op(true), 0..5).prop_map(|ops| {
        let mut e = Enc::default();
        for (opcode, body, _) in &ops {
            e.int(*opcode).boolean(false).int(-1);
            e.0.extend_from_slice(body);
        }
        e.int(-1).boolean(true).int(-1);
        (opc::MULTI, e.0, Request::Multi(ops.into_iter().map(|(_, _, op)| op).collect()))
    });
    let multi_read = vec((any::<bool>(), text(), any::<bool>()), 0..5).prop_map(|ops| {
        let mut e = Enc::default();
        let mut expected = Vec::new();
        for (children, path, watch) in ops {
            let opcode = if children { opc::GET_CHILDREN } else { opc::GET_DATA };
            e.int(opcode).boolean(false).int(-1).string(&path).boolean(watch);
            expected.push(if children { ReadOp::GetChildren(path) } else { ReadOp::GetData(path) });
        }
        e.int(-1).boolean(true).int(-1);
        (opc::MULTI_READ, e.0, Request::MultiRead(expected))
    });
    let path_watch = (
        prop_oneof![Just(opc::EXISTS), Just(opc::GET_DATA), Just(opc::GET_CHILDREN), Just(opc::GET_CHILDREN2)],
        text(),
        any::<bool>(),
    )
        .prop_map(|(opcode, path, watch)| {
            let mut e = Enc::default();
            e.string(&path).boolean(watch);
            let req = match opcode {
                opc::EXISTS => Request::Exists { path, watch },
                opc::GET_DATA => Request::GetData { path, watch },
                _ => Request::GetChildren { path, watch, with_stat: opcode == opc::GET_CHILDREN2 },
            };
            (opcode, e.0, req)
        });
    let path_only = (
        prop_oneof![Just(opc::GET_ACL), Just(opc::SYNC), Just(opc::GET_EPHEMERALS), Just(opc::GET_ALL_CHILDREN_NUMBER)],
        text(),
    )
        .prop_map(|(opcode, path)| {
            let mut e = Enc::default();
            e.string(&path);
            let req = match opcode {
                opc::GET_ACL => Request::GetAcl { path },
                opc::SYNC => Request::Sync { path },
                opc::GET_EPHEMERALS => Request::GetEphemerals { prefix: path },
                _ => Request::GetAllChildrenNumber { path },
            };
            (opcode, e.0, req)
        });
    let path_int =
        (prop_oneof![Just(opc::CHECK_WATCHES), Just(opc::REMOVE_WATCHES), Just(opc::ADD_WATCH)], text(), small_int())
            .prop_map(|(opcode, path, v)| {
                let mut e = Enc::default();
                e.string(&path).int(v);
                let req = match opcode {
                    opc::CHECK_WATCHES => Request::CheckWatches { path, ty: v },
                    opc::REMOVE_WATCHES => Request::RemoveWatches { path, ty: v },
                    _ => Request::AddWatch { path, mode: v },
                };
                (opcode, e.0, req)
            });
    let auth = (any::<i32>(), text(), vec(any::<u8>(), 0..16)).prop_map(|(ty, scheme, auth)| {
        let mut e = Enc::default();
        e.int(ty).string(&scheme).buffer(Some(&auth));
        (opc::AUTH, e.0, Request::Auth { scheme, auth })
    });
    let set_watches = (
        any::<bool>(),
        any::<i64>(),
        [vec(text(), 0..3), vec(text(), 0..3), vec(text(), 0..3), vec(text(), 0..3), vec(text(), 0..3)],
    )
        .prop_map(|(two, relative_zxid, [data, exist, child, persistent, recursive])| {
            let mut e = Enc::default();
            e.long(relative_zxid).strings(&data).strings(&exist).strings(&child);
            let (opcode, persistent, recursive) = if two {
                e.strings(&persistent).strings(&recursive);
                (opc::SET_WATCHES2, persistent, recursive)
            } else {
                (opc::SET_WATCHES, Vec::new(), Vec::new())
            };
            (opcode, e.0, Request::SetWatches { relative_zxid, data, exist, child, persistent, recursive })
        });
    prop_oneof![single, multi, multi_read, path_watch, path_only, path_int, auth, set_watches]
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in vec(any::<u8>(), 0..200), opcode in -11i32..=110) {
        let _ = ConnectRequest::decode(&bytes);
        let _ = Request::decode(opcode, &bytes);
        match decode_header(&bytes) {
            Ok((xid, op, body)) => {
                prop_assert!(bytes.len() >= 8);
                prop_assert_eq!(xid, i32::from_be_bytes(bytes[..4].try_into().unwrap()));
                prop_assert_eq!(op, i32::from_be_bytes(bytes[4..8].try_into().unwrap()));
                prop_assert_eq!(body, &bytes[8..]);
            }
            Err(_) => prop_assert!(bytes.len() < 8),
        }
    }

    /// Valid encodings with a few bytes overwritten (often a length or a count): deeper paths.
    #[test]
    fn mutated_requests_never_panic(
        (opcode, mut body, _) in request(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        as_opcode in prop_oneof![Just(None), (-11i32..=110).prop_map(Some)],
    ) {
        if !body.is_empty() {
            for (at, b) in edits {
                let i = at.index(body.len());
                body[i] = b;
            }
        }
        let _ = Request::decode(as_opcode.unwrap_or(opcode), &body);
    }

    #[test]
    fn connect_requests_round_trip(
        last in any::<i64>(), timeout in any::<i32>(), session in any::<i64>(),
        password in vec(any::<u8>(), 0..20), read_only in proptest::option::of(any::<bool>()),
    ) {
        let mut e = Enc::default();
        e.int(0).long(last).int(timeout).long(session).buffer(Some(&password));
        if let Some(ro) = read_only {
            e.boolean(ro);
        }
        let decoded = ConnectRequest::decode(&e.0).map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(decoded, ConnectRequest {
            protocol_version: 0, last_zxid_seen: last, timeout_ms: timeout, session_id: session, password, read_only,
        });
        // Anything after the read-only byte is refused.
        let mut longer = e.0.clone();
        longer.extend_from_slice(&[0, 0]);
        prop_assert!(ConnectRequest::decode(&longer).is_err());
    }

    #[test]
    fn valid_requests_decode_to_what_was_encoded((opcode, body, expected) in request()) {
        let decoded = Request::decode(opcode, &body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &expected);
        // A trailing byte is not silently ignored, and no strict prefix decodes.
        let mut longer = body.clone();
        longer.push(0);
        prop_assert!(Request::decode(opcode, &longer).is_err(), "trailing byte accepted for opcode {}", opcode);
        for cut in 0..body.len() {
            prop_assert!(
                Request::decode(opcode, &body[..cut]).is_err(),
                "opcode {} decoded from {} of {} bytes", opcode, cut, body.len()
            );
        }
    }

    /// The reader against a model: every successful read consumes exactly what the encoding says
    /// and returns the value in the bytes; lengths from the wire are never trusted.
    #[test]
    fn reader_reads_follow_the_model(bytes in vec(any::<u8>(), 0..64), script in vec(0u8..7, 1..12)) {
        let mut r = Reader::new(&bytes);
        let mut pos = 0usize;
        for step in script {
            let rest = &bytes[pos..];
            prop_assert_eq!(r.remaining(), rest.len());
            let be32 = |b: &[u8]| i32::from_be_bytes(b[..4].try_into().unwrap());
            let len_prefix = (rest.len() >= 4).then(|| be32(rest));
            match step {
                0 => match r.int("i") {
                    Ok(v) => { prop_assert_eq!(Some(v), len_prefix); pos += 4; }
                    Err(_) => { prop_assert!(rest.len() < 4); break; }
                },
                1 => match r.long("l") {
                    Ok(v) => { prop_assert_eq!(v, i64::from_be_bytes(rest[..8].try_into().unwrap())); pos += 8; }
                    Err(_) => { prop_assert!(rest.len() < 8); break; }
                },
                2 => match r.boolean("b") {
                    Ok(v) => { prop_assert_eq!(v, rest[0] != 0); pos += 1; }
                    Err(_) => { prop_assert!(rest.is_empty()); break; }
                },
                3 | 4 => {
                    let got = if step == 3 { r.buffer("buf") } else { r.ustring_opt("s").map(|o| o.map(String::into_bytes)) };
                    match (got, len_prefix) {
                        (Ok(None), Some(-1)) => pos += 4,
                        (Ok(Some(v)), Some(n)) if n >= 0 => {
                            prop_assert_eq!(&v[..], &rest[4..4 + n as usize]);
                            pos += 4 + n as usize;
                        }
                        (Ok(other), n) => prop_assert!(false, "read {:?} with length prefix {:?}", other, n),
                        (Err(_), Some(n)) if n >= 0 && rest.len() >= 4 + n as usize && step == 3 => {
                            prop_assert!(false, "a buffer of {} bytes with {} left was refused", n, rest.len() - 4);
                        }
                        (Err(_), _) => break,
                    }
                }
                5 => match r.strings("v") {
                    Ok(v) => {
                        let mut used = 4;
                        for s in &v { used += 4 + s.len(); }
                        prop_assert!(used <= rest.len());
                        pos += used;
                    }
                    Err(_) => break,
                },
                _ => match r.count("c", 12) {
                    Ok(n) => {
                        let raw = len_prefix.unwrap_or(i32::MIN);
                        prop_assert!(raw == -1 && n == 0 || raw >= 0 && n == raw as usize && 12 * n <= rest.len() - 4);
                        pos += 4;
                    }
                    Err(_) => break,
                },
            }
        }
    }
}

/// An `AsyncRead` that hands out its bytes in the given chunk sizes (cycled), as a socket might.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let size = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let n = size.min(buf.remaining()).min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
}

/// Every frame `read_frame` yields from a stream, and how the stream ended.
async fn drain(mut r: Chunked, max: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut frames = Vec::new();
    loop {
        match read_frame(&mut r, max).await {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

proptest! {
    #![proptest_config(cases(200))]

    #[test]
    fn read_frame_survives_arbitrary_streams(
        data in vec(any::<u8>(), 0..300), sizes in vec(1usize..9, 1..4), max in 0usize..64,
    ) {
        let (frames, _) = block_on(drain(Chunked { data: data.clone(), pos: 0, sizes, turn: 0 }, max));
        let mut consumed = 0;
        for f in &frames {
            prop_assert!(f.len() <= max);
            prop_assert_eq!(&data[consumed..consumed + 4], &(f.len() as i32).to_be_bytes()[..]);
            prop_assert_eq!(&data[consumed + 4..consumed + 4 + f.len()], &f[..]);
            consumed += 4 + f.len();
        }
    }

    #[test]
    fn valid_frame_streams_round_trip_and_long_frames_are_refused(
        bodies in vec(vec(any::<u8>(), 0..40), 0..6), sizes in vec(1usize..9, 1..4),
        over in 1i64..=(i32::MAX as i64 - 40), end_with_long in any::<bool>(),
    ) {
        let max = 40;
        let mut data = Vec::new();
        for b in &bodies {
            data.extend_from_slice(&(b.len() as i32).to_be_bytes());
            data.extend_from_slice(b);
        }
        let too_long = max as i64 + over;
        if end_with_long {
            data.extend_from_slice(&(too_long as i32).to_be_bytes());
            data.extend_from_slice(&[7; 8]);
        }
        let (frames, end) = block_on(drain(Chunked { data, pos: 0, sizes, turn: 0 }, max));
        prop_assert_eq!(frames, bodies);
        match end {
            None => prop_assert!(!end_with_long),
            Some(FrameError::BadLength { len, max: m }) => {
                prop_assert!(end_with_long);
                prop_assert_eq!((len, m), (too_long, max));
            }
            Some(other) => prop_assert!(false, "unexpected end: {}", other),
        }
    }
}

#[test]
fn negative_and_truncated_frames_are_errors() {
    let run = |data: &[u8]| block_on(drain(Chunked { data: data.to_vec(), pos: 0, sizes: vec![1], turn: 0 }, 100));
    assert!(matches!(run(&[0xff, 0xff, 0xff, 0xff]).1, Some(FrameError::BadLength { len: -1, max: 100 })));
    assert!(matches!(run(&[0x80, 0, 0, 0]).1, Some(FrameError::BadLength { len: -2147483648, .. })));
    assert!(matches!(run(&[0, 0, 0, 5, 1, 2]).1, Some(FrameError::Truncated)));
    assert!(matches!(run(&[0, 0]).1, Some(FrameError::Truncated)));
    assert!(run(&[]).1.is_none());
}
