//! savepointd against a real Apache Flink 2.3.0 session cluster (started by `scripts/flink_harness.py`,
//! which `scripts/test.sh` installs first): `once`, `resolve`, `status`, the daemon on a seconds-level
//! schedule, a savepoint that times out in Flink, the idempotent trigger, listing and disposal.
//!
//! One cluster serves every case, so the cases run in sequence inside one test: they share its four
//! task slots, and each cancels the jobs it no longer needs. Without Java the test is skipped, except
//! under CI, where that fails it.

mod support;

use tokio_util::sync::CancellationToken;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Url;
use savepointd::commands::{self, Output};
use savepointd::config::{Config, FormatType};
use savepointd::metrics::Metrics;
use savepointd::platform::{self, Platform, Savepoint, State, Target, TriggerRequest};
use support::eventually;
use support::fixture::Daemon;
use support::flink::{Cluster, Job, TRIGGER_ID_MEMORY_SECS, java_or_skip};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepointd_against_a_real_flink_cluster() {
    if !java_or_skip() {
        return;
    }
    let suite = Instant::now();
    let cluster = Cluster::start().await;
    println!("cluster ready after {:.1?}", suite.elapsed());
    let w = World {
        cluster,
        dir: tempfile::tempdir().unwrap(),
    };
    let orders = w.cluster.submit("orders", Job::default()).await;

    let t = Instant::now();
    resolve_prints_the_job_id(&w, &orders).await;
    let (savepoint, slot_done) = once_writes_a_savepoint_directory(&w).await;
    a_job_restarted_from_the_savepoint_reports_it(&w, &savepoint).await;
    applications_without_a_running_job_are_skipped(&w).await;
    the_same_slot_triggered_twice_makes_one_savepoint(&w).await;
    a_restart_after_flink_forgot_the_trigger_id_makes_no_second_savepoint(&w, &orders, slot_done)
        .await;
    list_shows_the_savepoints_and_delete_disposes_only_inside_the_app_dir(&w).await;
    println!("cases h, a, b, c, e, i, g: {:.1?}", t.elapsed());

    let t = Instant::now();
    the_savepoint_a_running_job_was_restored_from_survives_keep_last_one(&w).await;
    println!("case j: {:.1?}", t.elapsed());

    let t = Instant::now();
    let payments = w.cluster.submit("payments", Job::default()).await;
    the_daemon_takes_savepoints_of_two_jobs_on_a_seconds_schedule(&w).await;
    println!("case f: {:.1?}", t.elapsed());

    let t = Instant::now();
    four_savepoints_with_keep_last_two_leave_the_two_newest_directories(&w).await;
    println!("retention: {:.1?}", t.elapsed());

    let t = Instant::now();
    a_savepoint_that_times_out_is_a_counted_failure_and_the_daemon_goes_on(&w).await;
    println!("case d: {:.1?}", t.elapsed());

    for job in [orders, payments] {
        w.cluster.cancel(&job).await;
    }
    println!("suite wall time: {:.1?}", suite.elapsed());
}

/// The cluster, and a directory whose `sp/` is the platform's `targetDirectory`.
struct World {
    cluster: Cluster,
    dir: tempfile::TempDir,
}

impl World {
    fn root(&self) -> PathBuf {
        self.dir.path().join("sp")
    }

    fn yaml(&self, apps: &str) -> String {
        format!(
            r#"
server: {{ listen: "127.0.0.1:0", shutdownGrace: 5s }}
defaults:
  # `once` runs the latest slot within startingDeadline: hourly slots are always due.
  schedule: "@every 1h"
  startingDeadline: 2h
  timeout: 30s
  retry: {{ maxAttempts: 2, backoff: 1s }}
platforms:
  - name: flink
    kind: flink
    url: {url}
    requestTimeout: 10s
    targetDirectory: file://{root}
applications:
{apps}"#,
            apps = if apps.is_empty() { "  []\n" } else { apps },
            url = self.cluster.rest_url,
            root = self.root().display(),
        )
    }

    fn config(&self, apps: &[&str]) -> Config {
        let apps: String = apps.iter().map(|a| format!("  - name: {a}\n")).collect();
        savepointd::config::from_yaml(&self.yaml(&apps)).expect("test config is valid")
    }

