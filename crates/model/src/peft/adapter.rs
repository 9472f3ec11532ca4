//! HF peft's adapter directory: `adapter_config.json` + `adapter_model.safetensors`, read and
//! written so adapters move between this project and Python's `PeftModel.from_pretrained`.
//!
//! peft 0.12's layout for prefix tuning of a sequence classifier:
//! - `prompt_embeddings`: `[num_virtual_tokens, num_layers * 2 * hidden]`, the prefix after the
//!   projection MLP when `prefix_projection` is on (peft saves the projected prefix and, in
//!   inference mode, rebuilds the encoder as a plain embedding of it);
//! - `base_model.classifier.weight` / `.bias`: the trained head (`modules_to_save`), torch layout.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::classifier::BertClassifier;
use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::peft::{PeftConfig, PrefixTuningConfig};
use crate::weights::{Checkpoint, RawTensor, write_safetensors};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const HEAD_WEIGHT: &str = "base_model.classifier.weight";
const HEAD_BIAS: &str = "base_model.classifier.bias";
const PROMPT: &str = "prompt_embeddings";

/// The fields of peft's `adapter_config.json` this project reads and writes; the rest is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub num_virtual_tokens: Option<usize>,
    #[serde(default)]
    pub token_dim: Option<usize>,
    #[serde(default)]
    pub num_layers: Option<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    #[serde(default)]
    pub prefix_projection: Option<bool>,
    #[serde(default)]
    pub encoder_hidden_size: Option<usize>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// An adapter read from disk, as parameters of a [`BertClassifier`] (module paths, Burn layout).
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub config: AdapterConfig,
    /// How to build the classifier the tensors fit.
    pub peft: PeftConfig,
    pub tensors: BTreeMap<String, RawTensor>,
    pub num_labels: usize,
}

fn adapter_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Incompatible {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Torch `[out, in]` <-> Burn `[in, out]`.
fn transpose(t: &RawTensor) -> RawTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut data = vec![0.0; t.data.len()];
    for i in 0..r {
        for j in 0..c {
            data[j * r + i] = t.data[i * c + j];
        }
    }
    RawTensor::new(vec![c, r], data)
}

/// Reads a peft adapter directory for a BERT with config `bert`.
pub fn read(dir: &Path, bert: &BertConfig) -> Result<PeftAdapter> {
    let config_path = dir.join(CONFIG_FILE);
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
    let config: AdapterConfig = serde_json::from_str(&text)
        .map_err(|e| adapter_error(&config_path, format!("not a peft adapter config: {e}")))?;
    let bad =
        |field: &str, message: String| adapter_error(&config_path, format!("`{field}`: {message}"));
    if config.peft_type != "PREFIX_TUNING" {
        return Err(bad(
            "peft_type",
            format!(
                "{} is not supported yet (supported: PREFIX_TUNING)",
                config.peft_type
            ),
        ));
    }
    if let Some(task) = &config.task_type
        && task != "SEQ_CLS"
    {
        return Err(bad(
            "task_type",
            format!(
                "{task}: only sequence classification (SEQ_CLS) adapters apply to a classifier"
            ),
        ));
    }
    let expect = |field: &str, got: Option<usize>, want: usize| -> Result<()> {
        match got {
            Some(g) if g != want => Err(bad(
                field,
                format!(
                    "{g}, but the base model has {want}: the adapter was trained for another base model"
                ),
            )),
            _ => Ok(()),
        }
    };
    expect("num_layers", config.num_layers, bert.num_hidden_layers)?;
    expect("token_dim", config.token_dim, bert.hidden_size)?;
    expect(
        "num_attention_heads",
        config.num_attention_heads,
        bert.num_attention_heads,
    )?;

    let weights_path = [WEIGHTS_FILE, "adapter_model.bin"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| adapter_error(dir, format!("no {WEIGHTS_FILE} (or adapter_model.bin)")))?;
    let weights = Checkpoint::read(&weights_path)?;
    let get = |key: &str| {
        weights
            .tensors
            .get(key)
            .ok_or_else(|| adapter_error(&weights_path, format!("missing tensor `{key}`")))
    };
    let prompt = get(PROMPT)?;
    let width = bert.num_hidden_layers * 2 * bert.hidden_size;
    if prompt.shape.len() != 2 || prompt.shape[1] != width {
        return Err(adapter_error(
            &weights_path,
            format!(
                "`{PROMPT}` has shape {:?}, the base model needs [num_virtual_tokens, {width}]",
                prompt.shape
            ),
        ));
    }
    let head_w = get(HEAD_WEIGHT)?;
    let head_b = get(HEAD_BIAS)?;
    if head_w.shape.len() != 2 || head_w.shape[1] != bert.hidden_size {
        return Err(adapter_error(
            &weights_path,
            format!(
                "`{HEAD_WEIGHT}` has shape {:?}, the base model needs [num_labels, {}]",
                head_w.shape, bert.hidden_size
            ),
        ));
    }
    let num_labels = head_w.shape[0];
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "prompt_encoder.embedding.weight".to_string(),
        prompt.clone(),
    );
    tensors.insert("classifier.weight".to_string(), transpose(head_w));
    tensors.insert("classifier.bias".to_string(), head_b.clone());
    // The saved prefix is already projected: it loads as a plain prefix embedding.
    let peft = PeftConfig::PrefixTuning(PrefixTuningConfig {
        num_virtual_tokens: prompt.shape[0],
        prefix_projection: false,
        encoder_hidden_size: config.encoder_hidden_size.unwrap_or(128),
    });
    Ok(PeftAdapter {
        config,
        peft,
        tensors,
        num_labels,
    })
}

/// Writes `model` (trained with `peft`) as a peft adapter directory for base model `base`.
/// Returns `Ok(false)` when the method has no peft adapter form (full fine-tuning).
pub fn write(
    dir: &Path,
    model: &BertClassifier,
    peft: &PeftConfig,
    bert: &BertConfig,
    base: &str,
) -> Result<bool> {
    let (PeftConfig::PrefixTuning(cfg), Some(encoder)) = (peft, &model.prompt_encoder) else {
        return Ok(false);
    };
    let host = |t: Tensor<2>| {
        let shape = t.dims().to_vec();
        RawTensor::new(
            shape,
            t.into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32"),
        )
    };
    let mut tensors = BTreeMap::new();
    tensors.insert(PROMPT.to_string(), host(encoder.prefix_embeddings()));
    tensors.insert(
        HEAD_WEIGHT.to_string(),
        transpose(&host(model.classifier.weight.val())),
    );
    let bias = model
        .classifier
        .bias
        .as_ref()
        .map(|b| b.val().unsqueeze_dim::<2>(0))
        .unwrap_or_else(|| {
            Tensor::zeros([1, model.num_labels()], &encoder.embedding.weight.device())
        });
    let mut bias = host(bias);
    bias.shape = vec![model.num_labels()];
    tensors.insert(HEAD_BIAS.to_string(), bias);

    let config = serde_json::json!({
        "auto_mapping": null,
        "base_model_name_or_path": base,
        "encoder_hidden_size": cfg.encoder_hidden_size,
        "inference_mode": true,
        "num_attention_heads": bert.num_attention_heads,
        "num_layers": bert.num_hidden_layers,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": cfg.num_virtual_tokens,
        "peft_type": "PREFIX_TUNING",
        "prefix_projection": cfg.prefix_projection,
        "revision": null,
        "task_type": "SEQ_CLS",
        "token_dim": bert.hidden_size,
    });
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors, Some(meta))?;
    let text = serde_json::to_string_pretty(&config).expect("json");
    crate::fsutil::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
    Ok(true)
}
