//! LoRA (Hu et al., 2021) as peft implements it for `nn.Linear`.
//!
//! A targeted linear computes `x W + b + dropout(x) A B * scaling`, with `A` (`lora_A`,
//! `[in, r]` here, `[r, in]` in torch) initialised like a torch `Linear` (kaiming-uniform,
//! `a = sqrt(5)`), `B` (`lora_B`) zero so training starts from the pretrained function, and
//! `scaling = alpha / r` (or `alpha / sqrt(r)` with rsLoRA). Merging folds `A B * scaling` into
//! `W`, after which the layer is a plain linear again with the same outputs.

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    AdapterFiles, AdapterParts, MAX_RANK, Method, PeftConfig, PeftModule, Tensors, count,
    probability,
};
use crate::bert::BertModel;
use crate::classifier::BertClassifier;
use crate::config::BertConfig;
use crate::dropout::{Dropout, DropoutConfig};
use crate::error::{ModelError, Result};
use crate::params;

/// peft's `LoraConfig`, with the reference recipe's values as defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the update.
    pub r: usize,
    pub lora_alpha: f64,
    /// Dropout on the input of the low-rank path (not on the frozen path).
    pub lora_dropout: f64,
    /// Module names, matched as peft does: a linear whose HF path (e.g.
    /// `bert.encoder.layer.0.attention.self.query`) equals a target or ends with `.target`.
    /// peft's default for BERT is `query` and `value`; `dense` also reaches the attention
    /// output, feed-forward and pooler projections.
    pub target_modules: Vec<String>,
    /// rsLoRA: scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.1,
            target_modules: vec!["query".into(), "value".into()],
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

/// peft wraps the task model once more under LoRA: its keys start here.
const KEY_PREFIX: &str = "base_model.model.";
/// Where peft keeps the trained head of a LoRA adapter.
const HEAD_PREFIX: &str = "base_model.model.classifier";

