//! The savepoint directories under a Flink `targetDirectory`, read (and deleted as a last resort)
//! through `object_store` on `file://`, `s3://`, `gs://` and `az://`.
//!
//! Layout: `<targetDirectory>/<application dir>/slot-<YYYYMMDDTHHMMSSZ>/savepoint-…/_metadata`. The slot
//! directory is how a savepoint remembers the slot it was taken for, long after the JobManager forgot
//! the trigger id (5 minutes, and not across a failover). Savepoints directly in the application
//! directory (taken before slot directories existed) are the application's, with no slot.

use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreScheme};
use reqwest::Url;

use crate::model::application_dir_name;

/// Object-store requests at once when a directory is listed or deleted.
const STORAGE_CONCURRENCY: usize = 8;
/// The file whose presence makes a directory a savepoint; deleted last.
const METADATA: &str = "_metadata";
const SLOT_PREFIX: &str = "slot-";
const SLOT_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// `targetDirectory` as a directory URL (ending in `/`), checked to be a storage savepointd can read.
pub fn root_url(target_directory: &str) -> Result<Url, String> {
    let mut root = match Url::parse(target_directory) {
        Ok(url) => url,
        Err(_) if target_directory.starts_with('/') => {
            Url::from_directory_path(target_directory)
                .map_err(|()| format!("{target_directory} is not a path"))?
        }
        Err(e) => return Err(format!("{target_directory}: {e}")),
    };
    if !root.path().ends_with('/') {
        root.set_path(&format!("{}/", root.path()));
    }
    match ObjectStoreScheme::parse(&root).map(|(s, _)| s) {
        Ok(
            ObjectStoreScheme::Local
            | ObjectStoreScheme::AmazonS3
            | ObjectStoreScheme::GoogleCloudStorage
            | ObjectStoreScheme::MicrosoftAzure,
        ) => Ok(root),
        _ => Err(format!(
            "{target_directory}: expected file://, s3://, gs:// or az://"
        )),
    }
}

/// The name of a slot's directory: `slot-20261120T010000Z`. No `:` (Hadoop paths read it as a scheme).
pub fn slot_dir_name(slot: DateTime<Utc>) -> String {
    format!("{SLOT_PREFIX}{}", slot.format(SLOT_FORMAT))
}

