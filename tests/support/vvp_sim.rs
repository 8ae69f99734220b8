//! A Ververica Platform appmanager (API v1) simulator, following
//! `shared/reference/apis.md` and the VVP 2.13 savepoint documentation.
//!
//! State changes that take time on the real platform (a savepoint completing, a deletion running)
//! are evaluated lazily from timestamps whenever state is read, so the simulator needs no timers
//! and stays deterministic under a loaded test machine: a savepoint is STARTED until
//! `createdAt + complete_after`, whoever asks.
//!
//! Faults go where a real platform puts them: before a request is handled (a dropped connection, a
//! 5xx), or after it took effect (an answer lost to a reset, or later than the client waits). The
//! latter are the ones a client cannot tell from the former, and must not resend blindly. A seeded
//! plan draws them at random, reproducibly; every accepted deletion is recorded with what a
//! retention rule is checked against.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

pub use super::unreliable::{Fault, FaultCounts, Faults, RecordedRequest};
use super::unreliable::{Network, Simulated, serve};
use super::{lock, query_value, random_hex, uuid_v4};

/// The annotation VVP uses to decide whether a savepoint may be used for a restore.
pub const SPEC_VERSION_ANNOTATION: &str =
    "com.dataartisans.appmanager.controller.deployment.spec.version";

pub struct VvpSimOptions {
    pub namespace: String,
    /// When set, every request needs `Authorization: Bearer <token>`, as with VVP access control on.
    pub token: Option<String>,
    /// How long a triggered savepoint stays STARTED.
    pub complete_after: Duration,
    /// Delay before every answer.
    pub latency: Duration,
    /// Answer lists as a bare JSON array, as VVP 2.0 did, instead of a `ResourceList`.
    pub bare_list: bool,
    /// How long an accepted deletion takes: PENDING_DELETION for the first 40 %, then DELETING,
    /// then the resource is gone.
    pub delete_after: Duration,
    /// Refuse to delete the newest COMPLETED savepoint of a RUNNING or TRANSITIONING deployment,
    /// as VVP does so that the job can still recover from it.
    pub protect_latest: bool,
}

impl Default for VvpSimOptions {
    fn default() -> Self {
        Self {
            namespace: "default".to_string(),
            token: None,
            complete_after: Duration::from_millis(200),
            latency: Duration::ZERO,
            bare_list: false,
            delete_after: Duration::from_millis(100),
            protect_latest: true,
        }
    }
}

/// A deletion the simulator accepted (202), as the savepoint stood just before it.
#[derive(Clone, Debug)]
pub struct Deletion {
    /// The resource just before the deletion.
    pub savepoint: Value,
    /// Its state then.
    pub state: String,
    /// How many COMPLETED savepoints of the same deployment, not deleted together with it, were
    /// newer (by `createdAt`) at that moment: what a keep-last rule is checked against.
    pub newer_completed: usize,
    pub at: Instant,
}

impl Deletion {
    pub fn id(&self) -> &str {
        savepoint_id(&self.savepoint)
    }

    pub fn deployment_id(&self) -> &str {
        str_at(&self.savepoint, &["metadata", "deploymentId"]).unwrap_or("")
    }
}

pub struct VvpSim {
    /// `http://127.0.0.1:PORT`, the VVP base URL without `/api`.
    pub url: String,
    state: Arc<Mutex<Sim>>,
    server: JoinHandle<()>,
}

impl Drop for VvpSim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl VvpSim {
    pub async fn start(opts: VvpSimOptions) -> VvpSim {
        let state = Arc::new(Mutex::new(Sim::new(opts)));
        let (url, server) = serve(state.clone()).await;
        VvpSim { url, state, server }
    }

    pub fn namespace(&self) -> String {
        lock(&self.state).namespace.clone()
    }

    /// Adds (or replaces) a deployment; a RUNNING one gets a fresh job id.
    pub fn add_deployment(&self, name: &str, id: &str, state: &str) {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.deployments.retain(|d| d.id != id);
        sim.deployments.push(Deployment {
            id: id.to_string(),
            name: name.to_string(),
            state: state.to_string(),
            job_id: (state == "RUNNING").then(uuid_v4),
            spec_version: 1,
            created_at: now_text(Utc::now()),
        });
    }

