//! The one-shot CLI commands and what they print: `check-config`, `resolve`, `status` and `once`.
//! Output is a readable table for a terminal, or JSON on request.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{Cell, ContentArrangement, Table};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Auth, Config, PlatformKind, Resolve};
use crate::metrics::Metrics;
use crate::model::wire_name;
use crate::platform::{Savepoint, State};
use crate::runner::{self, Outcome};
use crate::runtime::{self, App, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no application named {0:?} in the config")]
    UnknownApplication(String),
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error("the Kubernetes pod cache did not sync within {0:?}")]
    NotSynced(Duration),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// How long a one-shot command waits for the pod caches.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// A table as wide as the terminal (or `COLUMNS`), long cells wrapped in their own column; written to a
/// pipe or a file without `COLUMNS`, it is not wrapped.
fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| *c >= 40)
    {
        t.set_width(columns);
    }
    t
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds().max(0) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

// ---------------------------------------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------------------------------------

/// The effective plan: platforms, then per application its platform, schedule (with its jitter and
/// blackout windows), timezone and next three runs (the slots outside the windows). Never prints a
/// secret: only where a token comes from.
pub fn check_config(config: &Config, now: DateTime<Utc>) -> String {
    let mut platforms = table(&[
        "platform",
        "kind",
        "url",
        "resolve",
        "auth",
        "maxConcurrent",
    ]);
    for p in &config.platforms {
        let resolve = match (&p.kind, p.kind.resolve()) {
            (PlatformKind::Cmf(cmf), _) if cmf.statements.is_empty() => {
                format!("api (environment {})", cmf.environment)
            }
            (PlatformKind::Cmf(cmf), _) => format!(
                "api (environment {}; statements: {})",
                cmf.environment,
                cmf.statements
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (_, Resolve::Api) => "api".to_owned(),
            (_, Resolve::Pods(r)) => format!(
                "pods in {} ({}; {} -> {})",
                r.namespace, r.selector, r.name_label, r.id_label
            ),
        };
        let mut auth = match &p.auth {
            None => "none".to_owned(),
            Some(Auth::TokenFile(path)) => format!("tokenFile {}", path.display()),
            Some(Auth::TokenEnv(var)) => format!("tokenEnv {var}"),
        };
        if let Some(files) = &p.client_certificate {
            let certificate = format!("client certificate {}", files.cert_file.display());
            auth = if p.auth.is_some() {
                format!("{auth}, {certificate}")
            } else {
                certificate
            };
        }
        platforms.add_row(vec![
            p.name.clone(),
            p.kind.to_string(),
            match (&p.url, &p.kind) {
                (Some(url), _) => url.to_string(),
                (None, PlatformKind::FlinkOperator(op)) => {
                    format!("Kubernetes, namespaces {}", op.namespaces.join(", "))
                }
                (None, _) => "-".to_owned(),
            },
            resolve,
            auth,
            p.max_concurrent.to_string(),
        ]);
    }
    let mut apps = table(&[
        "application",
        "platform",
        "schedule",
        "timezone",
        "next runs",
        "retention",
    ]);
    for a in &config.applications {
        let next: Vec<String> =
            crate::schedule::upcoming_runs(&a.schedule, &a.blackout_windows, now, a.timezone, 3)
                .into_iter()
                .map(rfc3339)
                .collect();
        let mut schedule = if a.paused {
            format!("{} (paused)", a.schedule)
        } else {
            a.schedule.to_string()
        };
        if !a.jitter.is_zero() {
            schedule.push_str(&format!(
                "\njitter {}",
                humantime::format_duration(a.jitter)
            ));
        }
        for window in &a.blackout_windows {
            schedule.push_str(&format!("\nblackout {window}"));
        }
        apps.add_row(vec![
            Cell::new(&a.name),
            Cell::new(&config.platform_of(a).name),
            Cell::new(schedule),
            Cell::new(a.timezone.name()),
            Cell::new(next.join("\n")),
            Cell::new(crate::retention::describe(&a.retention)),
        ]);
    }
    let election = match &config.leader_election {
        None => "leader election: off (this process acts)".to_owned(),
        Some(e) => format!(
            "leader election: on (Lease {}/{}; leaseDuration {}, renewDeadline {}, retryPeriod {})",
            e.resolve_namespace()
                .unwrap_or_else(|_| "<pod namespace>".into()),
            e.lease_name,
            humantime::format_duration(e.lease_duration),
            humantime::format_duration(e.renew_deadline),
            humantime::format_duration(e.retry_period),
        ),
    };
    format!(
        "config ok (sha256 {})\n\n{platforms}\n\n{apps}\n{election}\n",
        config.sha256
    )
}

// ---------------------------------------------------------------------------------------------------------
// Sessions for one-shot commands
// ---------------------------------------------------------------------------------------------------------

/// A runtime with its pod watches driven in the background, for a command that runs once.
struct Session {
    runtime: Runtime,
    token: CancellationToken,
}

impl Session {
    async fn open(config: &Config) -> Result<Session> {
        let token = CancellationToken::new();
        let metrics = Metrics::new();
        let (runtime, watchers) = Runtime::connect(config, metrics, &token).await?;
        for w in watchers {
            tokio::spawn(w);
        }
        let synced = tokio::time::timeout(SYNC_TIMEOUT, runtime.wait_synced(&token)).await;
        if !matches!(synced, Ok(true)) {
            token.cancel();
            return Err(Error::NotSynced(SYNC_TIMEOUT));
        }
        Ok(Session { runtime, token })
    }

    fn select(&self, names: &[String]) -> Result<Vec<Arc<App>>> {
        if names.is_empty() {
            return Ok(self.runtime.apps.clone());
        }
        names
            .iter()
            .map(|n| {
                self.runtime
                    .app(n)
                    .cloned()
                    .ok_or_else(|| Error::UnknownApplication(n.clone()))
            })
            .collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

// ---------------------------------------------------------------------------------------------------------
// resolve
// ---------------------------------------------------------------------------------------------------------

/// How a name resolves and from which source. `Ok((text, false))` when it does not resolve.
pub async fn resolve(config: &Config, name: &str) -> Result<(String, bool)> {
    let session = Session::open(config).await?;
    let app = session.select(&[name.to_owned()])?.remove(0);
    Ok(match app.resolver.resolve(name).await {
        Ok(t) => {
            let mut text = format!(
                "{name} -> {}\n  platform: {}\n  source:   {}\n",
                t.id, app.platform_name, t.source
            );
            if let Some(w) = &t.warning {
                text.push_str(&format!("  warning:  {w}\n"));
            }
            (text, true)
        }
        Err(e) => (
            format!(
                "{name} does not resolve on platform {}: {e}\n",
                app.platform_name
            ),
            false,
        ),
    })
}

// ---------------------------------------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    pub application: String,
    pub platform: String,
    pub paused: bool,
    pub resolved_id: Option<String>,
    pub error: Option<String>,
    /// What resolving found that an operator should know (CMF's own schedule active too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    pub last_completed: Option<Savepoint>,
    pub in_flight: Vec<Savepoint>,
    pub last_failed: Option<Savepoint>,
    pub next_run: Option<DateTime<Utc>>,
    /// With leader election on: which replica leads, from the Lease (the same for every application).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderStatus {
    /// `namespace/name` of the Lease.
    pub lease: String,
    /// The replica that holds it; `None` when nobody does (or it could not be read: see `error`).
    pub holder: Option<String>,
    pub renew_time: Option<String>,
    pub lease_transitions: i32,
    pub error: Option<String>,
}

/// Reads the Lease, when leader election is on.
async fn leader_status(config: &Config) -> Option<LeaderStatus> {
    let election = config.leader_election.as_ref()?;
    let lease = format!(
        "{}/{}",
        election.namespace.as_deref().unwrap_or("<pod namespace>"),
        election.lease_name
    );
    let read = match runtime::kube_client_for(config).await {
        Ok(client) => crate::leader::holder(client, election).await,
        Err(e) => Err(e.to_string()),
    };
    Some(match read {
        Ok(Some(h)) => LeaderStatus {
            lease: h.lease,
            holder: h.holder,
            renew_time: h.renew_time,
            lease_transitions: h.lease_transitions,
            error: None,
        },
        Ok(None) => LeaderStatus {
            lease,
            holder: None,
            renew_time: None,
            lease_transitions: 0,
            error: None,
        },
        Err(e) => LeaderStatus {
            lease,
            holder: None,
            renew_time: None,
            lease_transitions: 0,
            error: Some(e),
        },
    })
}

/// Per application: resolved id, last completed savepoint and its age, savepoints in flight, the last
/// failure, and the next run. `ok` is false when any application could not be read.
pub async fn status(config: &Config, output: Output) -> Result<(String, bool)> {
    let session = Session::open(config).await?;
    let now = Utc::now();
    let leader = leader_status(config).await;
    let mut statuses = futures::future::join_all(
        session
            .runtime
            .apps
            .iter()
            .map(|app| app_status(app.clone(), now)),
    )
    .await;
    for s in &mut statuses {
        s.leader = leader.clone();
    }
    let ok = statuses.iter().all(|s| s.error.is_none())
        && leader.as_ref().is_none_or(|l| l.error.is_none());
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&statuses).expect("status serialises") + "\n",
        Output::Table => {
            let mut t = table(&[
                "application",
                "platform",
                "id",
                "last completed",
                "in flight",
                "last failure",
                "next run",
            ]);
            for s in &statuses {
                let id = s.resolved_id.clone().unwrap_or_else(|| "-".into());
                let last = s.last_completed.as_ref().map_or("never".into(), |sp| {
                    format!(
                        "{} ({} ago)",
                        rfc3339(sp.created_at),
                        age(sp.created_at, now)
                    )
                });
                let flying = if s.in_flight.is_empty() {
                    "-".into()
                } else {
                    s.in_flight
                        .iter()
                        .map(|sp| format!("{} since {}", sp.id, age(sp.created_at, now)))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                // An error of this look (the name does not resolve, the platform cannot be read)
                // belongs with the failures, not in the id column.
                let failed = match (&s.error, &s.last_failed) {
                    (Some(e), _) => format!("now: {e}"),
                    (None, Some(sp)) => format!(
                        "{} ago: {}",
                        age(sp.created_at, now),
                        sp.failure.as_deref().unwrap_or("no message")
                    ),
                    (None, None) => "-".into(),
                };
                let next = if s.paused {
                    "paused".into()
                } else {
                    s.next_run.map_or("-".into(), rfc3339)
                };
                t.add_row(vec![
                    s.application.clone(),
                    s.platform.clone(),
                    id,
                    last,
                    flying,
                    failed,
                    next,
                ]);
            }
            let leading = match &leader {
                None => String::new(),
                Some(LeaderStatus {
                    lease,
                    error: Some(e),
                    ..
                }) => format!("leader: unknown (Lease {lease}: {e})\n"),
                Some(LeaderStatus {
                    lease,
                    holder: None,
                    ..
                }) => format!("leader: none (Lease {lease} is free)\n"),
                Some(l) => format!(
                    "leader: {} (Lease {}, renewed {}, {} transitions)\n",
                    l.holder.as_deref().unwrap_or_default(),
                    l.lease,
                    l.renew_time.as_deref().unwrap_or("never"),
                    l.lease_transitions
                ),
            };
            let warnings: String = statuses
                .iter()
                .filter_map(|s| {
                    let w = s.warning.as_ref()?;
                    Some(format!("warning: {}: {w}\n", s.application))
                })
                .collect();
            format!("{leading}{t}\n{warnings}")
        }
    };
    Ok((text, ok))
}

async fn app_status(app: Arc<App>, now: DateTime<Utc>) -> AppStatus {
    let c = &app.config;
    let mut s = AppStatus {
        application: c.name.clone(),
        platform: app.platform_name.clone(),
        paused: c.paused,
        resolved_id: None,
        error: None,
        warning: None,
        last_completed: None,
        in_flight: Vec::new(),
        last_failed: None,
        next_run: crate::schedule::next_run(&c.schedule, &c.blackout_windows, now, c.timezone),
        leader: None,
    };
    let target = match app.resolver.resolve(&c.name).await {
        Ok(t) => t,
        Err(e) => {
            s.error = Some(e.to_string());
            return s;
        }
    };
    s.resolved_id = Some(target.id.clone());
    s.warning = target.warning.clone();
    match app.platform.list(&target).await {
        Ok(mut history) => {
            history.sort_by_key(|sp| sp.created_at);
            let newest = |state: State| history.iter().rev().find(|sp| sp.state == state).cloned();
            s.last_completed = newest(State::Completed);
            s.last_failed = newest(State::Failed);
            s.in_flight = history
                .iter()
                .filter(|sp| sp.state.is_in_flight())
                .cloned()
                .collect();
        }
        Err(e) => s.error = Some(e.to_string()),
    }
    s
}

// ---------------------------------------------------------------------------------------------------------
// once
// ---------------------------------------------------------------------------------------------------------

/// One pass now over the selected applications (all when none is named). Each application's slot is its
/// schedule's latest slot within `startingDeadline` (none: nothing is due), so a retried or duplicated
/// CronJob Job, or `once` beside the daemon, meets the slot's savepoint instead of making a second one.
/// `ok` is false when any run failed, a name did not resolve, or a run was skipped because another
/// savepoint is in flight; a slot inside a blackout window is skipped, and that is ok (the operator asked
/// for it). After `shutdown`, nothing new starts; waits still going after the grace period are abandoned
/// (their savepoints go on and are adopted by the next run).
pub async fn once(
    config: &Config,
    names: &[String],
    dry_run: bool,
    prune: bool,
    shutdown: &CancellationToken,
) -> Result<(String, bool)> {
    let session = Session::open(config).await?;
    let apps = session.select(names)?;
    let now = Utc::now();
    let mut t = table(&["application", "outcome", "savepoint", "detail"]);
    let mut ok = true;
    if dry_run {
        for app in apps {
            let (outcome, detail) = dry_run_of(&app, now).await;
            ok &= !matches!(outcome, "error" | "unresolved");
            t.add_row(vec![
                app.config.name.clone(),
                outcome.into(),
                "-".into(),
                detail,
            ]);
        }
        return Ok((format!("dry run: nothing was triggered\n{t}\n"), ok));
    }
    let runs = futures::future::join_all(apps.iter().map(|app| async move {
        match runner::due_slot(&app.config, now) {
            Ok(slot) => runner::run_slot(app, slot, prune, shutdown).await,
            Err(skip) => runner::skip(app, skip),
        }
    }));
    let grace = config.server.shutdown_grace;
    let outcomes = tokio::select! {
        outcomes = runs => outcomes,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            return Ok((
                format!("interrupted: shut down, and savepoints still in flight after {} were \
                         abandoned; they go on and the next run adopts them\n", humantime::format_duration(grace)),
                false,
            ));
        }
    };
    for (app, outcome) in apps.iter().zip(outcomes) {
        ok &= outcome.is_ok();
        let (what, id, detail) = match outcome {
            Outcome::Completed { savepoint, adopted } => (
                if adopted {
                    "completed (adopted)"
                } else {
                    "completed"
                },
                savepoint.id,
                savepoint.location.unwrap_or_default(),
            ),
            Outcome::AlreadyDone(s) => ("already done", s.id, "this slot has its savepoint".into()),
            Outcome::Skipped(skip) => (
                "skipped",
                "-".into(),
                format!("{}: {skip}", skip.category()),
            ),
            Outcome::Failed(f) => ("failed", "-".into(), f.to_string()),
        };
        t.add_row(vec![app.config.name.clone(), what.into(), id, detail]);
    }
    Ok((format!("{t}\n"), ok))
}

