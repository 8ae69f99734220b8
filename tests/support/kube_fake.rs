//! A fake Kubernetes API server, small enough to read and big enough for kube-rs (list, watch,
//! reflectors) and for the real `kubectl`. It serves:
//!
//! - pods, read-only: tests add, relabel and remove them;
//! - `coordination.k8s.io/v1` Leases: get, list, watch, create, and replace with resourceVersion
//!   preconditions (a stale or concurrent write is a 409 Conflict, as on a real API server);
//! - the Apache Flink Kubernetes Operator's custom resources, `flink.apache.org/v1beta1`
//!   FlinkDeployment, FlinkSessionJob and FlinkStateSnapshot: create (`generateName` included),
//!   replace, JSON merge patch (what `kubectl apply` sends for a custom resource), JSON patch, a
//!   simplified server-side apply, the `/status` subresource, and deletion with finalizers
//!   ([`resources`]);
//! - unless a test turns it off, a small simulation of the operator, which labels, triggers,
//!   completes, fails, abandons and disposes of FlinkStateSnapshots as the operator's own code does
//!   ([`flink_operator`]).
//!
//! Every kind lives in one store with one event log: a resource version that grows with every
//! change, watches with label and field selectors, bookmarks, timeouts and 410 Gone after a
//! compaction, and server-side tables for `kubectl get`. Network faults (a lost create answer, a
//! dropped connection, a 5xx) come from [`super::unreliable`], as for the other simulators, and every
//! request is recorded.
//!
//! It is checked against the real `kubectl` and against kube-rs in `tests/fakes.rs`, so that code
//! tested here behaves the same against a real cluster.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, mpsc, watch as signal};
use tokio::task::JoinHandle;

use super::unreliable::{Connection, DroppableListener};
pub use super::unreliable::{Fault, Network, RecordedRequest};
use super::{lock, loopback_listener, parse_query, query_value};

mod flink_operator;
mod resources;

// Each test crate uses its own part of the support code, as `#![allow(dead_code)]` in `mod.rs` says.
#[allow(unused_imports)]
pub use flink_operator::{
    Disposal, FINALIZER, FlinkStatus, JobKind, OperatorOptions, savepoint_snapshot,
};
use resources::{LEASES, PODS, ResourceType};

type Labels = BTreeMap<String, String>;
/// An object's namespace and name.
type Key = (String, String);

/// Without activity, a watch that asked for bookmarks gets one this often.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// Request bodies larger than this are answered 400 rather than buffered.
const MAX_BODY_BYTES: usize = 1 << 20;

pub struct KubeFakeOptions {
    /// The operator simulation, with its timings; `None` serves the Flink resources with nobody
    /// acting on them, as a cluster where the CRDs are installed and the operator is not.
    pub operator: Option<OperatorOptions>,
}

impl Default for KubeFakeOptions {
    fn default() -> Self {
        Self {
            operator: Some(OperatorOptions::default()),
        }
    }
}

pub struct KubeFake {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    state: Arc<Shared>,
    server: JoinHandle<()>,
    operator: Option<JoinHandle<()>>,
}

impl Drop for KubeFake {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(operator) = &self.operator {
            operator.abort();
        }
    }
}

/// One request as the API server understood it, for counting requests per kind and verb.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`; empty for discovery and
    /// paths that name no resource.
    pub verb: &'static str,
    /// The plural, with its subresource when there is one: `flinkstatesnapshots/status`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The status it was answered (0 when its connection was dropped before handling).
    pub status: u16,
    /// Handled, then its answer lost (see [`KubeFake::lose_next_answers_to`]).
    pub lost: bool,
    /// `application/merge-patch+json` and the like.
    pub content_type: Option<String>,
    /// The JSON body, if it had one.
    pub body: Option<Value>,
}

impl KubeFake {
    /// A fake with the operator simulation on, at its default timings.
    pub async fn start() -> KubeFake {
        Self::start_with(KubeFakeOptions::default()).await
    }

