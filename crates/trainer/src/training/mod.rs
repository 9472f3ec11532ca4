//! A training run as library types: the run directory and recipe ([`Session`]), its data
//! ([`data`]), the burn-train Learner that fits it ([`Session::fit`]), and what is kept of it
//! (the best epoch as trainable parameters and a peft adapter, [`history`]).
//!
//! ```text
//! Session::new / ::resume -> check_data -> load_model -> prepare -> build_model -> fit -> finish
//! ```

pub mod data;
pub mod history;
pub mod strategy;

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use bert_data::{ClassificationBatcher, EpochLoader};
use bert_model::classifier::BertClassifier;
use bert_model::params::ModulePath;
use bert_model::{Pretrained, params};
use burn::module::{ModuleMapper, Param};
use burn::optim::AdamWConfig;
use burn::prelude::*;
use burn::train::checkpoint::{
    ComposedCheckpointingStrategy, KeepLastNCheckpoints, MetricCheckpointingStrategy,
};
use burn::train::metric::store::{Aggregate, EventStoreClient, Split};
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric, Metric};
use burn::train::{
    EarlyStoppingStrategy, Learner, LearningResult, SupervisedTraining, TrainingStrategy,
};
use serde_json::json;

use crate::calibration::Calibration;
use crate::classifier::{Classifier, build_model};
use crate::config::{SelectMetric, TrainConfig};
use crate::device::{NamedDevice, Precision};
use crate::evaluation::{Evaluation, evaluate_csv};
use crate::metrics::{ConfusionMetric, MetricKey, ThroughputMetric};
use crate::progress::thousands;
use crate::renderer::{EpochRecord, History, renderer};
use crate::run::{RunDir, RunLock, write_json};
use crate::schedule::LinearWarmup;
use data::{Checked, CreatedDir, Prepared};

/// Recipe keys that may differ on `--resume`: where the run trains, not what it computes.
const RESUME_FREE_KEYS: [&str; 2] = ["name", "train.device"];

/// A run being trained: its directory, its resolved recipe, and where it starts.
pub struct Session {
    pub run: RunDir,
    pub config: TrainConfig,
    /// `None` for a new run; the last complete epoch (0: none) for a resumed one.
    pub resume_from: Option<usize>,
    /// Data counts, parameters, steps and the recipe, for summary.json.
    summary: serde_json::Value,
    /// The epochs already recorded in metrics.json (a resumed run's, up to `resume_from`).
    history: Vec<EpochRecord>,
    /// Optimizer steps of the whole run, known once the data is prepared.
    total_steps: usize,
    /// The data read and checked by [`Session::check_data`], until [`Session::prepare`].
    checked: Option<Checked>,
    /// A new run's directory until its setup is complete: removed if the run fails before.
    /// (Declared before the lock, so it is removed while the lock is still held.)
    created: Option<CreatedDir>,
    /// The run directory belongs to this process for the whole run.
    _lock: RunLock,
}

impl Session {
    /// A new run of the recipe at `config` (with `--set` overrides), in `run_dir` or a fresh
    /// `runs/<name>`, which this process holds (locked) until the session is dropped.
    pub fn new(config: &Path, overrides: &[String], run_dir: Option<&Path>) -> Result<Self> {
        let config = TrainConfig::load(config, overrides)?;
        let (run, created) = match run_dir {
            Some(d) => (RunDir::new(d), CreatedDir::create(d)?),
            None => {
                let run = RunDir::fresh(Path::new("runs"), &config.name)?;
                let created = CreatedDir::created(&run.root);
                (run, created)
            }
        };
        let lock = match run.lock() {
            Ok(lock) => lock,
            Err(e) => {
                // The process holding it may have created it too: leave it alone.
                created.keep();
                return Err(e);
            }
        };
        data::check_run_dir_free(&run.root)?;
        Ok(Self {
            run,
            config,
            resume_from: None,
            summary: json!({}),
            history: Vec::new(),
            total_steps: 0,
            checked: None,
            created: Some(created),
            _lock: lock,
        })
    }

