//! Parameter-efficient fine-tuning methods, laid out as HF peft lays them out so adapters can
//! be exchanged with Python.

pub mod adapter;
pub mod prefix;

use serde::{Deserialize, Serialize};

pub use prefix::{PrefixEncoder, PrefixTuningConfig};

/// Which parameters train, and what is added to the frozen BERT for it.
///
/// In TOML: `method = "prefix-tuning"` plus the method's own keys in the same table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum PeftConfig {
    /// peft's prefix tuning: per-layer key/value prefixes; BERT frozen.
    PrefixTuning(PrefixTuningConfig),
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
            Self::Full(_) => "full",
        }
    }

    /// Whether the parameter at module path `path` of a
    /// [`BertClassifier`](crate::classifier::BertClassifier) trains under this method. In every
    /// PEFT method the head trains too (peft's `modules_to_save` for sequence classification).
    pub fn is_trainable(&self, path: &str) -> bool {
        match self {
            Self::Full(_) => true,
            Self::PrefixTuning(_) => {
                path.starts_with("prompt_encoder.") || path.starts_with("classifier.")
            }
        }
    }

    /// Whether the pretrained BERT weights stay frozen.
    pub fn freezes_base(&self) -> bool {
        !matches!(self, Self::Full(_))
    }
}
