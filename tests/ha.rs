//! High availability (DESIGN.md §9): several replicas of the real binary against the fake Kubernetes
//! API server (which holds the Lease) and the VVP simulator. Exactly one leads; a leader killed with
//! SIGKILL or stopped with SIGTERM is replaced; a leader cut off from the API server stops acting before
//! its lease could be taken; and a leader frozen past its lease (SIGSTOP) that wakes next to a new one
//! makes no second savepoint for any slot.
//!
//! Durations are short (lease 3 s, renew deadline 2 s, retry 500 ms). Takeover times are measured and
//! printed (`cargo test --test ha -- --nocapture`); only generous bounds are asserted, where a bound is
//! the point.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::eventually;
use support::fixture::annotation;
use support::kube_fake::KubeFake;
use support::vvp_sim::{VvpSim, VvpSimOptions};
use tokio::process::{Child, Command};

const TOKEN: &str = "vvp-ha-token";
const NAMESPACE: &str = "ops";
const LEASE: &str = "savepointd";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY_PERIOD: Duration = Duration::from_millis(500);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

const APPS: [(&str, &str); 3] = [
    ("orders", "b1111111-1111-4111-8111-111111111111"),
    ("payments", "b2222222-2222-4222-8222-222222222222"),
    ("clickstream", "b3333333-3333-4333-8333-333333333333"),
];

/// The tests measure takeover times: one at a time, so that they do not share two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct World {
    vvp: VvpSim,
    kube: KubeFake,
    dir: tempfile::TempDir,
    config: PathBuf,
}

async fn world() -> World {
    world_with("*/2 * * * * *", Duration::from_millis(300)).await
}

/// `schedule` for every application; savepoints stay in flight for `complete_after`.
async fn world_with(schedule: &str, complete_after: Duration) -> World {
    let vvp = VvpSim::start(VvpSimOptions {
        token: Some(TOKEN.into()),
        complete_after,
        ..Default::default()
    })
    .await;
    for (name, id) in APPS {
        vvp.add_deployment(name, id, "RUNNING");
    }
    let kube = KubeFake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let apps: String = APPS
        .iter()
        .map(|(name, _)| format!("  - name: {name}\n"))
        .collect();
    // `enabled` comes from SAVEPOINTD_LEADER_ELECTION__ENABLED (see `Replica::start`): environment
    // overrides reach the new section as they reach every other.
    let yaml = format!(
        r#"
server: {{ listen: "127.0.0.1:0", shutdownGrace: {grace} }}
kubernetes: {{ kubeconfig: {kubeconfig} }}
leaderElection:
  namespace: {NAMESPACE}
  leaseName: {LEASE}
  leaseDuration: {lease}
  renewDeadline: {renew}
  retryPeriod: {retry}
defaults:
  schedule: "{schedule}"
  retry: {{ maxAttempts: 3, backoff: 200ms }}
platforms:
  - name: vvp
    kind: vvp
    url: {url}
    auth: {{ tokenFile: {token} }}
    requestTimeout: 1s
    resolve: {{ via: api }}
applications:
{apps}"#,
        grace = humantime::format_duration(SHUTDOWN_GRACE),
        kubeconfig = kubeconfig.display(),
        lease = humantime::format_duration(LEASE_DURATION),
        renew = humantime::format_duration(RENEW_DEADLINE),
        retry = humantime::format_duration(RETRY_PERIOD),
        url = vvp.url,
        token = token.display(),
    );
    if let Err(e) = savepointd::config::from_yaml(&yaml) {
        panic!("the HA config is invalid: {e}\n{yaml}");
    }
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, yaml).unwrap();
    World {
        vvp,
        kube,
        dir,
        config,
    }
}

/// One `savepointd run`, its output in a log file of its own. Killed on drop, so that a failing test
/// leaves no process behind.
struct Replica {
    name: String,
    port: u16,
    child: Child,
    log: PathBuf,
    http: reqwest::Client,
}

