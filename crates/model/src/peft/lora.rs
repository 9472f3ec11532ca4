//! LoRA (Hu et al., 2021) as peft implements it for `nn.Linear`.
//!
//! A targeted linear computes `x W + b + dropout(x) A B * scaling`, with `A` (`lora_A`,
//! `[in, r]` here, `[r, in]` in torch) initialised like a torch `Linear` (kaiming-uniform,
//! `a = sqrt(5)`), `B` (`lora_B`) zero so training starts from the pretrained function, and
//! `scaling = alpha / r` (or `alpha / sqrt(r)` with rsLoRA). Merging folds `A B * scaling` into
//! `W`, after which the layer is a plain linear again with the same outputs.
//!
//! peft replaces each targeted `nn.Linear` by a wrapper; here BERT's linears stay as they are
//! and the updates live in this method's own module ([`LoraModel`], laid out like the encoder),
//! which BERT adds to the linears' outputs ([`LinearUpdates`]). Adapter keys are mapped to and
//! from peft's on the way in and out.

use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    AdapterFiles, AdapterParts, MAX_RANK, Method, PeftConfig, PeftModule, Tensors, count,
    probability,
};
use crate::bert::{BertModel, LayerLinear, LinearAt, LinearUpdates};
use crate::config::BertConfig;
use crate::dropout::{Dropout, DropoutConfig};
use crate::error::{ModelError, Result};
use crate::weights::RawTensor;

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

    /// Attaches updates to the linears `target_modules` names, as peft does; a target that
    /// matches nothing is an error (peft: "Target modules ... not found in the base model"),
    /// and so is a rank above a targeted linear's.
    fn attach(
        &self,
        bert: BertModel,
        _config: &BertConfig,
        device: &Device,
    ) -> Result<(BertModel, Option<PeftModule>)> {
        let mut matched = vec![false; self.target_modules.len()];
        let mut targeted = Vec::new();
        for (at, [d_in, d_out]) in bert.linears() {
            let path = at.hf_path();
            let mut hit = false;
            for (i, t) in self.target_modules.iter().enumerate() {
                if target_matches(t, &path) {
                    matched[i] = true;
                    hit = true;
                }
            }
            if hit && self.r > d_in.min(d_out) {
                return Err(ModelError::Other(format!(
                    "peft.r = {} exceeds the rank of {path} ({d_in} x {d_out}): a low-rank update \
                     needs r <= {}",
                    self.r,
                    d_in.min(d_out)
                )));
            }
            if hit {
                targeted.push((at, [d_in, d_out]));
            }
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
        let model = LoraModel::new(&bert, &targeted, self, device);
        Ok((bert, Some(PeftModule::LoraModel(model))))
    }

    /// Runs written before the updates moved out of BERT's linears kept them there
    /// (`bert.encoder.layer.0.attention.self_attn.query.lora.lora_a.weight`).
    fn upgrade_key(&self, key: &str) -> Option<String> {
        let (module, factor) = key
            .strip_suffix(".lora.lora_a.weight")
            .map(|m| (m, "lora_a"))
            .or_else(|| {
                key.strip_suffix(".lora.lora_b.weight")
                    .map(|m| (m, "lora_b"))
            })?;
        let at = parse_hf_path(&module.replace(".attention.self_attn.", ".attention.self."))?;
        Some(update_path(at, factor))
    }

    fn write_adapter(
        &self,
        module: Option<&PeftModule>,
        _bert: &BertConfig,
        _base: &str,
    ) -> Result<Option<AdapterParts>> {
        let Some(PeftModule::LoraModel(model)) = module else {
            return Err(ModelError::Other("the model has no LoRA updates".into()));
        };
        let mut tensors = Tensors::new();
        for (at, update) in model.updates() {
            let module = format!("{KEY_PREFIX}{}", at.hf_path());
            for (factor, linear) in [("lora_A", &update.lora_a), ("lora_B", &update.lora_b)] {
                tensors.insert(
                    format!("{module}.{factor}.weight"),
                    RawTensor::from_tensor(linear.weight.val())?.transposed(),
                );
            }
        }
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
/// (this project's module path `lora_model.layer.0.query.lora_a.weight`, the HF module path,
/// whether it is `lora_A`).
fn key_to_path(key: &str) -> Option<(String, String, bool)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (module, factor) = rest
        .strip_suffix(".lora_A.weight")
        .map(|m| (m, "lora_a"))
        .or_else(|| rest.strip_suffix(".lora_B.weight").map(|m| (m, "lora_b")))?;
    let at = parse_hf_path(module)?;
    Some((
        update_path(at, factor),
        module.to_string(),
        factor == "lora_a",
    ))
}

/// The linear at an HF module path inside a task model, if BERT has one there.
fn parse_hf_path(path: &str) -> Option<LinearAt> {
    if path == LinearAt::Pooler.hf_path() {
        return Some(LinearAt::Pooler);
    }
    let rest = path.strip_prefix("bert.encoder.layer.")?;
    let (index, name) = rest.split_once('.')?;
    let layer = index.parse().ok()?;
    let linear = LayerLinear::ALL.into_iter().find(|l| l.hf_name() == name)?;
    Some(LinearAt::Layer(layer, linear))
}

/// The module path of one factor (`lora_a` / `lora_b`) of the update at `at`.
fn update_path(at: LinearAt, factor: &str) -> String {
    match at {
        LinearAt::Layer(i, linear) => {
            format!("lora_model.layer.{i}.{}.{factor}.weight", field(linear))
        }
        LinearAt::Pooler => format!("lora_model.pooler.{factor}.weight"),
    }
}

/// The field of [`LoraLayer`] that holds the update of `linear`.
fn field(linear: LayerLinear) -> &'static str {
    match linear {
        LayerLinear::Query => "query",
        LayerLinear::Key => "key",
        LayerLinear::Value => "value",
        LayerLinear::AttentionOutput => "attention_output",
        LayerLinear::Intermediate => "intermediate",
        LayerLinear::Output => "output",
    }
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

    /// `dropout(x) A B * scaling`: what the update adds to the linear's output.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.lora_b
            .forward(self.lora_a.forward(self.dropout.forward(x)))
            .mul_scalar(self.scaling)
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

/// The updates of one encoder layer's targeted linears.
#[derive(Module, Debug)]
pub struct LoraLayer {
    pub query: Option<LoraUpdate>,
    pub key: Option<LoraUpdate>,
    pub value: Option<LoraUpdate>,
    pub attention_output: Option<LoraUpdate>,
    pub intermediate: Option<LoraUpdate>,
    pub output: Option<LoraUpdate>,
}

impl LoraLayer {
    fn get(&self, linear: LayerLinear) -> Option<&LoraUpdate> {
        match linear {
            LayerLinear::Query => self.query.as_ref(),
            LayerLinear::Key => self.key.as_ref(),
            LayerLinear::Value => self.value.as_ref(),
            LayerLinear::AttentionOutput => self.attention_output.as_ref(),
            LayerLinear::Intermediate => self.intermediate.as_ref(),
            LayerLinear::Output => self.output.as_ref(),
        }
    }
}

/// LoRA's module: the updates of the targeted linears, laid out like the encoder.
#[derive(Module, Debug)]
pub struct LoraModel {
    pub layer: Vec<LoraLayer>,
    pub pooler: Option<LoraUpdate>,
}

impl LoraModel {
    /// Fresh (zero-effect) updates for the linears in `targeted` (by place, with their
    /// `[d_in, d_out]`).
    fn new(
        bert: &BertModel,
        targeted: &[(LinearAt, [usize; 2])],
        config: &LoraConfig,
        device: &Device,
    ) -> Self {
        let update = |at: LinearAt| {
            targeted
                .iter()
                .find(|(t, _)| *t == at)
                .map(|(_, [d_in, d_out])| LoraUpdate::new(*d_in, *d_out, config, device))
        };
        let layer = (0..bert.encoder.layer.len())
            .map(|i| {
                let at = |linear| update(LinearAt::Layer(i, linear));
                LoraLayer {
                    query: at(LayerLinear::Query),
                    key: at(LayerLinear::Key),
                    value: at(LayerLinear::Value),
                    attention_output: at(LayerLinear::AttentionOutput),
                    intermediate: at(LayerLinear::Intermediate),
                    output: at(LayerLinear::Output),
                }
            })
            .collect();
        Self {
            layer,
            pooler: update(LinearAt::Pooler),
        }
    }

    fn get(&self, at: LinearAt) -> Option<&LoraUpdate> {
        match at {
            LinearAt::Layer(i, linear) => self.layer.get(i)?.get(linear),
            LinearAt::Pooler => self.pooler.as_ref(),
        }
    }

    /// Every update with its place, in HF's order.
    pub fn updates(&self) -> Vec<(LinearAt, &LoraUpdate)> {
        let layers = (0..self.layer.len())
            .flat_map(|i| LayerLinear::ALL.map(|l| LinearAt::Layer(i, l)))
            .chain([LinearAt::Pooler]);
        layers
            .filter_map(|at| self.get(at).map(|u| (at, u)))
            .collect()
    }

    /// `bert` with every update folded into its weight: the same outputs (up to rounding)
    /// without the extra matmuls.
    pub fn merge_into(&self, bert: BertModel) -> BertModel {
        bert.map_linears(|at, linear| match self.get(at) {
            Some(update) => linear.with_weight_delta(update.delta()),
            None => linear,
        })
    }
}

impl LinearUpdates for LoraModel {
    fn update(&self, at: LinearAt, x: &Tensor<3>) -> Option<Tensor<3>> {
        self.get(at).map(|u| u.forward(x.clone()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_keys_and_older_runs_map_to_the_update_paths() {
        let key = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight";
        let (path, module, is_a) = key_to_path(key).unwrap();
        assert_eq!(path, "lora_model.layer.1.value.lora_b.weight");
        assert_eq!(module, "bert.encoder.layer.1.attention.self.value");
        assert!(!is_a);
        let pooler = "base_model.model.bert.pooler.dense.lora_A.weight";
        assert_eq!(
            key_to_path(pooler).unwrap().0,
            "lora_model.pooler.lora_a.weight"
        );
        for bad in [
            "base_model.model.bert.encoder.layer.x.output.dense.lora_A.weight",
            "base_model.model.bert.encoder.layer.0.output.lora_A.weight",
            "base_model.model.bert.embeddings.word_embeddings.lora_A.weight",
            "bert.encoder.layer.0.output.dense.lora_A.weight",
        ] {
            assert_eq!(key_to_path(bad), None, "{bad}");
        }

        let lora = LoraConfig::default();
        let old = "bert.encoder.layer.0.attention.self_attn.query.lora.lora_a.weight";
        assert_eq!(
            lora.upgrade_key(old).as_deref(),
            Some("lora_model.layer.0.query.lora_a.weight")
        );
        let old = "bert.encoder.layer.2.intermediate.dense.lora.lora_b.weight";
        assert_eq!(
            lora.upgrade_key(old).as_deref(),
            Some("lora_model.layer.2.intermediate.lora_b.weight")
        );
        assert_eq!(lora.upgrade_key("classifier.weight"), None);
        assert_eq!(
            lora.upgrade_key("lora_model.layer.0.query.lora_a.weight"),
            None
        );
    }
}
