//! Skipping a test whose prerequisite is missing.

use std::io::Write;

/// Skips `test` for `why` with a `SKIPPED: {test}: {why}` line, or panics when every test is
/// required ([`all_required`]): CI installs every prerequisite, so there a skip is a failure.
/// The caller then returns without running the test.
///
/// The line goes to the stderr handle directly: the test harness captures `eprintln!` of
/// passing tests, and a skip must be visible in a log.
pub fn skip(test: &str, why: &str) {
    if let Some(by) = all_required(|k| std::env::var(k).ok()) {
        panic!("{test} would be skipped, but {by} is set, so every test must run: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}

/// Which variable of the environment (`var` reads one) requires every test to run, if any:
/// `REFEREE_REQUIRE_ALL_TESTS` set at all, or `CI` set to anything but empty, `0` or `false`
/// (as CI services set it), so a CI job that forgot to install a prerequisite fails instead of
/// passing with the tests that need it skipped.
pub fn all_required(var: impl Fn(&str) -> Option<String>) -> Option<&'static str> {
    if var("REFEREE_REQUIRE_ALL_TESTS").is_some() {
        return Some("REFEREE_REQUIRE_ALL_TESTS");
    }
    let ci = var("CI")?;
    (!matches!(ci.trim().to_ascii_lowercase().as_str(), "" | "0" | "false")).then_some("CI")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn required(pairs: &[(&str, &str)]) -> Option<&'static str> {
        all_required(|k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn ci_or_the_explicit_variable_requires_every_test() {
        assert_eq!(required(&[]), None);
        assert_eq!(required(&[("CI", "true")]), Some("CI"));
        assert_eq!(required(&[("CI", "1")]), Some("CI"));
        for off in ["", "0", "false", "FALSE"] {
            assert_eq!(required(&[("CI", off)]), None, "CI={off:?}");
        }
        assert_eq!(required(&[("REFEREE_REQUIRE_ALL_TESTS", "")]), Some("REFEREE_REQUIRE_ALL_TESTS"));
    }
}
