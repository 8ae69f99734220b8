//! Confluent Manager for Apache Flink, REST API v1: the one place that knows its wire format
//! (`../shared/reference/apis.md`, CMF section).
//!
//! A slot's identity is the savepoint's name (DESIGN.md §1): one name per (application, slot, attempt),
//! unique within the environment, so a resent trigger meets a 409 instead of making a second savepoint,
//! and the runner adopts what that name holds. Savepoints are Kubernetes resources under CMF: a label
//! value cannot hold an RFC 3339 time, so the slot travels in an annotation.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{AfterLostDelete, ApiClient, DELETION_FOLLOW_LIMIT, DeleteSent, Retry};
use super::{
    ANNOTATION_APPLICATION, ANNOTATION_MANAGED_BY, ANNOTATION_SLOT, Deletion, MANAGED_BY, Managed,
    Origin, Platform, ResolveError, Result, Savepoint, SavepointType, State, Target,
    TriggerRequest,
};
use crate::model::{self, slot_text};

/// Savepoints asked for per page. CMF may answer fewer; paging goes on until an empty page.
const PAGE_SIZE: usize = 100;

/// Pages read for one list at most: a server that ignores `page` and repeats the first one must not
/// keep a list going for ever.
const MAX_PAGES: usize = 10_000;

pub struct Cmf {
    api: ApiClient,
    environment: String,
    /// Applications that are CMF statements rather than FlinkApplications.
    statements: BTreeSet<String>,
}

/// What a configured name is on CMF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Application,
    Statement,
}

impl Kind {
    fn collection(self) -> &'static str {
        match self {
            Kind::Application => "applications",
            Kind::Statement => "statements",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Application => "application",
            Kind::Statement => "statement",
        }
    }
}

impl Cmf {
    pub fn new(api: ApiClient, environment: String, statements: BTreeSet<String>) -> Self {
        Self {
            api,
            environment,
            statements,
        }
    }