    /// Moves a deployment to another state; entering RUNNING starts a new job, as a restart would.
    pub fn set_deployment_state(&self, id: &str, state: &str) {
        let mut sim = lock(&self.state);
        sim.advance();
        if let Some(deployment) = sim.deployments.iter_mut().find(|d| d.id == id) {
            if state == "RUNNING" && deployment.state != "RUNNING" {
                deployment.job_id = Some(uuid_v4());
                deployment.spec_version += 1;
            }
            deployment.state = state.to_string();
        }
    }

    /// The job id of a deployment's current run.
    pub fn job_id_of(&self, deployment_id: &str) -> Option<String> {
        lock(&self.state)
            .deployments
            .iter()
            .find(|d| d.id == deployment_id)
            .and_then(|d| d.job_id.clone())
    }

    /// Stores a savepoint resource as given (as in apis.md). `metadata.id`, `metadata.namespace`,
    /// `apiVersion` and `kind` are filled in when missing. Its state never changes by itself.
    pub fn seed_savepoint(&self, savepoint: Value) {
        let mut resource = match savepoint {
            Value::Object(map) => map,
            other => panic!("seed_savepoint needs a JSON object, got {other}"),
        };
        resource.entry("apiVersion").or_insert_with(|| json!("v1"));
        resource.entry("kind").or_insert_with(|| json!("Savepoint"));
        let mut sim = lock(&self.state);
        let namespace = sim.namespace.clone();
        let metadata = resource
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("metadata of a seeded savepoint must be an object");
        metadata.entry("id").or_insert_with(|| json!(uuid_v4()));
        metadata
            .entry("namespace")
            .or_insert_with(|| json!(namespace));
        sim.advance();
        sim.entries.push(Entry::new(Value::Object(resource), None));
    }

    /// Forgets every savepoint, those in flight included, as if the platform had never had one; the
    /// deployments, the request log and the record of triggers stay. A benchmark starts each run from
    /// the same history this way.
    pub fn forget_savepoints(&self) {
        let mut sim = lock(&self.state);
        sim.entries.clear();
        sim.started_now = 0;
    }

    /// The savepoint resources as a GET would show them now.
    pub fn savepoints(&self) -> Vec<Value> {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.entries.iter().map(|e| e.resource.clone()).collect()
    }

    /// Every savepoint triggered by a POST without spec, in order, as it was when created.
    pub fn triggers(&self) -> Vec<Value> {
        lock(&self.state).triggers.clone()
    }

