//! `referee admin`: the operator's command (in the manner of `hdfs haadmin` and `patronictl`).
//!
//! It finds the cluster's members through the coordinator (`/referee/<cluster>/members`), reads
//! each agent's report from its probe address (`/status`, `/history`, no secret needed), and
//! sends mutating requests to each agent's admin API with the bearer secret
//! (see [`crate::admin`]).
//!
//! ```text
//! referee admin --config agent.yaml status                 every member's role, health, token, lease
//! referee admin --config agent.yaml failover --to db2      graceful switchover; prints the timeline
//!     [--allow-data-loss]                                  promote db2 even if it lags beyond max_lag
//! referee admin --config agent.yaml unblock [--node db1]   clear an anti-flap block (logged with who asked)
//! referee admin --config agent.yaml check-health db2       exit 0 when db2's master is healthy
//! referee admin --config agent.yaml pause [--node db1]     maintenance: agents report but do not act
//!                                                          (the cluster's is kept in the coordinator)
//! referee admin --config agent.yaml resume [--node db1]
//! referee admin --config agent.yaml history [--node db1]
//! referee admin --config agent.yaml check-fencing [--node db1]   each agent checks its fencing chain now
//! referee admin --config agent.yaml format [--force]       create and secure /referee/<cluster>
//! referee admin --config agent.yaml config [show]          the cluster's settings, and who has them
//! referee admin --config agent.yaml config set election.max_lag=1048576 ...
//! referee admin --config agent.yaml config unset election.max_lag ...
//! referee admin --config agent.yaml config unset --all     every setting, the record itself
//! referee admin --config agent.yaml drain db1 [--reason TEXT]   never promote db1 (its active role
//!                                                          handed over first) until `undrain`
//! referee admin --config agent.yaml undrain db1
//! referee admin --config agent.yaml confirm-down db1 --reason TEXT   an operator's word that db1's
//!                                                          master is down, for a fence that cannot reach it
//! referee admin --config agent.yaml confirm-down db1 --cancel   withdraw it (made by mistake)
//! ```
//!
//! Where things come from: `--config` names an agent's YAML (coordinator, cluster, digest
//! credential and its `admin:` section: secret, TLS); `--coordinator`, `--cluster`,
//! `--token-file`/`--token-env` and `--digest` override or replace it. `--json` prints one JSON
//! document on stdout instead of text.
//!
//! An agent's admin address is the `admin_addr` of its `/status` (a URL, or `host:port` taking
//! `https` when TLS is configured here); failing that, the `peer_url` it registered.
//!
//! # Exit codes
//!
//! | code | meaning                                                                 |
//! |------|-------------------------------------------------------------------------|
//! | 0    | done; for `check-health`, the master is healthy                         |
//! | 1    | `check-health`: the master is not healthy; `check-fencing`: a problem   |
//! | 2    | usage: bad arguments or configuration, unknown node                     |
//! | 3    | refused: the target is unfit or lagging, an agent refused, the tree already exists |
//! | 4    | the coordinator or an agent could not be reached                        |
//! | 5    | timed out waiting for the outcome (it may still happen)                 |

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use zookeeper_client as zk;

use crate::admin::{AdminSettings, ADDRESSEE_HEADER};
use crate::config::{cluster_setting, AgentConfig};
use crate::election::{CLUSTER_CONFIG, CONFIRMED_DOWN, DRAINED, HANDOVER, PAUSE, ROOT, SWITCHOVER};
use crate::model::{
    Breadcrumb, ClusterSettingsRecord, ConfirmedDownRecord, DrainRecord, LockRecord, Member, PauseRecord, TokenBase,
};
use crate::schedule::{self, ScheduledSwitchover};
use referee_fencing::{FenceTarget, FencingToken, HaState, HaStatus};

/// How long `check-fencing` waits for an agent's round: a little over the agent's own default
/// limit (`admin.failover_timeout_ms`), as every method may take its whole deadline.
const CHECK_FENCING_WAIT: Duration = Duration::from_secs(65);

/// How long `drain` and `undrain` wait for the node's agent to have the change in force (it
/// reads its record about once a second).
const DRAIN_SEEN_WAIT: Duration = Duration::from_secs(10);

