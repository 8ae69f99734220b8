//! The platform-neutral model every part shares: what an application resolves to ([`Target`]), a
//! savepoint as savepointd sees it on any platform ([`Savepoint`]), why a name does not resolve
//! ([`ResolveError`]), and how names become label values and directory names ([`sanitize`]).
//!
//! A leaf: it depends on nothing else in the crate, so `platform/`, `resolve/`, `retention` and `config`
//! can all use it without depending on each other.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Marks that say a savepoint is savepointd's, so a restarted daemon recognises its own work: VVP
/// annotations; labels and annotations of CMF and the Flink Kubernetes Operator.
pub const ANNOTATION_MANAGED_BY: &str = "savepointd.io/managed-by";
pub const ANNOTATION_APPLICATION: &str = "savepointd.io/application";
pub const ANNOTATION_SLOT: &str = "savepointd.io/slot";
pub const MANAGED_BY: &str = "savepointd";

/// What an application name resolves to on its platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The configured application name this target stands for.
    pub application: String,
    /// The platform's id: VVP's deploymentId, Flink's job id.
    pub id: String,
    /// Where the id came from, for `savepointd resolve` and logs ("pod flink/jm-0 label deploymentId").
    pub source: String,
    /// Something about the target an operator should know, found while resolving it (CMF's own savepoint
    /// schedule active on the same application): logged at startup and shown by `status` and `resolve`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Asked for, not yet started by the platform (CMF, the Flink Kubernetes Operator).
    TriggerPending,
    /// Being taken (VVP's STARTED, Flink's IN_PROGRESS).
    InProgress,
    Completed,
    Failed,
    /// Given up by the platform because the job stopped (CMF, the operator): terminal, holds no state.
    Abandoned,
    PendingDeletion,
    Deleting,
    FailedDeletion,
    /// A state this version does not know; treated as in flight, the safe reading.
    Unknown,
}

impl State {
    /// Not terminal yet: it blocks other savepoints of its application (while younger than the
    /// application's timeout) and is never deleted.
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            State::TriggerPending | State::InProgress | State::Unknown
        )
    }

    /// Terminal states a savepoint can be deleted from (DESIGN.md §5 rule 2).
    pub fn is_deletable(self) -> bool {
        matches!(
            self,
            State::Completed | State::Failed | State::Abandoned | State::FailedDeletion
        )
    }

    /// Ended without usable state.
    pub fn is_failure(self) -> bool {
        matches!(self, State::Failed | State::Abandoned)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&wire_name(self))
    }
}