    /// Every request received, in order of arrival, rejected ones included.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).network.requests.clone()
    }

    /// `triggers().len()` without copying them, for a caller that polls while thousands accumulate.
    pub fn trigger_count(&self) -> usize {
        lock(&self.state).triggers.len()
    }

    /// `requests().len()` without copying them, for a caller that polls while thousands accumulate.
    pub fn request_count(&self) -> usize {
        lock(&self.state).network.requests.len()
    }

    /// The next `n` requests are answered `status` with `{"message":"injected"}`, touching nothing.
    pub fn fail_next(&self, n: usize, status: u16) {
        lock(&self.state).network.fail_next(n, status);
    }

    /// The next `n` requests get no answer: their connection is closed instead.
    pub fn drop_next(&self, n: usize) {
        lock(&self.state).network.drop_next(n);
    }

    /// The next `n` requests are handled as usual, then their connection is killed: whatever the
    /// request changed stays changed, and the client gets no answer.
    pub fn lose_next_answers(&self, n: usize) {
        lock(&self.state).network.next(None, n, Fault::LoseAfter);
    }

    /// As `lose_next_answers`, for the next `n` requests of `method` only.
    pub fn lose_next_answers_to(&self, method: &str, n: usize) {
        lock(&self.state)
            .network
            .next(Some(method), n, Fault::LoseAfter);
    }

    /// The next `n` requests are handled as usual and answered `by` later.
    pub fn slow_next_answers(&self, n: usize, by: Duration) {
        lock(&self.state).network.next(None, n, Fault::Slow(by));
    }

    /// As `slow_next_answers`, for the next `n` requests of `method` only.
    pub fn slow_next_answers_to(&self, method: &str, n: usize, by: Duration) {
        lock(&self.state)
            .network
            .next(Some(method), n, Fault::Slow(by));
    }

    /// From now on every request the plan applies to draws its fault from the plan, unless a fault
    /// asked for one by one (`drop_next`, `fail_next`, `lose_next_answers`, …) comes first.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state).network.set_faults(faults);
    }

    /// No planned faults from now on.
    pub fn clear_faults(&self) {
        lock(&self.state).network.clear_faults();
    }

    /// The faults injected so far, by kind.
    pub fn fault_counts(&self) -> FaultCounts {
        lock(&self.state).network.fault_counts()
    }

    /// Every deletion accepted (202), in order, whether or not its answer reached the client.
    pub fn deletions(&self) -> Vec<Deletion> {
        lock(&self.state).deletions.clone()
    }

    /// Rotates the API token: from now on only `token` is accepted.
    pub fn set_token(&self, token: &str) {
        lock(&self.state).token = Some(token.to_string());
    }

    pub fn set_latency(&self, d: Duration) {
        lock(&self.state).network.latency = d;
    }

    /// Savepoints of this deployment that complete from now on end FAILED with this message.
    pub fn fail_savepoints_of(&self, deployment_id: &str, message: &str) {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.failing
            .insert(deployment_id.to_string(), message.to_string());
    }

    /// Savepoints of this deployment complete normally again.
    pub fn heal_savepoints_of(&self, deployment_id: &str) {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.failing.remove(deployment_id);
    }

    /// Savepoints of this deployment stay STARTED until `release_savepoints_of`.
    pub fn hold_savepoints_of(&self, deployment_id: &str) {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.held.insert(deployment_id.to_string());
    }

    /// Held savepoints that are overdue complete at this moment; the others at their usual time.
    pub fn release_savepoints_of(&self, deployment_id: &str) {
        let mut sim = lock(&self.state);
        sim.advance();
        if !sim.held.remove(deployment_id) {
            return;
        }
        let now = Instant::now();
        let now_utc = Utc::now();
        for entry in &mut sim.entries {
            if let Some(Pending::Trigger { due, due_at }) = &mut entry.pending
                && entry.deployment_id == deployment_id
                && *due < now
            {
                *due = now;
                *due_at = now_utc;
            }
        }
        sim.advance();
    }

    /// DELETE of this savepoint answers 409 with this message.
    pub fn deny_delete(&self, savepoint_id: &str, message: &str) {
        lock(&self.state)
            .deny_delete
            .insert(savepoint_id.to_string(), message.to_string());
    }

    /// An accepted deletion of this savepoint ends in FAILED_DELETION with this message instead of
    /// removing it, as when VVP's asynchronous checks or the blob storage refuse.
    pub fn fail_deletion_of(&self, savepoint_id: &str, message: &str) {
        lock(&self.state)
            .fail_deletion
            .insert(savepoint_id.to_string(), message.to_string());
    }

    /// The largest number of triggered savepoints that were STARTED at the same moment.
    pub fn max_started_at_once(&self) -> usize {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.max_started
    }

    /// Starts counting `max_started_at_once` afresh from the savepoints STARTED now.
    pub fn reset_max_started(&self) {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.max_started = sim.started_now;
    }

    /// The number of triggered savepoints STARTED right now.
    pub fn started_now(&self) -> usize {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.started_now
    }
}

struct Deployment {
    id: String,
    name: String,
    state: String,
    job_id: Option<String>,
    spec_version: u64,
    created_at: String,
}

impl Deployment {
    fn is_active(&self) -> bool {
        self.state == "RUNNING" || self.state == "TRANSITIONING"
    }

