//! The configuration: the YAML file (plus `SAVEPOINTD_*` environment overrides) as the operator writes it,
//! and its validation into the typed [`Config`] the daemon runs on.
//!
//! Loading is two steps. serde reads the file shape ([`File`]) and rejects unknown fields; then
//! [`File::validate`] parses every schedule, timezone and duration, resolves defaults and platform
//! references, and collects *every* problem with its field path, so an operator fixes a config in one pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::schedule::{BlackoutWindow, Schedule};

/// Environment variables starting with this prefix override file values; `__` separates levels.
pub const ENV_PREFIX: &str = "SAVEPOINTD_";

/// One problem in a config, located by its field path (`applications[2].schedule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub value: Option<String>,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}: {:?}: {}", self.path, value, self.reason),
            None => write!(f, "{}: {}", self.path, self.reason),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------------------
// The file shape, as serde reads it.
// ---------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct File {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub kubernetes: KubernetesFile,
    #[serde(default)]
    pub defaults: DefaultsFile,
    #[serde(default)]
    pub platforms: Vec<PlatformFile>,
    /// Each an object, or a bare name that takes everything from `defaults` (the chart's short form).
    #[serde(default, deserialize_with = "application_entries")]
    pub applications: Vec<ApplicationFile>,
    #[serde(default)]
    pub leader_election: LeaderElectionFile,
}

