//! `referee-agent --config FILE`: the failover agent alone, the same as `referee agent`, in an
//! executable that holds nothing else (no coordinator, demo or benchmarks), so that the pages of
//! code it maps on a master's host are the agent's.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "referee-agent",
    version,
    about = "Run a failover agent beside a master (the same agent as `referee agent`)",
    after_help = referee::logging::ENV_HELP
)]
struct Cli {
    /// Path of the agent's YAML configuration.
    #[arg(long, short)]
    config: PathBuf,
    /// Check the fencing chain against every configured peer instead of running, fencing
    /// nothing; exit 0 when no method has a problem, 1 otherwise.
    #[arg(long, conflicts_with = "unfence")]
    check_fencing: bool,
    /// Undo what the reversible fencing methods put in place for the configured peer NODE
    /// instead of running, once the node is repaired; exit 0 when everything was undone.
    #[arg(long, value_name = "NODE")]
    unfence: Option<String>,
}

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    let Some(runtime) = referee::logging::start("referee-agent") else {
        return ExitCode::FAILURE;
    };
    let tool = match (cli.check_fencing, &cli.unfence) {
        (true, _) => Some(runtime.block_on(referee::agent::check_fencing(&cli.config))),
        (false, Some(node)) => Some(runtime.block_on(referee::agent::unfence(&cli.config, node))),
        (false, None) => None,
    };
    if let Some(result) = tool {
        return match result {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("referee-agent: {}", referee::logging::one_line(&e));
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(referee::agent::run(&cli.config, "referee-agent")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("referee-agent: {}", referee::logging::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// One malloc arena for the whole process. glibc gives threads arenas of their own as they
/// contend (up to eight a core), and pages an arena once touched stay resident after their
/// memory is freed: after 200 failovers the agent's anonymous memory was 2.9 MiB with them and
/// 2.0 MiB with one. The agent allocates little and rarely, so one lock costs it nothing.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a parameter of the allocator, and runs before any other thread
    // of this process exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}
