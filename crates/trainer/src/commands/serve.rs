//! `trainer serve`: an HTTP JSON classification service.
//!
//! One frozen base model is loaded once and shared by every adapter (the point of PEFT: one
//! base, many tasks); each adapter adds only its own small tensors. Requests from all clients
//! go to one inference thread that micro-batches them: it takes what has arrived within
//! `--batch-wait-ms` (up to `--max-batch` texts), runs each adapter's texts together, and
//! answers each request. Limits (body size, texts per request, text length) answer 4xx with a
//! JSON error; SIGTERM or Ctrl-C stops accepting and finishes the requests in flight, for at
//! most `--shutdown-grace-secs`.
//!
//! A request can fail, the service cannot: each adapter is checked at load for what could
//! overflow (virtual tokens + max length within the position table), a panic while scoring
//! answers that request 500 and the inference thread is started afresh, and `/healthz` says
//! whether it is running. Connections that do not send a complete header within
//! `--header-timeout-secs` (idle keep-alive ones included) are closed, at most
//! `--max-connections` are open at once, and with `--api-key` (or `TRAINER_API_KEY`, or
//! `--api-key-file` for several) every route but `/healthz` needs `Authorization: Bearer KEY`.
//! One log line per request on stderr: method, path, adapter, number of texts, status,
//! latency; never the texts.
//!
//! ```text
//! POST /v1/classify {"texts": ["..."], "adapter": "name"}  -> {"adapter", "results": [{"label", "score", "probabilities"}]}
//! GET  /v1/adapters                                       -> {"default", "adapters": [...]}
//! GET  /healthz                                           -> {"status": "ok"}
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bert_model::Pretrained;
use burn::prelude::*;
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::classifier::Classifier;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Run directory whose classifier is the default adapter.
    #[arg(long)]
    pub run: PathBuf,
    /// More adapters on the same base model: NAME=DIR, where DIR is a run directory or a HF
    /// peft adapter directory (labels from its labels.txt if it has one, else LABEL_i).
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    pub adapters: Vec<String>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Most texts in one request.
    #[arg(long, default_value_t = 256)]
    pub max_texts: usize,
    /// Longest text accepted, in characters (texts are truncated to the model's max length in
    /// tokens anyway; this bounds the work of tokenising).
    #[arg(long, default_value_t = 4096)]
    pub max_text_chars: usize,
    /// Most texts run in one forward pass.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// How long the inference thread waits for more requests to batch with the first.
    #[arg(long, default_value_t = 2)]
    pub batch_wait_ms: u64,
    /// Close a connection that has not sent a complete request header within this time
    /// (also how long an idle keep-alive connection stays open).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Answer 408 to a request not answered within this time (a slow body, a long queue).
    #[arg(long, default_value_t = 60)]
    pub request_timeout_secs: u64,
    /// Most connections open at once; more are closed on accept.
    #[arg(long, default_value_t = 128)]
    pub max_connections: usize,
    /// On SIGTERM/Ctrl-C, how long requests in flight may take to finish.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Require `Authorization: Bearer KEY` on every route but /healthz (also from the
    /// environment variable TRAINER_API_KEY).
    #[arg(long, env = "TRAINER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A file of API keys, one per line (blank lines and `#` comments ignored).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
}

/// One request's texts on their way to the inference thread.
struct Job {
    adapter: usize,
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

struct Shared {
    /// Whether the inference thread is running (false while it is restarted).
    worker_up: Arc<AtomicBool>,
    api_keys: Vec<String>,
    names: Vec<String>,
    runs_info: Vec<Value>,
    labels: Vec<Vec<String>>,
    thresholds: Vec<Option<(usize, crate::threshold::Threshold)>>,
    jobs: mpsc::Sender<Job>,
    max_texts: usize,
    max_text_chars: usize,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let device = crate::device::device();
    let config = Classifier::read_config(&args.run)?;
    crate::device::set_precision(std::slice::from_ref(&device), config.train.precision)?;
    let pretrained = Pretrained::load(&config.model.source, config.model.max_length, &device)?;
    let mut names = vec![config.name.clone()];
    let mut runs = vec![Classifier::load_with(&args.run, &pretrained, &device)?];
    for spec in &args.adapters {
        let Some((name, dir)) = spec.split_once('=') else {
            bail!("--adapter {spec}: expected NAME=DIR");
        };
        if names.iter().any(|n| n == name) {
            bail!("--adapter {spec}: the name `{name}` is taken");
        }
        let dir = PathBuf::from(dir);
        let run = if dir.join("config.toml").is_file() {
            let other = Classifier::read_config(&dir)?;
            if other.model.source != config.model.source {
                bail!(
                    "--adapter {spec}: trained on {}, but the served base model is {}",
                    other.model.source,
                    config.model.source
                );
            }
            Classifier::load_with(&dir, &pretrained, &device)?
        } else {
            let labels = dir.join("labels.txt");
            let labels = labels.is_file().then_some(labels);
            Classifier::adapter_with(
                &pretrained,
                &config.model.source,
                &dir,
                labels.as_deref(),
                &device,
            )?
        };
        names.push(name.to_string());
        runs.push(run);
    }
    drop(pretrained);

