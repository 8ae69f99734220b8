//! The wiring from a validated [`Config`] to live parts: one platform client and one resolver per
//! platform, one permit pool per platform (`maxConcurrent`), and per application the handles the runner
//! needs. Every command (`run`, `once`, `status`, `resolve`) starts from here.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Application, Config, Resolve};
use crate::leader::Mandate;
use crate::metrics::{AppMetrics, Metrics};
use crate::platform::{self, Platform};
use crate::resolve::Resolver;
use crate::resolve::pods::PodIndex;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Platform(#[from] platform::Error),
    #[error("cannot set up the Kubernetes client: {0}")]
    Kubernetes(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the runner needs for one application.
pub struct App {
    pub config: Application,
    pub platform_name: String,
    pub platform: Arc<dyn Platform>,
    pub resolver: Resolver,
    /// Shared by every application of the platform: a permit is held from trigger to terminal state.
    pub permits: Arc<Semaphore>,
    pub metrics: AppMetrics,
    /// Whether this process may trigger or delete right now (shared by every application): always,
    /// unless leader election is on and this replica does not hold the Lease.
    pub mandate: Mandate,
    /// How long this application's last savepoint took, from trigger to completion: polls are paced by
    /// it, so a permit is freed soon after a savepoint ends without polling a slow one often.
    pub last_duration: std::sync::Mutex<Option<std::time::Duration>>,
}

impl App {
    /// One of the platform's `maxConcurrent` permits, shared by runs, recoveries and retention.
    pub async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.permits
            .acquire()
            .await
            .expect("semaphore is never closed")
    }
}

pub struct Runtime {
    pub apps: Vec<Arc<App>>,
    /// One client per configured platform, in config order.
    pub platforms: Vec<Arc<dyn Platform>>,
    pub metrics: Metrics,
    pub mandate: Mandate,
    pod_indexes: Vec<PodIndex>,
    /// Synced signals of the platforms read through watch caches (the Flink Kubernetes Operator).
    caches: Vec<tokio::sync::watch::Receiver<bool>>,
}

/// Futures that keep the pod caches up to date; they end when the shutdown token is cancelled.
pub type Watchers = Vec<BoxFuture<'static, ()>>;

impl Runtime {
    /// Connects every platform and starts (but does not drive) the pod watches the config asks for.
    pub async fn connect(
        config: &Config,
        metrics: Metrics,
        shutdown: &CancellationToken,
    ) -> Result<(Runtime, Watchers)> {
        let kube_client = if config.needs_kubernetes() {
            Some(kube_client_for(config).await?)
        } else {
            None
        };
        let mut watchers: Watchers = Vec::new();
        let mut pod_indexes = Vec::new();
        let mut caches = Vec::new();
        let mut per_platform = Vec::new();
        for p in &config.platforms {
            let connected = platform::connect(p, &metrics, kube_client.as_ref(), shutdown)?;
            let client = connected.client;
            if let Some(watches) = connected.watches {
                watchers.extend(watches.drivers);
                caches.push(watches.synced);
            }
            let resolver = match p.kind.resolve() {
                Resolve::Api => Resolver::Api(client.clone()),
                Resolve::Pods(pods) => {
                    let kube = kube_client.clone().expect("config.needs_kubernetes()");
                    let (index, driver) = PodIndex::watch(kube, pods.clone(), shutdown.clone());
                    watchers.push(Box::pin(driver));
                    pod_indexes.push(index.clone());
                    Resolver::Pods(index)
                }
            };
            let permits = Arc::new(Semaphore::new(p.max_concurrent));
            per_platform.push((client, resolver, permits));
        }
        let mandate = Mandate::default();
        let apps = config
            .applications
            .iter()
            .map(|a| {
                let (platform, resolver, permits) = &per_platform[a.platform];
                let platform_name = config.platforms[a.platform].name.clone();
                Arc::new(App {
                    metrics: metrics.app(&a.name, &platform_name),
                    config: a.clone(),
                    platform_name,
                    platform: platform.clone(),
                    resolver: resolver.clone(),
                    permits: permits.clone(),
                    mandate: mandate.clone(),
                    last_duration: Default::default(),
                })
            })
            .collect();
        Ok((
            Runtime {
                apps,
                platforms: per_platform.into_iter().map(|(p, _, _)| p).collect(),
                metrics,
                mandate,
                pod_indexes,
                caches,
            },
            watchers,
        ))
    }

    /// Asks every platform once for an authenticated read and logs the answer, naming the platform and
    /// the cause of a failure: a wrong URL or token shows at start, not at the first slot (01:00 for a
    /// nightly schedule). `savepointd_platform_up` follows from the same calls.
    pub async fn probe_platforms(&self) {
        futures::future::join_all(self.platforms.iter().map(|p| async move {
            match p.probe().await {
                Ok(()) => tracing::info!(platform = %p.name(), "platform answers"),
                Err(e) => tracing::error!(platform = %p.name(), reason = e.category(), error = %e,
                    "platform cannot be used: savepoints on it will fail until this is fixed"),
            }
        }))
        .await;
    }

    /// Waits until every pod cache and platform cache has listed once; false when shut down first.
    pub async fn wait_synced(&self, shutdown: &CancellationToken) -> bool {
        for index in &self.pod_indexes {
            if !index.wait_synced(shutdown).await {
                return false;
            }
        }
        for synced in &self.caches {
            let mut synced = synced.clone();
            let ready = tokio::select! {
                r = synced.wait_for(|s| *s) => r.is_ok(),
                _ = shutdown.cancelled() => false,
            };
            if !ready {
                return false;
            }
        }
        true
    }

    pub fn app(&self, name: &str) -> Option<&Arc<App>> {
        self.apps.iter().find(|a| a.config.name == name)
    }
}

pub(crate) async fn kube_client_for(config: &Config) -> Result<kube::Client> {
    let kube_config = match &config.kubernetes.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                Error::Kubernetes(format!("kubernetes.kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| {
                    Error::Kubernetes(format!("kubernetes.kubeconfig {}: {e}", path.display()))
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Kubernetes(e.to_string()))?,
    };
    kube::Client::try_from(kube_config).map_err(|e| Error::Kubernetes(e.to_string()))
}
