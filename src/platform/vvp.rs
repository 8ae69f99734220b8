//! Ververica Platform, appmanager API v1: the one place that knows its wire format
//! (`../shared/reference/apis.md`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{AfterLostDelete, ApiClient, DELETION_FOLLOW_LIMIT, DeleteSent, Retry};
use super::shared::{self, SharedListing};
use super::{
    ANNOTATION_APPLICATION, ANNOTATION_MANAGED_BY, ANNOTATION_SLOT, Deletion, MANAGED_BY, Managed,
    Origin, Platform, ResolveError, Result, Savepoint, SavepointType, State, Target,
    TriggerRequest,
};
use crate::model::{self, sanitize, slot_text};

pub struct Vvp {
    api: ApiClient,
    namespace: String,
    /// The namespace's deployments, one list per tick for every application that resolves through
    /// the API.
    deployments: SharedListing<Vec<WireDeployment>>,
    /// The namespace's savepoints, as the location check before a deletion reads them: one list for the
    /// deletions of a prune (and of prunes running together), never older than
    /// [`LOCATION_CHECK_FRESH_FOR`].
    namespace_savepoints: SharedListing<Vec<WireSavepoint>>,
}

/// How old the namespace's savepoint list may be when a deletion is checked against it. The deletions
/// of one prune are sent within it, so they share one list; a resource registered elsewhere at a
/// location longer ago than this is seen, as it was when every deletion listed the namespace itself
/// (that list, too, was a round trip old when the DELETE arrived).
const LOCATION_CHECK_FRESH_FOR: std::time::Duration = std::time::Duration::from_millis(250);

impl Vvp {
    pub fn new(api: ApiClient, namespace: String) -> Self {
        Self {
            api,
            namespace,
            deployments: SharedListing::new(shared::FRESH_FOR),
            namespace_savepoints: SharedListing::new(LOCATION_CHECK_FRESH_FOR),
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("api/v1/namespaces/{}/{rest}", self.namespace)
    }

    /// VVP deletes every resource that points to a location together. The planner sees one deployment's
    /// savepoints; a resource of another deployment (a COPIED registration, say) may point to the same
    /// data, and would be deleted with it. Such a deletion is refused here.
    async fn refuse_if_shared_elsewhere(
        &self,
        target: &Target,
        savepoint: &Savepoint,
    ) -> Result<()> {
        let Some(location) = savepoint.location.as_deref() else {
            return Ok(());
        };
        let all = self
            .namespace_savepoints
            .get(|| async {
                let all: List<WireSavepoint> =
                    self.api.get("list", &self.path("savepoints")).await?;
                Ok::<_, super::Error>(all.into_items())
            })
            .await?;
        let elsewhere = all.iter().find(|w| {
            w.spec.savepoint_location.as_deref() == Some(location)
                && w.metadata.deployment_id.as_deref() != Some(target.id.as_str())
        });
        match elsewhere {
            None => Ok(()),
            Some(w) => Err(super::Error::DeletionFailed {
                platform: self.api.platform().to_owned(),
                id: savepoint.id.clone(),
                message: format!(
                    "its location {location} is shared with savepoint {} of deployment {}, which VVP would delete too",
                    w.metadata.id,
                    w.metadata.deployment_id.as_deref().unwrap_or("?")
                ),
            }),
        }
    }

    fn decode(&self, operation: &'static str, wire: WireSavepoint) -> Result<Savepoint> {
        wire.into_savepoint()
            .map_err(|message| super::Error::Decode {
                platform: self.api.platform().to_owned(),
                operation,
                url: self.path("savepoints"),
                message,
            })
    }
}

#[async_trait]
impl Platform for Vvp {
    fn name(&self) -> &str {
        self.api.platform()
    }

    async fn probe(&self) -> Result<()> {
        self.api
            .get::<serde::de::IgnoredAny>("probe", &self.path("deployments"))
            .await
            .map(|_| ())
    }

    async fn resolve(&self, application: &str) -> Result<Target, ResolveError> {
        let deployments = self
            .deployments
            .get(|| async {
                let list: List<WireDeployment> = self
                    .api
                    .get("list_deployments", &self.path("deployments"))
                    .await?;
                Ok::<_, super::Error>(list.into_items())
            })
            .await
            .map_err(|e| ResolveError::Platform(Box::new(e)))?;
        let wanted = sanitize(application);
        let ids: Vec<String> = deployments
            .iter()
            .filter(|d| d.metadata.name == application || sanitize(&d.metadata.name) == wanted)
            .map(|d| d.metadata.id.clone())
            .collect();
        model::unique(
            application,
            ids,
            &format!(
                "no deployment named {application} in VVP namespace {}",
                self.namespace
            ),
            |id| format!("VVP deployment {id} in namespace {}", self.namespace),
        )
    }

