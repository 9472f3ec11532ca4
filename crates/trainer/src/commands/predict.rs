//! `trainer predict`: classify texts (arguments or stdin lines), or score a whole CSV.
//!
//! CSV scoring streams: rows are read, scored and written in chunks, so memory stays flat on
//! any number of rows; within a chunk texts are batched by length. Every input row comes out,
//! in input order, with every input column, plus `label`, `score` and one `p_<label>` column
//! per label, and `threshold` when a decision threshold is in force (it decided `label`:
//! the positive label when its `p_<label>` reaches it); a row with an empty text is kept with
//! those left empty and counted. The output is written to a temp file and renamed into place
//! when complete.
//!
//! Under a decision threshold (`threshold.json`, or an exported model's `decision_threshold`)
//! the other outputs say so too: a text line shows the positive label's probability against
//! the threshold in place of the score, and a JSON line adds `threshold`, `positive` and
//! `p_positive`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;
use serde_json::json;

use crate::classifier::Classifier;
use crate::commands::classifier::ModelArgs;
use crate::decision::Decision;
use crate::device::DeviceChoice;
use crate::progress::Progress;

/// Rows read, scored and written at a time.
const CHUNK: usize = 2048;

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Texts to classify; without any (and without --input), one text per line from stdin.
    pub texts: Vec<String>,
    /// One JSON object per line: {"text", "label", "score", "probabilities"}, plus
    /// "threshold", "positive" and "p_positive" when a decision threshold is in force.
    #[arg(long)]
    pub json: bool,
    /// Score this CSV (with a header) into --output.
    #[arg(long, requires = "output", conflicts_with = "texts")]
    pub input: Option<PathBuf>,
    #[arg(long, requires = "input")]
    pub output: Option<PathBuf>,
    /// Column holding the text (default: the run's `data.text_column`, else `title`).
    #[arg(long)]
    pub text_column: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

pub fn run(args: PredictArgs, choice: &DeviceChoice) -> Result<()> {
    crate::commands::check_batch_size(args.batch_size)?;
    let device = choice.device();
    let run = args.model.load(choice)?;
    match (&args.input, &args.output) {
        (Some(input), Some(output)) => {
            let column = args
                .text_column
                .clone()
                .unwrap_or_else(|| run.config.data.text_column.clone());
            let report = score_csv(&run, input, output, &column, args.batch_size, device)?;
            eprintln!(
                "scored {} row(s) of {}; {} row(s) with an empty `{column}` kept unscored; wrote {}",
                report.scored,
                input.display(),
                report.empty,
                output.display()
            );
            if let Some((positive, t)) = &run.threshold {
                eprintln!(
                    "labels decided by the threshold p({}) >= {} (column `threshold`), not by the most probable label",
                    run.labels.name(*positive),
                    t.threshold
                );
            }
            Ok(())
        }
        _ if !args.texts.is_empty() => {
            let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
            print_texts(&run, &texts, args.json, args.batch_size, device)
        }
        _ => {
            // Stdin, a chunk of lines at a time, so a pipe gets answers as it goes.
            let stdin = crate::lines::BoundedLines::new(std::io::stdin().lock(), "stdin");
            let mut lines = Vec::new();
            for line in stdin {
                lines.push(line?);
                if lines.len() == CHUNK {
                    let texts: Vec<&str> = lines.iter().map(String::as_str).collect();
                    print_texts(&run, &texts, args.json, args.batch_size, device)?;
                    lines.clear();
                }
            }
            let texts: Vec<&str> = lines.iter().map(String::as_str).collect();
            print_texts(&run, &texts, args.json, args.batch_size, device)
        }
    }
}