    pub async fn start_with(options: KubeFakeOptions) -> KubeFake {
        let listener = loopback_listener();
        let addr = listener
            .local_addr()
            .expect("local address of the fake Kubernetes API server");
        let state = Arc::new(Shared {
            cluster: Mutex::new(Cluster::new(options.operator.clone())),
            leases_held: signal::channel(false).0,
            wake: Notify::new(),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        // DroppableListener turns Nagle off on every connection, as a real API server does: a watch
        // writes an event at a time, and each event that follows another closely would otherwise wait
        // for the client's delayed ACK of the one before (up to 40 ms on Linux).
        let server = tokio::spawn(async move {
            let _ = axum::serve(
                DroppableListener(listener),
                app.into_make_service_with_connect_info::<Connection>(),
            )
            .await;
        });
        let operator = options
            .operator
            .map(|_| tokio::spawn(flink_operator::run(state.clone())));
        KubeFake {
            url: format!("http://{addr}"),
            state,
            server,
            operator,
        }
    }

    /// Creates a running pod (an ADDED event); an existing pod of that name gets the labels
    /// instead (MODIFIED).
    pub fn add_pod(&self, namespace: &str, name: &str, labels: &[(&str, &str)]) {
        let mut cluster = self.cluster();
        if let Some(pod) = cluster.get(PODS.plural, namespace, name) {
            let mut pod = pod.clone();
            pod["metadata"]["labels"] = json!(to_labels(labels));
            cluster.write(&PODS, pod);
            return;
        }
        cluster.pod_count += 1;
        let pod = new_pod(namespace, name, &to_labels(labels), cluster.pod_count);
        cluster.write(&PODS, pod);
    }

    /// Replaces the labels of a pod (a MODIFIED event).
    pub fn set_labels(&self, namespace: &str, name: &str, labels: &[(&str, &str)]) {
        let mut cluster = self.cluster();
        let Some(pod) = cluster.get(PODS.plural, namespace, name) else {
            panic!("set_labels: no pod {namespace}/{name}");
        };
        let mut pod = pod.clone();
        pod["metadata"]["labels"] = json!(to_labels(labels));
        cluster.write(&PODS, pod);
    }

    /// Removes a pod (a DELETED event).
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        if self
            .cluster()
            .remove(&PODS, &(namespace.into(), name.into()))
            .is_none()
        {
            panic!("delete_pod: no pod {namespace}/{name}");
        }
    }

    /// While `true`, every Lease request hangs without an answer (as an API server that is
    /// unreachable for the replicas, or overloaded); `false` lets the waiting ones through.
    pub fn hold_leases(&self, on: bool) {
        self.state.leases_held.send_replace(on);
    }

    /// The Lease as stored, if it exists.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.cluster().get(LEASES.plural, namespace, name).cloned()
    }

    /// The holder of a Lease; `None` when it is absent or free.
    pub fn lease_holder(&self, namespace: &str, name: &str) -> Option<String> {
        self.lease(namespace, name)?["spec"]["holderIdentity"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_string)
    }

    /// Forgets the event history, so that a watch from any earlier resource version is answered
    /// 410 Gone, as after an etcd compaction; clients must then list again.
    pub fn compact(&self) {
        let mut cluster = self.cluster();
        cluster.log.clear();
        cluster.compacted_through = cluster.resource_version;
    }

    /// The current resource version of the cluster.
    pub fn resource_version(&self) -> u64 {
        self.cluster().resource_version
    }

    /// All requests received so far.
    pub fn request_count(&self) -> usize {
        self.cluster().network.requests.len()
    }

    /// Every request as `"METHOD /path?query"`, in order of arrival, with the query
    /// percent-decoded (`labelSelector=app=x,system=y`) so tests can match it as written.
    pub fn requests(&self) -> Vec<String> {
        self.api_requests()
            .into_iter()
            .map(|r| {
                let query: Vec<String> = r.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
                if query.is_empty() {
                    format!("{} {}", r.method, r.path)
                } else {
                    format!("{} {}?{}", r.method, r.path, query.join("&"))
                }
            })
            .collect()
    }

    /// Every request, in order of arrival, with the verb and resource it addressed.
    pub fn api_requests(&self) -> Vec<ApiRequest> {
        self.cluster()
            .network
            .requests
            .iter()
            .map(api_request)
            .collect()
    }

