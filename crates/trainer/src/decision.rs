//! How a label is decided from class probabilities, and what decided it: the most probable
//! label, or a saved threshold on the positive label's probability (which can flag a text whose
//! score is under 0.5, so `predict` and `serve` show the threshold beside the label).

use crate::probability::argmax;
use crate::threshold::Threshold;

/// The decided label: by a threshold on its positive label when there is one, else the most
/// probable label.
pub fn decide(threshold: Option<&(usize, Threshold)>, probs: &[f32]) -> usize {
    match threshold {
        Some((positive, t)) => t.decide(*positive, probs),
        None => argmax(probs).0,
    }
}

/// A decided label and what decided it: `predict` and `serve` show the threshold in force
/// beside the label, since under one a label can come with a score below 0.5.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The decided label's index ([`decide`]).
    pub label: usize,
    /// Its probability.
    pub score: f32,
    /// The decision threshold in force, if any.
    pub by_threshold: Option<ByThreshold>,
}

/// A decision threshold as it was applied to one text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByThreshold {
    /// The positive label's index.
    pub positive: usize,
    /// The positive label's probability.
    pub p_positive: f32,
    /// The threshold it was compared with (flagged when `p_positive >= threshold`).
    pub threshold: f32,
}

impl ByThreshold {
    /// Whether the positive label's probability reached the threshold.
    pub fn reached(&self) -> bool {
        self.p_positive >= self.threshold
    }

    /// `p(clickbait)=0.3165 >= threshold 0.2870`, or `p(clickbait)=0.1200 <  threshold 0.2870`
    /// (the same width either way). Four decimals, more where four would show the two equal
    /// while they differ, so the comparison shown always reads true.
    pub fn describe(&self, positive: &str) -> String {
        let (p, t) = distinct_figures(self.p_positive, self.threshold);
        let op = if self.reached() { ">=" } else { "< " };
        format!("p({positive})={p} {op} threshold {t}")
    }
}

/// `a` and `b` with four decimals, or as many more (up to nine) as tell them apart.
fn distinct_figures(a: f32, b: f32) -> (String, String) {
    let mut digits = 4;
    loop {
        let (x, y) = (format!("{a:.digits$}"), format!("{b:.digits$}"));
        if x != y || a == b || digits >= 9 {
            return (x, y);
        }
        digits += 1;
    }
}

impl Decision {
    /// The fields a JSON answer adds when a threshold is in force: `threshold`, `positive`
    /// (the label it is on) and `p_positive` (as `probabilities` gives it); none otherwise.
    pub fn threshold_fields(
        &self,
        labels: &[String],
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        if let Some(b) = &self.by_threshold {
            // As threshold.json writes it (the shortest decimal of the f32 compared), not
            // widened to 0.28700000047683716.
            let threshold = b.threshold.to_string().parse::<f64>().ok();
            fields.insert("threshold".into(), serde_json::json!(threshold));
            fields.insert("positive".into(), serde_json::json!(labels[b.positive]));
            fields.insert("p_positive".into(), serde_json::json!(b.p_positive));
        }
        fields
    }
}

/// [`decide`], with the threshold and the positive label's probability that decided it.
pub fn decision(threshold: Option<&(usize, Threshold)>, probs: &[f32]) -> Decision {
    let label = decide(threshold, probs);
    Decision {
        label,
        score: probs[label],
        by_threshold: threshold.map(|(positive, t)| ByThreshold {
            positive: *positive,
            p_positive: probs[*positive],
            threshold: t.threshold,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(t: f32) -> (usize, Threshold) {
        let t = Threshold {
            label: "clickbait".into(),
            threshold: t,
            target_precision: 0.95,
            precision: 0.95,
            recall: 0.5,
            data: "v.csv".into(),
        };
        (0, t)
    }

    #[test]
    fn a_decision_shows_the_threshold_that_made_it() {
        let labels = ["clickbait".to_string(), "not_clickbait".to_string()];
        let t = threshold(0.287);
        let d = decision(Some(&t), &[0.3165, 0.6835]);
        assert_eq!((d.label, d.score), (0, 0.3165));
        let b = d.by_threshold.unwrap();
        assert_eq!(
            b.describe("clickbait"),
            "p(clickbait)=0.3165 >= threshold 0.2870"
        );
        let fields = d.threshold_fields(&labels);
        assert_eq!(fields["positive"], "clickbait");
        assert_eq!(fields["threshold"].to_string(), "0.287");
        assert_eq!(fields["p_positive"].as_f64().unwrap() as f32, 0.3165);

        let d = decision(Some(&t), &[0.12, 0.88]);
        assert_eq!(d.label, 1);
        let below = d.by_threshold.unwrap().describe("clickbait");
        assert_eq!(below, "p(clickbait)=0.1200 <  threshold 0.2870");
        assert_eq!(below.len(), "p(clickbait)=0.3165 >= threshold 0.2870".len());

        // Without a threshold: the argmax, nothing added.
        let d = decision(None, &[0.3165, 0.6835]);
        assert_eq!((d.label, d.by_threshold), (1, None));
        assert!(d.threshold_fields(&labels).is_empty());
    }

    #[test]
    fn close_figures_get_the_digits_that_tell_them_apart() {
        let t = threshold(0.287049);
        let b = decision(Some(&t), &[0.287041, 0.712959])
            .by_threshold
            .unwrap();
        assert_eq!(b.describe("c"), "p(c)=0.28704 <  threshold 0.28705");
        let t = threshold(0.5);
        let b = decision(Some(&t), &[0.5, 0.5]).by_threshold.unwrap();
        assert_eq!(b.describe("c"), "p(c)=0.5000 >= threshold 0.5000");
    }
}
