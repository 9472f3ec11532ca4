//! The queue between the request handlers and the inference thread, and the thread itself.
//!
//! The queue is bounded in texts, not requests, because texts are what inference costs: a
//! request that would go over `--max-queued-texts` is refused at once (503 with Retry-After),
//! so the wait of whatever is admitted stays bounded too. A job holds its share of the bound
//! until it is dropped, answered or not. Each job carries the sender of its answer; when the
//! client has gone (disconnected, timed out, or its connection was dropped at shutdown), the
//! receiver is gone too, and the thread drops the job instead of scoring it.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::prelude::*;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::metrics::Metrics;
use crate::classifier::Classifier;

/// One request's answer: probabilities per text, or what went wrong.
pub(super) type Answer = Result<Vec<Vec<f32>>, String>;

/// One request's texts on their way to the inference thread.
pub(super) struct Job {
    adapter: usize,
    texts: Vec<String>,
    reply: oneshot::Sender<Answer>,
    /// This job's texts' share of `--max-queued-texts`, given back when the job is dropped.
    _room: OwnedSemaphorePermit,
}

impl Job {
    /// Whether nobody waits for the answer any more.
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    /// Gives the job's room back and returns its number of texts and where its answer goes:
    /// the room first, so that a client retrying the moment it has its answer finds it.
    fn finish(self) -> (usize, oneshot::Sender<Answer>) {
        let Job {
            texts,
            reply,
            _room: room,
            ..
        } = self;
        drop(room);
        (texts.len(), reply)
    }
}

/// Why a job was not queued.
#[derive(Debug, PartialEq)]
pub(super) enum Refused {
    /// The queue holds as many texts as it may.
    Full,
    /// The inference thread is gone: the server is stopping.
    Stopped,
}

/// The handlers' end of the queue.
pub(super) struct Queue {
    jobs: mpsc::UnboundedSender<Job>,
    /// One permit per text that may still be queued.
    room: Arc<Semaphore>,
    /// The permits `room` started with.
    capacity: usize,
}

impl Queue {
    /// A queue holding at most `max_texts` texts, and the inference thread's end of it.
    pub(super) fn new(max_texts: usize) -> (Self, mpsc::UnboundedReceiver<Job>) {
        let (jobs, rx) = mpsc::unbounded_channel();
        let capacity = max_texts.min(Semaphore::MAX_PERMITS);
        let room = Arc::new(Semaphore::new(capacity));
        (
            Self {
                jobs,
                room,
                capacity,
            },
            rx,
        )
    }

    /// Most texts that may be queued at once.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Texts admitted and not yet answered or dropped: waiting, or being scored.
    pub(super) fn queued_texts(&self) -> usize {
        self.capacity.saturating_sub(self.room.available_permits())
    }

    /// Queues `texts` for `adapter` if there is room, without waiting; the answer comes on the
    /// returned receiver.
    pub(super) fn push(
        &self,
        adapter: usize,
        texts: Vec<String>,
    ) -> Result<oneshot::Receiver<Answer>, Refused> {
        let n = u32::try_from(texts.len()).map_err(|_| Refused::Full)?;
        let room = self
            .room
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Refused::Full)?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            adapter,
            texts,
            reply,
            _room: room,
        };
        self.jobs.send(job).map_err(|_| Refused::Stopped)?;
        Ok(answer)
    }
}

/// The inference thread's inputs, kept by its supervisor so a crashed thread can be replaced.
pub(super) struct Worker {
    runs: Vec<Classifier>,
    jobs: Mutex<mpsc::UnboundedReceiver<Job>>,
    up: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
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

/// The live jobs of one micro-batch, and how many abandoned ones were dropped on the way.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    texts: usize,
    dropped: usize,
}

impl Batch {
    fn take(&mut self, job: Job) {
        if job.abandoned() {
            self.dropped += 1;
        } else {
            self.texts += job.texts.len();
            self.jobs.push(job);
        }
    }
}

fn log_dropped(metrics: &Metrics, n: usize) {
    if n > 0 {
        metrics.dropped_jobs(n);
        eprintln!("dropped {n} queued requests whose clients had gone, unscored");
    }
}

impl Worker {
    pub(super) fn new(
        runs: Vec<Classifier>,
        jobs: mpsc::UnboundedReceiver<Job>,
        up: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
        wait: Duration,
        max_batch: usize,
        device: Device,
    ) -> Self {
        Self {
            runs,
            jobs: Mutex::new(jobs),
            up,
            metrics,
            wait,
            max_batch,
            device,
        }
    }

