//! Network and process faults between machines, with the pair on simulated hosts (the test kit's
//! [`Hosts`], one network namespace each): the coordinator on host 1, node `a`'s master and
//! agent on host 2, node `b`'s on host 3, every process listening on its host's address
//! ([`Pair::start_on_hosts`]). Faults are the hosts' iptables drops, so packets vanish as on a
//! cut cable: nothing is refused, every side learns only from its own deadlines.
//!
//! Each scenario runs against the bundled coordinator and against Apache ZooKeeper 3.8, one
//! server either way, against Apache ZooKeeper as a three-server ensemble (`apache_ensemble::`,
//! laid out as the bundled one below, `syncLimit=2` at the lab's 200 ms tick, so the agents
//! count 400 ms of staleness), and against the bundled coordinator as a three-server ensemble
//! (`bundled_ensemble::`): its servers on hosts 1, 2 and 3, node `a` on host 4 and node `b` on
//! host 5, the agents and journals given all three servers' addresses (and
//! `max_staleness_ms: 100`, as agents on an ensemble must). There "the coordinator's host" is
//! each of the three, and the coordinator restart restarts every server at once. The same again
//! with a coordinator observer beside each node, on its host (`bundled_ensemble_observers::`):
//! each agent and journal connects to its own observer alone, which forwards their writes and
//! reports their sessions' liveness to the voters' leader. The masters are plain (`--no-lease-poll`): they take writes while active until someone
//! demotes them, so safety rests on the agents. Fencing between hosts is the graceful request
//! over the network, then the same demotion through a management path the faults do not cut.
//!
//! Throughout each scenario the test process, as a client on the hosts' switch, asks the masters
//! themselves (the lab's [`MasterOracle`]): each master's own `/ha/state` every few milliseconds
//! and a write to every master as fast as it answers, each acknowledgement recorded with its
//! send and receive times and its token. A test fails, printing the masters' timeline, if both
//! were certainly active at once, if a master acknowledged a write sent after the other had
//! acknowledged one under a higher token, if the old master's demotion came after the new one's
//! promotion (as the two masters logged their own role changes, stamped on the one system
//! clock: the oracle cannot reach a black-holed master), if (where the client still reaches it)
//! the old master acknowledged a write the client sent after the new master's first
//! acknowledgement came back (how far apart the two masters' last and first acknowledgements
//! were is printed, not judged: replies in flight at once prove nothing), or if the end is
//! anything but the new master active and the old one standby.
//!
//! - **Active host cut off from the coordinator's host only**: the client and the peer still
//!   reach the old master; its agent must demote it before its session can expire.
//! - **Active host black-holed**: nothing reaches it or leaves it, the client's traffic
//!   included; the new active fences it through the management path.
//! - **Active host isolated from every other host, then healed**: the client still reaches the
//!   old master (a client on its side of the partition); after heal it rejoins as standby and
//!   the new master stays the only active.
//!
//! Process faults on the same hosts, checked by the same oracle:
//!
//! - **Active master killed** (`kill -9`), and **active master frozen** (SIGSTOP for twice the
//!   session timeout, then SIGCONT, as a long GC pause): neither answers the graceful request
//!   nor the management path, so the new active turns it off with the lab's power switch
//!   before it promotes; a frozen master never acknowledges a write when it wakes.
//! - **Active agent killed**, and **active agent frozen** beyond its session timeout: the old
//!   master, still serving, is demoted over the network before the other one is promoted; the
//!   frozen agent, resumed, finds its session gone and stays standby.
//! - **Coordinator killed and restarted** (`kill -9`, then started on its data directory) while
//!   the pair runs, the masters journalling their edits in it: the writes go on, never on two
//!   masters under different tokens, the end has exactly one active, and an independent reader
//!   of the journal finds every acknowledged write once, under the token in force.
//! - **The active master's health flapping** for twelve seconds under a 3 s anti-flap
//!   interval: at least two failovers, none closer than the interval, the standby seen holding
//!   back for anti-flap while the active master was unhealthy, never two actives, one active at
//!   the end.
//! - **The same faults with journalling masters** (their edits in the coordinator behind an
//!   epoch znode, as the demo's): besides every check above, an independent reader of the
//!   journal finds every acknowledged write once, and no entry under a token not in force.
//! - **Both agents started at the same instant**, five times on a fresh coordinator: exactly
//!   one promotes its master, once, and the masters never both say active.
//!
//! On the ensembles only, with journalling masters (the first four on Apache ZooKeeper's too;
//! there a frozen leader that held the active agent's session may cost a failover, since its
//! followers give it up and elect another in about the lease its staleness bound leaves, so
//! only safety is required of that case):
//!
//! - **The coordinator's leader killed during a failover**: the active master is killed, then
//!   at once the leader (`kill -9`), so the whole takeover runs across the leader change: the
//!   checks of a killed master above, every acknowledged write in the journal, and the failover
//!   (the master's kill to the new master's first acknowledged write) within a bound; the
//!   figure is printed.
//! - **The coordinator's servers restarted one by one** (each `kill -9`, started again and
//!   back with a leader before the next), the leader among them: the checks of the restart
//!   above.
//! - **The coordinator's leader frozen** (SIGSTOP for twice the session timeout, then SIGCONT):
//!   the others elect a leader and keep it while the old one is frozen (sampled every 20 ms),
//!   the agents move there, and a master acknowledges writes again within a session timeout;
//!   resumed, it rejoins; no split brain, one active at the end, every acknowledged write in
//!   the journal.
//! - **The server holding the active agent's session frozen** (a follower or the leader, the
//!   same way): given all three voters, the agent moves its session within its lease, so its
//!   master is never demoted and writes go on within a session timeout; given its observer
//!   alone, the agent demotes its master at lease end and the other node takes over. Either
//!   way no split brain and every acknowledged write in the journal.
//! - **The coordinator's leader cut off from the other servers** (not from the agents or the
//!   masters): it holds no session within `max_leader_silence_ms` (plus slack) and takes none
//!   back while cut off, the other two elect a leader, both agents are connected again, writes
//!   go on with no split brain and one active at the end, the journal holds every acknowledged
//!   write; healed, the old leader rejoins. The figures are printed.

