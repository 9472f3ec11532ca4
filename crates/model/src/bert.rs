//! BERT as Burn modules.
//!
//! Module and field names mirror HF `modeling_bert.py` (and so the checkpoint keys:
//! `encoder.layer.3.attention.self.query.weight` lives at `encoder.layer[3].attention.self_attn.query`),
//! which keeps loading a plain walk over the key list. Linear weights are stored as Burn's
//! `[d_in, d_out]`, i.e. transposed relative to PyTorch.
//!
//! Self-attention can take per-layer key/value prefixes: prefix tuning feeds those, and the
//! attention mask is extended by ones for them, as peft does with `past_key_values`.

use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation;

use crate::config::BertConfig;
use crate::dropout::{Dropout, DropoutConfig};
use crate::kernels;
use crate::norm::LayerNorm;
use crate::peft::lora::LoraLinear;

/// Key/value tensors prepended to one layer's attention, each `[batch, prefix_len, hidden]`
/// (heads side by side, as the key and value projections write them, so prepending them is a
/// copy of whole rows).
#[derive(Debug, Clone)]
pub struct LayerPrefix {
    pub key: Tensor<3>,
    pub value: Tensor<3>,
}

/// Inputs of one forward pass. `attention_mask` is 1.0 for real tokens and 0.0 for padding.
#[derive(Debug, Clone)]
pub struct BertInput {
    pub input_ids: Tensor<2, Int>,
    pub token_type_ids: Tensor<2, Int>,
    pub attention_mask: Tensor<2>,
}

/// Where the encoder reads its input from, beyond the token ids.
#[derive(Debug, Clone, Default)]
pub struct BertExtras {
    /// Per-layer key/value prefixes (prefix tuning); the mask is extended by ones for them.
    pub prefix: Option<Vec<LayerPrefix>>,
    /// Embeddings `[batch, n, hidden]` prepended to the word embeddings (prompt / p-tuning);
    /// the pooler then reads the first virtual token, as in peft.
    pub prompt: Option<Tensor<3>>,
}

#[derive(Module, Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub layer_norm: LayerNorm,
    pub dropout: Dropout,
}

impl BertEmbeddings {
    pub fn new(config: &BertConfig, device: &Device) -> Self {
        Self {
            word_embeddings: EmbeddingConfig::new(config.vocab_size, config.hidden_size)
                .init(device),
            position_embeddings: EmbeddingConfig::new(
                config.max_position_embeddings,
                config.hidden_size,
            )
            .init(device),
            token_type_embeddings: EmbeddingConfig::new(config.type_vocab_size, config.hidden_size)
                .init(device),
            layer_norm: layer_norm(config, device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
        }
    }

    /// `prompt` (`[batch, n, hidden]`) is prepended to the word embeddings with token type 0, as
    /// peft's prompt tuning and p-tuning do through `inputs_embeds`. `position_offset` shifts the
    /// position ids, as HF does by `past_key_values_length` when peft's prefix tuning passes
    /// key/value prefixes: positions then start at the prefix length.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Tensor<2, Int>,
        prompt: Option<&Tensor<3>>,
        position_offset: usize,
    ) -> Tensor<3> {
        let device = input_ids.device();
        let mut words = self.word_embeddings.forward(input_ids);
        let mut types = token_type_ids;
        if let Some(prompt) = prompt {
            let [batch, n, _] = prompt.dims();
            words = Tensor::cat(vec![prompt.clone(), words], 1);
            types = Tensor::cat(vec![Tensor::zeros([batch, n], &device), types], 1);
        }
        let [_, seq_len, _] = words.dims();
        let positions = Tensor::<1, Int>::arange(
            position_offset as i64..(position_offset + seq_len) as i64,
            &device,
        )
        .unsqueeze_dim::<2>(0);
        let embeddings = words
            + self.token_type_embeddings.forward(types)
            + self.position_embeddings.forward(positions);
        self.dropout.forward(self.layer_norm.forward(embeddings))
    }
}

#[derive(Module, Debug)]
pub struct BertSelfAttention {
    pub query: LoraLinear,
    pub key: LoraLinear,
    pub value: LoraLinear,
    pub dropout: Dropout,
    num_attention_heads: usize,
}

impl BertSelfAttention {
    pub fn new(config: &BertConfig, device: &Device) -> Self {
        let h = config.hidden_size;
        Self {
            query: LoraLinear::new(h, h, device),
            key: LoraLinear::new(h, h, device),
            value: LoraLinear::new(h, h, device),
            dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
            num_attention_heads: config.num_attention_heads,
        }
    }

