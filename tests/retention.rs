//! Retention executed against the VVP simulator, seeded with a history that exercises every rule:
//! asserts exactly which DELETE requests were made, that `--dry-run` announces exactly those and deletes
//! nothing, that a refusal (409) is counted and the rest go on, and that retention runs after every
//! successful savepoint.

mod support;

use tokio_util::sync::CancellationToken;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use support::eventually;
use support::fixture::{APPS, Daemon, Fixture, fixture};
use support::vvp_sim::VvpSimOptions;

use savepointd::commands::{self, Output};

const DEPLOYMENT: &str = APPS[1].1;
const APP: &str = "payments";

/// One savepoint resource of the payments deployment, `days` old.
fn savepoint(id: &str, days: i64, state: &str, origin: &str, kind: &str, managed: bool) -> Value {
    let created = Utc::now() - chrono::Duration::days(days);
    let mut annotations = json!({});
    if managed {
        annotations = json!({
            "savepointd.io/managed-by": "savepointd",
            "savepointd.io/application": APP,
            "savepointd.io/slot": created.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        });
    }
    json!({
        "apiVersion": "v1", "kind": "Savepoint",
        "metadata": {"id": id, "namespace": "default", "createdAt": created.to_rfc3339(),
            "deploymentId": DEPLOYMENT, "origin": origin, "type": kind, "annotations": annotations},
        "spec": {"savepointLocation": format!("s3://flink/savepoints/{id}")},
        "status": {"state": state}
    })
}

/// Every rule of DESIGN.md §5 in one history (ids say what each one is for).
fn seed(f: &Fixture) {
    let seeds = [
        savepoint("old-1", 10, "COMPLETED", "USER_REQUEST", "FULL", true),
        savepoint("old-2", 9, "COMPLETED", "USER_REQUEST", "FULL", true),
        savepoint(
            "shared-managed",
            8,
            "COMPLETED",
            "USER_REQUEST",
            "FULL",
            true,
        ),
        savepoint(
            "incremental",
            7,
            "COMPLETED",
            "USER_REQUEST",
            "INCREMENTAL",
            true,
        ),
        savepoint(
            "retained-checkpoint",
            7,
            "COMPLETED",
            "RETAINED_CHECKPOINT",
            "FULL",
            false,
        ),
        savepoint("user-made", 7, "COMPLETED", "USER_REQUEST", "FULL", false),
        savepoint("failed", 6, "FAILED", "USER_REQUEST", "FULL", true),
        savepoint("refused", 5, "COMPLETED", "USER_REQUEST", "FULL", true),
        savepoint(
            "pending-deletion",
            5,
            "PENDING_DELETION",
            "USER_REQUEST",
            "FULL",
            true,
        ),
        savepoint("in-flight", 0, "STARTED", "USER_REQUEST", "FULL", false),
        savepoint("newer", 2, "COMPLETED", "USER_REQUEST", "FULL", true),
        savepoint("newest", 1, "COMPLETED", "USER_REQUEST", "FULL", true),
    ];
    for s in seeds {
        f.vvp.seed_savepoint(s);
    }
    // A COPIED registration (kept: out of scope) pointing at shared-managed's data.
    let mut copy = savepoint("shared-copy", 8, "COMPLETED", "COPIED", "UNKNOWN", false);
    copy["spec"]["savepointLocation"] = json!("s3://flink/savepoints/shared-managed");
    f.vvp.seed_savepoint(copy);
    f.vvp
        .deny_delete("refused", "Savepoint is referenced by deployment payments");
}

fn deletes(f: &Fixture) -> BTreeSet<String> {
    f.vvp
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path.rsplit('/').next().unwrap().to_owned())
        .collect()
}

/// Savepoints savepointd made for the payments application, completed `days` ago each.
fn seed_completed(f: &Fixture, savepoints: &[(&str, i64)]) {
    for (id, days) in savepoints {
        f.vvp.seed_savepoint(savepoint(
            id,
            *days,
            "COMPLETED",
            "USER_REQUEST",
            "FULL",
            true,
        ));
    }
}

