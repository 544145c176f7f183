//! `kill`, `shell` and level semantics, against real processes on this host.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::{alive, fencer, target};
use referee_fencing::procfs::{self, process_start_time};
use referee_fencing::{
    ConfigError, FenceOutcome, FenceTarget, Fencer, FencingToken, MethodKind, MethodOutcome, Readiness,
};
use referee_testkit::{free_port, skip, wait_until, within, ScratchDir};
use tokio::process::{Child, Command};

const HELPER_ENV: &str = "RFENCE_TEST_LISTEN_PORT";

/// Not a test of its own: when re-executed with `HELPER_ENV` set, this process becomes a
/// "master" that listens on that port until killed. Otherwise it returns at once.
#[test]
fn helper_listener() {
    let Ok(port) = std::env::var(HELPER_ENV) else {
        return;
    };
    let listener = std::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap())).expect("helper bind");
    loop {
        let _ = listener.accept();
    }
}

const SESSION_ENV: &str = "RFENCE_TEST_SERVE_ONE_SESSION_PORT";

/// Not a test of its own: when re-executed with `SESSION_ENV` set, this process becomes a
/// "master" that accepts one connection on that port, closes its listener, and serves that
/// session (an echo) until it ends or the process is killed: a server shutting down with
/// sessions open, or the session process of a process-per-connection server.
#[test]
fn helper_serve_one_session() {
    use std::io::{Read, Write};
    let Ok(port) = std::env::var(SESSION_ENV) else {
        return;
    };
    let listener = std::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap())).expect("helper bind");
    let (mut session, _) = listener.accept().expect("helper accept");
    drop(listener);
    let mut buf = [0u8; 64];
    while let Ok(n) = session.read(&mut buf) {
        if n == 0 || session.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

fn kill_yaml(find_by_port: bool, grace_ms: u64) -> String {
    format!(
        "overall_timeout_ms: 10000\nlevels:\n  - methods:\n      - kind: kill\n        timeout_ms: 5000\n        grace_ms: {grace_ms}\n        find_by_port: {find_by_port}\n"
    )
}

fn spawn(program: &str, args: &[&str]) -> Child {
    Command::new(program).args(args).stdin(Stdio::null()).kill_on_drop(true).spawn().expect("spawn")
}

async fn exec_done(pid: u32, comm: &str) {
    wait_until(Duration::from_secs(5), &format!("pid {pid} to exec {comm}"), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim() == comm).unwrap_or(false)
    })
    .await
    .unwrap();
}

fn only_outcome(report: &referee_fencing::FenceReport) -> &MethodOutcome {
    assert_eq!(report.events.len(), 1, "{report:#?}");
    &report.events[0].outcome
}

#[tokio::test]
async fn kill_terminates_the_recorded_process_with_sigterm() {
    let mut child = spawn("sleep", &["1000"]);
    let pid = child.id().unwrap();
    exec_done(pid, "sleep").await;
    let mut t = target("n1", "127.0.0.1", common::closed_port());
    t.pid = Some(pid);
    t.start_time = Some(process_start_time(pid).unwrap());

    // Checked first: the process is found the way a fence finds it, and left running.
    let check = fencer(&kill_yaml(false, 2000)).check(&t).await;
    let Readiness::Ready { detail } = &check.checks[0].readiness else { panic!("{check:#?}") };
    assert!(detail.contains(&format!("would signal pid {pid} (recorded pid)")), "{detail}");
    assert!(alive(pid), "the check signalled the master");
    // A target on another host cannot be killed from here, and the check says so.
    let check = fencer(&kill_yaml(false, 2000)).check(&target("n1", "db9.example", 1)).await;
    let Readiness::Problem { reason } = &check.checks[0].readiness else { panic!("{check:#?}") };
    assert!(reason.contains("is not this host"), "{reason}");

    let report = fencer(&kill_yaml(false, 2000)).fence(&t, FencingToken(8)).await;

    assert!(report.outcome.permits_promotion(), "{report:#?}");
    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!() };
    assert!(detail.contains("SIGTERM"), "{detail}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGTERM));
}

#[tokio::test]
async fn kill_escalates_to_sigkill_when_sigterm_is_ignored() {
    let mut child = spawn("/bin/sh", &["-c", "trap '' TERM; exec sleep 1000"]);
    let pid = child.id().unwrap();
    // The ignored disposition survives exec, so once `sleep` runs SIGTERM is ignored.
    exec_done(pid, "sleep").await;
    let mut t = target("n1", "localhost", common::closed_port());
    t.pid = Some(pid);
    t.start_time = Some(process_start_time(pid).unwrap());

    let started = Instant::now();
    let report = fencer(&kill_yaml(false, 400)).fence(&t, FencingToken(8)).await;

    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("SIGKILL"), "{detail}");
    assert!(started.elapsed() >= Duration::from_millis(400), "grace period respected");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
}

