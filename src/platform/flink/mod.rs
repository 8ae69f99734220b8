//! Apache Flink's JobManager REST API (`wire.rs`, the one place that knows its format), the savepoint
//! directories under `targetDirectory` (`storage.rs`), and what Flink's failure causes mean
//! (`failure.rs`).
//!
//! Flink keeps no metadata with a savepoint, so savepointd records the slot where Flink cannot forget it:
//! in the path. Every savepoint it triggers goes to `<targetDirectory>/<application dir>/slot-<slot>/`,
//! so after any restart, however late, the slot's savepoint is found by listing. The trigger id, derived
//! from (application, slot, attempt), makes a resent trigger idempotent while the JobManager remembers
//! it (5 minutes), which covers the HTTP layer's resends.

mod failure;
mod storage;
mod wire;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};

use self::failure::proves_unreadable;
use self::storage::{Storage, is_under, normalize, slot_of};
use self::wire::{
    WireCheckpoint, WireCheckpoints, WireJob, WireJobOverview, WireOperation, WireOverview,
    WireRequestId, completed_id,
};
use super::http::{ApiClient, Retry};
use super::shared::{self, SharedListing};
use super::{
    Deletion, Error, Managed, Origin, Platform, ResolveError, Result, Savepoint, SavepointType,
    State, Target, TriggerRequest,
};
use crate::model::{self, sanitize, slot_text};

pub use self::failure::describe_failure;
pub use self::storage::{root_url as storage_root, slot_dir_name};

/// How long a disposal is followed before it is reported as still pending (it may yet finish).
const DISPOSAL_FOLLOW_LIMIT: Duration = Duration::from_secs(120);
/// Jobs named in an "unresolved" message; a session cluster keeps finished jobs for an hour.
const JOBS_NAMED: usize = 3;

pub struct Flink {
    api: ApiClient,
    storage: Storage,
    /// The JobManager's job overview, one request per tick for every application.
    overview: SharedListing<Vec<WireJobOverview>>,
}

/// How a disposal by the JobManager ended.
enum Disposal {
    Done,
    /// The JobManager ran the disposal and it failed: its reason, and whether the failure proves that
    /// the JobManager cannot read the savepoint at all.
    Refused {
        reason: String,
        unreadable: bool,
    },
}

impl Flink {
    pub fn new(api: ApiClient, target_directory: &str) -> Result<Self> {
        let storage = Storage::new(target_directory).map_err(|message| Error::Setup {
            platform: api.platform().to_owned(),
            message,
        })?;
        Ok(Self {
            api,
            storage,
            overview: SharedListing::new(shared::FRESH_FOR),
        })
    }

    fn platform(&self) -> String {
        self.api.platform().to_owned()
    }

    /// `Managed` for a savepoint at `location`, when that is under the application's directory; its
    /// slot from the slot directory it lies in.
    fn managed_at(&self, application: &str, location: Option<&str>) -> Option<Managed> {
        let dir = self.storage.app_dir(application);
        let location = location.filter(|l| is_under(l, &dir))?;
        Some(Managed {
            application: application.to_owned(),
            slot: slot_of(location, &dir),
        })
    }

    /// The job's checkpoint statistics; `None` when the JobManager no longer knows the job.
    async fn checkpoints(&self, job_id: &str) -> Result<Option<WireCheckpoints>> {
        match self
            .api
            .get::<WireCheckpoints>("list_checkpoints", &format!("jobs/{job_id}/checkpoints"))
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks the JobManager to dispose of a savepoint and follows the disposal to its end. An HTTP error
    /// (a 503 during leader election, a 401) is an error, never a reason to delete files directly.
    async fn dispose(&self, id: &str, location: &str) -> Result<Disposal> {
        let body = json!({ "savepoint-path": location });
        // Disposing twice is harmless: the second finds nothing and fails, which is not a proof of
        // anything but leaves nothing behind either.
        let started: WireRequestId = self
            .api
            .json(
                "dispose",
                Method::POST,
                "savepoint-disposal",
                Some(&body),
                Retry::Idempotent,
            )
            .await
            .map_err(|e| self.first_line(id, e))?;
        let path = format!("savepoint-disposal/{}", started.request_id);
        let begun = Instant::now();
        let mut interval = Duration::from_millis(100);
        loop {
            let status: WireOperation = self
                .api
                .get("get_disposal", &path)
                .await
                .map_err(|e| self.first_line(id, e))?;
            if status.status.id == "COMPLETED" {
                return Ok(match status.operation.and_then(|o| o.failure_cause) {
                    None => Disposal::Done,
                    Some(cause) => Disposal::Refused {
                        reason: cause.summary(),
                        unreadable: cause.stack_trace.as_deref().is_some_and(proves_unreadable),
                    },
                });
            }
            if begun.elapsed() >= DISPOSAL_FOLLOW_LIMIT {
                return Err(Error::DeletionPending {
                    platform: self.platform(),
                    id: id.to_owned(),
                    after: DISPOSAL_FOLLOW_LIMIT,
                });
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_secs(2));
        }
    }

    /// Flink's error bodies carry whole stack traces; the first line says what happened.
    fn first_line(&self, id: &str, e: Error) -> Error {
        if e.status().is_none() {
            return e;
        }
        Error::DeletionFailed {
            platform: self.platform(),
            id: id.to_owned(),
            message: format!(
                "the JobManager did not dispose of it: {}",
                e.to_string().lines().next().unwrap_or_default()
            ),
        }
    }
}

#[async_trait]
impl Platform for Flink {
    fn name(&self) -> &str {
        self.api.platform()
    }

