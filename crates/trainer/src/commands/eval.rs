//! `trainer eval`: accuracy, per-class precision/recall/F1, macro F1, loss and the confusion
//! matrix of a trained run on a labelled CSV.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::calibration::ECE_BINS;
use crate::commands::classifier::ModelArgs;
use crate::device::DeviceChoice;
use crate::evaluation::{Evaluation, evaluate_csv};
use crate::report::analysis::{self, Mistake, Mistakes};
use crate::threshold::{
    CurvePoint, Threshold, at_recalls, default_positive, for_precision, pr_curve,
};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Labelled CSV (default: the run's own validation split).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Column of --data holding the text (default: the run's `data.text_column`, else `title`).
    #[arg(long, value_name = "NAME")]
    pub text_column: Option<String>,
    /// Column of --data holding the label (default: the run's `data.label_column`, else
    /// `label`).
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,
    /// Print one JSON object instead of a report.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// The label to flag (default: `clickbait` / `标题党`, see the precision/recall section).
    #[arg(long)]
    pub positive: Option<String>,
    /// Report the lowest threshold on p(positive) whose precision reaches this.
    #[arg(long, default_value_t = 0.95)]
    pub target_precision: f64,
    /// Store that threshold in the run (threshold.json), for `predict` and `serve`.
    #[arg(long, requires = "run")]
    pub save_threshold: bool,
    /// After the report, the N most confident mistakes of each kind (false positives and
    /// false negatives of the positive label; with more labels, mistakes of any kind), decided
    /// as `predict` decides; with --json under "errors".
    #[arg(long, value_name = "N")]
    pub errors: Option<usize>,
}

pub fn run(args: EvalArgs, choice: &DeviceChoice) -> Result<()> {
    crate::threshold::check_probability("--target-precision", args.target_precision)?;
    crate::commands::check_batch_size(args.batch_size)?;
    let device = choice.device();
    let run = args.model.load(choice)?;
    let data = match (&args.data, &run.dir) {
        (Some(data), _) => data.clone(),
        (None, Some(dir)) => dir.valid_csv(),
        (None, None) => anyhow::bail!("--data CSV is needed with --model"),
    };
    let mut columns = run
        .config
        .data
        .columns()
        .chosen_by("--text-column", "--label-column");
    if let Some(text) = args.text_column {
        columns.text = text;
    }
    if let Some(label) = args.label_column {
        columns.label = label;
    }
    let eval = evaluate_csv(&run, &data, &columns, args.batch_size, device)?;
    let names = run.labels.names();
    let positive = match &args.positive {
        Some(l) => Some(run.labels.index(l).ok_or_else(|| {
            anyhow::anyhow!("--positive {l}: not a label (labels: {})", names.join(", "))
        })?),
        None => default_positive(names),
    };
    let curve = positive.map(|p| {
        let scores: Vec<f32> = eval.probabilities.iter().map(|q| q[p]).collect();
        let truth: Vec<bool> = eval.targets.iter().map(|&t| t == p).collect();
        pr_curve(&scores, &truth)
    });
    let chosen = curve
        .as_ref()
        .and_then(|c| for_precision(c, args.target_precision));
    let mut report = report_json(&eval, names);
    if let (Some(p), Some(curve)) = (positive, &curve) {
        report["precision_recall"] = json!({
            "positive": names[p],
            "curve": at_recalls(curve, &json_recalls()),
            "target_precision": args.target_precision,
            "threshold": chosen,
        });
    }
    // Mistakes are decided as `predict` decides: by the run's threshold, else the argmax.
    let errors = args.errors.map(|n| {
        let decided = analysis::decisions(&eval, run.threshold.as_ref());
        let error_positive = match (&args.positive, &run.threshold) {
            (None, Some((p, _))) => Some(*p),
            _ => positive,
        };
        analysis::mistakes(&eval, &decided, error_positive, n)
    });
    if let Some(errors) = &errors {
        let mut value = errors.to_json(&eval, names);
        value["decided_by"] = match &run.threshold {
            Some((p, t)) => {
                // As threshold.json writes it, not widened from f32.
                let threshold = t.threshold.to_string().parse::<f64>().ok();
                json!({"threshold": threshold, "positive": names[*p]})
            }
            None => json!("most probable label"),
        };
        report["errors"] = value;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&eval, names, &data);
        if let (Some(p), Some(curve)) = (positive, &curve) {
            print_curve(&names[p], curve, args.target_precision, chosen.as_ref());
        }
        if let Some(errors) = &errors {
            print_errors(errors, &eval, names, run.threshold.as_ref());
        }
    }
    if args.save_threshold {
        let (Some(p), Some(point), Some(dir)) = (positive, chosen, &run.dir) else {
            anyhow::bail!(
                "no threshold reaches precision {} for the positive label on {}; nothing saved",
                args.target_precision,
                data.display()
            );
        };
        let t = Threshold {
            label: names[p].clone(),
            threshold: point.threshold,
            target_precision: args.target_precision,
            precision: point.precision,
            recall: point.recall,
            data: data.display().to_string(),
        };
        crate::run::write_json(&dir.threshold(), &serde_json::to_value(&t)?)?;
        eprintln!("saved {}", dir.threshold().display());
    }
    Ok(())
}

