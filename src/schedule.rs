//! Schedule arithmetic: when an application's slots are. Pure: every function takes `now` (or the instant
//! to search from) as a parameter, so it is tested with fixed dates.
//!
//! A *slot* is the scheduled instant itself. It names a run: savepoints carry it in the
//! `savepointd.io/slot` annotation (and in Flink's deterministic trigger id), which is how a restarted
//! daemon knows that a slot already has its savepoint.
//!
//! Around the schedule: *blackout windows* ([`BlackoutWindow`]), inside which slots are skipped, and
//! *jitter* ([`jitter_offset`]), which starts a slot's run a little after the slot without changing
//! which slot it is.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hasher;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use sha2::{Digest, Sha256};

#[derive(Clone)]
pub enum Schedule {
    /// A cron expression (5 fields, or 6 with seconds first, or an `@` alias), evaluated in the
    /// application's timezone. `spec` is what the operator wrote.
    Cron { spec: String, cron: Arc<Cron> },
    /// `@every <duration>`: slots at whole multiples of the period since the Unix epoch, so they are the
    /// same instants whenever the daemon starts.
    Every(Duration),
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Cron { spec, .. } => f.write_str(spec),
            Schedule::Every(d) => write!(f, "@every {}", humantime::format_duration(*d)),
        }
    }
}

const ALIASES: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

impl Schedule {
    /// Parses a schedule. `application` seeds `@daily-random`, so each application gets its own stable
    /// time of day.
    pub fn parse(spec: &str, application: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        if let Some(period) = spec.strip_prefix("@every") {
            let period = period.trim();
            let d = humantime::parse_duration(period)
                .map_err(|e| format!("@every needs a duration like 6h or 90s ({e})"))?;
            if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
                return Err("@every needs a whole number of seconds, at least 1s".into());
            }
            return Ok(Schedule::Every(d));
        }
        if spec == "@daily-random" {
            let minute_of_day = stable_hash(application) % (24 * 60);
            let cron = format!("{} {} * * *", minute_of_day % 60, minute_of_day / 60);
            return Ok(Schedule::Cron {
                spec: format!("@daily-random ({cron})"),
                cron: Arc::new(parser().parse(&cron).expect("generated cron parses")),
            });
        }
        if spec.starts_with('@') && !ALIASES.contains(&spec) {
            return Err(format!(
                "unknown alias; expected {}, @every <duration> or @daily-random",
                ALIASES.join(", ")
            ));
        }
        let fields = spec.split_whitespace().count();
        if !spec.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found {fields}"
            ));
        }
        let cron = parser()
            .parse(spec)
            .map_err(|e| format!("not a cron expression: {e}"))?;
        // `0 0 30 2 *` parses but never fires: a daemon with it would wait for ever and say nothing.
        let probe = probe();
        let fires = cron
            .find_next_occurrence(&probe, false)
            .is_ok_and(|t| t < probe + search_horizon());
        if !fires {
            return Err(
                "never fires: no date matches it (is the day of month in that month?)".into(),
            );
        }
        Ok(Schedule::Cron {
            spec: spec.to_owned(),
            cron: Arc::new(cron),
        })
    }

    /// Takes the parsed form of an equal schedule seen before, or records this one's. A parsed cron
    /// expression is about 5 KiB (croner keeps a bit set per field, years included), and a thousand
    /// applications on the default schedule need one, not a thousand.
    pub fn share(&mut self, seen: &mut HashMap<String, Arc<Cron>>) {
        if let Schedule::Cron { spec, cron } = self {
            *cron = seen
                .entry(spec.clone())
                .or_insert_with(|| cron.clone())
                .clone();
        }
    }

    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let after = whole_seconds(after);
        match self {
            Schedule::Cron { cron, .. } => cron
                .find_next_occurrence(&after.with_timezone(&tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Schedule::Every(period) => {
                let period = period.as_secs() as i64;
                let next = (after.timestamp().div_euclid(period) + 1) * period;
                Utc.timestamp_opt(next, 0).single()
            }
        }
    }

    /// The latest slot at or before `now`.
    pub fn latest_at_or_before(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let now = whole_seconds(now);
        match self {
            Schedule::Cron { cron, .. } => cron
                .find_previous_occurrence(&now.with_timezone(&tz), true)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Schedule::Every(period) => {
                let period = period.as_secs() as i64;
                Utc.timestamp_opt(now.timestamp().div_euclid(period) * period, 0)
                    .single()
            }
        }
    }

    /// The next `n` slots after `now`.
    pub fn upcoming(&self, now: DateTime<Utc>, tz: Tz, n: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.next_after(now, tz), |t| self.next_after(*t, tz))
            .take(n)
            .collect()
    }

    /// The shortest time between two slots: exact for `@every`; for a cron expression, the shortest among
    /// a sample of its slots (cron's gaps vary, and no closed form gives the shortest), taken from a
    /// fixed instant so that the answer does not depend on the day a config is loaded.
    pub fn shortest_interval(&self, tz: Tz) -> Duration {
        match self {
            Schedule::Every(period) => *period,
            Schedule::Cron { .. } => self
                .upcoming(probe(), tz, 64)
                .windows(2)
                .map(|w| (w[1] - w[0]).to_std().unwrap_or_default())
                .min()
                .unwrap_or(Duration::from_secs(24 * 3600)),
        }
    }

    /// The typical time between two slots, for `schedule_expected_interval_seconds`: the longest gap among
    /// the next few slots, so an alert threshold derived from it never fires between two regular runs
    /// (`0 1 * * 1-5` waits three days over a weekend).
    pub fn expected_interval(&self, now: DateTime<Utc>, tz: Tz) -> Duration {
        match self {
            Schedule::Every(period) => *period,
            Schedule::Cron { .. } => self
                .upcoming(now, tz, 8)
                .windows(2)
                .map(|w| (w[1] - w[0]).to_std().unwrap_or_default())
                .max()
                .unwrap_or(Duration::from_secs(24 * 3600)),
        }
    }
}

