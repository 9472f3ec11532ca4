//! Writing a classifier as a plain HuggingFace `BertForSequenceClassification` directory
//! (`config.json` + `model.safetensors` + the tokenizer files), which `transformers` loads with
//! `from_pretrained` and no peft, and which this project loads back with `--model DIR`.
//!
//! Only methods that change BERT's own weights have this form (a method says why not in
//! [`crate::peft::Method::export_refusal`]): weight updates are merged into the base weights,
//! and methods that feed BERT extra virtual tokens stay peft adapters.

use std::collections::BTreeMap;
use std::path::Path;

use crate::classifier::BertClassifier;
use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::params;
use crate::peft::PeftConfig;
use crate::weights::{RawTensor, write_safetensors};

/// Weight file name, as `save_pretrained` writes it.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The tokenizer files `save_pretrained` of a BERT tokenizer writes, copied when present.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Burn stores linear weights `[in, out]`, PyTorch `[out, in]`; embeddings and LayerNorm
/// vectors are the same on both sides.
fn is_linear_weight(path: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && path.ends_with(".weight") && !path.contains("embeddings.")
}

/// Writes `model` (trained with `peft`) into `dir` as a HF sequence classifier with label names
/// `labels`, the tokenizer files taken from `tokenizer_dir`; weight updates are merged first
/// ([`BertClassifier::merged`]). `extra` fields are added to `config.json` (transformers keeps
/// unknown keys as attributes). Each file is written atomically.
pub fn write_hf_classifier(
    dir: &Path,
    model: &BertClassifier,
    peft: &PeftConfig,
    bert: &BertConfig,
    labels: &[String],
    tokenizer_dir: &Path,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let refuse = |message: &str| ModelError::Incompatible {
        path: dir.to_path_buf(),
        message: message.to_string(),
    };
    if let Some(reason) = peft.method().export_refusal() {
        return Err(refuse(reason));
    }
    let tensors = params::collect(&model.clone().merged(), |_| true);
    let hf: BTreeMap<String, RawTensor> = tensors
        .into_iter()
        .map(|(path, t)| {
            let t = if is_linear_weight(&path, &t.shape) {
                t.transposed()
            } else {
                t
            };
            (params::hf_key(&path), t)
        })
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(&dir.join(WEIGHTS_FILE), &hf, Some(meta))?;

    let mut config = classifier_config(bert, labels);
    if let Some(fields) = config.as_object_mut() {
        fields.extend(extra);
    }
    let text = serde_json::to_string_pretty(&config).expect("config serialises");
    crate::fsutil::write_atomic(&dir.join("config.json"), text.as_bytes())?;

    for name in TOKENIZER_FILES {
        let from = tokenizer_dir.join(name);
        if from.is_file() {
            let bytes = std::fs::read(&from).map_err(|e| ModelError::io(&from, e))?;
            crate::fsutil::write_atomic(&dir.join(name), &bytes)?;
        }
    }
    Ok(())
}

/// The base's `config.json` with the classification fields `transformers` reads:
/// `architectures`, `id2label` / `label2id` (which also give `num_labels`).
fn classifier_config(bert: &BertConfig, labels: &[String]) -> serde_json::Value {
    let mut config = bert.clone();
    config.architectures = Some(vec!["BertForSequenceClassification".into()]);
    config.id2label = Some(
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect(),
    );
    let mut value = serde_json::to_value(&config).expect("config serialises");
    let label2id: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i.into()))
        .collect();
    value["label2id"] = label2id.into();
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_layouts_follow_transformers() {
        assert_eq!(
            params::hf_key("bert.encoder.layer.1.attention.self_attn.query.weight"),
            "bert.encoder.layer.1.attention.self.query.weight"
        );
        assert_eq!(
            params::hf_key("bert.embeddings.layer_norm.gamma"),
            "bert.embeddings.LayerNorm.weight"
        );
        assert_eq!(
            params::hf_key("bert.encoder.layer.0.output.layer_norm.beta"),
            "bert.encoder.layer.0.output.LayerNorm.bias"
        );
        assert!(is_linear_weight("classifier.weight", &[32, 2]));
        assert!(is_linear_weight("bert.pooler.dense.weight", &[32, 32]));
        assert!(!is_linear_weight(
            "bert.embeddings.word_embeddings.weight",
            &[100, 32]
        ));
        assert!(!is_linear_weight("classifier.bias", &[2]));
    }
}
