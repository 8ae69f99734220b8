//! A small simulation of the Apache Flink Kubernetes Operator's FlinkStateSnapshot controller,
//! after its code (`FlinkStateSnapshotController`, `StateSnapshotReconciler`,
//! `StateSnapshotObserver`, `FlinkStateSnapshotUtils`, `DefaultValidator.validateStateSnapshot` in
//! apache/flink-kubernetes-operator) and `shared/reference/apis.md`. It runs against the fake's
//! store as the operator runs against an API server: it looks again after every change and when one
//! of its timers is due, and every step it takes is a write, so watches see each one.
//!
//! What it does, as the operator does:
//! - adds its finalizer to every snapshot it sees, and keeps its labels current: `snapshot.type`,
//!   `snapshot.trigger-type` (MANUAL when absent), `snapshot.state`, and `job-reference.kind` and
//!   `job-reference.name` once the target exists;
//! - a snapshot with neither or both of `spec.savepoint` and `spec.checkpoint`, without a job
//!   reference, or whose target does not exist fails the operator's validation: it gets no status
//!   at all (its `snapshot.state` label says TRIGGER_PENDING, the operator's in-memory default),
//!   until the target appears;
//! - `spec.savepoint.alreadyExists`: COMPLETED at once, with the spec's path;
//! - otherwise, `trigger_after` later: ABANDONED with an `error` when the target's job is not
//!   RUNNING, else IN_PROGRESS with a `triggerId` and `triggerTimestamp`. There is no
//!   TRIGGER_PENDING status before it: the operator's first status write is IN_PROGRESS;
//! - IN_PROGRESS: ABANDONED as soon as the job stops or its resource goes; `complete_after` after
//!   the trigger, COMPLETED with `path` and `resultTimestamp`, or, when the test made the target's
//!   savepoints fail, `failures` + 1 and `error`: FAILED once `failures > backoffLimit`
//!   (`backoffLimit` -1, the default, retries for ever), otherwise TRIGGER_PENDING and a new trigger
//!   `retry_after · 2^(failures−1)` later (the operator's 10 s · 2^(n−1), scaled down);
//! - on deletion (its finalizer): checkpoints, savepoints with `disposeOnDelete: false`, and
//!   snapshots FAILED, ABANDONED or never triggered go without disposal; COMPLETED savepoints are
//!   disposed (recorded as a [`Disposal`]) `dispose_after` later, and only while the job is
//!   RUNNING: otherwise they stay Terminating until it runs again. IN_PROGRESS ones wait: the
//!   operator only runs its cleanup on a resource marked for deletion and no longer observes the
//!   savepoint, so they stay IN_PROGRESS and Terminating for good, unless
//!   [`OperatorOptions::observe_while_deleting`] lets them end first.
//!
//! Not simulated: the operator's own periodic and upgrade snapshots (tests seed them, see
//! [`savepoint_snapshot`]), its snapshot history cleanup, Kubernetes events, the reconcile interval.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::{
    FLINK_DEPLOYMENTS, FLINK_SESSION_JOBS, FLINK_STATE_SNAPSHOTS, ResourceType, new_object_metadata,
};
use super::{Cluster, KubeFake, Shared, finalizers, key_of};
use crate::support::{lock, random_hex};

/// The finalizer the operator (through its Java Operator SDK) puts on every snapshot.
pub const FINALIZER: &str = "flinkstatesnapshots.flink.apache.org/finalizer";

#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// From the operator's first sight of a snapshot (or a retry's start) to its trigger.
    pub trigger_after: Duration,
    /// From the trigger to COMPLETED, or to a failed attempt.
    pub complete_after: Duration,
    /// The wait before the first retry of a failed savepoint; each next one waits twice as long.
    pub retry_after: Duration,
    /// From a deletion, or from the job's return to RUNNING, to the disposal of a COMPLETED
    /// savepoint.
    pub dispose_after: Duration,
    /// Keeps observing an IN_PROGRESS snapshot after its deletion, so that it ends and is then
    /// cleaned up by its final state. The operator does not (see the module doc): `false`.
    pub observe_while_deleting: bool,
}

impl Default for OperatorOptions {
    fn default() -> Self {
        Self {
            trigger_after: Duration::from_millis(30),
            complete_after: Duration::from_millis(100),
            retry_after: Duration::from_millis(50),
            dispose_after: Duration::from_millis(30),
            observe_while_deleting: false,
        }
    }
}

