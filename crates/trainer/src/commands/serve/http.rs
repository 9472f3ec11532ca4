//! The HTTP side: accepting connections within the cap, reading requests within their time
//! and size limits, the routes, and the request log.
//!
//! Each limit answers as early as it can, so a hostile client holds nothing for long: a
//! declared Content-Length over `--max-body-bytes` gets 413 before any body is read, a body
//! has `--body-timeout-secs` to arrive (408), a header `--header-timeout-secs` (the connection
//! is closed), and the whole request `--request-timeout-secs` (408). At `--max-connections`, a
//! new connection sheds the oldest open one that is not waiting on inference (idle, or still
//! sending its header or body: the stalled ones), so stalled clients cannot lock new ones out;
//! only when every open connection waits on inference is the new one refused, with 503.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::metrics::{self, Metrics, Route};
use super::queue::{Queue, Refused};
use crate::threshold::Threshold;

/// Seconds a client told 503 should wait before trying again: the queue drains in about a
/// batch's time, and connections free up as fast as requests are answered.
const RETRY_AFTER_SECS: &str = "1";

/// What the request handlers share: the adapters' answers to give, the queue to the inference
/// thread, and the metrics.
pub(super) struct Shared {
    /// Whether the inference thread is running (false while it is restarted).
    pub worker_up: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    pub api_keys: Vec<String>,
    pub names: Vec<String>,
    pub runs_info: Vec<Value>,
    pub labels: Vec<Vec<String>>,
    pub thresholds: Vec<Option<(usize, Threshold)>>,
    pub queue: Queue,
    pub max_texts: usize,
    pub max_text_chars: usize,
}

pub(super) struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub grace: Duration,
}

/// One open connection as the cap sees it.
#[derive(Default)]
struct Conn {
    /// Whether a request of it waits on inference (its body read, its answer not yet made):
    /// such a connection is never shed.
    busy: AtomicBool,
    /// Wakes the connection's task to close it, for a newer one.
    shed: Notify,
}

/// Marks a connection busy while it lives.
struct Busy<'a>(&'a Conn);

impl<'a> Busy<'a> {
    fn new(conn: &'a Conn) -> Self {
        conn.busy.store(true, Ordering::SeqCst);
        Self(conn)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::SeqCst);
    }
}

/// The open connections, oldest first (ids grow), at most `max`.
struct Connections {
    open: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    max: usize,
    /// Told of every connection shed or refused, and of the number open.
    metrics: Arc<Metrics>,
}

impl Connections {
    fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            open: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            max,
            metrics,
        }
    }

    /// Counts in a new connection. At the cap, the oldest one not waiting on inference is
    /// told to close and counted out; `None` when every open one is waiting on inference.
    fn admit(&self) -> Option<(u64, Arc<Conn>)> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= self.max {
            let Some(oldest_idle) = open
                .iter()
                .find(|(_, c)| !c.busy.load(Ordering::SeqCst))
                .map(|(id, _)| *id)
            else {
                self.metrics.connection_refused();
                return None;
            };
            if let Some(shed) = open.remove(&oldest_idle) {
                shed.shed.notify_one();
                self.metrics.connection_shed();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::default());
        open.insert(id, conn.clone());
        self.metrics.set_open_connections(open.len());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(&id);
        self.metrics.set_open_connections(open.len());
    }
}

/// What a connection refused at the cap is sent, best effort, before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Retry-After: 1\r\nConnection: close\r\nContent-Length: 55\r\n\r\n\
{\"error\":\"too many connections waiting; retry shortly\"}";

/// Accepts connections until SIGTERM/Ctrl-C, each served by hyper under the limits; then lets
/// them finish for the grace period, and drops those still open.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    limits: Limits,
) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/adapters", get(adapters))
        .route("/v1/classify", post(classify))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(shared.clone());
    let limits = Arc::new(limits);
    let connections = Arc::new(Connections::new(
        limits.max_connections,
        shared.metrics.clone(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut signal = std::pin::pin!(super::shutdown::signal());
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors or a reset before accept: wait, do not spin.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reaps finished connection tasks so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = &mut signal => break,
        };
        let Some((id, conn)) = connections.admit() else {
            let _ = stream.try_write(REFUSED);
            continue;
        };
        let app = app.clone();
        let shared = shared.clone();
        let limits = limits.clone();
        let connections = connections.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let header_timeout = limits.header_timeout;
            let service = {
                let conn = conn.clone();
                hyper::service::service_fn(move |request| {
                    handle(
                        app.clone(),
                        shared.clone(),
                        conn.clone(),
                        limits.clone(),
                        request,
                    )
                })
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                // Shed for a newer connection: dropped as it is.
                _ = conn.shed.notified() => {}
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            connections.remove(id);
        });
    }
    let deadline = tokio::time::Instant::now() + limits.grace;
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout_at(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "shutdown: requests still open after {}s were dropped",
            limits.grace.as_secs()
        );
        tasks.abort_all();
    }
    Ok(())
}