/// A level after a slow one gets what is left of the overall deadline, which may be less than
/// its grace: SIGTERM must then give way early enough for SIGKILL to end the master and its
/// exit to be seen before the deadline, or the fence could never succeed.
#[tokio::test]
async fn kill_keeps_time_for_sigkill_when_the_budget_is_cut_below_the_grace() {
    let mut child = spawn("/bin/sh", &["-c", "trap '' TERM; exec sleep 1000"]);
    let pid = child.id().unwrap();
    exec_done(pid, "sleep").await;
    let mut t = target("n1", "127.0.0.1", common::closed_port());
    t.pid = Some(pid);
    t.start_time = Some(process_start_time(pid).unwrap());
    // The race delay takes 1.5 s of the 3 s overall deadline, so the method's 2.5 s timeout is
    // cut to 1.5 s, under its 2 s grace.
    let yaml = "overall_timeout_ms: 3000\ndelay_ms: 1500\nlevels:\n  - methods:\n      - kind: kill\n        timeout_ms: 2500\n        grace_ms: 2000\n        find_by_port: false\n";

    let report = fencer(yaml).fence(&t, FencingToken(8)).await;

    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("exited after SIGKILL") && detail.contains("grace cut to"), "{detail}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
}

/// A stopped (SIGSTOPped, hung) master cannot act on SIGTERM until continued, so waiting out the
/// grace for it only delays the failover: it gets SIGKILL at once, and never SIGTERM.
#[tokio::test]
async fn kill_sends_a_stopped_master_sigkill_at_once() {
    let mut child = spawn("sleep", &["1000"]);
    let pid = child.id().unwrap();
    exec_done(pid, "sleep").await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGSTOP).unwrap();
    wait_until(Duration::from_secs(5), &format!("pid {pid} to stop"), || {
        procfs::read_stat(pid).ok().flatten().is_some_and(|s| s.state == 'T')
    })
    .await
    .unwrap();
    let mut t = target("n1", "127.0.0.1", common::closed_port());
    t.pid = Some(pid);
    t.start_time = Some(process_start_time(pid).unwrap());

    let report = fencer(&kill_yaml(false, 4000)).fence(&t, FencingToken(8)).await;

    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("stopped") && detail.contains("signals sent: SIGKILL"), "{detail}");
    assert!(!detail.contains("SIGTERM"), "a stopped master was sent SIGTERM: {detail}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
}

#[tokio::test]
async fn kill_never_signals_a_pid_reused_by_another_process() {
    // The target recorded pid P with start time S; the live process at P started at another
    // time, exactly what the kernel shows after the master died and P was handed to a new
    // process. The new process must survive, and the recorded master is known gone.
    let mut child = spawn("sleep", &["1000"]);
    let pid = child.id().unwrap();
    exec_done(pid, "sleep").await;
    let live_start = process_start_time(pid).unwrap();
    let mut t = target("n1", "127.0.0.1", common::closed_port());
    t.pid = Some(pid);
    t.start_time = Some(live_start.saturating_sub(1_000));

    let report = fencer(&kill_yaml(false, 200)).fence(&t, FencingToken(8)).await;

    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("belongs to another process"), "{detail}");
    assert!(alive(pid), "the process that reused the pid was signalled");
    assert!(child.try_wait().unwrap().is_none());
    child.kill().await.unwrap();
}

#[tokio::test]
async fn kill_refuses_a_bare_pid_without_a_start_time() {
    let mut child = spawn("sleep", &["1000"]);
    let pid = child.id().unwrap();
    let mut t = target("n1", "127.0.0.1", common::closed_port());
    t.pid = Some(pid);

    let report = fencer(&kill_yaml(false, 200)).fence(&t, FencingToken(8)).await;

    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("no recorded start time"), "{reason}");
    assert!(alive(pid));
    child.kill().await.unwrap();
}

/// Runs this test binary's `helper` test (told its port through `env`) as a process of its
/// own, and waits until it listens on `port`.
async fn spawn_listening_helper(helper: &str, env: &str, port: u16) -> (tokio::process::Child, u32) {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", helper, "--nocapture", "--test-threads=1"])
        .env(env, port.to_string())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    wait_until(Duration::from_secs(10), "the helper to listen", || {
        procfs::pids_listening_on(port).is_ok_and(|p| p.contains(&pid))
    })
    .await
    .unwrap();
    (child, pid)
}

