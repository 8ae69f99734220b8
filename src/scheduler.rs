//! The daemon's clock: one loop per application that sleeps until the next slot of its schedule (in its
//! timezone), plus the slot's jitter offset, and runs it. A run happens inside the loop, so one
//! application never has two runs at once; slots that pass while a run is still going are skipped and
//! counted as `in_progress`. Retention after a completed savepoint runs beside the loop (one prune per
//! application at a time, its list and deletions under platform permits), so a slow deletion never
//! holds back the next slot. Slots inside a blackout window are skipped at their time and counted as
//! `blackout`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::runner;
use crate::runtime::App;
use crate::schedule::{self, Opening};

/// Runs every application's loop until `shutdown` is cancelled, then gives the runs in flight `grace` to
/// finish; what is still running after that is abandoned (a savepoint keeps going on the platform, and
/// the next start adopts it).
pub async fn run(apps: Vec<Arc<App>>, shutdown: CancellationToken, grace: Duration) {
    let mut loops = JoinSet::new();
    for app in apps {
        loops.spawn(application_loop(app, shutdown.clone()));
    }
    shutdown.cancelled().await;
    let drained = tokio::time::timeout(grace, async {
        while let Some(joined) = loops.join_next().await {
            if let Err(e) = joined {
                warn!(error = %e, "an application loop ended abnormally");
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            abandoned = loops.len(),
            "grace period over; abandoning the waits still in flight (their savepoints go on and are adopted at the next start)"
        );
        loops.shutdown().await;
    }
}

async fn application_loop(app: Arc<App>, shutdown: CancellationToken) {
    let config = &app.config;
    let (schedule, tz) = (&config.schedule, config.timezone);
    let windows = &config.blackout_windows;
    // When the run of a slot is due: the slot plus its jitter offset.
    let due =
        |slot: DateTime<Utc>| slot + schedule::jitter_offset(&config.name, slot, config.jitter);
    // Runs are boxed: a thousand loops sleep between slots, and each would otherwise carry the largest
    // state of a run (its HTTP futures) inline while it sleeps.
    Box::pin(runner::recover(&app)).await;

    // The blackout window whose first skipped slot was logged at info; its further slots go to debug,
    // so that a window over a seconds schedule does not flood the log.
    let mut logged_window: Option<Opening> = None;
    let mut pruning = Pruning::default();
    // The loop looks for slots after `cursor`.
    let now = Utc::now();
    let mut cursor = now;
    if let Some(previous) = schedule.latest_at_or_before(now, tz)
        && !shutdown.is_cancelled()
    {
        if due(previous) > now {
            // Its jittered start is still ahead: the loop waits for it as for any other slot (slots are
            // whole seconds, so the slot is the first after this).
            cursor = previous - TimeDelta::seconds(1);
        } else if (now - previous).to_std().unwrap_or_default() <= config.starting_deadline {
            // A slot missed by less than startingDeadline (the daemon restarted across it) is still
            // run; the platform's records tell whether it already has its savepoint.
            match runner::Skip::blackout(config, previous) {
                Some(skip) => {
                    if let runner::Skip::Blackout { opening, .. } = &skip {
                        logged_window = Some(*opening);
                    }
                    runner::skip(&app, skip);
                }
                None => {
                    info!(application = %config.name, slot = %previous.to_rfc3339(), "running a slot missed at startup");
                    let outcome =
                        Box::pin(runner::run_slot(&app, previous, false, &shutdown)).await;
                    pruning.after(&app, &outcome, &shutdown);
                }
            }
            cursor = previous;
        }
    }

    loop {
        let now = Utc::now();
        let Some(mut next) = schedule.next_after(cursor, tz) else {
            warn!(application = %config.name, "the schedule has no further slot");
            break;
        };
        // Slots whose start passed while the previous run was still going; those inside a blackout
        // window would not have run anyway and count as such.
        let (mut passed, mut missed) = (0, 0);
        while due(next) < now && passed < 10_000 {
            passed += 1;
            if schedule::blackout(windows, next, tz).is_some() {
                app.metrics.skipped("blackout");
            } else {
                missed += 1;
                app.metrics.skipped("in_progress");
            }
            next = match schedule.next_after(next, tz) {
                Some(n) => n,
                None => return,
            };
        }
        if missed > 0 {
            warn!(application = %config.name, missed, "slots passed while a run was in progress");
        }
        app.metrics.schedule(
            schedule::next_run(schedule, windows, next - TimeDelta::seconds(1), tz),
            schedule::expected_interval(schedule, windows, now, tz),
        );
        let blackout = schedule::blackout(windows, next, tz);
        // A slot inside a window is skipped at its own time; only a run waits for its jitter.
        let wake = if blackout.is_some() { next } else { due(next) };
        let wait = (wake - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        cursor = next;
        if let Some((window, opening)) = blackout {
            if logged_window == Some(opening) {
                app.metrics.skipped("blackout");
                debug!(application = %config.name, slot = %next.to_rfc3339(), "skipped: slot inside a blackout window");
            } else {
                logged_window = Some(opening);
                let window = window.to_string();
                runner::skip(
                    &app,
                    runner::Skip::Blackout {
                        slot: next,
                        window,
                        opening,
                    },
                );
            }
            continue;
        }
        let fired = Utc::now();
        app.metrics.lateness(schedule::lateness(due(next), fired));
        // Many applications share a slot (every `0 1 * * *`). Yielding once lets every loop woken
        // for this slot record its start before any of them does the run's synchronous work, so one
        // application's run never delays another's start.
        tokio::task::yield_now().await;
        let outcome = Box::pin(runner::run_slot(&app, next, false, &shutdown)).await;
        pruning.after(&app, &outcome, &shutdown);
    }
    pruning.finish().await;
}

/// The application's retention, run beside its loop: at most one prune at a time; a savepoint that
/// completes while one runs leaves its retention to the next (the plan is over all savepoints anyway).
#[derive(Default)]
struct Pruning(Option<tokio::task::JoinHandle<()>>);

impl Pruning {
    fn after(&mut self, app: &Arc<App>, outcome: &runner::Outcome, shutdown: &CancellationToken) {
        if !runner::wants_prune(app, outcome, shutdown) {
            return;
        }
        if self.0.as_ref().is_some_and(|h| !h.is_finished()) {
            debug!(application = %app.config.name, "a prune is still running; the next completed savepoint prunes again");
            return;
        }
        let (app, shutdown) = (app.clone(), shutdown.clone());
        self.0 = Some(tokio::spawn(async move {
            runner::prune_in_background(&app, &shutdown).await;
        }));
    }

    /// Waits for a prune still running (it stops between deletions once shutdown began).
    async fn finish(self) {
        if let Some(handle) = self.0
            && let Err(e) = handle.await
        {
            warn!(error = %e, "a prune ended abnormally");
        }
    }
}
