//! The admin HTTP listener (`admin_listen`): metrics for Prometheus and the ensemble's
//! membership, read and changed at run time.
//!
//! ```text
//!  GET    /metrics       ─▶ mntr's numbers + Raft progress, Prometheus text format 0.0.4
//!  GET    /members       ─▶ the membership as JSON (each member's lag on the leader)
//!  POST   /members       ─▶ plan_add ─▶ add_learner (blocking)
//!                           [voter: ─▶ until_ready_to_vote ─▶ new_voters_follow ─▶ change_membership]
//!  DELETE /members/{id}  ─▶ plan_remove [voter: ─▶ new_voters_follow] ─▶ change_membership
//!                           (RemoveVoters / RemoveNodes)
//! ```
//!
//! Every membership change is decided by a pure function of the current membership and the
//! request ([`plan_add`], [`plan_remove`]) and carried out by openraft on the leader. A
//! server that does not lead answers 421 Misdirected Request naming the leader and its admin
//! address when it knows them, so the client can ask there (`referee coordinator members`
//! does, once). Bad input is answered 400 with the field named and what to do; every call
//! ends within [`ADMIN_DEADLINE`] (504 past it, saying what state it left behind). A change
//! on top of a joint configuration is refused (409): the leader completes that one first
//! ([`complete_interrupted_changes`]), whoever proposed it. An observer is promoted only when
//! the leader's replication shows it caught up and heard from lately ([`ready_to_vote`]; 409
//! otherwise); a server added as a voter is added as an observer, and made a voter once it
//! qualifies the same way within the deadline (409 otherwise, and it stays an observer). No
//! change of the voters is proposed unless a majority of the new voters follows the leader
//! ([`new_voters_follow`]; 409 otherwise, as Apache ZooKeeper's `NewConfigNoQuorum`): a
//! configuration that cannot commit holds every write, and no later change could undo it. A
//! server running alone refuses every change (400, [`Refusal::Alone`]).
//!
//! What openraft keeps for a member is its peer address (`BasicNode::addr`), the address the
//! peer transport dials. Client and admin addresses come from `servers` in this server's
//! configuration, or from `/zookeeper/config`, which the leader rewrites through the log after
//! every change made here (see [`crate::members_config`]): a member added at run time is known
//! with its addresses on every server. A member known neither way shows them as `null`.
//!
//! The listener has no authentication: bind it to loopback or a management network. It is
//! served with [`referee_http_serve`]'s bounds (a request's headers within 10 s, at most 256
//! connections open), so that no client holding connections idle keeps the server from
//! stopping or takes the file descriptors its client port needs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, RaftMetrics};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::{CoordinatorConfig, Role};
use crate::fourlw::{ensemble_stats, monitor_values, EnsembleStats, MonitorSnapshot};
use crate::members_config::{self, MemberLine, MemberRole};
use crate::peer::PeerNetwork;
use crate::propose::Proposer;
use crate::proto::SessionId;
use crate::raft::Raft;
use crate::state::ServerState;
use crate::txn::{Txn, TxnOp};

/// How long one admin call may take, membership changes included (a new member must catch up
/// with the log before it counts as added).
pub const ADMIN_DEADLINE: Duration = Duration::from_secs(30);

/// How long writing the members into `/zookeeper/config` may take.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(5);

/// The Prometheus text exposition format version served on `/metrics`.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin listener reads and acts on.
#[derive(Clone)]
pub struct AdminContext {
    config: Arc<CoordinatorConfig>,
    raft: Raft,
    state: Arc<Mutex<ServerState>>,
    proposer: Proposer,
    /// The links to the other servers of an ensemble: when each was last heard from.
    peers: Option<PeerNetwork>,
    /// Held while `/zookeeper/config` is read and rewritten.
    publishing: Arc<tokio::sync::Mutex<()>>,
    /// Held from a membership change's first step to its last, by the task that carries it out
    /// ([`change_to_the_end`]) or by the completion of one left joint: one change at a time on
    /// this server, and never a completion racing a change of its own.
    changing: Arc<tokio::sync::Mutex<()>>,
}

/// A member's client and admin addresses, as far as they are known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Addresses {
    client: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

impl AdminContext {
    /// The context of a server's admin listener.
    pub fn new(config: Arc<CoordinatorConfig>, raft: Raft, state: Arc<Mutex<ServerState>>, proposer: Proposer) -> Self {
        AdminContext {
            config,
            raft,
            state,
            proposer,
            peers: None,
            publishing: Arc::default(),
            changing: Arc::default(),
        }
    }

    /// The context of an ensemble server, which hears from the others through `peers`: a
    /// promotion needs the observer heard from lately ([`ready_to_vote`]).
    pub fn hearing_through(mut self, peers: PeerNetwork) -> Self {
        self.peers = Some(peers);
        self
    }

    /// How long ago this server last heard from server `id`; `None` if not since it hung up
    /// or this server started (or this server runs alone).
    fn heard_from(&self, id: u64) -> Option<Duration> {
        self.peers.as_ref().and_then(|p| p.heard_from(id))
    }

    /// This server's change lock, or 409 while one of its changes is being carried out (it
    /// may outlive the call that asked for it: see [`change_to_the_end`]).
    fn one_change_at_a_time(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, Refusal> {
        self.changing.clone().try_lock_owned().map_err(|_| {
            Refusal::Busy(
                "this server is still carrying out an earlier change (GET /members shows `changing: false` once it \
                 is done)"
                    .into(),
            )
        })
    }

    /// Refuses a membership change on a server that runs alone ([`Refusal::Alone`]): its
    /// replication reaches nobody, so no member it added could ever take part.
    fn in_an_ensemble(&self) -> Result<(), Refusal> {
        if self.config.is_ensemble() {
            Ok(())
        } else {
            Err(Refusal::Alone)
        }
    }

    fn addresses(&self, id: u64) -> Addresses {
        let published = published_members(&self.state);
        known_addresses(&self.config, &published, id)
    }

    /// Rewrites `/zookeeper/config` with every member of the membership this server now has,
    /// `added` (a member just added, with the addresses its request gave) among them, unless it
    /// already says exactly that. One rewrite at a time, each reading what the last one wrote,
    /// so a rewrite never drops addresses another has just written. Whether the node now says it.
    async fn publish_members(&self, added: Option<(u64, Addresses)>) -> bool {
        let _one_at_a_time = self.publishing.lock().await;
        let published = published_members(&self.state);
        let lines = member_lines(&MembershipView::of(&self.metrics()), |id| match added {
            Some((a, addresses)) if a == id => addresses,
            _ => known_addresses(&self.config, &published, id),
        });
        if lines.iter().map(|l| (l.id, l)).eq(published.iter().map(|(&id, l)| (id, l))) {
            return true;
        }
        let ids: Vec<u64> = lines.iter().map(|l| l.id).collect();
        match tokio::time::timeout(PUBLISH_DEADLINE, self.proposer.write(ensemble_config_txn(lines))).await {
            Ok(Ok(_)) => {
                info!(members = ?ids, "the members and their addresses were written to /zookeeper/config");
                return true;
            }
            Ok(Err(e)) => warn!("the members' addresses were not written to /zookeeper/config: {e}"),
            Err(_) => warn!("the members' addresses were not written to /zookeeper/config within {PUBLISH_DEADLINE:?}"),
        }
        false
    }

    fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// What this server, leading as `m` says, knows of server `id` following it.
    fn following(&self, m: &RaftMetrics<u64, BasicNode>, id: u64) -> Following {
        let matched = m.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).map(|l| l.index);
        Following { matched, leader_last: m.last_log_index, heard: self.heard_from(id) }
    }

    /// Refuses (409) a change to the voters `new_voters` that could not commit: see
    /// [`new_voters_follow`]. Looked at on the metrics of now, just before proposing.
    fn new_voters_would_commit(&self, new_voters: &BTreeSet<u64>) -> Result<(), Refusal> {
        let m = self.metrics();
        new_voters_follow(m.id, new_voters, |id| self.following(&m, id))
    }