/// A savepoint the operator disposed of before letting its resource go.
#[derive(Clone, Debug)]
pub struct Disposal {
    pub namespace: String,
    pub name: String,
    pub path: String,
    /// The snapshot's state when disposed: COMPLETED, the only one the operator disposes of.
    pub state: String,
    /// Its `snapshot.trigger-type` label.
    pub trigger_type: String,
    /// The job it belongs to (`spec.jobReference.name`).
    pub job: String,
    /// The snapshot as it stood.
    pub snapshot: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    FlinkDeployment,
    FlinkSessionJob,
}

impl JobKind {
    fn resource(self) -> &'static ResourceType {
        match self {
            JobKind::FlinkDeployment => &FLINK_DEPLOYMENTS,
            JobKind::FlinkSessionJob => &FLINK_SESSION_JOBS,
        }
    }

    fn parse(kind: &str) -> Option<JobKind> {
        match kind {
            "FlinkDeployment" => Some(JobKind::FlinkDeployment),
            "FlinkSessionJob" => Some(JobKind::FlinkSessionJob),
            _ => None,
        }
    }
}

/// The status fields of a FlinkDeployment or FlinkSessionJob that matter to snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlinkStatus {
    /// `status.jobStatus.state`: RUNNING, SUSPENDED, FAILED, CANCELED, FINISHED, RECONCILING, …
    pub job_state: String,
    /// `status.lifecycleState`: STABLE, DEPLOYED, UPGRADING, SUSPENDED, FAILED, …
    pub lifecycle_state: String,
    /// `status.jobManagerDeploymentStatus`: READY, DEPLOYING, DEPLOYED_NOT_READY, MISSING, ERROR.
    /// A FlinkSessionJob has none (its session cluster's FlinkDeployment does).
    pub job_manager_deployment_status: String,
}

impl FlinkStatus {
    /// A job in `job_state`, with the lifecycle state and JobManager status that go with it.
    pub fn job(job_state: &str) -> FlinkStatus {
        let (lifecycle, job_manager) = match job_state {
            "RUNNING" | "FINISHED" | "CANCELED" => ("STABLE", "READY"),
            "SUSPENDED" => ("SUSPENDED", "MISSING"),
            "FAILED" => ("FAILED", "READY"),
            "RECONCILING" | "CREATED" | "INITIALIZING" => ("DEPLOYED", "DEPLOYING"),
            _ => ("STABLE", "READY"),
        };
        FlinkStatus {
            job_state: job_state.into(),
            lifecycle_state: lifecycle.into(),
            job_manager_deployment_status: job_manager.into(),
        }
    }
}

/// The operator's state of mind: its timers, and what tests told it.
pub(super) struct Operator {
    options: OperatorOptions,
    running: bool,
    /// When a snapshot's next step is due, by uid.
    due: HashMap<String, Instant>,
    /// When a deleted COMPLETED savepoint is disposed of, by uid.
    dispose_due: HashMap<String, Instant>,
    /// (namespace, job name) whose savepoints fail, with the error.
    failing: HashMap<(String, String), String>,
    /// (namespace, job name) whose savepoints stay IN_PROGRESS.
    held: HashSet<(String, String)>,
    /// (namespace, job name) whose disposals fail: their snapshots stay Terminating.
    failing_disposals: HashSet<(String, String)>,
    disposals: Vec<Disposal>,
    checkpoints: u64,
}

impl Operator {
    pub(super) fn new(options: OperatorOptions) -> Operator {
        Operator {
            options,
            running: true,
            due: HashMap::new(),
            dispose_due: HashMap::new(),
            failing: HashMap::new(),
            held: HashSet::new(),
            failing_disposals: HashSet::new(),
            disposals: Vec::new(),
            checkpoints: 0,
        }
    }
}

impl KubeFake {
    /// Creates a FlinkDeployment with this status, or gives an existing one this status (keeping
    /// its uid, spec and job id). Returns it as stored.
    pub fn put_flink_deployment(&self, namespace: &str, name: &str, status: FlinkStatus) -> Value {
        self.put_flink_job(JobKind::FlinkDeployment, namespace, name, None, status)
    }

