//! Building [`BertModel`] from a HuggingFace checkpoint.
//!
//! Accepts the key layouts HF writes for BERT: `BertModel` (keys at the top level) and the task
//! models (`BertForSequenceClassification`, `BertForMaskedLM`, `BertForPreTraining`, ...), whose
//! encoder sits under `bert.`. Heads that are not needed (`cls.*`) are ignored. TF-converted
//! checkpoints name LayerNorm parameters `gamma`/`beta`; both spellings are accepted. Every
//! missing key and every shape mismatch is collected and reported by name in one error.

use std::collections::BTreeSet;

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::prelude::*;

use crate::bert::*;
use crate::config::BertConfig;
use crate::dropout::DropoutConfig;
use crate::error::{ModelError, Result};
use crate::norm::LayerNorm;
use crate::weights::{Checkpoint, RawTensor};

/// Where the encoder's keys live in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// `embeddings.word_embeddings.weight`: a saved `BertModel`.
    Bare,
    /// `bert.embeddings.word_embeddings.weight`: a saved task model.
    Prefixed,
}

impl KeyLayout {
    fn prefix(self) -> &'static str {
        match self {
            Self::Bare => "",
            Self::Prefixed => "bert.",
        }
    }

    pub fn detect(checkpoint: &Checkpoint) -> Result<Self> {
        let probe = "embeddings.word_embeddings.weight";
        if checkpoint.tensors.contains_key(probe) {
            return Ok(Self::Bare);
        }
        if checkpoint.tensors.contains_key(&format!("bert.{probe}")) {
            return Ok(Self::Prefixed);
        }
        let sample: Vec<&str> = checkpoint
            .tensors
            .keys()
            .take(3)
            .map(String::as_str)
            .collect();
        Err(ModelError::Incompatible {
            path: checkpoint.path.clone(),
            message: format!(
                "unknown key layout: expected `{probe}` or `bert.{probe}` (a HF BERT checkpoint), \
                 found keys like {}",
                sample.join(", ")
            ),
        })
    }
}

/// A BERT encoder read from a checkpoint, plus what else the checkpoint held.
#[derive(Debug)]
pub struct LoadedBert {
    pub model: BertModel,
    /// `classifier.*` of a `BertForSequenceClassification` checkpoint.
    pub classifier: Option<Linear>,
    pub layout: KeyLayout,
    /// Keys present in the file that the encoder does not use (task heads, buffers).
    pub unused_keys: Vec<String>,
}

/// Collects tensors by key, recording what is missing or misshapen instead of failing at the
/// first problem, so the user sees the whole mismatch at once.
struct Reader<'a> {
    checkpoint: &'a Checkpoint,
    prefix: &'static str,
    device: &'a Device,
    used: BTreeSet<String>,
    problems: Vec<String>,
}

impl<'a> Reader<'a> {
    fn raw(&mut self, key: &str, shape: &[usize]) -> Option<&'a RawTensor> {
        let full = format!("{}{key}", self.prefix);
        let tensor = self.checkpoint.tensors.get(&full).or_else(|| {
            // TF-converted checkpoints: LayerNorm.gamma / LayerNorm.beta.
            let alt = full
                .strip_suffix("LayerNorm.weight")
                .map(|p| format!("{p}LayerNorm.gamma"))
                .or_else(|| {
                    full.strip_suffix("LayerNorm.bias")
                        .map(|p| format!("{p}LayerNorm.beta"))
                })?;
            let t = self.checkpoint.tensors.get(&alt)?;
            self.used.insert(alt);
            Some(t)
        });
        match tensor {
            None => {
                self.problems.push(format!("missing `{full}`"));
                None
            }
            Some(t) if t.shape != shape => {
                self.problems.push(format!(
                    "`{full}` has shape {:?}, the config needs {shape:?}",
                    t.shape
                ));
                self.used.insert(full);
                None
            }
            Some(t) => {
                self.used.insert(full);
                Some(t)
            }
        }
    }

    fn has(&self, key: &str) -> bool {
        self.checkpoint
            .tensors
            .contains_key(&format!("{}{key}", self.prefix))
    }

    fn tensor<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Option<Tensor<D>> {
        let device = self.device;
        self.raw(key, &shape).map(|t| t.to_tensor(device))
    }

    /// PyTorch stores `[out, in]`; Burn's `Linear` wants `[in, out]`.
    fn linear(&mut self, key: &str, d_in: usize, d_out: usize) -> Option<Linear> {
        let device = self.device;
        let weight = self
            .raw(&format!("{key}.weight"), &[d_out, d_in])?
            .transposed()
            .to_tensor::<2>(device);
        let bias = self.tensor::<1>(&format!("{key}.bias"), [d_out])?;
        Some(Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
        })
    }

    fn embedding(&mut self, key: &str, n: usize, d: usize) -> Option<Embedding> {
        let weight = self.tensor::<2>(&format!("{key}.weight"), [n, d])?;
        Some(Embedding {
            weight: Param::from_tensor(weight),
        })
    }

    fn layer_norm(&mut self, key: &str, config: &BertConfig) -> Option<LayerNorm> {
        let d = config.hidden_size;
        let gamma = self.tensor::<1>(&format!("{key}.weight"), [d]);
        let beta = self.tensor::<1>(&format!("{key}.bias"), [d]);
        Some(LayerNorm::from_parts(gamma?, beta?, config.layer_norm_eps))
    }
}