/// `applications` entries: `- fraud-detection` is `- name: fraud-detection`.
fn application_entries<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<ApplicationFile>, D::Error> {
    struct Entry(ApplicationFile);

    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            d.deserialize_any(EntryVisitor)
        }
    }

    struct EntryVisitor;

    impl<'de> serde::de::Visitor<'de> for EntryVisitor {
        type Value = Entry;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an application name, or a map with its name and settings")
        }

        fn visit_str<E: serde::de::Error>(self, name: &str) -> std::result::Result<Entry, E> {
            Ok(Entry(ApplicationFile {
                name: name.to_owned(),
                ..Default::default()
            }))
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            map: A,
        ) -> std::result::Result<Entry, A::Error> {
            ApplicationFile::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                .map(Entry)
        }
    }

    Ok(Vec::<Entry>::deserialize(deserializer)?
        .into_iter()
        .map(|e| e.0)
        .collect())
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerFile {
    pub listen: Option<String>,
    /// How long in-flight savepoint waits may go on after SIGTERM before they are abandoned.
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesFile {
    /// Absent: in-cluster service account, else `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
}

/// Several replicas, one acts (DESIGN.md §9). Durations as client-go's leader election has them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeaderElectionFile {
    #[serde(default)]
    pub enabled: bool,
    pub lease_name: Option<String>,
    /// Absent or empty: the pod's own namespace.
    pub namespace: Option<String>,
    pub lease_duration: Option<String>,
    pub renew_deadline: Option<String>,
    pub retry_period: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DefaultsFile {
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub timeout: Option<String>,
    pub format_type: Option<String>,
    pub retry: Option<RetryFile>,
    pub retention: Option<RetentionFile>,
    pub starting_deadline: Option<String>,
    pub jitter: Option<String>,
    pub blackout_windows: Option<Vec<BlackoutWindowFile>>,
}

/// `{schedule: "0 8 * * 1-5", duration: 10h}`: opens at every slot of `schedule`, in the application's
/// timezone, for `duration`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlackoutWindowFile {
    pub schedule: String,
    pub duration: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryFile {
    pub max_attempts: Option<u32>,
    pub backoff: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetentionFile {
    /// `retention: off` on an application: no rule applies, inherited or not.
    #[serde(
        default,
        skip_deserializing,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub off: bool,
    pub keep_last: Option<u32>,
    pub keep_within: Option<String>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub min_keep: Option<u32>,
    pub scope: Option<String>,
    pub max_deletions_per_run: Option<u32>,
}

impl RetentionFile {
    fn off() -> Self {
        Self {
            off: true,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlatformFile {
    pub name: String,
    pub kind: String,
    /// Every kind but flinkOperator, which reads and writes through the Kubernetes API.
    pub url: Option<String>,
    pub namespace: Option<String>,
    pub auth: Option<AuthFile>,
    pub tls: Option<TlsFile>,
    pub max_concurrent: Option<usize>,
    pub request_timeout: Option<String>,
    pub resolve: Option<ResolveFile>,
    pub target_directory: Option<String>,
    /// `kind: cmf`: the CMF environment that holds the applications.
    pub environment: Option<String>,
    /// `kind: flinkOperator`: where the FlinkDeployments and FlinkSessionJobs live (one or a list).
    pub kubernetes_namespace: Option<Namespaces>,
}

/// One namespace or a list of them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Namespaces {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthFile {
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsFile {
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for platforms that authenticate by mutual TLS (CMF).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResolveFile {
    pub via: Option<String>,
    pub kubernetes_namespace: Option<String>,
    pub name_label: Option<String>,
    pub id_label: Option<String>,
    pub selector: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApplicationFile {
    pub name: String,
    pub platform: Option<String>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub timeout: Option<String>,
    pub format_type: Option<String>,
    pub retry: Option<RetryFile>,
    /// Rules of its own (merged over `defaults.retention` field by field), or `off`: nothing of this
    /// application is deleted, whatever the defaults say.
    #[serde(default, deserialize_with = "retention_setting")]
    pub retention: Option<RetentionFile>,
    pub starting_deadline: Option<String>,
    /// A bound on a stable per-slot delay of the run, to spread load.
    pub jitter: Option<String>,
    /// Replaces the defaults' list; an empty list turns the inherited windows off.
    pub blackout_windows: Option<Vec<BlackoutWindowFile>>,
    #[serde(default)]
    pub paused: bool,
    /// `kind: cmf`: the name is a CMF statement, not a FlinkApplication.
    #[serde(default)]
    pub statement: bool,
}

/// An application's `retention`: a map of rules, or `off` (also `false`).
fn retention_setting<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<RetentionFile>, D::Error> {
    struct Setting;

    impl<'de> serde::de::Visitor<'de> for Setting {
        type Value = Option<RetentionFile>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("retention rules (keepLast, keepWithin, …), or off")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> std::result::Result<Self::Value, E> {
            match text {
                "off" => Ok(Some(RetentionFile::off())),
                other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
            }
        }

        fn visit_bool<E: serde::de::Error>(self, on: bool) -> std::result::Result<Self::Value, E> {
            if on {
                Err(E::invalid_value(serde::de::Unexpected::Bool(true), &self))
            } else {
                Ok(Some(RetentionFile::off()))
            }
        }

        fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            RetentionFile::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }

    deserializer.deserialize_any(Setting)
}

// ---------------------------------------------------------------------------------------------------------
// The validated config.
// ---------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub kubernetes: Kubernetes,
    pub platforms: Vec<Platform>,
    pub applications: Vec<Application>,
    /// `Some` when `leaderElection.enabled`: the replicas elect one that acts.
    pub leader_election: Option<LeaderElection>,
    /// SHA-256 of the effective config, exported as `config_info{sha256}`.
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    pub lease_name: String,
    /// `None`: the pod's namespace, found at startup (`leader::namespace`).
    pub namespace: Option<String>,
    /// How long followers wait, from the last change of the Lease they saw, before they take it over.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal; shorter than `lease_duration`, so
    /// that it has stopped before anyone may take over.
    pub renew_deadline: Duration,
    /// Between two attempts to acquire or renew.
    pub retry_period: Duration,
}

/// Where Kubernetes tells a pod its own namespace.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl LeaderElection {
    /// The Lease's namespace: as configured, else the pod's own (the service account's namespace file,
    /// else `POD_NAMESPACE` from the downward API). An error names the field to set.
    pub fn resolve_namespace(&self) -> Result<String, Problem> {
        if let Some(ns) = &self.namespace {
            return Ok(ns.clone());
        }
        let from_file = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
            .ok()
            .map(|s| s.trim().to_owned());
        let from_env = std::env::var("POD_NAMESPACE")
            .ok()
            .map(|s| s.trim().to_owned());
        from_file
            .into_iter()
            .chain(from_env)
            .find(|ns| !ns.is_empty())
            .ok_or_else(|| Problem {
                path: "leaderElection.namespace".into(),
                value: None,
                reason: format!(
                    "not set, and the pod's namespace is unknown (no {SERVICE_ACCOUNT_NAMESPACE}, no POD_NAMESPACE); set it"
                ),
            })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Kubernetes {
    pub kubeconfig: Option<PathBuf>,
}

/// What kind of platform, with the fields only that kind has. The file keeps them flat beside the
/// common ones (`kind: flink` with `targetDirectory`); validation sorts them into their kind, so a field
/// of another kind is an error that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformKind {
    Vvp(VvpSettings),
    Flink(FlinkSettings),
    Cmf(CmfSettings),
    FlinkOperator(FlinkOperatorSettings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlinkOperatorSettings {
    /// Where the FlinkDeployments, FlinkSessionJobs and their FlinkStateSnapshots live.
    pub namespaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VvpSettings {
    /// The VVP namespace (`default` unless set).
    pub namespace: String,
    pub resolve: Resolve,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlinkSettings {
    /// Savepoints go to `<targetDirectory>/<application dir>/slot-<slot>/`.
    pub target_directory: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmfSettings {
    pub environment: String,
    /// The configured applications of this platform that are CMF statements (`statement: true`).
    pub statements: BTreeSet<String>,
}

impl PlatformKind {
    pub fn name(&self) -> &'static str {
        match self {
            PlatformKind::Vvp(_) => "vvp",
            PlatformKind::Flink(_) => "flink",
            PlatformKind::Cmf(_) => "cmf",
            PlatformKind::FlinkOperator(_) => "flinkOperator",
        }
    }

    /// How application names are resolved: through the platform's API unless the kind reads
    /// Kubernetes pod labels.
    pub fn resolve(&self) -> &Resolve {
        match self {
            PlatformKind::Vvp(vvp) => &vvp.resolve,
            PlatformKind::Flink(_) | PlatformKind::Cmf(_) | PlatformKind::FlinkOperator(_) => {
                &Resolve::Api
            }
        }
    }
}

impl fmt::Display for PlatformKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone)]
pub struct Platform {
    pub name: String,
    pub kind: PlatformKind,
    /// The API's base URL; `None` for kind flinkOperator, reached through Kubernetes.
    pub url: Option<reqwest::Url>,
    pub auth: Option<Auth>,
    pub ca_file: Option<PathBuf>,
    pub client_certificate: Option<ClientCertificate>,
    pub insecure: bool,
    pub max_concurrent: usize,
    pub request_timeout: Duration,
}

/// `tls.certFile` and `tls.keyFile`: the certificate savepointd presents (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    TokenFile(PathBuf),
    TokenEnv(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolve {
    /// Through the platform's own API (VVP deployments, Flink's job overview).
    Api,
    /// Through Kubernetes pod labels, from a watch cache.
    Pods(PodResolve),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodResolve {
    pub namespace: String,
    pub name_label: String,
    pub id_label: String,
    pub selector: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FormatType {
    Canonical,
    Native,
}

impl fmt::Display for FormatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FormatType::Canonical => "CANONICAL",
            FormatType::Native => "NATIVE",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Savepoints tried for one slot, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles for each further one.
    pub backoff: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    Managed,
    UserRequested,
    All,
}

/// Retention policy. Keep rules form a union; with none set, retention is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub keep_last: u32,
    pub keep_within: Option<Duration>,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub min_keep: u32,
    pub scope: Scope,
    pub max_deletions_per_run: u32,
}

impl Retention {
    /// No keep rule at all means nobody asked savepointd to delete anything.
    pub fn is_enabled(&self) -> bool {
        self.keep_last > 0
            || self.keep_within.is_some()
            || self.keep_hourly > 0
            || self.keep_daily > 0
            || self.keep_weekly > 0
            || self.keep_monthly > 0
            || self.keep_yearly > 0
    }
}

#[derive(Debug, Clone)]
pub struct Application {
    pub name: String,
    /// Index into [`Config::platforms`].
    pub platform: usize,
    pub schedule: Schedule,
    pub timezone: Tz,
    pub timeout: Duration,
    pub format_type: FormatType,
    pub retry: Retry,
    pub retention: Retention,
    /// A slot missed by less than this when the daemon starts is still run (a restart at 01:00:05 must not
    /// lose the nightly savepoint); the platform's records decide whether it already has its savepoint.
    pub starting_deadline: Duration,
    /// The run of a slot starts at the slot plus a stable offset below this
    /// ([`crate::schedule::jitter_offset`]); the slot, which names the savepoint, stays the scheduled time.
    pub jitter: Duration,
    /// Slots inside one of these are skipped, not queued.
    pub blackout_windows: Vec<BlackoutWindow>,
    pub paused: bool,
}

impl Config {
    pub fn platform_of(&self, app: &Application) -> &Platform {
        &self.platforms[app.platform]
    }

    /// Whether any platform is read through Kubernetes: pods to resolve names, or the Flink Kubernetes
    /// Operator's resources.
    pub fn needs_kubernetes(&self) -> bool {
        self.platforms.iter().any(|p| {
            matches!(p.kind, PlatformKind::FlinkOperator(_))
                || matches!(p.kind.resolve(), Resolve::Pods(_))
        })
    }

    pub fn application(&self, name: &str) -> Option<&Application> {
        self.applications.iter().find(|a| a.name == name)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------------------------------------

/// Loads the file at `path`, applies `SAVEPOINTD_*` overrides from the process environment, and validates.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    from_figment(Figment::from(Yaml::string(&text)).merge(env_overrides()))
}

/// Reads what the config names outside itself: each platform's token (file or environment variable) and
/// CA file. `check-config` and every command run this before anything else, so that a config
/// `check-config` accepts starts, and a missing Secret is an error naming its field at once instead of a
/// 401 at the first slot. The token is read only to see that it is there; it is never kept or shown.
pub fn check_files(config: &Config) -> Result<()> {
    let mut problems = Problems::default();
    for (i, p) in config.platforms.iter().enumerate() {
        let path = format!("platforms[{i}]");
        match &p.auth {
            Some(Auth::TokenFile(file)) => {
                let shown = file.display().to_string();
                match std::fs::read_to_string(file) {
                    Ok(token) if token.trim().is_empty() => problems.push(
                        format!("{path}.auth.tokenFile"),
                        Some(&shown),
                        "the file is empty",
                    ),
                    Ok(_) => {}
                    Err(e) => problems.push(
                        format!("{path}.auth.tokenFile"),
                        Some(&shown),
                        format!("cannot read it: {e}"),
                    ),
                }
            }
            Some(Auth::TokenEnv(var)) if std::env::var(var).is_ok_and(|t| !t.trim().is_empty()) => {
            }
            Some(Auth::TokenEnv(var)) => problems.push(
                format!("{path}.auth.tokenEnv"),
                Some(var),
                "the environment variable is not set or empty",
            ),
            None => {}
        }
        if let Some(files) = &p.client_certificate
            && let Err(reason) = crate::platform::http::client_identity(files)
        {
            let shown = files.cert_file.display().to_string();
            problems.push(format!("{path}.tls.certFile"), Some(&shown), reason);
        }
        if let Some(ca) = &p.ca_file {
            use crate::platform::http::{CaFileError, ca_certificates};
            let reason = match ca_certificates(ca) {
                Ok(_) => None,
                Err(CaFileError::Unreadable(e)) => Some(format!("cannot read it: {e}")),
                Err(CaFileError::NotPem(_) | CaFileError::NoCertificate) => {
                    Some("holds no PEM certificate".to_owned())
                }
            };
            if let Some(reason) = reason {
                let shown = ca.display().to_string();
                problems.push(format!("{path}.tls.caFile"), Some(&shown), reason);
            }
        }
    }
    if let Some(election) = &config.leader_election
        && let Err(problem) = election.resolve_namespace()
    {
        problems.0.push(problem);
    }
    if problems.0.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(problems.0))
    }
}

/// Parses and validates a YAML document without environment overrides (for tests and `check-config` of
/// rendered manifests).
pub fn from_yaml(yaml: &str) -> Result<Config> {
    from_figment(Figment::from(Yaml::string(yaml)))
}

fn from_figment(figment: Figment) -> Result<Config> {
    let file: File = figment
        .extract()
        .map_err(|e| Error::Invalid(e.into_iter().map(figment_problem).collect()))?;
    file.validate()
}

/// The top-level sections of the file, the only ones environment variables may override.
const SECTIONS: [&str; 6] = [
    "server",
    "kubernetes",
    "defaults",
    "platforms",
    "applications",
    "leaderElection",
];

/// `SAVEPOINTD_DEFAULTS__FORMAT_TYPE=NATIVE` becomes `defaults.formatType`,
/// `SAVEPOINTD_LEADER_ELECTION__ENABLED=true` becomes `leaderElection.enabled`.
fn env_overrides() -> Env {
    Env::prefixed(ENV_PREFIX)
        // Only variables that name a config section: SAVEPOINTD_CONFIG and variables other programs
        // define with the same prefix are not config.
        .filter(|key| {
            let section = camel_case(key.as_str().split("__").next().unwrap_or_default());
            SECTIONS.contains(&section.as_str())
        })
        .map(|key| {
            key.as_str()
                .split("__")
                .map(camel_case)
                .collect::<Vec<_>>()
                .join(".")
                .into()
        })
        .lowercase(false)
}

fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    for (i, word) in snake.split('_').filter(|w| !w.is_empty()).enumerate() {
        let word = word.to_ascii_lowercase();
        if i == 0 {
            out.push_str(&word);
        } else {
            let mut chars = word.chars();
            out.extend(chars.next().map(|c| c.to_ascii_uppercase()));
            out.push_str(chars.as_str());
        }
    }
    out
}

fn figment_problem(error: figment::Error) -> Problem {
    use figment::error::Kind;
    let mut path = field_path(&error.path);
    let (value, reason) = match &error.kind {
        Kind::UnknownField(field, expected) => {
            if error.path.last() != Some(field) {
                path = join(&path, field);
            }
            (
                None,
                format!("unknown field; expected one of: {}", expected.join(", ")),
            )
        }
        Kind::MissingField(field) => {
            if error.path.last().map(String::as_str) != Some(field.as_ref()) {
                path = join(&path, field);
            }
            (None, "missing required field".to_owned())
        }
        Kind::InvalidType(actual, expected) => (
            Some(actual.to_string()),
            format!("expected {}", plain_expected(expected)),
        ),
        Kind::InvalidValue(actual, expected) => {
            (Some(actual.to_string()), format!("expected {expected}"))
        }
        other => (None, other.to_string()),
    };
    Problem {
        path: if path.is_empty() {
            "<root>".into()
        } else {
            path
        },
        value,
        reason,
    }
}

/// serde names the Rust type it wanted ("struct RetryFile"); an operator wants the shape.
fn plain_expected(expected: &str) -> String {
    if expected.starts_with("struct ") || expected.starts_with("a map") {
        "a map of fields (key: value)".to_owned()
    } else if expected.starts_with("a sequence") {
        "a list".to_owned()
    } else {
        expected.to_owned()
    }
}

/// `["applications", "2", "schedule"]` becomes `applications[2].schedule`.
fn field_path(segments: &[String]) -> String {
    segments.iter().fold(String::new(), |acc, s| join(&acc, s))
}

fn join(path: &str, segment: &str) -> String {
    if segment.parse::<usize>().is_ok() {
        format!("{path}[{segment}]")
    } else if path.is_empty() {
        segment.to_owned()
    } else {
        format!("{path}.{segment}")
    }
}

// ---------------------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------------------

const DEFAULT_LISTEN: &str = "0.0.0.0:9090";
const DEFAULT_SCHEDULE: &str = "0 1 * * *";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const DEFAULT_BACKOFF: Duration = Duration::from_secs(30);
const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const DEFAULT_STARTING_DEADLINE: Duration = Duration::from_secs(5 * 60);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_CONCURRENT: usize = 8;
const DEFAULT_MAX_DELETIONS_PER_RUN: u32 = 20;
/// Jitter spreads runs over minutes, perhaps hours; a day is beyond any use and beyond a daily schedule.
const MAX_JITTER: Duration = Duration::from_secs(24 * 3600);
// client-go's leader election defaults.
const DEFAULT_LEASE_NAME: &str = "savepointd";
const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Collects problems while validation goes on, so all of them are reported at once.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, value: Option<&str>, reason: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            value: value.map(str::to_owned),
            reason: reason.into(),
        });
    }

    fn duration(&mut self, path: String, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if d.is_zero() => {
                    self.push(path, Some(text), "must be greater than zero");
                    default
                }
                // Far beyond any use, and a deadline computed from it would overflow a clock.
                Ok(d) if d > MAX_DURATION => {
                    self.push(path, Some(text), "must be at most 100y");
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.push(
                        path,
                        Some(text),
                        format!("not a duration ({e}); examples: 30s, 15m, 6h, 30d"),
                    );
                    default
                }
            },
        }
    }
}

/// The longest duration any field takes: 100 years.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400 + 25 * 86_400);

impl File {
    pub fn validate(&self) -> Result<Config> {
        let mut problems = Problems::default();

        let listen_text = self.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text.parse().unwrap_or_else(|_| {
            problems.push(
                "server.listen",
                Some(listen_text),
                "expected an address like 0.0.0.0:9090",
            );
            SocketAddr::from(([0, 0, 0, 0], 9090))
        });
        let server = Server {
            listen,
            shutdown_grace: problems.duration(
                "server.shutdownGrace".into(),
                self.server.shutdown_grace.as_deref(),
                DEFAULT_SHUTDOWN_GRACE,
            ),
        };

        let mut platforms: Vec<Platform> = self
            .platforms
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.validate(&format!("platforms[{i}]"), &mut problems))
            .collect();
        let mut seen = BTreeMap::new();
        for (i, p) in self.platforms.iter().enumerate() {
            if let Some(first) = seen.insert(p.name.as_str(), i) {
                problems.push(
                    format!("platforms[{i}].name"),
                    Some(&p.name),
                    format!("duplicate platform name (also platforms[{first}])"),
                );
            }
        }
        if self.platforms.is_empty() {
            problems.push("platforms", None, "at least one platform is required");
        }
        // A daemon with nothing to do would start, report ready, and never take a savepoint.
        if self.applications.is_empty() {
            problems.push(
                "applications",
                None,
                "at least one application is required: the names of the Flink applications to take savepoints of",
            );
        }

        let defaults = &self.defaults;
        let mut seen = BTreeMap::new();
        let mut applications = Vec::with_capacity(self.applications.len());
        for (i, app) in self.applications.iter().enumerate() {
            let path = format!("applications[{i}]");
            if app.name.trim().is_empty() {
                problems.push(format!("{path}.name"), Some(&app.name), "must not be empty");
            }
            if let Some(first) = seen.insert(app.name.as_str(), i) {
                problems.push(
                    format!("{path}.name"),
                    Some(&app.name),
                    format!("duplicate application name (also applications[{first}])"),
                );
            }
            if let Some(a) = app.validate(&path, defaults, &self.platforms, &mut problems) {
                applications.push(a);
            }
        }
        // Application platform indexes point into the file's platforms; they match the validated ones
        // only when every platform is valid.
        if platforms.len() == self.platforms.len() {
            shared_savepoint_directories(
                &self.applications,
                &applications,
                &platforms,
                &mut problems,
            );
        }
        mark_statements(&self.applications, &mut platforms, &mut problems);
        // The defaults are checked even when no application uses one of them, so that a typo in a
        // rarely-inherited default is caught now, not when it is first inherited.
        ApplicationFile {
            name: "defaults".into(),
            ..Default::default()
        }
        .validate_fields("defaults", defaults, 0, &mut problems);

        let leader_election = self.leader_election.validate(&mut problems);

        if !problems.0.is_empty() {
            // An application that inherits a bad default reports it under `defaults.*`; say it once.
            let mut unique: Vec<Problem> = Vec::new();
            for p in problems.0 {
                if !unique.contains(&p) {
                    unique.push(p);
                }
            }
            return Err(Error::Invalid(unique));
        }
        let sha256 = hex(&Sha256::digest(
            serde_json::to_vec(self).expect("config serialises"),
        ));
        // Applications on one schedule share its parsed form.
        let mut parsed = HashMap::new();
        for a in &mut applications {
            a.schedule.share(&mut parsed);
            for w in &mut a.blackout_windows {
                w.schedule.share(&mut parsed);
            }
        }
        Ok(Config {
            server,
            kubernetes: Kubernetes {
                kubeconfig: self.kubernetes.kubeconfig.clone(),
            },
            platforms,
            applications,
            leader_election,
            sha256,
        })
    }
}

