//! What the user sees while training, and the per-epoch record of it.
//!
//! On a terminal, burn-train's TUI dashboard; otherwise (CI, output redirected) [`PlainRenderer`]
//! prints a progress line every tenth of a split and a summary per epoch to stderr. Either way
//! [`Recorder`] sits in front of it and keeps each epoch's final metric values, which become
//! `metrics.json` in the run directory.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::tui::TuiMetricsRendererWrapper;
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use burn::train::{Interrupter, LearnerSummary};
use serde::{Deserialize, Serialize};

use crate::metrics::MetricKey;

/// Final values of one split of one epoch.
pub type SplitValues = BTreeMap<MetricKey, f64>;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train: SplitValues,
    pub valid: SplitValues,
    /// Wall seconds of the epoch (training + validation).
    pub seconds: f64,
}

/// Shared between the renderer thread and the command that launched training.
pub type History = Arc<Mutex<Vec<EpochRecord>>>;

/// Called with the whole history each time an epoch's validation ends.
pub type OnEpoch = Box<dyn FnMut(&[EpochRecord]) + Send + Sync>;

/// Picks the dashboard when stdout is a terminal, the plain printer otherwise.
pub fn renderer(
    interrupter: Interrupter,
    resumed_from: Option<usize>,
    history: History,
    on_epoch: OnEpoch,
    keys: Vec<MetricKey>,
) -> Box<dyn MetricsRenderer> {
    let inner: Box<dyn MetricsRenderer> = if std::io::stdout().is_terminal() {
        Box::new(TuiMetricsRendererWrapper::new(interrupter, resumed_from))
    } else {
        Box::new(PlainRenderer {
            keys: Keys::new(keys.clone()),
            ..PlainRenderer::default()
        })
    };
    Box::new(Recorder {
        inner,
        keys: Keys::new(keys),
        split: String::new(),
        epoch: resumed_from.unwrap_or(0),
        started: Instant::now(),
        current: EpochRecord::default(),
        history,
        on_epoch,
    })
}

/// The run's metrics by Burn's id: each registered metric definition is matched to the
/// [`MetricKey`] it was named after.
#[derive(Default)]
struct Keys {
    all: Vec<MetricKey>,
    by_id: HashMap<MetricId, MetricKey>,
}

impl Keys {
    fn new(all: Vec<MetricKey>) -> Self {
        Self {
            all,
            by_id: HashMap::new(),
        }
    }

    fn register(&mut self, definition: &MetricDefinition) {
        if let Some(key) = self.all.iter().find(|k| k.display() == *definition.name) {
            self.by_id.insert(definition.metric_id.clone(), key.clone());
        }
    }

    /// A numeric state's metric and current (epoch running) value.
    fn value(&self, state: &MetricState) -> Option<(MetricKey, f64)> {
        match state {
            MetricState::Numeric(entry, Some(value)) => self
                .by_id
                .get(&entry.metric_id)
                .map(|k| (k.clone(), value.current())),
            _ => None,
        }
    }
}

/// Records each epoch's final metric values, forwarding everything to the inner renderer.
struct Recorder {
    inner: Box<dyn MetricsRenderer>,
    keys: Keys,
    split: String,
    epoch: usize,
    started: Instant,
    current: EpochRecord,
    history: History,
    on_epoch: OnEpoch,
}

impl MetricsRendererTraining for Recorder {
    fn update_train(&mut self, state: MetricState) {
        if let Some((key, v)) = self.keys.value(&state) {
            self.current.train.insert(key, v);
        }
        self.inner.update_train(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        if let Some((key, v)) = self.keys.value(&state) {
            self.current.valid.insert(key, v);
        }
        self.inner.update_valid(state);
    }

    fn on_train_end(
        &mut self,
        summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        self.inner.on_train_end(summary)
    }
}

impl TrainingProgressLogger for Recorder {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        total_items: Option<usize>,
        label: Option<&str>,
    ) {
        self.inner
            .start(total_epochs, starting_epoch, total_items, label);
    }

    fn update_epoch(&mut self, epoch: usize) {
        self.inner.update_epoch(epoch);
    }

