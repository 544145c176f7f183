//! The simulated hosts themselves, with real sockets: what each fault drops and what it lets
//! through, that healing restores, and that nothing outlives a [`Hosts`]: not on drop, not when
//! the test panics, and not when the test process is killed (the next harness removes it).
//!
//! Every check opens sockets inside the hosts' namespaces ([`Host::enter`]) or from the test
//! process (the client) and waits on them with short deadlines: a dropped connect must time out,
//! a closed port must be refused, a delivered datagram must arrive.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use referee_testkit::{hosts_unavailable, skip, Host, Hosts};

/// How long a connect that should succeed may take.
const REACH: Duration = Duration::from_secs(3);
/// How long a connect or datagram that should be dropped is given to get through.
const DROPPED: Duration = Duration::from_millis(400);

fn available(test: &str) -> bool {
    match hosts_unavailable() {
        Some(why) => {
            skip(test, &why);
            false
        }
        None => true,
    }
}

/// What a TCP connect came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connect {
    /// The handshake completed.
    Connected,
    /// Nothing came back within the deadline: the packets were dropped.
    TimedOut,
    /// A reset came back: nobody listens, but the host is reachable.
    Refused,
}

fn classify(result: std::io::Result<TcpStream>) -> Result<Connect> {
    match result {
        Ok(_) => Ok(Connect::Connected),
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => Ok(Connect::TimedOut),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Connect::Refused),
        Err(e) => bail!("connect failed otherwise: {e}"),
    }
}

/// Connects from host `from` (or from the client, the test process, when `None`) to `to`.
fn connect(from: Option<&Host>, to: SocketAddr, limit: Duration) -> Result<Connect> {
    match from {
        Some(host) => classify(host.enter(move || TcpStream::connect_timeout(&to, limit))?),
        None => classify(TcpStream::connect_timeout(&to, limit)),
    }
}

/// Whether `from` reaches `to`: a connect that completes within [`REACH`], or one that times
/// out within [`DROPPED`]; anything else fails the test.
fn reaches(from: Option<&Host>, to: SocketAddr) -> Result<bool> {
    match connect(from, to, REACH)? {
        Connect::Connected => Ok(true),
        Connect::Refused => bail!("{to} refused a connect: a fault must drop, not refuse"),
        Connect::TimedOut => Ok(false),
    }
}

/// Asserts that `from` cannot reach `to`: the connect times out, never refused.
fn cut(from: Option<&Host>, to: SocketAddr) -> Result<bool> {
    match connect(from, to, DROPPED)? {
        Connect::TimedOut => Ok(true),
        Connect::Connected => Ok(false),
        Connect::Refused => bail!("{to} refused a connect: a fault must drop, not refuse"),
    }
}

/// A TCP listener inside `host` on an ephemeral port; connects complete from the backlog
/// without an accept.
fn listen(host: &Host) -> Result<(TcpListener, SocketAddr)> {
    let addr = host.addr();
    let listener = host.enter(move || TcpListener::bind((addr, 0)))?.context("binding a listener")?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

fn name(from: Option<&Host>) -> String {
    from.map_or("the client".into(), |h| format!("host {}", h.index()))
}

#[test]
fn a_connect_across_a_partition_times_out_while_a_closed_port_is_refused_and_heal_restores() -> Result<()> {
    if !available("a_connect_across_a_partition_times_out_while_a_closed_port_is_refused_and_heal_restores") {
        return Ok(());
    }
    let hosts = Hosts::new(3)?;
    let (h1, h2, h3) = (hosts.host(1), hosts.host(2), hosts.host(3));
    let (_l1, on1) = listen(h1)?;
    let (_l2, on2) = listen(h2)?;
    // A port nobody listens on: reachable hosts refuse it, which tells a refusal from a drop.
    let closed = SocketAddr::from((h2.addr(), on2.port().wrapping_add(1).max(1)));
    ensure!(connect(Some(h1), closed, REACH)? == Connect::Refused, "a closed port on a healthy link is refused");
    ensure!(reaches(Some(h1), on2)?, "host 1 reaches host 2 before any fault");
    ensure!(reaches(None, on2)?, "the client reaches host 2 before any fault");
    // An established connection from 1 to 2, to see a partition stop it and heal restart it.
    let (carrier, on_carrier) = listen(h2)?;
    let mut sender = h1.enter(move || TcpStream::connect_timeout(&on_carrier, REACH))??;
    let (mut receiver, _) = carrier.accept()?;
    receiver.set_read_timeout(Some(DROPPED))?;

    hosts.partition(1, &[2])?;
    ensure!(cut(Some(h1), on2)?, "host 1 still reaches host 2 across the partition");
    ensure!(cut(Some(h2), on1)?, "host 2 still reaches host 1 across the partition");
    ensure!(cut(Some(h1), closed)?, "a closed port across the partition answered: the packets are not dropped");
    ensure!(reaches(Some(h3), on2)? && reaches(Some(h3), on1)?, "host 3 lost a link it was not partitioned from");
    ensure!(reaches(None, on1)? && reaches(None, on2)?, "the client lost a link");
    sender.write_all(b"across")?;
    let mut buf = [0u8; 6];
    match receiver.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => bail!("a write on an established connection crossed the partition: {other:?}"),
    }

    hosts.heal(1)?;
    ensure!(reaches(Some(h1), on2)? && reaches(Some(h2), on1)?, "heal did not restore the link");
    // TCP retransmits what the partition dropped; the connection survives.
    receiver.set_read_timeout(Some(Duration::from_secs(10)))?;
    receiver.read_exact(&mut buf).context("the write dropped during the partition never arrived after heal")?;
    ensure!(&buf == b"across");
    ensure!(hosts.faults() == Some(Default::default()), "faults left after heal: {:?}", hosts.faults());
    Ok(())
}

