//! BERT as Burn modules.
//!
//! Module and field names mirror HF `modeling_bert.py` (and so the checkpoint keys:
//! `encoder.layer.3.attention.self.query.weight` lives at `encoder.layer[3].attention.self_attn.query`),
//! which keeps loading a plain walk over the key list. Linear weights are stored as Burn's
//! `[d_in, d_out]`, i.e. transposed relative to PyTorch.
//!
//! The encoder takes what parameter-efficient methods feed it ([`BertExtras`]) without knowing
//! the methods: per-layer key/value prefixes (the attention mask is extended by ones for them,
//! as peft does with `past_key_values`), embeddings prepended to the input, and additions to
//! the outputs of its linears ([`LinearUpdates`]).

use burn::nn::{self, Embedding, EmbeddingConfig, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation;

use crate::config::BertConfig;
use crate::dropout::{Dropout, DropoutConfig};
use crate::kernels::{self, MatrixUnits};
use crate::linear::Linear;
use crate::norm::LayerNorm;

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
pub struct BertExtras<'a> {
    /// Per-layer key/value prefixes (prefix tuning); the mask is extended by ones for them.
    pub prefix: Option<Vec<LayerPrefix>>,
    /// Embeddings `[batch, n, hidden]` prepended to the word embeddings (prompt / p-tuning);
    /// the pooler then reads the first virtual token, as in peft.
    pub prompt: Option<Tensor<3>>,
    /// Additions to the outputs of linears (LoRA's low-rank updates).
    pub updates: Option<&'a dyn LinearUpdates>,
}

/// How many linears [`BertModel::packed_for`] packed, and why the first one left was not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packing {
    pub packed: usize,
    pub total: usize,
    pub first_error: Option<String>,
}

/// A linear of one encoder layer, in HF's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerLinear {
    Query,
    Key,
    Value,
    AttentionOutput,
    Intermediate,
    Output,
}

impl LayerLinear {
    pub const ALL: [Self; 6] = [
        Self::Query,
        Self::Key,
        Self::Value,
        Self::AttentionOutput,
        Self::Intermediate,
        Self::Output,
    ];

    /// Its HF module path inside a layer.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Query => "attention.self.query",
            Self::Key => "attention.self.key",
            Self::Value => "attention.self.value",
            Self::AttentionOutput => "attention.output.dense",
            Self::Intermediate => "intermediate.dense",
            Self::Output => "output.dense",
        }
    }
}

/// A linear of the encoder or the pooler, by place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearAt {
    Layer(usize, LayerLinear),
    Pooler,
}

impl LinearAt {
    /// Its HF module path inside a task model (`bert.encoder.layer.0.attention.self.query`):
    /// the names peft's `target_modules` match.
    pub fn hf_path(self) -> String {
        match self {
            Self::Layer(i, linear) => format!("bert.encoder.layer.{i}.{}", linear.hf_name()),
            Self::Pooler => "bert.pooler.dense".to_string(),
        }
    }
}

/// Trainable additions to the outputs of BERT's linears, which stay as loaded: the linear at
/// `at` computes `x W + b + update`.
pub trait LinearUpdates: std::fmt::Debug {
    /// The addition for input `x` (`[batch, seq, d_in]`), `[batch, seq, d_out]`, if the linear
    /// at `at` has one.
    fn update(&self, at: LinearAt, x: &Tensor<3>) -> Option<Tensor<3>>;
}

impl BertExtras<'_> {
    /// `linear(x)`, plus the update at `at` if there is one.
    fn project(&self, at: LinearAt, linear: &Linear, x: Tensor<3>) -> Tensor<3> {
        let update = self.updates.and_then(|u| u.update(at, &x));
        let out = linear.forward(x);
        match update {
            Some(update) => out + update,
            None => out,
        }
    }
}

/// One layer's view of [`BertExtras`].
#[derive(Clone, Copy)]
struct LayerExtras<'e, 'a> {
    extras: &'e BertExtras<'a>,
    layer: usize,
}

impl LayerExtras<'_, '_> {
    fn project(&self, linear: LayerLinear, weights: &Linear, x: Tensor<3>) -> Tensor<3> {
        self.extras
            .project(LinearAt::Layer(self.layer, linear), weights, x)
    }

    fn prefix(&self) -> Option<&LayerPrefix> {
        self.extras.prefix.as_ref().map(|p| &p[self.layer])
    }
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
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub dropout: Dropout,
    num_attention_heads: usize,
}

