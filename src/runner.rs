//! One run of one application for one slot: resolve, guard, trigger, wait, with retries.
//!
//! The platform's savepoint records are the only state. Each attempt starts by listing the target's
//! savepoints: a savepoint already made for this slot is adopted (in flight) or accepted (completed), so a
//! restarted daemon, a retried trigger whose answer was lost, or a second `once` never makes a second
//! savepoint for one slot; failed savepoints of the slot count as spent attempts.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::platform::{self, Savepoint, State, Target, TriggerRequest};
use crate::resolve;
use crate::runtime::App;

/// Why a slot triggered nothing. `category` is the `runs_skipped_total{reason}` label.
#[derive(Debug)]
pub enum Skip {
    Paused,
    /// Another savepoint of the application is still in flight.
    InProgress {
        id: String,
    },
    Unresolved(resolve::Error),
}

impl Skip {
    pub fn category(&self) -> &'static str {
        match self {
            Skip::Paused => "paused",
            Skip::InProgress { .. } => "in_progress",
            Skip::Unresolved(
                resolve::Error::Unresolved { .. } | resolve::Error::NotReady { .. },
            ) => "not_running",
            Skip::Unresolved(_) => "unresolved",
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Paused => f.write_str("the application is paused"),
            Skip::InProgress { id } => write!(f, "savepoint {id} is still in flight"),
            Skip::Unresolved(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("savepoint {id} failed: {message}")]
    Failed { id: String, message: String },
    #[error("savepoint {id} did not finish within {timeout:?}; it is left to the platform")]
    Timeout { id: String, timeout: Duration },
    #[error("savepoint {id} disappeared while it was followed")]
    Vanished { id: String },
    #[error(transparent)]
    Platform(#[from] platform::Error),
    #[error("shut down before the savepoint was triggered")]
    Shutdown,
}

impl Failure {
    /// A static category for the `savepoint_failure_total{reason}` label.
    pub fn category(&self) -> &'static str {
        match self {
            Failure::Failed { .. } => "failed",
            Failure::Timeout { .. } => "timeout",
            Failure::Vanished { .. } => "vanished",
            Failure::Platform(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
                "rejected"
            }
            Failure::Platform(_) => "platform_error",
            Failure::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug)]
pub enum Outcome {
    /// The slot's savepoint completed: triggered now, or adopted in flight.
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
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            Outcome::Completed { .. }
                | Outcome::AlreadyDone(_)
                | Outcome::Skipped(Skip::Paused | Skip::InProgress { .. })
        )
    }
}

