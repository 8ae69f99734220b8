//! The fakes in `support/` are only worth what they agree with: the Kubernetes fake (pods, Leases,
//! and the Flink Kubernetes Operator's resources with its simulated operator) is checked against
//! the real `kubectl` and kube-rs, the VVP simulator against the documented API, including its
//! refusals.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, Preconditions, ResourceExt,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::eventually;
use support::kube_fake::{
    FINALIZER, FlinkStatus, JobKind, KubeFake, KubeFakeOptions, OperatorOptions, savepoint_snapshot,
};
use support::vvp_sim::{
    Fault, FaultCounts, Faults, SPEC_VERSION_ANNOTATION, VvpSim, VvpSimOptions,
};

const SETTLE: Duration = Duration::from_secs(5);

// -------------------------------------------------------------------------------------------------
// Kubernetes fake

const DEPLOYMENT_ID: &str = "5bd3bbd8-1a5e-4d1c-9f1e-2a6b7c8d9e0f";
const OTHER_DEPLOYMENT_ID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

/// Two Flink pods of `fraud-detection` (JobManager and TaskManager), a pod of another deployment,
/// a pod with the same `deploymentName` that VVP did not launch, and a copy in another namespace.
fn flink_cluster(kube: &KubeFake) {
    let vvp = |name: &'static str, id: &'static str| {
        [
            ("app", "flink-job"),
            ("system", "ververica-platform"),
            ("vvpNamespace", "default"),
            ("deploymentId", id),
            ("deploymentName", name),
        ]
    };
    kube.add_pod(
        "flink",
        "job-5bd3bbd8-jobmanager-0",
        &vvp("fraud-detection", DEPLOYMENT_ID),
    );
    kube.add_pod(
        "flink",
        "job-5bd3bbd8-taskmanager-0",
        &vvp("fraud-detection", DEPLOYMENT_ID),
    );
    kube.add_pod(
        "flink",
        "job-0a1b2c3d-jobmanager-0",
        &vvp("payments", OTHER_DEPLOYMENT_ID),
    );
    kube.add_pod(
        "flink",
        "fraud-detection-lookalike",
        &[("deploymentName", "fraud-detection")],
    );
    kube.add_pod(
        "staging",
        "job-5bd3bbd8-jobmanager-0",
        &vvp("fraud-detection", DEPLOYMENT_ID),
    );
}

/// Runs the real kubectl with a private HOME and discovery cache, bounded in time.
async fn kubectl(home: &std::path::Path, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new("kubectl");
    command
        .args(args)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .arg("--request-timeout=10s")
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(Duration::from_secs(60), command.output()).await {
        Err(_) => panic!("kubectl {args:?} did not finish within 60 s"),
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "kubectl is not on PATH; it is part of the machine image and these tests need the real one"
        ),
        Ok(Err(err)) => panic!("could not run kubectl {args:?}: {err}"),
        Ok(Ok(output)) => output,
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "kubectl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    stdout
}

