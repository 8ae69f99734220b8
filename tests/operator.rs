//! The Apache Flink Kubernetes Operator (`kind: flinkOperator`) against the fake Kubernetes API server and
//! its operator simulation: snapshots named per slot and followed from the watch, jobs that do not run,
//! failed and abandoned snapshots, a lost create answer, retention that leaves the operator's own and
//! hand-made snapshots alone and lets the operator's finalizer dispose, deletions pending while the job
//! is down, and the daemon on a seconds schedule across a restart.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};

use savepointd::config::Config;
use support::eventually;
use support::fixture::{Daemon, once, prune};
use support::kube_fake::{FlinkStatus, JobKind, KubeFake, savepoint_snapshot};

struct World {
    kube: KubeFake,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let kube = KubeFake::start().await;
    kube.put_flink_deployment("flink", "orders", FlinkStatus::job("RUNNING"));
    kube.put_flink_deployment("flink", "payments", FlinkStatus::job("RUNNING"));
    kube.put_flink_deployment("jobs", "session", FlinkStatus::job("RUNNING"));
    kube.put_flink_session_job("jobs", "enrich", "session", FlinkStatus::job("RUNNING"));
    World {
        kube,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl World {
    fn yaml(&self, defaults: &str, apps: &str) -> String {
        let kubeconfig = self.kube.write_kubeconfig(self.dir.path());
        format!(
            r#"
server: {{ listen: "127.0.0.1:0", shutdownGrace: 2s }}
kubernetes: {{ kubeconfig: {kubeconfig} }}
defaults:
  schedule: "@every 1h"
  startingDeadline: 2h
  retry: {{ maxAttempts: 2, backoff: 200ms }}
{defaults}
platforms:
  - name: operator
    kind: flinkOperator
    kubernetesNamespace: [flink, jobs]
applications:
{apps}"#,
            kubeconfig = kubeconfig.display()
        )
    }

    fn config(&self, defaults: &str, apps: &str) -> Config {
        savepointd::config::from_yaml(&self.yaml(defaults, apps)).expect("test config is valid")
    }

    fn creates(&self) -> usize {
        self.kube.count_requests("create", "flinkstatesnapshots")
    }

    /// The snapshots savepointd made for `app`.
    fn made_for(&self, namespace: &str, app: &str) -> Vec<Value> {
        self.kube
            .snapshots(namespace)
            .into_iter()
            .filter(|s| s["metadata"]["annotations"]["savepointd.io/application"] == app)
            .collect()
    }
}

fn name_of(snapshot: &Value) -> &str {
    snapshot["metadata"]["name"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_creates_one_snapshot_per_application_and_follows_it_from_the_watch() {
    let w = world().await;
    let c = w.config("  formatType: NATIVE", "  - orders\n  - enrich\n");
    let (text, ok) = once(&c, &[]).await;
    assert!(ok, "{text}");
    for (namespace, app, kind) in [
        ("flink", "orders", "FlinkDeployment"),
        ("jobs", "enrich", "FlinkSessionJob"),
    ] {
        let made = w.made_for(namespace, app);
        assert_eq!(made.len(), 1, "{app}: {made:#?}");
        let s = &made[0];
        assert!(
            name_of(s).starts_with(&format!("{app}-")) && name_of(s).ends_with("-1"),
            "{}",
            name_of(s)
        );
        assert_eq!(
            s["spec"]["jobReference"],
            json!({"kind": kind, "name": app})
        );
        assert_eq!(s["spec"]["backoffLimit"], 0);
        assert_eq!(s["spec"]["savepoint"]["disposeOnDelete"], true);
        assert_eq!(s["spec"]["savepoint"]["formatType"], "NATIVE");
        assert_eq!(
            s["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "savepointd"
        );
        assert_eq!(s["status"]["state"], "COMPLETED");
        // The operator labels it MANUAL: never PERIODIC or UPGRADE, which it would prune as its own.
        assert_eq!(s["metadata"]["labels"]["snapshot.trigger-type"], "MANUAL");
        assert!(text.contains(name_of(s)), "{text}");
    }
    // Followed from the watch cache: no GET per poll, no list per run.
    assert_eq!(w.creates(), 2);
    let gets = w.kube.count_requests("get", "flinkstatesnapshots");
    assert!(
        gets <= 2,
        "{gets} GETs of snapshots: at most one each for a create the cache had not seen"
    );
    assert_eq!(w.kube.count_requests("get", "flinkdeployments"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_does_not_run_is_skipped_with_the_operators_state() {
    let w = world().await;
    w.kube
        .put_flink_deployment("flink", "paused", FlinkStatus::job("SUSPENDED"));
    let c = w.config("", "  - paused\n  - nowhere\n");
    let (text, ok) = once(&c, &[]).await;
    assert!(!ok, "{text}");
    assert!(text.contains("job SUSPENDED"), "{text}");
    assert!(
        text.contains("no FlinkDeployment or FlinkSessionJob named nowhere"),
        "{text}"
    );
    assert_eq!(w.creates(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_answer_is_adopted_never_duplicated() {
    let w = world().await;
    let c = w.config("", "  - orders\n");
    w.kube
        .lose_next_answers_to("POST", "flinkstatesnapshots", 1);
    let (text, ok) = once(&c, &["orders"]).await;
    assert!(ok, "{text}");
    let lost: Vec<_> = w
        .kube
        .api_requests()
        .into_iter()
        .filter(|r| r.lost)
        .collect();
    assert_eq!(lost.len(), 1, "the fault was met");
    assert_eq!(
        w.made_for("flink", "orders").len(),
        1,
        "one snapshot for the slot"
    );
    assert_eq!(
        w.creates(),
        1,
        "a create that may have taken effect is not sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_carries_the_operators_error_and_is_retried_under_a_new_name() {
    let w = world().await;
    w.kube
        .fail_savepoints_of("flink", "payments", "Checkpoint expired before completing");
    let c = w.config("", "  - payments\n");
    let (text, ok) = once(&c, &["payments"]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("Checkpoint expired before completing"),
        "{text}"
    );
    let names: BTreeSet<String> = w
        .made_for("flink", "payments")
        .iter()
        .map(|s| name_of(s).to_owned())
        .collect();
    assert_eq!(names.len(), 2, "maxAttempts 2: {names:?}");
    assert!(names.iter().any(|n| n.ends_with("-1")) && names.iter().any(|n| n.ends_with("-2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_stops_under_its_snapshot_abandons_it() {
    let w = world().await;
    w.kube.hold_savepoints_of("flink", "orders");
    let c = w.config("", "  - name: orders\n    retry: { maxAttempts: 1 }\n");
    let run = tokio::spawn({
        let c = c.clone();
        async move { once(&c, &["orders"]).await }
    });
    eventually(Duration::from_secs(10), || async {
        w.made_for("flink", "orders")
            .iter()
            .any(|s| s["status"]["state"] == "IN_PROGRESS")
            .then_some(())
    })
    .await
    .expect("the snapshot went IN_PROGRESS");
    w.kube.set_flink_status(
        JobKind::FlinkDeployment,
        "flink",
        "orders",
        FlinkStatus::job("SUSPENDED"),
    );
    let (text, ok) = run.await.unwrap();
    assert!(!ok, "{text}");
    assert!(text.contains("ABANDONED"), "{text}");
}

/// A COMPLETED snapshot savepointd made for `orders`, `hours` ago.
fn managed(hours: i64) -> Value {
    let at = Utc::now() - TimeDelta::hours(hours);
    let mut s = savepoint_snapshot(&format!("orders-old-{hours}"), "orders", "MANUAL", at);
    s["metadata"]["annotations"] = json!({
        "savepointd.io/managed-by": "savepointd",
        "savepointd.io/application": "orders",
        "savepointd.io/slot": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_leaves_the_operators_and_hand_made_snapshots_and_the_operator_disposes() {
    let w = world().await;
    for hours in 1..=5 {
        w.kube.seed_snapshot("flink", managed(hours));
    }
    let old = Utc::now() - TimeDelta::hours(48);
    for (name, trigger) in [
        ("orders-savepoint-periodic-1", "PERIODIC"),
        ("orders-upgrade-1", "UPGRADE"),
        ("by-hand", "MANUAL"),
    ] {
        w.kube
            .seed_snapshot("flink", savepoint_snapshot(name, "orders", trigger, old));
    }
    let c = w.config("  retention: { keepLast: 2 }", "  - orders\n");
    let (text, ok) = prune(&c).await;
    assert!(ok, "{text}");
    let disposed: BTreeSet<String> = w.kube.disposals().iter().map(|d| d.name.clone()).collect();
    let expected: BTreeSet<String> = (3..=5).map(|h| format!("orders-old-{h}")).collect();
    assert_eq!(disposed, expected, "{text}");
    let left: BTreeSet<String> = w
        .kube
        .snapshots("flink")
        .iter()
        .map(|s| name_of(s).to_owned())
        .collect();
    for kept in [
        "orders-old-1",
        "orders-old-2",
        "orders-savepoint-periodic-1",
        "orders-upgrade-1",
        "by-hand",
    ] {
        assert!(left.contains(kept), "{kept} kept: {left:?}");
    }
    // Even with every snapshot in scope, the upgrade savepoint stays: the operator may restore from it.
    let c = w.config("  retention: { keepLast: 1, scope: all }", "  - orders\n");
    let (text, ok) = prune(&c).await;
    assert!(ok, "{text}");
    let left: BTreeSet<String> = w
        .kube
        .snapshots("flink")
        .iter()
        .map(|s| name_of(s).to_owned())
        .collect();
    assert!(left.contains("orders-upgrade-1"), "{left:?}\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_while_the_job_is_down_is_pending_not_failed_and_never_sent_again() {
    let w = world().await;
    for hours in 1..=4 {
        w.kube.seed_snapshot("flink", managed(hours));
    }
    let c = w.config("  retention: { keepLast: 1 }", "  - orders\n");
    let run = tokio::spawn({
        let c = c.clone();
        async move { prune(&c).await }
    });
    // The job stops as the first deletion goes out.
    eventually(Duration::from_secs(10), || async {
        (w.kube.count_requests("delete", "flinkstatesnapshots") > 0).then_some(())
    })
    .await
    .expect("a deletion began");
    w.kube.set_flink_status(
        JobKind::FlinkDeployment,
        "flink",
        "orders",
        FlinkStatus::job("SUSPENDED"),
    );
    let (text, ok) = run.await.unwrap();
    assert!(
        ok,
        "a deletion left to the operator is not a failure: {text}"
    );
    assert!(text.contains("deletion pending"), "{text}");
    let terminating = w
        .kube
        .snapshots("flink")
        .iter()
        .filter(|s| !s["metadata"]["deletionTimestamp"].is_null())
        .count();
    assert!(terminating >= 1, "left Terminating while the job is down");

    // Back to RUNNING: the operator disposes of them; a prune meanwhile sends no DELETE again.
    w.kube.set_flink_status(
        JobKind::FlinkDeployment,
        "flink",
        "orders",
        FlinkStatus::job("RUNNING"),
    );
    let deletes = w.kube.count_requests("delete", "flinkstatesnapshots");
    let (text, ok) = prune(&c).await;
    assert!(ok, "{text}");
    assert_eq!(
        w.kube.count_requests("delete", "flinkstatesnapshots"),
        deletes,
        "{text}"
    );
    eventually(Duration::from_secs(10), || async {
        (w.kube.snapshots("flink").len() == 1).then_some(())
    })
    .await
    .expect("the operator finished the deletions once the job ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_jobs_saved_on_a_seconds_schedule_across_a_restart() {
    let w = world().await;
    w.kube
        .put_flink_deployment("flink", "clicks", FlinkStatus::job("RUNNING"));
    let yaml = w.yaml(
        "  schedule: \"* * * * * *\"\n  retention: { keepLast: 2 }",
        "  - orders\n  - payments\n  - clicks\n  - enrich\n",
    );
    let daemon = Daemon::start(&yaml).await;
    let count = |ns: &str, app: &str| w.made_for(ns, app).len() + disposed_of(&w, app);
    eventually(Duration::from_secs(20), || async {
        (count("flink", "orders") >= 3 && count("jobs", "enrich") >= 3).then_some(())
    })
    .await
    .expect("three snapshots each");
    // A job suspended mid-run: its runs are skipped, the others go on.
    w.kube.set_flink_status(
        JobKind::FlinkDeployment,
        "flink",
        "clicks",
        FlinkStatus::job("SUSPENDED"),
    );
    let reads_before = w.kube.count_requests("get", "flinkdeployments")
        + w.kube.count_requests("list", "flinkdeployments");
    let clicks_before = count("flink", "clicks");
    let orders_before = count("flink", "orders");
    eventually(Duration::from_secs(20), || async {
        (count("flink", "orders") >= orders_before + 2).then_some(())
    })
    .await
    .expect("orders goes on");
    let not_running = daemon
        .metric("savepointd_runs_skipped_total{application=\"clicks\",platform=\"operator\",reason=\"not_running\"}")
        .await
        .unwrap_or_default();
    daemon.stop().await;
    assert!(not_running >= 1.0, "{not_running}");
    assert!(
        count("flink", "clicks") <= clicks_before + 1,
        "no new snapshot of a suspended job"
    );
    let reads_after = w.kube.count_requests("get", "flinkdeployments")
        + w.kube.count_requests("list", "flinkdeployments");
    assert_eq!(
        reads_after, reads_before,
        "a tick reads jobs from the watch cache only"
    );

    // A restart: the slots of the first daemon are not taken again.
    let daemon = Daemon::start(&yaml).await;
    let before = count("flink", "orders");
    eventually(Duration::from_secs(20), || async {
        (count("flink", "orders") >= before + 2).then_some(())
    })
    .await
    .expect("the restarted daemon goes on");
    daemon.stop().await;
    let mut slots = BTreeSet::new();
    let mut all: Vec<Value> = ["flink", "jobs"]
        .iter()
        .flat_map(|ns| w.kube.snapshots(ns))
        .collect();
    all.extend(w.kube.disposals().into_iter().map(|d| d.snapshot));
    for s in all
        .iter()
        .filter(|s| s["metadata"]["annotations"]["savepointd.io/managed-by"] == "savepointd")
    {
        let key = (
            s["metadata"]["annotations"]["savepointd.io/application"].to_string(),
            s["metadata"]["annotations"]["savepointd.io/slot"].to_string(),
        );
        assert!(slots.insert(key.clone()), "two snapshots for {key:?}");
    }
    for d in w.kube.disposals() {
        assert_eq!(
            d.trigger_type, "MANUAL",
            "only savepointd's snapshots are disposed"
        );
    }
}

fn disposed_of(w: &World, app: &str) -> usize {
    w.kube.disposals().iter().filter(|d| d.job == app).count()
}
