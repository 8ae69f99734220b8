//! The retention rules of DESIGN.md §5, proved two ways: properties over random histories and policies
//! (whatever the policy says, the rules hold), and one table test per VVP deletion prerequisite and keep
//! rule, with a history small enough to read.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;
use savepointd::config::{Retention, Scope};
use savepointd::platform::vvp;
use savepointd::platform::{Managed, Origin, Savepoint, SavepointType, State};
use savepointd::retention::{Action, Plan, plan};

const APP: &str = "fraud-detection";
const OTHER_APP: &str = "billing";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

// ---------------------------------------------------------------------------------------------------------
// Building histories and policies by hand.
// ---------------------------------------------------------------------------------------------------------

/// A COMPLETED FULL savepoint that savepointd took for [`APP`], at its own location.
fn managed(id: &str, created: &str) -> Savepoint {
    let created_at = at(created);
    Savepoint {
        id: id.into(),
        created_at,
        state: State::Completed,
        origin: Origin::UserRequest,
        kind: SavepointType::Full,
        location: Some(format!("s3://flink/savepoints/savepoint-{id}")),
        failure: None,
        managed: Some(Managed {
            application: APP.into(),
            slot: Some(created_at),
        }),
        protected: None,
    }
}

/// The same, but triggered by a person in the VVP UI: USER_REQUEST, no savepointd annotations.
fn manual(id: &str, created: &str) -> Savepoint {
    Savepoint {
        managed: None,
        ..managed(id, created)
    }
}

fn with(sp: Savepoint, f: impl FnOnce(&mut Savepoint)) -> Savepoint {
    let mut sp = sp;
    f(&mut sp);
    sp
}

/// Retention with no keep rule (off), the defaults otherwise.
fn off() -> Retention {
    Retention {
        keep_last: 0,
        keep_within: None,
        keep_hourly: 0,
        keep_daily: 0,
        keep_weekly: 0,
        keep_monthly: 0,
        keep_yearly: 0,
        min_keep: 1,
        scope: Scope::Managed,
        max_deletions_per_run: 20,
    }
}

fn keep_last(n: u32) -> Retention {
    Retention {
        keep_last: n,
        ..off()
    }
}

const NOW: &str = "2026-12-05T12:00:00Z";

fn run(history: &[Savepoint], policy: &Retention) -> Plan {
    run_in(history, policy, Tz::UTC)
}

fn run_in(history: &[Savepoint], policy: &Retention, tz: Tz) -> Plan {
    let history: Vec<Savepoint> = history.iter().cloned().map(as_vvp_lists_it).collect();
    plan(&history, policy, APP, tz, at(NOW))
}

/// A savepoint with VVP's refusal set from its origin and type, as the VVP platform lists it: the
/// planner keeps what the platform protects, and VVP's rules are the VVP module's.
fn as_vvp_lists_it(mut sp: Savepoint) -> Savepoint {
    sp.protected = vvp::refusal(sp.origin, sp.kind);
    sp
}

/// Every decision as `id: reason`, newest first: what `savepointd prune --dry-run` shows, and what the
/// tables below compare against.
fn table(plan: &Plan) -> Vec<String> {
    plan.decisions
        .iter()
        .map(|d| {
            let prefix = match d.action {
                Action::Keep => "kept: ",
                Action::Delete => "delete: ",
            };
            assert!(
                d.reason.starts_with(prefix),
                "{}: {:?} with reason {:?}",
                d.savepoint.id,
                d.action,
                d.reason
            );
            format!("{}: {}", d.savepoint.id, d.reason)
        })
        .collect()
}

fn assert_table(plan: &Plan, expected: &[&str]) {
    assert_eq!(table(plan), expected, "capped = {}", plan.capped);
}

// ---------------------------------------------------------------------------------------------------------
// Table tests.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn retention_off_keeps_everything() {
    let history = [
        managed("new", "2026-12-05T01:00:00Z"),
        managed("old", "2025-01-01T01:00:00Z"),
        with(managed("failed", "2026-12-04T01:00:00Z"), |s| {
            s.state = State::Failed
        }),
    ];
    let plan = run(&history, &off());
    assert_table(
        &plan,
        &[
            "new: kept: retention off",
            "failed: kept: retention off",
            "old: kept: retention off",
        ],
    );
    assert_eq!(plan.deletions().count(), 0);
    assert_eq!(plan.retained_completed(), 2);
}

#[test]
fn vvp_incremental_savepoints_are_never_deleted() {
    let history = [
        managed("new", "2026-12-05T01:00:00Z"),
        with(managed("incremental", "2026-12-03T01:00:00Z"), |s| {
            s.kind = SavepointType::Incremental
        }),
        managed("full", "2026-12-02T01:00:00Z"),
    ];
    assert_table(
        &run(&history, &keep_last(1)),
        &[
            "new: kept: newest completed",
            "incremental: kept: incremental",
            "full: delete: not kept by keepLast 1",
        ],
    );
}

#[test]
fn vvp_retained_checkpoints_are_never_deleted() {
    let history = [
        manual("new", "2026-12-05T01:00:00Z"),
        with(manual("retained", "2026-12-03T01:00:00Z"), |s| {
            s.origin = Origin::RetainedCheckpoint
        }),
        manual("full", "2026-12-02T01:00:00Z"),
    ];
    let policy = Retention {
        scope: Scope::All,
        ..keep_last(1)
    };
    assert_table(
        &run(&history, &policy),
        &[
            "new: kept: newest completed",
            "retained: kept: retained checkpoint",
            "full: delete: not kept by keepLast 1",
        ],
    );
}

#[test]
fn vvp_type_unknown_is_deletable_only_when_user_requested_or_suspend() {
    let unknown = |id: &str, created: &str, origin: Origin| {
        with(manual(id, created), |s| {
            s.kind = SavepointType::Unknown;
            s.origin = origin;
        })
    };
    let history = [
        manual("new", "2026-12-05T01:00:00Z"),
        unknown("copied", "2026-12-04T01:00:00Z", Origin::Copied),
        unknown("user", "2026-12-03T01:00:00Z", Origin::UserRequest),
        unknown("suspend", "2026-12-02T01:00:00Z", Origin::Suspend),
        unknown("upgrade", "2026-12-01T01:00:00Z", Origin::SuspendAndUpgrade),
        unknown("unknown", "2026-11-30T01:00:00Z", Origin::Unknown),
    ];
    let policy = Retention {
        scope: Scope::All,
        ..keep_last(1)
    };
    assert_table(
        &run(&history, &policy),
        &[
            "new: kept: newest completed",
            "copied: kept: type UNKNOWN with origin COPIED is not deletable",
            "user: delete: not kept by keepLast 1",
            "suspend: delete: not kept by keepLast 1",
            "upgrade: kept: type UNKNOWN with origin SUSPEND_AND_UPGRADE is not deletable",
            "unknown: kept: type UNKNOWN with origin UNKNOWN is not deletable",
        ],
    );
}

