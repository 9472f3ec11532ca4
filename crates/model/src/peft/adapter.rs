//! HF peft's adapter directory: `adapter_config.json` + `adapter_model.safetensors`, read and
//! written so adapters move between this project and Python's `PeftModel.from_pretrained`.
//!
//! peft 0.12's layouts for a sequence classifier (torch layout, `[out, in]` linears):
//! - prefix tuning: `prompt_embeddings` `[num_virtual_tokens, num_layers * 2 * hidden]`, the
//!   prefix after the projection MLP when `prefix_projection` is on;
//! - prompt tuning and p-tuning: `prompt_embeddings` `[num_virtual_tokens, hidden]`, after
//!   p-tuning's MLP (peft saves the final vectors and, in inference mode, rebuilds the encoder
//!   as a plain embedding of them, so they load here as a plain prompt whatever the encoder);
//! - LoRA: `base_model.model.bert.<module>.lora_A.weight` `[r, in]` and `.lora_B.weight`
//!   `[out, r]` per targeted linear;
//! - the trained head (`modules_to_save`): `base_model.classifier.{weight,bias}`, or
//!   `base_model.model.classifier.*` under LoRA (whose base model is wrapped once more).

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::classifier::BertClassifier;
use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::params;
use crate::peft::{LoraConfig, PeftConfig, PrefixTuningConfig, PromptTuningConfig};
use crate::weights::{Checkpoint, RawTensor, write_safetensors};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PROMPT: &str = "prompt_embeddings";
const LORA_PREFIX: &str = "base_model.model.";

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
    #[serde(default)]
    pub r: Option<usize>,
    #[serde(default)]
    pub lora_alpha: Option<f64>,
    #[serde(default)]
    pub lora_dropout: Option<f64>,
    #[serde(default)]
    pub use_rslora: Option<bool>,
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
    t.transposed()
}

/// The head's key prefix in peft's state dict: LoRA wraps the task model once more.
fn head_prefix(peft_type: &str) -> &'static str {
    if peft_type == "LORA" {
        "base_model.model.classifier"
    } else {
        "base_model.classifier"
    }
}

/// peft's LoRA key (`base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight`)
/// -> this project's module path (`bert.encoder.layer.0.attention.self_attn.query.lora.lora_a.weight`).
fn lora_key_to_path(key: &str) -> Option<String> {
    let rest = key.strip_prefix(LORA_PREFIX)?;
    let (module, factor) = rest
        .strip_suffix(".lora_A.weight")
        .map(|m| (m, "lora_a"))
        .or_else(|| rest.strip_suffix(".lora_B.weight").map(|m| (m, "lora_b")))?;
    let module = module.replace(".attention.self.", ".attention.self_attn.");
    Some(format!("{module}.lora.{factor}.weight"))
}

fn path_to_lora_key(path: &str) -> String {
    let module = params::hf_key(path)
        .replace(".lora.lora_a.weight", ".lora_A.weight")
        .replace(".lora.lora_b.weight", ".lora_B.weight");
    format!("{LORA_PREFIX}{module}")
}

/// The HF module path of a LoRA'd linear, from its `lora_A` key: a LoRA target.
fn lora_module(key: &str) -> Option<&str> {
    key.strip_prefix(LORA_PREFIX)?
        .strip_suffix(".lora_A.weight")
}

/// The same from a `lora_B` key.
fn lora_b_module(key: &str) -> Option<&str> {
    key.strip_prefix(LORA_PREFIX)?
        .strip_suffix(".lora_B.weight")
}

