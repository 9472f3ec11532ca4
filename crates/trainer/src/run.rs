//! The run directory: everything a training run leaves behind (loaded back as a
//! [`crate::classifier::Classifier`]).
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
//!   calibration.json       the temperature fitted on the validation split
//!   report.html            charts and tables of the run (`trainer report`)
//!   checkpoint/            burn-train's resume state (model, optimizer, schedule) of the
//!                          last epoch and of the best one
//! ```

use std::path::{Path, PathBuf};

use anyhow::Result;
use bert_model::Pretrained;
use bert_model::classifier::BertClassifier;
use burn::prelude::*;

use crate::config::TrainConfig;

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
    pub fn calibration(&self) -> PathBuf {
        self.root.join("calibration.json")
    }
    pub fn report(&self) -> PathBuf {
        self.root.join("report.html")
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

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    bert_model::fsutil::write_atomic(path, text.as_bytes())?;
    Ok(())
}
