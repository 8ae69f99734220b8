//! Retention planning: which savepoints of one application to delete, and why each of the others stays.
//!
//! [`plan`] is pure (no I/O, `now` is a parameter) so every rule below can be property-tested. Deleting is
//! the one thing savepointd does that cannot be undone, so the planner reads every doubt as "keep".
//!
//! The rules, in the order they are applied (DESIGN.md §2 and §5):
//!
//! 1. Retention off (no keep rule set): everything stays.
//! 2. Only terminal savepoints (COMPLETED, FAILED, ABANDONED, FAILED_DELETION) are candidates; in-flight
//!    ones and ones whose deletion is already under way stay.
//! 3. The newest COMPLETED savepoint of the whole history stays, whatever its origin or scope: it is what a
//!    running deployment recovers from (VVP refuses to delete the latest snapshot of an active deployment).
//! 4. What the platform protects is never asked for: it says why in [`Savepoint::protected`] (VVP's
//!    deletion prerequisites, the savepoint a running Flink job was restored from, a pinned one). The
//!    planner knows no platform's rules.
//! 5. Only savepoints in the policy's scope are candidates.
//! 6. With no COMPLETED savepoint anywhere in the history, nothing is deleted (not even FAILED ones: a
//!    history of failures is what an operator needs to see).
//! 7. Keep rules form a union over the COMPLETED savepoints in scope: the newest `minKeep` (the floor),
//!    `keepLast`, `keepWithin`, and the grandfather-father-son buckets (hours, days, weeks, months,
//!    years) in the application's timezone. A
//!    completed savepoint no rule keeps is deleted; FAILED and FAILED_DELETION ones hold no usable state and
//!    are deleted.
//! 8. A savepoint that shares its location with a kept one stays: VVP deletes every resource pointing to a
//!    location together, so deleting one would delete the kept one too.
//! 9. `maxDeletionsPerRun`: the oldest deletions go, the rest wait for the next run. Resources sharing a
//!    location are deleted together or not at all, so a group that does not fit into what is left waits
//!    while smaller, newer ones may still go.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::config::{Retention, Scope};
use crate::model::{Origin, Savepoint, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Delete,
}

/// What happens to one savepoint, and the rule that decided it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub savepoint: Savepoint,
    pub action: Action,
    /// `kept: …` or `delete: …`, naming the rule; printed by `prune` and logged.
    pub reason: String,
}

impl Decision {
    pub fn is_delete(&self) -> bool {
        self.action == Action::Delete
    }
}

/// The outcome of [`plan`] for one application.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// One decision per savepoint of the history, newest first (created_at descending, then id descending).
    pub decisions: Vec<Decision>,
    /// Deletions held back by `maxDeletionsPerRun`; they are planned again on the next run.
    pub capped: usize,
}

impl Plan {
    /// The savepoints to delete, newest first.
    pub fn deletions(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.is_delete())
    }

    /// COMPLETED savepoints that stay after this plan is carried out (the `retained_savepoints` gauge).
    pub fn retained_completed(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.action == Action::Keep && d.savepoint.state == State::Completed)
            .count()
    }
}

