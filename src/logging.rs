//! Log set-up shared by the binaries: the `REFEREE_LOG` filter, colour only where a person reads
//! it, the one line a fatal error is printed as, and a binary's start (logs, then the runtime).

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The environment variable holding the log filter (`tracing` `EnvFilter` syntax, e.g.
/// `debug` or `info,referee_failover_agent=debug`).
pub const FILTER_ENV: &str = "REFEREE_LOG";

/// The filter used when [`FILTER_ENV`] is unset: the suite at `info`, the chatty dependencies at
/// `warn`.
pub const DEFAULT_FILTER: &str = "info,openraft=warn,zookeeper_client=warn";

/// A binary's start: logging set up ([`init`]), then the multi-threaded async runtime. `None`
/// when the runtime cannot start, after saying why on stderr under `program`'s name.
pub fn start(program: &str) -> Option<tokio::runtime::Runtime> {
    init();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            None
        }
    }
}

/// How long the binaries wait, once their work is done, for the runtime's threads to stop.
pub const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(5);

/// What the binaries' `--help` says of the environment they read.
pub const ENV_HELP: &str = "Environment:\n  REFEREE_LOG  log filter, e.g. `debug` or \
                            `info,referee_failover_agent=debug` (default: \
                            info,openraft=warn,zookeeper_client=warn); logs go to stderr\n  NO_COLOR     \
                            set to disable colour; colour is only used when stderr is a terminal";

/// Whether log lines get ANSI colour codes: only on a terminal, and never when `NO_COLOR` is set
/// to anything non-empty (the no-color.org convention). A file or a pipe (journald, a log
/// collector, `2> agent.log`) gets plain text.
pub fn colour_wanted(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && !no_color.is_some_and(|v| !v.is_empty())
}

/// Sends `tracing` output to stderr, filtered by [`FILTER_ENV`] (or [`DEFAULT_FILTER`]), less
/// openraft's repeats of a peer link's failure ([`referee_coordinator::peer::QuietLinkFailures`]).
/// A filter that does not parse is reported on stderr and the default used, so a typo never
/// silences a daemon.
pub fn init() {
    let filter = match std::env::var(FILTER_ENV) {
        Err(_) => EnvFilter::new(DEFAULT_FILTER),
        Ok(text) => EnvFilter::try_new(&text).unwrap_or_else(|e| {
            eprintln!("{FILTER_ENV}={text:?} is not a valid log filter ({e}); using {DEFAULT_FILTER:?}");
            EnvFilter::new(DEFAULT_FILTER)
        }),
    };
    let colour = colour_wanted(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .finish()
        .with(referee_coordinator::peer::QuietLinkFailures)
        .init();
}

/// A fatal error and its causes on one line, as the binaries print it, each said once: a cause
/// whose text is already in what came before it is left out (most of the libraries' errors say
/// in one message what failed and why, and also keep the why as their source).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let table: [(bool, Option<&str>, bool); 5] = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (false, None, false),
            (false, Some("1"), false),
        ];
        for (terminal, no_color, want) in table {
            assert_eq!(
                colour_wanted(terminal, no_color.map(OsStr::new)),
                want,
                "terminal {terminal}, NO_COLOR {no_color:?}"
            );
        }
    }

    #[test]
    fn the_help_names_the_variables_and_the_default_filter() {
        for said in [FILTER_ENV, DEFAULT_FILTER, "NO_COLOR"] {
            assert!(ENV_HELP.contains(said), "--help must say {said}: {ENV_HELP}");
        }
    }

    #[test]
    fn one_line_says_each_cause_once() {
        use referee_coordinator::datadir::DataDirError;
        use referee_coordinator::server::CoordinatorError;
        let in_use = DataDirError::InUse { path: "/d".into(), holder: Some(7) };
        let e = anyhow::Error::from(CoordinatorError::from(in_use)).context("starting the coordinator");
        let line = one_line(&e);
        assert!(line.starts_with("starting the coordinator: data directory refused: /d is in use"), "{line}");
        assert_eq!(line.matches("/d is in use").count(), 1, "{line}");
        // Causes not already said are kept, outermost first.
        let e = anyhow::anyhow!("the port is taken").context("binding").context("starting");
        assert_eq!(one_line(&e), "starting: binding: the port is taken");
    }
}
