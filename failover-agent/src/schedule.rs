//! Scheduled switchovers: an operator's failover to a named node, carried out later, at a
//! wall-clock time (a maintenance window), as Patroni's `switchover --scheduled` does.
//!
//! `referee admin failover --to NODE --at TIME` checks NODE as a failover now would, then
//! records the request in the coordinator, at `/referee/<cluster>/switchover` (one at a time:
//! a second is refused until the first is cancelled or done). The agent of NODE reads it every
//! few cycles; once the time has come it deletes the record (by its version, so a cancel or a
//! replacement in between wins, and the switchover runs at most once) and takes over exactly
//! as on `referee admin failover --to NODE`, with the same checks made afresh. A record found
//! more than [`MISSED_AFTER`] after its time (the node's agent was down) is deleted by any
//! standby that reads it and logged as missed, never carried out late. Only standbys read it:
//! an active agent's cycle spends no coordinator round trip on it. `referee admin failover --cancel` deletes it;
//! `referee admin status` shows it.
//!
//! The time is wall-clock time, read on the target's host: only *when* the switchover starts
//! depends on it, never a lease or any safety rule.
//!
//! This module is pure: the record, the parsing of `--at`, and [`due`], the decision a target
//! makes on reading the record.

use serde::{Deserialize, Serialize};

/// How late a scheduled switchover may still start; later it is dropped as missed.
pub const MISSED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// The record at `/referee/<cluster>/switchover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledSwitchover {
    /// The node to make active.
    pub to: String,
    /// When, in ms since the Unix epoch (UTC).
    pub at_ms: i64,
    /// Promote `to` even if it lags the active by more than its `max_lag`.
    #[serde(default)]
    pub allow_data_loss: bool,
    /// Who asked (the operator's login name).
    pub requested_by: String,
    /// When they asked, in ms since the Unix epoch.
    pub requested_at_ms: i64,
}

/// What the agent of `me` does with a record it has read, at wall-clock time `now_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// The switchover is to another node.
    NotMine,
    /// Not yet: this many ms are left.
    Wait(i64),
    /// Now: delete the record and take over.
    Run,
    /// Its time passed more than [`MISSED_AFTER`] ago (by this many ms): delete it, do nothing.
    Missed(i64),
}

/// The decision of the agent of `me` on reading `s` at `now_ms`. A missed record is for any
/// node to clear: its target may be the one whose agent was down.
pub fn due(s: &ScheduledSwitchover, me: &str, now_ms: i64) -> Due {
    let late = now_ms.saturating_sub(s.at_ms);
    if late > MISSED_AFTER.as_millis() as i64 {
        Due::Missed(late)
    } else if s.to != me {
        Due::NotMine
    } else if late < 0 {
        Due::Wait(-late)
    } else {
        Due::Run
    }
}

/// Parses `--at`: `+N` with a unit (`+90s`, `+15m`, `+2h`) from `now_ms`, or a UTC time
/// `YYYY-MM-DDTHH:MM[:SS]Z`. The time must be in the future and within a week, so a typo
/// cannot leave a switchover pending for years.
pub fn parse_at(text: &str, now_ms: i64) -> Result<i64, String> {
    let hint = "give +N with s, m or h (as +90s, +15m, +2h) or a UTC time as 2026-12-04T02:00:00Z";
    let at = if let Some(rel) = text.strip_prefix('+') {
        let (digits, unit) = rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len()));
        let n: i64 = digits.parse().map_err(|_| format!("`{text}` is not a time: {hint}"))?;
        let scale = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(format!("`{text}` has no unit s, m or h: {hint}")),
        };
        now_ms.saturating_add(n.saturating_mul(scale))
    } else {
        parse_utc(text).ok_or_else(|| format!("`{text}` is not a time: {hint}"))?
    };
    if at <= now_ms {
        return Err(format!("`{text}` is not in the future: {hint}"));
    }
    if at - now_ms > 7 * 86_400_000 {
        return Err(format!("`{text}` is more than a week ahead; schedule it nearer the time"));
    }
    Ok(at)
}

/// `YYYY-MM-DDTHH:MM[:SS]Z` as ms since the Unix epoch.
fn parse_utc(text: &str) -> Option<i64> {
    let body = text.strip_suffix('Z')?;
    let (date, time) = body.split_once('T')?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (d.next()?.parse().ok()?, d.next()?.parse().ok()?, d.next()?.parse().ok()?);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=days_in_month(y, m)).contains(&day) {
        return None;
    }
    let mut t = time.split(':');
    let (h, min): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let s: i64 = match t.next() {
        Some(s) => s.parse().ok()?,
        None => 0,
    };
    if t.next().is_some() || h > 23 || min > 59 || s > 59 || h < 0 || min < 0 || s < 0 {
        return None;
    }
    Some(days_from_civil(y, m, day) * 86_400_000 + (h * 3600 + min * 60 + s) * 1000)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_300_000_000; // 2026-12-03T...

    fn record(to: &str, at_ms: i64) -> ScheduledSwitchover {
        ScheduledSwitchover {
            to: to.into(),
            at_ms,
            allow_data_loss: false,
            requested_by: "ops".into(),
            requested_at_ms: 0,
        }
    }

    #[test]
    fn only_the_named_node_acts_and_only_in_its_window() {
        let table = [
            (record("db1", NOW), Due::NotMine),
            (record("db2", NOW + 1_500), Due::Wait(1_500)),
            (record("db2", NOW), Due::Run),
            (record("db2", NOW - 60_000), Due::Run),
            (record("db2", NOW - 60_001), Due::Missed(60_001)),
            (record("db1", NOW - 60_001), Due::Missed(60_001)),
        ];
        for (r, want) in table {
            assert_eq!(due(&r, "db2", NOW), want, "{r:?}");
        }
    }

    #[test]
    fn at_takes_relative_and_utc_times_in_the_coming_week() {
        assert_eq!(parse_at("+90s", NOW), Ok(NOW + 90_000));
        assert_eq!(parse_at("+15m", NOW), Ok(NOW + 900_000));
        assert_eq!(parse_at("+2h", NOW), Ok(NOW + 7_200_000));
        assert_eq!(parse_utc("1970-01-01T00:00Z"), Some(0));
        assert_eq!(parse_utc("2000-03-01T00:00:00Z"), Some(951_868_800_000));
        assert_eq!(parse_utc("2024-02-29T12:34:56Z"), Some(1_709_210_096_000));
        let at = parse_utc("2026-12-04T02:00:00Z").unwrap();
        assert_eq!(parse_at("2026-12-04T02:00:00Z", at - 1), Ok(at));
        for bad in [
            "",
            "+",
            "+5",
            "+5d",
            "+-5s",
            "tomorrow",
            "2026-12-04 02:00:00Z",
            "2026-12-04T02:00:00",
            "2026-13-01T00:00Z",
            "2025-02-29T00:00Z",
            "2026-12-04T24:00Z",
        ] {
            assert!(parse_at(bad, NOW).is_err(), "{bad:?} accepted");
        }
        assert!(parse_at("2026-12-04T02:00:00Z", at).unwrap_err().contains("not in the future"));
        assert!(parse_at("+8d", NOW).is_err());
        assert!(parse_at("+169h", NOW).unwrap_err().contains("more than a week"));
        assert!(parse_at("+168h", NOW).is_ok());
    }
}
