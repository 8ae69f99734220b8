//! The Apache Flink Kubernetes Operator (`flink.apache.org/v1beta1`): the one place that knows its
//! resources (`../shared/reference/apis.md`, Flink Kubernetes Operator section).
//!
//! savepointd schedules; the operator stays the one that talks to Flink. A savepoint is a
//! FlinkStateSnapshot that savepointd creates, named from (application, slot, attempt) — the slot's
//! identity (DESIGN.md §1): a resent create meets AlreadyExists and the runner adopts the slot's
//! snapshot. FlinkDeployments, FlinkSessionJobs and FlinkStateSnapshots are read from kube-runtime
//! reflectors, one per kind and namespace, so resolving, following and listing cost no request to the API
//! server; only creates, deletions and a read of a snapshot the cache has not seen yet do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::BoxFuture;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::http::DELETION_FOLLOW_LIMIT;
use super::{
    ANNOTATION_APPLICATION, ANNOTATION_MANAGED_BY, ANNOTATION_SLOT, Deletion, Error, MANAGED_BY,
    Managed, Origin, Platform, ResolveError, Result, Savepoint, SavepointType, State, Target,
    TriggerRequest, Watches,
};
use crate::metrics::Metrics;
use crate::model::{self, slot_text};

const GROUP: &str = "flink.apache.org";
const VERSION: &str = "v1beta1";

/// The label the operator puts on every snapshot: MANUAL, PERIODIC or UPGRADE.
const LABEL_TRIGGER_TYPE: &str = "snapshot.trigger-type";

/// The operator's own periodic savepoints, when this FlinkDeployment config key is set.
const PERIODIC_SAVEPOINT_INTERVAL: &str = "kubernetes.operator.periodic.savepoint.interval";

/// The kinds savepointd watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deployment,
    SessionJob,
    Snapshot,
}

impl Kind {
    fn resource(self) -> ApiResource {
        let (kind, plural) = match self {
            Kind::Deployment => ("FlinkDeployment", "flinkdeployments"),
            Kind::SessionJob => ("FlinkSessionJob", "flinksessionjobs"),
            Kind::Snapshot => ("FlinkStateSnapshot", "flinkstatesnapshots"),
        };
        ApiResource {
            group: GROUP.into(),
            version: VERSION.into(),
            api_version: format!("{GROUP}/{VERSION}"),
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Deployment => "FlinkDeployment",
            Kind::SessionJob => "FlinkSessionJob",
            Kind::Snapshot => "FlinkStateSnapshot",
        }
    }
}

/// One reflector: a kind in a namespace.
struct Cache {
    kind: Kind,
    namespace: String,
    store: Store<DynamicObject>,
}

pub struct FlinkOperator {
    platform: String,
    client: kube::Client,
    caches: Vec<Cache>,
    metrics: Metrics,
}