#[tokio::test]
async fn kill_finds_the_master_by_its_listening_port() {
    let port = free_port().unwrap();
    let (mut child, _) = spawn_listening_helper("helper_listener", HELPER_ENV, port).await;
    // Only the port is known: no pid, no pidfile.
    let t = target("n1", "127.0.0.1", port);

    let report = fencer(&kill_yaml(true, 2000)).fence(&t, FencingToken(8)).await;

    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains(&format!("listener on port {port}")), "{detail}");
    child.wait().await.unwrap();
    assert!(procfs::pids_listening_on(port).unwrap().is_empty());
}

/// A master that has closed its listener but still serves an open session takes writes on it:
/// "nothing listens on the port" is no proof that nothing serves there. Whoever holds a TCP
/// socket on the port is ended, and the fence waits for none to be left.
#[tokio::test]
async fn kill_ends_a_process_serving_a_session_on_the_port_after_its_listener_closed() {
    use std::io::{Read, Write};
    let port = free_port().unwrap();
    let (mut child, pid) = spawn_listening_helper("helper_serve_one_session", SESSION_ENV, port).await;
    let mut session = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    session.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut echo = [0u8; 1];
    session.write_all(b"x").unwrap();
    session.read_exact(&mut echo).unwrap();
    wait_until(Duration::from_secs(5), "the helper to close its listener", || {
        procfs::pids_listening_on(port).is_ok_and(|p| p.is_empty())
    })
    .await
    .unwrap();
    // Only the port is known: no pid, no pidfile.
    let t = target("n1", "127.0.0.1", port);

    let report = fencer(&kill_yaml(true, 2000)).fence(&t, FencingToken(8)).await;

    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains(&format!("pid {pid} (")) && detail.contains("exited after SIGTERM"), "{detail}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGTERM));
    // The session is over: the master's end of it closed with the process.
    assert!(matches!(session.read(&mut echo), Ok(0) | Err(_)), "the session is still served");
}

#[tokio::test]
async fn kill_uses_the_pidfile_and_is_fenced_when_nothing_runs() {
    let dir = ScratchDir::new("pidfile").unwrap();
    let mut child = spawn("sleep", &["1000"]);
    let pid = child.id().unwrap();
    std::fs::write(dir.path("master.pid"), format!("{pid}\n")).unwrap();
    let mut t = target("n1", "127.0.0.1", common::closed_port());
    t.pidfile = Some(dir.path("master.pid"));
    let f = fencer(&kill_yaml(true, 2000));

    let report = f.fence(&t, FencingToken(8)).await;
    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("pidfile"), "{detail}");
    child.wait().await.unwrap();

    // Fencing again: the pidfile's pid is gone and nothing listens: positive evidence.
    let report = f.fence(&t, FencingToken(8)).await;
    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("not running"), "{detail}");
}

/// A forward step of the wall clock after the master started (NTP's first sync after boot, a
/// VM resumed) moves the kernel's boot time with it, so a live master reads as started after
/// its own pidfile was written, exactly as a process that reused the pid would. Neither reading
/// proves the master gone: the process is not signalled, and with nothing else known kill fails.
#[tokio::test]
async fn kill_does_not_take_a_clock_step_for_proof_that_the_master_is_gone() {
    let dir = ScratchDir::new("pidfile-clock-step").unwrap();
    let mut child = spawn("sleep", &["1000"]);
    let pid = child.id().unwrap();
    exec_done(pid, "sleep").await;
    let pidfile = dir.path("master.pid");
    std::fs::write(&pidfile, format!("{pid}\n")).unwrap();
    // Written 30 s before the process started, as it reads after the clock stepped 30 s forward.
    let file = std::fs::File::options().write(true).open(&pidfile).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(30)).unwrap();
    let mut t = target("n1", "127.0.0.1", common::closed_port());
    t.pidfile = Some(pidfile);

    let report = fencer(&kill_yaml(false, 200)).fence(&t, FencingToken(8)).await;

    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains(&format!("pidfile pid {pid}")) && reason.contains("clock"), "{reason}");
    assert!(alive(pid), "the pidfile's live process was signalled");
    assert!(child.try_wait().unwrap().is_none());
    child.kill().await.unwrap();
}

const ZOMBIE_LEADER_ENV: &str = "RFENCE_TEST_ZOMBIE_LEADER_PIDFILE";

