//! A Confluent Manager for Apache Flink (REST API v1) simulator, following `shared/reference/apis.md`
//! (CMF section) and CMF's savepoint documentation (`shared/reference/seeds/cmf-savepoints.txt`).
//!
//! As in the VVP simulator, time-driven changes are evaluated lazily from timestamps whenever state is
//! read: a savepoint is TRIGGER_PENDING, then IN_PROGRESS, then COMPLETED (or FAILED) at fixed offsets
//! from its creation, whoever asks. The unhappy paths are CMF's: a name that exists is a 409 (names are
//! unique across the environment's applications and statements), pages are capped at a small size,
//! savepoints end FAILED with `status.error`, a stopped job abandons its savepoints in flight, a deletion
//! while the job is down stays `pendingDeletion` until it runs again, a disconnected cluster answers
//! 503, and every request needs the bearer token when one is set. Network faults (lost answers
//! included) come from [`super::unreliable`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub use super::unreliable::RecordedRequest;
use super::unreliable::{Network, Simulated, serve};
use super::{lock, query_value, random_hex, uuid_v4};

pub struct CmfSimOptions {
    pub environment: String,
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The largest page CMF answers, whatever `size` asks for.
    pub max_page_size: usize,
    /// How long a savepoint is TRIGGER_PENDING, then IN_PROGRESS until `complete_after`.
    pub pending_for: Duration,
    pub complete_after: Duration,
    /// How long an accepted deletion of a running job's savepoint takes before the resource goes.
    pub delete_after: Duration,
    pub latency: Duration,
}

impl Default for CmfSimOptions {
    fn default() -> Self {
        Self {
            environment: "prod".into(),
            token: None,
            max_page_size: 100,
            pending_for: Duration::from_millis(50),
            complete_after: Duration::from_millis(200),
            delete_after: Duration::from_millis(100),
            latency: Duration::ZERO,
        }
    }
}

/// A deletion CMF accepted (204), as the savepoint stood just before it.
#[derive(Clone, Debug)]
pub struct Deletion {
    pub savepoint: Value,
    /// `applications/<name>` or `statements/<name>`.
    pub parent: String,
    pub state: String,
    /// COMPLETED savepoints of the same parent that were newer at that moment.
    pub newer_completed: usize,
    pub forced: bool,
}

impl Deletion {
    pub fn name(&self) -> &str {
        name_of(&self.savepoint)
    }
}

pub struct CmfSim {
    /// `http://127.0.0.1:PORT`, the CMF base URL (without `/cmf/api/v1`).
    pub url: String,
    state: Arc<Mutex<Sim>>,
    server: JoinHandle<()>,
}

impl Drop for CmfSim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl CmfSim {
    pub async fn start(opts: CmfSimOptions) -> CmfSim {
        let state = Arc::new(Mutex::new(Sim::new(opts)));
        let (url, server) = serve(state.clone()).await;
        CmfSim { url, state, server }
    }

    /// Adds (or replaces) a FlinkApplication whose job is in `state` (RUNNING, SUSPENDED, …).
    pub fn add_application(&self, name: &str, state: &str) {
        self.add_parent(format!("applications/{name}"), state);
    }

    /// Adds (or replaces) a statement in `phase` (RUNNING, STOPPED, …).
    pub fn add_statement(&self, name: &str, phase: &str) {
        self.add_parent(format!("statements/{name}"), phase);
    }

    fn add_parent(&self, id: String, state: &str) {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.parents.insert(
            id,
            Parent {
                state: state.into(),
                own_schedule: None,
            },
        );
    }