impl FlinkOperator {
    /// Starts the watches of every kind in every namespace. The drivers must be polled.
    pub fn watch(
        platform: &str,
        client: kube::Client,
        namespaces: &[String],
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> (FlinkOperator, Watches) {
        let mut caches = Vec::new();
        let mut drivers: Vec<BoxFuture<'static, ()>> = Vec::new();
        for namespace in namespaces {
            for kind in [Kind::Deployment, Kind::SessionJob, Kind::Snapshot] {
                let resource = kind.resource();
                let writer = reflector::store::Writer::new(resource.clone());
                let store = writer.as_reader();
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), namespace, &resource);
                let stream = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .modify(|o| o.metadata.managed_fields = None)
                    .reflect(writer);
                let (platform, namespace_shown, shutdown) =
                    (platform.to_owned(), namespace.clone(), shutdown.clone());
                drivers.push(Box::pin(async move {
                    let drive = stream.for_each(|event| {
                        if let Err(e) = event {
                            tracing::warn!(platform = %platform, namespace = %namespace_shown,
                                kind = kind.name(), error = %e, "watch failed; retrying");
                        }
                        futures::future::ready(())
                    });
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = drive => {}
                    }
                }));
                caches.push(Cache {
                    kind,
                    namespace: namespace.clone(),
                    store,
                });
            }
        }
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let stores: Vec<Store<DynamicObject>> = caches.iter().map(|c| c.store.clone()).collect();
        let (platform_name, shutdown_sync) = (platform.to_owned(), shutdown.clone());
        drivers.push(Box::pin(async move {
            let all = futures::future::join_all(stores.iter().map(|s| s.wait_until_ready()));
            tokio::select! {
                _ = shutdown_sync.cancelled() => {}
                results = all => {
                    if results.iter().all(Result::is_ok) {
                        tracing::info!(platform = %platform_name, "Flink Kubernetes Operator caches synced");
                        synced_tx.send_replace(true);
                    }
                }
            }
        }));
        let operator = FlinkOperator {
            platform: platform.to_owned(),
            client,
            caches,
            metrics,
        };
        (operator, Watches { drivers, synced })
    }

    fn objects(&self, kind: Kind) -> impl Iterator<Item = (&str, Arc<DynamicObject>)> + '_ {
        self.caches
            .iter()
            .filter(move |c| c.kind == kind)
            .flat_map(|c| {
                c.store
                    .state()
                    .into_iter()
                    .map(move |o| (c.namespace.as_str(), o))
            })
    }

    fn snapshots_api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &Kind::Snapshot.resource())
    }

    /// A Kubernetes error as a platform error: an API answer keeps its status (409 AlreadyExists is what
    /// makes the runner look for the slot's snapshot); anything else may have reached the API server.
    fn error(&self, operation: &'static str, url: String, e: kube::Error) -> Error {
        let code = match &e {
            kube::Error::Api(s) => s.code.to_string(),
            _ => "error".to_owned(),
        };
        self.metrics.api_request(&self.platform, operation, &code);
        match e {
            kube::Error::Api(s) => {
                self.metrics
                    .platform_up(&self.platform, !matches!(s.code, 401 | 403) && s.code < 500);
                Error::Status {
                    platform: self.platform.clone(),
                    operation,
                    url,
                    status: s.code,
                    message: if s.reason.is_empty() {
                        s.message.clone()
                    } else {
                        format!("{}: {}", s.reason, s.message)
                    },
                }
            }
            other => {
                self.metrics.platform_up(&self.platform, false);
                Error::NoAnswer {
                    platform: self.platform.clone(),
                    operation,
                    url,
                    message: other.to_string(),
                }
            }
        }
    }

    fn succeeded(&self, operation: &'static str, code: &str) {
        self.metrics.api_request(&self.platform, operation, code);
        self.metrics.platform_up(&self.platform, true);
    }

    fn is_synced(&self) -> bool {
        // A store answers `wait_until_ready` once its first list arrived; none may be missing.
        self.caches
            .iter()
            .all(|c| c.store.wait_until_ready().now_or_never_ready())
    }

    /// The target's job, read from the cache.
    fn job(&self, target: &Target) -> Option<Arc<DynamicObject>> {
        let (namespace, kind, name) = parse_target(&target.id)?;
        self.objects(kind)
            .find(|(ns, o)| *ns == namespace && o.metadata.name.as_deref() == Some(name))
            .map(|(_, o)| o)
    }
}

/// `<namespace>/<kind>/<name>`, as [`Target::id`] holds it.
fn parse_target(id: &str) -> Option<(&str, Kind, &str)> {
    let mut parts = id.splitn(3, '/');
    let namespace = parts.next()?;
    let kind = match parts.next()? {
        "FlinkDeployment" => Kind::Deployment,
        "FlinkSessionJob" => Kind::SessionJob,
        _ => return None,
    };
    Some((namespace, kind, parts.next()?))
}

trait ReadyNow {
    fn now_or_never_ready(self) -> bool;
}