/// Runs one slot of one application to its end. Never panics and never returns an error: every outcome
/// is logged and counted here.
/// With `prune`, retention runs after a savepoint completed (when the application has a policy).
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
        Outcome::Completed { savepoint, adopted } => info!(
            savepoint_id = %savepoint.id,
            location = savepoint.location.as_deref().unwrap_or(""),
            adopted,
            "savepoint completed"
        ),
        Outcome::AlreadyDone(s) => {
            info!(savepoint_id = %s.id, "slot already has its savepoint; nothing triggered")
        }
        Outcome::Skipped(skip) => {
            app.metrics.skipped(skip.category());
            match skip {
                Skip::Paused => info!("skipped: application is paused"),
                Skip::InProgress { id } => {
                    warn!(savepoint_id = %id, "skipped: another savepoint is still in flight")
                }
                Skip::Unresolved(e) => warn!(error = %e, reason = skip.category(), "skipped"),
            }
        }
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
    let retry = app.config.retry;
    // Triggers this process made for the slot. Where the platform records the slot (VVP) its failed
    // savepoints count too, so a restart does not grant a fresh set of attempts.
    let mut triggered = 0;
    let mut last_failure = None;
    loop {
        // Held from the look at the platform's records to the savepoint's end, so that at most
        // maxConcurrent runs of the platform are past their guard, and a run that has a permit is not
        // queued behind the lists of runs that wait for one.
        let permit = app
            .permits
            .acquire()
            .await
            .expect("semaphore is never closed");
        let history = match app.platform.list(&target).await {
            Ok(h) => h,
            Err(e) => {
                let f = Failure::from(e);
                app.metrics.failure(f.category());
                return Outcome::Failed(f);
            }
        };
        let mine: Vec<&Savepoint> = history
            .iter()
            .filter(|s| s.is_managed_slot(name, slot))
            .collect();
        if let Some(done) = mine.iter().find(|s| s.state == State::Completed) {
            app.metrics.last_success(done.created_at);
            return Outcome::AlreadyDone((*done).clone());
        }
        let spent = (mine.iter().filter(|s| !s.state.is_in_flight()).count() as u32).max(triggered);
        let result = if let Some(flying) = mine.iter().find(|s| s.state.is_in_flight()) {
            info!(savepoint_id = %flying.id, "adopting the slot's savepoint in flight");
            follow_held(app, &target, (*flying).clone(), None).await
        } else {
            if spent >= retry.max_attempts {
                return Outcome::Failed(last_failure.unwrap_or(Failure::Failed {
                    id: mine.last().map(|s| s.id.clone()).unwrap_or_default(),
                    message: format!("{spent} attempts for this slot failed already"),
                }));
            }
            if let Some(other) = history.iter().find(|s| s.state.is_in_flight()) {
                return Outcome::Skipped(Skip::InProgress {
                    id: other.id.clone(),
                });
            }
            if shutdown.is_cancelled() {
                return Outcome::Failed(Failure::Shutdown);
            }
            triggered = spent + 1;
            trigger(app, &target, slot, triggered).await
        };
        drop(permit);
        let failure = match result {
            Ok(outcome) => {
                if prune && app.config.retention.is_enabled() {
                    prune_after_success(app, &target).await;
                }
                return outcome;
            }
            Err(f) => f,
        };
        app.metrics.failure(failure.category());
        let retryable = matches!(failure, Failure::Failed { .. } | Failure::Vanished { .. })
            || matches!(&failure, Failure::Platform(e) if e.status().is_none_or(|s| s >= 500));
        let attempts_so_far = spent + 1;
        if !retryable || attempts_so_far >= retry.max_attempts {
            return Outcome::Failed(failure);
        }
        let wait = retry.backoff * 2u32.saturating_pow(attempts_so_far - 1);
        warn!(error = %failure, attempt = attempts_so_far, "retrying in {}", humantime::format_duration(wait));
        last_failure = Some(failure);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Outcome::Failed(last_failure.expect("just set")),
        }
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
    info!(savepoint_id = %savepoint.id, "savepoint triggered");
    follow_held(app, target, savepoint, Some(started)).await
}

/// Follows a savepoint found in flight (adopted) under a platform permit.
async fn follow(
    app: &App,
    target: &Target,
    savepoint: Savepoint,
    started: Option<Instant>,
) -> Result<Outcome, Failure> {
    let _permit = app
        .permits
        .acquire()
        .await
        .expect("semaphore is never closed");
    follow_held(app, target, savepoint, started).await
}

/// First poll after this long: small savepoints complete in a few hundred milliseconds.
const FIRST_POLL: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_secs(5);

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
    let mut interval = FIRST_POLL;
    loop {
        match savepoint.state {
            State::Completed => {
                let duration = match started {
                    Some(t) => Some(t.elapsed()),
                    None => (Utc::now() - savepoint.created_at).to_std().ok(),
                };
                app.metrics.success(duration, Utc::now());
                return Ok(Outcome::Completed {
                    savepoint,
                    adopted: started.is_none(),
                });
            }
            State::Failed => {
                return Err(Failure::Failed {
                    id: savepoint.id.clone(),
                    message: savepoint
                        .failure
                        .clone()
                        .unwrap_or_else(|| "no failure message".into()),
                });
            }
            State::PendingDeletion | State::Deleting | State::FailedDeletion => {
                return Err(Failure::Vanished { id: savepoint.id });
            }
            State::Started | State::Unknown => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Failure::Timeout {
                id: savepoint.id,
                timeout,
            });
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 3 / 2).min(MAX_POLL);
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

/// Retention after a successful savepoint. Its failures are counted and logged inside; they never make
/// the savepoint run fail.
async fn prune_after_success(app: &App, target: &Target) {
    match crate::prune::prune(app, target, false).await {
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
/// in flight.
pub async fn recover(app: &App) {
    let span = tracing::info_span!("recover", application = %app.config.name, platform = %app.platform_name);
    async {
        let Ok(target) = app.resolver.resolve(&app.config.name).await else {
            return;
        };
        // Under a platform permit, like a run: a thousand applications starting at once would otherwise
        // all hold a request in flight (and its buffers) while they queue for a connection.
        let permit = app
            .permits
            .acquire()
            .await
            .expect("semaphore is never closed");
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
        for s in history.iter().filter(|s| {
            s.state.is_in_flight()
                && s.managed
                    .as_ref()
                    .is_some_and(|m| m.application == app.config.name)
        }) {
            info!(savepoint_id = %s.id, "adopting a savepoint started before the restart");
            match follow(app, &target, s.clone(), None).await {
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
