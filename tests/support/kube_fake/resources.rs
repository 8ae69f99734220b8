//! The kinds the fake serves, each described once (discovery, table columns, status subresource,
//! what a write must respect), and the handlers they all share: list and watch, get, create,
//! replace, patch, and delete with finalizers.
//!
//! The Flink kinds follow the operator's CRDs (`helm/flink-kubernetes-operator/crds/*.yml`: names,
//! short names, printer columns, the status subresource, the snapshot schema's enums) and the API
//! server's rules for custom resources: a create or an update of the main resource cannot set
//! `status`, a `/status` write changes nothing else, an update needs a `resourceVersion`, a
//! strategic merge patch is refused (415), a DELETE of an object with finalizers only marks it, and
//! it goes once they are removed.
//!
//! Simplifications, on purpose: server-side apply is taken as a merge patch that may create (no
//! field ownership, so nothing is removed by leaving it out and there are no apply conflicts);
//! fields that the CRD schema does not know are kept, not pruned; `dryRun` and propagation
//! policies are ignored; a list's `continue` token never expires.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{
    Cluster, Filter, Shared, age_of, finalizers, json_response, key_of, metadata_only, not_found,
    query_value, status, status_body, table, timestamp, wants_metadata, wants_table, watch,
};
use crate::support::{lock, random_hex, uuid_v4};

pub(super) struct ResourceType {
    /// Empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub short_names: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// A custom resource: it has a `metadata.generation`, and a DELETE that removes it at once
    /// answers a `Status`, not the object.
    pub custom: bool,
    /// Served with a `/status` subresource: writes to the main resource keep the status as it
    /// was, writes to `/status` change only the status.
    pub status_subresource: bool,
    /// Kubernetes lets Lease updates skip the resourceVersion precondition; custom resources may
    /// not.
    pub unconditional_update: bool,
    /// The columns of `kubectl get`, the name first.
    pub columns: &'static [Column],
    /// The first schema violation of an object, as (field, message); what the CRD's OpenAPI
    /// schema would refuse with a 422.
    pub check: fn(&Value) -> Option<(String, String)>,
}

pub(super) struct Column {
    pub name: &'static str,
    pub format: &'static str,
    /// 0 for the default output, 1 for `-o wide` only.
    pub priority: u8,
    pub description: &'static str,
    pub cell: fn(&Value) -> Value,
}

const NAME: Column = Column {
    name: "Name",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
    cell: |o| o["metadata"]["name"].clone(),
};

const AGE: Column = Column {
    name: "Age",
    format: "",
    priority: 0,
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    cell: |o| json!(age_of(o)),
};

/// A printer column of a CRD: the value at a JSON pointer, `<none>` in kubectl when absent.
const fn printer(name: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        format: "",
        priority: 0,
        description: "",
        cell,
    }
}

fn at(object: &Value, pointer: &str) -> Value {
    object.pointer(pointer).cloned().unwrap_or(Value::Null)
}

fn no_schema(_: &Value) -> Option<(String, String)> {
    None
}

const CUSTOM_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

pub(super) static PODS: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "pods",
    singular: "pod",
    kind: "Pod",
    short_names: &["po"],
    verbs: &["get", "list", "watch"],
    custom: false,
    status_subresource: false,
    unconditional_update: false,
    columns: &[
        NAME,
        Column {
            name: "Ready",
            format: "",
            priority: 0,
            description: "The aggregate readiness state of this pod for accepting traffic.",
            cell: |_| json!("1/1"),
        },
        Column {
            name: "Status",
            format: "",
            priority: 0,
            description: "The aggregate status of the containers in this pod.",
            cell: |_| json!("Running"),
        },
        Column {
            name: "Restarts",
            format: "",
            priority: 0,
            description: "The number of times the containers in this pod have been restarted.",
            cell: |_| json!("0"),
        },
        AGE,
        Column {
            name: "IP",
            format: "",
            priority: 1,
            description: "IP address allocated to the pod.",
            cell: |o| o["status"]["podIP"].clone(),
        },
        Column {
            name: "Node",
            format: "",
            priority: 1,
            description: "NodeName is a request to schedule this pod onto a specific node.",
            cell: |o| o["spec"]["nodeName"].clone(),
        },
        Column {
            name: "Nominated Node",
            format: "",
            priority: 1,
            description: "nominatedNodeName is set only when this pod preempts other pods on the node.",
            cell: |_| json!("<none>"),
        },
        Column {
            name: "Readiness Gates",
            format: "",
            priority: 1,
            description: "If specified, all readiness gates will be evaluated for pod readiness.",
            cell: |_| json!("<none>"),
        },
    ],
    check: no_schema,
};