    /// How many requests were `verb` (`create`, `list`, `watch`, …) on `resource`
    /// (`flinkstatesnapshots`, `flinkstatesnapshots/status`, `pods`, …).
    pub fn count_requests(&self, verb: &str, resource: &str) -> usize {
        self.api_requests()
            .iter()
            .filter(|r| r.verb == verb && r.resource == resource)
            .count()
    }

    /// The network between clients and the API server: faults to inject (one by one or from a
    /// seeded plan), latency, the faults injected so far.
    pub fn network<R>(&self, f: impl FnOnce(&mut Network) -> R) -> R {
        f(&mut self.cluster().network)
    }

    /// The next `n` requests of `method` on `resource` (a plural, `flinkstatesnapshots`) are
    /// handled, changes included, and then their connection is killed before the answer: a create
    /// that took effect while its client saw only an error.
    pub fn lose_next_answers_to(&self, method: &str, resource: &str, n: usize) {
        self.network(|network| {
            network.next_to(
                Some(method),
                Some(&format!("/{resource}")),
                n,
                Fault::LoseAfter,
            )
        });
    }

    /// Writes `dir/kubeconfig`: one cluster at `url` over plain HTTP, one context, a user without
    /// credentials.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
users:
- name: fake
  user: {{}}
preferences: {{}}
",
            url = self.url
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    fn cluster(&self) -> std::sync::MutexGuard<'_, Cluster> {
        lock(&self.state.cluster)
    }
}

struct Shared {
    cluster: Mutex<Cluster>,
    /// `true` while Lease requests are held (see [`KubeFake::hold_leases`]).
    leases_held: signal::Sender<bool>,
    /// Wakes the operator simulation after a change that is no API event (a test's instruction).
    wake: Notify,
}

struct Cluster {
    /// Every object, by plural, then namespace and name.
    objects: BTreeMap<&'static str, BTreeMap<Key, Value>>,
    resource_version: u64,
    pod_count: u32,
    log: Vec<Event>,
    /// Watches from at or below this version can no longer be served from `log`.
    compacted_through: u64,
    /// Sent while the cluster lock is held, and subscribed to under it, so that a watch sees each
    /// event exactly once: either in the log it copies or on the channel.
    events: broadcast::Sender<Event>,
    network: Network,
    operator: flink_operator::Operator,
}

#[derive(Clone)]
struct Event {
    /// The plural: a watch sees only its own resource.
    resource: &'static str,
    resource_version: u64,
    kind: &'static str,
    /// Labels before and after the change; `None` where the object did not exist. A watch with a
    /// selector sees an object that starts or stops matching as ADDED or DELETED, as Kubernetes
    /// does.
    before: Option<Labels>,
    after: Option<Labels>,
    object: Value,
}

impl Cluster {
    fn new(operator: Option<OperatorOptions>) -> Cluster {
        Cluster {
            objects: BTreeMap::new(),
            resource_version: 0,
            pod_count: 0,
            log: Vec::new(),
            compacted_through: 0,
            events: broadcast::channel(1024).0,
            network: Network::default(),
            operator: flink_operator::Operator::new(operator.unwrap_or_default()),
        }
    }

    fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(resource)?
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Every object of a resource, in order of namespace and name.
    fn list(&self, resource: &str) -> impl Iterator<Item = &Value> {
        self.objects
            .get(resource)
            .into_iter()
            .flat_map(|o| o.values())
    }

    /// Stores `object` under a new resource version and tells the watches (ADDED or MODIFIED); an
    /// object marked for deletion whose finalizers are all gone is removed instead (DELETED). An
    /// object that did not change keeps its version and makes no event, as on a real API server.
    fn write(&mut self, resource: &ResourceType, mut object: Value) -> Value {
        if resource.custom {
            // The API server drops nulls from custom resources (their schemas are not nullable).
            prune_nulls(&mut object);
        }
        let key = key_of(&object);
        let current = self.objects.get(resource.plural).and_then(|o| o.get(&key));
        if let Some(current) = current {
            object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            if *current == object {
                return object;
            }
        }
        let before = current.map(labels_of);
        if !object["metadata"]["deletionTimestamp"].is_null() && finalizers(&object).is_empty() {
            return self.remove(resource, &key).unwrap_or(object);
        }
        self.resource_version += 1;
        let resource_version = self.resource_version;
        object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        self.objects
            .entry(resource.plural)
            .or_default()
            .insert(key, object.clone());
        self.publish(Event {
            resource: resource.plural,
            resource_version,
            kind: if before.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            before,
            after: Some(labels_of(&object)),
            object: object.clone(),
        });
        object
    }