impl LeaderElectionFile {
    /// Checks every field, enabled or not (a typo shows before the day it is turned on); `Some` only
    /// when enabled.
    fn validate(&self, problems: &mut Problems) -> Option<LeaderElection> {
        const PATH: &str = "leaderElection";
        let before = problems.0.len();
        let lease_name = self
            .lease_name
            .clone()
            .unwrap_or_else(|| DEFAULT_LEASE_NAME.into());
        if let Err(reason) = check_dns_subdomain(&lease_name) {
            problems.push(format!("{PATH}.leaseName"), Some(&lease_name), reason);
        }
        let namespace = self.namespace.clone().filter(|n| !n.is_empty());
        if let Some(ns) = &namespace
            && let Err(reason) = check_dns_label(ns)
        {
            problems.push(format!("{PATH}.namespace"), Some(ns), reason);
        }
        let mut duration = |field: &str, value: &Option<String>, default| {
            problems.duration(format!("{PATH}.{field}"), value.as_deref(), default)
        };
        let lease_duration = duration(
            "leaseDuration",
            &self.lease_duration,
            DEFAULT_LEASE_DURATION,
        );
        let renew_deadline = duration(
            "renewDeadline",
            &self.renew_deadline,
            DEFAULT_RENEW_DEADLINE,
        );
        let retry_period = duration("retryPeriod", &self.retry_period, DEFAULT_RETRY_PERIOD);
        // client-go's checks: the leader must give up before a follower may take over, and must have
        // had room for more than one attempt to renew before it gives up.
        let shown = |d: Duration| humantime::format_duration(d).to_string();
        if lease_duration <= renew_deadline {
            problems.push(
                format!("{PATH}.leaseDuration"),
                Some(&shown(lease_duration)),
                format!(
                    "must be greater than renewDeadline ({})",
                    shown(renew_deadline)
                ),
            );
        }
        if renew_deadline.as_secs_f64() <= 1.2 * retry_period.as_secs_f64() {
            problems.push(
                format!("{PATH}.renewDeadline"),
                Some(&shown(renew_deadline)),
                format!(
                    "must be greater than 1.2 × retryPeriod ({})",
                    shown(retry_period)
                ),
            );
        }
        if lease_duration.as_secs() > i32::MAX as u64 {
            problems.push(
                format!("{PATH}.leaseDuration"),
                Some(&shown(lease_duration)),
                "too long for a Lease",
            );
        }
        if !self.enabled || problems.0.len() > before {
            return None;
        }
        Some(LeaderElection {
            lease_name,
            namespace,
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }
}

/// A Kubernetes object name (RFC 1123 subdomain), so that a bad Lease name fails at load.
fn check_dns_subdomain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    if name.split('.').all(|part| check_dns_label(part).is_ok()) {
        Ok(())
    } else {
        Err("must be lowercase letters, digits, '-' and '.', starting and ending alphanumeric")
    }
}

/// A Kubernetes namespace name (RFC 1123 label).
fn check_dns_label(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(
            "must be at most 63 lowercase letters, digits and '-', starting and ending alphanumeric",
        )
    }
}

