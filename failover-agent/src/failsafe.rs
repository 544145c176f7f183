//! Failsafe mode: keeping an active master through a coordinator outage, as long as every
//! other node confirms it is not active.
//!
//! Without failsafe an active agent that cannot reach the coordinator demotes its master when
//! its lease runs out, because it cannot tell an outage of the coordinator from its own
//! isolation. With failsafe it asks instead: every configured peer's agent (and any other
//! registered member's) is sent
//! `POST /peer/failsafe` with this node's id, token and the promise period `ttl_ms`.
//!
//! ```text
//!  active (coordinator unreachable)                 each other node's agent
//!  ── round sent at t ──▶ POST /peer/failsafe ──▶  not active, holds no lock?
//!                                                   yes: promise not to contend until receipt + ttl
//!  ◀── every member accepted ──────────────────────  {accepted: true}
//!  master stays active until t + ttl − D − margin
//! ```
//!
//! A member that does not answer, answers late, refuses or is not reachable ends the extension:
//! the master is demoted when the last confirmed round runs out. A member that confirms keeps
//! out of the election until its promise runs out, measured from when it received the request
//! (which is after the active sent it), so the active's lease always ends first.
//!
//! An expired session does not end failsafe by itself ([`after_session_end`]): the client
//! library declares a session expired when it could not renew it in time, which in an outage
//! says nothing about the lock, and even if the ensemble did expire it, every node that could
//! take the lock has promised not to contend for longer than the confirmed extension. Once a
//! lock read answers again, the lock (or its absence) decides, and a member still bound by a
//! promise waits out at most one `ttl_ms` before contending.
//!
//! Who is asked is not the registered members alone ([`round_targets`]): every configured
//! peer must confirm, so a node whose registration the coordinator lost (or never had) cannot
//! be skipped; a registered member missing from the configuration is asked too. A configured
//! peer is asked at every address known for it, the one it registered and the one its `peers`
//! entry gives (`peer_url`), so a peer whose agent came back during the outage, unable to
//! register, or registered elsewhere, can still confirm; an explicit refusal at any of them
//! refuses the round.
//!
//! # Where this differs from Patroni's failsafe
//!
//! Patroni's primary keeps running while it can reach every member it last saw in the DCS
//! through their REST API. Here the members asked are the configured peers (a member list that
//! lost a node cannot shrink the round), a member confirms only while its own coordinator read
//! (if it can make one) names no other holder and fails closed when that read fails, each
//! confirmation carries a promise not to contend measured from its receipt (so the active's
//! extension, measured from the send, always ends first), and the extension is cut by the
//! demotion deadline and margin exactly as the session lease is.

use std::time::Duration;

use referee_fencing::FencingToken;
use serde::{Deserialize, Serialize};

use crate::clock::BootInstant;
use crate::model::{LockView, MasterStatus, Member};

/// The peer path of the failsafe confirmation.
pub const PEER_FAILSAFE_PATH: &str = "/peer/failsafe";

/// The largest promise a member gives, whatever the asker requests.
pub const MAX_PROMISE: Duration = Duration::from_secs(600);

/// `POST /peer/failsafe`: an active that cannot reach the coordinator asks for confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailsafeRequest {
    /// The asking (active) node.
    pub node_id: String,
    /// Its token.
    pub token: FencingToken,
    /// How long the member must stay out of the election if it confirms.
    pub ttl_ms: u64,
}

/// The member's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeResponse {
    /// The answering node.
    pub node_id: String,
    /// It is not active, holds no lock, and will not contend for the promised time.
    pub accepted: bool,
    /// Why, in a sentence.
    pub reason: String,
}

/// The outcome of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundOutcome {
    /// Every other member confirmed.
    Confirmed {
        /// How many members confirmed.
        members: usize,
    },
    /// At least one did not; the first reason found.
    Refused(String),
}

/// One node a round asks, at every peer API address known for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node.
    pub node_id: String,
    /// The address it registered first, then the one its `peers` entry gives if another; never
    /// empty.
    pub urls: Vec<String>,
}

