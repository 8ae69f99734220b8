//! Bad configs: one case per class of mistake, each asserting that the message names the field path and
//! the value; and the binary's contract: exit 2, nothing triggered.

use std::process::Command;
use std::time::Duration;

use savepointd::config::{self, Error};

const PLATFORM: &str = r#"
platforms:
  - name: vvp-prod
    kind: vvp
    url: http://127.0.0.1:9
"#;

/// Validates `yaml` and returns every problem as one text.
fn problems(yaml: &str) -> String {
    match config::from_yaml(yaml) {
        Ok(_) => panic!("config was accepted:\n{yaml}"),
        Err(Error::Invalid(p)) => p
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn with_apps(apps: &str) -> String {
    format!("{PLATFORM}applications:\n{apps}")
}

fn assert_names(yaml: &str, needles: &[&str]) {
    let text = problems(yaml);
    for n in needles {
        assert!(text.contains(n), "expected {n:?} in:\n{text}");
    }
}

#[test]
fn a_good_config_is_accepted_with_defaults_filled_in() {
    let c = config::from_yaml(&with_apps(
        "  - name: fraud-detection\n    schedule: \"0 */6 * * *\"\n    retention: { keepLast: 4 }\n  - name: payments\n",
    ))
    .unwrap();
    assert_eq!(c.applications.len(), 2);
    let fraud = c.application("fraud-detection").unwrap();
    assert_eq!(fraud.schedule.to_string(), "0 */6 * * *");
    assert_eq!(fraud.retention.keep_last, 4);
    assert_eq!(fraud.retention.min_keep, 1);
    assert_eq!(fraud.retention.max_deletions_per_run, 20);
    let payments = c.application("payments").unwrap();
    assert_eq!(payments.schedule.to_string(), "0 1 * * *");
    assert!(
        !payments.retention.is_enabled(),
        "no keep rule: retention off"
    );
    assert_eq!(payments.timeout.as_secs(), 15 * 60);
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:9090");
}

#[test]
fn applications_on_one_schedule_share_its_parsed_form() {
    use savepointd::schedule::Schedule;
    let parsed = config::from_yaml(&with_apps(
        "  - name: a\n  - name: b\n    blackoutWindows: [{ schedule: \"0 2 * * *\", duration: 1h }]\n  - name: c\n    schedule: \"0 2 * * *\"\n",
    ))
    .unwrap();
    let cron = |s: &Schedule| match s {
        Schedule::Cron { cron, .. } => cron.clone(),
        Schedule::Every(_) => panic!("a cron schedule"),
    };
    let [a, b, c] = ["a", "b", "c"].map(|n| cron(&parsed.application(n).unwrap().schedule));
    let window = cron(&parsed.application("b").unwrap().blackout_windows[0].schedule);
    // The default schedule, 0 1 * * *, parsed once for a and b; 0 2 * * * once for c and b's window.
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert!(std::sync::Arc::ptr_eq(&c, &window));
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
}

#[test]
fn the_example_config_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"))
        .unwrap();
    let c = config::from_yaml(&text).unwrap();
    assert!(!c.applications.is_empty());
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    assert_names(
        &format!(
            "{PLATFORM}  - name: x\n    kind: vvp\n    url: http://a\n    maxConcurent: 3\napplications: []\n"
        ),
        &[
            "platforms[1].maxConcurent",
            "unknown field",
            "maxConcurrent",
        ],
    );
    assert_names(
        &with_apps("  - name: a\n    schedul: \"@daily\"\n"),
        &["applications[0].schedul", "unknown field"],
    );
    let text = problems(&format!("{PLATFORM}sever: {{}}\n"));
    assert!(
        text.starts_with("sever: unknown field"),
        "the path names the field once: {text}"
    );
    assert_names(
        &format!("{PLATFORM}defaults:\n  retention:\n    keepLastt: 3\n"),
        &["defaults.retention.keepLastt"],
    );
}

#[test]
fn wrong_types_name_the_field() {
    assert_names(
        &with_apps("  - name: a\n    paused: \"yes please\"\n"),
        &["applications[0].paused", "yes please", "boolean"],
    );
    // No Rust type name reaches the operator.
    let text = problems(&with_apps("  - name: a\n    retry: 3\n"));
    assert!(
        text.contains("applications[0].retry") && text.contains("a map of fields"),
        "{text}"
    );
    assert!(!text.contains("struct"), "{text}");
    let text = problems(&with_apps("  - [a, b]\n"));
    assert!(text.contains("an application name, or a map"), "{text}");
}

#[test]
fn a_bare_name_in_applications_takes_everything_from_defaults() {
    let config = config::from_yaml(&format!(
        "{PLATFORM}defaults:\n  schedule: \"0 2 * * *\"\napplications:\n  - fraud-scoring\n  - name: payments\n    paused: true\n"
    ))
    .unwrap();
    let names: Vec<_> = config
        .applications
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["fraud-scoring", "payments"]);
    assert_eq!(config.applications[0].schedule.to_string(), "0 2 * * *");
    assert!(!config.applications[0].paused && config.applications[1].paused);
    // Unknown fields of the long form are still refused, with their path.
    assert_names(
        &with_apps("  - name: a\n    schedul: x\n"),
        &["applications[0].schedul", "unknown field"],
    );
}

