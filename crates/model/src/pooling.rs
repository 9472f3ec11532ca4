//! Sentence embeddings from token states.

use burn::prelude::*;

use crate::bert::BertOutput;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// The `[CLS]` token's hidden state.
    Cls,
    /// Mean over real tokens (padding excluded by the attention mask): what
    /// sentence-transformers computes for all-MiniLM-L6-v2 before normalising.
    #[default]
    Mean,
    /// BERT's pooler output, tanh(dense(CLS)).
    Pooler,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cls" => Ok(Self::Cls),
            "mean" => Ok(Self::Mean),
            "pooler" => Ok(Self::Pooler),
            other => Err(format!("unknown pooling `{other}` (cls, mean, pooler)")),
        }
    }
}

/// `[batch, hidden]` embeddings. `attention_mask` is the `[batch, seq]` mask of the input.
pub fn pool(output: &BertOutput, attention_mask: Tensor<2>, pooling: Pooling) -> Option<Tensor<2>> {
    let hidden = output.last_hidden_state.clone();
    let [batch, _, size] = hidden.dims();
    Some(match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1).reshape([batch, size]),
        Pooling::Pooler => output.pooler_output.clone()?,
        Pooling::Mean => {
            let mask = attention_mask.unsqueeze_dim::<3>(2);
            let summed = (hidden * mask.clone()).sum_dim(1).reshape([batch, size]);
            let counts = mask.sum_dim(1).reshape([batch, 1]).clamp_min(1e-9);
            summed / counts
        }
    })
}