/// Not a test of its own: when re-executed with `ZOMBIE_LEADER_ENV` set to a pidfile path, this
/// process forks a "master" whose main thread exits while a second thread runs on, as a server
/// whose main thread called `pthread_exit` does (`ps` shows `Zl`), writes its pid to the
/// pidfile and returns. The master ends itself after two minutes, should nothing kill it.
#[test]
fn helper_zombie_leader() {
    let Ok(pidfile) = std::env::var(ZOMBIE_LEADER_ENV) else {
        return;
    };
    extern "C" fn serve(_: *mut libc::c_void) -> *mut libc::c_void {
        let two_minutes = libc::timespec { tv_sec: 120, tv_nsec: 0 };
        // SAFETY: a valid timespec and a null remainder; _exit ends the whole thread group.
        unsafe {
            libc::nanosleep(&two_minutes, std::ptr::null_mut());
            libc::_exit(0)
        }
    }
    // SAFETY: the child makes raw calls only: it starts the thread that lives on, then ends
    // its own (the leader) with the bare exit system call, which unwinds nothing.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            let mut thread: libc::pthread_t = 0;
            if libc::pthread_create(&mut thread, std::ptr::null(), serve, std::ptr::null_mut()) != 0 {
                libc::_exit(1);
            }
            libc::syscall(libc::SYS_exit, 0);
        }
    }
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    std::fs::write(&pidfile, format!("{pid}\n")).unwrap();
}

/// Sends SIGKILL through a pidfd when dropped, so a test that fails leaves none of its
/// processes behind and cannot reach a later process that reused the pid.
struct KillOnDrop(std::os::fd::OwnedFd);

impl KillOnDrop {
    fn new(pid: u32) -> KillOnDrop {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        assert!(fd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd that nothing else owns.
        KillOnDrop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid pidfd, a valid signal, a null siginfo and no flags; ESRCH (gone) is fine.
        unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.0.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0)
        };
    }
}

/// A master whose main thread has exited while its other threads serve reads as a zombie in
/// `/proc/<pid>/stat`, but it has not exited: kill must signal it, not take it for gone.
#[tokio::test]
async fn kill_does_not_take_a_zombie_leader_with_running_threads_for_an_exited_master() {
    let dir = ScratchDir::new("zombie-leader").unwrap();
    let pidfile = dir.path("master.pid");
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_zombie_leader", "--nocapture", "--test-threads=1"])
        .env(ZOMBIE_LEADER_ENV, &pidfile)
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let _cleanup = KillOnDrop::new(pid);
    let threads = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    wait_until(Duration::from_secs(5), &format!("pid {pid} to be a zombie leader with a live thread"), || {
        procfs::read_stat(pid).ok().flatten().is_some_and(|s| s.state == 'Z') && threads(pid) == 2
    })
    .await
    .unwrap();
    let mut t = target("n1", "127.0.0.1", common::closed_port());
    t.pidfile = Some(pidfile);

    let report = fencer(&kill_yaml(false, 2000)).fence(&t, FencingToken(8)).await;

    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains(&format!("pid {pid} (pidfile")) && detail.contains("exited after SIGTERM"), "{detail}");
    assert!(!alive(pid), "the master's thread still runs");
}

const AS_NOBODY_ENV: &str = "RFENCE_TEST_FENCE_AS_NOBODY";

/// The unprivileged user the fencer runs as in the restricted-view tests.
const NOBODY: libc::uid_t = 65534;

/// Not a test of its own: when re-executed with `AS_NOBODY_ENV` set to a JSON `(target,
/// find_by_port)`, this process fences the target with `kill` and prints the method outcome as
/// `OUTCOME: {json}` (after the harness's "test ... " on the same line). [`fence_as_nobody`]
/// runs it under another user's view of `/proc`.
#[test]
fn helper_fence_as_nobody() {
    let Ok(spec) = std::env::var(AS_NOBODY_ENV) else {
        return;
    };
    let (t, find_by_port): (FenceTarget, bool) = serde_json::from_str(&spec).expect("helper spec");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = runtime.block_on(fencer(&kill_yaml(find_by_port, 200)).fence(&t, FencingToken(8)));
    println!("OUTCOME: {}", serde_json::to_string(only_outcome(&report)).unwrap());
}

