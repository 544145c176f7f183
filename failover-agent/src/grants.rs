//! What session timeout each server of the ensemble would grant this agent's session, so that
//! the lease never counts on more than the session lives on.
//!
//! Apache ZooKeeper negotiates a session's timeout anew each time the client reconnects: the
//! server it reaches clamps the timeout the client asks for (the one granted last) into that
//! server's own `minSessionTimeout`..`maxSessionTimeout`, and a follower reports the session's
//! liveness to the leader with that timeout, which expires the session that long after its last
//! touch. The servers of one ensemble may have different bounds, so a session granted 6 s by one
//! server lives on 1.5 s once it moves to a follower whose maximum is 1.5 s, and the client
//! library tells nobody. A lease cut from the first grant would then
//! outlive the session: a peer could hold the lock while this node's master still took writes.
//!
//! So the agent asks every server. It opens a short session on each, asking for what its own
//! session would ask for on a reconnection, notes the grant and closes it. A reconnection that
//! lands on a server granting less then asks the next server for that lower timeout, so the
//! survey follows the chain: it asks again with the lowest grant found until no server grants
//! less ([`GrantSurvey::lowest`]; a server's grant only grows with what it is asked, so the
//! chain's lowest is where asking for the lowest so far finds nothing lower). The lease counts
//! on that. The bundled coordinator keeps a session's first grant wherever it moves, so there
//! the survey finds nothing lower than a server's own bounds.
//!
//! The first survey is made as the session is made, before it holds anything ([`survey_first`],
//! within the op timeout): when the session would live on less than its connection was set up
//! for, it is made again asking for that ([`crate::election::IdleLimitPlan`]), so that the
//! client gives a frozen server up within a fifth of the timeout the lease counts on.
//!
//! The survey is made again after every reconnection of the session and every
//! [`REFRESH`] (a server restarted with other bounds), asks a server that does not answer
//! again every [`RETRY`], and logs a warning naming each server's grant when they differ. Until
//! a server has answered, its grant is unknown and not counted: a server that was unreachable
//! since the session began and is asked within a [`RETRY`] of coming back.
//!
//! The survey's rules ([`GrantSurvey`]) are pure; [`survey_first`] and [`spawn_survey`] are the
//! thin exchange that asks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};
use zookeeper_client as zk;

/// How often the whole survey is made again while the session lives.
pub const REFRESH: Duration = Duration::from_secs(60);

/// How soon a server that did not answer is asked again.
pub const RETRY: Duration = Duration::from_secs(1);

/// The answers gathered so far, and what to ask next. Pure: the task feeds it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSurvey {
    /// What the session was granted when it was created.
    first: Duration,
    /// The servers of the connect string, as written there.
    servers: Vec<String>,
    /// (server, timeout asked for) → timeout granted.
    answers: BTreeMap<(usize, Duration), Duration>,
    /// Answers to ask for again; counted until replaced.
    stale: BTreeSet<(usize, Duration)>,
}

impl GrantSurvey {
    /// A survey of the servers of `connect` (see [`servers_of`]) for a session first granted
    /// `first`.
    pub fn new(connect: &str, first: Duration) -> Self {
        GrantSurvey { first, servers: servers_of(connect), answers: BTreeMap::new(), stale: BTreeSet::new() }
    }

    /// The servers, in the connect string's order.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The lowest timeout a chain of reconnections could bring the session to, from its first
    /// grant, over the answers known: ask every server for the lowest so far, take the lowest
    /// grant, until none is lower.
    pub fn lowest(&self) -> Duration {
        let mut lowest = self.first;
        loop {
            let next = (0..self.servers.len()).filter_map(|s| self.answers.get(&(s, lowest)).copied()).min();
            match next {
                Some(granted) if granted < lowest => lowest = granted,
                _ => return lowest,
            }
        }
    }

    /// What to ask next: walking the chain from the first grant, the first timeout some
    /// server's answer to is missing or stale, and those servers (none: the survey is
    /// complete). Walking from the top, a refresh learns of a raised bound as well as a
    /// lowered one.
    pub fn to_ask(&self) -> (Duration, Vec<usize>) {
        let mut at = self.first;
        loop {
            let missing: Vec<usize> = (0..self.servers.len())
                .filter(|&s| !self.answers.contains_key(&(s, at)) || self.stale.contains(&(s, at)))
                .collect();
            if !missing.is_empty() {
                return (at, missing);
            }
            match (0..self.servers.len()).filter_map(|s| self.answers.get(&(s, at)).copied()).min() {
                Some(granted) if granted < at => at = granted,
                _ => return (at, missing),
            }
        }
    }

