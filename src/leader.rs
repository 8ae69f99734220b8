//! Leader election on a `coordination.k8s.io/v1` Lease (DESIGN.md §9): several replicas run, one acts.
//!
//! The loop is client-go's, written on `Api<Lease>`: read the Lease; if it is free, expired or ours,
//! replace it with our holder and times *with the resourceVersion just read* (create it if absent). A
//! 409 means another replica wrote first, and it won. Followers judge expiry on their own monotonic
//! clock, from the moment they last saw the Lease change, never by comparing the holder's `renewTime`
//! with their wall clock, so clock skew between nodes does not matter.
//!
//! The leader stops acting when it has not renewed for `renewDeadline`, which is shorter than
//! `leaseDuration`: it has stopped before any follower may take over. Its [`Mandate`] (the time until
//! which it may act, on its own clock) is checked right before every trigger and deletion, so a process
//! that was frozen past its lease (SIGSTOP, a stalled node) does nothing once it runs again, even
//! before its renewal loop has noticed. No fencing is assumed beyond that: a slot's platform-side
//! identity is what makes a second leader's trigger meet the first savepoint.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::LeaderElection;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(crate::config::Problem),
    #[error(
        "lost the Lease {namespace}/{name} ({reason}); stopped acting, exiting so that a fresh process starts as a follower"
    )]
    Lost {
        namespace: String,
        name: String,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Until when this process may act, on its own monotonic clock. Without leader election it always
/// may; with it, only while it holds the Lease and has renewed it within `renewDeadline`.
#[derive(Clone, Debug)]
pub struct Mandate(Arc<Mutex<Term>>);

#[derive(Clone, Copy, Debug)]
enum Term {
    Unlimited,
    Until(Instant),
    None,
}

impl Default for Mandate {
    fn default() -> Self {
        Mandate(Arc::new(Mutex::new(Term::Unlimited)))
    }
}

impl Mandate {
    /// Whether a trigger or a deletion may start now.
    pub fn holds(&self) -> bool {
        match *self.lock() {
            Term::Unlimited => true,
            Term::Until(until) => Instant::now() < until,
            Term::None => false,
        }
    }

    fn grant_until(&self, until: Instant) {
        *self.lock() = Term::Until(until);
    }

    pub fn revoke(&self) {
        *self.lock() = Term::None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Term> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// This replica's name in the Lease: the pod name (`POD_NAME` from the downward API, else the host
/// name) and a random suffix, so that a restarted container never mistakes its predecessor's Lease
/// for its own.
pub fn identity() -> String {
    let pod = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "savepointd".into());
    format!("{pod}_{}", random_suffix())
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:010x}", hasher.finish() & 0xff_ffff_ffff)
}

/// What one look at the Lease ended with.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// We hold it (acquired or renewed).
    Ours,
    /// Another replica holds it and, as far as we can tell, still may.
    HeldBy(String),
    /// Someone wrote the Lease between our read and our write (409).
    Conflict,
}

/// A Lease as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    pub lease: String,
    /// `None` while nobody holds it (released, or never acquired).
    pub holder: Option<String>,
    pub renew_time: Option<String>,
    pub lease_transitions: i32,
}

/// Reads who holds the Lease, for `status`.
pub async fn holder(
    client: kube::Client,
    election: &LeaderElection,
) -> Result<Option<Holder>, String> {
    let namespace = election.resolve_namespace().map_err(|p| p.to_string())?;
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let lease = api
        .get_opt(&election.lease_name)
        .await
        .map_err(|e| format!("Lease {namespace}/{}: {e}", election.lease_name))?;
    Ok(lease.map(|lease| {
        let spec = lease.spec.unwrap_or_default();
        Holder {
            lease: format!("{namespace}/{}", election.lease_name),
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
            lease_transitions: spec.lease_transitions.unwrap_or(0),
        }
    }))
}

pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    config: LeaderElection,
    identity: String,
    mandate: Mandate,
    /// The Lease's resourceVersion when we last saw it change, and when (our clock) that was.
    observed: Option<(Option<String>, Instant)>,
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaderElection, mandate: Mandate) -> Result<Elector> {
        let namespace = config.resolve_namespace().map_err(Error::Config)?;
        // Nothing may act before the Lease is ours.
        mandate.revoke();
        Ok(Elector {
            api: Api::namespaced(client, &namespace),
            namespace,
            config,
            identity: identity(),
            mandate,
            observed: None,
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Stands by until this replica holds the Lease, then runs `act` (the scheduler, which ends after
    /// `shutdown` is cancelled and its runs drained) while renewing. After `act` ends the Lease is
    /// released, so that a follower takes over within one retry period.
    ///
    /// Losing the Lease cancels `shutdown`, drops `act` (in-flight waits are abandoned, nothing new
    /// starts) and returns [`Error::Lost`]: the process ends and a fresh one starts as a follower.
    pub async fn lead<Act: Future<Output = ()>>(
        mut self,
        shutdown: &CancellationToken,
        metrics: &Metrics,
        act: impl FnOnce() -> Act,
    ) -> Result<()> {
        metrics.leader(false);
        info!(identity = %self.identity, lease = %self.lease(), "standing by for the Lease");
        let Some(renewed) = self.acquire(shutdown).await else {
            return Ok(());
        };
        metrics.leader(true);
        info!(identity = %self.identity, lease = %self.lease(), "acquired the Lease; acting");
        let lost = {
            let act = act();
            let hold = self.hold(renewed);
            tokio::pin!(act, hold);
            tokio::select! {
                () = &mut act => None,
                reason = &mut hold => Some(reason),
            }
        };
        self.mandate.revoke();
        metrics.leader(false);
        match lost {
            None => {
                self.release().await;
                Ok(())
            }
            Some(reason) => {
                shutdown.cancel();
                let error = Error::Lost {
                    namespace: self.namespace.clone(),
                    name: self.config.lease_name.clone(),
                    reason,
                };
                error!(identity = %self.identity, "{error}");
                Err(error)
            }
        }
    }

    fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.config.lease_name)
    }

    /// Tries every retry period until the Lease is ours; `None` when shut down first. Returns when the
    /// successful attempt started (the renewal is at least that old).
    async fn acquire(&mut self, shutdown: &CancellationToken) -> Option<Instant> {
        let mut last_holder = None;
        loop {
            let started = Instant::now();
            match tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew(false))
                .await
            {
                Ok(Ok(Attempt::Ours)) => return Some(started),
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    if last_holder.as_ref() != Some(&holder) {
                        info!(holder = %holder, lease = %self.lease(), "the Lease is held by another replica; following");
                        last_holder = Some(holder);
                    }
                }
                Ok(Ok(Attempt::Conflict)) => {
                    debug!(lease = %self.lease(), "another replica wrote the Lease first")
                }
                Ok(Err(e)) => {
                    warn!(lease = %self.lease(), error = %e, "cannot read or write the Lease")
                }
                Err(_) => {
                    warn!(lease = %self.lease(), "no answer from the API server about the Lease")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep_until(started + self.config.retry_period) => {}
            }
        }
    }

    /// Renews every retry period; returns why the Lease is lost: another holder seen, or no successful
    /// renewal for `renewDeadline`. Each attempt may take no longer than what is left of the deadline.
    async fn hold(&mut self, renewed: Instant) -> String {
        let mut last = renewed;
        self.mandate.grant_until(last + self.config.renew_deadline);
        let mut started = renewed;
        loop {
            tokio::time::sleep_until(started + self.config.retry_period).await;
            started = Instant::now();
            let left = (last + self.config.renew_deadline).saturating_duration_since(started);
            if left.is_zero() {
                return format!(
                    "not renewed for {} (renewDeadline)",
                    humantime::format_duration(self.config.renew_deadline)
                );
            }
            match tokio::time::timeout(left, self.try_acquire_or_renew(true)).await {
                Ok(Ok(Attempt::Ours)) => {
                    last = started;
                    self.mandate.grant_until(last + self.config.renew_deadline);
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    return format!("the Lease is now held by {holder}");
                }
                Ok(Ok(Attempt::Conflict)) => {
                    warn!(lease = %self.lease(), "the Lease changed under its renewal; looking again")
                }
                Ok(Err(e)) => warn!(lease = %self.lease(), error = %e, "cannot renew the Lease"),
                Err(_) => {
                    warn!(lease = %self.lease(), "no answer from the API server to the renewal")
                }
            }
        }
    }

    /// One read and, if the Lease is free, expired or ours, one conditional write.
    async fn try_acquire_or_renew(&mut self, leading: bool) -> Result<Attempt, kube::Error> {
        let name = self.config.lease_name.clone();
        let now = MicroTime(Timestamp::now());
        let duration_seconds = self.config.lease_duration.as_secs_f64().ceil() as i32;
        let Some(mut lease) = self.api.get_opt(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Ours)
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => {
                    Ok(Attempt::Conflict)
                }
                Err(e) => Err(e),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.take().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if let Some(holder) = holder.as_ref().filter(|_| !ours) {
            // A leader that sees another holder has lost, whatever it thinks of the expiry.
            if leading || !self.expired(&spec) {
                return Ok(Attempt::HeldBy(holder.clone()));
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(duration_seconds),
            acquire_time: if ours {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        });
        // `lease.metadata.resourceVersion` is the one just read: the write succeeds only if nobody
        // wrote in between.
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(replaced) => {
                self.observe(&replaced);
                Ok(Attempt::Ours)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Notes when the Lease last changed, on our clock.
    fn observe(&mut self, lease: &Lease) {
        let version = lease.metadata.resource_version.clone();
        if self.observed.as_ref().is_none_or(|(v, _)| *v != version) {
            self.observed = Some((version, Instant::now()));
        }
    }

    /// Whether the holder has had `leaseDurationSeconds` (its own figure) since we saw the Lease change.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let duration = spec
            .lease_duration_seconds
            .filter(|s| *s > 0)
            .map_or(self.config.lease_duration, |s| {
                Duration::from_secs(s as u64)
            });
        self.observed
            .as_ref()
            .is_none_or(|(_, seen)| seen.elapsed() >= duration)
    }

    /// Clears the holder (conditional on the resourceVersion read) so that a follower need not wait
    /// for the Lease to expire. Best effort: a failure only means the follower waits out the lease.
    async fn release(&mut self) {
        let release = async {
            let Some(mut lease) = self.api.get_opt(&self.config.lease_name).await? else {
                return Ok(false);
            };
            let mut spec = lease.spec.take().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(false);
            }
            let now = MicroTime(Timestamp::now());
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.acquire_time = Some(now.clone());
            spec.renew_time = Some(now);
            lease.spec = Some(spec);
            self.api
                .replace(&self.config.lease_name, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        };
        match tokio::time::timeout(self.config.renew_deadline, release).await {
            Ok(Ok(true)) => info!(lease = %self.lease(), "released the Lease"),
            Ok(Ok(false)) => {
                info!(lease = %self.lease(), "the Lease was no longer ours to release")
            }
            Ok(Err(e)) => {
                warn!(lease = %self.lease(), error = %e, "cannot release the Lease; a follower takes over when it expires")
            }
            Err(_) => {
                warn!(lease = %self.lease(), "no answer to the release; a follower takes over when the Lease expires")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_mandate_runs_out_on_its_own_clock() {
        let mandate = Mandate::default();
        assert!(mandate.holds(), "without leader election, always");
        mandate.revoke();
        assert!(!mandate.holds());
        mandate.grant_until(Instant::now() + Duration::from_secs(10));
        assert!(mandate.holds());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            !mandate.holds(),
            "a frozen leader must not act when it wakes"
        );
    }

    #[test]
    fn identities_differ_per_process_start() {
        assert_ne!(identity(), identity());
    }
}
