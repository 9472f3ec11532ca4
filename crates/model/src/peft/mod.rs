//! Parameter-efficient fine-tuning methods, laid out as HF peft lays them out (one module per
//! method, one registration line each) so adapters can be exchanged with Python.
//!
//! # Adding a method
//!
//! 1. A module here with the method's config type (serde, `deny_unknown_fields`, peft's key
//!    names and defaults) implementing [`Method`]: its range checks, which parameters train,
//!    how it attaches to BERT (its own [`PeftModule`] and/or changed BERT layers, initialised
//!    as peft does), and both directions of peft's adapter format.
//! 2. One line in the [`registry!`] call below. Its variant name is the TOML `method` (in
//!    kebab-case) and, with `peft_type`, peft's `peft_type` (in SCREAMING_SNAKE_CASE).
//! 3. A module of its own is a variant of [`PeftModule`], which says what that module feeds
//!    the encoder ([`BertExtras`]: key/value prefixes, prompt embeddings, additions to the
//!    linears' outputs) and what merging it into BERT leaves.
//!
//! Everything else (training, checkpoints, adapters, export, serving) goes through the trait.

pub mod adapter;
pub mod full;
pub mod lora;
pub mod prefix;
pub mod prompt;

use std::collections::BTreeMap;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bert::{BertExtras, BertModel};
use crate::config::BertConfig;
use crate::error::Result;
use crate::tokenizer::BertTokenizer;
use crate::weights::RawTensor;

pub use adapter::{AdapterFiles, AdapterParts};
pub use full::FullConfig;
pub use lora::{LoraConfig, LoraModel};
pub use prefix::{PrefixEncoder, PrefixTuningConfig};
pub use prompt::{PromptEncoder, PromptEncoderConfig, PromptTuningConfig, PromptTuningInit};

/// What a PEFT method implements; its config type is the implementor.
pub trait Method {
    /// The name in logs and reports.
    fn name(&self) -> &'static str;

    /// Range and consistency checks; the message names the `peft.<key>` at fault.
    fn validate(&self) -> std::result::Result<(), String>;

    /// Whether the pretrained BERT stays frozen.
    fn freezes_base(&self) -> bool {
        true
    }

    /// Whether the parameter at this module path of a classifier
    /// ([`crate::classifier::BertClassifier`]) trains. By default
    /// what is outside the pretrained BERT: the method's module and the head (peft's
    /// `modules_to_save` for sequence classification).
    fn is_trainable(&self, path: &str) -> bool {
        !path.starts_with("bert.")
    }

    /// Adds the method to a pretrained BERT, initialised as peft initialises it: changed BERT
    /// layers and/or a module of its own.
    fn attach(
        &self,
        bert: BertModel,
        config: &BertConfig,
        device: &Device,
    ) -> Result<(BertModel, Option<PeftModule>)>;

    /// Initialisation that needs the tokenizer (prompt tuning's text init): the method's
    /// module, after [`attach`], given the BERT it was attached to.
    ///
    /// [`attach`]: Method::attach
    fn init_with_tokenizer(
        &self,
        _bert: &BertModel,
        module: Option<PeftModule>,
        _tokenizer: &BertTokenizer,
    ) -> Result<Option<PeftModule>> {
        Ok(module)
    }

    /// The current name of a trainable-parameter key written by an older version of this
    /// project, when it was renamed.
    fn upgrade_key(&self, _key: &str) -> Option<String> {
        None
    }

    /// The trained method's module as peft adapter parts (tensors under peft's keys in torch
    /// layout, `adapter_config.json` fields; the head is added by the caller); `None` when the
    /// method has no peft adapter form.
    fn write_adapter(
        &self,
        module: Option<&PeftModule>,
        bert: &BertConfig,
        base: &str,
    ) -> Result<Option<AdapterParts>>;

    /// Reads a peft adapter of this method's `peft_type`: the config to build the classifier
    /// with and its parameters by module path (Burn layout), head included.
    fn read_adapter(files: &AdapterFiles, bert: &BertConfig) -> Result<(PeftConfig, Tensors)>
    where
        Self: Sized;