    /// The interrupted run in `run_dir`, from its last complete epoch. A run killed before its
    /// first checkpoint starts its first epoch again, from the same seeds and split, so the
    /// result is the straight run's. Only the same recipe continues: `--set` overrides other
    /// than where it trains, or a config.toml edited since the run started, are refused with
    /// the keys that differ, as are an unreadable summary.json or metrics.json (the run would
    /// rewrite them without what they hold).
    pub fn resume(run_dir: &Path, overrides: &[String]) -> Result<Self> {
        let run = RunDir::new(run_dir);
        if !run.config().is_file() {
            bail!(
                "cannot resume {}: it has no config.toml (a run writes it once its data is \
                 prepared); start it again with `trainer train --run-dir {}`",
                run.root.display(),
                run.root.display()
            );
        }
        let lock = run.lock()?;
        let config_path = run.config();
        let saved = TrainConfig::load(&config_path, &[]).context("cannot resume")?;
        let config = TrainConfig::load(&config_path, overrides).context("cannot resume")?;
        let changed = differing_keys(&saved, &config)?;
        if !changed.is_empty() {
            bail!(
                "--resume: the recipe differs from the run's config.toml at {}; a resumed run \
                 trains its own recipe (start a new run for another one)",
                changed.join(", ")
            );
        }
        let summary = read_summary(&run)?;
        check_recorded_recipe(&run, &summary)?;
        let last = crate::checkpoint::last_complete(&run.checkpoints()).unwrap_or(0);
        let history = history::resumed_history(&run, last)?;
        Ok(Self {
            run,
            config,
            resume_from: Some(last),
            summary,
            history,
            total_steps: 0,
            checked: None,
            created: None,
            _lock: lock,
        })
    }

    /// Reads and checks the run's data (labels, columns, the split), which needs no model: a
    /// data error is reported before a model is loaded (or downloaded). [`Session::prepare`]
    /// uses what it read.
    pub fn check_data(&mut self) -> Result<()> {
        self.checked = Some(self.read_data()?);
        Ok(())
    }

    fn read_data(&self) -> Result<Checked> {
        match self.resume_from {
            Some(_) => data::check_resumed(&self.run, &self.config),
            None => data::check(&self.config),
        }
    }

    /// The pretrained model and tokenizer, on the main training device; a local model is
    /// recorded by absolute path, so the run loads from any directory.
    pub fn load_model(&mut self, main: &NamedDevice) -> Result<Pretrained> {
        eprintln!("device: {}", main.describe());
        eprintln!("model: {}", self.config.model.source);
        let model = &self.config.model;
        let device = &main.device.clone().autodiff();
        let pretrained = Pretrained::load(&model.source, model.max_length, device)?;
        if let bert_model::ModelSource::Local(dir) = &pretrained.source
            && let Ok(abs) = std::fs::canonicalize(dir)
        {
            self.config.model.source = abs.display().to_string();
        }
        Ok(pretrained)
    }

