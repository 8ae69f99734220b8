//! Chaos: the daemon as its real binary against the VVP simulator, and against the CMF simulator, with a
//! seeded fault plan on POST and
//! DELETE (answers lost after the savepoint was made or the deletion accepted, answers later than the
//! request timeout, 5xx, connections dropped before the request was handled), while the test kills the
//! daemon with SIGKILL at random moments and starts it again.
//!
//! Whatever happens: no slot of an application gets two savepoints, every application keeps getting
//! completed savepoints, and retention never deletes a savepoint that `keepLast` keeps.
//!
//! `CHAOS_SEED` (default: a fresh one, printed first) and `CHAOS_SECONDS` (default 24) set the run:
//! `CHAOS_SEED=1234 CHAOS_SECONDS=60 cargo test --test chaos -- --nocapture`. A seed replays the same
//! fault sequence and the same kill moments; which request meets which fault still depends on timing.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::SplitMix64;
use support::cmf_sim::{CmfSim, CmfSimOptions};
use support::fixture::annotation;
use support::unreliable::{Fault, FaultCounts, Faults, RecordedRequest};
use support::vvp_sim::{VvpSim, VvpSimOptions};
use tokio::process::Child;

const TOKEN: &str = "chaos-token";
const KEEP_LAST: usize = 2;

const APPS: [(&str, &str); 4] = [
    ("orders", "a1111111-1111-4111-8111-111111111111"),
    ("payments", "a2222222-2222-4222-8222-222222222222"),
    ("clickstream", "a3333333-3333-4333-8333-333333333333"),
    ("fraud-detection", "a4444444-4444-4444-8444-444444444444"),
];

/// How long a daemon runs before it is killed, and how long it then stays down.
const UP: (Duration, Duration) = (Duration::from_millis(1_500), Duration::from_secs(6));
const DOWN: (Duration, Duration) = (Duration::ZERO, Duration::from_millis(1_500));

/// Kill moments come from the run's seed too, from a stream of their own so that they do not shift
/// with the number of requests the fault plan saw.
const KILL_STREAM: u64 = 0x6b69_6c6c_2d39;

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={text}: {e}")))
}

/// The platform under test, behind what the run looks at: its savepoints as it keeps them, the
/// deletions it accepted, the requests it saw.
enum Platform {
    Vvp(VvpSim),
    Cmf(CmfSim),
}

/// A deletion the platform accepted: the savepoint, its state then, and how many completed savepoints
/// of its application were newer.
struct Deleted {
    savepoint: Value,
    state: String,
    newer_completed: usize,
}

impl Platform {
    async fn start(kind: &str) -> Platform {
        match kind {
            "vvp" => {
                let vvp = VvpSim::start(VvpSimOptions {
                    token: Some(TOKEN.into()),
                    complete_after: Duration::from_millis(300),
                    ..Default::default()
                })
                .await;
                for (name, id) in APPS {
                    vvp.add_deployment(name, id, "RUNNING");
                }
                Platform::Vvp(vvp)
            }
            _ => {
                let cmf = CmfSim::start(CmfSimOptions {
                    token: Some(TOKEN.into()),
                    complete_after: Duration::from_millis(300),
                    // Several pages per list.
                    max_page_size: 4,
                    ..Default::default()
                })
                .await;
                for (name, _) in APPS {
                    cmf.add_application(name, "RUNNING");
                }
                Platform::Cmf(cmf)
            }
        }
    }

    /// The platform's entry in the config file.
    fn config(&self) -> String {
        match self {
            Platform::Vvp(vvp) => format!(
                "kind: vvp\n    url: {}\n    resolve: {{ via: api }}",
                vvp.url
            ),
            Platform::Cmf(cmf) => format!("kind: cmf\n    url: {}\n    environment: prod", cmf.url),
        }
    }

    fn set_faults(&self, faults: Faults) {
        match self {
            Platform::Vvp(vvp) => vvp.set_faults(faults),
            Platform::Cmf(cmf) => cmf.network(|n| n.set_faults(faults)),
        }
    }

    fn clear_faults(&self) {
        match self {
            Platform::Vvp(vvp) => vvp.clear_faults(),
            Platform::Cmf(cmf) => cmf.network(|n| n.clear_faults()),
        }
    }

