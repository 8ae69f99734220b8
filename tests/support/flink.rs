//! A real Apache Flink 2.3.0 session cluster for the black-box tests, run through
//! `scripts/flink_harness.py` (which installs Flink from PyPI, builds the demo job and starts clusters
//! bound to 127.0.0.1 on free ports).
//!
//! The cluster lives in a temporary directory (its config, logs and pid files) and is stopped when the
//! [`Cluster`] is dropped, a failing test included: then its directory is kept and printed, for the
//! logs. A small watcher process stops it as well once the test process is gone, so an interrupted run
//! (Ctrl-C) leaves no JVM behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn harness() -> PathBuf {
    repo().join("scripts").join("flink_harness.py")
}

/// Whether the real-Flink tests can run here. Without `java` they are skipped on a developer's machine
/// (with a note) and fail under CI (env `CI` set), where a missing JDK is a broken setup.
pub fn java_or_skip() -> bool {
    let found = Command::new("java")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "Java not found on PATH: the real-Flink tests need a JDK (11 or newer) and CI is set, \
             so they may not be skipped"
        );
    }
    println!("skipped: Java not found");
    false
}

/// Runs one harness command and returns the JSON object it prints.
async fn run_harness(args: Vec<String>) -> Value {
    let what = args.join(" ");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(harness())
            .args(&args)
            .stdin(Stdio::null())
            .output()
    })
    .await
    .expect("harness task")
    .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", harness().display()));
    assert!(
        output.status.success(),
        "flink_harness.py {what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "flink_harness.py {what} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn text(value: &Value, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {value}"))
        .to_owned()
}

/// Options of one submitted job (see `flink-job/README.md`).
#[derive(Default)]
pub struct Job<'a> {
    pub snapshot_sleep_ms: Option<u64>,
    pub checkpoint_timeout_ms: Option<u64>,
    /// Restore from this savepoint.
    pub savepoint: Option<&'a str>,
}

pub struct Cluster {
    pub rest_url: String,
    dir: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

/// How long the test cluster remembers a savepoint trigger id after the savepoint ended.
pub const TRIGGER_ID_MEMORY_SECS: u64 = 10;

impl Cluster {
    /// Installs Flink if needed (cached after the first time) and starts a session cluster with one
    /// TaskManager of four slots.
    pub async fn start() -> Cluster {
        run_harness(vec!["install".into()]).await;
        let dir = tempfile::Builder::new()
            .prefix("savepointd-flink-")
            .tempdir()
            .unwrap();
        let path = dir.path().display().to_string();
        let watcher = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; exec python3 '{harness}' stop --dir '{path}'",
            pid = std::process::id(),
            harness = harness().display(),
        );
        // Started in the background of a shell that exits at once, so that it outlives this process
        // (its job) and is never a child left to reap.
        let detached = Command::new("sh")
            .args(["-c", &format!("({watcher}) >/dev/null 2>&1 </dev/null &")])
            .status()
            .expect("start the cluster watcher");
        assert!(detached.success(), "cluster watcher: {detached}");
        let started = run_harness(vec![
            "start".into(),
            "--dir".into(),
            path,
            "--slots".into(),
            "4".into(),
            // The JobManager forgets a trigger id this long after its savepoint ended (5 minutes by
            // default): short, so a test can show that a slot's savepoint is found without it.
            "--conf".into(),
            format!("rest.async.store-duration={TRIGGER_ID_MEMORY_SECS} s"),
        ])
        .await;
        Cluster {
            rest_url: text(&started, "rest_url"),
            dir: Some(dir),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// Submits the demo job under `name` and waits until all its tasks run; returns the job id.
    pub async fn submit(&self, name: &str, job: Job<'_>) -> String {
        let mut args: Vec<String> = ["submit", "--rest", &self.rest_url, "--name", name]
            .map(String::from)
            .to_vec();
        if let Some(ms) = job.snapshot_sleep_ms {
            args.extend(["--snapshot-sleep-ms".into(), ms.to_string()]);
        }
        if let Some(ms) = job.checkpoint_timeout_ms {
            args.extend(["--checkpoint-timeout-ms".into(), ms.to_string()]);
        }
        if let Some(savepoint) = job.savepoint {
            args.extend(["--savepoint".into(), savepoint.to_owned()]);
        }
        text(&run_harness(args).await, "job_id")
    }

    /// Cancels a job and waits until it is CANCELED.
    pub async fn cancel(&self, job_id: &str) {
        run_harness(
            ["cancel", "--rest", &self.rest_url, "--job", job_id]
                .map(String::from)
                .to_vec(),
        )
        .await;
    }

    /// `GET <rest_url><path>` as JSON.
    pub async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.rest_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(response.status().is_success(), "GET {path}: {response:?}");
        response.json().await.unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let _ = Command::new("python3")
            .arg(harness())
            .args(["stop", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if std::thread::panicking() {
            let kept = dir.keep();
            eprintln!("Flink cluster logs kept in {}", kept.join("log").display());
        }
    }
}