#[test]
fn vvp_resources_sharing_a_savepoint_location_stay_or_go_together() {
    let history = [
        managed("new", "2026-12-05T01:00:00Z"),
        managed("kept", "2026-12-04T01:00:00Z"),
        // A copy of `kept` registered by hand: its own data is `kept`'s, and VVP would delete both.
        with(manual("copy-of-kept", "2026-11-01T01:00:00Z"), |s| {
            s.origin = Origin::Copied;
            s.location = Some("s3://flink/savepoints/savepoint-kept/".into());
            s.managed = Some(Managed {
                application: APP.into(),
                slot: Some(s.created_at),
            });
        }),
        // Two resources of one old savepoint: nothing keeps either, so both go.
        managed("old", "2026-11-02T01:00:00Z"),
        with(managed("old-twin", "2026-11-02T01:00:00Z"), |s| {
            s.location = Some("s3://flink/savepoints/savepoint-old".into())
        }),
        // A FAILED resource pointing to the newest savepoint's location is kept with it.
        with(managed("failed-at-new", "2026-11-03T01:00:00Z"), |s| {
            s.state = State::Failed;
            s.location = Some("s3://flink/savepoints/savepoint-new".into());
        }),
    ];
    let plan = run(&history, &keep_last(2));
    assert_table(
        &plan,
        &[
            "new: kept: newest completed",
            "kept: kept: keepLast 2",
            "failed-at-new: kept: shares its location with new",
            "old-twin: delete: not kept by keepLast 2",
            "old: delete: not kept by keepLast 2",
            "copy-of-kept: kept: shares its location with kept",
        ],
    );
}

#[test]
fn vvp_pending_deletion_and_deleting_are_never_asked_again() {
    let history = [
        managed("new", "2026-12-05T01:00:00Z"),
        with(managed("pending", "2026-12-01T01:00:00Z"), |s| {
            s.state = State::PendingDeletion
        }),
        with(managed("deleting", "2026-11-30T01:00:00Z"), |s| {
            s.state = State::Deleting
        }),
        with(managed("failed-deletion", "2026-11-29T01:00:00Z"), |s| {
            s.state = State::FailedDeletion
        }),
    ];
    assert_table(
        &run(&history, &keep_last(1)),
        &[
            "new: kept: newest completed",
            "pending: kept: deletion already under way",
            "deleting: kept: deletion already under way",
            "failed-deletion: delete: earlier deletion failed, retrying",
        ],
    );
}

#[test]
fn vvp_started_and_unknown_state_savepoints_are_in_flight_and_kept() {
    let history = [
        with(managed("started", "2026-12-05T11:00:00Z"), |s| {
            s.state = State::InProgress;
            s.location = None;
        }),
        managed("new", "2026-12-05T01:00:00Z"),
        with(managed("unknown-state", "2026-11-01T01:00:00Z"), |s| {
            s.state = State::Unknown
        }),
        managed("old", "2026-11-01T00:00:00Z"),
    ];
    assert_table(
        &run(&history, &keep_last(1)),
        &[
            "started: kept: in flight",
            "new: kept: newest completed",
            "unknown-state: kept: in flight",
            "old: delete: not kept by keepLast 1",
        ],
    );
}

#[test]
fn vvp_the_latest_snapshot_of_a_running_deployment_is_kept_whatever_the_scope() {
    // Someone took a savepoint by hand after savepointd's last one: it is what the deployment would
    // restore from, it is outside scope managed, and every keep rule would drop it. Its copy stays with it.
    let history = [
        manual("by-hand", "2026-11-20T01:00:00Z"),
        with(manual("by-hand-copy", "2026-11-19T01:00:00Z"), |s| {
            s.origin = Origin::Copied;
            s.location = Some("s3://flink/savepoints/savepoint-by-hand".into());
        }),
        managed("managed-1", "2026-11-18T01:00:00Z"),
        managed("managed-2", "2026-11-17T01:00:00Z"),
    ];
    let policy = Retention {
        keep_within: Some(Duration::from_secs(3_600)),
        scope: Scope::All,
        ..off()
    };
    assert_table(
        &run(&history, &policy),
        &[
            "by-hand: kept: newest completed",
            "by-hand-copy: kept: shares its location with by-hand",
            "managed-1: delete: not kept by keepWithin 1h",
            "managed-2: delete: not kept by keepWithin 1h",
        ],
    );
    // With scope managed the newest completed is out of scope, and the floor still keeps the newest managed.
    let policy = Retention {
        scope: Scope::Managed,
        ..policy
    };
    assert_table(
        &run(&history, &policy),
        &[
            "by-hand: kept: newest completed",
            "by-hand-copy: kept: outside scope managed",
            "managed-1: kept: minKeep 1",
            "managed-2: delete: not kept by keepWithin 1h",
        ],
    );
}

#[test]
fn keep_last_keeps_the_newest_n_completed_in_scope() {
    let history = [
        managed("d5", "2026-12-05T01:00:00Z"),
        with(managed("failed", "2026-12-04T13:00:00Z"), |s| {
            s.state = State::Failed;
            s.location = None;
        }),
        managed("d4", "2026-12-04T01:00:00Z"),
        managed("d3", "2026-12-03T01:00:00Z"),
        managed("d2", "2026-12-02T01:00:00Z"),
        managed("d1", "2026-12-01T01:00:00Z"),
    ];
    let plan = run(&history, &keep_last(3));
    assert_table(
        &plan,
        &[
            "d5: kept: newest completed",
            "failed: delete: failed savepoint",
            "d4: kept: keepLast 3",
            "d3: kept: keepLast 3",
            "d2: delete: not kept by keepLast 3",
            "d1: delete: not kept by keepLast 3",
        ],
    );
    assert_eq!(plan.retained_completed(), 3);
    let deleted: Vec<_> = plan.deletions().map(|d| d.savepoint.id.as_str()).collect();
    assert_eq!(deleted, ["failed", "d2", "d1"]);
}