pub(super) static LEASES: ResourceType = ResourceType {
    group: "coordination.k8s.io",
    version: "v1",
    plural: "leases",
    singular: "lease",
    kind: "Lease",
    short_names: &[],
    verbs: &["create", "get", "list", "update", "watch"],
    custom: false,
    status_subresource: false,
    unconditional_update: true,
    columns: &[
        NAME,
        Column {
            name: "Holder",
            format: "",
            priority: 0,
            description: "holderIdentity contains the identity of the holder of a current lease.",
            cell: |o| json!(o["spec"]["holderIdentity"].as_str().unwrap_or("")),
        },
        AGE,
    ],
    check: no_schema,
};

/// FlinkDeployment and FlinkSessionJob share their printer columns.
const JOB_COLUMNS: &[Column] = &[
    NAME,
    printer("Job Status", |o| at(o, "/status/jobStatus/state")),
    printer("Lifecycle State", |o| at(o, "/status/lifecycleState")),
];

pub(super) static FLINK_DEPLOYMENTS: ResourceType = ResourceType {
    group: "flink.apache.org",
    version: "v1beta1",
    plural: "flinkdeployments",
    singular: "flinkdeployment",
    kind: "FlinkDeployment",
    short_names: &["flinkdep"],
    verbs: CUSTOM_VERBS,
    custom: true,
    status_subresource: true,
    unconditional_update: false,
    columns: JOB_COLUMNS,
    check: no_schema,
};

pub(super) static FLINK_SESSION_JOBS: ResourceType = ResourceType {
    group: "flink.apache.org",
    version: "v1beta1",
    plural: "flinksessionjobs",
    singular: "flinksessionjob",
    kind: "FlinkSessionJob",
    short_names: &["sessionjob"],
    verbs: CUSTOM_VERBS,
    custom: true,
    status_subresource: true,
    unconditional_update: false,
    columns: JOB_COLUMNS,
    check: no_schema,
};

pub(super) static FLINK_STATE_SNAPSHOTS: ResourceType = ResourceType {
    group: "flink.apache.org",
    version: "v1beta1",
    plural: "flinkstatesnapshots",
    singular: "flinkstatesnapshot",
    kind: "FlinkStateSnapshot",
    short_names: &["flinksnp"],
    verbs: CUSTOM_VERBS,
    custom: true,
    status_subresource: true,
    unconditional_update: false,
    columns: &[
        NAME,
        printer("Path", |o| at(o, "/status/path")),
        printer("Result Timestamp", |o| at(o, "/status/resultTimestamp")),
        printer("Snapshot State", |o| at(o, "/status/state")),
    ],
    check: snapshot_schema,
};

static ALL: [&ResourceType; 5] = [
    &PODS,
    &LEASES,
    &FLINK_DEPLOYMENTS,
    &FLINK_SESSION_JOBS,
    &FLINK_STATE_SNAPSHOTS,
];

/// A field, the type the schema gives it, and the test of a value.
type TypeCheck = (&'static str, &'static str, fn(&Value) -> bool);

/// The enums and types of the FlinkStateSnapshot CRD's schema.
fn snapshot_schema(object: &Value) -> Option<(String, String)> {
    let enums: [(&str, &[&str]); 3] = [
        (
            "/spec/jobReference/kind",
            &["FlinkDeployment", "FlinkSessionJob"],
        ),
        (
            "/spec/savepoint/formatType",
            &["CANONICAL", "NATIVE", "UNKNOWN"],
        ),
        (
            "/status/state",
            &[
                "ABANDONED",
                "COMPLETED",
                "FAILED",
                "IN_PROGRESS",
                "TRIGGER_PENDING",
            ],
        ),
    ];
    let field = |pointer: &str| pointer[1..].replace('/', ".");
    for (pointer, allowed) in enums {
        match object.pointer(pointer) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => {}
            Some(other) => {
                let supported: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                return Some((
                    field(pointer),
                    format!(
                        "Unsupported value: {other}: supported values: {}",
                        supported.join(", ")
                    ),
                ));
            }
        }
    }
    let types: [TypeCheck; 8] = [
        ("/spec/backoffLimit", "integer", |v| v.is_i64()),
        ("/spec/jobReference/name", "string", Value::is_string),
        ("/spec/savepoint/path", "string", Value::is_string),
        (
            "/spec/savepoint/alreadyExists",
            "boolean",
            Value::is_boolean,
        ),
        (
            "/spec/savepoint/disposeOnDelete",
            "boolean",
            Value::is_boolean,
        ),
        ("/spec/checkpoint", "object", Value::is_object),
        ("/status/failures", "integer", |v| v.is_i64()),
        ("/status/path", "string", Value::is_string),
    ];
    for (pointer, kind, ok) in types {
        match object.pointer(pointer) {
            None | Some(Value::Null) => {}
            Some(value) if ok(value) => {}
            Some(value) => {
                let field = field(pointer);
                return Some((
                    field.clone(),
                    format!("Invalid value: {value}: {field} in body must be of type {kind}"),
                ));
            }
        }
    }
    None
}

