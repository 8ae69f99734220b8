//! One run of one application for one slot: resolve, guard, trigger, wait, with retries.
//!
//! The platform's savepoint records are the only state. Every step starts by listing the target's
//! savepoints and asking [`next_step`] what they say: the slot's savepoint completed (nothing to do), in
//! flight (adopt and follow it), or absent (trigger). A slot's identity is the platform's (DESIGN.md §1),
//! so a restarted daemon, a second `once`, or a trigger whose answer was lost meets the first savepoint
//! instead of making another. A trigger that failed in a way the platform may still have carried out (a
//! lost or late answer, a 5xx) is never sent again before the records were read once more.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::model::{Savepoint, State, Target};
use crate::platform::{self, TriggerRequest};
use crate::resolve;
use crate::runtime::App;
use crate::schedule::{self, Opening};

/// Why a slot triggered nothing. `category` is the `runs_skipped_total{reason}` label.
#[derive(Debug)]
pub enum Skip {
    Paused,
    /// Another savepoint of the application is still in flight (and younger than the timeout).
    InProgress {
        id: String,
    },
    Unresolved(resolve::Error),
    /// `once` found no slot of the schedule within `startingDeadline`: nothing is due.
    NotDue {
        latest: Option<DateTime<Utc>>,
        next: Option<DateTime<Utc>>,
    },
    /// The slot falls inside a blackout window: skipped as the operator asked, not queued for later.
    Blackout {
        slot: DateTime<Utc>,
        /// The window as configured (`0 8 * * 1-5 for 10h`).
        window: String,
        opening: Opening,
    },
}

impl Skip {
    /// Every value [`Skip::category`] takes, so each series exists at 0 from the start.
    pub const CATEGORIES: [&'static str; 6] = [
        "paused",
        "in_progress",
        "not_running",
        "unresolved",
        "not_due",
        "blackout",
    ];

    /// The skip of `slot` if a blackout window holds it.
    pub fn blackout(app: &crate::config::Application, slot: DateTime<Utc>) -> Option<Skip> {
        schedule::blackout(&app.blackout_windows, slot, app.timezone).map(|(window, opening)| {
            Skip::Blackout {
                slot,
                window: window.to_string(),
                opening,
            }
        })
    }

    pub fn category(&self) -> &'static str {
        match self {
            Skip::Paused => "paused",
            Skip::InProgress { .. } => "in_progress",
            Skip::Unresolved(
                resolve::Error::Unresolved { .. } | resolve::Error::NotReady { .. },
            ) => "not_running",
            Skip::Unresolved(_) => "unresolved",
            Skip::NotDue { .. } => "not_due",
            Skip::Blackout { .. } => "blackout",
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let time = |t: &Option<DateTime<Utc>>| t.map_or_else(|| "none".into(), |t| t.to_rfc3339());
        match self {
            Skip::Paused => f.write_str("the application is paused"),
            Skip::InProgress { id } => write!(f, "savepoint {id} is still in flight"),
            Skip::Unresolved(e) => write!(f, "{e}"),
            Skip::NotDue { latest, next } => write!(
                f,
                "no slot within startingDeadline (latest {}, next {})",
                time(latest),
                time(next)
            ),
            Skip::Blackout {
                slot,
                window,
                opening,
            } => write!(
                f,
                "slot {} is inside blackout window {window} (open {} to {})",
                slot.to_rfc3339(),
                opening.start.to_rfc3339(),
                opening.end.to_rfc3339()
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("savepoint {id} failed: {message}")]
    Failed { id: String, message: String },
    /// Given up by the platform because the job stopped under it (CMF, the Flink Kubernetes Operator).
    #[error("savepoint {id} was ABANDONED: the job stopped under it ({message})")]
    Abandoned { id: String, message: String },
    #[error("savepoint {id} did not finish within {timeout:?}; it is left to the platform")]
    Timeout { id: String, timeout: Duration },
    #[error("savepoint {id} disappeared while it was followed")]
    Vanished { id: String },
    #[error(transparent)]
    Platform(#[from] platform::Error),
    #[error("shut down (or the Lease was lost) before the savepoint was triggered")]
    Shutdown,
}

impl Failure {
    /// Every reason `savepoint_failure_total` is counted under: [`Failure::category`]'s values and
    /// `stuck` (a savepoint in flight past the timeout), so each series exists at 0 from the start.
    pub const CATEGORIES: [&'static str; 8] = [
        "failed",
        "abandoned",
        "timeout",
        "vanished",
        "rejected",
        "platform_error",
        "shutdown",
        "stuck",
    ];

    /// A static category for the `savepoint_failure_total{reason}` label.
    pub fn category(&self) -> &'static str {
        match self {
            Failure::Failed { .. } => "failed",
            Failure::Abandoned { .. } => "abandoned",
            Failure::Timeout { .. } => "timeout",
            Failure::Vanished { .. } => "vanished",
            Failure::Platform(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
                "rejected"
            }
            Failure::Platform(_) => "platform_error",
            Failure::Shutdown => "shutdown",
        }
    }

    /// Whether another attempt may help: a savepoint that failed or vanished, or a request that never
    /// reached the platform. Not a rejection (4xx), not a timeout (that savepoint is still in flight),
    /// and not an abandoned savepoint: its job stopped, and the next slot finds out whether it runs again.
    fn is_retryable(&self) -> bool {
        match self {
            Failure::Failed { .. } | Failure::Vanished { .. } => true,
            // A 409 to a trigger whose name is taken by something other than the slot's savepoint:
            // the next attempt has a name of its own.
            Failure::Platform(e) => e.status().is_none_or(|s| s >= 500 || s == 409),
            Failure::Timeout { .. } | Failure::Shutdown | Failure::Abandoned { .. } => false,
        }
    }
}

#[derive(Debug)]
pub enum Outcome {
    /// The slot's savepoint completed: triggered by this run, or adopted in flight (a savepoint of an
    /// earlier process, or this run's own whose trigger answer was lost).
    Completed {
        savepoint: Savepoint,
        adopted: bool,
    },
    /// The slot already had a completed savepoint; nothing was triggered.
    AlreadyDone(Savepoint),
    Skipped(Skip),
    Failed(Failure),
}

impl Outcome {
    /// Whether the slot has what it should: its savepoint, or nothing was asked of it (paused, not due,
    /// inside a blackout window). A run skipped because another savepoint is in flight left the slot
    /// without one, and says so.
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            Outcome::Completed { .. }
                | Outcome::AlreadyDone(_)
                | Outcome::Skipped(Skip::Paused | Skip::NotDue { .. } | Skip::Blackout { .. })
        )
    }
}