impl<F: Future<Output = std::result::Result<(), reflector::store::WriterDropped>>> ReadyNow for F {
    /// Whether the store is ready at this moment, without waiting.
    fn now_or_never_ready(self) -> bool {
        matches!(futures::FutureExt::now_or_never(self), Some(Ok(())))
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// Why a job is not ready for a savepoint, or `None` when it is: its job RUNNING, and for a
/// FlinkDeployment the JobManager's REST API reachable (READY).
fn not_ready(kind: Kind, job: &DynamicObject) -> Option<String> {
    let status = job.data.get("status").cloned().unwrap_or(Value::Null);
    let state = str_at(&status, "/jobStatus/state");
    let lifecycle = str_at(&status, "/lifecycleState");
    let jm = str_at(&status, "/jobManagerDeploymentStatus");
    let described = || {
        let mut parts = vec![format!("job {}", state.unwrap_or("without a state yet"))];
        if let Some(l) = lifecycle {
            parts.push(format!("lifecycle {l}"));
        }
        if kind == Kind::Deployment {
            parts.push(format!("JobManager {}", jm.unwrap_or("not reported")));
        }
        parts.join(", ")
    };
    let running = state == Some("RUNNING");
    let reachable = kind != Kind::Deployment || jm == Some("READY");
    (!(running && reachable)).then(|| format!("the operator reports {}", described()))
}

/// The operator's own periodic savepoints on a FlinkDeployment, when configured.
fn own_periodic_savepoints(job: &DynamicObject) -> Option<String> {
    let interval = job
        .data
        .pointer("/spec/flinkConfiguration")
        .and_then(|c| c.get(PERIODIC_SAVEPOINT_INTERVAL))
        .and_then(Value::as_str)?
        .trim();
    let off = interval.is_empty()
        || interval
            .trim_start_matches('0')
            .trim_start_matches(|c: char| c.is_ascii_alphabetic() || c == ' ')
            .is_empty();
    (!off).then(|| {
        format!(
            "the operator's own periodic savepoints are on for this job ({PERIODIC_SAVEPOINT_INTERVAL}: \
             {interval}); with savepointd too it gets savepoints from two schedulers: turn one off"
        )
    })
}

/// A FlinkStateSnapshot as savepointd sees it.
fn to_savepoint(object: &DynamicObject) -> Option<Savepoint> {
    let m = &object.metadata;
    let name = m.name.clone()?;
    let created_at = m.creation_timestamp.as_ref().map(|t| t.0)?;
    let created_at = DateTime::<Utc>::from_timestamp(created_at.as_second(), 0)?;
    let status = object.data.get("status").cloned().unwrap_or(Value::Null);
    let spec = object.data.get("spec").cloned().unwrap_or(Value::Null);
    // Terminating: the operator's finalizer is disposing of it (or waits for the job to run).
    let state = if m.deletion_timestamp.is_some() {
        State::Deleting
    } else {
        match str_at(&status, "/state") {
            None | Some("TRIGGER_PENDING") => State::TriggerPending,
            Some("IN_PROGRESS") => State::InProgress,
            Some("COMPLETED") => State::Completed,
            Some("FAILED") => State::Failed,
            Some("ABANDONED") => State::Abandoned,
            Some(_) => State::Unknown,
        }
    };
    let labels = m.labels.clone().unwrap_or_default();
    let origin = match labels.get(LABEL_TRIGGER_TYPE).map(String::as_str) {
        // The operator sets MANUAL when the label is absent.
        None | Some("MANUAL") => Origin::UserRequest,
        Some("PERIODIC") => Origin::Periodic,
        Some("UPGRADE") => Origin::Upgrade,
        Some(_) => Origin::Unknown,
    };
    let checkpoint = spec.get("checkpoint").is_some_and(|c| !c.is_null());
    let annotations: BTreeMap<String, String> = m.annotations.clone().unwrap_or_default();
    let managed = (annotations.get(ANNOTATION_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY))
        .then(|| {
            let application = annotations.get(ANNOTATION_APPLICATION)?.clone();
            let slot = annotations
                .get(ANNOTATION_SLOT)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|s| s.with_timezone(&Utc));
            Some(Managed { application, slot })
        })
        .flatten();
    let protected = if checkpoint {
        Some("a checkpoint snapshot, not a savepoint".to_owned())
    } else if origin == Origin::Upgrade {
        // The operator restores an upgrade from it; its own cleanup has disposed of such snapshots
        // too early (FLINK-38033).
        Some("an upgrade savepoint the operator may restore from".to_owned())
    } else {
        None
    };
    Some(Savepoint {
        id: name,
        created_at,
        state,
        origin,
        kind: if checkpoint {
            SavepointType::Unknown
        } else {
            SavepointType::Full
        },
        location: str_at(&status, "/path")
            .filter(|p| !p.is_empty())
            .map(str::to_owned),
        failure: str_at(&status, "/error")
            .filter(|e| !e.is_empty())
            .map(str::to_owned),
        managed,
        protected,
    })
}

#[async_trait]
impl Platform for FlinkOperator {
    fn name(&self) -> &str {
        &self.platform
    }

