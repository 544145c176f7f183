//! Self-fencing through a watchdog: kept fed only while the agent's decision loop runs and its
//! health monitor is alive, so a hung agent on an active host gets the host reset (or, with
//! systemd, the agent restarted) before its master can outlive its lease unnoticed.
//!
//! Two kinds: systemd's `WatchdogSec=` through `sd_notify` (`READY=1` once, then `WATCHDOG=1`),
//! and the Linux watchdog device (`/dev/watchdog`: any write feeds it; writing `V` before
//! closing disarms it on a clean stop).
//!
//! With `self_fence`, the device is also a fencing method for the other nodes (SBD's
//! watchdog-only mode): the agent promises, in the breadcrumb it writes before promoting, that
//! its host resets within the device's timeout once its lock is gone while its master may be
//! active, and keeps the promise by feeding the device only while [`feed_verdict`] allows it:
//! while it holds the lock under a lease still running, or while it knows its master is not
//! active (read not active since the agent started, and not promoted since). The device is
//! opened (armed) the first time that holds, at the latest before the first promotion, so a
//! host whose master is down at boot is not reset for it; after that it stays open.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tracing::{error, info, warn};

use crate::clock::BootInstant;

/// `watchdog:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum WatchdogConfig {
    /// No watchdog. (The variants without settings are empty structs, not unit variants:
    /// serde lets an internally tagged unit variant take any other key unremarked, and a
    /// misspelt key must be refused.)
    Off {},
    /// systemd's watchdog: the unit sets `Type=notify` and `WatchdogSec=`; the socket and
    /// interval come from `NOTIFY_SOCKET` and `WATCHDOG_USEC`.
    Systemd {},
    /// The Linux watchdog device.
    Device {
        /// Its path, usually `/dev/watchdog`.
        path: PathBuf,
        /// The device's timeout, set when it is opened (`WDIOC_SETTIMEOUT`, whole seconds) and
        /// read back; the kernel driver's own default when absent. Required with `self_fence`.
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// Promise the other nodes a reset of this host within `timeout_ms` once this node's
        /// lock is gone while its master may be active, for their `watchdog` fencing method.
        #[serde(default)]
        self_fence: bool,
    },
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig::Off {}
    }
}

impl WatchdogConfig {
    /// The promise this node publishes in its breadcrumb, if it makes one.
    pub fn self_fence_ms(&self) -> Option<u64> {
        match self {
            WatchdogConfig::Device { timeout_ms: Some(ms), self_fence: true, .. } => Some(*ms),
            _ => None,
        }
    }

    /// Checks the settings against the decision loop's interval, which feeds the device; an
    /// error names the key and the problem.
    pub fn validate(&self, loop_interval_ms: u64) -> Result<(), (&'static str, String)> {
        const KEY: &str = "watchdog.timeout_ms";
        let WatchdogConfig::Device { timeout_ms, self_fence, .. } = self else { return Ok(()) };
        match (timeout_ms, self_fence) {
            (None, true) => {
                Err((KEY, "is required with self_fence (the reset time promised to the other nodes)".into()))
            }
            (Some(ms), _) if *ms == 0 || ms % 1000 != 0 => Err((
                KEY,
                format!(
                    "{ms} is not a whole number of seconds above 0 (the kernel sets a watchdog's timeout in seconds)"
                ),
            )),
            (Some(ms), _) if *ms < 4 * loop_interval_ms.max(500) => Err((
                KEY,
                format!(
                    "{ms} ms is less than four decision cycles (election.loop_interval_ms {loop_interval_ms}, at least \
                     500 ms counted): a slow cycle would reset a healthy host; raise it"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// What the decision loop knows when it would feed the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedFacts {
    /// The health monitor has checked the master recently.
    pub monitor_alive: bool,
    /// This node holds the lock (as last read) under a lease that is still running.
    pub authority: bool,
    /// The master may be active: promoted by this agent, or seen active, and not seen to step
    /// down since.
    pub master_may_be_active: bool,
    /// The master has answered since the agent started.
    pub master_read: bool,
}

/// Why the watchdog is not fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Starve {
    /// The health monitor has not checked the master for too long.
    MonitorStuck,
    /// The master may be active and this node holds no lock under a running lease.
    NoAuthority,
    /// The master has not answered since the agent started: it may be active from before.
    MasterUnread,
}

impl std::fmt::Display for Starve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Starve::MonitorStuck => "the health monitor has not checked the master for too long",
            Starve::NoAuthority => "the master may be active and this node holds no lock under a running lease",
            Starve::MasterUnread => {
                "the master has not answered since the agent started, so it may be active from before"
            }
        })
    }
}