/// Plans retention for one application.
///
/// `history` is every savepoint of the application's target as the platform lists it, whatever created
/// it. `tz` is the application's timezone: hours, days, weeks, months and years of the keep rules are
/// counted in it.
pub fn plan(
    history: &[Savepoint],
    policy: &Retention,
    application: &str,
    tz: Tz,
    now: DateTime<Utc>,
) -> Plan {
    let mut sorted: Vec<&Savepoint> = history.iter().collect();
    sorted.sort_by(|a, b| newest_first(a, b));

    if !policy.is_enabled() {
        return Plan {
            decisions: sorted
                .into_iter()
                .map(|sp| decision(sp, Action::Keep, "kept: retention off".into()))
                .collect(),
            capped: 0,
        };
    }

    let newest_completed = sorted.iter().position(|sp| sp.state == State::Completed);
    let in_scope = |sp: &Savepoint| match policy.scope {
        Scope::Managed => sp
            .managed
            .as_ref()
            .is_some_and(|m| m.application == application),
        Scope::UserRequested => sp.origin == Origin::UserRequest,
        Scope::All => true,
    };
    let kept_by_rules = keep_rules(&sorted, policy, tz, now, |sp| {
        sp.state == State::Completed && in_scope(sp)
    });

    let mut verdicts: Vec<(Action, String)> = sorted
        .iter()
        .enumerate()
        .map(|(i, sp)| {
            let keep = |why: &str| (Action::Keep, format!("kept: {why}"));
            if sp.state.is_in_flight() {
                return keep("in flight");
            }
            if !sp.state.is_deletable() {
                return keep("deletion already under way");
            }
            if Some(i) == newest_completed {
                return keep("newest completed");
            }
            // The platform's own answer to "may this go?" (VVP's prerequisites, Flink's restored-from,
            // a pinned savepoint).
            if let Some(why) = &sp.protected {
                return (Action::Keep, format!("kept: {why}"));
            }
            if !in_scope(sp) {
                return (
                    Action::Keep,
                    format!("kept: outside scope {}", scope_name(policy.scope)),
                );
            }
            if newest_completed.is_none() {
                return keep("no completed savepoint yet");
            }
            match sp.state {
                State::Completed => match &kept_by_rules[i] {
                    reasons if !reasons.is_empty() => {
                        (Action::Keep, format!("kept: {}", reasons.join(", ")))
                    }
                    _ => (
                        Action::Delete,
                        format!("delete: not kept by {}", active_rules(policy)),
                    ),
                },
                State::FailedDeletion => (
                    Action::Delete,
                    "delete: earlier deletion failed, retrying".into(),
                ),
                State::Failed => (Action::Delete, "delete: failed savepoint".into()),
                State::Abandoned => (Action::Delete, "delete: abandoned savepoint".into()),
                // Returned above; keeping is the answer that cannot go wrong.
                State::TriggerPending
                | State::InProgress
                | State::Unknown
                | State::PendingDeletion
                | State::Deleting => keep("in flight"),
            }
        })
        .collect();

    keep_shared_locations(&sorted, &mut verdicts);
    let capped = cap(
        &sorted,
        &mut verdicts,
        policy.max_deletions_per_run as usize,
    );
    // Holding back whole location groups cannot leave a deletion next to a kept resource; this pass only
    // makes that independent of how the cap is computed.
    keep_shared_locations(&sorted, &mut verdicts);

    Plan {
        decisions: sorted
            .into_iter()
            .zip(verdicts)
            .map(|(sp, (action, reason))| decision(sp, action, reason))
            .collect(),
        capped,
    }
}

fn decision(sp: &Savepoint, action: Action, reason: String) -> Decision {
    Decision {
        savepoint: sp.clone(),
        action,
        reason,
    }
}

/// Newest first; the id breaks ties so the order never depends on how the platform listed them.
fn newest_first(a: &Savepoint, b: &Savepoint) -> Ordering {
    b.created_at
        .cmp(&a.created_at)
        .then_with(|| b.id.cmp(&a.id))
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Managed => "managed",
        Scope::UserRequested => "userRequested",
        Scope::All => "all",
    }
}

/// A policy as one line for `check-config`: `keepLast 7, keepWithin 30d (minKeep 1, scope managed,
/// at most 20 deletions per run)`, or `off`.
pub fn describe(policy: &Retention) -> String {
    if !policy.is_enabled() {
        return "off".to_owned();
    }
    format!(
        "{} (minKeep {}, scope {}, at most {} deletions per run)",
        active_rules(policy),
        policy.min_keep,
        scope_name(policy.scope),
        policy.max_deletions_per_run
    )
}