    /// Moves a job to another state. Savepoints in flight of a job that stops are ABANDONED; deletions
    /// pending while it was down go ahead once it runs.
    pub fn set_job_state(&self, parent: &str, state: &str) {
        let mut sim = lock(&self.state);
        sim.advance();
        if let Some(p) = sim.parents.get_mut(parent) {
            p.state = state.into();
        }
        if state != "RUNNING" {
            let now = now_text(Utc::now());
            for entry in sim.entries.iter_mut().filter(|e| e.parent == parent) {
                if matches!(entry.pending, Some(Pending::Trigger { .. })) {
                    entry.pending = None;
                    entry.resource["status"]["state"] = json!("ABANDONED");
                    entry.resource["status"]["resultTimestamp"] = json!(now);
                }
            }
        } else {
            let due = Instant::now() + sim.delete_after;
            for entry in sim.entries.iter_mut().filter(|e| e.parent == parent) {
                if matches!(entry.pending, Some(Pending::Deletion { due: None })) {
                    entry.pending = Some(Pending::Deletion { due: Some(due) });
                }
            }
        }
        sim.advance();
    }

    /// Sets CMF's own `spec.savepointSchedule` on an application.
    pub fn set_own_schedule(&self, parent: &str, schedule: Value) {
        if let Some(p) = lock(&self.state).parents.get_mut(parent) {
            p.own_schedule = Some(schedule);
        }
    }

    /// Savepoints of this parent that finish from now on end FAILED with this error.
    pub fn fail_savepoints_of(&self, parent: &str, error: &str) {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.failing.insert(parent.into(), error.into());
    }

    pub fn heal_savepoints_of(&self, parent: &str) {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.failing.remove(parent);
    }

    /// Savepoints of this parent stay IN_PROGRESS until `release_savepoints_of`.
    pub fn hold_savepoints_of(&self, parent: &str) {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.held.insert(parent.into());
    }

    pub fn release_savepoints_of(&self, parent: &str) {
        let mut sim = lock(&self.state);
        sim.held.remove(parent);
        sim.advance();
    }

    /// The cluster behind this environment is disconnected: requests about applications and
    /// statements answer 503 until `reconnect`.
    pub fn disconnect(&self) {
        lock(&self.state).disconnected = true;
    }

    pub fn reconnect(&self) {
        lock(&self.state).disconnected = false;
    }

    /// Stores a savepoint of `parent` as given, COMPLETED unless it says otherwise; `metadata.uid`,
    /// `creationTimestamp`, `apiVersion` and `kind` are filled in when missing. It never changes by
    /// itself.
    pub fn seed_savepoint(&self, parent: &str, savepoint: Value) {
        let mut resource = savepoint;
        resource["apiVersion"] = json!("cmf.confluent.io/v1");
        resource["kind"] = json!("Savepoint");
        if resource["metadata"]["uid"].is_null() {
            resource["metadata"]["uid"] = json!(uuid_v4());
        }
        if resource["metadata"]["creationTimestamp"].is_null() {
            resource["metadata"]["creationTimestamp"] = json!(now_text(Utc::now()));
        }
        if resource["status"]["state"].is_null() {
            resource["status"]["state"] = json!("COMPLETED");
        }
        let mut sim = lock(&self.state);
        sim.advance();
        sim.entries.push(Entry {
            parent: parent.into(),
            resource,
            pending: None,
        });
    }

    /// The savepoint resources as a GET would show them now, of every parent.
    pub fn savepoints(&self) -> Vec<Value> {
        let mut sim = lock(&self.state);
        sim.advance();
        sim.entries.iter().map(|e| e.resource.clone()).collect()
    }

    /// Every savepoint a POST created, in order, as it was when created.
    pub fn triggers(&self) -> Vec<Value> {
        lock(&self.state).triggers.clone()
    }

    /// Every deletion accepted, in order, whether or not its answer reached the client.
    pub fn deletions(&self) -> Vec<Deletion> {
        lock(&self.state).deletions.clone()
    }

    /// Every request received, in order of arrival.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).network.requests.clone()
    }

    /// The network between savepointd and CMF: faults to inject, counts of those injected.
    pub fn network<R>(&self, f: impl FnOnce(&mut Network) -> R) -> R {
        f(&mut lock(&self.state).network)
    }
}

struct Parent {
    /// `status.jobStatus.state` of an application, `status.phase` of a statement.
    state: String,
    own_schedule: Option<Value>,
}