/// The ids of the savepoints the simulator still holds, in its order.
fn savepoint_ids(f: &Fixture) -> Vec<String> {
    f.vvp
        .savepoints()
        .iter()
        .map(|s| s["metadata"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn config(f: &Fixture, retention: &str) -> savepointd::config::Config {
    savepointd::config::from_yaml(&f.config(
        "",
        &format!("  - name: {APP}\n    retention: {retention}\n"),
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_exactly_what_the_rules_allow_and_dry_run_says_so_first() {
    let f = fixture(VvpSimOptions::default()).await;
    seed(&f);
    let c = config(&f, "{ keepLast: 2 }");
    let names = [APP.to_owned()];

    let (dry, ok) = commands::prune(&c, &names, true, Output::Json, &CancellationToken::new())
        .await
        .unwrap();
    assert!(ok, "{dry}");
    assert!(deletes(&f).is_empty(), "a dry run deletes nothing");
    let reports: Value = serde_json::from_str(&dry).unwrap();
    let announced: BTreeSet<String> = reports[0]["plan"]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["action"] == "delete")
        .map(|d| d["savepoint"]["id"].as_str().unwrap().to_owned())
        .collect();
    let expected = ids(&["old-1", "old-2", "failed", "refused"]);
    assert_eq!(announced, expected, "{dry}");

    let (table, ok) = commands::prune(&c, &names, false, Output::Table, &CancellationToken::new())
        .await
        .unwrap();
    assert!(!ok, "the refused deletion makes the run fail: {table}");
    assert_eq!(
        deletes(&f),
        expected,
        "exactly the announced deletions were asked for"
    );
    for needle in [
        "Savepoint is referenced by deployment payments",
        "kept: incremental",
        "kept: retained checkpoint",
        "kept: outside scope managed",
        "kept: in flight",
        "kept: deletion already under way",
        "kept: shares its location",
        "kept: newest completed",
        "deleted",
        "FULL / USER_REQUEST",
        "INCREMENTAL / USER_REQUEST",
    ] {
        assert!(table.contains(needle), "{needle} missing:\n{table}");
    }
    let left: BTreeSet<String> = f
        .vvp
        .savepoints()
        .iter()
        .map(|s| s["metadata"]["id"].as_str().unwrap().to_owned())
        .collect();
    for gone in ["old-1", "old-2", "failed"] {
        assert!(!left.contains(gone), "{gone} was deleted");
    }
    for kept in [
        "refused",
        "shared-managed",
        "shared-copy",
        "newest",
        "newer",
        "incremental",
    ] {
        assert!(left.contains(kept), "{kept} is still there");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_keep_rule_nothing_is_deleted() {
    let f = fixture(VvpSimOptions::default()).await;
    seed(&f);
    let c = config(&f, "{ minKeep: 1 }");
    let (text, ok) = commands::prune(&c, &[], false, Output::Table, &CancellationToken::new())
        .await
        .unwrap();
    assert!(ok);
    assert!(text.contains("kept: retention off"), "{text}");
    assert!(deletes(&f).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_shared_with_another_deployment_is_never_deleted() {
    let f = fixture(VvpSimOptions::default()).await;
    f.vvp.seed_savepoint(savepoint(
        "mine-old",
        3,
        "COMPLETED",
        "USER_REQUEST",
        "FULL",
        true,
    ));
    f.vvp.seed_savepoint(savepoint(
        "mine-new",
        1,
        "COMPLETED",
        "USER_REQUEST",
        "FULL",
        true,
    ));
    // Another deployment registered (COPIED) the same data.
    let mut foreign = savepoint("theirs", 3, "COMPLETED", "COPIED", "UNKNOWN", false);
    foreign["metadata"]["deploymentId"] = json!(APPS[2].1);
    foreign["spec"]["savepointLocation"] = json!("s3://flink/savepoints/mine-old");
    f.vvp.seed_savepoint(foreign);
    let c = config(&f, "{ keepLast: 1 }");
    let (text, ok) = commands::prune(&c, &[], false, Output::Table, &CancellationToken::new())
        .await
        .unwrap();
    assert!(!ok);
    assert!(text.contains("shared with savepoint theirs"), "{text}");
    assert!(deletes(&f).is_empty(), "no DELETE was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_sharing_a_location_are_deleted_one_after_the_other() {
    // VVP deletes every resource of a location together: the second DELETE, sent while the first was
    // under way, would meet a resource already in deletion (409) and count as a failure.
    let f = fixture(VvpSimOptions {
        delete_after: Duration::from_millis(600),
        ..Default::default()
    })
    .await;
    seed_completed(&f, &[("pair-a", 4), ("newest", 1)]);
    let mut twin = savepoint("pair-b", 3, "COMPLETED", "USER_REQUEST", "FULL", true);
    twin["spec"]["savepointLocation"] = json!("s3://flink/savepoints/pair-a");
    f.vvp.seed_savepoint(twin);
    let c = config(&f, "{ keepLast: 1 }");
    let (text, ok) = commands::prune(&c, &[], false, Output::Table, &CancellationToken::new())
        .await
        .unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("2 deleted, 0 not deleted"), "{text}");
    assert_eq!(savepoint_ids(&f), ["newest"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_prunes_after_every_successful_savepoint_and_counts_refusals() {
    let f = fixture(VvpSimOptions::default()).await;
    f.vvp.seed_savepoint(savepoint(
        "refused",
        5,
        "COMPLETED",
        "USER_REQUEST",
        "FULL",
        true,
    ));
    f.vvp.deny_delete("refused", "Savepoint is referenced");
    let yaml = f.config(
        "",
        &format!(
            "  - name: {APP}\n    schedule: \"*/2 * * * * *\"\n    retention: {{ keepLast: 1 }}\n"
        ),
    );
    let daemon = Daemon::start(&yaml).await;
    let series = |name: &str, extra: &str| {
        format!("savepointd_{name}{{application=\"{APP}\",platform=\"vvp\"{extra}}}")
    };
    let pruned = eventually(Duration::from_secs(20), || async {
        let deleted = daemon
            .metric(&series("retention_deleted_total", ""))
            .await?;
        (deleted >= 1.0).then_some(())
    })
    .await;
    let metrics = daemon.get("/metrics").await.1;
    daemon.stop().await;
    assert!(pruned.is_some(), "{metrics}");
    assert!(
        metrics.contains(&series(
            "retention_delete_failures_total",
            ",reason=\"conflict\""
        )),
        "{metrics}"
    );
    // keepLast 1: only the newest savepoint savepointd took, and the refused one, remain completed.
    assert!(
        metrics.contains(&format!("{} 2", series("retained_savepoints", ""))),
        "{metrics}"
    );
    let completed = f
        .vvp
        .savepoints()
        .iter()
        .filter(|s| s["status"]["state"] == "COMPLETED")
        .count();
    assert!(
        completed <= 3,
        "old savepoints were pruned as new ones came: {completed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_whose_answer_was_lost_is_a_deletion_not_a_failure() {
    let f = fixture(VvpSimOptions::default()).await;
    seed_completed(&f, &[("old", 3), ("newer", 2), ("newest", 1)]);
    let c = config(&f, "{ keepLast: 2 }");
    // VVP accepts the DELETE, then the connection resets before its answer arrives.
    f.vvp.lose_next_answers_to("DELETE", 1);
    let (text, ok) = commands::prune(&c, &[], false, Output::Table, &CancellationToken::new())
        .await
        .unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("1 deleted, 0 not deleted"), "{text}");
    let sent: Vec<_> = f
        .vvp
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(sent.len(), 1, "not sent again into a 409: {sent:#?}");
    assert!(sent[0].lost);
    let left = savepoint_ids(&f);
    assert_eq!(left, ["newer", "newest"]);
}

/// A prune of three old savepoints (each deletion followed for 600 ms) under `maxConcurrent`, with
/// SIGTERM as soon as the first DELETE arrives: the report, the savepoints deleted, those left, and how
/// many times the namespace's savepoints were listed.
async fn prune_stopped_at_the_first_delete(
    max_concurrent: usize,
) -> (String, bool, BTreeSet<String>, Vec<String>, usize) {
    let f = fixture(VvpSimOptions {
        delete_after: Duration::from_millis(600),
        ..Default::default()
    })
    .await;
    seed_completed(&f, &[("a", 5), ("b", 4), ("c", 3), ("newest", 1)]);
    let yaml = f
        .config(
            "",
            &format!("  - name: {APP}\n    retention: {{ keepLast: 1 }}\n"),
        )
        .replace(
            "maxConcurrent: 8",
            &format!("maxConcurrent: {max_concurrent}"),
        );
    let c = savepointd::config::from_yaml(&yaml).unwrap();
    let shutdown = CancellationToken::new();
    let stop = {
        let (shutdown, vvp) = (shutdown.clone(), &f.vvp);
        async move {
            // SIGTERM while the first deletion is being followed.
            eventually(Duration::from_secs(10), || async {
                vvp.requests()
                    .iter()
                    .any(|r| r.method == "DELETE")
                    .then_some(())
            })
            .await;
            shutdown.cancel();
        }
    };
    let ((text, ok), ()) = tokio::join!(
        async {
            commands::prune(&c, &[], false, Output::Table, &shutdown)
                .await
                .unwrap()
        },
        stop
    );
    let namespace_lists = f
        .vvp
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/savepoints") && r.query.is_none())
        .count();
    (text, ok, deletes(&f), savepoint_ids(&f), namespace_lists)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_stops_between_deletions_when_shutdown_begins() {
    // One permit: the deletions go one after another, and shutdown comes between them.
    let (text, ok, deleted, left, _) = prune_stopped_at_the_first_delete(1).await;
    assert!(!ok, "an interrupted prune is not ok: {text}");
    assert!(
        text.contains("1 deleted, 0 not deleted, 2 left for the next run (shutting down)"),
        "{text}"
    );
    assert_eq!(
        deleted,
        ids(&["a"]),
        "the deletion under way was finished, no other started"
    );
    assert_eq!(left, ["b", "c", "newest"], "a is gone, whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deletions_of_a_prune_run_together_within_max_concurrent() {
    // Eight permits: the three deletions were all under way when shutdown came, and each was followed
    // to its end; a slow deletion held back none of the others.
    let (text, ok, deleted, left, namespace_lists) = prune_stopped_at_the_first_delete(8).await;
    assert!(ok, "{text}");
    assert!(text.contains("3 deleted, 0 not deleted"), "{text}");
    assert_eq!(deleted, ids(&["a", "b", "c"]));
    assert_eq!(left, ["newest"]);
    // The location check before each deletion: one look at the namespace's savepoints for all three.
    assert_eq!(namespace_lists, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_prune_never_holds_back_the_next_slot() {
    // Every deletion takes 4 s on the platform; the schedule fires every second.
    let f = fixture(VvpSimOptions {
        delete_after: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    seed_completed(&f, &[("old-1", 3), ("old-2", 2)]);
    let yaml = f.config(
        "",
        &format!(
            "  - name: {APP}\n    schedule: \"* * * * * *\"\n    retention: {{ keepLast: 1 }}\n"
        ),
    );
    let daemon = Daemon::start(&yaml).await;
    let skipped = format!(
        "savepointd_runs_skipped_total{{application=\"{APP}\",platform=\"vvp\",reason=\"in_progress\"}}"
    );
    // While the first prune follows its deletions (8 s and more), savepoints go on every second.
    let during = eventually(Duration::from_secs(30), || async {
        let deleting = !f.vvp.deletions().is_empty();
        let triggered = f.vvp.triggers().len();
        (deleting && triggered >= 5).then_some(triggered)
    })
    .await;
    let in_progress = daemon.metric(&skipped).await.unwrap_or_default();
    daemon.stop().await;
    assert!(during.is_some(), "slots went on while the prune ran");
    assert!(
        in_progress <= 1.0,
        "{in_progress} slots were skipped as in progress behind a prune"
    );
}
