//! A fake Kubernetes API server that serves pods (discovery, list, get and watch, with label
//! selectors, resource versions, bookmarks, watch timeouts and server-side tables) and
//! `coordination.k8s.io/v1` Leases (get, list, watch, create, and replace with resourceVersion
//! preconditions: a stale or concurrent write is a 409 Conflict, as on a real API server).
//!
//! It is checked against the real `kubectl` and against kube-rs, so that a resolver tested here
//! behaves the same against a real cluster.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch as signal};
use tokio::task::JoinHandle;

use super::{lock, loopback_listener, parse_query, query_value, uuid_v4};

type Labels = BTreeMap<String, String>;

/// Without activity, a watch that asked for bookmarks gets one this often.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

pub struct KubeFake {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    state: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for KubeFake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl KubeFake {
    pub async fn start() -> KubeFake {
        let listener = loopback_listener();
        let addr = listener
            .local_addr()
            .expect("local address of the fake Kubernetes API server");
        let (events, _) = broadcast::channel(1024);
        let state = Arc::new(Shared {
            cluster: Mutex::new(Cluster::default()),
            events,
            leases_held: signal::channel(false).0,
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        // Nagle off, as on a real API server: a watch writes an event at a time, and with Nagle on each
        // event that follows another closely waits for the client's delayed ACK of the one before (up to
        // 40 ms on Linux).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        KubeFake {
            url: format!("http://{addr}"),
            state,
            server,
        }
    }

    /// Creates a running pod (an ADDED event); an existing pod of that name gets the labels
    /// instead (MODIFIED).
    pub fn add_pod(&self, namespace: &str, name: &str, labels: &[(&str, &str)]) {
        let labels = to_labels(labels);
        let mut cluster = lock(&self.state.cluster);
        let key = (namespace.to_string(), name.to_string());
        if cluster.pods.contains_key(&key) {
            cluster.relabel(&self.state.events, &key, labels);
            return;
        }
        cluster.resource_version += 1;
        cluster.pod_count += 1;
        let resource_version = cluster.resource_version;
        let pod = new_pod(
            namespace,
            name,
            &labels,
            resource_version,
            cluster.pod_count,
        );
        cluster.pods.insert(key, pod.clone());
        cluster.publish(
            &self.state.events,
            Event {
                resource: "pods",
                resource_version,
                kind: "ADDED",
                namespace: namespace.to_string(),
                before: None,
                after: Some(labels),
                object: pod,
            },
        );
    }

    /// Replaces the labels of a pod (a MODIFIED event).
    pub fn set_labels(&self, namespace: &str, name: &str, labels: &[(&str, &str)]) {
        let mut cluster = lock(&self.state.cluster);
        let key = (namespace.to_string(), name.to_string());
        assert!(
            cluster.pods.contains_key(&key),
            "set_labels: no pod {namespace}/{name}"
        );
        cluster.relabel(&self.state.events, &key, to_labels(labels));
    }

    /// Removes a pod (a DELETED event).
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let mut cluster = lock(&self.state.cluster);
        let key = (namespace.to_string(), name.to_string());
        let Some(mut pod) = cluster.pods.remove(&key) else {
            panic!("delete_pod: no pod {namespace}/{name}");
        };
        cluster.resource_version += 1;
        let resource_version = cluster.resource_version;
        pod["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        let labels = labels_of(&pod);
        cluster.publish(
            &self.state.events,
            Event {
                resource: "pods",
                resource_version,
                kind: "DELETED",
                namespace: namespace.to_string(),
                before: Some(labels),
                after: None,
                object: pod,
            },
        );
    }

    /// While `true`, every Lease request hangs without an answer (as an API server that is
    /// unreachable for the replicas, or overloaded); `false` lets the waiting ones through.
    pub fn hold_leases(&self, on: bool) {
        self.state.leases_held.send_replace(on);
    }

    /// The Lease as stored, if it exists.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.state.cluster)
            .leases
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
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
        let mut cluster = lock(&self.state.cluster);
        cluster.log.clear();
        cluster.compacted_through = cluster.resource_version;
    }

    /// The current resource version of the cluster.
    pub fn resource_version(&self) -> u64 {
        lock(&self.state.cluster).resource_version
    }

    /// All requests received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.state.cluster).requests.len()
    }

