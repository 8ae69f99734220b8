//! The HTTP plumbing every platform shares: TLS, bearer tokens (re-read when the file changes, so a rotated
//! Kubernetes Secret works without a restart), request timeouts, retries with exponential backoff, and the
//! `api_requests_total` / `api_request_duration_seconds` metrics.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Error, Result};
use crate::config::{self, Auth};
use crate::metrics::Metrics;

/// Tries per request, the first included. Only what is safe to repeat is retried (see [`Retry`]).
const MAX_TRIES: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Whether a request may be sent again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads and idempotent writes: retried on connection errors, lost answers, timeouts and 5xx.
    Idempotent,
    /// A write that must not happen twice (creating a savepoint): resent only when the request never
    /// left (`reqwest::Error::is_connect`). After a lost answer, a timeout or a 5xx the platform may have
    /// acted on it, so the error goes to the caller, which looks at the platform's records first.
    OnlyIfNotSent,
}

pub struct ApiClient {
    platform: String,
    /// Requests open at once on this platform. A thousand applications share a slot; without a bound
    /// they would open a thousand connections to the platform at its start, and keep them pooled.
    open_requests: tokio::sync::Semaphore,
    base: Url,
    client: reqwest::Client,
    timeout: Duration,
    token: Option<TokenSource>,
    metrics: Metrics,
}

impl ApiClient {
    pub fn new(platform: &config::Platform, metrics: Metrics) -> Result<Self> {
        let setup = |message: String| Error::Setup {
            platform: platform.name.clone(),
            message,
        };
        // Enough for every savepoint in flight to be polled while others are listed or triggered.
        let request_limit = platform.max_concurrent * 2 + 8;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .pool_max_idle_per_host(request_limit)
            .timeout(platform.request_timeout)
            .connect_timeout(platform.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("savepointd/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &platform.ca_file {
            let certs = ca_certificates(ca).map_err(|e| {
                setup(match e {
                    CaFileError::Unreadable(e) => {
                        format!("cannot read tls.caFile {}: {e}", ca.display())
                    }
                    CaFileError::NotPem(e) => {
                        format!("tls.caFile {} is not PEM: {e}", ca.display())
                    }
                    CaFileError::NoCertificate => {
                        format!("tls.caFile {} holds no PEM certificate", ca.display())
                    }
                })
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(files) = &platform.client_certificate {
            let identity = client_identity(files).map_err(setup)?;
            builder = builder.identity(identity);
        }
        if platform.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let client = builder.build().map_err(|e| setup(e.to_string()))?;
        let mut base = platform
            .url
            .clone()
            .ok_or_else(|| setup("an HTTP platform needs a url".into()))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            platform: platform.name.clone(),
            open_requests: tokio::sync::Semaphore::new(request_limit),
            base,
            client,
            timeout: platform.request_timeout,
            token: platform.auth.as_ref().map(TokenSource::new),
            metrics,
        })
    }

    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// A GET (retried as a read) whose JSON answer is decoded.
    pub async fn get<T: DeserializeOwned>(&self, operation: &'static str, path: &str) -> Result<T> {
        self.json(operation, Method::GET, path, None, Retry::Idempotent)
            .await
    }

    /// Sends one request and decodes the JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        retry: Retry,
    ) -> Result<T> {
        let (url, bytes) = self.send(operation, method, path, body, retry).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            platform: self.platform.clone(),
            operation,
            url: url.to_string(),
            message: e.to_string(),
        })
    }

    /// Sends one request with retries and returns the body of a 2xx answer.
    pub async fn send(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        retry: Retry,
    ) -> Result<(Url, bytes::Bytes)> {
        let url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| Error::Setup {
                platform: self.platform.clone(),
                message: format!("bad path {path}: {e}"),
            })?;
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            tries += 1;
            let result = self.send_once(operation, &method, &url, body).await;
            let again = match &result {
                Ok(_) => false,
                Err(Error::Connect { .. }) => true,
                Err(e) => e.may_have_acted() && retry == Retry::Idempotent,
            };
            if !again || tries >= MAX_TRIES {
                return result.map(|bytes| (url, bytes));
            }
            if let Err(e) = &result {
                tracing::info!(platform = %self.platform, operation, error = %e, attempt = tries,
                    "request failed; sending it again in {backoff:?}");
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }

    async fn send_once(
        &self,
        operation: &'static str,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<bytes::Bytes> {
        let mut request = self.client.request(method.clone(), url.clone());
        if let Some(token) = &self.token {
            let token = token.get().map_err(|message| Error::Token {
                platform: self.platform.clone(),
                message,
            })?;
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let _open = self
            .open_requests
            .acquire()
            .await
            .expect("semaphore is never closed");
        let timer = self.metrics.api_timer(&self.platform, operation);
        let result = async {
            let response = request.send().await?;
            let status = response.status();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        }
        .await;
        drop(timer);
        let (status, bytes) = match result {
            Ok(answer) => answer,
            Err(e) => {
                let code = if e.is_timeout() { "timeout" } else { "error" };
                self.metrics.api_request(&self.platform, operation, code);
                self.metrics.platform_up(&self.platform, false);
                return Err(self.transport_error(operation, url, e));
            }
        };
        self.metrics
            .api_request(&self.platform, operation, status.as_str());
        let authorised = !matches!(status.as_u16(), 401 | 403);
        self.metrics
            .platform_up(&self.platform, authorised && !status.is_server_error());
        if status.is_success() {
            return Ok(bytes);
        }
        Err(Error::Status {
            platform: self.platform.clone(),
            operation,
            url: url.to_string(),
            status: status.as_u16(),
            message: error_message(status, &bytes),
        })
    }

    /// What a transport failure means for the request: never sent (a connect error), or sent with its
    /// answer lost or late, which the platform may have acted on.
    fn transport_error(&self, operation: &'static str, url: &Url, e: reqwest::Error) -> Error {
        let (platform, url) = (self.platform.clone(), url.to_string());
        if e.is_timeout() {
            return Error::Timeout {
                platform,
                operation,
                url,
                timeout: self.timeout,
            };
        }
        let message = error_chain(&e);
        if e.is_connect() {
            Error::Connect {
                platform,
                operation,
                url,
                message,
            }
        } else {
            Error::NoAnswer {
                platform,
                operation,
                url,
                message,
            }
        }
    }
}