impl ResourceType {
    pub(super) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// How the API server names the resource in messages: `pods`, `leases.coordination.k8s.io`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// How it names the kind in messages about invalid objects: `FlinkStateSnapshot.flink.apache.org`.
    fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub(super) fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
        ALL.iter()
            .copied()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    fn discovery_entries(&self) -> Vec<Value> {
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": true,
            "kind": self.kind,
            "verbs": self.verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        let mut entries = vec![main];
        if self.status_subresource {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": true,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery

/// `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>` and `/apis/<group>/<version>`.
pub(super) fn discovery(segments: &[String], headers: &HeaderMap) -> Option<Response> {
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let group = |name: &str| {
        let resource = ALL.iter().find(|r| r.group == name)?;
        let version =
            json!({ "groupVersion": resource.api_version(), "version": resource.version });
        Some(json!({ "name": name, "versions": [version], "preferredVersion": version }))
    };
    let resources = |group: &str, version: &str| {
        let entries: Vec<Value> = ALL
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .flat_map(|r| r.discovery_entries())
            .collect();
        (!entries.is_empty()).then(|| {
            json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": if group.is_empty() { version.to_string() } else { format!("{group}/{version}") },
                "resources": entries,
            })
        })
    };
    let body = match segments.as_slice() {
        ["version"] => json!({
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
        ["api"] => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{
                "clientCIDR": "0.0.0.0/0",
                "serverAddress": headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default(),
            }],
        }),
        ["api", version] => resources("", version)?,
        ["apis"] => {
            let mut names: Vec<&str> = ALL
                .iter()
                .map(|r| r.group)
                .filter(|g| !g.is_empty())
                .collect();
            names.dedup();
            let groups: Vec<Value> = names.into_iter().filter_map(group).collect();
            json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
        }
        ["apis", name] => {
            let mut body = group(name)?;
            body["kind"] = json!("APIGroup");
            body["apiVersion"] = json!("v1");
            body
        }
        ["apis", group, version] => resources(group, version)?,
        ["openapi", "v3"] => openapi_root(),
        ["openapi", "v3", "apis", group, version] => openapi(group, version)?,
        _ => return None,
    };
    Some(json_response(StatusCode::OK, body))
}

/// The index of the OpenAPI v3 documents: only the custom resources' group has one.
///
/// `kubectl apply` reads it to learn whether the server validates fields itself
/// (`fieldValidation`); without it, kubectl insists on validating on the client and fails for
/// want of the OpenAPI v2 document.
fn openapi_root() -> Value {
    let mut paths = Map::new();
    for resource in ALL.iter().filter(|r| r.custom) {
        let path = format!("apis/{}", resource.api_version());
        paths.insert(
            path.clone(),
            json!({ "serverRelativeURL": format!("/openapi/v3/{path}?hash=1") }),
        );
    }
    json!({ "paths": paths })
}

