//! `referee-coordinator CONFIG.yaml`: the coordinator alone, without the rest of the suite.
//!
//! The same server `referee coordinator --config` runs; this binary exists so the coordinator's
//! own end-to-end tests can run it as a child process (and measure it as one) without building
//! the agents and fencing. SIGINT or SIGTERM stops it; a second signal exits at once.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use referee_coordinator::config::CoordinatorConfig;
use referee_coordinator::server::{shutdown_signal, Coordinator};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("REFEREE_LOG").unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut args = std::env::args_os().skip(1);
    let (Some(config), None) = (args.next(), args.next()) else {
        eprintln!("usage: referee-coordinator CONFIG.yaml");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("referee-coordinator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(PathBuf::from(config))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("referee-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let config = CoordinatorConfig::load(&config_path)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (`listen` in {})", config.listen, config_path.display()))?;
    let coordinator = Coordinator::start(config).await?;
    coordinator.serve(listener, shutdown_signal("referee-coordinator")).await?;
    Ok(())
}
