//! The fakes in `support/` are only worth what they agree with: the Kubernetes fake is checked
//! against the real `kubectl` and kube-rs, the VVP simulator against the documented API,
//! including its refusals.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::eventually;
use support::kube_fake::KubeFake;
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