#[test]
fn keep_within_keeps_younger_ones_and_those_from_the_future() {
    // NOW is 2026-12-05T12:00Z.
    let history = [
        managed("future-2h", "2026-12-05T14:00:00Z"),
        managed("future-1h", "2026-12-05T13:00:00Z"),
        managed("1d", "2026-12-04T12:00:00Z"),
        managed("29d", "2026-11-06T12:00:00Z"),
        managed("exactly-30d", "2026-11-05T12:00:00Z"),
        managed("31d", "2026-11-04T12:00:00Z"),
    ];
    let policy = Retention {
        keep_within: Some(days(30)),
        ..off()
    };
    assert_table(
        &run(&history, &policy),
        &[
            "future-2h: kept: newest completed",
            "future-1h: kept: within 30d",
            "1d: kept: within 30d",
            "29d: kept: within 30d",
            "exactly-30d: delete: not kept by keepWithin 30d",
            "31d: delete: not kept by keepWithin 30d",
        ],
    );
}

/// The newest savepoint is a manual one outside scope managed, so the reasons of the managed ones show
/// which bucket kept them.
fn gfs_history(managed_times: &[(&str, &str)]) -> Vec<Savepoint> {
    let mut history = vec![manual("manual", "2026-12-05T10:00:00Z")];
    history.extend(managed_times.iter().map(|(id, t)| managed(id, t)));
    history
}

const BERLIN: Tz = chrono_tz::Europe::Berlin;

#[test]
fn keep_daily_counts_days_in_the_applications_timezone() {
    // 23:30 UTC on 20 November is already 00:30 on the 21st in Berlin.
    let history = gfs_history(&[
        ("a", "2026-11-20T23:30:00Z"),
        ("b", "2026-11-20T22:30:00Z"),
        ("c", "2026-11-19T12:00:00Z"),
    ]);
    let policy = Retention {
        keep_daily: 2,
        ..off()
    };
    assert_table(
        &run_in(&history, &policy, Tz::UTC),
        &[
            "manual: kept: newest completed",
            "a: kept: minKeep 1, daily 2026-11-20",
            "b: delete: not kept by keepDaily 2",
            "c: kept: daily 2026-11-19",
        ],
    );
    assert_table(
        &run_in(&history, &policy, BERLIN),
        &[
            "manual: kept: newest completed",
            "a: kept: minKeep 1, daily 2026-11-21",
            "b: kept: daily 2026-11-20",
            "c: delete: not kept by keepDaily 2",
        ],
    );
}

#[test]
fn keep_daily_counts_only_days_that_have_a_savepoint() {
    // restic's reading: a gap of a week does not use up the days; the last 3 days *with* a savepoint.
    let history = gfs_history(&[
        ("dec-04-b", "2026-12-04T18:00:00Z"),
        ("dec-04-a", "2026-12-04T06:00:00Z"),
        ("nov-25", "2026-11-25T06:00:00Z"),
        ("nov-10", "2026-11-10T06:00:00Z"),
        ("nov-09", "2026-11-09T06:00:00Z"),
    ]);
    let policy = Retention {
        keep_daily: 3,
        min_keep: 1,
        ..off()
    };
    assert_table(
        &run(&history, &policy),
        &[
            "manual: kept: newest completed",
            "dec-04-b: kept: minKeep 1, daily 2026-12-04",
            "dec-04-a: delete: not kept by keepDaily 3",
            "nov-25: kept: daily 2026-11-25",
            "nov-10: kept: daily 2026-11-10",
            "nov-09: delete: not kept by keepDaily 3",
        ],
    );
}

#[test]
fn keep_weekly_counts_iso_weeks_in_the_applications_timezone() {
    // Sunday 22 November 2026, 23:30 UTC: week 47 in UTC, Monday of week 48 in Berlin.
    let history = gfs_history(&[
        ("sun-late", "2026-11-22T23:30:00Z"),
        ("sun-noon", "2026-11-22T12:00:00Z"),
        ("mon", "2026-11-16T12:00:00Z"),
        ("w46", "2026-11-10T12:00:00Z"),
    ]);
    let policy = Retention {
        keep_weekly: 2,
        ..off()
    };
    assert_table(
        &run_in(&history, &policy, Tz::UTC),
        &[
            "manual: kept: newest completed",
            "sun-late: kept: minKeep 1, weekly 2026-W47",
            "sun-noon: delete: not kept by keepWeekly 2",
            "mon: delete: not kept by keepWeekly 2",
            "w46: kept: weekly 2026-W46",
        ],
    );
    assert_table(
        &run_in(&history, &policy, BERLIN),
        &[
            "manual: kept: newest completed",
            "sun-late: kept: minKeep 1, weekly 2026-W48",
            "sun-noon: kept: weekly 2026-W47",
            "mon: delete: not kept by keepWeekly 2",
            "w46: delete: not kept by keepWeekly 2",
        ],
    );
}

#[test]
fn keep_monthly_counts_months_in_the_applications_timezone() {
    // 30 November 2026, 23:30 UTC is 1 December in Berlin.
    let history = gfs_history(&[
        ("nov-30-late", "2026-11-30T23:30:00Z"),
        ("nov-15", "2026-11-15T12:00:00Z"),
        ("oct-15", "2026-10-15T12:00:00Z"),
    ]);
    let policy = Retention {
        keep_monthly: 2,
        ..off()
    };
    assert_table(
        &run_in(&history, &policy, Tz::UTC),
        &[
            "manual: kept: newest completed",
            "nov-30-late: kept: minKeep 1, monthly 2026-11",
            "nov-15: delete: not kept by keepMonthly 2",
            "oct-15: kept: monthly 2026-10",
        ],
    );
    assert_table(
        &run_in(&history, &policy, BERLIN),
        &[
            "manual: kept: newest completed",
            "nov-30-late: kept: minKeep 1, monthly 2026-12",
            "nov-15: kept: monthly 2026-11",
            "oct-15: delete: not kept by keepMonthly 2",
        ],
    );
}