/// `referee admin`'s arguments; the binary embeds them as a subcommand.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// An agent's YAML configuration: coordinator, cluster, digest and `admin:` section.
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The coordinator, `host:port[,host:port...]` (overrides the config's).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub coordinator: Option<String>,
    /// The cluster's name (overrides the config's).
    #[arg(long, global = true)]
    pub cluster: Option<String>,
    /// File holding the admin bearer secret (overrides the config's `admin.token_file`).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the admin bearer secret.
    #[arg(long, global = true, value_name = "NAME")]
    pub token_env: Option<String>,
    /// Digest credential `user:password` for the coordinator (overrides `coordinator.digest`).
    #[arg(long, global = true, value_name = "USER:PASSWORD")]
    pub digest: Option<String>,
    /// PEM CA certificates to trust for agents' TLS (default: the config's `admin.tls.cert_file`).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for agents that require one.
    #[arg(long, global = true, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(long, global = true, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline of each coordinator and agent call, in ms.
    #[arg(long, global = true, default_value_t = 5000, value_name = "MS")]
    pub timeout_ms: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The subcommands of `referee admin`.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Every member's role, health, token, lease, position, why it is not taking over, and last
    /// decision; `*` marks the lock holder.
    Status,
    /// Graceful switchover to NODE: refused if NODE is unknown or unfit; waits until it is
    /// active and prints the timeline. With `--at`, checks now and leaves the switchover to
    /// NODE's agent at that time; `--cancel` withdraws a scheduled one.
    Failover {
        /// The node to make active.
        #[arg(long, value_name = "NODE", required_unless_present = "cancel")]
        to: Option<String>,
        /// Schedule the switchover instead of making it now: `+90s`, `+15m`, `+2h`, or a UTC
        /// time such as `2026-12-04T02:00:00Z`, within a week. NODE's agent starts it then
        /// (up to a minute late, else it is dropped as missed), with the checks made afresh.
        #[arg(long, value_name = "TIME", conflicts_with = "dry_run")]
        at: Option<String>,
        /// Withdraw the scheduled switchover, if there is one.
        #[arg(long, conflicts_with_all = ["to", "at", "dry_run", "allow_data_loss"])]
        cancel: bool,
        /// How long to wait for NODE to become active, in ms (at least 1).
        #[arg(long, default_value_t = 60_000, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
        wait_ms: u64,
        /// Promote NODE even if it is further behind the active than `election.max_lag`: what
        /// it lacks is lost. Without it, a lagging NODE is refused (exit code 3).
        #[arg(long)]
        allow_data_loss: bool,
        /// Run every check and print what the failover would do, without asking any agent to
        /// act: exit 0 if it would go ahead, 3 (with why) if it would be refused.
        #[arg(long)]
        dry_run: bool,
    },
    /// Clear an anti-flap block, so a standby may take over a free lock at once; each agent
    /// logs who asked.
    Unblock {
        /// Only this node (default: every member).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Exit 0 when NODE's master is healthy, 1 when it is not.
    CheckHealth {
        /// The node to check.
        node: String,
    },
    /// Maintenance mode: the agents keep observing and reporting but take no action. The whole
    /// cluster's pause is kept in the coordinator (agents restarted meanwhile stay paused);
    /// one node's (`--node`) lives in its agent's process until resumed or restarted.
    Pause {
        /// Only this node (default: every member).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Leave maintenance mode.
    Resume {
        /// Only this node (default: every member).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Recent role changes with failover phase durations, oldest first.
    History {
        /// Only this node (default: every member).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Ask each agent (or NODE's) to check its fencing chain against every peer now, fencing
    /// nothing, and print every method's answer: exit 0 when every method is ready, 1 when one
    /// has a problem (fencing may fail when it is needed).
    CheckFencing {
        /// Only this node's agent (default: every member).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Create `/referee/<cluster>` and its `members` child readable by everyone and writable
    /// only with the cluster's digest credential (like `hdfs zkfc -formatZK`).
    Format {
        /// Apply the ACLs to znodes that already exist instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Keep NODE from being promoted, automatically or by a failover, until `undrain` (as
    /// Pacemaker's node standby, for maintenance of its host): kept in the coordinator
    /// (`/referee/<cluster>/drained/NODE`), so a restarted agent stays drained. If NODE is
    /// active, the role is first handed over to the most caught-up other node that is fit to
    /// take it, as by `failover --to`; if none is, NODE stays active (drained) and the exit
    /// code is 3.
    Drain {
        /// The node.
        node: String,
        /// Why, shown in every status and log.
        #[arg(long)]
        reason: Option<String>,
        /// How long to wait for the other node to become active, in ms (at least 1).
        #[arg(long, default_value_t = 60_000, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
        wait_ms: u64,
    },
    /// Let NODE be promoted again.
    Undrain {
        /// The node.
        node: String,
    },
    /// Confirm that NODE is down, as Pacemaker's `stonith_admin --confirm`, when its fencing
    /// cannot succeed (a dead BMC, a rack without power) and no node can be promoted: you have
    /// made sure, by hand, that NODE's master can no longer accept writes (powered off, its
    /// network cut). The next fence of NODE that does not end fenced then counts as fenced, for
    /// NODE's last term alone (the breadcrumb's token). Refused while NODE holds the lock or its
    /// master answers active. If NODE's master can still accept writes, the cluster will have two
    /// actives: only resources that check fencing tokens refuse the old one.
    ConfirmDown {
        /// The node.
        node: String,
        /// How you know it is down; recorded, logged by the agent that promotes, and shown in
        /// its history.
        #[arg(long, required_unless_present = "cancel")]
        reason: Option<String>,
        /// How long to wait for another node to become active, in ms (0: do not wait).
        #[arg(long, default_value_t = 60_000, value_name = "MS")]
        wait_ms: u64,
        /// Withdraw NODE's confirmation before any fence has stood on it (made by mistake:
        /// the node is not down after all).
        #[arg(long, conflicts_with_all = ["reason", "wait_ms"])]
        cancel: bool,
    },
    /// Settings for the whole cluster, kept in the coordinator (`/referee/<cluster>/config`)
    /// and applied by every agent over its own file within a few cycles, as Patroni's dynamic
    /// configuration: the lease, election and failsafe settings a reload applies live, not a
    /// node's own (`priority`, `zone`, `nofailover`). Without an action: show them.
    Config {
        /// What to do (default: show).
        #[command(subcommand)]
        action: Option<ConfigAction>,
    },
}

/// `referee admin config`'s actions.
#[derive(Debug, Clone, Subcommand)]
pub enum ConfigAction {
    /// The settings, who set them, and whether each member has them in force.
    Show,
    /// Set `SECTION.KEY=VALUE` (e.g. `election.max_lag=1048576`, `failsafe.enabled=true`),
    /// checked against this agent's configuration (`--config`) before anything is written:
    /// settings it would not accept are refused (exit code 3), nothing written.
    Set {
        /// The settings.
        #[arg(required = true, value_name = "SECTION.KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Remove settings, so that each agent's own value applies again.
    Unset {
        /// The settings.
        #[arg(required_unless_present = "all", conflicts_with = "all", value_name = "SECTION.KEY")]
        keys: Vec<String>,
        /// Remove the whole record, whatever it holds (also one that cannot be read).
        #[arg(long)]
        all: bool,
    },
}

/// How `referee admin` ended. See the module docs for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// Done; `check-health`: healthy.
    Ok,
    /// `check-health`: not healthy; `check-fencing`: a method has a problem.
    CheckFailed,
    /// Bad arguments or configuration, or an unknown node.
    Usage,
    /// Refused, with why.
    Refused,
    /// The coordinator or an agent could not be reached.
    Unreachable,
    /// No outcome in time.
    TimedOut,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            Exit::Ok => 0,
            Exit::CheckFailed => 1,
            Exit::Usage => 2,
            Exit::Refused => 3,
            Exit::Unreachable => 4,
            Exit::TimedOut => 5,
        }
    }
}

/// What a run printed and how it ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How it ended.
    pub exit: Exit,
    /// What goes to stdout.
    pub stdout: String,
    /// What goes to stderr.
    pub stderr: String,
}

/// Runs `referee admin`, printing its output; returns the exit code.
pub async fn run(args: AdminArgs) -> i32 {
    let outcome = execute(&args).await;
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    outcome.exit.code()
}

/// Runs `referee admin` and returns what it would print.
pub async fn execute(args: &AdminArgs) -> Outcome {
    let result = match Session::new(args) {
        Ok(session) => session.dispatch().await,
        Err(f) => Err(f),
    };
    match result {
        Ok(report) => Outcome {
            exit: report.exit,
            stdout: if args.json { format!("{:#}\n", report.json) } else { report.text },
            stderr: String::new(),
        },
        Err(f) => Outcome {
            exit: f.exit,
            stdout: if args.json {
                format!("{:#}\n", json!({"ok": false, "reason": f.reason, "exit_code": f.exit.code()}))
            } else {
                String::new()
            },
            stderr: format!("referee admin: {}\n", f.reason),
        },
    }
}

/// A command that could not be done, and why.
#[derive(Debug)]
struct Failure {
    exit: Exit,
    reason: String,
}

fn fail(exit: Exit, reason: impl Into<String>) -> Failure {
    Failure { exit, reason: reason.into() }
}

/// A record written conditioned on the version read found another version.
fn changed_meanwhile(path: &str) -> Failure {
    fail(Exit::Refused, format!("{path} changed meanwhile (another operator?): run it again"))
}

/// What a command has to say: as text, as JSON, and its exit.
struct Report {
    exit: Exit,
    text: String,
    json: Value,
}

/// The arguments resolved against the configuration.
struct Session<'a> {
    args: &'a AdminArgs,
    /// The agent configuration `--config` named, if any.
    cfg: Option<AgentConfig>,
    connect: Option<String>,
    cluster: Option<String>,
    digest: Option<String>,
    token: Option<String>,
    tls: bool,
    http: reqwest::Client,
    timeout: Duration,
}

/// Reads an agent config, whole and checked as the agent checks it (rules such as a preferred
/// node needing the `admin` section see all of it), and its `admin:` section.
fn load_agent_config(path: &Path) -> Result<(AgentConfig, Option<AdminSettings>), Failure> {
    let usage = |e: String| fail(Exit::Usage, e);
    let text = std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read `{}`: {e}", path.display())))?;
    let cfg = AgentConfig::from_yaml(&text).map_err(|e| usage(format!("`{}`: {e}", path.display())))?;
    let admin = cfg.admin.clone();
    Ok((cfg, admin))
}

fn read_secret(what: &str, text: Result<String, String>) -> Result<String, Failure> {
    let text = text.map_err(|e| fail(Exit::Usage, format!("{what}: {e}")))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(fail(Exit::Usage, format!("{what} is empty")));
    }
    Ok(secret.to_string())
}

impl<'a> Session<'a> {
    fn new(args: &'a AdminArgs) -> Result<Self, Failure> {
        let (cfg, admin) = match &args.config {
            Some(path) => {
                let (cfg, admin) = load_agent_config(path)?;
                (Some(cfg), admin)
            }
            None => (None, None),
        };
        let connect = args.coordinator.clone().or_else(|| cfg.as_ref().map(|c| c.coordinator.connect.clone()));
        let cluster = args.cluster.clone().or_else(|| cfg.as_ref().map(|c| c.cluster.clone()));
        let digest = args.digest.clone().or_else(|| cfg.as_ref().and_then(|c| c.coordinator.digest.clone()));
        let token = match (&args.token_file, &args.token_env) {
            (Some(path), _) => Some(read_secret(
                &format!("token file `{}`", path.display()),
                std::fs::read_to_string(path).map_err(|e| e.to_string()),
            )?),
            (None, Some(name)) => Some(read_secret(
                &format!("environment variable `{name}`"),
                std::env::var(name).map_err(|_| "not set".to_string()),
            )?),
            (None, None) => match &admin {
                Some(a) => Some(a.load_secret().map_err(|e| fail(Exit::Usage, e.to_string()))?.expose().to_string()),
                None => None,
            },
        };
        let timeout = Duration::from_millis(args.timeout_ms.max(1));
        let mut builder = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout);
        let roots =
            args.ca_file.clone().or_else(|| admin.as_ref().and_then(|a| a.tls.as_ref()).map(|t| t.cert_file.clone()));
        if let Some(path) = &roots {
            let pem =
                std::fs::read(path).map_err(|e| fail(Exit::Usage, format!("cannot read `{}`: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| fail(Exit::Usage, format!("`{}`: {e}", path.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            let mut pem =
                std::fs::read(cert).map_err(|e| fail(Exit::Usage, format!("cannot read `{}`: {e}", cert.display())))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key).map_err(|e| fail(Exit::Usage, format!("cannot read `{}`: {e}", key.display())))?,
            );
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| fail(Exit::Usage, format!("client certificate and key: {e}")))?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(|e| fail(Exit::Usage, format!("HTTP client: {e}")))?;
        let tls = admin.as_ref().is_some_and(|a| a.tls.is_some()) || args.ca_file.is_some();
        Ok(Session { args, cfg, connect, cluster, digest, token, tls, http, timeout })
    }

    async fn dispatch(&self) -> Result<Report, Failure> {
        match &self.args.command {
            AdminCommand::Status => self.status().await,
            AdminCommand::Failover { cancel: true, .. } => self.cancel_switchover().await,
            AdminCommand::Failover { to, at, wait_ms, allow_data_loss, dry_run, .. } => {
                let to = to.as_deref().ok_or_else(|| fail(Exit::Usage, "failover needs --to NODE (or --cancel)"))?;
                let at = match at {
                    Some(text) => {
                        Some(schedule::parse_at(text, wall_ms()).map_err(|e| fail(Exit::Usage, format!("--at: {e}")))?)
                    }
                    None => None,
                };
                let how = Switchover {
                    wait: Duration::from_millis(*wait_ms),
                    allow_data_loss: *allow_data_loss,
                    dry_run: *dry_run,
                    at,
                };
                self.failover(to, how).await
            }
            AdminCommand::Unblock { node } => self.unblock(node.as_deref()).await,
            AdminCommand::CheckHealth { node } => self.check_health(node).await,
            AdminCommand::Pause { node } => self.pause_or_resume(true, node.as_deref()).await,
            AdminCommand::Resume { node } => self.pause_or_resume(false, node.as_deref()).await,
            AdminCommand::History { node } => self.history(node.as_deref()).await,
            AdminCommand::CheckFencing { node } => self.check_fencing(node.as_deref()).await,
            AdminCommand::Format { force } => self.format(*force).await,
            AdminCommand::Drain { node, reason, wait_ms } => {
                self.drain(node, reason.as_deref(), Duration::from_millis(*wait_ms)).await
            }
            AdminCommand::Undrain { node } => self.undrain(node).await,
            AdminCommand::ConfirmDown { node, cancel: true, .. } => self.cancel_confirmation(node).await,
            AdminCommand::ConfirmDown { node, reason, wait_ms, .. } => {
                let reason = reason.as_deref().unwrap_or_default();
                self.confirm_down(node, reason, Duration::from_millis(*wait_ms)).await
            }
            AdminCommand::Config { action } => {
                self.cluster_config(action.as_ref().unwrap_or(&ConfigAction::Show)).await
            }
        }
    }

    fn coordinates(&self) -> Result<(&str, &str), Failure> {
        let connect = self.connect.as_deref().ok_or_else(|| {
            fail(Exit::Usage, "no coordinator: give --config with an agent's configuration, or --coordinator")
        })?;
        let cluster = self.cluster.as_deref().ok_or_else(|| {
            fail(Exit::Usage, "no cluster: give --config with an agent's configuration, or --cluster")
        })?;
        Ok((connect, cluster))
    }

    /// A session with the coordinator, with the digest credential if there is one.
    async fn zk_client(&self) -> Result<zk::Client, Failure> {
        let (connect, _) = self.coordinates()?;
        let mut connector = zk::Client::connector().with_session_timeout(Duration::from_secs(10));
        if let Some(digest) = &self.digest {
            connector = connector.with_auth("digest", digest.as_bytes());
        }
        match tokio::time::timeout(self.timeout, connector.connect(connect)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(zk::Error::AuthFailed)) => Err(fail(Exit::Refused, "the coordinator refused the digest credential")),
            Ok(Err(e)) => Err(fail(Exit::Unreachable, format!("cannot reach the coordinator at {connect}: {e}"))),
            Err(_) => Err(fail(
                Exit::Unreachable,
                format!("no session with the coordinator at {connect} within {:?}", self.timeout),
            )),
        }
    }

    async fn zk_call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, zk::Error>>,
    ) -> Result<Result<T, zk::Error>, Failure> {
        tokio::time::timeout(self.timeout, call).await.map_err(|_| {
            fail(Exit::Unreachable, format!("{what}: no answer from the coordinator within {:?}", self.timeout))
        })
    }

    /// Reads the members and the lock from the coordinator, then every member's report.
    /// Read-only: nothing is created (the agents and `format` create the tree).
    async fn cluster_view(&self) -> Result<ClusterView, Failure> {
        let (_, cluster) = self.coordinates()?;
        let client = self.zk_client().await?;
        let root = format!("{ROOT}/{cluster}");
        let unexpected = |what: &str, e: zk::Error| fail(Exit::Unreachable, format!("{what}: {e}"));
        let names = match self.zk_call("list members", client.list_children(&format!("{root}/members"))).await? {
            Ok(names) => names,
            Err(zk::Error::NoNode) => {
                return Err(fail(
                    Exit::Usage,
                    format!("cluster `{cluster}` has no members znode at {root}/members: no agent has registered yet"),
                ))
            }
            Err(e) => return Err(unexpected("list members", e)),
        };
        let mut members = Vec::new();
        for name in names {
            let path = format!("{root}/members/{name}");
            match self.zk_call("read a member", client.get_data(&path)).await? {
                Ok((data, _)) => match serde_json::from_slice::<Member>(&data) {
                    Ok(m) => members.push(m),
                    Err(e) => return Err(fail(Exit::Unreachable, format!("{path} holds unreadable data: {e}"))),
                },
                Err(zk::Error::NoNode) => {} // left between the listing and the read
                Err(e) => return Err(unexpected("read a member", e)),
            }
        }
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        // The token is the lock's czxid plus the token base (see the election module).
        let base = match self.zk_call("read the token base", client.get_data(&format!("{root}/token-base"))).await? {
            Ok((data, _)) => match serde_json::from_slice::<TokenBase>(&data) {
                Ok(record) => record.base as i64,
                Err(e) => return Err(fail(Exit::Unreachable, format!("{root}/token-base holds unreadable data: {e}"))),
            },
            Err(zk::Error::NoNode) => 0,
            Err(e) => return Err(unexpected("read the token base", e)),
        };
        let lock = match self.zk_call("read the lock", client.get_data(&format!("{root}/lock"))).await? {
            Ok((data, stat)) => match serde_json::from_slice::<LockRecord>(&data) {
                Ok(record) => Some((record.node_id, stat.czxid.saturating_add(base))),
                Err(e) => return Err(fail(Exit::Unreachable, format!("{root}/lock holds unreadable data: {e}"))),
            },
            Err(zk::Error::NoNode) => None,
            Err(e) => return Err(unexpected("read the lock", e)),
        };
        let path = switchover_path(cluster);
        let switchover = match self.zk_call("read the scheduled switchover", client.get_data(&path)).await? {
            // Unreadable, it is shown (and refuses another) rather than hiding the cluster.
            Ok((data, _)) => Some(serde_json::from_slice::<ScheduledSwitchover>(&data).map_err(|e| {
                format!("{path} holds an unreadable scheduled switchover ({e}); `failover --cancel` removes it")
            })),
            Err(zk::Error::NoNode) => None,
            Err(e) => return Err(unexpected("read the scheduled switchover", e)),
        };
        drop(client);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, m) in members.iter().enumerate() {
            let http = self.http.clone();
            let addr = m.probe_addr.clone();
            let node = m.node_id.clone();
            tasks.spawn(async move {
                let status = match addr {
                    Some(addr) => get_json(&http, &format!("http://{addr}/status"))
                        .await
                        .and_then(|status| answered_by(&node, &addr, status)),
                    None => Err("publishes no probe address".to_string()),
                };
                (i, status)
            });
        }
        let mut statuses: Vec<Result<Value, String>> = vec![Err("not read".into()); members.len()];
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, status)) = joined {
                statuses[i] = status;
            }
        }
        let members = members.into_iter().zip(statuses).map(|(member, status)| MemberView { member, status }).collect();
        Ok(ClusterView { cluster: cluster.to_string(), lock, members, switchover })
    }

    /// The breadcrumb (the last active: `None` if no node ever was, or why it cannot be read)
    /// and, `with_records`, every operator's confirmation that a node is down not yet served,
    /// by node. Read for `status` and `confirm-down` alone, not with every cluster view.
    async fn confirmation_view(&self, with_records: bool) -> Result<ConfirmationView, Failure> {
        let (_, cluster) = self.coordinates()?;
        let root = format!("{ROOT}/{cluster}");
        let client = self.zk_client().await?;
        let unexpected = |what: &str, e: zk::Error| fail(Exit::Unreachable, format!("{what}: {e}"));
        let path = format!("{root}/breadcrumb");
        let last_active = match self.zk_call("read the breadcrumb", client.get_data(&path)).await? {
            Ok((data, _)) => serde_json::from_slice::<Breadcrumb>(&data)
                .map(Some)
                .map_err(|e| format!("{path} holds an unreadable breadcrumb ({e})")),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => return Err(unexpected("read the breadcrumb", e)),
        };
        let parent = format!("{root}/{CONFIRMED_DOWN}");
        let names = match with_records {
            false => Vec::new(),
            true => match self.zk_call("list the confirmations", client.list_children(&parent)).await? {
                Ok(names) => names,
                Err(zk::Error::NoNode) => Vec::new(),
                Err(e) => return Err(unexpected("list the confirmations", e)),
            },
        };
        let mut records = Vec::new();
        for name in names {
            let path = format!("{parent}/{name}");
            match self.zk_call("read a confirmation", client.get_data(&path)).await? {
                Ok((data, _)) => records.push((
                    name,
                    serde_json::from_slice::<ConfirmedDownRecord>(&data)
                        .map_err(|e| format!("{path} holds an unreadable confirmation ({e}); no fence stands on it")),
                )),
                Err(zk::Error::NoNode) => {} // served between the listing and the read
                Err(e) => return Err(unexpected("read a confirmation", e)),
            }
        }
        Ok(ConfirmationView { last_active, records })
    }

    /// Creates `parent`, the znode under which one record per node is kept, if it is absent.
    async fn ensure_parent(&self, client: &zk::Client, parent: &str, what: &str) -> Result<(), Failure> {
        match self.zk_call(what, self.create_record(client, parent, b"")).await? {
            Ok(()) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(write_failure(parent, "create", e)),
        }
    }

    /// The base URL of a member's admin API (where its status was read, the status says which
    /// node answered: see [`answered_by`]).
    fn admin_base(&self, mv: &MemberView) -> Option<String> {
        let published = mv.status.as_ref().ok().and_then(|s| s.get("admin_addr")).and_then(Value::as_str);
        match published {
            Some(addr) if addr.contains("://") => Some(addr.trim_end_matches('/').to_string()),
            Some(addr) => Some(format!("{}://{addr}", if self.tls { "https" } else { "http" })),
            None => mv.member.peer_url.as_deref().map(|u| u.trim_end_matches('/').to_string()),
        }
    }

    /// POSTs to a member's admin API; the agent's message on success.
    async fn admin_post_body(
        &self,
        mv: &MemberView,
        path: &str,
        limit: Duration,
        body: Option<Value>,
    ) -> Result<String, Failure> {
        let answer = self.admin_post_json(mv, path, limit, body).await?;
        Ok(answer.get("message").and_then(Value::as_str).unwrap_or("").to_string())
    }

    /// POSTs `path` (with `body`, if any) to `mv`'s admin API: its answer's body on success, or
    /// what went wrong mapped to an exit code.
    async fn admin_post_json(
        &self,
        mv: &MemberView,
        path: &str,
        limit: Duration,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let node = &mv.member.node_id;
        let token = self.token.as_deref().ok_or_else(|| {
            fail(Exit::Usage, "no admin secret: give --token-file, --token-env or --config with an `admin` section")
        })?;
        let base = self.admin_base(mv).ok_or_else(|| {
            fail(Exit::Unreachable, format!("{node} publishes no admin address (admin_addr or peer_url)"))
        })?;
        let url = format!("{base}{path}");
        // The agent refuses a request meant for another node (421): an address that reaches
        // another agent than the one published never acts in its place.
        let mut request =
            self.http.post(&url).bearer_auth(token).header(ADDRESSEE_HEADER, node.as_str()).timeout(limit);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let sent = request.send().await;
        let response = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Err(fail(
                    Exit::TimedOut,
                    format!("{node}: no answer from {url} within {limit:?}; it may still happen"),
                ))
            }
            Err(e) => return Err(fail(Exit::Unreachable, format!("{node}: POST {url}: {}", error_chain(&e)))),
        };
        let code = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let said = |key: &str| body.get(key).and_then(Value::as_str).unwrap_or("").to_string();
        match code.as_u16() {
            200..=299 => Ok(body),
            401 => Err(fail(Exit::Refused, format!("{node} refused the admin secret (401): {}", said("reason")))),
            404 => Err(fail(
                Exit::Unreachable,
                format!("{node}: {url} is not served (404); is its published address the peer listener?"),
            )),
            421 => Err(fail(Exit::Unreachable, format!("{node}: {}", said("reason")))),
            409 => Err(fail(Exit::Refused, format!("{node} refused: {}", said("reason")))),
            504 => Err(fail(Exit::TimedOut, format!("{node}: {}", said("reason")))),
            _ => Err(fail(Exit::Unreachable, format!("{node} answered {code}: {}", said("reason")))),
        }
    }

    async fn status(&self) -> Result<Report, Failure> {
        let view = self.cluster_view().await?;
        let mut text = String::new();
        match &view.lock {
            Some((node, token)) => {
                let _ = writeln!(text, "cluster {}: lock held by {node} (token {token})", view.cluster);
            }
            None => {
                let _ = writeln!(text, "cluster {}: lock free (no active node)", view.cluster);
            }
        }
        let mut rows = vec![[
            "",
            "NODE",
            "ROLE",
            "HEALTH",
            "TOKEN",
            "LEASE",
            "SESSION",
            "PAUSED",
            "POSITION",
            "FENCING",
            "WHY NOT",
            "LAST DECISION",
        ]
        .map(String::from)
        .to_vec()];
        let mut members = Vec::new();
        for mv in &view.members {
            let holds = view.lock.as_ref().is_some_and(|(n, _)| *n == mv.member.node_id);
            let mark = if holds { "*" } else { "" }.to_string();
            let node = mv.member.node_id.clone();
            match &mv.status {
                Ok(s) => {
                    let lease = s.get("lease_left_ms").and_then(Value::as_u64).unwrap_or(0);
                    rows.push(vec![
                        mark,
                        node,
                        str_at(s, "role"),
                        health_text(s.get("health")),
                        s.get("token").and_then(Value::as_u64).map_or("-".into(), |t| t.to_string()),
                        if lease > 0 { format!("{lease} ms") } else { "-".into() },
                        session_text(s.get("session")),
                        paused_text(s),
                        position_text(s),
                        fencing_text(s),
                        s.get("why_not").and_then(Value::as_str).unwrap_or("-").to_string(),
                        str_at(s, "last_decision"),
                    ]);
                }
                Err(e) => rows.push(vec![
                    mark,
                    node,
                    "unreachable".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    e.clone(),
                ]),
            }
            members.push(json!({
                "node_id": mv.member.node_id,
                "holds_lock": holds,
                "probe_addr": mv.member.probe_addr,
                "peer_url": mv.member.peer_url,
                "admin_url": self.admin_base(mv),
                "reachable": mv.status.is_ok(),
                "status": mv.status.as_ref().ok(),
                "error": mv.status.as_ref().err(),
            }));
        }
        text.push_str(&table(&rows));
        for mv in &view.members {
            if let Some(by) = mv.status.as_ref().ok().and_then(drained_by) {
                let _ = writeln!(text, "{} drained by {by}: never promoted until `undrain`", mv.member.node_id);
            }
            for line in mv.status.as_ref().map(fencing_problems).unwrap_or_default() {
                let _ = writeln!(text, "{} {line}", mv.member.node_id);
            }
            if let Some(line) = mv.status.as_ref().ok().and_then(watchdog_starving) {
                let _ = writeln!(text, "{} {line}", mv.member.node_id);
            }
        }
        // No node active because the last active cannot be fenced: say what the way out is.
        let any_active = view.members.iter().any(|mv| mv.status.as_ref().is_ok_and(|s| str_at(s, "role") == "active"));
        if !any_active {
            for mv in &view.members {
                if let Some((target, failure)) = mv.status.as_ref().ok().and_then(failed_fence) {
                    let _ = writeln!(
                        text,
                        "{} cannot fence {target} ({failure}). If {target}'s master cannot accept writes for certain \
                         (powered off, cut off), `referee admin confirm-down {target} --reason TEXT` lets a fence of \
                         it that cannot succeed count as done",
                        mv.member.node_id
                    );
                }
            }
        }
        let switchover = match &view.switchover {
            Some(Ok(s)) => {
                let _ = writeln!(text, "{}", scheduled_text(s));
                json!(s)
            }
            Some(Err(why)) => {
                let _ = writeln!(text, "{why}");
                json!({"unreadable": why})
            }
            None => Value::Null,
        };
        let confirmations = self.confirmation_view(true).await?;
        let mut confirmed = serde_json::Map::new();
        for (node, record) in &confirmations.records {
            match record {
                Ok(r) => {
                    let (line, current) = confirmation_text(node, r, &confirmations.last_active);
                    let _ = writeln!(text, "{line}");
                    let mut entry = json!(r);
                    entry["current"] = json!(current);
                    confirmed.insert(node.clone(), entry);
                }
                Err(why) => {
                    let _ = writeln!(text, "{why}");
                    confirmed.insert(node.clone(), json!({"unreadable": why}));
                }
            }
        }
        let lock = view.lock.as_ref().map(|(node, token)| json!({"node_id": node, "token": token}));
        Ok(Report {
            exit: Exit::Ok,
            text,
            json: json!({"cluster": view.cluster, "lock": lock, "members": members, "switchover": switchover,
                         "confirmed_down": confirmed}),
        })
    }

    fn find<'v>(&self, view: &'v ClusterView, node: &str) -> Result<&'v MemberView, Failure> {
        view.members.iter().find(|m| m.member.node_id == node).ok_or_else(|| {
            let known: Vec<&str> = view.members.iter().map(|m| m.member.node_id.as_str()).collect();
            fail(
                Exit::Usage,
                format!("unknown node `{node}`: the members of cluster {} are [{}]", view.cluster, known.join(", ")),
            )
        })
    }

    async fn failover(&self, to: &str, how: Switchover) -> Result<Report, Failure> {
        let Switchover { wait, allow_data_loss, dry_run, at } = how;
        let view = self.cluster_view().await?;
        let target = self.find(&view, to)?;
        let st = target
            .status
            .as_ref()
            .map_err(|e| fail(Exit::Unreachable, format!("cannot read {to}'s status, so cannot judge it: {e}")))?;
        let role = str_at(st, "role");
        let holds = view.lock.as_ref().is_some_and(|(n, _)| n == to);
        if holds && role == "active" {
            let token = view.lock.as_ref().map_or(0, |l| l.1);
            return Ok(Report {
                exit: Exit::Ok,
                text: format!("{to} is already active (token {token}); nothing to do\n"),
                json: json!({"ok": true, "node": to, "message": "already active", "token": token, "timeline": []}),
            });
        }
        if let Some(why) = unfit(st) {
            return Err(fail(Exit::Refused, format!("refusing a failover to {to}: {why}")));
        }
        // How far behind the target is: against the active's master as it reports now, else
        // against the position the active last published (as the target's agent read it).
        let active_status = view
            .lock
            .as_ref()
            .and_then(|(holder, _)| view.members.iter().find(|m| m.member.node_id == *holder))
            .and_then(|m| m.status.as_ref().ok());
        let behind = match (active_status.and_then(master_position), master_position(st)) {
            (Some(active), Some(target)) => Some(active.saturating_sub(target)),
            _ => st.get("behind").and_then(Value::as_u64),
        };
        let max_lag = st.get("max_lag").and_then(Value::as_u64);
        let lag = lag_text(to, behind, max_lag);
        let lagging = matches!((behind, max_lag), (Some(b), Some(m)) if b > m);
        if lagging && !allow_data_loss {
            return Err(fail(
                Exit::Refused,
                format!(
                    "refusing a failover to {to}: {lag}; promoting it would lose what it lacks. Pass \
                     --allow-data-loss to promote it anyway"
                ),
            ));
        }
        let mut text = String::new();
        if allow_data_loss && lagging {
            let _ = writeln!(text, "{lag}: promoting it anyway (--allow-data-loss); what it lacks is lost");
        } else if behind.is_some() {
            let _ = writeln!(text, "{lag}");
        }
        // A switchover away from the preferred node is undone by its failback: say when.
        if let Some(cfg) = self.cfg.as_ref().filter(|c| c.election.preferred_node.as_deref().is_some_and(|p| p != to)) {
            let _ = writeln!(
                text,
                "note: {} is the preferred node: it asks for the role back once its master has been healthy, and it \
                 out of the active role, for election.failback_after_ms ({} ms), and no sooner than \
                 election.min_failover_interval_ms ({} ms) after this failover",
                cfg.election.preferred_node.as_deref().unwrap_or_default(),
                cfg.election.failback_after_ms,
                cfg.election.min_failover_interval_ms
            );
        }
        if dry_run {
            return Ok(failover_plan(to, view.lock.as_ref(), text, behind, max_lag, allow_data_loss && lagging));
        }
        if let Some(at_ms) = at {
            return self.schedule_switchover(&view, to, at_ms, allow_data_loss, text).await;
        }
        let started = wall_ms();
        let clock = std::time::Instant::now();
        let body = allow_data_loss.then(|| json!({"allow_data_loss": true}));
        let message = self.admin_post_body(target, "/admin/failover", wait, body).await?;
        // The agent answers once it is active; confirm from its report that it serves.
        let deadline = clock + wait;
        let mut serving = false;
        while std::time::Instant::now() < deadline {
            if let Ok(s) = member_status(&self.http, target).await {
                if s.get("serving_active").and_then(Value::as_bool).unwrap_or(false) {
                    serving = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let elapsed = clock.elapsed().as_millis() as u64;
        let (events, _) = self.transitions(&view, None).await;
        // Clocks of different hosts differ a little; show what happened from just before.
        let timeline: Vec<&Value> =
            events.iter().filter(|e| e.get("at_ms").and_then(Value::as_i64).unwrap_or(0) >= started - 1000).collect();
        let _ = writeln!(text, "failover to {to}: {message}");
        if !timeline.is_empty() {
            text.push_str("timeline (ms from the request):\n");
            for e in &timeline {
                let at = e.get("at_ms").and_then(Value::as_i64).unwrap_or(0) - started;
                let _ = writeln!(text, "  {at:>+7} {}", transition_text(e));
            }
        }
        if !serving {
            return Err(fail(
                Exit::TimedOut,
                format!("{text}{to} answered, but was not serving as active within {} ms", wait.as_millis()),
            ));
        }
        let _ = writeln!(text, "{to} is serving as active ({elapsed} ms)");
        Ok(Report {
            exit: Exit::Ok,
            text,
            json: json!({
                "ok": true,
                "node": to,
                "message": message,
                "elapsed_ms": elapsed,
                "behind": behind,
                "max_lag": max_lag,
                "data_loss_allowed": allow_data_loss,
                "timeline": timeline,
            }),
        })
    }

    /// Refuses a node that is neither a member, nor a configured peer (nor `last_active`), with
    /// the ones it could be.
    fn known_node(&self, view: &ClusterView, node: &str, last_active: Option<&Breadcrumb>) -> Result<(), Failure> {
        let mut known: Vec<&str> = view.members.iter().map(|m| m.member.node_id.as_str()).collect();
        if let Some(cfg) = &self.cfg {
            known.push(&cfg.node_id);
            known.extend(cfg.peers.iter().map(|p| p.node_id.as_str()));
        }
        known.extend(last_active.map(|c| c.node_id.as_str()));
        if known.contains(&node) {
            return Ok(());
        }
        known.sort_unstable();
        known.dedup();
        let which = if last_active.is_some() {
            "members, configured peers and last active"
        } else {
            "members and configured peers"
        };
        Err(fail(
            Exit::Usage,
            format!("unknown node `{node}`: the {which} of cluster {} are [{}]", view.cluster, known.join(", ")),
        ))
    }

    /// `drain`: records the drain (one znode per node, created once), then, if the node is
    /// active, hands the role over to the best other node fit to take it.
    async fn drain(&self, node: &str, reason: Option<&str>, wait: Duration) -> Result<Report, Failure> {
        let (_, cluster) = self.coordinates()?;
        let view = self.cluster_view().await?;
        self.known_node(&view, node, None)?;
        let client = self.zk_client().await?;
        let parent = format!("{ROOT}/{cluster}/{DRAINED}");
        self.ensure_parent(&client, &parent, "create the drained nodes' parent").await?;
        let path = format!("{parent}/{node}");
        let record = DrainRecord { requested_by: operator(), at_ms: wall_ms(), reason: reason.map(str::to_string) };
        let data = serde_json::to_vec(&record).map_err(|e| fail(Exit::Unreachable, format!("encoding: {e}")))?;
        let mut text = match self.zk_call("record the drain", self.create_record(&client, &path, &data)).await? {
            Ok(()) => {
                format!("{node}: drained ({path}); it will not be promoted until `referee admin undrain {node}`\n")
            }
            Err(zk::Error::NodeExists) => {
                let by = match self.zk_call("read the drain", client.get_data(&path)).await? {
                    Ok((data, _)) => serde_json::from_slice::<DrainRecord>(&data)
                        .map_or_else(|e| format!("an unreadable record ({e})"), |r| r.by()),
                    Err(e) => format!("someone ({e})"),
                };
                format!("{node}: already drained by {by}\n")
            }
            Err(e) => return Err(write_failure(&path, "create", e)),
        };
        drop(client);
        // In force before anything else: a node whose agent has not read it yet could still be
        // promoted, by the handover below too.
        text.push_str(&self.drain_seen(&view, node, true).await?);
        let holds = view.lock.as_ref().is_some_and(|(holder, _)| holder == node);
        if !holds {
            return Ok(Report { exit: Exit::Ok, text, json: json!({"ok": true, "node": node, "record": path}) });
        }
        // The active: hand over to the most caught-up other node fit to take it.
        let mut unfit_ones = Vec::new();
        let mut fit: Vec<(&str, Option<u64>)> = Vec::new();
        for mv in view.members.iter().filter(|m| m.member.node_id != node) {
            let other = mv.member.node_id.as_str();
            match &mv.status {
                Err(e) => unfit_ones.push(format!("{other}: unreachable ({e})")),
                Ok(st) => match unfit(st) {
                    Some(why) => unfit_ones.push(format!("{other}: {why}")),
                    None => fit.push((other, master_position(st))),
                },
            }
        }
        fit.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let Some((to, _)) = fit.first() else {
            let why = if unfit_ones.is_empty() { "it is the only member".to_string() } else { unfit_ones.join("; ") };
            return Err(fail(
                Exit::Refused,
                format!(
                    "{text}{node} stays active: no other node can take over now ({why}); run `referee admin failover \
                     --to NODE` once one can"
                ),
            ));
        };
        let _ = writeln!(text, "{node} is active: handing over to {to}");
        let how = Switchover { wait, allow_data_loss: false, dry_run: false, at: None };
        match self.failover(to, how).await {
            Ok(report) => {
                text.push_str(&report.text);
                Ok(Report {
                    exit: Exit::Ok,
                    text,
                    json: json!({"ok": true, "node": node, "record": path, "failover": report.json}),
                })
            }
            Err(f) => {
                // Worded from the lock read again: the handover may have moved the role, or left
                // it with nobody, whatever the failure says.
                let now = match self.cluster_view().await.map(|v| v.lock) {
                    Ok(Some((holder, _))) if holder == node && f.exit == Exit::Refused => {
                        format!("{node} stays active (drained)")
                    }
                    Ok(Some((holder, _))) if holder == node => format!("{node} is still active for now (drained)"),
                    // The holder may be active, or still promoting (or failing to): it holds the
                    // role, which is what the operator needs to know.
                    Ok(Some((holder, token))) => {
                        format!("{holder} holds the lock now (token {token}); {node} is drained")
                    }
                    Ok(None) => format!("no node is active now (the lock is free); {node} is drained"),
                    Err(e) => format!("{node} is drained; who is active now is unknown ({})", e.reason),
                };
                Err(fail(f.exit, format!("{text}{now}: {}", f.reason)))
            }
        }
    }

    /// Waits until `node`'s agent reports itself drained (`drained`) or not, as it reads its
    /// record about once a second: a line saying so, or a timeout naming what is known. A node
    /// with no agent running has nothing to wait for; its agent reads the record as it starts.
    async fn drain_seen(&self, view: &ClusterView, node: &str, drained: bool) -> Result<String, Failure> {
        let Some(mv) = view.members.iter().find(|m| m.member.node_id == node) else {
            return Ok(format!("{node} has no agent running now; its agent reads this as it starts\n"));
        };
        let limit = DRAIN_SEEN_WAIT;
        let deadline = std::time::Instant::now() + limit;
        loop {
            let seen = member_status(&self.http, mv).await;
            if let Ok(st) = &seen {
                if drained_by(st).is_some() == drained {
                    return Ok(if drained {
                        format!("{node}'s agent has the drain in force\n")
                    } else {
                        format!("{node}'s agent no longer counts itself drained\n")
                    });
                }
            }
            if std::time::Instant::now() >= deadline {
                let now = match seen {
                    Ok(_) => "still reports the opposite".to_string(),
                    Err(e) => format!("cannot be asked ({e})"),
                };
                return Err(fail(
                    Exit::TimedOut,
                    format!("the record is written, but {node}'s agent {now} after {} ms", limit.as_millis()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `undrain`: deletes the node's drain record.
    async fn undrain(&self, node: &str) -> Result<Report, Failure> {
        let (_, cluster) = self.coordinates()?;
        let path = format!("{ROOT}/{cluster}/{DRAINED}/{node}");
        let client = self.zk_client().await?;
        let mut text = match self.zk_call("remove the drain", client.delete(&path, None)).await? {
            Ok(()) => format!("{node}: undrained; it may be promoted again\n"),
            Err(zk::Error::NoNode) => format!("{node} was not drained ({path} is absent)\n"),
            Err(e) => return Err(write_failure(&path, "delete", e)),
        };
        drop(client);
        let view = self.cluster_view().await?;
        text.push_str(&self.drain_seen(&view, node, false).await?);
        Ok(Report { exit: Exit::Ok, text, json: json!({"ok": true, "node": node, "record": path}) })
    }

    /// `confirm-down`: checks that NODE's last term is the one being fenced and that nothing
    /// shows it up, records the confirmation, and waits for another node to be promoted.
    async fn confirm_down(&self, node: &str, reason: &str, wait: Duration) -> Result<Report, Failure> {
        let (_, cluster) = self.coordinates()?;
        if reason.trim().is_empty() {
            return Err(fail(Exit::Usage, "--reason must say how you know the node is down"));
        }
        let view = self.cluster_view().await?;
        let crumb = self
            .confirmation_view(false)
            .await?
            .last_active
            .map_err(|e| fail(Exit::Refused, format!("{e}: cannot tell which term of {node} to confirm")))?;
        self.known_node(&view, node, crumb.as_ref())?;
        if let Some((_, token)) = view.lock.as_ref().filter(|(holder, _)| holder == node) {
            return Err(fail(
                Exit::Refused,
                format!(
                    "{node} holds the lock (token {token}): its agent's session is alive, so it is not down. Hand its \
                     role over with `failover --to NODE` or `drain {node}`"
                ),
            ));
        }
        let (token, target) = match &crumb {
            Some(c) if c.node_id == node => (c.token, Some(c.target.clone())),
            Some(c) => {
                return Err(fail(
                    Exit::Refused,
                    format!(
                        "the last active recorded is {} (token {}), not {node}: no node is being fenced for {node}'s \
                         sake, so there is nothing to confirm",
                        c.node_id, c.token
                    ),
                ))
            }
            // No breadcrumb: the first holder fences every node that could have been active,
            // with token 0.
            None => (
                FencingToken(0),
                self.cfg.as_ref().and_then(|c| c.peer_targets().into_iter().find(|t| t.node_id == node)),
            ),
        };
        let mut text = String::new();
        let member = view.members.iter().find(|m| m.member.node_id == node);
        if let Some(mv) = member {
            if let Ok(st) = &mv.status {
                if str_at(st, "role") == "active" {
                    return Err(fail(
                        Exit::Refused,
                        format!("{node}'s agent answers and reports its master active: it is not down"),
                    ));
                }
            }
            let _ = writeln!(text, "note: {node}'s agent is running (its master is not active by its report)");
        }
        let target = target.or_else(|| member.map(|m| m.member.target.clone()));
        if let Some(target) = &target {
            match self.master_state(target).await {
                Some(s) if s.state == HaState::Active => {
                    return Err(fail(
                        Exit::Refused,
                        format!(
                            "{node}'s master answers at {} and says it is active (token {}): it is not down. Stop it \
                             first",
                            target.ha_base_url(),
                            s.token
                        ),
                    ))
                }
                Some(s) => {
                    let _ = writeln!(
                        text,
                        "note: {node}'s master answers at {} ({:?}, token {}): fencing should reach it",
                        target.ha_base_url(),
                        s.state,
                        s.token
                    );
                }
                None => {
                    let _ = writeln!(text, "{node}'s master does not answer at {} from here", target.ha_base_url());
                }
            }
        }
        let client = self.zk_client().await?;
        let parent = format!("{ROOT}/{cluster}/{CONFIRMED_DOWN}");
        self.ensure_parent(&client, &parent, "create the confirmations' parent").await?;
        let record_path = format!("{parent}/{node}");
        let record =
            ConfirmedDownRecord { requested_by: operator(), at_ms: wall_ms(), reason: reason.to_string(), token };
        let data = serde_json::to_vec(&record).map_err(|e| fail(Exit::Unreachable, format!("encoding: {e}")))?;
        match self.zk_call("record the confirmation", self.create_record(&client, &record_path, &data)).await? {
            Ok(()) => {}
            Err(zk::Error::NodeExists) => {
                match self.zk_call("record the confirmation", client.set_data(&record_path, &data, None)).await? {
                    Ok(_) => {}
                    Err(e) => return Err(write_failure(&record_path, "write", e)),
                }
            }
            Err(e) => return Err(write_failure(&record_path, "create", e)),
        }
        drop(client);
        let term = if token == FencingToken(0) {
            "as one of the nodes fenced without a breadcrumb (token 0)".to_string()
        } else {
            format!("as the last active, token {token}")
        };
        let _ = writeln!(
            text,
            "{node}: confirmed down by {} ({record_path}), {term}. The next fence of {node} that does not end fenced \
             counts as fenced. If its master can still accept writes, the cluster will have two actives.",
            record.by()
        );
        let json = |promoted: Option<(&str, i64)>| {
            json!({"ok": true, "node": node, "record": record_path, "token": token,
                   "promoted": promoted.map(|(n, t)| json!({"node": n, "token": t}))})
        };
        if wait.is_zero() {
            return Ok(Report { exit: Exit::Ok, text, json: json(None) });
        }
        let deadline = std::time::Instant::now() + wait;
        loop {
            let view = self.cluster_view().await?;
            let active = view.lock.as_ref().filter(|(holder, t)| holder != node && *t > token.0 as i64).and_then(
                |(holder, t)| {
                    let mv = view.members.iter().find(|m| &m.member.node_id == holder)?;
                    let st = mv.status.as_ref().ok()?;
                    (str_at(st, "role") == "active").then_some((holder.as_str(), *t))
                },
            );
            if let Some((holder, t)) = active {
                let _ = writeln!(text, "{holder} is active (token {t})");
                return Ok(Report { exit: Exit::Ok, text, json: json(Some((holder, t))) });
            }
            if std::time::Instant::now() >= deadline {
                return Err(fail(
                    Exit::TimedOut,
                    format!(
                        "{text}no other node became active within {} ms; the confirmation stays for the next fence \
                         of {node}: see `referee admin status` for each node's reason",
                        wait.as_millis()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `confirm-down --cancel`: deletes NODE's confirmation, whatever it holds.
    async fn cancel_confirmation(&self, node: &str) -> Result<Report, Failure> {
        let (_, cluster) = self.coordinates()?;
        let path = format!("{ROOT}/{cluster}/{CONFIRMED_DOWN}/{node}");
        let client = self.zk_client().await?;
        let text = match self.zk_call("withdraw the confirmation", client.delete(&path, None)).await? {
            Ok(()) => format!(
                "{node}: confirmation withdrawn ({path}); from now on no fence of {node} stands on it (one that read it \
                 before may have: see `referee admin history`)\n"
            ),
            Err(zk::Error::NoNode) => {
                format!("{node} has no confirmation to withdraw ({path} is absent: never made, or it has served)\n")
            }
            Err(e) => return Err(write_failure(&path, "delete", e)),
        };
        Ok(Report { exit: Exit::Ok, text, json: json!({"ok": true, "node": node, "record": path}) })
    }

    /// What a master answers on `GET /ha/state` (within the command's timeout), if it answers.
    async fn master_state(&self, target: &FenceTarget) -> Option<HaStatus> {
        let url = format!("{}/ha/state", target.ha_base_url());
        match self.http.get(&url).send().await {
            Ok(r) if r.status().is_success() => referee_fencing::read_json::<HaStatus>(r).await.ok(),
            _ => None,
        }
    }

    /// Records a switchover to `to` at `at_ms` for its agent to carry out (see
    /// [`crate::schedule`]); refused while another is scheduled.
    async fn schedule_switchover(
        &self,
        view: &ClusterView,
        to: &str,
        at_ms: i64,
        allow_data_loss: bool,
        said: String,
    ) -> Result<Report, Failure> {
        match &view.switchover {
            Some(Ok(s)) => {
                return Err(fail(
                    Exit::Refused,
                    format!("{}; withdraw it first with `failover --cancel`", scheduled_text(s)),
                ))
            }
            Some(Err(why)) => return Err(fail(Exit::Refused, why.clone())),
            None => {}
        }
        let record = ScheduledSwitchover {
            to: to.to_string(),
            at_ms,
            allow_data_loss,
            requested_by: operator(),
            requested_at_ms: wall_ms(),
        };
        let data =
            serde_json::to_vec(&record).map_err(|e| fail(Exit::Unreachable, format!("encoding the record: {e}")))?;
        let path = switchover_path(&view.cluster);
        let client = self.zk_client().await?;
        match self.zk_call("record the switchover", self.create_record(&client, &path, &data)).await? {
            Ok(_) => {}
            Err(zk::Error::NodeExists) => {
                return Err(fail(
                    Exit::Refused,
                    "another switchover was scheduled meanwhile; see `status`, or `failover --cancel`",
                ))
            }
            Err(e) => return Err(write_failure(&path, "create", e)),
        }
        let mut text = said;
        let _ = writeln!(
            text,
            "{}; {to}'s agent starts it then, checking again; withdraw it with `failover --cancel`",
            scheduled_text(&record)
        );
        Ok(Report { exit: Exit::Ok, text, json: json!({"ok": true, "scheduled": record}) })
    }

    /// Deletes the scheduled switchover, whichever it is.
    async fn cancel_switchover(&self) -> Result<Report, Failure> {
        let (_, cluster) = self.coordinates()?;
        let path = switchover_path(cluster);
        let client = self.zk_client().await?;
        let found = match self.zk_call("read the switchover", client.get_data(&path)).await? {
            Ok((data, stat)) => Some((serde_json::from_slice::<ScheduledSwitchover>(&data).ok(), stat.version)),
            Err(zk::Error::NoNode) => None,
            Err(e) => return Err(fail(Exit::Unreachable, format!("reading {path}: {e}"))),
        };
        let Some((record, version)) = found else {
            return Ok(Report {
                exit: Exit::Ok,
                text: "no switchover is scheduled; nothing to cancel\n".into(),
                json: json!({"ok": true, "cancelled": null}),
            });
        };
        match self.zk_call("delete the switchover", client.delete(&path, Some(version))).await? {
            Ok(()) => {}
            Err(zk::Error::NoNode | zk::Error::BadVersion) => {
                return Err(fail(
                    Exit::Refused,
                    "the scheduled switchover started or changed meanwhile; see `status` and `history`",
                ))
            }
            Err(e) => return Err(write_failure(&path, "delete", e)),
        }
        let what = record.as_ref().map_or_else(|| "an unreadable scheduled switchover".to_string(), scheduled_text);
        Ok(Report {
            exit: Exit::Ok,
            text: format!("cancelled: {what}\n"),
            json: json!({"ok": true, "cancelled": record}),
        })
    }

    async fn unblock(&self, only: Option<&str>) -> Result<Report, Failure> {
        let who = operator();
        let body = json!({"by": format!("{who} (referee admin unblock)")});
        self.post_to_members(only, "/admin/unblock", Some(body)).await
    }

    async fn check_health(&self, node: &str) -> Result<Report, Failure> {
        let view = self.cluster_view().await?;
        let mv = self.find(&view, node)?;
        let st =
            mv.status.as_ref().map_err(|e| fail(Exit::Unreachable, format!("cannot read {node}'s status: {e}")))?;
        let health = st.get("health").cloned().unwrap_or(Value::Null);
        let healthy = health.get("state").and_then(Value::as_str) == Some("healthy");
        let text = if healthy {
            format!("{node}: healthy\n")
        } else {
            format!("{node}: not healthy: {}\n", health_text(Some(&health)))
        };
        Ok(Report {
            exit: if healthy { Exit::Ok } else { Exit::CheckFailed },
            text,
            json: json!({"node": node, "healthy": healthy, "health": health}),
        })
    }

    /// Asks each member's agent (or `only`'s) for a round of fencing checks and prints it; the
    /// exit code is the worst of them, a problem counting as a failed check.
    async fn check_fencing(&self, only: Option<&str>) -> Result<Report, Failure> {
        let view = self.cluster_view().await?;
        let targets = self.targets(&view, only)?;
        // A round can take every method's own deadline, one after another.
        let limit = self.timeout.max(CHECK_FENCING_WAIT);
        let mut exit = Exit::Ok;
        let mut text = String::new();
        let mut results = Vec::new();
        for mv in targets {
            let node = &mv.member.node_id;
            match self.admin_post_json(mv, "/admin/check-fencing", limit, None).await {
                Ok(round) => {
                    let problems = round.get("problems").and_then(Value::as_u64).unwrap_or(0);
                    if problems > 0 {
                        exit = exit.max(Exit::CheckFailed);
                    }
                    text.push_str(&check_round_text(node, &round));
                    results.push(json!({"node": node, "ok": problems == 0, "checks": round}));
                }
                Err(f) => {
                    exit = exit.max(f.exit);
                    let _ = writeln!(text, "{node}: FAILED: {}", f.reason);
                    results.push(json!({"node": node, "ok": false, "reason": f.reason}));
                }
            }
        }
        Ok(Report { exit, text, json: json!({"ok": exit == Exit::Ok, "results": results}) })
    }

    /// Pauses or resumes `only`, or the whole cluster. The whole cluster's pause is recorded in
    /// the coordinator first (`/referee/<cluster>/pause`), so agents restarted during it, or
    /// away when it was asked for, stay paused; each member is then told at once. One member
    /// alone is paused in its agent's process only; resuming one while the cluster is paused is
    /// refused.
    async fn pause_or_resume(&self, pause: bool, only: Option<&str>) -> Result<Report, Failure> {
        let path = if pause { "/admin/pause" } else { "/admin/resume" };
        let (_, cluster) = self.coordinates()?;
        let record_path = pause_path(cluster);
        let client = self.zk_client().await?;
        let said = match only {
            Some(node) if !pause => {
                if let Some(p) = self.read_pause_record(&client, &record_path).await? {
                    return Err(fail(
                        Exit::Refused,
                        format!(
                            "the whole cluster is paused (by {} at {}); `resume` without --node resumes every member, {node} included",
                            p.requested_by,
                            utc(p.at_ms)
                        ),
                    ));
                }
                String::new()
            }
            Some(_) => String::new(),
            None if pause => {
                let record = PauseRecord { requested_by: operator(), at_ms: wall_ms() };
                let data = serde_json::to_vec(&record)
                    .map_err(|e| fail(Exit::Unreachable, format!("encoding the record: {e}")))?;
                match self.zk_call("record the pause", self.create_record(&client, &record_path, &data)).await? {
                    Ok(_) | Err(zk::Error::NodeExists) => {}
                    Err(e) => return Err(write_failure(&record_path, "create", e)),
                }
                format!("cluster {cluster}: paused ({record_path}); agents restarted meanwhile stay paused until `resume`\n")
            }
            None => {
                match self.zk_call("delete the pause record", client.delete(&record_path, None)).await? {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(e) => return Err(write_failure(&record_path, "delete", e)),
                }
                format!("cluster {cluster}: resumed ({record_path} removed)\n")
            }
        };
        let mut report = self.post_to_members(only, path, None).await?;
        report.text.insert_str(0, &said);
        if only.is_none() {
            if let Some(obj) = report.json.as_object_mut() {
                obj.insert("cluster_paused".into(), json!(pause));
                obj.insert("record".into(), json!(record_path));
            }
        }
        Ok(report)
    }

    /// `config`: shows, sets or removes the cluster's settings. A change is checked against the
    /// agent configuration of `--config` (with the settings over it, the agent must accept it)
    /// and written conditioned on the version read, so two operators cannot overwrite each
    /// other unseen.
    async fn cluster_config(&self, action: &ConfigAction) -> Result<Report, Failure> {
        let (_, cluster) = self.coordinates()?;
        let path = format!("{ROOT}/{cluster}/{CLUSTER_CONFIG}");
        let client = self.zk_client().await?;
        let raw = match self.zk_call("read the cluster's settings", client.get_data(&path)).await? {
            Ok((data, stat)) => Some((data, stat.version)),
            Err(zk::Error::NoNode) => None,
            Err(e) => return Err(fail(Exit::Unreachable, format!("reading {path}: {e}"))),
        };
        if let ConfigAction::Unset { all: true, .. } = action {
            if let Some((_, v)) = raw {
                match self.zk_call("remove the settings", client.delete(&path, Some(v))).await? {
                    Ok(()) => {}
                    Err(zk::Error::BadVersion | zk::Error::NoNode) => return Err(changed_meanwhile(&path)),
                    Err(e) => return Err(write_failure(&path, "delete", e)),
                }
            }
            return Ok(Report {
                exit: Exit::Ok,
                text: format!("cluster {cluster}: no settings for the whole cluster; each agent's own apply\n"),
                json: json!({"ok": true, "settings": Value::Null, "record": path}),
            });
        }
        let current: Option<(ClusterSettingsRecord, i32)> = match raw {
            Some((data, v)) => Some((
                serde_json::from_slice(&data).map_err(|e| {
                    fail(
                        Exit::Refused,
                        format!(
                            "{path} holds no settings ({e}); every agent keeps the ones it has in force. \
                             Remove it with `config unset --all`, then set them again"
                        ),
                    )
                })?,
                v,
            )),
            None => None,
        };
        // Each setting named, with its new value (`None`: removed).
        let changes: Vec<(&str, Option<Value>)> = match action {
            ConfigAction::Show => return self.show_cluster_config(cluster, &path, current).await,
            ConfigAction::Set { settings } => settings
                .iter()
                .map(|a| {
                    let (key, value) = a.split_once('=').ok_or_else(|| {
                        fail(Exit::Usage, format!("`{a}`: give SECTION.KEY=VALUE, e.g. election.max_lag=1048576"))
                    })?;
                    let value: Value = serde_yaml::from_str::<serde_yaml::Value>(value)
                        .ok()
                        .and_then(|v| serde_json::to_value(v).ok())
                        .ok_or_else(|| {
                            fail(Exit::Usage, format!("`{a}`: the value is not a number, true/false or text"))
                        })?;
                    Ok((key, Some(value)))
                })
                .collect::<Result<_, Failure>>()?,
            ConfigAction::Unset { keys, .. } => keys.iter().map(|k| (k.as_str(), None)).collect(),
        };
        let cfg = self.cfg.as_ref().ok_or_else(|| {
            fail(Exit::Usage, "config set and unset check the settings against an agent's configuration: give --config")
        })?;
        let mut settings = current.as_ref().map_or_else(|| json!({}), |(r, _)| r.settings.clone());
        for (key, change) in changes {
            let (section, name) = key
                .split_once('.')
                .ok_or_else(|| fail(Exit::Usage, format!("`{key}`: give SECTION.KEY, e.g. election.max_lag")))?;
            // A well-formed key that is not the cluster's is refused, as the settings below are.
            cluster_setting(section, name)
                .map_err(|e| fail(Exit::Refused, format!("refused, nothing was written: {e}")))?;
            let sections =
                settings.as_object_mut().ok_or_else(|| fail(Exit::Refused, "the settings are not a mapping"))?;
            match change {
                Some(value) => {
                    sections.entry(section).or_insert_with(|| json!({}))[name] = value;
                }
                None => {
                    if let Some(Value::Object(keys)) = sections.get_mut(section) {
                        keys.remove(name);
                        if keys.is_empty() {
                            sections.remove(section);
                        }
                    }
                }
            }
        }
        cfg.with_cluster_settings(&settings)
            .map_err(|e| fail(Exit::Refused, format!("refused, nothing was written: with these settings {e}")))?;
        let empty = settings.as_object().is_none_or(|m| m.is_empty());
        let record = ClusterSettingsRecord { settings: settings.clone(), set_by: operator(), at_ms: wall_ms() };
        let data = serde_json::to_vec(&record).map_err(|e| fail(Exit::Unreachable, format!("encoding: {e}")))?;
        let version = current.as_ref().map(|(_, v)| *v);
        let written = match (empty, version) {
            (true, None) => Ok(()),
            (true, Some(v)) => self.zk_call("remove the settings", client.delete(&path, Some(v))).await?,
            (false, None) => self.zk_call("write the settings", self.create_record(&client, &path, &data)).await?,
            (false, Some(v)) => {
                self.zk_call("write the settings", client.set_data(&path, &data, Some(v))).await?.map(drop)
            }
        };
        match written {
            Ok(()) => {}
            Err(zk::Error::BadVersion | zk::Error::NodeExists | zk::Error::NoNode) => {
                return Err(changed_meanwhile(&path))
            }
            Err(e) => return Err(write_failure(&path, "write", e)),
        }
        let text = if empty {
            format!("cluster {cluster}: no settings for the whole cluster; each agent's own apply\n")
        } else {
            format!(
                "cluster {cluster}: settings written ({path}); each agent applies them within a few cycles \
                 (`referee admin config` shows which have):\n{}",
                settings_lines(&settings)
            )
        };
        Ok(Report { exit: Exit::Ok, text, json: json!({"ok": true, "settings": settings, "record": path}) })
    }

    /// `config show`: the record, and each member's view of it.
    async fn show_cluster_config(
        &self,
        cluster: &str,
        path: &str,
        current: Option<(ClusterSettingsRecord, i32)>,
    ) -> Result<Report, Failure> {
        let view = self.cluster_view().await?;
        let mut text = match &current {
            None => format!("cluster {cluster}: no settings for the whole cluster ({path} is absent)\n"),
            Some((r, v)) => format!(
                "cluster {cluster}: settings version {v}, set by {} at {}:\n{}",
                r.set_by,
                utc(r.at_ms),
                settings_lines(&r.settings)
            ),
        };
        let mut members = Vec::new();
        for mv in &view.members {
            let node = &mv.member.node_id;
            let seen = match &mv.status {
                Err(e) => json!({"node": node, "error": e}),
                Ok(st) => {
                    json!({"node": node, "cluster_settings": st.get("cluster_settings").cloned().unwrap_or(Value::Null)})
                }
            };
            let line = match (&mv.status, &current) {
                (Err(e), _) => format!("{node}: unreachable ({e})"),
                (Ok(st), None) => match st.get("cluster_settings") {
                    Some(Value::Null) | None => format!("{node}: its own settings"),
                    Some(s) => format!("{node}: still has version {} in force", s["version"]),
                },
                (Ok(st), Some((_, v))) => {
                    let s = &st["cluster_settings"];
                    if s["version"] != json!(v) {
                        format!("{node}: has not read version {v} yet")
                    } else if s["applied"] == json!(true) {
                        format!("{node}: in force")
                    } else {
                        format!("{node}: refused: {}", s["error"].as_str().unwrap_or("?"))
                    }
                }
            };
            let _ = writeln!(text, "  {line}");
            members.push(seen);
        }
        let json = json!({
            "ok": true,
            "record": path,
            "version": current.as_ref().map(|(_, v)| *v),
            "settings": current.as_ref().map(|(r, _)| r.settings.clone()),
            "set_by": current.as_ref().map(|(r, _)| r.set_by.clone()),
            "members": members,
        });
        Ok(Report { exit: Exit::Ok, text, json })
    }

    /// Creates a persistent record of the cluster's (a scheduled switchover, the pause) under
    /// the cluster's ACL when it is secured (see `format`), open otherwise, as the agents' own.
    async fn create_record(&self, client: &zk::Client, path: &str, data: &[u8]) -> Result<(), zk::Error> {
        let secured = cluster_acl();
        let options = match &self.digest {
            Some(_) => zk::CreateMode::Persistent.with_acls(zk::Acls::new(&secured)),
            None => zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        };
        client.create(path, data, &options).await.map(|_| ())
    }

    /// The cluster's pause record, if there is one (an unreadable one is named as such).
    async fn read_pause_record(&self, client: &zk::Client, path: &str) -> Result<Option<PauseRecord>, Failure> {
        match self.zk_call("read the pause record", client.get_data(path)).await? {
            Ok((data, _)) => Ok(Some(
                serde_json::from_slice(&data)
                    .unwrap_or_else(|e| PauseRecord { requested_by: format!("an unreadable record ({e})"), at_ms: 0 }),
            )),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(fail(Exit::Unreachable, format!("reading {path}: {e}"))),
        }
    }

    /// Member `only`, or every member; refused for an unknown node or a cluster without any.
    fn targets<'v>(&self, view: &'v ClusterView, only: Option<&str>) -> Result<Vec<&'v MemberView>, Failure> {
        let targets: Vec<&MemberView> = match only {
            Some(node) => vec![self.find(view, node)?],
            None => view.members.iter().collect(),
        };
        if targets.is_empty() {
            return Err(fail(Exit::Usage, format!("cluster {} has no members", view.cluster)));
        }
        Ok(targets)
    }

    /// POSTs `path` (with `body`, if any) to the admin API of member `only`, or of every member,
    /// reporting each answer; the exit code is the worst of them.
    async fn post_to_members(&self, only: Option<&str>, path: &str, body: Option<Value>) -> Result<Report, Failure> {
        let view = self.cluster_view().await?;
        let targets = self.targets(&view, only)?;
        let mut exit = Exit::Ok;
        let mut text = String::new();
        let mut results = Vec::new();
        for mv in targets {
            let node = &mv.member.node_id;
            match self.admin_post_body(mv, path, self.timeout, body.clone()).await {
                Ok(message) => {
                    let _ = writeln!(text, "{node}: {message}");
                    results.push(json!({"node": node, "ok": true, "message": message}));
                }
                Err(f) => {
                    exit = exit.max(f.exit);
                    let _ = writeln!(text, "{node}: FAILED: {}", f.reason);
                    results.push(json!({"node": node, "ok": false, "reason": f.reason}));
                }
            }
        }
        Ok(Report { exit, text, json: json!({"ok": exit == Exit::Ok, "results": results}) })
    }

    /// Every transition of the given members (all when `only` is `None`), oldest first, each
    /// tagged with its node; and the members whose history could not be read.
    async fn transitions(&self, view: &ClusterView, only: Option<&str>) -> (Vec<Value>, Vec<(String, String)>) {
        let mut events = Vec::new();
        let mut errors = Vec::new();
        for mv in view.members.iter().filter(|m| only.is_none_or(|n| m.member.node_id == n)) {
            let node = &mv.member.node_id;
            // Read where its status was: not at all if another node's agent answered there.
            if let Err(e) = &mv.status {
                errors.push((node.clone(), e.clone()));
                continue;
            }
            match get_json(&self.http, &probe_url(mv, "/history")).await {
                Ok(h) => {
                    for t in h.get("transitions").and_then(Value::as_array).into_iter().flatten() {
                        let mut t = t.clone();
                        if let Some(obj) = t.as_object_mut() {
                            obj.insert("node".into(), json!(node));
                        }
                        events.push(t);
                    }
                }
                Err(e) => errors.push((node.clone(), e)),
            }
        }
        events.sort_by_key(|e| e.get("at_ms").and_then(Value::as_i64).unwrap_or(0));
        (events, errors)
    }

    async fn history(&self, only: Option<&str>) -> Result<Report, Failure> {
        let view = self.cluster_view().await?;
        if let Some(node) = only {
            self.find(&view, node)?;
        }
        let (events, errors) = self.transitions(&view, only).await;
        let mut text = String::new();
        for e in &events {
            let at = e.get("at_ms").and_then(Value::as_i64).unwrap_or(0);
            let _ = writeln!(text, "{}  {}", utc(at), transition_text(e));
        }
        if events.is_empty() {
            text.push_str("no role changes recorded\n");
        }
        for (node, e) in &errors {
            let _ = writeln!(text, "{node}: history unavailable: {e}");
        }
        let exit = if errors.is_empty() { Exit::Ok } else { Exit::Unreachable };
        let errors: Vec<Value> = errors.iter().map(|(n, e)| json!({"node": n, "error": e})).collect();
        Ok(Report { exit, text, json: json!({"transitions": events, "errors": errors}) })
    }

    /// Creates `/referee/<cluster>` and `members` with the cluster's ACLs: the digest identity
    /// has every permission, everyone else may read (status needs no credential). `/referee`
    /// itself, if missing, lets everyone read and create (other clusters format under it) but
    /// not delete or rewrite.
    async fn format(&self, force: bool) -> Result<Report, Failure> {
        let (_, cluster) = self.coordinates()?;
        let digest = self.digest.as_deref().ok_or_else(|| {
            fail(
                Exit::Usage,
                "format needs the cluster's digest credential: --digest user:password or coordinator.digest",
            )
        })?;
        let user = match digest.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => u,
            _ => return Err(fail(Exit::Usage, "the digest credential must look like user:password")),
        };
        let client = self.zk_client().await?;
        let cluster_acl = cluster_acl();
        let root_acl = [
            zk::Acl::new(zk::Permission::ALL, zk::AuthId::authed()),
            zk::Acl::new(zk::Permission::READ | zk::Permission::CREATE, zk::AuthId::anyone()),
        ];
        let root_path = format!("{ROOT}/{cluster}");
        let members_path = format!("{root_path}/members");
        let mut done = Vec::new();
        self.create_secured(&client, ROOT, &root_acl, true, &mut done).await?;
        self.create_secured(&client, &root_path, &cluster_acl, force, &mut done).await?;
        self.create_secured(&client, &members_path, &cluster_acl, force, &mut done).await?;
        if force {
            // The breadcrumb, the token base and the handover record are persistent and may have
            // been created open by agents that ran before the tree was formatted.
            let persistent = ["breadcrumb", "token-base", HANDOVER].map(|name| format!("{root_path}/{name}"));
            for path in persistent {
                match self.zk_call("secure a znode", client.set_acl(&path, &cluster_acl, None)).await? {
                    Ok(_) => done.push(format!("{path}: ACL replaced")),
                    Err(zk::Error::NoNode) => {}
                    Err(zk::Error::NoAuth) => {
                        return Err(fail(
                            Exit::Refused,
                            format!("{path}: the credential of `{user}` may not change its ACL"),
                        ))
                    }
                    Err(e) => return Err(fail(Exit::Unreachable, format!("{path}: {e}"))),
                }
            }
        }
        let mut text = String::new();
        for line in &done {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(
            text,
            "cluster {cluster} is secured: digest user `{user}` may change it, everyone else may only read"
        );
        Ok(Report {
            exit: Exit::Ok,
            text,
            json: json!({"ok": true, "cluster": cluster, "user": user, "changes": done}),
        })
    }

    /// Creates `path` with `acl`. An existing znode is left alone when `keep_existing` is set
    /// and it is `/referee`; otherwise it is refused, or re-secured with `force`.
    async fn create_secured(
        &self,
        client: &zk::Client,
        path: &str,
        acl: &[zk::Acl],
        force: bool,
        done: &mut Vec<String>,
    ) -> Result<(), Failure> {
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::new(acl));
        match self.zk_call("create", client.create(path, b"", &options)).await? {
            Ok(_) => {
                done.push(format!("{path}: created"));
                Ok(())
            }
            Err(zk::Error::NodeExists) if path == ROOT => Ok(()),
            Err(zk::Error::NodeExists) if !force => Err(fail(
                Exit::Refused,
                format!("{path} already exists (agents ran before formatting, or it was formatted); --force applies the ACLs to it"),
            )),
            Err(zk::Error::NodeExists) => match self.zk_call("set ACL", client.set_acl(path, acl, None)).await? {
                Ok(_) => {
                    done.push(format!("{path}: ACL replaced"));
                    Ok(())
                }
                Err(zk::Error::NoAuth) => Err(fail(Exit::Refused, format!("{path}: this credential may not change its ACL"))),
                Err(e) => Err(fail(Exit::Unreachable, format!("{path}: {e}"))),
            },
            Err(zk::Error::NoAuth) => Err(fail(Exit::Refused, format!("{path}: this credential may not create it"))),
            Err(e) => Err(fail(Exit::Unreachable, format!("{path}: {e}"))),
        }
    }
}

/// What the coordinator and the agents say about the cluster.
struct ClusterView {
    cluster: String,
    /// The holder's node id and token (the lock's czxid plus the token base).
    lock: Option<(String, i64)>,
    members: Vec<MemberView>,
    /// The switchover scheduled, if any (or why its record cannot be read).
    switchover: Option<Result<ScheduledSwitchover, String>>,
}

/// What [`Session::confirmation_view`] read.
struct ConfirmationView {
    /// The breadcrumb: the last active, `None` if no node ever was (or why it cannot be read).
    last_active: Result<Option<Breadcrumb>, String>,
    /// Operators' confirmations that a node is down, not yet served, by node.
    records: Vec<(String, Result<ConfirmedDownRecord, String>)>,
}

/// How `failover` goes about it.
#[derive(Debug, Clone, Copy)]
struct Switchover {
    wait: Duration,
    allow_data_loss: bool,
    dry_run: bool,
    /// Scheduled for then (ms since the Unix epoch) instead of now.
    at: Option<i64>,
}

/// "switchover to db2 scheduled for 2026-12-04T02:00:00.000Z (in 90 s), asked by ops".
fn scheduled_text(s: &ScheduledSwitchover) -> String {
    let left = (s.at_ms - wall_ms()) / 1000;
    let when = if left >= 0 { format!("in {left} s") } else { format!("{} s ago", -left) };
    let loss = if s.allow_data_loss { ", allowing data loss" } else { "" };
    format!("switchover to {} scheduled for {} ({when}{loss}), asked by {}", s.to, utc(s.at_ms), s.requested_by)
}

/// Where the scheduled switchover of `cluster` is recorded.
fn switchover_path(cluster: &str) -> String {
    format!("{ROOT}/{cluster}/{SWITCHOVER}")
}

/// The settings as `  section.key = value` lines.
fn settings_lines(settings: &Value) -> String {
    let mut out = String::new();
    for (section, keys) in settings.as_object().into_iter().flatten() {
        for (key, value) in keys.as_object().into_iter().flatten() {
            let _ = writeln!(out, "  {section}.{key} = {value}");
        }
    }
    out
}

fn pause_path(cluster: &str) -> String {
    format!("{ROOT}/{cluster}/{PAUSE}")
}

/// A cluster's ACL when it is secured: the authenticated credential may do everything,
/// everyone else may read.
fn cluster_acl() -> [zk::Acl; 2] {
    [zk::Acl::new(zk::Permission::ALL, zk::AuthId::authed()), zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone())]
}

/// A failed write of `path`: refused (exit 3) when the credential lacks the right, else the
/// coordinator's error (exit 4).
fn write_failure(path: &str, verb: &str, e: zk::Error) -> Failure {
    match e {
        zk::Error::NoAuth => {
            fail(Exit::Refused, format!("{path}: this credential may not {verb} it; give the cluster's --digest"))
        }
        e => fail(Exit::Unreachable, format!("{path}: could not {verb} it: {e}")),
    }
}

/// The operator's login name, for the records and logs of what they asked.
fn operator() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into())
}

struct MemberView {
    member: Member,
    /// Its `/status`, or why it could not be read.
    status: Result<Value, String>,
}

fn probe_url(mv: &MemberView, path: &str) -> String {
    format!("http://{}{path}", mv.member.probe_addr.as_deref().unwrap_or_default())
}

/// `mv`'s `/status`, read again.
async fn member_status(http: &reqwest::Client, mv: &MemberView) -> Result<Value, String> {
    let addr = mv.member.probe_addr.as_deref().ok_or("publishes no probe address")?;
    answered_by(&mv.member.node_id, addr, get_json(http, &probe_url(mv, "/status")).await?)
}

/// `status`, as read at `addr` for `node`, unless another node's agent answered there: an
/// address that is loopback or a wildcard on the node's own host reaches the reader's host.
fn answered_by(node: &str, addr: &str, status: Value) -> Result<Value, String> {
    match status.get("node_id").and_then(Value::as_str) {
        Some(id) if id == node => Ok(status),
        Some(id) => Err(format!(
            "its published probe address {addr} is answered by {id}'s agent, not its own (a loopback or wildcard \
             `probes.listen` read from another host?): set `probes.advertise` on {node} to an address this host \
             reaches, or run this on {node}'s host"
        )),
        None => Err(format!("{addr} answered a status without a node id")),
    }
}

/// What `failover --dry-run` reports once every check has passed: the steps the failover would
/// take, with nothing sent. `said` is what the checks already printed (the lag).
fn failover_plan(
    to: &str,
    lock: Option<&(String, i64)>,
    said: String,
    behind: Option<u64>,
    max_lag: Option<u64>,
    loses_data: bool,
) -> Report {
    let mut text = said;
    let _ = writeln!(text, "dry run: a failover to {to} would go ahead; nothing was sent");
    let steps = match lock {
        Some((holder, token)) => vec![
            format!("{holder} (active, token {token}) demotes its master and, once it confirms standby, releases the lock cleanly"),
            format!("{to} takes the lock, checks {holder}'s clean step-down (or fences it), and promotes its master with a higher token"),
        ],
        None => vec![format!("nobody holds the lock: {to} takes it, fences the last active if its step-down was not clean, and promotes its master")],
    };
    for (i, step) in steps.iter().enumerate() {
        let _ = writeln!(text, "  {}. {step}", i + 1);
    }
    if loses_data {
        let _ = writeln!(text, "  what {to} lacks of the active's data is lost (--allow-data-loss)");
    }
    Report {
        exit: Exit::Ok,
        text,
        json: json!({
            "ok": true,
            "dry_run": true,
            "node": to,
            "active": lock.map(|(n, t)| json!({"node_id": n, "token": t})),
            "behind": behind,
            "max_lag": max_lag,
            "data_loss_allowed": loses_data,
            "steps": steps,
        }),
    }
}

/// Why a node cannot take over, from its report; `None` when it can.
fn unfit(st: &Value) -> Option<String> {
    let health = st.get("health");
    if health.and_then(|h| h.get("state")).and_then(Value::as_str) != Some("healthy") {
        return Some(format!("its master is not healthy ({})", health_text(health)));
    }
    if let Some(by) = st.get("cluster_paused_by").and_then(Value::as_str) {
        return Some(format!(
            "the whole cluster is paused (by {by}); `referee admin resume` (without --node) ends that"
        ));
    }
    if st.get("paused").and_then(Value::as_bool).unwrap_or(false) {
        return Some("it is paused; resume it first".into());
    }
    if let Some(by) = drained_by(st) {
        return Some(format!("it is drained (by {by}); `undrain` it first"));
    }
    // What its agent says keeps it out for good (the agent refuses such a failover too).
    if st.get("blocker").and_then(|b| b.get("blocker")).and_then(Value::as_str) == Some("nofailover") {
        return Some("it is tagged nofailover (election.nofailover): it never takes over".into());
    }
    let session = st.get("session").and_then(|s| s.get("state")).and_then(Value::as_str);
    if session != Some("connected") {
        return Some(format!("it has no coordinator session ({})", session_text(st.get("session"))));
    }
    let role = str_at(st, "role");
    if role != "standby" {
        return Some(format!("it is {role}, not a standby ready to take over"));
    }
    None
}

/// How `status` shows `node`'s confirmation, and whether it stands for a fence now: only while
/// the breadcrumb names the term it was made for (or, made with token 0, while there is none).
fn confirmation_text(
    node: &str,
    record: &ConfirmedDownRecord,
    last_active: &Result<Option<Breadcrumb>, String>,
) -> (String, bool) {
    let current = match last_active {
        Ok(Some(c)) => c.node_id == node && c.token == record.token,
        Ok(None) => record.token == FencingToken(0),
        Err(_) => false,
    };
    let effect = if current {
        format!("the next fence of {node} that does not end fenced counts as fenced")
    } else {
        format!("stale: the term it names is not the last active's, so it stands for no fence of {node}")
    };
    (format!("{node} confirmed down by {} for its term with token {}: {effect}", record.by(), record.token), current)
}

/// The node a member last failed to fence, and how, from its `/status` report's last failure
/// (`fencing NODE: OUTCOME`).
fn failed_fence(st: &Value) -> Option<(String, String)> {
    let failure = st.get("last_failure")?.as_str()?;
    let (target, outcome) = failure.strip_prefix("fencing ")?.split_once(": ")?;
    Some((target.to_string(), outcome.to_string()))
}

/// Who drained a node and why, from its `/status` report; `None` when it is not drained.
fn drained_by(st: &Value) -> Option<String> {
    let d = st.get("drained").filter(|d| !d.is_null())?;
    Some(serde_json::from_value::<DrainRecord>(d.clone()).map_or_else(|_| d.to_string(), |r| r.by()))
}

/// The master's replication position in a `/status` report.
fn master_position(st: &Value) -> Option<u64> {
    st.get("master").and_then(|m| m.get("position")).and_then(Value::as_u64)
}

/// The PAUSED column: "no", "yes" (this member alone) or "cluster" (the whole cluster's pause).
fn paused_text(s: &Value) -> String {
    if s.get("cluster_paused_by").is_some_and(|b| !b.is_null()) {
        "cluster".into()
    } else if s.get("paused").and_then(Value::as_bool).unwrap_or(false) {
        "yes".into()
    } else {
        "no".into()
    }
}

/// The FENCING column: what the member's last round of fencing checks found.
fn fencing_text(s: &Value) -> String {
    match s.get("fencing_checks").filter(|c| !c.is_null()) {
        None => "-".into(),
        Some(c) => match c.get("problems").and_then(Value::as_u64) {
            Some(0) => "ok".into(),
            Some(1) => "1 problem".into(),
            Some(n) => format!("{n} problems"),
            None => "?".into(),
        },
    }
}

/// A member's round of fencing checks: a heading, then a line per method and peer.
fn check_round_text(node: &str, round: &Value) -> String {
    let problems = round.get("problems").and_then(Value::as_u64).unwrap_or(0);
    let verdict = match problems {
        0 => "no problem".to_string(),
        1 => "1 problem: fencing may fail when it is needed".to_string(),
        n => format!("{n} problems: fencing may fail when it is needed"),
    };
    let mut text = format!("{node}: {verdict}\n");
    let peers = round.get("peers").and_then(Value::as_array).cloned().unwrap_or_default();
    if peers.is_empty() {
        text.push_str("  (no peers configured)\n");
    }
    for peer in &peers {
        let target = peer.get("node_id").and_then(Value::as_str).unwrap_or("?");
        for check in peer.get("checks").and_then(Value::as_array).into_iter().flatten() {
            let level = check.get("level").and_then(Value::as_u64).unwrap_or(0);
            let method = check.get("method").and_then(Value::as_str).unwrap_or("?");
            let said = |key: &str| check.get(key).and_then(Value::as_str).unwrap_or("").to_string();
            let (word, detail) = match check.get("readiness").and_then(Value::as_str) {
                Some("ready") => ("ready", said("detail")),
                Some("problem") => ("PROBLEM", said("reason")),
                Some("unchecked") => ("unchecked", said("why")),
                _ => ("?", String::new()),
            };
            let _ = writeln!(text, "  -> {target}  level {level}  {method:<12} {word:<10} {detail}");
        }
    }
    text
}

/// One line for each problem the member's fencing checks found: whom it could not fence, by
/// which method, and why.
fn fencing_problems(s: &Value) -> Vec<String> {
    let peers = s.pointer("/fencing_checks/peers").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut lines = Vec::new();
    for peer in &peers {
        let node = peer.get("node_id").and_then(Value::as_str).unwrap_or("?");
        for check in peer.get("checks").and_then(Value::as_array).into_iter().flatten() {
            if check.get("readiness").and_then(Value::as_str) == Some("problem") {
                let level = check.get("level").and_then(Value::as_u64).unwrap_or(0);
                let method = check.get("method").and_then(Value::as_str).unwrap_or("?");
                let reason = check.get("reason").and_then(Value::as_str).unwrap_or("");
                lines.push(format!("may not be able to fence {node}: level {level} {method}: {reason}"));
            }
        }
    }
    lines
}

/// A self-fencing watchdog that is armed and not fed: the host is about to reset.
fn watchdog_starving(s: &Value) -> Option<String> {
    let wd = s.get("watchdog").filter(|w| w.get("armed").and_then(Value::as_bool) == Some(true))?;
    let why = wd.get("starving").and_then(Value::as_str)?;
    let ms = wd.get("self_fence_ms").and_then(Value::as_u64)?;
    Some(format!("watchdog not fed ({why}): its host resets within {ms} ms unless that changes"))
}

fn position_text(st: &Value) -> String {
    match (master_position(st), st.get("behind").and_then(Value::as_u64)) {
        (Some(p), Some(b)) if b > 0 => format!("{p} (-{b})"),
        (Some(p), _) => p.to_string(),
        (None, _) => "-".into(),
    }
}

/// "db3 is N behind the active (max_lag M)".
fn lag_text(node: &str, behind: Option<u64>, max_lag: Option<u64>) -> String {
    let limit = max_lag.map_or(String::new(), |m| format!(" (max_lag {m})"));
    match behind {
        Some(b) => format!("{node} is {b} behind the active{limit}"),
        None => format!("how far {node} is behind the active is not known{limit}"),
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let response = http.get(url).send().await.map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
    let code = response.status();
    if !code.is_success() {
        return Err(format!("GET {url} answered {code}"));
    }
    response.json().await.map_err(|e| format!("GET {url}: unreadable answer: {e}"))
}

/// The error with its causes, which is where reqwest puts "connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let _ = write!(text, ": {c}");
        cause = c.source();
    }
    text
}

fn str_at(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("?").to_string()
}

fn health_text(health: Option<&Value>) -> String {
    let Some(h) = health else { return "?".into() };
    let state = h.get("state").and_then(Value::as_str).unwrap_or("?");
    match h.get("reason").and_then(Value::as_str) {
        Some(reason) => format!("{state}: {reason}"),
        None => state.to_string(),
    }
}

fn session_text(session: Option<&Value>) -> String {
    let Some(s) = session else { return "?".into() };
    let state = s.get("state").and_then(Value::as_str).unwrap_or("?");
    match s.get("session_id").and_then(Value::as_i64) {
        Some(id) => format!("{state} {id:#x}"),
        None => state.to_string(),
    }
}

/// One line for a history entry: node, roles, token, reason and phases.
fn transition_text(e: &Value) -> String {
    let mut line = format!("{}  {} -> {}", str_at(e, "node"), str_at(e, "from"), str_at(e, "to"));
    if let Some(token) = e.get("token").and_then(Value::as_u64) {
        let _ = write!(line, "  token {token}");
    }
    if let Some(p) = e.get("phases").filter(|p| p.is_object()) {
        let ms = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
        let _ = write!(
            line,
            "  (detect {} ms, elect {} ms, fence {} ms, promote {} ms)",
            ms("detect_ms"),
            ms("elect_ms"),
            ms("fence_ms"),
            ms("promote_ms")
        );
    }
    let _ = write!(line, "  {}", str_at(e, "reason"));
    if let Some(n) = e.get("attempts_before").and_then(Value::as_u64).filter(|n| *n > 0) {
        let since = e.get("first_given_up_at_ms").and_then(Value::as_i64).map(utc).unwrap_or_default();
        let _ = write!(line, "  (after {n} attempts given up the same way since {since})");
    }
    line
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn utc(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check lines and the problems of `status` number levels as `/status` gives them,
    /// from 0, as the fencer's log and the configuration do.
    #[test]
    fn fencing_check_lines_number_levels_from_0() {
        let round = json!({
            "problems": 1,
            "peers": [{"node_id": "db2", "checks": [
                {"level": 0, "index": 0, "method": "graceful", "readiness": "ready", "detail": "answers"},
                {"level": 1, "index": 0, "method": "ssh", "readiness": "problem", "reason": "cannot reach db2"},
            ]}],
        });
        let text = check_round_text("db1", &round);
        assert!(text.contains("-> db2  level 0  graceful"), "{text}");
        assert!(text.contains("-> db2  level 1  ssh"), "{text}");
        let problems = fencing_problems(&json!({ "fencing_checks": round }));
        assert_eq!(problems, ["may not be able to fence db2: level 1 ssh: cannot reach db2"]);
    }

    /// The shipped agent configurations name their own node as preferred, which needs the
    /// `admin` section: the command reads them whole, as the agent does.
    #[test]
    fn the_shipped_agent_configs_are_read_with_their_admin_section() {
        for file in ["agent-db1.yaml", "agent-db2.yaml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config").join(file);
            let loaded = load_agent_config(&path);
            let (cfg, admin) = loaded.unwrap_or_else(|f| panic!("{file}: {}", f.reason));
            assert!(cfg.admin.is_some() && admin.is_some(), "{file}");
        }
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn a_confirmation_is_current_only_for_the_last_actives_term() {
        let record = |token| ConfirmedDownRecord {
            requested_by: "ops".into(),
            at_ms: 1,
            reason: "off".into(),
            token: FencingToken(token),
        };
        let crumb = |node: &str, token| {
            Ok(Some(Breadcrumb {
                node_id: node.into(),
                token: FencingToken(token),
                clean: false,
                target: FenceTarget::new(node, "h", 1, FencingToken(token)),
            }))
        };
        let (line, current) = confirmation_text("db1", &record(40), &crumb("db1", 40));
        assert!(current);
        assert_eq!(
            line,
            "db1 confirmed down by ops (off) for its term with token 40: the next fence of db1 that does not end \
             fenced counts as fenced"
        );
        for (what, last) in [
            ("a later term", crumb("db1", 45)),
            ("another node", crumb("db2", 40)),
            ("no breadcrumb", Ok(None)),
            ("unreadable", Err("bad".to_string())),
        ] {
            let (line, current) = confirmation_text("db1", &record(40), &last);
            let stale = "stale: the term it names is not the last active's, so it stands for no fence of db1";
            assert!(!current && line.ends_with(stale), "{what}: {line}");
        }
        assert!(confirmation_text("db1", &record(0), &Ok(None)).1);
        assert!(!confirmation_text("db1", &record(0), &crumb("db1", 40)).1);
    }

    #[test]
    fn promotions_given_up_in_a_row_are_counted_in_the_history() {
        let e = json!({"node": "b", "from": "promoting", "to": "standby", "reason": "fencing a failed",
                       "attempts_before": 3, "first_given_up_at_ms": 0});
        assert_eq!(
            transition_text(&e),
            "b  promoting -> standby  fencing a failed  (after 3 attempts given up the same way since \
             1970-01-01T00:00:00.000Z)"
        );
        let once = json!({"node": "b", "from": "promoting", "to": "standby", "reason": "fencing a failed"});
        assert_eq!(transition_text(&once), "b  promoting -> standby  fencing a failed");
    }

    #[test]
    fn an_armed_watchdog_not_fed_is_named() {
        let st = json!({"watchdog": {"self_fence_ms": 4000, "armed": true, "starving": "the master may be active"}});
        assert_eq!(
            watchdog_starving(&st).as_deref(),
            Some("watchdog not fed (the master may be active): its host resets within 4000 ms unless that changes")
        );
        let fed = json!({"watchdog": {"self_fence_ms": 4000, "armed": true, "starving": null}});
        let unarmed = json!({"watchdog": {"self_fence_ms": 4000, "armed": false, "starving": "not read yet"}});
        for st in [fed, unarmed, json!({"watchdog": null}), json!({})] {
            assert_eq!(watchdog_starving(&st), None, "{st}");
        }
    }

    #[test]
    fn a_failed_fence_is_read_from_the_last_failure() {
        let st = json!({"last_failure": "fencing db1: Failed { reason: \"no level fenced the target\" }"});
        assert_eq!(
            failed_fence(&st),
            Some(("db1".to_string(), "Failed { reason: \"no level fenced the target\" }".to_string()))
        );
        assert_eq!(failed_fence(&json!({"last_failure": "promoting: refused"})), None);
        assert_eq!(failed_fence(&json!({"last_failure": null})), None);
        assert_eq!(failed_fence(&json!({})), None);
    }

    #[test]
    fn unfit_names_the_reason() {
        let ok = json!({"health": {"state": "healthy"}, "paused": false, "session": {"state": "connected", "session_id": 1}, "role": "standby"});
        assert_eq!(unfit(&ok), None);
        let sick = json!({"health": {"state": "unhealthy", "reason": "disk full"}, "role": "unhealthy"});
        assert!(unfit(&sick).unwrap().contains("disk full"));
        let mut paused = ok.clone();
        paused["paused"] = json!(true);
        assert!(unfit(&paused).unwrap().contains("paused"));
        // Under the cluster's pause, resuming the node alone is refused: the way out is named.
        let mut cluster_paused = paused.clone();
        cluster_paused["cluster_paused_by"] = json!("ops@h");
        assert_eq!(
            unfit(&cluster_paused).unwrap(),
            "the whole cluster is paused (by ops@h); `referee admin resume` (without --node) ends that"
        );
        let mut alone = ok.clone();
        alone["session"] = json!({"state": "connecting"});
        assert!(unfit(&alone).unwrap().contains("coordinator session"));
        let mut drained = ok.clone();
        drained["drained"] = json!({"requested_by": "ops@h", "at_ms": 1, "reason": "kernel update"});
        assert_eq!(unfit(&drained).unwrap(), "it is drained (by ops@h (kernel update)); `undrain` it first");
        // Tagged nofailover, as its agent reports it: the agent would refuse the failover.
        let mut status = crate::status::AgentStatus::new("c", "b");
        status.blocker = Some(crate::candidacy::Blocker::Nofailover);
        let mut tagged = ok.clone();
        tagged["blocker"] = serde_json::to_value(&status).unwrap()["blocker"].clone();
        assert!(unfit(&tagged).unwrap().contains("nofailover"), "{tagged}");
    }

    #[test]
    fn exit_codes_are_pinned() {
        let codes: Vec<i32> =
            [Exit::Ok, Exit::CheckFailed, Exit::Usage, Exit::Refused, Exit::Unreachable, Exit::TimedOut]
                .map(Exit::code)
                .to_vec();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5]);
    }
}