/// Runs [`helper_fence_as_nobody`] as uid and gid [`NOBODY`] (so it cannot read root's
/// `/proc/<pid>/fd`), and with `hidepid`, in a mount namespace of its own where `/proc` is
/// mounted `hidepid=2` (root's processes are not even listed). Returns the outcome's kind
/// (`fenced`, `failed`, `indeterminate`) and its sentence, or `None` once it skipped loudly.
async fn fence_as_nobody(test: &str, t: &FenceTarget, find_by_port: bool, hidepid: bool) -> Option<(String, String)> {
    if !common::require(test, true, &[], "root (to run the fencer as another user)") {
        return None;
    }
    // A copy of this test binary where the other user may run it: the build directory may
    // sit under a directory only root may enter.
    let copy = ScratchDir::new("fence-as-nobody").unwrap();
    let exe = copy.install(&std::env::current_exe().unwrap(), "local_methods").unwrap();
    let mut command = Command::new(&exe);
    command
        .args(["--exact", "helper_fence_as_nobody", "--nocapture", "--test-threads=1"])
        .env(AS_NOBODY_ENV, serde_json::to_string(&(t, find_by_port)).unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure makes only raw system calls, which are safe after fork.
    unsafe { command.pre_exec(move || become_nobody(hidepid)) };
    let output = match within("the fencer running as nobody", command.output()).await.unwrap() {
        Ok(output) => output,
        Err(e) => {
            let view = if hidepid { " with /proc mounted hidepid=2" } else { "" };
            skip(test, &format!("cannot run this test binary as uid {NOBODY}{view}: {e}"));
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.split_once("OUTCOME: ").map(|(_, json)| json)) else {
        panic!("the helper printed no outcome: {output:?}");
    };
    let outcome: serde_json::Value = serde_json::from_str(line).unwrap();
    let kind = outcome["outcome"].as_str().unwrap().to_string();
    let sentence = outcome.get("detail").or(outcome.get("reason")).and_then(|s| s.as_str()).unwrap().to_string();
    Some((kind, sentence))
}

/// Drops to [`NOBODY`], first remounting `/proc` with `hidepid=2` in a new mount namespace
/// when `hidepid`. Runs between fork and exec: raw system calls only.
fn become_nobody(hidepid: bool) -> std::io::Result<()> {
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: plain system calls with valid NUL-terminated strings or null pointers.
    unsafe {
        if hidepid {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Private first, so the new /proc mount does not propagate to the host's namespace.
            let null = std::ptr::null();
            check(libc::mount(null, c"/".as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            check(libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), 0, c"hidepid=2".as_ptr().cast()))?;
        }
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setgid(NOBODY))?;
        check(libc::setuid(NOBODY))?;
    }
    Ok(())
}

/// A fencer that may not read the master's `/proc/<pid>/fd` (another user's process, or one
/// `/proc` hides) sees a socket listening on the port with no process behind it. That is not
/// "nothing listens": kill must not fence on it, and must say how to give it the view it needs.
#[tokio::test]
async fn kill_does_not_take_a_listener_it_cannot_attribute_for_a_free_port() {
    // The listener is this test process, which runs as root.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = target("n1", "127.0.0.1", port);
    for hidepid in [false, true] {
        let test = format!("kill as nobody, hidepid {hidepid}");
        let Some((kind, sentence)) = fence_as_nobody(&test, &t, true, hidepid).await else {
            continue;
        };
        assert_eq!(kind, "failed", "hidepid {hidepid}: {sentence}");
        assert!(
            sentence.contains(&format!("port {port}")) && sentence.contains("run the agent as root"),
            "hidepid {hidepid}: {sentence}"
        );
    }
    drop(listener);
}

/// With `/proc` mounted `hidepid=2`, another user's live master has no `/proc/<pid>`: that is
/// not proof it exited. `kill(pid, 0)` tells a gone pid (ESRCH) from a hidden one (EPERM).
#[tokio::test]
async fn kill_does_not_take_a_hidden_master_for_a_dead_one() {
    let dir = ScratchDir::new("pidfile-hidden").unwrap();
    let mut child = spawn("sleep", &["1000"]);
    let pid = child.id().unwrap();
    exec_done(pid, "sleep").await;
    std::fs::write(dir.path("master.pid"), format!("{pid}\n")).unwrap();
    let mut t = target("n1", "127.0.0.1", common::closed_port());
    t.pidfile = Some(dir.path("master.pid"));
    t.pid = Some(pid);
    t.start_time = Some(process_start_time(pid).unwrap());
    // With the port searched too, "nothing listens on the port" is true but must not
    // outweigh a live process that may be the master.
    for find_by_port in [false, true] {
        let test = format!("kill under hidepid, find_by_port {find_by_port}");
        let Some((kind, sentence)) = fence_as_nobody(&test, &t, find_by_port, true).await else {
            break;
        };
        assert_eq!(kind, "failed", "find_by_port {find_by_port}: {sentence}");
        assert!(
            sentence.contains(&format!("pidfile pid {pid} exists"))
                && sentence.contains(&format!("recorded pid {pid} exists")),
            "find_by_port {find_by_port}: {sentence}"
        );
    }
    assert!(alive(pid), "the hidden master was signalled");
    assert!(child.try_wait().unwrap().is_none());
    child.kill().await.unwrap();
}

#[tokio::test]
async fn kill_refuses_targets_on_other_hosts_and_targets_it_cannot_identify() {
    let f = fencer(&kill_yaml(false, 200));
    let report = f.fence(&target("n1", "db9.example.invalid", 5432), FencingToken(8)).await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("not this host"), "{reason}");

    // Local, but no pid, no pidfile and port search disabled: no evidence either way.
    let report = f.fence(&target("n1", "127.0.0.1", 5432), FencingToken(8)).await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("cannot identify"), "{reason}");
}