#[tokio::test]
async fn kubectl_sees_exactly_the_matching_pods() {
    let kube = KubeFake::start().await;
    flink_cluster(&kube);
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig(home.path());
    let kubeconfig = kubeconfig.to_str().unwrap();
    let selector = "deploymentName=fraud-detection,system=ververica-platform";
    let base = [
        "--kubeconfig",
        kubeconfig,
        "--server",
        kube.url.as_str(),
        "get",
        "pods",
        "-n",
        "flink",
        "-l",
        selector,
    ];
    let expected: BTreeSet<String> = ["job-5bd3bbd8-jobmanager-0", "job-5bd3bbd8-taskmanager-0"]
        .map(String::from)
        .into();

    let json_out = kubectl(home.path(), &[&base[..], &["-o", "json"]].concat()).await;
    let list: Value = serde_json::from_str(&json_out).unwrap();
    let items = list["items"].as_array().unwrap();
    let names: BTreeSet<String> = items
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, expected, "{json_out}");
    for item in items {
        assert_eq!(item["metadata"]["namespace"], "flink");
        assert_eq!(item["metadata"]["labels"]["deploymentId"], DEPLOYMENT_ID);
    }

    let table = kubectl(home.path(), &base).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{table}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    let names: BTreeSet<String> = rows.iter().map(|r| r[0].to_string()).collect();
    assert_eq!(names, expected, "{table}");
    for row in &rows {
        assert_eq!(&row[1..4], ["1/1", "Running", "0"], "{table}");
    }

    let ids = kubectl(
        home.path(),
        &[
            &base[..],
            &["-o", "jsonpath={.items[*].metadata.labels.deploymentId}"],
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        ids.split_whitespace().collect::<Vec<_>>(),
        [DEPLOYMENT_ID, DEPLOYMENT_ID]
    );

    // Without --server, through the written kubeconfig alone; across all namespaces the staging
    // pod shows up too.
    let everywhere = kubectl(
        home.path(),
        &[
            "--kubeconfig",
            kubeconfig,
            "get",
            "pods",
            "-A",
            "-l",
            selector,
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(
        everywhere.lines().collect::<Vec<_>>(),
        [
            "pod/job-5bd3bbd8-jobmanager-0",
            "pod/job-5bd3bbd8-taskmanager-0",
            "pod/job-5bd3bbd8-jobmanager-0"
        ]
    );

    let shown = kubectl(
        home.path(),
        &[&base[..], &["--show-labels", "-o", "wide"]].concat(),
    )
    .await;
    assert!(shown.contains("deploymentName=fraud-detection"), "{shown}");
    assert!(shown.contains("fake-node"), "{shown}");

    assert!(
        kube.requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/flink/pods?") && r.contains(selector)),
        "{:#?}",
        kube.requests()
    );
}

#[tokio::test]
async fn label_selectors_follow_kubernetes_semantics() {
    let kube = KubeFake::start().await;
    kube.add_pod("ns", "a", &[("app", "flink-job"), ("tier", "jm")]);
    kube.add_pod("ns", "b", &[("app", "flink-job"), ("tier", "tm")]);
    kube.add_pod("ns", "c", &[("app", "other")]);
    kube.add_pod("ns", "d", &[]);
    let http = http_client();
    let names = |selector: &'static str| {
        let http = http.clone();
        let url = format!("{}/api/v1/namespaces/ns/pods", kube.url);
        async move {
            let list: Value = http
                .get(url)
                .query(&[("labelSelector", selector)])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    assert_eq!(names("").await, "a,b,c,d");
    assert_eq!(names("app=flink-job").await, "a,b");
    assert_eq!(names("app==flink-job").await, "a,b");
    assert_eq!(names("app!=flink-job").await, "c,d");
    assert_eq!(names("tier").await, "a,b");
    assert_eq!(names("!tier").await, "c,d");
    assert_eq!(names("tier in (jm, x)").await, "a");
    assert_eq!(names("tier notin (jm)").await, "b,c,d");
    assert_eq!(names("app=flink-job,tier notin (tm)").await, "a");
    assert_eq!(names("app=flink-job, !tier").await, "");

    let bad = http
        .get(format!("{}/api/v1/namespaces/ns/pods", kube.url))
        .query(&[("labelSelector", "tier in jm")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let status: Value = bad.json().await.unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 400);

    let missing = http
        .get(format!("{}/api/v1/namespaces/ns/pods/zz", kube.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

async fn kube_client(kube: &KubeFake, dir: &std::path::Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kube.write_kubeconfig(dir)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn lease(name: &str, holder: &str) -> Lease {
    Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn kube_rs_writes_leases_with_resource_version_preconditions() {
    let kube = KubeFake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let leases: Api<Lease> = Api::namespaced(kube_client(&kube, dir.path()).await, "ops");
    let pp = PostParams::default();
    assert!(leases.get_opt("savepointd").await.unwrap().is_none());

    let created = leases.create(&pp, &lease("savepointd", "a")).await.unwrap();
    let Err(kube::Error::Api(again)) = leases.create(&pp, &lease("savepointd", "b")).await else {
        panic!("a second create must fail");
    };
    assert!(again.is_already_exists(), "{again:?}");

    // Two replicas read the same version; the first write wins, the second is a 409.
    let read = leases.get("savepointd").await.unwrap();
    assert_eq!(
        read.metadata.resource_version,
        created.metadata.resource_version
    );
    let mut by_b = read.clone();
    by_b.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let mut by_c = read.clone();
    by_c.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let won = leases.replace("savepointd", &pp, &by_b).await.unwrap();
    assert_ne!(
        won.metadata.resource_version,
        read.metadata.resource_version
    );
    let Err(kube::Error::Api(lost)) = leases.replace("savepointd", &pp, &by_c).await else {
        panic!("a write based on a stale read must fail");
    };
    assert!(lost.is_conflict(), "{lost:?}");
    assert_eq!(kube.lease_holder("ops", "savepointd").as_deref(), Some("b"));
    assert_eq!(won.metadata.uid, created.metadata.uid);

    let Err(kube::Error::Api(missing)) = leases.replace("other", &pp, &lease("other", "a")).await
    else {
        panic!("replacing a Lease that does not exist must fail");
    };
    assert!(missing.is_not_found(), "{missing:?}");

    // Only this namespace's Leases, and a watch sees the next write.
    let elsewhere: Api<Lease> = Api::namespaced(kube_client(&kube, dir.path()).await, "other");
    elsewhere
        .create(&pp, &lease("savepointd", "z"))
        .await
        .unwrap();
    let names: Vec<String> = leases
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|l| l.spec.unwrap().holder_identity.unwrap())
        .collect();
    assert_eq!(names, ["b"]);
    let mut events = watcher(leases.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let first = tokio::time::timeout(SETTLE, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.spec.unwrap().holder_identity.as_deref(), Some("b"));
    let mut by_d = won.clone();
    by_d.spec.as_mut().unwrap().holder_identity = Some("d".into());
    leases.replace("savepointd", &pp, &by_d).await.unwrap();
    let next = tokio::time::timeout(SETTLE, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.spec.unwrap().holder_identity.as_deref(), Some("d"));
}

#[tokio::test]
async fn kubectl_gets_leases() {
    let kube = KubeFake::start().await;
    let home = tempfile::tempdir().unwrap();
    let leases: Api<Lease> = Api::namespaced(kube_client(&kube, home.path()).await, "ops");
    leases
        .create(
            &PostParams::default(),
            &lease("savepointd", "savepointd-0_1a2b3c"),
        )
        .await
        .unwrap();
    let kubeconfig = kube.write_kubeconfig(home.path());
    let base = [
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "get",
        "leases",
        "-n",
        "ops",
    ];
    let json_out = kubectl(home.path(), &[&base[..], &["-o", "json"]].concat()).await;
    let list: Value = serde_json::from_str(&json_out).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{json_out}");
    assert_eq!(items[0]["kind"], "Lease");
    assert_eq!(items[0]["spec"]["holderIdentity"], "savepointd-0_1a2b3c");

    let table = kubectl(home.path(), &base).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "HOLDER", "AGE"], "{table}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..2], ["savepointd", "savepointd-0_1a2b3c"], "{table}");

    let one = kubectl(
        home.path(),
        &[&base[..], &["savepointd", "-o", "json"]].concat(),
    )
    .await;
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["metadata"]["namespace"], "ops");
}

#[tokio::test]
async fn kube_rs_lists_through_the_kubeconfig() {
    let kube = KubeFake::start().await;
    flink_cluster(&kube);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig =
        kube::config::Kubeconfig::read_from(kube.write_kubeconfig(dir.path())).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "flink");
    let list = pods
        .list(&ListParams::default().labels("system=ververica-platform"))
        .await
        .unwrap();
    let mut names: Vec<String> = list
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "job-0a1b2c3d-jobmanager-0",
            "job-5bd3bbd8-jobmanager-0",
            "job-5bd3bbd8-taskmanager-0"
        ]
    );
    assert_eq!(
        list.metadata.resource_version,
        Some(kube.resource_version().to_string())
    );
    let one = pods.get("job-5bd3bbd8-jobmanager-0").await.unwrap();
    assert_eq!(one.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    assert!(pods.get("nope").await.is_err());
}

fn names_in(store: &reflector::Store<Pod>) -> BTreeSet<String> {
    store
        .state()
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect()
}

async fn store_shows(store: &reflector::Store<Pod>, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let reached = eventually(SETTLE, || {
        let names = names_in(store);
        let expected = expected.clone();
        async move { (names == expected).then_some(()) }
    })
    .await;
    assert!(
        reached.is_some(),
        "store shows {:?}, expected {expected:?}",
        names_in(store)
    );
}

#[tokio::test]
async fn kube_rs_reflector_follows_pod_changes() {
    let kube = KubeFake::start().await;
    flink_cluster(&kube);
    let client = kube::Client::try_from(kube::Config::new(kube.url.parse().unwrap())).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "flink");
    let (store, writer) = reflector::store::<Pod>();
    let stream = reflector(
        writer,
        watcher(
            pods,
            watcher::Config::default().labels("system=ververica-platform"),
        ),
    )
    .default_backoff();
    let task = tokio::spawn(stream.for_each(|_| async {}));

    tokio::time::timeout(SETTLE, store.wait_until_ready())
        .await
        .expect("the reflector syncs within 5 s")
        .unwrap();
    store_shows(
        &store,
        &[
            "job-0a1b2c3d-jobmanager-0",
            "job-5bd3bbd8-jobmanager-0",
            "job-5bd3bbd8-taskmanager-0",
        ],
    )
    .await;

    kube.add_pod(
        "flink",
        "job-77-jobmanager-0",
        &[("system", "ververica-platform"), ("deploymentName", "new")],
    );
    kube.add_pod("flink", "unrelated", &[("app", "web")]);
    kube.add_pod("staging", "elsewhere", &[("system", "ververica-platform")]);
    store_shows(
        &store,
        &[
            "job-0a1b2c3d-jobmanager-0",
            "job-5bd3bbd8-jobmanager-0",
            "job-5bd3bbd8-taskmanager-0",
            "job-77-jobmanager-0",
        ],
    )
    .await;

    // Dropping the selected label makes the pod leave the selection, as a DELETED event would.
    kube.set_labels(
        "flink",
        "job-0a1b2c3d-jobmanager-0",
        &[("app", "flink-job")],
    );
    kube.delete_pod("flink", "job-5bd3bbd8-taskmanager-0");
    kube.set_labels(
        "flink",
        "job-77-jobmanager-0",
        &[
            ("system", "ververica-platform"),
            ("deploymentName", "renamed"),
        ],
    );
    store_shows(
        &store,
        &["job-5bd3bbd8-jobmanager-0", "job-77-jobmanager-0"],
    )
    .await;
    let renamed = eventually(SETTLE, || {
        let label = store
            .state()
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("job-77-jobmanager-0"))
            .and_then(|p| p.metadata.labels.clone())
            .and_then(|l| l.get("deploymentName").cloned());
        async move { (label.as_deref() == Some("renamed")).then_some(()) }
    })
    .await;
    assert!(renamed.is_some(), "a label change reaches the store");

    // And gaining it back makes it appear again.
    kube.set_labels(
        "flink",
        "job-0a1b2c3d-jobmanager-0",
        &[("system", "ververica-platform")],
    );
    store_shows(
        &store,
        &[
            "job-0a1b2c3d-jobmanager-0",
            "job-5bd3bbd8-jobmanager-0",
            "job-77-jobmanager-0",
        ],
    )
    .await;

    task.abort();
    let requests = kube.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("watch=true")
                && r.contains("labelSelector=system=ververica-platform")),
        "{requests:#?}"
    );
    assert_eq!(kube.request_count(), requests.len());
}

#[tokio::test]
async fn kube_watch_streams_bookmarks_and_honours_its_timeout() {
    let kube = KubeFake::start().await;
    kube.add_pod("flink", "before", &[("app", "x")]);
    let since = kube.resource_version();
    let http = http_client();
    let started = Instant::now();
    let mut response = http
        .get(format!("{}/api/v1/namespaces/flink/pods", kube.url))
        .query(&[
            ("watch", "true"),
            ("resourceVersion", &since.to_string()),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", "1"),
            ("labelSelector", "app=x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    kube.add_pod("flink", "after", &[("app", "x")]);
    kube.add_pod("flink", "not-selected", &[("app", "y")]);
    kube.add_pod("other", "elsewhere", &[("app", "x")]);
    kube.delete_pod("flink", "after");

    let mut text = String::new();
    let read_all = async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("the watch ends at its timeoutSeconds");
    assert!(started.elapsed() >= Duration::from_secs(1));
    let events: Vec<(String, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .filter(|(kind, _)| kind != "BOOKMARK")
        .collect();
    assert_eq!(
        events,
        [
            ("ADDED".to_string(), "after".to_string()),
            ("DELETED".to_string(), "after".to_string())
        ],
        "{text}"
    );
    assert!(text.contains("\"BOOKMARK\""), "{text}");

    // After a compaction, an old resource version is answered 410 Gone and the client must list.
    kube.compact();
    let gone = http
        .get(format!("{}/api/v1/namespaces/flink/pods", kube.url))
        .query(&[("watch", "1"), ("resourceVersion", "1")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let event: Value = serde_json::from_str(gone.trim()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
}

// -------------------------------------------------------------------------------------------------
// The Flink Kubernetes Operator's resources on the Kubernetes fake

const SNAPSHOT_YAML: &str = "apiVersion: flink.apache.org/v1beta1
kind: FlinkStateSnapshot
metadata:
  name: fraud-detection-manual
  labels:
    owner: ops
spec:
  backoffLimit: 0
  jobReference:
    kind: FlinkDeployment
    name: fraud-detection
  savepoint:
    formatType: CANONICAL
";

const SAVEPOINT_TIMEOUT: &str =
    "java.util.concurrent.TimeoutException: Checkpoint expired before completing.";

fn snapshots_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("flink.apache.org", "v1beta1", "FlinkStateSnapshot"),
        "flinkstatesnapshots",
    )
}

fn flink_api(kube: &KubeFake, namespace: &str, resource: &ApiResource) -> Api<DynamicObject> {
    let client = kube::Client::try_from(kube::Config::new(kube.url.parse().unwrap())).unwrap();
    Api::namespaced_with(client, namespace, resource)
}

fn snapshot_api(kube: &KubeFake, namespace: &str) -> Api<DynamicObject> {
    flink_api(kube, namespace, &snapshots_resource())
}

/// A savepoint snapshot of the FlinkDeployment `job`, as a client writes it.
fn snapshot_of(name: &str, job: &str, labels: &[(&str, &str)]) -> DynamicObject {
    let mut snapshot = DynamicObject::new(name, &snapshots_resource()).data(json!({
        "spec": {
            "backoffLimit": 0,
            "jobReference": { "kind": "FlinkDeployment", "name": job },
            "savepoint": { "formatType": "CANONICAL", "disposeOnDelete": true },
        },
    }));
    if !labels.is_empty() {
        snapshot.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }
    snapshot
}

/// Waits until the stored snapshot `name` is in `state`, and returns it.
async fn snapshot_in_state(kube: &KubeFake, namespace: &str, name: &str, state: &str) -> Value {
    let found = eventually(SETTLE, || {
        let snapshot = kube.snapshot(namespace, name);
        async move { snapshot.filter(|s| s["status"]["state"] == state) }
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "{name} never reached {state}: {:#}",
            kube.snapshot(namespace, name).unwrap_or_default()
        )
    })
}

async fn snapshot_gone(kube: &KubeFake, namespace: &str, name: &str) {
    let gone = eventually(SETTLE, || {
        let present = kube.snapshot(namespace, name).is_some();
        async move { (!present).then_some(()) }
    })
    .await;
    assert!(
        gone.is_some(),
        "{name} is still there: {:#}",
        kube.snapshot(namespace, name).unwrap_or_default()
    );
}

/// The `reason` and `code` of a refused request.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (String, u16) {
    match result {
        Err(kube::Error::Api(status)) => (status.reason.clone(), status.code),
        other => panic!("expected a refusal from the API server, got {other:?}"),
    }
}

/// kubectl against the fake, in namespace `flink`, with the kubeconfig in `home`.
async fn kubectl_flink(home: &std::path::Path, args: &[&str]) -> String {
    let kubeconfig = home.join("kubeconfig");
    let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap(), "-n", "flink"];
    all.extend_from_slice(args);
    kubectl(home, &all).await
}

fn header_words(table: &str) -> Vec<&str> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

#[tokio::test]
async fn kubectl_applies_lists_and_deletes_flink_state_snapshots() {
    let kube = KubeFake::start().await;
    kube.put_flink_deployment("flink", "fraud-detection", FlinkStatus::job("RUNNING"));
    kube.put_flink_deployment("flink", "payments", FlinkStatus::job("SUSPENDED"));
    let periodic = "fraud-detection-savepoint-periodic-1763600400000";
    kube.seed_snapshot(
        "flink",
        savepoint_snapshot(
            periodic,
            "fraud-detection",
            "PERIODIC",
            chrono::Utc::now() - chrono::Duration::hours(1),
        ),
    );
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    kube.write_kubeconfig(home);
    let manifest = home.join("snapshot.yaml");
    let manifest_arg = manifest.to_str().unwrap();

    std::fs::write(&manifest, SNAPSHOT_YAML).unwrap();
    let applied = kubectl_flink(home, &["apply", "-f", manifest_arg]).await;
    assert_eq!(
        applied.trim(),
        "flinkstatesnapshot.flink.apache.org/fraud-detection-manual created"
    );
    let completed = snapshot_in_state(&kube, "flink", "fraud-detection-manual", "COMPLETED").await;
    let path = completed["status"]["path"].as_str().unwrap().to_string();
    assert!(
        path.starts_with("s3://flink/savepoints/savepoint-"),
        "{path}"
    );

    // The default table has the CRD's printer columns, by the short name.
    let table = kubectl_flink(home, &["get", "flinksnp"]).await;
    assert_eq!(
        header_words(&table),
        ["NAME", "PATH", "RESULT", "TIMESTAMP", "SNAPSHOT", "STATE"],
        "{table}"
    );
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    let manual = rows
        .iter()
        .find(|r| r[0] == "fraud-detection-manual")
        .unwrap();
    assert_eq!(
        (manual[1], manual[3]),
        (path.as_str(), "COMPLETED"),
        "{table}"
    );

    // The operator's labels and finalizer.
    let list: Value =
        serde_json::from_str(&kubectl_flink(home, &["get", "flinksnp", "-o", "json"]).await)
            .unwrap();
    let item = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == "fraud-detection-manual")
        .unwrap();
    assert_eq!(
        item["metadata"]["labels"],
        json!({
            "owner": "ops",
            "snapshot.type": "SAVEPOINT",
            "snapshot.trigger-type": "MANUAL",
            "snapshot.state": "COMPLETED",
            "job-reference.kind": "FlinkDeployment",
            "job-reference.name": "fraud-detection",
        })
    );
    assert_eq!(item["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(item["status"]["path"], path.as_str());

    // Label selection tells the operator's own snapshots from the others.
    let manual_only = kubectl_flink(
        home,
        &[
            "get",
            "flinksnp",
            "-l",
            "snapshot.trigger-type=MANUAL",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(
        manual_only.trim(),
        "flinkstatesnapshot.flink.apache.org/fraud-detection-manual"
    );
    let operators_own = kubectl_flink(
        home,
        &[
            "get",
            "flinksnp",
            "-l",
            "snapshot.trigger-type in (PERIODIC,UPGRADE)",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(
        operators_own.trim(),
        format!("flinkstatesnapshot.flink.apache.org/{periodic}")
    );

    // A changed manifest goes as a JSON merge patch of what changed; the status stays.
    std::fs::write(
        &manifest,
        SNAPSHOT_YAML.replace("backoffLimit: 0", "backoffLimit: 3"),
    )
    .unwrap();
    let applied = kubectl_flink(home, &["apply", "-f", manifest_arg]).await;
    assert_eq!(
        applied.trim(),
        "flinkstatesnapshot.flink.apache.org/fraud-detection-manual configured"
    );
    let patched = kube.snapshot("flink", "fraud-detection-manual").unwrap();
    assert_eq!(patched["spec"]["backoffLimit"], 3);
    assert_eq!(patched["metadata"]["generation"], 2);
    assert_eq!(patched["status"], completed["status"]);
    let patch = kube
        .api_requests()
        .into_iter()
        .find(|r| r.verb == "patch")
        .unwrap();
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(patch.body.unwrap()["spec"], json!({ "backoffLimit": 3 }));
    assert_eq!(kube.count_requests("create", "flinkstatesnapshots"), 1);

    let deployments: Value = serde_json::from_str(
        &kubectl_flink(home, &["get", "flinkdeployments", "-o", "json"]).await,
    )
    .unwrap();
    let states: Vec<(&str, &str, &str, &str)> = deployments["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap(),
                d["status"]["jobStatus"]["state"].as_str().unwrap(),
                d["status"]["lifecycleState"].as_str().unwrap(),
                d["status"]["jobManagerDeploymentStatus"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("fraud-detection", "RUNNING", "STABLE", "READY"),
            ("payments", "SUSPENDED", "SUSPENDED", "MISSING")
        ]
    );
    let table = kubectl_flink(home, &["get", "flinkdep"]).await;
    assert_eq!(
        header_words(&table),
        ["NAME", "JOB", "STATUS", "LIFECYCLE", "STATE"],
        "{table}"
    );

    // While the job is suspended, the operator cannot dispose of the savepoint: the deleted
    // snapshot stays, Terminating.
    kube.set_flink_status(
        JobKind::FlinkDeployment,
        "flink",
        "fraud-detection",
        FlinkStatus::job("SUSPENDED"),
    );
    let deleted = kubectl_flink(
        home,
        &[
            "delete",
            "flinksnp",
            "fraud-detection-manual",
            "--wait=false",
        ],
    )
    .await;
    assert_eq!(
        deleted.trim(),
        "flinkstatesnapshot.flink.apache.org \"fraud-detection-manual\" deleted"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let terminating: Value = serde_json::from_str(
        &kubectl_flink(
            home,
            &["get", "flinksnp", "fraud-detection-manual", "-o", "json"],
        )
        .await,
    )
    .unwrap();
    assert!(
        terminating["metadata"]["deletionTimestamp"].is_string(),
        "{terminating:#}"
    );
    assert_eq!(terminating["metadata"]["finalizers"], json!([FINALIZER]));
    assert!(kube.disposals().is_empty());

    // Once it runs again, the savepoint is disposed of and the resource goes.
    kube.set_flink_status(
        JobKind::FlinkDeployment,
        "flink",
        "fraud-detection",
        FlinkStatus::job("RUNNING"),
    );
    kubectl_flink(
        home,
        &[
            "wait",
            "--for=delete",
            "flinksnp/fraud-detection-manual",
            "--timeout=10s",
        ],
    )
    .await;
    let disposed: Vec<(String, String)> = kube
        .disposals()
        .into_iter()
        .map(|d| (d.name, d.path))
        .collect();
    assert_eq!(
        disposed,
        [("fraud-detection-manual".to_string(), path.clone())]
    );

    // The operator's own snapshot keeps its data on delete (disposeOnDelete: false): it goes at
    // once, and kubectl's wait for it ends.
    let deleted = kubectl_flink(home, &["delete", "flinksnp", periodic]).await;
    assert!(deleted.contains("deleted"), "{deleted}");
    assert!(kube.snapshots("flink").is_empty());
    assert_eq!(kube.disposals().len(), 1);
}

#[tokio::test]
async fn kube_rs_writes_custom_resources_as_an_api_server_does() {
    // No operator: only the API server's own rules are at work.
    let kube = KubeFake::start_with(KubeFakeOptions { operator: None }).await;
    let snapshots = snapshot_api(&kube, "flink");
    let pp = PostParams::default();
    let name = "fraud-detection-20261120t0100z";

    let created = snapshots
        .create(&pp, &snapshot_of(name, "fraud-detection", &[]))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        refusal(
            snapshots
                .create(&pp, &snapshot_of(name, "fraud-detection", &[]))
                .await
        ),
        ("AlreadyExists".to_string(), 409)
    );
    assert_eq!(kube.snapshots("flink").len(), 1);

    // A create cannot set the status: the operator does.
    let mut claims_done = snapshot_of("claims-completed", "fraud-detection", &[]);
    claims_done.data["status"] = json!({ "state": "COMPLETED", "path": "s3://elsewhere" });
    let stored = snapshots.create(&pp, &claims_done).await.unwrap();
    assert!(stored.data.get("status").is_none(), "{stored:?}");

    let mut generated = snapshot_of("", "fraud-detection", &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("fraud-detection-".into());
    let generated = snapshots.create(&pp, &generated).await.unwrap();
    let generated_name = generated.metadata.name.unwrap();
    assert!(
        generated_name.starts_with("fraud-detection-") && generated_name.len() == 21,
        "{generated_name}"
    );

    // Names, labels and the CRD's enums are checked as Kubernetes checks them.
    let invalid = ("Invalid".to_string(), 422);
    let mut nameless = snapshot_of("", "fraud-detection", &[]);
    nameless.metadata.name = None;
    assert_eq!(refusal(snapshots.create(&pp, &nameless).await), invalid);
    assert_eq!(
        refusal(
            snapshots
                .create(&pp, &snapshot_of("Fraud_Detection", "fraud-detection", &[]))
                .await
        ),
        invalid
    );
    assert_eq!(
        refusal(
            snapshots
                .create(
                    &pp,
                    &snapshot_of("labelled", "fraud-detection", &[("app", "Fraud Detection")])
                )
                .await
        ),
        invalid
    );
    let mut wrong_kind = snapshot_of("wrong-kind", "fraud-detection", &[]);
    wrong_kind.data["spec"]["jobReference"]["kind"] = json!("Deployment");
    assert_eq!(refusal(snapshots.create(&pp, &wrong_kind).await), invalid);

    // Replace: two writers of the same version, the second loses; no version, no write.
    let read = snapshots.get(name).await.unwrap();
    let mut first = read.clone();
    first.labels_mut().insert("a".into(), "1".into());
    let mut second = read.clone();
    second.labels_mut().insert("b".into(), "2".into());
    let won = snapshots.replace(name, &pp, &first).await.unwrap();
    assert_ne!(
        won.metadata.resource_version,
        read.metadata.resource_version
    );
    assert_eq!(won.metadata.generation, Some(1), "labels are not the spec");
    assert_eq!(
        refusal(snapshots.replace(name, &pp, &second).await),
        ("Conflict".to_string(), 409)
    );
    let mut blind = won.clone();
    blind.metadata.resource_version = None;
    assert_eq!(refusal(snapshots.replace(name, &pp, &blind).await), invalid);
    assert_eq!(
        refusal(
            snapshots
                .replace("nope", &pp, &snapshot_of("nope", "x", &[]))
                .await
        ),
        ("NotFound".to_string(), 404)
    );
    let mut respecified = won.clone();
    respecified.data["spec"]["backoffLimit"] = json!(2);
    let respecified = snapshots.replace(name, &pp, &respecified).await.unwrap();
    assert_eq!(respecified.metadata.generation, Some(2));

    // The lists are the namespace's, or every namespace's.
    snapshot_api(&kube, "staging")
        .create(&pp, &snapshot_of(name, "fraud-detection", &[]))
        .await
        .unwrap();
    assert_eq!(
        snapshots
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    let everywhere: Api<DynamicObject> = Api::all_with(
        kube::Client::try_from(kube::Config::new(kube.url.parse().unwrap())).unwrap(),
        &snapshots_resource(),
    );
    assert_eq!(
        everywhere
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        4
    );
    assert_eq!(kube.count_requests("list", "flinkstatesnapshots"), 2);

    // Pages, and metadata alone, as kube-rs asks for them.
    let first = snapshots
        .list_metadata(&ListParams::default().limit(2))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(
        first.items[0].types.as_ref().unwrap().kind,
        "PartialObjectMetadata"
    );
    let token = first.metadata.continue_.clone().expect("a next page");
    let rest = snapshots
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert!(rest.metadata.continue_.is_none());
    let paged: Vec<String> = first
        .items
        .iter()
        .map(|s| s.name_any())
        .chain(rest.items.iter().map(|s| s.name_any()))
        .collect();
    let mut expected = vec![
        "claims-completed".to_string(),
        generated_name.clone(),
        name.to_string(),
    ];
    expected.sort();
    assert_eq!(paged, expected, "every snapshot once, in order of name");
    let metadata = snapshots.get_metadata(name).await.unwrap();
    assert_eq!(metadata.types.unwrap().kind, "PartialObjectMetadata");
    assert_eq!(metadata.metadata.uid, created.metadata.uid);
}

#[tokio::test]
async fn kube_rs_patches_the_status_and_the_finalizers() {
    let kube = KubeFake::start_with(KubeFakeOptions { operator: None }).await;
    let snapshots = snapshot_api(&kube, "flink");
    let pp = PostParams::default();
    let mut held = snapshot_of("held", "fraud-detection", &[]);
    held.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    let created = snapshots.create(&pp, &held).await.unwrap();

    // The status subresource changes the status alone; the main resource leaves it alone.
    let status = json!({ "status": { "state": "COMPLETED", "path": "s3://flink/savepoints/savepoint-0a1b2c-0123456789ab" } });
    let with_status = snapshots
        .patch_status("held", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(with_status.data["status"]["state"], "COMPLETED");
    assert_eq!(with_status.data["spec"], created.data["spec"]);
    let relabelled = snapshots
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "savepointd.io/slot": "20261120t0100z" } }, "status": null })),
        )
        .await
        .unwrap();
    assert_eq!(relabelled.data["status"], with_status.data["status"]);
    assert_eq!(relabelled.labels()["savepointd.io/slot"], "20261120t0100z");
    assert_eq!(
        refusal(
            snapshots
                .patch(
                    "held",
                    &PatchParams::default(),
                    &Patch::Strategic(json!({}))
                )
                .await
        ),
        ("UnsupportedMediaType".to_string(), 415)
    );
    // A patch that names a resourceVersion makes it a precondition.
    assert_eq!(
        refusal(
            snapshots
                .patch(
                    "held",
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({ "metadata": { "resourceVersion": "1", "labels": { "x": "y" } } })
                    ),
                )
                .await
        ),
        ("Conflict".to_string(), 409)
    );

    // Server-side apply creates what is missing.
    let applied = snapshots
        .patch(
            "applied",
            &PatchParams::apply("savepointd"),
            &Patch::Apply(snapshot_of("applied", "fraud-detection", &[])),
        )
        .await
        .unwrap();
    assert!(applied.metadata.uid.is_some());

    // A deletion with a precondition that does not hold is refused.
    let wrong_uid = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("00000000-0000-4000-8000-000000000000".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    assert_eq!(
        refusal(snapshots.delete("held", &wrong_uid).await),
        ("Conflict".to_string(), 409)
    );

    // With a finalizer, a deletion only marks the object; no new finalizer may join then, and
    // it goes with the last one.
    let marked = snapshots
        .delete("held", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("a marked object comes back, not a Status");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(kube.snapshot("flink", "held").is_some());
    assert_eq!(
        refusal(
            snapshots
                .patch(
                    "held",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "metadata": { "finalizers": ["example.com/keep", "example.com/more"] } })),
                )
                .await
        ),
        ("Invalid".to_string(), 422)
    );
    snapshots
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .unwrap();
    assert!(kube.snapshot("flink", "held").is_none());

    // Without finalizers it goes at once, and the answer is a Status.
    let gone = snapshots
        .delete("applied", &DeleteParams::default())
        .await
        .unwrap()
        .right()
        .expect("an object deleted at once is answered with a Status");
    assert_eq!(gone.details.unwrap().name, "applied");
    assert_eq!(
        refusal(snapshots.delete("applied", &DeleteParams::default()).await),
        ("NotFound".to_string(), 404)
    );
}

/// How a snapshot looks in one event: its status state, its `snapshot.state` label, its failures.
fn phase(snapshot: &DynamicObject) -> String {
    let text = |v: Option<&Value>| v.map_or("-".to_string(), |v| v.to_string().replace('"', ""));
    format!(
        "{} {} {}",
        text(snapshot.data.pointer("/status/state")),
        text(
            snapshot
                .labels()
                .get("snapshot.state")
                .map(|l| json!(l))
                .as_ref()
        ),
        text(snapshot.data.pointer("/status/failures")),
    )
}

#[tokio::test]
async fn kube_rs_reflector_follows_snapshots_through_watch_events() {
    let kube = KubeFake::start().await;
    kube.put_flink_deployment("flink", "fraud-detection", FlinkStatus::job("RUNNING"));
    kube.put_flink_deployment("flink", "payments", FlinkStatus::job("RUNNING"));
    kube.fail_savepoints_of("flink", "payments", SAVEPOINT_TIMEOUT);
    let snapshots = snapshot_api(&kube, "flink");
    let writer = reflector::store::Writer::new(snapshots_resource());
    let store = writer.as_reader();
    let (sender, mut seen) = tokio::sync::mpsc::unbounded_channel::<DynamicObject>();
    let follower = tokio::spawn(
        reflector(
            writer,
            watcher(snapshots.clone(), watcher::Config::default()),
        )
        .applied_objects()
        .for_each(move |object| {
            if let Ok(object) = object {
                let _ = sender.send(object);
            }
            std::future::ready(())
        }),
    );
    tokio::time::timeout(SETTLE, store.wait_until_ready())
        .await
        .expect("the reflector syncs within 5 s")
        .unwrap();

    let pp = PostParams::default();
    snapshots
        .create(
            &pp,
            &snapshot_of("fraud-detection-1", "fraud-detection", &[]),
        )
        .await
        .unwrap();
    let mut retried = snapshot_of("payments-1", "payments", &[]);
    retried.data["spec"]["backoffLimit"] = json!(1);
    snapshots.create(&pp, &retried).await.unwrap();

    let mut phases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let finished = |phases: &BTreeMap<String, Vec<String>>, name: &str, last: &str| {
        phases
            .get(name)
            .and_then(|p| p.last())
            .is_some_and(|p| p.starts_with(last))
    };
    while !(finished(&phases, "fraud-detection-1", "COMPLETED")
        && finished(&phases, "payments-1", "FAILED"))
    {
        let object = tokio::time::timeout(SETTLE, seen.recv())
            .await
            .unwrap_or_else(|_| panic!("no further watch event; seen {phases:#?}"))
            .unwrap();
        let history = phases.entry(object.name_any()).or_default();
        let now = phase(&object);
        if history.last() != Some(&now) {
            history.push(now);
        }
    }
    // The operator writes no TRIGGER_PENDING status before the trigger: its first status is
    // IN_PROGRESS, while its label already says TRIGGER_PENDING.
    assert_eq!(
        phases["fraud-detection-1"],
        [
            "- - -",
            "- TRIGGER_PENDING -",
            "IN_PROGRESS IN_PROGRESS 0",
            "COMPLETED COMPLETED 0"
        ]
    );
    // A failed attempt is retried while failures <= backoffLimit.
    assert_eq!(
        phases["payments-1"],
        [
            "- - -",
            "- TRIGGER_PENDING -",
            "IN_PROGRESS IN_PROGRESS 0",
            "TRIGGER_PENDING TRIGGER_PENDING 1",
            "IN_PROGRESS IN_PROGRESS 1",
            "FAILED FAILED 2"
        ]
    );

    let in_store = |name: &str| {
        store
            .state()
            .into_iter()
            .find(|s| s.name_any() == name)
            .unwrap()
    };
    let completed = in_store("fraud-detection-1");
    let status = &completed.data["status"];
    let job_id = kube
        .flink_job(JobKind::FlinkDeployment, "flink", "fraud-detection")
        .unwrap()["status"]["jobStatus"]["jobId"]
        .as_str()
        .unwrap()
        .to_string();
    let path = status["path"].as_str().unwrap();
    assert!(
        path.starts_with(&format!(
            "s3://flink/savepoints/savepoint-{}-",
            &job_id[..6]
        )),
        "{path}"
    );
    assert_eq!(status["triggerId"].as_str().unwrap().len(), 32);
    assert!(
        status["triggerTimestamp"].as_str().unwrap() < status["resultTimestamp"].as_str().unwrap()
    );
    assert_eq!(
        in_store("payments-1").data["status"]["error"],
        SAVEPOINT_TIMEOUT
    );

    // Followed by watching alone: one list, then the watch; never a GET.
    follower.abort();
    assert_eq!(kube.count_requests("list", "flinkstatesnapshots"), 1);
    assert!(kube.count_requests("watch", "flinkstatesnapshots") >= 1);
    assert_eq!(kube.count_requests("get", "flinkstatesnapshots"), 0);
}

/// The names a watcher with `selector` reports, whatever the event.
fn selected_names(
    snapshots: &Api<DynamicObject>,
    selector: &str,
) -> (
    reflector::Store<DynamicObject>,
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
) {
    let writer = reflector::store::Writer::new(snapshots_resource());
    let store = writer.as_reader();
    let names = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let seen = names.clone();
    let task = tokio::spawn(
        reflector(
            writer,
            watcher(
                snapshots.clone(),
                watcher::Config::default().labels(selector),
            ),
        )
        .touched_objects()
        .for_each(move |object| {
            if let Ok(object) = object {
                seen.lock().unwrap().insert(object.name_any());
            }
            std::future::ready(())
        }),
    );
    (store, task, names)
}

fn store_names(store: &reflector::Store<DynamicObject>) -> BTreeSet<String> {
    store.state().iter().map(|s| s.name_any()).collect()
}

#[tokio::test]
async fn kube_rs_label_selected_watch_sees_only_matching_snapshots() {
    let kube = KubeFake::start().await;
    kube.put_flink_deployment("flink", "fraud-detection", FlinkStatus::job("RUNNING"));
    kube.put_flink_deployment("flink", "payments", FlinkStatus::job("RUNNING"));
    kube.seed_snapshot(
        "flink",
        savepoint_snapshot(
            "fraud-detection-savepoint-periodic-1763600400000",
            "fraud-detection",
            "PERIODIC",
            chrono::Utc::now(),
        ),
    );
    let snapshots = snapshot_api(&kube, "flink");
    let (ours, ours_task, ours_seen) =
        selected_names(&snapshots, "savepointd.io/application=fraud-detection");
    let (manual, manual_task, manual_seen) = selected_names(
        &snapshots,
        "snapshot.trigger-type=MANUAL,job-reference.name=fraud-detection",
    );
    for store in [&ours, &manual] {
        tokio::time::timeout(SETTLE, store.wait_until_ready())
            .await
            .unwrap()
            .unwrap();
    }

    let pp = PostParams::default();
    let app = |name: &'static str| [("savepointd.io/application", name)];
    for snapshot in [
        snapshot_of(
            "fraud-detection-1",
            "fraud-detection",
            &app("fraud-detection"),
        ),
        snapshot_of("payments-1", "payments", &app("payments")),
        snapshot_of("by-hand", "fraud-detection", &[]),
    ] {
        snapshots.create(&pp, &snapshot).await.unwrap();
    }
    for name in ["fraud-detection-1", "payments-1", "by-hand"] {
        snapshot_in_state(&kube, "flink", name, "COMPLETED").await;
    }
    // The operator's labels arrive after the create: the snapshot enters that selection then.
    let reached = eventually(SETTLE, || {
        let both = store_names(&manual).len() == 2;
        async move { both.then_some(()) }
    })
    .await;
    assert!(reached.is_some(), "{:?}", store_names(&manual));
    ours_task.abort();
    manual_task.abort();

    let expected = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(store_names(&ours), expected(&["fraud-detection-1"]));
    assert_eq!(*ours_seen.lock().unwrap(), expected(&["fraud-detection-1"]));
    assert_eq!(
        store_names(&manual),
        expected(&["by-hand", "fraud-detection-1"])
    );
    assert_eq!(
        *manual_seen.lock().unwrap(),
        expected(&["by-hand", "fraud-detection-1"])
    );
    let watches: Vec<String> = kube
        .requests()
        .into_iter()
        .filter(|r| r.contains("watch=true"))
        .collect();
    assert!(
        watches
            .iter()
            .any(|r| r.contains("labelSelector=savepointd.io/application=fraud-detection")),
        "{watches:#?}"
    );
}

#[tokio::test]
async fn kube_rs_deletes_snapshots_through_the_operators_finalizer() {
    let kube = KubeFake::start().await;
    for job in ["fraud-detection", "payments", "orders"] {
        kube.put_flink_deployment("flink", job, FlinkStatus::job("RUNNING"));
    }
    kube.fail_savepoints_of("flink", "payments", SAVEPOINT_TIMEOUT);
    kube.hold_savepoints_of("flink", "orders");
    let snapshots = snapshot_api(&kube, "flink");
    let pp = PostParams::default();
    for (name, job) in [
        ("kept", "fraud-detection"),
        ("failed", "payments"),
        ("in-flight", "orders"),
    ] {
        snapshots
            .create(&pp, &snapshot_of(name, job, &[]))
            .await
            .unwrap();
    }
    let completed = snapshot_in_state(&kube, "flink", "kept", "COMPLETED").await;
    snapshot_in_state(&kube, "flink", "failed", "FAILED").await;
    snapshot_in_state(&kube, "flink", "in-flight", "IN_PROGRESS").await;

    // Watch the one to be disposed of, by name.
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel::<String>();
    let follower = tokio::spawn(
        watcher(
            snapshots.clone(),
            watcher::Config::default().fields("metadata.name=kept"),
        )
        .for_each(move |event| {
            let seen = match event {
                Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => {
                    Some(match o.metadata.deletion_timestamp {
                        Some(_) => "terminating",
                        None => "present",
                    })
                }
                Ok(watcher::Event::Delete(_)) => Some("deleted"),
                _ => None,
            };
            if let Some(seen) = seen {
                let _ = sender.send(seen.to_string());
            }
            std::future::ready(())
        }),
    );

    let first = tokio::time::timeout(SETTLE, events.recv()).await.unwrap();
    assert_eq!(first.as_deref(), Some("present"));

    // The job is suspended: the savepoint cannot be disposed of, the snapshot stays Terminating.
    kube.set_flink_status(
        JobKind::FlinkDeployment,
        "flink",
        "fraud-detection",
        FlinkStatus::job("SUSPENDED"),
    );
    let marked = snapshots
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("the marked snapshot comes back");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(
        marked.metadata.finalizers,
        Some(vec![FINALIZER.to_string()])
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(kube.snapshot("flink", "kept").is_some());
    assert!(kube.disposals().is_empty());

    kube.set_flink_status(
        JobKind::FlinkDeployment,
        "flink",
        "fraud-detection",
        FlinkStatus::job("RUNNING"),
    );
    snapshot_gone(&kube, "flink", "kept").await;
    let disposals = kube.disposals();
    assert_eq!(disposals.len(), 1);
    assert_eq!(
        (
            disposals[0].name.as_str(),
            disposals[0].path.as_str(),
            disposals[0].state.as_str(),
            disposals[0].trigger_type.as_str(),
            disposals[0].job.as_str()
        ),
        (
            "kept",
            completed["status"]["path"].as_str().unwrap(),
            "COMPLETED",
            "MANUAL",
            "fraud-detection"
        )
    );
    let mut seen = vec!["present".to_string()];
    while seen.last().map(String::as_str) != Some("deleted") {
        let event = tokio::time::timeout(SETTLE, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no deletion seen: {seen:?}"))
            .unwrap();
        if seen.last() != Some(&event) {
            seen.push(event);
        }
    }
    assert_eq!(seen, ["present", "terminating", "deleted"]);
    follower.abort();

    // A FAILED savepoint has no data to dispose of: it goes at once.
    snapshots
        .delete("failed", &DeleteParams::default())
        .await
        .unwrap();
    snapshot_gone(&kube, "flink", "failed").await;
    assert_eq!(kube.disposals().len(), 1);

    // IN_PROGRESS: the operator only cleans up a resource marked for deletion and no longer
    // observes its savepoint, so it stays IN_PROGRESS and Terminating, even once the savepoint
    // would have ended.
    snapshots
        .delete("in-flight", &DeleteParams::default())
        .await
        .unwrap();
    kube.release_savepoints_of("flink", "orders");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stuck = kube.snapshot("flink", "in-flight").unwrap();
    assert_eq!(stuck["status"]["state"], "IN_PROGRESS");
    assert!(stuck["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(kube.disposals().len(), 1);

    // A FlinkDeployment has no finalizer: it goes at once, answered with a Status.
    let deployments = flink_api(
        &kube,
        "flink",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("flink.apache.org", "v1beta1", "FlinkDeployment"),
            "flinkdeployments",
        ),
    );
    let status = deployments
        .delete("payments", &DeleteParams::default())
        .await
        .unwrap()
        .right()
        .expect("a Status");
    assert_eq!(status.details.unwrap().kind, "flinkdeployments");
    assert!(
        kube.flink_job(JobKind::FlinkDeployment, "flink", "payments")
            .is_none()
    );
}

#[tokio::test]
async fn flink_operator_can_let_in_flight_snapshots_end_before_cleaning_up() {
    let kube = KubeFake::start_with(KubeFakeOptions {
        operator: Some(OperatorOptions {
            observe_while_deleting: true,
            ..OperatorOptions::default()
        }),
    })
    .await;
    kube.put_flink_deployment("flink", "orders", FlinkStatus::job("RUNNING"));
    kube.hold_savepoints_of("flink", "orders");
    let snapshots = snapshot_api(&kube, "flink");
    snapshots
        .create(
            &PostParams::default(),
            &snapshot_of("in-flight", "orders", &[]),
        )
        .await
        .unwrap();
    snapshot_in_state(&kube, "flink", "in-flight", "IN_PROGRESS").await;
    snapshots
        .delete("in-flight", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        kube.snapshot("flink", "in-flight").is_some(),
        "it waits while in flight"
    );
    kube.release_savepoints_of("flink", "orders");
    snapshot_gone(&kube, "flink", "in-flight").await;
    assert_eq!(kube.disposals().len(), 1, "completed, then disposed of");
}

#[tokio::test]
async fn flink_operator_serves_session_jobs_and_follows_the_tests_instructions() {
    let kube = KubeFake::start().await;
    kube.put_flink_deployment("flink", "session-cluster", FlinkStatus::job("RUNNING"));
    kube.put_flink_session_job(
        "flink",
        "orders",
        "session-cluster",
        FlinkStatus::job("RUNNING"),
    );
    let snapshots = snapshot_api(&kube, "flink");
    let pp = PostParams::default();
    let of_session_job = |name: &str| {
        let mut snapshot = snapshot_of(name, "orders", &[]);
        snapshot.data["spec"]["jobReference"]["kind"] = json!("FlinkSessionJob");
        snapshot
    };

    // A session job's savepoint, whose first attempt fails and whose retry succeeds.
    kube.fail_savepoints_of("flink", "orders", SAVEPOINT_TIMEOUT);
    let mut retried = of_session_job("orders-1");
    retried.data["spec"]["backoffLimit"] = json!(-1);
    snapshots.create(&pp, &retried).await.unwrap();
    let retrying = eventually(SETTLE, || {
        let snapshot = kube.snapshot("flink", "orders-1");
        async move { snapshot.filter(|s| s["status"]["failures"] == 1) }
    })
    .await
    .expect("a failed attempt");
    assert_eq!(retrying["status"]["error"], SAVEPOINT_TIMEOUT);
    kube.heal_savepoints_of("flink", "orders");
    let completed = snapshot_in_state(&kube, "flink", "orders-1", "COMPLETED").await;
    assert_eq!(
        completed["metadata"]["labels"]["job-reference.kind"],
        "FlinkSessionJob"
    );
    let session_job = kube
        .flink_job(JobKind::FlinkSessionJob, "flink", "orders")
        .unwrap();
    assert_eq!(session_job["spec"]["deploymentName"], "session-cluster");
    assert!(session_job["status"]["jobManagerDeploymentStatus"].is_null());

    // A disposal that fails keeps the snapshot Terminating until it succeeds.
    kube.fail_disposals_of("flink", "orders");
    snapshots
        .delete("orders-1", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(kube.snapshot("flink", "orders-1").is_some());
    assert!(kube.disposals().is_empty());
    kube.heal_disposals_of("flink", "orders");
    snapshot_gone(&kube, "flink", "orders-1").await;
    assert_eq!(kube.disposals()[0].path, completed["status"]["path"]);

    // While the operator is down nothing happens to a new snapshot; it carries on once back.
    kube.set_operator_running(false);
    snapshots
        .create(&pp, &of_session_job("orders-2"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let untouched = kube.snapshot("flink", "orders-2").unwrap();
    assert!(
        untouched["metadata"]["finalizers"].is_null(),
        "{untouched:#}"
    );
    assert!(untouched.get("status").is_none());
    kube.set_operator_running(true);
    snapshot_in_state(&kube, "flink", "orders-2", "COMPLETED").await;

    // A job whose resource goes under a savepoint in flight abandons it.
    kube.hold_savepoints_of("flink", "orders");
    snapshots
        .create(&pp, &of_session_job("orders-3"))
        .await
        .unwrap();
    snapshot_in_state(&kube, "flink", "orders-3", "IN_PROGRESS").await;
    kube.delete_flink_job(JobKind::FlinkSessionJob, "flink", "orders");
    let abandoned = snapshot_in_state(&kube, "flink", "orders-3", "ABANDONED").await;
    let error = abandoned["status"]["error"].as_str().unwrap();
    assert!(error.contains("was not found"), "{error}");
}

#[tokio::test]
async fn kube_rs_snapshot_of_a_stopped_or_missing_job_is_not_taken() {
    let kube = KubeFake::start().await;
    kube.put_flink_deployment("flink", "payments", FlinkStatus::job("SUSPENDED"));
    kube.put_flink_deployment("flink", "fraud-detection", FlinkStatus::job("RUNNING"));
    let snapshots = snapshot_api(&kube, "flink");
    let pp = PostParams::default();

    snapshots
        .create(&pp, &snapshot_of("payments-1", "payments", &[]))
        .await
        .unwrap();
    let abandoned = snapshot_in_state(&kube, "flink", "payments-1", "ABANDONED").await;
    let error = abandoned["status"]["error"].as_str().unwrap();
    assert!(error.contains("is not running"), "{error}");
    assert!(abandoned["status"]["path"].is_null());
    assert!(
        abandoned["status"]["triggerId"].is_null(),
        "never triggered: {abandoned:#}"
    );
    assert!(abandoned["status"]["resultTimestamp"].is_string());
    assert_eq!(
        abandoned["metadata"]["labels"]["snapshot.state"],
        "ABANDONED"
    );
    assert_eq!(
        abandoned["metadata"]["labels"]["job-reference.name"],
        "payments"
    );

    // A missing target fails the operator's validation: no status at all until it exists.
    snapshots
        .create(&pp, &snapshot_of("orders-1", "orders", &[]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = kube.snapshot("flink", "orders-1").unwrap();
    assert!(waiting.get("status").is_none(), "{waiting:#}");
    assert_eq!(
        waiting["metadata"]["labels"]["snapshot.state"],
        "TRIGGER_PENDING"
    );
    assert!(waiting["metadata"]["labels"]["job-reference.name"].is_null());
    assert_eq!(waiting["metadata"]["finalizers"], json!([FINALIZER]));
    kube.put_flink_deployment("flink", "orders", FlinkStatus::job("RUNNING"));
    snapshot_in_state(&kube, "flink", "orders-1", "COMPLETED").await;

    // A job that stops under a savepoint in flight abandons it.
    kube.hold_savepoints_of("flink", "fraud-detection");
    snapshots
        .create(
            &pp,
            &snapshot_of("fraud-detection-1", "fraud-detection", &[]),
        )
        .await
        .unwrap();
    snapshot_in_state(&kube, "flink", "fraud-detection-1", "IN_PROGRESS").await;
    kube.set_flink_status(
        JobKind::FlinkDeployment,
        "flink",
        "fraud-detection",
        FlinkStatus::job("FAILED"),
    );
    snapshot_in_state(&kube, "flink", "fraud-detection-1", "ABANDONED").await;

    // An existing savepoint is registered as COMPLETED at once, with its own path.
    let mut existing = snapshot_of("registered", "payments", &[]);
    existing.data["spec"]["savepoint"]["alreadyExists"] = json!(true);
    existing.data["spec"]["savepoint"]["path"] =
        json!("s3://flink/savepoints/savepoint-0a1b2c-0123456789ab");
    snapshots.create(&pp, &existing).await.unwrap();
    let registered = snapshot_in_state(&kube, "flink", "registered", "COMPLETED").await;
    assert_eq!(
        registered["status"]["path"],
        "s3://flink/savepoints/savepoint-0a1b2c-0123456789ab"
    );
}

#[tokio::test]
async fn kube_rs_a_lost_create_answer_took_effect() {
    let kube = KubeFake::start().await;
    kube.put_flink_deployment("flink", "fraud-detection", FlinkStatus::job("RUNNING"));
    let snapshots = snapshot_api(&kube, "flink");
    let pp = PostParams::default();
    let name = "fraud-detection-20261120t0100z";

    kube.lose_next_answers_to("POST", "flinkstatesnapshots", 1);
    let lost = snapshots
        .create(&pp, &snapshot_of(name, "fraud-detection", &[]))
        .await;
    let err = lost.expect_err("no answer reaches the client");
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "not an answer: {err:?}"
    );
    snapshot_in_state(&kube, "flink", name, "COMPLETED").await;

    // Asking again meets it by name.
    assert_eq!(
        refusal(
            snapshots
                .create(&pp, &snapshot_of(name, "fraud-detection", &[]))
                .await
        ),
        ("AlreadyExists".to_string(), 409)
    );
    assert_eq!(kube.snapshots("flink").len(), 1);
    let creates: Vec<(u16, bool)> = kube
        .api_requests()
        .into_iter()
        .filter(|r| r.verb == "create" && r.resource == "flinkstatesnapshots")
        .map(|r| (r.status, r.lost))
        .collect();
    assert_eq!(creates, [(201, true), (409, false)]);
    assert_eq!(kube.network(|n| n.fault_counts().lose_after), 1);
}

// -------------------------------------------------------------------------------------------------
// VVP simulator

const DEP: &str = "9f8e7d6c-5b4a-4321-8765-0fedcba98765";

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn savepoints_url(sim: &VvpSim) -> String {
    format!("{}/api/v1/namespaces/default/savepoints", sim.url)
}

async fn trigger(http: &reqwest::Client, sim: &VvpSim, deployment_id: &str) -> Value {
    let response = http
        .post(savepoints_url(sim))
        .json(&json!({
            "metadata": {
                "deploymentId": deployment_id,
                "annotations": { "savepointd.io/schedule": "hourly" },
            }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

async fn get_savepoint(http: &reqwest::Client, sim: &VvpSim, id: &str) -> (StatusCode, Value) {
    let response = http
        .get(format!("{}/{id}", savepoints_url(sim)))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// Polls a savepoint until it reaches `state`, for at most five seconds.
async fn wait_for_state(http: &reqwest::Client, sim: &VvpSim, id: &str, state: &str) -> Value {
    let reached = eventually(SETTLE, || async {
        let (_, savepoint) = get_savepoint(http, sim, id).await;
        (savepoint["status"]["state"] == state).then_some(savepoint)
    })
    .await;
    reached.unwrap_or_else(|| panic!("savepoint {id} did not reach {state} within 5 s"))
}

fn seeded(id: &str, created_at: &str, state: &str, kind: Option<&str>, origin: &str) -> Value {
    let mut savepoint = json!({
        "apiVersion": "v1",
        "kind": "Savepoint",
        "metadata": {
            "id": id,
            "namespace": "default",
            "createdAt": created_at,
            "modifiedAt": created_at,
            "deploymentId": DEP,
            "jobId": "11111111-2222-4333-8444-555555555555",
            "origin": origin,
            "annotations": { SPEC_VERSION_ANNOTATION: "1" },
            "resourceVersion": 2,
        },
        "spec": { "savepointLocation": format!("s3://flink/savepoints/savepoint-111111-{}", &id[id.len() - 12..]) },
        "status": { "state": state },
    });
    if let Some(kind) = kind {
        savepoint["metadata"]["type"] = json!(kind);
    }
    savepoint
}

async fn delete(http: &reqwest::Client, sim: &VvpSim, id: &str) -> (StatusCode, Value) {
    let response = http
        .delete(format!("{}/{id}", savepoints_url(sim)))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn vvp_requires_the_api_token() {
    let sim = VvpSim::start(VvpSimOptions {
        token: Some("s3cret".into()),
        ..Default::default()
    })
    .await;
    let http = http_client();
    let none = http.get(savepoints_url(&sim)).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert!(
        none.json::<Value>().await.unwrap()["message"]
            .as_str()
            .is_some()
    );
    let wrong = http
        .get(savepoints_url(&sim))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = http
        .get(savepoints_url(&sim))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 401, 200]);
    assert_eq!(
        sim.requests()[2].authorization.as_deref(),
        Some("Bearer s3cret")
    );
}

#[tokio::test]
async fn vvp_triggered_savepoint_starts_then_completes() {
    let complete_after = Duration::from_millis(300);
    let sim = VvpSim::start(VvpSimOptions {
        complete_after,
        ..Default::default()
    })
    .await;
    sim.add_deployment("fraud-detection", DEP, "RUNNING");
    let http = http_client();
    let started_at = Instant::now();
    let created = trigger(&http, &sim, DEP).await;
    let id = created["metadata"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["kind"], "Savepoint");
    assert_eq!(created["status"]["state"], "STARTED");
    assert_eq!(created["metadata"]["origin"], "USER_REQUEST");
    assert_eq!(created["metadata"]["type"], "FULL");
    assert_eq!(created["metadata"]["deploymentId"], DEP);
    assert_eq!(
        created["metadata"]["jobId"].as_str(),
        sim.job_id_of(DEP).as_deref()
    );
    assert_eq!(
        created["metadata"]["annotations"]["savepointd.io/schedule"],
        "hourly"
    );
    assert_eq!(
        created["metadata"]["annotations"][SPEC_VERSION_ANNOTATION],
        "1"
    );
    let created_at = created["metadata"]["createdAt"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(created_at).is_ok());
    assert_eq!(
        created_at.len(),
        "2026-11-20T01:00:03.120Z".len(),
        "{created_at}"
    );

    let (status, now) = get_savepoint(&http, &sim, &id).await;
    assert_eq!(status, StatusCode::OK);
    if started_at.elapsed() < complete_after {
        assert_eq!(now["status"]["state"], "STARTED");
    }
    let done = wait_for_state(&http, &sim, &id, "COMPLETED").await;
    assert!(started_at.elapsed() >= complete_after);
    let location = done["spec"]["savepointLocation"].as_str().unwrap();
    let suffix = location
        .strip_prefix("s3://flink/savepoints/savepoint-")
        .unwrap();
    let (job, random) = suffix.split_once('-').unwrap();
    assert_eq!(job.len(), 6, "{location}");
    assert_eq!(random.len(), 12, "{location}");
    assert!(suffix.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));

    let triggers = sim.triggers();
    assert_eq!(triggers.len(), 1);
    assert_eq!(triggers[0]["status"]["state"], "STARTED");
    assert_eq!(sim.savepoints()[0]["status"]["state"], "COMPLETED");
    assert_eq!(sim.max_started_at_once(), 1);
}

#[tokio::test]
async fn vvp_lists_as_resource_list_or_bare_array() {
    for bare_list in [false, true] {
        let sim = VvpSim::start(VvpSimOptions {
            bare_list,
            ..Default::default()
        })
        .await;
        sim.add_deployment("fraud-detection", DEP, "RUNNING");
        sim.add_deployment("payments", OTHER_DEPLOYMENT_ID, "RUNNING");
        let http = http_client();
        trigger(&http, &sim, DEP).await;
        trigger(&http, &sim, OTHER_DEPLOYMENT_ID).await;
        let list: Value = http
            .get(savepoints_url(&sim))
            .query(&[("deploymentId", DEP)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = if bare_list {
            list.as_array().unwrap().clone()
        } else {
            assert_eq!(list["apiVersion"], "v1");
            assert_eq!(list["kind"], "ResourceList");
            assert_eq!(list["metadata"], json!({}));
            list["items"].as_array().unwrap().clone()
        };
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["metadata"]["deploymentId"], DEP);

        let job_id = sim.job_id_of(OTHER_DEPLOYMENT_ID).unwrap();
        let by_job: Value = http
            .get(savepoints_url(&sim))
            .query(&[("jobId", job_id.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let by_job = if bare_list { &by_job } else { &by_job["items"] };
        assert_eq!(by_job.as_array().unwrap().len(), 1);

        let deployments: Value = http
            .get(format!("{}/api/v1/namespaces/default/deployments", sim.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let deployments = if bare_list {
            &deployments
        } else {
            &deployments["items"]
        };
        let first = &deployments[0];
        assert_eq!(first["metadata"]["id"], DEP);
        assert_eq!(first["metadata"]["name"], "fraud-detection");
        assert_eq!(first["metadata"]["namespace"], "default");
        assert_eq!(first["status"]["state"], "RUNNING");
        assert_eq!(
            first["status"]["running"]["jobId"].as_str(),
            sim.job_id_of(DEP).as_deref()
        );
    }
}

#[tokio::test]
async fn vvp_rejects_bad_requests_without_falling_over() {
    let sim = VvpSim::start(VvpSimOptions::default()).await;
    sim.add_deployment("fraud-detection", DEP, "RUNNING");
    let http = http_client();
    let post = |body: &'static str| {
        http.post(savepoints_url(&sim))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for body in [
        "{not json",
        "[]",
        "{}",
        r#"{"metadata":{"deploymentId":7}}"#,
        r#"{"metadata":{"deploymentId":"00000000-0000-4000-8000-000000000000"}}"#,
        r#"{"metadata":{"deploymentId":"9f8e7d6c-5b4a-4321-8765-0fedcba98765"},"spec":{}}"#,
    ] {
        let response = post(body).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert!(answer["message"].is_string(), "{body}: {answer}");
    }
    assert!(sim.savepoints().is_empty());
    assert!(sim.triggers().is_empty());

    let wrong_namespace = http
        .get(format!("{}/api/v1/namespaces/prod/savepoints", sim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_namespace.status(), StatusCode::NOT_FOUND);
    let (status, answer) = get_savepoint(&http, &sim, "no-such-id").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(answer["message"].is_string());

    // Registering an existing savepoint makes a COPIED, COMPLETED resource.
    let copied: Value = http
        .post(savepoints_url(&sim))
        .json(&json!({
            "metadata": { "deploymentId": DEP },
            "spec": { "savepointLocation": "s3://flink/savepoints/savepoint-abcdef-0123456789ab" },
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(copied["metadata"]["origin"], "COPIED");
    assert_eq!(copied["metadata"]["type"], "UNKNOWN");
    assert_eq!(copied["status"]["state"], "COMPLETED");
    assert_eq!(
        copied["metadata"]["annotations"][SPEC_VERSION_ANNOTATION],
        "1"
    );
    assert!(sim.triggers().is_empty());
}

#[tokio::test]
async fn vvp_failed_savepoints_carry_the_failure() {
    let sim = VvpSim::start(VvpSimOptions {
        complete_after: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    sim.add_deployment("fraud-detection", DEP, "RUNNING");
    sim.fail_savepoints_of(DEP, "Checkpoint expired before completing");
    let http = http_client();
    let created = trigger(&http, &sim, DEP).await;
    let id = created["metadata"]["id"].as_str().unwrap();
    let failed = wait_for_state(&http, &sim, id, "FAILED").await;
    let failure = &failed["status"]["failure"];
    assert_eq!(failure["message"], "Checkpoint expired before completing");
    assert!(failure["reason"].is_string());
    assert!(chrono::DateTime::parse_from_rfc3339(failure["failedAt"].as_str().unwrap()).is_ok());
    assert!(failed["spec"].get("savepointLocation").is_none());

    // A deployment that is not running cannot take a savepoint either.
    sim.heal_savepoints_of(DEP);
    sim.set_deployment_state(DEP, "CANCELLED");
    let created = trigger(&http, &sim, DEP).await;
    let failed = wait_for_state(
        &http,
        &sim,
        created["metadata"]["id"].as_str().unwrap(),
        "FAILED",
    )
    .await;
    assert!(
        failed["status"]["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("CANCELLED")
    );
}

#[tokio::test]
async fn vvp_injected_errors_drops_and_latency() {
    let sim = VvpSim::start(VvpSimOptions::default()).await;
    sim.add_deployment("fraud-detection", DEP, "RUNNING");
    let http = http_client();

    sim.fail_next(1, 503);
    let failed = http
        .post(savepoints_url(&sim))
        .json(&json!({ "metadata": { "deploymentId": DEP } }))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        failed.json::<Value>().await.unwrap(),
        json!({ "message": "injected" })
    );
    assert!(
        sim.triggers().is_empty(),
        "an injected failure changes nothing"
    );
    trigger(&http, &sim, DEP).await;
    assert_eq!(sim.triggers().len(), 1);

    // The connection is closed without an answer, even though it was kept alive from before.
    sim.drop_next(1);
    let dropped = http.get(savepoints_url(&sim)).send().await;
    assert!(dropped.is_err(), "{dropped:?}");
    let after = http.get(savepoints_url(&sim)).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::OK);

    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 201, 0, 200]);
    assert_eq!(sim.requests()[1].method, "POST");
    assert_eq!(
        sim.requests()[1].body.as_ref().unwrap()["metadata"]["deploymentId"],
        DEP
    );

    let latency = Duration::from_millis(300);
    sim.set_latency(latency);
    let asked = Instant::now();
    let slow = http.get(savepoints_url(&sim)).send().await.unwrap();
    assert_eq!(slow.status(), StatusCode::OK);
    assert!(asked.elapsed() >= latency);
    sim.fail_next(1, 500);
    let asked = Instant::now();
    let slow_failure = http.get(savepoints_url(&sim)).send().await.unwrap();
    assert_eq!(slow_failure.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(asked.elapsed() >= latency);
}

#[tokio::test]
async fn vvp_enforces_the_deletion_prerequisites() {
    let sim = VvpSim::start(VvpSimOptions::default()).await;
    sim.add_deployment("fraud-detection", DEP, "RUNNING");
    let ids = [
        "a0000000-0000-4000-8000-000000000001",
        "a0000000-0000-4000-8000-000000000002",
        "a0000000-0000-4000-8000-000000000003",
        "a0000000-0000-4000-8000-000000000004",
        "a0000000-0000-4000-8000-000000000005",
        "a0000000-0000-4000-8000-000000000006",
        "a0000000-0000-4000-8000-000000000007",
        "a0000000-0000-4000-8000-000000000008",
        "a0000000-0000-4000-8000-000000000009",
    ];
    let [
        started,
        incremental,
        retained,
        copied_unknown,
        denied,
        old_full,
        legacy_suspend,
        failed,
        latest,
    ] = ids;
    sim.seed_savepoint(seeded(
        started,
        "2026-11-20T01:00:00.000Z",
        "STARTED",
        Some("FULL"),
        "USER_REQUEST",
    ));
    sim.seed_savepoint(seeded(
        incremental,
        "2026-11-20T01:00:01.000Z",
        "COMPLETED",
        Some("INCREMENTAL"),
        "RETAINED_CHECKPOINT",
    ));
    sim.seed_savepoint(seeded(
        retained,
        "2026-11-20T01:00:02.000Z",
        "COMPLETED",
        Some("UNKNOWN"),
        "RETAINED_CHECKPOINT",
    ));
    sim.seed_savepoint(seeded(
        copied_unknown,
        "2026-11-20T01:00:03.000Z",
        "COMPLETED",
        Some("UNKNOWN"),
        "COPIED",
    ));
    sim.seed_savepoint(seeded(
        denied,
        "2026-11-20T01:00:04.000Z",
        "COMPLETED",
        Some("FULL"),
        "USER_REQUEST",
    ));
    sim.seed_savepoint(seeded(
        old_full,
        "2026-11-20T01:00:05.000Z",
        "COMPLETED",
        Some("FULL"),
        "USER_REQUEST",
    ));
    // Created before VVP 2.5: no type at all.
    sim.seed_savepoint(seeded(
        legacy_suspend,
        "2026-11-20T01:00:06.000Z",
        "COMPLETED",
        None,
        "SUSPEND",
    ));
    sim.seed_savepoint(seeded(
        failed,
        "2026-11-20T01:00:07.000Z",
        "FAILED",
        Some("FULL"),
        "USER_REQUEST",
    ));
    sim.seed_savepoint(seeded(
        latest,
        "2026-11-20T01:00:08.000Z",
        "COMPLETED",
        Some("FULL"),
        "USER_REQUEST",
    ));
    sim.deny_delete(denied, "Savepoint is referenced by a pending upgrade");
    let http = http_client();

    for (id, why) in [
        (started, "STARTED"),
        (incremental, "INCREMENTAL"),
        (retained, "full savepoint"),
        (copied_unknown, "full savepoint"),
        (denied, "pending upgrade"),
        (latest, "latest snapshot"),
    ] {
        let (status, answer) = delete(&http, &sim, id).await;
        assert_eq!(status, StatusCode::CONFLICT, "{id}: {answer}");
        let text = answer["message"].as_str().unwrap();
        assert!(text.contains(why), "{id}: {text}");
    }
    assert_eq!(
        sim.savepoints().len(),
        ids.len(),
        "a refusal deletes nothing"
    );

    for id in [old_full, legacy_suspend, failed] {
        let (status, answer) = delete(&http, &sim, id).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{id}: {answer}");
        assert_eq!(answer["status"]["state"], "PENDING_DELETION");
    }
    let gone = eventually(SETTLE, || async {
        let (status, _) = get_savepoint(&http, &sim, old_full).await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(gone.is_some(), "an accepted deletion removes the resource");
    let expected: BTreeSet<String> = [
        started,
        incremental,
        retained,
        copied_unknown,
        denied,
        latest,
    ]
    .map(String::from)
    .into();
    let ids_now = || -> BTreeSet<String> {
        sim.savepoints()
            .iter()
            .map(|s| s["metadata"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    let settled = eventually(SETTLE, || {
        let ids = ids_now();
        let done = ids == expected;
        async move { done.then_some(()) }
    })
    .await;
    assert!(settled.is_some(), "remaining: {:?}", ids_now());

    // Once the deployment stops, its latest savepoint is no longer needed for recovery.
    sim.set_deployment_state(DEP, "CANCELLED");
    assert_eq!(delete(&http, &sim, latest).await.0, StatusCode::ACCEPTED);

    let (status, _) = delete(&http, &sim, "no-such-savepoint").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let bad_force = http
        .delete(format!("{}/{started}?force=maybe", savepoints_url(&sim)))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_force.status(), StatusCode::BAD_REQUEST);
    let forced = http
        .delete(format!("{}/{started}?force=true", savepoints_url(&sim)))
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn vvp_deletes_every_resource_of_a_shared_location() {
    let sim = VvpSim::start(VvpSimOptions {
        // Long enough for a poll to see each phase even on a busy machine.
        delete_after: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let location = "s3://flink/savepoints/savepoint-111111-aaaaaaaaaaaa";
    let mut original = seeded(
        "b0000000-0000-4000-8000-000000000001",
        "2026-11-20T01:00:00.000Z",
        "COMPLETED",
        Some("FULL"),
        "USER_REQUEST",
    );
    original["spec"]["savepointLocation"] = json!(location);
    let mut copy = seeded(
        "b0000000-0000-4000-8000-000000000002",
        "2026-11-20T02:00:00.000Z",
        "COMPLETED",
        Some("UNKNOWN"),
        "COPIED",
    );
    copy["spec"]["savepointLocation"] = json!(location);
    let other = seeded(
        "b0000000-0000-4000-8000-000000000003",
        "2026-11-20T03:00:00.000Z",
        "COMPLETED",
        Some("FULL"),
        "USER_REQUEST",
    );
    sim.seed_savepoint(original);
    sim.seed_savepoint(copy);
    sim.seed_savepoint(other);
    let http = http_client();

    // The copy alone would not pass the type check; its full original makes the pair deletable.
    let (status, _) = delete(&http, &sim, "b0000000-0000-4000-8000-000000000002").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut seen = Vec::new();
    let gone = eventually(SETTLE, || {
        let savepoints = sim.savepoints();
        let state = savepoints
            .iter()
            .find(|s| s["metadata"]["id"] == "b0000000-0000-4000-8000-000000000001")
            .map(|s| s["status"]["state"].as_str().unwrap().to_string());
        if let Some(state) = &state
            && seen.last() != Some(state)
        {
            seen.push(state.clone());
        }
        let remaining = savepoints.len();
        async move { (remaining == 1).then_some(()) }
    })
    .await;
    assert!(gone.is_some(), "both resources of the location disappear");
    assert_eq!(seen, ["PENDING_DELETION", "DELETING"]);
    assert_eq!(
        sim.savepoints()[0]["metadata"]["id"],
        "b0000000-0000-4000-8000-000000000003"
    );
}

#[tokio::test]
async fn vvp_failed_deletion_keeps_the_resource() {
    let sim = VvpSim::start(VvpSimOptions::default()).await;
    let id = "c0000000-0000-4000-8000-000000000001";
    sim.seed_savepoint(seeded(
        id,
        "2026-11-20T01:00:00.000Z",
        "COMPLETED",
        Some("FULL"),
        "USER_REQUEST",
    ));
    sim.fail_deletion_of(id, "Access Denied (Service: S3)");
    let http = http_client();
    assert_eq!(delete(&http, &sim, id).await.0, StatusCode::ACCEPTED);
    let failed = wait_for_state(&http, &sim, id, "FAILED_DELETION").await;
    assert_eq!(
        failed["status"]["failure"]["message"],
        "Access Denied (Service: S3)"
    );
}

#[tokio::test]
async fn vvp_counts_savepoints_in_flight() {
    let sim = VvpSim::start(VvpSimOptions {
        complete_after: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    sim.add_deployment("fraud-detection", DEP, "RUNNING");
    sim.add_deployment("payments", OTHER_DEPLOYMENT_ID, "RUNNING");
    let http = http_client();

    // One after the other: never more than one at a time.
    for _ in 0..2 {
        let created = trigger(&http, &sim, DEP).await;
        wait_for_state(
            &http,
            &sim,
            created["metadata"]["id"].as_str().unwrap(),
            "COMPLETED",
        )
        .await;
    }
    assert_eq!(sim.max_started_at_once(), 1);

    sim.hold_savepoints_of(DEP);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(trigger(&http, &sim, DEP).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sim.started_now(), 3, "held savepoints stay STARTED");
    let other = trigger(&http, &sim, OTHER_DEPLOYMENT_ID).await;
    assert_eq!(sim.max_started_at_once(), 4);
    wait_for_state(
        &http,
        &sim,
        other["metadata"]["id"].as_str().unwrap(),
        "COMPLETED",
    )
    .await;
    sim.release_savepoints_of(DEP);
    for savepoint in &held {
        wait_for_state(
            &http,
            &sim,
            savepoint["metadata"]["id"].as_str().unwrap(),
            "COMPLETED",
        )
        .await;
    }
    assert_eq!(sim.started_now(), 0);
    assert_eq!(sim.max_started_at_once(), 4);
}

/// Two COMPLETED savepoints of `DEP` (the older one deletable) and the client that asked for them.
async fn two_completed(sim: &VvpSim, http: &reqwest::Client) -> [String; 2] {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let created = trigger(http, sim, DEP).await;
        let id = created["metadata"]["id"].as_str().unwrap().to_string();
        wait_for_state(http, sim, &id, "COMPLETED").await;
        ids.push(id);
    }
    ids.try_into().unwrap()
}

#[tokio::test]
async fn vvp_a_lost_answer_took_effect_and_the_client_saw_an_error() {
    let sim = VvpSim::start(VvpSimOptions {
        complete_after: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    sim.add_deployment("fraud-detection", DEP, "RUNNING");
    let http = http_client();

    sim.lose_next_answers_to("POST", 1);
    let list = http.get(savepoints_url(&sim)).send().await.unwrap();
    assert_eq!(list.status(), StatusCode::OK, "a GET is not a POST");
    let lost = http
        .post(savepoints_url(&sim))
        .json(&json!({ "metadata": { "deploymentId": DEP } }))
        .send()
        .await;
    let err = lost.expect_err("no answer reaches the client");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(
        sim.triggers().len(),
        1,
        "the savepoint was made all the same"
    );
    let id = sim.triggers()[0]["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for_state(&http, &sim, &id, "COMPLETED").await;
    trigger(&http, &sim, DEP).await;
    assert_eq!(sim.triggers().len(), 2, "only the next POST was lost");

    let requests = sim.requests();
    let seen: Vec<(&str, u16, bool, Option<Fault>)> = requests
        .iter()
        .take(3)
        .map(|r| (r.method.as_str(), r.status, r.lost, r.fault))
        .collect();
    assert_eq!(
        seen,
        [
            ("GET", 200, false, None),
            ("POST", 201, true, Some(Fault::LoseAfter)),
            ("GET", 200, false, None),
        ]
    );

    // A lost DELETE answer: the deletion runs to its end, and is recorded.
    let [older, newer] = two_completed(&sim, &http).await;
    sim.lose_next_answers(1);
    let lost = http
        .delete(format!("{}/{older}", savepoints_url(&sim)))
        .send()
        .await;
    assert!(lost.is_err(), "{lost:?}");
    let gone = eventually(SETTLE, || async {
        (get_savepoint(&http, &sim, &older).await.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the deletion went ahead");
    let deletions = sim.deletions();
    assert_eq!(deletions.len(), 1);
    assert_eq!(deletions[0].id(), older);
    assert_eq!(deletions[0].state, "COMPLETED");
    let delete = sim
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .unwrap();
    assert_eq!((delete.status, delete.lost), (202, true));
    assert_eq!(
        get_savepoint(&http, &sim, &newer).await.1["status"]["state"],
        "COMPLETED"
    );
    assert_eq!(
        sim.fault_counts(),
        FaultCounts {
            lose_after: 2,
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn vvp_a_slow_answer_took_effect_before_the_client_gave_up() {
    let sim = VvpSim::start(VvpSimOptions::default()).await;
    sim.add_deployment("fraud-detection", DEP, "RUNNING");
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let by = Duration::from_millis(1_500);

    sim.slow_next_answers_to("POST", 1, by);
    let asked = Instant::now();
    let slow = impatient
        .post(savepoints_url(&sim))
        .json(&json!({ "metadata": { "deploymentId": DEP } }))
        .send()
        .await;
    let err = slow.expect_err("the client gives up first");
    assert!(err.is_timeout(), "{err:?}");
    assert!(asked.elapsed() < by, "it did not wait for the answer");
    assert_eq!(
        sim.triggers().len(),
        1,
        "the savepoint was made all the same"
    );
    let post = sim.requests()[0].clone();
    assert_eq!(
        (post.status, post.lost, post.fault),
        (201, false, Some(Fault::Slow(by)))
    );

    // A patient client gets the answer, late.
    sim.slow_next_answers(1, by);
    let asked = Instant::now();
    let answer = http_client()
        .get(savepoints_url(&sim))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(asked.elapsed() >= by);
    assert_eq!(sim.fault_counts().slow, 2);
}

/// Sends the same sequence of requests to a simulator with `faults` and returns what each met.
async fn under_faults(faults: Faults) -> (Vec<Option<Fault>>, FaultCounts, usize) {
    let sim = VvpSim::start(VvpSimOptions::default()).await;
    sim.add_deployment("fraud-detection", DEP, "RUNNING");
    sim.set_faults(faults);
    let http = http_client();
    for _ in 0..40 {
        let asked = Instant::now();
        let answer = http
            .post(savepoints_url(&sim))
            .json(&json!({ "metadata": { "deploymentId": DEP } }))
            .send()
            .await;
        let recorded = sim.requests().last().cloned().unwrap();
        // What the client saw agrees with what was injected.
        match (recorded.fault, answer) {
            (None, Ok(r)) => assert_eq!(r.status(), StatusCode::CREATED),
            (Some(Fault::Status(503)), Ok(r)) => {
                assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE)
            }
            (Some(Fault::Slow(by)), Ok(r)) => {
                assert_eq!(r.status(), StatusCode::CREATED);
                assert!(asked.elapsed() >= by);
            }
            (Some(Fault::DropBefore | Fault::LoseAfter), Err(e)) => {
                assert!(!e.is_timeout(), "{e:?}")
            }
            (fault, answer) => panic!("{fault:?} answered {answer:?}"),
        }
        let list = http.get(savepoints_url(&sim)).send().await.unwrap();
        assert_eq!(list.status(), StatusCode::OK, "the plan is for POSTs only");
    }
    let requests = sim.requests();
    let handled = requests
        .iter()
        .filter(|r| r.method == "POST" && r.status == 201)
        .count();
    assert_eq!(
        sim.triggers().len(),
        handled,
        "every handled POST made a savepoint, lost and slow ones included"
    );
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.method == "POST")
            .map(|r| r.lost)
            .collect::<Vec<_>>(),
        requests
            .iter()
            .filter(|r| r.method == "POST")
            .map(|r| r.fault == Some(Fault::LoseAfter))
            .collect::<Vec<_>>(),
    );
    let sequence: Vec<Option<Fault>> = requests
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.fault)
        .collect();
    assert_eq!(
        sim.fault_counts().total(),
        sequence.iter().flatten().count()
    );
    (sequence, sim.fault_counts(), handled)
}

#[tokio::test]
async fn vvp_a_fault_plan_replays_from_its_seed() {
    // SplitMix64's published first output for seed 0.
    assert_eq!(
        support::SplitMix64::new(0).next_u64(),
        0xe220_a839_7b1d_cdaf
    );
    let plan = |seed| Faults {
        seed,
        drop_before: 0.15,
        lose_after: 0.15,
        server_error: 0.15,
        slow: 0.15,
        slow_by: Duration::from_millis(50),
        methods: vec!["POST".into()],
    };
    let (first, counts, handled) = under_faults(plan(7)).await;
    let (again, counts_again, handled_again) = under_faults(plan(7)).await;
    assert_eq!(first, again, "same seed, same faults");
    assert_eq!((counts, handled), (counts_again, handled_again));
    assert!(
        counts.drop_before > 0
            && counts.lose_after > 0
            && counts.server_error > 0
            && counts.slow > 0,
        "every kind occurs in 40 draws: {counts:?}"
    );
    assert!(
        first.iter().any(Option::is_none),
        "and requests without a fault"
    );
    let (other, _, _) = under_faults(plan(8)).await;
    assert_ne!(first, other, "another seed, other faults");
}

#[tokio::test]
async fn vvp_records_each_accepted_deletion_with_the_newer_completed_savepoints() {
    let sim = VvpSim::start(VvpSimOptions::default()).await;
    sim.add_deployment("fraud-detection", DEP, "RUNNING");
    let ids = [
        "d0000000-0000-4000-8000-000000000001",
        "d0000000-0000-4000-8000-000000000002",
        "d0000000-0000-4000-8000-000000000003",
        "d0000000-0000-4000-8000-000000000004",
        "d0000000-0000-4000-8000-000000000005",
    ];
    let states = ["COMPLETED", "FAILED", "COMPLETED", "COMPLETED", "STARTED"];
    for (i, (id, state)) in ids.iter().zip(states).enumerate() {
        sim.seed_savepoint(seeded(
            id,
            &format!("2026-11-20T0{i}:00:00.000Z"),
            state,
            Some("FULL"),
            "USER_REQUEST",
        ));
    }
    // Newer, and completed, but of another deployment: not counted.
    let mut foreign = seeded(
        "d0000000-0000-4000-8000-000000000006",
        "2026-11-20T09:00:00.000Z",
        "COMPLETED",
        Some("FULL"),
        "USER_REQUEST",
    );
    foreign["metadata"]["deploymentId"] = json!(OTHER_DEPLOYMENT_ID);
    sim.seed_savepoint(foreign);
    let http = http_client();

    // Refused: the newest completed of a running deployment, and one in flight. Not recorded.
    assert_eq!(delete(&http, &sim, ids[3]).await.0, StatusCode::CONFLICT);
    assert_eq!(delete(&http, &sim, ids[4]).await.0, StatusCode::CONFLICT);
    assert!(sim.deletions().is_empty());

    for id in [ids[0], ids[1], ids[2]] {
        assert_eq!(delete(&http, &sim, id).await.0, StatusCode::ACCEPTED);
    }
    let recorded: Vec<(String, String, String, usize)> = sim
        .deletions()
        .iter()
        .map(|d| {
            let id = d.id().to_string();
            (
                id,
                d.deployment_id().to_string(),
                d.state.clone(),
                d.newer_completed,
            )
        })
        .collect();
    let expected = [
        (ids[0], "COMPLETED", 2),
        (ids[1], "FAILED", 2),
        (ids[2], "COMPLETED", 1),
    ]
    .map(|(id, state, newer)| (id.to_string(), DEP.to_string(), state.to_string(), newer));
    assert_eq!(recorded, expected);
}