#[test]
fn keep_yearly_counts_years_in_the_applications_timezone() {
    // 31 December 2025, 23:30 UTC is already 2026 in Berlin.
    let history = gfs_history(&[
        ("new-years-eve", "2025-12-31T23:30:00Z"),
        ("dec-2025", "2025-12-01T12:00:00Z"),
        ("jun-2024", "2024-06-01T12:00:00Z"),
        ("jun-2023", "2023-06-01T12:00:00Z"),
    ]);
    let policy = Retention {
        keep_yearly: 2,
        ..off()
    };
    assert_table(
        &run_in(&history, &policy, Tz::UTC),
        &[
            "manual: kept: newest completed",
            "new-years-eve: kept: minKeep 1, yearly 2025",
            "dec-2025: delete: not kept by keepYearly 2",
            "jun-2024: kept: yearly 2024",
            "jun-2023: delete: not kept by keepYearly 2",
        ],
    );
    assert_table(
        &run_in(&history, &policy, BERLIN),
        &[
            "manual: kept: newest completed",
            "new-years-eve: kept: minKeep 1, yearly 2026",
            "dec-2025: kept: yearly 2025",
            "jun-2024: delete: not kept by keepYearly 2",
            "jun-2023: delete: not kept by keepYearly 2",
        ],
    );
}

#[test]
fn keep_hourly_counts_hours_and_the_rules_form_a_union() {
    let history = [
        managed("h11", "2026-12-05T11:10:00Z"),
        managed("h10-b", "2026-12-05T10:50:00Z"),
        managed("h10-a", "2026-12-05T10:10:00Z"),
        managed("h08", "2026-12-05T08:10:00Z"),
        managed("yesterday", "2026-12-04T08:10:00Z"),
        managed("last-week", "2026-11-28T08:10:00Z"),
    ];
    let policy = Retention {
        keep_last: 3,
        keep_hourly: 2,
        keep_daily: 2,
        ..off()
    };
    assert_table(
        &run(&history, &policy),
        &[
            "h11: kept: newest completed",
            "h10-b: kept: keepLast 3, hourly 2026-12-05T10",
            "h10-a: kept: keepLast 3",
            "h08: delete: not kept by keepLast 3, keepHourly 2, keepDaily 2",
            "yesterday: kept: daily 2026-12-04",
            "last-week: delete: not kept by keepLast 3, keepHourly 2, keepDaily 2",
        ],
    );
}

#[test]
fn min_keep_is_a_floor_under_every_keep_rule() {
    let history = [
        managed("a", "2026-11-05T01:00:00Z"),
        managed("b", "2026-11-04T01:00:00Z"),
        managed("c", "2026-11-03T01:00:00Z"),
        managed("d", "2026-11-02T01:00:00Z"),
    ];
    let policy = Retention {
        keep_within: Some(days(7)),
        min_keep: 3,
        ..off()
    };
    assert_table(
        &run(&history, &policy),
        &[
            "a: kept: newest completed",
            "b: kept: minKeep 3",
            "c: kept: minKeep 3",
            "d: delete: not kept by keepWithin 7d",
        ],
    );
}

/// One savepoint of each kind of ownership, all old, under a newest one savepointd took.
fn scope_history() -> Vec<Savepoint> {
    vec![
        managed("newest", "2026-12-05T01:00:00Z"),
        managed("mine", "2026-11-01T06:00:00Z"),
        with(managed("other-app", "2026-11-01T05:00:00Z"), |s| {
            s.managed = Some(Managed {
                application: OTHER_APP.into(),
                slot: Some(s.created_at),
            })
        }),
        manual("by-hand", "2026-11-01T04:00:00Z"),
        with(manual("suspend", "2026-11-01T03:00:00Z"), |s| {
            s.origin = Origin::Suspend
        }),
        with(manual("copied", "2026-11-01T02:00:00Z"), |s| {
            s.origin = Origin::Copied
        }),
    ]
}

#[test]
fn scope_managed_deletes_only_what_savepointd_took_for_this_application() {
    assert_table(
        &run(&scope_history(), &keep_last(1)),
        &[
            "newest: kept: newest completed",
            "mine: delete: not kept by keepLast 1",
            "other-app: kept: outside scope managed",
            "by-hand: kept: outside scope managed",
            "suspend: kept: outside scope managed",
            "copied: kept: outside scope managed",
        ],
    );
}

#[test]
fn scope_user_requested_deletes_every_user_request() {
    let policy = Retention {
        scope: Scope::UserRequested,
        ..keep_last(1)
    };
    assert_table(
        &run(&scope_history(), &policy),
        &[
            "newest: kept: newest completed",
            "mine: delete: not kept by keepLast 1",
            "other-app: delete: not kept by keepLast 1",
            "by-hand: delete: not kept by keepLast 1",
            "suspend: kept: outside scope userRequested",
            "copied: kept: outside scope userRequested",
        ],
    );
}

#[test]
fn scope_all_deletes_whatever_vvp_allows() {
    let policy = Retention {
        scope: Scope::All,
        ..keep_last(1)
    };
    assert_table(
        &run(&scope_history(), &policy),
        &[
            "newest: kept: newest completed",
            "mine: delete: not kept by keepLast 1",
            "other-app: delete: not kept by keepLast 1",
            "by-hand: delete: not kept by keepLast 1",
            "suspend: delete: not kept by keepLast 1",
            "copied: delete: not kept by keepLast 1",
        ],
    );
}

#[test]
fn failed_savepoints_go_once_something_completed() {
    let history = [
        managed("ok", "2026-12-05T01:00:00Z"),
        with(managed("failed", "2026-12-04T01:00:00Z"), |s| {
            s.state = State::Failed;
            s.location = None;
            s.failure = Some("Checkpoint expired before completing".into());
        }),
        with(manual("failed-by-hand", "2026-12-03T01:00:00Z"), |s| {
            s.state = State::Failed;
            s.location = None;
        }),
    ];
    // Even a keep rule that would keep everything completed does not keep a failure.
    let policy = Retention {
        keep_last: 100,
        ..off()
    };
    assert_table(
        &run(&history, &policy),
        &[
            "ok: kept: newest completed",
            "failed: delete: failed savepoint",
            "failed-by-hand: kept: outside scope managed",
        ],
    );
}