    /// Why the trained model has no plain `BertForSequenceClassification` form, if it has not.
    fn export_refusal(&self) -> Option<&'static str> {
        None
    }
}

/// Parameters by module path.
pub type Tensors = BTreeMap<String, RawTensor>;

/// The registry: one line per method. Generates [`PeftConfig`] (the `[peft]` table, tagged by
/// `method`), [`PeftType`] (peft's `peft_type` of the methods that have an adapter form), and
/// the dispatch from either to the method.
macro_rules! registry {
    ($( $(#[$doc:meta])* $variant:ident($config:ty) $(, peft_type = $peft_type:literal)?; )*) => {
        /// Which parameters train, and what is added to the frozen BERT for it.
        ///
        /// In TOML: `method = "prefix-tuning"` plus the method's own keys in the same table.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "method", rename_all = "kebab-case")]
        pub enum PeftConfig {
            $( $(#[$doc])* $variant($config), )*
        }

        impl PeftConfig {
            /// The method behind this config.
            pub fn method(&self) -> &dyn Method {
                match self {
                    $( Self::$variant(c) => c, )*
                }
            }

            /// peft's `peft_type`, or `None` for a method without an adapter form.
            pub fn peft_type(&self) -> Option<PeftType> {
                match self {
                    $( Self::$variant(_) => registry!(@type $variant $($peft_type)?), )*
                }
            }
        }

        /// peft's `peft_type` in `adapter_config.json`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum PeftType {
            $( $( #[doc = $peft_type] $variant, )? )*
        }

        impl PeftType {
            pub const ALL: &'static [PeftType] = &[ $( $( registry!(@variant $variant $peft_type), )? )* ];

            /// peft's spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $( Self::$variant => $peft_type, )? )*
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|t| t.as_str() == s)
            }

            /// Reads an adapter of this type (see [`Method::read_adapter`]).
            pub fn read_adapter(
                self,
                files: &AdapterFiles,
                bert: &BertConfig,
            ) -> Result<(PeftConfig, Tensors)> {
                match self {
                    $( $( Self::$variant => registry!(@read $config, $peft_type)(files, bert), )? )*
                }
            }
        }
    };
    (@type $variant:ident $peft_type:literal) => { Some(PeftType::$variant) };
    (@type $variant:ident) => { None };
    (@variant $variant:ident $peft_type:literal) => { PeftType::$variant };
    (@read $config:ty, $peft_type:literal) => { <$config as Method>::read_adapter };
}

registry! {
    /// peft's prefix tuning: per-layer key/value prefixes; BERT frozen.
    PrefixTuning(PrefixTuningConfig), peft_type = "PREFIX_TUNING";
    /// peft's prompt tuning: trainable embeddings prepended to the input; BERT frozen.
    PromptTuning(PromptTuningConfig), peft_type = "PROMPT_TUNING";
    /// peft's p-tuning: prepended embeddings produced by an MLP or an LSTM; BERT frozen.
    PTuning(PromptEncoderConfig), peft_type = "P_TUNING";
    /// peft's LoRA: low-rank updates of the targeted linears; BERT frozen.
    Lora(LoraConfig), peft_type = "LORA";
    /// Full fine-tuning: every BERT weight trains (the reference's comparison row).
    Full(FullConfig);
}

impl Default for PeftConfig {
    fn default() -> Self {
        Self::PrefixTuning(PrefixTuningConfig::default())
    }
}

impl PeftConfig {
    /// The name used in logs and reports.
    pub fn name(&self) -> &'static str {
        self.method().name()
    }

    /// See [`Method::is_trainable`].
    pub fn is_trainable(&self, path: &str) -> bool {
        self.method().is_trainable(path)
    }

    /// See [`Method::freezes_base`].
    pub fn freezes_base(&self) -> bool {
        self.method().freezes_base()
    }

    /// See [`Method::validate`].
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.method().validate()
    }
}

/// A method's own module beside BERT: one variant per kind of input it gives the encoder.
/// In parameter paths it stands in its field's place under its variant's snake_case name
/// (`prefix_encoder.embedding.weight`), as peft and older runs name it (see
/// [`crate::params`]).
// One per model: the size difference between variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum PeftModule {
    /// Key/value prefixes for every layer's attention (prefix tuning).
    PrefixEncoder(PrefixEncoder),
    /// Embeddings prepended to the input (prompt tuning, p-tuning).
    PromptEncoder(PromptEncoder),
    /// Low-rank updates of BERT's linears (LoRA).
    LoraModel(LoraModel),
}

