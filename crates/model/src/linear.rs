//! BERT's linear layer: `x W + b` through [`crate::kernels::linear`] (one fused product with
//! the bias on the host backends).
//!
//! Its parameters keep the names of a plain linear (`weight`, `bias`), so checkpoints load into
//! it as into `burn::nn::Linear`, and methods that change weights (LoRA) find them by path.

use std::sync::Arc;

use burn::module::Param;
use burn::nn::LinearConfig;
use burn::prelude::*;

use crate::kernels::{self, MatrixUnits, PackedLinear};

#[derive(Module, Debug)]
pub struct Linear {
    /// `[d_in, d_out]`, transposed relative to PyTorch.
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    /// The weight and bias packed for bf16 products on the CPU's matrix units, for inference
    /// ([`Linear::packed_for`]); not a parameter. [`Linear::with_weight_delta`] drops it; after
    /// any other change to the weights (Burn's module operations carry it along) the products
    /// see the mismatch and run in f32 (see [`PackedLinear::matches`]).
    #[module(skip)]
    pub packed: Option<Arc<PackedLinear>>,
}

impl From<burn::nn::Linear> for Linear {
    fn from(linear: burn::nn::Linear) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
            packed: None,
        }
    }
}

impl Linear {
    /// Initialised as Burn (and torch) initialise a linear: kaiming-uniform weight and bias.
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        LinearConfig::new(d_in, d_out).init(device).into()
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match (&self.packed, &self.bias) {
            (Some(packed), Some(bias)) => {
                kernels::packed_linear(x, self.weight.val(), bias.val(), packed)
            }
            (_, bias) => kernels::linear(x, self.weight.val(), bias.as_ref().map(|b| b.val())),
        }
    }

    /// The same layer with `delta` (`[d_in, d_out]`) added to its weight.
    pub fn with_weight_delta(self, delta: Tensor<2>) -> Self {
        Self {
            weight: self.weight.map(|w| w + delta),
            bias: self.bias,
            packed: None,
        }
    }

    /// The same layer multiplying in bf16 on `units` (an inference-only snapshot of the
    /// weight and bias), or unchanged with the reason when it cannot be packed: no bias, or no
    /// bf16 hardware path for its shape.
    pub fn packed_for(self, units: &MatrixUnits) -> (Self, Result<(), String>) {
        let Some(bias) = &self.bias else {
            return (self, Err("a linear without bias is not packed".into()));
        };
        let values = |data: TensorData| data.convert::<f32>().try_into_vec::<f32>();
        let packed = match (
            values(self.weight.val().into_data()),
            values(bias.val().into_data()),
        ) {
            (Ok(weight), Ok(bias)) => units.pack(&weight, &bias, self.weight.dims()),
            (Err(e), _) | (_, Err(e)) => Err(format!("{e:?}")),
        };
        match packed {
            Ok(packed) => (
                Self {
                    packed: Some(Arc::new(packed)),
                    ..self
                },
                Ok(()),
            ),
            Err(e) => (self, Err(e)),
        }
    }

    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }
}