/// The feeding rule. Without self-fencing, a live monitor is enough. With it, the device is
/// fed only while this node may let its master be active (authority), or knows it is not.
pub fn feed_verdict(self_fence: bool, f: FeedFacts) -> Result<(), Starve> {
    if !f.monitor_alive {
        return Err(Starve::MonitorStuck);
    }
    if !self_fence || f.authority {
        return Ok(());
    }
    if f.master_may_be_active {
        Err(Starve::NoAuthority)
    } else if !f.master_read {
        Err(Starve::MasterUnread)
    } else {
        Ok(())
    }
}

/// Where feeds go.
enum Sink {
    Off,
    Notify {
        socket: UnixDatagram,
        path: PathBuf,
        every: Option<Duration>,
        ready_sent: bool,
    },
    /// The device: open from the start, or (self-fencing) from the first time it may be fed.
    Device {
        path: PathBuf,
        timeout_ms: Option<u64>,
        file: Option<std::fs::File>,
    },
}

/// A watchdog fed by the decision loop.
pub struct Watchdog {
    sink: Sink,
    last_feed: Option<BootInstant>,
    /// The promise made to the other nodes (self-fencing), in milliseconds.
    promise_ms: Option<u64>,
    /// Why it is not fed now, if it is not.
    starving: Option<Starve>,
    /// The last feed's failure, logged once until it changes or feeding works again.
    failing: Option<String>,
}

/// The Linux watchdog interface's timeout requests (`linux/watchdog.h`).
mod wdioc {
    nix::ioctl_readwrite!(set_timeout, b'W', 6, std::ffi::c_int);
    nix::ioctl_read!(get_timeout, b'W', 7, std::ffi::c_int);
}

/// Opens the device and gives it `timeout_ms` (in whole seconds), checking what it took.
///
/// A file that takes no watchdog requests (not a watchdog device) is used as it is, with a
/// warning: what reads it must then reset the host within the promise. A device that keeps a
/// longer timeout than asked is refused, since the promise would be false.
fn open_device(path: &std::path::Path, timeout_ms: Option<u64>) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let Some(ms) = timeout_ms else { return Ok(file) };
    let fd = file.as_raw_fd();
    let mut secs = std::ffi::c_int::try_from(ms.div_ceil(1000)).unwrap_or(std::ffi::c_int::MAX);
    // SAFETY: `fd` is open for the call and the argument is a valid `c_int` the kernel reads
    // and writes, as WDIOC_SETTIMEOUT and WDIOC_GETTIMEOUT define.
    let set = unsafe { wdioc::set_timeout(fd, &mut secs) };
    let mut got: std::ffi::c_int = 0;
    // SAFETY: as above.
    let read = unsafe { wdioc::get_timeout(fd, &mut got) };
    match (set, read) {
        (_, Ok(_)) if i64::from(got) * 1000 > ms as i64 => {
            // Disarm it: it is opened only when it may be fed, so no promise rests on it now.
            let mut file = file;
            let _ = file.write_all(b"V");
            Err(std::io::Error::other(format!(
                "the device keeps a timeout of {got} s, longer than watchdog.timeout_ms {ms}: set timeout_ms to \
                 {} or configure the device's driver (its `timeout` or `soft_margin` module parameter)",
                i64::from(got) * 1000
            )))
        }
        (_, Ok(_)) => Ok(file),
        (Err(nix::errno::Errno::ENOTTY), Err(_)) => {
            warn!(
                path = %path.display(),
                "watchdog: this file takes no watchdog requests (not a watchdog device), so its timeout cannot be set or \
                 read: whatever reads it must reset the host within watchdog.timeout_ms ({ms} ms)"
            );
            Ok(file)
        }
        (Err(e), Err(_)) => {
            Err(std::io::Error::other(format!("the device refused WDIOC_SETTIMEOUT and WDIOC_GETTIMEOUT: {e}")))
        }
        (Ok(_), Err(e)) => Err(std::io::Error::other(format!("the device refused WDIOC_GETTIMEOUT: {e}"))),
    }
}

/// An error about the device, naming it and what to do.
fn named(path: &std::path::Path, e: std::io::Error) -> std::io::Error {
    let hint = if e.kind() == std::io::ErrorKind::NotFound {
        ": load a watchdog driver (`modprobe softdog` where there is no hardware one) or fix watchdog.path"
    } else {
        ""
    };
    std::io::Error::new(e.kind(), format!("{}: {e}{hint}", path.display()))
}