    fn kind_of(&self, application: &str) -> Kind {
        if self.statements.contains(application) {
            Kind::Statement
        } else {
            Kind::Application
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("cmf/api/v1/environments/{}/{rest}", self.environment)
    }

    /// The savepoints collection of a target (`applications/<name>` or `statements/<name>`).
    fn savepoints(&self, target: &Target) -> String {
        self.path(&format!("{}/savepoints", target.id))
    }

    fn decode(&self, operation: &'static str, wire: WireSavepoint) -> Result<Savepoint> {
        wire.into_savepoint()
            .map_err(|message| super::Error::Decode {
                platform: self.api.platform().to_owned(),
                operation,
                url: self.path(""),
                message,
            })
    }

    /// After a 204: the resource goes, or stays with `status.pendingDeletion` while the job is down
    /// (CMF removes it once the job runs again).
    async fn follow_deletion(&self, target: &Target, savepoint: &Savepoint) -> Result<Deletion> {
        let started = std::time::Instant::now();
        let mut interval = std::time::Duration::from_millis(100);
        loop {
            match self.get(target, &savepoint.id).await {
                Err(e) if e.status() == Some(404) => return Ok(Deletion::Gone),
                Err(e) => return Err(e),
                Ok(s) if s.state == State::PendingDeletion => {
                    return Ok(Deletion::Pending(
                        "CMF removes it once the job runs again (status.pendingDeletion)".into(),
                    ));
                }
                Ok(_) if started.elapsed() >= DELETION_FOLLOW_LIMIT => {
                    return Err(super::Error::DeletionPending {
                        platform: self.api.platform().to_owned(),
                        id: savepoint.id.clone(),
                        after: DELETION_FOLLOW_LIMIT,
                    });
                }
                Ok(_) => {}
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(std::time::Duration::from_secs(5));
        }
    }
}

#[async_trait]
impl Platform for Cmf {
    fn name(&self) -> &str {
        self.api.platform()
    }

    async fn probe(&self) -> Result<()> {
        self.api
            .get::<serde::de::IgnoredAny>("probe", &self.path(""))
            .await
            .map(|_| ())
    }

    async fn resolve(&self, application: &str) -> Result<Target, ResolveError> {
        let kind = self.kind_of(application);
        let id = format!("{}/{application}", kind.collection());
        let found: Result<WireApplication> = self.api.get("resolve", &self.path(&id)).await;
        let found = match found {
            Ok(found) => found,
            Err(e) if e.status() == Some(404) => {
                return Err(ResolveError::Unresolved {
                    application: application.to_owned(),
                    looked: format!(
                        "no {} named {application} in CMF environment {}",
                        kind.noun(),
                        self.environment
                    ),
                });
            }
            Err(e) => return Err(ResolveError::Platform(Box::new(e))),
        };
        let state = found.job_state();
        if state.as_deref() != Some("RUNNING") {
            return Err(ResolveError::NotReady {
                application: application.to_owned(),
                reason: format!(
                    "CMF {} {application} is {}, not RUNNING",
                    kind.noun(),
                    state.as_deref().unwrap_or("without a job state yet")
                ),
            });
        }
        Ok(Target {
            application: application.to_owned(),
            source: format!(
                "CMF {} {application} in environment {}, job RUNNING",
                kind.noun(),
                self.environment
            ),
            warning: found.own_schedule().map(|schedule| {
                format!(
                    "CMF's own savepoint schedule is active on this {} ({schedule}); with savepointd \
                     too it gets savepoints from two schedulers: pause one of them",
                    kind.noun()
                )
            }),
            id,
        })
    }

    async fn trigger(&self, target: &Target, request: &TriggerRequest<'_>) -> Result<Savepoint> {
        let kind = self.kind_of(request.application);
        let name = savepoint_name(kind, request.application, request.slot, request.attempt);
        // backoffLimit 0: CMF's default (-1) retries a failing savepoint for ever and blocks the
        // application; savepointd retries itself, as a new attempt with a new name.
        let body = json!({
            "apiVersion": "cmf.confluent.io/v1",
            "kind": "Savepoint",
            "metadata": {
                "name": name,
                "labels": model::labels(request.application),
                "annotations": {
                    ANNOTATION_MANAGED_BY: MANAGED_BY,
                    ANNOTATION_APPLICATION: request.application,
                    ANNOTATION_SLOT: slot_text(request.slot),
                }
            },
            "spec": {
                "formatType": request.format_type.to_string(),
                "backoffLimit": 0,
            }
        });
        let wire: WireSavepoint = self
            .api
            .json(
                "trigger",
                Method::POST,
                &self.savepoints(target),
                Some(&body),
                Retry::OnlyIfNotSent,
            )
            .await?;
        self.decode("trigger", wire)
    }

    async fn get(&self, target: &Target, id: &str) -> Result<Savepoint> {
        let wire: WireSavepoint = self
            .api
            .get("get", &format!("{}/{id}", self.savepoints(target)))
            .await?;
        self.decode("get", wire)
    }

    /// Every page, until an empty one: CMF caps the page size, and one page is never assumed to be all.
    async fn list(&self, target: &Target) -> Result<Vec<Savepoint>> {
        let mut all = Vec::new();
        let mut seen = HashSet::new();
        for page in 0..MAX_PAGES {
            let path = format!("{}?page={page}&size={PAGE_SIZE}", self.savepoints(target));
            let answer: Page = self.api.get("list", &path).await?;
            if answer.items.is_empty() {
                return Ok(all);
            }
            let mut new = 0;
            for wire in answer.items {
                if seen.insert(wire.metadata.name.clone()) {
                    new += 1;
                    all.push(self.decode("list", wire)?);
                }
            }
            // A page of names already seen: the server ignores `page`. Going on would never end,
            // and stopping would pass a partial list off as whole.
            if new == 0 {
                return Err(super::Error::Decode {
                    platform: self.api.platform().to_owned(),
                    operation: "list",
                    url: path,
                    message: format!(
                        "page {page} repeats savepoints of earlier pages; the list cannot be read whole"
                    ),
                });
            }
        }
        Err(super::Error::Decode {
            platform: self.api.platform().to_owned(),
            operation: "list",
            url: self.savepoints(target),
            message: format!("more than {MAX_PAGES} pages of savepoints"),
        })
    }

    async fn delete(&self, target: &Target, savepoint: &Savepoint) -> Result<Deletion> {
        // Never `?force=true`: it drops the resource whatever happens to the data. A lost answer (or a
        // 503 from a disconnected cluster) may hide an accepted deletion: look before sending it again.
        let path = format!("{}/{}", self.savepoints(target), savepoint.id);
        let sent = self
            .api
            .delete_looked_into(&path, || async {
                match self.get(target, &savepoint.id).await {
                    Err(e) if e.status() == Some(404) => Ok(AfterLostDelete::Gone),
                    Err(e) => Err(e),
                    Ok(s) if s.state == State::PendingDeletion => Ok(AfterLostDelete::Accepted),
                    Ok(_) => Ok(AfterLostDelete::Untouched),
                }
            })
            .await?;
        if sent == DeleteSent::Gone {
            return Ok(Deletion::Gone);
        }
        self.follow_deletion(target, savepoint).await
    }
}

/// The name of one attempt at one slot ([`model::slot_resource_name`]): the kind is part of the hash, so
/// an application and a statement of one name get names of their own in the environment.
pub fn savepoint_name(kind: Kind, application: &str, slot: DateTime<Utc>, attempt: u32) -> String {
    model::slot_resource_name(kind.collection(), application, slot, attempt)
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    items: Vec<WireSavepoint>,
}

/// A FlinkApplication or a Statement, as far as resolving needs it.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireApplication {
    #[serde(default)]
    spec: Value,
    #[serde(default)]
    status: Value,
}

impl WireApplication {
    /// The job's state: `status.jobStatus.state` for an application (the Flink Kubernetes Operator's
    /// FlinkDeployment status), `status.phase` for a statement.
    fn job_state(&self) -> Option<String> {
        self.status
            .pointer("/jobStatus/state")
            .or_else(|| self.status.get("phase"))
            .and_then(Value::as_str)
            .map(str::to_ascii_uppercase)
    }

