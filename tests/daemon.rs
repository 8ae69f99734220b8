//! End to end: the daemon, in-process through `savepointd::run_on`, against the VVP simulator and the
//! fake Kubernetes API server, on seconds-level schedules.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use support::eventually;
use support::fixture::{
    APPS, Daemon, Fixture, TOKEN, annotation, fixture, slot_of, triggers_by_app,
};
use support::vvp_sim::{VvpSim, VvpSimOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_applications_get_their_savepoint_at_every_slot() {
    let f = fixture(VvpSimOptions {
        complete_after: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let apps: String = APPS
        .iter()
        .map(|(name, _)| format!("  - name: {name}\n    schedule: \"*/2 * * * * *\"\n"))
        .chain(["  - name: ghost\n    schedule: \"*/2 * * * * *\"\n".to_owned()])
        .collect();
    let daemon = Daemon::start(&f.config("", &apps)).await;

    let ready = eventually(Duration::from_secs(15), || async {
        (daemon.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the daemon became ready");
    assert_eq!(daemon.get("/healthz").await.0, 200);
    let kube_requests_when_ready = f.kube.request_count();

    // Three slots for each of the three applications.
    let done = eventually(Duration::from_secs(30), || async {
        let by_app = triggers_by_app(&f.vvp);
        (APPS
            .iter()
            .all(|(name, _)| by_app.get(*name).is_some_and(|t| t.len() >= 3)))
        .then_some(())
    })
    .await;
    assert!(done.is_some(), "triggers: {:#?}", f.vvp.triggers());
    // Let the last savepoints complete and be recorded.
    let recorded = eventually(Duration::from_secs(10), || async {
        let all = APPS.iter().map(|(name, _)| {
            format!("savepointd_savepoint_success_total{{application=\"{name}\",platform=\"vvp\"}}")
        });
        let mut ok = true;
        for series in all {
            ok &= daemon.metric(&series).await.unwrap_or(0.0) >= 3.0;
        }
        ok.then_some(())
    })
    .await;
    assert!(recorded.is_some(), "{}", daemon.get("/metrics").await.1);
    let kube_requests_at_end = f.kube.request_count();
    let metrics = daemon.get("/metrics").await.1;
    let shutdown = daemon.stop().await;

    let by_app = triggers_by_app(&f.vvp);
    assert_eq!(
        by_app.keys().cloned().collect::<BTreeSet<_>>(),
        APPS.iter().map(|(n, _)| n.to_string()).collect(),
        "only the resolvable applications were triggered (ghost has no pod)"
    );
    for (name, id) in APPS {
        let triggers = &by_app[name];
        let slots: Vec<DateTime<Utc>> = triggers.iter().map(slot_of).collect();
        let unique: BTreeSet<_> = slots.iter().collect();
        assert_eq!(
            unique.len(),
            slots.len(),
            "{name}: one savepoint per slot: {slots:?}"
        );
        for t in triggers {
            assert_eq!(
                t["metadata"]["deploymentId"], id,
                "{name} resolved to its deploymentId"
            );
            assert_eq!(annotation(t, "savepointd.io/managed-by"), "savepointd");
            assert_eq!(
                slot_of(t).timestamp() % 2,
                0,
                "slots are the schedule's even seconds"
            );
        }
        // One run at a time per application: each savepoint was triggered after the previous one completed.
        for pair in triggers.windows(2) {
            let created = |v: &Value| -> DateTime<Utc> {
                v["metadata"]["createdAt"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            let gap = created(&pair[1]) - created(&pair[0]);
            assert!(
                gap.num_milliseconds() >= 300,
                "{name}: overlapping savepoints {gap}"
            );
        }
    }
    // Every request carried the token from the file.
    assert!(
        f.vvp
            .requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))),
    );
    assert_eq!(
        kube_requests_at_end,
        kube_requests_when_ready,
        "ticks made no Kubernetes API request: {:#?}",
        f.kube.requests()
    );
    for needle in [
        r#"savepointd_runs_skipped_total{application="ghost",platform="vvp",reason="not_running"}"#,
        r#"savepointd_resolve_failures_total{application="ghost",platform="vvp",reason="unresolved"}"#,
        r#"savepointd_savepoint_last_status{application="payments",platform="vvp"} 1"#,
        r#"savepointd_schedule_expected_interval_seconds{application="payments",platform="vvp"} 2"#,
        "savepointd_schedule_lateness_seconds_count",
        r#"savepointd_api_requests_total{code="201",operation="trigger",platform="vvp"}"#,
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
    assert!(
        shutdown < Duration::from_secs(3),
        "shutdown took {shutdown:?}"
    );
}

/// Starts a daemon for one held application and returns it with the first savepoint it triggered.
async fn first_trigger(f: &Fixture, yaml: &str) -> (Daemon, Value) {
    let daemon = Daemon::start(yaml).await;
    let triggered = eventually(Duration::from_secs(25), || async {
        f.vvp.triggers().first().cloned()
    })
    .await
    .expect("a first savepoint was triggered");
    (daemon, triggered)
}

/// Every application has at most one savepoint per slot, and exactly one for `slot` (of those that
/// have any).
fn assert_one_savepoint_per_slot(vvp: &VvpSim, slot: DateTime<Utc>) {
    for (app, triggers) in triggers_by_app(vvp) {
        let slots: Vec<_> = triggers.iter().map(slot_of).collect();
        let for_slot = slots.iter().filter(|s| **s == slot).count();
        assert_eq!(
            for_slot, 1,
            "{app}: no duplicate for the interrupted slot: {triggers:#?}"
        );
        let unique: BTreeSet<_> = slots.iter().collect();
        assert_eq!(
            unique.len(),
            slots.len(),
            "{app}: one savepoint per slot: {slots:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_in_flight_at_restart_is_adopted_and_followed() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, id) = APPS[1];
    f.vvp.hold_savepoints_of(id);
    // Hourly slots: the catch-up at start triggers the current one, and no later slot falls inside the
    // test, so the success below can only be the adopted savepoint's.
    let yaml = f.config(
        "",
        &format!("  - name: {name}\n    schedule: \"@every 1h\"\n    startingDeadline: 2h\n"),
    );
    let (first, triggered) = first_trigger(&f, &yaml).await;
    let savepoint_id = triggered["metadata"]["id"].as_str().unwrap().to_owned();
    // Stopped while the savepoint is in flight: the wait is abandoned after the grace period.
    first.stop().await;
    assert_eq!(
        f.vvp.started_now(),
        1,
        "the savepoint is still in flight on the platform"
    );

    let restarted = std::time::Instant::now();
    let second = Daemon::start(&yaml).await;
    // The restarted daemon follows the very savepoint: it polls it.
    let polled = eventually(Duration::from_secs(15), || async {
        f.vvp
            .requests()
            .iter()
            .any(|r| {
                r.at > restarted
                    && r.method == "GET"
                    && r.path.ends_with(&format!("/savepoints/{savepoint_id}"))
            })
            .then_some(())
    })
    .await;
    assert!(
        polled.is_some(),
        "the restarted daemon polls {savepoint_id}"
    );
    f.vvp.release_savepoints_of(id);
    let success =
        format!("savepointd_savepoint_success_total{{application=\"{name}\",platform=\"vvp\"}}");
    let adopted = eventually(Duration::from_secs(15), || async {
        (second.metric(&success).await.unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;
    assert!(
        adopted.is_some(),
        "the restarted daemon followed it to COMPLETED: {}",
        second.get("/metrics").await.1
    );
    second.stop().await;
    assert_eq!(f.vvp.triggers().len(), 1, "{:#?}", f.vvp.triggers());
    assert_one_savepoint_per_slot(&f.vvp, slot_of(&triggered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_completed_while_the_daemon_was_down_is_not_triggered_again() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, id) = APPS[2];
    let (control, _) = APPS[0];
    f.vvp.hold_savepoints_of(id);
    // Slots 10 s apart: the restart below happens well inside the slot, so the restarted daemon's
    // catch-up looks at the very slot whose savepoint completed while it was down.
    let yaml = f.config(
        "",
        &format!(
            "  - name: {name}\n    schedule: \"*/10 * * * * *\"\n    startingDeadline: 1m\n\
             \x20 - name: {control}\n    schedule: \"*/10 * * * * *\"\n    startingDeadline: 1m\n"
        ),
    );
    // The first daemon runs no catch-up slot (its deadline is tiny), so its savepoint is for a slot that
    // has just begun. The control application is paused in it: its slot gets no savepoint while the
    // daemon is up, so the restarted daemon's catch-up must make one (proof that the catch-up ran).
    let first_yaml = yaml
        .replace("startingDeadline: 1m", "startingDeadline: 1s")
        .replace(
            &format!("  - name: {control}\n"),
            &format!("  - name: {control}\n    paused: true\n"),
        );
    let (first, triggered) = first_trigger(&f, &first_yaml).await;
    let slot = slot_of(&triggered);
    first.stop().await;
    f.vvp.release_savepoints_of(id);
    let completed = eventually(Duration::from_secs(5), || async {
        (f.vvp.started_now() == 0).then_some(())
    })
    .await;
    assert!(completed.is_some());
    let restarted_at = Utc::now();
    assert!(
        restarted_at < slot + chrono::Duration::seconds(9),
        "restart is inside the slot"
    );

    let second = Daemon::start(&yaml).await;
    let caught_up = eventually(Duration::from_secs(8), || async {
        triggers_by_app(&f.vvp).contains_key(control).then_some(())
    })
    .await;
    // Give the catch-up runs time to decide, but stop before the next slot.
    let before_next = (slot + chrono::Duration::milliseconds(9_500) - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(before_next.min(Duration::from_millis(500))).await;
    second.stop().await;
    assert!(
        caught_up.is_some(),
        "the catch-up ran: {:#?}",
        f.vvp.triggers()
    );
    let by_app = triggers_by_app(&f.vvp);
    assert_eq!(
        by_app[control].iter().map(slot_of).collect::<Vec<_>>(),
        [slot],
        "the control's missed slot was caught up"
    );
    assert_eq!(by_app[name].len(), 1, "{:#?}", by_app[name]);
    assert_one_savepoint_per_slot(&f.vvp, slot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_pod_cache() {
    let f = fixture(VvpSimOptions::default()).await;
    // A kubeconfig pointing at a port where no API server answers: the cache can never sync.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let kubeconfig = f.dir.path().join("dead-kubeconfig");
    write_kubeconfig(&kubeconfig, &dead);
    let yaml = f
        .config("", "  - name: payments\n    schedule: \"* * * * * *\"\n")
        .replace(
            &f.dir.path().join("kubeconfig").display().to_string(),
            &kubeconfig.display().to_string(),
        );
    assert!(yaml.contains("dead-kubeconfig"), "{yaml}");
    let daemon = Daemon::start(&yaml).await;
    let health = eventually(Duration::from_secs(5), || async {
        (daemon.get("/healthz").await.0 == 200).then_some(())
    })
    .await;
    assert!(health.is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = daemon.get("/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("pod caches not synced"), "{body}");
    assert!(
        f.vvp.triggers().is_empty(),
        "nothing runs before the cache synced"
    );
    daemon.stop().await;
}

fn write_kubeconfig(path: &Path, server: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_used_without_a_restart() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, _) = APPS[1];
    let daemon = Daemon::start(&f.config(
        "",
        &format!("  - name: {name}\n    schedule: \"* * * * * *\"\n"),
    ))
    .await;
    let success =
        format!("savepointd_savepoint_success_total{{application=\"{name}\",platform=\"vvp\"}}");
    let count = || async { daemon.metric(&success).await.unwrap_or(0.0) };
    assert!(
        eventually(Duration::from_secs(15), || async {
            (count().await >= 1.0).then_some(())
        })
        .await
        .is_some()
    );
    // The Secret is rotated: the platform accepts only the new token, and the mounted file changes.
    f.vvp.set_token("rotated-token");
    std::fs::write(f.dir.path().join("token"), "rotated-token\n").unwrap();
    let file = std::fs::File::options()
        .write(true)
        .open(f.dir.path().join("token"))
        .unwrap();
    // Whole-second mtimes on some filesystems: make the change visible whatever the resolution.
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(2))
        .unwrap();
    let before = count().await;
    let recovered = eventually(Duration::from_secs(15), || async {
        (count().await >= before + 2.0).then_some(())
    })
    .await;
    daemon.stop().await;
    assert!(recovered.is_some(), "savepoints go on with the new token");
    let rotated = f
        .vvp
        .requests()
        .iter()
        .filter(|r| r.authorization.as_deref() == Some("Bearer rotated-token") && r.status < 400)
        .count();
    assert!(rotated > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_known_at_start_is_there_at_the_first_scrape() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, id) = APPS[1];
    // Before the restart: a completed savepoint, then a failed one (the newest).
    for (sid, minutes, state) in [("done", 90, "COMPLETED"), ("broken", 30, "FAILED")] {
        let created = Utc::now() - chrono::TimeDelta::minutes(minutes);
        f.vvp.seed_savepoint(serde_json::json!({
            "metadata": {"id": sid, "createdAt": created.to_rfc3339(), "deploymentId": id,
                "origin": "USER_REQUEST", "type": "FULL",
                "annotations": {"savepointd.io/managed-by": "savepointd", "savepointd.io/application": name,
                    "savepointd.io/slot": created.format("%Y-%m-%dT%H:%M:%SZ").to_string()}},
            "spec": {"savepointLocation": format!("s3://flink/savepoints/{sid}")},
            "status": {"state": state}
        }));
    }
    // Hourly, no catch-up: nothing runs during the test.
    let yaml = f.config(
        "",
        &format!("  - name: {name}\n    schedule: \"@every 1h\"\n    startingDeadline: 1s\n"),
    );
    let daemon = Daemon::start(&yaml).await;
    let series = |metric: &str, extra: &str| {
        format!("savepointd_{metric}{{application=\"{name}\",platform=\"vvp\"{extra}}}")
    };
    let recovered = eventually(Duration::from_secs(15), || async {
        daemon
            .metric(&series("savepoint_last_status", ""))
            .await
            .map(|_| ())
    })
    .await;
    let metrics = daemon.get("/metrics").await.1;
    daemon.stop().await;
    assert!(recovered.is_some(), "{metrics}");
    assert!(f.vvp.triggers().is_empty(), "nothing ran");
    for (needle, value) in [
        (series("savepoint_last_status", ""), "0"),
        (series("retained_savepoints", ""), "1"),
        (
            series("savepoint_failure_total", ",reason=\"timeout\""),
            "0",
        ),
        (series("savepoint_failure_total", ",reason=\"stuck\""), "0"),
        (series("runs_skipped_total", ",reason=\"not_due\""), "0"),
        (series("runs_skipped_total", ",reason=\"blackout\""), "0"),
        (
            series("resolve_failures_total", ",reason=\"ambiguous\""),
            "0",
        ),
        (
            series("retention_delete_failures_total", ",reason=\"conflict\""),
            "0",
        ),
    ] {
        assert!(
            metrics.contains(&format!("{needle} {value}")),
            "{needle} {value} missing from\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_shows_at_start_not_at_the_first_slot() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, _) = APPS[1];
    // Hourly, no catch-up: no slot falls inside the test; only the start-up probe asks the platform.
    let yaml = f.config(
        "",
        &format!("  - name: {name}\n    schedule: \"@every 1h\"\n    startingDeadline: 1s\n"),
    );
    let up = "savepointd_platform_up{platform=\"vvp\"}";

    let daemon = Daemon::start(&yaml).await;
    let answered = eventually(Duration::from_secs(15), || async {
        daemon.metric(up).await.filter(|v| *v == 1.0)
    })
    .await;
    daemon.stop().await;
    assert!(answered.is_some(), "the right token: platform_up 1");

    std::fs::write(f.dir.path().join("token"), "not-the-token\n").unwrap();
    let daemon = Daemon::start(&yaml).await;
    let refused = eventually(Duration::from_secs(15), || async {
        daemon.metric(up).await.filter(|v| *v == 0.0)
    })
    .await;
    let metrics = daemon.get("/metrics").await.1;
    daemon.stop().await;
    assert!(
        refused.is_some(),
        "a 401 at start: platform_up 0\n{metrics}"
    );
    assert!(
        metrics.contains(
            r#"savepointd_api_requests_total{code="401",operation="probe",platform="vvp"}"#
        ),
        "{metrics}"
    );
    assert!(f.vvp.triggers().is_empty(), "no slot ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_inside_a_blackout_window_are_skipped_counted_and_never_the_next_run() {
    let f = fixture(VvpSimOptions {
        complete_after: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let (name, _) = APPS[1];
    // Every second; the window opens every fourth second for two: seconds 4k and 4k+1 are skipped.
    let daemon = Daemon::start(&f.config(
        "",
        &format!(
            "  - name: {name}\n    schedule: \"* * * * * *\"\n    blackoutWindows:\n      - {{ schedule: \"*/4 * * * * *\", duration: 2s }}\n"
        ),
    ))
    .await;
    let series = |metric: &str, extra: &str| {
        format!("savepointd_{metric}{{application=\"{name}\",platform=\"vvp\"{extra}}}")
    };
    let skipped = series("runs_skipped_total", ",reason=\"blackout\"");
    let enough = eventually(Duration::from_secs(20), || async {
        let skips = daemon.metric(&skipped).await.unwrap_or(0.0);
        (skips >= 3.0 && f.vvp.triggers().len() >= 3).then_some(())
    })
    .await;
    let next_run = daemon
        .metric(&series("schedule_next_run_timestamp_seconds", ""))
        .await;
    let interval = daemon
        .metric(&series("schedule_expected_interval_seconds", ""))
        .await;
    let metrics = daemon.get("/metrics").await.1;
    daemon.stop().await;
    assert!(enough.is_some(), "{metrics}");

    for t in f.vvp.triggers() {
        let second = slot_of(&t).timestamp() % 4;
        assert!(
            second >= 2,
            "slot {} is inside a window yet was triggered",
            slot_of(&t)
        );
    }
    let next_run = next_run.expect("the next run is exported") as i64;
    assert!(
        next_run % 4 >= 2,
        "the next run {next_run} is outside the windows"
    );
    // From 4k-1, the last run before a window, to 4k+2, the first after it.
    assert_eq!(interval, Some(3.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jittered_run_starts_at_its_stable_offset_and_keeps_its_slot() {
    let f = fixture(VvpSimOptions {
        complete_after: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let (name, _) = APPS[1];
    let jitter = Duration::from_secs(3);
    let daemon = Daemon::start(&f.config(
        "",
        &format!(
            "  - name: {name}\n    schedule: \"*/4 * * * * *\"\n    jitter: 3s\n    startingDeadline: 1s\n"
        ),
    ))
    .await;
    // The first trigger may be a slot missed at startup, run late on purpose: look at the ones after it.
    let triggered = eventually(Duration::from_secs(30), || async {
        (f.vvp.triggers().len() >= 3).then_some(())
    })
    .await;
    let metrics = daemon.get("/metrics").await.1;
    daemon.stop().await;
    assert!(triggered.is_some(), "{metrics}");

    for t in f.vvp.triggers().iter().skip(1) {
        let slot = slot_of(t);
        assert_eq!(slot.timestamp() % 4, 0, "the slot is the scheduled time");
        let due = slot + savepointd::schedule::jitter_offset(name, slot, jitter);
        let created: DateTime<Utc> = t["metadata"]["createdAt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let late = (created - due).num_milliseconds();
        assert!(
            (-50..1_000).contains(&late),
            "slot {slot}: triggered at {created}, due at {due} ({late} ms)"
        );
    }
    // Lateness is measured from the slot plus its offset, not from the slot.
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    let (sum, count) = (
        value("savepointd_schedule_lateness_seconds_sum"),
        value("savepointd_schedule_lateness_seconds_count"),
    );
    assert!(
        count >= 2.0 && sum / count < 0.5,
        "{sum} s over {count} runs"
    );
}
