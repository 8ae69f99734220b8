//! DESIGN.md §7, head to head: savepointd against the recipe it replaces, the blog's CronJob script
//! (`scripts/blog-savepoints.sh`: per application, one after the other, `kubectl get pods -l … -o json |
//! jq`, then `curl -X POST`), in one run, on the same fakes: the VVP simulator answering every request in
//! 10 ms (as `benches/tick.rs`), savepoints completing 50 ms after their trigger, and the fake Kubernetes
//! API server with one pod per application, labelled as VVP labels them. Before every run the simulator
//! is reset to the same history, seven completed savepoints per deployment, so that no run meets the
//! savepoints of the runs before it.
//!
//! Contenders, alternated within each round so that a drift of the machine's load hits all of them:
//! the script; `savepointd once` (started like the script, by a CronJob); the daemon (`savepointd run`,
//! whose schedule puts one slot a few seconds after it is ready). savepointd runs with `maxConcurrent`
//! unbounded (= N) and at 16: 16 bounds the load on the JobManagers (at most 16 savepoints in flight at
//! once, each a checkpoint's worth of I/O on a job) and pays for it in time, while the script has no bound
//! at all and is only gentle because it is slow.
//!
//! Per contender and N (100 and 500 applications), the medians of three rounds of:
//! - **first / all triggered after**: from the start of the process (script, `once`) or from the slot
//!   (daemon) to the simulator's `createdAt` of the first and the last savepoint triggered;
//! - **Kubernetes requests** counted at the fake from the start (the daemon: just before the slot) to the
//!   last trigger; **platform requests** from the simulator's request log over the same span;
//! - **client CPU** (user + system): the script and `once` run under `/usr/bin/time`, which reports the
//!   `wait4` usage of the process and every child it waited for (bash, kubectl, jq, curl); the daemon's
//!   own `/proc/<pid>/stat` ticks from just before the slot until its requests for the slot have ended.
//!   Both in steps of 10 ms. Each contender's figure covers all it does for the N applications:
//!   savepointd also follows each savepoint until it completes, which the script does not do.
//!
//! A second table gives the requests per application and tick (or `once` run), counted until the
//! contender's requests have ended, by kind. A third part checks that the simulators are not the
//! bottleneck. What it found on this 2-core machine, and what was changed in `tests/support` for it:
//! - listen backlog: `TcpListener::bind` listens with 128 (mio ≥ 1.1, as the standard library), and a
//!   burst of 1,000 new connections overflowed the accept queue 235–762 times (`TcpExtListenOverflows`),
//!   each a handshake the client retries a retransmission timeout later. The fakes now listen with 1,024
//!   (`ss` shows it): no overflow in the burst nor over all the contenders' runs.
//! - Nagle: the fakes now set TCP_NODELAY on accepted connections; 300 kept-alive round trips in a row
//!   showed no 40 ms delayed-ACK stall before or after (slowest 1.7–17 ms, the larger a full pod list).
//! - the simulator's own work: it answers one request at a time, and it used to find a savepoint, or a
//!   deployment's savepoints, by walking the JSON of every savepoint it held. Without the reset above,
//!   the history grew over the rounds (to ~9,000 savepoints) and the daemon's tick of 500 went from
//!   0.24 s in the first round to 4.3 s in the third; with the 3,500 of the reset, a list or a get took
//!   a 1.8–3 ms round trip against 1.3 ms for a request that walks nothing. With the ids kept beside each
//!   savepoint, a list or a get costs the same ~1.3 ms as any request (most of it tokio's 1 ms timer,
//!   the simulated latency being 0 then), and 1,000 lists on new connections at once are all answered
//!   within ~0.25 s, their client in the same process on the same two cores.
//!
//! Run: `cargo bench --bench head_to_head` (about ten minutes on a 2-core machine: the script takes
//! ~0.09 s per application). `HEAD_TO_HEAD_SIZES=20,50` and `HEAD_TO_HEAD_ROUNDS=1` shorten it;
//! `HEAD_TO_HEAD_CHECKS_ONLY=1` runs only the simulator checks. It prints Markdown (the README quotes it).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use support::kube_fake::KubeFake;
use support::vvp_sim::{RecordedRequest, VvpSim, VvpSimOptions};
use support::{eventually, free_port};
use tokio::process::{Child, Command};

