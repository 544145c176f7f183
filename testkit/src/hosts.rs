//! Simulated hosts: network namespaces on one switch, with faults a test switches on and off.
//!
//! [`Hosts::new`]`(n)` gives each of `n` hosts its own network namespace (loopback up, one
//! interface `eth0` with the address `10.213.X.i/24`, `i` from 1, and no default route: a
//! process inside can reach its own host and the other hosts, nothing else), and joins them by a
//! bridge. The test process itself, in the root namespace, is the one client every host can
//! reach: it gets `10.213.X.254` on a veth into the same bridge, so the lab's HTTP clients and an
//! oracle work unchanged from the test.
//!
//! ```text
//!   root namespace (the test)              switch namespace              host namespaces
//!   rfh{pid}-{X} 10.213.X.254 ──veth── client ─┐
//!                                              ├─ br0  p1 ──veth── eth0 10.213.X.1  (host 1)
//!                                              ├────── p2 ──veth── eth0 10.213.X.2  (host 2)
//!                                              └────── pN ──veth── eth0 10.213.X.N  (host N)
//! ```
//!
//! # Why a switch namespace
//!
//! The bridge lives in a namespace of its own rather than in the root namespace. Deleting that
//! namespace deletes the bridge and one end of every veth pair, and with it the other end, so
//! teardown cannot leave a port behind; the root namespace sees one veth, the client's, and no
//! bridge. And the root namespace's firewall, which on a machine with `br_netfilter` loaded also
//! filters bridged frames, never sees the hosts' traffic.
//!
//! # Faults
//!
//! Every fault is an iptables `DROP`, so a packet vanishes as on a cut cable: a connect times out
//! instead of being refused, and an established connection hears nothing. ARP is not IP, so it
//! still passes and a sender never learns from a failed neighbour lookup either.
//!
//! A blocked direction `from -> to` is dropped on the receiver, in `to`'s `INPUT` chain by
//! source address. On the sender, in `OUTPUT`, the kernel would tell the sending process at once
//! (a UDP `sendto` fails with `EPERM`), which is a refusal, not a loss. A partition is both
//! directions; a one-way partition is one, and since TCP needs both directions for its
//! handshake, it stops TCP either way while UDP shows the asymmetry.
//!
//! [`Hosts::black_hole`] drops everything to and from a host, the client included: its own
//! `INPUT` drops all but loopback, every other host drops its source address, and its `OUTPUT`
//! drops what it sends to the client, because the root namespace gets no rules of ours. That
//! one drop is on the sender: a TCP sender on the host still sees only silence (its connect
//! times out, its data is never acknowledged); a UDP sender would get `EPERM`.
//!
//! [`Hosts::isolate`] cuts a host off from every other host but not from the client, so a test
//! can still see what a cut-off master acknowledges to clients on its side of the partition.
//!
//! Each change re-renders the whole rule set of every host from one [`Faults`] value and loads
//! it with `iptables-restore` (either backend, `nft` or `legacy`), so the rules on a host are
//! always exactly what the faults say, whatever order they were switched in.
//!
//! # Names and cleanup
//!
//! Everything is named after the creating process and the subnet: namespaces
//! `rfh-{pid}-{X}-h{i}` and `rfh-{pid}-{X}-sw`, the client veth `rfh{pid}-{X}`. The third octet
//! `X` is claimed by binding the abstract Unix socket `referee-hosts-10.213.X`, which the kernel
//! releases when the process dies, so concurrent tests, in one process or many, never share a
//! subnet; a test that builds namespaces of its own takes the same claim through
//! [`Hosts::claim_subnet`]. [`Hosts`] tears everything down on drop, and drop runs while a
//! panicking test unwinds. A test binary killed by a signal runs no destructor, so every
//! [`Hosts::new`] first deletes namespaces and links with the prefix whose creating pid no
//! longer exists.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};

/// The prefix of every namespace and link this module creates.
pub const HOSTS_PREFIX: &str = "rfh";

/// The address of the client (the test process) on every [`Hosts`] subnet.
const CLIENT_OCTET: u8 = 254;

/// Whether this process's effective user is root, as namespaces and mounts need.
pub fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid: real effective saved fs".
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    euid == Some("0")
}