    fn fault_counts(&self) -> FaultCounts {
        match self {
            Platform::Vvp(vvp) => vvp.fault_counts(),
            Platform::Cmf(cmf) => cmf.network(|n| n.fault_counts()),
        }
    }

    fn triggers(&self) -> Vec<Value> {
        match self {
            Platform::Vvp(vvp) => vvp.triggers(),
            Platform::Cmf(cmf) => cmf.triggers(),
        }
    }

    fn savepoints(&self) -> Vec<Value> {
        match self {
            Platform::Vvp(vvp) => vvp.savepoints(),
            Platform::Cmf(cmf) => cmf.savepoints(),
        }
    }

    fn requests(&self) -> Vec<RecordedRequest> {
        match self {
            Platform::Vvp(vvp) => vvp.requests(),
            Platform::Cmf(cmf) => cmf.requests(),
        }
    }

    fn deletions(&self) -> Vec<Deleted> {
        match self {
            Platform::Vvp(vvp) => vvp
                .deletions()
                .into_iter()
                .map(|d| Deleted {
                    savepoint: d.savepoint,
                    state: d.state,
                    newer_completed: d.newer_completed,
                })
                .collect(),
            Platform::Cmf(cmf) => cmf
                .deletions()
                .into_iter()
                .map(|d| Deleted {
                    savepoint: d.savepoint,
                    state: d.state,
                    newer_completed: d.newer_completed,
                })
                .collect(),
        }
    }

    /// The terminal states the platform lets savepointd delete from (DESIGN.md §5 rule 2).
    fn deletable(&self, state: &str) -> bool {
        match self {
            Platform::Vvp(_) => matches!(state, "COMPLETED" | "FAILED" | "FAILED_DELETION"),
            Platform::Cmf(_) => matches!(state, "COMPLETED" | "FAILED" | "ABANDONED"),
        }
    }
}

fn config(platform: &Platform, dir: &Path) -> PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let apps: String = APPS
        .iter()
        .map(|(name, _)| format!("  - name: {name}\n"))
        .collect();
    let yaml = format!(
        r#"
server: {{ listen: "127.0.0.1:0", shutdownGrace: 2s }}
defaults:
  schedule: "*/2 * * * * *"
  retry: {{ maxAttempts: 3, backoff: 200ms }}
  retention: {{ keepLast: {KEEP_LAST} }}
platforms:
  - name: platform
    {platform}
    auth: {{ tokenFile: {token} }}
    maxConcurrent: 8
    requestTimeout: 1s
applications:
{apps}"#,
        platform = platform.config(),
        token = token.display(),
    );
    // A config the binary refuses would show only as daemons that exit at once.
    if let Err(e) = savepointd::config::from_yaml(&yaml) {
        panic!("the chaos config is invalid: {e}\n{yaml}");
    }
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Starts `savepointd run`, its output in a log file of its own.
fn start(config: &Path, log: &Path) -> Child {
    support::daemon_command(config, log)
        .spawn()
        .expect("start savepointd")
}

/// SIGTERM, then the daemon's own shutdown; SIGKILL if it has not ended 10 s later.
async fn stop(mut child: Child) -> Option<ExitStatus> {
    if let Some(status) = child.try_wait().expect("wait for savepointd") {
        return Some(status);
    }
    let pid = child.id().expect("a running child has a pid");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill -TERM");
    assert!(sent.success(), "kill -TERM {pid}");
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(status) => Some(status.expect("wait for savepointd")),
        Err(_) => {
            child.kill().await.expect("kill savepointd");
            None
        }
    }
}

fn app_of(savepoint: &Value) -> String {
    annotation(savepoint, "savepointd.io/application").to_string()
}

/// VVP's `createdAt`, CMF's `creationTimestamp`.
fn created_at(savepoint: &Value) -> &str {
    let metadata = &savepoint["metadata"];
    metadata["createdAt"]
        .as_str()
        .or(metadata["creationTimestamp"].as_str())
        .unwrap_or("")
}

/// VVP's id, CMF's name.
fn id_of(savepoint: &Value) -> &str {
    let metadata = &savepoint["metadata"];
    metadata["id"]
        .as_str()
        .or(metadata["name"].as_str())
        .unwrap_or("")
}