pub(crate) use crate::model::hex;

/// Two applications whose savepoints would go to one directory (on Flink platforms with the same
/// `targetDirectory`, names that sanitise alike: "Fraud Detection" and "fraud-detection"): retention of
/// one would delete the other's savepoints. Reported on the later one, naming both.
fn shared_savepoint_directories(
    files: &[ApplicationFile],
    applications: &[Application],
    platforms: &[Platform],
    problems: &mut Problems,
) {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for app in applications {
        let Some(PlatformKind::Flink(flink)) = platforms.get(app.platform).map(|p| &p.kind) else {
            continue;
        };
        let Ok(root) = crate::platform::flink::storage_root(&flink.target_directory) else {
            continue;
        };
        let dir = format!("{root}{}/", crate::model::application_dir_name(&app.name));
        match seen.get(dir.as_str()) {
            Some(first) => {
                let index = files.iter().position(|f| f.name == app.name).unwrap_or(0);
                let first_index = files.iter().position(|f| f.name == *first).unwrap_or(0);
                problems.push(
                    format!("applications[{index}].name"),
                    Some(&app.name),
                    format!(
                        "its savepoints would go to {dir}, the directory of application {first} \
                         (applications[{first_index}]); applications must not share a savepoint \
                         directory, or retention of one deletes the other's savepoints"
                    ),
                );
            }
            None => {
                seen.insert(dir, &app.name);
            }
        }
    }
}