    fn start_split(&mut self, split: &str, total_items: usize) {
        self.split = split.to_lowercase();
        if self.split == "train" {
            self.epoch += 1;
            self.started = Instant::now();
            self.current = EpochRecord {
                epoch: self.epoch,
                ..EpochRecord::default()
            };
        }
        self.inner.start_split(split, total_items);
    }

    fn update_split(&mut self, items_processed: usize) {
        self.inner.update_split(items_processed);
    }

    fn end_split(&mut self) {
        self.inner.end_split();
        if self.split == "valid" {
            self.current.seconds = self.started.elapsed().as_secs_f64();
            let mut history = self.history.lock().expect("history lock");
            history.retain(|r| r.epoch != self.current.epoch);
            history.push(self.current.clone());
            (self.on_epoch)(&history);
        }
    }

    fn end(&mut self) {
        self.inner.end();
    }

    fn log_event_training(&mut self, event: String) {
        self.inner.log_event_training(event);
    }
}

impl EvaluationProgressLogger for Recorder {
    fn start_global_progress(&mut self, total_tests: usize) {
        self.inner.start_global_progress(total_tests);
    }
    fn start_test(&mut self, name: &str, total_items: usize) {
        self.inner.start_test(name, total_items);
    }
    fn update_test_progress(&mut self, items_processed: usize) {
        self.inner.update_test_progress(items_processed);
    }
    fn end_test(&mut self) {
        self.inner.end_test();
    }
    fn end_global_progress(&mut self) {
        self.inner.end_global_progress();
    }
    fn log_event_evaluation(&mut self, event: String) {
        self.inner.log_event_evaluation(event);
    }
}

impl MetricsRendererEvaluation for Recorder {
    fn update_test(&mut self, name: EvaluationName, state: MetricState) {
        self.inner.update_test(name, state);
    }
}

impl MetricsRenderer for Recorder {
    fn manual_close(&mut self) {
        self.inner.manual_close();
    }

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.keys.register(&definition);
        self.inner.register_metric(definition);
    }
}

/// Plain progress lines on stderr, for when there is no terminal to draw a dashboard on.
#[derive(Default)]
pub struct PlainRenderer {
    keys: Keys,
    latest: BTreeMap<MetricKey, f64>,
    split: String,
    epoch: usize,
    total_epochs: usize,
    total_items: usize,
    next_report: usize,
}

impl PlainRenderer {
    fn record(&mut self, state: MetricState) {
        if let Some((key, v)) = self.keys.value(&state) {
            self.latest.insert(key, v);
        }
    }

    fn line(&self) -> String {
        self.latest
            .iter()
            .map(|(k, v)| format!("{}: {}", k.display(), k.format(*v)))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

impl MetricsRendererTraining for PlainRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }
    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }
}

impl TrainingProgressLogger for PlainRenderer {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _total_items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.total_epochs = total_epochs;
        self.epoch = starting_epoch.saturating_sub(1);
    }

    fn update_epoch(&mut self, _epoch: usize) {}

    fn start_split(&mut self, split: &str, total_items: usize) {
        self.split = split.to_lowercase();
        if self.split == "train" {
            self.epoch += 1;
        }
        self.total_items = total_items;
        self.next_report = total_items.div_ceil(10);
        self.latest.clear();
        eprintln!(
            "[epoch {}/{}] {}: {} items",
            self.epoch, self.total_epochs, self.split, total_items
        );
    }

    fn update_split(&mut self, items_processed: usize) {
        if items_processed >= self.next_report && items_processed < self.total_items {
            self.next_report = items_processed + self.total_items.div_ceil(10);
            eprintln!(
                "[epoch {}/{}] {} {}/{} | {}",
                self.epoch,
                self.total_epochs,
                self.split,
                items_processed,
                self.total_items,
                self.line()
            );
        }
    }

    fn end_split(&mut self) {
        eprintln!(
            "[epoch {}/{}] {} done | {}",
            self.epoch,
            self.total_epochs,
            self.split,
            self.line()
        );
    }

    fn end(&mut self) {}

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for PlainRenderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for PlainRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl MetricsRenderer for PlainRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.keys.register(&definition);
    }
}