    fn to_json(&self, namespace: &str) -> Value {
        let mut status = json!({ "state": self.state });
        if let Some(job_id) = &self.job_id {
            status["running"] = json!({ "jobId": job_id });
        }
        json!({
            "apiVersion": "v1",
            "kind": "Deployment",
            "metadata": {
                "id": self.id,
                "name": self.name,
                "namespace": namespace,
                "createdAt": self.created_at,
                "labels": {},
                "annotations": { SPEC_VERSION_ANNOTATION: self.spec_version.to_string() },
                "resourceVersion": self.spec_version,
            },
            "spec": { "state": if self.state == "RUNNING" { "RUNNING" } else { "CANCELLED" } },
            "status": status,
        })
    }
}

enum Pending {
    /// A triggered savepoint that finishes at `due` unless its deployment is held.
    Trigger { due: Instant, due_at: DateTime<Utc> },
    /// An accepted deletion.
    Deletion {
        since: Instant,
        failure: Option<String>,
    },
}

struct Entry {
    resource: Value,
    pending: Option<Pending>,
    /// `metadata.id` and `metadata.deploymentId` of `resource`, which never change: a lookup by either
    /// compares strings instead of walking the JSON of every savepoint, so that a long history does
    /// not make the simulator, which answers one request at a time, slower than the platform.
    id: String,
    deployment_id: String,
}

impl Entry {
    fn new(resource: Value, pending: Option<Pending>) -> Entry {
        Entry {
            id: savepoint_id(&resource).to_string(),
            deployment_id: str_at(&resource, &["metadata", "deploymentId"])
                .unwrap_or("")
                .to_string(),
            resource,
            pending,
        }
    }
}

struct Sim {
    namespace: String,
    token: Option<String>,
    complete_after: Duration,
    bare_list: bool,
    delete_after: Duration,
    protect_latest: bool,
    deployments: Vec<Deployment>,
    entries: Vec<Entry>,
    triggers: Vec<Value>,
    network: Network,
    deletions: Vec<Deletion>,
    failing: HashMap<String, String>,
    held: HashSet<String>,
    deny_delete: HashMap<String, String>,
    fail_deletion: HashMap<String, String>,
    started_now: usize,
    max_started: usize,
}

type Answer = (StatusCode, Value);

fn message(status: StatusCode, text: impl Into<String>) -> Answer {
    (status, json!({ "message": text.into() }))
}

fn now_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

fn state_of(resource: &Value) -> &str {
    str_at(resource, &["status", "state"]).unwrap_or("")
}

fn bump_resource_version(resource: &mut Value) {
    let next = resource["metadata"]["resourceVersion"]
        .as_u64()
        .unwrap_or(0)
        + 1;
    resource["metadata"]["resourceVersion"] = json!(next);
}

/// Why a triggered savepoint of this deployment fails, if it does.
fn trigger_failure(
    failing: &HashMap<String, String>,
    deployments: &[Deployment],
    deployment_id: &str,
) -> Option<String> {
    if let Some(message) = failing.get(deployment_id) {
        return Some(message.clone());
    }
    match deployments.iter().find(|d| d.id == deployment_id) {
        None => Some(format!("Deployment {deployment_id} not found")),
        Some(d) if d.state != "RUNNING" => Some(format!(
            "Deployment {deployment_id} is in state {}; savepoints need a running job",
            d.state
        )),
        Some(_) => None,
    }
}

/// Ends a triggered savepoint at `at`: FAILED with `failure`, or COMPLETED at a new location.
fn finish_trigger(resource: &mut Value, at: DateTime<Utc>, failure: Option<String>) {
    let at = now_text(at);
    match failure {
        Some(message) => {
            resource["status"] = json!({
                "state": "FAILED",
                "failure": { "reason": "SavepointFailed", "message": message, "failedAt": at },
            });
        }
        None => {
            // Flink names savepoint directories savepoint-<first 6 hex of the job id>-<12 hex>.
            let job_prefix: String = str_at(resource, &["metadata", "jobId"])
                .unwrap_or("")
                .chars()
                .filter(char::is_ascii_hexdigit)
                .take(6)
                .collect();
            resource["spec"] = json!({
                "savepointLocation": format!(
                    "s3://flink/savepoints/savepoint-{job_prefix:0<6}-{}",
                    random_hex(12)
                ),
                "flinkSavepointId": uuid_v4(),
            });
            resource["status"] = json!({ "state": "COMPLETED" });
        }
    }
    resource["metadata"]["modifiedAt"] = json!(at);
    bump_resource_version(resource);
}