impl BertSelfAttention {
    pub fn new(config: &BertConfig, device: &Device) -> Self {
        let h = config.hidden_size;
        Self {
            query: Linear::new(h, h, device),
            key: Linear::new(h, h, device),
            value: Linear::new(h, h, device),
            dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
            num_attention_heads: config.num_attention_heads,
        }
    }

    /// From loaded projections (see [`crate::load`]).
    pub fn from_parts(
        config: &BertConfig,
        query: nn::Linear,
        key: nn::Linear,
        value: nn::Linear,
    ) -> Self {
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
    fn forward(
        &self,
        queries: Tensor<3>,
        hidden: Tensor<3>,
        mask_bias: Tensor<4>,
        extras: LayerExtras,
    ) -> Tensor<3> {
        let hidden_size = hidden.dims()[2];
        let head_dim = hidden_size / self.num_attention_heads;
        let query = extras.project(LayerLinear::Query, &self.query, queries);
        let query = self.split_heads(query);
        let mut key = extras.project(LayerLinear::Key, &self.key, hidden.clone());
        let mut value = extras.project(LayerLinear::Value, &self.value, hidden);
        if let Some(prefix) = extras.prefix() {
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
    pub dense: Linear,
    pub layer_norm: LayerNorm,
    pub dropout: Dropout,
}

impl BertResidualOutput {
    pub fn new(config: &BertConfig, d_input: usize, device: &Device) -> Self {
        Self {
            dense: Linear::new(d_input, config.hidden_size, device),
            layer_norm: layer_norm(config, device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
        }
    }

    /// `dense` is this block's linear: attention output or feed-forward output.
    fn forward(
        &self,
        hidden: Tensor<3>,
        residual: Tensor<3>,
        extras: LayerExtras,
        dense: LayerLinear,
    ) -> Tensor<3> {
        let hidden = self
            .dropout
            .forward(extras.project(dense, &self.dense, hidden));
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
    pub dense: Linear,
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
    fn forward(&self, hidden: Tensor<3>, extras: LayerExtras) -> Tensor<3> {
        let dense = extras.project(LayerLinear::Intermediate, &self.dense, hidden);
        self.act.forward(dense)
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
                dense: Linear::new(config.hidden_size, config.intermediate_size, device),
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
        intermediate_dense: nn::Linear,
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

    fn forward(&self, hidden: Tensor<3>, mask_bias: Tensor<4>, extras: LayerExtras) -> Tensor<3> {
        self.forward_first(hidden.dims()[1], hidden, mask_bias, extras)
    }

    /// The layer's output for the first `n` positions only, `[batch, n, hidden]`. Keys and
    /// values still come from every position, so these rows equal those of [`Self::forward`];
    /// every other row of the attention output, the feed-forward block and the layer norms is
    /// skipped.
    fn forward_first(
        &self,
        n: usize,
        hidden: Tensor<3>,
        mask_bias: Tensor<4>,
        extras: LayerExtras,
    ) -> Tensor<3> {
        let queries = if n == hidden.dims()[1] {
            hidden.clone()
        } else {
            hidden.clone().narrow(1, 0, n)
        };
        let attn = self
            .attention
            .self_attn
            .forward(queries.clone(), hidden, mask_bias, extras);
        let attn =
            self.attention
                .output
                .forward(attn, queries, extras, LayerLinear::AttentionOutput);
        let ffn = self.intermediate.forward(attn.clone(), extras);
        self.output.forward(ffn, attn, extras, LayerLinear::Output)
    }
}

#[derive(Module, Debug)]
pub struct BertEncoder {
    pub layer: Vec<BertLayer>,
}

#[derive(Module, Debug)]
pub struct BertPooler {
    pub dense: Linear,
}

impl BertPooler {
    /// tanh(dense(hidden state of the first token)).
    fn forward(&self, hidden: Tensor<3>, extras: &BertExtras) -> Tensor<2> {
        let [batch, _, _] = hidden.dims();
        let first = hidden.narrow(1, 0, 1);
        let pooled = extras.project(LinearAt::Pooler, &self.dense, first);
        let hidden_size = pooled.dims()[2];
        pooled.reshape([batch, hidden_size]).tanh()
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
                dense: Linear::new(config.hidden_size, config.hidden_size, device),
            }),
        }
    }

    /// Every linear of the encoder and pooler, by place, with its `[d_in, d_out]`.
    pub fn linears(&self) -> Vec<(LinearAt, [usize; 2])> {
        let mut all = Vec::new();
        for (i, layer) in self.encoder.layer.iter().enumerate() {
            let attention = &layer.attention;
            for (linear, weights) in LayerLinear::ALL.into_iter().zip([
                &attention.self_attn.query,
                &attention.self_attn.key,
                &attention.self_attn.value,
                &attention.output.dense,
                &layer.intermediate.dense,
                &layer.output.dense,
            ]) {
                all.push((LinearAt::Layer(i, linear), weights.weight.dims()));
            }
        }
        if let Some(pooler) = &self.pooler {
            all.push((LinearAt::Pooler, pooler.dense.weight.dims()));
        }
        all
    }

    /// Rebuilds every linear of the encoder and pooler through `f`, which gets the linear's
    /// place: how weight updates are folded into the weights.
    pub fn map_linears(self, mut f: impl FnMut(LinearAt, Linear) -> Linear) -> Self {
        let layer = self
            .encoder
            .layer
            .into_iter()
            .enumerate()
            .map(|(i, layer)| {
                let mut g = |linear, l| f(LinearAt::Layer(i, linear), l);
                let BertLayer {
                    attention: BertAttention { self_attn, output },
                    intermediate,
                    output: layer_output,
                } = layer;
                BertLayer {
                    attention: BertAttention {
                        self_attn: BertSelfAttention {
                            query: g(LayerLinear::Query, self_attn.query),
                            key: g(LayerLinear::Key, self_attn.key),
                            value: g(LayerLinear::Value, self_attn.value),
                            ..self_attn
                        },
                        output: BertResidualOutput {
                            dense: g(LayerLinear::AttentionOutput, output.dense),
                            ..output
                        },
                    },
                    intermediate: BertIntermediate {
                        dense: g(LayerLinear::Intermediate, intermediate.dense),
                        ..intermediate
                    },
                    output: BertResidualOutput {
                        dense: g(LayerLinear::Output, layer_output.dense),
                        ..layer_output
                    },
                }
            })
            .collect();
        let pooler = self.pooler.map(|p| BertPooler {
            dense: f(LinearAt::Pooler, p.dense),
        });
        Self {
            embeddings: self.embeddings,
            encoder: BertEncoder { layer },
            pooler,
        }
    }

    /// Every linear of the encoder and pooler packed for bf16 products on `units`
    /// ([`Linear::packed_for`]): an inference-only snapshot, taken after the last change to the
    /// weights (a LoRA merge included).
    pub fn packed_for(self, units: &MatrixUnits) -> (Self, Packing) {
        let mut packing = Packing::default();
        let model = self.map_linears(|_, linear| {
            let (linear, result) = linear.packed_for(units);
            packing.total += 1;
            match result {
                Ok(()) => packing.packed += 1,
                Err(e) => {
                    packing.first_error.get_or_insert(e);
                }
            }
            linear
        });
        (model, packing)
    }

    /// Each layer's key and value projections (`[n, hidden]` each, heads side by side) of one
    /// text's tokens, given as ids with their special tokens: the activations of real words a
    /// prefix can start from (Li & Liang). Computed as in inference (no dropout, no gradient).
    pub fn layer_key_values(&self, ids: &[u32]) -> Vec<(Tensor<2>, Tensor<2>)> {
        let model = self.valid();
        let device = model.embeddings.word_embeddings.weight.device();
        let n = ids.len();
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
        let types = Tensor::<2, Int>::zeros([1, n], &device);
        let mask_bias = mask_bias(Tensor::ones([1, n], &device));
        let extras = BertExtras::default();
        let mut hidden = model.embeddings.forward(ids, types, None, 0);
        let mut out = Vec::with_capacity(model.encoder.layer.len());
        for (i, layer) in model.encoder.layer.iter().enumerate() {
            let attn = &layer.attention.self_attn;
            let width = hidden.dims()[2];
            let project = |linear: &Linear| linear.forward(hidden.clone()).reshape([n, width]);
            out.push((project(&attn.key), project(&attn.value)));
            let at = LayerExtras {
                extras: &extras,
                layer: i,
            };
            hidden = layer.forward(hidden, mask_bias.clone(), at);
        }
        out
    }

    pub fn forward(&self, input: BertInput, extras: &BertExtras) -> BertOutput {
        let (mut hidden, prompt_len) = self.encode(input, extras, false);
        let pooler_output = self
            .pooler
            .as_ref()
            .map(|p| p.forward(hidden.clone(), extras));
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
        Some(pooler.forward(self.encode(input, extras, true).0, extras))
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
            let at = LayerExtras { extras, layer: i };
            hidden = if first_only && i + 1 == layers {
                layer.forward_first(1, hidden, mask_bias.clone(), at)
            } else {
                layer.forward(hidden, mask_bias.clone(), at)
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
    pub classifier: nn::Linear,
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