    async fn probe(&self) -> Result<()> {
        self.api
            .get::<serde::de::IgnoredAny>("probe", "jobs/overview")
            .await
            .map(|_| ())
    }

    async fn resolve(&self, application: &str) -> Result<Target, ResolveError> {
        let platform_error = |e| ResolveError::Platform(Box::new(e));
        let overview = self
            .overview
            .get(|| async {
                let overview: WireOverview = self.api.get("list_jobs", "jobs/overview").await?;
                Ok(overview.jobs)
            })
            .await
            .map_err(platform_error)?;
        let wanted = sanitize(application);
        let mut named: Vec<WireJobOverview> = overview
            .iter()
            .filter(|j| j.name == application || sanitize(&j.name) == wanted)
            .cloned()
            .collect();
        named.sort_by_key(|j| std::cmp::Reverse(j.start_time));
        let running: Vec<String> = named
            .iter()
            .filter(|j| j.state == "RUNNING")
            .map(|j| j.jid.clone())
            .collect();
        if running.is_empty() {
            return Err(not_running(application, self.api.platform(), &named));
        }
        let target = model::unique(application, running, "", |jid| {
            format!("Flink job {jid} (GET /jobs/overview)")
        })?;
        let job: WireJob = self
            .api
            .get("get_job", &format!("jobs/{}", target.id))
            .await
            .map_err(platform_error)?;
        if let Some(reason) = job.not_ready() {
            return Err(ResolveError::NotReady {
                application: application.to_owned(),
                reason: format!("job {}: {reason}", target.id),
            });
        }
        Ok(target)
    }

    async fn trigger(&self, target: &Target, request: &TriggerRequest<'_>) -> Result<Savepoint> {
        let dir = self.storage.slot_dir(request.application, request.slot);
        let body = json!({
            "target-directory": dir.as_str(),
            "cancel-job": false,
            "formatType": request.format_type.to_string(),
            "triggerId": trigger_id(request.application, request.slot, request.attempt),
        });
        // Idempotent while the JobManager remembers the trigger id: a resent request returns the
        // operation already started.
        let answer: WireRequestId = self
            .api
            .json(
                "trigger",
                Method::POST,
                &format!("jobs/{}/savepoints", target.id),
                Some(&body),
                Retry::Idempotent,
            )
            .await?;
        Ok(Savepoint {
            id: answer.request_id,
            created_at: Utc::now(),
            state: State::InProgress,
            origin: Origin::UserRequest,
            kind: SavepointType::Full,
            location: None,
            failure: None,
            managed: Some(Managed {
                application: request.application.to_owned(),
                slot: Some(request.slot),
            }),
            protected: None,
        })
    }

