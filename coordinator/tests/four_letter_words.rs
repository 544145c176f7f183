//! Four-letter words on the client port, over raw TCP: every implemented word with its exact
//! format and values that match the server's real state, the whitelist, the recognised-but-never
//! executed `crst`, the close after the answer, unknown words, and (where Apache ZooKeeper is
//! installed) the line structure of `srvr`, `stat`, `wchs`, `conf` and `mntr` against a reference
//! server.

mod common;

use std::net::SocketAddr;

use anyhow::{anyhow, ensure, Context, Result};
use common::raw::{body, err, frame, op, request, ConnectRequest, ConnectResponse, Raw};
use common::*;
use referee_testkit::{
    apache_zookeeper_installed, skip, wait_until, ApacheZk, ApacheZkProfile, TestServer, APACHE_ZK_MISSING,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `word` on a fresh connection and reads until the server closes it. Finishing at all
/// proves the close: `read_to_end` only returns at end of stream.
async fn ask(addr: SocketAddr, word: &[u8]) -> Result<String> {
    let mut s = within("TCP connect", TcpStream::connect(addr)).await??;
    s.write_all(word).await?;
    let mut out = Vec::new();
    within("the answer and the server's close", s.read_to_end(&mut out))
        .await?
        .with_context(|| format!("reading the answer to {:?}", String::from_utf8_lossy(word)))?;
    Ok(String::from_utf8(out)?)
}

/// A session on a plain socket, so the test knows the client's own address (which `stat`,
/// `cons` and `dump` print).
struct Plain {
    s: TcpStream,
    session: i64,
    local: SocketAddr,
    xid: i32,
}

impl Plain {
    async fn connect(addr: SocketAddr) -> Result<Plain> {
        let mut s = within("TCP connect", TcpStream::connect(addr)).await??;
        s.write_all(&frame(&ConnectRequest::new_session(5000).encode())).await?;
        let payload = Self::read(&mut s).await?;
        let resp = ConnectResponse::decode(&payload)?;
        ensure!(resp.session_id != 0, "no session granted: {resp:?}");
        let local = s.local_addr()?;
        Ok(Plain { s, session: resp.session_id, local, xid: 1 })
    }

    async fn read(s: &mut TcpStream) -> Result<Vec<u8>> {
        within("a frame", async {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await?;
            let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).await?;
            Ok::<_, anyhow::Error>(buf)
        })
        .await?
    }

    /// Sends a request and returns the error code of its reply (notifications are skipped).
    async fn call(&mut self, opcode: i32, body: &[u8]) -> Result<i32> {
        let xid = self.xid;
        self.xid += 1;
        self.s.write_all(&frame(&request(xid, opcode, body))).await?;
        loop {
            let f = Self::read(&mut self.s).await?;
            let got = i32::from_be_bytes(f[..4].try_into()?);
            if got == xid {
                return Ok(i32::from_be_bytes(f[12..16].try_into()?));
            }
            ensure!(got == -1, "reply to xid {got} while waiting for {xid}");
        }
    }

    /// Sends a ping (xid -2) and waits for its reply.
    async fn ping(&mut self) -> Result<()> {
        self.s.write_all(&frame(&request(-2, op::PING, &[]))).await?;
        loop {
            let f = Self::read(&mut self.s).await?;
            let got = i32::from_be_bytes(f[..4].try_into()?);
            if got == -2 {
                return Ok(());
            }
            ensure!(got == -1, "reply to xid {got} while waiting for the ping's");
        }
    }
}

/// The `key` of each `key<sep>value` line.
fn keys(text: &str, sep: &str) -> Vec<String> {
    text.lines().map(|l| l.split_once(sep).map_or(l, |(k, _)| k).to_string()).collect()
}

/// The value of the `key: value` line.
fn field<'a>(text: &'a str, key: &str) -> Result<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
        .ok_or_else(|| anyhow!("no `{key}:` line in {text:?}"))
}

