//! Layer normalisation over the last dimension, HF's `nn.LayerNorm`, computed by
//! [`kernels::layer_norm`] (one pass per row on Flex, with a hand-written backward).
//!
//! Burn's `nn::LayerNorm` has the same parameters (`gamma`, `beta`, so the same record and
//! checkpoint paths) but keeps its epsilon private, and under autodiff its forward decomposes
//! into nine tracked tensor operations per call.

use burn::module::Param;
use burn::prelude::*;

use crate::kernels;

#[derive(Module, Debug)]
pub struct LayerNorm {
    pub gamma: Param<Tensor<1>>,
    pub beta: Option<Param<Tensor<1>>>,
    epsilon: f64,
}

impl LayerNorm {
    /// Ones and zeros, as `nn.LayerNorm` starts.
    pub fn new(d_model: usize, epsilon: f64, device: &Device) -> Self {
        Self::from_parts(
            Tensor::ones([d_model], device),
            Tensor::zeros([d_model], device),
            epsilon,
        )
    }

    /// From loaded weights.
    pub fn from_parts(gamma: Tensor<1>, beta: Tensor<1>, epsilon: f64) -> Self {
        Self {
            gamma: Param::from_tensor(gamma),
            beta: Some(Param::from_tensor(beta)),
            epsilon,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernels::layer_norm(
            x,
            self.gamma.val(),
            self.beta.as_ref().map(|b| b.val()),
            self.epsilon,
        )
    }
}
