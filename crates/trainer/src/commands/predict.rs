//! `trainer predict`: classify texts (arguments or stdin lines), or score a whole CSV.
//!
//! CSV scoring streams: rows are read, scored and written in chunks, so memory stays flat on
//! any number of rows; within a chunk texts are batched by length. Every input row comes out,
//! in input order, with every input column, plus `label`, `score` and one `p_<label>` column
//! per label; a row with an empty text is kept with those left empty and counted. The output
//! is written to a temp file and renamed into place when complete.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;
use serde_json::json;

use crate::classifier::Classifier;
use crate::commands::classifier::ModelArgs;
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
    /// One JSON object per line: {"text", "label", "score", "probabilities"}.
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
                let i = run.decide(p);
                let score = p[i];
                json!({"text": text, "label": run.labels.name(i), "score": score, "probabilities": p})
                    .to_string()
            }
            (None, true) => {
                json!({"text": text, "label": null, "score": null, "probabilities": null})
                    .to_string()
            }
            (Some(p), false) => {
                let i = run.decide(p);
                let score = p[i];
                format!("{}\t{score:.4}\t{text}", run.labels.name(i))
            }
            (None, false) => format!("\t\t{text}"),
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
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
    let added = added_columns(&headers, run.labels.names());

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
                let i = run.decide(&p);
                let score = p[i];
                out.push(run.labels.name(i).to_string());
                out.push(format!("{score:.6}"));
                out.extend(p.iter().map(|v| format!("{v:.6}")));
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

/// `label`, `score`, `p_<label>`...; a name the input already has gets a `predicted_` prefix
/// (again, until it is new) rather than a duplicate column.
fn added_columns(headers: &[String], labels: &[String]) -> Vec<String> {
    let names = ["label".to_string(), "score".to_string()]
        .into_iter()
        .chain(labels.iter().map(|l| format!("p_{l}")));
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
            added_columns(&s(&["title"]), &labels),
            s(&["label", "score", "p_clickbait", "p_not_clickbait"])
        );
        assert_eq!(
            added_columns(&s(&["title", "label", "p_clickbait"]), &labels),
            s(&[
                "predicted_label",
                "score",
                "predicted_p_clickbait",
                "p_not_clickbait"
            ])
        );
        assert_eq!(
            added_columns(&s(&["title", "label", "predicted_label"]), &labels),
            s(&[
                "predicted_predicted_label",
                "score",
                "p_clickbait",
                "p_not_clickbait"
            ])
        );
    }
}