#[test]
fn nothing_is_deleted_before_a_savepoint_has_completed() {
    let history = [
        with(managed("started", "2026-12-05T01:00:00Z"), |s| {
            s.state = State::InProgress
        }),
        with(managed("failed-2", "2026-12-04T01:00:00Z"), |s| {
            s.state = State::Failed
        }),
        with(managed("failed-1", "2026-12-03T01:00:00Z"), |s| {
            s.state = State::Failed
        }),
        with(managed("failed-deletion", "2026-12-02T01:00:00Z"), |s| {
            s.state = State::FailedDeletion
        }),
    ];
    let plan = run(&history, &keep_last(1));
    assert_table(
        &plan,
        &[
            "started: kept: in flight",
            "failed-2: kept: no completed savepoint yet",
            "failed-1: kept: no completed savepoint yet",
            "failed-deletion: kept: no completed savepoint yet",
        ],
    );
    assert_eq!(plan.retained_completed(), 0);
}

#[test]
fn max_deletions_per_run_deletes_the_oldest_and_holds_back_the_newest() {
    let history = [
        managed("d7", "2026-12-05T01:00:00Z"),
        managed("d6", "2026-12-04T01:00:00Z"),
        managed("d5", "2026-12-03T01:00:00Z"),
        managed("d4", "2026-12-02T01:00:00Z"),
        managed("d3", "2026-12-01T01:00:00Z"),
        managed("d2", "2026-11-30T01:00:00Z"),
        managed("d1", "2026-11-29T01:00:00Z"),
    ];
    let policy = Retention {
        max_deletions_per_run: 2,
        ..keep_last(2)
    };
    let plan = run(&history, &policy);
    assert_table(
        &plan,
        &[
            "d7: kept: newest completed",
            "d6: kept: keepLast 2",
            "d5: kept: over maxDeletionsPerRun (2), next run",
            "d4: kept: over maxDeletionsPerRun (2), next run",
            "d3: kept: over maxDeletionsPerRun (2), next run",
            "d2: delete: not kept by keepLast 2",
            "d1: delete: not kept by keepLast 2",
        ],
    );
    assert_eq!(plan.capped, 3);
    assert_eq!(plan.retained_completed(), 5);

    // The next run, once d1 and d2 are gone, takes the next two oldest.
    let plan = run(&history[..5], &policy);
    let deleted: Vec<_> = plan.deletions().map(|d| d.savepoint.id.as_str()).collect();
    assert_eq!((deleted, plan.capped), (vec!["d4", "d3"], 1));

    // Zero deletes nothing and holds everything back.
    let plan = run(
        &history,
        &Retention {
            max_deletions_per_run: 0,
            ..policy
        },
    );
    assert_eq!((plan.deletions().count(), plan.capped), (0, 5));
}

#[test]
fn max_deletions_per_run_never_splits_resources_sharing_a_location() {
    // The two oldest are one physical savepoint. With room for one deletion, deleting either would delete
    // both, so both wait; the next oldest fits and goes.
    let history = [
        managed("new", "2026-12-05T01:00:00Z"),
        managed("single", "2026-11-03T01:00:00Z"),
        managed("pair-b", "2026-11-02T01:00:00Z"),
        with(managed("pair-a", "2026-11-01T01:00:00Z"), |s| {
            s.location = Some("s3://flink/savepoints/savepoint-pair-b".into())
        }),
    ];
    let policy = Retention {
        max_deletions_per_run: 1,
        ..keep_last(1)
    };
    let plan = run(&history, &policy);
    assert_table(
        &plan,
        &[
            "new: kept: newest completed",
            "single: delete: not kept by keepLast 1",
            "pair-b: kept: over maxDeletionsPerRun (1), next run",
            "pair-a: kept: over maxDeletionsPerRun (1), next run",
        ],
    );
    assert_eq!(plan.capped, 2);
    // With room for two, the pair goes first.
    let plan = run(
        &history,
        &Retention {
            max_deletions_per_run: 2,
            ..policy
        },
    );
    let deleted: Vec<_> = plan.deletions().map(|d| d.savepoint.id.as_str()).collect();
    assert_eq!((deleted, plan.capped), (vec!["pair-b", "pair-a"], 1));
}

#[test]
fn decisions_are_newest_first_with_the_id_breaking_ties_whatever_the_input_order() {
    let history = [
        managed("b", "2026-12-01T01:00:00Z"),
        managed("a", "2026-12-01T01:00:00Z"),
        managed("c", "2026-12-02T01:00:00Z"),
    ];
    let mut reversed = history.to_vec();
    reversed.reverse();
    let plan = run(&history, &keep_last(2));
    assert_table(
        &plan,
        &[
            "c: kept: newest completed",
            "b: kept: keepLast 2",
            "a: delete: not kept by keepLast 2",
        ],
    );
    assert_eq!(run(&reversed, &keep_last(2)), plan);
    assert_eq!(
        run(&[], &keep_last(2)),
        Plan {
            decisions: vec![],
            capped: 0
        }
    );
}

// ---------------------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------------------

/// Locations drawn from a small pool, so that resources share them; one spelling differs only by a
/// trailing slash, and the empty string is no location.
const LOCATIONS: [&str; 7] = [
    "s3://flink/savepoints/savepoint-1",
    "s3://flink/savepoints/savepoint-1/",
    "s3://flink/savepoints/savepoint-2",
    "s3://flink/savepoints/savepoint-3",
    "s3://flink/savepoints/savepoint-4",
    "s3://flink/savepoints/savepoint-5",
    "",
];

const TIMEZONES: [Tz; 5] = [
    Tz::UTC,
    chrono_tz::Europe::Berlin,
    chrono_tz::America::New_York,
    chrono_tz::Asia::Kolkata,
    chrono_tz::Pacific::Chatham,
];

fn base_now() -> DateTime<Utc> {
    at("2026-11-20T12:00:00Z")
}

// Savepoints are drawn as plain integers and looked up in weighted tables: the same distribution as
// `prop_oneof!`, at a fraction of the cost per case, and index 0 (what shrinking goes to) is the plainest
// value.

const STATES: [State; 14] = [
    State::Completed,
    State::Completed,
    State::Completed,
    State::Completed,
    State::Completed,
    State::Failed,
    State::Failed,
    State::FailedDeletion,
    State::InProgress,
    State::Unknown,
    State::PendingDeletion,
    State::Deleting,
    State::TriggerPending,
    State::Abandoned,
];