/// The slot a directory name stands for, if it is a slot directory.
pub fn parse_slot_dir(name: &str) -> Option<DateTime<Utc>> {
    let text = name.strip_prefix(SLOT_PREFIX)?;
    NaiveDateTime::parse_from_str(text, SLOT_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

/// The slot of a savepoint at `location` inside `app_dir`: the name of the directory that holds it.
pub fn slot_of(location: &str, app_dir: &Url) -> Option<DateTime<Utc>> {
    let url = normalize(location)?;
    let rest = url.path().strip_prefix(app_dir.path())?;
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        [slot, _savepoint] => parse_slot_dir(slot),
        _ => None,
    }
}

/// A location as one canonical URL text (`file:/x` and `file:///x/` are the same directory), so that
/// the checkpoint history and the directory listing agree on it.
pub fn normalize(location: &str) -> Option<Url> {
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

pub fn normalized(location: &str) -> String {
    normalize(location).map_or_else(|| location.to_owned(), |u| u.to_string())
}

/// Whether `location` lies strictly inside `dir` (a directory URL ending in `/`). Dot segments are
/// refused outright, whatever a URL parser would make of them.
pub fn is_under(location: &str, dir: &Url) -> bool {
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

/// `targetDirectory` and a client for it.
pub struct Storage {
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
pub struct SavepointDir {
    pub name: String,
    pub location: String,
    pub modified: DateTime<Utc>,
    /// The slot directory it lies in, if any.
    pub slot: Option<DateTime<Utc>>,
}

impl Storage {
    pub fn new(target_directory: &str) -> Result<Self, String> {
        let root = root_url(target_directory).map_err(|e| format!("targetDirectory {e}"))?;
        let remote = match ObjectStoreScheme::parse(&root).map(|(s, _)| s) {
            Ok(ObjectStoreScheme::Local) => None,
            _ => {
                let (store, _) = object_store::parse_url_opts(&root, cloud_options())
                    .map_err(|e| format!("targetDirectory {root}: {e}"))?;
                Some(Arc::from(store))
            }
        };
        Ok(Self { root, remote })
    }

    /// `<targetDirectory>/<application dir>/`.
    pub fn app_dir(&self, application: &str) -> Url {
        self.root
            .join(&format!("{}/", application_dir_name(application)))
            .expect("a sanitised name is a valid relative URL")
    }

    /// `<targetDirectory>/<application dir>/slot-…/`: where the slot's savepoints go.
    pub fn slot_dir(&self, application: &str, slot: DateTime<Utc>) -> Url {
        self.app_dir(application)
            .join(&format!("{}/", slot_dir_name(slot)))
            .expect("a slot directory name is a valid relative URL")
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

    /// The completed savepoints of an application directory, in its slot directories and directly in
    /// it; an absent directory has none. Any storage error fails the whole listing: a partial list
    /// must never reach retention.
    pub async fn list(&self, app_dir: &Url) -> Result<Vec<SavepointDir>, String> {
        let Some(Opened { store, base }) = self.open(app_dir)? else {
            return Ok(Vec::new());
        };
        let top = match store.list_with_delimiter(Some(&base)).await {
            Ok(listing) => listing.common_prefixes,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        // (name, slot, its prefix in the store, its location)
        let mut candidates: Vec<(String, Option<DateTime<Utc>>, StorePath, String)> = Vec::new();
        for prefix in top {
            let Some(name) = prefix.filename().map(str::to_owned) else {
                continue;
            };
            if name.starts_with("savepoint-") {
                let location = join_location(app_dir, &[&name]);
                candidates.push((name, None, prefix, location));
            } else if let Some(slot) = parse_slot_dir(&name) {
                let inner = match store.list_with_delimiter(Some(&prefix)).await {
                    Ok(listing) => listing.common_prefixes,
                    Err(object_store::Error::NotFound { .. }) => continue,
                    Err(e) => return Err(e.to_string()),
                };
                for savepoint in inner {
                    let Some(sp) = savepoint.filename().map(str::to_owned) else {
                        continue;
                    };
                    if sp.starts_with("savepoint-") {
                        let location = join_location(app_dir, &[&name, &sp]);
                        candidates.push((sp, Some(slot), savepoint, location));
                    }
                }
            }
        }
        let found: Vec<Option<SavepointDir>> = futures::stream::iter(candidates)
            .map(|(name, slot, prefix, location)| {
                let store = store.clone();
                async move {
                    match store.head(&prefix.child(METADATA)).await {
                        Ok(meta) => Ok(Some(SavepointDir {
                            name,
                            location,
                            modified: meta.last_modified,
                            slot,
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
        found.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(found)
    }

    /// Deletes every object of the savepoint directory `dir` (inside `app_dir`), `_metadata` last: a
    /// deletion that stops half-way leaves a savepoint that is still listed, and the next prune finishes
    /// it, instead of data nobody lists again. Every object is tried; the first error is reported and
    /// `_metadata` stays. Returns the number of objects deleted.
    pub async fn delete_savepoint_dir(&self, app_dir: &Url, dir: &Url) -> Result<usize, String> {
        let Some(Opened { store, base }) = self.open(app_dir)? else {
            return Ok(0);
        };
        let relative = dir
            .path()
            .strip_prefix(app_dir.path())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| format!("{dir} is not inside {app_dir}"))?;
        let mut prefix = base;
        for segment in relative.split('/').filter(|s| !s.is_empty()) {
            let segment = percent_decode(segment);
            prefix = prefix.child(segment.as_str());
        }
        let objects: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| format!("cannot list {dir}: {e}"))?;
        let metadata = prefix.child(METADATA);
        let (last, first): (Vec<_>, Vec<_>) = objects
            .into_iter()
            .map(|o| o.location)
            .partition(|l| *l == metadata);
        let count = first.len() + last.len();
        let results: Vec<Result<(), object_store::Error>> = futures::stream::iter(first)
            .map(|location| {
                let store = store.clone();
                async move { delete_object(store.as_ref(), &location).await }
            })
            .buffer_unordered(STORAGE_CONCURRENCY)
            .collect()
            .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(format!(
                "cannot delete objects under {dir}: {e}; its {METADATA} is kept, the next prune tries again"
            ));
        }
        for location in last {
            delete_object(store.as_ref(), &location)
                .await
                .map_err(|e| format!("cannot delete {dir}/{METADATA}: {e}"))?;
        }
        Ok(count)
    }
}

async fn delete_object(store: &dyn ObjectStore, location: &StorePath) -> object_store::Result<()> {
    match store.delete(location).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `dir` joined with path segments, as one normalised location text.
fn join_location(dir: &Url, segments: &[&str]) -> String {
    dir.join(&segments.join("/"))
        .map(|u| normalized(u.as_str()))
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn slot_directories_name_the_slot_and_read_back() {
        let slot: DateTime<Utc> = "2026-11-20T01:00:00Z".parse().unwrap();
        assert_eq!(slot_dir_name(slot), "slot-20261120T010000Z");
        assert_eq!(parse_slot_dir("slot-20261120T010000Z"), Some(slot));
        assert_eq!(parse_slot_dir("slot-2026"), None);
        assert_eq!(parse_slot_dir("savepoint-0e9c59-639cf8752245"), None);
        let storage = Storage::new("file:///data/sp").unwrap();
        assert_eq!(
            storage.slot_dir("Orders", slot).as_str(),
            "file:///data/sp/orders/slot-20261120T010000Z/"
        );
        let app = storage.app_dir("orders");
        assert_eq!(
            slot_of(
                "file:/data/sp/orders/slot-20261120T010000Z/savepoint-1a2b3c-0123456789ab",
                &app
            ),
            Some(slot)
        );
        assert_eq!(
            slot_of("file:/data/sp/orders/savepoint-1a2b3c-0123456789ab", &app),
            None
        );
        assert_eq!(
            slot_of(
                "file:/data/sp/payments/slot-20261120T010000Z/savepoint-1",
                &app
            ),
            None
        );
    }

    #[tokio::test]
    async fn listing_finds_savepoints_in_slot_directories_and_deletion_removes_metadata_last() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Storage::new(tmp.path().to_str().unwrap()).unwrap();
        let slot: DateTime<Utc> = "2026-11-20T01:00:00Z".parse().unwrap();
        let app = storage.app_dir("orders");
        let root = tmp.path().join("orders");
        let slotted = root.join("slot-20261120T010000Z/savepoint-aaaaaa-000000000001");
        let legacy = root.join("savepoint-aaaaaa-000000000002");
        let unfinished = root.join("slot-20261120T010000Z/savepoint-aaaaaa-000000000003");
        for dir in [&slotted, &legacy, &unfinished] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("data-1"), "x").unwrap();
        }
        std::fs::write(slotted.join(METADATA), "m").unwrap();
        std::fs::write(legacy.join(METADATA), "m").unwrap();
        let listed = storage.list(&app).await.unwrap();
        let found: Vec<(&str, Option<DateTime<Utc>>)> =
            listed.iter().map(|d| (d.name.as_str(), d.slot)).collect();
        assert_eq!(
            found,
            [
                ("savepoint-aaaaaa-000000000002", None),
                ("savepoint-aaaaaa-000000000001", Some(slot)),
            ]
        );
        let dir = normalize(&listed[1].location).unwrap();
        assert_eq!(storage.delete_savepoint_dir(&app, &dir).await.unwrap(), 2);
        assert!(!slotted.exists());
        assert!(
            legacy.join(METADATA).exists(),
            "only the one directory went"
        );
        assert!(unfinished.join("data-1").exists());
    }
}
