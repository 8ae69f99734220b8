//! Prometheus metrics (DESIGN.md §6). Per-application series carry the labels `application` and
//! `platform`, both from config, and `reason` labels come from static categories, never from ids or
//! messages, so cardinality stays bounded.
//!
//! The series of an application are known when it is: its counters, one per reason of every
//! reason-labelled family, and its gauges live in one [`AppSeries`] of atomics (about 0.4 KiB), created
//! with the application and rendered by `exposition.rs`. A registry of labelled vectors (the `prometheus`
//! crate) kept each series as its own label set: about 0.8 KiB per series, 30 MiB for 1,000
//! applications; `prometheus-client` only writes OpenMetrics, which `promtool check metrics` rejects.

mod exposition;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::model::ResolveError;
use crate::platform::Error as PlatformError;
use crate::runner::{Failure, Skip};
use exposition::{Counter, Gauge, Histogram, Kind};

/// From a small state's 70 ms to an hour-long savepoint of a large one.
const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];
/// The target is p99 < 50 ms; the buckets resolve that region finely.
const LATENESS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const API_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    /// Keyed by (application, platform), so the exposition comes out sorted.
    apps: RwLock<BTreeMap<(String, String), Arc<AppSeries>>>,
    lateness: Histogram,
    leader: Gauge,
    config_sha256: Mutex<Option<String>>,
    platform_up: Mutex<BTreeMap<String, bool>>,
    /// Keyed by [platform, operation, code].
    api_requests: Mutex<BTreeMap<[String; 3], u64>>,
    /// Keyed by [platform, operation].
    api_duration: Mutex<BTreeMap<[String; 2], Arc<Histogram>>>,
}

/// Every series of one application.
struct AppSeries {
    application: Box<str>,
    platform: Box<str>,
    attempts: Counter,
    success: Counter,
    failure: [Counter; Failure::CATEGORIES.len()],
    duration: Histogram,
    last_success: Gauge,
    last_status: Gauge,
    in_progress: Gauge,
    expected_interval: Gauge,
    next_run: Gauge,
    skipped: [Counter; Skip::CATEGORIES.len()],
    resolve_failures: [Counter; ResolveError::CATEGORIES.len()],
    retention_deleted: Counter,
    retention_delete_failures: [Counter; PlatformError::CATEGORIES.len()],
    retained: Gauge,
}

impl AppSeries {
    fn new(application: &str, platform: &str) -> Self {
        let series = AppSeries {
            application: application.into(),
            platform: platform.into(),
            attempts: Counter::default(),
            success: Counter::default(),
            failure: Default::default(),
            duration: Histogram::new(DURATION_BUCKETS),
            last_success: Gauge::default(),
            last_status: Gauge::default(),
            in_progress: Gauge::default(),
            expected_interval: Gauge::default(),
            next_run: Gauge::default(),
            skipped: Default::default(),
            resolve_failures: Default::default(),
            retention_deleted: Counter::default(),
            retention_delete_failures: Default::default(),
            retained: Gauge::default(),
        };
        series.in_progress.set(0.0);
        series
    }
}