/// Where searches that must not depend on the day start: 2024 is a leap year, and eight years from one
/// see every date a Gregorian calendar has.
fn probe() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date")
}

fn search_horizon() -> TimeDelta {
    TimeDelta::days(8 * 366)
}

/// Slots are whole seconds: croner carries the sub-second part of its starting point into the
/// occurrences it finds, and a slot must be the same instant however late in its second it was computed
/// (it identifies the slot's savepoint).
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// FNV-1a: stable across processes, platforms and Rust versions, unlike `DefaultHasher`.
fn stable_hash(text: &str) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.write(text.as_bytes());
    h.finish()
}

// ---------------------------------------------------------------------------------------------------------
// Blackout windows.
// ---------------------------------------------------------------------------------------------------------

/// A recurring window in which an application's slots are skipped: it opens at every slot of its own
/// `schedule` (in the application's timezone) and stays open for `duration` of elapsed time, so a 10h
/// window that spans the night clocks go forward ends an hour later by the wall clock.
#[derive(Debug, Clone)]
pub struct BlackoutWindow {
    pub schedule: Schedule,
    pub duration: Duration,
}

/// One opening of a blackout window: from `start` (inclusive) to `end` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opening {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl fmt::Display for BlackoutWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} for {}",
            self.schedule,
            humantime::format_duration(self.duration)
        )
    }
}

impl BlackoutWindow {
    /// The opening of this window that holds `at`, if one does.
    pub fn holding(&self, at: DateTime<Utc>, tz: Tz) -> Option<Opening> {
        // Every opening lasts as long, so the latest to start is the last to end: if it does not hold
        // `at`, no earlier one does.
        let start = self.schedule.latest_at_or_before(at, tz)?;
        let end = start.checked_add_signed(TimeDelta::from_std(self.duration).ok()?)?;
        (at < end).then_some(Opening { start, end })
    }
}