impl PlatformFile {
    fn validate(&self, path: &str, problems: &mut Problems) -> Option<Platform> {
        let before = problems.0.len();
        if self.name.trim().is_empty() {
            problems.push(
                format!("{path}.name"),
                Some(&self.name),
                "must not be empty",
            );
        }
        let kind = match self.kind.as_str() {
            "vvp" => self.validate_vvp(path, problems),
            "flink" => self.validate_flink(path, problems),
            "cmf" => self.validate_cmf(path, problems),
            "flinkOperator" => self.validate_flink_operator(path, problems),
            other => {
                problems.push(
                    format!("{path}.kind"),
                    Some(other),
                    "expected one of: vvp, flink, cmf, flinkOperator",
                );
                None
            }
        };
        let url = self.validate_url(path, problems);
        let auth = self
            .auth
            .as_ref()
            .and_then(|a| match (&a.token_file, &a.token_env) {
                (Some(file), None) => Some(Auth::TokenFile(file.clone())),
                (None, Some(var)) => Some(Auth::TokenEnv(var.clone())),
                (Some(_), Some(_)) => {
                    problems.push(
                        format!("{path}.auth"),
                        None,
                        "set either tokenFile or tokenEnv, not both",
                    );
                    None
                }
                (None, None) => {
                    problems.push(format!("{path}.auth"), None, "set tokenFile or tokenEnv");
                    None
                }
            });
        let tls = self.tls.clone().unwrap_or_default();
        let client_certificate = match (tls.cert_file, tls.key_file) {
            (Some(cert_file), Some(key_file)) => Some(ClientCertificate {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            (Some(_), None) => {
                problems.push(
                    format!("{path}.tls.keyFile"),
                    None,
                    "required with tls.certFile (the client certificate's private key)",
                );
                None
            }
            (None, Some(_)) => {
                problems.push(
                    format!("{path}.tls.certFile"),
                    None,
                    "required with tls.keyFile (the client certificate)",
                );
                None
            }
        };
        let max_concurrent = self.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT);
        if max_concurrent == 0 {
            problems.push(
                format!("{path}.maxConcurrent"),
                Some("0"),
                "must be at least 1",
            );
        }
        let request_timeout = problems.duration(
            format!("{path}.requestTimeout"),
            self.request_timeout.as_deref(),
            DEFAULT_REQUEST_TIMEOUT,
        );
        if problems.0.len() > before {
            return None;
        }
        Some(Platform {
            name: self.name.clone(),
            kind: kind?,
            url: url?,
            auth,
            ca_file: self.tls.as_ref().and_then(|t| t.ca_file.clone()),
            client_certificate,
            insecure: self.tls.as_ref().is_some_and(|t| t.insecure),
            max_concurrent,
            request_timeout,
        })
    }

    /// `kind: vvp`: a namespace and how names resolve; no `targetDirectory` (VVP chooses locations).
    fn validate_vvp(&self, path: &str, problems: &mut Problems) -> Option<PlatformKind> {
        self.refuse_environment(path, problems);
        self.refuse_kubernetes_namespace(path, problems);
        if let Some(dir) = &self.target_directory {
            problems.push(
                format!("{path}.targetDirectory"),
                Some(dir),
                "only for kind flink; VVP chooses the savepoint location itself",
            );
        }
        let resolve = self.validate_resolve(path, true, problems)?;
        Some(PlatformKind::Vvp(VvpSettings {
            namespace: self.namespace.clone().unwrap_or_else(|| "default".into()),
            resolve,
        }))
    }

    /// `kind: flink`: a `targetDirectory` on a storage savepointd can list; names resolve through the
    /// JobManager's API.
    fn validate_flink(&self, path: &str, problems: &mut Problems) -> Option<PlatformKind> {
        self.refuse_environment(path, problems);
        self.refuse_kubernetes_namespace(path, problems);
        if let Some(namespace) = &self.namespace {
            problems.push(
                format!("{path}.namespace"),
                Some(namespace),
                "only for kind vvp",
            );
        }
        self.validate_resolve(path, false, problems);
        let Some(dir) = &self.target_directory else {
            problems.push(
                format!("{path}.targetDirectory"),
                None,
                "required for kind flink (savepoints go to <targetDirectory>/<application>/)",
            );
            return None;
        };
        if let Err(reason) = crate::platform::flink::storage_root(dir) {
            problems.push(format!("{path}.targetDirectory"), Some(dir), reason);
            return None;
        }
        Some(PlatformKind::Flink(FlinkSettings {
            target_directory: dir.clone(),
        }))
    }

    /// `url`: required, http(s), without credentials or a query; absent for kind flinkOperator. `None`
    /// when it is wrong (reported), `Some(None)` when rightly absent.
    fn validate_url(&self, path: &str, problems: &mut Problems) -> Option<Option<reqwest::Url>> {
        let through_kubernetes = self.kind == "flinkOperator";
        let text = match (&self.url, through_kubernetes) {
            (None, true) => return Some(None),
            (Some(url), true) => {
                problems.push(
                    format!("{path}.url"),
                    Some(url),
                    "not used by kind flinkOperator: it works through the Kubernetes API (kubernetes.kubeconfig, or the service account in a pod)",
                );
                return None;
            }
            (None, false) => {
                problems.push(format!("{path}.url"), None, "required");
                return None;
            }
            (Some(text), false) => text,
        };
        let url = match reqwest::Url::parse(text) {
            // Every error and log line names the URL: a secret in it would leak everywhere.
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                problems.push(
                    format!("{path}.url"),
                    Some(&redacted(&u)),
                    "must not carry credentials (they would appear in every log line); use auth.tokenFile or auth.tokenEnv",
                );
                None
            }
            Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                problems.push(
                    format!("{path}.url"),
                    Some(&redacted(&u)),
                    "must not carry a query string or fragment (a token in it would appear in every log line)",
                );
                None
            }
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
            Ok(_) => {
                problems.push(
                    format!("{path}.url"),
                    Some(text),
                    "expected an http:// or https:// URL",
                );
                None
            }
            Err(e) => {
                problems.push(
                    format!("{path}.url"),
                    Some(text),
                    format!("not a URL ({e})"),
                );
                None
            }
        };

