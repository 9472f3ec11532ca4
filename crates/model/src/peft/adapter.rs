//! HF peft's adapter directory: `adapter_config.json` + `adapter_model.safetensors`, read and
//! written so adapters move between this project and Python's `PeftModel.from_pretrained`.
//!
//! This module does what every method shares: the config file, the checks that the adapter
//! belongs to this base model and task, the weights file, the trained head (peft's
//! `modules_to_save`) and prompt learning's `prompt_embeddings`. Each method reads and writes
//! its own tensors and fields ([`super::Method::read_adapter`], [`super::Method::write_adapter`]).
//! Tensors are in torch layout (`[out, in]` linears) on disk, Burn's `[in, out]` in memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::nn::Linear;
use burn::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{PeftConfig, PeftModule, PeftType, Tensors};
use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::weights::{Checkpoint, RawTensor, write_safetensors};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prompt learning's tensor: the virtual tokens, after any encoder.
pub const PROMPT: &str = "prompt_embeddings";

/// The fields of peft's `adapter_config.json` every method shares; a method's own fields are in
/// `other` (read with [`AdapterFiles::field`]), which is kept as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub token_dim: Option<usize>,
    #[serde(default)]
    pub num_layers: Option<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// An adapter read from disk, as parameters of a [`BertClassifier`] (module paths, Burn layout).
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub config: AdapterConfig,
    /// How to build the classifier the tensors fit.
    pub peft: PeftConfig,
    pub tensors: Tensors,
    pub num_labels: usize,
}

/// An adapter directory's two files, as a method's reader sees them.
pub struct AdapterFiles {
    pub config: AdapterConfig,
    pub config_path: PathBuf,
    /// Every tensor of the weights file, by peft key, torch layout.
    pub weights: Tensors,
    pub weights_path: PathBuf,
}

/// What a method writes into an adapter: its tensors under peft's keys (torch layout, head
/// excluded), its `adapter_config.json` fields, and where peft keeps the head.
pub struct AdapterParts {
    pub tensors: Tensors,
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub head_prefix: &'static str,
}

/// Where peft keeps the head of a prompt-learning method (LoRA wraps the model once more).
pub const HEAD_PREFIX: &str = "base_model.classifier";

impl AdapterFiles {
    /// An error about `field` of `adapter_config.json`.
    pub fn bad(&self, field: &str, message: impl std::fmt::Display) -> ModelError {
        ModelError::Incompatible {
            path: self.config_path.clone(),
            message: format!("`{field}`: {message}"),
        }
    }

    /// An error about the weights file.
    pub fn wrong(&self, message: impl Into<String>) -> ModelError {
        ModelError::Incompatible {
            path: self.weights_path.clone(),
            message: message.into(),
        }
    }

    /// A method field of `adapter_config.json`; `None` when absent or null.
    pub fn field<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        match self.config.other.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| self.bad(name, e)),
        }
    }

    pub fn get(&self, key: &str) -> Result<&RawTensor> {
        self.weights
            .get(key)
            .ok_or_else(|| self.wrong(format!("missing tensor `{key}`")))
    }

    /// The trained head under `prefix` as `classifier.{weight,bias}` (Burn layout), and the
    /// tensors that remain for the method.
    pub fn split_head(&self, prefix: &str, bert: &BertConfig) -> Result<(Tensors, Tensors)> {
        let (weight_key, bias_key) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        let weight = self.get(&weight_key)?;
        let bias = self.get(&bias_key)?;
        if weight.shape.len() != 2 || weight.shape[1] != bert.hidden_size || weight.shape[0] == 0 {
            return Err(self.wrong(format!(
                "`{weight_key}` has shape {:?}, the base model needs [num_labels, {}]",
                weight.shape, bert.hidden_size
            )));
        }
        let mut head = Tensors::new();
        head.insert("classifier.weight".into(), weight.transposed());
        head.insert("classifier.bias".into(), bias.clone());
        let rest = self
            .weights
            .iter()
            .filter(|(k, _)| **k != weight_key && **k != bias_key)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok((head, rest))
    }

    /// A prompt-learning adapter's parameters: the head, and `prompt_embeddings` `[n, width]`
    /// as the embedding of the module at `module` (e.g. `prefix_encoder`); and `n`.
    pub fn read_prompt(
        &self,
        bert: &BertConfig,
        width: usize,
        module: &str,
    ) -> Result<(Tensors, usize)> {
        let (mut tensors, rest) = self.split_head(HEAD_PREFIX, bert)?;
        let (prompt, n) = self.prompt(&rest, width)?;
        tensors.insert(format!("{module}.embedding.weight"), prompt);
        Ok((tensors, n))
    }

    /// Prompt learning's `prompt_embeddings` `[n, width]`, alone beside the head, and `n`
    /// checked against `num_virtual_tokens`.
    fn prompt(&self, rest: &Tensors, width: usize) -> Result<(RawTensor, usize)> {
        if let Some(key) = rest.keys().find(|k| *k != PROMPT) {
            return Err(self.wrong(format!(
                "unexpected tensor `{key}` in a {} adapter",
                self.config.peft_type
            )));
        }
        let prompt = self.get(PROMPT)?;
        if prompt.shape.len() != 2 || prompt.shape[1] != width || prompt.shape[0] == 0 {
            return Err(self.wrong(format!(
                "`{PROMPT}` has shape {:?}, the base model needs [num_virtual_tokens, {width}]",
                prompt.shape
            )));
        }
        let n = prompt.shape[0];
        if let Some(declared) = self.field::<usize>("num_virtual_tokens")?
            && declared != n
        {
            return Err(self.bad(
                "num_virtual_tokens",
                format!("{declared}, but `{PROMPT}` holds {n} virtual tokens"),
            ));
        }
        Ok((prompt.clone(), n))
    }
}