impl Sim {
    fn new(opts: VvpSimOptions) -> Self {
        Self {
            namespace: opts.namespace,
            token: opts.token,
            complete_after: opts.complete_after,
            bare_list: opts.bare_list,
            delete_after: opts.delete_after,
            protect_latest: opts.protect_latest,
            deployments: Vec::new(),
            entries: Vec::new(),
            triggers: Vec::new(),
            network: Network::with_latency(opts.latency),
            deletions: Vec::new(),
            failing: HashMap::new(),
            held: HashSet::new(),
            deny_delete: HashMap::new(),
            fail_deletion: HashMap::new(),
            started_now: 0,
            max_started: 0,
        }
    }

    /// Applies every transition that is due by now. Completions are applied before anything the
    /// caller does next, so `max_started` never counts a savepoint that had already finished.
    fn advance(&mut self) {
        let now = Instant::now();
        let now_utc = Utc::now();
        let mut index = 0;
        while index < self.entries.len() {
            let entry = &mut self.entries[index];
            // Most entries are settled; skipping them keeps a request cheap in a long history.
            if entry.pending.is_none() {
                index += 1;
                continue;
            }
            let deployment_id = entry.deployment_id.clone();
            match &entry.pending {
                Some(Pending::Trigger { due, due_at })
                    if now >= *due && !self.held.contains(&deployment_id) =>
                {
                    let failure = trigger_failure(&self.failing, &self.deployments, &deployment_id);
                    finish_trigger(&mut entry.resource, *due_at, failure);
                    entry.pending = None;
                    self.started_now -= 1;
                }
                Some(Pending::Deletion { since, failure }) => {
                    let elapsed = now.saturating_duration_since(*since);
                    if elapsed < self.delete_after {
                        if elapsed >= self.delete_after * 2 / 5
                            && state_of(&entry.resource) == "PENDING_DELETION"
                        {
                            entry.resource["status"]["state"] = json!("DELETING");
                            bump_resource_version(&mut entry.resource);
                        }
                    } else if let Some(message) = failure.clone() {
                        let at = now_text(now_utc);
                        entry.resource["status"] = json!({
                            "state": "FAILED_DELETION",
                            "failure": { "reason": "DeletionFailed", "message": message, "failedAt": at },
                        });
                        entry.resource["metadata"]["modifiedAt"] = json!(at);
                        bump_resource_version(&mut entry.resource);
                        entry.pending = None;
                    } else {
                        self.entries.remove(index);
                        continue;
                    }
                }
                _ => {}
            }
            index += 1;
        }
    }

    fn list(&self, items: Vec<Value>) -> Value {
        if self.bare_list {
            Value::Array(items)
        } else {
            json!({ "apiVersion": "v1", "kind": "ResourceList", "metadata": {}, "items": items })
        }
    }

    fn list_savepoints(&self, query: &[(String, String)]) -> Answer {
        let deployment_id = query_value(query, "deploymentId").filter(|v| !v.is_empty());
        let job_id = query_value(query, "jobId").filter(|v| !v.is_empty());
        let items = self
            .entries
            .iter()
            .filter(|e| deployment_id.is_none_or(|id| e.deployment_id == id))
            .map(|e| &e.resource)
            .filter(|r| job_id.is_none_or(|id| str_at(r, &["metadata", "jobId"]) == Some(id)))
            .cloned()
            .collect();
        (StatusCode::OK, self.list(items))
    }

    fn get_savepoint(&self, id: &str) -> Answer {
        match self.entries.iter().find(|e| e.id == id) {
            Some(entry) => (StatusCode::OK, entry.resource.clone()),
            None => message(
                StatusCode::NOT_FOUND,
                format!("Savepoint '{id}' does not exist"),
            ),
        }
    }