        url.map(Some)
    }

    fn refuse_environment(&self, path: &str, problems: &mut Problems) {
        if let Some(environment) = &self.environment {
            problems.push(
                format!("{path}.environment"),
                Some(environment),
                "only for kind cmf",
            );
        }
    }

    /// A top-level `kubernetesNamespace` belongs to kind flinkOperator (VVP's pods namespace is
    /// `resolve.kubernetesNamespace`).
    fn refuse_kubernetes_namespace(&self, path: &str, problems: &mut Problems) {
        if self.kubernetes_namespace.is_some() {
            problems.push(
                format!("{path}.kubernetesNamespace"),
                None,
                "only for kind flinkOperator (for VVP's pods, use resolve.kubernetesNamespace)",
            );
        }
    }

    /// `kind: flinkOperator`: the namespaces of the FlinkDeployments and FlinkSessionJobs; everything
    /// else comes from Kubernetes (no URL, token or TLS of its own).
    fn validate_flink_operator(&self, path: &str, problems: &mut Problems) -> Option<PlatformKind> {
        self.refuse_environment(path, problems);
        let http_only = [
            ("namespace", self.namespace.is_some()),
            ("targetDirectory", self.target_directory.is_some()),
            ("auth", self.auth.is_some()),
            ("tls", self.tls.is_some()),
            ("resolve", self.resolve.is_some()),
        ];
        for (field, set) in http_only {
            if set {
                problems.push(
                    format!("{path}.{field}"),
                    None,
                    "not used by kind flinkOperator: it works through the Kubernetes API with savepointd's own Kubernetes credentials",
                );
            }
        }
        let namespaces = match &self.kubernetes_namespace {
            None => {
                problems.push(
                    format!("{path}.kubernetesNamespace"),
                    None,
                    "required for kind flinkOperator (where the FlinkDeployments and FlinkSessionJobs live; one or a list)",
                );
                return None;
            }
            Some(Namespaces::One(one)) => vec![one.clone()],
            Some(Namespaces::Many(many)) => many.clone(),
        };
        if namespaces.is_empty() {
            problems.push(
                format!("{path}.kubernetesNamespace"),
                Some("[]"),
                "at least one namespace",
            );
            return None;
        }
        let mut seen = BTreeSet::new();
        for (i, namespace) in namespaces.iter().enumerate() {
            let field = match &self.kubernetes_namespace {
                Some(Namespaces::Many(_)) => format!("{path}.kubernetesNamespace[{i}]"),
                _ => format!("{path}.kubernetesNamespace"),
            };
            if let Err(reason) = check_dns_label(namespace) {
                problems.push(field, Some(namespace), reason);
            } else if !seen.insert(namespace) {
                problems.push(field, Some(namespace), "listed twice");
            }
        }
        Some(PlatformKind::FlinkOperator(FlinkOperatorSettings {
            namespaces,
        }))
    }

    /// `kind: cmf`: an environment; names are FlinkApplications (or statements) of it, read through
    /// CMF's API; CMF chooses savepoint locations.
    fn validate_cmf(&self, path: &str, problems: &mut Problems) -> Option<PlatformKind> {
        self.refuse_kubernetes_namespace(path, problems);
        for (field, value) in [
            ("namespace", &self.namespace),
            ("targetDirectory", &self.target_directory),
        ] {
            if let Some(value) = value {
                problems.push(
                    format!("{path}.{field}"),
                    Some(value),
                    "not used by kind cmf (applications live in a CMF environment: set environment)",
                );
            }
        }
        if self.resolve.is_some() {
            problems.push(
                format!("{path}.resolve"),
                None,
                "not used by kind cmf: names are looked up through CMF's API",
            );
        }
        let Some(environment) = &self.environment else {
            problems.push(
                format!("{path}.environment"),
                None,
                "required for kind cmf (the CMF environment that holds the applications)",
            );
            return None;
        };
        if let Err(reason) = check_dns_label(environment) {
            problems.push(format!("{path}.environment"), Some(environment), reason);
            return None;
        }
        Some(PlatformKind::Cmf(CmfSettings {
            environment: environment.clone(),
            statements: BTreeSet::new(),
        }))
    }

    fn validate_resolve(
        &self,
        path: &str,
        pods_allowed: bool,
        problems: &mut Problems,
    ) -> Option<Resolve> {
        let r = self.resolve.clone().unwrap_or_default();
        let default_via = if pods_allowed { "pods" } else { "api" };
        match r.via.as_deref().unwrap_or(default_via) {
            "api" => {
                let pod_fields = [
                    ("kubernetesNamespace", &r.kubernetes_namespace),
                    ("nameLabel", &r.name_label),
                    ("idLabel", &r.id_label),
                    ("selector", &r.selector),
                ];
                for (field, value) in pod_fields {
                    if let Some(value) = value {
                        problems.push(
                            format!("{path}.resolve.{field}"),
                            Some(value),
                            "only used with via: pods",
                        );
                    }
                }
                Some(Resolve::Api)
            }
            "pods" if !pods_allowed => {
                problems.push(
                    format!("{path}.resolve.via"),
                    Some("pods"),
                    "kind flink resolves job names through the JobManager API; use via: api",
                );
                None
            }
            "pods" => {
                let selector = r
                    .selector
                    .unwrap_or_else(|| "system=ververica-platform".into());
                if let Err(reason) = check_selector(&selector) {
                    problems.push(format!("{path}.resolve.selector"), Some(&selector), reason);
                }
                Some(Resolve::Pods(PodResolve {
                    namespace: r.kubernetes_namespace.unwrap_or_else(|| "default".into()),
                    name_label: r.name_label.unwrap_or_else(|| "deploymentName".into()),
                    id_label: r.id_label.unwrap_or_else(|| "deploymentId".into()),
                    selector,
                }))
            }
            other => {
                problems.push(
                    format!("{path}.resolve.via"),
                    Some(other),
                    "expected pods or api",
                );
                None
            }
        }
    }
}

