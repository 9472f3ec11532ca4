//! Classification metrics for the Learner beyond burn-train's own: per-class accuracy (the
//! reference reports clickbait and non-clickbait accuracy separately), macro F1, and training
//! throughput in samples per second.
//!
//! Each metric keeps epoch-wide counts; the value at the end of the epoch is exact (not a mean
//! of per-batch values). Like burn-train's own numeric metrics (accuracy, loss), a confusion
//! metric's numeric value is the last batch's figure and its running value the epoch's so
//! far; its logged entry reads `epoch X % - batch Y %` and serialises the epoch's figure so far
//! (a plain number, not a per-batch `value,count` pair): the plain progress lines show epoch
//! figures so far for every metric from these entries ([`crate::renderer`]), the dashboard
//! plots each metric's batch figures.

use std::time::Instant;

use burn::tensor::TensorReadError;
use burn::train::ClassificationOutput;
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};

/// Predicted and true class of each item of a batch, on the host.
pub struct Predictions {
    pub predicted: Vec<usize>,
    pub targets: Vec<usize>,
}

impl Adaptor<Predictions> for ClassificationOutput {
    fn adapt(&self) -> Predictions {
        let predicted = self.output.clone().argmax(1).into_data();
        let targets = self.targets.clone().into_data();
        Predictions {
            predicted: predicted.iter::<i64>().map(|v| v as usize).collect(),
            targets: targets.iter::<i64>().map(|v| v as usize).collect(),
        }
    }
}

/// A confusion matrix, `counts[true][predicted]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Confusion {
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    pub fn new(num_classes: usize) -> Self {
        Self {
            counts: vec![vec![0; num_classes]; num_classes],
        }
    }

    pub fn add(&mut self, target: usize, predicted: usize) {
        let n = self.counts.len().max(target + 1).max(predicted + 1);
        if n > self.counts.len() {
            self.counts.iter_mut().for_each(|r| r.resize(n, 0));
            self.counts.resize(n, vec![0; n]);
        }
        self.counts[target][predicted] += 1;
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.counts.len()).map(|i| self.counts[i][i]).sum();
        ratio(correct, self.total())
    }

    /// Recall of class `c`: the reference's "accuracy on class c".
    pub fn recall(&self, c: usize) -> f64 {
        let row = self.counts.get(c).map_or(0, |r| r.iter().sum());
        ratio(self.tp(c), row)
    }

    pub fn precision(&self, c: usize) -> f64 {
        let col: u64 = self
            .counts
            .iter()
            .map(|r| r.get(c).copied().unwrap_or(0))
            .sum();
        ratio(self.tp(c), col)
    }

    pub fn f1(&self, c: usize) -> f64 {
        let (p, r) = (self.precision(c), self.recall(c));
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    pub fn macro_f1(&self) -> f64 {
        let n = self.counts.len();
        if n == 0 {
            return 0.0;
        }
        (0..n).map(|c| self.f1(c)).sum::<f64>() / n as f64
    }

    pub fn support(&self, c: usize) -> u64 {
        self.counts.get(c).map_or(0, |r| r.iter().sum())
    }

    fn tp(&self, c: usize) -> u64 {
        self.counts
            .get(c)
            .and_then(|r| r.get(c))
            .copied()
            .unwrap_or(0)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn percent_entry(epoch: f64, batch: Option<f64>) -> SerializedEntry {
    let batch = batch.map_or_else(|| "N/A".to_string(), |b| format!("{b:.2}"));
    SerializedEntry::new(
        format!("epoch {epoch:.2} % - batch {batch} %"),
        NumericEntry::Value(epoch).serialize(),
    )
}

/// What a per-epoch confusion-based metric reads out of the matrix, in percent.
#[derive(Clone, Copy, Debug)]
enum Readout {
    ClassAccuracy(usize),
    MacroF1,
}

/// A metric of a training run, typed: the Learner's metrics are named by it, `metrics.json`
/// keys and values come from it, the renderers format by it, and the best epoch is chosen by
/// it. Serialised (in `metrics.json`'s `raw` records) as its dashboard name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetricKey {
    Loss,
    Accuracy,
    MacroF1,
    /// Accuracy on the items of one true class (by label).
    ClassAccuracy(String),
    LearningRate,
    Throughput,
}

impl MetricKey {
    /// Every metric of a run with these labels, in dashboard order.
    pub fn all(labels: &[String]) -> Vec<MetricKey> {
        let mut keys = vec![Self::Loss, Self::Accuracy, Self::MacroF1];
        keys.extend(labels.iter().map(|l| Self::ClassAccuracy(metric_label(l))));
        keys.extend([Self::LearningRate, Self::Throughput]);
        keys
    }

    /// The name on the dashboard, which is the Burn metric's name.
    pub fn display(&self) -> String {
        match self {
            Self::Loss => "Loss".into(),
            Self::Accuracy => "Accuracy".into(),
            Self::MacroF1 => "Macro F1".into(),
            Self::ClassAccuracy(label) => format!("Accuracy {label}"),
            Self::LearningRate => "Learning Rate".into(),
            Self::Throughput => "Throughput".into(),
        }
    }

    /// Percentages on the dashboard, fractions in `metrics.json`.
    pub fn is_percent(&self) -> bool {
        matches!(
            self,
            Self::Accuracy | Self::MacroF1 | Self::ClassAccuracy(_)
        )
    }

    /// A value as the plain progress lines and the end-of-run summary show it.
    pub fn format(&self, v: f64) -> String {
        match self {
            Self::Loss => format!("{v:.4}"),
            Self::LearningRate => format!("{v:.2e}"),
            Self::Throughput => format!("{v:.1} samples/s"),
            _ => format!("{v:.2} %"),
        }
    }
}

impl From<crate::config::SelectMetric> for MetricKey {
    fn from(select: crate::config::SelectMetric) -> Self {
        match select {
            crate::config::SelectMetric::MacroF1 => Self::MacroF1,
            crate::config::SelectMetric::Accuracy => Self::Accuracy,
            crate::config::SelectMetric::Loss => Self::Loss,
        }
    }
}

impl serde::Serialize for MetricKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.display())
    }
}