const ORIGINS: [Origin; 10] = [
    Origin::UserRequest,
    Origin::UserRequest,
    Origin::UserRequest,
    Origin::UserRequest,
    Origin::UserRequest,
    Origin::Suspend,
    Origin::SuspendAndUpgrade,
    Origin::Copied,
    Origin::RetainedCheckpoint,
    Origin::Unknown,
];

const KINDS: [SavepointType; 9] = [
    SavepointType::Full,
    SavepointType::Full,
    SavepointType::Full,
    SavepointType::Full,
    SavepointType::Full,
    SavepointType::Full,
    SavepointType::Incremental,
    SavepointType::Unknown,
    SavepointType::Unknown,
];

/// This application's (3 in 6), another application's (1 in 6), nobody's (2 in 6).
const OWNERS: [Option<&str>; 6] = [Some(APP), Some(APP), Some(APP), Some(OTHER_APP), None, None];

/// Years a savepoint is moved back (3 in 6 not at all), so that histories span several years for
/// `keepYearly`.
const YEARS_BACK: [u32; 6] = [0, 0, 0, 1, 2, 3];

/// Minutes from [`base_now`]: 80 days back to 10 days ahead (clock skew). `grain` 0 keeps the minute,
/// 1 rounds to the hour and 2 to the day, so that savepoints share a timestamp and the id breaks the tie.
fn offset_minutes(raw: u32, grain: u8) -> i64 {
    let minutes = i64::from(raw) - 80 * 1440;
    match grain {
        1 => minutes - minutes.rem_euclid(60),
        2 => minutes - minutes.rem_euclid(1440),
        _ => minutes,
    }
}

type Spec = (usize, usize, usize, usize, usize, u32, u8, usize);

fn arb_savepoint_spec() -> impl Strategy<Value = Spec> {
    (
        0..STATES.len(),
        0..ORIGINS.len(),
        0..KINDS.len(),
        0..OWNERS.len(),
        // One in five without a location.
        0..LOCATIONS.len() * 5 / 4,
        0..90 * 1440u32,
        0..5u8,
        0..YEARS_BACK.len(),
    )
}

/// A history around [`base_now`], some of it moved back by years; ids are unique, as on every platform.
fn arb_history() -> impl Strategy<Value = Vec<Savepoint>> {
    prop::collection::vec(arb_savepoint_spec(), 0..40).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(
                |(i, (state, origin, kind, owner, location, minutes, grain, years))| {
                    let created_at = (base_now()
                        + TimeDelta::minutes(offset_minutes(minutes, grain)))
                    .checked_sub_months(Months::new(12 * YEARS_BACK[years]))
                    .expect("a date between 2023 and 2026");
                    let managed = OWNERS[owner].map(|application| Managed {
                        application: application.into(),
                        slot: Some(created_at),
                    });
                    Savepoint {
                        id: format!("sp-{i:02}"),
                        created_at,
                        state: STATES[state],
                        origin: ORIGINS[origin],
                        kind: KINDS[kind],
                        location: LOCATIONS.get(location).map(|l| l.to_string()),
                        failure: None,
                        managed,
                        protected: vvp::refusal(ORIGINS[origin], KINDS[kind]),
                    }
                },
            )
            .collect()
    })
}

/// The same savepoints in another order (Fisher-Yates driven by `seed`).
fn shuffled(history: &[Savepoint], seed: u64) -> Vec<Savepoint> {
    let mut out = history.to_vec();
    let mut state = seed | 1;
    for i in (1..out.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.swap(i, (state >> 33) as usize % (i + 1));
    }
    out
}

fn arb_count(max: u32) -> impl Strategy<Value = u32> {
    prop_oneof![2 => Just(0), 1 => 1..=max]
}

fn arb_policy() -> impl Strategy<Value = Retention> {
    (
        arb_count(6),
        prop_oneof![
            2 => Just(None),
            1 => (1..40 * 24 * 60u64).prop_map(|m| Some(Duration::from_secs(m * 60))),
        ],
        (
            arb_count(5),
            arb_count(7),
            arb_count(4),
            arb_count(3),
            arb_count(3),
        ),
        // minKeep 0 is rejected by the config, but the planner must keep the newest completed without it.
        0..=5u32,
        prop_oneof![
            Just(Scope::Managed),
            Just(Scope::UserRequested),
            Just(Scope::All)
        ],
        prop_oneof![3 => 0..6u32, 1 => Just(20u32)],
    )
        .prop_map(
            |(
                keep_last,
                keep_within,
                (hourly, daily, weekly, monthly, yearly),
                min_keep,
                scope,
                max,
            )| {
                Retention {
                    keep_last,
                    keep_within,
                    keep_hourly: hourly,
                    keep_daily: daily,
                    keep_weekly: weekly,
                    keep_monthly: monthly,
                    keep_yearly: yearly,
                    min_keep,
                    scope,
                    max_deletions_per_run: max,
                }
            },
        )
}

#[derive(Debug, Clone)]
struct Case {
    history: Vec<Savepoint>,
    shuffled: Vec<Savepoint>,
    policy: Retention,
    tz: Tz,
    now: DateTime<Utc>,
}

impl Case {
    fn plan(&self) -> Plan {
        plan(&self.history, &self.policy, APP, self.tz, self.now)
    }

    fn in_scope(&self, sp: &Savepoint) -> bool {
        match self.policy.scope {
            Scope::Managed => sp.managed.as_ref().is_some_and(|m| m.application == APP),
            Scope::UserRequested => sp.origin == Origin::UserRequest,
            Scope::All => true,
        }
    }

    /// COMPLETED savepoints in scope, newest first.
    fn completed_in_scope(&self) -> Vec<&Savepoint> {
        let mut c: Vec<_> = self
            .history
            .iter()
            .filter(|sp| sp.state == State::Completed && self.in_scope(sp))
            .collect();
        c.sort_by_key(|sp| std::cmp::Reverse((sp.created_at, sp.id.clone())));
        c
    }

    fn newest_completed(&self) -> Option<&Savepoint> {
        self.history
            .iter()
            .filter(|sp| sp.state == State::Completed)
            .max_by_key(|sp| (sp.created_at, sp.id.clone()))
    }