/// The POSTs that asked for a savepoint of this application and slot, with what each met, for a
/// failure message: `201 lost`, `503 injected`, `201 late 1.5s`, `dropped`.
fn posts_for(requests: &[RecordedRequest], app: &str, slot: &str) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.method == "POST")
        .filter(|r| {
            let annotations = r.body.as_ref().map(|b| &b["metadata"]["annotations"]);
            annotations.is_some_and(|a| {
                a["savepointd.io/application"] == app && a["savepointd.io/slot"] == slot
            })
        })
        .map(|r| match r.fault {
            None => r.status.to_string(),
            Some(Fault::DropBefore) => "dropped".to_string(),
            Some(Fault::Status(status)) => format!("{status} injected"),
            Some(Fault::LoseAfter) => format!("{} lost", r.status),
            Some(Fault::Slow(by)) => format!("{} late {by:?}", r.status),
        })
        .collect()
}

/// The log lines that name any of these savepoints, for a failure message.
fn log_lines(logs: &[PathBuf], ids: &[&str]) -> Vec<String> {
    logs.iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            text.lines()
                .filter(|l| ids.iter().any(|id| l.contains(id)))
                .map(|l| format!("{name}: {l}"))
                .collect::<Vec<_>>()
        })
        .take(20)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_stay_single_and_retention_safe_under_faults_and_kills() {
    chaos("vvp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmf_slots_stay_single_and_retention_safe_under_faults_and_kills() {
    chaos("cmf").await;
}

async fn chaos(kind: &str) {
    let seed = env_number("CHAOS_SEED").unwrap_or_else(support::random_u64);
    let seconds = env_number("CHAOS_SECONDS").unwrap_or(24);
    println!("chaos {kind}: CHAOS_SEED={seed} CHAOS_SECONDS={seconds}");

    let platform = Platform::start(kind).await;
    platform.set_faults(Faults {
        seed,
        drop_before: 0.05,
        lose_after: 0.15,
        server_error: 0.15,
        slow: 0.08,
        // Later than requestTimeout: the daemon gives up on a request that took effect.
        slow_by: Duration::from_millis(1_500),
        methods: vec!["POST".into(), "DELETE".into()],
    });
    let dir = tempfile::tempdir().unwrap();
    let config = config(&platform, dir.path());
    let mut kills = SplitMix64::new(seed ^ KILL_STREAM);

    let mut logs = vec![dir.path().join("daemon-0.log")];
    let mut daemon = start(&config, &logs[0]);
    let mut started = Instant::now();
    let mut crashes = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    loop {
        let up = kills.between(UP.0, UP.1);
        let left = end.saturating_duration_since(Instant::now());
        if up >= left {
            tokio::time::sleep(left).await;
            break;
        }
        tokio::time::sleep(up).await;
        match daemon.try_wait().unwrap() {
            Some(status) => crashes.push((logs.len() - 1, status)),
            // SIGKILL to the child this test started, and reaped.
            None => daemon.kill().await.expect("kill -9 savepointd"),
        }
        tokio::time::sleep(kills.between(DOWN.0, DOWN.1)).await;
        logs.push(dir.path().join(format!("daemon-{}.log", logs.len())));
        daemon = start(&config, logs.last().unwrap());
        started = Instant::now();
    }
    // The last daemon gets SIGTERM only once it has been up a while: a signal in the first
    // milliseconds of a process, before it could install its handler, ends it by default.
    tokio::time::sleep_until((started + UP.0).into()).await;
    if let Some(status) = daemon.try_wait().unwrap() {
        crashes.push((logs.len() - 1, status));
    }
    let last_exit = stop(daemon).await;
    platform.clear_faults();
    // Savepoints still in flight complete on the platform by themselves.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // ---------------------------------------------------------------------------------------------
    // Figures

    let triggers = platform.triggers();
    let mut by_slot: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for t in &triggers {
        let slot = annotation(t, "savepointd.io/slot").to_string();
        by_slot.entry((app_of(t), slot)).or_default().push(t);
    }
    let duplicates: Vec<_> = by_slot.iter().filter(|(_, ts)| ts.len() > 1).collect();
    let deletions = platform.deletions();
    let savepoints = platform.savepoints();
    let mut completed: BTreeMap<String, usize> =
        APPS.iter().map(|(name, _)| (name.to_string(), 0)).collect();
    let still_there = savepoints
        .iter()
        .filter(|s| s["status"]["state"] == "COMPLETED");
    let deleted_completed = deletions
        .iter()
        .filter(|d| d.state == "COMPLETED")
        .map(|d| &d.savepoint);
    for s in still_there.chain(deleted_completed) {
        *completed.entry(app_of(s)).or_default() += 1;
    }
    let mut deleted_by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &deletions {
        *deleted_by_state.entry(d.state.as_str()).or_default() += 1;
    }
    let requests = platform.requests();
    let lost: BTreeMap<&str, usize> =
        requests
            .iter()
            .filter(|r| r.lost)
            .fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r.method.as_str()).or_default() += 1;
                m
            });
    let faults = platform.fault_counts();
    println!(
        "chaos {kind}: seed {seed}, {seconds} s, {} requests, faults injected: {} lost after handling {lost:?}, \
         {} late by 1.5 s, {} 503, {} dropped before handling",
        requests.len(),
        faults.lose_after,
        faults.slow,
        faults.server_error,
        faults.drop_before,
    );
    println!(
        "chaos {kind}: {} daemon starts ({} restarts after kill -9), {} exited by themselves, last exit {last_exit:?}",
        logs.len(),
        logs.len() - 1,
        crashes.len(),
    );
    println!(
        "chaos {kind}: {} savepoints triggered for {} slots; {} slots with more than one savepoint ({} extra savepoints)",
        triggers.len(),
        by_slot.len(),
        duplicates.len(),
        duplicates.iter().map(|(_, ts)| ts.len() - 1).sum::<usize>(),
    );
    println!("chaos {kind}: completed per application: {completed:?}");
    println!(
        "chaos {kind}: {} deletions accepted, by state then: {deleted_by_state:?}",
        deletions.len()
    );

    // ---------------------------------------------------------------------------------------------
    // Assertions, after every figure is out

    let mut problems = Vec::new();
    for ((app, slot), ts) in &duplicates {
        let ids: Vec<&str> = ts.iter().map(|t| id_of(t)).collect();
        let made: Vec<String> = ts
            .iter()
            .map(|t| format!("{} at {}", id_of(t), created_at(t)))
            .collect();
        problems.push(format!(
            "{app} slot {slot}: {} savepoints: {made:?}\n    POSTs for the slot, in order: {:?}\n    {}",
            ts.len(),
            posts_for(&requests, app, slot),
            log_lines(&logs, &ids).join("\n    ")
        ));
    }
    let wanted = (seconds / 8).max(1) as usize;
    for (app, n) in &completed {
        if *n < wanted {
            problems.push(format!(
                "{app}: {n} savepoints completed, fewer than {wanted}"
            ));
        }
    }
    let unsafe_deletions: Vec<&Deleted> = deletions
        .iter()
        .filter(|d| {
            !platform.deletable(&d.state)
                || (d.state == "COMPLETED" && d.newer_completed < KEEP_LAST)
        })
        .collect();
    for d in unsafe_deletions {
        problems.push(format!(
            "{} deleted savepoint {} ({}, created {}) with {} newer completed: keepLast {KEEP_LAST} keeps it",
            app_of(&d.savepoint),
            id_of(&d.savepoint),
            d.state,
            created_at(&d.savepoint),
            d.newer_completed,
        ));
    }
    for (index, status) in &crashes {
        problems.push(format!("daemon-{index} exited by itself: {status}"));
    }
    if !last_exit.is_some_and(|s| s.success()) {
        problems.push(format!(
            "the last daemon did not exit 0 within 10 s of SIGTERM: {last_exit:?}"
        ));
    }
    if !problems.is_empty() {
        let kept = dir.keep();
        panic!(
            "chaos run against {kind} with CHAOS_SEED={seed} CHAOS_SECONDS={seconds} broke {} rule(s) (daemon logs in {}):\n{}",
            problems.len(),
            kept.display(),
            problems.join("\n")
        );
    }
}
