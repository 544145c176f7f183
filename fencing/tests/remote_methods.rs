//! `ssh` against a real `sshd` on loopback, and `isolate` inside network namespaces.
//!
//! Needs root, `sshd`, `ssh`, `ssh-keygen`, `ip` and `iptables` (CI installs them); each test
//! prints a loud `SKIPPED:` line and returns when they are missing. Traffic only ever goes to
//! loopback and to subnets of 10.213.0.0/16 inside namespaces these tests create and remove,
//! each subnet claimed machine-wide first ([`Hosts::claim_subnet`]) so that no other test,
//! here or in another process, uses it at the same time.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{closed_port, fencer, require, target};
use referee_fencing::{FenceOutcome, FencingToken, MethodOutcome, Readiness, UnfenceOutcome};
use referee_testkit::{free_port, wait_until, Hosts, ScratchDir};

/// A real sshd on 127.0.0.1, accepting a generated key for root. Killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    key: PathBuf,
    dir: ScratchDir,
}

impl Sshd {
    async fn start() -> Sshd {
        let dir = ScratchDir::new("sshd").unwrap();
        // sshd refuses to start without its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let keygen = |path: &PathBuf| {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path)
                .status()
                .expect("ssh-keygen");
            assert!(status.success());
        };
        let (host_key, key) = (dir.path("host_key"), dir.path("user_key"));
        keygen(&host_key);
        keygen(&key);
        std::fs::copy(dir.path("user_key.pub"), dir.path("authorized_keys")).unwrap();
        let port = free_port().unwrap();
        let config = dir.path("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPidFile none\n",
                host_key.display(),
                dir.path("authorized_keys").display()
            ),
        )
        .unwrap();
        let sshd = common::find_program("sshd").unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.path("sshd.log")).unwrap())
            .spawn()
            .expect("start sshd");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_until(Duration::from_secs(10), "sshd to accept connections", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(dir.path("sshd.log")).unwrap_or_default()));
        Sshd { child, port, key, dir }
    }

    /// The ssh login fields of a method config, indented for a method entry.
    fn login_yaml(&self, indent: &str) -> String {
        format!(
            "{indent}user: root\n{indent}identity_file: {}\n{indent}port: {}\n{indent}connect_timeout_ms: 1000\n{indent}host_key_checking: \"no\"\n{indent}known_hosts_file: /dev/null\n",
            self.key.display(),
            self.port
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ssh_yaml(sshd: &Sshd, command: &[&str], timeout_ms: u64) -> String {
    format!(
        "overall_timeout_ms: 10000\nlevels:\n  - methods:\n      - kind: ssh\n        timeout_ms: {timeout_ms}\n        command: {}\n{}",
        serde_json::to_string(command).unwrap(),
        sshd.login_yaml("        ")
    )
}

fn only_outcome(report: &referee_fencing::FenceReport) -> &MethodOutcome {
    assert_eq!(report.events.len(), 1, "{report:#?}");
    &report.events[0].outcome
}

#[tokio::test]
async fn ssh_runs_a_remote_kill_and_verify_command() {
    if !require("ssh test", true, &["sshd", "ssh", "ssh-keygen"], "root, openssh-server and openssh-client") {
        return;
    }
    let sshd = Sshd::start().await;
    let dir = &sshd.dir;

    // The "master": a process whose pid is in a pidfile.
    let mut master = tokio::process::Command::new("sleep").arg("1000").kill_on_drop(true).spawn().unwrap();
    let pidfile = dir.path("master.pid");
    std::fs::write(&pidfile, master.id().unwrap().to_string()).unwrap();
    // The configured remote command: kill, then verify on the target that it is gone
    // (an exited zombie counts as gone), and record the token it was given.
    let stop = dir.script(
        "stop-master",
        "#!/bin/sh\npid=$(cat \"$1\")\necho \"$2\" > \"$3\"\nkill -TERM \"$pid\" 2>/dev/null\ni=0\nwhile [ -e /proc/$pid ] && ! grep -q '^State:[[:space:]]*Z' /proc/$pid/status 2>/dev/null; do\n  i=$((i+1)); [ $i -gt 200 ] && exit 1; sleep 0.02\ndone\nexit 0\n",
    ).unwrap();
    let token_file = dir.path("token.out");
    let yaml = ssh_yaml(
        &sshd,
        &[stop.to_str().unwrap(), pidfile.to_str().unwrap(), "{fence_token}", token_file.to_str().unwrap()],
        8000,
    );
    // Checked first: the login works, and the check runs nothing but `true` (the master lives).
    let check = fencer(&yaml).check(&target("n1", "127.0.0.1", 5432)).await;
    let Readiness::Ready { detail } = &check.checks[0].readiness else { panic!("{check:#?}") };
    assert!(detail.contains("ssh login to 127.0.0.1 as root works"), "{detail}");
    assert!(master.try_wait().unwrap().is_none() && !token_file.exists(), "the check fenced");
    let report = fencer(&yaml).fence(&target("n1", "127.0.0.1", 5432), FencingToken(44)).await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(master.wait().await.unwrap().signal(), Some(libc::SIGTERM));
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), "44");

    // A remote command that cannot verify the kill fails.
    let report = fencer(&ssh_yaml(&sshd, &["/bin/sh", "-c", "echo still running >&2; exit 1"], 8000))
        .fence(&target("n1", "127.0.0.1", 5432), FencingToken(44))
        .await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("exited 1: still running"), "{reason}");

    // A remote command that hangs is cut off at the deadline: indeterminate.
    let started = Instant::now();
    let report = fencer(&ssh_yaml(&sshd, &["sleep", "20"], 2500))
        .fence(&target("n1", "127.0.0.1", 5432), FencingToken(44))
        .await;
    assert!(matches!(only_outcome(&report), MethodOutcome::Indeterminate { .. }), "{report:#?}");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(2500) && elapsed < Duration::from_millis(4000), "{elapsed:?}");
}