    /// What the rules delete before the cap, worked out independently of the planner: protected savepoints,
    /// keep rules as sets, then the closure over shared locations.
    fn expected_deletions(&self) -> BTreeSet<String> {
        let p = &self.policy;
        let Some(newest) = self.newest_completed() else {
            return BTreeSet::new();
        };
        if !p.is_enabled() {
            return BTreeSet::new();
        }
        let completed = self.completed_in_scope();
        let mut selected: BTreeSet<&str> = BTreeSet::new();
        let newest_n = |n: u32| completed.iter().take(n as usize).map(|sp| sp.id.as_str());
        selected.extend(newest_n(p.min_keep));
        selected.extend(newest_n(p.keep_last));
        if let Some(within) = p.keep_within {
            let cutoff = self.now - TimeDelta::from_std(within).unwrap();
            selected.extend(
                completed
                    .iter()
                    .filter(|sp| sp.created_at > cutoff)
                    .map(|sp| sp.id.as_str()),
            );
        }
        let periods: [(u32, PeriodOf); 5] = [
            (p.keep_hourly, |d, h| (d.year(), d.month(), d.day(), h)),
            (p.keep_daily, |d, _| (d.year(), d.month(), d.day(), 0)),
            (p.keep_weekly, |d, _| {
                (d.iso_week().year(), d.iso_week().week(), 0, 0)
            }),
            (p.keep_monthly, |d, _| (d.year(), d.month(), 0, 0)),
            (p.keep_yearly, |d, _| (d.year(), 0, 0, 0)),
        ];
        for (n, key) in periods {
            let mut newest_of: BTreeMap<Key, &Savepoint> = BTreeMap::new();
            for sp in &completed {
                let local = sp.created_at.with_timezone(&self.tz).naive_local();
                newest_of
                    .entry(key(local.date(), local.hour()))
                    .or_insert(sp);
            }
            selected.extend(
                newest_of
                    .values()
                    .rev()
                    .take(n as usize)
                    .map(|sp| sp.id.as_str()),
            );
        }

        let deletable = |sp: &Savepoint| {
            sp.state.is_deletable()
                && sp.kind != SavepointType::Incremental
                && sp.origin != Origin::RetainedCheckpoint
                && (sp.kind != SavepointType::Unknown
                    || matches!(sp.origin, Origin::UserRequest | Origin::Suspend))
                && self.in_scope(sp)
                && sp.id != newest.id
                && !(sp.state == State::Completed && selected.contains(sp.id.as_str()))
        };
        let mut deleted: Vec<&Savepoint> = self.history.iter().filter(|sp| deletable(sp)).collect();
        loop {
            let kept_locations: BTreeSet<&str> = self
                .history
                .iter()
                .filter(|sp| !deleted.iter().any(|d| d.id == sp.id))
                .filter_map(|sp| norm(sp))
                .collect();
            let before = deleted.len();
            deleted.retain(|sp| norm(sp).is_none_or(|l| !kept_locations.contains(l)));
            if deleted.len() == before {
                break;
            }
        }
        deleted.into_iter().map(|sp| sp.id.clone()).collect()
    }
}

/// A period as a tuple that sorts in time order: (year, month, day, hour), (ISO year, week, 0, 0)…
type Key = (i32, u32, u32, u32);

/// The period of a local date and hour.
type PeriodOf = fn(NaiveDate, u32) -> Key;

fn norm(sp: &Savepoint) -> Option<&str> {
    sp.location
        .as_deref()
        .map(|l| l.trim_end_matches('/'))
        .filter(|l| !l.is_empty())
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        arb_history(),
        any::<u64>(),
        arb_policy(),
        0..TIMEZONES.len(),
        // `now` moves over three days, so that it falls at every hour of the day in every timezone.
        0..3 * 86_400i64,
    )
        .prop_map(|(history, seed, policy, tz, secs)| Case {
            shuffled: shuffled(&history, seed),
            history,
            policy,
            tz: TIMEZONES[tz],
            now: base_now() + TimeDelta::seconds(secs),
        })
}

