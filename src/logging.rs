//! Log set-up shared by the binaries: the `REFEREE_LOG` filter, and colour only where a person
//! reads it.

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
}
