//! Prometheus metrics (DESIGN.md §6). One struct registers everything; per-application series carry the
//! labels `application` and `platform`, both from config, and `reason` labels come from static categories,
//! never from ids or messages, so cardinality stays bounded.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramTimer, HistogramVec, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::config::Config;

const NAMESPACE: &str = "savepointd";

#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    attempts: IntCounterVec,
    success: IntCounterVec,
    failure: IntCounterVec,
    duration: HistogramVec,
    last_success: prometheus::GaugeVec,
    last_status: IntGaugeVec,
    in_progress: IntGaugeVec,
    expected_interval: prometheus::GaugeVec,
    next_run: prometheus::GaugeVec,
    lateness: Histogram,
    skipped: IntCounterVec,
    resolve_failures: IntCounterVec,
    retention_deleted: IntCounterVec,
    retention_delete_failures: IntCounterVec,
    retained: IntGaugeVec,
    api_requests: IntCounterVec,
    api_duration: HistogramVec,
    build_info: IntGaugeVec,
    config_info: IntGaugeVec,
    leader: prometheus::IntGauge,
    platform_up: IntGaugeVec,
}

const APP: &[&str] = &["application", "platform"];
const APP_REASON: &[&str] = &["application", "platform", "reason"];

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

fn hopts(name: &str, help: &str, buckets: Vec<f64>) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NAMESPACE)
        .buckets(buckets)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! register {
            ($metric:expr) => {{
                let m = $metric.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let inner = Inner {
            attempts: register!(IntCounterVec::new(
                opts("savepoint_attempts_total", "Savepoints triggered."),
                APP
            )),
            success: register!(IntCounterVec::new(
                opts("savepoint_success_total", "Savepoints that completed."),
                APP
            )),
            failure: register!(IntCounterVec::new(
                opts(
                    "savepoint_failure_total",
                    "Savepoint runs that failed, by reason."
                ),
                APP_REASON
            )),
            // From a small state's 70 ms to an hour-long savepoint of a large one.
            duration: register!(HistogramVec::new(
                hopts(
                    "savepoint_duration_seconds",
                    "Time from trigger to completed savepoint.",
                    vec![
                        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                        1200.0, 1800.0, 3600.0
                    ]
                ),
                APP
            )),
            last_success: register!(prometheus::GaugeVec::new(
                opts(
                    "savepoint_last_success_timestamp_seconds",
                    "Unix time of the newest completed savepoint."
                ),
                APP
            )),
            last_status: register!(IntGaugeVec::new(
                opts(
                    "savepoint_last_status",
                    "Outcome of the last savepoint run: 1 success, 0 failure."
                ),
                APP
            )),
            in_progress: register!(IntGaugeVec::new(
                opts(
                    "savepoint_in_progress",
                    "1 while a savepoint of the application is in flight."
                ),
                APP
            )),
            expected_interval: register!(prometheus::GaugeVec::new(
                opts(
                    "schedule_expected_interval_seconds",
                    "Longest regular gap between two slots of the schedule."
                ),
                APP
            )),
            next_run: register!(prometheus::GaugeVec::new(
                opts(
                    "schedule_next_run_timestamp_seconds",
                    "Unix time of the next slot."
                ),
                APP
            )),
            // The target is p99 < 50 ms; the buckets resolve that region finely.
            lateness: register!(Histogram::with_opts(hopts(
                "schedule_lateness_seconds",
                "Actual start of a run minus its slot time.",
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
                ]
            ))),
            skipped: register!(IntCounterVec::new(
                opts(
                    "runs_skipped_total",
                    "Slots that triggered nothing, by reason."
                ),
                APP_REASON
            )),
            resolve_failures: register!(IntCounterVec::new(
                opts(
                    "resolve_failures_total",
                    "Application names that could not be resolved, by reason."
                ),
                APP_REASON
            )),
            retention_deleted: register!(IntCounterVec::new(
                opts(
                    "retention_deleted_total",
                    "Savepoints deleted by retention."
                ),
                APP
            )),
            retention_delete_failures: register!(IntCounterVec::new(
                opts(
                    "retention_delete_failures_total",
                    "Deletions the platform refused or that failed, by reason."
                ),
                APP_REASON
            )),
            retained: register!(IntGaugeVec::new(
                opts(
                    "retained_savepoints",
                    "Completed savepoints kept after the last prune."
                ),
                APP
            )),
            api_requests: register!(IntCounterVec::new(
                opts(
                    "api_requests_total",
                    "Calls to platform APIs by operation and HTTP code (or timeout/error)."
                ),
                &["platform", "operation", "code"]
            )),
            api_duration: register!(HistogramVec::new(
                hopts(
                    "api_request_duration_seconds",
                    "Latency of platform API calls.",
                    vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
                    ]
                ),
                &["platform", "operation"]
            )),
            build_info: register!(IntGaugeVec::new(
                opts(
                    "build_info",
                    "Always 1; the version label says which build runs."
                ),
                &["version"]
            )),
            config_info: register!(IntGaugeVec::new(
                opts(
                    "config_info",
                    "Always 1; the sha256 label identifies the config."
                ),
                &["sha256"]
            )),
            leader: register!(prometheus::IntGauge::with_opts(opts(
                "leader",
                "1 on the replica that acts (always 1 without leader election), 0 on followers."
            ))),
            platform_up: register!(IntGaugeVec::new(
                opts(
                    "platform_up",
                    "1 when the platform's last API call was answered and authorised, 0 when it failed."
                ),
                &["platform"]
            )),
            registry,
        };
        inner
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics(Arc::new(inner))
    }

    /// Creates the series of every configured application, so dashboards show zeros rather than gaps, and
    /// records the config identity.
    pub fn register_config(&self, config: &Config) {
        self.0.config_info.reset();
        self.0
            .config_info
            .with_label_values(&[config.sha256.as_str()])
            .set(1);
        for app in &config.applications {
            let m = self.app(&app.name, &config.platform_of(app).name);
            let l = m.labels();
            self.0.attempts.with_label_values(&l);
            self.0.success.with_label_values(&l);
            self.0.in_progress.with_label_values(&l).set(0);
            self.0.retention_deleted.with_label_values(&l);
            // Every reason at 0, so a panel or an alert on a rate has data before the first event.
            let reasons = [
                (&self.0.failure, &crate::runner::Failure::CATEGORIES[..]),
                (&self.0.skipped, &crate::runner::Skip::CATEGORIES[..]),
                (
                    &self.0.resolve_failures,
                    &crate::model::ResolveError::CATEGORIES[..],
                ),
                (
                    &self.0.retention_delete_failures,
                    &crate::platform::Error::CATEGORIES[..],
                ),
            ];
            for (counter, categories) in reasons {
                for reason in categories {
                    counter.with_label_values(&m.with_reason(reason));
                }
            }
        }
    }

    pub fn app(&self, application: &str, platform: &str) -> AppMetrics {
        AppMetrics {
            metrics: self.clone(),
            application: application.to_owned(),
            platform: platform.to_owned(),
        }
    }

    pub fn lateness(&self, late: Duration) {
        self.0.lateness.observe(late.as_secs_f64());
    }

    /// Whether this replica acts: set on acquiring and losing the Lease, or once at start without
    /// leader election.
    pub fn leader(&self, leading: bool) {
        self.0.leader.set(i64::from(leading));
    }

    /// A drop guard that observes the call's latency.
    pub fn api_timer(&self, platform: &str, operation: &str) -> HistogramTimer {
        self.0
            .api_duration
            .with_label_values(&[platform, operation])
            .start_timer()
    }

    pub fn api_request(&self, platform: &str, operation: &str, code: &str) {
        self.0
            .api_requests
            .with_label_values(&[platform, operation, code])
            .inc();
    }

    /// Whether the platform's last call was answered and authorised (a 404 or a 409 is an answer; a
    /// 401, a 5xx or no answer is not), so a wrong token or URL shows before the first slot.
    pub fn platform_up(&self, platform: &str, up: bool) {
        self.0
            .platform_up
            .with_label_values(&[platform])
            .set(i64::from(up));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.0.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

/// The metrics of one application.
#[derive(Clone)]
pub struct AppMetrics {
    metrics: Metrics,
    application: String,
    platform: String,
}

impl AppMetrics {
    fn labels(&self) -> [&str; 2] {
        [&self.application, &self.platform]
    }

    fn with_reason<'a>(&'a self, reason: &'a str) -> [&'a str; 3] {
        [&self.application, &self.platform, reason]
    }

    pub fn lateness(&self, late: Duration) {
        self.metrics.lateness(late);
    }

    pub fn attempt(&self) {
        self.metrics
            .0
            .attempts
            .with_label_values(&self.labels())
            .inc();
    }

    pub fn success(&self, duration: Option<Duration>, completed_at: DateTime<Utc>) {
        let i = &self.metrics.0;
        i.success.with_label_values(&self.labels()).inc();
        if let Some(d) = duration {
            i.duration
                .with_label_values(&self.labels())
                .observe(d.as_secs_f64());
        }
        i.last_status.with_label_values(&self.labels()).set(1);
        self.last_success(completed_at);
    }

    /// Raises the last-success time (never lowers it: an adopted older savepoint must not make the
    /// application look staler than it is).
    pub fn last_success(&self, at: DateTime<Utc>) {
        let g = self
            .metrics
            .0
            .last_success
            .with_label_values(&self.labels());
        let t = at.timestamp_millis() as f64 / 1000.0;
        if t > g.get() {
            g.set(t);
        }
    }

    /// A savepoint in flight for longer than the timeout, reported once per run that meets it. Not a
    /// failed run: the last status stays as it is.
    pub fn stuck(&self) {
        self.metrics
            .0
            .failure
            .with_label_values(&self.with_reason("stuck"))
            .inc();
    }

    /// The outcome of the newest savepoint found at start, so `savepoint_last_status` has a value
    /// before the first slot.
    pub fn last_status(&self, ok: bool) {
        self.metrics
            .0
            .last_status
            .with_label_values(&self.labels())
            .set(i64::from(ok));
    }

    pub fn failure(&self, reason: &str) {
        let i = &self.metrics.0;
        i.failure.with_label_values(&self.with_reason(reason)).inc();
        i.last_status.with_label_values(&self.labels()).set(0);
    }

    pub fn skipped(&self, reason: &str) {
        self.metrics
            .0
            .skipped
            .with_label_values(&self.with_reason(reason))
            .inc();
    }

    pub fn resolve_failure(&self, reason: &str) {
        self.metrics
            .0
            .resolve_failures
            .with_label_values(&self.with_reason(reason))
            .inc();
    }

    pub fn retention_deleted(&self) {
        self.metrics
            .0
            .retention_deleted
            .with_label_values(&self.labels())
            .inc();
    }

    pub fn retention_delete_failure(&self, reason: &str) {
        self.metrics
            .0
            .retention_delete_failures
            .with_label_values(&self.with_reason(reason))
            .inc();
    }

    pub fn retained(&self, completed: usize) {
        self.metrics
            .0
            .retained
            .with_label_values(&self.labels())
            .set(completed as i64);
    }

    pub fn in_progress(&self, on: bool) {
        self.metrics
            .0
            .in_progress
            .with_label_values(&self.labels())
            .set(i64::from(on));
    }

    pub fn schedule(&self, next: Option<DateTime<Utc>>, interval: Duration) {
        let i = &self.metrics.0;
        i.expected_interval
            .with_label_values(&self.labels())
            .set(interval.as_secs_f64());
        if let Some(next) = next {
            i.next_run
                .with_label_values(&self.labels())
                .set(next.timestamp() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_success_only_moves_forward() {
        let m = Metrics::new();
        let a = m.app("orders", "vvp");
        a.last_success("2026-11-20T01:00:00Z".parse().unwrap());
        a.last_success("2026-11-19T01:00:00Z".parse().unwrap());
        assert!(
            m.render()
                .contains("savepointd_savepoint_last_success_timestamp_seconds{application=\"orders\",platform=\"vvp\"} 1795136400")
        );
    }
}