    /// The same for a FlinkSessionJob of the session cluster `deployment`.
    pub fn put_flink_session_job(
        &self,
        namespace: &str,
        name: &str,
        deployment: &str,
        status: FlinkStatus,
    ) -> Value {
        self.put_flink_job(
            JobKind::FlinkSessionJob,
            namespace,
            name,
            Some(deployment),
            status,
        )
    }

    /// Changes the status of an existing FlinkDeployment or FlinkSessionJob (a MODIFIED event).
    pub fn set_flink_status(
        &self,
        kind: JobKind,
        namespace: &str,
        name: &str,
        status: FlinkStatus,
    ) {
        assert!(
            self.flink_job(kind, namespace, name).is_some(),
            "set_flink_status: no {kind:?} {namespace}/{name}"
        );
        self.put_flink_job(kind, namespace, name, None, status);
    }

    /// A FlinkDeployment or FlinkSessionJob as stored.
    pub fn flink_job(&self, kind: JobKind, namespace: &str, name: &str) -> Option<Value> {
        self.cluster()
            .get(kind.resource().plural, namespace, name)
            .cloned()
    }

    /// Removes a FlinkDeployment or FlinkSessionJob (DELETED).
    pub fn delete_flink_job(&self, kind: JobKind, namespace: &str, name: &str) {
        let removed = self
            .cluster()
            .remove(kind.resource(), &(namespace.into(), name.into()));
        assert!(
            removed.is_some(),
            "delete_flink_job: no {kind:?} {namespace}/{name}"
        );
    }

    fn put_flink_job(
        &self,
        kind: JobKind,
        namespace: &str,
        name: &str,
        deployment: Option<&str>,
        status: FlinkStatus,
    ) -> Value {
        let mut cluster = self.cluster();
        let resource = kind.resource();
        let mut object = match cluster.get(resource.plural, namespace, name) {
            Some(current) => current.clone(),
            None => new_flink_job(kind, name, deployment),
        };
        new_object_metadata(&mut object, namespace);
        let now = Utc::now().timestamp_millis().to_string();
        let job_status = &mut object["status"]["jobStatus"];
        job_status["state"] = json!(status.job_state);
        job_status["updateTime"] = json!(now);
        object["status"]["lifecycleState"] = json!(status.lifecycle_state);
        if kind == JobKind::FlinkDeployment {
            object["status"]["jobManagerDeploymentStatus"] =
                json!(status.job_manager_deployment_status);
        }
        let desired = if status.job_state == "SUSPENDED" {
            "suspended"
        } else {
            "running"
        };
        object["spec"]["job"]["state"] = json!(desired);
        cluster.write(resource, object)
    }

    /// The FlinkStateSnapshots of a namespace, by name.
    pub fn snapshots(&self, namespace: &str) -> Vec<Value> {
        self.cluster()
            .list(FLINK_STATE_SNAPSHOTS.plural)
            .filter(|s| key_of(s).0 == namespace)
            .cloned()
            .collect()
    }

    pub fn snapshot(&self, namespace: &str, name: &str) -> Option<Value> {
        self.cluster()
            .get(FLINK_STATE_SNAPSHOTS.plural, namespace, name)
            .cloned()
    }

    /// Stores a FlinkStateSnapshot as given (status included, which the API would not let a client
    /// set), filling in `apiVersion`, `kind` and the metadata the API server sets when missing:
    /// a snapshot the operator made itself, or one made by hand before the test began. The
    /// operator simulation then treats it as any other. Returns it as stored.
    pub fn seed_snapshot(&self, namespace: &str, snapshot: Value) -> Value {
        let mut object = snapshot;
        object["apiVersion"] = json!(FLINK_STATE_SNAPSHOTS.api_version());
        object["kind"] = json!(FLINK_STATE_SNAPSHOTS.kind);
        new_object_metadata(&mut object, namespace);
        self.cluster().write(&FLINK_STATE_SNAPSHOTS, object)
    }

    /// Every savepoint disposed of, in order.
    pub fn disposals(&self) -> Vec<Disposal> {
        self.cluster().operator.disposals.clone()
    }

    /// Savepoints of this job that end from now on fail with `error` (and are retried up to their
    /// `backoffLimit`).
    pub fn fail_savepoints_of(&self, namespace: &str, job: &str, error: &str) {
        self.instruct(|o| {
            o.failing
                .insert((namespace.into(), job.into()), error.into());
        });
    }