/// An enum value of the model as the platforms spell it (`IN_PROGRESS`, `FULL`, `USER_REQUEST`), as in
/// JSON output.
pub fn wire_name(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "UNKNOWN".to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Origin {
    UserRequest,
    Suspend,
    SuspendAndUpgrade,
    Copied,
    RetainedCheckpoint,
    /// Taken by the platform for an upgrade (CMF's source UPGRADE).
    Upgrade,
    /// Taken by the platform's own schedule (CMF's source SCHEDULE).
    Schedule,
    /// Taken by the Flink Kubernetes Operator's periodic savepoints (trigger type PERIODIC).
    Periodic,
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
    /// Why the platform will not (or must not) delete it, whatever a retention policy says: VVP's
    /// deletion prerequisites, the savepoint a running Flink job was restored from, a pinned one. The
    /// platform sets it when it lists; the retention planner keeps every savepoint that has one.
    pub protected: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Managed {
    pub application: String,
    /// The slot it was made for, as the platform recorded it (VVP annotations, the Flink savepoint's
    /// directory). `None` for a savepoint of the application whose slot the platform did not keep.
    pub slot: Option<DateTime<Utc>>,
}

impl Savepoint {
    /// Whether savepointd made this savepoint for this application's slot.
    pub fn is_managed_slot(&self, application: &str, slot: DateTime<Utc>) -> bool {
        self.managed
            .as_ref()
            .is_some_and(|m| m.application == application && m.slot == Some(slot))
    }

    /// Whether savepointd made this savepoint for this application (any slot).
    pub fn is_managed_for(&self, application: &str) -> bool {
        self.managed
            .as_ref()
            .is_some_and(|m| m.application == application)
    }
}

/// A slot as the platforms record it: RFC 3339 in UTC, whole seconds (`2026-11-20T01:00:00Z`).
pub fn slot_text(slot: DateTime<Utc>) -> String {
    slot.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Why an application name does not resolve to a target that can take a savepoint now.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
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
    /// The platform could not be asked (its error, boxed so this module needs no platform type).
    #[error(transparent)]
    Platform(Box<dyn std::error::Error + Send + Sync>),
}

impl ResolveError {
    /// Every value [`ResolveError::category`] takes, so each series exists at 0 from the start.
    pub const CATEGORIES: [&'static str; 5] = [
        "unresolved",
        "ambiguous",
        "not_ready",
        "not_synced",
        "platform_error",
    ];

    /// A static category for the `resolve_failures_total{reason}` label.
    pub fn category(&self) -> &'static str {
        match self {
            ResolveError::Unresolved { .. } => "unresolved",
            ResolveError::Ambiguous { .. } => "ambiguous",
            ResolveError::NotReady { .. } => "not_ready",
            ResolveError::NotSynced => "not_synced",
            ResolveError::Platform(_) => "platform_error",
        }
    }
}

/// One id, or the error that names what was looked at or every id found.
pub fn unique(
    application: &str,
    mut ids: Vec<String>,
    looked: &str,
    source: impl Fn(&str) -> String,
) -> Result<Target, ResolveError> {
    ids.sort();
    ids.dedup();
    match ids.as_slice() {
        [] => Err(ResolveError::Unresolved {
            application: application.to_owned(),
            looked: looked.to_owned(),
        }),
        [id] => Ok(Target {
            application: application.to_owned(),
            source: source(id),
            id: id.clone(),
            warning: None,
        }),
        _ => Err(ResolveError::Ambiguous {
            application: application.to_owned(),
            ids,
        }),
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

/// The directory an application's savepoints go to under a Flink `targetDirectory`: its sanitised
/// name, or, for a name with nothing usable in it, a stable digest (an empty name would be the whole
/// target directory). Two applications with one directory on one storage are a config error.
pub fn application_dir_name(application: &str) -> String {
    let name = sanitize(application);
    if name.is_empty() {
        format!(
            "app-{}",
            &hex(&Sha256::digest(application.as_bytes()))[..12]
        )
    } else {
        name
    }
}

/// The name of one attempt at one slot, for platforms whose savepoints are Kubernetes-style resources
/// named by their creator (CMF, the Flink Kubernetes Operator): the name is the slot's identity, so a
/// resent create meets "already exists" instead of making a second savepoint.
///
/// `<application>-<hash>-<yyyymmdd>-<hhmmss>-<attempt>`, a valid lowercase Kubernetes name of at most 63
/// characters. The readable part is the sanitised application name cut to 30 characters; the 4-byte hash
/// of (`scope`, full name) keeps names that sanitise or cut alike, or two kinds of one name, apart.
pub fn slot_resource_name(
    scope: &str,
    application: &str,
    slot: DateTime<Utc>,
    attempt: u32,
) -> String {
    let mut readable = sanitize(application);
    readable.truncate(30);
    let readable = readable.trim_end_matches('-');
    let readable = if readable.is_empty() { "sp" } else { readable };
    let mut hash = Sha256::new();
    hash.update(b"savepointd\0");
    hash.update(scope.as_bytes());
    hash.update(b"\0");
    hash.update(application.as_bytes());
    let hash = hex(&hash.finalize()[..4]);
    format!(
        "{readable}-{hash}-{}-{attempt}",
        slot.format("%Y%m%d-%H%M%S")
    )
}

/// The label key and value savepointd's resources carry, so they can be selected; the exact
/// application name is in the annotation (a label value is at most 63 characters of a narrow set).
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The labels of a resource savepointd creates for `application`.
pub fn labels(application: &str) -> serde_json::Value {
    let value = sanitize(application);
    serde_json::json!({
        LABEL_MANAGED_BY: MANAGED_BY,
        ANNOTATION_APPLICATION: if value.is_empty() { "unnamed".to_owned() } else { value },
    })
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    fn application_directories_are_never_empty() {
        assert_eq!(application_dir_name("Fraud Detection"), "fraud-detection");
        let odd = application_dir_name("日本");
        assert!(odd.starts_with("app-") && odd.len() == 16, "{odd}");
        assert_eq!(odd, application_dir_name("日本"));
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
        assert_eq!((ok.id.as_str(), ok.application.as_str()), ("a", "fraud"));
        assert_eq!(ok.source, "label a");
    }
}

#[cfg(test)]
mod category_tests {
    use super::*;

    #[test]
    fn resolve_categories_lists_every_category() {
        let application = String::new();
        let errors = [
            ResolveError::Unresolved {
                application: application.clone(),
                looked: String::new(),
            },
            ResolveError::Ambiguous {
                application: application.clone(),
                ids: Vec::new(),
            },
            ResolveError::NotReady {
                application: application.clone(),
                reason: String::new(),
            },
            ResolveError::NotSynced,
            ResolveError::Platform("x".into()),
        ];
        let seen: Vec<&str> = errors.iter().map(ResolveError::category).collect();
        assert_eq!(seen, ResolveError::CATEGORIES);
    }
}