/// The blackout window holding `at`, if any; of several, the one that stays open longest, so that a
/// search that jumps to its end leaves all of them behind.
pub fn blackout(
    windows: &[BlackoutWindow],
    at: DateTime<Utc>,
    tz: Tz,
) -> Option<(&BlackoutWindow, Opening)> {
    windows
        .iter()
        .filter_map(|w| w.holding(at, tz).map(|o| (w, o)))
        .max_by_key(|(_, o)| o.end)
}

/// How many windows a search for a slot outside them jumps over before it gives up. Each jump skips a
/// whole opening, so only windows that hold (nearly) every slot reach it.
const SEARCH_JUMPS: usize = 1_000;

/// How far a search for a slot outside the windows looks: the weekdays of the calendar's dates repeat
/// every 28 years, so a slot that a weekday window spares turns up within that (a 29 February that is
/// a Sunday, say).
fn run_search_horizon() -> TimeDelta {
    TimeDelta::days(29 * 366)
}

/// The first slot strictly after `after` that no blackout window holds: the next run. `None` when the
/// schedule has no further slot, or when no slot outside the windows turns up within [`SEARCH_JUMPS`]
/// openings or 29 years.
pub fn next_run(
    schedule: &Schedule,
    windows: &[BlackoutWindow],
    after: DateTime<Utc>,
    tz: Tz,
) -> Option<DateTime<Utc>> {
    let horizon = after.checked_add_signed(run_search_horizon())?;
    let mut slot = schedule.next_after(after, tz)?;
    for _ in 0..SEARCH_JUMPS {
        let Some((_, opening)) = blackout(windows, slot, tz) else {
            return Some(slot);
        };
        // Every slot before the window closes is inside it: go straight to the first one at or after
        // its end (slots are whole seconds; the end may not be).
        slot = schedule.next_after(opening.end - TimeDelta::nanoseconds(1), tz)?;
        if slot > horizon {
            return None;
        }
    }
    None
}

/// The latest slot strictly before `before` that no blackout window holds (bounded as [`next_run`]).
fn previous_run(
    schedule: &Schedule,
    windows: &[BlackoutWindow],
    before: DateTime<Utc>,
    tz: Tz,
) -> Option<DateTime<Utc>> {
    let horizon = before.checked_sub_signed(run_search_horizon())?;
    let mut slot = schedule.latest_at_or_before(before - TimeDelta::seconds(1), tz)?;
    for _ in 0..SEARCH_JUMPS {
        let Some((_, opening)) = blackout(windows, slot, tz) else {
            return Some(slot);
        };
        slot = schedule.latest_at_or_before(opening.start - TimeDelta::seconds(1), tz)?;
        if slot < horizon {
            return None;
        }
    }
    None
}

/// The next `n` runs after `now`: the slots no blackout window holds.
pub fn upcoming_runs(
    schedule: &Schedule,
    windows: &[BlackoutWindow],
    now: DateTime<Utc>,
    tz: Tz,
    n: usize,
) -> Vec<DateTime<Utc>> {
    std::iter::successors(next_run(schedule, windows, now, tz), |t| {
        next_run(schedule, windows, *t, tz)
    })
    .take(n)
    .collect()
}

/// Whether every slot falls inside a blackout window, so that the application would never run. Searched
/// from a fixed instant, so that whether a config is valid does not depend on the day it is loaded.
pub fn never_runs(schedule: &Schedule, windows: &[BlackoutWindow], tz: Tz) -> bool {
    !windows.is_empty() && next_run(schedule, windows, probe(), tz).is_none()
}