#[test]
fn bad_cron_expressions() {
    for (schedule, reason) in [
        ("0 1 * *", "expected 5 fields"),
        ("0 0 1 * * * 2027", "found 7"),
        ("61 * * * *", "not a cron expression"),
        ("@fortnightly", "unknown alias"),
        ("@every soon", "@every needs a duration"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
    ] {
        assert_names(
            &with_apps(&format!(
                "  - name: a\n  - name: b\n    schedule: \"{schedule}\"\n"
            )),
            &["applications[1].schedule", schedule, reason],
        );
    }
}

#[test]
fn a_schedule_that_fires_only_in_leap_years_is_accepted() {
    let config =
        config::from_yaml(&with_apps("  - name: a\n    schedule: \"0 0 29 2 *\"\n")).unwrap();
    assert_eq!(config.applications[0].schedule.to_string(), "0 0 29 2 *");
}

#[test]
fn a_bad_default_is_reported_once_under_defaults() {
    let text = problems(&format!(
        "{PLATFORM}defaults:\n  schedule: \"0 1 * *\"\napplications:\n  - name: a\n  - name: b\n"
    ));
    assert_eq!(text.matches("defaults.schedule").count(), 1, "{text}");
}

#[test]
fn bad_timezones() {
    assert_names(
        &with_apps("  - name: a\n    timezone: Mars/Olympus\n"),
        &["applications[0].timezone", "Mars/Olympus", "IANA"],
    );
    assert_names(
        &format!("{PLATFORM}defaults:\n  timezone: CEST\napplications: []\n"),
        &["defaults.timezone", "CEST"],
    );
}

#[test]
fn bad_durations() {
    assert_names(
        &with_apps("  - name: a\n    timeout: 15 minutes please\n"),
        &[
            "applications[0].timeout",
            "15 minutes please",
            "not a duration",
        ],
    );
    assert_names(
        &with_apps("  - name: a\n    retry: { backoff: 0s }\n"),
        &["applications[0].retry.backoff", "greater than zero"],
    );
    assert_names(
        &with_apps("  - name: a\n    retention: { keepWithin: forever }\n"),
        &["applications[0].retention.keepWithin", "forever"],
    );
    assert_names(
        &format!("server:\n  shutdownGrace: soon\n{PLATFORM}"),
        &["server.shutdownGrace", "soon"],
    );
    for huge in ["101y", "500000000000y"] {
        let text = problems(&with_apps(&format!("  - name: a\n    timeout: {huge}\n")));
        assert!(text.contains("applications[0].timeout"), "{text}");
        assert!(
            text.contains("at most 100y") || text.contains("not a duration"),
            "{text}"
        );
    }
}

#[test]
fn a_config_without_applications_is_refused() {
    for apps in ["applications: []\n", ""] {
        assert_names(
            &format!("{PLATFORM}{apps}"),
            &["applications: at least one application is required"],
        );
    }
}

#[test]
fn leader_election() {
    let c = config::from_yaml(&format!(
        "{PLATFORM}leaderElection: {{ enabled: true, namespace: ops, leaseDuration: 3s, renewDeadline: 2s, retryPeriod: 500ms }}\napplications: [a]\n"
    ))
    .unwrap();
    let e = c.leader_election.expect("enabled");
    assert_eq!(
        (e.lease_name.as_str(), e.namespace.as_deref()),
        ("savepointd", Some("ops"))
    );
    assert_eq!(e.retry_period, std::time::Duration::from_millis(500));
    // client-go's defaults; off unless enabled.
    let c = config::from_yaml(&format!(
        "{PLATFORM}leaderElection: {{ enabled: true }}\napplications: [a]\n"
    ))
    .unwrap();
    let e = c.leader_election.unwrap();
    assert_eq!(
        [e.lease_duration, e.renew_deadline, e.retry_period].map(|d| d.as_secs()),
        [15, 10, 2]
    );
    assert!(
        config::from_yaml(&format!("{PLATFORM}applications: [a]\n"))
            .unwrap()
            .leader_election
            .is_none()
    );

    assert_names(
        &format!("{PLATFORM}leaderElection: {{ leaseDuration: 10s, renewDeadline: 10s }}\n"),
        &["leaderElection.leaseDuration", "greater than renewDeadline"],
    );
    assert_names(
        &format!("{PLATFORM}leaderElection: {{ renewDeadline: 2s, retryPeriod: 2s }}\n"),
        &["leaderElection.renewDeadline", "1.2 × retryPeriod"],
    );
    assert_names(
        &format!(
            "{PLATFORM}leaderElection: {{ leaseName: Not_A_Name, namespace: Ops, retryPeriod: soon, leasDuration: 1s }}\n"
        ),
        &["leaderElection.leasDuration", "unknown field"],
    );
    assert_names(
        &format!(
            "{PLATFORM}leaderElection: {{ leaseName: Not_A_Name, namespace: Ops, retryPeriod: soon }}\n"
        ),
        &[
            "leaderElection.leaseName",
            "Not_A_Name",
            "leaderElection.namespace",
            "Ops",
            "leaderElection.retryPeriod",
            "soon",
        ],
    );
}

#[test]
fn leader_election_needs_a_namespace_it_can_find() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, with_apps("  - name: a\n")).unwrap();
    let run = |envs: &[(&str, &str)]| {
        let mut c = savepointd();
        c.args(["--config", path.to_str().unwrap(), "check-config"])
            .env_remove("POD_NAMESPACE");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // Environment overrides reach the section: SAVEPOINTD_LEADER_ELECTION__*.
    let on = [
        ("SAVEPOINTD_LEADER_ELECTION__ENABLED", "true"),
        ("SAVEPOINTD_LEADER_ELECTION__RETRY_PERIOD", "1s"),
    ];
    let in_cluster = std::path::Path::new(config::SERVICE_ACCOUNT_NAMESPACE).exists();
    if !in_cluster {
        let out = run(&on);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("leaderElection.namespace") && stderr.contains("POD_NAMESPACE"),
            "{stderr}"
        );
    }
    let out = run(&[on[0], on[1], ("POD_NAMESPACE", "ops")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("leader election: on (Lease ")
            && stdout
                .contains("/savepointd; leaseDuration 15s, renewDeadline 10s, retryPeriod 1s)"),
        "{stdout}"
    );
    let out = run(&[on[0], ("SAVEPOINTD_LEADER_ELECTION__RETRY_PERIOD", "9s")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("leaderElection.renewDeadline"));
}

#[test]
fn platform_references() {
    assert_names(
        &with_apps("  - name: a\n    platform: vvp-staging\n"),
        &[
            "applications[0].platform",
            "vvp-staging",
            "no such platform",
            "vvp-prod",
        ],
    );
    let two = format!(
        "{PLATFORM}  - name: other\n    kind: vvp\n    url: http://127.0.0.1:10\napplications:\n  - name: a\n"
    );
    assert_names(
        &two,
        &["applications[0].platform", "more than one platform"],
    );
    assert_names(
        "applications:\n  - name: a\n",
        &["platforms", "at least one platform"],
    );
}

#[test]
fn duplicate_names() {
    assert_names(
        &with_apps("  - name: a\n  - name: b\n  - name: a\n"),
        &[
            "applications[2].name",
            "duplicate application name",
            "applications[0]",
        ],
    );
    assert_names(
        &format!("{PLATFORM}  - name: vvp-prod\n    kind: vvp\n    url: http://b\n"),
        &["platforms[1].name", "duplicate platform name"],
    );
}

#[test]
fn platform_fields() {
    let platform = |extra: &str| {
        format!(
            "platforms:\n  - name: p\n    kind: vvp\n    url: http://127.0.0.1:9\n{extra}applications: []\n"
        )
    };
    assert_names(
        "platforms:\n  - name: p\n    kind: oracle\n    url: http://a\n",
        &["platforms[0].kind", "oracle", "vvp, flink, cmf"],
    );
    assert_names(
        "platforms:\n  - name: p\n    kind: vvp\n    url: vvp.example.com\n",
        &["platforms[0].url", "vvp.example.com"],
    );
    assert_names(
        &platform("    auth: { tokenFile: /a, tokenEnv: B }\n"),
        &["platforms[0].auth", "not both"],
    );
    assert_names(
        &platform("    maxConcurrent: 0\n"),
        &["platforms[0].maxConcurrent"],
    );
    assert_names(
        &platform("    resolve: { via: dns }\n"),
        &["platforms[0].resolve.via", "dns", "pods or api"],
    );
    assert_names(
        &platform("    resolve: { selector: \"system=vvp,(\" }\n"),
        &["platforms[0].resolve.selector", "unbalanced"],
    );
    assert_names(
        &platform("    resolve: { via: api, nameLabel: x }\n"),
        &["platforms[0].resolve.nameLabel", "only used with via: pods"],
    );
    assert_names(
        &platform("    targetDirectory: file:///x\n"),
        &["platforms[0].targetDirectory", "only for kind flink"],
    );
    // Secrets in a URL would be in every error and log line: refused, and not repeated in the error.
    for (url, reason) in [
        (
            "https://admin:s3cr3t@vvp.example.com",
            "must not carry credentials",
        ),
        (
            "https://vvp.example.com/?token=s3cr3t",
            "must not carry a query string",
        ),
    ] {
        let text = problems(&format!(
            "platforms:\n  - name: p\n    kind: vvp\n    url: \"{url}\"\n"
        ));
        assert!(
            text.contains("platforms[0].url") && text.contains(reason),
            "{text}"
        );
        assert!(!text.contains("s3cr3t"), "{text}");
    }
    assert_names(
        "platforms:\n  - name: f\n    kind: flink\n    url: http://a\n    targetDirectory: hdfs://nn/sp\n",
        &[
            "platforms[0].targetDirectory",
            "hdfs://nn/sp",
            "expected file://, s3://, gs:// or az://",
        ],
    );
}

#[test]
fn retention_and_retry_bounds() {
    assert_names(
        &with_apps("  - name: a\n    retention: { keepLast: 3, minKeep: 0 }\n"),
        &["applications[0].retention.minKeep", "at least 1"],
    );
    assert_names(
        &with_apps("  - name: a\n    retention: { scope: everything }\n"),
        &[
            "applications[0].retention.scope",
            "everything",
            "managed, userRequested or all",
        ],
    );
    assert_names(
        &with_apps("  - name: a\n    retry: { maxAttempts: 0 }\n"),
        &["applications[0].retry.maxAttempts"],
    );
    assert_names(
        &with_apps("  - name: a\n    formatType: canonical\n"),
        &["applications[0].formatType", "CANONICAL or NATIVE"],
    );
}

#[test]
fn scheduling_fields_parse_and_inherit_and_an_empty_list_turns_windows_off() {
    let config = config::from_yaml(&format!(
        r#"{PLATFORM}defaults:
  schedule: "0 * * * *"
  jitter: 5m
  blackoutWindows:
    - {{ schedule: "0 22 * * *", duration: 10h }}
  retention: {{ keepYearly: 3, keepLast: 2 }}
applications:
  - inherits
  - name: own-windows
    blackoutWindows:
      - {{ schedule: "0 8 * * 1-5", duration: 2h }}
      - {{ schedule: "0 0 1 * *", duration: 1d }}
  - name: no-windows
    blackoutWindows: []
    jitter: 0s
  - name: fewer-years
    retention: {{ keepYearly: 1 }}
"#
    ))
    .unwrap();
    let app = |name| config.application(name).unwrap();
    let windows = |name| {
        app(name)
            .blackout_windows
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(windows("inherits"), ["0 22 * * * for 10h"]);
    assert_eq!(
        windows("own-windows"),
        ["0 8 * * 1-5 for 2h", "0 0 1 * * for 1day"],
        "an application's list replaces the defaults'"
    );
    assert!(
        windows("no-windows").is_empty(),
        "an empty list turns them off"
    );
    assert_eq!(app("inherits").jitter, Duration::from_secs(300));
    assert_eq!(app("no-windows").jitter, Duration::ZERO);

    assert_eq!(app("inherits").retention.keep_yearly, 3);
    let fewer = &app("fewer-years").retention;
    assert_eq!(
        (fewer.keep_yearly, fewer.keep_last),
        (1, 2),
        "merged field by field"
    );

    // Without any of them: no jitter, no window, no yearly rule.
    let plain = config::from_yaml(&with_apps("  - name: a\n")).unwrap();
    let a = &plain.applications[0];
    assert_eq!(a.jitter, Duration::ZERO);
    assert!(a.blackout_windows.is_empty());
    assert_eq!(a.retention.keep_yearly, 0);
    // keepYearly alone is a keep rule.
    let yearly = config::from_yaml(&with_apps(
        "  - name: a\n    retention: { keepYearly: 2 }\n",
    ))
    .unwrap();
    assert!(yearly.applications[0].retention.is_enabled());
}

#[test]
fn scheduling_errors_name_the_field() {
    let app = |extra: &str| with_apps(&format!("  - name: first\n  - name: second\n{extra}"));
    assert_names(
        &app("    blackoutWindows:\n      - { schedule: \"0 22 * * *\", duration: soon }\n"),
        &[
            "applications[1].blackoutWindows[0].duration",
            "soon",
            "not a duration",
        ],
    );
    assert_names(
        &app("    blackoutWindows:\n      - { schedule: \"0 22 * * *\", duration: 0s }\n"),
        &[
            "applications[1].blackoutWindows[0].duration",
            "greater than zero",
        ],
    );
    assert_names(
        &app("    blackoutWindows:\n      - { schedule: \"0 22 * *\", duration: 1h }\n"),
        &["applications[1].blackoutWindows[0].schedule", "found 4"],
    );
    assert_names(
        &app("    blackoutWindows:\n      - { schedule: \"0 22 * * *\" }\n"),
        &[
            "applications[1].blackoutWindows[0].duration",
            "missing required field",
        ],
    );
    assert_names(
        &app(
            "    blackoutWindows:\n      - { schedule: \"0 22 * * *\", duration: 1h, until: x }\n",
        ),
        &["applications[1].blackoutWindows[0].until", "unknown field"],
    );
    assert_names(
        &app("    blackoutWindows: { schedule: \"0 22 * * *\", duration: 1h }\n"),
        &["applications[1].blackoutWindows", "a list"],
    );
    // Windows that leave no slot: refused, naming the list and the schedule they cover.
    assert_names(
        &app(
            "    schedule: \"0 1 * * *\"\n    blackoutWindows:\n      - { schedule: \"0 0 * * *\", duration: 2h }\n",
        ),
        &[
            "applications[1].blackoutWindows: every slot falls inside a blackout window",
            "0 1 * * * (applications[1].schedule)",
        ],
    );
    assert_names(
        &format!(
            "{PLATFORM}defaults:\n  blackoutWindows:\n    - {{ schedule: \"@every 1h\", duration: 1h }}\napplications:\n  - name: a\n    schedule: \"@every 30m\"\n"
        ),
        &[
            "defaults.blackoutWindows: every slot falls inside a blackout window",
            "applications[0].schedule",
        ],
    );

    assert_names(
        &app("    jitter: 25h\n"),
        &["applications[1].jitter", "25h", "at most 24h"],
    );
    assert_names(
        &app("    jitter: soon\n"),
        &["applications[1].jitter", "not a duration"],
    );
    assert_names(
        &app("    schedule: \"@every 1h\"\n    jitter: 1h\n"),
        &[
            "applications[1].jitter",
            "must be shorter than the time between two slots of the schedule @every 1h (applications[1].schedule): 1h",
        ],
    );
    assert_names(
        &format!(
            "{PLATFORM}defaults:\n  jitter: 10m\napplications:\n  - name: a\n    schedule: \"*/5 * * * *\"\n"
        ),
        &[
            "defaults.jitter",
            "shorter than the time between two slots of the schedule */5 * * * * (applications[0].schedule): 5m",
        ],
    );
    // Just below the interval is accepted.
    config::from_yaml(&with_apps(
        "  - name: a\n    schedule: \"@every 1h\"\n    jitter: 59m\n",
    ))
    .unwrap();

    assert_names(
        &app("    retention: { keepYearly: -1 }\n"),
        &["applications[1].retention.keepYearly", "-1"],
    );
}

#[test]
fn check_config_shows_jitter_windows_and_the_runs_outside_them() {
    let config = config::from_yaml(&with_apps(
        "  - name: nightly-only\n    schedule: \"0 * * * *\"\n    timezone: Europe/Berlin\n    jitter: 5m\n    blackoutWindows:\n      - { schedule: \"0 0 * * *\", duration: 23h }\n    retention: { keepYearly: 2 }\n",
    ))
    .unwrap();
    let now: chrono::DateTime<chrono::Utc> = "2026-11-20T12:00:00Z".parse().unwrap();
    let plan = savepointd::commands::check_config(&config, now);
    for needle in [
        "jitter 5m",
        "blackout 0 0 * * * for 23h",
        "keepYearly 2",
        // Only 23:00 Berlin (22:00 UTC in winter) is outside the window.
        "2026-11-20T22:00:00Z",
        "2026-11-21T22:00:00Z",
        "2026-11-22T22:00:00Z",
    ] {
        assert!(plan.contains(needle), "{needle} missing:\n{plan}");
    }
    assert!(!plan.contains("2026-11-20T13:00:00Z"), "{plan}");
}

#[test]
fn scheduling_fields_take_environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, with_apps("  - name: a\n")).unwrap();
    let check = |envs: &[(&str, &str)]| {
        let mut c = savepointd();
        c.args(["--config", path.to_str().unwrap(), "check-config"]);
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = check(&[
        ("SAVEPOINTD_DEFAULTS__JITTER", "5m"),
        (
            "SAVEPOINTD_DEFAULTS__BLACKOUT_WINDOWS",
            r#"[{schedule="0 8 * * 1-5", duration=10h}]"#,
        ),
        ("SAVEPOINTD_DEFAULTS__RETENTION__KEEP_YEARLY", "3"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in ["jitter 5m", "blackout 0 8 * * 1-5 for 10h", "keepYearly 3"] {
        assert!(stdout.contains(needle), "{needle} missing:\n{stdout}");
    }

    let out = check(&[(
        "SAVEPOINTD_DEFAULTS__BLACKOUT_WINDOWS",
        r#"[{schedule="0 8 * * 1-5", duration=forever}]"#,
    )]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("defaults.blackoutWindows[0].duration") && stderr.contains("forever"),
        "{stderr}"
    );
    let out = check(&[("SAVEPOINTD_DEFAULTS__JITTER", "2d")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("defaults.jitter"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = problems(&with_apps(
        "  - name: a\n    timezone: Nowhere\n    schedule: \"* *\"\n  - name: a\n",
    ));
    assert!(text.contains("applications[0].timezone"), "{text}");
    assert!(text.contains("applications[0].schedule"), "{text}");
    assert!(text.contains("applications[1].name"), "{text}");
}

fn savepointd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_savepointd"))
}

#[test]
fn the_binary_exits_2_on_a_bad_config_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    // A listener stands where the platform would be: a started daemon would connect to it.
    let platform = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    platform.set_nonblocking(true).unwrap();
    let url = format!("http://{}", platform.local_addr().unwrap());
    std::fs::write(
        &path,
        format!(
            "server: {{ listen: 127.0.0.1:0 }}\nplatforms:\n  - name: p\n    kind: vvp\n    url: {url}\n    resolve: {{ via: api }}\napplications:\n  - name: a\n    schedule: \"@every 1s\"\n    timezone: Nowhere/Land\n"
        ),
    )
    .unwrap();
    for command in ["run", "once", "check-config", "status"] {
        let out = savepointd()
            .args(["--config", path.to_str().unwrap(), command])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("applications[0].timezone") && stderr.contains("Nowhere/Land"),
            "{command}: {stderr}"
        );
    }
    assert!(
        platform.accept().is_err(),
        "a bad config must not reach the platform"
    );
}

#[test]
fn environment_overrides_apply_and_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, with_apps("  - name: a\n")).unwrap();
    let out = savepointd()
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env("SAVEPOINTD_DEFAULTS__SCHEDULE", "@every 10m")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("@every 10m"));

    let out = savepointd()
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env("SAVEPOINTD_SOMETHING_ELSE", "another program's variable")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = savepointd()
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env("SAVEPOINTD_DEFAULTS__FORMAT_TYPE", "SNAPPY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("defaults.formatType"));
}

#[test]
fn check_config_prints_the_plan_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "platforms:\n  - name: vvp-prod\n    kind: vvp\n    url: http://127.0.0.1:9\n    auth: { tokenEnv: VVP_TOKEN }\napplications:\n  - name: fraud-detection\n    schedule: \"0 1 * * *\"\n    timezone: Europe/Berlin\n  - name: payments\n    schedule: \"@daily-random\"\n",
    )
    .unwrap();
    let out = savepointd()
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env("VVP_TOKEN", "s3cr3t-token-value")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "fraud-detection",
        "vvp-prod",
        "0 1 * * *",
        "Europe/Berlin",
        "@daily-random (",
        "tokenEnv VVP_TOKEN",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    // 01:00 in Berlin is 00:00 UTC in winter and 23:00 UTC in summer: three next runs are listed.
    let runs = text.matches("T00:00:00Z").count() + text.matches("T23:00:00Z").count();
    assert!(runs >= 3, "{text}");
    assert!(!text.contains("s3cr3t-token-value"));

    // Tables fit the width they are given.
    let narrow = savepointd()
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env("VVP_TOKEN", "s3cr3t-token-value")
        .env("COLUMNS", "70")
        .output()
        .unwrap();
    let narrow = String::from_utf8_lossy(&narrow.stdout);
    let widest = narrow
        .lines()
        .filter(|l| l.starts_with(['│', '┌', '└', '╞']))
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    assert!(widest <= 70, "{widest} columns:\n{narrow}");
    assert!(narrow.contains("payments"), "{narrow}");

    // check-config reads the token it reports (it would fail without it), so the check above is one
    // that can fail: the value was in hand and was not printed.
    let out = savepointd()
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env_remove("VVP_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "platforms[0].auth.tokenEnv: \"VVP_TOKEN\": the environment variable is not set"
        ),
        "{err}"
    );
}

