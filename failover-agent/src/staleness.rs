//! How stale the coordinator's servers say they may be: the least `coordinator.max_staleness_ms`
//! (S in the lease formula) that is safe for them, read from their four-letter words.
//!
//! A follower of an ensemble answers from its own copy, which may lag the leader that expires
//! sessions: an Apache ZooKeeper follower by up to `syncLimit × tickTime` before it gives its
//! leader up, a bundled one by 100 ms (it holds each reply until the leader knew the session
//! alive that recently). A lease that counts less staleness than that can outlive its session
//! by the difference. The setting is the operator's, and its default (0) is right only for a
//! server alone, so the agent asks each server what it is (`srvr`: standalone, or a member of an
//! ensemble, ours or Apache's) and, for an Apache ensemble, its `tickTime` and `syncLimit`
//! (`conf`). The lease then counts the larger of the setting and what the servers say, and a
//! setting below it is logged as a warning naming the server. An Apache server that does not
//! answer `conf` (the default `4lw.commands.whitelist` is `srvr` alone) cannot say: the warning
//! then asks for the setting if it is 0.
//!
//! Parsing and the rule are pure ([`implied`], [`effective`], [`shortfall_warning`]); [`ask`]
//! and [`spawn_check`] are the thin exchange.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::{JoinHandle, JoinSet};

/// How stale a bundled ensemble's follower or observer may be (the hold on its replies).
pub const BUNDLED_ENSEMBLE: Duration = Duration::from_millis(100);

/// What one server says of its staleness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Implied {
    /// A server alone (or a leader that says so) answers from what it knows: no staleness.
    Standalone,
    /// A member of an ensemble that may lag its leader by this much.
    Member(Duration),
    /// A member of an Apache ZooKeeper ensemble whose `syncLimit × tickTime` is unknown.
    UnknownMember,
    /// Not serving, or an answer not understood: nothing learned.
    Unknown,
}

/// What a server's `srvr` answer and, for an Apache ensemble member, its `conf` answer imply.
pub fn implied(srvr: &str, conf: Option<&str>) -> Implied {
    let Some(mode) = srvr.lines().find_map(|l| l.strip_prefix("Mode: ")).map(str::trim) else {
        return Implied::Unknown;
    };
    match mode {
        "standalone" => return Implied::Standalone,
        "leader" | "follower" | "observer" => {}
        _ => return Implied::Unknown,
    }
    if srvr.lines().next().is_some_and(|l| l.contains("-referee-")) {
        return Implied::Member(BUNDLED_ENSEMBLE);
    }
    let value = |key: &str| {
        conf?.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).and_then(|v| v.trim().parse::<u64>().ok())
    };
    match (value("tickTime"), value("syncLimit")) {
        (Some(tick), Some(limit)) => Implied::Member(Duration::from_millis(tick.saturating_mul(limit))),
        _ => Implied::UnknownMember,
    }
}

/// Whether a `srvr` answer comes from a member of an Apache ZooKeeper ensemble, whose `conf`
/// is needed to know its staleness.
pub fn needs_conf(srvr: &str) -> bool {
    implied(srvr, None) == Implied::UnknownMember
}

/// Asks `server` (`host:port`) what [`implied`] needs, within `limit` per word.
pub async fn ask(server: &str, limit: Duration) -> Implied {
    let Ok(srvr) = four_letter(server, "srvr", limit).await else { return Implied::Unknown };
    if !needs_conf(&srvr) {
        return implied(&srvr, None);
    }
    let conf = four_letter(server, "conf", limit).await.ok();
    implied(&srvr, conf.as_deref())
}

/// The warning when `configured` counts less staleness than `server` implies, or `None`.
pub fn shortfall_warning(server: &str, said: &Implied, configured: Duration) -> Option<String> {
    match said {
        Implied::Member(s) if *s > configured => Some(format!(
            "coordinator.max_staleness_ms is {} ms, but coordinator server {server} may lag its leader by {} ms \
             (an ensemble member: {}); the lease counts {} ms. Set max_staleness_ms to at least that",
            configured.as_millis(),
            s.as_millis(),
            if *s == BUNDLED_ENSEMBLE {
                "the bundled ensemble's reply hold".to_string()
            } else {
                "syncLimit × tickTime".into()
            },
            s.as_millis()
        )),
        Implied::UnknownMember if configured.is_zero() => Some(format!(
            "coordinator.max_staleness_ms is 0, but coordinator server {server} is a member of an Apache ZooKeeper \
             ensemble and does not answer conf (4lw.commands.whitelist), so its syncLimit × tickTime is unknown: a \
             follower that far behind may answer for a session its leader has expired. Set max_staleness_ms to \
             syncLimit × tickTime"
        )),
        _ => None,
    }
}

