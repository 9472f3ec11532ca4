//! BERT's linear layer: `x W + b` through [`crate::kernels::linear`] (one fused product with
//! the bias on the host backends).
//!
//! Its parameters keep the names of a plain linear (`weight`, `bias`), so checkpoints load into
//! it as into `burn::nn::Linear`, and methods that change weights (LoRA) find them by path.

use burn::module::Param;
use burn::nn::LinearConfig;
use burn::prelude::*;

use crate::kernels;

#[derive(Module, Debug)]
pub struct Linear {
    /// `[d_in, d_out]`, transposed relative to PyTorch.
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl From<burn::nn::Linear> for Linear {
    fn from(linear: burn::nn::Linear) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
        }
    }
}

impl Linear {
    /// Initialised as Burn (and torch) initialise a linear: kaiming-uniform weight and bias.
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        LinearConfig::new(d_in, d_out).init(device).into()
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernels::linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }

    /// The same layer with `delta` (`[d_in, d_out]`) added to its weight.
    pub fn with_weight_delta(self, delta: Tensor<2>) -> Self {
        Self {
            weight: self.weight.map(|w| w + delta),
            bias: self.bias,
        }
    }

    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }
}
