//! `trainer train`: fine-tune a classifier with burn-train's Learner.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use bert_data::csv::write_csv;
use bert_data::{
    ClassificationBatcher, CsvColumns, EpochLoader, Example, LabelMap, SplitConfig, Table,
};
use bert_model::{BertTokenizer, Pretrained};
use burn::optim::AdamWConfig;
use burn::prelude::*;
use burn::train::checkpoint::{
    ComposedCheckpointingStrategy, KeepLastNCheckpoints, MetricCheckpointingStrategy,
};
use burn::train::metric::store::EventStoreClient;
use burn::train::metric::store::{Aggregate, Direction, Split};
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric, Metric};
use burn::train::{EarlyStoppingStrategy, Learner, SupervisedTraining};
use clap::Args;
use serde_json::json;

use crate::config::{SelectMetric, TrainConfig};
use crate::metrics::{ConfusionMetric, ThroughputMetric};
use crate::renderer::{EpochRecord, History, renderer};
use crate::run::{
    RunDir, build_model, metrics_json, param_counts, save_trainable, thousands, write_json,
};
use crate::schedule::LinearWarmup;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The recipe (TOML); see configs/.
    #[arg(long, default_value = "configs/default.toml")]
    pub config: PathBuf,
    /// Override a config key, e.g. `--set train.epochs=5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory (default: runs/<name>, or runs/<name>-N when taken).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue the interrupted run in --run-dir from its last finished epoch, with its own
    /// config, data split, data order and schedule.
    #[arg(long, requires = "run_dir")]
    pub resume: bool,
    /// Stop after this epoch (its checkpoint is saved); continue later with --resume.
    #[arg(long, value_name = "EPOCH")]
    pub stop_after: Option<usize>,
}

/// Ends training after a given epoch, once that epoch's checkpoint is written (burn-train
/// consults early stopping after checkpointing; an interrupter would skip the checkpoint).
#[derive(Clone)]
struct StopAfterEpoch(usize);

impl EarlyStoppingStrategy for StopAfterEpoch {
    fn should_stop(&mut self, epoch: usize, _store: &EventStoreClient) -> bool {
        epoch >= self.0
    }
}

/// The data of a run, tokenised.
struct Prepared {
    labels: LabelMap,
    train: Vec<Example>,
    valid: Vec<Example>,
    summary: serde_json::Value,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let (run, mut config, resume_from) = if args.resume {
        let run = RunDir::new(args.run_dir.clone().context("--resume needs --run-dir")?);
        if !run.config().is_file() {
            bail!(
                "cannot resume {}: it has no config.toml (a run writes it once its data is \
                 prepared); start it again with `trainer train --run-dir {}`",
                run.root.display(),
                run.root.display()
            );
        }
        let config = TrainConfig::load(&run.config(), &args.overrides)
            .context("cannot resume: the run's config.toml")?;
        // Killed before the first checkpoint: the first epoch starts again, from the same
        // seeds and split, so the result is the straight run's.
        let last = crate::checkpoint::last_complete(&run.checkpoints()).unwrap_or(0);
        (run, config, Some(last))
    } else {
        let config = TrainConfig::load(&args.config, &args.overrides)?;
        let run = match &args.run_dir {
            Some(d) => {
                check_run_dir_free(d)?;
                RunDir::new(d)
            }
            None => RunDir::fresh(Path::new("runs"), &config.name),
        };
        (run, config, None)
    };

    let device = crate::device::device();
    device.seed(config.train.seed);
    let train_device = device.clone().autodiff();
    eprintln!("device: {}", crate::device::describe(&device));
    eprintln!("model: {}", config.model.source);
    let pretrained =
        Pretrained::load(&config.model.source, config.model.max_length, &train_device)?;
    // A local model is recorded by absolute path, so the run loads from any directory.
    if let bert_model::ModelSource::Local(dir) = &pretrained.source
        && let Ok(abs) = std::fs::canonicalize(dir)
    {
        config.model.source = abs.display().to_string();
    }