impl<'de> serde::Deserialize<'de> for MetricKey {
    /// The dashboard names [`MetricKey::display`] writes (`raw` records of earlier epochs, read
    /// back on resume).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        let fixed = [
            Self::Loss,
            Self::Accuracy,
            Self::MacroF1,
            Self::LearningRate,
            Self::Throughput,
        ];
        if let Some(k) = fixed.into_iter().find(|k| k.display() == name) {
            return Ok(k);
        }
        match name.strip_prefix("Accuracy ") {
            Some(label) => Ok(Self::ClassAccuracy(label.to_string())),
            None => Err(serde::de::Error::custom(format!("unknown metric `{name}`"))),
        }
    }
}

/// A label as it appears in a metric name: it becomes a log file name in burn-train's metric
/// logger, so no path separators.
fn metric_label(label: &str) -> String {
    label.replace(['/', '\\'], "_")
}

/// A metric computed from the epoch's confusion matrix.
#[derive(Clone)]
pub struct ConfusionMetric {
    name: MetricName,
    readout: Readout,
    num_classes: usize,
    epoch: Confusion,
    last_batch: Confusion,
}

impl ConfusionMetric {
    /// Accuracy on the items whose true class is `class` (named after the label).
    pub fn class_accuracy(class: usize, label: &str, num_classes: usize) -> Self {
        let key = MetricKey::ClassAccuracy(metric_label(label));
        Self::new(key.display(), Readout::ClassAccuracy(class), num_classes)
    }

    pub fn macro_f1(num_classes: usize) -> Self {
        Self::new(MetricKey::MacroF1.display(), Readout::MacroF1, num_classes)
    }

    fn new(name: String, readout: Readout, num_classes: usize) -> Self {
        Self {
            name: MetricName::new(name),
            readout,
            num_classes,
            epoch: Confusion::new(num_classes),
            last_batch: Confusion::new(num_classes),
        }
    }

    fn read(&self, c: &Confusion) -> f64 {
        100.0
            * match self.readout {
                Readout::ClassAccuracy(k) => c.recall(k),
                Readout::MacroF1 => c.macro_f1(),
            }
    }