#[test]
fn applications_that_would_share_a_savepoint_directory_are_refused_naming_both() {
    let yaml = r#"
platforms:
  - name: flink-a
    kind: flink
    url: http://127.0.0.1:9
    targetDirectory: s3://flink/savepoints
  - name: flink-b
    kind: flink
    url: http://127.0.0.1:10
    targetDirectory: s3://flink/savepoints/
  - name: flink-c
    kind: flink
    url: http://127.0.0.1:11
    targetDirectory: s3://flink/other
applications:
  - name: Fraud Detection
    platform: flink-a
  - name: fraud-detection
    platform: flink-b
  - name: fraud_detection
    platform: flink-c
"#;
    let text = problems(yaml);
    assert!(
        text.contains(
            "applications[1].name: \"fraud-detection\": its savepoints would go to s3://flink/savepoints/fraud-detection/, the directory of application Fraud Detection (applications[0])"
        ),
        "{text}"
    );
    assert_eq!(
        text.lines().count(),
        1,
        "another storage is another directory: {text}"
    );

    // The binary: exit 2 before anything runs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = savepointd()
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Fraud Detection") && err.contains("fraud-detection"),
        "{err}"
    );
}

#[test]
fn text_logs_carry_no_colour_codes_when_not_at_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    // Nothing listens there: the lookup is retried and each retry is logged.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    std::fs::write(
        &path,
        format!(
            "platforms:\n  - name: vvp\n    kind: vvp\n    url: http://127.0.0.1:{port}\n    resolve: {{ via: api }}\napplications:\n  - payments\n"
        ),
    )
    .unwrap();
    let out = savepointd()
        .args([
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "text",
            "resolve",
            "payments",
        ])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sending it again"),
        "each retry is logged:\n{err}"
    );
    assert!(!err.contains('\u{1b}'), "no ANSI escape codes:\n{err}");
}

