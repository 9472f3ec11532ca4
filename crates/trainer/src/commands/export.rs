//! `trainer export`: a trained classifier as a plain HuggingFace model directory
//! (`BertForSequenceClassification`: `config.json`, `model.safetensors`, tokenizer files), for
//! serving stacks that know transformers but not peft. LoRA is merged into the base weights;
//! full fine-tuning is written as is. Prefix, prompt and p-tuning runs have no such form (their
//! virtual tokens need peft): their `runs/<name>/adapter` is the portable artefact.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bert_model::export::write_hf_classifier;
use bert_model::{BertConfig, ModelSource};
use clap::Args;

use crate::commands::classifier::ModelArgs;
use crate::device::device;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Directory to create; it must not exist yet.
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(args: ExportArgs) -> Result<()> {
    if args.output.exists() {
        bail!(
            "{}: already exists; choose another --output or remove it",
            args.output.display()
        );
    }
    let device = device();
    let run = args.model.load(&device)?;
    let base = ModelSource::parse(&run.config.model.source)?.resolve()?;
    let bert = BertConfig::from_file(&base.config)?;
    write_dir_atomically(&args.output, |tmp| {
        write_hf_classifier(
            tmp,
            &run.model,
            &run.config.peft,
            &bert,
            run.labels.names(),
            &base.dir,
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
    eprintln!(
        "load it with BertForSequenceClassification.from_pretrained({:?}), or here with --model {}",
        args.output.display().to_string(),
        args.output.display()
    );
    Ok(())
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
