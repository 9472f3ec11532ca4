//! LoRA (Hu et al., 2021) as peft implements it for `nn.Linear`.
//!
//! A targeted linear computes `x W + b + dropout(x) A B * scaling`, with `A` (`lora_A`,
//! `[in, r]` here, `[r, in]` in torch) initialised like a torch `Linear` (kaiming-uniform,
//! `a = sqrt(5)`), `B` (`lora_B`) zero so training starts from the pretrained function, and
//! `scaling = alpha / r` (or `alpha / sqrt(r)` with rsLoRA). Merging folds `A B * scaling` into
//! `W`, after which the layer is a plain linear again with the same outputs.

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dropout::{Dropout, DropoutConfig};

/// peft's `LoraConfig`, with the reference recipe's values as defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the update.
    pub r: usize,
    pub lora_alpha: f64,
    /// Dropout on the input of the low-rank path (not on the frozen path).
    pub lora_dropout: f64,
    /// Module names, matched as peft does: a linear whose HF path (e.g.
    /// `bert.encoder.layer.0.attention.self.query`) equals a target or ends with `.target`.
    /// peft's default for BERT is `query` and `value`; `dense` also reaches the attention
    /// output, feed-forward and pooler projections.
    pub target_modules: Vec<String>,
    /// rsLoRA: scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.1,
            target_modules: vec!["query".into(), "value".into()],
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

/// Whether target name `target` selects the linear at HF module path `path` (peft's rule for a
/// list of names: the whole path, or its last dotted components).
pub fn target_matches(target: &str, path: &str) -> bool {
    path == target
        || path
            .strip_suffix(target)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// The low-rank update of one linear.
#[derive(Module, Debug)]
pub struct LoraUpdate {
    /// peft's `lora_A`: `[in, r]`.
    pub lora_a: Linear,
    /// peft's `lora_B`: `[r, out]`.
    pub lora_b: Linear,
    pub dropout: Dropout,
    scaling: f64,
}

impl LoraUpdate {
    pub fn new(d_in: usize, d_out: usize, config: &LoraConfig, device: &Device) -> Self {
        Self {
            // Burn's default linear init is torch's kaiming_uniform(a = sqrt(5)) over fan-in,
            // which is what peft uses for lora_A.
            lora_a: LinearConfig::new(d_in, config.r)
                .with_bias(false)
                .init(device),
            lora_b: LinearConfig::new(config.r, d_out)
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
            dropout: DropoutConfig::new(config.lora_dropout).init(),
            scaling: config.scaling(),
        }
    }

    /// `A B * scaling`, `[in, out]`: what merging adds to the base weight.
    pub fn delta(&self) -> Tensor<2> {
        self.lora_a
            .weight
            .val()
            .matmul(self.lora_b.weight.val())
            .mul_scalar(self.scaling)
    }

    pub fn scaling(&self) -> f64 {
        self.scaling
    }
}

/// A linear layer that may carry a LoRA update. Its own parameters keep the names of a plain
/// linear (`weight`, `bias`), so checkpoints load the same with or without LoRA.
#[derive(Module, Debug)]
pub struct LoraLinear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub lora: Option<LoraUpdate>,
}

impl From<Linear> for LoraLinear {
    fn from(linear: Linear) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
            lora: None,
        }
    }
}

impl LoraLinear {
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        LinearConfig::new(d_in, d_out).init(device).into()
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let base = burn::tensor::module::linear(
            x.clone(),
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
        );
        match &self.lora {
            Some(lora) => {
                let update = lora
                    .lora_b
                    .forward(lora.lora_a.forward(lora.dropout.forward(x)));
                base + update.mul_scalar(lora.scaling)
            }
            None => base,
        }
    }

    /// Adds a fresh (zero-effect) LoRA update.
    pub fn with_lora(mut self, config: &LoraConfig) -> Self {
        let [d_in, d_out] = self.weight.dims();
        self.lora = Some(LoraUpdate::new(d_in, d_out, config, &self.weight.device()));
        self
    }

    /// Folds the LoRA update into the weight: same outputs (up to rounding), no extra matmuls.
    pub fn merge(self) -> Self {
        let Some(lora) = self.lora else {
            return self;
        };
        let delta = lora.delta();
        Self {
            weight: self.weight.map(|w| w + delta),
            bias: self.bias,
            lora: None,
        }
    }

    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }
}
