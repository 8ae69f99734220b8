//! The shared world of the black-box tests: a VVP simulator with three deployments, a fake Kubernetes
//! API server with their pods labelled as VVP labels them, a token file, and a daemon started
//! in-process through `savepointd::run_on`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::kube_fake::KubeFake;
use super::vvp_sim::{VvpSim, VvpSimOptions};

pub const TOKEN: &str = "vvp-test-token";

/// A daemon started in-process, stopped by `stop`.
pub struct Daemon {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<savepointd::Result<()>>,
}

impl Daemon {
    pub async fn start(yaml: &str) -> Daemon {
        let config = savepointd::config::from_yaml(yaml).expect("test config is valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(savepointd::run_on(listener, config, async {
            let _ = stopped.await;
        }));
        Daemon {
            url,
            stop: Some(stop),
            task,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("{}{path}", self.url)).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The value of one sample of `/metrics`, e.g. `savepointd_savepoint_success_total{application="a",platform="vvp"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    /// Stops the daemon and returns how long the shutdown took.
    pub async fn stop(mut self) -> Duration {
        let t = std::time::Instant::now();
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("daemon stops within 30 s")
            .expect("daemon task did not panic")
            .expect("daemon ended cleanly");
        t.elapsed()
    }
}

pub struct Fixture {
    pub vvp: VvpSim,
    pub kube: KubeFake,
    pub dir: tempfile::TempDir,
}

/// Three VVP deployments with their JobManager and TaskManager pods, as VVP labels them.
pub const APPS: [(&str, &str); 3] = [
    ("Fraud Detection", "11111111-1111-4111-8111-111111111111"),
    ("payments", "22222222-2222-4222-8222-222222222222"),
    ("clickstream", "33333333-3333-4333-8333-333333333333"),
];

pub async fn fixture(options: VvpSimOptions) -> Fixture {
    let vvp = VvpSim::start(VvpSimOptions {
        token: Some(TOKEN.into()),
        ..options
    })
    .await;
    let kube = KubeFake::start().await;
    for (name, id) in APPS {
        vvp.add_deployment(name, id, "RUNNING");
        let label = savepointd::resolve::sanitize(name);
        for role in ["jobmanager", "taskmanager"] {
            kube.add_pod(
                "flink",
                &format!("job-{id}-{role}-0"),
                &[
                    ("app", "flink-job"),
                    ("system", "ververica-platform"),
                    ("vvpNamespace", "default"),
                    ("deploymentId", id),
                    ("deploymentName", &label),
                    ("component", role),
                ],
            );
        }
    }
    // Same labels in another namespace, and a foreign pod in the watched one: neither may be used.
    kube.add_pod(
        "other",
        "elsewhere",
        &[
            ("system", "ververica-platform"),
            ("deploymentName", "payments"),
            ("deploymentId", "wrong"),
        ],
    );
    kube.add_pod(
        "flink",
        "unrelated",
        &[
            ("deploymentName", "payments"),
            ("deploymentId", "wrong-too"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    Fixture { vvp, kube, dir }
}

impl Fixture {
    pub fn config(&self, platform_extra: &str, apps: &str) -> String {
        let kubeconfig = self.kube.write_kubeconfig(self.dir.path());
        format!(
            r#"
server: {{ listen: "127.0.0.1:0", shutdownGrace: 2s }}
kubernetes: {{ kubeconfig: {kubeconfig} }}
defaults:
  # `once` runs the latest slot within startingDeadline: hourly slots, always due, one per test.
  schedule: "@every 1h"
  startingDeadline: 2h
  retry: {{ maxAttempts: 2, backoff: 200ms }}
platforms:
  - name: vvp
    kind: vvp
    url: {url}
    auth: {{ tokenFile: {token} }}
    maxConcurrent: 8
    requestTimeout: 5s
    resolve: {{ via: pods, kubernetesNamespace: flink, selector: system=ververica-platform }}
{platform_extra}
applications:
{apps}
"#,
            kubeconfig = kubeconfig.display(),
            url = self.vvp.url,
            token = self.dir.path().join("token").display(),
        )
    }
}

pub fn annotation<'a>(savepoint: &'a Value, key: &str) -> &'a str {
    savepoint["metadata"]["annotations"][key]
        .as_str()
        .unwrap_or_default()
}

pub fn slot_of(savepoint: &Value) -> DateTime<Utc> {
    annotation(savepoint, "savepointd.io/slot").parse().unwrap()
}

/// Triggers grouped by application annotation.
pub fn triggers_by_app(vvp: &VvpSim) -> BTreeMap<String, Vec<Value>> {
    triggers_by_annotation(&vvp.triggers())
}

/// Savepoints of any platform grouped by their `savepointd.io/application` annotation.
pub fn triggers_by_annotation(triggers: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for t in triggers.iter().cloned() {
        map.entry(annotation(&t, "savepointd.io/application").to_owned())
            .or_default()
            .push(t);
    }
    map
}

/// `savepointd once` through the library call the CLI makes, bounded: a run that hangs fails the test
/// instead of stalling the suite.
pub async fn once(config: &savepointd::config::Config, apps: &[&str]) -> (String, bool) {
    let names: Vec<String> = apps.iter().map(|s| s.to_string()).collect();
    tokio::time::timeout(
        Duration::from_secs(60),
        savepointd::commands::once(
            config,
            &names,
            false,
            true,
            &tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("once finishes within 60 s")
    .expect("once runs")
}

/// `savepointd prune` of every application, as a table, bounded as `once` is.
pub async fn prune(config: &savepointd::config::Config) -> (String, bool) {
    tokio::time::timeout(
        Duration::from_secs(60),
        savepointd::commands::prune(
            config,
            &[],
            false,
            savepointd::commands::Output::Table,
            &tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("prune finishes within 60 s")
    .expect("prune runs")
}
