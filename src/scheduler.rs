//! The daemon's clock: one loop per application that sleeps until the next slot of its schedule (in its
//! timezone) and runs it. A run happens inside the loop, so one application never has two runs at once;
//! slots that pass while a run is still going are skipped and counted as `in_progress`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::runner;
use crate::runtime::App;
use crate::schedule;

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
    // Runs are boxed: a thousand loops sleep between slots, and each would otherwise carry the largest
    // state of a run (its HTTP futures) inline while it sleeps.
    Box::pin(runner::recover(&app)).await;

    // A slot missed by less than startingDeadline (the daemon restarted across it) is still run; the
    // platform's records tell whether it already has its savepoint.
    let now = Utc::now();
    let mut last: Option<DateTime<Utc>> = None;
    if let Some(previous) = schedule.latest_at_or_before(now, tz)
        && (now - previous).to_std().unwrap_or_default() <= config.starting_deadline
        && !shutdown.is_cancelled()
    {
        info!(application = %config.name, slot = %previous.to_rfc3339(), "running a slot missed at startup");
        Box::pin(runner::run_slot(&app, previous, true, &shutdown)).await;
        last = Some(previous);
    }

    loop {
        let now = Utc::now();
        let Some(mut next) = schedule.next_after(last.unwrap_or(now), tz) else {
            warn!(application = %config.name, "the schedule has no further slot");
            break;
        };
        // Slots that passed while the previous run was still going.
        let mut missed = 0;
        while next < now && missed < 10_000 {
            app.metrics.skipped("in_progress");
            missed += 1;
            next = match schedule.next_after(next, tz) {
                Some(n) => n,
                None => return,
            };
        }
        if missed > 0 {
            warn!(application = %config.name, missed, "slots passed while a run was in progress");
        }
        app.metrics
            .schedule(Some(next), schedule.expected_interval(now, tz));
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        let fired = Utc::now();
        app.metrics.lateness(schedule::lateness(next, fired));
        // Many applications share a slot (every `0 1 * * *`). Yielding once lets every loop woken
        // for this slot record its start before any of them does the run's synchronous work, so one
        // application's run never delays another's start.
        tokio::task::yield_now().await;
        Box::pin(runner::run_slot(&app, next, true, &shutdown)).await;
        last = Some(next);
    }
}
