//! Apache Flink JobManager REST API: the one place that knows its wire format
//! (`../shared/reference/apis.md`, observed on Flink 2.3.0), and the savepoint directories under
//! `targetDirectory`, which are read (and deleted as a last resort) through `object_store`.
//!
//! Flink keeps no metadata with a savepoint, so savepointd's own are recognised by where they are:
//! every savepoint it triggers goes to `<targetDirectory>/<application dir>/`, where the application
//! dir is the sanitised application name. A slot is made idempotent by the trigger id instead: it is
//! derived from (application, slot, attempt), and Flink answers a repeated trigger id with the
//! operation it already started rather than a second savepoint.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreScheme};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::http::{ApiClient, Retry};
use super::{
    Error, Managed, Origin, Platform, Result, Savepoint, SavepointType, State, Target,
    TriggerRequest,
};
use crate::config;
use crate::resolve;

/// How long a disposal is followed before it is reported as still pending (it may yet finish).
const DISPOSAL_FOLLOW_LIMIT: Duration = Duration::from_secs(120);
/// Object-store requests at once when a directory is listed or deleted.
const STORAGE_CONCURRENCY: usize = 8;
/// Jobs named in an "unresolved" message; a session cluster keeps finished jobs for an hour.
const JOBS_NAMED: usize = 3;

pub struct Flink {
    api: ApiClient,
    storage: Storage,
    /// The job id each application last resolved to. `list` and `delete` get a [`Target`] (a job id)
    /// and need the application it stands for: its directory, and the name `Managed` carries. One
    /// entry per application, so it stays as small as the config.
    resolved: Mutex<BTreeMap<String, String>>,
}

impl Flink {
    pub fn new(api: ApiClient, platform: &config::Platform) -> Result<Self> {
        let setup = |message: String| Error::Setup {
            platform: platform.name.clone(),
            message,
        };
        let dir = platform
            .target_directory
            .as_deref()
            .ok_or_else(|| setup("targetDirectory is required for kind flink".into()))?;
        let storage = Storage::new(dir).map_err(setup)?;
        Ok(Self {
            api,
            storage,
            resolved: Mutex::new(BTreeMap::new()),
        })
    }

    fn platform(&self) -> String {
        self.api.platform().to_owned()
    }

    fn known_application(&self, job_id: &str) -> Option<String> {
        let resolved = self.resolved.lock().expect("resolved lock");
        resolved
            .iter()
            .find(|(_, jid)| *jid == job_id)
            .map(|(app, _)| app.clone())
    }

    /// The application a target stands for: the one that resolved to it, else the job's own name
    /// (which resolves to the same directory, since resolution matches sanitised names).
    async fn application_of(&self, target: &Target) -> Result<String> {
        if let Some(app) = self.known_application(&target.id) {
            return Ok(app);
        }
        let job: WireJob = self
            .api
            .get("get_job", &format!("jobs/{}", target.id))
            .await?;
        Ok(job.name)
    }

    /// `Managed` for a savepoint at `location`, when that is under the application's directory.
    fn managed_at(&self, application: Option<&str>, location: Option<&str>) -> Option<Managed> {
        let application = application?;
        let dir = self.storage.app_dir(application);
        location
            .is_some_and(|l| is_under(l, &dir))
            .then(|| Managed {
                application: application.to_owned(),
                slot: None,
            })
    }

    /// Asks the JobManager to dispose of a savepoint and follows the disposal to its end. A refusal
    /// (an HTTP error status, or a failure cause) is `Ok(Refused)`; an unreachable JobManager or a
    /// disposal that does not end in time is an error.
    async fn dispose(&self, id: &str, location: &str) -> Result<Disposal> {
        let refused = |e: Error| match e.status() {
            // Flink's error bodies carry whole stack traces; the first line says what happened.
            Some(_) => Ok(Disposal::Refused(
                e.to_string().lines().next().unwrap_or_default().to_owned(),
            )),
            None => Err(e),
        };
        let body = json!({ "savepoint-path": location });
        let started: WireRequestId = match self
            .api
            .json(
                "dispose",
                Method::POST,
                "savepoint-disposal",
                Some(&body),
                Retry::Idempotent,
            )
            .await
        {
            Ok(started) => started,
            Err(e) => return refused(e),
        };
        let path = format!("savepoint-disposal/{}", started.request_id);
        let begun = Instant::now();
        let mut interval = Duration::from_millis(100);
        loop {
            let status: WireOperation = match self.api.get("get_disposal", &path).await {
                Ok(status) => status,
                Err(e) => return refused(e),
            };
            if status.status.id == "COMPLETED" {
                return Ok(match status.operation.and_then(|o| o.failure_cause) {
                    None => Disposal::Done,
                    Some(cause) => Disposal::Refused(cause.summary()),
                });
            }
            if begun.elapsed() >= DISPOSAL_FOLLOW_LIMIT {
                return Err(Error::DeletionPending {
                    platform: self.platform(),
                    id: id.to_owned(),
                    after: DISPOSAL_FOLLOW_LIMIT,
                });
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_secs(2));
        }
    }

