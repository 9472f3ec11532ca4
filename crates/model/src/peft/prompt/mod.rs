//! Soft prompts prepended to the input embeddings: prompt tuning (Lester et al., 2021) and
//! p-tuning (Liu et al., 2021), as peft implements them.
//!
//! Both learn `num_virtual_tokens` vectors of the embedding width that the model reads before
//! the real tokens (mask extended by ones, token type 0, and the pooler then reads the first
//! virtual token, as in peft). Prompt tuning trains the vectors directly (peft's
//! `PromptEmbedding`); p-tuning reparameterises them through peft's `PromptEncoder`: an MLP
//! (`encoder_reparameterization_type = "MLP"`: Linear-ReLU-Linear-ReLU-Linear) or a
//! bidirectional LSTM followed by Linear-ReLU-Linear (`"LSTM"`). peft saves both as the final
//! vectors (`prompt_embeddings`), which load here as a plain prompt.

pub mod lstm;

use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use super::adapter::prompt_parts;
use super::{
    AdapterFiles, AdapterParts, MAX_ENCODER_HIDDEN, MAX_ENCODER_LAYERS, MAX_VIRTUAL_TOKENS, Method,
    PeftConfig, PeftModule, Tensors, VIRTUAL_TOKENS_CANNOT_EXPORT, count, probability,
};
use crate::bert::BertModel;
use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::tokenizer::BertTokenizer;
use lstm::BiLstm;

/// How prompt tuning's vectors start (peft's `PromptTuningInit`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptTuningInit {
    /// Standard normal, torch's `nn.Embedding` default.
    #[default]
    Random,
    /// The word embeddings of `prompt_tuning_init_text`'s tokens (with `[CLS]`/`[SEP]`),
    /// repeated or cut to `num_virtual_tokens`.
    Text,
}

/// peft's `PromptTuningConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptTuningConfig {
    pub num_virtual_tokens: usize,
    pub prompt_tuning_init: PromptTuningInit,
    pub prompt_tuning_init_text: Option<String>,
}

impl Default for PromptTuningConfig {
    fn default() -> Self {
        Self {
            num_virtual_tokens: 20,
            prompt_tuning_init: PromptTuningInit::Random,
            prompt_tuning_init_text: None,
        }
    }
}

impl Method for PromptTuningConfig {
    fn name(&self) -> &'static str {
        "prompt-tuning"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        count(
            "num_virtual_tokens",
            self.num_virtual_tokens,
            MAX_VIRTUAL_TOKENS,
        )?;
        let has_text = self
            .prompt_tuning_init_text
            .as_deref()
            .is_some_and(|t| !t.trim().is_empty());
        if self.prompt_tuning_init == PromptTuningInit::Text && !has_text {
            return Err(
                "peft.prompt_tuning_init = \"text\" needs peft.prompt_tuning_init_text".into(),
            );
        }
        Ok(())
    }

    fn attach(
        &self,
        bert: BertModel,
        config: &BertConfig,
        device: &Device,
    ) -> Result<(BertModel, Option<PeftModule>)> {
        let encoder = PromptEncoder::prompt_tuning(self, config, device);
        Ok((bert, Some(PeftModule::PromptEncoder(encoder))))
    }

    /// Text init: the prompt starts as the word embeddings of the phrase's tokens, chosen as
    /// peft chooses them ([`init_token_ids`]).
    fn init_with_tokenizer(
        &self,
        bert: &BertModel,
        module: Option<PeftModule>,
        tokenizer: &BertTokenizer,
    ) -> Result<Option<PeftModule>> {
        let (PromptTuningInit::Text, Some(text)) = (
            self.prompt_tuning_init,
            self.prompt_tuning_init_text.as_deref(),
        ) else {
            return Ok(module);
        };
        let ids = init_token_ids(&tokenizer.encode(text)?.input_ids, self.num_virtual_tokens);
        let Some(PeftModule::PromptEncoder(prompt)) = module else {
            return Err(ModelError::Other("the model has no prompt encoder".into()));
        };
        let device = prompt.embedding.weight.device();
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let n = ids.len();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device);
        let words = bert
            .embeddings
            .word_embeddings
            .weight
            .val()
            .select(0, ids)
            .detach();
        Ok(Some(PeftModule::PromptEncoder(
            prompt.with_init_embeddings(words),
        )))
    }

    fn write_adapter(
        &self,
        module: Option<&PeftModule>,
        bert: &BertConfig,
        base: &str,
    ) -> Result<Option<AdapterParts>> {
        let mut parts = soft_prompt_parts(module, bert)?;
        let text = self.prompt_tuning_init == PromptTuningInit::Text;
        let f = &mut parts.fields;
        f.insert(
            "prompt_tuning_init".into(),
            if text { "TEXT" } else { "RANDOM" }.into(),
        );
        f.insert(
            "prompt_tuning_init_text".into(),
            self.prompt_tuning_init_text.clone().into(),
        );
        f.insert(
            "tokenizer_name_or_path".into(),
            if text {
                base.into()
            } else {
                serde_json::Value::Null
            },
        );
        f.insert("tokenizer_kwargs".into(), serde_json::Value::Null);
        Ok(Some(parts))
    }

    /// Prompt tuning and p-tuning (MLP or LSTM) alike: peft saves the final vectors, which load
    /// as a plain prompt.
    fn read_adapter(files: &AdapterFiles, bert: &BertConfig) -> Result<(PeftConfig, Tensors)> {
        let (tensors, n) = files.read_prompt(bert, bert.hidden_size, "prompt_encoder")?;
        let config = PromptTuningConfig {
            num_virtual_tokens: n,
            ..Default::default()
        };
        Ok((PeftConfig::PromptTuning(config), tensors))
    }

    fn export_refusal(&self) -> Option<&'static str> {
        Some(VIRTUAL_TOKENS_CANNOT_EXPORT)
    }
}

