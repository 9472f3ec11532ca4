//! Parameter-efficient fine-tuning methods, laid out as HF peft lays them out so adapters can
//! be exchanged with Python.

pub mod adapter;
pub mod lora;
pub mod lstm;
pub mod prefix;
pub mod prompt;

use serde::{Deserialize, Serialize};

pub use lora::{LoraConfig, LoraLinear};
pub use prefix::{PrefixEncoder, PrefixTuningConfig};
pub use prompt::{PromptEncoder, PromptEncoderConfig, PromptTuningConfig, PromptTuningInit};

/// Which parameters train, and what is added to the frozen BERT for it.
///
/// In TOML: `method = "prefix-tuning"` plus the method's own keys in the same table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum PeftConfig {
    /// peft's prefix tuning: per-layer key/value prefixes; BERT frozen.
    PrefixTuning(PrefixTuningConfig),
    /// peft's prompt tuning: trainable embeddings prepended to the input; BERT frozen.
    PromptTuning(PromptTuningConfig),
    /// peft's p-tuning: prepended embeddings produced by an MLP or an LSTM; BERT frozen.
    PTuning(PromptEncoderConfig),
    /// peft's LoRA: low-rank updates of the targeted linears; BERT frozen.
    Lora(LoraConfig),
    /// Full fine-tuning: every BERT weight trains (the reference's comparison row).
    Full(FullConfig),
}

/// Full fine-tuning has no settings of its own; the struct exists so unknown keys are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullConfig {}

impl Default for PeftConfig {
    fn default() -> Self {
        Self::PrefixTuning(PrefixTuningConfig::default())
    }
}

impl PeftConfig {
    /// The name used in configs and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::PrefixTuning(c) if c.prefix_projection => "prefix-tuning (projection)",
            Self::PrefixTuning(_) => "prefix-tuning",
            Self::PromptTuning(_) => "prompt-tuning",
            Self::PTuning(_) => "p-tuning",
            Self::Lora(_) => "lora",
            Self::Full(_) => "full",
        }
    }

    /// Whether the parameter at module path `path` of a
    /// [`BertClassifier`](crate::classifier::BertClassifier) trains under this method. In every
    /// PEFT method the head trains too (peft's `modules_to_save` for sequence classification),
    /// and everything outside the pretrained BERT is the method's own.
    pub fn is_trainable(&self, path: &str) -> bool {
        match self {
            Self::Full(_) => true,
            Self::Lora(_) => !path.starts_with("bert.") || path.contains(".lora."),
            _ => !path.starts_with("bert."),
        }
    }

    /// Tokens the method puts before the text: prompt embeddings, or prefix keys/values (which
    /// shift the text's positions by as many). They share the model's position table with it.
    pub fn num_virtual_tokens(&self) -> usize {
        match self {
            Self::PrefixTuning(c) => c.num_virtual_tokens,
            Self::PromptTuning(c) => c.num_virtual_tokens,
            Self::PTuning(c) => c.num_virtual_tokens,
            Self::Lora(_) | Self::Full(_) => 0,
        }
    }

    /// Checks every setting's range; the message names the `peft.<key>` at fault.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |key: &str, v: usize| {
            if v == 0 {
                Err(format!("peft.{key} must be at least 1"))
            } else {
                Ok(())
            }
        };
        let dropout = |key: &str, p: f64| {
            if (0.0..1.0).contains(&p) {
                Ok(())
            } else {
                Err(format!("peft.{key} must be in [0, 1), got {p}"))
            }
        };
        match self {
            Self::PrefixTuning(c) => {
                positive("num_virtual_tokens", c.num_virtual_tokens)?;
                if c.prefix_projection {
                    positive("encoder_hidden_size", c.encoder_hidden_size)?;
                }
            }
            Self::PromptTuning(c) => positive("num_virtual_tokens", c.num_virtual_tokens)?,
            Self::PTuning(c) => {
                positive("num_virtual_tokens", c.num_virtual_tokens)?;
                positive("encoder_hidden_size", c.encoder_hidden_size)?;
                match c.encoder_reparameterization_type {
                    prompt::Reparameterization::Lstm => {
                        positive("encoder_num_layers", c.encoder_num_layers)?;
                        dropout("encoder_dropout", c.encoder_dropout)?;
                    }
                    prompt::Reparameterization::Mlp => {
                        let default = PromptEncoderConfig::default();
                        if c.encoder_num_layers != default.encoder_num_layers
                            || c.encoder_dropout != default.encoder_dropout
                        {
                            return Err("peft.encoder_num_layers and peft.encoder_dropout apply \
                                 to encoder_reparameterization_type = \"lstm\" only (the MLP \
                                 has a fixed 3 layers)"
                                .into());
                        }
                    }
                }
            }
            Self::Lora(c) => {
                positive("r", c.r)?;
                if !(c.lora_alpha.is_finite() && c.lora_alpha > 0.0) {
                    return Err(format!(
                        "peft.lora_alpha must be finite and positive, got {}",
                        c.lora_alpha
                    ));
                }
                dropout("lora_dropout", c.lora_dropout)?;
                if c.target_modules.is_empty() {
                    return Err("peft.target_modules must name at least one module \
                         (e.g. [\"query\", \"value\"])"
                        .into());
                }
            }
            Self::Full(_) => {}
        }
        Ok(())
    }

    /// Whether the pretrained BERT weights stay frozen.
    pub fn freezes_base(&self) -> bool {
        !matches!(self, Self::Full(_))
    }

    /// peft's `peft_type`, or `None` for full fine-tuning (no adapter form).
    pub fn peft_type(&self) -> Option<&'static str> {
        match self {
            Self::PrefixTuning(_) => Some("PREFIX_TUNING"),
            Self::PromptTuning(_) => Some("PROMPT_TUNING"),
            Self::PTuning(_) => Some("P_TUNING"),
            Self::Lora(_) => Some("LORA"),
            Self::Full(_) => None,
        }
    }
}