/// What `once` would do for one application, from the same look at the platform's records.
async fn dry_run_of(app: &App, now: DateTime<Utc>) -> (&'static str, String) {
    let c = &app.config;
    let target = match app.resolver.resolve(&c.name).await {
        Ok(target) => target,
        Err(e) => return ("unresolved", e.to_string()),
    };
    if c.paused {
        return ("would skip", format!("paused ({})", target.id));
    }
    let slot = match runner::due_slot(c, now) {
        Ok(slot) => slot,
        Err(skip) => return ("would skip", skip.to_string()),
    };
    let history = match app.platform.list(&target).await {
        Ok(h) => h,
        Err(e) => return ("error", e.to_string()),
    };
    let step = runner::next_step(
        &history,
        &c.name,
        slot,
        0,
        c.retry.max_attempts,
        c.timeout,
        now,
    );
    let at = format!("slot {}", rfc3339(slot));
    match step {
        runner::Step::Done(s) => ("would do nothing", format!("{at} has savepoint {}", s.id)),
        runner::Step::Follow(s) => (
            "would follow",
            format!("{at}: savepoint {} in flight", s.id),
        ),
        runner::Step::Stuck(s) => (
            "would fail",
            format!(
                "{at}: savepoint {} in flight for longer than {}",
                s.id,
                humantime::format_duration(c.timeout)
            ),
        ),
        runner::Step::Busy(s) => ("would skip", format!("savepoint {} in flight", s.id)),
        runner::Step::Exhausted { spent } => (
            "would fail",
            format!("{at}: {spent} attempts failed already"),
        ),
        runner::Step::Trigger { attempt, .. } => (
            "would trigger",
            format!("{at}, attempt {attempt}, on {}", target.id),
        ),
    }
}