//!
//! The scenarios themselves are in `support/fault_scenarios.rs`, shared with the failover
//! timing report (`fault-report`).

#[path = "support/fault_scenarios.rs"]
mod fault_scenarios;

use anyhow::Result;
use fault_scenarios::*;
use referee::lab::{coordinator_available, CoordinatorKind, APACHE_ENSEMBLE};

/// One test per fault and coordinator kind: `every` scenario on the three kinds, `single` ones
/// on a coordinator alone (bundled and Apache ZooKeeper), `ensemble` ones on the bundled
/// ensemble only.
macro_rules! scenarios {
    (
        every { $($name:ident: $run:ident($($arg:expr),*);)* }
        single { $($sname:ident: $srun:ident($($sarg:expr),*);)* }
        ensemble { $($ename:ident: $erun:ident($($earg:expr),*);)* }
        any_ensemble { $($aname:ident: $arun:ident($($aarg:expr),*);)* }
    ) => {
        mod bundled {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> Result<()> {
                    $run($($arg,)* CoordinatorKind::Bundled, concat!("bundled::", stringify!($name))).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $sname() -> Result<()> {
                    $srun($($sarg,)* CoordinatorKind::Bundled, concat!("bundled::", stringify!($sname))).await
                }
            )*
        }
        mod apache_zookeeper {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> Result<()> {
                    let test = concat!("apache_zookeeper::", stringify!($name));
                    if !coordinator_available(CoordinatorKind::ApacheZooKeeper, test) {
                        return Ok(());
                    }
                    $run($($arg,)* CoordinatorKind::ApacheZooKeeper, test).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $sname() -> Result<()> {
                    let test = concat!("apache_zookeeper::", stringify!($sname));
                    if !coordinator_available(CoordinatorKind::ApacheZooKeeper, test) {
                        return Ok(());
                    }
                    $srun($($sarg,)* CoordinatorKind::ApacheZooKeeper, test).await
                }
            )*
        }
        mod apache_ensemble {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> Result<()> {
                    let test = concat!("apache_ensemble::", stringify!($name));
                    if !coordinator_available(APACHE_ENSEMBLE, test) {
                        return Ok(());
                    }
                    $run($($arg,)* APACHE_ENSEMBLE, test).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $aname() -> Result<()> {
                    let test = concat!("apache_ensemble::", stringify!($aname));
                    if !coordinator_available(APACHE_ENSEMBLE, test) {
                        return Ok(());
                    }
                    $arun($($aarg,)* APACHE_ENSEMBLE, test).await
                }
            )*
        }
        mod bundled_ensemble {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> Result<()> {
                    let test = concat!("bundled_ensemble::", stringify!($name));
                    $run($($arg,)* CoordinatorKind::BundledEnsemble, test).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $ename() -> Result<()> {
                    let test = concat!("bundled_ensemble::", stringify!($ename));
                    $erun($($earg,)* CoordinatorKind::BundledEnsemble, test).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $aname() -> Result<()> {
                    let test = concat!("bundled_ensemble::", stringify!($aname));
                    $arun($($aarg,)* CoordinatorKind::BundledEnsemble, test).await
                }
            )*
        }
        mod bundled_ensemble_observers {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> Result<()> {
                    let test = concat!("bundled_ensemble_observers::", stringify!($name));
                    $run($($arg,)* CoordinatorKind::BundledEnsembleWithObservers, test).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $ename() -> Result<()> {
                    let test = concat!("bundled_ensemble_observers::", stringify!($ename));
                    $erun($($earg,)* CoordinatorKind::BundledEnsembleWithObservers, test).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $aname() -> Result<()> {
                    let test = concat!("bundled_ensemble_observers::", stringify!($aname));
                    $arun($($aarg,)* CoordinatorKind::BundledEnsembleWithObservers, test).await
                }
            )*
        }
    };
}

scenarios! {
    every {
        active_host_cut_off_from_the_coordinator_host_hands_over_without_overlap: fault_on_the_active_host(Fault::FromCoordinator, Masters::Plain);
        black_holed_active_host_is_fenced_and_replaced: fault_on_the_active_host(Fault::BlackHole, Masters::Plain);
        isolated_active_host_rejoins_as_standby_after_heal: fault_on_the_active_host(Fault::Isolated, Masters::Plain);
        killed_master_is_powered_off_and_replaced: process_fault_on_the_active_node(ProcessFault::MasterKilled, Masters::Plain);
        frozen_master_never_acknowledges_when_it_wakes: process_fault_on_the_active_node(ProcessFault::MasterFrozen, Masters::Plain);
        killed_agent_gets_its_master_demoted_before_the_takeover: process_fault_on_the_active_node(ProcessFault::AgentKilled, Masters::Plain);
        frozen_agent_resumes_as_standby: process_fault_on_the_active_node(ProcessFault::AgentFrozen, Masters::Plain);
        journal_keeps_every_write_when_the_active_host_is_cut_off: fault_on_the_active_host(Fault::FromCoordinator, Masters::Journalling);
        journal_keeps_every_write_when_the_active_host_is_black_holed: fault_on_the_active_host(Fault::BlackHole, Masters::Journalling);
        journal_keeps_every_write_when_the_active_master_is_killed: process_fault_on_the_active_node(ProcessFault::MasterKilled, Masters::Journalling);
        journal_keeps_every_write_when_the_active_master_is_frozen: process_fault_on_the_active_node(ProcessFault::MasterFrozen, Masters::Journalling);
        journal_keeps_every_write_when_the_active_agent_is_frozen: process_fault_on_the_active_node(ProcessFault::AgentFrozen, Masters::Journalling);
        coordinator_killed_and_restarted_under_the_pair: coordinator_restart_under_the_pair();
        agents_started_at_the_same_instant_elect_exactly_one: simultaneous_start();
        flapping_health_fails_over_no_faster_than_anti_flap_allows: flapping_health();
    }
    single {}
    ensemble {
        coordinator_leader_cut_off_from_its_peers_drops_its_clients_and_is_replaced: coordinator_leader_partitioned_from_its_peers();
    }
    any_ensemble {
        coordinator_leader_killed_during_a_failover_leaves_one_active: coordinator_leader_killed_during_a_failover();
        coordinator_servers_restarted_one_by_one_under_the_pair: coordinator_rolling_restart_under_the_pair();
        coordinator_leader_frozen_and_resumed_rejoins_without_split_brain: coordinator_leader_frozen_and_resumed();
        coordinator_server_of_the_active_agent_frozen_costs_no_failover_where_it_can_move: coordinator_server_of_the_active_agent_frozen();
    }
}