    /// Runs inference threads one after another: a thread that fails is replaced, until the
    /// server stops. `/healthz` reads `up`.
    pub(super) fn supervise(self) {
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
                    worker.metrics.inference_restarted();
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
    /// `max_batch` texts), and runs each adapter's texts as one length-sorted batch. Jobs
    /// whose clients have gone are dropped, not counted.
    fn run(&self) -> Exit {
        let mut rx = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Batch::default();
            batch.take(first);
            let deadline = Instant::now() + self.wait;
            while batch.texts < self.max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.take(job),
                    Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(_) => break,
                }
            }
            log_dropped(&self.metrics, batch.dropped);
            let mut by_adapter: BTreeMap<usize, Vec<Job>> = BTreeMap::new();
            for job in batch.jobs {
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

    /// Scores one adapter's jobs and answers each; `false` when scoring panicked. Jobs
    /// abandoned while an earlier adapter's batch ran are dropped first.
    fn answer(&self, adapter: usize, mut jobs: Vec<Job>) -> bool {
        let before = jobs.len();
        jobs.retain(|j| !j.abandoned());
        log_dropped(&self.metrics, before - jobs.len());
        if jobs.is_empty() {
            return true;
        }
        let all: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let scored = std::panic::catch_unwind(AssertUnwindSafe(|| {
            fault_injection(&all);
            let mut done = 0;
            self.runs[adapter].probabilities_with(&all, self.max_batch, &self.device, &mut |now| {
                self.metrics.batch(now.saturating_sub(done));
                done = now;
            })
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
                self.metrics.classified(adapter, probs.len());
                let mut probs = probs.into_iter();
                for job in jobs {
                    let (n, reply) = job.finish();
                    let mine: Vec<Vec<f32>> = probs.by_ref().take(n).collect();
                    let _ = reply.send(Ok(mine));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.finish().1.send(Err(e.clone()));
                }
            }
        }
        ok
    }
}

/// Test builds only: `TRAINER_TEST_FAULTS`, a comma-separated list, makes scoring misbehave
/// so the tests can prove the service survives it: `panic` makes a batch holding the text
/// `__panic__` panic; `slow=MS` makes a batch sleep MS milliseconds per text `__slow__` in it.
/// Release builds have no such hook.
fn fault_injection(texts: &[&str]) {
    if !cfg!(debug_assertions) {
        return;
    }
    let Ok(faults) = std::env::var("TRAINER_TEST_FAULTS") else {
        return;
    };
    for fault in faults.split(',') {
        if fault == "panic" && texts.contains(&"__panic__") {
            panic!("injected fault");
        }
        if let Some(ms) = fault
            .strip_prefix("slow=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            let slow = texts.iter().filter(|t| **t == "__slow__").count() as u64;
            std::thread::sleep(Duration::from_millis(ms.saturating_mul(slow)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    /// The queue holds at most its bound in texts, and a dropped job gives its room back.
    #[test]
    fn serve_queue_is_bounded_in_texts() {
        let (queue, mut rx) = Queue::new(4);
        let _a = queue.push(0, texts(3)).unwrap();
        assert_eq!(queue.push(0, texts(2)).unwrap_err(), Refused::Full);
        let _b = queue.push(0, texts(1)).unwrap();
        assert_eq!(queue.push(0, texts(1)).unwrap_err(), Refused::Full);
        assert_eq!((queue.queued_texts(), queue.capacity()), (4, 4));
        drop(rx.try_recv().unwrap());
        assert_eq!(queue.queued_texts(), 1);
        let _c = queue.push(0, texts(3)).unwrap();
        assert_eq!(queue.push(0, texts(1)).unwrap_err(), Refused::Full);
    }

    /// A job whose receiver is gone is dropped from the batch, not scored.
    #[test]
    fn serve_abandoned_jobs_are_not_batched() {
        let (queue, mut rx) = Queue::new(10);
        let kept = queue.push(0, texts(2)).unwrap();
        drop(queue.push(0, texts(3)).unwrap());
        let mut batch = Batch::default();
        batch.take(rx.try_recv().unwrap());
        batch.take(rx.try_recv().unwrap());
        assert_eq!((batch.jobs.len(), batch.texts, batch.dropped), (1, 2, 1));
        drop(kept);
        assert!(batch.jobs[0].abandoned());
    }

    #[test]
    fn serve_queue_refuses_when_stopped() {
        let (queue, rx) = Queue::new(10);
        drop(rx);
        // The permit is taken and given back with the unsent job.
        assert_eq!(queue.push(0, texts(10)).unwrap_err(), Refused::Stopped);
        assert_eq!(queue.push(0, texts(10)).unwrap_err(), Refused::Stopped);
    }
}