impl Replica {
    fn start(world: &World, name: &str) -> Replica {
        let port = support::free_port();
        let log = world.dir.path().join(format!("{name}.log"));
        let child = support::daemon_command(&world.config, &log)
            .env("SAVEPOINTD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("SAVEPOINTD_LEADER_ELECTION__ENABLED", "true")
            .env("POD_NAME", name)
            .spawn()
            .expect("start savepointd");
        Replica {
            name: name.into(),
            port,
            child,
            log,
            // A stopped replica answers nothing: never wait long for it.
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .send()
            .await
            .ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    }

    /// `savepointd_leader` as this replica exports it; `None` while it does not answer.
    async fn leader(&self) -> Option<bool> {
        let (_, text) = self.get("/metrics").await?;
        text.lines()
            .find_map(|l| l.strip_prefix("savepointd_leader "))
            .map(|v| v.trim() == "1")
    }

    /// Whether this replica reports that it leads within `timeout`.
    async fn leads_within(&self, timeout: Duration) -> bool {
        eventually(timeout, || async {
            self.leader().await.unwrap_or(false).then_some(())
        })
        .await
        .is_some()
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the replica runs")
    }

    /// Sends a signal to this replica, and only to it.
    fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {}", self.pid());
    }

    async fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .map(|s| s.expect("wait for savepointd"))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Two replicas, once exactly one of them leads: the replicas and the leader's index.
async fn two_replicas(world: &World) -> (Vec<Replica>, usize) {
    let replicas = vec![
        Replica::start(world, "replica-a"),
        Replica::start(world, "replica-b"),
    ];
    let all: Vec<&Replica> = replicas.iter().collect();
    let leader = sole_leader(&all, ELECTION).await.expect("one leads");
    (replicas, leader)
}

/// The one replica that reports `savepointd_leader 1`, once exactly one does (the others answering
/// 0); `None` if that does not happen within `timeout`.
async fn sole_leader(replicas: &[&Replica], timeout: Duration) -> Option<usize> {
    eventually(timeout, || async {
        let mut leaders = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            match r.leader().await {
                Some(true) => leaders.push(i),
                Some(false) => {}
                None => return None,
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
}

/// Savepoints triggered, grouped by (application, slot).
fn by_slot(vvp: &VvpSim) -> BTreeMap<(String, String), Vec<Value>> {
    let mut map: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for t in vvp.triggers() {
        let app = annotation(&t, "savepointd.io/application").to_string();
        let slot = annotation(&t, "savepointd.io/slot").to_string();
        map.entry((app, slot)).or_default().push(t);
    }
    map
}

fn assert_no_second_savepoint(vvp: &VvpSim, logs: &[&Replica]) {
    let slots = by_slot(vvp);
    let duplicates: Vec<String> = slots
        .iter()
        .filter(|(_, ts)| ts.len() > 1)
        .map(|((app, slot), ts)| {
            let ids: Vec<&str> = ts
                .iter()
                .map(|t| t["metadata"]["id"].as_str().unwrap_or(""))
                .collect();
            format!("{app} {slot}: {ids:?}")
        })
        .collect();
    if !duplicates.is_empty() {
        let logs: String = logs
            .iter()
            .map(|r| format!("--- {} ---\n{}", r.name, r.log_text()))
            .collect();
        panic!("slots with more than one savepoint:\n{duplicates:#?}\n{logs}");
    }
}

async fn triggers_grow_past(vvp: &VvpSim, count: usize, timeout: Duration) -> bool {
    eventually(timeout, || async {
        (vvp.triggers().len() > count).then_some(())
    })
    .await
    .is_some()
}

/// Generous enough for a loaded machine: a bound that catches "never", not a benchmark.
const ELECTION: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_leads_and_a_killed_leader_is_replaced() {
    let _serial = SERIAL.lock().await;
    let world = world().await;
    let mut replicas: Vec<Replica> = ["replica-a", "replica-b", "replica-c"]
        .iter()
        .map(|name| Replica::start(&world, name))
        .collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    let leader = sole_leader(&all, ELECTION)
        .await
        .expect("exactly one replica leads");
    // Followers are ready too (they can take over), and stay followers.
    for r in &replicas {
        assert_eq!(r.get("/healthz").await.map(|(c, _)| c), Some(200));
        let ready = eventually(ELECTION, || async {
            (r.get("/readyz").await?.0 == 200).then_some(())
        })
        .await;
        assert!(ready.is_some(), "{} is not ready", r.name);
    }
    assert!(
        triggers_grow_past(&world.vvp, 0, ELECTION).await,
        "the leader triggers savepoints"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sole_leader(&all, ELECTION).await, Some(leader));
    let holder = world.kube.lease_holder(NAMESPACE, LEASE).unwrap();
    assert!(
        holder.starts_with(&format!("{}_", replicas[leader].name)),
        "the Lease names the leader: {holder}"
    );

    // `status` names the replica that leads, from the Lease.
    let status = Command::new(env!("CARGO_BIN_EXE_savepointd"))
        .args(["status", "--config"])
        .arg(&world.config)
        .env("SAVEPOINTD_LEADER_ELECTION__ENABLED", "true")
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains(&format!("leader: {holder} (Lease {NAMESPACE}/{LEASE}")),
        "{shown}\n{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // kill -9: no release, the followers wait for the lease to run out.
    let dead = replicas.remove(leader);
    let pid = dead.pid();
    dead.signal("KILL");
    let killed = Instant::now();
    let mut dead = dead;
    assert!(dead.exited_within(Duration::from_secs(10)).await.is_some());
    let rest: Vec<&Replica> = replicas.iter().collect();
    let successor = sole_leader(&rest, ELECTION)
        .await
        .expect("a follower takes over");
    let takeover = killed.elapsed();
    let takeover_at = chrono::Utc::now();
    let before = world.vvp.triggers().len();
    assert!(
        triggers_grow_past(&world.vvp, before, ELECTION).await,
        "the new leader acts"
    );
    let acting = killed.elapsed();
    let expected = LEASE_DURATION + RETRY_PERIOD;
    println!(
        "ha: kill -9 of {} (pid {pid}): {} leads after {takeover:?} and triggers after {acting:?} \
         (expected within leaseDuration + retryPeriod = {expected:?})",
        dead.name, replicas[successor].name
    );
    assert!(
        takeover < expected * 3,
        "takeover took {takeover:?}, more than 3 × {expected:?}"
    );

    // The latest slot that fell before the takeover gets its savepoint: the new leader catches up
    // a slot missed within startingDeadline, as a restarted daemon does.
    let t = takeover_at.timestamp();
    let gap_slot = chrono::DateTime::from_timestamp(t - t % 2, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let covered = eventually(Duration::from_secs(10), || async {
        let slots = by_slot(&world.vvp);
        APPS.iter()
            .all(|(app, _)| slots.contains_key(&(app.to_string(), gap_slot.clone())))
            .then_some(())
    })
    .await;
    assert!(
        covered.is_some(),
        "slot {gap_slot} (the failover's) has no savepoint for every application: {:?}",
        by_slot(&world.vvp).keys().collect::<Vec<_>>()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut everyone: Vec<&Replica> = replicas.iter().collect();
    everyone.push(&dead);
    assert_no_second_savepoint(&world.vvp, &everyone);
    println!(
        "ha: {} savepoints for {} slots, none twice",
        world.vvp.triggers().len(),
        by_slot(&world.vvp).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_lease_and_a_follower_takes_over_within_seconds() {
    let _serial = SERIAL.lock().await;
    let world = world().await;
    let (mut replicas, leader) = two_replicas(&world).await;
    assert!(triggers_grow_past(&world.vvp, 0, ELECTION).await);

    let mut old = replicas.remove(leader);
    old.signal("TERM");
    let stopped = Instant::now();
    let follower = &replicas[0];
    let took_over = follower.leads_within(ELECTION).await;
    let handover = stopped.elapsed();
    let status = old
        .exited_within(Duration::from_secs(20))
        .await
        .expect("the old leader exits");
    let exited = stopped.elapsed();
    assert!(took_over, "{} never took over", follower.name);
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");
    assert!(
        old.log_text().contains("released the Lease"),
        "{}",
        old.log_text()
    );
    println!(
        "ha: SIGTERM to {}: it exited after {exited:?}; {} leads after {handover:?} \
         (in-flight work gets shutdownGrace {SHUTDOWN_GRACE:?}, then one retry period {RETRY_PERIOD:?})",
        old.name, follower.name
    );
    // Without the release the follower would wait out the lease; with it, well within that.
    assert!(
        handover < (SHUTDOWN_GRACE + RETRY_PERIOD) * 3,
        "handover took {handover:?}"
    );
    let before = world.vvp.triggers().len();
    assert!(triggers_grow_past(&world.vvp, before, ELECTION).await);
    assert_no_second_savepoint(&world.vvp, &[follower, &old]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_before_its_lease_could_be_taken() {
    let _serial = SERIAL.lock().await;
    let world = world().await;
    let (mut replicas, leader) = two_replicas(&world).await;
    assert!(triggers_grow_past(&world.vvp, 0, ELECTION).await);

    world.kube.hold_leases(true);
    let cut = Instant::now();
    // The last renewal that reached the API server, by the leader's own clock (same machine).
    let renewed: chrono::DateTime<chrono::Utc> =
        world.kube.lease(NAMESPACE, LEASE).unwrap()["spec"]["renewTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    let mut old = replicas.remove(leader);
    let status = old
        .exited_within(ELECTION)
        .await
        .expect("a leader that cannot renew exits");
    let stopped = chrono::Utc::now();
    let after_cut = cut.elapsed();
    let after_renewal = (stopped - renewed).to_std().unwrap();
    assert!(!status.success(), "losing the Lease is a failure exit");
    let log = old.log_text();
    assert!(log.contains("lost the Lease"), "{log}");
    // The process ends when it stops acting (its mandate ran out at the same renewDeadline).
    let triggers_at_exit = world.vvp.triggers().len();
    println!(
        "ha: Lease requests held: {} stopped {after_cut:?} after the cut, {after_renewal:?} after its \
         last renewal (renewDeadline {RENEW_DEADLINE:?}; the earliest takeover is leaseDuration \
         {LEASE_DURATION:?} after it)",
        old.name
    );
    assert!(
        after_renewal < LEASE_DURATION,
        "the leader acted until {after_renewal:?} after its last renewal: a follower could have taken over"
    );

    // The API server comes back: the follower takes over once the lease has run out, and acts.
    world.kube.hold_leases(false);
    let follower = &replicas[0];
    let took_over = follower.leads_within(ELECTION).await;
    assert!(took_over, "{} never took over", follower.name);
    assert!(triggers_grow_past(&world.vvp, triggers_at_exit, ELECTION).await);
    assert_no_second_savepoint(&world.vvp, &[follower, &old]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_wakes_and_makes_no_second_savepoint() {
    let _serial = SERIAL.lock().await;
    let world = world().await;
    let (mut replicas, leader) = two_replicas(&world).await;
    assert!(triggers_grow_past(&world.vvp, 0, ELECTION).await);

    // Frozen: it cannot renew, and it cannot notice either.
    let mut frozen = replicas.remove(leader);
    frozen.signal("STOP");
    let stopped = Instant::now();
    let other = &replicas[0];
    let took_over = other.leads_within(ELECTION).await;
    let takeover = stopped.elapsed();
    assert!(took_over, "{} never took over", other.name);
    // The new leader makes the slots the frozen one would have made.
    let before = world.vvp.triggers().len();
    assert!(triggers_grow_past(&world.vvp, before, ELECTION).await);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Both believe they lead for a moment: the woken one's timers fire for slots the new leader has
    // already made.
    let woken_at = world.vvp.requests().len();
    let log_at_wake = frozen.log_text().len();
    frozen.signal("CONT");
    let woke = Instant::now();
    let status = frozen
        .exited_within(ELECTION)
        .await
        .expect("the woken leader exits");
    let exited = woke.elapsed();
    assert!(!status.success(), "losing the Lease is a failure exit");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = frozen.log_text();
    assert!(log.contains("lost the Lease"), "{log}");
    let after_wake: Vec<&str> = log[log_at_wake..]
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("savepoint"))
        .collect();
    println!(
        "ha: the woken leader's log after SIGCONT:\n  {}",
        after_wake.join("\n  ")
    );
    let posts_after_wake = world.vvp.requests()[woken_at..]
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    println!(
        "ha: SIGSTOP of {}: {} leads after {takeover:?}; after SIGCONT the old leader exited in \
         {exited:?}; {posts_after_wake} POSTs (both replicas) since the wake",
        frozen.name, other.name
    );
    assert_no_second_savepoint(&world.vvp, &[other, &frozen]);
    println!(
        "ha: {} savepoints for {} slots, none twice",
        world.vvp.triggers().len(),
        by_slot(&world.vvp).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_adopts_the_savepoint_its_frozen_predecessor_had_in_flight() {
    let _serial = SERIAL.lock().await;
    // Slots every 10 s, savepoints that take 6 s: the leader is frozen while its savepoint of a
    // slot is in flight, and its successor's catch-up meets that same slot.
    let world = world_with("*/10 * * * * *", Duration::from_secs(6)).await;
    let (mut replicas, leader) = two_replicas(&world).await;
    // A trigger made on time for its slot (not a startup catch-up of an older one).
    let slot = eventually(Duration::from_secs(30), || async {
        let now = chrono::Utc::now();
        world.vvp.triggers().iter().find_map(|t| {
            let slot: chrono::DateTime<chrono::Utc> =
                annotation(t, "savepointd.io/slot").parse().ok()?;
            ((now - slot).num_milliseconds() < 1_500).then_some(slot)
        })
    })
    .await
    .expect("the leader triggers a slot on time");
    let mut frozen = replicas.remove(leader);
    frozen.signal("STOP");
    let other = &replicas[0];
    let took_over = other.leads_within(ELECTION).await;
    assert!(took_over, "{} never took over", other.name);
    let adopted = eventually(ELECTION, || async {
        // Adopted while recovering (its first look at the platform on taking over) or when the
        // slot's run meets it.
        let log = other.log_text();
        (log.contains("adopting a savepoint in flight that an earlier process or leader started")
            || log.contains("adopting the slot's savepoint in flight"))
        .then_some(())
    })
    .await;
    frozen.signal("CONT");
    let status = frozen
        .exited_within(ELECTION)
        .await
        .expect("the woken leader exits");
    assert!(!status.success(), "losing the Lease is a failure exit");
    let slot_text = slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let made: Vec<usize> = APPS
        .iter()
        .map(|(app, _)| {
            by_slot(&world.vvp)
                .get(&(app.to_string(), slot_text.clone()))
                .map_or(0, Vec::len)
        })
        .collect();
    println!(
        "ha: {} frozen with slot {slot_text} in flight; {} adopted it: {}; savepoints per application for that slot: {made:?}",
        frozen.name,
        other.name,
        adopted.is_some()
    );
    assert!(
        adopted.is_some(),
        "the new leader did not adopt the slot's savepoint:\n{}",
        other.log_text()
    );
    assert_no_second_savepoint(&world.vvp, &[other, &frozen]);
}