    /// The last batch's figure; none for a class accuracy when the batch had no item of the
    /// class (or before any batch).
    fn batch_value(&self) -> Option<f64> {
        let has_items = match self.readout {
            Readout::ClassAccuracy(k) => self.last_batch.support(k) > 0,
            Readout::MacroF1 => self.last_batch.total() > 0,
        };
        has_items.then(|| self.read(&self.last_batch))
    }
}

impl Metric for ConfusionMetric {
    type Input = Predictions;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("%".into()),
            higher_is_better: true,
        }
        .into()
    }

    fn update(
        &mut self,
        item: &Predictions,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        self.last_batch = Confusion::new(self.num_classes);
        for (&t, &p) in item.targets.iter().zip(&item.predicted) {
            self.epoch.add(t, p);
            self.last_batch.add(t, p);
        }
        Ok(percent_entry(self.read(&self.epoch), self.batch_value()))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        let v = self.read(&self.epoch);
        Ok(SerializedEntry::new(
            format!("epoch {v:.2} %"),
            NumericEntry::Final(v).serialize(),
        ))
    }

    fn clear(&mut self) {
        self.epoch = Confusion::new(self.num_classes);
        self.last_batch = Confusion::new(self.num_classes);
    }
}

impl Numeric for ConfusionMetric {
    /// The last batch's figure, as burn-train's accuracy and loss give theirs.
    fn value(&self) -> Option<NumericEntry> {
        self.batch_value().map(NumericEntry::Value)
    }
    /// The epoch's figure so far.
    fn running_value(&self) -> Option<NumericEntry> {
        Some(NumericEntry::Value(self.read(&self.epoch)))
    }
    fn final_value(&self) -> NumericEntry {
        NumericEntry::Final(self.read(&self.epoch))
    }
}

/// Batch sizes, for throughput.
pub struct BatchSize(pub usize);

impl Adaptor<BatchSize> for ClassificationOutput {
    fn adapt(&self) -> BatchSize {
        BatchSize(self.targets.dims()[0])
    }
}

/// Items processed per second of wall time since the epoch's first batch.
#[derive(Clone)]
pub struct ThroughputMetric {
    name: MetricName,
    started: Option<Instant>,
    /// Items counted after the first batch (whose duration is unknown).
    items: usize,
}

impl Default for ThroughputMetric {
    fn default() -> Self {
        Self {
            name: MetricName::new(MetricKey::Throughput.display()),
            started: None,
            items: 0,
        }
    }
}

impl ThroughputMetric {
    fn rate(&self) -> f64 {
        match self.started {
            Some(t) if self.items > 0 => self.items as f64 / t.elapsed().as_secs_f64(),
            _ => 0.0,
        }
    }
}

impl Metric for ThroughputMetric {
    type Input = BatchSize;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("samples/s".into()),
            higher_is_better: true,
        }
        .into()
    }

    fn update(
        &mut self,
        item: &BatchSize,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        // The clock starts at the end of the first batch, so the rate counts whole batches.
        match self.started {
            None => self.started = Some(Instant::now()),
            Some(_) => self.items += item.0,
        }
        let r = self.rate();
        Ok(SerializedEntry::new(
            format!("{r:.1} samples/s"),
            NumericEntry::Value(r).serialize(),
        ))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        let r = self.rate();
        Ok(SerializedEntry::new(
            format!("{r:.1} samples/s"),
            NumericEntry::Final(r).serialize(),
        ))
    }

    fn clear(&mut self) {
        self.started = None;
        self.items = 0;
    }
}

impl Numeric for ThroughputMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(NumericEntry::Value(self.rate()))
    }
    fn running_value(&self) -> Option<NumericEntry> {
        self.value()
    }
    fn final_value(&self) -> NumericEntry {
        NumericEntry::Final(self.rate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_figures() {
        let mut c = Confusion::new(2);
        // 3 of class 0 (2 right), 2 of class 1 (1 right).
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1), (1, 0)] {
            c.add(t, p);
        }
        assert_eq!(c.accuracy(), 0.6);
        assert!((c.recall(0) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(c.recall(1), 0.5);
        assert!((c.precision(0) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(c.precision(1), 0.5);
        assert!((c.macro_f1() - (2.0 / 3.0 + 0.5) / 2.0).abs() < 1e-12);
        assert_eq!(c.support(0), 3);
    }
}