/// Prints one line per text, in order; an empty text gets `null`s (JSON) or an empty label.
fn print_texts(
    run: &Classifier,
    texts: &[&str],
    json: bool,
    batch_size: usize,
    device: &Device,
) -> Result<()> {
    let scored: Vec<&str> = texts
        .iter()
        .copied()
        .filter(|t| !t.trim().is_empty())
        .collect();
    let mut probs = run.probabilities(&scored, batch_size, device)?.into_iter();
    let mut out = std::io::stdout().lock();
    for text in texts {
        let p = if text.trim().is_empty() {
            None
        } else {
            probs.next()
        };
        let line = match (&p, json) {
            (Some(p), true) => {
                let d = run.decision(p);
                let mut v = json!({"text": text, "label": run.labels.name(d.label), "score": d.score, "probabilities": p});
                if let Some(v) = v.as_object_mut() {
                    v.extend(d.threshold_fields(run.labels.names()));
                }
                v.to_string()
            }
            (None, true) => {
                json!({"text": text, "label": null, "score": null, "probabilities": null})
                    .to_string()
            }
            (Some(p), false) => human_line(run, &run.decision(p), text),
            (None, false) => format!("\t\t{text}"),
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `label<TAB>score<TAB>text`; under a decision threshold the middle field says what decided
/// instead: `clickbait<TAB>p(clickbait)=0.3165 >= threshold 0.2870<TAB>text` (the same width on
/// every line, so the texts line up as far as the labels do).
fn human_line(run: &Classifier, d: &Decision, text: &str) -> String {
    let label = run.labels.name(d.label);
    match &d.by_threshold {
        Some(b) => format!(
            "{label}\t{}\t{text}",
            b.describe(run.labels.name(b.positive))
        ),
        None => format!("{label}\t{:.4}\t{text}", d.score),
    }
}

pub struct CsvReport {
    pub scored: usize,
    pub empty: usize,
}

/// Field `i` of a record as UTF-8, or an error naming the file, line and column.
fn field<'a>(
    record: &'a csv::ByteRecord,
    i: usize,
    path: &Path,
    headers: &[String],
) -> Result<&'a str> {
    let bytes = record.get(i).unwrap_or_default();
    std::str::from_utf8(bytes).map_err(|_| {
        let line = record.position().map_or(0, |p| p.line());
        anyhow::anyhow!(
            "{}:{line}: invalid UTF-8 in column `{}` (save the file as UTF-8)",
            path.display(),
            headers[i]
        )
    })
}

pub fn score_csv(
    run: &Classifier,
    input: &Path,
    output: &Path,
    column: &str,
    batch_size: usize,
    device: &Device,
) -> Result<CsvReport> {
    let mut reader = csv::ReaderBuilder::new()
        .from_path(input)
        .with_context(|| format!("cannot read {}", input.display()))?;
    let raw_headers = reader
        .byte_headers()
        .with_context(|| format!("{}: cannot read the header", input.display()))?
        .clone();
    let mut headers = Vec::new();
    for (i, h) in raw_headers.iter().enumerate() {
        let h = std::str::from_utf8(h)
            .map_err(|_| anyhow::anyhow!("{}:1: invalid UTF-8 in the header", input.display()))?;
        let h = if i == 0 {
            h.trim_start_matches('\u{feff}')
        } else {
            h
        };
        // As `train` reads headers: surrounding spaces are not part of the name.
        headers.push(h.trim().to_string());
    }
    let Some(text_idx) = headers.iter().position(|h| h == column) else {
        bail!(
            "{}: no column `{column}` (columns: {}); choose one with --text-column",
            input.display(),
            headers.join(", ")
        );
    };
    let added = added_columns(&headers, run.labels.names(), run.threshold.is_some());

    let out_file = bert_model::fsutil::AtomicFile::create(output)?;
    let mut writer = csv::Writer::from_writer(std::io::BufWriter::new(out_file.file()));
    writer.write_record(headers.iter().chain(&added))?;

    let total_bytes = std::fs::metadata(input).map_or(0, |m| m.len());
    let mut progress = Progress::new(total_bytes);
    let mut report = CsvReport {
        scored: 0,
        empty: 0,
    };
    let mut rows = 0usize;
    let mut chunk: Vec<csv::ByteRecord> = Vec::with_capacity(CHUNK);
    let mut records = reader.byte_records();
    loop {
        chunk.clear();
        for record in records.by_ref().take(CHUNK) {
            chunk.push(record.with_context(|| format!("{}: malformed CSV", input.display()))?);
        }
        if chunk.is_empty() {
            break;
        }
        let mut texts = Vec::with_capacity(chunk.len());
        for record in &chunk {
            texts.push(field(record, text_idx, input, &headers)?);
        }
        let scored: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|t| !t.trim().is_empty())
            .collect();
        // Progress within the chunk: its rows and bytes, in proportion to the texts scored.
        let bytes_before = chunk[0].position().map_or(0, |p| p.byte());
        let bytes_after = records.reader().position().byte();
        let mut on_batch = |done: usize| {
            let share = done as f64 / scored.len().max(1) as f64;
            let rows_done = rows + (share * chunk.len() as f64) as usize;
            let bytes = bytes_before + (share * (bytes_after - bytes_before) as f64) as u64;
            progress.update(rows_done, bytes);
        };
        let mut probs = run
            .probabilities_with(&scored, batch_size, device, &mut on_batch)?
            .into_iter();
        for (record, text) in chunk.iter().zip(&texts) {
            let mut out: Vec<String> = (0..record.len())
                .map(|i| field(record, i, input, &headers).map(str::to_string))
                .collect::<Result<_>>()?;
            if text.trim().is_empty() {
                report.empty += 1;
                out.extend(std::iter::repeat_n(String::new(), added.len()));
            } else {
                let p = probs.next().expect("one result per scored text");
                let d = run.decision(&p);
                out.push(run.labels.name(d.label).to_string());
                out.push(format!("{:.6}", d.score));
                out.extend(p.iter().map(|v| format!("{v:.6}")));
                if let Some(b) = &d.by_threshold {
                    // As stored (shortest form of the f32 compared), not rounded.
                    out.push(b.threshold.to_string());
                }
                report.scored += 1;
            }
            writer.write_record(&out)?;
        }
        rows += chunk.len();
        progress.update(rows, bytes_after);
    }
    progress.finish(rows);
    writer
        .flush()
        .with_context(|| format!("cannot write {}", output.display()))?;
    drop(writer);
    out_file.persist()?;
    Ok(report)
}