    async fn get(&self, target: &Target, id: &str) -> Result<Savepoint> {
        // Savepoints listed from the checkpoint history carry Flink's checkpoint id.
        if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
            let wire: WireCheckpoint = self
                .api
                .get(
                    "get_checkpoint",
                    &format!("jobs/{}/checkpoints/details/{id}", target.id),
                )
                .await?;
            let mut savepoint = wire.into_savepoint();
            savepoint.managed = self.managed_at(&target.application, savepoint.location.as_deref());
            return Ok(savepoint);
        }
        let path = format!("jobs/{}/savepoints/{id}", target.id);
        let wire: WireOperation = self.api.get("get", &path).await?;
        let (state, location, failure) = wire.into_outcome().map_err(|message| Error::Decode {
            platform: self.platform(),
            operation: "get",
            url: path.clone(),
            message,
        })?;
        // Once completed, the id the savepoint has everywhere else: its directory's name (the trigger's
        // request id is the JobManager's handle for the operation only).
        let id = match (&location, state) {
            (Some(l), State::Completed) => completed_id(l).unwrap_or_else(|| id.to_owned()),
            _ => id.to_owned(),
        };
        Ok(Savepoint {
            id,
            created_at: Utc::now(),
            state,
            origin: Origin::UserRequest,
            kind: SavepointType::Full,
            managed: self.managed_at(&target.application, location.as_deref()),
            location,
            failure,
            protected: None,
        })
    }