/// Why [`Hosts`] cannot run here, or `None` when it can: it needs root and the `ip` and
/// `iptables-restore` programs. A test passes the reason to [`skip`](crate::skip).
pub fn hosts_unavailable() -> Option<String> {
    if !running_as_root() {
        return Some("simulated hosts need root (network namespaces, veth pairs, iptables)".into());
    }
    for (program, arg, package) in [("ip", "-V", "iproute2"), ("iptables-restore", "--version", "iptables")] {
        let runs = Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !runs.is_ok_and(|s| s.success()) {
            return Some(format!("`{program}` is missing: install {package}"));
        }
    }
    None
}

/// One simulated host: a network namespace with one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    index: usize,
    netns: String,
    addr: Ipv4Addr,
}

impl Host {
    /// Its number, from 1; also the last octet of its address.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its address, `10.213.X.{index}`.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The name of its network namespace (as `ip netns list` shows it).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// A command that runs `program` inside the host (`ip netns exec`, which `exec`s the
    /// program, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Runs `f` on a new thread that has entered the host's network namespace, and returns
    /// its result. Sockets keep the namespace they were created in, so a listener or a
    /// connection made in `f` belongs to the host however it is used afterwards.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = Path::new("/run/netns").join(&self.netns);
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let thread = std::thread::spawn(move || -> Result<T> {
            // A network namespace is per thread: only this short-lived thread moves.
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).context("entering the namespace")?;
            Ok(f())
        });
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// The faults in force: directions dropped and hosts black-holed. Rendering is pure
/// ([`Faults::ruleset`]), so the rules a host gets are a function of this value alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// `(from, to)`: packets from host `from` to host `to` are dropped.
    pub blocked: BTreeSet<(usize, usize)>,
    /// Hosts cut off from everything, the client included.
    pub black_holed: BTreeSet<usize>,
}

