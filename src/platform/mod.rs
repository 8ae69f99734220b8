//! Platforms: one trait, one implementation per API (`vvp.rs`, `flink.rs`), and the platform-neutral savepoint model
//! the runner, retention and the CLI work with. A platform's wire format lives in its own file only.

pub mod flink;
pub mod http;
pub mod vvp;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{self, FormatType, PlatformKind};
use crate::metrics::Metrics;

/// Annotations that mark a savepoint as savepointd's, so a restarted daemon can recognise its own work.
pub const ANNOTATION_MANAGED_BY: &str = "savepointd.io/managed-by";
pub const ANNOTATION_APPLICATION: &str = "savepointd.io/application";
pub const ANNOTATION_SLOT: &str = "savepointd.io/slot";
pub const MANAGED_BY: &str = "savepointd";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{platform}: {operation} {url}: cannot connect: {message}")]
    Connect {
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
    #[error("{platform}: cannot read the API token: {message}")]
    Token { platform: String, message: String },
    #[error("{platform}: cannot set up the HTTP client: {message}")]
    Setup { platform: String, message: String },
}

impl Error {
    /// A static category for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Connect { .. } => "connect",
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
            Error::Token { .. } => "token",
            Error::Setup { .. } => "setup",
        }
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

/// What an application name resolves to on its platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// VVP: the deploymentId.
    pub id: String,
    /// Where the id came from, for `savepointd resolve` and logs ("pod flink/jm-0 label deploymentId").
    pub source: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Started,
    Completed,
    Failed,
    PendingDeletion,
    Deleting,
    FailedDeletion,
    /// A state this version does not know; treated as in flight, the safe reading.
    Unknown,
}

impl State {
    pub fn is_in_flight(self) -> bool {
        matches!(self, State::Started | State::Unknown)
    }

    /// Terminal states a savepoint can be deleted from (DESIGN.md §5 rule 2).
    pub fn is_deletable(self) -> bool {
        matches!(
            self,
            State::Completed | State::Failed | State::FailedDeletion
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).expect("state serialises");
        f.write_str(s.as_str().unwrap_or("UNKNOWN"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Origin {
    UserRequest,
    Suspend,
    SuspendAndUpgrade,
    Copied,
    RetainedCheckpoint,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SavepointType {
    Full,
    Incremental,
    Unknown,
}

/// A savepoint as savepointd sees it, whatever the platform.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Savepoint {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub state: State,
    pub origin: Origin,
    #[serde(rename = "type")]
    pub kind: SavepointType,
    pub location: Option<String>,
    pub failure: Option<String>,
    /// Set when savepointd created it.
    pub managed: Option<Managed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Managed {
    pub application: String,
    /// The slot it was made for, where the platform keeps it (VVP annotations). Flink keeps no
    /// metadata with a savepoint; its trigger ids make a slot's trigger idempotent instead.
    pub slot: Option<DateTime<Utc>>,
}

impl Savepoint {
    pub fn is_managed_slot(&self, application: &str, slot: DateTime<Utc>) -> bool {
        self.managed
            .as_ref()
            .is_some_and(|m| m.application == application && m.slot == Some(slot))
    }
}

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

    /// Resolves an application name through the platform's own API.
    async fn resolve(&self, application: &str) -> Result<Target, crate::resolve::Error>;

    /// Starts a savepoint. The returned savepoint is usually STARTED.
    async fn trigger(&self, target: &Target, request: &TriggerRequest<'_>) -> Result<Savepoint>;

    async fn get(&self, target: &Target, id: &str) -> Result<Savepoint>;

    /// Every savepoint of the target, whoever created it.
    async fn list(&self, target: &Target) -> Result<Vec<Savepoint>>;

    /// Deletes a savepoint and follows the deletion to its end: `Ok` once it is gone. A refusal (VVP's
    /// 409) is an `Error::Status` carrying the platform's message; it is never forced.
    async fn delete(&self, target: &Target, savepoint: &Savepoint) -> Result<()>;
}

/// Builds the client for one configured platform.
pub fn connect(platform: &config::Platform, metrics: &Metrics) -> Result<Arc<dyn Platform>> {
    let api = http::ApiClient::new(platform, metrics.clone())?;
    Ok(match platform.kind {
        PlatformKind::Vvp => Arc::new(vvp::Vvp::new(api, platform.namespace.clone())),
        PlatformKind::Flink => Arc::new(flink::Flink::new(api, platform)?),
    })
}
