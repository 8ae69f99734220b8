//! Confluent Manager for Apache Flink (`kind: cmf`) against the CMF simulator: savepoints of applications
//! and statements by name, the slot's name as its identity (a 409 adopted, a lost answer never
//! duplicated), CMF's failures and abandoned savepoints, paged lists, retention that never forces a
//! deletion, deletions pending while the job is down, the bearer token and mutual TLS, and CMF's own
//! schedule pointed out.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};

use savepointd::commands::{self, Output};
use savepointd::config::Config;
use support::cmf_sim::{CmfSim, CmfSimOptions};
use support::fixture::{Daemon, annotation, once, prune};
use support::tls::TlsFront;
use support::unreliable::Fault;

const TOKEN: &str = "cmf-test-token";

struct World {
    cmf: CmfSim,
    dir: tempfile::TempDir,
}

/// The simulator with its bearer token check on.
async fn world(options: CmfSimOptions) -> World {
    world_as_given(CmfSimOptions {
        token: Some(TOKEN.into()),
        ..options
    })
    .await
}

async fn world_as_given(options: CmfSimOptions) -> World {
    let cmf = CmfSim::start(options).await;
    for app in ["orders", "payments"] {
        cmf.add_application(app, "RUNNING");
    }
    cmf.add_statement("enrich-clicks", "RUNNING");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    World { cmf, dir }
}

impl World {
    fn yaml(&self, defaults: &str, apps: &str) -> String {
        self.yaml_with(
            &format!(
                "url: {}\n    auth: {{ tokenFile: {} }}",
                self.cmf.url,
                self.dir.path().join("token").display()
            ),
            defaults,
            apps,
        )
    }

    fn yaml_with(&self, connection: &str, defaults: &str, apps: &str) -> String {
        format!(
            r#"
server: {{ listen: "127.0.0.1:0", shutdownGrace: 2s }}
defaults:
  schedule: "@every 1h"
  startingDeadline: 2h
  retry: {{ maxAttempts: 2, backoff: 200ms }}
{defaults}
platforms:
  - name: confluent
    kind: cmf
    environment: prod
    {connection}
    requestTimeout: 2s
applications:
{apps}"#
        )
    }

    fn config(&self, defaults: &str, apps: &str) -> Config {
        savepointd::config::from_yaml(&self.yaml(defaults, apps)).expect("test config is valid")
    }

    fn posts(&self) -> usize {
        self.cmf
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count()
    }
}