    // Nothing is written before the inputs are known to be good; a failure while preparing a
    // new run removes the directory again.
    let created = CreatedDir::create(&run.root, resume_from.is_none())?;
    let data = if resume_from.is_some() {
        prepare_resumed(&run, &config, &pretrained.tokenizer)?
    } else {
        prepare(&run, &config, &pretrained.tokenizer)?
    };
    let model = build_model(&pretrained, &config, data.labels.len(), &train_device)?;
    model
        .check_input_length(config.model.max_length)
        .context("model.max_length and peft.num_virtual_tokens")?;
    let (trainable, total) = param_counts(&model, &config);
    eprintln!(
        "{}: trainable params: {} || all params: {} || trainable%: {:.4}",
        config.peft.name(),
        thousands(trainable),
        thousands(total),
        100.0 * trainable as f64 / total as f64
    );

    let steps_per_epoch = data.train.len().div_ceil(config.train.batch_size);
    let total_steps = steps_per_epoch * config.train.epochs;
    let mut summary = data.summary.clone();
    summary["params"] = json!({"trainable": trainable, "total": total});
    summary["steps"] = json!({"per_epoch": steps_per_epoch, "total": total_steps});
    summary["device"] = json!(crate::device::describe(&device));
    if resume_from.is_none() {
        write_json(&run.summary(), &summary)?;
        // Written last: its presence means the run's setup is complete and resumable.
        bert_model::fsutil::write_atomic(&run.config(), config.to_toml().as_bytes())?;
    }
    created.keep();

    let batcher = ClassificationBatcher {
        pad_id: pretrained.tokenizer.pad_id(),
    };
    let train_loader = EpochLoader::new(data.train, batcher, config.train.batch_size, &device)
        .shuffled(config.train.seed)
        .reseeding_device(config.train.seed)
        .starting_after_epoch(resume_from.unwrap_or(0));
    let valid_loader = EpochLoader::new(data.valid, batcher, config.train.batch_size, &device);