/// A change that fails on one host (here, its namespace is gone) may have loaded the others:
/// the rules are then unknown, and the next change loads every host, so a heal never leaves a
/// drop behind on a host that did take the failed change.
#[test]
fn a_change_that_failed_part_way_is_healed_on_every_host() -> Result<()> {
    if !available("a_change_that_failed_part_way_is_healed_on_every_host") {
        return Ok(());
    }
    let hosts = Hosts::new(3)?;
    let (h1, h2, h3) = (hosts.host(1), hosts.host(2), hosts.host(3));
    let status = Command::new("ip").args(["netns", "del", h3.netns()]).status()?;
    ensure!(status.success(), "could not remove host 3's namespace");
    ensure!(hosts.partition(1, &[2, 3]).is_err(), "a change reaching a host without a namespace must fail");
    ensure!(hosts.faults().is_none(), "after a failed change the rules are unknown: {:?}", hosts.faults());
    let rules = |h: &Host| -> Result<String> {
        let out = h.command("iptables-save").output()?;
        ensure!(out.status.success(), "iptables-save on host {}: {}", h.index(), String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    ensure!(rules(h2)?.contains("DROP"), "host 2 took its part of the change: {}", rules(h2)?);
    // Host 3 is still gone, so the heal fails too; but it reached hosts 1 and 2.
    let _ = hosts.heal_all();
    for h in [h1, h2] {
        let now = rules(h)?;
        ensure!(!now.contains("DROP"), "host {} kept a drop after the heal: {now}", h.index());
    }
    Ok(())
}

#[test]
fn a_one_way_partition_drops_one_direction_only() -> Result<()> {
    if !available("a_one_way_partition_drops_one_direction_only") {
        return Ok(());
    }
    let hosts = Hosts::new(2)?;
    let (h1, h2) = (hosts.host(1), hosts.host(2));
    let bind = |h: &Host| -> Result<UdpSocket> {
        let addr = h.addr();
        let socket = h.enter(move || UdpSocket::bind((addr, 0)))??;
        socket.set_read_timeout(Some(DROPPED))?;
        Ok(socket)
    };
    let (u1, u2) = (bind(h1)?, bind(h2)?);
    let delivered = |from: &UdpSocket, to: &UdpSocket, what: &[u8]| -> Result<bool> {
        from.send_to(what, to.local_addr()?)?;
        let mut buf = [0u8; 64];
        match to.recv_from(&mut buf) {
            Ok((n, _)) => Ok(&buf[..n] == what),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
            Err(e) => Err(e.into()),
        }
    };
    ensure!(delivered(&u1, &u2, b"1to2 before")? && delivered(&u2, &u1, b"2to1 before")?, "no fault yet");

    hosts.partition_one_way(1, 2)?;
    ensure!(!delivered(&u1, &u2, b"1to2 during")?, "a datagram from 1 reached 2 across the one-way partition");
    ensure!(delivered(&u2, &u1, b"2to1 during")?, "the open direction, 2 to 1, was dropped too");
    // TCP needs both directions for its handshake, so it fails both ways, by timeout.
    let (_l1, on1) = listen(h1)?;
    let (_l2, on2) = listen(h2)?;
    ensure!(cut(Some(h1), on2)? && cut(Some(h2), on1)?, "a TCP handshake completed across a one-way partition");

    hosts.heal_all()?;
    ensure!(delivered(&u1, &u2, b"1to2 healed")?, "heal did not restore 1 to 2");
    ensure!(reaches(Some(h1), on2)?, "heal did not restore TCP");
    Ok(())
}

#[test]
fn a_black_hole_drops_everything_and_isolation_spares_the_client() -> Result<()> {
    if !available("a_black_hole_drops_everything_and_isolation_spares_the_client") {
        return Ok(());
    }
    let hosts = Hosts::new(3)?;
    let (h1, h2, h3) = (hosts.host(1), hosts.host(2), hosts.host(3));
    let (_l1, on1) = listen(h1)?;
    let (_l2, on2) = listen(h2)?;
    let (_l3, on3) = listen(h3)?;
    // The host's own processes keep talking to each other over its own address.
    let local_ok = |h: &Host, to: SocketAddr| -> Result<()> {
        ensure!(connect(Some(h), to, REACH)? == Connect::Connected, "{} cannot reach itself", name(Some(h)));
        Ok(())
    };

    hosts.black_hole(2)?;
    for (from, to) in [(Some(h1), on2), (Some(h3), on2), (None, on2), (Some(h2), on1), (Some(h2), on3)] {
        ensure!(cut(from, to)?, "{} reached {to} through the black hole", name(from));
    }
    ensure!(reaches(Some(h1), on3)? && reaches(None, on1)?, "the black hole cut links that do not touch host 2");
    local_ok(h2, on2)?;
    hosts.heal(2)?;
    ensure!(reaches(Some(h1), on2)? && reaches(None, on2)? && reaches(Some(h2), on3)?, "heal did not restore host 2");

    hosts.isolate(2)?;
    for (from, to) in [(Some(h1), on2), (Some(h3), on2), (Some(h2), on1), (Some(h2), on3)] {
        ensure!(cut(from, to)?, "{} reached {to} across the isolation", name(from));
    }
    ensure!(reaches(None, on2)?, "isolation cut the client off, which it must spare");
    ensure!(reaches(Some(h1), on3)?, "isolation cut hosts 1 and 3 apart");
    local_ok(h2, on2)?;
    hosts.heal_all()?;
    ensure!(reaches(Some(h3), on2)? && reaches(Some(h2), on1)?, "heal_all did not restore host 2");
    Ok(())
}

/// Two sets at once in one process: distinct subnets, and each one's faults are its own.
#[test]
fn concurrent_host_sets_get_their_own_subnets() -> Result<()> {
    if !available("concurrent_host_sets_get_their_own_subnets") {
        return Ok(());
    }
    let (one, two) = (Hosts::new(2)?, Hosts::new(2)?);
    ensure!(one.subnet() != two.subnet(), "two live sets share 10.213.{}.0/24", one.subnet());
    ensure!(one.host(1).netns() != two.host(1).netns());
    let (_l, on_one) = listen(one.host(2))?;
    let (_m, on_two) = listen(two.host(2))?;
    one.black_hole(2)?;
    ensure!(cut(None, on_one)?, "the black hole in the first set let the client through");
    ensure!(reaches(None, on_two)? && reaches(Some(two.host(1)), on_two)?, "a fault leaked into the other set");
    // A set's hosts have no route to another set's subnet: each switch is its own.
    let across = one.host(1).enter(move || TcpStream::connect_timeout(&on_two, DROPPED))?;
    ensure!(
        across.as_ref().is_err_and(|e| e.raw_os_error() == Some(nix::libc::ENETUNREACH)),
        "a host of one set reached another set's subnet: {across:?}"
    );
    Ok(())
}

/// Names of our namespaces and links that exist right now.
fn present(netns: &[String], link: &str) -> Result<Vec<String>> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    let list = String::from_utf8_lossy(&out.stdout);
    let mut found: Vec<String> = netns
        .iter()
        .filter(|n| list.lines().any(|l| l.split_whitespace().next() == Some(n.as_str())))
        .cloned()
        .collect();
    if std::path::Path::new("/sys/class/net").join(link).exists() {
        found.push(link.to_string());
    }
    Ok(found)
}

fn root_firewall() -> Result<String> {
    let out = Command::new("iptables-save").output().context("iptables-save")?;
    // Counters and the generation comment change by themselves; the rules must not.
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n"))
}

#[test]
fn teardown_leaves_no_namespace_link_or_rule_behind() -> Result<()> {
    if !available("teardown_leaves_no_namespace_link_or_rule_behind") {
        return Ok(());
    }
    let before = root_firewall()?;
    let hosts = Hosts::new(3)?;
    let (netns, link) = (hosts.netns_names(), hosts.client_link().to_string());
    ensure!(present(&netns, &link)?.len() == netns.len() + 1, "not everything was created: {netns:?} {link}");
    hosts.isolate(1)?;
    hosts.black_hole(3)?;
    hosts.partition_one_way(2, 1)?;
    drop(hosts);
    let left = present(&netns, &link)?;
    ensure!(left.is_empty(), "left behind after drop: {left:?}");
    ensure!(root_firewall()? == before, "the root namespace's firewall changed");
    Ok(())
}

#[test]
fn a_panicking_test_still_tears_down() -> Result<()> {
    if !available("a_panicking_test_still_tears_down") {
        return Ok(());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let hosts = Hosts::new(2).expect("creating hosts");
        hosts.partition(1, &[2]).expect("partitioning");
        tx.send((hosts.netns_names(), hosts.client_link().to_string())).expect("sending the names");
        panic!("a scenario fails with its hosts alive");
    })
    .join();
    ensure!(outcome.is_err(), "the thread was meant to panic");
    let (netns, link) = rx.recv_timeout(Duration::from_secs(1)).context("the names never came")?;
    let left = present(&netns, &link)?;
    ensure!(left.is_empty(), "left behind by a panicking test: {left:?}");
    Ok(())
}