    /// Where server `id` and the configuration stand now, as a sentence: what an answer given
    /// before a change is known to be done says it left behind.
    fn standing(&self, id: u64) -> String {
        let m = self.metrics();
        let view = MembershipView::of(&m);
        let member = match view.role(id) {
            Some(Role::Voter) => format!("server {id} is a voter"),
            Some(Role::Observer) => format!("server {id} is an observer (it counts in no quorum)"),
            None => format!("server {id} is not a member"),
        };
        if view.changing {
            format!(
                "{member} of a joint configuration (voter sets {:?}, a majority of each needed for every write), \
                 which the leader goes on completing (GET /members shows `changing: false` once it has)",
                m.membership_config.membership().get_joint_config()
            )
        } else {
            format!("{member}, and the configuration is not joint (voters {:?})", view.voters)
        }
    }

    /// The refusal a server that does not lead gives, naming the leader it knows.
    fn not_leader(&self, leader: Option<u64>) -> Refusal {
        Refusal::NotLeader { leader, leader_admin: leader.and_then(|l| self.addresses(l).admin) }
    }
}

/// The members `/zookeeper/config` names, as this server has applied it.
pub fn published_members(state: &Mutex<ServerState>) -> BTreeMap<u64, MemberLine> {
    let st = state.lock().unwrap_or_else(|p| p.into_inner());
    match st.tree.get_data("/zookeeper/config", &[]) {
        Ok((Some(data), _)) => members_config::parse(&String::from_utf8_lossy(data)),
        _ => BTreeMap::new(),
    }
}

/// A member's addresses: from this server's `servers`, itself, or `/zookeeper/config`.
fn known_addresses(config: &CoordinatorConfig, published: &BTreeMap<u64, MemberLine>, id: u64) -> Addresses {
    if let Some(s) = config.servers.iter().find(|s| s.id == id) {
        return Addresses { client: Some(s.client), admin: s.admin };
    }
    if id == config.server_id() {
        return Addresses { client: Some(config.listen), admin: config.admin_listen };
    }
    published.get(&id).map_or_else(Addresses::default, |m| Addresses { client: m.client, admin: m.admin })
}

/// The lines of `/zookeeper/config` for a membership, with each member's addresses.
fn member_lines(view: &MembershipView, addresses: impl Fn(u64) -> Addresses) -> Vec<MemberLine> {
    view.peers
        .iter()
        .map(|(&id, peer)| {
            let a = addresses(id);
            let role = if view.voters.contains(&id) { MemberRole::Participant } else { MemberRole::Observer };
            MemberLine { id, role, peer: peer.clone(), client: a.client, admin: a.admin }
        })
        .collect()
}

/// The server-issued transaction that writes `members` into `/zookeeper/config`.
fn ensemble_config_txn(members: Vec<MemberLine>) -> Txn {
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Txn { session: SessionId(0), auth: Vec::new(), time_ms, op: TxnOp::EnsembleConfig { members } }
}

/// How long after a failed rewrite of `/zookeeper/config` it is tried again.
const PUBLISH_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps `/zookeeper/config` in step with the membership while this server leads: at the
/// first leadership of a new ensemble (from its `servers`), when observers of `servers` are
/// added after it, after a leader change that interrupted a rewrite, and for data that predates
/// the node. Looked at once per (term, membership) this server leads settled in, not per entry.
/// Returns when `stop` completes.
pub async fn keep_members_published(ctx: AdminContext, stop: impl Future<Output = ()>) {
    let work = async {
        let mut role = crate::role::RoleWatch::new(&ctx.raft);
        let mut looked_at = None;
        loop {
            let due = {
                let r = role.current();
                let members = role.membership();
                let settled = r.settled && members.membership().get_joint_config().len() == 1;
                settled.then(|| (r.term, *members.log_id()))
            };
            if due.is_some() && due != looked_at && ctx.publish_members(None).await {
                looked_at = due;
            }
            // A failed rewrite is tried again after a while, or at the next change of the role.
            let retry = due.is_some() && due != looked_at;
            tokio::select! {
                changed = role.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(PUBLISH_RETRY), if retry => {}
            }
        }
    };
    tokio::select! {
        () = work => {}
        () = stop => {}
    }
}

/// How long after a failed attempt to complete a joint configuration it is tried again.
const COMPLETE_RETRY: Duration = Duration::from_millis(500);

/// A run of failed attempts to complete a joint configuration, for its log lines.
struct FailedAttempts {
    /// When the first failed.
    since: tokio::time::Instant,
    /// How many have failed.
    attempts: u64,
    /// When the run was last logged (`None`: not yet).
    logged_at: Option<tokio::time::Instant>,
}

/// The voters a settled leader completes the configuration `joint` to: its last set, the goal
/// of the change that proposed it, or `None` when it is not joint.
pub fn completion(joint: &[BTreeSet<u64>]) -> Option<BTreeSet<u64>> {
    match joint {
        [_, .., goal] => Some(goal.clone()),
        _ => None,
    }
}