    /// One list per namespace of the snapshots (limit 1): the API server answers, and RBAC lets
    /// savepointd read what it must create and delete.
    async fn probe(&self) -> Result<()> {
        for cache in self.caches.iter().filter(|c| c.kind == Kind::Snapshot) {
            let url = format!("namespaces/{}/flinkstatesnapshots", cache.namespace);
            match self
                .snapshots_api(&cache.namespace)
                .list_metadata(&kube::api::ListParams::default().limit(1))
                .await
            {
                Ok(_) => self.succeeded("probe", "200"),
                Err(e) => return Err(self.error("probe", url, e)),
            }
        }
        Ok(())
    }

    async fn resolve(&self, application: &str) -> Result<Target, ResolveError> {
        if !self.is_synced() {
            return Err(ResolveError::NotSynced);
        }
        let found: Vec<(Kind, String, Arc<DynamicObject>)> = [Kind::Deployment, Kind::SessionJob]
            .into_iter()
            .flat_map(|kind| {
                self.objects(kind)
                    .filter(|(_, o)| o.metadata.name.as_deref() == Some(application))
                    .map(move |(ns, o)| (kind, ns.to_owned(), o))
                    .collect::<Vec<_>>()
            })
            .collect();
        let (kind, namespace, job) = match found.as_slice() {
            [] => {
                let namespaces: Vec<&str> = self
                    .caches
                    .iter()
                    .filter(|c| c.kind == Kind::Snapshot)
                    .map(|c| c.namespace.as_str())
                    .collect();
                return Err(ResolveError::Unresolved {
                    application: application.to_owned(),
                    looked: format!(
                        "no FlinkDeployment or FlinkSessionJob named {application} in namespace(s) {}",
                        namespaces.join(", ")
                    ),
                });
            }
            [one] => one.clone(),
            many => {
                return Err(ResolveError::Ambiguous {
                    application: application.to_owned(),
                    ids: many
                        .iter()
                        .map(|(kind, ns, _)| format!("{ns}/{}/{application}", kind.name()))
                        .collect(),
                });
            }
        };
        if let Some(reason) = not_ready(kind, &job) {
            return Err(ResolveError::NotReady {
                application: application.to_owned(),
                reason: format!("{} {namespace}/{application}: {reason}", kind.name()),
            });
        }
        Ok(Target {
            application: application.to_owned(),
            id: format!("{namespace}/{}/{application}", kind.name()),
            source: format!(
                "{} {namespace}/{application} (job RUNNING), from the watch cache",
                kind.name()
            ),
            warning: own_periodic_savepoints(&job),
        })
    }

