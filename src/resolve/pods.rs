//! Resolution through Kubernetes pod labels, as the blog's CronJob did with kubectl + jq, but from a
//! kube-runtime reflector: the pods are listed once and then watched, so resolving a name at a cron tick
//! costs no request to the API server however many applications there are. Only the pods' metadata is
//! asked for: a Flink pod's spec and status are most of its size, and the first list of a thousand
//! full pods was most of the daemon's memory at start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::{Error, Result, sanitize, unique};
use crate::config::PodResolve;
use crate::platform::Target;

/// Pods by the sanitised value of their name label: (pod name, id label value) for each.
type ByName = HashMap<String, Vec<(String, String)>>;

#[derive(Clone)]
pub struct PodIndex {
    store: Store<PartialObjectMeta<Pod>>,
    /// Built from the store on the first lookup after a change, so the thousand lookups of one busy
    /// slot cost one pass over the pods, not a thousand.
    by_name: Arc<Mutex<Option<ByName>>>,
    config: Arc<PodResolve>,
    /// Set once the first list arrived. Waiters use this rather than `Store::wait_until_ready`, which
    /// wakes only one of several concurrent waiters.
    synced: Arc<tokio::sync::watch::Sender<bool>>,
}

impl PodIndex {
    /// Starts watching the pods that `config` selects. The returned future drives the watch and must be
    /// polled (it ends when `shutdown` is cancelled); the index answers once the first list arrived.
    pub fn watch(
        client: Client,
        config: PodResolve,
        shutdown: CancellationToken,
    ) -> (PodIndex, impl Future<Output = ()> + Send + 'static) {
        let (store, writer) = reflector::store();
        let index = PodIndex {
            store: store.clone(),
            by_name: Arc::new(Mutex::new(None)),
            config: Arc::new(config.clone()),
            synced: Arc::new(tokio::sync::watch::Sender::new(false)),
        };
        // An Api of PartialObjectMeta asks the API server for metadata only (`as=PartialObjectMetadataList`).
        let api: Api<PartialObjectMeta<Pod>> = Api::namespaced(client, &config.namespace);
        let stream = watcher(api, watcher::Config::default().labels(&config.selector))
            .default_backoff()
            // Only the name and labels are read.
            .modify(|pod| {
                pod.metadata.annotations = None;
                pod.metadata.managed_fields = None;
                pod.metadata.owner_references = None;
            })
            .reflect(writer);
        let synced = index.synced.clone();
        let by_name = index.by_name.clone();
        let namespace = config.namespace.clone();
        let driver = async move {
            let drive = stream.for_each(|event| {
                match event {
                    // The store has applied the event; the index is rebuilt at the next lookup.
                    Ok(_) => *by_name.lock().expect("pod index lock") = None,
                    // The backoff retries; this says why pods may be stale meanwhile.
                    Err(e) => {
                        tracing::warn!(namespace = %namespace, error = %e, "pod watch failed; retrying")
                    }
                }
                futures::future::ready(())
            });
            let mark_synced = async {
                if store.wait_until_ready().await.is_ok() {
                    synced.send_replace(true);
                    tracing::info!(namespace = %namespace, pods = store.state().len(), "pod cache synced");
                }
                futures::future::pending::<()>().await
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = drive => {}
                _ = mark_synced => {}
            }
        };
        (index, driver)
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the cache has listed the pods once, or `shutdown` is cancelled.
    pub async fn wait_synced(&self, shutdown: &CancellationToken) -> bool {
        let mut synced = self.synced.subscribe();
        tokio::select! {
            r = synced.wait_for(|s| *s) => r.is_ok(),
            _ = shutdown.cancelled() => false,
        }
    }

    fn build(&self) -> ByName {
        let c = &self.config;
        let mut by_name = ByName::new();
        for pod in self.store.state() {
            let Some(labels) = pod.metadata.labels.as_ref() else {
                continue;
            };
            if let (Some(name), Some(id)) = (labels.get(&c.name_label), labels.get(&c.id_label)) {
                by_name
                    .entry(sanitize(name))
                    .or_default()
                    .push((pod.metadata.name.clone().unwrap_or_default(), id.clone()));
            }
        }
        by_name
    }

    /// Looks the name up in the cache: no request to the API server.
    pub fn resolve(&self, application: &str) -> Result<Target> {
        if !self.is_synced() {
            return Err(Error::NotSynced);
        }
        let c = &self.config;
        let wanted = sanitize(application);
        let (mut pods, ids): (Vec<String>, Vec<String>) = {
            let mut guard = self.by_name.lock().expect("pod index lock");
            let by_name = guard.get_or_insert_with(|| self.build());
            by_name
                .get(&wanted)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .unzip()
        };
        pods.sort();
        unique(
            application,
            ids,
            &format!(
                "no pod in namespace {} matching {} has label {}={wanted}",
                c.namespace, c.selector, c.name_label
            ),
            |_| {
                format!(
                    "label {} of pod {}/{}",
                    c.id_label,
                    c.namespace,
                    pods.join(", ")
                )
            },
        )
    }
}
