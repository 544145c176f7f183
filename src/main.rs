//! `referee`: one binary for every role of the suite.
//!
//! ```text
//! referee coordinator --config config/coordinator.yaml   # the bundled ZooKeeper-wire ensemble
//! referee coordinator --config server1.yaml --init      # an ensemble's first start, on one server
//! referee coordinator log dump DATA_DIR                  # list a coordinator's Raft log
//! referee coordinator snapshot dump DATA_DIR_OR_FILE     # list its snapshots
//! referee coordinator members list --server ADMIN_ADDR  # the ensemble's members (add, remove too)
//! referee coordinator ensemble up --servers 3            # a whole ensemble on this machine (status, down)
//! referee agent --config config/agent-db1.yaml           # the failover agent beside a master
//! referee demo --scenario coordinator-leader-crash       # the demo, on a three-server ensemble
//! ```
//!
//! The binary only parses arguments, sets up logging and signals, and calls the libraries.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use referee_coordinator::server::shutdown_signal;

#[derive(Parser)]
#[command(
    name = "referee",
    version,
    about = "High-availability failover: coordinator, agents and fencing",
    after_help = referee::logging::ENV_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DemoScenario {
    /// kill -9 of the active master.
    Crash,
    /// SIGSTOP of the active master.
    Hang,
    /// kill -9 of the active agent.
    AgentCrash,
    /// The active node cut off from the coordinator (its agent's connections black-holed), its
    /// master running on: it stops at its lease end, the other node takes over.
    Partition,
    /// A graceful switchover with `referee admin failover`.
    Switchover,
    /// kill -9 of the coordinator (every server of an ensemble at once) under load, then a
    /// restart on the data directories.
    CoordinatorRestart,
    /// kill -9 of the coordinator ensemble's leader under load: no failover; the killed server
    /// restarts and rejoins as a follower (needs --coordinator ensemble).
    CoordinatorLeaderCrash,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DemoCoordinator {
    /// One bundled coordinator server.
    Single,
    /// Three bundled coordinator servers forming a Raft ensemble.
    Ensemble,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MasterAction {
    /// Exit 0 when the master reports healthy.
    Health,
    /// Print the master's status as JSON.
    State,
    /// Make the master active with `FENCE_TOKEN`.
    Promote,
    /// Make the master standby, telling it `FENCE_TOKEN` (exit 0 once it holds that token).
    Demote,
}

#[derive(Subcommand)]
enum CoordinatorTool {
    /// Inspect the Raft log of a data directory (read-only; works on a stopped server's).
    Log {
        #[command(subcommand)]
        action: LogAction,
    },
    /// Inspect snapshot files (read-only).
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// List, add or remove ensemble members through a server's admin HTTP listener
    /// (`admin_listen`). A server that does not lead names the leader, and the request is sent
    /// there once. Exit codes: 0 done, 1 refused or unreachable, 2 bad arguments.
    Members {
        #[command(subcommand)]
        action: MembersAction,
    },
    /// Run a whole ensemble on this machine as background processes of this executable:
    /// `up`, `status`, `down`. Exit codes: 0 done (status: serving), 1 failed (status: not
    /// serving), 2 bad arguments.
    Ensemble {
        #[command(subcommand)]
        action: EnsembleAction,
    },
}

#[derive(Subcommand)]
enum EnsembleAction {
    /// Write one configuration per server, start the servers that are not running (the first
    /// time, server 1 with --init), wait until one leads, print the connect string. An
    /// existing directory rejoins with its data; `up` on a running ensemble does nothing.
    Up {
        /// Voters: 1, 3, 5 or 7 (writes wait for a majority; 1 runs standalone).
        #[arg(long)]
        servers: u8,
        /// Observers (serve clients, never vote): 0 to 9.
        #[arg(long, default_value_t = 0)]
        observers: u8,
        #[command(flatten)]
        dir: EnsembleDir,
        /// Client port of server 1; the others follow, peers at +20, admin listeners at +40
        /// (default: clients at 2181, peers at 2888, admin at 8080).
        #[arg(long)]
        base_port: Option<u16>,
    },
    /// Each server's pid, mode (as `srvr` says, like `zkServer.sh status`) and client address,
    /// then a verdict: exit 0 while the ensemble serves (a majority of the voters follow one
    /// leader; `serving, degraded` names the servers that do not), 1 when it does not.
    Status {
        #[command(flatten)]
        dir: EnsembleDir,
    },
    /// Stop every server (SIGTERM, SIGKILL after 10 s), keeping the data unless --purge.
    Down {
        #[command(flatten)]
        dir: EnsembleDir,
        /// Also remove the data, configurations and logs (asks nothing).
        #[arg(long)]
        purge: bool,
    },
}

/// Where an ensemble lives.
#[derive(clap::Args)]
struct EnsembleDir {
    /// The ensemble directory (default: ./referee-ensemble).
    #[arg(long, default_value = referee::ensemble::DEFAULT_DIR)]
    dir: PathBuf,
}

/// Which server's admin listener to ask, and for how long.
#[derive(clap::Args)]
struct AdminTarget {
    /// The admin address (`admin_listen`) of any server of the ensemble, as HOST:PORT.
    #[arg(long)]
    server: String,
    /// Deadline of each request, in milliseconds (a new member must catch up with the log
    /// before it counts as added; the server gives up after 30 s).
    #[arg(long, default_value_t = 35_000)]
    timeout_ms: u64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MemberRole {
    /// Votes and counts towards the write quorum.
    Voter,
    /// Receives the log and serves clients, never votes (an openraft learner).
    Observer,
}

#[derive(Subcommand)]
enum MembersAction {
    /// Print the membership: each member's id, role, addresses and, from the leader, its lag.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Add a server (started first, without --init, with `servers` listing the ensemble and
    /// itself), or promote an observer with `--role voter`.
    Add {
        #[command(flatten)]
        target: AdminTarget,
        /// The new server's `server_id`.
        #[arg(long)]
        id: u64,
        /// Its client address (its `listen`), as IP:port (a host name is not accepted).
        #[arg(long, value_name = "IP:PORT")]
        client: std::net::SocketAddr,
        /// Its peer address, as IP:port (a host name is not accepted).
        #[arg(long, value_name = "IP:PORT")]
        peer: std::net::SocketAddr,
        /// Its role.
        #[arg(long, value_enum, default_value_t = MemberRole::Observer)]
        role: MemberRole,
        /// Its admin address (its `admin_listen`), if it has one, as IP:port.
        #[arg(long, value_name = "IP:PORT")]
        admin: Option<std::net::SocketAddr>,
    },
    /// Remove a voter or an observer (the leader too: it steps down once its removal is
    /// committed, and the other voters elect one of them).
    Remove {
        #[command(flatten)]
        target: AdminTarget,
        /// The member's server id.
        #[arg(long)]
        id: u64,
    },
}

#[derive(Subcommand)]
enum LogAction {
    /// List every record (segment, offset, index, term, transaction kind, path) and a summary;
    /// exits 1 if the log is damaged other than by a torn tail, or fails another check
    /// start-up makes (another cluster's segment, a missing one, an entry out of sequence, no
    /// saved vote), each named.
    Dump {
        /// The coordinator's data directory (`data_dir`), or its `log/` directory.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum SnapshotAction {
    /// List a snapshot file's sessions and znodes, or one line per snapshot of a directory;
    /// exits 1 if a snapshot is damaged.
    Dump {
        /// A snapshot file, a data directory, or its `snapshots/` directory.
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a coordinator server (speaks the Apache ZooKeeper client protocol); inspect a
    /// coordinator's data directory with `log dump` and `snapshot dump`; list, add or remove an
    /// ensemble's members with `members`; run a whole ensemble on this machine with `ensemble
    /// up|status|down`.
    #[command(args_conflicts_with_subcommands = true)]
    Coordinator {
        /// Path of the coordinator's YAML configuration (to run the server).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Initialise the ensemble `servers` lists, once, when it first starts: give it to one
        /// server; later starts rejoin from the log. A server running alone needs none.
        #[arg(long, requires = "config")]
        init: bool,
        #[command(subcommand)]
        tool: Option<CoordinatorTool>,
    },
    /// Run the demo master (a master speaking the HA protocol, for the demo and tests).
    DemoMaster {
        /// Path of the demo master's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Address to serve the HA protocol and the client API on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Write the process id here once listening (for the `kill` fencing method).
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// Ignore the configuration's `lease` section: never poll the agent's `/lease`, and
        /// accept writes while active until demoted, as a master without a self-enforced
        /// lease does.
        #[arg(long)]
        no_lease_poll: bool,
    },
    /// Drive a master speaking the HA protocol from a command adapter's programs: exit 0 when
    /// healthy (health), print the status (state), promote or demote with `FENCE_TOKEN`.
    /// Without `--url`, acts on `TARGET_HA_URL`, so `demote` also serves as a `shell` fencing
    /// method. Exit codes: 0 done, 1 refused or not as asked, 2 usage, 3 no answer.
    #[command(name = "master-command")]
    DriveMaster {
        /// What to do.
        #[arg(value_enum)]
        action: MasterAction,
        /// The master's HA base URL (default: `TARGET_HA_URL`).
        #[arg(long)]
        url: Option<String>,
        /// Deadline of the request, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Run the demo: a coordinator (three servers by default), two masters and two agents; a
    /// failure; a fenced failover; a verdict from an independent reader of the journal.
    Demo {
        /// The failure to inject.
        #[arg(long, value_enum, default_value_t = DemoScenario::Crash)]
        scenario: DemoScenario,
        /// The coordinator: a three-server ensemble, or one server.
        #[arg(long, value_enum, default_value_t = DemoCoordinator::Ensemble)]
        coordinator: DemoCoordinator,
        /// Exit this many seconds after the verdict (exit status 0 only if it holds) instead of
        /// waiting for Ctrl-C.
        #[arg(long, value_name = "SECONDS")]
        exit_after: Option<u64>,
    },
    /// Operate a cluster: status, failover --to, unblock, check-health, pause, resume, history,
    /// check-fencing, format, drain, undrain, confirm-down, config.
    Admin(referee_failover_agent::admin_cli::AdminArgs),
    /// Run a failover agent beside a master.
    Agent {
        /// Path of the agent's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Check the fencing chain against every configured peer instead of running, fencing
        /// nothing (the master's HA endpoint answers, the ssh login works, the power device reads
        /// the node on, ...); exit 0 when no method has a problem, 1 otherwise.
        #[arg(long, conflicts_with = "unfence")]
        check_fencing: bool,
        /// Undo what the reversible fencing methods put in place for the configured peer NODE
        /// (isolate's firewall rules, a fence agent's power-off) instead of running, once the
        /// node is repaired; exit 0 when everything was undone, 1 otherwise.
        #[arg(long, value_name = "NODE")]
        unfence: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(runtime) = referee::logging::start("referee") else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Coordinator { config: Some(config), init, tool: None } => {
                referee_coordinator::run::run_from_config(&config, init, "referee")
                    .await
                    .map(|()| 0)
                    .map_err(Into::into)
            }
            Command::Coordinator { config: None, tool: Some(CoordinatorTool::Members { action }), .. } => {
                Ok(run_members(action).await)
            }
            Command::Coordinator { config: None, tool: Some(CoordinatorTool::Ensemble { action }), .. } => {
                // Blocking work (processes, pidfiles, short TCP asks) away from the runtime's workers.
                tokio::task::spawn_blocking(move || run_ensemble(action)).await.context("the ensemble command")
            }
            Command::Coordinator { config: None, tool: Some(tool), .. } => run_coordinator_tool(tool),
            Command::Coordinator { .. } => {
                eprintln!(
                    "referee coordinator: give --config FILE to run a server, `log dump DIR` / `snapshot dump \
                     PATH` to inspect a data directory, `members list|add|remove --server ADMIN_ADDR` to change an \
                     ensemble's members, or `ensemble up|status|down` to run an ensemble on this machine"
                );
                Ok(2)
            }
            Command::Agent { config, check_fencing: true, .. } => {
                referee::agent::check_fencing(&config).await.map(i32::from)
            }
            Command::Agent { config, unfence: Some(node), .. } => {
                referee::agent::unfence(&config, &node).await.map(i32::from)
            }
            Command::Agent { config, .. } => referee::agent::run(&config, "referee").await.map(|()| 0),
            Command::DemoMaster { config, listen, pidfile, no_lease_poll } => {
                run_demo_master(config, listen, pidfile, no_lease_poll).await.map(|()| 0)
            }
            Command::DriveMaster { action, url, timeout_ms } => Ok(run_master_command(action, url, timeout_ms).await),
            Command::Demo { scenario, coordinator, exit_after } => run_demo(scenario, coordinator, exit_after).await,
            // `referee admin` has documented exit codes of its own.
            Command::Admin(args) => Ok(referee_failover_agent::admin_cli::run(args).await),
        }
    });
    // Bounded: a coordinator stopped by a stalled disk may leave a thread in an fdatasync that
    // never returns, and the process exits all the same.
    runtime.shutdown_timeout(referee::logging::RUNTIME_SHUTDOWN);
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("referee: {}", referee::logging::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run_demo(
    scenario: DemoScenario,
    coordinator: DemoCoordinator,
    exit_after: Option<u64>,
) -> anyhow::Result<i32> {
    use referee::demo::{DemoOptions, Scenario};
    use referee::lab::CoordinatorKind;
    let scenario = match scenario {
        DemoScenario::Crash => Scenario::Crash,
        DemoScenario::Hang => Scenario::Hang,
        DemoScenario::AgentCrash => Scenario::AgentCrash,
        DemoScenario::Partition => Scenario::Partition,
        DemoScenario::Switchover => Scenario::Switchover,
        DemoScenario::CoordinatorRestart => Scenario::CoordinatorRestart,
        DemoScenario::CoordinatorLeaderCrash => Scenario::CoordinatorLeaderCrash,
    };
    let coordinator = match coordinator {
        DemoCoordinator::Single => CoordinatorKind::Bundled,
        DemoCoordinator::Ensemble => CoordinatorKind::BundledEnsemble,
    };
    let bin = std::env::current_exe().context("locating this executable")?;
    let opts = DemoOptions { bin, scenario, coordinator, exit_after: exit_after.map(std::time::Duration::from_secs) };
    let ok = referee::demo::run(opts).await?;
    Ok(if ok { 0 } else { 1 })
}

/// `members list|add|remove`: one request to the admin listener at `--server`, sent once more
/// to the leader if that server names one. Returns the exit code: 0 done, 1 refused or
/// unreachable, 2 bad arguments (the server's 400, which names the field).
async fn run_members(action: MembersAction) -> i32 {
    use referee_coordinator::admin::{AddMember, Members, RefusalBody};
    use referee_coordinator::config::Role;
    let (target, method, path, body, done) = match action {
        MembersAction::List { target } => (target, reqwest::Method::GET, "/members".to_string(), None, None),
        MembersAction::Add { target, id, client, peer, role, admin } => {
            let role = match role {
                MemberRole::Voter => Role::Voter,
                MemberRole::Observer => Role::Observer,
            };
            let verb = match role {
                Role::Voter => "as a voter",
                Role::Observer => "as an observer",
            };
            let body = AddMember { id, client, peer, role, admin };
            (
                target,
                reqwest::Method::POST,
                "/members".to_string(),
                Some(body),
                Some(format!("server {id} added {verb}")),
            )
        }
        MembersAction::Remove { target, id } => {
            (target, reqwest::Method::DELETE, format!("/members/{id}"), None, Some(format!("server {id} removed")))
        }
    };
    let http = match reqwest::Client::builder().timeout(std::time::Duration::from_millis(target.timeout_ms)).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("referee coordinator members: cannot build an HTTP client: {e}");
            return 1;
        }
    };
    // `--server http://h:p` means the same as `--server h:p`.
    let mut server = target.server.trim_start_matches("http://").trim_end_matches('/').to_string();
    for attempt in 0..2 {
        let mut request = http.request(method.clone(), format!("http://{server}{path}"));
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "referee coordinator members: no answer from the admin listener at {server}: {e}. Check the \
                     address and that the server has `admin_listen` set"
                );
                return 1;
            }
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            match serde_json::from_str::<Members>(&text) {
                Ok(members) => {
                    if let Some(done) = &done {
                        println!("{done}");
                    }
                    print!("{}", members_table(&members));
                    return 0;
                }
                Err(e) => {
                    eprintln!(
                        "referee coordinator members: {server} answered something else than members ({e}): {text}"
                    );
                    return 1;
                }
            }
        }
        let refusal: Option<RefusalBody> = serde_json::from_str(&text).ok();
        let why = refusal.as_ref().map_or_else(|| text.trim().to_string(), |r| r.error.clone());
        match (status.as_u16(), refusal.as_ref().and_then(|r| r.leader_admin)) {
            (421, Some(leader)) if attempt == 0 => {
                eprintln!("referee coordinator members: {server} does not lead; asking the leader at {leader}");
                server = leader.to_string();
            }
            (400, _) => {
                eprintln!("referee coordinator members: refused by {server}: {why}");
                return 2;
            }
            _ => {
                eprintln!("referee coordinator members: refused by {server} ({status}): {why}");
                return 1;
            }
        }
    }
    1
}

/// The membership as a table, the leader marked with `*`.
fn members_table(m: &referee_coordinator::admin::Members) -> String {
    let opt = |a: Option<std::net::SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
    let num = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
    let mut out = format!(
        "asked server {}; leader: {}{}\n{:<4} {:<9} {:<22} {:<22} {:<22} {:>8} {:>6}\n",
        m.this_server,
        num(m.leader),
        if m.changing { " (a membership change is being committed)" } else { "" },
        "id",
        "role",
        "peer",
        "client",
        "admin",
        "matched",
        "lag"
    );
    for member in &m.members {
        let id = format!("{}{}", member.id, if Some(member.id) == m.leader { "*" } else { "" });
        out.push_str(&format!(
            "{:<4} {:<9} {:<22} {:<22} {:<22} {:>8} {:>6}\n",
            id,
            member.role,
            member.peer,
            opt(member.client),
            opt(member.admin),
            num(member.matched),
            num(member.lag)
        ));
    }
    out
}

/// `ensemble up|status|down`; returns the exit code: 0 done, 1 failed, 2 bad arguments.
fn run_ensemble(action: EnsembleAction) -> i32 {
    use referee::ensemble::{down, status, up, UpOptions};
    let result = match action {
        EnsembleAction::Up { servers, observers, dir, base_port } => match std::env::current_exe() {
            Ok(exe) => up(&UpOptions { dir: dir.dir, voters: servers, observers, base_port, exe }),
            Err(e) => {
                eprintln!("referee coordinator ensemble: cannot locate this executable to start the servers: {e}");
                return 1;
            }
        },
        EnsembleAction::Status { dir } => status(&dir.dir),
        EnsembleAction::Down { dir, purge } => down(&dir.dir, purge),
    };
    result.unwrap_or_else(|e| {
        eprintln!("referee coordinator ensemble: {e}");
        e.exit_code()
    })
}

/// `log dump` and `snapshot dump`: the listing goes to stdout; damage exits 1 after listing
/// what could be read, unreadable input exits 2.
fn run_coordinator_tool(tool: CoordinatorTool) -> anyhow::Result<i32> {
    use referee_coordinator::dump::{dump_log, dump_snapshots, DumpError};
    use referee_coordinator::log::RealFs;
    let mut out = std::io::stdout().lock();
    let result = match tool {
        CoordinatorTool::Log { action: LogAction::Dump { dir } } => dump_log(&RealFs, &dir, &mut out).map(drop),
        CoordinatorTool::Snapshot { action: SnapshotAction::Dump { path } } => dump_snapshots(&RealFs, &path, &mut out),
        CoordinatorTool::Members { .. } => unreachable!("members is run by run_members"),
        CoordinatorTool::Ensemble { .. } => unreachable!("ensemble is run by run_ensemble"),
    };
    match result {
        Ok(()) => Ok(0),
        Err(e @ DumpError::Damaged(_)) => {
            eprintln!("referee coordinator: {e}");
            Ok(1)
        }
        Err(e) => {
            eprintln!("referee coordinator: {e}");
            Ok(2)
        }
    }
}

async fn run_master_command(action: MasterAction, url: Option<String>, timeout_ms: u64) -> i32 {
    use referee_examples::ha_command::{master_url, run, token_from_env, Action};
    let action = match action {
        MasterAction::Health => Action::Health,
        MasterAction::State => Action::State,
        MasterAction::Promote => Action::Promote,
        MasterAction::Demote => Action::Demote,
    };
    let url = match master_url(url, std::env::var("TARGET_HA_URL").ok()) {
        Ok(url) => url,
        Err(e) => {
            eprintln!("referee master-command: {e}");
            return 2;
        }
    };
    let token = token_from_env(std::env::var("FENCE_TOKEN").ok());
    let out = run(&url, action, token, std::time::Duration::from_millis(timeout_ms.max(1))).await;
    print!("{}", out.stdout);
    if !out.stderr.is_empty() {
        eprintln!("{}", out.stderr);
    }
    i32::from(out.code)
}

async fn run_demo_master(
    config_path: PathBuf,
    listen: std::net::SocketAddr,
    pidfile: Option<PathBuf>,
    no_lease_poll: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read demo master config {}", config_path.display()))?;
    let mut config: referee_examples::ha_master::HaMasterConfig =
        serde_yaml::from_str(&text).with_context(|| format!("invalid demo master config {}", config_path.display()))?;
    if no_lease_poll && config.lease.take().is_some() {
        tracing::info!(
            "--no-lease-poll: ignoring the configured lease; writes are accepted while active until demoted"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    if let Some(pidfile) = pidfile {
        // Written after the process started and bound its port, so a pidfile never names a
        // process younger than itself (the kill fencing method relies on that).
        std::fs::write(&pidfile, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pidfile {}", pidfile.display()))?;
    }
    referee_examples::ha_master::run(config, listener, shutdown_signal("referee")).await
}

/// Every role's allocator (why: the comment on the dependency in `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