    /// Every request as `"METHOD /path?query"`, in order of arrival, with the query
    /// percent-decoded (`labelSelector=app=x,system=y`) so tests can match it as written.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state.cluster).requests.clone()
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
}

struct Shared {
    cluster: Mutex<Cluster>,
    /// Sent while the cluster lock is held, and subscribed to under it, so that a watch sees each
    /// event exactly once: either in the log it copies or on the channel.
    events: broadcast::Sender<Event>,
    /// `true` while Lease requests are held (see [`KubeFake::hold_leases`]).
    leases_held: signal::Sender<bool>,
}

#[derive(Default)]
struct Cluster {
    pods: BTreeMap<(String, String), Value>,
    leases: BTreeMap<(String, String), Value>,
    resource_version: u64,
    pod_count: u32,
    log: Vec<Event>,
    /// Watches from at or below this version can no longer be served from `log`.
    compacted_through: u64,
    requests: Vec<String>,
}

#[derive(Clone)]
struct Event {
    /// `pods` or `leases`: a watch sees only its own resource.
    resource: &'static str,
    resource_version: u64,
    kind: &'static str,
    namespace: String,
    /// Labels before and after the change; `None` where the pod did not exist. A watch with a
    /// selector sees a pod that starts or stops matching as ADDED or DELETED, as Kubernetes does.
    before: Option<Labels>,
    after: Option<Labels>,
    object: Value,
}

impl Cluster {
    fn publish_lease(
        &mut self,
        events: &broadcast::Sender<Event>,
        kind: &'static str,
        namespace: &str,
        lease: &Value,
        resource_version: u64,
    ) {
        let labels = labels_of(lease);
        self.publish(
            events,
            Event {
                resource: "leases",
                resource_version,
                kind,
                namespace: namespace.to_string(),
                before: (kind != "ADDED").then(|| labels.clone()),
                after: Some(labels),
                object: lease.clone(),
            },
        );
    }

    fn publish(&mut self, events: &broadcast::Sender<Event>, event: Event) {
        self.log.push(event.clone());
        // No subscriber is fine: nobody watches yet.
        let _ = events.send(event);
    }