    /// From loaded projections (see [`crate::load`]).
    pub fn from_parts(config: &BertConfig, query: Linear, key: Linear, value: Linear) -> Self {
        Self {
            query: query.into(),
            key: key.into(),
            value: value.into(),
            dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
            num_attention_heads: config.num_attention_heads,
        }
    }

    pub fn num_attention_heads(&self) -> usize {
        self.num_attention_heads
    }

    /// `[batch, seq, hidden]` -> `[batch, heads, seq, head_dim]`.
    fn split_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [batch, seq, hidden] = x.dims();
        let heads = self.num_attention_heads;
        x.reshape([batch, seq, heads, hidden / heads])
            .swap_dims(1, 2)
    }

    /// Attention of the positions in `queries` (`[batch, q, hidden]`: all of `hidden`, or its
    /// first positions) over every position of `hidden`. `mask_bias` is `[batch, 1, 1, keys]`:
    /// 0 where a key may be attended, a large negative value where not; `keys` counts the prefix
    /// too when one is given.
    pub fn forward(
        &self,
        queries: Tensor<3>,
        hidden: Tensor<3>,
        mask_bias: Tensor<4>,
        prefix: Option<&LayerPrefix>,
    ) -> Tensor<3> {
        let hidden_size = hidden.dims()[2];
        let head_dim = hidden_size / self.num_attention_heads;
        let query = self.split_heads(self.query.forward(queries));
        let mut key = self.key.forward(hidden.clone());
        let mut value = self.value.forward(hidden);
        if let Some(prefix) = prefix {
            key = Tensor::cat(vec![prefix.key.clone(), key], 1);
            value = Tensor::cat(vec![prefix.value.clone(), value], 1);
        }
        let (key, value) = (self.split_heads(key), self.split_heads(value));
        let scores = kernels::heads_matmul(query, key.swap_dims(2, 3));
        let probs = kernels::masked_softmax(scores, mask_bias, 1.0 / (head_dim as f64).sqrt());
        let probs = self.dropout.forward(probs);
        kernels::merged_heads_matmul(probs, value)
    }
}

/// Dense + dropout + residual LayerNorm: HF's `BertSelfOutput` and `BertOutput` share this shape.
#[derive(Module, Debug)]
pub struct BertResidualOutput {
    pub dense: LoraLinear,
    pub layer_norm: LayerNorm,
    pub dropout: Dropout,
}

impl BertResidualOutput {
    pub fn new(config: &BertConfig, d_input: usize, device: &Device) -> Self {
        Self {
            dense: LoraLinear::new(d_input, config.hidden_size, device),
            layer_norm: layer_norm(config, device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
        }
    }

    pub fn forward(&self, hidden: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        let hidden = self.dropout.forward(self.dense.forward(hidden));
        self.layer_norm.forward(hidden + residual)
    }
}

#[derive(Module, Debug)]
pub struct BertAttention {
    /// HF's `attention.self` (a Rust keyword).
    pub self_attn: BertSelfAttention,
    pub output: BertResidualOutput,
}

#[derive(Module, Debug)]
pub struct BertIntermediate {
    pub dense: LoraLinear,
    #[module(skip)]
    act: Activation,
}

/// The feed-forward activation, from `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU, as HF's `gelu`.
    Gelu,
    /// Tanh approximation, HF's `gelu_new`.
    GeluNew,
    Relu,
}

impl Activation {
    fn from_name(name: &str) -> Self {
        match name {
            "gelu_new" => Self::GeluNew,
            "relu" => Self::Relu,
            _ => Self::Gelu,
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Gelu => kernels::gelu(x),
            Self::GeluNew => activation::gelu_approximate(x),
            Self::Relu => activation::relu(x),
        }
    }
}

impl BertIntermediate {
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.act.forward(self.dense.forward(hidden))
    }
}

#[derive(Module, Debug)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub intermediate: BertIntermediate,
    pub output: BertResidualOutput,
}

impl BertLayer {
    pub fn new(config: &BertConfig, device: &Device) -> Self {
        Self {
            attention: BertAttention {
                self_attn: BertSelfAttention::new(config, device),
                output: BertResidualOutput::new(config, config.hidden_size, device),
            },
            intermediate: BertIntermediate {
                dense: LoraLinear::new(config.hidden_size, config.intermediate_size, device),
                act: Activation::from_name(&config.hidden_act),
            },
            output: BertResidualOutput::new(config, config.intermediate_size, device),
        }
    }

    /// From loaded parts (see [`crate::load`]).
    pub fn from_parts(
        config: &BertConfig,
        self_attn: BertSelfAttention,
        attention_output: BertResidualOutput,
        intermediate_dense: Linear,
        output: BertResidualOutput,
    ) -> Self {
        Self {
            attention: BertAttention {
                self_attn,
                output: attention_output,
            },
            intermediate: BertIntermediate {
                dense: intermediate_dense.into(),
                act: Activation::from_name(&config.hidden_act),
            },
            output,
        }
    }