    /// The tokenised data, and the classifier to train on it; for a new run, the run
    /// directory with its split, labels, summary and (last: the mark of a complete setup)
    /// config.toml. A new run that fails here leaves no directory behind.
    pub fn prepare(
        &mut self,
        pretrained: &Pretrained,
        devices: &[NamedDevice],
    ) -> Result<(Prepared, BertClassifier)> {
        let main = devices.first().context("no device to train on")?;
        let device = &main.device.clone().autodiff();
        let checked = match self.checked.take() {
            Some(checked) => checked,
            None => self.read_data()?,
        };
        let mut data = checked.tokenize(&self.run, &pretrained.tokenizer)?;
        let strategy = self.config.train.strategy;
        let usable = strategy::usable_items(strategy, data.train.len(), devices.len());
        if usable < data.train.len() {
            eprintln!(
                "ddp: training on {usable} of {} examples, an equal share for each of {} devices",
                data.train.len(),
                devices.len()
            );
            data.train.truncate(usable);
        }
        let model = build_model(pretrained, &self.config, data.labels.len(), device)?;
        let model = trainable_only(model, &self.config);
        model
            .check_input_length(self.config.model.max_length)
            .context("model.max_length and peft.num_virtual_tokens")?;
        let (trainable, total) = param_counts(&model, &self.config);
        eprintln!(
            "{}: trainable params: {} || all params: {} || trainable%: {:.4}",
            self.config.peft.name(),
            thousands(trainable),
            thousands(total),
            100.0 * trainable as f64 / total as f64
        );
        let steps_per_epoch = steps_per_epoch(
            data.train.len(),
            self.config.train.batch_size,
            devices.len(),
        );
        let epochs = self.config.train.epochs;
        self.total_steps = steps_per_epoch.checked_mul(epochs).with_context(|| {
            format!(
                "train.epochs = {epochs}: {epochs} epochs of {steps_per_epoch} steps are more \
                 steps than can be counted"
            )
        })?;
        let mut summary = match self.resume_from {
            Some(_) => self.summary.clone(),
            None => data.summary.clone(),
        };
        summary["params"] = json!({"trainable": trainable, "total": total});
        summary["steps"] = json!({
            "per_epoch": steps_per_epoch,
            "total": self.total_steps,
        });
        // As the user names them (`flex`, `cuda:0`): the report shows it.
        let names: Vec<String> = devices.iter().map(NamedDevice::to_string).collect();
        summary["device"] = json!(names.join(", "));
        match self.resume_from {
            Some(epoch) => self.check_checkpoints(epoch, steps_per_epoch, &model)?,
            None => {
                // What resuming compares config.toml with.
                summary["recipe"] = serde_json::to_value(&self.config)?;
                write_json(&self.run.summary(), &summary)?;
                let toml = self.config.to_toml();
                bert_model::fsutil::write_atomic(&self.run.config(), toml.as_bytes())?;
            }
        }
        self.summary = summary;
        if let Some(created) = self.created.take() {
            created.keep();
        }
        Ok((data, model))
    }

    /// Reads the resume state of `epoch` (and the best epoch's model, which the run keeps at
    /// its end) and checks it against the model and the schedule now built: a damaged or
    /// foreign checkpoint is an error naming its file here, not a panic inside burn-train.
    fn check_checkpoints(
        &self,
        epoch: usize,
        steps_per_epoch: usize,
        model: &BertClassifier,
    ) -> Result<()> {
        if epoch == 0 {
            return Ok(());
        }
        let dir = self.run.checkpoints();
        let steps = steps_per_epoch.checked_mul(epoch).context("step count")?;
        crate::checkpoint::check_resumable(&dir, epoch, model, steps)?;
        let best = history::best_epoch(&self.history, self.config.train.select_metric);
        if let Some(best) = best.filter(|b| b.epoch != epoch) {
            crate::checkpoint::check_model(&dir, best.epoch, model)?;
        }
        Ok(())
    }

