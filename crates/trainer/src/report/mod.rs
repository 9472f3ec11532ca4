//! `report.html` in a run directory: one self-contained page (inline SVG, no scripts, no
//! network) to look at before trusting a run: loss, accuracy and macro F1 per epoch, the
//! precision-recall curve of the positive label with the decision thresholds marked, the
//! confusion matrix, the most confident mistakes, accuracy by text length (and by a column of
//! the data), a reliability diagram, the adapter's size, the recipe and the data counts.
//!
//! `train` writes it at the end; `trainer report --run DIR` writes it again (after
//! `eval --save-threshold`, say).

pub mod analysis;
mod charts;

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bert_data::LabelMap;
use serde_json::Value;

use crate::calibration::{Calibration, ECE_BINS, reliability};
use crate::evaluation::Evaluation;
use crate::progress::thousands;
use crate::run::RunDir;
use crate::threshold::{CurvePoint, Threshold, default_positive, for_precision, pr_curve};
use charts::{Marker, Series, padded};

/// The precision `eval --target-precision` aims at by default, marked when no threshold is
/// saved.
const TARGET_PRECISION: f64 = 0.95;

/// Writes the run's `report.html` from its files and `eval`, its validation split evaluated
/// at the run's temperature; returns the path.
pub fn write(run: &RunDir, eval: &Evaluation) -> Result<PathBuf> {
    write_with(run, eval, &Options::default())
}

/// What `trainer report` adds to the page beyond the run's files.
#[derive(Debug, Default)]
pub struct Options {
    /// The CSV `eval` came from when it is not the run's validation split.
    pub data: Option<PathBuf>,
    /// The other columns of that CSV (offered to `--by-column`).
    pub other_columns: Vec<String>,
    /// A column of it to break accuracy down by (`--by-column`).
    pub by_column: Option<analysis::Column>,
}

/// [`write`], with `options`.
pub fn write_with(run: &RunDir, eval: &Evaluation, options: &Options) -> Result<PathBuf> {
    let labels = LabelMap::read(&run.labels())?;
    let html = render(run, labels.names(), eval, options)?;
    let path = run.report();
    bert_model::fsutil::write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

/// A JSON file of the run, `None` when absent.
fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = bert_model::fsutil::read_small_text(path)?;
    let value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    Ok(Some(value))
}

