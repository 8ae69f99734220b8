//! Executing a retention plan: list the application's savepoints, plan with the pure
//! [`retention::plan`], delete what it says through the platform, and count what happened. A refused or
//! failed deletion is counted and logged with the platform's message; the others go on, and nothing here
//! ever stops the daemon.

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::platform::{self, Deletion, State, Target};
use crate::retention::{self, Plan};
use crate::runtime::App;

/// One deletion that did not happen.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteFailure {
    pub savepoint: String,
    pub reason: &'static str,
    pub message: String,
}

/// What one prune of one application did (or, in a dry run, would do).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub application: String,
    pub dry_run: bool,
    pub plan: Plan,
    pub deleted: Vec<String>,
    /// Deletions the platform accepted and finishes later by itself (CMF while the job is down):
    /// neither failed nor to be sent again; the next list shows them in deletion.
    pub pending: Vec<String>,
    pub failed: Vec<DeleteFailure>,
    /// Deletions not started because shutdown began; the next run plans them again.
    pub interrupted: usize,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Prunes one application of a resolved target. `Err` only when the savepoints could not be listed (a
/// failed list means no deletion at all: a partial one could make a kept savepoint look deletable).
///
/// Deletions run one after another, and `shutdown` is looked at between them, never inside one: a
/// deletion that started is followed to its end (DESIGN.md §5 rule 10).
pub async fn prune(
    app: &App,
    target: &Target,
    dry_run: bool,
    shutdown: &CancellationToken,
) -> Result<Report, platform::Error> {
    let c = &app.config;
    let history = app.platform.list(target).await?;
    let plan = retention::plan(&history, &c.retention, &c.name, c.timezone, Utc::now());
    let mut report = Report {
        application: c.name.clone(),
        dry_run,
        deleted: Vec::new(),
        pending: Vec::new(),
        failed: Vec::new(),
        interrupted: 0,
        plan,
    };
    if report.plan.capped > 0 {
        warn!(
            application = %c.name,
            held_back = report.plan.capped,
            max = c.retention.max_deletions_per_run,
            "more savepoints are due for deletion than maxDeletionsPerRun allows; the rest wait for the next run"
        );
    }
    if dry_run {
        return Ok(report);
    }
    // Oldest first, as the cap chooses them: a run cut short by shutdown leaves the newer ones.
    let mut deletions: Vec<_> = report.plan.deletions().cloned().collect();
    deletions.reverse();
    let mut completed_left = 0;
    for (done, d) in deletions.iter().enumerate() {
        if shutdown.is_cancelled() || !app.mandate.holds() {
            let left = &deletions[done..];
            report.interrupted = left.len();
            completed_left += left
                .iter()
                .filter(|d| d.savepoint.state == State::Completed)
                .count();
            warn!(application = %c.name, left = report.interrupted,
                "shutting down: the remaining deletions wait for the next run");
            break;
        }
        let s = &d.savepoint;
        match app.platform.delete(target, s).await {
            Ok(Deletion::Pending(when)) => {
                info!(application = %c.name, platform = %app.platform_name, savepoint_id = %s.id,
                    reason = %d.reason, "savepoint deletion accepted; {when}");
                report.pending.push(s.id.clone());
            }
            Ok(Deletion::Gone) => {
                app.metrics.retention_deleted();
                info!(application = %c.name, platform = %app.platform_name, savepoint_id = %s.id,
                    location = s.location.as_deref().unwrap_or(""), reason = %d.reason, "savepoint deleted");
                report.deleted.push(s.id.clone());
            }
            Err(e) => {
                completed_left += usize::from(s.state == State::Completed);
                app.metrics.retention_delete_failure(e.category());
                warn!(application = %c.name, platform = %app.platform_name, savepoint_id = %s.id,
                    reason = e.category(), error = %e, "savepoint not deleted");
                report.failed.push(DeleteFailure {
                    savepoint: s.id.clone(),
                    reason: e.category(),
                    message: e.to_string(),
                });
            }
        }
    }
    app.metrics
        .retained(report.plan.retained_completed() + completed_left);
    Ok(report)
}