    /// Deletes every object of a savepoint directory through the object store.
    async fn delete_directly(&self, id: &str, app_dir: &Url, dir: &Url) -> Result<usize> {
        let failed = |message: String| Error::DeletionFailed {
            platform: self.platform(),
            id: id.to_owned(),
            message,
        };
        let Some(Opened { store, base }) = self.storage.open(app_dir).map_err(&failed)? else {
            return Ok(0);
        };
        let relative = dir
            .path()
            .strip_prefix(app_dir.path())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| failed(format!("{dir} is not inside {app_dir}")))?;
        let mut prefix = base;
        for segment in relative.split('/').filter(|s| !s.is_empty()) {
            let segment = percent_decode(segment);
            prefix = prefix.child(segment.as_str());
        }
        let objects: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| failed(format!("cannot list {dir}: {e}")))?;
        let count = objects.len();
        futures::stream::iter(objects)
            .map(|o| {
                let store = store.clone();
                async move {
                    match store.delete(&o.location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(STORAGE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map_err(|e| failed(format!("cannot delete objects under {dir}: {e}")))?;
        Ok(count)
    }
}

#[async_trait]
impl Platform for Flink {
    fn name(&self) -> &str {
        self.api.platform()
    }

    async fn resolve(&self, application: &str) -> Result<Target, resolve::Error> {
        let platform_error = |e| resolve::Error::Platform(Box::new(e));
        let overview: WireOverview = self
            .api
            .get("list_jobs", "jobs/overview")
            .await
            .map_err(platform_error)?;
        let wanted = resolve::sanitize(application);
        let mut named: Vec<WireJobOverview> = overview
            .jobs
            .into_iter()
            .filter(|j| j.name == application || resolve::sanitize(&j.name) == wanted)
            .collect();
        named.sort_by_key(|j| std::cmp::Reverse(j.start_time));
        let running: Vec<String> = named
            .iter()
            .filter(|j| j.state == "RUNNING")
            .map(|j| j.jid.clone())
            .collect();
        if running.is_empty() {
            return Err(not_running(application, self.api.platform(), &named));
        }
        let target = resolve::unique(application, running, "", |jid| {
            format!("Flink job {jid} (GET /jobs/overview)")
        })?;
        let job: WireJob = self
            .api
            .get("get_job", &format!("jobs/{}", target.id))
            .await
            .map_err(platform_error)?;
        if let Some(reason) = job.not_ready() {
            return Err(resolve::Error::NotReady {
                application: application.to_owned(),
                reason: format!("job {}: {reason}", target.id),
            });
        }
        self.resolved
            .lock()
            .expect("resolved lock")
            .insert(application.to_owned(), target.id.clone());
        Ok(target)
    }

    async fn trigger(&self, target: &Target, request: &TriggerRequest<'_>) -> Result<Savepoint> {
        let dir = self.storage.app_dir(request.application);
        let body = json!({
            "target-directory": dir.as_str(),
            "cancel-job": false,
            "formatType": request.format_type.to_string(),
            "triggerId": trigger_id(request.application, request.slot, request.attempt),
        });
        // Idempotent: the trigger id makes a repeated request return the operation already started.
        let answer: WireRequestId = self
            .api
            .json(
                "trigger",
                Method::POST,
                &format!("jobs/{}/savepoints", target.id),
                Some(&body),
                Retry::Idempotent,
            )
            .await?;
        Ok(Savepoint {
            id: answer.request_id,
            created_at: Utc::now(),
            state: State::Started,
            origin: Origin::UserRequest,
            kind: SavepointType::Full,
            location: None,
            failure: None,
            managed: Some(Managed {
                application: request.application.to_owned(),
                slot: Some(request.slot),
            }),
        })
    }

    async fn get(&self, target: &Target, id: &str) -> Result<Savepoint> {
        let application = self.known_application(&target.id);
        // Savepoints listed from the checkpoint history carry Flink's checkpoint id.
        if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
            let wire: WireCheckpoint = self
                .api
                .get(
                    "get_checkpoint",
                    &format!("jobs/{}/checkpoints/details/{id}", target.id),
                )
                .await?;
            let mut savepoint = wire.into_savepoint();
            savepoint.managed =
                self.managed_at(application.as_deref(), savepoint.location.as_deref());
            return Ok(savepoint);
        }
        let path = format!("jobs/{}/savepoints/{id}", target.id);
        let wire: WireOperation = self.api.get("get", &path).await?;
        let (state, location, failure) = wire.into_outcome().map_err(|message| Error::Decode {
            platform: self.platform(),
            operation: "get",
            url: path.clone(),
            message,
        })?;
        Ok(Savepoint {
            id: id.to_owned(),
            created_at: Utc::now(),
            state,
            origin: Origin::UserRequest,
            kind: SavepointType::Full,
            managed: self.managed_at(application.as_deref(), location.as_deref()),
            location,
            failure,
        })
    }

    async fn list(&self, target: &Target) -> Result<Vec<Savepoint>> {
        let application = self.application_of(target).await?;
        let app_dir = self.storage.app_dir(&application);
        // The history first: a savepoint it shows as completed has its `_metadata` written already,
        // so the directory listing that follows sees it.
        let history = match self
            .api
            .get::<WireCheckpoints>(
                "list_checkpoints",
                &format!("jobs/{}/checkpoints", target.id),
            )
            .await
        {
            Ok(c) => c.history,
            // The job is gone from the JobManager; its directory still tells what exists.
            Err(e) if e.status() == Some(404) => Vec::new(),
            Err(e) => return Err(e),
        };
        let on_disk = self
            .storage
            .list(&app_dir)
            .await
            .map_err(|message| Error::Connect {
                platform: self.platform(),
                operation: "list_directory",
                url: app_dir.to_string(),
                message,
            })?;
        let present: HashSet<&str> = on_disk.iter().map(|d| d.location.as_str()).collect();
        let managed = || Managed {
            application: application.clone(),
            slot: None,
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for wire in history.into_iter().filter(|c| c.is_savepoint) {
            let mut savepoint = wire.into_savepoint();
            if let Some(location) = &savepoint.location {
                let mine = is_under(location, &app_dir);
                // The history outlives a disposal: a completed savepoint of ours whose directory is
                // gone has been deleted.
                if savepoint.state == State::Completed
                    && mine
                    && !present.contains(location.as_str())
                {
                    continue;
                }
                if !seen.insert(location.clone()) {
                    continue;
                }
                savepoint.managed = mine.then(managed);
            }
            out.push(savepoint);
        }
        for dir in on_disk {
            if seen.contains(&dir.location) {
                continue;
            }
            out.push(Savepoint {
                id: dir.name,
                created_at: dir.modified,
                state: State::Completed,
                origin: Origin::UserRequest,
                kind: SavepointType::Full,
                location: Some(dir.location),
                failure: None,
                managed: Some(managed()),
            });
        }
        Ok(out)
    }

    async fn delete(&self, target: &Target, savepoint: &Savepoint) -> Result<()> {
        let failed = |message: String| Error::DeletionFailed {
            platform: self.platform(),
            id: savepoint.id.clone(),
            message,
        };
        let location = savepoint
            .location
            .as_deref()
            .ok_or_else(|| failed("it has no location, so there is nothing to dispose".into()))?;
        // The application the target stands for, not the one the savepoint claims: never anything
        // outside the directory of the application being pruned, whoever asks.
        let application = self.application_of(target).await?;
        let app_dir = self.storage.app_dir(&application);
        let dir = match normalize(location) {
            Some(dir) if is_under(location, &app_dir) => dir,
            _ => {
                return Err(failed(format!(
                    "refused: {location} is not inside {app_dir}, the directory of application \
                     {application}"
                )));
            }
        };
        let why = match self.dispose(&savepoint.id, location).await? {
            Disposal::Done => return Ok(()),
            Disposal::Refused(why) => why,
        };
        tracing::warn!(
            platform = %self.api.platform(),
            savepoint = %location,
            reason = %why,
            "the JobManager could not dispose of the savepoint; deleting its files directly"
        );
        let deleted = self.delete_directly(&savepoint.id, &app_dir, &dir).await?;
        tracing::info!(savepoint = %location, objects = deleted, "savepoint files deleted");
        Ok(())
    }
}

/// How a disposal by the JobManager ended.
enum Disposal {
    Done,
    /// The JobManager could not dispose of it (it cannot read the metadata, say); the reason.
    Refused(String),
}

/// The trigger id of one attempt at one slot: the first 16 bytes of
/// `sha256("savepointd\0" + application + "\0" + slot + "\0" + attempt)`, as 32 lowercase hex digits.
pub fn trigger_id(application: &str, slot: DateTime<Utc>, attempt: u32) -> String {
    let mut hash = Sha256::new();
    hash.update(b"savepointd\0");
    hash.update(application.as_bytes());
    hash.update(b"\0");
    hash.update(slot.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes());
    hash.update(b"\0");
    hash.update(attempt.to_string().as_bytes());
    config::hex(&hash.finalize()[..16])
}

/// The directory name of an application under `targetDirectory`: its sanitised name, or, for a name
/// with nothing usable in it, a stable digest (an empty name would be the whole target directory).
pub fn application_dir_name(application: &str) -> String {
    let name = resolve::sanitize(application);
    if name.is_empty() {
        format!(
            "app-{}",
            &config::hex(&Sha256::digest(application.as_bytes()))[..12]
        )
    } else {
        name
    }
}

fn not_running(application: &str, platform: &str, named: &[WireJobOverview]) -> resolve::Error {
    let listed = |jobs: &[&WireJobOverview]| {
        let mut text = jobs
            .iter()
            .take(JOBS_NAMED)
            .map(|j| format!("job {} is {}", j.jid, j.state))
            .collect::<Vec<_>>()
            .join(", ");
        if jobs.len() > JOBS_NAMED {
            text.push_str(&format!(" (and {} more)", jobs.len() - JOBS_NAMED));
        }
        text
    };
    // A job that is starting or restarting is on its way to RUNNING: not ready rather than absent.
    let coming: Vec<&WireJobOverview> = named
        .iter()
        .filter(|j| {
            !matches!(
                j.state.as_str(),
                "FINISHED" | "CANCELED" | "FAILED" | "SUSPENDED"
            )
        })
        .collect();
    if !coming.is_empty() {
        return resolve::Error::NotReady {
            application: application.to_owned(),
            reason: listed(&coming),
        };
    }
    let all: Vec<&WireJobOverview> = named.iter().collect();
    resolve::Error::Unresolved {
        application: application.to_owned(),
        looked: if all.is_empty() {
            format!("no Flink job of that name on platform {platform}")
        } else {
            format!("no RUNNING Flink job of that name: {}", listed(&all))
        },
    }
}

/// The reason a savepoint failed, from Flink's failure cause (its class is always the wrapping
/// `CompletionException`, so the stack trace's message lines are what tell).
pub fn describe_failure(stack_trace: &str) -> String {
    let messages: Vec<&str> = stack_trace
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("at ") && !l.starts_with("..."))
        .collect();
    let has = |needle: &str| messages.iter().any(|l| l.contains(needle));
    if has("Checkpoint expired before completing") {
        return "expired before completing (checkpoint timeout)".into();
    }
    if has("FlinkJobNotFoundException") {
        return "job not found".into();
    }
    if has("Not all required tasks are currently running") {
        return "not all tasks running".into();
    }
    if has("IO-problem detected") {
        // The innermost cause names the path and the error.
        return match messages.iter().rev().find(|l| l.starts_with("Caused by:")) {
            Some(cause) => trim(&format!(
                "I/O problem: {}",
                cause.trim_start_matches("Caused by:").trim()
            )),
            None => "I/O problem".into(),
        };
    }
    let first = messages.first().copied().unwrap_or("no stack trace");
    trim(
        first
            .strip_prefix("java.util.concurrent.CompletionException: ")
            .unwrap_or(first),
    )
}

fn trim(text: &str) -> String {
    const MAX: usize = 300;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX - 1).collect();
        short.push('…');
        short
    }
}

