//! Calibrated probabilities: temperature scaling fitted on the validation split, and the figures
//! that say how calibrated a classifier is (expected calibration error, Brier score).
//!
//! A classifier's softmax can rank well and still be over- or under-confident; thresholds
//! (`--target-precision`) and `score` columns need probabilities that mean what they say. One
//! temperature `T` (logits / T) keeps every argmax and fixes most of that (Guo et al., 2017).
//! `train` fits it on the validation split at the end and saves it in the run
//! (`calibration.json`); `predict`, `serve`, `eval` and `eval --save-threshold` all use it. The
//! peft adapter export is unchanged (peft has no place for it).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::probability::{argmax, softmax};

/// The temperatures a fit can reach, and so the ones a `calibration.json` may hold: beyond
/// them the probabilities are all but one-hot or all but uniform, and at the extremes they
/// overflow to NaN.
pub const TEMPERATURES: (f64, f64) = (0.05, 20.0);

/// The bins of [`expected_calibration_error`].
pub const ECE_BINS: usize = 10;

/// A run's fitted temperature and what it did on the split it was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Logits are divided by this before the softmax.
    pub temperature: f64,
    /// Rows of the split it was fitted on.
    pub rows: usize,
    pub nll_before: f64,
    pub nll_after: f64,
    pub ece_before: f64,
    pub ece_after: f64,
}

impl Calibration {
    /// Fits the temperature minimising the mean negative log-likelihood of `targets`.
    pub fn fit(logits: &[Vec<f32>], targets: &[usize]) -> Result<Self> {
        if logits.is_empty() || logits.len() != targets.len() {
            bail!(
                "calibration needs one label per row of logits ({} vs {})",
                logits.len(),
                targets.len()
            );
        }
        let temperature = fit_temperature(logits, targets);
        let before = softmax_all(logits, 1.0);
        let after = softmax_all(logits, temperature);
        Ok(Self {
            temperature,
            rows: logits.len(),
            nll_before: nll(logits, targets, 1.0),
            nll_after: nll(logits, targets, temperature),
            ece_before: expected_calibration_error(&before, targets, ECE_BINS),
            ece_after: expected_calibration_error(&after, targets, ECE_BINS),
        })
    }

    /// `None` when the run has no `calibration.json` (runs trained before it existed).
    pub fn read(path: &Path) -> Result<Option<Self>> {
        if !path.is_file() {
            return Ok(None);
        }
        let text = bert_model::fsutil::read_small_text(path)?;
        let c: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a calibration file", path.display()))?;
        let (lo, hi) = TEMPERATURES;
        if !(lo..=hi).contains(&c.temperature) {
            bail!(
                "{}: temperature must be between {lo} and {hi} (the range `train` fits in), got {}",
                path.display(),
                c.temperature
            );
        }
        Ok(Some(c))
    }
}

fn softmax_all(logits: &[Vec<f32>], temperature: f64) -> Vec<Vec<f32>> {
    logits.iter().map(|l| softmax(l, temperature)).collect()
}

/// Mean negative log-likelihood of `targets` under `softmax(logits / temperature)`.
pub fn nll(logits: &[Vec<f32>], targets: &[usize], temperature: f64) -> f64 {
    let total: f64 = logits
        .iter()
        .zip(targets)
        .map(|(row, &t)| {
            let scaled: Vec<f64> = row.iter().map(|&l| l as f64 / temperature).collect();
            let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + scaled.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
            lse - scaled[t]
        })
        .sum();
    total / logits.len().max(1) as f64
}

/// The temperature in [0.05, 20] with the lowest [`nll`]: golden-section search over its
/// inverse, in which the NLL is convex (a log-sum-exp of linear functions plus a linear term).
pub fn fit_temperature(logits: &[Vec<f32>], targets: &[usize]) -> f64 {
    let f = |beta: f64| nll(logits, targets, 1.0 / beta);
    // Golden-section search over beta = 1 / T, within [`TEMPERATURES`].
    let (mut lo, mut hi) = (1.0 / TEMPERATURES.1, 1.0 / TEMPERATURES.0);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (hi - g * (hi - lo), lo + g * (hi - lo));
    let (mut fa, mut fb) = (f(a), f(b));
    for _ in 0..80 {
        if fa < fb {
            hi = b;
            (b, fb) = (a, fa);
            a = hi - g * (hi - lo);
            fa = f(a);
        } else {
            lo = a;
            (a, fa) = (b, fb);
            b = lo + g * (hi - lo);
            fb = f(b);
        }
    }
    1.0 / ((lo + hi) / 2.0)
}