    async fn trigger(&self, target: &Target, request: &TriggerRequest<'_>) -> Result<Savepoint> {
        // No spec: VVP takes a new savepoint (origin USER_REQUEST) instead of registering an existing one.
        let body = json!({
            "metadata": {
                "deploymentId": target.id,
                "annotations": {
                    ANNOTATION_MANAGED_BY: MANAGED_BY,
                    ANNOTATION_APPLICATION: request.application,
                    ANNOTATION_SLOT: slot_text(request.slot),
                }
            }
        });
        let wire: WireSavepoint = self
            .api
            .json(
                "trigger",
                Method::POST,
                &self.path("savepoints"),
                Some(&body),
                Retry::OnlyIfNotSent,
            )
            .await?;
        self.decode("trigger", wire)
    }

    async fn get(&self, _target: &Target, id: &str) -> Result<Savepoint> {
        let wire: WireSavepoint = self
            .api
            .get("get", &self.path(&format!("savepoints/{id}")))
            .await?;
        self.decode("get", wire)
    }

    async fn list(&self, target: &Target) -> Result<Vec<Savepoint>> {
        let list: List<WireSavepoint> = self
            .api
            .get(
                "list",
                &self.path(&format!("savepoints?deploymentId={}", target.id)),
            )
            .await?;
        list.into_items()
            .into_iter()
            .map(|w| self.decode("list", w))
            .collect()
    }