impl PeftModule {
    /// What the module feeds the encoder for a batch.
    pub fn extras(&self, batch: usize) -> BertExtras<'_> {
        match self {
            Self::PrefixEncoder(p) => BertExtras {
                prefix: Some(p.forward(batch)),
                ..BertExtras::default()
            },
            Self::PromptEncoder(p) => BertExtras {
                prompt: Some(p.forward(batch)),
                ..BertExtras::default()
            },
            Self::LoraModel(lora) => BertExtras {
                updates: Some(lora),
                ..BertExtras::default()
            },
        }
    }

    pub fn num_virtual_tokens(&self) -> usize {
        match self {
            Self::PrefixEncoder(p) => p.num_virtual_tokens(),
            Self::PromptEncoder(p) => p.num_virtual_tokens(),
            Self::LoraModel(_) => 0,
        }
    }

    /// Folds the module into `bert` where it changes weights (LoRA's updates, after which the
    /// module is gone); other modules stay as they are.
    pub fn merge_into(self, bert: BertModel) -> (BertModel, Option<Self>) {
        match self {
            Self::LoraModel(lora) => (lora.merge_into(bert), None),
            other => (bert, Some(other)),
        }
    }
}

/// Why the methods that add virtual tokens have no plain-BERT export.
pub(crate) const VIRTUAL_TOKENS_CANNOT_EXPORT: &str = "prefix, prompt and p-tuning add virtual \
     tokens that a plain BERT cannot hold; use the run's peft adapter (runs/<name>/adapter) with \
     PeftModel instead";

/// Upper bounds of the `[peft]` sizes, checked before anything is allocated: far above any
/// published recipe, low enough that the tensors they size fit in memory.
pub(crate) const MAX_VIRTUAL_TOKENS: usize = 4096;
pub(crate) const MAX_ENCODER_HIDDEN: usize = 8192;
pub(crate) const MAX_ENCODER_LAYERS: usize = 16;
pub(crate) const MAX_RANK: usize = 4096;

/// An embedding's vectors replaced by `weights` (an initialisation computed after the module
/// was built), trainable when the ones replaced were: training has autodiff, inference not.
pub(crate) fn with_weights(
    mut embedding: burn::nn::Embedding,
    weights: Tensor<2>,
) -> burn::nn::Embedding {
    embedding.weight = embedding.weight.map(|old| {
        if old.is_require_grad() {
            weights.require_grad()
        } else {
            weights
        }
    });
    embedding
}

/// A `[peft]` range check on a size: from 1 to `max`.
pub(crate) fn count(key: &str, v: usize, max: usize) -> std::result::Result<(), String> {
    if (1..=max).contains(&v) {
        Ok(())
    } else {
        Err(format!("peft.{key} must be between 1 and {max}, got {v}"))
    }
}

/// A `[peft]` range check: a dropout probability.
pub(crate) fn probability(key: &str, p: f64) -> std::result::Result<(), String> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(format!("peft.{key} must be in [0, 1), got {p}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_types_round_trip_their_spelling() {
        let names: Vec<&str> = PeftType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            ["PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING", "LORA"]
        );
        for t in PeftType::ALL {
            assert_eq!(PeftType::parse(t.as_str()), Some(*t));
        }
        assert_eq!(PeftType::parse("IA3"), None);
        assert_eq!(PeftConfig::Full(FullConfig {}).peft_type(), None);
    }
}