    fn create_savepoint(&mut self, body: &[u8]) -> Answer {
        let request: Value = match serde_json::from_slice(body) {
            Ok(value) => value,
            Err(err) => {
                return message(
                    StatusCode::BAD_REQUEST,
                    format!("Malformed savepoint: {err}"),
                );
            }
        };
        let Some(deployment_id) = str_at(&request, &["metadata", "deploymentId"]) else {
            return message(
                StatusCode::BAD_REQUEST,
                "metadata.deploymentId must be set to the id of a deployment",
            );
        };
        let annotations = match request["metadata"].get("annotations") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) if map.values().all(Value::is_string) => map.clone(),
            Some(_) => {
                return message(
                    StatusCode::BAD_REQUEST,
                    "metadata.annotations must map strings to strings",
                );
            }
        };
        let Some(deployment) = self.deployments.iter().find(|d| d.id == deployment_id) else {
            return message(
                StatusCode::BAD_REQUEST,
                format!("Deployment '{deployment_id}' does not exist"),
            );
        };
        let mut annotations = annotations;
        annotations
            .entry(SPEC_VERSION_ANNOTATION)
            .or_insert_with(|| json!(deployment.spec_version.to_string()));
        let now_utc = Utc::now();
        let created_at = now_text(now_utc);
        let id = uuid_v4();
        match request.get("spec") {
            None | Some(Value::Null) => {
                let job_id = deployment.job_id.clone();
                let resource = json!({
                    "apiVersion": "v1",
                    "kind": "Savepoint",
                    "metadata": {
                        "id": id,
                        "namespace": self.namespace,
                        "createdAt": created_at,
                        "modifiedAt": created_at,
                        "deploymentId": deployment_id,
                        "jobId": job_id,
                        "origin": "USER_REQUEST",
                        "type": "FULL",
                        "annotations": annotations,
                        "resourceVersion": 1,
                    },
                    "spec": {},
                    "status": { "state": "STARTED" },
                });
                let complete_after =
                    chrono::Duration::from_std(self.complete_after).unwrap_or_default();
                self.entries.push(Entry::new(
                    resource.clone(),
                    Some(Pending::Trigger {
                        due: Instant::now() + self.complete_after,
                        due_at: now_utc + complete_after,
                    }),
                ));
                self.started_now += 1;
                self.max_started = self.max_started.max(self.started_now);
                self.triggers.push(resource.clone());
                (StatusCode::CREATED, resource)
            }
            Some(spec) => {
                let Some(location) = spec.get("savepointLocation").and_then(Value::as_str) else {
                    return message(
                        StatusCode::BAD_REQUEST,
                        "spec.savepointLocation is required to add an existing savepoint",
                    );
                };
                let kind = match str_at(&request, &["metadata", "type"]) {
                    None => "UNKNOWN",
                    Some(t @ ("FULL" | "INCREMENTAL" | "UNKNOWN")) => t,
                    Some(other) => {
                        return message(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "metadata.type '{other}' is not one of FULL, INCREMENTAL, UNKNOWN"
                            ),
                        );
                    }
                };
                let mut new_spec = json!({ "savepointLocation": location });
                if let Some(flink_id) = spec.get("flinkSavepointId").filter(|v| !v.is_null()) {
                    new_spec["flinkSavepointId"] = flink_id.clone();
                }
                let resource = json!({
                    "apiVersion": "v1",
                    "kind": "Savepoint",
                    "metadata": {
                        "id": id,
                        "namespace": self.namespace,
                        "createdAt": created_at,
                        "modifiedAt": created_at,
                        "deploymentId": deployment_id,
                        "origin": "COPIED",
                        "type": kind,
                        "annotations": annotations,
                        "resourceVersion": 1,
                    },
                    "spec": new_spec,
                    "status": { "state": "COMPLETED" },
                });
                self.entries.push(Entry::new(resource.clone(), None));
                (StatusCode::CREATED, resource)
            }
        }
    }

    fn delete_savepoint(&mut self, id: &str, query: &[(String, String)]) -> Answer {
        let force = match query_value(query, "force") {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return message(
                    StatusCode::BAD_REQUEST,
                    format!("Parameter 'force' must be a boolean, got '{other}'"),
                );
            }
        };
        let Some(target) = self.entries.iter().position(|e| e.id == id) else {
            return message(
                StatusCode::NOT_FOUND,
                format!("Savepoint '{id}' does not exist"),
            );
        };
        if let Some(text) = self.deny_delete.get(id) {
            return message(StatusCode::CONFLICT, text.clone());
        }
        let location = str_at(
            &self.entries[target].resource,
            &["spec", "savepointLocation"],
        )
        .filter(|l| !l.is_empty())
        .map(str::to_string);
        // VVP deletes every resource pointing at the same physical savepoint, and checks the
        // prerequisites on all of them.
        let group: Vec<usize> = match &location {
            Some(location) => (0..self.entries.len())
                .filter(|&i| {
                    i == target
                        || str_at(&self.entries[i].resource, &["spec", "savepointLocation"])
                            == Some(location.as_str())
                })
                .collect(),
            None => vec![target],
        };
        if !force && let Err(refusal) = self.check_deletable(&group) {
            return message(StatusCode::CONFLICT, refusal);
        }
        let now = Instant::now();
        for &index in &group {
            let resource = &self.entries[index].resource;
            let deployment_id = str_at(resource, &["metadata", "deploymentId"]);
            let created = created_at(resource);
            let newer_completed = (0..self.entries.len())
                .filter(|i| !group.contains(i))
                .map(|i| &self.entries[i].resource)
                .filter(|r| str_at(r, &["metadata", "deploymentId"]) == deployment_id)
                .filter(|r| state_of(r) == "COMPLETED" && created_at(r) > created)
                .count();
            self.deletions.push(Deletion {
                savepoint: resource.clone(),
                state: state_of(resource).to_string(),
                newer_completed,
                at: now,
            });
        }
        let now_utc = now_text(Utc::now());
        for &index in &group {
            let entry = &mut self.entries[index];
            if matches!(entry.pending, Some(Pending::Trigger { .. })) {
                self.started_now -= 1;
            }
            let failure = self
                .fail_deletion
                .get(savepoint_id(&entry.resource))
                .cloned();
            entry.pending = Some(Pending::Deletion {
                since: now,
                failure,
            });
            entry.resource["status"] = json!({ "state": "PENDING_DELETION" });
            entry.resource["metadata"]["modifiedAt"] = json!(now_utc);
            bump_resource_version(&mut entry.resource);
        }
        (StatusCode::ACCEPTED, self.entries[target].resource.clone())
    }

    /// The synchronous prerequisites of the VVP 2.13 documentation, each refusal naming the
    /// prerequisite that failed.
    fn check_deletable(&self, group: &[usize]) -> Result<(), String> {
        let resources: Vec<&Value> = group.iter().map(|&i| &self.entries[i].resource).collect();
        for r in &resources {
            let state = state_of(r);
            if !matches!(state, "COMPLETED" | "FAILED" | "FAILED_DELETION") {
                return Err(format!(
                    "Savepoint '{}' is in state {state}: only savepoints in state COMPLETED, FAILED or FAILED_DELETION can be deleted",
                    savepoint_id(r)
                ));
            }
        }
        for r in &resources {
            if str_at(r, &["metadata", "type"]) == Some("INCREMENTAL") {
                return Err(format!(
                    "Savepoint '{}' references an incremental checkpoint (metadata.type INCREMENTAL): only full savepoints or checkpoints can be deleted",
                    savepoint_id(r)
                ));
            }
        }
        let references_full = |r: &&Value| {
            let origin = str_at(r, &["metadata", "origin"]).unwrap_or("");
            match str_at(r, &["metadata", "type"]).unwrap_or("UNKNOWN") {
                "FULL" => true,
                "UNKNOWN" => matches!(origin, "USER_REQUEST" | "SUSPEND"),
                _ => false,
            }
        };
        if !resources.iter().any(references_full) {
            let r = resources[0];
            return Err(format!(
                "Savepoint '{}' is not known to reference a full savepoint or checkpoint: metadata.type is {} and metadata.origin is {} (type UNKNOWN needs origin USER_REQUEST or SUSPEND)",
                savepoint_id(r),
                str_at(r, &["metadata", "type"]).unwrap_or("UNKNOWN"),
                str_at(r, &["metadata", "origin"]).unwrap_or("not set"),
            ));
        }
        if self.protect_latest {
            for r in &resources {
                let deployment_id = str_at(r, &["metadata", "deploymentId"]).unwrap_or("");
                let active = self
                    .deployments
                    .iter()
                    .any(|d| d.id == deployment_id && d.is_active());
                if active && self.latest_completed_of(deployment_id) == Some(savepoint_id(r)) {
                    return Err(format!(
                        "Savepoint '{}' is the latest snapshot of active deployment '{deployment_id}': deleting it would impact the job's failure recovery",
                        savepoint_id(r)
                    ));
                }
            }
        }
        Ok(())
    }

    fn latest_completed_of(&self, deployment_id: &str) -> Option<&str> {
        self.entries
            .iter()
            .map(|e| &e.resource)
            .filter(|r| str_at(r, &["metadata", "deploymentId"]) == Some(deployment_id))
            .filter(|r| state_of(r) == "COMPLETED")
            .max_by_key(|r| created_at(r))
            .map(savepoint_id)
    }
}

