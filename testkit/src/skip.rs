//! Skipping a test whose prerequisite is missing.

use std::io::Write;

/// Skips `test` for `why` with a `SKIPPED: {test}: {why}` line, or panics when the environment
/// sets `REFEREE_REQUIRE_ALL_TESTS`: CI installs every prerequisite, so there a skip is a
/// failure. The caller then returns without running the test.
///
/// The line goes to the stderr handle directly: the test harness captures `eprintln!` of
/// passing tests, and a skip must be visible in a log.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("REFEREE_REQUIRE_ALL_TESTS").is_some() {
        panic!("{test} would be skipped, but REFEREE_REQUIRE_ALL_TESTS is set: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}