    /// CMF's own `spec.savepointSchedule`, described, when it is set and not paused.
    fn own_schedule(&self) -> Option<String> {
        let schedule = self.spec.get("savepointSchedule")?;
        if schedule.is_null() || schedule.get("paused").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        let cron = schedule
            .get("cronExpression")
            .or_else(|| schedule.get("schedule"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        Some(format!("spec.savepointSchedule \"{cron}\""))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSavepoint {
    metadata: WireMeta,
    #[serde(default)]
    spec: WireSpec,
    #[serde(default)]
    status: WireStatus,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: String,
    creation_timestamp: Option<DateTime<Utc>>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    path: Option<String>,
    #[serde(default)]
    pinned: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    state: Option<String>,
    source: Option<String>,
    path: Option<String>,
    trigger_timestamp: Option<DateTime<Utc>>,
    error: Option<Value>,
    #[serde(default)]
    pending_deletion: bool,
}

impl WireSavepoint {
    fn into_savepoint(self) -> Result<Savepoint, String> {
        let m = self.metadata;
        let created_at = m
            .creation_timestamp
            .or(self.status.trigger_timestamp)
            .ok_or_else(|| format!("savepoint {} has no metadata.creationTimestamp", m.name))?;
        // A deletion CMF accepted but cannot carry out while the job is down: neither in flight nor
        // deletable again.
        let state = if self.status.pending_deletion {
            State::PendingDeletion
        } else {
            match self.status.state.as_deref() {
                // Not reconciled yet: CMF has the request and has not started it.
                None | Some("TRIGGER_PENDING") => State::TriggerPending,
                Some("IN_PROGRESS") => State::InProgress,
                Some("COMPLETED") => State::Completed,
                Some("FAILED") => State::Failed,
                Some("ABANDONED") => State::Abandoned,
                Some(_) => State::Unknown,
            }
        };
        let origin = match self.status.source.as_deref() {
            // Before CMF recorded a source, every savepoint was asked for through the API.
            None | Some("MANUAL") => Origin::UserRequest,
            Some("UPGRADE") => Origin::Upgrade,
            Some("SCHEDULE") => Origin::Schedule,
            Some(_) => Origin::Unknown,
        };
        let managed = (m.annotations.get(ANNOTATION_MANAGED_BY).map(String::as_str)
            == Some(MANAGED_BY))
        .then(|| {
            let application = m.annotations.get(ANNOTATION_APPLICATION)?.clone();
            let slot = m
                .annotations
                .get(ANNOTATION_SLOT)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|s| s.with_timezone(&Utc));
            Some(Managed { application, slot })
        })
        .flatten();
        let failure = self.status.error.and_then(|e| match e {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s),
            Value::Object(ref o) => o
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| Some(e.to_string())),
            other => Some(other.to_string()),
        });
        Ok(Savepoint {
            id: m.name,
            created_at,
            state,
            origin,
            // A CMF savepoint is a whole savepoint, canonical or native: never an incremental
            // checkpoint.
            kind: SavepointType::Full,
            location: self
                .status
                .path
                .or(self.spec.path)
                .filter(|p| !p.is_empty()),
            failure,
            managed,
            protected: self.spec.pinned.then(|| "pinned (spec.pinned)".to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> DateTime<Utc> {
        "2026-11-20T01:00:00Z".parse().unwrap()
    }

    #[test]
    fn names_are_readable_valid_kubernetes_names_per_slot_and_attempt() {
        let name = savepoint_name(Kind::Application, "Fraud Detection", slot(), 1);
        assert!(name.starts_with("fraud-detection-"), "{name}");
        assert!(name.ends_with("-20261120-010000-1"), "{name}");
        for application in ["Fraud Detection", &"x".repeat(200), "日本", "--a--"] {
            let name = savepoint_name(Kind::Application, application, slot(), 12);
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(
                name.starts_with(|c: char| c.is_ascii_alphanumeric()),
                "{name}"
            );
        }
        assert_ne!(
            savepoint_name(Kind::Application, "a", slot(), 1),
            savepoint_name(Kind::Application, "a", slot(), 2)
        );
        assert_ne!(
            savepoint_name(Kind::Application, "a", slot(), 1),
            savepoint_name(
                Kind::Application,
                "a",
                slot() + chrono::Duration::seconds(1),
                1
            )
        );
    }

    #[test]
    fn names_that_sanitise_alike_and_statements_get_their_own_names() {
        let a = savepoint_name(Kind::Application, "Orders", slot(), 1);
        let b = savepoint_name(Kind::Application, "orders", slot(), 1);
        let c = savepoint_name(Kind::Statement, "orders", slot(), 1);
        let long = "y".repeat(40);
        let d = savepoint_name(Kind::Application, &format!("{long}-a"), slot(), 1);
        let e = savepoint_name(Kind::Application, &format!("{long}-b"), slot(), 1);
        let all: BTreeSet<_> = [&a, &b, &c, &d, &e].into_iter().collect();
        assert_eq!(all.len(), 5, "{all:?}");
    }

    #[test]
    fn decodes_the_reference_savepoint() {
        let wire: WireSavepoint = serde_json::from_value(json!({
            "apiVersion": "cmf.confluent.io/v1", "kind": "Savepoint",
            "metadata": {"name": "fraud-1a2b3c4d-20261120-010000-1",
              "creationTimestamp": "2026-11-20T01:00:02Z", "uid": "u",
              "labels": {"app.kubernetes.io/managed-by": "savepointd"},
              "annotations": {"savepointd.io/managed-by": "savepointd",
                "savepointd.io/application": "fraud", "savepointd.io/slot": "2026-11-20T01:00:00Z"}},
            "spec": {"formatType": "CANONICAL", "backoffLimit": 0, "pinned": true},
            "status": {"state": "FAILED", "source": "MANUAL", "error": "Checkpoint expired",
              "failures": 1}
        }))
        .unwrap();
        let s = wire.into_savepoint().unwrap();
        assert_eq!(s.state, State::Failed);
        assert_eq!(s.failure.as_deref(), Some("Checkpoint expired"));
        assert!(s.is_managed_slot("fraud", slot()));
        assert_eq!(s.origin, Origin::UserRequest);
        assert_eq!(s.protected.as_deref(), Some("pinned (spec.pinned)"));
    }

    #[test]
    fn pending_deletion_is_neither_in_flight_nor_deletable() {
        let wire: WireSavepoint = serde_json::from_value(json!({
            "metadata": {"name": "x", "creationTimestamp": "2026-11-20T01:00:02Z"},
            "status": {"state": "COMPLETED", "source": "UPGRADE", "path": "s3://b/sp-1",
              "pendingDeletion": true}
        }))
        .unwrap();
        let s = wire.into_savepoint().unwrap();
        assert_eq!(s.state, State::PendingDeletion);
        assert!(!s.state.is_in_flight() && !s.state.is_deletable());
        assert_eq!(s.origin, Origin::Upgrade);
        assert_eq!(s.location.as_deref(), Some("s3://b/sp-1"));
        assert_eq!(s.managed, None);
    }

    #[test]
    fn applications_and_statements_say_whether_their_job_runs() {
        let app: WireApplication = serde_json::from_value(json!({
            "spec": {"savepointSchedule": {"cronExpression": "0 0 * * * *", "paused": false}},
            "status": {"jobStatus": {"state": "RUNNING"}}
        }))
        .unwrap();
        assert_eq!(app.job_state().as_deref(), Some("RUNNING"));
        assert_eq!(
            app.own_schedule().as_deref(),
            Some("spec.savepointSchedule \"0 0 * * * *\"")
        );
        let paused: WireApplication = serde_json::from_value(json!({
            "spec": {"savepointSchedule": {"cronExpression": "0 0 * * * *", "paused": true}},
            "status": {"jobStatus": {"state": "SUSPENDED"}}
        }))
        .unwrap();
        assert_eq!(paused.own_schedule(), None);
        assert_eq!(paused.job_state().as_deref(), Some("SUSPENDED"));
        let statement: WireApplication =
            serde_json::from_value(json!({"status": {"phase": "RUNNING"}})).unwrap();
        assert_eq!(statement.job_state().as_deref(), Some("RUNNING"));
        assert_eq!(WireApplication::default().job_state(), None);
    }
}