/// What the platform's records say to do next for one slot. Pure, so that the attempt arithmetic and
/// adoption are tested without a platform.
#[derive(Debug, PartialEq)]
pub enum Step<'a> {
    /// The slot has its completed savepoint.
    Done(&'a Savepoint),
    /// The slot's savepoint is in flight: follow it.
    Follow(&'a Savepoint),
    /// The slot's savepoint has been in flight for longer than the timeout.
    Stuck(&'a Savepoint),
    /// Another savepoint of the application is in flight, younger than the timeout.
    Busy(&'a Savepoint),
    /// Every attempt of the slot was spent.
    Exhausted { spent: u32 },
    /// Trigger the slot's attempt number `attempt` (1 for the first). `stale` are in-flight savepoints
    /// older than the timeout: they no longer block, and are reported.
    Trigger {
        attempt: u32,
        stale: Vec<&'a Savepoint>,
    },
}

/// Decides the next step for `slot` of `application` from the target's savepoints.
///
/// `spent_floor` is the number of attempts known to be spent that the records may not show (failures
/// this run saw, a trigger that never took effect); the records' own failed savepoints of the slot count
/// too, so a restart does not grant a fresh set of attempts where the platform keeps them.
pub fn next_step<'a>(
    history: &'a [Savepoint],
    application: &str,
    slot: DateTime<Utc>,
    spent_floor: u32,
    max_attempts: u32,
    timeout: Duration,
    now: DateTime<Utc>,
) -> Step<'a> {
    let too_old = |s: &Savepoint| (now - s.created_at).to_std().is_ok_and(|age| age > timeout);
    let mine: Vec<&Savepoint> = history
        .iter()
        .filter(|s| s.is_managed_slot(application, slot))
        .collect();
    if let Some(done) = mine.iter().find(|s| s.state == State::Completed) {
        return Step::Done(done);
    }
    if let Some(flying) = mine.iter().find(|s| s.state.is_in_flight()) {
        return if too_old(flying) {
            Step::Stuck(flying)
        } else {
            Step::Follow(flying)
        };
    }
    let recorded = mine.iter().filter(|s| s.state.is_failure()).count() as u32;
    let spent = recorded.max(spent_floor);
    if spent >= max_attempts {
        return Step::Exhausted { spent };
    }
    let (stale, blocking): (Vec<&Savepoint>, Vec<&Savepoint>) = history
        .iter()
        .filter(|s| s.state.is_in_flight())
        .partition(|s| too_old(s));
    if let Some(other) = blocking.first() {
        return Step::Busy(other);
    }
    Step::Trigger {
        attempt: spent + 1,
        stale,
    }
}

/// The slot `once` runs: the schedule's latest slot at or before `now`, if it is within the
/// application's `startingDeadline` (so a retried or duplicated CronJob Job, or `once` beside the
/// daemon, meets the slot's savepoint instead of making a second one), and outside the blackout windows
/// (a slot inside one is skipped, as the daemon skips it; `once` does not reach back to an earlier one).
pub fn due_slot(
    app: &crate::config::Application,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Skip> {
    let latest = app.schedule.latest_at_or_before(now, app.timezone);
    match latest {
        Some(slot)
            if (now - slot)
                .to_std()
                .is_ok_and(|late| late <= app.starting_deadline) =>
        {
            Skip::blackout(app, slot).map_or(Ok(slot), Err)
        }
        _ => Err(Skip::NotDue {
            latest,
            next: schedule::next_run(&app.schedule, &app.blackout_windows, now, app.timezone),
        }),
    }
}

/// Counts and logs a skip decided before a run began (a blackout window, nothing due for `once`).
pub fn skip(app: &App, skip: Skip) -> Outcome {
    let slot = match &skip {
        Skip::Blackout { slot, .. } => slot.to_rfc3339(),
        _ => String::new(),
    };
    let span = tracing::info_span!(
        "run",
        application = %app.config.name,
        platform = %app.platform_name,
        slot = %slot,
    );
    let _enter = span.enter();
    report_skip(app, &skip);
    Outcome::Skipped(skip)
}

fn report_skip(app: &App, skip: &Skip) {
    app.metrics.skipped(skip.category());
    match skip {
        Skip::Paused => info!("skipped: application is paused"),
        Skip::InProgress { id } => {
            warn!(savepoint_id = %id, "skipped: another savepoint is still in flight")
        }
        Skip::Unresolved(e) => warn!(error = %e, reason = skip.category(), "skipped"),
        Skip::NotDue { .. } => info!(reason = %skip, "skipped: nothing due"),
        Skip::Blackout {
            window, opening, ..
        } => info!(
            window = %window,
            window_start = %opening.start.to_rfc3339(),
            window_end = %opening.end.to_rfc3339(),
            "skipped: slot inside a blackout window"
        ),
    }
}

/// Runs one slot of one application to its end. Never panics and never returns an error: every outcome
/// is logged and counted here.
/// With `prune`, retention runs after a savepoint completed (when the application has a policy), unless
/// shutdown has begun.
pub async fn run_slot(
    app: &App,
    slot: DateTime<Utc>,
    prune: bool,
    shutdown: &CancellationToken,
) -> Outcome {
    let span = tracing::info_span!(
        "run",
        application = %app.config.name,
        platform = %app.platform_name,
        slot = %slot.to_rfc3339(),
    );
    let outcome = run(app, slot, prune, shutdown)
        .instrument(span.clone())
        .await;
    let _enter = span.enter();
    match &outcome {
        Outcome::Completed { .. } => {}
        Outcome::AlreadyDone(s) => {
            info!(savepoint_id = %s.id, "slot already has its savepoint; nothing triggered")
        }
        Outcome::Skipped(skip) => report_skip(app, skip),
        Outcome::Failed(f) => warn!(error = %f, reason = f.category(), "savepoint run failed"),
    }
    outcome
}

async fn run(app: &App, slot: DateTime<Utc>, prune: bool, shutdown: &CancellationToken) -> Outcome {
    let name = &app.config.name;
    if app.config.paused {
        return Outcome::Skipped(Skip::Paused);
    }
    let target = match app.resolver.resolve(name).await {
        Ok(t) => t,
        Err(e) => {
            app.metrics.resolve_failure(e.category());
            return Outcome::Skipped(Skip::Unresolved(e));
        }
    };
    match attempts(app, &target, slot, shutdown).await {
        Ok(outcome) => {
            if let Outcome::Completed { savepoint, adopted } = &outcome {
                info!(
                    savepoint_id = %savepoint.id,
                    location = savepoint.location.as_deref().unwrap_or(""),
                    adopted,
                    "savepoint completed"
                );
                if prune && app.config.retention.is_enabled() && !shutdown.is_cancelled() {
                    prune_after_success(app, &target, shutdown).await;
                }
            }
            outcome
        }
        Err(outcome) => outcome,
    }
}

/// The attempts at one slot until it has its savepoint, is skipped, or has failed for good. `Err` carries
/// an outcome that is final without a savepoint.
async fn attempts(
    app: &App,
    target: &Target,
    slot: DateTime<Utc>,
    shutdown: &CancellationToken,
) -> Result<Outcome, Outcome> {
    let config = &app.config;
    let retry = config.retry;
    // Failed savepoints of the slot the records showed before this run: with `spent`, the attempts
    // that are gone even where the platform does not record a failure.
    let mut recorded_before = None;
    let mut spent = 0;
    let mut triggered = false;
    // A trigger that may have reached the platform, and the error it ended with.
    let mut unsure: Option<Failure> = None;
    let mut last_failure = None;
    loop {
        // Held from the look at the platform's records to the savepoint's end, so that at most
        // maxConcurrent runs of the platform are past their guard, and a run that has a permit is not
        // queued behind the lists of runs that wait for one.
        let permit = app.permit().await;
        let history = match app.platform.list(target).await {
            Ok(h) => h,
            Err(e) => {
                let f = Failure::from(e);
                app.metrics.failure(f.category());
                return Err(Outcome::Failed(f));
            }
        };
        let recorded_failures = || {
            history
                .iter()
                .filter(|s| s.is_managed_slot(&config.name, slot) && s.state.is_failure())
                .count() as u32
        };
        let before = *recorded_before.get_or_insert_with(recorded_failures);
        let step = next_step(
            &history,
            &config.name,
            slot,
            before + spent,
            retry.max_attempts,
            config.timeout,
            Utc::now(),
        );
        // The error of a trigger whose answer did not arrive: this look at the records settles it.
        let lost = unsure.take();
        let result = match step {
            Step::Done(done) if lost.is_some() => {
                info!(savepoint_id = %done.id, "the lost trigger made the slot's savepoint; it completed");
                Ok(adopted_completion(app, done.clone()))
            }
            Step::Done(done) => {
                app.metrics.last_success(done.created_at);
                return Ok(Outcome::AlreadyDone(done.clone()));
            }
            Step::Follow(flying) => {
                if lost.is_some() {
                    info!(savepoint_id = %flying.id, "the lost trigger made the slot's savepoint; following it");
                } else {
                    info!(savepoint_id = %flying.id, "adopting the slot's savepoint in flight");
                }
                follow_held(app, target, flying.clone(), None).await
            }
            Step::Stuck(stuck) => Err(Failure::Timeout {
                id: stuck.id.clone(),
                timeout: config.timeout,
            }),
            Step::Busy(other) => {
                return Err(Outcome::Skipped(Skip::InProgress {
                    id: other.id.clone(),
                }));
            }
            Step::Exhausted { .. } | Step::Trigger { .. } if lost.is_some() => {
                // The trigger whose answer was lost did not reach the platform after all. That was an
                // attempt; retry after the backoff, with a fresh look at the records.
                let failure = lost.expect("checked by the guard");
                drop(permit);
                spent += 1;
                match wait_to_retry(app, failure, spent, shutdown).await {
                    Ok(failure) => {
                        last_failure = Some(failure);
                        continue;
                    }
                    Err(outcome) => return Err(outcome),
                }
            }
            Step::Exhausted { spent } => {
                return Err(Outcome::Failed(last_failure.unwrap_or(Failure::Failed {
                    id: String::new(),
                    message: format!("{spent} attempts for this slot failed already"),
                })));
            }
            Step::Trigger { attempt, stale } => {
                for s in stale {
                    let age = (Utc::now() - s.created_at).to_std().unwrap_or_default();
                    warn!(savepoint_id = %s.id, state = %s.state, age = %humantime::format_duration(age),
                        "a savepoint has been in flight for longer than the timeout; it no longer blocks this application");
                    app.metrics.stuck();
                }
                // Looked at here, right before the request, so that a replica frozen past its Lease
                // triggers nothing when it wakes, even before its renewal loop noticed.
                if shutdown.is_cancelled() || !app.mandate.holds() {
                    return Err(Outcome::Failed(Failure::Shutdown));
                }
                triggered = true;
                trigger(app, target, slot, attempt).await
            }
        };
        drop(permit);
        let failure = match result {
            Ok(outcome) => return Ok(outcome),
            Err(Failure::Platform(e)) if triggered && e.look_before_resending() => {
                if e.status() == Some(409) {
                    info!(error = %e, "the slot's savepoint exists already; reading the platform's records to adopt it");
                } else {
                    warn!(error = %e, "the trigger's answer did not arrive; reading the platform's records before anything is sent again");
                }
                unsure = Some(Failure::Platform(e));
                triggered = false;
                continue;
            }
            Err(f) => f,
        };
        triggered = false;
        spent += 1;
        match wait_to_retry(app, failure, spent, shutdown).await {
            Ok(failure) => last_failure = Some(failure),
            Err(outcome) => return Err(outcome),
        }
    }
}

/// Counts a failed attempt and waits for the next one: `Ok` with the failure after the backoff, or
/// `Err` with the final outcome when it may not be retried, attempts are spent, or shutdown began.
async fn wait_to_retry(
    app: &App,
    failure: Failure,
    spent: u32,
    shutdown: &CancellationToken,
) -> Result<Failure, Outcome> {
    app.metrics.failure(failure.category());
    let retry = app.config.retry;
    if !failure.is_retryable() || spent >= retry.max_attempts {
        return Err(Outcome::Failed(failure));
    }
    let wait = retry.backoff * 2u32.saturating_pow(spent - 1);
    warn!(error = %failure, attempt = spent, "retrying in {}", humantime::format_duration(wait));
    tokio::select! {
        _ = tokio::time::sleep(wait) => Ok(failure),
        _ = shutdown.cancelled() => Err(Outcome::Failed(failure)),
    }
}

/// The slot's savepoint, found completed after this run's trigger lost its answer.
fn adopted_completion(app: &App, savepoint: Savepoint) -> Outcome {
    let duration = (Utc::now() - savepoint.created_at).to_std().ok();
    app.metrics.success(duration, Utc::now());
    Outcome::Completed {
        savepoint,
        adopted: true,
    }
}

/// Triggers the slot's savepoint and follows it to its end (the caller holds a platform permit).
async fn trigger(
    app: &App,
    target: &Target,
    slot: DateTime<Utc>,
    attempt: u32,
) -> Result<Outcome, Failure> {
    let request = TriggerRequest {
        application: &app.config.name,
        slot,
        attempt,
        format_type: app.config.format_type,
    };
    app.metrics.attempt();
    let started = Instant::now();
    let savepoint = app.platform.trigger(target, &request).await?;
    info!(savepoint_id = %savepoint.id, attempt, "savepoint triggered");
    follow_held(app, target, savepoint, Some(started)).await
}

/// Follows a savepoint found in flight (adopted) under a platform permit.
async fn follow(app: &App, target: &Target, savepoint: Savepoint) -> Result<Outcome, Failure> {
    let _permit = app.permit().await;
    follow_held(app, target, savepoint, None).await
}

/// First poll after this long: small savepoints complete in a few hundred milliseconds.
const FIRST_POLL: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_secs(5);
/// Polls around the expected end are this far apart at least, and at most `NEAR_POLL_MAX`: a fiftieth of
/// the expected duration in between.
const NEAR_POLL_MIN: Duration = Duration::from_millis(50);
const NEAR_POLL_MAX: Duration = Duration::from_secs(1);

/// How long to wait before the next look at a savepoint in flight for `elapsed`, given how long the
/// application's last one took. A savepoint holds its platform permit until a poll sees its end, so the
/// wait decides how long a permit is wasted after a completion; and every poll is a request.
///
/// - Without history: a quarter of the time so far (100 ms to 5 s), so the waste is at most about a
///   quarter of the savepoint's duration.
/// - With history: waits of up to 5 s until 90 % of the expected duration, then polls a fiftieth of it
///   apart (50 ms to 1 s) until twice the expected duration, then back to the quarter rule. A 40 s
///   savepoint that takes as long as the last one is looked at a dozen times, and its end noticed within
///   0.8 s.
pub fn poll_wait(elapsed: Duration, expected: Option<Duration>) -> Duration {
    let backoff = (elapsed / 4).clamp(FIRST_POLL, MAX_POLL);
    let Some(expected) = expected.filter(|e| !e.is_zero()) else {
        return backoff;
    };
    let near = (expected / 50).clamp(NEAR_POLL_MIN, NEAR_POLL_MAX);
    let soon = expected.mul_f64(0.9);
    if elapsed + near < soon {
        (soon - elapsed).clamp(near, MAX_POLL)
    } else if elapsed < expected * 2 {
        near
    } else {
        backoff
    }
}

/// Polls until the savepoint is terminal or its timeout (counted from its creation) is over.
/// `started` is when this process triggered it; `None` for an adopted savepoint.
async fn follow_held(
    app: &App,
    target: &Target,
    mut savepoint: Savepoint,
    started: Option<Instant>,
) -> Result<Outcome, Failure> {
    app.metrics.in_progress(true);
    let _reset = InProgressGuard(app);
    let timeout = app.config.timeout;
    let age = (Utc::now() - savepoint.created_at)
        .to_std()
        .unwrap_or_default();
    let deadline = Instant::now() + timeout.saturating_sub(age);
    // Measured from the trigger, or for an adopted savepoint from its creation.
    let since = started
        .or_else(|| Instant::now().checked_sub(age))
        .unwrap_or_else(Instant::now);
    let expected = *app.last_duration.lock().expect("last duration lock");
    // The id it was triggered or found under; a platform may name the completed savepoint otherwise
    // (Flink: its directory rather than the trigger's request id).
    let followed = savepoint.id.clone();
    loop {
        match savepoint.state {
            State::Completed => {
                let duration = match started {
                    Some(t) => Some(t.elapsed()),
                    None => (Utc::now() - savepoint.created_at).to_std().ok(),
                };
                if let Some(t) = started {
                    *app.last_duration.lock().expect("last duration lock") = Some(t.elapsed());
                }
                if savepoint.id != followed {
                    info!(savepoint_id = %savepoint.id, request_id = %followed,
                        "the completed savepoint's id is its directory's name from here on");
                }
                app.metrics.success(duration, Utc::now());
                return Ok(Outcome::Completed {
                    savepoint,
                    adopted: started.is_none(),
                });
            }
            State::Failed | State::Abandoned => {
                let message = savepoint
                    .failure
                    .clone()
                    .unwrap_or_else(|| format!("{} without a failure message", savepoint.state));
                let id = savepoint.id.clone();
                return Err(if savepoint.state == State::Abandoned {
                    Failure::Abandoned { id, message }
                } else {
                    Failure::Failed { id, message }
                });
            }
            State::PendingDeletion | State::Deleting | State::FailedDeletion => {
                return Err(Failure::Vanished { id: savepoint.id });
            }
            State::TriggerPending | State::InProgress | State::Unknown => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Failure::Timeout {
                id: savepoint.id,
                timeout,
            });
        }
        let wait = poll_wait(now - since, expected);
        tokio::time::sleep(wait.min(deadline - now)).await;
        match app.platform.get(target, &savepoint.id).await {
            Ok(s) => savepoint = s,
            Err(e) if e.status() == Some(404) => {
                return Err(Failure::Vanished { id: savepoint.id });
            }
            // The HTTP layer retried already; keep following until the deadline.
            Err(e) => warn!(savepoint_id = %savepoint.id, error = %e, "poll failed"),
        }
    }
}

/// Whether a run's outcome asks for retention: a savepoint completed, the application has a policy,
/// and shutdown has not begun.
pub fn wants_prune(app: &App, outcome: &Outcome, shutdown: &CancellationToken) -> bool {
    matches!(outcome, Outcome::Completed { .. })
        && app.config.retention.is_enabled()
        && !shutdown.is_cancelled()
}

/// The daemon's retention after a completed savepoint, off the application's loop so that a long prune
/// never delays its next slot. The prune takes platform permits for its list and each deletion, so
/// prunes and savepoints together stay within `maxConcurrent`.
pub async fn prune_in_background(app: &App, shutdown: &CancellationToken) {
    let span =
        tracing::info_span!("prune", application = %app.config.name, platform = %app.platform_name);
    async {
        match app.resolver.resolve(&app.config.name).await {
            Ok(target) => prune_after_success(app, &target, shutdown).await,
            Err(e) => warn!(error = %e, "retention skipped: the application does not resolve now"),
        }
    }
    .instrument(span)
    .await
}

/// Retention after a successful savepoint. Its failures are counted and logged inside; they never make
/// the savepoint run fail.
async fn prune_after_success(app: &App, target: &Target, shutdown: &CancellationToken) {
    match crate::prune::prune(app, target, false, shutdown).await {
        Ok(report) if !report.deleted.is_empty() || !report.failed.is_empty() => info!(
            deleted = report.deleted.len(),
            failed = report.failed.len(),
            "retention applied"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "retention skipped: cannot list savepoints"),
    }
}

struct InProgressGuard<'a>(&'a App);