    let runs_info = runs
        .iter()
        .zip(&names)
        .map(|(r, n)| {
            json!({
                "name": n,
                "method": r.config.peft.name(),
                "labels": r.labels.names(),
                "base_model": r.config.model.source,
                "threshold": r.threshold.as_ref().map(|(_, t)| t),
            })
        })
        .collect();
    let api_keys = read_api_keys(&args)?;
    let (tx, rx) = mpsc::channel::<Job>(1024);
    // Up from the start: jobs wait in the channel until the thread takes them.
    let worker_up = Arc::new(AtomicBool::new(true));
    let shared = Arc::new(Shared {
        worker_up: worker_up.clone(),
        api_keys,
        names: names.clone(),
        runs_info,
        labels: runs.iter().map(|r| r.labels.names().to_vec()).collect(),
        thresholds: runs.iter().map(|r| r.threshold.clone()).collect(),
        jobs: tx,
        max_texts: args.max_texts,
        max_text_chars: args.max_text_chars,
    });
    let worker = Worker {
        runs: Arc::new(runs),
        jobs: Arc::new(Mutex::new(rx)),
        up: worker_up,
        wait: Duration::from_millis(args.batch_wait_ms),
        max_batch: args.max_batch.max(1),
        device,
    };
    let supervisor = std::thread::spawn(move || worker.supervise());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let limits = ConnectionLimits {
        header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
        request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        max_connections: args.max_connections.max(1),
        grace: Duration::from_secs(args.shutdown_grace_secs),
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        let addr: SocketAddr = listener.local_addr()?;
        if !addr.ip().is_loopback() && shared.api_keys.is_empty() {
            eprintln!(
                "warning: listening on {addr}, beyond this machine, without an API key: anyone \
                 who can reach it can use it (set --api-key, TRAINER_API_KEY or --api-key-file)"
            );
        }
        eprintln!("serving adapters {:?} ", names);
        // The address on stdout (a port 0 request gets the real port), for scripts and tests.
        println!("listening on http://{addr}");
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/v1/adapters", get(adapters))
            .route("/v1/classify", post(classify))
            .layer(DefaultBodyLimit::max(args.max_body_bytes))
            .with_state(shared.clone());
        accept_loop(listener, app, shared, limits).await
    });
    // Connections still open past the grace period are dropped with the runtime; with them
    // the last job senders go, and the inference thread ends.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    supervisor
        .join()
        .map_err(|_| anyhow::anyhow!("inference supervisor panicked"))?;
    eprintln!("stopped");
    Ok(())
}

/// API keys from --api-key / TRAINER_API_KEY and --api-key-file; none means no access control.
fn read_api_keys(args: &ServeArgs) -> Result<Vec<String>> {
    let mut keys: Vec<String> = args.api_key.iter().cloned().collect();
    if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --api-key-file {}", path.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
        if keys.is_empty() {
            bail!("{}: no API keys in the file", path.display());
        }
    }
    if keys.iter().any(|k| k.trim().is_empty()) {
        bail!("--api-key / TRAINER_API_KEY: an API key cannot be empty");
    }
    Ok(keys)
}

struct ConnectionLimits {
    header_timeout: Duration,
    request_timeout: Duration,
    max_connections: usize,
    grace: Duration,
}

/// Accepts connections until SIGTERM/Ctrl-C, each served by hyper with a header timeout and
/// counted against the connection cap; then lets them finish for the grace period.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    shared: Arc<Shared>,
    limits: ConnectionLimits,
) -> Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut signal = std::pin::pin!(shutdown_signal());
    let limits = Arc::new(limits);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or a reset before accept: wait, do not spin.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: closed at once rather than queued.
            drop(stream);
            continue;
        };
        let app = app.clone();
        let shared = shared.clone();
        let limits = limits.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let request_timeout = limits.request_timeout;
            let service = hyper::service::service_fn(move |request| {
                handle(app.clone(), shared.clone(), request_timeout, request)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        eprintln!(
            "shutdown: requests still open after {}s were dropped",
            limits.grace.as_secs()
        );
    }
    Ok(())
}

/// What the classify handler tells the request log (never the texts themselves).
#[derive(Clone)]
struct LogInfo {
    adapter: String,
    texts: usize,
}