/// The keep rules in effect, for the reason of a deletion: `keepLast 7, keepWithin 30d`.
fn active_rules(policy: &Retention) -> String {
    let mut rules = Vec::new();
    if policy.keep_last > 0 {
        rules.push(format!("keepLast {}", policy.keep_last));
    }
    if let Some(within) = policy.keep_within {
        rules.push(format!("keepWithin {}", short_duration(within)));
    }
    for (name, n) in [
        ("keepHourly", policy.keep_hourly),
        ("keepDaily", policy.keep_daily),
        ("keepWeekly", policy.keep_weekly),
        ("keepMonthly", policy.keep_monthly),
        ("keepYearly", policy.keep_yearly),
    ] {
        if n > 0 {
            rules.push(format!("{name} {n}"));
        }
    }
    rules.join(", ")
}

/// For each savepoint (indexes into `sorted`, newest first), the keep rules that select it. Rules only look
/// at the savepoints `eligible` accepts: the COMPLETED ones in scope.
fn keep_rules(
    sorted: &[&Savepoint],
    policy: &Retention,
    tz: Tz,
    now: DateTime<Utc>,
    eligible: impl Fn(&Savepoint) -> bool,
) -> Vec<Vec<String>> {
    let mut reasons = vec![Vec::new(); sorted.len()];
    let candidates: Vec<usize> = (0..sorted.len()).filter(|&i| eligible(sorted[i])).collect();

    for &i in candidates.iter().take(policy.min_keep as usize) {
        reasons[i].push(format!("minKeep {}", policy.min_keep));
    }
    for &i in candidates.iter().take(policy.keep_last as usize) {
        reasons[i].push(format!("keepLast {}", policy.keep_last));
    }
    if let Some(within) = policy.keep_within {
        // A window too large to compute reaches back before any savepoint: everything is within it.
        let cutoff = TimeDelta::from_std(within)
            .ok()
            .and_then(|d| now.checked_sub_signed(d));
        let label = format!("within {}", short_duration(within));
        for &i in &candidates {
            // `>` rather than an age comparison: a savepoint from the future (clock skew) is within.
            if cutoff.is_none_or(|c| sorted[i].created_at > c) {
                reasons[i].push(label.clone());
            }
        }
    }
    for (period, n) in [
        (Period::Hour, policy.keep_hourly),
        (Period::Day, policy.keep_daily),
        (Period::Week, policy.keep_weekly),
        (Period::Month, policy.keep_monthly),
        (Period::Year, policy.keep_yearly),
    ] {
        for (i, key) in buckets(
            candidates.iter().map(|&i| (i, sorted[i].created_at)),
            period,
            n,
            tz,
        ) {
            reasons[i].push(format!("{} {key}", period.name()));
        }
    }
    reasons
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    fn name(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }

    /// The period `at` falls in, in `tz`: `2026-11-20T14`, `2026-11-20`, `2026-W47` (ISO week), `2026-11`,
    /// `2026`. Keys of one period kind sort in time order.
    fn key(self, at: DateTime<Utc>, tz: Tz) -> String {
        let local = at.with_timezone(&tz);
        match self {
            Period::Hour => format!("{}T{:02}", local.format("%Y-%m-%d"), local.hour()),
            Period::Day => local.format("%Y-%m-%d").to_string(),
            Period::Week => {
                let week = local.iso_week();
                format!("{:04}-W{:02}", week.year(), week.week())
            }
            Period::Month => local.format("%Y-%m").to_string(),
            Period::Year => local.format("%Y").to_string(),
        }
    }
}