/// The shortfall warnings ([`shortfall_warning`]) to log now for `reports`: those not logged
/// before. `logged` keeps every warning logged so far, so a server that goes silent and answers
/// again says nothing new; a changed setting changes the text, and is warned of again.
pub fn warnings_to_log(reports: &[(String, Implied)], configured: Duration, logged: &mut Vec<String>) -> Vec<String> {
    let mut new = Vec::new();
    for w in reports.iter().filter_map(|(server, said)| shortfall_warning(server, said, configured)) {
        if !logged.contains(&w) {
            logged.push(w.clone());
            new.push(w);
        }
    }
    new
}

/// What each server of `connect` says, asked now, after every reconnection of the session
/// `states` follows and every [`crate::grants::REFRESH`] (every [`crate::grants::RETRY`] while
/// one has said nothing), in a task that ends with the session. `reports` holds the latest
/// answers, in the connect string's order.
pub fn spawn_check(
    connect: &str,
    limit: Duration,
    mut states: zookeeper_client::StateWatcher,
    reports: Arc<Mutex<Vec<(String, Implied)>>>,
) -> JoinHandle<()> {
    let servers = crate::grants::servers_of(connect);
    // The state now is not a change: only a reconnection from here on is.
    states.state();
    tokio::spawn(async move {
        loop {
            let mut asks = JoinSet::new();
            for (i, server) in servers.iter().enumerate() {
                let server = server.clone();
                asks.spawn(async move { (i, ask(&server, limit).await) });
            }
            let mut said = vec![Implied::Unknown; servers.len()];
            while let Some(done) = asks.join_next().await {
                if let Ok((i, implied)) = done {
                    said[i] = implied;
                }
            }
            let silent = said.contains(&Implied::Unknown);
            *reports.lock().unwrap_or_else(PoisonError::into_inner) = servers.iter().cloned().zip(said).collect();
            let wait = if silent { crate::grants::RETRY } else { crate::grants::REFRESH };
            tokio::select! {
                ended = crate::grants::reconnected(&mut states) => if ended { return },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    })
}

/// The staleness the lease must count: the larger of the setting and what the servers say.
pub fn effective(configured: Duration, reports: &[(String, Implied)]) -> Duration {
    reports
        .iter()
        .filter_map(|(_, said)| match said {
            Implied::Member(s) => Some(*s),
            _ => None,
        })
        .fold(configured, Duration::max)
}

async fn four_letter(server: &str, word: &str, limit: Duration) -> std::io::Result<String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(server).await?;
        s.write_all(word.as_bytes()).await?;
        let mut out = Vec::new();
        // An answer is a few hundred bytes; a server that sends more is not one to trust.
        (&mut s).take(64 << 10).read_to_end(&mut out).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const APACHE_FOLLOWER: &str = "Zookeeper version: 3.8.0-5a02a05eddb59aee6ac762f7ea82e92a68eb9c0f, built on \
        2022-02-25 08:49 UTC\nLatency min/avg/max: 0/0.0/0\nReceived: 3\nSent: 2\nConnections: 1\nOutstanding: 0\n\
        Zxid: 0x100000002\nMode: follower\nNode count: 5\n";
    const APACHE_CONF: &str = "clientPort=2181\nsecureClientPort=-1\ndataDir=/d/version-2\ntickTime=200\n\
        maxClientCnxns=0\nminSessionTimeout=400\nmaxSessionTimeout=60000\nserverId=2\ninitLimit=10\nsyncLimit=5\n\
        electionAlg=3\n";

    #[test]
    fn an_apache_member_is_as_stale_as_its_sync_limit_in_ticks() {
        assert!(needs_conf(APACHE_FOLLOWER));
        assert_eq!(implied(APACHE_FOLLOWER, Some(APACHE_CONF)), Implied::Member(Duration::from_millis(1000)));
        assert_eq!(
            implied(&APACHE_FOLLOWER.replace("follower", "leader"), Some(APACHE_CONF)),
            Implied::Member(Duration::from_millis(1000))
        );
        assert_eq!(implied(APACHE_FOLLOWER, None), Implied::UnknownMember, "conf refused");
        let refused = "conf is not executed because it is not in the whitelist.\n";
        assert_eq!(implied(APACHE_FOLLOWER, Some(refused)), Implied::UnknownMember);
    }

    #[test]
    fn standalone_bundled_and_not_serving_servers() {
        let standalone = APACHE_FOLLOWER.replace("Mode: follower", "Mode: standalone");
        assert!(!needs_conf(&standalone));
        assert_eq!(implied(&standalone, None), Implied::Standalone);
        let ours = "Zookeeper version: 3.8.0-referee-0.1.0, built on 1970-01-01 00:00 UTC\nMode: observer\n";
        assert!(!needs_conf(ours));
        assert_eq!(implied(ours, None), Implied::Member(BUNDLED_ENSEMBLE));
        let looking = "This ZooKeeper instance is not currently serving requests\n";
        assert_eq!(implied(looking, None), Implied::Unknown);
        assert_eq!(implied("", None), Implied::Unknown);
        assert_eq!(implied("Mode: read-only\n", None), Implied::Unknown);
    }

    #[test]
    fn the_lease_counts_the_larger_of_the_setting_and_what_the_servers_say() {
        let s = Duration::from_millis;
        let reports = |said: Vec<Implied>| said.into_iter().map(|i| ("x:1".to_string(), i)).collect::<Vec<_>>();
        assert_eq!(effective(s(0), &reports(vec![Implied::Standalone])), s(0));
        assert_eq!(effective(s(100), &reports(vec![Implied::Member(s(400)), Implied::Unknown])), s(400));
        assert_eq!(effective(s(1000), &reports(vec![Implied::Member(s(400)), Implied::UnknownMember])), s(1000));
        assert_eq!(effective(s(0), &reports(vec![Implied::Member(s(400)), Implied::Member(s(1000))])), s(1000));
        assert_eq!(effective(s(250), &[]), s(250));
    }

    #[test]
    fn a_server_that_goes_silent_and_comes_back_is_not_warned_of_again() {
        let s = Duration::from_millis;
        let said = |a: Implied| vec![("zk1:2181".to_string(), a), ("zk2:2181".to_string(), Implied::UnknownMember)];
        let mut logged = Vec::new();
        let first = warnings_to_log(&said(Implied::UnknownMember), s(0), &mut logged);
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(warnings_to_log(&said(Implied::UnknownMember), s(0), &mut logged).is_empty(), "logged again");
        // zk1 goes silent (frozen, restarted) and answers again: nothing new to say.
        assert!(warnings_to_log(&said(Implied::Unknown), s(0), &mut logged).is_empty());
        let back = warnings_to_log(&said(Implied::UnknownMember), s(0), &mut logged);
        assert!(back.is_empty(), "warned again when the server came back: {back:?}");
        // Something new is: a setting that falls short of what a server now says.
        let new = warnings_to_log(&said(Implied::Member(s(1000))), s(0), &mut logged);
        assert!(new.len() == 1 && new[0].contains("1000 ms"), "{new:?}");
    }

    #[test]
    fn a_setting_below_what_a_server_says_is_named() {
        let s = Duration::from_millis;
        let w = shortfall_warning("zk2:2181", &Implied::Member(s(1000)), s(100)).unwrap();
        assert!(w.contains("zk2:2181") && w.contains("1000 ms") && w.contains("syncLimit"), "{w}");
        assert_eq!(shortfall_warning("zk2:2181", &Implied::Member(s(1000)), s(1000)), None);
        assert!(shortfall_warning("c:1", &Implied::Member(BUNDLED_ENSEMBLE), s(0)).unwrap().contains("reply hold"));
        assert!(shortfall_warning("zk2:2181", &Implied::UnknownMember, s(0)).unwrap().contains("whitelist"));
        assert_eq!(shortfall_warning("zk2:2181", &Implied::UnknownMember, s(400)), None, "the operator said");
        assert_eq!(shortfall_warning("zk2:2181", &Implied::Standalone, s(0)), None);
    }
}