/// What the classify handler tells the request log and the metrics (never the texts
/// themselves).
#[derive(Clone, Copy)]
struct LogInfo {
    /// The adapter's index in `Shared::names`.
    adapter: usize,
    texts: usize,
}

/// One request under the request timeout, and its log line.
async fn handle(
    app: Router,
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    limits: Arc<Limits>,
    request: axum::http::Request<hyper::body::Incoming>,
) -> std::result::Result<Response, std::convert::Infallible> {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let respond = respond(app, &shared, &conn, &limits, request);
    let response = match tokio::time::timeout(limits.request_timeout, respond).await {
        Ok(r) => r,
        Err(_) => error(StatusCode::REQUEST_TIMEOUT, "request timed out"),
    };
    let elapsed = start.elapsed();
    let info = response.extensions().get::<LogInfo>().copied();
    let adapter = info.map(|i| i.adapter);
    let status = response.status().as_u16();
    shared
        .metrics
        .request(Route::of(&path), status, adapter, elapsed);
    eprintln!(
        "request {method} {path} adapter={} texts={} status={status} ms={:.1}",
        adapter
            .and_then(|i| shared.names.get(i))
            .map_or("-", String::as_str),
        info.map_or(0, |i| i.texts),
        elapsed.as_secs_f64() * 1e3
    );
    Ok(response)
}

/// The API key check, the body under its size and time limits, then the router.
async fn respond(
    app: Router,
    shared: &Shared,
    conn: &Conn,
    limits: &Limits,
    request: axum::http::Request<hyper::body::Incoming>,
) -> Response {
    use tower::ServiceExt;
    if request.uri().path() != "/healthz" && !authorized(&shared.api_keys, request.headers()) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key (Authorization: Bearer KEY)",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let too_large = || {
        closing(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ))
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let body =
        match tokio::time::timeout(limits.body_timeout, read_body(body, limits.max_body_bytes))
            .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(BodyError::TooLarge)) => return too_large(),
            Ok(Err(BodyError::Broken)) => {
                return closing(error(StatusCode::BAD_REQUEST, "request body incomplete"));
            }
            Err(_) => {
                return closing(error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "request body not complete within {}s",
                        limits.body_timeout.as_secs()
                    ),
                ));
            }
        };
    let _busy = Busy::new(conn);
    let request = axum::http::Request::from_parts(parts, Body::from(body));
    match app.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Why a body was not read.
enum BodyError {
    /// Over the limit (a chunked body, whose length is not declared up front).
    TooLarge,
    /// The client broke off.
    Broken,
}

/// Reads a whole body, refusing it as soon as it goes over `limit` bytes.
async fn read_body(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, BodyError> {
    use hyper::body::Body as _;
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let Ok(data) = frame.map_err(|_| BodyError::Broken)?.into_data() else {
            continue;
        };
        if bytes.len().saturating_add(data.len()) > limit {
            return Err(BodyError::TooLarge);
        }
        bytes.extend_from_slice(&data);
    }
    Ok(Bytes::from(bytes))
}