/// Opening a FIFO for reading blocks until a writer comes, as reading a file on a hung mount
/// blocks: a pidfile path that is one must neither hold the method past its deadline nor stall
/// the runtime, and is refused as not a regular file. Should the fence block in it anyway, a
/// writer opens the FIFO after three seconds and lets it go, so the test fails rather than hangs.
#[tokio::test]
async fn kill_with_a_fifo_for_a_pidfile_ends_by_its_deadline() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = ScratchDir::new("fifo-pidfile").unwrap();
    let fifo = dir.path("master.pid");
    let path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and a mode.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
    let done = Arc::new(AtomicBool::new(false));
    let rescue = std::thread::spawn({
        let (fifo, done) = (fifo.clone(), done.clone());
        move || {
            let from = Instant::now() + Duration::from_secs(3);
            while !done.load(Ordering::SeqCst) {
                // A reader blocked in open() counts as one, so a non-blocking writer gets in
                // and, closing at once, gives it end of file; with no reader it is refused.
                if Instant::now() >= from {
                    let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let f = fencer(
        "overall_timeout_ms: 2000\nlevels:\n  - methods:\n      - kind: kill\n        timeout_ms: 300\n        grace_ms: 0\n        find_by_port: false\n",
    );
    let mut t = target("n1", "127.0.0.1", 5432);
    t.pidfile = Some(fifo.clone());
    let started = Instant::now();
    let report = f.fence(&t, FencingToken(8)).await;
    let elapsed = started.elapsed();
    let check = f.check(&t).await;
    done.store(true, Ordering::SeqCst);
    rescue.join().unwrap();
    // Five times the method's 300 ms and half the 3 s after which the rescue opens the FIFO:
    // the bound catches an open that blocks until a writer comes, not a slow machine.
    assert!(elapsed < Duration::from_millis(1500), "the fence took {elapsed:?}: {report:#?}");
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("is a FIFO, not a regular file"), "{reason}");
    let Readiness::Problem { reason } = &check.checks[0].readiness else { panic!("{check:#?}") };
    assert!(reason.contains("is a FIFO, not a regular file"), "{reason}");
}

fn shell_yaml(program: &std::path::Path, args: &[&str], timeout_ms: u64) -> String {
    format!(
        "overall_timeout_ms: 10000\nlevels:\n  - methods:\n      - kind: shell\n        timeout_ms: {timeout_ms}\n        program: {}\n        args: {}\n        env: {{EXTRA: configured}}\n",
        program.display(),
        serde_json::to_string(args).unwrap()
    )
}

#[tokio::test]
async fn shell_exit_zero_fences_with_target_facts_in_the_environment_only() {
    let dir = ScratchDir::new("shell-ok").unwrap();
    let out = dir.path("env.out");
    let marker = dir.path("pwned");
    let script = dir.script(
        "fence.sh",
        "#!/bin/sh\nprintf '%s\\n' \"$TARGET_ID\" \"$TARGET_HOST\" \"$TARGET_PORT\" \"$TARGET_PID\" \"$TARGET_PIDFILE\" \"$TARGET_TOKEN\" \"$FENCE_TOKEN\" \"$EXTRA\" \"$1\" > \"$2\"\n",
    ).unwrap();
    let out_arg = out.to_str().unwrap();
    // A hostile node id and host: they must arrive verbatim and never be executed.
    let hostile_id = format!("n1$(touch {})", marker.display());
    let mut t = target(&hostile_id, "h; touch /nonexistent-dir/x", 6000);
    t.pid = Some(4242);
    t.pidfile = Some("/run/db/master.pid".into());

    let report = fencer(&shell_yaml(&script, &["arg one", out_arg], 5000)).fence(&t, FencingToken(9)).await;

    assert!(report.outcome.permits_promotion(), "{report:#?}");
    let lines: Vec<String> = std::fs::read_to_string(&out).unwrap().lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            hostile_id.as_str(),
            "h; touch /nonexistent-dir/x",
            "6000",
            "4242",
            "/run/db/master.pid",
            "7",
            "9",
            "configured",
            "arg one"
        ]
    );
    assert!(!marker.exists(), "a target fact was interpreted by a shell");
}

#[tokio::test]
async fn shell_non_zero_exit_fails_with_its_stderr() {
    let dir = ScratchDir::new("shell-fail").unwrap();
    let script = dir.script("fence.sh", "#!/bin/sh\necho 'outlet busy' >&2\nexit 3\n").unwrap();
    let report = fencer(&shell_yaml(&script, &[], 5000)).fence(&target("n1", "h", 1), FencingToken(9)).await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("exited 3: outlet busy"), "{reason}");
    assert!(matches!(report.outcome, FenceOutcome::Failed { .. }));
}

