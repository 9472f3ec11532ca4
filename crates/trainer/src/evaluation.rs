//! Running a classifier over a labelled CSV: loss, confusion matrix, and every row's logits and
//! (calibrated) probabilities, for `eval`, the end of `train` and the report.

use std::path::Path;

use anyhow::Result;
use bert_data::{ClassificationBatcher, CsvColumns, Example, Table};
use bert_model::classifier::BertClassifier;
use bert_model::parallel;
use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;

use crate::calibration::{ECE_BINS, brier, expected_calibration_error};
use crate::classifier::{Classifier, rows_on_host};
use crate::metrics::Confusion;
use crate::probability::{argmax, softmax};

/// Figures of one evaluation.
pub struct Evaluation {
    pub confusion: Confusion,
    /// Class probabilities and true label of every item.
    pub probabilities: Vec<Vec<f32>>,
    pub targets: Vec<usize>,
    /// Logits of every item, before the temperature.
    pub logits: Vec<Vec<f32>>,
    /// The temperature the probabilities were computed with.
    pub temperature: f64,
    /// Expected calibration error ([`ECE_BINS`] bins) and Brier score of the probabilities.
    pub ece: f64,
    pub brier: f64,
    pub loss: f64,
    pub rows: usize,
    pub dropped_empty: usize,
    /// What the report's error sections need of every item, in input order (empty when the
    /// evaluation did not come from a CSV): its text, cut to [`KEPT_TEXT_BYTES`]...
    pub texts: Vec<String>,
    /// ... and its length in tokens (special tokens included, at most `max_length`).
    pub lengths: Vec<u32>,
    /// The tokenizer's truncation length, if any.
    pub max_length: Option<usize>,
}

/// Bytes of each text an evaluation keeps (to show its mistakes): enough to read any title or
/// the start of a longer text, without holding a whole data set of long texts.
pub const KEPT_TEXT_BYTES: usize = 1000;

/// The first [`KEPT_TEXT_BYTES`] of `text` (see [`clipped`]).
fn kept_text(text: String) -> String {
    clipped(text, KEPT_TEXT_BYTES)
}

/// The first `max_bytes` of `text`, cut at a character boundary with `…` marking a cut, its
/// spare capacity freed.
pub fn clipped(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text.shrink_to_fit();
    text
}

impl Evaluation {
    /// The figures of `logits` (one row per item) against `targets` with probabilities at
    /// `temperature`; `loss` is the model's mean loss.
    pub fn new(logits: Vec<Vec<f32>>, targets: Vec<usize>, temperature: f64, loss: f64) -> Self {
        let probabilities: Vec<Vec<f32>> = logits.iter().map(|l| softmax(l, temperature)).collect();
        let mut confusion = Confusion::new(logits.first().map_or(0, Vec::len));
        for (p, &t) in probabilities.iter().zip(&targets) {
            confusion.add(t, argmax(p).0);
        }
        Self {
            confusion,
            ece: expected_calibration_error(&probabilities, &targets, ECE_BINS),
            brier: brier(&probabilities, &targets),
            rows: logits.len(),
            probabilities,
            logits,
            temperature,
            targets,
            loss,
            dropped_empty: 0,
            texts: Vec::new(),
            lengths: Vec::new(),
            max_length: None,
        }
    }

    /// The same evaluation with its probabilities at `temperature` (> 0: every argmax, so the
    /// confusion matrix, stays).
    pub fn with_temperature(self, temperature: f64) -> Self {
        Self {
            dropped_empty: self.dropped_empty,
            texts: self.texts,
            lengths: self.lengths,
            max_length: self.max_length,
            ..Self::new(self.logits, self.targets, temperature, self.loss)
        }
    }
}

/// Evaluates `classifier` on the labelled CSV `data` (the run's columns and labels).
pub fn evaluate_csv(
    classifier: &Classifier,
    data: &Path,
    columns: &CsvColumns,
    batch_size: usize,
    device: &Device,
) -> Result<Evaluation> {
    let table = Table::read(data, columns, true)?;
    let ids = classifier.labels.encode(&table)?;
    let texts: Vec<&str> = table.rows.iter().map(|r| r.text.as_str()).collect();
    let examples: Vec<Example> = classifier
        .tokenizer
        .encode_batch(&texts)?
        .into_iter()
        .zip(ids)
        .map(|(encoded, label)| Example { encoded, label })
        .collect();
    if examples.is_empty() {
        anyhow::bail!("{}: no rows to evaluate", data.display());
    }
    let batcher = ClassificationBatcher {
        pad_id: classifier.tokenizer.pad_id(),
        max_length: classifier.tokenizer.max_length().unwrap_or(usize::MAX),
    };
    let mut eval = evaluate(
        &classifier.model,
        &examples,
        batcher,
        batch_size,
        classifier.temperature,
        device,
    )?;
    eval.dropped_empty = table.dropped_empty.len();
    eval.lengths = examples
        .iter()
        .map(|e| u32::try_from(e.encoded.len()).unwrap_or(u32::MAX))
        .collect();
    drop(examples);
    eval.texts = table.rows.into_iter().map(|r| kept_text(r.text)).collect();
    eval.max_length = classifier.tokenizer.max_length();
    Ok(eval)
}

/// Runs the model over `examples` in batches; mean loss over items and the confusion matrix.
pub fn evaluate(
    model: &BertClassifier,
    examples: &[Example],
    batcher: ClassificationBatcher,
    batch_size: usize,
    temperature: f64,
    device: &Device,
) -> Result<Evaluation> {
    let model = model.valid();
    let mut loss_sum = 0.0;
    let mut logits = vec![Vec::new(); examples.len()];
    // Batched by token length (less padding, the same results), reported in input order.
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].encoded.len());
    for chunk in order.chunks(batch_size.max(1)) {
        // On the host each part of the batch runs on its own core (`bert_model::parallel`).
        let parts = parallel::try_map_parts(device, chunk, |part| -> Result<_> {
            let items = part.iter().map(|&i| examples[i].clone()).collect();
            let step = model.forward_classification(batcher.batch(items, device));
            let loss = step.loss.into_scalar::<f32>() as f64;
            Ok((loss * part.len() as f64, rows_on_host(step.logits)?))
        })?;
        let mut rows = Vec::with_capacity(chunk.len());
        for (loss, part_rows) in parts {
            loss_sum += loss;
            rows.extend(part_rows);
        }
        for (&i, row) in chunk.iter().zip(rows) {
            logits[i] = row;
        }
    }
    let targets: Vec<usize> = examples.iter().map(|e| e.label).collect();
    let loss = loss_sum / examples.len() as f64;
    Ok(Evaluation::new(logits, targets, temperature, loss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_texts_are_cut_at_a_character_boundary() {
        assert_eq!(kept_text("short".into()), "short");
        let long = "标".repeat(KEPT_TEXT_BYTES);
        let kept = kept_text(long);
        assert!(kept.len() <= KEPT_TEXT_BYTES + '…'.len_utf8());
        assert!(kept.ends_with("标…"));
    }
}