/// `response`, with the connection closed after it: its body was not read, so the connection
/// cannot carry another request.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Whether the request carries one of `keys` as a bearer token (always, with no keys). Every
/// key is compared in full, in time independent of where the bytes differ.
fn authorized(keys: &[String], headers: &axum::http::HeaderMap) -> bool {
    if keys.is_empty() {
        return true;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    keys.iter().fold(false, |ok, k| {
        ok | constant_time_eq(k.as_bytes(), token.as_bytes())
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.worker_up.load(Ordering::SeqCst) {
        axum::Json(json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable", "reason": "inference thread restarting"})),
        )
            .into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

/// The metrics, with the gauges kept elsewhere read now.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = shared.metrics.render(&metrics::Gauges {
        queued_texts: shared.queue.queued_texts(),
        queue_capacity: shared.queue.capacity(),
        inference_up: shared.worker_up.load(Ordering::SeqCst),
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

async fn adapters(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({"default": shared.names[0], "adapters": shared.runs_info})).into_response()
}

/// Per-request limits of `/v1/classify`.
struct RequestLimits {
    max_texts: usize,
    max_text_chars: usize,
}

impl Shared {
    fn limits(&self) -> RequestLimits {
        RequestLimits {
            max_texts: self.max_texts,
            max_text_chars: self.max_text_chars,
        }
    }
}

/// A `/v1/classify` body -> (adapter index, texts), or the status and message to answer.
/// Any bytes give one or the other (property-tested).
fn parse_classify(
    body: &[u8],
    names: &[String],
    limits: &RequestLimits,
) -> std::result::Result<(usize, Vec<String>), (StatusCode, String)> {
    let request: ClassifyRequest = serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid JSON: {e} (expected {{\"texts\": [...], \"adapter\": \"name\"}})"),
        )
    })?;
    let adapter = match &request.adapter {
        None => 0,
        Some(name) => names.iter().position(|n| n == name).ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("unknown adapter `{name}` (serving: {})", names.join(", ")),
            )
        })?,
    };
    if request.texts.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "`texts` is empty".into()));
    }
    if request.texts.len() > limits.max_texts {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} texts in one request; the limit is {}",
                request.texts.len(),
                limits.max_texts
            ),
        ));
    }
    for (i, t) in request.texts.iter().enumerate() {
        if t.trim().is_empty() {
            return Err((StatusCode::BAD_REQUEST, format!("texts[{i}] is empty")));
        }
        if t.chars().count() > limits.max_text_chars {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "texts[{i}] has more than {} characters",
                    limits.max_text_chars
                ),
            ));
        }
    }
    Ok((adapter, request.texts))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    texts: Vec<String>,
    #[serde(default)]
    adapter: Option<String>,
}