    /// Server `server` granted `granted` when asked for `asked`.
    pub fn answered(&mut self, server: usize, asked: Duration, granted: Duration) {
        self.answers.insert((server, asked), granted);
        self.stale.remove(&(server, asked));
    }

    /// Marks every answer to be asked for again; each counts until its new answer comes.
    pub fn refresh(&mut self) {
        self.stale = self.answers.keys().copied().collect();
    }

    /// The warning to log when the servers would not all keep the session on its first grant,
    /// or `None` when every server answered it with the grant itself.
    pub fn disagreement(&self) -> Option<String> {
        let grants: Vec<Option<Duration>> =
            (0..self.servers.len()).map(|s| self.answers.get(&(s, self.first)).copied()).collect();
        if grants.iter().all(|g| g.is_none_or(|g| g == self.first)) {
            return None;
        }
        let each: Vec<String> = self
            .servers
            .iter()
            .zip(&grants)
            .map(|(server, g)| match g {
                Some(g) => format!("{server} {} ms", g.as_millis()),
                None => format!("{server} not reached yet"),
            })
            .collect();
        let lowest = self.lowest();
        let effect = if lowest < self.first {
            format!(
                "the lease counts on the lowest a reconnection can bring it to, {} ms, so it is shorter than the \
                 grant at connect",
                lowest.as_millis()
            )
        } else {
            "a session that moves to a server granting more lives longer, so a lost host fails over later".to_string()
        };
        Some(format!(
            "the coordinator's servers grant this session different timeouts when it reconnects to them (asked for \
             the {} ms granted at connect: {}): {effect}. Give every server the same minSessionTimeout and \
             maxSessionTimeout (the bundled coordinator's min_session_timeout_ms and max_session_timeout_ms)",
            self.first.as_millis(),
            each.join(", ")
        ))
    }
}

