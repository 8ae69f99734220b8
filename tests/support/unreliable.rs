//! What a real network does to an HTTP fake, shared by the platform simulators: faults before a request
//! is handled (a dropped connection, a 5xx) or after it took effect (an answer lost to a reset, or later
//! than the client waits), asked for one by one or drawn from a seeded plan, and a record of every
//! request. A simulator implements [`Simulated`] (its routes and its error format) and is served by
//! [`serve`]; the Kubernetes fake, whose watches stream, serves itself through [`DroppableListener`]
//! and draws its faults from the same [`Network`].
//!
//! The faults after handling are the ones a client cannot tell from the ones before, and must not
//! resend blindly.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{SplitMix64, lock, loopback_listener, parse_query, query_value};

/// Requests larger than this are answered 400 rather than buffered.
const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, as sent.
    pub query: Option<String>,
    /// The status of the answer, sent or not; 0 for a request whose connection was dropped before
    /// it was handled.
    pub status: u16,
    /// The request was handled (`status` is what it was answered), then its connection was killed:
    /// the client never saw the answer.
    pub lost: bool,
    /// What was injected into this request, if anything.
    pub fault: Option<Fault>,
    /// When the request arrived.
    pub at: Instant,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// The request body when it was JSON.
    pub body: Option<Value>,
}

/// A fault injected into the handling of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The connection was killed before the request was handled: nothing happened.
    DropBefore,
    /// Answered with this status without handling the request (`fail_next`, or the plan's 503).
    Status(u16),
    /// Handled, state changes included, then the connection was killed instead of answering, as
    /// when a reset or a proxy timeout loses an answer the platform had already acted on.
    LoseAfter,
    /// Handled, then answered after this delay, so that a client with a shorter request timeout
    /// gives up on a request that took effect.
    Slow(Duration),
}

/// A seeded random fault plan, drawn once per request it applies to, in order of arrival: the same
/// seed gives the same sequence of faults. The probabilities are exclusive and add up to 1 at most.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub seed: u64,
    /// Connection killed before the request is handled.
    pub drop_before: f64,
    /// Request handled, then the connection killed before the answer.
    pub lose_after: f64,
    /// 503 without handling the request.
    pub server_error: f64,
    /// Request handled, then answered after `slow_by`.
    pub slow: f64,
    pub slow_by: Duration,
    /// The methods the plan applies to (`"POST"`, `"DELETE"`); empty for every request.
    pub methods: Vec<String>,
}

impl Faults {
    fn applies_to(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    fn pick(&self, rng: &mut SplitMix64) -> Option<Fault> {
        let draw = rng.next_f64();
        let mut bound = 0.0;
        for (probability, fault) in [
            (self.drop_before, Fault::DropBefore),
            (self.lose_after, Fault::LoseAfter),
            (self.server_error, Fault::Status(503)),
            (self.slow, Fault::Slow(self.slow_by)),
        ] {
            bound += probability;
            if draw < bound {
                return Some(fault);
            }
        }
        None
    }
}

/// How many faults of each kind were injected, whether planned or asked for one by one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub drop_before: usize,
    pub lose_after: usize,
    /// Answers of an injected status: the plan's 503s and `fail_next`.
    pub server_error: usize,
    pub slow: usize,
}

impl FaultCounts {
    pub fn total(&self) -> usize {
        self.drop_before + self.lose_after + self.server_error + self.slow
    }

    fn count(&mut self, fault: Fault) {
        match fault {
            Fault::DropBefore => self.drop_before += 1,
            Fault::Status(_) => self.server_error += 1,
            Fault::LoseAfter => self.lose_after += 1,
            Fault::Slow(_) => self.slow += 1,
        }
    }
}

/// Faults asked for one by one: the next `remaining` requests (of `method`, and to a path containing
/// `path`, when set).
struct NextFaults {
    method: Option<String>,
    path: Option<String>,
    remaining: usize,
    fault: Fault,
}

impl RecordedRequest {
    /// A decoded query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        query_value(&parse_query(self.query.as_deref()), key).map(str::to_string)
    }
}

