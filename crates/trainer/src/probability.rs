//! Class probabilities from logits, and the most probable class: what the classifier answers
//! with and what calibration and evaluation measure, so all three share one definition.

/// `softmax(logits / temperature)` of one row, computed stably in f64.
pub fn softmax(logits: &[f32], temperature: f64) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature).exp())
        .collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| (e / sum) as f32).collect()
}

/// Index and value of the largest probability.
pub fn argmax(probs: &[f32]) -> (usize, f32) {
    probs.iter().copied().enumerate().fold(
        (0, f32::MIN),
        |best, (i, p)| if p > best.1 { (i, p) } else { best },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_with_a_temperature_keeps_the_order() {
        let p = softmax(&[2.0, 0.0, -1.0], 2.0);
        assert!(p[0] > p[1] && p[1] > p[2]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let sharp = softmax(&[2.0, 0.0, -1.0], 1.0);
        assert!(sharp[0] > p[0]);
    }
}