enum Pending {
    Trigger {
        started: Instant,
        started_at: DateTime<Utc>,
    },
    /// An accepted deletion: gone at `due`; `None` while the job is down (`pendingDeletion`).
    Deletion { due: Option<Instant> },
}

struct Entry {
    parent: String,
    resource: Value,
    pending: Option<Pending>,
}

struct Sim {
    environment: String,
    token: Option<String>,
    max_page_size: usize,
    pending_for: Duration,
    complete_after: Duration,
    delete_after: Duration,
    parents: HashMap<String, Parent>,
    entries: Vec<Entry>,
    triggers: Vec<Value>,
    deletions: Vec<Deletion>,
    failing: HashMap<String, String>,
    held: HashSet<String>,
    disconnected: bool,
    network: Network,
}

type Answer = (StatusCode, Value);

fn error(status: StatusCode, text: impl Into<String>) -> Answer {
    (status, json!({ "errors": [{ "message": text.into() }] }))
}

fn now_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn name_of(resource: &Value) -> &str {
    resource["metadata"]["name"].as_str().unwrap_or("")
}

fn state_of(resource: &Value) -> &str {
    resource["status"]["state"].as_str().unwrap_or("")
}

fn created(resource: &Value) -> Option<DateTime<Utc>> {
    resource["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A Kubernetes object name (RFC 1123 subdomain): CMF keeps savepoints as Kubernetes resources.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl Sim {
    fn new(opts: CmfSimOptions) -> Self {
        Self {
            environment: opts.environment,
            token: opts.token,
            max_page_size: opts.max_page_size,
            pending_for: opts.pending_for,
            complete_after: opts.complete_after,
            delete_after: opts.delete_after,
            parents: HashMap::new(),
            entries: Vec::new(),
            triggers: Vec::new(),
            deletions: Vec::new(),
            failing: HashMap::new(),
            held: HashSet::new(),
            disconnected: false,
            network: Network::with_latency(opts.latency),
        }
    }

    fn is_running(&self, parent: &str) -> bool {
        self.parents
            .get(parent)
            .is_some_and(|p| p.state == "RUNNING")
    }

    /// Applies every transition that is due by now.
    fn advance(&mut self) {
        let now = Instant::now();
        let mut index = 0;
        while index < self.entries.len() {
            let entry = &mut self.entries[index];
            match &entry.pending {
                Some(Pending::Trigger {
                    started,
                    started_at,
                }) => {
                    let elapsed = now.saturating_duration_since(*started);
                    if elapsed >= self.complete_after && !self.held.contains(&entry.parent) {
                        let done_at = *started_at
                            + chrono::Duration::from_std(self.complete_after).unwrap_or_default();
                        let status = &mut entry.resource["status"];
                        status["resultTimestamp"] = json!(now_text(done_at));
                        match self.failing.get(&entry.parent) {
                            Some(message) => {
                                status["state"] = json!("FAILED");
                                status["error"] = json!(message);
                                status["failures"] = json!(1);
                            }
                            None => {
                                status["state"] = json!("COMPLETED");
                                status["path"] = json!(format!(
                                    "s3://cmf/savepoints/savepoint-{}-{}",
                                    random_hex(6),
                                    random_hex(12)
                                ));
                            }
                        }
                        entry.pending = None;
                    } else if elapsed >= self.pending_for
                        && state_of(&entry.resource) == "TRIGGER_PENDING"
                    {
                        entry.resource["status"]["state"] = json!("IN_PROGRESS");
                    }
                }
                Some(Pending::Deletion { due: Some(due) }) if now >= *due => {
                    self.entries.remove(index);
                    continue;
                }
                _ => {}
            }
            index += 1;
        }
    }

    fn list(&self, parent: &str, query: &[(String, String)]) -> Answer {
        let number = |key: &str, default: usize| match query_value(query, key) {
            None => Ok(default),
            Some(v) => v.parse::<usize>().map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("Parameter '{key}' must be a non-negative integer, got '{v}'"),
                )
            }),
        };
        let (page, size) = match (number("page", 0), number("size", 10)) {
            (Ok(page), Ok(size)) => (page, size.clamp(1, self.max_page_size)),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        let mut all: Vec<&Value> = self
            .entries
            .iter()
            .filter(|e| e.parent == parent)
            .map(|e| &e.resource)
            .collect();
        all.sort_by_key(|r| (created(r), name_of(r).to_owned()));
        let items: Vec<Value> = all
            .into_iter()
            .skip(page * size)
            .take(size)
            .cloned()
            .collect();
        (
            StatusCode::OK,
            json!({
                "pageable": { "page": page, "size": size, "sort": { "unsorted": true } },
                "metadata": { "size": items.len() },
                "items": items,
            }),
        )
    }

    fn create(&mut self, parent: &str, body: &[u8]) -> Answer {
        let request: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("Malformed savepoint: {e}")),
        };
        if request["apiVersion"] != "cmf.confluent.io/v1" || request["kind"] != "Savepoint" {
            return error(
                StatusCode::BAD_REQUEST,
                "apiVersion must be cmf.confluent.io/v1 and kind Savepoint",
            );
        }
        let name = match request["metadata"]["name"].as_str() {
            Some(name) if !valid_name(name) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("metadata.name '{name}' is not a valid resource name"),
                );
            }
            Some(name) => name.to_owned(),
            None => format!(
                "{}-{}",
                parent.rsplit('/').next().unwrap_or("sp"),
                random_hex(8)
            ),
        };
        if self.entries.iter().any(|e| name_of(&e.resource) == name) {
            return error(
                StatusCode::CONFLICT,
                format!("Savepoint with name '{name}' already exists"),
            );
        }
        let format_type = request["spec"]["formatType"]
            .as_str()
            .unwrap_or("CANONICAL");
        if !matches!(format_type, "CANONICAL" | "NATIVE") {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("spec.formatType '{format_type}' is not CANONICAL or NATIVE"),
            );
        }
        let now = Utc::now();
        let mut resource = json!({
            "apiVersion": "cmf.confluent.io/v1",
            "kind": "Savepoint",
            "metadata": {
                "name": name,
                "uid": uuid_v4(),
                "creationTimestamp": now_text(now),
                "labels": request["metadata"]["labels"].clone(),
                "annotations": request["metadata"]["annotations"].clone(),
            },
            "spec": {
                "formatType": format_type,
                "backoffLimit": request["spec"]["backoffLimit"].as_i64().unwrap_or(-1),
                "path": request["spec"]["path"].clone(),
            },
            "status": { "state": "TRIGGER_PENDING", "source": "MANUAL",
                "triggerTimestamp": now_text(now), "failures": 0 },
        });
        // A job that does not run cannot take it: CMF gives it up at once.
        let pending = if self.is_running(parent) {
            Some(Pending::Trigger {
                started: Instant::now(),
                started_at: now,
            })
        } else {
            resource["status"]["state"] = json!("ABANDONED");
            None
        };
        self.triggers.push(resource.clone());
        self.entries.push(Entry {
            parent: parent.into(),
            resource: resource.clone(),
            pending,
        });
        (StatusCode::CREATED, resource)
    }

    fn delete(&mut self, parent: &str, name: &str, query: &[(String, String)]) -> Answer {
        let forced = query_value(query, "force") == Some("true");
        let Some(index) = self
            .entries
            .iter()
            .position(|e| e.parent == parent && name_of(&e.resource) == name)
        else {
            return error(
                StatusCode::NOT_FOUND,
                format!("Savepoint '{name}' not found"),
            );
        };
        let entry = &self.entries[index];
        if matches!(entry.pending, Some(Pending::Deletion { .. })) {
            // Already being deleted: accepted again, nothing new happens.
            return (StatusCode::NO_CONTENT, Value::Null);
        }
        if matches!(entry.pending, Some(Pending::Trigger { .. })) && !forced {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "Savepoint '{name}' is {} and cannot be deleted",
                    state_of(&entry.resource)
                ),
            );
        }
        let when = created(&entry.resource);
        let newer_completed = self
            .entries
            .iter()
            .filter(|e| e.parent == parent && state_of(&e.resource) == "COMPLETED")
            .filter(|e| !matches!(e.pending, Some(Pending::Deletion { .. })))
            .filter(|e| created(&e.resource) > when)
            .count();
        self.deletions.push(Deletion {
            savepoint: entry.resource.clone(),
            parent: parent.into(),
            state: state_of(&entry.resource).into(),
            newer_completed,
            forced,
        });
        if forced {
            self.entries.remove(index);
            return (StatusCode::NO_CONTENT, Value::Null);
        }
        // The data goes through the job's cluster: while it is down, the resource waits.
        let due = self
            .is_running(parent)
            .then(|| Instant::now() + self.delete_after);
        let entry = &mut self.entries[index];
        if due.is_none() {
            entry.resource["status"]["pendingDeletion"] = json!(true);
        }
        entry.pending = Some(Pending::Deletion { due });
        (StatusCode::NO_CONTENT, Value::Null)
    }

    fn parent_json(&self, id: &str) -> Answer {
        let Some(p) = self.parents.get(id) else {
            let (kind, name) = id.split_once('/').unwrap_or(("", id));
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "{} '{name}' not found in environment '{}'",
                    kind.trim_end_matches('s'),
                    self.environment
                ),
            );
        };
        let (kind, name) = id.split_once('/').unwrap_or(("", id));
        let mut spec = json!({});
        if let Some(schedule) = &p.own_schedule {
            spec["savepointSchedule"] = schedule.clone();
        }
        let status = if kind == "statements" {
            json!({ "phase": p.state })
        } else {
            json!({ "jobStatus": { "state": p.state }, "lifecycleState": "STABLE" })
        };
        (
            StatusCode::OK,
            json!({
                "apiVersion": "cmf.confluent.io/v1",
                "kind": if kind == "statements" { "Statement" } else { "FlinkApplication" },
                "metadata": { "name": name },
                "spec": spec,
                "status": status,
            }),
        )
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
            return error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized: a valid bearer token is required",
            );
        }
        let Some(rest) = path.strip_prefix("/cmf/api/v1/environments/") else {
            return error(StatusCode::NOT_FOUND, format!("No resource at {path}"));
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let Some((&environment, segments)) = segments.split_first() else {
            return error(StatusCode::NOT_FOUND, format!("No resource at {path}"));
        };
        if environment != self.environment {
            return error(
                StatusCode::NOT_FOUND,
                format!("Environment '{environment}' not found"),
            );
        }
        if segments.is_empty() {
            return match *method {
                Method::GET => (
                    StatusCode::OK,
                    json!({ "name": self.environment, "created_time": "2026-01-01T00:00:00Z" }),
                ),
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
            };
        }
        if self.disconnected {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The Flink cluster of this environment is disconnected",
            );
        }
        self.advance();
        let (collection, name, rest) = match segments {
            [c @ ("applications" | "statements"), name, rest @ ..] => (*c, *name, rest),
            _ => return error(StatusCode::NOT_FOUND, format!("No resource at {path}")),
        };
        let parent = format!("{collection}/{name}");
        if !self.parents.contains_key(&parent) {
            return self.parent_json(&parent);
        }
        match (method.clone(), rest) {
            (Method::GET, []) => self.parent_json(&parent),
            (Method::GET, ["savepoints"]) => self.list(&parent, query),
            (Method::POST, ["savepoints"]) => self.create(&parent, body),
            (Method::GET, ["savepoints", savepoint]) => match self
                .entries
                .iter()
                .find(|e| e.parent == parent && name_of(&e.resource) == *savepoint)
            {
                Some(e) => (StatusCode::OK, e.resource.clone()),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("Savepoint '{savepoint}' not found"),
                ),
            },
            (Method::DELETE, ["savepoints", savepoint]) => self.delete(&parent, savepoint, query),
            _ => error(StatusCode::NOT_FOUND, format!("No resource at {path}")),
        }
    }

    fn error_body(text: &str) -> Value {
        json!({ "errors": [{ "message": text }] })
    }
}
