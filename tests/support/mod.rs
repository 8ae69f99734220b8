#![allow(dead_code)]
//! Fakes of the platforms savepointd talks to, shared by the black-box tests.
//!
//! - `vvp_sim`: Ververica Platform appmanager API v1 (savepoints and deployments), including its
//!   unhappy paths (401, 409 on delete, FAILED savepoints, injected 5xx, dropped connections, answers
//!   lost or late after the request was handled, latency, a seeded random fault plan).
//! - `cmf_sim`: Confluent Manager for Apache Flink (savepoints of applications and statements), with
//!   its unhappy paths (409 on a duplicate name, small pages, FAILED and ABANDONED savepoints, 503,
//!   deletions pending while the job is down, the bearer token).
//! - `unreliable`: the network faults and request record every simulator shares (the Kubernetes fake
//!   included).
//! - `kube_fake`: a Kubernetes API server small enough to read, big enough for kube-rs list/watch and
//!   for the real `kubectl`: pods, Leases, and the Flink Kubernetes Operator's custom resources
//!   (`kube_fake/resources.rs`, FlinkDeployment, FlinkSessionJob, FlinkStateSnapshot with finalizers
//!   and the status subresource), with a simulation of the operator's snapshot controller that
//!   triggers, completes, fails, abandons and disposes of snapshots (`kube_fake/flink_operator.rs`).
//! - `flink`: not a fake: a real Apache Flink session cluster, started through `scripts/flink_harness.py`.

pub mod cmf_sim;
pub mod fixture;
pub mod flink;
pub mod kube_fake;
pub mod tls;
pub mod unreliable;
pub mod vvp_sim;

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Polls `check` every 20 ms until it yields `Some`, or gives up after `timeout`.
///
/// Tests wait for asynchronous effects this way instead of sleeping a fixed time, so they are
/// as fast as the system allows and still bounded.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port nothing listens on right now (for a server that must be told its port up front).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// A listener on a free loopback port, with an accept queue of 1,024 connections.
///
/// `TcpListener::bind` asks the kernel for 128 (mio ≥ 1.1 follows the standard library): a daemon with a
/// `maxConcurrent` in the hundreds opens that many connections at once, the queue overflows, and each
/// dropped handshake costs the client a SYN retransmission, 1 s and more. That would be a delay of the
/// fake, charged to the client under test. (The kernel caps the value at `net.core.somaxconn`.)
pub(crate) fn loopback_listener() -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind 127.0.0.1:0");
    socket.listen(1024).expect("listen on 127.0.0.1")
}

/// 64 random bits; the per-process random keys of `RandomState` spare a dependency on a RNG crate,
/// and the counter keeps two calls from ever colliding within a process.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// A small deterministic PRNG (SplitMix64). Tests that inject faults or pick moments at random draw
/// from it, so a run can be replayed from the seed it printed; the per-process random keys of
/// [`random_u64`] are for ids, which need no replay.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`: the top 53 bits, as many as an `f64` holds exactly.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[low, high)` (`low` when the range is empty).
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        low + high.saturating_sub(low).mul_f64(self.next_f64())
    }
}

/// A random UUID v4 in its canonical text form.
pub(crate) fn uuid_v4() -> String {
    let hi = random_u64();
    let lo = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0x0fff,
        0x8000 | ((lo >> 48) & 0x3fff),
        lo & 0xffff_ffff_ffff
    )
}

/// `len` random lowercase hex digits.
pub(crate) fn random_hex(len: usize) -> String {
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        out.push_str(&format!("{:016x}", random_u64()));
    }
    out.truncate(len);
    out
}

/// Decodes `application/x-www-form-urlencoded` text; malformed escapes are kept literally because
/// a fake server must answer bad input, not fail on it.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match text
                .get(i + 1..i + 3)
                .map(|hex| u8::from_str_radix(hex, 16))
            {
                Some(Ok(byte)) => {
                    out.push(byte);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a raw query string into decoded pairs, in order, keeping duplicates.
pub(crate) fn parse_query(raw: Option<&str>) -> Vec<(String, String)> {
    raw.unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => (percent_decode(key), percent_decode(value)),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

/// The first value given for `key`, as both Kubernetes and Spring read a repeated parameter.
pub(crate) fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Locks without propagating poison: a test that panicked while holding the lock must not turn
/// every later request of the fake into a panic as well.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `savepointd run --config <config>` as a test starts the real binary: text logs without colour into
/// `log` (stdout and stderr), at info, killed on drop so that a failing test leaves no process behind.
/// Callers add what is theirs (environment overrides) and spawn it.
pub fn daemon_command(config: &std::path::Path, log: &std::path::Path) -> tokio::process::Command {
    let out = std::fs::File::create(log).expect("create the daemon's log file");
    let err = out.try_clone().expect("share the daemon's log file");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_savepointd"));
    command
        .args(["run", "--config"])
        .arg(config)
        .args(["--log-format", "text"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    command
}
