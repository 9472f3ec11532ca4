//! Sentence embeddings from token states: the pooling modes of sentence-transformers'
//! `Pooling` module (plus BERT's own pooler) and its `Normalize` module.
//!
//! Which of them a model was trained with is in its sentence-transformers files; see
//! [`crate::sentence_transformers`].

use burn::prelude::*;

use crate::bert::BertOutput;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// The `[CLS]` token's hidden state (`pooling_mode_cls_token`).
    Cls,
    /// Mean over real tokens, padding excluded by the attention mask
    /// (`pooling_mode_mean_tokens`; all-MiniLM-L6-v2's pooling).
    #[default]
    Mean,
    /// Element-wise maximum over real tokens (`pooling_mode_max_tokens`).
    Max,
    /// Sum over real tokens divided by the square root of their number
    /// (`pooling_mode_mean_sqrt_len_tokens`).
    MeanSqrtLen,
    /// BERT's pooler output, tanh(dense(CLS)); no sentence-transformers equivalent.
    Pooler,
}

impl Pooling {
    /// The name `--pooling` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cls => "cls",
            Self::Mean => "mean",
            Self::Max => "max",
            Self::MeanSqrtLen => "mean-sqrt-len",
            Self::Pooler => "pooler",
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cls" => Ok(Self::Cls),
            "mean" => Ok(Self::Mean),
            "max" => Ok(Self::Max),
            "mean-sqrt-len" => Ok(Self::MeanSqrtLen),
            "pooler" => Ok(Self::Pooler),
            other => Err(format!(
                "unknown pooling `{other}` (mean, cls, max, mean-sqrt-len, pooler)"
            )),
        }
    }
}

/// What sentence-transformers puts in padded positions before taking the maximum.
const MAX_POOLING_FILL: f32 = -1e9;

/// `[batch, hidden]` embeddings. `attention_mask` is the `[batch, seq]` mask of the input
/// (1 for real tokens, 0 for padding). `None` for [`Pooling::Pooler`] on a checkpoint without
/// pooler weights.
pub fn pool(output: &BertOutput, attention_mask: Tensor<2>, pooling: Pooling) -> Option<Tensor<2>> {
    let hidden = output.last_hidden_state.clone();
    let [batch, _, size] = hidden.dims();
    let mask = || attention_mask.clone().unsqueeze_dim::<3>(2);
    // Sum over real tokens and their number, as sentence-transformers computes them.
    let sum_and_count = || {
        let mask = mask();
        let summed = (hidden.clone() * mask.clone())
            .sum_dim(1)
            .reshape([batch, size]);
        let counts = mask.sum_dim(1).reshape([batch, 1]).clamp_min(1e-9);
        (summed, counts)
    };
    Some(match pooling {
        Pooling::Cls => hidden.clone().narrow(1, 0, 1).reshape([batch, size]),
        Pooling::Pooler => output.pooler_output.clone()?,
        Pooling::Mean => {
            let (summed, counts) = sum_and_count();
            summed / counts
        }
        Pooling::MeanSqrtLen => {
            let (summed, counts) = sum_and_count();
            summed / counts.sqrt()
        }
        Pooling::Max => {
            // Padding is set to -1e9 (-inf in f16), never scaled: 0 * -inf would be NaN.
            let [_, seq, _] = hidden.dims();
            let padding = attention_mask
                .clone()
                .equal_elem(0.0)
                .unsqueeze_dim::<3>(2)
                .expand([batch, seq, size]);
            hidden
                .clone()
                .mask_fill(padding, MAX_POOLING_FILL)
                .max_dim(1)
                .reshape([batch, size])
        }
    })
}

/// Each row divided by its L2 norm (at least 1e-12), as `torch.nn.functional.normalize` in
/// sentence-transformers' `Normalize` module: unit vectors, so dot product = cosine.
pub fn normalize(embeddings: Tensor<2>) -> Tensor<2> {
    let norms = embeddings
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    embeddings / norms
}