    pub fn forward(
        &self,
        hidden: Tensor<3>,
        mask_bias: Tensor<4>,
        prefix: Option<&LayerPrefix>,
    ) -> Tensor<3> {
        self.forward_first(hidden.dims()[1], hidden, mask_bias, prefix)
    }

    /// The layer's output for the first `n` positions only, `[batch, n, hidden]`. Keys and
    /// values still come from every position, so these rows equal those of [`Self::forward`];
    /// every other row of the attention output, the feed-forward block and the layer norms is
    /// skipped.
    pub fn forward_first(
        &self,
        n: usize,
        hidden: Tensor<3>,
        mask_bias: Tensor<4>,
        prefix: Option<&LayerPrefix>,
    ) -> Tensor<3> {
        let queries = if n == hidden.dims()[1] {
            hidden.clone()
        } else {
            hidden.clone().narrow(1, 0, n)
        };
        let attn = self
            .attention
            .self_attn
            .forward(queries.clone(), hidden, mask_bias, prefix);
        let attn = self.attention.output.forward(attn, queries);
        let ffn = self.intermediate.forward(attn.clone());
        self.output.forward(ffn, attn)
    }
}

#[derive(Module, Debug)]
pub struct BertEncoder {
    pub layer: Vec<BertLayer>,
}

#[derive(Module, Debug)]
pub struct BertPooler {
    pub dense: LoraLinear,
}

impl BertPooler {
    /// tanh(dense(hidden state of the first token)).
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<2> {
        let [batch, _, hidden_size] = hidden.dims();
        let first = hidden.narrow(1, 0, 1).reshape([batch, hidden_size]);
        self.dense.forward(first).tanh()
    }
}

/// Output of [`BertModel::forward`].
#[derive(Debug, Clone)]
pub struct BertOutput {
    /// `[batch, seq, hidden]`, for the real tokens only (prompt positions are removed).
    pub last_hidden_state: Tensor<3>,
    /// `[batch, hidden]`, when the checkpoint has a pooler.
    pub pooler_output: Option<Tensor<2>>,
}

#[derive(Module, Debug)]
pub struct BertModel {
    pub embeddings: BertEmbeddings,
    pub encoder: BertEncoder,
    pub pooler: Option<BertPooler>,
}

impl BertModel {
    /// A randomly initialised model (weights are normally loaded with [`crate::load`]).
    pub fn new(config: &BertConfig, with_pooler: bool, device: &Device) -> Self {
        Self {
            embeddings: BertEmbeddings::new(config, device),
            encoder: BertEncoder {
                layer: (0..config.num_hidden_layers)
                    .map(|_| BertLayer::new(config, device))
                    .collect(),
            },
            pooler: with_pooler.then(|| BertPooler {
                dense: LoraLinear::new(config.hidden_size, config.hidden_size, device),
            }),
        }
    }

    /// Rebuilds every linear of the encoder and pooler through `f`, which gets the linear's HF
    /// module path inside a task model (`bert.encoder.layer.0.attention.self.query`): how LoRA
    /// adapters are attached by peft's target names, and merged again.
    pub fn map_linears(self, mut f: impl FnMut(&str, LoraLinear) -> LoraLinear) -> Self {
        let layer = self
            .encoder
            .layer
            .into_iter()
            .enumerate()
            .map(|(i, layer)| {
                let mut g = |name: &str, l| f(&format!("bert.encoder.layer.{i}.{name}"), l);
                let BertLayer {
                    attention: BertAttention { self_attn, output },
                    intermediate,
                    output: layer_output,
                } = layer;
                BertLayer {
                    attention: BertAttention {
                        self_attn: BertSelfAttention {
                            query: g("attention.self.query", self_attn.query),
                            key: g("attention.self.key", self_attn.key),
                            value: g("attention.self.value", self_attn.value),
                            ..self_attn
                        },
                        output: BertResidualOutput {
                            dense: g("attention.output.dense", output.dense),
                            ..output
                        },
                    },
                    intermediate: BertIntermediate {
                        dense: g("intermediate.dense", intermediate.dense),
                        ..intermediate
                    },
                    output: BertResidualOutput {
                        dense: g("output.dense", layer_output.dense),
                        ..layer_output
                    },
                }
            })
            .collect();
        let pooler = self.pooler.map(|p| BertPooler {
            dense: f("bert.pooler.dense", p.dense),
        });
        Self {
            embeddings: self.embeddings,
            encoder: BertEncoder { layer },
            pooler,
        }
    }