    /// The completed savepoint directories of an application: `savepoint-*` with a `_metadata`, in its
    /// slot directories (`slot-*`) or directly in the application directory.
    fn savepoints(&self, app: &str) -> BTreeSet<PathBuf> {
        let named = |p: &Path, prefix: &str| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        };
        let children = |dir: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .map(|entries| entries.map(|e| e.unwrap().path()).collect())
                .unwrap_or_default()
        };
        let app_dir = self.root().join(app);
        let mut candidates = children(&app_dir);
        for slot in children(&app_dir).iter().filter(|p| named(p, "slot-")) {
            candidates.extend(children(slot));
        }
        candidates
            .into_iter()
            .filter(|p| named(p, "savepoint-") && p.join("_metadata").is_file())
            .collect()
    }

    /// The platform client, as the daemon builds it.
    fn platform(&self) -> Arc<dyn Platform> {
        let shutdown = tokio_util::sync::CancellationToken::new();
        platform::connect(
            &self.config(&["orders"]).platforms[0],
            &Metrics::new(),
            None,
            &shutdown,
        )
        .expect("platform connects")
        .client
    }
}

fn file_url(path: &Path) -> String {
    Url::from_file_path(path).unwrap().to_string()
}

fn path_of(location: &str) -> PathBuf {
    Url::parse(location)
        .unwrap_or_else(|e| panic!("{location}: {e}"))
        .to_file_path()
        .unwrap()
}

async fn once(config: &Config, apps: &[&str]) -> (String, bool) {
    let names: Vec<String> = apps.iter().map(|a| a.to_string()).collect();
    commands::once(config, &names, false, true, &CancellationToken::new())
        .await
        .expect("once runs")
}

// ---------------------------------------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------------------------------------

/// h. `resolve` names the running job's id and where it came from.
async fn resolve_prints_the_job_id(w: &World, job: &str) {
    let (text, ok) = commands::resolve(&w.config(&["orders"]), "orders")
        .await
        .unwrap();
    assert!(ok, "{text}");
    assert!(text.contains(job), "{text}");
    assert!(text.contains("GET /jobs/overview"), "{text}");
}

/// a. `once` writes `<targetDirectory>/<app>/slot-<slot>/savepoint-*/_metadata` for the application's
/// due slot and prints where; returns the directory and when `once` finished.
async fn once_writes_a_savepoint_directory(w: &World) -> (PathBuf, Instant) {
    assert!(w.savepoints("orders").is_empty());
    let (text, ok) = once(&w.config(&["orders"]), &["orders"]).await;
    let finished = Instant::now();
    assert!(ok, "{text}");
    assert!(text.contains("completed"), "{text}");
    let dirs = w.savepoints("orders");
    assert_eq!(dirs.len(), 1, "one savepoint directory: {dirs:?}");
    let dir = dirs.into_iter().next().unwrap();
    assert!(dir.join("_metadata").metadata().unwrap().len() > 0);
    let slot = hourly_slot();
    assert_eq!(
        dir.parent().unwrap(),
        w.root()
            .join("orders")
            .join(platform::flink::slot_dir_name(slot)),
        "the slot is in the path"
    );
    assert!(
        text.contains(&file_url(&dir)),
        "the outcome names {}:\n{text}",
        dir.display()
    );
    (dir, finished)
}

/// The slot `once` runs with the tests' `@every 1h` schedule.
fn hourly_slot() -> DateTime<Utc> {
    let now = Utc::now().timestamp();
    DateTime::from_timestamp(now - now.rem_euclid(3600), 0).unwrap()
}