    pub fn heal_savepoints_of(&self, namespace: &str, job: &str) {
        self.instruct(|o| {
            o.failing.remove(&(namespace.into(), job.into()));
        });
    }

    /// Savepoints of this job stay IN_PROGRESS until `release_savepoints_of`.
    pub fn hold_savepoints_of(&self, namespace: &str, job: &str) {
        self.instruct(|o| {
            o.held.insert((namespace.into(), job.into()));
        });
    }

    pub fn release_savepoints_of(&self, namespace: &str, job: &str) {
        self.instruct(|o| {
            o.held.remove(&(namespace.into(), job.into()));
        });
    }

    /// Disposals of this job's savepoints fail (the JobManager cannot reach the storage): the
    /// deleted snapshots stay Terminating until `heal_disposals_of`.
    pub fn fail_disposals_of(&self, namespace: &str, job: &str) {
        self.instruct(|o| {
            o.failing_disposals.insert((namespace.into(), job.into()));
        });
    }

    pub fn heal_disposals_of(&self, namespace: &str, job: &str) {
        self.instruct(|o| {
            o.failing_disposals.remove(&(namespace.into(), job.into()));
        });
    }

    /// Stops (`false`) or restarts the operator: while it is down, snapshots are stored and
    /// deleted by the API alone, and nothing progresses. (A fake started without an operator,
    /// `KubeFakeOptions { operator: None }`, has none to restart.)
    pub fn set_operator_running(&self, on: bool) {
        self.instruct(|o| o.running = on);
    }

    fn instruct(&self, change: impl FnOnce(&mut Operator)) {
        change(&mut self.cluster().operator);
        self.state.wake.notify_one();
    }
}

fn new_flink_job(kind: JobKind, name: &str, deployment: Option<&str>) -> Value {
    let job = json!({
        "jarURI": "local:///opt/flink/usrlib/job.jar",
        "parallelism": 2,
        "upgradeMode": "savepoint",
        "state": "running",
    });
    let job_status = json!({
        "jobName": name,
        "jobId": random_hex(32),
        "startTime": Utc::now().timestamp_millis().to_string(),
    });
    match kind {
        JobKind::FlinkDeployment => json!({
            "apiVersion": FLINK_DEPLOYMENTS.api_version(),
            "kind": FLINK_DEPLOYMENTS.kind,
            "metadata": { "name": name },
            "spec": {
                "image": "flink:1.20",
                "flinkVersion": "v1_20",
                "serviceAccount": "flink",
                "flinkConfiguration": {
                    "state.savepoints.dir": "s3://flink/savepoints",
                    "state.checkpoints.dir": "s3://flink/checkpoints",
                },
                "jobManager": { "resource": { "memory": "2048m", "cpu": 1 } },
                "taskManager": { "resource": { "memory": "2048m", "cpu": 1 } },
                "job": job,
            },
            "status": {
                "jobStatus": job_status,
                "clusterInfo": { "flink-version": "1.20.1" },
            },
        }),
        JobKind::FlinkSessionJob => json!({
            "apiVersion": FLINK_SESSION_JOBS.api_version(),
            "kind": FLINK_SESSION_JOBS.kind,
            "metadata": { "name": name },
            "spec": { "deploymentName": deployment.unwrap_or("session-cluster"), "job": job },
            "status": { "jobStatus": job_status },
        }),
    }
}

/// A savepoint FlinkStateSnapshot of the FlinkDeployment `job` as the operator leaves it once
/// COMPLETED, for [`KubeFake::seed_snapshot`]: labelled `snapshot.trigger-type: <trigger_type>`
/// (PERIODIC or UPGRADE for the operator's own, which it names `<job>-savepoint-periodic-<millis>`
/// and makes with `disposeOnDelete: false`; MANUAL for one made by hand, `disposeOnDelete: true`),
/// with the operator's finalizer, created at `created`. Change the returned value for anything
/// else: another state, a session job, no labels for one the operator has not seen yet.
pub fn savepoint_snapshot(
    name: &str,
    job: &str,
    trigger_type: &str,
    created: DateTime<Utc>,
) -> Value {
    let at = created.to_rfc3339_opts(SecondsFormat::Millis, true);
    let by_operator = matches!(trigger_type, "PERIODIC" | "UPGRADE");
    json!({
        "metadata": {
            "name": name,
            "creationTimestamp": created.to_rfc3339_opts(SecondsFormat::Secs, true),
            "finalizers": [FINALIZER],
            "labels": {
                "snapshot.type": "SAVEPOINT",
                "snapshot.trigger-type": trigger_type,
                "snapshot.state": "COMPLETED",
                "job-reference.kind": "FlinkDeployment",
                "job-reference.name": job,
            },
        },
        "spec": {
            "backoffLimit": -1,
            "jobReference": { "kind": "FlinkDeployment", "name": job },
            "savepoint": {
                "path": "s3://flink/savepoints",
                "formatType": "CANONICAL",
                "disposeOnDelete": !by_operator,
                "alreadyExists": trigger_type == "UPGRADE",
            },
        },
        "status": {
            "state": "COMPLETED",
            "path": format!("s3://flink/savepoints/savepoint-{}-{}", random_hex(6), random_hex(12)),
            "triggerId": random_hex(32),
            "triggerTimestamp": at,
            "resultTimestamp": at,
            "failures": 0,
        },
    })
}