    fn relabel(
        &mut self,
        events: &broadcast::Sender<Event>,
        key: &(String, String),
        labels: Labels,
    ) {
        self.resource_version += 1;
        let resource_version = self.resource_version;
        let Some(pod) = self.pods.get_mut(key) else {
            return;
        };
        let before = labels_of(pod);
        pod["metadata"]["labels"] = json!(labels);
        pod["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        let object = pod.clone();
        self.publish(
            events,
            Event {
                resource: "pods",
                resource_version,
                kind: "MODIFIED",
                namespace: key.0.clone(),
                before: Some(before),
                after: Some(labels),
                object,
            },
        );
    }
}

fn to_labels(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn labels_of(pod: &Value) -> Labels {
    pod["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn new_pod(namespace: &str, name: &str, labels: &Labels, rv: u64, ordinal: u32) -> Value {
    let created = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let ip = format!("10.244.{}.{}", ordinal / 250, ordinal % 250 + 2);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uuid_v4(),
            "resourceVersion": rv.to_string(),
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
// Label selectors

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

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(
        code,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
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

async fn handle(State(state): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = parse_query(request.uri().query());
    let shown_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    lock(&state.cluster)
        .requests
        .push(if shown_query.is_empty() {
            format!("{method} {path}")
        } else {
            format!("{method} {path}?{shown_query}")
        });
    if let [
        "apis",
        "coordination.k8s.io",
        "v1",
        "namespaces",
        namespace,
        "leases",
        rest @ ..,
    ] = path
        .split('/')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .as_slice()
    {
        let (namespace, name) = (namespace.to_string(), rest.first().map(|n| n.to_string()));
        if rest.len() > 1 {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        // Held requests wait here, their connection open, until released.
        let mut held = state.leases_held.subscribe();
        let _ = held.wait_for(|on| !on).await;
        let headers = request.headers().clone();
        let body = match axum::body::to_bytes(request.into_body(), 1 << 20).await {
            Ok(body) => body,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        };
        return leases(
            &state,
            &method,
            &namespace,
            name.as_deref(),
            &query,
            &headers,
            &body,
        );
    }
    if method != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the server does not allow this method on the requested resource: {method}"),
        );
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["version"] => json_response(
            StatusCode::OK,
            json!({
                "major": "1",
                "minor": "32",
                "gitVersion": "v1.32.0",
                "gitCommit": "70d3cc986aa8221cd1dfb1121852688902d3bf53",
                "gitTreeState": "clean",
                "buildDate": "2024-12-11T17:59:15Z",
                "goVersion": "go1.23.3",
                "compiler": "gc",
                "platform": "linux/amd64",
            }),
        ),
        ["api"] => json_response(
            StatusCode::OK,
            json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{
                    "clientCIDR": "0.0.0.0/0",
                    "serverAddress": request
                        .headers()
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or_default(),
                }],
            }),
        ),
        ["api", "v1"] => json_response(
            StatusCode::OK,
            json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": "v1",
                "resources": [{
                    "name": "pods",
                    "singularName": "pod",
                    "namespaced": true,
                    "kind": "Pod",
                    "verbs": ["get", "list", "watch"],
                    "shortNames": ["po"],
                    "categories": ["all"],
                }],
            }),
        ),
        ["apis"] => json_response(
            StatusCode::OK,
            json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": [coordination_group()] }),
        ),
        ["apis", "coordination.k8s.io"] => json_response(StatusCode::OK, {
            let mut group = coordination_group();
            group["kind"] = json!("APIGroup");
            group["apiVersion"] = json!("v1");
            group
        }),
        ["apis", "coordination.k8s.io", "v1"] => json_response(
            StatusCode::OK,
            json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": "coordination.k8s.io/v1",
                "resources": [{
                    "name": "leases",
                    "singularName": "lease",
                    "namespaced": true,
                    "kind": "Lease",
                    "verbs": ["create", "get", "list", "update", "watch"],
                }],
            }),
        ),
        ["api", "v1", "pods"] => pods(&state, None, &query, request.headers()),
        ["api", "v1", "namespaces", namespace, "pods"] => {
            pods(&state, Some(namespace), &query, request.headers())
        }
        ["api", "v1", "namespaces", namespace, "pods", name] => {
            let cluster = lock(&state.cluster);
            match cluster.pods.get(&(namespace.to_string(), name.to_string())) {
                Some(pod) if wants_table(request.headers()) => json_response(
                    StatusCode::OK,
                    table(std::slice::from_ref(pod), cluster.resource_version, &query),
                ),
                Some(pod) => json_response(StatusCode::OK, pod.clone()),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pods \"{name}\" not found"),
                ),
            }
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

fn coordination_group() -> Value {
    let version = json!({ "groupVersion": "coordination.k8s.io/v1", "version": "v1" });
    json!({ "name": "coordination.k8s.io", "versions": [version], "preferredVersion": version })
}

