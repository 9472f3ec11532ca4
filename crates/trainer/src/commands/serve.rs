//! `trainer serve`: an HTTP JSON classification service.
//!
//! One frozen base model is loaded once and shared by every adapter (the point of PEFT: one
//! base, many tasks); each adapter adds only its own small tensors. Requests from all clients
//! go to one inference thread that micro-batches them: it takes what has arrived within
//! `--batch-wait-ms` (up to `--max-batch` texts), runs each adapter's texts together, and
//! answers each request. Limits (body size, texts per request, text length) answer 4xx with a
//! JSON error; SIGTERM or Ctrl-C stops accepting and finishes the requests in flight.
//!
//! ```text
//! POST /v1/classify {"texts": ["..."], "adapter": "name"}  -> {"adapter", "results": [{"label", "score", "probabilities"}]}
//! GET  /v1/adapters                                       -> {"default", "adapters": [...]}
//! GET  /healthz                                           -> {"status": "ok"}
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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

use crate::commands::classifier::probabilities;
use crate::run::LoadedRun;

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
}

/// One request's texts on their way to the inference thread.
struct Job {
    adapter: usize,
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

struct Shared {
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
    let config = LoadedRun::read_config(&args.run)?;
    let pretrained = Pretrained::load(&config.model.source, config.model.max_length, &device)?;
    let mut names = vec![config.name.clone()];
    let mut runs = vec![LoadedRun::load_with(&args.run, &pretrained, &device)?];
    for spec in &args.adapters {
        let Some((name, dir)) = spec.split_once('=') else {
            bail!("--adapter {spec}: expected NAME=DIR");
        };
        if names.iter().any(|n| n == name) {
            bail!("--adapter {spec}: the name `{name}` is taken");
        }
        let dir = PathBuf::from(dir);
        let run = if dir.join("config.toml").is_file() {
            let other = LoadedRun::read_config(&dir)?;
            if other.model.source != config.model.source {
                bail!(
                    "--adapter {spec}: trained on {}, but the served base model is {}",
                    other.model.source,
                    config.model.source
                );
            }
            LoadedRun::load_with(&dir, &pretrained, &device)?
        } else {
            let labels = dir.join("labels.txt");
            let labels = labels.is_file().then_some(labels);
            LoadedRun::adapter_with(
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
    let (tx, rx) = mpsc::channel::<Job>(1024);
    let shared = Arc::new(Shared {
        names: names.clone(),
        runs_info,
        labels: runs.iter().map(|r| r.labels.names().to_vec()).collect(),
        thresholds: runs.iter().map(|r| r.threshold.clone()).collect(),
        jobs: tx,
        max_texts: args.max_texts,
        max_text_chars: args.max_text_chars,
    });
    let wait = Duration::from_millis(args.batch_wait_ms);
    let max_batch = args.max_batch.max(1);
    let worker = std::thread::spawn(move || inference_loop(runs, rx, wait, max_batch, device));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        let addr: SocketAddr = listener.local_addr()?;
        eprintln!("serving adapters {:?} ", names);
        // The address on stdout (a port 0 request gets the real port), for scripts and tests.
        println!("listening on http://{addr}");
        let app = Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(json!({"status": "ok"})) }),
            )
            .route("/v1/adapters", get(adapters))
            .route("/v1/classify", post(classify))
            .layer(DefaultBodyLimit::max(args.max_body_bytes))
            .with_state(shared);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("server")
    })?;
    // The router (and with it every job sender) is gone: the inference thread drains and ends.
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("inference thread panicked"))?;
    eprintln!("stopped");
    Ok(())
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

/// Takes the first waiting job, then whatever else arrives within `wait` (up to `max_batch`
/// texts), and runs each adapter's texts as one length-sorted batch.
fn inference_loop(
    runs: Vec<LoadedRun>,
    mut rx: mpsc::Receiver<Job>,
    wait: Duration,
    max_batch: usize,
    device: Device,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut texts = jobs[0].texts.len();
        let deadline = Instant::now() + wait;
        while texts < max_batch {
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
        for (adapter, jobs) in by_adapter {
            let all: Vec<&str> = jobs
                .iter()
                .flat_map(|j| j.texts.iter().map(String::as_str))
                .collect();
            match probabilities(&runs[adapter], &all, max_batch, &device) {
                Ok(probs) => {
                    let mut probs = probs.into_iter();
                    for job in jobs {
                        let mine: Vec<Vec<f32>> = probs.by_ref().take(job.texts.len()).collect();
                        let _ = job.reply.send(Ok(mine));
                    }
                }
                Err(e) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(format!("{e:#}")));
                    }
                }
            }
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

async fn adapters(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({"default": shared.names[0], "adapters": shared.runs_info})).into_response()
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
    let request: ClassifyRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON: {e} (expected {{\"texts\": [...], \"adapter\": \"name\"}})"),
            );
        }
    };
    let adapter = match &request.adapter {
        None => 0,
        Some(name) => match shared.names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "unknown adapter `{name}` (serving: {})",
                        shared.names.join(", ")
                    ),
                );
            }
        },
    };
    if request.texts.is_empty() {
        return error(StatusCode::BAD_REQUEST, "`texts` is empty");
    }
    if request.texts.len() > shared.max_texts {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} texts in one request; the limit is {}",
                request.texts.len(),
                shared.max_texts
            ),
        );
    }
    for (i, t) in request.texts.iter().enumerate() {
        if t.trim().is_empty() {
            return error(StatusCode::BAD_REQUEST, format!("texts[{i}] is empty"));
        }
        if t.chars().count() > shared.max_text_chars {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "texts[{i}] has more than {} characters",
                    shared.max_text_chars
                ),
            );
        }
    }
    let (reply, answer) = oneshot::channel();
    let job = Job {
        adapter,
        texts: request.texts,
        reply,
    };
    if shared.jobs.send(job).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let probs = match answer.await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    };
    let labels = &shared.labels[adapter];
    let results: Vec<Value> = probs
        .iter()
        .map(|p| {
            let i = match &shared.thresholds[adapter] {
                Some((positive, t)) => t.decide(*positive, p),
                None => crate::commands::classifier::argmax(p).0,
            };
            json!({"label": labels[i], "score": p[i], "probabilities": p})
        })
        .collect();
    axum::Json(json!({"adapter": shared.names[adapter], "results": results})).into_response()
}