/// A prompt-learning adapter's parts: the virtual tokens `[n, width]` as `prompt_embeddings`,
/// with the config fields prompt learning shares (the method adds its own).
pub fn prompt_parts(embeddings: Tensor<2>, bert: &BertConfig) -> Result<AdapterParts> {
    let prompt = RawTensor::from_tensor(embeddings)?;
    let fields = virtual_token_fields(prompt.shape[0], bert);
    Ok(AdapterParts {
        tensors: Tensors::from([(PROMPT.to_string(), prompt)]),
        fields,
        head_prefix: HEAD_PREFIX,
    })
}

fn virtual_token_fields(n: usize, bert: &BertConfig) -> serde_json::Map<String, serde_json::Value> {
    let mut f = serde_json::Map::new();
    f.insert("num_virtual_tokens".into(), n.into());
    f.insert("token_dim".into(), bert.hidden_size.into());
    f.insert("num_layers".into(), bert.num_hidden_layers.into());
    f.insert(
        "num_attention_heads".into(),
        bert.num_attention_heads.into(),
    );
    f.insert("num_transformer_submodules".into(), 1.into());
    f
}

/// Reads a peft adapter directory for a BERT with config `bert`.
pub fn read(dir: &Path, bert: &BertConfig) -> Result<PeftAdapter> {
    let config_path = dir.join(CONFIG_FILE);
    let text = crate::fsutil::read_small_text(&config_path)?;
    let config: AdapterConfig =
        serde_json::from_str(&text).map_err(|e| ModelError::Incompatible {
            path: config_path.clone(),
            message: format!("not a peft adapter config: {e}"),
        })?;
    let weights_path = [WEIGHTS_FILE, "adapter_model.bin"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file());
    let mut files = AdapterFiles {
        config,
        config_path,
        weights: Tensors::new(),
        weights_path: weights_path
            .clone()
            .unwrap_or_else(|| dir.join(WEIGHTS_FILE)),
    };
    let Some(peft_type) = PeftType::parse(&files.config.peft_type) else {
        let supported: Vec<&str> = PeftType::ALL.iter().map(|t| t.as_str()).collect();
        return Err(files.bad(
            "peft_type",
            format!(
                "{} is not supported (supported: {})",
                files.config.peft_type,
                supported.join(", ")
            ),
        ));
    };
    check_base(&files, bert)?;
    let Some(weights_path) = weights_path else {
        return Err(ModelError::Incompatible {
            path: dir.to_path_buf(),
            message: format!("no {WEIGHTS_FILE} (or adapter_model.bin)"),
        });
    };
    files.weights = Checkpoint::read(&weights_path)?.tensors;
    let (peft, tensors) = peft_type.read_adapter(&files, bert)?;
    let num_labels = tensors
        .get("classifier.weight")
        .map_or(0, |w| w.shape.get(1).copied().unwrap_or(0));
    Ok(PeftAdapter {
        config: files.config,
        peft,
        tensors,
        num_labels,
    })
}

/// The adapter was made for a sequence classifier on a BERT of this shape.
fn check_base(files: &AdapterFiles, bert: &BertConfig) -> Result<()> {
    let config = &files.config;
    if let Some(task) = &config.task_type
        && task != "SEQ_CLS"
    {
        return Err(files.bad(
            "task_type",
            format!(
                "{task}: only sequence classification (SEQ_CLS) adapters apply to a classifier"
            ),
        ));
    }
    for (field, got, want) in [
        ("num_layers", config.num_layers, bert.num_hidden_layers),
        ("token_dim", config.token_dim, bert.hidden_size),
        (
            "num_attention_heads",
            config.num_attention_heads,
            bert.num_attention_heads,
        ),
    ] {
        if let Some(g) = got
            && g != want
        {
            return Err(files.bad(
                field,
                format!(
                    "{g}, but the base model has {want}: the adapter was trained for another base model"
                ),
            ));
        }
    }
    Ok(())
}

/// Writes a trained method's module and the classifier head (`[hidden, num_labels]`) as a peft
/// adapter directory for base model `base`. Returns `Ok(false)` when the method has no peft
/// adapter form (full fine-tuning).
pub fn write(
    dir: &Path,
    module: Option<&PeftModule>,
    head: &Linear,
    peft: &PeftConfig,
    bert: &BertConfig,
    base: &str,
) -> Result<bool> {
    let (Some(peft_type), Some(parts)) = (
        peft.peft_type(),
        peft.method().write_adapter(module, bert, base)?,
    ) else {
        return Ok(false);
    };
    let mut config = serde_json::json!({
        "auto_mapping": null,
        "base_model_name_or_path": base,
        "inference_mode": true,
        "peft_type": peft_type.as_str(),
        "revision": null,
        "task_type": "SEQ_CLS",
    });
    if let Some(fields) = config.as_object_mut() {
        fields.extend(parts.fields);
    }
    let mut tensors = parts.tensors;
    let prefix = parts.head_prefix;
    tensors.insert(
        format!("{prefix}.weight"),
        RawTensor::from_tensor(head.weight.val())?.transposed(),
    );
    let n = head.weight.dims()[1];
    let bias = match &head.bias {
        Some(b) => RawTensor::from_tensor(b.val())?,
        None => RawTensor::new(vec![n], vec![0.0; n]),
    };
    tensors.insert(format!("{prefix}.bias"), RawTensor::new(vec![n], bias.data));

    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors, Some(meta))?;
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| ModelError::Other(format!("adapter config: {e}")))?;
    crate::fsutil::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
    Ok(true)
}
