//! Self-fencing through a watchdog: kept fed only while the agent's decision loop runs and its
//! health monitor is alive, so a hung agent on an active host gets the host reset (or, with
//! systemd, the agent restarted) before its master can outlive its lease unnoticed.
//!
//! Two kinds: systemd's `WatchdogSec=` through `sd_notify` (`READY=1` once, then `WATCHDOG=1`),
//! and the Linux watchdog device (`/dev/watchdog`: any write feeds it; writing `V` before
//! closing disarms it on a clean stop).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tracing::warn;

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
    },
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig::Off {}
    }
}

/// Where feeds go.
enum Sink {
    Off,
    Notify { socket: UnixDatagram, path: PathBuf, every: Option<Duration>, ready_sent: bool },
    Device(std::fs::File),
}

/// A watchdog fed by the decision loop.
pub struct Watchdog {
    sink: Sink,
    last_feed: Option<BootInstant>,
}

impl Watchdog {
    /// Opens the watchdog. For systemd, `notify_socket` and `watchdog_usec` are the values of
    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC` (read by the binary); without a socket, systemd did
    /// not ask for notifications and the watchdog stays off.
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
            WatchdogConfig::Device { path } => Sink::Device(std::fs::OpenOptions::new().write(true).open(path)?),
        };
        Ok(Watchdog { sink, last_feed: None })
    }

    /// Feeds the watchdog after a healthy cycle (rate-limited for systemd).
    pub fn feed(&mut self, now: BootInstant) {
        match &mut self.sink {
            Sink::Off => {}
            Sink::Notify { socket, path, every, ready_sent } => {
                if !*ready_sent {
                    match socket.send_to(b"READY=1", &*path) {
                        Ok(_) => *ready_sent = true,
                        Err(e) => warn!("watchdog: sd_notify READY failed: {e}"),
                    }
                }
                let Some(every) = every else { return };
                if self.last_feed.is_some_and(|t| now.saturating_since(t) < *every) {
                    return;
                }
                if let Err(e) = socket.send_to(b"WATCHDOG=1", &*path) {
                    warn!("watchdog: sd_notify WATCHDOG failed: {e}");
                    return;
                }
                self.last_feed = Some(now);
            }
            Sink::Device(file) => {
                if let Err(e) = file.write_all(b"\0") {
                    warn!("watchdog: feeding the device failed: {e}");
                }
                self.last_feed = Some(now);
            }
        }
    }

    /// On a clean stop: tells systemd, or disarms the device with the magic close.
    pub fn stop(&mut self) {
        match &mut self.sink {
            Sink::Off => {}
            Sink::Notify { socket, path, .. } => {
                let _ = socket.send_to(b"STOPPING=1", &*path);
            }
            Sink::Device(file) => {
                let _ = file.write_all(b"V");
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
            WatchdogConfig::Device { path: "/dev/watchdog".into() }
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
        wd.feed(t0);
        wd.feed(t0 + Duration::from_millis(100)); // within the 1 s feed interval: no message
        wd.feed(t0 + Duration::from_millis(1000));
        wd.stop();
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
        let mut wd = Watchdog::open(&WatchdogConfig::Device { path: path.clone() }, None, None).unwrap();
        wd.feed(BootInstant::now());
        wd.feed(BootInstant::now());
        wd.stop();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0V");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn systemd_mode_without_a_socket_is_off() {
        let mut wd = Watchdog::open(&WatchdogConfig::Systemd {}, None, Some(1_000_000)).unwrap();
        wd.feed(BootInstant::now());
        wd.stop();
    }
}