// ---------------------------------------------------------------------------------------------
// The controller

/// Reconciles after every change of the cluster, after every instruction of a test, and when a
/// timer is due; ends with the fake.
pub(super) async fn run(state: Arc<Shared>) {
    let mut events = lock(&state.cluster).events.subscribe();
    loop {
        let next = reconcile(&mut lock(&state.cluster), Instant::now());
        let timer = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Its own writes come back here too; the pass after them finds nothing to do.
            event = events.recv() => {
                if let Err(broadcast::error::RecvError::Closed) = event {
                    return;
                }
            }
            _ = state.wake.notified() => {}
            _ = timer => {}
        }
    }
}

/// One pass over every snapshot; when the next timer is due.
fn reconcile(cluster: &mut Cluster, now: Instant) -> Option<Instant> {
    if !cluster.operator.running {
        return None;
    }
    let snapshots: Vec<Value> = cluster
        .list(FLINK_STATE_SNAPSHOTS.plural)
        .cloned()
        .collect();
    let uids: HashSet<String> = snapshots.iter().map(uid).collect();
    cluster.operator.due.retain(|u, _| uids.contains(u));
    cluster.operator.dispose_due.retain(|u, _| uids.contains(u));
    snapshots
        .into_iter()
        .filter_map(|snapshot| reconcile_one(cluster, snapshot, now))
        .min()
}

