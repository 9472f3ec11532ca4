//! Dropout whose mask is made on the host on CPU backends.
//!
//! Burn's `nn::Dropout` samples its mask through `TensorData::random`: one ChaCha draw and one
//! distribution call per element, then a separate multiply. On a CPU backend the mask is drawn
//! on the host by a small generator instead (wyrand, two elements per 64-bit draw), seeded from
//! the device's RNG so runs stay reproducible from `train.seed` and resume exactly. On Flex,
//! [`crate::kernels::dropout`] draws it as it scales the input, in place, on every core, and
//! draws it again from the seed for the backward pass instead of keeping it. GPU backends keep
//! Burn's on-device sampling (a host mask would have to cross the bus).
//!
//! Same API and semantics as `burn::nn::Dropout`: identity outside training (no autodiff, or
//! the training flag off) and for `prob = 0`; otherwise keep with probability `1 - prob` and
//! scale the kept values by `1 / (1 - prob)`.

use burn::module::{Flag, Param};
use burn::prelude::*;
use burn::tensor::Distribution;

/// `burn::nn::DropoutConfig`'s counterpart.
#[derive(Debug, Clone, Copy)]
pub struct DropoutConfig {
    pub prob: f64,
}

impl DropoutConfig {
    pub fn new(prob: f64) -> Self {
        Self { prob }
    }

    /// Panics on a probability outside `[0, 1)`, as Burn's does (configs are validated with a
    /// named error before a model is built).
    pub fn init(&self) -> Dropout {
        assert!(
            self.prob.is_finite() && (0.0..1.0).contains(&self.prob),
            "dropout probability must be in [0, 1), got {}",
            self.prob
        );
        Dropout {
            prob: self.prob,
            training: Param::from_bool(true),
        }
    }
}

#[derive(Module, Debug)]
pub struct Dropout {
    pub prob: f64,
    pub training: Param<Flag>,
}

impl Dropout {
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let device = input.device();
        if !self.training.is_enabled() || !device.is_autodiff() || self.prob == 0.0 {
            return input;
        }
        let keep = 1.0 - self.prob;
        if !crate::kernels::is_host(&device) {
            let random = input.random_like(Distribution::Bernoulli(keep));
            return input * random * (1.0 / keep);
        }
        crate::kernels::dropout(input, keep, draw_seed(&device))
    }
}

/// 64 bits from the device's seeded RNG (three uniform floats' mantissas, drawn as f32 whatever
/// the device's float type: bf16 would leave 21 random bits, and masks would repeat).
fn draw_seed(device: &Device) -> u64 {
    let f32 = (device, burn::tensor::DType::F32);
    let draws = Tensor::<1>::random([3], Distribution::Uniform(0.0, 1.0), f32)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 draws");
    draws
        .iter()
        .fold(0u64, |acc, x| acc.rotate_left(23) ^ u64::from(x.to_bits()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bernoulli_mask;

    #[test]
    fn mask_keeps_the_requested_share_scaled() {
        let n = 200_001;
        for keep in [0.9, 0.5, 0.1] {
            let mask = bernoulli_mask(n, keep, 7);
            assert_eq!(mask.len(), n);
            let scale = (1.0 / keep) as f32;
            assert!(mask.iter().all(|&v| v == 0.0 || v == scale));
            let kept = mask.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
            // Binomial std at n = 200k is ~0.001: 0.005 is a 5-sigma band.
            assert!((kept - keep).abs() < 0.005, "keep {keep}: kept {kept}");
            // The mean is preserved, which is what the scaling is for.
            let mean = mask.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
            assert!((mean - 1.0).abs() < 0.02, "keep {keep}: mean {mean}");
        }
        assert_eq!(bernoulli_mask(1000, 0.5, 1), bernoulli_mask(1000, 0.5, 1));
        assert_ne!(bernoulli_mask(1000, 0.5, 1), bernoulli_mask(1000, 0.5, 2));
        // Neighbouring elements are not correlated (both halves of a draw are used).
        let mask = bernoulli_mask(100_000, 0.5, 3);
        let both = mask
            .chunks(2)
            .filter(|p| p[0] != 0.0 && p[1] != 0.0)
            .count() as f64
            / 50_000.0;
        assert!((both - 0.25).abs() < 0.01, "{both}");
    }

    #[test]
    fn identity_outside_training_and_seeded_in_training() {
        let device = Device::default();
        let x = Tensor::<2>::ones([64, 64], &device);
        let dropout = DropoutConfig::new(0.3).init();
        let same = dropout.forward(x.clone()).into_data();
        assert_eq!(same, x.into_data());

        let train = device.clone().autodiff();
        let run = || {
            train.seed(5);
            let x = Tensor::<2>::ones([64, 64], &train);
            dropout.forward(x).into_data().try_to_vec::<f32>().unwrap()
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b, "the device seed fixes the mask");
        let zeros = a.iter().filter(|&&v| v == 0.0).count();
        assert!((900..1560).contains(&zeros), "{zeros} of 4096 dropped");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
    }
}