/// The faults to inject, and every request seen: the network half of a simulator's state.
#[derive(Default)]
pub struct Network {
    /// Every request received, in order of arrival, rejected ones included.
    pub requests: Vec<RecordedRequest>,
    /// Delay before every answer.
    pub latency: Duration,
    /// A further delay before requests of one method are handled, as a busy platform takes a while to
    /// act on a write: two clients that read before either write was handled both write.
    pub handling_delay: Option<(String, Duration)>,
    fail_next: VecDeque<u16>,
    drop_next: usize,
    next_faults: Vec<NextFaults>,
    faults: Option<(Faults, SplitMix64)>,
    fault_counts: FaultCounts,
}

impl Network {
    pub fn with_latency(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }

    /// The next `n` requests are answered `status` in the platform's error format, touching nothing.
    pub fn fail_next(&mut self, n: usize, status: u16) {
        self.fail_next.extend(std::iter::repeat_n(status, n));
    }

    /// The next `n` requests get no answer: their connection is closed instead.
    pub fn drop_next(&mut self, n: usize) {
        self.drop_next += n;
    }

    /// The next `n` requests (of `method`, when set) meet `fault`.
    pub fn next(&mut self, method: Option<&str>, n: usize, fault: Fault) {
        self.next_to(method, None, n, fault);
    }

    /// The next `n` requests of `method` (when set) to a path that contains `path` (when set) meet
    /// `fault`: one resource's requests on a server that serves several.
    pub fn next_to(&mut self, method: Option<&str>, path: Option<&str>, n: usize, fault: Fault) {
        if n == 0 {
            return;
        }
        self.next_faults.push(NextFaults {
            method: method.map(str::to_ascii_uppercase),
            path: path.map(str::to_string),
            remaining: n,
            fault,
        });
    }

    /// From now on every request the plan applies to draws its fault from the plan, unless a fault
    /// asked for one by one (`drop_next`, `fail_next`, `next`) comes first.
    pub fn set_faults(&mut self, faults: Faults) {
        let total = faults.drop_before + faults.lose_after + faults.server_error + faults.slow;
        assert!(
            (0.0..=1.0).contains(&total),
            "fault probabilities add up to {total}, not a probability"
        );
        let rng = SplitMix64::new(faults.seed);
        self.faults = Some((faults, rng));
    }

    /// No planned faults from now on.
    pub fn clear_faults(&mut self) {
        self.faults = None;
    }

    /// The faults injected so far, by kind.
    pub fn fault_counts(&self) -> FaultCounts {
        self.fault_counts
    }

    /// The fault for a request that just arrived: those asked for one by one come first (drops, then
    /// statuses, then lost and late answers in the order they were asked for), then the plan's draw.
    pub(crate) fn fault_for(&mut self, method: &str, path: &str) -> Option<Fault> {
        let fault = if self.drop_next > 0 {
            self.drop_next -= 1;
            Some(Fault::DropBefore)
        } else if let Some(status) = self.fail_next.pop_front() {
            Some(Fault::Status(status))
        } else if let Some(next) = self.next_faults.iter_mut().find(|f| {
            f.method.as_deref().is_none_or(|m| m == method)
                && f.path.as_deref().is_none_or(|p| path.contains(p))
        }) {
            next.remaining -= 1;
            let fault = next.fault;
            self.next_faults.retain(|f| f.remaining > 0);
            Some(fault)
        } else {
            match &mut self.faults {
                Some((plan, rng)) if plan.applies_to(method) => plan.pick(rng),
                _ => None,
            }
        };
        if let Some(fault) = fault {
            self.fault_counts.count(fault);
        }
        fault
    }
}

/// A simulated platform: its routes, its error format, and its [`Network`].
pub trait Simulated: Send + 'static {
    fn network(&mut self) -> &mut Network;

    /// Answers a request that reached the platform.
    fn route(
        &mut self,
        method: &Method,
        path: &str,
        query: &[(String, String)],
        body: &[u8],
        authorization: Option<&str>,
    ) -> (StatusCode, Value);

    /// The body of an error answer in the platform's format.
    fn error_body(message: &str) -> Value;
}

