//! `trainer export`: a trained classifier as a plain HuggingFace model directory
//! (`BertForSequenceClassification`: `config.json`, `model.safetensors`, tokenizer files), for
//! serving stacks that know transformers but not peft. LoRA is merged into the base weights;
//! full fine-tuning is written as is. Prefix, prompt and p-tuning runs have no such form (their
//! virtual tokens need peft): their `runs/<name>/adapter` is the portable artefact.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bert_model::classifier::BertClassifier;
use bert_model::export::write_hf_classifier;
use bert_model::{BertConfig, ModelSource};
use clap::Args;

use crate::classifier::Classifier;
use crate::commands::classifier::ModelArgs;
use crate::device::DeviceChoice;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Directory to create; it must not exist yet.
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(args: ExportArgs, choice: &DeviceChoice) -> Result<()> {
    if args.output.exists() {
        bail!(
            "{}: already exists; choose another --output or remove it",
            args.output.display()
        );
    }
    let run = args.model.load(choice)?;
    let base = ModelSource::parse(&run.config.model.source)?.resolve()?;
    let bert = BertConfig::from_file(&base.config)?;
    let model = fold_temperature(run.model.clone(), run.temperature);
    write_dir_atomically(&args.output, |tmp| {
        write_hf_classifier(
            tmp,
            &model,
            &run.config.peft,
            &bert,
            run.labels.names(),
            &base.dir,
            decision_fields(&run)?,
        )?;
        Ok(())
    })?;
    eprintln!(
        "exported {} ({} labels: {}) to {}",
        run.config.peft.name(),
        run.labels.len(),
        run.labels.names().join(", "),
        args.output.display()
    );
    if run.temperature != 1.0 {
        eprintln!(
            "the calibration temperature {:.4} is folded into the classifier head: its softmax \
             gives predict's calibrated probabilities",
            run.temperature
        );
    }
    if let Some((_, t)) = &run.threshold {
        eprintln!(
            "the decision threshold p({}) >= {:.4} is in config.json's `{}`: predict and serve \
             here apply it; other stacks must apply it themselves",
            t.label,
            t.threshold,
            crate::classifier::THRESHOLD_KEY
        );
    }
    eprintln!(
        "load it with BertForSequenceClassification.from_pretrained({:?}), or here with --model {}",
        args.output.display().to_string(),
        args.output.display()
    );
    Ok(())
}

/// The head with the calibration temperature folded in: `(W x + b) / T` is a linear layer
/// with weights `W / T` and bias `b / T`, so the exported model's plain softmax gives the
/// calibrated probabilities `predict --run` gives, in transformers as here.
fn fold_temperature(mut model: BertClassifier, temperature: f64) -> BertClassifier {
    if temperature == 1.0 {
        return model;
    }
    let scale = (1.0 / temperature) as f32;
    model.classifier.weight = model.classifier.weight.map(|w| w * scale);
    model.classifier.bias = model.classifier.bias.map(|b| b.map(|b| b * scale));
    model
}

/// What decides beyond the softmax, for the exported `config.json`: the temperature already
/// folded into the head (for the record) and the run's decision threshold, which
/// `--model DIR` applies as `--run` does.
fn decision_fields(run: &Classifier) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut fields = serde_json::Map::new();
    fields.insert(
        "calibration_temperature_folded".into(),
        run.temperature.into(),
    );
    if let Some((_, t)) = &run.threshold {
        fields.insert(
            crate::classifier::THRESHOLD_KEY.into(),
            serde_json::to_value(t)?,
        );
    }
    Ok(fields)
}

/// Fills a temporary sibling of `dir`, then renames it into place: `dir` appears complete or
/// not at all.
fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = fill(&tmp).and_then(|()| {
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