impl Faults {
    /// The `iptables-restore` input for host `host`'s filter table, with `addr` giving each
    /// host's address and `client` the client's.
    pub fn ruleset(&self, host: usize, addr: impl Fn(usize) -> Ipv4Addr, client: Ipv4Addr) -> String {
        let mut out = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        // A host always reaches itself: its master and agent talk over loopback (its own
        // address included, which the kernel routes through `lo`).
        out.push_str("-A INPUT -i lo -j ACCEPT\n");
        if self.black_holed.contains(&host) {
            out.push_str("-A INPUT -j DROP\n");
            out.push_str("-A OUTPUT -o lo -j ACCEPT\n");
            out.push_str(&format!("-A OUTPUT -d {client}/32 -j DROP\n"));
        }
        let mut sources: BTreeSet<usize> =
            self.blocked.iter().filter(|(_, to)| *to == host).map(|(from, _)| *from).collect();
        sources.extend(self.black_holed.iter().copied().filter(|&b| b != host));
        for from in sources {
            out.push_str(&format!("-A INPUT -s {}/32 -j DROP\n", addr(from)));
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// `n` simulated hosts on one switch; see the module documentation. Torn down on drop.
pub struct Hosts {
    subnet: u8,
    /// `rfh-{pid}-{X}`: the start of every namespace name.
    tag: String,
    switch: String,
    client_link: String,
    hosts: Vec<Host>,
    /// The faults every host's rules match, or `None` after a load failed part-way (some hosts
    /// may have the new rules): the next change then loads every host.
    faults: Mutex<Option<Faults>>,
    /// Holds the subnet for as long as this value lives (and no longer than the process).
    _claim: UnixDatagram,
}

impl Hosts {
    /// Creates `n` hosts (1 to 200) joined by a switch, after deleting what killed test
    /// processes left behind.
    pub fn new(n: usize) -> Result<Hosts> {
        ensure!((1..=200).contains(&n), "between 1 and 200 hosts, not {n}");
        if let Some(why) = hosts_unavailable() {
            bail!("{why}");
        }
        remove_stale()?;
        let (subnet, claim) = claim_subnet()?;
        let pid = std::process::id();
        let tag = format!("{HOSTS_PREFIX}-{pid}-{subnet}");
        let hosts = (1..=n)
            .map(|i| Host { index: i, netns: format!("{tag}-h{i}"), addr: Ipv4Addr::new(10, 213, subnet, i as u8) })
            .collect();
        // Built before anything exists, so a failure half-way tears down what was made.
        let made = Hosts {
            subnet,
            switch: format!("{tag}-sw"),
            client_link: format!("{HOSTS_PREFIX}{pid}-{subnet}"),
            tag,
            hosts,
            faults: Mutex::new(Some(Faults::default())),
            _claim: claim,
        };
        made.build().with_context(|| format!("creating {n} simulated hosts on 10.213.{subnet}.0/24"))?;
        Ok(made)
    }

    /// Claims a free subnet `10.213.X.0/24` machine-wide for a test that builds its own
    /// namespaces and links rather than [`Hosts`], so that it never shares one with simulated
    /// hosts or with another such test, in this process or another: the claim [`Hosts::new`]
    /// takes. Returns `X` and the socket that holds the claim; the subnet is the caller's while
    /// it keeps the socket open, and never longer than the process lives. Fails if all 253 are
    /// taken.
    pub fn claim_subnet() -> Result<(u8, UnixDatagram)> {
        claim_subnet()
    }

    fn build(&self) -> Result<()> {
        let sw = self.switch.as_str();
        ip(&["netns", "add", sw])?;
        ip(&["-n", sw, "link", "set", "lo", "up"])?;
        ip(&["-n", sw, "link", "add", "name", "br0", "type", "bridge"])?;
        ip(&["-n", sw, "link", "set", "br0", "up"])?;
        for host in &self.hosts {
            let (ns, port) = (host.netns.as_str(), format!("p{}", host.index));
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", sw, "link", "add", "name", &port, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
            ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{}/24", host.addr), "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            self.load_rules(host, &Faults::default())?;
        }
        ip(&["link", "add", "name", &self.client_link, "type", "veth", "peer", "name", "client", "netns", sw])?;
        ip(&["-n", sw, "link", "set", "client", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{}/24", self.client_addr()), "dev", &self.client_link])?;
        ip(&["link", "set", &self.client_link, "up"])?;
        Ok(())
    }

    /// The hosts, host 1 first.
    pub fn iter(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter()
    }

    /// How many hosts there are.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Always false: there is at least one host.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host `i`, counting from 1.
    ///
    /// # Panics
    /// If there is no host `i`: a test naming a host it did not create is wrong.
    pub fn host(&self, i: usize) -> &Host {
        assert!((1..=self.hosts.len()).contains(&i), "there is no host {i} of {}", self.hosts.len());
        &self.hosts[i - 1]
    }

    /// The third octet of the hosts' addresses.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// The test process's own address on the hosts' subnet.
    pub fn client_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, CLIENT_OCTET)
    }

    /// Every namespace name of this set (hosts, then the switch).
    pub fn netns_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.netns.clone()).chain([self.switch.clone()]).collect()
    }

    /// The name of the client's veth in the root namespace.
    pub fn client_link(&self) -> &str {
        &self.client_link
    }

    /// The faults in force; `None` after a change failed part-way (some hosts may have its
    /// rules), until a change loads every host again.
    pub fn faults(&self) -> Option<Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Cuts host `a` off from each of `others`, both ways.
    pub fn partition(&self, a: usize, others: &[usize]) -> Result<()> {
        self.change(|f| {
            for &b in others {
                f.blocked.insert((a, b));
                f.blocked.insert((b, a));
            }
        })
    }

    /// Drops what host `from` sends to host `to`; the other direction still passes.
    pub fn partition_one_way(&self, from: usize, to: usize) -> Result<()> {
        self.change(|f| {
            f.blocked.insert((from, to));
        })
    }

    /// Cuts host `a` off from every other host, both ways; the client still reaches it.
    pub fn isolate(&self, a: usize) -> Result<()> {
        let others: Vec<usize> = (1..=self.hosts.len()).filter(|&b| b != a).collect();
        self.partition(a, &others)
    }

    /// Drops everything to and from host `a`, the client's traffic included.
    pub fn black_hole(&self, a: usize) -> Result<()> {
        self.change(|f| {
            f.black_holed.insert(a);
        })
    }

    /// Lifts every fault involving host `a`.
    pub fn heal(&self, a: usize) -> Result<()> {
        self.change(|f| {
            f.blocked.retain(|&(from, to)| from != a && to != a);
            f.black_holed.remove(&a);
        })
    }

    /// Lifts every fault.
    pub fn heal_all(&self) -> Result<()> {
        self.change(|f| *f = Faults::default())
    }

    /// Applies `edit` to the faults and loads every host's rules to match.
    fn change(&self, edit: impl FnOnce(&mut Faults)) -> Result<()> {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = faults.clone().unwrap_or_default();
        edit(&mut next);
        for (from, to) in &next.blocked {
            for i in [from, to] {
                ensure!((1..=self.hosts.len()).contains(i), "there is no host {i} of {}", self.hosts.len());
            }
        }
        for i in &next.black_holed {
            ensure!((1..=self.hosts.len()).contains(i), "there is no host {i} of {}", self.hosts.len());
        }
        // Only the hosts whose rules change are loaded, all at once: loaded one after another
        // (tens of ms each, more on a busy machine) a fault would reach the last host that much
        // later than the first, and a failover timed from the fault would count the difference.
        let changed: Vec<(&Host, String)> = self
            .hosts
            .iter()
            .filter_map(|h| {
                let rules = self.ruleset(h, &next);
                let unchanged = faults.as_ref().is_some_and(|now| rules == self.ruleset(h, now));
                (!unchanged).then_some((h, rules))
            })
            .collect();
        let loaded = std::thread::scope(|scope| {
            let loads: Vec<_> = changed.iter().map(|(h, rules)| scope.spawn(|| self.load(h, rules))).collect();
            // Every load is waited for before any error is returned.
            let results: Vec<Result<()>> = loads
                .into_iter()
                .map(|l| l.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a rules load panicked"))))
                .collect();
            results.into_iter().collect::<Result<()>>()
        });
        // Some hosts may have the new rules and others not: unknown until a change loads all.
        *faults = loaded.is_ok().then_some(next);
        loaded
    }

    fn ruleset(&self, host: &Host, faults: &Faults) -> String {
        let subnet = self.subnet;
        faults.ruleset(host.index, |i| Ipv4Addr::new(10, 213, subnet, i as u8), self.client_addr())
    }

    fn load_rules(&self, host: &Host, faults: &Faults) -> Result<()> {
        self.load(host, &self.ruleset(host, faults))
    }

    fn load(&self, host: &Host, rules: &str) -> Result<()> {
        // `-w`: the legacy backend's lock is one file for every namespace, and loads run at once.
        let mut restore = host.command("iptables-restore");
        restore.arg("-w");
        run_with_input(restore, rules)
            .with_context(|| format!("loading the firewall rules of host {} ({})", host.index, host.netns))
    }
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts").field("tag", &self.tag).field("hosts", &self.hosts).finish()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Host namespaces first: their processes (if a caller left any) lose the network at
        // once. The switch's deletion then takes the bridge and every veth end with it.
        for ns in self.netns_names().iter().filter(|ns| Path::new("/run/netns").join(ns).exists()) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("tearing down simulated hosts: {e:#}");
            }
        }
        // Normally gone with its peer in the switch; deleted here in case the switch was not.
        if link_exists(&self.client_link) {
            let _ = ip(&["link", "del", &self.client_link]);
        }
    }
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run_with_input(cmd, "").with_context(|| format!("ip {}", args.join(" ")))
}

