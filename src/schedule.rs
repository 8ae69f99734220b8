//! Schedule arithmetic: when an application's slots are. Pure: every function takes `now` (or the instant
//! to search from) as a parameter, so it is tested with fixed dates.
//!
//! A *slot* is the scheduled instant itself. It names a run: savepoints carry it in the
//! `savepointd.io/slot` annotation (and in Flink's deterministic trigger id), which is how a restarted
//! daemon knows that a slot already has its savepoint.

use std::fmt;
use std::hash::Hasher;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

#[derive(Clone)]
pub enum Schedule {
    /// A cron expression (5 fields, or 6 with seconds first, or an `@` alias), evaluated in the
    /// application's timezone. `spec` is what the operator wrote.
    Cron { spec: String, cron: Box<Cron> },
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
                cron: Box::new(parser().parse(&cron).expect("generated cron parses")),
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
        // Eight years from a leap year see every date a Gregorian calendar has.
        let probe = Utc
            .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("a valid date");
        let fires = cron
            .find_next_occurrence(&probe, false)
            .is_ok_and(|t| t < probe + TimeDelta::days(8 * 366));
        if !fires {
            return Err(
                "never fires: no date matches it (is the day of month in that month?)".into(),
            );
        }
        Ok(Schedule::Cron {
            spec: spec.to_owned(),
            cron: Box::new(cron),
        })
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

/// How late a run started relative to its slot (zero when early, which a coarse clock can make happen).
pub fn lateness(slot: DateTime<Utc>, fired: DateTime<Utc>) -> Duration {
    (fired - slot)
        .max(TimeDelta::zero())
        .to_std()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
