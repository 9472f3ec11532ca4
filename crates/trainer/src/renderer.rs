//! What the user sees while training, and the per-epoch record of it.
//!
//! On a terminal, burn-train's TUI dashboard; otherwise (CI, output redirected) [`PlainRenderer`]
//! prints a progress line every tenth of a split and a summary per epoch to stderr. Every
//! figure on a progress line is the epoch's so far (the line says so): burn-train hands a
//! renderer the last batch's accuracy and loss but the epoch's macro F1 and class accuracies
//! so far ([`crate::metrics`]), which side by side read as contradictory, so the plain lines
//! average the per-batch ones over the epoch themselves; the learning rate is the current one.
//! The dashboard shows `epoch X - batch Y` for every metric and plots batch figures. Either way
//! [`Recorder`] sits in front of it and keeps each epoch's final metric values, which become
//! `metrics.json` in the run directory.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
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

/// A metric's figure for the epoch so far, from the entries it logged: a per-batch figure
/// (`value,count`, burn-train's accuracy and loss) is averaged over the items so far, weighted
/// as burn-train weighs its own epoch figure; a plain value (ours: macro F1, class accuracies,
/// throughput) already is the epoch's so far; the epoch's final value replaces either.
#[derive(Debug, Default, Clone, Copy)]
struct SoFar {
    sum: f64,
    items: usize,
    value: f64,
}

impl SoFar {
    fn update(&mut self, key: &MetricKey, entry: NumericEntry) {
        match entry {
            // The schedule's current rate, not an average (its epoch-end entry is the mean).
            NumericEntry::Aggregated {
                aggregated_value, ..
            } if *key == MetricKey::LearningRate => self.value = aggregated_value,
            NumericEntry::Final(_) if *key == MetricKey::LearningRate => {}
            NumericEntry::Aggregated {
                aggregated_value,
                count,
            } => {
                if count > 0 && aggregated_value.is_finite() {
                    self.sum += aggregated_value * count as f64;
                    self.items += count;
                    self.value = self.sum / self.items as f64;
                }
            }
            NumericEntry::Value(v) | NumericEntry::Final(v) => self.value = v,
        }
    }
}

/// Plain progress lines on stderr, for when there is no terminal to draw a dashboard on.
#[derive(Default)]
pub struct PlainRenderer {
    keys: Keys,
    so_far: BTreeMap<MetricKey, SoFar>,
    split: String,
    epoch: usize,
    total_epochs: usize,
    total_items: usize,
    next_report: usize,
}

impl PlainRenderer {
    /// A metric's update: the entry it logged (what burn-train's own epoch figures are made
    /// from), else its numeric value.
    fn record(&mut self, state: MetricState) {
        let MetricState::Numeric(entry, value) = state else {
            return;
        };
        let Some(key) = self.keys.by_id.get(&entry.metric_id) else {
            return;
        };
        let logged = NumericEntry::deserialize(&entry.serialized_entry.serialized).ok();
        if let Some(e) = logged.or(value) {
            self.so_far.entry(key.clone()).or_default().update(key, e);
        }
    }

