//! `referee agent`: one failover agent beside a master, until SIGTERM or SIGINT, re-reading its
//! configuration on SIGHUP. Both the `referee` binary and the lean `referee-agent` run it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use referee_failover_agent::config::{AgentConfig, ConfigError};
use referee_failover_agent::control::ControlRequest;

/// Runs the agent configured in `config_path` until a stop signal; `program` names the binary in
/// the log line a signal prints.
pub async fn run(config_path: &Path, program: &'static str) -> anyhow::Result<()> {
    let config = load(config_path)?;
    let listener = tokio::net::TcpListener::bind(config.probes.listen).await.with_context(|| {
        format!("cannot listen on {} (`probes.listen` in {})", config.probes.listen, config_path.display())
    })?;
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(16);
    // SIGHUP: re-read and validate the configuration, then apply what can change live.
    let reload_tx = control_tx.clone();
    let path: PathBuf = config_path.to_path_buf();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            match load(&path) {
                Err(e) => tracing::error!("SIGHUP: keeping the running configuration: {e}"),
                Ok(new) => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    if reload_tx.send(ControlRequest::Reload { config: Box::new(new), reply }).await.is_err() {
                        return;
                    }
                    if let Ok(Ok(msg)) = answer.await {
                        tracing::info!("SIGHUP: {msg}");
                    }
                }
            }
        }
    });
    referee_failover_agent::driver::run_with_control(
        config,
        listener,
        control_tx,
        control_rx,
        referee_coordinator::server::shutdown_signal(program),
    )
    .await?;
    Ok(())
}

/// `--check-fencing`: asks every fencing method whether it could fence each configured peer,
/// fencing nothing (the master's HA endpoint answers, the ssh login works, the power device
/// reads the node on, ...), and prints what each found. Run on the agent's host, with its
/// configuration, so the checks go the way a fence would. Levels are numbered from 0 in the
/// configuration's order, as the fencer's log and `/status` number them. Returns the exit code:
/// 0 when no method has a problem, 1 otherwise.
pub async fn check_fencing(config_path: &Path) -> anyhow::Result<u8> {
    use referee_fencing::Readiness;
    let (config, fencer) = fencer_of(config_path)?;
    let targets = config.peer_targets();
    println!(
        "Fencing checks from {} ({}) against {} peer(s); nothing is fenced:",
        config.node_id,
        config_path.display(),
        targets.len()
    );
    let mut problems = 0;
    for target in &targets {
        println!("{} ({}):", target.node_id, target.host);
        let report = fencer.check(target).await;
        for c in &report.checks {
            let (word, text) = match &c.readiness {
                Readiness::Ready { detail } => ("ready", detail),
                Readiness::Problem { reason } => {
                    problems += 1;
                    ("PROBLEM", reason)
                }
                Readiness::Unchecked { why } => ("unchecked", why),
            };
            println!("  level {}  {:<12} {:<10} {text}", c.level, c.method, word);
        }
    }
    if problems == 0 {
        println!("No problem found.");
        Ok(0)
    } else {
        println!("{problems} problem(s): fencing may fail when it is needed; fix them before relying on it.");
        Ok(1)
    }
}

/// `--unfence NODE`: undoes what the reversible methods of the fencing chain put in place for
/// the configured peer NODE (the firewall rules of `isolate`, the power-off of a `fence_agent`
/// with `action: off`), as Pacemaker's unfencing does, and prints what each did. For an
/// operator who has repaired the node: its master comes back holding no lock, and the tokens
/// refuse anything it tries under its old one. Returns the exit code: 0 when everything was
/// undone (or nothing is reversible), 1 otherwise.
pub async fn unfence(config_path: &Path, node: &str) -> anyhow::Result<u8> {
    use referee_fencing::{MethodOutcome, UnfenceOutcome};
    let (config, fencer) = fencer_of(config_path)?;
    let targets = config.peer_targets();
    let Some(target) = targets.iter().find(|t| t.node_id == node) else {
        let known: Vec<&str> = targets.iter().map(|t| t.node_id.as_str()).collect();
        anyhow::bail!(
            "`{node}` is not a configured peer of {} (peers: {}); unfence names the node that was fenced",
            config.node_id,
            known.join(", ")
        );
    };
    let report = fencer.unfence(target).await;
    if report.events.is_empty() {
        println!("No method of the fencing chain is reversible: nothing to undo for {node}.");
    }
    for e in &report.events {
        let (word, text) = match &e.outcome {
            MethodOutcome::Fenced { detail } => ("undone", detail),
            MethodOutcome::Failed { reason } => ("FAILED", reason),
            MethodOutcome::Indeterminate { reason } => ("UNKNOWN", reason),
        };
        println!("  level {}  {:<12} {:<8} {text}", e.level, e.method, word);
    }
    match report.outcome {
        UnfenceOutcome::Unfenced => {
            println!("{node} unfenced.");
            Ok(0)
        }
        UnfenceOutcome::Incomplete { reason } => {
            println!("{node} is not wholly unfenced: {reason}");
            Ok(1)
        }
    }
}

/// The agent's configuration and the fencer its `fencing` section makes, for the fencing tools.
fn fencer_of(config_path: &Path) -> anyhow::Result<(AgentConfig, referee_fencing::Fencer)> {
    let config = load(config_path)?;
    let fencing = config.fencing.clone().context("the configuration has no `fencing` section")?;
    let fencer = referee_fencing::Fencer::new(fencing)
        .with_context(|| format!("the fencing section of {}", config_path.display()))?;
    Ok((config, fencer))
}

/// Reads and validates the configuration, naming the file in every refusal (a read error
/// already does).
fn load(path: &Path) -> anyhow::Result<AgentConfig> {
    AgentConfig::load(path).map_err(|e| match e {
        ConfigError::Read { .. } => anyhow::Error::from(e),
        other => anyhow::anyhow!("{other} (in {})", path.display()),
    })
}