    /// Removes an object at once (DELETED), whatever its finalizers say.
    fn remove(&mut self, resource: &ResourceType, key: &Key) -> Option<Value> {
        let mut object = self.objects.get_mut(resource.plural)?.remove(key)?;
        self.resource_version += 1;
        let resource_version = self.resource_version;
        object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        self.publish(Event {
            resource: resource.plural,
            resource_version,
            kind: "DELETED",
            before: Some(labels_of(&object)),
            after: None,
            object: object.clone(),
        });
        Some(object)
    }

    fn publish(&mut self, event: Event) {
        self.log.push(event.clone());
        // No subscriber is fine: nobody watches yet.
        let _ = self.events.send(event);
    }
}

fn key_of(object: &Value) -> Key {
    let text = |field: &str| {
        object["metadata"][field]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    (text("namespace"), text("name"))
}

fn prune_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(prune_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn to_labels(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn labels_of(object: &Value) -> Labels {
    object["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Now, as the API server writes metadata timestamps.
fn timestamp() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn new_pod(namespace: &str, name: &str, labels: &Labels, ordinal: u32) -> Value {
    let created = timestamp();
    let ip = format!("10.244.{}.{}", ordinal / 250, ordinal % 250 + 2);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": super::uuid_v4(),
            "labels": labels,
            "creationTimestamp": created,
        },
        "spec": {
            "containers": [{ "name": "flink-main-container", "image": "flink:2.3.0" }],
            "nodeName": "fake-node",
        },
        "status": {
            "phase": "Running",
            "hostIP": "10.0.0.1",
            "podIP": ip,
            "startTime": created,
            "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": created }],
            "containerStatuses": [{
                "name": "flink-main-container",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "image": "flink:2.3.0",
                "imageID": "",
                "state": { "running": { "startedAt": created } },
            }],
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Label and field selectors

enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

struct Selector(Vec<Requirement>);

impl Selector {
    fn parse(text: &str) -> Result<Selector, String> {
        let mut parts = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        let mut requirements = Vec::new();
        for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            requirements.push(parse_requirement(part)?);
        }
        Ok(Selector(requirements))
    }

    fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// `labelSelector` and `fieldSelector` of a list or watch. Field selectors know `metadata.name`
/// and `metadata.namespace`, which is what every resource supports (kubectl's `delete --wait` and
/// kube-rs's single-object watches use the name).
struct Filter {
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn from_query(query: &[(String, String)]) -> Result<Filter, String> {
        let labels = Selector::parse(query_value(query, "labelSelector").unwrap_or(""))?;
        let fields = Selector::parse(query_value(query, "fieldSelector").unwrap_or(""))?;
        for requirement in &fields.0 {
            match requirement {
                Requirement::Equals(k, _) | Requirement::NotEquals(k, _)
                    if k == "metadata.name" || k == "metadata.namespace" => {}
                Requirement::Equals(k, _) | Requirement::NotEquals(k, _) => {
                    return Err(format!("field label not supported: {k}"));
                }
                _ => return Err("invalid field selector: only =, == and != are supported".into()),
            }
        }
        Ok(Filter { labels, fields })
    }

    /// Narrows the filter to one object, as a watch on an object's own path does.
    fn named(mut self, name: &str) -> Filter {
        self.fields.0.push(Requirement::Equals(
            "metadata.name".into(),
            name.to_string(),
        ));
        self
    }

    fn matches(&self, object: &Value) -> bool {
        self.matches_fields(object) && self.labels.matches(&labels_of(object))
    }

    fn matches_fields(&self, object: &Value) -> bool {
        let (namespace, name) = key_of(object);
        self.fields.matches(&Labels::from([
            ("metadata.name".to_string(), name),
            ("metadata.namespace".to_string(), namespace),
        ]))
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let invalid = || format!("unable to parse requirement: {part:?}");
    let checked_key = |key: &str| {
        let key = key.trim();
        if valid_key(key) {
            Ok(key.to_string())
        } else {
            Err(invalid())
        }
    };
    let checked_value = |value: &str| {
        let value = value.trim();
        if valid_value(value) {
            Ok(value.to_string())
        } else {
            Err(invalid())
        }
    };
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(checked_key(key)?));
    }
    if let Some(open) = part.find('(') {
        let inner = part[open + 1..].strip_suffix(')').ok_or_else(invalid)?;
        let mut words = part[..open].split_whitespace();
        let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(invalid());
        };
        let values = inner
            .split(',')
            .map(checked_value)
            .collect::<Result<Vec<_>, _>>()?;
        return match op {
            "in" => Ok(Requirement::In(checked_key(key)?, values)),
            "notin" => Ok(Requirement::NotIn(checked_key(key)?, values)),
            _ => Err(invalid()),
        };
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(
            checked_key(key)?,
            checked_value(value)?,
        ));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(
            checked_key(key)?,
            checked_value(value)?,
        ));
    }
    Ok(Requirement::Exists(checked_key(part)?))
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A `Status` failure as the API server sends it.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(code, status_body(code, reason, message))
}