/// A group version's OpenAPI v3 document, reduced to what kubectl reads: each kind's PATCH
/// operation with its `fieldValidation` parameter and the patch types it accepts (no strategic
/// merge patch for custom resources, so kubectl sends a JSON merge patch).
fn openapi(group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    for resource in ALL
        .iter()
        .filter(|r| r.custom && r.group == group && r.version == version)
    {
        let any = json!({ "schema": { "type": "object" } });
        let patch = json!({
            "x-kubernetes-group-version-kind": {
                "group": resource.group, "version": resource.version, "kind": resource.kind,
            },
            "parameters": [
                { "name": "fieldManager", "in": "query", "schema": { "type": "string" } },
                { "name": "fieldValidation", "in": "query", "schema": { "type": "string" } },
            ],
            "requestBody": { "content": {
                "application/json-patch+json": any,
                "application/merge-patch+json": any,
                "application/apply-patch+yaml": any,
            } },
            "responses": { "200": { "description": "OK" } },
        });
        let base = format!(
            "/apis/{}/namespaces/{{namespace}}/{}/{{name}}",
            resource.api_version(),
            resource.plural
        );
        paths.insert(base.clone(), json!({ "patch": patch }));
        paths.insert(format!("{base}/status"), json!({ "patch": patch }));
    }
    (!paths.is_empty()).then(|| {
        json!({
            "openapi": "3.0.0",
            "info": { "title": "Kubernetes", "version": "v1.32.0" },
            "paths": paths,
            "components": { "schemas": {} },
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Objects

pub(super) struct ObjectRequest<'a> {
    pub method: &'a Method,
    pub resource: &'static ResourceType,
    /// `None` across all namespaces.
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub subresource: Option<&'a str>,
    pub query: &'a [(String, String)],
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl ObjectRequest<'_> {
    fn on_status(&self) -> bool {
        self.subresource == Some("status")
    }
}

pub(super) fn serve(state: &Arc<Shared>, request: &ObjectRequest) -> Response {
    let resource = request.resource;
    if request.subresource.is_some() && !(request.on_status() && resource.status_subresource) {
        return not_found();
    }
    let verb = super::verb(
        request.method.as_str(),
        request.query,
        request.name.is_some(),
    );
    let allowed = if request.subresource.is_some() {
        matches!(verb, "get" | "update" | "patch")
    } else {
        resource.verbs.contains(&verb)
    };
    if !allowed || (verb == "create" && request.namespace.is_none()) {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!(
                "the server does not allow this method on the requested resource: {}",
                request.method
            ),
        );
    }
    match (verb, request.name) {
        ("list", _) => list(state, request),
        ("watch", name) => match Filter::from_query(request.query) {
            Ok(filter) => {
                let filter = match name {
                    Some(name) => filter.named(name),
                    None => filter,
                };
                let shape = if wants_metadata(request.headers) {
                    metadata_only
                } else {
                    Value::clone
                };
                watch(
                    state,
                    resource,
                    request.namespace,
                    filter,
                    shape,
                    request.query,
                )
            }
            Err(message) => status(StatusCode::BAD_REQUEST, "BadRequest", &message),
        },
        ("get", Some(name)) => get(state, request, name),
        ("create", None) => match parse_object(request) {
            Ok(object) => create(&mut lock(&state.cluster), request, object),
            Err(response) => *response,
        },
        ("update", Some(name)) => update(state, request, name),
        ("patch", Some(name)) => patch(state, request, name),
        ("delete", Some(name)) => delete(state, request, name),
        _ => not_found(),
    }
}

/// A failure about one object, with the `details` clients read (kube-rs's `is_not_found`,
/// `is_already_exists`, `is_conflict` go by `reason` and `code`).
fn object_status(
    code: StatusCode,
    reason: &str,
    resource: &ResourceType,
    name: &str,
    message: &str,
) -> Response {
    let mut body = status_body(code, reason, message);
    body["details"] = json!({ "name": name, "group": resource.group, "kind": resource.plural });
    json_response(code, body)
}

fn not_found_object(resource: &ResourceType, name: &str) -> Response {
    object_status(
        StatusCode::NOT_FOUND,
        "NotFound",
        resource,
        name,
        &format!("{} \"{name}\" not found", resource.qualified()),
    )
}

fn conflict(resource: &ResourceType, name: &str) -> Response {
    object_status(
        StatusCode::CONFLICT,
        "Conflict",
        resource,
        name,
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            resource.qualified()
        ),
    )
}

/// A 422 for one field, as the API server's validation answers.
fn invalid(resource: &ResourceType, name: &str, field: &str, message: &str) -> Response {
    let code = StatusCode::UNPROCESSABLE_ENTITY;
    let mut body = status_body(
        code,
        "Invalid",
        &format!(
            "{} \"{name}\" is invalid: {field}: {message}",
            resource.qualified_kind()
        ),
    );
    body["details"] = json!({
        "name": name,
        "group": resource.group,
        "kind": resource.kind,
        "causes": [{ "reason": "FieldValueInvalid", "message": message, "field": field }],
    });
    json_response(code, body)
}

fn bad_request(message: &str) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// A page of a list: `limit` items at most, after the `continue` token of the page before. The
/// token is the last key of that page: opaque to clients all the same, and unlike the API
/// server's it never expires.
fn list(state: &Arc<Shared>, request: &ObjectRequest) -> Response {
    let filter = match Filter::from_query(request.query) {
        Ok(filter) => filter,
        Err(message) => return bad_request(&message),
    };
    let after = query_value(request.query, "continue")
        .filter(|c| !c.is_empty())
        .map(|c| match c.split_once('/') {
            Some((namespace, name)) => (namespace.to_string(), name.to_string()),
            None => (c.to_string(), String::new()),
        });
    let limit = query_value(request.query, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let resource = request.resource;
    let cluster = lock(&state.cluster);
    let mut items: Vec<Value> = cluster
        .list(resource.plural)
        .filter(|o| request.namespace.is_none_or(|n| n == key_of(o).0))
        .filter(|o| after.as_ref().is_none_or(|after| key_of(o) > *after))
        .filter(|o| filter.matches(o))
        .cloned()
        .collect();
    let mut metadata = json!({ "resourceVersion": cluster.resource_version.to_string() });
    if let Some(limit) = limit
        && items.len() > limit
    {
        metadata["remainingItemCount"] = json!(items.len() - limit);
        items.truncate(limit);
        let (namespace, name) = key_of(&items[limit - 1]);
        metadata["continue"] = json!(format!("{namespace}/{name}"));
    }
    if wants_table(request.headers) {
        let mut table = table(resource, &items, cluster.resource_version, request.query);
        table["metadata"] = metadata;
        return json_response(StatusCode::OK, table);
    }
    let list = if wants_metadata(request.headers) {
        json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": metadata,
            "items": items.iter().map(metadata_only).collect::<Vec<_>>(),
        })
    } else {
        json!({
            "kind": format!("{}List", resource.kind),
            "apiVersion": resource.api_version(),
            "metadata": metadata,
            "items": items,
        })
    };
    json_response(StatusCode::OK, list)
}

fn get(state: &Arc<Shared>, request: &ObjectRequest, name: &str) -> Response {
    let resource = request.resource;
    let cluster = lock(&state.cluster);
    let namespace = request.namespace.unwrap_or_default();
    match cluster.get(resource.plural, namespace, name) {
        Some(object) if wants_table(request.headers) => json_response(
            StatusCode::OK,
            table(
                resource,
                std::slice::from_ref(object),
                cluster.resource_version,
                request.query,
            ),
        ),
        Some(object) if wants_metadata(request.headers) => {
            json_response(StatusCode::OK, metadata_only(object))
        }
        Some(object) => json_response(StatusCode::OK, object.clone()),
        None => not_found_object(resource, name),
    }
}

/// A refused request's answer; boxed, as it is large and rare.
type Refused = Box<Response>;

/// The request body as an object of the right kind, or the 400 that refuses it.
fn parse_object(request: &ObjectRequest) -> Result<Value, Refused> {
    let resource = request.resource;
    let object: Value = serde_json::from_slice(request.body).map_err(|e| {
        Box::new(bad_request(&format!(
            "the body of the request is not valid JSON: {e}"
        )))
    })?;
    if !object.is_object() {
        return Err(Box::new(bad_request(
            "the body of the request must be a JSON object",
        )));
    }
    let api_version = resource.api_version();
    if object["apiVersion"] != api_version.as_str() {
        return Err(Box::new(bad_request(&format!(
            "the API version in the data ({}) does not match the expected API version ({api_version})",
            object["apiVersion"].as_str().unwrap_or_default()
        ))));
    }
    if object["kind"] != resource.kind {
        return Err(Box::new(bad_request(&format!(
            "the kind in the data ({}) does not match the expected kind ({})",
            object["kind"].as_str().unwrap_or_default(),
            resource.kind
        ))));
    }
    if let Some(namespace) = object["metadata"]["namespace"].as_str()
        && Some(namespace) != request.namespace
    {
        return Err(Box::new(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )));
    }
    Ok(object)
}