/// Characters of a text a printed mistake shows.
const SHOWN_CHARS: usize = 100;

/// A text on one line: control characters as spaces, cut at [`SHOWN_CHARS`] (`…` marking a
/// cut).
fn one_line(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(SHOWN_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn print_errors(
    errors: &Mistakes,
    eval: &Evaluation,
    labels: &[String],
    threshold: Option<&(usize, crate::threshold::Threshold)>,
) {
    println!();
    match threshold {
        Some((p, t)) => println!(
            "most confident mistakes, decided as predict decides: by the saved threshold p({}) >= {}",
            labels[*p], t.threshold
        ),
        None => println!(
            "most confident mistakes, decided as predict decides: by the most probable label"
        ),
    }
    let text = |m: &Mistake| one_line(eval.texts.get(m.index).map_or("", String::as_str));
    let print = |items: &[Mistake], score: &dyn Fn(&Mistake) -> String| {
        if items.is_empty() {
            println!("  none");
        }
        for m in items {
            println!(
                "  {}  true {:<w$}  {}",
                score(m),
                labels[m.truth],
                text(m),
                w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0)
            );
        }
    };
    match errors {
        Mistakes::Binary {
            positive,
            false_positives,
            false_negatives,
        } => {
            let name = &labels[*positive];
            let score = |m: &Mistake| format!("p({name})={:.4}", m.p_positive.unwrap_or(0.0));
            println!("false positives (decided `{name}`, truly not), highest p({name}) first:");
            print(false_positives, &score);
            println!(
                "false negatives (truly `{name}`, decided otherwise), lowest p({name}) first:"
            );
            print(false_negatives, &score);
        }
        Mistakes::Overall(items) => {
            println!("highest probability of the predicted label first:");
            let score = |m: &Mistake| format!("{}={:.4}", labels[m.predicted], m.p_predicted);
            print(items, &score);
        }
    }
}

/// Recall levels the printed table shows (the JSON has every 5%).
const TABLE_RECALLS: [f64; 11] = [1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1];

fn json_recalls() -> Vec<f64> {
    (1..=20).rev().map(|i| i as f64 * 0.05).collect()
}

fn print_curve(label: &str, curve: &[CurvePoint], target: f64, chosen: Option<&CurvePoint>) {
    println!();
    println!(
        "precision/recall of `{label}` when flagging p({label}) >= threshold, at recall levels:"
    );
    println!(
        "{:>9} {:>9} {:>9} {:>8}",
        "threshold", "precision", "recall", "flagged"
    );
    for p in at_recalls(curve, &TABLE_RECALLS) {
        println!(
            "{:>9.4} {:>8.2}% {:>8.2}% {:>8}",
            p.threshold,
            100.0 * p.precision,
            100.0 * p.recall,
            p.flagged
        );
    }
    match chosen {
        Some(p) => println!(
            "threshold for precision >= {:.0}%: {:.4} (precision {:.2}%, recall {:.2}%)",
            100.0 * target,
            p.threshold,
            100.0 * p.precision,
            100.0 * p.recall
        ),
        None => println!(
            "no threshold reaches precision {:.0}% on this data",
            100.0 * target
        ),
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
        "calibration": {
            "temperature": eval.temperature,
            "ece": eval.ece,
            "brier": eval.brier,
        },
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
    println!(
        "calibration: expected calibration error {:.4} ({ECE_BINS} bins), Brier score {:.4}, temperature {:.3}",
        eval.ece, eval.brier, eval.temperature
    );
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