/// A program killed by a signal it did not get from the fencer (the OOM killer, an operator)
/// may have acted before it died: indeterminate, never "definitely did not fence".
#[tokio::test]
async fn shell_killed_by_a_signal_of_its_own_is_indeterminate() {
    let dir = ScratchDir::new("shell-signalled").unwrap();
    let script = dir.script("fence.sh", "#!/bin/sh\necho 'outlet switched' >&2\nkill -KILL $$\n").unwrap();
    let report = fencer(&shell_yaml(&script, &[], 5000)).fence(&target("n1", "h", 1), FencingToken(9)).await;
    let MethodOutcome::Indeterminate { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("terminated by signal 9: outlet switched"), "{reason}");
}

#[tokio::test]
async fn shell_hanging_script_is_cut_off_and_its_whole_group_killed() {
    let dir = ScratchDir::new("shell-hang").unwrap();
    let script =
        dir.script("fence.sh", "#!/bin/sh\nsleep 1000 &\necho $! > \"$1\"\necho $$ > \"$2\"\nsleep 1000\n").unwrap();
    let (bg, leader) = (dir.path("bg.pid"), dir.path("leader.pid"));
    let started = Instant::now();
    let report = fencer(&shell_yaml(&script, &[bg.to_str().unwrap(), leader.to_str().unwrap()], 700))
        .fence(&target("n1", "h", 1), FencingToken(9))
        .await;
    let elapsed = started.elapsed();

    let MethodOutcome::Indeterminate { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("process group was killed"), "{reason}");
    assert!(elapsed >= Duration::from_millis(700));
    assert!(elapsed < Duration::from_millis(700) + Duration::from_millis(1500), "{elapsed:?}");
    let read_pid = |p: &std::path::Path| -> u32 { std::fs::read_to_string(p).unwrap().trim().parse().unwrap() };
    let (bg_pid, pgid) = (read_pid(&bg), read_pid(&leader));
    wait_until(Duration::from_secs(5), "the script's process group to be gone", || {
        procfs::live_members_of_group(pgid as i32).unwrap().is_empty()
    })
    .await
    .unwrap();
    assert!(!alive(bg_pid));
}

#[tokio::test]
async fn shell_background_children_do_not_outlive_a_successful_run() {
    let dir = ScratchDir::new("shell-bg").unwrap();
    let script = dir.script("fence.sh", "#!/bin/sh\nsleep 1000 &\necho $! > \"$1\"\nexit 0\n").unwrap();
    let bg = dir.path("bg.pid");
    let report =
        fencer(&shell_yaml(&script, &[bg.to_str().unwrap()], 5000)).fence(&target("n1", "h", 1), FencingToken(9)).await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
    let bg_pid: u32 = std::fs::read_to_string(&bg).unwrap().trim().parse().unwrap();
    wait_until(Duration::from_secs(5), "the background child to be gone", || !alive(bg_pid)).await.unwrap();
}

/// A shell method running `/bin/sh -c <script>` (the script is configuration, not target data).
fn sh(name: &str, script: &str, timeout_ms: u64) -> String {
    format!(
        "      - kind: shell\n        name: {name}\n        timeout_ms: {timeout_ms}\n        program: /bin/sh\n        args: [\"-c\", {}]\n",
        serde_json::to_string(script).unwrap()
    )
}

fn levels_yaml(overall_ms: u64, extra: &str, levels: &[Vec<String>]) -> String {
    let mut yaml = format!("overall_timeout_ms: {overall_ms}\n{extra}levels:\n");
    for level in levels {
        yaml.push_str("  - methods:\n");
        for method in level {
            yaml.push_str(method);
        }
    }
    yaml
}

fn trail(report: &referee_fencing::FenceReport) -> Vec<(usize, String, &'static str)> {
    report
        .events
        .iter()
        .map(|e| {
            assert_eq!(e.kind, MethodKind::Shell);
            assert_eq!(e.target, "n1");
            let o = match e.outcome {
                MethodOutcome::Fenced { .. } => "fenced",
                MethodOutcome::Failed { .. } => "failed",
                MethodOutcome::Indeterminate { .. } => "indeterminate",
            };
            (e.level, e.method.clone(), o)
        })
        .collect()
}

