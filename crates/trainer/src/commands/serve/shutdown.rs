//! Stopping: the signal that starts it, and the bound on how long the process then lives.
//!
//! The grace period is a hard limit. The HTTP side lets connections finish for
//! `--shutdown-grace-secs` and then drops them; what was queued for them is then dropped
//! unscored. A batch being scored cannot be interrupted, so the process waits for the
//! inference thread at most [`EXIT_MARGIN`] more and then exits without it.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

/// How long past the grace period the process waits for the inference thread to finish its
/// batch before exiting without it.
pub(super) const EXIT_MARGIN: Duration = Duration::from_secs(1);

/// Resolves on SIGTERM or Ctrl-C.
pub(super) async fn signal() {
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

/// Waits up to `margin` for the inference supervisor to end (it does once every job sender
/// is gone and the batch in hand is done); past that, returns so the process can exit
/// without it.
pub(super) fn wait_for_inference(supervisor: JoinHandle<()>, margin: Duration) -> Result<()> {
    let deadline = Instant::now() + margin;
    while !supervisor.is_finished() {
        if Instant::now() >= deadline {
            eprintln!("shutdown: a batch was still being scored; exiting without it");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    supervisor
        .join()
        .map_err(|_| anyhow::anyhow!("inference supervisor panicked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_shutdown_does_not_wait_past_the_margin() {
        let busy = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(5)));
        let start = Instant::now();
        wait_for_inference(busy, Duration::from_millis(100)).unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        let done = std::thread::spawn(|| {});
        wait_for_inference(done, Duration::from_secs(5)).unwrap();
    }
}