/// DELETEs sent for one deletion at most: the first, and resends after answers that were lost before
/// the request reached the platform (checked by reading the resource in between).
const DELETE_SENDS: u32 = 3;

/// How long a platform follows an accepted deletion before it reports it as still pending (it may yet
/// finish). Shared by every platform that follows deletions.
pub const DELETION_FOLLOW_LIMIT: Duration = Duration::from_secs(120);

/// What a look at a resource found after a DELETE whose answer was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterLostDelete {
    /// It is gone (404).
    Gone,
    /// The platform took the DELETE: the resource is being deleted.
    Accepted,
    /// As before: the DELETE did not arrive, and may be sent again.
    Untouched,
}

/// How a DELETE ended once it was answered or looked into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteSent {
    Gone,
    /// Accepted: the caller follows the deletion.
    Accepted,
}

impl ApiClient {
    /// Sends a DELETE that is never resent blindly (VVP answers a second one with a 409, and a
    /// platform may have acted on one whose answer was lost): after a lost answer or a 5xx, `look`
    /// reads the resource, and only an untouched one gets the DELETE again, at most `DELETE_SENDS`
    /// times in all. An error of `look` ends it with the DELETE's own error. A 404 means it is gone
    /// already: deleted by someone else, or by a DELETE of ours whose answer was lost.
    pub async fn delete_looked_into<F, Fut>(&self, path: &str, look: F) -> Result<DeleteSent>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<AfterLostDelete>>,
    {
        let mut sent = 0;
        loop {
            sent += 1;
            let error = match self
                .send("delete", Method::DELETE, path, None, Retry::OnlyIfNotSent)
                .await
            {
                Ok(_) => return Ok(DeleteSent::Accepted),
                Err(e) => e,
            };
            if error.status() == Some(404) {
                return Ok(DeleteSent::Gone);
            }
            if !error.may_have_acted() || sent >= DELETE_SENDS {
                return Err(error);
            }
            match look().await {
                Ok(AfterLostDelete::Gone) => return Ok(DeleteSent::Gone),
                Ok(AfterLostDelete::Accepted) => return Ok(DeleteSent::Accepted),
                Ok(AfterLostDelete::Untouched) => {}
                Err(_) => return Err(error),
            }
        }
    }
}

/// Why a `tls.caFile` cannot serve as trust roots.
#[derive(Debug)]
pub enum CaFileError {
    Unreadable(std::io::Error),
    NotPem(String),
    /// A file without a certificate would otherwise leave verification silently unchanged.
    NoCertificate,
}

