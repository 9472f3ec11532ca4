//! The trainable classifier: a pretrained BERT, an optional PEFT module, and a linear head on the
//! pooled output, as peft's `PeftModelForSequenceClassification` wires them.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;

use crate::bert::{BertExtras, BertInput, BertModel, BertPooler};
use crate::config::BertConfig;
use crate::dropout::{Dropout, DropoutConfig};
use crate::error::{ModelError, Result};
use crate::peft::{PeftConfig, PrefixEncoder, PromptEncoder};

/// A padded batch with its class indices.
#[derive(Debug, Clone)]
pub struct ClassificationBatch {
    pub input: BertInput,
    /// `[batch]` class indices.
    pub labels: Tensor<1, Int>,
}

/// Loss, logits and targets of one batch.
#[derive(Debug, Clone)]
pub struct ClassificationStep {
    pub loss: Tensor<1>,
    pub logits: Tensor<2>,
    pub targets: Tensor<1, Int>,
}

#[derive(Module, Debug)]
pub struct BertClassifier {
    pub bert: BertModel,
    /// Prefix tuning's key/value prefixes (peft's `prompt_encoder` for `PREFIX_TUNING`).
    pub prefix_encoder: Option<PrefixEncoder>,
    /// Prompt tuning's or p-tuning's soft prompt (peft's `prompt_encoder` for those).
    pub prompt_encoder: Option<PromptEncoder>,
    pub dropout: Dropout,
    pub classifier: Linear,
}

impl BertClassifier {
    /// Wraps a loaded BERT. `classifier` is a head from the checkpoint (a fine-tuned
    /// `BertForSequenceClassification`); without one, the head is initialised as HF does
    /// (normal with std `initializer_range`, zero bias). Fails when LoRA's `target_modules`
    /// name no linear of the model.
    pub fn new(
        bert: BertModel,
        classifier: Option<Linear>,
        config: &BertConfig,
        peft: &PeftConfig,
        num_labels: usize,
        device: &Device,
    ) -> Result<Self> {
        peft.validate().map_err(ModelError::Other)?;
        if num_labels == 0 {
            return Err(ModelError::Other(
                "a classifier needs at least one label".into(),
            ));
        }
        let mut bert = bert;
        if bert.pooler.is_none() {
            // HF builds BertForSequenceClassification with a pooler even when the checkpoint
            // has none, initialised at random; do the same so the head sees the same features.
            bert.pooler = Some(BertPooler {
                dense: hf_linear(config.hidden_size, config.hidden_size, config, device).into(),
            });
        }
        let classifier = match classifier {
            Some(c) if c.weight.dims()[1] == num_labels => c,
            _ => hf_linear(config.hidden_size, num_labels, config, device),
        };
        let bert = if peft.freezes_base() {
            bert.no_grad()
        } else {
            bert
        };
        let (mut prefix_encoder, mut prompt_encoder) = (None, None);
        let bert = match peft {
            PeftConfig::PrefixTuning(c) => {
                prefix_encoder = Some(PrefixEncoder::new(c, config, device));
                bert
            }
            PeftConfig::PromptTuning(c) => {
                prompt_encoder = Some(PromptEncoder::prompt_tuning(c, config, device));
                bert
            }
            PeftConfig::PTuning(c) => {
                prompt_encoder = Some(PromptEncoder::p_tuning(c, config, device));
                bert
            }
            PeftConfig::Lora(c) => with_lora(bert, c)?,
            PeftConfig::Full(_) => bert,
        };
        Ok(Self {
            bert,
            prefix_encoder,
            prompt_encoder,
            dropout: DropoutConfig::new(
                config
                    .classifier_dropout
                    .unwrap_or(config.hidden_dropout_prob),
            )
            .init(),
            classifier,
        })
    }

    /// Folds LoRA updates into the base weights (a no-op for other methods): the same logits
    /// without the extra low-rank matmuls, for inference.
    pub fn merge_lora(self) -> Self {
        Self {
            bert: self.bert.map_linears(|_, linear| linear.merge()),
            ..self
        }
    }