/// A location as one canonical URL text (`file:/x` and `file:///x/` are the same directory), so that
/// the checkpoint history and the directory listing agree on it.
fn normalize(location: &str) -> Option<Url> {
    let mut url = match Url::parse(location) {
        Ok(url) => url,
        Err(_) if location.starts_with('/') => Url::from_file_path(location).ok()?,
        Err(_) => return None,
    };
    let path = url.path().to_owned();
    if path.len() > 1 && path.ends_with('/') {
        url.set_path(path.trim_end_matches('/'));
    }
    Some(url)
}

fn normalized(location: &str) -> String {
    normalize(location).map_or_else(|| location.to_owned(), |u| u.to_string())
}

/// Whether `location` lies strictly inside `dir` (a directory URL ending in `/`). Dot segments are
/// refused outright, whatever a URL parser would make of them.
fn is_under(location: &str, dir: &Url) -> bool {
    if location
        .split(['/', '\\'])
        .any(|segment| matches!(percent_decode(segment).as_str(), "." | ".."))
    {
        return false;
    }
    let Some(url) = normalize(location) else {
        return false;
    };
    url.scheme() == dir.scheme()
        && url.username() == dir.username()
        && url.host_str() == dir.host_str()
        && url.port() == dir.port()
        && url
            .path()
            .strip_prefix(dir.path())
            .is_some_and(|rest| !rest.is_empty())
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = segment
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------------------
// The savepoint directories.
// ---------------------------------------------------------------------------------------------------------

/// `targetDirectory` and a client for it.
struct Storage {
    /// `<targetDirectory>/`.
    root: Url,
    /// The client of the bucket or container; `None` for the local file system, which is opened per
    /// application directory so that empty directories are cleaned up no higher than that.
    remote: Option<Arc<dyn ObjectStore>>,
}

/// A client, and the path of the opened directory in it.
struct Opened {
    store: Arc<dyn ObjectStore>,
    base: StorePath,
}

/// A completed savepoint directory: `savepoint-*` with a `_metadata` in it.
struct SavepointDir {
    name: String,
    location: String,
    modified: DateTime<Utc>,
}

impl Storage {
    fn new(target_directory: &str) -> Result<Self, String> {
        let mut root = match Url::parse(target_directory) {
            Ok(url) => url,
            Err(_) if target_directory.starts_with('/') => {
                Url::from_directory_path(target_directory)
                    .map_err(|()| format!("targetDirectory {target_directory} is not a path"))?
            }
            Err(e) => return Err(format!("targetDirectory {target_directory}: {e}")),
        };
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        let scheme = ObjectStoreScheme::parse(&root).map(|(s, _)| s);
        let remote = match scheme {
            Ok(ObjectStoreScheme::Local) => None,
            Ok(
                ObjectStoreScheme::AmazonS3
                | ObjectStoreScheme::GoogleCloudStorage
                | ObjectStoreScheme::MicrosoftAzure,
            ) => {
                let (store, _) = object_store::parse_url_opts(&root, cloud_options())
                    .map_err(|e| format!("targetDirectory {root}: {e}"))?;
                Some(Arc::from(store))
            }
            _ => {
                return Err(format!(
                    "targetDirectory {target_directory}: expected file://, s3://, gs:// or az://"
                ));
            }
        };
        Ok(Self { root, remote })
    }

    /// `<targetDirectory>/<application dir>/`.
    fn app_dir(&self, application: &str) -> Url {
        self.root
            .join(&format!("{}/", application_dir_name(application)))
            .expect("a sanitised name is a valid relative URL")
    }

    /// A client and the path of `dir` in it; `None` when a local directory does not exist.
    fn open(&self, dir: &Url) -> Result<Option<Opened>, String> {
        match &self.remote {
            Some(store) => {
                let (_, path) = ObjectStoreScheme::parse(dir).map_err(|e| format!("{dir}: {e}"))?;
                Ok(Some(Opened {
                    store: store.clone(),
                    base: path,
                }))
            }
            None => {
                let path = dir
                    .to_file_path()
                    .map_err(|()| format!("{dir} is not a local path"))?;
                if !path.is_dir() {
                    return Ok(None);
                }
                let store = object_store::local::LocalFileSystem::new_with_prefix(&path)
                    .map_err(|e| format!("{dir}: {e}"))?
                    .with_automatic_cleanup(true);
                Ok(Some(Opened {
                    store: Arc::new(store),
                    base: StorePath::default(),
                }))
            }
        }
    }

    /// The completed savepoints in `dir`; an absent directory has none.
    async fn list(&self, dir: &Url) -> Result<Vec<SavepointDir>, String> {
        let Some(Opened { store, base }) = self.open(dir)? else {
            return Ok(Vec::new());
        };
        let listing = match store.list_with_delimiter(Some(&base)).await {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let candidates: Vec<(String, StorePath)> = listing
            .common_prefixes
            .into_iter()
            .filter_map(|p| {
                let name = p.filename()?.to_owned();
                name.starts_with("savepoint-")
                    .then(|| (name, p.child("_metadata")))
            })
            .collect();
        let found: Vec<Option<SavepointDir>> = futures::stream::iter(candidates)
            .map(|(name, metadata)| {
                let store = store.clone();
                let location = dir
                    .join(&name)
                    .map(|u| normalized(u.as_str()))
                    .unwrap_or_default();
                async move {
                    match store.head(&metadata).await {
                        Ok(meta) => Ok(Some(SavepointDir {
                            name,
                            location,
                            modified: meta.last_modified,
                        })),
                        // No `_metadata` (yet): not a usable savepoint.
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(STORAGE_CONCURRENCY)
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        let mut found: Vec<SavepointDir> = found.into_iter().flatten().collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }
}

/// Credentials and settings for the cloud stores from the environment, as each SDK reads them
/// (`AWS_*`, `GOOGLE_*`, `AZURE_*`); the builders ignore keys that are not theirs.
fn cloud_options() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            ["AWS_", "GOOGLE_", "AZURE_"]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Wire format.
// ---------------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireOverview {
    #[serde(default)]
    jobs: Vec<WireJobOverview>,
}

#[derive(Deserialize)]
struct WireJobOverview {
    jid: String,
    name: String,
    state: String,
    #[serde(rename = "start-time", default)]
    start_time: i64,
}

#[derive(Deserialize)]
struct WireJob {
    name: String,
    state: String,
    #[serde(default)]
    vertices: Vec<WireVertex>,
}

#[derive(Deserialize)]
struct WireVertex {
    #[serde(default)]
    name: String,
    status: String,
}

impl WireJob {
    /// Why the job cannot take a savepoint now: every task must run (a FINISHED vertex is fine, Flink
    /// checkpoints around finished tasks), else Flink fails the savepoint with "Not all required tasks
    /// are currently running".
    fn not_ready(&self) -> Option<String> {
        if self.state != "RUNNING" {
            return Some(format!("the job is {}", self.state));
        }
        let waiting: Vec<String> = self
            .vertices
            .iter()
            .filter(|v| !matches!(v.status.as_str(), "RUNNING" | "FINISHED"))
            .map(|v| format!("{} is {}", v.name, v.status))
            .collect();
        if self.vertices.is_empty() {
            return Some("the job has no tasks yet".into());
        }
        (!waiting.is_empty()).then(|| {
            format!(
                "{} of {} tasks are not RUNNING ({})",
                waiting.len(),
                self.vertices.len(),
                waiting.join(", ")
            )
        })
    }
}

#[derive(Deserialize)]
struct WireRequestId {
    #[serde(rename = "request-id")]
    request_id: String,
}

/// An asynchronous operation's status: a savepoint trigger or a disposal.
#[derive(Deserialize)]
struct WireOperation {
    status: WireOperationStatus,
    operation: Option<WireOperationResult>,
}

#[derive(Deserialize)]
struct WireOperationStatus {
    id: String,
}

#[derive(Deserialize)]
struct WireOperationResult {
    location: Option<String>,
    #[serde(rename = "failure-cause")]
    failure_cause: Option<WireFailureCause>,
}

#[derive(Deserialize)]
struct WireFailureCause {
    class: Option<String>,
    #[serde(rename = "stack-trace")]
    stack_trace: Option<String>,
}

impl WireFailureCause {
    fn summary(&self) -> String {
        match (&self.stack_trace, &self.class) {
            (Some(trace), _) if !trace.trim().is_empty() => describe_failure(trace),
            (_, Some(class)) => class.clone(),
            _ => "no failure cause given".into(),
        }
    }
}

impl WireOperation {
    /// A COMPLETED status is a failure when it carries a failure cause.
    fn into_outcome(self) -> Result<(State, Option<String>, Option<String>), String> {
        match self.status.id.as_str() {
            "IN_PROGRESS" => Ok((State::Started, None, None)),
            "COMPLETED" => match self.operation {
                Some(WireOperationResult {
                    failure_cause: Some(cause),
                    ..
                }) => Ok((State::Failed, None, Some(cause.summary()))),
                Some(WireOperationResult {
                    location: Some(location),
                    ..
                }) => Ok((State::Completed, Some(normalized(&location)), None)),
                _ => Err("status COMPLETED without a location or a failure cause".into()),
            },
            _ => Ok((State::Unknown, None, None)),
        }
    }
}

#[derive(Deserialize)]
struct WireCheckpoints {
    #[serde(default)]
    history: Vec<WireCheckpoint>,
}

#[derive(Deserialize)]
struct WireCheckpoint {
    id: u64,
    status: String,
    #[serde(default)]
    is_savepoint: bool,
    #[serde(default)]
    trigger_timestamp: i64,
    external_path: Option<String>,
    failure_message: Option<String>,
}

impl WireCheckpoint {
    /// A completed savepoint is named by its directory, as the directory listing names it; the others
    /// have no directory and keep Flink's checkpoint id.
    fn into_savepoint(self) -> Savepoint {
        let state = match self.status.as_str() {
            "IN_PROGRESS" => State::Started,
            "COMPLETED" => State::Completed,
            "FAILED" => State::Failed,
            _ => State::Unknown,
        };
        let location = self.external_path.as_deref().map(normalized);
        let id = match (&location, state) {
            (Some(l), State::Completed) => l
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty())
                .map_or_else(|| self.id.to_string(), str::to_owned),
            _ => self.id.to_string(),
        };
        Savepoint {
            id,
            created_at: DateTime::from_timestamp_millis(self.trigger_timestamp)
                .unwrap_or_else(Utc::now),
            state,
            origin: Origin::UserRequest,
            kind: SavepointType::Full,
            location,
            failure: self.failure_message.as_deref().map(describe_failure),
            managed: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPIRED: &str = "java.util.concurrent.CompletionException: org.apache.flink.runtime.checkpoint.CheckpointException: Checkpoint expired before completing.\n\tat java.base/java.util.concurrent.CompletableFuture.encodeRelay(CompletableFuture.java:368)\n\tat org.apache.flink.runtime.rpc.pekko.PekkoInvocationHandler.lambda$invokeRpc$1(PekkoInvocationHandler.java:261)\n";
    const NOT_FOUND: &str = "java.util.concurrent.CompletionException: org.apache.flink.runtime.messages.FlinkJobNotFoundException: Could not find Flink job (00000000000000000000000000000001)\n\tat java.base/java.util.concurrent.CompletableFuture.encodeThrowable(CompletableFuture.java:332)\n";
    const IO: &str = "java.util.concurrent.CompletionException: org.apache.flink.runtime.checkpoint.CheckpointException: An Exception occurred while triggering the checkpoint. IO-problem detected.\n\tat x.y(Z.java:1)\nCaused by: org.apache.flink.runtime.checkpoint.CheckpointException: An Exception occurred while triggering the checkpoint. IO-problem detected.\n\tat x.y(Z.java:2)\nCaused by: java.io.IOException: Failed to create savepoint directory at file:/proc/nope\n\t... 3 more\n";
    const NOT_RUNNING: &str = "java.util.concurrent.CompletionException: org.apache.flink.runtime.checkpoint.CheckpointException: Not all required tasks are currently running.\n\tat x.y(Z.java:1)\n";

    #[test]
    fn failure_causes_are_categorised_from_the_stack_trace() {
        assert_eq!(
            describe_failure(EXPIRED),
            "expired before completing (checkpoint timeout)"
        );
        assert_eq!(describe_failure(NOT_FOUND), "job not found");
        assert_eq!(describe_failure(NOT_RUNNING), "not all tasks running");
        assert_eq!(
            describe_failure(IO),
            "I/O problem: java.io.IOException: Failed to create savepoint directory at file:/proc/nope"
        );
        // The history's failure_message is the bare message.
        assert_eq!(
            describe_failure("Checkpoint expired before completing."),
            "expired before completing (checkpoint timeout)"
        );
    }

    #[test]
    fn an_unknown_cause_is_its_first_line_unwrapped_and_trimmed() {
        let other = "java.util.concurrent.CompletionException: java.lang.IllegalStateException: boom\n\tat a.b(C.java:1)\n";
        assert_eq!(
            describe_failure(other),
            "java.lang.IllegalStateException: boom"
        );
        let long = format!("{}\n\tat a.b(C.java:1)", "x".repeat(1000));
        let described = describe_failure(&long);
        assert_eq!(described.chars().count(), 300);
        assert!(described.ends_with('…'));
        assert_eq!(describe_failure(""), "no stack trace");
    }

    #[test]
    fn a_completed_status_with_a_failure_cause_is_a_failure() {
        let wire: WireOperation = serde_json::from_value(json!({
            "status": {"id": "COMPLETED"},
            "operation": {"failure-cause": {
                "class": "java.util.concurrent.CompletionException",
                "stack-trace": EXPIRED,
                "serialized-throwable": "rO0AB"
            }}
        }))
        .unwrap();
        let (state, location, failure) = wire.into_outcome().unwrap();
        assert_eq!(state, State::Failed);
        assert_eq!(location, None);
        assert_eq!(
            failure.as_deref(),
            Some("expired before completing (checkpoint timeout)")
        );

        let wire: WireOperation = serde_json::from_value(json!({
            "status": {"id": "COMPLETED"},
            "operation": {"location": "file:/tmp/sp/orders/savepoint-b0d230-a58686f09ed2"}
        }))
        .unwrap();
        assert_eq!(
            wire.into_outcome().unwrap(),
            (
                State::Completed,
                Some("file:///tmp/sp/orders/savepoint-b0d230-a58686f09ed2".into()),
                None
            )
        );

        let wire: WireOperation =
            serde_json::from_value(json!({"status": {"id": "IN_PROGRESS"}, "operation": null}))
                .unwrap();
        assert_eq!(wire.into_outcome().unwrap().0, State::Started);

        let wire: WireOperation =
            serde_json::from_value(json!({"status": {"id": "COMPLETED"}, "operation": {}}))
                .unwrap();
        assert!(wire.into_outcome().is_err());
    }

    #[test]
    fn trigger_ids_are_deterministic_per_application_slot_and_attempt() {
        let slot: DateTime<Utc> = "2026-11-20T01:00:00Z".parse().unwrap();
        let id = trigger_id("orders", slot, 1);
        assert_eq!(id, trigger_id("orders", slot, 1), "same inputs, same id");
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{id}"
        );
        let others = [
            trigger_id("orders", slot, 2),
            trigger_id("payments", slot, 1),
            trigger_id("orders", slot + chrono::TimeDelta::seconds(1), 1),
            // The separators keep ("ab", "c…") and ("a", "bc…") apart.
            trigger_id("orders\u{0}2026", slot, 1),
        ];
        for other in others {
            assert_ne!(id, other);
        }
        // Pinned: a change of the derivation would make a restarted daemon trigger a slot again.
        let mut hash = Sha256::new();
        hash.update(b"savepointd\0orders\x002026-11-20T01:00:00Z\x001");
        assert_eq!(id, config::hex(&hash.finalize()[..16]));
    }

    #[test]
    fn history_entries_decode_as_the_cluster_reports_them() {
        let history: WireCheckpoints = serde_json::from_value(json!({"history": [
            {"className": "completed", "id": 3, "status": "COMPLETED", "is_savepoint": true,
             "savepointFormat": "NATIVE", "trigger_timestamp": 1795414316826_i64,
             "latest_ack_timestamp": 1795414316863_i64, "checkpoint_type": "SAVEPOINT", "tasks": {},
             "external_path": "file:/tmp/sp/orders/savepoint-0e9c59-639cf8752245", "discarded": false},
            {"className": "failed", "id": 2, "status": "FAILED", "is_savepoint": true,
             "trigger_timestamp": 1795414315682_i64, "failure_timestamp": 1795414315689_i64,
             "failure_message": "An Exception occurred while triggering the checkpoint. IO-problem detected."},
            {"className": "in_progress", "id": 4, "status": "IN_PROGRESS", "is_savepoint": true,
             "trigger_timestamp": 1795414320000_i64},
            {"className": "completed", "id": 5, "status": "COMPLETED", "is_savepoint": false,
             "trigger_timestamp": 1795414320000_i64, "external_path": "file:/tmp/chk/chk-5"}
        ]}))
        .unwrap();
        let all: Vec<(bool, Savepoint)> = history
            .history
            .into_iter()
            .map(|c| (c.is_savepoint, c.into_savepoint()))
            .collect();
        let (_, done) = &all[0];
        assert_eq!(done.state, State::Completed);
        assert_eq!(done.id, "savepoint-0e9c59-639cf8752245");
        assert_eq!(
            done.location.as_deref(),
            Some("file:///tmp/sp/orders/savepoint-0e9c59-639cf8752245")
        );
        assert_eq!(done.created_at.timestamp_millis(), 1795414316826);
        let (_, failed) = &all[1];
        assert_eq!((failed.id.as_str(), failed.state), ("2", State::Failed));
        assert_eq!(failed.failure.as_deref(), Some("I/O problem"));
        assert_eq!(all[2].1.state, State::Started);
        assert!(!all[3].0, "a checkpoint is not a savepoint");
    }

    #[test]
    fn only_locations_strictly_inside_the_application_directory_are_inside() {
        let dir = Url::parse("file:///data/sp/orders/").unwrap();
        for inside in [
            "file:/data/sp/orders/savepoint-0e9c59-639cf8752245",
            "file:///data/sp/orders/savepoint-0e9c59-639cf8752245/",
            "/data/sp/orders/savepoint-1",
        ] {
            assert!(is_under(inside, &dir), "{inside}");
        }
        for outside in [
            "file:///data/sp/orders/",
            "file:///data/sp/orders",
            "file:///data/sp/orders-eu/savepoint-1",
            "file:///data/sp/payments/savepoint-1",
            "file:///data/sp/orders/../payments/savepoint-1",
            "file:///data/sp/orders/%2e%2e/payments/savepoint-1",
            "file:///data/sp/orders/.%2E/payments/savepoint-1",
            "s3://data/sp/orders/savepoint-1",
            "file://otherhost/data/sp/orders/savepoint-1",
            "not a location",
        ] {
            assert!(!is_under(outside, &dir), "{outside}");
        }
        let bucket = Url::parse("s3://flink/savepoints/orders/").unwrap();
        assert!(is_under(
            "s3://flink/savepoints/orders/savepoint-1",
            &bucket
        ));
        assert!(!is_under(
            "s3://other/savepoints/orders/savepoint-1",
            &bucket
        ));
    }

    #[test]
    fn application_directories_are_sanitised_and_never_empty() {
        let storage = Storage::new("file:///data/sp").unwrap();
        assert_eq!(
            storage.app_dir("Fraud Detection").as_str(),
            "file:///data/sp/fraud-detection/"
        );
        let odd = application_dir_name("日本");
        assert!(odd.starts_with("app-") && odd.len() == 16, "{odd}");
        assert_eq!(odd, application_dir_name("日本"));
        assert_eq!(
            Storage::new("/data/sp/")
                .unwrap()
                .app_dir("orders")
                .as_str(),
            "file:///data/sp/orders/"
        );
        // Cloud stores are set up without contacting them; credentials are looked up when used.
        for (root, dir) in [
            ("s3://flink/savepoints", "s3://flink/savepoints/orders/"),
            ("gs://flink/savepoints/", "gs://flink/savepoints/orders/"),
            (
                "abfss://flink@account.dfs.core.windows.net/savepoints",
                "abfss://flink@account.dfs.core.windows.net/savepoints/orders/",
            ),
        ] {
            let storage = Storage::new(root).unwrap_or_else(|e| panic!("{root}: {e}"));
            assert_eq!(storage.app_dir("orders").as_str(), dir);
            assert!(storage.remote.is_some());
        }
        // az:// takes the account from AZURE_STORAGE_ACCOUNT_NAME; without it, the setup says so.
        if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
            let err = Storage::new("az://flink/savepoints")
                .err()
                .unwrap_or_default();
            assert!(err.contains("Account must be specified"), "{err}");
        }
        assert!(Storage::new("https://example.com/sp").is_err());
        assert!(Storage::new("relative/path").is_err());
    }

    #[test]
    fn jobs_not_running_are_named_with_their_state() {
        let job = |jid: &str, state: &str, start| WireJobOverview {
            jid: jid.into(),
            name: "orders".into(),
            state: state.into(),
            start_time: start,
        };
        let err = not_running(
            "orders",
            "local",
            &[job("b", "CANCELED", 2), job("a", "FAILED", 1)],
        );
        assert_eq!(err.category(), "unresolved");
        let text = err.to_string();
        assert!(
            text.contains("job b is CANCELED, job a is FAILED"),
            "{text}"
        );
        let err = not_running("orders", "local", &[job("c", "RESTARTING", 3)]);
        assert_eq!(err.category(), "not_ready");
        assert!(err.to_string().contains("job c is RESTARTING"));
        let err = not_running("orders", "local", &[]);
        assert!(
            err.to_string().contains("no Flink job of that name"),
            "{err}"
        );
    }

    #[test]
    fn a_job_is_ready_when_every_task_runs() {
        let job = |state: &str, vertices: &[&str]| WireJob {
            name: "orders".into(),
            state: state.into(),
            vertices: vertices
                .iter()
                .map(|s| WireVertex {
                    name: "Source: datagen".into(),
                    status: (*s).into(),
                })
                .collect(),
        };
        assert_eq!(job("RUNNING", &["RUNNING", "RUNNING"]).not_ready(), None);
        assert_eq!(job("RUNNING", &["FINISHED", "RUNNING"]).not_ready(), None);
        let reason = job("RUNNING", &["RUNNING", "DEPLOYING"])
            .not_ready()
            .unwrap();
        assert!(reason.contains("1 of 2 tasks"), "{reason}");
        assert!(job("CANCELLING", &["RUNNING"]).not_ready().is_some());
        assert!(job("RUNNING", &[]).not_ready().is_some());
    }
}