fn render(run: &RunDir, labels: &[String], eval: &Evaluation, options: &Options) -> Result<String> {
    let summary = read_json(&run.summary())?.unwrap_or(Value::Null);
    let metrics = read_json(&run.metrics())?.unwrap_or(Value::Null);
    let calibration = Calibration::read(&run.calibration())?;
    let threshold = Threshold::read(&run.threshold())?;
    let recipe = bert_model::fsutil::read_small_text(&run.config())?;
    let name = run.root.file_name().map_or_else(
        || run.root.display().to_string(),
        |n| n.to_string_lossy().into(),
    );

    let mut page = String::new();
    let w = &mut page;
    writeln!(
        w,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
    )?;
    writeln!(
        w,
        "<title>{} · trainer report</title>\n<style>{STYLE}</style></head><body>",
        esc(&name)
    )?;
    writeln!(w, "<h1>{}</h1>", esc(&name))?;
    headline(w, &summary, eval)?;
    let split = match &options.data {
        Some(data) => {
            writeln!(
                w,
                "<p>Decisions, mistakes and calibration below are on {}.</p>",
                esc(&data.display().to_string())
            )?;
            "the data"
        }
        None => "the validation split",
    };

    writeln!(w, "<h2>Training</h2><div class=\"row\">")?;
    for chart in epoch_charts(&metrics)? {
        writeln!(w, "<figure>{chart}</figure>")?;
    }
    writeln!(w, "</div>")?;

    writeln!(w, "<h2>Decisions on {split}</h2><div class=\"row\">")?;
    let saved = threshold
        .as_ref()
        .and_then(|t| Some((labels.iter().position(|l| *l == t.label)?, t.clone())));
    let positive = saved
        .as_ref()
        .map(|(p, _)| *p)
        .or_else(|| default_positive(labels));
    if let Some((p, label)) = positive.and_then(|p| Some((p, labels.get(p)?))) {
        let (chart, notes) = precision_recall(eval, label, p, threshold.as_ref())?;
        writeln!(
            w,
            "<figure>{chart}<figcaption>{notes}</figcaption></figure>"
        )?;
    }
    writeln!(w, "<figure>{}</figure></div>", confusion(labels, eval))?;

    let decided = analysis::decisions(eval, saved.as_ref());
    let correct: Vec<bool> = decided
        .iter()
        .zip(&eval.targets)
        .map(|(d, t)| d == t)
        .collect();
    if eval.texts.len() == eval.rows {
        writeln!(w, "<h2>Most confident mistakes</h2>")?;
        let rule = match &saved {
            Some((p, t)) => format!(
                "by the saved threshold in <code>threshold.json</code>, <code>{}</code> when \
                 p({}) ≥ {:.4}",
                esc(&labels[*p]),
                esc(&labels[*p]),
                t.threshold
            ),
            None => "by the most probable label (no threshold saved)".to_string(),
        };
        writeln!(
            w,
            "<p>Decided as <code>trainer predict</code> decides: {rule}. {} of {} rows are \
             wrong.</p>",
            thousands(correct.iter().filter(|&&ok| !ok).count()),
            thousands(eval.rows)
        )?;
        let found = analysis::mistakes(eval, &decided, positive, analysis::REPORT_MISTAKES);
        mistakes_section(w, labels, eval, &decided, &found)?;
    }
    if eval.lengths.len() == eval.rows || options.by_column.is_some() {
        writeln!(
            w,
            "<h2>Accuracy by text length{}</h2><div class=\"row\">",
            if options.by_column.is_some() {
                " and column"
            } else {
                ""
            }
        )?;
        if eval.lengths.len() == eval.rows {
            let groups = analysis::by_length(&eval.lengths, &correct, eval.max_length);
            let cut = eval
                .max_length
                .map(|m| {
                    let n = eval.lengths.iter().filter(|&&l| l as usize >= m).count();
                    format!(
                        " Texts are cut at {} tokens; {} reached it.",
                        thousands(m),
                        thousands(n)
                    )
                })
                .unwrap_or_default();
            writeln!(
                w,
                "<figure>{}<figcaption>Length in tokens, <code>[CLS]</code> and \
                 <code>[SEP]</code> included, as the model read it.{cut} Correct as decided \
                 above.</figcaption></figure>",
                groups_table("tokens", &groups)
            )?;
        }
        if let Some(column) = &options.by_column {
            let groups = analysis::by_column(column, &correct);
            writeln!(
                w,
                "<figure>{}<figcaption>The {} most frequent values of column <code>{}</code>, \
                 the rest together.</figcaption></figure>",
                groups_table(&column.name, &groups),
                analysis::TOP_VALUES,
                esc(&column.name)
            )?;
        }
        writeln!(w, "</div>")?;
        if options.by_column.is_none() && !options.other_columns.is_empty() {
            let names: Vec<String> = options
                .other_columns
                .iter()
                .map(|c| format!("<code>{}</code>", esc(c)))
                .collect();
            writeln!(
                w,
                "<p>The data has other columns ({}): <code>trainer report --by-column NAME</code> \
                 breaks accuracy down by one.</p>",
                names.join(", ")
            )?;
        }
    }

    writeln!(w, "<h2>Calibration</h2><div class=\"row\">")?;
    let bins = reliability(&eval.probabilities, &eval.targets, ECE_BINS);
    writeln!(w, "<figure>{}</figure>", charts::reliability(&bins)?)?;
    writeln!(
        w,
        "<figure>{}</figure></div>",
        calibration_table(calibration.as_ref(), eval)
    )?;

    adapter_section(w, run, &recipe, &summary)?;
    writeln!(w, "<h2>Data</h2>{}", data_table(&summary, labels))?;
    writeln!(w, "<h2>Recipe</h2><pre>{}</pre>", esc(&recipe))?;
    writeln!(
        w,
        "<footer>{}</footer></body></html>",
        esc(&run.root.display().to_string())
    )?;
    Ok(page)
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px auto;max-width:1000px;color:#222}\
h1{margin-bottom:4px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}\
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}figure{margin:0}\
figcaption{font-size:13px;max-width:460px;margin-top:4px}\
td.t{text-align:left;max-width:560px;overflow-wrap:anywhere}h3{font-size:15px;margin:16px 0 6px}\
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 10px;\
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}\
.big{display:flex;gap:24px;margin:12px 0}.big div{font-size:13px;color:#555}\
.big b{display:block;font-size:26px;color:#222}pre{background:#f7f7f7;padding:12px;\
font-size:13px;overflow:auto}footer{margin-top:32px;font-size:12px;color:#777}";

/// HTML-escapes text.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// The figures a reader looks at first.
fn headline(w: &mut String, summary: &Value, eval: &Evaluation) -> Result<()> {
    let c = &eval.confusion;
    let mut items = vec![
        ("validation accuracy", pct(c.accuracy())),
        ("macro F1", pct(c.macro_f1())),
        ("calibration error (ECE)", format!("{:.4}", eval.ece)),
        ("Brier score", format!("{:.4}", eval.brier)),
    ];
    if let Some(best) = summary["best_epoch"].as_u64() {
        items.push(("best epoch", best.to_string()));
    }
    if let (Some(t), Some(n)) = (
        summary["params"]["trainable"].as_u64(),
        summary["params"]["total"].as_u64(),
    ) {
        let share = t as f64 / n.max(1) as f64;
        items.push((
            "trained parameters",
            format!("{} ({:.2}%)", thousands(t as usize), share * 100.0),
        ));
    }
    writeln!(w, "<div class=\"big\">")?;
    for (name, value) in items {
        writeln!(w, "<div><b>{}</b>{}</div>", esc(&value), esc(name))?;
    }
    writeln!(w, "</div>")?;
    if let Some(device) = summary["device"].as_str() {
        writeln!(w, "<p>Trained on {}.</p>", esc(device))?;
    }
    Ok(())
}

/// Loss, and accuracy with macro F1, per epoch for both splits (from metrics.json).
fn epoch_charts(metrics: &Value) -> Result<Vec<String>> {
    let epochs = metrics["epochs"].as_array().cloned().unwrap_or_default();
    let line = |split: &str, key: &str| -> Vec<(f64, f64)> {
        epochs
            .iter()
            .filter_map(|e| Some((e["epoch"].as_f64()?, e[split][key].as_f64()?)))
            // A hand-edited or corrupt file may hold anything; only real epochs are drawn.
            .filter(|&(x, y)| {
                (1.0..=crate::config::MAX_EPOCHS as f64).contains(&x) && y.is_finite()
            })
            .collect()
    };
    if epochs.is_empty() {
        return Ok(Vec::new());
    }
    let loss = [
        Series::train("train", line("train", "loss")),
        Series::valid("validation", line("valid", "loss")),
    ];
    let quality = [
        Series::train("train accuracy", line("train", "accuracy")),
        Series::valid("validation accuracy", line("valid", "accuracy")),
        Series::train("train macro F1", line("train", "macro_f1")).dashed(),
        Series::valid("validation macro F1", line("valid", "macro_f1")).dashed(),
    ];
    let range =
        |s: &[Series], limits| padded(s.iter().flat_map(|s| s.points.iter().map(|p| p.1)), limits);
    Ok(vec![
        charts::epochs(
            "loss",
            "cross-entropy",
            &loss,
            range(&loss, Some(0.0..f64::MAX)),
        )?,
        charts::epochs(
            "accuracy and macro F1",
            "fraction",
            &quality,
            range(&quality, Some(0.0..1.0)),
        )?,
    ])
}

/// The last curve point that flags `p >= threshold`.
fn at_threshold(curve: &[CurvePoint], threshold: f32) -> Option<CurvePoint> {
    curve
        .iter()
        .take_while(|p| p.threshold >= threshold)
        .last()
        .copied()
}

/// The precision-recall chart of label `p` and a caption describing its markers.
fn precision_recall(
    eval: &Evaluation,
    label: &str,
    p: usize,
    saved: Option<&Threshold>,
) -> Result<(String, String)> {
    let scores: Vec<f32> = eval
        .probabilities
        .iter()
        .map(|q| q.get(p).copied().unwrap_or(0.0))
        .collect();
    let truth: Vec<bool> = eval.targets.iter().map(|&t| t == p).collect();
    let curve = pr_curve(&scores, &truth);
    let describe = |m: &CurvePoint| {
        format!(
            "threshold {:.3}: precision {}, recall {}, {} flagged",
            m.threshold,
            pct(m.precision),
            pct(m.recall),
            thousands(m.flagged)
        )
    };
    let mut marks = Vec::new();
    let mut notes = Vec::new();
    match saved {
        Some(t) => {
            if let Some(point) = at_threshold(&curve, t.threshold) {
                notes.push(format!(
                    "Saved threshold (<code>threshold.json</code>, chosen for precision {}): {}.",
                    pct(t.target_precision),
                    describe(&point)
                ));
                marks.push(Marker {
                    name: "saved threshold".into(),
                    point,
                });
            }
        }
        None => {
            if let Some(point) = for_precision(&curve, TARGET_PRECISION) {
                notes.push(format!(
                    "No threshold saved; for precision {} (<code>trainer eval --save-threshold</code>): {}.",
                    pct(TARGET_PRECISION),
                    describe(&point)
                ));
                marks.push(Marker {
                    name: format!("precision ≥ {}", pct(TARGET_PRECISION)),
                    point,
                });
            }
        }
    }
    if let Some(point) = at_threshold(&curve, 0.5) {
        notes.push(format!("At p ≥ 0.5: {}.", describe(&point)));
        marks.push(Marker {
            name: "p ≥ 0.5".into(),
            point,
        });
    }
    let chart = charts::precision_recall(label, &curve, &marks)?;
    // The notes are figures and fixed words, with markup of their own.
    Ok((chart, notes.join(" ")))
}

/// The confusion matrix as a table, each cell shaded by its share of the row.
fn confusion(labels: &[String], eval: &Evaluation) -> String {
    let counts = &eval.confusion.counts;
    let mut t = String::from("<table><tr><th class=\"l\">true \\ predicted</th>");
    for l in labels {
        let _ = write!(t, "<th>{}</th>", esc(l));
    }
    t.push_str("<th>recall</th></tr>");
    for (i, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum();
        let name = labels.get(i).map_or("?", String::as_str);
        let _ = write!(t, "<tr><th class=\"l\">{}</th>", esc(name));
        for &n in row {
            let share = n as f64 / total.max(1) as f64;
            let _ = write!(
                t,
                "<td style=\"background:rgba(31,119,180,{:.2})\">{}</td>",
                share * 0.6,
                thousands(n as usize)
            );
        }
        let _ = write!(t, "<td>{}</td></tr>", pct(eval.confusion.recall(i)));
    }
    t.push_str("<tr><th class=\"l\">precision</th>");
    for c in 0..counts.len() {
        let _ = write!(t, "<td>{}</td>", pct(eval.confusion.precision(c)));
    }
    let _ = write!(
        t,
        "<td></td></tr></table><p>{} rows; predicted: the most probable label.</p>",
        thousands(eval.rows)
    );
    t
}

fn calibration_table(calibration: Option<&Calibration>, eval: &Evaluation) -> String {
    let mut t = String::from("<table>");
    let _ = write!(
        t,
        "<tr><th class=\"l\">temperature</th><td>{:.3}</td></tr>",
        eval.temperature
    );
    if let Some(c) = calibration {
        let _ = write!(
            t,
            "<tr><th class=\"l\">ECE before / after</th><td>{:.4} / {:.4}</td></tr>\
             <tr><th class=\"l\">NLL before / after</th><td>{:.4} / {:.4}</td></tr>",
            c.ece_before, c.ece_after, c.nll_before, c.nll_after
        );
    }
    let _ = write!(
        t,
        "<tr><th class=\"l\">ECE ({ECE_BINS} bins)</th><td>{:.4}</td></tr>\
         <tr><th class=\"l\">Brier score</th><td>{:.4}</td></tr></table>\
         <p>Bars: accuracy per confidence bin; dots: the bin's mean confidence and accuracy.</p>",
        eval.ece, eval.brier
    );
    t
}

/// Rows read, the split and its classes (from summary.json).
fn data_table(summary: &Value, labels: &[String]) -> String {
    let data = &summary["data"];
    let mut t = String::from("<table>");
    if let Some(source) = data["source"].as_str() {
        let _ = write!(
            t,
            "<tr><th class=\"l\">source</th><td class=\"l\">{}</td></tr>",
            esc(source)
        );
    }
    if let Some(n) = data["rows_read"].as_u64() {
        let _ = write!(
            t,
            "<tr><th class=\"l\">rows read</th><td>{}</td></tr>",
            thousands(n as usize)
        );
    }
    for (split, key) in [
        ("train", "train_per_class"),
        ("validation", "valid_per_class"),
    ] {
        let total = data[if split == "train" { "train" } else { "valid" }].as_u64();
        let per: Vec<String> = data[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .zip(labels)
                    .map(|(n, l)| {
                        let n = n.as_u64().unwrap_or(0) as usize;
                        format!("{} {}", esc(l), thousands(n))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(total) = total {
            let _ = write!(
                t,
                "<tr><th class=\"l\">{split}</th><td>{}</td><td class=\"l\">{}</td></tr>",
                thousands(total as usize),
                per.join(", ")
            );
        }
    }
    t.push_str("</table>");
    t
}

/// The mistakes as tables: false positives and false negatives of the positive label, or every
/// kind together.
fn mistakes_section(
    w: &mut String,
    labels: &[String],
    eval: &Evaluation,
    decided: &[usize],
    found: &analysis::Mistakes,
) -> Result<()> {
    let name = |i: usize| esc(labels.get(i).map_or("?", String::as_str));
    let table = |items: &[analysis::Mistake], positive: Option<usize>| {
        let mut t = String::from(
            "<table><tr><th class=\"l\">text</th><th class=\"l\">true label</th>\
             <th class=\"l\">predicted</th><th>p(predicted)</th>",
        );
        if let Some(p) = positive {
            let _ = write!(t, "<th>p({})</th>", name(p));
        }
        t.push_str("</tr>");
        for m in items {
            let text = eval.texts.get(m.index).map_or("", String::as_str);
            let _ = write!(
                t,
                "<tr><td class=\"t\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
                 <td>{:.4}</td>",
                esc(text),
                name(m.truth),
                name(m.predicted),
                m.p_predicted
            );
            if let Some(p) = m.p_positive {
                let _ = write!(t, "<td>{p:.4}</td>");
            }
            t.push_str("</tr>");
        }
        if items.is_empty() {
            t.push_str("<tr><td class=\"l\" colspan=\"5\">none</td></tr>");
        }
        t.push_str("</table>");
        t
    };
    let count = |f: &dyn Fn(usize, usize) -> bool| {
        decided
            .iter()
            .zip(&eval.targets)
            .filter(|&(&d, &t)| d != t && f(d, t))
            .count()
    };
    match found {
        analysis::Mistakes::Binary {
            positive,
            false_positives,
            false_negatives,
        } => {
            let p = *positive;
            let (n_fp, n_fn) = (count(&|d, _| d == p), count(&|_, t| t == p));
            let shown = |n: usize, listed: usize, which: &str| match n {
                0 => "0 in all".to_string(),
                _ => format!(
                    "{} in all; the {} with the {which} p({})",
                    thousands(n),
                    thousands(listed),
                    name(p)
                ),
            };
            writeln!(
                w,
                "<h3>False positives: decided <code>{}</code>, truly not ({})</h3>{}",
                name(p),
                shown(n_fp, false_positives.len(), "highest"),
                table(false_positives, Some(p))
            )?;
            writeln!(
                w,
                "<h3>False negatives: truly <code>{}</code>, decided otherwise ({})</h3>{}",
                name(p),
                shown(n_fn, false_negatives.len(), "lowest"),
                table(false_negatives, Some(p))
            )?;
        }
        analysis::Mistakes::Overall(items) => {
            writeln!(
                w,
                "<h3>The {} mistakes with the highest p(predicted)</h3>{}",
                thousands(items.len()),
                table(items, None)
            )?;
        }
    }
    Ok(())
}

/// Rows and accuracy per group.
fn groups_table(what: &str, groups: &[analysis::Group]) -> String {
    let mut t = format!(
        "<table><tr><th class=\"l\">{}</th><th>rows</th><th>accuracy</th></tr>",
        esc(what)
    );
    for g in groups {
        let name = if g.name.is_empty() {
            "(empty)".to_string()
        } else {
            esc(&g.name)
        };
        let _ = write!(
            t,
            "<tr><td class=\"l\">{name}</td><td>{}</td><td>{}</td></tr>",
            thousands(g.rows),
            g.accuracy().map_or_else(|| "–".to_string(), pct)
        );
    }
    t.push_str("</table>");
    t
}

/// `1,234,567 bytes (1.2 MB)`.
fn file_size(bytes: u64) -> String {
    let mut shown = String::new();
    for (unit, scale) in [("GB", 1e9), ("MB", 1e6), ("kB", 1e3)] {
        if bytes as f64 >= scale {
            shown = format!(" ({:.1} {unit})", bytes as f64 / scale);
            break;
        }
    }
    format!("{} bytes{shown}", thousands(bytes as usize))
}

/// For a run trained with a peft method: what it trained and keeps, beside the base model.
fn adapter_section(w: &mut String, run: &RunDir, recipe: &str, summary: &Value) -> Result<()> {
    let Ok(recipe) = recipe.parse::<toml::Table>() else {
        return Ok(());
    };
    let method = recipe
        .get("peft")
        .and_then(|p| p.get("method"))
        .and_then(|m| m.as_str())
        // A recipe without `[peft]` trains the default method.
        .unwrap_or("prefix-tuning");
    if method == "full" {
        return Ok(());
    }
    let mut t = format!(
        "<h2>Adapter</h2><table><tr><th class=\"l\">peft method</th><td class=\"l\">\
         <code>{}</code></td></tr>",
        esc(method)
    );
    let params = &summary["params"];
    if let (Some(trainable), Some(total)) = (params["trainable"].as_u64(), params["total"].as_u64())
    {
        let share = trainable as f64 / total.max(1) as f64;
        let _ = write!(
            t,
            "<tr><th class=\"l\">trainable parameters</th><td>{} ({:.2}% of all)</td></tr>\
             <tr><th class=\"l\">base model parameters (frozen)</th><td>{}</td></tr>\
             <tr><th class=\"l\">all parameters</th><td>{}</td></tr>",
            thousands(trainable as usize),
            share * 100.0,
            thousands(total.saturating_sub(trainable) as usize),
            thousands(total as usize)
        );
    }
    let peft = run.peft_adapter().join("adapter_model.safetensors");
    for (path, shown) in [
        (peft, "adapter/adapter_model.safetensors"),
        (run.adapter(), "adapter.safetensors"),
    ] {
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.is_file()
        {
            let _ = write!(
                t,
                "<tr><th class=\"l\">on disk (<code>{shown}</code>)</th><td>{}</td></tr>",
                file_size(meta.len())
            );
            break;
        }
    }
    writeln!(w, "{t}</table>")?;
    Ok(())
}

#[cfg(test)]
mod tests;
