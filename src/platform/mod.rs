//! Platforms: one trait, one implementation per API (`vvp.rs`, `flink/`, `cmf.rs`, `operator.rs`), the
//! HTTP plumbing they share (`http.rs`), the one listing per tick their resolves share (`shared.rs`), and
//! how a configured platform becomes a client. A wire format lives in its own module only.

pub mod cmf;
pub mod flink;
pub mod http;
pub mod operator;
pub mod shared;
pub mod vvp;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::{self, FormatType, PlatformKind};
use crate::metrics::Metrics;
pub use crate::model::{
    ANNOTATION_APPLICATION, ANNOTATION_MANAGED_BY, ANNOTATION_SLOT, MANAGED_BY, Managed, Origin,
    ResolveError, Savepoint, SavepointType, State, Target,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request never left: nothing listens, the name does not resolve, TLS failed. Safe to resend.
    #[error("{platform}: {operation} {url}: cannot connect: {message}")]
    Connect {
        platform: String,
        operation: &'static str,
        url: String,
        message: String,
    },
    /// The request was sent, but no answer arrived (a reset, a closed connection): the platform may
    /// have acted on it.
    #[error("{platform}: {operation} {url}: sent, but no answer arrived: {message}")]
    NoAnswer {
        platform: String,
        operation: &'static str,
        url: String,
        message: String,
    },
    #[error("{platform}: {operation} {url}: no answer within {timeout:?}")]
    Timeout {
        platform: String,
        operation: &'static str,
        url: String,
        timeout: std::time::Duration,
    },
    #[error("{platform}: {operation} {url}: HTTP {status}: {message}")]
    Status {
        platform: String,
        operation: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{platform}: {operation} {url}: unexpected answer: {message}")]
    Decode {
        platform: String,
        operation: &'static str,
        url: String,
        message: String,
    },
    #[error("{platform}: deletion of savepoint {id} failed: {message}")]
    DeletionFailed {
        platform: String,
        id: String,
        message: String,
    },
    #[error("{platform}: savepoint {id} is still being deleted after {after:?}")]
    DeletionPending {
        platform: String,
        id: String,
        after: std::time::Duration,
    },
    #[error("{platform}: savepoint storage {url}: {message}")]
    Storage {
        platform: String,
        url: String,
        message: String,
    },
    #[error("{platform}: cannot read the API token: {message}")]
    Token { platform: String, message: String },
    #[error("{platform}: cannot set up the HTTP client: {message}")]
    Setup { platform: String, message: String },
}

impl Error {
    /// Every value [`Error::category`] takes, so each series exists at 0 from the start.
    pub const CATEGORIES: [&'static str; 14] = [
        "connect",
        "no_answer",
        "timeout",
        "server_error",
        "conflict",
        "not_found",
        "unauthorized",
        "client_error",
        "bad_answer",
        "deletion_failed",
        "deletion_pending",
        "storage",
        "token",
        "setup",
    ];

    /// A static category for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Connect { .. } => "connect",
            Error::NoAnswer { .. } => "no_answer",
            Error::Timeout { .. } => "timeout",
            Error::Status { status, .. } if *status >= 500 => "server_error",
            Error::Status { status: 409, .. } => "conflict",
            Error::Status { status: 404, .. } => "not_found",
            Error::Status {
                status: 401 | 403, ..
            } => "unauthorized",
            Error::Status { .. } => "client_error",
            Error::Decode { .. } => "bad_answer",
            Error::DeletionFailed { .. } => "deletion_failed",
            Error::DeletionPending { .. } => "deletion_pending",
            Error::Storage { .. } => "storage",
            Error::Token { .. } => "token",
            Error::Setup { .. } => "setup",
        }
    }

    /// Whether the platform may have carried the request out although no success came back: the
    /// answer was lost or late, or a 5xx came from a proxy in front of a platform that acted. A
    /// non-idempotent request that failed so is never resent blindly: its effect is looked for first.
    pub fn may_have_acted(&self) -> bool {
        match self {
            Error::NoAnswer { .. } | Error::Timeout { .. } => true,
            Error::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Whether a failed create should be followed by a look at the platform's records rather than
    /// counted as a failed attempt: the answer may have been lost, or (409) a resource of that name
    /// exists already — on a platform whose savepoint names carry the slot (CMF), the slot's own.
    pub fn look_before_resending(&self) -> bool {
        self.may_have_acted() || self.status() == Some(409)
    }

    /// The HTTP status, when the platform answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What savepointd asks a platform for.
#[derive(Debug, Clone)]
pub struct TriggerRequest<'a> {
    pub application: &'a str,
    pub slot: DateTime<Utc>,
    /// 1 for the slot's first attempt; a retry after a failed savepoint is a new attempt.
    pub attempt: u32,
    pub format_type: FormatType,
}

#[async_trait]
pub trait Platform: Send + Sync {
    fn name(&self) -> &str;

    /// One authenticated read that any configured platform answers (at startup, so that a wrong URL or
    /// token shows at once rather than at the first slot).
    async fn probe(&self) -> Result<()>;

    /// Resolves an application name through the platform's own API.
    async fn resolve(&self, application: &str) -> Result<Target, ResolveError>;

    /// Starts a savepoint. The returned savepoint is usually STARTED.
    async fn trigger(&self, target: &Target, request: &TriggerRequest<'_>) -> Result<Savepoint>;

    async fn get(&self, target: &Target, id: &str) -> Result<Savepoint>;

    /// Every savepoint of the target, whoever created it.
    async fn list(&self, target: &Target) -> Result<Vec<Savepoint>>;

    /// Deletes a savepoint and follows the deletion to its end: `Ok(Gone)` once it is gone,
    /// `Ok(Pending)` when the platform accepted it and finishes it later by itself (CMF while the job is
    /// down): not a failure, and not to be sent again. A refusal (VVP's 409) is an `Error::Status`
    /// carrying the platform's message; it is never forced.
    async fn delete(&self, target: &Target, savepoint: &Savepoint) -> Result<Deletion>;
}

/// How an accepted deletion ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    Gone,
    /// Accepted; the platform removes it later by itself. Says when.
    Pending(String),
}

/// A connected platform: its client, and for a platform read through Kubernetes watch caches, the
/// futures that drive them and a signal that they have synced.
pub struct Connected {
    pub client: Arc<dyn Platform>,
    pub watches: Option<Watches>,
}

/// The futures that keep a platform's caches (they end at shutdown), and a signal that every cache has
/// listed once.
pub struct Watches {
    pub drivers: Vec<futures::future::BoxFuture<'static, ()>>,
    pub synced: tokio::sync::watch::Receiver<bool>,
}

/// Builds the client for one configured platform. `kube` is the Kubernetes client, there when any
/// platform needs one ([`config::Config::needs_kubernetes`]).
pub fn connect(
    platform: &config::Platform,
    metrics: &Metrics,
    kube: Option<&kube::Client>,
    shutdown: &CancellationToken,
) -> Result<Connected> {
    let http = |platform: &config::Platform| {
        if let Some(url) = &platform.url
            && platform.auth.is_some()
            && url.scheme() == "http"
        {
            tracing::warn!(platform = %platform.name, url = %url,
                "the API token is sent over plain http, readable by anyone on the path; use https");
        }
        http::ApiClient::new(platform, metrics.clone())
    };
    let client: Arc<dyn Platform> = match &platform.kind {
        PlatformKind::Vvp(vvp) => Arc::new(vvp::Vvp::new(http(platform)?, vvp.namespace.clone())),
        PlatformKind::Flink(flink) => {
            Arc::new(flink::Flink::new(http(platform)?, &flink.target_directory)?)
        }
        PlatformKind::Cmf(cmf) => Arc::new(cmf::Cmf::new(
            http(platform)?,
            cmf.environment.clone(),
            cmf.statements.clone(),
        )),
        PlatformKind::FlinkOperator(op) => {
            let kube = kube.cloned().ok_or_else(|| Error::Setup {
                platform: platform.name.clone(),
                message: "no Kubernetes client".into(),
            })?;
            let (operator, watches) = operator::FlinkOperator::watch(
                &platform.name,
                kube,
                &op.namespaces,
                metrics.clone(),
                shutdown.clone(),
            );
            return Ok(Connected {
                client: Arc::new(operator),
                watches: Some(watches),
            });
        }
    };
    Ok(Connected {
        client,
        watches: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_lists_every_category_and_nothing_else() {
        let (platform, operation, url) = (String::new(), "get", String::new());
        let status = |status| Error::Status {
            platform: platform.clone(),
            operation,
            url: url.clone(),
            status,
            message: String::new(),
        };
        let text = |make: fn(String, &'static str, String, String) -> Error| {
            make(platform.clone(), operation, url.clone(), String::new())
        };
        let errors = [
            text(|platform, operation, url, message| Error::Connect {
                platform,
                operation,
                url,
                message,
            }),
            text(|platform, operation, url, message| Error::NoAnswer {
                platform,
                operation,
                url,
                message,
            }),
            Error::Timeout {
                platform: platform.clone(),
                operation,
                url: url.clone(),
                timeout: std::time::Duration::ZERO,
            },
            status(503),
            status(409),
            status(404),
            status(401),
            status(400),
            text(|platform, operation, url, message| Error::Decode {
                platform,
                operation,
                url,
                message,
            }),
            Error::DeletionFailed {
                platform: platform.clone(),
                id: String::new(),
                message: String::new(),
            },
            Error::DeletionPending {
                platform: platform.clone(),
                id: String::new(),
                after: std::time::Duration::ZERO,
            },
            Error::Storage {
                platform: platform.clone(),
                url: url.clone(),
                message: String::new(),
            },
            Error::Token {
                platform: platform.clone(),
                message: String::new(),
            },
            Error::Setup {
                platform: platform.clone(),
                message: String::new(),
            },
        ];
        let seen: Vec<&str> = errors.iter().map(Error::category).collect();
        assert_eq!(seen, Error::CATEGORIES);
    }
}