/// Serves `state` on a free loopback port: `http://127.0.0.1:PORT` and the server task.
pub async fn serve<S: Simulated>(state: Arc<Mutex<S>>) -> (String, JoinHandle<()>) {
    let listener = loopback_listener();
    let addr = listener.local_addr().expect("local address of a simulator");
    let app = Router::new().fallback(handle::<S>).with_state(state);
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            DroppableListener(listener),
            app.into_make_service_with_connect_info::<Connection>(),
        )
        .await;
    });
    (format!("http://{addr}"), server)
}

async fn handle<S: Simulated>(
    State(state): State<Arc<Mutex<S>>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    request: Request,
) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES).await;
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().map(str::to_string);
    let (index, fault, latency) = {
        let mut sim = lock(&state);
        let network = sim.network();
        let fault = network.fault_for(parts.method.as_str(), &path);
        network.requests.push(RecordedRequest {
            method: parts.method.to_string(),
            path: path.clone(),
            query: raw_query.clone(),
            status: 0,
            lost: false,
            fault,
            at,
            authorization: authorization.clone(),
            content_type,
            body: body
                .as_ref()
                .ok()
                .and_then(|b| serde_json::from_slice(b).ok()),
        });
        let extra = match &network.handling_delay {
            Some((method, by)) if method.eq_ignore_ascii_case(parts.method.as_str()) => *by,
            _ => Duration::ZERO,
        };
        (network.requests.len() - 1, fault, network.latency + extra)
    };
    if fault == Some(Fault::DropBefore) {
        connection.kill();
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    tokio::time::sleep(latency).await;
    let (status, answer) = match (fault, body) {
        (Some(Fault::Status(code)), _) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            S::error_body("injected"),
        ),
        (_, Err(_)) => (
            StatusCode::BAD_REQUEST,
            S::error_body(&format!("Request body larger than {MAX_BODY_BYTES} bytes")),
        ),
        (_, Ok(body)) => lock(&state).route(
            &parts.method,
            &path,
            &parse_query(raw_query.as_deref()),
            &body,
            authorization.as_deref(),
        ),
    };
    {
        // Recorded before the answer is lost or delayed: the client may give up on a slow answer,
        // and the server then drops this future without running the rest.
        let mut sim = lock(&state);
        let recorded = &mut sim.network().requests[index];
        recorded.status = status.as_u16();
        recorded.lost = fault == Some(Fault::LoseAfter);
    }
    match fault {
        Some(Fault::LoseAfter) => {
            connection.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(Fault::Slow(by)) => tokio::time::sleep(by).await,
        _ => {}
    }
    if status == StatusCode::NO_CONTENT {
        return status.into_response();
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}

/// A TCP listener whose connections can be cut by the request handler, so that "no answer at all"
/// can be simulated for one request even on a kept-alive connection. Served with
/// `into_make_service_with_connect_info::<Connection>()`, a handler finds its connection in
/// `ConnectInfo<Connection>`.
pub(crate) struct DroppableListener(pub(crate) TcpListener);

#[derive(Clone, Debug)]
pub(crate) struct Connection {
    killed: Arc<AtomicBool>,
}

impl Connection {
    /// Cuts the connection: nothing more is read from it or written to it.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, DroppableListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, DroppableListener>) -> Self {
        stream.remote_addr().1.clone()
    }
}

impl Listener for DroppableListener {
    type Io = DroppableStream;
    type Addr = (SocketAddr, Connection);

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, peer)) => {
                    // Nagle off, as on a production server: with it on, a reply that leaves in more than
                    // one write holds back the rest until the client acknowledges the first part, which
                    // Linux clients delay by up to 40 ms on a kept-alive connection.
                    let _ = stream.set_nodelay(true);
                    let connection = Connection {
                        killed: Arc::new(AtomicBool::new(false)),
                    };
                    let io = DroppableStream {
                        inner: stream,
                        killed: connection.killed.clone(),
                    };
                    return (io, (peer, connection));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        let connection = Connection {
            killed: Arc::new(AtomicBool::new(false)),
        };
        Ok((self.0.local_addr()?, connection))
    }
}

/// Once killed, every read and write fails, so the HTTP server gives up on the connection
/// without writing a byte of the response.
pub(crate) struct DroppableStream {
    inner: TcpStream,
    killed: Arc<AtomicBool>,
}

impl DroppableStream {
    fn check(&self) -> io::Result<()> {
        if self.killed.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection dropped on purpose",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for DroppableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for DroppableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
