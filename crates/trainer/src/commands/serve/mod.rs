//! `trainer serve`: an HTTP JSON classification service.
//!
//! One frozen base model is loaded once and shared by every adapter (the point of PEFT: one
//! base, many tasks); each adapter adds only its own small tensors. Requests from all clients
//! go to one inference thread that micro-batches them: it takes what has arrived within
//! `--batch-wait-ms` (up to `--max-batch` texts), runs each adapter's texts together, and
//! answers each request.
//!
//! A request can fail, the service cannot: each adapter is checked at load for what could
//! overflow (virtual tokens + max length within the position table), a panic while scoring
//! answers that request 500 and the inference thread is started afresh, and `/healthz` says
//! whether it is running. What one client can hold is bounded, so that a slow, stalled or
//! vanished client costs the others nothing (see [`LIMITS_HELP`] for each limit and the status
//! it answers): the queue of texts waiting for inference ([`queue`]), the time to send a header
//! and a body, the time to answer, and the number of connections, where a new client sheds the
//! oldest idle or stalled one ([`http`]). SIGTERM or Ctrl-C stops accepting, lets the requests
//! in flight finish for `--shutdown-grace-secs`, and then exits whatever is still running
//! ([`shutdown`]). With `--api-key` (or `TRAINER_API_KEY`, or `--api-key-file` for several)
//! every route but `/healthz` needs `Authorization: Bearer KEY`. One log line per request on
//! stderr: method, path, adapter, number of texts, status, latency; never the texts. `/metrics`
//! counts the same, and what each limit refused, in Prometheus' text format ([`metrics`]).
//!
//! ```text
//! POST /v1/classify {"texts": ["..."], "adapter": "name"}  -> {"adapter", "results": [{"label", "score", "probabilities"}]}
//! GET  /v1/adapters                                       -> {"default", "adapters": [...]}
//! GET  /healthz                                           -> {"status": "ok"}
//! GET  /metrics                                           -> Prometheus text format 0.0.4
//! ```

mod http;
mod metrics;
mod queue;
mod shutdown;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bert_model::Pretrained;
use clap::Args;
use clap::builder::RangedU64ValueParser;
use serde_json::json;

use crate::classifier::Classifier;
use crate::device::DeviceChoice;
use crate::run::RunDir;

/// The longest any of serve's durations may be: longer is a typo, and unbounded ones overflow
/// the clock.
const DAY_SECS: u64 = 24 * 60 * 60;
/// Bounds on the size flags: far beyond any sensible setting, low enough that counting and
/// allocating up to them cannot overflow or exhaust memory by themselves.
const MAX_BODY_BYTES: u64 = 1 << 30;
const MAX_TEXTS: u64 = 100_000;
const MAX_BATCH: u64 = 65_536;
const MAX_QUEUED_TEXTS: u64 = 10_000_000;
const MAX_CONNECTIONS: u64 = 100_000;

/// `serve --help`'s summary of the limits; the README's serve section says the same.
const LIMITS_HELP: &str = "\
Limits, and what a client meets at each:
  header not complete within --header-timeout-secs        connection closed
  Content-Length over --max-body-bytes                    413 at once, body not read
  body not complete within --body-timeout-secs            408
  over --max-texts texts or --max-text-chars characters   413
  over --max-queued-texts texts waiting for inference     503 with Retry-After: 1, at once
  not answered within --request-timeout-secs              408
  --max-connections open                                  the oldest connection not waiting
                                                          on inference is closed for the new
                                                          one; if all are, 503 + Retry-After
A client that disconnects has its queued texts dropped, not scored. On SIGTERM/Ctrl-C the
requests in flight get --shutdown-grace-secs; then the process exits within about a second,
dropping whatever is still queued or running.";