/// `metadata.name` must be a DNS subdomain, labels must be valid, the schema must hold.
fn validate(resource: &ResourceType, object: &Value) -> Result<(), Refused> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if !is_dns_subdomain(name) {
        return Err(Box::new(invalid(
            resource,
            name,
            "metadata.name",
            &format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ),
        )));
    }
    if let Some(labels) = object["metadata"]["labels"].as_object() {
        for (key, value) in labels {
            let value_text = value.as_str().unwrap_or_default();
            if !is_label_key(key) {
                return Err(Box::new(invalid(
                    resource,
                    name,
                    "metadata.labels",
                    &format!(
                        "Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, and be no more than 63 characters; an optional prefix must be a DNS subdomain"
                    ),
                )));
            }
            if !value.is_string() || !is_label_value(value_text) {
                return Err(Box::new(invalid(
                    resource,
                    name,
                    "metadata.labels",
                    &format!(
                        "Invalid value: {value}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, and be no more than 63 characters"
                    ),
                )));
            }
        }
    }
    match (resource.check)(object) {
        Some((field, message)) => Err(Box::new(invalid(resource, name, &field, &message))),
        None => Ok(()),
    }
}

fn is_dns_label(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 63
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !part.starts_with('-')
        && !part.ends_with('-')
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value.as_bytes()[0].is_ascii_alphanumeric()
            && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric())
}

fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            is_dns_subdomain(prefix) && !name.is_empty() && is_label_value(name)
        }
        None => !key.is_empty() && is_label_value(key),
    }
}

/// Removes `key` where `value` is null: metadata is written without null fields.
fn set(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        if value.is_null() {
            map.remove(key);
        } else {
            map.insert(key.to_string(), value);
        }
    }
}

fn create(cluster: &mut Cluster, request: &ObjectRequest, mut object: Value) -> Response {
    let resource = request.resource;
    let namespace = request.namespace.unwrap_or_default();
    let name = match (
        object["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty()),
        object["metadata"]["generateName"].as_str(),
    ) {
        (Some(name), _) => name.to_string(),
        // The API server appends five random characters; hex digits are among those it uses.
        (None, Some(prefix)) => format!("{prefix}{}", random_hex(5)),
        (None, None) => {
            return invalid(
                resource,
                "",
                "metadata.name",
                "Required value: name or generateName is required",
            );
        }
    };
    let metadata = &mut object["metadata"];
    metadata["name"] = json!(name);
    metadata["namespace"] = json!(namespace);
    metadata["uid"] = json!(uuid_v4());
    metadata["creationTimestamp"] = json!(timestamp());
    for field in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        set(metadata, field, Value::Null);
    }
    if resource.custom {
        metadata["generation"] = json!(1);
    }
    // A create cannot set the status of a resource that has a status subresource.
    if resource.status_subresource {
        set(&mut object, "status", Value::Null);
    }
    if let Err(response) = validate(resource, &object) {
        return *response;
    }
    if cluster.get(resource.plural, namespace, &name).is_some() {
        return object_status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            resource,
            &name,
            &format!("{} \"{name}\" already exists", resource.qualified()),
        );
    }
    let stored = cluster.write(resource, object);
    json_response(StatusCode::CREATED, stored)
}

fn update(state: &Arc<Shared>, request: &ObjectRequest, name: &str) -> Response {
    let resource = request.resource;
    let object = match parse_object(request) {
        Ok(object) => object,
        Err(response) => return *response,
    };
    let sent_name = object["metadata"]["name"].as_str().unwrap_or_default();
    if sent_name != name {
        return bad_request(&format!(
            "the name of the object ({sent_name}) does not match the name on the URL ({name})"
        ));
    }
    let mut cluster = lock(&state.cluster);
    let namespace = request.namespace.unwrap_or_default();
    let Some(current) = cluster.get(resource.plural, namespace, name).cloned() else {
        return not_found_object(resource, name);
    };
    // The precondition: a write based on an older read loses.
    match object["metadata"]["resourceVersion"].as_str().unwrap_or("") {
        "" if resource.unconditional_update => {}
        "" => {
            return invalid(
                resource,
                name,
                "metadata.resourceVersion",
                "Invalid value: 0x0: must be specified for an update",
            );
        }
        sent if Some(sent) != current["metadata"]["resourceVersion"].as_str() => {
            return conflict(resource, name);
        }
        _ => {}
    }
    finish_update(&mut cluster, request, name, current, object)
}