impl Method for LoraConfig {
    fn name(&self) -> &'static str {
        "lora"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        count("r", self.r, MAX_RANK)?;
        check_alpha(self.lora_alpha).map_err(|e| format!("peft.lora_alpha {e}"))?;
        probability("lora_dropout", self.lora_dropout)?;
        if self.target_modules.is_empty() {
            return Err(
                "peft.target_modules must name at least one module (e.g. [\"query\", \"value\"])"
                    .into(),
            );
        }
        Ok(())
    }

    /// The low-rank factors inside BERT train, besides the head.
    fn is_trainable(&self, path: &str) -> bool {
        !path.starts_with("bert.") || path.contains(".lora.")
    }

    /// Attaches updates to the linears `target_modules` names, as peft does; a target that
    /// matches nothing is an error (peft: "Target modules ... not found in the base model"),
    /// and so is a rank above a targeted linear's.
    fn attach(
        &self,
        bert: BertModel,
        _config: &BertConfig,
        _device: &Device,
    ) -> Result<(BertModel, Option<PeftModule>)> {
        let mut matched = vec![false; self.target_modules.len()];
        let mut too_wide = None;
        let bert = bert.map_linears(|path, linear| {
            let mut hit = false;
            for (i, t) in self.target_modules.iter().enumerate() {
                if target_matches(t, path) {
                    matched[i] = true;
                    hit = true;
                }
            }
            let [d_in, d_out] = linear.weight.dims();
            if hit && self.r > d_in.min(d_out) {
                too_wide.get_or_insert(format!(
                    "peft.r = {} exceeds the rank of {path} ({d_in} x {d_out}): a low-rank update \
                     needs r <= {}",
                    self.r,
                    d_in.min(d_out)
                ));
                linear
            } else if hit {
                linear.with_lora(self)
            } else {
                linear
            }
        });
        if let Some(message) = too_wide {
            return Err(ModelError::Other(message));
        }
        let missing: Vec<&str> = self
            .target_modules
            .iter()
            .zip(&matched)
            .filter(|(_, m)| !**m)
            .map(|(t, _)| t.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(ModelError::Other(format!(
                "lora: target_modules {missing:?} match no linear of BERT (its linears: query, key, \
                 value, dense; or full paths like bert.encoder.layer.0.attention.self.query)"
            )));
        }
        Ok((bert, None))
    }

    fn write_adapter(
        &self,
        model: &BertClassifier,
        _bert: &BertConfig,
        _base: &str,
    ) -> Result<Option<AdapterParts>> {
        let tensors: Tensors = params::collect(model, |p| p.contains(".lora."))
            .into_iter()
            .map(|(path, t)| (path_to_key(&path), t.transposed()))
            .collect();
        let mut targets: Vec<String> = self.target_modules.clone();
        targets.sort();
        let mut f = serde_json::Map::new();
        f.insert("r".into(), self.r.into());
        f.insert("lora_alpha".into(), self.lora_alpha.into());
        f.insert("lora_dropout".into(), self.lora_dropout.into());
        f.insert("target_modules".into(), targets.into());
        f.insert("use_rslora".into(), self.use_rslora.into());
        f.insert("bias".into(), "none".into());
        f.insert("fan_in_fan_out".into(), false.into());
        f.insert("init_lora_weights".into(), true.into());
        f.insert("use_dora".into(), false.into());
        f.insert("modules_to_save".into(), vec!["classifier", "score"].into());
        f.insert("rank_pattern".into(), serde_json::json!({}));
        f.insert("alpha_pattern".into(), serde_json::json!({}));
        f.insert("layers_to_transform".into(), serde_json::Value::Null);
        f.insert("layers_pattern".into(), serde_json::Value::Null);
        Ok(Some(AdapterParts {
            tensors,
            fields: f,
            head_prefix: HEAD_PREFIX,
        }))
    }

    /// Every `lora_A` needs its `lora_B` and the reverse, each of rank `r`, and the adapted
    /// modules must be the ones `target_modules` names.
    fn read_adapter(files: &AdapterFiles, bert: &BertConfig) -> Result<(PeftConfig, Tensors)> {
        check_options(files)?;
        let (mut tensors, rest) = files.split_head(HEAD_PREFIX, bert)?;
        let r: usize = files.field("r")?.ok_or_else(|| files.bad("r", "missing"))?;
        let lora_alpha: f64 = files.field("lora_alpha")?.unwrap_or(8.0);
        check_alpha(lora_alpha).map_err(|e| files.bad("lora_alpha", e))?;
        let lora_dropout: f64 = files.field("lora_dropout")?.unwrap_or(0.0);
        if !(0.0..1.0).contains(&lora_dropout) {
            return Err(files.bad("lora_dropout", format!("{lora_dropout}: must be in [0, 1)")));
        }
        let mut a_modules = Vec::new();
        let mut b_modules = Vec::new();
        for (key, t) in &rest {
            let (path, module, is_a) = key_to_path(key).ok_or_else(|| {
                files.wrong(format!(
                    "unexpected tensor `{key}` (a LoRA adapter holds `lora_A`/`lora_B` weights and the classifier head)"
                ))
            })?;
            // lora_A is [r, in], lora_B is [out, r] (torch layout).
            let rank_axis = if is_a { 0 } else { 1 };
            if t.shape.len() != 2 || t.shape[rank_axis] != r {
                return Err(files.wrong(format!(
                    "`{key}` has shape {:?}, but `r` in {} is {r}",
                    t.shape,
                    super::adapter::CONFIG_FILE
                )));
            }
            if is_a { &mut a_modules } else { &mut b_modules }.push(module);
            tensors.insert(path, t.transposed());
        }
        if let Some(m) = a_modules.iter().find(|m| !b_modules.contains(m)) {
            return Err(files.wrong(format!("`{KEY_PREFIX}{m}` has lora_A but no lora_B")));
        }
        if let Some(m) = b_modules.iter().find(|m| !a_modules.contains(m)) {
            return Err(files.wrong(format!("`{KEY_PREFIX}{m}` has lora_B but no lora_A")));
        }
        if a_modules.is_empty() {
            return Err(files.wrong(
                "no LoRA tensors (`...lora_A.weight`/`...lora_B.weight`): this adapter would \
                 leave the base model unchanged",
            ));
        }
        check_targets(files, &a_modules)?;
        let config = LoraConfig {
            r,
            lora_alpha,
            lora_dropout,
            target_modules: a_modules,
            use_rslora: files.field("use_rslora")?.unwrap_or(false),
        };
        Ok((PeftConfig::Lora(config), tensors))
    }
}

/// peft's key (`base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight`) ->
/// (this project's module path `bert.encoder.layer.0.attention.self_attn.query.lora.lora_a.weight`,
/// the HF module path, whether it is `lora_A`).
fn key_to_path(key: &str) -> Option<(String, String, bool)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (module, factor) = rest
        .strip_suffix(".lora_A.weight")
        .map(|m| (m, "lora_a"))
        .or_else(|| rest.strip_suffix(".lora_B.weight").map(|m| (m, "lora_b")))?;
    let path = module.replace(".attention.self.", ".attention.self_attn.");
    Some((
        format!("{path}.lora.{factor}.weight"),
        module.to_string(),
        factor == "lora_a",
    ))
}

fn path_to_key(path: &str) -> String {
    let module = params::hf_key(path)
        .replace(".lora.lora_a.weight", ".lora_A.weight")
        .replace(".lora.lora_b.weight", ".lora_B.weight");
    format!("{KEY_PREFIX}{module}")
}

/// The tensors and `target_modules` must describe the same linears: every adapted module is
/// one the config targets, and every target reaches at least one of them (a list of names, as
/// peft writes for BERT; a regex string is not checked).
fn check_targets(files: &AdapterFiles, modules: &[String]) -> Result<()> {
    let Some(targets) = files
        .config
        .other
        .get("target_modules")
        .and_then(|t| t.as_array())
    else {
        return Ok(());
    };
    let targets: Vec<&str> = targets.iter().filter_map(|t| t.as_str()).collect();
    if let Some(m) = modules
        .iter()
        .find(|m| !targets.iter().any(|t| target_matches(t, m)))
    {
        return Err(files.bad(
            "target_modules",
            format!("{targets:?} does not include `{m}`, which the weights adapt"),
        ));
    }
    if let Some(t) = targets
        .iter()
        .find(|t| !modules.iter().any(|m| target_matches(t, m)))
    {
        return Err(files.bad(
            "target_modules",
            format!("`{t}` is targeted, but the weights adapt no such module"),
        ));
    }
    Ok(())
}