/// [`Schedule::expected_interval`] with blackout windows: also the longest gap a window makes, from the
/// last run before one of its next openings to the first run after it. An alert threshold derived from
/// it then stays quiet through a blackout the operator configured.
pub fn expected_interval(
    schedule: &Schedule,
    windows: &[BlackoutWindow],
    now: DateTime<Utc>,
    tz: Tz,
) -> Duration {
    let mut longest = schedule.expected_interval(now, tz);
    for window in windows {
        for start in window.schedule.upcoming(now, tz, 8) {
            let before = previous_run(schedule, windows, start, tz);
            let after = next_run(schedule, windows, start - TimeDelta::seconds(1), tz);
            if let (Some(before), Some(after)) = (before, after) {
                longest = longest.max((after - before).to_std().unwrap_or_default());
            }
        }
    }
    longest
}

// ---------------------------------------------------------------------------------------------------------
// Jitter.
// ---------------------------------------------------------------------------------------------------------

/// How long after `slot` its run starts, in `[0, jitter)` (whole milliseconds). Derived from a SHA-256 of
/// the application's name and the slot, not from a random number or `DefaultHasher` (seeded per
/// process): every replica and every restart computes the same start, while applications sharing a
/// schedule spread out.
pub fn jitter_offset(application: &str, slot: DateTime<Utc>, jitter: Duration) -> Duration {
    let bound = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    if bound == 0 {
        return Duration::ZERO;
    }
    // The slot is a fixed-width suffix, so no two (name, slot) pairs hash the same input.
    let digest = Sha256::new()
        .chain_update(application.as_bytes())
        .chain_update(slot.timestamp().to_be_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Duration::from_millis(u64::from_be_bytes(first) % bound)
}

/// How late a run started relative to when it was due: its slot plus its jitter offset (zero when early,
/// which a coarse clock can make happen).
pub fn lateness(due: DateTime<Utc>, fired: DateTime<Utc>) -> Duration {
    (fired - due)
        .max(TimeDelta::zero())
        .to_std()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERLIN: Tz = chrono_tz::Europe::Berlin;
    // SHA-256("fraud-detection" ++ i64 BE 1795136400), first 8 bytes BE, mod 300000.
    const GOLDEN_OFFSET_MS: u64 = 287_534;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(spec: &str, after: &str, tz: Tz) -> String {
        Schedule::parse(spec, "app")
            .unwrap()
            .next_after(at(after), tz)
            .unwrap()
            .to_rfc3339()
    }

    #[test]
    fn five_fields_are_standard_cron() {
        assert_eq!(
            next("0 1 * * *", "2026-11-20T00:59:00Z", Tz::UTC),
            "2026-11-20T01:00:00+00:00"
        );
        assert_eq!(
            next("0 1 * * *", "2026-11-20T01:00:00Z", Tz::UTC),
            "2026-11-21T01:00:00+00:00"
        );
        assert_eq!(
            next("0 */6 * * *", "2026-11-20T07:00:00Z", Tz::UTC),
            "2026-11-20T12:00:00+00:00"
        );
    }

    #[test]
    fn six_fields_have_seconds_first() {
        assert_eq!(
            next("*/15 * * * * *", "2026-11-20T00:00:01Z", Tz::UTC),
            "2026-11-20T00:00:15+00:00"
        );
    }

    #[test]
    fn timezone_moves_the_slot() {
        // 01:00 in Berlin is 00:00 UTC in winter.
        assert_eq!(
            next(
                "0 1 * * *",
                "2026-11-19T23:30:00Z",
                chrono_tz::Europe::Berlin
            ),
            "2026-11-20T00:00:00+00:00"
        );
        // and 23:00 UTC the day before in summer.
        assert_eq!(
            next(
                "0 1 * * *",
                "2026-07-19T22:30:00Z",
                chrono_tz::Europe::Berlin
            ),
            "2026-07-19T23:00:00+00:00"
        );
    }

    #[test]
    fn aliases() {
        assert_eq!(
            next("@hourly", "2026-11-20T10:15:00Z", Tz::UTC),
            "2026-11-20T11:00:00+00:00"
        );
        assert_eq!(
            next("@daily", "2026-11-20T10:15:00Z", Tz::UTC),
            "2026-11-21T00:00:00+00:00"
        );
        // 2026-11-20 is a Friday; @weekly is Sunday midnight.
        assert_eq!(
            next("@weekly", "2026-11-20T10:15:00Z", Tz::UTC),
            "2026-11-22T00:00:00+00:00"
        );
        assert_eq!(
            next("@monthly", "2026-11-20T10:15:00Z", Tz::UTC),
            "2026-12-01T00:00:00+00:00"
        );
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        assert_eq!(
            next("@every 6h", "2026-11-20T07:00:00Z", Tz::UTC),
            "2026-11-20T12:00:00+00:00"
        );
        assert_eq!(
            next("@every 10s", "2026-11-20T07:00:03Z", Tz::UTC),
            "2026-11-20T07:00:10+00:00"
        );
        let s = Schedule::parse("@every 10s", "a").unwrap();
        assert_eq!(
            s.latest_at_or_before(at("2026-11-20T07:00:13Z"), Tz::UTC)
                .unwrap(),
            at("2026-11-20T07:00:10Z")
        );
    }

    #[test]
    fn daily_random_is_stable_per_application_and_spreads() {
        let a1 = Schedule::parse("@daily-random", "fraud-detection").unwrap();
        let a2 = Schedule::parse("@daily-random", "fraud-detection").unwrap();
        let b = Schedule::parse("@daily-random", "payments").unwrap();
        let now = at("2026-11-20T00:00:00Z");
        assert_eq!(a1.next_after(now, Tz::UTC), a2.next_after(now, Tz::UTC));
        assert_ne!(a1.next_after(now, Tz::UTC), b.next_after(now, Tz::UTC));
        assert_eq!(
            a1.expected_interval(now, Tz::UTC),
            Duration::from_secs(86400)
        );
        assert!(a1.to_string().starts_with("@daily-random ("));
    }

    #[test]
    fn latest_at_or_before_includes_now() {
        let s = Schedule::parse("0 1 * * *", "a").unwrap();
        assert_eq!(
            s.latest_at_or_before(at("2026-11-20T01:00:00Z"), Tz::UTC)
                .unwrap(),
            at("2026-11-20T01:00:00Z")
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-11-20T00:59:59Z"), Tz::UTC)
                .unwrap(),
            at("2026-11-19T01:00:00Z")
        );
    }

    #[test]
    fn expected_interval_covers_the_longest_gap() {
        let weekdays = Schedule::parse("0 1 * * 1-5", "a").unwrap();
        assert_eq!(
            weekdays.expected_interval(at("2026-11-20T00:00:00Z"), Tz::UTC),
            Duration::from_secs(3 * 86400)
        );
    }

    #[test]
    fn rejects_bad_expressions_with_a_reason() {
        for (spec, needle) in [
            ("0 1 * *", "found 4"),
            ("0 0 1 * * * 2027", "found 7"),
            ("61 * * * *", "not a cron expression"),
            ("@fortnightly", "unknown alias"),
            ("@every soon", "@every needs a duration"),
            ("@every 500ms", "whole number of seconds"),
        ] {
            let err = Schedule::parse(spec, "a").unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn slots_are_whole_seconds_whenever_they_are_computed() {
        let s = Schedule::parse("*/10 * * * * *", "a").unwrap();
        let now = at("2026-11-20T01:00:02.600Z");
        assert_eq!(
            s.latest_at_or_before(now, Tz::UTC).unwrap(),
            at("2026-11-20T01:00:00Z")
        );
        assert_eq!(
            s.next_after(now, Tz::UTC).unwrap(),
            at("2026-11-20T01:00:10Z")
        );
        assert_eq!(
            s.next_after(at("2026-11-20T01:00:09.999Z"), Tz::UTC)
                .unwrap(),
            at("2026-11-20T01:00:10Z")
        );
    }

    #[test]
    fn lateness_is_never_negative() {
        let slot = at("2026-11-20T01:00:00Z");
        assert_eq!(lateness(slot, at("2026-11-20T00:59:59Z")), Duration::ZERO);
        assert_eq!(
            lateness(slot, at("2026-11-20T01:00:02Z")),
            Duration::from_secs(2)
        );
    }

    fn window(spec: &str, duration: &str) -> BlackoutWindow {
        BlackoutWindow {
            schedule: Schedule::parse(spec, "app").unwrap(),
            duration: humantime::parse_duration(duration).unwrap(),
        }
    }

    fn runs(spec: &str, windows: &[BlackoutWindow], now: &str, tz: Tz, n: usize) -> Vec<String> {
        let schedule = Schedule::parse(spec, "app").unwrap();
        upcoming_runs(&schedule, windows, at(now), tz, n)
            .into_iter()
            .map(|t| t.to_rfc3339())
            .collect()
    }

    #[test]
    fn a_window_holds_from_its_start_inclusive_to_its_end_exclusive() {
        let night = window("0 22 * * *", "10h");
        let held = |t: &str| night.holding(at(t), Tz::UTC);
        assert_eq!(
            held("2026-11-20T22:00:00Z"),
            Some(Opening {
                start: at("2026-11-20T22:00:00Z"),
                end: at("2026-11-21T08:00:00Z"),
            })
        );
        assert!(held("2026-11-21T07:59:59Z").is_some());
        assert_eq!(held("2026-11-21T08:00:00Z"), None);
        assert_eq!(held("2026-11-20T21:59:59Z"), None);
    }

    #[test]
    fn the_next_runs_skip_the_slots_inside_a_window() {
        let night = [window("0 22 * * *", "10h")];
        assert_eq!(
            runs("0 * * * *", &night, "2026-11-20T20:30:00Z", Tz::UTC, 3),
            [
                "2026-11-20T21:00:00+00:00",
                "2026-11-21T08:00:00+00:00",
                "2026-11-21T09:00:00+00:00",
            ]
        );
        // No window, every slot.
        assert_eq!(
            runs("0 * * * *", &[], "2026-11-20T20:30:00Z", Tz::UTC, 2),
            ["2026-11-20T21:00:00+00:00", "2026-11-20T22:00:00+00:00"]
        );
        // Overlapping windows of different schedules: the run waits for the last of them to close.
        let overlapping = [window("0 22 * * *", "10h"), window("0 7 * * *", "3h")];
        assert_eq!(
            runs(
                "0 * * * *",
                &overlapping,
                "2026-11-20T21:30:00Z",
                Tz::UTC,
                1
            ),
            ["2026-11-21T10:00:00+00:00"]
        );
    }

    #[test]
    fn windows_open_in_the_applications_timezone_and_last_elapsed_time_across_dst() {
        // 22:00 in Berlin for 10 hours. Clocks go forward at 02:00 on 29 March 2026.
        let night = [window("0 22 * * *", "10h")];
        let first_run_local = |now: &str| {
            let schedule = Schedule::parse("0 * * * *", "app").unwrap();
            next_run(&schedule, &night, at(now), BERLIN)
                .unwrap()
                .with_timezone(&BERLIN)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string()
        };
        // A winter night: 22:00 to 08:00 CET.
        assert_eq!(
            first_run_local("2026-03-21T20:30:00Z"),
            "2026-03-22 08:00 CET"
        );
        // The night the clocks go forward: ten hours from 22:00 CET end at 09:00 CEST.
        assert_eq!(
            first_run_local("2026-03-28T20:30:00Z"),
            "2026-03-29 09:00 CEST"
        );
        // A summer night: 22:00 to 08:00 CEST, two hours earlier in UTC than in winter.
        assert_eq!(
            first_run_local("2026-04-04T19:30:00Z"),
            "2026-04-05 08:00 CEST"
        );
        let held = night[0]
            .holding(at("2026-04-04T20:00:00Z"), BERLIN)
            .unwrap();
        assert_eq!(held.start, at("2026-04-04T20:00:00Z"));
        assert!(
            night[0]
                .holding(at("2026-03-21T20:00:00Z"), BERLIN)
                .is_none()
        );
    }

    #[test]
    fn a_window_that_holds_every_slot_is_found_and_one_that_spares_some_is_not() {
        let schedule = |spec: &str| Schedule::parse(spec, "app").unwrap();
        // The slot at 01:00 is where the window closes: outside it.
        assert!(!never_runs(
            &schedule("0 1 * * *"),
            &[window("0 0 * * *", "1h")],
            Tz::UTC
        ));
        assert!(never_runs(
            &schedule("0 1 * * *"),
            &[window("0 0 * * *", "61m")],
            Tz::UTC
        ));
        // Each window closes where the next opens: every slot is inside one.
        assert!(never_runs(
            &schedule("@every 10m"),
            &[window("*/10 * * * *", "10m")],
            Tz::UTC
        ));
        // Weekday slots, weekday windows.
        assert!(never_runs(
            &schedule("0 1 * * 1-5"),
            &[window("0 0 * * 1-5", "24h")],
            Tz::UTC
        ));
        // A 29 February that is a Sunday is rare (2032 after 2024) but it comes.
        assert!(!never_runs(
            &schedule("0 1 29 2 *"),
            &[window("0 0 * * 1-6", "24h")],
            Tz::UTC
        ));
        assert!(!never_runs(&schedule("0 1 * * *"), &[], Tz::UTC));
    }

    #[test]
    fn the_expected_interval_spans_a_window() {
        let schedule = Schedule::parse("0 * * * *", "app").unwrap();
        let now = at("2026-11-20T12:00:00Z");
        assert_eq!(
            expected_interval(&schedule, &[], now, Tz::UTC),
            Duration::from_secs(3600)
        );
        // The last run before the window is at 21:00, the first after it at 08:00.
        assert_eq!(
            expected_interval(&schedule, &[window("0 22 * * *", "10h")], now, Tz::UTC),
            Duration::from_secs(11 * 3600)
        );
    }

    #[test]
    fn the_shortest_interval_is_exact_for_every_and_sampled_for_cron() {
        let shortest = |spec: &str| {
            Schedule::parse(spec, "app")
                .unwrap()
                .shortest_interval(Tz::UTC)
        };
        assert_eq!(shortest("@every 90m"), Duration::from_secs(90 * 60));
        assert_eq!(shortest("0 1 * * *"), Duration::from_secs(86_400));
        assert_eq!(shortest("0 1,2 * * *"), Duration::from_secs(3600));
        assert_eq!(shortest("*/15 * * * * *"), Duration::from_secs(15));
    }

    #[test]
    fn jitter_offsets_are_stable_bounded_and_spread() {
        let jitter = Duration::from_secs(300);
        let slot = at("2026-11-20T01:00:00Z");
        let offset = jitter_offset("fraud-detection", slot, jitter);
        // The derivation is part of the contract: replicas of different versions agree on it.
        assert_eq!(offset, Duration::from_millis(GOLDEN_OFFSET_MS));
        assert_eq!(jitter_offset("fraud-detection", slot, jitter), offset);
        assert_ne!(jitter_offset("payments", slot, jitter), offset);
        assert_ne!(
            jitter_offset("fraud-detection", slot + TimeDelta::days(1), jitter),
            offset
        );
        let offsets: Vec<Duration> = (0..200)
            .map(|i| jitter_offset("fraud-detection", slot + TimeDelta::hours(i), jitter))
            .collect();
        assert!(offsets.iter().all(|o| *o < jitter), "{offsets:?}");
        let (low, high) = (offsets.iter().min().unwrap(), offsets.iter().max().unwrap());
        assert!(
            *low < jitter / 4 && *high > jitter * 3 / 4,
            "spread over the bound: {low:?}..{high:?}"
        );
        assert_eq!(
            jitter_offset("fraud-detection", slot, Duration::ZERO),
            Duration::ZERO
        );
    }
}