/// Who one round asks: every configured peer (`peers`: its id and the peer API URL the
/// configuration gives for it, if any), at the address it registered and at the configured
/// one, then every other registered member at the address it registered. `Err` (the round is
/// refused without asking anyone) when a node to ask has no address at all (a configured peer
/// neither registered nor given a `peer_url`, a member publishing none), or when the member list
/// was never read (it then lacks `me`, and a member missing from the configuration could go
/// unasked).
pub fn round_targets(me: &str, peers: &[(String, Option<String>)], members: &[Member]) -> Result<Vec<Target>, String> {
    if !members.iter().any(|m| m.node_id == me) {
        return Err("the member list was never read; nobody can be asked".into());
    }
    let mut targets = Vec::with_capacity(peers.len());
    for (peer, configured) in peers {
        let registered = members.iter().find(|m| m.node_id == *peer);
        let mut urls: Vec<String> = Vec::with_capacity(2);
        for url in [registered.and_then(|m| m.peer_url.as_deref()), configured.as_deref()].into_iter().flatten() {
            let url = url.trim_end_matches('/').to_string();
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        if urls.is_empty() {
            return Err(match registered {
                None => format!(
                    "{peer} is not registered with the coordinator and its `peers` entry gives no peer_url, so it \
                     cannot be asked"
                ),
                Some(_) => format!("{peer} publishes no peer API address and its `peers` entry gives no peer_url"),
            });
        }
        targets.push(Target { node_id: peer.clone(), urls });
    }
    for member in members.iter().filter(|m| m.node_id != me && !peers.iter().any(|(p, _)| *p == m.node_id)) {
        let Some(url) = &member.peer_url else {
            return Err(format!("{} publishes no peer API address", member.node_id));
        };
        targets.push(Target { node_id: member.node_id.clone(), urls: vec![url.trim_end_matches('/').to_string()] });
    }
    Ok(targets)
}

/// What the answering member could learn from the coordinator about the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockRead {
    /// It has no connected session: the coordinator cannot be asked.
    NoSession,
    /// It asked, and the read failed or timed out.
    Failed(String),
    /// It read the lock.
    Read(LockView),
}

/// What a member knows when an active peer asks it to confirm.
#[derive(Debug, Clone)]
pub struct AnswerFacts<'a> {
    /// This (the answering) node.
    pub me: &'a str,
    /// The request.
    pub request: &'a FailsafeRequest,
    /// Its own master's state, `None` if it cannot be read.
    pub master: Option<MasterStatus>,
    /// Whether its own master may be active under this agent (it promoted it and has not seen
    /// it step down since).
    pub promoted: bool,
    /// The lock this agent's session holds, as last known.
    pub held: Option<FencingToken>,
    /// Its coordinator read of the lock.
    pub lock: LockRead,
    /// The longest promise this node keeps even across a restart of its agent
    /// ([`promise_at_start`]): its `failsafe.ttl_ms` with failsafe on, `None` with it off.
    pub keeps: Option<Duration>,
}

/// A member's answer: confirm (promising not to contend for `period`) or refuse, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not active, holds no lock, nobody else is named active: promise not to contend.
    Confirm {
        /// How long, from receipt.
        period: Duration,
    },
    /// Why not.
    Refuse(String),
}

/// The member's rule: confirm only when this node's master is known not to be active, this
/// node holds no lock, and the coordinator, if it can be asked, names no third node active; a
/// read that fails refuses (it could have named one). A promise this node could not keep
/// across a restart of its agent is refused too: one longer than [`AnswerFacts::keeps`], or any
/// with failsafe off here (the promise lives in the agent's memory alone, and a restarted agent
/// keeps only the one of [`promise_at_start`]).
pub fn answer(facts: &AnswerFacts<'_>) -> Answer {
    let request = facts.request;
    if request.node_id == facts.me {
        return Answer::Refuse("the request names this node as the active".into());
    }
    match facts.keeps {
        None => {
            return Answer::Refuse(
                "failsafe is off on this node, so a promise not to contend would not outlive a restart of its agent"
                    .into(),
            )
        }
        Some(keeps) if u128::from(request.ttl_ms) > keeps.as_millis() => {
            return Answer::Refuse(format!(
                "the request asks for a promise of {} ms, longer than this node keeps one across a restart of its \
                 agent (its failsafe.ttl_ms, {} ms); give every node the same failsafe settings",
                request.ttl_ms,
                keeps.as_millis()
            ))
        }
        Some(_) => {}
    }
    if !crate::tokens::within_limit(request.token) {
        return Answer::Refuse(format!("the request carries token {}, above any usable token", request.token));
    }
    match facts.master {
        Some(m) if m.state == referee_fencing::HaState::Active => {
            return Answer::Refuse("this node's master is active".into())
        }
        None if facts.promoted => return Answer::Refuse("this node's master cannot be read and may be active".into()),
        _ => {}
    }
    if let Some(token) = facts.held {
        return Answer::Refuse(format!("this node holds the lock with token {token}"));
    }
    match &facts.lock {
        LockRead::NoSession => {}
        LockRead::Failed(why) => {
            return Answer::Refuse(format!("this node could not read the lock ({why}), so it cannot vouch"))
        }
        LockRead::Read(LockView::Ours { token, .. }) => {
            return Answer::Refuse(format!("this node holds the lock with token {token}"))
        }
        LockRead::Read(LockView::Peer { node_id, token }) if *node_id != request.node_id => {
            return Answer::Refuse(format!("the coordinator says {node_id} is active with token {token}"))
        }
        LockRead::Read(_) => {}
    }
    Answer::Confirm { period: Duration::from_millis(request.ttl_ms).min(MAX_PROMISE) }
}