    /// Starts prompt tuning's soft prompt from the word embeddings of `token_ids` (peft's
    /// `prompt_tuning_init = TEXT`; see [`crate::peft::prompt::init_token_ids`]).
    pub fn init_prompt_from_tokens(self, token_ids: &[u32]) -> Self {
        let Some(prompt) = self.prompt_encoder else {
            return self;
        };
        let device = prompt.embedding.weight.device();
        let ids: Vec<i64> = token_ids.iter().map(|&i| i as i64).collect();
        let n = ids.len();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device);
        let words = self
            .bert
            .embeddings
            .word_embeddings
            .weight
            .val()
            .select(0, ids)
            .detach();
        Self {
            prompt_encoder: Some(prompt.with_init_embeddings(words)),
            ..self
        }
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(&self, input: BertInput) -> Tensor<2> {
        let [batch, _] = input.input_ids.dims();
        let extras = BertExtras {
            prefix: self.prefix_encoder.as_ref().map(|p| p.forward(batch)),
            prompt: self.prompt_encoder.as_ref().map(|p| p.forward(batch)),
        };
        let pooled = self
            .bert
            .forward(input, &extras)
            .pooler_output
            .expect("BertClassifier always has a pooler");
        self.classifier.forward(self.dropout.forward(pooled))
    }

    /// Forward pass plus mean cross-entropy loss.
    pub fn forward_classification(&self, batch: ClassificationBatch) -> ClassificationStep {
        let device = batch.labels.device();
        let logits = self.forward(batch.input);
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits.clone(), batch.labels.clone());
        ClassificationStep {
            loss,
            logits,
            targets: batch.labels,
        }
    }

    pub fn num_labels(&self) -> usize {
        self.classifier.weight.dims()[1]
    }

    /// Virtual tokens in front of the text (prompt embeddings or key/value prefixes).
    pub fn num_virtual_tokens(&self) -> usize {
        let prefix = self.prefix_encoder.as_ref().map(|p| p.num_virtual_tokens());
        let prompt = self.prompt_encoder.as_ref().map(|p| p.num_virtual_tokens());
        prefix.or(prompt).unwrap_or(0)
    }

    /// Checks that texts of up to `max_length` tokens fit the position table together with the
    /// virtual tokens (which take the first positions), so a forward pass can never index past
    /// it. The message says which limit to lower.
    pub fn check_input_length(&self, max_length: usize) -> Result<()> {
        let positions = self.bert.embeddings.position_embeddings.weight.dims()[0];
        let virtual_tokens = self.num_virtual_tokens();
        if virtual_tokens + max_length > positions {
            let room = positions.saturating_sub(virtual_tokens);
            return Err(ModelError::Other(format!(
                "{virtual_tokens} virtual tokens + max length {max_length} exceed the model's \
                 {positions} positions (max_position_embeddings): use a max length of at most \
                 {room}{}",
                if virtual_tokens > 0 {
                    " or fewer virtual tokens"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    }
}

/// Attaches LoRA updates to the linears `config.target_modules` names, as peft does; a target
/// that matches nothing is an error (peft: "Target modules ... not found in the base model").
fn with_lora(bert: BertModel, config: &crate::peft::LoraConfig) -> Result<BertModel> {
    let mut matched = vec![false; config.target_modules.len()];
    let mut too_wide = None;
    let bert = bert.map_linears(|path, linear| {
        let mut hit = false;
        for (i, t) in config.target_modules.iter().enumerate() {
            if crate::peft::lora::target_matches(t, path) {
                matched[i] = true;
                hit = true;
            }
        }
        let [d_in, d_out] = linear.weight.dims();
        if hit && config.r > d_in.min(d_out) {
            too_wide.get_or_insert(format!(
                "peft.r = {} exceeds the rank of {path} ({d_in} x {d_out}): a low-rank update \
                 needs r <= {}",
                config.r,
                d_in.min(d_out)
            ));
            linear
        } else if hit {
            linear.with_lora(config)
        } else {
            linear
        }
    });
    if let Some(message) = too_wide {
        return Err(ModelError::Other(message));
    }
    let missing: Vec<&str> = config
        .target_modules
        .iter()
        .zip(&matched)
        .filter(|(_, m)| !**m)
        .map(|(t, _)| t.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(ModelError::Other(format!(
            "lora: target_modules {missing:?} match no linear of BERT (its linears: query, key, \
             value, dense; or full paths like bert.encoder.layer.0.attention.self.query)"
        )));
    }
    Ok(bert)
}

/// A linear layer initialised as HF's `BertPreTrainedModel._init_weights` does.
fn hf_linear(d_in: usize, d_out: usize, config: &BertConfig, device: &Device) -> Linear {
    let mut linear = LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: config.initializer_range,
        })
        .init(device);
    linear.bias = linear
        .bias
        .map(|b| b.map(|t: Tensor<1>| Tensor::zeros(t.dims(), &t.device())));
    linear
}