/// The tensors and `target_modules` must describe the same linears: every LoRA'd module is
/// one the config targets, and every target reaches at least one of them (a list of names, as
/// peft writes for BERT; a regex string is not checked).
fn check_lora_targets(
    config: &AdapterConfig,
    modules: &[String],
    bad: &dyn Fn(&str, String) -> ModelError,
) -> Result<()> {
    let Some(targets) = config
        .other
        .get("target_modules")
        .and_then(|t| t.as_array())
    else {
        return Ok(());
    };
    let targets: Vec<&str> = targets.iter().filter_map(|t| t.as_str()).collect();
    if let Some(m) = modules
        .iter()
        .find(|m| !targets.iter().any(|t| super::lora::target_matches(t, m)))
    {
        return Err(bad(
            "target_modules",
            format!("{targets:?} does not include `{m}`, which the weights adapt"),
        ));
    }
    if let Some(t) = targets
        .iter()
        .find(|t| !modules.iter().any(|m| super::lora::target_matches(t, m)))
    {
        return Err(bad(
            "target_modules",
            format!("`{t}` is targeted, but the weights adapt no such module"),
        ));
    }
    Ok(())
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
    const SUPPORTED: &str = "PREFIX_TUNING, PROMPT_TUNING, P_TUNING, LORA";
    if !matches!(
        config.peft_type.as_str(),
        "PREFIX_TUNING" | "PROMPT_TUNING" | "P_TUNING" | "LORA"
    ) {
        return Err(bad(
            "peft_type",
            format!(
                "{} is not supported (supported: {SUPPORTED})",
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
    if config.peft_type == "LORA" {
        check_lora_options(&config, &bad)?;
    }
    if let Some(alpha) = config.lora_alpha
        && !(alpha.is_finite() && alpha > 0.0)
    {
        return Err(bad(
            "lora_alpha",
            format!("{alpha}: must be finite and positive"),
        ));
    }
    if let Some(p) = config.lora_dropout
        && !(0.0..1.0).contains(&p)
    {
        return Err(bad("lora_dropout", format!("{p}: must be in [0, 1)")));
    }

    let weights_path = [WEIGHTS_FILE, "adapter_model.bin"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| adapter_error(dir, format!("no {WEIGHTS_FILE} (or adapter_model.bin)")))?;
    let weights = Checkpoint::read(&weights_path)?;
    let wrong = |message: String| adapter_error(&weights_path, message);
    let get = |key: &str| {
        weights
            .tensors
            .get(key)
            .ok_or_else(|| wrong(format!("missing tensor `{key}`")))
    };

    let head = head_prefix(&config.peft_type);
    let (head_weight, head_bias) = (format!("{head}.weight"), format!("{head}.bias"));
    let head_w = get(&head_weight)?;
    let head_b = get(&head_bias)?;
    if head_w.shape.len() != 2 || head_w.shape[1] != bert.hidden_size {
        return Err(wrong(format!(
            "`{head_weight}` has shape {:?}, the base model needs [num_labels, {}]",
            head_w.shape, bert.hidden_size
        )));
    }
    let num_labels = head_w.shape[0];
    let mut tensors = BTreeMap::new();
    tensors.insert("classifier.weight".to_string(), transpose(head_w));
    tensors.insert("classifier.bias".to_string(), head_b.clone());

    let peft = if config.peft_type == "LORA" {
        let r = config.r.ok_or_else(|| bad("r", "missing".into()))?;
        let mut a_modules = Vec::new();
        let mut b_modules = Vec::new();
        for (key, t) in &weights.tensors {
            if *key == head_weight || *key == head_bias {
                continue;
            }
            let path = lora_key_to_path(key).ok_or_else(|| {
                wrong(format!(
                    "unexpected tensor `{key}` (a LoRA adapter holds `lora_A`/`lora_B` weights and the classifier head)"
                ))
            })?;
            // lora_A is [r, in], lora_B is [out, r] (torch layout).
            let (modules, rank_axis) = match lora_module(key) {
                Some(module) => (&mut a_modules, (module, 0)),
                None => (&mut b_modules, (lora_b_module(key).unwrap_or(key), 1)),
            };
            if t.shape.len() != 2 || t.shape[rank_axis.1] != r {
                return Err(wrong(format!(
                    "`{key}` has shape {:?}, but `r` in {CONFIG_FILE} is {r}",
                    t.shape
                )));
            }
            modules.push(rank_axis.0.to_string());
            tensors.insert(path, transpose(t));
        }
        if let Some(m) = a_modules.iter().find(|m| !b_modules.contains(m)) {
            return Err(wrong(format!(
                "`{LORA_PREFIX}{m}` has lora_A but no lora_B"
            )));
        }
        if let Some(m) = b_modules.iter().find(|m| !a_modules.contains(m)) {
            return Err(wrong(format!(
                "`{LORA_PREFIX}{m}` has lora_B but no lora_A"
            )));
        }
        if a_modules.is_empty() {
            return Err(wrong(
                "no LoRA tensors (`...lora_A.weight`/`...lora_B.weight`): \
                 this adapter would leave the base model unchanged"
                    .into(),
            ));
        }
        check_lora_targets(&config, &a_modules, &bad)?;
        PeftConfig::Lora(LoraConfig {
            r,
            lora_alpha: config.lora_alpha.unwrap_or(8.0),
            lora_dropout: config.lora_dropout.unwrap_or(0.0),
            target_modules: a_modules,
            use_rslora: config.use_rslora.unwrap_or(false),
        })
    } else {
        let prompt = get(PROMPT)?;
        if let Some(key) = weights
            .tensors
            .keys()
            .find(|k| **k != head_weight && **k != head_bias && *k != PROMPT)
        {
            return Err(wrong(format!(
                "unexpected tensor `{key}` in a {} adapter",
                config.peft_type
            )));
        }
        let prefix = config.peft_type == "PREFIX_TUNING";
        let width = if prefix {
            bert.num_hidden_layers * 2 * bert.hidden_size
        } else {
            bert.hidden_size
        };
        if prompt.shape.len() != 2 || prompt.shape[1] != width {
            return Err(wrong(format!(
                "`{PROMPT}` has shape {:?}, the base model needs [num_virtual_tokens, {width}]",
                prompt.shape
            )));
        }
        let n = prompt.shape[0];
        if let Some(declared) = config.num_virtual_tokens
            && declared != n
        {
            return Err(bad(
                "num_virtual_tokens",
                format!("{declared}, but `{PROMPT}` holds {n} virtual tokens"),
            ));
        }
        if prefix {
            tensors.insert("prefix_encoder.embedding.weight".into(), prompt.clone());
            // The saved prefix is already projected: it loads as a plain prefix embedding.
            PeftConfig::PrefixTuning(PrefixTuningConfig::new().with_num_virtual_tokens(n))
        } else {
            tensors.insert("prompt_encoder.embedding.weight".into(), prompt.clone());
            // Prompt tuning and p-tuning (MLP or LSTM) alike: the saved prompt is final.
            PeftConfig::PromptTuning(PromptTuningConfig {
                num_virtual_tokens: n,
                ..Default::default()
            })
        }
    };
    Ok(PeftAdapter {
        config,
        peft,
        tensors,
        num_labels,
    })
}

/// LoRA options that change what the weights mean and that this project does not implement are
/// refused by name rather than loaded wrongly.
fn check_lora_options(
    config: &AdapterConfig,
    bad: &dyn Fn(&str, String) -> ModelError,
) -> Result<()> {
    let field = |name: &str| config.other.get(name).cloned().unwrap_or_default();
    if let Some(bias) = field("bias").as_str()
        && bias != "none"
    {
        return Err(bad("bias", format!("{bias:?}: only \"none\" is supported")));
    }
    if field("use_dora").as_bool() == Some(true) {
        return Err(bad("use_dora", "DoRA is not supported".into()));
    }
    for name in ["rank_pattern", "alpha_pattern"] {
        if field(name).as_object().is_some_and(|o| !o.is_empty()) {
            return Err(bad(
                name,
                "per-module ranks/alphas are not supported".into(),
            ));
        }
    }
    if field("fan_in_fan_out").as_bool() == Some(true) {
        return Err(bad(
            "fan_in_fan_out",
            "true is for Conv1D models (GPT-2), not BERT".into(),
        ));
    }
    Ok(())
}

fn host<const D: usize>(t: Tensor<D>) -> RawTensor {
    let shape = t.dims().to_vec();
    RawTensor::new(
        shape,
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32"),
    )
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
    let Some(peft_type) = peft.peft_type() else {
        return Ok(false);
    };
    let mut tensors = BTreeMap::new();
    let mut config = serde_json::json!({
        "auto_mapping": null,
        "base_model_name_or_path": base,
        "inference_mode": true,
        "peft_type": peft_type,
        "revision": null,
        "task_type": "SEQ_CLS",
    });
    let fields = config.as_object_mut().expect("object");
    let mut set = |k: &str, v: serde_json::Value| {
        fields.insert(k.to_string(), v);
    };
    let virtual_tokens = |set: &mut dyn FnMut(&str, serde_json::Value), n: usize| {
        set("num_virtual_tokens", n.into());
        set("token_dim", bert.hidden_size.into());
        set("num_layers", bert.num_hidden_layers.into());
        set("num_attention_heads", bert.num_attention_heads.into());
        set("num_transformer_submodules", 1.into());
    };
    match (peft, &model.prefix_encoder, &model.prompt_encoder) {
        (PeftConfig::PrefixTuning(c), Some(encoder), _) => {
            tensors.insert(PROMPT.to_string(), host(encoder.prefix_embeddings()));
            virtual_tokens(&mut set, c.num_virtual_tokens);
            set("encoder_hidden_size", c.encoder_hidden_size.into());
            set("prefix_projection", c.prefix_projection.into());
        }
        (PeftConfig::PromptTuning(c), _, Some(encoder)) => {
            tensors.insert(PROMPT.to_string(), host(encoder.prompt_embeddings()));
            virtual_tokens(&mut set, c.num_virtual_tokens);
            let text = c.prompt_tuning_init == crate::peft::PromptTuningInit::Text;
            set(
                "prompt_tuning_init",
                if text { "TEXT" } else { "RANDOM" }.into(),
            );
            set(
                "prompt_tuning_init_text",
                c.prompt_tuning_init_text.clone().into(),
            );
            set(
                "tokenizer_name_or_path",
                if text {
                    base.into()
                } else {
                    serde_json::Value::Null
                },
            );
            set("tokenizer_kwargs", serde_json::Value::Null);
        }
        (PeftConfig::PTuning(c), _, Some(encoder)) => {
            tensors.insert(PROMPT.to_string(), host(encoder.prompt_embeddings()));
            virtual_tokens(&mut set, c.num_virtual_tokens);
            set("encoder_hidden_size", c.encoder_hidden_size.into());
            set("encoder_num_layers", c.encoder_num_layers.into());
            set(
                "encoder_reparameterization_type",
                c.encoder_reparameterization_type.peft_name().into(),
            );
            set("encoder_dropout", c.encoder_dropout.into());
        }
        (PeftConfig::Lora(c), _, _) => {
            for (path, t) in params::collect(model, |p| p.contains(".lora.")) {
                tensors.insert(path_to_lora_key(&path), transpose(&t));
            }
            let mut targets: Vec<String> = c.target_modules.clone();
            targets.sort();
            set("r", c.r.into());
            set("lora_alpha", c.lora_alpha.into());
            set("lora_dropout", c.lora_dropout.into());
            set("target_modules", targets.into());
            set("use_rslora", c.use_rslora.into());
            set("bias", "none".into());
            set("fan_in_fan_out", false.into());
            set("init_lora_weights", true.into());
            set("use_dora", false.into());
            set("modules_to_save", vec!["classifier", "score"].into());
            set("rank_pattern", serde_json::json!({}));
            set("alpha_pattern", serde_json::json!({}));
            set("layers_to_transform", serde_json::Value::Null);
            set("layers_pattern", serde_json::Value::Null);
        }
        _ => {
            return Err(ModelError::Other(format!(
                "{}: the model has no {} module to save",
                dir.display(),
                peft.name()
            )));
        }
    }
    let head = head_prefix(peft_type);
    tensors.insert(
        format!("{head}.weight"),
        transpose(&host(model.classifier.weight.val())),
    );
    let mut bias = match &model.classifier.bias {
        Some(b) => host(b.val()),
        None => RawTensor::new(vec![model.num_labels()], vec![0.0; model.num_labels()]),
    };
    bias.shape = vec![model.num_labels()];
    tensors.insert(format!("{head}.bias"), bias);

    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors, Some(meta))?;
    let text = serde_json::to_string_pretty(&config).expect("json");
    crate::fsutil::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
    Ok(true)
}