fn name_of(savepoint: &Value) -> &str {
    savepoint["metadata"]["name"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_takes_savepoints_of_applications_and_statements_by_name() {
    let w = world(CmfSimOptions::default()).await;
    let c = w.config(
        "  formatType: NATIVE",
        "  - orders\n  - name: enrich-clicks\n    statement: true\n",
    );
    let (text, ok) = once(&c, &[]).await;
    assert!(ok, "{text}");
    let triggers = w.cmf.triggers();
    assert_eq!(triggers.len(), 2, "{triggers:#?}");
    let posts: BTreeSet<String> = w
        .cmf
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        posts,
        BTreeSet::from([
            "/cmf/api/v1/environments/prod/applications/orders/savepoints".to_owned(),
            "/cmf/api/v1/environments/prod/statements/enrich-clicks/savepoints".to_owned(),
        ]),
        "one POST each, under the application and under the statement"
    );
    for t in &triggers {
        let app = annotation(t, "savepointd.io/application");
        let slot = annotation(t, "savepointd.io/slot");
        assert!(
            name_of(t).starts_with(&format!("{app}-")) && name_of(t).ends_with("-1"),
            "a name readable as application and attempt: {}",
            name_of(t)
        );
        let compact = slot
            .replace(['-', ':'], "")
            .replace('T', "-")
            .replace('Z', "");
        assert!(name_of(t).contains(&compact), "{} holds {slot}", name_of(t));
        assert_eq!(
            t["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "savepointd"
        );
        assert_eq!(annotation(t, "savepointd.io/managed-by"), "savepointd");
        assert_eq!(
            t["spec"]["backoffLimit"], 0,
            "CMF's default retries for ever"
        );
        assert_eq!(t["spec"]["formatType"], "NATIVE");
        assert!(
            text.contains(name_of(t)),
            "the run names its savepoint: {text}"
        );
    }
    assert!(
        w.cmf
            .requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "every request carries the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_the_post_is_adopted_never_duplicated() {
    let w = world(CmfSimOptions::default()).await;
    let c = w.config("", "  - orders\n");
    w.cmf.network(|n| n.next(Some("POST"), 1, Fault::LoseAfter));
    let (text, ok) = once(&c, &["orders"]).await;
    assert!(ok, "{text}");
    let lost: Vec<_> = w.cmf.requests().into_iter().filter(|r| r.lost).collect();
    assert_eq!(lost.len(), 1, "the fault was met");
    assert_eq!((lost[0].method.as_str(), lost[0].status), ("POST", 201));
    assert_eq!(w.cmf.triggers().len(), 1, "one savepoint for the slot");
    assert_eq!(
        w.posts(),
        1,
        "a POST that may have taken effect is not resent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_of_one_slot_meet_at_the_name_and_the_409_is_adopted() {
    let w = world(CmfSimOptions {
        complete_after: Duration::from_millis(600),
        ..Default::default()
    })
    .await;
    // One attempt: the run that meets the 409 has the slot's savepoint to adopt, not a retry to spend.
    let yaml = w
        .yaml("", "  - name: orders\n    retry: { maxAttempts: 1 }\n")
        .replace("requestTimeout: 2s", "requestTimeout: 20s");
    let c = savepointd::config::from_yaml(&yaml).unwrap();
    // Two `once` of one slot at the same moment (a CronJob's Job retried beside the daemon): both read
    // an empty history, both POST the same name.
    // CMF takes 4 s (within the request timeout) to act on a POST: the second run reads the records
    // before the first POST took effect, even when it starts late on a busy machine.
    w.cmf
        .network(|n| n.handling_delay = Some(("POST".into(), Duration::from_secs(4))));
    let (a, b) = tokio::join!(once(&c, &["orders"]), once(&c, &["orders"]));
    assert!(
        a.1 && b.1,
        "both runs end with the slot's savepoint:\n{}\n{}",
        a.0,
        b.0
    );
    assert_eq!(w.cmf.triggers().len(), 1, "{:#?}", w.cmf.triggers());
    // In the order CMF handled them, which need not be the order they arrived in.
    let mut statuses: Vec<u16> = w
        .cmf
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [201, 409],
        "the second POST met the first one's name"
    );
    let name = name_of(&w.cmf.triggers()[0]).to_owned();
    assert!(
        a.0.contains(&name) && b.0.contains(&name),
        "{}\n{}",
        a.0,
        b.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_by_something_else_costs_an_attempt_not_a_duplicate() {
    let w = world(CmfSimOptions::default()).await;
    let c = w.config("", "  - orders\n");
    // The name of attempt 1 of the current slot, held by a savepoint of another parent (names are
    // unique across the environment): a 409 that is not the slot's savepoint.
    let slot = {
        let now = Utc::now();
        now - TimeDelta::seconds(now.timestamp() % 3600)
    };
    let name = savepointd::platform::cmf::savepoint_name(
        savepointd::platform::cmf::Kind::Application,
        "orders",
        slot,
        1,
    );
    w.cmf
        .seed_savepoint("applications/payments", json!({"metadata": {"name": name}}));
    let (text, ok) = once(&c, &["orders"]).await;
    assert!(ok, "{text}");
    let created: Vec<String> = w
        .cmf
        .triggers()
        .iter()
        .map(|t| name_of(t).to_owned())
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(
        created[0].ends_with("-2"),
        "the next attempt's name: {created:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_savepoint_carries_cmfs_error_and_is_retried_under_a_new_name() {
    let w = world(CmfSimOptions::default()).await;
    w.cmf.fail_savepoints_of(
        "applications/payments",
        "Checkpoint Coordinator is suspending.",
    );
    let c = w.config("", "  - payments\n");
    let (text, ok) = once(&c, &["payments"]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("Checkpoint Coordinator is suspending."),
        "{text}"
    );
    let names: Vec<String> = w
        .cmf
        .triggers()
        .iter()
        .map(|t| name_of(t).to_owned())
        .collect();
    assert_eq!(names.len(), 2, "maxAttempts 2: {names:?}");
    assert!(
        names[0].ends_with("-1") && names[1].ends_with("-2"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_does_not_run_is_skipped_and_one_that_stops_abandons_its_savepoint() {
    let w = world(CmfSimOptions::default()).await;
    w.cmf.add_application("suspended", "SUSPENDED");
    let c = w.config("", "  - suspended\n  - orders\n");
    let (text, ok) = once(&c, &["suspended"]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("SUSPENDED"),
        "CMF's state in the message: {text}"
    );
    assert_eq!(w.posts(), 0);

    // The job stops while its savepoint is in flight: CMF abandons it; the retry finds it not running.
    w.cmf.hold_savepoints_of("applications/orders");
    let run = tokio::spawn({
        let c = c.clone();
        async move { once(&c, &["orders"]).await }
    });
    support::eventually(Duration::from_secs(10), || async {
        (!w.cmf.triggers().is_empty()).then_some(())
    })
    .await
    .expect("the savepoint was triggered");
    w.cmf.set_job_state("applications/orders", "SUSPENDED");
    let (text, ok) = run.await.unwrap();
    assert!(!ok, "{text}");
    assert!(text.contains("ABANDONED"), "{text}");
    let states: BTreeSet<String> = w
        .cmf
        .savepoints()
        .iter()
        .map(|s| s["status"]["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, BTreeSet::from(["ABANDONED".to_owned()]));
}

/// A completed savepoint of `orders` made by savepointd for a slot `hours` ago.
fn managed(hours: i64, state: &str) -> Value {
    let at = Utc::now() - TimeDelta::hours(hours);
    json!({
        "metadata": {
            "name": format!("orders-old-{hours}"),
            "creationTimestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "annotations": {"savepointd.io/managed-by": "savepointd", "savepointd.io/application": "orders",
                "savepointd.io/slot": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}
        },
        "status": {"state": state, "path": format!("s3://cmf/orders/sp-{hours}")}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_reads_every_page_and_deletes_only_what_the_rules_allow() {
    let w = world(CmfSimOptions {
        max_page_size: 3,
        ..Default::default()
    })
    .await;
    let parent = "applications/orders";
    for hours in 1..=10 {
        w.cmf.seed_savepoint(parent, managed(hours, "COMPLETED"));
    }
    w.cmf.seed_savepoint(parent, managed(11, "FAILED"));
    w.cmf.seed_savepoint(parent, managed(12, "ABANDONED"));
    // Pinned, foreign (no savepointd annotation), and in flight: none is deleted.
    let mut pinned = managed(13, "COMPLETED");
    pinned["spec"] = json!({"pinned": true});
    w.cmf.seed_savepoint(parent, pinned);
    let mut foreign = managed(14, "COMPLETED");
    foreign["metadata"]["annotations"] = json!({});
    w.cmf.seed_savepoint(parent, foreign);
    w.cmf.seed_savepoint(parent, managed(15, "IN_PROGRESS"));
    let c = w.config("  retention: { keepLast: 3 }", "  - orders\n");
    let (text, ok) = prune(&c).await;
    assert!(ok, "{text}");
    let deleted: BTreeSet<String> = w
        .cmf
        .deletions()
        .iter()
        .map(|d| d.name().to_owned())
        .collect();
    let expected: BTreeSet<String> = (4..=12).map(|h| format!("orders-old-{h}")).collect();
    assert_eq!(deleted, expected, "{text}");
    assert!(
        w.cmf.deletions().iter().all(|d| !d.forced),
        "never ?force=true"
    );
    let pages: BTreeSet<String> = w
        .cmf
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/savepoints"))
        .filter_map(|r| r.param("page"))
        .collect();
    assert!(
        pages.len() >= 6,
        "15 savepoints at 3 a page and an empty page: {pages:?}"
    );
    let left: BTreeSet<String> = w
        .cmf
        .savepoints()
        .iter()
        .map(|s| name_of(s).to_owned())
        .collect();
    for kept in [
        "orders-old-1",
        "orders-old-3",
        "orders-old-13",
        "orders-old-14",
        "orders-old-15",
    ] {
        assert!(left.contains(kept), "{kept} kept: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_while_the_job_is_down_is_pending_not_failed_and_never_sent_again() {
    let w = world(CmfSimOptions {
        delete_after: Duration::from_millis(800),
        ..Default::default()
    })
    .await;
    let parent = "applications/orders";
    for hours in 1..=4 {
        w.cmf.seed_savepoint(parent, managed(hours, "COMPLETED"));
    }
    // One permit: the deletions go one after another, and the job stops while the first (oldest) is
    // under way.
    let yaml = w
        .yaml("  retention: { keepLast: 1 }", "  - orders\n")
        .replace(
            "requestTimeout: 2s",
            "requestTimeout: 2s\n    maxConcurrent: 1",
        );
    let c = savepointd::config::from_yaml(&yaml).unwrap();
    let prune_run = tokio::spawn({
        let c = c.clone();
        async move { prune(&c).await }
    });
    support::eventually(Duration::from_secs(10), || async {
        (!w.cmf.deletions().is_empty()).then_some(())
    })
    .await
    .expect("a deletion began");
    w.cmf.set_job_state(parent, "SUSPENDED");
    let (text, ok) = prune_run.await.unwrap();
    assert!(ok, "a pending deletion is not a failure: {text}");
    assert!(text.contains("deletion pending"), "{text}");
    let pending: Vec<String> = w
        .cmf
        .savepoints()
        .iter()
        .filter(|s| s["status"]["pendingDeletion"] == true)
        .map(|s| name_of(s).to_owned())
        .collect();
    assert_eq!(
        pending.len(),
        2,
        "the two deletions after the stop wait: {pending:?}"
    );

    // The job runs again: a prune sees the pending ones as being deleted and leaves them to CMF.
    w.cmf.set_job_state(parent, "RUNNING");
    let deletes_before = w.cmf.deletions().len();
    let (text, ok) = prune(&c).await;
    assert!(ok, "{text}");
    assert_eq!(
        w.cmf.deletions().len(),
        deletes_before,
        "not sent again: {text}"
    );
    support::eventually(Duration::from_secs(10), || async {
        (w.cmf.savepoints().len() == 1).then_some(())
    })
    .await
    .expect("CMF finished the pending deletions once the job ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_cluster_is_retried_for_reads_and_a_503_to_a_post_is_looked_into() {
    let w = world(CmfSimOptions::default()).await;
    let c = w.config("", "  - orders\n");
    // Reads: the first two requests meet 503 and are sent again.
    w.cmf.network(|n| n.fail_next(2, 503));
    // The POST: a 503 without a savepoint made; the records show none, so it was an attempt.
    w.cmf
        .network(|n| n.next(Some("POST"), 1, Fault::Status(503)));
    let (text, ok) = once(&c, &["orders"]).await;
    assert!(ok, "{text}");
    let names: Vec<String> = w
        .cmf
        .triggers()
        .iter()
        .map(|t| name_of(t).to_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with("-2"), "{names:?}");
    let posts: Vec<u16> = w
        .cmf
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    assert_eq!(posts, [503, 201]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate_and_nothing_without_one() {
    let w = world_as_given(CmfSimOptions::default()).await;
    let front = TlsFront::start_mutual(&w.cmf.url).await;
    let (cert, key) = front.client.clone().unwrap();
    let ca = w.dir.path().join("ca.pem");
    std::fs::write(&ca, &front.ca_pem).unwrap();
    std::fs::write(w.dir.path().join("client.pem"), cert).unwrap();
    std::fs::write(w.dir.path().join("client.key"), key).unwrap();
    let tls = |client: bool| {
        let mut tls = format!("caFile: {}", ca.display());
        if client {
            tls.push_str(&format!(
                ", certFile: {}, keyFile: {}",
                w.dir.path().join("client.pem").display(),
                w.dir.path().join("client.key").display()
            ));
        }
        let yaml = w.yaml_with(
            &format!("url: {}\n    tls: {{ {tls} }}", front.url),
            "",
            "  - orders\n",
        );
        savepointd::config::from_yaml(&yaml).expect("valid")
    };
    let (text, ok) = once(&tls(false), &["orders"]).await;
    assert!(!ok, "{text}");
    assert_eq!(w.posts(), 0, "{text}");
    let (text, ok) = once(&tls(true), &["orders"]).await;
    assert!(ok, "{text}");
    assert_eq!(w.cmf.triggers().len(), 1);
    assert!(savepointd::config::check_files(&tls(true)).is_ok());
    std::fs::write(w.dir.path().join("client.key"), "not a key").unwrap();
    let err = savepointd::config::check_files(&tls(true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls.certFile"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmfs_own_schedule_on_an_application_is_pointed_out() {
    let w = world(CmfSimOptions::default()).await;
    w.cmf.set_own_schedule(
        "applications/orders",
        json!({"cronExpression": "0 0 */6 * * *", "paused": false}),
    );
    let c = w.config("", "  - orders\n  - payments\n");
    let (text, ok) = commands::resolve(&c, "orders").await.unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains("CMF's own savepoint schedule is active"),
        "{text}"
    );
    let (text, _) = commands::resolve(&c, "payments").await.unwrap();
    assert!(!text.contains("warning"), "{text}");
    let (json_text, _) = commands::status(&c, Output::Json).await.unwrap();
    let statuses: Value = serde_json::from_str(&json_text).unwrap();
    assert!(
        statuses[0]["warning"]
            .as_str()
            .unwrap()
            .contains("0 0 */6 * * *")
    );
    assert!(statuses[1].get("warning").is_none(), "{json_text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_applications_and_statements_saved_on_a_seconds_schedule() {
    let w = world(CmfSimOptions {
        complete_after: Duration::from_millis(150),
        ..Default::default()
    })
    .await;
    w.cmf.add_application("clicks", "RUNNING");
    let yaml = w.yaml(
        "  schedule: \"* * * * * *\"\n  retention: { keepLast: 2 }",
        "  - orders\n  - payments\n  - clicks\n  - name: enrich-clicks\n    statement: true\n",
    );
    let daemon = Daemon::start(&yaml).await;
    support::eventually(Duration::from_secs(20), || async {
        let t = support::fixture::triggers_by_annotation(&w.cmf.triggers());
        let pruned: BTreeSet<String> = w.cmf.deletions().iter().map(|d| d.parent.clone()).collect();
        (t.len() == 4 && t.values().all(|v| v.len() >= 3) && pruned.len() == 4).then_some(())
    })
    .await
    .expect("every application and the statement got three savepoints, and the oldest pruned");
    let success = daemon
        .metric("savepointd_savepoint_success_total{application=\"enrich-clicks\",platform=\"confluent\"}")
        .await
        .unwrap_or_default();
    daemon.stop().await;
    assert!(success >= 2.0, "{success}");
    let triggers = w.cmf.triggers();
    let slots: BTreeSet<(String, String)> = triggers
        .iter()
        .map(|t| {
            (
                annotation(t, "savepointd.io/application").to_owned(),
                annotation(t, "savepointd.io/slot").to_owned(),
            )
        })
        .collect();
    assert_eq!(slots.len(), triggers.len(), "one savepoint per slot");
    for d in w.cmf.deletions() {
        assert!(
            d.state != "COMPLETED" || d.newer_completed >= 2,
            "keepLast 2 keeps {}",
            d.name()
        );
        assert!(!d.forced);
    }
}
