//! Hub ids (`org/name[@revision]`) through `hf-hub`, which honours `HF_ENDPOINT`, `HF_HOME`,
//! its on-disk cache and `HF_HUB_OFFLINE=1`.
//!
//! `hf-hub`'s blocking client has no read timeout: an endpoint that accepts the connection and
//! never answers would keep a command silent forever. So the fetch runs on its own thread and
//! is watched: every answer and every chunk of a download counts as progress, and
//! `HF_HUB_DOWNLOAD_TIMEOUT` seconds (as in Python's `huggingface_hub`; default 10) without
//! any is an error naming the endpoint. A slow but moving download is never cut off.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hf_hub::api::Progress;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{ModelError, Result};
use crate::weights::WEIGHT_FILES;

/// Files fetched from the hub: required first, then optional tokenizer files and the
/// sentence-transformers pipeline (`modules.json`; its Pooling module's config is in
/// `1_Pooling` in every model sentence-transformers saves).
const REQUIRED: &[&str] = &["config.json"];
const OPTIONAL: &[&str] = &[
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
];

/// Default seconds the hub may stay silent.
const DEFAULT_TIMEOUT_SECS: f64 = 10.0;

/// Resolves a hub id to its snapshot directory in the cache, downloading what is missing.
pub fn resolve(repo_id: &str, revision: &str) -> Result<PathBuf> {
    let endpoint = endpoint();
    let timeout = timeout()?;
    let clock = Arc::new(Clock::new());
    let (tx, rx) = std::sync::mpsc::channel();
    let (id, rev, thread_clock) = (repo_id.to_string(), revision.to_string(), clock.clone());
    std::thread::Builder::new()
        .name("hub-fetch".into())
        .spawn(move || {
            let _ = tx.send(fetch_all(&id, &rev, &thread_clock));
        })
        .map_err(|e| ModelError::source(repo_id, format!("cannot start the hub client: {e}")))?;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(result) => return result,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // The client panicked (it unwraps parts of a server's answer).
                return Err(ModelError::source(
                    repo_id,
                    format!("the hub client failed on a malformed answer from {endpoint}"),
                ));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if clock.silent_for() > timeout => {
                // The fetching thread stays blocked on its socket; the process is about to
                // report the error and exit, which closes it.
                return Err(ModelError::source(
                    repo_id,
                    format!(
                        "the hub at {endpoint} sent nothing for {} s (HF_HUB_DOWNLOAD_TIMEOUT)",
                        timeout.as_secs_f64()
                    ),
                ));
            }
            Err(_) => {}
        }
    }
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
}

/// `HF_HUB_DOWNLOAD_TIMEOUT` in seconds, a positive number up to a day.
fn timeout() -> Result<Duration> {
    let Ok(raw) = std::env::var("HF_HUB_DOWNLOAD_TIMEOUT") else {
        return Ok(Duration::from_secs_f64(DEFAULT_TIMEOUT_SECS));
    };
    match raw.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 86_400.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(ModelError::Other(format!(
            "HF_HUB_DOWNLOAD_TIMEOUT={raw}: expected seconds between 0 and 86400"
        ))),
    }
}

/// When the hub last showed progress, shared between the fetching thread and its watcher.
struct Clock {
    start: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A download's progress: touches the clock, and shows a bar on a terminal.
struct Watched<'a> {
    clock: &'a Clock,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress for Watched<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.clock.touch();
        if let Some(bar) = &mut self.bar {
            bar.init(size, filename);
        }
    }

    fn update(&mut self, size: usize) {
        self.clock.touch();
        if let Some(bar) = &mut self.bar {
            bar.update(size);
        }
    }

    fn finish(&mut self) {
        self.clock.touch();
        if let Some(bar) = &mut self.bar {
            bar.finish();
        }
    }
}

fn fetch_all(repo_id: &str, revision: &str, clock: &Clock) -> Result<PathBuf> {
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // One client for every file of the repo (building one sets up an HTTP agent).
    let api = if offline {
        None
    } else {
        Some(
            hf_hub::api::sync::ApiBuilder::from_env()
                .build()
                .map_err(|e| ModelError::source(repo_id, format!("hub client: {e}")))?
                .repo(repo.clone()),
        )
    };
    let cache = Cache::from_env().repo(repo);
    let fetch = |file: &str| -> std::result::Result<PathBuf, String> {
        if let Some(path) = cache.get(file) {
            return Ok(path);
        }
        let Some(api) = &api else {
            return Err(format!(
                "{file} is not in the HF cache and HF_HUB_OFFLINE is set"
            ));
        };
        // Each file's clock starts when it is asked for.
        clock.touch();
        let progress = Watched {
            clock,
            bar: terminal.then(|| indicatif::ProgressBar::new(0)),
        };
        let path = api
            .download_with_progress(file, progress)
            .map_err(|e| e.to_string());
        clock.touch();
        path
    };
    let mut config = None;
    for file in REQUIRED {
        let path = fetch(file).map_err(|e| {
            ModelError::source(
                repo_id,
                format!("cannot fetch {file} from the hub at {}: {e}", endpoint()),
            )
        })?;
        config = Some(path);
    }
    if !WEIGHT_FILES.iter().any(|file| fetch(file).is_ok()) {
        return Err(ModelError::source(
            repo_id,
            "the hub repo has neither model.safetensors nor pytorch_model.bin",
        ));
    }
    for file in OPTIONAL {
        let _ = fetch(file);
    }
    config
        .as_deref()
        .and_then(std::path::Path::parent)
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| ModelError::source(repo_id, "the hub client returned no config.json"))
}