/// Completes, while this server leads settled, a joint configuration that no change of its own
/// will complete: openraft proposes a change's second step from the call that proposed the
/// first, so a leader that dies between the two leaves the ensemble needing a majority of both
/// voter sets for good. Tried again every [`COMPLETE_RETRY`] until the configuration is no
/// longer joint (a run of failures logged at its first, then once every
/// [`STILL_DOWN_EVERY`](crate::peer::client::STILL_DOWN_EVERY)); never while a change of this
/// server's own is being carried out (it finishes its own, see [`change_to_the_end`]). Returns
/// when `stop` completes.
pub async fn complete_interrupted_changes(ctx: AdminContext, stop: impl Future<Output = ()>) {
    let raft = &ctx.raft;
    let work = async {
        let mut role = crate::role::RoleWatch::new(raft);
        // A run of failed attempts is logged at its first, then as a reminder every
        // STILL_DOWN_EVERY: a joint configuration whose new voters have no majority is tried
        // every COMPLETE_RETRY for as long as they are away.
        let mut failing: Option<FailedAttempts> = None;
        loop {
            let goal = {
                let settled = role.current().settled;
                let members = role.membership();
                completion(members.membership().get_joint_config()).filter(|_| settled).map(|g| (g, members))
            };
            if goal.is_none() {
                if let Some(run) = failing.take() {
                    info!(
                        attempts = run.attempts,
                        "the joint membership this server failed to complete is no longer its to complete (another \
                         leader completed it, or this server no longer leads settled)"
                    );
                }
            }
            // A change of this server's own holds the lock from its first step to its last.
            let ours = goal.as_ref().and_then(|_| ctx.changing.clone().try_lock_owned().ok());
            if let (Some((voters, members)), Some(_ours)) = (&goal, ours) {
                let change = ChangeMembers::ReplaceAllVoters(voters.clone());
                let term = role.current().term;
                let completed = while_leading(&ctx, term, raft.change_membership(change, false));
                let failure = match tokio::time::timeout(ADMIN_DEADLINE, completed).await {
                    Ok(Ok(_)) => {
                        info!(
                            voters = ?voters,
                            was = %members.membership(),
                            failed_attempts = failing.take().map_or(0, |run| run.attempts),
                            "completed a membership change left joint (the leader that proposed it died half-way)"
                        );
                        None
                    }
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("it was not committed within {ADMIN_DEADLINE:?}")),
                };
                if let Some(why) = failure {
                    let now = tokio::time::Instant::now();
                    let run = failing.get_or_insert(FailedAttempts { since: now, attempts: 0, logged_at: None });
                    run.attempts += 1;
                    if crate::peer::client::failure_log_due(false, run.logged_at, now) {
                        run.logged_at = Some(now);
                        warn!(
                            "completing the joint membership {} failed ({} attempts over {:.1} s, the last: {why}); \
                             trying again every {COMPLETE_RETRY:?}, and saying so again every {:?} while it fails",
                            members.membership(),
                            run.attempts,
                            now.duration_since(run.since).as_secs_f64(),
                            crate::peer::client::STILL_DOWN_EVERY
                        );
                    }
                }
            }
            tokio::select! {
                changed = role.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(COMPLETE_RETRY), if goal.is_some() => {}
            }
        }
    };
    tokio::select! {
        () = work => {}
        () = stop => {}
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` completes, with the bounds of
/// [`referee_http_serve`]: a request's headers, and then its body, within their timeouts, at
/// most [`referee_http_serve::MAX_CONNECTIONS`] open (more wait in the backlog) and a quarter
/// of them from one address (more closed as they arrive), and a bounded drain at shutdown.
/// Without them, a connection held idle on this port would outlive the
/// server's shutdown, and enough of them would take the file descriptors its client and peer
/// ports accept with.
pub async fn serve(
    listener: TcpListener,
    ctx: AdminContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/members", get(list_members).post(add_member))
        .route("/members/:id", delete(remove_member))
        .with_state(ctx);
    referee_http_serve::serve_until("admin HTTP listener", listener, router, shutdown).await
}

/// Why an admin request was not carried out; each maps to one HTTP status.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    /// The request is malformed or names an impossible change (400).
    #[error("`{field}` {problem}")]
    BadRequest {
        /// The request field at fault.
        field: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
    /// This server does not lead; only the leader changes the membership (421).
    #[error("this server does not lead; send the request to the leader ({})", leader_hint(*leader, *leader_admin))]
    NotLeader {
        /// The leader this server knows of.
        leader: Option<u64>,
        /// Its admin address, when known.
        leader_admin: Option<SocketAddr>,
    },
    /// This server runs alone (no ensemble `servers`), so it has no membership to change (400):
    /// a learner it added could never be reached, and a voter it added would leave a joint
    /// configuration its single vote could never commit, holding every write for good.
    #[error(
        "this server runs alone (its configuration lists no ensemble `servers`), so it has no membership to \
         change: membership changes need an ensemble. To make it one, restart it with an ensemble configuration \
         (`servers` naming it and the others, `cluster_id` as its data directory's identity file gives it), then \
         add the others through it"
    )]
    Alone,
    /// Another change is still being committed (409).
    #[error("another membership change is in progress: {0}; retry once it has committed")]
    Busy(String),
    /// The server to make a voter (an observer to promote, or a server just added as one) is
    /// not following the leader closely enough to vote (409).
    #[error("{0}")]
    NotReady(String),
    /// The voters of the configuration the change would make include no majority that follows
    /// the leader, so it could never commit, nor any write after it (409; Apache ZooKeeper's
    /// `NewConfigNoQuorum`).
    #[error("{0}")]
    NoQuorum(String),
    /// The change did not complete within [`ADMIN_DEADLINE`] (504).
    #[error("{0}")]
    Timeout(String),
    /// Replication failed (500).
    #[error("replication failed: {0}")]
    Raft(String),
}

fn leader_hint(leader: Option<u64>, admin: Option<SocketAddr>) -> String {
    match (leader, admin) {
        (Some(l), Some(a)) => format!("server {l}, admin address {a}"),
        (Some(l), None) => format!("server {l}, whose admin address this server does not know"),
        (None, _) => "none is known yet; retry shortly".into(),
    }
}

/// The JSON body of every refusal.
#[derive(Debug, Serialize, Deserialize)]
pub struct RefusalBody {
    /// The sentence saying what is wrong and what to do.
    pub error: String,
    /// The request field at fault, for a 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The leader's id, for a 421.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    /// The leader's admin address, for a 421.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_admin: Option<SocketAddr>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match &self {
            Refusal::BadRequest { .. } | Refusal::Alone => StatusCode::BAD_REQUEST,
            Refusal::NotLeader { .. } => StatusCode::MISDIRECTED_REQUEST,
            Refusal::Busy(_) | Refusal::NotReady(_) | Refusal::NoQuorum(_) => StatusCode::CONFLICT,
            Refusal::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Raft(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut body = RefusalBody { error: self.to_string(), field: None, leader: None, leader_admin: None };
        match self {
            Refusal::BadRequest { field, .. } => body.field = Some(field.to_string()),
            Refusal::NotLeader { leader, leader_admin } => (body.leader, body.leader_admin) = (leader, leader_admin),
            Refusal::Alone
            | Refusal::Busy(_)
            | Refusal::NotReady(_)
            | Refusal::NoQuorum(_)
            | Refusal::Timeout(_)
            | Refusal::Raft(_) => {}
        }
        (status, Json(body)).into_response()
    }
}

fn bad(field: &'static str, problem: impl Into<String>) -> Refusal {
    Refusal::BadRequest { field, problem: problem.into() }
}

// ---------------------------------------------------------------------------------------------
// The membership and the pure decisions on it.

/// The membership as openraft holds it: voters, observers (learners) and their peer addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipView {
    /// Voter ids.
    pub voters: BTreeSet<u64>,
    /// Every member's peer address (voters and observers), by id.
    pub peers: BTreeMap<u64, String>,
    /// Whether a joint configuration is being committed.
    pub changing: bool,
}

impl MembershipView {
    /// The view of a server's Raft metrics.
    pub fn of(m: &RaftMetrics<u64, BasicNode>) -> Self {
        let membership = m.membership_config.membership();
        MembershipView {
            voters: membership.voter_ids().collect(),
            peers: membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
            changing: membership.get_joint_config().len() > 1,
        }
    }

    /// Refuses a change on top of one in progress: while the configuration is joint a server
    /// counts as a voter in either set, so no new change could be decided from it. The leader
    /// completes it ([`complete_interrupted_changes`]) if no call of its own does.
    fn not_changing(&self) -> Result<(), Refusal> {
        if !self.changing {
            return Ok(());
        }
        Err(Refusal::Busy(
            "the configuration is joint, and the leader completes it (GET /members shows `changing: false` once \
             it has)"
                .into(),
        ))
    }

    fn role(&self, id: u64) -> Option<Role> {
        match (self.voters.contains(&id), self.peers.contains_key(&id)) {
            (true, _) => Some(Role::Voter),
            (false, true) => Some(Role::Observer),
            (false, false) => None,
        }
    }
}

/// `POST /members`: the server to add (or the observer to promote to voter).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// Its server id (its `server_id`): non-zero, not a member yet (unless promoting).
    pub id: u64,
    /// Its client address (its `listen`).
    pub client: SocketAddr,
    /// Its peer address, which the other servers dial.
    pub peer: SocketAddr,
    /// `voter` or `observer`.
    pub role: Role,
    /// Its admin address (its `admin_listen`), if it has one.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
}

/// What an accepted `POST /members` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddPlan {
    /// Add a new observer: a learner, once caught up with the log.
    AddObserver {
        /// The new member.
        id: u64,
        /// Its peer address.
        peer: String,
    },
    /// Add a new voter: a learner first, caught up, then a voter.
    AddVoter {
        /// The new member.
        id: u64,
        /// Its peer address.
        peer: String,
    },
    /// Make an observer a voter.
    Promote {
        /// The observer.
        id: u64,
    },
}

/// Decides what `POST /members` does to the membership `view`, or why it must not.
pub fn plan_add(view: &MembershipView, req: &AddMember) -> Result<AddPlan, Refusal> {
    if req.id == 0 {
        return Err(bad("id", "is 0; server ids start at 1: use the new server's `server_id`"));
    }
    for (field, addr) in [("client", req.client), ("peer", req.peer)].into_iter().chain(req.admin.map(|a| ("admin", a)))
    {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(bad(field, format!("is {addr}; give the address the other servers and clients can reach")));
        }
    }
    view.not_changing()?;
    let peer = req.peer.to_string();
    match view.role(req.id) {
        Some(Role::Voter) => {
            Err(bad("id", format!("{} is already a voter; pick an unused id, or remove it first", req.id)))
        }
        Some(Role::Observer) if req.role == Role::Observer => {
            Err(bad("id", format!("{} is already an observer; pick an unused id, or remove it first", req.id)))
        }
        Some(Role::Observer) if view.peers.get(&req.id) != Some(&peer) => Err(bad(
            "peer",
            format!(
                "is {peer} but observer {} has peer address {}; promoting keeps the address: give the same one",
                req.id,
                view.peers.get(&req.id).map_or("?", String::as_str)
            ),
        )),
        Some(Role::Observer) => Ok(AddPlan::Promote { id: req.id }),
        None => {
            if let Some((other, _)) = view.peers.iter().find(|(_, p)| **p == peer) {
                return Err(bad(
                    "peer",
                    format!("is {peer}, the peer address of member {other}; every server needs its own"),
                ));
            }
            Ok(match req.role {
                Role::Voter => AddPlan::AddVoter { id: req.id, peer },
                Role::Observer => AddPlan::AddObserver { id: req.id, peer },
            })
        }
    }
}

/// What an accepted `DELETE /members/{id}` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemovePlan {
    /// Remove a voter (and its node entry), the leader included.
    RemoveVoter(u64),
    /// Remove an observer.
    RemoveObserver(u64),
}

/// Decides what `DELETE /members/{id}` does, or why it must not. The leader may remove
/// itself: its node leaves the membership with it (`retain` false), so openraft's leader steps
/// down once the change is committed and applied, and the other voters elect one of them
/// (no server hears a leader any more, so their pre-votes are granted).
pub fn plan_remove(view: &MembershipView, id: &str) -> Result<RemovePlan, Refusal> {
    let id: u64 =
        id.parse().map_err(|_| bad("id", format!("is {id:?}; give the numeric server id of the member to remove")))?;
    view.not_changing()?;
    match view.role(id) {
        None => Err(bad(
            "id",
            format!("{id} is not a member (members: {:?}); nothing to remove", view.peers.keys().collect::<Vec<_>>()),
        )),
        Some(Role::Observer) => Ok(RemovePlan::RemoveObserver(id)),
        Some(Role::Voter) if view.voters.len() == 1 => Err(bad(
            "id",
            format!("{id} is the last voter; an ensemble needs one. Add another voter before removing it"),
        )),
        Some(Role::Voter) => Ok(RemovePlan::RemoveVoter(id)),
    }
}

/// How many entries an observer may trail the leader's log by and still be promoted to voter:
/// a few batches in flight, not a log to fetch while every write waits for it.
pub const PROMOTE_MAX_LAG: u64 = 100;

/// How recently the leader must have heard from an observer to promote it: thirty of its
/// heartbeats, as long as a server waiting for a leader counts a peer as heard lately.
/// Replication metrics alone do not show a dead observer: one that was caught up when it
/// stopped still matches the log of a leader that has had no writes since. (A process that
/// ends has its connections closed by its kernel, which the leader notices at once.)
pub const PROMOTE_HEARD_WITHIN: Duration = Duration::from_secs(3);

/// What the leader knows of an observer it is asked to promote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Following {
    /// The highest index the leader knows it holds (`None`: none known).
    pub matched: Option<u64>,
    /// The leader's last log index.
    pub leader_last: Option<u64>,
    /// How long ago the leader last heard from it (`None`: not since it hung up, or since
    /// the leader started).
    pub heard: Option<Duration>,
}

impl Following {
    /// The entries it trails the leader's log by, `None` when the leader knows none it holds.
    fn lag(&self) -> Option<u64> {
        match (self.matched, self.leader_last) {
            (Some(m), Some(last)) => Some(last.saturating_sub(m)),
            (None, None) => Some(0),
            _ => None,
        }
    }

    /// Whether it follows closely enough to vote: at most [`PROMOTE_MAX_LAG`] entries behind,
    /// heard from within [`PROMOTE_HEARD_WITHIN`].
    pub fn keeps_up(&self) -> bool {
        self.lag().is_some_and(|l| l <= PROMOTE_MAX_LAG) && self.heard.is_some_and(|h| h <= PROMOTE_HEARD_WITHIN)
    }

    /// What the leader knows of it and what voting needs, for a refusal.
    fn describe(&self) -> String {
        let matched = self.matched.map_or("no matched index".into(), |m| format!("matched index {m}"));
        let last = self.leader_last.map_or("an empty log".into(), |l| format!("last index {l}"));
        let lag = self.lag().map_or("an unknown lag".into(), |l| format!("lag {l}"));
        let heard = match self.heard {
            Some(h) => format!("last heard {} ms ago", h.as_millis()),
            None => "not heard from since it hung up or this leader started".into(),
        };
        format!(
            "the leader knows {matched} of its {last} ({lag}; at most {PROMOTE_MAX_LAG} allowed), {heard} (within {} \
             ms needed)",
            PROMOTE_HEARD_WITHIN.as_millis()
        )
    }
}

/// Whether observer `id`, following the leader as `f` says, may become a voter: openraft's
/// promotion checks nothing, and a voter that cannot follow the log would count in every
/// quorum from the joint configuration on. With one voter before it, the joint configuration
/// itself could never commit, nor the removal that would undo it; with more, the ensemble would
/// survive one failure fewer. Refused (409) naming what the leader knows of it.
pub fn ready_to_vote(id: u64, f: Following) -> Result<(), Refusal> {
    if f.keeps_up() {
        return Ok(());
    }
    Err(Refusal::NotReady(format!(
        "observer {id} is not ready to vote: {}. As a voter it would count in every quorum, and writes would wait \
         for it. Start it, or wait for it to catch up (GET /members shows its lag and `heard_ms`), then repeat the \
         request",
        f.describe()
    )))
}

/// Whether the configuration whose voters are `new_voters` could commit, proposed by `leader`:
/// a majority of them must follow it ([`Following::keeps_up`], the leader itself counted when
/// it stays a voter), as `follow` tells for each. Openraft checks nothing here, and puts a
/// configuration in force as soon as it is appended: one whose new voters have no majority
/// that follows never commits, every write after it waits with it, and no change can undo it
/// (the configuration stays joint) until enough of them are back. Apache ZooKeeper refuses such
/// a reconfiguration up front (`NewConfigNoQuorum`); so does this (409, naming each voter the
/// new configuration would depend on and what the leader knows of it).
pub fn new_voters_follow(
    leader: u64,
    new_voters: &BTreeSet<u64>,
    follow: impl Fn(u64) -> Following,
) -> Result<(), Refusal> {
    let mut following = 0;
    let mut lines = Vec::new();
    for &id in new_voters {
        if id == leader {
            following += 1;
            lines.push(format!("server {id} leads"));
            continue;
        }
        let f = follow(id);
        let verdict = if f.keeps_up() { "follows" } else { "does not follow" };
        following += usize::from(f.keeps_up());
        lines.push(format!("server {id} {verdict}: {}", f.describe()));
    }
    let needed = new_voters.len() / 2 + 1;
    if following >= needed {
        return Ok(());
    }
    let follow = if following == 1 { "follows" } else { "follow" };
    Err(Refusal::NoQuorum(format!(
        "the new configuration would have voters {new_voters:?}, and every write, this change first, would need {needed} \
         of them, but only {following} {follow} this leader ({}). Proposed, it would stop every write until enough of \
         them are back, with no change able to undo it. Bring back the voters that do not follow (or remove a voter \
         that is down first: the others then decide without it), then repeat the request",
        lines.join("; ")
    )))
}

// ---------------------------------------------------------------------------------------------
// Handlers: thin drivers around the plans.

/// One member in `GET /members`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberInfo {
    /// Server id.
    pub id: u64,
    /// `voter` or `observer`.
    pub role: String,
    /// Peer address, as openraft holds it.
    pub peer: String,
    /// Client address, when known.
    pub client: Option<SocketAddr>,
    /// Admin address, when known.
    pub admin: Option<SocketAddr>,
    /// On the leader: the highest log index the member is known to hold (the leader's own
    /// last index for itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<u64>,
    /// On the leader: entries it trails the leader by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// On the leader of an ensemble: how many ms ago it last heard from the member (absent
    /// if not since the member hung up or the leader started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard_ms: Option<u64>,
}

/// The body of `GET /members` (and of a successful change).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Members {
    /// The server answering.
    pub this_server: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Whether a membership change is being committed.
    pub changing: bool,
    /// Every member, by id.
    pub members: Vec<MemberInfo>,
}

fn members_of(ctx: &AdminContext, m: &RaftMetrics<u64, BasicNode>) -> Members {
    let view = MembershipView::of(m);
    let stats = ensemble_stats(m);
    let members = view
        .peers
        .iter()
        .map(|(&id, peer)| {
            let a = ctx.addresses(id);
            let (matched, lag) = match &stats {
                Some(_) if id == m.id => (m.last_log_index, Some(0)),
                Some(s) => s.replicas.iter().find(|r| r.id == id).map_or((None, None), |r| (r.matched, r.lag)),
                None => (None, None),
            };
            let role = if view.voters.contains(&id) { "voter" } else { "observer" };
            let heard_ms = match &stats {
                Some(_) if id != m.id => ctx.heard_from(id).map(|h| h.as_millis() as u64),
                _ => None,
            };
            MemberInfo {
                id,
                role: role.into(),
                peer: peer.clone(),
                client: a.client,
                admin: a.admin,
                matched,
                lag,
                heard_ms,
            }
        })
        .collect();
    Members { this_server: m.id, leader: m.current_leader, changing: view.changing, members }
}

async fn list_members(State(ctx): State<AdminContext>) -> Json<Members> {
    Json(members_of(&ctx, &ctx.metrics()))
}

async fn add_member(State(ctx): State<AdminContext>, body: axum::body::Bytes) -> Result<Json<Members>, Refusal> {
    let req: AddMember = serde_json::from_slice(&body).map_err(|e| {
        bad(
            "body",
            format!(
                "is not a valid member: {e}; send {{\"id\": N, \"client\": \"IP:port\", \"peer\": \"IP:port\", \
                 \"role\": \"voter\" or \"observer\", \"admin\": \"IP:port\" (optional)}} (addresses, not host names)"
            ),
        )
    })?;
    ctx.in_an_ensemble()?;
    let m = ctx.metrics();
    if m.current_leader != Some(m.id) {
        return Err(ctx.not_leader(m.current_leader));
    }
    let ours = ctx.one_change_at_a_time()?;
    let term = m.current_term;
    let now = ctx.metrics();
    let view = MembershipView::of(&now);
    let plan = plan_add(&view, &req)?;
    let voters_after: BTreeSet<u64> = view.voters.iter().copied().chain([req.id]).collect();
    if let AddPlan::Promote { id } = plan {
        ready_to_vote(id, ctx.following(&now, id))?;
        ctx.new_voters_would_commit(&voters_after)?;
    }
    info!(?plan, "membership change requested");
    let deadline = tokio::time::Instant::now() + ADMIN_DEADLINE;
    let added = Some((req.id, Addresses { client: Some(req.client), admin: req.admin }));
    match &plan {
        AddPlan::AddObserver { id, peer } => {
            let learner = while_leading(&ctx, term, ctx.raft.add_learner(*id, BasicNode { addr: peer.clone() }, true));
            match tokio::time::timeout_at(deadline, learner).await {
                Ok(done) => done.map(drop).map_err(|e| write_refusal(&ctx, e))?,
                Err(_) => {
                    return Err(Refusal::Timeout(format!(
                        "server {id} did not catch up with the log within {ADMIN_DEADLINE:?}: {}. Start it (its \
                         `servers` must list this ensemble), or check that it listens at its peer address {peer}; \
                         or remove it with DELETE /members/{id}",
                        ctx.standing(*id)
                    )))
                }
            }
            // A change of voters says so, and publishes the members, from its own task
            // (`change_to_the_end`).
            info!(?plan, "membership changed");
            ctx.publish_members(added).await;
        }
        AddPlan::AddVoter { id, peer } => {
            // A voter counts in every quorum from the joint configuration on, so it is added
            // as an observer first and made a voter only once it follows as a promotion must
            // ([`ready_to_vote`]). Openraft's blocking wait is not that: it ends once the lag
            // is within `replication_lag_threshold`, and counts a server that acknowledged
            // nothing as lagging by the log's length, so on a short log it ends at once for a
            // server that is not there at all.
            let learner = while_leading(&ctx, term, ctx.raft.add_learner(*id, BasicNode { addr: peer.clone() }, true));
            match tokio::time::timeout_at(deadline, learner).await {
                Ok(done) => drop(done.map_err(|e| write_refusal(&ctx, e))?),
                Err(_) => return Err(not_made_a_voter(&ctx, *id, peer)),
            }
            until_ready_to_vote(&ctx, *id, peer, term, deadline).await?;
            ctx.new_voters_would_commit(&voters_after).map_err(|refusal| match refusal {
                Refusal::NoQuorum(why) => Refusal::NoQuorum(format!(
                    "{why}. Meanwhile {}; DELETE /members/{id} removes it",
                    ctx.standing(*id)
                )),
                other => other,
            })?;
            let change = ChangeMembers::AddVoterIds(BTreeSet::from([*id]));
            change_voters(&ctx, change, added, ours, deadline, *id, format!("making server {id} a voter")).await?;
        }
        AddPlan::Promote { id } => {
            let change = ChangeMembers::AddVoterIds(BTreeSet::from([*id]));
            change_voters(&ctx, change, added, ours, deadline, *id, format!("making server {id} a voter")).await?;
        }
    }
    Ok(Json(members_of(&ctx, &ctx.metrics())))
}

/// How often the leader looks again at a server it waits for to follow closely enough to
/// vote: its replication metrics wake the wait when they move, when it was last heard does not.
const READY_POLL: Duration = Duration::from_millis(100);

/// Waits until server `id`, just added as an observer, follows the leader of `term` closely
/// enough to vote ([`ready_to_vote`]), at most until `deadline`. Past it the server stays an
/// observer, and the refusal says so ([`not_made_a_voter`]).
async fn until_ready_to_vote(
    ctx: &AdminContext,
    id: u64,
    peer: &str,
    term: u64,
    deadline: tokio::time::Instant,
) -> Result<(), Refusal> {
    let mut metrics = ctx.raft.metrics();
    let ready = async {
        loop {
            let m = metrics.borrow_and_update().clone();
            if m.current_term != term || m.current_leader != Some(m.id) {
                return Err(ctx.not_leader(m.current_leader));
            }
            if ctx.following(&m, id).keeps_up() {
                return Ok(());
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() {
                    return Err(Refusal::Raft("this server is shutting down".into()));
                },
                () = tokio::time::sleep(READY_POLL) => {}
            }
        }
    };
    match tokio::time::timeout_at(deadline, ready).await {
        Ok(done) => done,
        Err(_) => Err(not_made_a_voter(ctx, id, peer)),
    }
}

/// The refusal (409) of a voter added that did not follow the leader closely enough within
/// [`ADMIN_DEADLINE`]: what the leader knows of it, where it stands (an observer: no change of
/// the voters was proposed), and what to do.
fn not_made_a_voter(ctx: &AdminContext, id: u64, peer: &str) -> Refusal {
    let m = ctx.metrics();
    // A refusal of the link names the cause itself (another cluster, a duplicate id, a
    // replaced data directory): what the operator must fix, ahead of the lag it caused.
    if let Some(why) = ctx.peers.as_ref().and_then(|p| p.refused_by(id)) {
        return Refusal::NotReady(format!(
            "server {id} was not made a voter: {why}. No change of the voters was proposed: {}. Fix its \
             configuration or data directory, then make it a voter with the same request; or remove it with \
             DELETE /members/{id}",
            ctx.standing(id)
        ));
    }
    Refusal::NotReady(format!(
        "server {id} was not made a voter: it did not follow the leader closely enough within {ADMIN_DEADLINE:?} \
         ({}), and as a voter it would count in every quorum. No change of the voters was proposed: {}. Start it \
         (its `servers` must list this ensemble), or check that it listens at its peer address {peer}, then make \
         it a voter with the same request; or remove it with DELETE /members/{id}",
        ctx.following(&m, id).describe(),
        ctx.standing(id)
    ))
}

async fn remove_member(State(ctx): State<AdminContext>, Path(id): Path<String>) -> Result<Json<Members>, Refusal> {
    ctx.in_an_ensemble()?;
    let m = ctx.metrics();
    if m.current_leader != Some(m.id) {
        return Err(ctx.not_leader(m.current_leader));
    }
    let ours = ctx.one_change_at_a_time()?;
    let view = MembershipView::of(&ctx.metrics());
    let plan = plan_remove(&view, &id)?;
    let (id, change) = match plan {
        RemovePlan::RemoveVoter(id) => {
            let mut voters_after = view.voters.clone();
            voters_after.remove(&id);
            ctx.new_voters_would_commit(&voters_after)?;
            (id, ChangeMembers::RemoveVoters(BTreeSet::from([id])))
        }
        RemovePlan::RemoveObserver(id) => (id, ChangeMembers::RemoveNodes(BTreeSet::from([id]))),
    };
    info!(?plan, "membership change requested");
    let deadline = tokio::time::Instant::now() + ADMIN_DEADLINE;
    change_voters(&ctx, change, None, ours, deadline, id, format!("the removal of server {id}")).await?;
    Ok(Json(members_of(&ctx, &ctx.metrics())))
}

/// Carries `change` out ([`change_to_the_end`]), answering for it until `deadline`; past it,
/// 504 saying that `what` was not committed yet and where server `id` and the configuration
/// stand then.
async fn change_voters(
    ctx: &AdminContext,
    change: ChangeMembers<u64, BasicNode>,
    added: Option<(u64, Addresses)>,
    ours: tokio::sync::OwnedMutexGuard<()>,
    deadline: tokio::time::Instant,
    id: u64,
    what: String,
) -> Result<(), Refusal> {
    match tokio::time::timeout_at(deadline, change_to_the_end(ctx, change, added, ours, deadline)).await {
        Ok(done) => done.map_err(|e| write_refusal(ctx, e)),
        Err(_) => Err(Refusal::Timeout(format!(
            "{what} was not committed within {ADMIN_DEADLINE:?}: {}. A change commits once a majority of the old \
             voters and one of the new have acknowledged it; GET /members shows each member's lag and `heard_ms`",
            ctx.standing(id)
        ))),
    }
}

/// Carries `change` out in a task of its own, which holds `ours` (this server's change lock)
/// until both of openraft's steps are done or have failed: the second step (the new voters
/// alone) is proposed by the call that proposed the first, so a call dropped in between (the
/// HTTP client gone, the deadline passed) would leave the configuration joint. Waits for the
/// task until `deadline`; the task itself gives up a change not committed by twice that,
/// leaving a joint configuration to the completion ([`complete_interrupted_changes`]). Once
/// the change is made, the task rewrites `/zookeeper/config`, with `added`'s addresses.
async fn change_to_the_end(
    ctx: &AdminContext,
    change: ChangeMembers<u64, BasicNode>,
    added: Option<(u64, Addresses)>,
    ours: tokio::sync::OwnedMutexGuard<()>,
    deadline: tokio::time::Instant,
) -> Result<(), RaftError<u64, ClientWriteError<u64, BasicNode>>> {
    let ctx = ctx.clone();
    let term = ctx.metrics().current_term;
    let task = tokio::spawn(async move {
        let _ours = ours;
        let outcome = tokio::time::timeout_at(
            deadline + ADMIN_DEADLINE,
            while_leading(&ctx, term, ctx.raft.change_membership(change.clone(), false)),
        );
        match outcome.await {
            Ok(done) => {
                if done.is_ok() {
                    info!(?change, "membership changed");
                    // A failed rewrite is logged, and the change stands: the member is listed
                    // at the leader's next rewrite, its client and admin addresses then known
                    // only where `servers` lists it.
                    ctx.publish_members(added).await;
                }
                Some(done.map(drop))
            }
            Err(_) => {
                warn!(?change, "a membership change was not committed within {:?}; given up", ADMIN_DEADLINE * 2);
                None
            }
        }
    });
    match task.await {
        Ok(Some(done)) => done,
        // Past the caller's deadline, which answers first.
        Ok(None) => std::future::pending().await,
        Err(_) => Err(RaftError::Fatal(openraft::error::Fatal::Panicked)),
    }
}

/// Runs `step` (a membership change of openraft's, proposed by this server as leader of
/// `term`) until it ends or this server stops leading that term, whichever comes first; then
/// `ForwardToLeader`. Openraft answers a change once this server applies its entry, and a
/// server that lost its leadership and then installed a snapshot from the next leader never
/// applies that entry itself: the change's call would wait for ever, holding this server's
/// change lock (every later change refused as in progress, the completion of a joint
/// configuration held back) long after the next leader has taken it over.
async fn while_leading<T>(
    ctx: &AdminContext,
    term: u64,
    step: impl Future<Output = Result<T, RaftError<u64, ClientWriteError<u64, BasicNode>>>>,
) -> Result<T, RaftError<u64, ClientWriteError<u64, BasicNode>>> {
    tokio::select! {
        done = step => done,
        leader = crate::role::no_longer_leading(&ctx.raft, term) => {
            warn!(term, new_leader = ?leader, "this server stopped leading during a membership change: the leader \
                   of the next term completes or drops it");
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(openraft::error::ForwardToLeader {
                leader_id: leader,
                leader_node: None,
            })))
        }
    }
}

fn write_refusal(ctx: &AdminContext, e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Refusal {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ctx.not_leader(f.leader_id),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            use openraft::error::ChangeMembershipError as C;
            match c {
                C::InProgress(p) => Refusal::Busy(p.to_string()),
                C::EmptyMembership(e) => bad("id", format!("would leave no voter ({e})")),
                C::LearnerNotFound(l) => bad("id", format!("{l}: add it as an observer first")),
            }
        }
        RaftError::Fatal(f) => {
            warn!("membership change failed: {f}");
            Refusal::Raft(f.to_string())
        }
    }
}

async fn metrics(State(ctx): State<AdminContext>) -> Response {
    let m = ctx.metrics();
    let ensemble = ensemble_stats(&m);
    let mode = crate::fourlw::mode_of(&m);
    let (taken, serving, counters, slow_syncs) = {
        let st = ctx.state.lock().unwrap_or_else(|p| p.into_inner());
        let slow_syncs = st.log_end.as_ref().map_or(0, |l| l.slow_syncs());
        (MonitorSnapshot::of(&st), st.refusing_clients.is_none(), st.counters.clone(), slow_syncs)
    };
    // Counted with the lock let go: the walks of the tree never hold up the writers.
    let values = monitor_values(&taken, mode, ensemble.as_ref());
    let mut text = prometheus_text(&values, &m, ensemble.as_ref(), serving);
    // ZooKeeper counts these as fsync_threshold_exceed_count over JMX, not in mntr.
    let _ = writeln!(
        text,
        "# HELP referee_coordinator_log_slow_fdatasyncs_total fdatasyncs of the log that took a second or more \
         (ZooKeeper's fsync.warningthresholdms at its default).\n\
         # TYPE referee_coordinator_log_slow_fdatasyncs_total counter\n\
         referee_coordinator_log_slow_fdatasyncs_total {slow_syncs}"
    );
    if ensemble.is_some() {
        text.push_str(&election_counters(&counters));
    }
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], text).into_response()
}

// ---------------------------------------------------------------------------------------------
// Prometheus text.

/// The `mntr` keys that only ever grow; every other numeric one is a gauge.
const COUNTERS: [&str; 4] = ["packets_sent", "packets_received", "auth_failed_count", "connection_rejected"];

/// Renders `mntr`'s values (ZooKeeper's Prometheus names: the key without `zk_`) and Raft's
/// progress (`referee_coordinator_raft_*`) in the Prometheus text format 0.0.4. Non-numeric
/// `mntr` values (the version, the server state) are left out; the state is
/// `referee_coordinator_raft_is_leader` and the role gauges. `serving` says whether the server
/// takes sessions: not while it has found no leader since it started, nor while it is past its
/// staleness bound (its process is up, its four-letter words may answer, its clients go
/// elsewhere).
pub fn prometheus_text(
    mntr: &[(&'static str, String)],
    m: &RaftMetrics<u64, BasicNode>,
    ensemble: Option<&EnsembleStats>,
    serving: bool,
) -> String {
    let mut out = String::new();
    for (key, value) in mntr {
        let name = key.strip_prefix("zk_").unwrap_or(key);
        if value.parse::<f64>().is_err() {
            continue;
        }
        let kind = if COUNTERS.contains(&name) { "counter" } else { "gauge" };
        let _ = writeln!(out, "# HELP {name} ZooKeeper mntr {key}\n# TYPE {name} {kind}\n{name} {value}");
    }
    let raft = [
        ("raft_term", "The Raft term this server is in.", m.current_term),
        ("raft_last_log_index", "The last index in this server's Raft log.", m.last_log_index.unwrap_or(0)),
        (
            "raft_applied_index",
            "The last log index applied to this server's tree (its zxid).",
            m.last_applied.map_or(0, |l| l.index),
        ),
        ("raft_is_leader", "1 on the leader, else 0.", u64::from(m.state == openraft::ServerState::Leader)),
        (
            "serving",
            "1 while this server takes sessions; 0 while it has found no leader since it started or is past its staleness bound.",
            u64::from(serving),
        ),
    ];
    for (name, help, value) in raft {
        let _ = writeln!(
            out,
            "# HELP referee_coordinator_{name} {help}\n# TYPE referee_coordinator_{name} gauge\n\
             referee_coordinator_{name} {value}"
        );
    }
    if let Some(e) = ensemble {
        let _ = writeln!(
            out,
            "# HELP referee_coordinator_raft_matched_index The highest log index the leader knows a member holds.\n\
             # TYPE referee_coordinator_raft_matched_index gauge"
        );
        for r in e.replicas.iter().filter(|r| r.matched.is_some()) {
            let _ = writeln!(
                out,
                "referee_coordinator_raft_matched_index{{server=\"{}\"}} {}",
                r.id,
                r.matched.unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP referee_coordinator_raft_replication_lag Entries a member trails the leader's log by.\n\
             # TYPE referee_coordinator_raft_replication_lag gauge"
        );
        for r in e.replicas.iter() {
            if let Some(lag) = r.lag {
                let _ = writeln!(out, "referee_coordinator_raft_replication_lag{{server=\"{}\"}} {lag}", r.id);
            }
        }
    }
    out
}

/// The elections an ensemble server took part in as a candidate, as Prometheus counters: its
/// pre-votes (see [`crate::staleness`]), those no quorum granted, and the elections it called.
/// A voter cut off from its leader shows a growing count of refused pre-votes and no
/// elections; one that keeps calling elections is a leader being deposed again and again.
pub fn election_counters(c: &crate::state::Counters) -> String {
    let counters = [
        ("pre_votes_asked_total", "Pre-votes this server asked for, its leader silent.", c.pre_votes_asked),
        ("pre_votes_refused_total", "Pre-votes of this server no quorum granted.", c.pre_votes_refused),
        ("elections_called_total", "Elections this server called after a granted pre-vote.", c.elections_called),
    ];
    let mut out = String::new();
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP referee_coordinator_{name} {help}\n# TYPE referee_coordinator_{name} counter\n\
             referee_coordinator_{name} {value}"
        );
    }
    out
}

/// Binds `admin_listen` if configured.
pub async fn bind(config: &CoordinatorConfig) -> std::io::Result<Option<TcpListener>> {
    let Some(addr) = config.admin_listen else { return Ok(None) };
    TcpListener::bind(addr).await.map(Some).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on the admin address {addr} (`admin_listen`): {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(voters: &[u64], observers: &[u64]) -> MembershipView {
        MembershipView {
            voters: voters.iter().copied().collect(),
            peers: voters.iter().chain(observers).map(|&id| (id, format!("127.0.0.1:{}", 2880 + id))).collect(),
            changing: false,
        }
    }

    fn add(id: u64, peer_port: u16, role: Role) -> AddMember {
        AddMember {
            id,
            client: SocketAddr::from(([127, 0, 0, 1], 2180 + peer_port)),
            peer: SocketAddr::from(([127, 0, 0, 1], peer_port)),
            role,
            admin: None,
        }
    }

    fn field(r: Result<impl std::fmt::Debug, Refusal>) -> (&'static str, String) {
        match r {
            Err(Refusal::BadRequest { field, problem }) => (field, problem),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn a_joint_configuration_is_completed_to_its_last_voter_set() {
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        assert_eq!(completion(&[set(&[1, 2, 3])]), None, "a uniform configuration has nothing to complete");
        assert_eq!(completion(&[]), None);
        assert_eq!(completion(&[set(&[1, 2, 3]), set(&[1, 2, 3, 4])]), Some(set(&[1, 2, 3, 4])), "a promotion");
        assert_eq!(completion(&[set(&[1, 2, 3, 4]), set(&[1, 2, 3])]), Some(set(&[1, 2, 3])), "a removal");
        assert_eq!(completion(&[set(&[1]), set(&[1, 2]), set(&[2, 3])]), Some(set(&[2, 3])));
    }

    #[test]
    fn no_change_is_decided_on_top_of_a_joint_configuration() {
        let mut v = view(&[1, 2, 3, 4], &[5]);
        v.changing = true;
        for r in [plan_add(&v, &add(6, 2886, Role::Observer)).map(drop), plan_remove(&v, "5").map(drop)] {
            match r {
                Err(Refusal::Busy(why)) => assert!(why.contains("joint") && why.contains("changing: false"), "{why}"),
                other => panic!("expected a 409, got {other:?}"),
            }
        }
        // Bad input is still named first.
        assert_eq!(field(plan_remove(&v, "five")).0, "id");
        assert_eq!(field(plan_add(&v, &add(0, 2886, Role::Observer))).0, "id");
        v.changing = false;
        assert!(plan_add(&v, &add(6, 2886, Role::Observer)).is_ok());
    }

    #[test]
    fn adding_decides_from_the_membership() {
        let v = view(&[1, 2, 3], &[4]);
        assert_eq!(
            plan_add(&v, &add(5, 2885, Role::Voter)),
            Ok(AddPlan::AddVoter { id: 5, peer: "127.0.0.1:2885".into() })
        );
        assert_eq!(
            plan_add(&v, &add(5, 2885, Role::Observer)),
            Ok(AddPlan::AddObserver { id: 5, peer: "127.0.0.1:2885".into() })
        );
        assert_eq!(plan_add(&v, &add(4, 2884, Role::Voter)), Ok(AddPlan::Promote { id: 4 }));

        let (f, why) = field(plan_add(&v, &add(0, 2885, Role::Voter)));
        assert_eq!(f, "id");
        assert!(why.contains("is 0"), "{why}");
        let (f, why) = field(plan_add(&v, &add(2, 2885, Role::Voter)));
        assert!(f == "id" && why.contains("2 is already a voter"), "{why}");
        let (f, why) = field(plan_add(&v, &add(4, 2884, Role::Observer)));
        assert!(f == "id" && why.contains("already an observer"), "{why}");
        let (f, why) = field(plan_add(&v, &add(4, 2899, Role::Voter)));
        assert!(f == "peer" && why.contains("127.0.0.1:2884"), "{why}");
        let (f, why) = field(plan_add(&v, &add(5, 2883, Role::Voter)));
        assert!(f == "peer" && why.contains("member 3"), "{why}");
        let mut unspecified = add(5, 2885, Role::Voter);
        unspecified.client = "0.0.0.0:2185".parse().unwrap();
        assert_eq!(field(plan_add(&v, &unspecified)).0, "client");
    }

    #[test]
    fn an_observer_is_promoted_only_caught_up_and_heard_lately() {
        let ms = Duration::from_millis;
        let f = |matched, leader_last, heard| Following { matched, leader_last, heard };
        assert_eq!(ready_to_vote(4, f(Some(40), Some(40), Some(ms(100)))), Ok(()));
        assert!(ready_to_vote(4, f(Some(40), Some(41 + PROMOTE_MAX_LAG), Some(ms(100)))).is_err());
        assert_eq!(ready_to_vote(4, f(Some(40), Some(40 + PROMOTE_MAX_LAG), Some(PROMOTE_HEARD_WITHIN))), Ok(()));
        for (following, says) in [
            (f(Some(10), Some(500), Some(ms(100))), "matched index 10 of its last index 500 (lag 490"),
            (f(None, Some(500), Some(ms(100))), "no matched index of its last index 500 (an unknown lag"),
            (f(Some(40), Some(40), Some(ms(4000))), "(lag 0; at most 100 allowed), last heard 4000 ms ago"),
            (f(Some(40), Some(40), None), "not heard from since it hung up or this leader started"),
        ] {
            match ready_to_vote(4, following) {
                Err(Refusal::NotReady(why)) => {
                    assert!(why.starts_with("observer 4 is not ready to vote") && why.contains(says), "{why}")
                }
                other => panic!("{following:?}: expected a 409, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_change_of_voters_needs_a_majority_of_the_new_ones_following() {
        let ms = Duration::from_millis;
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        // Leader 1; 2 follows; 3 is down (hung up), 4 and 5 silent for a while, 6 far behind.
        let follow = |id: u64| match id {
            2 => Following { matched: Some(50), leader_last: Some(50), heard: Some(ms(10)) },
            3 => Following { matched: Some(48), leader_last: Some(50), heard: None },
            4 | 5 => Following { matched: Some(50), leader_last: Some(50), heard: Some(ms(9000)) },
            6 => Following { matched: None, leader_last: Some(500), heard: Some(ms(10)) },
            other => panic!("no server {other}"),
        };
        let refused = |voters: &[u64]| match new_voters_follow(1, &set(voters), follow) {
            Err(Refusal::NoQuorum(why)) => why,
            other => panic!("{voters:?}: expected a 409, got {other:?}"),
        };
        // 3 of {1, 2, 3} down: removing 2 leaves {1, 3}, removing the leader {2, 3}; both refused,
        // naming the voter they would wait for and when it was last heard.
        let why = refused(&[1, 3]);
        assert!(why.contains("voters {1, 3}") && why.contains("need 2 of them, but only 1 follows"), "{why}");
        assert!(why.contains("server 1 leads; server 3 does not follow: the leader knows matched index 48"), "{why}");
        assert!(why.contains("not heard from since it hung up"), "{why}");
        let why = refused(&[2, 3]);
        assert!(why.contains("server 2 follows") && why.contains("server 3 does not follow"), "{why}");
        // Removing the one that is down leaves two that follow.
        assert_eq!(new_voters_follow(1, &set(&[1, 2]), follow), Ok(()));
        // Five voters, two silent: removing a live one leaves 2 of 4; removing a silent one 3 of 4.
        assert!(refused(&[1, 3, 4, 5]).contains("need 3 of them, but only 1 follows this leader"));
        assert!(refused(&[1, 2, 4, 5, 6]).contains("need 3 of them, but only 2 follow this leader"));
        assert!(refused(&[1, 2, 4, 5]).contains("server 4 does not follow"));
        assert_eq!(
            new_voters_follow(1, &set(&[1, 2, 3, 5]), |id| if id == 3 { follow(2) } else { follow(id) }),
            Ok(())
        );
        // Adding a voter that is far behind to a single voter: refused; caught up, accepted.
        assert!(refused(&[1, 6]).contains("server 6 does not follow: the leader knows no matched index"));
        assert_eq!(new_voters_follow(1, &set(&[1, 2]), follow), Ok(()));
        // Adding a fourth to three where one is down: three of four still follow.
        assert_eq!(
            new_voters_follow(1, &set(&[1, 2, 3, 7]), |id| if id == 7 { follow(2) } else { follow(id) }),
            Ok(())
        );
    }

    #[test]
    fn removing_keeps_a_voter() {
        let v = view(&[1, 2, 3], &[4]);
        assert_eq!(plan_remove(&v, "2"), Ok(RemovePlan::RemoveVoter(2)));
        assert_eq!(plan_remove(&v, "4"), Ok(RemovePlan::RemoveObserver(4)));
        // The leader too (whichever server asks): it steps down once its removal commits.
        assert_eq!(plan_remove(&v, "1"), Ok(RemovePlan::RemoveVoter(1)));
        let (f, why) = field(plan_remove(&v, "9"));
        assert!(f == "id" && why.contains("not a member"), "{why}");
        let (f, why) = field(plan_remove(&v, "two"));
        assert!(f == "id" && why.contains("numeric"), "{why}");
        let (f, why) = field(plan_remove(&view(&[1], &[4]), "1"));
        assert!(f == "id" && why.contains("last voter"), "{why}");
    }

    #[test]
    fn prometheus_text_names_types_and_labels_every_sample() {
        let mntr = vec![
            ("zk_version", "3.8.0-referee".to_string()),
            ("zk_server_state", "leader".to_string()),
            ("zk_znode_count", "7".to_string()),
            ("zk_avg_latency", "0.5000".to_string()),
            ("zk_packets_received", "12".to_string()),
        ];
        let mut m = RaftMetrics::new_initial(1);
        m.current_term = 3;
        m.last_log_index = Some(40);
        m.state = openraft::ServerState::Leader;
        let e = EnsembleStats {
            last_log_index: 40,
            replicas: vec![
                crate::fourlw::Replica { id: 2, voter: true, matched: Some(38), lag: Some(2), synced: true },
                crate::fourlw::Replica { id: 3, voter: true, matched: None, lag: None, synced: false },
            ],
        };
        let counters = crate::state::Counters {
            pre_votes_asked: 5,
            pre_votes_refused: 4,
            elections_called: 1,
            ..Default::default()
        };
        let text = prometheus_text(&mntr, &m, Some(&e), true) + &election_counters(&counters);
        for line in [
            "# TYPE referee_coordinator_pre_votes_asked_total counter\nreferee_coordinator_pre_votes_asked_total 5\n",
            "referee_coordinator_pre_votes_refused_total 4\n",
            "referee_coordinator_elections_called_total 1\n",
            "# TYPE znode_count gauge\nznode_count 7\n",
            "avg_latency 0.5000\n",
            "# TYPE packets_received counter\npackets_received 12\n",
            "# TYPE referee_coordinator_raft_term gauge\nreferee_coordinator_raft_term 3\n",
            "referee_coordinator_raft_last_log_index 40\n",
            "referee_coordinator_raft_is_leader 1\n",
            "# TYPE referee_coordinator_serving gauge\nreferee_coordinator_serving 1\n",
            "referee_coordinator_raft_matched_index{server=\"2\"} 38\n",
            "referee_coordinator_raft_replication_lag{server=\"2\"} 2\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        assert!(!text.contains("version") && !text.contains("server_state"), "{text}");
        assert!(!text.contains("server=\"3\""), "an unacknowledged member has no sample: {text}");
        let refusing = prometheus_text(&mntr, &m, None, false);
        assert!(refusing.contains("\nreferee_coordinator_serving 0\n"), "{refusing}");
        // Every sample line is `name[{labels}] number`, after its own HELP and TYPE.
        let mut typed = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap_or_default().to_string());
            } else if !line.starts_with("# HELP ") {
                let (name, value) = line.rsplit_once(' ').expect("name value");
                assert!(value.parse::<f64>().is_ok(), "{line}");
                assert!(typed.contains(name.split('{').next().unwrap_or_default()), "untyped sample {line}");
            }
        }
    }
}