fn deleted_ids(plan: &Plan) -> BTreeSet<String> {
    plan.deletions().map(|d| d.savepoint.id.clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn prop_only_terminal_savepoints_are_deleted(case in arb_case()) {
        for d in case.plan().deletions() {
            prop_assert!(
                matches!(
                    d.savepoint.state,
                    State::Completed | State::Failed | State::Abandoned | State::FailedDeletion
                ),
                "{} deleted in state {}", d.savepoint.id, d.savepoint.state
            );
        }
    }

    #[test]
    fn prop_nothing_vvp_refuses_is_deleted(case in arb_case()) {
        for d in case.plan().deletions() {
            let sp = &d.savepoint;
            prop_assert_ne!(sp.kind, SavepointType::Incremental, "{}", sp.id);
            prop_assert_ne!(sp.origin, Origin::RetainedCheckpoint, "{}", sp.id);
            if sp.kind == SavepointType::Unknown {
                prop_assert!(
                    matches!(sp.origin, Origin::UserRequest | Origin::Suspend),
                    "{}: type UNKNOWN with origin {:?} deleted", sp.id, sp.origin
                );
            }
        }
    }

    #[test]
    fn prop_nothing_outside_scope_is_deleted(case in arb_case()) {
        for d in case.plan().deletions() {
            let sp = &d.savepoint;
            prop_assert!(case.in_scope(sp), "{} outside scope {:?}", sp.id, case.policy.scope);
        }
    }

    #[test]
    fn prop_the_newest_completed_savepoint_is_kept(case in arb_case()) {
        let plan = case.plan();
        if let Some(newest) = case.newest_completed() {
            let d = plan.decisions.iter().find(|d| d.savepoint.id == newest.id).unwrap();
            prop_assert_eq!(d.action, Action::Keep);
            let first_completed = plan
                .decisions
                .iter()
                .find(|d| d.savepoint.state == State::Completed)
                .map(|d| &d.savepoint.id);
            prop_assert_eq!(first_completed, Some(&newest.id));
        }
    }

    #[test]
    fn prop_the_newest_min_keep_completed_in_scope_are_kept(case in arb_case()) {
        let deleted = deleted_ids(&case.plan());
        for sp in case.completed_in_scope().iter().take(case.policy.min_keep as usize) {
            prop_assert!(
                !deleted.contains(&sp.id),
                "{} is among the newest {}", sp.id, case.policy.min_keep
            );
        }
    }

    #[test]
    fn prop_nothing_is_deleted_until_a_savepoint_has_completed(case in arb_case()) {
        let plan = case.plan();
        if case.newest_completed().is_none() {
            prop_assert_eq!(plan.deletions().count(), 0);
            prop_assert_eq!(plan.capped, 0);
        }
    }

    #[test]
    fn prop_retention_off_deletes_nothing(case in arb_case()) {
        let policy = Retention {
            keep_last: 0,
            keep_within: None,
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_yearly: 0,
            ..case.policy.clone()
        };
        let plan = plan(&case.history, &policy, APP, case.tz, case.now);
        prop_assert_eq!(plan.capped, 0);
        for d in &plan.decisions {
            prop_assert_eq!(d.action, Action::Keep);
            prop_assert_eq!(&d.reason, "kept: retention off");
        }
    }

    #[test]
    fn prop_no_deletion_shares_a_location_with_a_kept_savepoint(case in arb_case()) {
        let plan = case.plan();
        let kept: BTreeMap<&str, &str> = plan
            .decisions
            .iter()
            .filter(|d| d.action == Action::Keep)
            .filter_map(|d| norm(&d.savepoint).map(|l| (l, d.savepoint.id.as_str())))
            .collect();
        for d in plan.deletions() {
            if let Some(l) = norm(&d.savepoint) {
                prop_assert!(
                    !kept.contains_key(l),
                    "{} deleted, {} kept at {}", d.savepoint.id, kept[l], l
                );
            }
        }
    }

    #[test]
    fn prop_max_deletions_per_run_caps_and_the_oldest_go_first(case in arb_case()) {
        let plan = case.plan();
        let max = case.policy.max_deletions_per_run as usize;
        let deleted = deleted_ids(&plan);
        let expected = case.expected_deletions();
        prop_assert!(deleted.len() <= max, "{} deletions over {}", deleted.len(), max);
        prop_assert!(deleted.is_subset(&expected));
        prop_assert_eq!(deleted.len() + plan.capped, expected.len());
        let held: Vec<&Savepoint> = plan
            .decisions
            .iter()
            .filter(|d| d.reason == format!("kept: over maxDeletionsPerRun ({max}), next run"))
            .map(|d| &d.savepoint)
            .collect();
        prop_assert_eq!(held.len(), plan.capped);
        // Oldest first, by groups of resources sharing a location (a group is as old as its oldest member):
        // a held-back group older than a deleted one can only be a group of several that did not fit into
        // what was left.
        let mut candidates: Vec<&Savepoint> =
            case.history.iter().filter(|sp| expected.contains(&sp.id)).collect();
        let group = |sp: &Savepoint| -> Vec<&Savepoint> {
            match norm(sp) {
                Some(l) => candidates.iter().copied().filter(|c| norm(c) == Some(l)).collect(),
                None => vec![candidates.iter().copied().find(|c| c.id == sp.id).unwrap()],
            }
        };
        let group_age = |sp: &Savepoint| {
            group(sp).iter().map(|c| (c.created_at, c.id.clone())).min().unwrap()
        };
        for h in &held {
            let newer_deleted = plan.deletions().find(|d| group_age(&d.savepoint) > group_age(h));
            if let Some(d) = newer_deleted {
                prop_assert!(
                    group(h).len() > 1,
                    "{} held back, newer {} deleted", h.id, d.savepoint.id
                );
            }
        }
        // Without shared locations among them, the deletions are exactly the oldest `max`.
        if candidates.iter().all(|sp| group(sp).len() == 1) {
            candidates.sort_by_key(|sp| (sp.created_at, sp.id.clone()));
            let oldest: BTreeSet<String> =
                candidates.iter().take(max).map(|sp| sp.id.clone()).collect();
            prop_assert_eq!(deleted, oldest);
        }
    }

    #[test]
    fn prop_the_rules_delete_exactly_what_no_rule_keeps(case in arb_case()) {
        let plan = case.plan();
        let expected = case.expected_deletions();
        if expected.len() <= case.policy.max_deletions_per_run as usize {
            prop_assert_eq!(plan.capped, 0);
            prop_assert_eq!(deleted_ids(&plan), expected);
        }
    }

    #[test]
    fn prop_one_decision_per_savepoint_newest_first_with_a_reason(case in arb_case()) {
        let plan = case.plan();
        prop_assert_eq!(plan.decisions.len(), case.history.len());
        let ids: BTreeSet<_> = plan.decisions.iter().map(|d| &d.savepoint.id).collect();
        prop_assert_eq!(ids.len(), case.history.len());
        for pair in plan.decisions.windows(2) {
            let (a, b) = (&pair[0].savepoint, &pair[1].savepoint);
            prop_assert!(
                (a.created_at, &a.id) > (b.created_at, &b.id),
                "{} before {}", a.id, b.id
            );
        }
        for d in &plan.decisions {
            let original = case.history.iter().find(|sp| sp.id == d.savepoint.id).unwrap();
            prop_assert_eq!(&d.savepoint, original);
            match d.action {
                Action::Keep => prop_assert!(d.reason.starts_with("kept: "), "{}", d.reason),
                Action::Delete => {
                    let expected = match d.savepoint.state {
                        State::Completed => "delete: not kept by ",
                        State::Failed => "delete: failed savepoint",
                        State::Abandoned => "delete: abandoned savepoint",
                        _ => "delete: earlier deletion failed",
                    };
                    prop_assert!(d.reason.starts_with(expected), "{}", d.reason);
                }
            }
        }
        let completed_kept = plan
            .decisions
            .iter()
            .filter(|d| d.action == Action::Keep && d.savepoint.state == State::Completed)
            .count();
        prop_assert_eq!(plan.retained_completed(), completed_kept);
    }

    #[test]
    fn prop_the_plan_is_deterministic_and_independent_of_input_order(case in arb_case()) {
        let first = case.plan();
        prop_assert_eq!(&case.plan(), &first);
        let shuffled = plan(&case.shuffled, &case.policy, APP, case.tz, case.now);
        prop_assert_eq!(&shuffled, &first);
    }
}