/// A promise not to contend, kept by a node that confirmed a failsafe round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promise {
    /// The active it was given to; `None` for the one an agent keeps from its start
    /// ([`promise_at_start`]), to whoever its predecessor may have answered.
    pub to: Option<String>,
    /// Not contending until then.
    pub until: BootInstant,
}

/// The promise kept after confirming to `asker` until `until`: the later of the one held and
/// the new one (a longer promise is never shortened), naming the latest asker.
pub fn promise(current: Option<Promise>, asker: &str, until: BootInstant) -> Promise {
    let until = current.map_or(until, |p| p.until.max(until));
    Promise { to: Some(asker.to_string()), until }
}

/// The promise an agent with failsafe on keeps from the moment it started: its predecessor
/// on this node may have confirmed a round just before it stopped (a restart, an upgrade, a
/// crash), and that promise lived in its memory alone. So the agent keeps, as if it had
/// promised just before it started, the longest promise it gives (`ttl`, its `failsafe.ttl_ms`:
/// [`answer`] refuses to promise longer). Its predecessor's ran from a receipt before this
/// start, so it ends no later. `None` with failsafe off, which promises nothing.
pub fn promise_at_start(enabled: bool, ttl: Duration, started: BootInstant) -> Option<Promise> {
    enabled.then(|| Promise { to: None, until: started + ttl.min(MAX_PROMISE) })
}

/// The promise in force: of the one given to a peer and the one kept from the start, the one
/// that ends later (still running at `now`); `None` when neither runs.
pub fn promise_in_force(given: Option<Promise>, at_start: Option<Promise>, now: BootInstant) -> Option<Promise> {
    [given, at_start].into_iter().flatten().filter(|p| p.until > now).max_by_key(|p| p.until)
}

/// What an ended coordinator session leaves of this agent's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterSessionEnd {
    /// Keep treating the lock this session held as possibly ours (only a lock read that answers
    /// says it is gone).
    pub keep_held: bool,
    /// Keep the failsafe extension confirmed so far.
    pub keep_failsafe: bool,
}

/// The rule for an ended session: with failsafe on, the lock held and the confirmed extension
/// are kept until a lock read answers (see the module docs); without it the lock is history and
/// the master is demoted at once (its lease ended with the session).
pub fn after_session_end(failsafe_enabled: bool) -> AfterSessionEnd {
    AfterSessionEnd { keep_held: failsafe_enabled, keep_failsafe: failsafe_enabled }
}

/// What one address of a node said to a round's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// The node confirmed there.
    Confirmed,
    /// The node answered there and refused, with why.
    Refused(String),
    /// No usable answer there: none, an HTTP error, an unreadable body, or another node's.
    Nothing(String),
}