#[tokio::test]
async fn ssh_to_an_unreachable_target_fails_within_its_deadline() {
    if !require("ssh unreachable test", false, &["ssh"], "openssh-client") {
        return;
    }
    let dir = ScratchDir::new("ssh-unreachable").unwrap();
    let key = dir.path("no_such_key");
    let yaml = format!(
        "overall_timeout_ms: 10000\nlevels:\n  - methods:\n      - kind: ssh\n        timeout_ms: 3000\n        connect_timeout_ms: 1000\n        user: root\n        identity_file: {}\n        port: {}\n        host_key_checking: \"no\"\n        known_hosts_file: /dev/null\n        command: [\"true\"]\n",
        key.display(),
        closed_port()
    );
    let started = Instant::now();
    let report = fencer(&yaml).fence(&target("n1", "127.0.0.1", 5432), FencingToken(44)).await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("could not reach"), "{reason}");
    let check = fencer(&yaml).check(&target("n1", "127.0.0.1", 5432)).await;
    let Readiness::Problem { reason } = &check.checks[0].readiness else { panic!("{check:#?}") };
    assert!(reason.contains("could not reach"), "{reason}");
    assert!(started.elapsed() < Duration::from_millis(3000 + 500));

    // A host that would be read as an ssh option is refused before ssh runs.
    let report = fencer(&yaml).fence(&target("n1", "-oProxyCommand=sh", 5432), FencingToken(44)).await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("not a plain host name"), "{reason}");
}

// ----- isolate --------------------------------------------------------------------------

/// Serialises the namespace tests: their namespaces and links are named after the process.
static NETNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A subnet `10.213.X.0/24` claimed machine-wide for as long as this lives.
struct Subnet {
    octet: u8,
    _claim: UnixDatagram,
}

impl Subnet {
    fn claim() -> Subnet {
        let (octet, claim) = Hosts::claim_subnet().expect("a free 10.213.X.0/24 subnet");
        Subnet { octet, _claim: claim }
    }

    /// `10.213.X.{host}`.
    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.octet, host)
    }
}