    async fn delete(&self, target: &Target, savepoint: &Savepoint) -> Result<Deletion> {
        self.refuse_if_shared_elsewhere(target, savepoint).await?;
        // Never `?force=true`: VVP's prerequisites are the last line of defence. A lost answer is not a
        // failed deletion: VVP may have accepted it, and a resend would meet a 409 (the resource is
        // PENDING_DELETION now), so the resource is looked at instead.
        let path = self.path(&format!("savepoints/{}", savepoint.id));
        let sent = self
            .api
            .delete_looked_into(&path, || async {
                match self.get(target, &savepoint.id).await {
                    Err(e) if e.status() == Some(404) => Ok(AfterLostDelete::Gone),
                    Err(e) => Err(e),
                    // Untouched: the DELETE did not arrive.
                    Ok(s) if s.state == savepoint.state => Ok(AfterLostDelete::Untouched),
                    Ok(_) => Ok(AfterLostDelete::Accepted),
                }
            })
            .await?;
        if sent == DeleteSent::Gone {
            return Ok(Deletion::Gone);
        }
        self.follow_deletion(target, savepoint)
            .await
            .map(|()| Deletion::Gone)
    }
}

impl Vvp {
    /// After a 202: PENDING_DELETION, then DELETING, then gone, or FAILED_DELETION.
    async fn follow_deletion(&self, target: &Target, savepoint: &Savepoint) -> Result<()> {
        let started = std::time::Instant::now();
        let mut interval = std::time::Duration::from_millis(100);
        loop {
            match self.get(target, &savepoint.id).await {
                Err(e) if e.status() == Some(404) => return Ok(()),
                Err(e) => return Err(e),
                Ok(s) if s.state == State::FailedDeletion => {
                    return Err(super::Error::DeletionFailed {
                        platform: self.api.platform().to_owned(),
                        id: savepoint.id.clone(),
                        message: s.failure.unwrap_or_else(|| "FAILED_DELETION".into()),
                    });
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

/// VVP 2.1+ answers lists as a ResourceList; 2.0 answered a bare array.
#[derive(Deserialize)]
#[serde(untagged)]
enum List<T> {
    Resource { items: Vec<T> },
    Bare(Vec<T>),
}

impl<T> List<T> {
    fn into_items(self) -> Vec<T> {
        match self {
            List::Resource { items } | List::Bare(items) => items,
        }
    }
}

#[derive(Deserialize)]
struct WireDeployment {
    metadata: WireDeploymentMeta,
}

#[derive(Deserialize)]
struct WireDeploymentMeta {
    id: String,
    name: String,
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
    id: String,
    deployment_id: Option<String>,
    created_at: Option<DateTime<Utc>>,
    origin: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    savepoint_location: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    state: Option<String>,
    failure: Option<Value>,
}

impl WireSavepoint {
    fn into_savepoint(self) -> Result<Savepoint, String> {
        let m = self.metadata;
        let created_at = m
            .created_at
            .ok_or_else(|| format!("savepoint {} has no metadata.createdAt", m.id))?;
        let state = match self.status.state.as_deref() {
            Some("STARTED") => State::InProgress,
            Some("COMPLETED") => State::Completed,
            Some("FAILED") => State::Failed,
            Some("PENDING_DELETION") => State::PendingDeletion,
            Some("DELETING") => State::Deleting,
            Some("FAILED_DELETION") => State::FailedDeletion,
            _ => State::Unknown,
        };
        let origin = match m.origin.as_deref() {
            Some("USER_REQUEST") => Origin::UserRequest,
            Some("SUSPEND") => Origin::Suspend,
            Some("SUSPEND_AND_UPGRADE") => Origin::SuspendAndUpgrade,
            Some("COPIED") => Origin::Copied,
            Some("RETAINED_CHECKPOINT") => Origin::RetainedCheckpoint,
            _ => Origin::Unknown,
        };
        // Absent before VVP 2.5: UNKNOWN, as the reference says.
        let kind = match m.kind.as_deref() {
            Some("FULL") => SavepointType::Full,
            Some("INCREMENTAL") => SavepointType::Incremental,
            _ => SavepointType::Unknown,
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
        let protected = refusal(origin, kind);
        let failure = self.status.failure.map(|f| {
            let field = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or_default();
            match (field("reason"), field("message")) {
                ("", "") => f.to_string(),
                (reason, "") => reason.to_owned(),
                ("", message) => message.to_owned(),
                (reason, message) => format!("{reason}: {message}"),
            }
        });
        Ok(Savepoint {
            id: m.id,
            created_at,
            state,
            origin,
            kind,
            location: self.spec.savepoint_location,
            failure,
            managed,
            protected,
        })
    }
}

/// Why VVP refuses to delete a savepoint of this origin and type, if it does (its deletion
/// prerequisites, apis.md): INCREMENTAL savepoints, RETAINED_CHECKPOINT origins, and type UNKNOWN
/// unless the origin is USER_REQUEST or SUSPEND. Asking would only earn a 409.
pub fn refusal(origin: Origin, kind: SavepointType) -> Option<String> {
    if kind == SavepointType::Incremental {
        return Some("incremental".into());
    }
    if origin == Origin::RetainedCheckpoint {
        return Some("retained checkpoint".into());
    }
    if kind == SavepointType::Unknown && !matches!(origin, Origin::UserRequest | Origin::Suspend) {
        return Some(format!(
            "type UNKNOWN with origin {} is not deletable",
            model::wire_name(&origin)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_reference_savepoint() {
        let wire: WireSavepoint = serde_json::from_value(json!({
            "apiVersion":"v1","kind":"Savepoint",
            "metadata":{"id":"5f1c","namespace":"default","createdAt":"2026-11-20T01:00:03.120Z",
              "modifiedAt":"2026-11-20T01:00:04.000Z","deploymentId":"d1","jobId":"j1",
              "origin":"USER_REQUEST","type":"FULL",
              "annotations":{"savepointd.io/managed-by":"savepointd","savepointd.io/application":"fraud",
                "savepointd.io/slot":"2026-11-20T01:00:00Z"},"resourceVersion":3},
            "spec":{"savepointLocation":"s3://flink/savepoints/savepoint-1a2b3c-4d5e6f7a8b9c","flinkSavepointId":"x"},
            "status":{"state":"FAILED","failure":{"reason":"SAVEPOINT_FAILED","message":"Checkpoint expired","failedAt":"…"}}
        }))
        .unwrap();
        let s = wire.into_savepoint().unwrap();
        assert_eq!(s.state, State::Failed);
        assert_eq!(s.origin, Origin::UserRequest);
        assert_eq!(s.kind, SavepointType::Full);
        assert_eq!(
            s.failure.as_deref(),
            Some("SAVEPOINT_FAILED: Checkpoint expired")
        );
        let slot = "2026-11-20T01:00:00Z".parse().unwrap();
        assert!(s.is_managed_slot("fraud", slot));
        assert_eq!(s.managed.as_ref().unwrap().slot, Some(slot));
        assert!(!s.is_managed_slot("other", slot));
    }

    #[test]
    fn old_versions_without_type_are_unknown_and_foreign_annotations_are_unmanaged() {
        let wire: WireSavepoint = serde_json::from_value(json!({
            "metadata":{"id":"a","createdAt":"2026-11-20T01:00:03Z","origin":"COPIED",
              "annotations":{"savepointd.io/managed-by":"someone-else"}},
            "status":{"state":"COMPLETED"}
        }))
        .unwrap();
        let s = wire.into_savepoint().unwrap();
        assert_eq!(s.kind, SavepointType::Unknown);
        assert_eq!(s.origin, Origin::Copied);
        assert_eq!(s.managed, None);
    }

    #[test]
    fn lists_come_in_both_shapes() {
        let a: List<Value> = serde_json::from_str(
            r#"{"apiVersion":"v1","kind":"ResourceList","metadata":{},"items":[1,2]}"#,
        )
        .unwrap();
        let b: List<Value> = serde_json::from_str("[1,2,3]").unwrap();
        assert_eq!(a.into_items().len(), 2);
        assert_eq!(b.into_items().len(), 3);
    }
}