    pub fn forward(&self, input: BertInput, extras: &BertExtras) -> BertOutput {
        let (mut hidden, prompt_len) = self.encode(input, extras, false);
        let pooler_output = self.pooler.as_ref().map(|p| p.forward(hidden.clone()));
        if prompt_len > 0 {
            let total = hidden.dims()[1];
            hidden = hidden.narrow(1, prompt_len, total - prompt_len);
        }
        BertOutput {
            last_hidden_state: hidden,
            pooler_output,
        }
    }

    /// The pooled output alone, `[batch, hidden]` (`None` without a pooler): what a classifier
    /// reads. It equals [`Self::forward`]'s `pooler_output`, but the last layer runs for the
    /// first position only, the one the pooler reads, which skips most of that layer's work.
    pub fn pooled(&self, input: BertInput, extras: &BertExtras) -> Option<Tensor<2>> {
        let pooler = self.pooler.as_ref()?;
        Some(pooler.forward(self.encode(input, extras, true).0))
    }

    /// The last layer's hidden states, with the number of prompt positions in front of the
    /// text's; with `first_only`, the last layer's output for the first position alone.
    fn encode(
        &self,
        input: BertInput,
        extras: &BertExtras,
        first_only: bool,
    ) -> (Tensor<3>, usize) {
        let BertInput {
            input_ids,
            token_type_ids,
            attention_mask,
        } = input;
        let [batch, _] = input_ids.dims();
        let device = input_ids.device();
        let prefix_len = extras
            .prefix
            .as_ref()
            .and_then(|p| p.first())
            .map_or(0, |p| p.key.dims()[1]);

        let mut hidden = self.embeddings.forward(
            input_ids,
            token_type_ids,
            extras.prompt.as_ref(),
            prefix_len,
        );
        // Virtual tokens (prompt or prefix) are always attended.
        let prompt_len = extras.prompt.as_ref().map_or(0, |p| p.dims()[1]);
        let mut mask = attention_mask;
        if prompt_len + prefix_len > 0 {
            let ones = Tensor::ones([batch, prompt_len + prefix_len], &device);
            mask = Tensor::cat(vec![ones, mask], 1);
        }
        let mask_bias = mask_bias(mask);

        let layers = self.encoder.layer.len();
        for (i, layer) in self.encoder.layer.iter().enumerate() {
            let prefix = extras.prefix.as_ref().map(|p| &p[i]);
            hidden = if first_only && i + 1 == layers {
                layer.forward_first(1, hidden, mask_bias.clone(), prefix)
            } else {
                layer.forward(hidden, mask_bias.clone(), prefix)
            };
        }
        (hidden, prompt_len)
    }
}

/// `[batch, keys]` mask of ones/zeros -> additive bias `[batch, 1, 1, keys]`, HF's
/// `(1 - mask) * finfo(dtype).min`: the most negative finite value of the mask's float type
/// (`f32::MIN` would round to -inf in f16 or bf16, and `0 * -inf` is NaN).
pub fn mask_bias(mask: Tensor<2>) -> Tensor<4> {
    let min = match mask.dtype() {
        burn::tensor::DType::F16 => -65504.0,
        burn::tensor::DType::BF16 => -3.389_531_389_251_535_5e38,
        _ => f32::MIN as f64,
    };
    let bias = (mask.neg() + 1.0) * min;
    bias.unsqueeze_dims::<4>(&[1, 2])
}

fn layer_norm(config: &BertConfig, device: &Device) -> LayerNorm {
    LayerNorm::new(config.hidden_size, config.layer_norm_eps, device)
}

/// BERT + dropout + linear, HF's `BertForSequenceClassification`: logits from the pooled output.
#[derive(Module, Debug)]
pub struct BertForSequenceClassification {
    pub bert: BertModel,
    pub dropout: Dropout,
    pub classifier: Linear,
}

impl BertForSequenceClassification {
    pub fn new(config: &BertConfig, num_labels: usize, device: &Device) -> Self {
        Self {
            bert: BertModel::new(config, true, device),
            dropout: DropoutConfig::new(
                config
                    .classifier_dropout
                    .unwrap_or(config.hidden_dropout_prob),
            )
            .init(),
            classifier: LinearConfig::new(config.hidden_size, num_labels).init(device),
        }
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(&self, input: BertInput, extras: &BertExtras) -> Tensor<2> {
        let pooled = self
            .bert
            .pooled(input, extras)
            .expect("BertForSequenceClassification always has a pooler");
        self.classifier.forward(self.dropout.forward(pooled))
    }
}