/// Writes `sent` over `current` as an update of the main resource or of `/status` does, keeping
/// what clients cannot change.
fn finish_update(
    cluster: &mut Cluster,
    request: &ObjectRequest,
    name: &str,
    current: Value,
    sent: Value,
) -> Response {
    let resource = request.resource;
    let object = if request.on_status() {
        let mut object = current.clone();
        set(&mut object, "status", sent["status"].clone());
        object
    } else {
        let mut object = sent;
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            set(
                &mut object["metadata"],
                field,
                current["metadata"][field].clone(),
            );
        }
        if resource.status_subresource {
            set(&mut object, "status", current["status"].clone());
        }
        // The generation counts changes of anything but metadata and status.
        let body = |o: &Value| {
            let mut o = o.clone();
            set(&mut o, "metadata", Value::Null);
            set(&mut o, "status", Value::Null);
            o
        };
        if resource.custom && body(&object) != body(&current) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0);
            object["metadata"]["generation"] = json!(generation + 1);
        }
        object
    };
    if let Err(response) = validate(resource, &object) {
        return *response;
    }
    if !current["metadata"]["deletionTimestamp"].is_null() {
        let before = finalizers(&current);
        if finalizers(&object).iter().any(|f| !before.contains(f)) {
            return invalid(
                resource,
                name,
                "metadata.finalizers",
                "Forbidden: no new finalizers can be added if the object is being deleted",
            );
        }
    }
    let stored = cluster.write(resource, object);
    json_response(StatusCode::OK, stored)
}

fn patch(state: &Arc<Shared>, request: &ObjectRequest, name: &str) -> Response {
    let resource = request.resource;
    let content_type = request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_string();
    if !matches!(
        content_type.as_str(),
        "application/merge-patch+json"
            | "application/json-patch+json"
            | "application/apply-patch+yaml"
    ) {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (not {content_type:?})"
            ),
        );
    }
    let patch: Value = match serde_json::from_slice(request.body) {
        Ok(patch) => patch,
        Err(e) => return bad_request(&format!("the patch is not valid JSON: {e}")),
    };
    let apply = content_type == "application/apply-patch+yaml";
    if apply && query_value(request.query, "fieldManager").is_none_or(str::is_empty) {
        return bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        );
    }
    let mut cluster = lock(&state.cluster);
    let namespace = request.namespace.unwrap_or_default();
    let current = cluster.get(resource.plural, namespace, name).cloned();
    let patched = match (current.clone(), content_type.as_str()) {
        // Server-side apply creates what does not exist yet.
        (None, "application/apply-patch+yaml") if !request.on_status() => {
            let object = match check_applied(request, name, patch) {
                Ok(object) => object,
                Err(response) => return *response,
            };
            return create(&mut cluster, request, object);
        }
        (None, _) => return not_found_object(resource, name),
        (Some(current), "application/json-patch+json") => match json_patch(current, &patch) {
            Ok(patched) => patched,
            Err(message) => {
                return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &message);
            }
        },
        (Some(mut current), _) => {
            let patch = if apply {
                match check_applied(request, name, patch) {
                    Ok(patch) => patch,
                    Err(response) => return *response,
                }
            } else {
                patch
            };
            merge_patch(&mut current, &patch);
            current
        }
    };
    let current = current.unwrap_or_default();
    if patched["metadata"]["name"] != current["metadata"]["name"] {
        return bad_request("the name of the object cannot be changed by a patch");
    }
    // A patch that names a resourceVersion makes it a precondition.
    if patched["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
        return conflict(resource, name);
    }
    finish_update(&mut cluster, request, name, current, patched)
}

/// A server-side apply body: a whole object of the right kind, named as on the URL.
fn check_applied(request: &ObjectRequest, name: &str, object: Value) -> Result<Value, Refused> {
    let body = object.to_string();
    let object = parse_object(&ObjectRequest {
        body: body.as_bytes(),
        ..*request
    })?;
    if object["metadata"]["name"] != name {
        return Err(Box::new(bad_request(&format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            object["metadata"]["name"].as_str().unwrap_or_default()
        ))));
    }
    Ok(object)
}