fn uid(object: &Value) -> String {
    object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// What the operator knows of a snapshot's target while reconciling it.
struct Target {
    /// `spec.jobReference.name`, when there is one.
    job: Option<String>,
    /// The FlinkDeployment or FlinkSessionJob, when it exists.
    object: Option<Value>,
}

impl Target {
    fn running(&self) -> bool {
        self.object
            .as_ref()
            .and_then(|o| o.pointer("/status/jobStatus/state"))
            .is_some_and(|s| s == "RUNNING")
    }

    fn describe(&self, snapshot: &Value) -> String {
        let reference = &snapshot["spec"]["jobReference"];
        format!(
            "JobReference(kind={}, name={})",
            reference["kind"].as_str().unwrap_or("null"),
            reference["name"].as_str().unwrap_or("null")
        )
    }
}

fn reconcile_one(cluster: &mut Cluster, snapshot: Value, now: Instant) -> Option<Instant> {
    let (namespace, _) = key_of(&snapshot);
    let reference = &snapshot["spec"]["jobReference"];
    let job = reference["name"].as_str().map(str::to_string);
    let object = match (reference["kind"].as_str().and_then(JobKind::parse), &job) {
        (Some(kind), Some(job)) => cluster
            .get(kind.resource().plural, &namespace, job)
            .cloned(),
        _ => None,
    };
    let target = Target { job, object };
    let mut next = snapshot.clone();
    let wake = if snapshot["metadata"]["deletionTimestamp"].is_null() {
        let mut finalizers = finalizers(&next);
        if !finalizers.iter().any(|f| f == FINALIZER) {
            finalizers.push(FINALIZER.into());
            next["metadata"]["finalizers"] = json!(finalizers);
        }
        let wake = step(&mut cluster.operator, &mut next, &target, now);
        relabel(&mut next, &target);
        wake
    } else if finalizers(&snapshot).iter().any(|f| f == FINALIZER) {
        clean_up(&mut cluster.operator, &mut next, &target, now)
    } else {
        None
    };
    if next != snapshot {
        cluster.write(&FLINK_STATE_SNAPSHOTS, next);
    }
    wake
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One step of a snapshot that is not being deleted; when its next one is due.
fn step(
    operator: &mut Operator,
    snapshot: &mut Value,
    target: &Target,
    now: Instant,
) -> Option<Instant> {
    let spec = snapshot["spec"].clone();
    let savepoint = spec["savepoint"].is_object();
    if savepoint == spec["checkpoint"].is_object() {
        // "Exactly one of checkpoint or savepoint configurations has to be set."
        return None;
    }
    let state = snapshot["status"]["state"].as_str().map(str::to_string);
    let pending = state.as_deref().is_none_or(|s| s == "TRIGGER_PENDING");
    if pending && savepoint && spec["savepoint"]["alreadyExists"] == true {
        let at = now_text();
        let status = &mut snapshot["status"];
        status["state"] = json!("COMPLETED");
        status["path"] = spec["savepoint"]["path"].clone();
        status["triggerTimestamp"] = json!(at);
        status["resultTimestamp"] = json!(at);
        status["failures"] = json!(status["failures"].as_i64().unwrap_or(0));
        return None;
    }
    let Some(job) = target.job.clone() else {
        // "Job reference must be supplied for this snapshot."
        return None;
    };
    if pending && target.object.is_none() {
        // "Target for snapshot <ns>/<name> was not found": not reconciled until it exists.
        return None;
    }
    let id = uid(snapshot);
    let namespace = key_of(snapshot).0;
    let options = operator.options.clone();
    match state.as_deref().unwrap_or("TRIGGER_PENDING") {
        "TRIGGER_PENDING" => {
            let due = *operator
                .due
                .entry(id.clone())
                .or_insert(now + options.trigger_after);
            if now < due {
                return Some(due);
            }
            operator.due.remove(&id);
            if !target.running() {
                abandon(snapshot, target, "is not running");
                return None;
            }
            let status = &mut snapshot["status"];
            status["state"] = json!("IN_PROGRESS");
            status["triggerId"] = json!(random_hex(32));
            status["triggerTimestamp"] = json!(now_text());
            status["failures"] = json!(status["failures"].as_i64().unwrap_or(0));
            let due = now + options.complete_after;
            operator.due.insert(id, due);
            Some(due)
        }
        "IN_PROGRESS" => {
            if !target.running() {
                operator.due.remove(&id);
                let why = if target.object.is_some() {
                    "is not running"
                } else {
                    "was not found"
                };
                abandon(snapshot, target, why);
                return None;
            }
            if operator.held.contains(&(namespace.clone(), job.clone())) {
                return None;
            }
            let due = *operator
                .due
                .entry(id.clone())
                .or_insert(now + options.complete_after);
            if now < due {
                return Some(due);
            }
            operator.due.remove(&id);
            let status = &mut snapshot["status"];
            status["resultTimestamp"] = json!(now_text());
            let Some(error) = operator.failing.get(&(namespace, job)).cloned() else {
                status["state"] = json!("COMPLETED");
                status["path"] = json!(result_path(operator, &spec, target));
                status["error"] = Value::Null;
                return None;
            };
            let failures = status["failures"].as_i64().unwrap_or(0) + 1;
            status["failures"] = json!(failures);
            status["error"] = json!(error);
            let limit = spec["backoffLimit"].as_i64().unwrap_or(-1);
            if limit >= 0 && failures > limit {
                status["state"] = json!("FAILED");
                return None;
            }
            status["state"] = json!("TRIGGER_PENDING");
            let exponent = u32::try_from(failures - 1).unwrap_or(0).min(16);
            let due = now + options.retry_after * 2u32.pow(exponent);
            operator.due.insert(id, due);
            Some(due)
        }
        _ => None,
    }
}

fn abandon(snapshot: &mut Value, target: &Target, why: &str) {
    let message = format!(
        "Secondary resource {} for savepoint {} {why}",
        target.describe(snapshot),
        key_of(snapshot).1
    );
    let status = &mut snapshot["status"];
    status["state"] = json!("ABANDONED");
    status["path"] = Value::Null;
    status["error"] = json!(message);
    status["resultTimestamp"] = json!(now_text());
    status["failures"] = json!(status["failures"].as_i64().unwrap_or(0));
}

/// Where a savepoint or checkpoint of the target ends up, as Flink names it.
fn result_path(operator: &mut Operator, spec: &Value, target: &Target) -> String {
    let job_id = target
        .object
        .as_ref()
        .and_then(|o| o["status"]["jobStatus"]["jobId"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| random_hex(32));
    if spec["checkpoint"].is_object() {
        operator.checkpoints += 1;
        return format!(
            "s3://flink/checkpoints/{job_id}/chk-{}",
            operator.checkpoints
        );
    }
    let directory = spec["savepoint"]["path"]
        .as_str()
        .unwrap_or("s3://flink/savepoints")
        .trim_end_matches('/');
    format!(
        "{directory}/savepoint-{}-{}",
        &job_id[..6.min(job_id.len())],
        random_hex(12)
    )
}

/// The labels the operator writes after each reconcile (`FlinkStateSnapshotUtils.getSnapshotLabels`).
fn relabel(snapshot: &mut Value, target: &Target) {
    let kind = if snapshot["spec"]["savepoint"].is_object() {
        "SAVEPOINT"
    } else {
        "CHECKPOINT"
    };
    let state = snapshot["status"]["state"]
        .as_str()
        .unwrap_or("TRIGGER_PENDING")
        .to_string();
    let labels = &mut snapshot["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    labels["snapshot.type"] = json!(kind);
    if labels["snapshot.trigger-type"].is_null() {
        labels["snapshot.trigger-type"] = json!("MANUAL");
    }
    labels["snapshot.state"] = json!(state);
    if let Some(object) = &target.object {
        labels["job-reference.kind"] = object["kind"].clone();
        labels["job-reference.name"] = object["metadata"]["name"].clone();
    }
}

/// The operator's cleanup of a snapshot marked for deletion (`StateSnapshotReconciler.cleanup`):
/// its finalizer goes, or it waits; when to look again.
fn clean_up(
    operator: &mut Operator,
    snapshot: &mut Value,
    target: &Target,
    now: Instant,
) -> Option<Instant> {
    let spec = &snapshot["spec"];
    let disposable = spec["savepoint"].is_object()
        && spec["savepoint"]["disposeOnDelete"]
            .as_bool()
            .unwrap_or(true)
        && target.job.is_some();
    if !disposable {
        release(snapshot);
        return None;
    }
    match snapshot["status"]["state"]
        .as_str()
        .unwrap_or("TRIGGER_PENDING")
    {
        "IN_PROGRESS" if operator.options.observe_while_deleting => {
            let wake = step(operator, snapshot, target, now);
            if snapshot["status"]["state"] == "IN_PROGRESS" {
                wake
            } else {
                clean_up(operator, snapshot, target, now)
            }
        }
        "IN_PROGRESS" => None,
        "COMPLETED" => {
            let path = snapshot["status"]["path"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if path.is_empty() {
                release(snapshot);
                return None;
            }
            let (namespace, name) = key_of(snapshot);
            let job = target.job.clone().unwrap_or_default();
            // The disposal goes through the job's JobManager, so it must run; otherwise the
            // cleanup fails and is tried again later.
            if !target.running()
                || operator
                    .failing_disposals
                    .contains(&(namespace.clone(), job.clone()))
            {
                operator.dispose_due.remove(&uid(snapshot));
                return None;
            }
            let due = *operator
                .dispose_due
                .entry(uid(snapshot))
                .or_insert(now + operator.options.dispose_after);
            if now < due {
                return Some(due);
            }
            operator.disposals.push(Disposal {
                namespace,
                name,
                path,
                state: "COMPLETED".into(),
                trigger_type: snapshot["metadata"]["labels"]["snapshot.trigger-type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                job,
                snapshot: snapshot.clone(),
            });
            release(snapshot);
            None
        }
        // FAILED, TRIGGER_PENDING, ABANDONED: "cleaning up resource without disposal".
        _ => {
            release(snapshot);
            None
        }
    }
}

/// Removes the operator's finalizer; once none is left, the write deletes the object.
fn release(snapshot: &mut Value) {
    let left: Vec<String> = finalizers(snapshot)
        .into_iter()
        .filter(|f| f != FINALIZER)
        .collect();
    let metadata = snapshot["metadata"]
        .as_object_mut()
        .expect("a stored object has metadata");
    if left.is_empty() {
        metadata.remove("finalizers");
    } else {
        metadata.insert("finalizers".into(), json!(left));
    }
}
