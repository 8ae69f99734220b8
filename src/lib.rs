//! savepointd keeps Apache Flink applications safe: it resolves a version-controlled list of application
//! names to the platform's ids, triggers savepoints on cron schedules, waits for them, prunes old ones, and
//! exports Prometheus metrics. `run` is the daemon; tests start it in-process and stop it when they choose.
//!
//! # Layout
//!
//! - [`config`]: the YAML file and `SAVEPOINTD_*` overrides, validated into [`config::Config`]; every error
//!   names its field path.
//! - [`schedule`]: pure schedule arithmetic (cron in a timezone, `@every`, `@daily-random`), blackout
//!   windows (the next run outside them) and jitter offsets; takes `now`.
//! - [`model`]: the leaf every part shares: [`model::Target`] (with its application),
//!   [`model::Savepoint`] as any platform reports it (with the platform's own reason to keep it,
//!   `protected`), resolution errors, and name sanitising.
//! - [`platform`]: the [`platform::Platform`] trait. `platform/http.rs` is the shared HTTP plumbing (TLS,
//!   tokens and client certificates, API metrics, and resending only what never left);
//!   `platform/vvp.rs`, `platform/flink/` (`wire.rs` the REST format, `storage.rs` the slot directories,
//!   `failure.rs` Flink's failure causes), `platform/cmf.rs` and `platform/operator.rs` are the one place
//!   each that knows Ververica Platform's, Flink's, Confluent Manager for Apache Flink's and the Flink
//!   Kubernetes Operator's formats and refusal rules (the operator's resources read from watch caches).
//!   `platform/shared.rs` is the one listing per tick that every application's resolve shares.
//! - [`resolve`]: application name -> [`model::Target`], from a Kubernetes pod watch cache
//!   (`resolve/pods.rs`) or through the platform's API.
//! - [`retention`]: the pure, platform-neutral retention planner: which savepoints to delete and why each
//!   other one stays.
//! - [`prune`]: executes a retention plan through the platform (after every successful savepoint, and
//!   for `savepointd prune`), counting deletions and refusals; the deletions of one prune run together,
//!   each under a platform permit.
//! - [`runtime`]: wires a config to live platform clients, resolvers and per-platform permit pools.
//! - [`runner`]: one slot of one application: the pure [`runner::next_step`] over the platform's records,
//!   then trigger, wait, retry; adoption of a slot's savepoint after a restart or a lost answer.
//! - [`scheduler`]: one loop per application that fires its slots, with its retention beside it;
//!   shutdown with a grace period.
//! - [`leader`]: leader election on a Kubernetes Lease (resourceVersion preconditions, followers'
//!   own-clock expiry, release on shutdown) and the [`leader::Mandate`] the runner and pruner check
//!   before every trigger and deletion.
//! - [`metrics`]: the Prometheus metric set, each application's series in one block of atomics
//!   (`metrics/exposition.rs` the store's types and the text format); [`server`]: `/healthz`, `/readyz`,
//!   `/metrics` (streamed in pieces).
//! - [`commands`]: what the CLI subcommands print (`check-config`, `status`, `resolve`, `once`, `prune`).
//! - [`shutdown`]: SIGTERM / SIGINT.

pub mod commands;
pub mod config;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod platform;
pub mod prune;
pub mod resolve;
pub mod retention;
pub mod runner;
pub mod runtime;
pub mod schedule;
pub mod scheduler;
pub mod server;
pub mod shutdown;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::server::Health;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is the source: `{:#}` prints it once, after this.
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Server(std::io::Error),
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error(transparent)]
    Leader(#[from] leader::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs the daemon until `shutdown` completes, listening on `config.server.listen`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    run_on(listener, config, shutdown).await
}

/// Runs the daemon on an already bound listener (tests bind port 0 and read the address first).
pub async fn run_on(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let token = CancellationToken::new();
    let health = Arc::new(Health::default());
    let metrics = Metrics::new();
    metrics.register_config(&config);
    Health::set(&health.config_loaded);

    let (runtime, watchers) = Runtime::connect(&config, metrics.clone(), &token).await?;
    let elector = match &config.leader_election {
        Some(election) => {
            let client = runtime::kube_client_for(&config).await?;
            Some(leader::Elector::new(
                client,
                election.clone(),
                runtime.mandate.clone(),
            )?)
        }
        None => {
            metrics.leader(true);
            None
        }
    };
    tracing::info!(
        applications = config.applications.len(),
        platforms = config.platforms.len(),
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "savepointd starting"
    );

    let server = {
        let (health, metrics, token) = (health.clone(), metrics.clone(), token.clone());
        async move {
            let result = server::serve(listener, health, metrics, token.clone()).await;
            // A dead HTTP server means no metrics and no probes: bring the whole process down.
            token.cancel();
            result.map_err(Error::Server)
        }
    };
    let runtime = Arc::new(runtime);
    let runtime_probe = runtime.clone();
    let scheduler = {
        let (health, token, metrics) = (health.clone(), token.clone(), metrics.clone());
        let grace = config.server.shutdown_grace;
        async move {
            if !runtime.wait_synced(&token).await {
                return Ok(());
            }
            Health::set(&health.caches_synced);
            // A follower is ready too: its caches are warm and it stands by to take over.
            Health::set(&health.scheduler_running);
            let apps = runtime.apps.clone();
            let act = || scheduler::run(apps, token.clone(), grace);
            match elector {
                None => act().await,
                Some(elector) => elector.lead(&token, &metrics, act).await?,
            }
            tracing::info!("scheduler stopped");
            Ok::<(), Error>(())
        }
    };
    let signal = {
        let token = token.clone();
        async move {
            tokio::select! {
                _ = shutdown => token.cancel(),
                _ = token.cancelled() => {}
            }
            Ok::<(), Error>(())
        }
    };
    let watchers = async move {
        futures::future::join_all(watchers).await;
        Ok::<(), Error>(())
    };
    let probes = {
        let (runtime, token) = (runtime_probe, token.clone());
        async move {
            tokio::select! {
                _ = runtime.probe_platforms() => {}
                _ = token.cancelled() => {}
            }
            Ok::<(), Error>(())
        }
    };
    tokio::try_join!(server, scheduler, signal, watchers, probes)?;
    tracing::info!("savepointd stopped");
    Ok(())
}
