//! The decision threshold for downranking: precision/recall of the positive label (clickbait)
//! as its probability threshold moves, and the threshold that reaches a wanted precision.
//!
//! A feed that downranks what the model flags cares about precision (how many flagged titles
//! really are clickbait) more than accuracy; `trainer eval --target-precision 0.95` finds the
//! lowest threshold (so the highest recall) whose precision reaches 0.95 on labelled data, and
//! `--save-threshold` stores it in the run for `predict` and `serve`.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One point of the curve: flag when `p(positive) >= threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub threshold: f32,
    pub precision: f64,
    pub recall: f64,
    /// How many items are flagged at this threshold.
    pub flagged: usize,
}

/// The precision/recall curve, one point per distinct score, thresholds descending.
pub fn pr_curve(scores: &[f32], positive: &[bool]) -> Vec<CurvePoint> {
    let total_pos = positive.iter().filter(|&&p| p).count();
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = Vec::new();
    let (mut tp, mut flagged) = (0usize, 0usize);
    for (k, &i) in order.iter().enumerate() {
        flagged += 1;
        if positive[i] {
            tp += 1;
        }
        // Ties flag together: emit a point only after the last item of a score.
        let last_of_score = order.get(k + 1).is_none_or(|&j| scores[j] != scores[i]);
        if last_of_score {
            points.push(CurvePoint {
                threshold: scores[i],
                precision: tp as f64 / flagged as f64,
                recall: if total_pos == 0 {
                    0.0
                } else {
                    tp as f64 / total_pos as f64
                },
                flagged,
            });
        }
    }
    points
}

/// The threshold with the most recall among those whose precision reaches `target`; among
/// equal recall the highest (it flags fewer items for the same catch).
pub fn for_precision(curve: &[CurvePoint], target: f64) -> Option<CurvePoint> {
    curve
        .iter()
        .filter(|p| p.precision >= target)
        .max_by(|a, b| {
            a.recall
                .total_cmp(&b.recall)
                .then(a.threshold.total_cmp(&b.threshold))
        })
        .copied()
}

/// For each recall level, the point that reaches it with the highest threshold (the fewest
/// items flagged). Levels rather than fixed thresholds, because a model's scores may sit in a
/// narrow band (a briefly trained one answers 0.45-0.55): recall levels read the same for any
/// calibration. Repeated points (one point covering several levels) are listed once.
pub fn at_recalls(curve: &[CurvePoint], levels: &[f64]) -> Vec<CurvePoint> {
    let mut out: Vec<CurvePoint> = Vec::new();
    for &level in levels {
        if let Some(p) = curve.iter().find(|p| p.recall >= level - 1e-9)
            && out.last() != Some(p)
        {
            out.push(*p);
        }
    }
    out
}

/// The label downranking is about: `clickbait` / `标题党` itself, else the first label naming
/// it that is not its negation (`not_clickbait`, `非标题党` name it too).
pub fn default_positive(labels: &[String]) -> Option<usize> {
    const NAMES: [&str; 2] = ["clickbait", "标题党"];
    const NEGATIONS: [&str; 5] = ["not", "non", "no_", "非", "不"];
    labels
        .iter()
        .position(|l| NAMES.contains(&l.as_str()))
        .or_else(|| {
            labels.iter().position(|l| {
                NAMES.iter().any(|n| l.contains(n)) && !NEGATIONS.iter().any(|n| l.starts_with(n))
            })
        })
}

/// `value` is a probability (0 to 1); `name` is the key or flag it came from.
pub fn check_probability(name: &str, value: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&value) {
        anyhow::bail!("{name} must be between 0 and 1, got {value}");
    }
    Ok(())
}

/// A stored decision rule (`threshold.json` in a run directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// The positive label.
    pub label: String,
    /// Flag as `label` when its probability is at least this.
    pub threshold: f32,
    pub target_precision: f64,
    /// Precision and recall at the threshold on the data it was chosen on.
    pub precision: f64,
    pub recall: f64,
    pub data: String,
}