/// How long one `ip` or `iptables-restore` run may take.
const COMMAND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `cmd` with `input` on its stdin; fails unless it exits 0.
fn run_with_input(mut cmd: Command, input: &str) -> Result<()> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).context("writing to its stdin")?;
    }
    // A switch of the network that hangs would hang the scenario timed around it.
    let deadline = std::time::Instant::now() + COMMAND_DEADLINE;
    while child.try_wait().context("waiting for it")?.is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{:?} did not finish within {COMMAND_DEADLINE:?}; killed", cmd.get_program());
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let out = child.wait_with_output().context("waiting for it")?;
    ensure!(out.status.success(), "{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Claims a free third octet for this process by binding an abstract Unix socket named after
/// it: the claim is atomic and the kernel drops it when the socket closes or the process dies.
/// The search starts at a point derived from the pid so concurrent processes rarely collide.
fn claim_subnet() -> Result<(u8, UnixDatagram)> {
    let start = std::process::id() as usize * 7919;
    for k in 0..253 {
        let subnet = 1 + ((start + k) % 253) as u8;
        let name = format!("referee-hosts-10.213.{subnet}");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).context("naming an abstract socket")?;
        // An address of the subnet already in the root namespace belongs to something else.
        if let Ok(socket) = UnixDatagram::bind_addr(&addr) {
            if !root_has_subnet(subnet) {
                return Ok((subnet, socket));
            }
        }
    }
    bail!("every subnet 10.213.1-253.0/24 is taken by other simulated hosts")
}