impl Watchdog {
    /// Opens the watchdog. For systemd, `notify_socket` and `watchdog_usec` are the values of
    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC` (read by the binary); without a socket, systemd did
    /// not ask for notifications and the watchdog stays off. A self-fencing device is only
    /// looked at here: it is opened, and so armed, the first time it may be fed.
    pub fn open(
        config: &WatchdogConfig,
        notify_socket: Option<PathBuf>,
        watchdog_usec: Option<u64>,
    ) -> std::io::Result<Self> {
        let sink = match config {
            WatchdogConfig::Off {} => Sink::Off,
            WatchdogConfig::Systemd {} => match notify_socket {
                None => {
                    warn!("watchdog: systemd mode, but NOTIFY_SOCKET is not set (not run by systemd with Type=notify)");
                    Sink::Off
                }
                Some(path) => Sink::Notify {
                    socket: UnixDatagram::unbound()?,
                    path,
                    // Feed at half the interval systemd expects.
                    every: watchdog_usec.map(|us| Duration::from_micros(us) / 2),
                    ready_sent: false,
                },
            },
            WatchdogConfig::Device { path, timeout_ms, self_fence: true } => {
                std::fs::metadata(path).map_err(|e| named(path, e))?;
                Sink::Device { path: path.clone(), timeout_ms: *timeout_ms, file: None }
            }
            WatchdogConfig::Device { path, timeout_ms, self_fence: false } => Sink::Device {
                path: path.clone(),
                timeout_ms: *timeout_ms,
                file: Some(open_device(path, *timeout_ms).map_err(|e| named(path, e))?),
            },
        };
        Ok(Watchdog { sink, last_feed: None, promise_ms: config.self_fence_ms(), starving: None, failing: None })
    }

    /// The reset time promised to the other nodes, if this node self-fences.
    pub fn promise_ms(&self) -> Option<u64> {
        self.promise_ms
    }

    /// Whether the device is open (and so armed).
    pub fn armed(&self) -> bool {
        matches!(self.sink, Sink::Device { file: Some(_), .. })
    }

    /// Why it is not fed now, if it is not.
    pub fn starving(&self) -> Option<Starve> {
        self.starving
    }

    /// Feeds the watchdog if [`feed_verdict`] allows it (rate-limited for systemd); a change
    /// between fed and starved is logged once.
    pub fn tend(&mut self, now: BootInstant, facts: FeedFacts) {
        let verdict = feed_verdict(self.promise_ms.is_some(), facts);
        match (verdict, self.starving) {
            (Err(why), None) => match self.promise_ms.filter(|_| self.armed()) {
                Some(ms) => error!(
                    "watchdog: not fed any more ({why}): the host resets within {ms} ms unless the master is seen not \
                     active or this node holds the lock again"
                ),
                None => warn!("watchdog: not fed ({why})"),
            },
            (Ok(()), Some(_)) => info!("watchdog: fed again"),
            _ => {}
        }
        self.starving = verdict.err();
        if verdict.is_ok() {
            match self.feed(now) {
                Err(e) if self.failing.as_ref() != Some(&e) => {
                    warn!("watchdog: {e}");
                    self.failing = Some(e);
                }
                Err(_) => {}
                Ok(()) => {
                    if self.failing.take().is_some() {
                        info!("watchdog: fed again");
                    }
                }
            }
        }
    }

    /// Arms the watchdog before a promotion: a self-fencing device must be open and fed, or the
    /// promise in the breadcrumb would not be kept, and the master is not promoted.
    pub fn arm(&mut self, now: BootInstant) -> Result<(), String> {
        if self.promise_ms.is_none() {
            return Ok(());
        }
        self.starving = None;
        self.feed(now).map_err(|e| {
            format!(
                "watchdog: {e}; this node promises the others a reset by its watchdog, so its master is not promoted"
            )
        })
    }

    /// Feeds the watchdog (rate-limited for systemd), opening a self-fencing device first.
    fn feed(&mut self, now: BootInstant) -> Result<(), String> {
        match &mut self.sink {
            Sink::Off => {}
            Sink::Notify { socket, path, every, ready_sent } => {
                if !*ready_sent {
                    match socket.send_to(b"READY=1", &*path) {
                        Ok(_) => *ready_sent = true,
                        Err(e) => warn!("watchdog: sd_notify READY failed: {e}"),
                    }
                }
                let Some(every) = every else { return Ok(()) };
                if self.last_feed.is_some_and(|t| now.saturating_since(t) < *every) {
                    return Ok(());
                }
                socket.send_to(b"WATCHDOG=1", &*path).map_err(|e| format!("sd_notify WATCHDOG failed: {e}"))?;
                self.last_feed = Some(now);
            }
            Sink::Device { path, timeout_ms, file } => {
                if file.is_none() {
                    let opened = open_device(path, *timeout_ms)
                        .map_err(|e| format!("cannot arm the device {}: {e}", path.display()))?;
                    info!(path = %path.display(), "watchdog: armed");
                    *file = Some(opened);
                }
                if let Some(f) = file {
                    f.write_all(b"\0").map_err(|e| format!("feeding the device {} failed: {e}", path.display()))?;
                }
                self.last_feed = Some(now);
            }
        }
        Ok(())
    }

    /// On a clean stop: tells systemd, or disarms the device with the magic close. A
    /// self-fencing device is left armed while the master may be active: the promise stands
    /// until the host resets.
    pub fn stop(&mut self, master_may_be_active: bool) {
        match &mut self.sink {
            Sink::Off => {}
            Sink::Notify { socket, path, .. } => {
                let _ = socket.send_to(b"STOPPING=1", &*path);
            }
            Sink::Device { file: None, .. } => {}
            Sink::Device { path, file: Some(f), .. } => {
                if self.promise_ms.is_some() && master_may_be_active {
                    error!(
                        path = %path.display(),
                        "watchdog: stopping with the master possibly active: the device is left armed and the host \
                         resets, as promised to the other nodes"
                    );
                } else {
                    let _ = f.write_all(b"V");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_and_refuses_a_key_it_does_not_have() {
        let read = |y: &str| serde_yaml::from_str::<WatchdogConfig>(y);
        assert_eq!(read("kind: off").unwrap(), WatchdogConfig::Off {});
        assert_eq!(read("kind: systemd").unwrap(), WatchdogConfig::Systemd {});
        assert_eq!(
            read("{kind: device, path: /dev/watchdog}").unwrap(),
            WatchdogConfig::Device { path: "/dev/watchdog".into(), timeout_ms: None, self_fence: false }
        );
        assert_eq!(WatchdogConfig::default(), WatchdogConfig::Off {});
        // A misspelt key must not pass unremarked, whatever the kind.
        for y in [
            "{kind: off, path: /dev/watchdog}",
            "{kind: systemd, pth: /dev/watchdog}",
            "{kind: device, path: /x, pth: /y}",
        ] {
            let e = read(y).expect_err(y).to_string();
            assert!(e.contains("unknown field"), "{y}: {e}");
        }
    }

    #[test]
    fn systemd_gets_ready_then_rate_limited_watchdog_feeds() {
        let dir = std::env::temp_dir().join(format!("referee-wd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut wd = Watchdog::open(&WatchdogConfig::Systemd {}, Some(path.clone()), Some(2_000_000)).unwrap();
        let t0 = BootInstant::from_origin(Duration::from_secs(100));
        wd.feed(t0).unwrap();
        wd.feed(t0 + Duration::from_millis(100)).unwrap(); // within the 1 s feed interval: no message
        wd.feed(t0 + Duration::from_millis(1000)).unwrap();
        wd.stop(false);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..4 {
            let n = server.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
        assert_eq!(got, vec!["READY=1", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn device_mode_writes_and_disarms() {
        let path = std::env::temp_dir().join(format!("referee-wd-device-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let config = WatchdogConfig::Device { path: path.clone(), timeout_ms: None, self_fence: false };
        let mut wd = Watchdog::open(&config, None, None).unwrap();
        wd.feed(BootInstant::now()).unwrap();
        wd.feed(BootInstant::now()).unwrap();
        wd.stop(false);
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0V");
        let _ = std::fs::remove_file(&path);
    }

    fn facts(monitor_alive: bool, authority: bool, master_may_be_active: bool, master_read: bool) -> FeedFacts {
        FeedFacts { monitor_alive, authority, master_may_be_active, master_read }
    }

    #[test]
    fn a_self_fencing_watchdog_is_fed_only_with_authority_or_a_master_known_not_active() {
        // Without self-fencing, a live monitor is enough, whatever the master and the lock.
        assert_eq!(feed_verdict(false, facts(true, false, true, false)), Ok(()));
        assert_eq!(feed_verdict(false, facts(false, true, false, true)), Err(Starve::MonitorStuck));
        // With it: the lock held under a running lease...
        assert_eq!(feed_verdict(true, facts(true, true, true, true)), Ok(()));
        assert_eq!(feed_verdict(true, facts(true, true, false, false)), Ok(()));
        // ...or a master read since the start and not active since.
        assert_eq!(feed_verdict(true, facts(true, false, false, true)), Ok(()));
        // The lease gone (or the lock released) with the master possibly active: starve.
        assert_eq!(feed_verdict(true, facts(true, false, true, true)), Err(Starve::NoAuthority));
        // Never read since the start: it may be active under a previous run of the agent.
        assert_eq!(feed_verdict(true, facts(true, false, false, false)), Err(Starve::MasterUnread));
        // A stuck monitor starves it even with authority.
        assert_eq!(feed_verdict(true, facts(false, true, true, true)), Err(Starve::MonitorStuck));
    }

    #[test]
    fn a_self_fencing_device_is_armed_when_first_fed_and_left_armed_on_a_stop_while_the_master_may_be_active() {
        let path = std::env::temp_dir().join(format!("referee-wd-self-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let config = WatchdogConfig::Device { path: path.clone(), timeout_ms: Some(5000), self_fence: true };
        let mut wd = Watchdog::open(&config, None, None).unwrap();
        assert_eq!(wd.promise_ms(), Some(5000));
        let now = BootInstant::now();
        // Not armed while it may not be fed (a master not read yet at boot).
        wd.tend(now, facts(true, false, false, false));
        assert!(!wd.armed());
        assert_eq!(wd.starving(), Some(Starve::MasterUnread));
        // Armed before a promotion, then fed with authority; starved without it.
        wd.arm(now).unwrap();
        assert!(wd.armed() && wd.starving().is_none());
        wd.tend(now, facts(true, true, true, true));
        wd.tend(now, facts(true, false, true, true));
        assert_eq!(wd.starving(), Some(Starve::NoAuthority));
        wd.stop(true);
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0", "left armed: no magic close");
        // Demoted and seen standby: fed again, and disarmed on a stop.
        let mut wd = Watchdog::open(&config, None, None).unwrap();
        std::fs::write(&path, b"").unwrap();
        wd.tend(now, facts(true, false, false, true));
        wd.stop(false);
        assert_eq!(std::fs::read(&path).unwrap(), b"\0V");
        // A device that cannot be opened any more refuses the promotion, naming it.
        std::fs::remove_file(&path).unwrap();
        let mut wd = Watchdog::open(
            &WatchdogConfig::Device { path: "/".into(), timeout_ms: Some(5000), self_fence: true },
            None,
            None,
        )
        .unwrap();
        let e = wd.arm(now).unwrap_err();
        assert!(e.contains("cannot arm the device /") && e.contains("not promoted"), "{e}");
        // A self-fencing device that is not there stops the start, named with what to do.
        let e = Watchdog::open(&config, None, None).err().expect("a device that is not there").to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains("modprobe softdog"), "{e}");
    }

    #[test]
    fn self_fencing_needs_a_timeout_in_whole_seconds_of_several_cycles() {
        let device =
            |timeout_ms, self_fence| WatchdogConfig::Device { path: "/dev/watchdog".into(), timeout_ms, self_fence };
        assert_eq!(device(Some(5000), true).validate(1000), Ok(()));
        assert_eq!(device(Some(5000), true).self_fence_ms(), Some(5000));
        assert_eq!(device(Some(5000), false).self_fence_ms(), None);
        assert_eq!(device(None, false).validate(1000), Ok(()));
        let e = device(None, true).validate(1000).unwrap_err();
        assert!(e.0 == "watchdog.timeout_ms" && e.1.contains("is required with self_fence"), "{e:?}");
        let e = device(Some(5500), true).validate(100).unwrap_err().1;
        assert!(e.contains("whole number of seconds"), "{e}");
        let e = device(Some(3000), true).validate(1000).unwrap_err().1;
        assert!(e.contains("four decision cycles"), "{e}");
        assert_eq!(device(Some(2000), true).validate(100), Ok(()));
        let read = |y: &str| serde_yaml::from_str::<WatchdogConfig>(y);
        assert_eq!(
            read("{kind: device, path: /dev/watchdog, timeout_ms: 5000, self_fence: true}").unwrap(),
            device(Some(5000), true)
        );
        assert!(
            read("{kind: systemd, self_fence: true}").is_err(),
            "systemd restarts the agent, it cannot reset the host"
        );
    }

    #[test]
    fn systemd_mode_without_a_socket_is_off() {
        let mut wd = Watchdog::open(&WatchdogConfig::Systemd {}, None, Some(1_000_000)).unwrap();
        wd.feed(BootInstant::now()).unwrap();
        wd.stop(false);
    }
}
