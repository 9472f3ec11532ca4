//! `report.html` in a run directory: one self-contained page (inline SVG, no scripts, no
//! network) to look at before trusting a run: loss, accuracy and macro F1 per epoch, the
//! precision-recall curve of the positive label with the decision thresholds marked, the
//! confusion matrix, a reliability diagram, the recipe and the data counts.
//!
//! `train` writes it at the end; `trainer report --run DIR` writes it again (after
//! `eval --save-threshold`, say).

mod charts;

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bert_data::LabelMap;
use serde_json::Value;

use crate::calibration::{Calibration, ECE_BINS, reliability};
use crate::evaluation::Evaluation;
use crate::run::RunDir;
use crate::threshold::{CurvePoint, Threshold, default_positive, for_precision, pr_curve};
use charts::{Marker, Series, padded};

/// The precision `eval --target-precision` aims at by default, marked when no threshold is
/// saved.
const TARGET_PRECISION: f64 = 0.95;

/// Writes the run's `report.html` from its files and `eval`, its validation split evaluated
/// at the run's temperature; returns the path.
pub fn write(run: &RunDir, eval: &Evaluation) -> Result<PathBuf> {
    let labels = LabelMap::read(&run.labels())?;
    let html = render(run, labels.names(), eval)?;
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

fn render(run: &RunDir, labels: &[String], eval: &Evaluation) -> Result<String> {
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

    writeln!(w, "<h2>Training</h2><div class=\"row\">")?;
    for chart in epoch_charts(&metrics)? {
        writeln!(w, "<figure>{chart}</figure>")?;
    }
    writeln!(w, "</div>")?;

    writeln!(
        w,
        "<h2>Decisions on the validation split</h2><div class=\"row\">"
    )?;
    let positive = threshold
        .as_ref()
        .and_then(|t| labels.iter().position(|l| *l == t.label))
        .or_else(|| default_positive(labels));
    if let Some((p, label)) = positive.and_then(|p| Some((p, labels.get(p)?))) {
        let (chart, notes) = precision_recall(eval, label, p, threshold.as_ref())?;
        writeln!(
            w,
            "<figure>{chart}<figcaption>{notes}</figcaption></figure>"
        )?;
    }
    writeln!(w, "<figure>{}</figure></div>", confusion(labels, eval))?;

    writeln!(w, "<h2>Calibration</h2><div class=\"row\">")?;
    let bins = reliability(&eval.probabilities, &eval.targets, ECE_BINS);
    writeln!(w, "<figure>{}</figure>", charts::reliability(&bins)?)?;
    writeln!(
        w,
        "<figure>{}</figure></div>",
        calibration_table(calibration.as_ref(), eval)
    )?;

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
        items.push(("trained parameters", format!("{t} ({:.2}%)", share * 100.0)));
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
            m.flagged
        )
    };
    let mut marks = Vec::new();
    let mut notes = Vec::new();
    match saved {
        Some(t) => {
            if let Some(point) = at_threshold(&curve, t.threshold) {
                notes.push(format!(
                    "Saved threshold (threshold.json, chosen for precision {}): {}.",
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
                    "No threshold saved; for precision {} (`trainer eval --save-threshold`): {}.",
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
    Ok((chart, esc(&notes.join(" "))))
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
                "<td style=\"background:rgba(31,119,180,{:.2})\">{n}</td>",
                share * 0.6
            );
        }
        let _ = write!(t, "<td>{}</td></tr>", pct(eval.confusion.recall(i)));
    }
    t.push_str("<tr><th class=\"l\">precision</th>");
    for c in 0..counts.len() {
        let _ = write!(t, "<td>{}</td>", pct(eval.confusion.precision(c)));
    }
    let _ = write!(t, "<td></td></tr></table><p>{} rows.</p>", eval.rows);
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
        let _ = write!(t, "<tr><th class=\"l\">rows read</th><td>{n}</td></tr>");
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
                    .map(|(n, l)| format!("{} {}", esc(l), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(total) = total {
            let _ = write!(
                t,
                "<tr><th class=\"l\">{split}</th><td>{total}</td><td class=\"l\">{}</td></tr>",
                per.join(", ")
            );
        }
    }
    t.push_str("</table>");
    t
}

#[cfg(test)]
mod tests;