    /// The metrics, each as `Name: value`; the learning rate is marked as the current one.
    fn line(&self) -> String {
        self.so_far
            .iter()
            .map(|(k, s)| {
                let now = if *k == MetricKey::LearningRate {
                    " (now)"
                } else {
                    ""
                };
                format!("{}{now}: {}", k.display(), k.format(s.value))
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// A progress line within a split: the figures of the epoch so far.
    fn progress_line(&self, items_processed: usize) -> String {
        format!(
            "[epoch {}/{}] {} {}/{} (epoch so far) | {}",
            self.epoch,
            self.total_epochs,
            self.split,
            items_processed,
            self.total_items,
            self.line()
        )
    }

    /// The line at the end of a split: the epoch's figures.
    fn done_line(&self) -> String {
        format!(
            "[epoch {}/{}] {} done | {}",
            self.epoch,
            self.total_epochs,
            self.split,
            self.line()
        )
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
        self.so_far.clear();
        eprintln!(
            "[epoch {}/{}] {}: {} items",
            self.epoch, self.total_epochs, self.split, total_items
        );
    }

    fn update_split(&mut self, items_processed: usize) {
        if items_processed >= self.next_report && items_processed < self.total_items {
            self.next_report = items_processed + self.total_items.div_ceil(10);
            eprintln!("{}", self.progress_line(items_processed));
        }
    }

    fn end_split(&mut self) {
        eprintln!("{}", self.done_line());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{ConfusionMetric, Predictions};
    use burn::data::dataloader::Progress;
    use burn::train::metric::state::{FormatOptions, NumericMetricState};
    use burn::train::metric::{
        AccuracyMetric, LearningRateMetric, Metric, MetricEntry, MetricMetadata, Numeric,
    };

    fn metadata() -> MetricMetadata {
        MetricMetadata {
            progress: Progress {
                items_processed: 1,
                items_total: 1,
                unit: None,
            },
            iteration: Some(0),
            lr: None,
        }
    }

    fn register<M: Metric>(r: &mut PlainRenderer, metric: &M) -> MetricId {
        let id = MetricId::new(metric.name());
        r.register_metric(MetricDefinition::new(id.clone(), metric));
        id
    }

    /// Batch accuracies 50 % then 100 % (8 items each), as burn-train's accuracy logs them,
    /// beside our macro F1 and class accuracy: every figure on a progress line is the epoch's
    /// so far (accuracy 75 %, not the last batch's 100 %), and the line says so.
    #[test]
    fn progress_lines_show_epoch_figures_so_far_throughout() {
        let labels = ["标题党".to_string(), "非标题党".to_string()];
        let mut r = PlainRenderer {
            keys: Keys::new(MetricKey::all(&labels)),
            ..PlainRenderer::default()
        };
        let accuracy_id = register(&mut r, &AccuracyMetric::new());
        let lr_id = register(&mut r, &LearningRateMetric::new());
        let mut f1 = ConfusionMetric::macro_f1(2);
        let f1_id = register(&mut r, &f1);
        let mut class0 = ConfusionMetric::class_accuracy(0, &labels[0], 2);
        let class0_id = register(&mut r, &class0);
        r.start(1, 1, None, None);
        r.start_split("Train", 32);

        let mut accuracy = NumericMetricState::new();
        let mut lr = NumericMetricState::new();
        let format = |name: &str| FormatOptions::new(Arc::new(name.to_string()));
        // Batch 1: 4 of 8 right (each class 2 of 4); batch 2: all 8 right.
        let batches = [
            (vec![0, 0, 0, 0, 1, 1, 1, 1], vec![0, 0, 1, 1, 1, 1, 0, 0]),
            (vec![0, 0, 0, 0, 1, 1, 1, 1], vec![0, 0, 0, 0, 1, 1, 1, 1]),
        ];
        for (step, (targets, predicted)) in batches.into_iter().enumerate() {
            let right = targets.iter().zip(&predicted).filter(|(t, p)| t == p);
            accuracy.update(100.0 * right.count() as f64 / 8.0, 8);
            let entry = accuracy.compute_update(format("Accuracy").unit("%").precision(2));
            r.update_train(MetricState::Numeric(
                MetricEntry::new(accuracy_id.clone(), entry),
                Some(accuracy.current_value()),
            ));
            lr.update([1e-3, 5e-4][step], 1);
            let entry = lr.compute_update(format("Learning Rate"));
            r.update_train(MetricState::Numeric(
                MetricEntry::new(lr_id.clone(), entry),
                Some(lr.current_value()),
            ));
            let item = Predictions { predicted, targets };
            for (metric, id) in [(&mut f1, &f1_id), (&mut class0, &class0_id)] {
                let entry = metric.update(&item, &metadata()).unwrap();
                // The dashboard gets the batch's figure.
                let batch = metric.value().unwrap().current();
                assert_eq!(batch, [50.0, 100.0][step]);
                r.update_train(MetricState::Numeric(
                    MetricEntry::new(id.clone(), entry),
                    Some(NumericEntry::Value(batch)),
                ));
            }
        }
        // Epoch so far: 12 of 16 right; class 0: 6 of 8; macro F1 of that confusion 75 %.
        assert_eq!(
            r.progress_line(16),
            "[epoch 1/1] train 16/32 (epoch so far) | Accuracy: 75.00 % | Macro F1: 75.00 % | \
             Accuracy 标题党: 75.00 % | Learning Rate (now): 5.00e-4"
        );
        // The epoch's final figures replace the running ones.
        let entry = accuracy.compute_final(format("Accuracy").unit("%").precision(2));
        r.update_train(MetricState::Numeric(
            MetricEntry::new(accuracy_id, entry),
            Some(accuracy.final_value()),
        ));
        let entry = lr.compute_final(format("Learning Rate"));
        r.update_train(MetricState::Numeric(
            MetricEntry::new(lr_id, entry),
            Some(lr.final_value()),
        ));
        let done = r.done_line();
        assert!(
            done.starts_with("[epoch 1/1] train done | Accuracy: 75.00 % |"),
            "{done}"
        );
        assert!(done.ends_with("Learning Rate (now): 5.00e-4"), "{done}");
    }
}