    let optim = AdamWConfig::new()
        .with_weight_decay(config.train.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let schedule = LinearWarmup::new(config.train.lr, config.train.warmup_ratio, total_steps);

    let history: History = Arc::new(Mutex::new(load_history(&run)));
    let select = config.train.select_metric;
    let metrics_file = run.metrics();
    let on_epoch = Box::new(move |records: &[EpochRecord]| {
        if let Err(e) = write_json(&metrics_file, &metrics_document(records, select)) {
            log::error!("cannot write {}: {e:#}", metrics_file.display());
        }
    });
    let interrupter = burn::train::Interrupter::new();
    let labels = data.labels.names().to_vec();
    let n = labels.len();

    let mut training =
        SupervisedTraining::new(&run.root, Arc::new(train_loader), Arc::new(valid_loader))
            .with_interrupter(interrupter.clone())
            .renderer(renderer(
                interrupter,
                resume_from,
                history.clone(),
                on_epoch,
            ))
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
    let [model_ckpt, optim_ckpt, scheduler_ckpt] =
        crate::checkpoint::checkpointers(&run.checkpoints());
    let (select_name, direction) = match select {
        SelectMetric::MacroF1 => (ConfusionMetric::macro_f1(n).name(), Direction::Highest),
        SelectMetric::Accuracy => (AccuracyMetric::new().name(), Direction::Highest),
        SelectMetric::Loss => (LossMetric::new().name(), Direction::Lowest),
    };
    let best_strategy = match select {
        SelectMetric::MacroF1 => MetricCheckpointingStrategy::new(
            &ConfusionMetric::macro_f1(n),
            Aggregate::Mean,
            direction,
            Split::Valid,
        ),
        SelectMetric::Accuracy => MetricCheckpointingStrategy::new(
            &AccuracyMetric::new(),
            Aggregate::Mean,
            direction,
            Split::Valid,
        ),
        SelectMetric::Loss => MetricCheckpointingStrategy::new(
            &LossMetric::new(),
            Aggregate::Mean,
            direction,
            Split::Valid,
        ),
    };
    let mut training = training
        .metric_train_numeric(LearningRateMetric::new())
        .metric_train_numeric(ThroughputMetric::default())
        .metric_valid_numeric(ThroughputMetric::default())
        .with_custom_checkpointers(model_ckpt, optim_ckpt, scheduler_ckpt)
        .with_checkpointing_strategy(
            ComposedCheckpointingStrategy::builder()
                .add(KeepLastNCheckpoints::new(1))
                .add(best_strategy)
                .build(),
        )
        .num_epochs(config.train.epochs);
    if let Some(stop) = args.stop_after {
        training = training.early_stopping(StopAfterEpoch(stop));
    }
    match resume_from {
        Some(0) => eprintln!("resuming: no epoch had finished, starting epoch 1 again"),
        Some(epoch) => {
            eprintln!("resuming after epoch {epoch} of {}", config.train.epochs);
            training = training.checkpoint(epoch);
        }
        None => {}
    }

    let result = training.launch(Learner::new(model, optim, schedule));
    // Close the dashboard (it owns the terminal) before printing the outcome below it.
    let burn::train::LearningResult {
        model: final_model,
        renderer: dashboard,
        error,
        ..
    } = result;
    drop(dashboard);

    let records = history.lock().expect("history lock").clone();
    let best = best_epoch(&records, select);
    let Some(best) = best else {
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
    let best_model = if best.epoch == last {
        final_model
    } else {
        let path = run.checkpoints().join(format!("model-{}.bpk", best.epoch));
        final_model
            .try_load_file(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
    };
    save_trainable(&best_model, &config, &run.adapter(), best.epoch)?;
    // The same parameters in HF peft's format, for `PeftModel.from_pretrained` in Python.
    bert_model::peft::adapter::write(
        &run.peft_adapter(),
        &best_model,
        &config.peft,
        &pretrained.config,
        &config.model.source,
    )?;
    let mut summary: serde_json::Value = std::fs::read_to_string(run.summary())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(summary);
    summary["best_epoch"] = json!(best.epoch);
    summary["select_metric"] = json!(select_name.as_str());
    summary["best_valid"] = metrics_json(&best.valid);
    write_json(&run.summary(), &summary)?;

    eprintln!(
        "best epoch {} of {} by valid {}: {}",
        best.epoch,
        last,
        select_name,
        describe_valid(&best.valid)
    );
    if let Some(error) = &error {
        let from = crate::checkpoint::last_complete(&run.checkpoints()).unwrap_or(0);
        bail!(
            "training failed after epoch {last} ({error}); the best finished epoch was saved; \
             `trainer train --resume --run-dir {}` continues after epoch {from}",
            run.root.display()
        );
    }
    if last < config.train.epochs {
        eprintln!(
            "stopped after epoch {last} of {}; continue with `trainer train --resume --run-dir {}`",
            config.train.epochs,
            run.root.display()
        );
    }
    println!("{}", run.root.display());
    Ok(())
}

/// A fresh run may go into a directory that does not exist or is empty, or one left by a run
/// killed while setting up (no config.toml, only the files setup writes), which is cleared.
fn check_run_dir_free(dir: &Path) -> Result<()> {
    const SETUP: [&str; 4] = ["labels.txt", "train.csv", "valid.csv", "summary.json"];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut leftovers = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // A temp file of an interrupted atomic write starts with a dot.
        if !(SETUP.contains(&name.as_str()) || name.starts_with('.')) {
            let hint = if RunDir::new(dir).config().is_file() {
                "continue it with --resume, or choose another --run-dir"
            } else {
                "choose another --run-dir"
            };
            bail!(
                "{} already holds files ({name}, ...); {hint}",
                dir.display()
            );
        }
        leftovers.push(entry.path());
    }
    for path in leftovers {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// The run directory a new run created, removed again unless [`CreatedDir::keep`] is called
/// (a run that fails while setting up leaves nothing behind).
struct CreatedDir {
    path: Option<PathBuf>,
}

impl CreatedDir {
    fn create(path: &Path, new_run: bool) -> Result<Self> {
        let existed = path.exists();
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            path: (new_run && !existed).then(|| path.to_path_buf()),
        })
    }

    fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for CreatedDir {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Reads, labels, splits and tokenises the data of a new run, and writes the split and the
/// label file into the run directory.
fn prepare(run: &RunDir, config: &TrainConfig, tokenizer: &BertTokenizer) -> Result<Prepared> {
    let columns = CsvColumns {
        text: config.data.text_column.clone(),
        label: config.data.label_column.clone(),
    };
    let table = Table::read(&config.data.train, &columns, true)?;
    let labels = match &config.data.labels {
        Some(p) => LabelMap::read(p)?,
        None => LabelMap::from_table(&table)?,
    };
    let ids = labels.encode(&table)?;
    let mut dropped = json!({ table.path.display().to_string(): table.dropped_empty.len() });
    report_dropped(&table);

    let (train_rows, valid_table): (Vec<usize>, Table) = match &config.data.valid {
        Some(valid_path) => {
            let valid = Table::read(valid_path, &columns, true)?;
            report_dropped(&valid);
            dropped[valid.path.display().to_string()] = json!(valid.dropped_empty.len());
            ((0..table.rows.len()).collect(), valid)
        }
        None => {
            let split = SplitConfig {
                valid_fraction: config.data.valid_fraction,
                seed: config.data.split_seed,
                max_rows: config.data.max_rows,
            }
            .split(table.rows.len());
            let valid = Table {
                path: table.path.clone(),
                rows: split.valid.iter().map(|&i| table.rows[i].clone()).collect(),
                dropped_empty: vec![],
            };
            (split.train, valid)
        }
    };
    let valid_table = &valid_table;
    let valid_ids = labels.encode(valid_table)?;
    if let Some(max) = config.data.max_rows
        && max < table.rows.len()
    {
        eprintln!(
            "data: using a seeded sample of {} of the {} rows of {} (data.max_rows)",
            max,
            table.rows.len(),
            table.path.display()
        );
    }

    let texts = |rows: &mut dyn Iterator<Item = &str>| -> Result<Vec<bert_model::Encoded>> {
        let t: Vec<&str> = rows.collect();
        Ok(tokenizer.encode_batch(&t)?)
    };
    let train_enc = texts(&mut train_rows.iter().map(|&i| table.rows[i].text.as_str()))?;
    let valid_enc = texts(&mut valid_table.rows.iter().map(|r| r.text.as_str()))?;
    let train: Vec<Example> = train_enc
        .into_iter()
        .zip(&train_rows)
        .map(|(encoded, &i)| Example {
            encoded,
            label: ids[i],
        })
        .collect();
    let valid: Vec<Example> = valid_enc
        .into_iter()
        .zip(&valid_ids)
        .map(|(encoded, &label)| Example { encoded, label })
        .collect();

    if train.is_empty() || valid.is_empty() {
        let (which, path) = match &config.data.valid {
            Some(v) if !train.is_empty() => ("validation", v.display().to_string()),
            _ => ("training", config.data.train.display().to_string()),
        };
        bail!(
            "{path}: no {which} rows ({} train / {} valid after dropping empty titles and \
             splitting): a run needs at least one of each",
            train.len(),
            valid.len()
        );
    }
    labels.write(&run.labels())?;
    let header = [columns.text.as_str(), columns.label.as_str()];
    let train_records: Vec<Vec<&str>> = train_rows
        .iter()
        .map(|&i| vec![table.rows[i].text.as_str(), labels.name(ids[i])])
        .collect();
    write_csv(&run.train_csv(), &header, &train_records)?;
    let valid_records: Vec<Vec<&str>> = valid_table
        .rows
        .iter()
        .zip(&valid_ids)
        .map(|(r, &l)| vec![r.text.as_str(), labels.name(l)])
        .collect();
    write_csv(&run.valid_csv(), &header, &valid_records)?;

    let count = |ex: &[Example]| -> Vec<usize> {
        (0..labels.len())
            .map(|c| ex.iter().filter(|e| e.label == c).count())
            .collect()
    };
    eprintln!(
        "data: {} train / {} valid examples, labels {:?}",
        train.len(),
        valid.len(),
        labels.names()
    );
    let summary = json!({
        "labels": labels.names(),
        "data": {
            "source": config.data.train.display().to_string(),
            "rows_read": table.rows.len() + table.dropped_empty.len(),
            "dropped_empty_title": dropped,
            "train": train.len(),
            "valid": valid.len(),
            "train_per_class": count(&train),
            "valid_per_class": count(&valid),
        },
    });
    Ok(Prepared {
        labels,
        train,
        valid,
        summary,
    })
}

/// A resumed run trains on the split saved in its directory, not on a re-read of the source.
fn prepare_resumed(
    run: &RunDir,
    config: &TrainConfig,
    tokenizer: &BertTokenizer,
) -> Result<Prepared> {
    let columns = CsvColumns {
        text: config.data.text_column.clone(),
        label: config.data.label_column.clone(),
    };
    let labels = LabelMap::read(&run.labels())?;
    let load = |path: &Path| -> Result<Vec<Example>> {
        let table = Table::read(path, &columns, true)?;
        let ids = labels.encode(&table)?;
        let texts: Vec<&str> = table.rows.iter().map(|r| r.text.as_str()).collect();
        Ok(tokenizer
            .encode_batch(&texts)?
            .into_iter()
            .zip(ids)
            .map(|(encoded, label)| Example { encoded, label })
            .collect())
    };
    let train = load(&run.train_csv())?;
    let valid = load(&run.valid_csv())?;
    Ok(Prepared {
        labels,
        train,
        valid,
        summary: json!({}),
    })
}

fn report_dropped(table: &Table) {
    let n = table.dropped_empty.len();
    if n > 0 {
        let shown: Vec<String> = table
            .dropped_empty
            .iter()
            .take(10)
            .map(u64::to_string)
            .collect();
        eprintln!(
            "data: dropped {n} row(s) with an empty title from {} (lines {}{})",
            table.path.display(),
            shown.join(", "),
            if n > 10 { ", ..." } else { "" }
        );
    }
}

fn load_history(run: &RunDir) -> Vec<EpochRecord> {
    let Ok(text) = std::fs::read_to_string(run.metrics()) else {
        return Vec::new();
    };
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    serde_json::from_value(doc["raw"].clone()).unwrap_or_default()
}

fn select_value(r: &EpochRecord, select: SelectMetric) -> Option<f64> {
    let key = match select {
        SelectMetric::MacroF1 => "Macro F1",
        SelectMetric::Accuracy => "Accuracy",
        SelectMetric::Loss => "Loss",
    };
    r.valid.get(key).copied()
}

/// The epoch with the best validation metric (the first one on ties).
pub fn best_epoch(records: &[EpochRecord], select: SelectMetric) -> Option<EpochRecord> {
    let mut best: Option<(&EpochRecord, f64)> = None;
    for r in records {
        let Some(v) = select_value(r, select) else {
            continue;
        };
        let better = match best {
            None => true,
            Some((_, b)) => match select {
                SelectMetric::Loss => v < b,
                _ => v > b,
            },
        };
        if better {
            best = Some((r, v));
        }
    }
    best.map(|(r, _)| r.clone())
}

fn metrics_document(records: &[EpochRecord], select: SelectMetric) -> serde_json::Value {
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|r| r.epoch);
    let epochs: Vec<serde_json::Value> = sorted
        .iter()
        .map(|r| {
            json!({
                "epoch": r.epoch,
                "seconds": r.seconds,
                "train": metrics_json(&r.train),
                "valid": metrics_json(&r.valid),
            })
        })
        .collect();
    json!({
        "select_metric": select,
        "best_epoch": best_epoch(&sorted, select).map(|r| r.epoch),
        "epochs": epochs,
        "raw": sorted,
    })
}

fn describe_valid(valid: &std::collections::BTreeMap<String, f64>) -> String {
    valid
        .iter()
        .filter(|(k, _)| k.as_str() != "Throughput")
        .map(|(k, v)| {
            if k == "Loss" {
                format!("{k} {v:.4}")
            } else {
                format!("{k} {v:.2}%")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