const LATENCY: Duration = Duration::from_millis(10);
/// A `maxConcurrent` that bounds the JobManagers' load.
const BOUNDED: usize = 16;
const KUBERNETES_NAMESPACE: &str = "flink";
const TOKEN: &str = "head-to-head-token";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/blog-savepoints.sh");
/// Linux reports a process's CPU time in /proc in clock ticks of 1/100 s.
const TICK: Duration = Duration::from_millis(10);

fn sizes() -> Vec<usize> {
    std::env::var("HEAD_TO_HEAD_SIZES")
        .ok()
        .map(|v| v.split(',').map(|n| n.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| vec![100, 500])
}

fn rounds() -> usize {
    std::env::var("HEAD_TO_HEAD_ROUNDS")
        .ok()
        .map_or(3, |v| v.parse().unwrap())
}

struct World {
    vvp: VvpSim,
    kube: KubeFake,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    token_file: PathBuf,
}

fn name(i: usize) -> String {
    format!("app-{i:04}")
}

async fn world(applications: usize) -> World {
    let vvp = VvpSim::start(VvpSimOptions {
        latency: LATENCY,
        complete_after: Duration::from_millis(50),
        token: Some(TOKEN.to_string()),
        ..Default::default()
    })
    .await;
    let kube = KubeFake::start().await;
    for i in 0..applications {
        let id = format!("00000000-0000-4000-8000-{i:012}");
        vvp.add_deployment(&name(i), &id, "RUNNING");
        kube.add_pod(
            KUBERNETES_NAMESPACE,
            &format!("job-{id}-jobmanager"),
            &[
                ("system", "ververica-platform"),
                ("deploymentName", &name(i)),
                ("deploymentId", &id),
            ],
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    World {
        vvp,
        kube,
        dir,
        kubeconfig,
        token_file,
    }
}

/// Completed savepoints each deployment has when a run starts: the README's example keeps the last
/// seven. savepointd reads them (its look at an application's savepoints before a trigger); the script
/// never does.
const HISTORY: usize = 7;

impl World {
    /// Every run starts from the same platform: each deployment with its history of completed
    /// savepoints, one a day, and nothing in flight. (Without this, each run would meet the savepoints
    /// of every run before it.)
    fn reset(&self, applications: usize) {
        self.vvp.forget_savepoints();
        let now = Utc::now();
        for i in 0..applications {
            let id = format!("00000000-0000-4000-8000-{i:012}");
            for day in 1..=HISTORY {
                let at = (now - chrono::Duration::days(day as i64))
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                self.vvp.seed_savepoint(serde_json::json!({
                    "metadata": {
                        "deploymentId": id,
                        "createdAt": at,
                        "modifiedAt": at,
                        "origin": "USER_REQUEST",
                        "type": "FULL",
                        "annotations": {},
                        "resourceVersion": 2,
                    },
                    "spec": {
                        "savepointLocation": format!("s3://flink/savepoints/{id}/{day}"),
                    },
                    "status": { "state": "COMPLETED" },
                }));
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Contender {
    Blog,
    Once { max_concurrent: usize },
    Daemon { max_concurrent: usize },
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Blog => "blog script (kubectl + jq + curl)",
            Contender::Once { .. } => "`savepointd once`",
            Contender::Daemon { .. } => "`savepointd run` (daemon), one tick",
        }
    }

    fn max_concurrent(self, n: usize) -> String {
        match self {
            Contender::Blog => "none (sequential)".into(),
            Contender::Once { max_concurrent } | Contender::Daemon { max_concurrent } => {
                if max_concurrent >= n {
                    format!("{max_concurrent} (unbounded)")
                } else {
                    max_concurrent.to_string()
                }
            }
        }
    }
}

/// Platform requests by what they are for.
#[derive(Clone, Copy, Debug, Default)]
struct Kinds {
    /// `GET …/savepoints?…`: an application's savepoints, looked at before a trigger.
    list: usize,
    /// `POST …/savepoints`.
    trigger: usize,
    /// `GET …/savepoints/{id}`: following a savepoint until it ends.
    poll: usize,
    other: usize,
}

impl Kinds {
    fn of(requests: &[RecordedRequest]) -> Kinds {
        let mut kinds = Kinds::default();
        for r in requests {
            let tail = r.path.rsplit_once("/savepoints").map(|(_, t)| t);
            match (r.method.as_str(), tail) {
                ("GET", Some("")) => kinds.list += 1,
                ("POST", Some("")) => kinds.trigger += 1,
                ("GET", Some(t)) if t.starts_with('/') => kinds.poll += 1,
                _ => kinds.other += 1,
            }
        }
        kinds
    }

    fn total(&self) -> usize {
        self.list + self.trigger + self.poll + self.other
    }
}

/// One contender's run over N applications.
#[derive(Clone, Debug)]
struct Measure {
    triggered: usize,
    first_triggered: Duration,
    all_triggered: Duration,
    kube_to_last_trigger: usize,
    platform_to_last_trigger: usize,
    cpu: Duration,
    /// Everything the run sent, until its requests ended (savepointd follows each savepoint to its end).
    kube_total: usize,
    platform_total: Kinds,
}

/// Counters read from the fakes when a run starts.
struct Marks {
    start: DateTime<Utc>,
    kube: usize,
    requests: usize,
    triggers: usize,
}

impl World {
    fn marks(&self, start: DateTime<Utc>) -> Marks {
        Marks {
            start,
            kube: self.kube.request_count(),
            requests: self.vvp.request_count(),
            triggers: self.vvp.trigger_count(),
        }
    }

    /// A config for the first `n` applications.
    fn config(&self, n: usize, port: u16, schedule: &str, max_concurrent: usize) -> PathBuf {
        let mut yaml = format!(
            "server: {{ listen: \"127.0.0.1:{port}\", shutdownGrace: 5s }}\n\
             kubernetes: {{ kubeconfig: {} }}\n\
             defaults: {{ schedule: \"{schedule}\", startingDeadline: 5s }}\n\
             platforms:\n  - name: vvp\n    kind: vvp\n    url: {}\n    maxConcurrent: {max_concurrent}\n    \
             auth: {{ tokenFile: {} }}\n    resolve: {{ kubernetesNamespace: {KUBERNETES_NAMESPACE} }}\n\
             applications:\n",
            self.kubeconfig.display(),
            self.vvp.url,
            self.token_file.display(),
        );
        for i in 0..n {
            yaml.push_str(&format!("  - name: {}\n", name(i)));
        }
        let path = self
            .dir
            .path()
            .join(format!("config-{n}-{max_concurrent}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn names_file(&self, n: usize) -> PathBuf {
        let path = self.dir.path().join(format!("applications-{n}.txt"));
        let names: Vec<String> = (0..n).map(name).collect();
        std::fs::write(&path, names.join("\n") + "\n").unwrap();
        path
    }

    fn log(&self, what: &str) -> std::fs::File {
        std::fs::File::create(self.dir.path().join(format!("{what}.log"))).unwrap()
    }

    /// Waits until `n` savepoints more than at `marks` were triggered, or `child` exited short of them;
    /// returns the Kubernetes request count at that moment (within one 10 ms poll).
    async fn kube_at_last_trigger(
        &self,
        marks: &Marks,
        n: usize,
        mut child: Option<&mut Child>,
    ) -> usize {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if self.vvp.trigger_count() >= marks.triggers + n {
                return self.kube.request_count();
            }
            if let Some(child) = child.as_deref_mut()
                && child.try_wait().unwrap().is_some()
            {
                return self.kube.request_count();
            }
            assert!(Instant::now() < deadline, "{n} triggers within 600 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until no platform request arrived for a second: the run has followed every savepoint to
    /// its end (the daemon polls every savepoint in flight at least every few hundred ms).
    async fn quiet(&self) -> usize {
        let mut last = self.vvp.request_count();
        let mut since = Instant::now();
        let deadline = since + Duration::from_secs(600);
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.vvp.request_count();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= Duration::from_secs(1) {
                return now;
            }
            assert!(Instant::now() < deadline, "the platform went quiet");
        }
    }

    fn measure(
        &self,
        marks: &Marks,
        n: usize,
        kube_to_last_trigger: usize,
        requests_end: usize,
        cpu: Duration,
    ) -> Measure {
        let triggers = self.vvp.triggers()[marks.triggers..].to_vec();
        let requests = self.vvp.requests()[marks.requests..requests_end].to_vec();
        let first = triggers.iter().map(created).min().unwrap_or(marks.start);
        let last = triggers.iter().map(created).max().unwrap_or(marks.start);
        let last_post = requests
            .iter()
            .filter(|r| r.method == "POST")
            .map(|r| r.at)
            .max();
        Measure {
            triggered: triggers.len().min(n),
            first_triggered: (first - marks.start).to_std().unwrap_or_default(),
            all_triggered: (last - marks.start).to_std().unwrap_or_default(),
            kube_to_last_trigger: kube_to_last_trigger - marks.kube,
            platform_to_last_trigger: requests
                .iter()
                .filter(|r| last_post.is_some_and(|l| r.at <= l))
                .count(),
            cpu,
            kube_total: self.kube.request_count() - marks.kube,
            platform_total: Kinds::of(&requests),
        }
    }
}

fn created(v: &serde_json::Value) -> DateTime<Utc> {
    v["metadata"]["createdAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// `/usr/bin/time -f "%U %S"`: user and system seconds of a process and of every child it waited for.
fn time_output(path: &Path) -> Duration {
    let text = std::fs::read_to_string(path).unwrap();
    // The last line: a process killed by a signal gets a "Command terminated" line first.
    let line = text.lines().last().unwrap_or_default();
    line.split_whitespace()
        .map(|s| Duration::from_secs_f64(s.parse().unwrap()))
        .sum()
}

fn timed(what: &Path, time_file: &Path) -> Command {
    let mut command = Command::new("/usr/bin/time");
    command
        .arg("-f")
        .arg("%U %S")
        .arg("-o")
        .arg(time_file)
        .arg(what)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn blog(world: &World, n: usize) -> Measure {
    // A fresh HOME: kubectl's discovery cache starts cold, as in the new pod a CronJob starts each time.
    let home = tempfile::tempdir_in(world.dir.path()).unwrap();
    let time_file = world.dir.path().join("blog.time");
    let mut command = timed(Path::new(SCRIPT), &time_file);
    command
        .args(["--file"])
        .arg(world.names_file(n))
        .args(["--namespace", KUBERNETES_NAMESPACE])
        .env("HOME", home.path())
        .env("KUBECONFIG", &world.kubeconfig)
        .env("VVP_URL", &world.vvp.url)
        .env("VVP_TOKEN_FILE", &world.token_file)
        .stdout(Stdio::null())
        .stderr(world.log("blog"));
    let marks = world.marks(Utc::now());
    let mut child = command.spawn().expect("start the blog script");
    let kube = world
        .kube_at_last_trigger(&marks, n, Some(&mut child))
        .await;
    let status = child.wait().await.unwrap();
    assert!(status.success(), "the blog script ran: {status}");
    let end = world.vvp.request_count();
    world.measure(&marks, n, kube, end, time_output(&time_file))
}

async fn once(world: &World, n: usize, max_concurrent: usize) -> Measure {
    // Every second a slot, and five seconds to start in: `once` finds its slot due whenever it runs.
    let config = world.config(n, free_port(), "@every 1s", max_concurrent);
    let time_file = world.dir.path().join("once.time");
    let mut command = timed(Path::new(env!("CARGO_BIN_EXE_savepointd")), &time_file);
    command
        .args(["once", "--no-prune", "--log-format", "json", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(world.log("once"));
    let marks = world.marks(Utc::now());
    let mut child = command.spawn().expect("start savepointd once");
    let kube = world
        .kube_at_last_trigger(&marks, n, Some(&mut child))
        .await;
    let status = child.wait().await.unwrap();
    assert!(status.success(), "savepointd once succeeded: {status}");
    let end = world.vvp.request_count();
    let measure = world.measure(&marks, n, kube, end, time_output(&time_file));
    assert_eq!(
        measure.triggered, n,
        "savepointd once triggered every application"
    );
    measure
}

fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the command name.
    let ticks = fields[11].parse::<u32>().unwrap() + fields[12].parse::<u32>().unwrap();
    TICK * ticks
}

async fn daemon(world: &World, n: usize, max_concurrent: usize) -> Measure {
    // One slot, at a second far enough ahead for the daemon to be ready (its pod watch open, its look at
    // every application's savepoints at startup over): a daily cron at that second, so no second slot
    // falls into the measurement.
    let lead = Duration::from_secs(6);
    let at = Utc::now() + lead + chrono::Duration::seconds(1);
    let slot = at.with_nanosecond(0).unwrap();
    let schedule = format!("{} {} {} * * *", slot.second(), slot.minute(), slot.hour());
    let port = free_port();
    let config = world.config(n, port, &schedule, max_concurrent);
    let mut child = Command::new(env!("CARGO_BIN_EXE_savepointd"))
        .args(["run", "--log-format", "json", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(world.log("daemon"))
        .kill_on_drop(true)
        .spawn()
        .expect("start savepointd run");
    let pid = child.id().unwrap();
    wait_ready(port).await;
    let before_slot = (slot - Utc::now()).to_std().unwrap_or_default();
    assert!(
        before_slot > Duration::from_millis(1500),
        "the daemon was ready well before its slot (raise the lead of {lead:?})"
    );
    tokio::time::sleep(before_slot - Duration::from_millis(250)).await;
    let cpu_before = cpu_of(pid);
    let mut marks = world.marks(Utc::now());
    let kube = world.kube_at_last_trigger(&marks, n, None).await;
    let end = world.quiet().await;
    let cpu = cpu_of(pid) - cpu_before;
    stop(&mut child).await;
    marks.start = slot;
    let measure = world.measure(&marks, n, kube, end, cpu);
    assert_eq!(
        measure.triggered, n,
        "the daemon triggered every application"
    );
    let slots = world.vvp.triggers()[marks.triggers..]
        .iter()
        .map(|t| t["metadata"]["annotations"]["savepointd.io/slot"].to_string())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(slots.len(), 1, "one slot's savepoints: {slots:?}");
    measure
}

async fn wait_ready(port: u16) {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let ready = eventually(Duration::from_secs(60), || async {
        let r = reqwest::get(&url).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "savepointd became ready");
}

async fn stop(child: &mut Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status();
    if tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The simulators are not the bottleneck

/// `TcpExtListenOverflows` and `TcpExtListenDrops` of this network namespace: connections refused or
/// dropped because a listener's accept queue was full.
fn listen_overflows() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return (0, 0);
    };
    let table: BTreeMap<&str, u64> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    (
        table.get("ListenOverflows").copied().unwrap_or(0),
        table.get("ListenDrops").copied().unwrap_or(0),
    )
}

/// The accept-queue size a listener got (`ss` shows it as Send-Q of a listening socket).
fn backlog(url: &str) -> String {
    let address = url.trim_start_matches("http://");
    let port = address.rsplit_once(':').unwrap().1;
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output();
    let Ok(out) = out else {
        return "? (no ss)".into();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    fields
        .iter()
        .position(|f| *f == address)
        .and_then(|i| i.checked_sub(1))
        .map_or("?".into(), |i| fields[i].to_string())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Sequential requests on one kept-alive connection: median, p99 and slowest round trip.
async fn round_trips(url: &str, token: Option<&str>) -> String {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let mut times = Vec::new();
    for i in 0..301 {
        let t = Instant::now();
        let mut request = client.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        assert!(r.status().is_success(), "{url}: {}", r.status());
        r.bytes().await.unwrap();
        // The first opens the connection.
        if i > 0 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    format!(
        "median {}, p99 {}, slowest {}",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap())
    )
}

/// `connections` requests at once, each on a new connection: when the last answer came, and the
/// slowest. A full accept queue shows as a request that takes a SYN retransmission (1 s) longer.
async fn burst(world: &World, connections: usize, applications: usize) -> String {
    // One client with no connection to reuse: every request of the burst opens its own.
    let client = reqwest::Client::new();
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            // What savepointd asks first of each application at a tick.
            let url = format!(
                "{}/api/v1/namespaces/default/savepoints?deploymentId=00000000-0000-4000-8000-{:012}",
                world.vvp.url,
                i % applications.max(1)
            );
            let client = client.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
                t.elapsed()
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.push(task.await.unwrap());
    }
    let all = start.elapsed();
    times.sort();
    format!(
        "{connections} lists of a deployment's savepoints on {connections} new connections at once, \
         each answered after 10 ms: all answered after {}, median {}, slowest {}",
        ms(all),
        ms(percentile(&times, 0.5)),
        ms(*times.last().unwrap())
    )
}

async fn checks(world: &World, applications: usize, out: &mut impl Write) {
    writeln!(out, "Simulator checks:\n").unwrap();
    writeln!(
        out,
        "- listen backlog: VVP simulator {}, fake Kubernetes API server {} (net.core.somaxconn {})",
        backlog(&world.vvp.url),
        backlog(&world.kube.url),
        std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .map_or("?".into(), |s| s.trim().to_string())
    )
    .unwrap();
    // Without its 10 ms, a round trip is the server's and the loopback's own cost.
    world.vvp.set_latency(Duration::ZERO);
    let vvp = round_trips(
        &format!(
            "{}/api/v1/namespaces/default/deployments/app-0000",
            world.vvp.url
        ),
        Some(TOKEN),
    )
    .await;
    let savepoints = round_trips(
        &format!(
            "{}/api/v1/namespaces/default/savepoints?deploymentId=00000000-0000-4000-8000-000000000000",
            world.vvp.url
        ),
        Some(TOKEN),
    )
    .await;
    let last = world.vvp.savepoints().last().unwrap()["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let savepoint = round_trips(
        &format!(
            "{}/api/v1/namespaces/default/savepoints/{last}",
            world.vvp.url
        ),
        Some(TOKEN),
    )
    .await;
    world.vvp.set_latency(LATENCY);
    let one_pod = round_trips(
        &format!(
            "{}/api/v1/namespaces/{KUBERNETES_NAMESPACE}/pods?labelSelector=deploymentName%3Dapp-0000",
            world.kube.url
        ),
        None,
    )
    .await;
    let all_pods = round_trips(
        &format!(
            "{}/api/v1/namespaces/{KUBERNETES_NAMESPACE}/pods",
            world.kube.url
        ),
        None,
    )
    .await;
    writeln!(
        out,
        "- kept-alive round trips, 300 in a row, without the simulated latency, the simulator holding \
         {} savepoints: VVP deployment {vvp}; VVP savepoints of a deployment {savepoints}; VVP \
         savepoint by id (the last one) {savepoint}; Kubernetes pods by label (as kubectl asks) \
         {one_pod}; all pods {all_pods}",
        world.vvp.savepoints().len()
    )
    .unwrap();
    let (overflows, drops) = listen_overflows();
    let burst = burst(world, 1000, applications).await;
    let (overflows_after, drops_after) = listen_overflows();
    writeln!(
        out,
        "- {burst}; listen queue overflows {}, drops {}",
        overflows_after - overflows,
        drops_after - drops
    )
    .unwrap();
}

fn median<T: Ord + Copy>(mut values: Vec<T>) -> T {
    values.sort();
    values[values.len() / 2]
}

fn time(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// In the order they run in each round, and are shown.
fn contenders(n: usize) -> [Contender; 5] {
    [
        Contender::Blog,
        Contender::Once { max_concurrent: n },
        Contender::Once {
            max_concurrent: BOUNDED,
        },
        Contender::Daemon { max_concurrent: n },
        Contender::Daemon {
            max_concurrent: BOUNDED,
        },
    ]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let sizes = sizes();
        let rounds = rounds();
        let applications = sizes.iter().copied().max().unwrap_or(0);
        let world = world(applications).await;
        let mut out = std::io::stdout();
        if std::env::var_os("HEAD_TO_HEAD_CHECKS_ONLY").is_some() {
            world.reset(applications);
            checks(&world, applications, &mut out).await;
            return;
        }
        let (overflows, drops) = listen_overflows();
        let mut results: BTreeMap<(usize, Contender), Vec<Measure>> = BTreeMap::new();
        for round in 1..=rounds {
            for &n in &sizes {
                for contender in contenders(n) {
                    world.reset(applications);
                    let measure = match contender {
                        Contender::Blog => blog(&world, n).await,
                        Contender::Once { max_concurrent } => once(&world, n, max_concurrent).await,
                        Contender::Daemon { max_concurrent } => {
                            daemon(&world, n, max_concurrent).await
                        }
                    };
                    eprintln!(
                        "round {round}, N {n}, {} maxConcurrent {}: {measure:?}",
                        contender.label(),
                        contender.max_concurrent(n)
                    );
                    results.entry((n, contender)).or_default().push(measure);
                }
            }
        }
        let (overflows_after, drops_after) = listen_overflows();

        writeln!(
            out,
            "Head to head, medians of {rounds} rounds; VVP simulator answering in {} ms, savepoints \
             completing 50 ms after their trigger:\n",
            LATENCY.as_millis()
        )
        .unwrap();
        writeln!(out, "| N | contender | maxConcurrent | triggered | first triggered after | all triggered after | sooner than the script | Kubernetes requests | platform requests | client CPU |").unwrap();
        writeln!(out, "|---|---|---|---|---|---|---|---|---|---|").unwrap();
        for (n, contender) in sizes.iter().flat_map(|&n| contenders(n).map(|c| (n, c))) {
            let measures = &results[&(n, contender)];
            let all = median(measures.iter().map(|m| m.all_triggered).collect());
            let blog = median(
                results[&(n, Contender::Blog)]
                    .iter()
                    .map(|m| m.all_triggered)
                    .collect(),
            );
            writeln!(
                out,
                "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                contender.label(),
                contender.max_concurrent(n),
                median(measures.iter().map(|m| m.triggered).collect()),
                time(median(measures.iter().map(|m| m.first_triggered).collect())),
                time(all),
                if contender == Contender::Blog {
                    "—".to_string()
                } else {
                    format!("{:.0}×", blog.as_secs_f64() / all.as_secs_f64())
                },
                median(measures.iter().map(|m| m.kube_to_last_trigger).collect()),
                median(measures.iter().map(|m| m.platform_to_last_trigger).collect()),
                time(median(measures.iter().map(|m| m.cpu).collect())),
            )
            .unwrap();
        }

        writeln!(out, "\nRequests per application, over the whole tick (`once`: the whole run) until its requests ended, medians:\n").unwrap();
        writeln!(out, "| N | contender | maxConcurrent | platform requests per application | of which list / trigger / poll / other | Kubernetes requests (per application) | client CPU per application |").unwrap();
        writeln!(out, "|---|---|---|---|---|---|---|").unwrap();
        for (n, contender) in sizes.iter().flat_map(|&n| contenders(n).map(|c| (n, c))) {
            let measures = &results[&(n, contender)];
            let per = |f: &dyn Fn(&Measure) -> usize| {
                median(measures.iter().map(f).collect()) as f64 / n as f64
            };
            let kube = median(measures.iter().map(|m| m.kube_total).collect());
            writeln!(
                out,
                "| {n} | {} | {} | {:.2} | {:.2} / {:.2} / {:.2} / {:.2} | {kube} ({:.3}) | {:.2} ms |",
                contender.label(),
                contender.max_concurrent(n),
                per(&|m| m.platform_total.total()),
                per(&|m| m.platform_total.list),
                per(&|m| m.platform_total.trigger),
                per(&|m| m.platform_total.poll),
                per(&|m| m.platform_total.other),
                kube as f64 / n as f64,
                median(measures.iter().map(|m| m.cpu).collect()).as_secs_f64() * 1000.0 / n as f64,
            )
            .unwrap();
        }
        writeln!(out).unwrap();
        world.reset(applications);
        checks(&world, applications, &mut out).await;
        writeln!(
            out,
            "- over all the contenders' runs: listen queue overflows {}, drops {}",
            overflows_after - overflows,
            drops_after - drops
        )
        .unwrap();
    });
}
