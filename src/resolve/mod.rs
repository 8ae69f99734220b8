//! Name resolution: an application name becomes the platform's id ([`Target`]), either from Kubernetes
//! pod labels held in a watch cache (`pods.rs`) or through the platform's own API.

pub mod pods;

use std::sync::Arc;

use crate::platform::{self, Platform, Target};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("application {application}: not found ({looked})")]
    Unresolved { application: String, looked: String },
    #[error("application {application}: ambiguous, it resolves to {} ids: {}", .ids.len(), .ids.join(", "))]
    Ambiguous {
        application: String,
        ids: Vec<String>,
    },
    /// Found, but not ready for a savepoint (a Flink job whose tasks are not all RUNNING).
    #[error("application {application}: not ready: {reason}")]
    NotReady { application: String, reason: String },
    #[error("the pod cache has not synced with the Kubernetes API yet")]
    NotSynced,
    #[error(transparent)]
    Platform(Box<platform::Error>),
}

impl Error {
    /// A static category for the `resolve_failures_total{reason}` label.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Unresolved { .. } => "unresolved",
            Error::Ambiguous { .. } => "ambiguous",
            Error::NotReady { .. } => "not_ready",
            Error::NotSynced => "not_synced",
            Error::Platform(_) => "platform_error",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How one platform's application names are resolved.
#[derive(Clone)]
pub enum Resolver {
    Api(Arc<dyn Platform>),
    Pods(pods::PodIndex),
}

impl Resolver {
    pub async fn resolve(&self, application: &str) -> Result<Target> {
        match self {
            Resolver::Api(platform) => platform.resolve(application).await,
            Resolver::Pods(index) => index.resolve(application),
        }
    }
}

/// VVP's sanitisation of deployment names into label values: "Fraud Detection" is `fraud-detection`.
/// Lower case; every run of characters other than `[a-z0-9]` becomes one `-`; no leading or trailing
/// `-`; at most 63 characters, the Kubernetes limit for a label value.
pub fn sanitize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(63);
    out.trim_end_matches('-').to_owned()
}

/// One id, or the error that names what was looked at or every id found.
pub fn unique(
    application: &str,
    mut ids: Vec<String>,
    looked: &str,
    source: impl Fn(&str) -> String,
) -> Result<Target> {
    ids.sort();
    ids.dedup();
    match ids.as_slice() {
        [] => Err(Error::Unresolved {
            application: application.to_owned(),
            looked: looked.to_owned(),
        }),
        [id] => Ok(Target {
            source: source(id),
            id: id.clone(),
        }),
        _ => Err(Error::Ambiguous {
            application: application.to_owned(),
            ids,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitises_like_vvp() {
        assert_eq!(sanitize("Fraud Detection"), "fraud-detection");
        assert_eq!(sanitize("My Deployment Name"), "my-deployment-name");
        assert_eq!(sanitize("  orders__v2 (EU) "), "orders-v2-eu");
        assert_eq!(sanitize("already-clean"), "already-clean");
        assert_eq!(sanitize(&"x".repeat(70)).len(), 63);
        assert_eq!(
            sanitize(&format!("{}-tail", "a".repeat(62))),
            "a".repeat(62)
        );
    }

    #[test]
    fn unique_names_every_id_when_ambiguous() {
        let err = unique(
            "fraud",
            vec!["b".into(), "a".into(), "b".into()],
            "pods",
            |_| String::new(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "application fraud: ambiguous, it resolves to 2 ids: a, b"
        );
        assert_eq!(err.category(), "ambiguous");
        let err = unique("fraud", vec![], "no pod in flink", |_| String::new()).unwrap_err();
        assert_eq!(err.category(), "unresolved");
        let ok = unique("fraud", vec!["a".into(), "a".into()], "", |id| {
            format!("label {id}")
        })
        .unwrap();
        assert_eq!(ok.id, "a");
        assert_eq!(ok.source, "label a");
    }
}