impl Threshold {
    pub fn read(path: &Path) -> Result<Option<Self>> {
        if !path.is_file() {
            return Ok(None);
        }
        let text = bert_model::fsutil::read_small_text(path)?;
        let t: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a threshold file", path.display()))?;
        t.check().with_context(|| path.display().to_string())?;
        Ok(Some(t))
    }

    /// The threshold and the precision it was chosen for are probabilities.
    pub fn check(&self) -> Result<()> {
        check_probability("threshold", self.threshold as f64)?;
        check_probability("target_precision", self.target_precision)
    }

    /// The decided label index for class probabilities `probs`: the positive label when its
    /// probability reaches the threshold, else the most probable other label.
    pub fn decide(&self, positive: usize, probs: &[f32]) -> usize {
        if probs[positive] >= self.threshold {
            return positive;
        }
        probs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != positive)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(positive, |(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_and_threshold_on_a_known_ranking() {
        // Scores descending: P P N P N N (P = positive).
        let scores = [0.9, 0.8, 0.7, 0.6, 0.4, 0.2];
        let pos = [true, true, false, true, false, false];
        let curve = pr_curve(&scores, &pos);
        let got: Vec<(f32, f64, f64)> = curve
            .iter()
            .map(|p| (p.threshold, p.precision, p.recall))
            .collect();
        assert_eq!(
            got,
            [
                (0.9, 1.0, 1.0 / 3.0),
                (0.8, 1.0, 2.0 / 3.0),
                (0.7, 2.0 / 3.0, 2.0 / 3.0),
                (0.6, 0.75, 1.0),
                (0.4, 0.6, 1.0),
                (0.2, 0.5, 1.0),
            ]
        );
        // Precision 1.0: the lowest such threshold is 0.8 (recall 2/3).
        assert_eq!(for_precision(&curve, 1.0).unwrap().threshold, 0.8);
        // Precision 0.7: 0.6 reaches 0.75 with full recall.
        assert_eq!(for_precision(&curve, 0.7).unwrap().threshold, 0.6);
        assert_eq!(for_precision(&curve, 0.5).unwrap().threshold, 0.6);
        assert!(for_precision(&pr_curve(&[0.5], &[false]), 0.9).is_none());
    }

    #[test]
    fn points_at_recall_levels() {
        let scores = [0.9, 0.8, 0.7, 0.6, 0.4, 0.2];
        let pos = [true, true, false, true, false, false];
        let curve = pr_curve(&scores, &pos);
        let got: Vec<f32> = at_recalls(&curve, &[1.0, 0.9, 0.5, 0.3, 0.1])
            .iter()
            .map(|p| p.threshold)
            .collect();
        // Recall 1 (and 0.9) first at 0.6; 0.5 at 0.8; 0.3 and 0.1 at 0.9.
        assert_eq!(got, [0.6, 0.8, 0.9]);
        assert!(at_recalls(&[], &[0.5]).is_empty());
    }

    #[test]
    fn ties_flag_together() {
        let curve = pr_curve(&[0.5, 0.5, 0.1], &[true, false, true]);
        assert_eq!(curve.len(), 2);
        assert_eq!((curve[0].flagged, curve[0].precision), (2, 0.5));
    }

    #[test]
    fn positive_label_and_decision() {
        let en = ["clickbait".to_string(), "not_clickbait".to_string()];
        assert_eq!(default_positive(&en), Some(0));
        let zh = ["非标题党".to_string(), "标题党".to_string()];
        assert_eq!(default_positive(&zh), Some(1));
        let other = ["non-clickbait".to_string(), "clickbait-ish".to_string()];
        assert_eq!(default_positive(&other), Some(1));
        assert_eq!(default_positive(&["a".into(), "b".into()]), None);
        let t = Threshold {
            label: "clickbait".into(),
            threshold: 0.8,
            target_precision: 0.95,
            precision: 0.96,
            recall: 0.5,
            data: "v.csv".into(),
        };
        assert_eq!(t.decide(0, &[0.7, 0.3]), 1);
        assert_eq!(t.decide(0, &[0.85, 0.15]), 0);
    }
}