/// `coordination.k8s.io/v1` Leases in one namespace: list and watch, get, create, replace.
fn leases(
    state: &Arc<Shared>,
    method: &Method,
    namespace: &str,
    name: Option<&str>,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    // A Lease body, or why it is not one (a 400's message).
    let parse = || -> Result<Value, String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("invalid Lease: {e}"))?;
        if value["kind"] != "Lease" || value["apiVersion"] != "coordination.k8s.io/v1" {
            return Err("expected kind Lease, apiVersion coordination.k8s.io/v1".into());
        }
        Ok(value)
    };
    let key = |name: &str| (namespace.to_string(), name.to_string());
    match (method.clone(), name) {
        (Method::GET, None) => {
            if matches!(query_value(query, "watch"), Some("true" | "1")) {
                let selector =
                    match Selector::parse(query_value(query, "labelSelector").unwrap_or("")) {
                        Ok(selector) => selector,
                        Err(message) => {
                            return status(StatusCode::BAD_REQUEST, "BadRequest", &message);
                        }
                    };
                return watch(state, "leases", Some(namespace), selector, query);
            }
            let cluster = lock(&state.cluster);
            let items: Vec<Value> = cluster
                .leases
                .iter()
                .filter(|((ns, _), _)| ns == namespace)
                .map(|(_, lease)| lease.clone())
                .collect();
            if wants_table(headers) {
                return json_response(
                    StatusCode::OK,
                    lease_table(&items, cluster.resource_version),
                );
            }
            json_response(
                StatusCode::OK,
                json!({
                    "kind": "LeaseList",
                    "apiVersion": "coordination.k8s.io/v1",
                    "metadata": { "resourceVersion": cluster.resource_version.to_string() },
                    "items": items,
                }),
            )
        }
        (Method::GET, Some(name)) => {
            let cluster = lock(&state.cluster);
            match cluster.leases.get(&key(name)) {
                Some(lease) if wants_table(headers) => json_response(
                    StatusCode::OK,
                    lease_table(std::slice::from_ref(lease), cluster.resource_version),
                ),
                Some(lease) => json_response(StatusCode::OK, lease.clone()),
                None => lease_not_found(name),
            }
        }
        (Method::POST, None) => {
            let mut lease = match parse() {
                Ok(lease) => lease,
                Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", &message),
            };
            let Some(name) = lease["metadata"]["name"].as_str().map(str::to_string) else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value",
                );
            };
            let mut cluster = lock(&state.cluster);
            if cluster.leases.contains_key(&key(&name)) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("leases.coordination.k8s.io \"{name}\" already exists"),
                );
            }
            cluster.resource_version += 1;
            let rv = cluster.resource_version;
            let metadata = &mut lease["metadata"];
            metadata["namespace"] = json!(namespace);
            metadata["uid"] = json!(uuid_v4());
            metadata["resourceVersion"] = json!(rv.to_string());
            metadata["creationTimestamp"] =
                json!(Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true));
            cluster.leases.insert(key(&name), lease.clone());
            cluster.publish_lease(&state.events, "ADDED", namespace, &lease, rv);
            json_response(StatusCode::CREATED, lease)
        }
        (Method::PUT, Some(name)) => {
            let mut lease = match parse() {
                Ok(lease) => lease,
                Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", &message),
            };
            if lease["metadata"]["name"].as_str() != Some(name) {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the name of the object does not match the name on the URL",
                );
            }
            let mut cluster = lock(&state.cluster);
            let Some(current) = cluster.leases.get(&key(name)) else {
                return lease_not_found(name);
            };
            // The precondition: a write based on an older read loses. Without a resourceVersion
            // the update is unconditional, as Kubernetes allows for Leases.
            let sent = lease["metadata"]["resourceVersion"].as_str().unwrap_or("");
            if !sent.is_empty() && Some(sent) != current["metadata"]["resourceVersion"].as_str() {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                );
            }
            for field in ["uid", "creationTimestamp"] {
                lease["metadata"][field] = current["metadata"][field].clone();
            }
            cluster.resource_version += 1;
            let rv = cluster.resource_version;
            lease["metadata"]["namespace"] = json!(namespace);
            lease["metadata"]["resourceVersion"] = json!(rv.to_string());
            cluster.leases.insert(key(name), lease.clone());
            cluster.publish_lease(&state.events, "MODIFIED", namespace, &lease, rv);
            json_response(StatusCode::OK, lease)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the server does not allow this method on the requested resource: {method}"),
        ),
    }
}

fn lease_not_found(name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("leases.coordination.k8s.io \"{name}\" not found"),
    )
}

/// A Table as the API server renders Leases for `kubectl get leases`: name, holder, age.
fn lease_table(leases: &[Value], resource_version: u64) -> Value {
    let now = Utc::now();
    let rows: Vec<Value> = leases
        .iter()
        .map(|lease| {
            let age = lease["metadata"]["creationTimestamp"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| human_age(now - t.with_timezone(&Utc)))
                .unwrap_or_else(|| "<unknown>".to_string());
            json!({
                "cells": [lease["metadata"]["name"], lease["spec"]["holderIdentity"].as_str().unwrap_or(""), age],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": lease["metadata"],
                },
            })
        })
        .collect();
    let column = |name: &str, format: &str, description: &str| json!({ "name": name, "type": "string", "format": format, "description": description, "priority": 0 });
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version.to_string() },
        "columnDefinitions": [
            column("Name", "name", "Name must be unique within a namespace."),
            column("Holder", "", "holderIdentity contains the identity of the holder of a current lease."),
            column("Age", "", "CreationTimestamp is a timestamp representing the server time when this object was created."),
        ],
        "rows": rows,
    })
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|accept| accept.contains("as=Table"))
}