/// One series (or, for a reason-labelled family, one per reason) of an application.
enum Series<'a> {
    Counter(&'a Counter),
    Gauge(&'a Gauge),
    Histogram(&'a Histogram),
    Reasons(&'a [Counter], &'static [&'static str]),
}

/// What a family reads: one series set per application, or the daemon's own.
enum Source {
    App(fn(&AppSeries) -> Series<'_>),
    Daemon(fn(&Inner, &str, &mut String)),
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    source: Source,
}

/// Every family, sorted by name as the exposition lists them.
const FAMILIES: &[Family] = &[
    Family {
        name: "savepointd_api_request_duration_seconds",
        help: "Latency of platform API calls.",
        kind: Kind::Histogram,
        source: Source::Daemon(|inner, name, out| {
            for ([platform, operation], h) in inner.api_duration.lock().unwrap().iter() {
                let labels = [("operation", operation.as_str()), ("platform", platform)];
                exposition::histogram(out, name, &labels, h);
            }
        }),
    },
    Family {
        name: "savepointd_api_requests_total",
        help: "Calls to platform APIs by operation and HTTP code (or timeout/error).",
        kind: Kind::Counter,
        source: Source::Daemon(|inner, name, out| {
            for ([platform, operation, code], count) in inner.api_requests.lock().unwrap().iter() {
                let labels = [
                    ("code", code.as_str()),
                    ("operation", operation),
                    ("platform", platform),
                ];
                exposition::sample(out, name, &labels, count);
            }
        }),
    },
    Family {
        name: "savepointd_build_info",
        help: "Always 1; the version label says which build runs.",
        kind: Kind::Gauge,
        source: Source::Daemon(|_, name, out| {
            exposition::sample(out, name, &[("version", env!("CARGO_PKG_VERSION"))], 1);
        }),
    },
    Family {
        name: "savepointd_config_info",
        help: "Always 1; the sha256 label identifies the config.",
        kind: Kind::Gauge,
        source: Source::Daemon(|inner, name, out| {
            if let Some(sha256) = &*inner.config_sha256.lock().unwrap() {
                exposition::sample(out, name, &[("sha256", sha256)], 1);
            }
        }),
    },
    Family {
        name: "savepointd_leader",
        help: "1 on the replica that acts (always 1 without leader election), 0 on followers.",
        kind: Kind::Gauge,
        source: Source::Daemon(|inner, name, out| {
            if let Some(leading) = inner.leader.get() {
                exposition::sample(out, name, &[], leading);
            }
        }),
    },
    Family {
        name: "savepointd_platform_up",
        help: "1 when the platform's last API call was answered and authorised, 0 when it failed.",
        kind: Kind::Gauge,
        source: Source::Daemon(|inner, name, out| {
            for (platform, up) in inner.platform_up.lock().unwrap().iter() {
                exposition::sample(out, name, &[("platform", platform)], u8::from(*up));
            }
        }),
    },
    Family {
        name: "savepointd_resolve_failures_total",
        help: "Application names that could not be resolved, by reason.",
        kind: Kind::Counter,
        source: Source::App(|s| Series::Reasons(&s.resolve_failures, &ResolveError::CATEGORIES)),
    },
    Family {
        name: "savepointd_retained_savepoints",
        help: "Completed savepoints kept after the last prune.",
        kind: Kind::Gauge,
        source: Source::App(|s| Series::Gauge(&s.retained)),
    },
    Family {
        name: "savepointd_retention_delete_failures_total",
        help: "Deletions the platform refused or that failed, by reason.",
        kind: Kind::Counter,
        source: Source::App(|s| {
            Series::Reasons(&s.retention_delete_failures, &PlatformError::CATEGORIES)
        }),
    },
    Family {
        name: "savepointd_retention_deleted_total",
        help: "Savepoints deleted by retention.",
        kind: Kind::Counter,
        source: Source::App(|s| Series::Counter(&s.retention_deleted)),
    },
    Family {
        name: "savepointd_runs_skipped_total",
        help: "Slots that triggered nothing, by reason.",
        kind: Kind::Counter,
        source: Source::App(|s| Series::Reasons(&s.skipped, &Skip::CATEGORIES)),
    },
    Family {
        name: "savepointd_savepoint_attempts_total",
        help: "Savepoints triggered.",
        kind: Kind::Counter,
        source: Source::App(|s| Series::Counter(&s.attempts)),
    },
    Family {
        name: "savepointd_savepoint_duration_seconds",
        help: "Time from trigger to completed savepoint.",
        kind: Kind::Histogram,
        source: Source::App(|s| Series::Histogram(&s.duration)),
    },
    Family {
        name: "savepointd_savepoint_failure_total",
        help: "Savepoint runs that failed, by reason.",
        kind: Kind::Counter,
        source: Source::App(|s| Series::Reasons(&s.failure, &Failure::CATEGORIES)),
    },
    Family {
        name: "savepointd_savepoint_in_progress",
        help: "1 while a savepoint of the application is in flight.",
        kind: Kind::Gauge,
        source: Source::App(|s| Series::Gauge(&s.in_progress)),
    },
    Family {
        name: "savepointd_savepoint_last_status",
        help: "Outcome of the last savepoint run: 1 success, 0 failure.",
        kind: Kind::Gauge,
        source: Source::App(|s| Series::Gauge(&s.last_status)),
    },
    Family {
        name: "savepointd_savepoint_last_success_timestamp_seconds",
        help: "Unix time of the newest completed savepoint.",
        kind: Kind::Gauge,
        source: Source::App(|s| Series::Gauge(&s.last_success)),
    },
    Family {
        name: "savepointd_savepoint_success_total",
        help: "Savepoints that completed.",
        kind: Kind::Counter,
        source: Source::App(|s| Series::Counter(&s.success)),
    },
    Family {
        name: "savepointd_schedule_expected_interval_seconds",
        help: "Longest regular gap between two slots of the schedule.",
        kind: Kind::Gauge,
        source: Source::App(|s| Series::Gauge(&s.expected_interval)),
    },
    Family {
        name: "savepointd_schedule_lateness_seconds",
        help: "Actual start of a run minus its slot time.",
        kind: Kind::Histogram,
        source: Source::Daemon(|inner, name, out| {
            exposition::histogram(out, name, &[], &inner.lateness);
        }),
    },
    Family {
        name: "savepointd_schedule_next_run_timestamp_seconds",
        help: "Unix time of the next slot.",
        kind: Kind::Gauge,
        source: Source::App(|s| Series::Gauge(&s.next_run)),
    },
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let inner = Inner {
            apps: RwLock::default(),
            lateness: Histogram::new(LATENESS_BUCKETS),
            leader: Gauge::default(),
            config_sha256: Mutex::default(),
            platform_up: Mutex::default(),
            api_requests: Mutex::default(),
            api_duration: Mutex::default(),
        };
        inner.leader.set(0.0);
        Metrics(Arc::new(inner))
    }

    /// Creates the series of every configured application, so dashboards show zeros rather than gaps
    /// (every reason at 0, so a panel or an alert on a rate has data before the first event), and records
    /// the config identity.
    pub fn register_config(&self, config: &Config) {
        *self.0.config_sha256.lock().unwrap() = Some(config.sha256.clone());
        for app in &config.applications {
            self.app(&app.name, &config.platform_of(app).name);
        }
    }

    /// The metrics of one application; its series exist from this call on.
    pub fn app(&self, application: &str, platform: &str) -> AppMetrics {
        let key = (application.to_owned(), platform.to_owned());
        let known = self.0.apps.read().unwrap().get(&key).cloned();
        let series = match known {
            Some(series) => series,
            None => self
                .0
                .apps
                .write()
                .unwrap()
                .entry(key)
                .or_insert_with(|| Arc::new(AppSeries::new(application, platform)))
                .clone(),
        };
        AppMetrics {
            metrics: self.clone(),
            series,
        }
    }

    pub fn lateness(&self, late: Duration) {
        self.0.lateness.observe(late.as_secs_f64());
    }

    /// Whether this replica acts: set on acquiring and losing the Lease, or once at start without
    /// leader election.
    pub fn leader(&self, leading: bool) {
        self.0.leader.set(f64::from(u8::from(leading)));
    }

    /// A drop guard that observes the call's latency.
    pub fn api_timer(&self, platform: &str, operation: &str) -> ApiTimer {
        let histogram = self
            .0
            .api_duration
            .lock()
            .unwrap()
            .entry([platform.to_owned(), operation.to_owned()])
            .or_insert_with(|| Arc::new(Histogram::new(API_BUCKETS)))
            .clone();
        ApiTimer {
            histogram,
            start: Instant::now(),
        }
    }

    pub fn api_request(&self, platform: &str, operation: &str, code: &str) {
        *self
            .0
            .api_requests
            .lock()
            .unwrap()
            .entry([platform.to_owned(), operation.to_owned(), code.to_owned()])
            .or_default() += 1;
    }

    /// Whether the platform's last call was answered and authorised (a 404 or a 409 is an answer; a
    /// 401, a 5xx or no answer is not), so a wrong token or URL shows before the first slot.
    pub fn platform_up(&self, platform: &str, up: bool) {
        let mut platforms = self.0.platform_up.lock().unwrap();
        match platforms.get_mut(platform) {
            Some(known) => *known = up,
            None => {
                platforms.insert(platform.to_owned(), up);
            }
        }
    }

    /// The Prometheus text exposition in pieces of at most [`APPS_PER_CHUNK`] applications of one
    /// family. `/metrics` streams them: the whole text for 1,000 applications is 4 MB, and a buffer that
    /// size stays with the allocator after the scrape.
    pub fn exposition(&self) -> impl Iterator<Item = String> + Send + 'static {
        let inner = self.0.clone();
        // The applications as they are now (they are only ever added, at start).
        let apps: Arc<[Arc<AppSeries>]> = inner.apps.read().unwrap().values().cloned().collect();
        FAMILIES
            .iter()
            .flat_map(move |family| {
                let (inner, apps) = (inner.clone(), apps.clone());
                let mut head = String::new();
                let rest: Box<dyn Iterator<Item = String> + Send> = match family.source {
                    Source::Daemon(render) => {
                        let mut out = String::new();
                        render(&inner, family.name, &mut out);
                        if !out.is_empty() {
                            exposition::header(&mut head, family.name, family.help, family.kind);
                        }
                        Box::new(std::iter::once(out))
                    }
                    Source::App(series) => {
                        // Decided once: a gauge first set while the family is written waits for the
                        // next scrape rather than show without its header.
                        let headed = apps.iter().any(|app| has_samples(&series(app)));
                        if headed {
                            exposition::header(&mut head, family.name, family.help, family.kind);
                        }
                        let pieces = if headed { apps.len() } else { 0 };
                        let chunks = (0..pieces).step_by(APPS_PER_CHUNK).map(move |first| {
                            let mut out = String::new();
                            for app in apps[first..].iter().take(APPS_PER_CHUNK) {
                                render_app_series(&mut out, family.name, app, series(app));
                            }
                            out
                        });
                        Box::new(chunks)
                    }
                };
                std::iter::once(head).chain(rest)
            })
            .filter(|chunk| !chunk.is_empty())
    }
}

/// How many applications one streamed piece of `/metrics` holds: about 40 KB of text.
const APPS_PER_CHUNK: usize = 100;

/// Whether a series shows in the exposition: a gauge once set, a histogram once observed.
fn has_samples(series: &Series) -> bool {
    match series {
        Series::Counter(_) | Series::Reasons(..) => true,
        Series::Gauge(gauge) => gauge.get().is_some(),
        Series::Histogram(histogram) => histogram.count() > 0,
    }
}

fn render_app_series(out: &mut String, name: &str, app: &AppSeries, series: Series) {
    let labels = &[
        ("application", &*app.application),
        ("platform", &*app.platform),
    ];
    match series {
        Series::Counter(counter) => exposition::sample(out, name, labels, counter.get()),
        Series::Gauge(gauge) => {
            if let Some(value) = gauge.get() {
                exposition::sample(out, name, labels, value);
            }
        }
        // Absent until the first observation, as a labelled histogram always was.
        Series::Histogram(histogram) => {
            if histogram.count() > 0 {
                exposition::histogram(out, name, labels, histogram);
            }
        }
        Series::Reasons(counters, reasons) => {
            for (counter, reason) in counters.iter().zip(reasons) {
                let labels = [labels[0], labels[1], ("reason", reason)];
                exposition::sample(out, name, &labels, counter.get());
            }
        }
    }
}

/// Observes the latency of one platform API call when dropped.
pub struct ApiTimer {
    histogram: Arc<Histogram>,
    start: Instant,
}

impl Drop for ApiTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// The metrics of one application.
#[derive(Clone)]
pub struct AppMetrics {
    metrics: Metrics,
    series: Arc<AppSeries>,
}

/// The counter of `reason` among a family's `categories`. A reason outside them is a bug the tests
/// catch (they run with debug assertions); a release build counts it nowhere rather than stop.
fn by_reason<'a>(
    counters: &'a [Counter],
    categories: &[&str],
    reason: &str,
) -> Option<&'a Counter> {
    let found = categories.iter().position(|c| *c == reason);
    debug_assert!(found.is_some(), "{reason} is not among {categories:?}");
    found.map(|i| &counters[i])
}

impl AppMetrics {
    pub fn lateness(&self, late: Duration) {
        self.metrics.lateness(late);
    }

    pub fn attempt(&self) {
        self.series.attempts.inc();
    }

    pub fn success(&self, duration: Option<Duration>, completed_at: DateTime<Utc>) {
        self.series.success.inc();
        if let Some(d) = duration {
            self.series.duration.observe(d.as_secs_f64());
        }
        self.series.last_status.set(1.0);
        self.last_success(completed_at);
    }

    /// Raises the last-success time (never lowers it: an adopted older savepoint must not make the
    /// application look staler than it is).
    pub fn last_success(&self, at: DateTime<Utc>) {
        self.series
            .last_success
            .raise(at.timestamp_millis() as f64 / 1000.0);
    }

    /// A savepoint in flight for longer than the timeout, reported once per run that meets it. Not a
    /// failed run: the last status stays as it is.
    pub fn stuck(&self) {
        self.count_failure("stuck");
    }

    /// The outcome of the newest savepoint found at start, so `savepoint_last_status` has a value
    /// before the first slot.
    pub fn last_status(&self, ok: bool) {
        self.series.last_status.set(f64::from(u8::from(ok)));
    }

    pub fn failure(&self, reason: &str) {
        self.count_failure(reason);
        self.series.last_status.set(0.0);
    }

    fn count_failure(&self, reason: &str) {
        if let Some(c) = by_reason(&self.series.failure, &Failure::CATEGORIES, reason) {
            c.inc();
        }
    }

    pub fn skipped(&self, reason: &str) {
        if let Some(c) = by_reason(&self.series.skipped, &Skip::CATEGORIES, reason) {
            c.inc();
        }
    }

    pub fn resolve_failure(&self, reason: &str) {
        let counters = &self.series.resolve_failures;
        if let Some(c) = by_reason(counters, &ResolveError::CATEGORIES, reason) {
            c.inc();
        }
    }

    pub fn retention_deleted(&self) {
        self.series.retention_deleted.inc();
    }

    pub fn retention_delete_failure(&self, reason: &str) {
        let counters = &self.series.retention_delete_failures;
        if let Some(c) = by_reason(counters, &PlatformError::CATEGORIES, reason) {
            c.inc();
        }
    }

    pub fn retained(&self, completed: usize) {
        self.series.retained.set(completed as f64);
    }

    pub fn in_progress(&self, on: bool) {
        self.series.in_progress.set(f64::from(u8::from(on)));
    }

    pub fn schedule(&self, next: Option<DateTime<Utc>>, interval: Duration) {
        self.series.expected_interval.set(interval.as_secs_f64());
        if let Some(next) = next {
            self.series.next_run.set(next.timestamp() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Metrics) -> String {
        m.exposition().collect()
    }

    #[test]
    fn last_success_only_moves_forward() {
        let m = Metrics::new();
        let a = m.app("orders", "vvp");
        a.last_success("2026-11-20T01:00:00Z".parse().unwrap());
        a.last_success("2026-11-19T01:00:00Z".parse().unwrap());
        assert!(
            render(&m)
                .contains("savepointd_savepoint_last_success_timestamp_seconds{application=\"orders\",platform=\"vvp\"} 1795136400\n")
        );
    }

    #[test]
    fn families_are_sorted_by_name() {
        let names: Vec<_> = FAMILIES.iter().map(|f| f.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn an_application_has_every_reason_at_zero_from_the_start() {
        let m = Metrics::new();
        m.app("orders", "vvp").failure("timeout");
        let text = render(&m);
        for reason in Failure::CATEGORIES {
            let zero_or_one = if reason == "timeout" { 1 } else { 0 };
            let line = format!(
                "savepointd_savepoint_failure_total{{application=\"orders\",platform=\"vvp\",reason=\"{reason}\"}} {zero_or_one}\n"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(text.contains(
            "savepointd_savepoint_last_status{application=\"orders\",platform=\"vvp\"} 0\n"
        ));
        assert!(!text.contains("savepointd_savepoint_duration_seconds"));
        assert!(!text.contains("savepointd_retained_savepoints"));
    }
}