async fn classify(
    State(shared): State<Arc<Shared>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "request body too large".to_string()
            } else {
                rejection.body_text()
            };
            return error(status, message);
        }
    };
    let (adapter, texts) = match parse_classify(&body, &shared.names, &shared.limits()) {
        Ok(r) => r,
        Err((status, message)) => return error(status, message),
    };
    let log = LogInfo {
        adapter,
        texts: texts.len(),
    };
    let with_log = |mut r: Response| {
        r.extensions_mut().insert(log);
        r
    };
    let answer = match shared.queue.push(adapter, texts) {
        Ok(answer) => answer,
        Err(Refused::Full) => {
            shared.metrics.queue_full();
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many texts waiting for inference; retry shortly",
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
            return with_log(r);
        }
        Err(Refused::Stopped) => {
            return with_log(error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
        }
    };
    let probs = match answer.await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return with_log(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(_) => {
            return with_log(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference failed: the inference thread stopped",
            ));
        }
    };
    let labels = &shared.labels[adapter];
    // Under a decision threshold each result also says it, with the positive label's
    // probability: `threshold`, `positive`, `p_positive` (its label can score below 0.5).
    let results: Vec<Value> = probs
        .iter()
        .map(|p| {
            let d = crate::decision::decision(shared.thresholds[adapter].as_ref(), p);
            let mut r = json!({"label": labels[d.label], "score": d.score, "probabilities": p});
            if let Some(r) = r.as_object_mut() {
                r.extend(d.threshold_fields(labels));
            }
            r
        })
        .collect();
    with_log(
        axum::Json(json!({"adapter": shared.names[adapter], "results": results})).into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    const LIMITS: RequestLimits = RequestLimits {
        max_texts: 4,
        max_text_chars: 16,
    };

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes: a parse or a 4xx, never a panic.
        #[test]
        fn any_body_is_parsed_or_refused(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Err((status, message)) = parse_classify(&body, &names(), &LIMITS) {
                prop_assert!(status.is_client_error());
                prop_assert!(!message.is_empty());
            }
        }

        /// Well-formed JSON with arbitrary texts and adapter names: accepted exactly when
        /// every limit holds.
        #[test]
        fn limits_decide(texts in proptest::collection::vec(".{0,20}", 0..6), adapter in proptest::option::of("[a-c]")) {
            let body = serde_json::json!({"texts": texts, "adapter": adapter}).to_string();
            let fits = !texts.is_empty()
                && texts.len() <= LIMITS.max_texts
                && texts.iter().all(|t| !t.trim().is_empty() && t.chars().count() <= LIMITS.max_text_chars)
                && adapter.as_deref().is_none_or(|a| a != "c");
            match parse_classify(body.as_bytes(), &names(), &LIMITS) {
                Ok((i, got)) => {
                    prop_assert!(fits);
                    prop_assert_eq!(got, texts);
                    prop_assert_eq!(i, usize::from(adapter.as_deref() == Some("b")));
                }
                Err((status, _)) => {
                    prop_assert!(!fits, "refused with {}", status);
                }
            }
        }
    }

    #[test]
    fn keys_compare_in_full() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        let mut headers = axum::http::HeaderMap::new();
        let keys = vec!["k1".to_string(), "k2".to_string()];
        assert!(!authorized(&keys, &headers));
        assert!(authorized(&[], &headers));
        headers.insert("authorization", "Bearer k2".parse().unwrap());
        assert!(authorized(&keys, &headers));
        headers.insert("authorization", "Basic k2".parse().unwrap());
        assert!(!authorized(&keys, &headers));
    }

    fn connections(max: usize) -> Connections {
        Connections::new(max, Arc::new(Metrics::new(&[], 1)))
    }

    /// Whether the metrics show `line`.
    fn shows(c: &Connections, line: &str) -> bool {
        let gauges = metrics::Gauges {
            queued_texts: 0,
            queue_capacity: 1,
            inference_up: true,
        };
        c.metrics.render(&gauges).lines().any(|l| l == line)
    }

    fn open_ids(c: &Connections) -> Vec<u64> {
        c.open.lock().unwrap().keys().copied().collect()
    }

    /// At the cap a new connection sheds the oldest one not waiting on inference; with all
    /// of them waiting, it is refused.
    #[test]
    fn serve_cap_sheds_the_oldest_idle_connection() {
        let c = connections(3);
        let conns: Vec<_> = (0..3).map(|_| c.admit().unwrap()).collect();
        let _busy = Busy::new(&conns[0].1);
        let (id, _) = c.admit().unwrap();
        assert_eq!(open_ids(&c), [0, 2, id]);
        let _busy2 = Busy::new(&conns[2].1);
        c.admit().unwrap();
        assert_eq!(open_ids(&c), [0, 2, 4]);
        assert!(shows(&c, "trainer_serve_connections_shed_total 2"));
        assert!(shows(&c, "trainer_serve_open_connections 3"));
    }

    #[test]
    fn serve_cap_refuses_when_every_connection_waits_on_inference() {
        let c = connections(2);
        let conns: Vec<_> = (0..2).map(|_| c.admit().unwrap()).collect();
        let busy: Vec<_> = conns.iter().map(|(_, conn)| Busy::new(conn)).collect();
        assert!(c.admit().is_none());
        drop(busy);
        c.admit().unwrap();
        assert_eq!(open_ids(&c), [1, 2]);
        c.remove(1);
        assert_eq!(open_ids(&c), [2]);
        assert!(shows(&c, "trainer_serve_connections_refused_total 1"));
        assert!(shows(&c, "trainer_serve_connections_shed_total 1"));
        assert!(shows(&c, "trainer_serve_open_connections 1"));
    }

    /// The 503 sent to a refused connection is a well-formed response.
    #[test]
    fn serve_refusal_is_well_formed() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        serde_json::from_str::<Value>(body).unwrap();
    }
}
