//! One pass (`once`), `resolve` and `status` against the VVP simulator and the fake Kubernetes API,
//! through the library calls the CLI makes: retries, failures, the in-flight guard, concurrency limits,
//! timeouts and resolution errors.

mod support;

use tokio_util::sync::CancellationToken;

use std::time::Duration;

use serde_json::json;
use support::fixture::{APPS, Fixture, annotation, fixture, once};
use support::vvp_sim::VvpSimOptions;

use savepointd::commands::{self, Output};
use savepointd::config::Config;

fn config(f: &Fixture, platform_extra: &str, apps: &str) -> Config {
    savepointd::config::from_yaml(&f.config(platform_extra, apps)).expect("test config is valid")
}

fn app(name: &str, extra: &str) -> String {
    format!("  - name: {name}\n{extra}")
}

fn posts(f: &Fixture) -> usize {
    f.vvp
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_savepoint_is_retried_then_reported_with_the_platforms_message() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, id) = APPS[1];
    f.vvp
        .fail_savepoints_of(id, "Checkpoint expired before completing");
    let c = config(&f, "", &app(name, ""));
    let (text, ok) = once(&c, &[name]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("Checkpoint expired before completing"),
        "{text}"
    );
    let triggers = f.vvp.triggers();
    assert_eq!(triggers.len(), 2, "maxAttempts 2: {triggers:#?}");
    assert_eq!(
        annotation(&triggers[0], "savepointd.io/slot"),
        annotation(&triggers[1], "savepointd.io/slot"),
        "both attempts belong to one slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_dropped_connections_are_retried() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, _) = APPS[1];
    let c = config(&f, "", &app(name, ""));
    f.vvp.fail_next(2, 503);
    f.vvp.drop_next(1);
    let (text, ok) = once(&c, &[name]).await;
    assert!(ok, "{text}");
    assert!(text.contains("completed"), "{text}");
    assert_eq!(
        f.vvp.triggers().len(),
        1,
        "one savepoint despite the errors"
    );
    let statuses: Vec<u16> = f.vvp.requests().iter().map(|r| r.status).collect();
    let count = |code| statuses.iter().filter(|s| **s == code).count();
    assert_eq!(
        (count(503), count(0)),
        (2, 1),
        "every injected fault was met: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_whose_answer_was_lost_makes_one_savepoint_for_the_slot() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, _) = APPS[1];
    let c = config(&f, "", &app(name, ""));
    // VVP makes the savepoint, then the connection resets before its answer arrives.
    f.vvp.lose_next_answers_to("POST", 1);
    let (text, ok) = once(&c, &[name]).await;
    let lost: Vec<_> = f.vvp.requests().into_iter().filter(|r| r.lost).collect();
    assert_eq!(lost.len(), 1, "the fault was met: {lost:#?}");
    assert_eq!((lost[0].method.as_str(), lost[0].status), ("POST", 201));
    let triggers = f.vvp.triggers();
    assert_eq!(
        triggers.len(),
        1,
        "the savepoint the lost answer was about is the slot's only one: {triggers:#?}"
    );
    assert_eq!(
        posts(&f),
        1,
        "a POST that may have taken effect is not resent"
    );
    assert!(ok, "{text}");
    let id = triggers[0]["metadata"]["id"].as_str().unwrap();
    assert!(
        text.contains(id),
        "the run reports the savepoint made: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_is_not_retried_and_carries_the_platforms_message() {
    let f = fixture(VvpSimOptions::default()).await;
    std::fs::write(f.dir.path().join("token"), "not-the-token").unwrap();
    let (name, _) = APPS[0];
    let c = config(&f, "", &app(name, ""));
    let (text, ok) = once(&c, &[name]).await;
    assert!(!ok);
    assert!(text.contains("HTTP 401"), "{text}");
    assert_eq!(f.vvp.requests().len(), 1, "a 401 is not retried");
    assert_eq!(posts(&f), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_bounds_the_savepoints_in_flight() {
    let f = fixture(VvpSimOptions {
        complete_after: Duration::from_millis(400),
        ..Default::default()
    })
    .await;
    let apps: String = APPS.iter().map(|(n, _)| app(n, "")).collect();
    let c = config(&f, "", &apps).with_max_concurrent(2);
    let (text, ok) = once(&c, &[]).await;
    assert!(ok, "{text}");
    assert_eq!(f.vvp.triggers().len(), 3);
    assert_eq!(f.vvp.max_started_at_once(), 2, "two at once, never three");
}

trait WithMaxConcurrent {
    fn with_max_concurrent(self, n: usize) -> Self;
}

impl WithMaxConcurrent for Config {
    fn with_max_concurrent(mut self, n: usize) -> Self {
        // The config is plain data: a test sets what it needs directly.
        self.platforms[0].max_concurrent = n;
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_already_in_flight_skips_the_run() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, id) = APPS[2];
    f.vvp.seed_savepoint(json!({
        "apiVersion": "v1", "kind": "Savepoint",
        "metadata": {"id": "aaaaaaaa-0000-4000-8000-000000000001", "namespace": "default",
            "createdAt": chrono::Utc::now().to_rfc3339(), "deploymentId": id,
            "origin": "USER_REQUEST", "type": "FULL", "annotations": {}},
        "spec": {},
        "status": {"state": "STARTED"}
    }));
    let c = config(&f, "", &app(name, ""));
    let (text, ok) = once(&c, &[name]).await;
    assert!(!ok, "the slot got no savepoint, and once says so: {text}");
    assert!(text.contains("in_progress"), "{text}");
    assert_eq!(posts(&f), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_in_flight_for_longer_than_the_timeout_no_longer_blocks() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, id) = APPS[2];
    let stuck = "aaaaaaaa-0000-4000-8000-000000000002";
    f.vvp.seed_savepoint(json!({
        "metadata": {"id": stuck, "createdAt": (chrono::Utc::now() - chrono::TimeDelta::minutes(20)).to_rfc3339(),
            "deploymentId": id, "origin": "USER_REQUEST", "type": "FULL", "annotations": {}},
        "spec": {},
        "status": {"state": "STARTED"}
    }));
    let c = config(&f, "", &app(name, "    timeout: 10m\n"));
    let (text, ok) = once(&c, &[name]).await;
    assert!(ok, "{text}");
    assert!(text.contains("completed"), "{text}");
    assert_eq!(
        posts(&f),
        1,
        "the stuck savepoint no longer blocks: one trigger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_over_its_timeout_fails_once_and_is_not_retried_while_in_flight() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, id) = APPS[0];
    f.vvp.hold_savepoints_of(id);
    let c = config(&f, "", &app(name, "    timeout: 1s\n"));
    let (text, ok) = once(&c, &[name]).await;
    assert!(!ok);
    assert!(text.contains("did not finish within"), "{text}");
    assert_eq!(f.vvp.triggers().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_application_is_skipped() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, _) = APPS[0];
    let c = config(&f, "", &app(name, "    paused: true\n"));
    let (text, ok) = once(&c, &[name]).await;
    assert!(ok);
    assert!(text.contains("paused"), "{text}");
    assert_eq!(posts(&f), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_application_name_is_an_error() {
    let f = fixture(VvpSimOptions::default()).await;
    let c = config(&f, "", &app("payments", ""));
    let err = commands::once(&c, &["nope".into()], false, true, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"nope\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_names_both_ids_when_pods_disagree() {
    let f = fixture(VvpSimOptions::default()).await;
    f.kube.add_pod(
        "flink",
        "stray",
        &[
            ("system", "ververica-platform"),
            ("deploymentName", "payments"),
            ("deploymentId", "99999999-9999-4999-8999-999999999999"),
        ],
    );
    let c = config(&f, "", &app("payments", ""));
    let (text, ok) = commands::resolve(&c, "payments").await.unwrap();
    assert!(!ok);
    assert!(
        text.contains(APPS[1].1) && text.contains("99999999-9999-4999-8999-999999999999"),
        "{text}"
    );
    let (text, ok) = once(&c, &["payments"]).await;
    assert!(!ok, "an ambiguous name triggers nothing: {text}");
    assert_eq!(posts(&f), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_shows_the_id_and_where_it_came_from() {
    let f = fixture(VvpSimOptions::default()).await;
    let c = config(&f, "", &app("Fraud Detection", ""));
    let (text, ok) = commands::resolve(&c, "Fraud Detection").await.unwrap();
    assert!(ok, "{text}");
    assert!(text.contains(APPS[0].1), "{text}");
    assert!(text.contains("label deploymentId of pod flink/"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_through_the_vvp_api_works_without_pods() {
    let f = fixture(VvpSimOptions {
        bare_list: true,
        ..Default::default()
    })
    .await;
    let yaml = f.config("", &app("clickstream", "")).replace(
        "resolve: { via: pods, kubernetesNamespace: flink, selector: system=ververica-platform }",
        "resolve: { via: api }",
    );
    let c = savepointd::config::from_yaml(&yaml).unwrap();
    let (text, ok) = commands::resolve(&c, "clickstream").await.unwrap();
    assert!(ok && text.contains(APPS[2].1), "{text}");
    assert!(text.contains("VVP deployment"), "{text}");
    let (text, ok) = once(&c, &["clickstream"]).await;
    assert!(ok, "VVP 2.0 bare-array lists are understood: {text}");
    assert_eq!(
        f.kube.request_count(),
        0,
        "no Kubernetes access with via: api"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_id_last_savepoint_and_next_run() {
    let f = fixture(VvpSimOptions::default()).await;
    let apps = format!(
        "{}{}",
        app("payments", ""),
        app("ghost", "    paused: true\n")
    );
    let c = config(&f, "", &apps);
    let (_, ok) = once(&c, &["payments"]).await;
    assert!(ok);

    let (json, ok) = commands::status(&c, Output::Json).await.unwrap();
    assert!(!ok, "ghost does not resolve");
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let payments = &rows[0];
    assert_eq!(payments["application"], "payments");
    assert_eq!(payments["resolvedId"], APPS[1].1);
    assert_eq!(payments["lastCompleted"]["state"], "COMPLETED");
    assert!(
        payments["nextRun"].as_str().unwrap().ends_with(":00:00Z"),
        "hourly: {}",
        payments["nextRun"]
    );
    assert!(rows[1]["error"].as_str().unwrap().contains("not found"));

    let (table, _) = commands::status(&c, Output::Table).await.unwrap();
    for needle in [
        "payments",
        APPS[1].1,
        "ago",
        "ghost",
        "paused",
        "now: application ghost",
    ] {
        assert!(table.contains(needle), "{needle}:\n{table}");
    }
    let ghost = table.lines().find(|l| l.contains("ghost")).unwrap();
    assert!(
        !ghost.contains("error:"),
        "the error is in the failure column, not the id column:\n{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_triggers_nothing() {
    let f = fixture(VvpSimOptions::default()).await;
    let c = config(&f, "", &app("payments", ""));
    let (text, ok) = commands::once(&c, &[], true, true, &CancellationToken::new())
        .await
        .unwrap();
    assert!(ok);
    assert!(
        text.contains("would trigger") && text.contains(APPS[1].1),
        "{text}"
    );
    assert_eq!(posts(&f), 0);
    // Once the slot has its savepoint, the dry run says so, as the real run would find it.
    let (done, ok) = once(&c, &["payments"]).await;
    assert!(ok, "{done}");
    let (text, ok) = commands::once(&c, &[], true, true, &CancellationToken::new())
        .await
        .unwrap();
    assert!(ok);
    let id = f.vvp.triggers()[0]["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.contains("would do nothing") && text.contains(&id),
        "{text}"
    );
    assert_eq!(posts(&f), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_application_platform_and_savepoint_on_every_savepoint_line() {
    let f = fixture(VvpSimOptions::default()).await;
    f.vvp
        .fail_savepoints_of(APPS[0].1, "Checkpoint expired before completing");
    let path = f.dir.path().join("config.yaml");
    std::fs::write(
        &path,
        f.config(
            "",
            &format!("{}{}", app("payments", ""), app("Fraud Detection", "")),
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_savepointd"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "json",
            "once",
        ])
        .env("RUST_LOG", "info")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "one application failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let about_savepoints: Vec<_> = lines
        .iter()
        .filter(|l| l.get("savepoint_id").is_some())
        .collect();
    assert!(about_savepoints.len() >= 4, "{stderr}");
    for l in &about_savepoints {
        let span = &l["span"];
        assert!(span["application"].is_string(), "{l}");
        assert_eq!(span["platform"], "vvp", "{l}");
    }
    assert!(
        lines.iter().any(
            |l| l["message"] == "savepoint completed" && l["span"]["application"] == "payments"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains(support::fixture::TOKEN),
        "the token never appears in logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_against_the_configured_ca_file() {
    let f = fixture(VvpSimOptions::default()).await;
    let front = support::tls::TlsFront::start(&f.vvp.url).await;
    let ca = f.dir.path().join("vvp-ca.pem");
    std::fs::write(&ca, &front.ca_pem).unwrap();
    let with = |tls: &str| {
        let yaml = f.config("", &app("payments", "")).replace(
            &format!("url: {}", f.vvp.url),
            &format!("url: {}\n    tls: {tls}", front.url),
        );
        savepointd::config::from_yaml(&yaml).unwrap()
    };

    let (text, ok) = once(
        &with(&format!("{{ caFile: {} }}", ca.display())),
        &["payments"],
    )
    .await;
    assert!(ok, "trusted through tls.caFile: {text}");
    assert_eq!(f.vvp.triggers().len(), 1);

    let (text, ok) = once(&with("{}"), &["payments"]).await;
    assert!(!ok, "an unknown issuer is refused: {text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert_eq!(f.vvp.triggers().len(), 1, "nothing reached the platform");
}

/// A window that opens at the start of the current UTC hour and lasts two, so that the slot `once` runs
/// (the fixture's hourly schedule) is inside it however long the test takes to get there; and when it
/// closes.
fn window_over_now() -> (String, chrono::DateTime<chrono::Utc>) {
    use chrono::{DurationRound, TimeDelta, Timelike};
    let start = chrono::Utc::now()
        .duration_trunc(TimeDelta::hours(1))
        .unwrap();
    let hour = start.hour();
    (
        format!("    blackoutWindows:\n      - {{ schedule: \"0 {hour} * * *\", duration: 2h }}\n"),
        start + TimeDelta::hours(2),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_inside_a_blackout_window_triggers_nothing_and_is_ok() {
    let f = fixture(VvpSimOptions::default()).await;
    let (name, _) = APPS[1];
    let (window, closes) = window_over_now();
    let c = config(&f, "", &app(name, &window));
    let (text, ok) = once(&c, &[name]).await;
    assert!(ok, "a blackout is what the operator asked for: {text}");
    assert!(
        text.contains("blackout: slot") && text.contains("is inside blackout window"),
        "{text}"
    );
    let (dry, ok) = commands::once(&c, &[], true, true, &CancellationToken::new())
        .await
        .unwrap();
    assert!(
        ok && dry.contains("would skip") && dry.contains("blackout window"),
        "{dry}"
    );

    // The binary: exit 0, and the skip is logged at info with the window.
    let path = f.dir.path().join("config.yaml");
    std::fs::write(&path, f.config("", &app(name, &window))).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_savepointd"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "json",
            "once",
        ])
        .env("RUST_LOG", "info")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let skipped: serde_json::Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "skipped: slot inside a blackout window")
        .unwrap_or_else(|| panic!("no skip logged:\n{stderr}"));
    assert_eq!(skipped["level"], "INFO", "{skipped}");
    assert!(
        skipped["window"]
            .as_str()
            .unwrap()
            .ends_with("* * * for 2h"),
        "{skipped}"
    );
    assert!(skipped["window_end"].is_string(), "{skipped}");
    assert_eq!(skipped["span"]["application"], name, "{skipped}");
    assert_eq!(posts(&f), 0, "the simulator saw no trigger");

    // The next run is the first slot after the window, not the next slot inside it.
    let (json, _) = commands::status(&c, Output::Json).await.unwrap();
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let next: chrono::DateTime<chrono::Utc> = rows[0]["nextRun"].as_str().unwrap().parse().unwrap();
    assert_eq!(next, closes, "{json}");

    // Without the window, the same slot gets its savepoint: the window is what held it back.
    let (text, ok) = once(&config(&f, "", &app(name, "")), &[name]).await;
    assert!(ok && text.contains("completed"), "{text}");
    assert_eq!(posts(&f), 1);
}

#[test]
fn jitter_offsets_are_stable_within_the_bound_and_spread() {
    use savepointd::schedule::jitter_offset;
    let jitter = Duration::from_secs(600);
    let base: chrono::DateTime<chrono::Utc> = "2026-11-20T01:00:00Z".parse().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for app in 0..50 {
        let name = format!("application-{app}");
        for hour in 0..200 {
            let slot = base + chrono::TimeDelta::hours(hour);
            let offset = jitter_offset(&name, slot, jitter);
            assert!(offset < jitter, "{name} {slot}: {offset:?}");
            assert_eq!(
                jitter_offset(&name, slot, jitter),
                offset,
                "{name} {slot}: the same every time it is computed"
            );
            seen.insert(offset);
        }
    }
    assert!(
        seen.len() > 9_000,
        "10,000 pairs spread over 600,000 possible offsets: {} distinct",
        seen.len()
    );
    let (low, high) = (seen.first().unwrap(), seen.last().unwrap());
    assert!(
        *low < Duration::from_secs(10) && *high > Duration::from_secs(590),
        "they fill the bound: {low:?}..{high:?}"
    );
    // An application's configured jitter is what bounds its offsets.
    let c = savepointd::config::from_yaml(
        "platforms: [{name: p, kind: vvp, url: \"http://127.0.0.1:9\"}]\napplications:\n  - name: a\n    schedule: \"@every 1h\"\n    jitter: 10m\n",
    )
    .unwrap();
    assert_eq!(c.applications[0].jitter, jitter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_resolved_through_the_api_share_one_deployment_list_per_tick() {
    let f = fixture(VvpSimOptions::default()).await;
    for i in 0..20 {
        f.vvp.add_deployment(
            &format!("job-{i:02}"),
            &format!("00000000-0000-4000-8000-0000000000{i:02}"),
            "RUNNING",
        );
    }
    let apps: String = (0..20).map(|i| format!("  - job-{i:02}\n")).collect();
    let yaml = f.config("", &apps).replace(
        "resolve: { via: pods, kubernetesNamespace: flink, selector: system=ververica-platform }",
        "resolve: { via: api }",
    );
    let c = savepointd::config::from_yaml(&yaml).unwrap();
    let (text, ok) = once(&c, &[]).await;
    assert!(ok, "{text}");
    let lists = f
        .vvp
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/deployments"))
        .count();
    assert_eq!(lists, 1, "one list of the deployments for 20 applications");
    assert_eq!(f.vvp.triggers().len(), 20);
}