fn delete(state: &Arc<Shared>, request: &ObjectRequest, name: &str) -> Response {
    let resource = request.resource;
    let options: Value = if request.body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(request.body) {
            Ok(options) => options,
            Err(e) => return bad_request(&format!("invalid DeleteOptions: {e}")),
        }
    };
    let mut cluster = lock(&state.cluster);
    let namespace = request.namespace.unwrap_or_default();
    let Some(current) = cluster.get(resource.plural, namespace, name).cloned() else {
        return not_found_object(resource, name);
    };
    for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        let wanted = &options["preconditions"][field];
        if !wanted.is_null() && *wanted != current["metadata"][field] {
            return object_status(
                StatusCode::CONFLICT,
                "Conflict",
                resource,
                name,
                &format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {label} in precondition: {}, {label} in object meta: {}",
                    resource.qualified(),
                    wanted.as_str().unwrap_or_default(),
                    current["metadata"][field].as_str().unwrap_or_default()
                ),
            );
        }
    }
    // With finalizers, a deletion only marks the object; whoever owns a finalizer removes it
    // when done, and the last removal deletes the object (see `Cluster::write`).
    if !finalizers(&current).is_empty() {
        let mut object = current;
        if object["metadata"]["deletionTimestamp"].is_null() {
            object["metadata"]["deletionTimestamp"] = json!(timestamp());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        let stored = cluster.write(resource, object);
        return json_response(StatusCode::OK, stored);
    }
    let removed = cluster
        .remove(resource, &key_of(&current))
        .unwrap_or(current);
    if !resource.custom {
        return json_response(StatusCode::OK, removed);
    }
    json_response(
        StatusCode::OK,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": name,
                "group": resource.group,
                "kind": resource.plural,
                "uid": removed["metadata"]["uid"],
            },
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Patches

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above");
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// RFC 6902 (add, remove, replace, move, copy, test), enough for the finalizer edits clients make.
fn json_patch(mut document: Value, operations: &Value) -> Result<Value, String> {
    let operations = operations
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    for operation in operations {
        let path = operation["path"]
            .as_str()
            .ok_or("a JSON patch operation needs a path")?;
        let from = || {
            operation["from"]
                .as_str()
                .ok_or_else(|| format!("{} needs a from", operation["op"]))
        };
        match operation["op"].as_str().unwrap_or_default() {
            "add" => pointer_add(&mut document, path, operation["value"].clone())?,
            "remove" => {
                pointer_remove(&mut document, path)?;
            }
            "replace" => {
                pointer_remove(&mut document, path)?;
                pointer_add(&mut document, path, operation["value"].clone())?;
            }
            "move" => {
                let value = pointer_remove(&mut document, from()?)?;
                pointer_add(&mut document, path, value)?;
            }
            "copy" => {
                let value = document
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| format!("copy from a missing path {}", operation["from"]))?;
                pointer_add(&mut document, path, value)?;
            }
            "test" => {
                if document.pointer(path) != Some(&operation["value"]) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unexpected JSON patch operation {other:?}")),
        }
    }
    Ok(document)
}

/// The parent's pointer and the last token, unescaped.
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let (parent, token) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((parent, token.replace("~1", "/").replace("~0", "~")))
}

fn pointer_add(document: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *document = value;
        return Ok(());
    }
    let (parent, token) = split_pointer(path)?;
    match document.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
        }
        Some(Value::Array(items)) if token == "-" => items.push(value),
        Some(Value::Array(items)) => match token.parse::<usize>() {
            Ok(i) if i <= items.len() => items.insert(i, value),
            _ => {
                return Err(format!(
                    "add operation does not apply: index {token} out of range"
                ));
            }
        },
        _ => {
            return Err(format!(
                "add operation does not apply: doc is missing path: {path:?}"
            ));
        }
    }
    Ok(())
}

fn pointer_remove(document: &mut Value, path: &str) -> Result<Value, String> {
    let missing = || format!("remove operation does not apply: doc is missing path: {path:?}");
    let (parent, token) = split_pointer(path)?;
    match document.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&token).ok_or_else(missing),
        Some(Value::Array(items)) => match token.parse::<usize>() {
            Ok(i) if i < items.len() => Ok(items.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

/// Fills in the metadata the API server sets on create, for test helpers that store objects
/// directly; what the object already has is kept.
pub(super) fn new_object_metadata(object: &mut Value, namespace: &str) {
    let metadata = &mut object["metadata"];
    metadata["namespace"] = json!(namespace);
    if metadata["uid"].is_null() {
        metadata["uid"] = json!(uuid_v4());
    }
    if metadata["creationTimestamp"].is_null() {
        metadata["creationTimestamp"] = json!(timestamp());
    }
    if metadata["generation"].is_null() {
        metadata["generation"] = json!(1);
    }
}