fn status_body(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn not_found() -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn json_response(code: StatusCode, body: Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// What a request path addresses.
enum Target {
    /// `/version`, `/api`, `/apis` and their groups and versions, and `/openapi/v3`.
    Discovery(Vec<String>),
    Resource {
        resource: &'static ResourceType,
        /// `None` across all namespaces.
        namespace: Option<String>,
        name: Option<String>,
        subresource: Option<String>,
    },
    Unknown,
}

fn target(path: &str) -> Target {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        ["version"] | ["api", ..] | ["apis", ..] | ["openapi", "v3", ..] => {
            return Target::Discovery(segments.iter().map(|s| s.to_string()).collect());
        }
        _ => return Target::Unknown,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(*namespace), rest),
        rest => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, subresource] => (*plural, Some(*name), Some(*subresource)),
        _ => return Target::Unknown,
    };
    match ResourceType::find(group, version, plural) {
        // Objects have names only inside a namespace: every kind served here is namespaced.
        Some(resource) if namespace.is_some() || name.is_none() => Target::Resource {
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            subresource: subresource.map(str::to_string),
        },
        _ => Target::Unknown,
    }
}

fn verb(method: &str, query: &[(String, String)], has_name: bool) -> &'static str {
    let watch = matches!(query_value(query, "watch"), Some("true" | "1"));
    match (method, has_name) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "",
    }
}

fn api_request(recorded: &RecordedRequest) -> ApiRequest {
    let query = parse_query(recorded.query.as_deref());
    let (verb, resource, namespace, name) = match target(&recorded.path) {
        Target::Resource {
            resource,
            namespace,
            name,
            subresource,
        } => (
            verb(&recorded.method, &query, name.is_some()),
            match subresource {
                Some(sub) => format!("{}/{sub}", resource.plural),
                None => resource.plural.to_string(),
            },
            namespace,
            name,
        ),
        _ => ("", String::new(), None, None),
    };
    ApiRequest {
        method: recorded.method.clone(),
        path: recorded.path.clone(),
        query,
        verb,
        resource,
        namespace,
        name,
        status: recorded.status,
        lost: recorded.lost,
        content_type: recorded.content_type.clone(),
        body: recorded.body.clone(),
    }
}