/// Tells each CMF platform which of its applications are statements (`statement: true`), a flag that
/// means nothing on another kind.
fn mark_statements(files: &[ApplicationFile], platforms: &mut [Platform], problems: &mut Problems) {
    for (i, app) in files.iter().enumerate().filter(|(_, a)| a.statement) {
        let platform = match (&app.platform, platforms.len()) {
            (Some(name), _) => platforms.iter_mut().find(|p| &p.name == name),
            (None, 1) => platforms.first_mut(),
            (None, _) => None,
        };
        match platform.map(|p| &mut p.kind) {
            Some(PlatformKind::Cmf(cmf)) => {
                cmf.statements.insert(app.name.clone());
            }
            Some(other) => problems.push(
                format!("applications[{i}].statement"),
                Some("true"),
                format!(
                    "only for applications on a cmf platform; this one is on a {other} platform"
                ),
            ),
            // The platform reference itself is reported where it is checked.
            None => {}
        }
    }
}

/// A URL as it may be shown: scheme, host, port and path, nothing that could hold a secret.
fn redacted(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    format!("{shown} (credentials, query and fragment not shown)")
}

/// A light syntax check of a Kubernetes label selector, so a typo fails at load and not as a 400 from
/// the API server after the daemon started.
fn check_selector(selector: &str) -> Result<(), String> {
    let mut depth = 0i32;
    let mut term = String::new();
    let mut terms = Vec::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut term));
                continue;
            }
            _ => {}
        }
        term.push(c);
    }
    terms.push(term);
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    for term in terms {
        let term = term.trim();
        if term.is_empty() {
            return Err("empty term".into());
        }
        let key = term
            .split(['=', '!', ' '])
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            return Err(format!("bad label key in {term:?}"));
        }
    }
    Ok(())
}

impl ApplicationFile {
    fn validate(
        &self,
        path: &str,
        defaults: &DefaultsFile,
        platforms: &[PlatformFile],
        problems: &mut Problems,
    ) -> Option<Application> {
        let before = problems.0.len();
        let platform = match &self.platform {
            Some(name) => platforms.iter().position(|p| &p.name == name).or_else(|| {
                let known: Vec<_> = platforms.iter().map(|p| p.name.as_str()).collect();
                problems.push(
                    format!("{path}.platform"),
                    Some(name),
                    format!("no such platform; configured: {}", known.join(", ")),
                );
                None
            }),
            None if platforms.len() == 1 => Some(0),
            None => {
                if platforms.len() > 1 {
                    problems.push(
                        format!("{path}.platform"),
                        None,
                        "required when more than one platform is configured",
                    );
                }
                None
            }
        };
        let app = self.validate_fields(path, defaults, platform.unwrap_or_default(), problems);
        if problems.0.len() > before {
            return None;
        }
        platform.and(app)
    }

    /// Validates the inheritable fields into the application on `platform`. Each comes from the
    /// application if set there (its path then names the application) and from `defaults` otherwise (its
    /// path then names `defaults`).
    fn validate_fields(
        &self,
        path: &str,
        defaults: &DefaultsFile,
        platform: usize,
        problems: &mut Problems,
    ) -> Option<Application> {
        let before = problems.0.len();
        let pick = |own: &Option<String>, inherited: &Option<String>, field: &str| match (
            own, inherited,
        ) {
            (Some(v), _) => Some((format!("{path}.{field}"), v.clone())),
            (None, Some(v)) => Some((format!("defaults.{field}"), v.clone())),
            (None, None) => None,
        };

        let schedule_pick = pick(&self.schedule, &defaults.schedule, "schedule");
        // Where the schedule came from, for problems of fields that depend on it.
        let schedule_source = schedule_pick
            .as_ref()
            .map_or_else(|| "the default schedule".to_owned(), |(p, _)| p.clone());
        let schedule = match schedule_pick {
            Some((p, text)) => Schedule::parse(&text, &self.name).map_err(|reason| {
                problems.push(p, Some(&text), reason);
            }),
            None => Ok(Schedule::parse(DEFAULT_SCHEDULE, &self.name).expect("default parses")),
        };
        let timezone = match pick(&self.timezone, &defaults.timezone, "timezone") {
            Some((p, text)) => text.parse::<Tz>().map_err(|_| {
                problems.push(
                    p,
                    Some(&text),
                    "not an IANA timezone name (examples: UTC, Europe/Berlin, America/New_York)",
                );
            }),
            None => Ok(Tz::UTC),
        };
        let timeout = match pick(&self.timeout, &defaults.timeout, "timeout") {
            Some((p, text)) => problems.duration(p, Some(&text), DEFAULT_TIMEOUT),
            None => DEFAULT_TIMEOUT,
        };
        let starting_deadline = match pick(
            &self.starting_deadline,
            &defaults.starting_deadline,
            "startingDeadline",
        ) {
            Some((p, text)) => problems.duration(p, Some(&text), DEFAULT_STARTING_DEADLINE),
            None => DEFAULT_STARTING_DEADLINE,
        };
        let format_type = match pick(&self.format_type, &defaults.format_type, "formatType") {
            Some((_, t)) if t == "CANONICAL" => FormatType::Canonical,
            Some((_, t)) if t == "NATIVE" => FormatType::Native,
            Some((p, t)) => {
                problems.push(p, Some(&t), "expected CANONICAL or NATIVE");
                FormatType::Canonical
            }
            None => FormatType::Canonical,
        };
        let jitter = match pick(&self.jitter, &defaults.jitter, "jitter") {
            Some((p, text)) => validate_jitter(
                p,
                &text,
                schedule.as_ref().ok().zip(timezone.ok()),
                &schedule_source,
                problems,
            ),
            None => Duration::ZERO,
        };
        let blackout_windows = self.validate_blackout_windows(
            path,
            defaults,
            schedule.as_ref().ok().zip(timezone.ok()),
            &schedule_source,
            problems,
        );
        let retry = validate_retry(path, self.retry.as_ref(), defaults.retry.as_ref(), problems);
        let retention = validate_retention(
            path,
            self.retention.as_ref(),
            defaults.retention.as_ref(),
            problems,
        );
        if problems.0.len() > before {
            return None;
        }
        Some(Application {
            name: self.name.clone(),
            platform,
            schedule: schedule.ok()?,
            timezone: timezone.ok()?,
            timeout,
            format_type,
            retry,
            retention,
            starting_deadline,
            jitter,
            blackout_windows,
            paused: self.paused,
        })
    }

