//! The metrics as Prometheus sees them: the daemon runs against the simulators (successes, failures, an
//! unresolvable name, retention deletions and a refused one), a real Prometheus (Debian package) scrapes
//! it on loopback with the alert rules loaded, and every PromQL expression of the Grafana dashboard must
//! return data, every rule must evaluate cleanly and refer only to metrics that exist, and
//! `promtool check metrics` must accept the exposition.

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::fixture::{APPS, Daemon, fixture};
use support::vvp_sim::VvpSimOptions;
use support::{eventually, free_port};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A Prometheus server this test started; stopped (by its PID) when dropped.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus(dir: &std::path::Path, target: &str) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [\"{ROOT}/charts/savepointd/rules/savepointd-alerts.yaml\"]\n\
             scrape_configs:\n  - job_name: savepointd\n    static_configs: [{{ targets: [\"{target}\"] }}]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus is installed (Debian package prometheus; scripts/test.sh installs it)");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Prometheus's answer, or `{"status": "unreachable"}` while it is still starting.
async fn query(prom: &Prometheus, promql: &str) -> Value {
    let answer = reqwest::Client::new()
        .get(format!("{}/api/v1/query", prom.url))
        .query(&[("query", promql)])
        .send()
        .await;
    match answer {
        Ok(r) => r.json().await.unwrap_or(json!({"status": "undecodable"})),
        Err(_) => json!({"status": "unreachable"}),
    }
}

fn has_data(answer: &Value) -> bool {
    answer["status"] == "success"
        && answer["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
}

/// The dashboard's and the rules' expressions, variables substituted, as `tests/promtool/exprs.py` lists
/// them with their origin.
fn expressions() -> Vec<Value> {
    let out = Command::new("python3")
        .args([&format!("{ROOT}/tests/promtool/exprs.py"), "--annotate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_alert_of_the_dashboard_and_rules_refers_to_live_metrics() {
    let f = fixture(VvpSimOptions::default()).await;
    let (failing, _) = APPS[0];
    f.vvp
        .fail_savepoints_of(APPS[0].1, "Checkpoint expired before completing");
    f.vvp.seed_savepoint(json!({
        "apiVersion": "v1", "kind": "Savepoint",
        "metadata": {"id": "refused", "namespace": "default",
            "createdAt": (chrono::Utc::now() - chrono::Duration::days(3)).to_rfc3339(),
            "deploymentId": APPS[1].1, "origin": "USER_REQUEST", "type": "FULL",
            "annotations": {"savepointd.io/managed-by": "savepointd", "savepointd.io/application": "payments"}},
        "spec": {"savepointLocation": "s3://flink/savepoints/refused"},
        "status": {"state": "COMPLETED"}
    }));
    f.vvp.deny_delete("refused", "Savepoint is referenced");
    let apps = format!(
        "  - name: {failing}\n  - name: payments\n    retention: {{ keepLast: 1 }}\n  - name: clickstream\n  - name: ghost\n"
    );
    let yaml = f.config("", &apps).replace(
        "retry: { maxAttempts: 2, backoff: 200ms }",
        "retry: { maxAttempts: 2, backoff: 200ms }\n  schedule: \"*/2 * * * * *\"",
    );
    let daemon = Daemon::start(&yaml).await;
    let target = daemon.url.trim_start_matches("http://").to_owned();
    let prom = prometheus(f.dir.path(), &target);

    // Enough scrapes for rate() and increase() over a minute, and every kind of event at least once.
    let live = eventually(Duration::from_secs(60), || async {
        for q in [
            "savepointd_retention_deleted_total > 0",
            "savepointd_retention_delete_failures_total > 0",
            "savepointd_savepoint_failure_total > 0",
            "savepointd_runs_skipped_total > 0",
            "count_over_time(up{job=\"savepointd\"}[1m]) > 10",
        ] {
            if !has_data(&query(&prom, q).await) {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(live.is_some(), "the daemon's events reached Prometheus");

    let mut missing = Vec::new();
    for e in expressions() {
        let expr = e["expr"].as_str().unwrap();
        let source = e["source"].as_str().unwrap_or("");
        let origin = format!("{source} {}", e["title"].as_str().unwrap_or(""));
        let answer = query(&prom, expr).await;
        assert_eq!(answer["status"], "success", "{origin}: {expr}: {answer}");
        if source == "alert" || source == "record" {
            // An alert expression returns data only when it fires; what it must not do is refer to a
            // metric that does not exist.
            for metric in metric_names(expr) {
                if !has_data(&query(&prom, &format!("count({{__name__=\"{metric}\"}})")).await) {
                    missing.push(format!("{origin}: {metric}"));
                }
            }
        } else if !has_data(&answer) {
            missing.push(format!("{origin}: {expr}"));
        }
    }
    assert!(missing.is_empty(), "no data for:\n{}", missing.join("\n"));

    let rules: Value = reqwest::get(format!("{}/api/v1/rules", prom.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert!(!groups.is_empty());
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let firing: Value = query(&prom, "ALERTS{alertname=\"SavepointdSavepointFailing\"}").await;
    assert_eq!(firing["status"], "success");

    // promtool lints the exposition itself.
    let exposition = daemon.get("/metrics").await.1;
    daemon.stop().await;
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed");
    lint.stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `savepointd_*` metric names an expression reads (recording rules, `savepointd:*`, excluded).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("savepointd_") {
        let preceded_by_name_char = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_name_char {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    names
}