async fn handle(
    State(state): State<Arc<Shared>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    request: Request,
) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES).await;
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().map(str::to_string);
    let (index, fault, latency) = {
        let mut cluster = lock(&state.cluster);
        let network = &mut cluster.network;
        let fault = network.fault_for(parts.method.as_str(), &path);
        network.requests.push(RecordedRequest {
            method: parts.method.to_string(),
            path: path.clone(),
            query: raw_query.clone(),
            status: 0,
            lost: false,
            fault,
            at,
            authorization: None,
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: body
                .as_ref()
                .ok()
                .and_then(|b| serde_json::from_slice(b).ok()),
        });
        (network.requests.len() - 1, fault, network.latency)
    };
    if fault == Some(Fault::DropBefore) {
        connection.kill();
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let query = parse_query(raw_query.as_deref());
    let response = match (fault, body) {
        (Some(Fault::Status(code)), _) => {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            status(code, "InternalError", "injected")
        }
        (_, Err(_)) => status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("request body larger than {MAX_BODY_BYTES} bytes"),
        ),
        (_, Ok(body)) => route(&state, &parts.method, &path, &query, &parts.headers, &body).await,
    };
    {
        // Recorded before the answer is lost or delayed: the client may give up on a slow answer,
        // and the server then drops this future without running the rest.
        let mut cluster = lock(&state.cluster);
        let recorded = &mut cluster.network.requests[index];
        recorded.status = response.status().as_u16();
        recorded.lost = fault == Some(Fault::LoseAfter);
    }
    match fault {
        Some(Fault::LoseAfter) => {
            connection.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(Fault::Slow(by)) => tokio::time::sleep(by).await,
        _ => {}
    }
    response
}

async fn route(
    state: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    match target(path) {
        Target::Discovery(segments) if method == Method::GET => {
            resources::discovery(&segments, headers).unwrap_or_else(not_found)
        }
        Target::Resource {
            resource,
            namespace,
            name,
            subresource,
        } => {
            if resource.plural == LEASES.plural {
                // Held requests wait here, their connection open, until released.
                let mut held = state.leases_held.subscribe();
                let _ = held.wait_for(|on| !on).await;
            }
            let request = resources::ObjectRequest {
                method,
                resource,
                namespace: namespace.as_deref(),
                name: name.as_deref(),
                subresource: subresource.as_deref(),
                query,
                headers,
                body,
            };
            resources::serve(state, &request)
        }
        Target::Discovery(_) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the server does not allow this method on the requested resource: {method}"),
        ),
        Target::Unknown => not_found(),
    }
}

fn accepts(headers: &HeaderMap, shape: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|accept| accept.contains(shape))
}

/// `as=Table`: rows for `kubectl get`.
fn wants_table(headers: &HeaderMap) -> bool {
    accepts(headers, "as=Table")
}

/// `as=PartialObjectMetadata` or `as=PartialObjectMetadataList`: metadata only (kube-rs's
/// `get_metadata`, `list_metadata`, `watch_metadata`).
fn wants_metadata(headers: &HeaderMap) -> bool {
    accepts(headers, "as=PartialObjectMetadata")
}

fn metadata_only(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object["metadata"],
    })
}