#[test]
fn an_application_can_turn_inherited_retention_off() {
    let config = config::from_yaml(&format!(
        "{PLATFORM}defaults:\n  retention: {{ keepLast: 7, keepWithin: 30d }}\napplications:\n  - name: kept\n  - name: archive\n    retention: off\n  - name: also\n    retention: false\n  - name: fewer\n    retention: {{ keepLast: 3 }}\n"
    ))
    .unwrap();
    let on: Vec<(&str, bool)> = config
        .applications
        .iter()
        .map(|a| (a.name.as_str(), a.retention.is_enabled()))
        .collect();
    assert_eq!(
        on,
        [
            ("kept", true),
            ("archive", false),
            ("also", false),
            ("fewer", true)
        ]
    );
    let plan = savepointd::commands::check_config(&config, chrono::Utc::now());
    assert!(
        plan.contains(
            "keepLast 7, keepWithin 30d (minKeep 1, scope managed, at most 20 deletions per run)"
        ),
        "check-config shows the rule:\n{plan}"
    );
    let fewer = &config.applications[3].retention;
    assert_eq!(fewer.keep_last, 3);
    assert!(
        fewer.keep_within.is_some(),
        "the other rules are still inherited"
    );
    assert_names(
        &with_apps("  - name: a\n    retention: sometimes\n"),
        &["applications[0].retention", "sometimes", "or off"],
    );
}