/// The soft prompt as peft saves it, with prompt learning's config fields.
fn soft_prompt_parts(module: Option<&PeftModule>, bert: &BertConfig) -> Result<AdapterParts> {
    let Some(PeftModule::PromptEncoder(encoder)) = module else {
        return Err(ModelError::Other("the model has no prompt encoder".into()));
    };
    prompt_parts(encoder.prompt_embeddings(), bert)
}

/// The reparameterisation of p-tuning (peft's `PromptEncoderReparameterizationType`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reparameterization {
    /// Linear-ReLU-Linear-ReLU-Linear, widths `hidden -> encoder_hidden_size -> hidden`.
    #[default]
    Mlp,
    /// A bidirectional LSTM of `encoder_num_layers` layers (`encoder_hidden_size` per
    /// direction, `encoder_dropout` between layers), then Linear-ReLU-Linear.
    Lstm,
}

impl Reparameterization {
    /// peft's spelling in `adapter_config.json`.
    pub fn peft_name(self) -> &'static str {
        match self {
            Self::Mlp => "MLP",
            Self::Lstm => "LSTM",
        }
    }
}

/// peft's `PromptEncoderConfig` (p-tuning), with the reference recipe's values as defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptEncoderConfig {
    pub num_virtual_tokens: usize,
    /// Hidden width of the MLP, or of each LSTM direction.
    pub encoder_hidden_size: usize,
    pub encoder_reparameterization_type: Reparameterization,
    /// LSTM layers (peft's default 2). The MLP always has 3 linears, as in peft.
    pub encoder_num_layers: usize,
    /// Dropout between LSTM layers (peft's default 0).
    pub encoder_dropout: f64,
}

impl Default for PromptEncoderConfig {
    fn default() -> Self {
        Self {
            num_virtual_tokens: 20,
            encoder_hidden_size: 128,
            encoder_reparameterization_type: Reparameterization::Mlp,
            encoder_num_layers: 2,
            encoder_dropout: 0.0,
        }
    }
}

impl Method for PromptEncoderConfig {
    fn name(&self) -> &'static str {
        "p-tuning"
    }

    /// The LSTM's own keys mean nothing to the MLP, so setting them there is refused rather
    /// than ignored (peft only warns).
    fn validate(&self) -> std::result::Result<(), String> {
        count(
            "num_virtual_tokens",
            self.num_virtual_tokens,
            MAX_VIRTUAL_TOKENS,
        )?;
        count(
            "encoder_hidden_size",
            self.encoder_hidden_size,
            MAX_ENCODER_HIDDEN,
        )?;
        match self.encoder_reparameterization_type {
            Reparameterization::Lstm => {
                count(
                    "encoder_num_layers",
                    self.encoder_num_layers,
                    MAX_ENCODER_LAYERS,
                )?;
                probability("encoder_dropout", self.encoder_dropout)?;
            }
            Reparameterization::Mlp => {
                let default = Self::default();
                if self.encoder_num_layers != default.encoder_num_layers
                    || self.encoder_dropout != default.encoder_dropout
                {
                    return Err("peft.encoder_num_layers and peft.encoder_dropout apply to \
                         encoder_reparameterization_type = \"lstm\" only (the MLP has a fixed \
                         3 layers)"
                        .into());
                }
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
        let encoder = PromptEncoder::p_tuning(self, config, device);
        Ok((bert, Some(PeftModule::PromptEncoder(encoder))))
    }

    fn write_adapter(
        &self,
        module: Option<&PeftModule>,
        bert: &BertConfig,
        _base: &str,
    ) -> Result<Option<AdapterParts>> {
        let mut parts = soft_prompt_parts(module, bert)?;
        let f = &mut parts.fields;
        f.insert(
            "encoder_hidden_size".into(),
            self.encoder_hidden_size.into(),
        );
        f.insert("encoder_num_layers".into(), self.encoder_num_layers.into());
        f.insert(
            "encoder_reparameterization_type".into(),
            self.encoder_reparameterization_type.peft_name().into(),
        );
        f.insert("encoder_dropout".into(), self.encoder_dropout.into());
        Ok(Some(parts))
    }

    /// peft saves p-tuning's final vectors (in inference mode it rebuilds the encoder as a
    /// plain embedding of them): they load as a plain prompt, whatever the encoder.
    fn read_adapter(files: &AdapterFiles, bert: &BertConfig) -> Result<(PeftConfig, Tensors)> {
        PromptTuningConfig::read_adapter(files, bert)
    }

    fn export_refusal(&self) -> Option<&'static str> {
        Some(VIRTUAL_TOKENS_CANNOT_EXPORT)
    }
}