    async fn trigger(&self, target: &Target, request: &TriggerRequest<'_>) -> Result<Savepoint> {
        let Some((namespace, kind, job)) = parse_target(&target.id) else {
            return Err(self.bad_target(target));
        };
        let name = model::slot_resource_name(
            kind.name(),
            request.application,
            request.slot,
            request.attempt,
        );
        // Never labelled snapshot.trigger-type PERIODIC or UPGRADE: the operator prunes those as its
        // own. backoffLimit 0: savepointd retries itself, as a new attempt under a new name.
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": "FlinkStateSnapshot",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": model::labels(request.application),
                "annotations": {
                    ANNOTATION_MANAGED_BY: MANAGED_BY,
                    ANNOTATION_APPLICATION: request.application,
                    ANNOTATION_SLOT: slot_text(request.slot),
                }
            },
            "spec": {
                "backoffLimit": 0,
                "jobReference": { "kind": kind.name(), "name": job },
                "savepoint": {
                    "formatType": request.format_type.to_string(),
                    "disposeOnDelete": true,
                    "alreadyExists": false,
                }
            }
        }))
        .expect("a FlinkStateSnapshot is a valid object");
        let url = format!("namespaces/{namespace}/flinkstatesnapshots");
        match self
            .snapshots_api(namespace)
            .create(&PostParams::default(), &object)
            .await
        {
            Ok(created) => {
                self.succeeded("trigger", "201");
                to_savepoint(&created).ok_or_else(|| self.decode("trigger", &name))
            }
            Err(e) => Err(self.error("trigger", url, e)),
        }
    }

    /// From the cache; a snapshot it has not seen yet (just created) is read once from the API server.
    async fn get(&self, target: &Target, id: &str) -> Result<Savepoint> {
        let Some((namespace, _, _)) = parse_target(&target.id) else {
            return Err(self.bad_target(target));
        };
        let cached = self
            .objects(Kind::Snapshot)
            .find(|(ns, o)| *ns == namespace && o.metadata.name.as_deref() == Some(id));
        if let Some((_, object)) = cached {
            return to_savepoint(&object).ok_or_else(|| self.decode("get", id));
        }
        let url = format!("namespaces/{namespace}/flinkstatesnapshots/{id}");
        match self.snapshots_api(namespace).get(id).await {
            Ok(object) => {
                self.succeeded("get", "200");
                to_savepoint(&object).ok_or_else(|| self.decode("get", id))
            }
            Err(e) => Err(self.error("get", url, e)),
        }
    }

    /// The snapshots whose `spec.jobReference` is the target, whoever made them, from the cache.
    async fn list(&self, target: &Target) -> Result<Vec<Savepoint>> {
        let Some((namespace, kind, job)) = parse_target(&target.id) else {
            return Err(self.bad_target(target));
        };
        if !self.is_synced() {
            return Err(Error::Decode {
                platform: self.platform.clone(),
                operation: "list",
                url: format!("namespaces/{namespace}/flinkstatesnapshots"),
                message:
                    "the snapshot cache has not synced yet; a partial list would mislead retention"
                        .into(),
            });
        }
        Ok(self
            .objects(Kind::Snapshot)
            .filter(|(ns, _)| *ns == namespace)
            .filter(|(_, o)| {
                let reference = o.data.pointer("/spec/jobReference");
                let field = |k: &str| reference.and_then(|r| r.get(k)).and_then(Value::as_str);
                field("name") == Some(job) && field("kind").is_none_or(|k| k == kind.name())
            })
            .filter_map(|(_, o)| to_savepoint(&o))
            .collect())
    }

    async fn delete(&self, target: &Target, savepoint: &Savepoint) -> Result<Deletion> {
        let Some((namespace, _, _)) = parse_target(&target.id) else {
            return Err(self.bad_target(target));
        };
        let url = format!(
            "namespaces/{namespace}/flinkstatesnapshots/{}",
            savepoint.id
        );
        match self
            .snapshots_api(namespace)
            .delete(&savepoint.id, &DeleteParams::default())
            .await
        {
            Ok(_) => self.succeeded("delete", "200"),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.succeeded("delete", "404");
                return Ok(Deletion::Gone);
            }
            Err(e) => return Err(self.error("delete", url, e)),
        }
        // The operator's finalizer disposes of the savepoint through the JobManager, then lets the
        // resource go. While the job is down it cannot: the resource stays Terminating.
        let started = Instant::now();
        let mut interval = Duration::from_millis(100);
        loop {
            let present = self.objects(Kind::Snapshot).any(|(ns, o)| {
                ns == namespace && o.metadata.name.as_deref() == Some(&savepoint.id)
            });
            if !present {
                return Ok(Deletion::Gone);
            }
            if let Some(job) = self.job(target)
                && not_ready(
                    parse_target(&target.id).map_or(Kind::Deployment, |t| t.1),
                    &job,
                )
                .is_some()
            {
                return Ok(Deletion::Pending(
                    "the operator disposes of it once the job runs again (Terminating)".into(),
                ));
            }
            if started.elapsed() >= DELETION_FOLLOW_LIMIT {
                return Err(Error::DeletionPending {
                    platform: self.platform.clone(),
                    id: savepoint.id.clone(),
                    after: DELETION_FOLLOW_LIMIT,
                });
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_secs(2));
        }
    }
}

impl FlinkOperator {
    fn bad_target(&self, target: &Target) -> Error {
        Error::Setup {
            platform: self.platform.clone(),
            message: format!("target {} is not <namespace>/<kind>/<name>", target.id),
        }
    }