/// The servers of a connect string (`host:port[,host:port...][/chroot]`), as written there,
/// without the chroot: a chroot is the session's, and each server is asked as `host:port`.
pub fn servers_of(connect: &str) -> Vec<String> {
    let (servers, _) = crate::election::split_chroot(connect);
    servers.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// A survey of the servers of `connect` for a session first granted `first`, made before the
/// session is used, so that the session can be made again while it holds nothing (see
/// [`crate::election::IdleLimitPlan`]): rounds of questions until it is complete, a round
/// leaves a server unanswered, or `limit` has passed. What is still unknown is asked by
/// [`spawn_survey`]. A connect string of one server is not asked here: the grant at connect is
/// that server's answer.
pub async fn survey_first(connect: &str, first: Duration, limit: Duration) -> GrantSurvey {
    let mut survey = GrantSurvey::new(connect, first);
    if survey.servers().len() > 1 {
        let rounds = async { while !survey.to_ask().1.is_empty() && ask_round(&mut survey, limit, None).await {} };
        // Answers count as they come, so a round cut short keeps the ones it had.
        let _ = tokio::time::timeout(limit, rounds).await;
    }
    survey
}

/// Asks the servers [`GrantSurvey::to_ask`] names, each answer counted as it comes (and
/// `lowest` kept at [`GrantSurvey::lowest`]), each server within `op_timeout`. True when every
/// one answered and the chain went lower: the next round is due at once.
async fn ask_round(survey: &mut GrantSurvey, op_timeout: Duration, lowest: Option<&Mutex<Duration>>) -> bool {
    let (asked, servers) = survey.to_ask();
    let mut probes = JoinSet::new();
    for s in servers {
        let server = survey.servers()[s].clone();
        probes.spawn(async move { (s, probe(&server, asked, op_timeout).await) });
    }
    // Each answer counts as it comes: a silent server costs the others nothing.
    while let Some(done) = probes.join_next().await {
        let Ok((s, result)) = done else { continue };
        match result {
            Ok(granted) => {
                survey.answered(s, asked, granted);
                if let Some(lowest) = lowest {
                    *lowest.lock().unwrap_or_else(PoisonError::into_inner) = survey.lowest();
                }
            }
            Err(why) => tracing::debug!(
                server = %survey.servers()[s], %why,
                "could not ask a coordinator server what session timeout it grants"
            ),
        }
    }
    survey.to_ask().0 != asked
}

/// Goes on with `survey` (from [`survey_first`]) for the session whose states `states`
/// follows, in a task that ends when the session does. `lowest` always holds
/// [`GrantSurvey::lowest`].
pub fn spawn_survey(
    mut survey: GrantSurvey,
    op_timeout: Duration,
    mut states: zk::StateWatcher,
    lowest: Arc<Mutex<Duration>>,
) -> JoinHandle<()> {
    // The state now is not a change: only a reconnection from here on is.
    states.state();
    tokio::spawn(async move {
        let mut warned = survey.disagreement();
        if let Some(w) = &warned {
            tracing::warn!("{w}");
        }
        loop {
            let servers = survey.to_ask().1;
            let wait = if servers.is_empty() {
                REFRESH
            } else {
                let lower = ask_round(&mut survey, op_timeout, Some(&lowest)).await;
                let disagreement = survey.disagreement();
                if disagreement.is_some() && disagreement != warned {
                    tracing::warn!("{}", disagreement.as_deref().unwrap_or_default());
                }
                warned = disagreement;
                if lower {
                    // The chain went lower: ask there at once.
                    continue;
                }
                // Whoever is left did not answer.
                RETRY
            };
            tokio::select! {
                ended = reconnected(&mut states) => {
                    if ended {
                        return;
                    }
                    survey.refresh();
                }
                _ = tokio::time::sleep(wait) => {
                    if wait == REFRESH {
                        survey.refresh();
                    }
                }
            }
        }
    })
}

/// Waits for the session to reconnect (true: it ended instead). The watcher reports changes
/// only, so a connected state is a reconnection; cancel-safe.
pub(crate) async fn reconnected(states: &mut zk::StateWatcher) -> bool {
    loop {
        match states.changed().await {
            zk::SessionState::Disconnected => {}
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => return false,
            zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed => return true,
        }
    }
}

/// Asks `server` (`host:port`, every address it resolves to) what session timeout it grants
/// when asked for `asked`: opens a session there, notes the grant and closes it. The lowest
/// grant over the addresses, within `limit` each.
async fn probe(server: &str, asked: Duration, limit: Duration) -> Result<Duration, String> {
    let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout(limit, tokio::net::lookup_host(server))
        .await
        .map_err(|_| format!("resolving took over {limit:?}"))?
        .map_err(|e| format!("resolving: {e}"))?
        .collect();
    let mut lowest: Option<Duration> = None;
    let mut failed = None;
    for addr in addrs {
        // Eagerly: a server that refuses the connection is an answer at once, not a wait.
        let connector = zk::Client::connector().with_session_timeout(asked).with_fail_eagerly();
        match tokio::time::timeout(limit, connector.connect(&addr.to_string())).await {
            Ok(Ok(client)) => {
                let granted = client.session_timeout();
                lowest = Some(lowest.map_or(granted, |l| l.min(granted)));
                crate::election::close_client(client, limit).await;
            }
            Ok(Err(e)) => failed = Some(format!("{addr}: {e}")),
            Err(_) => failed = Some(format!("{addr}: no session within {limit:?}")),
        }
    }
    match (lowest, failed) {
        // One address of a name that did not answer may be a server that grants less.
        (Some(l), None) => Ok(l),
        (_, Some(why)) => Err(why),
        (None, None) => Err("resolves to no address".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Answers a survey as servers with these (min, max) bounds would, until it is complete.
    fn run(first: u64, bounds: &[(u64, u64)]) -> GrantSurvey {
        let connect: Vec<String> = (0..bounds.len()).map(|i| format!("10.0.0.{i}:2181")).collect();
        let mut s = GrantSurvey::new(&connect.join(","), ms(first));
        for _ in 0..10 {
            let (asked, servers) = s.to_ask();
            if servers.is_empty() {
                return s;
            }
            for i in servers {
                let (lo, hi) = bounds[i];
                s.answered(i, asked, ms((asked.as_millis() as u64).clamp(lo, hi)));
            }
        }
        panic!("the survey did not complete: {s:?}")
    }

    #[test]
    fn equal_bounds_keep_the_first_grant_and_ask_once() {
        let s = run(6000, &[(400, 20000), (400, 20000), (400, 20000)]);
        assert_eq!(s.lowest(), ms(6000));
        assert_eq!(s.answers.len(), 3, "one question a server");
        assert_eq!(s.disagreement(), None);
    }

    #[test]
    fn a_server_with_a_lower_maximum_sets_the_lease() {
        let s = run(6000, &[(400, 20000), (400, 1500), (400, 20000)]);
        assert_eq!(s.lowest(), ms(1500));
        let w = s.disagreement().unwrap();
        assert!(w.contains("10.0.0.1:2181 1500 ms") && w.contains("1500 ms, so it is shorter"), "{w}");
    }

    #[test]
    fn the_chain_is_followed_through_a_server_that_raises_the_request() {
        // Server 1 caps at 3000; server 2 lifts anything under 2500 to 2500 and caps at 2800;
        // asked for 3000, server 2 answers 2800, and asked for 2800 server 1 answers 2800: the
        // chain's lowest is 2800, found in a second round.
        let s = run(6000, &[(400, 20000), (400, 3000), (2500, 2800)]);
        assert_eq!(s.lowest(), ms(2800));
        // A chain of ever lower maxima is followed to its end.
        let s = run(6000, &[(4000, 20000), (400, 5000), (400, 20000)]);
        assert_eq!(s.lowest(), ms(5000), "a raised minimum never lowers the chain");
    }

    #[test]
    fn servers_granting_more_are_reported_but_do_not_change_the_lease() {
        let s = run(1000, &[(400, 20000), (4000, 20000)]);
        assert_eq!(s.lowest(), ms(1000));
        let w = s.disagreement().unwrap();
        assert!(w.contains("10.0.0.1:2181 4000 ms") && w.contains("fails over later"), "{w}");
    }

    #[test]
    fn an_unanswered_server_is_asked_again_and_counted_once_it_answers() {
        let mut s = GrantSurvey::new("a:1,b:2", ms(6000));
        assert_eq!(s.to_ask(), (ms(6000), vec![0, 1]));
        s.answered(0, ms(6000), ms(6000));
        assert_eq!(s.lowest(), ms(6000));
        assert_eq!(s.to_ask(), (ms(6000), vec![1]));
        assert!(s.disagreement().is_none(), "an unanswered server is no disagreement yet");
        s.answered(1, ms(6000), ms(2000));
        assert_eq!(s.lowest(), ms(2000));
        assert_eq!(s.to_ask(), (ms(2000), vec![0, 1]), "both asked for the lower request");
        assert!(s.disagreement().unwrap().contains("a:1 6000 ms, b:2 2000 ms"));
    }

    #[test]
    fn a_refresh_asks_again_from_the_top_and_counts_the_old_answers_until_replaced() {
        let mut s = run(6000, &[(400, 20000), (400, 1500)]);
        s.refresh();
        assert_eq!(s.lowest(), ms(1500), "stale answers still count");
        assert_eq!(s.to_ask(), (ms(6000), vec![0, 1]), "asked again from the first grant");
        // Server 1 was restarted with higher bounds: the chain ends at the first grant.
        s.answered(0, ms(6000), ms(6000));
        assert_eq!(s.lowest(), ms(1500), "until server 1 answers again, its old answer counts");
        s.answered(1, ms(6000), ms(6000));
        assert_eq!(s.lowest(), ms(6000));
        assert_eq!(s.to_ask(), (ms(6000), vec![]));
        assert_eq!(s.disagreement(), None);
        // Lowered again: the next refresh finds it.
        s.refresh();
        s.answered(0, ms(6000), ms(6000));
        s.answered(1, ms(6000), ms(1000));
        assert_eq!(s.to_ask(), (ms(1000), vec![0, 1]));
    }

    #[test]
    fn the_connect_string_is_split_into_servers() {
        let s = GrantSurvey::new(" a:1, b:2 ,c:3", ms(1));
        assert_eq!(s.servers(), ["a:1", "b:2", "c:3"]);
        // A chroot is the session's, not the last server's: each server is asked as host:port.
        assert_eq!(servers_of("a:1,b:2/ha/prod"), ["a:1", "b:2"]);
        assert_eq!(servers_of("a:1/ha"), ["a:1"]);
    }
}