#[derive(Args, Debug)]
#[command(after_help = LIMITS_HELP)]
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
    /// Largest request body accepted, in bytes (1 to 2^30). A larger declared Content-Length
    /// gets 413 before any of the body is read.
    #[arg(long, default_value_t = 1 << 20,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_BODY_BYTES))]
    pub max_body_bytes: usize,
    /// Most texts in one request (1 to 100000); more get 413.
    #[arg(long, default_value_t = 256,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_TEXTS))]
    pub max_texts: usize,
    /// Longest text accepted, in characters (1 to 2^30); longer gets 413. Texts are truncated
    /// to the model's max length in tokens anyway; this bounds the work of tokenising.
    #[arg(long, default_value_t = 4096,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_BODY_BYTES))]
    pub max_text_chars: usize,
    /// Most texts run in one forward pass (1 to 65536).
    #[arg(long, default_value_t = 64,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_BATCH))]
    pub max_batch: usize,
    /// Most texts waiting for inference, all clients together (up to 10^7, at least
    /// --max-texts); a request that would go over gets 503 with Retry-After at once, rather
    /// than a place in a queue it would time out in.
    #[arg(long, default_value_t = 4096,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_QUEUED_TEXTS))]
    pub max_queued_texts: usize,
    /// How long the inference thread waits for more requests to batch with the first
    /// (0 to 60000 ms).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub batch_wait_ms: u64,
    /// Close a connection that has not sent a complete request header within this time
    /// (also how long an idle keep-alive connection stays open); 1 s to 1 day.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=DAY_SECS))]
    pub header_timeout_secs: u64,
    /// Answer 408 to a request whose body has not fully arrived within this time after its
    /// header (1 s to 1 day).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=DAY_SECS))]
    pub body_timeout_secs: u64,
    /// Answer 408 to a request not answered within this time after its header, body and
    /// queue included (1 s to 1 day).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=DAY_SECS))]
    pub request_timeout_secs: u64,
    /// Most connections open at once (1 to 100000). At the cap a new connection closes the
    /// oldest one that is idle, sending its header or sending its body; when every one is
    /// waiting on inference, the new one gets 503 with Retry-After and is closed.
    #[arg(long, default_value_t = 128,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_CONNECTIONS))]
    pub max_connections: usize,
    /// On SIGTERM/Ctrl-C, how long requests in flight may take to finish (0 s to 1 day); a
    /// hard limit: then the process exits, dropping what is still queued or being scored.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=DAY_SECS))]
    pub shutdown_grace_secs: u64,
    /// Require `Authorization: Bearer KEY` on every route but /healthz (also from the
    /// environment variable TRAINER_API_KEY).
    #[arg(long, env = "TRAINER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A file of API keys, one per line (blank lines and `#` comments ignored).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
}

pub fn run(args: ServeArgs, choice: &DeviceChoice) -> Result<()> {
    // Before anything slow, so that a bad flag is told at once.
    check(&args)?;
    let device = choice.device();
    let config = RunDir::new(&args.run).read_config()?;
    let precision = choice.set_inference_precision(config.train.precision)?;
    let pretrained = Pretrained::load(&config.model.source, config.model.max_length, device)?;
    let mut names = vec![config.name.clone()];
    let mut runs = vec![Classifier::load_with(&args.run, &pretrained, device)?];
    for spec in &args.adapters {
        let Some((name, dir)) = spec.split_once('=') else {
            bail!("--adapter {spec}: expected NAME=DIR");
        };
        if names.iter().any(|n| n == name) {
            bail!("--adapter {spec}: the name `{name}` is taken");
        }
        let dir = PathBuf::from(dir);
        let is_adapter = dir.join(bert_model::peft::adapter::CONFIG_FILE).is_file();
        let run = if dir.join("config.toml").is_file() || !is_adapter {
            let other = RunDir::new(&dir)
                .read_config()
                .with_context(|| format!("--adapter {spec}"))?;
            if other.model.source != config.model.source {
                bail!(
                    "--adapter {spec}: trained on {}, but the served base model is {}",
                    other.model.source,
                    config.model.source
                );
            }
            Classifier::load_with(&dir, &pretrained, device)?
        } else {
            let labels = dir.join("labels.txt");
            let labels = labels.is_file().then_some(labels);
            Classifier::adapter_with(
                &pretrained,
                &config.model.source,
                &dir,
                labels.as_deref(),
                device,
            )?
        };
        names.push(name.to_string());
        runs.push(run);
    }
    drop(pretrained);
    let units = choice.matrix_units(precision);
    let runs: Vec<Classifier> = runs
        .into_iter()
        .map(|run| run.packed_on(units.as_ref()))
        .collect();

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
    let (queue, jobs) = queue::Queue::new(args.max_queued_texts);
    // Up from the start: jobs wait in the queue until the thread takes them.
    let worker_up = Arc::new(AtomicBool::new(true));
    let metrics = Arc::new(metrics::Metrics::new(&names, args.max_batch));
    let shared = Arc::new(http::Shared {
        worker_up: worker_up.clone(),
        metrics: metrics.clone(),
        api_keys,
        names: names.clone(),
        runs_info,
        labels: runs.iter().map(|r| r.labels.names().to_vec()).collect(),
        thresholds: runs.iter().map(|r| r.threshold.clone()).collect(),
        queue,
        max_texts: args.max_texts,
        max_text_chars: args.max_text_chars,
    });
    let worker = queue::Worker::new(
        runs,
        jobs,
        worker_up,
        metrics,
        Duration::from_millis(args.batch_wait_ms),
        args.max_batch,
        device.clone(),
    );
    let supervisor = std::thread::spawn(move || worker.supervise());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let limits = http::Limits {
        header_timeout: Duration::from_secs(args.header_timeout_secs),
        body_timeout: Duration::from_secs(args.body_timeout_secs),
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        max_body_bytes: args.max_body_bytes,
        max_connections: args.max_connections,
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
        http::serve(listener, shared, limits).await
    });
    // Connections still open past the grace period are dropped with the runtime, and with
    // them the answers their queued jobs waited for: the inference thread skips those jobs,
    // and ends once the last job sender is gone.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result?;
    shutdown::wait_for_inference(supervisor, shutdown::EXIT_MARGIN)?;
    eprintln!("stopped");
    Ok(())
}