/// A node's verdict from what each of its addresses said: one refusal refuses (whatever the
/// other addresses said, the node itself said no); else one confirmation confirms; else why
/// nothing usable was heard, address by address.
pub fn node_verdict(heard: &[Heard]) -> Result<(), String> {
    if let Some(Heard::Refused(why)) = heard.iter().find(|h| matches!(h, Heard::Refused(_))) {
        return Err(why.clone());
    }
    if heard.contains(&Heard::Confirmed) {
        return Ok(());
    }
    let why: Vec<&str> = heard
        .iter()
        .filter_map(|h| match h {
            Heard::Nothing(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    Err(if why.is_empty() { "no address was asked".into() } else { why.join("; ") })
}

/// Asks `node` at `url` and says what was heard.
async fn ask(call: reqwest::RequestBuilder, node: &str, url: &str) -> Heard {
    let answer = match call.send().await {
        Err(e) => return Heard::Nothing(format!("{node} did not answer at {url}: {e}")),
        // Answers are read under the fencing methods' cap: a peer may be the one misbehaving.
        Ok(r) if !r.status().is_success() => {
            let code = r.status();
            return Heard::Nothing(format!(
                "{node} answered {code} at {url}: {}",
                referee_fencing::body_snippet(r).await
            ));
        }
        Ok(r) => referee_fencing::read_json::<FailsafeResponse>(r).await,
    };
    match answer {
        Ok(a) if a.node_id != node => Heard::Nothing(format!("{node}'s address {url} answered as {}", a.node_id)),
        Ok(a) if a.accepted => Heard::Confirmed,
        Ok(a) => Heard::Refused(format!("{node} refused: {}", a.reason)),
        Err(e) => Heard::Nothing(format!("{node} answered unreadably at {url}: {e}")),
    }
}

/// One round: asks every target of [`round_targets`] at every address at once and waits for
/// all answers or `timeout`; each node's answers are weighed by [`node_verdict`]. A refusal of
/// `round_targets` refuses the round without asking.
pub async fn run_round(
    http: &reqwest::Client,
    secret: Option<&str>,
    me: &str,
    token: FencingToken,
    ttl: Duration,
    targets: Result<Vec<Target>, String>,
    timeout: Duration,
) -> RoundOutcome {
    let targets = match targets {
        Ok(t) => t,
        Err(why) => return RoundOutcome::Refused(why),
    };
    let request = FailsafeRequest { node_id: me.to_string(), token, ttl_ms: ttl.as_millis() as u64 };
    let mut asks = tokio::task::JoinSet::new();
    for target in targets {
        let mut each = tokio::task::JoinSet::new();
        for url in target.urls {
            // Another agent reached at this address refuses rather than promise in its place.
            let mut call = http
                .post(format!("{url}{PEER_FAILSAFE_PATH}"))
                .header(crate::admin::ADDRESSEE_HEADER, target.node_id.as_str())
                .timeout(timeout)
                .json(&request);
            if let Some(secret) = secret {
                call = call.bearer_auth(secret);
            }
            let node = target.node_id.clone();
            each.spawn(async move { ask(call, &node, &url).await });
        }
        asks.spawn(async move {
            let mut heard = Vec::new();
            while let Some(joined) = each.join_next().await {
                heard.push(joined.unwrap_or_else(|e| Heard::Nothing(format!("asking failed: {e}"))));
            }
            node_verdict(&heard)
        });
    }
    let mut confirmed = 0;
    while let Some(joined) = asks.join_next().await {
        match joined {
            Ok(Ok(())) => confirmed += 1,
            Ok(Err(why)) => return RoundOutcome::Refused(why),
            Err(e) => return RoundOutcome::Refused(format!("asking a member failed: {e}")),
        }
    }
    RoundOutcome::Confirmed { members: confirmed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use referee_fencing::FenceTarget;

    fn member(node: &str, peer_url: Option<&str>) -> Member {
        Member {
            node_id: node.into(),
            target: FenceTarget::new(node, "127.0.0.1", 1, FencingToken(0)),
            peer_url: peer_url.map(Into::into),
            probe_addr: None,
            candidacy: None,
        }
    }

    /// Configured peers without a `peer_url`.
    fn peers(names: &[&str]) -> Vec<(String, Option<String>)> {
        names.iter().map(|n| (n.to_string(), None)).collect()
    }

    fn target(node: &str, urls: &[&str]) -> Target {
        Target { node_id: node.into(), urls: urls.iter().map(|u| u.to_string()).collect() }
    }

    #[test]
    fn every_configured_peer_is_asked_and_cannot_be_skipped() {
        let members = [member("a", None), member("b", Some("http://b:1")), member("c", Some("http://c:1/"))];
        assert_eq!(
            round_targets("a", &peers(&["b", "c"]), &members),
            Ok(vec![target("b", &["http://b:1"]), target("c", &["http://c:1"])])
        );
        // A registered member the configuration does not name is asked too.
        assert_eq!(
            round_targets("a", &peers(&["c"]), &members),
            Ok(vec![target("c", &["http://c:1"]), target("b", &["http://b:1"])])
        );
        let e = round_targets("a", &peers(&["b"]), &[]).unwrap_err();
        assert!(e.contains("never read"), "{e}");
        // A configured peer the coordinator does not list (its agent hung, its registration
        // lost) and with no configured address cannot be skipped.
        let e = round_targets("a", &peers(&["b", "d"]), &members).unwrap_err();
        assert_eq!(
            e,
            "d is not registered with the coordinator and its `peers` entry gives no peer_url, so it cannot be asked"
        );
        let e = round_targets("a", &peers(&["b"]), &[member("a", None), member("b", None)]).unwrap_err();
        assert_eq!(e, "b publishes no peer API address and its `peers` entry gives no peer_url");
        let e = round_targets(
            "a",
            &peers(&["b"]),
            &[member("a", None), member("b", Some("http://b:1")), member("x", None)],
        )
        .unwrap_err();
        assert_eq!(e, "x publishes no peer API address");
    }

    #[test]
    fn a_configured_peer_url_is_asked_beside_the_registered_one() {
        let configured = |node: &str, url: &str| (node.to_string(), Some(url.to_string()));
        // Registered and configured alike: asked once.
        let members = [member("a", None), member("b", Some("http://b:1"))];
        assert_eq!(
            round_targets("a", &[configured("b", "http://b:1/")], &members),
            Ok(vec![target("b", &["http://b:1"])])
        );
        // Registered elsewhere: both, the registered address first.
        assert_eq!(
            round_targets("a", &[configured("b", "http://b-new:2")], &members),
            Ok(vec![target("b", &["http://b:1", "http://b-new:2"])])
        );
        // Not registered (its agent was down when the list was read), or registered with no
        // address: the configured address alone.
        assert_eq!(
            round_targets("a", &[configured("b", "http://b:1"), configured("c", "http://c:1")], &members),
            Ok(vec![target("b", &["http://b:1"]), target("c", &["http://c:1"])])
        );
        assert_eq!(
            round_targets("a", &[configured("b", "http://b:1")], &[member("a", None), member("b", None)]),
            Ok(vec![target("b", &["http://b:1"])])
        );
        // Configured addresses do not stand in for a member list never read.
        let e = round_targets("a", &[configured("b", "http://b:1")], &[]).unwrap_err();
        assert!(e.contains("never read"), "{e}");
    }

    #[test]
    fn one_refusal_at_any_address_refuses_and_one_confirmation_is_enough_otherwise() {
        let nothing = |why: &str| Heard::Nothing(why.into());
        let refused = |why: &str| Heard::Refused(why.into());
        assert_eq!(node_verdict(&[Heard::Confirmed]), Ok(()));
        assert_eq!(node_verdict(&[nothing("b did not answer at old"), Heard::Confirmed]), Ok(()));
        assert_eq!(node_verdict(&[Heard::Confirmed, refused("b refused: active")]), Err("b refused: active".into()));
        assert_eq!(node_verdict(&[refused("b refused: x"), nothing("y")]), Err("b refused: x".into()));
        assert_eq!(node_verdict(&[nothing("one"), nothing("two")]), Err("one; two".into()));
        assert_eq!(node_verdict(&[]), Err("no address was asked".into()));
    }

    #[test]
    fn a_member_confirms_only_what_it_can_vouch_for() {
        use referee_fencing::HaState;
        let request = FailsafeRequest { node_id: "a".into(), token: FencingToken(45), ttl_ms: 4000 };
        let standby = Some(MasterStatus { state: HaState::Standby, token: FencingToken(40), position: None });
        let facts = AnswerFacts {
            me: "b",
            request: &request,
            master: standby,
            promoted: false,
            held: None,
            lock: LockRead::NoSession,
            keeps: Some(Duration::from_secs(4)),
        };
        let confirm = Answer::Confirm { period: Duration::from_secs(4) };
        assert_eq!(answer(&facts), confirm);
        let peer = |node: &str| LockRead::Read(LockView::Peer { node_id: node.into(), token: FencingToken(45) });
        let refuse = |r: &str| Answer::Refuse(r.into());
        let cases: Vec<(&str, AnswerFacts, Answer)> = vec![
            ("coordinator names the asker", AnswerFacts { lock: peer("a"), ..facts.clone() }, confirm.clone()),
            ("lock free", AnswerFacts { lock: LockRead::Read(LockView::Free), ..facts.clone() }, confirm.clone()),
            (
                "own lock read failed",
                AnswerFacts { lock: LockRead::Failed("timed out".into()), ..facts.clone() },
                refuse("this node could not read the lock (timed out), so it cannot vouch"),
            ),
            (
                "coordinator names a third node",
                AnswerFacts { lock: peer("c"), ..facts.clone() },
                refuse("the coordinator says c is active with token 45"),
            ),
            (
                "own master active",
                AnswerFacts {
                    master: Some(MasterStatus { state: HaState::Active, token: FencingToken(40), position: None }),
                    ..facts.clone()
                },
                refuse("this node's master is active"),
            ),
            (
                "own master unreadable after a promotion",
                AnswerFacts { master: None, promoted: true, ..facts.clone() },
                refuse("this node's master cannot be read and may be active"),
            ),
            (
                "holds the lock",
                AnswerFacts { held: Some(FencingToken(46)), ..facts.clone() },
                refuse("this node holds the lock with token 46"),
            ),
        ];
        for (what, facts, expected) in cases {
            assert_eq!(answer(&facts), expected, "{what}");
        }
        let me = FailsafeRequest { node_id: "b".into(), ..request.clone() };
        assert_eq!(
            answer(&AnswerFacts { request: &me, ..facts.clone() }),
            refuse("the request names this node as the active")
        );
        let absurd = FailsafeRequest { token: FencingToken(u64::MAX), ..request.clone() };
        assert!(matches!(answer(&AnswerFacts { request: &absurd, ..facts.clone() }), Answer::Refuse(_)));
        let long = FailsafeRequest { ttl_ms: u64::MAX, ..request.clone() };
        let keeps_all = AnswerFacts { keeps: Some(Duration::MAX), ..facts.clone() };
        assert_eq!(answer(&AnswerFacts { request: &long, ..keeps_all }), Answer::Confirm { period: MAX_PROMISE });
        // What the node would not keep across a restart of its agent, it does not promise.
        let longer = FailsafeRequest { ttl_ms: 4001, ..request.clone() };
        assert_eq!(
            answer(&AnswerFacts { request: &longer, ..facts.clone() }),
            refuse(
                "the request asks for a promise of 4001 ms, longer than this node keeps one across a restart of its \
                 agent (its failsafe.ttl_ms, 4000 ms); give every node the same failsafe settings"
            )
        );
        assert_eq!(
            answer(&AnswerFacts { keeps: None, ..facts }),
            refuse(
                "failsafe is off on this node, so a promise not to contend would not outlive a restart of its agent"
            )
        );
    }

    /// A restarted agent cannot know what its predecessor promised: with failsafe on it keeps,
    /// from its start, the longest promise it would have given, and the promise in force is
    /// the later of that and any it gives since.
    #[test]
    fn an_agent_keeps_from_its_start_the_longest_promise_it_gives() {
        let at = |ms| BootInstant::from_origin(Duration::from_millis(ms));
        let ttl = Duration::from_millis(10_000);
        let started = promise_at_start(true, ttl, at(1_000));
        assert_eq!(started, Some(Promise { to: None, until: at(11_000) }));
        assert_eq!(promise_at_start(false, ttl, at(1_000)), None);
        // A promise its predecessor gave at 900 (received before this start) ended by 10_900.
        let given = promise(None, "a", at(14_000));
        assert_eq!(promise_in_force(None, started.clone(), at(5_000)), started);
        assert_eq!(promise_in_force(Some(given.clone()), started.clone(), at(5_000)), Some(given.clone()));
        let short = promise(None, "a", at(6_000));
        assert_eq!(promise_in_force(Some(short), started.clone(), at(5_000)), started);
        assert_eq!(promise_in_force(Some(given), started.clone(), at(14_000)), None, "both over");
        assert_eq!(promise_in_force(None, started, at(11_000)), None);
    }

    #[test]
    fn a_promise_is_never_shortened_and_an_ended_session_keeps_failsafe_state() {
        let at = |s| BootInstant::from_origin(Duration::from_secs(s));
        let kept = |to: &str, until| Promise { to: Some(to.into()), until };
        assert_eq!(promise(None, "a", at(10)), kept("a", at(10)));
        assert_eq!(promise(Some(kept("a", at(20))), "c", at(10)), kept("c", at(20)));
        assert_eq!(promise(Some(kept("a", at(5))), "a", at(10)), kept("a", at(10)));
        assert_eq!(promise(Some(Promise { to: None, until: at(20) }), "a", at(10)), kept("a", at(20)));
        assert_eq!(after_session_end(true), AfterSessionEnd { keep_held: true, keep_failsafe: true });
        assert_eq!(after_session_end(false), AfterSessionEnd { keep_held: false, keep_failsafe: false });
    }

    #[tokio::test]
    async fn a_refused_target_list_asks_nobody() {
        let http = reqwest::Client::new();
        let out = run_round(
            &http,
            None,
            "a",
            FencingToken(5),
            Duration::from_secs(4),
            Err("x".into()),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(out, RoundOutcome::Refused("x".into()));
        // Alone in the cluster: nobody else could take over.
        let out =
            run_round(&http, None, "a", FencingToken(5), Duration::from_secs(4), Ok(vec![]), Duration::from_secs(1))
                .await;
        assert_eq!(out, RoundOutcome::Confirmed { members: 0 });
    }

    /// A peer API on a loopback port that answers every failsafe request as `node`, `accepted`
    /// or not; returns its base URL.
    async fn answering(node: &str, accepted: bool) -> String {
        let reply = FailsafeResponse { node_id: node.into(), accepted, reason: "its master is active".into() };
        let app = axum::Router::new()
            .route(PEER_FAILSAFE_PATH, axum::routing::post(move || async move { axum::Json(reply) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn dead_url() -> String {
        // A port nobody listens on: bind, learn it, drop.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        format!("http://127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn a_peer_is_heard_at_its_configured_address_when_its_registered_one_is_gone() {
        let http = reqwest::Client::new();
        let round = |targets| {
            run_round(&http, Some("s"), "a", FencingToken(5), Duration::from_secs(4), targets, Duration::from_secs(2))
        };
        let (dead, b, c, b_refusing) =
            (dead_url(), answering("b", true).await, answering("c", true).await, answering("b", false).await);
        let configured = |url: &str| vec![("b".to_string(), Some(url.to_string()))];
        let members = |url: &str| vec![member("a", None), member("b", Some(url))];
        // Registered at an address nobody answers at any more; confirmed at the configured one.
        let out = round(round_targets("a", &configured(&b), &members(&dead))).await;
        assert_eq!(out, RoundOutcome::Confirmed { members: 1 });
        // The old address now answers as another node: not b's answer, and b's is enough.
        let out = round(round_targets("a", &configured(&b), &members(&c))).await;
        assert_eq!(out, RoundOutcome::Confirmed { members: 1 });
        // Never registered: the configured address alone.
        let out = round(round_targets("a", &configured(&b), &[member("a", None)])).await;
        assert_eq!(out, RoundOutcome::Confirmed { members: 1 });
        // A refusal at either address refuses, whatever the other said.
        let out = round(round_targets("a", &configured(&b), &members(&b_refusing))).await;
        assert_eq!(out, RoundOutcome::Refused("b refused: its master is active".into()));
        // Nothing usable anywhere: the round fails, naming each address.
        let out = round(round_targets("a", &configured(&dead), &members(&c))).await;
        let RoundOutcome::Refused(why) = out else { panic!("{out:?}") };
        assert!(why.contains("answered as c") && why.contains(&format!("did not answer at {dead}")), "{why}");
    }

    #[tokio::test]
    async fn an_unreachable_member_refuses_the_round() {
        let http = reqwest::Client::new();
        // A port nobody listens on: bind, learn it, drop.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let targets = round_targets("a", &peers(&["b"]), &[member("a", None), member("b", Some(&url))]);
        let out =
            run_round(&http, Some("s"), "a", FencingToken(5), Duration::from_secs(4), targets, Duration::from_secs(1))
                .await;
        assert!(matches!(out, RoundOutcome::Refused(ref r) if r.starts_with("b did not answer")), "{out:?}");
    }
}