#[tokio::test]
async fn levels_need_all_their_methods_and_fall_through_in_order() {
    let yaml = levels_yaml(
        10000,
        "",
        &[
            vec![sh("a-ok", "exit 0", 2000), sh("b-fails", "exit 1", 2000), sh("c-skipped", "exit 0", 2000)],
            vec![sh("d-fails", "exit 2", 2000)],
            vec![sh("e-ok", "exit 0", 2000), sh("f-ok", "exit 0", 2000)],
            vec![sh("g-never", "exit 0", 2000)],
        ],
    );
    let report = fencer(&yaml).fence(&target("n1", "h", 1), FencingToken(9)).await;
    assert_eq!(report.outcome, FenceOutcome::Fenced { level: 2, methods: vec!["e-ok".into(), "f-ok".into()] });
    assert_eq!(
        trail(&report),
        [
            (0, "a-ok".to_string(), "fenced"),
            (0, "b-fails".to_string(), "failed"),
            (1, "d-fails".to_string(), "failed"),
            (2, "e-ok".to_string(), "fenced"),
            (2, "f-ok".to_string(), "fenced"),
        ]
    );
    // Events are in time order and carry durations.
    for pair in report.events.windows(2) {
        assert!(pair[0].started_at <= pair[1].started_at);
    }
}

#[tokio::test]
async fn an_indeterminate_level_makes_an_unfenced_result_indeterminate() {
    let yaml = levels_yaml(10000, "", &[vec![sh("hangs", "sleep 30", 300)], vec![sh("fails", "exit 1", 2000)]]);
    let report = fencer(&yaml).fence(&target("n1", "h", 1), FencingToken(9)).await;
    assert!(matches!(report.outcome, FenceOutcome::Indeterminate { .. }), "{report:#?}");
    assert!(!report.outcome.permits_promotion());
    assert_eq!(trail(&report), [(0, "hangs".to_string(), "indeterminate"), (1, "fails".to_string(), "failed")]);
    let yaml = levels_yaml(10000, "", &[vec![sh("fails", "exit 1", 2000)]]);
    let report = fencer(&yaml).fence(&target("n1", "h", 1), FencingToken(9)).await;
    assert!(matches!(report.outcome, FenceOutcome::Failed { .. }), "{report:#?}");
}

#[tokio::test]
async fn the_overall_deadline_cuts_a_hanging_method_and_skips_later_levels() {
    let yaml = levels_yaml(900, "", &[vec![sh("hangs", "sleep 30", 900)], vec![sh("would-fence", "exit 0", 500)]]);
    let started = Instant::now();
    let report = fencer(&yaml).fence(&target("n1", "h", 1), FencingToken(9)).await;
    let elapsed = started.elapsed();
    let FenceOutcome::Indeterminate { reason } = &report.outcome else { panic!("{report:#?}") };
    assert!(reason.contains("overall deadline of 900 ms"), "{reason}");
    assert_eq!(trail(&report), [(0, "hangs".to_string(), "indeterminate")]);
    assert!(elapsed < Duration::from_millis(900) + Duration::from_millis(1000), "{elapsed:?}");
}

#[tokio::test]
async fn the_race_delay_runs_before_the_first_level_for_that_node_only() {
    let yaml = levels_yaml(5000, "delay_ms: 0\nnode_delay_ms: {n1: 400}\n", &[vec![sh("ok", "exit 0", 1000)]]);
    let f = fencer(&yaml);
    let before = std::time::SystemTime::now();
    let report = f.fence(&target("n1", "h", 1), FencingToken(9)).await;
    let waited = report.events[0].started_at.duration_since(before).unwrap();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    let before = std::time::SystemTime::now();
    let report = f.fence(&target("n2", "h", 1), FencingToken(9)).await;
    let waited = report.events[0].started_at.duration_since(before).unwrap();
    assert!(waited < Duration::from_millis(400), "{waited:?}");
}

#[test]
fn configuration_errors_are_refused_at_load() {
    assert!(matches!(Fencer::from_yaml_str(""), Err(ConfigError::Empty)));
    let e = Fencer::from_yaml_str(
        "overall_timeout_ms: 1000\nlevels:\n  - methods:\n      - kind: agent\n        timeout_ms: 500\n        peers: {n1: 'http://127.0.0.1:1'}\n        secret_file: /nonexistent/peer_secret\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("fencing level 0, method 0 (agent): field `secret_file`: cannot read"), "{e}");
    let e = Fencer::from_yaml_str(
        "overall_timeout_ms: 1000\nlevels:\n  - methods:\n      - kind: kill\n        timeout_ms: 500\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("method 0 (kill): missing field `grace_ms`"), "{e}");
}
