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
/// The list and every deletion each hold one of the platform's permits, so prunes and savepoints together
/// stay within `maxConcurrent`. Deletions start oldest first and run together within that bound: one
/// that the platform takes minutes to finish holds back none of the others. Savepoints that share a
/// location are the exception: they go one after another. `shutdown` and the mandate are looked at as
/// each deletion is about to start, never inside one: a deletion that started is followed to its end
/// (DESIGN.md §5 rule 10).
pub async fn prune(
    app: &App,
    target: &Target,
    dry_run: bool,
    shutdown: &CancellationToken,
) -> Result<Report, platform::Error> {
    let c = &app.config;
    let history = {
        let _permit = app.permit().await;
        app.platform.list(target).await?
    };
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
    // Oldest first, as the cap chooses them: the permits are handed out in this order, so a run cut
    // short by shutdown leaves the newer ones.
    let mut deletions: Vec<_> = report.plan.deletions().cloned().collect();
    deletions.reverse();
    // Savepoints that share a location go one after another (VVP deletes a location's resources
    // together: the second finds its resource gone rather than in deletion); the groups run together.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, d) in deletions.iter().enumerate() {
        let location = d.savepoint.location.as_deref();
        let together = location.and_then(|l| {
            groups
                .iter()
                .position(|g| deletions[g[0]].savepoint.location.as_deref() == Some(l))
        });
        match together {
            Some(g) => groups[g].push(i),
            None => groups.push(vec![i]),
        }
    }
    let deletions = &deletions;
    let started: Vec<_> = groups
        .iter()
        .map(|group| async move {
            let mut outcomes = Vec::with_capacity(group.len());
            for &i in group {
                outcomes.push((i, delete(app, target, &deletions[i], shutdown).await));
            }
            outcomes
        })
        .collect();
    let mut outcomes: Vec<_> = futures::future::join_all(started)
        .await
        .into_iter()
        .flatten()
        .collect();
    outcomes.sort_by_key(|(i, _)| *i);
    let outcomes = outcomes.into_iter().map(|(_, outcome)| outcome);
    let mut completed_left = 0;
    for (d, outcome) in deletions.iter().zip(outcomes) {
        let s = &d.savepoint;
        match outcome {
            None => {
                report.interrupted += 1;
                completed_left += usize::from(s.state == State::Completed);
            }
            Some(Ok(Deletion::Pending(_))) => report.pending.push(s.id.clone()),
            Some(Ok(Deletion::Gone)) => report.deleted.push(s.id.clone()),
            Some(Err(e)) => {
                completed_left += usize::from(s.state == State::Completed);
                report.failed.push(DeleteFailure {
                    savepoint: s.id.clone(),
                    reason: e.category(),
                    message: e.to_string(),
                });
            }
        }
    }
    if report.interrupted > 0 {
        warn!(application = %c.name, left = report.interrupted,
            "shutting down: the remaining deletions wait for the next run");
    }
    app.metrics
        .retained(report.plan.retained_completed() + completed_left);
    Ok(report)
}

/// One deletion under a platform permit, logged and counted; `None` when it was not started because
/// shutdown began or this replica stopped leading.
async fn delete(
    app: &App,
    target: &Target,
    d: &retention::Decision,
    shutdown: &CancellationToken,
) -> Option<Result<Deletion, platform::Error>> {
    let _permit = app.permit().await;
    if shutdown.is_cancelled() || !app.mandate.holds() {
        return None;
    }
    let (c, s) = (&app.config, &d.savepoint);
    let outcome = app.platform.delete(target, s).await;
    match &outcome {
        Ok(Deletion::Pending(when)) => {
            info!(application = %c.name, platform = %app.platform_name, savepoint_id = %s.id,
                reason = %d.reason, "savepoint deletion accepted; {when}");
        }
        Ok(Deletion::Gone) => {
            app.metrics.retention_deleted();
            info!(application = %c.name, platform = %app.platform_name, savepoint_id = %s.id,
                location = s.location.as_deref().unwrap_or(""), reason = %d.reason, "savepoint deleted");
        }
        Err(e) => {
            app.metrics.retention_delete_failure(e.category());
            warn!(application = %c.name, platform = %app.platform_name, savepoint_id = %s.id,
                reason = e.category(), error = %e, "savepoint not deleted");
        }
    }
    Some(outcome)
}
