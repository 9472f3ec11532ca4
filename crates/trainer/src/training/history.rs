//! The per-epoch record of a run: `metrics.json`, and the best epoch by the chosen metric.

use anyhow::{Result, bail};
use serde_json::json;

use crate::config::SelectMetric;
use crate::metrics::MetricKey;
use crate::renderer::{EpochRecord, SplitValues};
use crate::run::RunDir;

/// The epochs recorded in a resumed run's metrics.json up to `last`, its last checkpoint
/// (later ones are trained again). The run's best epoch is chosen from this record, so a
/// damaged file, or one without an epoch the checkpoints have finished, is an error naming it:
/// starting the record afresh would lose those epochs and could keep a worse one.
pub fn resumed_history(run: &RunDir, last: usize) -> Result<Vec<EpochRecord>> {
    let path = run.metrics();
    let fix = "restore it, or start a new run";
    let mut records: Vec<EpochRecord> = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let doc: serde_json::Value = match serde_json::from_str(&text) {
                Ok(doc) => doc,
                Err(e) => bail!(
                    "cannot resume: {} is not valid JSON ({e}); {fix}",
                    path.display()
                ),
            };
            let raw = doc.get("raw").cloned().unwrap_or_default();
            match serde_json::from_value(raw) {
                Ok(records) => records,
                Err(e) => bail!(
                    "cannot resume: {} has no readable per-epoch record (`raw`: {e}); {fix}",
                    path.display()
                ),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => bail!("cannot resume: cannot read {}: {e}", path.display()),
    };
    records.retain(|r| r.epoch <= last);
    let missing: Vec<String> = (1..=last)
        .filter(|e| !records.iter().any(|r| r.epoch == *e))
        .map(|e| e.to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "cannot resume: {} has no record of epoch {} (checkpoint/ holds the run after \
             epoch {last}); {fix}",
            path.display(),
            missing.join(", ")
        );
    }
    Ok(records)
}

fn select_value(r: &EpochRecord, select: SelectMetric) -> Option<f64> {
    r.valid.get(&MetricKey::from(select)).copied()
}

/// Which epoch's loss was not a finite number, if any: such a run has no usable parameters.
pub fn diverged(records: &[EpochRecord]) -> Option<String> {
    records.iter().find_map(|r| {
        [("training", &r.train), ("validation", &r.valid)]
            .into_iter()
            .find_map(|(split, values)| match values.get(&MetricKey::Loss) {
                Some(loss) if !loss.is_finite() => {
                    Some(format!("epoch {}'s {split} loss is {loss}", r.epoch))
                }
                _ => None,
            })
    })
}

/// The epoch with the best validation metric (the first one on ties).
pub fn best_epoch(records: &[EpochRecord], select: SelectMetric) -> Option<EpochRecord> {
    let mut best: Option<(&EpochRecord, f64)> = None;
    for r in records {
        let Some(v) = select_value(r, select) else {
            continue;
        };
        let better = match best {
            None => true,
            Some((_, b)) => match select {
                SelectMetric::Loss => v < b,
                _ => v > b,
            },
        };
        if better {
            best = Some((r, v));
        }
    }
    best.map(|(r, _)| r.clone())
}

pub fn metrics_document(records: &[EpochRecord], select: SelectMetric) -> serde_json::Value {
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|r| r.epoch);
    let epochs: Vec<serde_json::Value> = sorted
        .iter()
        .map(|r| {
            json!({
                "epoch": r.epoch,
                "seconds": r.seconds,
                "train": metrics_json(&r.train),
                "valid": metrics_json(&r.valid),
            })
        })
        .collect();
    json!({
        "select_metric": select,
        "best_epoch": best_epoch(&sorted, select).map(|r| r.epoch),
        "epochs": epochs,
        "raw": sorted,
    })
}

/// One split's values as `metrics.json` writes them: typed keys to JSON keys, percentages to
/// fractions, per-class accuracies grouped by label.
pub fn metrics_json(values: &SplitValues) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut per_class = serde_json::Map::new();
    for (key, &v) in values {
        let v = if key.is_percent() { v / 100.0 } else { v };
        let name = match key {
            MetricKey::Loss => "loss",
            MetricKey::Accuracy => "accuracy",
            MetricKey::MacroF1 => "macro_f1",
            MetricKey::LearningRate => "lr",
            MetricKey::Throughput => "samples_per_second",
            MetricKey::ClassAccuracy(label) => {
                per_class.insert(label.clone(), v.into());
                continue;
            }
        };
        out.insert(name.into(), v.into());
    }
    if !per_class.is_empty() {
        out.insert("per_class_accuracy".into(), per_class.into());
    }
    out.into()
}

/// The validation figures of an epoch, for the end-of-run line.
pub fn describe_valid(valid: &SplitValues) -> String {
    valid
        .iter()
        .filter(|(k, _)| **k != MetricKey::Throughput)
        .map(|(k, v)| format!("{} {}", k.display(), k.format(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, train_loss: f64, valid_loss: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            train: SplitValues::from([(MetricKey::Loss, train_loss)]),
            valid: SplitValues::from([(MetricKey::Loss, valid_loss)]),
            seconds: 1.0,
        }
    }

    #[test]
    fn a_non_finite_loss_in_any_epoch_is_divergence() {
        assert_eq!(diverged(&[record(1, 0.7, 0.6), record(2, 0.5, 0.4)]), None);
        let why = diverged(&[record(1, 0.7, 0.6), record(2, 0.5, f64::NAN)]).unwrap();
        assert_eq!(why, "epoch 2's validation loss is NaN");
        let why = diverged(&[record(1, f64::INFINITY, 0.6)]).unwrap();
        assert_eq!(why, "epoch 1's training loss is inf");
    }
}