    async fn list(&self, target: &Target) -> Result<Vec<Savepoint>> {
        let application = &target.application;
        let app_dir = self.storage.app_dir(application);
        // The history first: a savepoint it shows as completed has its `_metadata` written already,
        // so the directory listing that follows sees it.
        let checkpoints = self.checkpoints(&target.id).await?;
        let restored_from = checkpoints
            .as_ref()
            .and_then(WireCheckpoints::restored_from);
        let history = checkpoints.map(|c| c.history).unwrap_or_default();
        let on_disk = self
            .storage
            .list(&app_dir)
            .await
            .map_err(|message| Error::Storage {
                platform: self.platform(),
                url: app_dir.to_string(),
                message,
            })?;
        let present: std::collections::HashSet<&str> =
            on_disk.iter().map(|d| d.location.as_str()).collect();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for wire in history.into_iter().filter(|c| c.is_savepoint) {
            let mut savepoint = wire.into_savepoint();
            if let Some(location) = &savepoint.location {
                let mine = is_under(location, &app_dir);
                // The history outlives a disposal: a completed savepoint of ours whose directory is
                // gone has been deleted.
                if savepoint.state == State::Completed
                    && mine
                    && !present.contains(location.as_str())
                {
                    continue;
                }
                if !seen.insert(location.clone()) {
                    continue;
                }
                savepoint.managed = self.managed_at(application, Some(location));
            }
            out.push(savepoint);
        }
        for dir in on_disk {
            if seen.contains(&dir.location) {
                continue;
            }
            out.push(Savepoint {
                id: dir.name,
                created_at: dir.modified,
                state: State::Completed,
                origin: Origin::UserRequest,
                kind: SavepointType::Full,
                location: Some(dir.location),
                failure: None,
                managed: Some(Managed {
                    application: application.clone(),
                    slot: dir.slot,
                }),
                protected: None,
            });
        }
        // Rule 8: the savepoint the running job was restored from stays, whatever the policy (a NATIVE
        // savepoint's files are shared with the job's checkpoints).
        if let Some(restored) = restored_from {
            for savepoint in &mut out {
                if savepoint.location.as_deref() == Some(restored.as_str()) {
                    savepoint.protected = Some(format!("job {} was restored from it", target.id));
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, target: &Target, savepoint: &Savepoint) -> Result<Deletion> {
        let failed = |message: String| Error::DeletionFailed {
            platform: self.platform(),
            id: savepoint.id.clone(),
            message,
        };
        if let Some(why) = &savepoint.protected {
            return Err(failed(format!("refused: {why}")));
        }
        let location = savepoint
            .location
            .as_deref()
            .ok_or_else(|| failed("it has no location, so there is nothing to dispose".into()))?;
        // The application the target stands for, not the one the savepoint claims: never anything
        // outside the directory of the application being pruned, whoever asks.
        let application = &target.application;
        let app_dir = self.storage.app_dir(application);
        let dir = match normalize(location) {
            Some(dir) if is_under(location, &app_dir) => dir,
            _ => {
                return Err(failed(format!(
                    "refused: {location} is not inside {app_dir}, the directory of application \
                     {application}"
                )));
            }
        };
        let reason = match self.dispose(&savepoint.id, location).await? {
            Disposal::Done => return Ok(Deletion::Gone),
            Disposal::Refused {
                reason,
                unreadable: false,
            } => {
                return Err(failed(format!(
                    "the JobManager could not dispose of it: {reason}"
                )));
            }
            Disposal::Refused {
                reason,
                unreadable: true,
            } => reason,
        };
        tracing::warn!(
            platform = %self.api.platform(),
            savepoint_id = %savepoint.id,
            location,
            reason = %reason,
            "the JobManager cannot read the savepoint; deleting its files directly, _metadata last"
        );
        let deleted = self
            .storage
            .delete_savepoint_dir(&app_dir, &dir)
            .await
            .map_err(failed)?;
        tracing::info!(savepoint_id = %savepoint.id, location, objects = deleted, "savepoint files deleted");
        Ok(Deletion::Gone)
    }
}

/// The trigger id of one attempt at one slot: the first 16 bytes of
/// `sha256("savepointd\0" + application + "\0" + slot + "\0" + attempt)`, as 32 lowercase hex digits.
pub fn trigger_id(application: &str, slot: DateTime<Utc>, attempt: u32) -> String {
    let mut hash = Sha256::new();
    hash.update(b"savepointd\0");
    hash.update(application.as_bytes());
    hash.update(b"\0");
    hash.update(slot_text(slot).as_bytes());
    hash.update(b"\0");
    hash.update(attempt.to_string().as_bytes());
    model::hex(&hash.finalize()[..16])
}

fn not_running(application: &str, platform: &str, named: &[WireJobOverview]) -> ResolveError {
    let listed = |jobs: &[&WireJobOverview]| {
        let mut text = jobs
            .iter()
            .take(JOBS_NAMED)
            .map(|j| format!("job {} is {}", j.jid, j.state))
            .collect::<Vec<_>>()
            .join(", ");
        if jobs.len() > JOBS_NAMED {
            text.push_str(&format!(" (and {} more)", jobs.len() - JOBS_NAMED));
        }
        text
    };
    // A job that is starting or restarting is on its way to RUNNING: not ready rather than absent.
    let coming: Vec<&WireJobOverview> = named
        .iter()
        .filter(|j| {
            !matches!(
                j.state.as_str(),
                "FINISHED" | "CANCELED" | "FAILED" | "SUSPENDED"
            )
        })
        .collect();
    if !coming.is_empty() {
        return ResolveError::NotReady {
            application: application.to_owned(),
            reason: listed(&coming),
        };
    }
    let all: Vec<&WireJobOverview> = named.iter().collect();
    ResolveError::Unresolved {
        application: application.to_owned(),
        looked: if all.is_empty() {
            format!("no Flink job of that name on platform {platform}")
        } else {
            format!("no RUNNING Flink job of that name: {}", listed(&all))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_ids_are_deterministic_per_application_slot_and_attempt() {
        let slot: DateTime<Utc> = "2026-11-20T01:00:00Z".parse().unwrap();
        let id = trigger_id("orders", slot, 1);
        assert_eq!(id, trigger_id("orders", slot, 1), "same inputs, same id");
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{id}"
        );
        let others = [
            trigger_id("orders", slot, 2),
            trigger_id("payments", slot, 1),
            trigger_id("orders", slot + chrono::TimeDelta::seconds(1), 1),
            // The separators keep ("ab", "c…") and ("a", "bc…") apart.
            trigger_id("orders\u{0}2026", slot, 1),
        ];
        for other in others {
            assert_ne!(id, other);
        }
        // Pinned: a change of the derivation would make a restarted daemon trigger a slot again.
        let mut hash = Sha256::new();
        hash.update(b"savepointd\0orders\x002026-11-20T01:00:00Z\x001");
        assert_eq!(id, crate::model::hex(&hash.finalize()[..16]));
    }

    #[test]
    fn jobs_not_running_are_named_with_their_state() {
        let job = |jid: &str, state: &str, start| WireJobOverview {
            jid: jid.into(),
            name: "orders".into(),
            state: state.into(),
            start_time: start,
        };
        let err = not_running(
            "orders",
            "local",
            &[job("b", "CANCELED", 2), job("a", "FAILED", 1)],
        );
        assert_eq!(err.category(), "unresolved");
        let text = err.to_string();
        assert!(
            text.contains("job b is CANCELED, job a is FAILED"),
            "{text}"
        );
        let err = not_running("orders", "local", &[job("c", "RESTARTING", 3)]);
        assert_eq!(err.category(), "not_ready");
        assert!(err.to_string().contains("job c is RESTARTING"));
        let err = not_running("orders", "local", &[]);
        assert!(
            err.to_string().contains("no Flink job of that name"),
            "{err}"
        );
    }
}
