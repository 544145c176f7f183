//! `referee`: one binary for every role of the suite.
//!
//! ```text
//! referee coordinator --config config/coordinator.yaml   # the bundled ZooKeeper-wire ensemble
//! ```
//!
//! The binary only parses arguments, sets up logging and signals, and calls the libraries.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use referee_coordinator::config::CoordinatorConfig;
use referee_coordinator::server::Coordinator;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "referee", version, about = "High-availability failover: coordinator, agents and fencing")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a coordinator server (speaks the Apache ZooKeeper client protocol).
    Coordinator {
        /// Path of the coordinator's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("REFEREE_LOG").unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("referee: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Coordinator { config } => run_coordinator(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("referee: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_coordinator(config_path: PathBuf) -> anyhow::Result<()> {
    let config = CoordinatorConfig::load(&config_path)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (`listen` in {})", config.listen, config_path.display()))?;
    let coordinator = Coordinator::start(config).await?;
    coordinator.serve(listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