/// p-tuning's MLP, peft's `mlp_head`: `Sequential` indices 0, 2, 4 for the MLP encoder; 0, 2
/// (no middle layer) after the LSTM.
#[derive(Module, Debug)]
pub struct PromptMlp {
    pub dense_in: Linear,
    pub dense_mid: Option<Linear>,
    pub dense_out: Linear,
}

impl PromptMlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut x = relu(self.dense_in.forward(x));
        if let Some(mid) = &self.dense_mid {
            x = relu(mid.forward(x));
        }
        self.dense_out.forward(x)
    }
}

/// The soft prompt: trainable embeddings, optionally through p-tuning's LSTM and/or MLP.
#[derive(Module, Debug)]
pub struct PromptEncoder {
    pub embedding: Embedding,
    pub lstm_head: Option<BiLstm>,
    pub mlp_head: Option<PromptMlp>,
}

impl PromptEncoder {
    /// Prompt tuning with random init (text init: [`PromptEncoder::with_init_embeddings`]).
    pub fn prompt_tuning(config: &PromptTuningConfig, bert: &BertConfig, device: &Device) -> Self {
        Self {
            embedding: EmbeddingConfig::new(config.num_virtual_tokens, bert.hidden_size)
                .init(device),
            lstm_head: None,
            mlp_head: None,
        }
    }

    /// p-tuning, initialised as peft initialises it (torch's defaults for every layer).
    pub fn p_tuning(config: &PromptEncoderConfig, bert: &BertConfig, device: &Device) -> Self {
        let (h, e) = (bert.hidden_size, config.encoder_hidden_size);
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let (lstm_head, mlp_head) = match config.encoder_reparameterization_type {
            Reparameterization::Mlp => (
                None,
                PromptMlp {
                    dense_in: linear(h, e),
                    dense_mid: Some(linear(e, e)),
                    dense_out: linear(e, h),
                },
            ),
            Reparameterization::Lstm => (
                Some(BiLstm::new(
                    h,
                    e,
                    config.encoder_num_layers,
                    config.encoder_dropout,
                    device,
                )),
                PromptMlp {
                    dense_in: linear(2 * e, 2 * e),
                    dense_mid: None,
                    dense_out: linear(2 * e, h),
                },
            ),
        };
        Self {
            embedding: EmbeddingConfig::new(config.num_virtual_tokens, h).init(device),
            lstm_head,
            mlp_head: Some(mlp_head),
        }
    }

    /// Replaces the initial vectors (prompt tuning's text init), keeping them trainable.
    pub fn with_init_embeddings(mut self, weights: Tensor<2>) -> Self {
        self.embedding = super::with_weights(self.embedding, weights);
        self
    }

    pub fn num_virtual_tokens(&self) -> usize {
        self.embedding.weight.dims()[0]
    }

    /// The prompt `[num_virtual_tokens, hidden]`, after the encoder if any: what peft saves
    /// as `prompt_embeddings`. (peft runs the encoder on every row of the batch; the rows are
    /// identical, so running it once and expanding gives the same values and gradients.)
    pub fn prompt_embeddings(&self) -> Tensor<2> {
        let mut x = self.embedding.weight.val();
        if let Some(lstm) = &self.lstm_head {
            x = lstm.forward(x);
        }
        match &self.mlp_head {
            Some(mlp) => mlp.forward(x),
            None => x,
        }
    }

    /// The prompt for a batch, `[batch, num_virtual_tokens, hidden]`.
    pub fn forward(&self, batch: usize) -> Tensor<3> {
        let prompt = self.prompt_embeddings();
        let [n, h] = prompt.dims();
        prompt.unsqueeze_dim::<3>(0).expand([batch, n, h])
    }
}

/// Token ids for prompt tuning's text init, as peft picks them: the tokenized text (special
/// tokens included) cut to `n`, or repeated until it covers `n`.
pub fn init_token_ids(text_ids: &[u32], n: usize) -> Vec<u32> {
    if text_ids.is_empty() {
        return Vec::new();
    }
    text_ids.iter().copied().cycle().take(n).collect()
}