// ---------------------------------------------------------------------------------------------------------
// prune
// ---------------------------------------------------------------------------------------------------------

/// Retention only: per application every savepoint with its decision and reason; with `dry_run`, exactly
/// what a real run would delete, and nothing is deleted. `ok` is false when a name did not resolve, the
/// savepoints could not be listed, or a deletion failed.
pub async fn prune(
    config: &Config,
    names: &[String],
    dry_run: bool,
    output: Output,
    shutdown: &CancellationToken,
) -> Result<(String, bool)> {
    let session = Session::open(config).await?;
    let apps = session.select(names)?;
    let now = Utc::now();
    let mut ok = true;
    let mut text = String::new();
    let mut reports = Vec::new();
    for app in apps {
        let name = &app.config.name;
        if shutdown.is_cancelled() {
            ok = false;
            text.push_str(&format!("{name}: not pruned: shutting down\n\n"));
            continue;
        }
        let result = match app.resolver.resolve(name).await {
            Ok(target) => crate::prune::prune(&app, &target, dry_run, shutdown)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                ok = false;
                text.push_str(&format!("{name}: not pruned: {e}\n\n"));
                continue;
            }
        };
        ok &= report.is_ok() && report.interrupted == 0;
        if output == Output::Table {
            text.push_str(&prune_table(&report, &app.platform_name, now));
        }
        reports.push(report);
    }
    if output == Output::Json {
        text = serde_json::to_string_pretty(&reports).expect("reports serialise") + "\n";
    }
    Ok((text, ok))
}