    /// Trains `model` on `data` with burn-train's Learner: AdamW, HF's linear warmup schedule,
    /// the dashboard (or plain lines), per-epoch metrics.json, atomic checkpoints of the last
    /// and the best epoch; stops after `stop_after` if given.
    /// `devices` (without autodiff) are where batches are made: the first one's unless
    /// there are several, then the recipe's strategy (see [`strategy`]) gives each its share.
    pub fn fit(
        &self,
        data: Prepared,
        model: BertClassifier,
        batcher: ClassificationBatcher,
        devices: &[NamedDevice],
        stop_after: Option<usize>,
    ) -> Result<(LearningResult<BertClassifier>, History)> {
        let (config, run) = (&self.config, &self.run);
        let device = &devices.first().context("no device to train on")?.device;
        let batch = config.train.batch_size;
        let total_steps = self.total_steps;
        let labels = data.labels.names().to_vec();
        let train_loader = EpochLoader::new(data.train, batcher, batch, device)
            .shuffled(config.train.seed)
            .grouped_by_length(config.train.group_by_length)
            .reseeding_device(config.train.seed)
            .starting_after_epoch(self.resume_from.unwrap_or(0));
        let valid_loader = EpochLoader::new(data.valid, batcher, batch, device);
        let optim = AdamWConfig::new()
            .with_weight_decay(config.train.weight_decay as f32)
            .with_epsilon(1e-8)
            .init();
        let schedule = LinearWarmup::new(config.train.lr, config.train.warmup_ratio, total_steps);

        let history: History = Arc::new(Mutex::new(self.history.clone()));
        let select = config.train.select_metric;
        let metrics_file = run.metrics();
        let on_epoch = Box::new(move |records: &[EpochRecord]| {
            if let Err(e) = write_json(&metrics_file, &history::metrics_document(records, select)) {
                log::error!("cannot write {}: {e:#}", metrics_file.display());
            }
        });
        let interrupter = burn::train::Interrupter::new();
        let dashboard = renderer(
            interrupter.clone(),
            self.resume_from,
            history.clone(),
            on_epoch,
            MetricKey::all(&labels),
        );
        let n = labels.len();
        let mut training =
            SupervisedTraining::new(&run.root, Arc::new(train_loader), Arc::new(valid_loader))
                .with_interrupter(interrupter)
                .renderer(dashboard)
                .metric_train_numeric(LossMetric::new())
                .metric_valid_numeric(LossMetric::new())
                .metric_train_numeric(AccuracyMetric::new())
                .metric_valid_numeric(AccuracyMetric::new())
                .metric_train_numeric(ConfusionMetric::macro_f1(n))
                .metric_valid_numeric(ConfusionMetric::macro_f1(n));
        for (i, label) in labels.iter().enumerate() {
            training = training
                .metric_train_numeric(ConfusionMetric::class_accuracy(i, label, n))
                .metric_valid_numeric(ConfusionMetric::class_accuracy(i, label, n));
        }
        let best = match select {
            SelectMetric::MacroF1 => best_by(&ConfusionMetric::macro_f1(n), select),
            SelectMetric::Accuracy => best_by(&AccuracyMetric::new(), select),
            SelectMetric::Loss => best_by(&LossMetric::new(), select),
        };
        let [model_ckpt, optim_ckpt, scheduler_ckpt] =
            crate::checkpoint::checkpointers(&run.checkpoints());
        let mut training = training
            .metric_train_numeric(LearningRateMetric::new())
            .metric_train_numeric(ThroughputMetric::default())
            .metric_valid_numeric(ThroughputMetric::default())
            .with_custom_checkpointers(model_ckpt, optim_ckpt, scheduler_ckpt)
            .with_checkpointing_strategy(
                ComposedCheckpointingStrategy::builder()
                    .add(KeepLastNCheckpoints::new(1))
                    .add(best)
                    .build(),
            )
            .num_epochs(config.train.epochs);
        training = training.early_stopping(StopEarly {
            after: stop_after,
            loss: LossMetric::new().name().to_string(),
        });
        if let Some(strategy) = strategy::execution(config.train.strategy, devices) {
            training = training.with_training_strategy(TrainingStrategy::Default(strategy));
        }
        match self.resume_from {
            Some(0) => eprintln!("resuming: no epoch had finished, starting epoch 1 again"),
            Some(epoch) => {
                eprintln!("resuming after epoch {epoch} of {}", config.train.epochs);
                training = training.checkpoint(epoch);
            }
            None => {}
        }
        let result = training.launch(Learner::new(model, optim, schedule));
        Ok((result, history))
    }