impl Drop for InProgressGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.in_progress(false);
    }
}

/// At startup: report the newest completed savepoint as the last success (so a restart does not look
/// like staleness), and follow savepoints this application started before the restart that are still
/// in flight (those older than the timeout are left to the platform: they no longer block).
pub async fn recover(app: &App) {
    let span = tracing::info_span!("recover", application = %app.config.name, platform = %app.platform_name);
    async {
        let Ok(target) = app.resolver.resolve(&app.config.name).await else {
            return;
        };
        if let Some(warning) = &target.warning {
            warn!(target_id = %target.id, "{warning}");
        }
        // Under a platform permit, like a run: a thousand applications starting at once would otherwise
        // all hold a request in flight (and its buffers) while they queue for a connection.
        let permit = app.permit().await;
        let listed = app.platform.list(&target).await;
        drop(permit);
        let history = match listed {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "cannot list savepoints to recover");
                return;
            }
        };
        if let Some(newest) = history
            .iter()
            .filter(|s| s.state == State::Completed)
            .map(|s| s.created_at)
            .max()
        {
            app.metrics.last_success(newest);
        }
        // The outcome of the newest savepoint savepointd made that has one, and how many completed
        // savepoints there are: what the last run before the restart would have reported.
        if let Some(last) = history
            .iter()
            .filter(|s| s.is_managed_for(&app.config.name))
            .filter(|s| s.state == State::Completed || s.state.is_failure())
            .max_by_key(|s| (s.created_at, s.id.clone()))
        {
            app.metrics.last_status(last.state == State::Completed);
        }
        app.metrics.retained(
            history
                .iter()
                .filter(|s| s.state == State::Completed)
                .count(),
        );
        let now = Utc::now();
        for s in history.iter().filter(|s| {
            s.state.is_in_flight()
                && s.is_managed_for(&app.config.name)
                && (now - s.created_at)
                    .to_std()
                    .is_ok_and(|age| age <= app.config.timeout)
        }) {
            info!(savepoint_id = %s.id, "adopting a savepoint in flight that an earlier process or leader started");
            match follow(app, &target, s.clone()).await {
                Ok(_) => info!(savepoint_id = %s.id, "adopted savepoint completed"),
                Err(f) => {
                    app.metrics.failure(f.category());
                    warn!(savepoint_id = %s.id, error = %f, "adopted savepoint did not complete");
                }
            }
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod poll_tests {
    use super::*;

    /// The polls of a savepoint that ends after `takes`, and how long after its end the last one saw it.
    fn polls(takes: Duration, expected: Option<Duration>) -> (usize, Duration) {
        let (mut at, mut polls) = (Duration::ZERO, 0);
        while at < takes {
            at += poll_wait(at, expected);
            polls += 1;
        }
        (polls, at - takes)
    }

    #[test]
    fn without_history_the_wait_is_a_quarter_of_the_time_so_far() {
        assert_eq!(poll_wait(Duration::ZERO, None), FIRST_POLL);
        assert_eq!(
            poll_wait(Duration::from_secs(2), None),
            Duration::from_millis(500)
        );
        assert_eq!(poll_wait(Duration::from_secs(600), None), MAX_POLL);
    }

    #[test]
    fn history_puts_the_polls_around_the_expected_end() {
        let expected = Duration::from_secs(40);
        let (count, late) = polls(expected, Some(expected));
        assert!(count <= 13, "{count} polls");
        assert!(late <= Duration::from_millis(800), "noticed {late:?} late");
        let (blind, blind_late) = polls(expected, None);
        assert!(
            blind_late > late,
            "{blind} polls, {blind_late:?} late without history"
        );
        // A fast platform: the end is seen within 50 ms, so the permit goes to the next savepoint.
        let fast = Duration::from_millis(120);
        let (_, late) = polls(fast, Some(fast));
        assert!(late <= NEAR_POLL_MIN, "{late:?}");
        // Much slower than last time: back to backing off rather than polling every 50 ms for ever.
        assert_eq!(
            poll_wait(Duration::from_secs(20), Some(Duration::from_secs(1))),
            MAX_POLL
        );
    }
}

#[cfg(test)]
mod tests {
    //! The attempt arithmetic and adoption, against an in-memory platform on a paused clock: backoffs
    //! are asserted as the virtual time they took, without waiting for them.

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use chrono::TimeDelta;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::config;
    use crate::metrics::Metrics;
    use crate::model::{Managed, Origin, ResolveError, SavepointType};
    use crate::platform::{Deletion, Platform, Result as PlatformResult};
    use crate::resolve::Resolver;

    const APP: &str = "orders";

    /// What the fake does with one trigger.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Reply {
        /// Makes the savepoint; it completes at the first poll.
        Complete,
        /// Makes the savepoint; it fails at the first poll.
        Fail,
        /// Makes the savepoint, then the answer is lost.
        Lost,
        /// A 503 from a proxy; nothing is made.
        Unavailable,
    }

    #[derive(Default)]
    struct Fake {
        savepoints: Mutex<Vec<Savepoint>>,
        answers: Mutex<VecDeque<Reply>>,
        /// The attempt numbers triggered, in order.
        attempts: Mutex<Vec<u32>>,
        /// Per savepoint id: whether it fails when polled.
        failing: Mutex<Vec<String>>,
    }

    impl Fake {
        fn with(answers: &[Reply]) -> Arc<Fake> {
            let fake = Fake::default();
            fake.answers.lock().unwrap().extend(answers);
            Arc::new(fake)
        }

        fn attempts(&self) -> Vec<u32> {
            self.attempts.lock().unwrap().clone()
        }

        fn count(&self) -> usize {
            self.savepoints.lock().unwrap().len()
        }
    }

    fn error(status: Option<u16>) -> platform::Error {
        match status {
            Some(status) => platform::Error::Status {
                platform: "fake".into(),
                operation: "trigger",
                url: "fake".into(),
                status,
                message: "injected".into(),
            },
            None => platform::Error::NoAnswer {
                platform: "fake".into(),
                operation: "trigger",
                url: "fake".into(),
                message: "connection reset".into(),
            },
        }
    }

    #[async_trait]
    impl Platform for Fake {
        fn name(&self) -> &str {
            "fake"
        }

        async fn probe(&self) -> PlatformResult<()> {
            Ok(())
        }

        async fn resolve(&self, application: &str) -> Result<Target, ResolveError> {
            Ok(Target {
                application: application.into(),
                id: "job-1".into(),
                source: "fake".into(),
                warning: None,
            })
        }

        async fn trigger(
            &self,
            _: &Target,
            request: &TriggerRequest<'_>,
        ) -> PlatformResult<Savepoint> {
            self.attempts.lock().unwrap().push(request.attempt);
            let reply = self
                .answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Reply::Complete);
            if reply == Reply::Unavailable {
                return Err(error(Some(503)));
            }
            let id = format!("sp-{}", self.count() + 1);
            let made = savepoint(&id, State::InProgress, Some(request.slot), Utc::now());
            self.savepoints.lock().unwrap().push(made.clone());
            if reply == Reply::Fail {
                self.failing.lock().unwrap().push(id);
            }
            match reply {
                Reply::Lost => Err(error(None)),
                _ => Ok(made),
            }
        }

        async fn get(&self, _: &Target, id: &str) -> PlatformResult<Savepoint> {
            let failing = self.failing.lock().unwrap().contains(&id.to_owned());
            let mut all = self.savepoints.lock().unwrap();
            let s = all.iter_mut().find(|s| s.id == id).expect("known id");
            if s.state == State::InProgress {
                s.state = if failing {
                    State::Failed
                } else {
                    State::Completed
                };
            }
            Ok(s.clone())
        }

        async fn list(&self, _: &Target) -> PlatformResult<Vec<Savepoint>> {
            Ok(self.savepoints.lock().unwrap().clone())
        }

        async fn delete(&self, _: &Target, _: &Savepoint) -> PlatformResult<Deletion> {
            unreachable!("no retention in these tests")
        }
    }

    fn savepoint(
        id: &str,
        state: State,
        slot: Option<DateTime<Utc>>,
        created_at: DateTime<Utc>,
    ) -> Savepoint {
        Savepoint {
            id: id.into(),
            created_at,
            state,
            origin: Origin::UserRequest,
            kind: SavepointType::Full,
            location: None,
            failure: None,
            managed: slot.map(|slot| Managed {
                application: APP.into(),
                slot: Some(slot),
            }),
            protected: None,
        }
    }

    fn app(fake: Arc<Fake>) -> App {
        let config = config::from_yaml(
            "platforms: [{name: fake, kind: vvp, url: 'http://127.0.0.1:9', resolve: {via: api}}]\n\
             applications: [{name: orders, timeout: 10m, retry: {maxAttempts: 3, backoff: 30s}}]\n",
        )
        .unwrap();
        App {
            config: config.applications[0].clone(),
            platform_name: "fake".into(),
            platform: fake.clone(),
            resolver: Resolver::Api(fake),
            permits: Arc::new(Semaphore::new(4)),
            metrics: Metrics::new().app(APP, "fake"),
            mandate: Default::default(),
            last_duration: Default::default(),
        }
    }

    fn slot() -> DateTime<Utc> {
        DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
    }

    const TIMEOUT: Duration = Duration::from_secs(600);

    #[test]
    fn categories_list_every_skip_and_failure_reason() {
        let skips = [
            Skip::Paused,
            Skip::InProgress { id: String::new() },
            Skip::Unresolved(ResolveError::NotReady {
                application: String::new(),
                reason: String::new(),
            }),
            Skip::Unresolved(ResolveError::NotSynced),
            Skip::NotDue {
                latest: None,
                next: None,
            },
            Skip::Blackout {
                slot: slot(),
                window: String::new(),
                opening: Opening {
                    start: slot(),
                    end: slot(),
                },
            },
        ];
        let seen: Vec<&str> = skips.iter().map(Skip::category).collect();
        assert_eq!(seen, Skip::CATEGORIES);
        let failures = [
            Failure::Failed {
                id: String::new(),
                message: String::new(),
            },
            Failure::Abandoned {
                id: String::new(),
                message: String::new(),
            },
            Failure::Timeout {
                id: String::new(),
                timeout: TIMEOUT,
            },
            Failure::Vanished { id: String::new() },
            Failure::Platform(error(Some(409))),
            Failure::Platform(error(None)),
            Failure::Shutdown,
        ];
        let mut seen: Vec<&str> = failures.iter().map(Failure::category).collect();
        seen.push("stuck");
        assert_eq!(seen, Failure::CATEGORIES);
    }

    #[test]
    fn the_records_decide_the_step() {
        let (now, slot) = (Utc::now(), slot());
        let young = now - TimeDelta::minutes(1);
        let old = now - TimeDelta::minutes(11);
        let step = |history: &[Savepoint], floor| {
            format!(
                "{:?}",
                next_step(history, APP, slot, floor, 3, TIMEOUT, now)
            )
        };
        let done = savepoint("done", State::Completed, Some(slot), young);
        let failed = savepoint("failed", State::Failed, Some(slot), young);
        assert!(step(&[failed.clone(), done.clone()], 0).starts_with("Done"));
        let flying = savepoint("flying", State::InProgress, Some(slot), young);
        assert!(step(&[failed.clone(), flying], 0).starts_with("Follow"));
        let stuck = savepoint("stuck", State::InProgress, Some(slot), old);
        assert!(step(&[stuck], 0).starts_with("Stuck"));
        // Another savepoint in flight blocks while it is younger than the timeout.
        let other = savepoint("other", State::InProgress, None, young);
        assert!(step(&[other], 0).starts_with("Busy"));
        let stale = savepoint("stale", State::Unknown, None, old);
        let history = [stale];
        assert_eq!(
            next_step(&history, APP, slot, 0, 3, TIMEOUT, now),
            Step::Trigger {
                attempt: 1,
                stale: vec![&history[0]]
            }
        );
        // Failed savepoints of the slot are spent attempts, from the records or from the run.
        let abandoned = savepoint("abandoned", State::Abandoned, Some(slot), young);
        let two = [failed.clone(), abandoned];
        assert!(step(&two, 0).starts_with("Trigger { attempt: 3"));
        assert!(step(&two, 3).starts_with("Exhausted { spent: 3"));
        assert!(step(std::slice::from_ref(&failed), 2).starts_with("Trigger { attempt: 3"));
        // Another slot's savepoints count for nothing.
        let elsewhere = savepoint("x", State::Failed, Some(slot - TimeDelta::hours(1)), young);
        assert!(step(&[elsewhere], 0).starts_with("Trigger { attempt: 1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_whose_answer_was_lost_is_adopted_at_once_and_never_sent_again() {
        let fake = Fake::with(&[Reply::Lost]);
        let app = app(fake.clone());
        let started = Instant::now();
        let outcome = run_slot(&app, slot(), false, &CancellationToken::new()).await;
        assert!(
            matches!(outcome, Outcome::Completed { adopted: true, .. }),
            "{outcome:?}"
        );
        assert_eq!(fake.attempts(), [1], "one trigger");
        assert_eq!(fake.count(), 1, "one savepoint");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no backoff before the look at the records: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_mandate_nothing_is_triggered_but_the_slot_is_still_adopted() {
        let fake = Fake::with(&[Reply::Complete, Reply::Complete]);
        let follower = app(fake.clone());
        follower.mandate.revoke();
        let outcome = run_slot(&follower, slot(), false, &CancellationToken::new()).await;
        assert!(
            matches!(outcome, Outcome::Failed(Failure::Shutdown)),
            "{outcome:?}"
        );
        assert!(
            fake.attempts().is_empty(),
            "a replica without the Lease triggers nothing"
        );

        // The leader that has it triggers; a replica without it that meets that savepoint adopts it.
        let leader = app(fake.clone());
        let slot = slot();
        let made = run_slot(&leader, slot, false, &CancellationToken::new()).await;
        assert!(matches!(made, Outcome::Completed { .. }), "{made:?}");
        let late = run_slot(&follower, slot, false, &CancellationToken::new()).await;
        assert!(matches!(late, Outcome::AlreadyDone(_)), "{late:?}");
        assert_eq!(fake.count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_that_made_nothing_is_an_attempt_retried_after_the_backoff() {
        let fake = Fake::with(&[Reply::Unavailable, Reply::Complete]);
        let app = app(fake.clone());
        let started = Instant::now();
        let outcome = run_slot(&app, slot(), false, &CancellationToken::new()).await;
        assert!(
            matches!(outcome, Outcome::Completed { adopted: false, .. }),
            "{outcome:?}"
        );
        assert_eq!(fake.attempts(), [1, 2]);
        assert_eq!(fake.count(), 1);
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(30)..Duration::from_secs(35)).contains(&waited),
            "one backoff of 30 s: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_savepoints_are_retried_with_doubling_backoff_until_attempts_are_spent() {
        let fake = Fake::with(&[Reply::Fail, Reply::Fail, Reply::Fail, Reply::Complete]);
        let app = app(fake.clone());
        let slot = slot();
        let started = Instant::now();
        let outcome = run_slot(&app, slot, false, &CancellationToken::new()).await;
        assert!(
            matches!(&outcome, Outcome::Failed(Failure::Failed { id, .. }) if id == "sp-3"),
            "{outcome:?}"
        );
        assert_eq!(fake.attempts(), [1, 2, 3], "maxAttempts 3");
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(90)..Duration::from_secs(100)).contains(&waited),
            "30 s, then 60 s: {waited:?}"
        );
        // A second run for the slot (a restart, a second `once`) finds the attempts spent.
        let again = run_slot(&app, slot, false, &CancellationToken::new()).await;
        assert!(matches!(again, Outcome::Failed(_)), "{again:?}");
        assert_eq!(fake.attempts().len(), 3, "nothing more was triggered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_in_flight_is_followed_and_a_completed_slot_is_left_alone() {
        let fake = Fake::with(&[]);
        let slot = slot();
        fake.savepoints.lock().unwrap().push(savepoint(
            "earlier",
            State::InProgress,
            Some(slot),
            Utc::now(),
        ));
        let app = app(fake.clone());
        let outcome = run_slot(&app, slot, false, &CancellationToken::new()).await;
        assert!(
            matches!(&outcome, Outcome::Completed { adopted: true, savepoint } if savepoint.id == "earlier"),
            "{outcome:?}"
        );
        let outcome = run_slot(&app, slot, false, &CancellationToken::new()).await;
        assert!(matches!(outcome, Outcome::AlreadyDone(_)), "{outcome:?}");
        assert!(fake.attempts().is_empty(), "nothing triggered");
    }
}