fn number(text: &str, key: &str) -> Result<u64> {
    field(text, key)?.parse().with_context(|| format!("`{key}` in {text:?}"))
}

fn mntr_map(text: &str) -> Result<Vec<(String, String)>> {
    text.lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').ok_or_else(|| anyhow!("mntr line without a tab: {l:?}"))?;
            ensure!(k.starts_with("zk_") && !k.contains(' ') && !v.is_empty(), "mntr line {l:?}");
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn mntr_value(m: &[(String, String)], key: &str) -> Result<String> {
    m.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).ok_or_else(|| anyhow!("mntr has no {key}"))
}

const SRVR_KEYS: [&str; 9] = [
    "Zookeeper version",
    "Latency min/avg/max",
    "Received",
    "Sent",
    "Connections",
    "Outstanding",
    "Zxid",
    "Mode",
    "Node count",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruok_and_isro_answer_without_a_newline_and_close() -> Result<()> {
    let server = TestServer::start().await?;
    assert_eq!(ask(server.addr, b"ruok").await?, "imok");
    assert_eq!(ask(server.addr, b"isro").await?, "rw");
    // The word may arrive in pieces: the server reads the whole 4-byte prefix.
    let mut s = TcpStream::connect(server.addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"ru").await?;
    s.flush().await?;
    tokio::task::yield_now().await;
    s.write_all(b"ok").await?;
    let mut out = String::new();
    within("split ruok", s.read_to_string(&mut out)).await??;
    assert_eq!(out, "imok");
    // A four-letter word connection is counted against the per-address limit only while open.
    wait_until(DEADLINE, "4lw connections to be forgotten", || {
        server.state.lock().unwrap().open_per_address.is_empty()
    })
    .await?;
    assert_eq!(server.connection_count(), 0, "a four-letter word never becomes a client connection");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srvr_reports_zookeepers_lines_with_the_real_state() -> Result<()> {
    let server = TestServer::start().await?;
    let fresh = ask(server.addr, b"srvr").await?;
    assert_eq!(keys(&fresh, ": "), SRVR_KEYS, "{fresh}");
    assert!(fresh.ends_with('\n'), "{fresh:?}");
    let version = field(&fresh, "Zookeeper version")?;
    assert!(version.starts_with("3.8.0-referee-"), "{version}");
    assert_eq!(field(&fresh, "Mode")?, "standalone");
    assert_eq!(number(&fresh, "Node count")?, 4, "/, /zookeeper, /zookeeper/quota, /zookeeper/config");
    assert_eq!(number(&fresh, "Connections")?, 0);
    assert_eq!(number(&fresh, "Outstanding")?, 0);
    assert_eq!(field(&fresh, "Zxid")?, format!("0x{:x}", server.last_zxid()));

    let mut a = Raw::connect(server.addr, 5000).await?;
    let _b = Raw::connect(server.addr, 5000).await?;
    for p in ["/s1", "/s2", "/s3"] {
        a.call(op::CREATE, &body::create(p, b"x", 0)).await?.ok()?;
    }
    let received_before = number(&ask(server.addr, b"srvr").await?, "Received")?;
    for _ in 0..5 {
        a.call(op::EXISTS, &body::path_watch("/s1", false)).await?.ok()?;
    }
    let out = ask(server.addr, b"srvr").await?;
    assert_eq!(keys(&out, ": "), SRVR_KEYS, "{out}");
    assert_eq!(number(&out, "Node count")?, 7);
    assert_eq!(number(&out, "Connections")?, 2);
    assert_eq!(field(&out, "Zxid")?, format!("0x{:x}", server.last_zxid()));
    assert_eq!(number(&out, "Received")?, received_before + 5, "{out}");
    assert!(number(&out, "Sent")? >= 8, "three creates and five exists were answered: {out}");
    let latency: Vec<&str> = field(&out, "Latency min/avg/max")?.split('/').collect();
    assert_eq!(latency.len(), 3, "{out}");
    let (min, avg, max): (u64, f64, u64) = (latency[0].parse()?, latency[1].parse()?, latency[2].parse()?);
    assert!(min as f64 <= avg && avg <= max as f64, "{out}");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_lists_each_connected_client_and_cons_details_it() -> Result<()> {
    let server = TestServer::start().await?;
    let mut c = Plain::connect(server.addr).await?;
    assert_eq!(c.call(op::CREATE, &body::create("/n", b"", 0)).await?, 0);
    let line_start = format!(" /{}[1](queued=0,recved=", c.local);

    let stat = ask(server.addr, b"stat").await?;
    let lines: Vec<&str> = stat.lines().collect();
    assert!(lines[0].starts_with("Zookeeper version: 3.8.0-referee-"), "{stat}");
    assert_eq!(lines[1], "Clients:", "{stat}");
    assert!(lines[2].starts_with(&line_start) && lines[2].ends_with(')'), "{stat}");
    assert_eq!(lines[3], "", "a blank line closes the client list: {stat}");
    assert_eq!(keys(&lines[4..].join("\n"), ": "), SRVR_KEYS[1..], "{stat}");
    assert_eq!(field(&stat, "Connections")?, "1");

    // Counters of this connection move by exactly what it did.
    let counts = |line: &str| -> Result<(u64, u64)> {
        let inner = line.split_once('(').and_then(|(_, r)| r.strip_suffix(')')).ok_or_else(|| anyhow!("{line}"))?;
        let get = |k: &str| -> Result<u64> {
            let v = inner.split(',').find_map(|kv| kv.strip_prefix(k)).ok_or_else(|| anyhow!("no {k} in {line}"))?;
            Ok(v.parse()?)
        };
        Ok((get("recved=")?, get("sent=")?))
    };
    let (r0, s0) = counts(lines[2])?;
    for _ in 0..3 {
        assert_eq!(c.call(op::GET_DATA, &body::path_watch("/n", false)).await?, 0);
    }
    let stat = ask(server.addr, b"stat").await?;
    let (r1, s1) = counts(stat.lines().nth(2).unwrap_or_default())?;
    assert_eq!((r1 - r0, s1 - s0), (3, 3), "{stat}");

    let cons = ask(server.addr, b"cons").await?;
    assert!(cons.ends_with(")\n\n"), "one line per connection, then a blank line: {cons:?}");
    let line = cons.lines().find(|l| l.starts_with(&line_start)).ok_or_else(|| anyhow!("{cons}"))?;
    for part in [
        format!(",sid=0x{:x},", c.session),
        ",lop=GETD,".to_string(),
        ",to=5000,".to_string(),
        format!(",lcxid=0x{:x},", c.xid - 1),
        format!(",lzxid=0x{:x},", server.last_zxid()),
    ] {
        assert!(line.contains(&part), "{part} missing in {line}");
    }
    for k in ["est=", "lresp=", "llat=", "minlat=", "avglat=", "maxlat="] {
        assert!(line.contains(&format!(",{k}")), "{k} missing in {line}");
    }

    // A ping is the last operation, but its xid (-2) is not a client request's: as Apache's,
    // `lcxid` stays the last request's.
    c.ping().await?;
    let cons = ask(server.addr, b"cons").await?;
    let line = cons.lines().find(|l| l.starts_with(&line_start)).ok_or_else(|| anyhow!("{cons}"))?;
    for part in [",lop=PING,".to_string(), format!(",lcxid=0x{:x},", c.xid - 1)] {
        assert!(line.contains(&part), "after a ping, {part} missing in {line}");
    }
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mntr_is_tab_separated_and_counts_what_is_there() -> Result<()> {
    let server = TestServer::start().await?;
    let mut a = Raw::connect(server.addr, 5000).await?;
    a.call(op::CREATE, &body::create("/m", b"12345", 0)).await?.ok()?;
    a.call(op::CREATE, &body::create("/m/e1", b"", 1)).await?.ok()?;
    a.call(op::CREATE, &body::create("/m/e2", b"", 1)).await?.ok()?;
    a.call(op::GET_DATA, &body::path_watch("/m", true)).await?.ok()?;
    a.call(op::GET_CHILDREN, &body::path_watch("/m", true)).await?.ok()?;

    let m = mntr_map(&ask(server.addr, b"mntr").await?)?;
    assert_eq!(m[0].0, "zk_version");
    assert!(m[0].1.starts_with("3.8.0-referee-"), "{:?}", m[0]);
    assert_eq!(m[1], ("zk_server_state".to_string(), "standalone".to_string()));
    let node_count = server.state.lock().unwrap().tree.node_count();
    assert_eq!(node_count, 7);
    assert_eq!(mntr_value(&m, "zk_znode_count")?, node_count.to_string());
    assert_eq!(mntr_value(&m, "zk_ephemerals_count")?, "2");
    assert_eq!(mntr_value(&m, "zk_num_alive_connections")?, "1");
    assert_eq!(mntr_value(&m, "zk_global_sessions")?, "1");
    assert_eq!(mntr_value(&m, "zk_watch_count")?, "2");
    assert_eq!(mntr_value(&m, "zk_outstanding_requests")?, "0");
    let size: u64 = mntr_value(&m, "zk_approximate_data_size")?.parse()?;
    let expected = server.state.lock().unwrap().tree.approximate_data_size();
    assert_eq!(size, expected);
    for k in ["zk_packets_sent", "zk_packets_received", "zk_uptime", "zk_min_latency", "zk_max_latency"] {
        mntr_value(&m, k)?.parse::<u64>().with_context(|| k.to_string())?;
    }
    let mut seen = std::collections::HashSet::new();
    assert!(m.iter().all(|(k, _)| seen.insert(k.clone())), "keys are unique: {m:?}");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_envi_and_dirs() -> Result<()> {
    // The walking words are off by default; these tests list every word.
    let server = TestServer::start_with(|c| c.four_letter_words = vec!["*".into()]).await?;
    let conf = ask(server.addr, b"conf").await?;
    assert_eq!(
        keys(&conf, "="),
        [
            "clientPort",
            "secureClientPort",
            "dataDir",
            "dataDirSize",
            "dataLogDir",
            "dataLogSize",
            "tickTime",
            "maxClientCnxns",
            "minSessionTimeout",
            "maxSessionTimeout",
            "clientPortListenBacklog",
            "serverId"
        ],
        "{conf}"
    );
    let value = |k: &str| conf.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap_or("?").to_string();
    assert_eq!(value("clientPort"), server.addr.port().to_string());
    assert_eq!(value("tickTime"), "50");
    assert_eq!(value("maxClientCnxns"), "60");
    assert_eq!(value("minSessionTimeout"), "200");
    assert_eq!(value("maxSessionTimeout"), "30000");
    assert!(value("dataDir").contains("referee-cotest-"), "{conf}");
    assert_eq!(value("dataDir"), value("dataLogDir"));

    let envi = ask(server.addr, b"envi").await?;
    assert!(envi.starts_with("Environment:\n"), "{envi}");
    // kazoo's version probe: `zookeeper.version=(\d+)\.(\d+)\.(\d+)`.
    let v = envi.lines().find_map(|l| l.strip_prefix("zookeeper.version=")).ok_or_else(|| anyhow!("{envi}"))?;
    let digits: Vec<u32> = v.split('-').next().unwrap_or("").split('.').map(str::parse).collect::<Result<_, _>>()?;
    assert_eq!(digits, [3, 8, 0], "{envi}");
    for k in ["host.name=", "os.name=", "os.arch=", "os.version=", "user.dir="] {
        assert!(envi.lines().any(|l| l.starts_with(k)), "{k} missing: {envi}");
    }

    let dirs = ask(server.addr, b"dirs").await?;
    let lines: Vec<&str> = dirs.lines().collect();
    assert_eq!(lines.len(), 2, "{dirs:?}");
    let d: u64 = lines[0].strip_prefix("datadir_size: ").ok_or_else(|| anyhow!("{dirs}"))?.parse()?;
    let l: u64 = lines[1].strip_prefix("logdir_size: ").ok_or_else(|| anyhow!("{dirs}"))?.parse()?;
    assert_eq!(d, l);
    assert!(dirs.ends_with('\n'));
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wchs_wchc_wchp_reflect_registered_watches() -> Result<()> {
    // The walking words are off by default; these tests list every word.
    let server = TestServer::start_with(|c| c.four_letter_words = vec!["*".into()]).await?;
    assert_eq!(ask(server.addr, b"wchs").await?, "0 connections watching 0 paths\nTotal watches:0\n");
    assert_eq!(ask(server.addr, b"wchc").await?, "\n");
    assert_eq!(ask(server.addr, b"wchp").await?, "\n");

    let mut a = Raw::connect(server.addr, 5000).await?;
    let mut b = Raw::connect(server.addr, 5000).await?;
    a.call(op::CREATE, &body::create("/x", b"", 0)).await?.ok()?;
    a.call(op::GET_DATA, &body::path_watch("/x", true)).await?.ok()?;
    assert_eq!(a.call(op::EXISTS, &body::path_watch("/missing", true)).await?.err, err::NO_NODE);
    a.call(op::GET_CHILDREN, &body::path_watch("/x", true)).await?.ok()?;
    b.call(op::GET_DATA, &body::path_watch("/x", true)).await?.ok()?;
    let (sa, sb) = (a.session_id, b.session_id);

    assert_eq!(ask(server.addr, b"wchs").await?, "2 connections watching 2 paths\nTotal watches:4\n");
    assert_eq!(ask(server.addr, b"wchc").await?, format!("0x{sa:x}\n\t/missing\n\t/x\n0x{sb:x}\n\t/x\n\n"));
    assert_eq!(ask(server.addr, b"wchp").await?, format!("/missing\n\t0x{sa:x}\n/x\n\t0x{sa:x}\n\t0x{sb:x}\n\n"));

    // A data change fires both data watches; A's child watch and exist watch stay.
    let (reply, notes) = b.call_collect(op::SET_DATA, &body::set_data("/x", b"1", -1)).await?;
    reply.ok()?;
    assert_eq!(notes.len(), 1, "{notes:?}");
    let n = a.notification().await?;
    assert_eq!((n.kind, n.path.as_str()), (3, "/x"));
    assert_eq!(ask(server.addr, b"wchs").await?, "1 connections watching 2 paths\nTotal watches:2\n");
    assert_eq!(ask(server.addr, b"wchc").await?, format!("0x{sa:x}\n\t/missing\n\t/x\n\n"));

    // Watches go with their connection.
    drop(a);
    wait_until(DEADLINE, "A's watches to be dropped", || server.state.lock().unwrap().watches.watch_count() == 0)
        .await?;
    assert_eq!(ask(server.addr, b"wchs").await?, "0 connections watching 0 paths\nTotal watches:0\n");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_lists_sessions_their_ephemerals_and_connections() -> Result<()> {
    // The walking words are off by default; these tests list every word.
    let server = TestServer::start_with(|c| c.four_letter_words = vec!["*".into()]).await?;
    let mut c = Plain::connect(server.addr).await?;
    assert_eq!(c.call(op::CREATE, &body::create("/d", b"", 0)).await?, 0);
    assert_eq!(c.call(op::CREATE, &body::create("/d/e2", b"", 1)).await?, 0);
    assert_eq!(c.call(op::CREATE, &body::create("/d/e1", b"", 1)).await?, 0);
    let _idle = Raw::connect(server.addr, 5000).await?;
    let sid = format!("0x{:x}", c.session);

    let dump = ask(server.addr, b"dump").await?;
    assert!(dump.starts_with("SessionTracker dump:\nSession Sets (2)/(2):\n"), "{dump}");
    assert!(dump.contains(&format!(":\n\t{sid}\n")), "{dump}");
    assert!(
        dump.contains(&format!("ephemeral nodes dump:\nSessions with Ephemerals (1):\n{sid}:\n\t/d/e1\n\t/d/e2\n")),
        "{dump}"
    );
    assert!(dump.contains("Connections dump:\nConnections Sets (1)/(2):\n"), "{dump}");
    assert!(dump.contains(&format!("\tip: /{} sessionId: {sid}\n", c.local)), "{dump}");
    let expiries: Vec<&str> = dump.lines().filter(|l| l.starts_with("1 expire at ")).collect();
    assert_eq!(expiries.len(), 2, "{dump}");
    for l in expiries {
        let date = l.trim_start_matches("1 expire at ").trim_end_matches(':');
        let parts: Vec<&str> = date.split(' ').collect();
        assert_eq!(parts.len(), 6, "Java Date.toString: {l}");
        assert_eq!(parts[4], "UTC", "{l}");
    }
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whitelist_refuses_other_words_with_zookeepers_message() -> Result<()> {
    let server = TestServer::start_with(|c| c.four_letter_words = vec!["srvr".into()]).await?;
    assert_eq!(ask(server.addr, b"ruok").await?, "ruok is not executed because it is not in the whitelist.\n");
    assert_eq!(ask(server.addr, b"mntr").await?, "mntr is not executed because it is not in the whitelist.\n");
    assert_eq!(ask(server.addr, b"stat").await?, "stat is not executed because it is not in the whitelist.\n");
    assert!(ask(server.addr, b"srvr").await?.contains("\nMode: standalone\n"));
    // Words the server does not implement cannot be whitelisted.
    let e = referee_coordinator::config::CoordinatorConfig::from_yaml("data_dir: /x\nfour_letter_words: [crst]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("four_letter_words"), "{e}");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crst_is_recognised_but_never_executed() -> Result<()> {
    let server = TestServer::start_with(|c| c.four_letter_words = vec!["*".into()]).await?;
    let mut a = Raw::connect(server.addr, 5000).await?;
    for _ in 0..3 {
        a.call(op::EXISTS, &body::path_watch("/", false)).await?.ok()?;
    }
    let before = number(&ask(server.addr, b"srvr").await?, "Received")?;
    assert!(before >= 3);
    for w in [b"crst", b"srst", b"gtmk", b"hash"] {
        let word = std::str::from_utf8(w)?;
        assert_eq!(ask(server.addr, w).await?, format!("{word} is not executed because it is not in the whitelist.\n"));
    }
    assert_eq!(number(&ask(server.addr, b"srvr").await?, "Received")?, before, "statistics were not reset");
    // The session is untouched.
    a.call(op::EXISTS, &body::path_watch("/", false)).await?.ok()?;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_words_close_without_an_answer_and_sessions_still_work() -> Result<()> {
    let server = TestServer::start().await?;
    for w in [b"abcd", b"kill", b"RUOK", b"\xff\xff\xff\xff"] {
        assert_eq!(ask(server.addr, w).await?, "", "{:?}", String::from_utf8_lossy(w));
    }
    // Recognised words that change state answer as not whitelisted, by default too.
    assert_eq!(ask(server.addr, b"crst").await?, "crst is not executed because it is not in the whitelist.\n");
    assert_eq!(ask(server.addr, b"stmk").await?, "stmk is not executed because it is not in the whitelist.\n");
    let mut a = Raw::connect(server.addr, 5000).await?;
    a.call(op::EXISTS, &body::path_watch("/", false)).await?.ok()?;
    // A four-letter word after a session's handshake is just a bad frame for that session.
    a.send_bytes(b"ruok").await?;
    assert_eq!(a.expect_closed().await?, Vec::<Vec<u8>>::new());
    server.stop().await
}

/// Normalises a four-letter answer to its structure: the key of each line, client lines as one
/// `<clients>` token, numbers as `N`.
fn structure(word: &str, text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let token = if line.starts_with(" /") {
            "<clients>".to_string()
        } else {
            match word {
                "conf" => line.split_once('=').map_or(line, |(k, _)| k).to_string(),
                "mntr" => line.split_once('\t').map_or(line, |(k, _)| k).to_string(),
                "wchs" => line.chars().map(|c| if c.is_ascii_digit() { 'N' } else { c }).collect::<String>(),
                _ => line.split_once(": ").map_or(line, |(k, _)| k).to_string(),
            }
        };
        let token = token.replace("NN", "N");
        if token == "<clients>" && out.last().is_some_and(|t| t == "<clients>") {
            continue;
        }
        out.push(token);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_structure_matches_apache_zookeeper() -> Result<()> {
    if !apache_zookeeper_installed() {
        skip("line_structure_matches_apache_zookeeper", APACHE_ZK_MISSING);
        return Ok(());
    }
    let apache = tokio::task::spawn_blocking(|| ApacheZk::start(ApacheZkProfile::Reference)).await??;
    let apache_addr: SocketAddr = apache.connect_string().parse()?;
    let server = TestServer::start().await?;
    // One session with a data watch on each server, so no section is empty.
    let mut clients = Vec::new();
    for addr in [apache_addr, server.addr] {
        let mut c = Raw::connect(addr, 5000).await?;
        c.call(op::CREATE, &body::create("/w", b"", 0)).await?.ok()?;
        c.call(op::GET_DATA, &body::path_watch("/w", true)).await?.ok()?;
        clients.push(c);
    }
    for word in ["srvr", "stat", "wchs", "conf"] {
        let theirs = ask(apache_addr, word.as_bytes()).await?;
        let ours = ask(server.addr, word.as_bytes()).await?;
        assert_eq!(structure(word, &ours), structure(word, &theirs), "{word}:\n--- ours\n{ours}--- Apache\n{theirs}");
        assert_eq!(ours.ends_with('\n'), theirs.ends_with('\n'), "{word} final newline");
    }
    // With one data watch on each server the counts agree too.
    assert_eq!(ask(server.addr, b"wchs").await?, ask(apache_addr, b"wchs").await?);
    // mntr: the first two keys are fixed, and every key we report is one Apache reports.
    let theirs = structure("mntr", &ask(apache_addr, b"mntr").await?);
    let ours = structure("mntr", &ask(server.addr, b"mntr").await?);
    assert_eq!(ours[..2], theirs[..2]);
    let unknown: Vec<&String> = ours.iter().filter(|k| !theirs.contains(k)).collect();
    assert!(unknown.is_empty(), "mntr keys Apache ZooKeeper does not have: {unknown:?}");
    assert_eq!(ask(apache_addr, b"ruok").await?, ask(server.addr, b"ruok").await?);
    assert_eq!(ask(apache_addr, b"isro").await?, ask(server.addr, b"isro").await?);
    drop(clients);
    server.stop().await
}

/// `wchc`, `wchp`, `dump` and `dirs` walk every watch, session or file: off by default, as in
/// Apache ZooKeeper (its default whitelist is `srvr` alone); the cheap words stay on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walking_words_are_off_by_default() -> Result<()> {
    let server = TestServer::start().await?;
    for w in ["wchc", "wchp", "dump", "dirs"] {
        assert_eq!(
            ask(server.addr, w.as_bytes()).await?,
            format!("{w} is not executed because it is not in the whitelist.\n")
        );
    }
    for w in ["ruok", "srvr", "stat", "mntr", "conf", "cons", "envi", "isro", "wchs"] {
        let answer = ask(server.addr, w.as_bytes()).await?;
        assert!(!answer.contains("not executed"), "{w}: {answer}");
    }
    server.stop().await
}

/// The walking words copy a few connections or sessions per hold of the server's lock; across
/// many such chunks they still list every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wchc_and_dump_list_every_connection_across_chunks() -> Result<()> {
    let server = TestServer::start_with(|c| {
        c.four_letter_words = vec!["*".into()];
        c.max_connections_per_address = 0;
    })
    .await?;
    let mut clients = Vec::new();
    for i in 0..150 {
        let mut c = Raw::connect(server.addr, 30_000).await?;
        assert_eq!(c.call(op::EXISTS, &body::path_watch(&format!("/w{i}"), true)).await?.err, err::NO_NODE);
        clients.push(c);
    }
    let wchc = ask(server.addr, b"wchc").await?;
    for (i, c) in clients.iter().enumerate() {
        assert!(wchc.contains(&format!("0x{:x}\n\t/w{i}\n", c.session_id)), "session {i} missing: {wchc}");
    }
    let wchp = ask(server.addr, b"wchp").await?;
    assert_eq!(wchp.lines().filter(|l| l.starts_with("/w")).count(), 150, "{wchp}");
    let dump = ask(server.addr, b"dump").await?;
    assert!(dump.starts_with("SessionTracker dump:\nSession Sets (150)/(150):\n"), "{}", &dump[..200.min(dump.len())]);
    assert_eq!(dump.lines().filter(|l| l.starts_with("1 expire at ")).count(), 150);
    drop(clients);
    server.stop().await
}

/// A client that asks for a long answer and never reads it holds its connection, and the
/// per-address slot it counts in, only until the answer's deadline (`handshake_timeout_ms`, as
/// a connection without a session has no longer to say hello; Apache ZooKeeper drops a
/// sessionless connection after 10 s): a `wchp` of 8 MB passes any socket buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_a_long_answer_is_dropped_at_the_deadline() -> Result<()> {
    const DEADLINE_MS: u64 = 1_000;
    let server = TestServer::start_with(|c| {
        c.four_letter_words = vec!["*".into()];
        c.handshake_timeout_ms = DEADLINE_MS;
    })
    .await?;
    // 2,000 exist watches on 4,000-byte paths.
    let mut watcher = Raw::connect(server.addr, 30_000).await?;
    let long = "w".repeat(3_995);
    for batch in 0..10 {
        let paths: Vec<String> = (0..200).map(|i| format!("/{long}{:04}", batch * 200 + i)).collect();
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let sw = body::set_watches(server.last_zxid(), &[], &paths, &[], None);
        watcher.send_frame(&request(common::raw::xid::SET_WATCHES, op::SET_WATCHES, &sw)).await?;
        watcher.reply_to(common::raw::xid::SET_WATCHES).await?.0.ok()?;
    }
    let answer = ask(server.addr, b"wchp").await?.len();
    ensure!(answer > 8_000_000, "the answer is {answer} bytes");
    let open = |server: &TestServer| {
        let st = server.state.lock().unwrap();
        st.open_per_address.values().sum::<u32>()
    };
    ensure!(open(&server) == 1, "{} connections open besides the watcher's", open(&server) - 1);

    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let mut deaf = within("connect", sock.connect(server.addr)).await??;
    deaf.write_all(b"wchp").await?;
    let asked = std::time::Instant::now();
    wait_until(DEADLINE, "the server to count the connection", || open(&server) == 2).await?;
    wait_until(DEADLINE, "the server to drop the client that does not read its answer", || open(&server) == 1).await?;
    let held = asked.elapsed();
    ensure!(
        held.as_millis() as u64 >= DEADLINE_MS,
        "the connection went after {held:?}, before the deadline: was the answer sent whole?"
    );
    // What the client reads now is what the server's socket held when it gave up: not all.
    let mut got = Vec::new();
    let _ = within("the rest and the close", deaf.read_to_end(&mut got)).await?;
    ensure!(got.len() < answer, "the client still got the whole answer ({} bytes)", got.len());
    println!("dropped after {held:?}, having taken {} of {answer} bytes", got.len());
    server.stop().await
}