    /// Keeps the best epoch (trainable parameters, peft adapter, summary) and says how the
    /// run ended; an error when it failed or stopped before finishing an epoch.
    pub fn finish(
        &self,
        result: LearningResult<BertClassifier>,
        history: &History,
        pretrained: &Pretrained,
    ) -> Result<()> {
        let (config, run) = (&self.config, &self.run);
        // Close the dashboard (it owns the terminal) before printing the outcome below it.
        let LearningResult {
            model: final_model,
            renderer: dashboard,
            error,
            ..
        } = result;
        drop(dashboard);

        let records = history.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let select = config.train.select_metric;
        let Some(best) = history::best_epoch(&records, select) else {
            let why = error.map_or_else(
                || "training stopped".to_string(),
                |e| format!("training failed ({e})"),
            );
            bail!(
                "{why} before finishing an epoch; start it again with `trainer train --resume \
                 --run-dir {}`",
                run.root.display()
            );
        };
        let last = records.iter().map(|r| r.epoch).max().unwrap_or(0);
        if let Some(why) = history::diverged(&records) {
            bail!(
                "training diverged: {why}; nothing was saved as the run's result (lower \
                 train.lr{})",
                if config.train.precision == Precision::F32 {
                    ""
                } else {
                    ", or train with train.precision = \"f32\""
                }
            );
        }
        let best_model = if best.epoch == last {
            final_model
        } else {
            let path = crate::checkpoint::path(&run.checkpoints(), "model", best.epoch);
            final_model
                .try_load_file(&path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
        };
        save_trainable(&best_model, config, &run.adapter(), best.epoch)?;
        // The same parameters in HF peft's format, for `PeftModel.from_pretrained` in Python.
        best_model.write_adapter(
            &run.peft_adapter(),
            &config.peft,
            &pretrained.config,
            &config.model.source,
        )?;
        let mut summary = self.summary.clone();
        let select_key = MetricKey::from(select);
        summary["best_epoch"] = json!(best.epoch);
        summary["select_metric"] = json!(select_key.display());
        summary["best_valid"] = history::metrics_json(&best.valid);
        write_json(&run.summary(), &summary)?;

        eprintln!(
            "best epoch {} of {} by valid {}: {}",
            best.epoch,
            last,
            select_key.display(),
            history::describe_valid(&best.valid)
        );
        if let Some(error) = &error {
            let from = crate::checkpoint::last_complete(&run.checkpoints()).unwrap_or(0);
            bail!(
                "training failed after epoch {last} ({error}); the best finished epoch was \
                 saved; `trainer train --resume --run-dir {}` continues after epoch {from}",
                run.root.display()
            );
        }
        if last < config.train.epochs {
            eprintln!(
                "stopped after epoch {last} of {}; continue with `trainer train --resume \
                 --run-dir {}`",
                config.train.epochs,
                run.root.display()
            );
        }
        Ok(())
    }

    /// Fits the kept epoch's temperature on the validation split and saves it in the run
    /// (`calibration.json`), which every later use of the run applies. Returns the validation
    /// split's evaluation at that temperature.
    pub fn calibrate(&self, pretrained: &Pretrained, device: &Device) -> Result<Evaluation> {
        let run = &self.run;
        let mut classifier = Classifier::load_with(&run.root, pretrained, device)?;
        classifier.temperature = 1.0;
        let batch = self.config.train.batch_size;
        let eval = evaluate_csv(
            &classifier,
            &run.valid_csv(),
            &self.config.data.columns(),
            batch,
            device,
        )?;
        let calibration = Calibration::fit(&eval.logits, &eval.targets)?;
        write_json(&run.calibration(), &serde_json::to_value(&calibration)?)?;
        eprintln!(
            "calibrated on the validation split: temperature {:.3}, expected calibration error \
             {:.4} -> {:.4}, NLL {:.4} -> {:.4}",
            calibration.temperature,
            calibration.ece_before,
            calibration.ece_after,
            calibration.nll_before,
            calibration.nll_after
        );
        Ok(eval.with_temperature(calibration.temperature))
    }
}

/// The dotted keys at which two recipes differ (a different `peft.method` is that one key,
/// not every key of both methods), leaving out [`RESUME_FREE_KEYS`].
fn differing_keys(a: &TrainConfig, b: &TrainConfig) -> Result<Vec<String>> {
    let (a, b) = (serde_json::to_value(a)?, serde_json::to_value(b)?);
    let mut keys = Vec::new();
    diff_values("", &a, &b, &mut keys);
    keys.retain(|k| !RESUME_FREE_KEYS.contains(&k.as_str()));
    Ok(keys)
}

fn diff_values(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            if prefix == "peft" && x.get("method") != y.get("method") {
                out.push(join("method"));
                return;
            }
            let mut names: Vec<&String> = x.keys().chain(y.keys()).collect();
            names.sort();
            names.dedup();
            let null = Value::Null;
            for k in names {
                let (va, vb) = (x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null));
                diff_values(&join(k), va, vb, out);
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// A resumed run's summary.json, which it completes at its end: unreadable, it would be
/// rewritten without its data counts, so it is an error naming the file.
fn read_summary(run: &RunDir) -> Result<serde_json::Value> {
    let path = run.summary();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot resume: cannot read {}", path.display()))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) if value.is_object() && value.get("data").is_some() => Ok(value),
        Ok(_) => bail!(
            "cannot resume: {} is not this run's summary (no `data` section); restore it or \
             start a new run",
            path.display()
        ),
        Err(e) => bail!(
            "cannot resume: {} is not valid JSON ({e}); restore it or start a new run",
            path.display()
        ),
    }
}

/// The run's config.toml against the recipe recorded in summary.json when the run started
/// (runs from before that record have none): an edited config.toml would resume a
/// checkpoint of one recipe with another.
fn check_recorded_recipe(run: &RunDir, summary: &serde_json::Value) -> Result<()> {
    let Some(recorded) = summary.get("recipe") else {
        return Ok(());
    };
    let path = run.config();
    let recorded: TrainConfig = serde_json::from_value(recorded.clone()).with_context(|| {
        format!(
            "cannot resume: {}: its `recipe` section is not a recipe",
            run.summary().display()
        )
    })?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot resume: cannot read {}", path.display()))?;
    let current: TrainConfig = toml::from_str(&text)
        .with_context(|| format!("cannot resume: {}: invalid config", path.display()))?;
    let changed = differing_keys(&recorded, &current)?;
    if !changed.is_empty() {
        bail!(
            "--resume: {} was edited since the run started: it differs from the recipe \
             recorded in summary.json at {}; restore it, or start a new run for another recipe",
            path.display(),
            changed.join(", ")
        );
    }
    Ok(())
}

/// Optimizer steps per epoch. With several devices there is one per round of one batch per
/// device; burn-train gives each device an equal contiguous share of the items and the last
/// one the remainder, so the last share sets the number of rounds.
pub fn steps_per_epoch(items: usize, batch_size: usize, devices: usize) -> usize {
    let devices = devices.max(1);
    let last_share = items - (devices - 1) * (items / devices);
    last_share.div_ceil(batch_size.max(1))
}

/// Keeps the epoch with the best validation value of `metric`.
fn best_by<M: burn::train::metric::Metric>(
    metric: &M,
    select: SelectMetric,
) -> MetricCheckpointingStrategy {
    MetricCheckpointingStrategy::new(metric, Aggregate::Mean, select.direction(), Split::Valid)
}

/// Ends training once an epoch's checkpoint is written (burn-train consults early stopping
/// after checkpointing; an interrupter would skip the checkpoint): after epoch `after` when
/// given, and after any epoch whose training loss is not a finite number, since every epoch
/// after it would be NaN too ([`Session::finish`] then reports the divergence).
#[derive(Clone)]
struct StopEarly {
    after: Option<usize>,
    /// The loss metric's name in burn-train's event store.
    loss: String,
}

impl StopEarly {
    /// Whether to stop after `epoch`, whose mean training loss was `loss`.
    fn decide(&self, epoch: usize, loss: Option<f64>) -> bool {
        loss.is_some_and(|l| !l.is_finite()) || self.after.is_some_and(|after| epoch >= after)
    }
}

impl EarlyStoppingStrategy for StopEarly {
    fn should_stop(&mut self, epoch: usize, store: &EventStoreClient) -> bool {
        let loss = store.find_metric(&self.loss, epoch, Aggregate::Mean, &Split::Train);
        self.decide(epoch, loss)
    }
}

/// `model` with gradients on exactly the parameters the method trains (`is_trainable`, which
/// also decides what the parameter counts and the adapter hold). The optimizer updates only
/// what tracks gradients, and a parameter whose value was replaced after its creation (the
/// fresh head's zero bias, set through `Param::map`) keeps Burn's trainable flag without the
/// tracking until a checkpoint reload restores it: it would train only after a resume, and a
/// resumed run would not reproduce a straight one.
fn trainable_only(model: BertClassifier, config: &TrainConfig) -> BertClassifier {
    struct RequireGrad<'a> {
        path: ModulePath,
        config: &'a TrainConfig,
    }
    impl ModuleMapper for RequireGrad<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.set_require_grad(self.config.peft.is_trainable(&self.path.path()))
        }
    }
    model.map(&mut RequireGrad {
        path: ModulePath::default(),
        config,
    })
}

