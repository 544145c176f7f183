//! `referee-coordinator [--init] CONFIG.yaml`: the coordinator alone, without the rest of the
//! suite.
//!
//! The same server `referee coordinator --config` runs, `--init` included (given once, to one
//! server, when an ensemble first starts); this binary exists so the coordinator's own
//! end-to-end tests can run it as a child process (and measure it as one) without building
//! the agents and fencing. SIGINT or SIGTERM stops it; a second signal exits at once.

use std::path::PathBuf;
use std::process::ExitCode;

use referee_coordinator::run::run_from_config;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("REFEREE_LOG").unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish()
        .with(referee_coordinator::peer::QuietLinkFailures)
        .init();
    let Some((config, initialise)) = parse_args(std::env::args_os().skip(1)) else {
        eprintln!(
            "usage: referee-coordinator [--init] CONFIG.yaml\n  --init  initialise the ensemble `servers` lists, \
             once, on one server, when it first starts"
        );
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("referee-coordinator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run_from_config(&config, initialise, "referee-coordinator"));
    // Bounded: a server stopped by a stalled disk may leave a thread in an fdatasync that
    // never returns, and the process exits all the same.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("referee-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration path and whether `--init` was given, in either order; `None` for anything
/// else (a usage error).
fn parse_args(args: impl Iterator<Item = std::ffi::OsString>) -> Option<(PathBuf, bool)> {
    let mut config = None;
    let mut initialise = false;
    for arg in args {
        if arg == "--init" && !initialise {
            initialise = true;
        } else if config.is_none() && !arg.to_string_lossy().starts_with('-') {
            config = Some(PathBuf::from(arg));
        } else {
            return None;
        }
    }
    config.map(|c| (c, initialise))
}

#[cfg(test)]
mod tests {
    use super::parse_args;

    fn parse(args: &[&str]) -> Option<(String, bool)> {
        parse_args(args.iter().map(std::ffi::OsString::from)).map(|(p, i)| (p.display().to_string(), i))
    }

    #[test]
    fn takes_a_config_and_an_optional_init_in_either_order() {
        assert_eq!(parse(&["c.yaml"]), Some(("c.yaml".into(), false)));
        assert_eq!(parse(&["--init", "c.yaml"]), Some(("c.yaml".into(), true)));
        assert_eq!(parse(&["c.yaml", "--init"]), Some(("c.yaml".into(), true)));
        for bad in [&[][..], &["--init"], &["a.yaml", "b.yaml"], &["--init", "--init", "c.yaml"], &["--config", "c"]] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