/// Builds the encoder (and the classifier, if the checkpoint has one) from `checkpoint`.
pub fn load_bert(
    checkpoint: &Checkpoint,
    config: &BertConfig,
    device: &Device,
) -> Result<LoadedBert> {
    let layout = KeyLayout::detect(checkpoint)?;
    let mut r = Reader {
        checkpoint,
        prefix: layout.prefix(),
        device,
        used: BTreeSet::new(),
        problems: Vec::new(),
    };
    let model = read_model(&mut r, config);
    let classifier = read_classifier(checkpoint, config, device, &mut r.used);
    if !r.problems.is_empty() || model.is_none() {
        let shown: Vec<&str> = r.problems.iter().take(8).map(String::as_str).collect();
        let more = r.problems.len().saturating_sub(shown.len());
        let mut message = shown.join("; ");
        if more > 0 {
            message.push_str(&format!("; and {more} more"));
        }
        return Err(ModelError::Incompatible {
            path: checkpoint.path.clone(),
            message,
        });
    }
    let unused_keys = checkpoint
        .tensors
        .keys()
        .filter(|k| !r.used.contains(*k))
        .cloned()
        .collect();
    Ok(LoadedBert {
        model: model.expect("checked above"),
        classifier,
        layout,
        unused_keys,
    })
}

fn read_model(r: &mut Reader<'_>, c: &BertConfig) -> Option<BertModel> {
    let h = c.hidden_size;
    let embeddings = read_embeddings(r, c);
    let layers: Vec<Option<BertLayer>> = (0..c.num_hidden_layers)
        .map(|i| read_layer(r, c, &format!("encoder.layer.{i}")))
        .collect();
    // A checkpoint with more layers than the config is a mismatch too, not silently truncated.
    let extra = format!(
        "encoder.layer.{}.attention.self.query.weight",
        c.num_hidden_layers
    );
    if r.has(&extra) {
        r.problems.push(format!(
            "the checkpoint has more than num_hidden_layers = {} layers",
            c.num_hidden_layers
        ));
    }
    let pooler = if r.has("pooler.dense.weight") {
        Some(BertPooler {
            dense: r.linear("pooler.dense", h, h)?.into(),
        })
    } else {
        None
    };
    Some(BertModel {
        embeddings: embeddings?,
        encoder: BertEncoder {
            layer: layers.into_iter().collect::<Option<Vec<_>>>()?,
        },
        pooler,
    })
}

fn read_embeddings(r: &mut Reader<'_>, c: &BertConfig) -> Option<BertEmbeddings> {
    let h = c.hidden_size;
    let word = r.embedding("embeddings.word_embeddings", c.vocab_size, h);
    let position = r.embedding(
        "embeddings.position_embeddings",
        c.max_position_embeddings,
        h,
    );
    let token_type = r.embedding("embeddings.token_type_embeddings", c.type_vocab_size, h);
    let norm = r.layer_norm("embeddings.LayerNorm", c);
    Some(BertEmbeddings {
        word_embeddings: word?,
        position_embeddings: position?,
        token_type_embeddings: token_type?,
        layer_norm: norm?,
        dropout: DropoutConfig::new(c.hidden_dropout_prob).init(),
    })
}

fn read_layer(r: &mut Reader<'_>, c: &BertConfig, key: &str) -> Option<BertLayer> {
    let h = c.hidden_size;
    let query = r.linear(&format!("{key}.attention.self.query"), h, h);
    let k = r.linear(&format!("{key}.attention.self.key"), h, h);
    let value = r.linear(&format!("{key}.attention.self.value"), h, h);
    let attn_out = read_residual(r, c, &format!("{key}.attention.output"), h);
    let inter = r.linear(&format!("{key}.intermediate.dense"), h, c.intermediate_size);
    let out = read_residual(r, c, &format!("{key}.output"), c.intermediate_size);
    Some(BertLayer::from_parts(
        c,
        BertSelfAttention::from_parts(c, query?, k?, value?),
        attn_out?,
        inter?,
        out?,
    ))
}

fn read_residual(
    r: &mut Reader<'_>,
    c: &BertConfig,
    key: &str,
    d_in: usize,
) -> Option<BertResidualOutput> {
    let dense = r.linear(&format!("{key}.dense"), d_in, c.hidden_size);
    let norm = r.layer_norm(&format!("{key}.LayerNorm"), c);
    Some(BertResidualOutput {
        dense: dense?.into(),
        layer_norm: norm?,
        dropout: DropoutConfig::new(c.hidden_dropout_prob).init(),
    })
}

/// `classifier.weight` / `classifier.bias` of a sequence-classification checkpoint, if present
/// and well-formed (a head of another shape is left for the caller to replace).
fn read_classifier(
    checkpoint: &Checkpoint,
    config: &BertConfig,
    device: &Device,
    used: &mut BTreeSet<String>,
) -> Option<Linear> {
    let w = checkpoint.tensors.get("classifier.weight")?;
    let b = checkpoint.tensors.get("classifier.bias")?;
    let [n, d] = w.shape[..] else { return None };
    if d != config.hidden_size || b.shape != [n] {
        return None;
    }
    used.insert("classifier.weight".into());
    used.insert("classifier.bias".into());
    Some(Linear {
        weight: Param::from_tensor(w.transposed().to_tensor::<2>(device)),
        bias: Some(Param::from_tensor(b.to_tensor(device))),
    })
}