/// The certificates of a `tls.caFile`, read as the HTTP client trusts them. `check-config` reads them
/// through this too, so that what it accepts the client accepts.
pub fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, CaFileError> {
    let pem = std::fs::read(path).map_err(CaFileError::Unreadable)?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| CaFileError::NotPem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CaFileError::NoCertificate);
    }
    Ok(certs)
}

/// The client certificate and key of `tls.certFile` / `tls.keyFile` (PEM), for mutual TLS. `check-config`
/// reads them through this too.
pub fn client_identity(files: &config::ClientCertificate) -> Result<reqwest::Identity, String> {
    let read = |field: &str, path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read tls.{field} {}: {e}", path.display()))
    };
    let mut pem = read("certFile", &files.cert_file)?;
    if !pem.ends_with(b"\n") {
        pem.push(b'\n');
    }
    pem.extend(read("keyFile", &files.key_file)?);
    reqwest::Identity::from_pem(&pem).map_err(|e| {
        format!(
            "tls.certFile {} and tls.keyFile {} are not a PEM certificate and its private key: {}",
            files.cert_file.display(),
            files.key_file.display(),
            error_chain(&e)
        )
    })
}

/// The full chain of causes, each said once: reqwest's top-level message alone ("error sending
/// request") says nothing, and hyper often repeats its cause's text.
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The platform's own words: VVP says `{"message": …}`, Flink `{"errors": ["…"]}`, CMF
/// `{"errors": [{"message": "…"}]}`.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return m.to_owned();
        }
        if let Some(errors) = v.get("errors").and_then(Value::as_array) {
            let all: Vec<_> = errors
                .iter()
                .filter_map(|e| e.as_str().or_else(|| e.get("message")?.as_str()))
                .collect();
            if !all.is_empty() {
                return all.join("; ");
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        text.chars().take(500).collect()
    }
}

/// Where the bearer token comes from. A token file is read again whenever its modification time changes:
/// Kubernetes rotates a mounted Secret by swapping a symlink, which `metadata` (following links) sees.
struct TokenSource {
    auth: Auth,
    cached: Mutex<Option<(SystemTime, String)>>,
}

impl TokenSource {
    fn new(auth: &Auth) -> Self {
        Self {
            auth: auth.clone(),
            cached: Mutex::new(None),
        }
    }

    fn get(&self) -> Result<String, String> {
        match &self.auth {
            Auth::TokenEnv(var) => std::env::var(var)
                .map(|t| t.trim().to_owned())
                .map_err(|_| format!("environment variable {var} (auth.tokenEnv) is not set")),
            Auth::TokenFile(path) => self.read_file(path),
        }
    }

    fn read_file(&self, path: &Path) -> Result<String, String> {
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| format!("auth.tokenFile {}: {e}", path.display()))?;
        let mut cached = self.cached.lock().expect("token cache lock");
        if let Some((at, token)) = cached.as_ref()
            && *at == modified
        {
            return Ok(token.clone());
        }
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("auth.tokenFile {}: {e}", path.display()))?
            .trim()
            .to_owned();
        *cached = Some((modified, token.clone()));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_prefers_the_platforms_words() {
        assert_eq!(
            error_message(StatusCode::CONFLICT, br#"{"message":"latest savepoint"}"#),
            "latest savepoint"
        );
        assert_eq!(
            error_message(StatusCode::BAD_REQUEST, br#"{"errors":["a","b"]}"#),
            "a; b"
        );
        assert_eq!(
            error_message(
                StatusCode::CONFLICT,
                br#"{"errors":[{"message":"Savepoint x already exists"}]}"#
            ),
            "Savepoint x already exists"
        );
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_a_setup_error_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let mut platform = crate::config::from_yaml(
            "platforms:\n  - name: vvp\n    kind: vvp\n    url: https://127.0.0.1:9\napplications: [a]\n",
        )
        .unwrap()
        .platforms
        .remove(0);
        platform.ca_file = Some(ca);
        let err = ApiClient::new(&platform, Metrics::new()).err().unwrap();
        assert!(err.to_string().contains("tls.caFile"), "{err}");
        platform.ca_file = Some(dir.path().join("missing.pem"));
        let err = ApiClient::new(&platform, Metrics::new()).err().unwrap();
        assert!(err.to_string().contains("cannot read tls.caFile"), "{err}");
    }

    #[test]
    fn token_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let source = TokenSource::new(&Auth::TokenFile(path.clone()));
        assert_eq!(source.get().unwrap(), "first");
        std::fs::write(&path, "second").unwrap();
        // Some filesystems keep whole-second mtimes; make the change visible whatever the resolution.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(source.get().unwrap(), "second");
    }
}