/// Refuses flag combinations that the per-flag ranges cannot: a queue too small for one full
/// request would answer every such request 503 forever.
fn check(args: &ServeArgs) -> Result<()> {
    if args.max_queued_texts < args.max_texts {
        bail!(
            "--max-queued-texts {} is under --max-texts {}: a full request could never be queued",
            args.max_queued_texts,
            args.max_texts
        );
    }
    Ok(())
}

/// API keys from --api-key / TRAINER_API_KEY and --api-key-file; none means no access control.
fn read_api_keys(args: &ServeArgs) -> Result<Vec<String>> {
    let mut keys: Vec<String> = args.api_key.iter().cloned().collect();
    if let Some(path) = &args.api_key_file {
        let text = bert_model::fsutil::read_small_text(path).context("--api-key-file")?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(flags: &[&str]) -> std::result::Result<ServeArgs, clap::Error> {
        let args = ["serve", "--run", "r"].iter().chain(flags);
        Cli::try_parse_from(args).map(|c| c.serve)
    }

    #[test]
    fn serve_defaults_pass_the_checks() {
        let args = parse(&[]).unwrap();
        check(&args).unwrap();
        assert_eq!(args.max_queued_texts, 4096);
        assert_eq!(args.body_timeout_secs, 10);
    }

    /// Zero, overflowing and out-of-range values are refused with the flag's name, before
    /// anything runs.
    #[test]
    fn serve_refuses_nonsense_numbers() {
        let huge = u64::MAX.to_string();
        for (flag, value) in [
            ("--header-timeout-secs", huge.as_str()),
            ("--header-timeout-secs", "0"),
            ("--body-timeout-secs", "0"),
            ("--request-timeout-secs", "86401"),
            ("--shutdown-grace-secs", huge.as_str()),
            ("--batch-wait-ms", huge.as_str()),
            ("--max-batch", "0"),
            ("--max-connections", "0"),
            ("--max-texts", huge.as_str()),
            ("--max-texts", "0"),
            ("--max-text-chars", "0"),
            ("--max-body-bytes", "0"),
            ("--max-body-bytes", huge.as_str()),
            ("--max-queued-texts", "0"),
            ("--max-batch", "-1"),
        ] {
            let Err(e) = parse(&[&format!("{flag}={value}")]) else {
                panic!("{flag} {value} accepted");
            };
            assert!(e.to_string().contains(flag), "{flag} {value}: {e}");
        }
        for ok in [["--shutdown-grace-secs", "0"], ["--batch-wait-ms", "0"]] {
            check(&parse(&ok).unwrap()).unwrap();
        }
    }

    #[test]
    fn serve_queue_must_hold_a_full_request() {
        let args = parse(&["--max-texts", "300", "--max-queued-texts", "299"]).unwrap();
        let e = check(&args).unwrap_err().to_string();
        assert!(
            e.contains("--max-queued-texts") && e.contains("--max-texts"),
            "{e}"
        );
        check(&parse(&["--max-texts", "300", "--max-queued-texts", "300"]).unwrap()).unwrap();
    }
}
