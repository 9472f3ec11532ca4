//! Prefix tuning (Li & Liang, 2021) as peft implements it for encoders.
//!
//! peft's `PrefixEncoder` is an `Embedding(num_virtual_tokens, num_layers * 2 * hidden)`, or with
//! `prefix_projection` an `Embedding(num_virtual_tokens, hidden)` followed by
//! `Linear(hidden, encoder_hidden_size) -> tanh -> Linear(encoder_hidden_size, num_layers * 2 * hidden)`.
//! Its output is cut into one key and one value prefix per layer: along the last axis, layer `i`'s
//! key is block `2i` and its value block `2i + 1`, each split into heads.

use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::adapter::prompt_parts;
use super::prompt::init_token_ids;
use super::{
    AdapterFiles, AdapterParts, MAX_ENCODER_HIDDEN, MAX_VIRTUAL_TOKENS, Method, PeftConfig,
    PeftModule, Tensors, VIRTUAL_TOKENS_CANNOT_EXPORT, count,
};
use crate::bert::{BertModel, LayerPrefix};
use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::tokenizer::BertTokenizer;

/// peft's `PrefixTuningConfig`, with the reference recipe's values as defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixTuningConfig {
    pub num_virtual_tokens: usize,
    /// Reparameterise the prefix through a 2-layer tanh MLP (Li & Liang's trick for stability).
    pub prefix_projection: bool,
    /// Hidden size of the projection MLP (peft's `encoder_hidden_size`).
    pub encoder_hidden_size: usize,
    /// Start the prefix from real words instead of random vectors (Li & Liang's initialisation;
    /// peft has no counterpart): each layer's key/value prefix is BERT's own key/value
    /// projections of this text's tokens (with `[CLS]`/`[SEP]`), repeated or cut to
    /// `num_virtual_tokens`. Without `prefix_projection` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_init_text: Option<String>,
}

impl Default for PrefixTuningConfig {
    fn default() -> Self {
        Self {
            num_virtual_tokens: 20,
            prefix_projection: false,
            encoder_hidden_size: 128,
            prefix_init_text: None,
        }
    }
}

impl PrefixTuningConfig {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_num_virtual_tokens(mut self, n: usize) -> Self {
        self.num_virtual_tokens = n;
        self
    }

    pub fn with_prefix_projection(mut self, on: bool, encoder_hidden_size: usize) -> Self {
        self.prefix_projection = on;
        self.encoder_hidden_size = encoder_hidden_size;
        self
    }
}

impl Method for PrefixTuningConfig {
    fn name(&self) -> &'static str {
        if self.prefix_projection {
            "prefix-tuning (projection)"
        } else {
            "prefix-tuning"
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        count(
            "num_virtual_tokens",
            self.num_virtual_tokens,
            MAX_VIRTUAL_TOKENS,
        )?;
        if self.prefix_projection {
            count(
                "encoder_hidden_size",
                self.encoder_hidden_size,
                MAX_ENCODER_HIDDEN,
            )?;
        }
        if let Some(text) = &self.prefix_init_text {
            if text.trim().is_empty() {
                return Err("peft.prefix_init_text is empty".into());
            }
            if self.prefix_projection {
                return Err(
                    "peft.prefix_init_text sets the prefix itself, which prefix_projection \
                     computes from its MLP: use one or the other"
                        .into(),
                );
            }
        }
        Ok(())
    }

    fn attach(
        &self,
        bert: BertModel,
        config: &BertConfig,
        device: &Device,
    ) -> Result<(BertModel, Option<PeftModule>)> {
        let encoder = PrefixEncoder::new(self, config, device);
        Ok((bert, Some(PeftModule::PrefixEncoder(encoder))))
    }

    fn init_with_tokenizer(
        &self,
        bert: &BertModel,
        module: Option<PeftModule>,
        tokenizer: &BertTokenizer,
    ) -> Result<Option<PeftModule>> {
        let Some(text) = self.prefix_init_text.as_deref() else {
            return Ok(module);
        };
        let Some(PeftModule::PrefixEncoder(encoder)) = module else {
            return Err(ModelError::Other("the model has no prefix encoder".into()));
        };
        let mut ids = tokenizer.encode(text)?.input_ids;
        ids.truncate(bert.embeddings.position_embeddings.weight.dims()[0]);
        let rows = init_token_ids(
            &(0..ids.len() as u32).collect::<Vec<_>>(),
            self.num_virtual_tokens,
        );
        let per_layer = bert.layer_key_values(&ids);
        // [n, L*2*hidden]: layer i's key is block 2i, its value block 2i+1, as the encoder reads.
        let blocks = per_layer.into_iter().flat_map(|(k, v)| [k, v]).collect();
        let all = Tensor::cat(blocks, 1);
        let device = encoder.embedding.weight.device();
        let rows: Vec<i64> = rows.iter().map(|&r| i64::from(r)).collect();
        let n = rows.len();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &all.device());
        let prefix = Tensor::from_data(all.select(0, rows).into_data(), &device);
        Ok(Some(PeftModule::PrefixEncoder(
            encoder.with_init_prefix(prefix),
        )))
    }

    /// Runs written before p-tuning and prompt tuning existed named the prefix encoder
    /// `prompt_encoder` (now prompt tuning's).
    fn upgrade_key(&self, key: &str) -> Option<String> {
        key.strip_prefix("prompt_encoder.")
            .map(|rest| format!("prefix_encoder.{rest}"))
    }

    fn write_adapter(
        &self,
        module: Option<&PeftModule>,
        bert: &BertConfig,
        _base: &str,
    ) -> Result<Option<AdapterParts>> {
        let Some(PeftModule::PrefixEncoder(encoder)) = module else {
            return Err(ModelError::Other("the model has no prefix encoder".into()));
        };
        let mut parts = prompt_parts(encoder.prefix_embeddings(), bert)?;
        let f = &mut parts.fields;
        f.insert(
            "encoder_hidden_size".into(),
            self.encoder_hidden_size.into(),
        );
        f.insert("prefix_projection".into(), self.prefix_projection.into());
        Ok(Some(parts))
    }

    /// peft saves the prefix after the projection MLP: it loads as a plain prefix embedding.
    fn read_adapter(files: &AdapterFiles, bert: &BertConfig) -> Result<(PeftConfig, Tensors)> {
        let width = bert.num_hidden_layers * 2 * bert.hidden_size;
        let (tensors, n) = files.read_prompt(bert, width, "prefix_encoder")?;
        let config = PrefixTuningConfig::new().with_num_virtual_tokens(n);
        Ok((PeftConfig::PrefixTuning(config), tensors))
    }

    fn export_refusal(&self) -> Option<&'static str> {
        Some(VIRTUAL_TOKENS_CANNOT_EXPORT)
    }
}

