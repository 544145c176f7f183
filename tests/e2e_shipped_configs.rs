//! Every configuration shipped in `config/` loads with its daemon's own loader, and the files
//! that describe one deployment agree with each other: the three coordinator servers list the
//! same ensemble, each is the server it says it is, and the agents connect to exactly those
//! servers with the staleness bound an ensemble needs and a lease left for their promotion.
//!
//! A YAML file added to `config/` that this test does not know fails it: say here which daemon
//! reads it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use referee_coordinator::config::{CoordinatorConfig, Role};
use referee_failover_agent::config::AgentConfig;

/// The agents' default requested session timeout, which every shipped coordinator must grant.
const AGENT_SESSION_MS: i32 = 2500;

/// The shipped deployment's coordinator servers, one file each, server 1 first.
const ENSEMBLE: [&str; 3] = ["coordinator-coord1.yaml", "coordinator-coord2.yaml", "coordinator-coord3.yaml"];

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// Every `*.yaml` directly in `config/`, by file name.
fn shipped_yaml() -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(config_dir()).context("reading config/")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            names.insert(name);
        }
    }
    Ok(names)
}

fn coordinator(name: &str) -> Result<CoordinatorConfig> {
    CoordinatorConfig::load(&config_dir().join(name)).with_context(|| format!("config/{name}"))
}

fn agent(name: &str) -> Result<AgentConfig> {
    AgentConfig::load(&config_dir().join(name)).with_context(|| format!("config/{name}"))
}

#[test]
fn every_shipped_config_loads_with_its_daemons_loader() -> Result<()> {
    let names = shipped_yaml()?;
    ensure!(names.len() >= 6, "config/ holds {names:?}");
    for name in &names {
        if name.starts_with("coordinator") {
            let c = coordinator(name)?;
            ensure!(
                c.negotiate_timeout(AGENT_SESSION_MS) == AGENT_SESSION_MS,
                "config/{name} grants {} ms for the agents' {AGENT_SESSION_MS} ms session (its minimum is {} ms)",
                c.negotiate_timeout(AGENT_SESSION_MS),
                c.min_session_timeout_ms()
            );
        } else if name.starts_with("agent-") {
            agent(name)?;
        } else {
            bail!("config/{name} is not known to this test: check it with its daemon's loader here");
        }
    }
    for name in ENSEMBLE.iter().chain(&["coordinator.yaml", "agent-db1.yaml", "agent-db2.yaml"]) {
        ensure!(names.contains(*name), "config/{name} is missing; config/ holds {names:?}");
    }
    Ok(())
}

#[test]
fn the_three_coordinator_servers_describe_one_ensemble() -> Result<()> {
    let servers: Vec<CoordinatorConfig> = ENSEMBLE.iter().map(|n| coordinator(n)).collect::<Result<_>>()?;
    let first = &servers[0];
    ensure!(first.servers.len() == 3, "the ensemble lists {} servers", first.servers.len());
    ensure!(first.servers.iter().all(|s| s.role == Role::Voter), "three voters: {:?}", first.servers);
    for (k, (name, c)) in ENSEMBLE.iter().zip(&servers).enumerate() {
        ensure!(c.cluster_id.is_some() && c.cluster_id == first.cluster_id, "{name}: cluster_id {:?}", c.cluster_id);
        ensure!(c.servers == first.servers, "{name} lists other servers than {}", ENSEMBLE[0]);
        ensure!(c.server_id == Some(k as u64 + 1), "{name} is server {:?}, not {}", c.server_id, k + 1);
        let me = c.this_server().with_context(|| format!("{name} is not among its servers"))?;
        ensure!(me.client == c.listen, "{name} listens on {} but is listed at {}", c.listen, me.client);
    }
    Ok(())
}

#[test]
fn the_agents_connect_to_every_coordinator_server_and_keep_a_lease() -> Result<()> {
    let ensemble = coordinator(ENSEMBLE[0])?;
    let clients: BTreeSet<String> = ensemble.servers.iter().map(|s| s.client.to_string()).collect();
    for name in ["agent-db1.yaml", "agent-db2.yaml"] {
        let a = agent(name)?;
        let connect: BTreeSet<String> = a.coordinator.connect.split(',').map(|s| s.trim().to_string()).collect();
        ensure!(connect == clients, "{name} connects to {connect:?}, the ensemble's servers are {clients:?}");
        ensure!(
            a.coordinator.max_staleness_ms == 100,
            "{name}: on the bundled ensemble max_staleness_ms is 100, not {}",
            a.coordinator.max_staleness_ms
        );
        let granted = Duration::from_millis(ensemble.negotiate_timeout(a.coordinator.session_timeout_ms as i32) as u64);
        // 2500 - 100 (staleness) - 500 (demotion deadline) - 250 (margin)
        ensure!(
            a.lease_budget(granted) == Some(Duration::from_millis(1650)),
            "{name}: the lease from a {granted:?} session is {:?}",
            a.lease_budget(granted)
        );
    }
    Ok(())
}