/// (trainable, total) parameter counts.
pub fn param_counts(model: &BertClassifier, config: &TrainConfig) -> (usize, usize) {
    params::counts(model, |p| config.peft.is_trainable(p))
}

/// Writes the trainable parameters of `model` atomically.
pub fn save_trainable(
    model: &BertClassifier,
    config: &TrainConfig,
    path: &Path,
    epoch: usize,
) -> Result<()> {
    let tensors = params::collect(model, |p| config.peft.is_trainable(p));
    let mut meta = std::collections::HashMap::new();
    meta.insert(
        "format".to_string(),
        "bert-peft trainable parameters".to_string(),
    );
    meta.insert("method".to_string(), config.peft.name().to_string());
    meta.insert("epoch".to_string(), epoch.to_string());
    meta.insert("base_model".to_string(), config.model.source.clone());
    bert_model::weights::write_safetensors(path, &tensors, Some(meta))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{StopEarly, differing_keys, steps_per_epoch};
    use crate::config::TrainConfig;

    #[test]
    fn recipes_differ_at_named_keys_and_a_method_change_is_one_key() {
        let base = TrainConfig::default();
        let mut other = base.clone();
        other.train.lr = 0.5;
        other.train.epochs = 7;
        other.train.device = Some("flex".into());
        other.name = "elsewhere".into();
        assert_eq!(
            differing_keys(&base, &other).unwrap(),
            ["train.epochs", "train.lr"]
        );
        let mut lora = base.clone();
        lora.peft = toml::from_str("method = \"lora\"").unwrap();
        assert_eq!(differing_keys(&base, &lora).unwrap(), ["peft.method"]);
        assert!(differing_keys(&base, &base.clone()).unwrap().is_empty());
    }

    #[test]
    fn training_stops_after_a_diverged_epoch_or_the_requested_one() {
        let stop = |after| StopEarly {
            after,
            loss: "Loss".into(),
        };
        assert!(!stop(None).decide(1, Some(0.69)));
        assert!(!stop(None).decide(1, None));
        assert!(stop(None).decide(1, Some(f64::NAN)));
        assert!(stop(None).decide(2, Some(f64::INFINITY)));
        assert!(!stop(Some(2)).decide(1, Some(0.69)));
        assert!(stop(Some(2)).decide(2, Some(0.69)));
    }

    #[test]
    fn steps_per_epoch_count_rounds_of_one_batch_per_device() {
        assert_eq!(steps_per_epoch(48, 8, 1), 6);
        assert_eq!(steps_per_epoch(48, 8, 2), 3);
        // Shares of 16, 16 and 17 items: the last needs 3 batches of 8.
        assert_eq!(steps_per_epoch(49, 8, 3), 3);
        assert_eq!(steps_per_epoch(5, 8, 2), 1);
        assert_eq!(steps_per_epoch(0, 8, 2), 0);
    }
}