fn prune_table(report: &crate::prune::Report, platform: &str, now: DateTime<Utc>) -> String {
    let to_delete = report.plan.deletions().count();
    let head = if report.dry_run {
        format!("{to_delete} would be deleted (dry run: nothing was deleted)")
    } else {
        let mut head = format!(
            "{} deleted, {} not deleted",
            report.deleted.len(),
            report.failed.len()
        );
        if !report.pending.is_empty() {
            head.push_str(&format!(
                ", {} accepted and pending on the platform",
                report.pending.len()
            ));
        }
        if report.interrupted > 0 {
            head.push_str(&format!(
                ", {} left for the next run (shutting down)",
                report.interrupted
            ));
        }
        head
    };
    let mut t = table(&[
        "savepoint",
        "created",
        "state",
        "type / origin",
        "decision",
        "reason",
    ]);
    for d in &report.plan.decisions {
        let s = &d.savepoint;
        let decision = match (d.is_delete(), report.dry_run) {
            (false, _) => "keep".to_owned(),
            (true, true) => "would delete".to_owned(),
            (true, false) => match report.failed.iter().find(|f| f.savepoint == s.id) {
                Some(f) => format!("not deleted: {}", f.message),
                None if report.pending.contains(&s.id) => "deletion pending".to_owned(),
                None => "deleted".to_owned(),
            },
        };
        t.add_row(vec![
            s.id.clone(),
            format!("{} ({} ago)", rfc3339(s.created_at), age(s.created_at, now)),
            s.state.to_string(),
            format!("{} / {}", wire_name(&s.kind), wire_name(&s.origin)),
            decision,
            d.reason.clone(),
        ]);
    }
    if report.plan.capped > 0 {
        t.add_row(vec![
            format!("+{} held back by maxDeletionsPerRun", report.plan.capped),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    format!("{} on {platform}: {head}\n{t}\n\n", report.application)
}
