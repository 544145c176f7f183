//! The whole life of a coordinator process from its configuration file: load and validate it,
//! bind the client port (and, for an ensemble member, the peer port), start the server on the
//! real file system and serve until SIGINT or SIGTERM. `referee coordinator --config` and the
//! crate's own `referee-coordinator` binary both run exactly this.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;

use crate::config::{ConfigError, CoordinatorConfig};
use crate::log::RealFs;
use crate::server::{shutdown_signal, Coordinator, CoordinatorError, Startup};

/// Why a coordinator process could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum RunError {
    /// The configuration file is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listening address cannot be bound.
    #[error("cannot listen on {addr} (`{key}` in {}): {source}", config.display())]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The configuration key that names it.
        key: &'static str,
        /// The configuration file.
        config: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The server failed to start or stopped with an error.
    #[error(transparent)]
    Server(#[from] CoordinatorError),
}

/// Runs the coordinator configured in `config_path` until SIGINT or SIGTERM; `initialise`
/// (`--init`) initialises an ensemble that has never been. `program` names the process in the
/// shutdown signal's log line.
pub async fn run_from_config(config_path: &Path, initialise: bool, program: &'static str) -> Result<(), RunError> {
    let config = CoordinatorConfig::load(config_path)?;
    let bind = |addr, key| async move {
        TcpListener::bind(addr).await.map_err(|source| RunError::Listen {
            addr,
            key,
            config: config_path.to_path_buf(),
            source,
        })
    };
    let listener = bind(config.listen, "listen").await?;
    let peer_listener = match config.this_server().filter(|_| config.is_ensemble()) {
        Some(me) => Some(bind(me.peer, "servers").await?),
        None => None,
    };
    let startup = Startup { initialise, peer_listener };
    let coordinator = Coordinator::launch(config, Arc::new(RealFs), startup).await?;
    coordinator.serve(listener, shutdown_signal(program)).await?;
    Ok(())
}