/// A `meta.k8s.io/v1` Table of `objects` with the columns of their resource, as the API server
/// renders it for `kubectl get`.
fn table(
    resource: &ResourceType,
    objects: &[Value],
    resource_version: u64,
    query: &[(String, String)],
) -> Value {
    let include = query_value(query, "includeObject").unwrap_or("Metadata");
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let cells: Vec<Value> = resource.columns.iter().map(|c| (c.cell)(object)).collect();
            let mut row = json!({ "cells": cells });
            match include {
                "None" => {}
                "Object" => row["object"] = object.clone(),
                _ => row["object"] = metadata_only(object),
            }
            row
        })
        .collect();
    let columns: Vec<Value> = resource
        .columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "type": "string", "format": c.format,
                "description": c.description, "priority": c.priority,
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version.to_string() },
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// How long ago `object` was created, as `kubectl` shows an age.
fn age_of(object: &Value) -> String {
    object["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| human_age(Utc::now() - t.with_timezone(&Utc)))
        .unwrap_or_else(|| "<unknown>".to_string())
}

fn human_age(age: chrono::Duration) -> String {
    let seconds = age.num_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

// ---------------------------------------------------------------------------------------------
// Watches

/// One line of a watch stream as the API server writes it.
fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(resource: &ResourceType, resource_version: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    watch_line(
        "BOOKMARK",
        &json!({ "kind": resource.kind, "apiVersion": resource.api_version(), "metadata": metadata }),
    )
}

fn gone(message: &str) -> Bytes {
    watch_line("ERROR", &status_body(StatusCode::GONE, "Expired", message))
}

/// What a watch of this resource, namespace and filter sees of an event, if anything: ADDED,
/// MODIFIED or DELETED.
fn project(
    event: &Event,
    resource: &str,
    namespace: Option<&str>,
    filter: &Filter,
) -> Option<&'static str> {
    if event.resource != resource
        || namespace.is_some_and(|n| n != key_of(&event.object).0)
        || !filter.matches_fields(&event.object)
    {
        return None;
    }
    let before = event
        .before
        .as_ref()
        .is_some_and(|l| filter.labels.matches(l));
    let after = event
        .after
        .as_ref()
        .is_some_and(|l| filter.labels.matches(l));
    let kind = match (before, after) {
        (false, false) => return None,
        (false, true) => "ADDED",
        (true, false) => "DELETED",
        (true, true) => event.kind,
    };
    Some(kind)
}

fn watch(
    state: &Arc<Shared>,
    resource: &'static ResourceType,
    namespace: Option<&str>,
    filter: Filter,
    // The objects as sent: whole, or their metadata alone.
    shape: fn(&Value) -> Value,
    query: &[(String, String)],
) -> Response {
    let bookmarks = query_value(query, "allowWatchBookmarks") == Some("true");
    let initial_events = query_value(query, "sendInitialEvents") == Some("true");
    let timeout = query_value(query, "timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let requested = match query_value(query, "resourceVersion").unwrap_or("") {
        "" | "0" => None,
        text => match text.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resource version: {text:?}"),
                );
            }
        },
    };
    let namespace = namespace.map(str::to_string);

    let mut backlog = Vec::new();
    let (mut receiver, mut seen) = {
        let cluster = lock(&state.cluster);
        let receiver = cluster.events.subscribe();
        match requested {
            Some(rv) if !initial_events => {
                if rv < cluster.compacted_through {
                    backlog.push(gone(&format!(
                        "too old resource version: {rv} ({})",
                        cluster.compacted_through + 1
                    )));
                    return stream_response(backlog, None);
                }
                backlog.extend(
                    cluster
                        .log
                        .iter()
                        .filter(|e| e.resource_version > rv)
                        .filter_map(|e| {
                            project(e, resource.plural, namespace.as_deref(), &filter)
                                .map(|kind| watch_line(kind, &shape(&e.object)))
                        }),
                );
            }
            // Without a resource version (or with "0", or for a streaming list), a watch starts
            // with the current state as synthetic ADDED events.
            _ => {
                backlog.extend(
                    cluster
                        .list(resource.plural)
                        .filter(|o| namespace.as_deref().is_none_or(|n| n == key_of(o).0))
                        .filter(|o| filter.matches(o))
                        .map(|o| watch_line("ADDED", &shape(o))),
                );
            }
        }
        if bookmarks || initial_events {
            backlog.push(bookmark(resource, cluster.resource_version, initial_events));
        }
        (
            receiver,
            requested.unwrap_or(0).max(cluster.resource_version),
        )
    };

    let (sender, lines) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        for line in backlog {
            if sender.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(86_400));
        loop {
            let line = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    // A clean end of the stream is how the API server says "watch again".
                    if bookmarks {
                        let _ = sender.send(bookmark(resource, seen, false)).await;
                    }
                    return;
                }
                _ = tokio::time::sleep(BOOKMARK_EVERY), if bookmarks => bookmark(resource, seen, false),
                _ = sender.closed() => return,
                event = receiver.recv() => match event {
                    Ok(event) if event.resource_version > seen => {
                        seen = event.resource_version;
                        match project(&event, resource.plural, namespace.as_deref(), &filter) {
                            Some(kind) => watch_line(kind, &shape(&event.object)),
                            None => continue,
                        }
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = sender.send(gone("watch fell behind the event stream")).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if sender.send(line).await.is_err() {
                return;
            }
        }
    });
    stream_response(Vec::new(), Some(lines))
}

fn stream_response(first: Vec<Bytes>, rest: Option<mpsc::Receiver<Bytes>>) -> Response {
    let first = futures::stream::iter(first.into_iter().map(Ok::<_, Infallible>));
    let rest = futures::stream::unfold(rest, |rest| async move {
        let mut receiver = rest?;
        let line = receiver.recv().await?;
        Some((Ok::<_, Infallible>(line), Some(receiver)))
    });
    let body = Body::from_stream(futures::StreamExt::chain(first, rest));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