/// `label`, `score`, `p_<label>`..., and `threshold` when one is in force; a name the input
/// already has gets a `predicted_` prefix (again, until it is new) rather than a duplicate
/// column.
fn added_columns(headers: &[String], labels: &[String], threshold: bool) -> Vec<String> {
    let names = ["label".to_string(), "score".to_string()]
        .into_iter()
        .chain(labels.iter().map(|l| format!("p_{l}")))
        .chain(threshold.then(|| "threshold".to_string()));
    let mut taken: Vec<String> = headers.to_vec();
    let mut added = Vec::new();
    for mut name in names {
        while taken.contains(&name) {
            name = format!("predicted_{name}");
        }
        taken.push(name.clone());
        added.push(name);
    }
    added
}

#[cfg(test)]
mod tests {
    use super::added_columns;

    #[test]
    fn added_columns_never_duplicate_an_input_column() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let labels = s(&["clickbait", "not_clickbait"]);
        assert_eq!(
            added_columns(&s(&["title"]), &labels, false),
            s(&["label", "score", "p_clickbait", "p_not_clickbait"])
        );
        assert_eq!(
            added_columns(&s(&["title", "threshold"]), &labels, true),
            s(&[
                "label",
                "score",
                "p_clickbait",
                "p_not_clickbait",
                "predicted_threshold"
            ])
        );
        assert_eq!(
            added_columns(&s(&["title", "label", "p_clickbait"]), &labels, false),
            s(&[
                "predicted_label",
                "score",
                "predicted_p_clickbait",
                "p_not_clickbait"
            ])
        );
        assert_eq!(
            added_columns(&s(&["title", "label", "predicted_label"]), &labels, false),
            s(&[
                "predicted_predicted_label",
                "score",
                "p_clickbait",
                "p_not_clickbait"
            ])
        );
    }
}