/// Set in the child run of [`a_killed_test_process_is_cleaned_up_by_the_next_harness`].
const CHILD: &str = "REFEREE_HOSTS_KILLED_CHILD";
const TEST: &str = "a_killed_test_process_is_cleaned_up_by_the_next_harness";

/// The test binary runs this test again as a child, which creates hosts, prints their names
/// and waits; the parent kills it with SIGTERM (no destructor runs) and checks that the next
/// [`Hosts::new`] removes what it left.
#[test]
fn a_killed_test_process_is_cleaned_up_by_the_next_harness() -> Result<()> {
    if std::env::var_os(CHILD).is_some() {
        let hosts = Hosts::new(2)?;
        println!("hosts-ready {} {}", hosts.client_link(), hosts.netns_names().join(" "));
        std::io::stdout().flush()?;
        // Until killed, or until the parent goes away and closes our stdin.
        let _ = std::io::stdin().read(&mut [0u8; 1]);
        return Ok(());
    }
    if !available(TEST) {
        return Ok(());
    }
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running the test binary as the child")?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness prints the test's name on the same line, before ours.
            if let Some((_, names)) = line.split_once("hosts-ready ") {
                let _ = tx.send(names.to_string());
                return;
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    let alive_then = ready.as_ref().ok().map(|names| {
        let mut names: Vec<String> = names.split_whitespace().map(String::from).collect();
        let link = names.remove(0);
        (present(&names, &link), names, link)
    });
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let status = child.wait()?;
    let (alive_then, names, link) = alive_then.context("the child never reported its hosts")?;
    ensure!(alive_then?.len() == names.len() + 1, "the child's hosts were not all there while it ran");
    ensure!(!status.success(), "the child was meant to die of SIGTERM, not exit: {status}");
    // The child's hosts outlive it: nothing ran on SIGTERM. (A concurrent test's harness may
    // already have removed them; either way the next harness is what removes them.)
    let next = Hosts::new(1)?;
    let left = present(&names, &link)?;
    ensure!(left.is_empty(), "left behind by a killed test process after the next harness started: {left:?}");
    ensure!(present(&next.netns_names(), next.client_link())?.len() == 3, "the new harness is whole");
    Ok(())
}