impl Simulated for Sim {
    fn network(&mut self) -> &mut Network {
        &mut self.network
    }

    fn route(
        &mut self,
        method: &Method,
        path: &str,
        query: &[(String, String)],
        body: &[u8],
        authorization: Option<&str>,
    ) -> Answer {
        if let Some(token) = &self.token
            && authorization != Some(format!("Bearer {token}").as_str())
        {
            return message(
                StatusCode::UNAUTHORIZED,
                "Full authentication is required to access this resource: missing or invalid API token",
            );
        }
        let Some(rest) = path.strip_prefix("/api/v1/namespaces/") else {
            return message(StatusCode::NOT_FOUND, format!("No resource at {path}"));
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let Some((&namespace, segments)) = segments.split_first() else {
            return message(StatusCode::NOT_FOUND, format!("No resource at {path}"));
        };
        if namespace != self.namespace {
            return message(
                StatusCode::NOT_FOUND,
                format!("Namespace '{namespace}' does not exist"),
            );
        }
        self.advance();
        match (method.clone(), segments) {
            (Method::GET, ["savepoints"]) => self.list_savepoints(query),
            (Method::POST, ["savepoints"]) => self.create_savepoint(body),
            (Method::GET, ["savepoints", id]) => self.get_savepoint(id),
            (Method::DELETE, ["savepoints", id]) => self.delete_savepoint(id, query),
            (Method::GET, ["deployments"]) => {
                let items = self
                    .deployments
                    .iter()
                    .map(|d| d.to_json(&self.namespace))
                    .collect();
                (StatusCode::OK, self.list(items))
            }
            (Method::GET, ["deployments", id]) => {
                match self
                    .deployments
                    .iter()
                    .find(|d| d.id == *id || d.name == *id)
                {
                    Some(d) => (StatusCode::OK, d.to_json(&self.namespace)),
                    None => message(
                        StatusCode::NOT_FOUND,
                        format!("Deployment '{id}' does not exist"),
                    ),
                }
            }
            (_, ["savepoints"] | ["savepoints", _] | ["deployments"] | ["deployments", _]) => {
                message(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("Request method '{method}' is not supported"),
                )
            }
            _ => message(StatusCode::NOT_FOUND, format!("No resource at {path}")),
        }
    }

    fn error_body(text: &str) -> Value {
        json!({ "message": text })
    }
}

fn created_at(resource: &Value) -> Option<DateTime<Utc>> {
    str_at(resource, &["metadata", "createdAt"])
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn savepoint_id(resource: &Value) -> &str {
    str_at(resource, &["metadata", "id"]).unwrap_or("")
}