fn root_has_subnet(subnet: u8) -> bool {
    let out = Command::new("ip").args(["-o", "-4", "addr", "show"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.contains(&format!(" 10.213.{subnet}."))
}

/// The pid in a name this module made: `rfh-{pid}-...` (namespaces) or `rfh{pid}-...` (links).
fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(HOSTS_PREFIX)?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Deletes namespaces and root-namespace links with our prefix whose creating process is gone.
/// Namespaces first: deleting a switch takes its veths, the client's included.
fn remove_stale() -> Result<()> {
    let list = Command::new("ip").args(["netns", "list"]).output().context("ip netns list")?;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        if creator_pid(name).is_some_and(|pid| !alive(pid)) {
            // Another harness starting at the same time may delete it first: only one still
            // there after a failed deletion is an error.
            if let Err(e) = ip(&["netns", "del", name]) {
                ensure!(!Path::new("/run/netns").join(name).exists(), "removing a stale namespace: {e:#}");
            }
        }
    }
    let links = std::fs::read_dir("/sys/class/net").context("listing /sys/class/net")?;
    for entry in links.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if creator_pid(&name).is_some_and(|pid| !alive(pid)) {
            if let Err(e) = ip(&["link", "del", &name]) {
                ensure!(!link_exists(&name), "removing a stale link: {e:#}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, 7, i as u8)
    }

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 213, 7, 254);
    const HEAD: &str =
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\n";

    #[test]
    fn no_faults_accept_everything() {
        assert_eq!(Faults::default().ruleset(2, addr, CLIENT), format!("{HEAD}COMMIT\n"));
    }

    #[test]
    fn a_blocked_direction_is_dropped_by_its_receiver_only() {
        let faults = Faults { blocked: [(1, 2)].into(), ..Faults::default() };
        assert_eq!(faults.ruleset(2, addr, CLIENT), format!("{HEAD}-A INPUT -s 10.213.7.1/32 -j DROP\nCOMMIT\n"));
        assert_eq!(faults.ruleset(1, addr, CLIENT), format!("{HEAD}COMMIT\n"));
        assert_eq!(faults.ruleset(3, addr, CLIENT), format!("{HEAD}COMMIT\n"));
    }

    #[test]
    fn a_black_hole_drops_all_but_loopback_on_the_host_and_its_address_everywhere_else() {
        let faults = Faults { blocked: [(3, 2)].into(), black_holed: [2].into() };
        assert_eq!(
            faults.ruleset(2, addr, CLIENT),
            format!(
                "{HEAD}-A INPUT -j DROP\n-A OUTPUT -o lo -j ACCEPT\n-A OUTPUT -d 10.213.7.254/32 -j DROP\n\
                 -A INPUT -s 10.213.7.3/32 -j DROP\nCOMMIT\n"
            )
        );
        // Blocked and black-holed at once: one rule, not two.
        let both = Faults { blocked: [(2, 1)].into(), black_holed: [2].into() };
        assert_eq!(both.ruleset(1, addr, CLIENT), format!("{HEAD}-A INPUT -s 10.213.7.2/32 -j DROP\nCOMMIT\n"));
    }

    #[test]
    fn a_subnet_claimed_outside_hosts_is_held_against_every_other_claim() {
        let (one, _held) = Hosts::claim_subnet().unwrap();
        let (other, _also_held) = Hosts::claim_subnet().unwrap();
        assert_ne!(one, other, "one subnet claimed twice");
        // It is the claim [`Hosts::new`] takes: the same abstract name, which nobody else binds
        // while it is held.
        let name = format!("referee-hosts-10.213.{one}");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        assert!(UnixDatagram::bind_addr(&addr).is_err(), "10.213.{one}.0/24 could be claimed again");
    }

    #[test]
    fn names_carry_the_creating_pid() {
        assert_eq!(creator_pid("rfh-4321-17-h2"), Some(4321));
        assert_eq!(creator_pid("rfh-4321-17-sw"), Some(4321));
        assert_eq!(creator_pid("rfh4321-17"), Some(4321));
        assert_eq!(creator_pid("rfhx-1"), None);
        assert_eq!(creator_pid("eth0"), None);
        assert_eq!(creator_pid("rfh-"), None);
    }
}
