//! `config.json` of a HuggingFace BERT checkpoint.
//!
//! Field names are HF's, so a config written by `transformers` deserialises as is; unknown keys
//! (there are many: `transformers_version`, `gradient_checkpointing`, ...) are ignored.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Model types that share BERT's architecture and checkpoint layout.
const BERT_MODEL_TYPES: &[&str] = &["bert"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    /// Std of the normal init of new linear layers (HF's `_init_weights`).
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Dropout of the classification head; HF falls back to `hidden_dropout_prob` when null.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// Label names of a classification checkpoint, `{"0": "LABEL_0", ...}`.
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
}

fn default_initializer_range() -> f64 {
    0.02
}
fn default_model_type() -> String {
    "bert".into()
}
fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_position_embeddings() -> usize {
    512
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_position_embedding_type() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Reads and validates `config.json`; every error names the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_small_text(path)?;
        let config: Self = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Rejects configs this implementation would compute wrongly rather than approximately.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !BERT_MODEL_TYPES.contains(&self.model_type.as_str()) {
            return Err(format!(
                "model_type \"{}\" is not supported: only BERT checkpoints ({}) can be loaded",
                self.model_type,
                BERT_MODEL_TYPES.join(", ")
            ));
        }
        if let Some(bad) = self
            .architectures
            .iter()
            .flatten()
            .find(|a| !a.starts_with("Bert"))
        {
            return Err(format!(
                "architectures lists \"{bad}\", which is not a BERT architecture"
            ));
        }
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if value == 0 {
                return Err(format!("{field} must be at least 1"));
            }
        }
        let dropouts = [
            ("hidden_dropout_prob", Some(self.hidden_dropout_prob)),
            (
                "attention_probs_dropout_prob",
                Some(self.attention_probs_dropout_prob),
            ),
            ("classifier_dropout", self.classifier_dropout),
        ];
        for (field, p) in dropouts {
            if let Some(p) = p
                && !(0.0..1.0).contains(&p)
            {
                return Err(format!("{field} must be in [0, 1), got {p}"));
            }
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return Err(format!(
                "layer_norm_eps must be in (0, 1), got {}",
                self.layer_norm_eps
            ));
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            return Err(format!(
                "initializer_range must be finite and >= 0, got {}",
                self.initializer_range
            ));
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(format!(
                "pad_token_id {} is outside the vocabulary ({} tokens)",
                self.pad_token_id, self.vocab_size
            ));
        }
        self.labels()?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_new" | "relu") {
            return Err(format!(
                "hidden_act \"{}\" is not supported (gelu, gelu_new, relu)",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type \"{}\" is not supported (absolute)",
                self.position_embedding_type
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Label names in index order, when the checkpoint carries them. `id2label` is keyed by
    /// index: its keys must be exactly `"0"` .. `"n-1"` (a gap would shift every later label).
    pub fn labels(&self) -> std::result::Result<Option<Vec<String>>, String> {
        let Some(map) = self.id2label.as_ref() else {
            return Ok(None);
        };
        let mut names = vec![None; map.len()];
        for (key, name) in map {
            match key.parse::<usize>() {
                Ok(i) if i < names.len() && names[i].is_none() => names[i] = Some(name.clone()),
                _ => {
                    return Err(format!(
                        "id2label key {key:?}: keys must be the indices 0..{} of the {} labels",
                        map.len(),
                        map.len()
                    ));
                }
            }
        }
        Ok(Some(names.into_iter().flatten().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64
        })
    }

    #[test]
    fn defaults_match_hf() {
        let c: BertConfig = serde_json::from_value(base()).unwrap();
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert_eq!(c.max_position_embeddings, 512);
        assert!(c.validate().is_ok());
        assert_eq!(c.head_dim(), 8);
    }

    #[test]
    fn rejects_other_architectures() {
        let mut v = base();
        v["model_type"] = "roberta".into();
        let c: BertConfig = serde_json::from_value(v).unwrap();
        assert!(c.validate().unwrap_err().contains("roberta"));

        let mut v = base();
        v["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        let c: BertConfig = serde_json::from_value(v).unwrap();
        assert!(c.validate().unwrap_err().contains("GPT2LMHeadModel"));
    }

    #[test]
    fn numeric_fields_are_range_checked() {
        for (field, value, needle) in [
            (
                "hidden_dropout_prob",
                serde_json::json!(1.5),
                "hidden_dropout_prob",
            ),
            (
                "attention_probs_dropout_prob",
                serde_json::json!(-0.1),
                "attention_probs",
            ),
            (
                "classifier_dropout",
                serde_json::json!(1.0),
                "classifier_dropout",
            ),
            ("layer_norm_eps", serde_json::json!(-1.0), "layer_norm_eps"),
            ("layer_norm_eps", serde_json::json!(0.0), "layer_norm_eps"),
            (
                "max_position_embeddings",
                serde_json::json!(0),
                "max_position_embeddings",
            ),
            ("vocab_size", serde_json::json!(0), "vocab_size"),
            ("pad_token_id", serde_json::json!(100), "pad_token_id"),
            (
                "initializer_range",
                serde_json::json!(-0.5),
                "initializer_range",
            ),
        ] {
            let mut v = base();
            v[field] = value;
            let c: BertConfig = serde_json::from_value(v).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.contains(needle), "{field}: {e}");
        }
    }

    #[test]
    fn id2label_is_read_by_key_not_position() {
        let mut v = base();
        v["id2label"] = serde_json::json!({"1": "b", "0": "a", "2": "c"});
        let c: BertConfig = serde_json::from_value(v).unwrap();
        assert_eq!(c.labels().unwrap().unwrap(), ["a", "b", "c"]);
        // Ten labels: "10" sorts before "2" as a string, not as an index.
        let mut v = base();
        v["id2label"] = (0..11).map(|i| (i.to_string(), format!("l{i}"))).collect();
        let c: BertConfig = serde_json::from_value(v).unwrap();
        assert_eq!(c.labels().unwrap().unwrap()[10], "l10");
        let mut v = base();
        v["id2label"] = serde_json::json!({"0": "a", "5": "b"});
        let c: BertConfig = serde_json::from_value(v).unwrap();
        assert!(c.validate().unwrap_err().contains("id2label key \"5\""));
    }

    #[test]
    fn rejects_indivisible_heads() {
        let mut v = base();
        v["num_attention_heads"] = 5.into();
        let c: BertConfig = serde_json::from_value(v).unwrap();
        assert!(c.validate().unwrap_err().contains("multiple"));
    }
}