/// One request: the API key check, the router under the request timeout, and its log line.
async fn handle(
    app: Router,
    shared: Arc<Shared>,
    timeout: Duration,
    request: axum::http::Request<hyper::body::Incoming>,
) -> std::result::Result<Response, std::convert::Infallible> {
    use tower::ServiceExt;
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = if path != "/healthz" && !authorized(&shared.api_keys, request.headers()) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key (Authorization: Bearer KEY)",
        );
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        r
    } else {
        let request = request.map(axum::body::Body::new);
        match tokio::time::timeout(timeout, app.oneshot(request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(never)) => match never {},
            Err(_) => error(StatusCode::REQUEST_TIMEOUT, "request timed out"),
        }
    };
    let info = response.extensions().get::<LogInfo>().cloned();
    eprintln!(
        "request {method} {path} adapter={} texts={} status={} ms={:.1}",
        info.as_ref().map_or("-", |i| i.adapter.as_str()),
        info.as_ref().map_or(0, |i| i.texts),
        response.status().as_u16(),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(response)
}

/// Whether the request carries one of `keys` as a bearer token (always, with no keys). Every
/// key is compared in full, in time independent of where the bytes differ.
fn authorized(keys: &[String], headers: &axum::http::HeaderMap) -> bool {
    if keys.is_empty() {
        return true;
    }
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing requests in flight");
}

/// The inference thread's inputs, kept by its supervisor so a crashed thread can be replaced.
struct Worker {
    runs: Arc<Vec<Classifier>>,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    up: Arc<AtomicBool>,
    wait: Duration,
    max_batch: usize,
    device: Device,
}

/// How one inference thread ended.
enum Exit {
    /// Every job sender is gone: the server has stopped.
    Drained,
    /// A batch panicked; its requests were answered 500.
    Failed,
}

impl Worker {
    /// Runs inference threads one after another: a thread that fails is replaced, until the
    /// server stops. `/healthz` reads `up`.
    fn supervise(self) {
        let worker = Arc::new(self);
        loop {
            worker.up.store(true, Ordering::SeqCst);
            let w = worker.clone();
            let exit = std::thread::Builder::new()
                .name("inference".into())
                .spawn(move || w.run())
                .map(|t| t.join());
            worker.up.store(false, Ordering::SeqCst);
            match exit {
                Ok(Ok(Exit::Drained)) => return,
                Ok(Ok(Exit::Failed)) | Ok(Err(_)) => {
                    eprintln!("inference thread failed; starting a new one");
                }
                Err(e) => {
                    eprintln!("cannot start an inference thread: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Takes the first waiting job, then whatever else arrives within `wait` (up to
    /// `max_batch` texts), and runs each adapter's texts as one length-sorted batch.
    fn run(&self) -> Exit {
        let mut rx = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            let mut texts = jobs[0].texts.len();
            let deadline = Instant::now() + self.wait;
            while texts < self.max_batch {
                match rx.try_recv() {
                    Ok(job) => {
                        texts += job.texts.len();
                        jobs.push(job);
                    }
                    Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(_) => break,
                }
            }
            let mut by_adapter: BTreeMap<usize, Vec<Job>> = BTreeMap::new();
            for job in jobs {
                by_adapter.entry(job.adapter).or_default().push(job);
            }
            let mut failed = false;
            for (adapter, jobs) in by_adapter {
                failed |= !self.answer(adapter, jobs);
            }
            if failed {
                return Exit::Failed;
            }
        }
        Exit::Drained
    }

    /// Scores one adapter's jobs and answers each; `false` when scoring panicked.
    fn answer(&self, adapter: usize, jobs: Vec<Job>) -> bool {
        let all: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let scored = std::panic::catch_unwind(AssertUnwindSafe(|| {
            fault_injection(&all);
            self.runs[adapter].probabilities(&all, self.max_batch, &self.device)
        }));
        let (result, ok) = match scored {
            Ok(Ok(probs)) => (Ok(probs), true),
            Ok(Err(e)) => (Err(format!("{e:#}")), true),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("panic");
                (Err(format!("inference failed: {what}")), false)
            }
        };
        match result {
            Ok(probs) => {
                let mut probs = probs.into_iter();
                for job in jobs {
                    let mine: Vec<Vec<f32>> = probs.by_ref().take(job.texts.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
        ok
    }
}

/// Test builds only: `TRAINER_TEST_FAULTS=panic` makes a batch holding the text
/// `__panic__` panic, so the tests can prove one failing request does not take the service
/// down. Release builds have no such hook.
fn fault_injection(texts: &[&str]) {
    if cfg!(debug_assertions)
        && std::env::var("TRAINER_TEST_FAULTS").is_ok_and(|v| v == "panic")
        && texts.contains(&"__panic__")
    {
        panic!("injected fault");
    }
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
    let (reply, answer) = oneshot::channel();
    let job_texts = texts.len();
    let job = Job {
        adapter,
        texts,
        reply,
    };
    if shared.jobs.send(job).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let log = LogInfo {
        adapter: shared.names[adapter].clone(),
        texts: job_texts,
    };
    let with_log = |mut r: Response| {
        r.extensions_mut().insert(log.clone());
        r
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
    let results: Vec<Value> = probs
        .iter()
        .map(|p| {
            let i = crate::classifier::decide(shared.thresholds[adapter].as_ref(), p);
            json!({"label": labels[i], "score": p[i], "probabilities": p})
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
}