#[test]
fn check_config_reads_the_ca_file_as_the_client_does() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "platforms:\n  - name: vvp\n    kind: vvp\n    url: https://127.0.0.1:9\n    tls: {{ caFile: {} }}\n    resolve: {{ via: api }}\napplications: [a]\n",
            ca.display()
        ),
    )
    .unwrap();
    let check = || {
        savepointd()
            .args(["--config", path.to_str().unwrap(), "check-config"])
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("platforms[0].tls.caFile") && err.contains("holds no PEM certificate"),
        "{err}"
    );
    std::fs::remove_file(&ca).unwrap();
    let err = String::from_utf8_lossy(&check().stderr).into_owned();
    assert!(
        err.contains("platforms[0].tls.caFile") && err.contains("cannot read it"),
        "{err}"
    );
}

#[test]
fn a_cmf_platform_needs_its_environment_and_takes_statements() {
    let cmf = |fields: &str, apps: &str| {
        format!(
            "platforms:\n  - name: confluent\n    kind: cmf\n    url: https://cmf.example.com\n{fields}applications:\n{apps}"
        )
    };
    let c = config::from_yaml(&cmf(
        "    environment: prod\n    tls: { certFile: /c.pem, keyFile: /k.pem }\n",
        "  - orders\n  - name: enrich\n    statement: true\n",
    ))
    .unwrap();
    match &c.platforms[0].kind {
        config::PlatformKind::Cmf(cmf) => {
            assert_eq!(cmf.environment, "prod");
            assert_eq!(cmf.statements.iter().collect::<Vec<_>>(), ["enrich"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(c.platforms[0].client_certificate.is_some());
    assert_names(
        &cmf("", "  - orders\n"),
        &["platforms[0].environment", "required for kind cmf"],
    );
    assert_names(
        &cmf(
            "    environment: Prod_1\n    namespace: x\n    targetDirectory: file:///x\n",
            "  - orders\n",
        ),
        &[
            "platforms[0].environment",
            "platforms[0].namespace",
            "platforms[0].targetDirectory",
        ],
    );
    assert_names(
        &cmf(
            "    environment: prod\n    tls: { certFile: /c.pem }\n",
            "  - orders\n",
        ),
        &["platforms[0].tls.keyFile", "required with tls.certFile"],
    );
    // `statement` means something on CMF only; `environment` only there.
    assert_names(
        &format!("{PLATFORM}    environment: prod\napplications: [a]\n"),
        &["platforms[0].environment", "only for kind cmf"],
    );
    assert_names(
        &with_apps("  - name: a\n    statement: true\n"),
        &[
            "applications[0].statement",
            "only for applications on a cmf platform",
        ],
    );
}