/// i. The JobManager forgets a trigger id after `rest.async.store-duration` (and on failover); the slot
/// is still recognised from its directory, so a later `once` for the same slot (a retried CronJob, a
/// restarted daemon) triggers nothing.
async fn a_restart_after_flink_forgot_the_trigger_id_makes_no_second_savepoint(
    w: &World,
    job: &str,
    slot_done: Instant,
) {
    let slot = hourly_slot();
    let forgotten = slot_done + Duration::from_secs(TRIGGER_ID_MEMORY_SECS + 2);
    tokio::time::sleep_until(forgotten.into()).await;
    let trigger = platform::flink::trigger_id("orders", slot, 1);
    let client = reqwest::Client::new();
    let status = client
        .get(format!(
            "{}/jobs/{job}/savepoints/{trigger}",
            w.cluster.rest_url
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        status, 404,
        "the JobManager has forgotten trigger {trigger}"
    );
    let before = w.savepoints("orders");
    let (text, ok) = once(&w.config(&["orders"]), &["orders"]).await;
    assert!(ok, "{text}");
    assert!(text.contains("already done"), "{text}");
    assert_eq!(
        w.savepoints("orders"),
        before,
        "no second savepoint for the slot"
    );
}

/// j. Rule 8: the savepoint a running job was restored from stays, whatever the policy. A job restored
/// from its application's first savepoint takes two more with keepLast 1: the first stays (the job's
/// NATIVE checkpoints may share its files), the second goes.
async fn the_savepoint_a_running_job_was_restored_from_survives_keep_last_one(w: &World) {
    let first_job = w.cluster.submit("keeper", Job::default()).await;
    let (text, ok) = once(&w.config(&["keeper"]), &["keeper"]).await;
    assert!(ok, "{text}");
    let first: Vec<PathBuf> = w.savepoints("keeper").into_iter().collect();
    assert_eq!(first.len(), 1, "{first:?}");
    w.cluster.cancel(&first_job).await;
    let restored = w
        .cluster
        .submit(
            "keeper",
            Job {
                savepoint: Some(&file_url(&first[0])),
                ..Job::default()
            },
        )
        .await;
    let config =
        savepointd::config::from_yaml(&w.yaml(
            "  - name: keeper\n    schedule: \"* * * * * *\"\n    retention: { keepLast: 1 }\n",
        ))
        .unwrap();
    let mut made = Vec::new();
    for _ in 0..2 {
        let before = w.savepoints("keeper");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (text, ok) = once(&config, &["keeper"]).await;
        assert!(ok, "{text}");
        made.extend(w.savepoints("keeper").difference(&before).cloned());
    }
    assert_eq!(made.len(), 2, "{made:?}");
    let left = w.savepoints("keeper");
    let expected: BTreeSet<PathBuf> = [first[0].clone(), made[1].clone()].into();
    assert_eq!(
        left, expected,
        "the restored-from savepoint and the newest stay"
    );
    let (dry, _) = commands::prune(
        &config,
        &["keeper".into()],
        true,
        Output::Table,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(dry.contains("was restored from it"), "{dry}");
    w.cluster.cancel(&restored).await;
}

/// b. A job started from that savepoint says so in its checkpoint statistics.
async fn a_job_restarted_from_the_savepoint_reports_it(w: &World, savepoint: &Path) {
    let job = w
        .cluster
        .submit(
            "orders-restored",
            Job {
                savepoint: Some(&file_url(savepoint)),
                ..Job::default()
            },
        )
        .await;
    let stats = w.cluster.get(&format!("/jobs/{job}/checkpoints")).await;
    let restored = stats["latest"]["restored"]["external_path"]
        .as_str()
        .unwrap_or_else(|| panic!("no latest.restored.external_path: {stats}"));
    assert_eq!(path_of(restored), savepoint);
    w.cluster.cancel(&job).await;
}

/// c. A cancelled job and a job never submitted: skipped as not_running, with the reason, nothing written.
async fn applications_without_a_running_job_are_skipped(w: &World) {
    let (text, ok) = once(
        &w.config(&["orders-restored", "ghost"]),
        &["orders-restored", "ghost"],
    )
    .await;
    assert!(!ok, "an application that does not run is not ok: {text}");
    assert_eq!(text.matches("not_running").count(), 2, "{text}");
    assert!(
        text.contains("is CANCELED"),
        "the cancelled job is named: {text}"
    );
    assert!(text.contains("no Flink job of that name"), "{text}");
    for app in ["orders-restored", "ghost"] {
        assert!(
            !w.root().join(app).exists(),
            "{app}: no savepoint directory"
        );
    }
}

async fn wait_terminal(p: &dyn Platform, target: &Target, id: &str) -> Savepoint {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = p.get(target, id).await.expect("get savepoint");
        if !s.state.is_in_flight() {
            return s;
        }
        assert!(Instant::now() < deadline, "savepoint {id} still {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// e. One (application, slot, attempt) is one trigger id: triggering it again, even after it
/// completed, returns the same request and makes no second savepoint.
async fn the_same_slot_triggered_twice_makes_one_savepoint(w: &World) {
    let p = w.platform();
    let target = p.resolve("orders").await.expect("orders resolves");
    let before = w.savepoints("orders");
    // A slot of its own, far from any slot the other cases use.
    let slot: DateTime<Utc> = "2001-02-03T04:05:06Z".parse().unwrap();
    let request = TriggerRequest {
        application: "orders",
        slot,
        attempt: 1,
        format_type: FormatType::Canonical,
    };
    let first = p.trigger(&target, &request).await.expect("trigger");
    let second = p.trigger(&target, &request).await.expect("trigger again");
    assert_eq!(first.id, second.id);
    assert_eq!(first.state, State::InProgress);
    assert!(first.is_managed_slot("orders", slot));
    let done = wait_terminal(p.as_ref(), &target, &first.id).await;
    assert_eq!(done.state, State::Completed, "{done:?}");
    // Once completed it has the id it has everywhere else (status, prune): its directory's name.
    let dir_name = done.location.as_deref().and_then(|l| l.rsplit('/').next());
    assert_eq!(Some(done.id.as_str()), dir_name, "{done:?}");
    let listed = p.list(&target).await.expect("list");
    assert!(listed.iter().any(|s| s.id == done.id), "{listed:?}");
    let third = p
        .trigger(&target, &request)
        .await
        .expect("trigger once more");
    assert_eq!(third.id, first.id, "a completed trigger is not repeated");
    let again = wait_terminal(p.as_ref(), &target, &third.id).await;
    assert_eq!(again.location, done.location);
    let new: Vec<_> = w
        .savepoints("orders")
        .difference(&before)
        .cloned()
        .collect();
    assert_eq!(new.len(), 1, "exactly one new savepoint directory: {new:?}");
    assert_eq!(Some(file_url(&new[0])), done.location);
}

/// g. `list` shows exactly the completed savepoint directories of the application; `delete` disposes
/// of one through the JobManager, deletes one the JobManager cannot read directly, and refuses
/// whatever lies outside the application's directory.
async fn list_shows_the_savepoints_and_delete_disposes_only_inside_the_app_dir(w: &World) {
    let p = w.platform();
    let target = p.resolve("orders").await.expect("orders resolves");
    let listed = p.list(&target).await.expect("list");
    let completed: Vec<&Savepoint> = listed
        .iter()
        .filter(|s| s.state == State::Completed)
        .collect();
    let on_disk: BTreeSet<String> = w.savepoints("orders").iter().map(|d| file_url(d)).collect();
    let in_list: BTreeSet<String> = completed
        .iter()
        .map(|s| {
            s.location
                .clone()
                .expect("a completed savepoint has a location")
        })
        .collect();
    assert_eq!(in_list, on_disk, "{listed:#?}");
    assert_eq!(completed.len(), on_disk.len(), "no location listed twice");
    assert!(completed.len() >= 2, "a and e made one each");
    for s in &completed {
        let m = s.managed.as_ref().expect("inside the app dir: managed");
        assert_eq!(m.application, "orders");
    }

    // Disposal by the JobManager.
    let oldest = (*completed.iter().min_by_key(|s| s.created_at).unwrap()).clone();
    let dir = path_of(oldest.location.as_deref().unwrap());
    p.delete(&target, &oldest).await.expect("delete");
    assert!(!dir.exists(), "{} is gone", dir.display());
    let listed = p.list(&target).await.expect("list after delete");
    assert!(
        listed.iter().all(|s| s.location != oldest.location),
        "a deleted savepoint is no longer listed: {listed:#?}"
    );

    // Not a savepoint the JobManager can read: deleted through the object store instead.
    let fake = w
        .root()
        .join("orders")
        .join("savepoint-000000-000000000000");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("_metadata"), b"not a savepoint").unwrap();
    std::fs::write(fake.join("state-file"), b"x").unwrap();
    let listed = p.list(&target).await.expect("list");
    let unreadable = listed
        .iter()
        .find(|s| s.location.as_deref() == Some(file_url(&fake).as_str()))
        .unwrap_or_else(|| panic!("the directory is listed: {listed:#?}"))
        .clone();
    p.delete(&target, &unreadable)
        .await
        .expect("fallback delete");
    assert!(!fake.exists(), "deleted without the JobManager");
    assert!(w.root().join("orders").is_dir(), "the app dir itself stays");

    // Refusals: another application's directory, a way out through "..", the app dir itself, and a
    // savepoint without a location.
    let other = w
        .root()
        .join("payments")
        .join("savepoint-111111-111111111111");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("_metadata"), b"someone else's").unwrap();
    let kept = w.savepoints("orders");
    let app_dir = w.root().join("orders");
    for location in [
        file_url(&other),
        format!(
            "{}/../payments/savepoint-111111-111111111111",
            file_url(&app_dir)
        ),
        format!("{}/", file_url(&app_dir)),
        file_url(w.dir.path()),
    ] {
        let mut s = oldest.clone();
        s.location = Some(location.clone());
        let err = p
            .delete(&target, &s)
            .await
            .expect_err(&format!("{location} is refused"));
        assert!(err.to_string().contains("refused"), "{err}");
    }
    let mut s = oldest.clone();
    s.location = None;
    let err = p.delete(&target, &s).await.expect_err("no location");
    assert!(err.to_string().contains("no location"), "{err}");
    assert!(
        other.join("_metadata").is_file(),
        "nothing outside was touched"
    );
    assert_eq!(w.savepoints("orders"), kept, "nothing inside was touched");
    std::fs::remove_dir_all(w.root().join("payments")).unwrap();
}

/// One sample of the daemon's `/metrics`: the series `name` whose labels include `labels`; 0 if absent.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(d: &Daemon) -> String {
    let (status, text) = d.get("/metrics").await;
    assert_eq!(status, 200);
    text
}

fn counter(text: &str, name: &str, app: &str) -> f64 {
    sample(text, &format!("savepointd_{name}"), &[("application", app)])
}

/// f. The daemon on `*/5 * * * * *` takes savepoints of two jobs again and again, one directory each.
async fn the_daemon_takes_savepoints_of_two_jobs_on_a_seconds_schedule(w: &World) {
    let apps = ["orders", "payments"];
    let before: Vec<BTreeSet<PathBuf>> = apps.iter().map(|a| w.savepoints(a)).collect();
    let yaml = w.yaml(
        "  - name: orders\n    schedule: \"*/5 * * * * *\"\n  - name: payments\n    schedule: \"*/5 * * * * *\"\n",
    );
    let daemon = Daemon::start(&yaml).await;
    let enough = eventually(Duration::from_secs(40), || async {
        let m = metrics(&daemon).await;
        apps.iter()
            .all(|a| counter(&m, "savepoint_success_total", a) >= 2.0)
            .then_some(())
    })
    .await;
    let m = metrics(&daemon).await;
    assert!(enough.is_some(), "two savepoints each within 40 s:\n{m}");
    // Count the directories between two identical readings with nothing in flight, so that no
    // savepoint can have started or finished while they were counted.
    let counted = eventually(Duration::from_secs(20), || async {
        let first = metrics(&daemon).await;
        let dirs: Vec<BTreeSet<PathBuf>> = apps.iter().map(|a| w.savepoints(a)).collect();
        let second = metrics(&daemon).await;
        let quiet = apps.iter().all(|a| {
            counter(&second, "savepoint_in_progress", a) == 0.0
                && counter(&second, "savepoint_attempts_total", a)
                    == counter(&second, "savepoint_success_total", a)
        });
        let same = |name| {
            apps.iter()
                .all(|a| counter(&first, name, a) == counter(&second, name, a))
        };
        (quiet && same("savepoint_attempts_total") && same("savepoint_success_total"))
            .then_some((second, dirs))
    })
    .await;
    let (m, dirs) = counted.expect("a quiet moment between two slots");
    for (i, app) in apps.iter().enumerate() {
        let new = dirs[i].difference(&before[i]).count() as f64;
        let success = counter(&m, "savepoint_success_total", app);
        assert!(success >= 2.0, "{app}: {success}");
        assert_eq!(new, success, "{app}: one directory per savepoint");
        assert_eq!(
            sample(
                &m,
                "savepointd_savepoint_failure_total",
                &[("application", app)]
            ),
            0.0,
            "{app}: no failure"
        );
    }
    let (sum, count) = (
        counter(&m, "savepoint_duration_seconds_sum", "orders"),
        counter(&m, "savepoint_duration_seconds_count", "orders"),
    );
    println!(
        "trigger -> completed as savepointd measured it (orders): {:.0} ms mean over {count} savepoints",
        sum / count * 1000.0
    );
    daemon.stop().await;
}

/// Retention on Flink: after each of four savepoints retention runs with keepLast 2, and what is left on
/// disk is the two newest savepoint directories (older ones from earlier cases go too).
async fn four_savepoints_with_keep_last_two_leave_the_two_newest_directories(w: &World) {
    let config = savepointd::config::from_yaml(&w.yaml(
        "  - name: payments\n    schedule: \"* * * * * *\"\n    retention: { keepLast: 2 }\n",
    ))
    .unwrap();
    let mut made = Vec::new();
    for _ in 0..4 {
        let before = w.savepoints("payments");
        // One slot per second: wait for the next second so each pass is a new slot.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (text, ok) = once(&config, &["payments"]).await;
        assert!(ok, "{text}");
        let after = w.savepoints("payments");
        assert!(!after.is_empty());
        let new: Vec<_> = after.difference(&before).cloned().collect();
        assert_eq!(new.len(), 1, "one new directory per pass: {text}");
        made.push(new[0].clone());
    }
    let left = w.savepoints("payments");
    let newest: BTreeSet<PathBuf> = made[2..].iter().cloned().collect();
    assert_eq!(left, newest, "only the two newest remain");
}

/// d. A savepoint that Flink lets expire (the job sleeps 5 s in snapshotState; its checkpoint timeout is
/// 2 s) is a counted failure with its reason, and the daemon keeps taking the other job's savepoints.
async fn a_savepoint_that_times_out_is_a_counted_failure_and_the_daemon_goes_on(w: &World) {
    let slow = w
        .cluster
        .submit(
            "slow",
            Job {
                snapshot_sleep_ms: Some(5000),
                checkpoint_timeout_ms: Some(2000),
                ..Job::default()
            },
        )
        .await;
    let yaml = w.yaml(
        "  - name: slow\n    schedule: \"*/5 * * * * *\"\n    timeout: 30s\n  - name: payments\n    schedule: \"*/5 * * * * *\"\n",
    );
    let daemon = Daemon::start(&yaml).await;
    let failed = ("reason", "failed");
    let first_failure = eventually(Duration::from_secs(30), || async {
        let m = metrics(&daemon).await;
        (sample(
            &m,
            "savepointd_savepoint_failure_total",
            &[("application", "slow"), failed],
        ) >= 1.0)
            .then_some(m)
    })
    .await
    .expect("the slow savepoint fails within 30 s");
    let healthy_then = counter(&first_failure, "savepoint_success_total", "payments");
    let m = eventually(Duration::from_secs(20), || async {
        let m = metrics(&daemon).await;
        (counter(&m, "savepoint_success_total", "payments") > healthy_then).then_some(m)
    })
    .await
    .unwrap_or_else(|| panic!("payments keeps getting savepoints after slow failed"));
    assert_eq!(counter(&m, "savepoint_success_total", "slow"), 0.0);
    assert!(
        sample(
            &m,
            "savepointd_savepoint_failure_total",
            &[("application", "payments")]
        ) == 0.0
    );

    // The reason, as `status` shows it from Flink's checkpoint history.
    let (json, _) = commands::status(&w.config(&["slow"]), Output::Json)
        .await
        .unwrap();
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let failure = rows[0]["lastFailed"]["failure"]
        .as_str()
        .unwrap_or_default();
    assert!(
        failure.contains("expired before completing (checkpoint timeout)"),
        "{json}"
    );
    assert!(
        w.savepoints("slow").is_empty(),
        "no savepoint of slow completed"
    );
    daemon.stop().await;
    w.cluster.cancel(&slow).await;
}