    fn decode(&self, operation: &'static str, name: &str) -> Error {
        Error::Decode {
            platform: self.platform.clone(),
            operation,
            url: format!("flinkstatesnapshots/{name}"),
            message: "a FlinkStateSnapshot without name or creationTimestamp".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn reads_a_snapshot_as_the_operator_writes_it() {
        let s = to_savepoint(&object(json!({
            "apiVersion": "flink.apache.org/v1beta1", "kind": "FlinkStateSnapshot",
            "metadata": {"name": "orders-1-20261120-010000-1", "namespace": "flink",
                "creationTimestamp": "2026-11-20T01:00:01Z",
                "labels": {"snapshot.trigger-type": "MANUAL", "snapshot.state": "COMPLETED"},
                "annotations": {"savepointd.io/managed-by": "savepointd",
                    "savepointd.io/application": "orders", "savepointd.io/slot": "2026-11-20T01:00:00Z"}},
            "spec": {"jobReference": {"kind": "FlinkDeployment", "name": "orders"},
                "savepoint": {"formatType": "CANONICAL", "disposeOnDelete": true}},
            "status": {"state": "COMPLETED", "path": "s3://b/savepoint-1", "triggerId": "t"}
        })))
        .unwrap();
        assert_eq!(s.state, State::Completed);
        assert_eq!(s.origin, Origin::UserRequest);
        assert_eq!(s.location.as_deref(), Some("s3://b/savepoint-1"));
        assert!(s.is_managed_slot("orders", "2026-11-20T01:00:00Z".parse().unwrap()));
        assert_eq!(s.protected, None);
    }

    #[test]
    fn terminating_upgrade_and_checkpoint_snapshots_are_never_deletable() {
        let base = |extra: Value| {
            let mut v = json!({
                "metadata": {"name": "x", "creationTimestamp": "2026-11-20T01:00:01Z"},
                "spec": {"savepoint": {}},
                "status": {"state": "COMPLETED"}
            });
            for (k, val) in extra.as_object().unwrap() {
                for (k2, val2) in val.as_object().unwrap() {
                    v[k][k2] = val2.clone();
                }
            }
            to_savepoint(&object(v)).unwrap()
        };
        let terminating = base(json!({"metadata": {"deletionTimestamp": "2026-11-20T02:00:00Z"}}));
        assert_eq!(terminating.state, State::Deleting);
        assert!(!terminating.state.is_deletable());
        let upgrade = base(json!({"metadata": {"labels": {"snapshot.trigger-type": "UPGRADE"}}}));
        assert_eq!(upgrade.origin, Origin::Upgrade);
        assert!(upgrade.protected.is_some());
        let periodic = base(json!({"metadata": {"labels": {"snapshot.trigger-type": "PERIODIC"}}}));
        assert_eq!(periodic.origin, Origin::Periodic);
        assert!(periodic.protected.is_none());
        let checkpoint = base(json!({"spec": {"checkpoint": {}}}));
        assert!(checkpoint.protected.is_some());
    }

    #[test]
    fn a_job_is_ready_when_running_with_its_jobmanager_reachable() {
        let deployment = |state: &str, jm: &str| {
            object(json!({"metadata": {"name": "orders"},
                "status": {"jobStatus": {"state": state}, "jobManagerDeploymentStatus": jm,
                    "lifecycleState": "STABLE"}}))
        };
        assert_eq!(
            not_ready(Kind::Deployment, &deployment("RUNNING", "READY")),
            None
        );
        let why = not_ready(Kind::Deployment, &deployment("RUNNING", "DEPLOYING")).unwrap();
        assert!(why.contains("JobManager DEPLOYING"), "{why}");
        let why = not_ready(Kind::Deployment, &deployment("SUSPENDED", "MISSING")).unwrap();
        assert!(why.contains("job SUSPENDED"), "{why}");
        let session = object(
            json!({"metadata": {"name": "s"}, "status": {"jobStatus": {"state": "RUNNING"}}}),
        );
        assert_eq!(not_ready(Kind::SessionJob, &session), None);
    }

    #[test]
    fn the_operators_own_periodic_savepoints_are_pointed_out() {
        let with = |interval: &str| {
            object(json!({"metadata": {"name": "orders"},
                "spec": {"flinkConfiguration": {PERIODIC_SAVEPOINT_INTERVAL: interval}}}))
        };
        assert!(own_periodic_savepoints(&with("6h")).is_some());
        assert_eq!(own_periodic_savepoints(&with("0")), None);
        assert_eq!(own_periodic_savepoints(&with("")), None);
        assert_eq!(
            own_periodic_savepoints(&object(json!({"metadata": {"name": "o"}}))),
            None
        );
    }

    #[test]
    fn targets_name_namespace_kind_and_job() {
        assert_eq!(
            parse_target("flink/FlinkSessionJob/orders"),
            Some(("flink", Kind::SessionJob, "orders"))
        );
        assert_eq!(parse_target("flink/Pod/orders"), None);
    }
}