/// A network namespace joined to the root namespace by a veth pair on a subnet of its own
/// (the root namespace's end `.1`, the namespace's `.2`); removed on drop, also when the test
/// fails. Named after the whole pid: `rfence-{pid}`, its link `rfa{pid}` (a pid has at most 7
/// digits, well inside Linux's 15 characters for an interface name).
struct Netns {
    name: String,
    veth: String,
    subnet: Subnet,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Netns {
    fn create() -> Netns {
        let id = std::process::id();
        let ns = Netns { name: format!("rfence-{id}"), veth: format!("rfa{id}"), subnet: Subnet::claim() };
        let peer = format!("rfb{id}");
        // Leftovers of a crashed earlier run with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        let _ = Command::new("ip").args(["link", "del", &ns.veth]).output();
        ip(&["netns", "add", &ns.name]);
        ip(&["link", "add", &ns.veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/24", ns.root_addr()), "dev", &ns.veth]);
        ip(&["link", "set", &ns.veth, "up"]);
        ip(&["-n", &ns.name, "addr", "add", &format!("{}/24", ns.addr()), "dev", &peer]);
        ip(&["-n", &ns.name, "link", "set", &peer, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The root namespace's address on the link.
    fn root_addr(&self) -> Ipv4Addr {
        self.subnet.addr(1)
    }

    /// The namespace's address on the link.
    fn addr(&self) -> Ipv4Addr {
        self.subnet.addr(2)
    }

    /// Starts a TCP echo server inside the namespace and returns its port.
    fn echo_server(&self) -> u16 {
        echo_server_in(&self.name, self.addr(), 0)
    }

    fn tagged_rules(&self, node_id: &str) -> usize {
        let out = Command::new("ip").args(["netns", "exec", &self.name, "iptables", "-S"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                l.contains(&format!("referee-fence:{node_id}\""))
                    || l.ends_with(&format!("referee-fence:{node_id} -j DROP"))
            })
            .count()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its end of the veth pair, and with it ours.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &self.veth]).output();
    }
}

/// Starts a TCP echo server on `addr:port` inside namespace `ns` and returns its port.
fn echo_server_in(ns: &str, addr: Ipv4Addr, port: u16) -> u16 {
    let path = format!("/run/netns/{ns}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Only this thread enters the namespace; a socket stays in the namespace it was
        // created in, so the listener serves there while the test stays in the root one.
        let file = std::fs::File::open(&path).expect("open netns");
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace fd and a namespace type.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let listener = std::net::TcpListener::bind((addr, port)).expect("bind in netns");
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        echo_on(listener);
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("echo server port")
}

/// The port the container's server listens on, and the one its host publishes it on, as
/// Docker's `-p 8080:80` does.
const CONTAINER_PORT: u16 = 80;
const PUBLISHED_PORT: u16 = 8080;

/// A network namespace behind a [`Netns`], as a container on that host: joined to it by a veth
/// pair on a subnet of its own (the host's end, the gateway, `.1`; the container `.2`), routed
/// back to the root namespace's address through it (no default route), and its port published
/// on the host by DNAT in `nat PREROUTING`, as Docker publishes one. Removed on drop, and its
/// end of the link with it. Named after the whole pid: `rfencec-{pid}`, links `rfc{pid}` and
/// `rfd{pid}`.
struct Container {
    name: String,
    subnet: Subnet,
}

/// Runs `argv` in namespace `ns`, which must succeed.
fn in_netns(ns: &str, argv: &[&str]) {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(argv).output().expect("run ip netns exec");
    assert!(out.status.success(), "{argv:?} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Container {
    fn behind(host: &Netns) -> Container {
        let id = std::process::id();
        let container = Container { name: format!("rfencec-{id}"), subnet: Subnet::claim() };
        let (gateway, addr) = (container.gateway(), container.addr());
        let (outer, inner) = (format!("rfc{id}"), format!("rfd{id}"));
        // Leftovers of a crashed earlier run with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &container.name]).output();
        let _ = Command::new("ip").args(["link", "del", &outer]).output();
        ip(&["netns", "add", &container.name]);
        ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
        ip(&["link", "set", &outer, "netns", &host.name]);
        ip(&["link", "set", &inner, "netns", &container.name]);
        ip(&["-n", &host.name, "addr", "add", &format!("{gateway}/24"), "dev", &outer]);
        ip(&["-n", &host.name, "link", "set", &outer, "up"]);
        ip(&["-n", &container.name, "addr", "add", &format!("{addr}/24"), "dev", &inner]);
        ip(&["-n", &container.name, "link", "set", &inner, "up"]);
        ip(&["-n", &container.name, "link", "set", "lo", "up"]);
        ip(&["-n", &container.name, "route", "add", &format!("{}/32", host.root_addr()), "via", &gateway.to_string()]);
        in_netns(&host.name, &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        in_netns(
            &host.name,
            &[
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "--dport",
                &PUBLISHED_PORT.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{addr}:{CONTAINER_PORT}"),
            ],
        );
        container
    }

    /// The host's end of the link to the container.
    fn gateway(&self) -> Ipv4Addr {
        self.subnet.addr(1)
    }

    /// The container's address.
    fn addr(&self) -> Ipv4Addr {
        self.subnet.addr(2)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Connects and echoes one byte within `within`; false if anything does not happen in time.
fn echoes(addr: SocketAddr, within: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, within) else {
        return false;
    };
    echoes_on(&mut stream, within)
}

fn echoes_on(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1];
    stream.write_all(b"x").is_ok() && stream.read_exact(&mut b).is_ok() && &b == b"x"
}

fn isolate_local_yaml(ns: &str) -> String {
    format!(
        "overall_timeout_ms: 10000\nlevels:\n  - methods:\n      - kind: isolate\n        timeout_ms: 5000\n        backend: iptables\n        via: local\n        command_prefix: [ip, netns, exec, {ns}]\n"
    )
}

#[tokio::test]
async fn isolate_cuts_the_master_port_including_established_connections_and_unfence_restores_it() {
    if !require("isolate test", true, &["ip", "iptables"], "root and iptables") {
        return;
    }
    let _serial = NETNS.lock().await;
    let ns = Netns::create();
    let port = ns.echo_server();
    let addr: SocketAddr = (ns.addr(), port).into();
    let quick = Duration::from_secs(2);

    // Before: reachable, and one connection stays open across the fence.
    assert!(echoes(addr, quick), "echo server not reachable before fencing");
    let mut established = TcpStream::connect_timeout(&addr, quick).unwrap();
    assert!(echoes_on(&mut established, quick));

    let f = fencer(&isolate_local_yaml(&ns.name));
    let t = target("n1", &ns.addr().to_string(), port);
    // Checked first: the firewall can be listed where the rules would go, and none is added.
    let check = f.check(&t).await;
    let Readiness::Ready { detail } = &check.checks[0].readiness else { panic!("{check:#?}") };
    assert!(detail.contains("lists the firewall rules on this host"), "{detail}");
    assert_eq!(ns.tagged_rules("n1"), 0);
    assert!(echoes_on(&mut established, quick), "the check cut the connection");
    let report = f.fence(&t, FencingToken(50)).await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
    assert_eq!(ns.tagged_rules("n1"), 3);

    // After: new connections and the established one get nothing through.
    assert!(!echoes(addr, Duration::from_secs(1)), "new connection still served");
    assert!(!echoes_on(&mut established, Duration::from_secs(1)), "established connection still served");

    // Fencing again is idempotent: no duplicate rules.
    let report = f.fence(&t, FencingToken(51)).await;
    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("0 newly inserted"), "{detail}");
    assert_eq!(ns.tagged_rules("n1"), 3);

    // Unfence removes exactly our rules; the port is reachable again.
    let unfenced = f.unfence(&t).await;
    assert_eq!(unfenced.outcome, UnfenceOutcome::Unfenced, "{unfenced:#?}");
    assert_eq!(ns.tagged_rules("n1"), 0);
    assert!(echoes(addr, quick), "not reachable after unfence");

    // The same over ssh, when an sshd can be started: the firewall commands run on the
    // "target" (loopback), prefixed to reach the namespace.
    if require("isolate over ssh", true, &["sshd", "ssh", "ssh-keygen"], "openssh-server and openssh-client") {
        let sshd = Sshd::start().await;
        let yaml = format!(
            "overall_timeout_ms: 15000\nlevels:\n  - methods:\n      - kind: isolate\n        timeout_ms: 10000\n        backend: iptables\n        via: ssh\n        command_prefix: [ip, netns, exec, {}]\n        ssh:\n{}",
            ns.name,
            sshd.login_yaml("          ")
        );
        let f = fencer(&yaml);
        let mut t = target("n1", "127.0.0.1", port);
        t.host = "127.0.0.1".into();
        let report = f.fence(&t, FencingToken(52)).await;
        assert!(report.outcome.permits_promotion(), "{report:#?}");
        assert!(!echoes(addr, Duration::from_secs(1)), "served after isolate over ssh");
        let unfenced = f.unfence(&t).await;
        assert_eq!(unfenced.outcome, UnfenceOutcome::Unfenced, "{unfenced:#?}");
        assert!(echoes(addr, quick), "not reachable after unfence over ssh");
    }
}

/// A master in a container published on another port of its host (Docker's `-p 8080:80`):
/// peers reach it at the host's 8080, so that is the target's port, but the host rewrites the
/// destination to the container's 80 in `nat PREROUTING`, before FORWARD sees a packet. The
/// forward rules must match what each connection was first addressed to, or they cut off
/// nothing of it while the fence reports fenced.
#[tokio::test]
async fn isolate_with_forward_cuts_off_a_master_published_through_dnat_on_another_port() {
    if !require("isolate DNAT test", true, &["ip", "iptables"], "root and iptables") {
        return;
    }
    let _serial = NETNS.lock().await;
    let host = Netns::create();
    let container = Container::behind(&host);
    echo_server_in(&container.name, container.addr(), CONTAINER_PORT);
    let published: SocketAddr = (host.addr(), PUBLISHED_PORT).into();
    let quick = Duration::from_secs(2);
    assert!(echoes(published, quick), "the container is not reachable through the DNAT before fencing");
    let mut established = TcpStream::connect_timeout(&published, quick).unwrap();
    assert!(echoes_on(&mut established, quick));

    let f = fencer(&format!("{}        forward: true\n", isolate_local_yaml(&host.name)));
    let t = target("n1", &host.addr().to_string(), PUBLISHED_PORT);
    let report = f.fence(&t, FencingToken(53)).await;
    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("forwarded"), "{detail}");
    assert_eq!(host.tagged_rules("n1"), 3);
    assert!(!echoes(published, Duration::from_secs(1)), "a new connection through the DNAT is still served");
    assert!(
        !echoes_on(&mut established, Duration::from_secs(1)),
        "a connection established through the DNAT is still served"
    );

    // Unfence removes every rule it put in place, the forward ones included.
    let unfenced = f.unfence(&t).await;
    assert_eq!(unfenced.outcome, UnfenceOutcome::Unfenced, "{unfenced:#?}");
    assert_eq!(host.tagged_rules("n1"), 0);
    assert!(echoes(published, quick), "not reachable through the DNAT after unfence");
}

#[tokio::test]
async fn isolate_against_an_unreachable_host_fails_and_never_pretends() {
    if !require("isolate unreachable test", false, &["ssh"], "openssh-client") {
        return;
    }
    let yaml = format!(
        "overall_timeout_ms: 10000\nlevels:\n  - methods:\n      - kind: isolate\n        timeout_ms: 3000\n        backend: iptables\n        via: ssh\n        ssh:\n          user: root\n          identity_file: /nonexistent/key\n          port: {}\n          connect_timeout_ms: 1000\n          host_key_checking: \"no\"\n          known_hosts_file: /dev/null\n",
        closed_port()
    );
    let started = Instant::now();
    let report = fencer(&yaml).fence(&target("n1", "127.0.0.1", 5432), FencingToken(60)).await;
    assert!(matches!(report.outcome, FenceOutcome::Failed { .. }), "{report:#?}");
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("could not reach"), "{reason}");
    assert!(started.elapsed() < Duration::from_millis(3500));
    let unfenced = fencer(&yaml).unfence(&target("n1", "127.0.0.1", 5432)).await;
    assert!(matches!(unfenced.outcome, UnfenceOutcome::Incomplete { .. }), "{unfenced:#?}");
    let check = fencer(&yaml).check(&target("n1", "127.0.0.1", 5432)).await;
    let Readiness::Problem { reason } = &check.checks[0].readiness else { panic!("{check:#?}") };
    assert!(reason.contains("could not reach"), "{reason}");
}

/// Runs `test` on a thread of its own that has left for a fresh network namespace, with only
/// loopback up, on a runtime of its own: the firewall programs the fencer starts from that
/// thread (and the sockets it opens) live there, so rules land in a namespace that vanishes
/// with the thread, whatever the fencer does, and never in the host's firewall.
fn in_private_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare takes flags only; CLONE_NEWNET moves this thread alone.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        ip(&["link", "set", "lo", "up"]);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// The lines of `program -S` (in the calling thread's network namespace) tagged for `node_id`.
fn tagged_here(program: &str, node_id: &str) -> Vec<String> {
    let out = Command::new(program).arg("-S").output().unwrap();
    assert!(out.status.success(), "{program} -S: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("referee-fence:{node_id}")))
        .map(str::to_string)
        .collect()
}

fn isolate_here_yaml() -> String {
    "overall_timeout_ms: 10000\nlevels:\n  - methods:\n      - kind: isolate\n        timeout_ms: 5000\n        backend: iptables\n        via: local\n".to_string()
}

/// `via: local` without a prefix firewalls this host: for a target on another host that cuts
/// off nothing of the old master (and this host's own master, which serves on the same port),
/// so it must fail, add no rule, and the check must say so.
#[test]
fn isolate_via_local_refuses_a_target_on_another_host() {
    if !require("isolate local remote-target test", true, &["ip", "iptables", "ip6tables"], "root and iptables") {
        return;
    }
    in_private_netns(|| async {
        let f = fencer(&isolate_here_yaml());
        let remote = target("n1", "db9.example.invalid", 5432);
        let report = f.fence(&remote, FencingToken(70)).await;
        let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
        assert!(reason.contains("is not this host"), "{reason}");
        assert_eq!(tagged_here("iptables", "n1"), Vec::<String>::new(), "rules were inserted on this host");
        assert_eq!(tagged_here("ip6tables", "n1"), Vec::<String>::new(), "rules were inserted on this host");
        let check = f.check(&remote).await;
        let Readiness::Problem { reason } = &check.checks[0].readiness else { panic!("{check:#?}") };
        assert!(reason.contains("is not this host"), "{reason}");

        // A target on this host is isolated here, as before.
        let report = f.fence(&target("n1", "127.0.0.1", 5432), FencingToken(70)).await;
        assert!(report.outcome.permits_promotion(), "{report:#?}");
        assert!(!tagged_here("iptables", "n1").is_empty());
    });
}

/// Serves an echo on `listener` until the thread that owns the runtime ends.
fn echo_on(listener: std::net::TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// A dual-stack master (bound to `[::]`, as PostgreSQL with `listen_addresses='*'`, Go and Java
/// bind by default) is reached over IPv6 as well as IPv4: isolating it must cut both, and the
/// fenced detail must say which families were dropped.
#[test]
fn isolate_cuts_a_dual_stack_master_over_ipv6_too() {
    if !require("isolate dual-stack test", true, &["ip", "iptables", "ip6tables", "ss"], "root, iptables and iproute2")
    {
        return;
    }
    in_private_netns(|| async {
        // Bound from this thread, so in the private namespace; IPV6_V6ONLY is off by default.
        let listener = std::net::TcpListener::bind("[::]:0").expect("bind [::]");
        let port = listener.local_addr().unwrap().port();
        echo_on(listener);
        let v4: SocketAddr = ([127, 0, 0, 1], port).into();
        let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();
        let quick = Duration::from_secs(2);
        assert!(echoes(v4, quick) && echoes(v6, quick), "the dual-stack echo server is not reachable");

        let f = fencer(&isolate_here_yaml());
        let t = target("n1", "127.0.0.1", port);
        let report = f.fence(&t, FencingToken(71)).await;
        let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
        assert!(detail.contains("IPv4") && detail.contains("IPv6"), "{detail}");
        assert!(!echoes(v4, Duration::from_secs(1)), "served over IPv4 after isolate");
        assert!(!echoes(v6, Duration::from_secs(1)), "served over IPv6 after isolate");

        let unfenced = f.unfence(&t).await;
        assert_eq!(unfenced.outcome, UnfenceOutcome::Unfenced, "{unfenced:#?}");
        assert_eq!(tagged_here("iptables", "n1"), Vec::<String>::new());
        assert_eq!(tagged_here("ip6tables", "n1"), Vec::<String>::new());
        assert!(echoes(v4, quick) && echoes(v6, quick), "not reachable after unfence");

        // IPv4 rules alone would leave it reachable: with `family: ipv4` the fence fails, sets
        // nothing, and says why; an IPv6 target is refused before anything runs.
        let f = fencer(&format!("{}        family: ipv4\n", isolate_here_yaml()));
        let report = f.fence(&t, FencingToken(72)).await;
        let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
        assert!(reason.contains(&format!("uses port {port} over IPv6")), "{reason}");
        assert_eq!(tagged_here("iptables", "n1"), Vec::<String>::new());
        let report = f.fence(&target("n1", "::1", port), FencingToken(72)).await;
        let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
        assert!(reason.contains("is an IPv6 address"), "{reason}");
    });
}

/// A stand-in for `ip6tables` that cannot initialise its table for `why`: it exits 3 with the
/// message the real (legacy) one prints.
fn ip6tables_failing_with(dir: &ScratchDir, why: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path("ip6tables");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"ip6tables v1.8.9 (legacy): can't initialize ip6tables table \\`filter': {why}\" >&2\necho \
             'Perhaps ip6tables or your kernel needs to be upgraded.' >&2\nexit 3\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A stand-in for `ip6tables` on a host booted with `ipv6.disable=1`: the kernel refuses the
/// IPv6 table.
fn ip6tables_without_ipv6(dir: &ScratchDir) -> PathBuf {
    ip6tables_failing_with(dir, "Address family not supported by protocol")
}

/// With `family` left at its default, a host whose kernel has IPv6 off (ip6tables exits 3)
/// is isolated over IPv4 alone, and says so; an explicit `family: both` stays strict.
#[test]
fn isolate_by_default_goes_on_over_ipv4_where_the_kernel_has_no_ipv6() {
    if !require("isolate no-IPv6 test", true, &["ip", "iptables", "ss"], "root, iptables and iproute2") {
        return;
    }
    in_private_netns(|| async {
        let dir = ScratchDir::new("no-ipv6").unwrap();
        let program6 = ip6tables_without_ipv6(&dir);
        let yaml = format!("{}        program6: {}\n", isolate_here_yaml(), program6.display());
        let f = fencer(&yaml);
        let t = target("n1", "127.0.0.1", 5432);
        let check = f.check(&t).await;
        let Readiness::Ready { detail } = &check.checks[0].readiness else { panic!("{check:#?}") };
        assert!(detail.contains("no IPv6"), "{detail}");
        let report = f.fence(&t, FencingToken(73)).await;
        let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
        assert!(detail.contains("IPv4") && detail.contains("no IPv6"), "{detail}");
        assert_eq!(tagged_here("iptables", "n1").len(), 3);
        let unfenced = f.unfence(&t).await;
        assert_eq!(unfenced.outcome, UnfenceOutcome::Unfenced, "{unfenced:#?}");
        assert_eq!(tagged_here("iptables", "n1"), Vec::<String>::new());

        let f = fencer(&format!("{yaml}        family: both\n"));
        let report = f.fence(&t, FencingToken(74)).await;
        assert!(matches!(only_outcome(&report), MethodOutcome::Failed { .. }), "{report:#?}");
        let unfenced = f.unfence(&t).await;
        assert_ne!(unfenced.outcome, UnfenceOutcome::Unfenced, "{unfenced:#?}");
        assert_eq!(tagged_here("iptables", "n1"), Vec::<String>::new());
    });
}

/// `ip6tables` that cannot load its table module (module loading locked after boot, a kernel
/// built without it) prints the "can't initialize" of a kernel without IPv6, while IPv6 is up
/// and the master listens on `[::]`. IPv4 rules alone would leave it reachable over IPv6, so
/// the `ss -6` check decides, as it does without an IPv6 program: here it fails the fence.
#[test]
fn isolate_by_default_checks_ipv6_sockets_where_ip6tables_cannot_load_its_table() {
    if !require("isolate no-ip6tables-table test", true, &["ip", "iptables", "ss"], "root, iptables and iproute2") {
        return;
    }
    in_private_netns(|| async {
        let dir = ScratchDir::new("no-ip6-table").unwrap();
        let program6 = ip6tables_failing_with(&dir, "Table does not exist (do you need to insmod?)");
        let f = fencer(&format!("{}        program6: {}\n", isolate_here_yaml(), program6.display()));
        let listener = std::net::TcpListener::bind("[::]:0").expect("bind [::]");
        let port = listener.local_addr().unwrap().port();
        echo_on(listener);
        let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();
        assert!(echoes(v6, Duration::from_secs(2)), "the echo server is not reachable over IPv6");

        let t = target("n1", "127.0.0.1", port);
        let check = f.check(&t).await;
        let Readiness::Problem { reason } = &check.checks[0].readiness else { panic!("{check:#?}") };
        assert!(reason.contains(&format!("uses port {port} over IPv6")), "{reason}");
        let report = f.fence(&t, FencingToken(79)).await;
        let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
        assert!(reason.contains(&format!("uses port {port} over IPv6")), "{reason}");
        assert!(reason.contains("cannot initialise its table"), "{reason}");
        assert_eq!(tagged_here("iptables", "n1"), Vec::<String>::new());
    });
}

/// With `family` left at its default and no `ip6tables` program, the IPv4 rules go in and the
/// `ss -6` check decides: fenced unless a socket uses the port over IPv6.
#[test]
fn isolate_by_default_without_an_ip6tables_program_falls_back_to_the_ss_check() {
    if !require("isolate missing-ip6tables test", true, &["ip", "iptables", "ss"], "root, iptables and iproute2") {
        return;
    }
    in_private_netns(|| async {
        let yaml = format!("{}        program6: /nonexistent/ip6tables\n", isolate_here_yaml());
        let f = fencer(&yaml);
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let t = target("n1", "127.0.0.1", v4.local_addr().unwrap().port());
        let check = f.check(&t).await;
        assert!(matches!(check.checks[0].readiness, Readiness::Ready { .. }), "{check:#?}");
        let report = f.fence(&t, FencingToken(75)).await;
        let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
        assert!(detail.contains("IPv4") && detail.contains("/nonexistent/ip6tables"), "{detail}");
        let unfenced = f.unfence(&t).await;
        assert_eq!(unfenced.outcome, UnfenceOutcome::Unfenced, "{unfenced:#?}");

        let v6 = std::net::TcpListener::bind("[::]:0").unwrap();
        let t = target("n1", "127.0.0.1", v6.local_addr().unwrap().port());
        let report = f.fence(&t, FencingToken(76)).await;
        let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
        assert!(reason.contains("over IPv6"), "{reason}");
        assert_eq!(tagged_here("iptables", "n1"), Vec::<String>::new());
    });
}

/// `via: local` takes a target named by any address of this host's interfaces; with `forward`
/// (the default) an address behind this host (a container, NAT) too; a remote name stays refused.
#[test]
fn isolate_via_local_takes_this_hosts_addresses_and_listed_ones() {
    if !require("isolate local addresses test", true, &["ip", "iptables", "ip6tables"], "root and iptables") {
        return;
    }
    in_private_netns(|| async {
        // An address of this host that is not a loopback one (on `lo`: no dummy module needed).
        ip(&["addr", "add", "10.213.41.1/32", "dev", "lo"]);
        let f = fencer(&format!("{}        forward: false\n", isolate_here_yaml()));
        let report = f.fence(&target("n1", "10.213.41.1", 5432), FencingToken(77)).await;
        assert!(report.outcome.permits_promotion(), "{report:#?}");
        assert_eq!(f.unfence(&target("n1", "10.213.41.1", 5432)).await.outcome, UnfenceOutcome::Unfenced);
        // A container's address looks like another host's on the same network: refused, with
        // forward too (rules here would cut off nothing of another host) ...
        for f in [&f, &fencer(&isolate_here_yaml())] {
            let report = f.fence(&target("n1", "172.17.0.3", 5432), FencingToken(77)).await;
            let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
            assert!(reason.contains("is not this host"), "{reason}");
        }
        // ... unless the operator says it is here: its traffic crosses this host's FORWARD
        // chain, which the rules cut.
        let f = fencer(&format!("{}        local_hosts: [172.17.0.3]\n", isolate_here_yaml()));
        let report = f.fence(&target("n1", "172.17.0.3", 5432), FencingToken(78)).await;
        assert!(report.outcome.permits_promotion(), "{report:#?}");
        let check = f.check(&target("n1", "172.17.0.3", 5432)).await;
        assert!(matches!(check.checks[0].readiness, Readiness::Ready { .. }), "{check:#?}");
        let report = f.fence(&target("n2", "db9.example.invalid", 5432), FencingToken(78)).await;
        let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
        assert!(reason.contains("is not this host"), "{reason}");
    });
}