/// The projection MLP of `prefix_projection = true`: peft's `transform`.
#[derive(Module, Debug)]
pub struct PrefixProjection {
    pub dense_in: Linear,
    pub dense_out: Linear,
}

#[derive(Module, Debug)]
pub struct PrefixEncoder {
    pub embedding: Embedding,
    pub transform: Option<PrefixProjection>,
    num_layers: usize,
    hidden: usize,
}

impl PrefixEncoder {
    pub fn new(config: &PrefixTuningConfig, bert: &BertConfig, device: &Device) -> Self {
        let out = bert.num_hidden_layers * 2 * bert.hidden_size;
        let (embedding, transform) = if config.prefix_projection {
            let emb =
                EmbeddingConfig::new(config.num_virtual_tokens, bert.hidden_size).init(device);
            let proj = PrefixProjection {
                dense_in: LinearConfig::new(bert.hidden_size, config.encoder_hidden_size)
                    .init(device),
                dense_out: LinearConfig::new(config.encoder_hidden_size, out).init(device),
            };
            (emb, Some(proj))
        } else {
            (
                EmbeddingConfig::new(config.num_virtual_tokens, out).init(device),
                None,
            )
        };
        Self {
            embedding,
            transform,
            num_layers: bert.num_hidden_layers,
            hidden: bert.hidden_size,
        }
    }

    /// The prefix set to `weights` (`[P, num_layers * 2 * hidden]`), for a prefix without the
    /// projection MLP.
    pub fn with_init_prefix(mut self, weights: Tensor<2>) -> Self {
        self.embedding = super::with_weights(self.embedding, weights);
        self
    }

    pub fn num_virtual_tokens(&self) -> usize {
        self.embedding.weight.dims()[0]
    }

    /// The prefix for every layer as one `[P, num_layers * 2 * hidden]` matrix, after the
    /// projection MLP if any: what peft saves as `prompt_embeddings`.
    pub fn prefix_embeddings(&self) -> Tensor<2> {
        let p = self.num_virtual_tokens();
        let device = self.embedding.weight.device();
        let tokens = Tensor::<1, Int>::arange(0..p as i64, &device).unsqueeze_dim::<2>(0);
        let mut kv = self.embedding.forward(tokens); // [1, P, out or hidden]
        if let Some(t) = &self.transform {
            kv = t.dense_out.forward(t.dense_in.forward(kv).tanh());
        }
        let width = kv.dims()[2];
        kv.reshape([p, width])
    }

    /// Per-layer key/value prefixes for a batch: peft's `get_prompt` for prefix tuning.
    pub fn forward(&self, batch: usize) -> Vec<LayerPrefix> {
        let (p, hidden) = (self.num_virtual_tokens(), self.hidden);
        // [P, L*2*hidden] = [P, L*2, hidden]: layer i's key is block 2i, its value block 2i+1.
        let kv = self
            .prefix_embeddings()
            .reshape([1, p, self.num_layers * 2, hidden]);
        (0..self.num_layers)
            .map(|i| {
                let take = |j: usize| {
                    kv.clone()
                        .narrow(2, j, 1)
                        .reshape([1, p, hidden])
                        .expand([batch, p, hidden])
                };
                LayerPrefix {
                    key: take(2 * i),
                    value: take(2 * i + 1),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_runs_from_before_the_rename_still_load() {
        let prefix = PrefixTuningConfig::default();
        assert_eq!(
            prefix
                .upgrade_key("prompt_encoder.embedding.weight")
                .as_deref(),
            Some("prefix_encoder.embedding.weight")
        );
        assert_eq!(prefix.upgrade_key("classifier.weight"), None);
        // Prompt tuning's own `prompt_encoder` is left alone.
        let prompt = crate::peft::PromptTuningConfig::default();
        assert_eq!(prompt.upgrade_key("prompt_encoder.embedding.weight"), None);
    }
}
