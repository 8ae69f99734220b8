//! DESIGN.md §7, measured: the release binary against the VVP simulator (every answer delayed 10 ms)
//! and the fake Kubernetes API server, with 1,000 applications.
//!
//! 1. One cron tick, for several `maxConcurrent` values: time from the slot to the last trigger, the most
//!    savepoints in flight at once, Kubernetes API requests during the tick, and schedule lateness.
//! 2. The idle daemon: resident memory and CPU time over ten seconds with nothing due.
//!
//! Run: `cargo bench --bench tick`. It prints a Markdown table (the README quotes it).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use support::kube_fake::KubeFake;
use support::vvp_sim::{VvpSim, VvpSimOptions};
use support::{eventually, free_port};

const APPLICATIONS: usize = 1000;
const LATENCY: Duration = Duration::from_millis(10);

struct World {
    vvp: VvpSim,
    kube: KubeFake,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let vvp = VvpSim::start(VvpSimOptions {
        latency: LATENCY,
        complete_after: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let kube = KubeFake::start().await;
    for i in 0..APPLICATIONS {
        let (name, id) = (
            format!("app-{i:04}"),
            format!("00000000-0000-4000-8000-{i:012}"),
        );
        vvp.add_deployment(&name, &id, "RUNNING");
        kube.add_pod(
            "flink",
            &format!("job-{id}-jobmanager"),
            &[
                ("system", "ververica-platform"),
                ("deploymentName", &name),
                ("deploymentId", &id),
            ],
        );
    }
    World {
        vvp,
        kube,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl World {
    fn config(&self, port: u16, schedule: &str, max_concurrent: usize) -> std::path::PathBuf {
        let kubeconfig = self.kube.write_kubeconfig(self.dir.path());
        let mut yaml = format!(
            "server: {{ listen: \"127.0.0.1:{port}\", shutdownGrace: 5s }}\n\
             kubernetes: {{ kubeconfig: {} }}\n\
             defaults: {{ schedule: \"{schedule}\", startingDeadline: 1s }}\n\
             platforms:\n  - name: vvp\n    kind: vvp\n    url: {}\n    maxConcurrent: {max_concurrent}\n    resolve: {{ kubernetesNamespace: flink }}\n\
             applications:\n",
            kubeconfig.display(),
            self.vvp.url
        );
        for i in 0..APPLICATIONS {
            yaml.push_str(&format!("  - name: app-{i:04}\n"));
        }
        let path = self
            .dir
            .path()
            .join(format!("config-{max_concurrent}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn spawn(&self, config: &std::path::Path) -> Child {
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).unwrap();
        // BENCH_BIN measures another build of the daemon against the same fakes (before and after).
        let bin =
            std::env::var("BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_savepointd").into());
        Command::new(bin)
            .args([
                "run",
                "--config",
                config.to_str().unwrap(),
                "--log-format",
                "json",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start savepointd")
    }
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

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn created(v: &serde_json::Value) -> DateTime<Utc> {
    v["metadata"]["createdAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The daemon's `/metrics` text.
async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The upper bound of the bucket that holds the 99th percentile of `savepointd_schedule_lateness_seconds`.
async fn lateness_p99(port: u16) -> String {
    let text = scrape(port).await;
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("savepointd_schedule_lateness_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, count) = l.split_once("\"} ")?;
            Some((le.to_owned(), count.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, c)| *c >= 0.99 * total)
        .map_or("n/a".into(), |(le, _)| {
            format!(
                "≤ {} ms",
                le.parse::<f64>()
                    .map_or(le.clone(), |s| (s * 1000.0).to_string())
            )
        })
}

async fn tick(world: &World, max_concurrent: usize) -> String {
    let before = world.vvp.triggers().len();
    world.vvp.reset_max_started();
    let port = free_port();
    // Every 20 s: time to get ready, and one slot to measure.
    let config = world.config(port, "*/20 * * * * *", max_concurrent);
    let child = world.spawn(&config);
    wait_ready(port).await;
    // The watch request follows the first list by a moment; count from when it is open.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kube_before = world.kube.request_count();
    let done = eventually(Duration::from_secs(240), || async {
        (world.vvp.triggers().len() >= before + APPLICATIONS).then_some(())
    })
    .await;
    let kube_after = world.kube.request_count();
    let p99 = lateness_p99(port).await;
    stop(child);
    assert!(
        done.is_some(),
        "all {APPLICATIONS} applications were triggered"
    );
    let triggers = &world.vvp.triggers()[before..];
    let slot: DateTime<Utc> = triggers[0]["metadata"]["annotations"]["savepointd.io/slot"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        triggers
            .iter()
            .all(|t| t["metadata"]["annotations"]["savepointd.io/slot"]
                == triggers[0]["metadata"]["annotations"]["savepointd.io/slot"])
    );
    let last = triggers.iter().map(created).max().unwrap();
    let first = triggers.iter().map(created).min().unwrap();
    format!(
        "| {max_concurrent} | {} ms | {} ms | {} | {} | {p99} |",
        (first - slot).num_milliseconds(),
        (last - slot).num_milliseconds(),
        world.vvp.max_started_at_once(),
        kube_after - kube_before,
    )
}

fn proc_stat(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    // utime and stime, in clock ticks (fields 14 and 15 of stat; 12 and 13 after the command name).
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss_kib, ticks)
}

async fn idle(world: &World) -> String {
    let port = free_port();
    let config = world.config(port, "0 1 1 1 *", 8);
    let child = world.spawn(&config);
    wait_ready(port).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, ticks_before) = proc_stat(child.id());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (rss, ticks_after) = proc_stat(child.id());
    // What Prometheus does to it: a scrape every 15 s renders every series.
    let mut series = 0;
    for _ in 0..3 {
        let text = scrape(port).await;
        series = text.lines().filter(|l| !l.starts_with('#')).count();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_scraped, _) = proc_stat(child.id());
    stop(child);
    // Linux reports CPU time in 1/100 s.
    format!(
        "idle, {APPLICATIONS} applications: RSS {:.1} MiB, CPU {} ms over 10 s ({:.2} %); \
         RSS {:.1} MiB after 3 scrapes of {series} series",
        rss as f64 / 1024.0,
        (ticks_after - ticks_before) * 10,
        (ticks_after - ticks_before) as f64 / 10.0,
        rss_scraped as f64 / 1024.0,
    )
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let world = world().await;
        let mut out = std::io::stdout();
        writeln!(out, "One tick of {APPLICATIONS} applications, VVP simulator answering in {} ms:\n", LATENCY.as_millis()).unwrap();
        writeln!(out, "| maxConcurrent | slot → first trigger | slot → last trigger | most in flight | Kubernetes requests during the tick | lateness p99 |").unwrap();
        writeln!(out, "|---|---|---|---|---|---|").unwrap();
        // BENCH_IDLE_ONLY=1 measures only the idle daemon (for quick memory experiments).
        let ticks: &[usize] = if std::env::var_os("BENCH_IDLE_ONLY").is_some() { &[] } else { &[8, 100, 250, 1000] };
        for &max_concurrent in ticks {
            let row = tick(&world, max_concurrent).await;
            writeln!(out, "{row}").unwrap();
        }
        writeln!(out, "\n{}", idle(&world).await).unwrap();
    });
}