/// LoRA options that change what the weights mean and that this project does not implement are
/// refused by name rather than loaded wrongly.
fn check_options(files: &AdapterFiles) -> Result<()> {
    let field = |name: &str| files.config.other.get(name).cloned().unwrap_or_default();
    if let Some(bias) = field("bias").as_str()
        && bias != "none"
    {
        return Err(files.bad("bias", format!("{bias:?}: only \"none\" is supported")));
    }
    if field("use_dora").as_bool() == Some(true) {
        return Err(files.bad("use_dora", "DoRA is not supported"));
    }
    for name in ["rank_pattern", "alpha_pattern"] {
        if field(name).as_object().is_some_and(|o| !o.is_empty()) {
            return Err(files.bad(name, "per-module ranks/alphas are not supported"));
        }
    }
    if field("fan_in_fan_out").as_bool() == Some(true) {
        return Err(files.bad(
            "fan_in_fan_out",
            "true is for Conv1D models (GPT-2), not BERT",
        ));
    }
    Ok(())
}

/// Whether target name `target` selects the linear at HF module path `path` (peft's rule for a
/// list of names: the whole path, or its last dotted components).
pub fn target_matches(target: &str, path: &str) -> bool {
    path == target
        || path
            .strip_suffix(target)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// The low-rank update of one linear.
#[derive(Module, Debug)]
pub struct LoraUpdate {
    /// peft's `lora_A`: `[in, r]`.
    pub lora_a: Linear,
    /// peft's `lora_B`: `[r, out]`.
    pub lora_b: Linear,
    pub dropout: Dropout,
    scaling: f64,
}

impl LoraUpdate {
    pub fn new(d_in: usize, d_out: usize, config: &LoraConfig, device: &Device) -> Self {
        Self {
            // Burn's default linear init is torch's kaiming_uniform(a = sqrt(5)) over fan-in,
            // which is what peft uses for lora_A.
            lora_a: LinearConfig::new(d_in, config.r)
                .with_bias(false)
                .init(device),
            lora_b: LinearConfig::new(config.r, d_out)
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
            dropout: DropoutConfig::new(config.lora_dropout).init(),
            scaling: config.scaling(),
        }
    }

    /// `A B * scaling`, `[in, out]`: what merging adds to the base weight.
    pub fn delta(&self) -> Tensor<2> {
        self.lora_a
            .weight
            .val()
            .matmul(self.lora_b.weight.val())
            .mul_scalar(self.scaling)
    }

    pub fn scaling(&self) -> f64 {
        self.scaling
    }
}

/// A linear layer that may carry a LoRA update. Its own parameters keep the names of a plain
/// linear (`weight`, `bias`), so checkpoints load the same with or without LoRA.
#[derive(Module, Debug)]
pub struct LoraLinear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub lora: Option<LoraUpdate>,
}

impl From<Linear> for LoraLinear {
    fn from(linear: Linear) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
            lora: None,
        }
    }
}

impl LoraLinear {
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        LinearConfig::new(d_in, d_out).init(device).into()
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let base = crate::kernels::linear(
            x.clone(),
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
        );
        match &self.lora {
            Some(lora) => {
                let update = lora
                    .lora_b
                    .forward(lora.lora_a.forward(lora.dropout.forward(x)));
                base + update.mul_scalar(lora.scaling)
            }
            None => base,
        }
    }

    /// Adds a fresh (zero-effect) LoRA update.
    pub fn with_lora(mut self, config: &LoraConfig) -> Self {
        let [d_in, d_out] = self.weight.dims();
        self.lora = Some(LoraUpdate::new(d_in, d_out, config, &self.weight.device()));
        self
    }

    /// Folds the LoRA update into the weight: same outputs (up to rounding), no extra matmuls.
    pub fn merge(self) -> Self {
        let Some(lora) = self.lora else {
            return self;
        };
        let delta = lora.delta();
        Self {
            weight: self.weight.map(|w| w + delta),
            bias: self.bias,
            lora: None,
        }
    }

    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// Largest `lora_alpha` accepted: the update is scaled by `lora_alpha / r`, and far beyond
/// any recipe's values (8 to 64) that scale overflows f32 activations to infinity.
const MAX_ALPHA: f64 = 1e6;

fn check_alpha(alpha: f64) -> std::result::Result<(), String> {
    if alpha > 0.0 && alpha <= MAX_ALPHA {
        Ok(())
    } else {
        Err(format!(
            "must be above 0 and at most {MAX_ALPHA}, got {alpha}"
        ))
    }
}