    /// `blackoutWindows`: the application's own list if it has one (an empty one turns the defaults'
    /// off), else the defaults'. Each window's schedule and duration is checked, and the windows together
    /// must leave the schedule some slot.
    fn validate_blackout_windows(
        &self,
        path: &str,
        defaults: &DefaultsFile,
        schedule: Option<(&Schedule, Tz)>,
        schedule_source: &str,
        problems: &mut Problems,
    ) -> Vec<BlackoutWindow> {
        let (list_path, files) = match (&self.blackout_windows, &defaults.blackout_windows) {
            (Some(own), _) => (format!("{path}.blackoutWindows"), own),
            (None, Some(inherited)) => ("defaults.blackoutWindows".to_owned(), inherited),
            (None, None) => return Vec::new(),
        };
        let before = problems.0.len();
        let windows: Vec<BlackoutWindow> = files
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let at = format!("{list_path}[{i}]");
                // A window's own `@daily-random` is seeded like the application's schedule.
                let schedule = Schedule::parse(&w.schedule, &self.name)
                    .map_err(|reason| {
                        problems.push(format!("{at}.schedule"), Some(&w.schedule), reason)
                    })
                    .ok();
                let duration =
                    problems.duration(format!("{at}.duration"), Some(&w.duration), Duration::ZERO);
                Some(BlackoutWindow {
                    schedule: schedule?,
                    duration,
                })
            })
            .collect();
        if problems.0.len() > before {
            return Vec::new();
        }
        if let Some((schedule, tz)) = schedule
            && crate::schedule::never_runs(schedule, &windows, tz)
        {
            problems.push(
                list_path,
                None,
                format!(
                    "every slot falls inside a blackout window: the schedule {schedule} \
                     ({schedule_source}) would never run"
                ),
            );
        }
        windows
    }
}

/// `jitter`: zero (the default) or more, at most [`MAX_JITTER`], and shorter than the time between two
/// slots, so that a slot's run never starts after the next slot's. Exact for `@every`; for cron, checked
/// against a sample of its slots.
fn validate_jitter(
    path: String,
    text: &str,
    schedule: Option<(&Schedule, Tz)>,
    schedule_source: &str,
    problems: &mut Problems,
) -> Duration {
    let jitter = match humantime::parse_duration(text) {
        Ok(d) if d > MAX_JITTER => {
            problems.push(path, Some(text), "must be at most 24h");
            return Duration::ZERO;
        }
        Ok(d) => d,
        Err(e) => {
            problems.push(
                path,
                Some(text),
                format!("not a duration ({e}); examples: 0s, 30s, 5m"),
            );
            return Duration::ZERO;
        }
    };
    if let Some((schedule, tz)) = schedule
        && !jitter.is_zero()
    {
        let interval = schedule.shortest_interval(tz);
        if jitter >= interval {
            problems.push(
                path,
                Some(text),
                format!(
                    "must be shorter than the time between two slots of the schedule {schedule} \
                     ({schedule_source}): {}",
                    humantime::format_duration(interval)
                ),
            );
        }
    }
    jitter
}

/// Picks one field of a nested block (`retry`, `retention`) from the application, else from defaults,
/// with the path of wherever it came from.
fn field<'a, B, T: Clone + 'a>(
    path: &str,
    block: &str,
    own: Option<&'a B>,
    defaults: Option<&'a B>,
    name: &str,
    get: impl Fn(&'a B) -> &'a Option<T>,
) -> Option<(String, T)> {
    if let Some(v) = own.and_then(|b| get(b).clone()) {
        return Some((format!("{path}.{block}.{name}"), v));
    }
    defaults
        .and_then(|b| get(b).clone())
        .map(|v| (format!("defaults.{block}.{name}"), v))
}

fn validate_retry(
    path: &str,
    own: Option<&RetryFile>,
    defaults: Option<&RetryFile>,
    problems: &mut Problems,
) -> Retry {
    let max_attempts = match field(path, "retry", own, defaults, "maxAttempts", |r| {
        &r.max_attempts
    }) {
        Some((p, 0)) => {
            problems.push(
                p,
                Some("0"),
                "must be at least 1 (the first attempt counts)",
            );
            DEFAULT_MAX_ATTEMPTS
        }
        Some((_, n)) => n,
        None => DEFAULT_MAX_ATTEMPTS,
    };
    let backoff = match field(path, "retry", own, defaults, "backoff", |r| &r.backoff) {
        Some((p, text)) => problems.duration(p, Some(&text), DEFAULT_BACKOFF),
        None => DEFAULT_BACKOFF,
    };
    Retry {
        max_attempts,
        backoff,
    }
}

fn validate_retention(
    path: &str,
    own: Option<&RetentionFile>,
    defaults: Option<&RetentionFile>,
    problems: &mut Problems,
) -> Retention {
    // Off: nothing is inherited, so no keep rule is set and nothing is deleted.
    let defaults = defaults.filter(|_| !own.is_some_and(|r| r.off));
    let count = |name: &str, get: fn(&RetentionFile) -> &Option<u32>| {
        field(path, "retention", own, defaults, name, get).map_or(0, |(_, v)| v)
    };
    let keep_within = field(path, "retention", own, defaults, "keepWithin", |r| {
        &r.keep_within
    })
    .map(|(p, text)| problems.duration(p, Some(&text), Duration::ZERO));
    let min_keep = match field(path, "retention", own, defaults, "minKeep", |r| &r.min_keep) {
        Some((p, 0)) => {
            problems.push(
                p,
                Some("0"),
                "must be at least 1: the newest completed savepoint is always kept",
            );
            1
        }
        Some((_, n)) => n,
        None => 1,
    };
    let scope = match field(path, "retention", own, defaults, "scope", |r| &r.scope) {
        None => Scope::Managed,
        Some((_, s)) if s == "managed" => Scope::Managed,
        Some((_, s)) if s == "userRequested" => Scope::UserRequested,
        Some((_, s)) if s == "all" => Scope::All,
        Some((p, s)) => {
            problems.push(p, Some(&s), "expected managed, userRequested or all");
            Scope::Managed
        }
    };
    let max_deletions_per_run = match field(
        path,
        "retention",
        own,
        defaults,
        "maxDeletionsPerRun",
        |r| &r.max_deletions_per_run,
    ) {
        Some((_, n)) => n,
        None => DEFAULT_MAX_DELETIONS_PER_RUN,
    };
    Retention {
        keep_last: count("keepLast", |r| &r.keep_last),
        keep_within,
        keep_hourly: count("keepHourly", |r| &r.keep_hourly),
        keep_daily: count("keepDaily", |r| &r.keep_daily),
        keep_weekly: count("keepWeekly", |r| &r.keep_weekly),
        keep_monthly: count("keepMonthly", |r| &r.keep_monthly),
        keep_yearly: count("keepYearly", |r| &r.keep_yearly),
        min_keep,
        scope,
        max_deletions_per_run,
    }
}