fn pods(
    state: &Arc<Shared>,
    namespace: Option<&str>,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> Response {
    let selector = match Selector::parse(query_value(query, "labelSelector").unwrap_or("")) {
        Ok(selector) => selector,
        Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    if matches!(query_value(query, "watch"), Some("true" | "1")) {
        return watch(state, "pods", namespace, selector, query);
    }
    let cluster = lock(&state.cluster);
    let items: Vec<Value> = cluster
        .pods
        .iter()
        .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
        .filter(|(_, pod)| selector.matches(&labels_of(pod)))
        .map(|(_, pod)| pod.clone())
        .collect();
    if wants_table(headers) {
        return json_response(
            StatusCode::OK,
            table(&items, cluster.resource_version, query),
        );
    }
    json_response(
        StatusCode::OK,
        json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": { "resourceVersion": cluster.resource_version.to_string() },
            "items": items,
        }),
    )
}

/// A `meta.k8s.io/v1` Table as the API server renders pods for `kubectl get`.
fn table(pods: &[Value], resource_version: u64, query: &[(String, String)]) -> Value {
    let column = |name: &str, format: &str, priority: u8, description: &str| {
        json!({
            "name": name, "type": "string", "format": format,
            "description": description, "priority": priority,
        })
    };
    let include = query_value(query, "includeObject").unwrap_or("Metadata");
    let now = Utc::now();
    let rows: Vec<Value> = pods
        .iter()
        .map(|pod| {
            let age = pod["metadata"]["creationTimestamp"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| human_age(now - t.with_timezone(&Utc)))
                .unwrap_or_else(|| "<unknown>".to_string());
            let mut row = json!({
                "cells": [
                    pod["metadata"]["name"], "1/1", "Running", "0", age,
                    pod["status"]["podIP"], pod["spec"]["nodeName"], "<none>", "<none>",
                ],
            });
            match include {
                "None" => {}
                "Object" => row["object"] = pod.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": pod["metadata"],
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version.to_string() },
        "columnDefinitions": [
            column("Name", "name", 0, "Name must be unique within a namespace."),
            column("Ready", "", 0, "The aggregate readiness state of this pod for accepting traffic."),
            column("Status", "", 0, "The aggregate status of the containers in this pod."),
            column("Restarts", "", 0, "The number of times the containers in this pod have been restarted."),
            column("Age", "", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
            column("IP", "", 1, "IP address allocated to the pod."),
            column("Node", "", 1, "NodeName is a request to schedule this pod onto a specific node."),
            column("Nominated Node", "", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
            column("Readiness Gates", "", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        "rows": rows,
    })
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

/// One line of a watch stream as the API server writes it.
fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(resource: &str, resource_version: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    watch_line(
        "BOOKMARK",
        &if resource == "leases" {
            json!({ "kind": "Lease", "apiVersion": "coordination.k8s.io/v1", "metadata": metadata })
        } else {
            json!({ "kind": "Pod", "apiVersion": "v1", "metadata": metadata })
        },
    )
}

fn gone(message: &str) -> Bytes {
    watch_line(
        "ERROR",
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "Expired",
            "code": 410,
        }),
    )
}

/// What a watch with this namespace and selector sees of an event, if anything.
fn project(
    event: &Event,
    resource: &str,
    namespace: Option<&str>,
    selector: &Selector,
) -> Option<Bytes> {
    if event.resource != resource || namespace.is_some_and(|n| n != event.namespace) {
        return None;
    }
    let before = event.before.as_ref().is_some_and(|l| selector.matches(l));
    let after = event.after.as_ref().is_some_and(|l| selector.matches(l));
    let kind = match (before, after) {
        (false, false) => return None,
        (false, true) => "ADDED",
        (true, false) => "DELETED",
        (true, true) => event.kind,
    };
    Some(watch_line(kind, &event.object))
}

fn watch(
    state: &Arc<Shared>,
    resource: &'static str,
    namespace: Option<&str>,
    selector: Selector,
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
        let receiver = state.events.subscribe();
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
                        .filter_map(|e| project(e, resource, namespace.as_deref(), &selector)),
                );
            }
            // Without a resource version (or with "0", or for a streaming list), a watch starts
            // with the current state as synthetic ADDED events.
            _ => {
                let objects = if resource == "leases" {
                    &cluster.leases
                } else {
                    &cluster.pods
                };
                backlog.extend(
                    objects
                        .iter()
                        .filter(|((ns, _), _)| namespace.as_deref().is_none_or(|n| n == ns))
                        .filter(|(_, pod)| selector.matches(&labels_of(pod)))
                        .map(|(_, pod)| watch_line("ADDED", pod)),
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
                        match project(&event, resource, namespace.as_deref(), &selector) {
                            Some(line) => line,
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