/// Expected calibration error of the top label: items binned by their highest probability
/// into `bins` equal-width bins; the mean over items of |accuracy − confidence| of their bin.
pub fn expected_calibration_error(probs: &[Vec<f32>], targets: &[usize], bins: usize) -> f64 {
    let n = probs.len().max(1) as f64;
    reliability(probs, targets, bins)
        .iter()
        .map(|b| b.count as f64 * (b.accuracy - b.confidence).abs() / n)
        .sum()
}

/// One confidence bin of a reliability diagram: the items whose top probability falls in
/// `[lower, upper)` (the last bin includes 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReliabilityBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean top probability of the bin's items, and the fraction of them predicted right
    /// (both 0 for an empty bin).
    pub confidence: f64,
    pub accuracy: f64,
}

/// `bins` equal-width bins of top-class confidence, with each bin's mean confidence and
/// accuracy: a calibrated classifier has the two equal in every bin.
pub fn reliability(probs: &[Vec<f32>], targets: &[usize], bins: usize) -> Vec<ReliabilityBin> {
    let bins = bins.max(1);
    let mut count = vec![0usize; bins];
    let mut correct = vec![0usize; bins];
    let mut confidence = vec![0f64; bins];
    for (p, &t) in probs.iter().zip(targets) {
        let (top, conf) = argmax(p);
        let bin = ((conf as f64 * bins as f64) as usize).min(bins - 1);
        count[bin] += 1;
        correct[bin] += usize::from(top == t);
        confidence[bin] += conf as f64;
    }
    (0..bins)
        .map(|b| {
            let n = count[b].max(1) as f64;
            ReliabilityBin {
                lower: b as f64 / bins as f64,
                upper: (b + 1) as f64 / bins as f64,
                count: count[b],
                confidence: confidence[b] / n,
                accuracy: correct[b] as f64 / n,
            }
        })
        .collect()
}

/// Brier score: the mean over items of Σ_k (p_k − [k = target])².
pub fn brier(probs: &[Vec<f32>], targets: &[usize]) -> f64 {
    let total: f64 = probs
        .iter()
        .zip(targets)
        .map(|(p, &t)| {
            p.iter()
                .enumerate()
                .map(|(k, &q)| (q as f64 - f64::from(u8::from(k == t))).powi(2))
                .sum::<f64>()
        })
        .sum();
    total / probs.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_and_brier_on_known_cases() {
        // Confident and right: no calibration error, Brier 0.
        let probs = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        assert_eq!(expected_calibration_error(&probs, &[0, 1], 10), 0.0);
        assert_eq!(brier(&probs, &[0, 1]), 0.0);
        // 0.9 confident, right half the time: |0.5 - 0.9| = 0.4.
        let probs = vec![vec![0.9, 0.1]; 4];
        let ece = expected_calibration_error(&probs, &[0, 1, 0, 1], 10);
        assert!((ece - 0.4).abs() < 1e-6, "{ece}");
        // Brier: half (0.1² + 0.1²), half (0.9² + 0.9²).
        assert!((brier(&probs, &[0, 1, 0, 1]) - 0.82).abs() < 1e-6);
    }

    #[test]
    fn the_fitted_temperature_undoes_a_known_scaling() {
        // Labels drawn from softmax(z); logits given as 4 z: overconfident by a factor 4.
        let mut state = 42u64;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut logits, mut targets) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let z = 4.0 * (uniform() - 0.5);
            let p1 = 1.0 / (1.0 + (-z).exp());
            targets.push(usize::from(uniform() < p1));
            logits.push(vec![0.0, (4.0 * z) as f32]);
        }
        let c = Calibration::fit(&logits, &targets).unwrap();
        assert!((c.temperature - 4.0).abs() < 0.3, "{c:?}");
        assert!(
            c.nll_after < c.nll_before && c.ece_after < c.ece_before,
            "{c:?}"
        );
        assert!(c.ece_after < 0.02, "{c:?}");
    }
}