/// Grandfather-father-son, as restic counts it: the newest savepoint of each of the last `n` periods that
/// have one. `newest_first` must be sorted newest first; returns the chosen items with their period key.
fn buckets<T>(
    newest_first: impl IntoIterator<Item = (T, DateTime<Utc>)>,
    period: Period,
    n: u32,
    tz: Tz,
) -> Vec<(T, String)> {
    let mut seen = BTreeSet::new();
    let mut chosen = Vec::new();
    for (item, at) in newest_first {
        if chosen.len() >= n as usize {
            break;
        }
        let key = period.key(at, tz);
        if seen.insert(key.clone()) {
            chosen.push((item, key));
        }
    }
    chosen
}

/// The physical location a savepoint points to, if any. A trailing slash does not make another location:
/// reading two spellings as one only ever keeps more.
fn location(sp: &Savepoint) -> Option<&str> {
    sp.location
        .as_deref()
        .map(|l| l.trim_end_matches('/'))
        .filter(|l| !l.is_empty())
}

/// Keeps every planned deletion that shares its location with a kept savepoint, until nothing changes.
fn keep_shared_locations(sorted: &[&Savepoint], verdicts: &mut [(Action, String)]) {
    loop {
        // The newest kept savepoint at each location: the one a reason names.
        let mut kept_at: BTreeMap<&str, &str> = BTreeMap::new();
        for (sp, (action, _)) in sorted.iter().zip(verdicts.iter()) {
            if let (Action::Keep, Some(loc)) = (action, location(sp)) {
                kept_at.entry(loc).or_insert(sp.id.as_str());
            }
        }
        let mut changed = false;
        for (sp, verdict) in sorted.iter().zip(verdicts.iter_mut()) {
            if verdict.0 != Action::Delete {
                continue;
            }
            if let Some(keeper) = location(sp).and_then(|loc| kept_at.get(loc)) {
                *verdict = (
                    Action::Keep,
                    format!("kept: shares its location with {keeper}"),
                );
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

/// Holds back deletions over `max`, oldest going first. Returns how many were held back.
fn cap(sorted: &[&Savepoint], verdicts: &mut [(Action, String)], max: usize) -> usize {
    // Deletions grouped by location (a savepoint without one is a group of its own), each group in the order
    // of its oldest member.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: BTreeMap<&str, usize> = BTreeMap::new();
    for i in (0..sorted.len()).rev() {
        if verdicts[i].0 != Action::Delete {
            continue;
        }
        match location(sorted[i]) {
            Some(loc) => match group_of.get(loc) {
                Some(&g) => groups[g].push(i),
                None => {
                    group_of.insert(loc, groups.len());
                    groups.push(vec![i]);
                }
            },
            None => groups.push(vec![i]),
        }
    }

    let mut budget = max;
    let mut capped = 0;
    for group in groups {
        if group.len() <= budget {
            budget -= group.len();
            continue;
        }
        for i in group {
            verdicts[i] = (
                Action::Keep,
                format!("kept: over maxDeletionsPerRun ({max}), next run"),
            );
            capped += 1;
        }
    }
    capped
}

/// `30d`, `36h` as `1d12h`, `90m` as `1h30m`: the way the config spells durations, for reasons.
fn short_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return humantime::format_duration(d).to_string();
    }
    let secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let parts = [
        ("d", secs / 86_400),
        ("h", secs / 3_600 % 24),
        ("m", secs / 60 % 60),
        ("s", secs % 60),
    ];
    for (unit, n) in parts {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SavepointType;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const BERLIN: Tz = chrono_tz::Europe::Berlin;
    const NEW_YORK: Tz = chrono_tz::America::New_York;

    #[test]
    fn a_late_evening_utc_is_the_next_day_in_berlin() {
        let t = at("2026-11-20T23:30:00Z");
        assert_eq!(Period::Day.key(t, Tz::UTC), "2026-11-20");
        assert_eq!(Period::Day.key(t, BERLIN), "2026-11-21");
        assert_eq!(Period::Hour.key(t, Tz::UTC), "2026-11-20T23");
        assert_eq!(Period::Hour.key(t, BERLIN), "2026-11-21T00");
    }

    #[test]
    fn an_early_morning_utc_is_the_previous_day_in_new_york() {
        let t = at("2026-11-21T03:00:00Z");
        assert_eq!(Period::Day.key(t, NEW_YORK), "2026-11-20");
        assert_eq!(Period::Day.key(t, Tz::UTC), "2026-11-21");
    }

    #[test]
    fn weeks_are_iso_weeks_in_the_timezone() {
        // Sunday 22 November 2026, 23:30 UTC: still week 47 in UTC, already Monday of week 48 in Berlin.
        let t = at("2026-11-22T23:30:00Z");
        assert_eq!(Period::Week.key(t, Tz::UTC), "2026-W47");
        assert_eq!(Period::Week.key(t, BERLIN), "2026-W48");
        // 1 January 2027 is a Friday and belongs to the 53rd ISO week of 2026.
        assert_eq!(
            Period::Week.key(at("2027-01-01T12:00:00Z"), Tz::UTC),
            "2026-W53"
        );
        assert_eq!(
            Period::Week.key(at("2027-01-04T12:00:00Z"), Tz::UTC),
            "2027-W01"
        );
    }

    #[test]
    fn months_turn_at_local_midnight() {
        let t = at("2026-11-30T23:30:00Z");
        assert_eq!(Period::Month.key(t, Tz::UTC), "2026-11");
        assert_eq!(Period::Month.key(t, BERLIN), "2026-12");
        let t = at("2027-01-01T02:00:00Z");
        assert_eq!(Period::Month.key(t, NEW_YORK), "2026-12");
    }

    #[test]
    fn years_turn_at_local_midnight_on_new_years_eve() {
        // 23:30 UTC on 31 December is already the new year in Berlin; 04:00 UTC on 1 January is still
        // the old one in New York.
        let t = at("2026-12-31T23:30:00Z");
        assert_eq!(Period::Year.key(t, Tz::UTC), "2026");
        assert_eq!(Period::Year.key(t, BERLIN), "2027");
        assert_eq!(
            Period::Year.key(at("2027-01-01T04:00:00Z"), NEW_YORK),
            "2026"
        );
        // The newest of each year that has one, as the other buckets count.
        let items = [
            ("new-year-eve", t),
            ("dec", at("2026-12-01T12:00:00Z")),
            ("2025", at("2025-06-01T12:00:00Z")),
            ("2023", at("2023-06-01T12:00:00Z")),
        ];
        assert_eq!(
            buckets(items, Period::Year, 2, BERLIN),
            vec![
                ("new-year-eve", "2027".to_string()),
                ("dec", "2026".to_string()),
            ]
        );
        assert_eq!(
            buckets(items, Period::Year, 3, Tz::UTC),
            vec![
                ("new-year-eve", "2026".to_string()),
                ("2025", "2025".to_string()),
                ("2023", "2023".to_string()),
            ]
        );
    }

    #[test]
    fn keep_yearly_alone_turns_retention_on_and_keeps_the_newest_of_each_year() {
        let policy = Retention {
            keep_last: 0,
            keep_within: None,
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_yearly: 2,
            min_keep: 1,
            scope: Scope::All,
            max_deletions_per_run: 20,
        };
        assert!(policy.is_enabled());
        assert_eq!(
            describe(&policy),
            "keepYearly 2 (minKeep 1, scope all, at most 20 deletions per run)"
        );
        let completed = |id: &str, t: &str| Savepoint {
            id: id.into(),
            created_at: at(t),
            state: State::Completed,
            origin: Origin::UserRequest,
            kind: SavepointType::Full,
            location: None,
            failure: None,
            managed: None,
            protected: None,
        };
        let history = [
            completed("jan-2027", "2027-01-10T12:00:00Z"),
            completed("dec-2026", "2026-12-10T12:00:00Z"),
            completed("jun-2026", "2026-06-10T12:00:00Z"),
            completed("jun-2025", "2025-06-10T12:00:00Z"),
        ];
        let plan = plan(
            &history,
            &policy,
            "app",
            Tz::UTC,
            at("2027-02-01T00:00:00Z"),
        );
        let reasons: Vec<(&str, &str)> = plan
            .decisions
            .iter()
            .map(|d| (d.savepoint.id.as_str(), d.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("jan-2027", "kept: newest completed"),
                ("dec-2026", "kept: yearly 2026"),
                ("jun-2026", "delete: not kept by keepYearly 2"),
                ("jun-2025", "delete: not kept by keepYearly 2"),
            ]
        );
    }

    #[test]
    fn the_repeated_hour_at_the_end_of_summer_time_is_one_bucket() {
        // 25 October 2026, Berlin: 02:00-02:59 happens twice (CEST, then CET).
        let first = at("2026-10-25T00:30:00Z");
        let second = at("2026-10-25T01:30:00Z");
        assert_eq!(Period::Hour.key(first, BERLIN), "2026-10-25T02");
        assert_eq!(Period::Hour.key(second, BERLIN), "2026-10-25T02");
        let chosen = buckets([("b", second), ("a", first)], Period::Hour, 5, BERLIN);
        assert_eq!(chosen, vec![("b", "2026-10-25T02".to_string())]);
    }

    #[test]
    fn buckets_count_only_periods_that_have_a_savepoint() {
        // Newest first: two on the 20th, none on the 19th, one on the 18th, one on the 10th.
        let items = [
            ("d", at("2026-11-20T18:00:00Z")),
            ("c", at("2026-11-20T06:00:00Z")),
            ("b", at("2026-11-18T06:00:00Z")),
            ("a", at("2026-11-10T06:00:00Z")),
        ];
        let chosen = buckets(items, Period::Day, 3, Tz::UTC);
        assert_eq!(
            chosen,
            vec![
                ("d", "2026-11-20".to_string()),
                ("b", "2026-11-18".to_string()),
                ("a", "2026-11-10".to_string()),
            ]
        );
        assert!(buckets(items, Period::Day, 0, Tz::UTC).is_empty());
    }

    #[test]
    fn the_same_savepoints_fall_into_other_days_in_another_timezone() {
        // 22:30 and 23:30 UTC on the 20th: one UTC day; in Berlin 23:30 and 00:30, two days.
        let items = [
            ("late", at("2026-11-20T23:30:00Z")),
            ("early", at("2026-11-20T22:30:00Z")),
        ];
        assert_eq!(buckets(items, Period::Day, 7, Tz::UTC).len(), 1);
        let berlin = buckets(items, Period::Day, 7, BERLIN);
        assert_eq!(
            berlin,
            vec![
                ("late", "2026-11-21".to_string()),
                ("early", "2026-11-20".to_string()),
            ]
        );
    }

    #[test]
    fn durations_read_as_the_config_writes_them() {
        assert_eq!(short_duration(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(short_duration(Duration::from_secs(36 * 3_600)), "1d12h");
        assert_eq!(short_duration(Duration::from_secs(90 * 60)), "1h30m");
        assert_eq!(short_duration(Duration::from_secs(45)), "45s");
        assert_eq!(short_duration(Duration::ZERO), "0s");
        assert_eq!(short_duration(Duration::from_millis(1_500)), "1s 500ms");
    }

    #[test]
    fn locations_ignore_a_trailing_slash_and_empty_is_none() {
        let mut sp = Savepoint {
            id: "a".into(),
            created_at: at("2026-11-20T00:00:00Z"),
            state: State::Completed,
            origin: Origin::UserRequest,
            kind: SavepointType::Full,
            location: Some("s3://b/sp-1/".into()),
            failure: None,
            managed: None,
            protected: None,
        };
        assert_eq!(location(&sp), Some("s3://b/sp-1"));
        sp.location = Some(String::new());
        assert_eq!(location(&sp), None);
    }
}
